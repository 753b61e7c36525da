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

/// A `since` the shard has not reached yet (its queue holds what ingest already answered
/// for): the subscribe waits off the loop until the shard has taken the queue in (issue
/// 21: it used to hold the shard for up to 250 ms), then replays exactly what it missed,
/// and what the connection sent after it is handled after it.
#[test]
fn since_ahead_of_a_busy_shard_is_answered_once_the_shard_catches_up() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    let tok = token("u", "user", &["*"]);
    // Connections holding two filtered subscriptions each: every publication is two
    // filter evaluations and a ring push per connection, so the shard's queue takes a
    // while (tens of ms) to take in.
    let _busy: Vec<Client> = (0..300)
        .map(|_| {
            let mut c = Client::authed(&s, &tok, "");
            c.subscribe(json!([
                {"id": "a", "path": "lag", "filter": "i >= 0"},
                {"id": "b", "path": "lag/x", "filter": "i != -1"}
            ]));
            c
        })
        .collect();
    let mut d = Client::authed(&s, &tok, "");
    // Pipelined publishes, each answered as soon as it is sequenced (the shard's queue
    // still holds them).
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|b| {
            serde_json::to_vec(&json!({"events": (0..200)
                .map(|i| json!({"path": "lag/x", "eventType": "e", "data": {"i": b * 200 + i}}))
                .collect::<Vec<_>>()}))
            .unwrap()
        })
        .collect();
    let answers = pipelined_publishes(&s, &bodies);
    let last = answers[4].1["lastSeq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answers:?}"));
    // The newest but one: beyond what the shard has taken in while its queue is full.
    let since = last - 1;
    d.send(
        &json!({"type": "subscribeEvents", "requestId": "late", "subscriptions": [
        {"id": "r", "path": "lag", "since": since}]}),
    );
    // Sent behind it: handled after it, so its subscription sees at least what the
    // first one does (its answer may come first: a replay's answer waits for the replay,
    // docs/PROTOCOL-NOTES.md).
    d.send(
        &json!({"type": "subscribeEvents", "requestId": "next", "subscriptions": [
        {"id": "q", "path": "other"}]}),
    );
    let mut seqs = Vec::new();
    let (mut late, mut next) = (None, None);
    while seqs.is_empty() || late.is_none() || next.is_none() {
        let m = d.recv();
        match (m["type"].as_str(), m["requestId"].as_str()) {
            (Some("event"), _) => seqs.push(m["seq"].as_u64().unwrap()),
            (Some("subscribedEvents"), Some("late")) => late = Some(m),
            (Some("subscribedEvents"), Some("next")) => next = Some(m),
            _ => panic!("unexpected: {m}"),
        }
    }
    let (late, next) = (late.unwrap(), next.unwrap());
    let sub = &late["subscriptions"][0];
    assert_eq!(sub["recovered"], true, "{late}");
    let at = sub["seq"].as_u64().unwrap();
    assert!(at >= since, "{late}");
    assert!(
        next["subscriptions"][0]["seq"].as_u64().unwrap() >= at,
        "{next}"
    );
    // Exactly what came after `since`, once: the last of the batch, then a new one.
    let after = s.publish("lag/x", "e", json!({"i": 9999}));
    while seqs.last() != Some(&after) {
        seqs.push(d.recv_type("event")["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, vec![last, after]);
}

/// `since` replays the retained publications after it, matching the subscription
/// (path, events, filter), in order, before live ones; `recovered` says whether history
/// reached back that far.
#[test]
fn since_replays_in_order_then_live() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[history]\nsize = 50");
    // The seq of each publication as answered: nothing is assumed of their spacing.
    let seqs: Vec<u64> = (0..30)
        .map(|i| {
            s.publish(
                if i % 2 == 0 { "h/a" } else { "other" },
                "e",
                json!({"i": i}),
            )
        })
        .collect();
    let first = seqs[0];
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = c.subscribe(json!([{"id": "h", "path": "h", "since": seqs[9], "filter": "i != 20"}]));
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
    // Out of the window: not recovered, and what is retained still comes. The window is
    // the last `history.size` (50) publications: of the 91 so far, the 42nd on.
    let later: Vec<u64> = (0..60)
        .map(|i| s.publish("h/a", "e", json!({"i": 100 + i})))
        .collect();
    let mut d = Client::authed(&s, &token("u", "user", &["*"]), "");
    let r = d.subscribe(json!([{"id": "h", "path": "h", "since": first}]));
    assert_eq!(r["subscriptions"][0]["recovered"], false, "{r}");
    let e = d.recv_type("event");
    assert_eq!(e["seq"], later[60 - 50], "the oldest retained: {e}");
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
/// it saw gets every later publication exactly once, in order, while the publisher is
/// still publishing (asserted: its answered seqs straddle the resume's `seq`, and the
/// resumed client gets both replayed and live events).
#[test]
fn since_seam_under_concurrent_publishing() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let tok = token("u", "user", &["*"]);
    // The newest seq the publisher was answered, and the resume's `seq` (0: not yet).
    let published = AtomicU64::new(0);
    let resumed_at = AtomicU64::new(0);
    std::thread::scope(|sc| {
        // Publishes numbered batches until 20 batches were answered wholly after the
        // resume; returns every batch's (data numbers, firstSeq, lastSeq).
        let publisher = sc.spawn(|| {
            let mut batches = Vec::new();
            let mut after = 0;
            let started = std::time::Instant::now();
            for i in 0u64..100_000 {
                // Bounded, should the reader fail before it resumes.
                if started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let (a, b) = s.publish_batch(
                    (0..5)
                        .map(|k| json!({"path": "seam/x", "eventType": "e", "data": i * 5 + k}))
                        .collect(),
                );
                published.store(b, Ordering::SeqCst);
                batches.push((i, a, b));
                let r = resumed_at.load(Ordering::SeqCst);
                if r != 0 && a > r {
                    after += 1;
                    if after == 20 {
                        break;
                    }
                }
            }
            batches
        });
        let mut c = Client::authed(&s, &tok, "");
        c.subscribe(json!([{"id": "s", "path": "seam"}]));
        // (data, seq) of every event received, over both connections.
        let mut seen: Vec<(u64, u64)> = Vec::new();
        let take = |m: Value| (m["data"].as_u64().unwrap(), m["seq"].as_u64().unwrap());
        for _ in 0..50 {
            seen.push(take(c.recv_type("event")));
        }
        drop(c);
        let since = seen.last().unwrap().1;
        // Something to replay: the publisher went past what the first client saw.
        assert!(wait_until(Duration::from_secs(10), || {
            published.load(Ordering::SeqCst) > since
        }));
        // Resume on a new connection while publishing goes on.
        let mut d = Client::authed(&s, &tok, "");
        let r = d.subscribe(json!([{"id": "s", "path": "seam", "since": since}]));
        assert_eq!(r["subscriptions"][0]["recovered"], true, "{r}");
        let at = r["subscriptions"][0]["seq"].as_u64().unwrap();
        resumed_at.store(at, Ordering::SeqCst);
        let batches = publisher.join().unwrap();
        let (last_i, _, last) = *batches.last().unwrap();
        assert!(
            batches.iter().any(|b| b.2 <= at) && batches.iter().any(|b| b.1 > at),
            "the publisher was not publishing across the resume at seq {at}"
        );
        let resumed = seen.len();
        loop {
            let m = d.recv_within(Duration::from_secs(10)).expect("event");
            let (data, seq) = take(m);
            seen.push((data, seq));
            if seq == last {
                break;
            }
        }
        let replayed = seen[resumed..].iter().filter(|e| e.1 <= at).count();
        let live = seen.len() - resumed - replayed;
        assert!(replayed > 0 && live > 0, "{replayed} replayed, {live} live");
        // Every publication from the first one seen to the last, once, in publish order
        // (the data numbers count them); seq only grows.
        let data: Vec<u64> = seen.iter().map(|e| e.0).collect();
        let want: Vec<u64> = (data[0]..=last_i * 5 + 4).collect();
        assert_eq!(data, want, "no gap and no duplicate at the seam");
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "seq only grows");
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
    // History is memory (docs/PROTOCOL-NOTES.md): after a restart the node cannot know
    // what it would have missed since `before`, so it says it did not recover.
    assert_eq!(r["subscriptions"][0]["recovered"], false, "{r}");
    let after = s.publish("r", "e", json!(2));
    assert!(after > before);
    assert!(r["subscriptions"][0]["seq"].as_u64().unwrap() >= before);
    assert_eq!(c.recv_type("event")["seq"], after);
}

/// `history.ttl_ms` bounds the window by age: a `since` older than it answers
/// `recovered: false` and replays only what is still inside the window; a `since` within
/// it is recovered.
#[test]
fn since_older_than_the_history_ttl_is_not_recovered() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[history]\nttl_ms = 500");
    let old1 = s.publish("t/a", "e", json!("old1"));
    let old2 = s.publish("t/a", "e", json!("old2"));
    // The window is a matter of time: wait (on the clock itself) until both are older
    // than the TTL, with a margin.
    let published = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(5), || {
        published.elapsed() > Duration::from_millis(800)
    }));
    let fresh = s.publish("t/a", "e", json!("fresh"));
    let tok = token("u", "user", &["*"]);
    let mut c = Client::authed(&s, &tok, "");
    let r = c.subscribe(json!([{"id": "t", "path": "t", "since": old1}]));
    assert_eq!(r["subscriptions"][0]["recovered"], false, "{r}");
    // `old2` expired: the replay is the fresh one alone, then live.
    assert_eq!(
        c.recv_type("event")["seq"],
        fresh,
        "old2 ({old2}) was replayed"
    );
    let marker = s.publish("t/a", "e", json!("marker"));
    c.expect_marker(marker);
    // A `since` inside the window misses nothing.
    let mut d = Client::authed(&s, &tok, "");
    let r = d.subscribe(json!([{"id": "t", "path": "t", "since": fresh}]));
    assert_eq!(r["subscriptions"][0]["recovered"], true, "{r}");
    d.expect_marker(marker);
}

