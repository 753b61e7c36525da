//! Cluster mode (PROTOCOL.md §14): the backend on one Redis that every node shares.
//!
//! - **One order.** Publications and entity writes are sequenced by Lua scripts
//!   ([`writer`]): one call per publish request (a batch is one call) takes the next
//!   `seq`s from a counter and appends the publications to one stream, entry id
//!   `<seq>-0`; an entity write is one call that checks the version it was decided
//!   against, stores the new state and version and appends its publication, atomically.
//! - **Every node applies the stream** ([`reader`]), its own publications included, in
//!   `seq` order, through the same [`crate::apply::Applier`] as the single node: replica,
//!   history window, shards. Fan-out stays on the node: a delivery costs Redis nothing.
//! - **Answers wait for the local applier**: a publisher or writer is answered once this
//!   node has applied its `seq`, so a `GET` or a `since` on the node that answered
//!   already sees it.
//! - **Tickets** are Redis keys (`SET PX`, `GETDEL`): any node redeems them, once.
//! - **Locks** are on Redis ([`locks`], `lock.lua`, `unlock.lua`): one holder, one
//!   fencing counter and one first-come-first-served queue for the cluster. A service's
//!   `log` is a publication, so it reaches admins on every node.
//! - **Service groups** ([`services`]): durable subscriptions in Redis with a version
//!   that the publish scripts check, so a publication's tasks go onto its groups' queues
//!   (streams with a consumer group) in the call that sequences it; each node takes tasks
//!   for its own instances.
//! - **Channels** ([`channels`]): in Redis, fed by the same scripts; one socket per
//!   channel cluster-wide.
//! - **Failures**: without Redis the node is not ready and refuses what needs Redis with
//!   `UNAVAILABLE` (REST 503) at once, never queueing without bound; sockets stay open;
//!   the reader resumes from the last id it applied. A gap in the stream (trimmed while
//!   the node was away, or a Redis that lost its data: a new epoch, see `reseed.lua`)
//!   makes the node reload entities from Redis and start its history window after the
//!   gap, so a `since` from before answers `recovered: false`.
//!
//! Owned by the node (`Node::backend`). Three threads of its own (the writer, the reader,
//! the services thread), each with one Redis connection; shards only put jobs on the
//! writer's queue, commands in the services thread's inbox, and read the applier's
//! replica, history and marks. A fourth, the operator console's node rows ([`nodes`]),
//! starts when the server hands over the row's source and touches nothing else.

mod channels;
mod locks;
mod nodes;
mod reader;
mod services;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use super::{refusal_answer, Backend, PublishReply};
use crate::apply::Applier;
use crate::auth::jwt::Claims;
use crate::config::Config;
use crate::entities::{EntityRead, EntityWrite, Replica};
use crate::ingest::{PublishItem, PublishOutcome};
use crate::protocol::{ErrorCode, Refusal};
use crate::publication::Publication;
use crate::router::{Answer, ReplyTo, Router};
use crate::services::{ServiceCmd, ServicesEngine};

/// Jobs waiting for the writer at most; beyond, requests are refused `UNAVAILABLE` at
/// once (Redis is too slow or away): never an unbounded queue.
const MAX_QUEUED: usize = 65_536;

