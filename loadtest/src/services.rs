//! Scenario services (PROTOCOL.md §10): service instances, durable tasks, locks.
//!
//! Two sides, each on its own thread and `mio` event loop. The service side
//! ([`SvcLoop`]) holds the WebSocket connections: instances authenticated with a service
//! token of `--group` (role `service`), each subscribed to `load` (the group's durable
//! subscription), or lockers (authenticated only). The publishing side (modes enqueue and
//! e2e) is the entities writer ([`crate::entities::Writer`]) sending `POST
//! /api/v1/publish` with `--batch` events each, pipelined, at `--rate` events per second.
//!
//! * `--mode enqueue`: durable enqueues per second. Instances (`--instances`, default 0)
//!   hold the tasks they get without completing them; with 0, one instance subscribes and
//!   leaves before the window so that the subscription exists. After the window the
//!   group's `pending + inFlight` (`GET /api/v1/services`) must have grown by the events
//!   accepted.
//! * `--mode e2e`: publish → task → `taskComplete`. Instances complete every task they
//!   receive: one `taskComplete` message per read burst (split under 60 kB). Latency is
//!   publish request queued (`data.t`, Unix µs) → task read. After the window the run
//!   waits (`--drain`) for the group's `pending + inFlight` to reach 0; lost = events
//!   accepted − distinct tasks of the run completed (the run's tasks: seqs within the
//!   accepted `firstSeq..=lastSeq` ranges).
//! * `--mode locks`: `--connections` lockers, each doing lock/unlock pairs on its own
//!   `--names` names, or all competing for `--shared-names` names (with `waitMs` > 0),
//!   up to `--pipeline` requests in flight each; the lock book checks that fencing
//!   tokens grow per name and that no grant is seen while another holder holds the name.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

use crate::cli::{Config, ServicesMode};
use crate::conn::{short_io, url_encode};
use crate::entities::{self, round2, round3, row, Counts, Plan, Requests, Writer};
use crate::net::Endpoint;
use crate::procstat;
use crate::publish::HttpConn;
use crate::report::{new_histogram, ServerStats};
use crate::scan;
use crate::scenario::services::{
    fairness, lock_message, parse_group_stats, parse_messages, scan_tasks, service_claims,
    services_request, subscribe_message, task_of, unlock_message, AckBuilder, Fairness, GroupStats,
    LockBook, PublishBatches, Task,
};
use crate::util::{human_bytes, human_count, unix_nanos, unix_secs, Rng};
use crate::ws::{self, Decode};

