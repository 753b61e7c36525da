//! The command line (a contract: unknown flags and bad values are refused with a message
//! naming the flag, exit code 2). Parsed by hand to keep dependencies lean.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::net::{parse_ip_ranges, parse_url, Endpoint};

pub const USAGE: &str = "\
loadtest: load generator for the shardcast WebSocket push server

USAGE:
    loadtest <scenario> [options]

SCENARIOS:
    fanout     N subscribers on one path (subscription \"load\"), one publisher posting to
               \"load/fanout\" at --rate; expected deliveries = published x N
    spread     N subscribers over K (--paths) paths load/p0..load/p{K-1}, connection i on
               load/p{i mod K}; publications go round robin over the paths
    idle       N connections authenticated and subscribed that do nothing for --duration;
               reports the server's RSS per connection
    churn      connection cycles at --rate per second for --duration: TCP connect, upgrade,
               authenticated, subscribeEvents, subscribedEvents, close 1000, close echo;
               at most --connections cycles in flight; reports cycles/s achieved,
               failures, setup latency and the server's CPU per cycle
    overflow   fanout with deliberately slow readers (--slow-readers of the connections
               stop reading for --pause-ms at a time, with a small --rcvbuf), against a
               server with a small queue (run it with delivery.queue_capacity = 200, e.g.
               SHARDCAST_DELIVERY__QUEUE_CAPACITY=200): the server's QUEUE_OVERFLOW
               warnings must account for every event not delivered (lost = 0). A paused
               reader's events first fill the kernel's buffers, not the server's queue:
               its own SO_RCVBUF (--rcvbuf) and the server's socket send buffer, which
               on loopback grows up to net.ipv4.tcp_wmem's maximum (4 MiB by default).
               Only what a pause adds beyond those reaches the queue, so the defaults
               (50 connections, --rate 5000, --pause-ms 6000, 10s, --batch-ms 0: ~7 MB
               of events per slow reader per pause) are sized to pass them; a run in
               which nothing overflowed fails (exit 1) and says so
    entities   durable entity writes over REST: --connections keep-alive HTTP/1.1
               connections to --http, each with up to --pipeline requests in flight,
               PUT /api/v1/entities/load/e{n mod K} (K: --entities) with a JSON object
               body of about --payload bytes, at --rate writes per second over all
               connections (0: as fast as they allow); an answer counts when it is 200
               with a \"seq\". Reports acknowledged writes/s, write latency (written to
               answer read), failures with sample bodies, the server's CPU per write.
               No WebSocket connections: --url, --secret, --token and the connection
               options do not apply; --api-key is required
    services   service groups (PROTOCOL.md section 10), one of three --mode's (see
               SERVICES below): enqueue (durable enqueues per second), e2e (publish ->
               task -> taskComplete: tasks/s, latency, fairness, duplicates, lost),
               locks (lock/unlock pairs per second, fencing tokens, exclusion)
    scale      as many subscribed connections as the machine holds (several worker
               processes, source addresses spread, --sockbuf small client sockets), then
               ONE publication to \"load/scale\" at the window's start, held for --duration
               [default: 10s]: reports when it reached every connection (per worker
               process and over all, p50/p99 per connection), each worker's RSS per
               connection, the server processes' (--server-pid, several) RSS per
               connection and open files, and the kernel's memory per socket
               (/proc/net/sockstat, /proc/slabinfo, /proc/meminfo) before and after
               connecting. Connecting stops early when MemAvailable falls below
               --min-available-mib. loadtest/scale.sh starts Redis and the node
               processes around it (README)
    stalls     issue 21's \"no shard stalls\" check: seeds --entities [default: 150000]
               entities in collection \"stalls\" (PUT, pipelined; skipped when there),
               subscribes --connections [default: 100] connections (batchMs 0) to
               \"load\" and publishes to \"load/stalls\" at --rate [default: 200] for four
               phases of --duration each [default: 5s]: quiet, live queries, quiet, live
               queries. In a live-query phase two more connections create a live query
               over the whole collection again and again (filter, orderBy n desc, limit
               1000: a scan of every entity), destroying each after its last page. Reports
               the fan-out's publish -> receive p50/p99/max per kind of phase, the
               creations and their time to the last page, and, from /metrics, shard 0's
               loop-turn p99 and max (shardcast_shard_loop_turn_seconds, absent before
               issue 21: \"n/a\"). Run the server with shards = 1 so that everything
               shares one loop
    soak       all of it at once for --duration (see SOAK below), sampling the server's
               RSS, open files, CPU, /metrics and store size every --sample-every into
               the report; fails when something acknowledged is lost or a series grows

OPTIONS:
    --url URL, --ws URL    WebSocket endpoint [default: ws://127.0.0.1:8080/ws]
    --http URL             REST base for publishing [default: http://<host:port of --url>]
    --secret S             sign an HS256 token per connection (sub load-<i>, role user, scopes *)
    --token T              use this token for every connection (one of --secret/--token)
    --api-key K            api key for POST /api/v1/publish (fanout, spread, overflow) and
                           PUT /api/v1/entities/... (entities)
    --connections N        client connections (churn: most cycles in flight; entities:
                           HTTP connections, at most 10000) [default: 1000; entities: 32;
                           overflow: 50]
    --paths K              paths for spread [default: 100]
    --rate R               publications per second (churn: connection cycles per second;
                           entities: writes per second over all connections, 0: as fast
                           as the connections allow), may be fractional [default: 100;
                           overflow: 5000]
    --duration D           publishing (idle: holding) window, e.g. 30s, 500ms, 2m, 1h or
                           plain seconds [default: 30s; overflow: 10s]
    --payload BYTES        size of each publish request body (entities: of each entity
                           body {\"i\":n,\"pad\":\"xx..\"}) [default: 128]
    --batch-ms MS          connection option batchMs (0: no batching; give it to measure
                           latency). The connection options are sent only when given;
                           otherwise the server's configured default applies (shipped:
                           batchMs 5000, batchMax 1000, framing frames), and the harness
                           assumes the shipped one where it needs a value (the grace).
                           overflow sends batchMs 0 unless given
    --batch-max N          connection option batchMax (the server refuses more than its
                           delivery.queue_capacity)
    --framing F            connection option framing: frames | array
    --compression          offer permessage-deflate (RFC 7692) and inflate what the server
                           compresses (the server needs delivery.compression = \"on\")
    --source-ips RANGE     source addresses, round robin: 127.0.0.1-127.0.0.40, a single
                           address, or a comma-separated list of both [default: kernel's
                           choice; when N > 25000 and --url is loopback IPv4:
                           127.0.0.1-127.0.0.<ceil(N/25000)>]
    --threads T            event-loop threads per process [default: 1]
    --server-pid PID       server process to measure (CPU, RSS); a comma-separated list
                           is summed (several nodes behind one port)
    --target T             shardcast | nats [default: shardcast]. nats: the same scenario
                           against nats-server over its own protocol (WebSocket clients:
                           INFO, CONNECT, SUB, PING/PONG, MSG; publisher: CONNECT and PUB
                           over its own WebSocket connection to --url, or over plain TCP to
                           --nats-url when that is given). Not with overflow (NATS reports
                           no drops); --secret, --token, --api-key, --http, --batch-ms,
                           --batch-max and --framing do not apply to it
    --nats-url URL         --target nats: publish over plain TCP to this nats:// address
                           instead of over a WebSocket to --url [default: none]
    --slow-readers F       overflow: fraction of connections that read slowly [default: 0.5]
    --pause-ms MS          overflow: a slow reader stops reading this long, then reads what
                           is there, and again [default: 6000]; at the end of the window
                           slow readers read normally so that nothing stays queued
    --rcvbuf BYTES         overflow: SO_RCVBUF of the slow readers' sockets (0: the
                           kernel's default) [default: 4096]
    --storm N/D            idle: a reconnect storm: open N connections every D (e.g.
                           200/5ms), the first N at once, however many are still being
                           set up (--max-inflight does not apply); reports each one's
                           setup time (TCP connect to subscribedEvents) as p50/p90/p99/
                           max and the handshakes per second (subscribed / seconds from
                           the first connect to the last subscribed) [default: off]
    --pipeline P           entities, services: requests in flight per connection at most
                           (HTTP/1.1 pipelining; the server answers in order) [default: 1]
    --entities K           entities: ids cycle over e0..e{K-1} (creates first, then
                           updates) [default: 100000]
    --sockbuf BYTES        scale: SO_RCVBUF and SO_SNDBUF of every client socket (0: the
                           kernel's defaults) [default: 4096]
    --min-available-mib N  scale: stop connecting (and go on with what is connected) once
                           /proc/meminfo's MemAvailable is below N MiB (0: never)
                           [default: 0]
    --json FILE            write the JSON report there (\"-\" for stdout)
    -h, --help             this text

SERVICES (loadtest services --mode enqueue|e2e|locks --secret S [--api-key K] ...):
    Service connections authenticate with an HS256 token signed with --secret whose claims
    are {\"sub\":\"svc-<i>\",\"role\":\"service\",\"group\":<--group>}, with the connection
    options given (--batch-ms, --batch-max, --framing) in the URL (none given: the server's
    defaults, shipped batchMs 5000; give --batch-ms 0 for unbatched tasks). Instances subscribe to \"load\"
    (subscription \"work\", the group's durable subscription). Publishers (enqueue, e2e)
    are --connections keep-alive HTTP/1.1 connections, each with up to --pipeline
    requests in flight, POST /api/v1/publish with --batch events on \"load/job\" each
    (data {\"t\":<queued, unix us>,\"i\":n,\"pad\":\"xx..\"} of about --payload bytes), at
    --rate events per second over all (0: as fast as they allow); an answer counts when
    it is 202 with \"accepted\". One process, one event loop per side.
    --mode enqueue         durable enqueues/s: publish for --duration; --instances hold
                           the tasks they get without completing them (with 0, one
                           instance subscribes and leaves first). Then pending + inFlight
                           of GET /api/v1/services must have grown by the accepted events
                           (waits up to --drain); reports both
    --mode e2e             --instances complete every task they receive (one taskComplete
                           per read burst); reports tasks completed/s, publish -> task
                           latency (data.t), tasks per instance (fairness), duplicates
                           (a task received twice), then waits up to --drain for pending
                           + inFlight to reach 0: lost = accepted - distinct tasks of the
                           run completed
    --mode locks           --connections service connections doing lock/unlock pairs on
                           their own names (or --shared-names), up to --pipeline requests
                           in flight each, for --duration; checks that fencing tokens grow
                           per name and that no grant is seen while another connection
                           holds the name. No publishing: --http, --api-key, --rate,
                           --batch, --payload, --instances and --drain do not apply
    --group G              the service group [default: loadtest]; a fresh one per run
                           gives clean queue numbers
    --instances N          service instances [default: enqueue 0, e2e 4]
    --connections N        publishers [default: 4]; locks: service connections [default: 16]
    --pipeline P           requests in flight per publisher / service connection [default: 1]
    --batch N              events per publish request, at most 10000 [default: 100]
    --rate R               events per second over all publishers [default: 0: as fast as
                           they allow]
    --payload BYTES        size of each event's data object [default: 128]
    --drain D              after the window: how long to wait for the queue [default: 30s]
    --names K              locks: distinct names per connection [default: 1]
    --shared-names K       locks: all connections compete for K names (with --wait-ms)
    --wait-ms MS           locks: waitMs of each lock [default: 0; 5000 with --shared-names]
    --ttl-ms MS            locks: ttlMs of each lock [default: 10000]
    Not with --token, --paths, --source-ips, --threads, --fd-budget, --max-inflight or
    --target nats.

SOAK (loadtest soak --secret S --api-key K [--server-pid PID] [--data-dir DIR] ...):
    One process, paths under soak/ and collection soakent. Every connection sends
    batchMs (--batch-ms, default 100 here) and the --batch-max/--framing given.
    --connections N        fan-out subscribers, connection i of soak/fan/p{i mod K}
                           [default: 2000 x scale]
    --paths K              fan-out paths [default: 16]
    --rate R               publications/s round robin over soak/fan/p{n mod K}/tick
                           [default: 2000 x scale]
    --payload BYTES        their body size [default: 128]
    --churn-rate R         connection cycles/s (connect, subscribe, close)
                           [default: 50 x scale]
    --slow-conns N         slow readers on soak/slow, beside as many fast readers
                           [default: 4]
    --slow-rate R          publications/s to soak/slow/tick [default: 400]
    --slow-payload BYTES   their body size [default: 4096]
    --slow-read-rate B     bytes/s each slow reader reads (64 KiB SO_RCVBUF)
                           [default: half the stream, slow-rate x slow-payload / 2]; the
                           server's queue_capacity must be small enough to fill (e.g.
                           1000), and (batchMax x payload + 4 MiB) / B well below the
                           pong timeout (30 s), or the server closes them (4003)
    --filtered N           filtered subscriptions on soak/flt, 20 per connection
                           [default: 200 x scale]
    --filtered-rate R      publications/s to soak/flt/x [default: 200 x scale]
    --live-queries N       live queries over soakent, one connection, at most 16
                           [default: 4]
    --entities K           entity ids soakent/e0..e{K-1} [default: 1000]
    --entity-rate R        entity PUTs/s [default: 100 x scale]
    --instances N          service instances completing tasks [default: 3]
    --group G              their group [default: soak-<unix time>, a fresh one]
    --task-rate R          task events/s published to soak/job/x [default: 200 x scale]
    --scale F              multiplies the defaults marked x scale [default: 1]
    --duration D           [default: 1h]
    --sample-every D       sampling interval [default: 30s]
    --data-dir DIR         the server's data_dir: its size is the store size series
    --nodes H:P,H:P,...    cluster mode: 2 to 16 nodes sharing one Redis (ws://H:P/ws,
                           http://H:P), instead of --url/--http. Every part is spread over
                           the nodes and published or written through another node than
                           its readers' (README, soak in cluster mode); --server-pid then
                           names one pid per node, in this order (per-node series);
                           not with --data-dir (a cluster node's data is in Redis)
    Checks: every acknowledged task event completed, every filtered delivery matching
    its filter and none missing, fan-out and slow readers lost = 0 after the overflow
    warnings, live query sets equal to the REST answer, sampled entities equal to their
    last acknowledged write; and after a warm-up (10%) no series (RSS, open files, shard
    queue depth, service backlog, store) grew from the 2nd to the 4th quarter's median
    beyond its threshold (README). Prints a markdown table of the samples on stdout.

ADVANCED:
    --fd-budget N          connections one process may hold before more worker processes
                           are started [default: RLIMIT_NOFILE hard limit - 500]
    --max-inflight N       handshakes in flight at once, over all processes [default: 500]

The run: connect and subscribe everything (bounded), publish for --duration at --rate,
wait a grace period of max(2s, 2 x batchMs) for deliveries in flight (batchMs: --batch-ms,
else the shipped server default 5000; --target nats: 0; shorter when all arrived; longer,
up to 10 x, while deliveries still arrive: what is still coming is not lost), print a table, write --json (entities: connect, write for --duration, wait for
the answers in flight; services: subscribe, publish or lock for --duration, wait for the
answers and the queue). Exit codes: 0 run completed and healthy, 1 run completed with
failed connections, publish errors, lost deliveries or failed writes (services: also
duplicates, a queue that did not settle or count right, lock violations or errors),
2 usage error, 3 the run could not start.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioName {
    Fanout,
    Spread,
    Idle,
    Churn,
    Overflow,
    Entities,
    Services,
    Soak,
    Scale,
    Stalls,
}

impl ScenarioName {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Fanout => "fanout",
            ScenarioName::Spread => "spread",
            ScenarioName::Idle => "idle",
            ScenarioName::Churn => "churn",
            ScenarioName::Overflow => "overflow",
            ScenarioName::Entities => "entities",
            ScenarioName::Services => "services",
            ScenarioName::Soak => "soak",
            ScenarioName::Scale => "scale",
            ScenarioName::Stalls => "stalls",
        }
    }

    fn parse(s: &str) -> Option<ScenarioName> {
        Some(match s {
            "fanout" => ScenarioName::Fanout,
            "spread" => ScenarioName::Spread,
            "idle" => ScenarioName::Idle,
            "churn" => ScenarioName::Churn,
            "overflow" => ScenarioName::Overflow,
            "entities" => ScenarioName::Entities,
            "services" => ScenarioName::Services,
            "soak" => ScenarioName::Soak,
            "scale" => ScenarioName::Scale,
            "stalls" => ScenarioName::Stalls,
            _ => return None,
        })
    }

    pub fn publishes(self) -> bool {
        matches!(
            self,
            ScenarioName::Fanout
                | ScenarioName::Spread
                | ScenarioName::Overflow
                | ScenarioName::Scale
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Shardcast,
    Nats,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Shardcast => "shardcast",
            Target::Nats => "nats",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Frames,
    Array,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Frames => "frames",
            Framing::Array => "array",
        }
    }
}

/// Scenario services: what is measured (PROTOCOL.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicesMode {
    /// Durable enqueues per second: publishers only; instances (if any) hold their tasks.
    Enqueue,
    /// Publish → task → taskComplete: instances complete every task they receive.
    E2e,
    /// lock / unlock pairs over service connections; no publishing.
    Locks,
}

impl ServicesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServicesMode::Enqueue => "enqueue",
            ServicesMode::E2e => "e2e",
            ServicesMode::Locks => "locks",
        }
    }
}

/// Scenario soak's own settings (the sizes of each part of the mix, the sampling). The
/// `*_rate`s are per second; the defaults are scaled by `--scale` where the help says so.
#[derive(Debug, Clone, PartialEq)]
pub struct SoakOpts {
    pub scale: f64,
    /// Fan-out subscribers over `paths` paths `soak/fan/p{i}`, and publications per
    /// second over those paths (round robin).
    pub connections: u64,
    pub paths: u64,
    pub rate: f64,
    /// Connection cycles per second (connect, subscribe, close) and the most in flight.
    pub churn_rate: f64,
    pub churn_inflight: u64,
    /// Slow readers on `soak/slow` (as many fast readers beside them), the stream that
    /// fills their queues (publications per second, body bytes), and the bytes per
    /// second each slow reader reads.
    pub slow_conns: u64,
    pub slow_rate: f64,
    pub slow_payload: usize,
    pub slow_read_rate: f64,
    /// Filtered subscriptions on `soak/flt` (20 per connection) and the publications per
    /// second that feed them.
    pub filtered: u64,
    pub filtered_rate: f64,
    /// Live queries over collection `soakent`, and the entity writes per second that feed
    /// them (ids cycle over `--entities`).
    pub live_queries: u64,
    pub entity_rate: f64,
    /// Service instances of `group` completing tasks of `soak/job`, and the task events
    /// published per second.
    pub instances: u64,
    pub task_rate: f64,
    pub group: String,
    /// The connection option batchMs every soak connection sends.
    pub batch_ms: u64,
    pub sample_every: Duration,
    /// The server's data directory: its size is the store size series.
    pub data_dir: Option<PathBuf>,
    /// Cluster mode (`--nodes`): every node's WebSocket and REST endpoint, in the order
    /// given (empty: one server at `--url`/`--http`).
    pub nodes: Vec<SoakNode>,
}

/// One node of a cluster soak: `ws://host:port/ws` and `http://host:port`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoakNode {
    pub ws: Endpoint,
    pub http: Endpoint,
}

impl Default for SoakOpts {
    fn default() -> Self {
        SoakOpts {
            scale: 1.0,
            connections: 2000,
            paths: 16,
            rate: 2000.0,
            churn_rate: 50.0,
            churn_inflight: 100,
            slow_conns: 4,
            slow_rate: 400.0,
            slow_payload: 4096,
            slow_read_rate: 400.0 * 4096.0 / 2.0,
            filtered: 200,
            filtered_rate: 200.0,
            live_queries: 4,
            entity_rate: 100.0,
            instances: 3,
            task_rate: 200.0,
            group: String::new(),
            batch_ms: 100,
            sample_every: Duration::from_secs(30),
            data_dir: None,
            nodes: Vec::new(),
        }
    }
}

/// Scenario services' own settings (defaults elsewhere; only read by scenario services).
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesOpts {
    pub mode: ServicesMode,
    /// Service instances subscribed to the group (enqueue: 0 means one instance creates
    /// the durable subscription and leaves before the window).
    pub instances: u64,
    /// Events per publish request.
    pub batch: usize,
    /// The service group (the tokens' `group` claim).
    pub group: String,
    /// locks: distinct names per connection, or (`Some(K)`) K names all connections share.
    pub names: u64,
    pub shared_names: Option<u64>,
    /// locks: `waitMs` and `ttlMs` of each lock request.
    pub wait_ms: u64,
    pub ttl_ms: u64,
    /// e2e: how long to wait after the window for the group's queue to empty (enqueue:
    /// for `pending` to count every accepted event).
    pub drain: Duration,
}

impl Default for ServicesOpts {
    fn default() -> Self {
        ServicesOpts {
            mode: ServicesMode::E2e,
            instances: 4,
            batch: 100,
            group: "loadtest".to_string(),
            names: 1,
            shared_names: None,
            wait_ms: 0,
            ttl_ms: 10_000,
            drain: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    Secret(String),
    Token(String),
    /// `--target nats`: the harness's nats-server runs without authentication; scenario
    /// entities: no WebSocket connections (its writes carry `--api-key`).
    None,
}

/// Everything a run needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub scenario: ScenarioName,
    pub target: Target,
    pub url: Endpoint,
    pub url_raw: String,
    pub http: Endpoint,
    pub http_raw: String,
    pub auth: Auth,
    pub api_key: Option<String>,
    pub connections: u64,
    pub paths: u64,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
    /// The connection options the user gave (`--batch-ms`, `--batch-max`, `--framing`).
    /// Only these are sent: an option the harness made up could be one the server refuses
    /// (a `batchMax` above its `queue_capacity` fails every connection with `BAD_MESSAGE`).
    pub batch_ms: Option<u64>,
    pub batch_max: Option<u64>,
    pub framing: Option<Framing>,
    /// `--compression`: the subscribers offer permessage-deflate.
    pub compression: bool,
    /// `--target nats` with `--nats-url`: the publisher sends its `PUB`s over plain TCP
    /// there. Without it the publisher uses a WebSocket connection to `--url`, so the run
    /// needs nothing but the endpoint the subscribers use.
    pub nats: Option<Endpoint>,
    /// overflow: fraction of slow readers, their pause and receive buffer.
    pub slow_readers: f64,
    pub pause: Duration,
    pub rcvbuf: usize,
    /// scale: `SO_RCVBUF`/`SO_SNDBUF` of every client socket (None: the kernel's), and
    /// the MemAvailable (bytes) below which connecting stops (0: never).
    pub sockbuf: Option<usize>,
    pub min_available: u64,
    /// idle `--storm N/D`: N connections every D.
    pub storm: Option<(u64, Duration)>,
    /// entities: requests in flight per HTTP connection at most, and the number of
    /// distinct entity ids (`e0..e{K-1}`).
    pub pipeline: usize,
    pub entities: u64,
    /// scenario services: mode, instances, batch, group, lock names (defaults otherwise).
    pub services: ServicesOpts,
    /// scenario soak: the mix and the sampling (defaults otherwise).
    pub soak: SoakOpts,
    /// Empty: let the kernel pick.
    pub source_ips: Vec<Ipv4Addr>,
    pub source_ips_raw: Option<String>,
    pub threads: usize,
    pub server_pids: Vec<u32>,
    pub json: Option<PathBuf>,
    pub fd_budget: Option<u64>,
    pub max_inflight: usize,
    /// Set in a worker process: index of its first connection.
    pub worker_offset: Option<u64>,
}

/// The shipped server's `delivery.batch_ms` (PROTOCOL.md §2): what a connection that does
/// not send `batchMs` gets from a server with the shipped configuration. The harness cannot
/// ask a server for its configured default, so where it needs the flush interval it
/// assumes this one.
pub const SERVER_DEFAULT_BATCH_MS: u64 = 5000;

impl Config {
    /// The flush interval the server applies to the harness's connections: `--batch-ms`,
    /// else the shipped default; 0 for nats-server, which writes as messages come.
    pub fn applied_batch_ms(&self) -> u64 {
        match self.target {
            Target::Nats => 0,
            Target::Shardcast => self.batch_ms.unwrap_or(SERVER_DEFAULT_BATCH_MS),
        }
    }

    /// Grace period after publishing: max(2 s, 2 x the applied batchMs).
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.applied_batch_ms().saturating_mul(2).max(2000))
    }

    /// The connection options the user gave, as URL query parameters
    /// (`batchMs=..&batchMax=..&framing=..`, each only when given; empty for none).
    pub fn options_query(&self) -> String {
        let mut q = Vec::new();
        if let Some(v) = self.batch_ms {
            q.push(format!("batchMs={v}"));
        }
        if let Some(v) = self.batch_max {
            q.push(format!("batchMax={v}"));
        }
        if let Some(f) = self.framing {
            q.push(format!("framing={}", f.as_str()));
        }
        q.join("&")
    }

    /// How long the grace period may stretch while deliveries still arrive: a server
    /// that is behind but still delivering is slow, not losing; 10 x the grace period.
    pub fn grace_limit(&self) -> Duration {
        self.grace() * 10
    }

    /// The argument list of a worker process holding connections
    /// `offset..offset+count` of this run.
    pub fn worker_args(&self, offset: u64, count: u64, max_inflight: usize) -> Vec<String> {
        let mut a = vec![
            self.scenario.as_str().to_string(),
            "--worker".into(),
            "--worker-offset".into(),
            offset.to_string(),
            "--connections".into(),
            count.to_string(),
            "--url".into(),
            self.url_raw.clone(),
            "--paths".into(),
            self.paths.to_string(),
            "--duration".into(),
            format!("{}ms", self.duration.as_millis()),
            "--threads".into(),
            self.threads.to_string(),
            "--target".into(),
            self.target.as_str().into(),
            "--max-inflight".into(),
            max_inflight.to_string(),
        ];
        if self.target == Target::Shardcast {
            a.extend(["--http".into(), self.http_raw.clone()]);
            // only what the user gave: a worker must send what the parent would
            if let Some(v) = self.batch_ms {
                a.extend(["--batch-ms".into(), v.to_string()]);
            }
            if let Some(v) = self.batch_max {
                a.extend(["--batch-max".into(), v.to_string()]);
            }
            if let Some(f) = self.framing {
                a.extend(["--framing".into(), f.as_str().into()]);
            }
            if self.compression {
                a.push("--compression".into());
            }
        }
        if self.scenario == ScenarioName::Churn {
            // this worker's share of the cycle rate
            let share = self.rate * count as f64 / self.connections.max(1) as f64;
            a.extend(["--rate".to_string(), format!("{share}")]);
        }
        if let Some((step, every)) = self.storm {
            // this worker's share of each step
            let share = (step * count).div_ceil(self.connections.max(1)).max(1);
            a.extend([
                "--storm".to_string(),
                format!("{share}/{}ms", every.as_secs_f64() * 1000.0),
            ]);
        }
        if self.scenario == ScenarioName::Scale {
            a.extend([
                "--sockbuf".to_string(),
                self.sockbuf.unwrap_or(0).to_string(),
            ]);
        }
        if self.scenario == ScenarioName::Overflow {
            a.extend([
                "--slow-readers".to_string(),
                format!("{}", self.slow_readers),
                "--pause-ms".to_string(),
                self.pause.as_millis().to_string(),
                "--rcvbuf".to_string(),
                self.rcvbuf.to_string(),
            ]);
        }
        match &self.auth {
            Auth::Secret(s) => a.extend(["--secret".to_string(), s.clone()]),
            Auth::Token(t) => a.extend(["--token".to_string(), t.clone()]),
            Auth::None => {}
        }
        if !self.source_ips.is_empty() {
            a.extend(["--source-ips".to_string(), ips_arg(&self.source_ips)]);
        }
        a
    }
}

/// A compact argument for a list of addresses (ranges of consecutive ones).
fn ips_arg(ips: &[Ipv4Addr]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ips.len() {
        let mut j = i;
        while j + 1 < ips.len() && u32::from(ips[j + 1]) == u32::from(ips[j]).wrapping_add(1) {
            j += 1;
        }
        if i == j {
            parts.push(ips[i].to_string());
        } else {
            parts.push(format!("{}-{}", ips[i], ips[j]));
        }
        i = j + 1;
    }
    parts.join(",")
}

#[derive(Debug)]
pub enum Command {
    Help,
    Run(Box<Config>),
}

/// A usage error; the message names the flag. Exit code 2.
#[derive(Debug, PartialEq)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

/// Flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "--url",
    "--http",
    "--secret",
    "--token",
    "--api-key",
    "--connections",
    "--paths",
    "--rate",
    "--duration",
    "--payload",
    "--batch-ms",
    "--batch-max",
    "--framing",
    "--source-ips",
    "--threads",
    "--server-pid",
    "--target",
    "--json",
    "--fd-budget",
    "--max-inflight",
    "--worker-offset",
    "--nats-url",
    "--slow-readers",
    "--pause-ms",
    "--rcvbuf",
    "--sockbuf",
    "--min-available-mib",
    "--storm",
    "--pipeline",
    "--entities",
    "--ws",
    "--mode",
    "--instances",
    "--batch",
    "--group",
    "--names",
    "--shared-names",
    "--wait-ms",
    "--ttl-ms",
    "--drain",
    "--scale",
    "--churn-rate",
    "--slow-conns",
    "--slow-rate",
    "--slow-payload",
    "--slow-read-rate",
    "--filtered",
    "--filtered-rate",
    "--live-queries",
    "--entity-rate",
    "--task-rate",
    "--sample-every",
    "--data-dir",
    "--nodes",
];

/// Flags only scenario soak takes.
const SOAK_ONLY: &[&str] = &[
    "--scale",
    "--churn-rate",
    "--slow-conns",
    "--slow-rate",
    "--slow-payload",
    "--slow-read-rate",
    "--filtered",
    "--filtered-rate",
    "--live-queries",
    "--entity-rate",
    "--task-rate",
    "--sample-every",
    "--data-dir",
    "--nodes",
];

/// Every flag scenario soak takes: its own, the endpoints and credentials, the fan-out's
/// (`--connections`, `--paths`, `--rate`, `--payload`), the connection options,
/// `--entities`, and the services' `--instances` and `--group`.
const SOAK_FLAGS: &[&str] = &[
    "--paths",
    "--url",
    "--ws",
    "--http",
    "--secret",
    "--api-key",
    "--server-pid",
    "--json",
    "--duration",
    "--connections",
    "--rate",
    "--payload",
    "--batch-ms",
    "--batch-max",
    "--framing",
    "--entities",
    "--instances",
    "--group",
];

/// Flags only scenario services takes.
const SERVICES_ONLY: &[&str] = &[
    "--mode",
    "--instances",
    "--batch",
    "--group",
    "--names",
    "--shared-names",
    "--wait-ms",
    "--ttl-ms",
    "--drain",
];

/// Flags scenario services refuses (its instances sign their own service tokens, and it
/// runs in one process), with the reason given.
const SERVICES_REFUSED: &[(&[&str], &str)] = &[
    (
        &["--token"],
        "each service instance signs its own token (role service, --group) with --secret",
    ),
    (
        &["--paths"],
        "its instances subscribe to \"load\" and it publishes to \"load/job\"",
    ),
    (
        &[
            "--source-ips",
            "--threads",
            "--fd-budget",
            "--max-inflight",
            "--worker",
            "--worker-offset",
        ],
        "it runs in one process on one event loop per side",
    ),
];

/// Flags scenario services refuses in mode locks (no publishing), and in modes enqueue
/// and e2e (no locks).
const LOCKS_REFUSED: &[&str] = &[
    "--http",
    "--api-key",
    "--rate",
    "--batch",
    "--payload",
    "--instances",
    "--drain",
];
const QUEUE_REFUSED: &[&str] = &["--names", "--shared-names", "--wait-ms", "--ttl-ms"];

/// Flags scenario entities refuses (it opens no WebSocket connections and runs in one
/// process, on one event loop), with the reason given.
const ENTITIES_REFUSED: &[(&[&str], &str)] = &[
    (
        &["--url", "--ws", "--secret", "--token"],
        "it opens no WebSocket connections; it writes over --http with --api-key",
    ),
    (
        &["--paths", "--batch-ms", "--batch-max", "--framing"],
        "it opens no WebSocket connections",
    ),
    (
        &[
            "--source-ips",
            "--threads",
            "--fd-budget",
            "--max-inflight",
            "--worker",
            "--worker-offset",
        ],
        "it runs in one process on one event loop",
    ),
];

/// Flags without a value.
const BOOL_FLAGS: &[&str] = &["--worker", "--compression"];

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    let mut scenario: Option<ScenarioName> = None;
    let mut seen: Vec<(&'static str, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if a == "-h" || a == "--help" {
            return Ok(Command::Help);
        }
        if a.starts_with('-') {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a, None),
            };
            let flag: &'static str = if let Some(f) = VALUE_FLAGS.iter().find(|f| **f == name) {
                f
            } else if let Some(f) = BOOL_FLAGS.iter().find(|f| **f == name) {
                if inline.is_some() {
                    return err(format!("{f} takes no value"));
                }
                f
            } else {
                return err(format!("unknown flag {name} (see --help)"));
            };
            if seen.iter().any(|(f, _)| *f == flag) {
                return err(format!("{flag} given more than once"));
            }
            let value = if BOOL_FLAGS.contains(&flag) {
                String::new()
            } else if let Some(v) = inline {
                v
            } else {
                match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => return err(format!("{flag} needs a value")),
                }
            };
            seen.push((flag, value));
        } else if scenario.is_none() {
            scenario = Some(ScenarioName::parse(a).ok_or_else(|| {
                CliError(format!(
                    "unknown scenario {a:?} (fanout, spread, idle, churn, overflow, entities, services, soak, scale, stalls)"
                ))
            })?);
        } else {
            return err(format!("unexpected argument {a:?}"));
        }
    }
    let Some(scenario) = scenario else {
        return err(
            "missing scenario (fanout, spread, idle, churn, overflow, entities, services, soak, scale, stalls); see --help",
        );
    };
    let get = |flag: &str| -> Option<&str> {
        seen.iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    };

    if scenario == ScenarioName::Soak {
        // soak drives shardcast's whole API in one process: everything else is refused
        for (flag, _) in &seen {
            if !SOAK_FLAGS.contains(flag) && !SOAK_ONLY.contains(flag) {
                return err(format!("{flag} does not apply to scenario soak"));
            }
        }
    } else {
        for flag in SOAK_ONLY {
            if get(flag).is_some() {
                return err(format!("{flag} only applies to scenario soak"));
            }
        }
    }
    let target = match get("--target") {
        None | Some("shardcast") => Target::Shardcast,
        Some("nats") => Target::Nats,
        Some(v) => return err(format!("--target: {v:?} is not shardcast or nats")),
    };
    let is_worker = get("--worker").is_some();
    if scenario == ScenarioName::Entities {
        if target == Target::Nats {
            return err(
                "--target nats: scenario entities writes shardcast's entity API (PROTOCOL.md §8)",
            );
        }
        for (flags, why) in ENTITIES_REFUSED {
            for flag in *flags {
                if get(flag).is_some() {
                    return err(format!(
                        "{flag} does not apply to scenario entities ({why})"
                    ));
                }
            }
        }
        if get("--api-key").is_none() {
            return err("--api-key is required for scenario entities (it writes entities)");
        }
    } else {
        if get("--entities").is_some()
            && !matches!(scenario, ScenarioName::Soak | ScenarioName::Stalls)
        {
            return err("--entities only applies to scenarios entities and stalls");
        }
        if get("--pipeline").is_some() && scenario != ScenarioName::Services {
            return err("--pipeline only applies to scenario entities and services");
        }
    }
    if scenario == ScenarioName::Services {
        if target == Target::Nats {
            return err(
                "--target nats: scenario services drives shardcast's service groups (PROTOCOL.md §10)",
            );
        }
        for (flags, why) in SERVICES_REFUSED {
            for flag in *flags {
                if get(flag).is_some() {
                    return err(format!(
                        "{flag} does not apply to scenario services ({why})"
                    ));
                }
            }
        }
    } else if scenario != ScenarioName::Soak {
        for flag in SERVICES_ONLY {
            if get(flag).is_some() {
                return err(format!("{flag} only applies to scenario services"));
            }
        }
    }
    if target == Target::Nats {
        for flag in [
            "--secret",
            "--token",
            "--api-key",
            "--http",
            "--batch-ms",
            "--batch-max",
            "--framing",
        ] {
            if get(flag).is_some() {
                return err(format!("{flag} does not apply to --target nats"));
            }
        }
        if scenario == ScenarioName::Overflow {
            return err(
                "--target nats: scenario overflow needs a server that reports dropped counts \
                 (NATS disconnects slow consumers instead)",
            );
        }
    } else if get("--nats-url").is_some() {
        return err("--nats-url only applies to --target nats");
    }
    if scenario == ScenarioName::Stalls {
        if target == Target::Nats {
            return err(
                "--target nats: scenario stalls creates shardcast live queries (PROTOCOL.md §7)",
            );
        }
        if get("--api-key").is_none() {
            return err(
                "--api-key is required for scenario stalls (it writes entities and publishes)",
            );
        }
        for (flag, why) in [
            ("--paths", "the fan-out is on one path"),
            (
                "--batch-ms",
                "it measures latency: every connection has batchMs 0",
            ),
            ("--batch-max", "every connection has the server's batchMax"),
            ("--framing", "every connection has framing frames"),
            ("--payload", "events are small"),
            ("--threads", "one thread per connection"),
            ("--source-ips", "a few hundred connections at most"),
            ("--worker", "it runs in one process"),
            ("--worker-offset", "it runs in one process"),
            ("--fd-budget", "it runs in one process"),
            ("--max-inflight", "it connects one by one"),
        ] {
            if get(flag).is_some() {
                return err(format!("{flag} does not apply to scenario stalls ({why})"));
            }
        }
    }
    if scenario != ScenarioName::Idle && get("--storm").is_some() {
        return err("--storm only applies to scenario idle");
    }
    if scenario == ScenarioName::Scale {
        if target == Target::Nats {
            return err("--target nats: scenario scale measures shardcast nodes");
        }
        for (flag, why) in [
            (
                "--rate",
                "it publishes exactly one event, at the window's start",
            ),
            ("--paths", "every connection subscribes to \"load\""),
            ("--threads", "each worker process runs one event loop"),
        ] {
            if get(flag).is_some() && !is_worker {
                return err(format!("{flag} does not apply to scenario scale ({why})"));
            }
        }
    } else {
        for flag in ["--sockbuf", "--min-available-mib"] {
            if get(flag).is_some() {
                return err(format!("{flag} only applies to scenario scale"));
            }
        }
    }
    if scenario != ScenarioName::Overflow {
        for flag in ["--slow-readers", "--pause-ms", "--rcvbuf"] {
            if get(flag).is_some() {
                return err(format!("{flag} only applies to scenario overflow"));
            }
        }
    }
    let url_default = match target {
        Target::Shardcast => "ws://127.0.0.1:8080/ws",
        Target::Nats => "ws://127.0.0.1:8080/",
    };
    // --ws is another name for --url
    let (url_flag, url_given) = match (get("--url"), get("--ws")) {
        (Some(_), Some(_)) => return err("--url and --ws name the same endpoint: give one"),
        (None, Some(v)) => ("--ws", Some(v)),
        (u, None) => ("--url", u),
    };
    let url_raw = url_given.unwrap_or(url_default).to_string();
    let url = parse_url(&url_raw, "ws").map_err(|e| CliError(format!("{url_flag}: {e}")))?;
    let http_raw = match get("--http") {
        Some(v) => v.to_string(),
        None => format!("http://{}", url.host_header),
    };
    let http = parse_url(&http_raw, "http").map_err(|e| CliError(format!("--http: {e}")))?;
    // --target nats without --nats-url publishes over a WebSocket to --url (the TCP port
    // of a nats-server behind a WebSocket endpoint is often not reachable, and guessing
    // <host>:4222 published to whatever listens there).
    let nats = match get("--nats-url") {
        Some(raw) if target == Target::Nats => {
            Some(parse_url(raw, "nats").map_err(|e| CliError(format!("--nats-url: {e}")))?)
        }
        _ => None,
    };

    // A flag that is missing is reported only after every given value was checked, so
    // `--connections many` is named before a missing `--secret`.
    let mut missing: Option<&'static str> = None;
    if scenario == ScenarioName::Services && get("--secret").is_none() {
        missing = Some(
            "--secret is required for scenario services (each instance signs a service token)",
        );
    }
    if scenario == ScenarioName::Soak && get("--secret").is_none() {
        missing = Some("--secret is required for scenario soak (it signs user and service tokens)");
    }
    let auth = match (get("--secret"), get("--token")) {
        _ if target == Target::Nats || scenario == ScenarioName::Entities => Auth::None,
        (Some(_), Some(_)) => return err("--secret and --token exclude each other"),
        (Some(""), None) => return err("--secret: empty"),
        (None, Some("")) => return err("--token: empty"),
        (Some(s), None) => Auth::Secret(s.to_string()),
        (None, Some(t)) => Auth::Token(t.to_string()),
        (None, None) => {
            missing = missing.or(Some("one of --secret or --token is required"));
            Auth::None
        }
    };
    let worker_offset = match get("--worker-offset") {
        Some(v) => Some(parse_int("--worker-offset", v, 0, u64::MAX / 2)?),
        None => None,
    };
    if is_worker != worker_offset.is_some() {
        return err("--worker and --worker-offset go together (internal flags)");
    }
    let api_key = match get("--api-key") {
        Some("") => return err("--api-key: empty"),
        Some(k) => Some(k.to_string()),
        None => None,
    };

    let services = if scenario == ScenarioName::Services {
        parse_services(&get)?
    } else {
        ServicesOpts::default()
    };
    let connections = if scenario == ScenarioName::Services {
        let default = match services.mode {
            ServicesMode::Locks => "16",
            ServicesMode::Enqueue | ServicesMode::E2e => "4",
        };
        parse_int(
            "--connections",
            get("--connections").unwrap_or(default),
            1,
            10_000,
        )?
    } else if scenario == ScenarioName::Entities {
        // one process, one event loop: no worker processes to spread more over
        parse_int(
            "--connections",
            get("--connections").unwrap_or("32"),
            1,
            10_000,
        )?
    } else if scenario == ScenarioName::Stalls {
        // one thread per connection
        parse_int(
            "--connections",
            get("--connections").unwrap_or("100"),
            1,
            2_000,
        )?
    } else if scenario == ScenarioName::Overflow {
        // few connections at a high rate: each slow reader must fall behind by more than
        // the kernel's buffers hold (see the help), without the fan-out saturating the
        // machine
        parse_int(
            "--connections",
            get("--connections").unwrap_or("50"),
            1,
            10_000_000,
        )?
    } else {
        parse_int(
            "--connections",
            get("--connections").unwrap_or("1000"),
            1,
            10_000_000,
        )?
    };
    let paths = parse_int("--paths", get("--paths").unwrap_or("100"), 1, 10_000_000)?;
    let rate_default = match scenario {
        ScenarioName::Services => "0",
        ScenarioName::Overflow => "5000",
        ScenarioName::Stalls => "200",
        _ => "100",
    };
    let duration = match get("--duration") {
        Some(v) => parse_duration(v).map_err(|e| CliError(format!("--duration: {e}")))?,
        None if scenario == ScenarioName::Soak => Duration::from_secs(3600),
        None if scenario == ScenarioName::Stalls => Duration::from_secs(5),
        None if scenario == ScenarioName::Overflow || scenario == ScenarioName::Scale => {
            Duration::from_secs(10)
        }
        None => Duration::from_secs(30),
    };
    let rate = if scenario == ScenarioName::Scale {
        // one publication: number 0 is due at the window's start, number 1 after twice
        // the window, so never
        if duration.is_zero() {
            return err("--duration: scenario scale needs a window to publish in");
        }
        0.5 / duration.as_secs_f64()
    } else {
        parse_rate(get("--rate").unwrap_or(rate_default))?
    };
    let payload = parse_int("--payload", get("--payload").unwrap_or("128"), 0, 16 << 20)? as usize;
    // Not given: not sent, the server's default applies. The bounds are the harness's
    // (whole numbers, batchMax at least 1); the server's own (max_batch_ms,
    // queue_capacity) are its to enforce, and its BAD_MESSAGE is reported per connection.
    let batch_ms = match get("--batch-ms") {
        Some(v) => Some(parse_int("--batch-ms", v, 0, 3_600_000)?),
        // overflow measures the slow readers: with the server's batching (5 s shipped) and
        // a ring smaller than batchMax, every reader's ring would fill between flushes;
        // scale measures when one publication reaches everyone, not the flush interval
        None if scenario == ScenarioName::Overflow || scenario == ScenarioName::Scale => Some(0),
        None => None,
    };
    let batch_max = match get("--batch-max") {
        Some(v) => Some(parse_int("--batch-max", v, 1, 10_000_000)?),
        None => None,
    };
    let compression = get("--compression").is_some();
    let framing = match get("--framing") {
        None => None,
        Some("frames") => Some(Framing::Frames),
        Some("array") => Some(Framing::Array),
        Some(v) => return err(format!("--framing: {v:?} is not frames or array")),
    };
    let source_ips_raw = get("--source-ips").map(str::to_string);
    let mut source_ips = match &source_ips_raw {
        Some(v) => parse_ip_ranges(v).map_err(|e| CliError(format!("--source-ips: {e}")))?,
        None => Vec::new(),
    };
    if !source_ips.is_empty() && !url.addr.is_ipv4() {
        return err("--source-ips: IPv4 source addresses need an IPv4 --url");
    }
    if source_ips.is_empty() && !is_worker && connections > 25_000 {
        if let SocketAddr::V4(a) = url.addr {
            if a.ip().is_loopback() {
                let n = connections.div_ceil(25_000).min(254) as u8;
                source_ips = (1..=n).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect();
            }
        }
    }
    let threads = parse_int("--threads", get("--threads").unwrap_or("1"), 1, 256)? as usize;
    let server_pids = match get("--server-pid") {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|p| match p.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => err(format!("--server-pid: {p:?} is not a process id")),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let json = match get("--json") {
        Some("") => return err("--json: empty file name"),
        Some(v) => Some(PathBuf::from(v)),
        None => None,
    };
    let fd_budget = match get("--fd-budget") {
        Some(v) => Some(parse_int("--fd-budget", v, 1, 10_000_000)?),
        None => None,
    };
    let max_inflight = parse_int(
        "--max-inflight",
        get("--max-inflight").unwrap_or("500"),
        1,
        1_000_000,
    )? as usize;

    let slow_readers = match get("--slow-readers") {
        None => 0.5,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => f,
            _ => return err(format!("--slow-readers: {v:?} is not a fraction in 0..=1")),
        },
    };
    let pause = Duration::from_millis(parse_int(
        "--pause-ms",
        get("--pause-ms").unwrap_or("6000"),
        1,
        20_000,
    )?);
    let rcvbuf = parse_int("--rcvbuf", get("--rcvbuf").unwrap_or("4096"), 0, 64 << 20)? as usize;
    let sockbuf = if scenario == ScenarioName::Scale {
        match parse_int("--sockbuf", get("--sockbuf").unwrap_or("4096"), 0, 64 << 20)? {
            0 => None,
            v => Some(v as usize),
        }
    } else {
        None
    };
    let min_available = parse_int(
        "--min-available-mib",
        get("--min-available-mib").unwrap_or("0"),
        0,
        1 << 30,
    )? << 20;
    let storm = match get("--storm") {
        None => None,
        Some(v) => Some(parse_storm(v).map_err(|e| CliError(format!("--storm: {e}")))?),
    };
    let pipeline = parse_int("--pipeline", get("--pipeline").unwrap_or("1"), 1, 1024)? as usize;
    let entities_default = if scenario == ScenarioName::Soak {
        "1000"
    } else if scenario == ScenarioName::Stalls {
        "150000"
    } else {
        "100000"
    };
    let entities = parse_int(
        "--entities",
        get("--entities").unwrap_or(entities_default),
        1,
        1_000_000_000,
    )?;
    if scenario == ScenarioName::Churn && rate <= 0.0 {
        return err("--rate: churn needs a cycle rate above 0");
    }

    if scenario == ScenarioName::Services
        && services.mode != ServicesMode::Locks
        && api_key.is_none()
    {
        return err(format!(
            "--api-key is required for scenario services --mode {} (it publishes)",
            services.mode.as_str()
        ));
    }
    if scenario == ScenarioName::Soak && api_key.is_none() {
        return err("--api-key is required for scenario soak (it publishes and writes entities)");
    }
    let soak = if scenario == ScenarioName::Soak {
        parse_soak(&get, batch_ms)?
    } else {
        SoakOpts::default()
    };
    if target == Target::Shardcast
        && scenario.publishes()
        && api_key.is_none()
        && !is_worker
        && rate > 0.0
    {
        return err(format!(
            "--api-key is required for scenario {} (it publishes)",
            scenario.as_str()
        ));
    }

    if let Some(m) = missing {
        return err(m);
    }
    Ok(Command::Run(Box::new(Config {
        scenario,
        target,
        url,
        url_raw,
        http,
        http_raw,
        auth,
        api_key,
        connections,
        paths,
        rate,
        duration,
        payload,
        batch_ms,
        batch_max,
        framing,
        compression,
        nats,
        slow_readers,
        pause,
        rcvbuf,
        sockbuf,
        min_available,
        storm,
        pipeline,
        entities,
        services,
        soak,
        source_ips,
        source_ips_raw,
        threads,
        server_pids,
        json,
        fd_budget,
        max_inflight,
        worker_offset,
    })))
}

