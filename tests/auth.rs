//! Authentication (PROTOCOL.md §1–2): tokens in the URL and in the first message,
//! one-time tickets, refused credentials, the auth timeout, connection options, and the
//! auth failure metric.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// An `[auth]` section with the harness's secret and api key, plus `extra` keys.
fn auth_section(extra: &str) -> String {
    format!("[auth]\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n{extra}\n")
}

fn bearer(tok: &str) -> String {
    format!("Bearer {tok}")
}

/// Connects with `?token=tok`; expects `UNAUTHORIZED` then close 4001. Returns the message.
fn refused_via_url(s: &Server, tok: &str) -> String {
    let mut c = Client::connect(s, &format!("/ws?token={tok}"));
    let e = c.recv();
    let msg = assert_error(&e, "UNAUTHORIZED");
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(code, 4001, "close code after a refused token");
    msg
}

/// Sends `tok` in an `auth` message; expects `UNAUTHORIZED` then close 4001.
fn refused_via_message(s: &Server, tok: &str) -> String {
    let mut c = Client::connect(s, "/ws");
    c.send(&json!({"type": "auth", "token": tok}));
    let e = c.recv();
    let msg = assert_error(&e, "UNAUTHORIZED");
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(code, 4001, "close code after a refused token");
    msg
}

/// Both ways; the refusal message (lower case) must contain `names`.
fn refused_both_ways(s: &Server, tok: &str, names: &str) {
    let m1 = refused_via_url(s, tok).to_lowercase();
    assert!(
        m1.contains(names),
        "url refusal should name '{names}': {m1}"
    );
    let m2 = refused_via_message(s, tok).to_lowercase();
    assert!(
        m2.contains(names),
        "auth message refusal should name '{names}': {m2}"
    );
}

/// The next text frame as JSON, without unpacking batches.
fn raw_json(c: &mut Client, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no frame within {within:?}");
        c.ws.get_ref().set_read_timeout(Some(left)).unwrap();
        match c.ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).expect("server sent JSON"),
            Ok(Message::Close(f)) => panic!("closed: {f:?}"),
            Ok(_) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c.to_ascii_lowercase()),
        })
        && b[14] == b'4'
        && matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

fn is_rfc3339_ms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// `POST /api/v1/ws-tickets` with a Bearer token; returns (uuid, expiresAt).
fn ticket(s: &Server, tok: &str) -> (String, String) {
    let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, Some(&bearer(tok)));
    assert_eq!(st, 201, "ws-tickets: {body}");
    let uuid = body["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("uuid: {body}"));
    let exp = body["expiresAt"]
        .as_str()
        .unwrap_or_else(|| panic!("expiresAt: {body}"));
    (uuid.to_string(), exp.to_string())
}

// ---------------------------------------------------------------- success paths

#[test]
fn token_in_url_authenticates_with_configured_heartbeat() {
    let s = Server::start("[delivery]\nheartbeat_ms = 7000");
    let mut c = Client::connect(&s, &format!("/ws?token={}", token("u1", "user", &["jobs"])));
    let m = c.recv();
    assert_eq!(m["type"], "authenticated", "{m}");
    let id = m["connectionId"]
        .as_str()
        .expect("connectionId is a string");
    assert!(!id.is_empty());
    assert_eq!(m["heartbeatMs"], 7000, "{m}");
    // A second connection gets a different id.
    let mut c2 = Client::connect(&s, &format!("/ws?token={}", token("u1", "user", &["jobs"])));
    let m2 = c2.recv_type("authenticated");
    assert_ne!(m2["connectionId"], m["connectionId"]);
    // The identity is in force: subscribing inside the scopes works.
    let r = c.subscribe(json!([{"id": "a", "path": "jobs/1"}]));
    assert_eq!(r["subscriptions"][0]["id"], "a", "{r}");
    assert!(r.get("rejected").is_none(), "{r}");
}

