//! `/api/v1/entities/…` (PROTOCOL.md §8): parsing and checking entity requests, and
//! answering reads from the replica.
//!
//! Runs on the shard that read the request. A read is checked here and becomes a
//! [`Route::EntityRead`] the shard runs on the replica (under its read lock) at once, or
//! (cluster mode) the backend runs once the replica has caught up; a write is checked
//! whole here and then handed to the backend as a [`Route::EntityWrite`], to be answered
//! once it is durable. Nothing is applied
//! before every check passed, so a bad request never half-applies.

use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::entities::{
    validate_segment, Cursors, EntityRead, EntityWrite, Replica, WriteOp, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::filter::{Filter, OrderBy};
use crate::http::{percent_decode, Request};
use crate::node::Node;
use crate::protocol::{truncate, ErrorCode, Refusal};

use super::{authorize, error, query, Refused, Route, MAX_DATA_DEPTH};

/// Query parameters a list takes.
const LIST_PARAMS: &[&str] = &["filter", "orderBy", "limit", "cursor"];

fn refuse(status: u16, r: Refusal, close: bool) -> Route {
    error(status, r.code.as_str(), &r.message, close)
}

/// Routes a request under `/api/v1/entities/` (`rest` is what follows that prefix).
pub fn route(req: &Request, node: &Node, rest: &str, close: bool) -> Route {
    let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
    let method = req.method.as_str();
    let (collection, id) = match segments.as_slice() {
        [c] => (c.as_str(), None),
        [c, id] => (c.as_str(), Some(id.as_str())),
        _ => return error(
            404,
            "NOT_FOUND",
            "entity paths are /api/v1/entities/{collection} and /api/v1/entities/{collection}/{id}",
            close,
        ),
    };
    let allowed = match id {
        None => "GET",
        Some(_) => "GET, PUT, PATCH, DELETE",
    };
    if !allowed.split(", ").any(|m| m == method) {
        return error(
            405,
            "BAD_MESSAGE",
            &format!("method {method} is not allowed here (allowed: {allowed})"),
            close,
        );
    }
    if let Err(r) = validate_segment("collection", collection) {
        return refuse(400, r, close);
    }
    if let Some(id) = id {
        if let Err(r) = validate_segment("entity id", id) {
            return refuse(400, r, close);
        }
    }
    let principal = match authorize(req, node) {
        Ok(p) => p,
        Err(e) => return error(401, "UNAUTHORIZED", &e.to_string(), close),
    };
    let write = method != "GET";
    let may = if write {
        principal.may_publish()
    } else {
        match &principal {
            Principal::ApiKey => true,
            Principal::Token(c) => principal.may_publish() || c.scopes.allows(collection),
        }
    };
    if !may {
        let m = if write {
            "only api keys, admin and service tokens may write entities".to_string()
        } else {
            format!("collection '{collection}' is outside the token's scopes")
        };
        return error(403, "FORBIDDEN", &m, close);
    }
    match (method, id) {
        ("GET", None) => list(req, node, collection, close),
        ("GET", Some(id)) => {
            let (collection, id) = (collection.to_string(), id.to_string());
            Route::EntityRead(EntityRead::new(move |replica: &Replica| {
                match replica.get(&collection, &id) {
                    Some(state) => (200, serde_json::to_vec(&*state).unwrap_or_default()),
                    None => {
                        let r = Refusal::new(
                            ErrorCode::NotFound,
                            format!("no entity '{id}' in collection '{collection}'"),
                        );
                        let body =
                            json!({"error": {"code": r.code.as_str(), "message": r.message}});
                        (404, serde_json::to_vec(&body).unwrap_or_default())
                    }
                }
            }))
        }
        (_, Some(id)) => {
            let op = match method {
                "DELETE" => WriteOp::Delete,
                _ => match parse_entity_body(&req.body, id, method == "PATCH") {
                    Ok(m) if method == "PUT" => WriteOp::Put(m),
                    Ok(m) => WriteOp::Patch(m),
                    Err((status, code, m)) => return error(status, code, &m, close),
                },
            };
            Route::EntityWrite(EntityWrite {
                collection: collection.to_string(),
                id: id.to_string(),
                op,
            })
        }
        _ => error(405, "BAD_MESSAGE", "method not allowed", close),
    }
}

/// Deepest PUT or PATCH body accepted, the object itself counted: an entity's state is the
/// `data` of its events and its live-query node, so the limit is publish `data`'s. (It is
/// also below serde_json's recursion limit, so a deeper body is refused as too deep rather
/// than as "not JSON".)
pub const MAX_BODY_DEPTH: usize = MAX_DATA_DEPTH;

/// A PUT or PATCH body: a JSON object (UTF-8, nested at most [`MAX_BODY_DEPTH`] levels)
/// whose `id`, if any, is the path's `id` (a string). Refusals are 400 `BAD_MESSAGE`.
pub fn parse_entity_body(
    body: &[u8],
    id: &str,
    patch: bool,
) -> Result<Map<String, Value>, Refused> {
    let what = if patch {
        "a PATCH body (a JSON merge patch)"
    } else {
        "a PUT body (the entity's whole state)"
    };
    let bad = |m: String| (400, "BAD_MESSAGE", m);
    let text = std::str::from_utf8(body).map_err(|_| bad(format!("{what} must be UTF-8 JSON")))?;
    if super::json_depth(text) > MAX_BODY_DEPTH {
        return Err(bad(format!(
            "{what} nests deeper than {MAX_BODY_DEPTH} levels"
        )));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("{what} is not JSON: {}", super::serde_message(&e))))?;
    let Value::Object(m) = v else {
        return Err(bad(format!("{what} must be a JSON object")));
    };
    match m.get("id") {
        None => {}
        Some(Value::String(s)) if s == id => {}
        Some(other) => {
            return Err(bad(format!(
                "the body's id ({}) differs from the path's id '{id}'",
                truncate(&other.to_string(), 64)
            )))
        }
    }
    Ok(m)
}

