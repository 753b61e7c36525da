//! The backend conformance suite: what every implementation of `backend::Backend` must do,
//! seen through a node as its clients see it (PROTOCOL.md §§2, 5, 8, 14). Each behaviour
//! runs against every backend in [`backends`]; a new backend joins the list and must pass
//! the same checks unchanged: the embedded one, and a cluster node on a `redis-server` of
//! the test's own (without one the Redis half says SKIPPED, and fails under `CI`).

mod common;

use std::time::Duration;

use common::redis::{cluster_node, Redis};
use common::*;
use serde_json::{json, Value};

const CONFIG: &str = "[delivery]\nbatch_ms = 0";

/// A node on each backend, with events delivered at once (and the Redis it runs on).
fn backends() -> Vec<(&'static str, Server, Option<Redis>)> {
    let mut all = vec![("local", Server::start(CONFIG), None)];
    if let Some(redis) = Redis::start() {
        let node = cluster_node(&redis, "conformance", CONFIG);
        all.push(("redis", node, Some(redis)));
    }
    all
}

fn each_backend(check: impl Fn(&str, &Server)) {
    for (name, server, _redis) in backends() {
        check(name, &server);
    }
}

/// Publications get one strictly increasing `seq` (a batch a contiguous run), are
/// answered with it, and reach subscribers in that order, each once.
#[test]
fn publications_are_sequenced_once_and_delivered_in_order() {
    each_backend(|name, s| {
        let mut c = Client::authed(s, &token("u", "user", &["*"]), "");
        c.subscribe(json!([{"id": "o", "path": "order"}]));
        let mut answered = Vec::new();
        for i in 0..5 {
            answered.push(s.publish("order/a", "e", json!(i)));
            let (first, last) = s.publish_batch(
                (0..3)
                    .map(|j| json!({"path": "order/b", "eventType": "e", "data": [i, j]}))
                    .collect(),
            );
            assert_eq!(last, first + 2, "{name}: a batch is a contiguous run");
            answered.extend(first..=last);
        }
        assert!(
            answered.windows(2).all(|w| w[0] < w[1]),
            "{name}: seqs not strictly increasing: {answered:?}"
        );
        let got: Vec<u64> = (0..answered.len())
            .map(|_| c.recv_type("event")["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, answered, "{name}: delivery order");
        let marker = s.publish("order/end", "e", json!(null));
        c.expect_marker(marker);
    });
}

/// `since` replays exactly what came after it, in order, before live events, and says
/// whether the history reached back; a `since` beyond the head is refused.
#[test]
fn since_replays_what_was_missed_and_refuses_the_future() {
    each_backend(|name, s| {
        let seqs: Vec<u64> = (0..10)
            .map(|i| s.publish("hist/x", "e", json!(i)))
            .collect();
        let mut c = Client::authed(s, &token("u", "user", &["*"]), "");
        let r = c.subscribe(json!([{"id": "h", "path": "hist", "since": seqs[4]}]));
        assert_eq!(r["subscriptions"][0]["recovered"], true, "{name}: {r}");
        assert_eq!(r["subscriptions"][0]["seq"], seqs[9], "{name}: {r}");
        for want in &seqs[5..] {
            let m = c.recv_type("event");
            assert_eq!(m["seq"], *want, "{name}: {m}");
        }
        let live = s.publish("hist/x", "e", json!("live"));
        c.expect_marker(live);
        // The head is `live`: one past it has not happened anywhere.
        let r = c.subscribe(json!([{"id": "f", "path": "hist", "since": live + 1}]));
        let rejected = &r["rejected"][0];
        assert_eq!(rejected["code"], "BAD_MESSAGE", "{name}: {r}");
        assert!(
            rejected["message"]
                .as_str()
                .is_some_and(|m| m.contains("in the future")),
            "{name}: {r}"
        );
    });
}

fn write(s: &Server, method: &str, id: &str, body: Option<Value>) -> (u16, Value) {
    s.http(
        method,
        &format!("/api/v1/entities/things/{id}"),
        body.as_ref(),
        Some(&apikey()),
    )
}

/// Entity writes decide on the state the previous write left (`PUT` creates then
/// updates, `PATCH` merges, `DELETE` removes, a missing entity is 404), each answered
/// with the `seq` of its publication, and a read after the answer reflects it.
#[test]
fn entity_writes_apply_to_the_state_the_previous_one_left() {
    each_backend(|name, s| {
        let mut c = Client::authed(s, &token("u", "user", &["*"]), "");
        c.subscribe(json!([{"id": "t", "path": "things"}]));
        let steps: [(&str, Option<Value>, &str, Option<Value>); 4] = [
            (
                "PUT",
                Some(json!({"a": 1, "b": 1})),
                "created",
                Some(json!({"a": 1, "b": 1})),
            ),
            (
                "PATCH",
                Some(json!({"b": 2, "c": 3})),
                "updated",
                Some(json!({"a": 1, "b": 2, "c": 3})),
            ),
            (
                "PUT",
                Some(json!({"z": 9})),
                "updated",
                Some(json!({"z": 9})),
            ),
            ("DELETE", None, "deleted", None),
        ];
        let mut last = 0;
        for (method, body, op, state) in steps {
            let (st, a) = write(s, method, "t1", body);
            assert_eq!(
                (st, a["op"].as_str()),
                (200, Some(op)),
                "{name} {method}: {a}"
            );
            let seq = a["seq"].as_u64().unwrap();
            assert!(seq > last, "{name}: {seq} after {last}");
            last = seq;
            let (st, got) = s.http("GET", "/api/v1/entities/things/t1", None, Some(&apikey()));
            match state {
                Some(mut want) => {
                    want["id"] = json!("t1");
                    assert_eq!((st, &got), (200, &want), "{name}: GET after {method}");
                }
                None => assert_eq!(st, 404, "{name}: GET after DELETE: {got}"),
            }
            let m = c.recv_type("event");
            assert_eq!(
                (m["seq"].as_u64(), m["eventType"].as_str()),
                (Some(seq), Some(op)),
                "{m}"
            );
        }
        for method in ["PATCH", "DELETE"] {
            let body = (method == "PATCH").then(|| json!({"a": 1}));
            let (st, a) = write(s, method, "t1", body);
            assert_eq!(
                (st, a["error"]["code"].as_str()),
                (404, Some("NOT_FOUND")),
                "{name}: {a}"
            );
        }
    });
}

/// A ticket is redeemed once; a second use is refused with 4001.
#[test]
fn a_ticket_is_redeemed_once() {
    each_backend(|name, s| {
        let tok = token("tk", "user", &["*"]);
        let (st, t) = s.http(
            "POST",
            "/api/v1/ws-tickets",
            None,
            Some(&format!("Bearer {tok}")),
        );
        assert_eq!(st, 201, "{name}: {t}");
        let uuid = t["uuid"].as_str().unwrap();
        let mut c = Client::connect(s, &format!("/ws?uuid={uuid}"));
        let m = c.recv_type("authenticated");
        assert!(m["connectionId"].is_string(), "{name}: {m}");
        let mut again = Client::connect(s, &format!("/ws?uuid={uuid}"));
        assert_eq!(again.error()["code"], "UNAUTHORIZED", "{name}");
        assert_eq!(again.expect_close(Duration::from_secs(5)).0, 4001, "{name}");
    });
}

/// A node on a working backend is ready, and names itself.
#[test]
fn a_node_is_ready_and_names_itself() {
    each_backend(|name, s| {
        assert_eq!(s.http("GET", "/readyz", None, None).0, 200, "{name}");
        let (_, h) = s.http("GET", "/healthz", None, None);
        assert!(
            h["node"].as_str().is_some_and(|n| !n.is_empty()),
            "{name}: {h}"
        );
    });
}
