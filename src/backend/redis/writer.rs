//! The writer thread of the Redis backend: everything a node asks of Redis on behalf of
//! a request (publishes, entity writes, tickets), in batches. It takes every job queued
//! when it is free and sends them as one pipeline, so a busy node pays one round trip per
//! batch, not per request (the group commit of the single node, on Redis).
//!
//! An entity write takes two round trips: the state and version it is decided against
//! (`HMGET`), then `entity.lua`, which applies the decision only if the version has not
//! moved; if it has, the write is read and decided again in the next batch. The answers
//! go through [`Shared::answer_when_applied`].
//!
//! Both match their publications against this node's copy of the durable subscription
//! index first: the scripts write the service tasks with the publication and refuse a
//! copy older than Redis's version, in which case the writer reloads it and runs the
//! jobs again.
//!
//! Runs on its own thread with its own connection; nothing else sends on it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::Value;

use super::locks::{self, NodeLocks, Waiter};
use super::{Job, Shared};
use crate::auth::tickets::{self, TicketError};
use crate::backend::{entity_answer, publish_answered, refusal_answer, PublishReply};
use crate::entities::{decide, Decision};
use crate::ingest::PublishOutcome;
use crate::protocol::{ErrorCode, Refusal};
use crate::publication::Publication;
use crate::router::Answer;
use crate::services::index::{GroupIndex, Owner};

const PUBLISH_LUA: &str = concat!(include_str!("tasks.lua"), include_str!("publish.lua"));
const ENTITY_LUA: &str = concat!(include_str!("tasks.lua"), include_str!("entity.lua"));
const RESEED_LUA: &str = include_str!("reseed.lua");

/// Jobs sent in one pipeline at most.
const BATCH: usize = 1024;

/// An entity write decided against a version that moved this many times is refused
/// (`UNAVAILABLE`: the entity is written faster than a decision round trip).
const MAX_CONFLICTS: u32 = 100;

/// An idle connection is checked (`PING`) this often, so that readiness and the first
/// request after Redis comes back do not meet a connection that died meanwhile.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// A node registers its `node_id` in Redis for this long and renews it every
/// [`REGISTRATION_RENEW`]: a second node started with the same id is not ready until the
/// first is gone (lock holders and metrics are named by the id). A node restarted within
/// this time of its death waits for its old registration to expire.
const REGISTRATION_TTL_MS: u64 = 5000;
const REGISTRATION_RENEW: Duration = Duration::from_secs(1);

/// Reconnection backoff: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// A connection with the scripts loaded and the epoch of the data behind it.
struct Conn {
    con: redis::Connection,
    publish: String,
    entity: String,
    reseed: String,
    lock: String,
    unlock: String,
    epoch: String,
}

