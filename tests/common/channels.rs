//! Helpers for tests of REST-created channels (PROTOCOL.md §9), on one node or a
//! cluster: users' tokens, channels, their sockets and the publications they collect.

use serde_json::{json, Value};

use super::*;

pub const BASE: &str = "/api/v1/realtime-subscriptions";

pub fn user(sub: &str, org: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "user", "org": org, "scopes": ["claims", "jobs"], "exp": now() + 3600}),
        SECRET,
    )
}

pub fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub fn call(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (u16, Value) {
    s.http(method, path, body.as_ref(), Some(&bearer(token)))
}

pub fn org_channel(s: &Server, token: &str, org: &str, sub: &str, events: &[&str]) -> Value {
    let (st, b) = call(
        s,
        "POST",
        &format!("{BASE}/organisation"),
        Some(json!({"organisation_id": org, "user_id": sub, "event_types": events})),
        token,
    );
    assert_eq!(st, 201, "{b}");
    b
}

pub fn claim(s: &Server, org: &str, user: &str, event_type: &str, n: u64) -> u64 {
    s.publish(
        &format!("claims/c{n}"),
        event_type,
        json!({"organisation_id": org, "user_id": user, "n": n}),
    )
}

/// Connects a socket to the channel and waits for `authenticated`.
pub fn attach(s: &Server, id: &str, token: &str) -> Client {
    let mut c = Client::connect(s, &format!("/channels/{id}?token={token}&batchMs=0"));
    c.recv_type("authenticated");
    c
}

pub fn events(c: &mut Client, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let m = c.recv_type("event");
            assert!(m.get("subscriptionIds").is_none(), "{m}");
            m
        })
        .collect()
}
