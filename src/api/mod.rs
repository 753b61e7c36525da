//! REST on the shared port: routing, `POST /api/v1/publish` validation, tickets, health,
//! metrics, and the checks of a WebSocket upgrade.
//!
//! Pure functions of a request and the shared state: called by the shard that read the
//! request, on its thread. Anything that must happen elsewhere (sequencing a publish)
//! comes back as a [`Route`] for the shard to carry out. A publish batch is validated
//! whole before anything is handed to ingest: one bad item refuses the batch with 400
//! and the item's `index` (403 for an item on a `$` path: those are the server's).

mod admin;
mod channels;
mod entities;
mod query;
mod services;

// The pure parsers behind the routes of those modules (bytes or a query string in, a typed
// value or a [`Refused`] out; no `Request`, no `Node`): the routes call them, and so do the
// fuzz targets and tests/robustness.rs, which is why they are public.
pub use admin::{node_row, parse_samples, Sample};
pub use channels::{parse_create as parse_channel_create, parse_list as parse_channel_list};
pub use entities::{parse_entity_body, parse_entity_list, EntityListQuery, MAX_BODY_DEPTH};
pub use services::{parse_dead_letters_query, DeadLettersQuery};

/// A REST refusal: HTTP status, error code, message naming the problem (and the field).
pub type Refused = (u16, &'static str, String);

use std::borrow::Cow;

use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{self, Principal};
use crate::http::{self, Request};
use crate::ingest::PublishItem;
use crate::node::Node;
use crate::protocol::{validate_path, ws};

/// What the shard does with a request.
#[derive(Debug)]
pub enum Route {
    /// Write this response.
    Respond(Vec<u8>),
    /// Accept the WebSocket upgrade (`echo`: the conformance endpoint; `channel`: a
    /// REST-created channel's socket, `/channels/{id}`).
    Upgrade {
        echo: bool,
        accept: String,
        channel: Option<String>,
    },
    /// Hand these validated items to ingest; answer when it has sequenced them.
    Publish(Vec<PublishItem>),
    /// A publish body above [`PUBLISH_OFF_SHARD_BYTES`], from a caller allowed to
    /// publish: the request's body is parsed, checked and sequenced off the shard
    /// ([`publish_body`] on a [`crate::offload`] thread), so that a batch of
    /// `limits.max_publish_batch` events does not hold the shard's loop (issue 21).
    PublishOffShard,
    /// Run this entity read against the replica, at once or (cluster mode) once the
    /// replica reflects every write answered before it.
    EntityRead(crate::entities::EntityRead),
    /// Issue a WebSocket ticket for these claims through the backend; it answers.
    Ticket(crate::auth::jwt::Claims),
    /// Hand this checked entity write to the backend; answer when it is durable.
    EntityWrite(crate::entities::EntityWrite),
    /// Ask the services thread (operator REST); it answers.
    Services(crate::services::OpsRequest),
    /// A channels REST request for the services thread, which owns the channels.
    Channels {
        caller: crate::channels::Caller,
        req: crate::channels::ChannelRequest,
    },
}

fn error(status: u16, code: &str, message: &str, close: bool) -> Route {
    Route::Respond(http::error_response(status, code, message, None, close))
}

/// Routes one request.
pub fn route(req: &Request, node: &Node, close: bool) -> Route {
    let cfg = node.config();
    let path = req.path.as_str();
    let method = req.method.as_str();
    let echo_path = cfg.testing.echo_path.as_str();
    match (method, path) {
        ("GET", "/healthz") => {
            Route::Respond(http::json_response(
                200,
                &json!({"status": "ok", "node": node.node_id()}),
                close,
            ))
        }
        ("GET", "/readyz") => {
            if node.is_draining() {
                Route::Respond(http::json_response(
                    503,
                    &json!({"status": "draining"}),
                    close,
                ))
            } else if !node.backend().ready() {
                Route::Respond(http::json_response(
                    503,
                    &json!({"status": "backend unavailable"}),
                    close,
                ))
            } else {
                Route::Respond(http::json_response(200, &json!({"status": "ready"}), close))
            }
        }
        ("GET", "/metrics") => {
            let text = crate::metrics::render(node.prometheus(), node.http_connections());
            Route::Respond(http::response(
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                close,
            ))
        }
        ("GET", "/ws") => upgrade(req, false, close),
        ("GET", p) if !echo_path.is_empty() && p == echo_path => upgrade(req, true, close),
        ("POST", "/api/v1/publish") => publish(req, node, close),
        ("POST", "/api/v1/ws-tickets") => ticket(req, node, close),
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/ws" | "/api/v1/publish" | "/api/v1/ws-tickets",
        ) => error(
            405,
            "BAD_MESSAGE",
            &format!("method {method} is not allowed on {path}"),
            close,
        ),
        (_, p) if p.starts_with("/api/v1/entities/") => {
            entities::route(req, node, &p["/api/v1/entities/".len()..], close)
        }
        (_, p) if p.starts_with("/api/v1/admin/") => {
            admin::route(req, node, &p["/api/v1/admin/".len()..], close)
        }
        (_, p) if p == "/console" || p.starts_with("/console/") => {
            crate::console::route(req, node, close)
        }
        (_, "/api/v1/services") => services::route(req, node, "", close),
        (_, p) if p.starts_with("/api/v1/services/") => {
            services::route(req, node, &p["/api/v1/services/".len()..], close)
        }
        ("GET", p) if p.starts_with("/channels/") => {
            let id = crate::http::percent_decode(&p["/channels/".len()..]);
            match upgrade(req, false, close) {
                Route::Upgrade { echo, accept, .. } => Route::Upgrade {
                    echo,
                    accept,
                    channel: Some(id),
                },
                other => other,
            }
        }
        (_, p) if p.starts_with("/channels/") => error(
            405,
            "BAD_MESSAGE",
            &format!("method {method} is not allowed on {path} (a channel socket: GET with a WebSocket upgrade)"),
            close,
        ),
        (_, p) if p == "/api/v1/realtime-subscriptions" || p.starts_with("/api/v1/realtime-subscriptions/") => {
            channels::route(req, node, &p["/api/v1/realtime-subscriptions".len()..], close)
        }
        _ => error(
            404,
            "NOT_FOUND",
            &format!("no resource at {method} {path}"),
            close,
        ),
    }
}

