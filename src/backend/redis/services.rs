//! Service groups on Redis (cluster mode, PROTOCOL.md §10 and §14 "Services"): the
//! cluster's implementation of the services engine, the local one being
//! [`crate::services`]. Both are driven by the same [`ServiceCmd`]s through
//! [`crate::backend::Backend::services`].
//!
//! - **Durable subscriptions** are one hash in Redis with a version (`subs.lua`); every
//!   node keeps a copy ([`Shared::durable`]) that its writer matches publications
//!   against, and the script that sequences a publication writes its tasks too, refusing
//!   a copy older than the version (the writer reloads it and tries again). So a task
//!   exists before its publisher is answered, whichever node answered, and a
//!   subscription's `seq` names exactly the first publication it covers.
//! - **A group's queue** is a stream (`q:{group}`, entry `<seq>-0`) with one consumer
//!   group; each node consumes as consumer `node_id` for its own instances, as many as
//!   they have free `prefetch` (`take.lua`), woken by the publication stream (an entry
//!   names the groups it made tasks for) and every [`POLL`] for what came due.
//!   Acknowledgements, failures and closed instances are scripts too (`complete.lua`,
//!   `retry.lua`); redelivery after `ack_timeout_ms` works for tasks held by any node,
//!   one that died included, through Redis's idle times; the attempt is Redis's delivery
//!   count; dead letters are a sorted set of seqs and their records (`replay.lua`).
//! - **The operator REST** reads Redis, so every node answers the same; instances are
//!   counted per node (`gi:{group}`, only nodes whose registration lives).
//!
//! Owned by the Redis backend: one thread (`shardcast-redis-services`) with its own
//! connection; shards reach it only through [`ServiceCmd`]s, the reader only through
//! [`Msg::Woken`]. REST-created channels are here too ([`super::channels`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::Value;
use serde_json::{json, Value as Json};

use super::{channels, Shared};
use crate::router::{Answer, ReplyTo, ShardMsg};
use crate::services::index::{DurableSub, GroupIndex};
use crate::services::record::{self, Record};
use crate::services::{with_request_id, Addr, OpsRequest, ServiceCmd, ServicesEngine};

/// How often a node looks for tasks that came due (timeouts, retries, instances that
/// closed) when nothing woke it.
const POLL: Duration = Duration::from_millis(200);

/// Tasks taken per call at most.
const TAKE_MAX: usize = 1000;

const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

const TAKE_LUA: &str = include_str!("take.lua");
const COMPLETE_LUA: &str = include_str!("complete.lua");
const RETRY_LUA: &str = include_str!("retry.lua");
const SUBS_LUA: &str = include_str!("subs.lua");
const REPLAY_LUA: &str = include_str!("replay.lua");
const CHANNEL_LUA: &str = include_str!("channel.lua");
/// The whole index (groups' and channels' subscriptions) and its version, read together.
const READ_INDEX_LUA: &str = "return {redis.call('GET', KEYS[2]) or '0', \
     redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3])}";

/// The services thread's inbox.
pub(super) enum Msg {
    Cmd(ServiceCmd),
    /// Publications made tasks for these groups (from the reader).
    Woken(Vec<String>),
    /// A message from another node on this node's control stream (from the reader).
    Control(Vec<(String, String)>),
}

/// The settings the engine reads (`[services]`, `[channels]`, `public_url`).
#[derive(Clone)]
pub(super) struct Settings {
    pub ack_timeout_ms: u64,
    pub max_attempts: u32,
    pub prefetch: usize,
    pub max_per_user: usize,
    pub public_url: String,
}

/// Scripts loaded on the current connection.
struct Conn {
    con: redis::Connection,
    take: String,
    complete: String,
    retry: String,
    subs: String,
    replay: String,
    channel: String,
}

/// A task an instance of this node holds.
struct Held {
    to: Addr,
    /// When it went out (ms), for the ack-time histogram.
    sent_at: u64,
    deadline: u64,
}

/// A group as this node serves it.
#[derive(Default)]
struct LocalGroup {
    /// This node's instances, in the order they attached (round robin).
    members: Vec<Addr>,
    next: usize,
    /// What this node's instances hold, by `seq`.
    held: HashMap<u64, Held>,
    /// Something may be waiting (woken, or an instance freed room).
    woken: bool,
    polled_at: u64,
}

struct Engine {
    shared: Arc<Shared>,
    settings: Settings,
    conn: Option<Conn>,
    groups: BTreeMap<Arc<str>, LocalGroup>,
    instances: HashMap<Addr, Arc<str>>,
    /// Per-group counts of this node's instances already written to Redis.
    registered: HashMap<Arc<str>, usize>,
    /// `taskComplete`s not yet sent: per group the seqs, and the ack times of those this
    /// node sent.
    completing: BTreeMap<Arc<str>, (Vec<u64>, Vec<f64>)>,
    /// This node's channel sockets.
    channels: channels::Channels,
    /// When the channel sockets were last all pumped (ms).
    channels_polled_at: u64,
    metrics_at: u64,
}

