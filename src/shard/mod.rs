//! A shard: one OS thread running one event loop (mio), owning a slice of the
//! connections and everything about them.
//!
//! Each shard has its own `SO_REUSEPORT` listener on the one port, so the kernel spreads
//! accepts over shards with no shared acceptor. A connection lives and dies on the shard
//! that accepted it; its state (auth, options, subscriptions, ring, counters) is a slab
//! entry here, and the subscription index, id interner, timers and frame cache are this
//! shard's alone. [`Shard`] is `!Send` on purpose (`PhantomData<*const ()>`): the
//! compiler keeps its state on its thread. The only ways in are the socket events and the
//! [`Mailbox`](crate::router::Mailbox) the router fills.
//!
//! Submodules split the loop's work: `http_conn` (requests, upgrades), `ws_conn`
//! (frames, commands, auth, heartbeats, closing), `fanout` (matching publications,
//! building frames once, rings, flushes), `feed` (the shared frame logs of connections
//! holding the same single subscription).

pub mod conn;
mod deflate;
mod fanout;
pub mod feed;
pub mod filtered;
mod flush;
mod http_conn;
pub mod index;
pub mod interner;
mod live_query;
pub mod replay;
pub mod ring;
mod service;
mod uring;
mod ws_conn;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::metrics::ShardMetrics;
use crate::node::Node;
use crate::protocol::ws;
use crate::router::{Mailbox, ShardMsg};
use conn::{Conn, Frame, HttpState, Kind};
use filtered::FilteredIndex;
use index::Index;
use interner::Interner;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Mailbox messages handled per loop iteration before sockets get a turn again.
const MAILBOX_BUDGET: usize = 8192;
/// And the time a loop iteration spends on them (checked every [`MAILBOX_CHECK`]
/// messages): a burst of answers that each let a pipelining connection's next requests in,
/// or of publications to many subscribers, would otherwise hold the turn for tens of ms
/// (issue 21: no shard stalls; a turn's budget is 5 ms, flushes and sockets included).
const MAILBOX_TIME: Duration = Duration::from_millis(2);
const MAILBOX_CHECK: usize = 32;
/// How often a shard with parked subscribes looks at them again when nothing wakes it.
const PARKED_POLL: Duration = Duration::from_millis(1);
/// How long a closed connection waits for the peer's close frame or FIN.
const LINGER_MS: u64 = 2000;
/// Period of the shard's housekeeping (gauges).
const UPKEEP_MS: u64 = 1000;

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// No `auth` message in time: close 4002.
    AuthTimeout,
    /// Send the server `ping`.
    Ping,
    /// The `ping` was not answered in time: close 4003.
    PongCheck,
    /// The oldest waiting message reached `batchMs`.
    Flush,
    /// A cohort of a feed (`key` is the feed's slot) may be due.
    FeedFlush,
    /// Give up waiting for the peer to finish closing.
    Linger,
    /// This connection's turn to be closed during a drain.
    DrainClose,
    /// Shard housekeeping.
    Upkeep,
    /// An HTTP connection may have run out of `limits.request_timeout_ms`.
    RequestTimeout,
}

/// One armed timer. Timers are never cancelled: a fired timer whose owner is gone (`gen`
/// differs) or whose reason passed is ignored, which is cheaper than removal.
///
/// The owner is named by `kind` and `key`: most kinds belong to a connection (`key` is its
/// slab key, `gen` its generation); `FeedFlush` belongs to a feed (`key` is its slot) and
/// `Upkeep` to the shard. Deadlines of other shard-owned things (a live query's, a service
/// task's ack deadline, a lock's expiry held for a connection) are kinds of their own with
/// the owner's key here, on the thread that owns the thing; deadlines of state the
/// backend keeps belong to the backend's own thread (the store's writer), never to a
/// shard, so that they fire whether or not a connection is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: u64,
    key: u32,
    gen: u32,
    kind: TimerKind,
}

/// State of a drain in progress.
struct Drain {
    /// Give up and exit at this time even if connections remain.
    deadline: u64,
}

/// The handles a shard thread starts with (all `Send`).
pub struct ShardSeed {
    pub id: usize,
    pub poll: Poll,
    pub listener: TcpListener,
    pub mailbox: Arc<Mailbox>,
    pub node: Arc<Node>,
    /// This shard's share of the process's open files for connections (see
    /// [`crate::server::connection_budget`]): beyond it, a new connection evicts the
    /// oldest one that has not sent a whole request yet.
    pub conn_budget: usize,
}

