//! A `redis-server` for cluster tests (Debian's 7.0, installed by `scripts/test`): started
//! on a free loopback port with a data directory of its own, stopped on drop. Without
//! the binary a test says SKIPPED loudly, and fails under `CI`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, in_ci, wait_until, Server};

/// A `redis-server` of the test's own, with its data in a directory of its own.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// `None` (and a loud message; a failure under CI) when there is no `redis-server`.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                !in_ci(),
                "redis-server is missing (scripts/test installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (scripts/test installs it)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "shardcast-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
        };
        r.spawn();
        Some(r)
    }

    /// Starts (again) on the same port and data: every write is in the append-only file
    /// before Redis answers it, so a restart keeps everything answered.
    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again with no data at all (a Redis that lost everything).
    pub fn restart_empty(&mut self) {
        self.stop();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node of a cluster on `redis` (`extra`: more TOML, sections allowed), ready: it has
/// loaded from Redis.
pub fn cluster_node(redis: &Redis, name: &str, extra: &str) -> Server {
    cluster_node_at(&redis.url(), name, extra)
}

/// A node of the cluster whose Redis is at `url` (e.g. through a test's proxy), ready.
pub fn cluster_node_at(url: &str, name: &str, extra: &str) -> Server {
    let s = Server::start(&format!(
        "{extra}\n[cluster]\nredis_url = \"{url}\"\nnode_id = \"{name}\""
    ));
    wait_ready(&s);
    s
}

pub fn wait_ready(s: &Server) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            s.try_http("GET", "/readyz", None, &[]).map(|r| r.0) == Some(200)
        }),
        "node not ready: {}",
        s.log()
    );
}
