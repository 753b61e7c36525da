//! The coordinator: splits the connections over processes, connects, measures the server,
//! publishes for the window, waits the grace period, collects, reports.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::{Config, ScenarioName, Target};
use crate::conn::LoopPlan;
use crate::group::{worker_main, ClientGroup, LocalGroup, Progress, WorkerGroup};
use crate::procstat;
use crate::publish::{NatsPublish, PublishPlan, PublishResult, Publisher};
use crate::report::{ClientProcess, ClientStats, Report, Scale, ServerStats, Storm};
use crate::scenario::{self, Scenario};
use crate::util::{human_count, unix_nanos};

/// Open files one process keeps for itself (stdio, poll, pipes, publishers).
pub const SPARE_FDS: u64 = 500;

/// From TCP connect to `subscribedEvents`, per connection.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one process may spend connecting `count` connections: at least 60 s, and
/// enough for 200 connections per second.
pub fn connect_cap(count: u64) -> Duration {
    Duration::from_secs(60.max(count / 200)) + ATTEMPT_TIMEOUT
}

/// scale: how long the coordinator lets the whole machine connect `total` connections:
/// at least 60 s, and enough for 1000 per second over all worker processes. (A worker's
/// share of a ramp shared by dozens of processes goes far slower than `connect_cap`
/// assumes for one process.)
pub fn scale_connect_cap(total: u64) -> Duration {
    Duration::from_secs(60.max(total / 1000)) + ATTEMPT_TIMEOUT
}

/// A scale worker's own bound on connecting: the coordinator ends the phase (its cap, or
/// memory running low) and a worker whose coordinator is gone sees EOF and stops, so this
/// only bounds a worker that nobody tells anything.
const SCALE_WORKER_CONNECT_CAP: Duration = Duration::from_secs(3600);

/// scale: connecting ends when no connection was subscribed for this long (a setup has
/// `ATTEMPT_TIMEOUT`; twice that without one success means the machine took no more).
const SCALE_STALL: Duration = Duration::from_secs(30);

pub fn loop_plan(
    cfg: &Config,
    scenario: Arc<dyn Scenario>,
    offset: u64,
    count: u64,
    inflight: usize,
) -> LoopPlan {
    LoopPlan {
        ws_addr: cfg.url.addr,
        host_header: cfg.url.host_header.clone(),
        ws_path: cfg.url.path.clone(),
        options_query: cfg.options_query(),
        compression: cfg.compression,
        auth: cfg.auth.clone(),
        token_ttl_secs: 3600 + cfg.duration.as_secs() + connect_cap(count).as_secs(),
        source_ips: cfg.source_ips.clone(),
        offset,
        count,
        threads: cfg.threads,
        inflight_per_thread: (inflight / cfg.threads).max(1),
        attempt_timeout: ATTEMPT_TIMEOUT,
        scenario,
        target: cfg.target,
        churn_rate: (cfg.scenario == ScenarioName::Churn).then_some(
            // this process's share of the cycle rate (a worker's --rate is its share)
            if cfg.worker_offset.is_some() {
                cfg.rate
            } else {
                cfg.rate * count as f64 / cfg.connections.max(1) as f64
            },
        ),
        window: cfg.duration,
        pause: cfg.pause,
        rcvbuf: cfg.rcvbuf,
        sockbuf: cfg.sockbuf,
        storm: cfg.storm,
    }
}

/// Entry for a `--worker` process.
pub fn worker(cfg: &Config) -> i32 {
    crate::net::raise_nofile_limit();
    let scenario: Arc<dyn Scenario> = scenario::build(cfg).into();
    let offset = cfg.worker_offset.unwrap_or(0);
    let plan = loop_plan(cfg, scenario, offset, cfg.connections, cfg.max_inflight);
    let cap = if cfg.scenario == ScenarioName::Scale {
        SCALE_WORKER_CONNECT_CAP
    } else {
        connect_cap(cfg.connections)
    };
    worker_main(plan, cap)
}

/// How the connections are spread: (processes, connections per process).
pub fn split(connections: u64, budget: u64) -> Vec<u64> {
    let procs = connections.div_ceil(budget.max(1)).max(1);
    let base = connections / procs;
    let extra = connections % procs;
    (0..procs).map(|i| base + u64::from(i < extra)).collect()
}

struct Ticker {
    started: Instant,
    last: Instant,
    last_delivered: u64,
    last_cycles: u64,
    requested: u64,
    churn: bool,
}

