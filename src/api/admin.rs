//! `GET /api/v1/admin/…`: the read-only views the operator console needs beyond the rest
//! of the REST API (docs/PROTOCOL-NOTES.md, "Operator console"). Admin tokens only.
//!
//! Pure reads on the shard that took the request: the figures are the node's own metrics
//! registry (the same series `/metrics` renders, read back from its text so that the two
//! can never disagree), the configuration, and the backend's busiest paths
//! ([`crate::topk`]). Nothing here writes, and nothing reaches past the backend interface.
//!
//! - `GET /api/v1/admin/overview`: the node's health at a glance (connections by role and
//!   shard, publication and delivery totals, drops by reason, queue depths, history
//!   window, store size, uptime, version); `nodes` has one row per node: this node's, and
//!   in cluster mode the others' as they last shared them through the backend
//!   ([`node_row`], [`crate::backend::Backend::node_rows`]).
//! - `GET /api/v1/admin/subscriptions?k=`: subscriptions and shared feeds per shard (as
//!   of each shard's last upkeep, about a second old), live queries on the node (their
//!   gauge has no shard label), and the `k` (1 to 64, default 10) busiest paths published
//!   through this node.
//! - `GET /api/v1/admin/channels`: every channel with its backlog, missed and dropped
//!   counts (the services thread owns the channels and answers, through whichever
//!   backend holds them).

use serde_json::{json, Map, Value};

use crate::auth::jwt::Role;
use crate::auth::Principal;
use crate::http::{self, Request};
use crate::node::Node;

use super::{authorize, error, query, Route};

/// Routes a request under `/api/v1/admin/` (`rest`: what follows it).
pub fn route(req: &Request, node: &Node, rest: &str, close: bool) -> Route {
    let known = matches!(rest, "overview" | "subscriptions" | "channels");
    if !known {
        return error(
            404,
            "NOT_FOUND",
            "admin paths are /api/v1/admin/overview, /api/v1/admin/subscriptions and \
             /api/v1/admin/channels",
            close,
        );
    }
    if req.method != "GET" {
        return error(
            405,
            "BAD_MESSAGE",
            &format!(
                "method {} is not allowed here (allowed: GET)",
                req.method.as_str()
            ),
            close,
        );
    }
    let sub = match authorize(req, node) {
        Err(e) => return error(401, "UNAUTHORIZED", &e.to_string(), close),
        Ok(Principal::Token(c)) if c.role == Role::Admin => c.sub,
        Ok(_) => return error(403, "FORBIDDEN", "the admin API is for admin tokens", close),
    };
    if !req.query.is_empty() && rest != "subscriptions" {
        return error(
            400,
            "BAD_MESSAGE",
            &format!("GET /api/v1/admin/{rest} takes no query parameters"),
            close,
        );
    }
    let body = match rest {
        "overview" => overview(node),
        // The services thread owns the channels: it answers.
        "channels" => {
            return Route::Channels {
                caller: crate::channels::Caller { sub, admin: true },
                req: crate::channels::ChannelRequest::Stats,
            }
        }
        _ => match parse_k(&req.query) {
            Ok(k) => subscriptions(node, k),
            Err((status, code, m)) => return error(status, code, &m, close),
        },
    };
    Route::Respond(http::json_response(200, &body, close))
}

/// Busiest paths asked for when `k` is not given.
pub const DEFAULT_K: u64 = 10;

/// `?k=`: 1 to [`crate::topk::CAPACITY`], default [`DEFAULT_K`].
pub fn parse_k(q: &str) -> Result<usize, super::Refused> {
    let params = query::parse(q, &["k"])?;
    let k = params
        .number("k", 1, crate::topk::CAPACITY as u64)?
        .unwrap_or(DEFAULT_K);
    Ok(k as usize)
}

/// One series of the registry's text: name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads Prometheus text (as [`crate::metrics::render`] writes it) back into samples;
/// comment lines and lines it cannot read are skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.trim(), Vec::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"q\""` → pairs (escapes `\\`, `\"` and `\n` undone).
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c)) => v.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => v.push(c),
            }
        }
        let end = end?;
        out.push((k.trim_start_matches(',').trim().to_string(), v));
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

