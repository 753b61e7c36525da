//! `since` recovery on a shard (PROTOCOL.md §5): the retained publications a new
//! subscription missed, replayed in order before anything live.
//!
//! Part of [`Shard`]. The seam: a subscription is registered in the index when the shard
//! has received every publication up to its `last_seq` `L` and none after (all of that
//! happens between two mailbox reads), so publications after `L` reach it live, and the
//! replay covers exactly `since < seq <= L` from the backend's history. Nothing is missed
//! at the seam and nothing arrives twice. A `since` beyond `L` but not beyond the
//! backend's head (this shard lags ingest by its queue, or this node lags the cluster) is
//! first caught up by taking in what is queued ([`Shard::caught_up`]); if that is not
//! enough, the command waits on the shard's list of parked subscribes, looked at again
//! every loop turn ([`Shard::retry_parked`]), while the shard goes on with its other
//! connections and nothing more of this one is read; still ahead after
//! [`CATCH_UP_WAIT`], the subscription is refused `UNAVAILABLE`. (It used to wait on the
//! shard, holding every other connection of it for up to 250 ms: issue 21.)
//!
//! Replayed messages are written straight to the connection's output, after the
//! `subscribedEvents` answer, so they never meet the ring's oldest-drop: the history
//! window bounds them. With `framing=array` they come as `batch` messages of at most
//! `batchMax`.
//!
//! **Off the shard** (issue 21: no shard stalls): a replay of the whole window (100k
//! publications) took ~300 ms to match and encode, so the scan and the encoding run on a
//! [`crate::offload`] thread, which prepares the `subscribedEvents` answer (its
//! `recovered` is known only then) and the replayed frames, and sends them back through
//! the mailbox (`ShardMsg::Replayed`). The subscription is in the index from the answer's
//! `last_seq` on, as before; while the replay is being prepared, the connection's
//! flushes are held (`WsState::replaying`, and it joins no feed), so what arrives live
//! waits in its ring (oldest-drop applies) and goes out after the replay.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::auth::jwt::Role;
use crate::config::Framing;
use crate::protocol::{self, path_prefixes, ws, SubscriptionRequest};
use crate::publication::Publication;

use super::conn::Subscription;
use super::Shard;

/// How long a subscription with a `since` this shard has not reached waits for it to
/// catch up (see [`Shard::retry_parked`]).
pub(super) const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// A `subscribeEvents` waiting for this shard to reach its `since` (see the module docs).
pub(super) struct Parked {
    pub key: u32,
    pub gen: u32,
    pub role: Role,
    pub requests: Vec<SubscriptionRequest>,
    pub request_id: Option<Value>,
    /// The highest `since` of the command.
    pub since: u64,
    /// Shard time (ms) after which it is answered, caught up or not.
    pub until: u64,
}

/// A replayed publication and whether it is an event or a refresh for the subscription.
pub type Replayed = Vec<(Arc<Publication>, bool)>;

impl Shard {
    /// Takes in what is queued for this shard, once (one drain, bounded in time), without
    /// waiting; returns whether it has now seen `seq`.
    pub(super) fn caught_up(&mut self, seq: u64) -> bool {
        self.reached(seq, true)
    }

    /// Whether this shard has seen `seq`, after one drain of its queue if `drain`.
    fn reached(&mut self, seq: u64, drain: bool) -> bool {
        if self.last_seq >= seq {
            return true;
        }
        // Every publication applied before this read was pushed to this shard first
        // (the applier moves its mark after the pushes): once the queue is taken in and
        // idle, the shard holds everything up to it, including what a cluster node
        // applied without delivering (its start-up window).
        let applied = self.node.backend().applied_seq();
        if drain {
            self.drain_mailbox();
        }
        if self.mailbox.is_idle() {
            self.last_seq = self.last_seq.max(applied);
        }
        self.last_seq >= seq
    }

    /// Parks a `subscribeEvents` whose `since` this shard has not reached (see the module
    /// docs); the connection reads nothing more until it is answered.
    pub(super) fn park_subscribe(
        &mut self,
        key: usize,
        role: Role,
        requests: Vec<SubscriptionRequest>,
        request_id: Option<&Value>,
        since: u64,
    ) {
        let until = self.now + CATCH_UP_WAIT.as_millis() as u64;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else {
            return;
        };
        ws.parked = true;
        self.parked.push(Parked {
            key: key as u32,
            gen,
            role,
            requests,
            request_id: request_id.cloned(),
            since,
            until,
        });
    }

