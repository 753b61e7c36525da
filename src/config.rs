//! The node's configuration: one typed [`Config`] built from the TOML file of PROTOCOL.md
//! section 13, overridden by `SHARDCAST_*` environment variables, then validated.
//!
//! Owned by start-up: `main` builds it once with [`Config::load`] and hands clones or parts
//! to the router, shards and REST handlers, which treat it as read-only. Loading does no I/O
//! beyond reading the one file it is given; the environment is passed in, so tests never
//! touch the process environment. Guarantee: a `Config` returned by [`Config::load`] or
//! [`Config::from_toml_str`] has passed [`Config::validate`], and every refusal (unknown
//! key, mistyped value, out-of-range value) is an error whose message names the key as
//! `section.key` and where it came from (the file, or the environment variable).

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::{Table, Value};

/// Prefix of every environment variable that may override a key.
const ENV_PREFIX: &str = "SHARDCAST_";

/// Where a value (or a bad key) came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// Text handed to [`Config::from_toml_str`].
    Text,
    /// This environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Text => f.write_str("in the configuration text"),
            Origin::Env(name) => write!(f, "from {name}"),
        }
    }
}

/// Why the configuration was refused. Every variant about a key names it (as
/// `section.key`, or the bare name for top-level keys) and, where known, where the value
/// came from, so an operator can fix it without reading code.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TOML {origin}: {message}")]
    Syntax { origin: Origin, message: String },
    #[error("unknown section '[{section}]' {origin}{}", suggestion_text(.suggestion))]
    UnknownSection {
        section: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    #[error("unknown key '{key}' {origin}{}", key_suggestion_text(.key, .suggestion))]
    UnknownKey {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    /// A value of the wrong type or shape, caught while reading the file or environment.
    #[error("invalid value for '{key}': {reason} ({origin})")]
    InvalidValue {
        key: String,
        reason: String,
        origin: Origin,
    },
    /// A well-typed value that [`Config::validate`] refuses.
    #[error("invalid value for '{key}': {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(
        "cluster mode ('cluster.redis_url') is not implemented in this version; leave it empty"
    )]
    ClusterUnsupported,
    #[error("environment variable {name} is not valid UTF-8")]
    NonUnicodeEnv { name: String },
    /// A shipped example secret on an address other machines can reach (PROTOCOL.md
    /// section 13): anyone who read the README could mint tokens or publish.
    #[error(
        "refusing to start: 'listen' = {listen} is not a loopback address and '{key}' {what}, \
         the shipped example that anyone can read; {fix}"
    )]
    ShippedSecret {
        key: &'static str,
        listen: SocketAddr,
        what: &'static str,
        fix: &'static str,
    },
}

/// The example secrets the defaults and the README ship with: fine on loopback, where only
/// this machine can reach the node, refused anywhere else ([`Config::validate`]).
pub const SHIPPED_JWT_SECRET: &str = "change-me";
pub const SHIPPED_API_KEY: &str = "dev-key";

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean '{s}'?"),
        None => String::new(),
    }
}

fn key_suggestion_text(key: &str, suggestion: &Option<String>) -> String {
    match suggestion {
        // The usual cause: a top-level key written below a `[section]` header.
        Some(s) if key.contains('.') && !s.contains('.') => format!(
            "; did you mean the top-level '{s}'? (top-level keys must come before the first [section])"
        ),
        _ => suggestion_text(suggestion),
    }
}

/// `log_format`: how the process writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `io` (extension): how shards write to sockets. `epoll`: a vectored write per flush.
/// `uring`: every flush of a loop turn submitted to io_uring together, one system call
/// for all of them; falls back to `epoll` (with one log line) where io_uring is
/// unavailable. See docs/PERFORMANCE.md for the measurement behind the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Io {
    #[default]
    Epoll,
    Uring,
}

/// `delivery.framing` and the `framing` connection option (PROTOCOL.md section 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// Names of `SHARDCAST_<NAME>` variables (no `__`) that are not top-level keys and were
    /// therefore ignored: other tools share the prefix (`SHARDCAST_BIN`, `SHARDCAST_LOG`),
    /// so they must not stop start-up, but the caller should log them in case of a typo.
    /// Sorted. Not a config key.
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
            ignored_env: Vec::new(),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Default flush interval; clients may choose `0..=max_batch_ms`.
    pub batch_ms: u64,
    pub batch_max: usize,
    pub max_batch_ms: u64,
    pub framing: Framing,
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
            queue_capacity: 10_000,
            heartbeat_ms: 30_000,
            pong_timeout_ms: 30_000,
            shard_queue_capacity: 65_536,
        }
    }
}

/// `[history]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// Project extension (not in PROTOCOL.md): most connections open at once that are not
    /// WebSockets (REST clients, handshakes in progress). Counted apart from
    /// `max_connections` so that slow or idle ones cannot use up the process's open files
    /// and lock out WebSocket clients; beyond it a new connection gets 503.
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Empty: single node. Anything else is refused by [`Config::validate`] for now.
    pub redis_url: String,
    /// The node's name in logs, metrics and `/healthz`; "": generated once and kept in
    /// `data_dir` (PROTOCOL.md section 13). Accepted on a single node too, so one file
    /// serves both modes.
    pub node_id: String,
}