/// The methods a path under `/api/v1/` takes (a CORS preflight's answer), or `None`
/// for a path that is not a resource.
pub fn api_methods(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/api/v1/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    Some(match segs.as_slice() {
        ["publish"] | ["ws-tickets"] => "POST",
        ["entities", _] => "GET",
        ["entities", _, _] => "GET, PUT, PATCH, DELETE",
        ["services"] => "GET",
        ["admin", "overview" | "subscriptions" | "channels"] => "GET",
        ["services", _, "dead-letters"] => "GET, DELETE",
        ["services", _, "dead-letters", "replay"] => "POST",
        ["realtime-subscriptions"] | ["realtime-subscriptions", ""] => "GET, POST",
        ["realtime-subscriptions", "organisation" | "user"] => "POST",
        ["realtime-subscriptions", _] => "GET, DELETE",
        ["realtime-subscriptions", _, "reconnect"] => "PUT",
        _ => return None,
    })
}

/// What the `Origin` of a request means (PROTOCOL.md §11): `Err` is the answer (403 for
/// a disallowed origin; a preflight's 204), `Ok(Some(origin))` the origin to name in the
/// answer's CORS headers.
pub fn check_origin(req: &Request, node: &Node, close: bool) -> Result<Option<String>, Vec<u8>> {
    let path = req.path.as_str();
    let api = path.starts_with("/api/v1/");
    let preflight = api && req.method == "OPTIONS";
    let Some(origin) = req.header("origin").map(str::trim) else {
        if preflight {
            // Not a browser's preflight: say what the path takes.
            let methods = api_methods(path).unwrap_or("");
            return Err(http::response_with(
                204,
                &[("Allow", methods)],
                "",
                b"",
                close,
            ));
        }
        return Ok(None);
    };
    let allowed = node.origins().allows(origin);
    let upgrade_path = path == "/ws"
        || path.starts_with("/channels/")
        || (!node.config().testing.echo_path.is_empty() && path == node.config().testing.echo_path);
    if !allowed {
        if upgrade_path || api {
            if upgrade_path {
                auth::failures::refused("origin", || (path, req.peer));
            }
            let m = format!(
                "origin '{}' is not allowed (auth.allowed_origins)",
                crate::protocol::truncate(origin, 200)
            );
            // No CORS headers: the page cannot read the answer, and no preflight passes.
            return Err(http::error_response(403, "FORBIDDEN", &m, None, close));
        }
        return Ok(None);
    }
    if !api {
        return Ok(None);
    }
    if preflight {
        let Some(methods) = api_methods(path) else {
            return Err(with_cors(
                http::error_response(
                    404,
                    "NOT_FOUND",
                    &format!("no resource at {path}"),
                    None,
                    close,
                ),
                origin,
            ));
        };
        return Err(http::response_with(
            204,
            &[
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin"),
                ("Access-Control-Allow-Methods", methods),
                (
                    "Access-Control-Allow-Headers",
                    "Authorization, Content-Type",
                ),
                ("Access-Control-Max-Age", "600"),
            ],
            "",
            b"",
            close,
        ));
    }
    Ok(Some(origin.to_string()))
}

