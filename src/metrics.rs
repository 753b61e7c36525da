//! Every metric the engine exports, defined once: names, labels, help text, buckets.
//!
//! Code elsewhere never spells a metric name; it takes handles from here. Hot paths
//! (shards, ingest) resolve their handles once at start and then only increment
//! atomics. Labels are bounded: shard number, role, reason, code, source; never a
//! connection, path or subscription. `/metrics` renders through [`render`].

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "shardcast_connections";
pub const CONNECTIONS_ACCEPTED: &str = "shardcast_connections_accepted_total";
pub const CONNECTIONS_CLOSED: &str = "shardcast_connections_closed_total";
pub const HTTP_CLOSED: &str = "shardcast_http_connections_closed_total";
pub const HTTP_CONNECTIONS: &str = "shardcast_http_connections";
pub const SUBSCRIPTIONS: &str = "shardcast_subscriptions";
pub const FEEDS: &str = "shardcast_feeds";
pub const PUBLICATIONS: &str = "shardcast_publications_total";
pub const DELIVERIES: &str = "shardcast_deliveries_total";
pub const FRAMES_WRITTEN: &str = "shardcast_frames_written_total";
pub const BYTES_WRITTEN: &str = "shardcast_bytes_written_total";
pub const FLUSHES: &str = "shardcast_flushes_total";
pub const BATCH_SIZE: &str = "shardcast_batch_size";
pub const DROPPED: &str = "shardcast_dropped_total";
pub const PUBLISH_TO_FLUSH: &str = "shardcast_publish_to_flush_seconds";
pub const FLUSH_DELAY: &str = "shardcast_flush_delay_seconds";
pub const SHARD_QUEUE_DEPTH: &str = "shardcast_shard_queue_depth";
pub const SHARD_QUEUE_FULL: &str = "shardcast_shard_queue_full_total";
pub const SHARD_QUEUE_CAPACITY: &str = "shardcast_shard_queue_capacity";
pub const AUTH_FAILURES: &str = "shardcast_auth_failures_total";
pub const COMMAND_ERRORS: &str = "shardcast_command_errors_total";
pub const HTTP_REQUESTS: &str = "shardcast_http_requests_total";
pub const PROCESS_CPU: &str = "shardcast_process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "shardcast_process_resident_memory_bytes";
pub const ENTITY_WRITES: &str = "shardcast_entity_writes_total";
pub const LIVE_QUERIES: &str = "shardcast_live_queries";
pub const FILTER_EVALUATIONS: &str = "shardcast_filter_evaluations_total";
pub const REFRESHES: &str = "shardcast_subscription_refreshes_total";
pub const REPLAYED: &str = "shardcast_replayed_total";
pub const URING_WRITES: &str = "shardcast_uring_writes_total";
pub const LOOP_TURN: &str = "shardcast_shard_loop_turn_seconds";
pub const LOOP_TURN_MAX: &str = "shardcast_shard_loop_turn_max_seconds";
/// Histograms `/metrics` renders itself ([`LoopTurns`]) rather than the exporter.
pub const SELF_RENDERED_HISTOGRAMS: &[&str] = &[LOOP_TURN];
pub const HISTORY_PUBLICATIONS: &str = "shardcast_history_publications";
pub const HISTORY_BYTES: &str = "shardcast_history_bytes";
pub const SERVICE_PENDING: &str = "shardcast_service_tasks_pending";
pub const SERVICE_IN_FLIGHT: &str = "shardcast_service_tasks_in_flight";
pub const SERVICE_DEAD: &str = "shardcast_service_dead_letters";
pub const SERVICE_INSTANCES: &str = "shardcast_service_instances";
pub const SERVICE_ENQUEUED: &str = "shardcast_service_tasks_enqueued_total";
pub const SERVICE_COMPLETED: &str = "shardcast_service_tasks_completed_total";
pub const SERVICE_REDELIVERIES: &str = "shardcast_service_redeliveries_total";
pub const SERVICE_DEAD_LETTERED: &str = "shardcast_service_dead_lettered_total";
pub const SERVICE_ACK_SECONDS: &str = "shardcast_service_ack_seconds";
pub const SERVICE_LOCKS_HELD: &str = "shardcast_service_locks_held";
pub const SERVICE_LOCK_WAITERS: &str = "shardcast_service_lock_waiters";
pub const SERVICE_LOCK_GRANTS: &str = "shardcast_service_lock_grants_total";
pub const CHANNELS: &str = "shardcast_channels";
pub const CHANNEL_BACKLOG: &str = "shardcast_channel_backlog_events";
pub const CHANNEL_BACKLOG_CACHE: &str = "shardcast_channel_backlog_cache_bytes";
pub const CHANNEL_EVENTS: &str = "shardcast_channel_events_total";
pub const CHANNEL_DROPPED: &str = "shardcast_channel_dropped_total";
// The store's own metrics (recorded in `src/store.rs`, which names them after these;
// a unit test below keeps the two in step).
pub const STORE_COMMITS: &str = "shardcast_store_commits_total";
pub const STORE_COMMIT_JOBS: &str = "shardcast_store_commit_jobs";
pub const STORE_COMMIT_BYTES: &str = "shardcast_store_commit_bytes";
pub const STORE_COMMIT_SECONDS: &str = "shardcast_store_commit_seconds";
pub const STORE_COMMIT_FAILURES: &str = "shardcast_store_commit_failures_total";
// Cluster mode (the Redis backend); exported at 0 on a single node.
pub const REDIS_CALL_SECONDS: &str = "shardcast_redis_call_seconds";
pub const REDIS_COMMANDS: &str = "shardcast_redis_commands_total";
pub const REDIS_CONNECTED: &str = "shardcast_redis_connected";
pub const STREAM_LAG: &str = "shardcast_stream_lag";
pub const CLUSTER_MODE: &str = "shardcast_cluster_mode";

