//! `shardcast-client`: a tokio client for shardcast's WebSocket protocol
//! (`docs/PROTOCOL.md` v1 in the repository) and the REST calls a client needs.
//!
//! Built on the public message types of this crate only; it does not depend on the
//! server crate. `ws://` and `http://` only: no TLS (a named gap; put a TLS-terminating
//! proxy in front, or add `tokio-tungstenite`'s TLS feature when it is needed).
//!
//! # Layout
//!
//! - [`protocol`]: every client and server message as serde types, the protocol's names.
//! - `client.rs`: the public handle [`Client`], [`SubscriptionHandle`], [`LiveQuery`].
//! - `connection.rs`: the one task per client that owns the socket and all connection
//!   state; connects, authenticates, routes, answers `ping`, reconnects and restores.
//! - `options.rs`: [`ClientOptions`] and [`Auth`] (credential callbacks).
//! - `events.rs`: [`ClientEvent`], [`ConnectionState`], [`Delivery`].
//! - [`backoff`]: jittered exponential backoff, the drain close's delay, close codes.
//! - [`live_query`]: the sorted local view of a live query ([`LiveView`]).
//! - [`rest`]: `POST /api/v1/publish` and `/api/v1/ws-tickets` over a small HTTP/1.1
//!   client.
//!
//! Imports go one way, no cycles: `client` → `connection` → (`options`, `events`,
//! `backoff`, `live_query`, `rest`) → (`protocol`, `error`); `options` also imports
//! `backoff` (the policy) and `rest` (ticket fetching).
//!
//! ```no_run
//! # async fn demo() -> Result<(), shardcast_client::Error> {
//! use shardcast_client::{Auth, Client, ClientOptions, Subscription};
//! let client = Client::connect(ClientOptions::new("ws://127.0.0.1:8080/ws", Auth::token("JWT"))).await?;
//! let mut jobs = client.subscribe(Subscription::new("my-jobs", "jobs")).await?;
//! while let Some(event) = jobs.next_event().await {
//!     println!("{} {} {}", event.seq, event.event_type, event.data);
//! }
//! # Ok(()) }
//! ```

pub mod backoff;
mod client;
mod connection;
mod error;
mod events;
pub mod live_query;
mod options;
pub mod protocol;
pub mod rest;

pub use backoff::ReconnectPolicy;
pub use client::{Client, LiveQuery, Lock, SubscriptionHandle};
pub use error::Error;
pub use events::{ClientEvent, ConnectionState, Delivery};
pub use live_query::{LiveChange, LiveView};
pub use options::{Auth, ClientOptions, CredentialFn, CredentialFuture};
pub use protocol::{
    ConnectionOptions, Event, Framing, LiveQuerySpec, LogLevel, Subscription, SubscriptionRefresh,
    Warning,
};
pub use rest::Rest;
