//! `/api/v1/services…` (PROTOCOL.md §10, operator REST): groups and their dead letters.
//!
//! Runs on the shard that read the request: checks the caller (an api key or an admin
//! token) and the request's shape, then hands an [`OpsRequest`] to the services thread,
//! which owns the queues and answers through the shard's mailbox.

use crate::auth::jwt::Role;
use crate::auth::Principal;
use crate::entities::{validate_segment, DEFAULT_LIMIT, MAX_LIMIT};
use crate::http::{percent_decode, Request};
use crate::node::Node;
use crate::services::OpsRequest;

use super::{authorize, error, query, Refused, Route};

/// Routes a request under `/api/v1/services` (`rest`: what follows, without the `/`).
pub fn route(req: &Request, node: &Node, rest: &str, close: bool) -> Route {
    let segments: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').map(percent_decode).collect()
    };
    let method = req.method.as_str();
    let (allowed, group) =
        match segments.as_slice() {
            [] => ("GET", None),
            [g, d] if d == "dead-letters" => ("GET, DELETE", Some(g.as_str())),
            [g, d, r] if d == "dead-letters" && r == "replay" => ("POST", Some(g.as_str())),
            _ => return error(
                404,
                "NOT_FOUND",
                "service paths are /api/v1/services, /api/v1/services/{group}/dead-letters and \
                 /api/v1/services/{group}/dead-letters/replay",
                close,
            ),
        };
    if !allowed.split(", ").any(|m| m == method) {
        return error(
            405,
            "BAD_MESSAGE",
            &format!("method {method} is not allowed here (allowed: {allowed})"),
            close,
        );
    }
    match authorize(req, node) {
        Err(e) => return error(401, "UNAUTHORIZED", &e.to_string(), close),
        Ok(Principal::ApiKey) => {}
        Ok(Principal::Token(c)) if c.role == Role::Admin => {}
        Ok(Principal::Token(_)) => {
            return error(
                403,
                "FORBIDDEN",
                "the services API is for api keys and admin tokens",
                close,
            )
        }
    }
    let Some(group) = group else {
        if !req.query.is_empty() {
            return error(
                400,
                "BAD_MESSAGE",
                "GET /api/v1/services takes no query parameters",
                close,
            );
        }
        return Route::Services(OpsRequest::Groups);
    };
    if let Err(r) = validate_segment("service group", group) {
        return error(400, r.code.as_str(), &r.message, close);
    }
    let group = group.to_string();
    match method {
        "GET" => match parse_dead_letters_query(&req.query) {
            Ok(DeadLettersQuery { limit, cursor }) => Route::Services(OpsRequest::DeadLetters {
                group,
                limit,
                cursor,
            }),
            Err((status, code, m)) => error(status, code, &m, close),
        },
        "POST" => Route::Services(OpsRequest::Replay { group }),
        _ => Route::Services(OpsRequest::Purge { group }),
    }
}

/// A checked dead-letter page request: `?limit=&cursor=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLettersQuery {
    /// 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub limit: usize,
    /// An earlier page's `nextCursor`: the page starts there.
    pub cursor: Option<u64>,
}

/// Parses the query string of `GET /api/v1/services/{group}/dead-letters` under the one
/// rule of [`super::query`] (each parameter at most once, numbers in plain digits).
/// Refusals are 400 `BAD_MESSAGE` naming the parameter.
pub fn parse_dead_letters_query(query: &str) -> Result<DeadLettersQuery, Refused> {
    let params = query::parse(query, &["limit", "cursor"])?;
    let limit = params
        .number("limit", 1, MAX_LIMIT as u64)?
        .map_or(DEFAULT_LIMIT, |n| n as usize);
    // A cursor is an earlier page's `nextCursor`, a `seq`: any u64 in plain digits.
    let cursor = params.number("cursor", 0, u64::MAX)?;
    Ok(DeadLettersQuery { limit, cursor })
}
