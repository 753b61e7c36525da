//! Live queries (PROTOCOL.md §7) against the real server: creation, initial pages,
//! incremental messages, the cap, destroy, errors, writes racing creation, and what
//! overflow does to a slow consumer's view.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A client's view of a live query, built from the messages as the contract says.
#[derive(Default, Debug)]
struct View {
    nodes: BTreeMap<String, Value>,
    loaded: bool,
    created: Vec<Value>,
    pages: usize,
    warnings: usize,
}

impl View {
    fn apply(&mut self, m: &Value) {
        match m["type"].as_str().unwrap() {
            "liveQueryCreated" => {
                // A second one (after an overflow) starts the view over.
                self.nodes.clear();
                self.loaded = false;
                self.created.push(m.clone());
            }
            "liveQueryData" => {
                for n in m["data"].as_array().unwrap() {
                    self.nodes
                        .insert(n["id"].as_str().unwrap().into(), n.clone());
                }
                self.pages += 1;
                if m["hasMore"] == false {
                    self.loaded = true;
                }
            }
            "liveQueryAddedNode" | "liveQueryUpdatedNode" => {
                assert!(self.loaded, "incremental before the initial load: {m}");
                self.nodes
                    .insert(m["nodeId"].as_str().unwrap().into(), m["data"].clone());
            }
            "liveQueryRemovedNode" => {
                assert!(
                    self.nodes.remove(m["nodeId"].as_str().unwrap()).is_some(),
                    "{m}"
                );
            }
            "warning" => {
                assert_eq!(m["code"], "QUEUE_OVERFLOW");
                assert_eq!(m["liveQueryId"], "lq");
                self.warnings += 1;
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
}

fn list_ids(s: &Server, c: &str, filter: &str) -> BTreeMap<String, Value> {
    let (st, p) = s.http(
        "GET",
        &format!(
            "/api/v1/entities/{c}?limit=1000&filter={}",
            filter
                .replace(' ', "%20")
                .replace('\'', "%27")
                .replace('=', "%3D")
        ),
        None,
        Some(&apikey()),
    );
    assert_eq!(st, 200, "{p}");
    p["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

#[test]
fn initial_pages_then_added_updated_removed() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[live_query]\npage = 2");
    for i in 0..5 {
        s.put_entity(
            "orders",
            &format!("o{i}"),
            json!({"status": "processing", "createdAt": i}),
        );
    }
    s.put_entity("orders", "x", json!({"status": "done", "createdAt": 100}));
    let mut c = Client::authed(&s, &token("u", "user", &["orders"]), "");
    c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {
        "edge": "orders", "filter": "status == 'processing'", "orderBy": "createdAt desc", "limit": 500}}));
    let created = c.recv();
    assert_eq!(
        created,
        json!({"type": "liveQueryCreated", "id": "lq", "totalCount": 5, "capped": false})
    );
    let mut order = Vec::new();
    let mut more = true;
    let mut pages = 0;
    while more {
        let d = c.recv();
        assert_eq!(d["type"], "liveQueryData", "{d}");
        assert_eq!(d["capped"], false);
        more = d["hasMore"].as_bool().unwrap();
        for n in d["data"].as_array().unwrap() {
            order.push(n["createdAt"].as_i64().unwrap());
        }
        pages += 1;
    }
    assert_eq!(pages, 3, "pages of live_query.page");
    assert_eq!(order, [4, 3, 2, 1, 0], "orderBy createdAt desc");
    s.put_entity(
        "orders",
        "o9",
        json!({"status": "processing", "createdAt": 9}),
    );
    let m = c.recv();
    assert_eq!(
        (m["type"].as_str(), m["nodeId"].as_str()),
        (Some("liveQueryAddedNode"), Some("o9"))
    );
    assert_eq!(
        m["data"],
        json!({"status": "processing", "createdAt": 9, "id": "o9"})
    );
    s.put_entity(
        "orders",
        "o1",
        json!({"status": "processing", "createdAt": 1, "note": "x"}),
    );
    let m = c.recv();
    assert_eq!(
        (m["type"].as_str(), m["nodeId"].as_str()),
        (Some("liveQueryUpdatedNode"), Some("o1"))
    );
    assert_eq!(m["data"]["note"], "x");
    s.put_entity("orders", "o2", json!({"status": "done", "createdAt": 2}));
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryRemovedNode", "id": "lq", "nodeId": "o2"})
    );
    s.delete_entity("orders", "o3");
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryRemovedNode", "id": "lq", "nodeId": "o3"})
    );
    // A second query, on a marker only: what it is sent after a write proves what the
    // first one was not sent (a connection's messages follow the writes' order).
    c.send(&json!({"type": "createLiveQuery", "id": "mark", "query": {
        "edge": "orders", "filter": "marker == true"}}));
    c.recv_type("liveQueryCreated");
    assert_eq!(c.recv_type("liveQueryData")["data"], json!([]));
    // A write outside the query is nothing; destroy ends it.
    s.put_entity("orders", "x", json!({"status": "done", "createdAt": 101}));
    c.send(&json!({"type": "destroyLiveQuery", "id": "lq", "requestId": "d"}));
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryDestroyed", "id": "lq", "requestId": "d"})
    );
    s.put_entity(
        "orders",
        "o4",
        json!({"status": "processing", "createdAt": 4, "after": true}),
    );
    s.put_entity("orders", "m", json!({"marker": true}));
    let m = c.recv();
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str(), m["nodeId"].as_str()),
        (Some("liveQueryAddedNode"), Some("mark"), Some("m")),
        "nothing for the destroyed query before the marker: {m}"
    );
}

