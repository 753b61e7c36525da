//! REST-managed channels (PROTOCOL.md §9): what a channel is, as the REST API, the
//! services thread (which owns every channel) and the store share it.
//!
//! Plain data and pure functions: the REST layer (`api::channels`) parses requests into
//! these types; the services thread keeps [`ChannelSpec`]s and answers with
//! [`ChannelView`]s.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::filter::Filter;

/// What a channel collects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "subscription_type", rename_all = "snake_case")]
pub enum ChannelKind {
    /// Publications under `claims` whose `data.organisation_id` is `organisation_id`.
    OrganisationClaims {
        organisation_id: String,
        user_id: String,
    },
    /// Publications under `claims` whose `data.user_id` is `user_id`.
    UserClaims { user_id: String },
    /// Publications under `path` matching `filter` (the filter language's text).
    Custom {
        path: String,
        filter: Option<String>,
    },
}

impl ChannelKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelKind::OrganisationClaims { .. } => "organisation_claims",
            ChannelKind::UserClaims { .. } => "user_claims",
            ChannelKind::Custom { .. } => "custom",
        }
    }

    /// The path and filter of the subscription the channel is.
    pub fn subscription(&self) -> Result<(String, Option<Filter>), String> {
        let eq = |field: &str, v: &str| {
            // A double-quoted JSON string is a filter string literal.
            let lit = serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
            Filter::parse(&format!("{field} == {lit}")).map_err(|e| e.to_string())
        };
        Ok(match self {
            ChannelKind::OrganisationClaims {
                organisation_id, ..
            } => (
                "claims".into(),
                Some(eq("organisation_id", organisation_id)?),
            ),
            ChannelKind::UserClaims { user_id } => ("claims".into(), Some(eq("user_id", user_id)?)),
            ChannelKind::Custom { path, filter } => (
                path.clone(),
                match filter {
                    Some(f) => Some(Filter::parse(f).map_err(|e| e.to_string())?),
                    None => None,
                },
            ),
        })
    }
}

/// `connected` or `disconnected` (PROTOCOL.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Connected,
    Disconnected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::Disconnected => "disconnected",
        }
    }
}

/// A channel's definition, as created (kept in the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSpec {
    pub channel_id: String,
    #[serde(flatten)]
    pub kind: ChannelKind,
    /// Empty: every event type.
    pub event_types: Vec<String>,
    /// The `sub` of the token that created it: its owner.
    pub owner: String,
    pub created_at_ms: u64,
}

/// A new channel as the REST API checked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChannel {
    pub kind: ChannelKind,
    pub event_types: Vec<String>,
}

/// `GET /api/v1/realtime-subscriptions` query (page from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub page: usize,
    pub limit: usize,
    pub status: Option<Status>,
    pub user_id: Option<String>,
    pub organisation_id: Option<String>,
}

/// A checked request of the channels REST API, for the services thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelRequest {
    List(ListQuery),
    Get(String),
    Create(NewChannel),
    Reconnect(String),
    Delete(String),
    /// The operator console's view of every channel (`GET /api/v1/admin/channels`, admins
    /// only): the list's items with the counts the contract's answers do not carry.
    Stats,
}

/// A channel's counts beside its contract answers, for the operator console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Events waiting for the socket (at most `channels.backlog`).
    pub backlog: u64,
    /// Events matched since the socket dropped (what a reconnect would answer).
    pub missed: u64,
    /// Events dropped from the full backlog, oldest first.
    pub dropped: u64,
}

/// Most channels in one `GET /api/v1/admin/channels` answer (oldest first; `total` says
/// how many there are).
pub const MAX_STATS: usize = 1000;

/// The body of `GET /api/v1/admin/channels`: `{"data":[item + event_count, backlog,
/// missed_events, dropped],"total"}`, oldest first, at most [`MAX_STATS`] items.
pub fn stats_page(mut rows: Vec<(ChannelView<'_>, ChannelCounts)>) -> Value {
    rows.sort_by(|(a, _), (b, _)| {
        (a.spec.created_at_ms, &a.spec.channel_id).cmp(&(b.spec.created_at_ms, &b.spec.channel_id))
    });
    let total = rows.len();
    let data: Vec<Value> = rows
        .into_iter()
        .take(MAX_STATS)
        .map(|(v, c)| {
            let mut item = v.listed();
            item["event_count"] = json!(v.event_count);
            item["backlog"] = json!(c.backlog);
            item["missed_events"] = json!(c.missed);
            item["dropped"] = json!(c.dropped);
            item
        })
        .collect();
    json!({"data": data, "total": total})
}

/// Who asks: admins (and api keys) see every channel, others their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub admin: bool,
}

