//! The wire contract (PROTOCOL.md) as types: error codes, path rules, client commands,
//! and the encoding of server messages.
//!
//! Pure and thread-agnostic. The shard parses every client text message through
//! [`parse_command`]; ingest encodes each publication once through [`encode_event_tail`];
//! the shard wraps that shared tail with the per-connection `subscriptionIds` through
//! [`event_prefix`]. Nothing here re-serializes a publication's `data`.

pub mod deflate;
pub mod ws;

use serde_json::{json, Map, Value};

use crate::filter::{Filter, OrderBy};

/// Error codes of PROTOCOL.md §11, spelled as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    BadMessage,
    UnknownType,
    InvalidPath,
    InvalidFilter,
    NotFound,
    LimitExceeded,
    RateLimited,
    Internal,
    /// What the request needs is out of reach (cluster mode: Redis), or this node has not
    /// caught up with it yet; retry (PROTOCOL.md §14).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadMessage => "BAD_MESSAGE",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidPath => "INVALID_PATH",
            ErrorCode::InvalidFilter => "INVALID_FILTER",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A refusal: a code and a sentence that names the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Most segments a path may have (PROTOCOL.md §4).
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Longest path in bytes (PROTOCOL.md §4).
pub const MAX_PATH_BYTES: usize = 512;

/// Checks a publication or subscription path: segments of `[A-Za-z0-9_.:@-]+` joined by
/// `/`, at most 16 segments and 512 bytes; a leading `$` marks a system path.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path is {} bytes, more than {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    let body = path.strip_prefix('$').unwrap_or(path);
    let mut segments = 0;
    for seg in body.split('/') {
        segments += 1;
        if seg.is_empty() {
            return Err(format!("path '{path}' has an empty segment"));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')))
        {
            return Err(format!("path '{path}' has a character {c:?} not allowed in a segment (allowed: A-Z a-z 0-9 _ . : @ -)"));
        }
    }
    if segments > MAX_PATH_SEGMENTS {
        return Err(format!(
            "path '{path}' has {segments} segments, more than {MAX_PATH_SEGMENTS}"
        ));
    }
    Ok(())
}

/// Whether `path` is a system path (only admins may subscribe).
pub fn is_system_path(path: &str) -> bool {
    path.starts_with('$')
}

/// The prefixes of `path` at which a subscription can match it, longest last:
/// `jobs/550e/steps` → `jobs`, `jobs/550e`, `jobs/550e/steps`.
pub fn path_prefixes(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

/// One entry of a `subscribeEvents` message, checked for shape but not yet for
/// permission (that needs the connection's identity).
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRequest {
    pub id: String,
    pub path: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    /// The parsed `filter`, if any (PROTOCOL.md §4).
    pub filter: Option<Filter>,
    /// `since`: replay retained publications after this `seq` first (§5).
    pub since: Option<u64>,
    /// A shape problem of this entry alone: it goes to `rejected`, the others proceed.
    pub problem: Option<Refusal>,
}

/// A `createLiveQuery`, checked for shape (PROTOCOL.md §7).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveQueryRequest {
    pub id: String,
    /// The entity collection.
    pub edge: String,
    pub filter: Option<Filter>,
    pub order: OrderBy,
    /// The client's `limit`; the server caps it at `live_query.cap`.
    pub limit: Option<usize>,
}

/// A parsed client command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Auth {
        token: String,
        options: Option<Map<String, Value>>,
    },
    Ping,
    Pong,
    SubscribeEvents {
        subscriptions: Vec<SubscriptionRequest>,
    },
    UnsubscribeEvents {
        ids: Vec<String>,
    },
    CreateLiveQuery(LiveQueryRequest),
    DestroyLiveQuery {
        id: String,
    },
    /// Service commands (PROTOCOL.md §10): users get `FORBIDDEN`.
    TaskComplete {
        ids: Vec<String>,
    },
    TaskFailed {
        ids: Vec<String>,
        retry_in_ms: u64,
    },
    Lock {
        name: String,
        ttl_ms: u64,
        wait_ms: u64,
    },
    Unlock {
        name: String,
    },
    Log {
        level: &'static str,
        message: String,
        fields: Option<Map<String, Value>>,
    },
    /// `publish`: the publication's fields re-encoded as a REST publish body (checked
    /// by the same rules as `POST /api/v1/publish`).
    Publish {
        body: Vec<u8>,
    },
}

