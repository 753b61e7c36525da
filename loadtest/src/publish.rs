//! The publisher: `POST {http}/api/v1/publish` at a fixed rate over keep-alive HTTP/1.1
//! connections, each body carrying its send time `t` (Unix nanos) for latency.
//!
//! The schedule is open-loop: publication n is due at start + n/rate whatever happened to
//! the ones before, so a slow server does not lower the offered rate silently (the report
//! shows the achieved rate). It ends with the window, also when it is behind. At least 4
//! connections share the schedule (more above 8000/s, at most 8), so a slow response holds
//! up only its connection's share.
//!
//! `--target nats`: one connection to nats-server writes `PUB <subject> <len>` with the
//! same body bytes (all publications due at a moment in one write); a final `PING`/`PONG`
//! confirms that the server processed every `PUB` before it. The connection is plain TCP
//! to `--nats-url` when given, else a WebSocket to `--url` (the subscribers' endpoint):
//! the same protocol bytes, each write one masked binary frame.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::nats::WsControl;
use crate::net::Endpoint;
use crate::scenario::Scenario;
use crate::util::{unix_nanos, Rng};
use crate::ws;

/// Publications per second one connection is asked to carry before another is added.
const PER_CONNECTION_RATE: f64 = 2000.0;
/// Connections sharing the schedule at least: each waits for its response before its next
/// request, so with one, a response slower than 1/rate would hold the whole schedule back
/// (and a busy server would be offered less than a NATS server, whose PUBs get none).
const MIN_PUBLISHERS: usize = 4;
const MAX_PUBLISHERS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one request/response may take in all (a server trickling bytes included).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

pub struct PublishPlan {
    pub http: Endpoint,
    pub api_key: String,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
    pub scenario: Arc<dyn Scenario>,
    /// `--target nats`: publish with `PUB` to this nats-server instead of over REST.
    pub nats: Option<NatsPublish>,
}

/// Where a `--target nats` publisher connects.
#[derive(Debug, Clone)]
pub enum NatsPublish {
    /// nats-server's client port (`--nats-url`).
    Tcp(std::net::SocketAddr),
    /// nats-server's WebSocket endpoint (`--url`): the same protocol inside frames.
    WebSocket(Endpoint),
}

#[derive(Debug, Default)]
pub struct PublishResult {
    /// Accepted (2xx) publications per path.
    pub published_per_path: Vec<u64>,
    /// Failures by kind ("HTTP 400", "io: ...").
    pub errors: BTreeMap<String, u64>,
}

impl PublishResult {
    pub fn published(&self) -> u64 {
        self.published_per_path.iter().sum()
    }
}

pub struct Publisher {
    handles: Vec<JoinHandle<PublishResult>>,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    paths: usize,
}

impl Publisher {
    pub fn start(plan: PublishPlan) -> Publisher {
        let n = if plan.nats.is_some() {
            1
        } else {
            ((plan.rate / PER_CONNECTION_RATE).ceil() as usize)
                .clamp(MIN_PUBLISHERS, MAX_PUBLISHERS)
        };
        let paths = plan.scenario.path_count();
        let plan = Arc::new(plan);
        let published = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let handles = (0..n)
            .map(|k| {
                let (plan, published, stop) =
                    (Arc::clone(&plan), Arc::clone(&published), Arc::clone(&stop));
                std::thread::Builder::new()
                    .name(format!("publisher-{k}"))
                    .spawn(move || match &plan.nats {
                        Some(to) => nats_publish_loop(&plan, to, start, &published, &stop),
                        None => publish_loop(&plan, k, n, start, &published, &stop),
                    })
                    .expect("spawn a publisher thread")
            })
            .collect();
        Publisher {
            handles,
            published,
            stop,
            paths,
        }
    }

    /// Accepted publications so far.
    pub fn published(&self) -> u64 {
        self.published.load(Relaxed)
    }