/// Roles as the `role` label spells them; `pending` is a socket not yet authenticated.
pub const ROLES: [&str; 4] = ["pending", "user", "service", "admin"];

/// Why publications or messages were dropped (`shardcast_dropped_total{reason}`).
pub mod drop_reason {
    /// A connection's ring was full: oldest dropped (PROTOCOL.md §6).
    pub const QUEUE_OVERFLOW: &str = "queue_overflow";
    /// A shard's inbound queue was full: the publication was not delivered on that shard.
    pub const SHARD_QUEUE_FULL: &str = "shard_queue_full";
}

/// Where a publication came from (`shardcast_publications_total{source}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Http,
    Websocket,
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        CONNECTIONS,
        "Open WebSocket connections, by shard and role."
    );
    describe_counter!(CONNECTIONS_ACCEPTED, "TCP connections accepted, by shard.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "WebSocket connections closed, by reason."
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "Open connections counted against limits.max_http_connections: a whole request arrived that was not a WebSocket upgrade."
    );
    describe_counter!(
        HTTP_CLOSED,
        "Connections closed before becoming WebSockets by a limit (limits.request_timeout_ms, limits.max_http_connections, the open-file budget), by reason."
    );
    describe_gauge!(SUBSCRIPTIONS, "Active subscriptions, by shard.");
    describe_gauge!(
        FEEDS,
        "Shared frame logs (connections holding the same single subscription and options), by shard."
    );
    describe_counter!(PUBLICATIONS, "Publications sequenced, by source.");
    describe_counter!(DELIVERIES, "Events written to sockets, by shard.");
    describe_counter!(FRAMES_WRITTEN, "WebSocket frames written, by shard.");
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes written to sockets, by shard."
    );
    describe_counter!(FLUSHES, "Ring flushes, by shard.");
    describe_histogram!(BATCH_SIZE, "Messages per flush.");
    describe_counter!(DROPPED, "Messages or publications dropped, by reason.");
    describe_histogram!(
        PUBLISH_TO_FLUSH,
        Unit::Seconds,
        "From ingest to the flush that wrote it."
    );
    describe_histogram!(
        FLUSH_DELAY,
        Unit::Seconds,
        "How late a flush was: from when it was due (batchMs after its oldest message, or batchMax messages waiting) to its write."
    );
    describe_gauge!(
        SHARD_QUEUE_DEPTH,
        "Messages waiting in a shard's inbound queue."
    );
    describe_counter!(
        SHARD_QUEUE_FULL,
        "Publications that found a shard's inbound queue full."
    );
    describe_counter!(AUTH_FAILURES, "Refused credentials, by reason.");
    describe_counter!(COMMAND_ERRORS, "Error messages sent to clients, by code.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by status class.");
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time of the process (user + system)."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process.");
    describe_counter!(
        ENTITY_WRITES,
        "Durable entity writes published, by op (created, updated, deleted)."
    );
    describe_gauge!(LIVE_QUERIES, "Live queries held by connections.");
    describe_counter!(
        FILTER_EVALUATIONS,
        "Filter evaluations of filtered subscriptions (after the equality index), by shard."
    );
    describe_counter!(REFRESHES, "subscriptionRefresh messages queued, by shard.");
    describe_counter!(
        REPLAYED,
        "Publications replayed to subscriptions with since, by shard."
    );
    describe_counter!(
        URING_WRITES,
        "Flushes written through io_uring (io = \"uring\"), by shard; 0 on epoll writes."
    );
    describe_gauge!(
        HISTORY_PUBLICATIONS,
        "Publications retained for since replay."
    );
    describe_gauge!(
        HISTORY_BYTES,
        Unit::Bytes,
        "Bytes counted for the retained history window."
    );
    describe_counter!(STORE_COMMITS, "Group commits of the embedded store.");
    describe_histogram!(STORE_COMMIT_JOBS, "Jobs (writes) per group commit.");
    describe_histogram!(
        STORE_COMMIT_BYTES,
        Unit::Bytes,
        "Key and value bytes staged per group commit."
    );
    describe_histogram!(
        STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Time in one group commit (the fsync)."
    );
    describe_counter!(STORE_COMMIT_FAILURES, "Group commits that failed.");
    describe_histogram!(
        REDIS_CALL_SECONDS,
        Unit::Seconds,
        "Cluster mode: one round trip to Redis (a pipeline of requests' commands)."
    );
    describe_counter!(
        REDIS_COMMANDS,
        "Cluster mode: commands sent to Redis on behalf of requests (publishes, entity \
         writes, tickets), by the node's writer."
    );
    describe_gauge!(
        REDIS_CONNECTED,
        "Cluster mode: 1 while the connection (label conn: writer, reader) is up, else 0."
    );
    describe_gauge!(
        CLUSTER_MODE,
        "1 on a node in cluster mode (cluster.redis_url set), 0 on a single node."
    );
    describe_gauge!(
        STREAM_LAG,
        "Cluster mode: publications sequenced that this node has not applied yet (the \
         newest seq it has heard of minus the newest it applied)."
    );
    describe_gauge!(
        SERVICE_PENDING,
        "Service tasks stored and not in flight (waiting for an instance or a retry), by group."
    );
    describe_gauge!(
        SERVICE_IN_FLIGHT,
        "Service tasks sent to an instance and not yet acknowledged, by group."
    );
    describe_gauge!(SERVICE_DEAD, "Dead letters kept, by group.");
    describe_gauge!(
        SERVICE_INSTANCES,
        "Service connections attached to a group, by group."
    );
    describe_counter!(SERVICE_ENQUEUED, "Service tasks made durable.");
    describe_counter!(SERVICE_COMPLETED, "Service tasks completed (taskComplete).");
    describe_counter!(
        SERVICE_REDELIVERIES,
        "Service tasks queued again, by cause (timeout, failed, disconnect)."
    );
    describe_counter!(
        SERVICE_DEAD_LETTERED,
        "Service tasks moved to the dead letters after max_attempts."
    );
    describe_histogram!(
        SERVICE_ACK_SECONDS,
        Unit::Seconds,
        "From a task's delivery to its taskComplete."
    );
    describe_gauge!(SERVICE_LOCKS_HELD, "Locks held by services.");
    describe_gauge!(
        CHANNELS,
        "REST-created channels, by status (connected, disconnected)."
    );
    describe_gauge!(CHANNEL_BACKLOG, "Events waiting in channel backlogs.");
    describe_gauge!(
        CHANNEL_BACKLOG_CACHE,
        Unit::Bytes,
        "Bytes channel backlogs hold in memory (their events are in the store)."
    );
    describe_counter!(CHANNEL_EVENTS, "Events collected by channels.");
    describe_counter!(
        CHANNEL_DROPPED,
        "Events dropped from full channel backlogs (oldest first)."
    );
    describe_gauge!(SERVICE_LOCK_WAITERS, "lock requests waiting (waitMs).");
    describe_counter!(
        SERVICE_LOCK_GRANTS,
        "Locks granted (each with a new fencing token)."
    );
}

