//! `loadtest soak --nodes` against a real cluster: one `redis-server` and three shardcast
//! nodes (the binary of `../target`, release first), each on a free loopback port, for a
//! 12 s run sampled every second. Checks that the soak's checks hold cluster-wide and that
//! deliveries crossed nodes. Without `redis-server` or the shardcast binary it says
//! SKIPPED loudly, and fails under `CI`. Every process it starts is killed (by pid) and
//! reaped when the test ends, a panic included.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A child process, killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn skip_or_fail(why: &str) {
    assert!(!in_ci(), "CI is set but {why}");
    eprintln!("SKIPPED: {why}");
}

fn listening(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// One `GET` with `Connection: close`: status and body (`None`: no answer).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    Some((status, body))
}

/// `redis-server` on a free port with no persistence (the test needs none), in `dir`.
fn start_redis(dir: &Path) -> Option<(Proc, u16)> {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        skip_or_fail("redis-server is not installed (scripts/test installs it)");
        return None;
    }
    // a free port may be taken by another test before redis binds it: try another
    for _ in 0..3 {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut p = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(p.0.try_wait(), Ok(Some(_))) {
                break; // exited: the port was taken
            }
            if listening(port) {
                return Some((p, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server did not start");
}

/// Node `name` of the cluster on `redis_port`, ready (`/readyz` 200, and `/healthz`
/// naming this node: a port another test took in between is not ours).
fn start_node(bin: &Path, dir: &Path, name: &str, redis_port: u16) -> (Proc, u16) {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    for _ in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(
            &conf,
            format!(
                "listen = \"127.0.0.1:{port}\"\nshards = 1\ndata_dir = \"{}\"\n\n\
                 [auth]\njwt_secret = \"soak-secret\"\napi_keys = [\"soak-key\"]\n\n\
                 [delivery]\nqueue_capacity = 100\n\n[history]\nsize = 2000\n\n\
                 [cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}\"\nnode_id = \"{name}\"\n",
                data.display()
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
        let mut p = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(p.0.try_wait(), Ok(Some(_))) {
                break; // exited: most likely the port was taken; another one
            }
            let ours = get(port, "/healthz")
                .is_some_and(|(s, b)| s == 200 && b.contains(&format!("\"{name}\"")));
            if ours && get(port, "/readyz").is_some_and(|(s, _)| s == 200) {
                return (p, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("node {name} did not become ready");
}

#[test]
fn cluster_soak_crosses_nodes_and_its_checks_hold() {
    let Some(bin) = shardcast_binary() else {
        skip_or_fail("the shardcast binary is missing (cargo build -p shardcast)");
        return;
    };
    let dir: PathBuf =
        std::env::temp_dir().join(format!("loadtest-cluster-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some((redis, redis_port)) = start_redis(&dir) else {
        return;
    };
    let nodes: Vec<(Proc, u16)> = ["a", "b", "c"]
        .iter()
        .map(|name| start_node(&bin, &dir, name, redis_port))
        .collect();
    let list = nodes
        .iter()
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let pids = nodes
        .iter()
        .map(|(p, _)| p.0.id().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let json = dir.join("soak.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["soak", "--nodes", &list, "--server-pid", &pids])
        .args(["--secret", "soak-secret", "--api-key", "soak-key"])
        .args(["--duration", "12s", "--sample-every", "1s"])
        .args(["--connections", "30", "--paths", "6", "--rate", "60"])
        .args(["--churn-rate", "6"])
        // as in tests/soak.rs: 8 KB at 200/s to slow readers of 100 KB/s overflow the
        // nodes' 100-message queues within seconds
        .args([
            "--slow-conns",
            "2",
            "--slow-rate",
            "200",
            "--slow-payload",
            "8000",
        ])
        .args(["--slow-read-rate", "100000"])
        .args(["--filtered", "40", "--filtered-rate", "40"])
        .args([
            "--live-queries",
            "4",
            "--entities",
            "40",
            "--entity-rate",
            "30",
        ])
        .args(["--instances", "3", "--task-rate", "40"])
        .args(["--batch-ms", "50", "--batch-max", "100"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}\n{table}");
    assert!(started.elapsed() < Duration::from_secs(150));
    assert!(err.contains("cluster mode over 3 nodes"), "{err}");
    let r = report(&json);

    // every check ran and held, the cluster's included
    let checks = r["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert!(
        names.contains(&"cluster: deliveries crossed nodes on every node"),
        "{names:?}"
    );
    assert!(checks.iter().all(|c| c["ok"] == true), "{}", r["checks"]);
    assert_eq!(r["healthy"], true);

    // deliveries crossed nodes: every reader is on another node than its publisher, and
    // every node delivered
    let c = &r["cluster"];
    assert_eq!(c["nodes"], 3, "{c}");
    assert!(c["cross_node_deliveries"].as_u64().unwrap() > 0, "{c}");
    let per_node = c["node_deliveries"].as_array().unwrap();
    assert_eq!(per_node.len(), 3, "{c}");
    assert!(
        per_node.iter().all(|d| d.as_f64().unwrap_or(0.0) > 0.0),
        "{c}"
    );
    // the live queries agree with the REST list on every node
    for d in c["live_query_differing_ids_per_node"].as_array().unwrap() {
        assert!(d.as_array().unwrap().iter().all(|x| *x == 0), "{c}");
    }
    assert!(r["live_queries"]["updates"].as_u64().unwrap() > 0);
    let t = &r["tasks"];
    let acked = t["acknowledged"].as_u64().unwrap();
    assert!(acked > 0, "{t}");
    assert_eq!(t["completed"].as_u64().unwrap(), acked, "{t}");
    assert_eq!(t["lost"], 0, "{t}");
    assert!(
        r["slow"]["dropped_reported"].as_u64().unwrap() > 0,
        "{}",
        r["slow"]
    );
    assert_eq!(r["fanout"]["lost"], 0, "{}", r["fanout"]);

    // per-node series: each node's process measured in every sample, and a row per node
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 10, "{} samples", samples.len());
    for s in samples {
        let n = s["nodes"].as_array().unwrap();
        assert_eq!(n.len(), 3, "{s}");
        for node in n {
            assert!(node["rss_bytes"].as_u64().unwrap_or(0) > 0, "{node}");
            assert!(node["open_files"].as_u64().unwrap_or(0) > 0, "{node}");
        }
        assert!(s["rss_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    }
    let node_rows = table
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(2)
                    .is_some_and(|c| c.trim().parse::<u32>().is_ok())
        })
        .count();
    assert!(node_rows >= samples.len() * 3, "{table}");
    let growth = r["growth_per_node"].as_array().unwrap();
    assert_eq!(growth.len(), 9, "three rules on three nodes");
    assert!(growth.iter().all(|g| g["grew"] == false), "{growth:?}");

    // once every client left, every node is idle and ready: before 921dc41 the close of
    // a service connection that held no lock sent Redis an empty pipeline, taken for a
    // lost connection and retried forever (the nodes reconnected to Redis thousands of
    // times a second, /readyz 503, publishes refused, SIGTERM never finished)
    let after = r["after_close"].as_array().unwrap();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|a| a["quiet"] == true), "{after:?}\n{err}");

    drop(nodes);
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}
