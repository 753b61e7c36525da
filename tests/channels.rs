//! Channels (PROTOCOL.md §9): the REST API (bodies and answers as in the seed), who may
//! see and manage what, durable backlogs, channel sockets, drops and reconnects, restarts.

mod common;

use std::time::Duration;

use common::channels::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn the_rest_api_answers_as_the_seed_does() {
    let s = Server::start("public_url = \"wss://realtime.example.com\"\n");
    let t = user("usr_coord99", "org_001");
    let created = org_channel(
        &s,
        &t,
        "org_001",
        "usr_coord99",
        &["status_changed", "claim_submitted"],
    );
    let keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "channel_id",
            "subscription_type",
            "organisation_id",
            "user_id",
            "websocket_url",
            "status",
            "created_at"
        ],
        "{created}"
    );
    let id = created["channel_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("chan_"));
    assert_eq!(created["subscription_type"], "organisation_claims");
    assert_eq!(created["status"], "connected");
    assert_eq!(
        created["websocket_url"],
        format!("wss://realtime.example.com/channels/{id}")
    );
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (st, u) = call(
        &s,
        "POST",
        &format!("{BASE}/user"),
        Some(json!({"user_id": "usr_coord99", "event_types": []})),
        &t,
    );
    assert_eq!(st, 201, "{u}");
    let keys: Vec<&str> = u.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "channel_id",
            "subscription_type",
            "user_id",
            "websocket_url",
            "status",
            "created_at"
        ]
    );
    assert_eq!(u["subscription_type"], "user_claims");
    let (st, c) = call(
        &s,
        "POST",
        BASE,
        Some(json!({"path": "jobs", "event_types": ["done"], "filter": "n > 1"})),
        &t,
    );
    assert_eq!(
        (st, c["subscription_type"].clone()),
        (201, json!("custom")),
        "{c}"
    );

    claim(&s, "org_001", "x", "status_changed", 1);
    let (st, d) = call(&s, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(st, 200, "{d}");
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "channel_id",
            "subscription_type",
            "organisation_id",
            "user_id",
            "status",
            "event_count",
            "websocket_url",
            "created_at",
            "last_event_at"
        ]
    );
    assert!(wait_until(Duration::from_secs(5), || call(
        &s,
        "GET",
        &format!("{BASE}/{id}"),
        None,
        &t
    )
    .1["event_count"]
        == 1));
    let (_, d) = call(&s, "GET", &format!("{BASE}/{id}"), None, &t);
    assert!(d["last_event_at"].as_str().unwrap().ends_with('Z'), "{d}");

    // The list: three channels, paginated, filtered.
    let (st, l) = call(&s, "GET", &format!("{BASE}?page=1&limit=2"), None, &t);
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["pagination"], json!({"page": 1, "limit": 2, "total": 3}));
    assert_eq!(l["data"].as_array().unwrap().len(), 2);
    assert_eq!(l["data"][0]["channel_id"], id.as_str(), "oldest first");
    let keys: Vec<&str> = l["data"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "channel_id",
            "subscription_type",
            "organisation_id",
            "user_id",
            "status",
            "created_at",
            "last_event_at"
        ]
    );
    let (_, l2) = call(&s, "GET", &format!("{BASE}?page=2&limit=2"), None, &t);
    assert_eq!(l2["data"].as_array().unwrap().len(), 1);
    let (_, lo) = call(
        &s,
        "GET",
        &format!("{BASE}?organisation_id=org_001"),
        None,
        &t,
    );
    assert_eq!(lo["pagination"]["total"], 1);
    let (_, ls) = call(&s, "GET", &format!("{BASE}?status=disconnected"), None, &t);
    assert_eq!(ls["pagination"]["total"], 0);

    // Reconnect and delete.
    let (st, r) = call(&s, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(st, 200, "{r}");
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        ["channel_id", "status", "reconnected_at", "missed_events"]
    );
    assert_eq!(
        (r["status"].clone(), r["missed_events"].clone()),
        (json!("connected"), json!(0))
    );
    let (st, del) = call(&s, "DELETE", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(st, 200, "{del}");
    assert_eq!(
        (del["channel_id"].clone(), del["unsubscribed"].clone()),
        (json!(id), json!(true))
    );
    assert!(del["closed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(call(&s, "GET", &format!("{BASE}/{id}"), None, &t).0, 404);
    assert_eq!(
        call(&s, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t).0,
        404
    );
    assert_eq!(call(&s, "DELETE", &format!("{BASE}/{id}"), None, &t).0, 404);
}

#[test]
fn users_see_their_own_admins_all_and_creation_is_checked() {
    let s = Server::start("");
    let alice = user("alice", "org_a");
    let bob = user("bob", "org_b");
    let admin = token_with(
        json!({"sub": "ops", "role": "admin", "exp": now() + 3600}),
        SECRET,
    );
    let a = org_channel(&s, &alice, "org_a", "alice", &[]);
    let id = a["channel_id"].as_str().unwrap();
    // Bob cannot see, reconnect or delete it: 404, as for an unknown id.
    for (m, p) in [
        ("GET", format!("{BASE}/{id}")),
        ("PUT", format!("{BASE}/{id}/reconnect")),
        ("DELETE", format!("{BASE}/{id}")),
    ] {
        let (st, e) = call(&s, m, &p, None, &bob);
        assert_eq!(
            (st, e["error"]["code"].clone()),
            (404, json!("NOT_FOUND")),
            "{m} {p}: {e}"
        );
    }
    assert_eq!(
        call(&s, "GET", BASE, None, &bob).1["pagination"]["total"],
        0
    );
    assert_eq!(
        call(&s, "GET", BASE, None, &admin).1["pagination"]["total"],
        1
    );
    assert_eq!(
        call(&s, "GET", &format!("{BASE}/{id}"), None, &admin).0,
        200
    );
    assert_eq!(
        s.http("GET", BASE, None, Some(&apikey())).1["pagination"]["total"],
        1
    );
    // Another org's channel, another user's: 403.
    for (path, body) in [
        (
            "/organisation",
            json!({"organisation_id": "org_a", "user_id": "bob", "event_types": []}),
        ),
        ("/user", json!({"user_id": "alice", "event_types": []})),
        ("", json!({"path": "secret", "event_types": []})),
    ] {
        let (st, e) = call(
            &s,
            "POST",
            &format!("{BASE}{path}"),
            Some(body.clone()),
            &bob,
        );
        assert_eq!(
            (st, e["error"]["code"].clone()),
            (403, json!("FORBIDDEN")),
            "{path} {body}: {e}"
        );
    }
    // No or a bad token: 401.
    assert_eq!(s.http("GET", BASE, None, None).0, 401);
    assert_eq!(s.http("GET", BASE, None, Some("Bearer nope")).0, 401);
    // A foreign socket: FORBIDDEN and 4001.
    let mut c = Client::connect(&s, &format!("/channels/{id}?token={bob}"));
    c.recv_type("authenticated");
    assert_error(&c.error(), "FORBIDDEN");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4001);
    // An unknown channel: NOT_FOUND and 4001.
    let mut c = Client::connect(
        &s,
        &format!("/channels/chan_0000000000000000?token={alice}"),
    );
    c.recv_type("authenticated");
    assert_error(&c.error(), "NOT_FOUND");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4001);
}