/// Buckets (seconds) of the latency histograms: 100 µs to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder as the process's global recorder; every series
/// carries the label `node` with the node's id (PROTOCOL.md §13).
pub fn install(node_id: &str) -> PrometheusHandle {
    let _ = NODE_LABEL.set(node_id.to_string());
    let builder = PrometheusBuilder::new()
        .add_global_label("node", node_id)
        .set_buckets_for_metric(
            Matcher::Full(BATCH_SIZE.into()),
            &[
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(PUBLISH_TO_FLUSH.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FLUSH_DELAY.into()), LATENCY_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(STORE_COMMIT_SECONDS.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SERVICE_ACK_SECONDS.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(REDIS_CALL_SECONDS.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(STORE_COMMIT_JOBS.into()),
                &[
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 4096.0,
                ],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(STORE_COMMIT_BYTES.into()),
                &[1e3, 1e4, 1e5, 1e6, 1e7],
            )
        })
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // A second install (tests in one process) keeps the first recorder; the handle then
    // renders an empty registry, which only matters to such tests.
    let _ = metrics::set_global_recorder(recorder);
    describe();
    preregister();
    handle
}

/// Creates every series whose label set is known at start-up at zero, so a fresh node
/// already exports each name the dashboards and alerts query (Grafana shows 0, not "No
/// data", `rate()` sees the first event, and an alert on a gauge can fire without waiting
/// for the series to appear). Per-shard series are created by [`ShardMetrics::new`] when
/// each shard starts. Per-group service gauges cannot be known before a group exists: they
/// also get one series without a `group` label, held at 0, so `sum by (group)` answers 0
/// on a node with no groups and is unchanged once groups report.
fn preregister() {
    for r in AUTH_FAILURE_REASONS {
        metrics::counter!(AUTH_FAILURES, "reason" => *r).increment(0);
    }
    for c in COMMAND_ERROR_CODES {
        metrics::counter!(COMMAND_ERRORS, "code" => *c).increment(0);
    }
    for r in CLOSE_REASONS {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => *r).increment(0);
    }
    for r in HTTP_CLOSE_REASONS {
        metrics::counter!(HTTP_CLOSED, "reason" => *r).increment(0);
    }
    for op in ["created", "updated", "deleted"] {
        metrics::counter!(ENTITY_WRITES, "op" => op).increment(0);
    }
    metrics::counter!(STORE_COMMITS).increment(0);
    metrics::counter!(STORE_COMMIT_FAILURES).increment(0);
    metrics::counter!(REDIS_COMMANDS).increment(0);
    for conn in ["writer", "reader"] {
        metrics::gauge!(REDIS_CONNECTED, "conn" => conn).set(0.0);
    }
    metrics::gauge!(STREAM_LAG).set(0.0);
    metrics::gauge!(CLUSTER_MODE).set(0.0);
    let _ = metrics::histogram!(REDIS_CALL_SECONDS);
    metrics::gauge!(LIVE_QUERIES).set(0.0);
    history_size(0, 0);
    for c in ["timeout", "failed", "disconnect"] {
        metrics::counter!(SERVICE_REDELIVERIES, "cause" => c).increment(0);
    }
    metrics::counter!(SERVICE_ENQUEUED).increment(0);
    metrics::counter!(SERVICE_COMPLETED).increment(0);
    metrics::counter!(SERVICE_DEAD_LETTERED).increment(0);
    metrics::counter!(SERVICE_LOCK_GRANTS).increment(0);
    metrics::gauge!(SERVICE_LOCKS_HELD).set(0.0);
    metrics::gauge!(SERVICE_LOCK_WAITERS).set(0.0);
    for g in [
        SERVICE_PENDING,
        SERVICE_IN_FLIGHT,
        SERVICE_DEAD,
        SERVICE_INSTANCES,
    ] {
        metrics::gauge!(g).set(0.0);
    }
    // Registering the handle is enough for the exporter to render its buckets at 0.
    let _ = metrics::histogram!(SERVICE_ACK_SECONDS);
    channels(0, 0, 0, 0, 0, 0);
}