#[test]
fn auth_message_authenticates() {
    let s = Server::start("[delivery]\nheartbeat_ms = 8000");
    let mut c = Client::connect(&s, "/ws");
    c.send(&json!({"type": "auth", "token": token("u2", "user", &["jobs"])}));
    let m = c.recv();
    assert_eq!(m["type"], "authenticated", "{m}");
    assert!(
        m["connectionId"].as_str().is_some_and(|s| !s.is_empty()),
        "{m}"
    );
    assert_eq!(m["heartbeatMs"], 8000, "{m}");
    let r = c.subscribe(json!([{"id": "a", "path": "jobs"}, {"id": "b", "path": "other"}]));
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["rejected"][0]["id"], "b", "{r}");
    assert_eq!(r["rejected"][0]["code"], "FORBIDDEN", "{r}");
    c.send(&json!({"type": "ping"}));
    assert_eq!(c.recv()["type"], "pong");
}

/// A masked client text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let p = text.as_bytes();
    let mut f = vec![0x81u8];
    if p.len() < 126 {
        f.push(0x80 | p.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The next unmasked server text frame's JSON (frames under 64 KiB).
fn server_message(r: &mut impl std::io::Read) -> Value {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81, "a final text frame");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Frames that arrive in the same packet as a `?uuid=` upgrade are not read before the
/// backend has redeemed the ticket: they are answered after `authenticated`, not refused
/// as unauthenticated.
#[test]
fn frames_in_the_upgrade_packet_wait_for_the_ticket() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::start("");
    let (uuid, _) = ticket(&s, &token("tq", "user", &["jobs"]));
    let mut raw = format!(
        "GET /ws?uuid={uuid} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    raw.extend(client_frame(
        r#"{"type":"subscribeEvents","requestId":1,"subscriptions":[{"id":"a","path":"jobs"}]}"#,
    ));
    raw.extend(client_frame(r#"{"type":"ping"}"#));
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(&raw).unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    while line != "\r\n" {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let types: Vec<Value> = (0..3).map(|_| server_message(&mut r)).collect();
    assert_eq!(types[0]["type"], "authenticated", "{types:?}");
    assert_eq!(types[1]["type"], "subscribedEvents", "{types:?}");
    assert_eq!(types[1]["requestId"], 1, "{types:?}");
    assert_eq!(types[2]["type"], "pong", "{types:?}");
}

#[test]
fn ticket_is_issued_and_carries_the_token_identity() {
    let s = Server::start("");
    let tok = token("tu", "user", &["jobs"]);
    let before = shardcast::time::unix_ms();
    let (uuid, expires) = ticket(&s, &tok);
    let after = shardcast::time::unix_ms();
    assert!(is_uuid_v4(&uuid), "not a v4 UUID: {uuid}");
    assert!(is_rfc3339_ms(&expires), "not RFC 3339 with ms: {expires}");
    // Default TTL 30 s: fixed-width UTC timestamps compare as strings.
    let lo = shardcast::time::rfc3339_ms(before + 30_000 - 1000);
    let hi = shardcast::time::rfc3339_ms(after + 30_000 + 1000);
    assert!(
        lo <= expires && expires <= hi,
        "expiresAt {expires} not about 30 s ahead"
    );
    // Two tickets are different.
    let (uuid2, _) = ticket(&s, &tok);
    assert_ne!(uuid, uuid2);

    let mut c = Client::connect(&s, &format!("/ws?uuid={uuid}"));
    let m = c.recv();
    assert_eq!(m["type"], "authenticated", "{m}");
    assert!(m["connectionId"].is_string(), "{m}");
    let r = c.subscribe(json!([{"id": "in", "path": "jobs/1"}, {"id": "out", "path": "billing"}]));
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["subscriptions"][0]["id"], "in", "{r}");
    let rej = r["rejected"].as_array().expect("rejected present");
    assert_eq!(rej.len(), 1, "{r}");
    assert_eq!(rej[0]["id"], "out");
    assert_eq!(rej[0]["code"], "FORBIDDEN");
}

#[test]
fn ticket_is_single_use() {
    let s = Server::start("");
    let (uuid, _) = ticket(&s, &token("tu", "user", &["*"]));
    let mut c = Client::connect(&s, &format!("/ws?uuid={uuid}"));
    assert_eq!(c.recv()["type"], "authenticated");
    let mut again = Client::connect(&s, &format!("/ws?uuid={uuid}"));
    assert_error(&again.recv(), "UNAUTHORIZED");
    assert_eq!(again.expect_close(Duration::from_secs(3)).0, 4001);
    // An unknown (never issued) ticket too.
    let mut never = Client::connect(&s, "/ws?uuid=3f1e2d4c-5b6a-4789-8abc-def012345678");
    assert_error(&never.recv(), "UNAUTHORIZED");
    assert_eq!(never.expect_close(Duration::from_secs(3)).0, 4001);
    // The first connection is unaffected.
    c.send(&json!({"type": "ping"}));
    assert_eq!(c.recv()["type"], "pong");
}

#[test]
fn expired_ticket_is_refused() {
    let s = Server::start(&auth_section("ticket_ttl_ms = 200"));
    let before = shardcast::time::unix_ms();
    let (uuid, expires) = ticket(&s, &token("tu", "user", &["*"]));
    let lo = shardcast::time::rfc3339_ms(before + 200);
    let hi = shardcast::time::rfc3339_ms(shardcast::time::unix_ms() + 200);
    assert!(
        lo <= expires && expires <= hi,
        "expiresAt {expires} should follow ticket_ttl_ms"
    );
    // The TTL is the deadline: wait until it has certainly passed.
    assert!(wait_until(Duration::from_secs(2), || {
        shardcast::time::unix_ms() > before + 200 + 200
    }));
    let mut c = Client::connect(&s, &format!("/ws?uuid={uuid}"));
    assert_error(&c.recv(), "UNAUTHORIZED");
    assert_eq!(c.expect_close(Duration::from_secs(3)).0, 4001);
}

#[test]
fn ws_tickets_need_a_bearer_token() {
    let s = Server::start("");
    let (st, body) = s.http(
        "POST",
        "/api/v1/ws-tickets",
        None,
        Some(&format!("apikey {API_KEY}")),
    );
    assert_eq!(st, 400, "api key: {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("bearer"),
        "message should say a Bearer token is needed: {body}"
    );
    let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, None);
    assert_eq!(st, 401, "no auth: {body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
    let bad = token_with(json!({"sub": "x", "exp": now() + 60}), "other-secret");
    let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, Some(&bearer(&bad)));
    assert_eq!(st, 401, "bad token: {body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");
}

// ---------------------------------------------------------------- refused tokens

#[test]
fn token_signed_with_another_key_is_refused() {
    let s = Server::start("");
    let tok = token_with(
        json!({"sub": "u", "role": "user", "exp": now() + 3600}),
        "another-secret",
    );
    refused_both_ways(&s, &tok, "signature");
}

#[test]
fn alg_none_token_is_refused() {
    let s = Server::start("");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({"sub": "u", "role": "admin", "scopes": ["*"], "exp": now() + 3600});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tok = format!("{header}.{payload}.");
    refused_both_ways(&s, &tok, "none");
}

#[test]
fn expired_token_is_refused() {
    let s = Server::start("");
    let tok = token_with(
        json!({"sub": "u", "role": "user", "exp": now() - 60}),
        SECRET,
    );
    refused_both_ways(&s, &tok, "expired");
}

#[test]
fn token_without_sub_is_refused() {
    let s = Server::start("");
    let tok = token_with(
        json!({"role": "user", "scopes": ["*"], "exp": now() + 3600}),
        SECRET,
    );
    refused_both_ways(&s, &tok, "sub");
}

#[test]
fn token_without_exp_is_refused() {
    let s = Server::start("");
    let tok = token_with(json!({"sub": "u", "role": "user", "scopes": ["*"]}), SECRET);
    refused_both_ways(&s, &tok, "exp");
}

#[test]
fn garbage_token_is_refused() {
    let s = Server::start("");
    refused_via_url(&s, "not-a-jwt");
    refused_via_message(&s, "a.b.c");
}

// ---------------------------------------------------------------- timeout, pre-auth

#[test]
fn no_credential_in_time_closes_with_4002() {
    let s = Server::start(&auth_section("auth_timeout_ms = 300"));
    let t0 = Instant::now();
    let mut c = Client::connect(&s, "/ws");
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(code, 4002, "auth timeout close code");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        t0.elapsed()
    );
    // An authenticated connection is not closed by the auth timeout.
    let mut ok = Client::connect(&s, "/ws");
    ok.send(&json!({"type": "auth", "token": token("u", "user", &[])}));
    assert_eq!(ok.recv()["type"], "authenticated");
    ok.expect_silence(Duration::from_millis(600));
    ok.send(&json!({"type": "ping"}));
    assert_eq!(ok.recv()["type"], "pong");
}