#[test]
fn bad_bodies_and_queries_are_named() {
    let s = Server::start("");
    let t = user("u", "org");
    let raw = |path: &str, body: &str| {
        let (st, text) = s
            .try_http(
                "POST",
                &format!("{BASE}{path}"),
                Some(body.as_bytes()),
                &[("Authorization", &bearer(&t))],
            )
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (st, v)
    };
    for (path, body, code, word) in [
        ("/user", "[1]", "BAD_MESSAGE", "object"),
        ("/user", "not json", "BAD_MESSAGE", ""),
        ("/user", r#"{"event_types": []}"#, "BAD_MESSAGE", "user_id"),
        (
            "/user",
            r#"{"user_id": 7, "event_types": []}"#,
            "BAD_MESSAGE",
            "user_id",
        ),
        (
            "/user",
            r#"{"user_id": "u", "event_types": "all"}"#,
            "BAD_MESSAGE",
            "event_types",
        ),
        (
            "/user",
            r#"{"user_id": "u", "event_types": [1]}"#,
            "BAD_MESSAGE",
            "event_types",
        ),
        (
            "/user",
            r#"{"user_id": "u", "event_types": [], "extra": 1}"#,
            "BAD_MESSAGE",
            "extra",
        ),
        (
            "/organisation",
            r#"{"organisation_id": "org", "event_types": []}"#,
            "BAD_MESSAGE",
            "user_id",
        ),
        (
            "",
            r#"{"path": "jobs", "filter": "n =="}"#,
            "INVALID_FILTER",
            "byte 4",
        ),
        ("", r#"{"path": "bad path"}"#, "INVALID_PATH", "path"),
    ] {
        let (st, e) = raw(path, body);
        assert!(st == 400, "{path} {body}: {st} {e}");
        assert_eq!(e["error"]["code"], code, "{path} {body}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(word),
            "{path} {body}: {e}"
        );
    }
    for q in [
        "page=0",
        "limit=0",
        "limit=101",
        "status=gone",
        "colour=red",
    ] {
        let (st, e) = call(&s, "GET", &format!("{BASE}?{q}"), None, &t);
        assert_eq!(st, 400, "{q}: {e}");
    }
}

#[test]
fn a_socket_gets_the_backlog_in_order_then_live_events_and_drops_are_bounded() {
    let s = Server::start("[channels]\nbacklog = 5\n");
    let t = user("u1", "org_1");
    let ch = org_channel(&s, &t, "org_1", "u1", &["status_changed"]);
    let id = ch["channel_id"].as_str().unwrap();
    // Matching: this org, this event type; others are not collected.
    claim(&s, "org_2", "u1", "status_changed", 0);
    claim(&s, "org_1", "u1", "comment_added", 0);
    let seqs: Vec<u64> = (1..=8)
        .map(|n| claim(&s, "org_1", "u1", "status_changed", n))
        .collect();
    let (_, d) = call(&s, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(d["event_count"], 8, "{d}");
    let mut c = attach(&s, id, &t);
    let got = events(&mut c, 5);
    let got_seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(got_seqs, seqs[3..].to_vec(), "the newest 5, oldest first");
    assert!(got
        .iter()
        .all(|e| e["channelId"] == id && e["eventType"] == "status_changed"));
    let live = claim(&s, "org_1", "u1", "status_changed", 9);
    assert_eq!(c.recv_type("event")["seq"], live);
    // The metrics are set once a second.
    assert!(
        wait_until(Duration::from_secs(5), || s
            .metric("shardcast_channel_dropped_total")
            == Some(3.0)),
        "dropped: {:?}",
        s.metric("shardcast_channel_dropped_total")
    );
}

#[test]
fn a_dropped_socket_misses_nothing_after_a_reconnect_and_nothing_twice() {
    let s = Server::start("");
    let t = user("u1", "org_1");
    let (st, ch) = call(
        &s,
        "POST",
        &format!("{BASE}/user"),
        Some(json!({"user_id": "u1", "event_types": []})),
        &t,
    );
    assert_eq!(st, 201, "{ch}");
    let id = ch["channel_id"].as_str().unwrap();
    let mut c = attach(&s, id, &t);
    let first: Vec<u64> = (0..3).map(|n| claim(&s, "org_1", "u1", "e", n)).collect();
    let got: Vec<u64> = events(&mut c, 3)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, first);
    c.close();
    assert!(wait_until(Duration::from_secs(5), || call(
        &s,
        "GET",
        &format!("{BASE}/{id}"),
        None,
        &t
    )
    .1["status"]
        == "disconnected"));
    let missed: Vec<u64> = (3..7).map(|n| claim(&s, "org_1", "u1", "e", n)).collect();
    let (_, r) = call(&s, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(
        (r["missed_events"].clone(), r["status"].clone()),
        (json!(4), json!("connected")),
        "{r}"
    );
    let mut c2 = attach(&s, id, &t);
    let got: Vec<u64> = events(&mut c2, 4)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, missed, "exactly the missed ones, in order");
    let marker = claim(&s, "org_1", "u1", "e", 99);
    assert_eq!(
        c2.recv_type("event")["seq"],
        marker,
        "nothing twice before the next live event"
    );
    // A second socket takes over; the first is closed normally.
    let mut c3 = attach(&s, id, &t);
    let (code, reason) = c2.expect_close(Duration::from_secs(5));
    assert_eq!(code, 1000, "{reason}");
    let next = claim(&s, "org_1", "u1", "e", 100);
    // The new socket may first get the marker again: the old socket wrote it, but the
    // report of that write can reach the services thread after the takeover (a takeover
    // is at-least-once, see PROTOCOL-NOTES). Nothing else comes before the next event.
    let mut first = c3.recv_type("event")["seq"].as_u64().unwrap();
    if first == marker {
        first = c3.recv_type("event")["seq"].as_u64().unwrap();
    }
    assert_eq!(first, next);
    // Deleting the channel closes its socket with 1000.
    assert_eq!(call(&s, "DELETE", &format!("{BASE}/{id}"), None, &t).0, 200);
    assert_eq!(c3.expect_close(Duration::from_secs(5)).0, 1000);
    let mut gone = Client::connect(&s, &format!("/channels/{id}?token={t}"));
    gone.recv_type("authenticated");
    assert_error(&gone.error(), "NOT_FOUND");
    assert_eq!(gone.expect_close(Duration::from_secs(5)).0, 4001);
}

#[test]
fn events_not_yet_written_when_a_socket_drops_go_to_the_next_one() {
    // PROTOCOL.md §9: events leave the backlog once written to the socket; what the
    // dropped socket had not written, the next one gets. The first socket reads nothing
    // through a 16 KiB receive buffer while 6 MiB of events come: far more than the
    // kernel's buffers hold (at most 4 MiB a side), so many are still unwritten in the
    // server when it drops.
    let s = Server::start("");
    let t = user("u1", "org_1");
    let (st, ch) = call(
        &s,
        "POST",
        &format!("{BASE}/user"),
        Some(json!({"user_id": "u1", "event_types": []})),
        &t,
    );
    assert_eq!(st, 201, "{ch}");
    let id = ch["channel_id"].as_str().unwrap().to_string();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = s.ws_url(&format!("/channels/{id}?token={t}&batchMs=0"));
    let (ws, _) = tungstenite::client::client(url, stream).expect("upgrade");
    let mut first = Client::from_ws(ws);
    first.recv_type("authenticated");
    let pad = "x".repeat(128 * 1024);
    let mut seqs = Vec::new();
    for b in 0..6 {
        let (lo, hi) = s.publish_batch(
            (0..8)
                .map(|i| {
                    json!({"path": "claims/c", "eventType": "e",
                                 "data": {"user_id": "u1", "n": b * 8 + i, "pad": pad}})
                })
                .collect(),
        );
        seqs.extend(lo..=hi);
    }
    // Dropped without reading: whatever the kernel took is gone with it.
    drop(first);
    assert!(wait_until(Duration::from_secs(10), || call(
        &s,
        "GET",
        &format!("{BASE}/{id}"),
        None,
        &t
    )
    .1["status"]
        == "disconnected"));
    let (st, r) = call(&s, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(st, 200, "{r}");
    let mut next = attach(&s, &id, &t);
    let marker = claim(&s, "org_1", "u1", "e", 999);
    let mut got = Vec::new();
    loop {
        let e = next.recv_type("event");
        let seq = e["seq"].as_u64().unwrap();
        if seq == marker {
            break;
        }
        got.push(seq);
    }
    // What the next socket got before the live marker: every event from some point on,
    // in order, to the last one; never nothing, since 6 MiB could not all be written.
    assert!(
        !got.is_empty(),
        "the unwritten events were lost with the socket"
    );
    let from = seqs
        .iter()
        .position(|s| *s == got[0])
        .unwrap_or_else(|| panic!("{} was not published here", got[0]));
    assert_eq!(
        got,
        seqs[from..].to_vec(),
        "a suffix of what was published, in order"
    );
}

#[test]
fn a_collected_backlog_survives_restarts() {
    let mut s = Server::start("");
    let t = user("u1", "org_1");
    let ch = org_channel(&s, &t, "org_1", "u1", &[]);
    let id = ch["channel_id"].as_str().unwrap().to_string();
    let before: Vec<u64> = (0..4).map(|n| claim(&s, "org_1", "u1", "e", n)).collect();
    s.kill();
    s.spawn(&[]);
    let after: Vec<u64> = (4..6).map(|n| claim(&s, "org_1", "u1", "e", n)).collect();
    let (st, d) = call(&s, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!((st, d["event_count"].clone()), (200, json!(6)), "{d}");
    let mut c = attach(&s, &id, &t);
    let got: Vec<u64> = events(&mut c, 6)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [before, after].concat());
    // Written events left the backlog: after a graceful restart nothing comes again.
    assert!(wait_until(Duration::from_secs(5), || s
        .metric("shardcast_channel_backlog_events")
        == Some(0.0)));
    c.close();
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    s.spawn(&[]);
    let mut c = attach(&s, &id, &t);
    let marker = claim(&s, "org_1", "u1", "e", 7);
    assert_eq!(c.recv_type("event")["seq"], marker);
}

/// Not a timed test (it asserts no speed): the figures for docs/PERFORMANCE.md. Run with
/// `cargo test --release --test channels -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_backlog_replay_and_idle_channel_memory() {
    // 10k channels of one user: far over the default `channels.max_per_user`.
    let s = Server::start("[channels]\nbacklog = 10000\nmax_per_user = 20000\n");
    let t = user("u1", "org_1");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    let (_, ch) = call(
        &s,
        "POST",
        &format!("{BASE}/user"),
        Some(json!({"user_id": "u1", "event_types": []})),
        &t,
    );
    let id = ch["channel_id"].as_str().unwrap().to_string();
    for b in 0..10 {
        s.publish_batch(
            (0..1000)
                .map(|i| json!({"path": "claims/c", "eventType": "e", "data": {"user_id": "u1", "n": b * 1000 + i, "pad": "0123456789abcdef0123456789abcdef"}}))
                .collect(),
        );
    }
    assert!(wait_until(Duration::from_secs(10), || call(
        &s,
        "GET",
        &format!("{BASE}/{id}"),
        None,
        &t
    )
    .1["event_count"]
        == 10_000));
    let mut c = Client::connect(
        &s,
        &format!("/channels/{id}?token={t}&batchMs=0&framing=array&batchMax=1000"),
    );
    c.recv_type("authenticated");
    let started = std::time::Instant::now();
    let mut n = 0;
    // Counted without parsing, so the figure is the server's, not this client's JSON.
    while n < 10_000 {
        match c.ws.read().expect("read") {
            tungstenite::Message::Text(t) => n += t.matches("\"channelId\"").count(),
            _ => continue,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replayed a 10k backlog in {:.1} ms: {:.0} events/s",
        secs * 1e3,
        10_000.0 / secs
    );
    c.close();
    if std::env::var("SKIP_IDLE").is_ok() {
        return;
    }
    // Idle channels: RSS per channel over 10k of them.
    let before = rss();
    for i in 0..10_000 {
        let (st, _) = call(
            &s,
            "POST",
            &format!("{BASE}/user"),
            Some(json!({"user_id": "u1", "event_types": [format!("e{i}")]})),
            &t,
        );
        assert_eq!(st, 201);
    }
    let after = rss();
    println!(
        "10k idle channels: RSS {} -> {} KiB, {:.0} bytes per channel",
        before,
        after,
        (after - before) as f64 * 1024.0 / 10_000.0
    );
}
