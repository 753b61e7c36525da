//! The node: what every thread of one running server shares, and who may change what.
//!
//! Built once by [`crate::server::Server::start`] and handed to every shard as an
//! `Arc<Node>`. Everything here is either read-only after start (configuration, the
//! backend handle, the metrics handle, the node's tag) or owns its own synchronization and
//! says who writes it:
//! - [`Node::backend`]: sequencing, history, entity state and everything durable
//!   ([`crate::backend`]); any shard calls it for the requests it read.
//! - the draining flag: set once, by the server at SIGTERM; read by every shard.
//! - [`Node::offload`]: threads for whole-collection scans; any shard submits, each job
//!   answers through the submitting shard's mailbox.
//! - the WebSocket connection count: each shard adds and removes its own connections
//!   (`max_connections` spans shards).
//!
//! No field is public: a newcomer can read what a thread may do with the node from the
//! methods alone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::backend::Backend;
use crate::config::Config;
use crate::entities::Cursors;

/// See the module docs.
pub struct Node {
    config: Config,
    backend: Arc<dyn Backend>,
    /// Signs and checks entity list cursors (a key derived from the JWT secret).
    cursors: Cursors,
    prometheus: PrometheusHandle,
    /// Set at SIGTERM: `/readyz` fails from then on.
    draining: AtomicBool,
    /// Open WebSocket connections on all shards.
    ws_connections: AtomicUsize,
    /// Open plain HTTP clients on all shards (a whole request arrived that was not an
    /// upgrade), capped by `limits.max_http_connections`; connections that have not sent
    /// a whole request yet are not counted here.
    http_connections: AtomicUsize,
    /// A short random tag, so `connectionId`s differ across restarts.
    id: String,
    /// `auth.allowed_origins`, checked.
    origins: crate::origin::Origins,
    /// The token keys (`auth.jwt_secret`, `auth.jwt_public_key`), loaded at start-up.
    keys: crate::auth::jwt::Keys,
    /// When the node was built (unix ms): the operator console's uptime.
    started_ms: u64,
    /// Threads for the scans no shard may run on its loop ([`crate::offload`]).
    offload: crate::offload::Offload,
}

impl Node {
    pub fn new(
        config: Config,
        keys: crate::auth::jwt::Keys,
        backend: Arc<dyn Backend>,
        prometheus: PrometheusHandle,
    ) -> Node {
        let id = format!(
            "{:06x}",
            crate::time::unix_ms() & 0xFF_FFFF ^ std::process::id() as u64
        );
        // Validated with the configuration; the loopback default should that be skipped.
        let origins = crate::origin::Origins::from_config(&config.auth.allowed_origins)
            .unwrap_or(crate::origin::Origins::Loopback);
        Node {
            origins,
            keys,
            cursors: Cursors::new(config.auth.jwt_secret.as_bytes()),
            config,
            backend,
            prometheus,
            draining: AtomicBool::new(false),
            ws_connections: AtomicUsize::new(0),
            http_connections: AtomicUsize::new(0),
            id,
            started_ms: crate::time::unix_ms(),
            offload: crate::offload::Offload::start(),
        }
    }

    /// The pool that runs whole-collection scans off the shards ([`crate::offload`]).
    pub fn offload(&self) -> &crate::offload::Offload {
        &self.offload
    }

    /// What tokens are checked with (PROTOCOL.md §1).
    pub fn keys(&self) -> &crate::auth::jwt::Keys {
        &self.keys
    }

    /// Which browser origins may use the node (PROTOCOL.md §11).
    pub fn origins(&self) -> &crate::origin::Origins {
        &self.origins
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend as a handle a job on another thread can hold ([`crate::offload`]).
    pub fn backend_handle(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn cursors(&self) -> &Cursors {
        &self.cursors
    }

    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.prometheus
    }

    /// The node's stable id (`cluster.node_id`, resolved at start-up: [`crate::node_id`]).
    pub fn node_id(&self) -> &str {
        &self.config.cluster.node_id
    }

    /// When the node started (unix ms).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The node's tag (the first part of every `connectionId`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// SIGTERM (the server, once).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// A shard opened a WebSocket connection; returns how many are open now.
    pub fn connection_opened(&self) -> usize {
        self.ws_connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A shard closed one of its WebSocket connections.
    pub fn connection_closed(&self) {
        self.ws_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A shard accepted a connection (it starts as HTTP); returns how many non-WebSocket
    /// connections are open now.
    pub fn http_opened(&self) -> usize {
        self.http_connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Open non-WebSocket connections on all shards.
    pub fn http_connections(&self) -> usize {
        self.http_connections.load(Ordering::Relaxed)
    }

    /// A non-WebSocket connection closed or became a WebSocket.
    pub fn http_closed(&self) {
        self.http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
