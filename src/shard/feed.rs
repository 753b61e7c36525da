//! Feeds: one shared frame log for the connections of a shard that hold the same single
//! subscription with the same delivery options, read through a cursor each.
//!
//! Owned by one shard (a slab of feeds next to the slab of connections); only that
//! shard's thread touches it. Why: with a ring per connection, a publication reaching 10k
//! subscribers is 10k pointer pushes into 10k rings (a cache miss each), about half of
//! the shard's CPU at `batchMs=1000` (docs/PERFORMANCE.md). A feed makes it one append;
//! a flush reads the frames from the connection's cursor to the head, which every member
//! shares, so they stay in cache.
//!
//! The per-connection rules of PROTOCOL.md §6 still hold member by member:
//! - **Batching.** Members that were caught up when a message arrives all got it at the
//!   same instant, so they share a flush deadline: they form a *cohort* (one list, one
//!   timer) instead of arming a timer each. A member whose flush left messages behind
//!   (`batchMax`) joins the cohort of its new cursor, whose deadline is `batchMs` after
//!   that message arrived. Cohorts are ordered by cursor, hence by deadline, and a cohort
//!   is also due once `batchMax` messages wait for it.
//! - **Overflow.** The log keeps at most `queue_capacity` messages. A member more than
//!   that far behind has lost exactly the messages that left the log: its cursor is
//!   moved up when it next flushes and the skipped count becomes its `QUEUE_OVERFLOW`
//!   warning. The drop metric counts them as they happen (one per member behind, per
//!   message that leaves).
//! - **Leaving.** A connection that subscribes again, unsubscribes or closes leaves its
//!   feed; when it goes on with other subscriptions, what it had not been sent moves to
//!   its own ring first, so nothing is lost or reordered.
//!
//! The glue with connections (joining, leaving, flushing, timers) is at the bottom, as
//! methods of [`Shard`]; the structure itself is plain data, tested on its own.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::config::Framing;

use super::conn::Frame;
use super::flush::flush_deadline;
use super::index::{Entry, EventSet};
use super::{Shard, TimerKind};

/// Marks an index entry's `conn` as a feed slot rather than a connection key (slab keys
/// never reach 2^31: a shard holds at most the process's open files).
pub const FEED_BIT: u32 = 1 << 31;

/// What members of one feed have in common: the one subscription (interned id, path,
/// event types) and the options that shape its frames and flushes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FeedKey {
    pub sub: u32,
    pub path: Box<str>,
    pub events: EventSet,
    pub batch_ms: u32,
    pub batch_max: u32,
    pub framing: Framing,
}

/// A member as the feed's lists name it: connection key and generation, so an entry for
/// a connection that has since gone (or left, or moved on) is recognised and skipped.
pub type Member = (u32, u32);

/// Members that share a cursor and so a flush deadline.
#[derive(Debug)]
pub struct Cohort {
    pub cursor: u64,
    /// Shard time (ms) at which `batchMs` has passed for the message at `cursor`.
    pub deadline: u64,
    pub members: Vec<Member>,
}

/// A run of the log laid out as the bytes one flush writes (see [`Feed::flat`]).
#[derive(Debug)]
struct Flat {
    start: u64,
    n: usize,
    bytes: Rc<Vec<u8>>,
}

/// One shared log. Positions count messages appended since the feed was made; `base` is
/// the position of the oldest message still held.
#[derive(Debug)]
pub struct Feed {
    pub key: FeedKey,
    log: VecDeque<Rc<Frame>>,
    /// The last run flattened for a flush: members of one cohort flush the same run, so
    /// the first of them copies it and the others write the same bytes.
    flat: Option<Flat>,
    base: u64,
    capacity: usize,
    /// Every member; a connection's `feed_pos` is its index here.
    pub members: Vec<Member>,
    /// Position → members whose next message is there (positions below `base` are
    /// merged into `base`): the log is trimmed up to the lowest.
    cursors: BTreeMap<u64, u32>,
    /// Members with nothing waiting (cursor at the head).
    waiting: Vec<Member>,
    /// Members with messages waiting whose flush is not yet due, by cursor.
    cohorts: VecDeque<Cohort>,
    /// permessage-deflate with `framing=array`: the compressed `batch` frame of the last
    /// range (start, count) a compressing member flushed without warnings, so the members
    /// of a cohort, which flush the same range, share one deflate (`None` inside: it
    /// went plain). Written by `Shard::flush_with` only.
    pub deflated_batch: std::cell::RefCell<Option<DeflatedBatch>>,
}

