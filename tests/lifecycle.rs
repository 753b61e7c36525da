//! Connection lifecycle: slow consumers, heartbeats, and the SIGTERM drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A client that stops reading: the socket fills, messages stay in the ring, the ring
/// drops its oldest; every publication is then either delivered or reported dropped,
/// exactly.
#[test]
fn slow_consumer_gets_every_message_or_an_exact_drop_count() {
    let s = Server::start("[delivery]\nqueue_capacity = 20\nbatch_ms = 0");
    let mut c = Client::slow_reader(&s, &token("slow", "user", &["*"]));
    c.subscribe(json!([{"id": "s", "path": "slow"}]));
    let pad = "x".repeat(16 * 1024);
    let n = 600u64;
    let (first, last) = s.publish_batch(
        (0..n)
            .map(|i| json!({"path": "slow", "eventType": "e", "data": {"i": i, "pad": pad}}))
            .collect(),
    );
    assert!(last > first);
    let a = c.account_for(n);
    assert!(
        a.dropped > 0,
        "the socket never filled; make the test harder"
    );
    assert_eq!(a.last["seq"], last, "the newest message is kept");
    // Nothing more is owed (no late warning, no duplicate): a marker comes next.
    let marker = s.publish("slow", "e", json!({"i": n}));
    c.expect_marker(marker);
}

#[test]
fn unanswered_ping_closes_with_4003_and_answered_pings_keep_the_connection() {
    let s = Server::start("[delivery]\nheartbeat_ms = 200\npong_timeout_ms = 300");
    let mut silent = Client::authed(&s, &token("a", "user", &[]), "");
    let mut alive = Client::authed(&s, &token("b", "user", &[]), "");
    // The answering client runs on its own thread, so it answers while the test waits
    // on the silent one.
    let answering = std::thread::spawn(move || {
        let started = Instant::now();
        let mut pings = 0;
        while started.elapsed() < Duration::from_millis(1200) {
            match alive.recv_within(Duration::from_millis(100)) {
                Ok(m) if m["type"] == "ping" => {
                    pings += 1;
                    alive.send(&json!({"type": "pong"}));
                }
                Ok(m) => panic!("unexpected {m}"),
                Err(Ended::Timeout) => {}
                Err(e) => panic!("answering client was closed: {e:?}"),
            }
        }
        (alive, pings)
    });
    assert_eq!(silent.recv(), json!({"type": "ping"}));
    let (code, _) = silent.expect_close(Duration::from_secs(3));
    assert_eq!(code, 4003);
    // The answering client outlived the silent one's deadline by several pings.
    let (mut alive, pings) = answering.join().unwrap();
    assert!(pings >= 3, "{pings} pings");
    // A client ping is answered at any time.
    alive.send(&json!({"type": "ping"}));
    loop {
        let m = alive.recv();
        if m["type"] == "pong" {
            break;
        }
        assert_eq!(m["type"], "ping");
        alive.send(&json!({"type": "pong"}));
    }
}

#[test]
fn sigterm_fails_readiness_then_closes_everyone_spread_over_the_period_and_exits_0() {
    let mut s = Server::start("drain_period_ms = 1000\nshards = 2");
    let mut clients: Vec<Client> = (0..6)
        .map(|i| Client::authed(&s, &token(&format!("d{i}"), "user", &[]), ""))
        .collect();
    // A keep-alive HTTP connection opened before the signal, as a load balancer has.
    let mut lb = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    lb.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let readyz = |lb: &mut std::net::TcpStream| -> String {
        use std::io::{Read, Write};
        lb.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = lb.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(readyz(&mut lb).starts_with("HTTP/1.1 200"));
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    // Signal delivery is asynchronous: readiness flips within a moment, not instantly.
    let mut answer = readyz(&mut lb);
    while answer.starts_with("HTTP/1.1 200") && signalled.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
        answer = readyz(&mut lb);
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    let mut closed_at = Vec::new();
    let mut delays = std::collections::BTreeSet::new();
    for c in clients.iter_mut() {
        let (code, reason) = c.expect_close(Duration::from_secs(5));
        assert_eq!(code, 1001);
        let delay: u64 = reason
            .strip_prefix("reconnect in ")
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("reason {reason:?}"));
        // A suggested delay in milliseconds, and a bounded one: docs/PROTOCOL-NOTES.md
        // promises at most 1 s beyond the drain period.
        assert!(delay > 0 && delay <= 1000 + 1000, "{delay}");
        delays.insert(delay);
        closed_at.push(signalled.elapsed());
    }
    // Jittered (PROTOCOL.md §12): the six clients are not all told the same delay.
    assert!(delays.len() > 1, "no jitter: {delays:?}");
    let spread = closed_at
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*closed_at.iter().min().unwrap());
    assert!(
        spread >= Duration::from_millis(300),
        "closes not spread: {closed_at:?}"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
}