/// A shard. See the module docs.
pub struct Shard {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    next_gen: u32,
    next_number: u64,
    index: Index,
    /// Subscriptions with a filter (not in `index`).
    filtered: FilteredIndex,
    /// Connections holding live queries, by collection: (connection key, how many of its
    /// queries are on that collection), each connection once.
    lq_by_collection: HashMap<Box<str>, Vec<(u32, u32)>>,
    interner: Interner,
    timers: BinaryHeap<Reverse<Timer>>,
    mailbox: Arc<Mailbox>,
    node: Arc<Node>,
    metrics: ShardMetrics,
    epoch: Instant,
    /// Milliseconds since `epoch`, refreshed once per loop iteration.
    now: u64,
    /// Read buffer shared by all connections of the shard.
    scratch: Vec<u8>,
    /// Connections to flush, in the order they became due (key, gen); each loop turn
    /// flushes up to `fanout::FLUSH_BUDGET` of them.
    dirty: VecDeque<(u32, u32)>,
    /// Connections that got answers (`Answer::Ws` from off the shard, HTTP answers)
    /// during this part of the loop turn: written once each after it, so a burst of
    /// answers costs one send, not one each.
    corked: Vec<(u32, u32)>,
    /// Subscribes waiting for this shard to reach their `since` (`replay`).
    parked: Vec<replay::Parked>,
    /// Per-publication scratch: matching (connection, subscription) pairs.
    matches: Vec<(u32, u32)>,
    /// Per-publication scratch: (connection, subscription) pairs to refresh.
    refreshes: Vec<(u32, u32)>,
    /// Per-publication cache: one frame per distinct `subscriptionIds` list.
    frame_cache: HashMap<Box<[u32]>, Rc<Frame>>,
    /// permessage-deflate: compresses each message once for every connection of this
    /// shard that negotiated it (see `Frame::frame_bytes_for`).
    compressor: crate::protocol::deflate::Compressor,
    /// Shared logs of connections holding the same single subscription (`feed`).
    feeds: Slab<feed::Feed>,
    feed_slots: HashMap<feed::FeedKey, usize>,
    /// The newest `seq` this shard has seen (`seq` in `subscribedEvents`).
    last_seq: u64,
    /// Open WebSocket connections per role slot (`metrics::ROLES`).
    role_counts: [u64; 4],
    /// The mailbox still had messages after the budget: do not block in poll.
    mailbox_backlog: bool,
    /// Connections whose reading stopped before `WouldBlock` (read budget, echo
    /// back-pressure lifted): read again next iteration, as no new edge will come.
    deferred_reads: Vec<(u32, u32)>,
    draining: Option<Drain>,
    /// Connections in accept order that had not sent a whole request when accepted (key,
    /// gen); entries that have since sent one, upgraded or closed are skipped lazily. The
    /// front is the oldest candidate for eviction when open files run short.
    unidentified: VecDeque<(u32, u32)>,
    /// See [`ShardSeed::conn_budget`].
    conn_budget: usize,
    /// State for jitter (xorshift).
    rng: u64,
    /// The number of the newest live-query load this shard started (never 0).
    next_load: u32,
    /// The io_uring write path (`io = "uring"`), when the kernel allows it.
    uring: Option<uring::UringWriter>,
    _not_send: PhantomData<*const ()>,
}

impl Shard {
    /// Runs a shard on the current thread until its drain completes.
    pub fn run(seed: ShardSeed) {
        let mut s = Shard::new(seed);
        s.metrics
            .queue_capacity
            .set(s.node.config().delivery.shard_queue_capacity as f64);
        s.setup_io();
        if let Err(e) = s.register_listener() {
            tracing::error!(shard = s.id, "cannot register listener: {e}");
            return;
        }
        s.event_loop();
        tracing::debug!(shard = s.id, "shard stopped");
    }