/// `reason` values of `shardcast_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: &[&str] = &[
    "origin",
    "missing",
    "malformed",
    "bad_api_key",
    "bad_signature",
    "unsupported_alg",
    "expired",
    "not_yet_valid",
    "invalid_claims",
    "ticket_unknown",
    "ticket_expired",
    "ticket_unavailable",
    "timeout",
    "group_mismatch",
];

/// `code` values of `shardcast_command_errors_total` (PROTOCOL.md §11).
pub const COMMAND_ERROR_CODES: &[&str] = &[
    "UNAUTHORIZED",
    "FORBIDDEN",
    "BAD_MESSAGE",
    "UNKNOWN_TYPE",
    "INVALID_PATH",
    "INVALID_FILTER",
    "NOT_FOUND",
    "LIMIT_EXCEEDED",
    "RATE_LIMITED",
    "INTERNAL",
    "UNAVAILABLE",
];

/// `reason` values of `shardcast_connections_closed_total`.
pub const CLOSE_REASONS: &[&str] = &[
    "client",
    "eof",
    "closed",
    "unauthorized",
    "auth_timeout",
    "heartbeat_timeout",
    "too_big",
    "invalid_utf8",
    "protocol_error",
    "draining",
    "server_full",
    "unavailable",
    "read_error",
    "write_error",
    "linger",
];

