//! Live queries on a shard (PROTOCOL.md §7): a connection's server-side result set over
//! an entity collection, loaded from the replica and then kept current from the entity
//! publications the shard receives.
//!
//! Part of [`Shard`]; a live query belongs to its connection (`WsState::live_queries`)
//! and lives on that connection's shard, like its subscriptions. The shard keeps, per
//! collection, which of its connections hold live queries on it (`lq_by_collection`), so
//! an entity write costs one lookup plus one filter evaluation per live query on its
//! collection.
//!
//! **Read off the shard** (issue 21: no shard stalls): the result is a scan of the whole
//! collection (151k entities: ~100 ms), so it is read and its pages serialized on a
//! [`crate::offload`] thread, which answers through this shard's mailbox
//! (`ShardMsg::LiveQueryLoaded`); the shard serves its other connections meanwhile. A
//! query is *loading* from then until the answer (`LiveQuery::loading`, the load's
//! number): the entity publications of its collection that reach the shard meanwhile
//! wait in its `pending` list, in the order they came.
//!
//! **No update lost, duplicated or reordered** (the seam, designed with `seq`): the
//! initial result is read from the replica at its `seq` `S` (the replica is written under
//! the sequencer lock before a publication reaches any shard, so `S` is at least the
//! newest `seq` this shard had seen when the load began, and every publication the shard
//! received before the load is in it). Once the result is in, its pages are written,
//! then `pending` is applied: entity publications with `seq <= S` are already in the
//! result and are skipped for this query; every later one is applied, in `seq` order, as
//! added / updated / removed, as is everything after. A `destroyLiveQuery` or a close
//! while loading drops the answer when it comes (nothing is written for that query after
//! `liveQueryDestroyed`); a `pending` list that outgrows `queue_capacity`, or
//! publications the shard missed meanwhile, make the load stale: it is read again.
//!
//! **A slow consumer never ends with a wrong view**: incremental messages wait in the
//! connection's ring like events. If the ring drops one of them (oldest-drop), the query
//! is marked and, at the connection's next flush, it gets a `QUEUE_OVERFLOW` warning with
//! `liveQueryId`, its remaining queued messages are discarded, and it is loaded again:
//! a fresh `liveQueryCreated` and `liveQueryData` pages, from a new replica `seq`. The
//! client starts over on a second `liveQueryCreated` for the same id
//! (docs/PROTOCOL-NOTES.md).

use std::rc::Rc;
use std::sync::Arc;

use hashbrown::HashSet;
use serde_json::{json, Value};

use crate::entities::Replica;
use crate::filter::{Filter, OrderBy};
use crate::metrics;
use crate::protocol::{self, ErrorCode, LiveQueryRequest};
use crate::publication::Publication;
use crate::router::{LoadedResult, ShardMsg};

use super::conn::{Frame, LiveQuery, LQ_BIT};
use super::Shard;

