//! Fan-out of publications to a few thousand connections spread over every shard.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn every_connection_on_every_shard_gets_each_publication_once_in_order() {
    const N: usize = 3000;
    let s = Server::start("shards = 2\n[delivery]\nbatch_ms = 0");
    let tok = token("fan", "user", &["fan"]);
    let mut clients: Vec<Client> = (0..N).map(|_| Client::authed(&s, &tok, "")).collect();
    for c in clients.iter_mut() {
        c.send(&json!({"type": "subscribeEvents", "subscriptions": [{"id": "f", "path": "fan"}]}));
    }
    for c in clients.iter_mut() {
        c.recv_type("subscribedEvents");
    }
    // The kernel spread the connections over both shards' listeners.
    for shard in ["0", "1"] {
        let n = s
            .metric_where(
                "shardcast_connections",
                &format!("shard=\"{shard}\",role=\"user\""),
            )
            .unwrap_or(0.0);
        assert!(n > 0.0, "shard {shard} holds no connection");
    }
    let (first, last) = s.publish_batch(
        (0..3)
            .map(|i| json!({"path": "fan/x", "eventType": "e", "data": i}))
            .collect(),
    );
    for c in clients.iter_mut() {
        for seq in first..=last {
            let e = c.recv_type("event");
            assert_eq!(e["seq"], seq);
            assert_eq!(e["subscriptionIds"], json!(["f"]));
        }
    }
    // Nothing else came (no duplicate, no stray message): the next message each client
    // gets is the marker published after, and it must arrive.
    let marker = s.publish("fan/x", "marker", json!(null));
    for c in clients.iter_mut() {
        let e = c.recv_type("event");
        assert_eq!(e["seq"], marker, "{e}");
    }
    assert!(wait_until(Duration::from_secs(5), || {
        s.metric("shardcast_deliveries_total").unwrap_or(0.0) >= (4 * N) as f64
    }));
}

/// Publishers on every shard at once: each shard sequences the requests it reads, yet
/// every subscriber on every shard sees one total order (`seq` strictly increasing, none
/// missing), because the sequencer hands each publication to every shard's queue under
/// one lock.
#[test]
fn concurrent_publishers_on_every_shard_give_one_order() {
    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: usize = 8;
    const EACH: usize = 100;
    let s = Server::start("shards = 2\n[delivery]\nbatch_ms = 0\nqueue_capacity = 10000");
    let tok = token("ord", "user", &["ord"]);
    let mut clients: Vec<Client> = (0..SUBSCRIBERS)
        .map(|_| Client::authed(&s, &tok, ""))
        .collect();
    for c in clients.iter_mut() {
        c.subscribe(json!([{"id": "o", "path": "ord"}]));
    }
    // Every publish is a new connection: the kernel spreads them over both shards'
    // listeners, so both shards sequence requests, concurrently.
    std::thread::scope(|scope| {
        for p in 0..PUBLISHERS {
            let s = &s;
            scope.spawn(move || {
                for i in 0..EACH {
                    s.publish("ord", "e", json!([p, i]));
                }
            });
        }
    });
    let total = PUBLISHERS * EACH;
    for c in clients.iter_mut() {
        let mut prev = 0u64;
        let mut per_publisher = [0usize; PUBLISHERS];
        for _ in 0..total {
            let e = c.recv_type("event");
            let seq = e["seq"].as_u64().unwrap();
            assert!(seq > prev, "seq {seq} after {prev}");
            prev = seq;
            let (p, i) = (
                e["data"][0].as_u64().unwrap() as usize,
                e["data"][1].as_u64().unwrap() as usize,
            );
            assert_eq!(per_publisher[p], i, "publisher {p}'s order kept");
            per_publisher[p] += 1;
        }
    }
}