impl Command {
    /// The service commands' `type`, for their `FORBIDDEN` answer to other roles.
    pub fn service_only(&self) -> Option<&'static str> {
        Some(match self {
            Command::TaskComplete { .. } => "taskComplete",
            Command::TaskFailed { .. } => "taskFailed",
            Command::Lock { .. } => "lock",
            Command::Unlock { .. } => "unlock",
            Command::Log { .. } => "log",
            Command::Publish { .. } => "publish",
            _ => return None,
        })
    }
}

/// Most task ids one `taskComplete` or `taskFailed` may carry.
pub const MAX_TASK_IDS: usize = 10_000;
/// Longest `ttlMs`, `waitMs` and `retryInMs`: a day.
pub const MAX_LOCK_MS: u64 = 86_400_000;
/// Log levels a service may use (the eventType of its `$logs/{group}` events).
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

fn task_ids(
    obj: &Map<String, Value>,
    rid: &Option<Value>,
    typ: &str,
) -> Result<Vec<String>, ParseError> {
    let Some(Value::Array(items)) = obj.get("taskIds") else {
        return Err(bad(
            rid,
            format!("{typ} needs an array of strings 'taskIds'"),
        ));
    };
    if items.len() > MAX_TASK_IDS {
        return Err(ParseError {
            request_id: rid.clone(),
            refusal: Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{typ} carries at most {MAX_TASK_IDS} taskIds, got {}",
                    items.len()
                ),
            ),
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() && s.len() <= 1024 => Ok(s.clone()),
            _ => Err(bad(
                rid,
                format!("taskIds[{i}] must be a string of 1 to 1024 bytes"),
            )),
        })
        .collect()
}

/// An optional millisecond count in `0..=max` (`default` when absent).
fn millis(
    obj: &Map<String, Value>,
    rid: &Option<Value>,
    field: &str,
    default: Option<u64>,
    min: u64,
) -> Result<u64, ParseError> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| bad(rid, format!("'{field}' is required (milliseconds)")))
        }
        Some(v) => match v.as_u64() {
            Some(n) if (min..=MAX_LOCK_MS).contains(&n) => Ok(n),
            _ => Err(bad(
                rid,
                format!("'{field}' must be an integer from {min} to {MAX_LOCK_MS} (milliseconds)"),
            )),
        },
    }
}

fn lock_name(obj: &Map<String, Value>, rid: &Option<Value>) -> Result<String, ParseError> {
    match obj.get("name") {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 256 => Ok(n.clone()),
        _ => Err(bad(rid, "'name' must be a string of 1 to 256 bytes")),
    }
}

/// A command with the `requestId` to echo in its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub request_id: Option<Value>,
    pub command: Command,
}

/// The error for a message that could not be turned into a command; carries the
/// `requestId` when one could be read.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub request_id: Option<Value>,
    pub refusal: Refusal,
}

fn bad(request_id: &Option<Value>, msg: impl Into<String>) -> ParseError {
    ParseError {
        request_id: request_id.clone(),
        refusal: Refusal::new(ErrorCode::BadMessage, msg),
    }
}