/// Scenario services' flags (the scenario is services; the flags of other scenarios and
/// those it refuses are checked already).
fn parse_services<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<ServicesOpts, CliError> {
    let mode = match get("--mode") {
        Some("enqueue") => ServicesMode::Enqueue,
        Some("e2e") => ServicesMode::E2e,
        Some("locks") => ServicesMode::Locks,
        Some(v) => return err(format!("--mode: {v:?} is not enqueue, e2e or locks")),
        None => return err("--mode is required for scenario services (enqueue, e2e or locks)"),
    };
    let refused: &[&str] = if mode == ServicesMode::Locks {
        LOCKS_REFUSED
    } else {
        QUEUE_REFUSED
    };
    for flag in refused {
        if get(flag).is_some() {
            return err(format!(
                "{flag} does not apply to scenario services --mode {}",
                mode.as_str()
            ));
        }
    }
    let d = ServicesOpts::default();
    let instances = match mode {
        ServicesMode::Enqueue => {
            parse_int("--instances", get("--instances").unwrap_or("0"), 0, 10_000)?
        }
        ServicesMode::E2e => {
            parse_int("--instances", get("--instances").unwrap_or("4"), 1, 10_000)?
        }
        ServicesMode::Locks => 0,
    };
    let batch = parse_int("--batch", get("--batch").unwrap_or("100"), 1, 10_000)? as usize;
    let group = get("--group").unwrap_or(&d.group).to_string();
    if group.is_empty()
        || group.len() > 128
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err(format!(
            "--group: {group:?} is not 1 to 128 letters, digits, '-', '_' or '.'"
        ));
    }
    if get("--names").is_some() && get("--shared-names").is_some() {
        return err("--names and --shared-names exclude each other");
    }
    let names = parse_int("--names", get("--names").unwrap_or("1"), 1, 10_000)?;
    let shared_names = match get("--shared-names") {
        Some(v) => Some(parse_int("--shared-names", v, 1, 10_000)?),
        None => None,
    };
    let wait_default = if shared_names.is_some() { "5000" } else { "0" };
    let wait_ms = parse_int(
        "--wait-ms",
        get("--wait-ms").unwrap_or(wait_default),
        0,
        600_000,
    )?;
    if shared_names.is_some() && wait_ms == 0 {
        return err("--wait-ms: --shared-names needs a wait above 0 (the connections compete)");
    }
    let ttl_ms = parse_int("--ttl-ms", get("--ttl-ms").unwrap_or("10000"), 1, 3_600_000)?;
    let drain = match get("--drain") {
        Some(v) => parse_duration(v).map_err(|e| CliError(format!("--drain: {e}")))?,
        None => d.drain,
    };
    if drain > Duration::from_secs(3600) {
        return err("--drain: at most 1h");
    }
    Ok(ServicesOpts {
        mode,
        instances,
        batch,
        group,
        names,
        shared_names,
        wait_ms,
        ttl_ms,
        drain,
    })
}

