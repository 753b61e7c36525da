//! Findings of the security review (issue 18), each against the real binary: `$` paths
//! are written by the server only (PROTOCOL.md §4), a `group` option cannot override the
//! token's `group` claim (§2), one `Authorization` header per request (§2), a ticket ends
//! with its token (§2), and refused credentials are logged, rate-limited, without secrets
//! (docs/SECURITY.md).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn service_token(sub: &str, group: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "service", "group": group, "exp": now() + 3600}),
        SECRET,
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// An admin socket subscribed to every system path and to `jobs`, flushing at once.
fn watcher(s: &Server) -> Client {
    let mut a = Client::authed(s, &token("ops", "admin", &["*"]), "&batchMs=0");
    let r = a.subscribe(json!([
        {"id": "logs", "path": "$logs"},
        {"id": "x", "path": "$x"},
        {"id": "jobs", "path": "jobs"},
    ]));
    assert_eq!(r["subscriptions"].as_array().map(Vec::len), Some(3), "{r}");
    a
}

/// The next event (skipping pings).
fn next_event(c: &mut Client) -> Value {
    c.recv_type("event")
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection and returns the status
/// of the answer, read up to the end of its head (an accepted upgrade stays open).
fn raw_status(s: &Server, request: &str) -> (u16, String) {
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(request.as_bytes()).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).expect("read the answer");
        assert!(
            n > 0,
            "closed before an answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    // The body of an error follows its head; take what is there.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    if let Ok(n) = sock.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    (status, text)
}

/// Asserts a REST refusal: status, code, and that the message names `needle`.
#[track_caller]
fn refused(answer: (u16, Value), status: u16, code: &str, needle: &str) -> Value {
    let (st, body) = answer;
    assert_eq!(st, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let m = body["error"]["message"].as_str().unwrap_or("");
    assert!(m.contains(needle), "message should name {needle:?}: {body}");
    body
}

// ---------------------------------------------------------------- `$` paths (§4)

#[test]
fn rest_publishes_to_system_paths_are_forbidden_for_every_caller() {
    let s = Server::start("");
    let mut admin = watcher(&s);
    let callers = [
        ("api key", apikey()),
        ("admin", bearer(&token("root", "admin", &["*"]))),
        ("service of g2", bearer(&service_token("evil", "g2"))),
    ];
    for (who, auth) in &callers {
        for path in ["$logs/g1", "$x", "$logs"] {
            let body = json!({"path": path, "eventType": "info",
                "data": {"message": "forged", "fields": {}, "instance": "g1-a"}});
            let r = s.http("POST", "/api/v1/publish", Some(&body), Some(auth));
            let b = refused(r, 403, "FORBIDDEN", path);
            assert!(b["error"].get("index").is_none(), "{who}: {b}");
        }
        // A batch with one system item is refused whole, naming the item.
        let batch = json!({"events": [
            {"path": "jobs/a", "eventType": "e", "data": 1},
            {"path": "jobs/b", "eventType": "e", "data": 2},
            {"path": "$logs/g1", "eventType": "info", "data": {"message": "forged"}},
        ]});
        let r = s.http("POST", "/api/v1/publish", Some(&batch), Some(auth));
        let b = refused(r, 403, "FORBIDDEN", "events[2].path");
        assert_eq!(b["error"]["index"], 2, "{who}: {b}");
        let one = json!({"events": [{"path": "$x/1", "eventType": "e"}]});
        let r = s.http("POST", "/api/v1/publish", Some(&one), Some(auth));
        assert_eq!(refused(r, 403, "FORBIDDEN", "$x/1")["error"]["index"], 0);
    }
    // Nothing of the above was published: the first events the admin gets are a real
    // log of g1 and then a marker, in that order.
    let mut g1 = Client::authed(&s, &service_token("g1-a", "g1"), "&batchMs=0");
    g1.send(&json!({"type": "log", "level": "info", "message": "genuine"}));
    let e = next_event(&mut admin);
    assert_eq!(e["path"], "$logs/g1", "a forged event came first: {e}");
    assert_eq!(e["data"]["message"], "genuine", "{e}");
    let marker = s.publish("jobs/marker", "e", json!(null));
    let e = next_event(&mut admin);
    assert_eq!(
        (e["path"].clone(), e["seq"].clone()),
        (json!("jobs/marker"), json!(marker)),
        "a refused batch's item came first: {e}"
    );
}

#[test]
fn socket_publishes_to_system_paths_are_forbidden_and_logs_stay_in_their_group() {
    let s = Server::start("");
    let mut admin = watcher(&s);
    let mut g2 = Client::authed(&s, &service_token("evil", "g2"), "&batchMs=0");
    for (i, path) in ["$logs/g1", "$x", "$logs"].iter().enumerate() {
        let rid = format!("p{i}");
        g2.send(
            &json!({"type": "publish", "requestId": rid, "path": path, "eventType": "info",
            "data": {"message": "forged", "fields": {}, "instance": "g1-a"}}),
        );
        let e = g2.error();
        assert!(assert_error(&e, "FORBIDDEN").contains(path), "{e}");
        assert_eq!(e["requestId"], json!(rid), "{e}");
    }
    // Admins publish over the socket as over REST, and are refused the same way.
    admin.send(&json!({"type": "publish", "requestId": "a1", "path": "$x/1", "eventType": "e"}));
    let e = admin.error();
    assert!(assert_error(&e, "FORBIDDEN").contains("$x/1"), "{e}");
    // A service's `log` goes to its own group's path.
    g2.send(&json!({"type": "log", "level": "warn", "message": "mine"}));
    let e = next_event(&mut admin);
    assert_eq!(
        (
            e["path"].clone(),
            e["data"]["message"].clone(),
            e["data"]["instance"].clone()
        ),
        (json!("$logs/g2"), json!("mine"), json!("evil")),
        "a forged event came first: {e}"
    );
    // And the socket still publishes where it may.
    g2.send(&json!({"type": "publish", "requestId": "ok", "path": "jobs/1", "eventType": "e"}));
    let p = g2.recv_type("published");
    let e = next_event(&mut admin);
    assert_eq!(
        (e["path"].clone(), e["seq"].clone()),
        (json!("jobs/1"), p["seq"].clone())
    );
}

#[test]
fn entity_writes_cannot_address_system_collections() {
    let s = Server::start("");
    let mut admin = watcher(&s);
    let key = apikey();
    for (method, path) in [
        ("PUT", "/api/v1/entities/$logs/g1"),
        ("PUT", "/api/v1/entities/%24x/1"),
        ("PATCH", "/api/v1/entities/$x/1"),
        ("DELETE", "/api/v1/entities/$x/1"),
        ("GET", "/api/v1/entities/$x/1"),
        ("GET", "/api/v1/entities/$x"),
    ] {
        let body = (method != "GET" && method != "DELETE").then(|| json!({"message": "forged"}));
        let r = s.http(method, path, body.as_ref(), Some(&key));
        refused(r, 400, "INVALID_PATH", "collection");
    }
    admin.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "$logs"}}));
    assert!(assert_error(&admin.error(), "INVALID_PATH").contains("edge"));
    let marker = s.publish("jobs/marker", "e", json!(null));
    let e = next_event(&mut admin);
    assert_eq!(e["seq"], marker, "an entity write was published: {e}");
}