/// `[testing]`
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Empty: off. Otherwise the path of a WebSocket endpoint that echoes every message.
    pub echo_path: String,
}

/// The shape a key's value must have. Checked before serde sees the table, so that a
/// mistake is reported with the key's full `section.key` name and its origin.
#[derive(Clone, Copy, Debug)]
enum Kind {
    UInt { max: u64 },
    Str,
    StrList,
    Addr,
    OneOf(&'static [&'static str]),
}

const U32: Kind = Kind::UInt {
    max: u32::MAX as u64,
};
const U64: Kind = Kind::UInt { max: u64::MAX };
const USIZE: Kind = Kind::UInt {
    max: usize::MAX as u64,
};

struct KeySpec {
    /// "" for top-level keys.
    section: &'static str,
    key: &'static str,
    kind: Kind,
    /// Never echo the value in an error: it would land in logs.
    secret: bool,
}

const fn spec(section: &'static str, key: &'static str, kind: Kind) -> KeySpec {
    KeySpec {
        section,
        key,
        kind,
        secret: false,
    }
}

const fn secret(section: &'static str, key: &'static str, kind: Kind) -> KeySpec {
    KeySpec {
        section,
        key,
        kind,
        secret: true,
    }
}

/// Every key the file and environment may set; must mirror the structs above (the tests
/// check both directions).
const KEYS: &[KeySpec] = &[
    spec("", "listen", Kind::Addr),
    spec("", "shards", USIZE),
    spec("", "data_dir", Kind::Str),
    spec("", "public_url", Kind::Str),
    spec("", "drain_period_ms", U64),
    spec("", "log_format", Kind::OneOf(&["human", "json"])),
    spec("", "io", Kind::OneOf(&["epoll", "uring"])),
    secret("auth", "jwt_secret", Kind::Str),
    secret("auth", "api_keys", Kind::StrList),
    spec("auth", "auth_timeout_ms", U64),
    spec("auth", "ticket_ttl_ms", U64),
    spec("auth", "allowed_origins", Kind::StrList),
    spec("auth", "jwt_public_key", Kind::Str),
    spec("delivery", "batch_ms", U64),
    spec("delivery", "batch_max", USIZE),
    spec("delivery", "max_batch_ms", U64),
    spec("delivery", "framing", Kind::OneOf(&["frames", "array"])),
    spec("delivery", "queue_capacity", USIZE),
    spec("delivery", "heartbeat_ms", U64),
    spec("delivery", "pong_timeout_ms", U64),
    spec("delivery", "shard_queue_capacity", USIZE),
    spec("history", "size", USIZE),
    spec("history", "ttl_ms", U64),
    spec("live_query", "cap", USIZE),
    spec("live_query", "page", USIZE),
    spec("services", "ack_timeout_ms", U64),
    spec("services", "max_attempts", U32),
    spec("services", "prefetch", USIZE),
    spec("channels", "backlog", USIZE),
    spec("channels", "max_per_user", USIZE),
    spec("limits", "max_message_bytes", USIZE),
    spec("limits", "max_subscriptions", USIZE),
    spec("limits", "max_live_queries", USIZE),
    spec("limits", "commands_per_sec", U32),
    spec("limits", "commands_burst", U32),
    spec("limits", "max_connections", USIZE),
    spec("limits", "max_http_body_bytes", USIZE),
    spec("limits", "max_publish_batch", USIZE),
    spec("limits", "request_timeout_ms", U64),
    spec("limits", "max_http_connections", USIZE),
    spec("cluster", "redis_url", Kind::Str),
    spec("cluster", "node_id", Kind::Str),
    spec("testing", "echo_path", Kind::Str),
];

const SECTIONS: &[&str] = &[
    "auth",
    "delivery",
    "history",
    "live_query",
    "services",
    "channels",
    "limits",
    "cluster",
    "testing",
];

fn find_key(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.key == key)
}

fn full_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// A likely intended key for an unknown one: a near miss in spelling, or the same key in
/// another place (typically a top-level key written after a `[section]` header).
fn suggest_key(section: &str, key: &str) -> Option<String> {
    let near = KEYS
        .iter()
        .filter(|k| k.section == section)
        .map(|k| (edit_distance(k.key, key), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| full_name(k.section, k.key));
    near.or_else(|| {
        KEYS.iter()
            .find(|k| k.key == key)
            .map(|k| full_name(k.section, k.key))
    })
}

fn suggest_section(section: &str) -> Option<String> {
    SECTIONS
        .iter()
        .map(|s| (edit_distance(s, section), s))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| (*s).to_string())
}