/// Adds `Access-Control-Allow-Origin: origin` and `Vary: Origin` to a response.
pub fn with_cors(mut response: Vec<u8>, origin: &str) -> Vec<u8> {
    let Some(end) = response.windows(2).position(|w| w == b"\r\n") else {
        return response;
    };
    let headers = format!("\r\nAccess-Control-Allow-Origin: {origin}\r\nVary: Origin");
    response.splice(end..end, headers.into_bytes());
    response
}

/// Checks an upgrade request (RFC 6455 §4.2.1).
fn upgrade(req: &Request, echo: bool, close: bool) -> Route {
    if !req.header_has("upgrade", "websocket") || !req.header_has("connection", "upgrade") {
        return error(
            426,
            "BAD_MESSAGE",
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade",
            close,
        );
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        let mut r = http::error_response(
            426,
            "BAD_MESSAGE",
            "Sec-WebSocket-Version must be 13",
            None,
            close,
        );
        // Tell the client which version to retry with.
        let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        r.splice(at..at, b"\r\nSec-WebSocket-Version: 13".iter().copied());
        return Route::Respond(r);
    }
    use base64::Engine;
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    let valid = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !valid {
        return error(
            400,
            "BAD_MESSAGE",
            "Sec-WebSocket-Key must be 16 bytes in base64",
            close,
        );
    }
    Route::Upgrade {
        echo,
        accept: ws::accept_key(key),
        channel: None,
    }
}

fn authorize(req: &Request, node: &Node) -> Result<Principal, auth::AuthError> {
    let cfg = &node.config().auth;
    let r = auth::authorize(
        req.header("authorization"),
        &cfg.api_keys,
        node.keys(),
        crate::time::unix_secs(),
    );
    if let Err(e) = &r {
        auth::failures::refused(e.reason(), || (&req.path, req.peer));
    }
    r
}

fn publish(req: &Request, node: &Node, close: bool) -> Route {
    let principal = match authorize(req, node) {
        Ok(p) => p,
        Err(e) => return error(401, "UNAUTHORIZED", &e.to_string(), close),
    };
    if !principal.may_publish() {
        return error(
            403,
            "FORBIDDEN",
            "only api keys, admin and service tokens may publish",
            close,
        );
    }
    if req.body.len() > PUBLISH_OFF_SHARD_BYTES {
        return Route::PublishOffShard;
    }
    match publish_body(&req.body, node.config().limits.max_publish_batch) {
        Ok(items) => Route::Publish(items),
        Err((status, body)) => Route::Respond(http::json_response(status, &body, close)),
    }
}

