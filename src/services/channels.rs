//! REST-created channels (PROTOCOL.md §9) on the services thread: each channel's
//! durable backlog, its one socket, its status and stats.
//!
//! Owned by the services thread ([`super::Engine`]); nothing else touches a channel. A
//! channel is a durable subscription whose owner is not a connection: ingest matches it
//! with the groups' subscriptions ([`super::index`]) and its events are made durable in
//! the `Backlog` table (key `channel_id 0x00 seq`) before the publisher is answered.
//! In memory a channel keeps its definition, counters, and a bounded cache of its
//! backlog's `seq`s ([`Backlog`]: the ones on their way to its socket and a window of the
//! oldest unsent); the events themselves stay in the store and are read back when a
//! socket takes them, so memory does not grow with channels × backlog. Events leave the
//! backlog once the socket's shard has written them to the socket (it says so:
//! `ChannelWritten`). A user owns at most `channels.max_per_user` channels (admins are
//! not limited): counted here by owner, creations on their way to the store included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};

use super::index::DurableSub;
use super::queue::Addr;
use super::record;
use crate::channels::{
    Caller, ChannelRequest, ChannelSpec, ChannelView, ListQuery, NewChannel, Status,
};
use crate::router::{Answer, ReplyTo, Router, ShardMsg};
use crate::store::{Store, Table};

/// Events sent to a socket and not yet reported written, at most.
const CREDIT: usize = 8192;

struct Channel {
    spec: ChannelSpec,
    sub: DurableSub,
    status: Status,
    /// The socket taking its events.
    socket: Option<Addr>,
    event_count: u64,
    last_event_at_ms: Option<u64>,
    /// Events matched since the socket dropped (`missed_events`).
    missed: u64,
    dropped: u64,
    backlog: Backlog,
    /// Stats changed since last stored.
    dirty: bool,
}

impl Channel {
    fn view(&self) -> ChannelView<'_> {
        ChannelView {
            spec: &self.spec,
            status: self.status,
            event_count: self.event_count,
            last_event_at_ms: self.last_event_at_ms,
        }
    }

    fn record(&self) -> Vec<u8> {
        crate::protocol::to_bytes(&json!({
            "spec": self.spec,
            "status": self.status,
            "attached": self.socket.is_some(),
            "event_count": self.event_count,
            "last_event_at_ms": self.last_event_at_ms,
            "missed": self.missed,
            "dropped": self.dropped,
            "counted_upto": self.backlog.newest,
        }))
    }
}

/// `seq`s of the backlog's head kept in memory per channel, at most (see [`Backlog`]).
const WINDOW: usize = 64;

/// Bytes one cached `seq` costs.
const SEQ_BYTES: usize = std::mem::size_of::<u64>();

/// A channel's backlog: the events are in the store (`Backlog` table, key
/// `channel_id 0x00 seq`); in memory only counts and a bounded cache of `seq`s.
///
/// Memory must not grow with the backlog's length: one user may own
/// `channels.max_per_user` channels of `channels.backlog` events each, so keeping every
/// `seq` (let alone every event) would let one token hold memory in proportion to both.
/// What is kept is the `seq`s on their way to the socket (at most [`CREDIT`]) and a
/// window of the oldest unsent ones (at most [`WINDOW`], refilled from the store when
/// empty); the rest are found in the store by key order.
///
/// Invariant: the unsent events are `window` followed by the stored entries with `seq` in
/// (`scanned`, `newest`], `unsent` in all. Entries removed from the backlog (sent, then
/// written; or dropped) are deleted by a later commit, so the store may still show them
/// for a while: every such entry's `seq` is at most `scanned` or in `sent`'s range, and a
/// read from the store skips them.
#[derive(Default)]
struct Backlog {
    /// On their way to the socket, oldest first.
    sent: VecDeque<u64>,
    /// The oldest unsent `seq`s (a prefix of the unsent ones), oldest first.
    window: VecDeque<u64>,
    unsent: usize,
    scanned: u64,
    /// The newest `seq` collected.
    newest: u64,
}

