//! soak's small populations, each on plain blocking threads (tens of connections at a
//! few hundred messages per second, where a full parse per message is affordable and
//! the accounting can be exact): a blocking WebSocket client, the filtered subscribers
//! and their publisher, the live-query client, the entity writer, the service instances
//! and the task publisher. Each keeps what the final checks need: what the server
//! acknowledged, and what arrived.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::conn::{url_encode, ws_target};
use crate::net::Endpoint;
use crate::publish::HttpConn;
use crate::scenario::services::{parse_publish_answer, SeqRanges};
use crate::util::Rng;
use crate::ws;

/// How long a blocking read waits before the thread looks at its stop flag again.
const POLL: Duration = Duration::from_millis(100);
/// From TCP connect to the answer of the first request (subscribe, live queries).
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The collection the entity writer writes and the live queries watch.
pub const COLLECTION: &str = "soakent";
/// Live query q watches the entities whose `g` is `q mod GROUPS`.
pub const GROUPS: u64 = 4;
/// Filtered subscriptions per connection.
pub const FILTERS_PER_CONN: u64 = 20;

/// A blocking WebSocket client connection (text messages, masked frames).
pub struct Ws {
    s: TcpStream,
    buf: Vec<u8>,
    /// A fragmented message being put together.
    partial: Option<Vec<u8>>,
    rng: Rng,
    /// A slow reader: bytes per second it may read, since when, and how many it read.
    limit: Option<(f64, Instant, u64)>,
}

