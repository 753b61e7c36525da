//! Services (PROTOCOL.md §10): durable group queues, acknowledgements, redelivery, dead
//! letters, locks with fencing tokens, logs and publishing over the socket, against the
//! real binary (restarts and `kill -9` included).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::services::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn tasks_are_shared_round_robin_acknowledged_and_counted() {
    let s = Server::start("");
    let mut a = instance(&s, "a", "billing");
    let mut b = instance(&s, "b", "billing");
    let sub = subscribe(&mut a, "work", "jobs");
    let first = sub["subscriptions"][0]["seq"].as_u64().unwrap();
    // Both instances are in the group before the first task exists.
    wait_group(&s, "billing", "instances", 2);
    let (lo, hi) = s.publish_batch(
        (0..10)
            .map(|i| json!({"path": format!("jobs/{i}"), "eventType": "e", "data": {"i": i}}))
            .collect(),
    );
    assert!(lo > first);
    let ta = tasks(&mut a, 5);
    let tb = tasks(&mut b, 5);
    let mut seqs = BTreeSet::new();
    let mut owner = BTreeMap::new();
    for (who, t) in ta
        .iter()
        .map(|t| ("a", t))
        .chain(tb.iter().map(|t| ("b", t)))
    {
        let seq = t["seq"].as_u64().unwrap();
        assert_eq!(t["taskId"], format!("billing:{seq}"));
        assert_eq!(t["attempt"], 1);
        assert_eq!(t["subscriptionIds"], json!(["work"]));
        assert_eq!(t["path"], format!("jobs/{}", t["data"]["i"]));
        assert!(seqs.insert(seq), "task {seq} went to two instances");
        owner.insert(seq, who);
    }
    assert_eq!(seqs, (lo..=hi).collect::<BTreeSet<_>>());
    // "Each task goes to one instance, in turn" (PROTOCOL.md §10): taken oldest first,
    // the tasks alternate between the two instances (a 5/5 split in two runs of five
    // would not be round robin).
    let turns: Vec<&str> = owner.values().copied().collect();
    assert!(
        turns.windows(2).all(|w| w[0] != w[1]),
        "tasks in seq order went to {turns:?}"
    );
    // Oldest first on each instance.
    for ts in [&ta, &tb] {
        let s: Vec<u64> = ts.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    }
    let g = group(&s, "billing");
    assert_eq!(
        (
            g["pending"].as_u64(),
            g["inFlight"].as_u64(),
            g["instances"].as_u64()
        ),
        (Some(0), Some(10), Some(2)),
        "{g}"
    );
    complete(&mut a, &ta);
    complete(&mut b, &tb);
    // Idempotent: completing again, and unknown ids, change nothing.
    complete(&mut a, &ta);
    a.send(&json!({"type": "taskComplete", "taskIds": ["billing:999999", "nope", "other:1"]}));
    wait_group(&s, "billing", "inFlight", 0);
    assert_eq!(group(&s, "billing")["pending"], 0);
    // No error for unknown ids: an answer that takes the same way as one would (the
    // services thread handles this connection's commands in order, and answers through
    // the shard's mailbox) is the next message. A `pong` would prove nothing: the shard
    // writes it as it reads the ping, before its mailbox is drained.
    a.send(&json!({"type": "unlock", "requestId": "after", "name": "never-held"}));
    let next = a.recv();
    assert_eq!(
        (next["type"].clone(), next["requestId"].clone()),
        (json!("unlockResult"), json!("after")),
        "no error for unknown ids: {next}"
    );
    // Counted at the end of the services thread's turn, which may follow the answer.
    let counted = wait_until(Duration::from_secs(5), || {
        s.metric("shardcast_service_tasks_completed_total")
            .is_some_and(|c| c >= 10.0)
    });
    assert!(
        counted,
        "{:?}",
        s.metric("shardcast_service_tasks_completed_total")
    );
}

