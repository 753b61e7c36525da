//! Helpers shared by the harness's integration tests: run the `loadtest` binary, read its
//! JSON report, pick a free loopback port, name a per-process temporary file.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs `loadtest` with `args`; returns its exit code and its stderr.
pub fn loadtest(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `--json` report at `path`.
pub fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `<temp>/loadtest-<suite>-<pid>-<name>.json`.
pub fn tmp_json(suite: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "loadtest-{suite}-{}-{name}.json",
        std::process::id()
    ))
}

/// The shardcast binary the suites run: in `CARGO_TARGET_DIR` or the workspace's
/// `target/`, release first.
pub fn shardcast_binary() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    dirs.push(manifest.join("../target"));
    dirs.iter()
        .flat_map(|d| [d.join("release/shardcast"), d.join("debug/shardcast")])
        .find(|p| p.is_file())
}

/// Whether this is a CI run: the one rule of every suite (the root's
/// `tests/common::in_ci`): `CI` set, non-empty and not "false".
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}
