//! Groups of client connections the coordinator drives the same way: the event-loop
//! threads of this process (`LocalGroup`), or a worker process re-executing this binary
//! with `--worker` (`WorkerGroup`) when one process may not hold enough open files.
//!
//! Worker protocol (one JSON object per line):
//!   worker → parent, stdout: {"kind":"progress",...} every 250 ms,
//!                            {"kind":"ready","subs_per_path":[...]} once connecting is over,
//!                            {"kind":"result","stats":{...}} at the end;
//!   parent → worker, stdin:  "end-connect" (give up on connections still being set up),
//!                            "window <unix nanos>" (the window opened then: churn
//!                            starts cycling),
//!                            "window-end" (churn stops, slow readers read normally),
//!                            "stop" (close everything and answer the result); EOF = stop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::conn::{run_thread, Control, Live, LoopPlan};
use crate::report::ClientStats;

/// A snapshot for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub ready: u64,
    pub failed: u64,
    pub disconnected: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub last_delivery_ns: u64,
    pub cycles_started: u64,
    pub cycles_completed: u64,
    pub connect_done: bool,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.ready += o.ready;
        self.failed += o.failed;
        self.disconnected += o.disconnected;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.cycles_started += o.cycles_started;
        self.cycles_completed += o.cycles_completed;
        self.connect_done &= o.connect_done;
    }

    fn to_json(self) -> Value {
        json!({
            "kind": "progress",
            "ready": self.ready,
            "failed": self.failed,
            "disconnected": self.disconnected,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "last_delivery_ns": self.last_delivery_ns,
            "cycles_started": self.cycles_started,
            "cycles_completed": self.cycles_completed,
            "connect_done": self.connect_done,
        })
    }

    fn from_json(v: &Value) -> Progress {
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Progress {
            ready: u("ready"),
            failed: u("failed"),
            disconnected: u("disconnected"),
            delivered: u("delivered"),
            dropped: u("dropped"),
            last_delivery_ns: u("last_delivery_ns"),
            cycles_started: u("cycles_started"),
            cycles_completed: u("cycles_completed"),
            connect_done: v
                .get("connect_done")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

pub trait ClientGroup {
    fn progress(&self) -> Progress;
    /// Subscribers per path; meaningful once `progress().connect_done`.
    fn subs_per_path(&self) -> Vec<u64>;
    /// Give up on connections still being set up.
    fn end_connect(&mut self);
    /// The window opened at `unix_ns` (churn starts its cycles).
    fn window_start(&mut self, unix_ns: u64);
    /// The window is over (churn stops, slow readers read normally).
    fn window_end(&mut self);
    /// Start closing everything without waiting, so that many worker processes close
    /// their connections at the same time rather than one after the other in `finish`.
    fn stop(&mut self) {}
    /// Close everything and collect the results.
    fn finish(self: Box<Self>) -> Result<ClientStats, String>;
    /// The process holding the group's sockets (its RSS is the client side's memory).
    fn pid(&self) -> u32;
}

/// The event-loop threads of this process.
pub struct LocalGroup {
    ctl: Arc<Control>,
    lives: Vec<Arc<Live>>,
    handles: Vec<JoinHandle<ClientStats>>,
    paths: usize,
}

impl LocalGroup {
    pub fn start(plan: LoopPlan) -> LocalGroup {
        let paths = plan.scenario.path_count();
        let threads = plan.threads;
        let plan = Arc::new(plan);
        let ctl = Arc::new(Control::default());
        let mut lives = Vec::new();
        let mut handles = Vec::new();
        for t in 0..threads {
            let live = Arc::new(Live::default());
            lives.push(Arc::clone(&live));
            let (plan, ctl) = (Arc::clone(&plan), Arc::clone(&ctl));
            handles.push(
                std::thread::Builder::new()
                    .name(format!("clients-{t}"))
                    .spawn(move || run_thread(plan, t, live, ctl))
                    .expect("spawn a client thread"),
            );
        }
        LocalGroup {
            ctl,
            lives,
            handles,
            paths,
        }
    }

    pub fn stop_flag(&self) -> Arc<Control> {
        Arc::clone(&self.ctl)
    }
}

impl ClientGroup for LocalGroup {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn progress(&self) -> Progress {
        let mut p = Progress {
            connect_done: true,
            ..Progress::default()
        };
        for l in &self.lives {
            p.add(&Progress {
                ready: l.ready.load(Relaxed),
                failed: l.failed.load(Relaxed),
                disconnected: l.disconnected.load(Relaxed),
                delivered: l.delivered.load(Relaxed),
                dropped: l.dropped.load(Relaxed),
                last_delivery_ns: l.last_delivery_ns.load(Relaxed),
                cycles_started: l.cycles_started.load(Relaxed),
                cycles_completed: l.cycles_completed.load(Relaxed),
                connect_done: l.connect_done.load(Relaxed),
            });
        }
        p
    }

    fn subs_per_path(&self) -> Vec<u64> {
        let mut out = vec![0; self.paths];
        for l in &self.lives {
            for (a, b) in out
                .iter_mut()
                .zip(l.subs_per_path.lock().expect("not poisoned").iter())
            {
                *a += b;
            }
        }
        out
    }

    fn end_connect(&mut self) {
        self.ctl.end_connect.store(true, Relaxed);
    }

    fn window_start(&mut self, unix_ns: u64) {
        self.ctl.window_start_ns.store(unix_ns.max(1), Relaxed);
    }

    fn window_end(&mut self) {
        self.ctl.window_over.store(true, Relaxed);
    }

    fn finish(self: Box<Self>) -> Result<ClientStats, String> {
        self.ctl.stop.store(true, Relaxed);
        let mut total = ClientStats::new(self.paths);
        for h in self.handles {
            let s = h
                .join()
                .map_err(|_| "a client thread panicked".to_string())?;
            total.merge(&s);
        }
        Ok(total)
    }
}

#[derive(Default)]
struct WorkerState {
    progress: Progress,
    subs: Option<Vec<u64>>,
    result: Option<Result<ClientStats, String>>,
    exited: bool,
}

/// A worker process holding a share of the connections.
pub struct WorkerGroup {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<Mutex<WorkerState>>,
    paths: usize,
}

impl WorkerGroup {
    pub fn spawn(name: String, args: Vec<String>, paths: usize) -> Result<WorkerGroup, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let mut child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let state = Arc::new(Mutex::new(WorkerState::default()));
        let st = Arc::clone(&state);
        let wname = name.clone();
        std::thread::Builder::new()
            .name(format!("{name}-reader"))
            .spawn(move || {
                let reader = BufReader::new(stdout);
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        eprintln!("loadtest: {wname}: unexpected output: {line}");
                        continue;
                    };
                    let mut s = st.lock().expect("not poisoned");
                    match v.get("kind").and_then(Value::as_str) {
                        Some("progress") => s.progress = Progress::from_json(&v),
                        Some("ready") => {
                            s.subs = Some(
                                v.get("subs_per_path")
                                    .and_then(Value::as_array)
                                    .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                                    .unwrap_or_default(),
                            );
                            s.progress.connect_done = true;
                        }
                        Some("result") => {
                            s.result = Some(ClientStats::from_json(&v["stats"]));
                        }
                        _ => eprintln!("loadtest: {wname}: unexpected output: {line}"),
                    }
                }
                st.lock().expect("not poisoned").exited = true;
            })
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        Ok(WorkerGroup {
            name,
            child,
            stdin,
            state,
            paths,
        })
    }

    fn tell(&mut self, line: &str) {
        if let Some(w) = self.stdin.as_mut() {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }
}

