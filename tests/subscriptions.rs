//! Filtered subscriptions, `subscriptionRefresh` and `since` recovery (PROTOCOL.md §4-§6)
//! against the real server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[test]
fn filter_on_publication_data() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["jobs"]), "");
    let r = c.subscribe(json!([
        {"id": "failed", "path": "jobs", "filter": "status == 'failed' && attempts >= 2"},
        {"id": "all", "path": "jobs"}
    ]));
    assert!(r.get("rejected").is_none(), "{r}");
    s.publish("jobs/1", "done", json!({"status": "failed", "attempts": 1}));
    s.publish("jobs/2", "done", json!({"status": "failed", "attempts": 3}));
    s.publish("jobs/3", "done", json!({"status": "ok", "attempts": 5}));
    let ids: Vec<Value> = (0..3)
        .map(|_| c.recv_type("event")["subscriptionIds"].clone())
        .collect();
    assert_eq!(ids[0], json!(["all"]));
    let mut two: Vec<String> = ids[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    two.sort();
    assert_eq!(
        two,
        ["all", "failed"],
        "one event listing both subscriptions"
    );
    assert_eq!(ids[2], json!(["all"]));
}

#[test]
fn malformed_filters_are_rejected_with_the_offset() {
    let s = Server::start("");
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = c.subscribe(json!([
        {"id": "a", "path": "x", "filter": "status == "},
        {"id": "b", "path": "x", "filter": "a = 1"},
        {"id": "c", "path": "x", "filter": 5},
        {"id": "ok", "path": "x", "filter": "a == 1"}
    ]));
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 1, "{r}");
    let rej = r["rejected"].as_array().unwrap();
    assert_eq!(rej[0]["code"], "INVALID_FILTER");
    assert!(
        rej[0]["message"].as_str().unwrap().contains("at byte 10"),
        "{}",
        rej[0]
    );
    assert_eq!(rej[1]["code"], "INVALID_FILTER");
    assert!(
        rej[1]["message"].as_str().unwrap().contains("at byte 2"),
        "{}",
        rej[1]
    );
    assert_eq!(rej[2]["code"], "BAD_MESSAGE");
}

/// The seed's denial queue: an entity that leaves the filter gets one refresh (with the
/// write's seq) and no event; one that enters gets an event; one that stays gets events.
#[test]
fn refresh_when_an_entity_leaves_event_when_it_enters() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    s.put_entity(
        "accounts",
        "acc_7",
        json!({"workstream": "DenialManagement", "v": 1}),
    );
    s.put_entity("accounts", "acc_8", json!({"workstream": "None", "v": 1}));
    let mut c = Client::authed(&s, &token("u", "user", &["accounts"]), "");
    c.subscribe(json!([{"id": "denials", "path": "accounts", "filter": "workstream == 'DenialManagement'"}]));
    let still = s.put_entity(
        "accounts",
        "acc_7",
        json!({"workstream": "DenialManagement", "v": 2}),
    );
    let leaves = s.put_entity("accounts", "acc_7", json!({"workstream": "None", "v": 3}));
    let elsewhere = s.put_entity("accounts", "acc_7", json!({"workstream": "None", "v": 4}));
    let enters = s.put_entity(
        "accounts",
        "acc_8",
        json!({"workstream": "DenialManagement", "v": 2}),
    );
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64()),
        (Some("event"), Some(still)),
        "{e}"
    );
    let r = c.recv();
    assert_eq!(
        r,
        json!({"type": "subscriptionRefresh", "subscriptionId": "denials", "path": "accounts/acc_7",
               "entityId": "acc_7", "seq": leaves})
    );
    // The write that stays outside is nothing at all: the next message is the entering one.
    let e = c.recv();
    assert_eq!(
        (e["type"].as_str(), e["seq"].as_u64()),
        (Some("event"), Some(enters)),
        "{e}"
    );
    assert_eq!(e["data"]["id"], "acc_8");
    assert!(elsewhere < enters);
    // A PATCH that leaves: a refresh too.
    let (_, p) = s.http(
        "PATCH",
        "/api/v1/entities/accounts/acc_8",
        Some(&json!({"workstream": "Billing"})),
        Some(&apikey()),
    );
    let r = c.recv_type("subscriptionRefresh");
    assert_eq!(r["seq"], p["seq"]);
    assert_eq!(r["entityId"], "acc_8");
}

/// 300 subscriptions on one collection with equality filters on distinct values: each
/// write reaches exactly its watcher, and the evaluations counted stay near one per write
/// (the index), not one per subscription.
#[test]
fn equality_filters_are_indexed() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    let tok = token("u", "user", &["tasks"]);
    let mut c = Client::authed(&s, &tok, "");
    let subs: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("w{i}"), "path": "tasks", "filter": format!("assigneeId == 'user-{i}'")}))
        .collect();
    let r = c.subscribe(Value::Array(subs));
    assert_eq!(r["subscriptions"].as_array().unwrap().len(), 300);
    let before = s
        .metric("shardcast_filter_evaluations_total")
        .unwrap_or(0.0);
    for i in [5, 150, 299] {
        s.put_entity(
            "tasks",
            &format!("t{i}"),
            json!({"assigneeId": format!("user-{i}")}),
        );
        let e = c.recv_type("event");
        assert_eq!(e["subscriptionIds"], json!([format!("w{i}")]));
    }
    let after = s.metric("shardcast_filter_evaluations_total").unwrap();
    assert!(
        after - before <= 6.0,
        "{} evaluations for 3 writes",
        after - before
    );
}