/// The running thread, as the backend holds it.
pub(super) struct RedisServices {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServicesEngine for RedisServices {
    fn send(&self, cmd: ServiceCmd) {
        // Unbounded like the embedded engine's: one message per service command, which
        // the shards rate-limit. Closed only when the node stops.
        let _ = self.tx.send(Msg::Cmd(cmd));
    }

    fn close(&self) {
        // The thread sees `stopping` within one wait (at most POLL / 2).
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// Starts the thread; `rx` is the inbox whose sender the reader also holds.
pub(super) fn start(
    shared: Arc<Shared>,
    settings: Settings,
    rx: Receiver<Msg>,
) -> Result<RedisServices, String> {
    let tx = shared.services.clone();
    let thread = std::thread::Builder::new()
        .name("shardcast-redis-services".into())
        .spawn({
            let span = tracing::Span::current();
            move || span.in_scope(|| run(shared, settings, rx))
        })
        .map_err(|e| format!("cannot start the Redis services thread: {e}"))?;
    Ok(RedisServices {
        tx,
        thread: Mutex::new(Some(thread)),
    })
}

/// The thread's body.
fn run(shared: Arc<Shared>, settings: Settings, rx: Receiver<Msg>) {
    let mut e = Engine {
        shared,
        settings,
        conn: None,
        groups: BTreeMap::new(),
        instances: HashMap::new(),
        registered: HashMap::new(),
        completing: BTreeMap::new(),
        channels: channels::Channels::default(),
        channels_polled_at: 0,
        metrics_at: 0,
    };
    let mut backoff = BACKOFF.0;
    let mut warned = false;
    loop {
        if e.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if e.conn.is_none() {
            match connect(&e.shared) {
                Ok(c) => {
                    tracing::info!("Redis services connection up");
                    e.conn = Some(c);
                    e.registered.clear();
                    backoff = BACKOFF.0;
                    warned = false;
                    if let Err(err) = e.on_connect() {
                        e.lost(&err);
                    }
                }
                Err(err) => {
                    if !warned {
                        tracing::warn!("Redis services connection not ready: {err}; retrying");
                        warned = true;
                    }
                }
            }
        }
        let wait = if e.conn.is_some() { POLL / 2 } else { backoff };
        match rx.recv_timeout(wait) {
            Ok(m) => {
                e.handle(m);
                for m in rx.try_iter().take(4096) {
                    e.handle(m);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if e.conn.is_none() {
            backoff = (backoff * 2).min(BACKOFF.1);
            continue;
        }
        if let Err(err) = e.step() {
            e.lost(&err);
        }
    }
}

fn connect(shared: &Shared) -> redis::RedisResult<Conn> {
    let mut con = shared
        .client
        .get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut load = |text: &str| -> redis::RedisResult<String> {
        redis::cmd("SCRIPT").arg("LOAD").arg(text).query(&mut con)
    };
    let (take, complete, retry) = (load(TAKE_LUA)?, load(COMPLETE_LUA)?, load(RETRY_LUA)?);
    let (subs, replay, channel) = (load(SUBS_LUA)?, load(REPLAY_LUA)?, load(CHANNEL_LUA)?);
    Ok(Conn {
        con,
        take,
        complete,
        retry,
        subs,
        replay,
        channel,
    })
}

/// Loads the durable subscription index from Redis into this node's copy (if newer).
pub(super) fn load_index(shared: &Shared, con: &mut redis::Connection) -> redis::RedisResult<()> {
    let k = &shared.keys;
    let (version, flat, channel_flat): (String, Vec<Vec<u8>>, Vec<Vec<u8>>) = redis::cmd("EVAL")
        .arg(READ_INDEX_LUA)
        .arg(3)
        .arg(&k.dsubs)
        .arg(&k.dsubs_version)
        .arg(&k.channel_subs)
        .query(con)?;
    let version: u64 = version.parse().unwrap_or(0);
    let mut groups: BTreeMap<Arc<str>, BTreeMap<String, DurableSub>> = BTreeMap::new();
    for kv in flat.chunks(2) {
        let [field, value] = kv else { continue };
        let Some((g, id)) = std::str::from_utf8(field)
            .ok()
            .and_then(|f| f.split_once('\0'))
        else {
            continue;
        };
        let sub = serde_json::from_slice::<Json>(value)
            .ok()
            .and_then(|v| DurableSub::from_json(id, &v));
        match sub {
            Some(s) => {
                groups
                    .entry(g.into())
                    .or_default()
                    .insert(id.to_string(), s);
            }
            None => tracing::error!(
                group = g,
                id,
                "a durable subscription in Redis could not be read"
            ),
        }
    }
    let mut channels: Vec<(Arc<str>, DurableSub)> = Vec::new();
    for kv in channel_flat.chunks(2) {
        let [id, value] = kv else { continue };
        let id = String::from_utf8_lossy(id);
        match serde_json::from_slice::<Json>(value)
            .ok()
            .and_then(|v| DurableSub::from_json(&id, &v))
        {
            Some(sub) => channels.push((id.as_ref().into(), sub)),
            None => {
                tracing::error!(channel = %id, "a channel's subscription in Redis could not be read")
            }
        }
    }
    let mut ix = GroupIndex::build(&groups, &channels);
    ix.version = version;
    // Installed as read, even over a copy another thread installed meanwhile: an older
    // copy is refused by the next publish, which loads it again (and after Redis lost its
    // data the version starts again from 0).
    shared.durable.change(move |current| *current = ix);
    Ok(())
}

fn ws(shared: &Shared, at: Addr, msg: &Json) {
    shared
        .router()
        .answer(reply_to(at), Answer::Ws(crate::protocol::to_bytes(msg)));
}

fn reply_to(at: Addr) -> ReplyTo {
    ReplyTo {
        shard: at.shard as usize,
        conn: at.conn,
        gen: at.gen,
        req: 0,
    }
}

fn http(shared: &Shared, reply: ReplyTo, status: u16, body: Json) {
    shared.router().answer(reply, Answer::Http { status, body });
}

fn http_error(shared: &Shared, reply: ReplyTo, status: u16, code: &str, message: String) {
    http(
        shared,
        reply,
        status,
        json!({"error": {"code": code, "message": message}}),
    );
}

/// A command that needs Redis while it is away: refused `UNAVAILABLE`, never queued.
fn refuse(shared: &Shared, cmd: ServiceCmd) {
    super::super::services_refused(
        shared.router(),
        cmd,
        "cannot be served: Redis cannot be reached (cluster mode); retry",
    )
}

fn int(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A task's fields as the queue keeps them.
#[derive(Default)]
struct TaskFields {
    seq: u64,
    path: String,
    event_type: String,
    data: String,
    ts_ms: u64,
    ids: String,
}

impl TaskFields {
    fn of(fields: &Value) -> Option<TaskFields> {
        let Value::Array(kv) = fields else {
            return None;
        };
        let mut t = TaskFields::default();
        for pair in kv.chunks(2) {
            let (Some(k), Some(v)) = (pair.first().and_then(text), pair.get(1).and_then(text))
            else {
                continue;
            };
            match k.as_str() {
                "s" => t.seq = v.parse().ok()?,
                "p" => t.path = v,
                "e" => t.event_type = v,
                "d" => t.data = v,
                "t" => t.ts_ms = v.parse().unwrap_or(0),
                "i" => t.ids = v,
                _ => {}
            }
        }
        (t.seq > 0).then_some(t)
    }

    fn of_json(v: &Json) -> Option<TaskFields> {
        let s = |k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        Some(TaskFields {
            seq: s("s").parse().ok()?,
            path: s("p"),
            event_type: s("e"),
            data: s("d"),
            ts_ms: s("t").parse().unwrap_or(0),
            ids: s("i"),
        })
    }

    fn tail(&self) -> Vec<u8> {
        crate::protocol::encode_event_tail(
            &self.event_type,
            &self.path,
            &self.data,
            self.ts_ms,
            self.seq,
        )
    }
}

impl Engine {
    fn con(&mut self) -> redis::RedisResult<&mut Conn> {
        self.conn.as_mut().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "not connected to Redis"))
        })
    }

    fn lost(&mut self, err: &redis::RedisError) {
        tracing::warn!("Redis services connection lost: {err}");
        self.conn = None;
        // Not sent: those tasks come back after their ack timeout (at least once).
        self.completing.clear();
        self.shared.services_up.store(false, Ordering::Release);
        crate::metrics::redis_connected("services", false);
    }

    /// After (re)connecting: this node's instance counts as they are now (a previous life
    /// of this node id had none left), and the index.
    fn on_connect(&mut self) -> redis::RedisResult<()> {
        let shared = self.shared.clone();
        let node = shared.node_id.clone();
        let c = self.con()?;
        let groups: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&shared.keys.groups)
            .query(&mut c.con)?;
        if !groups.is_empty() {
            let mut pipe = redis::pipe();
            for g in &groups {
                pipe.cmd("HDEL")
                    .arg(shared.keys.instances(g))
                    .arg(&node)
                    .ignore();
            }
            pipe.query::<()>(&mut c.con)?;
        }
        load_index(&shared, &mut c.con)?;
        for g in self.groups.values_mut() {
            g.woken = true;
        }
        self.with_channels(|ch, cx, _| ch.on_connect(cx))?;
        self.register()?;
        self.shared.services_up.store(true, Ordering::Release);
        crate::metrics::redis_connected("services", true);
        Ok(())
    }

    /// Writes this node's instance count of every group whose count changed.
    fn register(&mut self) -> redis::RedisResult<()> {
        let counts: Vec<(Arc<str>, usize)> = self
            .groups
            .iter()
            .map(|(n, g)| (n.clone(), g.members.len()))
            .filter(|(n, c)| self.registered.get(n) != Some(c))
            .collect();
        if counts.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let c = self.con()?;
        let mut pipe = redis::pipe();
        for (g, n) in &counts {
            let key = shared.keys.instances(g);
            if *n == 0 {
                pipe.cmd("HDEL").arg(key).arg(&shared.node_id).ignore();
            } else {
                pipe.cmd("HSET")
                    .arg(key)
                    .arg(&shared.node_id)
                    .arg(*n)
                    .ignore();
                pipe.cmd("SADD").arg(&shared.keys.groups).arg(&**g).ignore();
            }
        }
        pipe.query::<()>(&mut c.con)?;
        self.registered.extend(counts);
        Ok(())
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Woken(owners) => {
                for g in owners {
                    if let Some(channel) = g.strip_prefix('\0') {
                        self.channels.wake(channel);
                    } else if let Some(lg) = self.groups.get_mut(g.as_str()) {
                        lg.woken = true;
                    }
                }
            }
            Msg::Control(fields) => self.channels.control(&self.shared, &fields),
            Msg::Cmd(cmd) => {
                let asker = Asker::of(&cmd);
                if let Err(e) = self.command(cmd) {
                    let down = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
                    if let Some(a) = asker {
                        a.refuse(&self.shared, down);
                    }
                    if down {
                        self.lost(&e);
                    } else {
                        tracing::error!("Redis refused a services call: {e}");
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: ServiceCmd) -> redis::RedisResult<()> {
        let now = crate::time::unix_ms();
        match cmd {
            // Local bookkeeping first: written to Redis by `register` (now, or once Redis
            // is back).
            ServiceCmd::Attach { at, group } => {
                let g = self.groups.entry(group.clone()).or_default();
                g.members.push(at);
                g.woken = true;
                self.instances.insert(at, group);
                return self.register_if_up();
            }
            ServiceCmd::Detach { at } => {
                if self.conn.is_some() {
                    self.with_channels(|ch, cx, _| ch.detach(cx, at))?;
                } else {
                    self.channels.detach_offline(&self.shared, at);
                }
                let Some(group) = self.instances.remove(&at) else {
                    return Ok(());
                };
                let mut back = Vec::new();
                if let Some(g) = self.groups.get_mut(&group) {
                    g.members.retain(|m| *m != at);
                    g.held.retain(|seq, h| {
                        if h.to == at {
                            back.push(*seq);
                        }
                        h.to != at
                    });
                    g.woken = true;
                }
                self.register_if_up()?;
                if !back.is_empty() && self.conn.is_some() {
                    // Due again now, for any instance on any node (an outage leaves them to
                    // their ack timeout instead).
                    let n = self.retry(&group, 0, &back)?;
                    crate::metrics::service_counts(0, &[], &vec!["disconnect"; n], 0);
                }
                return Ok(());
            }
            other if self.conn.is_none() => {
                refuse(&self.shared, other);
                return Ok(());
            }
            ServiceCmd::Subscribe {
                at,
                group,
                request_id,
                subs,
                rejected,
            } => {
                let mut args: Vec<Vec<u8>> = Vec::new();
                for r in &subs {
                    args.push(format!("{group}\0{}", r.sub.id).into_bytes());
                    args.push(crate::protocol::to_bytes(&r.sub.to_json()));
                }
                let (seq, flags) = self.change_subs(&group, "add", args)?;
                let answers: Vec<Json> = subs
                    .iter()
                    .zip(flags.iter().chain(std::iter::repeat(&0)))
                    .map(|(r, existed)| {
                        let mut a = json!({"id": r.sub.id, "path": r.sub.path,
                                           "events": r.sub.events, "seq": seq});
                        if r.since.is_some() {
                            // The queue kept everything since the subscription began; a
                            // new one cannot reach back before it.
                            a["recovered"] = json!(*existed == 1);
                        }
                        a
                    })
                    .collect();
                let mut m = json!({"type": "subscribedEvents", "subscriptions": answers});
                if !rejected.is_empty() {
                    m["rejected"] = Json::Array(rejected);
                }
                if let Some(g) = self.groups.get_mut(&group) {
                    g.woken = true;
                }
                ws(&self.shared, at, &with_request_id(m, &request_id));
            }
            ServiceCmd::Unsubscribe {
                at,
                group,
                request_id,
                ids,
            } => {
                let fields = ids
                    .iter()
                    .map(|id| format!("{group}\0{id}").into_bytes())
                    .collect();
                let (_, flags) = self.change_subs(&group, "remove", fields)?;
                let (mut removed, mut not_found) = (Vec::new(), Vec::new());
                for (id, f) in ids
                    .into_iter()
                    .zip(flags.iter().chain(std::iter::repeat(&0)))
                {
                    if *f == 1 {
                        removed.push(id);
                    } else {
                        not_found.push(id);
                    }
                }
                let mut m = json!({"type": "unsubscribedEvents", "ids": removed});
                if !not_found.is_empty() {
                    m["notFound"] = json!(not_found);
                }
                ws(&self.shared, at, &with_request_id(m, &request_id));
            }
            ServiceCmd::Complete { group, ids } => {
                // Gathered, and sent once per group at the end of the batch of messages
                // (`flush_completions`): one round trip for many acknowledgements.
                let seqs = own_seqs(&group, &ids);
                let lg = self.groups.get_mut(&group);
                let (pending, timed) = self.completing.entry(group).or_default();
                if let Some(g) = lg {
                    for s in &seqs {
                        if let Some(h) = g.held.remove(s) {
                            timed.push(now.saturating_sub(h.sent_at) as f64 / 1000.0);
                            g.woken = true;
                        }
                    }
                }
                pending.extend(seqs);
            }
            ServiceCmd::Failed {
                group,
                ids,
                retry_in_ms,
                ..
            } => {
                let seqs = own_seqs(&group, &ids);
                if let Some(g) = self.groups.get_mut(&group) {
                    for s in &seqs {
                        g.held.remove(s);
                    }
                    g.woken = true;
                }
                if !seqs.is_empty() {
                    let n = self.retry(&group, retry_in_ms, &seqs)?;
                    crate::metrics::service_counts(0, &[], &vec!["failed"; n], 0);
                }
            }
            ServiceCmd::Ops { req, reply } => self.ops(req, reply)?,
            ServiceCmd::ChannelAttach {
                at,
                channel,
                caller,
            } => self.with_channels(|ch, cx, _| ch.attach(cx, at, &channel, &caller))?,
            ServiceCmd::ChannelWritten { at, upto } => {
                self.with_channels(|ch, cx, _| ch.written(cx, at, upto))?
            }
            ServiceCmd::Channels { caller, req, reply } => self
                .with_channels(|ch, cx, settings| ch.request(cx, settings, &caller, req, reply))?,
            // Locks are the writer's: `RedisBackend::services` never sends them here.
            other @ (ServiceCmd::Lock { .. } | ServiceCmd::Unlock { .. }) => {
                tracing::error!("a lock command reached the services thread");
                super::super::services_refused(
                    self.shared.router(),
                    other,
                    "could not be served (reached the wrong thread: a bug, see the log)",
                )
            }
        }
        Ok(())
    }

    /// Runs `f` on the channels with this thread's connection.
    fn with_channels(
        &mut self,
        f: impl FnOnce(
            &mut channels::Channels,
            &mut channels::Ctx<'_>,
            &Settings,
        ) -> redis::RedisResult<()>,
    ) -> redis::RedisResult<()> {
        let shared = self.shared.clone();
        let Some(c) = self.conn.as_mut() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected to Redis",
            )));
        };
        let mut cx = channels::Ctx {
            shared: &shared,
            con: &mut c.con,
            sha: &c.channel,
        };
        f(&mut self.channels, &mut cx, &self.settings)
    }

