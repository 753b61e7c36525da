//! A connection's state as its shard holds it: the socket, unparsed input, unwritten
//! output, and either HTTP or WebSocket session state.
//!
//! Owned by exactly one shard (a slab entry); never shared, never sent. Buffers start
//! empty and are given back once drained, so an idle WebSocket holds no buffer: input is
//! read into the shard's scratch buffer and only a partial frame is kept here.

use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use hashbrown::HashSet;
use serde_json::Value;

use crate::auth::jwt::{Claims, Role};
use crate::config::Framing;
use crate::filter::{Filter, OrderBy};
use crate::protocol::deflate::{Agreed, Compressor, Inflater};
use crate::protocol::ws::{self, Utf8Check};
use crate::publication::Publication;

use super::index::EventSet;
use super::ring::Ring;

/// Bytes reserved in front of every frame's JSON for the largest WebSocket header, so a
/// frame is built once and serves both framings without a copy.
pub const HEADER_ROOM: usize = ws::MAX_HEADER;

/// One message as it waits in rings: built once per shard per publication per distinct
/// `subscriptionIds` list, shared by every connection that gets the same bytes.
#[derive(Debug)]
pub struct Frame {
    /// `HEADER_ROOM` bytes, of which the last `HEADER_ROOM - start` are the WebSocket
    /// header, then the message JSON (or the echoed payload).
    pub buf: Box<[u8]>,
    pub start: u8,
    /// Interned ids of the subscriptions this message is for (drop accounting).
    pub subs: Box<[u32]>,
    /// When ingest sequenced the publication (latency metric); `None` for echoes.
    pub ingested_at: Option<Instant>,
    /// Shard time (ms, wrapping) at which this frame entered the rings that hold it:
    /// the flush deadline of a ring is `batchMs` after its oldest frame's arrival.
    pub arrived_ms: u32,
    /// Its permessage-deflate form (header with RSV1 and compressed payload), made the
    /// first time a connection that negotiated the extension flushes it and then shared
    /// by all of them: one deflate per message per shard, not one per connection.
    /// `Some(None)`: compression does not make it smaller, it goes out plain.
    pub deflated: std::cell::OnceCell<Option<Box<[u8]>>>,
}