impl Caller {
    pub fn sees(&self, spec: &ChannelSpec) -> bool {
        self.admin || spec.owner == self.sub
    }
}

/// A channel's live state, for its answers.
#[derive(Clone, Debug)]
pub struct ChannelView<'a> {
    pub spec: &'a ChannelSpec,
    pub status: Status,
    pub event_count: u64,
    pub last_event_at_ms: Option<u64>,
}

/// `public_url` + `/channels/{id}`.
pub fn websocket_url(public_url: &str, id: &str) -> String {
    format!("{}/channels/{id}", public_url.trim_end_matches('/'))
}

fn time(ms: u64) -> Value {
    Value::String(crate::time::rfc3339_ms(ms))
}

impl ChannelView<'_> {
    /// The fields every answer about a channel starts with, in the seed's order.
    fn head(&self) -> serde_json::Map<String, Value> {
        let s = self.spec;
        let mut m = serde_json::Map::new();
        m.insert("channel_id".into(), json!(s.channel_id));
        m.insert("subscription_type".into(), json!(s.kind.type_name()));
        match &s.kind {
            ChannelKind::OrganisationClaims {
                organisation_id,
                user_id,
            } => {
                m.insert("organisation_id".into(), json!(organisation_id));
                m.insert("user_id".into(), json!(user_id));
            }
            ChannelKind::UserClaims { user_id } => {
                m.insert("user_id".into(), json!(user_id));
            }
            ChannelKind::Custom { path, filter } => {
                m.insert("path".into(), json!(path));
                m.insert("filter".into(), json!(filter));
                m.insert("event_types".into(), json!(s.event_types));
            }
        }
        m
    }

    /// The `POST` answer (201).
    pub fn created(&self, public_url: &str) -> Value {
        let mut m = self.head();
        m.insert(
            "websocket_url".into(),
            json!(websocket_url(public_url, &self.spec.channel_id)),
        );
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("created_at".into(), time(self.spec.created_at_ms));
        Value::Object(m)
    }

    /// An item of the list.
    pub fn listed(&self) -> Value {
        let mut m = self.head();
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("created_at".into(), time(self.spec.created_at_ms));
        m.insert(
            "last_event_at".into(),
            self.last_event_at_ms.map(time).unwrap_or(Value::Null),
        );
        Value::Object(m)
    }

    /// `GET /{channel_id}`: status and stats.
    pub fn detail(&self, public_url: &str) -> Value {
        let mut m = self.head();
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("event_count".into(), json!(self.event_count));
        m.insert(
            "websocket_url".into(),
            json!(websocket_url(public_url, &self.spec.channel_id)),
        );
        m.insert("created_at".into(), time(self.spec.created_at_ms));
        m.insert(
            "last_event_at".into(),
            self.last_event_at_ms.map(time).unwrap_or(Value::Null),
        );
        Value::Object(m)
    }
}

/// A new channel id: `chan_` and 16 random hex digits (not guessable).
/// `GET /realtime-subscriptions`: the channels `caller` sees that match `q`, oldest
/// first (creation order), one page of them (both implementations of the services
/// engine answer with it).
pub fn list_page(caller: &Caller, q: &ListQuery, mut rows: Vec<ChannelView<'_>>) -> Value {
    rows.retain(|c| {
        caller.sees(c.spec)
            && q.status.is_none_or(|s| c.status == s)
            && q.user_id.as_deref().is_none_or(|u| match &c.spec.kind {
                ChannelKind::OrganisationClaims { user_id, .. }
                | ChannelKind::UserClaims { user_id } => user_id == u,
                ChannelKind::Custom { .. } => c.spec.owner == u,
            })
            && q.organisation_id.as_deref().is_none_or(|o| {
                matches!(&c.spec.kind,
                    ChannelKind::OrganisationClaims { organisation_id, .. } if organisation_id == o)
            })
    });
    rows.sort_by(|a, b| {
        (a.spec.created_at_ms, &a.spec.channel_id).cmp(&(b.spec.created_at_ms, &b.spec.channel_id))
    });
    let total = rows.len();
    let data: Vec<Value> = rows
        .into_iter()
        .skip((q.page - 1).saturating_mul(q.limit))
        .take(q.limit)
        .map(|c| c.listed())
        .collect();
    json!({"data": data, "pagination": {"page": q.page, "limit": q.limit, "total": total}})
}