    /// Waits for the schedule to end (or stops it now with `stop_now`), returns the counts.
    pub fn finish(self, stop_now: bool) -> PublishResult {
        if stop_now {
            self.stop.store(true, Relaxed);
        }
        let mut total = PublishResult {
            published_per_path: vec![0; self.paths],
            errors: BTreeMap::new(),
        };
        for h in self.handles {
            match h.join() {
                Ok(r) => {
                    for (a, b) in total
                        .published_per_path
                        .iter_mut()
                        .zip(&r.published_per_path)
                    {
                        *a += b;
                    }
                    for (k, v) in r.errors {
                        *total.errors.entry(k).or_default() += v;
                    }
                }
                Err(_) => *total.errors.entry("publisher panicked".into()).or_default() += 1,
            }
        }
        total
    }
}

fn publish_loop(
    plan: &PublishPlan,
    k: usize,
    n: usize,
    start: Instant,
    published: &AtomicU64,
    stop: &AtomicBool,
) -> PublishResult {
    let mut res = PublishResult {
        published_per_path: vec![0; plan.scenario.path_count()],
        errors: BTreeMap::new(),
    };
    if plan.rate <= 0.0 {
        return res;
    }
    let end = start + plan.duration;
    let paths: Vec<String> = (0..plan.scenario.path_count())
        .map(|i| plan.scenario.publish_path(i))
        .collect();
    let mut conn: Option<HttpConn> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut seq = k as u64;
    let mut req = Vec::with_capacity(plan.payload + 512);
    loop {
        if stop.load(Relaxed) {
            break;
        }
        if !wait_turn(start, end, seq, plan.rate) {
            break;
        }
        let path_idx = plan.scenario.path_of_publication(seq);
        seq += n as u64;
        if conn.is_none() {
            match HttpConn::connect(plan.http.addr) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    count_error(&mut res, &mut reported, format!("connect: {e}"), "");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        build_request(&mut req, plan, &paths[path_idx], unix_nanos());
        match c.round_trip(&req) {
            Ok((status, keep, body)) => {
                if (200..300).contains(&status) {
                    res.published_per_path[path_idx] += 1;
                    published.fetch_add(1, Relaxed);
                } else {
                    let b = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
                    count_error(&mut res, &mut reported, format!("HTTP {status}"), &b);
                }
                if !keep {
                    conn = None;
                }
            }
            Err(e) => {
                count_error(&mut res, &mut reported, format!("io: {e}"), "");
                conn = None;
            }
        }
    }
    res
}

/// Most publications written at once when the schedule is behind.
const NATS_BATCH: usize = 1000;

fn nats_publish_loop(
    plan: &PublishPlan,
    to: &NatsPublish,
    start: Instant,
    published: &AtomicU64,
    stop: &AtomicBool,
) -> PublishResult {
    let paths = plan.scenario.path_count();
    let mut res = PublishResult {
        published_per_path: vec![0; paths],
        errors: BTreeMap::new(),
    };
    if plan.rate <= 0.0 {
        return res;
    }
    let end = start + plan.duration;
    let subjects: Vec<String> = (0..paths)
        .map(|i| plan.scenario.nats_pub_subject(i))
        .collect();
    let body_paths: Vec<String> = (0..paths).map(|i| plan.scenario.publish_path(i)).collect();
    let mut conn: Option<NatsConn> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut seq = 0u64;
    let mut buf = Vec::with_capacity(plan.payload + 64);
    let mut batch = vec![0u64; paths];
    loop {
        if stop.load(Relaxed) {
            break;
        }
        if !wait_turn(start, end, seq, plan.rate) {
            break;
        }
        if conn.as_ref().is_some_and(NatsConn::closed) {
            let why = conn.take().map(NatsConn::close).unwrap_or_default();
            count_error(&mut res, &mut reported, format!("nats: {why}"), "");
        }
        if conn.is_none() {
            match NatsConn::connect(to) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    count_error(&mut res, &mut reported, format!("nats connect: {e}"), "");
                    // publications due meanwhile are skipped, not queued
                    std::thread::sleep(Duration::from_millis(100));
                    let late = Instant::now().duration_since(start).as_secs_f64() * plan.rate;
                    seq = seq.max(late as u64);
                    continue;
                }
            }
        }
        // everything due by now, in one write
        buf.clear();
        batch.iter_mut().for_each(|b| *b = 0);
        let now = Instant::now();
        let mut n = 0;
        while n < NATS_BATCH {
            let due = due_at(start, seq, plan.rate);
            if (n > 0 && due > now) || due >= end {
                break;
            }
            let p = plan.scenario.path_of_publication(seq);
            let body = publish_body(&body_paths[p], unix_nanos(), plan.payload);
            crate::nats::push_pub(&mut buf, &subjects[p], body.as_bytes());
            batch[p] += 1;
            seq += 1;
            n += 1;
        }
        let c = conn.as_ref().expect("connected");
        match c.write(&buf) {
            Ok(()) => {
                for (a, b) in res.published_per_path.iter_mut().zip(&batch) {
                    *a += b;
                }
                published.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                *res.errors.entry(format!("nats write: {e}")).or_default() += n as u64 - 1;
                count_error(&mut res, &mut reported, format!("nats write: {e}"), "");
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        // the server handles a connection's protocol in order: its PONG means every PUB
        // before the PING was processed
        if let Err(e) = c.confirm(REQUEST_DEADLINE) {
            count_error(&mut res, &mut reported, format!("nats: {e}"), "");
        }
        for e in c.close_errors() {
            count_error(&mut res, &mut reported, format!("nats -ERR {e}"), "");
        }
    }
    res
}

/// A publisher's connection to nats-server: writes under a lock (the reader thread
/// answers the server's `PING`s on it), the reader counts `PONG`s and notes `-ERR`s.
struct NatsConn {
    writer: Arc<Mutex<NatsWriter>>,
    pongs: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// The writing side: NATS protocol bytes as they are (TCP), or as one masked binary frame
/// per write (WebSocket; RFC 6455 requires client frames to be masked).
struct NatsWriter {
    stream: TcpStream,
    ws: Option<WsOut>,
    /// Our close frame is out: the server's close that follows is its echo, not an error.
    closing: bool,
}

struct WsOut {
    rng: Rng,
    /// The frame being written, kept between writes so that publishing allocates nothing.
    frame: Vec<u8>,
}

impl NatsWriter {
    /// Writes protocol bytes (WebSocket: as one binary frame).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.ws {
            None => self.stream.write_all(bytes),
            Some(w) => {
                w.frame.clear();
                let mut mask = [0u8; 4];
                w.rng.fill(&mut mask);
                ws::encode_frame(&mut w.frame, ws::OP_BINARY, bytes, Some(mask));
                self.stream.write_all(&w.frame)
            }
        }
    }

    /// WebSocket only: a control frame (a pong, our close).
    fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let Some(w) = &mut self.ws else {
            return Ok(());
        };
        let mut mask = [0u8; 4];
        w.rng.fill(&mut mask);
        let mut f = Vec::with_capacity(payload.len() + 8);
        ws::encode_frame(&mut f, opcode, payload, Some(mask));
        self.stream.write_all(&f)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One read into `chunk`; the end of the stream is an error (`what` says where).
fn read_some(stream: &mut TcpStream, chunk: &mut [u8], what: &str) -> io::Result<usize> {
    match stream.read(chunk)? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed {what}"),
        )),
        n => Ok(n),
    }
}