impl Backlog {
    fn len(&self) -> usize {
        self.unsent + self.sent.len()
    }

    /// Bytes of `seq`s held in memory (the `shardcast_channel_backlog_cache_bytes` gauge).
    fn cache_bytes(&self) -> usize {
        (self.sent.capacity() + self.window.capacity()) * SEQ_BYTES
    }

    /// A newly stored event (`seq`s arrive in increasing order).
    fn push(&mut self, seq: u64) {
        // The window takes it only while it holds every unsent event, so that it stays a
        // prefix of them; otherwise it is found in the store when the window runs dry.
        if self.window.len() == self.unsent && self.window.len() < WINDOW {
            self.window.push_back(seq);
            self.scanned = seq;
        }
        self.unsent += 1;
        self.newest = self.newest.max(seq);
    }

    /// Start-up: an entry found in the store, in key order.
    fn recovered(&mut self, seq: u64) {
        self.push(seq);
    }

    /// The oldest unsent event leaves the backlog (dropped); its `seq`, to delete.
    fn pop_unsent(&mut self, store: &Store, id: &str) -> Option<u64> {
        if self.window.is_empty() && self.unsent > 0 {
            self.refill(store, id);
        }
        let seq = self.window.pop_front()?;
        self.unsent -= 1;
        self.shrink();
        Some(seq)
    }

    /// Gives back what a burst left allocated (a credit's worth of `seq`s after a
    /// socket's writes, or after it dropped and its `seq`s moved to the window).
    fn shrink(&mut self) {
        if self.sent.is_empty() && self.sent.capacity() > 0 {
            self.sent = VecDeque::new();
        }
        if self.window.len() <= WINDOW && self.window.capacity() > 2 * WINDOW {
            self.window.shrink_to(WINDOW);
        }
    }

    /// Reads the next unsent `seq`s from the store into the empty window.
    fn refill(&mut self, store: &Store, id: &str) {
        let prefix = record::group_prefix(id);
        let start = record::task_key(id, self.scanned.saturating_add(1));
        let (window, newest) = (&mut self.window, self.newest);
        let mut scanned = self.scanned;
        let read = store.scan_from(Table::Backlog, &prefix, &start, WINDOW, &mut |k, _| {
            if let Some((_, seq)) = record::parse_key(k) {
                if seq <= newest && seq > scanned {
                    window.push_back(seq);
                    scanned = seq;
                }
            }
        });
        self.scanned = scanned;
        if let Err(e) = read {
            tracing::error!(channel = %id, "cannot read the backlog: {e}");
        } else if self.window.is_empty() {
            // Counted but not stored (cannot happen unless the store lost them): the
            // count follows the store.
            tracing::error!(channel = %id, lost = self.unsent, "backlog events not found");
            self.unsent = 0;
        }
    }

    /// The socket is gone: what was on its way is unsent again, first.
    fn unsend(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        let mut sent = std::mem::take(&mut self.sent);
        self.unsent += sent.len();
        sent.extend(self.window.drain(..));
        self.window = sent;
    }

    /// The socket wrote every event up to `upto`: their `seq`s, to delete.
    fn written(&mut self, upto: u64, out: &mut impl FnMut(u64)) {
        while self.sent.front().is_some_and(|&s| s <= upto) {
            if let Some(s) = self.sent.pop_front() {
                out(s);
            }
        }
        self.shrink();
    }