/// The thread's body: until the node stops, keep a connection and run what is queued.
pub(super) fn run(shared: Arc<Shared>, rx: Receiver<Job>) {
    let router = shared.applier.router().clone();
    let mut conn: Option<Conn> = None;
    let mut backoff = BACKOFF.0;
    let mut retry: Vec<Job> = Vec::new();
    let mut warned = false;
    let mut used = Instant::now();
    let mut locks = NodeLocks::default();
    let mut polled = Instant::now();
    let mut registered = Instant::now();
    loop {
        let stopping = shared.stopping.load(Ordering::Acquire);
        if conn.is_none() {
            match connect(&shared) {
                Ok(c) => {
                    tracing::info!(epoch = %c.epoch, "Redis writer connected");
                    conn = Some(c);
                    registered = Instant::now();
                    shared.writer_up.store(true, Ordering::Release);
                    crate::metrics::redis_connected("writer", true);
                    backoff = BACKOFF.0;
                    warned = false;
                }
                Err(e) => {
                    shared.writer_up.store(false, Ordering::Release);
                    crate::metrics::redis_connected("writer", false);
                    if !warned {
                        tracing::warn!("Redis writer not ready: {e}; retrying");
                        warned = true;
                    }
                    // Nothing waits for Redis: what is queued is refused now, but a closed
                    // connection's lock release is kept for when Redis is back.
                    for job in std::mem::take(&mut retry).into_iter().chain(rx.try_iter()) {
                        match job {
                            Job::Release { .. } => retry.push(job),
                            other => other.refuse(&router),
                        }
                    }
                    shared.release_stale();
                    if stopping {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            }
        }
        if registered.elapsed() >= REGISTRATION_RENEW {
            registered = Instant::now();
            if let Some(c) = conn.as_mut() {
                if let Err(e) = register(&shared, &mut c.con) {
                    tracing::warn!("Redis writer: {e}");
                    lost(&shared, &mut conn, &mut locks);
                    continue;
                }
            }
        }
        if !locks.waiting.is_empty() && polled.elapsed() >= locks::RETRY {
            polled = Instant::now();
            if let Some(c) = conn.as_mut() {
                if let Err(e) = poll_waiters(&shared, c, &mut locks) {
                    tracing::warn!("Redis writer lost its connection: {e}");
                    lost(&shared, &mut conn, &mut locks);
                    continue;
                }
                crate::metrics::service_locks(
                    locks.held.values().map(|names| names.len()).sum(),
                    locks.waiting.len(),
                );
            }
        }
        let mut jobs = std::mem::take(&mut retry);
        if jobs.is_empty() {
            let wait = if locks.waiting.is_empty() {
                Duration::from_millis(100)
            } else {
                locks::RETRY
            };
            match rx.recv_timeout(wait) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout) => {
                    shared.release_stale();
                    if stopping {
                        return;
                    }
                    if used.elapsed() >= IDLE_CHECK {
                        used = Instant::now();
                        let alive = conn.as_mut().is_some_and(|c| {
                            redis::cmd("PING").query::<String>(&mut c.con).is_ok()
                        });
                        if !alive {
                            tracing::warn!("Redis writer's idle connection is gone; reconnecting");
                            lost(&shared, &mut conn, &mut locks);
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        jobs.extend(rx.try_iter().take(BATCH.saturating_sub(jobs.len())));
        let Some(c) = conn.as_mut() else { continue };
        used = Instant::now();
        let result = run_batch(&shared, c, jobs, &mut locks);
        // This node's connections' locks and waits (the dashboard sums the nodes).
        crate::metrics::service_locks(
            locks.held.values().map(|names| names.len()).sum(),
            locks.waiting.len(),
        );
        match result {
            Ok(again) => retry = again,
            Err((e, unanswered)) => {
                tracing::warn!("Redis writer lost its connection: {e}");
                lost(&shared, &mut conn, &mut locks);
                // Sent or not, these were not answered: refused (a publish that did reach
                // Redis is still delivered; its publisher was told to retry). Lock releases
                // are sent again once Redis is back.
                for job in unanswered {
                    match job {
                        Job::Release { .. } => retry.push(job),
                        other => other.refuse(&router),
                    }
                }
            }
        }
        shared.release_stale();
    }
}

/// The connection is gone: the node is not ready, and its waiting lock requests are
/// answered `UNAVAILABLE` (they cannot be served in order without Redis).
fn lost(shared: &Shared, conn: &mut Option<Conn>, locks: &mut NodeLocks) {
    shared.writer_up.store(false, Ordering::Release);
    crate::metrics::redis_connected("writer", false);
    *conn = None;
    let router = shared.applier.router();
    for w in locks.waiting.drain(..) {
        Job::Lock {
            at: w.at,
            request_id: w.request_id,
            name: w.name,
            ttl_ms: w.ttl_ms,
            wait_ms: 0,
        }
        .refuse(router);
    }
}

/// Asks again for every waiting lock request of this node (one pipeline); answers the
/// ones granted or out of time.
fn poll_waiters(shared: &Shared, c: &mut Conn, locks: &mut NodeLocks) -> redis::RedisResult<()> {
    let now = crate::time::unix_ms();
    let router = shared.applier.router();
    let waiting = std::mem::take(&mut locks.waiting);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for w in &waiting {
        lock_cmd(
            &mut pipe,
            shared,
            c,
            w.at,
            &w.name,
            (w.ttl_ms, now, w.deadline),
        );
    }
    let replies: Vec<Value> = match pipe.query(&mut c.con) {
        Ok(r) => r,
        Err(e) => {
            locks.waiting = waiting;
            return Err(e);
        }
    };
    for (w, reply) in waiting.into_iter().zip(replies) {
        match lock_reply(&reply) {
            Some(LockReply::Granted { token, new }) => {
                granted(shared, token, new);
                locks.held.entry(w.at).or_default().insert(w.name.clone());
                let answer =
                    locks::lock_result(&w.name, &w.request_id, Some((token, now + w.ttl_ms)));
                router.answer(locks::reply_to(w.at), answer);
            }
            Some(LockReply::Waiting) if w.deadline > now => locks.waiting.push(w),
            _ => {
                // Out of time (the script dropped it from the queue, or will).
                router.answer(
                    locks::reply_to(w.at),
                    locks::lock_result(&w.name, &w.request_id, None),
                );
            }
        }
    }
    Ok(())
}

/// What `lock.lua` answered.
enum LockReply {
    /// With its fencing token; `new`: a grant (not the holder's extension).
    Granted {
        token: u64,
        new: bool,
    },
    Waiting,
    NotAcquired,
}

/// A lock granted (or extended) here: the fencing token seen, the grant counted.
fn granted(shared: &Shared, token: u64, new: bool) {
    shared.fence_seen.fetch_max(token, Ordering::AcqRel);
    if new {
        crate::metrics::service_lock_grants(1);
    }
}

fn lock_reply(v: &Value) -> Option<LockReply> {
    let Value::Array(a) = v else { return None };
    match a.first() {
        Some(Value::Int(k @ (1 | 2))) => Some(LockReply::Granted {
            token: int(a.get(1)?),
            new: *k == 1,
        }),
        Some(Value::Int(0)) => Some(LockReply::Waiting),
        Some(Value::Int(-1)) => Some(LockReply::NotAcquired),
        _ => None,
    }
}

/// Takes (or renews) this node's registration under its `node_id`; refused while another
/// running node holds that id.
fn register(shared: &Shared, con: &mut redis::Connection) -> Result<(), String> {
    // One call: taken when free or already ours, renewed if ours. (A SET NX then a GET
    // could see the key expire in between, and a starved node took its own id for
    // another node's.)
    const REGISTER: &str = "local cur = redis.call('GET', KEYS[1]) \
        if not cur or cur == ARGV[1] then \
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
        return 0";
    let key = shared.keys.node(&shared.node_id);
    let ours: i64 = redis::cmd("EVAL")
        .arg(REGISTER)
        .arg(1)
        .arg(&key)
        .arg(&shared.instance)
        .arg(REGISTRATION_TTL_MS)
        .query(con)
        .map_err(|e| e.to_string())?;
    if ours == 1 {
        return Ok(());
    }
    Err(format!(
        "cluster.node_id '{}' is in use by another running node (Redis key {key}): every \
         node needs its own cluster.node_id (and data_dir); this one is not ready until \
         that node is gone",
        shared.node_id
    ))
}

fn connect(shared: &Shared) -> Result<Conn, String> {
    connect_redis(shared)
        .map_err(|e| e.to_string())
        .and_then(|mut c| {
            register(shared, &mut c.con)?;
            Ok(c)
        })
}

fn connect_redis(shared: &Shared) -> redis::RedisResult<Conn> {
    let mut con = shared
        .client
        .get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    let load = |con: &mut redis::Connection, text: &str| -> redis::RedisResult<String> {
        redis::cmd("SCRIPT").arg("LOAD").arg(text).query(con)
    };
    let publish = load(&mut con, PUBLISH_LUA)?;
    let entity = load(&mut con, ENTITY_LUA)?;
    let reseed = load(&mut con, RESEED_LUA)?;
    let lock = load(&mut con, locks::LOCK_LUA)?;
    let unlock = load(&mut con, locks::UNLOCK_LUA)?;
    let mut c = Conn {
        con,
        publish,
        entity,
        reseed,
        lock,
        unlock,
        // What this node knew before (empty at start): a node that lived through a
        // loss of Redis's data raises the counters above what it saw, too.
        epoch: super::lock(&shared.epoch).clone(),
    };
    reseed_epoch(shared, &mut c)?;
    Ok(c)
}

/// Learns the data's epoch, naming it first if Redis has none (see `reseed.lua`).
fn reseed_epoch(shared: &Shared, c: &mut Conn) -> redis::RedisResult<()> {
    let seen = shared
        .head
        .load(Ordering::Acquire)
        .max(shared.applier.applied());
    let epoch: String = redis::cmd("EVALSHA")
        .arg(&c.reseed)
        .arg(3)
        .arg(&shared.keys.seq)
        .arg(&shared.keys.epoch)
        .arg(&shared.keys.fence)
        .arg(seen)
        .arg(tickets::uuid_v4())
        .arg(crate::ingest::SEQ_BLOCK)
        .arg(shared.fence_seen.load(Ordering::Acquire))
        .arg(&c.epoch)
        .query(&mut c.con)?;
    if !c.epoch.is_empty() && c.epoch != epoch {
        tracing::warn!(
            old = %c.epoch,
            new = %epoch,
            seen,
            "Redis lost its data (a new epoch): seq re-seeded above {seen}"
        );
    }
    super::lock(&shared.epoch).clone_from(&epoch);
    c.epoch = epoch;
    Ok(())
}

/// What a job's first reply is for.
enum Step {
    /// A publish, answered from its reply, with the service tasks it makes.
    Publish(u64),
    /// An entity write's state and version, to decide against.
    Read,
    IssueTicket {
        uuid: String,
        expires: u64,
    },
    Redeem,
    /// An entity read's barrier: the counter, i.e. the newest `seq` answered anywhere.
    Head,
    /// A lock request, waiting until `deadline` (0: not waiting).
    Lock {
        deadline: u64,
    },
    Unlock,
    /// A closed connection's locks and waits: this many `unlock.lua` calls.
    Release(usize),
}

/// `lock.lua` for connection `at` and lock `name`, added to `pipe`: `(ttl ms, now ms,
/// wait until ms or 0)`.
fn lock_cmd(
    pipe: &mut redis::Pipeline,
    shared: &Shared,
    c: &Conn,
    at: crate::services::Addr,
    name: &str,
    (ttl_ms, now, deadline): (u64, u64, u64),
) {
    let [lock, queue, meta] = shared.keys.lock(name);
    pipe.cmd("EVALSHA")
        .arg(&c.lock)
        .arg(4)
        .arg(lock)
        .arg(queue)
        .arg(meta)
        .arg(&shared.keys.fence)
        .arg(locks::holder_id(&shared.node_id, at))
        .arg(ttl_ms)
        .arg(now)
        .arg(deadline);
}

/// `unlock.lua` for connection `at` and lock `name`, added to `pipe`.
fn unlock_cmd(
    pipe: &mut redis::Pipeline,
    shared: &Shared,
    c: &Conn,
    at: crate::services::Addr,
    name: &str,
) {
    let [lock, queue, meta] = shared.keys.lock(name);
    pipe.cmd("EVALSHA")
        .arg(&c.unlock)
        .arg(3)
        .arg(lock)
        .arg(queue)
        .arg(meta)
        .arg(locks::holder_id(&shared.node_id, at));
}

/// An entity write decided, to apply in the second round trip.
struct Decided {
    job: Job,
    decision: Decision,
    version: String,
    after: String,
    /// The event's data (the state shown) when the write makes service tasks, the tasks,
    /// and the index version they were matched against.
    shown: String,
    tasks: Tasks,
    index_version: u64,
}

/// A publication's service tasks: per matched group, the subscription ids (JSON string
/// literals joined by commas).
type Tasks = Vec<(Arc<str>, Vec<u8>)>;

fn tasks_of(ix: &GroupIndex, p: &Publication) -> Tasks {
    let mut out = Vec::new();
    ix.matches(p, &mut |owner, ids| match owner {
        Owner::Group(g) => out.push((g.clone(), ids.to_vec())),
        // A channel's name starts with a NUL byte (no group's does): see tasks.lua.
        Owner::Channel(c) => out.push((format!("\0{c}").into(), Vec::new())),
    });
    out
}

type BatchError = (redis::RedisError, Vec<Job>);

/// Runs one batch; returns the jobs to run again (an epoch or a version that moved).
fn run_batch(
    shared: &Shared,
    c: &mut Conn,
    jobs: Vec<Job>,
    locks: &mut NodeLocks,
) -> Result<Vec<Job>, BatchError> {
    let keys = &shared.keys;
    let now = crate::time::unix_ms();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut steps = Vec::with_capacity(jobs.len());
    // Matched and sent under one read of the index, with its version.
    let index = shared.durable.read();
    let matching = !index.is_empty();
    let at = Instant::now();
    // Service tasks written by this batch (for the enqueued counter).
    let mut tasks_made = 0u64;
    for job in &jobs {
        match job {
            Job::Publish { items, .. } => {
                let mut n_tasks = 0;
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&c.publish)
                    .arg(4)
                    .arg(&keys.seq)
                    .arg(&keys.stream)
                    .arg(&keys.epoch)
                    .arg(&keys.dsubs_version)
                    .arg(shared.stream_len)
                    .arg(&c.epoch)
                    .arg(index.version)
                    .arg(&keys.prefix)
                    .arg(shared.channel_backlog)
                    .arg(items.len());
                for (path, event_type, data) in items {
                    cmd.arg(path).arg(event_type).arg(data);
                    let tasks = if matching {
                        tasks_of(
                            &index,
                            &Publication::unsequenced(path, event_type, data, at),
                        )
                    } else {
                        Vec::new()
                    };
                    cmd.arg(tasks.len());
                    n_tasks += tasks.len() as u64;
                    for (g, ids) in tasks {
                        cmd.arg(&*g).arg(ids);
                    }
                }
                steps.push(Step::Publish(n_tasks));
            }
            Job::Entity { write, .. } => {
                pipe.cmd("HMGET")
                    .arg(keys.entity(&write.collection, &write.id))
                    .arg("s")
                    .arg("v");
                steps.push(Step::Read);
            }
            Job::IssueTicket { claims, ttl_ms, .. } => {
                let uuid = tickets::uuid_v4();
                let expires = tickets::expiry(claims, now, *ttl_ms);
                // Kept a second past its expiry, so a late redemption is told "expired"
                // rather than "unknown".
                let px = expires.saturating_sub(now).max(1) + 1000;
                pipe.cmd("SET")
                    .arg(keys.ticket(&uuid))
                    .arg(tickets::encode(claims, expires))
                    .arg("PX")
                    .arg(px);
                steps.push(Step::IssueTicket { uuid, expires });
            }
            Job::RedeemTicket { ticket, .. } => {
                pipe.cmd("GETDEL").arg(keys.ticket(ticket));
                steps.push(Step::Redeem);
            }
            Job::Read { .. } => {
                pipe.cmd("GET").arg(&keys.seq);
                steps.push(Step::Head);
            }
            Job::Lock {
                at,
                name,
                ttl_ms,
                wait_ms,
                ..
            } => {
                let deadline = if *wait_ms > 0 { now + wait_ms } else { 0 };
                lock_cmd(&mut pipe, shared, c, *at, name, (*ttl_ms, now, deadline));
                steps.push(Step::Lock { deadline });
            }
            Job::Unlock { at, name, .. } => {
                unlock_cmd(&mut pipe, shared, c, *at, name);
                steps.push(Step::Unlock);
            }
            Job::Release { at } => {
                // Its locks (forgotten once Redis has answered), and the locks it waits for.
                let mut names: Vec<String> = locks
                    .held
                    .get(at)
                    .map(|held| held.iter().cloned().collect())
                    .unwrap_or_default();
                locks.waiting.retain(|w| {
                    if w.at == *at {
                        names.push(w.name.clone());
                    }
                    w.at != *at
                });
                for name in &names {
                    unlock_cmd(&mut pipe, shared, c, *at, name);
                }
                steps.push(Step::Release(names.len()));
            }
        }
    }
    drop(index);
    let started = Instant::now();
    // Only releases of connections that held nothing: no command to send (Redis refuses
    // an empty pipeline, which must not pass for a lost connection).
    let replies: Vec<Value> = if pipe.is_empty() {
        Vec::new()
    } else {
        match pipe.query(&mut c.con) {
            Ok(r) => r,
            Err(e) => return Err((e, jobs)),
        }
    };
    crate::metrics::redis_call(started.elapsed(), jobs.len());
    let router = shared.applier.router();
    let mut again = Vec::new();
    let mut decided = Vec::new();
    let mut epoch_moved = false;
    let mut index_moved = false;
    let mut replies = replies.into_iter();
    for (job, step) in jobs.into_iter().zip(steps) {
        if let Step::Release(n) = step {
            // Nothing to answer: the connection is gone.
            replies.by_ref().take(n).for_each(drop);
            if let Job::Release { at } = job {
                locks.held.remove(&at);
            }
            continue;
        }
        let reply = replies.next().unwrap_or(Value::Nil);
        match (job, step) {
            (Job::Publish { items, reply: to }, Step::Publish(n_tasks)) => match reply {
                Value::Array(v) if v.len() == 2 => {
                    tasks_made += n_tasks;
                    let (first, last) = (int(&v[0]), int(&v[1]));
                    let outcome = PublishOutcome {
                        accepted: items.len(),
                        first_seq: first,
                        last_seq: last,
                    };
                    crate::metrics::publications(to.source(), items.len() as u64);
                    answer_publish(shared, to, outcome);
                }
                Value::Int(-1) => {
                    epoch_moved = true;
                    again.push(Job::Publish { items, reply: to });
                }
                Value::Int(-2) => {
                    index_moved = true;
                    again.push(Job::Publish { items, reply: to });
                }
                other => publish_answered(
                    router,
                    to,
                    empty_outcome(),
                    Err((500, internal("publish", &other))),
                ),
            },
            (
                Job::Entity {
                    write,
                    reply: to,
                    conflicts,
                },
                Step::Read,
            ) => {
                let (state, version) = match &reply {
                    Value::Array(v) if v.len() == 2 => (bytes(&v[0]), bytes(&v[1])),
                    other => {
                        router.answer(to, refusal_answer(500, &internal("entity read", other)));
                        continue;
                    }
                };
                let current: Option<serde_json::Value> =
                    state.and_then(|s| serde_json::from_slice(s).ok());
                let version = version
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .unwrap_or("0")
                    .to_string();
                // Decided on a copy: a version that moved means deciding again.
                match decide(
                    current.as_ref(),
                    &write.collection,
                    &write.id,
                    write.op.clone(),
                ) {
                    Err(r) => router.answer(to, refusal_answer(404, &r)),
                    Ok(decision) => {
                        let after = decision
                            .after
                            .as_ref()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let (shown, tasks, index_version) =
                            entity_tasks(shared, &write, &decision, current);
                        decided.push(Decided {
                            job: Job::Entity {
                                write,
                                reply: to,
                                conflicts,
                            },
                            decision,
                            version,
                            after,
                            shown,
                            tasks,
                            index_version,
                        });
                    }
                }
            }
            (Job::IssueTicket { reply: to, .. }, Step::IssueTicket { uuid, expires }) => {
                match reply {
                    Value::Okay | Value::SimpleString(_) => {
                        router.answer(to, crate::backend::ticket_issued(&uuid, expires))
                    }
                    other => router.answer(to, refusal_answer(500, &internal("ticket", &other))),
                }
            }
            (Job::RedeemTicket { reply: to, .. }, Step::Redeem) => {
                let redeemed = match reply {
                    Value::BulkString(b) => match tickets::decode(&b) {
                        Some((claims, expires)) => {
                            tickets::check_expiry(expires, now).map(|()| claims)
                        }
                        None => Err(TicketError::Unknown),
                    },
                    Value::Nil => Err(TicketError::Unknown),
                    other => {
                        tracing::error!("ticket redemption: unexpected reply {other:?}");
                        Err(TicketError::Unavailable)
                    }
                };
                router.answer(to, Answer::Ticket(redeemed));
            }
            (Job::Read { read, reply: to }, Step::Head) => {
                let head = match reply {
                    Value::BulkString(b) => std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    Value::Int(i) => i as u64,
                    _ => 0,
                };
                shared.when_applied(head, to, super::Pending::Read(read));
            }
            (
                Job::Lock {
                    at,
                    request_id,
                    name,
                    ttl_ms,
                    ..
                },
                Step::Lock { deadline },
            ) => {
                let to = locks::reply_to(at);
                match lock_reply(&reply) {
                    Some(LockReply::Granted { token, new }) => {
                        granted(shared, token, new);
                        locks.held.entry(at).or_default().insert(name.clone());
                        let granted = Some((token, now + ttl_ms));
                        router.answer(to, locks::lock_result(&name, &request_id, granted));
                    }
                    Some(LockReply::Waiting) => locks.waiting.push(Waiter {
                        at,
                        request_id,
                        name,
                        ttl_ms,
                        deadline,
                    }),
                    Some(LockReply::NotAcquired) => {
                        router.answer(to, locks::lock_result(&name, &request_id, None))
                    }
                    None => {
                        let r = internal("lock", &reply);
                        let m =
                            crate::protocol::error_message(r.code, &r.message, request_id.as_ref());
                        router.answer(to, Answer::Ws(m));
                    }
                }
            }
            (
                Job::Unlock {
                    at,
                    request_id,
                    name,
                },
                Step::Unlock,
            ) => {
                let released = matches!(reply, Value::Int(1));
                if released {
                    if let Some(held) = locks.held.get_mut(&at) {
                        held.remove(&name);
                    }
                }
                router.answer(
                    locks::reply_to(at),
                    locks::unlock_result(&name, &request_id, released),
                );
            }
            (job, _) => job.refuse(router),
        }
    }
    if !decided.is_empty() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for d in &decided {
            let Job::Entity { write, .. } = &d.job else {
                continue;
            };
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&c.entity)
                .arg(5)
                .arg(&keys.seq)
                .arg(&keys.stream)
                .arg(&keys.epoch)
                .arg(keys.entity(&write.collection, &write.id))
                .arg(&keys.dsubs_version)
                .arg(shared.stream_len)
                .arg(&c.epoch)
                .arg(&d.version)
                .arg(&d.after)
                .arg(format!("{}/{}", write.collection, write.id))
                .arg(d.decision.event_type)
                .arg(&write.collection)
                .arg(&write.id)
                .arg(d.index_version)
                .arg(&keys.prefix)
                .arg(&d.shown)
                .arg(shared.channel_backlog)
                .arg(d.tasks.len());
            for (g, ids) in &d.tasks {
                cmd.arg(&**g).arg(ids);
            }
        }
        let started = Instant::now();
        let replies: Vec<Value> = match pipe.query(&mut c.con) {
            Ok(r) => r,
            Err(e) => {
                let jobs = decided.into_iter().map(|d| d.job).chain(again).collect();
                return Err((e, jobs));
            }
        };
        crate::metrics::redis_call(started.elapsed(), decided.len());
        for (d, reply) in decided.into_iter().zip(replies) {
            let Job::Entity {
                write,
                reply: to,
                conflicts,
            } = d.job
            else {
                continue;
            };
            match reply {
                Value::Int(seq) if seq > 0 => {
                    tasks_made += d.tasks.len() as u64;
                    crate::metrics::entity_write(d.decision.event_type);
                    let answer = entity_answer(seq as u64, d.decision.event_type);
                    shared.answer_when_applied(seq as u64, to, answer);
                }
                Value::Int(-1) => {
                    epoch_moved = true;
                    again.push(Job::Entity {
                        write,
                        reply: to,
                        conflicts,
                    });
                }
                Value::Int(-3) => {
                    index_moved = true;
                    again.push(Job::Entity {
                        write,
                        reply: to,
                        conflicts,
                    });
                }
                Value::Int(-2) if conflicts < MAX_CONFLICTS => again.push(Job::Entity {
                    write,
                    reply: to,
                    conflicts: conflicts + 1,
                }),
                Value::Int(-2) => router.answer(
                    to,
                    refusal_answer(
                        503,
                        &Refusal::new(
                            ErrorCode::Unavailable,
                            format!(
                                "entity '{}' in '{}' changed under {MAX_CONFLICTS} attempts \
                                 to write it; retry",
                                write.id, write.collection
                            ),
                        ),
                    ),
                ),
                other => router.answer(to, refusal_answer(500, &internal("entity write", &other))),
            }
        }
    }
    if epoch_moved {
        if let Err(e) = reseed_epoch(shared, c) {
            return Err((e, again));
        }
    }
    if index_moved {
        if let Err(e) = super::services::load_index(shared, &mut c.con) {
            return Err((e, again));
        }
    }
    if tasks_made > 0 {
        crate::metrics::service_counts(tasks_made, &[], &[], 0);
    }
    Ok(again)
}

/// An entity write's service tasks, matched against the index as the state it shows
/// (the new state, or the old one for a delete), with that state's JSON text.
fn entity_tasks(
    shared: &Shared,
    write: &crate::entities::EntityWrite,
    decision: &Decision,
    current: Option<serde_json::Value>,
) -> (String, Tasks, u64) {
    let index = shared.durable.read();
    if index.is_empty() {
        return (String::new(), Vec::new(), index.version);
    }
    let shown = decision
        .after
        .clone()
        .or_else(|| current.map(Arc::new))
        .unwrap_or_else(|| Arc::new(serde_json::Value::Null));
    let text = shown.to_string();
    let path = format!("{}/{}", write.collection, write.id);
    let mut p = Publication::unsequenced(&path, decision.event_type, &text, Instant::now());
    p.set_data(shown);
    (text, tasks_of(&index, &p), index.version)
}

fn answer_publish(shared: &Shared, to: PublishReply, outcome: PublishOutcome) {
    match crate::backend::published(to, outcome) {
        Some((reply, answer)) => shared.answer_when_applied(outcome.last_seq, reply, answer),
        None => {
            shared.head.fetch_max(outcome.last_seq, Ordering::AcqRel);
        }
    }
}

fn empty_outcome() -> PublishOutcome {
    PublishOutcome {
        accepted: 0,
        first_seq: 0,
        last_seq: 0,
    }
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => *i as u64,
        _ => 0,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn internal(what: &str, reply: &Value) -> Refusal {
    tracing::error!("Redis answered {what} unexpectedly: {reply:?}");
    Refusal::new(
        ErrorCode::Internal,
        format!("{what}: unexpected answer from Redis"),
    )
}