#[test]
fn commands_before_auth_are_unauthorized_and_connection_stays() {
    let s = Server::start("");
    let mut c = Client::connect(&s, "/ws");
    c.send(&json!({"type": "subscribeEvents", "requestId": "r1",
                   "subscriptions": [{"id": "a", "path": "jobs"}]}));
    let e = c.recv();
    assert_error(&e, "UNAUTHORIZED");
    assert_eq!(e["requestId"], "r1", "{e}");
    c.send(&json!({"type": "ping"}));
    assert_error(&c.recv(), "UNAUTHORIZED");
    // Still open: authenticating now works.
    c.send(&json!({"type": "auth", "token": token("u", "user", &["jobs"])}));
    assert_eq!(c.recv_type("authenticated")["type"], "authenticated");
    c.send(&json!({"type": "ping"}));
    assert_eq!(c.recv()["type"], "pong");
    let r = c.subscribe(json!([{"id": "a", "path": "jobs"}]));
    assert_eq!(r["subscriptions"][0]["id"], "a", "{r}");
}

#[test]
fn every_message_before_auth_is_unauthorized() {
    // "Until then every other message gets error UNAUTHORIZED" (PROTOCOL.md §2): also
    // messages that would be refused for another reason once authenticated.
    let s = Server::start("");
    let mut c = Client::connect(&s, "/ws");
    let mut wrong = Vec::new();
    for (i, m) in [
        json!({"type": "frobnicate", "requestId": "q0"}),
        json!({"type": "subscribeEvents", "requestId": "q1"}),
        json!({"type": "createLiveQuery", "requestId": "q2", "id": "lq"}),
        json!({"type": "unsubscribeEvents", "requestId": "q3", "ids": ["a"]}),
        json!({"type": "subscribeEvents", "requestId": "q4", "subscriptions": [{"path": "a"}]}),
    ]
    .iter()
    .enumerate()
    {
        c.send(m);
        let e = c.recv();
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["requestId"], format!("q{i}"), "{e}");
        if e["code"] != "UNAUTHORIZED" {
            wrong.push(format!("{m} -> {e}"));
        }
    }
    // The connection stayed open through all of it.
    c.send(&json!({"type": "auth", "token": token("u", "user", &[])}));
    assert_eq!(c.recv()["type"], "authenticated");
    assert!(
        wrong.is_empty(),
        "before auth these got another code than UNAUTHORIZED:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------- options

#[test]
fn out_of_range_batch_ms_in_url_is_bad_message() {
    let s = Server::start("");
    let tok = token("u", "user", &["jobs"]);
    let mut c = Client::connect(&s, &format!("/ws?token={tok}&batchMs=999999999"));
    let e = c.recv();
    let msg = assert_error(&e, "BAD_MESSAGE");
    assert!(
        msg.contains("batchMs"),
        "message should name batchMs: {msg}"
    );
    // Not authenticated: a command is refused, and the connection is still open.
    c.send(&json!({"type": "ping"}));
    assert_error(&c.recv(), "UNAUTHORIZED");
    // A good auth message still authenticates it.
    c.send(&json!({"type": "auth", "token": tok}));
    assert_eq!(c.recv()["type"], "authenticated");
}

#[test]
fn url_options_are_bounded_by_config() {
    let s = Server::start("[delivery]\nmax_batch_ms = 60000\nqueue_capacity = 100");
    let tok = token("u", "user", &[]);
    // At the bounds: accepted.
    let mut c = Client::connect(
        &s,
        &format!("/ws?token={tok}&batchMs=60000&batchMax=100&framing=array"),
    );
    assert_eq!(c.recv()["type"], "authenticated");
    // Just past them: refused, naming the option.
    for (q, name) in [
        ("batchMs=60001", "batchMs"),
        ("batchMax=0", "batchMax"),
        ("batchMax=101", "batchMax"),
        ("batchMs=-1", "batchMs"),
        ("batchMs=soon", "batchMs"),
        ("framing=xml", "framing"),
    ] {
        let mut c = Client::connect(&s, &format!("/ws?token={tok}&{q}"));
        let msg = assert_error(&c.recv(), "BAD_MESSAGE");
        assert!(msg.contains(name), "{q}: message should name {name}: {msg}");
        c.send(&json!({"type": "ping"}));
        assert_error(&c.recv(), "UNAUTHORIZED");
    }
}

#[test]
fn bad_framing_in_auth_options_is_bad_message() {
    let s = Server::start("");
    let mut c = Client::connect(&s, "/ws");
    c.send(
        &json!({"type": "auth", "token": token("u", "user", &["jobs"]),
                   "options": {"framing": "xml"}}),
    );
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(
        msg.contains("framing"),
        "message should name framing: {msg}"
    );
    c.send(&json!({"type": "ping"}));
    assert_error(&c.recv(), "UNAUTHORIZED");
}

#[test]
fn auth_options_select_array_framing() {
    // The configured default is `frames` with the longest flush interval there is (60 s,
    // past every deadline below): events that arrive at all, in `batch` frames, came
    // by the options of the auth message (batchMs 0, framing array).
    let s =
        Server::start("[delivery]\nbatch_ms = 60000\nmax_batch_ms = 60000\nframing = \"frames\"");
    let mut c = Client::connect(&s, "/ws");
    c.send(
        &json!({"type": "auth", "token": token("u", "user", &["jobs"]),
                   "options": {"batchMs": 0, "framing": "array"}}),
    );
    assert_eq!(
        raw_json(&mut c, Duration::from_secs(15))["type"],
        "authenticated"
    );
    c.send(&json!({"type": "subscribeEvents", "requestId": "s",
                   "subscriptions": [{"id": "j", "path": "jobs"}]}));
    assert_eq!(
        raw_json(&mut c, Duration::from_secs(15))["type"],
        "subscribedEvents"
    );
    // A plain connection on the same server, for contrast: default framing (frames).
    let mut plain = Client::authed(&s, &token("p", "user", &["jobs"]), "&batchMs=0");
    plain.subscribe(json!([{"id": "j", "path": "jobs"}]));

    let (first, last) = s.publish_batch(vec![
        json!({"path": "jobs/1", "eventType": "e", "data": 1}),
        json!({"path": "jobs/2", "eventType": "e", "data": 2}),
        json!({"path": "jobs/3", "eventType": "e", "data": 3}),
    ]);
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let f = raw_json(&mut c, Duration::from_secs(15));
        assert_eq!(
            f["type"], "batch",
            "framing=array must send batch frames: {f}"
        );
        let msgs = f["messages"].as_array().expect("messages array");
        assert!(!msgs.is_empty(), "{f}");
        for m in msgs {
            assert_eq!(m["type"], "event", "{m}");
            seqs.push(m["seq"].as_u64().unwrap());
        }
    }
    // The batch's three events, in order, from its firstSeq to its lastSeq.
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!((seqs[0], seqs[2]), (first, last));
    let f = raw_json(&mut plain, Duration::from_secs(15));
    assert_eq!(
        f["type"], "event",
        "default framing sends each event as a frame: {f}"
    );
}