    /// Answers the parked subscribes whose `since` this shard has now reached, or whose
    /// wait is over, and goes on reading their connections (once per loop turn, right
    /// after the turn's drain: it drains nothing itself, so many parked subscribes cost
    /// the turn no more than one).
    pub(super) fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        for p in std::mem::take(&mut self.parked) {
            let (key, gen) = (p.key as usize, p.gen);
            match self.ws_of(key, gen) {
                Some(ws) if !ws.close_sent => {}
                // Closed meanwhile: nobody to answer.
                _ => continue,
            }
            // (Looked at even when the wait is over: it settles `last_seq` for the answer.)
            if !self.reached(p.since, false) && self.now < p.until {
                self.parked.push(p);
                continue;
            }
            if let Some(ws) = self.ws_of(key, gen) {
                ws.parked = false;
            }
            self.subscribe(key, p.role, p.requests, p.request_id.as_ref(), true);
            // Frames that arrived meanwhile are in `rbuf` or the socket: handle the first
            // now, and read the socket again without a new edge.
            if self.ws_of(key, gen).is_some_and(|w| !w.parked) {
                self.ws_input(key);
                self.resume_later(key);
            }
        }
    }

    /// A replay's answer and frames are in (see the module docs): written, then what
    /// waited in the ring is flushed.
    pub(super) fn replay_ready(&mut self, key: usize, gen: u32, frames: Vec<u8>, replayed: u64) {
        let Some(ws) = self.ws_of(key, gen) else {
            return;
        };
        ws.replaying = ws.replaying.saturating_sub(1);
        if ws.close_sent {
            return;
        }
        let resume = ws.replaying == 0 && !ws.ring.is_empty();
        self.metrics.deliveries.increment(replayed);
        self.metrics.replayed.increment(replayed);
        self.send_owned(key, frames);
        if resume {
            self.mark_dirty(key, gen);
        }
        self.attach_feed(key);
    }
}

/// What a replay needs of a subscription, owned (it runs on an offload thread).
pub struct ReplaySpec {
    pub path: Box<str>,
    pub events: Option<Vec<Box<str>>>,
    pub filter: Option<crate::filter::Filter>,
}

impl ReplaySpec {
    pub fn of(sub: &Subscription) -> ReplaySpec {
        ReplaySpec {
            path: sub.path.clone(),
            events: sub.events.as_ref().map(|e| e.to_vec()),
            filter: sub.filter.as_deref().cloned(),
        }
    }

    /// The retained publications with `since < seq <= upto` that the subscription
    /// matches (`true`: an event; `false`: a `subscriptionRefresh`), and whether the
    /// history reached back to `since`.
    pub fn matches(
        &self,
        backend: &dyn crate::backend::Backend,
        since: u64,
        upto: u64,
    ) -> (Replayed, bool) {
        let sub = self;
        // The window's publications are taken out under the history's lock (a pointer
        // copy each) and matched without it: ingest appends under the sequencer, so
        // holding the lock for the matching would hold every shard's publishes.
        let mut window: Vec<Arc<Publication>> = Vec::new();
        let recovered = backend.replay(since, upto, &mut |p| window.push(p.clone()));
        let mut found: Replayed = Vec::new();
        for p in &window {
            if !path_prefixes(&p.path).any(|pre| pre == &*sub.path) {
                continue;
            }
            if let Some(set) = &sub.events {
                if !set.iter().any(|t| **t == *p.event_type) {
                    continue;
                }
            }
            match &sub.filter {
                None => found.push((p.clone(), true)),
                Some(f) => {
                    if f.matches(p.data()) {
                        found.push((p.clone(), true));
                    } else if let Some(before) = p
                        .entity
                        .as_ref()
                        .filter(|c| c.after.is_some())
                        .and_then(|c| c.before.as_deref())
                    {
                        if f.matches(before) {
                            found.push((p.clone(), false));
                        }
                    }
                }
            }
        }
        (found, recovered)
    }
}

/// The WebSocket frames of a replay for the subscription whose id is `name` (a JSON
/// string literal): one frame per message with `framing=frames`, one `batch` per
/// `batch_max` messages with `framing=array`.
pub fn encode_replay(
    found: &[(Arc<Publication>, bool)],
    name: &[u8],
    framing: Framing,
    batch_max: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(found.iter().map(|(p, _)| p.tail.len() + 64).sum());
    let mut msg = Vec::new();
    let mut batch = Vec::new();
    for chunk in found.chunks(batch_max.max(1)) {
        batch.clear();
        if framing == Framing::Array {
            batch.extend_from_slice(b"{\"type\":\"batch\",\"messages\":[");
        }
        for (i, (p, event)) in chunk.iter().enumerate() {
            msg.clear();
            if *event {
                protocol::event_prefix(&mut msg, std::iter::once(name));
                msg.extend_from_slice(&p.tail);
            } else {
                let entity_id = p.entity.as_ref().map_or("", |c| &*c.id);
                protocol::refresh_message(&mut msg, name, &p.path, entity_id, p.seq);
            }
            match framing {
                Framing::Frames => ws::write_frame(&mut out, ws::OpCode::Text, &msg),
                Framing::Array => {
                    if i > 0 {
                        batch.push(b',');
                    }
                    batch.extend_from_slice(&msg);
                }
            }
        }
        if framing == Framing::Array {
            batch.extend_from_slice(b"]}");
            ws::write_frame(&mut out, ws::OpCode::Text, &batch);
        }
    }
    out
}
