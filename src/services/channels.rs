//! REST-created channels (PROTOCOL.md §9) on the services thread: each channel's
//! durable backlog, its one socket, its status and stats.
//!
//! Owned by the services thread ([`super::Engine`]); nothing else touches a channel. A
//! channel is a durable subscription whose owner is not a connection: ingest matches it
//! with the groups' subscriptions ([`super::index`]) and its events are made durable in
//! the `Backlog` table (key `channel_id 0x00 seq`) before the publisher is answered.
//! In memory a channel keeps its definition, counters, and the `seq`s of its backlog
//! (8 bytes each, at most `channels.backlog` of them); the events themselves are read
//! back from the store when a socket takes them. Events leave the backlog once the
//! socket's shard has written them to the socket (it says so: `ChannelWritten`).

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
    /// The backlog's `seq`s, oldest first; the first `sent` are on their way to the socket.
    seqs: VecDeque<u64>,
    sent: usize,
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
            "counted_upto": self.seqs.back().copied().unwrap_or(0),
        }))
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
    bound: usize,
    public_url: String,
    /// Totals for the metrics.
    pub dropped_total: u64,
    pub collected_total: u64,
}

fn close(router: &Router, at: Addr, code: u16, reason: &str, error: Option<Vec<u8>>) {
    router.send_control(
        at.shard as usize,
        ShardMsg::Close {
            conn: at.conn,
            gen: at.gen,
            code,
            reason: reason.to_string(),
            error,
        },
    );
}

fn http(router: &Router, reply: ReplyTo, status: u16, body: Value) {
    router.answer(reply, Answer::Http { status, body });
}