impl Ws {
    /// Connects, upgrades with `?token=..&options`, waits for `authenticated`.
    pub fn connect(ep: &Endpoint, token: &str, options: &str) -> Result<Ws, String> {
        let s = TcpStream::connect_timeout(&ep.addr, SETUP_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut rng = Rng::from_os();
        let key = ws::random_key(&mut rng);
        let target = ws_target(&ep.path, &url_encode(token), options);
        let mut w = Ws {
            s,
            buf: Vec::new(),
            partial: None,
            rng,
            limit: None,
        };
        w.s.write_all(&ws::handshake_request(&ep.host_header, &target, &key))
            .map_err(|e| format!("upgrade: {e}"))?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            match ws::check_handshake_response(&w.buf, &key) {
                Ok(Some(n)) => {
                    w.buf.drain(..n);
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() > deadline {
                return Err("timeout while upgrading".into());
            }
            w.fill().map_err(|e| format!("upgrade: {e}"))?;
        }
        w.wait_for(|m| m["type"] == "authenticated", deadline)?;
        Ok(w)
    }

    /// From now on read at most `bytes_per_sec` (`None`: as fast as data comes), with a
    /// receive buffer of `rcvbuf` bytes so that the kernel does not read ahead for us.
    pub fn limit_reads(&mut self, bytes_per_sec: Option<f64>, rcvbuf: usize) {
        self.limit = bytes_per_sec.map(|r| (r, Instant::now(), 0));
        if rcvbuf > 0 {
            let v = rcvbuf as libc::c_int;
            // SAFETY: a valid socket and a c_int option value of the size given.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&self.s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 65536];
        let mut want = chunk.len();
        if let Some((rate, since, read)) = self.limit {
            let allowed = (since.elapsed().as_secs_f64() * rate) as u64;
            if allowed <= read {
                std::thread::sleep(Duration::from_millis(10));
                return Ok(false);
            }
            want = want.min((allowed - read) as usize);
        }
        match self.s.read(&mut chunk[..want]) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Ok(n) => {
                if let Some(l) = &mut self.limit {
                    l.2 += n as u64;
                }
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn send(&mut self, text: &str) -> io::Result<()> {
        let mut mask = [0u8; 4];
        self.rng.fill(&mut mask);
        let mut out = Vec::with_capacity(text.len() + 14);
        ws::encode_frame(&mut out, ws::OP_TEXT, text.as_bytes(), Some(mask));
        self.s.write_all(&out)
    }

    fn send_control(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut mask = [0u8; 4];
        self.rng.fill(&mut mask);
        let mut out = Vec::new();
        ws::encode_frame(&mut out, opcode, payload, Some(mask));
        self.s.write_all(&out)
    }

    /// The next whole text message; `Ok(None)` when none arrived within [`POLL`].
    /// Answers WebSocket pings and `{"type":"ping"}`; a close frame is an error.
    pub fn recv(&mut self) -> Result<Option<Value>, String> {
        loop {
            if let Some(text) = self.take_message()? {
                let v: Value = serde_json::from_slice(&text)
                    .map_err(|e| format!("a message that is not JSON: {e}"))?;
                if v["type"] == "ping" {
                    self.send(r#"{"type":"pong"}"#)
                        .map_err(|e| format!("pong: {e}"))?;
                    continue;
                }
                return Ok(Some(v));
            }
            if !self.fill().map_err(|e| e.to_string())? {
                return Ok(None);
            }
        }
    }

    fn take_message(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            let (fin, opcode, payload, used) = match ws::decode_frame(&mut self.buf) {
                ws::Decode::Frame(f, used) => (f.fin, f.opcode, f.payload.to_vec(), used),
                ws::Decode::Incomplete { .. } => return Ok(None),
                ws::Decode::Error(e) => return Err(format!("protocol error: {e}")),
            };
            self.buf.drain(..used);
            match opcode {
                ws::OP_PING => self
                    .send_control(ws::OP_PONG, &payload)
                    .map_err(|e| format!("pong: {e}"))?,
                ws::OP_PONG => {}
                ws::OP_CLOSE => {
                    return Err(format!(
                        "closed by the server ({})",
                        ws::close_code(&payload)
                    ))
                }
                ws::OP_CONT => {
                    let Some(mut p) = self.partial.take() else {
                        return Err("continuation without a start".into());
                    };
                    p.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(p));
                    }
                    self.partial = Some(p);
                }
                _ if fin => return Ok(Some(payload)),
                _ => self.partial = Some(payload),
            }
        }
    }

    /// Reads until a message `pred` accepts (an `error` message fails), by `deadline`.
    pub fn wait_for(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        deadline: Instant,
    ) -> Result<Value, String> {
        loop {
            if let Some(m) = self.recv()? {
                if pred(&m) {
                    return Ok(m);
                }
                if m["type"] == "error" {
                    return Err(format!("error {}: {}", m["code"], m["message"]));
                }
            }
            if Instant::now() > deadline {
                return Err("timeout waiting for the server's answer".into());
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.send_control(ws::OP_CLOSE, &1000u16.to_be_bytes());
    }
}

/// The messages in `v`: itself, or those of a `batch` (framing array).
pub fn unbatch(v: Value) -> Vec<Value> {
    match v {
        Value::Object(mut m) if m.get("type").and_then(Value::as_str) == Some("batch") => {
            match m.remove("messages") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            }
        }
        v => vec![v],
    }
}

/// Shared flags of the soak: `window_over` ends publishing and writing, `stop` ends the
/// clients.
#[derive(Default)]
pub struct Flags {
    pub window_over: AtomicBool,
    pub stop: AtomicBool,
}

/// The harness's live counters of the blocking parts (cumulative; read by the sampler).
#[derive(Default)]
pub struct Counters {
    pub slow_delivered: AtomicU64,
    pub slow_dropped: AtomicU64,
    pub filtered_expected: AtomicU64,
    pub filtered_delivered: AtomicU64,
    pub filtered_mismatched: AtomicU64,
    pub filtered_dropped: AtomicU64,
    pub entity_writes: AtomicU64,
    pub lq_added: AtomicU64,
    pub lq_updated: AtomicU64,
    pub lq_removed: AtomicU64,
    pub tasks_acknowledged: AtomicU64,
    pub tasks_received: AtomicU64,
    pub tasks_duplicates: AtomicU64,
    /// Tasks whose `taskId` an instance had received before (the service's own dedupe).
    pub tasks_duplicate_ids: AtomicU64,
    pub tasks_redelivered: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Blocking clients whose connection ended before `stop` (each one also in `errors`).
    pub client_failures: AtomicU64,
}

/// Errors by kind, each with a count (the report's `errors`).
pub type Errors = Arc<Mutex<HashMap<String, u64>>>;

pub fn count_error(errors: &Errors, kind: String) {
    let mut e = errors.lock().expect("not poisoned");
    if !e.contains_key(&kind) {
        eprintln!("loadtest: soak: {kind}");
    }
    *e.entry(kind).or_default() += 1;
}

/// What every blocking part needs.
#[derive(Clone)]
pub struct Ctx {
    pub ws: Endpoint,
    pub http: Endpoint,
    pub api_key: String,
    pub secret: String,
    /// The connection options as a URL query (the harness's own connections).
    pub options: String,
    /// The same options for the Rust client (the live-query part).
    pub client_options: shardcast_client::ConnectionOptions,
    pub token_ttl: u64,
    pub flags: Arc<Flags>,
    pub counters: Arc<Counters>,
    pub errors: Errors,
}

impl Ctx {
    fn user_token(&self, i: u64) -> String {
        crate::jwt::client_token(&self.secret, i, crate::util::unix_secs(), self.token_ttl)
    }

    fn service_token(&self, i: u64, group: &str) -> String {
        let claims = crate::scenario::services::service_claims(
            &format!("soak-svc-{i}"),
            group,
            crate::util::unix_secs() + self.token_ttl,
        );
        crate::jwt::sign_hs256(&claims, self.secret.as_bytes())
    }

    /// One request on a fresh `Connection: close` connection: status and body.
    pub fn http(&self, method: &str, target: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut c = HttpConn::connect(self.http.addr)?;
        let req = http_request(&self.http, &self.api_key, method, target, body, false);
        let (status, _, body) = c.round_trip(&req)?;
        Ok((status, body))
    }

    /// A blocking part failed for good: counted (the run fails on it) and said why.
    fn client_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        self.counters.client_failures.fetch_add(1, Relaxed);
        count_error(&self.errors, format!("{what}: {e}"));
    }

    fn stopped(&self) -> bool {
        self.flags.stop.load(Relaxed)
    }

    fn writing(&self) -> bool {
        !self.flags.window_over.load(Relaxed) && !self.stopped()
    }
}

pub fn http_request(
    http: &Endpoint,
    api_key: &str,
    method: &str,
    target: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {}{target} HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        http.path.trim_end_matches('/'),
        http.host_header,
        body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        },
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A keep-alive HTTP connection that reconnects once when the server closed it.
struct Http {
    ep: Endpoint,
    api_key: String,
    conn: Option<HttpConn>,
}

impl Http {
    fn new(ctx: &Ctx) -> Http {
        Http {
            ep: ctx.http.clone(),
            api_key: ctx.api_key.clone(),
            conn: None,
        }
    }

    fn call(&mut self, method: &str, target: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let req = http_request(&self.ep, &self.api_key, method, target, body, true);
        let mut c = match self.conn.take() {
            Some(c) => c,
            None => HttpConn::connect(self.ep.addr)?,
        };
        let (status, keep, body) = c.round_trip(&req)?;
        if keep {
            self.conn = Some(c);
        }
        Ok((status, body))
    }
}

/// Paces an open-loop schedule of `rate` items per second in ticks: how many are due now.
struct Pace {
    start: Instant,
    rate: f64,
    sent: u64,
}

impl Pace {
    fn new(rate: f64) -> Pace {
        Pace {
            start: Instant::now(),
            rate,
            sent: 0,
        }
    }

    /// Items due and not yet taken, at most `max`; sleeps a tick first when none is.
    fn due(&mut self, max: u64) -> u64 {
        let due = (self.start.elapsed().as_secs_f64() * self.rate) as u64;
        if due <= self.sent {
            std::thread::sleep(Duration::from_millis(20));
            return 0;
        }
        let n = (due - self.sent).min(max);
        self.sent += n;
        n
    }
}

// ---------------------------------------------------------------------------------------
// Slow readers

/// A slow reader of `soak/slow`: reads at most `bytes_per_sec` during the window (then as
/// fast as it can, so that what the server holds arrives), counting events and the
/// `dropped` of `QUEUE_OVERFLOW` warnings. Reading at a fixed byte rate (not overflow's
/// pauses) keeps it predictably behind its stream and yet reading: the server's
/// `{"type":"ping"}` waits behind its send buffer and one flush, and must reach the reader
/// within the pong timeout or the server closes it (4003).
pub fn slow_reader(ctx: Ctx, i: u64, bytes_per_sec: f64, ready: Arc<AtomicU64>) {
    let setup = || -> Result<Ws, String> {
        let mut w = Ws::connect(&ctx.ws, &ctx.user_token(1_000_000 + i), &ctx.options)?;
        w.send(r#"{"type":"subscribeEvents","requestId":"s","subscriptions":[{"id":"slow","path":"soak/slow"}]}"#)
            .map_err(|e| e.to_string())?;
        let m = w.wait_for(
            |m| m["type"] == "subscribedEvents",
            Instant::now() + SETUP_TIMEOUT,
        )?;
        if let Some(r) = m.get("rejected") {
            return Err(format!("rejected: {r}"));
        }
        w.limit_reads(Some(bytes_per_sec), 64 * 1024);
        Ok(w)
    };
    let mut w = match setup() {
        Ok(w) => w,
        Err(e) => {
            ctx.client_failed("slow reader", &e);
            return;
        }
    };
    ready.fetch_add(1, Relaxed);
    let c = &ctx.counters;
    let mut limited = true;
    while !ctx.stopped() {
        if limited && ctx.flags.window_over.load(Relaxed) {
            w.limit_reads(None, 0);
            limited = false;
        }
        match w.recv() {
            Ok(Some(v)) => {
                for m in unbatch(v) {
                    match m["type"].as_str() {
                        Some("event") => {
                            c.slow_delivered.fetch_add(1, Relaxed);
                        }
                        Some("warning") => {
                            c.slow_dropped
                                .fetch_add(m["dropped"].as_u64().unwrap_or(0), Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                ctx.client_failed("slow reader", &e);
                return;
            }
        }
    }
    w.close();
}

// ---------------------------------------------------------------------------------------
// Filtered subscriptions

/// Filter of subscription `f{j}`: each publication matches exactly one subscription
/// (its `k`), and none when its `kind` is `c`.
pub fn filter_of(j: u64) -> String {
    format!("k == {j} && kind in ['a', 'b']")
}

/// The `data` of filtered publication `n` of `subs` subscriptions, and whether it should
/// match (one subscription) or not (none).
pub fn filtered_data(n: u64, subs: u64) -> (Value, bool) {
    let kind = ["a", "b", "c"][(n % 3) as usize];
    (json!({"k": n % subs, "kind": kind, "n": n}), kind != "c")
}

/// Whether a delivered filtered event is right: listed for exactly the subscription its
/// `k` selects, and of a kind the filters take.
pub fn filtered_event_ok(ev: &Value) -> bool {
    let ids = ev["subscriptionIds"].as_array();
    let k = ev["data"]["k"].as_u64();
    let kind_ok = matches!(ev["data"]["kind"].as_str(), Some("a" | "b"));
    match (ids, k) {
        (Some(ids), Some(k)) => {
            kind_ok && ids.len() == 1 && ids[0].as_str() == Some(format!("f{k}").as_str())
        }
        _ => false,
    }
}

/// One connection holding subscriptions `first..first+count` on `soak/flt`.
pub fn filtered_conn(ctx: Ctx, conn: u64, first: u64, count: u64, ready: Arc<AtomicU64>) {
    let setup = || -> Result<Ws, String> {
        let mut w = Ws::connect(&ctx.ws, &ctx.user_token(2_000_000 + conn), &ctx.options)?;
        let subs: Vec<Value> = (first..first + count)
            .map(|j| json!({"id": format!("f{j}"), "path": "soak/flt", "filter": filter_of(j)}))
            .collect();
        w.send(&json!({"type":"subscribeEvents","requestId":"f","subscriptions":subs}).to_string())
            .map_err(|e| e.to_string())?;
        let m = w.wait_for(
            |m| m["type"] == "subscribedEvents",
            Instant::now() + SETUP_TIMEOUT,
        )?;
        if let Some(r) = m.get("rejected") {
            return Err(format!("filtered subscriptions rejected: {r}"));
        }
        Ok(w)
    };
    let mut w = match setup() {
        Ok(w) => w,
        Err(e) => {
            ctx.client_failed("filtered subscriber", &e);
            return;
        }
    };
    ready.fetch_add(1, Relaxed);
    let c = &ctx.counters;
    while !ctx.stopped() {
        match w.recv() {
            Ok(Some(v)) => {
                for m in unbatch(v) {
                    match m["type"].as_str() {
                        Some("event") if filtered_event_ok(&m) => {
                            c.filtered_delivered.fetch_add(1, Relaxed);
                        }
                        Some("event") => {
                            c.filtered_mismatched.fetch_add(1, Relaxed);
                        }
                        Some("warning") => {
                            c.filtered_dropped
                                .fetch_add(m["dropped"].as_u64().unwrap_or(0), Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                ctx.client_failed("filtered subscriber", &e);
                return;
            }
        }
    }
    w.close();
}

/// Publishes to `soak/flt/x` at `rate`, in batches of what is due.
pub fn filtered_publisher(ctx: Ctx, rate: f64, subs: u64) {
    let mut http = Http::new(&ctx);
    let mut pace = Pace::new(rate);
    let mut n = 0u64;
    while ctx.writing() {
        let k = pace.due(1000);
        if k == 0 {
            continue;
        }
        let mut matching = 0;
        let events: Vec<Value> = (n..n + k)
            .map(|i| {
                let (data, m) = filtered_data(i, subs);
                matching += u64::from(m);
                json!({"path": "soak/flt/x", "eventType": "f", "data": data})
            })
            .collect();
        n += k;
        let body = json!({ "events": events }).to_string();
        match http.call("POST", "/api/v1/publish", body.as_bytes()) {
            Ok((s, b)) if parse_publish_answer(s, &b).is_some_and(|a| a.accepted == k) => {
                ctx.counters.filtered_expected.fetch_add(matching, Relaxed);
            }
            Ok((s, b)) => {
                ctx.counters.publish_failures.fetch_add(1, Relaxed);
                count_error(
                    &ctx.errors,
                    format!("filtered publish: HTTP {s} {}", String::from_utf8_lossy(&b)),
                );
            }
            Err(e) => {
                ctx.counters.publish_failures.fetch_add(1, Relaxed);
                count_error(&ctx.errors, format!("filtered publish: {e}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Entities and live queries

/// The body of entity write `n` over `k` ids: id `e{n mod k}`, and a group `g` that
/// moves every id to the next live query once per two rounds (so the queries see
/// additions, updates and removals).
pub fn entity_write(n: u64, k: u64) -> (u64, Value) {
    let id = n % k;
    let g = (id + n / (2 * k)) % GROUPS;
    (id, json!({"i": n, "g": g}))
}

/// Writes `soakent/e{n mod k}` at `rate` over one keep-alive connection, one at a time,
/// so an id's last acknowledged write is its final state. Returns, per id, that write's
/// `i` (`None`: not written by this run, or a write whose outcome is unknown came last).
pub fn entity_writer(ctx: Ctx, rate: f64, k: u64) -> Vec<Option<u64>> {
    let mut last: Vec<Option<u64>> = vec![None; k as usize];
    let mut http = Http::new(&ctx);
    let mut pace = Pace::new(rate);
    let mut n = 0u64;
    while ctx.writing() {
        if pace.due(1) == 0 {
            continue;
        }
        let (id, body) = entity_write(n, k);
        let target = format!("/api/v1/entities/{COLLECTION}/e{id}");
        match http.call("PUT", &target, body.to_string().as_bytes()) {
            Ok((200, b)) if memchr::memmem::find(&b, b"\"seq\"").is_some() => {
                last[id as usize] = Some(n);
                ctx.counters.entity_writes.fetch_add(1, Relaxed);
            }
            other => {
                last[id as usize] = None;
                ctx.counters.publish_failures.fetch_add(1, Relaxed);
                let why = match other {
                    Ok((s, b)) => format!("HTTP {s} {}", String::from_utf8_lossy(&b)),
                    Err(e) => e.to_string(),
                };
                count_error(&ctx.errors, format!("entity write: {why}"));
            }
        }
        n += 1;
    }
    last
}

/// What one live query holds, as its messages built it: node id → `i`.
pub type LqSet = HashMap<String, u64>;

/// One connection holding the live queries `lq{q}` of `qs` over `soakent` (filter
/// `g == q mod 4`; in cluster mode each node's connection holds some of them),
/// on the workspace's Rust client (`clients/rust`, on a current-thread tokio runtime in
/// this thread): each query's [`shardcast_client::LiveView`] is what a client library
/// ends up holding, and the check compares it with the REST answer. These 4 queries at
/// 100 writes/s are off every measured path, so using the client here costs the soak
/// nothing. Publishes each query's set to `sets_out[q]` (a few times a second) until
/// `stop`; `sets_out` holds a set for every query of the run.
pub fn live_queries(
    ctx: Ctx,
    qs: Vec<u64>,
    ready: Arc<AtomicU64>,
    sets_out: Arc<Mutex<Vec<LqSet>>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ctx.client_failed("live queries: no runtime", &e);
            return;
        }
    };
    let failed = rt.block_on(live_queries_on_client(&ctx, &qs, &ready, &sets_out));
    if let Err(e) = failed {
        ctx.client_failed("live queries", &e);
    }
}

/// A view's nodes as the check's set: node id → `i`.
fn view_set(view: &shardcast_client::LiveView) -> LqSet {
    view.nodes()
        .iter()
        .filter_map(|d| Some((d["id"].as_str()?.to_string(), d["i"].as_u64()?)))
        .collect()
}

async fn live_queries_on_client(
    ctx: &Ctx,
    qs: &[u64],
    ready: &AtomicU64,
    sets_out: &Arc<Mutex<Vec<LqSet>>>,
) -> Result<(), String> {
    use shardcast_client::{Auth, Client, ClientOptions, LiveChange, LiveQuerySpec};
    let url = format!("ws://{}{}", ctx.ws.host_header, ctx.ws.path);
    let mut options = ClientOptions::new(url, Auth::token(ctx.user_token(3_000_000)));
    options.options = ctx.client_options.clone();
    options.request_timeout = SETUP_TIMEOUT;
    // A whole connection attempt (TCP, handshake, authenticated) gets as long as every
    // other setup step of the soak on a loaded server.
    options.connect_timeout = SETUP_TIMEOUT;
    let client = Client::connect(options).await.map_err(|e| e.to_string())?;
    let mut queries = Vec::with_capacity(qs.len());
    for &q in qs {
        let spec = LiveQuerySpec {
            edge: COLLECTION.to_string(),
            filter: Some(format!("g == {}", q % GROUPS)),
            order_by: None,
            limit: Some(1000),
        };
        let lq = client
            .live_query(format!("lq{q}"), spec)
            .await
            .map_err(|e| format!("lq{q}: {e}"))?;
        queries.push((q as usize, lq));
    }
    ready.fetch_add(1, Relaxed);
    // One task per query on this thread's runtime; each keeps its set in `sets_out`.
    let mut tasks = tokio::task::JoinSet::new();
    for (q, mut lq) in queries {
        let (ctx, sets_out) = (ctx.clone(), sets_out.clone());
        tasks.spawn(async move {
            let mut copied = Instant::now();
            let mut dirty = true;
            while !ctx.stopped() {
                let change = tokio::time::timeout(Duration::from_millis(100), lq.changed()).await;
                match change {
                    Ok(Some(LiveChange::Reset { capped: true, .. })) => {
                        return Err(format!("lq{q} is capped"))
                    }
                    Ok(Some(c)) => {
                        let counter = match c {
                            LiveChange::Added(_) => Some(&ctx.counters.lq_added),
                            LiveChange::Updated(_) => Some(&ctx.counters.lq_updated),
                            LiveChange::Removed(_) => Some(&ctx.counters.lq_removed),
                            _ => None,
                        };
                        if let Some(counter) = counter {
                            counter.fetch_add(1, Relaxed);
                        }
                        dirty = true;
                    }
                    Ok(None) => return Err(format!("lq{q} ended (the client closed)")),
                    Err(_) => {} // no change in 100 ms: look at `stop` again
                }
                // The checker reads a copy; a fresh one a few times a second is enough
                // (it retries).
                if dirty && copied.elapsed() >= Duration::from_millis(250) {
                    sets_out.lock().expect("not poisoned")[q] = view_set(lq.view());
                    (copied, dirty) = (Instant::now(), false);
                }
            }
            sets_out.lock().expect("not poisoned")[q] = view_set(lq.view());
            Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = result.and(Err(e)),
            Err(e) => result = result.and(Err(format!("a live-query task failed: {e}"))),
        }
    }
    client.close();
    result
}

/// The server's answer for live query q's filter: id → `i`, all pages.
pub fn rest_set(ctx: &Ctx, q: u64) -> Result<LqSet, String> {
    let mut out = LqSet::new();
    let mut cursor: Option<String> = None;
    let filter = url_encode(&format!("g == {}", q % GROUPS));
    for _ in 0..100 {
        let mut target = format!("/api/v1/entities/{COLLECTION}?filter={filter}&limit=1000");
        if let Some(c) = &cursor {
            target.push_str(&format!("&cursor={}", url_encode(c)));
        }
        let (s, b) = ctx.http("GET", &target, b"").map_err(|e| e.to_string())?;
        if s != 200 {
            return Err(format!("GET {target}: HTTP {s}"));
        }
        let v: Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
        for d in v["data"].as_array().into_iter().flatten() {
            if let (Some(id), Some(i)) = (d["id"].as_str(), d["i"].as_u64()) {
                out.insert(id.to_string(), i);
            }
        }
        match v["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
    Err("more than 100 pages".into())
}

/// Ids whose set entries differ between `a` and `b` (missing on either side, or another
/// `i`).
pub fn set_diff(a: &LqSet, b: &LqSet) -> usize {
    let ids: HashSet<&String> = a.keys().chain(b.keys()).collect();
    ids.into_iter()
        .filter(|id| a.get(*id) != b.get(*id))
        .count()
}

// ---------------------------------------------------------------------------------------
// Services

/// The tasks the instances received, by publication seq and by task id (what a service
/// would deduplicate on).
#[derive(Default)]
pub struct TaskBook {
    pub seen: HashSet<u64>,
    pub ids: HashSet<String>,
}

/// Service instance `i` of `group`: subscribes `work` to `soak/job` (the group's durable
/// subscription), completes every task it gets, one `taskComplete` per read burst.
pub fn service_instance(
    ctx: Ctx,
    i: u64,
    group: String,
    ready: Arc<AtomicU64>,
    book: Arc<Mutex<TaskBook>>,
) {
    let setup = || -> Result<Ws, String> {
        let mut w = Ws::connect(&ctx.ws, &ctx.service_token(i, &group), &ctx.options)?;
        w.send(r#"{"type":"subscribeEvents","requestId":"s1","subscriptions":[{"id":"work","path":"soak/job"}]}"#)
            .map_err(|e| e.to_string())?;
        let m = w.wait_for(
            |m| m["type"] == "subscribedEvents",
            Instant::now() + SETUP_TIMEOUT,
        )?;
        if let Some(r) = m.get("rejected") {
            return Err(format!("durable subscription rejected: {r}"));
        }
        Ok(w)
    };
    let mut w = match setup() {
        Ok(w) => w,
        Err(e) => {
            ctx.client_failed("service instance", &e);
            return;
        }
    };
    ready.fetch_add(1, Relaxed);
    let c = &ctx.counters;
    let mut acks: Vec<String> = Vec::new();
    let mut oldest = Instant::now();
    while !ctx.stopped() {
        let got = match w.recv() {
            Ok(g) => g,
            Err(e) => {
                ctx.client_failed("service instance", &e);
                return;
            }
        };
        for m in got.map(unbatch).unwrap_or_default() {
            let Some(task) = m["taskId"].as_str() else {
                if m["type"] == "error" {
                    count_error(&ctx.errors, format!("service instance: error {m}"));
                }
                continue;
            };
            c.tasks_received.fetch_add(1, Relaxed);
            if m["attempt"].as_u64().unwrap_or(1) > 1 {
                c.tasks_redelivered.fetch_add(1, Relaxed);
            }
            {
                let mut b = book.lock().expect("not poisoned");
                if let Some(seq) = m["seq"].as_u64() {
                    if !b.seen.insert(seq) {
                        c.tasks_duplicates.fetch_add(1, Relaxed);
                    }
                }
                if !b.ids.insert(task.to_string()) {
                    c.tasks_duplicate_ids.fetch_add(1, Relaxed);
                }
            }
            if acks.is_empty() {
                oldest = Instant::now();
            }
            acks.push(task.to_string());
        }
        // one acknowledgement per burst, well below the 64 KiB message limit
        if !acks.is_empty() && (acks.len() >= 500 || oldest.elapsed() >= POLL) {
            let msg = json!({"type":"taskComplete","taskIds":acks}).to_string();
            if let Err(e) = w.send(&msg) {
                ctx.client_failed("service instance: taskComplete", &e);
                return;
            }
            acks.clear();
        }
    }
    w.close();
}

/// Publishes task events to `soak/job/x` at `rate` in batches of what is due; returns the
/// seq ranges the server acknowledged (202).
pub fn task_publisher(ctx: Ctx, rate: f64) -> SeqRanges {
    let mut ranges = SeqRanges::default();
    let mut http = Http::new(&ctx);
    let mut pace = Pace::new(rate);
    let mut n = 0u64;
    while ctx.writing() {
        let k = pace.due(1000);
        if k == 0 {
            continue;
        }
        let events: Vec<Value> = (n..n + k)
            .map(|i| json!({"path": "soak/job/x", "eventType": "job", "data": {"n": i}}))
            .collect();
        n += k;
        let body = json!({ "events": events }).to_string();
        match http.call("POST", "/api/v1/publish", body.as_bytes()) {
            Ok((s, b)) => match parse_publish_answer(s, &b) {
                Some(a) if a.accepted == k => {
                    match (a.first_seq, a.last_seq) {
                        (Some(f), Some(l)) if l + 1 - f == k => ranges.add(f, l),
                        _ => count_error(
                            &ctx.errors,
                            format!(
                                "task publish: an answer without a seq range of {k}: {}",
                                String::from_utf8_lossy(&b)
                            ),
                        ),
                    }
                    ctx.counters.tasks_acknowledged.fetch_add(k, Relaxed);
                }
                _ => {
                    ctx.counters.publish_failures.fetch_add(1, Relaxed);
                    count_error(
                        &ctx.errors,
                        format!("task publish: HTTP {s} {}", String::from_utf8_lossy(&b)),
                    );
                }
            },
            Err(e) => {
                ctx.counters.publish_failures.fetch_add(1, Relaxed);
                count_error(&ctx.errors, format!("task publish: {e}"));
            }
        }
    }
    ranges
}

/// Acknowledged task seqs that no instance received (`lost`), and received seqs of the
/// run (inside the ranges).
pub fn task_accounting(ranges: &mut SeqRanges, seen: &HashSet<u64>) -> (u64, u64) {
    let in_run = seen.iter().filter(|s| ranges.contains(**s)).count() as u64;
    (ranges.covered().saturating_sub(in_run), in_run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_filtered_publication_matches_one_subscription_or_none() {
        let subs = 7;
        let mut matched = 0;
        for n in 0..300 {
            let (data, should) = filtered_data(n, subs);
            let hits: Vec<u64> = (0..subs)
                .filter(|&j| {
                    // the filter's meaning, evaluated here by hand
                    data["k"] == j && matches!(data["kind"].as_str(), Some("a" | "b"))
                })
                .collect();
            assert_eq!(hits.len(), usize::from(should), "n={n}");
            matched += u64::from(should);
            assert!(filter_of(data["k"].as_u64().unwrap()).contains(&format!("k == {}", n % subs)));
        }
        assert_eq!(matched, 200);
        let ok = json!({"type":"event","subscriptionIds":["f3"],"data":{"k":3,"kind":"a"}});
        assert!(filtered_event_ok(&ok));
        for bad in [
            json!({"type":"event","subscriptionIds":["f4"],"data":{"k":3,"kind":"a"}}),
            json!({"type":"event","subscriptionIds":["f3"],"data":{"k":3,"kind":"c"}}),
            json!({"type":"event","subscriptionIds":["f3","f4"],"data":{"k":3,"kind":"b"}}),
            json!({"type":"event","data":{"k":3,"kind":"b"}}),
        ] {
            assert!(!filtered_event_ok(&bad), "{bad}");
        }
    }

    #[test]
    fn entity_groups_move_every_two_rounds() {
        let k = 10;
        // round 0 and 1: id 3 in group 3; rounds 2 and 3: group 0
        assert_eq!(entity_write(3, k), (3, json!({"i":3,"g":3})));
        assert_eq!(entity_write(13, k).1["g"], 3);
        assert_eq!(entity_write(23, k).1["g"], 0);
        assert_eq!(entity_write(33, k).1["g"], 0);
        // every group holds about k/4 ids at any time
        let per: Vec<usize> = (0..GROUPS)
            .map(|g| (0..k).filter(|&n| entity_write(n, k).1["g"] == g).count())
            .collect();
        assert!(per.iter().all(|&c| (2..=3).contains(&c)), "{per:?}");
    }

    #[test]
    fn sets_differ_by_id_and_value() {
        let a: LqSet = [("e1".to_string(), 11), ("e9".to_string(), 9)].into();
        assert_eq!(set_diff(&a, &a.clone()), 0);
        let other: LqSet = [("e1".to_string(), 10), ("e2".to_string(), 2)].into();
        assert_eq!(set_diff(&a, &other), 3, "e1 differs, e2 and e9 on one side");
    }

    #[test]
    fn tasks_are_counted_against_the_acknowledged_ranges() {
        let mut r = SeqRanges::default();
        r.add(10, 14);
        r.add(20, 21);
        let seen: HashSet<u64> = [10, 11, 12, 14, 20, 21, 99].into();
        // 13 is missing; 99 is not the run's
        assert_eq!(task_accounting(&mut r, &seen), (1, 6));
    }

    #[test]
    fn batches_are_unpacked() {
        let b = json!({"type":"batch","messages":[{"type":"event"},{"type":"warning"}]});
        assert_eq!(unbatch(b).len(), 2);
        assert_eq!(unbatch(json!({"type":"event"})).len(), 1);
    }
}
