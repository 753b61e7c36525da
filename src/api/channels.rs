//! `/api/v1/realtime-subscriptions…` (PROTOCOL.md §9, the seed REST API
//! `seeds/002`): routing, authentication, and checking every body and query of the
//! channels REST API into a [`ChannelRequest`].
//!
//! Runs on the shard that read the request, on its thread, and looks nothing up: it
//! checks the request's shape, the caller, the body or query and, for a create, whether
//! the caller may create that channel, then hands the checked request and its [`Caller`]
//! to the services thread (`Route::Channels`), which owns every channel and answers.
//! Ownership of an existing channel (may this caller see, reconnect or delete it; a
//! foreign channel is 404 like an unknown one) is checked there, since only that thread
//! knows owners. An id that cannot be a channel id ([`valid_channel_id`]) is 404 here,
//! before any lookup, so it tells nothing either.
//!
//! Order of checks: shape (404), method (405), credentials (401), body or query (400),
//! permission to create (403).

use serde_json::{Map, Value};

use crate::auth::jwt::Role;
use crate::auth::{AuthError, Principal};
use crate::channels::{
    valid_channel_id, Caller, ChannelKind, ChannelRequest, ListQuery, NewChannel, Status,
};
use crate::filter::Filter;
use crate::http::{percent_decode, Request};
use crate::node::Node;
use crate::protocol::{truncate, validate_path};

use super::{authorize, error, query, Refused, Route};

/// Longest `organisation_id` / `user_id`, in bytes.
const MAX_ID_BYTES: usize = 256;
/// Most `event_types` a channel lists.
const MAX_EVENT_TYPES: usize = 64;
/// Longest event type, in bytes.
const MAX_EVENT_TYPE_BYTES: usize = 256;
/// List page size when `limit` is absent, and its bounds.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Highest `page` accepted (keeps `page * limit` far from overflowing).
const MAX_PAGE: usize = 1_000_000;

/// Fields of each create body, in the seed's order.
const ORGANISATION_FIELDS: &[&str] = &["organisation_id", "user_id", "event_types"];
const USER_FIELDS: &[&str] = &["user_id", "event_types"];
const CUSTOM_FIELDS: &[&str] = &["path", "event_types", "filter"];
/// Query parameters the list takes, in the order their values are checked.
const LIST_PARAMS: &[&str] = &["page", "limit", "status", "user_id", "organisation_id"];

const PATHS: &str = "channel paths are /api/v1/realtime-subscriptions, \
                     /api/v1/realtime-subscriptions/organisation, \
                     /api/v1/realtime-subscriptions/user, \
                     /api/v1/realtime-subscriptions/{channel_id} and \
                     /api/v1/realtime-subscriptions/{channel_id}/reconnect";

/// Routes a request under `/api/v1/realtime-subscriptions`. `rest` is what follows that
/// prefix, with its leading `/`: `""` or `"/"` (the collection), `"/organisation"`,
/// `"/user"`, `"/{channel_id}"`, `"/{channel_id}/reconnect"`. Segments are
/// percent-decoded; anything else (`"/x/"`, or `"X"` from `/api/v1/realtime-subscriptionsX`)
/// is 404.
pub fn route(req: &Request, node: &Node, rest: &str, close: bool) -> Route {
    match check(req, rest, || authorize(req, node)) {
        Ok((caller, request)) => to_route(caller, request, close),
        Err((status, code, message)) => error(status, code, &message, close),
    }
}

/// Hands a checked request to the services thread, which owns the channels.
fn to_route(caller: Caller, req: ChannelRequest, _close: bool) -> Route {
    Route::Channels { caller, req }
}

/// Every check of [`route`], with the credential check passed in (so it is pure).
fn check(
    req: &Request,
    rest: &str,
    authenticate: impl FnOnce() -> Result<Principal, AuthError>,
) -> Result<(Caller, ChannelRequest), Refused> {
    let method = req.method.as_str();
    let action = action(method, shape(rest)?)?;
    let principal = authenticate().map_err(|e| (401, "UNAUTHORIZED", e.to_string()))?;
    let request = match action {
        Action::List => ChannelRequest::List(parse_list(&req.query)?),
        Action::Create(kind) => {
            let new = parse_create(kind, &req.body)?;
            may_create(&principal, &new)?;
            ChannelRequest::Create(new)
        }
        // No body is read: one sent anyway is ignored.
        Action::Get(id) => ChannelRequest::Get(id),
        Action::Reconnect(id) => ChannelRequest::Reconnect(id),
        Action::Delete(id) => ChannelRequest::Delete(id),
    };
    Ok((caller_of(&principal), request))
}