/// Levenshtein distance; inputs are short key names, so the quadratic cost is nothing.
/// Also behind the command line's "did you mean".
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// How a value is described in an error: type and, unless secret, the value itself.
fn describe(value: &Value, secret: bool) -> String {
    let shown = |kind: &str, text: String| {
        if secret {
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {kind}")
        } else {
            format!("{kind} {text}")
        }
    };
    match value {
        Value::String(s) => shown("string", format!("{s:?}")),
        Value::Integer(i) => shown("integer", i.to_string()),
        Value::Float(x) => shown("float", x.to_string()),
        Value::Boolean(b) => shown("boolean", b.to_string()),
        Value::Datetime(d) => shown("date-time", d.to_string()),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// Checks `value` against the key's kind; the error is the reason, without the key name.
fn check_kind(spec: &KeySpec, value: &Value) -> Result<(), String> {
    let found = || describe(value, spec.secret);
    match spec.kind {
        Kind::UInt { max } => match value {
            Value::Integer(i) if *i >= 0 && (*i as u64) <= max => Ok(()),
            Value::Integer(i) if *i >= 0 => Err(format!(
                "expected an unsigned integer no greater than {max}, found {}",
                found()
            )),
            _ => Err(format!("expected an unsigned integer, found {}", found())),
        },
        Kind::Str => match value {
            Value::String(_) => Ok(()),
            _ => Err(format!("expected a string, found {}", found())),
        },
        Kind::StrList => match value {
            Value::Array(items) => match items.iter().position(|v| !v.is_str()) {
                None => Ok(()),
                Some(i) => Err(format!(
                    "expected an array of strings, found {} at index {i}",
                    describe(&items[i], spec.secret)
                )),
            },
            _ => Err(format!("expected an array of strings, found {}", found())),
        },
        Kind::Addr => match value {
            Value::String(s) if s.parse::<SocketAddr>().is_ok() => Ok(()),
            _ => Err(format!(
                "expected a socket address such as \"127.0.0.1:8080\" (an IP address and a \
                 port; host names are not resolved), found {}",
                found()
            )),
        },
        Kind::OneOf(options) => match value {
            Value::String(s) if options.contains(&s.as_str()) => Ok(()),
            _ => {
                let expected: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                Err(format!(
                    "expected one of {}, found {}",
                    expected.join(", "),
                    found()
                ))
            }
        },
    }
}

fn check_value(spec: &KeySpec, value: &Value, origin: &Origin) -> Result<(), ConfigError> {
    check_kind(spec, value).map_err(|reason| ConfigError::InvalidValue {
        key: full_name(spec.section, spec.key),
        reason,
        origin: origin.clone(),
    })
}

/// Walks the parsed file against [`KEYS`]: every key known, every value well-typed.
fn check_table(table: &Table, origin: &Origin) -> Result<(), ConfigError> {
    for (name, value) in table {
        if let Some(spec) = find_key("", name) {
            check_value(spec, value, origin)?;
            continue;
        }
        if !SECTIONS.contains(&name.as_str()) {
            return Err(match value {
                Value::Table(_) => ConfigError::UnknownSection {
                    section: name.clone(),
                    origin: origin.clone(),
                    suggestion: suggest_section(name),
                },
                _ => ConfigError::UnknownKey {
                    key: name.clone(),
                    origin: origin.clone(),
                    suggestion: suggest_key("", name),
                },
            });
        }
        let Value::Table(section) = value else {
            return Err(ConfigError::InvalidValue {
                key: name.clone(),
                reason: format!(
                    "expected a table ([{name}]), found {}",
                    describe(value, false)
                ),
                origin: origin.clone(),
            });
        };
        for (key, value) in section {
            let Some(spec) = find_key(name, key) else {
                return Err(ConfigError::UnknownKey {
                    key: full_name(name, key),
                    origin: origin.clone(),
                    suggestion: suggest_key(name, key),
                });
            };
            check_value(spec, value, origin)?;
        }
    }
    Ok(())
}

/// Parses one environment value as a TOML value (`0`, `true`, `["a","b"]`, `"quoted"`).
fn parse_toml_value(raw: &str) -> Option<Value> {
    Value::deserialize(toml::de::ValueDeserializer::new(raw)).ok()
}

/// The value an environment variable sets for a key of this kind.
///
/// String-valued keys take the text verbatim unless it is a quoted TOML string, so
/// `SHARDCAST_AUTH__JWT_SECRET=12345` is the secret "12345", not a type error. A list key
/// takes a TOML array, or else the whole text as a one-element list (an empty text is the
/// empty list). Numbers are parsed as TOML; anything unparsable becomes a string, which
/// the kind check then refuses with the text in the message.
fn env_value(kind: Kind, raw: &str) -> Value {
    let parsed = parse_toml_value(raw);
    let as_string = || match &parsed {
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String(raw.to_string()),
    };
    match kind {
        Kind::Str | Kind::Addr | Kind::OneOf(_) => as_string(),
        Kind::StrList => match &parsed {
            Some(Value::Array(items)) => Value::Array(items.clone()),
            _ if raw.trim().is_empty() => Value::Array(Vec::new()),
            _ => Value::Array(vec![as_string()]),
        },
        Kind::UInt { .. } => parsed.unwrap_or_else(|| Value::String(raw.to_string())),
    }
}

/// Applies `SHARDCAST_*` overrides to the parsed file. Returns the ignored names, sorted.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut ignored = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let origin = Origin::Env(name.clone());
        let (section, key) = match rest.split_once("__") {
            Some((section, key)) => (section.to_string(), key.to_string()),
            // Without `__` the variable may belong to another tool sharing the prefix.
            None if find_key("", &rest).is_some() => (String::new(), rest),
            None => {
                ignored.push(name);
                continue;
            }
        };
        if !section.is_empty() && !SECTIONS.contains(&section.as_str()) {
            return Err(ConfigError::UnknownSection {
                suggestion: suggest_section(&section),
                section,
                origin,
            });
        }
        let Some(spec) = find_key(&section, &key) else {
            return Err(ConfigError::UnknownKey {
                key: full_name(&section, &key),
                origin,
                suggestion: suggest_key(&section, &key),
            });
        };
        let value = env_value(spec.kind, &raw);
        check_value(spec, &value, &origin)?;
        if section.is_empty() {
            table.insert(key, value);
        } else {
            let entry = table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()));
            // check_table already refused a non-table section in the file.
            if let Value::Table(section_table) = entry {
                section_table.insert(key, value);
            }
        }
    }
    ignored.sort();
    Ok(ignored)
}