    /// Reads up to `want` unsent events from the store, oldest first, and marks them sent:
    /// `f(seq, value)` for each.
    fn take(
        &mut self,
        store: &Store,
        id: &str,
        want: usize,
        f: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(), crate::store::StoreError> {
        let prefix = record::group_prefix(id);
        let mut from = match self.window.front() {
            Some(&s) => s,
            None => self.scanned.saturating_add(1),
        };
        let mut got = 0;
        while got < want && self.unsent > 0 {
            let limit = want - got + WINDOW;
            let mut last = None;
            let mut past_end = false;
            let n = store.scan_from(
                Table::Backlog,
                &prefix,
                &record::task_key(id, from),
                limit,
                &mut |k, v| {
                    let Some((_, seq)) = record::parse_key(k) else {
                        return;
                    };
                    last = Some(seq);
                    if got >= want || past_end {
                        return;
                    }
                    if seq > self.newest {
                        past_end = true;
                        return;
                    }
                    // Window entries missing from the store (cannot happen unless it lost
                    // them) are skipped over.
                    while self.window.front().is_some_and(|&w| w < seq) {
                        self.window.pop_front();
                        self.unsent -= 1;
                    }
                    let ours = match self.window.front() {
                        Some(&w) if w == seq => {
                            self.window.pop_front();
                            true
                        }
                        // Between the window's entries: removed, not yet deleted.
                        Some(_) => false,
                        None => seq > self.scanned,
                    };
                    if ours {
                        if self.window.is_empty() {
                            self.scanned = self.scanned.max(seq);
                        }
                        self.unsent -= 1;
                        self.sent.push_back(seq);
                        got += 1;
                        f(seq, v);
                    }
                },
            )?;
            match last {
                Some(l) if n == limit && !past_end && l < u64::MAX => from = l + 1,
                _ => break,
            }
        }
        if got < want && self.window.is_empty() && self.unsent > 0 {
            // The store ended before the count did (see `refill`).
            tracing::error!(channel = %id, lost = self.unsent, "backlog events not found");
            self.unsent = 0;
        }
        self.shrink();
        Ok(())
    }

    /// Every stored entry's key, to delete with the channel (entries already being deleted
    /// are included: deleting twice is harmless).
    fn keys(&self, store: &Store, id: &str, out: &mut Vec<(Table, Vec<u8>)>) {
        let prefix = record::group_prefix(id);
        let read = store.scan_prefix(Table::Backlog, &prefix, &mut |k, _| {
            out.push((Table::Backlog, k.to_vec()));
        });
        if let Err(e) = read {
            tracing::error!(channel = %id, "cannot read the backlog to delete it: {e}");
            // What is known is deleted; the rest is reported as stray at the next start.
            for s in self.sent.iter().chain(&self.window) {
                out.push((Table::Backlog, record::task_key(id, *s)));
            }
        }
    }
}

/// What the engine must do after a channel change.
#[derive(Default)]
pub struct Effects {
    pub puts: Vec<(Table, Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<(Table, Vec<u8>)>,
    /// Channels deleted: their subscriptions leave the durable index.
    pub removed: Vec<Arc<str>>,
}

/// Every channel (see the module docs).
#[derive(Default)]
pub struct Channels {
    map: HashMap<Arc<str>, Channel>,
    by_socket: HashMap<Addr, Arc<str>>,
    dirty: HashSet<Arc<str>>,
    /// Channels whose socket may take more.
    pumps: HashSet<Arc<str>>,
    /// Channels with more unsent events than the bound: their oldest go in `step`.
    full: HashSet<Arc<str>>,
    /// Deleted channels whose stored backlog entries are still to be deleted.
    deleted: Vec<(Arc<str>, Backlog)>,
    /// When to give the store's backlog memory back after deletes (ms), if due.
    release_at: Option<u64>,
    bound: usize,
    /// `channels.max_per_user`: channels one non-admin caller may own.
    max_per_user: usize,
    /// Channels by owner (`spec.owner`), those being created included: what the cap counts.
    owned: HashMap<String, usize>,
    public_url: String,
    /// The newest `created_at` given (ms): each channel gets a later one, so the list's
    /// "oldest first" is creation order even for channels created within one millisecond.
    last_created_ms: u64,
    /// Totals for the metrics.
    pub dropped_total: u64,
    pub collected_total: u64,
}

fn http(router: &Router, reply: ReplyTo, status: u16, body: Value) {
    router.answer(reply, Answer::Http { status, body });
}

fn not_found(router: &Router, reply: ReplyTo, id: &str) {
    http(router, reply, 404, crate::channels::not_found(id));
}

impl Channels {
    /// Start-up: definitions and stats from `Channels`, backlogs from `Backlog`.
    pub fn recover(&mut self, store: &Store) -> Result<(), String> {
        let mut found = Vec::new();
        store
            .scan(Table::Channels, &mut |_, v| {
                if let Ok(r) = serde_json::from_slice::<Value>(v) {
                    found.push(r);
                }
            })
            .map_err(|e| format!("cannot read channels: {e}"))?;
        let mut upto: HashMap<Arc<str>, u64> = HashMap::new();
        for r in found {
            let Ok(spec) = serde_json::from_value::<ChannelSpec>(r["spec"].clone()) else {
                tracing::error!("a stored channel could not be read: {r}");
                continue;
            };
            let Ok((path, filter)) = spec.kind.subscription() else {
                continue;
            };
            let id: Arc<str> = spec.channel_id.as_str().into();
            // A socket attached when the node stopped is gone with it.
            let status = if r["attached"] == true || r["status"] == "disconnected" {
                Status::Disconnected
            } else {
                Status::Connected
            };
            upto.insert(id.clone(), r["counted_upto"].as_u64().unwrap_or(0));
            *self.owned.entry(spec.owner.clone()).or_default() += 1;
            self.last_created_ms = self.last_created_ms.max(spec.created_at_ms);
            let sub = DurableSub {
                id: spec.channel_id.clone(),
                path,
                events: spec.event_types.clone(),
                filter,
            };
            self.map.insert(
                id,
                Channel {
                    spec,
                    sub,
                    status,
                    socket: None,
                    event_count: r["event_count"].as_u64().unwrap_or(0),
                    last_event_at_ms: r["last_event_at_ms"].as_u64(),
                    missed: r["missed"].as_u64().unwrap_or(0),
                    dropped: r["dropped"].as_u64().unwrap_or(0),
                    backlog: Backlog::default(),
                    dirty: false,
                },
            );
        }
        let mut stray = 0u64;
        let map = &mut self.map;
        store
            .scan(Table::Backlog, &mut |k, _| {
                let Some((id, seq)) = record::parse_key(k) else {
                    return;
                };
                match map.get_mut(id) {
                    Some(c) => {
                        c.backlog.recovered(seq);
                        // Collected after the stats were last stored (a crash): counted now.
                        if seq > upto.get(id).copied().unwrap_or(0) {
                            c.event_count += 1;
                            if c.status == Status::Disconnected {
                                c.missed += 1;
                            }
                            c.dirty = true;
                        }
                    }
                    None => stray += 1,
                }
            })
            .map_err(|e| format!("cannot read channel backlogs: {e}"))?;
        if stray > 0 {
            tracing::warn!(stray, "backlog events of deleted channels were left behind");
        }
        self.dirty = self
            .map
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, _)| k.clone())
            .collect();
        // A lower `channels.backlog` than the stored backlogs were collected under.
        self.full = self
            .map
            .iter()
            .filter(|(_, c)| c.backlog.unsent > self.bound)
            .map(|(k, _)| k.clone())
            .collect();
        Ok(())
    }