// ---------------------------------------------------------------- `group` option (§2)

/// The group's line of `GET /api/v1/services` (`Null` if it is not listed).
fn group(s: &Server, name: &str) -> Value {
    let (st, body) = s.http("GET", "/api/v1/services", None, Some(&apikey()));
    assert_eq!(st, 200, "{body}");
    body["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["group"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_group_option_cannot_override_the_token_group_claim() {
    let s = Server::start("");
    // g1 has a task in flight at its only instance.
    let mut g1 = Client::authed(&s, &service_token("g1-a", "g1"), "&batchMs=0");
    g1.subscribe(json!([{"id": "w", "path": "jobs"}]));
    let seq = s.publish("jobs/1", "e", json!(1));
    let task = g1.recv_type("event");
    assert_eq!(task["seq"], seq, "{task}");
    let evil = service_token("evil", "g2");
    // In the URL.
    let mut c = Client::connect(&s, &format!("/ws?token={evil}&group=g1&batchMs=0"));
    let e = c.recv();
    let m = assert_error(&e, "FORBIDDEN");
    assert!(m.contains("g1") && m.contains("g2"), "{m}");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4001);
    // In the auth message's options.
    let mut c = Client::connect(&s, "/ws");
    c.send(&json!({"type": "auth", "requestId": "a", "token": evil, "options": {"group": "g1"}}));
    let e = c.recv();
    assert_error(&e, "FORBIDDEN");
    assert_eq!(e["requestId"], "a", "{e}");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4001);
    assert_eq!(group(&s, "g1")["instances"], 1, "{}", group(&s, "g1"));
    assert_eq!(group(&s, "g1")["inFlight"], 1, "{}", group(&s, "g1"));
    // The option equal to the claim changes nothing.
    let mut same = Client::authed(&s, &evil, "&group=g2");
    let mut admin = watcher(&s);
    same.send(&json!({"type": "log", "level": "info", "message": "after"}));
    let e = next_event(&mut admin);
    assert_eq!(
        (e["path"].clone(), e["data"]["message"].clone()),
        (json!("$logs/g2"), json!("after"))
    );
    // A token without a claim: the option names the group, else `sub` does.
    let free = token_with(
        json!({"sub": "free", "role": "service", "exp": now() + 3600}),
        SECRET,
    );
    let _joined = Client::authed(&s, &free, "&group=g1");
    assert!(
        wait_until(Duration::from_secs(10), || group(&s, "g1")["instances"]
            == 2),
        "{}",
        group(&s, "g1")
    );
    let _alone = Client::authed(&s, &free, "");
    assert!(
        wait_until(Duration::from_secs(10), || group(&s, "free")["instances"]
            == 1),
        "{}",
        group(&s, "free")
    );
    // g1's instance still holds its task and completes it.
    g1.send(&json!({"type": "taskComplete", "taskIds": [task["taskId"]]}));
    assert!(
        wait_until(Duration::from_secs(10), || group(&s, "g1")["inFlight"] == 0),
        "{}",
        group(&s, "g1")
    );
}