/// File (or text) plus environment into a typed, not yet validated, `Config`.
fn merge(
    text: &str,
    origin: &Origin,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        origin: origin.clone(),
        message: one_line(e.message()) + &position(text, e.span()),
    })?;
    check_table(&table, origin)?;
    let ignored_env = apply_env(&mut table, env)?;
    // The walk above has checked every key and type, so serde failing here would be a
    // mismatch between KEYS and the structs; still reported, never a panic.
    let mut config: Config = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.clone(),
            message: e.message().to_string(),
        })?;
    config.ignored_env = ignored_env;
    Ok(config)
}

/// toml's message spans lines; a start-up error should be one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// " at line L, column C" for a parse error's span, since `message()` has no position.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let upto = text.get(..span.start).unwrap_or(text);
    let line = upto.matches('\n').count() + 1;
    let column = upto.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at line {line}, column {column}")
}

fn at_least_one(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: "must be at least 1".to_string(),
        })
    }
}

/// Paths the server answers itself; an echo endpoint there would shadow or be shadowed.
const RESERVED_PATHS: &[&str] = &["/ws", "/metrics", "/healthz", "/readyz"];
const RESERVED_PREFIXES: &[&str] = &["/api", "/channels"];

fn check_echo_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be empty or start with '/'"));
    }
    if path
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{path:?} must be a plain path (no '?', '#' or whitespace)"
        ));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!("{path:?} is one of the server's own endpoints"));
    }
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if RESERVED_PREFIXES.iter().any(|p| under(p)) {
        return Err(format!(
            "{path:?} is under one of the server's own endpoints"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads `file` (None: the built-in defaults), applies the overrides found in `env`,
    /// and validates. `env` is the process environment: pass [`process_env`]`()?` in
    /// production (`std::env::vars()` panics on a non-UTF-8 variable), a `Vec` in tests.
    /// Variables `SHARDCAST_<NAME>` that are not top-level keys end up in
    /// [`Config::ignored_env`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match file {
            None => Self::from_toml_at("", &Origin::Text, env),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::from_toml_at(&text, &Origin::File(path.to_path_buf()), env)
            }
        }
    }

    /// As [`Config::load`] for TOML text already in memory.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_at(text, &Origin::Text, env)
    }

    fn from_toml_at(
        text: &str,
        origin: &Origin,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = merge(text, origin, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations and ranges that types alone cannot express. Every refusal
    /// names its key. The first problem found is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        let l = &self.limits;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".to_string(),
            });
        }
        if self.auth.jwt_secret.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                reason: "must not be empty".to_string(),
            });
        }
        self.load_keys()?;
        if let Err(reason) = crate::origin::Origins::from_config(&self.auth.allowed_origins) {
            return Err(ConfigError::Invalid {
                key: "auth.allowed_origins",
                reason,
            });
        }
        // An empty key would let `Authorization: apikey ` (nothing after it) in.
        if let Some(i) = self.auth.api_keys.iter().position(|k| k.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "auth.api_keys",
                reason: format!("entry {i} is empty; api keys must not be empty"),
            });
        }
        at_least_one("auth.auth_timeout_ms", self.auth.auth_timeout_ms)?;
        at_least_one("auth.ticket_ttl_ms", self.auth.ticket_ttl_ms)?;
        at_least_one("delivery.batch_max", d.batch_max as u64)?;
        if d.batch_ms > d.max_batch_ms {
            return Err(ConfigError::Invalid {
                key: "delivery.batch_ms",
                reason: format!(
                    "{} is greater than 'delivery.max_batch_ms' ({})",
                    d.batch_ms, d.max_batch_ms
                ),
            });
        }
        at_least_one("delivery.queue_capacity", d.queue_capacity as u64)?;
        at_least_one("delivery.heartbeat_ms", d.heartbeat_ms)?;
        at_least_one("delivery.pong_timeout_ms", d.pong_timeout_ms)?;
        at_least_one(
            "delivery.shard_queue_capacity",
            d.shard_queue_capacity as u64,
        )?;
        // A zero page would never finish sending a live query's initial data.
        at_least_one("live_query.page", self.live_query.page as u64)?;
        at_least_one("services.ack_timeout_ms", self.services.ack_timeout_ms)?;
        at_least_one(
            "services.max_attempts",
            u64::from(self.services.max_attempts),
        )?;
        // A zero prefetch would never hand a task to anyone.
        at_least_one("services.prefetch", self.services.prefetch as u64)?;
        at_least_one("limits.max_message_bytes", l.max_message_bytes as u64)?;
        at_least_one("limits.max_subscriptions", l.max_subscriptions as u64)?;
        at_least_one("limits.max_live_queries", l.max_live_queries as u64)?;
        at_least_one("limits.commands_per_sec", u64::from(l.commands_per_sec))?;
        at_least_one("limits.commands_burst", u64::from(l.commands_burst))?;
        at_least_one("limits.max_connections", l.max_connections as u64)?;
        at_least_one("limits.max_http_body_bytes", l.max_http_body_bytes as u64)?;
        at_least_one("limits.max_publish_batch", l.max_publish_batch as u64)?;
        at_least_one("limits.request_timeout_ms", l.request_timeout_ms)?;
        at_least_one("limits.max_http_connections", l.max_http_connections as u64)?;
        check_echo_path(&self.testing.echo_path).map_err(|reason| ConfigError::Invalid {
            key: "testing.echo_path",
            reason,
        })?;
        if !self.cluster.redis_url.is_empty() {
            return Err(ConfigError::ClusterUnsupported);
        }
        self.check_shipped_secrets()
    }

    /// The token keys: `auth.jwt_secret` for HS256 and the public key in the file
    /// `auth.jwt_public_key`, if set, read and checked now so that a missing or unusable
    /// key stops start-up naming the key and the file.
    pub fn load_keys(&self) -> Result<crate::auth::jwt::Keys, ConfigError> {
        let secret = self.auth.jwt_secret.as_bytes();
        let path = &self.auth.jwt_public_key;
        if path.as_os_str().is_empty() {
            return Ok(crate::auth::jwt::Keys::hs256(secret));
        }
        let invalid = |reason: String| ConfigError::Invalid {
            key: "auth.jwt_public_key",
            reason: format!("{}: {reason}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot be read ({e})")))?;
        crate::auth::jwt::Keys::new(secret, Some(&pem)).map_err(invalid)
    }

    /// PROTOCOL.md section 13: off loopback, the shipped example secret and api key stop
    /// start-up (this runs before anything binds). A list that merely also holds
    /// `dev-key` is refused too: that one key would still let anyone publish.
    fn check_shipped_secrets(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if self.auth.jwt_secret == SHIPPED_JWT_SECRET {
            return Err(ConfigError::ShippedSecret {
                key: "auth.jwt_secret",
                listen: self.listen,
                what: "is \"change-me\"",
                fix: "set a secret of your own as jwt_secret under [auth] in the config file, \
                      or in the environment variable SHARDCAST_AUTH__JWT_SECRET",
            });
        }
        if self.auth.api_keys.iter().any(|k| k == SHIPPED_API_KEY) {
            return Err(ConfigError::ShippedSecret {
                key: "auth.api_keys",
                listen: self.listen,
                what: "holds \"dev-key\"",
                fix: "set keys of your own as api_keys under [auth] in the config file, \
                      or in the environment variable SHARDCAST_AUTH__API_KEYS \
                      (e.g. '[\"k1\",\"k2\"]')",
            });
        }
        Ok(())
    }

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