    pub fn new(bound: usize, max_per_user: usize, public_url: String) -> Channels {
        Channels {
            bound,
            max_per_user,
            public_url,
            ..Default::default()
        }
    }

    /// Channels by status and the events waiting in backlogs (for the metrics).
    pub fn gauges(&self) -> (usize, usize, usize) {
        let connected = self
            .map
            .values()
            .filter(|c| c.status == Status::Connected)
            .count();
        let backlog = self.map.values().map(|c| c.backlog.len()).sum();
        (connected, self.map.len() - connected, backlog)
    }

    /// Bytes the backlogs hold in memory (their `seq` caches; the events are in the store).
    pub fn cache_bytes(&self) -> usize {
        self.map.values().map(|c| c.backlog.cache_bytes()).sum()
    }

    /// Every channel's subscription, for the durable index.
    pub fn subscriptions(&self) -> Vec<(Arc<str>, DurableSub)> {
        self.map
            .iter()
            .map(|(id, c)| (id.clone(), c.sub.clone()))
            .collect()
    }

    /// A matching event is durable in the channel's backlog.
    pub fn enqueued(&mut self, id: &Arc<str>, seq: u64, now: u64, fx: &mut Effects) {
        let Some(c) = self.map.get_mut(id) else {
            // Deleted meanwhile: its backlog goes too.
            fx.deletes.push((Table::Backlog, record::task_key(id, seq)));
            return;
        };
        c.event_count += 1;
        c.last_event_at_ms = Some(now);
        if c.status == Status::Disconnected {
            c.missed += 1;
        }
        c.backlog.push(seq);
        self.collected_total += 1;
        // Beyond the bound the oldest event not on its way to the socket goes (in `step`,
        // which may read the store for it).
        if c.backlog.unsent > self.bound {
            self.full.insert(id.clone());
        }
        c.dirty = true;
        self.dirty.insert(id.clone());
        if c.socket.is_some() {
            self.pumps.insert(id.clone());
        }
    }