fn not_found(router: &Router, reply: ReplyTo, id: &str) {
    http(
        router,
        reply,
        404,
        json!({"error": {"code": "NOT_FOUND", "message": format!("no channel '{id}'")}}),
    );
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
                    seqs: VecDeque::new(),
                    sent: 0,
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
                        c.seqs.push_back(seq);
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
        Ok(())
    }

    pub fn new(bound: usize, public_url: String) -> Channels {
        Channels {
            bound,
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
        let backlog = self.map.values().map(|c| c.seqs.len()).sum();
        (connected, self.map.len() - connected, backlog)
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
        c.seqs.push_back(seq);
        self.collected_total += 1;
        // Beyond the bound the oldest event not on its way to the socket goes.
        if c.seqs.len() - c.sent > self.bound {
            if let Some(old) = c.seqs.remove(c.sent) {
                fx.deletes.push((Table::Backlog, record::task_key(id, old)));
                c.dropped += 1;
                self.dropped_total += 1;
            }
        }
        c.dirty = true;
        self.dirty.insert(id.clone());
        if c.socket.is_some() {
            self.pumps.insert(id.clone());
        }
    }

    /// A socket authenticated on `/channels/{id}`.
    pub fn attach(&mut self, router: &Router, at: Addr, id: &str, caller: &Caller) {
        let Some((key, c)) = self.map.get_key_value(id) else {
            let m = crate::protocol::error_message(
                crate::protocol::ErrorCode::NotFound,
                &format!("no channel '{id}' (it may have been deleted)"),
                None,
            );
            close(router, at, 4001, "no such channel", Some(m));
            return;
        };
        if !caller.sees(&c.spec) {
            let m = crate::protocol::error_message(
                crate::protocol::ErrorCode::Forbidden,
                &format!("channel '{id}' is not yours"),
                None,
            );
            close(router, at, 4001, "forbidden", Some(m));
            return;
        }
        let key = key.clone();
        let c = self.map.get_mut(&key).expect("looked up above");
        if let Some(old) = c.socket.replace(at) {
            // A newer socket takes over (the old one may be a dead connection the client
            // gave up on); what was on its way is sent again to the new one.
            self.by_socket.remove(&old);
            close(
                router,
                old,
                1000,
                "replaced by a newer socket on this channel",
                None,
            );
        }
        c.sent = 0;
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
                c.sent = 0;
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
        while c.sent > 0 && c.seqs.front().is_some_and(|&s| s <= upto) {
            if let Some(s) = c.seqs.pop_front() {
                fx.deletes.push((Table::Backlog, record::task_key(&id, s)));
            }
            c.sent -= 1;
        }
        c.dirty = true;
        self.dirty.insert(id.clone());
        self.pumps.insert(id);
    }

    /// Sends what sockets may take, and stores changed stats.
    pub fn step(&mut self, store: &Store, router: &Router, fx: &mut Effects) {
        for id in std::mem::take(&mut self.pumps) {
            let Some(c) = self.map.get_mut(&id) else {
                continue;
            };
            let Some(at) = c.socket else { continue };
            if c.sent >= c.seqs.len() || c.sent >= CREDIT {
                continue;
            }
            let want = (c.seqs.len() - c.sent).min(CREDIT - c.sent);
            let first = c.seqs[c.sent];
            let prefix = record::group_prefix(&id);
            let start = record::task_key(&id, first);
            let mut messages = Vec::with_capacity(want);
            let mut expect = c.seqs.range(c.sent..c.sent + want).copied().peekable();
            let mut upto = 0;
            let read = store.scan_from(Table::Backlog, &prefix, &start, want * 2, &mut |k, v| {
                let Some((_, seq)) = record::parse_key(k) else {
                    return;
                };
                // Entries dropped but not yet deleted are skipped.
                while expect.peek().is_some_and(|&e| e < seq) {
                    expect.next();
                }
                if expect.peek() != Some(&seq) {
                    return;
                }
                expect.next();
                if let Some(r) = record::decode(v) {
                    let mut m = Vec::with_capacity(r.tail.len() + id.len() + 40);
                    crate::protocol::write_event_head(
                        &mut m,
                        crate::protocol::EventHead::Channel(&id),
                    );
                    m.extend_from_slice(r.tail);
                    messages.push(m);
                    upto = seq;
                }
            });
            if let Err(e) = read {
                tracing::error!(channel = %id, "cannot read the backlog: {e}");
                continue;
            }
            if messages.is_empty() {
                continue;
            }
            // Sent ones count up to the last read; any not found (gone) are skipped over.
            let n = c.seqs.range(c.sent..).take_while(|&&s| s <= upto).count();
            c.sent += n;
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
                self.dirty.remove(id.as_str());
                self.pumps.remove(id.as_str());
                if let Some(at) = c.socket {
                    self.by_socket.remove(&at);
                    close(router, at, 1000, "channel deleted", None);
                }
                fx.deletes.push((Table::Channels, id.as_bytes().to_vec()));
                for s in &c.seqs {
                    fx.deletes.push((Table::Backlog, record::task_key(&id, *s)));
                }
                fx.removed.push(id.as_str().into());
                http(
                    router,
                    reply,
                    200,
                    json!({"channel_id": id, "unsubscribed": true, "closed_at": crate::time::rfc3339_ms(now)}),
                );
            }
            ChannelRequest::Create(NewChannel { kind, event_types }) => {
                let spec = ChannelSpec {
                    channel_id: crate::channels::new_channel_id(),
                    kind,
                    event_types,
                    owner: caller.sub.clone(),
                    created_at_ms: now,
                };
                return Some((spec, reply));
            }
        }
        None
    }

    /// A created channel is durable: it collects from the next index on.
    pub fn created(&mut self, spec: ChannelSpec) -> Result<(Value, Arc<str>, DurableSub), String> {
        let (path, filter) = spec.kind.subscription()?;
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
            seqs: VecDeque::new(),
            sent: 0,
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
        let mut rows: Vec<&Channel> = self
            .map
            .values()
            .filter(|c| caller.sees(&c.spec))
            .filter(|c| q.status.is_none_or(|s| c.status == s))
            .filter(|c| {
                q.user_id.as_deref().is_none_or(|u| match &c.spec.kind {
                    crate::channels::ChannelKind::OrganisationClaims { user_id, .. }
                    | crate::channels::ChannelKind::UserClaims { user_id } => user_id == u,
                    crate::channels::ChannelKind::Custom { .. } => c.spec.owner == u,
                })
            })
            .filter(|c| {
                q.organisation_id.as_deref().is_none_or(|o| {
                    matches!(&c.spec.kind,
                        crate::channels::ChannelKind::OrganisationClaims { organisation_id, .. } if organisation_id == o)
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.spec.created_at_ms, &a.spec.channel_id)
                .cmp(&(b.spec.created_at_ms, &b.spec.channel_id))
        });
        let total = rows.len();
        let data: Vec<Value> = rows
            .into_iter()
            .skip((q.page - 1).saturating_mul(q.limit))
            .take(q.limit)
            .map(|c| c.view().listed())
            .collect();
        json!({"data": data, "pagination": {"page": q.page, "limit": q.limit, "total": total}})
    }
}
