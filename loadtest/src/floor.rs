//! The floor writer (`floorwriter` binary): what writing shardcast's event bytes to N
//! loopback sockets costs when nothing else is done, to compare a server's CPU per
//! delivery against.
//!
//! It speaks just enough of the wire contract for the harness to drive it like a server
//! (scenario fanout, `--target shardcast`): the WebSocket upgrade (any path, any token),
//! `{"type":"authenticated"}`, `subscribeEvents` → `subscribedEvents`, `{"type":"ping"}` →
//! `pong`, close → close echo, and `POST /api/v1/publish` → 202 (`GET /healthz` → 200).
//! Every publication becomes the same event frame shardcast writes
//! (`{"type":"event","subscriptionIds":["load"],"eventType":…,"path":…,"data":…,
//! "timestamp":"…","seq":N}`), written to every subscribed socket either
//!
//! * `--write per-message`: one `write(2)` per message per socket, at once, or
//! * `--write per-flush --batch K`: one `writev(2)` of K messages per socket, when K
//!   publications wait (or the oldest has waited `--flush-ms`).
//!
//! One thread, edge-triggered `mio`. A socket that cannot take a write keeps the rest in
//! its own backlog, written when it becomes writable (further messages queue behind it).
//! Its CPU is measured by the harness (`--server-pid`), the same way as a server's; at
//! exit it also prints (and with `--json` writes) its own count of writes and CPU from
//! `/proc/self/stat`.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::ws::{self, Decode};

pub const USAGE: &str = "\
floorwriter: the write floor for shardcast's load tests

USAGE:
    floorwriter [options]

Accepts the harness's WebSocket clients (loadtest fanout --url ws://ADDR/ws, any token)
and its REST publications (POST /api/v1/publish, any api key), and writes each
publication's event bytes, as shardcast would frame them, to every subscribed socket.
Runs until SIGTERM or SIGINT (or --lifetime), then prints what it did.

OPTIONS:
    --listen ADDR       address to listen on [default: 127.0.0.1:8090]
    --write MODE        per-message: one write(2) per message and socket;
                        per-flush: one writev(2) of --batch messages per socket
                        [default: per-message]
    --batch K           per-flush: messages per writev [default: 10]
    --flush-ms MS       per-flush: write what waits once the oldest waited this long
                        [default: 1000]
    --lifetime D        exit by itself after this long (30s, 2m, ...) [default: 1h]
    --json FILE         write the summary there at exit (\"-\" for stdout)
    -h, --help          this text
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    PerMessage,
    PerFlush,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::PerMessage => "per-message",
            WriteMode::PerFlush => "per-flush",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub listen: SocketAddr,
    pub mode: WriteMode,
    pub batch: usize,
    pub flush: Duration,
    pub lifetime: Duration,
    pub json: Option<PathBuf>,
}

#[derive(Debug)]
pub enum FloorCommand {
    Help,
    Run(FloorConfig),
}

/// Parses the floorwriter's arguments; errors name the flag.
pub fn parse_args(args: &[String]) -> Result<FloorCommand, String> {
    const FLAGS: &[&str] = &[
        "--listen",
        "--write",
        "--batch",
        "--flush-ms",
        "--lifetime",
        "--json",
    ];
    let mut seen: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if a == "-h" || a == "--help" {
            return Ok(FloorCommand::Help);
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a, None),
        };
        let Some(flag) = FLAGS.iter().copied().find(|f| *f == name) else {
            return Err(if a.starts_with('-') {
                format!("unknown flag {name} (see --help)")
            } else {
                format!("unexpected argument {a:?}")
            });
        };
        if seen.contains_key(flag) {
            return Err(format!("{flag} given more than once"));
        }
        let v = match inline {
            Some(v) => v,
            None => {
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .clone();
                i += 1;
                v
            }
        };
        seen.insert(flag, v);
    }
    let listen = seen
        .get("--listen")
        .map_or("127.0.0.1:8090", String::as_str)
        .parse::<SocketAddr>()
        .map_err(|_| "--listen: expected an address like 127.0.0.1:8090".to_string())?;
    let mode = match seen.get("--write").map(String::as_str) {
        None | Some("per-message") => WriteMode::PerMessage,
        Some("per-flush") => WriteMode::PerFlush,
        Some(v) => return Err(format!("--write: {v:?} is not per-message or per-flush")),
    };
    let int = |flag: &str, default: u64, min: u64, max: u64| -> Result<u64, String> {
        let v = seen.get(flag).map_or(default.to_string(), Clone::clone);
        match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{flag}: {v:?} is not a whole number in {min}..={max}"
            )),
        }
    };
    let batch = int("--batch", 10, 1, 1024)? as usize; // IOV_MAX is 1024
    let flush = Duration::from_millis(int("--flush-ms", 1000, 0, 3_600_000)?);
    if mode == WriteMode::PerMessage {
        for f in ["--batch", "--flush-ms"] {
            if seen.contains_key(f) {
                return Err(format!("{f} only applies to --write per-flush"));
            }
        }
    }
    let lifetime = match seen.get("--lifetime") {
        Some(v) => crate::cli::parse_duration(v).map_err(|e| format!("--lifetime: {e}"))?,
        None => Duration::from_secs(3600),
    };
    let json = match seen.get("--json").map(String::as_str) {
        Some("") => return Err("--json: empty file name".into()),
        Some(v) => Some(PathBuf::from(v)),
        None => None,
    };
    Ok(FloorCommand::Run(FloorConfig {
        listen,
        mode,
        batch,
        flush,
        lifetime,
        json,
    }))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds (what shardcast's `timestamp` looks like).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms % 1000
    )
}

