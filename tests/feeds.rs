//! Feeds: connections of a shard holding the same single subscription share one frame
//! log. These tests hold the sharing to the per-connection rules of PROTOCOL.md §6:
//! each member batches from its own first message, overflows alone, and keeps what
//! waits when it subscribes again. One shard, so every member meets on it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Messages until `want` events arrived: (events' data, warnings' dropped by id).
fn collect(c: &mut Client, want: usize) -> (Vec<Value>, Vec<(String, u64)>) {
    let (mut events, mut warnings) = (Vec::new(), Vec::new());
    while events.len() < want {
        let m = c.recv_within(Duration::from_secs(10)).expect("message");
        match m["type"].as_str() {
            Some("event") => events.push(m["data"].clone()),
            Some("warning") => {
                assert_eq!(m["code"], "QUEUE_OVERFLOW");
                warnings.push((
                    m["subscriptionId"].as_str().unwrap().to_string(),
                    m["dropped"].as_u64().unwrap(),
                ));
            }
            _ => panic!("unexpected {m}"),
        }
    }
    (events, warnings)
}

/// Each member's batch starts at its own first waiting message: a member that joined
/// after a message arrived never gets it, and its first batch holds only what came
/// after.
#[test]
fn members_batch_from_their_own_first_message() {
    let s = Server::start("shards = 1");
    let tok = token("u", "user", &["*"]);
    let q = "&batchMs=1500&framing=array";
    let mut early = Client::authed(&s, &tok, q);
    early.subscribe(json!([{"id": "f", "path": "f"}]));
    s.publish("f", "e", json!(1));
    let mut late = Client::authed(&s, &tok, q);
    late.subscribe(json!([{"id": "f", "path": "f"}]));
    s.publish("f", "e", json!(2));
    let (early_frames, late_frames) = (early.frames, late.frames);
    assert_eq!(collect(&mut early, 2).0, [json!(1), json!(2)]);
    assert_eq!(early.frames - early_frames, 1, "one batch for both");
    assert_eq!(collect(&mut late, 1).0, [json!(2)]);
    assert_eq!(late.frames - late_frames, 1);
    // The first message never reaches `late`: the next thing both get is a marker.
    let marker = s.publish("f", "e", json!(3));
    early.expect_marker(marker);
    late.expect_marker(marker);
    // They share one feed, and both count as subscriptions.
    assert!(wait_until(Duration::from_secs(5), || {
        s.metric("shardcast_subscriptions") == Some(2.0) && s.metric("shardcast_feeds") == Some(1.0)
    }));
}

/// A member that subscribes again leaves its feed: what it had not been sent yet
/// still arrives, in order, before what follows, and the other member is unaffected.
#[test]
fn a_member_that_subscribes_again_keeps_what_waits() {
    let s = Server::start("shards = 1");
    let tok = token("u", "user", &["*"]);
    let q = "&batchMs=1000";
    let mut a = Client::authed(&s, &tok, q);
    let mut b = Client::authed(&s, &tok, q);
    for c in [&mut a, &mut b] {
        c.subscribe(json!([{"id": "one", "path": "one"}]));
    }
    s.publish("one", "e", json!(1));
    a.subscribe(json!([{"id": "two", "path": "two"}]));
    s.publish("one", "e", json!(2));
    s.publish("two", "e", json!(3));
    assert_eq!(collect(&mut a, 3).0, [json!(1), json!(2), json!(3)]);
    assert_eq!(collect(&mut b, 2).0, [json!(1), json!(2)]);
    // Back to one subscription (and an empty ring), `a` shares a feed again.
    a.send(&json!({"type": "unsubscribeEvents", "ids": ["two"]}));
    a.recv_type("unsubscribedEvents");
    s.publish("one", "e", json!(4));
    assert_eq!(collect(&mut a, 1).0, [json!(4)]);
    assert_eq!(collect(&mut b, 1).0, [json!(4)]);
    // Nothing twice (once from the old ring, once from the feed): a marker is next.
    let marker = s.publish("one", "e", json!(5));
    a.expect_marker(marker);
    b.expect_marker(marker);
}