// ---------------------------------------------------------------- `Authorization` (§2)

#[test]
fn two_authorization_headers_are_refused_on_rest_and_upgrades() {
    let s = Server::start("");
    let mut admin = watcher(&s);
    let good = apikey();
    let body = r#"{"path":"jobs/dup","eventType":"e"}"#;
    for (first, second) in [
        (good.as_str(), "apikey wrong"),
        ("apikey wrong", good.as_str()),
        (good.as_str(), good.as_str()),
    ] {
        let req = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: t\r\nAuthorization: {first}\r\n\
             authorization: {second}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (st, text) = raw_status(&s, &req);
        assert_eq!(st, 400, "{text}");
        assert!(
            text.contains("BAD_MESSAGE") && text.contains("Authorization"),
            "{text}"
        );
    }
    let tok = token("u", "user", &["*"]);
    let req = format!(
        "GET /ws?token={tok} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {tok}\r\nAuthorization: Bearer x\r\n\r\n"
    );
    let (st, text) = raw_status(&s, &req);
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("BAD_MESSAGE"), "{text}");
    // None of the publishes went through.
    let marker = s.publish("jobs/marker", "e", json!(null));
    assert_eq!(next_event(&mut admin)["seq"], marker);
}

// ---------------------------------------------------------------- tickets (§2)

#[test]
fn a_ticket_expires_with_its_token() {
    let s = Server::start("");
    // Expires in 2 to 3 s, well before the 30 s ticket TTL.
    let exp = now() + 3;
    let tok = token_with(json!({"sub": "u", "scopes": ["*"], "exp": exp}), SECRET);
    let mut tickets = Vec::new();
    for _ in 0..2 {
        let (st, body) = s.http("POST", "/api/v1/ws-tickets", None, Some(&bearer(&tok)));
        assert_eq!(st, 201, "{body}");
        assert_eq!(
            body["expiresAt"],
            shardcast::time::rfc3339_ms(exp * 1000),
            "expiresAt is the token's exp: {body}"
        );
        tickets.push(body["uuid"].as_str().unwrap().to_string());
    }
    // Before `exp` a ticket works.
    let mut c = Client::connect(&s, &format!("/ws?uuid={}", tickets[0]));
    assert_eq!(c.recv()["type"], "authenticated");
    // From `exp` on it does not.
    assert!(wait_until(Duration::from_secs(10), || {
        shardcast::time::unix_ms() >= exp * 1000
    }));
    let mut c = Client::connect(&s, &format!("/ws?uuid={}", tickets[1]));
    let m = assert_error(&c.recv(), "UNAUTHORIZED");
    assert!(m.contains("expired"), "{m}");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4001);
}