/// See [`Feed::deflated_batch`].
pub type DeflatedBatch = (u64, usize, Option<Rc<Vec<u8>>>);

impl Feed {
    pub fn new(key: FeedKey, capacity: usize) -> Feed {
        Feed {
            key,
            log: VecDeque::new(),
            flat: None,
            base: 0,
            capacity: capacity.max(1),
            members: Vec::new(),
            cursors: BTreeMap::new(),
            waiting: Vec::new(),
            cohorts: VecDeque::new(),
            deflated_batch: Default::default(),
        }
    }

    /// The position the next message will take.
    pub fn head(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds a member at the head; returns its `feed_pos` and cursor.
    pub fn join(&mut self, m: Member) -> (u32, u64) {
        let head = self.head();
        self.members.push(m);
        *self.cursors.entry(head).or_default() += 1;
        self.waiting.push(m);
        ((self.members.len() - 1) as u32, head)
    }

    /// Removes the member at `pos` whose cursor is `cursor`. Returns the member that took
    /// its place in `members` (its `feed_pos` is now `pos`).
    pub fn leave(&mut self, pos: u32, cursor: u64) -> Option<Member> {
        let pos = pos as usize;
        if pos >= self.members.len() {
            return None;
        }
        self.members.swap_remove(pos);
        self.uncount(cursor.max(self.base));
        self.trim();
        self.members.get(pos).copied()
    }

    /// Appends a message. Returns how many members lost a message to the capacity bound,
    /// and the deadline of the cohort the caught-up members formed, if any did.
    pub fn append(&mut self, frame: Rc<Frame>, now: u64) -> (u64, Option<u64>) {
        let at = self.head();
        self.log.push_back(frame);
        let mut overflowed = 0;
        if self.log.len() > self.capacity {
            self.log.pop_front();
            self.base += 1;
            // Members still at the message that left move up to the next one.
            if let Some(n) = self.cursors.remove(&(self.base - 1)) {
                overflowed = n as u64;
                *self.cursors.entry(self.base).or_default() += n;
            }
        }
        let mut deadline = None;
        if !self.waiting.is_empty() {
            let d = now + self.key.batch_ms as u64;
            self.cohorts.push_back(Cohort {
                cursor: at,
                deadline: d,
                members: std::mem::take(&mut self.waiting),
            });
            deadline = Some(d);
        }
        (overflowed, deadline)
    }

    /// The first cohort whose flush is due: `batchMs` passed, or `batchMax` messages wait.
    pub fn pop_due(&mut self, now: u64) -> Option<Cohort> {
        let head = self.head();
        let c = self.cohorts.front()?;
        if c.deadline <= now || head - c.cursor >= self.key.batch_max as u64 {
            return self.cohorts.pop_front();
        }
        None
    }

    /// Where a member at `cursor` reads from, and how many messages it lost to the
    /// capacity bound before that.
    pub fn start(&self, cursor: u64) -> (u64, u64) {
        (cursor.max(self.base), self.base.saturating_sub(cursor))
    }

    /// Messages waiting for a member reading from `start` (see [`Feed::start`]).
    pub fn pending(&self, start: u64) -> u64 {
        self.head() - start
    }

    /// Up to `n` messages from `start` (see [`Feed::start`]), oldest first.
    pub fn frames(&self, start: u64, n: usize) -> std::collections::vec_deque::Iter<'_, Rc<Frame>> {
        let from = (start - self.base) as usize;
        let to = from + n.min(self.log.len() - from);
        self.log.range(from..to)
    }

