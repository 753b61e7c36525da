//! Test harness: starts the real `shardcast` binary on a loopback port with a config of
//! the test's choosing, and talks to it as clients do (HTTP/1.1 and WebSocket).
//!
//! Nothing is mocked. Every wait is on a condition with a deadline, never a bare sleep.
#![allow(dead_code)]

pub mod channels;
pub mod proxy;
pub mod redis;
pub mod services;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const API_KEY: &str = "test-api-key";

/// A running server process; killed and cleaned up on drop.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn temp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "shardcast-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

impl Server {
    /// Starts a server; `extra` is TOML appended to the base config (sections allowed:
    /// the base config has only top-level keys and `[auth]`, so put other sections'
    /// keys under their own headers).
    pub fn start(extra: &str) -> Server {
        Server::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Server {
        let dir = temp_dir();
        // SHARDCAST_TEST_IO=epoll runs the same tests over the epoll write path (the
        // default is io_uring).
        let io = std::env::var("SHARDCAST_TEST_IO").unwrap_or_else(|_| "uring".into());
        // A free port can be handed to a test running beside this one before the server
        // binds it: the server then refuses it ("already listening") and another is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let cfg = format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nio = \"{io}\"\n{extra}\n",
                dir.join("data").display()
            );
            let cfg = if cfg.contains("[auth]") {
                cfg
            } else {
                format!("{cfg}\n[auth]\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n")
            };
            // A refused attempt's `Server` removed the directory when it was dropped.
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(dir.join("shardcast.toml"), cfg).expect("write config");
            let _ = std::fs::remove_file(dir.join("server.log"));
            let mut s = Server {
                port,
                dir: dir.clone(),
                child: None,
            };
            match s.try_spawn(env) {
                Ok(()) => return s,
                Err(log) if attempt < 5 && log.contains("already listening") => continue,
                Err(log) => panic!("{log}"),
            }
        }
    }

    /// Starts the binary on this server's config and data (a restart after
    /// [`Server::kill`]); waits until it is healthy.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        if let Err(log) = self.try_spawn(env) {
            panic!("{log}");
        }
    }

    /// [`Server::spawn`], or why the server did not come up.
    fn try_spawn(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("shardcast.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn shardcast"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("server exited at start ({status}): {}", self.log()));
            }
            if let Some((200, body)) = self.try_http("GET", "/healthz", None, &[]) {
                // Ours, not a process that had the port first: the node id it answers is
                // the one this server keeps in its data_dir (unless the test set one).
                let configured = env.iter().any(|(k, _)| *k == "SHARDCAST_CLUSTER__NODE_ID")
                    || std::fs::read_to_string(self.dir.join("shardcast.toml"))
                        .is_ok_and(|c| c.contains("node_id"));
                let kept = std::fs::read_to_string(self.dir.join("data").join("node_id"));
                let node = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["node"].as_str().map(str::to_string));
                if configured || kept.is_ok_and(|k| Some(k.trim().to_string()) == node) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("server not healthy in time: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the process gets no chance to flush or close anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// One HTTP/1.1 request on a fresh connection; `None` if it could not connect.
    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        s.write_all(&bytes).ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        Some((status, body))
    }

    /// An HTTP request whose answer is JSON.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        auth: Option<&str>,
    ) -> (u16, Value) {
        let raw = body.map(|b| serde_json::to_vec(b).unwrap());
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let (status, text) = self
            .try_http(method, path, raw.as_deref(), &headers)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Publishes one event with the api key; returns its seq.
    pub fn publish(&self, path: &str, event_type: &str, data: Value) -> u64 {
        let (st, body) = self.http(
            "POST",
            "/api/v1/publish",
            Some(&json!({"path": path, "eventType": event_type, "data": data})),
            Some(&format!("apikey {API_KEY}")),
        );
        assert_eq!(st, 202, "publish: {body}");
        body["firstSeq"].as_u64().expect("firstSeq")
    }

    /// Publishes a batch with the api key; returns (firstSeq, lastSeq).
    pub fn publish_batch(&self, events: Vec<Value>) -> (u64, u64) {
        let (st, body) = self.http(
            "POST",
            "/api/v1/publish",
            Some(&json!({ "events": events })),
            Some(&format!("apikey {API_KEY}")),
        );
        assert_eq!(st, 202, "publish: {body}");
        (
            body["firstSeq"].as_u64().unwrap(),
            body["lastSeq"].as_u64().unwrap(),
        )
    }

    /// `PUT /api/v1/entities/{collection}/{id}` with the api key; asserts 200 and
    /// returns the write's seq.
    pub fn put_entity(&self, collection: &str, id: &str, body: Value) -> u64 {
        let (st, a) = self.http(
            "PUT",
            &format!("/api/v1/entities/{collection}/{id}"),
            Some(&body),
            Some(&apikey()),
        );
        assert_eq!(st, 200, "PUT {collection}/{id}: {a}");
        a["seq"].as_u64().expect("seq")
    }

    /// `DELETE /api/v1/entities/{collection}/{id}` with the api key; asserts 200.
    pub fn delete_entity(&self, collection: &str, id: &str) {
        let (st, a) = self.http(
            "DELETE",
            &format!("/api/v1/entities/{collection}/{id}"),
            None,
            Some(&apikey()),
        );
        assert_eq!(st, 200, "DELETE {collection}/{id}: {a}");
    }

    /// The value of a metric series whose line starts with `prefix` (name and labels).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.try_http("GET", "/metrics", None, &[])?;
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .reduce(|a, b| a + b)
    }

    /// The sum of the series of metric `name` whose labels include `label` (e.g.
    /// `reason="queue_overflow"`), over all other labels (shards).
    pub fn metric_where(&self, name: &str, label: &str) -> Option<f64> {
        let (_, text) = self.try_http("GET", "/metrics", None, &[])?;
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .reduce(|a, b| a + b)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `Authorization` value of the test api key.
pub fn apikey() -> String {
    format!("apikey {API_KEY}")
}

/// A signed HS256 token.
pub fn token(sub: &str, role: &str, scopes: &[&str]) -> String {
    token_with(
        json!({"sub": sub, "role": role, "scopes": scopes, "exp": now() + 3600}),
        SECRET,
    )
}

pub fn token_with(claims: Value, secret: &str) -> String {
    shardcast::auth::jwt::sign(secret.as_bytes(), &claims)
}

pub fn now() -> u64 {
    shardcast::time::unix_secs()
}

/// Whether this is a CI run, by the one rule every skip-or-fail check uses (here, in
/// `loadtest/tests` and in `clients/js/test/support/server.mjs`): `CI` set, non-empty and
/// not `false`. Under CI a test that cannot run fails; elsewhere it says SKIPPED loudly.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Waits until `cond` holds or the deadline passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A WebSocket client that answers nothing by itself.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Messages unpacked from a `batch` not yet returned.
    pending: Vec<Value>,
    /// Text frames received.
    pub frames: usize,
}

