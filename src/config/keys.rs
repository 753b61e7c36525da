//! The key table: every key the file and environment may set ([`KEYS`], with its kind and
//! whether it is secret), the sections, and the checks of a parsed TOML table against it
//! (unknown keys and sections with a "did you mean", mistyped values named `section.key`).

use std::net::SocketAddr;
use toml::{Table, Value};

use super::error::{ConfigError, Origin};

/// The shape a key's value must have. Checked before serde sees the table, so that a
/// mistake is reported with the key's full `section.key` name and its origin.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    UInt { max: u64 },
    Str,
    StrList,
    Addr,
    OneOf(&'static [&'static str]),
    Bool,
}

const U32: Kind = Kind::UInt {
    max: u32::MAX as u64,
};
const U64: Kind = Kind::UInt { max: u64::MAX };
const USIZE: Kind = Kind::UInt {
    max: usize::MAX as u64,
};

pub(super) struct KeySpec {
    /// "" for top-level keys.
    pub(super) section: &'static str,
    pub(super) key: &'static str,
    pub(super) kind: Kind,
    /// Never echo the value in an error: it would land in logs.
    pub(super) secret: bool,
    /// Beyond the keys of PROTOCOL.md section 13 (this implementation's own).
    pub(super) ext: bool,
    /// What the key means, in one line: `shardcast config`'s comment.
    pub(super) doc: &'static str,
}

const fn spec(section: &'static str, key: &'static str, kind: Kind, doc: &'static str) -> KeySpec {
    KeySpec {
        section,
        key,
        kind,
        secret: false,
        ext: false,
        doc,
    }
}

const fn secret(
    section: &'static str,
    key: &'static str,
    kind: Kind,
    doc: &'static str,
) -> KeySpec {
    KeySpec {
        secret: true,
        ..spec(section, key, kind, doc)
    }
}

const fn ext(section: &'static str, key: &'static str, kind: Kind, doc: &'static str) -> KeySpec {
    KeySpec {
        ext: true,
        ..spec(section, key, kind, doc)
    }
}