/// Renders `/metrics`, refreshing the process gauges and the node-wide count of
/// non-WebSocket connections (`http_connections`) first.
pub fn render(handle: &PrometheusHandle, http_connections: usize) -> String {
    metrics::gauge!(HTTP_CONNECTIONS).set(http_connections as f64);
    if let Some((cpu, rss)) = process_stats() {
        metrics::gauge!(PROCESS_CPU).set(cpu);
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
    }
    handle.run_upkeep();
    let mut text = handle.render();
    render_loop_turns(&mut text);
    text
}

/// Upper bounds (seconds) of `shardcast_shard_loop_turn_seconds`: 100 µs to 50 ms finely
/// (the 5 ms budget of issue 21 is a bound), then the stalls.
pub const LOOP_TURN_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Loop-turn durations of one shard (`shardcast_shard_loop_turn_seconds`, and the longest,
/// `shardcast_shard_loop_turn_max_seconds`).
///
/// Not a `metrics` histogram: that one keeps every sample until the next scrape, and a
/// busy shard turns its loop ~10⁵ times a second. Here a turn costs a bucket search and
/// three stores; the shard is the only writer (so plain loads and stores, no
/// read-modify-write), `/metrics` the reader.
pub struct LoopTurns {
    shard: usize,
    /// Per bucket (not cumulative), the last one `+Inf`.
    counts: [AtomicU64; LOOP_TURN_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

/// Every shard's [`LoopTurns`], by shard (a restarted shard of the same number replaces
/// its predecessor).
static LOOP_TURNS: Mutex<Vec<Arc<LoopTurns>>> = Mutex::new(Vec::new());
/// The `node` label of the series rendered here (the exporter adds it to its own).
static NODE_LABEL: OnceLock<String> = OnceLock::new();

impl LoopTurns {
    /// Registers shard `shard`'s series.
    pub fn register(shard: usize) -> Arc<LoopTurns> {
        let t = Arc::new(LoopTurns {
            shard,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        });
        let mut all = LOOP_TURNS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|o| o.shard != shard);
        all.push(t.clone());
        all.sort_by_key(|o| o.shard);
        t
    }

    /// One loop turn took `d` (called by the owning shard only).
    pub fn record(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let i = LOOP_TURN_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LOOP_TURN_BUCKETS.len());
        let bump = |a: &AtomicU64, by: u64| a.store(a.load(Relaxed).wrapping_add(by), Relaxed);
        bump(&self.counts[i], 1);
        bump(&self.sum_ns, ns);
        if ns > self.max_ns.load(Relaxed) {
            self.max_ns.store(ns, Relaxed);
        }
    }
}

/// Appends the loop-turn series of every shard, in the exposition format.
fn render_loop_turns(text: &mut String) {
    use std::fmt::Write;
    let all = LOOP_TURNS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if all.is_empty() {
        return;
    }
    let node = NODE_LABEL.get().map(String::as_str).unwrap_or("");
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        text,
        "# HELP {LOOP_TURN} Duration of one turn of a shard's event loop (its work between two polls), by shard.\n# TYPE {LOOP_TURN} histogram"
    );
    for t in &all {
        let mut cumulative = 0u64;
        for (i, c) in t.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = match LOOP_TURN_BUCKETS.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                text,
                "{LOOP_TURN}_bucket{{node=\"{node}\",shard=\"{}\",le=\"{le}\"}} {cumulative}",
                t.shard
            );
        }
        let sum = t.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(
            text,
            "{LOOP_TURN}_sum{{node=\"{node}\",shard=\"{}\"}} {sum}\n{LOOP_TURN}_count{{node=\"{node}\",shard=\"{}\"}} {cumulative}",
            t.shard, t.shard
        );
    }
    let _ = writeln!(
        text,
        "# HELP {LOOP_TURN_MAX} The longest turn of a shard's event loop since the node started, by shard.\n# TYPE {LOOP_TURN_MAX} gauge"
    );
    for t in &all {
        let _ = writeln!(
            text,
            "{LOOP_TURN_MAX}{{node=\"{node}\",shard=\"{}\"}} {}",
            t.shard,
            t.max_ns.load(Relaxed) as f64 / 1e9
        );
    }
}