    /// Messages `start..start + n` (within the log, see [`Feed::frames`]) as one run of
    /// bytes in the feed's framing: whole WebSocket frames back to back (`frames`), or
    /// the messages joined by commas (`array`: the inside of a `batch`, which the flush
    /// wraps). Built once per run and shared by every member flushing that run.
    ///
    /// Why: a flush of 200 separate frames is 200 iovecs, and the kernel's copy of a
    /// segmented write costs ~2x one contiguous write of the same bytes (the write floor,
    /// docs/PERFORMANCE.md "Performance II"); one user-space copy per cohort buys back
    /// most of it for every member.
    pub fn flat(&mut self, start: u64, n: usize) -> Rc<Vec<u8>> {
        if let Some(f) = &self.flat {
            if f.start == start && f.n == n {
                return f.bytes.clone();
            }
        }
        let bytes = flatten(self.frames(start, n), self.key.framing);
        let bytes = Rc::new(bytes);
        self.flat = Some(Flat {
            start,
            n,
            bytes: bytes.clone(),
        });
        bytes
    }

    /// A member read from `start` to `to`: the log gives back what nobody needs any more.
    pub fn advance(&mut self, start: u64, to: u64) {
        self.uncount(start.max(self.base));
        *self.cursors.entry(to.max(self.base)).or_default() += 1;
        self.trim();
    }

    /// Puts a member that flushed back on a list: `waiting` when it is caught up, else
    /// the cohort of its cursor. Returns `Some(deadline)` when that made a new cohort (the
    /// caller arms its timer), `None` when the member is now on an existing list.
    pub fn requeue(&mut self, m: Member, cursor: u64, deadline: u64) -> Option<u64> {
        if cursor >= self.head() {
            self.waiting.push(m);
            return None;
        }
        match self.cohorts.binary_search_by(|c| c.cursor.cmp(&cursor)) {
            Ok(i) => {
                self.cohorts[i].members.push(m);
                None
            }
            Err(i) => {
                self.cohorts.insert(
                    i,
                    Cohort {
                        cursor,
                        deadline,
                        members: vec![m],
                    },
                );
                Some(deadline)
            }
        }
    }

    /// Shard time (ms, wrapping) the message at `pos` arrived, if the log holds it.
    pub fn arrived_ms(&self, pos: u64) -> Option<u32> {
        let i = pos.checked_sub(self.base)? as usize;
        self.log.get(i).map(|f| f.arrived_ms)
    }

    /// The waiting list, for dropping entries of members that have left.
    pub fn waiting_mut(&mut self) -> &mut Vec<Member> {
        &mut self.waiting
    }

    fn uncount(&mut self, pos: u64) {
        if let Some(n) = self.cursors.get_mut(&pos) {
            *n -= 1;
            if *n == 0 {
                self.cursors.remove(&pos);
            }
        }
    }

    /// Drops messages every member has read.
    fn trim(&mut self) {
        let low = self
            .cursors
            .first_key_value()
            .map_or(self.head(), |(p, _)| *p);
        while self.base < low && self.log.pop_front().is_some() {
            self.base += 1;
        }
        // A run nobody can flush any more (every member is past its start) is let go, so
        // a quiet feed holds no copy.
        if self
            .flat
            .as_ref()
            .is_some_and(|f| f.start < self.base || self.log.is_empty())
        {
            self.flat = None;
        }
    }
}

/// `frames` as one run of bytes in `framing` (see [`Feed::flat`]).
pub fn flatten<'a>(
    frames: impl Iterator<Item = &'a Rc<Frame>> + Clone,
    framing: Framing,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    match framing {
        Framing::Frames => {
            bytes.reserve(frames.clone().map(|f| f.frame_bytes().len()).sum());
            for f in frames {
                bytes.extend_from_slice(f.frame_bytes());
            }
        }
        Framing::Array => {
            bytes.reserve(frames.clone().map(|f| f.message().len() + 1).sum());
            for (i, f) in frames.enumerate() {
                if i > 0 {
                    bytes.push(b',');
                }
                bytes.extend_from_slice(f.message());
            }
        }
    }
    bytes
}

/// How a connection leaves its feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// It goes on with its own ring: unsent messages move there, the subscription gets
    /// its own index entry back.
    Keep,
    /// It is closing: unsent messages are discarded.
    Discard,
}

