//! Ingest: the local sequencer. Every publication passes here to get its `seq` and
//! `timestamp` and its JSON encoded once, then goes to the [`Applier`] (replica, history
//! window, shards), the code a cluster node's stream reader runs too.
//!
//! Two kinds of caller, one lock:
//! - a shard that read a plain publish request sequences it itself, on its own thread
//!   ([`Ingest::publish`]): nothing about a plain publication needs the disk, so the
//!   publisher is answered as soon as every shard's queue has it;
//! - the store's writer thread sequences entity writes once their group commit is
//!   durable ([`Ingest::publish_entity`]), in commit order, so `seq` order equals commit
//!   order and no subscriber ever sees a state a crash could take back.
//!
//! Inside the sequencer lock happen only: assigning `seq` and `timestamp`, applying an
//! entity change to the in-memory replica, appending to the history window and one queue
//! push per shard. Because all of it is under one lock, `seq` is a total order, every
//! shard's queue holds publications in `seq` order, and the replica and the history are
//! never behind a publication a shard has received. Encoding happens before the lock;
//! wake-ups after it.
//!
//! Lock order (see `lib.rs`): sequencer → history lock → replica write lock.
//! Readers (shards) take the replica or the history lock alone.
//!
//! `seq` survives restarts through a reserved high-water mark (see [`SeqMarks`]): the
//! sequencer never hands out a `seq` above what is durably reserved, and a restarted
//! node starts above the last reservation, so a `since` from before a restart never meets
//! a reused number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::apply::Applier;
use crate::entities::Replica;
use crate::history::History;
use crate::metrics;
use crate::publication::{EntityChange, Publication};
use crate::router::Router;

/// One validated item of a publish request.
#[derive(Debug)]
pub struct PublishItem {
    pub path: String,
    pub event_type: String,
    pub data: Box<RawValue>,
}

/// The answer to a publish request (`202 {"accepted","firstSeq","lastSeq"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub accepted: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A publication that matched a service group's durable subscriptions: the group's
/// task, to be made durable before the publisher is answered (PROTOCOL.md §10).
#[derive(Debug)]
pub struct NewTask {
    /// The group, or with `channel` the channel, it is for.
    pub group: Arc<str>,
    /// For a REST-created channel's backlog (PROTOCOL.md §9), not a group's queue.
    pub channel: bool,
    pub seq: u64,
    /// The task's stored record (`services::record`).
    pub value: Vec<u8>,
}

/// What runs once a request's tasks are durable (`Ok`) or could not be made so.
pub type Durably = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Where publications become durable service tasks (the services of the backend).
/// Called under the sequencer lock, so tasks reach the store in `seq` order; neither
/// method may block or take that lock.
pub trait TaskSink: Send + Sync {
    /// Whether any durable subscription exists (one atomic load when none does).
    fn active(&self) -> bool;
    /// Appends the tasks `p` makes.
    fn collect(&self, p: &Arc<Publication>, out: &mut Vec<NewTask>);
    /// Makes `tasks` durable, then calls `done`.
    fn enqueue(&self, tasks: Vec<NewTask>, done: Durably);
}

/// `seq`s are reserved durably in blocks of this many; a new block is asked for when
/// half of the current one is used, so publishers never wait for it in practice (a block
/// lasts about a second at the fastest measured ingest; a commit takes milliseconds).
pub const SEQ_BLOCK: u64 = 1 << 20;

/// The durable `seq` high-water mark: how the sequencer asks for more room.
pub trait SeqMarks: Send + Sync {
    /// Makes `mark` durable, then raises `reserved` to it (`fetch_max`). Must not
    /// block and must not take the sequencer lock (it is called under it).
    fn reserve(&self, mark: u64, reserved: Arc<AtomicU64>);
}

struct SeqState {
    last: u64,
    /// A reservation beyond the current one is on its way.
    asked: u64,
}

/// The sequencer: the only place `seq` is assigned.
pub struct Ingest {
    seq: Mutex<SeqState>,
    /// The durably reserved mark: no `seq` above it is handed out. Written by the
    /// store's writer thread when a reservation commits.
    reserved: Arc<AtomicU64>,
    marks: Option<Box<dyn SeqMarks>>,
    /// Replica, history, shards and the applied mark; applied to under the lock.
    applier: Applier,
    tasks: Option<Arc<dyn TaskSink>>,
    publications: metrics::PublicationCounters,
}

