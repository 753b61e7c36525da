//! `loadtest/scale.sh` end to end, CI-sized: a Redis, two shardcast nodes in cluster mode
//! sharing one port (SO_REUSEPORT), and `loadtest scale` with 3000 connections over two
//! worker processes and two source addresses; the one publication reaches all of them,
//! each worker reports its own share, the kernel and the nodes are read, and everything
//! the script started is gone when it ends.
//!
//! Needs redis-server, bash, python3, curl and the shardcast binary (found as for
//! `tests/real_servers.rs`); a missing one skips the test with a printed `SKIPPED:` line,
//! unless `CI` is set: then the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether everything the test needs is here; prints why not (panics under CI).
fn have_all() -> Option<PathBuf> {
    let mut missing = Vec::new();
    for tool in ["redis-server", "bash", "python3", "curl"] {
        if on_path(tool).is_none() {
            missing.push(tool.to_string());
        }
    }
    let server = shardcast_binary();
    if server.is_none() {
        missing.push("the shardcast binary (cargo build --release -p shardcast)".into());
    }
    if missing.is_empty() {
        return server;
    }
    let what = missing.join(", ");
    if in_ci() {
        panic!("CI is set but {what} is missing");
    }
    eprintln!("SKIPPED: {what} missing; set CI=1 to make this a failure");
    None
}

fn alive(pid: u32) -> bool {
    // a zombie has been stopped; only its parent's wait is missing
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn two_nodes_two_workers_one_publication_reaches_all() {
    let Some(server) = have_all() else { return };
    let out = std::env::temp_dir().join(format!("loadtest-scale-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scale.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["3000", "2"])
        .env("OUT", &out)
        .env("SHARDCAST_BIN", &server)
        .env("LOADTEST_BIN", env!("CARGO_BIN_EXE_loadtest"))
        // two workers of 1500, two source addresses of 1500
        .env("PER_WORKER", "1500")
        .env("PER_SOURCE", "1500")
        .env("HOLD", "2s")
        // a CI machine's free memory is not this test's business
        .env("MIN_AVAILABLE_MIB", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadtest/scale.sh");
    // The script's own run is bounded (the connect phase, a 2 s window, the grace); this
    // is the test's bound on top. SIGTERM lets the script's trap stop what it started.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
            panic!("loadtest/scale.sh did not end within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }

    // Everything it started (Redis, both nodes) is stopped; loadtest's workers are its
    // own children and it reaps them before it exits.
    let pids: Vec<u32> = std::fs::read_to_string(out.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "Redis and two nodes: {pids:?}\n{err}");
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} still runs after the script ended");
    }
    assert!(status.success(), "{status}\n{err}");

    let r = report(&out.join("report.json"));
    assert_eq!(r["scenario"], "scale");
    assert_eq!(r["connections"], 3000, "{r}");
    assert_eq!(r["published"], 1, "{r}");
    assert_eq!(r["delivered"], 3000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    let sc = &r["scale"];
    assert!(sc["connect_stopped"].is_null(), "{sc}");
    let workers = sc["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 2, "{sc}");
    for w in workers {
        assert_eq!(w["connections"], 1500, "{w}");
        assert_eq!(w["delivered"], 1500, "{w}");
        assert!(w["rss_bytes"].as_u64().unwrap_or(0) > 0, "{w}");
        assert!(w["reach_us"].as_u64().unwrap_or(0) > 0, "{w}");
    }
    // reached all = the slowest worker's last delivery = the slowest delivery
    let reach = sc["reach_all_us"].as_u64().expect("reach_all_us");
    assert_eq!(
        Some(reach),
        workers.iter().filter_map(|w| w["reach_us"].as_u64()).max()
    );
    assert_eq!(r["latency_us"]["max"], reach);
    assert!(
        sc["client_rss_bytes_per_connection"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(r["server"]["rss_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    // both nodes took connections: with 3000 spread by hash over two listeners, one of
    // them holding fewer than 100 is beyond chance
    let nodes = sc["server_open_files"]["per_pid"]
        .as_array()
        .expect("per_pid");
    assert_eq!(nodes.len(), 2, "{sc}");
    for n in nodes {
        assert!(n["open_files"].as_u64().unwrap_or(0) > 100, "{n}");
    }
    // the kernel was read before and after connecting (slabinfo may be unreadable)
    for when in ["before", "connected"] {
        assert!(
            sc["kernel"][when]["tcp_inuse"].as_u64().is_some(),
            "{when}: {sc}"
        );
    }
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    assert!(
        summary.contains("nodes 2 | workers 2 | connections 3,000"),
        "{summary}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
