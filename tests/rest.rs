//! REST and operations (PROTOCOL.md §8, §11–13): publishing and who may, batches that
//! never half-apply, body limits, health and metrics, routing errors, configuration
//! errors and environment overrides, and the `token` command.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PUBLISH: &str = "/api/v1/publish";

fn apikey() -> String {
    format!("apikey {API_KEY}")
}

fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

fn one(path: &str) -> Value {
    json!({"path": path, "eventType": "e", "data": {"p": path}})
}

/// A 202 publish answer: (accepted, firstSeq, lastSeq).
fn accepted(st: u16, body: &Value) -> (u64, u64, u64) {
    assert_eq!(st, 202, "publish: {body}");
    let n = body["accepted"]
        .as_u64()
        .unwrap_or_else(|| panic!("accepted: {body}"));
    let first = body["firstSeq"]
        .as_u64()
        .unwrap_or_else(|| panic!("firstSeq: {body}"));
    let last = body["lastSeq"]
        .as_u64()
        .unwrap_or_else(|| panic!("lastSeq: {body}"));
    (n, first, last)
}

/// Asserts a REST error answer `{"error":{"code","message",...}}`; returns the error.
fn rest_error(st: u16, body: &Value, status: u16, code: Option<&str>) -> Value {
    assert_eq!(st, status, "{body}");
    let e = &body["error"];
    assert!(e["code"].is_string(), "error.code: {body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{body}");
    }
    e.clone()
}

