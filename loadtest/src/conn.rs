//! Client connections and the per-thread `mio` event loop that drives them.
//!
//! Each thread owns a share of the process's connections (local index `l` with
//! `l % threads == thread`), opens them at a bounded concurrency, walks each through
//! TCP connect → HTTP upgrade → `authenticated` → `subscribeEvents` → `subscribedEvents`,
//! then counts what arrives. Reads go into one thread-owned scratch buffer; a connection
//! keeps only the bytes of a partial frame, so idle connections cost little here too.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::cli::Auth;
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
    /// `batchMs=..&batchMax=..&framing=..`
    pub options_query: String,
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
    /// From the start of the TCP connect to `subscribedEvents`.
    pub attempt_timeout: Duration,
    pub scenario: Arc<dyn Scenario>,
}

/// Commands from the coordinator to all threads of a process.
#[derive(Default)]
pub struct Control {
    /// Stop opening connections; fail the ones still being set up.
    pub end_connect: AtomicBool,
    /// Close everything and return the results.
    pub stop: AtomicBool,
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
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Upgrading => "upgrading",
            State::Authenticating => "authenticating",
            State::Subscribing => "subscribing",
            State::Ready => "subscribed",
        }
    }
}

struct Conn {
    stream: TcpStream,
    state: State,
    /// Bytes not yet written (usually empty).
    out: Vec<u8>,
    /// Bytes of a partial frame (or of the upgrade response) not yet processed.
    pending: Vec<u8>,
    /// A fragmented message being put together.
    frag: Option<Vec<u8>>,
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
    /// The server broke the WebSocket protocol.
    Protocol(&'static str),
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
    deadlines: VecDeque<(Instant, usize)>,
    failing_deadlines: VecDeque<(Instant, usize)>,
    /// Connections that may have more to read (edge-triggered polling will not say so
    /// again), served round robin.
    busy: VecDeque<usize>,
    scratch: Vec<u8>,
    ctx: Ctx,
    connect_done: bool,
    shared_token: Option<String>,
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
        stats.requested = mine;
        let shared_token = match &plan.auth {
            Auth::Token(t) => Some(url_encode(t)),
            Auth::Secret(_) => None,
        };
        Ok(EventLoop {
            poll: Poll::new()?,
            conns: (0..mine).map(|_| None).collect(),
            next_local: thread as u64,
            deadlines: VecDeque::new(),
            failing_deadlines: VecDeque::new(),
            busy: VecDeque::new(),
            scratch: vec![0; READ_CHUNK * 2],
            ctx: Ctx {
                scanner: Scanner::new(),
                rng: Rng::from_os(),
                stats,
                inflight: 0,
                tmp: Vec::with_capacity(256),
            },
            connect_done: false,
            shared_token,
            plan,
            live,
            ctl,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.ctl.stop.load(Relaxed) {
                break;
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
            let timeout = if !self.busy.is_empty() {
                Duration::ZERO
            } else if self.connect_done {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(20)
            };
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
            self.expire(Instant::now());
            self.publish_live();
        }
        self.close_all();
        self.publish_live();
    }

    /// Opens connections while fewer than the limit are being set up.
    fn open_more(&mut self) {
        while self.ctx.inflight < self.plan.inflight_per_thread && self.next_local < self.plan.count
        {
            let local = self.next_local;
            self.next_local += self.plan.threads as u64;
            self.open(local);
        }
    }

    fn open(&mut self, local: u64) {
        let plan = Arc::clone(&self.plan);
        let global = plan.offset + local;
        let slot = (local / plan.threads as u64) as usize;
        let src = if plan.source_ips.is_empty() {
            None
        } else {
            Some(plan.source_ips[(global % plan.source_ips.len() as u64) as usize])
        };
        let (path_idx, sub_path) = plan.scenario.subscription(global);
        let mut stream = match crate::net::connect_nonblocking(plan.ws_addr, src) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.fail_count(format!("connect: {}", short_io(&e)));
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.ctx.fail_count(format!("register: {}", short_io(&e)));
            return;
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
            },
        };
        let sep = if plan.ws_path.contains('?') { '&' } else { '?' };
        let target = format!("{}{sep}token={token}&{}", plan.ws_path, plan.options_query);
        let request = ws::handshake_request(&plan.host_header, &target, &key);
        self.conns[slot] = Some(Conn {
            stream,
            state: State::Connecting,
            out: request,
            pending: Vec::new(),
            frag: None,
            key,
            path_idx,
            sub_path,
            failing: None,
            failing_queued: false,
            busy: false,
        });
        self.ctx.inflight += 1;
        self.deadlines
            .push_back((Instant::now() + plan.attempt_timeout, slot));
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
            Ok(_) => {}
        }
        if conn.failing.is_some() && !conn.failing_queued {
            conn.failing_queued = true;
            self.failing_deadlines
                .push_back((Instant::now() + FAILING_WAIT, slot));
        }
    }

    /// Fails connections whose setup took too long.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, slot)) = self.failing_deadlines.front() {
            if deadline > now {
                break;
            }
            self.failing_deadlines.pop_front();
            if let Some(why) = self.conns[slot].as_ref().and_then(|c| c.failing.clone()) {
                self.end(slot, End::Fail(why));
            }
        }
        while let Some(&(deadline, slot)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(c) = &self.conns[slot] {
                if c.state != State::Ready {
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
        let code = match &end {
            End::Closed(c) => Some(*c),
            End::Broken(_) => Some(1006),
            End::Fail(_) | End::Protocol(_) => None,
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
        } else {
            let state = conn.state.name();
            let why = match end {
                _ if conn.failing.is_some() => conn.failing.take().unwrap_or_default(),
                End::Fail(s) => s,
                End::Closed(c) => format!("closed {c} while {state}"),
                End::Broken(e) => format!("{e} while {state}"),
                End::Protocol(p) => format!("protocol error while {state}: {p}"),
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
                if c.state != State::Ready {
                    self.ctx.inflight -= 1;
                    self.ctx
                        .fail_count(format!("still {} at the end", c.state.name()));
                }
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
        }
        // connections never opened (stopped during the connect phase)
        while self.next_local < self.plan.count {
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
            }
            Err(e) => return Err(End::Fail(e.to_string())),
        }
    }
    loop {
        match ws::decode_frame(&mut buf[pos..]) {
            Decode::Frame(f, used) => {
                let (fin, opcode) = (f.fin, f.opcode);
                match opcode {
                    ws::OP_TEXT | ws::OP_BINARY => {
                        if conn.frag.is_some() {
                            return Err(End::Protocol("new message inside a fragmented one"));
                        }
                        if fin {
                            on_message(conn, f.payload, ctx, now_ns)?;
                        } else {
                            conn.frag = Some(f.payload.to_vec());
                        }
                    }
                    ws::OP_CONT => {
                        let Some(mut acc) = conn.frag.take() else {
                            return Err(End::Protocol("continuation without a start"));
                        };
                        acc.extend_from_slice(f.payload);
                        if fin {
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
                    _ => return Err(End::Protocol("unknown opcode")),
                }
                pos += used;
            }
            Decode::Incomplete { need } => return Ok((pos, need)),
            Decode::Error(e) => return Err(End::Protocol(e)),
        }
    }
}

const PONG: &[u8] = br#"{"type":"pong"}"#;

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
        ctx.stats.dropped_reported += scan::overflow_dropped(msg);
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
                conn.state = State::Ready;
                conn.sub_path = String::new();
                ctx.inflight -= 1;
                ctx.stats.ready += 1;
                ctx.stats.subs_per_path[conn.path_idx] += 1;
            } else if s.kinds & K_ERROR != 0 {
                conn.failing = Some(format!("subscribe error {}", scan::error_code(msg)));
            }
        }
        State::Ready => {
            if s.kinds & K_ERROR != 0 {
                ctx.stats.server_errors += 1;
            }
        }
        State::Connecting | State::Upgrading => {}
    }
    Ok(())
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
fn short_io(e: &io::Error) -> String {
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
    fn url_encoding() {
        assert_eq!(url_encode("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(url_encode("a b&c=d/+"), "a%20b%26c%3Dd%2F%2B");
    }
}