    /// A socket authenticated on `/channels/{id}`.
    pub fn attach(&mut self, router: &Router, at: Addr, id: &str, caller: &Caller) {
        let found = self.map.get_key_value(id);
        if let Some((reason, m)) =
            crate::channels::attach_refusal(found.map(|(_, c)| &c.spec), id, caller)
        {
            at.close(router, 4001, reason, Some(m));
            return;
        }
        let Some((key, _)) = found else { return };
        let key = key.clone();
        let c = self.map.get_mut(&key).expect("looked up above");
        if let Some(old) = c.socket.replace(at) {
            // A newer socket takes over (the old one may be a dead connection the client
            // gave up on); what was on its way is sent again to the new one.
            self.by_socket.remove(&old);
            old.close(
                router,
                1000,
                "replaced by a newer socket on this channel",
                None,
            );
        }
        c.backlog.unsend();
        c.status = Status::Connected;
        c.missed = 0;
        c.dirty = true;
        self.by_socket.insert(at, key.clone());
        self.dirty.insert(key.clone());
        self.pumps.insert(key);
    }

    /// The socket closed: the channel is `disconnected` and keeps collecting.
    pub fn detach(&mut self, at: Addr) {
        let Some(id) = self.by_socket.remove(&at) else {
            return;
        };
        if let Some(c) = self.map.get_mut(&id) {
            if c.socket == Some(at) {
                c.socket = None;
                c.backlog.unsend();
                c.status = Status::Disconnected;
                c.missed = 0;
                c.dirty = true;
                self.dirty.insert(id);
            }
        }
    }

    /// The socket's shard wrote every event up to `upto`: they leave the backlog.
    pub fn written(&mut self, at: Addr, upto: u64, fx: &mut Effects) {
        let Some(id) = self.by_socket.get(&at).cloned() else {
            return;
        };
        let Some(c) = self.map.get_mut(&id) else {
            return;
        };
        c.backlog.written(upto, &mut |s| {
            fx.deletes.push((Table::Backlog, record::task_key(&id, s)))
        });
        c.dirty = true;
        self.dirty.insert(id.clone());
        self.pumps.insert(id);
    }

