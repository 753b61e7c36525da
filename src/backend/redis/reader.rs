//! The reader thread of the Redis backend: the stream of publications, applied on this
//! node in `seq` order through the [`crate::apply::Applier`], this node's own
//! publications included (no shortcut: one order for every node).
//!
//! At start it loads every entity (state and version) and the stream's retained window
//! into the replica and the history, without delivering them (nobody has subscribed
//! yet); the node is ready once that is done and it has read the stream up to its end.
//! After a lost connection it resumes from the last id it applied: no gap, no duplicate.
//! A gap in `seq` (the stream was trimmed past it while the node was away, or Redis lost
//! its data) makes it reload the entities and start the history window after the gap.
//!
//! It also reads this node's control stream (`ctl:{node_id}`, messages from other nodes:
//! a channel socket here was replaced or its channel deleted) in the same `XREAD`, and
//! hands them to the services thread.
//!
//! Runs on its own thread with its own connection; it is the only writer of the replica,
//! the history and the applied mark in cluster mode.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use serde_json::Value as Json;

use super::Shared;
use crate::publication::{EntityChange, Publication};

/// Entries read per call at most.
const COUNT: usize = 1000;

/// How long a read blocks waiting for new entries (ms).
const BLOCK_MS: u64 = 1000;

const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// How often the reader also asks for the counters (the head for the lag gauge and
/// `since` bounds, the fencing counter for a re-seed): not with every read, which at low
/// rates would double the reads' commands.
const COUNTERS_EVERY: Duration = Duration::from_millis(100);

/// One stream entry's fields.
#[derive(Default, Debug)]
struct Entry {
    seq: u64,
    path: String,
    event_type: String,
    /// A plain publication's data (JSON text).
    data: String,
    /// An entity write: collection, id, and the new state (empty: deleted).
    entity: Option<(String, String, String)>,
    ts_ms: u64,
    /// The service groups it made tasks for, one per line.
    groups: Option<String>,
}