/// A drain stops accepting (PROTOCOL.md §12): once SIGTERM has closed the first socket,
/// a new `/ws` connection is refused or never answered, while sockets that were already
/// open are still served until their own turn to close.
#[test]
fn a_draining_server_accepts_no_new_connection() {
    // One shard: its listener is gone before it arms the first close, so once a close
    // arrives the server is not accepting (with two, the other shard might lag by a hair).
    let mut s = Server::start("drain_period_ms = 4000\nshards = 1");
    let mut clients: Vec<Client> = (0..4)
        .map(|i| Client::authed(&s, &token(&format!("n{i}"), "user", &[]), ""))
        .collect();
    s.signal(libc::SIGTERM);
    // The first close is sent at once (its slot is 0): from then on the drain runs.
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.is_none() && Instant::now() < deadline {
        for (i, c) in clients.iter_mut().enumerate() {
            match c.recv_within(Duration::from_millis(20)) {
                Err(Ended::Closed(code, _)) => {
                    assert_eq!(code, 1001);
                    first = Some(i);
                    break;
                }
                Err(Ended::Timeout) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let first = first.expect("no socket closed after SIGTERM");
    // A new client is turned away: the connection is refused, reset, or never upgraded
    // (the harness's read timeout ends the handshake).
    let tok = token("late", "user", &[]);
    match Client::try_connect(&s, &format!("/ws?token={tok}")) {
        Err(_) => {}
        Ok(mut c) => panic!(
            "a new connection was accepted during the drain: {:?}",
            c.recv_within(Duration::from_secs(1))
        ),
    }
    // ...while the others were still open: at least one answers a ping after that.
    let mut served = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        if i == first {
            continue;
        }
        c.send(&json!({"type": "ping"}));
        loop {
            match c.recv_within(Duration::from_secs(6)) {
                Ok(m) if m["type"] == "pong" => {
                    served += 1;
                    let (code, _) = c.expect_close(Duration::from_secs(6));
                    assert_eq!(code, 1001);
                    break;
                }
                Ok(m) => assert_eq!(m["type"], "ping", "{m}"),
                Err(Ended::Closed(code, _)) => {
                    assert_eq!(code, 1001);
                    break;
                }
                Err(e) => panic!("client {i}: {e:?}"),
            }
        }
    }
    assert!(
        served > 0,
        "no existing connection was served after the refusal"
    );
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
}

/// The node's id (PROTOCOL.md §13): generated once and kept in `data_dir`, the same after
/// a restart; shown by `/healthz`, as the `node` label of every metric series and in the
/// log; a configured `cluster.node_id` replaces it.
#[test]
fn the_node_id_is_kept_across_restarts_and_shown_everywhere() {
    let mut s = Server::start("");
    let id_of = |s: &Server| {
        let (st, body) = s.http("GET", "/healthz", None, None);
        assert_eq!(st, 200, "{body}");
        body["node"]
            .as_str()
            .unwrap_or_else(|| panic!("/healthz names no node: {body}"))
            .to_string()
    };
    let id = id_of(&s);
    assert!(id.starts_with("node-"), "{id}");
    let kept = std::fs::read_to_string(s.dir.join("data").join("node_id")).unwrap();
    assert_eq!(kept.trim(), id);
    let (_, metrics) = s.try_http("GET", "/metrics", None, &[]).unwrap();
    let label = format!("node=\"{id}\"");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("shardcast_"))
        .collect();
    assert!(series.len() > 20, "{metrics}");
    for l in &series {
        assert!(l.contains(&label), "a series without {label}: {l}");
    }
    assert!(
        s.log().contains(&format!("node_id={id}")),
        "the log does not name the node: {}",
        s.log()
    );

    s.kill();
    s.spawn(&[]);
    assert_eq!(id_of(&s), id, "a restart changed the node id");

    // A configured id wins (and is checked: see the configuration tests).
    s.kill();
    s.spawn(&[("SHARDCAST_CLUSTER__NODE_ID", "edge-7")]);
    assert_eq!(id_of(&s), "edge-7");
    let (_, metrics) = s.try_http("GET", "/metrics", None, &[]).unwrap();
    assert!(metrics.contains("shardcast_publications_total{node=\"edge-7\""));
}