/// (CPU seconds, RSS bytes) of this process, from /proc.
pub fn process_stats() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of those.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(((utime + stime) / hz, rss_kb * 1024))
}

/// Publication counters, held by ingest.
pub struct PublicationCounters {
    http: Counter,
    websocket: Counter,
}

impl PublicationCounters {
    pub fn new() -> Self {
        PublicationCounters {
            http: metrics::counter!(PUBLICATIONS, "source" => "http"),
            websocket: metrics::counter!(PUBLICATIONS, "source" => "websocket"),
        }
    }

    pub fn add(&self, source: Source, n: u64) {
        match source {
            Source::Http => self.http.increment(n),
            Source::Websocket => self.websocket.increment(n),
        }
    }
}

impl Default for PublicationCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// The handles one shard updates.
pub struct ShardMetrics {
    /// Indexed like [`ROLES`].
    pub connections: [Gauge; 4],
    pub accepted: Counter,
    pub subscriptions: Gauge,
    pub feeds: Gauge,
    pub deliveries: Counter,
    pub frames_written: Counter,
    pub bytes_written: Counter,
    pub flushes: Counter,
    pub batch_size: Histogram,
    pub publish_to_flush: Histogram,
    pub flush_delay: Histogram,
    pub dropped_overflow: Counter,
    pub dropped_shard_queue: Counter,
    pub queue_depth: Gauge,
    pub queue_full: Counter,
    pub queue_capacity: Gauge,
    pub filter_evaluations: Counter,
    pub refreshes: Counter,
    pub replayed: Counter,
    pub uring_writes: Counter,
    pub loop_turns: Arc<LoopTurns>,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> Self {
        let s = shard.to_string();
        ShardMetrics {
            connections: ROLES
                .map(|r| metrics::gauge!(CONNECTIONS, "shard" => s.clone(), "role" => r)),
            accepted: metrics::counter!(CONNECTIONS_ACCEPTED, "shard" => s.clone()),
            subscriptions: metrics::gauge!(SUBSCRIPTIONS, "shard" => s.clone()),
            feeds: metrics::gauge!(FEEDS, "shard" => s.clone()),
            deliveries: metrics::counter!(DELIVERIES, "shard" => s.clone()),
            frames_written: metrics::counter!(FRAMES_WRITTEN, "shard" => s.clone()),
            bytes_written: metrics::counter!(BYTES_WRITTEN, "shard" => s.clone()),
            flushes: metrics::counter!(FLUSHES, "shard" => s.clone()),
            batch_size: metrics::histogram!(BATCH_SIZE, "shard" => s.clone()),
            publish_to_flush: metrics::histogram!(PUBLISH_TO_FLUSH, "shard" => s.clone()),
            flush_delay: metrics::histogram!(FLUSH_DELAY, "shard" => s.clone()),
            dropped_overflow: metrics::counter!(DROPPED, "shard" => s.clone(), "reason" => drop_reason::QUEUE_OVERFLOW),
            dropped_shard_queue: metrics::counter!(DROPPED, "shard" => s.clone(), "reason" => drop_reason::SHARD_QUEUE_FULL),
            queue_depth: metrics::gauge!(SHARD_QUEUE_DEPTH, "shard" => s.clone()),
            queue_full: metrics::counter!(SHARD_QUEUE_FULL, "shard" => s.clone()),
            queue_capacity: metrics::gauge!(SHARD_QUEUE_CAPACITY, "shard" => s.clone()),
            filter_evaluations: metrics::counter!(FILTER_EVALUATIONS, "shard" => s.clone()),
            refreshes: metrics::counter!(REFRESHES, "shard" => s.clone()),
            replayed: metrics::counter!(REPLAYED, "shard" => s.clone()),
            uring_writes: metrics::counter!(URING_WRITES, "shard" => s),
            loop_turns: LoopTurns::register(shard),
        }
    }
}

