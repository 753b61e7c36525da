//! Fan-out from ingest to the shards: one bounded lock-free queue per shard, with a
//! coalesced wake-up.
//!
//! Publications are pushed by ingest, under its sequencer lock (so each queue holds them
//! in `seq` order), from whichever shard thread read the publish request; any thread may
//! send control messages (drain). Each shard is the only consumer of its own mailbox. The
//! queue is a crossbeam array channel: a push is a few atomics, no lock.
//!
//! A full queue never blocks ingest and never delays other shards. When a shard's queue
//! is full:
//! - a publication is not queued for that shard; it goes to the shard's *overflow list*
//!   (bounded by [`OVERFLOW_PUBLICATIONS`]) and is counted in
//!   `shardcast_shard_queue_full_total{shard}`. The shard later matches it against its
//!   subscriptions and counts it as dropped for each one, so the affected clients get an
//!   exact `QUEUE_OVERFLOW` warning, just as for a full connection ring;
//! - past that bound only a count is kept (`lost`); the shard then warns every
//!   subscription it has, with that count as an upper bound;
//! - control messages (which must not be lost) go to the overflow list unconditionally;
//!   they are few (one per in-flight publish request).
//!
//! The overflow list takes a mutex, but only on this cold path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::publication::Publication;

/// Publications kept per shard for exact drop accounting once its queue is full.
pub const OVERFLOW_PUBLICATIONS: usize = 65_536;

/// What a shard receives.
#[derive(Debug)]
pub enum ShardMsg {
    /// A sequenced publication to match and deliver.
    Publication(Arc<Publication>),
    /// SIGTERM: stop accepting and close connections over the drain period.
    Drain,
    /// The answer to a request of one of this shard's connections whose work finished
    /// elsewhere (a durable write): the shard writes it if the connection is still
    /// there (`gen` matches).
    Answer {
        conn: u32,
        gen: u32,
        req: u32,
        answer: Answer,
    },
    /// Service tasks for one instance (a service connection), as `event` messages in
    /// the order they go out; dropped with the connection if `gen` no longer matches
    /// (the services thread puts them back when it hears the instance left).
    Tasks {
        conn: u32,
        gen: u32,
        messages: Vec<Vec<u8>>,
    },
    /// Events of a channel's backlog for its socket, up to `seq` `upto`: the shard says
    /// when they are written (`ServiceCmd::ChannelWritten`).
    ChannelEvents {
        conn: u32,
        gen: u32,
        upto: u64,
        messages: Vec<Vec<u8>>,
    },
    /// A live query's result, read off the shard ([`crate::offload`]) for the query
    /// tagged `tag` of the connection, by its load number `load`: dropped if the
    /// connection (`gen`), the query or that load is gone.
    LiveQueryLoaded {
        conn: u32,
        gen: u32,
        tag: u32,
        load: u32,
        result: Box<LoadedResult>,
    },
    /// A `subscribedEvents` answer and the `since` replays it announced, prepared off the
    /// shard ([`crate::offload`]) as WebSocket frames, `replayed` publications in all:
    /// written, then the connection's flushes resume; dropped if `gen` no longer matches.
    Replayed {
        conn: u32,
        gen: u32,
        frames: Vec<u8>,
        replayed: u64,
    },
    /// Close a WebSocket with `code` and `reason`, after `error` (a message) if any.
    Close {
        conn: u32,
        gen: u32,
        code: u16,
        reason: String,
        error: Option<Vec<u8>>,
    },
}

/// A live query's result as read from the replica at its `seq`: the tracked ids and the
/// messages (`liveQueryCreated`, then the `liveQueryData` pages), in order.
#[derive(Debug)]
pub struct LoadedResult {
    pub seq: u64,
    pub tracked: hashbrown::HashSet<Box<str>>,
    pub messages: Vec<Vec<u8>>,
}

/// Where an answer goes: a connection of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: usize,
    pub conn: u32,
    pub gen: u32,
    /// Which of the connection's requests (its answers are written in request order).
    pub req: u32,
}

/// An answer produced off the shard.
#[derive(Debug)]
pub enum Answer {
    /// A REST answer: status and JSON body.
    Http {
        status: u16,
        body: serde_json::Value,
    },
    /// A REST answer whose JSON body is written already (entity reads).
    Json { status: u16, body: Vec<u8> },
    /// A WebSocket message (complete JSON text) for the connection.
    Ws(Vec<u8>),
    /// An entity read whose wait is over (cluster mode: this node has applied every
    /// write answered before it): the shard runs it on the replica and answers with that.
    Read(crate::entities::EntityRead),
    /// A `?uuid=` ticket redeemed (or refused) for an upgraded connection: it is
    /// authenticated with these claims, or refused with close 4001.
    Ticket(Result<crate::auth::jwt::Claims, crate::auth::tickets::TicketError>),
}

/// What piled up while a shard's queue was full.
#[derive(Default, Debug)]
pub struct Overflow {
    /// Control messages, in the order they were sent.
    pub control: Vec<ShardMsg>,
    /// Publications this shard will never deliver: to be counted as drops.
    pub dropped: Vec<Arc<Publication>>,
    /// Publications dropped past the overflow bound: only their number is known.
    pub lost: u64,
}