/// Parses one client text message (already valid UTF-8).
pub fn parse_command(text: &[u8]) -> Result<Envelope, ParseError> {
    let value: Value = serde_json::from_slice(text).map_err(|e| ParseError {
        request_id: None,
        refusal: Refusal::new(ErrorCode::BadMessage, format!("message is not JSON: {e}")),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(bad(&None, "message must be a JSON object"));
    };
    let request_id = match obj.remove("requestId") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return Err(bad(&None, "requestId must be a string")),
    };
    let typ = match obj.get("type") {
        None => return Err(bad(&request_id, "message has no 'type' field")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad(&request_id, "'type' must be a string")),
    };
    let command = match typ {
        "auth" => {
            let token = match obj.get("token") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                _ => return Err(bad(&request_id, "auth needs a non-empty string 'token'")),
            };
            let options = match obj.remove("options") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => return Err(bad(&request_id, "'options' must be an object")),
            };
            Command::Auth { token, options }
        }
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        "subscribeEvents" => {
            let Some(Value::Array(items)) = obj.get("subscriptions") else {
                return Err(bad(
                    &request_id,
                    "subscribeEvents needs an array 'subscriptions'",
                ));
            };
            let mut subscriptions = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                subscriptions.push(parse_subscription(i, item).map_err(|m| bad(&request_id, m))?);
            }
            Command::SubscribeEvents { subscriptions }
        }
        "unsubscribeEvents" => {
            let Some(Value::Array(items)) = obj.get("ids") else {
                return Err(bad(
                    &request_id,
                    "unsubscribeEvents needs an array of strings 'ids'",
                ));
            };
            let mut ids = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                match v {
                    Value::String(s) => ids.push(s.clone()),
                    _ => return Err(bad(&request_id, format!("ids[{i}] must be a string"))),
                }
            }
            Command::UnsubscribeEvents { ids }
        }
        "taskComplete" => Command::TaskComplete {
            ids: task_ids(&obj, &request_id, "taskComplete")?,
        },
        "taskFailed" => Command::TaskFailed {
            ids: task_ids(&obj, &request_id, "taskFailed")?,
            retry_in_ms: millis(&obj, &request_id, "retryInMs", Some(0), 0)?,
        },
        "lock" => Command::Lock {
            name: lock_name(&obj, &request_id)?,
            ttl_ms: millis(&obj, &request_id, "ttlMs", None, 1)?,
            wait_ms: millis(&obj, &request_id, "waitMs", Some(0), 0)?,
        },
        "unlock" => Command::Unlock {
            name: lock_name(&obj, &request_id)?,
        },
        "log" => {
            let level = match obj.get("level") {
                Some(Value::String(l)) => LOG_LEVELS.iter().find(|x| **x == l.as_str()).copied(),
                None => Some("info"),
                _ => None,
            };
            let Some(level) = level else {
                return Err(bad(
                    &request_id,
                    format!("'level' must be one of {}", LOG_LEVELS.join(", ")),
                ));
            };
            let message = match obj.get("message") {
                Some(Value::String(m)) => m.clone(),
                _ => return Err(bad(&request_id, "log needs a string 'message'")),
            };
            let fields = match obj.remove("fields") {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => return Err(bad(&request_id, "'fields' must be an object")),
            };
            Command::Log {
                level,
                message,
                fields,
            }
        }
        "publish" => {
            obj.remove("type");
            Command::Publish {
                body: to_bytes(&Value::Object(obj)),
            }
        }
        "createLiveQuery" => {
            Command::CreateLiveQuery(parse_live_query(&obj).map_err(|r| ParseError {
                request_id: request_id.clone(),
                refusal: r,
            })?)
        }
        "destroyLiveQuery" => match obj.get("id") {
            Some(Value::String(id)) if !id.is_empty() => {
                Command::DestroyLiveQuery { id: id.clone() }
            }
            _ => {
                return Err(bad(
                    &request_id,
                    "destroyLiveQuery needs a non-empty string 'id'",
                ))
            }
        },
        other => {
            return Err(ParseError {
                request_id,
                refusal: Refusal::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type '{}'", truncate(other, 64)),
                ),
            })
        }
    };
    Ok(Envelope {
        request_id,
        command,
    })
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Shape of one subscription entry. A missing or non-string `id` fails the whole message
/// (a rejection must name an id); everything else is a per-entry `problem`.
fn parse_subscription(i: usize, item: &Value) -> Result<SubscriptionRequest, String> {
    let Value::Object(o) = item else {
        return Err(format!("subscriptions[{i}] must be an object"));
    };
    let id = match o.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        _ => {
            return Err(format!(
                "subscriptions[{i}].id must be a non-empty string of at most 256 bytes"
            ))
        }
    };
    let mut req = SubscriptionRequest {
        id,
        path: String::new(),
        events: Vec::new(),
        filter: None,
        since: None,
        problem: None,
    };
    let problem = |code, m: String| Some(Refusal::new(code, m));
    match o.get("path") {
        Some(Value::String(p)) => match validate_path(p) {
            Ok(()) => req.path = p.clone(),
            Err(m) => req.problem = problem(ErrorCode::InvalidPath, m),
        },
        _ => {
            req.problem = problem(ErrorCode::BadMessage, "'path' must be a string".into());
        }
    }
    match o.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(evs)) => {
            for e in evs {
                match e {
                    Value::String(s) if !s.is_empty() => req.events.push(s.clone()),
                    _ => {
                        req.problem = req.problem.take().or(problem(
                            ErrorCode::BadMessage,
                            "'events' must be an array of non-empty strings".into(),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            req.problem = req.problem.take().or(problem(
                ErrorCode::BadMessage,
                "'events' must be an array of non-empty strings".into(),
            ))
        }
    }
    match o.get("filter") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) => match Filter::parse(f) {
            Ok(f) => req.filter = Some(f),
            Err(e) => {
                req.problem = req
                    .problem
                    .take()
                    .or(problem(ErrorCode::InvalidFilter, format!("filter: {e}")))
            }
        },
        Some(_) => {
            req.problem = req.problem.take().or(problem(
                ErrorCode::BadMessage,
                "'filter' must be a string".into(),
            ))
        }
    }
    match o.get("since") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some() => req.since = n.as_u64(),
        Some(_) => {
            req.problem = req.problem.take().or(problem(
                ErrorCode::BadMessage,
                "'since' must be a non-negative whole number (a seq)".into(),
            ))
        }
    }
    Ok(req)
}

