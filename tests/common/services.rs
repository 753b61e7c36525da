//! Helpers for tests of services (PROTOCOL.md §10), on one node or a cluster: instances,
//! their subscriptions and tasks, and the operator REST's view of a group.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub fn service_token(sub: &str, group: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "service", "group": group, "exp": now() + 3600}),
        SECRET,
    )
}

/// A service instance of `group`, with immediate flushes.
pub fn instance(s: &Server, sub: &str, group: &str) -> Client {
    Client::authed(s, &service_token(sub, group), "&batchMs=0")
}

pub fn subscribe(c: &mut Client, id: &str, path: &str) -> Value {
    let m = c.subscribe(json!([{"id": id, "path": path}]));
    assert_eq!(m["subscriptions"][0]["id"], id, "{m}");
    m
}

/// The next `n` task events (skipping pings).
pub fn tasks(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c
            .recv_within(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("task {} of {n} did not come: {e:?}", out.len() + 1));
        match m["type"].as_str() {
            Some("ping") => continue,
            Some("event") => {
                assert!(m["taskId"].is_string() && m["attempt"].is_u64(), "{m}");
                out.push(m);
            }
            _ => panic!("expected a task, got {m}"),
        }
    }
    out
}

pub fn complete(c: &mut Client, ts: &[Value]) {
    let ids: Vec<&Value> = ts.iter().map(|t| &t["taskId"]).collect();
    c.send(&json!({"type": "taskComplete", "taskIds": ids}));
}

/// The group's line of `GET /api/v1/services`.
pub fn group(s: &Server, name: &str) -> Value {
    let (status, body) = s.http("GET", "/api/v1/services", None, Some(&apikey()));
    assert_eq!(status, 200, "{body}");
    body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

pub fn wait_group(s: &Server, name: &str, what: &str, want: u64) {
    let ok = wait_until(Duration::from_secs(10), || group(s, name)[what] == want);
    assert!(
        ok,
        "{what} of {name} never reached {want}: {}",
        group(s, name)
    );
}