/// Status and JSON body of a request with a raw body.
fn raw_post(s: &Server, path: &str, body: &[u8]) -> (u16, Value) {
    let auth = apikey();
    let (st, text) = s
        .try_http(
            "POST",
            path,
            Some(body),
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
        )
        .expect("an answer");
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

// ---------------------------------------------------------------- who may publish

#[test]
fn publish_with_api_key_admin_and_service_tokens() {
    let s = Server::start("");
    let (st, b) = s.http("POST", PUBLISH, Some(&one("jobs/1")), Some(&apikey()));
    let (n, f1, l1) = accepted(st, &b);
    assert_eq!((n, l1), (1, f1), "{b}");
    let (st, b) = s.http("POST", PUBLISH, Some(&one("jobs/2")), Some(&apikey()));
    let (_, f2, l2) = accepted(st, &b);
    // `seq` only grows (PROTOCOL.md: never reused); the contract promises no gap-free
    // numbering, so only the order is asserted.
    assert!(f2 > l1, "seqs grow across calls: {f2} after {l1}");
    assert_eq!(l2, f2);

    let admin = token("ops", "admin", &[]);
    let (st, b) = s.http("POST", PUBLISH, Some(&one("jobs/3")), Some(&bearer(&admin)));
    let (n, f3, _) = accepted(st, &b);
    assert_eq!(n, 1, "{b}");
    assert!(f3 > l2, "{b}");

    let service = token("billing-1", "service", &[]);
    let (st, b) = s.http(
        "POST",
        PUBLISH,
        Some(&one("jobs/4")),
        Some(&bearer(&service)),
    );
    let (n, f4, _) = accepted(st, &b);
    assert_eq!(n, 1, "{b}");
    assert!(f4 > f3, "{b}");
}

#[test]
fn publish_refuses_users_and_bad_credentials() {
    let s = Server::start("");
    let before = s.publish("jobs/0", "e", json!(0));
    let user = token("u1", "user", &["*"]);
    let (st, b) = s.http("POST", PUBLISH, Some(&one("jobs/1")), Some(&bearer(&user)));
    rest_error(st, &b, 403, Some("FORBIDDEN"));
    let (st, b) = s.http(
        "POST",
        PUBLISH,
        Some(&one("jobs/1")),
        Some("apikey not-the-key"),
    );
    rest_error(st, &b, 401, Some("UNAUTHORIZED"));
    let (st, b) = s.http("POST", PUBLISH, Some(&one("jobs/1")), None);
    rest_error(st, &b, 401, Some("UNAUTHORIZED"));
    let forged = token_with(
        json!({"sub": "x", "role": "admin", "exp": now() + 60}),
        "wrong",
    );
    let (st, b) = s.http(
        "POST",
        PUBLISH,
        Some(&one("jobs/1")),
        Some(&bearer(&forged)),
    );
    rest_error(st, &b, 401, Some("UNAUTHORIZED"));
    // None of the refused calls published anything (no seq consumed).
    let (st, b) = s.http(
        "POST",
        PUBLISH,
        Some(&json!({"events": [one("a"), one("b")]})),
        Some(&apikey()),
    );
    let (n, f, l) = accepted(st, &b);
    assert_eq!((n, f, l), (2, before + 1, before + 2), "{b}");
}

// ---------------------------------------------------------------- batches

#[test]
fn batch_of_three_is_sequenced_together() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["jobs"]), "");
    c.subscribe(json!([{"id": "j", "path": "jobs"}]));
    let body = json!({"events": [one("jobs/1"), one("jobs/2"), one("jobs/3")]});
    let (st, b) = s.http("POST", PUBLISH, Some(&body), Some(&apikey()));
    let (n, first, last) = accepted(st, &b);
    assert_eq!(n, 3, "{b}");
    // Three distinct, growing seqs from firstSeq to lastSeq, in the batch's order.
    let mut seqs = Vec::new();
    for i in 0..3 {
        let e = c.recv_type("event");
        assert_eq!(e["path"], format!("jobs/{}", i + 1));
        seqs.push(e["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!((seqs[0], seqs[2]), (first, last), "{b}");
}

#[test]
fn batch_with_one_invalid_item_publishes_nothing() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["jobs"]), "");
    c.subscribe(json!([{"id": "j", "path": "jobs"}]));
    let before = s.publish("jobs/0", "e", json!(0));
    assert_eq!(c.recv_type("event")["seq"], before);

    let body = json!({"events": [one("jobs/1"), one("jobs/bad path"), one("jobs/3")]});
    let (st, b) = s.http("POST", PUBLISH, Some(&body), Some(&apikey()));
    let e = rest_error(st, &b, 400, None);
    assert_eq!(e["index"], 1, "the error names the bad item: {b}");
    assert!(e["message"].as_str().unwrap().contains("path"), "{b}");
    // Nothing of it reached the subscriber: the next event is the next publication (one
    // connection's events come in seq order)...
    let next = s.publish("jobs/4", "e", json!(4));
    // ...and no seq was used (docs/PROTOCOL-NOTES.md: refused requests use no seq).
    assert_eq!(next, before + 1, "a refused batch must not consume seqs");
    let ev = c.recv_type("event");
    assert_eq!(ev["seq"], next);
    assert_eq!(ev["path"], "jobs/4");

    // Other kinds of bad item are refused with their index too.
    let body = json!({"events": [one("jobs/1"), one("jobs/2"), {"path": "jobs/3"}]});
    let (st, b) = s.http("POST", PUBLISH, Some(&body), Some(&apikey()));
    assert_eq!(rest_error(st, &b, 400, None)["index"], 2, "{b}");
    let body = json!({"events": [7, one("jobs/2")]});
    let (st, b) = s.http("POST", PUBLISH, Some(&body), Some(&apikey()));
    assert_eq!(rest_error(st, &b, 400, None)["index"], 0, "{b}");
    let last = s.publish("jobs/5", "e", json!(5));
    assert_eq!(last, next + 1, "refused batches use no seq");
    assert_eq!(
        c.recv_type("event")["seq"],
        last,
        "nothing of the refused batches came"
    );
}