/// Shape of a `createLiveQuery`: `{"id", "query": {"edge", "filter"?, "orderBy"?, "limit"?}}`.
fn parse_live_query(obj: &Map<String, Value>) -> Result<LiveQueryRequest, Refusal> {
    let badm = |m: &str| Refusal::new(ErrorCode::BadMessage, m);
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        _ => {
            return Err(badm(
                "createLiveQuery needs an 'id': a non-empty string of at most 256 bytes",
            ))
        }
    };
    let Some(Value::Object(q)) = obj.get("query") else {
        return Err(badm(
            "createLiveQuery needs an object 'query' with an 'edge'",
        ));
    };
    for k in q.keys() {
        if !matches!(k.as_str(), "edge" | "filter" | "orderBy" | "limit") {
            return Err(badm(&format!(
                "query has an unknown field '{}' (known: edge, filter, orderBy, limit)",
                truncate(k, 64)
            )));
        }
    }
    let edge = match q.get("edge") {
        Some(Value::String(e)) if !e.is_empty() => e.clone(),
        _ => {
            return Err(badm(
                "query.edge must be a non-empty string (an entity collection)",
            ))
        }
    };
    let text = |k: &str| match q.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(badm(&format!("query.{k} must be a string"))),
    };
    let filter =
        match text("filter")? {
            None => None,
            Some(f) => Some(Filter::parse(f).map_err(|e| {
                Refusal::new(ErrorCode::InvalidFilter, format!("query.filter: {e}"))
            })?),
        };
    let order = match text("orderBy")? {
        None => OrderBy { keys: Vec::new() },
        Some(o) => OrderBy::parse(o)
            .map_err(|e| Refusal::new(ErrorCode::InvalidFilter, format!("query.orderBy: {e}")))?,
    };
    let limit = match q.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
            Some(n.as_u64().unwrap_or(1).min(usize::MAX as u64) as usize)
        }
        Some(_) => return Err(badm("query.limit must be a whole number of at least 1")),
    };
    Ok(LiveQueryRequest {
        id,
        edge,
        filter,
        order,
        limit,
    })
}

/// Serializes a server control message (not on the fan-out path).
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `{"type":"error","code":…,"message":…,"requestId":…}`.
pub fn error_message(code: ErrorCode, message: &str, request_id: Option<&Value>) -> Vec<u8> {
    let mut v = json!({"type": "error", "code": code.as_str(), "message": message});
    if let Some(r) = request_id {
        v["requestId"] = r.clone();
    }
    to_bytes(&v)
}

