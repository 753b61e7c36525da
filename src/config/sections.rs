//! The typed configuration: [`Config`] and one struct per `[section]` of PROTOCOL.md
//! section 13, each with its defaults (the contract's values), plus the shipped example
//! secrets. Plain data; reading and checking it live in `load`, `keys` and `validate`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The example secrets the defaults and the README ship with: fine on loopback, where only
/// this machine can reach the node, refused anywhere else ([`Config::validate`]).
pub const SHIPPED_JWT_SECRET: &str = "change-me";
pub const SHIPPED_API_KEY: &str = "dev-key";

/// `log_format`: how the process writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `io` (extension): how shards write to sockets. `epoll`: a vectored write per flush.
/// `uring`: every flush of a loop turn submitted to io_uring together, one system call
/// for all of them; falls back to `epoll` (with one log line) where io_uring is
/// unavailable. The default since issue 21: 1.1–1.5× the deliveries per CPU-second of
/// `epoll` and a lower p99 in every fan-out scenario measured side by side
/// (docs/PERFORMANCE.md, "io_uring by default").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    Epoll,
    #[default]
    Uring,
}

/// `delivery.compression` (extension): whether a client's permessage-deflate offer
/// (RFC 7692) is accepted. `off`: declined, nothing changes on the wire. See
/// docs/PERFORMANCE.md ("Compression (permessage-deflate)") for the measurement behind
/// the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Off,
    On,
}

/// `delivery.framing` and the `framing` connection option (PROTOCOL.md section 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Each message its own WebSocket frame, written together.
    #[default]
    Frames,
    /// One `{"type":"batch","messages":[...]}` frame per flush.
    Array,
}

impl Framing {
    /// The wire name, as in the `framing` connection option: `"frames"` or `"array"`.
    pub fn parse(name: &str) -> Option<Framing> {
        match name {
            "frames" => Some(Framing::Frames),
            "array" => Some(Framing::Array),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Frames => "frames",
            Framing::Array => "array",
        }
    }
}

/// The whole configuration. Field names are the TOML key names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    /// 0: one shard per core, see [`Config::shard_count`].
    pub shards: usize,
    pub data_dir: PathBuf,
    /// Base of `websocket_url` in channel answers, used verbatim.
    pub public_url: String,
    pub drain_period_ms: u64,
    pub log_format: LogFormat,
    /// Extension: the shards' write path, see [`Io`].
    pub io: Io,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub history: HistoryConfig,
    pub live_query: LiveQueryConfig,
    pub services: ServicesConfig,
    pub channels: ChannelsConfig,
    pub limits: LimitsConfig,
    pub cluster: ClusterConfig,
    pub testing: TestingConfig,
    /// Extension: the operator console ([`crate::console`]).
    pub console: ConsoleConfig,
    /// Names of `SHARDCAST_<NAME>` variables (no `__`) that are not top-level keys and were
    /// therefore ignored: other tools share the prefix (`SHARDCAST_BIN`, `SHARDCAST_LOG`),
    /// so they must not stop start-up, but the caller logs [`Config::env_warnings`] in
    /// case of a typo. Sorted. Not a config key.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            data_dir: PathBuf::from("./data"),
            public_url: "ws://127.0.0.1:8080".to_string(),
            drain_period_ms: 10_000,
            log_format: LogFormat::Human,
            io: Io::default(),
            auth: AuthConfig::default(),
            delivery: DeliveryConfig::default(),
            history: HistoryConfig::default(),
            live_query: LiveQueryConfig::default(),
            services: ServicesConfig::default(),
            channels: ChannelsConfig::default(),
            limits: LimitsConfig::default(),
            cluster: ClusterConfig::default(),
            testing: TestingConfig::default(),
            console: ConsoleConfig::default(),
            ignored_env: Vec::new(),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret for every JWT (client tokens and admin/service Bearer tokens).
    pub jwt_secret: String,
    /// Keys accepted as `Authorization: apikey <key>`.
    pub api_keys: Vec<String>,
    pub auth_timeout_ms: u64,
    pub ticket_ttl_ms: u64,
    /// Browser origins allowed on upgrades and (with CORS) on `/api/v1/*`; empty:
    /// loopback origins only (`crate::origin`).
    pub allowed_origins: Vec<String>,
    /// PEM file of a public key for RS256 (RSA) or ES256 (P-256) tokens; empty: none.
    /// Read and checked at start-up ([`Config::load_keys`]).
    pub jwt_public_key: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: SHIPPED_JWT_SECRET.to_string(),
            api_keys: vec![SHIPPED_API_KEY.to_string()],
            auth_timeout_ms: 10_000,
            ticket_ttl_ms: 30_000,
            allowed_origins: Vec::new(),
            jwt_public_key: PathBuf::new(),
        }
    }
}

