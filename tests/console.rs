//! The operator console (`/console`) and its read-only admin API (`/api/v1/admin/…`),
//! against the real binary: who may read the admin views and what they say about a seeded
//! node; the page's assets, headers, origin check and `console.enabled`; and the whole
//! console in headless Chromium (Debian's `chromium`, driven by playwright-core through
//! tests/browser/console.mjs): logins refused and accepted, every view showing the seeded
//! numbers, replay and purge, a channel closed, the live tail with its filter, no console
//! error and no failed request, with a screenshot of each view in target/console-shots/.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::channels::{attach, claim, events, org_channel, user, BASE};
use common::services::{instance, subscribe, tasks, wait_group};
use common::*;
use serde_json::{json, Value};

fn admin() -> String {
    format!("Bearer {}", token("ops", "admin", &["*"]))
}

#[test]
fn the_admin_api_is_for_admin_tokens_only() {
    let s = Server::start("");
    for path in ["/api/v1/admin/overview", "/api/v1/admin/subscriptions"] {
        let (st, b) = s.http("GET", path, None, None);
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (401, Some("UNAUTHORIZED")),
            "{path}: {b}"
        );
        let (st, b) = s.http("GET", path, None, Some("Bearer not.a.token"));
        assert_eq!(st, 401, "{path}: {b}");
        for who in [
            format!("Bearer {}", token("u", "user", &["*"])),
            format!("Bearer {}", common::services::service_token("svc", "g")),
            apikey(),
        ] {
            let (st, b) = s.http("GET", path, None, Some(&who));
            assert_eq!(
                (st, b["error"]["code"].as_str()),
                (403, Some("FORBIDDEN")),
                "{path} {who}: {b}"
            );
            assert!(
                b["error"]["message"].as_str().unwrap().contains("admin"),
                "{b}"
            );
        }
        let (st, b) = s.http("GET", path, None, Some(&admin()));
        assert_eq!(st, 200, "{path}: {b}");
        // Read-only: no other method.
        let (st, b) = s.http("POST", path, Some(&json!({})), Some(&admin()));
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (405, Some("BAD_MESSAGE")),
            "{b}"
        );
    }
    let (st, b) = s.http("GET", "/api/v1/admin/nope", None, Some(&admin()));
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{b}"
    );
    for q in ["k=0", "k=65", "k=x", "top=3", "k=1&k=2"] {
        let (st, b) = s.http(
            "GET",
            &format!("/api/v1/admin/subscriptions?{q}"),
            None,
            Some(&admin()),
        );
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (400, Some("BAD_MESSAGE")),
            "{q}: {b}"
        );
    }
    for path in [
        "/api/v1/admin/overview?x=1",
        "/api/v1/admin/channels?page=1",
    ] {
        let (st, b) = s.http("GET", path, None, Some(&admin()));
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (400, Some("BAD_MESSAGE")),
            "{b}"
        );
    }
}