/// Every key the file and environment may set, with its one-line meaning; must mirror the
/// structs of `sections` (the tests check both directions), and docs/CONFIG.md and
/// `shardcast config` are generated or checked from it.
pub(super) const KEYS: &[KeySpec] = &[
    spec(
        "",
        "listen",
        Kind::Addr,
        "address and port of every endpoint (WebSocket, REST, metrics)",
    ),
    spec("", "shards", USIZE, "event-loop threads; 0: one per core"),
    spec(
        "",
        "data_dir",
        Kind::Str,
        "directory of the embedded store (entities, history, services, channels)",
    ),
    spec(
        "",
        "public_url",
        Kind::Str,
        "base of `websocket_url` in channel answers, used verbatim",
    ),
    spec(
        "",
        "drain_period_ms",
        U64,
        "on SIGTERM or SIGINT, WebSocket closes are spread over this long",
    ),
    spec(
        "",
        "log_format",
        Kind::OneOf(&["human", "json"]),
        "\"human\" or \"json\" log lines (level: SHARDCAST_LOG)",
    ),
    ext(
        "",
        "io",
        Kind::OneOf(&["epoll", "uring"]),
        "the shards' write path: \"epoll\" or \"uring\" (io_uring)",
    ),
    secret(
        "auth",
        "jwt_secret",
        Kind::Str,
        "HS256 secret of every token; also keys the list cursors",
    ),
    secret(
        "auth",
        "api_keys",
        Kind::StrList,
        "keys accepted as `Authorization: apikey <key>` (publish, entities, operator REST)",
    ),
    spec(
        "auth",
        "auth_timeout_ms",
        U64,
        "a WebSocket must authenticate within this",
    ),
    spec(
        "auth",
        "ticket_ttl_ms",
        U64,
        "lifetime of a `POST /api/v1/ws-tickets` ticket",
    ),
    spec(
        "auth",
        "allowed_origins",
        Kind::StrList,
        "browser origins allowed on upgrades and, with CORS, on /api/v1/*; []: loopback only",
    ),
    spec(
        "auth",
        "jwt_public_key",
        Kind::Str,
        "PEM file of an RS256 (RSA) or ES256 (P-256) public key; \"\": none",
    ),
    spec(
        "delivery",
        "batch_ms",
        U64,
        "default flush interval; clients may choose 0..=max_batch_ms",
    ),
    spec(
        "delivery",
        "batch_max",
        USIZE,
        "a connection's batch is flushed at this many events",
    ),
    spec(
        "delivery",
        "max_batch_ms",
        U64,
        "largest batchMs a client may ask for",
    ),
    spec(
        "delivery",
        "framing",
        Kind::OneOf(&["frames", "array"]),
        "default framing: \"frames\" (one message per event) or \"array\"",
    ),
    ext(
        "delivery",
        "compression",
        Kind::OneOf(&["off", "on"]),
        "accept permessage-deflate (RFC 7692) offers: \"off\" or \"on\"",
    ),
    spec(
        "delivery",
        "queue_capacity",
        USIZE,
        "per-connection ring, in messages; beyond it the oldest drop (QUEUE_OVERFLOW)",
    ),
    spec(
        "delivery",
        "heartbeat_ms",
        U64,
        "the server pings every connection this often",
    ),
    spec(
        "delivery",
        "pong_timeout_ms",
        U64,
        "a connection that does not answer a ping within this is closed 4003",
    ),
    ext(
        "delivery",
        "shard_queue_capacity",
        USIZE,
        "bounded queue from the router to each shard, in publications",
    ),
    spec(
        "history",
        "size",
        USIZE,
        "publications retained for `since` replay",
    ),
    spec(
        "history",
        "ttl_ms",
        U64,
        "how long a publication stays replayable",
    ),
    spec(
        "live_query",
        "cap",
        USIZE,
        "most entities a live query tracks",
    ),
    spec(
        "live_query",
        "page",
        USIZE,
        "entities per liveQueryData page",
    ),
    spec(
        "services",
        "ack_timeout_ms",
        U64,
        "a task not completed or failed within this is redelivered",
    ),
    spec(
        "services",
        "max_attempts",
        U32,
        "deliveries of a task before it becomes a dead letter",
    ),
    spec(
        "services",
        "prefetch",
        USIZE,
        "tasks in flight per service instance",
    ),
    spec(
        "channels",
        "backlog",
        USIZE,
        "events a channel keeps while no socket is attached (oldest dropped)",
    ),
    spec(
        "channels",
        "max_per_user",
        USIZE,
        "channels one user may own at once (admins are not limited)",
    ),
    spec(
        "limits",
        "max_message_bytes",
        USIZE,
        "largest WebSocket message accepted (close 1009 beyond)",
    ),
    spec(
        "limits",
        "max_subscriptions",
        USIZE,
        "subscriptions per connection",
    ),
    spec(
        "limits",
        "max_live_queries",
        USIZE,
        "live queries per connection",
    ),
    spec(
        "limits",
        "commands_per_sec",
        U32,
        "a user connection's command rate (RATE_LIMITED beyond)",
    ),
    spec(
        "limits",
        "commands_burst",
        U32,
        "commands a user connection may send at once before the rate applies",
    ),
    spec(
        "limits",
        "max_connections",
        USIZE,
        "WebSocket connections per node (close 1013 beyond)",
    ),
    ext(
        "limits",
        "max_http_body_bytes",
        USIZE,
        "largest REST request body (413 beyond)",
    ),
    ext(
        "limits",
        "max_publish_batch",
        USIZE,
        "most events in one POST /api/v1/publish",
    ),
    spec(
        "limits",
        "request_timeout_ms",
        U64,
        "an HTTP request (or handshake) must arrive within this; idle keep-alives close after it",
    ),
    ext(
        "limits",
        "max_http_connections",
        USIZE,
        "open connections that are not WebSockets (REST, handshakes); 503 beyond",
    ),
    spec(
        "cluster",
        "redis_url",
        Kind::Str,
        "\"\": single node; \"redis://host:port\": cluster mode over that Redis (docs/CLUSTER.md)",
    ),
    spec(
        "cluster",
        "node_id",
        Kind::Str,
        "\"\": generated once and kept in data_dir; shown in logs, metrics and /healthz",
    ),
    spec(
        "testing",
        "echo_path",
        Kind::Str,
        "\"\": off; e.g. \"/echo\": a WebSocket endpoint echoing every message (conformance runs)",
    ),
    ext(
        "console",
        "enabled",
        Kind::Bool,
        "the operator console at /console (admin tokens only); false: /console is 404",
    ),
];

pub(super) const SECTIONS: &[&str] = &[
    "auth",
    "delivery",
    "history",
    "live_query",
    "services",
    "channels",
    "limits",
    "cluster",
    "testing",
    "console",
];

pub(super) fn find_key(section: &str, key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.key == key)
}

pub(super) fn full_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// A likely intended key for an unknown one: a near miss in spelling, or the same key in
/// another place (typically a top-level key written after a `[section]` header).
pub(super) fn suggest_key(section: &str, key: &str) -> Option<String> {
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

pub(super) fn suggest_section(section: &str) -> Option<String> {
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
        Kind::Bool => match value {
            Value::Boolean(_) => Ok(()),
            _ => Err(format!("expected true or false, found {}", found())),
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

pub(super) fn check_value(
    spec: &KeySpec,
    value: &Value,
    origin: &Origin,
) -> Result<(), ConfigError> {
    check_kind(spec, value).map_err(|reason| ConfigError::InvalidValue {
        key: full_name(spec.section, spec.key),
        reason,
        origin: origin.clone(),
    })
}

/// Walks the parsed file against [`KEYS`]: every key known, every value well-typed.
pub(super) fn check_table(table: &Table, origin: &Origin) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::merge;
    use crate::config::testkit::*;
    use crate::config::{Config, Framing};

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
                Kind::Bool => Value::Boolean(false),
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
        let err = load_err("[delivery]\ncompression = \"gzip\"", &[]);
        assert!(
            err.to_string()
                .contains("'delivery.compression': expected one of \"off\", \"on\""),
            "{err}"
        );
        let err = load_err("", &[("SHARDCAST_DELIVERY__COMPRESSION", "yes")]);
        assert!(err.to_string().contains("'delivery.compression'"), "{err}");
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
    fn edit_distance_basics() {
        assert_eq!(edit_distance("batch_ms", "batch_msx"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
