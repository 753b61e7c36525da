//! REST on the shared port: routing, `POST /api/v1/publish` validation, tickets, health,
//! metrics, and the checks of a WebSocket upgrade.
//!
//! Pure functions of a request and the shared state: called by the shard that read the
//! request, on its thread. Anything that must happen elsewhere (sequencing a publish)
//! comes back as a [`Route`] for the shard to carry out. A publish batch is validated
//! whole before anything is handed to ingest: one bad item refuses the batch with 400
//! and the item's `index`.

use std::collections::BTreeMap;

use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{self, Principal};
use crate::http::{self, Request};
use crate::ingest::PublishItem;
use crate::protocol::{validate_path, ws};
use crate::server::Shared;

/// What the shard does with a request.
#[derive(Debug)]
pub enum Route {
    /// Write this response.
    Respond(Vec<u8>),
    /// Accept the WebSocket upgrade (`echo`: the conformance endpoint).
    Upgrade { echo: bool, accept: String },
    /// Hand these validated items to ingest; answer when it has sequenced them.
    Publish(Vec<PublishItem>),
}

fn error(status: u16, code: &str, message: &str, close: bool) -> Route {
    Route::Respond(http::error_response(status, code, message, None, close))
}

/// Routes one request.
pub fn route(req: &Request, shared: &Shared, close: bool) -> Route {
    let cfg = &shared.config;
    let path = req.path.as_str();
    let method = req.method.as_str();
    let echo_path = cfg.testing.echo_path.as_str();
    match (method, path) {
        ("GET", "/healthz") => Route::Respond(http::json_response(200, &json!({"status": "ok"}), close)),
        ("GET", "/readyz") => {
            if shared.is_draining() {
                Route::Respond(http::json_response(503, &json!({"status": "draining"}), close))
            } else {
                Route::Respond(http::json_response(200, &json!({"status": "ready"}), close))
            }
        }
        ("GET", "/metrics") => {
            let text = crate::metrics::render(&shared.prometheus);
            Route::Respond(http::response(200, "text/plain; version=0.0.4", text.as_bytes(), close))
        }
        ("GET", "/ws") => upgrade(req, false, close),
        ("GET", p) if !echo_path.is_empty() && p == echo_path => upgrade(req, true, close),
        ("POST", "/api/v1/publish") => publish(req, shared, close),
        ("POST", "/api/v1/ws-tickets") => ticket(req, shared, close),
        (_, "/healthz" | "/readyz" | "/metrics" | "/ws" | "/api/v1/publish" | "/api/v1/ws-tickets") => error(
            405,
            "BAD_MESSAGE",
            &format!("method {method} is not allowed on {path}"),
            close,
        ),
        (_, p) if p.starts_with("/channels/")
            || p.starts_with("/api/v1/realtime-subscriptions")
            || p.starts_with("/api/v1/entities")
            || p.starts_with("/api/v1/services") =>
        {
            error(
                501,
                "NOT_FOUND",
                &format!("{path}: channels, entities and services are not implemented in this server version"),
                close,
            )
        }
        _ => error(404, "NOT_FOUND", &format!("no resource at {method} {path}"), close),
    }
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
    }
}

fn authorize(req: &Request, shared: &Shared) -> Result<Principal, auth::AuthError> {
    let cfg = &shared.config.auth;
    let r = auth::authorize(
        req.header("authorization"),
        &cfg.api_keys,
        cfg.jwt_secret.as_bytes(),
        crate::time::unix_secs(),
    );
    if let Err(e) = &r {
        crate::metrics::auth_failure(e.reason());
    }
    r
}