/// Scenario soak's flags (the scenario is soak and every flag given is one it takes). A
/// size or rate not given is its default times `--scale`.
fn parse_soak<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    batch_ms: Option<u64>,
) -> Result<SoakOpts, CliError> {
    let d = SoakOpts::default();
    let scale = match get("--scale") {
        None => 1.0,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 10.0 => f,
            _ => return err(format!("--scale: {v:?} is not a number in (0, 10]")),
        },
    };
    let count = |flag: &str, default: u64, max: u64| -> Result<u64, CliError> {
        match get(flag) {
            Some(v) => parse_int(flag, v, 1, max),
            None => Ok(((default as f64 * scale).round() as u64).clamp(1, max)),
        }
    };
    let rate = |flag: &str, default: f64| -> Result<f64, CliError> {
        match get(flag) {
            Some(v) => {
                let r = parse_rate(v).map_err(|e| CliError(e.0.replace("--rate", flag)))?;
                if r <= 0.0 {
                    return err(format!("{flag}: must be above 0"));
                }
                Ok(r)
            }
            None => Ok(default * scale),
        }
    };
    let churn_rate = rate("--churn-rate", d.churn_rate)?;
    let slow_rate = rate("--slow-rate", d.slow_rate)?;
    let slow_payload = match get("--slow-payload") {
        Some(v) => parse_int("--slow-payload", v, 64, 60_000)? as usize,
        None => d.slow_payload,
    };
    // half the stream: behind by half of it, dropped from at once, and yet reading fast
    // enough that the server's ping gets through its send buffer in time
    let slow_read_rate = match get("--slow-read-rate") {
        Some(v) => parse_int("--slow-read-rate", v, 1024, 1 << 30)? as f64,
        None => slow_rate * slow_payload as f64 / 2.0,
    };
    let filtered = count("--filtered", d.filtered, 10_000)?;
    let live_queries = match get("--live-queries") {
        // one connection holds them all: the server's default limit is 16 per connection
        Some(v) => parse_int("--live-queries", v, 1, 16)?,
        None => d.live_queries,
    };
    let instances = match get("--instances") {
        Some(v) => parse_int("--instances", v, 1, 64)?,
        None => d.instances,
    };
    let group = match get("--group") {
        Some(g) => g.to_string(),
        // a fresh group per run: its queue counts start at zero
        None => format!("soak-{}", crate::util::unix_secs()),
    };
    if group.is_empty()
        || group.len() > 128
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return err(format!(
            "--group: {group:?} is not 1 to 128 letters, digits, '-', '_' or '.'"
        ));
    }
    let sample_every = match get("--sample-every") {
        Some(v) => parse_duration(v).map_err(|e| CliError(format!("--sample-every: {e}")))?,
        None => d.sample_every,
    };
    if sample_every < Duration::from_millis(100) {
        return err("--sample-every: at least 100ms");
    }
    let data_dir = match get("--data-dir") {
        Some("") => return err("--data-dir: empty"),
        Some(v) => {
            let p = PathBuf::from(v);
            if !p.is_dir() {
                return err(format!("--data-dir: {v:?} is not a directory"));
            }
            Some(p)
        }
        None => None,
    };
    let nodes = parse_soak_nodes(get)?;
    if !nodes.is_empty() && data_dir.is_some() {
        return err(
            "--data-dir does not apply with --nodes (a cluster node keeps its data in Redis)",
        );
    }
    Ok(SoakOpts {
        scale,
        connections: count("--connections", d.connections, 1_000_000)?,
        paths: match get("--paths") {
            Some(v) => parse_int("--paths", v, 1, 10_000)?,
            None => d.paths,
        },
        rate: rate("--rate", d.rate)?,
        churn_rate,
        // enough for a second of cycles, so the schedule does not slip on a slow server
        churn_inflight: (churn_rate.ceil() as u64).clamp(10, 1000),
        slow_conns: match get("--slow-conns") {
            Some(v) => parse_int("--slow-conns", v, 1, 1000)?,
            None => d.slow_conns,
        },
        slow_rate,
        slow_payload,
        slow_read_rate,
        filtered,
        filtered_rate: rate("--filtered-rate", d.filtered_rate)?,
        live_queries,
        entity_rate: rate("--entity-rate", d.entity_rate)?,
        instances,
        task_rate: rate("--task-rate", d.task_rate)?,
        group,
        batch_ms: batch_ms.unwrap_or(d.batch_ms),
        sample_every,
        data_dir,
        nodes,
    })
}