/// `since` replays the retained publications after it, matching the subscription
/// (path, events, filter), in order, before live ones; `recovered` says whether history
/// reached back that far.
#[test]
fn since_replays_in_order_then_live() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[history]\nsize = 50");
    let first = s.publish("h/a", "e", json!({"i": 0}));
    for i in 1..30 {
        s.publish(
            if i % 2 == 0 { "h/a" } else { "other" },
            "e",
            json!({"i": i}),
        );
    }
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = c.subscribe(json!([{"id": "h", "path": "h", "since": first + 9, "filter": "i != 20"}]));
    assert_eq!(r["subscriptions"][0]["recovered"], true, "{r}");
    let newest = r["subscriptions"][0]["seq"].as_u64().unwrap();
    let live = s.publish("h/b", "e", json!({"i": 99}));
    let mut got = Vec::new();
    loop {
        let e = c.recv_type("event");
        got.push(e["data"]["i"].as_i64().unwrap());
        if e["seq"] == live {
            break;
        }
    }
    assert_eq!(got, [10, 12, 14, 16, 18, 22, 24, 26, 28, 99]);
    assert!(newest < live);
    // Out of the window: not recovered, and what is retained still comes.
    for i in 0..60 {
        s.publish("h/a", "e", json!({"i": 100 + i}));
    }
    let mut d = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = d.subscribe(json!([{"id": "h", "path": "h", "since": first}]));
    assert_eq!(r["subscriptions"][0]["recovered"], false, "{r}");
    let e = d.recv_type("event");
    assert!(e["seq"].as_u64().unwrap() > first + 30);
    // Nothing missed: since = newest is recovered with nothing to replay.
    let mut n = Client::authed(&s, &token("u", "user", &["*"]), "");
    let newest = s.publish("h/a", "e", json!({"i": -1}));
    let r = n.subscribe(json!([{"id": "h", "path": "h", "since": newest}]));
    assert_eq!(r["subscriptions"][0]["recovered"], true, "{r}");
    let marker = s.publish("h/a", "e", json!({"i": -2}));
    assert_eq!(
        n.recv_type("event")["seq"],
        marker,
        "nothing replayed before it"
    );
}

#[test]
fn since_bad_values() {
    let s = Server::start("");
    let newest = s.publish("a", "e", json!(1));
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = c.subscribe(json!([
        {"id": "f", "path": "a", "since": newest + 1000},
        {"id": "n", "path": "a", "since": -1},
        {"id": "s", "path": "a", "since": "5"},
        {"id": "ok", "path": "a", "since": 0}
    ]));
    let rej = r["rejected"].as_array().unwrap();
    assert_eq!(rej.len(), 3, "{r}");
    assert!(rej[0]["message"].as_str().unwrap().contains("future"));
    assert_eq!(rej[1]["code"], "BAD_MESSAGE");
    assert_eq!(rej[2]["code"], "BAD_MESSAGE");
    assert_eq!(r["subscriptions"][0]["recovered"], true);
    assert_eq!(c.recv_type("event")["seq"], newest, "replayed from 0");
}

/// The replay seam under concurrent publishing: a client that resumes from the last seq
/// it saw gets every later publication exactly once, in order.
#[test]
fn since_seam_under_concurrent_publishing() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let tok = token("u", "user", &["*"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let publisher = sc.spawn(|| {
            let mut last = 0;
            for i in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (a, b) = s.publish_batch(
                    (0..5)
                        .map(|k| json!({"path": "seam/x", "eventType": "e", "data": i * 5 + k}))
                        .collect(),
                );
                assert_eq!(b, a + 4);
                last = b;
            }
            last
        });
        let mut c = Client::authed(&s, &tok, "");
        c.subscribe(json!([{"id": "s", "path": "seam"}]));
        let mut seen: Vec<u64> = Vec::new();
        for _ in 0..50 {
            seen.push(c.recv_type("event")["seq"].as_u64().unwrap());
        }
        drop(c);
        // Resume on a new connection while publishing goes on.
        let mut d = Client::authed(&s, &tok, "");
        let r = d.subscribe(json!([{"id": "s", "path": "seam", "since": seen.last().unwrap()}]));
        assert_eq!(r["subscriptions"][0]["recovered"], true);
        let last = publisher.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            let seq = d.recv_within(Duration::from_secs(10)).expect("event")["seq"]
                .as_u64()
                .unwrap();
            seen.push(seq);
            if seq == last {
                break;
            }
        }
        // Publications on `seam` are contiguous seqs here (nothing else publishes).
        let first = seen[0];
        let want: Vec<u64> = (first..=last).collect();
        assert_eq!(seen, want, "no gap and no duplicate at the seam");
    });
}

#[test]
fn since_survives_a_restart_without_reused_seqs() {
    let mut s = Server::start("[delivery]\nbatch_ms = 0");
    let before = s.publish("r", "e", json!(1));
    s.kill();
    s.spawn(&[]);
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = c.subscribe(json!([{"id": "r", "path": "r", "since": before}]));
    // History is memory: what came before the restart is not retained, and says so
    // only if something after `before` might have been missed; seq moved past it.
    let after = s.publish("r", "e", json!(2));
    assert!(after > before);
    assert!(r["subscriptions"][0]["seq"].as_u64().unwrap() >= before);
    assert_eq!(c.recv_type("event")["seq"], after);
}