// ---------------------------------------------------------------- failure log

/// The log lines of refused credentials.
fn failure_lines(s: &Server) -> Vec<String> {
    s.log()
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .map(str::to_string)
        .collect()
}

/// The value of `name=` in a log line (quotes removed).
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let rest = &line[at + name.len() + 2..];
    rest.split(' ').next().unwrap_or("").trim_matches('"')
}

#[test]
fn authentication_failures_are_logged_rate_limited_and_without_secrets() {
    // One shard: one line budget.
    let s = Server::start("shards = 1");
    let bad_key = "apikey sekrit-never-logged";
    let forged = token_with(json!({"sub": "u", "exp": now() + 60}), "not-the-secret");
    let signature = forged.rsplit('.').next().unwrap().to_string();
    // One refused socket token and one refused api key, each named with its reason,
    // peer and path.
    let mut c = Client::connect(&s, &format!("/ws?token={forged}"));
    assert_error(&c.recv(), "UNAUTHORIZED");
    let (st, _) = s.http("POST", "/api/v1/publish", Some(&json!({})), Some(bad_key));
    assert_eq!(st, 401);
    let mut sent = 2u64;
    assert!(
        wait_until(Duration::from_secs(10), || failure_lines(&s).len() == 2),
        "{}",
        s.log()
    );
    let lines = failure_lines(&s);
    assert_eq!(field(&lines[0], "reason"), "bad_signature", "{}", lines[0]);
    assert_eq!(field(&lines[0], "path"), "/ws", "{}", lines[0]);
    assert!(
        field(&lines[0], "peer").starts_with("127.0.0.1:"),
        "{}",
        lines[0]
    );
    assert_eq!(field(&lines[1], "reason"), "bad_api_key", "{}", lines[1]);
    assert_eq!(field(&lines[1], "path"), "/api/v1/publish", "{}", lines[1]);
    assert!(
        field(&lines[1], "peer").starts_with("127.0.0.1:"),
        "{}",
        lines[1]
    );
    // A flood: more than a second's budget of lines.
    let start_s = shardcast::time::unix_secs();
    for _ in 0..150 {
        let (st, _) = s.http("GET", "/api/v1/services", None, Some(bad_key));
        assert_eq!(st, 401);
    }
    let end_s = shardcast::time::unix_secs();
    sent += 150;
    let flood = failure_lines(&s).len() - 2;
    assert!(
        flood as u64 <= 10 * (end_s - start_s + 1),
        "{flood} lines in {} s",
        end_s - start_s + 1
    );
    // The first failure of a later second says how many were left out: lines plus
    // their `suppressed` counts add up to every failure, as the metric does.
    assert!(wait_until(Duration::from_secs(5), || {
        shardcast::time::unix_secs() > end_s
    }));
    let (st, _) = s.http("GET", "/api/v1/services", None, Some(bad_key));
    assert_eq!(st, 401);
    sent += 1;
    let lines = failure_lines(&s);
    let suppressed: u64 = lines
        .iter()
        .map(|l| field(l, "suppressed").parse::<u64>().expect("suppressed"))
        .sum();
    assert!(
        suppressed > 0,
        "the flood was not limited: {} lines",
        lines.len()
    );
    assert_eq!(lines.len() as u64 + suppressed, sent, "{lines:#?}");
    let counted = s.metric("shardcast_auth_failures_total").unwrap_or(0.0);
    assert_eq!(counted as u64, sent, "the metric counts every failure");
    let log = s.log();
    assert!(!log.contains(&signature), "the token was logged");
    assert!(!log.contains("sekrit"), "the api key was logged");
}