/// One shard's inbox.
pub struct Mailbox {
    tx: Sender<ShardMsg>,
    rx: Receiver<ShardMsg>,
    overflow: Mutex<Overflow>,
    /// Set while `overflow` holds something; read without the lock on every drain.
    has_overflow: AtomicBool,
    /// Set by a producer that woke the shard; cleared by the shard before it drains, so
    /// a burst of pushes costs one wake-up system call, not one per push.
    notified: AtomicBool,
    waker: mio::Waker,
    /// Times a publication found this queue full.
    pub full_events: AtomicU64,
}

impl Mailbox {
    pub fn new(capacity: usize, waker: mio::Waker) -> Mailbox {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        Mailbox {
            tx,
            rx,
            overflow: Mutex::new(Overflow::default()),
            has_overflow: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            waker,
            full_events: AtomicU64::new(0),
        }
    }

    /// Wakes the shard unless a wake-up is already on its way.
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            // A failed wake means the shard's poll is gone (shutdown); nothing to do.
            let _ = self.waker.wake();
        }
    }

    fn lock_overflow(&self) -> std::sync::MutexGuard<'_, Overflow> {
        // A panic while holding this lock cannot leave the lists inconsistent (pushes
        // only), so a poisoned lock is still usable.
        self.overflow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a publication without waking the shard (the caller wakes it, once, after
    /// its batch); `false` when it went to the overflow path.
    pub fn send_publication(&self, p: Arc<Publication>) -> bool {
        let queued = match self.tx.try_send(ShardMsg::Publication(p)) {
            Ok(()) => true,
            Err(TrySendError::Full(ShardMsg::Publication(p)))
            | Err(TrySendError::Disconnected(ShardMsg::Publication(p))) => {
                self.full_events.fetch_add(1, Ordering::Relaxed);
                let mut o = self.lock_overflow();
                if o.dropped.len() < OVERFLOW_PUBLICATIONS {
                    o.dropped.push(p);
                } else {
                    o.lost += 1;
                }
                self.has_overflow.store(true, Ordering::Release);
                false
            }
            Err(_) => false,
        };
        queued
    }

    /// Sends a message that must arrive (never dropped).
    pub fn send_control(&self, m: ShardMsg) {
        if let Err(e) = self.tx.try_send(m) {
            let m = e.into_inner();
            self.lock_overflow().control.push(m);
            self.has_overflow.store(true, Ordering::Release);
        }
        self.wake();
    }

    /// Consumer side: the shard calls this when its waker fired, before draining.
    pub fn clear_notified(&self) {
        self.notified.store(false, Ordering::Release);
    }

    /// Consumer side: the next queued message.
    pub fn try_recv(&self) -> Option<ShardMsg> {
        self.rx.try_recv().ok()
    }

    /// Consumer side: takes what piled up on the overflow path, if anything.
    pub fn take_overflow(&self) -> Option<Overflow> {
        if !self.has_overflow.load(Ordering::Acquire) {
            return None;
        }
        let mut o = self.lock_overflow();
        self.has_overflow.store(false, Ordering::Release);
        Some(std::mem::take(&mut *o))
    }

    /// Nothing waits: neither the queue nor the overflow list holds a message.
    pub fn is_idle(&self) -> bool {
        self.rx.is_empty() && !self.has_overflow.load(Ordering::Acquire)
    }

    /// Messages waiting in the queue (for the depth gauge).
    pub fn depth(&self) -> usize {
        self.rx.len()
    }
}

/// The set of shard mailboxes, indexed by shard id.
pub struct Router {
    mailboxes: Vec<Arc<Mailbox>>,
}

impl Router {
    pub fn new(mailboxes: Vec<Arc<Mailbox>>) -> Router {
        Router { mailboxes }
    }

    /// Hands one pointer to the publication to every shard (see [`Router::wake_all`]).
    pub fn broadcast(&self, p: &Arc<Publication>) {
        for m in &self.mailboxes {
            m.send_publication(p.clone());
        }
    }

    /// Wakes every shard after a batch of [`Router::broadcast`]s.
    pub fn wake_all(&self) {
        for m in &self.mailboxes {
            m.wake();
        }
    }

    pub fn send_control(&self, shard: usize, m: ShardMsg) {
        if let Some(mb) = self.mailboxes.get(shard) {
            mb.send_control(m);
        }
    }

    /// Hands an answer to the shard that holds the connection.
    pub fn answer(&self, to: ReplyTo, answer: Answer) {
        self.send_control(
            to.shard,
            ShardMsg::Answer {
                conn: to.conn,
                gen: to.gen,
                req: to.req,
                answer,
            },
        );
    }

    pub fn mailbox(&self, shard: usize) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get(shard)
    }

    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(seq: u64) -> Arc<Publication> {
        Arc::new(Publication::new(seq, "a", "e", "null", 0))
    }

    #[test]
    fn full_queue_spills_publications_and_keeps_control() {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let mb = Mailbox::new(2, waker);
        assert!(mb.send_publication(publication(1)));
        assert!(mb.send_publication(publication(2)));
        assert!(!mb.send_publication(publication(3)));
        mb.send_control(ShardMsg::Drain);
        assert_eq!(mb.full_events.load(Ordering::Relaxed), 1);
        // The queue holds 1 and 2, in order.
        for want in [1, 2] {
            match mb.try_recv() {
                Some(ShardMsg::Publication(p)) => assert_eq!(p.seq, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(mb.try_recv().is_none());
        let o = mb.take_overflow().unwrap();
        assert_eq!(o.dropped.len(), 1);
        assert_eq!(o.dropped[0].seq, 3);
        assert!(matches!(o.control[..], [ShardMsg::Drain]));
        assert!(mb.take_overflow().is_none());
    }
}
