//! `shardcast sub` and `shardcast pub` as an operator runs them: the real binary against a
//! real node on loopback. Every wait has a deadline.

mod common;
// The client's test proxy (one per language): holds the subscribe answer, black-holes a
// connection attempt.
#[path = "../clients/rust/tests/common/proxy.rs"]
mod proxy;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{token, Server, API_KEY};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

fn shardcast() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    // The tests decide which secrets the command sees.
    c.env_remove("SHARDCAST_TOKEN")
        .env_remove("SHARDCAST_API_KEY");
    c
}

/// Lines of a child's pipe, read on a thread so the test can wait with a deadline.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line that `pick` accepts, within the deadline; the lines seen go in the panic.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, pick: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pick(&l) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {what} within {DEADLINE:?}; saw {seen:?}"),
        }
    }
}

/// Kills the child if the test fails before it ends it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code().expect("exit code (not a signal)");
        }
        assert!(Instant::now() < deadline, "no exit within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `shardcast sub jobs` against `s` with a user token from the environment, once it
/// says it is subscribed: the process and its stdout and stderr lines.
fn sub_jobs(s: &Server) -> (Running, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut sub = Running(
        shardcast()
            .args(["sub", "jobs", "--url", &s.ws_url("/ws")])
            .env("SHARDCAST_TOKEN", token("op", "user", &["jobs"]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sub"),
    );
    let out = lines(sub.0.stdout.take().unwrap());
    let err = lines(sub.0.stderr.take().unwrap());
    wait_line(&err, "`subscribed` notice", |l| {
        l.contains("subscribed to jobs")
    });
    (sub, out, err)
}

#[test]
fn pub_then_sub_prints_the_event_as_a_json_line_and_ctrl_c_exits_0() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let (mut sub, out, _err) = sub_jobs(&s);

    // The flag wins over a wrong key in the environment.
    let p = shardcast()
        .args(["pub", "jobs/1", "done", r#"{"ok":true}"#, "--url"])
        .arg(format!("http://127.0.0.1:{}", s.port))
        .args(["--api-key", API_KEY])
        .env("SHARDCAST_API_KEY", "wrong")
        .output()
        .expect("run pub");
    assert_eq!(
        p.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&p.stderr)
    );
    let answer: Value = serde_json::from_slice(&p.stdout).expect("pub prints JSON");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let seq = answer["firstSeq"].as_u64().expect("firstSeq");

    let line = wait_line(&out, "event line", |_| true);
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["type"], "event");
    assert_eq!(event["seq"], seq);
    assert_eq!(event["path"], "jobs/1");
    assert_eq!(event["eventType"], "done");
    assert_eq!(event["data"], json!({"ok": true}));

    // SIGINT, as ctrl-c sends: a clean exit 0.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(sub.0.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut sub.0), 0);
}

/// `shardcast sub jobs` through `url`, without waiting for anything.
fn spawn_sub(url: &str) -> (Running, mpsc::Receiver<String>) {
    let mut sub = Running(
        shardcast()
            .args(["sub", "jobs", "--url", url])
            .env("SHARDCAST_TOKEN", token("op", "user", &["jobs"]))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sub"),
    );
    let err = lines(sub.0.stderr.take().unwrap());
    (sub, err)
}

/// Every line left on a pipe, once the child closed it.
fn rest_of(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the pipe stayed open: {out:?}"),
        }
    }
}