/// Counts a durable entity write (`op`: created, updated, deleted).
/// Cluster mode: one pipeline of `commands` answered by Redis in `took`.
pub fn redis_call(took: std::time::Duration, commands: usize) {
    metrics::histogram!(REDIS_CALL_SECONDS).record(took.as_secs_f64());
    metrics::counter!(REDIS_COMMANDS).increment(commands as u64);
}

/// Cluster mode: whether a connection to Redis (`writer` or `reader`) is up.
pub fn redis_connected(conn: &'static str, up: bool) {
    metrics::gauge!(REDIS_CONNECTED, "conn" => conn).set(if up { 1.0 } else { 0.0 });
}

/// The node runs in cluster mode.
pub fn cluster_mode() {
    metrics::gauge!(CLUSTER_MODE).set(1.0);
}

/// Cluster mode: sequenced but not yet applied here.
pub fn stream_lag(lag: u64) {
    metrics::gauge!(STREAM_LAG).set(lag as f64);
}

/// Publications accepted from `source` (where the node did not sequence them itself).
pub fn publications(source: Source, n: u64) {
    let s = match source {
        Source::Http => "http",
        Source::Websocket => "websocket",
    };
    metrics::counter!(PUBLICATIONS, "source" => s).increment(n);
}

pub fn entity_write(op: &'static str) {
    metrics::counter!(ENTITY_WRITES, "op" => op).increment(1);
}

pub fn live_query_created() {
    metrics::gauge!(LIVE_QUERIES).increment(1.0);
}

pub fn live_query_destroyed() {
    metrics::gauge!(LIVE_QUERIES).decrement(1.0);
}

/// The history window's size after a change.
pub fn history_size(publications: usize, bytes: usize) {
    metrics::gauge!(HISTORY_PUBLICATIONS).set(publications as f64);
    metrics::gauge!(HISTORY_BYTES).set(bytes as f64);
}

/// A service group's gauges (the services thread, once a second and when a group goes).
pub fn service_group(group: &str, pending: u64, in_flight: usize, dead: u64, instances: usize) {
    let g = group.to_string();
    metrics::gauge!(SERVICE_PENDING, "group" => g.clone()).set(pending as f64);
    metrics::gauge!(SERVICE_IN_FLIGHT, "group" => g.clone()).set(in_flight as f64);
    metrics::gauge!(SERVICE_DEAD, "group" => g.clone()).set(dead as f64);
    metrics::gauge!(SERVICE_INSTANCES, "group" => g).set(instances as f64);
}