fn samples(node: &Node) -> Vec<Sample> {
    parse_samples(&crate::metrics::render(
        node.prometheus(),
        node.http_connections(),
    ))
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// `name`'s values summed by the value of `label`, in label order (shards in number order).
fn by_label(samples: &[Sample], name: &str, label: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let Some(v) = s.label(label) else { continue };
        match out.iter_mut().find(|(k, _)| k == v) {
            Some((_, total)) => *total += s.value,
            None => out.push((v.to_string(), s.value)),
        }
    }
    out.sort_by(|a, b| match (a.0.parse::<u64>(), b.0.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.0.cmp(&b.0),
    });
    out
}

fn n(v: f64) -> Value {
    json!(v.max(0.0).round() as u64)
}

/// Bytes of the files under `dir` (the embedded store's files; a few, so a walk is cheap),
/// or `None` where it cannot be read.
fn dir_bytes(dir: &std::path::Path, depth: usize) -> Option<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() && depth > 0 {
            total += dir_bytes(&e.path(), depth - 1).unwrap_or(0);
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Some(total)
}

/// The body of `GET /api/v1/admin/overview`.
pub fn overview(node: &Node) -> Value {
    let s = samples(node);
    let cfg = node.config();
    let shards = cfg.shard_count();
    let connections = crate::metrics::CONNECTIONS;
    let mut by_shard = Vec::with_capacity(shards);
    for shard in 0..shards {
        let id = shard.to_string();
        let mut row = Map::new();
        row.insert("shard".into(), json!(shard));
        for role in crate::metrics::ROLES {
            let v: f64 = s
                .iter()
                .filter(|x| {
                    x.name == connections
                        && x.label("shard") == Some(id.as_str())
                        && x.label("role") == Some(role)
                })
                .map(|x| x.value)
                .sum();
            row.insert(role.into(), n(v));
        }
        by_shard.push(Value::Object(row));
    }
    let by_role: Map<String, Value> = crate::metrics::ROLES
        .iter()
        .map(|role| {
            let v: f64 = s
                .iter()
                .filter(|x| x.name == connections && x.label("role") == Some(role))
                .map(|x| x.value)
                .sum();
            (role.to_string(), n(v))
        })
        .collect();
    let dropped: Map<String, Value> = by_label(&s, crate::metrics::DROPPED, "reason")
        .into_iter()
        .map(|(k, v)| (k, n(v)))
        .collect();
    let depth = by_label(&s, crate::metrics::SHARD_QUEUE_DEPTH, "shard");
    let capacity = by_label(&s, crate::metrics::SHARD_QUEUE_CAPACITY, "shard");
    let queues: Vec<Value> = depth
        .iter()
        .map(|(shard, d)| {
            let cap = capacity
                .iter()
                .find(|(k, _)| k == shard)
                .map_or(0.0, |(_, c)| *c);
            json!({"shard": shard.parse::<u64>().unwrap_or(0), "depth": n(*d), "capacity": n(cap)})
        })
        .collect();
    let cluster = !cfg.cluster.redis_url.is_empty();
    let uptime_ms = crate::time::unix_ms().saturating_sub(node.started_ms());
    let row = row_of(&s, node.node_id(), node.started_ms());
    // Cluster mode: every node's row as last shared, this node's fresh.
    let nodes = match node.backend().node_rows() {
        Some(mut rows) => {
            rows.retain(|r| r["node"] != row["node"]);
            rows.push(row);
            rows.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
            rows
        }
        None => vec![row],
    };
    json!({
        "node": node.node_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "clusterMode": cluster,
        "draining": node.is_draining(),
        "uptimeSeconds": uptime_ms / 1000,
        "at": crate::time::rfc3339_ms(crate::time::unix_ms()),
        "shards": shards,
        "connections": {
            "total": n(sum(&s, connections)),
            "byRole": by_role,
            "byShard": by_shard,
        },
        "httpConnections": node.http_connections(),
        "publications": n(sum(&s, crate::metrics::PUBLICATIONS)),
        "deliveries": n(sum(&s, crate::metrics::DELIVERIES)),
        "dropped": dropped,
        "shardQueues": queues,
        "history": {
            "publications": n(sum(&s, crate::metrics::HISTORY_PUBLICATIONS)),
            "bytes": n(sum(&s, crate::metrics::HISTORY_BYTES)),
            "size": cfg.history.size,
            "ttlMs": cfg.history.ttl_ms,
        },
        "store": {
            "bytes": dir_bytes(&cfg.data_dir, 2),
        },
        "channels": {
            "open": n(sum(&s, crate::metrics::CHANNELS)),
            "backlogEvents": n(sum(&s, crate::metrics::CHANNEL_BACKLOG)),
        },
        "services": {
            "pending": n(sum(&s, crate::metrics::SERVICE_PENDING)),
            "inFlight": n(sum(&s, crate::metrics::SERVICE_IN_FLIGHT)),
            "deadLetters": n(sum(&s, crate::metrics::SERVICE_DEAD)),
        },
        "nodes": nodes,
    })
}