/// A path the API knows.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// `""` or `"/"`: the list (GET) and custom channels (POST).
    Root,
    /// `/organisation`
    Organisation,
    /// `/user`
    User,
    /// `/{channel_id}`
    Channel(String),
    /// `/{channel_id}/reconnect`
    Reconnect(String),
}

impl Shape {
    fn allowed(&self) -> &'static str {
        match self {
            Shape::Root => "GET, POST",
            Shape::Organisation | Shape::User => "POST",
            Shape::Channel(_) => "GET, DELETE",
            Shape::Reconnect(_) => "PUT",
        }
    }
}

fn not_found(message: String) -> Refused {
    (404, "NOT_FOUND", message)
}

/// The shape of `rest` (see [`route`]); 404 for anything else, including an id that
/// cannot be a channel id.
fn shape(rest: &str) -> Result<Shape, Refused> {
    if rest.is_empty() || rest == "/" {
        return Ok(Shape::Root);
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(not_found(PATHS.into()));
    };
    let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
    let id = |id: &str| {
        if valid_channel_id(id) {
            Ok(id.to_string())
        } else {
            Err(not_found(format!("no channel '{}'", truncate(id, 64))))
        }
    };
    match segments.as_slice() {
        [s] if s == "organisation" => Ok(Shape::Organisation),
        [s] if s == "user" => Ok(Shape::User),
        [s] if !s.is_empty() => id(s).map(Shape::Channel),
        [s, r] if r == "reconnect" && !s.is_empty() => id(s).map(Shape::Reconnect),
        _ => Err(not_found(PATHS.into())),
    }
}

/// What a method asks of a shape, before its body or query is read.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    List,
    /// The channel kind, as [`parse_create`] takes it.
    Create(&'static str),
    Get(String),
    Reconnect(String),
    Delete(String),
}

/// The action of `method` on `shape`; 405 naming the allowed methods.
fn action(method: &str, shape: Shape) -> Result<Action, Refused> {
    Ok(match (method, shape) {
        ("GET", Shape::Root) => Action::List,
        ("POST", Shape::Root) => Action::Create("custom"),
        ("POST", Shape::Organisation) => Action::Create("organisation"),
        ("POST", Shape::User) => Action::Create("user"),
        ("GET", Shape::Channel(id)) => Action::Get(id),
        ("DELETE", Shape::Channel(id)) => Action::Delete(id),
        ("PUT", Shape::Reconnect(id)) => Action::Reconnect(id),
        (_, shape) => {
            return Err((
                405,
                "BAD_MESSAGE",
                format!(
                    "method {} is not allowed here (allowed: {})",
                    truncate(method, 16),
                    shape.allowed()
                ),
            ))
        }
    })
}

/// Api keys act as admins (PROTOCOL.md §1), with `sub` "apikey".
fn caller_of(principal: &Principal) -> Caller {
    match principal {
        Principal::ApiKey => Caller {
            sub: "apikey".into(),
            admin: true,
        },
        Principal::Token(c) => Caller {
            sub: c.sub.clone(),
            admin: c.role == Role::Admin,
        },
    }
}

/// Whether `principal` may create `new` (PROTOCOL.md §9): admins and api keys any
/// channel; others an organisation channel only for their token's `org` and their own
/// `sub`, a user channel only for their own `sub`, a custom channel only on a non-system
/// path within their scopes. 403 otherwise.
fn may_create(principal: &Principal, new: &NewChannel) -> Result<(), Refused> {
    let claims = match principal {
        Principal::ApiKey => return Ok(()),
        Principal::Token(c) if c.role == Role::Admin => return Ok(()),
        Principal::Token(c) => c,
    };
    let forbidden = |m: String| Err((403, "FORBIDDEN", m));
    let own_user = |user_id: &str| {
        if user_id == claims.sub {
            Ok(())
        } else {
            forbidden(format!(
                "user_id '{}' is not the token's sub: only admins may create channels for \
                 another user",
                truncate(user_id, 64)
            ))
        }
    };
    match &new.kind {
        ChannelKind::OrganisationClaims {
            organisation_id,
            user_id,
        } => {
            match claims.org.as_deref() {
                None => {
                    return forbidden(
                        "the token has no org claim: only admins may create organisation \
                         channels without one"
                            .into(),
                    )
                }
                Some(org) if org != organisation_id => {
                    return forbidden(format!(
                        "organisation_id '{}' is not the token's org '{}'",
                        truncate(organisation_id, 64),
                        truncate(org, 64)
                    ))
                }
                Some(_) => {}
            }
            own_user(user_id)
        }
        ChannelKind::UserClaims { user_id } => own_user(user_id),
        ChannelKind::Custom { path, .. } => {
            if path.starts_with('$') {
                forbidden(format!(
                    "path '{path}' is a system path: only admins may subscribe to it"
                ))
            } else if !claims.scopes.allows(path) {
                forbidden(format!("path '{path}' is outside the token's scopes"))
            } else {
                Ok(())
            }
        }
    }
}