#[test]
fn ctrl_c_while_connecting_or_subscribing_exits_0() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let p = proxy::Proxy::start(s.port);
    // Subscribing: the request went out, its answer is held (the server's would come in
    // milliseconds, before any signal could).
    p.hold_answers_after(Some("subscribeEvents"));
    let (mut sub, err) = spawn_sub(&p.ws("/ws"));
    let deadline = Instant::now() + DEADLINE;
    while p.held() == 0 {
        assert!(
            Instant::now() < deadline,
            "no subscribeEvents within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(sub.0.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut sub.0), 0, "{:?}", rest_of(&err));
    let said = rest_of(&err);
    assert!(
        !said.iter().any(|l| l.contains("subscribed to")),
        "it was still subscribing: {said:?}"
    );

    // Connecting: the handshake is never answered (the attempt deadline is 10 s).
    p.set_mode(proxy::Mode::BlackHole);
    let (mut sub, err) = spawn_sub(&p.ws("/ws"));
    while p.accepted(proxy::Mode::BlackHole) == 0 {
        assert!(
            Instant::now() < deadline,
            "no connection attempt within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(sub.0.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut sub.0), 0, "{:?}", rest_of(&err));
    assert_eq!(rest_of(&err), Vec::<String>::new());
}

#[test]
fn pub_takes_the_api_key_from_the_environment_and_reports_refusals() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let url = format!("http://127.0.0.1:{}", s.port);
    let ok = shardcast()
        .args(["pub", "jobs/2", "x", "7", "--url", &url])
        .env("SHARDCAST_API_KEY", API_KEY)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let answer: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(answer["accepted"], 1);

    let refused = shardcast()
        .args(["pub", "jobs/2", "x", "7", "--url", &url])
        .env("SHARDCAST_API_KEY", "wrong")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("UNAUTHORIZED"),
        "{stderr}"
    );
}

#[test]
fn bad_data_is_refused_with_exit_2_before_any_request() {
    // Port 1: nothing listens there, so a request would fail differently (exit 1).
    let out = shardcast()
        .args([
            "pub",
            "jobs/1",
            "done",
            "{oops",
            "--url",
            "http://127.0.0.1:1",
        ])
        .env("SHARDCAST_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad DATA `{oops`: not JSON"), "{stderr}");
    assert!(stderr.contains("Usage: shardcast pub"), "{stderr}");
}

#[test]
fn sub_help_and_missing_token() {
    let help = shardcast().args(["sub", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: shardcast sub PATH"), "{text}");
    for flag in [
        "--url WS_URL",
        "--token T",
        "--filter F",
        "--since N",
        "SHARDCAST_TOKEN",
    ] {
        assert!(text.contains(flag), "{flag} in {text}");
    }
    let missing = shardcast().args(["sub", "jobs"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("missing `--token` for `shardcast sub` (or set SHARDCAST_TOKEN)"),
        "{stderr}"
    );
}

#[test]
fn sub_reports_a_rejected_filter_and_exits_1() {
    let s = Server::start("[delivery]\nbatch_ms = 0");
    let out = shardcast()
        .args([
            "sub",
            "jobs",
            "--filter",
            "status ==",
            "--url",
            &s.ws_url("/ws"),
        ])
        .arg("--token")
        .arg(token("op", "user", &["jobs"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INVALID_FILTER"), "{stderr}");
}

#[test]
fn sub_reconnects_after_a_drain_and_keeps_printing() {
    let mut s = Server::start("drain_period_ms = 200\n[delivery]\nbatch_ms = 0");
    let (mut sub, out, err) = sub_jobs(&s);
    let first = s.publish("jobs/1", "a", json!(1));
    let line: Value = serde_json::from_str(&wait_line(&out, "first event", |_| true)).unwrap();
    assert_eq!(line["seq"], first);

    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(DEADLINE), Some(0), "drain: {}", s.log());
    let notice = wait_line(&err, "disconnect notice", |l| l.contains("disconnected"));
    assert!(
        notice.contains("(1001)") && notice.contains("reconnecting in"),
        "{notice}"
    );
    s.spawn(&[]);
    wait_line(&err, "reconnect notice", |l| l.contains("connected ("));
    // The node restarted with no history: the resubscription says what may be missing.
    wait_line(&err, "re-sync notice", |l| l.contains("may be missing"));
    let second = s.publish("jobs/2", "b", json!(2));
    let line: Value =
        serde_json::from_str(&wait_line(&out, "event after restart", |_| true)).unwrap();
    assert_eq!(
        (line["seq"].as_u64(), line["path"].as_str()),
        (Some(second), Some("jobs/2"))
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(sub.0.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut sub.0), 0);
}