// ---------------------------------------------------------------- metrics

#[test]
fn auth_failures_are_counted() {
    let s = Server::start("");
    let metric = || s.metric("shardcast_auth_failures_total").unwrap_or(0.0);
    let base = metric();
    let bad = token_with(json!({"sub": "u", "exp": now() + 60}), "wrong");
    refused_via_url(&s, &bad);
    assert!(
        wait_until(Duration::from_secs(3), || metric() >= base + 1.0),
        "a refused URL token is counted: {}",
        metric()
    );
    refused_via_message(&s, &bad);
    assert!(
        wait_until(Duration::from_secs(3), || metric() >= base + 2.0),
        "a refused auth message is counted: {}",
        metric()
    );
    let mut c = Client::connect(&s, "/ws?uuid=00000000-0000-4000-8000-000000000000");
    assert_error(&c.recv(), "UNAUTHORIZED");
    assert!(
        wait_until(Duration::from_secs(3), || metric() >= base + 3.0),
        "a refused ticket is counted: {}",
        metric()
    );
    let (st, _) = s.http(
        "POST",
        "/api/v1/publish",
        Some(&json!({})),
        Some("apikey nope"),
    );
    assert_eq!(st, 401);
    assert!(
        wait_until(Duration::from_secs(3), || metric() >= base + 4.0),
        "a refused api key is counted: {}",
        metric()
    );
}