/// The event message shardcast sends a subscriber of `load` for a publish body (`path`,
/// `eventType`, `data` copied as they came), or why the body is not a publication.
pub fn event_for(body: &[u8], seq: u64, now_ms: u64) -> Result<Vec<u8>, String> {
    let m: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
    let field = |k: &str| m.get(k).ok_or_else(|| format!("missing {k}"));
    let path: String = serde_json::from_str(field("path")?.get()).map_err(|_| "path")?;
    let event_type: String =
        serde_json::from_str(field("eventType")?.get()).map_err(|_| "eventType")?;
    let data = field("data")?.get();
    let mut out = Vec::with_capacity(160 + data.len());
    out.extend_from_slice(b"{\"type\":\"event\",\"subscriptionIds\":[\"load\"],\"eventType\":");
    serde_json::to_writer(&mut out, &event_type).map_err(|e| e.to_string())?;
    out.extend_from_slice(b",\"path\":");
    serde_json::to_writer(&mut out, &path).map_err(|e| e.to_string())?;
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(rfc3339_ms(now_ms).as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'}');
    Ok(out)
}

/// What the floor writer did (printed and written at exit).
#[derive(Debug, Default, Clone)]
pub struct FloorStats {
    pub connections: u64,
    pub publications: u64,
    /// Messages handed to subscribed sockets (publications × subscribers).
    pub deliveries: u64,
    /// write/writev system calls on subscribed sockets (backlog writes included).
    pub writes: u64,
    /// utime + stime from the first publication to the last delivery write.
    pub cpu_seconds: f64,
}

