//! shardcast: a real-time push engine. Backends publish; shardcast pushes to very many
//! WebSocket clients.
//!
//! # Layout (the data flow, in order)
//!
//! - [`api`] + [`http`]: REST on the shared port. `POST /api/v1/publish` is validated
//!   whole on the shard that read it, then handed to ingest.
//! - [`ingest`]: the sequencer, run by that shard under one short lock. Assigns `seq`
//!   and `timestamp`, encodes each publication's JSON once
//!   ([`protocol::encode_event_tail`]), hands one pointer to each shard through the
//!   [`router`]; the shard then answers the publisher.
//! - [`router`]: one bounded lock-free queue per shard, with a coalesced wake-up; a full
//!   queue never stalls ingest (see its docs for what happens instead).
//! - [`shard`]: thread per core. Each shard owns its listener (`SO_REUSEPORT`), its
//!   connections, its subscription index, per-connection rings, feeds and flush timers.
//!   It matches a publication with one hash lookup per path prefix, builds each distinct
//!   message once, appends it once per feed (connections holding the same single
//!   subscription share one log, each with a cursor) or queues a pointer in a
//!   connection's ring, and flushes a connection with one vectored write.
//! - [`protocol`]: the wire contract (messages, codes, paths) and [`protocol::ws`], the
//!   RFC 6455 codec.
//! - [`auth`]: JWT, tickets, api keys. [`options`]: per-connection delivery options.
//! - [`config`], [`cli`], [`metrics`], [`server`] (start and drain), [`time`].

pub mod api;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod config;
pub mod entities;
pub mod filter;
pub mod history;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod options;
pub mod protocol;
pub mod router;
pub mod server;
pub mod shard;
pub mod store;
pub mod time;
