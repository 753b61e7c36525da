//! Test harness for the client: starts the REAL `shardcast` binary on a free loopback port
//! with its own temp data dir, signs tokens, and waits on conditions with deadlines.
//!
//! The binary is `$SHARDCAST_BIN`, else the workspace's `target/debug/shardcast` beside
//! the test executable (build it with `cargo build --bin shardcast`; `cargo test
//! --workspace` builds it too). Nothing is mocked.
#![allow(dead_code)]

pub mod proxy;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shardcast_client::{ClientEvent, ConnectionState, Rest};
use tokio::sync::broadcast;

pub const SECRET: &str = "s";
pub const API_KEY: &str = "k";
/// Every wait in these tests: long enough for a loaded 2-core machine, and only ever
/// reached when something is wrong.
pub const DEADLINE: Duration = Duration::from_secs(20);

fn binary() -> PathBuf {
    // This test runs as target/debug/deps/<test>-<hash>: the workspace's binaries are in
    // target/debug, whatever CARGO_TARGET_DIR says.
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("shardcast")));
    let path = std::env::var_os("SHARDCAST_BIN")
        .map(PathBuf::from)
        .or(beside_tests)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/shardcast")
        });
    assert!(
        path.is_file(),
        "the shardcast binary is missing at {}: build it with `cargo build --bin shardcast` \
         (or set SHARDCAST_BIN)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running server; killed and its directory removed on drop.
pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts a server; `extra` is TOML appended after the `[delivery]` section.
    pub fn start(extra: &str) -> Server {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "shardcast-client-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cfg = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndrain_period_ms = 200\n\
             [auth]\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n\
             [delivery]\nbatch_ms = 0\n{extra}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("shardcast.toml"), cfg).expect("config");
        let mut s = Server {
            port,
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    /// Starts the binary on this server's config and data dir; waits until healthy.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("shardcast.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn shardcast");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("server exited at start ({st}): {}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "server not up: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn rest(&self) -> Rest {
        Rest::new(&self.http()).unwrap().api_key(API_KEY)
    }

    /// SIGTERM (drain) and wait for exit 0.
    pub fn drain(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                assert_eq!(st.code(), Some(0), "drain exit: {}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HS256 token signed with the test secret.
pub fn token(sub: &str, role: &str, scopes: &[&str]) -> String {
    token_with(json!({"sub": sub, "role": role, "scopes": scopes}))
}

/// An HS256 token with these claims (plus `exp` in an hour unless given).
pub fn token_with(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims["exp"] = json!(now + 3600);
    }
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{sig}")
}

/// Awaits `f` within the deadline, naming what was awaited when it does not come.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next connection event that `pick` accepts (others are skipped), within the deadline.
pub async fn wait_event<T>(
    events: &mut broadcast::Receiver<ClientEvent>,
    what: &str,
    mut pick: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("events ended: {what}"),
            }
        }
    })
    .await
}

/// Waits for `Connected`; returns the connection id.
pub async fn connected(events: &mut broadcast::Receiver<ClientEvent>) -> String {
    wait_event(events, "Connected", |e| match e {
        ClientEvent::State(ConnectionState::Connected { connection_id }) => {
            Some(connection_id.clone())
        }
        _ => None,
    })
    .await
}

/// Waits until `cond` holds, checking every 10 ms, within the deadline.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