/// `[delivery]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Default flush interval; clients may choose `0..=max_batch_ms`.
    pub batch_ms: u64,
    pub batch_max: usize,
    pub max_batch_ms: u64,
    pub framing: Framing,
    /// Extension: accept permessage-deflate offers, see [`Compression`].
    pub compression: Compression,
    /// Per-connection ring, in messages.
    pub queue_capacity: usize,
    pub heartbeat_ms: u64,
    pub pong_timeout_ms: u64,
    /// Project extension (not in PROTOCOL.md): capacity of the bounded queue from the
    /// router to each shard, in publications.
    pub shard_queue_capacity: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_ms: 5_000,
            batch_max: 1_000,
            max_batch_ms: 60_000,
            framing: Framing::Frames,
            compression: Compression::default(),
            queue_capacity: 10_000,
            heartbeat_ms: 30_000,
            pong_timeout_ms: 30_000,
            shard_queue_capacity: 65_536,
        }
    }
}

/// `[history]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Publications retained for `since` replay.
    pub size: usize,
    pub ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 100_000,
            ttl_ms: 600_000,
        }
    }
}

/// `[live_query]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveQueryConfig {
    pub cap: usize,
    pub page: usize,
}

impl Default for LiveQueryConfig {
    fn default() -> Self {
        LiveQueryConfig {
            cap: 1_000,
            page: 100,
        }
    }
}

/// `[services]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    pub ack_timeout_ms: u64,
    pub max_attempts: u32,
    pub prefetch: usize,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            ack_timeout_ms: 30_000,
            max_attempts: 10,
            prefetch: 1_000,
        }
    }
}

/// `[channels]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    pub backlog: usize,
    /// Channels one user may own at once (admins are not limited): each channel holds a
    /// backlog of up to `backlog` events, so without a bound one token could fill the
    /// node's disk and memory (docs/SECURITY.md).
    pub max_per_user: usize,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            backlog: 10_000,
            max_per_user: 100,
        }
    }
}

/// `[limits]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub max_live_queries: usize,
    pub commands_per_sec: u32,
    pub commands_burst: u32,
    pub max_connections: usize,
    /// Project extension (not in PROTOCOL.md): largest REST request body accepted.
    pub max_http_body_bytes: usize,
    /// Project extension (not in PROTOCOL.md): most events in one `POST /api/v1/publish`
    /// (the contract's "at most 10000").
    pub max_publish_batch: usize,
    /// A request (head and body, a WebSocket handshake included) must arrive within this
    /// many ms of the connection's previous request being answered (or of its accept), and
    /// an idle keep-alive connection closes after it.
    pub request_timeout_ms: u64,
    /// Project extension (not in PROTOCOL.md): most connections open at once that are
    /// plain HTTP clients (a whole request arrived that was not a WebSocket upgrade).
    /// Counted apart from `max_connections`, and only once a request shows what the
    /// connection is, so that a reconnect storm of upgrades is never refused as an HTTP
    /// flood; beyond it a request gets 503 (`/healthz` and `/readyz` are still answered).
    /// Connections that have sent nothing are bounded by eviction, not by this.
    pub max_http_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 65_536,
            max_subscriptions: 1_000,
            max_live_queries: 16,
            commands_per_sec: 100,
            commands_burst: 200,
            max_connections: 1_000_000,
            max_http_body_bytes: 33_554_432,
            max_publish_batch: 10_000,
            request_timeout_ms: 10_000,
            max_http_connections: 4_096,
        }
    }
}

/// `[cluster]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Empty: single node. A `redis://` URL: cluster mode over that Redis
    /// ([`crate::backend`], docs/CLUSTER.md).
    pub redis_url: String,
    /// The node's name in logs, metrics and `/healthz`; "": generated once and kept in
    /// `data_dir` (PROTOCOL.md section 13). Accepted on a single node too, so one file
    /// serves both modes.
    pub node_id: String,
}

/// `[testing]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Empty: off. Otherwise the path of a WebSocket endpoint that echoes every message.
    pub echo_path: String,
}

/// `[console]` (extension)
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// The operator console at `/console`: a page for admin tokens, with no power the
    /// REST API does not already give an admin. `false`: `/console` answers 404.
    pub enabled: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { enabled: true }
    }
}

impl Config {
    /// Shards to run: `shards`, or one per available core when it is 0 (1 if the core
    /// count cannot be determined).
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testkit::*;

    /// PROTOCOL.md section 13's listing, verbatim: it must parse and equal the defaults.
    const CONTRACT_EXAMPLE: &str = r#"
    listen = "127.0.0.1:8080"
    shards = 0                      # 0: one per core
    data_dir = "./data"
    public_url = "ws://127.0.0.1:8080"   # base of websocket_url in channel answers
    drain_period_ms = 10000         # SIGTERM: closes spread over this long
    log_format = "human"            # or "json"