/// What ended a read.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16, String),
    Timeout,
    Eof,
}

impl Client {
    /// Connects to `path_and_query` (e.g. `/ws?token=…`).
    pub fn connect(server: &Server, path_and_query: &str) -> Client {
        Client::try_connect(server, path_and_query).expect("websocket connect")
    }

    pub fn try_connect(server: &Server, path_and_query: &str) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client::client(server.ws_url(path_and_query), stream)
            .map_err(|e| e.to_string())?;
        Ok(Client {
            ws,
            pending: Vec::new(),
            frames: 0,
        })
    }

    /// Wraps an already upgraded socket.
    pub fn from_ws(ws: WebSocket<TcpStream>) -> Client {
        Client {
            ws,
            pending: Vec::new(),
            frames: 0,
        }
    }

    /// Connects with `token` in the URL and waits for `authenticated`.
    pub fn authed(server: &Server, token: &str, query: &str) -> Client {
        let mut c = Client::connect(server, &format!("/ws?token={token}{query}"));
        let m = c.recv_type("authenticated");
        assert!(m["connectionId"].is_string(), "{m}");
        c
    }

    pub fn send(&mut self, v: &Value) {
        self.ws.send(Message::Text(v.to_string())).expect("send");
    }

    pub fn send_raw(&mut self, m: Message) {
        self.ws.send(m).expect("send");
    }

    fn set_timeout(&mut self, t: Duration) {
        let _ = self
            .ws
            .get_ref()
            .set_read_timeout(Some(t.max(Duration::from_millis(1))));
    }

    /// The next JSON message within `within`, unpacking batches.
    pub fn recv_within(&mut self, within: Duration) -> Result<Value, Ended> {
        if !self.pending.is_empty() {
            return Ok(self.pending.remove(0));
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::Timeout);
            }
            self.set_timeout(left);
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    self.frames += 1;
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    if v["type"] == "batch" {
                        let mut msgs = v["messages"].as_array().cloned().unwrap_or_default();
                        if msgs.is_empty() {
                            continue;
                        }
                        let first = msgs.remove(0);
                        self.pending = msgs;
                        return Ok(first);
                    }
                    return Ok(v);
                }
                Ok(Message::Close(f)) => {
                    let (code, reason) = f
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(Ended::Closed(code, reason));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Ended::Timeout)
                }
                Err(_) => return Err(Ended::Eof),
            }
        }
    }

    /// The next message, waiting up to 15 s: longer than the default batch interval
    /// (5 s), so a test on the default batching sees its flush even on a loaded machine.
    pub fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("no message: {e:?}"))
    }

    /// The next message of type `typ`, skipping server pings.
    pub fn recv_type(&mut self, typ: &str) -> Value {
        loop {
            let m = self.recv();
            if m["type"] == typ {
                return m;
            }
            if m["type"] == "ping" {
                continue;
            }
            panic!("expected {typ}, got {m}");
        }
    }

    /// Asserts nothing arrives for `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        match self.recv_within(d) {
            Err(Ended::Timeout) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub fn expect_close(&mut self, within: Duration) -> (u16, String) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left) {
                Ok(_) => continue,
                Err(Ended::Closed(code, reason)) => return (code, reason),
                Err(e) => panic!("expected a close, got {e:?}"),
            }
        }
    }

    /// Proves an absence without waiting on a clock: the next message (server pings
    /// aside) must be the `event` with `seq` — a marker published after whatever must not
    /// arrive, on a subscription this client still holds. Events reach a connection in
    /// `seq` order, so anything sent before the marker would have come first.
    pub fn expect_marker(&mut self, seq: u64) -> Value {
        loop {
            let m = self.recv();
            if m["type"] == "ping" {
                continue;
            }
            assert!(
                m["type"] == "event" && m["seq"] == seq,
                "expected the marker event (seq {seq}) next, got {m}"
            );
            return m;
        }
    }

    pub fn error(&mut self) -> Value {
        self.recv_type("error")
    }

    /// A client whose socket has a 16 KiB receive buffer, connected with `token` in the
    /// URL and authenticated: what the server sends it fills up quickly, so it is a slow
    /// consumer as soon as it stops reading.
    pub fn slow_reader(server: &Server, token: &str) -> Client {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(16 * 1024).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        sock.connect(&addr.into()).unwrap();
        let stream: TcpStream = sock.into();
        let url = server.ws_url(&format!("/ws?token={token}"));
        let (ws, _) = tungstenite::client::client(url, stream).expect("upgrade");
        let mut c = Client::from_ws(ws);
        c.recv_type("authenticated");
        c
    }

    /// Reads until `n` publications are accounted for, each delivered as an `event` or
    /// counted in a `QUEUE_OVERFLOW` warning, and asserts `seq` only increases.
    pub fn account_for(&mut self, n: u64) -> Accounted {
        let mut a = Accounted::default();
        let mut prev = 0u64;
        while a.delivered + a.dropped < n {
            let m = self.recv_within(Duration::from_secs(10)).expect("message");
            match m["type"].as_str() {
                Some("warning") => {
                    assert_eq!(m["code"], "QUEUE_OVERFLOW", "{m}");
                    a.dropped += m["dropped"].as_u64().unwrap();
                    a.warned
                        .push(m["subscriptionId"].as_str().unwrap().to_string());
                }
                Some("event") => {
                    let seq = m["seq"].as_u64().unwrap();
                    assert!(seq > prev, "order kept: {seq} after {prev}");
                    prev = seq;
                    a.delivered += 1;
                    a.last = m;
                }
                _ => panic!("unexpected {m}"),
            }
        }
        assert_eq!(a.delivered + a.dropped, n);
        a
    }

    pub fn subscribe(&mut self, subs: Value) -> Value {
        self.send(&json!({"type": "subscribeEvents", "requestId": "sub", "subscriptions": subs}));
        self.recv_type("subscribedEvents")
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        let _ = self.ws.flush();
    }
}