/// How long an answer waits for this node to apply its `seq` before it goes anyway (the
/// write is durable in Redis; only read-your-writes on this node is given up).
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// The keys of one cluster in Redis.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    pub seq: String,
    pub stream: String,
    pub epoch: String,
    entity_prefix: String,
    ticket_prefix: String,
    lock_prefix: String,
    pub fence: String,
    node_prefix: String,
    /// Every key's prefix (the scripts that make a group's queue key need it).
    pub prefix: String,
    /// The durable subscription index (hash `group\0id` → JSON) and its version.
    pub dsubs: String,
    pub dsubs_version: String,
    /// The set of service groups ever subscribed or attached.
    pub groups: String,
    /// Every channel (zset by creation time), their subscriptions (hash id → JSON), the
    /// newest creation time given.
    pub channels: String,
    pub channel_subs: String,
    pub channel_last: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            seq: format!("{prefix}seq"),
            stream: format!("{prefix}stream"),
            epoch: format!("{prefix}epoch"),
            entity_prefix: format!("{prefix}e:"),
            ticket_prefix: format!("{prefix}t:"),
            lock_prefix: format!("{prefix}l"),
            fence: format!("{prefix}fence"),
            node_prefix: format!("{prefix}node:"),
            prefix: prefix.to_string(),
            dsubs: format!("{prefix}dsubs"),
            dsubs_version: format!("{prefix}dsubs:v"),
            groups: format!("{prefix}groups"),
            channels: format!("{prefix}chs"),
            channel_subs: format!("{prefix}csubs"),
            channel_last: format!("{prefix}chlast"),
        }
    }

    /// A channel's hash (see `channel.lua`) and its backlog stream.
    pub fn channel(&self, id: &str) -> [String; 2] {
        [
            format!("{}ch:{id}", self.prefix),
            format!("{}cb:{id}", self.prefix),
        ]
    }

    /// A node's control stream: messages from other nodes (see `channels`).
    pub fn control(&self, node_id: &str) -> String {
        format!("{}ctl:{node_id}", self.prefix)
    }

    /// How many channels an owner has.
    pub fn channel_owner(&self, owner: &str) -> String {
        format!("{}cho:{owner}", self.prefix)
    }

    /// A group's queue: a stream with the consumer group `w` (see `services`).
    pub fn queue(&self, group: &str) -> String {
        format!("{}q:{group}", self.prefix)
    }

    /// When a group's tasks that failed or were given back are due again.
    pub fn due(&self, group: &str) -> String {
        format!("{}qn:{group}", self.prefix)
    }

    /// The entry ids of a group's replayed tasks (others are `<seq>-0`).
    pub fn replayed(&self, group: &str) -> String {
        format!("{}qr:{group}", self.prefix)
    }

    /// A group's dead letters: their seqs (zset), and their records (hash).
    pub fn dead(&self, group: &str) -> String {
        format!("{}dl:{group}", self.prefix)
    }

    pub fn dead_records(&self, group: &str) -> String {
        format!("{}dlv:{group}", self.prefix)
    }

    /// How many instances of a group each node has.
    pub fn instances(&self, group: &str) -> String {
        format!("{}gi:{group}", self.prefix)
    }

    pub fn entity(&self, collection: &str, id: &str) -> String {
        format!("{}{collection}/{id}", self.entity_prefix)
    }

    /// `SCAN` pattern of every entity key, and how to read a key back.
    pub fn entity_pattern(&self) -> String {
        format!("{}*", self.entity_prefix)
    }

    pub fn entity_of<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(self.entity_prefix.as_str())?
            .split_once('/')
    }

    pub fn ticket(&self, uuid: &str) -> String {
        format!("{}{uuid}", self.ticket_prefix)
    }

    /// A running node's registration (its `node_id` is taken while it lives).
    pub fn node(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.node_prefix)
    }

    /// A lock's keys: the lock, its waiters (list), their deadlines and heartbeats.
    pub fn lock(&self, name: &str) -> [String; 3] {
        let p = &self.lock_prefix;
        [
            format!("{p}:{name}"),
            format!("{p}w:{name}"),
            format!("{p}m:{name}"),
        ]
    }
}

/// What waits for this node to apply a `seq`: an answer to send, or an entity read to
/// run on the replica then.
pub(super) enum Pending {
    Answer(Answer),
    Read(EntityRead),
}

/// By the `seq` they wait for, each with when it started waiting and whom it answers.
type Waiting = BTreeMap<u64, Vec<(Instant, ReplyTo, Pending)>>;

/// What the writer, the reader and the shards share.
pub(super) struct Shared {
    pub applier: Applier,
    /// `cluster.node_id`: names this node's lock holders.
    pub node_id: String,
    /// This process's registration under `node_id` (random per start).
    pub instance: String,
    pub keys: Keys,
    pub client: ::redis::Client,
    /// The stream's length bound (`history.size`, at least 1).
    pub stream_len: usize,
    /// A channel backlog's bound (`channels.backlog`, at least 1).
    pub channel_backlog: usize,
    /// Answers waiting for this node to apply a `seq` (see [`Shared::answer_when_applied`]).
    waiting: Mutex<Waiting>,
    /// The newest `seq` this node has heard of (the writer's answers, the reader).
    pub head: AtomicU64,
    /// The epoch of Redis's data as this node last knew it (empty before it first
    /// connected).
    pub epoch: Mutex<String>,
    /// The largest fencing token this node has seen (its grants, and the counter as its
    /// reader last read it): a Redis that lost its data is re-seeded above it.
    pub fence_seen: AtomicU64,
    /// The writer has a connection with its scripts loaded.
    pub writer_up: AtomicBool,
    /// The services thread has a connection with its scripts loaded and the index.
    pub services_up: AtomicBool,
    /// This node's copy of the durable subscription index, with Redis's version of it
    /// (the writer matches publications against it; see `services`).
    pub durable: crate::services::DurableSubs,
    /// The services thread's inbox (the reader wakes it for groups with new tasks).
    services: Sender<services::Msg>,
    /// The reader is connected and has caught up once since it connected.
    pub reader_up: AtomicBool,
    pub stopping: AtomicBool,
}

