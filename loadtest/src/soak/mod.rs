//! Scenario soak: the whole mix at once for `--duration`, sampled every
//! `--sample-every`, with checks at the end that nothing acknowledged was lost and that
//! nothing grew without bound.
//!
//! The mix, each part on its own paths so that its accounting stays exact:
//!
//! * fan-out: `--connections` subscribers over `--paths` paths `soak/fan/p{i}`, a
//!   publisher at `--rate` round robin over them
//!   (the client loop of `crate::conn`, the publisher of `crate::publish`);
//! * slow readers: `--slow-conns` connections of `soak/slow` reading `--slow-read-rate`
//!   bytes per second (blocking threads in [`clients`]), beside as many fast readers in
//!   the client loop, fed large publications at `--slow-rate`: the slow readers'
//!   `QUEUE_OVERFLOW` warnings must account for everything they did not get, and the fast
//!   readers must get everything;
//! * churn: connection cycles at `--churn-rate` (churn's cycles);
//! * filtered subscriptions, live queries, entity writes, service instances and the task
//!   publisher: blocking threads in [`clients`].
//!
//! [`series`] holds the samples, the growth rule and the table; [`cluster`] where each
//! part runs when the soak is given several nodes (`--nodes`). The run owns the order:
//! connect everything, open the window, sample, close the window, wait (bounded) for
//! what is in flight, check, report.

pub mod clients;
pub mod cluster;
pub mod series;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::{Auth, Config, SoakNode, Target};
use crate::conn::LoopPlan;
use crate::group::{ClientGroup, LocalGroup};
use crate::procstat;
use crate::publish::{PublishPlan, PublishResult, Publisher};
use crate::report::ClientStats;
use crate::run::{connect_cap, ATTEMPT_TIMEOUT, SPARE_FDS};
use crate::scenario::services::parse_group_stats;
use crate::scenario::{Scenario, SoakPart};
use crate::util::{human_bytes, human_count};
use clients::{Counters, Ctx, Errors, Flags, LqSet, TaskBook};
use cluster::{Multi, NodeFan, Placement, Publishers};
use series::{Sample, NODE_RULES, RULES};

/// After the window: how long the run waits at most for deliveries in flight, the task
/// queue to drain, and the live queries to agree with the REST answer.
const SETTLE: Duration = Duration::from_secs(60);

fn loop_plan(
    cfg: &Config,
    node: &SoakNode,
    part: Arc<dyn Scenario>,
    offset: u64,
    count: u64,
    options: &str,
    churn: Option<f64>,
) -> LoopPlan {
    LoopPlan {
        ws_addr: node.ws.addr,
        host_header: node.ws.host_header.clone(),
        ws_path: node.ws.path.clone(),
        options_query: options.to_string(),
        compression: false,
        auth: cfg.auth.clone(),
        token_ttl_secs: 3600 + cfg.duration.as_secs() + connect_cap(count).as_secs(),
        source_ips: Vec::new(),
        offset,
        count,
        threads: 1,
        inflight_per_thread: 200,
        attempt_timeout: ATTEMPT_TIMEOUT,
        scenario: part,
        target: Target::Shardcast,
        churn_rate: churn,
        window: cfg.duration,
        pause: cfg.pause,
        rcvbuf: cfg.rcvbuf,
        sockbuf: None,
        storm: None,
    }
}

/// The connection options every soak connection sends, as the Rust client's type (the
/// live-query part connects with it) and, derived from it, as the URL query the
/// harness's own loops send.
fn connection_options(cfg: &Config) -> shardcast_client::ConnectionOptions {
    shardcast_client::ConnectionOptions {
        batch_ms: Some(cfg.soak.batch_ms),
        batch_max: cfg.batch_max,
        framing: cfg.framing.map(|f| match f {
            crate::cli::Framing::Frames => shardcast_client::Framing::Frames,
            crate::cli::Framing::Array => shardcast_client::Framing::Array,
        }),
        group: None,
    }
}

/// `options` as a URL query (`batchMs=..&batchMax=..&framing=..`).
fn options_query(options: &shardcast_client::ConnectionOptions) -> String {
    let pairs = options.query_pairs();
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// Open files this process needs: every connection, publisher and spare (per node: a
/// churn group of at least 10 in flight, a live-query connection, the publishers).
fn fds_needed(cfg: &Config, nodes: u64) -> u64 {
    let o = &cfg.soak;
    o.connections
        + 2 * o.slow_conns
        + o.churn_inflight
        + o.filtered.div_ceil(clients::FILTERS_PER_CONN)
        + 1
        + o.instances
        + 16
        + 20 * (nodes - 1)
}

/// `ctx` talking to `node`.
fn on(ctx: &Ctx, node: &SoakNode) -> Ctx {
    let mut c = ctx.clone();
    c.ws = node.ws.clone();
    c.http = node.http.clone();
    c
}

struct Parts {
    fan: Box<dyn ClientGroup>,
    slow: Box<dyn ClientGroup>,
    churn: Box<dyn ClientGroup>,
}

/// Everything one sample reads.
struct Sampler<'a> {
    cfg: &'a Config,
    ctx: &'a Ctx,
    /// Per node: its context (`/metrics`) and the pids measured as that node (one server:
    /// every `--server-pid`, summed).
    nodes: Vec<(Ctx, Vec<u32>)>,
    t0: Instant,
    /// Per node: its CPU seconds when the window opened.
    cpu0: Vec<Option<f64>>,
}

