//! REST-created channels (PROTOCOL.md §9) in cluster mode (§14 "Channels"): the
//! cluster's counterpart of `crate::services::channels`.
//!
//! A channel lives in Redis (`channel.lua`: its hash, its backlog stream, the set of
//! channels, its subscription in the durable index), so it is created, listed, read,
//! reconnected and deleted on any node. Its events reach its backlog in the Lua call that
//! sequences the publication (`tasks.lua`), whichever node published. Its one socket is
//! named in the hash (`<node_id>|<process>|<shard>:<conn>:<gen>`): a socket attaching on
//! any node takes it over, and the node of the socket it replaced is told by a message on
//! its control stream (`ctl:{node_id}`, read by its reader), as it is when the channel is
//! deleted; it then closes its socket. Its next read of the backlog (`pump`, which checks
//! that its socket is still the channel's) would find out too: the fallback when the
//! message was lost with a connection.
//! Events leave the backlog once the socket's shard wrote them, and only while that
//! socket is still the channel's.
//!
//! Owned by the Redis services thread (`services::Engine`), which calls in with its
//! connection; nothing else touches it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use redis::Value;
use serde_json::{json, Value as Json};

use super::Shared;
use crate::channels::{Caller, ChannelRequest, ChannelSpec, ChannelView, NewChannel, Status};
use crate::protocol::EventHead;
use crate::router::{Answer, ReplyTo, ShardMsg};
use crate::services::index::DurableSub;
use crate::services::Addr;

/// Channel events sent to a socket and not yet reported written, at most.
const CREDIT: usize = 8192;

/// Messages kept on a node's control stream, about (a node reads them as they come).
const CONTROL_LEN: usize = 1000;

/// A socket of this node taking a channel's events.
struct Socket {
    at: Addr,
    /// The last backlog entry id sent ("-": none yet).
    cursor: String,
    /// Seqs sent and not yet reported written, oldest first.
    sent: VecDeque<u64>,
}

/// This node's channel sockets (see the module docs).
#[derive(Default)]
pub(super) struct Channels {
    sockets: HashMap<Arc<str>, Socket>,
    by_addr: HashMap<Addr, Arc<str>>,
    /// Channels with new events since the last pump.
    woken: HashSet<Arc<str>>,
    /// Sockets that closed while Redis was away: (channel, socket name), to detach.
    detached: Vec<(Arc<str>, String)>,
}

/// What the channel calls need: the connection and the script.
pub(super) struct Ctx<'a> {
    pub shared: &'a Shared,
    pub con: &'a mut redis::Connection,
    pub sha: &'a str,
}

impl Ctx<'_> {
    /// `channel.lua` `op` on channel `id` (of `owner`, for create and delete).
    fn call(
        &mut self,
        op: &str,
        id: &str,
        owner: &str,
        args: &[&str],
    ) -> redis::RedisResult<Value> {
        let mut pipe = redis::pipe();
        self.add_call(&mut pipe, op, id, owner, args);
        let mut v: Vec<Value> = pipe.query(self.con)?;
        Ok(v.pop().unwrap_or(Value::Nil))
    }

    /// The same call, added to a pipeline.
    fn add_call(&self, pipe: &mut redis::Pipeline, op: &str, id: &str, owner: &str, args: &[&str]) {
        let k = &self.shared.keys;
        let [ch, cb] = k.channel(id);
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.sha)
            .arg(7)
            .arg(ch)
            .arg(cb)
            .arg(&k.channels)
            .arg(&k.channel_subs)
            .arg(&k.dsubs_version)
            .arg(k.channel_owner(owner))
            .arg(&k.channel_last)
            .arg(op);
        for a in args {
            cmd.arg(*a);
        }
    }

    fn socket_name(&self, at: Addr) -> String {
        socket_name(self.shared, at)
    }

    /// Tells the node of `socket` (if another node's) that it no longer takes channel
    /// `id`'s events: `why` is "replaced" or "deleted" (see `Channels::control`).
    fn tell(&mut self, socket: &str, id: &str, why: &str) -> redis::RedisResult<()> {
        let Some((node, _)) = socket.split_once('|') else {
            return Ok(());
        };
        if node == self.shared.node_id {
            return Ok(());
        }
        redis::cmd("XADD")
            .arg(self.shared.keys.control(node))
            .arg("MAXLEN")
            .arg("~")
            .arg(CONTROL_LEN)
            .arg("*")
            .arg("c")
            .arg(id)
            .arg("s")
            .arg(socket)
            .arg("w")
            .arg(why)
            .query::<Value>(self.con)?;
        Ok(())
    }

    /// A channel as Redis has it (None: no such channel).
    fn read(&mut self, id: &str) -> redis::RedisResult<Option<Stored>> {
        let [ch, _] = self.shared.keys.channel(id);
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(ch)
            .arg(&Stored::FIELDS[..])
            .query(self.con)?;
        Ok(Stored::of(&v))
    }
}