/// A checked list query: `GET /api/v1/entities/{collection}?filter=&orderBy=&limit=&cursor=`.
#[derive(Debug, PartialEq)]
pub struct EntityListQuery {
    /// `None`: absent or blank.
    pub filter: Option<Filter>,
    /// No keys: absent or blank (the replica orders by `id`).
    pub order: OrderBy,
    pub limit: usize,
    /// Where the cursor says the previous page ended: this page starts strictly after it.
    pub after: Option<Value>,
    /// The query's canonical text (collection, filter, orderBy): what a cursor is bound
    /// to, so a cursor of another query is refused.
    pub query: String,
}

/// Parses and checks a list's query string under the one rule of [`super::query`] (each
/// parameter at most once, numbers in plain digits). `cursors` checks the `cursor`: one
/// this node issued for the same collection, filter and orderBy. Refusals are 400:
/// `INVALID_FILTER` for `filter` and `orderBy` (with the byte offset), `BAD_MESSAGE`
/// otherwise, each message naming the parameter.
pub fn parse_entity_list(
    collection: &str,
    query: &str,
    cursors: &Cursors,
) -> Result<EntityListQuery, Refused> {
    let params = query::parse(query, LIST_PARAMS)?;
    let filter = match params.get("filter").filter(|f| !f.trim().is_empty()) {
        None => None,
        Some(f) => match Filter::parse(f) {
            Ok(f) => Some(f),
            Err(e) => return Err((400, "INVALID_FILTER", format!("filter: {e}"))),
        },
    };
    let order = match params.get("orderBy").filter(|o| !o.trim().is_empty()) {
        None => OrderBy { keys: Vec::new() },
        Some(o) => match OrderBy::parse(o) {
            Ok(o) => o,
            Err(e) => return Err((400, "INVALID_FILTER", format!("orderBy: {e}"))),
        },
    };
    let limit = params
        .number("limit", 1, MAX_LIMIT as u64)?
        .map_or(DEFAULT_LIMIT, |n| n as usize);
    let query_text = format!(
        "{}|{}|{}",
        collection,
        filter.as_ref().map(|f| f.to_string()).unwrap_or_default(),
        order
    );
    let after = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match cursors.decode(&query_text, c) {
            Ok(pos) => Some(pos),
            Err(m) => return Err((400, "BAD_MESSAGE", format!("cursor: {m}"))),
        },
    };
    Ok(EntityListQuery {
        filter,
        order,
        limit,
        after,
        query: query_text,
    })
}

/// `GET /api/v1/entities/{collection}?filter=&orderBy=&limit=&cursor=`.
fn list(req: &Request, node: &Node, collection: &str, close: bool) -> Route {
    let q = match parse_entity_list(collection, &req.query, node.cursors()) {
        Ok(q) => q,
        Err((status, code, m)) => return error(status, code, &m, close),
    };
    let cursors = node.cursors().clone();
    let collection = collection.to_string();
    Route::EntityRead(EntityRead::list(move |replica: &Replica| {
        list_page(replica, &cursors, &collection, q)
    }))
}

/// A list's page, from `replica`.
fn list_page(
    replica: &Replica,
    cursors: &Cursors,
    collection: &str,
    q: EntityListQuery,
) -> (u16, Vec<u8>) {
    let (page, _seq) = replica.query(
        collection,
        q.filter.as_ref(),
        &q.order,
        q.after.as_ref(),
        q.limit,
    );
    let next = match (page.more, page.data.last()) {
        (true, Some(last)) => Value::String(cursors.encode(&q.query, &q.order, last)),
        _ => Value::Null,
    };
    // Written straight from the replica's values: no intermediate JSON tree of a page.
    let mut body = Vec::with_capacity(64 + page.data.len() * 128);
    body.extend_from_slice(b"{\"data\":[");
    for (i, v) in page.data.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let _ = serde_json::to_writer(&mut body, &**v);
    }
    body.extend_from_slice(b"],\"totalCount\":");
    body.extend_from_slice(page.total.to_string().as_bytes());
    body.extend_from_slice(b",\"nextCursor\":");
    let _ = serde_json::to_writer(&mut body, &next);
    body.push(b'}');
    (200, body)
}