/// One node's row of the overview's `nodes`.
fn row_of(s: &[Sample], node_id: &str, started_ms: u64) -> Value {
    json!({
        "node": node_id,
        "connections": n(sum(s, crate::metrics::CONNECTIONS)),
        "publications": n(sum(s, crate::metrics::PUBLICATIONS)),
        "deliveries": n(sum(s, crate::metrics::DELIVERIES)),
        "uptimeSeconds": crate::time::unix_ms().saturating_sub(started_ms) / 1000,
    })
}

/// This node's row of the overview's `nodes`, from the registry alone (no shard, no
/// request): what a cluster node shares with the others
/// ([`crate::backend::Backend::share_node_row`]).
pub fn node_row(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    node_id: &str,
    started_ms: u64,
) -> Value {
    row_of(&parse_samples(&handle.render()), node_id, started_ms)
}

/// The body of `GET /api/v1/admin/subscriptions`.
pub fn subscriptions(node: &Node, k: usize) -> Value {
    let s = samples(node);
    let shards = node.config().shard_count();
    let per = |name: &str| by_label(&s, name, "shard");
    let (subs, feeds) = (
        per(crate::metrics::SUBSCRIPTIONS),
        per(crate::metrics::FEEDS),
    );
    let at = |v: &[(String, f64)], shard: &str| {
        v.iter()
            .find(|(k, _)| k == shard)
            .map_or(json!(0), |(_, x)| n(*x))
    };
    let rows: Vec<Value> = (0..shards)
        .map(|i| {
            let id = i.to_string();
            json!({"shard": i, "subscriptions": at(&subs, &id), "feeds": at(&feeds, &id)})
        })
        .collect();
    let (top, counted) = node.backend().busiest_paths().top(k);
    let top: Vec<Value> = top
        .into_iter()
        .map(|p| json!({"path": p.path, "publications": p.count, "error": p.error}))
        .collect();
    json!({
        "shards": rows,
        "totals": {
            "subscriptions": n(sum(&s, crate::metrics::SUBSCRIPTIONS)),
            "feeds": n(sum(&s, crate::metrics::FEEDS)),
            "liveQueries": n(sum(&s, crate::metrics::LIVE_QUERIES)),
        },
        "busiestPaths": top,
        "publicationsCounted": counted,
        "tracked": crate::topk::CAPACITY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_prometheus_text() {
        let text = "# HELP x y\n# TYPE x gauge\n\
                    shardcast_connections{node=\"n1\",shard=\"1\",role=\"user\"} 3\n\
                    shardcast_connections{node=\"n1\",shard=\"0\",role=\"user\"} 2\n\
                    shardcast_publications_total{source=\"http\"} 7\n\
                    odd{a=\"q\\\"x\\\\\"} 1.5\nbroken{a=\"x} 1\nplain 4\n";
        let s = parse_samples(text);
        assert_eq!(s.len(), 5, "{s:?}");
        assert_eq!(s[0].label("shard"), Some("1"));
        assert_eq!(s[3].label("a"), Some("q\"x\\"));
        assert_eq!(sum(&s, "shardcast_connections"), 5.0);
        assert_eq!(
            by_label(&s, "shardcast_connections", "shard"),
            vec![("0".to_string(), 2.0), ("1".to_string(), 3.0)]
        );
        assert_eq!(s[4].name, "plain");
    }

    #[test]
    fn k_is_bounded_and_named() {
        assert_eq!(parse_k(""), Ok(DEFAULT_K as usize));
        assert_eq!(parse_k("k=3"), Ok(3));
        for bad in ["k=0", "k=65", "k=x", "n=1", "k=1&k=2"] {
            let (status, code, _) = parse_k(bad).unwrap_err();
            assert_eq!((status, code), (400, "BAD_MESSAGE"), "{bad}");
        }
    }
}