/// How a socket of this process is named in its channel's hash.
fn socket_name(shared: &Shared, at: Addr) -> String {
    format!(
        "{}|{}|{}:{}:{}",
        shared.node_id, shared.instance, at.shard, at.conn, at.gen
    )
}

/// A channel's hash, read.
struct Stored {
    spec: ChannelSpec,
    status: Status,
    event_count: u64,
    last_event_at_ms: Option<u64>,
}

impl Stored {
    const FIELDS: [&'static str; 5] = [
        "spec",
        "created",
        "status",
        "event_count",
        "last_event_at_ms",
    ];

    fn of(v: &[Option<String>]) -> Option<Stored> {
        let [spec, created, status, count, last] = v else {
            return None;
        };
        let mut spec: ChannelSpec = serde_json::from_str(spec.as_deref()?).ok()?;
        spec.created_at_ms = created.as_deref()?.parse().ok()?;
        let num = |x: &Option<String>| x.as_deref().and_then(|s| s.parse::<u64>().ok());
        Some(Stored {
            spec,
            status: if status.as_deref() == Some("disconnected") {
                Status::Disconnected
            } else {
                Status::Connected
            },
            event_count: num(count).unwrap_or(0),
            last_event_at_ms: num(last),
        })
    }

    fn view(&self) -> ChannelView<'_> {
        ChannelView {
            spec: &self.spec,
            status: self.status,
            event_count: self.event_count,
            last_event_at_ms: self.last_event_at_ms,
        }
    }
}

fn http(shared: &Shared, reply: ReplyTo, status: u16, body: Json) {
    shared.router().answer(reply, Answer::Http { status, body });
}

fn not_found(shared: &Shared, reply: ReplyTo, id: &str) {
    http(shared, reply, 404, crate::channels::not_found(id));
}

fn close(shared: &Shared, at: Addr, code: u16, reason: &str, error: Option<Vec<u8>>) {
    at.close(shared.router(), code, reason, error);
}