/// RS256 / ES256 (PROTOCOL.md §1): `auth.jwt_public_key` names a PEM public key whose type
/// picks the algorithm; HS256 with `jwt_secret` keeps working beside it.
mod asymmetric {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    fn key_path(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn server(public: &str) -> Server {
        Server::start(&format!(
            "[delivery]\nbatch_ms = 0\n{}",
            auth_section(&format!("jwt_public_key = \"{}\"", key_path(public)))
        ))
    }

    fn signed(alg: Algorithm, private: &str, claims: Value) -> String {
        let pem = std::fs::read(key_path(private)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    }

    fn claims(role: &str) -> Value {
        json!({"sub": "k1", "role": role, "scopes": ["*"], "exp": now() + 3600})
    }

    /// A token the node accepts: on a socket (URL and first message) and as a Bearer.
    fn accepted(s: &Server, tok: &str) {
        let mut c = Client::authed(s, tok, "");
        let seq = s.publish("keys/1", "e", json!(1));
        c.subscribe(json!([{"id": "a", "path": "keys", "since": seq - 1}]));
        assert_eq!(c.recv_type("event")["seq"], seq);
        let mut m = Client::connect(s, "/ws");
        m.send(&json!({"type": "auth", "token": tok}));
        assert_eq!(m.recv_type("authenticated")["type"], "authenticated");
        let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, Some(&bearer(tok)));
        assert_eq!(st, 201, "{body}");
    }

    #[test]
    fn rs256_tokens_from_the_configured_key_are_accepted_others_refused() {
        let s = server("rsa-public.pem");
        accepted(
            &s,
            &signed(Algorithm::RS256, "rsa-private.pem", claims("admin")),
        );
        accepted(&s, &token("k2", "admin", &["*"]));
        let foreign = signed(Algorithm::RS256, "other-rsa-private.pem", claims("admin"));
        refused_both_ways(&s, &foreign, "signature");
        let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, Some(&bearer(&foreign)));
        assert_eq!(st, 401, "{body}");
        // Key confusion: HS256 with the public key's bytes as the secret.
        let pem = std::fs::read_to_string(key_path("rsa-public.pem")).unwrap();
        refused_both_ways(&s, &token_with(claims("admin"), &pem), "signature");
        // ES256 has no key on this node.
        refused_both_ways(
            &s,
            &signed(Algorithm::ES256, "ec-private.pem", claims("user")),
            "es256",
        );
    }

    #[test]
    fn es256_tokens_from_the_configured_key_are_accepted_others_refused() {
        let s = server("ec-public.pem");
        accepted(
            &s,
            &signed(Algorithm::ES256, "ec-private.pem", claims("admin")),
        );
        let pem = std::fs::read_to_string(key_path("ec-public.pem")).unwrap();
        refused_both_ways(&s, &token_with(claims("admin"), &pem), "signature");
        refused_both_ways(
            &s,
            &signed(Algorithm::RS256, "rsa-private.pem", claims("admin")),
            "rs256",
        );
    }

    #[test]
    fn an_unusable_public_key_stops_start_up_naming_the_key() {
        for (file, says) in [
            ("p384-public.pem", "P-256"),
            ("rsa-private.pem", "private key"),
            ("missing.pem", "cannot be read"),
        ] {
            let err = serve_refused(&[("SHARDCAST_AUTH__JWT_PUBLIC_KEY", &key_path(file))]);
            assert!(
                err.contains("auth.jwt_public_key") && err.contains(file) && err.contains(says),
                "{file}: {err}"
            );
        }
    }
}
