//! Ingest: the sequencer. Every publication passes here to get its `seq` and `timestamp`
//! and its JSON encoded once, then goes to the router.
//!
//! One thread owns the sequence counter, so `seq` is a total order without a lock and
//! every shard sees publications in `seq` order. Shards hand it validated publish
//! requests over a channel; it answers the requesting connection through that shard's
//! mailbox, after the publications were handed to every shard. Later durable work
//! (history, entity state, service queues) belongs on this thread too, before the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde_json::value::RawValue;

use crate::metrics;
use crate::protocol::encode_event_tail;
use crate::router::{Router, ShardMsg};

/// A sequenced publication, shared by every shard and every connection that gets it.
#[derive(Debug)]
pub struct Publication {
    pub seq: u64,
    pub path: Box<str>,
    pub event_type: Box<str>,
    /// `"eventType":…,"path":…,"data":…,"timestamp":…,"seq":…}`: the bytes every
    /// subscriber's `event` ends with.
    pub tail: Box<[u8]>,
    /// When ingest sequenced it, for the publish → flush latency histogram.
    pub ingested_at: Instant,
}

impl Publication {
    pub fn new(seq: u64, path: &str, event_type: &str, data_json: &str, ts_ms: u64) -> Self {
        Publication {
            seq,
            path: path.into(),
            event_type: event_type.into(),
            tail: encode_event_tail(event_type, path, data_json, ts_ms, seq).into(),
            ingested_at: Instant::now(),
        }
    }
}

/// One validated item of a publish request.
#[derive(Debug)]
pub struct PublishItem {
    pub path: String,
    pub event_type: String,
    pub data: Box<RawValue>,
}

/// Where to send the outcome of a publish request.
#[derive(Clone, Copy, Debug)]
pub struct ReplyTo {
    pub shard: usize,
    pub key: u32,
    pub gen: u32,
}

/// The answer to a publish request (`202 {"accepted","firstSeq","lastSeq"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOutcome {
    pub accepted: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Requests to the ingest thread.
#[derive(Debug)]
pub enum IngestMsg {
    Publish {
        items: Vec<PublishItem>,
        source: metrics::Source,
        reply: Option<ReplyTo>,
    },
    Stop,
}

/// Handle to the running ingest thread.
pub struct Ingest {
    pub tx: Sender<IngestMsg>,
    /// The newest `seq` handed to the router.
    pub last_seq: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Publish requests that may wait for the ingest thread before shards are told "busy".
pub const INGEST_QUEUE: usize = 4096;

impl Ingest {
    pub fn start(router: Arc<Router>) -> std::io::Result<Ingest> {
        let (tx, rx) = crossbeam_channel::bounded(INGEST_QUEUE);
        let last_seq = Arc::new(AtomicU64::new(0));
        let ls = last_seq.clone();
        let thread = std::thread::Builder::new()
            .name("shardcast-ingest".into())
            .spawn(move || run(rx, router, ls))?;
        Ok(Ingest {
            tx,
            last_seq,
            thread: Some(thread),
        })
    }

    /// Stops the thread after it has handled everything already sent.
    pub fn stop(&mut self) {
        let _ = self.tx.send(IngestMsg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<IngestMsg>, router: Arc<Router>, last_seq: Arc<AtomicU64>) {
    let mut seq = last_seq.load(Ordering::Relaxed);
    let publications = metrics::PublicationCounters::new();
    while let Ok(msg) = rx.recv() {
        match msg {
            IngestMsg::Stop => break,
            IngestMsg::Publish {
                items,
                source,
                reply,
            } => {
                let first_seq = seq + 1;
                let ts = crate::time::unix_ms();
                for item in &items {
                    seq += 1;
                    let p = Arc::new(Publication::new(
                        seq,
                        &item.path,
                        &item.event_type,
                        item.data.get(),
                        ts,
                    ));
                    router.broadcast(&p);
                }
                last_seq.store(seq, Ordering::Release);
                publications.add(source, items.len() as u64);
                if let Some(r) = reply {
                    router.send_control(
                        r.shard,
                        ShardMsg::PublishDone {
                            key: r.key,
                            gen: r.gen,
                            outcome: PublishOutcome {
                                accepted: items.len(),
                                first_seq,
                                last_seq: seq,
                            },
                        },
                    );
                }
            }
        }
    }
}