#[test]
fn malformed_json_body_is_400() {
    let s = Server::start("");
    let (st, b) = raw_post(&s, PUBLISH, br#"{"path": "jobs/1", "eventType": "#);
    rest_error(st, &b, 400, Some("BAD_MESSAGE"));
    let (st, b) = raw_post(&s, PUBLISH, b"[1,2]");
    rest_error(st, &b, 400, Some("BAD_MESSAGE"));
    let (st, b) = raw_post(&s, PUBLISH, b"");
    rest_error(st, &b, 400, Some("BAD_MESSAGE"));
}

#[test]
fn batch_over_ten_thousand_is_400() {
    let s = Server::start("");
    let first = s.publish("a", "e", json!(null));
    let items: Vec<Value> = (0..10_001)
        .map(|_| json!({"path": "a", "eventType": "e"}))
        .collect();
    let (st, b) = s.http(
        "POST",
        PUBLISH,
        Some(&json!({ "events": items })),
        Some(&apikey()),
    );
    let e = rest_error(st, &b, 400, None);
    assert!(
        e["message"].as_str().unwrap().contains("10000"),
        "names the limit: {b}"
    );
    // Exactly 10000 is fine.
    let items: Vec<Value> = (0..10_000)
        .map(|_| json!({"path": "a", "eventType": "e"}))
        .collect();
    let (first2, last2) = s.publish_batch(items);
    assert_eq!(
        first2,
        first + 1,
        "the refused batch consumed no seq (PROTOCOL-NOTES)"
    );
    // 10000 distinct, growing seqs from firstSeq to lastSeq.
    assert!(last2 >= first2 + 9_999, "{first2}..={last2}");
}

/// A body above 64 KiB is parsed, checked and sequenced off the shard (issue 21: a batch
/// of `limits.max_publish_batch` must not hold the shard's loop). Its answers are those of
/// the shard's own path, and one connection's publications keep their request order even
/// when small publishes are pipelined behind large ones.
#[test]
fn large_batches_pipelined_with_small_ones_keep_request_order() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["small"]), "");
    c.subscribe(json!([{"id": "s", "path": "small"}]));
    let pad = "x".repeat(100);
    let big = |n: usize, bad: Option<(usize, Value)>| {
        let mut events: Vec<Value> = (0..n)
            .map(|i| json!({"path": "big", "eventType": "e", "data": {"i": i, "pad": pad}}))
            .collect();
        if let Some((at, item)) = bad {
            events[at] = item;
        }
        serde_json::to_vec(&json!({ "events": events })).unwrap()
    };
    let small = |i: u64| {
        serde_json::to_vec(&json!({"path": "small", "eventType": "e", "data": i})).unwrap()
    };
    let bodies = [
        big(2_000, None),
        small(1),
        big(
            2_000,
            Some((1_500, json!({"path": "bad path", "eventType": "e"}))),
        ),
        big(
            2_000,
            Some((700, json!({"path": "$logs/g", "eventType": "e"}))),
        ),
        small(2),
        big(3_000, None),
    ];
    assert!(bodies[0].len() > 64 * 1024 && bodies[1].len() < 1024);
    let answers = pipelined_publishes(&s, &bodies);

    let (n, a_first, a_last) = accepted(answers[0].0, &answers[0].1);
    assert_eq!((n, a_last - a_first), (2_000, 1_999), "{:?}", answers[0]);
    let (_, b_first, b_last) = accepted(answers[1].0, &answers[1].1);
    assert_eq!(
        b_first,
        a_last + 1,
        "the small publish follows the batch before it"
    );
    let e = rest_error(answers[2].0, &answers[2].1, 400, Some("INVALID_PATH"));
    assert_eq!(e["index"], 1_500, "{e}");
    let e = rest_error(answers[3].0, &answers[3].1, 403, Some("FORBIDDEN"));
    assert_eq!(e["index"], 700, "{e}");
    let (_, e_first, _) = accepted(answers[4].0, &answers[4].1);
    assert_eq!(
        e_first,
        b_last + 1,
        "refused batches use no seq, and order holds"
    );
    let (n, f_first, f_last) = accepted(answers[5].0, &answers[5].1);
    assert_eq!((n, f_first, f_last - f_first), (3_000, e_first + 1, 2_999));
    // The subscriber got the small ones, in order, with the answered seqs.
    assert_eq!(c.recv_type("event")["seq"], b_first);
    assert_eq!(c.recv_type("event")["seq"], e_first);
}

#[test]
fn body_over_max_http_body_bytes_is_413() {
    let s = Server::start("[limits]\nmax_http_body_bytes = 2048");
    let ok = json!({"path": "jobs/1", "eventType": "e", "data": "x".repeat(1500)}).to_string();
    assert!(ok.len() < 2048);
    let (st, b) = raw_post(&s, PUBLISH, ok.as_bytes());
    accepted(st, &b);
    let big = json!({"path": "jobs/1", "eventType": "e", "data": "x".repeat(3000)}).to_string();
    let (st, b) = raw_post(&s, PUBLISH, big.as_bytes());
    assert_eq!(st, 413, "{b}");
    assert!(b["error"]["code"].is_string(), "{b}");
    // The server is fine afterwards.
    let (st, _) = s.http("GET", "/healthz", None, None);
    assert_eq!(st, 200);
}