#[test]
fn tasks_wait_for_an_instance_and_batch_with_framing_array() {
    let s = Server::start("");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    a.close();
    wait_group(&s, "g", "instances", 0);
    let (lo, hi) = s.publish_batch(
        (0..6)
            .map(|i| json!({"path": "jobs/x", "eventType": "e", "data": i}))
            .collect(),
    );
    // Answered: durable, counted as pending although no instance is there.
    assert_eq!(group(&s, "g")["pending"], 6);
    let mut b = Client::authed(&s, &service_token("b", "g"), "&batchMs=50&framing=array");
    let ts = tasks(&mut b, 6);
    let seqs: Vec<u64> = ts.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (lo..=hi).collect::<Vec<_>>());
    assert!(
        b.frames < 6,
        "tasks came batched: {} frames for 6 tasks",
        b.frames
    );
}

#[test]
fn entity_writes_become_tasks_and_filters_apply() {
    let s = Server::start("");
    let mut a = instance(&s, "a", "g");
    a.subscribe(json!([{"id": "big", "path": "orders", "filter": "total > 100", "events": ["created", "updated"]}]));
    s.put_entity("orders", "o1", json!({"total": 5}));
    let seq = s.put_entity("orders", "o2", json!({"total": 500}));
    let t = &tasks(&mut a, 1)[0];
    assert_eq!(t["seq"], seq);
    assert_eq!(t["eventType"], "created");
    assert_eq!(t["data"], json!({"id": "o2", "total": 500}));
    assert_eq!(t["subscriptionIds"], json!(["big"]));
}

#[test]
fn kill_9_keeps_every_answered_task_with_an_honest_attempt() {
    // prefetch 4: exactly four tasks are ever sent before the crash.
    let mut s = Server::start("[services]\nack_timeout_ms = 60000\nprefetch = 4\n");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    let mut answered = Vec::new();
    for i in 0..20 {
        answered.push(s.publish("jobs/k", "e", json!(i)));
    }
    // Four were sent to the instance (unacknowledged) before the crash.
    let seen: BTreeSet<u64> = tasks(&mut a, 4)
        .iter()
        .map(|t| t["seq"].as_u64().unwrap())
        .collect();
    wait_group(&s, "g", "inFlight", 4);
    s.kill();
    s.spawn(&[]);
    let mut b = instance(&s, "b", "g");
    let mut got = BTreeMap::new();
    while got.len() < 20 {
        let ts = tasks(&mut b, 4);
        complete(&mut b, &ts);
        for t in ts {
            got.insert(t["seq"].as_u64().unwrap(), t["attempt"].as_u64().unwrap());
        }
    }
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), answered);
    for (seq, attempt) in &got {
        let want = if seen.contains(seq) { 2 } else { 1 };
        assert_eq!(
            *attempt,
            want,
            "task {seq} (sent before the crash: {})",
            seen.contains(seq)
        );
    }
}

#[test]
fn tasks_from_socket_publishes_and_entity_writes_survive_kill_9() {
    // Durable "once its publish call returned" (PROTOCOL.md §10): a service's `publish`
    // answered `published`, an entity write answered 200.
    let mut s = Server::start("");
    let mut w = instance(&s, "w1", "g");
    let r = w.subscribe(json!([{"id": "j", "path": "jobs"}, {"id": "o", "path": "orders"}]));
    assert_eq!(r["subscriptions"].as_array().map(Vec::len), Some(2), "{r}");
    // No instance: the tasks can only wait in the group's queue.
    w.close();
    wait_group(&s, "g", "instances", 0);
    let mut p = instance(&s, "p", "publisher");
    p.send(&json!({"type": "publish", "requestId": "p1", "path": "jobs/1", "eventType": "done", "data": {"n": 1}}));
    let published = p.recv_type("published");
    assert_eq!(published["requestId"], "p1", "{published}");
    let from_socket = published["seq"].as_u64().expect("seq");
    let from_entity = s.put_entity("orders", "o1", json!({"total": 5}));
    // Answered, then killed without a chance to flush anything.
    s.kill();
    s.spawn(&[]);
    let mut w = instance(&s, "w2", "g");
    let ts = tasks(&mut w, 2);
    let got: Vec<(u64, Value, Value, Value)> = ts
        .iter()
        .map(|t| {
            (
                t["seq"].as_u64().unwrap(),
                t["subscriptionIds"].clone(),
                t["data"].clone(),
                t["attempt"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (from_socket, json!(["j"]), json!({"n": 1}), json!(1)),
            (
                from_entity,
                json!(["o"]),
                json!({"id": "o1", "total": 5}),
                json!(1)
            ),
        ]
    );
}

/// A service token with no `group` claim.
fn claimless_service_token(sub: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "service", "exp": now() + 3600}),
        SECRET,
    )
}