impl Shared {
    fn router(&self) -> &Arc<Router> {
        self.applier.router()
    }

    /// Answers `to` with `answer` once this node has applied `seq` (at once if it has).
    pub fn answer_when_applied(&self, seq: u64, to: ReplyTo, answer: Answer) {
        self.when_applied(seq, to, Pending::Answer(answer));
    }

    /// Settles `what` for `to` once this node has applied `seq` (at once if it has).
    pub fn when_applied(&self, seq: u64, to: ReplyTo, what: Pending) {
        self.head.fetch_max(seq, Ordering::AcqRel);
        let mut w = lock(&self.waiting);
        // Checked under the lock the reader releases under, after it moves the mark:
        // an answer is either released by the reader or sent here, never stranded.
        if self.applier.applied() >= seq {
            drop(w);
            self.settle(to, what);
        } else {
            w.entry(seq).or_default().push((Instant::now(), to, what));
        }
    }

    fn settle(&self, to: ReplyTo, what: Pending) {
        let answer = match what {
            Pending::Answer(a) => a,
            // The shard runs it (not this thread, which applies the stream).
            Pending::Read(read) => Answer::Read(read),
        };
        self.router().answer(to, answer);
    }

    /// The reader applied everything up to `applied`: what waited for it goes.
    pub fn release(&self, applied: u64) {
        let ready = {
            let mut w = lock(&self.waiting);
            let later = w.split_off(&(applied + 1));
            std::mem::replace(&mut *w, later)
        };
        for (_, to, what) in ready.into_values().flatten() {
            self.settle(to, what);
        }
    }