#[test]
fn cap_limits_the_tracked_set() {
    let s = Server::start("[delivery]\nbatch_ms = 0\n[live_query]\ncap = 3");
    for i in 0..5 {
        s.put_entity("c", &format!("e{i}"), json!({"n": i}));
    }
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "c", "orderBy": "n", "limit": 10}}));
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryCreated", "id": "lq", "totalCount": 5, "capped": true})
    );
    let d = c.recv();
    assert_eq!(d["capped"], true);
    let ids: Vec<&str> = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e0", "e1", "e2"]);
    // At the cap, a new match is not added; after a removal, it is.
    s.put_entity("c", "e9", json!({"n": 9}));
    s.delete_entity("c", "e1");
    assert_eq!(c.recv()["type"], "liveQueryRemovedNode");
    s.put_entity("c", "e8", json!({"n": 8}));
    let m = c.recv();
    assert_eq!(
        (m["type"].as_str(), m["nodeId"].as_str()),
        (Some("liveQueryAddedNode"), Some("e8"))
    );
    // limit below the cap: the tracked set is the first `limit` nodes by orderBy.
    c.send(&json!({"type": "createLiveQuery", "id": "two", "query": {"edge": "c", "orderBy": "n desc", "limit": 2}}));
    let m = c.recv();
    // e0 e2 e3 e4 e8 e9.
    assert_eq!(
        (m["totalCount"].as_i64(), m["capped"].as_bool()),
        (Some(6), Some(true)),
        "{m}"
    );
    let d = c.recv();
    assert_eq!(
        (d["type"].as_str(), d["id"].as_str(), d["hasMore"].as_bool()),
        (Some("liveQueryData"), Some("two"), Some(false)),
        "{d}"
    );
    let ids: Vec<&str> = d["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e9", "e8"], "the first 2 by n desc");
}

#[test]
fn bad_live_queries() {
    let s = Server::start("[limits]\nmax_live_queries = 2");
    let mut c = Client::authed(&s, &token("u", "user", &["orders", "other"]), "");
    let cases = [
        (
            json!({"type": "createLiveQuery", "query": {"edge": "orders"}}),
            "BAD_MESSAGE",
            "'id'",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a"}),
            "BAD_MESSAGE",
            "query",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {}}),
            "BAD_MESSAGE",
            "edge",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "orders", "filter": "x =="}}),
            "INVALID_FILTER",
            "at byte",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "orders", "orderBy": "x up"}}),
            "INVALID_FILTER",
            "at byte",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "orders", "limit": 0}}),
            "BAD_MESSAGE",
            "limit",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "orders", "colour": 1}}),
            "BAD_MESSAGE",
            "colour",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "secret"}}),
            "FORBIDDEN",
            "scopes",
        ),
        (
            json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "a/b"}}),
            "INVALID_PATH",
            "segment",
        ),
        (
            json!({"type": "destroyLiveQuery", "id": "nope"}),
            "NOT_FOUND",
            "nope",
        ),
        (json!({"type": "destroyLiveQuery"}), "BAD_MESSAGE", "id"),
    ];
    for (msg, code, says) in cases {
        c.send(&msg);
        let e = c.recv_type("error");
        let m = assert_error(&e, code);
        assert!(m.contains(says), "{msg}: '{m}' should say '{says}'");
    }
    // An unknown edge is an empty result, not an error.
    c.send(&json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "other"}}));
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryCreated", "id": "a", "totalCount": 0, "capped": false})
    );
    assert_eq!(
        c.recv(),
        json!({"type": "liveQueryData", "id": "a", "data": [], "hasMore": false, "capped": false})
    );
    // A reused id, and the limit.
    c.send(&json!({"type": "createLiveQuery", "id": "a", "query": {"edge": "other"}}));
    assert!(assert_error(&c.recv_type("error"), "BAD_MESSAGE").contains("exists"));
    c.send(&json!({"type": "createLiveQuery", "id": "b", "query": {"edge": "other"}}));
    c.recv_type("liveQueryCreated");
    c.recv_type("liveQueryData");
    c.send(&json!({"type": "createLiveQuery", "id": "c", "query": {"edge": "other"}}));
    assert_error(&c.recv_type("error"), "LIMIT_EXCEEDED");
}

