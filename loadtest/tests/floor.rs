//! The floor writer driven by the harness like a server: every publication reaches every
//! subscriber, with one write per message or one writev per K messages, and its own
//! summary agrees with what the harness counted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};

use common::*;
use serde_json::Value;

/// The floorwriter, and its stderr (kept open: it writes its summary there at the end).
struct Floor {
    child: Child,
    _stderr: BufReader<ChildStderr>,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    tmp_json("floor", name)
}

/// Runs fanout against a floorwriter started with `floor_args`; returns (harness report,
/// the floor's own summary).
fn run(floor_args: &[&str], connections: &str) -> (Value, Value) {
    // A free port can be handed to a test running beside this one before our floorwriter
    // binds it; then ours fails to bind and exits, and the port answers for the other
    // test's. So the port is ours only once our floorwriter says it listens (its first
    // line on stderr), else another is tried.
    let (port, own, mut floor) = loop {
        let port = free_port();
        let own = tmp(&format!("own-{port}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_floorwriter"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(floor_args)
            .args(["--json", own.to_str().unwrap(), "--lifetime", "60s"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let _ = stderr.read_line(&mut line);
        let floor = Floor {
            child,
            _stderr: stderr,
        };
        if line.starts_with("floorwriter: listening") {
            break (port, own, floor);
        }
    };
    let json = tmp(&format!("report-{port}"));
    let pid = floor.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "fanout",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            "--secret",
            "s",
            "--api-key",
            "k",
            "--connections",
            connections,
            "--rate",
            "50",
            "--duration",
            "1s",
            "--server-pid",
            &pid,
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // SIGTERM: the floor writes its summary and exits
    // SAFETY: plain kill(2) of our own child.
    unsafe {
        libc::kill(floor.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = floor.child.wait().unwrap();
    assert!(status.success(), "floorwriter: {status}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(own);
    (report, summary)
}

#[test]
fn one_write_per_message() {
    let (r, own) = run(&["--write", "per-message"], "20");
    let published = r["published"].as_u64().unwrap();
    assert!(published >= 45, "{r}");
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 20);
    assert_eq!(r["lost"], 0);
    assert!(r["latency_us"]["p50"].as_u64().unwrap() >= 1);
    assert!(r["server"]["cpu_seconds"].as_f64().is_some());
    assert_eq!(own["write"], "per-message");
    assert_eq!(own["publications"].as_u64().unwrap(), published);
    assert_eq!(own["deliveries"].as_u64().unwrap(), published * 20);
    // one write per delivery (more only if a socket was full)
    assert!(own["writes"].as_u64().unwrap() >= published * 20, "{own}");
    assert_eq!(own["connections"], 20);
}

#[test]
fn one_writev_per_flush() {
    let (r, own) = run(
        &["--write", "per-flush", "--batch", "5", "--flush-ms", "200"],
        "10",
    );
    let published = r["published"].as_u64().unwrap();
    assert_eq!(r["delivered"].as_u64().unwrap(), published * 10);
    assert_eq!(r["lost"], 0);
    assert_eq!(own["batch"], 5);
    let writes = own["writes"].as_u64().unwrap();
    // every 5 publications (a partial flush after 200 ms, at least at the end) one
    // writev per socket
    let flushes = published.div_ceil(5);
    assert_eq!(writes % 10, 0, "{own}");
    assert!(
        (flushes * 10..=(flushes + 3) * 10).contains(&writes),
        "{writes} writes for {published} publications: {own}"
    );
}

#[test]
fn bad_flags_exit_2() {
    for (args, flag) in [
        (vec!["--write", "sometimes"], "--write"),
        (vec!["--batch", "3"], "--batch"),
        (vec!["--nope"], "--nope"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_floorwriter"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