    /// What waited longer than [`APPLY_WAIT`] goes now (the reader is away): an answer
    /// to a write (durable in Redis already), but a read is refused `UNAVAILABLE` rather
    /// than answered from a replica that may miss a write answered before it.
    pub fn release_stale(&self) {
        let mut stale = Vec::new();
        {
            let mut w = lock(&self.waiting);
            for answers in w.values_mut() {
                let mut i = 0;
                while i < answers.len() {
                    if answers[i].0.elapsed() >= APPLY_WAIT {
                        stale.push(answers.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            w.retain(|_, a| !a.is_empty());
        }
        for (_, to, what) in stale {
            match what {
                Pending::Answer(a) => self.router().answer(to, a),
                Pending::Read(_) => self.router().answer(
                    to,
                    refusal_answer(
                        503,
                        &Refusal::new(
                            ErrorCode::Unavailable,
                            "this node is behind the cluster (it has not applied the writes \
                             answered before this read); retry",
                        ),
                    ),
                ),
            }
        }
    }

    /// A control message from another node, for the services thread.
    pub fn control_services(&self, fields: Vec<(String, String)>) {
        let _ = self.services.send(services::Msg::Control(fields));
    }

    /// Tells the services thread that these groups have new tasks.
    pub fn wake_services(&self, groups: Vec<String>) {
        let _ = self.services.send(services::Msg::Woken(groups));
    }

    pub fn ready(&self) -> bool {
        self.writer_up.load(Ordering::Acquire)
            && self.reader_up.load(Ordering::Acquire)
            && self.services_up.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The refusal for anything that needs Redis while it cannot be reached.
pub(super) fn unavailable(what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::Unavailable,
        format!("{what}: Redis cannot be reached (cluster mode); retry"),
    )
}

/// A job for the writer thread.
pub(super) enum Job {
    Publish {
        /// (path, event type, data JSON).
        items: Vec<(String, String, String)>,
        reply: PublishReply,
    },
    Entity {
        write: EntityWrite,
        reply: ReplyTo,
        /// Times it was decided against a version that moved before it was applied.
        conflicts: u32,
    },
    IssueTicket {
        claims: Claims,
        ttl_ms: u64,
        reply: ReplyTo,
    },
    RedeemTicket {
        ticket: String,
        reply: ReplyTo,
    },
    /// An entity read, run once the replica reflects the head (`GET` of the counter).
    Read {
        read: EntityRead,
        reply: ReplyTo,
    },
    /// A service connection's `lock`.
    Lock {
        at: crate::services::Addr,
        request_id: Option<serde_json::Value>,
        name: String,
        ttl_ms: u64,
        wait_ms: u64,
    },
    Unlock {
        at: crate::services::Addr,
        request_id: Option<serde_json::Value>,
        name: String,
    },
    /// A service connection closed: its locks are released, its waits dropped.
    Release {
        at: crate::services::Addr,
    },
}

impl Job {
    /// Answers the job `UNAVAILABLE` (Redis away, or the writer's queue full).
    fn refuse(self, router: &Router) {
        match self {
            Job::Publish { reply, .. } => super::publish_answered(
                router,
                reply,
                PublishOutcome {
                    accepted: 0,
                    first_seq: 0,
                    last_seq: 0,
                },
                Err((503, unavailable("publish"))),
            ),
            Job::Entity { reply, .. } => {
                router.answer(reply, refusal_answer(503, &unavailable("entity write")))
            }
            Job::IssueTicket { reply, .. } => {
                router.answer(reply, refusal_answer(503, &unavailable("ticket")))
            }
            Job::Read { reply, .. } => {
                router.answer(reply, refusal_answer(503, &unavailable("entity read")))
            }
            Job::Lock { at, request_id, .. } | Job::Unlock { at, request_id, .. } => {
                let r = unavailable("lock");
                let m = crate::protocol::error_message(r.code, &r.message, request_id.as_ref());
                router.answer(locks::reply_to(at), Answer::Ws(m))
            }
            // Only when the writer's queue is full: held locks then expire with their ttl.
            Job::Release { .. } => {}
            Job::RedeemTicket { reply, .. } => {
                // Refused like a bad ticket (close 4001), saying why.
                router.answer(
                    reply,
                    Answer::Ticket(Err(crate::auth::tickets::TicketError::Unavailable)),
                )
            }
        }
    }
}

/// The cluster backend: see the module docs.
pub struct RedisBackend {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    services: Box<dyn ServicesEngine>,
    /// What was published through this node (not the cluster's), for the operator
    /// console.
    busiest: crate::topk::BusiestPaths,
    /// Every node's overview row, for the operator console ([`nodes`]).
    nodes: Arc<nodes::Nodes>,
}

impl RedisBackend {
    /// Starts the writer and the reader. Returns at once: the node reports ready once
    /// both are connected and the reader has loaded entities and the history window.
    pub fn open(config: &Config, router: Arc<Router>) -> Result<RedisBackend, String> {
        let client = ::redis::Client::open(config.cluster.redis_url.as_str())
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let (services_tx, services_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            applier: Applier::new(
                router,
                Arc::new(Replica::default()),
                config.history.size,
                config.history.ttl_ms,
                0,
            ),
            node_id: config.cluster.node_id.clone(),
            instance: crate::auth::tickets::uuid_v4(),
            keys: Keys::new("shardcast:"),
            client,
            stream_len: config.history.size.max(1),
            channel_backlog: config.channels.backlog.max(1),
            waiting: Mutex::new(BTreeMap::new()),
            head: AtomicU64::new(0),
            fence_seen: AtomicU64::new(0),
            epoch: Mutex::new(String::new()),
            writer_up: AtomicBool::new(false),
            services_up: AtomicBool::new(false),
            durable: crate::services::DurableSubs::default(),
            services: services_tx,
            reader_up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        crate::metrics::cluster_mode();
        let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED);
        let settings = services::Settings {
            ack_timeout_ms: config.services.ack_timeout_ms,
            max_attempts: config.services.max_attempts,
            prefetch: config.services.prefetch.max(1),
            max_per_user: config.channels.max_per_user,
            public_url: config.public_url.clone(),
        };
        let services = services::start(shared.clone(), settings, services_rx)?;
        let span = tracing::Span::current();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("shardcast-redis-writer".into())
            .spawn({
                let span = span.clone();
                move || span.in_scope(|| writer::run(w, rx))
            })
            .map_err(|e| format!("cannot start the Redis writer: {e}"))?;
        let r = shared.clone();
        std::thread::Builder::new()
            .name("shardcast-redis-reader".into())
            .spawn(move || span.in_scope(|| reader::run(r)))
            .map_err(|e| format!("cannot start the Redis reader: {e}"))?;
        tracing::info!(url = %redacted(&config.cluster.redis_url), "cluster mode: Redis backend started");
        Ok(RedisBackend {
            shared,
            jobs: tx,
            writer: Mutex::new(Some(writer)),
            services: Box::new(services),
            busiest: crate::topk::BusiestPaths::new(),
            nodes: Arc::new(nodes::Nodes::default()),
        })
    }

    fn to_services(&self, cmd: ServiceCmd) {
        self.services.send(cmd);
    }

    fn submit(&self, job: Job) {
        // A closed connection's locks are released once Redis is back (nobody waits for
        // an answer), rather than held until their ttl runs out.
        let keep = matches!(job, Job::Release { .. });
        if !keep && !self.shared.writer_up.load(Ordering::Acquire) {
            // Away: refused now rather than queued (the writer keeps trying to connect).
            job.refuse(self.shared.router());
            return;
        }
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                job.refuse(self.shared.router())
            }
        }
    }
}

/// The URL without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl Backend for RedisBackend {
    fn busiest_paths(&self) -> &crate::topk::BusiestPaths {
        &self.busiest
    }

    fn share_node_row(&self, row: Box<dyn Fn() -> serde_json::Value + Send + Sync>) {
        self.nodes.start(self.shared.clone(), row);
    }

    fn node_rows(&self) -> Option<Vec<serde_json::Value>> {
        self.nodes.rows()
    }

    fn publish(&self, items: &[PublishItem], reply: PublishReply) -> Option<PublishOutcome> {
        self.busiest.note(items.iter().map(|i| i.path.as_str()));
        let items = items
            .iter()
            .map(|i| {
                (
                    i.path.clone(),
                    i.event_type.clone(),
                    i.data.get().to_string(),
                )
            })
            .collect();
        self.submit(Job::Publish { items, reply });
        None
    }

    fn services(&self, cmd: ServiceCmd) {
        // Locks are the writer's (their waits are polled with its other jobs); queues,
        // subscriptions and channels the services thread's.
        match cmd {
            ServiceCmd::Lock {
                at,
                request_id,
                name,
                ttl_ms,
                wait_ms,
            } => self.submit(Job::Lock {
                at,
                request_id,
                name,
                ttl_ms,
                wait_ms,
            }),
            ServiceCmd::Unlock {
                at,
                request_id,
                name,
            } => self.submit(Job::Unlock {
                at,
                request_id,
                name,
            }),
            ServiceCmd::Detach { at } => {
                self.submit(Job::Release { at });
                self.to_services(ServiceCmd::Detach { at });
            }
            other => self.to_services(other),
        }
    }

    fn write_entity(&self, write: EntityWrite, reply: ReplyTo) {
        self.submit(Job::Entity {
            write,
            reply,
            conflicts: 0,
        });
    }

    fn reads_wait(&self) -> bool {
        true
    }

    fn read_entities(&self, read: EntityRead, reply: ReplyTo) {
        self.submit(Job::Read { read, reply });
    }

    fn issue_ticket(&self, claims: Claims, ttl_ms: u64, reply: ReplyTo) {
        self.submit(Job::IssueTicket {
            claims,
            ttl_ms,
            reply,
        });
    }

    fn redeem_ticket(&self, ticket: &str, reply: ReplyTo) {
        self.submit(Job::RedeemTicket {
            ticket: ticket.to_string(),
            reply,
        });
    }

    fn applied_seq(&self) -> u64 {
        self.shared.applier.applied()
    }

    fn head_seq(&self) -> u64 {
        self.shared
            .head
            .load(Ordering::Acquire)
            .max(self.shared.applier.applied())
    }

    fn replay(&self, since: u64, upto: u64, f: &mut dyn FnMut(&Arc<Publication>)) -> bool {
        self.shared
            .applier
            .history()
            .replay(since, upto, crate::time::unix_ms(), f)
    }

    fn replica(&self) -> &Replica {
        self.shared.applier.replica()
    }

    fn ready(&self) -> bool {
        self.shared.ready()
    }

    fn close(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        // The writer finishes what it holds (answered) and exits; the reader exits at its
        // next read (at most its block time).
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        self.services.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_redaction() {
        let k = Keys::new("p:");
        assert_eq!(k.entity("c", "x"), "p:e:c/x");
        assert_eq!(k.entity_of("p:e:c/x"), Some(("c", "x")));
        assert_eq!(k.entity_of("p:t:c/x"), None);
        assert_eq!(k.ticket("u"), "p:t:u");
        assert_eq!(redacted("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
