//! Client connections and the per-thread `mio` event loop that drives them.
//!
//! Each thread owns a share of the process's connections (local index `l` with
//! `l % threads == thread`), opens them at a bounded concurrency, walks each through
//! TCP connect → HTTP upgrade → `authenticated` → `subscribeEvents` → `subscribedEvents`,
//! then counts what arrives. Reads go into one thread-owned scratch buffer; a connection
//! keeps only the bytes of a partial frame, so idle connections cost little here too.
//!
//! `--target nats` is another dialect behind the same loop: upgrade → `INFO` → `CONNECT`,
//! `SUB`, `PING` (one frame) → `PONG` (the subscription is in place) → count `MSG`s.
//!
//! Scenario hooks: churn reuses a thread's slots for connection cycles started at a fixed
//! rate while the window is open (a cycle ends with our close 1000 and the server's
//! echo); overflow's slow readers stop reading for a pause after each read burst, until
//! the window ends.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::{Auth, Target};
use crate::nats;
use crate::report::ClientStats;
use crate::scan::{self, Scanner, K_AUTHENTICATED, K_ERROR, K_SUBSCRIBED, K_WARNING};
use crate::scenario::Scenario;
use crate::util::{unix_nanos, unix_secs, Rng};
use crate::ws::{self, Decode};

/// Bytes read per `read` call at least.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one connection may do per turn before the others get theirs (a server that
/// writes faster than we read must not starve the other connections or the loop).
const READS_PER_TURN: usize = 8;

/// What every thread of a process needs to open its connections.
pub struct LoopPlan {
    pub ws_addr: SocketAddr,
    pub host_header: String,
    /// The URL path (and query) of the WebSocket endpoint.
    pub ws_path: String,
    /// The connection options given (`batchMs=..&batchMax=..&framing=..`, each only when
    /// given; empty for none: the server's defaults apply).
    pub options_query: String,
    /// `--compression`: offer permessage-deflate and inflate compressed messages.
    pub compression: bool,
    pub auth: Auth,
    pub token_ttl_secs: u64,
    /// Empty: the kernel picks the source address.
    pub source_ips: Vec<Ipv4Addr>,
    /// Global index of this process's first connection.
    pub offset: u64,
    /// Connections of this process.
    pub count: u64,
    pub threads: usize,
    /// Handshakes in flight per thread.
    pub inflight_per_thread: usize,
    /// From the start of the TCP connect to `subscribedEvents` (churn: to the close echo).
    pub attempt_timeout: Duration,
    pub scenario: Arc<dyn Scenario>,
    pub target: Target,
    /// churn: connection cycles per second for this process (`count` is then the most
    /// cycles in flight at once).
    pub churn_rate: Option<f64>,
    /// The window's length: churn starts no cycle due after it.
    pub window: Duration,
    /// overflow: how long a slow reader stops reading, and its `SO_RCVBUF` (0: default).
    pub pause: Duration,
    pub rcvbuf: usize,
    /// scale `--sockbuf`: `SO_RCVBUF` and `SO_SNDBUF` of every socket (None: the
    /// kernel's defaults).
    pub sockbuf: Option<usize>,
    /// idle `--storm`: open this process's connections on a schedule instead of keeping
    /// `inflight_per_thread` handshakes in flight: `.0` connections every `.1`, the first
    /// step at once, with no cap on those in flight (a reconnect storm); each one's setup
    /// time (TCP connect to `subscribedEvents`) goes into the latency histogram.
    pub storm: Option<(u64, Duration)>,
}

/// Commands from the coordinator to all threads of a process.
#[derive(Default)]
pub struct Control {
    /// Stop opening connections; fail the ones still being set up.
    pub end_connect: AtomicBool,
    /// Close everything and return the results.
    pub stop: AtomicBool,
    /// The publishing (churn: cycling) window is open since this Unix time in
    /// nanoseconds (0: not yet).
    pub window_start_ns: AtomicU64,
    /// The window is over: churn starts no more cycles, slow readers read normally.
    pub window_over: AtomicBool,
}

