//! One service group's queue: which task goes to which instance next, what is in flight
//! until when, what waits for a retry, and how much of the backlog is held in memory.
//!
//! Owned by the services thread (one [`Group`] per group); it reads the store to page
//! the backlog in, and leaves every write to its caller (the returned [`Step`]s), which
//! groups them into store jobs.
//!
//! Memory: only a window of never-delivered tasks is held (`window`, derived from
//! `services.prefetch`); the rest stays on disk and is paged in, oldest first, as the
//! window drains. What is in flight is bounded by `prefetch` × instances. Tasks
//! waiting out a `retryInMs` keep only their `seq` and attempt here.
//!
//! Attempts, honestly across a crash: a first delivery is recorded by the group's
//! watermark (the highest `seq` ever sent for the first time, made durable before the
//! send; first deliveries go out in `seq` order, so every stored task at or below it was
//! sent); any other delivery rewrites the task's own record first. After a restart a
//! task counts as sent as many times as its record or the watermark says.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::index::DurableSub;
use super::record::{self, FRESH};
use crate::store::{Store, Table};

/// A connection of a shard (`gen` tells a reused slot apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub shard: u32,
    pub conn: u32,
    pub gen: u32,
}

impl Addr {
    /// Asks the connection's shard to close it with `code` and `reason`, after sending
    /// `error` (an `error` message) if given.
    pub fn close(
        self,
        router: &crate::router::Router,
        code: u16,
        reason: &str,
        error: Option<Vec<u8>>,
    ) {
        router.send_control(
            self.shard as usize,
            crate::router::ShardMsg::Close {
                conn: self.conn,
                gen: self.gen,
                code,
                reason: reason.to_string(),
                error,
            },
        );
    }
}

/// A task ready to go: its stored record and the attempt its next delivery is.
#[derive(Debug)]
pub struct Task {
    pub seq: u64,
    pub attempt: u32,
    pub fresh: bool,
    pub value: Arc<[u8]>,
}

#[derive(Debug)]
struct Flight {
    instance: Addr,
    attempt: u32,
    deadline: u64,
    sent: Instant,
    value: Arc<[u8]>,
}

#[derive(Debug)]
struct Instance {
    addr: Addr,
    unacked: u32,
}

/// A delivery decided by [`Group::dispatch`].
#[derive(Debug)]
pub struct Delivery {
    pub to: Addr,
    pub seq: u64,
    pub attempt: u32,
    /// The record must be rewritten (with `attempt`) before the send; otherwise the
    /// group's watermark must reach `seq`.
    pub record: bool,
    pub value: Arc<[u8]>,
}

/// A store write the caller owes for a change of state.
#[derive(Debug)]
pub enum Step {
    /// The task is done: delete it.
    Delete(u64),
    /// The task used up its attempts: move it to the dead letters (value with its
    /// attempts).
    Dead(u64, Vec<u8>),
}

/// Why a task goes back to the queue (the redeliveries metric's `cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Timeout,
    Failed,
    Disconnect,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Failed => "failed",
            Cause::Disconnect => "disconnect",
        }
    }
}

/// What happened to in-flight tasks, for the metrics.
#[derive(Default, Debug)]
pub struct Outcomes {
    pub completed: Vec<f64>,
    pub redelivered: Vec<Cause>,
    pub dead: u64,
}

/// The store writes and metric outcomes a change of state owes (the caller's).
#[derive(Default, Debug)]
pub struct Changes {
    pub steps: Vec<Step>,
    pub outcomes: Outcomes,
}

/// One group (see the module docs).
pub struct Group {
    pub name: Arc<str>,
    pub subs: BTreeMap<String, DurableSub>,
    ready: VecDeque<Task>,
    redeliver: BTreeMap<u64, Task>,
    waiting: BinaryHeap<Reverse<(u64, u64)>>,
    waiting_attempt: HashMap<u64, (u32, bool)>,
    in_flight: HashMap<u64, Flight>,
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// The first `seq` on disk not in `ready` (the backlog beyond the window).
    spilled_from: Option<u64>,
    /// The newest task the services thread was told is durable.
    last_enqueued: u64,
    /// Tasks in the store: pending, waiting and in flight.
    stored: u64,
    pub dead: u64,
    instances: Vec<Instance>,
    rr: usize,
    /// The durable watermark (see the module docs) and the highest one asked for.
    pub watermark: u64,
    pub watermark_asked: u64,
}