impl Frame {
    /// Builds a frame from `payload_len` bytes written by `fill` after the header room.
    pub fn build(
        opcode: ws::OpCode,
        payload_len: usize,
        subs: Box<[u32]>,
        ingested_at: Option<Instant>,
        arrived_ms: u32,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Frame {
        let mut buf = Vec::with_capacity(HEADER_ROOM + payload_len);
        buf.resize(HEADER_ROOM, 0);
        fill(&mut buf);
        let len = buf.len() - HEADER_ROOM;
        let mut h = [0u8; ws::MAX_HEADER];
        let n = ws::encode_header(&mut h, opcode, len);
        let start = HEADER_ROOM - n;
        buf[start..HEADER_ROOM].copy_from_slice(&h[..n]);
        Frame {
            buf: buf.into_boxed_slice(),
            start: start as u8,
            subs,
            ingested_at,
            arrived_ms,
            deflated: std::cell::OnceCell::new(),
        }
    }

    /// The whole WebSocket frame (`framing=frames`).
    pub fn frame_bytes(&self) -> &[u8] {
        &self.buf[self.start as usize..]
    }

    /// The message alone (an element of a `batch` with `framing=array`).
    pub fn message(&self) -> &[u8] {
        &self.buf[HEADER_ROOM..]
    }

    /// The frame's shared permessage-deflate form (32 KiB window), made once by the
    /// first connection to flush it; the plain frame if the compressor failed.
    pub fn deflated_bytes(&self, c: &mut Compressor) -> &[u8] {
        let deflated = self.deflated.get_or_init(|| {
            let mut out = Vec::new();
            c.frame(self.opcode(), &[self.message()], 15, &mut out)
                .then(|| out.into_boxed_slice())
        });
        deflated.as_deref().unwrap_or_else(|| self.frame_bytes())
    }

    /// Appends the frame as a connection with agreement `agreed` gets it: the shared
    /// form where its window allows, else compressed for that window alone.
    pub fn deflate_into(&self, agreed: &Agreed, c: &mut Compressor, out: &mut Vec<u8>) {
        if agreed.fits_window(self.message().len()) {
            out.extend_from_slice(self.deflated_bytes(c));
        } else if !c.frame(
            self.opcode(),
            &[self.message()],
            agreed.server_window_bits,
            out,
        ) {
            out.extend_from_slice(self.frame_bytes());
        }
    }

    pub fn opcode(&self) -> ws::OpCode {
        if self.buf[self.start as usize] & 0x0F == 0x2 {
            ws::OpCode::Binary
        } else {
            ws::OpCode::Text
        }
    }
}

/// A connection's permessage-deflate state (RFC 7692), boxed: most connections have none.
#[derive(Debug)]
pub struct WsDeflate {
    pub agreed: Agreed,
    /// Made on the first compressed client message; kept while the client keeps its
    /// context, dropped after each message when it said it would not.
    pub inflater: Option<Inflater>,
}

/// What the connection is doing at the HTTP level.
#[derive(Debug, Default)]
pub struct HttpState {
    /// A `100 Continue` was sent for the request being read.
    pub continue_sent: bool,
    /// Answers not yet written, in request order: requests whose work goes on off the
    /// shard (durable writes) hold a slot until their answer comes, and answers to later
    /// requests wait behind them, so a pipelining client gets them in order while many of
    /// its writes share one group commit.
    pub pending: std::collections::VecDeque<AnswerSlot>,
    /// The request number of `pending`'s front.
    pub base: u32,
    /// A request that must wait until `pending` is empty (an upgrade behind answers
    /// still to come).
    pub stashed: Option<Box<crate::http::Request>>,
    /// No further request is read: one asked for `Connection: close` (or was refused),
    /// or the node is draining.
    pub closing: bool,
    /// The peer half-closed while answers were awaited: finish once they are written.
    pub eof: bool,
    /// The request number of a publish being sequenced off the shard
    /// ([`crate::api::Route::PublishOffShard`]): no further request of this connection is
    /// read until it is answered, so that its publications keep their request order.
    pub publishing: Option<u32>,
    /// The CORS origin of the request being routed, for its answer's slot.
    pub cors: Option<Box<str>>,
    /// `http_process` is running for this connection: a write that completes inside it
    /// (and would read the next request) leaves that to the running loop instead of
    /// recursing once per pipelined request.
    pub processing: bool,
    /// Shard time (ms) since which the connection owes the server its next request: its
    /// accept, or the moment its last request was read or answered. The next request
    /// must be in by `since + limits.request_timeout_ms`.
    pub since: u64,
    /// Counted against `limits.max_http_connections`: a whole request arrived that was
    /// not a WebSocket upgrade. Until then the connection is unidentified (it may be a
    /// handshake of a reconnect storm, or a socket that never sends a byte): it costs
    /// the HTTP budget nothing, and the shard may evict it when open files run short
    /// (`Shard::evict_unidentified`).
    pub counted: bool,
}

/// One answer in request order.
#[derive(Debug, Default)]
pub struct AnswerSlot {
    /// The whole HTTP response, once known.
    pub response: Option<Vec<u8>>,
    /// Close the connection after writing it.
    pub close: bool,
    /// The allowed browser origin the answer names in its CORS headers.
    pub cors: Option<Box<str>>,
}

/// A subscription held by a WebSocket connection.
#[derive(Debug)]
pub struct Subscription {
    /// Interned id (shard's interner).
    pub id: u32,
    pub path: Box<str>,
    pub events: EventSet,
    /// Its filter: it is then in the shard's filtered index, not the plain one, and the
    /// connection never joins a feed.
    pub filter: Option<Rc<Filter>>,
}

/// Marks a frame's `subs` entry (and a `dropped` entry) as a live query's tag rather
/// than an interned subscription id (interned ids stay far below 2^31).
pub const LQ_BIT: u32 = 1 << 31;

/// One live query of a connection.
#[derive(Debug)]
pub struct LiveQuery {
    /// The client's id.
    pub id: Box<str>,
    /// `LQ_BIT | n`: names this query in its frames' `subs`, for drop accounting.
    pub tag: u32,
    pub collection: Box<str>,
    pub filter: Option<Filter>,
    pub order: OrderBy,
    /// `min(limit, live_query.cap)`.
    pub cap: usize,
    /// The replica `seq` its result was loaded at: entity publications up to it are in
    /// the result already.
    pub base_seq: u64,
    /// Ids of the entities in the tracked result.
    pub tracked: HashSet<Box<str>>,
    /// Non-zero while its result is being read off the shard: the number of that load
    /// (a result of any other number is stale and dropped).
    pub loading: u32,
    /// Entity publications of its collection that reached the shard while it loads, in
    /// `seq` order: applied after its pages (those at or below the loaded `seq` skipped).
    pub pending: Vec<Arc<Publication>>,
    /// Its `pending` could not hold everything (bounded by `queue_capacity`) or the shard
    /// missed publications meanwhile: the load under way is dropped and read again.
    pub stale: bool,
}

impl LiveQuery {
    pub fn matches(&self, state: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(state))
    }