    /// Sends what sockets may take, and stores changed stats.
    pub fn step(&mut self, store: &Store, router: &Router, fx: &mut Effects) {
        for (id, backlog) in std::mem::take(&mut self.deleted) {
            let before = fx.deletes.len();
            backlog.keys(store, &id, &mut fx.deletes);
            if fx.deletes.len() > before {
                // After this delete has committed (a second is ample); once for a burst.
                self.release_at.get_or_insert(crate::time::unix_ms() + 1000);
            }
        }
        if let Some(at) = self.release_at {
            let now = crate::time::unix_ms();
            if now >= at {
                // The deleted backlogs' entries were in the store's memtable (and their
                // copies in freed heap): flushed and trimmed, at most once a second.
                self.release_at = (!store.release_memory(Table::Backlog)).then_some(now + 1000);
            }
        }
        for id in std::mem::take(&mut self.full) {
            let Some(c) = self.map.get_mut(&id) else {
                continue;
            };
            while c.backlog.unsent > self.bound {
                let Some(old) = c.backlog.pop_unsent(store, &id) else {
                    break;
                };
                fx.deletes
                    .push((Table::Backlog, record::task_key(&id, old)));
                c.dropped += 1;
                self.dropped_total += 1;
            }
        }
        for id in std::mem::take(&mut self.pumps) {
            let Some(c) = self.map.get_mut(&id) else {
                continue;
            };
            let Some(at) = c.socket else { continue };
            let sent = c.backlog.sent.len();
            if c.backlog.unsent == 0 || sent >= CREDIT {
                continue;
            }
            let want = c.backlog.unsent.min(CREDIT - sent);
            let mut messages = Vec::with_capacity(want);
            let mut upto = 0;
            let read = c.backlog.take(store, &id, want, &mut |seq, v| {
                if let Some(r) = record::decode(v) {
                    let mut m = Vec::with_capacity(r.tail.len() + id.len() + 40);
                    crate::protocol::write_event_head(
                        &mut m,
                        crate::protocol::EventHead::Channel(&id),
                    );
                    m.extend_from_slice(r.tail);
                    messages.push(m);
                }
                upto = seq;
            });
            if let Err(e) = read {
                tracing::error!(channel = %id, "cannot read the backlog: {e}");
                continue;
            }
            if upto == 0 {
                continue;
            }
            router.send_control(
                at.shard as usize,
                ShardMsg::ChannelEvents {
                    conn: at.conn,
                    gen: at.gen,
                    upto,
                    messages,
                },
            );
        }
        for id in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.map.get_mut(&id) {
                c.dirty = false;
                fx.puts
                    .push((Table::Channels, id.as_bytes().to_vec(), c.record()));
            }
        }
    }

    /// A REST request; `Err` is a channel to create (answered once it is durable).
    pub fn request(
        &mut self,
        router: &Router,
        caller: &Caller,
        req: ChannelRequest,
        reply: ReplyTo,
        now: u64,
        fx: &mut Effects,
    ) -> Option<(ChannelSpec, ReplyTo)> {
        let visible = |c: &Channel| caller.sees(&c.spec);
        match req {
            ChannelRequest::List(q) => http(router, reply, 200, self.list(caller, &q)),
            ChannelRequest::Stats => {
                let rows = self
                    .map
                    .values()
                    .filter(|c| visible(c))
                    .map(|c| {
                        let counts = crate::channels::ChannelCounts {
                            backlog: c.backlog.len() as u64,
                            missed: c.missed,
                            dropped: c.dropped,
                        };
                        (c.view(), counts)
                    })
                    .collect();
                http(router, reply, 200, crate::channels::stats_page(rows));
            }
            ChannelRequest::Get(id) => match self.map.get(id.as_str()).filter(|c| visible(c)) {
                Some(c) => http(router, reply, 200, c.view().detail(&self.public_url)),
                None => not_found(router, reply, &id),
            },
            ChannelRequest::Reconnect(id) => {
                let Some(c) = self
                    .map
                    .get_mut(id.as_str())
                    .filter(|c| caller.sees(&c.spec))
                else {
                    not_found(router, reply, &id);
                    return None;
                };
                let missed = c.missed;
                c.missed = 0;
                c.status = Status::Connected;
                c.dirty = true;
                self.dirty.insert(id.as_str().into());
                http(
                    router,
                    reply,
                    200,
                    json!({"channel_id": id, "status": "connected",
                           "reconnected_at": crate::time::rfc3339_ms(now), "missed_events": missed}),
                );
            }
            ChannelRequest::Delete(id) => {
                let visible = self
                    .map
                    .get(id.as_str())
                    .is_some_and(|c| caller.sees(&c.spec));
                if !visible {
                    not_found(router, reply, &id);
                    return None;
                }
                let c = self.map.remove(id.as_str())?;
                self.disown(&c.spec.owner);
                self.dirty.remove(id.as_str());
                self.pumps.remove(id.as_str());
                self.full.remove(id.as_str());
                if let Some(at) = c.socket {
                    self.by_socket.remove(&at);
                    at.close(router, 1000, "channel deleted", None);
                }
                fx.deletes.push((Table::Channels, id.as_bytes().to_vec()));
                // Its stored entries go in `step` (which reads the store for their keys).
                self.deleted.push((id.as_str().into(), c.backlog));
                fx.removed.push(id.as_str().into());
                http(
                    router,
                    reply,
                    200,
                    json!({"channel_id": id, "unsubscribed": true, "closed_at": crate::time::rfc3339_ms(now)}),
                );
            }
            ChannelRequest::Create(NewChannel { kind, event_types }) => {
                let owned = self.owned.get(&caller.sub).copied().unwrap_or(0);
                if !caller.admin && owned >= self.max_per_user {
                    let body =
                        crate::channels::limit_exceeded(&caller.sub, owned, self.max_per_user);
                    http(router, reply, 429, body);
                    return None;
                }
                // Counted from now: creations still on their way to the store count too, so
                // concurrent requests cannot overshoot the cap.
                *self.owned.entry(caller.sub.clone()).or_default() += 1;
                self.last_created_ms = now.max(self.last_created_ms + 1);
                let spec = ChannelSpec {
                    channel_id: crate::channels::new_channel_id(),
                    kind,
                    event_types,
                    owner: caller.sub.clone(),
                    created_at_ms: self.last_created_ms,
                };
                return Some((spec, reply));
            }
        }
        None
    }

    /// A channel being created was not stored: it no longer counts against its owner.
    pub fn not_created(&mut self, spec: &ChannelSpec) {
        self.disown(&spec.owner);
    }

    fn disown(&mut self, owner: &str) {
        if let Some(n) = self.owned.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.owned.remove(owner);
            }
        }
    }

    /// A created channel is durable: it collects from the next index on.
    pub fn created(&mut self, spec: ChannelSpec) -> Result<(Value, Arc<str>, DurableSub), String> {
        let (path, filter) = match spec.kind.subscription() {
            Ok(s) => s,
            Err(e) => {
                self.disown(&spec.owner);
                return Err(e);
            }
        };
        let id: Arc<str> = spec.channel_id.as_str().into();
        let sub = DurableSub {
            id: spec.channel_id.clone(),
            path,
            events: spec.event_types.clone(),
            filter,
        };
        let c = Channel {
            spec,
            sub,
            status: Status::Connected,
            socket: None,
            event_count: 0,
            last_event_at_ms: None,
            missed: 0,
            dropped: 0,
            backlog: Backlog::default(),
            dirty: false,
        };
        let answer = c.view().created(&self.public_url);
        let sub = c.sub.clone();
        self.map.insert(id.clone(), c);
        Ok((answer, id, sub))
    }

    /// The initial record of a channel about to be created.
    pub fn initial_record(spec: &ChannelSpec) -> Vec<u8> {
        crate::protocol::to_bytes(&json!({
            "spec": spec, "status": "connected", "attached": false, "event_count": 0,
            "last_event_at_ms": null, "missed": 0, "dropped": 0, "counted_upto": 0,
        }))
    }

    fn list(&self, caller: &Caller, q: &ListQuery) -> Value {
        crate::channels::list_page(caller, q, self.map.values().map(|c| c.view()).collect())
    }
}