/// Live counters of one thread, read by the coordinator for progress.
#[derive(Default)]
pub struct Live {
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub disconnected: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub cycles_started: AtomicU64,
    pub cycles_completed: AtomicU64,
    /// Set once no connection of the thread is still being set up.
    pub connect_done: AtomicBool,
    /// Subscribers per path when `connect_done` was set.
    pub subs_per_path: Mutex<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Authenticating,
    Subscribing,
    Ready,
    /// churn: our close frame is out, waiting for the server's.
    Closing,
    /// churn: the server echoed our close; waiting for it to close the TCP connection
    /// first (so that TIME_WAIT stays on its side, not on our ports).
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Upgrading => "upgrading",
            State::Authenticating => "authenticating",
            State::Subscribing => "subscribing",
            State::Ready => "subscribed",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

struct Conn {
    stream: TcpStream,
    state: State,
    /// Which use of the slot this is (churn reuses slots; timers carry it).
    gen: u32,
    /// A slow reader (overflow) ...
    slow: bool,
    /// ... that is not reading now (a pause timer is queued).
    paused: bool,
    /// When the TCP connect started (churn: setup latency).
    opened: Instant,
    /// `--target nats`: the protocol parser (its partial item).
    nats: Option<Box<nats::Parser>>,
    /// Bytes not yet written (usually empty).
    out: Vec<u8>,
    /// Bytes of a partial frame (or of the upgrade response) not yet processed.
    pending: Vec<u8>,
    /// A fragmented message being put together.
    frag: Option<Vec<u8>>,
    /// ... and it is compressed (RSV1 on its first frame).
    frag_deflated: bool,
    /// In the `busy` list: it had more to read when its turn ended.
    busy: bool,
    /// Sec-WebSocket-Key, until the upgrade is checked.
    key: String,
    path_idx: usize,
    sub_path: String,
    /// The server refused the setup (an `error` message); the connection waits briefly
    /// for the server's close frame, to count its code, then fails with this reason.
    failing: Option<String>,
    failing_queued: bool,
}

/// How long a refused connection waits for the server to close it.
const FAILING_WAIT: Duration = Duration::from_secs(2);

/// Why a connection ended.
enum End {
    /// Setup went wrong (before `subscribedEvents`).
    Fail(String),
    /// The server sent a close frame with this code.
    Closed(u16),
    /// The TCP stream ended or broke without a close frame (counted as 1006).
    Broken(String),
    /// The server broke the WebSocket protocol (or, for NATS, its own).
    Protocol(String),
    /// churn: the server echoed our close; the cycle is complete.
    CycleDone,
}

/// Everything of a thread except the connections and the read buffer (split so that a
/// frame borrowed from the buffer can be handled while the connection is mutated).
struct Ctx {
    scanner: Scanner,
    rng: Rng,
    stats: ClientStats,
    /// Connections being set up (not subscribed, not ended).
    inflight: usize,
    tmp: Vec<u8>,
    target: Target,
    /// churn: close each connection once subscribed.
    churn: bool,
    /// idle `--storm`: record each connection's setup time.
    storm: bool,
    /// The window is over (slow readers no longer pause).
    draining: bool,
    nats_t: nats::TimeFinder,
    /// `--compression`: the server compresses each message on its own
    /// (`server_no_context_takeover`), so one inflater serves every connection.
    inflater: Option<ws::Inflater>,
}

pub fn run_thread(
    plan: Arc<LoopPlan>,
    thread: usize,
    live: Arc<Live>,
    ctl: Arc<Control>,
) -> ClientStats {
    let mut lp = match EventLoop::new(plan, thread, live, ctl) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("loadtest: cannot create an event loop: {e}");
            std::process::exit(3);
        }
    };
    lp.run();
    lp.ctx.stats
}

struct EventLoop {
    plan: Arc<LoopPlan>,
    live: Arc<Live>,
    ctl: Arc<Control>,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    /// Local index of the next connection to open.
    next_local: u64,
    deadlines: VecDeque<(Instant, usize, u32)>,
    failing_deadlines: VecDeque<(Instant, usize, u32)>,
    /// Slow readers' pauses, in deadline order (all pauses are equally long).
    pauses: VecDeque<(Instant, usize, u32)>,
    next_gen: u32,
    churn: Option<ChurnSchedule>,
    window_over: bool,
    /// Connections that may have more to read (edge-triggered polling will not say so
    /// again), served round robin.
    busy: VecDeque<usize>,
    scratch: Vec<u8>,
    ctx: Ctx,
    connect_done: bool,
    shared_token: Option<String>,
    thread: usize,
    /// idle `--storm`: when this thread opened its first step.
    storm_t0: Option<Instant>,
}

/// churn: this thread's cycle schedule (open loop: cycle k is due at t0 + k/rate).
struct ChurnSchedule {
    rate: f64,
    /// Cycles due within the window (k/rate < window).
    total: u64,
    /// When this thread saw the window open.
    t0: Option<Instant>,
    started: u64,
    /// Slots not in use.
    free: Vec<usize>,
}