/// Writes race the creation: whatever interleaving, the client's view (initial pages
/// plus incremental messages) ends equal to a list with the same filter. The race is
/// asserted, not hoped for: each query's initial pages hold states the writer wrote
/// (`v` > 0) and its incremental messages carry later ones, so the writer was writing
/// on both sides of the creation.
#[test]
fn writes_racing_creation_end_in_the_right_view() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = Server::start("[delivery]\nbatch_ms = 0");
    for i in 0..200 {
        s.put_entity("race", &format!("e{i}"), json!({"hot": i % 2 == 0, "v": 0}));
    }
    let tok = token("u", "user", &["race"]);
    let written = AtomicU64::new(0);
    let loaded = AtomicBool::new(false);
    std::thread::scope(|sc| {
        // Writes until every query has its initial data, then 100 more (bounded).
        let writer = sc.spawn(|| {
            let mut extra = 0;
            for k in 0..20_000u64 {
                let i = (k * 37) % 250;
                s.put_entity(
                    "race",
                    &format!("e{i}"),
                    json!({"hot": k % 3 != 0, "v": k + 1}),
                );
                if k % 50 == 0 {
                    let path = format!("/api/v1/entities/race/e{}", (k * 11) % 250);
                    let (st, a) = s.http("DELETE", &path, None, Some(&apikey()));
                    // Deleted already (404) is fine: the write loop may not have revived it.
                    assert!(st == 200 || st == 404, "DELETE {path}: {st} {a}");
                }
                written.store(k + 1, Ordering::SeqCst);
                if loaded.load(Ordering::SeqCst) {
                    extra += 1;
                    if extra == 100 {
                        break;
                    }
                }
            }
        });
        let mut clients = Vec::new();
        for q in 0..3u64 {
            // Each creation lands a little further into the writing.
            assert!(wait_until(Duration::from_secs(20), || {
                written.load(Ordering::SeqCst) >= 50 * (q + 1)
            }));
            let mut c = Client::authed(&s, &tok, "");
            c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "race", "filter": "hot", "limit": 1000}}));
            clients.push((q, c));
        }
        // Each query's initial data, while the writer goes on.
        let mut views = Vec::new();
        for (q, c) in clients.iter_mut() {
            let mut v = View::default();
            while !v.loaded {
                v.apply(&c.recv());
            }
            let before = v
                .nodes
                .values()
                .filter(|n| n["v"].as_u64() > Some(0))
                .count();
            assert!(
                before > 0,
                "client {q}: the writer had not written before creation"
            );
            views.push(v);
        }
        loaded.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        // A marker write the query sees: once it arrives, everything before it has.
        s.put_entity("race", "marker", json!({"hot": true}));
        let want = list_ids(&s, "race", "hot");
        for ((q, mut c), mut v) in clients.into_iter().zip(views) {
            let mut incremental = 0;
            loop {
                let m = c.recv_within(Duration::from_secs(10)).expect("message");
                v.apply(&m);
                if m["nodeId"] == "marker" {
                    break;
                }
                incremental += 1;
            }
            assert!(
                incremental > 0,
                "client {q}: no write came after the creation"
            );
            assert_eq!(v.nodes, want, "client {q}");
        }
    });
}