impl Group {
    pub fn new(name: Arc<str>) -> Group {
        Group {
            name,
            subs: BTreeMap::new(),
            ready: VecDeque::new(),
            redeliver: BTreeMap::new(),
            waiting: BinaryHeap::new(),
            waiting_attempt: HashMap::new(),
            in_flight: HashMap::new(),
            deadlines: BinaryHeap::new(),
            spilled_from: None,
            last_enqueued: 0,
            stored: 0,
            dead: 0,
            instances: Vec::new(),
            rr: 0,
            watermark: 0,
            watermark_asked: 0,
        }
    }

    /// Start-up: a task found in the store, in key (`seq`) order.
    pub fn recover(
        &mut self,
        seq: u64,
        value: &[u8],
        window: usize,
        max_attempts: u32,
    ) -> Option<Step> {
        let r = record::decode(value)?;
        self.stored += 1;
        self.last_enqueued = self.last_enqueued.max(seq);
        let fresh = r.flags & FRESH != 0;
        let sent = if fresh {
            r.attempts
        } else {
            r.attempts.max((seq <= self.watermark) as u32)
        };
        if sent >= max_attempts.max(1) {
            // Sent as often as allowed, and not completed: the last attempt ran out with
            // the node.
            self.stored -= 1;
            self.dead += 1;
            return Some(Step::Dead(
                seq,
                record::with_header(value, r.flags & !FRESH, sent),
            ));
        }
        if sent > 0 || fresh {
            self.redeliver.insert(
                seq,
                Task {
                    seq,
                    attempt: sent + 1,
                    fresh,
                    value: value.into(),
                },
            );
        } else if self.spilled_from.is_none() && self.ready.len() < window {
            self.ready.push_back(Task {
                seq,
                attempt: 1,
                fresh: false,
                value: value.into(),
            });
        } else if self.spilled_from.is_none() {
            self.spilled_from = Some(seq);
        }
        None
    }

    /// A task is durable (in `seq` order).
    pub fn enqueued(&mut self, seq: u64, value: Arc<[u8]>, window: usize) {
        self.stored += 1;
        self.last_enqueued = seq;
        if self.spilled_from.is_none() && self.ready.len() < window {
            self.ready.push_back(Task {
                seq,
                attempt: 1,
                fresh: false,
                value,
            });
        } else if self.spilled_from.is_none() {
            self.spilled_from = Some(seq);
        }
    }

    /// Replayed dead letters, back with attempt 1.
    pub fn replayed(&mut self, tasks: Vec<(u64, Vec<u8>)>) {
        for (seq, value) in tasks {
            self.stored += 1;
            self.dead = self.dead.saturating_sub(1);
            self.redeliver.insert(
                seq,
                Task {
                    seq,
                    attempt: 1,
                    fresh: true,
                    value: value.into(),
                },
            );
        }
    }

    /// Pages the backlog in from the store once the window is half empty.
    pub fn refill(&mut self, store: &Store, window: usize) {
        let Some(from) = self.spilled_from else {
            return;
        };
        if self.ready.len() >= window / 2 {
            return;
        }
        let want = window - self.ready.len();
        let prefix = record::group_prefix(&self.name);
        let start = record::task_key(&self.name, from);
        let mut got: Vec<(u64, Arc<[u8]>)> = Vec::with_capacity(want);
        let last = self.last_enqueued;
        let read = store.scan_from(Table::Tasks, &prefix, &start, want, &mut |k, v| {
            if let Some((_, seq)) = record::parse_key(k) {
                if seq <= last {
                    got.push((seq, Arc::from(v)));
                }
            }
        });
        match read {
            Ok(n) => {
                let complete = n < want || got.len() < n;
                let next = got.last().map(|(s, _)| s + 1);
                for (seq, value) in got {
                    if self.in_flight.contains_key(&seq) || self.redeliver.contains_key(&seq) {
                        continue;
                    }
                    self.ready.push_back(Task {
                        seq,
                        attempt: 1,
                        fresh: false,
                        value,
                    });
                }
                self.spilled_from = if complete { None } else { next };
            }
            Err(e) => tracing::error!(group = %self.name, "cannot page tasks in: {e}"),
        }
    }

