//! The wire contract's messages (PROTOCOL.md v1) as serde types: [`ClientMessage`] (what a
//! client sends) and [`ServerMessage`] (what the server sends), with the protocol's names.
//!
//! Owned by this crate and public: it is the whole of what the client knows about the
//! server (no server internals). Pure data; the connection driver (`connection.rs`) is the
//! only code that puts these on a socket. Field names are camelCase on the wire, as the
//! contract says; `Option` fields that are `None` are left out when sending.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Flush framing (PROTOCOL.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Each message its own WebSocket frame.
    Frames,
    /// One `batch` message per flush.
    Array,
}

impl Framing {
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Frames => "frames",
            Framing::Array => "array",
        }
    }
}

/// Connection options (section 2): sent as URL parameters, or as the `auth` message's
/// `options`. `None`: the server's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framing: Option<Framing>,
    /// A service's group (services only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl ConnectionOptions {
    pub fn is_empty(&self) -> bool {
        self == &ConnectionOptions::default()
    }

    /// The options as URL query pairs, in the protocol's names.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(v) = self.batch_ms {
            q.push(("batchMs", v.to_string()));
        }
        if let Some(v) = self.batch_max {
            q.push(("batchMax", v.to_string()));
        }
        if let Some(v) = self.framing {
            q.push(("framing", v.as_str().to_string()));
        }
        if let Some(v) = &self.group {
            q.push(("group", v.clone()));
        }
        q
    }
}

/// One entry of `subscribeEvents` (section 5).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub path: String,
    /// Empty: every event type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Replay retained publications with `seq > since` first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl Subscription {
    /// A subscription to everything under `path`.
    pub fn new(id: impl Into<String>, path: impl Into<String>) -> Subscription {
        Subscription {
            id: id.into(),
            path: path.into(),
            ..Subscription::default()
        }
    }

    pub fn events<I: IntoIterator<Item = S>, S: Into<String>>(mut self, events: I) -> Self {
        self.events = events.into_iter().map(Into::into).collect();
        self
    }

    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    pub fn since(mut self, since: u64) -> Self {
        self.since = Some(since);
        self
    }
}

/// A live query's `query` (section 7).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveQuerySpec {
    /// An entity collection.
    pub edge: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `field [asc|desc]` items joined by commas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    Auth {
        token: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        options: Option<ConnectionOptions>,
    },
    #[serde(rename_all = "camelCase")]
    SubscribeEvents {
        request_id: String,
        subscriptions: Vec<Subscription>,
    },
    #[serde(rename_all = "camelCase")]
    UnsubscribeEvents {
        request_id: String,
        ids: Vec<String>,
    },
    Ping,
    Pong,
    #[serde(rename_all = "camelCase")]
    CreateLiveQuery {
        id: String,
        query: LiveQuerySpec,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    DestroyLiveQuery {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    TaskComplete {
        task_ids: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    TaskFailed {
        task_ids: Vec<String>,
        retry_in_ms: u64,
    },
    #[serde(rename_all = "camelCase")]
    Lock {
        request_id: String,
        name: String,
        ttl_ms: u64,
        wait_ms: u64,
    },
    #[serde(rename_all = "camelCase")]
    Unlock {
        request_id: String,
        name: String,
    },
    Log {
        level: LogLevel,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fields: Option<serde_json::Map<String, Value>>,
    },
    #[serde(rename_all = "camelCase")]
    Publish {
        request_id: String,
        path: String,
        event_type: String,
        data: Value,
    },
}

impl ClientMessage {
    /// Sets the `requestId` of a message that carries one (the driver numbers requests).
    pub(crate) fn set_request_id(&mut self, id: String) {
        match self {
            ClientMessage::SubscribeEvents { request_id, .. }
            | ClientMessage::UnsubscribeEvents { request_id, .. }
            | ClientMessage::Lock { request_id, .. }
            | ClientMessage::Unlock { request_id, .. }
            | ClientMessage::Publish { request_id, .. } => *request_id = id,
            ClientMessage::CreateLiveQuery { request_id, .. }
            | ClientMessage::DestroyLiveQuery { request_id, .. } => *request_id = Some(id),
            _ => {}
        }
    }
}

/// A service log level (section 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// `event` (sections 6, 9, 10): a publication, a channel's event or a service's task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The subscriptions of this connection it matched; empty on channel sockets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_ids: Vec<String>,
    /// Set on channel sockets (`/channels/{id}`) instead of `subscriptionIds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    pub event_type: String,
    pub path: String,
    #[serde(default)]
    pub data: Value,
    pub timestamp: String,
    pub seq: u64,
    /// Services: the task to acknowledge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Services: how often this task was sent (1 on the first delivery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// `subscriptionRefresh` (section 6): an entity left a filtered subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRefresh {
    pub subscription_id: String,
    pub path: String,
    pub entity_id: String,
    pub seq: u64,
}

/// An entry of `subscribedEvents.subscriptions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub id: String,
    pub path: String,
    #[serde(default)]
    pub events: Vec<String>,
    /// The newest seq at subscribe time: live delivery starts after it.
    pub seq: u64,
    /// Present only when `since` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// An entry of `subscribedEvents.rejected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub id: String,
    pub code: String,
    pub message: String,
}

