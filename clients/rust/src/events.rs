//! What the connection tells the app: [`ClientEvent`]s (through `Client::events`) and
//! the [`Delivery`]s of one subscription.
//!
//! Plain data, produced only by the connection driver.

use std::time::Duration;

use crate::protocol::{Event, ServerError, SubscriptionRefresh, Warning};

/// The connection's state, as [`ClientEvent::State`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    /// Authenticated; subscriptions and live queries are being restored.
    Connected {
        connection_id: String,
    },
    /// Lost; the next attempt comes after `retry_in` (the drain close's delay, or the
    /// backoff's).
    Disconnected {
        code: Option<u16>,
        reason: String,
        retry_in: Duration,
    },
    /// For good: closed by the app, refused (4001, 4002, 1000), or reconnecting is off.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// Connection-level events (see `Client::events`).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    State(ConnectionState),
    /// `QUEUE_OVERFLOW`: events (or a live query's messages) were dropped; re-sync.
    Overflow(Warning),
    /// A resubscription after a reconnect was answered `recovered: false`: what happened
    /// after `since` is not all retained, so the app re-syncs that subscription.
    Resync {
        subscription_id: String,
        since: u64,
    },
    /// An `error` that answers no request of this client (or a refused resubscription).
    Error(ServerError),
}

/// What a subscription's stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Event(Event),
    Refresh(SubscriptionRefresh),
}
