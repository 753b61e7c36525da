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
            .metric(&format!(
                "shardcast_connections{{shard=\"{shard}\",role=\"user\"}}"
            ))
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
    for c in clients.iter_mut() {
        c.expect_silence(Duration::from_millis(0));
    }
    assert!(wait_until(Duration::from_secs(5), || {
        s.metric("shardcast_deliveries_total").unwrap_or(0.0) >= (3 * N) as f64
    }));
}