/// Why a socket on `/channels/{id}` is refused (`spec`: the channel, if it exists):
/// the close reason and the `error` message sent before the close 4001; `None` when the
/// caller may take the channel's events.
pub fn attach_refusal(
    spec: Option<&ChannelSpec>,
    id: &str,
    caller: &Caller,
) -> Option<(&'static str, Vec<u8>)> {
    use crate::protocol::{error_message, ErrorCode};
    match spec {
        None => Some((
            "no such channel",
            error_message(
                ErrorCode::NotFound,
                &format!("no channel '{id}' (it may have been deleted)"),
                None,
            ),
        )),
        Some(s) if !caller.sees(s) => Some((
            "forbidden",
            error_message(
                ErrorCode::Forbidden,
                &format!("channel '{id}' is not yours"),
                None,
            ),
        )),
        Some(_) => None,
    }
}

/// The 429 body for a caller who owns `owned` channels, the most `max` allows.
pub fn limit_exceeded(owner: &str, owned: impl std::fmt::Display, max: usize) -> Value {
    json!({"error": {"code": "LIMIT_EXCEEDED", "message": format!(
        "'{}' owns {owned} channels, the most channels.max_per_user ({max}) allows: delete \
         one first",
        crate::protocol::truncate(owner, 64),
    )}})
}

/// The 404 body for a channel that does not exist or that the caller may not see.
pub fn not_found(id: &str) -> Value {
    json!({"error": {"code": "NOT_FOUND", "message": format!("no channel '{id}'")}})
}

pub fn new_channel_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    let mut s = String::from("chan_");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Whether `id` could be a channel id (anything else is 404 without a lookup).
pub fn valid_channel_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with("chan_")
        && id.len() > 5
        && id[5..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_views_have_the_seed_fields() {
        let spec = ChannelSpec {
            channel_id: "chan_b5c6d7e8".into(),
            kind: ChannelKind::OrganisationClaims {
                organisation_id: "org_001".into(),
                user_id: "usr_coord99".into(),
            },
            event_types: vec!["status_changed".into()],
            owner: "usr_coord99".into(),
            created_at_ms: 1_774_512_000_000,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ChannelSpec>(&text).unwrap(), spec);
        let v = ChannelView {
            spec: &spec,
            status: Status::Connected,
            event_count: 14,
            last_event_at_ms: None,
        };
        let created = v.created("wss://realtime.example.com/");
        let keys: Vec<&str> = created
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "channel_id",
                "subscription_type",
                "organisation_id",
                "user_id",
                "websocket_url",
                "status",
                "created_at"
            ]
        );
        assert_eq!(
            created["websocket_url"],
            "wss://realtime.example.com/channels/chan_b5c6d7e8"
        );
        let d = v.detail("ws://h");
        assert_eq!(d["event_count"], 14);
        assert_eq!(d["last_event_at"], Value::Null);
        let (path, f) = spec.kind.subscription().unwrap();
        assert_eq!(path, "claims");
        let f = f.unwrap();
        assert!(f.matches(&json!({"organisation_id": "org_001"})));
        assert!(!f.matches(&json!({"organisation_id": "org_002"})));
        let odd = ChannelKind::UserClaims {
            user_id: "a'b\"c\\d".into(),
        };
        assert!(odd
            .subscription()
            .unwrap()
            .1
            .unwrap()
            .matches(&json!({"user_id": "a'b\"c\\d"})));
        assert!(valid_channel_id(&new_channel_id()));
        assert!(!valid_channel_id("chan_../x"));
    }
}