/// `error` (section 11).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `warning` (sections 6, 7): `QUEUE_OVERFLOW` for a subscription or a live query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_query_id: Option<String>,
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub message: String,
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Authenticated {
        connection_id: String,
        heartbeat_ms: u64,
    },
    Error(ServerError),
    Warning(Warning),
    Ping,
    Pong,
    Batch {
        messages: Vec<ServerMessage>,
    },
    #[serde(rename_all = "camelCase")]
    SubscribedEvents {
        #[serde(default)]
        request_id: Option<String>,
        subscriptions: Vec<Subscribed>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rejected: Vec<Rejected>,
    },
    #[serde(rename_all = "camelCase")]
    UnsubscribedEvents {
        #[serde(default)]
        request_id: Option<String>,
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        not_found: Vec<String>,
    },
    Event(Event),
    SubscriptionRefresh(SubscriptionRefresh),
    #[serde(rename_all = "camelCase")]
    LiveQueryCreated {
        id: String,
        total_count: u64,
        capped: bool,
    },
    #[serde(rename_all = "camelCase")]
    LiveQueryData {
        id: String,
        data: Vec<Value>,
        has_more: bool,
        capped: bool,
    },
    #[serde(rename_all = "camelCase")]
    LiveQueryAddedNode {
        id: String,
        node_id: String,
        data: Value,
    },
    #[serde(rename_all = "camelCase")]
    LiveQueryUpdatedNode {
        id: String,
        node_id: String,
        data: Value,
    },
    #[serde(rename_all = "camelCase")]
    LiveQueryRemovedNode {
        id: String,
        node_id: String,
    },
    #[serde(rename_all = "camelCase")]
    LiveQueryDestroyed {
        id: String,
        #[serde(default)]
        request_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    LockResult {
        request_id: Option<String>,
        name: String,
        acquired: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fencing_token: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    UnlockResult {
        request_id: Option<String>,
        name: String,
        released: bool,
    },
    #[serde(rename_all = "camelCase")]
    Published {
        request_id: Option<String>,
        seq: u64,
    },
    /// A `type` this version does not know (ignored, so a newer server does not break it).
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    /// The `requestId` an answer echoes, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ServerMessage::Error(e) => e.request_id.as_deref(),
            ServerMessage::SubscribedEvents { request_id, .. }
            | ServerMessage::UnsubscribedEvents { request_id, .. }
            | ServerMessage::LiveQueryDestroyed { request_id, .. }
            | ServerMessage::LockResult { request_id, .. }
            | ServerMessage::UnlockResult { request_id, .. }
            | ServerMessage::Published { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_have_the_contract_shape() {
        let m = ClientMessage::SubscribeEvents {
            request_id: "req-1".into(),
            subscriptions: vec![Subscription::new("my-jobs", "jobs")
                .events(["jobCompleted"])
                .filter("status == 'failed'")
                .since(1234)],
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"subscribeEvents","requestId":"req-1","subscriptions":[
                {"id":"my-jobs","path":"jobs","events":["jobCompleted"],
                 "filter":"status == 'failed'","since":1234}]})
        );
        let m = ClientMessage::TaskFailed {
            task_ids: vec!["g:1".into()],
            retry_in_ms: 1000,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"taskFailed","taskIds":["g:1"],"retryInMs":1000})
        );
        let m = ClientMessage::Auth {
            token: "t".into(),
            options: Some(ConnectionOptions {
                batch_ms: Some(0),
                framing: Some(Framing::Array),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"auth","token":"t","options":{"batchMs":0,"framing":"array"}})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Pong).unwrap(),
            json!({"type":"pong"})
        );
    }

    #[test]
    fn server_messages_parse() {
        let m: ServerMessage = serde_json::from_value(json!({"type":"event",
            "subscriptionIds":["a"],"eventType":"x","path":"jobs/1","data":{"k":1},
            "timestamp":"2026-03-26T08:14:22.123Z","seq":7,"taskId":"g:7","attempt":2}))
        .unwrap();
        let ServerMessage::Event(e) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (e.seq, e.attempt, e.task_id.as_deref()),
            (7, Some(2), Some("g:7"))
        );
        let m: ServerMessage = serde_json::from_value(json!({"type":"batch","messages":[
            {"type":"ping"},{"type":"warning","code":"QUEUE_OVERFLOW","subscriptionId":"s",
             "dropped":5,"message":"m"}]}))
        .unwrap();
        let ServerMessage::Batch { messages } = m else {
            panic!()
        };
        assert_eq!(messages[0], ServerMessage::Ping);
        assert!(matches!(&messages[1], ServerMessage::Warning(w) if w.dropped == 5));
        let m: ServerMessage =
            serde_json::from_value(json!({"type":"somethingNew","x":1})).unwrap();
        assert_eq!(m, ServerMessage::Unknown);
        let m: ServerMessage = serde_json::from_value(
            json!({"type":"error","code":"INVALID_FILTER","message":"m","requestId":"r"}),
        )
        .unwrap();
        assert_eq!(m.request_id(), Some("r"));
    }
}
