//! Entities (PROTOCOL.md §8) against the real server: the REST API, durability across
//! `kill -9`, `seq` across restarts, list paging while writes run, and every bad input
//! of the entities issue.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn put(s: &Server, c: &str, id: &str, body: Value) -> (u16, Value) {
    s.http(
        "PUT",
        &format!("/api/v1/entities/{c}/{id}"),
        Some(&body),
        Some(&apikey()),
    )
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    s.http("GET", path, None, Some(&apikey()))
}

#[test]
fn crud_with_ops_seqs_and_shapes() {
    let s = Server::start("");
    let (st, a) = put(&s, "orders", "o1", json!({"status": "open", "n": 1}));
    assert_eq!((st, &a["op"]), (200, &json!("created")), "{a}");
    let (st, b) = put(
        &s,
        "orders",
        "o1",
        json!({"status": "open", "n": 2, "id": "o1"}),
    );
    assert_eq!((st, &b["op"]), (200, &json!("updated")), "{b}");
    assert!(b["seq"].as_u64() > a["seq"].as_u64());
    let (st, p) = s.http(
        "PATCH",
        "/api/v1/entities/orders/o1",
        Some(&json!({"status": "done", "n": null, "tags": {"x": 1}})),
        Some(&apikey()),
    );
    assert_eq!((st, &p["op"]), (200, &json!("updated")), "{p}");
    let (st, e) = get(&s, "/api/v1/entities/orders/o1");
    assert_eq!(st, 200);
    assert_eq!(e, json!({"status": "done", "id": "o1", "tags": {"x": 1}}));
    let (st, d) = s.http(
        "DELETE",
        "/api/v1/entities/orders/o1",
        None,
        Some(&apikey()),
    );
    assert_eq!((st, &d["op"]), (200, &json!("deleted")), "{d}");
    assert!(d["seq"].as_u64() > p["seq"].as_u64());
    let (st, e) = get(&s, "/api/v1/entities/orders/o1");
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "NOT_FOUND");
}

#[test]
fn writes_are_events_in_commit_order() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["orders"]), "");
    c.subscribe(json!([{"id": "all", "path": "orders"}]));
    let (_, a) = put(&s, "orders", "o1", json!({"v": 1}));
    let (_, b) = s.http(
        "PATCH",
        "/api/v1/entities/orders/o1",
        Some(&json!({"w": 2})),
        Some(&apikey()),
    );
    let (_, d) = s.http(
        "DELETE",
        "/api/v1/entities/orders/o1",
        None,
        Some(&apikey()),
    );
    for (answer, op, data) in [
        (a, "created", json!({"v": 1, "id": "o1"})),
        (b.clone(), "updated", json!({"v": 1, "w": 2, "id": "o1"})),
        (d, "deleted", json!({"v": 1, "w": 2, "id": "o1"})),
    ] {
        let e = c.recv_type("event");
        assert_eq!(e["eventType"], op);
        assert_eq!(e["path"], "orders/o1");
        assert_eq!(e["seq"], answer["seq"]);
        assert_eq!(e["data"], data, "{e}");
    }
}

/// Concurrent writers on several connections: every answered seq is unique, and the
/// events arrive in seq order with the state each answer implies.
#[test]
fn concurrent_writes_get_distinct_ordered_seqs() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let mut c = Client::authed(&s, &token("u", "user", &["*"]), "");
    c.subscribe(json!([{"id": "all", "path": "k"}]));
    let seqs: Vec<u64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let (st, a) = put(s, "k", &format!("t{t}"), json!({"i": i}));
                            assert_eq!(st, 200, "{a}");
                            a["seq"].as_u64().unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 100);
    let mut prev = 0;
    let mut last_i: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..100 {
        let e = c.recv_type("event");
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > prev && unique.contains(&seq), "{seq} after {prev}");
        prev = seq;
        let id = e["data"]["id"].as_str().unwrap().to_string();
        let i = e["data"]["i"].as_i64().unwrap();
        // Each writer's writes are sequential, so its entity's i only grows.
        assert!(last_i.get(&id).is_none_or(|&p| i == p + 1), "{e}");
        last_i.insert(id, i);
    }
}

