//! External conformance suites, run against the real binary:
//! - the Autobahn WebSocket cases (all of them, the compression cases 12.* and 13.*
//!   included, via `kosoku`) against the `[testing] echo_path` endpoint, which shares
//!   the shard, codec, compressor and write path of `/ws`;
//! - the public contract smoke test in `../shared/contract/smoke.py`.
//!
//! Both need Python tools that `scripts/test` installs into `target/venv`. Outside CI a
//! missing tool skips the test with a message; in CI (`CI=true`) it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn venv_bin(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/venv/bin")
        .join(name);
    p.exists().then_some(p)
}

/// Runs `cmd` to its end, or kills it after `deadline` and fails naming `what` (its
/// output goes to files in `dir`, so a chatty child cannot block on a full pipe).
fn output_within(mut cmd: Command, deadline: Duration, dir: &Path, what: &str) -> Output {
    let (out_path, err_path) = (
        dir.join(format!("{what}.stdout")),
        dir.join(format!("{what}.stderr")),
    );
    cmd.stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?}; its output so far:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

fn require(tool: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    if tool.is_none() {
        assert!(
            !in_ci(),
            "{what} is missing in CI: run scripts/test, which installs it"
        );
        eprintln!("SKIPPED (not under CI): {what} not installed (run scripts/test)");
    }
    tool
}

#[test]
fn autobahn_cases_all_pass_on_the_echo_endpoint() {
    let Some(kosoku) = require(venv_bin("kosoku"), "kosoku (Autobahn cases)") else {
        return;
    };
    let s = Server::start("[testing]\necho_path = \"/echo\"\n[delivery]\ncompression = \"on\"");
    let reports = s.dir.join("autobahn");
    let mut cmd = Command::new(kosoku);
    cmd.args(["-m", "fuzzingclient", "-p", "4", "-o"])
        .arg(&reports)
        .arg(s.ws_url("/echo"));
    // The whole run takes ~4-5 min here (the 216 compression cases ~3 of them, 4 in
    // parallel); a hung case must fail the suite, not stall CI.
    let out = output_within(cmd, Duration::from_secs(900), &s.dir, "kosoku");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.join("index.json")).expect("index.json"))
            .expect("index json");
    let mut counts = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for cases in index.as_object().unwrap().values() {
        for (id, r) in cases.as_object().unwrap() {
            let b = r["behavior"].as_str().unwrap_or("?").to_string();
            let bc = r["behaviorClose"].as_str().unwrap_or("?").to_string();
            if !matches!(b.as_str(), "OK" | "NON-STRICT" | "INFORMATIONAL")
                || !matches!(bc.as_str(), "OK" | "INFORMATIONAL")
            {
                bad.push(format!("{id}: {b}/{bc}"));
            }
            *counts.entry(b).or_insert(0) += 1;
        }
    }
    let total: usize = counts.values().sum();
    eprintln!("autobahn: {total} cases {counts:?}");
    assert!(total >= 500, "too few cases ran ({total}): {stdout}");
    assert!(bad.is_empty(), "failed cases: {bad:?}");
}

#[test]
fn contract_smoke_passes() {
    let Some(python) = require(venv_bin("python"), "the test venv") else {
        return;
    };
    let smoke = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract/smoke.py");
    if !smoke.exists() {
        assert!(!in_ci(), "../shared/contract/smoke.py is missing in CI");
        eprintln!("SKIPPED (not under CI): {} not found", smoke.display());
        return;
    }
    let mut cmd = Command::new(python);
    cmd.arg(&smoke)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"));
    let dir = std::env::temp_dir().join(format!("shardcast-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = output_within(cmd, Duration::from_secs(600), &dir, "smoke.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