fn bad(message: impl Into<String>) -> Refused {
    (400, "BAD_MESSAGE", message.into())
}

/// A JSON value's type, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses and checks a create body. `kind`: `"organisation"` (`POST /organisation`),
/// `"user"` (`POST /user`) or `"custom"` (`POST /`). Checks the body alone: whether the
/// caller may create the channel is [`may_create`]'s.
pub fn parse_create(kind: &str, body: &[u8]) -> Result<NewChannel, Refused> {
    let (fields, what) = match kind {
        "organisation" => (ORGANISATION_FIELDS, "an organisation"),
        "user" => (USER_FIELDS, "a user"),
        "custom" => (CUSTOM_FIELDS, "a custom"),
        _ => return Err((500, "INTERNAL", format!("no channel kind '{kind}'"))),
    };
    let m = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("body must be a JSON object")),
        Err(e) => {
            return Err(bad(format!(
                "body must be a JSON object: {}",
                super::serde_message(&e)
            )))
        }
    };
    if let Some(k) = m.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field '{}' ({what} channel takes {})",
            truncate(k, 64),
            fields.join(", ")
        )));
    }
    Ok(match kind {
        "organisation" => NewChannel {
            kind: ChannelKind::OrganisationClaims {
                organisation_id: id_field(&m, "organisation_id")?,
                user_id: id_field(&m, "user_id")?,
            },
            event_types: event_types(&m, true)?,
        },
        "user" => NewChannel {
            kind: ChannelKind::UserClaims {
                user_id: id_field(&m, "user_id")?,
            },
            event_types: event_types(&m, true)?,
        },
        _ => {
            let path = match m.get("path") {
                Some(Value::String(p)) => p,
                None => return Err(bad("path is required: the path the channel subscribes to")),
                Some(v) => return Err(bad(format!("path must be a string, got {}", type_name(v)))),
            };
            validate_path(path).map_err(|e| (400, "INVALID_PATH", format!("path: {e}")))?;
            let event_types = event_types(&m, false)?;
            let filter = match m.get("filter") {
                None | Some(Value::Null) => None,
                Some(Value::String(f)) if f.trim().is_empty() => None,
                Some(Value::String(f)) => {
                    Filter::parse(f)
                        .map_err(|e| (400, "INVALID_FILTER", format!("filter: {e}")))?;
                    // The caller's text, not a re-rendering: it is what answers show.
                    Some(f.clone())
                }
                Some(v) => {
                    return Err(bad(format!(
                        "filter must be a string or null, got {}",
                        type_name(v)
                    )))
                }
            };
            NewChannel {
                kind: ChannelKind::Custom {
                    path: path.clone(),
                    filter,
                },
                event_types,
            }
        }
    })
}

/// `organisation_id` or `user_id`: a string of 1 to 256 bytes without control
/// characters.
fn id_field(m: &Map<String, Value>, name: &str) -> Result<String, Refused> {
    match m.get(name) {
        None => Err(bad(format!(
            "{name} is required: a string of 1 to {MAX_ID_BYTES} bytes"
        ))),
        Some(Value::String(s)) if s.is_empty() || s.len() > MAX_ID_BYTES => Err(bad(format!(
            "{name} must be 1 to {MAX_ID_BYTES} bytes, got {}",
            s.len()
        ))),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(bad(format!("{name} must not contain control characters")))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(bad(format!(
            "{name} must be a string, got {}",
            type_name(v)
        ))),
    }
}