#[test]
fn answered_writes_survive_kill_9_and_seq_keeps_growing() {
    let mut s = Server::start("");
    let mut answered = Vec::new();
    for i in 0..200 {
        let (st, a) = put(&s, "docs", &format!("d{i}"), json!({"i": i}));
        assert_eq!(st, 200);
        answered.push(a["seq"].as_u64().unwrap());
    }
    let (st, _) = s.http("DELETE", "/api/v1/entities/docs/d0", None, Some(&apikey()));
    assert_eq!(st, 200);
    let max_before = s.publish("x", "e", json!(1));
    s.kill();
    s.spawn(&[]);
    for i in 1..200 {
        let (st, e) = get(&s, &format!("/api/v1/entities/docs/d{i}"));
        assert_eq!(st, 200, "d{i} lost after kill -9");
        assert_eq!(e, json!({"i": i, "id": format!("d{i}")}));
    }
    assert_eq!(
        get(&s, "/api/v1/entities/docs/d0").0,
        404,
        "the delete survives too"
    );
    let (_, page) = get(&s, "/api/v1/entities/docs?limit=1000");
    assert_eq!(page["totalCount"], 199);
    // seq never goes back: a new write and a new publication are above everything
    // handed out before the crash.
    let (_, a) = put(&s, "docs", "new", json!({}));
    assert!(
        a["seq"].as_u64().unwrap() > max_before,
        "{a} vs {max_before}"
    );
    assert!(s.publish("x", "e", json!(2)) > max_before);
}

#[test]
fn list_filter_order_limit_cursor() {
    let s = Server::start("");
    for i in 0..30 {
        put(
            &s,
            "items",
            &format!("i{i:02}"),
            json!({"n": i % 10, "kind": if i % 3 == 0 { "a" } else { "b" }}),
        );
    }
    let (st, p) = get(
        &s,
        "/api/v1/entities/items?filter=kind%20%3D%3D%20%27a%27&orderBy=n%20desc&limit=4",
    );
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["totalCount"], 10);
    let ns: Vec<i64> = p["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [9, 8, 7, 6]);
    // Pages follow each other until nextCursor is null, each entity once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            None => "/api/v1/entities/items?orderBy=n,id&limit=7".to_string(),
            Some(c) => format!("/api/v1/entities/items?orderBy=n,id&limit=7&cursor={c}"),
        };
        let (st, p) = get(&s, &q);
        assert_eq!(st, 200, "{p}");
        assert_eq!(p["totalCount"], 30);
        for e in p["data"].as_array().unwrap() {
            seen.push((
                e["n"].as_i64().unwrap(),
                e["id"].as_str().unwrap().to_string(),
            ));
        }
        match p["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "in order");
    assert_eq!(seen.len(), 30);
    // An unknown collection is an empty list, not an error.
    let (st, p) = get(&s, "/api/v1/entities/nothing");
    assert_eq!(
        (st, p),
        (
            200,
            json!({"data": [], "totalCount": 0, "nextCursor": null})
        )
    );
}