// ---------------------------------------------------------------- operations

#[test]
fn health_readiness_and_metrics() {
    let s = Server::start("");
    let (st, _) = s.http("GET", "/healthz", None, None);
    assert_eq!(st, 200);
    let (st, _) = s.http("GET", "/readyz", None, None);
    assert_eq!(st, 200);
    let (st, text) = s.try_http("GET", "/metrics", None, &[]).expect("metrics");
    assert_eq!(st, 200);
    for name in [
        "shardcast_connections",
        "shardcast_publications_total",
        "shardcast_deliveries_total",
        "shardcast_dropped_total",
    ] {
        let series = text.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        });
        assert!(series, "/metrics has no series {name}:\n{text}");
    }
    let conn = text
        .lines()
        .find(|l| l.starts_with("shardcast_connections{"))
        .unwrap_or_else(|| panic!("labelled shardcast_connections:\n{text}"));
    assert!(conn.contains("shard=") && conn.contains("role="), "{conn}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("shardcast_dropped_total{") && l.contains("reason=")),
        "shardcast_dropped_total has a reason label:\n{text}"
    );

    // Publications and deliveries are counted.
    let pubs = || s.metric("shardcast_publications_total").unwrap_or(0.0);
    let dels = || s.metric("shardcast_deliveries_total").unwrap_or(0.0);
    let (p0, d0) = (pubs(), dels());
    let mut c = Client::authed(&s, &token("u", "user", &["jobs"]), "&batchMs=0");
    c.subscribe(json!([{"id": "j", "path": "jobs"}]));
    s.publish("jobs/1", "e", json!(1));
    c.recv_type("event");
    assert!(
        wait_until(Duration::from_secs(3), || pubs() >= p0 + 1.0),
        "publications counted"
    );
    assert!(
        wait_until(Duration::from_secs(3), || dels() >= d0 + 1.0),
        "deliveries counted"
    );
    assert!(
        wait_until(Duration::from_secs(3), || {
            s.metric("shardcast_connections{").unwrap_or(0.0) >= 1.0
        }),
        "the open connection is counted"
    );
    let users = || s.metric("shardcast_connections{").unwrap_or(0.0);
    let open = users();
    c.close();
    assert!(
        wait_until(Duration::from_secs(3), || users() <= open - 1.0),
        "a closed connection is no longer counted: {} (was {open})",
        users()
    );
}

#[test]
fn routing_errors() {
    let s = Server::start("");
    let (st, b) = s.http("GET", "/no/such/thing", None, None);
    rest_error(st, &b, 404, None);
    let (st, b) = s.http("GET", PUBLISH, None, Some(&apikey()));
    rest_error(st, &b, 405, None);
    let (st, b) = s.http("GET", "/api/v1/entities/x/1", None, Some(&apikey()));
    rest_error(st, &b, 404, Some("NOT_FOUND"));
}

// ---------------------------------------------------------------- configuration

/// Runs `shardcast serve --config FILE` with `config` (plus a listen address and data
/// dir) and `env`; expects it to exit within a few seconds. Returns (code, stderr).
fn serve_expecting_exit(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shardcast-rest-cfg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("shardcast.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{config}\n\
             [auth]\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.arg("serve").arg("--config").arg(&file);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn shardcast");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let status =
        status.unwrap_or_else(|| panic!("server did not exit within 5 s; stderr: {stderr}"));
    (status.code(), stderr)
}

#[test]
fn unknown_config_key_stops_startup_naming_it() {
    let (code, stderr) = serve_expecting_exit("[delivery]\nbatch_msx = 1", &[]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains("delivery.batch_msx"),
        "stderr names the key: {stderr}"
    );
}

#[test]
fn invalid_env_override_stops_startup_naming_it() {
    let (code, stderr) = serve_expecting_exit("", &[("SHARDCAST_DELIVERY__BATCH_MS", "abc")]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains("delivery.batch_ms") || stderr.contains("SHARDCAST_DELIVERY__BATCH_MS"),
        "stderr names the key: {stderr}"
    );
}