impl Shard {
    /// A connection holding exactly one subscription, with nothing in its own ring, joins
    /// (or starts) the feed of that subscription and its options. Anything else stays as
    /// it is. Called after (un)subscribing and when a ring empties.
    pub(super) fn attach_feed(&mut self, key: usize) {
        let capacity = self.node.config().delivery.queue_capacity;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        if ws.feed != 0
            || ws.echo
            || ws.close_sent
            || ws.subscriptions.len() != 1
            || ws.subscriptions[0].filter.is_some()
            || !ws.live_queries.is_empty()
            || !ws.ring.is_empty()
            || ws.replaying > 0
        {
            return;
        }
        let s = &ws.subscriptions[0];
        let fk = FeedKey {
            sub: s.id,
            path: s.path.clone(),
            events: s.events.clone(),
            batch_ms: ws.batch_ms,
            batch_max: ws.batch_max,
            framing: ws.framing,
        };
        self.index.remove(&fk.path, key as u32, fk.sub);
        let slot = match self.feed_slots.get(&fk) {
            Some(&slot) => slot,
            None => {
                let slot = self.feeds.insert(Feed::new(fk.clone(), capacity));
                self.index.insert(
                    &fk.path,
                    Entry {
                        conn: FEED_BIT | slot as u32,
                        sub: fk.sub,
                        events: fk.events.clone(),
                    },
                );
                self.feed_slots.insert(fk, slot);
                slot
            }
        };
        let feed = &mut self.feeds[slot];
        let (pos, cursor) = feed.join((key as u32, gen));
        ws.feed = slot as u32 + 1;
        ws.feed_pos = pos;
        ws.cursor = cursor;
        // Entries of members that left pile up on the waiting list of a feed that gets
        // no messages; sweep them now and then.
        if feed.waiting_mut().len() > 2 * feed.members.len() + 64 {
            let head = feed.head();
            let conns = &self.conns;
            feed.waiting_mut().retain(|&(k, g)| {
                conns.get(k as usize).is_some_and(|c| {
                    c.gen == g
                        && c.ws()
                            .is_some_and(|w| w.feed == slot as u32 + 1 && w.cursor == head)
                })
            });
        }
    }