    fn register_if_up(&mut self) -> redis::RedisResult<()> {
        if self.conn.is_some() {
            self.register()
        } else {
            Ok(())
        }
    }

    /// `subs.lua`, then this node's copy of the index reloaded; returns the `seq` at the
    /// change and the per-subscription flags.
    fn change_subs(
        &mut self,
        group: &str,
        mode: &str,
        args: Vec<Vec<u8>>,
    ) -> redis::RedisResult<(u64, Vec<u64>)> {
        let shared = self.shared.clone();
        let c = self.con()?;
        let k = &shared.keys;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&c.subs)
            .arg(5)
            .arg(&k.dsubs)
            .arg(&k.dsubs_version)
            .arg(&k.groups)
            .arg(k.queue(group))
            .arg(&k.seq)
            .arg(group)
            .arg(mode);
        for a in args {
            cmd.arg(a);
        }
        let reply: Value = cmd.query(&mut c.con)?;
        let Value::Array(v) = reply else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "subs.lua answered unexpectedly",
            )));
        };
        let seq = v.get(1).map_or(0, int);
        let flags = match v.get(2) {
            Some(Value::Array(f)) => f.iter().map(int).collect(),
            _ => Vec::new(),
        };
        load_index(&shared, &mut c.con)?;
        Ok((seq, flags))
    }

    /// `retry.lua`: the tasks become due again after `delay_ms`; returns how many.
    fn retry(&mut self, group: &str, delay_ms: u64, seqs: &[u64]) -> redis::RedisResult<usize> {
        let shared = self.shared.clone();
        let c = self.con()?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&c.retry).arg(3);
        queue_keys(&mut cmd, &shared, group);
        cmd.arg(delay_ms);
        for s in seqs {
            cmd.arg(*s);
        }
        let n: u64 = cmd.query(&mut c.con)?;
        Ok(n as usize)
    }

    /// One script call per group for the completions gathered.
    fn flush_completions(&mut self) -> redis::RedisResult<()> {
        let completing: Vec<_> = std::mem::take(&mut self.completing)
            .into_iter()
            .filter(|(_, (seqs, _))| !seqs.is_empty())
            .collect();
        if completing.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let c = self.con()?;
        let mut pipe = redis::pipe();
        for (group, (seqs, _)) in &completing {
            let cmd = pipe.cmd("EVALSHA").arg(&c.complete).arg(3);
            let k = &shared.keys;
            cmd.arg(k.queue(group))
                .arg(k.due(group))
                .arg(k.replayed(group));
            for s in seqs {
                cmd.arg(*s);
            }
        }
        let counts: Vec<u64> = pipe.query(&mut c.con)?;
        for ((_, (_, mut timed)), n) in completing.into_iter().zip(counts) {
            // The count is Redis's (what was still pending); ack times are known for the
            // tasks this node sent.
            timed.truncate(n as usize);
            crate::metrics::service_counts(0, &timed, &[], 0);
            crate::metrics::service_completed_untimed(n - timed.len() as u64);
        }
        Ok(())
    }

    /// Completions, deadlines, then tasks for every group whose instances have room.
    fn step(&mut self) -> redis::RedisResult<()> {
        self.flush_completions()?;
        let now = crate::time::unix_ms();
        let poll_ms = POLL.as_millis() as u64;
        let prefetch = self.settings.prefetch;
        let mut due = Vec::new();
        let mut timeouts = 0;
        for (name, g) in self.groups.iter_mut() {
            // Past its ack timeout a task is Redis's to give again (to any node); its
            // slot here is free.
            let before = g.held.len();
            g.held.retain(|_, h| h.deadline > now);
            timeouts += before - g.held.len();
            if before != g.held.len() {
                g.woken = true;
            }
            let room = g.members.len() * prefetch - g.held.len().min(g.members.len() * prefetch);
            if room > 0 && (g.woken || now >= g.polled_at + poll_ms) {
                due.push((name.clone(), room.min(TAKE_MAX)));
            }
        }
        if timeouts > 0 {
            crate::metrics::service_counts(0, &[], &vec!["timeout"; timeouts], 0);
        }
        for (name, room) in due {
            self.take(&name, room, now)?;
        }
        if self.channels.has_sockets() {
            let all = now >= self.channels_polled_at + poll_ms;
            if all {
                self.channels_polled_at = now;
            }
            self.with_channels(|ch, cx, _| ch.pump(cx, all))?;
        }
        self.register()?;
        if now >= self.metrics_at {
            self.metrics_at = now + 2000;
            self.gauges()?;
        }
        Ok(())
    }

    /// `take.lua` for one group, and the tasks out to its instances, round robin over
    /// those below `prefetch`.
    fn take(&mut self, group: &Arc<str>, room: usize, now: u64) -> redis::RedisResult<()> {
        let shared = self.shared.clone();
        let s = self.settings.clone();
        let c = self.con()?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&c.take).arg(5);
        let k = &shared.keys;
        cmd.arg(k.queue(group))
            .arg(k.due(group))
            .arg(k.dead(group))
            .arg(k.dead_records(group))
            .arg(k.replayed(group))
            .arg(&shared.node_id)
            .arg(s.ack_timeout_ms)
            .arg(room)
            .arg(s.max_attempts);
        let reply: Value = cmd.query(&mut c.con)?;
        let Value::Array(items) = reply else {
            return Ok(());
        };
        let Some(g) = self.groups.get_mut(group) else {
            return Ok(());
        };
        g.woken = false;
        g.polled_at = now;
        let dead = items.first().map_or(0, int);
        let mut holding: HashMap<Addr, usize> = HashMap::new();
        for h in g.held.values() {
            *holding.entry(h.to).or_default() += 1;
        }
        let mut sends: Vec<(Addr, Vec<Vec<u8>>)> = Vec::new();
        for item in items.iter().skip(1) {
            let Value::Array(parts) = item else { continue };
            let (Some(attempt), Some(t)) =
                (parts.get(1).map(int), parts.get(2).and_then(TaskFields::of))
            else {
                continue;
            };
            // Round robin over the instances below prefetch (the room asked for is
            // theirs, so one is found unless an instance left meanwhile).
            let n = g.members.len();
            let Some(to) = (0..n)
                .map(|i| g.members[(g.next + i) % n])
                .find(|m| holding.get(m).copied().unwrap_or(0) < s.prefetch)
            else {
                // Nobody to take it: due again at once for whoever can.
                g.woken = true;
                continue;
            };
            g.next = (g.members.iter().position(|m| *m == to).unwrap_or(0) + 1) % n.max(1);
            *holding.entry(to).or_default() += 1;
            let tail = t.tail();
            let r = Record {
                flags: 0,
                attempts: attempt as u32,
                ids: t.ids.as_bytes(),
                tail: &tail,
            };
            let mut msg = Vec::with_capacity(tail.len() + t.ids.len() + 64);
            record::event_message(&mut msg, group, t.seq, attempt as u32, &r);
            if let Some(old) = g.held.insert(
                t.seq,
                Held {
                    to,
                    sent_at: now,
                    deadline: now + s.ack_timeout_ms,
                },
            ) {
                // Given again to this node before its own deadline here passed.
                if let Some(c) = holding.get_mut(&old.to) {
                    *c = c.saturating_sub(1);
                }
            }
            match sends.iter_mut().find(|(a, _)| *a == to) {
                Some((_, v)) => v.push(msg),
                None => sends.push((to, vec![msg])),
            }
        }
        let taken: usize = sends.iter().map(|(_, m)| m.len()).sum();
        if taken == room {
            // There may be more.
            g.woken = true;
        }
        for (to, messages) in sends {
            shared.router().send_control(
                to.shard as usize,
                ShardMsg::Tasks {
                    conn: to.conn,
                    gen: to.gen,
                    messages,
                },
            );
        }
        if dead > 0 {
            crate::metrics::service_counts(0, &[], &[], dead);
        }
        Ok(())
    }

    /// The groups as Redis has them (every node answers the same).
    fn group_rows(&mut self) -> redis::RedisResult<Vec<GroupRow>> {
        let shared = self.shared.clone();
        let k = &shared.keys;
        let c = self.con()?;
        let mut names: Vec<String> = redis::cmd("SMEMBERS").arg(&k.groups).query(&mut c.con)?;
        if names.is_empty() {
            // (Redis refuses an empty pipeline.)
            return Ok(Vec::new());
        }
        names.sort();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for g in &names {
            pipe.cmd("XLEN")
                .arg(k.queue(g))
                .cmd("XPENDING")
                .arg(k.queue(g))
                .arg("w")
                .cmd("HLEN")
                .arg(k.due(g))
                .cmd("ZCARD")
                .arg(k.dead(g))
                .cmd("HGETALL")
                .arg(k.instances(g));
        }
        let replies: Vec<Value> = pipe.query(&mut c.con)?;
        let mut rows = Vec::with_capacity(names.len());
        let mut nodes: Vec<String> = Vec::new();
        for (g, r) in names.into_iter().zip(replies.chunks(5)) {
            let [len, pending, due, dead, inst] = r else {
                continue;
            };
            let pel = match pending {
                Value::Array(v) => v.first().map_or(0, int),
                _ => 0,
            };
            let due = int(due);
            let mut per_node = Vec::new();
            if let Value::Array(kv) | Value::Set(kv) = inst {
                for pair in kv.chunks(2) {
                    if let (Some(n), Some(c)) = (pair.first().and_then(text), pair.get(1)) {
                        per_node.push((n.clone(), int(c)));
                        nodes.push(n);
                    }
                }
            }
            if let Value::Map(kv) = inst {
                for (n, c) in kv {
                    if let Some(n) = text(n) {
                        per_node.push((n.clone(), int(c)));
                        nodes.push(n);
                    }
                }
            }
            rows.push(GroupRow {
                pending: int(len).saturating_sub(pel) + due.min(pel),
                in_flight: pel.saturating_sub(due),
                dead: int(dead),
                per_node,
                instances: 0,
                name: g,
            });
        }
        nodes.sort();
        nodes.dedup();
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("EXISTS").arg(k.node(n));
        }
        let alive: Vec<u64> = if nodes.is_empty() {
            Vec::new()
        } else {
            pipe.query(&mut c.con)?
        };
        let alive: HashMap<&str, bool> = nodes
            .iter()
            .map(String::as_str)
            .zip(alive.into_iter().map(|a| a == 1))
            .collect();
        for r in &mut rows {
            r.instances = r
                .per_node
                .iter()
                .filter(|(n, _)| alive.get(n.as_str()).copied().unwrap_or(false))
                .map(|(_, c)| *c)
                .sum();
        }
        Ok(rows)
    }

    fn gauges(&mut self) -> redis::RedisResult<()> {
        self.with_channels(|ch, cx, _| ch.gauges(cx))?;
        let rows = self.group_rows()?;
        for r in rows {
            // Pending and dead are the cluster's (every node shows the same); in flight
            // and instances are this node's (the dashboard sums them).
            let (held, members) = self
                .groups
                .get(r.name.as_str())
                .map_or((0, 0), |g| (g.held.len(), g.members.len()));
            crate::metrics::service_group(&r.name, r.pending, held, r.dead, members);
        }
        Ok(())
    }

    fn ops(&mut self, req: OpsRequest, reply: ReplyTo) -> redis::RedisResult<()> {
        let shared = self.shared.clone();
        let k = &shared.keys;
        let known = |e: &mut Engine, g: &str| -> redis::RedisResult<bool> {
            let c = e.con()?;
            redis::cmd("SISMEMBER")
                .arg(&k.groups)
                .arg(g)
                .query(&mut c.con)
        };
        let not_found = |g: &str| {
            http_error(
                &shared,
                reply,
                404,
                "NOT_FOUND",
                format!("no service group '{g}'"),
            )
        };
        match req {
            OpsRequest::Groups => {
                let subs: std::collections::HashSet<String> = {
                    let c = self.con()?;
                    let fields: Vec<String> =
                        redis::cmd("HKEYS").arg(&k.dsubs).query(&mut c.con)?;
                    fields
                        .into_iter()
                        .filter_map(|f| f.split_once('\0').map(|(g, _)| g.to_string()))
                        .collect()
                };
                let groups: Vec<Json> = self
                    .group_rows()?
                    .into_iter()
                    .filter(|r| {
                        subs.contains(&r.name)
                            || r.pending + r.in_flight + r.dead > 0
                            || r.instances > 0
                    })
                    .map(|r| {
                        json!({"group": r.name, "pending": r.pending, "inFlight": r.in_flight,
                               "dead": r.dead, "instances": r.instances})
                    })
                    .collect();
                http(&shared, reply, 200, json!({"groups": groups}));
            }
            OpsRequest::DeadLetters {
                group,
                limit,
                cursor,
            } => {
                if !known(self, &group)? {
                    not_found(&group);
                    return Ok(());
                }
                let c = self.con()?;
                let (total, seqs): (u64, Vec<String>) = redis::pipe()
                    .cmd("ZCARD")
                    .arg(k.dead(&group))
                    .cmd("ZRANGE")
                    .arg(k.dead(&group))
                    .arg(cursor.unwrap_or(0))
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1)
                    .query(&mut c.con)?;
                let page = &seqs[..seqs.len().min(limit)];
                let next = (seqs.len() > limit).then(|| seqs[limit].clone());
                let records: Vec<Option<String>> = if page.is_empty() {
                    Vec::new()
                } else {
                    redis::cmd("HMGET")
                        .arg(k.dead_records(&group))
                        .arg(page)
                        .query(&mut c.con)?
                };
                let data: Vec<Json> = records
                    .into_iter()
                    .flatten()
                    .filter_map(|raw| {
                        let v: Json = serde_json::from_str(&raw).ok()?;
                        let t = TaskFields::of_json(&v)?;
                        let attempt = v.get("a").and_then(Json::as_u64).unwrap_or(0);
                        let tail = t.tail();
                        let r = Record {
                            flags: 0,
                            attempts: attempt as u32,
                            ids: t.ids.as_bytes(),
                            tail: &tail,
                        };
                        Some(json!({"taskId": record::task_id(&group, t.seq),
                                    "attempt": attempt, "event": record::event_value(&r)}))
                    })
                    .collect();
                http(
                    &shared,
                    reply,
                    200,
                    json!({"data": data, "totalCount": total, "nextCursor": next}),
                );
            }
            OpsRequest::Replay { group } | OpsRequest::Purge { group } if !known(self, &group)? => {
                not_found(&group)
            }
            OpsRequest::Replay { group } => {
                let n = self.replay(&group, "replay")?;
                if let Some(g) = self.groups.get_mut(group.as_str()) {
                    g.woken = true;
                }
                http(&shared, reply, 200, json!({"replayed": n}));
            }
            OpsRequest::Purge { group } => {
                let n = self.replay(&group, "purge")?;
                http(&shared, reply, 200, json!({"purged": n}));
            }
        }
        Ok(())
    }

    fn replay(&mut self, group: &str, mode: &str) -> redis::RedisResult<u64> {
        let shared = self.shared.clone();
        let k = &shared.keys;
        let c = self.con()?;
        redis::cmd("EVALSHA")
            .arg(&c.replay)
            .arg(5)
            .arg(k.queue(group))
            .arg(k.dead(group))
            .arg(k.dead_records(group))
            .arg(k.replayed(group))
            .arg(&k.seq)
            .arg(mode)
            .query(&mut c.con)
    }
}