impl ChurnSchedule {
    /// Cycles due by `now` (the first one at t0), at most those of the window.
    fn due(&self, now: Instant) -> u64 {
        match self.t0 {
            Some(t0) => ((now.duration_since(t0).as_secs_f64() * self.rate).floor() as u64 + 1)
                .min(self.total),
            None => 0,
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let t0 = self.t0?;
        if self.started >= self.total {
            return None;
        }
        Some(t0 + Duration::from_secs_f64(self.started as f64 / self.rate))
    }
}

impl EventLoop {
    fn new(
        plan: Arc<LoopPlan>,
        thread: usize,
        live: Arc<Live>,
        ctl: Arc<Control>,
    ) -> io::Result<EventLoop> {
        let mine = if (thread as u64) < plan.count {
            (plan.count - thread as u64).div_ceil(plan.threads as u64)
        } else {
            0
        };
        let mut stats = ClientStats::new(plan.scenario.path_count());
        let churn = plan.churn_rate.map(|rate| {
            let rate = (rate * mine as f64 / plan.count.max(1) as f64).max(1e-9);
            ChurnSchedule {
                rate,
                total: if mine == 0 {
                    0
                } else {
                    (plan.window.as_secs_f64() * rate).ceil() as u64
                },
                t0: None,
                started: 0,
                free: (0..mine as usize).rev().collect(),
            }
        });
        if churn.is_none() {
            stats.requested = mine;
        }
        let shared_token = match &plan.auth {
            Auth::Token(t) => Some(url_encode(t)),
            Auth::Secret(_) | Auth::None => None,
        };
        Ok(EventLoop {
            poll: Poll::new()?,
            conns: (0..mine).map(|_| None).collect(),
            next_local: thread as u64,
            deadlines: VecDeque::new(),
            failing_deadlines: VecDeque::new(),
            pauses: VecDeque::new(),
            next_gen: 0,
            window_over: false,
            busy: VecDeque::new(),
            scratch: vec![0; READ_CHUNK * 2],
            ctx: Ctx {
                scanner: Scanner::new(),
                rng: Rng::from_os(),
                stats,
                inflight: 0,
                tmp: Vec::with_capacity(256),
                target: plan.target,
                churn: churn.is_some(),
                storm: plan.storm.is_some(),
                draining: false,
                nats_t: nats::TimeFinder::default(),
                inflater: plan.compression.then(ws::Inflater::default),
            },
            churn,
            connect_done: false,
            shared_token,
            thread,
            storm_t0: None,
            plan,
            live,
            ctl,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        if self.churn.is_some() {
            // nothing to connect before the window: cycles start when it opens
            self.mark_connect_done();
        }
        loop {
            if self.ctl.stop.load(Relaxed) {
                break;
            }
            if !self.window_over && self.ctl.window_over.load(Relaxed) {
                self.on_window_over();
            }
            let mut churn_wait = None;
            if self.churn.is_some() && !self.window_over {
                let t0_ns = self.ctl.window_start_ns.load(Relaxed);
                churn_wait = if t0_ns > 0 {
                    self.churn_open(t0_ns)
                } else {
                    Some(Duration::from_millis(2))
                };
            }
            if !self.connect_done {
                if self.ctl.end_connect.load(Relaxed) {
                    self.end_connect_phase();
                } else {
                    self.open_more();
                    if self.next_local >= self.plan.count && self.ctx.inflight == 0 {
                        self.mark_connect_done();
                    }
                }
            }
            let mut timeout = if !self.busy.is_empty() {
                Duration::ZERO
            } else if self.connect_done {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(20)
            };
            if let (Some(due), false) = (self.storm_next_step(), self.connect_done) {
                timeout = timeout.min(due.saturating_duration_since(Instant::now()));
            }
            if let Some(w) = churn_wait {
                timeout = timeout.min(w);
            }
            if let Some(&(due, _, _)) = self.pauses.front() {
                timeout = timeout.min(due.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("loadtest: poll failed: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                let slot = ev.token().0;
                self.on_event(slot, ev.is_writable() || ev.is_error());
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
            self.expire(now);
            self.resume_paused(now);
            self.publish_live();
        }
        self.close_all();
        self.publish_live();
    }

    /// churn: starts the cycles that are due (as far as free slots allow); returns how
    /// long the loop may sleep before the next one is due.
    fn churn_open(&mut self, t0_ns: u64) -> Option<Duration> {
        let now = Instant::now();
        let plan = Arc::clone(&self.plan);
        let threads = plan.threads as u64;
        loop {
            let ch = self.churn.as_mut()?;
            if ch.t0.is_none() {
                // the coordinator's window start, on this thread's monotonic clock
                let late = Duration::from_nanos(unix_nanos().saturating_sub(t0_ns));
                ch.t0 = Some(now.checked_sub(late).unwrap_or(now));
            }
            if ch.started >= ch.due(now) {
                break;
            }
            let Some(slot) = ch.free.pop() else {
                // every slot is busy: the schedule slips (reported as cycles behind)
                return Some(Duration::from_millis(5));
            };
            // a distinct index per cycle (token subject load-<i>)
            let cycle = ch.started;
            ch.started += 1;
            let global = plan.offset + cycle * threads + self.thread as u64;
            self.ctx.stats.requested += 1;
            if !self.open_at(slot, global) {
                if let Some(ch) = self.churn.as_mut() {
                    ch.free.push(slot);
                }
            }
        }
        let next = self.churn.as_ref()?.next_due();
        Some(next.map_or(Duration::from_millis(100), |n| {
            n.saturating_duration_since(now)
        }))
    }

    /// The window is over: churn stops; slow readers read what waits, and from now on
    /// read normally.
    fn on_window_over(&mut self) {
        self.window_over = true;
        self.ctx.draining = true;
        self.pauses.clear();
        for slot in 0..self.conns.len() {
            if let Some(c) = self.conns[slot].as_mut() {
                if c.paused {
                    c.paused = false;
                    if !c.busy {
                        c.busy = true;
                        self.busy.push_back(slot);
                    }
                }
            }
        }
    }

    /// Slow readers whose pause is over read what is there (and pause again).
    fn resume_paused(&mut self, now: Instant) {
        while let Some(&(due, slot, gen)) = self.pauses.front() {
            if due > now {
                break;
            }
            self.pauses.pop_front();
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if c.gen != gen || !c.paused {
                continue;
            }
            c.paused = false;
            self.on_event(slot, false);
        }
    }

    /// Opens connections while fewer than the limit are being set up (idle `--storm`:
    /// as many as the schedule says are due).
    fn open_more(&mut self) {
        if let Some((step, every)) = self.plan.storm {
            let t0 = *self.storm_t0.get_or_insert_with(Instant::now);
            let steps = (t0.elapsed().as_nanos() / every.as_nanos().max(1)) as u64 + 1;
            let due = steps.saturating_mul(self.storm_share(step));
            while self.opened() < due && self.next_local < self.plan.count {
                let local = self.next_local;
                self.next_local += self.plan.threads as u64;
                self.open(local);
            }
            return;
        }
        while self.ctx.inflight < self.plan.inflight_per_thread && self.next_local < self.plan.count
        {
            let local = self.next_local;
            self.next_local += self.plan.threads as u64;
            self.open(local);
        }
    }

    /// Connections this thread has opened so far.
    fn opened(&self) -> u64 {
        (self.next_local - self.thread as u64) / self.plan.threads as u64
    }

    /// idle `--storm`: this thread's share of a step of `step` connections.
    fn storm_share(&self, step: u64) -> u64 {
        step.div_ceil(self.plan.threads as u64).max(1)
    }

    /// idle `--storm`: when the next step is due (`None`: no storm, or all opened).
    fn storm_next_step(&self) -> Option<Instant> {
        let (step, every) = self.plan.storm?;
        let t0 = self.storm_t0?;
        if self.next_local >= self.plan.count {
            return None;
        }
        let steps = self.opened() / self.storm_share(step);
        Some(t0 + every * steps as u32)
    }

    fn open(&mut self, local: u64) {
        let global = self.plan.offset + local;
        let slot = (local / self.plan.threads as u64) as usize;
        self.open_at(slot, global);
    }

    /// Opens connection `global` in `slot`; false when it failed at once (counted).
    fn open_at(&mut self, slot: usize, global: u64) -> bool {
        let plan = Arc::clone(&self.plan);
        let src = if plan.source_ips.is_empty() {
            None
        } else {
            Some(plan.source_ips[(global % plan.source_ips.len() as u64) as usize])
        };
        let (path_idx, mut sub_path) = plan.scenario.subscription(global);
        if plan.target == Target::Nats {
            sub_path = plan.scenario.nats_sub_subject(global);
        }
        let slow = plan.scenario.slow_reader(global);
        let rcvbuf = if slow && plan.rcvbuf > 0 {
            Some(plan.rcvbuf)
        } else {
            plan.sockbuf
        };
        let stream = crate::net::connect_nonblocking_opts(plan.ws_addr, src, rcvbuf, plan.sockbuf);
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                self.ctx.fail_count(format!("connect: {}", short_io(&e)));
                return false;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.ctx.fail_count(format!("register: {}", short_io(&e)));
            return false;
        }
        let _ = stream.set_nodelay(true);
        let key = ws::random_key(&mut self.ctx.rng);
        let token = match &self.shared_token {
            Some(t) => t.clone(),
            None => match &plan.auth {
                Auth::Secret(s) => url_encode(&crate::jwt::client_token(
                    s,
                    global,
                    unix_secs(),
                    plan.token_ttl_secs,
                )),
                Auth::Token(t) => url_encode(t),
                Auth::None => String::new(),
            },
        };
        let target = if plan.target == Target::Nats {
            plan.ws_path.clone()
        } else {
            ws_target(&plan.ws_path, &token, &plan.options_query)
        };
        let mut request = ws::handshake_request(&plan.host_header, &target, &key);
        if plan.compression {
            ws::offer_deflate(&mut request);
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        self.conns[slot] = Some(Conn {
            stream,
            state: State::Connecting,
            gen,
            slow,
            paused: false,
            opened: Instant::now(),
            nats: None,
            out: request,
            pending: Vec::new(),
            frag: None,
            frag_deflated: false,
            key,
            path_idx,
            sub_path,
            failing: None,
            failing_queued: false,
            busy: false,
        });
        self.ctx.inflight += 1;
        self.deadlines
            .push_back((Instant::now() + plan.attempt_timeout, slot, gen));
        true
    }

    fn on_event(&mut self, slot: usize, writable: bool) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let result = drive(conn, writable, &mut self.scratch, &mut self.ctx);
        match result {
            Err(end) => {
                self.end(slot, end);
                return;
            }
            Ok(true) if !conn.busy => {
                conn.busy = true;
                self.busy.push_back(slot);
            }
            Ok(true) => {}
            Ok(false) => {
                // a slow reader that read everything there was stops for a while
                if conn.slow && conn.state == State::Ready && !self.ctx.draining && !conn.paused {
                    conn.paused = true;
                    self.pauses
                        .push_back((Instant::now() + self.plan.pause, slot, conn.gen));
                }
            }
        }
        if conn.failing.is_some() && !conn.failing_queued {
            conn.failing_queued = true;
            self.failing_deadlines
                .push_back((Instant::now() + FAILING_WAIT, slot, conn.gen));
        }
    }

    /// Fails connections whose setup took too long.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, slot, gen)) = self.failing_deadlines.front() {
            if deadline > now {
                break;
            }
            self.failing_deadlines.pop_front();
            if let Some(why) = self.conns[slot]
                .as_ref()
                .filter(|c| c.gen == gen)
                .and_then(|c| c.failing.clone())
            {
                self.end(slot, End::Fail(why));
            }
        }
        while let Some(&(deadline, slot, gen)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(c) = self.conns[slot].as_ref().filter(|c| c.gen == gen) {
                if c.state == State::Closed {
                    // the server echoed but kept the connection open; done anyway
                    self.end(slot, End::CycleDone);
                } else if c.state != State::Ready {
                    let why = format!("timeout while {}", c.state.name());
                    self.end(slot, End::Fail(why));
                }
            }
        }
    }

    fn end_connect_phase(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(c) = &self.conns[slot] {
                if c.state != State::Ready {
                    let why = format!("connect phase time limit while {}", c.state.name());
                    self.end(slot, End::Fail(why));
                }
            }
        }
        while self.next_local < self.plan.count {
            self.next_local += self.plan.threads as u64;
            self.ctx
                .fail_count("not started: connect phase time limit".to_string());
        }
        self.mark_connect_done();
    }

    fn mark_connect_done(&mut self) {
        self.connect_done = true;
        *self.live.subs_per_path.lock().expect("not poisoned") =
            self.ctx.stats.subs_per_path.clone();
        self.publish_live();
        self.live.connect_done.store(true, Relaxed);
    }

    /// Removes a connection and counts why it ended.
    fn end(&mut self, slot: usize, end: End) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(ch) = self.churn.as_mut() {
            ch.free.push(slot);
        }
        if let End::CycleDone = end {
            self.ctx.stats.cycles_completed += 1;
            return;
        }
        let code = match &end {
            End::Closed(c) => Some(*c),
            End::Broken(_) => Some(1006),
            End::Fail(_) | End::Protocol(_) | End::CycleDone => None,
        };
        if let Some(code) = code {
            *self.ctx.stats.close_codes.entry(code).or_default() += 1;
        }
        if let End::Protocol(_) = end {
            // tell the server why, best effort
            let mut f = Vec::new();
            let mask = self.ctx.mask();
            ws::encode_frame(&mut f, ws::OP_CLOSE, &1002u16.to_be_bytes(), Some(mask));
            let _ = conn.stream.write(&f);
        }
        if conn.state == State::Ready {
            self.ctx.stats.disconnected += 1;
        } else if matches!(conn.state, State::Closing | State::Closed) {
            // churn: the cycle did not end with the server's close echo
            let why = match end {
                End::Fail(s) => s,
                End::Closed(c) => format!("closed {c} while closing"),
                End::Broken(e) => format!("{e} while closing"),
                End::Protocol(p) => format!("protocol error while closing: {p}"),
                End::CycleDone => unreachable!("handled above"),
            };
            self.ctx.fail_count(why);
        } else {
            let state = conn.state.name();
            let why = match end {
                _ if conn.failing.is_some() => conn.failing.take().unwrap_or_default(),
                End::Fail(s) => s,
                End::Closed(c) => format!("closed {c} while {state}"),
                End::Broken(e) => format!("{e} while {state}"),
                End::Protocol(p) => format!("protocol error while {state}: {p}"),
                End::CycleDone => unreachable!("handled above"),
            };
            self.ctx.inflight -= 1;
            self.ctx.fail_count(why);
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(mut c) = self.conns[slot].take() {
                if matches!(
                    c.state,
                    State::Authenticating | State::Subscribing | State::Ready
                ) {
                    let mask = self.ctx.mask();
                    let mut f = Vec::new();
                    ws::encode_frame(&mut f, ws::OP_CLOSE, &1000u16.to_be_bytes(), Some(mask));
                    let _ = c.stream.write(&f);
                }
                if c.state == State::Closed {
                    self.ctx.stats.cycles_completed += 1;
                } else if c.state == State::Closing {
                    self.ctx.fail_count("still closing at the end".to_string());
                } else if c.state != State::Ready {
                    self.ctx.inflight -= 1;
                    self.ctx
                        .fail_count(format!("still {} at the end", c.state.name()));
                }
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
        }
        // connections never opened (stopped during the connect phase)
        while self.churn.is_none() && self.next_local < self.plan.count {
            self.next_local += self.plan.threads as u64;
            self.ctx.fail_count("not started: stopped".to_string());
        }
    }

    fn publish_live(&self) {
        let s = &self.ctx.stats;
        self.live.ready.store(s.ready, Relaxed);
        self.live.failed.store(s.failed, Relaxed);
        self.live.disconnected.store(s.disconnected, Relaxed);
        self.live.delivered.store(s.delivered, Relaxed);
        self.live.dropped.store(s.dropped_reported, Relaxed);
        self.live
            .last_delivery_ns
            .store(s.last_delivery_ns, Relaxed);
        let started = if self.churn.is_some() { s.requested } else { 0 };
        self.live.cycles_started.store(started, Relaxed);
        self.live
            .cycles_completed
            .store(s.cycles_completed, Relaxed);
    }
}

impl Ctx {
    fn fail_count(&mut self, why: String) {
        self.stats.failed += 1;
        *self.stats.failures.entry(why).or_default() += 1;
    }

