//! Limits against hostile or careless peers, against the real binary (issue #12):
//! `limits.request_timeout_ms` on slow heads, slow bodies, unfinished handshakes and idle
//! keep-alive connections; `limits.max_http_connections` keeping them from crowding out
//! WebSocket clients; the start-up refusal of the shipped example secrets off loopback.

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
    // Four keep-alive connections, each answered once (so surely accepted and counted),
    // then idle, fill the cap; the fifth is refused with 503.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut t = connect(&s);
            t.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 1024];
            t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let n = t.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
            t
        })
        .collect();
    let mut t = connect(&s);
    let r = read_until_closed(&mut t, Duration::from_secs(10)).expect("refused at once");
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert!(
        r.contains("LIMIT_EXCEEDED") && r.contains("limits.max_http_connections"),
        "{r}"
    );
    // The established WebSockets are untouched; a service may still publish on its socket.
    // (Its handshake needs a slot: the refused probe freed none, so open one by closing
    // an idle connection first.)
    let mut idle = idle;
    drop(idle.pop());
    // The close reaches the server a moment later: until then the handshake may still be
    // refused, so the socket that gets through is the one used.
    let mut svc = None;
    assert!(wait_until(Duration::from_secs(10), || {
        svc = Client::try_connect(
            &s,
            &format!("/ws?token={}", token("svc", "service", &["*"])),
        )
        .ok();
        svc.is_some()
    }));
    let mut svc = svc.unwrap();
    assert_eq!(svc.recv_type("authenticated")["type"], "authenticated");
    svc.send(
        &json!({"type": "publish", "requestId": "p", "path": "cap", "eventType": "e", "data": 0}),
    );
    let seq = svc.recv_type("published")["seq"].clone();
    assert_eq!(ws[0].recv_type("event")["seq"], seq);
    drop(idle);
    // Once the idle ones are gone, there is room again.
    assert!(wait_until(Duration::from_secs(10), || s
        .try_http("GET", "/healthz", None, &[])
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