    fn new(seed: ShardSeed) -> Shard {
        let last_seq = seed.node.backend().applied_seq();
        let rng = crate::time::unix_ms() ^ ((seed.id as u64 + 1) << 32) | 1;
        Shard {
            id: seed.id,
            poll: seed.poll,
            listener: Some(seed.listener),
            conns: Slab::new(),
            next_gen: 0,
            next_number: 0,
            index: Index::default(),
            filtered: FilteredIndex::default(),
            lq_by_collection: HashMap::new(),
            interner: Interner::default(),
            timers: BinaryHeap::new(),
            mailbox: seed.mailbox,
            metrics: ShardMetrics::new(seed.id),
            node: seed.node,
            epoch: Instant::now(),
            now: 0,
            scratch: vec![0u8; 64 * 1024],
            dirty: VecDeque::new(),
            corked: Vec::new(),
            parked: Vec::new(),
            matches: Vec::new(),
            refreshes: Vec::new(),
            frame_cache: HashMap::new(),
            compressor: Default::default(),
            feeds: Slab::new(),
            feed_slots: HashMap::new(),
            last_seq,
            role_counts: [0; 4],
            mailbox_backlog: false,
            deferred_reads: Vec::new(),
            draining: None,
            unidentified: VecDeque::new(),
            conn_budget: seed.conn_budget.max(1),
            rng,
            next_load: 0,
            uring: None,
            _not_send: PhantomData,
        }
    }

    fn setup_io(&mut self) {
        if self.node.config().io != crate::config::Io::Uring {
            return;
        }
        // Room for one loop turn's flushes.
        match uring::UringWriter::new(fanout::FLUSH_BUDGET as u32) {
            Ok(w) => self.uring = Some(w),
            Err(e) => tracing::warn!(
                shard = self.id,
                "io = \"uring\" but io_uring is unavailable ({e}); using epoll writes"
            ),
        }
    }