    fn mask(&mut self) -> [u8; 4] {
        let m = self.rng.next_u64().to_le_bytes();
        [m[0], m[1], m[2], m[3]]
    }
}

/// Handles readiness of one connection; `Ok(true)`: there may be more to read.
fn drive(
    conn: &mut Conn,
    writable: bool,
    scratch: &mut Vec<u8>,
    ctx: &mut Ctx,
) -> Result<bool, End> {
    if conn.state == State::Connecting {
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Err(End::Fail(format!("connect: {}", short_io(&e))));
        }
        match conn.stream.peer_addr() {
            Ok(_) => conn.state = State::Upgrading,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(End::Fail(format!("connect: {}", short_io(&e)))),
        }
        flush(conn)?;
    } else if writable && !conn.out.is_empty() {
        flush(conn)?;
    }
    if conn.paused {
        return Ok(false);
    }
    read_all(conn, scratch, ctx)
}

/// Writes what is waiting in `conn.out`.
fn flush(conn: &mut Conn) -> Result<(), End> {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Err(End::Broken("write returned 0".into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Broken(format!("write: {}", short_io(&e)))),
        }
    }
    conn.out.drain(..written);
    if conn.out.is_empty() && conn.out.capacity() > 4096 {
        conn.out = Vec::new();
    }
    Ok(())
}