impl ClientGroup for WorkerGroup {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn progress(&self) -> Progress {
        let s = self.state.lock().expect("not poisoned");
        let mut p = s.progress;
        // a worker that died is not going to finish connecting
        p.connect_done |= s.exited;
        p
    }

    fn subs_per_path(&self) -> Vec<u64> {
        let s = self.state.lock().expect("not poisoned");
        s.subs.clone().unwrap_or_else(|| vec![0; self.paths])
    }

    fn end_connect(&mut self) {
        self.tell("end-connect");
    }

    fn window_start(&mut self, unix_ns: u64) {
        self.tell(&format!("window {unix_ns}"));
    }

    fn window_end(&mut self) {
        self.tell("window-end");
    }

    fn stop(&mut self) {
        self.tell("stop");
    }

    fn finish(mut self: Box<Self>) -> Result<ClientStats, String> {
        self.tell("stop");
        self.stdin = None; // EOF as well
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let s = self.state.lock().expect("not poisoned");
                if s.exited || s.result.is_some() {
                    break;
                }
            }
            if Instant::now() > deadline {
                eprintln!("loadtest: {} did not answer in 30 s, killing it", self.name);
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait();
        let mut s = self.state.lock().expect("not poisoned");
        match s.result.take() {
            Some(r) => r.map_err(|e| format!("{}: bad result: {e}", self.name)),
            None => Err(format!(
                "{} ended without a result ({})",
                self.name,
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            )),
        }
    }
}

/// The worker side: runs this process's share and talks to the parent over stdio.
/// Returns the process exit code.
pub fn worker_main(plan: LoopPlan, connect_cap: Duration) -> i32 {
    let group = LocalGroup::start(plan);
    let ctl = group.stop_flag();
    // commands from the parent
    let cmd_ctl = Arc::clone(&ctl);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match line.trim() {
                    "end-connect" => cmd_ctl.end_connect.store(true, Relaxed),
                    "window-end" => cmd_ctl.window_over.store(true, Relaxed),
                    "stop" => break,
                    other => match other.strip_prefix("window ").map(str::parse::<u64>) {
                        Some(Ok(ns)) => cmd_ctl.window_start_ns.store(ns.max(1), Relaxed),
                        _ => eprintln!("loadtest worker: unknown command {other:?}"),
                    },
                },
            }
        }
        cmd_ctl.stop.store(true, Relaxed);
    });
    let started = Instant::now();
    let mut ready_sent = false;
    let emit = |v: Value| {
        let mut out = std::io::stdout().lock();
        let ok = writeln!(out, "{v}").and_then(|_| out.flush());
        ok.is_ok()
    };
    loop {
        let p = group.progress();
        if !emit(p.to_json()) {
            break; // parent gone
        }
        if p.connect_done && !ready_sent {
            ready_sent = true;
            emit(json!({"kind": "ready", "subs_per_path": group.subs_per_path()}));
        }
        if !p.connect_done && started.elapsed() > connect_cap {
            ctl.end_connect.store(true, Relaxed);
        }
        if ctl.stop.load(Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let g: Box<dyn ClientGroup> = Box::new(group);
    match g.finish() {
        Ok(stats) => {
            emit(json!({"kind": "result", "stats": stats.to_json()}));
            0
        }
        Err(e) => {
            eprintln!("loadtest worker: {e}");
            3
        }
    }
}
