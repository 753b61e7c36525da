//! Limits against hostile or careless peers, against the real binary (issues #12, #17,
//! #18): `limits.request_timeout_ms` on slow heads, slow bodies, unfinished handshakes
//! and idle keep-alive connections; `limits.max_http_connections` bounding plain HTTP
//! clients but never a burst of WebSocket upgrades (a reconnect storm); connections that
//! send nothing never locking out new clients (they cost no HTTP slot, and at the
//! open-file budget the oldest of them makes room); the start-up refusal of the shipped
//! example secrets off loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Reads what the server sends until it closes the connection (or `within` passes:
/// `None`). A reset counts as closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn connect(s: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", s.port)).expect("connect")
}

const TIMEOUT_MS: u64 = 1000;

fn server() -> Server {
    Server::start(&format!(
        "[delivery]\nbatch_ms = 0\n[limits]\nrequest_timeout_ms = {TIMEOUT_MS}"
    ))
}

#[test]
fn slow_heads_are_answered_408_and_closed_while_real_clients_keep_working() {
    let s = server();
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.subscribe(json!([{"id": "a", "path": "live"}]));
    // Slow-loris: each sends a header line every 200 ms and never ends its head. They
    // keep sending past the timeout, so only the deadline can close them.
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut t = connect(&s);
            t.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
            t
        })
        .collect();
    let t0 = Instant::now();
    let mut published = Vec::new();
    while t0.elapsed() < Duration::from_millis(TIMEOUT_MS * 2) {
        for (i, t) in slow.iter_mut().enumerate() {
            let _ = t.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes());
        }
        // Meanwhile the API and WebSocket clients are served as usual.
        published.push(s.publish("live/x", "tick", json!(published.len())));
        std::thread::sleep(Duration::from_millis(200));
    }
    for seq in &published {
        assert_eq!(c.recv_type("event")["seq"], *seq);
    }
    for t in &mut slow {
        let got = read_until_closed(t, Duration::from_secs(10))
            .expect("a slow head is closed within the timeout");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        assert!(got.contains("limits.request_timeout_ms"), "{got}");
    }
    let closed = s
        .metric_where(
            "shardcast_http_connections_closed_total",
            "reason=\"request_timeout\"",
        )
        .unwrap();
    assert!(closed >= 40.0, "{closed}");
}

#[test]
fn a_slow_body_and_an_unfinished_handshake_time_out() {
    let s = server();
    let mut body = connect(&s);
    body.write_all(
        format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"path\""
        )
        .as_bytes(),
    )
    .unwrap();
    let mut upgrade = connect(&s);
    upgrade
        .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        .unwrap();
    for t in [&mut body, &mut upgrade] {
        let got = read_until_closed(t, Duration::from_secs(10)).expect("closed in time");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    }
    // Nothing of the half-sent publish was applied: the next seq is the first.
    assert_eq!(s.publish("p", "e", json!(1)), 1);
}

#[test]
fn idle_keep_alive_connections_close_after_the_timeout_not_before() {
    let s = server();
    let mut t = connect(&s);
    let t0 = Instant::now();
    // Two requests on the connection: each answer restarts the clock.
    for _ in 0..2 {
        t.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = t.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
        std::thread::sleep(Duration::from_millis(TIMEOUT_MS / 2));
    }
    let answered = Instant::now();
    let got = read_until_closed(&mut t, Duration::from_secs(10)).expect("idle close");
    // An idle connection is closed without a word (there is no request to answer).
    assert_eq!(got, "");
    // Closing early would be a bug whatever the load: the clock ran from the last answer,
    // which was at least TIMEOUT_MS / 2 before `answered`.
    assert!(answered.duration_since(t0) >= Duration::from_millis(TIMEOUT_MS));
    assert!(
        Instant::now().duration_since(answered) >= Duration::from_millis(TIMEOUT_MS / 2 - 50),
        "closed before the idle timeout"
    );
    assert!(
        s.metric_where(
            "shardcast_http_connections_closed_total",
            "reason=\"idle_timeout\""
        )
        .unwrap()
            >= 1.0
    );
}

#[test]
fn a_websocket_is_not_cut_by_the_request_timeout() {
    let s = server();
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.subscribe(json!([{"id": "a", "path": "w"}]));
    std::thread::sleep(Duration::from_millis(TIMEOUT_MS * 2));
    let seq = s.publish("w", "e", json!(1));
    assert_eq!(c.recv_type("event")["seq"], seq);
}