/// Sends one masked frame (queued behind anything not yet written).
fn send(conn: &mut Conn, ctx: &mut Ctx, opcode: u8, payload: &[u8]) -> Result<(), End> {
    let mask = ctx.mask();
    if conn.out.is_empty() {
        ctx.tmp.clear();
        ws::encode_frame(&mut ctx.tmp, opcode, payload, Some(mask));
        let mut written = 0;
        while written < ctx.tmp.len() {
            match conn.stream.write(&ctx.tmp[written..]) {
                Ok(0) => return Err(End::Broken("write returned 0".into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Broken(format!("write: {}", short_io(&e)))),
            }
        }
        conn.out.extend_from_slice(&ctx.tmp[written..]);
        Ok(())
    } else {
        ws::encode_frame(&mut conn.out, opcode, payload, Some(mask));
        flush(conn)
    }
}

/// Reads until the socket would block (`Ok(false)`) or the turn is over (`Ok(true)`),
/// handling every complete frame.
fn read_all(conn: &mut Conn, scratch: &mut Vec<u8>, ctx: &mut Ctx) -> Result<bool, End> {
    if conn.state == State::Connecting {
        return Ok(false);
    }
    let mut need = 0usize;
    for _ in 0..READS_PER_TURN {
        if conn.state == State::Closed {
            return match conn.stream.read(&mut scratch[..]) {
                Ok(0) => Err(End::CycleDone),
                Ok(_) => Ok(true), // nothing more is expected; ignore
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
                Err(_) => Err(End::CycleDone),
            };
        }
        let have = conn.pending.len();
        let want = (have + READ_CHUNK).max(need + READ_CHUNK / 4);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        scratch[..have].copy_from_slice(&conn.pending);
        match conn.stream.read(&mut scratch[have..]) {
            Ok(0) => {
                return Err(End::Broken(
                    "connection closed without a close frame".into(),
                ));
            }
            Ok(n) => {
                let len = have + n;
                conn.pending.clear();
                let now_ns = unix_nanos();
                let (used, more) = process(conn, &mut scratch[..len], ctx, now_ns)?;
                need = more;
                conn.pending.extend_from_slice(&scratch[used..len]);
                if conn.pending.is_empty() && conn.pending.capacity() > READ_CHUNK {
                    conn.pending = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(End::Broken(format!("read: {}", short_io(&e)))),
        }
    }
    Ok(true)
}

/// Handles the complete frames at the start of `buf`; returns the bytes used and the
/// total size of the partial frame that follows, when known.
fn process(
    conn: &mut Conn,
    buf: &mut [u8],
    ctx: &mut Ctx,
    now_ns: u64,
) -> Result<(usize, usize), End> {
    let mut pos = 0;
    if conn.state == State::Upgrading {
        match ws::check_handshake_response(buf, &conn.key) {
            Ok(None) => return Ok((0, 0)),
            Ok(Some(n)) => {
                pos = n;
                conn.state = State::Authenticating;
                conn.key = String::new();
                if ctx.target == Target::Nats {
                    conn.nats = Some(Box::default());
                }
            }
            Err(e) => return Err(End::Fail(e.to_string())),
        }
    }
    loop {
        match ws::decode_frame(&mut buf[pos..]) {
            Decode::Frame(f, used) => {
                let (fin, opcode) = (f.fin, f.opcode);
                match opcode {
                    // NATS: frame payloads are one byte stream; message boundaries do
                    // not matter
                    ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT if conn.nats.is_some() => {
                        on_nats_bytes(conn, f.payload, ctx, now_ns)?;
                    }
                    ws::OP_TEXT | ws::OP_BINARY => {
                        if conn.frag.is_some() {
                            return Err(End::Protocol(
                                "new message inside a fragmented one".into(),
                            ));
                        }
                        if f.rsv1 && ctx.inflater.is_none() {
                            return Err(End::Protocol("RSV1 without --compression".into()));
                        }
                        if fin && f.rsv1 {
                            on_deflated(conn, f.payload, ctx, now_ns)?;
                        } else if fin {
                            on_message(conn, f.payload, ctx, now_ns)?;
                        } else {
                            conn.frag = Some(f.payload.to_vec());
                            conn.frag_deflated = f.rsv1;
                        }
                    }
                    ws::OP_CONT => {
                        let Some(mut acc) = conn.frag.take() else {
                            return Err(End::Protocol("continuation without a start".into()));
                        };
                        acc.extend_from_slice(f.payload);
                        if fin && conn.frag_deflated {
                            on_deflated(conn, &acc, ctx, now_ns)?;
                        } else if fin {
                            on_message(conn, &acc, ctx, now_ns)?;
                        } else {
                            conn.frag = Some(acc);
                        }
                    }
                    ws::OP_PING => {
                        let p = f.payload.to_vec();
                        send(conn, ctx, ws::OP_PONG, &p)?;
                    }
                    ws::OP_PONG => {}
                    ws::OP_CLOSE if conn.state == State::Closing => {
                        // the echo of our close: the churn cycle is complete once the
                        // server closes the connection
                        conn.state = State::Closed;
                    }
                    ws::OP_CLOSE => {
                        let code = ws::close_code(f.payload);
                        let mut echo = [0u8; 2];
                        echo.copy_from_slice(&code.to_be_bytes());
                        let _ = send(
                            conn,
                            ctx,
                            ws::OP_CLOSE,
                            if code == 1005 { &[] } else { &echo },
                        );
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

const PONG: &[u8] = br#"{"type":"pong"}"#;

/// A whole compressed message: inflated, then handled like a plain one.
fn on_deflated(conn: &mut Conn, payload: &[u8], ctx: &mut Ctx, now_ns: u64) -> Result<(), End> {
    let Some(inf) = ctx.inflater.as_mut() else {
        return Err(End::Protocol("RSV1 without --compression".into()));
    };
    let msg = inf
        .message(payload)
        .map_err(|e| End::Protocol(e.into()))?
        .to_vec();
    on_message(conn, &msg, ctx, now_ns)
}

/// One whole text message: count events and latencies, answer pings, step the setup.
fn on_message(conn: &mut Conn, msg: &[u8], ctx: &mut Ctx, now_ns: u64) -> Result<(), End> {
    let hist = &mut ctx.stats.latency;
    let s = ctx.scanner.scan(msg, |t| {
        let us = now_ns.saturating_sub(t) / 1000;
        hist.saturating_record(us.max(1));
    });
    if s.events > 0 {
        ctx.stats.delivered += u64::from(s.events);
        ctx.stats.last_delivery_ns = now_ns;
    }
    for _ in 0..s.pings {
        send(conn, ctx, ws::OP_TEXT, PONG)?;
        ctx.stats.pongs_sent += 1;
    }
    if s.kinds & K_WARNING != 0 {
        let d = scan::overflow_dropped(msg);
        ctx.stats.dropped_reported += d;
        if !conn.slow {
            ctx.stats.dropped_fast += d;
        }
    }
    if conn.failing.is_some() {
        return Ok(());
    }
    match conn.state {
        State::Authenticating => {
            if s.kinds & K_AUTHENTICATED != 0 {
                let sub = subscribe_message(&conn.sub_path);
                send(conn, ctx, ws::OP_TEXT, sub.as_bytes())?;
                conn.state = State::Subscribing;
            } else if s.kinds & K_ERROR != 0 {
                conn.failing = Some(format!("auth error {}", scan::error_code(msg)));
            }
        }
        State::Subscribing => {
            if s.kinds & K_SUBSCRIBED != 0 {
                if memchr::memmem::find(msg, b"\"rejected\"").is_some() {
                    if let Some(code) = scan::rejected_code(msg) {
                        conn.failing = Some(format!("subscription rejected {code}"));
                        return Ok(());
                    }
                }
                become_ready(conn, ctx)?;
            } else if s.kinds & K_ERROR != 0 {
                conn.failing = Some(format!("subscribe error {}", scan::error_code(msg)));
            }
        }
        State::Ready | State::Closing | State::Closed => {
            if s.kinds & K_ERROR != 0 {
                ctx.stats.server_errors += 1;
            }
        }
        State::Connecting | State::Upgrading => {}
    }
    Ok(())
}

/// Setup is complete (`subscribedEvents`, NATS: the `PONG` after `SUB`). churn: record
/// the setup time and close at once.
fn become_ready(conn: &mut Conn, ctx: &mut Ctx) -> Result<(), End> {
    conn.state = State::Ready;
    conn.sub_path = String::new();
    ctx.inflight -= 1;
    ctx.stats.ready += 1;
    if ctx.storm {
        let us = conn.opened.elapsed().as_micros() as u64;
        ctx.stats.latency.saturating_record(us.max(1));
    }
    if ctx.churn {
        let us = conn.opened.elapsed().as_micros() as u64;
        ctx.stats.latency.saturating_record(us.max(1));
        send(conn, ctx, ws::OP_CLOSE, &1000u16.to_be_bytes())?;
        conn.state = State::Closing;
        return Ok(());
    }
    ctx.stats.subs_per_path[conn.path_idx] += 1;
    if conn.slow {
        ctx.stats.slow_readers += 1;
    }
    Ok(())
}

/// Bytes of the NATS stream (payloads of the server's frames): count `MSG`s and their
/// latency, answer `PING`, step the setup (`INFO` → `CONNECT`+`SUB`+`PING` → `PONG`).
fn on_nats_bytes(conn: &mut Conn, data: &[u8], ctx: &mut Ctx, now_ns: u64) -> Result<(), End> {
    let Some(mut parser) = conn.nats.take() else {
        return Ok(());
    };
    let mut res: Result<(), End> = Ok(());
    let parsed = parser.feed(data, |item| {
        if res.is_err() {
            return;
        }
        match item {
            nats::Item::Msg { payload, .. } => {
                ctx.stats.delivered += 1;
                ctx.stats.last_delivery_ns = now_ns;
                if let Some(t) = ctx.nats_t.find(payload) {
                    let us = now_ns.saturating_sub(t) / 1000;
                    ctx.stats.latency.saturating_record(us.max(1));
                }
            }
            nats::Item::Ping => {
                res = send(conn, ctx, ws::OP_BINARY, nats::PONG);
                ctx.stats.pongs_sent += 1;
            }
            nats::Item::Info(_) => {
                // later INFOs are cluster updates
                if conn.state == State::Authenticating && conn.failing.is_none() {
                    let mut m = nats::CONNECT.to_vec();
                    m.extend_from_slice(&nats::sub_line(&conn.sub_path, 1));
                    m.extend_from_slice(nats::PING);
                    res = send(conn, ctx, ws::OP_BINARY, &m);
                    conn.state = State::Subscribing;
                }
            }
            nats::Item::Pong => {
                if conn.state == State::Subscribing && conn.failing.is_none() {
                    res = become_ready(conn, ctx);
                }
            }
            nats::Item::Ok => {}
            nats::Item::Err(e) => {
                let e = String::from_utf8_lossy(e).into_owned();
                match conn.state {
                    State::Ready | State::Closing | State::Closed => ctx.stats.server_errors += 1,
                    _ if conn.failing.is_none() => {
                        conn.failing = Some(format!("nats -ERR {e}"));
                    }
                    _ => {}
                }
            }
        }
    });
    conn.nats = Some(parser);
    if let Err(e) = parsed {
        return Err(End::Protocol(format!("nats: {e}")));
    }
    res
}

/// The subscribe request of a connection.
pub fn subscribe_message(path: &str) -> String {
    serde_json::json!({
        "type": "subscribeEvents",
        "requestId": "s",
        "subscriptions": [{"id": "load", "path": path}],
    })
    .to_string()
}

/// The request target of a shardcast upgrade: the URL's path and query, the token (already
/// URL-encoded) and the connection options that were given.
pub fn ws_target(path: &str, token: &str, options_query: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut t = format!("{path}{sep}token={token}");
    if !options_query.is_empty() {
        t.push('&');
        t.push_str(options_query);
    }
    t
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An io::Error without the "(os error N)" noise, to keep failure reasons few.
pub(crate) fn short_io(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_json() {
        let m: serde_json::Value = serde_json::from_str(&subscribe_message("load/p3")).unwrap();
        assert_eq!(m["type"], "subscribeEvents");
        assert_eq!(m["requestId"], "s");
        assert_eq!(m["subscriptions"][0]["id"], "load");
        assert_eq!(m["subscriptions"][0]["path"], "load/p3");
    }

    #[test]
    fn upgrade_target_carries_only_the_options_given() {
        assert_eq!(ws_target("/ws", "T", ""), "/ws?token=T");
        assert_eq!(
            ws_target("/ws", "T", "batchMax=100"),
            "/ws?token=T&batchMax=100"
        );
        assert_eq!(ws_target("/ws?x=1", "T", ""), "/ws?x=1&token=T");
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(url_encode("a b&c=d/+"), "a%20b%26c%3Dd%2F%2B");
    }
}