    /// What entity publication `p` changes in this query's result: its message (added,
    /// updated or removed), built once, with the tracked set updated; `None` if it is
    /// not about this query's collection, already in the loaded result (`seq` at or
    /// below `base_seq`), or changes nothing here.
    pub fn message(&mut self, p: &Publication, now32: u32) -> Option<Rc<Frame>> {
        let change = p.entity.as_ref()?;
        if *self.collection != *change.collection || p.seq <= self.base_seq {
            return None;
        }
        let now = change.after.as_deref().is_some_and(|a| self.matches(a));
        let held = self.tracked.contains(&*change.id);
        let kind = match (held, now) {
            (true, true) => "liveQueryUpdatedNode",
            (true, false) => {
                self.tracked.remove(&*change.id);
                "liveQueryRemovedNode"
            }
            (false, true) if self.tracked.len() < self.cap => {
                self.tracked.insert(change.id.clone());
                "liveQueryAddedNode"
            }
            _ => return None,
        };
        let data = now.then(|| p.data_json());
        let len = 64 + self.id.len() + change.id.len() + data.map_or(0, |d| d.len());
        Some(Rc::new(Frame::build(
            ws::OpCode::Text,
            len,
            Box::new([self.tag]),
            Some(p.ingested_at),
            now32,
            |buf| crate::protocol::live_query_node(buf, kind, &self.id, &change.id, data),
        )))
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
pub struct Fragments {
    pub opcode: ws::OpCode,
    /// RSV1 on its first frame: `data` is compressed, checked once inflated.
    pub compressed: bool,
    pub data: Vec<u8>,
    pub utf8: Utf8Check,
}

/// WebSocket session state.
///
/// `repr(C)` with the fields fan-out touches for every delivery first (ring, last
/// `seq`, flush state, batch options): a delivery then reads one or two cache lines of
/// the session instead of fields scattered over all of it. Measured in
/// docs/PERFORMANCE.md.
#[derive(Debug)]
#[repr(C)]
pub struct WsState {
    pub ring: Ring<Rc<Frame>>,
    /// The feed this connection reads from (slot + 1; 0: none, it uses `ring`).
    pub feed: u32,
    /// Its index in the feed's member list.
    pub feed_pos: u32,
    /// The feed position of the next message it has not been sent.
    pub cursor: u64,
    /// The `seq` of the last publication queued here: a second match of the same
    /// publication merges into that message instead of making another.
    pub last_seq: u64,
    /// The flush deadline currently armed (shard ms).
    pub flush_at: Option<u64>,
    pub batch_ms: u32,
    pub batch_max: u32,
    /// A close frame was sent; only the peer's close (or the linger timer) remains.
    pub close_sent: bool,
    /// Already on the shard's list of connections to flush this iteration.
    pub dirty: bool,
    /// The echo endpoint: no authentication, messages go back as they came.
    pub echo: bool,
    /// Reading is paused until the ring drains (echo back-pressure).
    pub read_paused: bool,
    /// A `subscribeEvents` with a `since` this shard has not reached waits on the shard's
    /// list (`shard::replay`): nothing more is read from the connection meanwhile, so its
    /// later commands come after it.
    pub parked: bool,
    pub framing: Framing,
    /// `since` replays being prepared off the shard for this connection: while non-zero
    /// nothing of its ring is flushed and it joins no feed, so a replay comes entirely
    /// before anything live (`shard::replay`). A `u16` beside the flags keeps the session
    /// within its idle budget; commands are rate-limited (`limits.commands_per_sec`) and
    /// a replay lasts milliseconds, so 65,535 in flight cannot happen.
    pub replaying: u16,
    /// Messages dropped per subscription (interned id → count) not yet reported with a
    /// `QUEUE_OVERFLOW` warning.
    pub dropped: Vec<(u32, u64)>,
    /// Set once authenticated.
    pub claims: Option<Rc<Claims>>,
    /// A `?uuid=` ticket is with the backend: the URL's query pairs (its options), kept
    /// for when it answers. Nothing is read from the socket meanwhile.
    pub ticket_wait: Option<Box<Vec<(String, String)>>>,
    /// Per-shard connection number, for `connectionId`.
    pub number: u64,
    pub subscriptions: Vec<Subscription>,
    /// Live queries (PROTOCOL.md §7): at most `limits.max_live_queries`.
    pub live_queries: Vec<LiveQuery>,
    /// The next live query's tag (see [`super::live_query::LQ_BIT`]).
    pub next_lq: u32,
    pub fragments: Option<Box<Fragments>>,
    /// Command rate limiter (user connections): tokens left and when last refilled.
    pub tokens: f32,
    pub tokens_at: u64,
    /// When the unanswered server `ping` was sent (shard ms).
    /// Shard ms, wrapping (as `Frame::arrived_ms`): 8 B less per connection than a full
    /// `u64` (the idle budget, `tests::a_connection_entry_stays_within_its_idle_budget`).
    pub ping_sent: Option<u32>,
    /// A service connection's group (PROTOCOL.md §10), set once authenticated.
    pub group: Option<std::sync::Arc<str>>,
    /// A channel socket's channel (`/channels/{id}`, PROTOCOL.md §9), and the newest
    /// `seq` of its events queued here and not yet reported written.
    pub channel: Option<std::sync::Arc<str>>,
    pub channel_upto: u64,
    /// permessage-deflate, when the client offered it and `delivery.compression` is on.
    pub deflate: Option<Box<WsDeflate>>,
}

impl WsState {
    pub fn new(echo: bool, number: u64, ring_capacity: usize, burst: f32, now: u64) -> WsState {
        WsState {
            echo,
            claims: None,
            ticket_wait: None,
            number,
            batch_ms: 0,
            batch_max: 1,
            framing: Framing::Frames,
            subscriptions: Vec::new(),
            live_queries: Vec::new(),
            next_lq: 0,
            ring: Ring::new(ring_capacity),
            feed: 0,
            feed_pos: 0,
            cursor: 0,
            dropped: Vec::new(),
            last_seq: 0,
            fragments: None,
            tokens: burst,
            tokens_at: now,
            ping_sent: None,
            group: None,
            channel: None,
            channel_upto: 0,
            deflate: None,
            close_sent: false,
            flush_at: None,
            dirty: false,
            replaying: 0,
            read_paused: false,
            parked: false,
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.claims.as_ref().map(|c| c.role)
    }

    /// Index into `metrics::ROLES`.
    pub fn role_slot(&self) -> usize {
        match self.role() {
            None => 0,
            Some(Role::User) => 1,
            Some(Role::Service) => 2,
            Some(Role::Admin) => 3,
        }
    }

    /// Counts `n` dropped messages for subscription `sub`.
    pub fn add_dropped(&mut self, sub: u32, n: u64) {
        match self.dropped.iter_mut().find(|(id, _)| *id == sub) {
            Some((_, c)) => *c += n,
            None => self.dropped.push((sub, n)),
        }
    }

    /// Counts one dropped message for each subscription it was for.
    pub fn count_dropped(&mut self, subs: &[u32]) {
        for &s in subs {
            self.add_dropped(s, 1);
        }
    }
}

/// How the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Open,
    /// Shut the write side once `out` is written (after a close frame or a
    /// `Connection: close` answer).
    AfterWrite,
    /// Write side shut; reading until the peer closes or the linger timer fires.
    HalfClosed,
}

/// Per-connection kind-specific state. The WebSocket state is stored inline, not
/// boxed: fan-out touches it for every delivery, and one pointer less to chase is one
/// cache miss less per delivery.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Kind {
    Http(HttpState),
    Ws(WsState),
}

/// A connection owned by a shard. `repr(C)`, generation and session state first, for
/// the same reason as [`WsState`].
#[derive(Debug)]
#[repr(C)]
pub struct Conn {
    /// Distinguishes this connection from an earlier one in the same slab slot, for
    /// timers and ingest answers that outlive their connection.
    pub gen: u32,
    pub ending: Ending,
    pub kind: Kind,
    pub sock: TcpStream,
    /// Input received but not yet consumed (partial request or frame).
    pub rbuf: Vec<u8>,
    /// Output committed but not yet written; `out_pos` is how much of it was.
    pub out: Vec<u8>,
    pub out_pos: usize,
}

/// Above this, a drained output buffer is freed rather than kept for reuse.
const KEEP_OUT: usize = 4096;

impl Conn {
    pub fn ws(&self) -> Option<&WsState> {
        match &self.kind {
            Kind::Ws(w) => Some(w),
            Kind::Http(_) => None,
        }
    }

