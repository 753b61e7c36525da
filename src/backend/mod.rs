//! The backend seam: everything a node keeps beyond its connections — sequencing, the
//! history window, entity state, and (next) durable service queues, locks, channels and
//! tickets — behind one interface, chosen at start-up ([`open`]).
//!
//! [`LocalBackend`] is the single-node implementation: the sequencer of [`crate::ingest`]
//! and the embedded [`crate::store`]. The cluster issue adds a Redis one beside it; no
//! feature reaches past this trait, so what it keeps works the same on either.
//!
//! Shards stay synchronous: every method returns at once. Work that must wait (a group
//! commit) answers later through the shard's mailbox ([`ReplyTo`]); nothing on the
//! fan-out path calls in here.

mod local;

use std::sync::Arc;

pub use local::LocalBackend;

use crate::config::Config;
use crate::entities::{EntityWrite, Replica};
use crate::ingest::{PublishItem, PublishOutcome};
use crate::metrics::Source;
use crate::publication::Publication;
use crate::router::{ReplyTo, Router};
use crate::services::ServiceCmd;

/// Who published, and so how a deferred answer is shaped.
#[derive(Clone, Debug)]
pub enum PublishReply {
    /// `POST /api/v1/publish`: `202 {"accepted","firstSeq","lastSeq"}`.
    Rest(ReplyTo),
    /// A service's `publish` over its socket: `{"type":"published","requestId","seq"}`.
    Socket(ReplyTo, Option<serde_json::Value>),
}

impl PublishReply {
    pub fn source(&self) -> Source {
        match self {
            PublishReply::Rest(_) => Source::Http,
            PublishReply::Socket(..) => Source::Websocket,
        }
    }
}

/// What a node asks of the state it shares (see the module docs).
pub trait Backend: Send + Sync {
    /// Sequences plain publications. `Some` when they were handed to every shard and
    /// nothing else is owed (the publisher is answered now); `None` when some became
    /// service tasks: the answer comes once they are durable, to `reply`.
    fn publish(&self, items: &[PublishItem], reply: PublishReply) -> Option<PublishOutcome>;

    /// A command for the service queues and locks (PROTOCOL.md §10); answers come
    /// through the shards' mailboxes.
    fn services(&self, cmd: ServiceCmd);

    /// A durable entity write; the answer always comes later, to `reply`, once durable.
    fn write_entity(&self, write: EntityWrite, reply: ReplyTo);

    /// The newest `seq` handed to the shards.
    fn last_seq(&self) -> u64;

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