/// A `since` replay of a big history is prepared off the shard (issue 21): it still comes
/// whole, in order, right after `subscribedEvents` and before an event published while it
/// was being prepared; another connection of the shard meanwhile gets that event too.
#[test]
fn a_big_replay_comes_whole_before_anything_live() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    const N: u64 = 20_000;
    let pad = "x".repeat(100);
    let mut first = 0;
    for b in 0..N / 1000 {
        let events = (0..1000)
            .map(|i| json!({"path": "hist/a", "eventType": "tick", "data": {"i": b * 1000 + i, "pad": pad}}))
            .collect();
        let (f, _) = s.publish_batch(events);
        if b == 0 {
            first = f;
        }
    }
    let tok = token("u", "user", &["*"]);
    let mut other = Client::authed(&s, &tok, "");
    other.subscribe(json!([{"id": "h", "path": "hist"}]));
    let mut c = Client::authed(&s, &tok, "");
    c.send(
        &json!({"type": "subscribeEvents", "requestId": "r", "subscriptions": [
        {"id": "h", "path": "hist", "since": first - 1}]}),
    );
    let live = s.publish("hist/a", "live", json!({"i": -1}));
    assert_eq!(other.recv_type("event")["seq"], live);
    let answer = c.recv_type("subscribedEvents");
    assert_eq!(answer["subscriptions"][0]["recovered"], true, "{answer}");
    let mut seqs = Vec::new();
    loop {
        let m = c.recv_type("event");
        let seq = m["seq"].as_u64().unwrap();
        seqs.push(seq);
        if seq == live {
            break;
        }
    }
    let want: Vec<u64> = (first..first + N).chain([live]).collect();
    assert_eq!(seqs.len(), want.len());
    assert!(seqs == want, "the replay, in order, then the live event");
}