/// Paging while others write: an entity that is not changed during the walk is returned
/// exactly once, never skipped, never twice. The writes are asserted to land between
/// the walk's pages, not only around it.
#[test]
fn paging_while_writes_run_never_skips_or_repeats_an_unchanged_entity() {
    let s = Server::start("");
    for i in 0..120 {
        put(
            &s,
            "p",
            &format!("e{i:03}"),
            json!({"rank": i, "stable": i % 2 == 0}),
        );
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = AtomicBool::new(false);
    // Writer iterations completed.
    let written = AtomicU64::new(0);
    std::thread::scope(|sc| {
        // Odd entities move around in the order and new ones appear (fewer, so that the
        // walk still ends); even ones stay.
        sc.spawn(|| {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) && k < 2000 {
                let i = (k * 7 % 60) * 2 + 1;
                put(
                    &s,
                    "p",
                    &format!("e{i:03}"),
                    json!({"rank": (k * 13) % 200, "stable": false}),
                );
                if k.is_multiple_of(10) {
                    put(
                        &s,
                        "p",
                        &format!("new{k}"),
                        json!({"rank": (k * 31) % 200, "stable": false}),
                    );
                }
                k += 1;
                written.store(k, Ordering::SeqCst);
            }
        });
        assert!(wait_until(Duration::from_secs(10), || written
            .load(Ordering::SeqCst)
            > 0));
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        // Writer progress after each page.
        let mut progress = Vec::new();
        loop {
            let q = match &cursor {
                None => "/api/v1/entities/p?orderBy=rank&limit=9".to_string(),
                Some(c) => format!("/api/v1/entities/p?orderBy=rank&limit=9&cursor={c}"),
            };
            let (st, p) = get(&s, &q);
            assert_eq!(st, 200, "{p}");
            for e in p["data"].as_array().unwrap() {
                if e["stable"] == true {
                    seen.push(e["id"].as_str().unwrap().to_string());
                }
            }
            progress.push(written.load(Ordering::SeqCst));
            // Let a third of the moving entities move before the next page: a page that
            // ends on one of them then resumes from where it was, not where it went.
            let at = written.load(Ordering::SeqCst);
            wait_until(Duration::from_secs(5), || {
                written.load(Ordering::SeqCst) >= at + 20
            });
            match p["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (first, last) = (progress[0], *progress.last().unwrap());
        assert!(
            last > first && last < 2000,
            "the writer was not writing between the first and the last page: {progress:?}"
        );
        let want: Vec<String> = (0..120).step_by(2).map(|i| format!("e{i:03}")).collect();
        assert_eq!(seen, want, "every unchanged entity once, in order");
    });
}

#[test]
fn bad_input_is_refused_and_never_half_applies() {
    let s = Server::start("[limits]\nmax_http_body_bytes = 4096");
    put(&s, "c", "e1", json!({"a": 1}));
    // (method, path, body, status, code, what the message says)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/api/v1/entities/c/e2",
            Some("[1,2]"),
            400,
            "BAD_MESSAGE",
            "JSON object",
        ),
        (
            "PUT",
            "/api/v1/entities/c/e2",
            Some("\"x\""),
            400,
            "BAD_MESSAGE",
            "JSON object",
        ),
        (
            "PUT",
            "/api/v1/entities/c/e2",
            Some("{nope"),
            400,
            "BAD_MESSAGE",
            "not JSON",
        ),
        (
            "PUT",
            "/api/v1/entities/c/e2",
            Some(r#"{"id":"other"}"#),
            400,
            "BAD_MESSAGE",
            "path's id",
        ),
        (
            "PATCH",
            "/api/v1/entities/c/e1",
            Some(r#"{"id":"e9"}"#),
            400,
            "BAD_MESSAGE",
            "path's id",
        ),
        (
            "PATCH",
            "/api/v1/entities/c/e1",
            Some("null"),
            400,
            "BAD_MESSAGE",
            "JSON object",
        ),
        (
            "PATCH",
            "/api/v1/entities/c/missing",
            Some("{}"),
            404,
            "NOT_FOUND",
            "missing",
        ),
        (
            "DELETE",
            "/api/v1/entities/c/missing",
            None,
            404,
            "NOT_FOUND",
            "missing",
        ),
        (
            "PUT",
            "/api/v1/entities/c/a%20b",
            Some("{}"),
            400,
            "INVALID_PATH",
            "segment",
        ),
        (
            "PUT",
            "/api/v1/entities/$sys/x",
            Some("{}"),
            400,
            "INVALID_PATH",
            "segment",
        ),
        (
            "PUT",
            "/api/v1/entities/c/x/y",
            Some("{}"),
            404,
            "NOT_FOUND",
            "entity paths",
        ),
        (
            "POST",
            "/api/v1/entities/c/e1",
            Some("{}"),
            405,
            "BAD_MESSAGE",
            "allowed",
        ),
        (
            "GET",
            "/api/v1/entities/c?filter=a%20%3D%3D",
            None,
            400,
            "INVALID_FILTER",
            "at byte 4",
        ),
        (
            "GET",
            "/api/v1/entities/c?orderBy=a%20sideways",
            None,
            400,
            "INVALID_FILTER",
            "at byte",
        ),
        (
            "GET",
            "/api/v1/entities/c?limit=0",
            None,
            400,
            "BAD_MESSAGE",
            "limit",
        ),
        (
            "GET",
            "/api/v1/entities/c?limit=1001",
            None,
            400,
            "BAD_MESSAGE",
            "limit",
        ),
        (
            "GET",
            "/api/v1/entities/c?limit=many",
            None,
            400,
            "BAD_MESSAGE",
            "limit",
        ),
        (
            "GET",
            "/api/v1/entities/c?cursor=forged.cursor",
            None,
            400,
            "BAD_MESSAGE",
            "cursor",
        ),
        (
            "GET",
            "/api/v1/entities/c?colour=red",
            None,
            400,
            "BAD_MESSAGE",
            "colour",
        ),
    ];
    for (method, path, body, status, code, says) in cases {
        let mut headers = vec![("Authorization", format!("apikey {API_KEY}"))];
        headers.push(("Content-Type", "application/json".into()));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (st, text) = s
            .try_http(method, path, body.map(str::as_bytes), &h)
            .unwrap();
        assert_eq!(st, status, "{method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains(says),
            "{method} {path}: '{m}' should say '{says}'"
        );
    }
    // A body over the size limit.
    let big = json!({"pad": "x".repeat(5000)});
    let (st, v) = put(&s, "c", "big", big);
    assert_eq!(st, 413, "{v}");
    // A cursor from another query.
    let (_, p) = get(&s, "/api/v1/entities/c?limit=1&orderBy=a");
    put(&s, "c", "e3", json!({"a": 3}));
    let (_, p) = match p["nextCursor"].as_str() {
        Some(_) => (0, p),
        None => get(&s, "/api/v1/entities/c?limit=1&orderBy=a"),
    };
    let cur = p["nextCursor"].as_str().expect("a second page").to_string();
    let (st, v) = get(
        &s,
        &format!("/api/v1/entities/c?limit=1&orderBy=a%20desc&cursor={cur}"),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("another query"));
    // Credentials: none, a user without the collection's scope, a user writing.
    assert_eq!(s.http("GET", "/api/v1/entities/c/e1", None, None).0, 401);
    let other = format!("Bearer {}", token("u", "user", &["elsewhere"]));
    assert_eq!(
        s.http("GET", "/api/v1/entities/c/e1", None, Some(&other)).0,
        403
    );
    let reader = format!("Bearer {}", token("u", "user", &["c"]));
    assert_eq!(
        s.http("GET", "/api/v1/entities/c/e1", None, Some(&reader))
            .0,
        200
    );
    assert_eq!(
        s.http(
            "PUT",
            "/api/v1/entities/c/e1",
            Some(&json!({})),
            Some(&reader)
        )
        .0,
        403
    );
    // Nothing of the refused writes happened.
    let (_, e1) = get(&s, "/api/v1/entities/c/e1");
    assert_eq!(e1, json!({"a": 1, "id": "e1"}));
    assert_eq!(get(&s, "/api/v1/entities/c/e2").0, 404);
    let (_, list) = get(&s, "/api/v1/entities/c");
    assert_eq!(list["totalCount"], 2);
    // The server is fine.
    assert_eq!(s.http("GET", "/healthz", None, None).0, 200);
}

/// Pipelined requests on one keep-alive connection are answered in order, also when
/// some of them wait for a group commit.
#[test]
fn pipelined_writes_are_answered_in_order() {
    use std::io::{Read, Write};
    let s = Server::start("");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reqs = Vec::new();
    for i in 0..20 {
        let body = format!("{{\"i\":{i}}}");
        let (method, path) = if i % 3 == 2 {
            ("GET", "/healthz".to_string())
        } else {
            ("PUT", format!("/api/v1/entities/pipe/e{i}"))
        };
        reqs.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: apikey {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    sock.write_all(&reqs).unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 65536];
    while got.matches("HTTP/1.1 ").count() < 20 || !got.ends_with('}') {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let bodies: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
    let mut prev = 0;
    for (i, b) in bodies.iter().enumerate() {
        if i % 3 == 2 {
            assert!(b.contains("\"status\":\"ok\""), "{i}: {b}");
        } else {
            let seq: u64 = b
                .split("\"seq\":")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(seq > prev, "in order");
            prev = seq;
        }
    }
}