    [auth]
    jwt_secret = "change-me"        # HS256
    api_keys = ["dev-key"]
    auth_timeout_ms = 10000
    ticket_ttl_ms = 30000

    [delivery]
    batch_ms = 5000                 # default flush interval; clients may choose 0..=max_batch_ms
    batch_max = 1000
    max_batch_ms = 60000
    framing = "frames"
    queue_capacity = 10000
    heartbeat_ms = 30000
    pong_timeout_ms = 30000

    [history]
    size = 100000
    ttl_ms = 600000

    [live_query]
    cap = 1000
    page = 100

    [services]
    ack_timeout_ms = 30000
    max_attempts = 10
    prefetch = 1000

    [channels]
    backlog = 10000
    max_per_user = 100

    [limits]
    max_message_bytes = 65536
    max_subscriptions = 1000
    max_live_queries = 16
    commands_per_sec = 100
    commands_burst = 200
    max_connections = 1000000
    request_timeout_ms = 10000      # HTTP: a request head (and a WebSocket handshake) must
                                    # arrive within this; idle keep-alive connections close
                                    # after it

    [cluster]
    redis_url = ""                  # empty: single node; "redis://127.0.0.1:6379": cluster mode
    node_id = ""

    [testing]
    echo_path = ""                  # e.g. "/echo": a WebSocket endpoint that echoes every
                                    # message, on the same code path as /ws (conformance runs);
                                    # empty: off
    "#;

    #[test]
    fn contract_example_equals_defaults() {
        let parsed = Config::from_toml_str(CONTRACT_EXAMPLE, no_env()).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn defaults_have_contract_values() {
        let c = Config::load(None, no_env()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.shards, 0);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.public_url, "ws://127.0.0.1:8080");
        assert_eq!(c.drain_period_ms, 10_000);
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.auth.jwt_secret, "change-me");
        assert_eq!(c.auth.api_keys, vec!["dev-key".to_string()]);
        assert_eq!(c.auth.auth_timeout_ms, 10_000);
        assert_eq!(c.auth.ticket_ttl_ms, 30_000);
        assert_eq!(c.delivery.batch_ms, 5_000);
        assert_eq!(c.delivery.batch_max, 1_000);
        assert_eq!(c.delivery.max_batch_ms, 60_000);
        assert_eq!(c.delivery.framing, Framing::Frames);
        assert_eq!(c.delivery.queue_capacity, 10_000);
        assert_eq!(c.delivery.heartbeat_ms, 30_000);
        assert_eq!(c.delivery.pong_timeout_ms, 30_000);
        assert_eq!(c.delivery.shard_queue_capacity, 65_536);
        assert_eq!(c.history.size, 100_000);
        assert_eq!(c.history.ttl_ms, 600_000);
        assert_eq!(c.live_query.cap, 1_000);
        assert_eq!(c.live_query.page, 100);
        assert_eq!(c.services.ack_timeout_ms, 30_000);
        assert_eq!(c.services.max_attempts, 10);
        assert_eq!(c.services.prefetch, 1_000);
        assert_eq!(c.channels.backlog, 10_000);
        assert_eq!(c.limits.max_message_bytes, 65_536);
        assert_eq!(c.limits.max_subscriptions, 1_000);
        assert_eq!(c.limits.max_live_queries, 16);
        assert_eq!(c.limits.commands_per_sec, 100);
        assert_eq!(c.limits.commands_burst, 200);
        assert_eq!(c.limits.max_connections, 1_000_000);
        assert_eq!(c.limits.max_http_body_bytes, 33_554_432);
        assert_eq!(c.limits.max_publish_batch, 10_000);
        assert_eq!(c.limits.request_timeout_ms, 10_000);
        assert_eq!(c.limits.max_http_connections, 4_096);
        assert_eq!(c.cluster.redis_url, "");
        assert_eq!(c.cluster.node_id, "");
        assert_eq!(c.channels.max_per_user, 100);
        assert_eq!(c.testing.echo_path, "");
        assert!(c.ignored_env.is_empty());
    }

    #[test]
    fn shard_count_zero_means_cores() {
        let c = Config::default();
        assert!(c.shard_count() >= 1);
    }

    #[test]
    fn framing_names() {
        assert_eq!(Framing::parse("frames"), Some(Framing::Frames));
        assert_eq!(Framing::parse("array"), Some(Framing::Array));
        assert_eq!(Framing::parse("Array"), None);
        assert_eq!(Framing::Array.as_str(), "array");
    }
}