#[test]
fn invalid_config_values_and_unknown_names_stop_startup() {
    let (code, stderr) = serve_expecting_exit("[delivery]\nframing = \"xml\"", &[]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(stderr.contains("framing"), "stderr names the key: {stderr}");
    let (code, stderr) = serve_expecting_exit("[deliveryx]\nbatch_ms = 1", &[]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains("deliveryx"),
        "stderr names the section: {stderr}"
    );
    let (code, stderr) = serve_expecting_exit("", &[("SHARDCAST_DELIVERY__BATCH_MSX", "1")]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}: {stderr}");
    assert!(
        stderr.contains("delivery.batch_msx") || stderr.contains("SHARDCAST_DELIVERY__BATCH_MSX"),
        "stderr names the key: {stderr}"
    );
}

#[test]
fn env_override_sets_heartbeat() {
    let s = Server::start_with_env("", &[("SHARDCAST_DELIVERY__HEARTBEAT_MS", "12345")]);
    let mut c = Client::connect(&s, &format!("/ws?token={}", token("u", "user", &[])));
    let m = c.recv_type("authenticated");
    assert_eq!(m["heartbeatMs"], 12345, "{m}");
    // The env wins over the file.
    let s = Server::start_with_env(
        "[delivery]\nheartbeat_ms = 20000",
        &[("SHARDCAST_DELIVERY__HEARTBEAT_MS", "12345")],
    );
    let mut c = Client::connect(&s, &format!("/ws?token={}", token("u", "user", &[])));
    assert_eq!(c.recv_type("authenticated")["heartbeatMs"], 12345);
}

// ---------------------------------------------------------------- command line

#[test]
fn token_command_prints_a_verifiable_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "token", "--secret", "S", "--sub", "u1", "--role", "admin", "--scope", "a", "--ttl",
            "60",
        ])
        .output()
        .expect("run shardcast token");
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let t = now();
    let claims = shardcast::auth::jwt::verify(b"S", &tok, t).expect("a valid token");
    assert_eq!(claims.sub, "u1");
    assert_eq!(claims.role, shardcast::auth::jwt::Role::Admin);
    assert_eq!(
        claims.scopes,
        shardcast::auth::jwt::Scopes::Prefixes(vec!["a".to_string()])
    );
    assert!(
        claims.exp > t && claims.exp <= t + 61,
        "exp {} vs now {t}",
        claims.exp
    );
    // Signed with S, not anything else.
    assert!(shardcast::auth::jwt::verify(b"T", &tok, t).is_err());
    // Expired after the ttl.
    assert!(shardcast::auth::jwt::verify(b"S", &tok, t + 61).is_err());
}

#[test]
fn token_command_without_secret_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["token", "--sub", "x"])
        .output()
        .expect("run shardcast token");
    assert_eq!(out.status.code(), Some(2), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--secret"),
        "stderr names --secret: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.matches('.').count() < 2,
        "no token printed: {stdout}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["token", "--secret", "S"])
        .output()
        .expect("run shardcast token");
    assert_eq!(out.status.code(), Some(2), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sub"), "stderr names --sub: {stderr}");
}

#[test]
fn a_second_server_on_a_port_in_use_refuses_to_start() {
    let s = Server::start("");
    let dir = std::env::temp_dir().join(format!("shardcast-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("dup.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n",
            s.port,
            dir.join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    // The first server is untouched.
    assert_eq!(
        s.try_http("GET", "/healthz", None, &[]).map(|r| r.0),
        Some(200)
    );
}

#[test]
fn expect_100_continue_gets_continue_then_the_answer() {
    use std::io::{Read, Write};
    let s = Server::start("");
    let body = br#"{"path":"c","eventType":"e","data":1}"#;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {API_KEY}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = sock.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    sock.write_all(body).unwrap();
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("HTTP/1.1 202"), "{text}");
    assert!(text.contains("\"accepted\":1"), "{text}");
}

/// A client that half-closes right after its requests (`printf … | nc`) still gets every
/// answer, then the server closes.
#[test]
fn half_closed_connection_gets_its_answers() {
    use std::io::Write;
    let s = Server::start("");
    let body = json!({"path": "h", "eventType": "e", "data": 1}).to_string();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST {PUBLISH} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        apikey(),
        body.len()
    );
    sock.write_all(req.as_bytes()).unwrap();
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out)
        .expect("the server closes after answering");
    assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
    assert_eq!(out.matches("HTTP/1.1 202").count(), 1, "{out}");
    assert!(out.contains("\"firstSeq\""), "{out}");
}