#[test]
fn the_admin_views_show_a_seeded_node() {
    let s = Server::start("shards = 2\n");
    let mut users: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = Client::authed(&s, &token(&format!("u{i}"), "user", &["*"]), "&batchMs=0");
            c.subscribe(json!([{"id": "a", "path": "jobs"}]));
            c
        })
        .collect();
    users[0].subscribe(json!([{"id": "b", "path": "orders"}]));
    for i in 0..5 {
        s.publish("jobs/hot", "done", json!({"i": i}));
    }
    s.publish_batch(vec![
        json!({"path": "jobs/cold", "eventType": "done"}),
        json!({"path": "jobs/warm", "eventType": "done"}),
        json!({"path": "jobs/warm", "eventType": "done"}),
    ]);
    let overview = |s: &Server| {
        s.http("GET", "/api/v1/admin/overview", None, Some(&admin()))
            .1
    };
    let ok = wait_until(Duration::from_secs(10), || {
        overview(&s)["connections"]["byRole"]["user"] == 3
    });
    let o = overview(&s);
    assert!(ok, "{o}");
    assert_eq!(o["connections"]["total"], 3, "{o}");
    assert_eq!(o["shards"], 2);
    assert_eq!(o["connections"]["byShard"].as_array().unwrap().len(), 2);
    let per_shard: u64 = o["connections"]["byShard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 3, "{o}");
    assert_eq!(o["publications"], 8, "{o}");
    assert_eq!(o["history"]["publications"], 8, "{o}");
    assert!(o["history"]["bytes"].as_u64().unwrap() > 0, "{o}");
    assert!(o["store"]["bytes"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(o["dropped"]["queue_overflow"], 0, "{o}");
    assert_eq!(o["shardQueues"].as_array().unwrap().len(), 2, "{o}");
    assert_eq!(o["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(o["clusterMode"], false);
    assert_eq!(o["nodes"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(o["nodes"][0]["node"], o["node"]);
    // Deliveries: 8 publications to 3 subscribers of `jobs`, once each has them.
    for c in &mut users {
        c.account_for(8);
    }
    let ok = wait_until(Duration::from_secs(10), || overview(&s)["deliveries"] == 24);
    assert!(ok, "{}", overview(&s));

    // The shards' gauges move at their upkeep (about once a second).
    let subs = |s: &Server| {
        let (st, b) = s.http(
            "GET",
            "/api/v1/admin/subscriptions?k=2",
            None,
            Some(&admin()),
        );
        assert_eq!(st, 200, "{b}");
        b
    };
    let ok = wait_until(Duration::from_secs(10), || {
        subs(&s)["totals"]["subscriptions"] == 4
    });
    let subs = subs(&s);
    assert!(ok, "{subs}");
    let per_shard: u64 = subs["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subscriptions"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 4, "{subs}");
    assert_eq!(subs["totals"]["liveQueries"], 0, "{subs}");
    assert_eq!(subs["shards"].as_array().unwrap().len(), 2, "{subs}");
    assert_eq!(
        subs["busiestPaths"],
        json!([
            {"path": "jobs/hot", "publications": 5, "error": 0},
            {"path": "jobs/warm", "publications": 2, "error": 0},
        ]),
        "{subs}"
    );
    assert_eq!(subs["publicationsCounted"], 8);
}

/// A `GET` with raw headers: status, headers (lower-case names), body.
fn get(s: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, HashMap<String, String>, String) {
    raw_http(s, "GET", path, headers, "")
}

fn header<'a>(h: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    h.get(name).map(String::as_str)
}

#[test]
fn the_page_is_embedded_locked_down_and_can_be_turned_off() {
    let s = Server::start("");
    let (st, h, body) = get(&s, "/console", &[]);
    assert_eq!(st, 200, "{body}");
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    assert!(body.contains("/console/console.js"), "{body}");
    let csp = header(&h, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(header(&h, "cache-control"), Some("no-store"));
    let (st, h, js) = get(&s, "/console/console.js", &[]);
    assert_eq!(st, 200);
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(
        js.starts_with("// Generated by console/build.mjs"),
        "the embedded bundle"
    );
    // Offline: nothing is loaded from anywhere else.
    for asset in [&body, &js] {
        assert!(
            !asset.contains("https://") && !asset.contains("//cdn"),
            "an outside URL in an asset"
        );
    }
    let (st, _, css) = get(&s, "/console/console.css", &[]);
    assert_eq!((st, css.is_empty()), (200, false));
    let (st, _, b) = get(&s, "/console/nope.js", &[]);
    assert_eq!(st, 404, "{b}");
    // auth.allowed_origins: a page on another site may not load it (loopback is allowed).
    let (st, _, b) = get(&s, "/console", &[("Origin", "https://evil.example")]);
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("auth.allowed_origins"), "{b}");
    assert_eq!(
        get(&s, "/console", &[("Origin", "http://localhost:3000")]).0,
        200
    );

    let off = Server::start("[console]\nenabled = false\n");
    for path in ["/console", "/console/console.js"] {
        let (st, _, b) = get(&off, path, &[]);
        assert_eq!(st, 404, "{path}: {b}");
        assert!(b.contains("console.enabled"), "{b}");
    }
    // The admin API is not the console's: it stays (a script may read it).
    let (st, b) = off.http("GET", "/api/v1/admin/overview", None, Some(&admin()));
    assert_eq!(st, 200, "{b}");
}

#[test]
fn a_bad_console_enabled_stops_start_up_naming_the_key() {
    let err = serve_refused(&[("SHARDCAST_CONSOLE__ENABLED", "maybe")]);
    assert!(
        err.contains("console.enabled") && err.contains("true or false"),
        "{err}"
    );
}

/// Dead letters for `group`: an instance takes `n` tasks on `path` and fails each once
/// (`max_attempts = 1`), then leaves.
fn dead_letters(s: &Server, group: &str, path: &str, n: usize) {
    let mut inst = instance(s, &format!("{group}-1"), group);
    subscribe(&mut inst, "s", path);
    for i in 0..n {
        s.publish(&format!("{path}/{i}"), "due", json!({"kind": path, "i": i}));
    }
    let ts = tasks(&mut inst, n);
    let ids: Vec<&Value> = ts.iter().map(|t| &t["taskId"]).collect();
    inst.send(&json!({"type": "taskFailed", "taskIds": ids, "retryInMs": 0}));
    wait_group(s, group, "dead", n as u64);
    inst.close();
    wait_group(s, group, "instances", 0);
}

#[test]
fn the_console_in_chromium() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready("console test", &root) {
        return;
    }
    let s = Server::start("[services]\nmax_attempts = 1\n");
    dead_letters(&s, "billing", "invoice", 3);
    dead_letters(&s, "mailer", "mail", 2);
    // Channels: two, one with two events.
    let owner = user("usr_1", "org_1");
    let c1 = org_channel(&s, &owner, "org_1", "usr_1", &[]);
    let _c2 = org_channel(&s, &owner, "org_1", "usr_1", &["approved"]);
    claim(&s, "org_1", "usr_1", "status_changed", 1);
    claim(&s, "org_1", "usr_1", "status_changed", 2);
    let id = c1["channel_id"].as_str().unwrap().to_string();
    let ok = wait_until(Duration::from_secs(10), || {
        common::channels::call(&s, "GET", &format!("{BASE}/{id}"), None, &owner).1["event_count"]
            == 2
    });
    assert!(ok, "the channel never counted its events");
    // Connections: three users subscribed to `jobs`; a busiest path.
    let _users: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = Client::authed(&s, &token(&format!("u{i}"), "user", &["*"]), "&batchMs=0");
            c.subscribe(json!([{"id": "a", "path": "jobs"}]));
            c
        })
        .collect();
    for i in 0..7 {
        s.publish("jobs/hot", "tick", json!({"i": i}));
    }
    let expected = json!({
        "connections": 3,
        "subscriptions": 3,
        "hotPath": "jobs/hot",
        "hotCount": 7,
        "replayGroup": "billing",
        "replayDead": 3,
        "purgeGroup": "mailer",
        "purgeDead": 2,
        "channels": 2,
        "closeChannel": id,
        "closeChannelEvents": 2,
        // Never attached: both events wait for a socket.
        "closeChannelBacklog": 2,
    });
    let shots = root.join("target/console-shots");
    let out = std::process::Command::new("node")
        .arg(root.join("tests/browser/console.mjs"))
        .arg(format!("http://127.0.0.1:{}", s.port))
        .arg(token("ops", "admin", &["*"]))
        .arg(token("u9", "user", &["*"]))
        .arg(API_KEY)
        .arg(&shots)
        .arg(expected.to_string())
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(
        report["ok"],
        true,
        "{}\n{stderr}\n{}",
        serde_json::to_string_pretty(&report).unwrap(),
        s.log()
    );
    // The page's steps (the live tail's delay among them), for the log.
    eprintln!("console steps: {}", report["steps"]);
    // What the page did, seen from the REST API.
    let billing = common::services::group(&s, "billing");
    assert_eq!(
        (billing["dead"].as_u64(), billing["pending"].as_u64()),
        (Some(0), Some(3)),
        "{billing}"
    );
    let mailer = common::services::group(&s, "mailer");
    assert_eq!(
        (mailer["dead"].as_u64(), mailer["pending"].as_u64()),
        (Some(0), Some(0)),
        "{mailer}"
    );
    let (st, _) = common::channels::call(&s, "GET", &format!("{BASE}/{id}"), None, &owner);
    assert_eq!(st, 404, "the closed channel is gone");
    for view in ["overview", "services", "channels", "subscriptions", "tail"] {
        assert!(
            shots.join(format!("{view}.png")).exists(),
            "no screenshot of {view}"
        );
    }
}

#[test]
fn in_cluster_mode_the_overview_has_one_row_per_node() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let a = common::redis::cluster_node(&redis, "a", "");
    let b = common::redis::cluster_node(&redis, "b", "");
    let _user = Client::authed(&b, &token("u", "user", &["*"]), "");
    a.publish("jobs/1", "done", json!(1));
    let rows = |s: &Server| {
        let (st, o) = s.http("GET", "/api/v1/admin/overview", None, Some(&admin()));
        assert_eq!(st, 200, "{o}");
        assert_eq!(o["clusterMode"], true, "{o}");
        o["nodes"].clone()
    };
    // Each node shares its row every 2 s; b's shows its one connection, seen from a.
    let ok = wait_until(Duration::from_secs(15), || {
        let r = rows(&a);
        r.as_array().is_some_and(|r| r.len() == 2)
            && r[0]["node"] == "a"
            && r[1]["node"] == "b"
            && r[1]["connections"] == 1
            && r[0]["publications"] == 1
    });
    assert!(ok, "{}", rows(&a));
    // The same rows from b.
    let ok = wait_until(Duration::from_secs(15), || {
        let r = rows(&b);
        r.as_array().is_some_and(|r| r.len() == 2) && r[1]["connections"] == 1
    });
    assert!(ok, "{}", rows(&b));
}

/// The admin channel view's counts through a channel's life: a bounded backlog with drops,
/// emptied by a socket, then missed events once it dropped.
fn channel_counts(s: &Server) {
    let owner = user("usr_1", "org_1");
    let c = org_channel(s, &owner, "org_1", "usr_1", &[]);
    let id = c["channel_id"].as_str().unwrap().to_string();
    let row = |s: &Server| {
        let (st, b) = s.http("GET", "/api/v1/admin/channels", None, Some(&admin()));
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["total"], 1, "{b}");
        b["data"][0].clone()
    };
    let settle = |s: &Server, want: Value| {
        let ok = wait_until(Duration::from_secs(10), || {
            let r = row(s);
            [
                "status",
                "event_count",
                "backlog",
                "missed_events",
                "dropped",
            ]
            .iter()
            .all(|k| r[*k] == want[*k])
        });
        assert!(ok, "wanted {want}, got {}", row(s));
    };
    for n in 1..=5 {
        claim(s, "org_1", "usr_1", "status_changed", n);
    }
    // `channels.backlog = 3`: the oldest two dropped.
    settle(
        s,
        json!({"status": "connected", "event_count": 5, "backlog": 3, "missed_events": 0, "dropped": 2}),
    );
    assert_eq!(row(s)["channel_id"], id.as_str());
    let mut sock = attach(s, &id, &owner);
    events(&mut sock, 3);
    settle(
        s,
        json!({"status": "connected", "event_count": 5, "backlog": 0, "missed_events": 0, "dropped": 2}),
    );
    sock.close();
    let ok = wait_until(Duration::from_secs(10), || {
        row(s)["status"] == "disconnected"
    });
    assert!(ok, "{}", row(s));
    claim(s, "org_1", "usr_1", "status_changed", 6);
    claim(s, "org_1", "usr_1", "status_changed", 7);
    settle(
        s,
        json!({"status": "disconnected", "event_count": 7, "backlog": 2, "missed_events": 2, "dropped": 2}),
    );
}

#[test]
fn the_admin_channel_view_counts_backlog_missed_and_dropped() {
    channel_counts(&Server::start("[channels]\nbacklog = 3\n"));
}

#[test]
fn the_admin_channel_view_in_cluster_mode() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    channel_counts(&common::redis::cluster_node(
        &redis,
        "a",
        "[channels]\nbacklog = 3\n[delivery]\nbatch_ms = 0",
    ));
}
