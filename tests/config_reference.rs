//! The configuration reference against the real binary: the file `shardcast config`
//! prints starts a node with `serve --config`, and a `SHARDCAST_` variable that names no
//! key is a start-up warning naming the closest key's variable.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Kills the child on drop, so a failing assertion leaves no server running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthz(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn the_printed_default_file_starts_a_node() {
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("config")
        .output()
        .expect("run shardcast config");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.contains("\n[limits]\n"), "{text}");
    assert!(
        text.contains("(env SHARDCAST_DELIVERY__BATCH_MS)\nbatch_ms = 5000\n"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("shardcast-config-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("printed.toml");
    std::fs::write(&file, &text).expect("write the printed file");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The file as printed; only the port and the data directory come from the
    // environment, so that the test does not take 8080 or write ./data.
    let log = std::fs::File::create(dir.join("server.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("SHARDCAST_LISTEN", format!("127.0.0.1:{port}"))
        .env("SHARDCAST_DATA_DIR", dir.join("data"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn shardcast serve");
    let mut node = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(port) != Some(200) {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        assert!(
            node.0.try_wait().expect("try_wait").is_none(),
            "the node refused the printed file: {log}"
        );
        assert!(Instant::now() < deadline, "not healthy in time: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_variable_naming_no_key_is_a_warning_with_the_closest_key() {
    let s = Server::start_with_env(
        "",
        &[
            ("SHARDCAST_DELIVERY_BATCH_MS", "0"),
            // The project's own non-key variable: no warning.
            ("SHARDCAST_LOG", "info"),
        ],
    );
    let want = "ignoring environment variable SHARDCAST_DELIVERY_BATCH_MS: it sets no \
                configuration key; did you mean SHARDCAST_DELIVERY__BATCH_MS?";
    assert!(
        wait_until(Duration::from_secs(10), || s.log().contains(want)),
        "no warning in: {}",
        s.log()
    );
    let log = s.log();
    assert!(log.contains("WARN"), "{log}");
    assert!(!log.contains("variable SHARDCAST_LOG"), "{log}");
}