    pub fn pending(&self) -> u64 {
        self.stored - self.in_flight.len() as u64
    }

    /// Tasks whose payload is held here besides those in flight (the window and what is
    /// due again): bounded by the window, not by the backlog.
    pub fn in_memory(&self) -> usize {
        self.ready.len() + self.redeliver.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// Whether anything could be sent now (a task ready and an instance with room).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.redeliver.is_empty() || self.spilled_from.is_some()
    }

    pub fn attach(&mut self, addr: Addr) {
        if !self.instances.iter().any(|i| i.addr == addr) {
            self.instances.push(Instance { addr, unacked: 0 });
        }
    }

    /// The instance left: whatever it held goes back with its attempt counted.
    pub fn detach(&mut self, addr: Addr, max_attempts: u32, c: &mut Changes) -> bool {
        let Some(i) = self.instances.iter().position(|i| i.addr == addr) else {
            return false;
        };
        self.instances.remove(i);
        if self.rr > i {
            self.rr -= 1;
        }
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.instance == addr)
            .map(|(s, _)| *s)
            .collect();
        for seq in held {
            if let Some(f) = self.in_flight.remove(&seq) {
                self.back(seq, f, 0, 0, max_attempts, Cause::Disconnect, c);
            }
        }
        true
    }

    fn instance_mut(&mut self, addr: Addr) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.addr == addr)
    }

    /// The next instance, in turn, that is below `prefetch`.
    fn next_instance(&mut self, prefetch: u32) -> Option<usize> {
        let n = self.instances.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if self.instances[i].unacked < prefetch {
                self.rr = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    fn take_next(&mut self) -> Option<Task> {
        let redo = self.redeliver.first_key_value().map(|(s, _)| *s);
        let first = self.ready.front().map(|t| t.seq);
        match (redo, first) {
            (Some(r), Some(f)) if f < r => self.ready.pop_front(),
            (Some(_), _) => self.redeliver.pop_first().map(|(_, t)| t),
            (None, Some(_)) => self.ready.pop_front(),
            (None, None) => None,
        }
    }

    /// Hands tasks to instances below `prefetch`, round robin, oldest first.
    pub fn dispatch(
        &mut self,
        store: &Store,
        now: u64,
        prefetch: u32,
        ack_timeout_ms: u64,
        window: usize,
        out: &mut Vec<Delivery>,
    ) {
        let started = Instant::now();
        loop {
            if self.ready.len() < window / 2 {
                self.refill(store, window);
            }
            let Some(i) = self.next_instance(prefetch) else {
                return;
            };
            let Some(task) = self.take_next() else {
                return;
            };
            let inst = &mut self.instances[i];
            inst.unacked += 1;
            let to = inst.addr;
            let deadline = now + ack_timeout_ms;
            self.deadlines.push(Reverse((deadline, task.seq)));
            out.push(Delivery {
                to,
                seq: task.seq,
                attempt: task.attempt,
                record: task.attempt > 1 || task.fresh,
                value: task.value.clone(),
            });
            self.in_flight.insert(
                task.seq,
                Flight {
                    instance: to,
                    attempt: task.attempt,
                    deadline,
                    sent: started,
                    value: task.value,
                },
            );
        }
    }

    /// `taskComplete` of one task by `by`: in flight, waiting or queued again after a
    /// timeout, it is done (acknowledgements are idempotent: a second one finds nothing).
    pub fn complete(&mut self, seq: u64, c: &mut Changes) {
        if let Some(f) = self.in_flight.remove(&seq) {
            if let Some(i) = self.instance_mut(f.instance) {
                i.unacked = i.unacked.saturating_sub(1);
            }
            c.outcomes.completed.push(f.sent.elapsed().as_secs_f64());
        } else if self.redeliver.remove(&seq).is_some()
            || self.waiting_attempt.remove(&seq).is_some()
        {
            // Completed late by an earlier holder: done all the same.
        } else {
            return;
        }
        self.stored -= 1;
        c.steps.push(Step::Delete(seq));
    }

    /// `taskFailed`: back after `retry_ms`, or to the dead letters when out of attempts.
    /// `at`: (now, retryInMs).
    pub fn fail(&mut self, by: Addr, seq: u64, at: (u64, u64), max_attempts: u32, c: &mut Changes) {
        if !self.in_flight.get(&seq).is_some_and(|f| f.instance == by) {
            return; // not held by this instance (any more): nothing to fail
        }
        if let Some(f) = self.in_flight.remove(&seq) {
            self.back(seq, f, at.0, at.1, max_attempts, Cause::Failed, c);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn back(
        &mut self,
        seq: u64,
        f: Flight,
        now: u64,
        retry_ms: u64,
        max_attempts: u32,
        cause: Cause,
        c: &mut Changes,
    ) {
        if let Some(i) = self.instance_mut(f.instance) {
            i.unacked = i.unacked.saturating_sub(1);
        }
        if f.attempt >= max_attempts.max(1) {
            self.stored -= 1;
            self.dead += 1;
            c.outcomes.dead += 1;
            c.steps
                .push(Step::Dead(seq, record::with_header(&f.value, 0, f.attempt)));
            return;
        }
        c.outcomes.redelivered.push(cause);
        if retry_ms == 0 {
            self.redeliver.insert(
                seq,
                Task {
                    seq,
                    attempt: f.attempt + 1,
                    fresh: false,
                    value: f.value,
                },
            );
        } else {
            // The payload is read back from the store when the wait is over.
            self.waiting.push(Reverse((now + retry_ms, seq)));
            self.waiting_attempt.insert(seq, (f.attempt + 1, false));
        }
    }

    /// The task was really sent at `deadline - ack_timeout` (its delivery waited for a
    /// commit): its ack deadline counts from then.
    pub fn rearm(&mut self, seq: u64, deadline: u64) {
        if let Some(f) = self.in_flight.get_mut(&seq) {
            if deadline > f.deadline {
                f.deadline = deadline;
                self.deadlines.push(Reverse((deadline, seq)));
            }
        }
    }

    /// The earliest instant [`Group::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let a = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let b = self.waiting.peek().map(|Reverse((t, _))| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ack deadlines that passed, and retries that are due.
    pub fn tick(&mut self, store: &Store, now: u64, max_attempts: u32, c: &mut Changes) {
        while let Some(Reverse((at, seq))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // Stale entries (completed, or sent again with a later deadline) are skipped.
            if self.in_flight.get(&seq).is_some_and(|f| f.deadline == at) {
                if let Some(f) = self.in_flight.remove(&seq) {
                    self.back(seq, f, now, 0, max_attempts, Cause::Timeout, c);
                }
            }
        }
        while let Some(Reverse((at, seq))) = self.waiting.peek().copied() {
            if at > now {
                break;
            }
            self.waiting.pop();
            let Some((attempt, fresh)) = self.waiting_attempt.remove(&seq) else {
                continue;
            };
            match store.get(Table::Tasks, &record::task_key(&self.name, seq)) {
                Ok(Some(v)) => {
                    self.redeliver.insert(
                        seq,
                        Task {
                            seq,
                            attempt,
                            fresh,
                            value: v.into(),
                        },
                    );
                }
                Ok(None) => {
                    // Gone meanwhile (its completion was already applied): not stored.
                    self.stored = self.stored.saturating_sub(1);
                }
                Err(e) => {
                    tracing::error!(group = %self.name, seq, "cannot read a task back: {e}");
                    self.waiting.push(Reverse((now + 1000, seq)));
                    self.waiting_attempt.insert(seq, (attempt, fresh));
                    break;
                }
            }
        }
    }

    /// Whether the group can be forgotten (nothing kept, nobody attached).
    pub fn is_idle(&self) -> bool {
        self.subs.is_empty() && self.stored == 0 && self.dead == 0 && self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use std::collections::HashSet;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store(tag: &str) -> (Store, Dir) {
        let d = std::env::temp_dir().join(format!(
            "shardcast-queue-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        (Store::open(&d, StoreOptions::default()).unwrap(), Dir(d))
    }

    /// Commits puts and deletes and waits for them.
    fn commit(store: &Store, puts: Vec<(Table, Vec<u8>, Vec<u8>)>, deletes: Vec<(Table, Vec<u8>)>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = super::super::StoreJob {
            puts,
            deletes,
            then: Some(Box::new(move |ok| {
                let _ = tx.send(ok);
            })),
        };
        assert!(store.submit(Box::new(job)).is_ok());
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(true)
        );
    }

    fn value(seq: u64) -> Vec<u8> {
        let tail =
            format!(r#""eventType":"e","path":"p","data":{seq},"timestamp":"t","seq":{seq}}}"#);
        record::encode(0, 0, br#""s""#, tail.as_bytes())
    }

    /// Stores and enqueues tasks `seqs`.
    fn enqueue(store: &Store, g: &mut Group, seqs: std::ops::RangeInclusive<u64>, window: usize) {
        let puts = seqs
            .clone()
            .map(|s| (Table::Tasks, record::task_key(&g.name, s), value(s)))
            .collect();
        commit(store, puts, Vec::new());
        for s in seqs {
            g.enqueued(s, value(s).into(), window);
        }
    }

    fn apply(store: &Store, g: &Group, c: &mut Changes) {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for s in c.steps.drain(..) {
            match s {
                Step::Delete(seq) => deletes.push((Table::Tasks, record::task_key(&g.name, seq))),
                Step::Dead(seq, v) => {
                    deletes.push((Table::Tasks, record::task_key(&g.name, seq)));
                    puts.push((Table::DeadLetters, record::task_key(&g.name, seq), v));
                }
            }
        }
        commit(store, puts, deletes);
    }

    const A: Addr = Addr {
        shard: 0,
        conn: 1,
        gen: 1,
    };
    const B: Addr = Addr {
        shard: 1,
        conn: 7,
        gen: 3,
    };

    #[test]
    fn a_backlog_beyond_the_window_stays_on_disk_and_comes_in_order() {
        let (store, _d) = store("window");
        let window = 8;
        let mut g = Group::new("g".into());
        enqueue(&store, &mut g, 1..=100, window);
        assert!(g.ready.len() <= window);
        assert_eq!(g.pending(), 100);
        g.attach(A);
        let mut out = Vec::new();
        let mut got = Vec::new();
        let mut c = Changes::default();
        while got.len() < 100 {
            g.dispatch(&store, 0, 3, 1000, window, &mut out);
            assert!(g.ready.len() <= window, "window held: {}", g.ready.len());
            assert!(g.in_flight() <= 3, "prefetch held");
            assert!(
                !out.is_empty(),
                "something to send after {} tasks",
                got.len()
            );
            for d in out.drain(..) {
                assert_eq!(d.attempt, 1);
                assert!(!d.record);
                got.push(d.seq);
                g.complete(d.seq, &mut c);
            }
            apply(&store, &g, &mut c);
        }
        assert_eq!(got, (1..=100).collect::<Vec<_>>());
        assert_eq!(g.pending(), 0);
        assert!(!g.has_ready());
    }

    #[test]
    fn round_robin_under_prefetch_and_every_task_in_one_place() {
        let (store, _d) = store("random");
        let window = 16;
        let max_attempts = 4;
        let mut g = Group::new("g".into());
        g.attach(A);
        g.attach(B);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next_seq = 1;
        let mut now = 0;
        let mut done: HashSet<u64> = HashSet::new();
        let mut dead: HashSet<u64> = HashSet::new();
        let mut c = Changes::default();
        let mut out = Vec::new();
        let mut held: HashMap<u64, Addr> = HashMap::new();
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 7 {
                0 | 1 => {
                    let n = 1 + x % 5;
                    enqueue(&store, &mut g, next_seq..=next_seq + n - 1, window);
                    next_seq += n;
                }
                2 | 3 => {
                    g.dispatch(&store, now, 4, 50, window, &mut out);
                    let mut per = HashMap::new();
                    for d in out.drain(..) {
                        assert!(!held.contains_key(&d.seq), "task {} sent while held", d.seq);
                        *per.entry(d.to).or_insert(0) += 1;
                        held.insert(d.seq, d.to);
                    }
                }
                4 => {
                    if let Some(&seq) = held.keys().next() {
                        g.complete(seq, &mut c);
                        held.remove(&seq);
                        done.insert(seq);
                    }
                }
                5 => {
                    if let Some((&seq, &by)) = held.iter().next() {
                        g.fail(by, seq, (now, x % 3 * 20), max_attempts, &mut c);
                        held.remove(&seq);
                    }
                }
                _ => {
                    now += 20;
                    g.tick(&store, now, max_attempts, &mut c);
                    // Timed out tasks are no longer held by anyone.
                    held.retain(|s, _| g.in_flight.contains_key(s));
                }
            }
            for s in &c.steps {
                if let Step::Dead(seq, _) = s {
                    dead.insert(*seq);
                }
            }
            apply(&store, &g, &mut c);
            // Each instance is below prefetch; the group's counts add up.
            for i in &g.instances {
                let n = g
                    .in_flight
                    .values()
                    .filter(|f| f.instance == i.addr)
                    .count();
                assert_eq!(i.unacked as usize, n);
                assert!(n <= 4);
            }
            let kept = next_seq - 1 - done.len() as u64 - dead.len() as u64;
            assert_eq!(g.stored, kept, "stored count");
            let places = [
                g.ready.iter().map(|t| t.seq).collect::<HashSet<_>>(),
                g.redeliver.keys().copied().collect(),
                g.waiting_attempt.keys().copied().collect(),
                g.in_flight.keys().copied().collect(),
            ];
            for (i, a) in places.iter().enumerate() {
                for b in &places[i + 1..] {
                    assert!(a.is_disjoint(b), "a task in two places");
                }
            }
        }
        // Drain: everything not dead is delivered and completed in the end.
        for _ in 0..10_000 {
            if g.stored == 0 {
                break;
            }
            now += 100;
            g.tick(&store, now, max_attempts, &mut c);
            g.dispatch(&store, now, 4, 50, window, &mut out);
            for d in out.drain(..) {
                g.complete(d.seq, &mut c);
                done.insert(d.seq);
            }
            for s in &c.steps {
                if let Step::Dead(seq, _) = s {
                    dead.insert(*seq);
                }
            }
            apply(&store, &g, &mut c);
        }
        assert_eq!(g.stored, 0);
        assert_eq!(done.len() + dead.len(), next_seq as usize - 1);
        assert!(done.is_disjoint(&dead));
        assert_eq!(g.dead as usize, dead.len());
    }

    #[test]
    fn recovery_counts_sent_tasks_by_watermark_and_record() {
        let mut g = Group::new("g".into());
        g.watermark = 5;
        // Sent once (at or below the watermark), never sent, sent 3 times, replayed.
        assert!(g.recover(4, &value(4), 16, 10).is_none());
        assert!(g.recover(6, &value(6), 16, 10).is_none());
        assert!(g
            .recover(3, &record::with_header(&value(3), 0, 3), 16, 10)
            .is_none());
        assert!(g
            .recover(2, &record::with_header(&value(2), FRESH, 0), 16, 10)
            .is_none());
        assert_eq!(g.redeliver.get(&4).map(|t| t.attempt), Some(2));
        assert_eq!(g.redeliver.get(&3).map(|t| t.attempt), Some(4));
        assert_eq!(
            g.redeliver.get(&2).map(|t| (t.attempt, t.fresh)),
            Some((1, true))
        );
        assert_eq!(
            g.ready
                .iter()
                .map(|t| (t.seq, t.attempt))
                .collect::<Vec<_>>(),
            vec![(6, 1)]
        );
        // Out of attempts: straight to the dead letters.
        assert!(matches!(
            g.recover(1, &record::with_header(&value(1), 0, 10), 16, 10),
            Some(Step::Dead(1, _))
        ));
        assert_eq!((g.stored, g.dead), (4, 1));
    }
}