impl Ticker {
    fn new(requested: u64) -> Ticker {
        let now = Instant::now();
        Ticker {
            started: now,
            last: now,
            last_delivered: 0,
            last_cycles: 0,
            requested,
            churn: false,
        }
    }

    /// Prints the progress line once a second.
    fn tick(&mut self, phase: &str, p: &Progress, published: u64) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let rate = p.delivered.saturating_sub(self.last_delivered) as f64 / dt;
        let cycle_rate = p.cycles_completed.saturating_sub(self.last_cycles) as f64 / dt;
        self.last = now;
        self.last_delivered = p.delivered;
        self.last_cycles = p.cycles_completed;
        let mut err = std::io::stderr().lock();
        if self.churn {
            let _ = writeln!(
                err,
                "[{:>6.1}s] {phase:<10} cycles started {} completed {} failed {} | {}/s | in flight {}",
                now.duration_since(self.started).as_secs_f64(),
                p.cycles_started,
                p.cycles_completed,
                p.failed,
                human_count(cycle_rate),
                p.cycles_started
                    .saturating_sub(p.cycles_completed + p.failed)
            );
            return;
        }
        let _ = writeln!(
            err,
            "[{:>6.1}s] {phase:<10} connected {}/{} failed {} lost-conn {} | published {} | delivered {}/s (total {}) | dropped {}",
            now.duration_since(self.started).as_secs_f64(),
            p.ready,
            self.requested,
            p.failed,
            p.disconnected,
            published,
            human_count(rate),
            human_count(p.delivered as f64),
            p.dropped
        );
    }
}

fn progress(groups: &[Box<dyn ClientGroup>]) -> Progress {
    let mut p = Progress {
        connect_done: true,
        ..Progress::default()
    };
    for g in groups {
        p.add(&g.progress());
    }
    p
}