impl Sampler<'_> {
    fn new<'a>(cfg: &'a Config, ctx: &'a Ctx, nodes: &[Ctx]) -> Sampler<'a> {
        let cluster = nodes.len() > 1;
        let nodes: Vec<(Ctx, Vec<u32>)> = nodes
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let pids = if cluster {
                    cfg.server_pids.get(k).map(|p| vec![*p]).unwrap_or_default()
                } else {
                    cfg.server_pids.clone()
                };
                (c.clone(), pids)
            })
            .collect();
        let cpu0 = nodes
            .iter()
            .map(|(_, pids)| procstat::sample(pids).map(|s| s.cpu_seconds))
            .collect();
        Sampler {
            cfg,
            ctx,
            nodes,
            t0: Instant::now(),
            cpu0,
        }
    }

    /// One node's process and `/metrics` (no harness counters, no store).
    fn take_node(&self, k: usize, t: f64) -> Sample {
        let (ctx, pids) = &self.nodes[k];
        let ps = procstat::sample(pids);
        let open_files = if pids.is_empty() {
            None
        } else {
            pids.iter()
                .map(|&p| series::open_files(p))
                .sum::<Option<u64>>()
        };
        let metrics = match ctx.http("GET", "/metrics", b"") {
            Ok((200, body)) => {
                series::parse_metrics(&String::from_utf8_lossy(&body), series::METRICS)
            }
            Ok((s, _)) => {
                clients::count_error(&self.ctx.errors, format!("GET /metrics: HTTP {s}"));
                BTreeMap::new()
            }
            Err(e) => {
                clients::count_error(&self.ctx.errors, format!("GET /metrics: {e}"));
                BTreeMap::new()
            }
        };
        Sample {
            t,
            rss_bytes: ps.map(|p| p.rss_bytes),
            open_files,
            cpu_seconds: match (ps, self.cpu0[k]) {
                (Some(p), Some(c0)) => Some(p.cpu_seconds - c0),
                _ => None,
            },
            metrics,
            ..Sample::default()
        }
    }

    fn take(&self, parts: &Parts, pubs: &[&Publishers]) -> Sample {
        let t = self.t0.elapsed().as_secs_f64();
        let per_node: Vec<Sample> = (0..self.nodes.len())
            .map(|k| self.take_node(k, t))
            .collect();
        let store = self.cfg.soak.data_dir.as_ref().and_then(|d| {
            series::dir_bytes(d)
                .map_err(|e| {
                    clients::count_error(&self.ctx.errors, format!("--data-dir: {e}"));
                })
                .ok()
        });
        let (f, s, c) = (
            parts.fan.progress(),
            parts.slow.progress(),
            parts.churn.progress(),
        );
        let k = &self.ctx.counters;
        let get = |a: &AtomicU64| a.load(Relaxed);
        let published: u64 = pubs.iter().map(|p| p.published()).sum();
        let mut h = BTreeMap::new();
        h.insert("published", published);
        h.insert(
            "delivered",
            f.delivered + s.delivered + get(&k.slow_delivered) + get(&k.filtered_delivered),
        );
        h.insert(
            "overflow_dropped",
            f.dropped + s.dropped + get(&k.slow_dropped) + get(&k.filtered_dropped),
        );
        h.insert("churn_cycles", c.cycles_completed);
        h.insert("churn_failed", c.failed);
        h.insert("filtered_delivered", get(&k.filtered_delivered));
        h.insert("entity_writes", get(&k.entity_writes));
        h.insert(
            "live_query_updates",
            get(&k.lq_added) + get(&k.lq_updated) + get(&k.lq_removed),
        );
        h.insert("tasks_enqueued", get(&k.tasks_acknowledged));
        h.insert("tasks_completed", get(&k.tasks_received));
        h.insert("errors", get(&k.publish_failures) + get(&k.client_failures));
        // the cluster's (or the one server's) sample: the nodes summed
        let mut total = series::sum_nodes(&per_node);
        total.t = t;
        total.store_bytes = store.map(|s| s.0);
        total.store_allocated_bytes = store.map(|s| s.1);
        total.harness = h;
        if per_node.len() > 1 {
            total.nodes = per_node;
        }
        total
    }
}

fn progress_line(s: &Sample) {
    let h = |k: &str| s.harness.get(k).copied().unwrap_or(0);
    eprintln!(
        "[{:>7.1}s] soak rss {} files {} store {} | delivered {} dropped {} | churn {} | tasks {}/{} | entities {} lq {} | errors {}",
        s.t,
        s.rss_bytes.map_or("-".into(), |b| human_bytes(b as f64)),
        s.open_files.map_or("-".into(), |n| n.to_string()),
        s.store_bytes.map_or("-".into(), |b| human_bytes(b as f64)),
        human_count(h("delivered") as f64),
        h("overflow_dropped"),
        h("churn_cycles"),
        h("tasks_completed"),
        h("tasks_enqueued"),
        h("entity_writes"),
        h("live_query_updates"),
        h("errors"),
    );
}

fn group_stats(ctx: &Ctx, group: &str) -> Option<(u64, u64)> {
    let (s, b) = ctx.http("GET", "/api/v1/services", b"").ok()?;
    if s != 200 {
        return None;
    }
    let g = parse_group_stats(&b, group).ok()?;
    Some(g.map_or((0, 0), |g| (g.pending, g.in_flight)))
}

/// One check of the final verdict.
fn check(checks: &mut Vec<Value>, name: &str, ok: bool, detail: String) {
    if !ok {
        eprintln!("loadtest: soak: FAILED {name}: {detail}");
    }
    checks.push(json!({"name": name, "ok": ok, "detail": detail}));
}