/// How a node's sequencer starts.
pub struct IngestSetup {
    /// The last `seq` that may have been handed out before (the durable mark).
    pub start_seq: u64,
    pub history_size: usize,
    pub history_ttl_ms: u64,
    pub replica: Arc<Replica>,
    /// `None`: `seq` is not kept across restarts (benches, unit tests).
    pub marks: Option<Box<dyn SeqMarks>>,
    /// `None`: no service queues (benches, unit tests).
    pub tasks: Option<Arc<dyn TaskSink>>,
}

impl Ingest {
    /// A sequencer with no durable mark, no history and an empty replica (benches).
    pub fn new(router: Arc<Router>) -> Ingest {
        Ingest::with(
            router,
            IngestSetup {
                start_seq: 0,
                history_size: 0,
                history_ttl_ms: 0,
                replica: Arc::new(Replica::default()),
                marks: None,
                tasks: None,
            },
        )
    }

    pub fn with(router: Arc<Router>, s: IngestSetup) -> Ingest {
        let reserved = if s.marks.is_some() {
            s.start_seq
        } else {
            u64::MAX
        };
        Ingest {
            seq: Mutex::new(SeqState {
                last: s.start_seq,
                asked: reserved,
            }),
            reserved: Arc::new(AtomicU64::new(reserved)),
            marks: s.marks,
            applier: Applier::new(
                router,
                s.replica,
                s.history_size,
                s.history_ttl_ms,
                s.start_seq,
            ),
            tasks: s.tasks,
            publications: metrics::PublicationCounters::new(),
        }
    }

    /// Runs `f` under the sequencer lock and returns with it the newest `seq` at that
    /// instant: whatever `f` changes is seen by exactly the publications after it (a
    /// durable subscription's first `seq`).
    pub fn at_boundary<R>(&self, f: impl FnOnce() -> R) -> (R, u64) {
        let st = self.lock();
        let r = f();
        (r, st.last)
    }

    /// The newest `seq` handed to the shards.
    pub fn last_seq(&self) -> u64 {
        self.applier.applied()
    }

    pub fn history(&self) -> &History {
        self.applier.history()
    }

    pub fn replica(&self) -> &Arc<Replica> {
        self.applier.replica()
    }

    pub fn router(&self) -> &Arc<Router> {
        self.applier.router()
    }

