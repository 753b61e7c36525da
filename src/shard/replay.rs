//! `since` recovery on a shard (PROTOCOL.md §5): the retained publications a new
//! subscription missed, replayed in order before anything live.
//!
//! Part of [`Shard`]. The seam: a subscription is registered in the index when the shard
//! has received every publication up to its `last_seq` `L` and none after (all of that
//! happens between two mailbox reads), so publications after `L` reach it live, and the
//! replay covers exactly `since < seq <= L` from the backend's history. Nothing is missed
//! at the seam and nothing arrives twice. A `since` beyond `L` but not beyond the
//! backend's head (this shard lags ingest by its queue, or this node lags the cluster) is
//! first caught up by taking in what is queued, for a bounded time ([`Shard::catch_up`]);
//! still ahead after that, the subscription is refused `UNAVAILABLE`.
//!
//! Replayed messages are written straight to the connection's output, after the
//! `subscribedEvents` answer, so they never meet the ring's oldest-drop: the history
//! window bounds them. With `framing=array` they come as `batch` messages of at most
//! `batchMax`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Framing;
use crate::protocol::{self, path_prefixes, ws};
use crate::publication::Publication;

use super::conn::Subscription;
use super::Shard;

/// How long a subscription with a `since` this shard has not reached may hold the shard
/// while it catches up (see [`Shard::catch_up`]).
pub(super) const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// A replayed publication and whether it is an event or a refresh for the subscription.
pub type Replayed = Vec<(Arc<Publication>, bool)>;

impl Shard {
    /// Takes in queued publications until this shard has seen `seq`, for at most
    /// [`CATCH_UP_WAIT`] (the shard's other connections wait meanwhile, so the bound is
    /// short). The caller compares `last_seq` with `seq` to know whether it got there.
    pub(super) fn catch_up(&mut self, seq: u64) {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        while self.last_seq < seq {
            // Every publication applied before this read was pushed to this shard first
            // (the applier moves its mark after the pushes): once the queue is drained
            // and idle, the shard holds everything up to it, including what a cluster
            // node applied without delivering (its start-up window).
            let applied = self.node.backend().applied_seq();
            self.drain_mailbox();
            if self.mailbox.is_idle() {
                self.last_seq = self.last_seq.max(applied);
            }
            if self.last_seq >= seq {
                break;
            }
            if Instant::now() >= deadline {
                return;
            }
            if self.mailbox.depth() == 0 {
                // Applied but not yet pushed to this shard (microseconds: the applier
                // moves the applied mark after the pushes), or not applied yet on this
                // node (a cluster node behind the head).
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// The retained publications with `since < seq <= upto` that `sub` matches (`true`:
    /// an event; `false`: a `subscriptionRefresh`), and whether the history reached back
    /// to `since`.
    pub(super) fn replay_matches(
        &mut self,
        sub: &Subscription,
        since: u64,
        upto: u64,
    ) -> (Replayed, bool) {
        let mut found: Replayed = Vec::new();
        let recovered = self.node.backend().replay(since, upto, &mut |p| {
            if !path_prefixes(&p.path).any(|pre| pre == &*sub.path) {
                return;
            }
            if let Some(set) = &sub.events {
                if !set.iter().any(|t| **t == *p.event_type) {
                    return;
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
        });
        (found, recovered)
    }

    /// Writes replayed messages for subscription `id` to the connection.
    pub(super) fn send_replay(&mut self, key: usize, id: u32, found: &Replayed) {
        if found.is_empty() {
            return;
        }
        let Some(ws) = self.conns.get(key).and_then(|c| c.ws()) else {
            return;
        };
        let out = encode_replay(
            found,
            self.interner.json(id),
            ws.framing,
            ws.batch_max as usize,
        );
        self.metrics.deliveries.increment(found.len() as u64);
        self.metrics.replayed.increment(found.len() as u64);
        self.send_raw(key, &out);
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
