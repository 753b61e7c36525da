//! The applier: what a sequenced publication does on this node, whichever backend gave it
//! its `seq` — the entity change to the replica, the publication to the history window
//! and to every shard's queue, then the node's applied mark. The local sequencer
//! ([`crate::ingest`]) applies under its lock as it sequences; a cluster node's stream
//! reader applies each entry it reads, its own publications included. Same code, so a
//! node behaves the same on either backend.
//!
//! Ownership: one writer at a time, in `seq` order (the sequencer lock, or the reader
//! thread); shards read the replica, the history and the applied mark. Lock order: the
//! caller's (sequencer) → history; the replica's write lock is taken and released per
//! change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::entities::Replica;
use crate::history::{Appender, History};
use crate::publication::Publication;
use crate::router::Router;

/// See the module docs.
pub struct Applier {
    router: Arc<Router>,
    history: History,
    replica: Arc<Replica>,
    /// The newest `seq` applied here and handed to every shard, readable without a lock
    /// (a starting shard's `last_seq`; `since` waits for it).
    applied: AtomicU64,
}

impl Applier {
    /// An applier whose history window keeps `history_size` publications for at most
    /// `history_ttl_ms`, with everything up to `start_seq` taken as applied.
    pub fn new(
        router: Arc<Router>,
        replica: Arc<Replica>,
        history_size: usize,
        history_ttl_ms: u64,
        start_seq: u64,
    ) -> Applier {
        Applier {
            router,
            history: History::new(history_size, history_ttl_ms, start_seq),
            replica,
            applied: AtomicU64::new(start_seq),
        }
    }

    /// Starts applying publications that follow each other in `seq` order, timestamped
    /// `now_ms` (the history's clock); they are applied one by one with [`Batch::apply`]
    /// and the applied mark moves when the batch is [`Batch::finish`]ed. The history is
    /// locked for the batch (one lock per request, not per publication).
    pub fn batch(&self, now_ms: u64) -> Batch<'_> {
        Batch {
            applier: self,
            history: self.history.appender(now_ms),
            last: None,
        }
    }

    /// Moves the applied mark to `seq` with nothing to apply (a cluster node past a gap
    /// in the sequence: what it missed is given up, never delivered late).
    pub fn skip_to(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
    }

    /// The newest `seq` applied on this node.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }
}

/// Publications being applied: see [`Applier::batch`].
pub struct Batch<'a> {
    applier: &'a Applier,
    history: Appender<'a>,
    last: Option<u64>,
}

impl Batch<'_> {
    /// Applies one sequenced publication: its entity change (if any) to the replica, then
    /// the history window (a shard that has a publication always finds it there when it
    /// replays), then every shard's queue. The caller wakes the shards.
    pub fn apply(&mut self, p: Arc<Publication>) {
        if let Some(change) = &p.entity {
            self.applier.replica.apply(change, p.seq);
        }
        self.history.push(&p);
        self.applier.router.broadcast(&p);
        self.last = Some(p.seq);
    }

    /// Like [`Batch::apply`] but delivered to nobody: a cluster node loading the retained
    /// window at start-up, before anyone could have subscribed.
    pub fn record(&mut self, p: Arc<Publication>) {
        if let Some(change) = &p.entity {
            self.applier.replica.apply(change, p.seq);
        }
        self.history.push(&p);
        self.last = Some(p.seq);
    }

    /// Releases the history and moves the applied mark to the last publication applied.
    pub fn finish(self) {
        let Batch {
            applier,
            history,
            last,
        } = self;
        drop(history);
        if let Some(seq) = last {
            applier.applied.store(seq, Ordering::Release);
        }
    }
}