    pub fn ws_mut(&mut self) -> Option<&mut WsState> {
        match &mut self.kind {
            Kind::Ws(w) => Some(w),
            Kind::Http(_) => None,
        }
    }

    /// Open, and no whole request has arrived yet (see [`HttpState::counted`]).
    pub fn unidentified(&self) -> bool {
        matches!(&self.kind, Kind::Http(h) if !h.counted) && self.ending == Ending::Open
    }

    /// Output is waiting for the socket to take it.
    pub fn has_pending(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes what is pending; returns the bytes written. `WouldBlock` is not an error:
    /// the rest waits for the next writable event.
    pub fn write_pending(&mut self) -> io::Result<usize> {
        let mut written = 0;
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.out_pos = 0;
        Ok(written)
    }
}

/// Writes `segments` in order with as few vectored writes as the socket allows;
/// whatever it does not take is copied to `out`. Returns the bytes written now.
pub fn write_segments(
    sock: &mut TcpStream,
    out: &mut Vec<u8>,
    segments: &[&[u8]],
) -> io::Result<usize> {
    // Linux takes at most 1024 iovecs per call.
    const MAX_IOV: usize = 1024;
    let mut written = 0;
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < segments.len() {
        let end = (idx + MAX_IOV).min(segments.len());
        let iov: Vec<io::IoSlice<'_>> = std::iter::once(io::IoSlice::new(&segments[idx][off..]))
            .chain(segments[idx + 1..end].iter().map(|s| io::IoSlice::new(s)))
            .collect();
        match sock.write_vectored(&iov) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                written += n;
                // Advance (idx, off) by n bytes.
                while n > 0 && idx < segments.len() {
                    let left = segments[idx].len() - off;
                    if n >= left {
                        n -= left;
                        idx += 1;
                        off = 0;
                    } else {
                        off += n;
                        n = 0;
                    }
                }
                // Skip empty segments so the next iovec starts on data.
                while idx < segments.len() && segments[idx].len() == off {
                    idx += 1;
                    off = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if idx < segments.len() {
        out.extend_from_slice(&segments[idx][off..]);
        for s in &segments[idx + 1..] {
            out.extend_from_slice(s);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle memory per subscribed connection is mostly its slab entry (docs/PERFORMANCE.md
    /// "Idle memory"): a field added to every connection shows up here first. Raise the
    /// bound only with the idle figure measured again.
    #[test]
    fn a_connection_entry_stays_within_its_idle_budget() {
        assert!(
            std::mem::size_of::<Conn>() <= 360,
            "Conn is {} B (WsState {} B)",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<WsState>()
        );
    }
}