impl FloorStats {
    pub fn to_json(&self, cfg: &FloorConfig) -> Value {
        let per = |n: u64| (n > 0).then(|| round3(self.cpu_seconds * 1e6 / n as f64));
        serde_json::json!({
            "write": cfg.mode.as_str(),
            "batch": if cfg.mode == WriteMode::PerFlush { cfg.batch } else { 1 },
            "connections": self.connections,
            "publications": self.publications,
            "deliveries": self.deliveries,
            "writes": self.writes,
            "cpu_seconds": round3(self.cpu_seconds),
            "cpu_us_per_delivery": per(self.deliveries),
            "cpu_us_per_write": per(self.writes),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn self_cpu() -> f64 {
    crate::procstat::read_pid(std::process::id())
        .map(|(ticks, _)| {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            ticks as f64 / hz
        })
        .unwrap_or(0.0)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

const LISTENER: Token = Token(usize::MAX);

#[derive(PartialEq)]
enum Kind {
    /// No request head yet.
    New,
    Http,
    Ws,
}

struct FConn {
    stream: TcpStream,
    kind: Kind,
    inbuf: Vec<u8>,
    /// Bytes not yet written.
    backlog: Vec<u8>,
    subscribed: bool,
    /// Drop once the backlog is written (close echoed, bad request).
    closing: bool,
}

pub struct Floor {
    cfg: FloorConfig,
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<FConn>>,
    free: Vec<usize>,
    /// Slots of subscribed sockets, in subscription order.
    subscribers: Vec<usize>,
    /// per-flush: frames waiting, and when the oldest arrived.
    pending: Vec<Vec<u8>>,
    pending_since: Option<Instant>,
    seq: u64,
    stats: FloorStats,
    cpu_first: Option<f64>,
    scratch: Vec<u8>,
}

impl Floor {
    pub fn bind(cfg: FloorConfig) -> io::Result<Floor> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Floor {
            cfg,
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            subscribers: Vec::new(),
            pending: Vec::new(),
            pending_since: None,
            seq: 0,
            stats: FloorStats::default(),
            cpu_first: None,
            scratch: vec![0; 64 * 1024],
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM/SIGINT or the lifetime ends; returns what it did.
    pub fn run(mut self) -> FloorStats {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
        let end = Instant::now() + self.cfg.lifetime;
        let mut events = Events::with_capacity(1024);
        while !STOP.load(Relaxed) && Instant::now() < end {
            let mut timeout = Duration::from_millis(100);
            if let Some(since) = self.pending_since {
                timeout =
                    timeout.min((since + self.cfg.flush).saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("floorwriter: poll: {e}");
                    break;
                }
            }
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    self.accept();
                } else {
                    let slot = ev.token().0;
                    if ev.is_writable() {
                        self.write_backlog(slot);
                    }
                    if ev.is_readable() || ev.is_read_closed() {
                        self.read(slot);
                    }
                }
            }
            if let Some(since) = self.pending_since {
                if since.elapsed() >= self.cfg.flush {
                    self.flush_pending();
                }
            }
        }
        self.stats
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(slot),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.free.push(slot);
                        continue;
                    }
                    self.conns[slot] = Some(FConn {
                        stream,
                        kind: Kind::New,
                        inbuf: Vec::new(),
                        backlog: Vec::new(),
                        subscribed: false,
                        closing: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("floorwriter: accept: {e}");
                    return;
                }
            }
        }
    }

    fn drop_conn(&mut self, slot: usize) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if c.subscribed {
                self.subscribers.retain(|&s| s != slot);
            }
            self.free.push(slot);
        }
    }