fn publish(req: &Request, shared: &Shared, close: bool) -> Route {
    let principal = match authorize(req, shared) {
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
    match parse_publish(&req.body, shared.config.limits.max_publish_batch) {
        Ok(items) => Route::Publish(items),
        Err(e) => Route::Respond(http::error_response(
            400, e.code, &e.message, e.index, close,
        )),
    }
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

type RawObject = BTreeMap<String, Box<RawValue>>;

/// Parses and validates a publish body: one publication
/// `{"path","eventType","data"}` or a batch `{"events":[…]}` of at most `max_batch`.
/// `data` is kept as the publisher's JSON text, never re-serialized.
pub fn parse_publish(body: &[u8], max_batch: usize) -> Result<Vec<PublishItem>, PublishError> {
    let top: RawObject = serde_json::from_slice(body).map_err(|e| {
        perr(
            "BAD_MESSAGE",
            format!("body must be a JSON object: {e}"),
            None,
        )
    })?;
    let Some(events) = top.get("events") else {
        return Ok(vec![parse_item(top, None)?]);
    };
    if let Some(k) = top.keys().find(|k| *k != "events") {
        return Err(perr(
            "BAD_MESSAGE",
            format!("a batch body has only 'events'; unexpected '{k}'"),
            None,
        ));
    }
    let items: Vec<Box<RawValue>> = serde_json::from_str(events.get()).map_err(|_| {
        perr(
            "BAD_MESSAGE",
            "'events' must be an array of publications",
            None,
        )
    })?;
    if items.is_empty() {
        return Err(perr("BAD_MESSAGE", "'events' is empty", None));
    }
    if items.len() > max_batch {
        return Err(perr(
            "LIMIT_EXCEEDED",
            format!(
                "a batch holds at most {max_batch} events, got {}",
                items.len()
            ),
            None,
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let obj: RawObject = serde_json::from_str(raw.get()).map_err(|_| {
                perr(
                    "BAD_MESSAGE",
                    format!("events[{i}] must be an object"),
                    Some(i),
                )
            })?;
            parse_item(obj, Some(i))
        })
        .collect()
}

fn parse_item(mut obj: RawObject, index: Option<usize>) -> Result<PublishItem, PublishError> {
    let at = |field: &str| match index {
        Some(i) => format!("events[{i}].{field}"),
        None => field.to_string(),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "path" | "eventType" | "data"))
    {
        return Err(perr(
            "BAD_MESSAGE",
            format!(
                "unknown field '{}' (a publication has path, eventType, data)",
                at(k)
            ),
            index,
        ));
    }
    let string = |obj: &RawObject, field: &str| -> Result<String, PublishError> {
        let raw = obj
            .get(field)
            .ok_or_else(|| perr("BAD_MESSAGE", format!("{} is required", at(field)), index))?;
        serde_json::from_str::<String>(raw.get()).map_err(|_| {
            perr(
                "BAD_MESSAGE",
                format!("{} must be a string", at(field)),
                index,
            )
        })
    };
    let path = string(&obj, "path")?;
    validate_path(&path)
        .map_err(|m| perr("INVALID_PATH", format!("{}: {m}", at("path")), index))?;
    let event_type = string(&obj, "eventType")?;
    if event_type.is_empty() || event_type.len() > 256 {
        return Err(perr(
            "BAD_MESSAGE",
            format!("{} must be 1 to 256 bytes", at("eventType")),
            index,
        ));
    }
    let data = match obj.remove("data") {
        Some(d) => d,
        None => {
            RawValue::from_string("null".into()).map_err(|_| perr("INTERNAL", "null", index))?
        }
    };
    Ok(PublishItem {
        path,
        event_type,
        data,
    })
}

fn ticket(req: &Request, shared: &Shared, close: bool) -> Route {
    let claims = match authorize(req, shared) {
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
    let now = crate::time::unix_ms();
    let (uuid, expires) = shared
        .tickets
        .issue(claims, now, shared.config.auth.ticket_ttl_ms);
    Route::Respond(http::json_response(
        201,
        &json!({"uuid": uuid, "expiresAt": crate::time::rfc3339_ms(expires)}),
        close,
    ))
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
        assert!(e.message.contains("'dat'"));
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
    }
}
