//! Services (PROTOCOL.md §10) and REST-created channels (§9) on one node: durable group
//! queues shared by a group's instances, acknowledgements and redelivery, dead letters,
//! locks with fencing tokens, and channels' durable backlogs and sockets.
//!
//! One thread, the services thread, owns every group's queue ([`queue::Group`]), every
//! channel (`channels::Channels`) and the lock table (`locks::Locks`); shards and the
//! REST API talk to it only through [`ServiceCmd`]s (via
//! [`crate::backend::Backend::services`]) and hear back through their mailboxes
//! (`ShardMsg::Tasks` and `ShardMsg::ChannelEvents` for deliveries, `ShardMsg::Close` to
//! close a socket, `Answer` for everything else). Ingest reaches it through [`Intake`],
//! its [`TaskSink`]: under the sequencer lock it matches each publication against the
//! durable subscriptions of groups and channels ([`index`]) and hands the tasks and
//! backlog events to the store, and the publisher is answered once they are durable.
//! Every write goes through the store's group commit; the thread never waits for one
//! (the jobs' completions come back as messages), it only reads (paging a backlog in, a
//! retry's payload, dead-letter listings, a channel's events for its socket).

mod channels;
pub mod index;
mod locks;
// Public for the benchmarks (benches/features.rs, "service ack"); nothing outside this
// module changes a queue.
pub mod queue;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

pub use index::{DurableSub, DurableSubs};
pub use queue::Addr;

use crate::config::Config;
use crate::ingest::{Durably, Ingest, NewTask, TaskSink};
use crate::publication::Publication;
use crate::router::{Answer, ReplyTo, Router, ShardMsg};
use crate::store::{Job, JobOutcome, Store, Table, WriteTx};
use index::{GroupIndex, Owner};
use locks::{LockEvent, Locks};
use queue::{Changes, Delivery, Group, Outcomes, Step};

/// Fencing tokens are reserved durably in blocks this big (like `seq`).
const FENCE_BLOCK: u64 = 1 << 20;
const FENCE_KEY: &[u8] = b"fencing_reserved";
/// Meta key prefixes: a group's durable subscriptions and its delivery watermark.
const SUB_PREFIX: &[u8] = b"gsub\0";
const WATERMARK_PREFIX: &[u8] = b"gwm\0";
/// Messages handled per loop iteration before the thread writes what they produced.
const BATCH: usize = 4096;

