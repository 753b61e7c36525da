//! End-to-end runs of the `loadtest` binary against real servers:
//!
//! * `--target nats` against nats-server (the Debian package `nats-server`, 2.9) with
//!   WebSocket on loopback: fanout, spread, idle and churn; publishing over TCP
//!   (`--nats-url`) and over the WebSocket endpoint (no `--nats-url`);
//! * overflow, churn and entities against the shardcast binary; the connection options
//!   against a server whose `queue_capacity` is below the shipped `batchMax`
//!   (`../target/release/shardcast`, else `../target/debug/shardcast`;
//!   `env!("CARGO_BIN_EXE_…")` does not reach across crates).
//!
//! A server that is missing skips its test with a message, unless the environment variable
//! `CI` is set: then the test fails (CI installs nats-server and builds shardcast first).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Kills (by pid) and reaps the server when the test ends, even by a panic.
struct Server {
    child: Child,
    name: &'static str,
}

impl Server {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `Some(path)`, or `None` after printing why the test is skipped; panics under CI.
fn required(what: &str, found: Option<PathBuf>, how: &str) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    if in_ci() {
        panic!("CI is set but {what} is missing ({how})");
    }
    eprintln!("SKIPPED: {what} is missing ({how}); set CI=1 to make this a failure");
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        // Debian installs nats-server in /usr/sbin, which a non-root PATH may lack
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn wait_listening(server: &mut Server, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{} exited at start: {status}", server.name);
        }
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {addr}",
            server.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadtest-real-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_nats(dir: &Path) -> Option<(Server, u16, u16)> {
    let bin = required(
        "nats-server",
        on_path("nats-server"),
        "apt-get install nats-server",
    )?;
    let (port, ws_port) = (free_port(), free_port());
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\nwebsocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let mut s = Server {
        child,
        name: "nats-server",
    };
    wait_listening(&mut s, ([127, 0, 0, 1], ws_port).into());
    wait_listening(&mut s, ([127, 0, 0, 1], port).into());
    Some((s, port, ws_port))
}

#[test]
fn nats_target_fanout_spread_idle_churn() {
    let dir = tmp_dir("nats");
    let Some((nats, port, ws_port)) = start_nats(&dir) else {
        return;
    };
    let url = format!("ws://127.0.0.1:{ws_port}/");
    let nats_url = format!("nats://127.0.0.1:{port}");
    let pid = nats.pid();
    let json = dir.join("r.json");
    let js = json.to_str().unwrap();
    let base = [
        "--target",
        "nats",
        "--url",
        &url,
        "--nats-url",
        &nats_url,
        "--server-pid",
        &pid,
        "--json",
        js,
    ];
    let run = |scenario: &str, extra: &[&str]| -> Value {
        let mut args = vec![scenario];
        args.extend_from_slice(&base);
        args.extend_from_slice(extra);
        let (code, err) = loadtest(&args);
        assert_eq!(code, 0, "{scenario} {extra:?}: {err}");
        let r = report(&json);
        assert_eq!(r["target"], "nats");
        assert_eq!(r["scenario"], scenario);
        r
    };

    // fanout: every MSG counted, latency from the payload's t
    let r = run(
        "fanout",
        &["--connections", "30", "--rate", "20", "--duration", "1s"],
    );
    assert_eq!(r["connections"], 30);
    let published = r["published"].as_u64().unwrap();
    // Never ahead of the pace (20/s over 1 s); how close to it a run gets is the
    // report's business, not a test's (no rate thresholds in tests).
    assert!((1..=21).contains(&published), "published {published}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 30);
    assert_eq!(r["lost"], 0);
    assert!(r["latency_us"]["p50"].as_u64().unwrap() >= 1);
    assert!(r["server"]["cpu_seconds"].as_f64().is_some());
    assert!(r["server"]["rss_bytes"].as_u64().unwrap() > 0);

    // fanout over two worker processes, at a rate that batches PUBs
    let r = run(
        "fanout",
        &[
            "--connections",
            "40",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--fd-budget",
            "20",
            "--payload",
            "300",
        ],
    );
    let published = r["published"].as_u64().unwrap();
    assert!((1..=501).contains(&published), "published {published}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 40);
    assert_eq!(r["lost"], 0);

    // spread: subjects load.p0..p3
    let r = run(
        "spread",
        &[
            "--connections",
            "30",
            "--paths",
            "4",
            "--rate",
            "40",
            "--duration",
            "1s",
        ],
    );
    let published = r["published"].as_u64().unwrap();
    let subs = [8u64, 8, 7, 7];
    let expected: u64 = (0..published).map(|n| subs[(n % 4) as usize]).sum();
    assert_eq!(r["expected"].as_u64().unwrap(), expected);
    assert_eq!(r["delivered"].as_u64().unwrap(), expected);
    assert_eq!(r["lost"], 0);

    // idle: connected and subscribed, RSS per connection
    let r = run("idle", &["--connections", "50", "--duration", "300ms"]);
    assert_eq!(r["connections"], 50);
    assert_eq!(r["expected"], 0);
    assert!(r["server"]["rss_bytes_per_connection"].as_f64().is_some());

    // churn: INFO, CONNECT+SUB+PING, PONG, close, close echo
    let r = run("churn", &["--rate", "100", "--duration", "1s"]);
    let c = &r["churn"];
    let started = c["cycles_started"].as_u64().unwrap();
    assert!((1..=102).contains(&started), "{c}");
    assert_eq!(c["cycles_completed"].as_u64().unwrap(), started, "{c}");
    assert_eq!(c["cycles_failed"], 0);
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nats_target_reports_a_missing_publisher_endpoint() {
    let dir = tmp_dir("nats-nopub");
    let Some((nats, _port, ws_port)) = start_nats(&dir) else {
        return;
    };
    // the WebSocket side works, nothing listens where PUBs should go
    let url = format!("ws://127.0.0.1:{ws_port}/");
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let (code, err) = loadtest(&[
        "fanout",
        "--target",
        "nats",
        "--url",
        &url,
        "--nats-url",
        &nowhere,
        "--connections",
        "5",
        "--rate",
        "10",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("publish error"), "{err}");
    assert!(err.contains("nats connect"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nats_target_publishes_over_the_websocket_without_nats_url() {
    let dir = tmp_dir("nats-ws-pub");
    // nats-server's TCP port is a random one the harness is not told: PUBs that reach the
    // subscribers came over the WebSocket endpoint
    let Some((nats, _port, ws_port)) = start_nats(&dir) else {
        return;
    };
    let url = format!("ws://127.0.0.1:{ws_port}/");
    let json = dir.join("r.json");
    let started = Instant::now();
    // 500/s with 300-byte bodies: several PUBs per frame
    let (code, err) = loadtest(&[
        "fanout",
        "--target",
        "nats",
        "--url",
        &url,
        "--connections",
        "20",
        "--rate",
        "500",
        "--payload",
        "300",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let published = r["published"].as_u64().unwrap();
    assert!(
        (1..=501).contains(&published),
        "published {published}: {err}"
    );
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 20, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    // the payload's t survived the framing: latencies are measured
    assert!(r["latency_us"]["p50"].as_u64().unwrap() >= 1, "{r}");
    // spread over the same path: subjects load.p0..p2
    let (code, err) = loadtest(&[
        "spread",
        "--target",
        "nats",
        "--url",
        &url,
        "--connections",
        "9",
        "--paths",
        "3",
        "--rate",
        "60",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let published = r["published"].as_u64().unwrap();
    assert!((1..=61).contains(&published), "published {published}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 3, "{r}");
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(nats);

    // nothing listening at --url: the publisher's failure is a publish error, bounded
    let nowhere = format!("ws://127.0.0.1:{}/", free_port());
    let started = Instant::now();
    let (code, err) = loadtest(&[
        "fanout",
        "--target",
        "nats",
        "--url",
        &nowhere,
        "--connections",
        "2",
        "--rate",
        "10",
        "--duration",
        "1s",
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(dir);
}

fn start_shardcast(dir: &Path, extra_toml: &str) -> Option<(Server, u16)> {
    let bin = required(
        "the shardcast binary (../target/release/shardcast or ../target/debug/shardcast)",
        shardcast_binary(),
        "cargo build --release -p shardcast",
    )?;
    let port = free_port();
    let conf = dir.join("shardcast.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:{port}\"\nshards = 1\ndata_dir = \"{}\"\n\n[auth]\njwt_secret = \"e2e-secret\"\napi_keys = [\"e2e-key\"]\n\n{extra_toml}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shardcast");
    let mut s = Server {
        child,
        name: "shardcast",
    };
    wait_listening(&mut s, ([127, 0, 0, 1], port).into());
    Some((s, port))
}

#[test]
fn shardcast_overflow_drops_are_all_reported() {
    let dir = tmp_dir("overflow");
    let Some((server, port)) = start_shardcast(&dir, "[delivery]\nqueue_capacity = 100\n") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = server.pid();
    let json = dir.join("r.json");
    // 8 KB events at 1000/s: a 3 s pause queues ~24 MB, far beyond the server's socket
    // send buffer (at most 4 MiB by default) and its 100-message queue
    let (code, err) = loadtest(&[
        "overflow",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--api-key",
        "e2e-key",
        "--connections",
        "6",
        "--rate",
        "1000",
        "--payload",
        "8000",
        "--duration",
        "4s",
        "--pause-ms",
        "3000",
        "--batch-max",
        "100",
        // unbatched, as the sizing above assumes (the server's default is 5000)
        "--batch-ms",
        "0",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let (expected, delivered, dropped) = (
        r["expected"].as_u64().unwrap(),
        r["delivered"].as_u64().unwrap(),
        r["dropped_reported"].as_u64().unwrap(),
    );
    assert!(expected > 0);
    assert!(dropped > 0, "nothing dropped: {r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(delivered + dropped, expected);
    assert_eq!(r["overflow"]["slow_readers"], 3);
    assert_eq!(r["overflow"]["dropped_on_fast_readers"], 0, "{r}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// `loadtest overflow` with nothing but the endpoints, against the `queue_capacity` its
/// help names (200): the defaults are sized past the kernel's buffers, so the slow readers
/// overflow, every drop is reported, and only they drop. A run too gentle to overflow
/// fails and says why, rather than passing on accounting it never exercised.
#[test]
fn shardcast_overflow_overflows_at_its_defaults() {
    let dir = tmp_dir("overflow-defaults");
    let Some((server, port)) = start_shardcast(&dir, "[delivery]\nqueue_capacity = 200\n") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let json = dir.join("r.json");
    let (code, err) = loadtest(&[
        "overflow",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--api-key",
        "e2e-key",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let (expected, delivered, dropped) = (
        r["expected"].as_u64().unwrap(),
        r["delivered"].as_u64().unwrap(),
        r["dropped_reported"].as_u64().unwrap(),
    );
    assert!(dropped > 0, "the defaults overflowed nothing: {r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(delivered + dropped, expected, "{r}");
    assert_eq!(r["overflow"]["slow_readers"], 25, "{r}");
    assert_eq!(r["overflow"]["dropped_on_fast_readers"], 0, "{r}");

    // 20 events/s for 1 s fit in any buffer: nothing overflows, and the run says so.
    let (code, err) = loadtest(&[
        "overflow",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--api-key",
        "e2e-key",
        "--connections",
        "4",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--pause-ms",
        "100",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing overflowed"), "{err}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// The shipped `batchMax` (1000) is more than this server's queue holds: a harness that
/// sent it by default failed every connection with `BAD_MESSAGE`.
#[test]
fn shardcast_connection_options_are_sent_only_when_given() {
    let dir = tmp_dir("options");
    let Some((server, port)) = start_shardcast(&dir, "[delivery]\nqueue_capacity = 100\n") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let json = dir.join("r.json");
    let fanout = |extra: &[&str]| {
        let mut args = vec![
            "fanout",
            "--url",
            &url,
            "--secret",
            "e2e-secret",
            "--api-key",
            "e2e-key",
            "--connections",
            "10",
            "--rate",
            "20",
            "--duration",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        loadtest(&args)
    };

    // no option flags: the connections get the server's defaults and all of it arrives
    let (code, err) = fanout(&[]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    assert_eq!(r["connections"], 10, "{r}");
    let published = r["published"].as_u64().unwrap();
    assert!((1..=21).contains(&published), "published {published}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 10, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    // nothing was sent for batchMs either: the server's 5 s default flush applied (the
    // first publication waited for it), and the grace period covered it
    let max = r["latency_us"]["max"].as_u64().unwrap();
    assert!(
        max >= 3_000_000,
        "latency max {max} µs: not the server's batching"
    );

    // a given option reaches the server: one above its queue is the server's BAD_MESSAGE
    let (code, err) = fanout(&["--batch-max", "101", "--batch-ms", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("BAD_MESSAGE"), "{err}");
    assert!(err.contains("batchMax"), "{err}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    // and one within it is applied: against a server whose default flush is 60 s (far
    // past the run's grace period), everything arrives only if batchMs=0 took effect
    // (a lower bound of the server's, not a latency threshold of the test's)
    let dir = tmp_dir("options-applied");
    let Some((server, port)) = start_shardcast(
        &dir,
        "[delivery]\nqueue_capacity = 100\nbatch_ms = 60000\nmax_batch_ms = 60000\n",
    ) else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let json = dir.join("r.json");
    let (code, err) = loadtest(&[
        "fanout",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--api-key",
        "e2e-key",
        "--connections",
        "10",
        "--rate",
        "20",
        "--duration",
        "1s",
        "--json",
        json.to_str().unwrap(),
        "--batch-max",
        "100",
        "--batch-ms",
        "0",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let published = r["published"].as_u64().unwrap();
    assert!(published > 0, "{r}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 10, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shardcast_churn_cycles() {
    let dir = tmp_dir("churn");
    let Some((server, port)) = start_shardcast(&dir, "") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = server.pid();
    let json = dir.join("r.json");
    let (code, err) = loadtest(&[
        "churn",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let c = &r["churn"];
    let started = c["cycles_started"].as_u64().unwrap();
    assert!((1..=202).contains(&started), "{c}");
    assert_eq!(c["cycles_completed"].as_u64().unwrap(), started, "{c}");
    assert_eq!(c["cycles_failed"], 0);
    assert!(c["server_cpu_us_per_cycle"].as_f64().is_some(), "{c}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--compression`: the subscribers negotiate permessage-deflate and inflate every
/// compressed message, in both framings (an event that did not inflate would not be
/// counted, so `lost` would not be 0).
#[test]
fn shardcast_fanout_with_compression() {
    let dir = tmp_dir("compression");
    let Some((server, port)) = start_shardcast(&dir, "[delivery]\ncompression = \"on\"\n") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let http = format!("http://127.0.0.1:{port}");
    let pid = server.pid();
    for framing in ["frames", "array"] {
        let json = dir.join(format!("{framing}.json"));
        let (code, err) = loadtest(&[
            "fanout",
            "--url",
            &url,
            "--http",
            &http,
            "--secret",
            "e2e-secret",
            "--api-key",
            "e2e-key",
            "--connections",
            "20",
            "--rate",
            "50",
            "--duration",
            "1s",
            "--batch-ms",
            "100",
            "--framing",
            framing,
            "--compression",
            "--server-pid",
            &pid,
            "--json",
            json.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{framing}: {err}");
        let r = report(&json);
        assert!(r["delivered"].as_u64().unwrap() > 0, "{framing}: {r}");
        assert_eq!(r["lost"], 0, "{framing}: {r}");
        assert_eq!(r["delivered"], r["expected"], "{framing}: {r}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// `GET path` with the api key (`Connection: close`): the status and the body as JSON.
fn get_json(port: u16, path: &str, api_key: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: apikey {api_key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn shardcast_entities_durable_writes() {
    let dir = tmp_dir("entities");
    let Some((server, port)) = start_shardcast(&dir, "") else {
        return;
    };
    let http = format!("http://127.0.0.1:{port}");
    let pid = server.pid();
    let json = dir.join("r.json");
    let (code, err) = loadtest(&[
        "entities",
        "--http",
        &http,
        "--api-key",
        "e2e-key",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--rate",
        "0",
        "--duration",
        "2s",
        "--payload",
        "200",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    let acked = r["acknowledged"].as_u64().unwrap();
    assert!(acked > 0, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["connections"], 4);
    assert_eq!(r["sent"].as_u64().unwrap(), acked, "{r}");
    let ops = &r["ops"];
    assert_eq!(
        ops["created"].as_u64().unwrap() + ops["updated"].as_u64().unwrap(),
        acked,
        "{r}"
    );
    assert!(r["latency_ms"]["p99"].as_f64().is_some(), "{r}");
    assert!(r["server"]["cpu_us_per_ack"].as_f64().is_some(), "{r}");
    // the server really holds them
    let entities = r["entities"].as_u64().unwrap();
    let (status, list) = get_json(port, "/api/v1/entities/load?limit=1", "e2e-key");
    assert_eq!(status, 200, "{list}");
    let total = list["totalCount"].as_u64().expect("totalCount");
    assert!(
        total >= acked.min(entities),
        "totalCount {total} < min(acknowledged {acked}, entities {entities})"
    );
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// Scenario stalls, briefly: seeds, fans out through both kinds of phase, creates live
/// queries in the live-query phases, loses nothing and reads the loop-turn histogram.
#[test]
fn shardcast_stalls_phases() {
    let dir = tmp_dir("stalls");
    let Some((server, port)) = start_shardcast(&dir, "") else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/ws");
    let json = dir.join("r.json");
    let (code, err) = loadtest(&[
        "stalls",
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--api-key",
        "e2e-key",
        "--entities",
        "3000",
        "--connections",
        "5",
        "--rate",
        "50",
        "--duration",
        "500ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&json);
    assert_eq!(r["entities"], 3000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    let phases = r["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{r}");
    for p in phases {
        assert!(p["events"].as_u64().unwrap() > 0, "{r}");
        assert!(p["latency_ms"]["p99"].as_f64().is_some(), "{r}");
        assert!(p["loop_turn_s"]["p99_bucket"].as_f64().is_some(), "{r}");
    }
    assert!(
        phases[1]["live_queries_created"].as_u64().unwrap() > 0,
        "{r}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
