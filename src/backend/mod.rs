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
mod redis;

use std::sync::Arc;

pub use self::redis::RedisBackend;
pub use local::LocalBackend;

use crate::auth::jwt::Claims;
use crate::config::Config;
use crate::entities::{EntityWrite, Replica};
use crate::ingest::{PublishItem, PublishOutcome};
use crate::metrics::Source;
use crate::protocol::Refusal;
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

    /// The paths published through this node, counted per request off the shards
    /// ([`crate::topk`]): the operator console's busiest paths.
    fn busiest_paths(&self) -> &crate::topk::BusiestPaths;

    /// Cluster mode: shares this node's overview row (`row`, called every few seconds off
    /// the shards) with the other nodes, for the operator console. A single node has no
    /// one to share it with.
    fn share_node_row(&self, _row: Box<dyn Fn() -> serde_json::Value + Send + Sync>) {}

    /// Cluster mode: every running node's latest overview row, as last read (never a
    /// round trip: shards call it). `None` on a single node, or before the first read.
    fn node_rows(&self) -> Option<Vec<serde_json::Value>> {
        None
    }

    /// A command for the service queues and locks (PROTOCOL.md §10); answers come
    /// through the shards' mailboxes.
    fn services(&self, cmd: ServiceCmd);

    /// Whether entity reads must wait (cluster mode: until this node has applied every
    /// write answered anywhere before the read) and so go through
    /// [`Backend::read_entities`]; if not, the shard runs them on the replica at once.
    fn reads_wait(&self) -> bool {
        false
    }

    /// Runs `read` on the replica once it reflects every write answered before now, and
    /// answers `reply` with what it returns (the shard calls it when
    /// [`Backend::reads_wait`]).
    fn read_entities(&self, read: crate::entities::EntityRead, reply: ReplyTo);

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

/// Where a publisher's answer goes and what it is, when it was published (`None`:
/// nobody waits for it).
pub(crate) fn published(reply: PublishReply, outcome: PublishOutcome) -> Option<(ReplyTo, Answer)> {
    match reply {
        PublishReply::Rest(to) => Some((
            to,
            Answer::Http {
                status: 202,
                body: serde_json::json!({"accepted": outcome.accepted, "firstSeq": outcome.first_seq, "lastSeq": outcome.last_seq}),
            },
        )),
        PublishReply::Socket(to, request_id) => Some((
            to,
            Answer::Ws(crate::protocol::published_message(
                request_id.as_ref(),
                outcome.last_seq,
            )),
        )),
        PublishReply::Nobody => None,
    }
}

/// Answers a publisher: with `outcome`, or with why it was not published (the REST
/// status and the refusal; a socket gets the refusal as an `error`).
pub(crate) fn publish_answered(
    router: &Router,
    reply: PublishReply,
    outcome: PublishOutcome,
    result: Result<(), (u16, Refusal)>,
) {
    match (reply, result) {
        (reply, Ok(())) => {
            if let Some((to, answer)) = published(reply, outcome) {
                router.answer(to, answer)
            }
        }
        (PublishReply::Rest(to), Err((status, r))) => router.answer(to, refusal_answer(status, &r)),
        (PublishReply::Socket(to, request_id), Err((_, r))) => router.answer(
            to,
            Answer::Ws(crate::protocol::error_message(
                r.code,
                &r.message,
                request_id.as_ref(),
            )),
        ),
        (PublishReply::Nobody, Err((_, r))) => {
            tracing::error!(
                seq = outcome.last_seq,
                "a publication nobody waits for failed: {}",
                r.message
            )
        }
    }
}

/// The answer to an entity write: 200 `{"seq","op"}`.
pub(crate) fn entity_answer(seq: u64, op: &str) -> Answer {
    Answer::Http {
        status: 200,
        body: serde_json::json!({"seq": seq, "op": op}),
    }
}

/// A REST refusal: `status` and `{"error":{"code","message"}}`.
pub(crate) fn refusal_answer(status: u16, r: &Refusal) -> Answer {
    Answer::Http {
        status,
        body: serde_json::json!({"error": {"code": r.code.as_str(), "message": r.message}}),
    }
}

/// Answers a service command `UNAVAILABLE` — REST 503, an `error` on the socket, a
/// channel socket closed 1013 (try again later) — `why` following the name of what was
/// refused (cluster mode: Redis cannot be reached).
pub(crate) fn services_refused(router: &Router, cmd: ServiceCmd, why: &str) {
    use crate::protocol::{error_message, ErrorCode};
    let to = |at: crate::services::Addr| ReplyTo {
        shard: at.shard as usize,
        conn: at.conn,
        gen: at.gen,
        req: 0,
    };
    let ws = |at, what: &str, request_id: Option<&serde_json::Value>| {
        let m = error_message(ErrorCode::Unavailable, &format!("{what} {why}"), request_id);
        router.answer(to(at), Answer::Ws(m));
    };
    match cmd {
        ServiceCmd::Attach { .. }
        | ServiceCmd::Detach { .. }
        | ServiceCmd::ChannelWritten { .. } => {}
        ServiceCmd::Subscribe { at, request_id, .. } => ws(
            at,
            "subscribeEvents on a service connection",
            request_id.as_ref(),
        ),
        ServiceCmd::Unsubscribe { at, request_id, .. } => ws(
            at,
            "unsubscribeEvents on a service connection",
            request_id.as_ref(),
        ),
        ServiceCmd::Complete { .. } => {}
        ServiceCmd::Failed { at, .. } => ws(at, "taskFailed", None),
        ServiceCmd::Lock { at, request_id, .. } => ws(at, "lock", request_id.as_ref()),
        ServiceCmd::Unlock { at, request_id, .. } => ws(at, "unlock", request_id.as_ref()),
        ServiceCmd::Ops { reply, .. } => router.answer(
            reply,
            refusal_answer(
                503,
                &Refusal::new(
                    ErrorCode::Unavailable,
                    format!("the services REST API {why}"),
                ),
            ),
        ),
        ServiceCmd::Channels { reply, .. } => router.answer(
            reply,
            refusal_answer(
                503,
                &Refusal::new(
                    ErrorCode::Unavailable,
                    format!("the channels REST API {why}"),
                ),
            ),
        ),
        ServiceCmd::ChannelAttach { at, .. } => at.close(
            router,
            crate::protocol::ws::close::SERVER_FULL,
            "try again later",
            Some(error_message(
                ErrorCode::Unavailable,
                &format!("a channel socket {why}"),
                None,
            )),
        ),
    }
}

/// Opens the backend the configuration names.
pub fn open(config: &Config, router: Arc<Router>) -> Result<Arc<dyn Backend>, String> {
    if !config.cluster.redis_url.is_empty() {
        return Ok(Arc::new(RedisBackend::open(config, router)?));
    }
    Ok(Arc::new(LocalBackend::open(config, router)?))
}