    fn register_listener(&mut self) -> io::Result<()> {
        if let Some(l) = self.listener.as_mut() {
            self.poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)?;
        }
        Ok(())
    }

    fn clock(&mut self) -> u64 {
        self.now = self.epoch.elapsed().as_millis() as u64;
        self.now
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn arm(&mut self, at: u64, key: usize, gen: u32, kind: TimerKind) {
        self.timers.push(Reverse(Timer {
            at,
            key: key as u32,
            gen,
            kind,
        }));
    }

    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(1024);
        self.clock();
        self.arm(
            self.now + UPKEEP_MS,
            u32::MAX as usize,
            0,
            TimerKind::Upkeep,
        );
        loop {
            let timeout = if !self.dirty.is_empty()
                || self.mailbox_backlog
                || !self.deferred_reads.is_empty()
            {
                Some(Duration::ZERO)
            } else {
                let next = self
                    .timers
                    .peek()
                    .map(|Reverse(t)| Duration::from_millis(t.at.saturating_sub(self.now)));
                if self.parked.is_empty() {
                    next
                } else {
                    // A parked subscribe waits for what may come without a wake-up (a
                    // cluster node's applied mark): look again every millisecond.
                    Some(next.map_or(PARKED_POLL, |n| n.min(PARKED_POLL)))
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.id, "poll failed: {e}");
                    return;
                }
            }
            // The turn's work, from the end of the poll to the next poll: what every other
            // connection of this shard waits for (`shardcast_shard_loop_turn_seconds`).
            let turn = Instant::now();
            self.now = turn.duration_since(self.epoch).as_millis() as u64;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.mailbox.clear_notified(),
                    Token(k) => {
                        if ev.is_writable() {
                            self.on_writable(k);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(k);
                        }
                    }
                }
            }
            for (key, gen) in std::mem::take(&mut self.deferred_reads) {
                if self.conns.get(key as usize).is_some_and(|c| c.gen == gen) {
                    self.on_readable(key as usize);
                }
            }
            self.write_corked();
            self.drain_mailbox();
            self.retry_parked();
            self.run_timers();
            self.flush_dirty();
            self.write_corked();
            self.metrics.loop_turns.record(turn.elapsed());
            if let Some(d) = &self.draining {
                if self.conns.is_empty() || self.now >= d.deadline {
                    return;
                }
            }
        }
    }

    /// Takes every connection the kernel has completed. Nothing is refused here: a
    /// connection is counted against `limits.max_http_connections` only once a whole
    /// request shows it is not a WebSocket upgrade ([`Shard::admit_http`]), so a
    /// reconnect storm of upgrades is never mistaken for a flood of HTTP clients. What
    /// protects the process's open files instead is eviction: past this shard's budget
    /// (or when `accept` says the files ran out), the oldest connection that has not sent
    /// a whole request is closed to make room.
    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _addr)) => {
                    self.metrics.accepted.increment(1);
                    if self.conns.len() >= self.conn_budget {
                        self.evict_unidentified();
                    }
                    self.admit(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of files below the budget (other files, other shards): make
                    // room and retry; with nothing to evict, the next turn retries after
                    // connections close.
                    if !self.evict_unidentified() {
                        tracing::warn!(shard = self.id, "accept failed: {e}");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = self.id, "accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// A newly accepted connection: unidentified, with `limits.request_timeout_ms` to
    /// send its first request.
    fn admit(&mut self, sock: mio::net::TcpStream) {
        let timeout = self.node.config().limits.request_timeout_ms;
        let _ = sock.set_nodelay(true);
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn {
            sock,
            gen,
            rbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            ending: conn::Ending::Open,
            kind: Kind::Http(HttpState {
                since: self.now,
                ..HttpState::default()
            }),
        };
        if let Err(e) = self.poll.registry().register(
            &mut conn.sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(shard = self.id, "cannot register connection: {e}");
            return;
        }
        entry.insert(conn);
        self.unidentified.push_back((key as u32, gen));
        if self.unidentified.len() > 2 * self.conns.len() + 64 {
            // Mostly connections that have identified themselves since: forget those, so
            // the queue stays proportional to what it can hold.
            let conns = &self.conns;
            self.unidentified.retain(|&(k, g)| {
                conns
                    .get(k as usize)
                    .is_some_and(|c| c.gen == g && c.unidentified())
            });
        }
        self.arm(self.now + timeout, key, gen, TimerKind::RequestTimeout);
    }

    /// Closes the oldest connection that has not sent a whole request (none sent a byte,
    /// or a head that is still incomplete), so that sockets which say nothing can never
    /// hold the open files new clients need. A candidate is read once first: what it sent
    /// since its last readiness event is handled (it may be a handshake waiting in the
    /// kernel's buffer), and only one that still has not sent a whole request is closed.
    /// Returns whether one was closed.
    fn evict_unidentified(&mut self) -> bool {
        while let Some((key, gen)) = self.unidentified.pop_front() {
            let key = key as usize;
            let live = |s: &Shard| {
                s.conns
                    .get(key)
                    .is_some_and(|c| c.gen == gen && c.unidentified())
            };
            if !live(self) {
                continue;
            }
            self.http_readable(key);
            if !live(self) {
                continue;
            }
            if let Some(c) = self.conns.get_mut(key).filter(|c| !c.rbuf.is_empty()) {
                // Part of a request came: tell a slow but honest client why (best effort).
                let r = crate::http::error_response(
                    503,
                    "LIMIT_EXCEEDED",
                    "the server is short of open files and this connection had not sent \
                     a whole request; try again",
                    None,
                    true,
                );
                let _ = io::Write::write(&mut c.sock, &r);
            }
            crate::metrics::http_closed("evicted");
            self.drop_conn(key, "evicted");
            return true;
        }
        false
    }

    fn on_readable(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match conn.kind {
            Kind::Http(_) => self.http_readable(key),
            Kind::Ws(_) => self.ws_readable(key),
        }
    }

    fn on_writable(&mut self, key: usize) {
        self.write_out(key);
    }

    /// Writes what the connection has pending, then lets an ending or a waiting flush
    /// proceed.
    fn write_out(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.write_pending() {
            Ok(n) => self.metrics.bytes_written.increment(n as u64),
            Err(_) => {
                self.drop_conn(key, "write_error");
                return;
            }
        }
        self.after_write(key);
    }

    /// After output was written: finish an ending, or let a waiting flush go.
    fn after_write(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has_pending() {
            return;
        }
        if conn.ws().is_some_and(|w| w.channel_upto > 0) {
            self.channel_written(key);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.ending == conn::Ending::AfterWrite {
            let _ = conn.sock.shutdown(std::net::Shutdown::Write);
            conn.ending = conn::Ending::HalfClosed;
            let gen = conn.gen;
            self.arm(self.now + LINGER_MS, key, gen, TimerKind::Linger);
            return;
        }
        let gen = conn.gen;
        if let Some(ws) = conn.ws_mut() {
            if !ws.dirty && self.flush_due(key) {
                self.mark_dirty(key, gen);
            }
            self.resume_read(key);
        } else if let Kind::Http(_) = &conn.kind {
            if !conn.rbuf.is_empty() {
                self.http_process(key);
            }
        }
    }

    /// Queues a text message for the connection, written after the mailbox drain.
    fn send_corked(&mut self, key: usize, json: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.is_empty() {
            self.corked.push((key as u32, conn.gen));
        }
        ws::write_frame(&mut conn.out, ws::OpCode::Text, json);
    }

    /// Queues `bytes` (HTTP answers) for the connection, written with whatever else is
    /// corked at the end of this part of the loop turn ([`Shard::write_corked`]): a
    /// pipeline's answers, filled one by one as group commits or offload jobs answer,
    /// cost one send instead of one each (that send per answer was half of a shard's
    /// time under pipelined entity writes, and held its turn for tens of ms).
    fn send_corked_raw(&mut self, key: usize, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.is_empty() {
            self.corked.push((key as u32, conn.gen));
        }
        conn.out.extend_from_slice(bytes);
    }

    /// Writes every connection corked since the last call (see [`Shard::send_corked`]).
    fn write_corked(&mut self) {
        for (key, gen) in std::mem::take(&mut self.corked) {
            if self.conns.get(key as usize).is_some_and(|c| c.gen == gen) {
                self.write_out(key as usize);
            }
        }
    }

    /// Queues bytes for the connection and tries to write them now.
    fn send_raw(&mut self, key: usize, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.extend_from_slice(bytes);
        self.write_out(key);
    }

    /// As [`Shard::send_raw`], taking the bytes: into an empty output buffer they go
    /// without a copy (a replay prepared off the shard can be megabytes).
    fn send_owned(&mut self, key: usize, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.is_empty() {
            conn.out = bytes;
            conn.out_pos = 0;
        } else {
            conn.out.extend_from_slice(&bytes);
        }
        self.write_out(key);
    }

    fn drain_mailbox(&mut self) {
        let mut handled = 0;
        let started = Instant::now();
        let mut backlog = false;
        while handled < MAILBOX_BUDGET {
            let Some(msg) = self.mailbox.try_recv() else {
                break;
            };
            handled += 1;
            self.on_message(msg);
            if handled % MAILBOX_CHECK == 0 && started.elapsed() >= MAILBOX_TIME {
                backlog = true;
                break;
            }
        }
        self.mailbox_backlog = backlog || handled >= MAILBOX_BUDGET;
        if let Some(o) = self.mailbox.take_overflow() {
            for p in &o.dropped {
                self.drop_publication(p);
            }
            if o.lost > 0 {
                self.lost_publications(o.lost);
            }
            for m in o.control {
                self.on_message(m);
            }
        }
        self.write_corked();
    }

    fn on_message(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publication(p) => self.on_publication(&p),
            ShardMsg::Drain => self.begin_drain(),
            ShardMsg::Answer {
                conn,
                gen,
                req,
                answer,
            } => self.on_answer(conn as usize, gen, req, answer),
            ShardMsg::Tasks {
                conn,
                gen,
                messages,
            } => self.on_tasks(conn as usize, gen, messages),
            ShardMsg::ChannelEvents {
                conn,
                gen,
                upto,
                messages,
            } => self.on_channel_events(conn as usize, gen, upto, messages),
            ShardMsg::LiveQueryLoaded {
                conn,
                gen,
                tag,
                load,
                result,
            } => self.live_query_loaded(conn as usize, gen, tag, load, *result),
            ShardMsg::Replayed {
                conn,
                gen,
                frames,
                replayed,
            } => self.replay_ready(conn as usize, gen, frames, replayed),
            ShardMsg::Close {
                conn,
                gen,
                code,
                reason,
                error,
            } => self.on_close_request(conn as usize, gen, code, &reason, error),
        }
    }

    fn run_timers(&mut self) {
        while let Some(Reverse(t)) = self.timers.peek().copied() {
            if t.at > self.now {
                break;
            }
            self.timers.pop();
            if t.kind == TimerKind::Upkeep {
                self.upkeep();
                continue;
            }
            if t.kind == TimerKind::FeedFlush {
                self.feed_due(t.key as usize);
                continue;
            }
            let key = t.key as usize;
            match self.conns.get(key) {
                Some(c) if c.gen == t.gen => {}
                _ => continue,
            }
            match t.kind {
                TimerKind::AuthTimeout => self.auth_timeout(key),
                TimerKind::Ping => self.send_ping(key),
                TimerKind::PongCheck => self.pong_check(key),
                TimerKind::Flush => self.flush_timer(key, t.at),
                TimerKind::Linger => self.drop_conn(key, "linger"),
                TimerKind::DrainClose => self.drain_close(key),
                TimerKind::RequestTimeout => self.request_timeout(key),
                TimerKind::Upkeep | TimerKind::FeedFlush => {}
            }
        }
    }

    fn upkeep(&mut self) {
        self.metrics.queue_depth.set(self.mailbox.depth() as f64);
        self.metrics
            .queue_full
            .absolute(self.mailbox.full_events.load(Ordering::Relaxed));
        // A feed is one index entry for all its members.
        let members: usize = self.feeds.iter().map(|(_, f)| f.members.len()).sum();
        let subscriptions = self.index.len() - self.feeds.len() + members + self.filtered.len();
        self.metrics.subscriptions.set(subscriptions as f64);
        self.metrics.feeds.set(self.feeds.len() as f64);
        self.arm(
            self.now + UPKEEP_MS,
            u32::MAX as usize,
            0,
            TimerKind::Upkeep,
        );
    }

    /// SIGTERM: stop accepting, then close WebSockets spread over the drain period.
    fn begin_drain(&mut self) {
        if self.draining.is_some() {
            return;
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let period = self.node.config().drain_period_ms;
        self.draining = Some(Drain {
            deadline: self.now + period + LINGER_MS + 1000,
        });
        let keys: Vec<(usize, u32, bool)> = self
            .conns
            .iter()
            .map(|(k, c)| (k, c.gen, c.ws().is_some()))
            .collect();
        let sockets = keys.iter().filter(|k| k.2).count().max(1) as u64;
        let mut i = 0u64;
        for (key, gen, is_ws) in keys {
            let at = if is_ws {
                // Spread the WebSocket closes evenly so clients do not all reconnect at
                // once.
                i += 1;
                self.now + period * (i - 1) / sockets
            } else {
                // HTTP keep-alive connections (health checkers, load balancers) keep
                // answering, `/readyz` with 503 and every answer with `Connection: close`,
                // until the period ends.
                self.now + period
            };
            self.arm(at, key, gen, TimerKind::DrainClose);
        }
    }

    /// The WebSocket state of connection `key` if it is still the connection of
    /// generation `gen`: an off-shard answer that comes back after its connection went
    /// (and the slab slot was reused) finds nothing.
    fn ws_of(&mut self, key: usize, gen: u32) -> Option<&mut conn::WsState> {
        self.conns
            .get_mut(key)
            .filter(|c| c.gen == gen)
            .and_then(|c| c.ws_mut())
    }

    /// Forgets a connection: its subscriptions leave the index, its socket closes.
    fn drop_conn(&mut self, key: usize, reason: &'static str) {
        if !self.conns.contains(key) {
            return;
        }
        self.detach_feed(key, feed::Leave::Discard);
        let mut conn = self.conns.remove(key);
        if conn
            .ws()
            .is_some_and(|w| w.group.is_some() || w.channel.is_some())
        {
            self.detach_service(key, conn.gen);
        }
        let _ = self.poll.registry().deregister(&mut conn.sock);
        if matches!(conn.kind, Kind::Http(HttpState { counted: true, .. })) {
            self.node.http_closed();
        }
        if let Kind::Ws(ws) = conn.kind {
            for s in &ws.subscriptions {
                match &s.filter {
                    Some(f) => self.filtered.remove(&s.path, key as u32, s.id, f),
                    None => self.index.remove(&s.path, key as u32, s.id),
                }
                self.interner.release(s.id);
            }
            for q in &ws.live_queries {
                self.forget_live_query(key, &q.collection);
            }
            if !ws.echo {
                let slot = ws.role_slot();
                self.role_counts[slot] = self.role_counts[slot].saturating_sub(1);
                self.metrics.connections[slot].set(self.role_counts[slot] as f64);
                self.node.connection_closed();
                if !ws.close_sent {
                    crate::metrics::connection_closed(reason);
                }
            }
        }
    }
}
