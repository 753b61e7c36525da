//! Delivery: subscriptions, event shape, fan-out, batching, framing, overflow.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn event_shape_and_seq_match_the_publish_answer() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u1", "user", &["jobs"]), "");
    let r = c.subscribe(json!([{"id": "my-jobs", "path": "jobs", "events": ["jobCompleted"]}]));
    assert_eq!(r["requestId"], "sub");
    assert_eq!(r["subscriptions"][0]["id"], "my-jobs");
    assert!(r.get("rejected").is_none(), "{r}");
    let seq = s.publish("jobs/550e", "jobCompleted", json!({"jobId": "550e"}));
    let e = c.recv_type("event");
    assert_eq!(e["subscriptionIds"], json!(["my-jobs"]));
    assert_eq!(e["eventType"], "jobCompleted");
    assert_eq!(e["path"], "jobs/550e");
    assert_eq!(e["data"], json!({"jobId": "550e"}));
    assert_eq!(e["seq"], seq);
    let ts = e["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    let _ = Instant::now();
    let _ = Duration::ZERO;
}