/// `event_types`: at most 64 strings of 1 to 256 bytes; empty means every event type.
/// When not `required`, absent or null is empty.
fn event_types(m: &Map<String, Value>, required: bool) -> Result<Vec<String>, Refused> {
    let list = match m.get("event_types") {
        None | Some(Value::Null) if !required => return Ok(Vec::new()),
        None => {
            return Err(bad(
                "event_types is required: an array of strings (empty: every event type)",
            ))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(bad(format!(
                "event_types must be an array of strings, got {}",
                type_name(v)
            )))
        }
    };
    if list.len() > MAX_EVENT_TYPES {
        return Err(bad(format!(
            "event_types holds at most {MAX_EVENT_TYPES} event types, got {}",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| match t {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_EVENT_TYPE_BYTES => Ok(s.clone()),
            Value::String(s) => Err(bad(format!(
                "event_types[{i}] must be 1 to {MAX_EVENT_TYPE_BYTES} bytes, got {}",
                s.len()
            ))),
            v => Err(bad(format!(
                "event_types must be an array of strings: event_types[{i}] is {}",
                type_name(v)
            ))),
        })
        .collect()
}

/// Parses the list's query string (`page`, `limit`, `status`, `user_id`,
/// `organisation_id`) under the one rule of [`super::query`]: each parameter at most once,
/// numbers in plain digits; a parameter unknown, repeated or out of range is 400 naming it.
pub fn parse_list(query: &str) -> Result<ListQuery, Refused> {
    let params = query::parse(query, LIST_PARAMS)?;
    let page = params
        .number("page", 1, MAX_PAGE as u64)?
        .map_or(1, |n| n as usize);
    let limit = params
        .number("limit", 1, MAX_LIMIT as u64)?
        .map_or(DEFAULT_LIMIT, |n| n as usize);
    let status = match params.get("status") {
        None => None,
        Some("connected") => Some(Status::Connected),
        Some("disconnected") => Some(Status::Disconnected),
        Some(v) => {
            return Err(bad(format!(
                "status must be 'connected' or 'disconnected', got '{}'",
                truncate(v, 32)
            )))
        }
    };
    let text = |name: &str| {
        params
            .get(name)
            .map(|v| non_empty(name, v.to_string()))
            .transpose()
    };
    Ok(ListQuery {
        page,
        limit,
        status,
        user_id: text("user_id")?,
        organisation_id: text("organisation_id")?,
    })
}

fn non_empty(name: &str, v: String) -> Result<String, Refused> {
    if v.is_empty() {
        Err(bad(format!("{name} must not be empty")))
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{Claims, Scopes};

    fn claims(sub: &str, role: Role, org: Option<&str>, scopes: Scopes) -> Claims {
        Claims {
            sub: sub.into(),
            exp: u64::MAX,
            role,
            scopes,
            group: None,
            org: org.map(Into::into),
        }
    }

    fn user(sub: &str, org: Option<&str>) -> Principal {
        Principal::Token(claims(
            sub,
            Role::User,
            org,
            Scopes::Prefixes(vec!["jobs".into()]),
        ))
    }

    fn admin() -> Principal {
        Principal::Token(claims("root", Role::Admin, None, Scopes::All))
    }

    fn request(method: &str, query: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: String::new(),
            query: query.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            close: false,
            peer: None,
        }
    }

    /// Asserts a refusal's status and code, and that its message mentions `needle`.
    #[track_caller]
    fn refused<T: std::fmt::Debug>(r: Result<T, Refused>, status: u16, code: &str, needle: &str) {
        let (s, c, m) = r.unwrap_err();
        assert_eq!((s, c), (status, code), "{m}");
        assert!(m.contains(needle), "'{m}' does not mention '{needle}'");
    }

    #[test]
    fn shapes() {
        assert_eq!(shape(""), Ok(Shape::Root));
        assert_eq!(shape("/"), Ok(Shape::Root));
        assert_eq!(shape("/organisation"), Ok(Shape::Organisation));
        assert_eq!(shape("/user"), Ok(Shape::User));
        assert_eq!(shape("/%75ser"), Ok(Shape::User));
        assert_eq!(
            shape("/chan_b5c6d7e8"),
            Ok(Shape::Channel("chan_b5c6d7e8".into()))
        );
        assert_eq!(
            shape("/chan_b5c6d7e8/reconnect"),
            Ok(Shape::Reconnect("chan_b5c6d7e8".into()))
        );
        for rest in [
            "X",
            "xyz/chan_a",
            "//",
            "/chan_a/",
            "/chan_a/other",
            "/chan_a/reconnect/x",
            "/organisation/x",
            "/a/b/c",
        ] {
            refused(shape(rest), 404, "NOT_FOUND", "channel paths are");
        }
        // Ids that cannot be channel ids: 404, before any lookup.
        for rest in [
            "/nope",
            "/chan_",
            "/chan_a%2Fb",
            "/chan_a.b",
            "/nope/reconnect",
        ] {
            refused(shape(rest), 404, "NOT_FOUND", "no channel");
        }
        let long = format!("/chan_{}", "a".repeat(100));
        refused(shape(&long), 404, "NOT_FOUND", "no channel");
    }

    #[test]
    fn methods() {
        let id = || Shape::Channel("chan_1".into());
        assert_eq!(action("GET", Shape::Root), Ok(Action::List));
        assert_eq!(action("POST", Shape::Root), Ok(Action::Create("custom")));
        assert_eq!(
            action("POST", Shape::Organisation),
            Ok(Action::Create("organisation"))
        );
        assert_eq!(action("POST", Shape::User), Ok(Action::Create("user")));
        assert_eq!(action("GET", id()), Ok(Action::Get("chan_1".into())));
        assert_eq!(action("DELETE", id()), Ok(Action::Delete("chan_1".into())));
        assert_eq!(
            action("PUT", Shape::Reconnect("chan_1".into())),
            Ok(Action::Reconnect("chan_1".into()))
        );
        refused(
            action("DELETE", Shape::Root),
            405,
            "BAD_MESSAGE",
            "GET, POST",
        );
        refused(
            action("GET", Shape::Organisation),
            405,
            "BAD_MESSAGE",
            "allowed: POST",
        );
        refused(
            action("PUT", Shape::User),
            405,
            "BAD_MESSAGE",
            "allowed: POST",
        );
        refused(action("PUT", id()), 405, "BAD_MESSAGE", "GET, DELETE");
        refused(action("PATCH", id()), 405, "BAD_MESSAGE", "method PATCH");
        refused(
            action("GET", Shape::Reconnect("chan_1".into())),
            405,
            "BAD_MESSAGE",
            "allowed: PUT",
        );
    }

    #[test]
    fn callers() {
        assert_eq!(
            caller_of(&Principal::ApiKey),
            Caller {
                sub: "apikey".into(),
                admin: true
            }
        );
        assert_eq!(
            caller_of(&admin()),
            Caller {
                sub: "root".into(),
                admin: true
            }
        );
        assert_eq!(
            caller_of(&user("u1", None)),
            Caller {
                sub: "u1".into(),
                admin: false
            }
        );
        let service = Principal::Token(claims("svc", Role::Service, None, Scopes::All));
        assert!(!caller_of(&service).admin);
    }

    #[test]
    fn organisation_bodies() {
        let n = parse_create(
            "organisation",
            br#"{"organisation_id":"org_001","user_id":"usr_coord99",
                 "event_types":["status_changed","claim_submitted"]}"#,
        )
        .unwrap();
        assert_eq!(
            n,
            NewChannel {
                kind: ChannelKind::OrganisationClaims {
                    organisation_id: "org_001".into(),
                    user_id: "usr_coord99".into()
                },
                event_types: vec!["status_changed".into(), "claim_submitted".into()],
            }
        );
        let all = parse_create(
            "organisation",
            br#"{"organisation_id":"o","user_id":"u","event_types":[]}"#,
        )
        .unwrap();
        assert!(all.event_types.is_empty());
        let org = |body: &str| parse_create("organisation", body.as_bytes());
        refused(
            org(r#"{"user_id":"u","event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "organisation_id is required",
        );
        refused(
            org(r#"{"organisation_id":"o","event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "user_id is required",
        );
        refused(
            org(r#"{"organisation_id":"o","user_id":"u"}"#),
            400,
            "BAD_MESSAGE",
            "event_types is required",
        );
        refused(
            org(r#"{"organisation_id":"o","user_id":"u","event_types":null}"#),
            400,
            "BAD_MESSAGE",
            "event_types must be an array of strings",
        );
        refused(
            org(r#"{"organisation_id":7,"user_id":"u","event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "organisation_id must be a string, got a number",
        );
        refused(
            org(r#"{"organisation_id":"","user_id":"u","event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "organisation_id must be 1 to 256 bytes",
        );
        let long = format!(
            r#"{{"organisation_id":"o","user_id":"{}","event_types":[]}}"#,
            "u".repeat(257)
        );
        refused(
            org(&long),
            400,
            "BAD_MESSAGE",
            "user_id must be 1 to 256 bytes, got 257",
        );
        let ok = format!(
            r#"{{"organisation_id":"o","user_id":"{}","event_types":[]}}"#,
            "u".repeat(256)
        );
        assert!(org(&ok).is_ok());
        refused(
            org(r#"{"organisation_id":"o\u0007","user_id":"u","event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "organisation_id must not contain control characters",
        );
        refused(
            org(r#"{"organisation_id":"o","user_id":"u","event_types":[],"path":"x"}"#),
            400,
            "BAD_MESSAGE",
            "unknown field 'path'",
        );
    }

    #[test]
    fn user_bodies_and_event_types() {
        let n = parse_create(
            "user",
            br#"{"user_id":"usr_84cd12ef","event_types":["status_changed","comment_added"]}"#,
        )
        .unwrap();
        assert_eq!(
            n.kind,
            ChannelKind::UserClaims {
                user_id: "usr_84cd12ef".into()
            }
        );
        assert_eq!(n.event_types, ["status_changed", "comment_added"]);
        let u = |body: &str| parse_create("user", body.as_bytes());
        refused(
            u(r#"{"user_id":"u","event_types":[],"organisation_id":"o"}"#),
            400,
            "BAD_MESSAGE",
            "unknown field 'organisation_id'",
        );
        refused(
            u(r#"{"user_id":"u","event_types":"a"}"#),
            400,
            "BAD_MESSAGE",
            "event_types must be an array of strings, got a string",
        );
        refused(
            u(r#"{"user_id":"u","event_types":["a",1]}"#),
            400,
            "BAD_MESSAGE",
            "event_types[1] is a number",
        );
        refused(
            u(r#"{"user_id":"u","event_types":[""]}"#),
            400,
            "BAD_MESSAGE",
            "event_types[0] must be 1 to 256 bytes",
        );
        let long = format!(r#"{{"user_id":"u","event_types":["{}"]}}"#, "e".repeat(257));
        refused(
            u(&long),
            400,
            "BAD_MESSAGE",
            "event_types[0] must be 1 to 256 bytes",
        );
        let list = |n: usize| {
            let types: Vec<String> = (0..n).map(|i| format!("\"e{i}\"")).collect();
            format!(r#"{{"user_id":"u","event_types":[{}]}}"#, types.join(","))
        };
        assert_eq!(u(&list(64)).unwrap().event_types.len(), 64);
        refused(
            u(&list(65)),
            400,
            "BAD_MESSAGE",
            "at most 64 event types, got 65",
        );
        refused(
            u(r#"{"user_id":null,"event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "user_id must be a string, got null",
        );
    }

    #[test]
    fn bodies_are_objects() {
        for kind in ["organisation", "user", "custom"] {
            for body in [
                "",
                "nope",
                "[]",
                "\"x\"",
                "1",
                "null",
                "{\"a\":",
                "[{\"path\":\"a\"}]",
            ] {
                refused(
                    parse_create(kind, body.as_bytes()),
                    400,
                    "BAD_MESSAGE",
                    "body must be a JSON object",
                );
            }
        }
        refused(
            parse_create("user", b"\xff\xfe"),
            400,
            "BAD_MESSAGE",
            "body must be a JSON object",
        );
        refused(parse_create("other", b"{}"), 500, "INTERNAL", "other");
    }

    #[test]
    fn custom_bodies() {
        let c = |body: &str| parse_create("custom", body.as_bytes());
        let n = c(r#"{"path":"jobs/550e","event_types":["done"],"filter":"status == 'failed'"}"#)
            .unwrap();
        assert_eq!(
            n,
            NewChannel {
                kind: ChannelKind::Custom {
                    path: "jobs/550e".into(),
                    filter: Some("status == 'failed'".into())
                },
                event_types: vec!["done".into()],
            }
        );
        // The filter is kept as written (spacing included), after it parsed.
        let spaced = c(r#"{"path":"jobs","filter":"  a==1  &&b"}"#).unwrap();
        assert_eq!(
            spaced.kind,
            ChannelKind::Custom {
                path: "jobs".into(),
                filter: Some("  a==1  &&b".into())
            }
        );
        // event_types and filter are optional; null and a blank filter mean none.
        for body in [
            r#"{"path":"jobs"}"#,
            r#"{"path":"jobs","event_types":null,"filter":null}"#,
            r#"{"path":"jobs","event_types":[],"filter":"  "}"#,
        ] {
            let n = c(body).unwrap();
            assert!(n.event_types.is_empty(), "{body}");
            assert_eq!(
                n.kind,
                ChannelKind::Custom {
                    path: "jobs".into(),
                    filter: None
                },
                "{body}"
            );
        }
        assert!(
            c(r#"{"path":"$sys/x"}"#).is_ok(),
            "system paths are may_create's"
        );
        refused(
            c(r#"{"event_types":[]}"#),
            400,
            "BAD_MESSAGE",
            "path is required",
        );
        refused(
            c(r#"{"path":["a"]}"#),
            400,
            "BAD_MESSAGE",
            "path must be a string",
        );
        refused(c(r#"{"path":"a b"}"#), 400, "INVALID_PATH", "path");
        refused(c(r#"{"path":""}"#), 400, "INVALID_PATH", "path");
        refused(
            c(r#"{"path":"a//b"}"#),
            400,
            "INVALID_PATH",
            "empty segment",
        );
        refused(
            c(r#"{"path":"jobs","filter":"status == "}"#),
            400,
            "INVALID_FILTER",
            "at byte",
        );
        let (_, _, m) = c(r#"{"path":"jobs","filter":"a == 1 &&"}"#).unwrap_err();
        assert!(m.starts_with("filter: "), "{m}");
        refused(
            c(r#"{"path":"jobs","filter":3}"#),
            400,
            "BAD_MESSAGE",
            "filter must be a string or null, got a number",
        );
        refused(
            c(r#"{"path":"jobs","event_types":{}}"#),
            400,
            "BAD_MESSAGE",
            "event_types must be an array of strings",
        );
        refused(
            c(r#"{"path":"jobs","user_id":"u"}"#),
            400,
            "BAD_MESSAGE",
            "unknown field 'user_id'",
        );
    }

    #[test]
    fn who_may_create_what() {
        let org = |o: &str, u: &str| NewChannel {
            kind: ChannelKind::OrganisationClaims {
                organisation_id: o.into(),
                user_id: u.into(),
            },
            event_types: Vec::new(),
        };
        let usr = |u: &str| NewChannel {
            kind: ChannelKind::UserClaims { user_id: u.into() },
            event_types: Vec::new(),
        };
        let custom = |p: &str| NewChannel {
            kind: ChannelKind::Custom {
                path: p.into(),
                filter: None,
            },
            event_types: Vec::new(),
        };
        let alice = user("alice", Some("org_1"));
        assert!(may_create(&alice, &org("org_1", "alice")).is_ok());
        refused(
            may_create(&alice, &org("org_2", "alice")),
            403,
            "FORBIDDEN",
            "organisation_id 'org_2' is not the token's org",
        );
        refused(
            may_create(&alice, &org("org_1", "bob")),
            403,
            "FORBIDDEN",
            "user_id 'bob' is not the token's sub",
        );
        refused(
            may_create(&user("alice", None), &org("org_1", "alice")),
            403,
            "FORBIDDEN",
            "no org claim",
        );
        assert!(may_create(&alice, &usr("alice")).is_ok());
        refused(
            may_create(&alice, &usr("bob")),
            403,
            "FORBIDDEN",
            "user_id 'bob'",
        );
        assert!(may_create(&alice, &custom("jobs")).is_ok());
        assert!(may_create(&alice, &custom("jobs/1")).is_ok());
        refused(
            may_create(&alice, &custom("jobsx")),
            403,
            "FORBIDDEN",
            "outside the token's scopes",
        );
        let everything = Principal::Token(claims("s", Role::Service, None, Scopes::All));
        assert!(may_create(&everything, &custom("anything")).is_ok());
        refused(
            may_create(&everything, &custom("$sys/x")),
            403,
            "FORBIDDEN",
            "system path",
        );
        // Admins and api keys: anything.
        for p in [admin(), Principal::ApiKey] {
            assert!(may_create(&p, &org("org_9", "zed")).is_ok());
            assert!(may_create(&p, &usr("zed")).is_ok());
            assert!(may_create(&p, &custom("$sys/x")).is_ok());
        }
    }

    #[test]
    fn list_queries() {
        let all = parse_list("").unwrap();
        assert_eq!(
            all,
            ListQuery {
                page: 1,
                limit: 20,
                status: None,
                user_id: None,
                organisation_id: None
            }
        );
        let q = parse_list(
            "page=3&limit=100&status=disconnected&user_id=usr%20x&organisation_id=org_001",
        )
        .unwrap();
        assert_eq!(
            q,
            ListQuery {
                page: 3,
                limit: 100,
                status: Some(Status::Disconnected),
                user_id: Some("usr x".into()),
                organisation_id: Some("org_001".into())
            }
        );
        assert_eq!(
            parse_list("status=connected").unwrap().status,
            Some(Status::Connected)
        );
        assert_eq!(parse_list("page=1000000").unwrap().page, 1_000_000);
        assert_eq!(parse_list("limit=1").unwrap().limit, 1);
        for (query, needle) in [
            (
                "page=0",
                "page must be a whole number from 1 to 1000000 in plain decimal digits, got '0'",
            ),
            ("page=1000001", "page must"),
            ("page=-1", "page must"),
            ("page=1.5", "page must"),
            ("page=", "page must"),
            ("page=99999999999999999999999", "page must"),
            ("limit=0", "limit must be a whole number from 1 to 100"),
            ("limit=101", "limit must"),
            ("limit=x", "limit must"),
            (
                "status=gone",
                "status must be 'connected' or 'disconnected', got 'gone'",
            ),
            ("status=", "status must"),
            ("user_id=", "user_id must not be empty"),
            ("organisation_id=", "organisation_id must not be empty"),
            ("sort=asc", "unknown query parameter 'sort'"),
            ("Page=1", "unknown query parameter 'Page'"),
            ("page=1&page=2", "'page' is given more than once"),
            // One rule for every list: repeated names before values, plain digits.
            ("page=x&page=2", "'page' is given more than once"),
            (
                "page=%2B5",
                "page must be a whole number from 1 to 1000000 in plain",
            ),
            (
                "limit=007",
                "limit must be a whole number from 1 to 100 in plain",
            ),
            (
                "status=connected&status=connected",
                "'status' is given more than once",
            ),
        ] {
            refused(parse_list(query), 400, "BAD_MESSAGE", needle);
        }
    }

    #[test]
    fn checks_run_in_order() {
        let ok = || Ok(user("alice", Some("org_1")));
        let no_credential = || Err(AuthError::Missing);
        // 404 and 405 come before credentials.
        refused(
            check(&request("GET", "", ""), "/nope", no_credential),
            404,
            "NOT_FOUND",
            "no channel",
        );
        refused(
            check(&request("GET", "", ""), "/user", no_credential),
            405,
            "BAD_MESSAGE",
            "POST",
        );
        refused(
            check(&request("GET", "", ""), "", no_credential),
            401,
            "UNAUTHORIZED",
            "Authorization",
        );
        // 400 before 403.
        refused(
            check(&request("POST", "", r#"{"user_id":"bob"}"#), "/user", ok),
            400,
            "BAD_MESSAGE",
            "event_types",
        );
        refused(
            check(
                &request("POST", "", r#"{"user_id":"bob","event_types":[]}"#),
                "/user",
                ok,
            ),
            403,
            "FORBIDDEN",
            "bob",
        );
        let (caller, req) = check(
            &request("POST", "", r#"{"user_id":"alice","event_types":[]}"#),
            "/user",
            ok,
        )
        .unwrap();
        assert_eq!(
            caller,
            Caller {
                sub: "alice".into(),
                admin: false
            }
        );
        assert!(matches!(req, ChannelRequest::Create(_)));
        let (_, req) = check(&request("GET", "limit=5", ""), "/", ok).unwrap();
        assert!(matches!(
            req,
            ChannelRequest::List(ListQuery { limit: 5, .. })
        ));
        refused(
            check(&request("GET", "limit=500", ""), "", ok),
            400,
            "BAD_MESSAGE",
            "limit",
        );
        // Get, reconnect and delete read no body; owners are the services thread's.
        let (_, req) = check(&request("GET", "", "junk"), "/chan_1", ok).unwrap();
        assert_eq!(req, ChannelRequest::Get("chan_1".into()));
        let (_, req) = check(&request("PUT", "", "junk"), "/chan_1/reconnect", ok).unwrap();
        assert_eq!(req, ChannelRequest::Reconnect("chan_1".into()));
        let (_, req) = check(&request("DELETE", "", "{}"), "/chan_1", ok).unwrap();
        assert_eq!(req, ChannelRequest::Delete("chan_1".into()));
        let (caller, req) = check(&request("POST", "", r#"{"path":"$sys/x"}"#), "", || {
            Ok(Principal::ApiKey)
        })
        .unwrap();
        assert!(caller.admin);
        assert!(matches!(req, ChannelRequest::Create(_)));
    }
}
