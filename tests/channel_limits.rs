//! Channel limits (PROTOCOL.md §9, docs/SECURITY.md "Channel limits"): how many channels
//! one user may own (`channels.max_per_user`), and that backlogs live in the store, not
//! in memory: the backlog cache stays bounded with many channels × events, returns to 0
//! once they are deleted, and the backlog is still delivered whole and in order after a
//! restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BASE: &str = "/api/v1/realtime-subscriptions";

/// `seq`s a channel's backlog caches in memory, at most, when no socket is attached
/// (docs/SECURITY.md, "Channel limits"): the bound the gauge is held to.
const WINDOW_SEQS: f64 = 64.0;

fn user(sub: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "user", "scopes": ["jobs"], "exp": now() + 3600}),
        SECRET,
    )
}

fn admin(sub: &str) -> String {
    token_with(
        json!({"sub": sub, "role": "admin", "exp": now() + 3600}),
        SECRET,
    )
}

fn call(s: &Server, method: &str, path: &str, body: Option<Value>, token: &str) -> (u16, Value) {
    s.http(
        method,
        path,
        body.as_ref(),
        Some(&format!("Bearer {token}")),
    )
}

/// `POST /` for a custom channel on `jobs`: the status and the answer.
fn create(s: &Server, token: &str) -> (u16, Value) {
    call(
        s,
        "POST",
        &format!("{BASE}/"),
        Some(json!({"path": "jobs", "event_types": [], "filter": null})),
        token,
    )
}

fn created_id(s: &Server, token: &str) -> String {
    let (st, b) = create(s, token);
    assert_eq!(st, 201, "{b}");
    b["channel_id"].as_str().expect("channel_id").to_string()
}

/// The 429 a create over the cap answers: `LIMIT_EXCEEDED`, naming the key.
fn assert_over_cap(s: &Server, token: &str) {
    let (st, b) = create(s, token);
    assert_eq!(st, 429, "{b}");
    assert_eq!(b["error"]["code"], "LIMIT_EXCEEDED", "{b}");
    let m = b["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains("channels.max_per_user"), "{m}");
}

fn delete(s: &Server, id: &str, token: &str) {
    let (st, b) = call(s, "DELETE", &format!("{BASE}/{id}"), None, token);
    assert_eq!(st, 200, "{b}");
}

#[test]
fn a_user_owns_at_most_max_per_user_channels_across_restarts() {
    // The default cap (100): nothing configured.
    let mut s = Server::start("");
    let (alice, bob, root) = (user("alice"), user("bob"), admin("root"));
    let ids: Vec<String> = (0..100).map(|_| created_id(&s, &alice)).collect();
    assert_over_cap(&s, &alice);
    // Another user is counted apart; an admin is not limited.
    created_id(&s, &bob);
    for _ in 0..101 {
        created_id(&s, &root);
    }
    // A delete frees one place, and only one.
    delete(&s, &ids[0], &alice);
    let again = created_id(&s, &alice);
    assert_over_cap(&s, &alice);
    // Channels are durable, and so is the count: after kill -9 the cap still holds...
    s.kill();
    s.spawn(&[]);
    assert_over_cap(&s, &alice);
    // ...and a delete after the restart still frees a place.
    delete(&s, &again, &alice);
    created_id(&s, &alice);
    assert_over_cap(&s, &alice);
    let (_, list) = call(&s, "GET", &format!("{BASE}/?limit=1"), None, &alice);
    assert_eq!(list["pagination"]["total"], 100, "{list}");
}

#[test]
fn concurrent_creates_never_overshoot_the_cap() {
    let s = Server::start("[channels]\nmax_per_user = 10\n");
    let alice = user("alice");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| (0..10).map(|_| create(&s, &alice).0).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("creator"))
            .collect()
    });
    let created = statuses.iter().filter(|&&st| st == 201).count();
    let refused = statuses.iter().filter(|&&st| st == 429).count();
    assert_eq!((created, refused), (10, 30), "{statuses:?}");
}

/// Waits until the metric has `want`; the metrics are set once a second.
fn wait_metric(s: &Server, name: &str, want: f64) {
    assert!(
        wait_until(Duration::from_secs(20), || s.metric(name) == Some(want)),
        "{name}: {:?}, want {want}",
        s.metric(name)
    );
}