/// Unsubscribing leaves the feed and discards what waited for that id; the other
/// members still get it.
#[test]
fn unsubscribing_discards_only_the_leavers_messages() {
    let s = Server::start("shards = 1");
    let tok = token("u", "user", &["*"]);
    let mut a = Client::authed(&s, &tok, "&batchMs=800");
    let mut b = Client::authed(&s, &tok, "&batchMs=800");
    for c in [&mut a, &mut b] {
        c.subscribe(json!([{"id": "x", "path": "x"}]));
    }
    s.publish("x", "e", json!(1));
    a.send(&json!({"type": "unsubscribeEvents", "ids": ["x"]}));
    a.recv_type("unsubscribedEvents");
    assert_eq!(collect(&mut b, 1).0, [json!(1)]);
    // `a` never gets what waited for `x`: its next event is a marker on a subscription
    // it still holds.
    a.subscribe(json!([{"id": "m", "path": "m"}]));
    let marker = s.publish("m", "e", json!(2));
    a.expect_marker(marker);
}

/// The shared log holds `queue_capacity` messages: every member behind by more loses
/// exactly the oldest, is told so per member, and the metric counts each loss.
#[test]
fn overflow_counts_per_member() {
    let s = Server::start("shards = 1\n[delivery]\nqueue_capacity = 10\nbatch_ms = 1000");
    let tok = token("u", "user", &["*"]);
    let mut a = Client::authed(&s, &tok, "");
    let mut b = Client::authed(&s, &tok, "");
    for c in [&mut a, &mut b] {
        c.subscribe(json!([{"id": "o", "path": "o"}]));
    }
    s.publish_batch(
        (0..25)
            .map(|i| json!({"path": "o", "eventType": "e", "data": i}))
            .collect(),
    );
    for c in [&mut a, &mut b] {
        let (events, warnings) = collect(c, 10);
        assert_eq!(events, (15..25).map(|i| json!(i)).collect::<Vec<_>>());
        assert_eq!(warnings, [("o".to_string(), 15)]);
    }
    assert_eq!(
        s.metric_where("shardcast_dropped_total", "reason=\"queue_overflow\""),
        Some(30.0)
    );
}