/// The process environment for [`Config::load`], without `std::env::vars()`'s panic on
/// non-UTF-8 entries: those are skipped unless they carry the `SHARDCAST_` prefix, in which
/// case they are an error (silently altering, say, a secret would be worse).
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            (Ok(name), Err(_)) if name.starts_with(ENV_PREFIX) => {
                return Err(ConfigError::NonUnicodeEnv { name })
            }
            (Err(name), _) if name.to_string_lossy().starts_with(ENV_PREFIX) => {
                return Err(ConfigError::NonUnicodeEnv {
                    name: name.to_string_lossy().into_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_err(text: &str, vars: &[(&str, &str)]) -> ConfigError {
        match Config::from_toml_str(text, env(vars)) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

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

    /// Every entry of KEYS must be a real struct field: deny_unknown_fields would refuse
    /// it otherwise. (The contract example covers the other direction.)
    #[test]
    fn every_known_key_reaches_the_struct() {
        for spec in KEYS {
            let value = match spec.kind {
                Kind::UInt { .. } => Value::Integer(7),
                Kind::Str => Value::String("/x".into()),
                Kind::StrList => Value::Array(vec![Value::String("k".into())]),
                Kind::Addr => Value::String("0.0.0.0:1".into()),
                Kind::OneOf(options) => Value::String(options[options.len() - 1].into()),
            };
            let mut table = Table::new();
            if spec.section.is_empty() {
                table.insert(spec.key.into(), value);
            } else {
                let mut section = Table::new();
                section.insert(spec.key.into(), value);
                table.insert(spec.section.into(), Value::Table(section));
            }
            let text = toml::to_string(&table).unwrap();
            if let Err(e) = merge(&text, &Origin::Text, no_env()) {
                panic!("{}.{}: {e}", spec.section, spec.key);
            }
        }
    }

    #[test]
    fn extension_keys_parse() {
        let c = Config::from_toml_str(
            "[limits]\nmax_http_body_bytes = 1024\nmax_publish_batch = 5\n\
             [delivery]\nshard_queue_capacity = 8\nframing = \"array\"",
            no_env(),
        )
        .unwrap();
        assert_eq!(c.limits.max_http_body_bytes, 1024);
        assert_eq!(c.limits.max_publish_batch, 5);
        assert_eq!(c.delivery.shard_queue_capacity, 8);
        assert_eq!(c.delivery.framing, Framing::Array);
    }

    #[test]
    fn shipped_secrets_are_refused_off_loopback_only() {
        let own = "[auth]\njwt_secret = \"s3cret\"\napi_keys = [\"k1\"]";
        // Loopback (v4 and v6) keeps the shipped examples working out of the box.
        for listen in ["127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080"] {
            let c = Config::from_toml_str(&format!("listen = \"{listen}\""), no_env());
            assert!(c.is_ok(), "{listen}: {c:?}");
        }
        for listen in ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080"] {
            let err = load_err(&format!("listen = \"{listen}\""), &[]);
            assert!(
                matches!(
                    err,
                    ConfigError::ShippedSecret {
                        key: "auth.jwt_secret",
                        ..
                    }
                ),
                "{listen}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(listen) && msg.contains("'auth.jwt_secret' is \"change-me\""));
            assert!(msg.contains("SHARDCAST_AUTH__JWT_SECRET"), "{msg}");
            // With an own secret, the shipped api key is the next refusal, even in a list.
            let err = load_err(
                &format!("listen = \"{listen}\"\n[auth]\njwt_secret = \"x\"\napi_keys = [\"k\", \"dev-key\"]"),
                &[],
            );
            let msg = err.to_string();
            assert!(msg.contains("'auth.api_keys' holds \"dev-key\""), "{msg}");
            assert!(msg.contains("SHARDCAST_AUTH__API_KEYS"), "{msg}");
            let c = Config::from_toml_str(&format!("listen = \"{listen}\"\n{own}"), no_env());
            assert!(c.is_ok(), "{listen}: {c:?}");
        }
        // The environment's values count, both ways.
        let err = load_err(
            own,
            &[
                ("SHARDCAST_LISTEN", "0.0.0.0:1"),
                ("SHARDCAST_AUTH__JWT_SECRET", "change-me"),
            ],
        );
        assert!(matches!(
            err,
            ConfigError::ShippedSecret {
                key: "auth.jwt_secret",
                ..
            }
        ));
        let c = Config::from_toml_str(
            "listen = \"0.0.0.0:1\"",
            env(&[
                ("SHARDCAST_AUTH__JWT_SECRET", "mine"),
                ("SHARDCAST_AUTH__API_KEYS", "[\"a\"]"),
            ]),
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn file_values_and_partial_sections() {
        let c = Config::from_toml_str(
            "listen = \"0.0.0.0:9000\"\nlog_format = \"json\"\n[delivery]\nbatch_ms = 0\n\
             [auth]\njwt_secret = \"s\"\napi_keys = [\"k\"]\n",
            no_env(),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.delivery.batch_ms, 0);
        // Keys not written keep their defaults, even in a section that is present.
        assert_eq!(c.delivery.batch_max, 1_000);
    }

    #[test]
    fn unknown_key_in_file_names_section_key_and_file() {
        let dir = std::env::temp_dir().join(format!("shardcast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file.toml");
        std::fs::write(&path, "[delivery]\nbatch_msx = 5\n").unwrap();
        let err = Config::load(Some(&path), no_env()).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, origin: Origin::File(p), .. }
                if key == "delivery.batch_msx" && p == &path),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "unknown key 'delivery.batch_msx' in {}",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("did you mean 'delivery.batch_ms'"), "{msg}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let path = Path::new("/nonexistent/shardcast/config.toml");
        let err = Config::load(Some(path), no_env()).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { path: p, .. } if p == path));
        assert!(err
            .to_string()
            .contains("/nonexistent/shardcast/config.toml"));
    }

    #[test]
    fn unknown_top_level_key_and_section() {
        let err = load_err("lissen = \"127.0.0.1:1\"", &[]);
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "lissen"));
        assert!(err.to_string().contains("did you mean 'listen'"), "{err}");

        let err = load_err("[deliverx]\nbatch_ms = 1", &[]);
        assert!(
            matches!(&err, ConfigError::UnknownSection { section, .. } if section == "deliverx")
        );
        assert!(err.to_string().contains("did you mean 'delivery'"), "{err}");
    }

    #[test]
    fn top_level_key_after_a_section_is_pointed_out() {
        let err = load_err("[testing]\nlog_format = \"json\"", &[]);
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "testing.log_format"));
        assert!(
            err.to_string()
                .contains("did you mean the top-level 'log_format'?"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_reports_position() {
        let err = load_err("listen = \n[delivery", &[]);
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("at line 1, column 10"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn mistyped_values_name_the_key() {
        let err = load_err("[delivery]\nbatch_ms = \"x\"", &[]);
        assert_eq!(
            err.to_string(),
            "invalid value for 'delivery.batch_ms': expected an unsigned integer, \
             found string \"x\" (in the configuration text)"
        );
        let err = load_err("[delivery]\nbatch_ms = -1", &[]);
        assert!(err.to_string().contains("found integer -1"), "{err}");
        let err = load_err("[services]\nmax_attempts = 4294967296", &[]);
        assert!(
            matches!(&err, ConfigError::InvalidValue { key, .. } if key == "services.max_attempts")
        );
        assert!(
            err.to_string().contains("no greater than 4294967295"),
            "{err}"
        );
        let err = load_err("[delivery]\nframing = \"stream\"", &[]);
        assert!(
            err.to_string()
                .contains("'delivery.framing': expected one of \"frames\", \"array\""),
            "{err}"
        );
        let err = load_err("log_format = \"xml\"", &[]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "log_format"));
        let err = load_err("[auth]\napi_keys = \"k\"", &[]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "auth.api_keys"));
        let err = load_err("[auth]\napi_keys = [\"k\", 3]", &[]);
        assert!(err.to_string().contains("at index 1"), "{err}");
        let err = load_err("delivery = 3", &[]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "delivery"));
    }

    #[test]
    fn secret_values_are_not_echoed() {
        let err = load_err("[auth]\njwt_secret = 123456789", &[]);
        let msg = err.to_string();
        assert!(msg.contains("'auth.jwt_secret'"), "{msg}");
        assert!(!msg.contains("123456789"), "{msg}");
        assert!(msg.contains("found an integer"), "{msg}");
    }

    #[test]
    fn listen_must_be_a_socket_address() {
        let err = load_err("listen = \"localhost:8080\"", &[]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "listen"));
        assert!(err.to_string().contains("socket address"), "{err}");
        let err = load_err("", &[("SHARDCAST_LISTEN", "8080")]);
        assert!(
            matches!(&err, ConfigError::InvalidValue { key, origin: Origin::Env(n), .. }
                if key == "listen" && n == "SHARDCAST_LISTEN")
        );
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_toml_str(
            "[delivery]\nbatch_ms = 100\n",
            env(&[
                ("SHARDCAST_DELIVERY__BATCH_MS", "0"),
                ("SHARDCAST_LISTEN", "127.0.0.1:9000"),
                ("SHARDCAST_DATA_DIR", "/var/lib/shardcast"),
                ("SHARDCAST_LOG_FORMAT", "json"),
                ("SHARDCAST_AUTH__API_KEYS", "[\"a\", \"b\"]"),
                ("SHARDCAST_AUTH__JWT_SECRET", "12345"),
                ("SHARDCAST_TESTING__ECHO_PATH", "\"/echo\""),
                ("SHARDCAST_DELIVERY__FRAMING", "array"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.delivery.batch_ms, 0);
        assert_eq!(c.listen, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/shardcast"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.auth.api_keys, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c.auth.jwt_secret, "12345");
        assert_eq!(c.testing.echo_path, "/echo");
        assert_eq!(c.delivery.framing, Framing::Array);
        assert!(c.ignored_env.is_empty());
    }

    #[test]
    fn env_list_forms() {
        let c = Config::from_toml_str("", env(&[("SHARDCAST_AUTH__API_KEYS", "solo")])).unwrap();
        assert_eq!(c.auth.api_keys, vec!["solo".to_string()]);
        let c = Config::from_toml_str("", env(&[("SHARDCAST_AUTH__API_KEYS", "")])).unwrap();
        assert!(c.auth.api_keys.is_empty());
        let err = load_err("", &[("SHARDCAST_AUTH__API_KEYS", "[1]")]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "auth.api_keys"));
    }

    #[test]
    fn env_bad_value_names_key_and_variable() {
        let err = load_err("", &[("SHARDCAST_DELIVERY__BATCH_MS", "x")]);
        assert_eq!(
            err.to_string(),
            "invalid value for 'delivery.batch_ms': expected an unsigned integer, \
             found string \"x\" (from SHARDCAST_DELIVERY__BATCH_MS)"
        );
        let err = load_err("", &[("SHARDCAST_LIMITS__COMMANDS_PER_SEC", "1.5")]);
        assert!(err.to_string().contains("found float 1.5"), "{err}");
    }

    #[test]
    fn env_unknown_section_or_key_is_an_error() {
        let err = load_err("", &[("SHARDCAST_DELIVERY__BATCH_MSX", "1")]);
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, origin: Origin::Env(n), .. }
                if key == "delivery.batch_msx" && n == "SHARDCAST_DELIVERY__BATCH_MSX"),
            "{err:?}"
        );
        let err = load_err("", &[("SHARDCAST_DELIVERYX__BATCH_MS", "1")]);
        assert!(
            matches!(&err, ConfigError::UnknownSection { section, .. } if section == "deliveryx")
        );
        assert!(
            err.to_string().contains("SHARDCAST_DELIVERYX__BATCH_MS"),
            "{err}"
        );
    }

    #[test]
    fn env_without_double_underscore_that_is_not_a_key_is_ignored() {
        let c = Config::from_toml_str(
            "",
            env(&[
                ("SHARDCAST_LOG", "debug"),
                ("SHARDCAST_BIN", "/usr/bin/shardcast"),
                ("SHARDCAST_SHARDS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.shard_count(), 3);
        assert_eq!(c.ignored_env, vec!["SHARDCAST_BIN", "SHARDCAST_LOG"]);
    }

    #[test]
    fn validation_errors_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("[delivery]\nbatch_max = 0", "delivery.batch_max"),
            ("[delivery]\nbatch_ms = 70000", "delivery.batch_ms"),
            ("[delivery]\nqueue_capacity = 0", "delivery.queue_capacity"),
            ("[delivery]\nheartbeat_ms = 0", "delivery.heartbeat_ms"),
            (
                "[delivery]\npong_timeout_ms = 0",
                "delivery.pong_timeout_ms",
            ),
            (
                "[delivery]\nshard_queue_capacity = 0",
                "delivery.shard_queue_capacity",
            ),
            ("[auth]\nauth_timeout_ms = 0", "auth.auth_timeout_ms"),
            ("[auth]\nticket_ttl_ms = 0", "auth.ticket_ttl_ms"),
            ("[auth]\njwt_secret = \"\"", "auth.jwt_secret"),
            ("[auth]\napi_keys = [\"a\", \"\"]", "auth.api_keys"),
            (
                "[limits]\nmax_message_bytes = 0",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_subscriptions = 0",
                "limits.max_subscriptions",
            ),
            ("[limits]\nmax_live_queries = 0", "limits.max_live_queries"),
            ("[limits]\ncommands_per_sec = 0", "limits.commands_per_sec"),
            ("[limits]\ncommands_burst = 0", "limits.commands_burst"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_http_body_bytes = 0",
                "limits.max_http_body_bytes",
            ),
            (
                "[limits]\nmax_publish_batch = 0",
                "limits.max_publish_batch",
            ),
            (
                "[limits]\nrequest_timeout_ms = 0",
                "limits.request_timeout_ms",
            ),
            (
                "[limits]\nmax_http_connections = 0",
                "limits.max_http_connections",
            ),
            ("[live_query]\npage = 0", "live_query.page"),
            ("[services]\nack_timeout_ms = 0", "services.ack_timeout_ms"),
            ("[services]\nmax_attempts = 0", "services.max_attempts"),
            ("[services]\nprefetch = 0", "services.prefetch"),
            ("data_dir = \"\"", "data_dir"),
            ("[testing]\necho_path = \"echo\"", "testing.echo_path"),
            ("[testing]\necho_path = \"/ws\"", "testing.echo_path"),
            ("[testing]\necho_path = \"/metrics\"", "testing.echo_path"),
            (
                "[testing]\necho_path = \"/api/v1/echo\"",
                "testing.echo_path",
            ),
            ("[testing]\necho_path = \"/echo?x\"", "testing.echo_path"),
        ];
        for (text, want) in cases {
            let err = load_err(text, &[]);
            match &err {
                ConfigError::Invalid { key, .. } if key == want => {}
                other => panic!("{text:?}: expected Invalid for {want}, got {other:?}"),
            }
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid value for '{want}': ")),
                "{err}"
            );
        }
    }

    #[test]
    fn batch_ms_may_equal_max_batch_ms_and_zero_limits_elsewhere_are_fine() {
        let c = Config::from_toml_str(
            "[delivery]\nbatch_ms = 60000\n[history]\nsize = 0\nttl_ms = 0\n\
             [channels]\nbacklog = 0\n[testing]\necho_path = \"/echo\"",
            no_env(),
        )
        .unwrap();
        assert_eq!(c.delivery.batch_ms, 60_000);
        assert_eq!(c.testing.echo_path, "/echo");
    }

    #[test]
    fn cluster_mode_is_refused() {
        let err = load_err("[cluster]\nredis_url = \"redis://127.0.0.1:6379\"", &[]);
        assert!(matches!(err, ConfigError::ClusterUnsupported));
        assert_eq!(
            err.to_string(),
            "cluster mode ('cluster.redis_url') is not implemented in this version; leave it empty"
        );
    }

    #[test]
    fn validate_on_a_hand_built_config() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.delivery.max_batch_ms = 10;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "delivery.batch_ms")
        );
    }

    #[test]
    fn shard_count_zero_means_cores() {
        let c = Config::default();
        assert!(c.shard_count() >= 1);
    }

    #[test]
    fn process_env_reads_without_panicking() {
        let vars = process_env().unwrap();
        assert!(vars.iter().all(|(name, _)| !name.is_empty()));
    }

    #[test]
    fn framing_names() {
        assert_eq!(Framing::parse("frames"), Some(Framing::Frames));
        assert_eq!(Framing::parse("array"), Some(Framing::Array));
        assert_eq!(Framing::parse("Array"), None);
        assert_eq!(Framing::Array.as_str(), "array");
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("batch_ms", "batch_msx"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