/// Who waits for a command's answer: told when Redis failed it.
enum Asker {
    Ws(Addr, Option<Json>),
    Http(ReplyTo),
}

impl Asker {
    fn of(cmd: &ServiceCmd) -> Option<Asker> {
        match cmd {
            ServiceCmd::Subscribe { at, request_id, .. }
            | ServiceCmd::Unsubscribe { at, request_id, .. } => {
                Some(Asker::Ws(*at, request_id.clone()))
            }
            ServiceCmd::Ops { reply, .. } | ServiceCmd::Channels { reply, .. } => {
                Some(Asker::Http(*reply))
            }
            _ => None,
        }
    }

    /// `down`: Redis could not be reached (`UNAVAILABLE`, retry); else it refused the
    /// call (`INTERNAL`).
    fn refuse(self, shared: &Shared, down: bool) {
        let (code, status, message) = if down {
            (
                crate::protocol::ErrorCode::Unavailable,
                503,
                "Redis cannot be reached (cluster mode); retry",
            )
        } else {
            (
                crate::protocol::ErrorCode::Internal,
                500,
                "Redis refused the services call (see the node's log)",
            )
        };
        match self {
            Asker::Ws(at, request_id) => shared.router().answer(
                reply_to(at),
                Answer::Ws(crate::protocol::error_message(
                    code,
                    message,
                    request_id.as_ref(),
                )),
            ),
            Asker::Http(reply) => {
                http_error(shared, reply, status, code.as_str(), message.to_string())
            }
        }
    }
}

struct GroupRow {
    name: String,
    pending: u64,
    in_flight: u64,
    dead: u64,
    per_node: Vec<(String, u64)>,
    instances: u64,
}

/// The queue, due-times and replayed-ids keys of a group (complete.lua, retry.lua).
fn queue_keys(cmd: &mut redis::Cmd, shared: &Shared, group: &str) {
    let k = &shared.keys;
    cmd.arg(k.queue(group))
        .arg(k.due(group))
        .arg(k.replayed(group));
}

/// The seqs of the ids that name tasks of `group` (others are ignored, PROTOCOL.md §10).
fn own_seqs(group: &str, ids: &[String]) -> Vec<u64> {
    ids.iter()
        .filter_map(|id| match record::parse_task_id(id) {
            Some((g, seq)) if g == group => Some(seq),
            _ => None,
        })
        .collect()
}