/// Publish bodies larger than this are taken off the shard ([`Route::PublishOffShard`]).
/// Parsing, checking and sequencing cost about 1.2 µs per 200-byte event on the
/// machine of docs/PERFORMANCE.md ("No shard stalls"): 64 KiB is ~0.4 ms, well inside the
/// 5 ms a turn may take, and a single publication (the common case, latency-bound)
/// never pays for the hop.
pub const PUBLISH_OFF_SHARD_BYTES: usize = 64 * 1024;

/// A publish body's items, checked (well formed, within `max_batch`, no `$` path), or
/// the refusal to answer with: its status and `{"error":{…}}` body. Runs on a shard or
/// an offload thread.
pub fn publish_body(
    body: &[u8],
    max_batch: usize,
) -> Result<Vec<PublishItem>, (u16, serde_json::Value)> {
    parse_publish(body, max_batch)
        .and_then(|items| refuse_system_paths(&items, body).map(|()| items))
        .map_err(|e| {
            let status = if e.code == "FORBIDDEN" { 403 } else { 400 };
            (status, http::error_body(e.code, &e.message, e.index))
        })
}

/// `$` paths are the server's (PROTOCOL.md §4): a publish that names one, by REST or a
/// socket's `publish`, from anyone, is `FORBIDDEN`; in a batch the first such item is
/// named by its `index` and nothing is published. (A service's logs reach
/// `$logs/{group}` through the `log` command, which never comes here.) Kept apart from
/// [`parse_publish`], which says whether a body is well formed, not who may write what:
/// a malformed batch is 400 before this is asked. `body` is what `items` were parsed
/// from (looked at again only to tell a one-item batch, which names its `index`, from a
/// single publication, which does not).
pub fn refuse_system_paths(items: &[PublishItem], body: &[u8]) -> Result<(), PublishError> {
    let Some(i) = items
        .iter()
        .position(|it| crate::protocol::is_system_path(&it.path))
    else {
        return Ok(());
    };
    let batch = items.len() > 1
        || serde_json::from_slice::<BodyIn<'_>>(body).is_ok_and(|b| b.events.is_some());
    let index = batch.then_some(i);
    let at = match index {
        Some(i) => format!("events[{i}].path"),
        None => "path".to_string(),
    };
    Err(perr(
        "FORBIDDEN",
        format!(
            "{at} '{}' is a system path: paths starting with '$' are written by the server only",
            crate::protocol::truncate(&items[i].path, 200)
        ),
        index,
    ))
}

/// Why a publish body was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishError {
    pub code: &'static str,
    pub message: String,
    /// The offending item of a batch.
    pub index: Option<usize>,
}

fn perr(code: &'static str, message: impl Into<String>, index: Option<usize>) -> PublishError {
    PublishError {
        code,
        message: message.into(),
        index,
    }
}

/// A publish body as sent: one publication, or `events` (a batch). Items stay raw until
/// each is checked on its own, so a bad item is reported with its index.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyIn<'a> {
    #[serde(borrow, default)]
    events: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    path: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "eventType")]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// One publication. Typed and borrowed: measured against a map of raw values and against
/// simd-json in benches/hot_path.rs, this is the fastest way to validate a 10k batch
/// (docs/PERFORMANCE.md).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemIn<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow, rename = "eventType")]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// serde_json's message without its "at line 1 column 30" tail, which means nothing to
/// someone who sent a compact body.
fn serde_message(e: &serde_json::Error) -> String {
    let m = e.to_string();
    match m.rfind(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m,
    }
}