/// The warning that tells a client it lost `dropped` events of a subscription.
pub fn overflow_warning(subscription_id: &str, dropped: u64) -> Vec<u8> {
    to_bytes(&json!({
        "type": "warning",
        "code": "QUEUE_OVERFLOW",
        "subscriptionId": subscription_id,
        "dropped": dropped,
        "message": format!("{dropped} events dropped for subscription '{subscription_id}' due to slow consumption"),
    }))
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is the reference; strings here are short (ids, paths).
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Encodes the shared part of an `event`, everything after `subscriptionIds`:
/// `"eventType":…,"path":…,"data":…,"timestamp":"…","seq":N}`. Done once per
/// publication at ingest; `data` is the publisher's JSON text, copied as is.
pub fn encode_event_tail(
    event_type: &str,
    path: &str,
    data_json: &str,
    timestamp_ms: u64,
    seq: u64,
) -> Vec<u8> {
    let mut out = encode_event_body(event_type, path, data_json);
    finish_event_tail(&mut out, &timestamp_text(timestamp_ms), seq);
    out
}

/// A publication's `timestamp` as [`finish_event_tail`] takes it: formatted once per
/// publish request, whose publications share it.
pub fn timestamp_text(timestamp_ms: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(24);
    crate::time::write_rfc3339_ms(&mut t, timestamp_ms);
    t
}

/// The part of [`encode_event_tail`] known before sequencing:
/// `"eventType":…,"path":…,"data":…`, with room for [`finish_event_tail`]'s bytes.
pub fn encode_event_body(event_type: &str, path: &str, data_json: &str) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(TAIL_END_MAX + 32 + event_type.len() + path.len() + data_json.len());
    out.extend_from_slice(b"\"eventType\":");
    write_json_str(&mut out, event_type);
    out.extend_from_slice(b",\"path\":");
    write_json_str(&mut out, path);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data_json.as_bytes());
    out
}

/// Most bytes [`finish_event_tail`] appends: `,"timestamp":"` (14), 24 for the time,
/// `","seq":` (8), 20 digits, `}`.
const TAIL_END_MAX: usize = 14 + 24 + 8 + 20 + 1;

/// Appends what sequencing decides: `,"timestamp":"…","seq":N}` (`timestamp` from
/// [`timestamp_text`]).
pub fn finish_event_tail(out: &mut Vec<u8>, timestamp: &[u8], seq: u64) {
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(timestamp);
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(itoa_u64(seq).as_bytes());
    out.push(b'}');
}

/// The varying head of an `event`, written in front of a publication's shared tail: who
/// the message is for. JSON string literals (`ids`, already escaped) and ids as text.
#[derive(Clone, Copy, Debug)]
pub enum EventHead<'a> {
    /// A connection's subscriptions (PROTOCOL.md §6): `"subscriptionIds":[…]`.
    Subscriptions(&'a [&'a [u8]]),
    /// A REST-created channel's socket (§9): `"channelId":"…"`.
    Channel(&'a str),
    /// A service task (§10): the subscriptions, then `"taskId":"…","attempt":N`.
    Task {
        ids: &'a [&'a [u8]],
        task_id: &'a str,
        attempt: u32,
    },
}

/// Writes `{"type":"event",<head>,` so that the publication's tail completes it.
pub fn write_event_head(out: &mut Vec<u8>, head: EventHead<'_>) {
    out.extend_from_slice(b"{\"type\":\"event\",");
    let ids = |out: &mut Vec<u8>, ids: &[&[u8]]| {
        out.extend_from_slice(b"\"subscriptionIds\":[");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(id);
        }
        out.extend_from_slice(b"],");
    };
    match head {
        EventHead::Subscriptions(s) => ids(out, s),
        EventHead::Channel(c) => {
            out.extend_from_slice(b"\"channelId\":");
            write_json_str(out, c);
            out.push(b',');
        }
        EventHead::Task {
            ids: s,
            task_id,
            attempt,
        } => {
            ids(out, s);
            out.extend_from_slice(b"\"taskId\":");
            write_json_str(out, task_id);
            out.extend_from_slice(b",\"attempt\":");
            out.extend_from_slice(itoa_u64(attempt as u64).as_bytes());
            out.push(b',');
        }
    }
}