/// Runs a whole load test; returns the exit code.
pub fn run(cfg: &Config) -> i32 {
    for &pid in &cfg.server_pids {
        if let Err(e) = procstat::read_pid(pid) {
            eprintln!("loadtest: --server-pid {pid}: {e}");
            return 2;
        }
    }
    if cfg.scenario == ScenarioName::Entities {
        // HTTP writers only: no client groups, no publisher
        return crate::entities::run(cfg);
    }
    if cfg.scenario == ScenarioName::Soak {
        // every part of the mix at once, sampled: its own run
        return crate::soak::run(cfg);
    }
    if cfg.scenario == ScenarioName::Services {
        // service instances or lockers, and pipelined publishers: its own run
        return crate::services::run(cfg);
    }
    if cfg.scenario == ScenarioName::Stalls {
        // a fan-out and live-query creations in alternating phases: its own run
        return crate::scenario::stalls::run(cfg);
    }
    let scenario: Arc<dyn Scenario> = scenario::build(cfg).into();
    let limit = crate::net::raise_nofile_limit();
    let budget = cfg
        .fd_budget
        .unwrap_or_else(|| limit.saturating_sub(SPARE_FDS).max(1));
    let shares = split(cfg.connections, budget);
    let procs = shares.len();
    if cfg.source_ips.len() <= 1 && cfg.connections > 28_000 {
        eprintln!(
            "loadtest: warning: {} connections from one source address will run out of ports (~28k); use --source-ips",
            cfg.connections
        );
    }
    let inflight = (cfg.max_inflight / procs).max(1);
    let pids = &cfg.server_pids;
    let mut server = ServerStats::default();
    let before = procstat::sample(pids);
    server.rss_before = before.map(|s| s.rss_bytes);
    let is_scale = cfg.scenario == ScenarioName::Scale;
    let mut scale = is_scale.then(|| Scale {
        kernel_before: crate::kernel::sample(),
        ..Scale::default()
    });

    // start the client groups
    let mut groups: Vec<Box<dyn ClientGroup>> = Vec::new();
    if procs == 1 {
        let plan = loop_plan(cfg, Arc::clone(&scenario), 0, cfg.connections, inflight);
        groups.push(Box::new(LocalGroup::start(plan)));
    } else {
        eprintln!(
            "loadtest: {} connections over {procs} worker processes (at most {budget} open files each)",
            cfg.connections
        );
        let mut offset = 0;
        for (i, &share) in shares.iter().enumerate() {
            match WorkerGroup::spawn(
                format!("worker-{i}"),
                cfg.worker_args(offset, share, inflight),
                scenario.path_count(),
            ) {
                Ok(w) => groups.push(Box::new(w)),
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    for g in groups {
                        let _ = g.finish();
                    }
                    return 3;
                }
            }
            offset += share;
        }
    }
    let mut ticker = Ticker::new(cfg.connections);
    ticker.churn = cfg.scenario == ScenarioName::Churn;

    // connect phase
    let cap = if cfg.scenario == ScenarioName::Scale {
        scale_connect_cap(cfg.connections)
    } else {
        connect_cap(shares.iter().copied().max().unwrap_or(0)) + Duration::from_secs(10)
    };
    let connect_start = Instant::now();
    let mut ended_connect = false;
    // scale: the last time the subscribed count grew
    let (mut last_ready, mut grew) = (0u64, Instant::now());
    let connect_secs = loop {
        let p = progress(&groups);
        ticker.tick("connecting", &p, 0);
        if p.ready > last_ready {
            (last_ready, grew) = (p.ready, Instant::now());
        }
        if p.connect_done {
            break connect_start.elapsed().as_secs_f64();
        }
        let waited = connect_start.elapsed();
        if waited > cap && !ended_connect {
            eprintln!(
                "loadtest: connect phase took longer than {cap:?}, going on with what is connected"
            );
            for g in groups.iter_mut() {
                g.end_connect();
            }
            ended_connect = true;
            if let Some(sc) = scale.as_mut() {
                sc.connect_stopped = Some(format!("the connect phase's cap of {cap:?}"));
            }
        }
        // scale: a machine that stopped taking connections (every handshake times out)
        // is the measurement's end, not something to wait out until the cap: publish to
        // what is connected while it is still connected
        let mut stop_why = None;
        if is_scale && !ended_connect && grew.elapsed() >= SCALE_STALL {
            stop_why = Some(format!(
                "no connection subscribed for {}s, at {} ({} failed)",
                SCALE_STALL.as_secs(),
                p.ready,
                p.failed
            ));
        }
        // scale: the machine's memory is what runs out first; stop before it does
        if cfg.min_available > 0 && !ended_connect && stop_why.is_none() {
            if let Some(avail) = crate::kernel::mem_available().filter(|&a| a < cfg.min_available) {
                stop_why = Some(format!(
                    "MemAvailable {} MiB below --min-available-mib {} with {} subscribed",
                    avail >> 20,
                    cfg.min_available >> 20,
                    p.ready
                ));
            }
        }
        if let Some(why) = stop_why {
            eprintln!("loadtest: {why}: going on with what is connected");
            for g in groups.iter_mut() {
                g.end_connect();
            }
            ended_connect = true;
            if let Some(sc) = scale.as_mut() {
                sc.connect_stopped = Some(why);
            }
        }
        if waited > cap + Duration::from_secs(15) {
            eprintln!("loadtest: some client groups did not finish connecting; going on");
            break connect_start.elapsed().as_secs_f64();
        }
        // A storm's handshakes per second are timed by this loop: look often.
        std::thread::sleep(Duration::from_millis(if cfg.storm.is_some() {
            2
        } else {
            50
        }));
    };
    let mut subs = vec![0u64; scenario.path_count()];
    for g in &groups {
        for (a, b) in subs.iter_mut().zip(g.subs_per_path()) {
            *a += b;
        }
    }
    let connected = procstat::sample(pids);
    server.rss_connected = connected.map(|s| s.rss_bytes);
    // scale: the client processes' memory and the kernel's, with everything connected
    let client_rss: Vec<Option<u64>> = groups
        .iter()
        .map(|g| procstat::read_pid(g.pid()).ok().map(|(_, rss)| rss))
        .collect();
    if let Some(sc) = scale.as_mut() {
        sc.connect_secs = connect_secs;
        sc.kernel_connected = crate::kernel::sample();
        sc.server_open_files = pids
            .iter()
            .filter_map(|&pid| procstat::open_files(pid).map(|n| (pid, n)))
            .collect();
    }
    let p = progress(&groups);
    if !ticker.churn {
        eprintln!(
            "loadtest: {} of {} connections subscribed in {:.1}s ({} failed)",
            p.ready,
            cfg.connections,
            connect_start.elapsed().as_secs_f64(),
            p.failed
        );
    }

    // window: publish (or hold, for idle)
    let window_start = procstat::sample(pids);
    server.rss_window_start = window_start.map(|s| s.rss_bytes);
    let window_t0 = Instant::now();
    let window_t0_ns = unix_nanos();
    for g in groups.iter_mut() {
        g.window_start(window_t0_ns);
    }
    let publisher = if scenario.publishes() && cfg.rate > 0.0 && !cfg.duration.is_zero() {
        Some(Publisher::start(PublishPlan {
            http: cfg.http.clone(),
            api_key: cfg.api_key.clone().unwrap_or_default(),
            rate: cfg.rate,
            duration: cfg.duration,
            payload: cfg.payload,
            scenario: Arc::clone(&scenario),
            nats: (cfg.target == Target::Nats).then(|| match &cfg.nats {
                Some(e) => NatsPublish::Tcp(e.addr),
                None => NatsPublish::WebSocket(cfg.url.clone()),
            }),
        }))
    } else {
        None
    };
    let published_now = |p: &Option<Publisher>| p.as_ref().map_or(0, Publisher::published);
    let phase = if scenario.publishes() {
        "publishing"
    } else if ticker.churn {
        "cycling"
    } else {
        "holding"
    };
    while window_t0.elapsed() < cfg.duration {
        let p = progress(&groups);
        ticker.tick(phase, &p, published_now(&publisher));
        std::thread::sleep(
            Duration::from_millis(50).min(cfg.duration.saturating_sub(window_t0.elapsed())),
        );
    }
    let window_end_ns = unix_nanos();
    let publish_window = window_t0.elapsed();
    for g in groups.iter_mut() {
        g.window_end();
    }
    let pubres: PublishResult = match publisher {
        // the schedule ends with the window; a request in flight finishes (bounded by the
        // publisher's I/O timeout)
        Some(p) => p.finish(false),
        None => PublishResult {
            published_per_path: vec![0; scenario.path_count()],
            ..PublishResult::default()
        },
    };
    // churn: the server's work for the cycles in flight at the end of the window belongs
    // to the window too; wait (bounded) until they are done before reading its CPU
    if ticker.churn {
        let g0 = Instant::now();
        // workers report every 250 ms: only a report from after the window counts
        let fresh = if procs > 1 {
            Duration::from_millis(600)
        } else {
            Duration::ZERO
        };
        while g0.elapsed() < ATTEMPT_TIMEOUT + Duration::from_secs(1) {
            let p = progress(&groups);
            ticker.tick("finishing", &p, 0);
            if p.cycles_completed + p.failed >= p.cycles_started && g0.elapsed() >= fresh {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let window_end = procstat::sample(pids);
    server.rss_window_end = window_end.map(|s| s.rss_bytes);

    // grace: deliveries still in flight
    let published = pubres.published();
    let expected_now = scenario.expected(&pubres.published_per_path, &subs);
    if published > 0 {
        let (grace, limit) = (cfg.grace(), cfg.grace_limit());
        let g0 = Instant::now();
        let (mut seen, mut moved) = (0u64, Instant::now());
        loop {
            let p = progress(&groups);
            ticker.tick("grace", &p, published);
            let arrived = p.delivered + p.dropped;
            if arrived >= expected_now {
                break;
            }
            if arrived > seen {
                (seen, moved) = (arrived, Instant::now());
            }
            if grace_over(g0.elapsed(), moved.elapsed(), grace, limit) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // server CPU: the window and the grace period (deliveries that lag behind the window
    // are work for the publications of the window; the grace ends once all arrived)
    let cpu_end = if published > 0 {
        procstat::sample(pids)
    } else {
        window_end
    };
    if let (Some(a), Some(b)) = (window_start, cpu_end) {
        server.cpu_seconds = Some((b.cpu_seconds - a.cpu_seconds).max(0.0));
    }

    // collect
    let mut clients = ClientStats::new(scenario.path_count());
    let mut collect_failed = false;
    for g in groups.iter_mut() {
        g.stop();
    }
    for (g, rss_bytes) in groups.into_iter().zip(client_rss) {
        let pid = g.pid();
        match g.finish() {
            Ok(s) => {
                if let Some(sc) = scale.as_mut() {
                    sc.processes.push(ClientProcess {
                        pid,
                        ready: s.ready,
                        delivered: s.delivered,
                        rss_bytes,
                        reach_us: (!s.latency.is_empty()).then(|| s.latency.max()),
                    });
                }
                clients.merge(&s)
            }
            Err(e) => {
                eprintln!("loadtest: {e}");
                collect_failed = true;
            }
        }
    }
    if let Some(sc) = scale.as_mut() {
        sc.failed = clients.failed;
        sc.disconnected = clients.disconnected;
    }
    // subscribers that took part: the final per-path counts (connecting ended before the
    // window, so these are the subscribers publications could reach)
    let expected = scenario.expected(&pubres.published_per_path, &clients.subs_per_path);
    let last = clients.last_delivery_ns.max(window_end_ns);
    let delivery_window_secs = if scenario.publishes() {
        last.saturating_sub(window_t0_ns) as f64 / 1e9
    } else {
        0.0
    };
    // An overflow run that overflowed nothing proved nothing about the accounting: fail it.
    let nothing_overflowed = scenario.name() == "overflow" && report_dropped_hint(&clients);
    if nothing_overflowed {
        eprintln!(
            "loadtest: overflow: FAILED: nothing overflowed (no QUEUE_OVERFLOW warning), so the \
             drop accounting was not exercised. A paused reader's events went into the kernel's \
             buffers (its SO_RCVBUF and the server's socket send buffer, up to \
             net.ipv4.tcp_wmem's maximum, 4 MiB by default) and none reached the server's \
             queue: raise --payload, --rate or --pause-ms, or lower the server's \
             delivery.queue_capacity (e.g. SHARDCAST_DELIVERY__QUEUE_CAPACITY=200)"
        );
    }
    let report = Report {
        scenario: scenario.name().to_string(),
        target: cfg.target.as_str().to_string(),
        requested: if ticker.churn {
            clients.requested
        } else {
            cfg.connections
        },
        clients,
        published,
        publish_errors: pubres.errors,
        expected,
        delivery_window_secs,
        publish_window_secs: publish_window.as_secs_f64(),
        server,
        processes: procs,
        loadtest_cpu_seconds: procstat::self_cpu_seconds(),
        cycles_scheduled: if ticker.churn {
            // cycle k is due at k/rate, the first at 0, the last before the window's end
            (cfg.duration.as_secs_f64() * cfg.rate).ceil() as u64
        } else {
            0
        },
        storm: cfg.storm.map(|(step, every)| Storm {
            step,
            every,
            connect_secs,
            server_cpu_seconds: match (before, connected) {
                (Some(a), Some(b)) => Some((b.cpu_seconds - a.cpu_seconds).max(0.0)),
                _ => None,
            },
        }),
        scale,
    };
    let _ = report.print_table(&mut std::io::stderr().lock());
    if let Some(path) = &cfg.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("loadtest: --json {}: {e}", path.display());
            return 3;
        }
    }
    if report.healthy() && !collect_failed && !nothing_overflowed {
        0
    } else {
        1
    }
}

fn report_dropped_hint(c: &ClientStats) -> bool {
    c.dropped_reported == 0 && c.slow_readers > 0
}

/// Whether the grace period is over, `elapsed` into it with the last delivery `idle` ago:
/// at `grace`, unless deliveries arrived within the last second (then they are still
/// coming, not lost), and at `limit` in any case, so a run always ends by itself.
fn grace_over(elapsed: Duration, idle: Duration, grace: Duration, limit: Duration) -> bool {
    elapsed >= limit || (elapsed >= grace && idle >= Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        assert_eq!(split(100, 19_500), vec![100]);
        assert_eq!(split(19_500, 19_500), vec![19_500]);
        assert_eq!(split(19_501, 19_500), vec![9_751, 9_750]);
        assert_eq!(
            split(100_000, 19_500),
            vec![16_667, 16_667, 16_667, 16_667, 16_666, 16_666]
        );
        assert_eq!(split(10, 3).iter().sum::<u64>(), 10);
        assert!(split(10, 3).iter().all(|&s| s <= 3));
    }

    #[test]
    fn caps() {
        assert_eq!(connect_cap(1000), Duration::from_secs(75));
        assert_eq!(connect_cap(100_000), Duration::from_secs(515));
        assert_eq!(scale_connect_cap(10_000), Duration::from_secs(75));
        assert_eq!(scale_connect_cap(1_000_000), Duration::from_secs(1015));
    }

    #[test]
    fn grace_stretches_only_while_deliveries_arrive() {
        let s = Duration::from_secs;
        let (grace, limit) = (s(2), s(20));
        // Within the grace period: never over.
        assert!(!grace_over(s(1), s(5), grace, limit));
        // Past it: over once nothing arrived for a second.
        assert!(grace_over(s(3), s(1), grace, limit));
        assert!(!grace_over(s(3), Duration::from_millis(200), grace, limit));
        // Still arriving at the limit: over anyway.
        assert!(grace_over(s(20), Duration::ZERO, grace, limit));
    }
}
