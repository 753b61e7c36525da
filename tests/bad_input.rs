//! Bad input on the WebSocket (PROTOCOL.md §4–5, §10–11): every bad message gets an error
//! naming the problem and the connection keeps working, except where the contract names
//! a close code; one client's garbage never disturbs another's delivery.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

/// Immediate flushes, so delivered events can be awaited with short deadlines.
const FAST: &str = "[delivery]\nbatch_ms = 0";

fn user(s: &Server, scopes: &[&str]) -> Client {
    Client::authed(s, &token("u1", "user", scopes), "")
}

/// The connection still answers a ping.
fn still_works(c: &mut Client) {
    c.send(&json!({"type": "ping"}));
    let m = c.recv();
    assert_eq!(
        m,
        json!({"type": "pong"}),
        "the connection should still work"
    );
}

fn send_text(c: &mut Client, text: &str) {
    c.send_raw(Message::Text(text.to_string()));
}

/// Ids of the accepted subscriptions and (id, code) of the rejected ones.
fn split(r: &Value) -> (Vec<String>, Vec<(String, String)>) {
    assert_eq!(r["type"], "subscribedEvents", "{r}");
    let acc = r["subscriptions"]
        .as_array()
        .unwrap_or_else(|| panic!("subscriptions array: {r}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let rej = r
        .get("rejected")
        .map(|v| {
            v.as_array()
                .unwrap_or_else(|| panic!("rejected array: {r}"))
                .iter()
                .map(|s| {
                    assert!(s["message"].is_string(), "rejection has a message: {s}");
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["code"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (acc, rej)
}

// ---------------------------------------------------------------- message shape

#[test]
fn not_json_is_bad_message() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    send_text(&mut c, "this is not json {");
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(msg.to_lowercase().contains("json"), "{msg}");
    still_works(&mut c);
}

#[test]
fn json_array_is_bad_message() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    send_text(&mut c, r#"[{"type":"ping"}]"#);
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(msg.contains("object"), "{msg}");
    still_works(&mut c);
}

#[test]
fn missing_type_is_bad_message() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    c.send(&json!({"requestId": "r1", "subscriptions": []}));
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(msg.contains("type"), "message should name 'type': {msg}");
    still_works(&mut c);
}

#[test]
fn numeric_type_is_bad_message() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    c.send(&json!({"type": 7}));
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(msg.contains("type"), "message should name 'type': {msg}");
    still_works(&mut c);
}

#[test]
fn unknown_type_echoes_request_id() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    c.send(&json!({"type": "frobnicate", "requestId": "req-77"}));
    let e = c.recv();
    let msg = assert_error(&e, "UNKNOWN_TYPE");
    assert_eq!(e["requestId"], "req-77", "{e}");
    assert!(msg.contains("frobnicate"), "{msg}");
    still_works(&mut c);
}

#[test]
fn binary_frame_is_bad_message_and_connection_stays() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    c.send_raw(Message::Binary(br#"{"type":"ping"}"#.to_vec()));
    let msg = assert_error(&c.recv(), "BAD_MESSAGE");
    assert!(msg.to_lowercase().contains("binary"), "{msg}");
    still_works(&mut c);
}

// ---------------------------------------------------------------- subscriptions

#[test]
fn malformed_paths_are_rejected_but_valid_ones_accepted() {
    let s = Server::start(FAST);
    let mut c = user(&s, &["*"]);
    let deep = vec!["a"; 17].join("/");
    let r = c.subscribe(json!([
        {"id": "dslash", "path": "a//b"},
        {"id": "good", "path": "jobs"},
        {"id": "space", "path": "jo bs"},
        {"id": "deep", "path": deep},
    ]));
    let (acc, mut rej) = split(&r);
    assert_eq!(acc, vec!["good"], "{r}");
    rej.sort();
    assert_eq!(
        rej,
        vec![
            ("deep".to_string(), "INVALID_PATH".to_string()),
            ("dslash".to_string(), "INVALID_PATH".to_string()),
            ("space".to_string(), "INVALID_PATH".to_string()),
        ],
        "{r}"
    );
    // The accepted one is live.
    let seq = s.publish("jobs/1", "e", json!(1));
    let e = c.recv_type("event");
    assert_eq!(e["seq"], seq);
    assert_eq!(e["subscriptionIds"], json!(["good"]));
    still_works(&mut c);
}

#[test]
fn system_paths_are_for_admins_only() {
    let s = Server::start("");
    let mut u = user(&s, &["*"]);
    let r = u.subscribe(json!([{"id": "logs", "path": "$logs"}, {"id": "jobs", "path": "jobs"}]));
    let (acc, rej) = split(&r);
    assert_eq!(acc, vec!["jobs"], "{r}");
    assert_eq!(
        rej,
        vec![("logs".to_string(), "FORBIDDEN".to_string())],
        "{r}"
    );
    still_works(&mut u);
    // Whatever the scopes say.
    let mut u2 = Client::authed(&s, &token("u2", "user", &["$logs"]), "");
    let (acc, rej) = split(&u2.subscribe(json!([{"id": "logs", "path": "$logs/billing"}])));
    assert!(acc.is_empty());
    assert_eq!(rej, vec![("logs".to_string(), "FORBIDDEN".to_string())]);
    // No `scopes` claim: an admin's default is all paths.
    let admin = token_with(
        json!({"sub": "root", "role": "admin", "exp": now() + 3600}),
        SECRET,
    );
    let mut a = Client::authed(&s, &admin, "");
    let r = a.subscribe(json!([{"id": "logs", "path": "$logs"}]));
    let (acc, rej) = split(&r);
    assert_eq!(acc, vec!["logs"], "{r}");
    assert!(rej.is_empty(), "{r}");
}

#[test]
fn path_outside_scopes_is_forbidden() {
    let s = Server::start("");
    let mut c = user(&s, &["jobs"]);
    let r = c.subscribe(json!([
        {"id": "in", "path": "jobs/42"},
        {"id": "out", "path": "billing"},
        {"id": "lookalike", "path": "jobsx"},
    ]));
    let (acc, mut rej) = split(&r);
    assert_eq!(acc, vec!["in"], "{r}");
    rej.sort();
    assert_eq!(
        rej,
        vec![
            ("lookalike".to_string(), "FORBIDDEN".to_string()),
            ("out".to_string(), "FORBIDDEN".to_string()),
        ],
        "{r}"
    );
    // A user with no scopes may subscribe to nothing.
    let mut none = Client::authed(&s, &token("u2", "user", &[]), "");
    let (acc, rej) = split(&none.subscribe(json!([{"id": "x", "path": "jobs"}])));
    assert!(acc.is_empty());
    assert_eq!(rej, vec![("x".to_string(), "FORBIDDEN".to_string())]);
    still_works(&mut c);
}

#[test]
fn subscription_limit_counts_new_ids_only() {
    let s = Server::start(&format!("{FAST}\n[limits]\nmax_subscriptions = 3"));
    let mut c = user(&s, &["*"]);
    let r = c.subscribe(json!([
        {"id": "s1", "path": "jobs/1"},
        {"id": "s2", "path": "jobs/2"},
        {"id": "s3", "path": "jobs/3"},
        {"id": "s4", "path": "jobs/4"},
        {"id": "s5", "path": "jobs/5"},
    ]));
    let (acc, rej) = split(&r);
    assert_eq!(acc, vec!["s1", "s2", "s3"], "{r}");
    assert_eq!(
        rej,
        vec![
            ("s4".to_string(), "LIMIT_EXCEEDED".to_string()),
            ("s5".to_string(), "LIMIT_EXCEEDED".to_string()),
        ],
        "{r}"
    );
    // Reusing an id replaces, it does not count as a new subscription.
    let r = c.subscribe(json!([{"id": "s1", "path": "jobs/9"}]));
    let (acc, rej) = split(&r);
    assert_eq!(acc, vec!["s1"], "{r}");
    assert!(rej.is_empty(), "{r}");
    // Still full for a new id.
    let (acc, rej) = split(&c.subscribe(json!([{"id": "s6", "path": "jobs/6"}])));
    assert!(acc.is_empty());
    assert_eq!(rej, vec![("s6".to_string(), "LIMIT_EXCEEDED".to_string())]);
    // The replacement took effect: jobs/1 no longer reaches s1, jobs/9 does.
    let _old = s.publish("jobs/1", "e", json!("old"));
    let new = s.publish("jobs/9", "e", json!("new"));
    let e = c.recv_type("event");
    assert_eq!(
        e["seq"], new,
        "jobs/1 must not be delivered after s1 moved: {e}"
    );
    assert_eq!(e["subscriptionIds"], json!(["s1"]));
    // Freeing a slot makes room for one more.
    c.send(&json!({"type": "unsubscribeEvents", "requestId": "u", "ids": ["s2"]}));
    assert_eq!(c.recv_type("unsubscribedEvents")["ids"], json!(["s2"]));
    let (acc, _) = split(&c.subscribe(json!([{"id": "s6", "path": "jobs/6"}])));
    assert_eq!(acc, vec!["s6"]);
    still_works(&mut c);
}

#[test]
fn unsubscribe_answers_ids_and_stops_delivery() {
    let s = Server::start(FAST);
    let mut c = user(&s, &["*"]);
    let (acc, _) = split(&c.subscribe(json!([
        {"id": "a", "path": "jobs"},
        {"id": "b", "path": "billing"},
    ])));
    assert_eq!(acc, vec!["a", "b"]);
    let seq = s.publish("jobs/1", "e", json!(1));
    assert_eq!(c.recv_type("event")["seq"], seq);
    c.send(&json!({"type": "unsubscribeEvents", "requestId": "req-2", "ids": ["a"]}));
    let m = c.recv_type("unsubscribedEvents");
    assert_eq!(m["requestId"], "req-2", "{m}");
    assert_eq!(m["ids"], json!(["a"]), "{m}");
    // Events of one connection arrive in seq order: if jobs/2 were still delivered it
    // would come before billing/1.
    let _gone = s.publish("jobs/2", "e", json!(2));
    let kept = s.publish("billing/1", "e", json!(3));
    let e = c.recv_type("event");
    assert_eq!(e["seq"], kept, "no event for 'a' after unsubscribing: {e}");
    assert_eq!(e["subscriptionIds"], json!(["b"]));
    still_works(&mut c);
}

// ---------------------------------------------------------------- permissions, features

#[test]
fn service_commands_from_a_user_are_forbidden() {
    let s = Server::start("");
    let mut c = user(&s, &["*"]);
    c.send(&json!({"type": "taskComplete", "taskIds": ["billing:1"]}));
    assert_error(&c.recv(), "FORBIDDEN");
    c.send(
        &json!({"type": "lock", "requestId": "r1", "name": "invoice-42",
                   "ttlMs": 10000, "waitMs": 0}),
    );
    let e = c.recv();
    assert_error(&e, "FORBIDDEN");
    assert_eq!(e["requestId"], "r1", "{e}");
    c.send(
        &json!({"type": "publish", "requestId": "r2", "path": "jobs/1",
                   "eventType": "x", "data": {}}),
    );
    let e = c.recv();
    assert_error(&e, "FORBIDDEN");
    assert_eq!(e["requestId"], "r2", "{e}");
    for t in ["taskFailed", "unlock", "log"] {
        c.send(&json!({"type": t, "taskIds": ["x"], "name": "n", "level": "info", "message": "m"}));
        assert_error(&c.recv(), "FORBIDDEN");
    }
    still_works(&mut c);
}

// ---------------------------------------------------------------- closing errors

#[test]
fn oversized_message_closes_with_1009() {
    let s = Server::start("[limits]\nmax_message_bytes = 1024");
    let mut c = user(&s, &[]);
    // Exactly at the limit is fine.
    let at_limit = json!({"type": "ping", "pad": "x".repeat(1000)}).to_string();
    assert_eq!(at_limit.len(), 1024);
    send_text(&mut c, &at_limit);
    assert_eq!(c.recv()["type"], "pong");
    let mut other = user(&s, &[]);
    let big = json!({"type": "ping", "pad": "x".repeat(1001)}).to_string();
    assert_eq!(big.len(), 1025);
    send_text(&mut c, &big);
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(
        code, 1009,
        "a message over max_message_bytes closes with 1009"
    );
    still_works(&mut other);
}

#[test]
fn oversized_fragmented_message_closes_with_1009() {
    let s = Server::start("[limits]\nmax_message_bytes = 1024");
    let mut c = user(&s, &[]);
    // Fragments that are each small but add up to more than the limit.
    let text = OpCode::Data(Data::Text);
    let cont = OpCode::Data(Data::Continue);
    c.send_raw(Message::Frame(Frame::message(
        b"{\"type\":\"ping\",\"pad\":\"".to_vec(),
        text,
        false,
    )));
    for _ in 0..3 {
        c.send_raw(Message::Frame(Frame::message(vec![b'x'; 400], cont, false)));
    }
    c.send_raw(Message::Frame(Frame::message(b"\"}".to_vec(), cont, true)));
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(
        code, 1009,
        "a fragmented message over max_message_bytes closes with 1009"
    );
}

#[test]
fn invalid_utf8_text_closes_with_1007() {
    let s = Server::start("");
    let mut c = user(&s, &[]);
    let frame = Frame::message(
        vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
        OpCode::Data(Data::Text),
        true,
    );
    c.send_raw(Message::Frame(frame));
    let (code, _) = c.expect_close(Duration::from_secs(3));
    assert_eq!(code, 1007, "invalid UTF-8 in a text frame closes with 1007");
}

// ---------------------------------------------------------------- rate limits

const RATE: &str = "[limits]\ncommands_per_sec = 5\ncommands_burst = 10";

/// Sends `n` pings back to back, then reads the `n` answers: (pongs, rate-limited).
fn ping_burst(c: &mut Client, n: usize) -> (usize, usize) {
    for _ in 0..n {
        c.ws.write(Message::Text(r#"{"type":"ping"}"#.into()))
            .expect("write");
    }
    c.ws.flush().expect("flush");
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..n {
        let m = c.recv();
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_error(&m, "RATE_LIMITED");
                limited += 1;
            }
            _ => panic!("unexpected answer to a ping: {m}"),
        }
    }
    (pongs, limited)
}

/// The token bucket's promise (PROTOCOL.md §11, with [`RATE`]): over a window of `secs`,
/// at most the burst plus what refills in it is answered, and at least the burst is.
/// A bound from the contract, not from how fast this machine is.
fn assert_bucket(pongs: usize, secs: f64) {
    assert!(pongs >= 10, "the burst of 10 is allowed: {pongs} pongs");
    let most = 10.0 + 5.0 * secs + 1.0;
    assert!(
        pongs as f64 <= most,
        "at most the burst plus 5/s over {secs:.3} s ({most:.1}): {pongs} pongs"
    );
}

#[test]
fn user_commands_are_rate_limited() {
    let s = Server::start(RATE);
    let mut c = user(&s, &[]);
    let t0 = Instant::now();
    let (pongs, limited) = ping_burst(&mut c, 30);
    assert_bucket(pongs, t0.elapsed().as_secs_f64());
    assert_eq!(pongs + limited, 30);
    // Another user connection has its own budget.
    let mut other = user(&s, &[]);
    still_works(&mut other);
    // The bucket refills: a ping is answered again (a deadline, not a speed: the refill
    // is 5/s).
    let mut ok = false;
    assert!(wait_until(Duration::from_secs(10), || {
        c.send(&json!({"type": "ping"}));
        let m = c.recv();
        ok = m["type"] == "pong";
        if !ok {
            assert_error(&m, "RATE_LIMITED");
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    }));
    assert!(ok);
}

#[test]
fn admin_connections_are_not_rate_limited() {
    let s = Server::start(RATE);
    let mut a = Client::authed(&s, &token("root", "admin", &[]), "");
    let (pongs, limited) = ping_burst(&mut a, 30);
    assert_eq!((pongs, limited), (30, 0));
}

#[test]
fn service_connections_are_not_rate_limited() {
    // PROTOCOL.md §11: "service and admin connections are not rate-limited, so
    // acknowledgements and service publishes flow at full speed".
    let s = Server::start(RATE);
    let svc = token_with(
        json!({"sub": "svc", "role": "service", "group": "g", "exp": now() + 3600}),
        SECRET,
    );
    let mut a = Client::authed(&s, &svc, "&batchMs=0");
    // Three times the burst of publishes, acknowledgements and pings, all at once.
    for i in 0..30 {
        let publish = json!({"type": "publish", "requestId": format!("p{i}"),
                             "path": format!("jobs/{i}"), "eventType": "e", "data": i});
        let ack = json!({"type": "taskComplete", "taskIds": [format!("g:{i}")]});
        for m in [publish, ack, json!({"type": "ping"})] {
            a.ws.write(Message::Text(m.to_string())).expect("write");
        }
    }
    a.ws.flush().expect("flush");
    let (mut published, mut pongs) = (std::collections::BTreeSet::new(), 0);
    while published.len() + pongs < 60 {
        let m = a.recv();
        match m["type"].as_str() {
            Some("published") => assert!(published.insert(m["requestId"].to_string()), "{m}"),
            Some("pong") => pongs += 1,
            _ => panic!("a service command was not executed: {m}"),
        }
    }
    assert_eq!((published.len(), pongs), (30, 30));
    // The same burst from a user connection of this server is limited.
    let mut u = user(&s, &[]);
    let t0 = Instant::now();
    let (pongs, _) = ping_burst(&mut u, 30);
    assert_bucket(pongs, t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- isolation

/// Garbage of every kind; each gets exactly one error answer.
fn garbage(i: usize) -> Message {
    let text = match i % 12 {
        0 => "not json at all".to_string(),
        1 => "[1,2,3]".to_string(),
        2 => "{}".to_string(),
        3 => r#"{"type":42}"#.to_string(),
        4 => format!(r#"{{"type":"bogus{i}","requestId":"g{i}"}}"#),
        5 => r#"{"type":"subscribeEvents"}"#.to_string(),
        6 => r#"{"type":"subscribeEvents","subscriptions":[{"path":"jobs"}]}"#.to_string(),
        7 => r#"{"type":"unsubscribeEvents","ids":[1]}"#.to_string(),
        8 => return Message::Binary(vec![0, 1, 2, 3, i as u8]),
        9 => r#""just a string""#.to_string(),
        10 => r#"{"type":"ping""#.to_string(),
        _ => r#"{"type":null}"#.to_string(),
    };
    Message::Text(text)
}

#[test]
fn garbage_flood_does_not_disturb_other_connections() {
    let s = Server::start(&format!("{FAST}\n[limits]\ncommands_burst = 1000"));
    let mut sub = Client::authed(&s, &token("watcher", "user", &["jobs"]), "");
    let (acc, _) = split(&sub.subscribe(json!([{"id": "w", "path": "jobs"}])));
    assert_eq!(acc, vec!["w"]);
    let mut flood = user(&s, &["*"]);

    let sender = std::thread::spawn(move || {
        for i in 0..200 {
            flood.ws.write(garbage(i)).expect("write garbage");
            if i % 20 == 19 {
                flood.ws.flush().expect("flush");
            }
        }
        flood.ws.flush().expect("flush");
        flood
    });
    let mut seqs = Vec::new();
    for i in 0..50 {
        seqs.push(s.publish(&format!("jobs/{i}"), "tick", json!({"i": i})));
    }
    let mut flood = sender.join().expect("flood thread");

    for (i, want) in seqs.iter().enumerate() {
        let e = sub.recv_type("event");
        assert_eq!(e["seq"], *want, "event {i} in order");
        assert_eq!(e["data"], json!({"i": i}));
    }
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let m = flood.recv();
        assert_eq!(m["type"], "error", "{m}");
        let code = m["code"].as_str().unwrap().to_string();
        assert!(code == "BAD_MESSAGE" || code == "UNKNOWN_TYPE", "{m}");
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(codes.get("UNKNOWN_TYPE"), Some(&17), "{codes:?}");
    // Each garbage message got exactly one answer: the next one is the pong (errors for
    // bad input and pongs are both written as the shard reads, in order).
    still_works(&mut flood);
    still_works(&mut sub);
    // Delivery continues after the flood.
    let seq = s.publish("jobs/after", "tick", json!(null));
    assert_eq!(sub.recv_type("event")["seq"], seq);
}