/// A slow consumer whose ring overflows: the query is warned, loaded again, and the
/// view it ends with is still right.
#[test]
fn overflow_reloads_the_view() {
    let s = Server::start("shards = 1\n[delivery]\nqueue_capacity = 16\nbatch_ms = 0");
    for i in 0..20 {
        s.put_entity("big", &format!("e{i}"), json!({"v": 0}));
    }
    let tok = token("u", "user", &["*"]);
    let mut c = Client::slow_reader(&s, &tok);
    c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "big"}}));
    let mut v = View::default();
    while !v.loaded {
        let m = c.recv();
        v.apply(&m);
    }
    // Not reading while big updates pile up: the socket fills, the ring overflows.
    let pad = "x".repeat(16 * 1024);
    for k in 1..=300u64 {
        let i = k % 20;
        s.put_entity("big", &format!("e{i}"), json!({"v": k, "pad": pad}));
    }
    s.put_entity("big", "marker", json!({"v": 0}));
    loop {
        let m = c.recv_within(Duration::from_secs(10)).expect("message");
        v.apply(&m);
        if m["nodeId"] == "marker" || (v.loaded && v.nodes.contains_key("marker")) {
            break;
        }
    }
    assert!(
        v.warnings > 0,
        "the ring never overflowed; make the test harder"
    );
    assert!(v.created.len() >= 2, "loaded again after the warning");
    let want = list_ids(&s, "big", "v >= 0");
    assert_eq!(
        v.nodes.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert_eq!(v.nodes, want);
}

