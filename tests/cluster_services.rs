//! Service groups in cluster mode (PROTOCOL.md §10, §14 "Services"): instances of one
//! group on different nodes of one Redis share its tasks within `prefetch`, tasks held
//! on a node that died come back elsewhere with an honest `attempt`, and dead letters
//! are listed, replayed and purged from any node. Each test starts its own
//! `redis-server` on a free port (see `common::redis`: SKIPPED loudly without it, a
//! failure under `CI`).

mod common;

use std::collections::BTreeSet;

use common::redis::*;
use common::services::*;
use common::*;
use serde_json::{json, Value};

fn node(redis: &Redis, name: &str, services: &str) -> Server {
    cluster_node(
        redis,
        name,
        &format!("[delivery]\nbatch_ms = 0\n[services]\n{services}"),
    )
}

fn ids(ts: &[Value]) -> Vec<String> {
    ts.iter()
        .map(|t| t["taskId"].as_str().unwrap().to_string())
        .collect()
}

fn attempts(ts: &[Value]) -> Vec<u64> {
    ts.iter().map(|t| t["attempt"].as_u64().unwrap()).collect()
}

#[test]
fn instances_on_two_nodes_share_a_groups_tasks_within_prefetch() {
    let Some(redis) = Redis::start() else { return };
    let cfg = "prefetch = 2";
    let (a, b, c) = (
        node(&redis, "a", cfg),
        node(&redis, "b", cfg),
        node(&redis, "c", cfg),
    );
    let mut ia = instance(&a, "ia", "g");
    let answer = subscribe(&mut ia, "jobs", "jobs");
    let mut ib = instance(&b, "ib", "g");
    // Published on a third node right after the subscription was answered: each one is
    // a task (the node's copy of the index is checked against Redis's version).
    let seqs: Vec<u64> = (0..8)
        .map(|i| c.publish("jobs", "job", json!({"i": i})))
        .collect();
    assert!(seqs[0] > answer["subscriptions"][0]["seq"].as_u64().unwrap());
    let want: BTreeSet<String> = seqs.iter().map(|s| format!("g:{s}")).collect();

    // Each instance holds prefetch (2), the rest waits: every node's view says so.
    let (mut a1, mut b1) = (tasks(&mut ia, 2), tasks(&mut ib, 2));
    for n in [&a, &b, &c] {
        wait_group(n, "g", "inFlight", 4);
        wait_group(n, "g", "pending", 4);
    }
    assert_eq!(group(&c, "g")["instances"], 2);
    // Room made on one node goes to that node's instance (the other is full).
    complete(&mut ia, &a1);
    let a2 = tasks(&mut ia, 2);
    wait_group(&c, "g", "pending", 2);
    wait_group(&c, "g", "inFlight", 4);
    complete(&mut ib, &b1);
    let b2 = tasks(&mut ib, 2);
    wait_group(&c, "g", "pending", 0);
    complete(&mut ia, &a2);
    complete(&mut ib, &b2);
    wait_group(&b, "g", "inFlight", 0);
    a1.extend(a2);
    b1.extend(b2);
    let all: Vec<String> = ids(&a1).into_iter().chain(ids(&b1)).collect();
    assert_eq!(all.len(), 8);
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "each task once"
    );
    assert!(attempts(&a1).iter().chain(&attempts(&b1)).all(|a| *a == 1));
    assert_eq!(
        a1[0]["data"],
        json!({"i": seqs.iter().position(|s| format!("g:{s}") == a1[0]["taskId"]).unwrap()})
    );
}

#[test]
fn tasks_held_on_a_node_that_died_come_back_on_another_with_attempt_2() {
    let Some(redis) = Redis::start() else { return };
    let cfg = "ack_timeout_ms = 1500\nprefetch = 3";
    let (mut a, b) = (node(&redis, "a", cfg), node(&redis, "b", cfg));
    let mut ia = instance(&a, "ia", "g");
    subscribe(&mut ia, "jobs", "jobs");
    for i in 0..3 {
        b.publish("jobs", "job", json!({"i": i}));
    }
    let held = tasks(&mut ia, 3);
    assert_eq!(attempts(&held), [1, 1, 1]);
    a.kill();
    let mut ib = instance(&b, "ib", "g");
    let again = tasks(&mut ib, 3);
    let (mut x, mut y) = (ids(&held), ids(&again));
    x.sort();
    y.sort();
    assert_eq!(x, y, "the same tasks");
    assert_eq!(attempts(&again), [2, 2, 2]);
    complete(&mut ib, &again);
    wait_group(&b, "g", "inFlight", 0);
    assert_eq!(group(&b, "g")["pending"], 0);
}

#[test]
fn dead_letters_are_listed_replayed_and_purged_from_any_node() {
    let Some(redis) = Redis::start() else { return };
    let cfg = "max_attempts = 2";
    let (a, b, c) = (
        node(&redis, "a", cfg),
        node(&redis, "b", cfg),
        node(&redis, "c", cfg),
    );
    let mut ia = instance(&a, "ia", "g");
    subscribe(&mut ia, "jobs", "jobs");
    subscribe(&mut ia, "orders", "orders");
    let fail_twice = |ia: &mut Client| -> Value {
        let t = tasks(ia, 1).remove(0);
        assert_eq!(t["attempt"], 1, "{t}");
        ia.send(&json!({"type": "taskFailed", "taskIds": [t["taskId"]], "retryInMs": 0}));
        let t2 = tasks(ia, 1).remove(0);
        assert_eq!((&t2["taskId"], &t2["attempt"]), (&t["taskId"], &json!(2)));
        ia.send(&json!({"type": "taskFailed", "taskIds": [t["taskId"]]}));
        t
    };
    let seq = b.publish("jobs", "job", json!({"n": 1}));
    let t = fail_twice(&mut ia);
    assert_eq!(t["taskId"], format!("g:{seq}"));
    wait_group(&b, "g", "dead", 1);
    let (st, dl) = c.http(
        "GET",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(st, 200, "{dl}");
    assert_eq!(dl["totalCount"], 1, "{dl}");
    let d = &dl["data"][0];
    assert_eq!(
        (&d["taskId"], &d["attempt"]),
        (&t["taskId"], &json!(2)),
        "{dl}"
    );
    assert_eq!(
        (&d["event"]["data"], &d["event"]["seq"]),
        (&json!({"n": 1}), &json!(seq))
    );

    // Replayed from a third node: back with attempt 1.
    let (st, r) = b.http(
        "POST",
        "/api/v1/services/g/dead-letters/replay",
        None,
        Some(&apikey()),
    );
    assert_eq!((st, &r["replayed"]), (200, &json!(1)), "{r}");
    let back = tasks(&mut ia, 1);
    assert_eq!(
        (&back[0]["taskId"], &back[0]["attempt"]),
        (&t["taskId"], &json!(1))
    );
    complete(&mut ia, &back);
    wait_group(&c, "g", "dead", 0);
    wait_group(&c, "g", "inFlight", 0);

    // An entity write is a task too (matched on the writing node); purged from another.
    c.put_entity("orders", "o1", json!({"total": 5}));
    let t = fail_twice(&mut ia);
    assert_eq!(
        (&t["path"], &t["eventType"]),
        (&json!("orders/o1"), &json!("created"))
    );
    wait_group(&a, "g", "dead", 1);
    let (st, p) = a.http(
        "DELETE",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!((st, &p["purged"]), (200, &json!(1)), "{p}");
    let (_, dl) = b.http(
        "GET",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(dl["totalCount"], 0, "{dl}");
    let (st, e) = b.http(
        "GET",
        "/api/v1/services/nope/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{e}"
    );
}
