//! The backend seam: everything a node keeps beyond its connections — sequencing, the
//! history window, entity state, tickets, and the durable service queues, locks and
//! channels — behind one interface, chosen at start-up ([`open`]).
//!
//! [`LocalBackend`] is the single-node implementation: the sequencer of [`crate::ingest`]
//! and the embedded [`crate::store`]. Cluster mode adds a Redis one beside it; no
//! feature reaches past this trait, so what it keeps works the same on either, and
//! `tests/backend_conformance.rs` runs the same behaviours against every implementation.
//!
//! What the trait asks of an implementation, so that a remote one fits: every answer may
//! come later through the shard's mailbox ([`ReplyTo`], [`Answer`]), tickets included;
//! `seq`s it hands out are cluster-wide and strictly increasing; the node's replica and
//! history are fed in `seq` order, and [`Backend::applied_seq`] says how far, apart from
//! [`Backend::head_seq`], how far the sequence has gone anywhere.
//!
//! Shards stay synchronous: every method returns at once. Work that must wait (a group
//! commit) answers later through the shard's mailbox ([`ReplyTo`]); nothing on the
//! fan-out path calls in here.

mod local;

use std::sync::Arc;

pub use local::LocalBackend;

use crate::auth::jwt::Claims;
use crate::config::Config;
use crate::entities::{EntityWrite, Replica};
use crate::ingest::{PublishItem, PublishOutcome};
use crate::metrics::Source;
use crate::publication::Publication;
use crate::router::{Answer, ReplyTo, Router};
use crate::services::ServiceCmd;

/// Who published, and so how a deferred answer is shaped.
#[derive(Clone, Debug)]
pub enum PublishReply {
    /// `POST /api/v1/publish`: `202 {"accepted","firstSeq","lastSeq"}`.
    Rest(ReplyTo),
    /// A service's `publish` over its socket: `{"type":"published","requestId","seq"}`.
    Socket(ReplyTo, Option<serde_json::Value>),
    /// Nobody waits for an answer (a service's `log`, PROTOCOL.md §10); a failure is
    /// logged.
    Nobody,
}

impl PublishReply {
    pub fn source(&self) -> Source {
        match self {
            PublishReply::Rest(_) => Source::Http,
            PublishReply::Socket(..) | PublishReply::Nobody => Source::Websocket,
        }
    }
}

/// What a node asks of the state it shares (see the module docs).
pub trait Backend: Send + Sync {
    /// Sequences plain publications. `Some` when the backend could answer at once (the
    /// local one, when they were handed to every shard and nothing else is owed);
    /// `None` when the answer comes later, to `reply` (service tasks to make durable
    /// first, or a round trip to Redis). Callers handle both; with
    /// [`PublishReply::Nobody`] nobody is answered either way.
    fn publish(&self, items: &[PublishItem], reply: PublishReply) -> Option<PublishOutcome>;

    /// A command for the service queues and locks (PROTOCOL.md §10); answers come
    /// through the shards' mailboxes.
    fn services(&self, cmd: ServiceCmd);

    /// A durable entity write; the answer always comes later, to `reply`, once durable.
    fn write_entity(&self, write: EntityWrite, reply: ReplyTo);

    /// Issues a one-time WebSocket ticket for `claims` (PROTOCOL.md §2) that expires
    /// after `ttl_ms` or at the token's `exp`, whichever is first; answers `reply` with
    /// the REST answer ([`ticket_issued`]).
    fn issue_ticket(&self, claims: Claims, ttl_ms: u64, reply: ReplyTo);

    /// Redeems `ticket` once; answers `reply` with [`Answer::Ticket`]. Any node may redeem
    /// a ticket any node issued (PROTOCOL.md §14).
    fn redeem_ticket(&self, ticket: &str, reply: ReplyTo);

    /// The newest `seq` this node has applied: its replica and history hold it and it
    /// was handed to every shard (a shard may not have taken it in yet).
    fn applied_seq(&self) -> u64;

    /// The newest `seq` assigned anywhere: the cluster's head. Never below
    /// [`Backend::applied_seq`]; on a single node, equal to it. A `since` beyond it is in
    /// the future; one between the two waits for this node to apply it.
    fn head_seq(&self) -> u64;

    /// Calls `f` for each retained publication with `since < seq <= upto`, in order;
    /// returns whether the retained history reached back that far (`recovered`).
    fn replay(&self, since: u64, upto: u64, f: &mut dyn FnMut(&Arc<Publication>)) -> bool;

    /// Every entity's current state, as of the newest publication handed to the shards.
    fn replica(&self) -> &Replica;

    /// Whether the backend can take writes (`/readyz`).
    fn ready(&self) -> bool;

    /// Stops taking writes, finishes what is queued (every accepted write is answered),
    /// releases files.
    fn close(&self);
}

/// The REST answer to `POST /api/v1/ws-tickets` (every backend answers the same).
pub fn ticket_issued(uuid: &str, expires_ms: u64) -> Answer {
    Answer::Http {
        status: 201,
        body: serde_json::json!({"uuid": uuid, "expiresAt": crate::time::rfc3339_ms(expires_ms)}),
    }
}

/// Opens the backend the configuration names.
pub fn open(config: &Config, router: Arc<Router>) -> Result<Arc<dyn Backend>, String> {
    if !config.cluster.redis_url.is_empty() {
        return Err(
            "cluster.redis_url: cluster mode is not implemented in this server version; \
             leave it empty to run a single node"
                .into(),
        );
    }
    Ok(Arc::new(LocalBackend::open(config, router)?))
}