impl Shard {
    /// `createLiveQuery`.
    pub(super) fn create_live_query(
        &mut self,
        key: usize,
        req: LiveQueryRequest,
        request_id: Option<&Value>,
    ) {
        let max = self.node.config().limits.max_live_queries;
        let cfg_cap = self.node.config().live_query.cap;
        let Some(ws) = self.conns.get(key).and_then(|c| c.ws()) else {
            return;
        };
        let refusal = if let Err(r) = crate::entities::validate_segment("query.edge", &req.edge) {
            Some(r)
        } else if !ws
            .claims
            .as_ref()
            .is_some_and(|c| c.scopes.allows(&req.edge))
        {
            Some(protocol::Refusal::new(
                ErrorCode::Forbidden,
                format!("edge '{}' is outside the token's scopes", req.edge),
            ))
        } else if ws.live_queries.iter().any(|q| *q.id == *req.id) {
            Some(protocol::Refusal::new(
                ErrorCode::BadMessage,
                format!(
                    "live query '{}' exists on this connection: destroy it first or use another id",
                    req.id
                ),
            ))
        } else if ws.live_queries.len() >= max {
            Some(protocol::Refusal::new(
                ErrorCode::LimitExceeded,
                format!("a connection may hold at most {max} live queries"),
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            self.send_error(key, r.code, &r.message, request_id);
            return;
        }
        // Its messages wait in the connection's own ring.
        self.detach_feed(key, super::feed::Leave::Keep);
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        let tag = LQ_BIT | (ws.next_lq & !LQ_BIT);
        ws.next_lq = ws.next_lq.wrapping_add(1);
        ws.live_queries.push(LiveQuery {
            id: req.id.as_str().into(),
            tag,
            collection: req.edge.as_str().into(),
            filter: req.filter,
            order: req.order,
            cap: req.limit.unwrap_or(cfg_cap).min(cfg_cap),
            base_seq: 0,
            tracked: HashSet::new(),
            loading: 0,
            pending: Vec::new(),
            stale: false,
        });
        // Each connection once per collection, with how many of its queries are there:
        // an entity write then visits a connection once, whatever order its queries
        // were made in.
        let holders = self
            .lq_by_collection
            .entry_ref(req.edge.as_str())
            .or_default();
        match holders.iter_mut().find(|(k, _)| *k as usize == key) {
            Some((_, n)) => *n += 1,
            None => holders.push((key as u32, 1)),
        }
        metrics::live_query_created();
        self.load_live_query(key, tag);
    }

    /// Starts reading the query's result off the shard (on creation, and again after an
    /// overflow); [`Shard::live_query_loaded`] sends `liveQueryCreated` and the
    /// `liveQueryData` pages when it is in.
    fn load_live_query(&mut self, key: usize, tag: u32) {
        let page_size = self.node.config().live_query.page.max(1);
        self.next_load = self.next_load.wrapping_add(1).max(1);
        let load = self.next_load;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else {
            return;
        };
        let Some(lq) = ws.live_queries.iter_mut().find(|q| q.tag == tag) else {
            return;
        };
        lq.loading = load;
        lq.pending.clear();
        lq.stale = false;
        let (id, collection, filter, order, cap) = (
            lq.id.clone(),
            lq.collection.clone(),
            lq.filter.clone(),
            lq.order.clone(),
            lq.cap,
        );
        let backend = self.node.backend_handle();
        let mailbox = self.mailbox.clone();
        self.node.offload().run(move || {
            let result = read_live_query(
                backend.replica(),
                &id,
                &collection,
                filter.as_ref(),
                &order,
                cap,
                page_size,
            );
            mailbox.send_control(ShardMsg::LiveQueryLoaded {
                conn: key as u32,
                gen,
                tag,
                load,
                result: Box::new(result),
            });
        });
    }

    /// A load's answer: the pages are written, then what came meanwhile is applied (see
    /// the module docs). Dropped if the connection, the query or this load is gone; read
    /// again if it went stale.
    pub(super) fn live_query_loaded(
        &mut self,
        key: usize,
        gen: u32,
        tag: u32,
        load: u32,
        result: LoadedResult,
    ) {
        let now32 = self.now as u32;
        let Some(ws) = self.ws_of(key, gen) else {
            return;
        };
        if ws.close_sent {
            return;
        }
        let Some(lq) = ws
            .live_queries
            .iter_mut()
            .find(|q| q.tag == tag && q.loading == load)
        else {
            return;
        };
        if lq.stale {
            self.load_live_query(key, tag);
            return;
        }
        lq.loading = 0;
        lq.base_seq = result.seq;
        lq.tracked = result.tracked;
        let pending = std::mem::take(&mut lq.pending);
        let frames: Vec<Rc<Frame>> = pending
            .iter()
            .filter_map(|p| lq.message(p, now32))
            .collect();
        for m in &result.messages {
            self.send_text(key, m);
        }
        self.queue_live_query_frames(key, frames);
    }

    /// Queues live-query messages in the connection's ring (oldest-drop counted) and
    /// schedules its flush.
    fn queue_live_query_frames(&mut self, key: usize, frames: Vec<Rc<Frame>>) {
        if frames.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else {
            return;
        };
        let was_empty = ws.ring.is_empty();
        let mut dropped: Vec<Rc<Frame>> = Vec::new();
        for frame in frames {
            if let Some(old) = ws.ring.push(frame) {
                dropped.push(old);
            }
        }
        for old in dropped {
            ws.count_dropped(&old.subs);
            self.metrics.dropped_overflow.increment(1);
        }
        self.schedule_flush(key, gen, was_empty);
    }

    /// `destroyLiveQuery`: nothing for it arrives after `liveQueryDestroyed`.
    pub(super) fn destroy_live_query(&mut self, key: usize, id: &str, request_id: Option<&Value>) {
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        let Some(i) = ws.live_queries.iter().position(|q| *q.id == *id) else {
            self.send_error(
                key,
                ErrorCode::NotFound,
                &format!(
                    "no live query '{}' on this connection",
                    protocol::truncate(id, 64)
                ),
                request_id,
            );
            return;
        };
        let lq = ws.live_queries.remove(i);
        ws.ring.retain(|f| !f.subs.contains(&lq.tag));
        ws.dropped.retain(|(t, _)| *t != lq.tag);
        self.forget_live_query(key, &lq.collection);
        let mut msg = json!({"type": "liveQueryDestroyed", "id": id});
        if let Some(r) = request_id {
            msg["requestId"] = r.clone();
        }
        self.send_text(key, &protocol::to_bytes(&msg));
        self.attach_feed(key);
    }

    /// Drops one `(collection, key)` registration (a query destroyed or its connection
    /// gone).
    pub(super) fn forget_live_query(&mut self, key: usize, collection: &str) {
        metrics::live_query_destroyed();
        if let Some(v) = self.lq_by_collection.get_mut(collection) {
            if let Some(i) = v.iter().position(|&(k, _)| k as usize == key) {
                v[i].1 -= 1;
                if v[i].1 == 0 {
                    v.swap_remove(i);
                }
            }
            if v.is_empty() {
                self.lq_by_collection.remove(collection);
            }
        }
    }

    /// An entity publication: each live query on its collection that it changes gets
    /// its message queued in the connection's ring; one still loading keeps it for when
    /// its result is in.
    pub(super) fn live_query_publication(&mut self, p: &Arc<Publication>) {
        let Some(change) = &p.entity else { return };
        // Taken out for the walk (no copy per write) and put back after: queuing
        // messages needs the shard mutably, and nothing in the walk registers queries.
        let Some(holders) = self
            .lq_by_collection
            .get_mut(&*change.collection)
            .map(std::mem::take)
        else {
            return;
        };
        let now32 = self.now as u32;
        let pending_cap = self.node.config().delivery.queue_capacity.max(1);
        for &(k, _) in &holders {
            let Some(ws) = self.conns.get_mut(k as usize).and_then(|c| c.ws_mut()) else {
                continue;
            };
            if ws.close_sent {
                continue;
            }
            let mut frames: Vec<Rc<Frame>> = Vec::new();
            for lq in ws.live_queries.iter_mut() {
                if lq.loading != 0 {
                    if *lq.collection != *change.collection || lq.stale {
                        continue;
                    }
                    if lq.pending.len() < pending_cap {
                        lq.pending.push(p.clone());
                    } else {
                        // Read again rather than hold an unbounded list.
                        lq.stale = true;
                        lq.pending = Vec::new();
                    }
                    continue;
                }
                if let Some(frame) = lq.message(p, now32) {
                    frames.push(frame);
                }
            }
            self.queue_live_query_frames(k as usize, frames);
        }
        if let Some(slot) = self.lq_by_collection.get_mut(&*change.collection) {
            *slot = holders;
        }
    }

    /// Publications this shard could not receive (its queue was full): every live query
    /// they may have changed is loaded again at its next flush, as after an overflow.
    pub(super) fn live_queries_missed(&mut self, collection: Option<&str>, n: u64) {
        for (_, conn) in self.conns.iter_mut() {
            let Some(ws) = conn.ws_mut() else { continue };
            let tags: Vec<u32> = ws
                .live_queries
                .iter()
                .filter(|q| collection.is_none_or(|c| *q.collection == *c))
                .map(|q| q.tag)
                .collect();
            for t in tags {
                ws.add_dropped(t, n);
            }
        }
    }

    /// At a flush: live queries that lost a message to overflow are warned and loaded
    /// again (see the module docs). True if any was.
    pub(super) fn reload_overflowed_live_queries(&mut self, key: usize) -> bool {
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        if !ws.dropped.iter().any(|(t, _)| t & LQ_BIT != 0) {
            return false;
        }
        let mut lost: Vec<(u32, u64)> = Vec::new();
        ws.dropped.retain(|&(t, n)| {
            if t & LQ_BIT != 0 {
                lost.push((t, n));
                false
            } else {
                true
            }
        });
        let mut warnings = Vec::new();
        for (tag, n) in lost {
            let Some(lq) = ws.live_queries.iter_mut().find(|q| q.tag == tag) else {
                continue;
            };
            if lq.loading != 0 {
                // Publications missed while its result is being read: `pending` has a
                // gap, so that result is read again (the client has nothing to discard
                // yet beyond what a reload's `liveQueryCreated` already tells it).
                lq.stale = true;
                lq.pending = Vec::new();
                continue;
            }
            ws.ring.retain(|f| !f.subs.contains(&tag));
            warnings.push((tag, protocol::to_bytes(&json!({
                "type": "warning", "code": "QUEUE_OVERFLOW", "liveQueryId": &*lq.id, "dropped": n,
                "message": format!(
                    "{n} updates dropped for live query '{}' due to slow consumption; its result follows again",
                    lq.id
                ),
            }))));
        }
        for (tag, w) in warnings {
            self.send_text(key, &w);
            self.load_live_query(key, tag);
        }
        true
    }
}

/// Reads a live query's result from `replica` (on an offload thread): the tracked ids and
/// the messages `liveQueryCreated` and `liveQueryData` (pages of `page_size`), at the
/// replica's `seq`.
fn read_live_query(
    replica: &Replica,
    id: &str,
    collection: &str,
    filter: Option<&Filter>,
    order: &OrderBy,
    cap: usize,
    page_size: usize,
) -> LoadedResult {
    let (page, seq) = replica.query(collection, filter, order, None, cap);
    let tracked: HashSet<Box<str>> = page
        .data
        .iter()
        .filter_map(|v| v.get("id").and_then(Value::as_str).map(Box::from))
        .collect();
    let capped = page.total > cap;
    let mut messages = vec![protocol::to_bytes(&json!({
        "type": "liveQueryCreated", "id": id, "totalCount": page.total, "capped": capped,
    }))];
    let chunks: Vec<&[Arc<Value>]> = if page.data.is_empty() {
        vec![&[]]
    } else {
        page.data.chunks(page_size.max(1)).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut m = Vec::with_capacity(64 + chunk.len() * 128);
        protocol::live_query_data(&mut m, id, chunk.iter().map(|v| &**v), i + 1 < n, capped);
        messages.push(m);
    }
    LoadedResult {
        seq,
        tracked,
        messages,
    }
}