/// Parses and validates a publish body: one publication
/// `{"path","eventType","data"}` or a batch `{"events":[…]}` of at most `max_batch`.
/// `data` is kept as the publisher's JSON text, never re-serialized.
pub fn parse_publish(body: &[u8], max_batch: usize) -> Result<Vec<PublishItem>, PublishError> {
    // serde's derived structs also accept arrays (fields by position): the contract
    // says objects.
    if !starts_object(body) {
        return Err(perr(
            "BAD_MESSAGE",
            "body must be a JSON object: a publication or {\"events\":[...]}",
            None,
        ));
    }
    let top: BodyIn<'_> = serde_json::from_slice(body).map_err(|e| {
        perr(
            "BAD_MESSAGE",
            format!(
                "body must be a publication or {{\"events\":[...]}}: {}",
                serde_message(&e)
            ),
            None,
        )
    })?;
    let Some(events) = top.events else {
        let single = serde_json::from_slice::<ItemIn<'_>>(body)
            .map_err(|e| perr("BAD_MESSAGE", serde_message(&e), None))?;
        return Ok(vec![check_item(single, None)?]);
    };
    if top.path.is_some() || top.event_type.is_some() || top.data.is_some() {
        return Err(perr("BAD_MESSAGE", "a batch body has only 'events'", None));
    }
    if events.is_empty() {
        return Err(perr("BAD_MESSAGE", "'events' is empty", None));
    }
    if events.len() > max_batch {
        return Err(perr(
            "LIMIT_EXCEEDED",
            format!(
                "a batch holds at most {max_batch} events, got {}",
                events.len()
            ),
            None,
        ));
    }
    events
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            if !starts_object(raw.get().as_bytes()) {
                return Err(perr(
                    "BAD_MESSAGE",
                    format!("events[{i}] must be an object"),
                    Some(i),
                ));
            }
            let item: ItemIn<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                perr(
                    "BAD_MESSAGE",
                    format!("events[{i}]: {}", serde_message(&e)),
                    Some(i),
                )
            })?;
            check_item(item, Some(i))
        })
        .collect()
}

fn check_item(item: ItemIn<'_>, index: Option<usize>) -> Result<PublishItem, PublishError> {
    let at = |field: &str| match index {
        Some(i) => format!("events[{i}].{field}"),
        None => field.to_string(),
    };
    validate_path(&item.path)
        .map_err(|m| perr("INVALID_PATH", format!("{}: {m}", at("path")), index))?;
    if item.event_type.is_empty() || item.event_type.len() > 256 {
        return Err(perr(
            "BAD_MESSAGE",
            format!("{} must be 1 to 256 bytes", at("eventType")),
            index,
        ));
    }
    if let Some(d) = item.data {
        if json_depth(d.get()) > MAX_DATA_DEPTH {
            return Err(perr(
                "BAD_MESSAGE",
                format!("{} nests deeper than {MAX_DATA_DEPTH} levels", at("data")),
                index,
            ));
        }
    }
    let data = match item.data {
        Some(d) => d.to_owned(),
        None => RawValue::from_string("null".into())
            .map_err(|_| perr("INTERNAL", "cannot encode null", index))?,
    };
    Ok(PublishItem {
        path: item.path.into_owned(),
        event_type: item.event_type.into_owned(),
        data,
    })
}

/// Deepest `data` accepted (an entity's state too). Syntax is checked at ingest, but `data`
/// is otherwise forwarded as written, inside the messages that carry it, so what a client
/// parses is deeper than `data` itself: an `event` adds one level, a `batch` two more, a
/// `liveQueryData` node in a batch four. serde_json (and most client parsers) refuse a
/// 128th level by default, so `data` is kept 7 below that: every message that carries it
/// parses with default limits.
pub const MAX_DATA_DEPTH: usize = 120;