#[test]
fn backlogs_are_on_disk_with_a_bounded_cache_and_memory_returns_after_a_delete() {
    let mut s = Server::start("");
    // Registered at 0 before any channel exists.
    assert_eq!(s.metric("shardcast_channel_backlog_cache_bytes"), Some(0.0));
    let alice = user("alice");
    let channels = 40usize;
    let events = 300usize;
    let ids: Vec<String> = (0..channels).map(|_| created_id(&s, &alice)).collect();
    let mut seqs = Vec::new();
    for chunk in 0..events / 100 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                json!({"path": "jobs/j", "eventType": "e",
                       "data": {"n": chunk * 100 + i, "pad": "x".repeat(1000)}})
            })
            .collect();
        let (first, last) = s.publish_batch(batch);
        seqs.extend(first..=last);
    }
    let total = (channels * events) as f64;
    wait_metric(&s, "shardcast_channel_events_total", total);
    wait_metric(&s, "shardcast_channel_backlog_events", total);
    // Every seq in memory would be channels × events × 8 bytes; the cache holds at most
    // a window per channel.
    let bound = channels as f64 * WINDOW_SEQS * 8.0;
    let cache = s
        .metric("shardcast_channel_backlog_cache_bytes")
        .unwrap_or(-1.0);
    assert!(
        (0.0..=bound).contains(&cache) && bound < total * 8.0,
        "cache {cache} bytes, bound {bound}"
    );

    // kill -9: the backlog is read back from the store, whole and in order.
    s.kill();
    s.spawn(&[]);
    wait_metric(&s, "shardcast_channel_backlog_events", total);
    let cache = s
        .metric("shardcast_channel_backlog_cache_bytes")
        .unwrap_or(-1.0);
    assert!((0.0..=bound).contains(&cache), "after the restart: {cache}");
    let mut c = Client::connect(&s, &format!("/channels/{}?token={alice}&batchMs=0", ids[0]));
    c.recv_type("authenticated");
    let got: Vec<u64> = (0..events)
        .map(|_| c.recv_type("event")["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, seqs, "the whole backlog, in order");
    // Written events leave the backlog (and nothing more was collected).
    wait_metric(
        &s,
        "shardcast_channel_backlog_events",
        ((channels - 1) * events) as f64,
    );
    c.close();

    // Deleting every channel gives the memory back, and the disk entries go too: the
    // next start finds no backlog entries left behind.
    for id in &ids {
        delete(&s, id, &alice);
    }
    wait_metric(&s, "shardcast_channel_backlog_cache_bytes", 0.0);
    wait_metric(&s, "shardcast_channel_backlog_events", 0.0);
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    s.spawn(&[]);
    assert!(!s.log().contains("left behind"), "{}", s.log());
}

#[test]
fn drops_beyond_the_cache_keep_the_newest_in_order_and_count_them() {
    let s = Server::start("[channels]\nbacklog = 100\n");
    let alice = user("alice");
    let id = created_id(&s, &alice);
    // Far more than the cache holds: the oldest go, found in the store.
    let mut seqs = Vec::new();
    for round in 0..5 {
        let batch: Vec<Value> = (0..100)
            .map(|i| json!({"path": "jobs/j", "eventType": "e", "data": {"n": round * 100 + i}}))
            .collect();
        let (first, last) = s.publish_batch(batch);
        seqs.extend(first..=last);
    }
    wait_metric(&s, "shardcast_channel_dropped_total", 400.0);
    let (_, d) = call(&s, "GET", &format!("{BASE}/{id}"), None, &alice);
    assert_eq!(d["event_count"], 500, "{d}");
    let mut c = Client::connect(&s, &format!("/channels/{id}?token={alice}&batchMs=0"));
    c.recv_type("authenticated");
    let got: Vec<u64> = (0..100)
        .map(|_| c.recv_type("event")["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, seqs[400..].to_vec(), "the newest 100, oldest first");
    // Nothing else was kept: the next event is a live one.
    let live = s.publish("jobs/j", "e", json!({"n": "live"}));
    assert_eq!(c.recv_type("event")["seq"], live);
}

/// A channel socket whose 16 KiB receive buffer fills up at once: what the server sends
/// it stays unwritten once the kernel's buffers are full.
fn slow_channel_socket(s: &Server, id: &str, token: &str) -> Client {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    sock.connect(&addr.into()).expect("connect");
    let url = s.ws_url(&format!("/channels/{id}?token={token}&batchMs=0"));
    let (ws, _) =
        tungstenite::client::client(url, std::net::TcpStream::from(sock)).expect("upgrade");
    let mut c = Client::from_ws(ws);
    c.recv_type("authenticated");
    c
}

#[test]
fn events_on_their_way_to_a_stalled_socket_go_to_the_next_one() {
    let s = Server::start("");
    let alice = user("alice");
    let id = created_id(&s, &alice);
    // 8 MB: more than the kernel buffers of one loopback connection (4 MiB at most), so
    // the stalled socket cannot have been written all of them.
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let (first, last) = s.publish_batch(
            (0..500)
                .map(|i| json!({"path": "jobs/j", "eventType": "e", "data": {"n": i, "pad": "x".repeat(4000)}}))
                .collect(),
        );
        seqs.extend(first..=last);
    }
    let mut stalled = slow_channel_socket(&s, &id, &alice);
    let head: Vec<u64> = (0..10)
        .map(|_| stalled.recv_type("event")["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(head, seqs[..10].to_vec());
    // A newer socket takes over: every event not reported written comes again, in order
    // (here all of them: a batch is reported written only once written whole), then live.
    let mut next = Client::connect(&s, &format!("/channels/{id}?token={alice}&batchMs=0"));
    next.recv_type("authenticated");
    let live = s.publish("jobs/j", "e", json!({"n": "live"}));
    let got: Vec<u64> = (0..=seqs.len())
        .map(|_| next.recv_type("event")["seq"].as_u64().expect("seq"))
        .collect();
    let mut want = seqs.clone();
    want.push(live);
    assert_eq!(got, want, "the whole backlog in order, then the live event");
}