/// Two live queries of one connection on a collection, made with another connection's in
/// between: one write gives each query exactly one message (the connection is visited
/// once per write, not once per registration).
#[test]
fn one_message_per_query_whatever_the_creation_order() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    s.put_entity("c", "e1", json!({"n": 1}));
    let tok = token("u", "user", &["*"]);
    let mut a = Client::authed(&s, &tok, "");
    let mut b = Client::authed(&s, &tok, "");
    let create = |c: &mut Client, id: &str| {
        c.send(&json!({"type": "createLiveQuery", "id": id, "query": {"edge": "c"}}));
        c.recv_type("liveQueryCreated");
        c.recv_type("liveQueryData");
    };
    create(&mut a, "one");
    create(&mut b, "other");
    create(&mut a, "two");
    s.put_entity("c", "e1", json!({"n": 2}));
    let mut got: Vec<String> = (0..2)
        .map(|_| {
            let m = a.recv_type("liveQueryUpdatedNode");
            m["id"].as_str().unwrap().to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["one", "two"]);
    // Nothing more for this write: the next messages are those of a later write (one
    // per query again), which the connection gets in write order.
    s.put_entity("c", "e2", json!({"n": 3}));
    let mut got: Vec<(String, String)> = (0..2)
        .map(|_| {
            let m = a.recv();
            assert_eq!(m["type"], "liveQueryAddedNode", "{m}");
            (
                m["id"].as_str().unwrap().to_string(),
                m["nodeId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("one".to_string(), "e2".to_string()),
            ("two".to_string(), "e2".to_string())
        ]
    );
    assert_eq!(b.recv_type("liveQueryUpdatedNode")["id"], "other");
}

/// Writes `n` entities `{collection}/e{i}` with bodies `body(i)`: pipelined `PUT`s on a
/// few keep-alive connections (one by one would take minutes).
fn seed(s: &Server, collection: &str, n: usize, body: impl Fn(usize) -> Value + Sync) {
    use std::io::{Read, Write};
    const CONNS: usize = 4;
    const CHUNK: usize = 500;
    std::thread::scope(|sc| {
        for c in 0..CONNS {
            let body = &body;
            sc.spawn(move || {
                let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let ids: Vec<usize> = (c..n).step_by(CONNS).collect();
                for chunk in ids.chunks(CHUNK) {
                    let mut req = Vec::new();
                    for &i in chunk {
                        let b = serde_json::to_vec(&body(i)).unwrap();
                        req.extend_from_slice(
                            format!(
                                "PUT /api/v1/entities/{collection}/e{i} HTTP/1.1\r\nHost: t\r\n\
                                 Authorization: {}\r\nContent-Type: application/json\r\n\
                                 Content-Length: {}\r\n\r\n",
                                apikey(),
                                b.len()
                            )
                            .as_bytes(),
                        );
                        req.extend_from_slice(&b);
                    }
                    sock.write_all(&req).unwrap();
                    // Every answer is `200` (a body holds no status line).
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let text = String::from_utf8_lossy(&got);
                        let answers = text.matches("HTTP/1.1 ").count();
                        let ok = text.matches("HTTP/1.1 200 ").count();
                        assert_eq!(answers, ok, "a seeding PUT failed: {text}");
                        if ok == chunk.len() && text.ends_with('}') {
                            break;
                        }
                        let r = sock.read(&mut buf).expect("seeding answers");
                        assert!(r > 0, "the server closed a seeding connection");
                        got.extend_from_slice(&buf[..r]);
                    }
                }
            });
        }
    });
}

/// A live query's initial data as received: `liveQueryCreated` and the nodes of its
/// pages, in order (a query's pages follow its `liveQueryCreated` with nothing of another
/// query between; queries loaded together may finish in any order).
fn read_initial(c: &mut Client, id: &str) -> (Value, Vec<Value>) {
    let created = c.recv_type("liveQueryCreated");
    assert_eq!(created["id"], id, "{created}");
    read_pages(c, created)
}

fn read_pages(c: &mut Client, created: Value) -> (Value, Vec<Value>) {
    let id = created["id"].clone();
    let mut nodes = Vec::new();
    loop {
        let d = c.recv_type("liveQueryData");
        assert_eq!(d["id"], id, "{d}");
        nodes.extend(d["data"].as_array().unwrap().iter().cloned());
        if d["hasMore"] == false {
            return (created, nodes);
        }
    }
}

/// Live queries over 60k entities load off the shard (issue 21: no shard stalls): an
/// event published after the creations were sent reaches the creating connection before
/// the last query's data (when the shard loaded them on its own thread, every page was
/// written before it could take the publication in) and another connection of the same
/// shard gets it too; each query's data is whole.
#[test]
fn loads_over_a_big_collection_do_not_hold_the_shard() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    const N: usize = 60_000;
    seed(&s, "big", N, |i| json!({"n": i, "v": 0}));
    let tok = token("u", "user", &["*"]);
    let mut b = Client::authed(&s, &tok, "");
    b.subscribe(json!([{"id": "news", "path": "news"}]));
    let mut a = Client::authed(&s, &tok, "");
    a.subscribe(json!([{"id": "news", "path": "news"}]));
    const QUERIES: usize = 8;
    for q in 0..QUERIES {
        a.send(
            &json!({"type": "createLiveQuery", "id": format!("lq{q}"), "query": {
            "edge": "big", "filter": "n >= 0", "orderBy": "n desc", "limit": 1000}}),
        );
    }
    s.publish("news", "flash", json!({"k": 1}));
    assert_eq!(b.recv_type("event")["data"], json!({"k": 1}));
    // On the creating connection: which queries had their data when the event came.
    let mut results = Vec::new();
    let mut loaded_before_event = None;
    while results.len() < QUERIES || loaded_before_event.is_none() {
        let m = a.recv();
        match m["type"].as_str() {
            Some("event") => loaded_before_event = Some(results.len()),
            Some("liveQueryCreated") => results.push(read_pages(&mut a, m)),
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(
        loaded_before_event < Some(QUERIES),
        "the event came after every query's data: the loads held the shard"
    );
    let mut ids: Vec<String> = results
        .iter()
        .map(|(c, _)| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..QUERIES).map(|q| format!("lq{q}")).collect::<Vec<_>>()
    );
    for (created, nodes) in results {
        assert_eq!(created["totalCount"], N as u64, "{created}");
        assert_eq!(created["capped"], true);
        let ns: Vec<u64> = nodes.iter().map(|n| n["n"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (0..1000).map(|k| (N - 1 - k) as u64).collect();
        assert_eq!(ns, want, "the top 1000 by n desc");
    }
}

/// Writes racing the load of a query over a big collection: its data, then every later
/// change exactly once and in order (each write raises `v`, so an update that came twice
/// or out of order would not raise it), ending equal to a list.
#[test]
fn writes_racing_a_big_load_arrive_once_in_order() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    const N: usize = 60_000;
    // 600 hot entities: under the cap, so the whole result is tracked.
    seed(&s, "big", N, |i| json!({"hot": i % 100 == 0, "v": 0}));
    let tok = token("u", "user", &["big"]);
    let written = AtomicU64::new(0);
    let loaded = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            let mut extra = 0;
            for k in 1..=5_000u64 {
                // Updates of hot entities, some turned cold, some new hot ones.
                let (id, hot) = match k % 10 {
                    0 => (format!("new{k}"), true),
                    5 => (format!("e{}", (k * 700) % N as u64), false),
                    _ => (format!("e{}", ((k * 37) % 600) * 100), true),
                };
                s.put_entity("big", &id, json!({"hot": hot, "v": k}));
                written.store(k, Ordering::SeqCst);
                if loaded.load(Ordering::SeqCst) {
                    extra += 1;
                    if extra == 50 {
                        break;
                    }
                }
            }
        });
        assert!(wait_until(Duration::from_secs(20), || {
            written.load(Ordering::SeqCst) >= 20
        }));
        let mut c = Client::authed(&s, &tok, "");
        c.send(&json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "big", "filter": "hot", "limit": 1000}}));
        let mut v = View::default();
        while !v.loaded {
            v.apply(&c.recv());
        }
        assert!(
            v.nodes.values().any(|n| n["v"].as_u64() > Some(0)),
            "the writer had not written before the creation"
        );
        loaded.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        s.put_entity("big", "marker", json!({"hot": true, "v": u64::MAX / 2}));
        let mut incremental = 0;
        loop {
            let m = c.recv_within(Duration::from_secs(10)).expect("message");
            if m["type"] == "liveQueryUpdatedNode" {
                let id = m["nodeId"].as_str().unwrap();
                let before = v.nodes[id]["v"].as_u64().unwrap();
                let after = m["data"]["v"].as_u64().unwrap();
                assert!(after > before, "{id}: v {before} then {after}: {m}");
            }
            v.apply(&m);
            if m["nodeId"] == "marker" {
                break;
            }
            incremental += 1;
        }
        assert!(incremental > 0, "no write came after the load");
        assert_eq!(v.created.len(), 1);
        assert_eq!(v.nodes, list_ids(&s, "big", "hot"));
    });
}