    /// The durably reserved mark.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Asks for the first block when the node starts; the caller waits until
    /// [`Ingest::reserved`] is past `start_seq` before serving.
    pub fn reserve_initial(&self) {
        let mut st = self.lock();
        self.ask(&mut st);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeqState> {
        // A panic under this lock cannot leave the counter inconsistent (it only grows),
        // so a poisoned lock is still usable.
        self.seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ask(&self, st: &mut SeqState) {
        let Some(marks) = &self.marks else { return };
        let reserved = self.reserved.load(Ordering::Acquire);
        if st.asked <= reserved || st.asked < st.last + SEQ_BLOCK / 2 {
            // Nothing on its way, or what is on its way leaves less than half a block.
            let mark = st.last.max(reserved) + SEQ_BLOCK;
            if mark > st.asked {
                st.asked = mark;
                marks.reserve(mark, self.reserved.clone());
            }
        }
    }

    /// Takes the sequencer lock with room for `n` more `seq`s. Waits (without the lock,
    /// so the store's writer can finish the reservation) only if a whole half block was
    /// used before the last reservation committed; `on_writer` callers (the store's
    /// writer thread) never wait, since they would wait for themselves.
    fn lock_for(&self, n: u64, on_writer: bool) -> std::sync::MutexGuard<'_, SeqState> {
        let mut waited = Duration::ZERO;
        loop {
            let mut st = self.lock();
            let reserved = self.reserved.load(Ordering::Acquire);
            if st.last + n + SEQ_BLOCK / 2 > reserved {
                self.ask(&mut st);
            }
            if st.last + n <= reserved || on_writer || waited > Duration::from_secs(5) {
                if st.last + n > reserved {
                    tracing::error!(
                        last = st.last,
                        reserved,
                        "seq passed its durable reservation (store too slow)"
                    );
                }
                return st;
            }
            drop(st);
            std::thread::sleep(Duration::from_micros(200));
            waited += Duration::from_micros(200);
        }
    }

    /// Sequences validated items in order and hands each to every shard; returns the
    /// answer for the publisher (benches and tests: tasks, if any, are not waited for).
    pub fn publish(&self, items: &[PublishItem], source: metrics::Source) -> PublishOutcome {
        let mut out = None;
        match self.publish_with(items, source, &mut |o| {
            out = Some(o);
            Box::new(|_| {})
        }) {
            Some(o) => o,
            None => out.unwrap_or(PublishOutcome {
                accepted: 0,
                first_seq: 0,
                last_seq: 0,
            }),
        }
    }

    /// Sequences validated items in order and hands each to every shard. `Some`: the
    /// answer for the publisher, now. `None`: some became service tasks; `later` was
    /// given the answer and made what runs once those tasks are durable.
    pub fn publish_with(
        &self,
        items: &[PublishItem],
        source: metrics::Source,
        later: &mut dyn FnMut(PublishOutcome) -> Durably,
    ) -> Option<PublishOutcome> {
        // Encoding happens before the lock: a shard publishing at the same moment waits
        // only for the sequencing and the queue pushes, not for this request's encoding
        // (measured in benches/hot_path.rs, "ingest").
        // One clock read for the request (`sequence` sets the real instant under the lock).
        let encoded_at = std::time::Instant::now();
        let publications: Vec<Publication> = items
            .iter()
            .map(|i| Publication::unsequenced(&i.path, &i.event_type, i.data.get(), encoded_at))
            .collect();
        let sink = self.tasks.as_ref().filter(|t| t.active());
        let mut tasks = Vec::new();
        let (outcome, deferred) = {
            let mut st = self.lock_for(items.len() as u64, false);
            let first_seq = st.last + 1;
            // Taken under the lock, so timestamps never go back as `seq` goes up.
            let now = crate::time::unix_ms();
            let ts = crate::protocol::timestamp_text(now);
            let at = std::time::Instant::now();
            let mut batch = self.applier.batch(now);
            for mut p in publications {
                st.last += 1;
                p.sequence(st.last, &ts, at);
                let p = Arc::new(p);
                if let Some(sink) = sink {
                    sink.collect(&p, &mut tasks);
                }
                batch.apply(p);
            }
            batch.finish();
            let outcome = PublishOutcome {
                accepted: items.len(),
                first_seq,
                last_seq: st.last,
            };
            // Under the lock: a group's tasks reach the store in `seq` order.
            let deferred = match sink {
                Some(sink) if !tasks.is_empty() => {
                    sink.enqueue(std::mem::take(&mut tasks), later(outcome));
                    true
                }
                _ => false,
            };
            (outcome, deferred)
        };
        // Wake-ups are system calls: outside the lock.
        self.router().wake_all();
        self.publications.add(source, items.len() as u64);
        (!deferred).then_some(outcome)
    }

    /// Sequences one durable entity write (the store's writer thread, after its commit,
    /// in commit order): applies it to the replica and hands it to every shard. The
    /// caller wakes the shards once per group ([`Router::wake_all`]).
    /// `data_json`: the shown state's JSON text when the caller has it (the stored
    /// bytes of the new state); else it is encoded here. Returns the `seq` and whether
    /// the write became service tasks, in which case `later` made what answers the
    /// writer once they are durable (else the caller answers now).
    pub fn publish_entity(
        &self,
        event_type: &str,
        data_json: Option<&[u8]>,
        change: EntityChange,
        later: impl FnOnce(u64) -> Durably,
    ) -> (u64, bool) {
        let shown = change
            .after
            .as_ref()
            .or(change.before.as_ref())
            .cloned()
            .unwrap_or_else(|| Arc::new(Value::Null));
        let path = format!("{}/{}", change.collection, change.id);
        let encoded;
        let data_json = match data_json.and_then(|b| std::str::from_utf8(b).ok()) {
            Some(text) => text,
            None => {
                encoded = serde_json::to_string(&*shown).unwrap_or_else(|_| "null".into());
                &encoded
            }
        };
        let at = std::time::Instant::now();
        let mut p = Publication::unsequenced(&path, event_type, data_json, at);
        p.set_data(shown);
        let mut st = self.lock_for(1, true);
        st.last += 1;
        let seq = st.last;
        let now = crate::time::unix_ms();
        p.sequence(seq, &crate::protocol::timestamp_text(now), at);
        p.entity = Some(Box::new(change));
        let p = Arc::new(p);
        let mut deferred = false;
        if let Some(sink) = self.tasks.as_ref().filter(|t| t.active()) {
            let mut tasks = Vec::new();
            sink.collect(&p, &mut tasks);
            if !tasks.is_empty() {
                sink.enqueue(tasks, later(seq));
                deferred = true;
            }
        }
        let mut batch = self.applier.batch(now);
        batch.apply(p);
        batch.finish();
        drop(st);
        self.publications.add(metrics::Source::Http, 1);
        (seq, deferred)
    }
}