#[test]
fn http_connections_are_capped_apart_from_websockets() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[limits]\nmax_http_connections = 4");
    // WebSockets do not count once upgraded: more of them than the cap.
    let mut ws: Vec<Client> = (0..6)
        .map(|i| Client::authed(&s, &token(&format!("u{i}"), "user", &["*"]), ""))
        .collect();
    ws[0].subscribe(json!([{"id": "a", "path": "cap"}]));
    // Four keep-alive connections, each answered once (so surely counted), then idle,
    // fill the cap; the next plain request is refused with 503.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut t = connect(&s);
            t.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 1024];
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let n = t.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
            t
        })
        .collect();
    let mut t = connect(&s);
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_until_closed(&mut t, Duration::from_secs(10)).expect("refused at once");
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert!(
        r.contains("LIMIT_EXCEEDED") && r.contains("limits.max_http_connections"),
        "{r}"
    );
    // A health probe is answered all the same, and the connection closed after it.
    let mut probe = connect(&s);
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_until_closed(&mut probe, Duration::from_secs(10)).expect("answered, closed");
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    // A WebSocket handshake needs no HTTP slot: a service connects while the cap is full
    // and publishes on its socket, and the established WebSockets are untouched.
    let mut svc = Client::connect(
        &s,
        &format!("/ws?token={}", token("svc", "service", &["*"])),
    );
    assert_eq!(svc.recv_type("authenticated")["type"], "authenticated");
    svc.send(
        &json!({"type": "publish", "requestId": "p", "path": "cap", "eventType": "e", "data": 0}),
    );
    let seq = svc.recv_type("published")["seq"].clone();
    assert_eq!(ws[0].recv_type("event")["seq"], seq);
    drop(idle);
    // Once the idle ones are gone, there is room again.
    assert!(wait_until(Duration::from_secs(10), || s
        .try_http("GET", "/metrics", None, &[])
        .is_some_and(|r| r.0 == 200)));
    let seq = s.publish("cap", "e", json!(1));
    assert_eq!(ws[0].recv_type("event")["seq"], seq);
    assert!(
        s.metric_where(
            "shardcast_http_connections_closed_total",
            "reason=\"http_full\""
        )
        .unwrap()
            >= 1.0
    );
}

/// Opens `n` connections, then sends a WebSocket upgrade (authenticated by `token`) on
/// every one before reading any answer: a reconnect storm as the server sees it, every
/// handshake in progress at once. Returns the clients, each having read `authenticated`.
fn storm(s: &Server, n: usize, token: &str) -> Vec<Client> {
    let mut socks: Vec<TcpStream> = (0..n).map(|_| connect(s)).collect();
    for t in &mut socks {
        t.write_all(
            format!(
                "GET /ws?token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    }
    socks
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            // The answer's head, byte by byte: what follows it is the WebSocket's.
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match t.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    other => panic!(
                        "handshake {i} of {n}: {other:?} after {:?}",
                        String::from_utf8_lossy(&head)
                    ),
                }
            }
            let head = String::from_utf8_lossy(&head);
            assert!(
                head.starts_with("HTTP/1.1 101 "),
                "handshake {i} of {n}: {head}"
            );
            let ws = tungstenite::WebSocket::from_raw_socket(
                t,
                tungstenite::protocol::Role::Client,
                None,
            );
            let mut c = Client::from_ws(ws);
            assert_eq!(c.recv_type("authenticated")["type"], "authenticated");
            c
        })
        .collect()
}

#[test]
fn a_burst_of_upgrades_far_beyond_the_http_cap_all_connect_on_one_shard_and_across_shards() {
    for shards in [1, 2] {
        let s = Server::start(&format!(
            "shards = {shards}\n[delivery]\nbatch_ms = 0\n[limits]\nmax_http_connections = 8"
        ));
        let tok = token("u", "user", &["*"]);
        // 50 times the cap, every handshake in progress at once: none is a plain HTTP
        // client, so none is refused.
        let mut clients = storm(&s, 400, &tok);
        assert_eq!(clients.len(), 400);
        // Each is a working socket: the first and the last get a publication.
        for i in [0, 399] {
            clients[i].subscribe(json!([{"id": "a", "path": "storm"}]));
        }
        let seq = s.publish("storm", "e", json!(shards));
        for i in [0, 399] {
            assert_eq!(clients[i].recv_type("event")["seq"], seq);
        }
        assert_eq!(
            s.metric_where(
                "shardcast_http_connections_closed_total",
                "reason=\"http_full\""
            ),
            Some(0.0),
            "shards = {shards}"
        );
    }
}

#[test]
fn thousands_of_silent_connections_never_lock_out_new_clients() {
    // The shipped limits: 4096 HTTP connections, 10 s to send a request.
    let s = Server::start("[delivery]\nbatch_ms = 0");
    // More connections that never send a byte than limits.max_http_connections allows
    // HTTP clients.
    let silent: Vec<TcpStream> = (0..5000).map(|_| connect(&s)).collect();
    // Once the server has taken them all, new clients are served at once (well before
    // the silent ones run out of limits.request_timeout_ms): the metrics, the health
    // probe, a WebSocket client and a publisher.
    let mut accepted = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            accepted = s.metric("shardcast_connections_accepted_total");
            accepted.is_some_and(|n| n >= 5000.0)
        }),
        "metrics not answered with the silent connections held: {accepted:?}"
    );
    assert_eq!(
        s.try_http("GET", "/healthz", None, &[]).map(|r| r.0),
        Some(200)
    );
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.subscribe(json!([{"id": "a", "path": "silent"}]));
    let seq = s.publish("silent", "e", json!(1));
    assert_eq!(c.recv_type("event")["seq"], seq);
    drop(silent);
}

