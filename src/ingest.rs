//! Ingest: the sequencer. Every publication passes here to get its `seq` and `timestamp`
//! and its JSON encoded once, then goes to the router.
//!
//! Run by the shard that read the publish request, on its own thread, inside one short
//! critical section (the sequencer lock): assign `seq`, encode, hand one pointer to each
//! shard's queue. Because every push happens under that lock, `seq` is a total order and
//! every shard's queue holds publications in `seq` order, whichever shards publish. The
//! shards are woken after the lock is released, and the publisher is answered at once,
//! after its publications were handed to every shard.
//!
//! Why not a thread of its own (as before): on a loaded core, handing each request to a
//! sequencer thread and the answer back cost two context switches, ≈ 0.3 ms median and a
//! millisecond-scale tail under the scheduler (docs/PERFORMANCE.md). Durable work of later
//! issues (history, entity state, service queues) that must wait for a group commit
//! belongs in a stage of its own; plain publications need none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::value::RawValue;

use crate::metrics;
use crate::protocol::{encode_event_body, encode_event_tail, finish_event_tail};
use crate::router::Router;

/// A sequenced publication, shared by every shard and every connection that gets it.
#[derive(Debug)]
pub struct Publication {
    pub seq: u64,
    pub path: Box<str>,
    pub event_type: Box<str>,
    /// `"eventType":…,"path":…,"data":…,"timestamp":…,"seq":…}`: the bytes every
    /// subscriber's `event` ends with.
    pub tail: Vec<u8>,
    /// When ingest sequenced it, for the publish → flush latency histogram.
    pub ingested_at: Instant,
}

impl Publication {
    pub fn new(seq: u64, path: &str, event_type: &str, data_json: &str, ts_ms: u64) -> Self {
        Publication {
            seq,
            path: path.into(),
            event_type: event_type.into(),
            tail: encode_event_tail(event_type, path, data_json, ts_ms, seq),
            ingested_at: Instant::now(),
        }
    }

    /// Everything but `seq` and `timestamp`, which [`Publication::sequence`] adds: the
    /// encoding happens outside the sequencer lock.
    fn unsequenced(item: &PublishItem) -> Self {
        Publication {
            seq: 0,
            path: item.path.as_str().into(),
            event_type: item.event_type.as_str().into(),
            tail: encode_event_body(&item.event_type, &item.path, item.data.get()),
            ingested_at: Instant::now(),
        }
    }

    fn sequence(&mut self, seq: u64, timestamp: &[u8]) {
        self.seq = seq;
        finish_event_tail(&mut self.tail, timestamp, seq);
        self.ingested_at = Instant::now();
    }
}

/// One validated item of a publish request.
#[derive(Debug)]
pub struct PublishItem {
    pub path: String,
    pub event_type: String,
    pub data: Box<RawValue>,
}

/// The answer to a publish request (`202 {"accepted","firstSeq","lastSeq"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub accepted: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The sequencer: the only place `seq` is assigned.
pub struct Ingest {
    /// The last `seq` handed out; the lock is the sequencer lock.
    seq: Mutex<u64>,
    router: Arc<Router>,
    /// The newest `seq` handed to the router, readable without the lock (a starting
    /// shard's `last_seq`).
    last_seq: AtomicU64,
    publications: metrics::PublicationCounters,
}

impl Ingest {
    pub fn new(router: Arc<Router>) -> Ingest {
        Ingest {
            seq: Mutex::new(0),
            router,
            last_seq: AtomicU64::new(0),
            publications: metrics::PublicationCounters::new(),
        }
    }

    /// The newest `seq` handed to the shards.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Sequences validated items in order and hands each to every shard; returns the
    /// answer for the publisher.
    pub fn publish(&self, items: &[PublishItem], source: metrics::Source) -> PublishOutcome {
        // Encoding happens before the lock: a shard publishing at the same moment waits
        // only for the sequencing and the queue pushes, not for this request's encoding
        // (measured in benches/hot_path.rs, "ingest").
        let publications: Vec<Publication> = items.iter().map(Publication::unsequenced).collect();
        let (first_seq, last_seq) = {
            // A panic under this lock cannot leave the counter inconsistent (it only
            // grows), so a poisoned lock is still usable.
            let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            let first_seq = *seq + 1;
            // Taken under the lock, so timestamps never go back as `seq` goes up.
            let ts = crate::protocol::timestamp_text(crate::time::unix_ms());
            for mut p in publications {
                *seq += 1;
                p.sequence(*seq, &ts);
                self.router.broadcast(&Arc::new(p));
            }
            self.last_seq.store(*seq, Ordering::Release);
            (first_seq, *seq)
        };
        // Wake-ups are system calls: outside the lock.
        self.router.wake_all();
        self.publications.add(source, items.len() as u64);
        PublishOutcome {
            accepted: items.len(),
            first_seq,
            last_seq,
        }
    }
}