/// A member that stops reading falls behind alone: it gets every message or an exact
/// drop count, while a member reading the same feed gets everything with no warning.
#[test]
fn a_slow_member_drops_alone() {
    let s = Server::start("shards = 1\n[delivery]\nqueue_capacity = 20\nbatch_ms = 0");
    let tok = token("slow", "user", &["*"]);
    let mut slow = Client::slow_reader(&s, &tok);
    let mut fast = Client::authed(&s, &tok, "");
    for c in [&mut slow, &mut fast] {
        c.subscribe(json!([{"id": "s", "path": "slow"}]));
    }
    // In bursts no larger than the capacity, each read by the fast member before the
    // next: it never falls behind by more than the log holds, while the slow one does.
    let (n, burst) = (600usize, 20usize);
    let pad = "x".repeat(16 * 1024);
    for b in 0..n / burst {
        s.publish_batch(
            (b * burst..(b + 1) * burst)
                .map(|i| json!({"path": "slow", "eventType": "e", "data": {"i": i, "pad": pad}}))
                .collect(),
        );
        let (events, warnings) = collect(&mut fast, burst);
        let got: Vec<u64> = events.iter().map(|e| e["i"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (b * burst..(b + 1) * burst).map(|i| i as u64).collect();
        assert_eq!(got, want, "fast member: all, in order");
        assert!(warnings.is_empty(), "fast member: no warning");
    }
    let a = slow.account_for(n as u64);
    assert!(
        a.dropped > 0,
        "the socket never filled; make the test harder"
    );
    assert_eq!(a.last["data"]["i"], n - 1, "the newest message is kept");
    assert_eq!(
        s.metric_where("shardcast_dropped_total", "reason=\"queue_overflow\""),
        Some(a.dropped as f64)
    );
}

/// A deterministic pseudo-random sequence (xorshift).
fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Random subscribes (new and replacing), second subscriptions, unsubscribes and
/// publications, checked in lockstep against a model of who holds what: every client
/// gets exactly the publications its subscriptions match, once, in order, with the
/// matching ids. Clients move in and out of feeds all along (one subscription: a feed;
/// two: their own ring; back to one: a feed again).
#[test]
fn random_operations_match_a_model() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    let tok = token("m", "user", &["*"]);
    let paths = ["a", "a/b", "c"];
    let ids = ["x", "y"];
    let mut clients: Vec<Client> = (0..6).map(|_| Client::authed(&s, &tok, "")).collect();
    // Model: per client, id → path.
    let mut held: Vec<std::collections::BTreeMap<&str, &str>> = vec![Default::default(); 6];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut published = 0;
    for _ in 0..400 {
        let c = (xorshift(&mut seed) % 6) as usize;
        let id = ids[(xorshift(&mut seed) % 2) as usize];
        let path = paths[(xorshift(&mut seed) % 3) as usize];
        match xorshift(&mut seed) % 4 {
            0 | 1 => {
                clients[c].subscribe(json!([{"id": id, "path": path}]));
                held[c].insert(id, path);
            }
            2 => {
                clients[c].send(&json!({"type": "unsubscribeEvents", "ids": [id]}));
                let r = clients[c].recv_type("unsubscribedEvents");
                let removed = held[c].remove(id).is_some();
                assert_eq!(r["ids"] == json!([id]), removed, "{r}");
            }
            _ => {
                let target = paths[(xorshift(&mut seed) % 3) as usize];
                let seq = s.publish(target, "e", json!(published));
                published += 1;
                for (i, client) in clients.iter_mut().enumerate() {
                    let mut want: Vec<&str> = held[i]
                        .iter()
                        .filter(|(_, p)| target == **p || target.starts_with(&format!("{p}/")))
                        .map(|(id, _)| *id)
                        .collect();
                    if want.is_empty() {
                        continue;
                    }
                    let e = client.recv_type("event");
                    assert_eq!(e["seq"], seq, "client {i}: {e}");
                    let mut got: Vec<&str> = e["subscriptionIds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    got.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(got, want, "client {i}: {e}");
                }
            }
        }
    }
    assert!(published > 50);
    // No client got anything the model did not expect: subscribing (whose answer
    // `recv_type` requires to be the next message) and then a marker come next.
    for c in clients.iter_mut() {
        c.subscribe(json!([{"id": "end", "path": "end"}]));
    }
    let marker = s.publish("end", "e", json!(null));
    for c in clients.iter_mut() {
        c.expect_marker(marker);
    }
}

/// Batches of many messages are written as one flat run (the cohort's members share
/// it; a ring connection makes its own): every connection still gets every message in
/// order, one frame per message with `framing=frames` and one `batch` per flush with
/// `framing=array`, and an overflow warning still comes first.
#[test]
fn long_batches_arrive_whole_and_in_order_in_both_framings() {
    let s = Server::start("shards = 1\n[delivery]\nqueue_capacity = 40");
    let tok = token("u", "user", &["*"]);
    let frames_q = "&batchMs=700&batchMax=40";
    let array_q = "&batchMs=700&batchMax=40&framing=array";
    // Two members of one feed per framing, and a ring connection (two subscriptions).
    let mut fa = Client::authed(&s, &tok, frames_q);
    let mut fb = Client::authed(&s, &tok, frames_q);
    let mut aa = Client::authed(&s, &tok, array_q);
    let mut ab = Client::authed(&s, &tok, array_q);
    let mut ring = Client::authed(&s, &tok, array_q);
    for c in [&mut fa, &mut fb, &mut aa, &mut ab] {
        c.subscribe(json!([{"id": "r", "path": "r"}]));
    }
    ring.subscribe(json!([{"id": "r", "path": "r"}, {"id": "o", "path": "other"}]));
    let events = |range: std::ops::Range<i32>| -> Vec<Value> {
        range
            .map(|i| json!({"path": "r", "eventType": "e", "data": i}))
            .collect()
    };
    // One request: all 30 reach the shard together and wait for one flush.
    let before: Vec<usize> = [&fa, &fb, &aa, &ab, &ring]
        .iter()
        .map(|c| c.frames)
        .collect();
    s.publish_batch(events(0..30));
    let want: Vec<Value> = (0..30).map(|i| json!(i)).collect();
    for (c, was, per_message) in [
        (&mut fa, before[0], true),
        (&mut fb, before[1], true),
        (&mut aa, before[2], false),
        (&mut ab, before[3], false),
        (&mut ring, before[4], false),
    ] {
        let (got, warnings) = collect(c, 30);
        assert_eq!(got, want);
        assert!(warnings.is_empty(), "{warnings:?}");
        let frames = c.frames - was;
        if per_message {
            assert_eq!(frames, 30, "one frame per message");
        } else {
            assert_eq!(frames, 1, "one batch for the flush");
        }
    }
    // 60 more while batching, past the capacity (40): the warning comes first, then the
    // newest 40 as one run.
    s.publish_batch(events(0..60));
    let want: Vec<Value> = (20..60).map(|i| json!(i)).collect();
    for c in [&mut fa, &mut fb, &mut aa, &mut ab, &mut ring] {
        let (got, warnings) = collect(c, 40);
        assert_eq!(warnings, [("r".to_string(), 20)]);
        assert_eq!(got, want);
    }
    // Nothing else follows.
    let marker = s.publish("r", "e", json!("end"));
    for c in [&mut fa, &mut fb, &mut aa, &mut ab, &mut ring] {
        c.expect_marker(marker);
    }
}