    /// Takes a connection out of its feed (no-op if it is in none). See [`Leave`].
    pub(super) fn detach_feed(&mut self, key: usize, how: Leave) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        if ws.feed == 0 {
            return;
        }
        let slot = (ws.feed - 1) as usize;
        ws.feed = 0;
        let feed = &mut self.feeds[slot];
        let mut flush = None;
        if how == Leave::Keep {
            let (start, skipped) = feed.start(ws.cursor);
            if skipped > 0 {
                ws.add_dropped(feed.key.sub, skipped);
            }
            for f in feed.frames(start, usize::MAX) {
                ws.ring.push(f.clone());
            }
            self.index.insert(
                &feed.key.path,
                Entry {
                    conn: key as u32,
                    sub: feed.key.sub,
                    events: feed.key.events.clone(),
                },
            );
            // The ring's flush deadline is `batchMs` after its oldest message arrived.
            if let Some(oldest) = ws.ring.oldest().map(|f| f.arrived_ms) {
                let at = flush_deadline(now, oldest, ws.batch_ms);
                ws.flush_at = Some(at);
                flush = Some(at);
            }
        }
        let moved = feed.leave(ws.feed_pos, ws.cursor);
        if let Some((k, _)) = moved {
            let pos = ws.feed_pos;
            if let Some(w) = self.conns.get_mut(k as usize).and_then(|c| c.ws_mut()) {
                w.feed_pos = pos;
            }
        }
        if feed.is_empty() {
            let feed = self.feeds.remove(slot);
            self.index
                .remove(&feed.key.path, FEED_BIT | slot as u32, feed.key.sub);
            self.feed_slots.remove(&feed.key);
        }
        if let Some(at) = flush {
            self.arm(at, key, gen, TimerKind::Flush);
        }
    }

    /// Appends a message to a feed and flushes the members now due.
    pub(super) fn feed_append(&mut self, slot: usize, frame: Rc<Frame>) {
        let now = self.now;
        let Some(feed) = self.feeds.get_mut(slot) else {
            return;
        };
        let (overflowed, deadline) = feed.append(frame, now);
        if overflowed > 0 {
            self.metrics.dropped_overflow.increment(overflowed);
        }
        if let Some(at) = deadline.filter(|&at| at > now) {
            self.arm(at, slot, 0, TimerKind::FeedFlush);
        }
        self.feed_due(slot);
    }

    /// Marks the members of every due cohort of the feed for flushing. Also the feed's
    /// timer.
    pub(super) fn feed_due(&mut self, slot: usize) {
        let now = self.now;
        loop {
            let Some(cohort) = self.feeds.get_mut(slot).and_then(|f| f.pop_due(now)) else {
                return;
            };
            for (k, g) in cohort.members {
                let Some(c) = self.conns.get_mut(k as usize) else {
                    continue;
                };
                if c.gen != g {
                    continue;
                }
                let Some(ws) = c.ws_mut() else { continue };
                if ws.feed == slot as u32 + 1 && ws.cursor == cohort.cursor && !ws.dirty {
                    ws.dirty = true;
                    self.dirty.push_back((k, g));
                }
            }
        }
    }

    /// After a member's flush of `n` messages from `start`: its cursor moves on and it
    /// goes back on a list, or straight to flushing if more is already due.
    pub(super) fn feed_flushed(&mut self, key: usize, start: u64, n: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        let Some(feed) = ws
            .feed
            .checked_sub(1)
            .and_then(|s| self.feeds.get_mut(s as usize))
        else {
            return;
        };
        let to = start + n as u64;
        feed.advance(start, to);
        ws.cursor = to;
        let pending = feed.pending(to);
        let mut deadline = now;
        if pending > 0 && pending < ws.batch_max as u64 {
            if let Some(arrived) = feed.arrived_ms(to) {
                deadline = flush_deadline(now, arrived, ws.batch_ms);
            }
        }
        if pending > 0 && deadline <= now {
            if !ws.dirty {
                ws.dirty = true;
                self.dirty.push_back((key as u32, gen));
            }
            return;
        }
        let slot = ws.feed as usize - 1;
        if let Some(at) = feed.requeue((key as u32, gen), to, deadline) {
            self.arm(at, slot, 0, TimerKind::FeedFlush);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(batch_ms: u32, batch_max: u32) -> FeedKey {
        FeedKey {
            sub: 1,
            path: "p".into(),
            events: None,
            batch_ms,
            batch_max,
            framing: Framing::Frames,
        }
    }

    fn frame(n: u32) -> Rc<Frame> {
        Rc::new(Frame::build(
            crate::protocol::ws::OpCode::Text,
            4,
            Box::new([1]),
            None,
            n,
            |b| b.extend_from_slice(&n.to_be_bytes()),
        ))
    }

    fn ids(it: std::collections::vec_deque::Iter<'_, Rc<Frame>>) -> Vec<u32> {
        it.map(|f| f.arrived_ms).collect()
    }

    #[test]
    fn caught_up_members_form_one_cohort_due_after_batch_ms() {
        let mut f = Feed::new(key(100, 1000), 10);
        f.join((1, 0));
        f.join((2, 0));
        assert_eq!(f.append(frame(0), 0), (0, Some(100)));
        // The second message finds nobody caught up: no new cohort.
        assert_eq!(f.append(frame(1), 50), (0, None));
        assert!(f.pop_due(99).is_none());
        let c = f.pop_due(100).unwrap();
        assert_eq!((c.cursor, c.members), (0, vec![(1, 0), (2, 0)]));
        assert_eq!(ids(f.frames(0, 10)), [0, 1]);
    }

    #[test]
    fn batch_max_makes_a_cohort_due_early() {
        let mut f = Feed::new(key(1000, 3), 10);
        f.join((1, 0));
        f.append(frame(0), 0);
        f.append(frame(1), 0);
        assert!(f.pop_due(0).is_none());
        f.append(frame(2), 0);
        assert!(f.pop_due(0).is_some());
    }

    #[test]
    fn log_keeps_what_the_slowest_member_needs_and_no_more() {
        let mut f = Feed::new(key(0, 1000), 4);
        f.join((1, 0));
        f.join((2, 0));
        for i in 0..3 {
            f.append(frame(i), 0);
        }
        // Member 1 reads everything; member 2 reads nothing: the log keeps all three.
        f.advance(0, 3);
        assert_eq!(ids(f.frames(0, 10)), [0, 1, 2]);
        // Member 2 reads two: those leave the log.
        f.advance(0, 2);
        assert_eq!(ids(f.frames(2, 10)), [2]);
        assert_eq!(f.head(), 3);
    }

    #[test]
    fn members_past_capacity_lose_exactly_what_left_the_log() {
        let mut f = Feed::new(key(0, 1000), 3);
        f.join((1, 0));
        f.join((2, 0));
        let mut overflowed = 0;
        for i in 0..5 {
            overflowed += f.append(frame(i), 0).0;
        }
        // Two messages left the log; both members lost both.
        assert_eq!(overflowed, 4);
        assert_eq!(f.start(0), (2, 2));
        assert_eq!(ids(f.frames(2, 10)), [2, 3, 4]);
        f.advance(0, 5);
        // The other member's count is still right after the first moved on.
        assert_eq!(f.start(0), (2, 2));
        assert_eq!(f.leave(1, 0), None);
        assert_eq!(f.leave(0, 5), None);
        assert!(f.is_empty());
    }

    #[test]
    fn requeue_keeps_cohorts_ordered_and_shared() {
        let mut f = Feed::new(key(100, 1000), 10);
        f.join((1, 0));
        f.append(frame(0), 0);
        f.pop_due(100).unwrap();
        for i in 1..5 {
            f.append(frame(i), 0);
        }
        assert_eq!(f.requeue((1, 0), 3, 130), Some(130));
        assert_eq!(f.requeue((2, 0), 1, 110), Some(110));
        assert_eq!(f.requeue((3, 0), 3, 130), None);
        assert_eq!(f.requeue((4, 0), 5, 0), None);
        let c = f.pop_due(200).unwrap();
        assert_eq!(c.cursor, 1);
        let c = f.pop_due(200).unwrap();
        assert_eq!((c.cursor, c.members), (3, vec![(1, 0), (3, 0)]));
        assert!(f.pop_due(200).is_none());
    }

    /// A deterministic pseudo-random sequence (xorshift) for the property test.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Property: against a model with one bounded queue per member, a feed gives every
    /// member the same messages in the same order, and the same drop counts, under any
    /// mix of appends, partial reads, joins and leaves; and its log never holds more than
    /// its capacity.
    #[test]
    fn property_members_see_what_private_rings_would() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _case in 0..200 {
            let cap = (xorshift(&mut seed) % 8 + 1) as usize;
            let mut f = Feed::new(key(0, 1000), cap);
            // Model: member id → (cursor, pos, queue, dropped, received).
            struct M {
                id: u32,
                cursor: u64,
                queue: VecDeque<u32>,
                dropped: u64,
            }
            let mut members: Vec<M> = Vec::new();
            let mut next_id = 0u32;
            let mut next_msg = 0u32;
            for _ in 0..300 {
                match xorshift(&mut seed) % 5 {
                    0 => {
                        let (pos, cursor) = f.join((next_id, 0));
                        assert_eq!(pos as usize, members.len());
                        members.push(M {
                            id: next_id,
                            cursor,
                            queue: VecDeque::new(),
                            dropped: 0,
                        });
                        next_id += 1;
                    }
                    1 if !members.is_empty() => {
                        let i = (xorshift(&mut seed) % members.len() as u64) as usize;
                        let m = members.swap_remove(i);
                        let moved = f.leave(i as u32, m.cursor);
                        assert_eq!(moved.map(|x| x.0), members.get(i).map(|x| x.id));
                    }
                    2 if !members.is_empty() => {
                        let i = (xorshift(&mut seed) % members.len() as u64) as usize;
                        let n = (xorshift(&mut seed) % 4) as usize;
                        let m = &mut members[i];
                        let (start, skipped) = f.start(m.cursor);
                        assert_eq!(skipped, m.dropped, "drop count");
                        m.dropped = 0;
                        let got = ids(f.frames(start, n));
                        let want: Vec<u32> = m.queue.drain(..n.min(m.queue.len())).collect();
                        assert_eq!(got, want, "messages and order");
                        f.advance(start, start + got.len() as u64);
                        m.cursor = start + got.len() as u64;
                    }
                    _ => {
                        f.append(frame(next_msg), 0);
                        for m in &mut members {
                            m.queue.push_back(next_msg);
                            if m.queue.len() > cap {
                                m.queue.pop_front();
                                m.dropped += 1;
                            }
                        }
                        next_msg += 1;
                    }
                }
                assert!(f.log.len() <= cap);
            }
        }
    }
}