/// A server whose process may hold `open_files` files at most (soft and hard limit):
/// how to reach its open-file budget with a few hundred connections.
fn server_with_open_files(open_files: u64, extra: &str) -> Server {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!(
        "shardcast-test-{}-files-{open_files}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("shardcast.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}\n\
             [auth]\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("shardcast.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let limit = libc::rlimit {
        rlim_cur: open_files,
        rlim_max: open_files,
    };
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let s = Server {
        port,
        dir,
        child: Some(cmd.spawn().unwrap()),
    };
    assert!(
        wait_until(Duration::from_secs(20), || s
            .try_http("GET", "/healthz", None, &[])
            .is_some_and(|r| r.0 == 200)),
        "not healthy: {}",
        s.log()
    );
    s
}

#[test]
fn at_the_open_file_limit_the_oldest_silent_connection_makes_room() {
    const FILES: u64 = 256;
    let s = server_with_open_files(FILES, "shards = 1\n[delivery]\nbatch_ms = 0");
    // Far more silent connections than the process may hold files: without eviction,
    // accept fails from about the 200th on and every new client waits in the backlog
    // until the silent ones time out.
    let mut silent: Vec<TcpStream> = (0..2 * FILES).map(|_| connect(&s)).collect();
    // New clients get through at once: a health probe, a WebSocket client.
    assert_eq!(
        s.try_http("GET", "/healthz", None, &[]).map(|r| r.0),
        Some(200)
    );
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.subscribe(json!([{"id": "a", "path": "files"}]));
    let seq = s.publish("files", "e", json!(1));
    assert_eq!(c.recv_type("event")["seq"], seq);
    // The oldest silent connection made room: the server closed it ...
    let got = read_until_closed(&mut silent[0], Duration::from_secs(5))
        .expect("the oldest silent connection is closed");
    assert_eq!(got, "");
    // ... while the newest is still served when it speaks at last.
    let newest = silent.last_mut().unwrap();
    newest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_until_closed(newest, Duration::from_secs(10)).expect("answered");
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    // The process could hold no more than FILES of the 2 x FILES: the rest were evicted.
    let evicted = s
        .metric_where(
            "shardcast_http_connections_closed_total",
            "reason=\"evicted\"",
        )
        .unwrap();
    assert!(evicted >= FILES as f64, "{evicted}");
    // A WebSocket is never evicted: after as many silent connections again, the client
    // that connected amid the first ones still gets what is published.
    let more: Vec<TcpStream> = (0..2 * FILES).map(|_| connect(&s)).collect();
    let seq = s.publish("files", "e", json!(2));
    assert_eq!(c.recv_type("event")["seq"], seq);
    drop((silent, more));
}

/// Runs `serve` on a non-loopback address with the given environment; it must exit with
/// the configuration error status before binding. Returns its stderr.
fn refused_start(env: &[(&str, &str)]) -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.arg("serve")
        .env("SHARDCAST_LISTEN", format!("0.0.0.0:{port}"))
        .env("SHARDCAST_DATA_DIR", "/nonexistent/shardcast-refused");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn shipped_secrets_stop_start_up_off_loopback_naming_the_key() {
    let err = refused_start(&[]);
    assert!(
        err.contains("'auth.jwt_secret' is \"change-me\"")
            && err.contains("not a loopback address")
            && err.contains("SHARDCAST_AUTH__JWT_SECRET"),
        "{err}"
    );
    let err = refused_start(&[("SHARDCAST_AUTH__JWT_SECRET", "an-own-secret")]);
    assert!(
        err.contains("'auth.api_keys' holds \"dev-key\"")
            && err.contains("SHARDCAST_AUTH__API_KEYS"),
        "{err}"
    );
}

#[test]
fn max_connections_closes_the_one_over_with_1013_and_frees_the_slot_on_close() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[limits]\nmax_connections = 3");
    let tok = token("u", "user", &["*"]);
    let mut held: Vec<Client> = (0..3).map(|_| Client::authed(&s, &tok, "")).collect();
    let mut over = Client::connect(&s, &format!("/ws?token={tok}"));
    let (code, reason) = over.expect_close(Duration::from_secs(10));
    assert_eq!((code, reason.as_str()), (1013, "server full"));
    // The ones within the limit are untouched.
    held[0].subscribe(json!([{"id": "a", "path": "mc"}]));
    let seq = s.publish("mc", "e", json!(1));
    assert_eq!(held[0].recv_type("event")["seq"], seq);
    // A closed connection gives its slot back.
    drop(held.pop());
    assert!(wait_until(Duration::from_secs(10), || {
        let mut c = Client::connect(&s, &format!("/ws?token={tok}"));
        matches!(c.recv_within(Duration::from_secs(5)), Ok(m) if m["type"] == "authenticated")
    }));
    assert!(
        s.metric_where(
            "shardcast_connections_closed_total",
            "reason=\"server_full\""
        )
        .unwrap()
            >= 1.0
    );
}