/// A query destroyed while it loads gets `liveQueryDestroyed` and nothing else: its
/// result, when it comes, is dropped (the same id made again gets exactly one result);
/// a connection closed while its queries load leaves nothing registered.
#[test]
fn destroy_or_close_while_loading() {
    let s = Server::start("shards = 1\n[delivery]\nbatch_ms = 0");
    seed(&s, "big", 40_000, |i| json!({"n": i}));
    let tok = token("u", "user", &["*"]);
    let mut c = Client::authed(&s, &tok, "");
    // A scan of every entity, 10 of them in the result (under the cap: a new match is added).
    let create = json!({"type": "createLiveQuery", "id": "lq", "query": {"edge": "big", "filter": "n >= 39990", "orderBy": "n desc"}});
    c.send(&create);
    c.send(&json!({"type": "destroyLiveQuery", "id": "lq", "requestId": "d"}));
    let m = c.recv();
    assert_eq!(m["type"], "liveQueryDestroyed", "before its data: {m}");
    c.send(&create);
    let (created, nodes) = read_initial(&mut c, "lq");
    assert_eq!(created["totalCount"], 10);
    assert_eq!(nodes.len(), 10);
    s.put_entity("big", "marker", json!({"n": 1_000_000}));
    // Nothing of the destroyed load came between: the next message is the marker.
    let m = c.recv();
    assert_eq!(
        (m["type"].as_str(), m["nodeId"].as_str()),
        (Some("liveQueryAddedNode"), Some("marker")),
        "{m}"
    );
    assert_eq!(s.metric("shardcast_live_queries"), Some(1.0));

    // Closed while loading: nothing stays registered, and the shard goes on.
    let mut d = Client::authed(&s, &tok, "");
    for q in 0..4 {
        d.send(&json!({"type": "createLiveQuery", "id": format!("q{q}"), "query": {"edge": "big", "orderBy": "n desc"}}));
    }
    d.close();
    assert!(
        wait_until(Duration::from_secs(10), || s
            .metric("shardcast_live_queries")
            == Some(1.0)),
        "the closed connection's queries are still counted"
    );
    s.put_entity("big", "marker2", json!({"n": 1_000_001}));
    let m = c.recv();
    assert_eq!(m["nodeId"], "marker2", "{m}");
}