/// From the start of an instance's TCP connect to `subscribedEvents` (lockers:
/// `authenticated`).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// A lock request unanswered this long past its `waitMs` ends its connection.
pub const LOCK_ANSWER_SLACK: Duration = Duration::from_secs(10);
/// How often the queue is read while waiting for it after the window.
const STATS_EVERY: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection may do per turn (one read burst: its task ids are acknowledged
/// together at its end).
const READS_PER_TURN: usize = 8;
const PONG: &[u8] = br#"{"type":"pong"}"#;

/// Cheap hashing of seqs (they are spread well enough; mixing the bits is all it needs).
#[derive(Default)]
pub struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = (n ^ (n >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

pub type SeqSet = HashSet<u64, BuildHasherDefault<SeqHasher>>;

/// What the connections of the service side do.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Instances subscribed to the group; `complete`: acknowledge every task received.
    Instances {
        complete: bool,
    },
    Lockers(LockPlan),
}

#[derive(Debug, Clone, Copy)]
pub struct LockPlan {
    /// Requests in flight per connection at most.
    pub pipeline: usize,
    /// Own names per connection (`load-c{conn}-n{k}`), unless `shared` (`load-shared-{k}`).
    pub names: u64,
    pub shared: Option<u64>,
    pub ttl_ms: u64,
    pub wait_ms: u64,
}

impl LockPlan {
    /// Names in the book.
    fn total_names(&self, conns: usize) -> usize {
        match self.shared {
            Some(k) => k as usize,
            None => conns * self.names as usize,
        }
    }

    /// Connection `conn`'s name slots: (book index, name), in the order it goes for them
    /// (shared names: starting at `conn mod K`, so that they spread).
    fn slots_of(&self, conn: usize) -> Vec<(usize, String)> {
        match self.shared {
            Some(k) => (0..k as usize)
                .map(|j| {
                    let i = (conn + j) % k as usize;
                    (i, format!("load-shared-{i}"))
                })
                .collect(),
            None => (0..self.names as usize)
                .map(|j| (conn * self.names as usize + j, format!("load-c{conn}-n{j}")))
                .collect(),
        }
    }
}

/// What the service side needs.
pub struct LoopPlan {
    pub ws: Endpoint,
    /// The connection options given (`batchMs=..&batchMax=..&framing=..`, each only when
    /// given; empty for none).
    pub options_query: String,
    pub secret: String,
    pub group: String,
    pub token_ttl_secs: u64,
    pub count: usize,
    pub role: Role,
    /// Unix µs of the run's start: a task whose `data.t` is earlier is not the run's.
    pub run_start_us: u64,
}

/// Live counters of the service side, for the progress line and the drain.
#[derive(Default)]
pub struct Live {
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub disconnected: AtomicU64,
    /// No connection is being set up any more.
    pub connect_done: AtomicBool,
    pub received: AtomicU64,
    pub completed: AtomicU64,
    pub duplicates: AtomicU64,
    /// Distinct tasks of this run (by `data.t`) received.
    pub ours: AtomicU64,
    pub latency_p99_us: AtomicU64,
    pub pairs: AtomicU64,
    pub lock_inflight: AtomicU64,
    pub lock_errors: AtomicU64,
    pub violations: AtomicU64,
}

/// Commands to the service side.
#[derive(Default)]
pub struct Control {
    /// Lockers start lock/unlock pairs.
    pub window_open: AtomicBool,
    /// Lockers start no new pair (the ones held are unlocked).
    pub window_over: AtomicBool,
    /// Close everything and return the results.
    pub stop: AtomicBool,
}

/// What the instances saw.
#[derive(Debug, Clone)]
pub struct TaskStats {
    /// Task deliveries (redeliveries included).
    pub received: u64,
    /// Task ids sent in `taskComplete` messages, and those messages.
    pub completed: u64,
    pub ack_messages: u64,
    /// A task (by seq) received again.
    pub duplicates: u64,
    /// Tasks with `attempt` above 1.
    pub redelivered: u64,
    /// Tasks whose `data.t` is missing or before the run (not published by it).
    pub foreign: u64,
    /// Tasks without a seq or a `<group>:<N>` id: not checked for duplicates.
    pub unkeyed: u64,
    /// Distinct tasks of the run (by `data.t`).
    pub ours: u64,
    pub per_instance: Vec<u64>,
    /// Publish request queued (`data.t`) → task read, µs (tasks of the run only).
    pub latency: Histogram<u64>,
    pub seen: SeqSet,
    /// When the last task was read.
    pub last: Option<Instant>,
}

impl TaskStats {
    fn new(instances: usize) -> TaskStats {
        TaskStats {
            received: 0,
            completed: 0,
            ack_messages: 0,
            duplicates: 0,
            redelivered: 0,
            foreign: 0,
            unkeyed: 0,
            ours: 0,
            per_instance: vec![0; instances],
            latency: new_histogram(),
            seen: SeqSet::default(),
            last: None,
        }
    }
}

/// What the lockers saw.
#[derive(Debug, Clone)]
pub struct LockStats {
    pub lock_requests: u64,
    pub granted: u64,
    /// `lockResult` with `acquired: false` (the wait ran out).
    pub not_acquired: u64,
    pub unlock_requests: u64,
    pub released: u64,
    pub not_released: u64,
    /// Error answers and protocol oddities, by kind.
    pub errors: BTreeMap<String, u64>,
    /// `lock` queued → `lockResult` with the grant read, µs (waiting included).
    pub lock_latency: Histogram<u64>,
    pub unlock_latency: Histogram<u64>,
    pub book: LockBook,
    /// Pairs completed per connection.
    pub per_connection: Vec<u64>,
    pub last_pair: Option<Instant>,
}

impl LockStats {
    fn new(conns: usize, names: usize) -> LockStats {
        LockStats {
            lock_requests: 0,
            granted: 0,
            not_acquired: 0,
            unlock_requests: 0,
            released: 0,
            not_released: 0,
            errors: BTreeMap::new(),
            lock_latency: new_histogram(),
            unlock_latency: new_histogram(),
            book: LockBook::new(names),
            per_connection: vec![0; conns],
            last_pair: None,
        }
    }

    fn error(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The service side's results.
#[derive(Debug, Clone)]
pub struct LoopResult {
    pub requested: u64,
    pub ready: u64,
    /// Connections that failed before being ready, by reason.
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Ready connections that ended before the end, by reason.
    pub disconnected: u64,
    pub disconnects: BTreeMap<String, u64>,
    /// `error` and `warning` messages the server sent to ready connections, by code.
    pub server_errors: BTreeMap<String, u64>,
    pub tasks: TaskStats,
    pub locks: Option<LockStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Authenticating,
    Subscribing,
    Ready,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Upgrading => "upgrading",
            State::Authenticating => "authenticating",
            State::Subscribing => "subscribing",
            State::Ready => "ready",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Idle,
    Locking,
    Held,
    Unlocking,
}

struct LockSlot {
    book: usize,
    name: String,
    state: SlotState,
}

struct PendingReq {
    slot: usize,
    unlock: bool,
    sent: Instant,
}

/// A locker's names and requests.
struct Locker {
    slots: Vec<LockSlot>,
    /// Slots to lock next (round robin) / held, to unlock next.
    idle: VecDeque<usize>,
    held: VecDeque<usize>,
    pending: HashMap<u64, PendingReq>,
    next_req: u64,
}

struct SvcConn {
    stream: TcpStream,
    state: State,
    opened: Instant,
    key: String,
    out: Vec<u8>,
    /// Bytes of a partial frame (or of the upgrade answer).
    pending: Vec<u8>,
    frag: Option<Vec<u8>>,
    busy: bool,
    acks: AckBuilder,
    locker: Option<Locker>,
}

/// Why a connection ended.
enum End {
    Fail(String),
    Closed(u16),
    Broken(String),
    Protocol(String),
}

impl End {
    fn reason(&self, state: State) -> String {
        let s = state.name();
        match self {
            End::Fail(r) => r.clone(),
            End::Closed(c) => format!("closed {c} while {s}"),
            End::Broken(e) => format!("{e} while {s}"),
            End::Protocol(p) => format!("protocol error while {s}: {p}"),
        }
    }
}

/// The service side's event loop.
pub struct SvcLoop {
    plan: Arc<LoopPlan>,
    live: Arc<Live>,
    ctl: Arc<Control>,
    poll: Poll,
    conns: Vec<Option<SvcConn>>,
    busy: VecDeque<usize>,
    scratch: Vec<u8>,
    rng: Rng,
    res: LoopResult,
    setting_up: usize,
    window_open: bool,
    window_over: bool,
    last_p99: Instant,
}

/// Starts the service side on its own thread.
pub fn spawn(plan: LoopPlan) -> io::Result<(JoinHandle<LoopResult>, Arc<Live>, Arc<Control>)> {
    let live = Arc::new(Live::default());
    let ctl = Arc::new(Control::default());
    let mut lp = SvcLoop::new(Arc::new(plan), Arc::clone(&live), Arc::clone(&ctl))?;
    let h = std::thread::Builder::new()
        .name("services".into())
        .spawn(move || {
            lp.run();
            lp.res
        })?;
    Ok((h, live, ctl))
}

impl SvcLoop {
    fn new(plan: Arc<LoopPlan>, live: Arc<Live>, ctl: Arc<Control>) -> io::Result<SvcLoop> {
        let n = plan.count;
        let (instances, locks) = match plan.role {
            Role::Instances { .. } => (n, None),
            Role::Lockers(lp) => (0, Some(LockStats::new(n, lp.total_names(n)))),
        };
        Ok(SvcLoop {
            poll: Poll::new()?,
            conns: (0..n).map(|_| None).collect(),
            busy: VecDeque::new(),
            scratch: vec![0; READ_CHUNK * 2],
            rng: Rng::from_os(),
            res: LoopResult {
                requested: n as u64,
                ready: 0,
                failed: 0,
                failures: BTreeMap::new(),
                disconnected: 0,
                disconnects: BTreeMap::new(),
                server_errors: BTreeMap::new(),
                tasks: TaskStats::new(instances),
                locks,
            },
            setting_up: 0,
            window_open: false,
            window_over: false,
            last_p99: Instant::now(),
            plan,
            live,
            ctl,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        for slot in 0..self.conns.len() {
            self.open(slot);
        }
        let mut last_scan = Instant::now();
        loop {
            if self.ctl.stop.load(Relaxed) {
                break;
            }
            if !self.window_open && self.ctl.window_open.load(Relaxed) {
                self.window_open = true;
                self.pump_all();
            }
            if !self.window_over && self.ctl.window_over.load(Relaxed) {
                self.window_over = true;
            }
            let timeout = if self.busy.is_empty() {
                Duration::from_millis(20)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("loadtest: poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                self.on_event(ev.token().0, ev.is_writable() || ev.is_error());
            }
            for _ in 0..self.busy.len() {
                let Some(slot) = self.busy.pop_front() else {
                    break;
                };
                if let Some(c) = self.conns[slot].as_mut() {
                    c.busy = false;
                }
                self.on_event(slot, false);
            }
            let now = Instant::now();
            if now.duration_since(last_scan) >= Duration::from_millis(100) {
                last_scan = now;
                self.expire(now);
                self.publish_live();
            }
        }
        self.close_all();
        self.publish_live();
    }

    fn open(&mut self, slot: usize) {
        let plan = Arc::clone(&self.plan);
        let mut stream = match crate::net::connect_nonblocking(plan.ws.addr, None) {
            Ok(s) => s,
            Err(e) => return self.fail(format!("connect: {}", short_io(&e))),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(format!("register: {}", short_io(&e)));
        }
        let _ = stream.set_nodelay(true);
        let sub = match plan.role {
            Role::Instances { .. } => format!("svc-{slot}"),
            Role::Lockers(_) => format!("locker-{slot}"),
        };
        let claims = service_claims(&sub, &plan.group, unix_secs() + plan.token_ttl_secs);
        let token = crate::jwt::sign_hs256(&claims, plan.secret.as_bytes());
        let target =
            crate::conn::ws_target(&plan.ws.path, &url_encode(&token), &plan.options_query);
        let key = ws::random_key(&mut self.rng);
        let request = ws::handshake_request(&plan.ws.host_header, &target, &key);
        let locker = match plan.role {
            Role::Lockers(lp) => {
                let slots: Vec<LockSlot> = lp
                    .slots_of(slot)
                    .into_iter()
                    .map(|(book, name)| LockSlot {
                        book,
                        name,
                        state: SlotState::Idle,
                    })
                    .collect();
                Some(Locker {
                    idle: (0..slots.len()).collect(),
                    slots,
                    held: VecDeque::new(),
                    pending: HashMap::new(),
                    next_req: 1,
                })
            }
            Role::Instances { .. } => None,
        };
        self.conns[slot] = Some(SvcConn {
            stream,
            state: State::Connecting,
            opened: Instant::now(),
            key,
            out: request,
            pending: Vec::new(),
            frag: None,
            busy: false,
            acks: AckBuilder::default(),
            locker,
        });
        self.setting_up += 1;
    }

    fn fail(&mut self, why: String) {
        self.res.failed += 1;
        *self.res.failures.entry(why).or_default() += 1;
    }

    fn mask(&mut self) -> [u8; 4] {
        let m = self.rng.next_u64().to_le_bytes();
        [m[0], m[1], m[2], m[3]]
    }

    fn on_event(&mut self, slot: usize, writable: bool) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        match self.drive(&mut c, slot, writable) {
            Ok(more) => {
                if more && !c.busy {
                    c.busy = true;
                    self.busy.push_back(slot);
                }
                self.conns[slot] = Some(c);
            }
            Err(end) => self.end(slot, c, end),
        }
    }

    /// Readiness of one connection: `Ok(true)` when it may have more to read.
    fn drive(&mut self, c: &mut SvcConn, slot: usize, writable: bool) -> Result<bool, End> {
        if c.state == State::Connecting {
            if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                return Err(End::Fail(format!("connect: {}", short_io(&e))));
            }
            match c.stream.peer_addr() {
                Ok(_) => c.state = State::Upgrading,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(End::Fail(format!("connect: {}", short_io(&e)))),
            }
            flush(c)?;
        } else if writable && !c.out.is_empty() {
            flush(c)?;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.read_burst(c, slot, &mut scratch);
        self.scratch = scratch;
        // one taskComplete message per read burst (more only past the size limit)
        for (m, n) in c.acks.take() {
            self.res.tasks.completed += n as u64;
            self.res.tasks.ack_messages += 1;
            let mask = self.mask();
            ws::encode_frame(&mut c.out, ws::OP_TEXT, &m, Some(mask));
        }
        // what the burst queued (acknowledgements, lock requests) goes out in one write
        if !c.out.is_empty() {
            flush(c)?;
        }
        r
    }

    /// Reads until the socket would block (`Ok(false)`) or the turn is over (`Ok(true)`).
    fn read_burst(
        &mut self,
        c: &mut SvcConn,
        slot: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<bool, End> {
        if c.state == State::Connecting {
            return Ok(false);
        }
        let mut need = 0usize;
        for _ in 0..READS_PER_TURN {
            let have = c.pending.len();
            let want = (have + READ_CHUNK).max(need + READ_CHUNK / 4);
            if scratch.len() < want {
                scratch.resize(want, 0);
            }
            scratch[..have].copy_from_slice(&c.pending);
            match c.stream.read(&mut scratch[have..]) {
                Ok(0) => {
                    return Err(End::Broken(
                        "connection closed without a close frame".into(),
                    ))
                }
                Ok(n) => {
                    let len = have + n;
                    let short = len < scratch.len();
                    c.pending.clear();
                    let (used, more) = self.process(c, slot, &mut scratch[..len])?;
                    need = more;
                    c.pending.extend_from_slice(&scratch[used..len]);
                    if c.pending.is_empty() && c.pending.capacity() > READ_CHUNK {
                        c.pending = Vec::new();
                    }
                    if short {
                        // a short read took all the socket held; data arriving later is a
                        // new edge (Linux TCP with EPOLLET), so skip the read that would
                        // only say WouldBlock: one syscall less per round trip
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Broken(format!("read: {}", short_io(&e)))),
            }
        }
        Ok(true)
    }

    /// The complete frames at the start of `buf`: (bytes used, size of the partial frame
    /// that follows when known).
    fn process(
        &mut self,
        c: &mut SvcConn,
        slot: usize,
        buf: &mut [u8],
    ) -> Result<(usize, usize), End> {
        let mut pos = 0;
        if c.state == State::Upgrading {
            match ws::check_handshake_response(buf, &c.key) {
                Ok(None) => return Ok((0, 0)),
                Ok(Some(n)) => {
                    pos = n;
                    c.state = State::Authenticating;
                    c.key = String::new();
                }
                Err(e) => return Err(End::Fail(e.to_string())),
            }
        }
        let now_us = unix_nanos() / 1000;
        loop {
            match ws::decode_frame(&mut buf[pos..]) {
                Decode::Frame(f, used) => {
                    match f.opcode {
                        ws::OP_TEXT | ws::OP_BINARY => {
                            if c.frag.is_some() {
                                return Err(End::Protocol(
                                    "new message inside a fragmented one".into(),
                                ));
                            }
                            if f.fin {
                                self.on_message(c, slot, f.payload, now_us)?;
                            } else {
                                c.frag = Some(f.payload.to_vec());
                            }
                        }
                        ws::OP_CONT => {
                            let Some(mut acc) = c.frag.take() else {
                                return Err(End::Protocol("continuation without a start".into()));
                            };
                            acc.extend_from_slice(f.payload);
                            if f.fin {
                                self.on_message(c, slot, &acc, now_us)?;
                            } else {
                                c.frag = Some(acc);
                            }
                        }
                        ws::OP_PING => {
                            let p = f.payload.to_vec();
                            self.send(c, ws::OP_PONG, &p)?;
                        }
                        ws::OP_PONG => {}
                        ws::OP_CLOSE => {
                            let code = ws::close_code(f.payload);
                            let echo = code.to_be_bytes();
                            let _ =
                                self.send(c, ws::OP_CLOSE, if code == 1005 { &[] } else { &echo });
                            return Err(End::Closed(code));
                        }
                        _ => return Err(End::Protocol("unknown opcode".into())),
                    }
                    pos += used;
                }
                Decode::Incomplete { need } => return Ok((pos, need)),
                Decode::Error(e) => return Err(End::Protocol(e.into())),
            }
        }
    }

    /// Queues one masked frame and writes what can be written.
    fn send(&mut self, c: &mut SvcConn, opcode: u8, payload: &[u8]) -> Result<(), End> {
        let mask = self.mask();
        ws::encode_frame(&mut c.out, opcode, payload, Some(mask));
        flush(c)
    }

    fn on_message(
        &mut self,
        c: &mut SvcConn,
        slot: usize,
        msg: &[u8],
        now_us: u64,
    ) -> Result<(), End> {
        if c.state == State::Ready {
            if let Role::Instances { complete } = self.plan.role {
                if let Some((tasks, pings)) = scan_tasks(msg) {
                    for t in &tasks {
                        self.on_task(c, slot, t, complete, now_us);
                    }
                    for _ in 0..pings {
                        self.send(c, ws::OP_TEXT, PONG)?;
                    }
                    return Ok(());
                }
                let msgs = parse_messages(msg).map_err(End::Protocol)?;
                for v in &msgs {
                    match task_of(v) {
                        Some(t) => self.on_task(c, slot, &t, complete, now_us),
                        None => self.on_control(c, slot, v)?,
                    }
                }
                return Ok(());
            }
        }
        let msgs = parse_messages(msg).map_err(End::Protocol)?;
        for v in &msgs {
            self.on_control(c, slot, v)?;
        }
        Ok(())
    }

    fn on_task(&mut self, c: &mut SvcConn, slot: usize, t: &Task<'_>, complete: bool, now_us: u64) {
        let s = &mut self.res.tasks;
        s.received += 1;
        s.per_instance[slot] += 1;
        s.last = Some(Instant::now());
        if t.attempt > 1 {
            s.redelivered += 1;
        }
        let ours = t.t.filter(|&t| t >= self.plan.run_start_us);
        match t.key() {
            Some(k) => {
                if !s.seen.insert(k) {
                    s.duplicates += 1;
                } else if ours.is_some() {
                    s.ours += 1;
                }
            }
            None => s.unkeyed += 1,
        }
        match ours {
            Some(ts) => s
                .latency
                .saturating_record(now_us.saturating_sub(ts).max(1)),
            None => s.foreign += 1,
        }
        if complete {
            c.acks.push(&t.task_id);
        }
    }

    /// A message that is not a task.
    fn on_control(&mut self, c: &mut SvcConn, slot: usize, v: &Value) -> Result<(), End> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        match (ty, c.state) {
            ("ping", _) => self.send(c, ws::OP_TEXT, PONG)?,
            ("pong", _) => {}
            ("authenticated", State::Authenticating) => match self.plan.role {
                Role::Instances { .. } => {
                    self.send(c, ws::OP_TEXT, subscribe_message().as_bytes())?;
                    c.state = State::Subscribing;
                }
                Role::Lockers(_) => {
                    self.become_ready(c);
                    self.pump(c, slot)?;
                }
            },
            ("subscribedEvents", State::Subscribing) => {
                let rejected = v
                    .get("rejected")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first());
                if let Some(r) = rejected {
                    let code = r.get("code").and_then(Value::as_str).unwrap_or("?");
                    return Err(End::Fail(format!("subscription rejected {code}")));
                }
                self.become_ready(c);
            }
            ("error", s) if s != State::Ready => {
                let what = if s == State::Subscribing {
                    "subscribe"
                } else {
                    "auth"
                };
                return Err(End::Fail(format!(
                    "{what} error {}",
                    scan::error_code(v.to_string().as_bytes())
                )));
            }
            ("lockResult", State::Ready) => self.on_lock_answer(c, slot, v, false)?,
            ("unlockResult", State::Ready) => self.on_lock_answer(c, slot, v, true)?,
            ("error", State::Ready) if c.locker.is_some() && v.get("requestId").is_some() => {
                self.on_lock_error(c, slot, v)?
            }
            ("error" | "warning", _) => {
                let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
                *self
                    .res
                    .server_errors
                    .entry(format!("{ty} {code}"))
                    .or_default() += 1;
            }
            _ => {
                *self
                    .res
                    .server_errors
                    .entry(format!("unexpected {ty:?} while {}", c.state.name()))
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    fn become_ready(&mut self, c: &mut SvcConn) {
        c.state = State::Ready;
        self.setting_up -= 1;
        self.res.ready += 1;
    }

    /// Lockers: queue what the pipeline allows (unlocks of held names first); the caller
    /// writes it (at the end of the read burst).
    fn pump(&mut self, c: &mut SvcConn, slot: usize) -> Result<(), End> {
        let Role::Lockers(lp) = self.plan.role else {
            return Ok(());
        };
        if c.state != State::Ready {
            return Ok(());
        }
        let may_lock = self.window_open && !self.window_over;
        loop {
            let Some(l) = c.locker.as_mut() else {
                return Ok(());
            };
            if l.pending.len() >= lp.pipeline {
                break;
            }
            let now = Instant::now();
            let id = l.next_req;
            let msg = if let Some(i) = l.held.pop_front() {
                let s = &mut l.slots[i];
                s.state = SlotState::Unlocking;
                l.pending.insert(
                    id,
                    PendingReq {
                        slot: i,
                        unlock: true,
                        sent: now,
                    },
                );
                let stats = self.res.locks.as_mut().expect("lockers have lock stats");
                stats.unlock_requests += 1;
                stats.book.released(s.book, slot);
                unlock_message(id, &s.name)
            } else if may_lock {
                let Some(i) = l.idle.pop_front() else {
                    break;
                };
                let s = &mut l.slots[i];
                s.state = SlotState::Locking;
                l.pending.insert(
                    id,
                    PendingReq {
                        slot: i,
                        unlock: false,
                        sent: now,
                    },
                );
                self.res
                    .locks
                    .as_mut()
                    .expect("lockers have lock stats")
                    .lock_requests += 1;
                lock_message(id, &s.name, lp.ttl_ms, lp.wait_ms)
            } else {
                break;
            };
            l.next_req += 1;
            let mask = self.mask();
            ws::encode_frame(&mut c.out, ws::OP_TEXT, msg.as_bytes(), Some(mask));
        }
        Ok(())
    }

    fn pump_all(&mut self) {
        for slot in 0..self.conns.len() {
            let Some(mut c) = self.conns[slot].take() else {
                continue;
            };
            match self.pump(&mut c, slot).and_then(|()| flush(&mut c)) {
                Ok(()) => self.conns[slot] = Some(c),
                Err(end) => self.end(slot, c, end),
            }
        }
    }

    /// The pending request an answer is for (counted as an error when there is none).
    fn take_pending(&mut self, c: &mut SvcConn, v: &Value) -> Option<PendingReq> {
        let stats = self.res.locks.as_mut()?;
        let l = c.locker.as_mut()?;
        let id = v
            .get("requestId")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok());
        match id.and_then(|id| l.pending.remove(&id)) {
            Some(p) => Some(p),
            None => {
                stats.error("an answer with an unknown requestId", 1);
                None
            }
        }
    }

    fn on_lock_answer(
        &mut self,
        c: &mut SvcConn,
        slot: usize,
        v: &Value,
        unlock_result: bool,
    ) -> Result<(), End> {
        let Role::Lockers(lp) = self.plan.role else {
            return Ok(());
        };
        let Some(p) = self.take_pending(c, v) else {
            return Ok(());
        };
        let now = Instant::now();
        let us = now.saturating_duration_since(p.sent).as_micros() as u64;
        let stats = self.res.locks.as_mut().expect("lockers have lock stats");
        let l = c.locker.as_mut().expect("a locker");
        let s = &mut l.slots[p.slot];
        if p.unlock != unlock_result {
            stats.error(
                if unlock_result {
                    "unlockResult answering a lock"
                } else {
                    "lockResult answering an unlock"
                },
                1,
            );
        }
        if v.get("name").and_then(Value::as_str) != Some(s.name.as_str()) {
            stats.error("an answer naming another name", 1);
        }
        if !p.unlock {
            if v.get("acquired").and_then(Value::as_bool) == Some(true) {
                stats.granted += 1;
                stats.lock_latency.saturating_record(us.max(1));
                match v.get("fencingToken").and_then(Value::as_u64) {
                    Some(token) => stats.book.granted(
                        s.book,
                        slot,
                        token,
                        p.sent,
                        Duration::from_millis(lp.ttl_ms),
                        now,
                    ),
                    None => stats.error("a grant without a numeric fencingToken", 1),
                }
                s.state = SlotState::Held;
                l.held.push_back(p.slot);
            } else {
                stats.not_acquired += 1;
                s.state = SlotState::Idle;
                l.idle.push_back(p.slot);
            }
        } else {
            if v.get("released").and_then(Value::as_bool) == Some(true) {
                stats.released += 1;
                stats.per_connection[slot] += 1;
                stats.unlock_latency.saturating_record(us.max(1));
                stats.last_pair = Some(now);
            } else {
                stats.not_released += 1;
            }
            s.state = SlotState::Idle;
            l.idle.push_back(p.slot);
        }
        self.pump(c, slot)
    }

    fn on_lock_error(&mut self, c: &mut SvcConn, slot: usize, v: &Value) -> Result<(), End> {
        let code = v
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let Some(p) = self.take_pending(c, v) else {
            return Ok(());
        };
        let stats = self.res.locks.as_mut().expect("lockers have lock stats");
        let what = if p.unlock { "unlock" } else { "lock" };
        stats.error(format!("{what}: error {code}"), 1);
        let l = c.locker.as_mut().expect("a locker");
        // an unlock refused: whether the name is still held is unknown; it expires
        l.slots[p.slot].state = SlotState::Idle;
        l.idle.push_back(p.slot);
        self.pump(c, slot)
    }

    /// Setup deadlines; lock requests unanswered too long.
    fn expire(&mut self, now: Instant) {
        let lock_limit = match self.plan.role {
            Role::Lockers(lp) => Some(Duration::from_millis(lp.wait_ms) + LOCK_ANSWER_SLACK),
            Role::Instances { .. } => None,
        };
        for slot in 0..self.conns.len() {
            let why = match &self.conns[slot] {
                Some(c) if c.state != State::Ready => (now.duration_since(c.opened)
                    >= SETUP_TIMEOUT)
                    .then(|| format!("timeout while {}", c.state.name())),
                Some(c) => match (&c.locker, lock_limit) {
                    (Some(l), Some(limit)) => l
                        .pending
                        .values()
                        .any(|p| now.duration_since(p.sent) >= limit)
                        .then(|| format!("a lock request unanswered for {}s", limit.as_secs())),
                    _ => None,
                },
                None => None,
            };
            if let Some(why) = why {
                if let Some(c) = self.conns[slot].take() {
                    self.end(slot, c, End::Fail(why));
                }
            }
        }
    }

    /// Removes a connection and counts why it ended.
    fn end(&mut self, slot: usize, mut c: SvcConn, end: End) {
        let _ = self.poll.registry().deregister(&mut c.stream);
        if let End::Protocol(_) = end {
            let mut f = Vec::new();
            let mask = self.mask();
            ws::encode_frame(&mut f, ws::OP_CLOSE, &1002u16.to_be_bytes(), Some(mask));
            let _ = c.stream.write(&f);
        }
        let why = end.reason(c.state);
        if c.state == State::Ready {
            self.res.disconnected += 1;
            *self.res.disconnects.entry(why.clone()).or_default() += 1;
            eprintln!("\nloadtest: service connection {slot} ended: {why}");
        } else {
            self.setting_up -= 1;
            self.fail(why);
        }
        self.forget_locks(slot, &c, "connection ended with the request in flight");
    }

    /// A locker is gone: it holds nothing any more (the server releases on disconnect);
    /// what it had in flight is counted as `why`.
    fn forget_locks(&mut self, slot: usize, c: &SvcConn, why: &str) {
        let (Some(l), Some(stats)) = (&c.locker, self.res.locks.as_mut()) else {
            return;
        };
        for s in &l.slots {
            stats.book.released(s.book, slot);
        }
        stats.error(why, l.pending.len() as u64);
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            let Some(mut c) = self.conns[slot].take() else {
                continue;
            };
            if c.state != State::Connecting {
                let mut f = Vec::new();
                let mask = self.mask();
                ws::encode_frame(&mut f, ws::OP_CLOSE, &1000u16.to_be_bytes(), Some(mask));
                let _ = flush(&mut c);
                let _ = c.stream.write(&f);
            }
            if c.state != State::Ready {
                self.setting_up -= 1;
                self.fail(format!("still {} at the end", c.state.name()));
            }
            self.forget_locks(slot, &c, "unanswered at the end");
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn publish_live(&mut self) {
        let r = &self.res;
        let l = &self.live;
        l.ready.store(r.ready, Relaxed);
        l.failed.store(r.failed, Relaxed);
        l.disconnected.store(r.disconnected, Relaxed);
        l.received.store(r.tasks.received, Relaxed);
        l.completed.store(r.tasks.completed, Relaxed);
        l.duplicates.store(r.tasks.duplicates, Relaxed);
        l.ours.store(r.tasks.ours, Relaxed);
        if self.last_p99.elapsed() >= Duration::from_millis(900) {
            self.last_p99 = Instant::now();
            let h = match &r.locks {
                Some(s) => &s.lock_latency,
                None => &r.tasks.latency,
            };
            if !h.is_empty() {
                l.latency_p99_us.store(h.value_at_quantile(0.99), Relaxed);
            }
        }
        if let Some(s) = &r.locks {
            l.pairs.store(s.released, Relaxed);
            l.lock_errors
                .store(s.error_count() + s.not_released, Relaxed);
            l.violations.store(s.book.violations(), Relaxed);
            let inflight: usize = self
                .conns
                .iter()
                .flatten()
                .filter_map(|c| c.locker.as_ref())
                .map(|lk| lk.pending.len())
                .sum();
            l.lock_inflight.store(inflight as u64, Relaxed);
        }
        if self.setting_up == 0 {
            l.connect_done.store(true, Relaxed);
        }
    }
}

/// Writes what waits in `c.out`.
fn flush(c: &mut SvcConn) -> Result<(), End> {
    if c.state == State::Connecting {
        return Ok(());
    }
    let mut written = 0;
    while written < c.out.len() {
        match c.stream.write(&c.out[written..]) {
            Ok(0) => return Err(End::Broken("write returned 0".into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Broken(format!("write: {}", short_io(&e)))),
        }
    }
    c.out.drain(..written);
    if c.out.is_empty() && c.out.capacity() > 64 * 1024 {
        c.out = Vec::new();
    }
    Ok(())
}

/// `GET /api/v1/services`, the group's entry: `Ok(None)` when the group is not listed.
pub fn group_stats(
    http: &Endpoint,
    api_key: &str,
    group: &str,
) -> Result<Option<GroupStats>, String> {
    let mut c = HttpConn::connect(http.addr).map_err(|e| format!("connect: {}", short_io(&e)))?;
    let (status, _, body) = c
        .round_trip(&services_request(http, api_key))
        .map_err(|e| format!("GET /api/v1/services: {}", short_io(&e)))?;
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
        return Err(format!("GET /api/v1/services: HTTP {status}: {text}"));
    }
    parse_group_stats(&body, group).map_err(|e| format!("GET /api/v1/services: {e}"))
}

/// The progress line, once a second.
struct Ticker {
    started: Instant,
    last: Instant,
    last_events: u64,
    last_tasks: u64,
    last_pairs: u64,
}

impl Ticker {
    fn new() -> Ticker {
        let now = Instant::now();
        Ticker {
            started: now,
            last: now,
            last_events: 0,
            last_tasks: 0,
            last_pairs: 0,
        }
    }

    fn due(&mut self) -> Option<(f64, f64)> {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt < 1.0 {
            return None;
        }
        self.last = now;
        Some((now.duration_since(self.started).as_secs_f64(), dt))
    }

    /// Modes enqueue and e2e.
    fn queue(&mut self, phase: &str, w: Option<&Writer>, live: Option<&Live>, instances: u64) {
        if w.is_none() && live.is_none() {
            return;
        }
        let Some((at, dt)) = self.due() else {
            return;
        };
        let mut line = format!("[{at:>6.1}s] {phase:<11}");
        if let Some(w) = w {
            let c = &w.counts;
            let rate = c.events_accepted.saturating_sub(self.last_events) as f64 / dt;
            self.last_events = c.events_accepted;
            let cf: u64 = c.connect_failures.values().sum();
            line += &format!(
                " pub {}/{} | accepted {} ev/s (total {}) | req in flight {} p99 {} | failed {}",
                w.open_count(),
                w.connections(),
                human_count(rate),
                human_count(c.events_accepted as f64),
                c.in_flight(),
                p99_text(&c.latency),
                c.failed + cf
            );
        }
        if let Some(l) = live {
            let got = l.received.load(Relaxed);
            let rate = got.saturating_sub(self.last_tasks) as f64 / dt;
            self.last_tasks = got;
            let p99 = l.latency_p99_us.load(Relaxed);
            line += &format!(
                " | inst {}/{instances} | tasks {}/s (total {}, completed {}) p99 {} dup {}",
                l.ready.load(Relaxed) - l.disconnected.load(Relaxed).min(l.ready.load(Relaxed)),
                human_count(rate),
                human_count(got as f64),
                human_count(l.completed.load(Relaxed) as f64),
                if p99 == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2} ms", p99 as f64 / 1000.0)
                },
                l.duplicates.load(Relaxed)
            );
        }
        eprintln!("{line}");
    }

    fn locks(&mut self, phase: &str, l: &Live, conns: u64) {
        let Some((at, dt)) = self.due() else {
            return;
        };
        let pairs = l.pairs.load(Relaxed);
        let rate = pairs.saturating_sub(self.last_pairs) as f64 / dt;
        self.last_pairs = pairs;
        let p99 = l.latency_p99_us.load(Relaxed);
        eprintln!(
            "[{at:>6.1}s] {phase:<11} conns {}/{conns} failed {} | pairs {}/s (total {}) | in flight {} | lock p99 {} | violations {} | errors {}",
            l.ready.load(Relaxed) - l.disconnected.load(Relaxed).min(l.ready.load(Relaxed)),
            l.failed.load(Relaxed),
            human_count(rate),
            human_count(pairs as f64),
            l.lock_inflight.load(Relaxed),
            if p99 == 0 {
                "-".to_string()
            } else {
                format!("{:.2} ms", p99 as f64 / 1000.0)
            },
            l.violations.load(Relaxed),
            l.lock_errors.load(Relaxed)
        );
    }
}

fn p99_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        "-".to_string()
    } else {
        format!("{:.2} ms", h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

fn loop_plan(cfg: &Config, role: Role, count: usize, run_start_us: u64) -> LoopPlan {
    let secret = match &cfg.auth {
        crate::cli::Auth::Secret(s) => s.clone(),
        _ => String::new(),
    };
    LoopPlan {
        ws: cfg.url.clone(),
        options_query: cfg.options_query(),
        secret,
        group: cfg.services.group.clone(),
        token_ttl_secs: 3600 + cfg.duration.as_secs() + cfg.services.drain.as_secs(),
        count,
        role,
        run_start_us,
    }
}

/// Waits until no service connection is being set up (bounded).
fn wait_setup(live: &Live, mut tick: impl FnMut()) {
    let t = Instant::now();
    while !live.connect_done.load(Relaxed) && t.elapsed() < SETUP_TIMEOUT + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        tick();
    }
}

fn join(h: JoinHandle<LoopResult>, ctl: &Control) -> Option<LoopResult> {
    ctl.stop.store(true, Relaxed);
    match h.join() {
        Ok(r) => Some(r),
        Err(_) => {
            eprintln!("loadtest: the service connections' thread panicked");
            None
        }
    }
}

fn describe(failures: &BTreeMap<String, u64>) -> String {
    failures
        .iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs scenario services; returns the exit code.
pub fn run(cfg: &Config) -> i32 {
    let limit = crate::net::raise_nofile_limit();
    let o = &cfg.services;
    let need = cfg.connections + o.instances + 64;
    if need > limit {
        eprintln!("loadtest: {need} sockets needed: this process may open {limit} files");
        return 3;
    }
    match o.mode {
        ServicesMode::Locks => run_locks(cfg),
        ServicesMode::Enqueue | ServicesMode::E2e => run_queue(cfg),
    }
}

/// The publishing side's part of the report.
#[derive(Debug, Clone)]
pub struct PublishPart {
    pub requested: u64,
    pub connected: u64,
    pub pipeline: usize,
    pub batch: usize,
    pub payload: usize,
    /// Events per second asked (0: as fast as the connections allow).
    pub rate: f64,
    /// Events the schedule asked for (`None` in a closed loop).
    pub scheduled: Option<u64>,
    /// From the window's start to the last answer, at least the window.
    pub ack_secs: f64,
    pub counts: Counts,
}

/// The group's queue, read over REST.
#[derive(Debug, Clone, Default)]
pub struct QueuePart {
    /// After the instances subscribed, before the window (`None`: not read or not listed).
    pub before: Option<GroupStats>,
    /// The last reading after the window.
    pub after: Option<GroupStats>,
    /// What could not be read (first few).
    pub errors: Vec<String>,
    /// e2e: `pending + inFlight` reached 0 within `--drain`; enqueue: the queue grew by
    /// the accepted events within `--drain`.
    pub settled: bool,
    /// From the end of the answers to the queue settling (or the deadline).
    pub settle_secs: f64,
}

impl QueuePart {
    /// `pending + inFlight` after minus before (the group unlisted counts as empty).
    pub fn queued(&self) -> Option<i64> {
        let a = self.after?;
        let b = self.before.unwrap_or_default();
        Some(a.queued() as i64 - b.queued() as i64)
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < 5 && !self.errors.contains(&e) {
            eprintln!("loadtest: warning: {e}");
            self.errors.push(e);
        }
    }
}

/// The e2e accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Distinct tasks of the run completed.
    pub completed_of_run: u64,
    /// Distinct tasks completed that were not the run's (queued before it).
    pub outside_run: u64,
    /// Events accepted minus `completed_of_run`.
    pub lost: i64,
    /// How the run's tasks were told apart: by the seq ranges of the answers, or (when
    /// the answers' ranges were missing or odd) by `data.t`.
    pub by_seq: bool,
}

/// The run's tasks among those completed: by seq range when every acknowledged answer
/// had a usable range, else by `data.t` (`ours`).
pub fn loss(counts: &mut Counts, tasks: &TaskStats) -> Loss {
    let by_seq =
        counts.odd_ranges == 0 && !(counts.seq_ranges.is_empty() && counts.events_accepted > 0);
    let completed_of_run = if by_seq {
        let r = &mut counts.seq_ranges;
        tasks.seen.iter().filter(|&&s| r.contains(s)).count() as u64
    } else {
        tasks.ours
    };
    Loss {
        completed_of_run,
        outside_run: (tasks.seen.len() as u64).saturating_sub(completed_of_run),
        lost: counts.events_accepted as i64 - completed_of_run as i64,
        by_seq,
    }
}

fn run_queue(cfg: &Config) -> i32 {
    let o = &cfg.services;
    let e2e = o.mode == ServicesMode::E2e;
    let pids = &cfg.server_pids;
    let api_key = cfg.api_key.clone().unwrap_or_default();
    let run_start_us = unix_nanos() / 1000;
    let mut server = ServerStats {
        rss_before: procstat::sample(pids).map(|s| s.rss_bytes),
        ..ServerStats::default()
    };
    let mut ticker = Ticker::new();

    // the group's subscription: the instances, or one that subscribes and leaves
    let count = (o.instances as usize).max(1);
    let role = Role::Instances { complete: e2e };
    let (h, live, ctl) = match spawn(loop_plan(cfg, role, count, run_start_us)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadtest: cannot start the service connections: {e}");
            return 3;
        }
    };
    wait_setup(&live, || {
        ticker.queue("subscribing", None, Some(&live), count as u64)
    });
    let ready = live.ready.load(Relaxed);
    let mut side = Some((h, live, ctl));
    if ready == 0 || o.instances == 0 {
        let (h, _, ctl) = side.take().expect("started");
        let r = join(h, &ctl);
        if ready == 0 {
            let why = r.map(|r| describe(&r.failures)).unwrap_or_default();
            eprintln!(
                "loadtest: no service instance could subscribe to group {:?}: {why}",
                o.group
            );
            return 3;
        }
        eprintln!(
            "loadtest: group {:?}: the durable subscription exists (a setup instance subscribed and left)",
            o.group
        );
    } else {
        eprintln!(
            "loadtest: {ready} of {} instances of group {:?} subscribed in {:.1}s",
            o.instances,
            o.group,
            ticker.started.elapsed().as_secs_f64()
        );
    }
    let live = side.as_ref().map(|(_, l, _)| Arc::clone(l));

    let mut queue = QueuePart::default();
    match group_stats(&cfg.http, &api_key, &o.group) {
        Ok(s) => queue.before = s,
        Err(e) => queue.error(e),
    }
    if let Some(b) = queue.before.filter(|b| b.queued() > 0) {
        eprintln!(
            "loadtest: warning: group {:?} already holds {} tasks (pending {}, inFlight {}); the queue checks count from there, a fresh --group gives clean numbers",
            o.group,
            b.queued(),
            b.pending,
            b.in_flight
        );
    }

    // the publishers
    let plan = Plan {
        http: cfg.http.clone(),
        api_key: api_key.clone(),
        connections: cfg.connections as usize,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        payload: cfg.payload,
        requests: Requests::Publish(PublishBatches {
            batch: o.batch,
            payload: cfg.payload,
        }),
    };
    let mut w = match Writer::new(plan) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("loadtest: cannot create an event loop: {e}");
            if let Some((h, _, ctl)) = side {
                join(h, &ctl);
            }
            return 3;
        }
    };
    let t = Instant::now();
    w.open_all();
    while w.connecting() > 0 && t.elapsed() < entities::CONNECT_TIMEOUT + Duration::from_secs(1) {
        w.turn(Duration::from_millis(20));
        ticker.queue("connecting", Some(&w), live.as_deref(), o.instances);
    }
    let connected = w.open_count();

    // the window
    server.rss_connected = procstat::sample(pids).map(|s| s.rss_bytes);
    let window_start = procstat::sample(pids);
    server.rss_window_start = window_start.map(|s| s.rss_bytes);
    let t0 = Instant::now();
    let window = if connected > 0 {
        cfg.duration
    } else {
        Duration::ZERO
    };
    // the writer paces requests: rate / batch of them per second
    w.window_opens(t0, cfg.rate / o.batch as f64, window);
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= window {
            break;
        }
        w.turn(Duration::from_millis(50).min(window - elapsed));
        ticker.queue("publishing", Some(&w), live.as_deref(), o.instances);
    }
    let window_secs = t0.elapsed().as_secs_f64();
    w.window_ends();
    server.rss_window_end = procstat::sample(pids).map(|s| s.rss_bytes);
    let d0 = Instant::now();
    while w.counts.in_flight() > 0
        && d0.elapsed() < entities::ANSWER_TIMEOUT + Duration::from_secs(1)
    {
        w.turn(Duration::from_millis(20));
        ticker.queue("answers", Some(&w), live.as_deref(), o.instances);
    }
    w.close_all("no answer by the end of the run");
    let accepted = w.counts.events_accepted;

    // the queue: e2e until it is empty, enqueue until it holds what was accepted
    let s0 = Instant::now();
    let mut last_read: Option<Instant> = None;
    loop {
        if last_read.is_none_or(|l| l.elapsed() >= STATS_EVERY) {
            last_read = Some(Instant::now());
            match group_stats(&cfg.http, &api_key, &o.group) {
                Ok(s) => queue.after = s.or(Some(GroupStats::default())),
                Err(e) => queue.error(e),
            }
            let ours = live.as_ref().map_or(0, |l| l.ours.load(Relaxed));
            queue.settled = match (e2e, queue.after, queue.queued()) {
                (true, Some(a), _) => {
                    let unacked = live.as_ref().map_or(0, |l| {
                        l.received
                            .load(Relaxed)
                            .saturating_sub(l.completed.load(Relaxed))
                    });
                    a.queued() == 0 && unacked == 0
                }
                (true, None, _) => ours >= accepted,
                (false, _, Some(q)) => q >= accepted as i64,
                (false, _, None) => false,
            };
            if queue.settled {
                break;
            }
        }
        if s0.elapsed() >= o.drain {
            eprintln!(
                "loadtest: the queue did not settle within --drain {:.0}s",
                o.drain.as_secs_f64()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        ticker.queue(
            if e2e { "draining" } else { "queue" },
            None,
            live.as_deref(),
            o.instances,
        );
    }
    queue.settle_secs = s0.elapsed().as_secs_f64();
    let cpu_end = procstat::sample(pids);
    if let (Some(a), Some(b)) = (window_start, cpu_end) {
        server.cpu_seconds = Some((b.cpu_seconds - a.cpu_seconds).max(0.0));
    }
    let side_res = match side {
        Some((h, _, ctl)) => join(h, &ctl),
        None => None,
    };

    let mut counts = w.counts.clone();
    let ack_secs = counts
        .last_ack
        .map_or(0.0, |l| l.saturating_duration_since(t0).as_secs_f64())
        .max(window_secs);
    let instances = side_res.unwrap_or_else(|| LoopResult {
        requested: o.instances,
        ready: 0,
        failed: 0,
        failures: BTreeMap::new(),
        disconnected: 0,
        disconnects: BTreeMap::new(),
        server_errors: BTreeMap::new(),
        tasks: TaskStats::new(0),
        locks: None,
    });
    let loss = e2e.then(|| loss(&mut counts, &instances.tasks));
    let task_secs = instances
        .tasks
        .last
        .map_or(0.0, |l| l.saturating_duration_since(t0).as_secs_f64())
        .max(window_secs);
    let report = ServicesReport {
        mode: o.mode,
        group: o.group.clone(),
        options: options_json(cfg),
        window_secs,
        task_secs,
        side: instances,
        publish: Some(PublishPart {
            requested: cfg.connections,
            connected: connected as u64,
            pipeline: cfg.pipeline,
            batch: o.batch,
            payload: cfg.payload,
            rate: cfg.rate,
            scheduled: (cfg.rate > 0.0)
                .then(|| entities::scheduled(cfg.rate / o.batch as f64, window) * o.batch as u64),
            ack_secs,
            counts,
        }),
        queue: Some(queue),
        loss,
        locks_cfg: None,
        server,
        loadtest_cpu_seconds: procstat::self_cpu_seconds(),
    };
    finish(cfg, &report)
}

fn run_locks(cfg: &Config) -> i32 {
    let o = &cfg.services;
    let pids = &cfg.server_pids;
    let mut server = ServerStats {
        rss_before: procstat::sample(pids).map(|s| s.rss_bytes),
        ..ServerStats::default()
    };
    let lp = LockPlan {
        pipeline: cfg.pipeline,
        names: o.names,
        shared: o.shared_names,
        ttl_ms: o.ttl_ms,
        wait_ms: o.wait_ms,
    };
    let n = cfg.connections as usize;
    let mut ticker = Ticker::new();
    let (h, live, ctl) = match spawn(loop_plan(cfg, Role::Lockers(lp), n, unix_nanos() / 1000)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadtest: cannot start the service connections: {e}");
            return 3;
        }
    };
    wait_setup(&live, || ticker.locks("connecting", &live, n as u64));
    let ready = live.ready.load(Relaxed);
    eprintln!(
        "loadtest: {ready} of {n} service connections of group {:?} authenticated in {:.1}s",
        o.group,
        ticker.started.elapsed().as_secs_f64()
    );
    if ready == 0 {
        let why = join(h, &ctl)
            .map(|r| describe(&r.failures))
            .unwrap_or_default();
        eprintln!("loadtest: no service connection could be opened: {why}");
        return 3;
    }
    server.rss_connected = procstat::sample(pids).map(|s| s.rss_bytes);
    let window_start = procstat::sample(pids);
    server.rss_window_start = window_start.map(|s| s.rss_bytes);
    let t0 = Instant::now();
    ctl.window_open.store(true, Relaxed);
    while t0.elapsed() < cfg.duration {
        std::thread::sleep(
            Duration::from_millis(20).min(cfg.duration.saturating_sub(t0.elapsed())),
        );
        ticker.locks("locking", &live, n as u64);
    }
    ctl.window_over.store(true, Relaxed);
    let window_secs = t0.elapsed().as_secs_f64();
    server.rss_window_end = procstat::sample(pids).map(|s| s.rss_bytes);
    // the requests in flight (waits included)
    let d0 = Instant::now();
    let limit = Duration::from_millis(o.wait_ms) + LOCK_ANSWER_SLACK + Duration::from_secs(1);
    std::thread::sleep(Duration::from_millis(150));
    while live.lock_inflight.load(Relaxed) > 0 && d0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
        ticker.locks("unlocking", &live, n as u64);
    }
    let cpu_end = procstat::sample(pids);
    if let (Some(a), Some(b)) = (window_start, cpu_end) {
        server.cpu_seconds = Some((b.cpu_seconds - a.cpu_seconds).max(0.0));
    }
    let Some(side) = join(h, &ctl) else {
        return 3;
    };
    let report = ServicesReport {
        mode: o.mode,
        group: o.group.clone(),
        options: options_json(cfg),
        window_secs,
        task_secs: window_secs,
        side,
        publish: None,
        queue: None,
        loss: None,
        locks_cfg: Some(lp),
        server,
        loadtest_cpu_seconds: procstat::self_cpu_seconds(),
    };
    finish(cfg, &report)
}

/// The connection options sent (only those given: for the others the server's defaults
/// apply, which the harness does not know).
fn options_json(cfg: &Config) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(v) = cfg.batch_ms {
        o.insert("batchMs".into(), v.into());
    }
    if let Some(v) = cfg.batch_max {
        o.insert("batchMax".into(), v.into());
    }
    if let Some(f) = cfg.framing {
        o.insert("framing".into(), f.as_str().into());
    }
    Value::Object(o)
}

fn finish(cfg: &Config, report: &ServicesReport) -> i32 {
    let _ = report.print_table(&mut io::stderr().lock());
    if let Some(path) = &cfg.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("loadtest: --json {}: {e}", path.display());
            return 3;
        }
    }
    if report.healthy() {
        0
    } else {
        1
    }
}