/// The seq of a backlog entry id (`<seq>-0`).
fn seq_of(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Channels {
    /// Publications made backlog entries for channel `id`.
    pub fn wake(&mut self, id: &str) {
        if let Some((k, _)) = self.sockets.get_key_value(id) {
            self.woken.insert(k.clone());
        }
    }

    pub fn has_sockets(&self) -> bool {
        !self.sockets.is_empty()
    }

    /// After (re)connecting: sockets this node id had in an earlier process are gone (the
    /// channels become `disconnected`); this process's own sockets are pumped again.
    pub fn on_connect(&mut self, cx: &mut Ctx<'_>) -> redis::RedisResult<()> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&cx.shared.keys.channels)
            .arg(0)
            .arg(-1)
            .query(cx.con)?;
        for (id, name) in std::mem::take(&mut self.detached) {
            let r = cx.call("detach", &id, "", &[&name])?;
            tracing::info!(channel = %id, ?r, "a socket that closed while Redis was away: detached");
        }
        let mine = format!("{}|", cx.shared.node_id);
        let this = format!("{mine}{}|", cx.shared.instance);
        if !ids.is_empty() {
            // One round trip for every channel's socket, one for the stale ones.
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGET")
                    .arg(&cx.shared.keys.channel(id)[0])
                    .arg("socket");
            }
            let sockets: Vec<Option<String>> = pipe.query(cx.con)?;
            let mut pipe = redis::pipe();
            let mut stale = 0;
            for (id, socket) in ids.iter().zip(sockets) {
                let Some(socket) = socket else { continue };
                if socket.starts_with(&mine) && !socket.starts_with(&this) {
                    cx.add_call(&mut pipe, "detach", id, "", &[&socket]);
                    stale += 1;
                }
            }
            if stale > 0 {
                pipe.query::<()>(cx.con)?;
                tracing::info!(
                    stale,
                    "channels whose socket was this node's previous process are disconnected"
                );
            }
        }
        self.woken.extend(self.sockets.keys().cloned());
        Ok(())
    }

    /// A socket authenticated on `/channels/{id}`.
    pub fn attach(
        &mut self,
        cx: &mut Ctx<'_>,
        at: Addr,
        id: &str,
        caller: &Caller,
    ) -> redis::RedisResult<()> {
        let st = cx.read(id)?;
        if let Some((reason, m)) =
            crate::channels::attach_refusal(st.as_ref().map(|st| &st.spec), id, caller)
        {
            close(cx.shared, at, 4001, reason, Some(m));
            return Ok(());
        }
        let name = cx.socket_name(at);
        let replaced = match cx.call("attach", id, "", &[&name])? {
            Value::Nil => {
                // Deleted between the read and the attach.
                close(cx.shared, at, 1000, "channel deleted", None);
                return Ok(());
            }
            v => text(&v).unwrap_or_default(),
        };
        // A socket on another node is told by a message to that node.
        cx.tell(&replaced, id, "replaced")?;
        let key: Arc<str> = id.into();
        if let Some(old) = self.sockets.insert(
            key.clone(),
            Socket {
                at,
                cursor: "-".into(),
                sent: VecDeque::new(),
            },
        ) {
            // A newer socket on this node takes over.
            self.by_addr.remove(&old.at);
            close(
                cx.shared,
                old.at,
                1000,
                "replaced by a newer socket on this channel",
                None,
            );
        }
        self.by_addr.insert(at, key.clone());
        self.woken.insert(key);
        Ok(())
    }

    /// A connection closed: if it was a channel's socket, the channel is `disconnected`
    /// (unless a newer socket took it over meanwhile).
    pub fn detach(&mut self, cx: &mut Ctx<'_>, at: Addr) -> redis::RedisResult<()> {
        let Some(id) = self.by_addr.remove(&at) else {
            return Ok(());
        };
        self.sockets.remove(&id);
        self.woken.remove(&id);
        let name = cx.socket_name(at);
        if let Err(e) = cx.call("detach", &id, "", &[&name]) {
            // Told once Redis is back (see `on_connect`).
            self.detached.push((id, name));
            return Err(e);
        }
        Ok(())
    }

    /// A socket closed while Redis is away: its channel is marked `disconnected` once
    /// Redis is back (unless a newer socket took it over meanwhile).
    pub fn detach_offline(&mut self, shared: &Shared, at: Addr) {
        let Some(id) = self.by_addr.remove(&at) else {
            return;
        };
        self.sockets.remove(&id);
        self.woken.remove(&id);
        tracing::debug!(channel = %id, "channel socket closed while Redis is away");
        self.detached.push((id, socket_name(shared, at)));
    }

    /// The socket's shard wrote every event up to `upto`.
    pub fn written(&mut self, cx: &mut Ctx<'_>, at: Addr, upto: u64) -> redis::RedisResult<()> {
        let Some(id) = self.by_addr.get(&at).cloned() else {
            return Ok(());
        };
        let Some(s) = self.sockets.get_mut(&id) else {
            return Ok(());
        };
        while s.sent.front().is_some_and(|&x| x <= upto) {
            s.sent.pop_front();
        }
        let name = cx.socket_name(at);
        cx.call("written", &id, "", &[&name, &upto.to_string()])?;
        self.woken.insert(id);
        Ok(())
    }

    /// Sends sockets what their channels collected: the woken ones, or every one
    /// (`all`, the periodic check that also finds sockets replaced or deleted elsewhere).
    pub fn pump(&mut self, cx: &mut Ctx<'_>, all: bool) -> redis::RedisResult<()> {
        let ids: Vec<Arc<str>> = if all {
            self.woken.clear();
            self.sockets.keys().cloned().collect()
        } else {
            self.woken.drain().collect()
        };
        // Every socket's read in one round trip.
        let mut asked = Vec::with_capacity(ids.len());
        let mut pipe = redis::pipe();
        for id in ids {
            let Some(s) = self.sockets.get(&id) else {
                continue;
            };
            let room = CREDIT.saturating_sub(s.sent.len());
            if room == 0 {
                continue;
            }
            let name = cx.socket_name(s.at);
            cx.add_call(
                &mut pipe,
                "pump",
                &id,
                "",
                &[&name, &s.cursor, &room.to_string()],
            );
            asked.push((id, s.at, room));
        }
        if asked.is_empty() {
            return Ok(());
        }
        let replies: Vec<Value> = pipe.query(cx.con)?;
        for ((id, at, room), reply) in asked.into_iter().zip(replies) {
            if self.sockets.get(&id).is_none_or(|s| s.at != at) {
                continue;
            }
            let entries = match reply {
                Value::Int(-1) => {
                    self.forget(&id);
                    close(
                        cx.shared,
                        at,
                        1000,
                        "replaced by a newer socket on this channel",
                        None,
                    );
                    continue;
                }
                Value::Int(_) => {
                    self.forget(&id);
                    close(cx.shared, at, 1000, "channel deleted", None);
                    continue;
                }
                Value::Array(entries) => entries,
                _ => continue,
            };
            let mut messages = Vec::with_capacity(entries.len());
            let (mut upto, mut last_id) = (0, None);
            let Some(s) = self.sockets.get_mut(&id) else {
                continue;
            };
            for e in &entries {
                let Value::Array(pair) = e else { continue };
                let (Some(eid), Some(Value::Array(fields))) =
                    (pair.first().and_then(text), pair.get(1))
                else {
                    continue;
                };
                let Some(seq) = seq_of(&eid) else { continue };
                let mut f: HashMap<String, String> = HashMap::new();
                for kv in fields.chunks(2) {
                    if let (Some(k), Some(v)) =
                        (kv.first().and_then(text), kv.get(1).and_then(text))
                    {
                        f.insert(k, v);
                    }
                }
                let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
                let tail = crate::protocol::encode_event_tail(
                    get("e"),
                    get("p"),
                    f.get("d").map_or("null", String::as_str),
                    get("t").parse().unwrap_or(0),
                    seq,
                );
                let mut m = Vec::with_capacity(tail.len() + id.len() + 40);
                crate::protocol::write_event_head(&mut m, EventHead::Channel(&id));
                m.extend_from_slice(&tail);
                messages.push(m);
                s.sent.push_back(seq);
                upto = seq;
                last_id = Some(eid);
            }
            if let Some(l) = last_id {
                s.cursor = l;
            }
            if messages.is_empty() {
                continue;
            }
            if messages.len() == room {
                // There may be more once these are written.
                self.woken.insert(id.clone());
            }
            cx.shared.router().send_control(
                at.shard as usize,
                ShardMsg::ChannelEvents {
                    conn: at.conn,
                    gen: at.gen,
                    upto,
                    messages,
                },
            );
        }
        Ok(())
    }

    /// The cluster's channels for the metrics (every node reports the same values; the
    /// dashboard takes the maximum): by status, events in backlogs, and the totals
    /// collected and dropped (counters in Redis).
    pub fn gauges(&self, cx: &mut Ctx<'_>) -> redis::RedisResult<()> {
        let k = &cx.shared.keys;
        let (ids, collected, dropped): (Vec<String>, Option<u64>, Option<u64>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(&k.channels)
            .arg(0)
            .arg(-1)
            .cmd("GET")
            .arg(format!("{}chcollected", k.prefix))
            .cmd("GET")
            .arg(format!("{}chdropped", k.prefix))
            .query(cx.con)?;
        let (mut connected, mut backlog) = (0, 0);
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                let [ch, cb] = k.channel(id);
                pipe.cmd("HGET").arg(ch).arg("status").cmd("XLEN").arg(cb);
            }
            let rows: Vec<Value> = pipe.query(cx.con)?;
            for pair in rows.chunks(2) {
                if pair.first().and_then(text).as_deref() == Some("connected") {
                    connected += 1;
                }
                if let Some(Value::Int(n)) = pair.get(1) {
                    backlog += *n as usize;
                }
            }
        }
        crate::metrics::channels(
            connected,
            ids.len() - connected,
            backlog,
            0,
            collected.unwrap_or(0),
            dropped.unwrap_or(0),
        );
        Ok(())
    }

    /// A message from another node: if `s` is still this node's socket of channel `c`,
    /// it is closed (`w`: "replaced" by a newer socket elsewhere, or the channel
    /// "deleted").
    pub fn control(&mut self, shared: &Shared, fields: &[(String, String)]) {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map_or("", |(_, v)| v.as_str())
        };
        let (id, socket, why) = (get("c"), get("s"), get("w"));
        let Some(at) = self.sockets.get(id).map(|s| s.at) else {
            return;
        };
        if socket_name(shared, at) != socket {
            return;
        }
        self.forget(id);
        let reason = if why == "deleted" {
            "channel deleted"
        } else {
            "replaced by a newer socket on this channel"
        };
        close(shared, at, 1000, reason, None);
    }

    fn forget(&mut self, id: &str) {
        if let Some(s) = self.sockets.remove(id) {
            self.by_addr.remove(&s.at);
        }
        self.woken.remove(id);
    }

    /// A request of the channels REST API.
    pub fn request(
        &mut self,
        cx: &mut Ctx<'_>,
        settings: &super::services::Settings,
        caller: &Caller,
        req: ChannelRequest,
        reply: ReplyTo,
    ) -> redis::RedisResult<()> {
        let now = crate::time::unix_ms();
        let public_url = settings.public_url.as_str();
        match req {
            ChannelRequest::List(q) => {
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&cx.shared.keys.channels)
                    .arg(0)
                    .arg(-1)
                    .query(cx.con)?;
                let mut stored = Vec::with_capacity(ids.len());
                if !ids.is_empty() {
                    let mut pipe = redis::pipe();
                    for id in &ids {
                        let [ch, _] = cx.shared.keys.channel(id);
                        pipe.cmd("HMGET").arg(ch).arg(&Stored::FIELDS[..]);
                    }
                    let rows: Vec<Vec<Option<String>>> = pipe.query(cx.con)?;
                    stored.extend(rows.iter().filter_map(|r| Stored::of(r)));
                }
                let views = stored.iter().map(Stored::view).collect();
                http(
                    cx.shared,
                    reply,
                    200,
                    crate::channels::list_page(caller, &q, views),
                );
            }
            ChannelRequest::Stats => {
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&cx.shared.keys.channels)
                    .arg(0)
                    .arg(-1)
                    .query(cx.con)?;
                let ids = &ids[..ids.len().min(crate::channels::MAX_STATS)];
                let (mut fields, mut lens) = (Vec::new(), Vec::new());
                if !ids.is_empty() {
                    let mut pipe = redis::pipe();
                    for id in ids {
                        let [ch, _] = cx.shared.keys.channel(id);
                        pipe.cmd("HMGET")
                            .arg(ch)
                            .arg(&Stored::FIELDS[..])
                            .arg("missed")
                            .arg("dropped");
                    }
                    fields = pipe.query(cx.con)?;
                    let mut pipe = redis::pipe();
                    for id in ids {
                        let [_, backlog] = cx.shared.keys.channel(id);
                        pipe.cmd("XLEN").arg(backlog);
                    }
                    lens = pipe.query(cx.con)?;
                }
                let num = |x: &Option<String>| {
                    x.as_deref()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let stored: Vec<(Stored, crate::channels::ChannelCounts)> = fields
                    .iter()
                    .zip(&lens)
                    .filter_map(|(f, len): (&Vec<Option<String>>, &u64)| {
                        let n = Stored::FIELDS.len();
                        let st = Stored::of(f.get(..n)?)?;
                        let counts = crate::channels::ChannelCounts {
                            backlog: *len,
                            missed: num(f.get(n)?),
                            dropped: num(f.get(n + 1)?),
                        };
                        Some((st, counts))
                    })
                    .filter(|(st, _)| caller.sees(&st.spec))
                    .collect();
                let rows = stored.iter().map(|(st, c)| (st.view(), *c)).collect();
                http(cx.shared, reply, 200, crate::channels::stats_page(rows));
            }
            ChannelRequest::Get(id) => match cx.read(&id)? {
                Some(st) if caller.sees(&st.spec) => {
                    http(cx.shared, reply, 200, st.view().detail(public_url))
                }
                _ => not_found(cx.shared, reply, &id),
            },
            ChannelRequest::Reconnect(id) => {
                if !cx.read(&id)?.is_some_and(|st| caller.sees(&st.spec)) {
                    not_found(cx.shared, reply, &id);
                    return Ok(());
                }
                match cx.call("reconnect", &id, "", &[])? {
                    Value::Int(missed) => http(
                        cx.shared,
                        reply,
                        200,
                        json!({"channel_id": id, "status": "connected",
                               "reconnected_at": crate::time::rfc3339_ms(now),
                               "missed_events": missed}),
                    ),
                    _ => not_found(cx.shared, reply, &id),
                }
            }
            ChannelRequest::Delete(id) => {
                let Some(st) = cx.read(&id)?.filter(|st| caller.sees(&st.spec)) else {
                    not_found(cx.shared, reply, &id);
                    return Ok(());
                };
                let socket = match cx.call("delete", &id, &st.spec.owner, &[&id])? {
                    Value::Nil => {
                        not_found(cx.shared, reply, &id);
                        return Ok(());
                    }
                    v => text(&v).unwrap_or_default(),
                };
                super::services::load_index(cx.shared, cx.con)?;
                // Its socket closes: here at once, on another node by a message to it.
                cx.tell(&socket, &id, "deleted")?;
                if let Some(s) = self.sockets.get(id.as_str()) {
                    if socket == cx.socket_name(s.at) {
                        let at = s.at;
                        self.forget(&id);
                        close(cx.shared, at, 1000, "channel deleted", None);
                    }
                }
                http(
                    cx.shared,
                    reply,
                    200,
                    json!({"channel_id": id, "unsubscribed": true,
                           "closed_at": crate::time::rfc3339_ms(now)}),
                );
            }
            ChannelRequest::Create(NewChannel { kind, event_types }) => {
                let mut spec = ChannelSpec {
                    channel_id: crate::channels::new_channel_id(),
                    kind,
                    event_types,
                    owner: caller.sub.clone(),
                    created_at_ms: 0,
                };
                let (path, filter) = match spec.kind.subscription() {
                    Ok(s) => s,
                    Err(e) => {
                        http(
                            cx.shared,
                            reply,
                            500,
                            json!({"error": {"code": "INTERNAL", "message": e}}),
                        );
                        return Ok(());
                    }
                };
                let sub = DurableSub {
                    id: spec.channel_id.clone(),
                    path,
                    events: spec.event_types.clone(),
                    filter,
                };
                let cap = if caller.admin {
                    0
                } else {
                    settings.max_per_user
                };
                let spec_json = serde_json::to_string(&spec).unwrap_or_default();
                let sub_json = sub.to_json().to_string();
                let id = spec.channel_id.clone();
                let r = cx.call(
                    "create",
                    &id,
                    &caller.sub,
                    &[
                        &id,
                        &spec_json,
                        &sub_json,
                        &cap.to_string(),
                        &now.to_string(),
                    ],
                )?;
                let Value::Array(v) = r else {
                    http(
                        cx.shared,
                        reply,
                        500,
                        json!({"error": {"code": "INTERNAL", "message": "channel.lua answered unexpectedly"}}),
                    );
                    return Ok(());
                };
                let first = v.first().map_or(0, |x| match x {
                    Value::Int(i) => *i,
                    _ => 0,
                });
                if first < 0 {
                    let owned = v.get(1).map_or(0, |x| match x {
                        Value::Int(i) => *i,
                        _ => 0,
                    });
                    let body =
                        crate::channels::limit_exceeded(&caller.sub, owned, settings.max_per_user);
                    http(cx.shared, reply, 429, body);
                    return Ok(());
                }
                spec.created_at_ms = first as u64;
                // Collecting from the next publication on, whichever node sequences it.
                super::services::load_index(cx.shared, cx.con)?;
                let view = ChannelView {
                    spec: &spec,
                    status: Status::Connected,
                    event_count: 0,
                    last_event_at_ms: None,
                };
                http(cx.shared, reply, 201, view.created(public_url));
            }
        }
        Ok(())
    }
}