    fn read(&mut self, slot: usize) {
        let mut eof = false;
        {
            let Some(c) = self.conns[slot].as_mut() else {
                return;
            };
            loop {
                match c.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        if !self.handle_input(slot) || eof {
            self.drop_conn(slot);
        }
    }

    /// Handles what is buffered; false: drop the connection.
    fn handle_input(&mut self, slot: usize) -> bool {
        loop {
            let Some(c) = self.conns[slot].as_mut() else {
                return false;
            };
            match c.kind {
                Kind::New | Kind::Http => {
                    let Some(end) = memchr::memmem::find(&c.inbuf, b"\r\n\r\n").map(|i| i + 4)
                    else {
                        return c.inbuf.len() < 64 * 1024;
                    };
                    let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
                    if head.starts_with("GET ") && header(&head, "upgrade").is_some() {
                        let key = header(&head, "sec-websocket-key").unwrap_or("").to_string();
                        c.inbuf.drain(..end);
                        c.kind = Kind::Ws;
                        let mut out = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                            ws::accept_key(&key)
                        )
                        .into_bytes();
                        ws::encode_frame(
                            &mut out,
                            ws::OP_TEXT,
                            format!(
                                r#"{{"type":"authenticated","connectionId":"floor-{slot}","heartbeatMs":30000}}"#
                            )
                            .as_bytes(),
                            None,
                        );
                        self.stats.connections += 1;
                        self.send(slot, &out, false);
                        continue;
                    }
                    let len: usize = header(&head, "content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if c.inbuf.len() < end + len {
                        return true;
                    }
                    c.kind = Kind::Http;
                    let body: Vec<u8> = c.inbuf[end..end + len].to_vec();
                    c.inbuf.drain(..end + len);
                    let close = header(&head, "connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    let (status, answer, frame) = self.http(&head, &body);
                    let out = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{answer}",
                        answer.len(),
                        if close { "connection: close\r\n" } else { "" },
                    );
                    // like shardcast, accept (202) first and deliver after: the publisher
                    // is not held up by the fan-out
                    self.send(slot, out.as_bytes(), close);
                    if let Some(frame) = frame {
                        self.publish(frame);
                    }
                    if close {
                        return true;
                    }
                }
                Kind::Ws => {
                    let mut inbuf = std::mem::take(&mut c.inbuf);
                    let mut pos = 0;
                    let mut keep = true;
                    while keep {
                        match ws::decode_frame(&mut inbuf[pos..]) {
                            Decode::Frame(f, used) => {
                                let (op, payload) = (f.opcode, f.payload.to_vec());
                                pos += used;
                                keep = self.on_frame(slot, op, &payload);
                            }
                            Decode::Incomplete { .. } => break,
                            Decode::Error(_) => keep = false,
                        }
                    }
                    inbuf.drain(..pos);
                    if let Some(c) = self.conns[slot].as_mut() {
                        c.inbuf = inbuf;
                    }
                    return keep;
                }
            }
        }
    }

    /// A client frame; false: drop the connection.
    fn on_frame(&mut self, slot: usize, op: u8, payload: &[u8]) -> bool {
        match op {
            ws::OP_TEXT => {
                let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("subscribeEvents") => {
                        let answer = serde_json::json!({
                            "type": "subscribedEvents",
                            "requestId": v["requestId"],
                            "subscriptions": v["subscriptions"],
                        })
                        .to_string();
                        let mut f = Vec::new();
                        ws::encode_frame(&mut f, ws::OP_TEXT, answer.as_bytes(), None);
                        self.send(slot, &f, false);
                        if let Some(c) = self.conns[slot].as_mut() {
                            if !c.subscribed {
                                c.subscribed = true;
                                self.subscribers.push(slot);
                            }
                        }
                    }
                    Some("ping") => {
                        let mut f = Vec::new();
                        ws::encode_frame(&mut f, ws::OP_TEXT, br#"{"type":"pong"}"#, None);
                        self.send(slot, &f, false);
                    }
                    _ => {}
                }
                true
            }
            ws::OP_PING => {
                let mut f = Vec::new();
                ws::encode_frame(&mut f, ws::OP_PONG, payload, None);
                self.send(slot, &f, false);
                true
            }
            ws::OP_CLOSE => {
                if let Some(c) = self.conns[slot].as_mut() {
                    if c.subscribed {
                        c.subscribed = false;
                        self.subscribers.retain(|&s| s != slot);
                    }
                }
                let code = ws::close_code(payload);
                let mut f = Vec::new();
                let echo = code.to_be_bytes();
                ws::encode_frame(
                    &mut f,
                    ws::OP_CLOSE,
                    if code == 1005 { &[] } else { &echo },
                    None,
                );
                self.send(slot, &f, true);
                true
            }
            _ => true,
        }
    }

    /// A REST request: (status line, body, the frame to deliver).
    fn http(&mut self, head: &str, body: &[u8]) -> (&'static str, String, Option<Vec<u8>>) {
        if head.starts_with("GET /healthz ") {
            return ("200 OK", r#"{"status":"ok"}"#.into(), None);
        }
        if !head.starts_with("POST /api/v1/publish ") {
            return (
                "404 Not Found",
                r#"{"error":{"code":"NOT_FOUND"}}"#.into(),
                None,
            );
        }
        self.seq += 1;
        let seq = self.seq;
        let now_ms = crate::util::unix_nanos() / 1_000_000;
        match event_for(body, seq, now_ms) {
            Ok(msg) => {
                let mut frame = Vec::with_capacity(msg.len() + 10);
                ws::encode_frame(&mut frame, ws::OP_TEXT, &msg, None);
                (
                    "202 Accepted",
                    format!(r#"{{"accepted":1,"firstSeq":{seq},"lastSeq":{seq}}}"#),
                    Some(frame),
                )
            }
            Err(e) => (
                "400 Bad Request",
                serde_json::json!({"error": {"code": "BAD_MESSAGE", "message": e}}).to_string(),
                None,
            ),
        }
    }

    fn publish(&mut self, frame: Vec<u8>) {
        if self.cpu_first.is_none() {
            self.cpu_first = Some(self_cpu());
        }
        self.stats.publications += 1;
        match self.cfg.mode {
            WriteMode::PerMessage => {
                for i in 0..self.subscribers.len() {
                    let slot = self.subscribers[i];
                    self.deliver(slot, &[&frame]);
                }
                self.stats.deliveries += self.subscribers.len() as u64;
                self.note_cpu();
            }
            WriteMode::PerFlush => {
                if self.pending.is_empty() {
                    self.pending_since = Some(Instant::now());
                }
                self.pending.push(frame);
                if self.pending.len() >= self.cfg.batch {
                    self.flush_pending();
                }
            }
        }
    }

    fn flush_pending(&mut self) {
        self.pending_since = None;
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let parts: Vec<&[u8]> = pending.iter().map(Vec::as_slice).collect();
        for i in 0..self.subscribers.len() {
            let slot = self.subscribers[i];
            self.deliver(slot, &parts);
        }
        self.stats.deliveries += (self.subscribers.len() * pending.len()) as u64;
        self.note_cpu();
    }

    fn note_cpu(&mut self) {
        if let Some(first) = self.cpu_first {
            self.stats.cpu_seconds = self_cpu() - first;
        }
    }

    /// One write (writev for several parts) to a subscribed socket; what it does not take
    /// goes to the backlog.
    fn deliver(&mut self, slot: usize, parts: &[&[u8]]) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        if !c.backlog.is_empty() {
            for p in parts {
                c.backlog.extend_from_slice(p);
            }
            return;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        self.stats.writes += 1;
        let written = loop {
            let r = if slices.len() == 1 {
                c.stream.write(parts[0])
            } else {
                c.stream.write_vectored(&slices)
            };
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(_) => {
                    self.drop_conn(slot);
                    return;
                }
            }
        };
        if written < total {
            let mut skip = written;
            for p in parts {
                if skip >= p.len() {
                    skip -= p.len();
                } else {
                    c.backlog.extend_from_slice(&p[skip..]);
                    skip = 0;
                }
            }
        }
    }

    /// Control traffic (handshakes, answers): written or queued behind the backlog.
    fn send(&mut self, slot: usize, bytes: &[u8], then_close: bool) {
        if let Some(c) = self.conns[slot].as_mut() {
            c.backlog.extend_from_slice(bytes);
            c.closing |= then_close;
        }
        self.write_backlog(slot);
    }

    fn write_backlog(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        let counted = c.subscribed;
        let mut done = 0;
        let mut broken = false;
        while done < c.backlog.len() {
            if counted {
                self.stats.writes += 1;
            }
            match c.stream.write(&c.backlog[done..]) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        c.backlog.drain(..done);
        if broken || (c.closing && c.backlog.is_empty()) {
            self.drop_conn(slot);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn cfg(s: &str) -> Result<FloorConfig, String> {
        match parse_args(&args(s))? {
            FloorCommand::Run(c) => Ok(c),
            FloorCommand::Help => panic!("help"),
        }
    }

    #[test]
    fn flags() {
        let c = cfg("").unwrap();
        assert_eq!(c.mode, WriteMode::PerMessage);
        assert_eq!(c.listen, "127.0.0.1:8090".parse().unwrap());
        let c = cfg("--listen 127.0.0.1:9 --write per-flush --batch 32 --flush-ms 5 --lifetime 2m")
            .unwrap();
        assert_eq!((c.mode, c.batch), (WriteMode::PerFlush, 32));
        assert_eq!(c.flush, Duration::from_millis(5));
        assert_eq!(c.lifetime, Duration::from_secs(120));
        assert!(matches!(
            parse_args(&args("--help")),
            Ok(FloorCommand::Help)
        ));
        for (bad, flag) in [
            ("--bogus 1", "--bogus"),
            ("--write fast", "--write"),
            ("--write per-flush --batch 0", "--batch"),
            ("--write per-flush --batch 5000", "--batch"),
            ("--batch 4", "--batch only applies"),
            ("--listen nowhere", "--listen"),
            ("--lifetime 3x", "--lifetime"),
            ("--listen", "--listen needs a value"),
            ("--write per-flush --write per-flush", "more than once"),
            ("stray", "unexpected argument"),
        ] {
            let e = cfg(bad).unwrap_err();
            assert!(e.contains(flag), "{bad}: {e}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_774_513_662_123), "2026-03-26T08:27:42.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn event_bytes_match_the_contract_and_the_scanner() {
        let body = crate::publish::publish_body("load/fanout", 42, 200);
        let e = event_for(body.as_bytes(), 7, 1_774_513_662_123).unwrap();
        let text = String::from_utf8(e.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"type":"event","subscriptionIds":["load"],"eventType":"tick","path":"load/fanout","data":{"t":42,"pad":""#
            ),
            "{text}"
        );
        assert!(text.ends_with(r#","timestamp":"2026-03-26T08:27:42.123Z","seq":7}"#));
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["data"]["t"], 42);
        let mut ts = Vec::new();
        let s = crate::scan::Scanner::new().scan(&e, |t| ts.push(t));
        assert_eq!((s.events, ts), (1, vec![42]));
        assert!(event_for(b"[]", 1, 0).is_err());
        assert!(event_for(br#"{"path":"a","eventType":"b"}"#, 1, 0).is_err());
    }
}