/// The result of a services run.
#[derive(Debug, Clone)]
pub struct ServicesReport {
    pub mode: ServicesMode,
    pub group: String,
    /// The connection options sent (`batchMs`, `batchMax`, `framing`; only those given).
    pub options: Value,
    pub window_secs: f64,
    /// From the window's start to the last task read, at least the window.
    pub task_secs: f64,
    /// The service connections (instances or lockers).
    pub side: LoopResult,
    /// Modes enqueue and e2e.
    pub publish: Option<PublishPart>,
    pub queue: Option<QueuePart>,
    /// Mode e2e.
    pub loss: Option<Loss>,
    /// Mode locks.
    pub locks_cfg: Option<LockPlan>,
    pub server: ServerStats,
    pub loadtest_cpu_seconds: f64,
}

/// Key order of the report file (every object's keys are written in this order; a key
/// not listed goes last).
const ORDER: &[&str] = &[
    "scenario",
    "target",
    "mode",
    "group",
    "window_secs",
    "connection_options",
    "batchMs",
    "batchMax",
    "framing",
    "pending",
    "inFlight",
    "dead",
    "instances",
    "connections",
    "requested",
    "ready",
    "connected",
    "failed",
    "disconnected",
    "publish",
    "pipeline",
    "batch",
    "payload",
    "rate_asked",
    "scheduled_events",
    "requests_sent",
    "requests_acknowledged",
    "requests_failed",
    "events_sent",
    "events_accepted",
    "events_per_sec",
    "tasks",
    "received",
    "distinct",
    "completed",
    "ack_messages",
    "tasks_per_sec",
    "completed_of_run",
    "outside_run",
    "lost",
    "lost_by",
    "duplicates",
    "redelivered",
    "foreign",
    "unkeyed",
    "queue",
    "before",
    "after",
    "queued",
    "matches_accepted",
    "settled",
    "settle_secs",
    "locks",
    "names",
    "shared_names",
    "wait_ms",
    "ttl_ms",
    "lock_requests",
    "granted",
    "not_acquired",
    "unlock_requests",
    "released",
    "not_released",
    "pairs_per_sec",
    "fencing_regressions",
    "overlaps",
    "grants_after_expiry",
    "violation_samples",
    "latency_ms",
    "lock_latency_ms",
    "unlock_latency_ms",
    "p50",
    "p90",
    "p99",
    "p999",
    "min",
    "max",
    "per_instance",
    "per_connection",
    "fairness",
    "mean",
    "max_over_mean",
    "jain",
    "errors",
    "failures",
    "failure_samples",
    "connect_failures",
    "reconnects",
    "odd_seq_ranges",
    "disconnects",
    "server_errors",
    "server",
    "cpu_seconds",
    "rss_bytes",
    "cpu_us_per_event",
    "cpu_us_per_pair",
    "loadtest_cpu_seconds",
];