/// `--nodes H:P,H:P,...` (cluster mode), checked against `--url`/`--ws`/`--http` (one
/// way to name the server) and `--server-pid` (none, or one per node).
fn parse_soak_nodes<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Vec<SoakNode>, CliError> {
    let Some(list) = get("--nodes") else {
        return Ok(Vec::new());
    };
    for flag in ["--url", "--ws", "--http"] {
        if get(flag).is_some() {
            return err(format!(
                "{flag} does not apply with --nodes (each node is ws://H:P/ws and http://H:P)"
            ));
        }
    }
    let mut nodes: Vec<SoakNode> = Vec::new();
    for n in list.split(',').map(str::trim) {
        if n.is_empty() || n.contains('/') {
            return err(format!("--nodes: {n:?} is not host:port"));
        }
        let ws = parse_url(&format!("ws://{n}/ws"), "ws")
            .map_err(|e| CliError(format!("--nodes: {n:?}: {e}")))?;
        let http = parse_url(&format!("http://{n}"), "http")
            .map_err(|e| CliError(format!("--nodes: {n:?}: {e}")))?;
        if nodes.iter().any(|o| o.http.addr == http.addr) {
            return err(format!("--nodes: {n:?} is given twice"));
        }
        nodes.push(SoakNode { ws, http });
    }
    if !(2..=16).contains(&nodes.len()) {
        return err(format!(
            "--nodes: {} nodes; a cluster soak takes 2 to 16 (one server: --url)",
            nodes.len()
        ));
    }
    if let Some(pids) = get("--server-pid") {
        let count = pids.split(',').count();
        if count != nodes.len() {
            return err(format!(
                "--server-pid: {count} pids for {} nodes; with --nodes give one per node, in the same order",
                nodes.len()
            ));
        }
    }
    Ok(nodes)
}