/// Close codes of the connections the server closed, by code (1006: no close frame).
fn close_codes(c: &ClientStats) -> BTreeMap<String, u64> {
    c.close_codes
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

fn lost(expected: u64, delivered: u64, dropped: u64) -> i64 {
    expected as i64 - delivered as i64 - dropped as i64
}

/// How long after every client left a node is watched, and from when.
const QUIET_AFTER: Duration = Duration::from_secs(2);
const QUIET_FOR: Duration = Duration::from_secs(5);
/// A node with nothing to do spends well below this share of a core (its reader's
/// blocking read and the registration renewed each second).
const QUIET_CPU_PCT: f64 = 10.0;

/// One node once every client has left: its CPU over [`QUIET_FOR`] (with its pid) and
/// how many of its `/readyz` answers were not 200.
struct Quiet {
    cpu_pct: Option<f64>,
    not_ready: u64,
    polls: u64,
}

impl Quiet {
    fn quiet(&self) -> bool {
        self.not_ready == 0 && self.cpu_pct.is_none_or(|c| c < QUIET_CPU_PCT)
    }

    fn to_json(&self) -> Value {
        json!({
            "cpu_pct": self.cpu_pct.map(|c| (c * 10.0).round() / 10.0),
            "readyz_not_200": self.not_ready,
            "readyz_polls": self.polls,
            "quiet": self.quiet(),
        })
    }
}

/// Cluster mode, after everything is closed: each node should be idle and ready. A node
/// that keeps working (e.g. a Redis connection it drops and opens again in a loop) shows
/// here and not in the end checks, which all ran before the clients left. Warns on
/// stderr for every node that is not quiet.
fn quiet_after_close(sampler: &Sampler) -> Vec<Quiet> {
    std::thread::sleep(QUIET_AFTER);
    let cpu = |pids: &Vec<u32>| procstat::sample(pids).map(|s| s.cpu_seconds);
    let start = Instant::now();
    let cpu0: Vec<Option<f64>> = sampler.nodes.iter().map(|(_, p)| cpu(p)).collect();
    let mut out: Vec<Quiet> = sampler
        .nodes
        .iter()
        .map(|_| Quiet {
            cpu_pct: None,
            not_ready: 0,
            polls: 0,
        })
        .collect();
    while start.elapsed() < QUIET_FOR {
        for ((c, _), q) in sampler.nodes.iter().zip(out.iter_mut()) {
            q.polls += 1;
            if !matches!(c.http("GET", "/readyz", b""), Ok((200, _))) {
                q.not_ready += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = start.elapsed().as_secs_f64();
    for (k, (((_, pids), q), c0)) in sampler.nodes.iter().zip(&mut out).zip(cpu0).enumerate() {
        q.cpu_pct = match (cpu(pids), c0) {
            (Some(b), Some(a)) => Some((b - a) / secs * 100.0),
            _ => None,
        };
        if !q.quiet() {
            eprintln!(
                "loadtest: soak: WARNING node {k} is not quiet after every client left: {:.0}% of a core over {secs:.1}s, /readyz not 200 in {} of {} polls",
                q.cpu_pct.unwrap_or(f64::NAN),
                q.not_ready,
                q.polls
            );
        }
    }
    out
}

/// Runs the soak; returns the exit code.
/// A growth verdict as the progress log states it.
fn growth_text(v: &series::Verdict) -> String {
    match (v.q2, v.q4) {
        (None, _) => "not enough samples".to_string(),
        _ if v.grew => "GROWS".to_string(),
        (Some(q2), q4) => format!(
            "bounded (q2 median {q2:.0}, q4 median {:.0})",
            q4.unwrap_or(0.0)
        ),
    }
}

pub fn run(cfg: &Config) -> i32 {
    let o = &cfg.soak;
    let Auth::Secret(secret) = &cfg.auth else {
        eprintln!("loadtest: soak needs --secret");
        return 2;
    };
    let nodes = cluster::nodes_of(cfg);
    let n = nodes.len();
    let place = Placement { nodes: n };
    if n > 1 && o.paths < n as u64 {
        eprintln!(
            "loadtest: soak: --paths {} is fewer than the {n} nodes: every node needs fan-out paths of its own",
            o.paths
        );
        return 2;
    }
    let limit = crate::net::raise_nofile_limit();
    let need = fds_needed(cfg, n as u64);
    if need + SPARE_FDS > limit {
        eprintln!(
            "loadtest: soak needs about {need} open files (+{SPARE_FDS} spare) and may open {limit}: lower --connections or --scale"
        );
        return 2;
    }
    if cfg.server_pids.is_empty() {
        eprintln!("loadtest: soak: warning: without --server-pid there is no RSS, CPU or open-files series");
    }
    if o.data_dir.is_none() && n == 1 {
        eprintln!("loadtest: soak: warning: without --data-dir there is no store size series");
    }
    let client_options = connection_options(cfg);
    let options = options_query(&client_options);
    let errors: Errors = Arc::default();
    let ctx = Ctx {
        ws: nodes[0].ws.clone(),
        http: nodes[0].http.clone(),
        api_key: cfg.api_key.clone().unwrap_or_default(),
        secret: secret.clone(),
        options: options.clone(),
        client_options,
        token_ttl: 3600 + cfg.duration.as_secs() + 600,
        flags: Arc::new(Flags::default()),
        counters: Arc::new(Counters::default()),
        errors: Arc::clone(&errors),
    };
    // the same run talking to each node
    let node_ctx: Vec<Ctx> = nodes.iter().map(|nd| on(&ctx, nd)).collect();
    eprintln!(
        "loadtest: soak for {:.0}s: {} fan-out subscribers on {} paths at {}/s, {} slow + {} fast readers at {}/s x {} B, churn {}/s, {} filtered subscriptions at {}/s, {} live queries over {} entities at {} writes/s, {} instances of group {:?} at {} tasks/s; options {options}",
        cfg.duration.as_secs_f64(),
        o.connections, o.paths, o.rate, o.slow_conns, o.slow_conns, o.slow_rate, o.slow_payload,
        o.churn_rate, o.filtered, o.filtered_rate, o.live_queries, cfg.entities,
        o.entity_rate, o.instances, o.group, o.task_rate
    );
    if n > 1 {
        eprintln!(
            "loadtest: soak: cluster mode over {n} nodes ({}): fan-out paths p mod {n} == k subscribed on node k and published through node k+1; slow stream published through node {}, read on nodes {:?}; filtered published through node {}, read on {:?}; entities written through node {}, live queries on {:?}; tasks published through node {}, instances round robin over all nodes; churn on every node",
            nodes.iter().map(|nd| nd.http.host_header.as_str()).collect::<Vec<_>>().join(", "),
            place.slow_publisher(),
            place.readers_of(place.slow_publisher()),
            place.filtered_publisher(),
            place.readers_of(place.filtered_publisher()),
            place.entity_writer(),
            place.readers_of(place.entity_writer()),
            place.task_publisher(),
        );
    }

    // connect: the client loops (a group per node) and the blocking clients
    let setup_start = Instant::now();
    let fan_part = |k: usize| -> Arc<dyn Scenario> {
        if n == 1 {
            Arc::new(SoakPart::Fan(o.paths))
        } else {
            Arc::new(NodeFan {
                paths: o.paths,
                nodes: n as u64,
                node: k as u64,
            })
        }
    };
    let mut fan_groups: Vec<Box<dyn ClientGroup>> = Vec::new();
    let mut offset = 0;
    for (k, node) in nodes.iter().enumerate() {
        let count = Placement::split(o.connections, n, k);
        if count > 0 {
            fan_groups.push(Box::new(LocalGroup::start(loop_plan(
                cfg,
                node,
                fan_part(k),
                offset,
                count,
                &options,
                None,
            ))));
        }
        offset += count;
    }
    let slow_nodes = place.readers_of(place.slow_publisher());
    let mut slow_groups: Vec<Box<dyn ClientGroup>> = Vec::new();
    let mut offset = 1_000_000;
    for (j, &k) in slow_nodes.iter().enumerate() {
        let count = Placement::split(o.slow_conns, slow_nodes.len(), j);
        if count > 0 {
            slow_groups.push(Box::new(LocalGroup::start(loop_plan(
                cfg,
                &nodes[k],
                Arc::new(SoakPart::Slow),
                offset,
                count,
                &options,
                None,
            ))));
        }
        offset += count;
    }
    // churn: the rate split over the nodes, each with at least 10 cycles in flight
    let churn_groups: Vec<Box<dyn ClientGroup>> = nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let g: Box<dyn ClientGroup> = Box::new(LocalGroup::start(loop_plan(
                cfg,
                node,
                Arc::new(SoakPart::Churn),
                4_000_000 + 10_000 * k as u64,
                (o.churn_inflight / n as u64).max(10),
                &options,
                Some(o.churn_rate / n as f64),
            )));
            g
        })
        .collect();
    let mut parts = Parts {
        fan: Box::new(Multi(fan_groups)),
        slow: Box::new(Multi(slow_groups)),
        churn: Box::new(Multi(churn_groups)),
    };
    let ready = Arc::new(AtomicU64::new(0));
    let mut client_threads: Vec<JoinHandle<()>> = Vec::new();
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(f)
            .expect("spawn a soak thread")
    };
    let book = Arc::new(Mutex::new(TaskBook::default()));
    for i in 0..o.instances {
        let (c, r, b, g) = (
            node_ctx[i as usize % n].clone(),
            Arc::clone(&ready),
            Arc::clone(&book),
            o.group.clone(),
        );
        client_threads.push(spawn(
            format!("soak-svc-{i}"),
            Box::new(move || clients::service_instance(c, i, g, r, b)),
        ));
    }
    for i in 0..o.slow_conns {
        let x = node_ctx[place.reader_node(place.slow_publisher(), i)].clone();
        let (r, rate) = (Arc::clone(&ready), o.slow_read_rate);
        client_threads.push(spawn(
            format!("soak-slow-{i}"),
            Box::new(move || clients::slow_reader(x, i, rate, r)),
        ));
    }
    let filter_conns = o.filtered.div_ceil(clients::FILTERS_PER_CONN);
    for c in 0..filter_conns {
        let first = c * clients::FILTERS_PER_CONN;
        let count = clients::FILTERS_PER_CONN.min(o.filtered - first);
        let x = node_ctx[place.reader_node(place.filtered_publisher(), c)].clone();
        let r = Arc::clone(&ready);
        client_threads.push(spawn(
            format!("soak-flt-{c}"),
            Box::new(move || clients::filtered_conn(x, c, first, count, r)),
        ));
    }
    // live queries: one connection per node that reads the entity writer's writes, the
    // queries round robin over them
    let lq_sets: Arc<Mutex<Vec<LqSet>>> =
        Arc::new(Mutex::new(vec![LqSet::new(); o.live_queries as usize]));
    let lq_nodes = place.readers_of(place.entity_writer());
    let mut lq_threads = 0;
    for (j, &k) in lq_nodes.iter().enumerate() {
        let qs: Vec<u64> = (0..o.live_queries)
            .filter(|q| *q as usize % lq_nodes.len() == j)
            .collect();
        if qs.is_empty() {
            continue;
        }
        lq_threads += 1;
        let (x, r, s) = (
            node_ctx[k].clone(),
            Arc::clone(&ready),
            Arc::clone(&lq_sets),
        );
        client_threads.push(spawn(
            format!("soak-lq-{k}"),
            Box::new(move || clients::live_queries(x, qs, r, s)),
        ));
    }
    let blocking = o.instances + o.slow_conns + filter_conns + lq_threads;
    let cap = connect_cap(o.connections) + Duration::from_secs(10);
    loop {
        let done = parts.fan.progress().connect_done && parts.slow.progress().connect_done;
        let failed = ctx.counters.client_failures.load(Relaxed);
        if done && ready.load(Relaxed) + failed >= blocking {
            break;
        }
        if setup_start.elapsed() > cap {
            eprintln!("loadtest: soak: connecting took longer than {cap:?}; going on");
            parts.fan.end_connect();
            parts.slow.end_connect();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fp, sp) = (parts.fan.progress(), parts.slow.progress());
    eprintln!(
        "loadtest: soak: connected in {:.1}s: fan-out {}/{} fast readers of the slow stream {}/{} blocking clients (slow readers, filtered, live queries, instances) {}/{blocking}",
        setup_start.elapsed().as_secs_f64(),
        fp.ready,
        o.connections,
        sp.ready,
        o.slow_conns,
        ready.load(Relaxed)
    );
    let fan_subs = parts.fan.subs_per_path();
    let slow_subs = parts.slow.subs_per_path();

    // the window
    let sampler = Sampler::new(cfg, &ctx, &node_ctx);
    let t0 = sampler.t0;
    let now_ns = crate::util::unix_nanos();
    parts.fan.window_start(now_ns);
    parts.slow.window_start(now_ns);
    parts.churn.window_start(now_ns);
    let publisher = |node: usize, part: Arc<dyn Scenario>, rate: f64, payload: usize| {
        Publisher::start(PublishPlan {
            http: nodes[node].http.clone(),
            api_key: ctx.api_key.clone(),
            rate,
            duration: cfg.duration,
            payload,
            scenario: part,
            nats: None,
        })
    };
    // fan-out: node k's paths through node k + 1, at their share of the rate (every path
    // gets rate / paths)
    let fan_pub = Publishers(
        (0..n)
            .filter_map(|k| {
                let own = if n == 1 {
                    o.paths
                } else {
                    NodeFan {
                        paths: o.paths,
                        nodes: n as u64,
                        node: k as u64,
                    }
                    .own_paths()
                };
                let rate = o.rate * own as f64 / o.paths as f64;
                (own > 0).then(|| publisher(place.fan_publisher(k), fan_part(k), rate, cfg.payload))
            })
            .collect(),
    );
    let slow_pub = Publishers(vec![publisher(
        place.slow_publisher(),
        Arc::new(SoakPart::Slow),
        o.slow_rate,
        o.slow_payload,
    )]);
    let flt_pub = {
        let (x, r, m) = (
            node_ctx[place.filtered_publisher()].clone(),
            o.filtered_rate,
            o.filtered,
        );
        spawn(
            "soak-flt-pub".into(),
            Box::new(move || clients::filtered_publisher(x, r, m)),
        )
    };
    let entity_writer = {
        let (x, r, k) = (
            node_ctx[place.entity_writer()].clone(),
            o.entity_rate,
            cfg.entities,
        );
        std::thread::Builder::new()
            .name("soak-entities".into())
            .spawn(move || clients::entity_writer(x, r, k))
            .expect("spawn a soak thread")
    };
    let task_pub = {
        let (x, r) = (node_ctx[place.task_publisher()].clone(), o.task_rate);
        std::thread::Builder::new()
            .name("soak-task-pub".into())
            .spawn(move || clients::task_publisher(x, r))
            .expect("spawn a soak thread")
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = Duration::ZERO;
    loop {
        let el = t0.elapsed();
        if el >= next {
            let s = sampler.take(&parts, &[&fan_pub, &slow_pub]);
            progress_line(&s);
            samples.push(s);
            next += o.sample_every;
        }
        if el >= cfg.duration {
            break;
        }
        let until = next.min(cfg.duration).saturating_sub(t0.elapsed());
        std::thread::sleep(until.min(Duration::from_millis(200)));
    }
    let window_secs = t0.elapsed().as_secs_f64();

    // close the window: writers stop, slow readers read normally, churn starts no cycle
    ctx.flags.window_over.store(true, Relaxed);
    parts.fan.window_end();
    parts.slow.window_end();
    parts.churn.window_end();
    let fan_res: PublishResult = fan_pub.finish();
    let slow_res: PublishResult = slow_pub.finish();
    let _ = flt_pub.join();
    let entity_last = entity_writer.join().unwrap_or_default();
    let mut ranges = task_pub.join().unwrap_or_default();
    let fan_expected = SoakPart::Fan(o.paths).expected(&fan_res.published_per_path, &fan_subs);
    // the fast readers of the slow stream, and its slow readers (who subscribed before
    // the window opened, or failed and are counted as such)
    let slow_expected = SoakPart::Slow.expected(&slow_res.published_per_path, &slow_subs);
    let slow_readers_expected = slow_res.published() * o.slow_conns;

    // settle: deliveries in flight, the task queue, the live queries (bounded)
    let settle_start = Instant::now();
    let k = &ctx.counters;
    let (tasks_lost, tasks_in_run, queue_after) = loop {
        let (f, s) = (parts.fan.progress(), parts.slow.progress());
        let deliveries = f.delivered + f.dropped >= fan_expected
            && s.delivered + s.dropped >= slow_expected
            && k.slow_delivered.load(Relaxed) + k.slow_dropped.load(Relaxed)
                >= slow_readers_expected
            && k.filtered_delivered.load(Relaxed) + k.filtered_dropped.load(Relaxed)
                >= k.filtered_expected.load(Relaxed);
        let (lost, in_run) = {
            let seen = &book.lock().expect("not poisoned").seen;
            clients::task_accounting(&mut ranges, seen)
        };
        let queue = group_stats(&ctx, &o.group);
        let drained = lost == 0 && queue == Some((0, 0));
        // churn: the cycles in flight at the window's end finish (each within 15 s)
        let c = parts.churn.progress();
        let cycled = c.cycles_completed + c.failed >= c.cycles_started;
        if (deliveries && drained && cycled) || settle_start.elapsed() > SETTLE {
            break (lost, in_run, queue);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // the queue as every node answers it (the operator REST is cluster-wide)
    let queue_nodes: Vec<Option<(u64, u64)>> =
        node_ctx.iter().map(|c| group_stats(c, &o.group)).collect();
    // what the live queries hold must be what every node answers (writes have stopped):
    // per node, the ids differing per query
    let lq_deadline = Instant::now() + Duration::from_secs(10);
    let (lq_diff_nodes, lq_checked) = loop {
        let sets = lq_sets.lock().expect("not poisoned").clone();
        let mut per_node = Vec::new();
        let mut checked = 0usize;
        for c in &node_ctx {
            let mut diff = Vec::new();
            for (q, set) in sets.iter().enumerate() {
                match clients::rest_set(c, q as u64) {
                    Ok(rest) => {
                        checked += rest.len();
                        diff.push(clients::set_diff(set, &rest));
                    }
                    Err(e) => {
                        clients::count_error(&errors, format!("live query check: {e}"));
                        diff.push(usize::MAX);
                    }
                }
            }
            per_node.push(diff);
        }
        let agree = per_node.iter().flatten().all(|&d| d == 0);
        if agree || Instant::now() > lq_deadline {
            break (per_node, checked);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // per query: the ids differing on any node (usize::MAX: a node's answer failed)
    let lq_diff: Vec<usize> = (0..o.live_queries as usize)
        .map(|q| {
            lq_diff_nodes
                .iter()
                .map(|d| d.get(q).copied().unwrap_or(usize::MAX))
                .fold(0usize, usize::saturating_add)
        })
        .collect();
    // sampled entities: the last acknowledged write is what GET returns, on every node
    // in turn
    let step = (cfg.entities / 50).max(1) as usize;
    let (mut e_sampled, mut e_mismatched) = (0u64, Vec::new());
    for (j, (id, last)) in entity_last.iter().enumerate().step_by(step).enumerate() {
        let Some(last_i) = last else { continue };
        e_sampled += 1;
        let target = format!("/api/v1/entities/{}/e{id}", clients::COLLECTION);
        let got = node_ctx[j % n]
            .http("GET", &target, b"")
            .ok()
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, b)| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["i"].as_u64());
        if got != Some(*last_i) {
            e_mismatched.push(json!({"id": format!("e{id}"), "node": j % n, "acknowledged_i": last_i, "got_i": got}));
        }
    }
    let after = sampler.take(&parts, &[]);
    progress_line(&after);

    // stop everything
    ctx.flags.stop.store(true, Relaxed);
    for t in client_threads {
        let _ = t.join();
    }
    let collect = |g: Box<dyn ClientGroup>| {
        g.finish().unwrap_or_else(|e| {
            eprintln!("loadtest: soak: {e}");
            ClientStats::new(1)
        })
    };
    let fan = collect(parts.fan);
    let slow = collect(parts.slow);
    let churn = collect(parts.churn);
    // cluster mode: how the nodes behave once every client has left (an observation for
    // the report, not one of the end checks)
    let quiet = if n > 1 {
        quiet_after_close(&sampler)
    } else {
        Vec::new()
    };

    // checks
    let mut checks = Vec::new();
    let fan_lost = lost(fan_expected, fan.delivered, fan.dropped_reported);
    check(
        &mut checks,
        "fan-out: lost = 0",
        fan_lost == 0 && fan.failed == 0 && fan.disconnected == 0,
        format!(
            "expected {fan_expected} delivered {} dropped {} lost {fan_lost}; failed {} disconnected {} (close codes {:?})",
            fan.delivered, fan.dropped_reported, fan.failed, fan.disconnected, fan.close_codes
        ),
    );
    let fast_lost = lost(slow_expected, slow.delivered, slow.dropped_reported);
    check(
        &mut checks,
        "fast readers of the slow stream: lost = 0, nothing dropped",
        fast_lost == 0 && slow.dropped_reported == 0 && slow.failed == 0 && slow.disconnected == 0,
        format!(
            "expected {slow_expected} delivered {} dropped {} lost {fast_lost}; failed {} disconnected {} (close codes {:?})",
            slow.delivered, slow.dropped_reported, slow.failed, slow.disconnected, slow.close_codes
        ),
    );
    let get = |a: &AtomicU64| a.load(Relaxed);
    let (sd, sdrop) = (get(&k.slow_delivered), get(&k.slow_dropped));
    let slow_lost = lost(slow_readers_expected, sd, sdrop);
    check(
        &mut checks,
        "slow readers: every undelivered event reported by QUEUE_OVERFLOW",
        slow_lost == 0,
        format!("expected {slow_readers_expected} delivered {sd} dropped {sdrop} lost {slow_lost}"),
    );
    if sdrop == 0 {
        eprintln!(
            "loadtest: soak: the slow readers were never dropped from: raise --slow-rate or --slow-payload, lower --slow-read-rate, or lower the server's queue_capacity"
        );
    }
    let churn_failed = churn.requested.saturating_sub(churn.cycles_completed);
    check(
        &mut checks,
        "churn: every cycle completed",
        churn_failed == 0 && churn.requested > 0,
        format!(
            "started {} completed {} failures {:?}",
            churn.requested, churn.cycles_completed, churn.failures
        ),
    );
    let (fx, fd, fm, fdrop) = (
        get(&k.filtered_expected),
        get(&k.filtered_delivered),
        get(&k.filtered_mismatched),
        get(&k.filtered_dropped),
    );
    let f_lost = lost(fx, fd, fdrop);
    check(
        &mut checks,
        "filtered: exactly the matching events",
        fm == 0 && f_lost == 0,
        format!("expected {fx} delivered {fd} not matching {fm} dropped {fdrop} lost {f_lost}"),
    );
    let lq_updates = get(&k.lq_added) + get(&k.lq_updated) + get(&k.lq_removed);
    check(
        &mut checks,
        "live queries: their sets equal the REST answer",
        lq_diff.len() as u64 == o.live_queries && lq_diff.iter().all(|&d| d == 0),
        format!(
            "ids differing per query {lq_diff:?} of {lq_checked} checked; {lq_updates} updates"
        ),
    );
    check(
        &mut checks,
        "entities: sampled states equal their last acknowledged write",
        e_mismatched.is_empty(),
        format!(
            "{e_sampled} sampled of {} acknowledged writes, {} differ",
            get(&k.entity_writes),
            e_mismatched.len()
        ),
    );
    let acked = get(&k.tasks_acknowledged);
    let (dups, dup_ids, redelivered) = (
        get(&k.tasks_duplicates),
        get(&k.tasks_duplicate_ids),
        get(&k.tasks_redelivered),
    );
    check(
        &mut checks,
        "tasks: every acknowledged task event received and completed",
        tasks_lost == 0
            && tasks_in_run == acked
            && queue_after == Some((0, 0))
            && queue_nodes.iter().all(|q| *q == Some((0, 0))),
        format!(
            "acknowledged {acked} completed {tasks_in_run} lost {tasks_lost}; received twice {dups} by seq, {dup_ids} by task id (deduplicated, allowed), redelivered {redelivered}; group queue after (pending, inFlight) {queue_after:?}, per node {queue_nodes:?}"
        ),
    );
    let errs = errors.lock().expect("not poisoned").clone();
    let pub_errors: u64 = fan_res
        .errors
        .values()
        .chain(slow_res.errors.values())
        .sum();
    check(
        &mut checks,
        "no publish, write or client errors",
        pub_errors == 0 && get(&k.publish_failures) == 0 && get(&k.client_failures) == 0,
        format!(
            "fan-out/slow publish errors {:?} {:?}; other {errs:?}",
            fan_res.errors, slow_res.errors
        ),
    );
    // cluster mode: every node delivered during the window, and what the checks counted
    // crossed nodes (every reader above is on another node than its publisher or writer)
    let node_deliveries: Vec<Option<f64>> = (0..n)
        .map(|k| {
            let d = |s: &Sample| s.nodes.get(k)?.metric("shardcast_deliveries_total");
            Some(d(&after)? - d(samples.first()?)?)
        })
        .collect();
    let crossed = fan.delivered + slow.delivered + sd + fd;
    if n > 1 {
        check(
            &mut checks,
            "cluster: deliveries crossed nodes on every node",
            crossed > 0 && node_deliveries.iter().all(|d| d.is_some_and(|d| d > 0.0)),
            format!(
                "{crossed} deliveries to readers on another node than their publisher (fan-out {}, fast {}, slow {sd}, filtered {fd}); deliveries per node during the run {:?}",
                fan.delivered, slow.delivered, node_deliveries
            ),
        );
    }
    let verdicts: Vec<_> = RULES
        .iter()
        .map(|r| (r, series::verdict(&samples, window_secs, r)))
        .collect();
    // each node's own process and queues (a leak on one node hides in the sum)
    let node_verdicts: Vec<(usize, &series::Rule, series::Verdict)> = if n > 1 {
        (0..n)
            .flat_map(|k| {
                let mine: Vec<Sample> = samples
                    .iter()
                    .filter_map(|s| s.nodes.get(k).cloned())
                    .collect();
                NODE_RULES
                    .iter()
                    .map(move |r| (k, r, series::verdict(&mine, window_secs, r)))
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        Vec::new()
    };
    for (k, _, v) in &node_verdicts {
        if v.grew {
            eprintln!(
                "loadtest: soak: FAILED node {k}: {} grows: median {:.0} in the second quarter, {:.0} in the last",
                v.series,
                v.q2.unwrap_or(0.0),
                v.q4.unwrap_or(0.0)
            );
        }
    }
    for (_, v) in &verdicts {
        if v.grew {
            eprintln!(
                "loadtest: soak: FAILED {} grows: median {:.0} in the second quarter, {:.0} in the last",
                v.series,
                v.q2.unwrap_or(0.0),
                v.q4.unwrap_or(0.0)
            );
        }
    }
    let grew = verdicts.iter().any(|(_, v)| v.grew) || node_verdicts.iter().any(|(_, _, v)| v.grew);
    // No check that ran is no evidence: an empty list is not healthy.
    let healthy = !checks.is_empty() && checks.iter().all(|c| c["ok"] == true) && !grew;

    let report = json!({
        "scenario": "soak",
        "config": {
            "url": (n == 1).then_some(&cfg.url_raw), "http": (n == 1).then_some(&cfg.http_raw), "duration_secs": cfg.duration.as_secs_f64(),
            "sample_every_secs": o.sample_every.as_secs_f64(), "scale": o.scale,
            "connection_options": options,
            "fanout": {"connections": o.connections, "paths": o.paths, "rate": o.rate, "payload": cfg.payload},
            "slow": {"slow_readers": o.slow_conns, "fast_readers": o.slow_conns, "rate": o.slow_rate,
                     "payload": o.slow_payload, "read_bytes_per_sec": o.slow_read_rate},
            "churn": {"rate": o.churn_rate, "in_flight": o.churn_inflight},
            "filtered": {"subscriptions": o.filtered, "connections": filter_conns, "rate": o.filtered_rate},
            "live_queries": {"queries": o.live_queries, "entities": cfg.entities, "entity_rate": o.entity_rate},
            "services": {"instances": o.instances, "group": o.group, "task_rate": o.task_rate},
            "server_pids": cfg.server_pids,
            "data_dir": o.data_dir.as_ref().map(|d| d.display().to_string()),
            "nodes": nodes.iter().map(|nd| nd.http.host_header.clone()).collect::<Vec<_>>(),
        },
        "cluster": (n > 1).then(|| json!({
            "nodes": n,
            "placement": {
                "fanout": "paths p with p mod nodes == k subscribed on node k, published through node k+1",
                "slow": {"publisher": place.slow_publisher(), "readers": place.readers_of(place.slow_publisher())},
                "filtered": {"publisher": place.filtered_publisher(), "readers": place.readers_of(place.filtered_publisher())},
                "entities": {"writer": place.entity_writer(), "live_queries": place.readers_of(place.entity_writer())},
                "tasks": {"publisher": place.task_publisher(), "instances": "round robin over all nodes"},
                "churn": "every node",
                "channels": "not part of the soak's mix",
            },
            "cross_node_deliveries": crossed,
            "node_deliveries": node_deliveries,
            "live_query_differing_ids_per_node": lq_diff_nodes.iter().map(|d| d.iter().map(|&x| if x == usize::MAX { Value::Null } else { json!(x) }).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "queue_after_per_node": queue_nodes.iter().map(|q| q.map(|(p, f)| json!({"pending": p, "inFlight": f}))).collect::<Vec<_>>(),
        })),
        "window_secs": window_secs,
        "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        "after_settle": after.to_json(),
        "fanout": {"connections": fan.ready, "published": fan_res.published(), "expected": fan_expected,
                   "delivered": fan.delivered, "dropped_reported": fan.dropped_reported, "lost": fan_lost,
                   "failed": fan.failed, "disconnected": fan.disconnected, "failures": fan.failures,
                   "close_codes": close_codes(&fan)},
        "slow": {"slow_readers": o.slow_conns, "published": slow_res.published(),
                 "expected": slow_readers_expected, "delivered": sd, "dropped_reported": sdrop,
                 "lost": slow_lost, "dropped_on_fast_readers": slow.dropped_reported,
                 "fast_readers": {"connections": slow.ready, "expected": slow_expected,
                                  "delivered": slow.delivered, "lost": fast_lost,
                                  "failed": slow.failed, "disconnected": slow.disconnected,
                                  "close_codes": close_codes(&slow)}},
        "churn": {"cycles_started": churn.requested, "cycles_completed": churn.cycles_completed,
                  "cycles_failed": churn_failed, "failures": churn.failures},
        "filtered": {"subscriptions": o.filtered, "expected": fx, "delivered": fd, "mismatched": fm,
                     "dropped_reported": fdrop, "lost": f_lost},
        "live_queries": {"queries": o.live_queries, "added": get(&k.lq_added), "updated": get(&k.lq_updated),
                         "removed": get(&k.lq_removed), "updates": lq_updates,
                         "differing_ids": lq_diff.iter().map(|&d| if d == usize::MAX { Value::Null } else { json!(d) }).collect::<Vec<_>>(),
                         "rest_ids_checked": lq_checked},
        "entities": {"writes_acknowledged": get(&k.entity_writes), "sampled": e_sampled, "mismatched": e_mismatched},
        "tasks": {"instances": o.instances, "group": o.group, "acknowledged": acked, "received": get(&k.tasks_received),
                  "completed": tasks_in_run, "lost": tasks_lost, "duplicates": dups, "duplicate_task_ids": dup_ids,
                  "redelivered": get(&k.tasks_redelivered),
                  "queue_after": queue_after.map(|(p, f)| json!({"pending": p, "inFlight": f}))},
        "errors": errs,
        "after_close": (n > 1).then(|| quiet.iter().map(Quiet::to_json).collect::<Vec<_>>()),
        "checks": checks,
        "growth": verdicts.iter().map(|(r, v)| v.to_json(r)).collect::<Vec<_>>(),
        "growth_per_node": node_verdicts.iter().map(|(k, r, v)| {
            let mut j = v.to_json(r);
            j["node"] = json!(k);
            j
        }).collect::<Vec<_>>(),
        "healthy": healthy,
    });
    println!("{}", series::markdown_table(&samples));
    if n > 1 {
        println!("{}", series::node_table(&samples));
    }
    for c in &checks {
        eprintln!(
            "loadtest: soak: {} {}: {}",
            if c["ok"] == true { "ok    " } else { "FAILED" },
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        );
    }
    for (_, v) in &verdicts {
        eprintln!("loadtest: soak: growth {}: {}", v.series, growth_text(v));
    }
    for (k, _, v) in &node_verdicts {
        eprintln!(
            "loadtest: soak: growth node {k} {}: {}",
            v.series,
            growth_text(v)
        );
    }
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&report).expect("serializable");
        let res = if path.as_os_str() == "-" {
            println!("{text}");
            Ok(())
        } else {
            std::fs::write(path, text + "\n")
        };
        if let Err(e) = res {
            eprintln!("loadtest: --json {}: {e}", path.display());
            return 3;
        }
    }
    if healthy {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak_config(extra: &str) -> Config {
        let args: Vec<String> = format!("soak --secret s --api-key k {extra}")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        match crate::cli::parse(&args) {
            Ok(crate::cli::Command::Run(c)) => *c,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn the_client_and_the_loops_send_the_same_options() {
        let o = connection_options(&soak_config("--batch-max 50 --framing array"));
        assert_eq!(
            (o.batch_ms, o.batch_max, o.framing, o.group.as_deref()),
            (
                Some(100),
                Some(50),
                Some(shardcast_client::Framing::Array),
                None
            )
        );
        assert_eq!(options_query(&o), "batchMs=100&batchMax=50&framing=array");
        let o = connection_options(&soak_config("--batch-ms 0"));
        assert_eq!((o.batch_max, o.framing), (None, None));
        assert_eq!(options_query(&o), "batchMs=0");
    }
}