impl NatsConn {
    fn connect(to: &NatsPublish) -> io::Result<NatsConn> {
        let addr = match to {
            NatsPublish::Tcp(a) => *a,
            NatsPublish::WebSocket(e) => e.addr,
        };
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut chunk = [0u8; 4096];
        // bytes read and not yet unwrapped: after the upgrade, what followed its head
        let mut raw = Vec::new();
        let (mut unwrap, ws_out) = match to {
            NatsPublish::Tcp(_) => (None, None),
            NatsPublish::WebSocket(e) => {
                let mut rng = Rng::from_os();
                let key = ws::random_key(&mut rng);
                stream.write_all(&ws::handshake_request(&e.host_header, &e.path, &key))?;
                let head = loop {
                    match ws::check_handshake_response(&raw, &key) {
                        Ok(Some(n)) => break n,
                        Ok(None) => {}
                        Err(e) => return Err(invalid(format!("websocket {e}"))),
                    }
                    let n = read_some(&mut stream, &mut chunk, "during the upgrade")?;
                    raw.extend_from_slice(&chunk[..n]);
                };
                raw.drain(..head);
                let out = WsOut {
                    rng,
                    frame: Vec::new(),
                };
                (Some(crate::nats::WsUnwrap::default()), Some(out))
            }
        };
        // the NATS stream so far, and control frames that came with it
        let mut head = Vec::new();
        let mut control = Vec::new();
        let mut take = |bytes: &[u8], head: &mut Vec<u8>, control: &mut Vec<WsControl>| {
            match &mut unwrap {
                None => head.extend_from_slice(bytes),
                Some(u) => u
                    .feed(bytes, head, control)
                    .map_err(|e| invalid(e.to_string()))?,
            }
            match control.iter().find_map(|c| match c {
                WsControl::Close(code) => Some(*code),
                WsControl::Ping(_) => None,
            }) {
                Some(code) => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("websocket closed ({code}) before INFO"),
                )),
                None => Ok(()),
            }
        };
        take(&raw, &mut head, &mut control)?;
        // INFO comes first
        let info_end = loop {
            if let Some(i) = memchr::memchr(b'\n', &head) {
                break i + 1;
            }
            if head.len() > crate::nats::MAX_LINE {
                return Err(invalid("no INFO line".into()));
            }
            let n = read_some(&mut stream, &mut chunk, "before INFO")?;
            take(&chunk[..n], &mut head, &mut control)?;
        };
        if !head[..4.min(head.len())].eq_ignore_ascii_case(b"INFO") {
            return Err(invalid(format!(
                "expected INFO, got {:?}",
                String::from_utf8_lossy(&head[..info_end.min(80)])
            )));
        }
        let rest = head.split_off(info_end);
        let read_half = stream.try_clone()?;
        let mut writer = NatsWriter {
            stream,
            ws: ws_out,
            closing: false,
        };
        for c in &control {
            if let WsControl::Ping(p) = c {
                writer.send_control(ws::OP_PONG, p)?;
            }
        }
        let mut hello = crate::nats::CONNECT.to_vec();
        hello.extend_from_slice(crate::nats::PING);
        writer.send(&hello)?;
        read_half.set_read_timeout(None)?;
        let writer = Arc::new(Mutex::new(writer));
        let pongs = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let (writer, pongs, closed, errors) = (
                Arc::clone(&writer),
                Arc::clone(&pongs),
                Arc::clone(&closed),
                Arc::clone(&errors),
            );
            let input = Input {
                stream: read_half,
                unwrap,
            };
            std::thread::Builder::new()
                .name("nats-pub-reader".into())
                .spawn(move || nats_reader(input, rest, &writer, &pongs, &closed, &errors))?
        };
        let c = NatsConn {
            writer,
            pongs,
            closed,
            errors,
            reader: Some(reader),
        };
        // the first PONG: CONNECT was accepted
        c.wait_pongs(1, IO_TIMEOUT)?;
        Ok(c)
    }

    fn closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    fn write(&self, buf: &[u8]) -> io::Result<()> {
        self.writer.lock().expect("not poisoned").send(buf)
    }

    fn wait_pongs(&self, n: u64, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        while self.pongs.load(Relaxed) < n {
            if self.closed() {
                let e = self.errors.lock().expect("not poisoned").join("; ");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("connection closed {e}"),
                ));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no PONG"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// PING, and wait for its PONG.
    fn confirm(&self, limit: Duration) -> io::Result<()> {
        let want = self.pongs.load(Relaxed) + 1;
        self.write(crate::nats::PING)?;
        self.wait_pongs(want, limit)
    }

    fn close_errors(mut self) -> Vec<String> {
        self.shutdown();
        std::mem::take(&mut *self.errors.lock().expect("not poisoned"))
    }

    /// Closes, returning why the connection ended (for an error message).
    fn close(mut self) -> String {
        self.shutdown();
        let e = self.errors.lock().expect("not poisoned").join("; ");
        if e.is_empty() {
            "connection closed".into()
        } else {
            format!("connection closed: {e}")
        }
    }

    fn shutdown(&mut self) {
        if self.reader.is_none() {
            return; // done already (close, then drop)
        }
        {
            let mut w = self.writer.lock().expect("not poisoned");
            // WebSocket: say goodbye first, so the server logs a close, not a broken
            // connection (best effort: the connection may be gone already)
            w.closing = true;
            let _ = w.send_control(ws::OP_CLOSE, &1000u16.to_be_bytes());
            let _ = w.stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for NatsConn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The reading side of a publisher's connection.
struct Input {
    stream: TcpStream,
    /// WebSocket: takes the NATS stream out of the frames.
    unwrap: Option<crate::nats::WsUnwrap>,
}

fn nats_reader(
    mut input: Input,
    first: Vec<u8>,
    writer: &Mutex<NatsWriter>,
    pongs: &AtomicU64,
    closed: &AtomicBool,
    errors: &Mutex<Vec<String>>,
) {
    let note = |e: String| errors.lock().expect("not poisoned").push(e);
    let mut parser = crate::nats::Parser::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut data = first;
    let mut control = Vec::new();
    'read: loop {
        let mut want_pong = 0;
        let r = parser.feed(&data, |item| match item {
            crate::nats::Item::Ping => want_pong += 1,
            crate::nats::Item::Pong => {
                pongs.fetch_add(1, Relaxed);
            }
            crate::nats::Item::Err(e) => note(String::from_utf8_lossy(e).into_owned()),
            _ => {}
        });
        if let Err(e) = r {
            note(e.to_string());
            break;
        }
        for _ in 0..want_pong {
            let _ = writer.lock().expect("not poisoned").send(crate::nats::PONG);
        }
        for c in control.drain(..) {
            match c {
                WsControl::Ping(p) => {
                    let _ = writer
                        .lock()
                        .expect("not poisoned")
                        .send_control(ws::OP_PONG, &p);
                }
                WsControl::Close(code) => {
                    if !writer.lock().expect("not poisoned").closing {
                        note(format!("websocket closed ({code})"));
                    }
                    break 'read;
                }
            }
        }
        data.clear();
        match input.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => match &mut input.unwrap {
                None => data.extend_from_slice(&chunk[..n]),
                Some(u) => {
                    if let Err(e) = u.feed(&chunk[..n], &mut data, &mut control) {
                        note(e.to_string());
                        break;
                    }
                }
            },
        }
    }
    closed.store(true, Relaxed);
}

fn count_error(res: &mut PublishResult, reported: &mut Vec<String>, kind: String, body: &str) {
    if !reported.contains(&kind) {
        eprintln!("\nloadtest: publish failed: {kind} {body}");
        reported.push(kind.clone());
    }
    *res.errors.entry(kind).or_default() += 1;
}

/// The publish body for `path` at time `t`, padded with `x` to `payload` bytes (never
/// shorter than the body without padding).
pub fn publish_body(path: &str, t: u64, payload: usize) -> String {
    let head = format!(
        r#"{{"path":{},"eventType":"tick","data":{{"t":{t},"pad":""#,
        serde_json::Value::from(path)
    );
    let tail = "\"}}";
    let pad = payload.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

fn build_request(out: &mut Vec<u8>, plan: &PublishPlan, path: &str, t: u64) {
    let body = publish_body(path, t, plan.payload);
    out.clear();
    let _ = write!(
        out,
        "POST {}/api/v1/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        plan.http.path,
        plan.http.host_header,
        plan.api_key,
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
}

/// A blocking keep-alive HTTP/1.1 client connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl HttpConn {
    pub fn connect(addr: std::net::SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
            deadline: Instant::now(),
        })
    }

    /// Sends one request, reads one response: (status, keep-alive, body).
    pub fn round_trip(&mut self, req: &[u8]) -> io::Result<(u16, bool, Vec<u8>)> {
        self.deadline = Instant::now() + REQUEST_DEADLINE;
        self.stream.write_all(req)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too long",
                ));
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let (status, keep, length, chunked) = parse_response_head(&head)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad response head"))?;
        let mut body = self.buf.split_off(head_end);
        if chunked {
            loop {
                if let Some(b) = dechunk(&body) {
                    return Ok((status, keep, b));
                }
                self.buf.clear();
                self.fill()?;
                body.extend_from_slice(&self.buf);
            }
        }
        match length {
            Some(n) => {
                while body.len() < n {
                    self.buf.clear();
                    self.fill()?;
                    body.extend_from_slice(&self.buf);
                }
                body.truncate(n);
                Ok((status, keep, body))
            }
            None => {
                // no length: the body runs to the end of the connection
                loop {
                    self.buf.clear();
                    match self.fill() {
                        Ok(()) => body.extend_from_slice(&self.buf),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok((status, false, body))
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response took longer than 10 s",
            ));
        }
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// (status, keep-alive, content-length, chunked)
pub fn parse_response_head(head: &str) -> Option<(u16, bool, Option<usize>, bool)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut keep = version == "HTTP/1.1";
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = Some(0);
    }
    Some((status, keep, length, chunked))
}