/// `v` as text with keys in [`ORDER`]; objects above depth `expand` one key per line.
fn ordered(v: &Value, depth: usize, expand: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by_key(|k| (ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX), *k));
            let pad = |d: usize| "  ".repeat(d);
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if depth < expand {
                    out.push('\n');
                    out.push_str(&pad(depth + 1));
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push_str(if depth < expand { ": " } else { ":" });
                ordered(&m[*k], depth + 1, expand, out);
            }
            if depth < expand {
                out.push('\n');
                out.push_str(&pad(depth));
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ordered(x, expand, expand, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
    json!({
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
    })
}

fn fairness_json(f: Option<Fairness>) -> Value {
    match f {
        None => Value::Null,
        Some(f) => json!({
            "min": f.min,
            "max": f.max,
            "mean": round2(f.mean),
            "max_over_mean": f.max_over_mean.map(|v| (v * 1000.0).round() / 1000.0),
            "jain": f.jain.map(|v| (v * 10000.0).round() / 10000.0),
        }),
    }
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl ServicesReport {
    pub fn events_per_sec(&self) -> Option<f64> {
        let p = self.publish.as_ref()?;
        Some(per_sec(p.counts.events_accepted, p.ack_secs))
    }

    /// e2e: tasks completed per second, from the window's start to the last task read
    /// (at least the window).
    pub fn tasks_per_sec(&self) -> f64 {
        per_sec(self.side.tasks.completed, self.task_secs)
    }

    pub fn pairs_per_sec(&self) -> Option<f64> {
        let l = self.side.locks.as_ref()?;
        Some(per_sec(l.released, self.window_secs))
    }

    /// Server CPU µs per accepted event (enqueue, e2e) or per lock/unlock pair (locks).
    pub fn cpu_us_per_unit(&self) -> Option<f64> {
        let c = self.server.cpu_seconds?;
        let n = match (&self.publish, &self.side.locks) {
            (Some(p), _) => p.counts.events_accepted,
            (None, Some(l)) => l.released,
            (None, None) => 0,
        };
        (n > 0).then(|| c * 1e6 / n as f64)
    }

    /// Healthy: every connection set up and none lost, nothing failed; enqueue: the
    /// queue grew by what was accepted; e2e: nothing lost, nothing duplicated, the queue
    /// drained; locks: no violation, no error, pairs completed.
    pub fn healthy(&self) -> bool {
        let s = &self.side;
        let mut ok = s.failed == 0 && s.disconnected == 0 && s.ready == s.requested;
        if let Some(p) = &self.publish {
            let c = &p.counts;
            ok &= c.failed == 0
                && c.connect_failures.is_empty()
                && p.connected == p.requested
                && (c.acknowledged > 0 || c.sent == 0);
        }
        match self.mode {
            ServicesMode::Enqueue => {
                let accepted = self
                    .publish
                    .as_ref()
                    .map_or(0, |p| p.counts.events_accepted);
                ok &= self
                    .queue
                    .as_ref()
                    .and_then(QueuePart::queued)
                    .is_some_and(|q| q == accepted as i64);
            }
            ServicesMode::E2e => {
                ok &= self.loss.is_some_and(|l| l.lost == 0)
                    && s.tasks.duplicates == 0
                    && self.queue.as_ref().is_some_and(|q| q.settled);
            }
            ServicesMode::Locks => {
                ok &= s.locks.as_ref().is_some_and(|l| {
                    l.book.violations() == 0
                        && l.errors.is_empty()
                        && l.not_released == 0
                        && l.released > 0
                });
            }
        }
        ok
    }

    pub fn to_json(&self) -> Value {
        let s = &self.side;
        let side = json!({
            "requested": s.requested,
            "ready": s.ready,
            "failed": s.failed,
            "disconnected": s.disconnected,
            "failures": s.failures,
            "disconnects": s.disconnects,
            "server_errors": s.server_errors,
        });
        let (instances, connections) = if self.mode == ServicesMode::Locks {
            (Value::Null, side)
        } else {
            (side, Value::Null)
        };
        let publish = self.publish.as_ref().map_or(Value::Null, |p| {
            let c = &p.counts;
            json!({
                "connections": p.requested,
                "connected": p.connected,
                "pipeline": p.pipeline,
                "batch": p.batch,
                "payload": p.payload,
                "rate_asked": p.rate,
                "scheduled_events": p.scheduled,
                "requests_sent": c.sent,
                "requests_acknowledged": c.acknowledged,
                "requests_failed": c.failed,
                "events_sent": c.sent * p.batch as u64,
                "events_accepted": c.events_accepted,
                "events_per_sec": round2(per_sec(c.events_accepted, p.ack_secs)),
                "latency_ms": latency_json(&c.latency),
                "failures": c.failures,
                "failure_samples": c.samples,
                "connect_failures": c.connect_failures,
                "reconnects": c.reconnects,
                "odd_seq_ranges": c.odd_ranges,
            })
        });
        let tasks = if self.mode == ServicesMode::Locks {
            Value::Null
        } else {
            let t = &s.tasks;
            let l = self.loss;
            json!({
                "received": t.received,
                "distinct": t.seen.len(),
                "completed": t.completed,
                "ack_messages": t.ack_messages,
                "tasks_per_sec": round2(self.tasks_per_sec()),
                "completed_of_run": l.map(|l| l.completed_of_run),
                "outside_run": l.map(|l| l.outside_run),
                "lost": l.map(|l| l.lost),
                "lost_by": l.map(|l| if l.by_seq { "seq ranges" } else { "data.t" }),
                "duplicates": t.duplicates,
                "redelivered": t.redelivered,
                "foreign": t.foreign,
                "unkeyed": t.unkeyed,
                "latency_ms": latency_json(&t.latency),
                "per_instance": t.per_instance,
                "fairness": fairness_json(fairness(&t.per_instance)),
            })
        };
        let queue = self.queue.as_ref().map_or(Value::Null, |q| {
            let accepted = self
                .publish
                .as_ref()
                .map_or(0, |p| p.counts.events_accepted);
            json!({
                "before": q.before.map(|g| g.to_json()),
                "after": q.after.map(|g| g.to_json()),
                "queued": q.queued(),
                "matches_accepted": q
                    .queued()
                    .filter(|_| self.mode == ServicesMode::Enqueue)
                    .map(|n| n == accepted as i64),
                "settled": q.settled,
                "settle_secs": round3(q.settle_secs),
                "errors": q.errors,
            })
        });
        let locks = match (&s.locks, &self.locks_cfg) {
            (Some(l), Some(c)) => json!({
                "names": if c.shared.is_some() { Value::Null } else { c.names.into() },
                "shared_names": c.shared,
                "wait_ms": c.wait_ms,
                "ttl_ms": c.ttl_ms,
                "pipeline": c.pipeline,
                "lock_requests": l.lock_requests,
                "granted": l.granted,
                "not_acquired": l.not_acquired,
                "unlock_requests": l.unlock_requests,
                "released": l.released,
                "not_released": l.not_released,
                "pairs_per_sec": round2(per_sec(l.released, self.window_secs)),
                "fencing_regressions": l.book.token_regressions,
                "overlaps": l.book.overlaps,
                "grants_after_expiry": l.book.after_expiry,
                "violation_samples": l.book.samples,
                "lock_latency_ms": latency_json(&l.lock_latency),
                "unlock_latency_ms": latency_json(&l.unlock_latency),
                "per_connection": l.per_connection,
                "fairness": fairness_json(fairness(&l.per_connection)),
                "errors": l.errors,
            }),
            _ => Value::Null,
        };
        let per_unit = self.cpu_us_per_unit().map(round2);
        let locks_mode = self.mode == ServicesMode::Locks;
        json!({
            "scenario": "services",
            "target": "shardcast",
            "mode": self.mode.as_str(),
            "group": self.group,
            "window_secs": round3(self.window_secs),
            "connection_options": self.options,
            "instances": instances,
            "connections": connections,
            "publish": publish,
            "tasks": tasks,
            "queue": queue,
            "locks": locks,
            "server": {
                "cpu_seconds": self.server.cpu_seconds.map(round3),
                "rss_bytes": self.server.rss_window_end.or(self.server.rss_connected),
                "cpu_us_per_event": if locks_mode { None } else { per_unit },
                "cpu_us_per_pair": if locks_mode { per_unit } else { None },
            },
            "loadtest_cpu_seconds": round3(self.loadtest_cpu_seconds),
        })
    }

    /// The report file's text: keys in [`ORDER`], two levels one key per line.
    pub fn to_json_string(&self) -> String {
        let mut s = String::new();
        ordered(&self.to_json(), 0, 2, &mut s);
        s.push('\n');
        s
    }

    pub fn write_json(&self, path: &std::path::Path) -> io::Result<()> {
        let text = self.to_json_string();
        if path.as_os_str() == "-" {
            io::stdout().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        }
    }

    pub fn print_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let s = &self.side;
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", h.value_at_quantile(q) as f64 / 1000.0)
            }
        };
        let lat = |out: &mut dyn Write, what: &str, h: &Histogram<u64>| -> io::Result<()> {
            row(
                out,
                &format!("{what} ms p50/p90/p99"),
                format!("{} / {} / {}", ms(h, 0.5), ms(h, 0.9), ms(h, 0.99)),
            )?;
            let max = if h.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3}", h.max() as f64 / 1000.0)
            };
            row(
                out,
                &format!("{what} ms p99.9/max"),
                format!("{} / {max}", ms(h, 0.999)),
            )
        };
        writeln!(out)?;
        writeln!(
            out,
            "loadtest services --mode {} against shardcast (group {:?})",
            self.mode.as_str(),
            self.group
        )?;
        let what = if self.mode == ServicesMode::Locks {
            "service connections"
        } else {
            "instances"
        };
        let setup_only = self.mode == ServicesMode::Enqueue && s.requested == 0;
        row(
            out,
            what,
            if setup_only {
                "none in the window (one subscribed and left before it)".to_string()
            } else {
                format!(
                    "{} ready of {} ({} failed, {} disconnected), options {}",
                    s.ready, s.requested, s.failed, s.disconnected, self.options
                )
            },
        )?;
        if let Some(p) = &self.publish {
            let c = &p.counts;
            let cf: u64 = c.connect_failures.values().sum();
            row(
                out,
                "publishers",
                format!(
                    "{} open of {} ({cf} connect failures, {} reconnects), pipeline {}, {} events per request of {} B data",
                    p.connected, p.requested, c.reconnects, p.pipeline, p.batch, p.payload
                ),
            )?;
            let asked = match p.scheduled {
                Some(n) => format!("asked {:.1} events/s: {n} scheduled", p.rate),
                None => "asked: as fast as the connections allow".to_string(),
            };
            row(
                out,
                "publish requests",
                format!(
                    "{} sent in {:.1}s ({asked}), {} acknowledged, {} failed",
                    c.sent, self.window_secs, c.acknowledged, c.failed
                ),
            )?;
            row(
                out,
                "events accepted",
                format!(
                    "{} ({}/s over {:.2}s)",
                    c.events_accepted,
                    human_count(per_sec(c.events_accepted, p.ack_secs)),
                    p.ack_secs
                ),
            )?;
            lat(out, "publish", &c.latency)?;
            for (kind, n) in &c.failures {
                row(out, "publish failure", format!("{n} x {kind}"))?;
            }
            for sample in &c.samples {
                row(out, "failure sample", sample.clone())?;
            }
            for (why, n) in &c.connect_failures {
                row(out, "publisher connect failure", format!("{n} x {why}"))?;
            }
        }
        if let Some(q) = &self.queue {
            let g = |x: Option<GroupStats>| {
                x.map_or("-".to_string(), |g| {
                    format!(
                        "pending {} inFlight {} dead {} instances {}",
                        g.pending, g.in_flight, g.dead, g.instances
                    )
                })
            };
            row(out, "queue before", g(q.before))?;
            row(out, "queue after", g(q.after))?;
            let accepted = self
                .publish
                .as_ref()
                .map_or(0, |p| p.counts.events_accepted);
            row(
                out,
                "queued (after - before)",
                match q.queued() {
                    Some(n) if self.mode == ServicesMode::Enqueue => format!(
                        "{n} ({} the {accepted} accepted){}",
                        if n == accepted as i64 {
                            "equals"
                        } else {
                            "DIFFERS FROM"
                        },
                        if q.settled {
                            String::new()
                        } else {
                            format!(", unsettled after {:.1}s", q.settle_secs)
                        }
                    ),
                    Some(n) => format!(
                        "{n}; drained: {} after {:.1}s",
                        if q.settled { "yes" } else { "NO" },
                        q.settle_secs
                    ),
                    None => "-".to_string(),
                },
            )?;
            for e in &q.errors {
                row(out, "queue read error", e.clone())?;
            }
        }
        if self.mode != ServicesMode::Locks && !setup_only {
            let t = &s.tasks;
            row(
                out,
                "tasks received",
                format!(
                    "{} ({} distinct, {} redelivered, {} duplicates, {} not the run's)",
                    t.received,
                    t.seen.len(),
                    t.redelivered,
                    t.duplicates,
                    t.foreign
                ),
            )?;
            if self.mode == ServicesMode::E2e {
                row(
                    out,
                    "tasks completed",
                    format!(
                        "{} in {} messages ({}/s)",
                        t.completed,
                        t.ack_messages,
                        human_count(self.tasks_per_sec())
                    ),
                )?;
                if let Some(l) = self.loss {
                    row(
                        out,
                        "lost",
                        format!(
                            "{} (accepted - {} of the run completed, by {}; {} others completed)",
                            l.lost,
                            l.completed_of_run,
                            if l.by_seq { "seq range" } else { "data.t" },
                            l.outside_run
                        ),
                    )?;
                }
                lat(out, "task latency", &t.latency)?;
            }
            if let Some(f) = fairness(&t.per_instance) {
                row(
                    out,
                    "tasks per instance",
                    format!(
                        "min {} max {} mean {:.1}, max/mean {}, Jain {}",
                        f.min,
                        f.max,
                        f.mean,
                        f.max_over_mean.map_or("-".into(), |v| format!("{v:.3}")),
                        f.jain.map_or("-".into(), |v| format!("{v:.4}"))
                    ),
                )?;
            }
        }
        if let (Some(l), Some(c)) = (&s.locks, &self.locks_cfg) {
            let names = match c.shared {
                Some(k) => format!("{k} shared names"),
                None => format!("{} names per connection", c.names),
            };
            row(
                out,
                "locks",
                format!(
                    "{names}, ttlMs {}, waitMs {}, pipeline {}",
                    c.ttl_ms, c.wait_ms, c.pipeline
                ),
            )?;
            row(
                out,
                "lock requests",
                format!(
                    "{} ({} granted, {} not acquired)",
                    l.lock_requests, l.granted, l.not_acquired
                ),
            )?;
            row(
                out,
                "unlock requests",
                format!(
                    "{} ({} released, {} not released)",
                    l.unlock_requests, l.released, l.not_released
                ),
            )?;
            row(
                out,
                "pairs/s",
                format!(
                    "{} (over {:.2}s)",
                    human_count(per_sec(l.released, self.window_secs)),
                    self.window_secs
                ),
            )?;
            lat(out, "lock", &l.lock_latency)?;
            lat(out, "unlock", &l.unlock_latency)?;
            row(
                out,
                "violations",
                format!(
                    "{} fencing token regressions, {} overlapping grants ({} grants after a lease ran out)",
                    l.book.token_regressions, l.book.overlaps, l.book.after_expiry
                ),
            )?;
            for v in &l.book.samples {
                row(out, "violation", v.clone())?;
            }
            for (kind, n) in &l.errors {
                row(out, "lock error", format!("{n} x {kind}"))?;
            }
        }
        let sv = &self.server;
        row(
            out,
            "server cpu (window+drain)",
            sv.cpu_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
        )?;
        row(
            out,
            if self.mode == ServicesMode::Locks {
                "server cpu per pair"
            } else {
                "server cpu per event"
            },
            self.cpu_us_per_unit()
                .map_or("-".into(), |us| format!("{us:.1} us")),
        )?;
        let b = |v: Option<u64>| v.map_or("-".to_string(), |v| human_bytes(v as f64));
        row(
            out,
            "server rss before/end",
            format!("{} / {}", b(sv.rss_before), b(sv.rss_window_end)),
        )?;
        row(
            out,
            "loadtest cpu",
            format!("{:.2} s", self.loadtest_cpu_seconds),
        )?;
        for (why, n) in &s.failures {
            row(out, "connection failure", format!("{n} x {why}"))?;
        }
        for (why, n) in &s.disconnects {
            row(out, "disconnect", format!("{n} x {why}"))?;
        }
        for (code, n) in &s.server_errors {
            row(out, "server message", format!("{n} x {code}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(seqs: &[u64], ours: u64) -> TaskStats {
        let mut t = TaskStats::new(2);
        t.seen.extend(seqs.iter().copied());
        t.ours = ours;
        t.received = seqs.len() as u64;
        t.completed = seqs.len() as u64;
        t.per_instance = vec![
            seqs.len() as u64 / 2,
            seqs.len() as u64 - seqs.len() as u64 / 2,
        ];
        t
    }

    #[test]
    fn loss_by_seq_ranges_and_by_t() {
        let mut c = Counts {
            publish: true,
            events_accepted: 6,
            ..Counts::default()
        };
        c.seq_ranges.add(10, 12);
        c.seq_ranges.add(20, 22);
        // 5 of the run's 6 completed, and 2 left over from before the run
        let t = tasks(&[1, 2, 10, 11, 12, 20, 22], 5);
        let l = loss(&mut c, &t);
        assert_eq!(
            l,
            Loss {
                completed_of_run: 5,
                outside_run: 2,
                lost: 1,
                by_seq: true
            }
        );
        // an answer without a usable range: by data.t instead
        c.odd_ranges = 1;
        let l = loss(&mut c, &t);
        assert_eq!((l.completed_of_run, l.lost, l.by_seq), (5, 1, false));
    }

    #[test]
    fn seq_set_hashes() {
        let mut s = SeqSet::default();
        for i in 0..10_000u64 {
            assert!(s.insert(i * 3));
        }
        assert!(!s.insert(9));
        assert_eq!(s.len(), 10_000);
    }

    #[test]
    fn lock_slots() {
        let own = LockPlan {
            pipeline: 1,
            names: 2,
            shared: None,
            ttl_ms: 1,
            wait_ms: 0,
        };
        assert_eq!(own.total_names(3), 6);
        assert_eq!(
            own.slots_of(1),
            vec![(2, "load-c1-n0".to_string()), (3, "load-c1-n1".to_string())]
        );
        let shared = LockPlan {
            shared: Some(3),
            ..own
        };
        assert_eq!(shared.total_names(10), 3);
        let idx: Vec<usize> = shared.slots_of(4).into_iter().map(|(i, _)| i).collect();
        assert_eq!(idx, vec![1, 2, 0]);
        assert_eq!(shared.slots_of(0)[0].1, "load-shared-0");
    }

    fn side(n: u64) -> LoopResult {
        LoopResult {
            requested: n,
            ready: n,
            failed: 0,
            failures: BTreeMap::new(),
            disconnected: 0,
            disconnects: BTreeMap::new(),
            server_errors: BTreeMap::new(),
            tasks: TaskStats::new(n as usize),
            locks: None,
        }
    }

    fn e2e_report() -> ServicesReport {
        let mut counts = Counts {
            publish: true,
            sent: 3,
            acknowledged: 3,
            events_accepted: 300,
            ..Counts::default()
        };
        counts.latency.record(2000).unwrap();
        let mut s = side(2);
        s.tasks = tasks(&(1..=300).collect::<Vec<_>>(), 300);
        s.tasks.latency.record(5000).unwrap();
        counts.seq_ranges.add(1, 300);
        let loss = loss(&mut counts, &s.tasks);
        ServicesReport {
            mode: ServicesMode::E2e,
            group: "g".into(),
            options: json!({"batchMs": 0, "batchMax": 1000, "framing": "frames"}),
            window_secs: 2.0,
            task_secs: 2.0,
            side: s,
            publish: Some(PublishPart {
                requested: 1,
                connected: 1,
                pipeline: 1,
                batch: 100,
                payload: 64,
                rate: 0.0,
                scheduled: None,
                ack_secs: 2.0,
                counts,
            }),
            queue: Some(QueuePart {
                before: Some(GroupStats::default()),
                after: Some(GroupStats {
                    instances: 2,
                    ..GroupStats::default()
                }),
                errors: Vec::new(),
                settled: true,
                settle_secs: 0.2,
            }),
            loss: Some(loss),
            locks_cfg: None,
            server: ServerStats {
                cpu_seconds: Some(0.3),
                ..ServerStats::default()
            },
            loadtest_cpu_seconds: 0.1,
        }
    }

    #[test]
    fn e2e_report_json_and_health() {
        let r = e2e_report();
        let text = r.to_json_string();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, r.to_json());
        // keys in ORDER at every level
        let mut last = 0;
        for k in [
            "\"scenario\"",
            "\"mode\"",
            "\"instances\"",
            "\"publish\"",
            "\"tasks\"",
            "\"queue\"",
            "\"locks\"",
            "\"server\"",
        ] {
            let at = text.find(k).unwrap();
            assert!(at >= last, "{k} out of order");
            last = at;
        }
        assert!(
            text.contains(r#""latency_ms": {"p50":2.0,"p90":2.0"#),
            "{text}"
        );
        assert_eq!(v["publish"]["events_per_sec"], 150.0);
        assert_eq!(v["publish"]["events_sent"], 300);
        assert_eq!(v["tasks"]["lost"], 0);
        assert_eq!(v["tasks"]["lost_by"], "seq ranges");
        assert_eq!(v["tasks"]["tasks_per_sec"], 150.0);
        assert_eq!(v["tasks"]["fairness"]["jain"], 1.0);
        assert_eq!(v["queue"]["queued"], 0);
        assert_eq!(v["locks"], Value::Null);
        assert_eq!(v["connections"], Value::Null);
        assert_eq!(v["server"]["cpu_us_per_event"], 1000.0);
        assert!(r.healthy());
        let mut buf = Vec::new();
        r.print_table(&mut buf).unwrap();
        let t = String::from_utf8(buf).unwrap();
        assert!(t.contains("tasks per instance"), "{t}");
        let mut bad = e2e_report();
        bad.side.tasks.duplicates = 1;
        assert!(!bad.healthy());
        let mut bad = e2e_report();
        bad.loss = Some(Loss {
            lost: 2,
            ..bad.loss.unwrap()
        });
        assert!(!bad.healthy());
        let mut bad = e2e_report();
        bad.queue.as_mut().unwrap().settled = false;
        assert!(!bad.healthy());
    }

    #[test]
    fn enqueue_and_locks_health() {
        let mut r = e2e_report();
        r.mode = ServicesMode::Enqueue;
        r.loss = None;
        r.queue.as_mut().unwrap().after = Some(GroupStats {
            pending: 250,
            in_flight: 50,
            ..GroupStats::default()
        });
        assert!(r.healthy());
        assert_eq!(r.to_json()["queue"]["matches_accepted"], true);
        r.queue.as_mut().unwrap().after = Some(GroupStats {
            pending: 299,
            ..GroupStats::default()
        });
        assert!(!r.healthy());
        assert_eq!(r.to_json()["tasks"]["lost"], Value::Null);

        let lp = LockPlan {
            pipeline: 1,
            names: 1,
            shared: Some(2),
            ttl_ms: 10_000,
            wait_ms: 5000,
        };
        let mut s = side(2);
        let mut l = LockStats::new(2, 2);
        l.lock_requests = 10;
        l.granted = 10;
        l.unlock_requests = 10;
        l.released = 10;
        l.per_connection = vec![6, 4];
        s.locks = Some(l);
        let mut r = ServicesReport {
            mode: ServicesMode::Locks,
            group: "g".into(),
            options: json!({}),
            window_secs: 2.0,
            task_secs: 2.0,
            side: s,
            publish: None,
            queue: None,
            loss: None,
            locks_cfg: Some(lp),
            server: ServerStats::default(),
            loadtest_cpu_seconds: 0.0,
        };
        assert!(r.healthy());
        let v = r.to_json();
        assert_eq!(v["locks"]["pairs_per_sec"], 5.0);
        assert_eq!(v["locks"]["shared_names"], 2);
        assert_eq!(v["locks"]["names"], Value::Null);
        assert_eq!(v["tasks"], Value::Null);
        assert_eq!(v["connections"]["ready"], 2);
        assert_eq!(v["server"]["cpu_us_per_pair"], Value::Null);
        r.side.locks.as_mut().unwrap().book.overlaps = 1;
        assert!(!r.healthy());
    }
}
