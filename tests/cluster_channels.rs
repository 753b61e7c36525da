//! REST-created channels in cluster mode (PROTOCOL.md §9, §14 "Channels"): created,
//! listed, read, fed, attached, taken over, reconnected and deleted on different nodes
//! of one Redis. Each test starts its own `redis-server` on a free port (see
//! `common::redis`: SKIPPED loudly without it, a failure under `CI`).

mod common;

use std::time::Duration;

use common::channels::*;
use common::redis::*;
use common::*;
use serde_json::{json, Value};

fn node(redis: &Redis, name: &str, extra: &str) -> Server {
    cluster_node(redis, name, &format!("[delivery]\nbatch_ms = 0\n{extra}"))
}

fn seqs(es: &[Value]) -> Vec<u64> {
    es.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_channel_is_created_fed_attached_taken_over_and_deleted_on_different_nodes() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| node(&redis, n, ""));
    let t = user("u1", "org_1");
    let ch = org_channel(&a, &t, "org_1", "u1", &["status_changed"]);
    let id = ch["channel_id"].as_str().unwrap().to_string();
    assert_eq!(ch["status"], "connected", "{ch}");
    let (st, list) = call(&b, "GET", BASE, None, &t);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["data"][0]["channel_id"], id, "{list}");
    assert_eq!(list["pagination"]["total"], 1, "{list}");

    // Fed from another node: only what matches.
    claim(&b, "org_2", "u1", "status_changed", 0);
    let fed: Vec<u64> = (1..=3)
        .map(|n| claim(&b, "org_1", "u1", "status_changed", n))
        .collect();
    claim(&b, "org_1", "u1", "comment_added", 4);
    let (_, detail) = call(&d, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(detail["event_count"], 3, "{detail}");
    // The metrics are the cluster's, on every node (refreshed every 2 s).
    for n in [&a, &c] {
        assert!(
            wait_until(Duration::from_secs(10), || {
                n.metric("shardcast_channel_events_total") == Some(3.0)
                    && n.metric("shardcast_channel_backlog_events") == Some(3.0)
            }),
            "{:?}",
            n.metric("shardcast_channel_events_total")
        );
    }

    // Attached on a third: the backlog in order, then live events from anywhere.
    let mut on_c = attach(&c, &id, &t);
    let got = events(&mut on_c, 3);
    assert_eq!(seqs(&got), fed);
    assert!(got.iter().all(|e| e["channelId"] == id.as_str()), "{got:?}");
    let live = claim(&a, "org_1", "u1", "status_changed", 5);
    assert_eq!(on_c.recv_type("event")["seq"], live);

    // A fourth socket, on a fourth node, takes over: the old one is closed.
    let mut on_d = attach(&d, &id, &t);
    let (code, reason) = on_c.expect_close(Duration::from_secs(5));
    assert_eq!(code, 1000, "{reason}");
    let after = claim(&b, "org_1", "u1", "status_changed", 6);
    // What the old socket had not yet reported written comes again to the new one (at
    // most `live`), then what follows.
    let mut got = vec![on_d.recv_type("event")["seq"].as_u64().unwrap()];
    if got[0] != after {
        assert_eq!(
            got[0], live,
            "only what was on its way to the old socket comes again"
        );
        got.push(on_d.recv_type("event")["seq"].as_u64().unwrap());
    }
    assert_eq!(
        *got.last().unwrap(),
        after,
        "the newer socket gets what follows"
    );

    // Deleted on the first node: the socket closes wherever it is, the channel is gone
    // everywhere.
    let (st, del) = call(&a, "DELETE", &format!("{BASE}/{id}"), None, &t);
    assert_eq!((st, &del["unsubscribed"]), (200, &json!(true)), "{del}");
    let (code, _) = on_d.expect_close(Duration::from_secs(5));
    assert_eq!(code, 1000);
    let (st, _) = call(&b, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(st, 404);
    let (_, list) = call(&c, "GET", BASE, None, &t);
    assert_eq!(list["pagination"]["total"], 0, "{list}");
    // Nothing collects for it any more.
    claim(&b, "org_1", "u1", "status_changed", 7);
    assert_eq!(call(&d, "GET", &format!("{BASE}/{id}"), None, &t).0, 404);
}

#[test]
fn a_dropped_socket_misses_nothing_after_a_reconnect_on_another_node() {
    let Some(redis) = Redis::start() else { return };
    let [a, b, c] = ["a", "b", "c"].map(|n| node(&redis, n, ""));
    let t = user("u1", "org_1");
    let ch = org_channel(&a, &t, "org_1", "u1", &["status_changed"]);
    let id = ch["channel_id"].as_str().unwrap().to_string();
    let mut s = attach(&b, &id, &t);
    let first = claim(&a, "org_1", "u1", "status_changed", 1);
    assert_eq!(s.recv_type("event")["seq"], first);
    s.close();
    let disconnected = wait_until(Duration::from_secs(10), || {
        call(&c, "GET", &format!("{BASE}/{id}"), None, &t).1["status"] == "disconnected"
    });
    assert!(disconnected, "never disconnected");
    let missed: Vec<u64> = (2..=3)
        .map(|n| claim(&c, "org_1", "u1", "status_changed", n))
        .collect();
    let (st, r) = call(&c, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(
        (st, &r["missed_events"], &r["status"]),
        (200, &json!(2), &json!("connected")),
        "{r}"
    );
    let mut again = attach(&a, &id, &t);
    assert_eq!(
        seqs(&events(&mut again, 2)),
        missed,
        "what it missed, once, in order"
    );
    // Nothing before them came twice: the next one is live.
    let live = claim(&b, "org_1", "u1", "status_changed", 4);
    assert_eq!(again.recv_type("event")["seq"], live);
}

#[test]
fn the_per_user_cap_and_visibility_hold_across_nodes() {
    let Some(redis) = Redis::start() else { return };
    let cfg = "[channels]\nmax_per_user = 2";
    let [a, b, c] = ["a", "b", "c"].map(|n| node(&redis, n, cfg));
    let t = user("u1", "org_1");
    let one = org_channel(&a, &t, "org_1", "u1", &[]);
    org_channel(&b, &t, "org_1", "u1", &[]);
    let (st, e) = call(
        &c,
        "POST",
        &format!("{BASE}/organisation"),
        Some(json!({"organisation_id": "org_1", "user_id": "u1", "event_types": []})),
        &t,
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (429, Some("LIMIT_EXCEEDED")),
        "{e}"
    );
    // Another user neither sees nor deletes it, nor attaches to it.
    let other = user("u2", "org_1");
    let id = one["channel_id"].as_str().unwrap();
    assert_eq!(
        call(&b, "GET", &format!("{BASE}/{id}"), None, &other).0,
        404
    );
    assert_eq!(
        call(&b, "DELETE", &format!("{BASE}/{id}"), None, &other).0,
        404
    );
    let mut s = Client::connect(&c, &format!("/channels/{id}?token={other}"));
    let (code, _) = s.expect_close(Duration::from_secs(5));
    assert_eq!(code, 4001);
    // Deleting one on a node makes room on another; creation order holds cluster-wide.
    assert_eq!(call(&a, "DELETE", &format!("{BASE}/{id}"), None, &t).0, 200);
    let three = org_channel(&c, &t, "org_1", "u1", &[]);
    let (_, list) = call(&a, "GET", BASE, None, &t);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert_eq!(ids[1], three["channel_id"].as_str().unwrap(), "{list}");
}

#[test]
fn a_node_that_restarts_disconnects_the_channels_its_previous_process_held() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (node(&redis, "a", ""), node(&redis, "b", ""));
    let t = user("u1", "org_1");
    let ch = org_channel(&b, &t, "org_1", "u1", &["status_changed"]);
    let id = ch["channel_id"].as_str().unwrap().to_string();
    let mut s = attach(&a, &id, &t);
    let first = claim(&b, "org_1", "u1", "status_changed", 1);
    assert_eq!(s.recv_type("event")["seq"], first);
    a.kill();
    // Its socket died with it: still `connected` in Redis until the node comes back.
    a.spawn(&[]);
    wait_ready(&a);
    let (_, d) = call(&b, "GET", &format!("{BASE}/{id}"), None, &t);
    assert_eq!(d["status"], "disconnected", "{d}");
    let missed = claim(&b, "org_1", "u1", "status_changed", 2);
    let (_, r) = call(&a, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(r["missed_events"], 1, "{r}");
    let mut again = attach(&b, &id, &t);
    // `first` again only if the dead socket's write was not reported before the kill.
    let mut got = vec![again.recv_type("event")["seq"].as_u64().unwrap()];
    if got[0] == first {
        got.push(again.recv_type("event")["seq"].as_u64().unwrap());
    }
    assert_eq!(*got.last().unwrap(), missed, "{got:?}");
}

#[test]
fn a_socket_that_closes_while_redis_is_away_disconnects_its_channel_once_back() {
    let Some(redis) = Redis::start() else { return };
    let proxy = common::proxy::Proxy::start(redis.port);
    let a = node(&redis, "a", "");
    let b = cluster_node_at(
        &format!("redis://127.0.0.1:{}", proxy.port),
        "b",
        "[delivery]\nbatch_ms = 0",
    );
    let t = user("u1", "org_1");
    let ch = org_channel(&a, &t, "org_1", "u1", &["status_changed"]);
    let id = ch["channel_id"].as_str().unwrap().to_string();
    let mut s = attach(&b, &id, &t);
    // Attached as far as Redis knows: it gets the channel's events.
    let first = claim(&a, "org_1", "u1", "status_changed", 0);
    assert_eq!(s.recv_type("event")["seq"], first);
    proxy.cut();
    assert!(wait_until(Duration::from_secs(15), || {
        b.try_http("GET", "/readyz", None, &[]).map(|r| r.0) == Some(503)
    }));
    s.close();
    // Redis never heard of the close while the link was cut: the channel is still
    // `connected` there until b is back.
    proxy.restore();
    wait_ready(&b);
    let disconnected = wait_until(Duration::from_secs(10), || {
        call(&a, "GET", &format!("{BASE}/{id}"), None, &t).1["status"] == "disconnected"
    });
    assert!(
        disconnected,
        "the close was never told to Redis: {}",
        b.log()
    );
    claim(&a, "org_1", "u1", "status_changed", 1);
    let (_, r) = call(&a, "PUT", &format!("{BASE}/{id}/reconnect"), None, &t);
    assert_eq!(r["missed_events"], 1, "{r}");
}