/// The body of a complete chunked encoding, or None while incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = memchr::memmem::find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..i]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            // trailers end with an empty line
            memchr::memmem::find(b, b"\r\n")?;
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// When publication `seq` is due on a fixed-rate schedule starting at `start`.
fn due_at(start: Instant, seq: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(seq as f64 / rate)
}

/// Sleeps until publication `seq` is due; `false` when the window is over. The schedule
/// ends with the window, also when it is behind (the achieved rate then shows it).
fn wait_turn(start: Instant, end: Instant, seq: u64, rate: f64) -> bool {
    let due = due_at(start, seq, rate);
    let now = Instant::now();
    if due >= end || now >= end {
        return false;
    }
    if due > now {
        std::thread::sleep(due - now);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_sized_and_valid() {
        for payload in [0, 50, 64, 128, 1000] {
            let b = publish_body("load/fanout", 1_774_512_862_123_456_789, payload);
            let min = publish_body("load/fanout", 1_774_512_862_123_456_789, 0).len();
            assert_eq!(b.len(), payload.max(min), "payload {payload}");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["path"], "load/fanout");
            assert_eq!(v["eventType"], "tick");
            assert_eq!(v["data"]["t"], 1_774_512_862_123_456_789u64);
        }
    }

    #[test]
    fn body_t_is_found_by_the_scanner() {
        let b = publish_body("load/p3", 42, 200);
        let event = format!(
            r#"{{"type":"event","subscriptionIds":["load"],"data":{}}}"#,
            serde_json::from_str::<serde_json::Value>(&b).unwrap()["data"]
        );
        let mut ts = Vec::new();
        let s = crate::scan::Scanner::new().scan(event.as_bytes(), |t| ts.push(t));
        assert_eq!(s.events, 1);
        assert_eq!(ts, vec![42]);
    }

    #[test]
    fn response_heads() {
        assert_eq!(
            parse_response_head("HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\n\r\n"),
            Some((202, true, Some(12), false))
        );
        assert_eq!(
            parse_response_head(
                "HTTP/1.1 400 Bad\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            Some((400, false, None, true))
        );
        assert_eq!(
            parse_response_head("HTTP/1.0 200 OK\r\n\r\n"),
            Some((200, false, None, false))
        );
        assert_eq!(parse_response_head("garbage"), None);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk(b"5\r\nhello\r\n0\r\n\r\n"), Some(b"hello".to_vec()));
        assert_eq!(dechunk(b"5\r\nhel"), None);
        assert_eq!(dechunk(b"5\r\nhello\r\n"), None);
    }

    #[test]
    fn round_trip_against_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            for _ in 0..2 {
                loop {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"}}") {
                        break;
                    }
                }
                s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 14\r\n\r\n{\"accepted\":1}")
                    .unwrap();
                got.clear();
            }
        });
        let mut c = HttpConn::connect(addr).unwrap();
        let plan = PublishPlan {
            http: crate::net::parse_url(&format!("http://{addr}"), "http").unwrap(),
            api_key: "k".into(),
            rate: 1.0,
            duration: Duration::from_secs(1),
            payload: 100,
            scenario: Arc::new(crate::scenario::Fanout),
            nats: None,
        };
        let mut req = Vec::new();
        for _ in 0..2 {
            build_request(&mut req, &plan, "load/fanout", 1);
            let (status, keep, body) = c.round_trip(&req).unwrap();
            assert_eq!(status, 202);
            assert!(keep);
            assert_eq!(body, b"{\"accepted\":1}");
        }
        srv.join().unwrap();
    }
}
