//! A publication: what ingest hands to every shard, encoded once and shared by every
//! connection that gets it.
//!
//! Built by [`crate::ingest`] (which alone sets `seq` and `timestamp`), read by the
//! router, the history window and the shards. Immutable once sequenced (`data` is parsed
//! at most once, on first use, behind a `OnceLock`).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::Value;

use crate::protocol::{encode_event_body, encode_event_tail, finish_event_tail};

/// A sequenced publication, shared by every shard and every connection that gets it.
///
/// Kept at most 112 bytes, so that with the `Arc` counts it stays in the allocator's
/// fast bins: at 136 bytes ingest measured ~25% slower per publication (frees went through
/// the unsorted bin and `malloc_consolidate`). A test below holds it there.
///
/// The encoded `tail` is what every recipient's message ends with, whatever its head
/// (`subscriptionIds` for subscriptions, and later `channelId` for channels, `taskId` and
/// `attempt` for service tasks: see [`crate::protocol::EventHead`]).
#[derive(Debug)]
pub struct Publication {
    pub seq: u64,
    pub path: Box<str>,
    pub event_type: Box<str>,
    /// `"eventType":…,"path":…,"data":…,"timestamp":…,"seq":…}`: the bytes every
    /// subscriber's `event` ends with.
    pub tail: Vec<u8>,
    /// Where `data` sits in `tail`, for [`Publication::data`].
    data_at: (u32, u32),
    /// `data` parsed, on first use by a filter: once per publication, shared by all
    /// shards, and never paid when no filter looks at it.
    data: OnceLock<Arc<Value>>,
    /// For an entity write: the states before and after, so each shard decides
    /// "entered", "still in", "left" on its own.
    pub entity: Option<Box<EntityChange>>,
    /// When ingest sequenced it, for the publish → flush latency histogram.
    pub ingested_at: Instant,
}

/// What an entity write changed (PROTOCOL.md §8).
#[derive(Debug, Clone)]
pub struct EntityChange {
    pub collection: Box<str>,
    pub id: Box<str>,
    /// The state before the write; `None` when it created the entity.
    pub before: Option<Arc<Value>>,
    /// The state after; `None` when it deleted the entity.
    pub after: Option<Arc<Value>>,
}

impl Publication {
    pub fn new(seq: u64, path: &str, event_type: &str, data_json: &str, ts_ms: u64) -> Self {
        let mut p = Self::unsequenced(path, event_type, data_json, Instant::now());
        p.seq = seq;
        p.tail = encode_event_tail(event_type, path, data_json, ts_ms, seq);
        p
    }

    /// Everything but `seq` and `timestamp`, which [`Publication::sequence`] adds: the
    /// encoding happens outside the sequencer lock.
    pub(crate) fn unsequenced(path: &str, event_type: &str, data_json: &str, at: Instant) -> Self {
        let tail = encode_event_body(event_type, path, data_json);
        let end = tail.len() as u32;
        Publication {
            seq: 0,
            path: path.into(),
            event_type: event_type.into(),
            data_at: (end - data_json.len() as u32, end),
            tail,
            data: OnceLock::new(),
            entity: None,
            ingested_at: at,
        }
    }

    /// `at`: when it was sequenced (one clock read per request, not per publication).
    pub(crate) fn sequence(&mut self, seq: u64, timestamp: &[u8], at: Instant) {
        self.seq = seq;
        finish_event_tail(&mut self.tail, timestamp, seq);
        self.ingested_at = at;
    }

    /// The publication's `data` as JSON (entities: the state it shows), parsed on first
    /// use.
    pub fn data(&self) -> &Value {
        self.data.get_or_init(|| {
            let (a, b) = self.data_at;
            // Validated at ingest, so this parses; `null` is the safe reading otherwise.
            Arc::new(
                serde_json::from_slice(&self.tail[a as usize..b as usize]).unwrap_or(Value::Null),
            )
        })
    }

    /// Whether [`Publication::data`] has been parsed (or set) yet.
    #[cfg(test)]
    pub(crate) fn data_parsed(&self) -> bool {
        self.data.get().is_some()
    }

    /// Sets the parsed `data` when the caller has it already (an entity's state).
    pub(crate) fn set_data(&mut self, v: Arc<Value>) {
        let _ = self.data.set(v);
    }

    /// The `data` JSON text as encoded in the tail.
    pub fn data_json(&self) -> &[u8] {
        let (a, b) = self.data_at;
        &self.tail[a as usize..b as usize]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stays_small() {
        assert!(std::mem::size_of::<super::Publication>() <= 112);
    }
}