/// Counters of the service queues (the services thread, per loop iteration).
/// Completions whose ack time this node does not know (cluster mode: a task another
/// node sent, completed through this one): counted, not timed.
pub fn service_completed_untimed(n: u64) {
    if n > 0 {
        metrics::counter!(SERVICE_COMPLETED).increment(n);
    }
}

pub fn service_counts(enqueued: u64, completed: &[f64], redelivered: &[&'static str], dead: u64) {
    if enqueued > 0 {
        metrics::counter!(SERVICE_ENQUEUED).increment(enqueued);
    }
    if !completed.is_empty() {
        metrics::counter!(SERVICE_COMPLETED).increment(completed.len() as u64);
        let h = metrics::histogram!(SERVICE_ACK_SECONDS);
        for s in completed {
            h.record(*s);
        }
    }
    for cause in redelivered {
        metrics::counter!(SERVICE_REDELIVERIES, "cause" => *cause).increment(1);
    }
    if dead > 0 {
        metrics::counter!(SERVICE_DEAD_LETTERED).increment(dead);
    }
}

/// The channels' gauges and totals (the services thread, once a second).
pub fn channels(
    connected: usize,
    disconnected: usize,
    backlog: usize,
    cache_bytes: usize,
    collected: u64,
    dropped: u64,
) {
    metrics::gauge!(CHANNEL_BACKLOG_CACHE).set(cache_bytes as f64);
    metrics::gauge!(CHANNELS, "status" => "connected").set(connected as f64);
    metrics::gauge!(CHANNELS, "status" => "disconnected").set(disconnected as f64);
    metrics::gauge!(CHANNEL_BACKLOG).set(backlog as f64);
    metrics::counter!(CHANNEL_EVENTS).absolute(collected);
    metrics::counter!(CHANNEL_DROPPED).absolute(dropped);
}

/// The locks' gauges (the services thread, once a second).
pub fn service_locks(held: usize, waiting: usize) {
    metrics::gauge!(SERVICE_LOCKS_HELD).set(held as f64);
    metrics::gauge!(SERVICE_LOCK_WAITERS).set(waiting as f64);
}

/// Counts new lock grants.
pub fn service_lock_grants(granted: u64) {
    if granted > 0 {
        metrics::counter!(SERVICE_LOCK_GRANTS).increment(granted);
    }
}

/// Counts a refused credential.
pub fn auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

/// Counts an error message sent to a client.
pub fn command_error(code: &'static str) {
    metrics::counter!(COMMAND_ERRORS, "code" => code).increment(1);
}

/// `reason` values of `shardcast_http_connections_closed_total`: a request not complete
/// in time, a keep-alive connection idle too long, a request refused because
/// `limits.max_http_connections` were open, a connection that had not sent a whole
/// request closed to make room when its shard ran short of open files.
pub const HTTP_CLOSE_REASONS: &[&str] =
    &["request_timeout", "idle_timeout", "http_full", "evicted"];

/// Counts a non-WebSocket connection closed by a limit (one of [`HTTP_CLOSE_REASONS`]).
pub fn http_closed(reason: &'static str) {
    metrics::counter!(HTTP_CLOSED, "reason" => reason).increment(1);
}

/// Counts a closed WebSocket connection.
pub fn connection_closed(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Counts an HTTP answer by status class (`2xx`, `4xx`, …).
pub fn http_request(status: u16) {
    let class = match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(HTTP_REQUESTS, "status" => class).increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_metric_names_are_the_stores() {
        use crate::store;
        assert_eq!(super::STORE_COMMITS, store::METRIC_COMMITS);
        assert_eq!(super::STORE_COMMIT_JOBS, store::METRIC_COMMIT_JOBS);
        assert_eq!(super::STORE_COMMIT_BYTES, store::METRIC_COMMIT_BYTES);
        assert_eq!(super::STORE_COMMIT_SECONDS, store::METRIC_COMMIT_SECONDS);
        assert_eq!(super::STORE_COMMIT_FAILURES, store::METRIC_COMMIT_FAILURES);
    }
}