/// `{"type":"published","requestId":…,"seq":N}` (a service's `publish`, §8).
pub fn published_message(request_id: Option<&Value>, seq: u64) -> Vec<u8> {
    let mut m = serde_json::json!({"type": "published"});
    if let Some(r) = request_id {
        m["requestId"] = r.clone();
    }
    m["seq"] = seq.into();
    to_bytes(&m)
}

/// The per-connection head of an `event`: `{"type":"event","subscriptionIds":[…],`.
/// `ids` are JSON string literals, already escaped. (The fan-out's form of
/// [`write_event_head`] with [`EventHead::Subscriptions`], without collecting the ids.)
pub fn event_prefix<'a>(out: &mut Vec<u8>, ids: impl Iterator<Item = &'a [u8]>) {
    out.extend_from_slice(b"{\"type\":\"event\",\"subscriptionIds\":[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(id);
    }
    out.extend_from_slice(b"],");
}

/// `{"type":"subscriptionRefresh","subscriptionId":…,"path":…,"entityId":…,"seq":N}`
/// (`sub_json`: the id as a JSON string literal).
pub fn refresh_message(out: &mut Vec<u8>, sub_json: &[u8], path: &str, entity_id: &str, seq: u64) {
    out.extend_from_slice(b"{\"type\":\"subscriptionRefresh\",\"subscriptionId\":");
    out.extend_from_slice(sub_json);
    out.extend_from_slice(b",\"path\":");
    write_json_str(out, path);
    out.extend_from_slice(b",\"entityId\":");
    write_json_str(out, entity_id);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(itoa_u64(seq).as_bytes());
    out.push(b'}');
}

/// A page of a live query's initial result:
/// `{"type":"liveQueryData","id":…,"data":[…],"hasMore":…,"capped":…}`. The nodes are
/// written straight from the replica's values (no intermediate JSON tree).
pub fn live_query_data<'a>(
    out: &mut Vec<u8>,
    id: &str,
    nodes: impl Iterator<Item = &'a Value>,
    has_more: bool,
    capped: bool,
) {
    out.extend_from_slice(b"{\"type\":\"liveQueryData\",\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b",\"data\":[");
    for (i, n) in nodes.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, n);
    }
    out.extend_from_slice(b"],\"hasMore\":");
    out.extend_from_slice(if has_more { b"true" } else { b"false" });
    out.extend_from_slice(b",\"capped\":");
    out.extend_from_slice(if capped { b"true" } else { b"false" });
    out.push(b'}');
}

/// A live query's incremental message (PROTOCOL.md §7): `kind` is
/// `liveQueryAddedNode`, `liveQueryUpdatedNode` (both with `data`, the entity's JSON
/// text, copied as is) or `liveQueryRemovedNode` (no `data`).
pub fn live_query_node(
    out: &mut Vec<u8>,
    kind: &str,
    id: &str,
    node_id: &str,
    data: Option<&[u8]>,
) {
    out.extend_from_slice(b"{\"type\":");
    write_json_str(out, kind);
    out.extend_from_slice(b",\"id\":");
    write_json_str(out, id);
    out.extend_from_slice(b",\"nodeId\":");
    write_json_str(out, node_id);
    if let Some(d) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(d);
    }
    out.push(b'}');
}