fn sub_key(group: &str, id: &str) -> Vec<u8> {
    let mut k = SUB_PREFIX.to_vec();
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn watermark_key(group: &str) -> Vec<u8> {
    let mut k = WATERMARK_PREFIX.to_vec();
    k.extend_from_slice(group.as_bytes());
    k
}

/// A subscription a service asked for, checked by its shard.
#[derive(Debug)]
pub struct SubscribeRequest {
    pub sub: DurableSub,
    pub since: Option<u64>,
}

/// The operator REST API's questions (`/api/v1/services…`).
#[derive(Debug)]
pub enum OpsRequest {
    Groups,
    DeadLetters {
        group: String,
        limit: usize,
        cursor: Option<u64>,
    },
    Replay {
        group: String,
    },
    Purge {
        group: String,
    },
}

/// What shards and the REST API ask of the services thread.
#[derive(Debug)]
pub enum ServiceCmd {
    /// A service connection authenticated: an instance of `group`.
    Attach {
        at: Addr,
        group: Arc<str>,
    },
    /// It closed: what it held goes back to the queue, its locks are released.
    Detach {
        at: Addr,
    },
    Subscribe {
        at: Addr,
        group: Arc<str>,
        request_id: Option<Value>,
        subs: Vec<SubscribeRequest>,
        /// Entries the shard refused already (`{"id","code","message"}`).
        rejected: Vec<Value>,
    },
    Unsubscribe {
        at: Addr,
        group: Arc<str>,
        request_id: Option<Value>,
        ids: Vec<String>,
    },
    /// `taskComplete`: any instance of the group may complete a task (ids are
    /// idempotent), so who sent it does not matter.
    Complete {
        group: Arc<str>,
        ids: Vec<String>,
    },
    Failed {
        at: Addr,
        group: Arc<str>,
        ids: Vec<String>,
        retry_in_ms: u64,
    },
    Lock {
        at: Addr,
        request_id: Option<Value>,
        name: String,
        ttl_ms: u64,
        wait_ms: u64,
    },
    Unlock {
        at: Addr,
        request_id: Option<Value>,
        name: String,
    },
    Ops {
        req: OpsRequest,
        reply: ReplyTo,
    },
    /// A socket authenticated on `/channels/{channel}`.
    ChannelAttach {
        at: Addr,
        channel: String,
        caller: crate::channels::Caller,
    },
    /// A channel socket's shard wrote its events up to `upto`.
    ChannelWritten {
        at: Addr,
        upto: u64,
    },
    /// A request of the channels REST API (PROTOCOL.md §9).
    Channels {
        caller: crate::channels::Caller,
        req: crate::channels::ChannelRequest,
        reply: ReplyTo,
    },
}

/// The services thread's inbox.
enum Msg {
    Cmd(ServiceCmd),
    /// Tasks that are durable, in commit order.
    Enqueued(Vec<NewTask>),
    /// A delivery job committed: watermarks now durable, tasks now sent.
    Delivered {
        watermarks: Vec<(Arc<str>, u64)>,
        sent: Vec<(Arc<str>, u64)>,
    },
    /// A subscription change is durable.
    SubsChanged(Box<SubsChange>),
    Replayed {
        group: Arc<str>,
        tasks: Vec<(u64, Vec<u8>)>,
        reply: ReplyTo,
    },
    Purged {
        group: Arc<str>,
        n: u64,
        reply: ReplyTo,
    },
    Fenced(u64),
    /// A new channel's definition is durable.
    ChannelCreated {
        spec: crate::channels::ChannelSpec,
        reply: ReplyTo,
    },
    /// A new channel's definition could not be stored (its creator was answered).
    ChannelNotCreated {
        spec: crate::channels::ChannelSpec,
    },
    /// A job of completions and dead letters committed.
    StepsDone,
    Stop,
}

struct SubsChange {
    at: Addr,
    group: Arc<str>,
    request_id: Option<Value>,
    added: Vec<SubscribeRequest>,
    removed: Vec<String>,
    rejected: Vec<Value>,
    subscribe: bool,
}

/// Publications → tasks, for ingest (see the module docs).
pub struct Intake {
    durable: Arc<DurableSubs>,
    store: Store,
    tx: Sender<Msg>,
}

impl TaskSink for Intake {
    fn active(&self) -> bool {
        self.durable.active()
    }

    fn collect(&self, p: &Arc<Publication>, out: &mut Vec<NewTask>) {
        let index = self.durable.read();
        index.matches(p, &mut |owner, ids| {
            out.push(match owner {
                Owner::Group(g) => NewTask {
                    group: g.clone(),
                    channel: false,
                    seq: p.seq,
                    value: record::encode(0, 0, ids, &p.tail),
                },
                Owner::Channel(c) => NewTask {
                    group: c.clone(),
                    channel: true,
                    seq: p.seq,
                    value: record::encode(0, 0, b"", &p.tail),
                },
            })
        });
    }

    fn enqueue(&self, tasks: Vec<NewTask>, done: Durably) {
        let job = Box::new(TaskJob {
            tasks,
            done: Some(done),
            tx: self.tx.clone(),
        });
        if let Err(job) = self.store.submit(job) {
            // Given back unrun: its own outcome answers the publisher.
            job.committed(JobOutcome::Refused(
                "the store is closed (the node is stopping)".into(),
            ));
        }
    }
}

/// New tasks on their way to the store.
struct TaskJob {
    tasks: Vec<NewTask>,
    done: Option<Durably>,
    tx: Sender<Msg>,
}

impl Job for TaskJob {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        for t in &self.tasks {
            let table = if t.channel {
                Table::Backlog
            } else {
                Table::Tasks
            };
            tx.put(table, &record::task_key(&t.group, t.seq), &t.value)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn committed(mut self: Box<Self>, outcome: JobOutcome) {
        let done = self.done.take();
        match outcome {
            JobOutcome::Durable => {
                let mut tasks = std::mem::take(&mut self.tasks);
                // A channel's copy of the event is read back from the store when a socket
                // takes it: freed here rather than carried to the services thread.
                for t in tasks.iter_mut().filter(|t| t.channel) {
                    t.value = Vec::new();
                }
                let _ = self.tx.send(Msg::Enqueued(tasks));
                if let Some(done) = done {
                    done(Ok(()));
                }
            }
            other => {
                tracing::error!("service tasks not stored: {other:?}");
                if let Some(done) = done {
                    done(Err(format!("service tasks could not be stored: {other:?}")));
                }
            }
        }
    }
}

/// Any other write of the services thread: puts and deletes, then a callback.
struct StoreJob {
    puts: Vec<(Table, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(Table, Vec<u8>)>,
    then: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Job for StoreJob {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        // The services thread deletes only keys it knows are stored: no read first.
        for (t, k) in &self.deletes {
            tx.delete_unread(*t, k).map_err(|e| e.to_string())?;
        }
        for (t, k, v) in &self.puts {
            tx.put(*t, k, v).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn committed(mut self: Box<Self>, outcome: JobOutcome) {
        let ok = matches!(outcome, JobOutcome::Durable);
        if !ok {
            tracing::error!("service state not stored: {outcome:?}");
        }
        if let Some(then) = self.then.take() {
            then(ok);
        }
    }
}

/// The services thread's channel, made before ingest (which needs the [`Intake`]) and
/// started after it ([`Pending::start`]).
pub struct Pending {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    durable: Arc<DurableSubs>,
}

/// Makes the channel and the intake.
pub fn prepare(store: Store) -> (Arc<Intake>, Pending) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let durable = Arc::new(DurableSubs::default());
    let intake = Arc::new(Intake {
        durable: durable.clone(),
        store,
        tx: tx.clone(),
    });
    (intake, Pending { tx, rx, durable })
}

/// The services engine as a backend holds it: the embedded one ([`Services`], this
/// module, on the store) or the cluster's (`backend::redis::services`, on Redis). Both
/// take the same [`ServiceCmd`]s and answer through the shards' mailboxes, so shards and
/// the REST API never know which one serves them.
pub trait ServicesEngine: Send + Sync {
    fn send(&self, cmd: ServiceCmd);
    /// Stops the engine after what it was sent.
    fn close(&self);
}

/// The running services thread (held by the backend).
pub struct Services {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServicesEngine for Services {
    fn send(&self, cmd: ServiceCmd) {
        // A closed channel means the node is stopping; the command has no one to serve it.
        let _ = self.tx.send(Msg::Cmd(cmd));
    }

    /// Stops the thread after what it was sent (its last writes are queued in the store,
    /// which the caller closes next).
    fn close(&self) {
        let _ = self.tx.send(Msg::Stop);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// Settings the thread reads.
#[derive(Clone, Copy)]
struct Settings {
    ack_timeout_ms: u64,
    max_attempts: u32,
    prefetch: u32,
    /// Never-delivered tasks held in memory per group (see `queue`).
    window: usize,
}

impl Pending {
    /// Recovers every group from the store (subscriptions, watermarks, tasks, dead
    /// letters), reserves fencing tokens, and starts the thread.
    pub fn start(
        self,
        config: &Config,
        store: Store,
        ingest: Arc<Ingest>,
        router: Arc<Router>,
    ) -> Result<Services, String> {
        let s = &config.services;
        let settings = Settings {
            ack_timeout_ms: s.ack_timeout_ms,
            max_attempts: s.max_attempts,
            prefetch: s.prefetch.min(u32::MAX as usize) as u32,
            window: s.prefetch.saturating_mul(4).max(4096),
        };
        let mut engine = Engine {
            settings,
            store,
            router,
            ingest,
            durable: self.durable,
            tx: self.tx.clone(),
            groups: BTreeMap::new(),
            instances: HashMap::new(),
            locks: Locks::new(1),
            fence_reserved: 0,
            fence_asked: 0,
            outstanding: 0,
            steps_outstanding: 0,
            deferred_ops: Vec::new(),
            deliveries: Vec::new(),
            steps: Vec::new(),
            outcomes: Outcomes::default(),
            lock_events: Vec::new(),
            enqueued: 0,
            channels: channels::Channels::new(
                config.channels.backlog.max(1),
                config.channels.max_per_user,
                config.public_url.clone(),
            ),
            channel_fx: channels::Effects::default(),
            grants: 0,
            metrics_at: 0,
        };
        engine.recover()?;
        let rx = self.rx;
        let thread = std::thread::Builder::new()
            .name("services".into())
            .spawn({
                let span = tracing::Span::current();
                move || span.in_scope(|| engine.run(rx))
            })
            .map_err(|e| format!("cannot start the services thread: {e}"))?;
        Ok(Services {
            tx: self.tx,
            thread: Mutex::new(Some(thread)),
        })
    }
}

struct Engine {
    settings: Settings,
    store: Store,
    router: Arc<Router>,
    ingest: Arc<Ingest>,
    durable: Arc<DurableSubs>,
    tx: Sender<Msg>,
    groups: BTreeMap<Arc<str>, Group>,
    /// Each attached instance's group.
    instances: HashMap<Addr, Arc<str>>,
    locks: Locks<Addr, Option<Value>>,
    fence_reserved: u64,
    fence_asked: u64,
    /// Delivery jobs not yet committed: while any is, every delivery waits its turn
    /// behind them (so an instance gets its tasks in the order they were decided).
    outstanding: usize,
    /// Jobs of completions and dead letters not yet committed, and the operator requests
    /// that read dead letters, which wait for them (so a task counted dead is listed,
    /// replayed or purged with the others).
    steps_outstanding: usize,
    deferred_ops: Vec<(OpsRequest, ReplyTo)>,
    // What one loop iteration produced, written out at its end.
    deliveries: Vec<(Arc<str>, Delivery)>,
    steps: Vec<(Arc<str>, Step)>,
    outcomes: Outcomes,
    lock_events: Vec<LockEvent<Addr, Option<Value>>>,
    enqueued: u64,
    channels: channels::Channels,
    channel_fx: channels::Effects,
    /// The locks' grant count already added to the metric.
    grants: u64,
    metrics_at: u64,
}

fn ws_answer(router: &Router, at: Addr, msg: &Value) {
    router.answer(
        ReplyTo {
            shard: at.shard as usize,
            conn: at.conn,
            gen: at.gen,
            req: 0,
        },
        Answer::Ws(crate::protocol::to_bytes(msg)),
    );
}

fn http_answer(router: &Router, reply: ReplyTo, status: u16, body: Value) {
    router.answer(reply, Answer::Http { status, body });
}

/// A REST error answer: `{"error":{"code","message"}}`.
fn http_error(
    router: &Router,
    reply: ReplyTo,
    status: u16,
    code: &str,
    message: impl Into<String>,
) {
    let message: String = message.into();
    http_answer(
        router,
        reply,
        status,
        json!({"error": {"code": code, "message": message}}),
    );
}

pub(crate) fn with_request_id(mut msg: Value, request_id: &Option<Value>) -> Value {
    if let Some(r) = request_id {
        msg["requestId"] = r.clone();
    }
    msg
}

impl Engine {
    fn group(&mut self, name: &Arc<str>) -> &mut Group {
        self.groups
            .entry(name.clone())
            .or_insert_with(|| Group::new(name.clone()))
    }

    fn recover(&mut self) -> Result<(), String> {
        let err = |what: &str, e: crate::store::StoreError| format!("cannot read {what}: {e}");
        let mut subs: Vec<(Arc<str>, DurableSub)> = Vec::new();
        self.store
            .scan_prefix(Table::Meta, SUB_PREFIX, &mut |k, v| {
                let rest = &k[SUB_PREFIX.len()..];
                let Some(nul) = rest.iter().position(|&b| b == 0) else {
                    return;
                };
                let (g, id) = (&rest[..nul], &rest[nul + 1..]);
                let (Ok(g), Ok(id)) = (std::str::from_utf8(g), std::str::from_utf8(id)) else {
                    return;
                };
                let parsed = serde_json::from_slice(v)
                    .ok()
                    .and_then(|v: Value| DurableSub::from_json(id, &v));
                match parsed {
                    Some(s) => subs.push((g.into(), s)),
                    None => tracing::error!(
                        group = g,
                        id,
                        "a stored durable subscription could not be read"
                    ),
                }
            })
            .map_err(|e| err("durable subscriptions", e))?;
        for (g, s) in subs {
            self.group(&g).subs.insert(s.id.clone(), s);
        }
        let mut marks = Vec::new();
        self.store
            .scan_prefix(Table::Meta, WATERMARK_PREFIX, &mut |k, v| {
                let g = String::from_utf8_lossy(&k[WATERMARK_PREFIX.len()..]).into_owned();
                if let Ok(b) = <[u8; 8]>::try_from(v) {
                    marks.push((Arc::<str>::from(g), u64::from_be_bytes(b)));
                }
            })
            .map_err(|e| err("delivery watermarks", e))?;
        for (g, m) in marks {
            let group = self.group(&g);
            group.watermark = m;
            group.watermark_asked = m;
        }
        let (window, max_attempts) = (self.settings.window, self.settings.max_attempts);
        let mut tasks = 0u64;
        // One group at a time would need the group list first; one pass in key order
        // visits each group's tasks in `seq` order all the same.
        let mut current: Option<Arc<str>> = None;
        let groups = &mut self.groups;
        let mut dead_steps = Vec::new();
        self.store
            .scan(Table::Tasks, &mut |k, v| {
                let Some((g, seq)) = record::parse_key(k) else {
                    return;
                };
                tasks += 1;
                if current.as_deref() != Some(g) {
                    current = Some(g.into());
                }
                let name = current.clone().unwrap_or_else(|| g.into());
                let group = groups
                    .entry(name.clone())
                    .or_insert_with(|| Group::new(name.clone()));
                if let Some(step) = group.recover(seq, v, window, max_attempts) {
                    dead_steps.push((name, step));
                }
            })
            .map_err(|e| err("service tasks", e))?;
        self.steps.extend(dead_steps);
        let mut dead: HashMap<String, u64> = HashMap::new();
        self.store
            .scan(Table::DeadLetters, &mut |k, _| {
                if let Some((g, _)) = record::parse_key(k) {
                    *dead.entry(g.to_string()).or_default() += 1;
                }
            })
            .map_err(|e| err("dead letters", e))?;
        for (g, n) in dead {
            self.group(&g.as_str().into()).dead += n;
        }
        self.channels.recover(&self.store)?;
        self.install_index();
        // Fencing tokens continue past every block ever reserved.
        let reserved = self
            .store
            .get(Table::Meta, FENCE_KEY)
            .map_err(|e| err("the fencing mark", e))?
            .and_then(|b| b.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let mark = reserved + FENCE_BLOCK;
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let job = StoreJob {
            puts: vec![(Table::Meta, FENCE_KEY.to_vec(), mark.to_be_bytes().to_vec())],
            deletes: Vec::new(),
            then: Some(Box::new(move |ok| {
                let _ = done_tx.send(ok);
            })),
        };
        if self.store.submit(Box::new(job)).is_err() {
            return Err("the store closed while services started".into());
        }
        match done_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(true) => {}
            _ => return Err("the store did not commit the fencing token reservation".into()),
        }
        self.locks = Locks::new(reserved + 1);
        self.fence_reserved = mark;
        self.fence_asked = mark;
        self.flush_steps();
        tracing::info!(
            groups = self.groups.len(),
            tasks,
            first_fencing_token = reserved + 1,
            "services recovered"
        );
        Ok(())
    }

    /// Changes the durable subscription index at a `seq` boundary; returns that boundary
    /// (the newest `seq` the change does not cover).
    fn change_index(&self, f: impl FnOnce(&mut GroupIndex)) -> u64 {
        let durable = self.durable.clone();
        self.ingest.at_boundary(move || durable.change(f)).1
    }

    /// Builds the whole durable subscription index (start-up).
    fn install_index(&self) -> u64 {
        let all: BTreeMap<Arc<str>, BTreeMap<String, DurableSub>> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.subs.is_empty())
            .map(|(n, g)| (n.clone(), g.subs.clone()))
            .collect();
        let channels = self.channels.subscriptions();
        let index = GroupIndex::build(&all, &channels);
        self.change_index(move |ix| *ix = index)
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let now = crate::time::unix_ms();
            let next = self
                .groups
                .values()
                .filter_map(|g| g.next_deadline())
                .chain(self.locks.next_deadline())
                .min()
                .unwrap_or(now + 1000)
                .min(self.metrics_at.max(now) + 1000);
            let wait = Duration::from_millis(next.saturating_sub(now).clamp(0, 1000));
            let mut stop = false;
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            };
            if let Some(m) = first {
                stop |= self.handle(m);
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(m) => stop |= self.handle(m),
                        Err(_) => break,
                    }
                }
            }
            self.step();
            if stop {
                return;
            }
        }
    }

    /// One message; true on `Stop`.
    fn handle(&mut self, m: Msg) -> bool {
        let now = crate::time::unix_ms();
        match m {
            Msg::Stop => return true,
            Msg::Enqueued(tasks) => {
                let window = self.settings.window;
                for t in tasks {
                    if t.channel {
                        self.channels
                            .enqueued(&t.group, t.seq, now, &mut self.channel_fx);
                        continue;
                    }
                    self.enqueued += 1;
                    let g = t.group.clone();
                    self.group(&g).enqueued(t.seq, t.value.into(), window);
                }
            }
            Msg::ChannelCreated { spec, reply } => match self.channels.created(spec) {
                Ok((answer, id, sub)) => {
                    // Collecting from here on, then answered.
                    self.change_index(|ix| ix.add(Owner::Channel(id), sub));
                    http_answer(&self.router, reply, 201, answer);
                }
                Err(e) => http_error(&self.router, reply, 500, "INTERNAL", e),
            },
            Msg::ChannelNotCreated { spec } => self.channels.not_created(&spec),
            Msg::Delivered { watermarks, sent } => {
                self.outstanding = self.outstanding.saturating_sub(1);
                for (g, m) in watermarks {
                    let group = self.group(&g);
                    group.watermark = group.watermark.max(m);
                }
                // The ack deadline counts from the send, which waited for the commit.
                let timeout = self.settings.ack_timeout_ms;
                for (g, seq) in sent {
                    if let Some(group) = self.groups.get_mut(&g) {
                        group.rearm(seq, now + timeout);
                    }
                }
            }
            Msg::SubsChanged(c) => self.subs_changed(*c),
            Msg::Replayed {
                group,
                tasks,
                reply,
            } => {
                let n = tasks.len();
                self.group(&group).replayed(tasks);
                http_answer(&self.router, reply, 200, json!({"replayed": n}));
            }
            Msg::Purged { group, n, reply } => {
                let g = self.group(&group);
                g.dead = g.dead.saturating_sub(n);
                http_answer(&self.router, reply, 200, json!({"purged": n}));
            }
            Msg::Fenced(mark) => self.fence_reserved = self.fence_reserved.max(mark),
            Msg::StepsDone => self.steps_outstanding = self.steps_outstanding.saturating_sub(1),
            Msg::Cmd(c) => self.command(c, now),
        }
        false
    }

    fn command(&mut self, c: ServiceCmd, now: u64) {
        let max_attempts = self.settings.max_attempts;
        match c {
            ServiceCmd::Attach { at, group } => {
                self.group(&group).attach(at);
                self.instances.insert(at, group);
            }
            ServiceCmd::Detach { at } => {
                if let Some(g) = self.instances.remove(&at) {
                    let mut c = Changes::default();
                    if let Some(group) = self.groups.get_mut(&g) {
                        group.detach(at, max_attempts, &mut c);
                    }
                    self.absorb(&g, c);
                }
                self.locks.release_holder(now, at, &mut self.lock_events);
                self.channels.detach(at);
            }
            ServiceCmd::ChannelAttach {
                at,
                channel,
                caller,
            } => self.channels.attach(&self.router, at, &channel, &caller),
            ServiceCmd::ChannelWritten { at, upto } => {
                self.channels.written(at, upto, &mut self.channel_fx)
            }
            ServiceCmd::Channels { caller, req, reply } => {
                let created = self.channels.request(
                    &self.router,
                    &caller,
                    req,
                    reply,
                    now,
                    &mut self.channel_fx,
                );
                if let Some((spec, reply)) = created {
                    let record = channels::Channels::initial_record(&spec);
                    let key = spec.channel_id.as_bytes().to_vec();
                    let tx = self.tx.clone();
                    let router = self.router.clone();
                    let job = StoreJob {
                        puts: vec![(Table::Channels, key, record)],
                        deletes: Vec::new(),
                        then: Some(Box::new(move |ok| {
                            if ok {
                                let _ = tx.send(Msg::ChannelCreated { spec, reply });
                            } else {
                                store_failed(&router, reply);
                                let _ = tx.send(Msg::ChannelNotCreated { spec });
                            }
                        })),
                    };
                    let _ = self.store.submit(Box::new(job));
                }
            }
            ServiceCmd::Complete { group, ids } => {
                let mut c = Changes::default();
                if let Some(g) = self.groups.get_mut(&group) {
                    for id in &ids {
                        match record::parse_task_id(id) {
                            Some((name, seq)) if *name == *group => g.complete(seq, &mut c),
                            _ => {} // unknown ids are ignored (§10)
                        }
                    }
                }
                self.absorb(&group, c);
            }
            ServiceCmd::Failed {
                at,
                group,
                ids,
                retry_in_ms,
            } => {
                let mut c = Changes::default();
                if let Some(g) = self.groups.get_mut(&group) {
                    for id in &ids {
                        match record::parse_task_id(id) {
                            Some((name, seq)) if *name == *group => {
                                g.fail(at, seq, (now, retry_in_ms), max_attempts, &mut c)
                            }
                            _ => {}
                        }
                    }
                }
                self.absorb(&group, c);
            }
            ServiceCmd::Lock {
                at,
                request_id,
                name,
                ttl_ms,
                wait_ms,
            } => self.locks.lock(
                now,
                at,
                request_id,
                &name,
                (ttl_ms, wait_ms),
                &mut self.lock_events,
            ),
            ServiceCmd::Unlock {
                at,
                request_id,
                name,
            } => {
                let released = self.locks.unlock(now, at, &name, &mut self.lock_events);
                let msg = json!({"type": "unlockResult", "name": name, "released": released});
                ws_answer(&self.router, at, &with_request_id(msg, &request_id));
            }
            ServiceCmd::Subscribe {
                at,
                group,
                request_id,
                subs,
                rejected,
            } => {
                let puts = subs
                    .iter()
                    .map(|r| {
                        (
                            Table::Meta,
                            sub_key(&group, &r.sub.id),
                            crate::protocol::to_bytes(&r.sub.to_json()),
                        )
                    })
                    .collect();
                self.change_subs(
                    puts,
                    Vec::new(),
                    SubsChange {
                        at,
                        group,
                        request_id,
                        added: subs,
                        removed: Vec::new(),
                        rejected,
                        subscribe: true,
                    },
                );
            }
            ServiceCmd::Unsubscribe {
                at,
                group,
                request_id,
                ids,
            } => {
                let deletes = ids
                    .iter()
                    .map(|id| (Table::Meta, sub_key(&group, id)))
                    .collect();
                self.change_subs(
                    Vec::new(),
                    deletes,
                    SubsChange {
                        at,
                        group,
                        request_id,
                        added: Vec::new(),
                        removed: ids,
                        rejected: Vec::new(),
                        subscribe: false,
                    },
                );
            }
            ServiceCmd::Ops { req, reply } => self.ops(req, reply),
        }
    }

    fn change_subs(
        &mut self,
        puts: Vec<(Table, Vec<u8>, Vec<u8>)>,
        deletes: Vec<(Table, Vec<u8>)>,
        change: SubsChange,
    ) {
        let tx = self.tx.clone();
        let router = self.router.clone();
        let (at, request_id) = (change.at, change.request_id.clone());
        let job = StoreJob {
            puts,
            deletes,
            then: Some(Box::new(move |ok| {
                if ok {
                    let _ = tx.send(Msg::SubsChanged(Box::new(change)));
                } else {
                    let m = crate::protocol::error_message(
                        crate::protocol::ErrorCode::Internal,
                        "the durable subscription could not be stored",
                        request_id.as_ref(),
                    );
                    router.answer(
                        ReplyTo {
                            shard: at.shard as usize,
                            conn: at.conn,
                            gen: at.gen,
                            req: 0,
                        },
                        Answer::Ws(m),
                    );
                }
            })),
        };
        let _ = self.store.submit(Box::new(job));
    }

    fn subs_changed(&mut self, c: SubsChange) {
        let group = self.group(&c.group);
        let mut answers = Vec::new();
        let mut removed = Vec::new();
        let mut not_found = Vec::new();
        let owner = Owner::Group(c.group.clone());
        let mut added = Vec::new();
        for r in c.added {
            let existed = group.subs.get(&r.sub.id) == Some(&r.sub);
            added.push(r.sub.clone());
            let mut a = json!({"id": r.sub.id, "path": r.sub.path, "events": r.sub.events});
            if r.since.is_some() {
                // The group's queue kept everything since the subscription began; a new
                // one cannot reach back before it.
                a["recovered"] = json!(existed);
            }
            group.subs.insert(r.sub.id.clone(), r.sub);
            answers.push(a);
        }
        for id in c.removed {
            if group.subs.remove(&id).is_some() {
                removed.push(id);
            } else {
                not_found.push(id);
            }
        }
        let gone = removed.clone();
        let boundary = self.change_index(|ix| {
            for sub in added {
                ix.add(owner.clone(), sub);
            }
            for id in &gone {
                ix.remove(&owner, id);
            }
        });
        let msg = if c.subscribe {
            for a in &mut answers {
                a["seq"] = json!(boundary);
            }
            let mut m = json!({"type": "subscribedEvents", "subscriptions": answers});
            if !c.rejected.is_empty() {
                m["rejected"] = Value::Array(c.rejected);
            }
            m
        } else {
            let mut m = json!({"type": "unsubscribedEvents", "ids": removed});
            if !not_found.is_empty() {
                m["notFound"] = json!(not_found);
            }
            m
        };
        ws_answer(&self.router, c.at, &with_request_id(msg, &c.request_id));
    }

    fn ops(&mut self, req: OpsRequest, reply: ReplyTo) {
        if (self.steps_outstanding > 0 || !self.steps.is_empty())
            && !matches!(req, OpsRequest::Groups)
        {
            self.deferred_ops.push((req, reply));
            return;
        }
        let not_found = |router: &Router, g: &str| {
            http_error(
                router,
                reply,
                404,
                "NOT_FOUND",
                format!("no service group '{g}'"),
            )
        };
        match req {
            OpsRequest::Groups => {
                let groups: Vec<Value> = self
                    .groups
                    .values()
                    .filter(|g| !g.is_idle())
                    .map(|g| {
                        json!({"group": &*g.name, "pending": g.pending(), "inFlight": g.in_flight(),
                               "dead": g.dead, "instances": g.instances()})
                    })
                    .collect();
                http_answer(&self.router, reply, 200, json!({"groups": groups}));
            }
            OpsRequest::DeadLetters {
                group,
                limit,
                cursor,
            } => {
                let Some(g) = self.groups.get(group.as_str()) else {
                    return not_found(&self.router, &group);
                };
                let prefix = record::group_prefix(&group);
                let start = record::task_key(&group, cursor.unwrap_or(0));
                let mut data = Vec::new();
                let mut next = None;
                let read = self.store.scan_from(
                    Table::DeadLetters,
                    &prefix,
                    &start,
                    limit + 1,
                    &mut |k, v| {
                        let (Some((_, seq)), Some(r)) = (record::parse_key(k), record::decode(v))
                        else {
                            return;
                        };
                        if data.len() == limit {
                            next = Some(seq.to_string());
                            return;
                        }
                        data.push(
                            json!({"taskId": record::task_id(&group, seq), "attempt": r.attempts,
                                     "event": record::event_value(&r)}),
                        );
                    },
                );
                match read {
                    Ok(_) => http_answer(
                        &self.router,
                        reply,
                        200,
                        json!({"data": data, "totalCount": g.dead, "nextCursor": next}),
                    ),
                    Err(e) => http_error(
                        &self.router,
                        reply,
                        500,
                        "INTERNAL",
                        format!("cannot read dead letters: {e}"),
                    ),
                }
            }
            OpsRequest::Replay { group } => self.move_dead(group, reply, true),
            OpsRequest::Purge { group } => self.move_dead(group, reply, false),
        }
    }

    /// Replay (back to the queue with attempt 1) or purge a group's dead letters.
    fn move_dead(&mut self, group: String, reply: ReplyTo, replay: bool) {
        let Some((name, _)) = self.groups.get_key_value(group.as_str()) else {
            http_error(
                &self.router,
                reply,
                404,
                "NOT_FOUND",
                format!("no service group '{group}'"),
            );
            return;
        };
        let name = name.clone();
        let mut found = Vec::new();
        let prefix = record::group_prefix(&group);
        if let Err(e) = self
            .store
            .scan_prefix(Table::DeadLetters, &prefix, &mut |k, v| {
                if let Some((_, seq)) = record::parse_key(k) {
                    found.push((seq, v.to_vec()));
                }
            })
        {
            http_error(
                &self.router,
                reply,
                500,
                "INTERNAL",
                format!("cannot read dead letters: {e}"),
            );
            return;
        }
        let deletes = found
            .iter()
            .map(|(seq, _)| (Table::DeadLetters, record::task_key(&group, *seq)))
            .collect();
        let tx = self.tx.clone();
        let router = self.router.clone();
        let job = if replay {
            let tasks: Vec<(u64, Vec<u8>)> = found
                .into_iter()
                .map(|(seq, v)| (seq, record::with_header(&v, record::FRESH, 0)))
                .collect();
            let puts = tasks
                .iter()
                .map(|(seq, v)| (Table::Tasks, record::task_key(&group, *seq), v.clone()))
                .collect();
            StoreJob {
                puts,
                deletes,
                then: Some(Box::new(move |ok| {
                    if ok {
                        let _ = tx.send(Msg::Replayed {
                            group: name,
                            tasks,
                            reply,
                        });
                    } else {
                        store_failed(&router, reply);
                    }
                })),
            }
        } else {
            let n = found.len() as u64;
            StoreJob {
                puts: Vec::new(),
                deletes,
                then: Some(Box::new(move |ok| {
                    if ok {
                        let _ = tx.send(Msg::Purged {
                            group: name,
                            n,
                            reply,
                        });
                    } else {
                        store_failed(&router, reply);
                    }
                })),
            }
        };
        let _ = self.store.submit(Box::new(job));
    }

    /// After a batch of messages: deadlines, dispatch, and the writes and sends they made.
    fn step(&mut self) {
        let now = crate::time::unix_ms();
        let s = self.settings;
        let due: Vec<Arc<str>> = self
            .groups
            .iter()
            .filter(|(_, g)| g.next_deadline().is_some_and(|d| d <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let mut c = Changes::default();
            if let Some(g) = self.groups.get_mut(&name) {
                g.tick(&self.store, now, s.max_attempts, &mut c);
            }
            self.absorb(&name, c);
        }
        self.locks.tick(now, &mut self.lock_events);
        let mut out = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            if g.instances() > 0 && g.has_ready() {
                g.dispatch(
                    &self.store,
                    now,
                    s.prefetch,
                    s.ack_timeout_ms,
                    s.window,
                    &mut out,
                );
                self.deliveries
                    .extend(out.drain(..).map(|d| (name.clone(), d)));
            }
        }
        self.flush_deliveries();
        self.flush_steps();
        self.flush_locks();
        self.flush_channels();
        if self.steps_outstanding == 0 && !self.deferred_ops.is_empty() {
            for (req, reply) in std::mem::take(&mut self.deferred_ops) {
                self.ops(req, reply);
            }
        }
        let o = std::mem::take(&mut self.outcomes);
        let causes: Vec<&'static str> = o.redelivered.iter().map(|c| c.as_str()).collect();
        crate::metrics::service_counts(
            std::mem::take(&mut self.enqueued),
            &o.completed,
            &causes,
            o.dead,
        );
        if now >= self.metrics_at {
            self.metrics_at = now + 1000;
            crate::metrics::service_locks(self.locks.held(), self.locks.waiting());
            let (connected, disconnected, backlog) = self.channels.gauges();
            crate::metrics::channels(
                connected,
                disconnected,
                backlog,
                self.channels.cache_bytes(),
                self.channels.collected_total,
                self.channels.dropped_total,
            );
            for g in self.groups.values() {
                crate::metrics::service_group(
                    &g.name,
                    g.pending(),
                    g.in_flight(),
                    g.dead,
                    g.instances(),
                );
            }
        }
    }

    fn flush_deliveries(&mut self) {
        if self.deliveries.is_empty() {
            return;
        }
        let deliveries = std::mem::take(&mut self.deliveries);
        let mut puts = Vec::new();
        let mut marks: Vec<(Arc<str>, u64)> = Vec::new();
        let mut sends: Vec<(Addr, Vec<Vec<u8>>)> = Vec::new();
        let mut sent = Vec::with_capacity(deliveries.len());
        for (g, d) in deliveries {
            let Some(r) = record::decode(&d.value) else {
                continue;
            };
            if d.record {
                puts.push((
                    Table::Tasks,
                    record::task_key(&g, d.seq),
                    record::with_header(&d.value, 0, d.attempt),
                ));
            } else if let Some(group) = self.groups.get_mut(&g) {
                if d.seq > group.watermark_asked {
                    group.watermark_asked = d.seq;
                    match marks.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &g)) {
                        Some(m) => m.1 = d.seq,
                        None => marks.push((g.clone(), d.seq)),
                    }
                }
            }
            let mut msg = Vec::with_capacity(d.value.len() + 64);
            record::event_message(&mut msg, &g, d.seq, d.attempt, &r);
            match sends.iter_mut().find(|(a, _)| *a == d.to) {
                Some((_, v)) => v.push(msg),
                None => sends.push((d.to, vec![msg])),
            }
            sent.push((g, d.seq));
        }
        let router = self.router.clone();
        let send = move |sends: Vec<(Addr, Vec<Vec<u8>>)>| {
            for (to, messages) in sends {
                router.send_control(
                    to.shard as usize,
                    ShardMsg::Tasks {
                        conn: to.conn,
                        gen: to.gen,
                        messages,
                    },
                );
            }
        };
        if puts.is_empty() && marks.is_empty() && self.outstanding == 0 {
            send(sends);
            return;
        }
        for (g, m) in &marks {
            puts.push((Table::Meta, watermark_key(g), m.to_be_bytes().to_vec()));
        }
        self.outstanding += 1;
        let tx = self.tx.clone();
        let job = StoreJob {
            puts,
            deletes: Vec::new(),
            then: Some(Box::new(move |ok| {
                if ok {
                    send(sends);
                    let _ = tx.send(Msg::Delivered {
                        watermarks: marks,
                        sent,
                    });
                } else {
                    // Not sent: the tasks stay in flight until their deadline and go out
                    // again then.
                    let _ = tx.send(Msg::Delivered {
                        watermarks: Vec::new(),
                        sent: Vec::new(),
                    });
                }
            })),
        };
        if self.store.submit(Box::new(job)).is_err() {
            self.outstanding -= 1;
        }
    }

    /// Sends what channel sockets may take and writes what channels changed.
    fn flush_channels(&mut self) {
        let mut fx = std::mem::take(&mut self.channel_fx);
        self.channels.step(&self.store, &self.router, &mut fx);
        if !fx.removed.is_empty() {
            let removed = std::mem::take(&mut fx.removed);
            self.change_index(|ix| {
                for id in removed {
                    let sub_id = id.to_string();
                    ix.remove(&Owner::Channel(id), &sub_id);
                }
            });
        }
        if !fx.puts.is_empty() || !fx.deletes.is_empty() {
            let _ = self.store.submit(Box::new(StoreJob {
                puts: fx.puts,
                deletes: fx.deletes,
                then: None,
            }));
        }
    }

    /// Takes what a group's change owes: its writes (for [`Engine::flush_steps`]) and
    /// its outcomes (for the metrics).
    fn absorb(&mut self, group: &Arc<str>, c: Changes) {
        self.steps
            .extend(c.steps.into_iter().map(|s| (group.clone(), s)));
        let o = &mut self.outcomes;
        o.completed.extend(c.outcomes.completed);
        o.redelivered.extend(c.outcomes.redelivered);
        o.dead += c.outcomes.dead;
    }

    fn flush_steps(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for (g, s) in self.steps.drain(..) {
            match s {
                Step::Delete(seq) => deletes.push((Table::Tasks, record::task_key(&g, seq))),
                Step::Dead(seq, v) => {
                    deletes.push((Table::Tasks, record::task_key(&g, seq)));
                    puts.push((Table::DeadLetters, record::task_key(&g, seq), v));
                }
            }
        }
        let tx = self.tx.clone();
        let job = StoreJob {
            puts,
            deletes,
            then: Some(Box::new(move |_| {
                let _ = tx.send(Msg::StepsDone);
            })),
        };
        if self.store.submit(Box::new(job)).is_ok() {
            self.steps_outstanding += 1;
        }
    }

    fn flush_locks(&mut self) {
        if self.lock_events.is_empty() {
            return;
        }
        for e in self.lock_events.drain(..) {
            let (at, msg) = match e {
                LockEvent::Granted {
                    holder,
                    request,
                    name,
                    token,
                    expires_at,
                } => (
                    holder,
                    with_request_id(
                        json!({"type": "lockResult", "name": name, "acquired": true,
                                   "fencingToken": token, "expiresAt": crate::time::rfc3339_ms(expires_at)}),
                        &request,
                    ),
                ),
                LockEvent::NotAcquired {
                    holder,
                    request,
                    name,
                } => (
                    holder,
                    with_request_id(
                        json!({"type": "lockResult", "name": name, "acquired": false}),
                        &request,
                    ),
                ),
            };
            ws_answer(&self.router, at, &msg);
        }
        // Grants are counted as they happen; the gauges (which walk the lock table) once
        // a second with the others.
        let grants = self.locks.grants();
        crate::metrics::service_lock_grants(grants - self.grants);
        self.grants = grants;
        // The next block is asked for at half of this one.
        let next = self.locks.next_token();
        if next + FENCE_BLOCK / 2 > self.fence_asked {
            let mark = self.fence_asked.max(next) + FENCE_BLOCK;
            self.fence_asked = mark;
            let tx = self.tx.clone();
            let _ = self.store.submit(Box::new(StoreJob {
                puts: vec![(Table::Meta, FENCE_KEY.to_vec(), mark.to_be_bytes().to_vec())],
                deletes: Vec::new(),
                then: Some(Box::new(move |ok| {
                    if ok {
                        let _ = tx.send(Msg::Fenced(mark));
                    }
                })),
            }));
        }
        if next > self.fence_reserved {
            tracing::error!(
                next,
                reserved = self.fence_reserved,
                "fencing tokens passed their durable reservation (store too slow)"
            );
        }
    }
}

fn store_failed(router: &Router, reply: ReplyTo) {
    http_error(
        router,
        reply,
        500,
        "INTERNAL",
        "the store could not commit the change",
    );
}
