//! External conformance suites, run against the real binary:
//! - the Autobahn WebSocket cases (every non-compression case, via `kosoku`) against
//!   the `[testing] echo_path` endpoint, which shares the shard, codec and write path
//!   of `/ws`;
//! - the public contract smoke test in `../shared/contract/smoke.py`.
//!
//! Both need Python tools that `scripts/test` installs into `target/venv`. Outside CI a
//! missing tool skips the test with a message; in CI (`CI=true`) it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn venv_bin(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/venv/bin")
        .join(name);
    p.exists().then_some(p)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

fn require(tool: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    if tool.is_none() {
        assert!(
            !in_ci(),
            "{what} is missing in CI: run scripts/test, which installs it"
        );
        eprintln!("skipping: {what} not installed (run scripts/test)");
    }
    tool
}

#[test]
fn autobahn_cases_all_pass_on_the_echo_endpoint() {
    let Some(kosoku) = require(venv_bin("kosoku"), "kosoku (Autobahn cases)") else {
        return;
    };
    let s = Server::start("[testing]\necho_path = \"/echo\"");
    let reports = s.dir.join("autobahn");
    let out = Command::new(kosoku)
        .args([
            "-m",
            "fuzzingclient",
            "-x",
            "12.*",
            "-x",
            "13.*",
            "-p",
            "4",
            "-o",
        ])
        .arg(&reports)
        .arg(s.ws_url("/echo"))
        .output()
        .expect("run kosoku");
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
    assert!(total >= 290, "too few cases ran ({total}): {stdout}");
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
        eprintln!("skipping: {} not found", smoke.display());
        return;
    }
    let out = Command::new(python)
        .arg(&smoke)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SHARDCAST_BIN", env!("CARGO_BIN_EXE_shardcast"))
        .output()
        .expect("run smoke.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