fn itoa_u64(n: u64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["jobs", "jobs/550e", "a.b:c@d-e_f/9", "$logs/billing"] {
            assert_eq!(validate_path(ok), Ok(()), "{ok}");
        }
        for badp in ["", "jobs/", "/jobs", "jobs//x", "jo bs", "jobs/é", "a$b"] {
            assert!(validate_path(badp).is_err(), "{badp}");
        }
        let deep = vec!["a"; 17].join("/");
        assert!(validate_path(&deep).unwrap_err().contains("17 segments"));
        assert!(validate_path(&vec!["a"; 16].join("/")).is_ok());
        assert!(validate_path(&"x".repeat(513)).is_err());
        assert_eq!(
            path_prefixes("jobs/550e/steps").collect::<Vec<_>>(),
            ["jobs", "jobs/550e", "jobs/550e/steps"]
        );
        assert_eq!(path_prefixes("jobs").collect::<Vec<_>>(), ["jobs"]);
    }

    #[test]
    fn bad_messages_are_named() {
        let e = parse_command(b"not json").unwrap_err();
        assert_eq!(e.refusal.code, ErrorCode::BadMessage);
        assert!(e.refusal.message.contains("not JSON"));
        let e = parse_command(b"[1]").unwrap_err();
        assert!(e.refusal.message.contains("object"));
        let e = parse_command(br#"{"requestId":"r"}"#).unwrap_err();
        assert_eq!(e.request_id, Some(json!("r")));
        assert!(e.refusal.message.contains("'type'"));
        let e = parse_command(br#"{"type":5}"#).unwrap_err();
        assert!(e.refusal.message.contains("string"));
        let e = parse_command(br#"{"type":"nope","requestId":"q"}"#).unwrap_err();
        assert_eq!(e.refusal.code, ErrorCode::UnknownType);
        assert_eq!(e.request_id, Some(json!("q")));
        let e = parse_command(br#"{"type":"subscribeEvents","subscriptions":[{"path":"a"}]}"#)
            .unwrap_err();
        assert!(e.refusal.message.contains("subscriptions[0].id"));
    }

    #[test]
    fn subscription_entries_carry_their_own_problems() {
        let env = parse_command(
            br#"{"type":"subscribeEvents","requestId":"r","subscriptions":[
                {"id":"a","path":"jobs","events":["x"]},
                {"id":"b","path":"bad path"},
                {"id":"c","path":"jobs","filter":"x == 1"}]}"#,
        )
        .unwrap();
        let Command::SubscribeEvents { subscriptions } = env.command else {
            panic!("wrong command")
        };
        assert_eq!(subscriptions[0].problem, None);
        assert_eq!(subscriptions[0].events, ["x"]);
        assert_eq!(
            subscriptions[1].problem.as_ref().unwrap().code,
            ErrorCode::InvalidPath
        );
        assert_eq!(subscriptions[2].problem, None);
        assert!(subscriptions[2].filter.is_some());
    }

    #[test]
    fn heads_complete_the_tail() {
        let tail = encode_event_tail("done", "jobs/1", "1", 0, 7);
        for (head, want) in [
            (EventHead::Channel("ch\"1"), json!({"channelId": "ch\"1"})),
            (
                EventHead::Task {
                    ids: &[&b"\"s\""[..]],
                    task_id: "billing:7",
                    attempt: 2,
                },
                json!({"subscriptionIds": ["s"], "taskId": "billing:7", "attempt": 2}),
            ),
        ] {
            let mut msg = Vec::new();
            write_event_head(&mut msg, head);
            msg.extend_from_slice(&tail);
            let v: Value = serde_json::from_slice(&msg).unwrap();
            for (k, val) in want.as_object().unwrap() {
                assert_eq!(&v[k], val);
            }
            assert_eq!(v["seq"], 7);
        }
        let mut r = Vec::new();
        refresh_message(&mut r, b"\"denials\"", "accounts/acc_7", "acc_7", 1310);
        assert_eq!(
            serde_json::from_slice::<Value>(&r).unwrap(),
            json!({"type":"subscriptionRefresh","subscriptionId":"denials","path":"accounts/acc_7","entityId":"acc_7","seq":1310})
        );
        let mut n = Vec::new();
        live_query_node(
            &mut n,
            "liveQueryAddedNode",
            "lq",
            "o-9",
            Some(b"{\"id\":\"o-9\"}"),
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&n).unwrap(),
            json!({"type":"liveQueryAddedNode","id":"lq","nodeId":"o-9","data":{"id":"o-9"}})
        );
    }

    #[test]
    fn event_encoding_is_valid_json() {
        let tail = encode_event_tail("done", "jobs/1", r#"{"a": [1, "x"]}"#, 0, 42);
        let mut msg = Vec::new();
        event_prefix(&mut msg, [&b"\"s1\""[..], &b"\"s\\\"2\""[..]].into_iter());
        msg.extend_from_slice(&tail);
        let v: Value = serde_json::from_slice(&msg).unwrap();
        assert_eq!(
            v,
            json!({"type":"event","subscriptionIds":["s1","s\"2"],"eventType":"done",
                   "path":"jobs/1","data":{"a":[1,"x"]},"timestamp":"1970-01-01T00:00:00.000Z","seq":42})
        );
    }
}