/// What [`Client::account_for`] read.
#[derive(Debug, Default)]
pub struct Accounted {
    pub delivered: u64,
    pub dropped: u64,
    /// The last `event` (`Null` if none arrived).
    pub last: Value,
    /// The `subscriptionId` of each warning, in order.
    pub warned: Vec<String>,
}

/// Asserts `m` is an error with `code` and a message; returns the message.
pub fn assert_error(m: &Value, code: &str) -> String {
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], code, "{m}");
    let msg = m["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {m}"));
    assert!(!msg.is_empty(), "{m}");
    msg.to_string()
}

/// `POST /api/v1/publish` of each body, pipelined on one keep-alive connection (written
/// at once, before any answer is read); the answers in order, status and JSON body each.
pub fn pipelined_publishes(s: &Server, bodies: &[Vec<u8>]) -> Vec<(u16, Value)> {
    let mut reqs = Vec::new();
    for b in bodies {
        reqs.extend_from_slice(
            format!(
                "POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {API_KEY}\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .as_bytes(),
        );
        reqs.extend_from_slice(b);
    }
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.write_all(&reqs).unwrap();
    let mut bytes = Vec::new();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while out.len() < bodies.len() {
        // A whole answer at the front: its status, where its body starts, its length.
        let parsed = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .and_then(|end| {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                let status = head.split(' ').nth(1)?.parse().ok()?;
                (bytes.len() >= end + 4 + len).then_some((status, end + 4, len))
            });
        match parsed {
            Some((status, start, len)) => {
                let body = serde_json::from_slice(&bytes[start..start + len]).unwrap();
                out.push((status, body));
                bytes.drain(..start + len);
            }
            None => {
                let got = sock.read(&mut buf).expect("answers within 20 s");
                assert!(got > 0, "closed after {} answers", out.len());
                bytes.extend_from_slice(&buf[..got]);
            }
        }
    }
    out
}

/// One HTTP/1.1 request with `headers`; the status, the headers (lower-case names) and
/// the body.
pub fn raw_http(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes()).unwrap();
    // Until the head is in; then the body to the end (`Connection: close`), except after
    // a 101, whose connection stays open as a WebSocket.
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    if !bytes.starts_with(b"HTTP/1.1 101") {
        let _ = c.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Whether a browser test (`what`) can run here: Debian's chromium and playwright-core
/// (tests/browser/node_modules). Outside CI a missing piece skips it loudly; under `CI`
/// it fails.
pub fn browser_ready(what: &str, root: &std::path::Path) -> bool {
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    let driver = root
        .join("tests/browser/node_modules/playwright-core")
        .exists();
    if chromium && driver {
        return true;
    }
    let what = format!(
        "{what} needs /usr/bin/chromium (Debian chromium: {chromium}) and tests/browser/node_modules (npm ci: {driver}); scripts/test installs both"
    );
    assert!(!in_ci(), "{what}");
    eprintln!("SKIPPED (not under CI): {what}");
    false
}

/// `shardcast serve` with `env` (and a listen address it never gets to bind) must refuse
/// to start: asserts it exits with the config error status (2) and returns its stderr.
pub fn serve_refused(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("serve")
        .env("SHARDCAST_LISTEN", "127.0.0.1:1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{env:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