fn starts_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Deepest array/object nesting of a syntactically valid JSON text (a byte scan; strings
/// are skipped).
fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn ticket(req: &Request, node: &Node, close: bool) -> Route {
    let claims = match authorize(req, node) {
        Ok(Principal::Token(c)) => c,
        Ok(Principal::ApiKey) => {
            return error(
                400,
                "BAD_MESSAGE",
                "a ticket carries a token's identity: authenticate with 'Bearer <jwt>'",
                close,
            )
        }
        Err(e) => return error(401, "UNAUTHORIZED", &e.to_string(), close),
    };
    Route::Ticket(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies() {
        let one = parse_publish(
            br#"{"path":"jobs/1","eventType":"done","data":{"a": 1}}"#,
            10,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].path, "jobs/1");
        assert_eq!(one[0].data.get(), r#"{"a": 1}"#);
        let no_data = parse_publish(br#"{"path":"a","eventType":"e"}"#, 10).unwrap();
        assert_eq!(no_data[0].data.get(), "null");
        let batch = parse_publish(
            br#"{"events":[{"path":"a","eventType":"e","data":1},{"path":"b","eventType":"e","data":[2]}]}"#,
            10,
        )
        .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].data.get(), "[2]");
    }

    #[test]
    fn refusals_name_the_item_and_field() {
        let e = parse_publish(b"nope", 10).unwrap_err();
        assert_eq!((e.code, e.index), ("BAD_MESSAGE", None));
        let e = parse_publish(
            br#"{"events":[{"path":"a","eventType":"e"},{"path":"a b","eventType":"e"}]}"#,
            10,
        )
        .unwrap_err();
        assert_eq!((e.code, e.index), ("INVALID_PATH", Some(1)));
        assert!(e.message.contains("events[1].path"), "{}", e.message);
        let e = parse_publish(br#"{"events":[{"path":"a"}]}"#, 10).unwrap_err();
        assert_eq!(e.index, Some(0));
        assert!(e.message.contains("eventType"));
        let e = parse_publish(br#"{"path":"a","eventType":"e","dat":1}"#, 10).unwrap_err();
        assert!(e.message.contains("`dat`"), "{}", e.message);
        let e = parse_publish(br#"{"events":[]}"#, 10).unwrap_err();
        assert!(e.message.contains("empty"));
        let many = format!(
            "{{\"events\":[{}]}}",
            [r#"{"path":"a","eventType":"e"}"#; 3].join(",")
        );
        assert_eq!(
            parse_publish(many.as_bytes(), 2).unwrap_err().code,
            "LIMIT_EXCEEDED"
        );
        let e = parse_publish(br#"{"events":[1]}"#, 10).unwrap_err();
        assert_eq!(e.index, Some(0));
        // Arrays are not publications, at the top or as items.
        let e = parse_publish(br#"{"events":[["jobs/1","done",{"a":1}]]}"#, 10).unwrap_err();
        assert_eq!((e.code, e.index), ("BAD_MESSAGE", Some(0)));
        assert!(parse_publish(br#"[[["jobs/1","done"]]]"#, 10).is_err());
        // Nesting is bounded; strings with brackets do not count.
        let deep = format!(
            r#"{{"path":"a","eventType":"e","data":{}1{}}}"#,
            "[".repeat(129),
            "]".repeat(129)
        );
        assert!(parse_publish(deep.as_bytes(), 10)
            .unwrap_err()
            .message
            .contains("deeper"));
        let ok = r#"{"path":"a","eventType":"e","data":{"s":"[[[[\"{{"}}"#;
        assert!(parse_publish(ok.as_bytes(), 10).is_ok(), "{ok}");
    }

    #[test]
    fn system_paths_are_refused_with_the_item() {
        let check = |body: &str| {
            let items = parse_publish(body.as_bytes(), 10).unwrap();
            refuse_system_paths(&items, body.as_bytes())
        };
        assert_eq!(check(r#"{"path":"jobs/x","eventType":"e"}"#), Ok(()));
        let e = check(r#"{"path":"$logs/g1","eventType":"info"}"#).unwrap_err();
        assert_eq!((e.code, e.index), ("FORBIDDEN", None));
        assert!(e.message.contains("'$logs/g1'"), "{}", e.message);
        let e = check(
            r#"{"events":[{"path":"a","eventType":"e"},{"path":"b","eventType":"e"},{"path":"$x","eventType":"e"}]}"#,
        )
        .unwrap_err();
        assert_eq!((e.code, e.index), ("FORBIDDEN", Some(2)));
        assert!(e.message.contains("events[2].path"), "{}", e.message);
        let e = check(r#"{"events":[{"path":"$x","eventType":"e"}]}"#).unwrap_err();
        assert_eq!(e.index, Some(0));
    }
}