#[test]
fn the_group_option_and_its_default() {
    // PROTOCOL.md §1–2: without a `group` claim a service is in the group its `group`
    // option names (URL or auth message), else in the group named by its `sub`.
    let s = Server::start("");
    let mut solo = Client::authed(&s, &claimless_service_token("solo-1"), "&batchMs=0");
    let mut x = Client::authed(&s, &claimless_service_token("x"), "&batchMs=0&group=g");
    let mut y = Client::connect(&s, "/ws");
    y.send(
        &json!({"type": "auth", "token": claimless_service_token("y"),
                   "options": {"group": "g", "batchMs": 0}}),
    );
    y.recv_type("authenticated");
    wait_group(&s, "g", "instances", 2);
    wait_group(&s, "solo-1", "instances", 1);
    for name in ["x", "y"] {
        assert!(
            group(&s, name).is_null(),
            "no group named after {name}'s sub: {}",
            group(&s, name)
        );
    }
    // x and y share g's tasks; solo-1 has a queue of its own.
    subscribe(&mut x, "w", "jobs");
    subscribe(&mut solo, "w", "jobs");
    let (lo, hi) = s.publish_batch(
        (0..2)
            .map(|i| json!({"path": "jobs/x", "eventType": "e", "data": i}))
            .collect(),
    );
    let mut shared: Vec<u64> = [tasks(&mut x, 1), tasks(&mut y, 1)]
        .iter()
        .map(|t| t[0]["seq"].as_u64().unwrap())
        .collect();
    shared.sort();
    assert_eq!(shared, vec![lo, hi], "one task each for g's two instances");
    let own: Vec<u64> = tasks(&mut solo, 2)
        .iter()
        .map(|t| t["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(own, vec![lo, hi], "solo-1's group got its own tasks");
}

#[test]
fn graceful_restart_never_redelivers_a_completed_task() {
    let mut s = Server::start("");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    let (lo, hi) = s.publish_batch(
        (0..20)
            .map(|i| json!({"path": "jobs/x", "eventType": "e", "data": i}))
            .collect(),
    );
    let ts = tasks(&mut a, 20);
    complete(&mut a, &ts[..10]);
    wait_group(&s, "g", "inFlight", 10);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    s.spawn(&[]);
    let mut b = instance(&s, "b", "g");
    let marker = s.publish("jobs/marker", "e", json!("last"));
    let again = tasks(&mut b, 11);
    let seqs: Vec<u64> = again.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = (lo + 10..=hi).collect();
    want.push(marker);
    assert_eq!(seqs, want, "exactly the uncompleted ones, then the marker");
    assert!(again[..10].iter().all(|t| t["attempt"] == 2));
    assert_eq!(again[10]["attempt"], 1);
}

#[test]
fn failed_timed_out_and_disconnected_tasks_come_back_then_die() {
    let s = Server::start("[services]\nack_timeout_ms = 400\nmax_attempts = 3\n");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    let seq = s.publish("jobs/1", "e", json!({"n": 1}));
    let t1 = &tasks(&mut a, 1)[0];
    assert_eq!(
        (t1["seq"].as_u64(), t1["attempt"].as_u64()),
        (Some(seq), Some(1))
    );
    // Failed with a retry delay: back after it, attempt 2.
    let failed_at = Instant::now();
    a.send(&json!({"type": "taskFailed", "taskIds": [t1["taskId"]], "retryInMs": 300}));
    let t2 = &tasks(&mut a, 1)[0];
    assert!(
        failed_at.elapsed() >= Duration::from_millis(290),
        "{:?}",
        failed_at.elapsed()
    );
    assert_eq!(t2["attempt"], 2);
    // Not acknowledged: back after ack_timeout, attempt 3.
    let t3 = &tasks(&mut a, 1)[0];
    assert_eq!(t3["attempt"], 3);
    // Out of attempts: dead.
    a.send(&json!({"type": "taskFailed", "taskIds": [t3["taskId"]]}));
    wait_group(&s, "g", "dead", 1);
    let g = group(&s, "g");
    assert_eq!(
        (g["pending"].as_u64(), g["inFlight"].as_u64()),
        (Some(0), Some(0)),
        "{g}"
    );
    let (st, dl) = s.http(
        "GET",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(st, 200, "{dl}");
    assert_eq!(dl["totalCount"], 1);
    assert_eq!(dl["data"][0]["taskId"], format!("g:{seq}"));
    assert_eq!(dl["data"][0]["attempt"], 3);
    assert_eq!(dl["data"][0]["event"]["data"], json!({"n": 1}));
    assert_eq!(dl["data"][0]["event"]["seq"], seq);
    // Replayed: back with attempt 1.
    let (st, r) = s.http(
        "POST",
        "/api/v1/services/g/dead-letters/replay",
        None,
        Some(&apikey()),
    );
    assert_eq!((st, r["replayed"].as_u64()), (200, Some(1)), "{r}");
    let t = &tasks(&mut a, 1)[0];
    assert_eq!(
        (t["seq"].as_u64(), t["attempt"].as_u64()),
        (Some(seq), Some(1))
    );
    assert_eq!(group(&s, "g")["dead"], 0);
    // A disconnect hands it to another instance with the attempt counted.
    let mut b = instance(&s, "b", "g");
    a.close();
    let t = &tasks(&mut b, 1)[0];
    assert_eq!(
        (t["seq"].as_u64(), t["attempt"].as_u64()),
        (Some(seq), Some(2))
    );
    let counted = wait_until(Duration::from_secs(5), || {
        s.metric_where(
            "shardcast_service_redeliveries_total",
            "cause=\"disconnect\"",
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert!(counted, "the disconnect's redelivery is counted");
    // Dies again (attempt 3 is the last), then is purged.
    b.send(&json!({"type": "taskFailed", "taskIds": [t["taskId"]]}));
    let t = &tasks(&mut b, 1)[0];
    b.send(&json!({"type": "taskFailed", "taskIds": [t["taskId"]]}));
    wait_group(&s, "g", "dead", 1);
    let (st, p) = s.http(
        "DELETE",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!((st, p["purged"].as_u64()), (200, Some(1)), "{p}");
    let (_, dl) = s.http(
        "GET",
        "/api/v1/services/g/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(
        (
            dl["totalCount"].as_u64(),
            dl["data"].as_array().map(|d| d.len())
        ),
        (Some(0), Some(0)),
        "{dl}"
    );
}

#[test]
fn an_instance_holds_at_most_prefetch_and_two_never_hold_one_task() {
    let s = Server::start("[services]\nprefetch = 2\nack_timeout_ms = 1500\n");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    s.publish_batch(
        (0..5)
            .map(|i| json!({"path": "jobs/x", "eventType": "e", "data": i}))
            .collect(),
    );
    let first = tasks(&mut a, 2);
    let got_at = Instant::now();
    let g = group(&s, "g");
    assert_eq!(
        (g["inFlight"].as_u64(), g["pending"].as_u64()),
        (Some(2), Some(3)),
        "{g}"
    );
    complete(&mut a, &first[..1]);
    let third = &tasks(&mut a, 1)[0];
    assert!(third["seq"].as_u64() > first[1]["seq"].as_u64());
    // A second instance gets what `a` holds only once its deadline passed.
    let mut b = instance(&s, "b", "g");
    let tb = tasks(&mut b, 2);
    let mut taken: Vec<u64> = tb.iter().map(|t| t["seq"].as_u64().unwrap()).collect();
    taken.sort();
    // b first gets the two still pending (attempt 1), never a held one before its deadline.
    assert!(tb.iter().all(|t| t["attempt"] == 1), "{tb:?}");
    let held = [
        first[1]["seq"].as_u64().unwrap(),
        third["seq"].as_u64().unwrap(),
    ];
    assert!(!taken.iter().any(|t| held.contains(t)));
    complete(&mut b, &tb);
    // The next task out is a held one, after its deadline, to whichever instance is next
    // in turn: read both until it comes.
    let started = Instant::now();
    let again = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no redelivery");
        let mut got = None;
        for c in [&mut a, &mut b] {
            match c.recv_within(Duration::from_millis(20)) {
                Ok(m) if m["type"] == "event" => got = Some(m),
                Ok(m) if m["type"] == "ping" => {}
                Ok(m) => panic!("unexpected {m}"),
                Err(_) => {}
            }
        }
        if let Some(m) = got {
            break m;
        }
    };
    assert!(held.contains(&again["seq"].as_u64().unwrap()), "{again}");
    assert!(again["attempt"].as_u64().unwrap() >= 2, "{again}");
    // `a` received it no later than `got_at`, so its deadline is at least 1.5 s after.
    assert!(
        got_at.elapsed() >= Duration::from_millis(1450),
        "redelivered after {:?}",
        got_at.elapsed()
    );
}

#[test]
fn unsubscribe_ends_the_durable_subscription_and_keeps_its_tasks() {
    let s = Server::start("");
    let mut a = instance(&s, "a", "g");
    subscribe(&mut a, "w", "jobs");
    a.close();
    s.publish("jobs/1", "e", json!(1));
    let mut b = instance(&s, "b", "g");
    b.send(&json!({"type": "unsubscribeEvents", "requestId": "u", "ids": ["w", "zz"]}));
    // The pending task still comes (it may come before or after the answer).
    let mut got_task = false;
    let mut answered = false;
    while !(got_task && answered) {
        let m = b.recv();
        match m["type"].as_str() {
            Some("event") => got_task = true,
            Some("unsubscribedEvents") => {
                assert_eq!(
                    (
                        m["ids"].clone(),
                        m["notFound"].clone(),
                        m["requestId"].clone()
                    ),
                    (json!(["w"]), json!(["zz"]), json!("u"))
                );
                answered = true;
            }
            _ => panic!("{m}"),
        }
    }
    s.publish("jobs/2", "e", json!(2));
    let mut c = instance(&s, "c", "other");
    subscribe(&mut c, "w", "jobs");
    let marker = s.publish("jobs/3", "e", json!(3));
    assert_eq!(tasks(&mut c, 1)[0]["seq"], marker);
    wait_group(&s, "g", "inFlight", 1);
    assert_eq!(
        group(&s, "g")["pending"],
        0,
        "no task for jobs/2 or jobs/3 after the unsubscribe"
    );
}

#[test]
fn locks_grant_wait_in_order_expire_and_fence_across_restarts() {
    let mut s = Server::start("");
    let mut a = instance(&s, "a", "g");
    let mut b = instance(&s, "b", "g");
    let mut c = instance(&s, "c", "g");
    a.send(&json!({"type": "lock", "requestId": "1", "name": "inv", "ttlMs": 10000, "waitMs": 0}));
    let la = a.recv_type("lockResult");
    assert_eq!(
        (
            la["requestId"].clone(),
            la["acquired"].clone(),
            la["name"].clone()
        ),
        (json!("1"), json!(true), json!("inv"))
    );
    let t1 = la["fencingToken"].as_u64().unwrap();
    assert!(la["expiresAt"].as_str().unwrap().ends_with('Z'));
    b.send(&json!({"type": "lock", "requestId": "2", "name": "inv", "ttlMs": 10000, "waitMs": 0}));
    let lb = b.recv_type("lockResult");
    assert_eq!(lb["acquired"], false, "{lb}");
    // Extension by the holder: same token.
    a.send(&json!({"type": "lock", "requestId": "3", "name": "inv", "ttlMs": 10000}));
    assert_eq!(a.recv_type("lockResult")["fencingToken"], t1);
    // Two waiters, served in arrival order.
    b.send(
        &json!({"type": "lock", "requestId": "4", "name": "inv", "ttlMs": 300, "waitMs": 10000}),
    );
    // b's wait is queued before c asks: an answer to b's next request (which the services
    // thread handles after b's lock) proves it.
    b.send(&json!({"type": "unlock", "requestId": "probe", "name": "other"}));
    let probe = b.recv_type("unlockResult");
    assert_eq!(
        (probe["requestId"].clone(), probe["released"].clone()),
        (json!("probe"), json!(false))
    );
    c.send(
        &json!({"type": "lock", "requestId": "5", "name": "inv", "ttlMs": 10000, "waitMs": 10000}),
    );
    a.send(&json!({"type": "unlock", "requestId": "6", "name": "inv"}));
    let u = a.recv_type("unlockResult");
    assert_eq!(
        (u["released"].clone(), u["requestId"].clone()),
        (json!(true), json!("6"))
    );
    let lb = b.recv_type("lockResult");
    assert_eq!(
        (lb["acquired"].clone(), lb["requestId"].clone()),
        (json!(true), json!("4"))
    );
    let t2 = lb["fencingToken"].as_u64().unwrap();
    assert!(t2 > t1);
    // b's 300 ms hold expires: c gets it.
    let lc = c.recv_type("lockResult");
    assert_eq!(lc["acquired"], true);
    let t3 = lc["fencingToken"].as_u64().unwrap();
    assert!(t3 > t2);
    b.send(&json!({"type": "unlock", "requestId": "7", "name": "inv"}));
    assert_eq!(
        b.recv_type("unlockResult")["released"],
        false,
        "b's hold had expired"
    );
    // The holder disconnects: the lock is free again.
    c.close();
    let free = wait_until(Duration::from_secs(5), || {
        b.send(&json!({"type": "lock", "requestId": "8", "name": "inv", "ttlMs": 10000}));
        b.recv_type("lockResult")["acquired"] == true
    });
    assert!(free);
    // Waits run out.
    a.send(&json!({"type": "lock", "requestId": "9", "name": "inv", "ttlMs": 1000, "waitMs": 200}));
    let t0 = Instant::now();
    assert_eq!(a.recv_type("lockResult")["acquired"], false);
    assert!(t0.elapsed() >= Duration::from_millis(190));
    // Across a restart (even kill -9) tokens keep growing.
    s.kill();
    s.spawn(&[]);
    let mut d = instance(&s, "d", "g");
    d.send(&json!({"type": "lock", "requestId": "10", "name": "inv", "ttlMs": 1000}));
    let ld = d.recv_type("lockResult");
    assert!(ld["fencingToken"].as_u64().unwrap() > t3, "{ld} after {t3}");
}

#[test]
fn logs_reach_admins_and_services_publish_over_the_socket() {
    let s = Server::start("");
    let mut admin = Client::authed(&s, &token("ops", "admin", &["*"]), "&batchMs=0");
    let r = admin.subscribe(json!([{"id": "logs", "path": "$logs"}]));
    assert_eq!(r["subscriptions"][0]["id"], "logs", "{r}");
    let mut user = Client::authed(&s, &token("u", "user", &["jobs"]), "&batchMs=0");
    user.subscribe(json!([{"id": "j", "path": "jobs"}]));
    let mut a = instance(&s, "a", "billing");
    a.send(&json!({"type": "log", "level": "warn", "message": "disk low", "fields": {"free": 3}}));
    let e = admin.recv_type("event");
    assert_eq!(
        (e["path"].clone(), e["eventType"].clone()),
        (json!("$logs/billing"), json!("warn"))
    );
    assert_eq!(e["data"]["message"], "disk low");
    assert_eq!(e["data"]["fields"], json!({"free": 3}));
    assert_eq!(e["data"]["instance"], "a");
    a.send(&json!({"type": "publish", "requestId": "p1", "path": "jobs/7", "eventType": "done", "data": {"ok": true}}));
    let p = a.recv_type("published");
    assert_eq!(p["requestId"], "p1");
    let ev = user.recv_type("event");
    assert_eq!(
        (ev["seq"].clone(), ev["data"].clone()),
        (p["seq"].clone(), json!({"ok": true}))
    );
    a.send(&json!({"type": "publish", "requestId": "p2", "path": "bad path", "eventType": "e"}));
    assert_error(&a.error(), "INVALID_PATH");
    a.send(&json!({"type": "log", "level": "loud", "message": "x"}));
    assert!(assert_error(&a.error(), "BAD_MESSAGE").contains("level"));
    // A service's own publish becomes a task for its group, answered once durable.
    subscribe(&mut a, "w", "jobs");
    a.send(&json!({"type": "publish", "requestId": "p3", "path": "jobs/8", "eventType": "e"}));
    let mut got = (false, false);
    while got != (true, true) {
        let m = a.recv();
        match m["type"].as_str() {
            Some("published") => got.0 = true,
            Some("event") => got.1 = true,
            _ => panic!("{m}"),
        }
    }
}

#[test]
fn users_are_forbidden_and_bad_commands_are_named() {
    let s = Server::start("");
    let mut u = Client::authed(&s, &token("u", "user", &["*"]), "");
    for m in [
        json!({"type": "taskComplete", "taskIds": ["g:1"]}),
        json!({"type": "taskFailed", "taskIds": ["g:1"]}),
        json!({"type": "lock", "name": "n", "ttlMs": 10}),
        json!({"type": "unlock", "name": "n"}),
        json!({"type": "log", "level": "info", "message": "m"}),
        json!({"type": "publish", "path": "a", "eventType": "e"}),
    ] {
        u.send(&m);
        let e = u.error();
        assert!(
            assert_error(&e, "FORBIDDEN").contains(m["type"].as_str().unwrap()),
            "{e}"
        );
    }
    let mut a = instance(&s, "a", "g");
    for (m, word) in [
        (json!({"type": "lock", "name": "n"}), "ttlMs"),
        (json!({"type": "lock", "name": "", "ttlMs": 5}), "name"),
        (json!({"type": "lock", "name": "n", "ttlMs": 0}), "ttlMs"),
        (
            json!({"type": "lock", "name": "n", "ttlMs": 5, "waitMs": -1}),
            "waitMs",
        ),
        (json!({"type": "taskComplete"}), "taskIds"),
        (
            json!({"type": "taskComplete", "taskIds": [1]}),
            "taskIds[0]",
        ),
        (
            json!({"type": "taskFailed", "taskIds": [], "retryInMs": "soon"}),
            "retryInMs",
        ),
        (json!({"type": "log", "level": "info"}), "message"),
    ] {
        a.send(&m);
        let msg = assert_error(&a.error(), "BAD_MESSAGE");
        assert!(msg.contains(word), "{m}: {msg}");
    }
    a.send(
        &json!({"type": "subscribeEvents", "requestId": "s", "subscriptions": [
        {"id": "sys", "path": "$logs"}, {"id": "f", "path": "a", "filter": "x =="}]}),
    );
    let r = a.recv_type("subscribedEvents");
    assert_eq!(r["subscriptions"], json!([]));
    assert_eq!(r["rejected"][0]["code"], "FORBIDDEN");
    assert_eq!(r["rejected"][1]["code"], "INVALID_FILTER");
    // A group that is not a path segment is refused at authentication.
    let mut bad = Client::connect(&s, &format!("/ws?token={}", service_token("x", "a b")));
    assert_error(&bad.error(), "UNAUTHORIZED");
    assert_eq!(bad.expect_close(Duration::from_secs(5)).0, 4001);
}

#[test]
fn the_operator_api_checks_callers_and_shapes() {
    let s = Server::start("");
    let user = format!("Bearer {}", token("u", "user", &["*"]));
    let svc = format!("Bearer {}", service_token("a", "g"));
    let admin = format!("Bearer {}", token("ops", "admin", &[]));
    assert_eq!(s.http("GET", "/api/v1/services", None, None).0, 401);
    assert_eq!(s.http("GET", "/api/v1/services", None, Some(&user)).0, 403);
    assert_eq!(s.http("GET", "/api/v1/services", None, Some(&svc)).0, 403);
    let (st, body) = s.http("GET", "/api/v1/services", None, Some(&admin));
    assert_eq!((st, body), (200, json!({"groups": []})));
    let (st, e) = s.http(
        "GET",
        "/api/v1/services/nope/dead-letters",
        None,
        Some(&apikey()),
    );
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (404, json!("NOT_FOUND")),
        "{e}"
    );
    let (st, e) = s.http(
        "GET",
        "/api/v1/services/g/dead-letters?limit=0",
        None,
        Some(&apikey()),
    );
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("limit"));
    assert_eq!(
        s.http(
            "PUT",
            "/api/v1/services/g/dead-letters",
            None,
            Some(&apikey())
        )
        .0,
        405
    );
    assert_eq!(
        s.http("GET", "/api/v1/services/g/other", None, Some(&apikey()))
            .0,
        404
    );
}

#[test]
fn a_slow_instance_never_loses_tasks_to_oldest_drop() {
    // A ring of 4 for users; a service's must hold its whole prefetch (8) besides, so
    // tasks waiting in it are never dropped. The instance reads nothing at first: its
    // prefetch fills with tasks of 64 KiB each that wait, unwritten, behind a 16 KiB
    // receive buffer and a 1 s batch, while the rest wait in the group's queue.
    let s = Server::start(
        "[delivery]\nqueue_capacity = 4\n[services]\nprefetch = 8\nack_timeout_ms = 120000\n",
    );
    let overflow = || s.metric_where("shardcast_dropped_total", "reason=\"queue_overflow\"");
    assert_eq!(
        overflow(),
        Some(0.0),
        "the overflow series exists from the start"
    );
    let mut a = Client::slow_reader(&s, &format!("{}&batchMs=1000", service_token("a", "g")));
    subscribe(&mut a, "w", "jobs");
    let pad = "x".repeat(64 * 1024);
    let (lo, hi) = s.publish_batch(
        (0..20)
            .map(|i| json!({"path": "jobs/x", "eventType": "e", "data": {"i": i, "pad": pad}}))
            .collect(),
    );
    // The prefetch is full and the rest waits for room: the instance is slow.
    let full = wait_until(Duration::from_secs(10), || {
        let g = group(&s, "g");
        g["inFlight"] == 8 && g["pending"] == 12
    });
    assert!(full, "prefetch never filled: {}", group(&s, "g"));
    // Now it reads, completing each task as it comes: every task arrives once, oldest
    // first, with no QUEUE_OVERFLOW warning (`tasks` refuses anything but a task).
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let ts = tasks(&mut a, (20 - seqs.len()).min(8));
        assert!(ts.iter().all(|t| t["attempt"] == 1), "{ts:?}");
        seqs.extend(ts.iter().map(|t| t["seq"].as_u64().unwrap()));
        complete(&mut a, &ts);
    }
    assert_eq!(
        seqs,
        (lo..=hi).collect::<Vec<_>>(),
        "no task dropped, none warned about"
    );
    wait_group(&s, "g", "inFlight", 0);
    assert_eq!(overflow(), Some(0.0), "nothing was dropped from any ring");
}

#[test]
fn since_on_a_durable_subscription_says_whether_the_queue_reaches_back() {
    let s = Server::start("");
    let mut a = instance(&s, "a", "g");
    let sub = json!([{"id": "w", "path": "jobs", "since": 0}]);
    // A new subscription cannot reach back before it began.
    let m = a.subscribe(sub.clone());
    assert_eq!(m["subscriptions"][0]["recovered"], false, "{m}");
    // The same one again: the group's queue kept everything since.
    let m = a.subscribe(sub);
    assert_eq!(m["subscriptions"][0]["recovered"], true, "{m}");
    // Without `since`, no `recovered`.
    let m = a.subscribe(json!([{"id": "w", "path": "jobs"}]));
    assert!(m["subscriptions"][0].get("recovered").is_none(), "{m}");
}