fn parse_int(flag: &str, v: &str, min: u64, max: u64) -> Result<u64, CliError> {
    let n: u64 = v
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| CliError(format!("{flag}: {v:?} is not a whole number")))?;
    if n < min || n > max {
        return err(format!("{flag}: {n} is out of range {min}..={max}"));
    }
    Ok(n)
}

fn parse_rate(v: &str) -> Result<f64, CliError> {
    let r: f64 = v
        .trim()
        .parse()
        .map_err(|_| CliError(format!("--rate: {v:?} is not a number")))?;
    if !r.is_finite() || !(0.0..=10_000_000.0).contains(&r) {
        return err(format!("--rate: {v} is out of range 0..=10000000"));
    }
    Ok(r)
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s` or plain seconds.
/// `--storm N/D`: N connections (at least 1) every D (at least 1 ms).
fn parse_storm(v: &str) -> Result<(u64, Duration), String> {
    let (n, d) = v
        .split_once('/')
        .ok_or_else(|| format!("{v:?} is not N/D (connections per step / step, e.g. 200/5ms)"))?;
    let n = match n.trim().parse::<u64>() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(format!(
                "{n:?} is not a number of connections of at least 1"
            ))
        }
    };
    let d = parse_duration(d)?;
    if d < Duration::from_millis(1) {
        return Err(format!("the step {d:?} is shorter than 1 ms"));
    }
    Ok((n, d))
}

pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a duration like 30s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{v:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs > 7.0 * 86_400.0 {
        return Err(format!("{v:?} is too long (at most 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn run(s: &str) -> Result<Config, CliError> {
        match parse(&args(s))? {
            Command::Run(c) => Ok(*c),
            Command::Help => panic!("help"),
        }
    }

    fn fails(s: &str, needle: &str) {
        match run(s) {
            Ok(_) => panic!("{s:?} should fail"),
            Err(CliError(m)) => assert!(m.contains(needle), "{s:?}: {m:?} lacks {needle:?}"),
        }
    }

    const BASE: &str = "fanout --secret s --api-key k";

    #[test]
    fn full_command_line() {
        let c = run(
            "fanout --url ws://127.0.0.1:9000/ws --http http://127.0.0.1:9001 \
                     --secret S --api-key K --connections 5000 --paths 7 --rate 250.5 \
                     --duration 45s --payload 512 --batch-ms 10 --batch-max 50 --framing array \
                     --source-ips 127.0.0.1-127.0.0.40 --threads 2 --server-pid 1234 \
                     --target shardcast --json out.json",
        )
        .unwrap();
        assert_eq!(c.scenario, ScenarioName::Fanout);
        assert_eq!(c.url.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.url.path, "/ws");
        assert_eq!(c.http.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.auth, Auth::Secret("S".into()));
        assert_eq!(c.api_key.as_deref(), Some("K"));
        assert_eq!(c.connections, 5000);
        assert_eq!(c.paths, 7);
        assert_eq!(c.rate, 250.5);
        assert_eq!(c.duration, Duration::from_secs(45));
        assert_eq!(c.payload, 512);
        assert_eq!(c.batch_ms, Some(10));
        assert_eq!(c.batch_max, Some(50));
        assert_eq!(c.framing, Some(Framing::Array));
        assert_eq!(c.options_query(), "batchMs=10&batchMax=50&framing=array");
        assert_eq!(c.source_ips.len(), 40);
        assert_eq!(c.threads, 2);
        assert_eq!(c.server_pids, vec![1234]);
        assert_eq!(c.target, Target::Shardcast);
        assert_eq!(c.json, Some(PathBuf::from("out.json")));
        assert_eq!(c.grace(), Duration::from_secs(2));
    }

    #[test]
    fn defaults() {
        let c = run("idle --token T").unwrap();
        assert_eq!(c.url.path, "/ws");
        assert_eq!(c.http.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.auth, Auth::Token("T".into()));
        assert_eq!(c.connections, 1000);
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!((c.batch_ms, c.batch_max, c.framing), (None, None, None));
        assert_eq!(c.threads, 1);
        assert!(c.source_ips.is_empty());
        // many connections on loopback: several source addresses by default
        let c = run("idle --token T --connections 60000").unwrap();
        assert_eq!(c.source_ips.len(), 3);
        let c = run("idle --token T --batch-ms 6000").unwrap();
        assert_eq!(c.grace(), Duration::from_secs(12));
    }

    #[test]
    fn only_the_connection_options_given_are_sent() {
        // none given: none sent; the server's default batchMs (5000 as shipped) is what
        // the connections get, so the grace covers two of its flushes
        let c = run("idle --token T").unwrap();
        assert_eq!(c.options_query(), "");
        assert_eq!(c.applied_batch_ms(), SERVER_DEFAULT_BATCH_MS);
        assert_eq!(c.grace(), Duration::from_secs(10));
        // each one alone
        let c = run("idle --token T --batch-ms 0").unwrap();
        assert_eq!(c.options_query(), "batchMs=0");
        assert_eq!(c.grace(), Duration::from_secs(2));
        let c = run("idle --token T --batch-max 100").unwrap();
        assert_eq!(c.options_query(), "batchMax=100");
        assert_eq!(c.grace(), Duration::from_secs(10));
        let c = run("idle --token T --framing frames").unwrap();
        assert_eq!(c.options_query(), "framing=frames");
        // a value the server will refuse is the server's to refuse (BAD_MESSAGE)
        let c = run("idle --token T --batch-max 5000000").unwrap();
        assert_eq!(c.options_query(), "batchMax=5000000");
        // workers send what the parent would: nothing that was not given
        for (line, want) in [
            ("fanout --secret s --api-key k", ""),
            ("fanout --secret s --api-key k --batch-max 7", "batchMax=7"),
            (
                "fanout --secret s --api-key k --batch-ms 3 --framing array",
                "batchMs=3&framing=array",
            ),
        ] {
            let c = run(line).unwrap();
            let w = match parse(&c.worker_args(0, 5, 10)).unwrap() {
                Command::Run(c) => *c,
                Command::Help => unreachable!(),
            };
            assert_eq!(w.options_query(), want, "{line}");
            assert_eq!(w.grace(), c.grace(), "{line}");
        }
        // nats-server does not batch: the grace is the minimum
        let c = run("fanout --target nats").unwrap();
        assert_eq!(c.grace(), Duration::from_secs(2));
    }

    #[test]
    fn equals_form_and_help() {
        let c = run("spread --secret=s --api-key=k --paths=3").unwrap();
        assert_eq!(c.paths, 3);
        assert!(matches!(parse(&args("fanout --help")), Ok(Command::Help)));
        assert!(matches!(parse(&args("-h")), Ok(Command::Help)));
    }

    #[test]
    fn bad_scenario_and_positionals() {
        fails("", "missing scenario");
        fails("--secret s", "missing scenario");
        fails("blast --secret s", "unknown scenario");
        fails("fanout idle --secret s --api-key k", "unexpected argument");
    }

    #[test]
    fn unknown_and_repeated_flags() {
        fails(
            &format!("{BASE} --conections 5"),
            "unknown flag --conections",
        );
        fails(&format!("{BASE} -c 5"), "unknown flag -c");
        fails(
            &format!("{BASE} --rate 1 --rate 2"),
            "--rate given more than once",
        );
        fails(&format!("{BASE} --worker=1"), "--worker takes no value");
        fails(&format!("{BASE} --worker"), "--worker");
    }

    #[test]
    fn a_bad_value_is_named_before_a_missing_flag() {
        fails("fanout --connections many", "--connections");
        fails("services --mode e2e --connections many", "--connections");
        fails("fanout --rate fast", "--rate");
        // With every value good, the missing flag is named.
        fails(
            "fanout --connections 5 --api-key k",
            "one of --secret or --token is required",
        );
        fails("services --mode e2e --api-key k", "--secret is required");
    }

    #[test]
    fn missing_values() {
        fails(
            &format!("{BASE} --connections"),
            "--connections needs a value",
        );
        fails("fanout --api-key k --secret", "--secret needs a value");
    }

    #[test]
    fn each_bad_value_names_its_flag() {
        let cases = [
            ("--url http://127.0.0.1:8080/ws", "--url"),
            ("--url wss://127.0.0.1:8080/ws", "--url"),
            ("--url ws://127.0.0.1:99999/ws", "--url"),
            ("--http ws://127.0.0.1:8080", "--http"),
            ("--connections 0", "--connections"),
            ("--connections ten", "--connections"),
            ("--connections -5", "--connections"),
            ("--paths 0", "--paths"),
            ("--rate fast", "--rate"),
            ("--rate -1", "--rate"),
            ("--rate inf", "--rate"),
            ("--duration 10x", "--duration"),
            ("--duration s", "--duration"),
            ("--duration 99999h", "--duration"),
            ("--payload big", "--payload"),
            ("--payload 999999999", "--payload"),
            ("--batch-ms -1", "--batch-ms"),
            ("--batch-max 0", "--batch-max"),
            ("--framing json", "--framing"),
            ("--source-ips 127.0.0.9-127.0.0.1", "--source-ips"),
            ("--source-ips localhost", "--source-ips"),
            ("--threads 0", "--threads"),
            ("--threads 1000", "--threads"),
            ("--server-pid abc", "--server-pid"),
            ("--server-pid 0", "--server-pid"),
            ("--target redis", "--target"),
            ("--json=", "--json"),
            ("--fd-budget 0", "--fd-budget"),
            ("--max-inflight 0", "--max-inflight"),
        ];
        for (extra, flag) in cases {
            fails(&format!("{BASE} {extra}"), flag);
        }
    }

    #[test]
    fn auth_rules() {
        fails("fanout --api-key k", "one of --secret or --token");
        fails(
            "fanout --api-key k --secret a --token b",
            "exclude each other",
        );
        fails("fanout --secret s", "--api-key is required");
        fails("fanout --secret= --api-key k", "--secret: empty");
        fails("fanout --secret s --api-key=", "--api-key: empty");
        // idle does not publish, a rate of 0 neither
        assert!(run("idle --secret s").is_ok());
        assert!(run("fanout --secret s --rate 0").is_ok());
    }

    #[test]
    fn churn_and_overflow() {
        let c = run("churn --secret s --rate 250 --connections 50").unwrap();
        assert_eq!(c.scenario, ScenarioName::Churn);
        assert_eq!(c.rate, 250.0);
        assert!(c.api_key.is_none(), "churn does not publish");
        fails("churn --secret s --rate 0", "--rate");
        let c =
            run("overflow --secret s --api-key k --slow-readers 0.25 --pause-ms 300 --rcvbuf 0")
                .unwrap();
        assert_eq!(c.slow_readers, 0.25);
        assert_eq!(c.pause, Duration::from_millis(300));
        assert_eq!(c.rcvbuf, 0);
        let c = run("overflow --secret s --api-key k").unwrap();
        assert_eq!((c.slow_readers, c.rcvbuf), (0.5, 4096));
        // the defaults that overflow past the kernel's buffers (see the help)
        assert_eq!(c.pause, Duration::from_secs(6));
        assert_eq!((c.connections, c.rate), (50, 5000.0));
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(
            c.batch_ms,
            Some(0),
            "only the slow readers should fall behind"
        );
        fails("overflow --secret s", "--api-key is required");
        fails(
            "overflow --secret s --api-key k --slow-readers 1.5",
            "--slow-readers",
        );
        fails("overflow --secret s --api-key k --pause-ms 0", "--pause-ms");
        fails("overflow --secret s --api-key k --rcvbuf x", "--rcvbuf");
        fails(&format!("{BASE} --pause-ms 10"), "--pause-ms only applies");
        fails(
            "churn --secret s --slow-readers 1",
            "--slow-readers only applies",
        );
    }

    #[test]
    fn entities_scenario() {
        let c = run("entities --api-key k").unwrap();
        assert_eq!(c.scenario, ScenarioName::Entities);
        assert_eq!(c.auth, Auth::None);
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert_eq!(c.http.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((c.connections, c.pipeline, c.entities), (32, 1, 100_000));
        assert_eq!(c.rate, 100.0);
        let c = run(
            "entities --http http://127.0.0.1:18090 --api-key k --connections 4 --pipeline 8 \
             --rate 0 --duration 2s --payload 200 --entities 50 --server-pid 7 --json -",
        )
        .unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:18090".parse().unwrap());
        assert_eq!((c.connections, c.pipeline, c.entities), (4, 8, 50));
        assert_eq!((c.rate, c.payload), (0.0, 200));
        assert_eq!(c.server_pids, vec![7]);
        fails("entities", "--api-key is required for scenario entities");
        fails("entities --api-key=", "--api-key: empty");
        for (extra, flag) in [
            ("--pipeline many", "--pipeline"),
            ("--pipeline 0", "--pipeline"),
            ("--pipeline 5000", "--pipeline"),
            ("--entities 0", "--entities"),
            ("--entities lots", "--entities"),
            ("--connections 20000", "--connections"),
        ] {
            fails(&format!("entities --api-key k {extra}"), flag);
        }
        // flags that do not apply to it, each named
        for flag in [
            "--url ws://127.0.0.1:8080/ws",
            "--secret s",
            "--token t",
            "--paths 3",
            "--batch-ms 5",
            "--batch-max 5",
            "--framing array",
            "--source-ips 127.0.0.1",
            "--threads 2",
            "--fd-budget 10",
            "--max-inflight 10",
            "--slow-readers 0.5",
            "--pause-ms 10",
            "--rcvbuf 0",
            "--nats-url nats://127.0.0.1:4222",
        ] {
            let name = flag.split_whitespace().next().unwrap();
            fails(&format!("entities --api-key k {flag}"), name);
        }
        fails(
            "entities --api-key k --url ws://127.0.0.1:1/ws",
            "does not apply to scenario entities",
        );
        fails("entities --api-key k --worker", "--worker");
        fails("entities --target nats", "--target nats");
        assert!(run("entities --api-key k --target shardcast").is_ok());
        // --pipeline and --entities belong to entities only
        for sc in [
            "fanout --secret s --api-key k",
            "idle --secret s",
            "churn --secret s",
        ] {
            fails(
                &format!("{sc} --pipeline 4"),
                "--pipeline only applies to scenario entities",
            );
            fails(
                &format!("{sc} --entities 4"),
                "--entities only applies to scenarios entities and stalls",
            );
        }
    }

    #[test]
    fn stalls_scenario() {
        let c = run("stalls --secret s --api-key k").unwrap();
        assert_eq!(c.scenario, ScenarioName::Stalls);
        assert_eq!(
            (c.entities, c.connections, c.rate, c.duration),
            (150_000, 100, 200.0, Duration::from_secs(5))
        );
        let c = run("stalls --secret s --api-key k --entities 3000 --duration 1s").unwrap();
        assert_eq!((c.entities, c.duration), (3000, Duration::from_secs(1)));
        fails(
            "stalls --secret s",
            "--api-key is required for scenario stalls",
        );
        fails(
            "stalls --secret s --api-key k --batch-ms 5",
            "--batch-ms does not apply to scenario stalls",
        );
        fails(
            "stalls --target nats",
            "scenario stalls creates shardcast live queries",
        );
    }

    #[test]
    fn services_scenario() {
        let c = run("services --mode e2e --secret s --api-key k").unwrap();
        assert_eq!(c.scenario, ScenarioName::Services);
        assert_eq!(c.auth, Auth::Secret("s".into()));
        let o = &c.services;
        assert_eq!((o.mode, o.instances, o.batch), (ServicesMode::E2e, 4, 100));
        assert_eq!(o.group, "loadtest");
        assert_eq!((c.connections, c.pipeline, c.rate), (4, 1, 0.0));
        assert_eq!(o.drain, Duration::from_secs(30));
        let c = run(
            "services --mode enqueue --ws ws://127.0.0.1:18091/ws --http http://127.0.0.1:18091 \
             --secret s --api-key k --connections 8 --pipeline 4 --batch 500 --rate 20000 \
             --duration 8s --group g-1.x --drain 5s --framing array --server-pid 9 --json -",
        )
        .unwrap();
        let o = &c.services;
        assert_eq!(
            (o.mode, o.instances, o.batch),
            (ServicesMode::Enqueue, 0, 500)
        );
        assert_eq!(c.url.addr, "127.0.0.1:18091".parse().unwrap());
        assert_eq!((c.connections, c.pipeline, c.rate), (8, 4, 20000.0));
        assert_eq!(
            (o.group.as_str(), o.drain),
            ("g-1.x", Duration::from_secs(5))
        );
        assert_eq!(c.framing, Some(Framing::Array));
        assert_eq!(c.options_query(), "framing=array");
        let c = run("services --mode locks --secret s").unwrap();
        let o = &c.services;
        assert_eq!((c.connections, o.names, o.shared_names), (16, 1, None));
        assert_eq!((o.wait_ms, o.ttl_ms), (0, 10_000));
        assert!(c.api_key.is_none());
        let c = run("services --mode locks --secret s --shared-names 3 --pipeline 2").unwrap();
        assert_eq!(
            (c.services.shared_names, c.services.wait_ms),
            (Some(3), 5000)
        );
        let c = run("services --mode locks --secret s --names 7 --ttl-ms 500").unwrap();
        assert_eq!((c.services.names, c.services.ttl_ms), (7, 500));

        fails("services --secret s --api-key k", "--mode is required");
        fails("services --mode fast --secret s --api-key k", "--mode");
        fails("services --mode e2e --api-key k", "--secret is required");
        fails("services --mode e2e --secret s", "--api-key is required");
        fails(
            "services --mode enqueue --secret s",
            "--api-key is required",
        );
        fails(
            "services --mode e2e --secret s --api-key k --url ws://127.0.0.1:1/ws --ws ws://127.0.0.1:1/ws",
            "--url and --ws",
        );
        fails(
            "services --mode e2e --secret s --api-key k --ws http://x:1",
            "--ws",
        );
        fails(
            "services --mode e2e --secret s --api-key k --target nats",
            "--target nats",
        );
        for (extra, flag) in [
            ("--instances 0", "--instances"),
            ("--instances x", "--instances"),
            ("--batch 0", "--batch"),
            ("--batch 10001", "--batch"),
            ("--group a/b", "--group"),
            ("--group=", "--group"),
            ("--drain 2h", "--drain"),
            ("--drain x", "--drain"),
            ("--connections 20000", "--connections"),
            ("--pipeline 0", "--pipeline"),
            // flags services refuses, and lock flags in a queue mode
            ("--token t", "--token"),
            ("--paths 3", "--paths"),
            ("--threads 2", "--threads"),
            ("--source-ips 127.0.0.1", "--source-ips"),
            ("--entities 3", "--entities"),
            ("--names 2", "--names"),
            ("--shared-names 2", "--shared-names"),
            ("--wait-ms 5", "--wait-ms"),
            ("--ttl-ms 5", "--ttl-ms"),
        ] {
            fails(
                &format!("services --mode e2e --secret s --api-key k {extra}"),
                flag,
            );
        }
        assert!(run("services --mode enqueue --secret s --api-key k --instances 0").is_ok());
        for (extra, flag) in [
            ("--api-key k", "--api-key"),
            ("--http http://127.0.0.1:1", "--http"),
            ("--rate 5", "--rate"),
            ("--batch 5", "--batch"),
            ("--payload 5", "--payload"),
            ("--instances 2", "--instances"),
            ("--drain 1s", "--drain"),
            ("--names 2 --shared-names 2", "exclude each other"),
            ("--names 0", "--names"),
            ("--shared-names 0", "--shared-names"),
            ("--shared-names 2 --wait-ms 0", "--wait-ms"),
            ("--ttl-ms 0", "--ttl-ms"),
        ] {
            fails(&format!("services --mode locks --secret s {extra}"), flag);
        }
        // services flags belong to services only; --ws is --url everywhere
        for flag in [
            "--mode e2e",
            "--instances 2",
            "--batch 5",
            "--group g",
            "--names 2",
            "--drain 1s",
        ] {
            let name = flag.split_whitespace().next().unwrap();
            fails(
                &format!("fanout --secret s --api-key k {flag}"),
                &format!("{name} only applies to scenario services"),
            );
        }
        let c = run("fanout --secret s --api-key k --ws ws://127.0.0.1:9/ws").unwrap();
        assert_eq!(c.url.addr, "127.0.0.1:9".parse().unwrap());
        fails(
            "entities --api-key k --ws ws://127.0.0.1:9/ws",
            "--ws does not apply",
        );
        assert!(USAGE.contains("SERVICES"));
        assert!(USAGE.contains("--shared-names"));
    }

    #[test]
    fn soak_scenario() {
        let c = run("soak --secret s --api-key k").unwrap();
        assert_eq!(c.scenario, ScenarioName::Soak);
        let o = &c.soak;
        assert_eq!(c.duration, Duration::from_secs(3600));
        assert_eq!((o.connections, o.rate, o.churn_rate), (2000, 2000.0, 50.0));
        assert_eq!(
            (o.filtered, o.filtered_rate, o.task_rate),
            (200, 200.0, 200.0)
        );
        assert_eq!(
            (o.slow_conns, o.slow_rate, o.slow_payload),
            (4, 400.0, 4096)
        );
        assert_eq!((o.live_queries, o.instances, c.entities), (4, 3, 1000));
        assert_eq!((o.batch_ms, o.sample_every), (100, Duration::from_secs(30)));
        assert_eq!(o.slow_read_rate, 819_200.0);
        assert!(o.group.starts_with("soak-"), "{}", o.group);
        assert!(o.data_dir.is_none());

        // --scale multiplies the defaults it names, not what is given
        let c = run("soak --secret s --api-key k --scale 0.5 --rate 300 --duration 20s").unwrap();
        let o = &c.soak;
        assert_eq!((o.connections, o.rate, o.churn_rate), (1000, 300.0, 25.0));
        assert_eq!((o.filtered, o.entity_rate, o.task_rate), (100, 50.0, 100.0));
        assert_eq!((o.slow_conns, o.instances), (4, 3), "not scaled");
        assert_eq!(c.duration, Duration::from_secs(20));

        let dir = std::env::temp_dir();
        let c = run(&format!(
            "soak --url ws://127.0.0.1:9/ws --http http://127.0.0.1:9 --secret s --api-key k \
             --server-pid 7 --data-dir {} --duration 1h --sample-every 2s --connections 50 --paths 3 \
             --churn-rate 10 --slow-conns 2 --slow-rate 500 --slow-payload 8000 \
             --filtered 40 --filtered-rate 50 --live-queries 2 --entities 40 \
             --entity-rate 40 --instances 2 --group g1 --task-rate 50 --batch-ms 0 \
             --batch-max 100 --framing array --json -",
            dir.display()
        ))
        .unwrap();
        let o = &c.soak;
        assert_eq!((o.sample_every, o.paths), (Duration::from_secs(2), 3));
        assert_eq!(o.data_dir.as_deref(), Some(dir.as_path()));
        assert_eq!((o.connections, o.churn_rate, o.slow_conns), (50, 10.0, 2));
        assert_eq!((o.slow_rate, o.slow_payload), (500.0, 8000));
        // half the stream unless given
        assert_eq!(o.slow_read_rate, 2_000_000.0);
        let given = run("soak --secret s --api-key k --slow-read-rate 5000").unwrap();
        assert_eq!(given.soak.slow_read_rate, 5000.0);
        assert_eq!((o.filtered, o.live_queries, c.entities), (40, 2, 40));
        assert_eq!(
            (o.instances, o.group.as_str(), o.task_rate),
            (2, "g1", 50.0)
        );
        assert_eq!((o.batch_ms, c.batch_max), (0, Some(100)));
        assert_eq!(c.server_pids, vec![7]);
        assert_eq!(o.churn_inflight, 10);

        fails("soak --api-key k", "--secret is required for scenario soak");
        fails("soak --secret s", "--api-key is required for scenario soak");
        fails(
            "soak --secret s --api-key k --target nats",
            "--target does not apply to scenario soak",
        );
        for (extra, flag) in [
            ("--scale 0", "--scale"),
            ("--scale 11", "--scale"),
            ("--scale x", "--scale"),
            ("--sample-every 10ms", "--sample-every"),
            ("--sample-every x", "--sample-every"),
            ("--data-dir /nonexistent/soak", "--data-dir"),
            ("--data-dir=", "--data-dir"),
            ("--churn-rate 0", "--churn-rate"),
            ("--slow-rate x", "--slow-rate"),
            ("--slow-conns 0", "--slow-conns"),
            ("--slow-payload 10", "--slow-payload"),
            ("--slow-read-rate 10", "--slow-read-rate"),
            ("--pause-ms 10", "--pause-ms does not apply"),
            ("--rcvbuf 0", "--rcvbuf does not apply"),
            ("--filtered 0", "--filtered"),
            ("--live-queries 17", "--live-queries"),
            ("--instances 0", "--instances"),
            ("--group a/b", "--group"),
            ("--task-rate -1", "--task-rate"),
            ("--entity-rate 0", "--entity-rate"),
            // flags of other scenarios, each named
            ("--token t", "--token does not apply to scenario soak"),
            ("--mode e2e", "--mode does not apply to scenario soak"),
            ("--slow-readers 0.5", "--slow-readers does not apply"),
            ("--pipeline 2", "--pipeline does not apply"),
            ("--threads 2", "--threads does not apply"),
            ("--paths 0", "--paths"),
        ] {
            fails(&format!("soak --secret s --api-key k {extra}"), flag);
        }
        // soak's own flags belong to soak only
        for flag in [
            "--scale 2",
            "--sample-every 1s",
            "--filtered 3",
            "--task-rate 5",
        ] {
            let name = flag.split_whitespace().next().unwrap();
            fails(
                &format!("fanout --secret s --api-key k {flag}"),
                &format!("{name} only applies to scenario soak"),
            );
        }
        assert!(USAGE.contains("SOAK"));
        assert!(USAGE.contains("--sample-every"));
    }

    #[test]
    fn soak_cluster_nodes() {
        let c = run(
            "soak --secret s --api-key k --nodes 127.0.0.1:9001,127.0.0.1:9002,localhost:9003 \
             --server-pid 11,12,13",
        )
        .unwrap();
        let n = &c.soak.nodes;
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].ws.addr.to_string(), "127.0.0.1:9001");
        assert_eq!(
            (n[0].ws.path.as_str(), n[0].http.path.as_str()),
            ("/ws", "")
        );
        assert_eq!(n[2].http.host_header, "localhost:9003");
        assert_eq!(c.server_pids, vec![11, 12, 13]);
        assert!(run("soak --secret s --api-key k")
            .unwrap()
            .soak
            .nodes
            .is_empty());
        for (extra, needle) in [
            ("--nodes 127.0.0.1:9001", "2 to 16"),
            ("--nodes 127.0.0.1:9001,127.0.0.1:9001", "given twice"),
            ("--nodes 127.0.0.1:9001,", "is not host:port"),
            (
                "--nodes 127.0.0.1:9001,ws://127.0.0.1:9002/ws",
                "is not host:port",
            ),
            ("--nodes 127.0.0.1:9001,127.0.0.1:x", "--nodes"),
            (
                "--nodes 127.0.0.1:9001,127.0.0.1:9002 --url ws://127.0.0.1:9/ws",
                "--url does not apply with --nodes",
            ),
            (
                "--nodes 127.0.0.1:9001,127.0.0.1:9002 --http http://127.0.0.1:9",
                "--http does not apply with --nodes",
            ),
            (
                "--nodes 127.0.0.1:9001,127.0.0.1:9002 --server-pid 7",
                "1 pids for 2 nodes",
            ),
            (
                "--nodes 127.0.0.1:9001,127.0.0.1:9002 --data-dir /tmp",
                "--data-dir does not apply with --nodes",
            ),
        ] {
            fails(&format!("soak --secret s --api-key k {extra}"), needle);
        }
        fails(
            "fanout --api-key k --nodes 127.0.0.1:9001,127.0.0.1:9002",
            "--nodes only applies to scenario soak",
        );
        assert!(USAGE.contains("--nodes H:P,H:P"));
    }

    #[test]
    fn nats_target() {
        let c = run("fanout --target nats --url ws://127.0.0.1:9222").unwrap();
        assert_eq!(c.target, Target::Nats);
        assert_eq!(c.auth, Auth::None);
        // no --nats-url: the publisher goes over the WebSocket endpoint, not a guessed port
        assert!(c.nats.is_none());
        let c = run("spread --target nats --nats-url nats://127.0.0.1:5222").unwrap();
        assert_eq!(
            c.nats.as_ref().unwrap().addr,
            "127.0.0.1:5222".parse().unwrap()
        );
        assert!(run("idle --target nats").is_ok());
        assert!(run("churn --target nats --rate 10").is_ok());
        for (extra, flag) in [
            ("--secret s", "--secret"),
            ("--token t", "--token"),
            ("--api-key k", "--api-key"),
            ("--http http://127.0.0.1:1", "--http"),
            ("--batch-ms 5", "--batch-ms"),
            ("--batch-max 5", "--batch-max"),
            ("--framing array", "--framing"),
            ("--nats-url http://x:1", "--nats-url"),
        ] {
            fails(&format!("fanout --target nats {extra}"), flag);
        }
        fails("overflow --target nats", "overflow");
        fails(
            &format!("{BASE} --nats-url nats://127.0.0.1:4222"),
            "--nats-url only applies",
        );
        // workers of a nats run get no shardcast-only flags
        let c = run("fanout --target nats --connections 10").unwrap();
        let w = match parse(&c.worker_args(0, 5, 10)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.target, Target::Nats);
    }

    #[test]
    fn churn_workers_share_the_rate() {
        let c = run("churn --secret s --rate 100 --connections 40").unwrap();
        let w = match parse(&c.worker_args(10, 10, 10)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.rate, 25.0);
        let c = run("overflow --secret s --api-key k --slow-readers 0.3 --pause-ms 70").unwrap();
        let w = match parse(&c.worker_args(0, 500, 10)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.slow_readers, 0.3);
        assert_eq!(w.pause, Duration::from_millis(70));
        assert_eq!(w.rcvbuf, 4096);
    }

    #[test]
    fn scale_publishes_once_and_passes_its_socket_size_to_workers() {
        let c = run("scale --secret s --api-key k --connections 40000").unwrap();
        assert_eq!(c.scenario, ScenarioName::Scale);
        assert_eq!(c.duration, Duration::from_secs(10));
        // exactly one publication due within the window: number 1 is due after 20 s
        assert_eq!(c.rate, 0.05);
        assert_eq!(c.batch_ms, Some(0));
        assert_eq!(c.sockbuf, Some(4096));
        assert_eq!(c.min_available, 0);
        let c =
            run("scale --secret s --api-key k --duration 2s --sockbuf 0 --min-available-mib 7168")
                .unwrap();
        assert_eq!(c.rate, 0.25);
        assert_eq!(c.sockbuf, None);
        assert_eq!(c.min_available, 7168 << 20);
        let c = run("scale --secret s --api-key k --sockbuf 2048").unwrap();
        let w = match parse(&c.worker_args(0, 500, 10)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.scenario, ScenarioName::Scale);
        assert_eq!(w.sockbuf, Some(2048));
        assert_eq!(w.batch_ms, Some(0));
        for (extra, flag) in [
            ("--rate 5", "--rate does not apply to scenario scale"),
            ("--paths 3", "--paths does not apply"),
            ("--threads 2", "--threads does not apply"),
            ("--sockbuf x", "--sockbuf"),
            ("--min-available-mib -1", "--min-available-mib"),
            ("--duration 0s", "needs a window"),
        ] {
            fails(&format!("scale --secret s --api-key k {extra}"), flag);
        }
        fails("scale --target nats", "scenario scale measures shardcast");
        fails(
            &format!("{BASE} --sockbuf 4096"),
            "--sockbuf only applies to scenario scale",
        );
        fails(
            &format!("{BASE} --min-available-mib 1"),
            "--min-available-mib only applies to scenario scale",
        );
    }

    #[test]
    fn storm_steps_and_their_share_in_workers() {
        let c = run("idle --secret s --connections 18000 --storm 200/5ms").unwrap();
        assert_eq!(c.storm, Some((200, Duration::from_millis(5))));
        assert_eq!(run("idle --secret s").unwrap().storm, None);
        // A worker holding a third of the connections opens a third of each step.
        let w = match parse(&c.worker_args(0, 6000, 10)).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.storm, Some((67, Duration::from_millis(5))));
        fails(
            "fanout --secret s --api-key k --storm 200/5ms",
            "--storm only applies",
        );
        for bad in ["200", "0/5ms", "x/5ms", "200/0ms", "200/5parsecs"] {
            fails(&format!("idle --secret s --storm {bad}"), "--storm");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn worker_args_roundtrip() {
        let c = run(
            "spread --secret s --api-key k --paths 9 --source-ips 127.0.0.1-127.0.0.3,127.0.0.9 \
                     --duration 1500ms --framing array --threads 2",
        )
        .unwrap();
        let wa = c.worker_args(100, 50, 125);
        let w = match parse(&wa).unwrap() {
            Command::Run(c) => *c,
            Command::Help => unreachable!(),
        };
        assert_eq!(w.worker_offset, Some(100));
        assert_eq!(w.connections, 50);
        assert_eq!(w.paths, 9);
        assert_eq!(w.source_ips, c.source_ips);
        assert_eq!(w.duration, c.duration);
        assert_eq!(w.framing, Some(Framing::Array));
        assert_eq!((w.batch_ms, w.batch_max), (None, None));
        assert_eq!(w.threads, 2);
        assert_eq!(w.max_inflight, 125);
        assert_eq!(w.auth, c.auth);
        assert!(w.api_key.is_none(), "workers do not publish");
        fails("fanout --secret s --worker-offset 3", "go together");
    }
}