pub(super) fn run(shared: Arc<Shared>) {
    let mut last_id: Option<String> = None;
    let mut control_id: Option<String> = None;
    let mut backoff = BACKOFF.0;
    let mut warned = false;
    while !shared.stopping.load(Ordering::Acquire) {
        let mut con = match connect(&shared) {
            Ok(c) => c,
            Err(e) => {
                down(&shared);
                if !warned {
                    tracing::warn!("Redis unreachable (reader): {e}; retrying");
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        crate::metrics::redis_connected("reader", true);
        backoff = BACKOFF.0;
        warned = false;
        if last_id.is_none() {
            let started = Instant::now();
            match fill(&shared, &mut con) {
                Ok(id) => {
                    tracing::info!(
                        applied = shared.applier.applied(),
                        entities = shared.applier.replica().len(),
                        ms = started.elapsed().as_millis() as u64,
                        "loaded entities and the history window from Redis"
                    );
                    last_id = Some(id);
                }
                Err(e) => {
                    tracing::warn!("cannot load from Redis: {e}; retrying");
                    down(&shared);
                    continue;
                }
            }
        }
        if control_id.is_none() {
            // Messages to an earlier process of this node id are not this one's.
            match control_end(&shared, &mut con) {
                Ok(id) => control_id = Some(id),
                Err(e) => {
                    tracing::warn!("cannot read the control stream: {e}; retrying");
                    down(&shared);
                    continue;
                }
            }
        }
        let (Some(id), Some(ctl)) = (last_id.as_mut(), control_id.as_mut()) else {
            continue;
        };
        let mut counters_at: Option<Instant> = None;
        loop {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            let counters = counters_at.is_none_or(|t| t.elapsed() >= COUNTERS_EVERY);
            if counters {
                counters_at = Some(Instant::now());
            }
            match read(&shared, &mut con, id, ctl, counters) {
                Ok(n) => {
                    if n < COUNT {
                        // Read to the end of the stream: caught up.
                        shared.reader_up.store(true, Ordering::Release);
                    }
                }
                Err(e) => {
                    tracing::warn!("Redis reader lost its connection: {e}; resuming after {id}");
                    down(&shared);
                    break;
                }
            }
        }
    }
}

/// The id of the newest message on this node's control stream ("0-0": none).
fn control_end(shared: &Shared, con: &mut redis::Connection) -> redis::RedisResult<String> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(shared.keys.control(&shared.node_id))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    Ok(control_of(&reply)
        .pop()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

fn down(shared: &Shared) {
    shared.reader_up.store(false, Ordering::Release);
    crate::metrics::redis_connected("reader", false);
}

fn connect(shared: &Shared) -> redis::RedisResult<redis::Connection> {
    let con = shared
        .client
        .get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_millis(BLOCK_MS + 5000)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

/// Start-up: every entity at its version, then the stream's retained window into the
/// history (and, where newer, the replica), delivered to nobody. Returns the last id.
fn fill(shared: &Shared, con: &mut redis::Connection) -> redis::RedisResult<String> {
    load_entities(shared, con)?;
    let mut from = "-".to_string();
    let mut last = "0-0".to_string();
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&shared.keys.stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(COUNT)
            .query(con)?;
        let entries = entries_of(&reply);
        let n = entries.len();
        if let Some(e) = entries.last() {
            last = format!("{}-0", e.seq);
            from = format!("({last}");
        }
        apply(shared, con, entries, false)?;
        if n < COUNT {
            return Ok(last);
        }
    }
}

/// Replaces the replica with every entity in Redis, each at its version.
fn load_entities(shared: &Shared, con: &mut redis::Connection) -> redis::RedisResult<()> {
    let replica = shared.applier.replica();
    replica.reset();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(shared.keys.entity_pattern())
            .arg("COUNT")
            .arg(COUNT)
            .query(con)?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("HMGET").arg(k).arg("s").arg("v");
            }
            let states: Vec<(Option<Vec<u8>>, Option<u64>)> = pipe.query(con)?;
            for (k, (state, version)) in keys.iter().zip(states) {
                let (Some((c, id)), Some(state), Some(version)) =
                    (shared.keys.entity_of(k), state, version)
                else {
                    continue;
                };
                match serde_json::from_slice(&state) {
                    Ok(v) => replica.load(c, id, v, version),
                    Err(e) => tracing::error!(key = %k, "an entity in Redis is not JSON: {e}"),
                }
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Reads what follows `last_id` (blocking up to [`BLOCK_MS`]) and applies it; returns how
/// many entries came. Also learns the head (the counter) to report the lag, and the
/// fencing counter (a Redis that lost its data is re-seeded above what any node saw).
fn read(
    shared: &Shared,
    con: &mut redis::Connection,
    last_id: &mut String,
    control_id: &mut String,
    counters: bool,
) -> redis::RedisResult<usize> {
    let control = shared.keys.control(&shared.node_id);
    let mut pipe = redis::pipe();
    if counters {
        pipe.cmd("GET")
            .arg(&shared.keys.seq)
            .cmd("GET")
            .arg(&shared.keys.fence);
    }
    pipe.cmd("XREAD")
        .arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS")
        .arg(&shared.keys.stream)
        .arg(&control)
        .arg(last_id.as_str())
        .arg(control_id.as_str());
    let mut replies: Vec<Value> = pipe.query(con)?;
    let reply = replies.pop().unwrap_or(Value::Nil);
    if let [head, fence] = &replies[..] {
        if let Ok(Some(h)) = redis::from_redis_value::<Option<u64>>(head.clone()) {
            shared.head.fetch_max(h, Ordering::AcqRel);
        }
        if let Ok(Some(f)) = redis::from_redis_value::<Option<u64>>(fence.clone()) {
            shared.fence_seen.fetch_max(f, Ordering::AcqRel);
        }
    }
    // XREAD answers [[stream, entries], ...] (RESP3: a map), or nil when nothing came
    // in time: the publications, and the control messages to this node.
    let mut entries = Vec::new();
    for (name, items) in streams_of(&reply) {
        if name == control {
            for (id, fields) in control_of(items) {
                *control_id = id;
                shared.control_services(fields);
            }
        } else {
            entries = entries_of(items);
        }
    }
    let n = entries.len();
    if let Some(e) = entries.last() {
        *last_id = format!("{}-0", e.seq);
    }
    let woken: Vec<String> = entries
        .iter()
        .filter_map(|e| e.groups.as_deref())
        .flat_map(|g| g.split('\n'))
        .map(String::from)
        .collect();
    if !woken.is_empty() {
        shared.wake_services(woken);
    }
    apply(shared, con, entries, true)?;
    let applied = shared.applier.applied();
    let head = shared.head.load(Ordering::Acquire).max(applied);
    crate::metrics::stream_lag(head - applied);
    Ok(n)
}

/// Applies entries in order (`deliver`: to the shards too); skips what is applied
/// already; a gap in `seq` reloads the entities and restarts the history window.
fn apply(
    shared: &Shared,
    con: &mut redis::Connection,
    entries: Vec<Entry>,
    deliver: bool,
) -> redis::RedisResult<()> {
    let applier = &shared.applier;
    let mut prev = applier.applied();
    let mut i = 0;
    while i < entries.len() {
        let ts = entries.last().map_or(0, |e| e.ts_ms);
        let mut batch = applier.batch(ts);
        let mut gap = None;
        while i < entries.len() {
            let e = &entries[i];
            if e.seq <= prev {
                i += 1;
                continue;
            }
            if prev != 0 && e.seq != prev + 1 {
                gap = Some(e.seq);
                break;
            }
            let p = Arc::new(publication(shared, e));
            if deliver {
                batch.apply(p);
            } else {
                batch.record(p);
            }
            prev = e.seq;
            i += 1;
        }
        batch.finish();
        if let Some(seq) = gap {
            tracing::warn!(
                applied = prev,
                next = seq,
                "a gap in the stream (trimmed while this node was away, or Redis lost its \
                 data): reloading entities; since from before it answers recovered: false"
            );
            load_entities(shared, con)?;
            applier.history().reset(seq - 1);
            // Taken as applied up to the gap, so the next entry follows on.
            prev = seq - 1;
            applier.skip_to(prev);
        }
    }
    if deliver {
        applier.router().wake_all();
    }
    shared.release(applier.applied());
    Ok(())
}

/// The publication an entry stands for; an entity write's state before is this node's
/// replica's (entries are applied in order, so it is the state the write replaced).
fn publication(shared: &Shared, e: &Entry) -> Publication {
    let at = Instant::now();
    let ts = crate::protocol::timestamp_text(e.ts_ms);
    let mut p = match &e.entity {
        None => Publication::unsequenced(&e.path, &e.event_type, &e.data, at),
        Some((collection, id, after)) => {
            let before = shared.applier.replica().get(collection, id);
            let after: Option<Arc<Json>> = (!after.is_empty())
                .then(|| serde_json::from_str(after).ok().map(Arc::new))
                .flatten();
            let shown = after
                .clone()
                .or_else(|| before.clone())
                .unwrap_or_else(|| Arc::new(Json::Null));
            let data = if after.is_some() {
                e.entity
                    .as_ref()
                    .map_or("null", |x| x.2.as_str())
                    .to_string()
            } else {
                serde_json::to_string(&*shown).unwrap_or_else(|_| "null".into())
            };
            let mut p = Publication::unsequenced(&e.path, &e.event_type, &data, at);
            p.set_data(shown);
            p.entity = Some(Box::new(EntityChange {
                collection: collection.as_str().into(),
                id: id.as_str().into(),
                before,
                after,
            }));
            p
        }
    };
    p.sequence(e.seq, &ts, at);
    p
}

/// The streams of an `XREAD` reply: (name, entries).
fn streams_of(reply: &Value) -> Vec<(String, &Value)> {
    match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => Some((text(&pair[0])?, &pair[1])),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The control messages of an `XREAD` reply's stream: (entry id, fields).
fn control_of(v: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = pair.first().and_then(text)?;
            let Some(Value::Array(fields)) = pair.get(1) else {
                return None;
            };
            let kv = fields
                .chunks(2)
                .filter_map(|kv| Some((kv.first().and_then(text)?, kv.get(1).and_then(text)?)))
                .collect();
            Some((id, kv))
        })
        .collect()
}

/// The entries of an `XRANGE` reply (or of one stream in an `XREAD` reply).
fn entries_of(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else { continue };
        let (Some(id), Some(Value::Array(fields))) = (pair.first().and_then(text), pair.get(1))
        else {
            continue;
        };
        let Some(seq) = id.split('-').next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let mut e = Entry {
            seq,
            ..Entry::default()
        };
        let (mut c, mut i, mut a) = (None, None, None);
        for kv in fields.chunks(2) {
            let (Some(k), Some(v)) = (kv.first().and_then(text), kv.get(1).and_then(text)) else {
                continue;
            };
            match k.as_str() {
                "p" => e.path = v,
                "e" => e.event_type = v,
                "d" => e.data = v,
                "t" => e.ts_ms = v.parse().unwrap_or(0),
                "c" => c = Some(v),
                "i" => i = Some(v),
                "a" => a = Some(v),
                "g" => e.groups = Some(v),
                _ => {}
            }
        }
        if let (Some(c), Some(i)) = (c, i) {
            e.entity = Some((c, i, a.unwrap_or_default()));
        }
        out.push(e);
    }
    out
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
