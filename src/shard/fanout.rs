//! Fan-out on a shard: match a publication against the index, build each distinct
//! message once, append it to the feeds it reaches (one append for all their members,
//! see [`super::feed`]) and queue it in the rings of the other connections it reaches,
//! and flush a connection when `batchMax` messages wait or `batchMs` after the oldest
//! arrived.
//!
//! Part of [`Shard`]; runs on the shard's thread only. No allocation per delivery: a
//! delivery is a pointer copy into a ring, or nothing at all for a feed member. The
//! payload is never re-serialized: a message is the per-connection head
//! (`subscriptionIds`) plus the publication's shared tail, built once per distinct head. A
//! flush is one vectored write of whatever waits (up to `batchMax`), so deliveries are
//! coalesced whatever the batch interval.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Framing;
use crate::protocol::{self, ws};
use crate::publication::Publication;

use super::conn::{write_segments, Conn, Frame, Kind, HEADER_ROOM};
use super::deflate::Deflated;
use super::feed::{flatten, FEED_BIT};
use super::flush::{flush_deadline, Flushed};
use super::uring;
use super::{Shard, TimerKind};

/// `{"type":"event","subscriptionIds":[` + `],`
const EVENT_HEAD_LEN: usize = 35 + 2;

impl Shard {
    /// Delivers a publication to this shard's matching subscriptions, refreshes and
    /// live queries.
    pub(super) fn on_publication(&mut self, p: &Arc<Publication>) {
        self.last_seq = self.last_seq.max(p.seq);
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.index.collect(&p.path, &p.event_type, &mut matches);
        let mut refreshes = std::mem::take(&mut self.refreshes);
        refreshes.clear();
        if !self.filtered.is_empty() {
            let before = self.filtered.evaluations;
            self.filtered.collect(p, &mut matches, &mut refreshes);
            self.metrics
                .filter_evaluations
                .increment(self.filtered.evaluations - before);
        }
        if !matches.is_empty() {
            self.frame_cache.clear();
            let now32 = self.now as u32;
            // The single-id frame used last: most connections share one id, so this
            // spares a hash lookup per delivery.
            let mut last: Option<(u32, Rc<Frame>)> = None;
            for &(key, sub) in &matches {
                if key & FEED_BIT != 0 {
                    let f = single(
                        &mut last,
                        &mut self.frame_cache,
                        &self.interner,
                        p,
                        sub,
                        now32,
                    );
                    self.feed_append((key & !FEED_BIT) as usize, f);
                    continue;
                }
                let Some(conn) = self.conns.get_mut(key as usize) else {
                    continue;
                };
                let gen = conn.gen;
                let Kind::Ws(ws) = &mut conn.kind else {
                    continue;
                };
                if ws.close_sent {
                    continue;
                }
                if ws.last_seq == p.seq {
                    // The connection matched again through another subscription: its
                    // newest message becomes one listing both ids.
                    let Some(prev) = ws.ring.back() else { continue };
                    let mut ids: Vec<u32> = prev.subs.to_vec();
                    if !ids.contains(&sub) {
                        ids.push(sub);
                        ids.sort_unstable();
                    }
                    let frame = frame_for(&mut self.frame_cache, &self.interner, p, &ids, now32);
                    ws.ring.replace_back(frame);
                    continue;
                }
                ws.last_seq = p.seq;
                let frame = single(
                    &mut last,
                    &mut self.frame_cache,
                    &self.interner,
                    p,
                    sub,
                    now32,
                );
                let was_empty = ws.ring.is_empty();
                if let Some(old) = ws.ring.push(frame) {
                    ws.count_dropped(&old.subs);
                    self.metrics.dropped_overflow.increment(1);
                }
                self.schedule_flush(key as usize, gen, was_empty);
            }
        }
        // After every event of this publication, so the merge above always finds the
        // event as the ring's newest message.
        if !refreshes.is_empty() {
            self.deliver_refreshes(p, &refreshes);
        }
        self.refreshes = refreshes;
        if p.entity.is_some() && !self.lq_by_collection.is_empty() {
            self.live_query_publication(p);
        }
        self.matches = matches;
    }

    /// After a message was queued in connection `key`'s ring (`was_empty` before): the
    /// flush is due now (`batchMs=0` or `batchMax` waiting) or `batchMs` after the
    /// oldest.
    pub(super) fn schedule_flush(&mut self, key: usize, gen: u32, was_empty: bool) {
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        let batch_ms = ws.batch_ms as u64;
        if batch_ms == 0 || ws.ring.len() >= ws.batch_max as usize {
            if !ws.dirty {
                ws.dirty = true;
                self.dirty.push_back((key as u32, gen));
            }
        } else if was_empty {
            let at = self.now + batch_ms;
            ws.flush_at = Some(at);
            self.arm(at, key, gen, TimerKind::Flush);
        }
    }

    /// `subscriptionRefresh` for each (connection, subscription) an entity left.
    fn deliver_refreshes(&mut self, p: &Publication, refreshes: &[(u32, u32)]) {
        let Some(change) = &p.entity else { return };
        let now32 = self.now as u32;
        for &(key, sub) in refreshes {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let gen = conn.gen;
            let Kind::Ws(ws) = &mut conn.kind else {
                continue;
            };
            if ws.close_sent {
                continue;
            }
            let name = self.interner.json(sub);
            let len = 96 + name.len() + p.path.len() + change.id.len();
            let frame = Rc::new(Frame::build(
                ws::OpCode::Text,
                len,
                Box::new([sub]),
                Some(p.ingested_at),
                now32,
                |buf| protocol::refresh_message(buf, name, &p.path, &change.id, p.seq),
            ));
            let was_empty = ws.ring.is_empty();
            if let Some(old) = ws.ring.push(frame) {
                ws.count_dropped(&old.subs);
                self.metrics.dropped_overflow.increment(1);
            }
            self.metrics.refreshes.increment(1);
            self.schedule_flush(key as usize, gen, was_empty);
        }
    }

    /// A publication the router could not queue for this shard: it is not delivered, and
    /// every subscription it would have reached counts it as dropped, so its client gets
    /// an exact `QUEUE_OVERFLOW` warning.
    pub(super) fn drop_publication(&mut self, p: &Arc<Publication>) {
        self.last_seq = self.last_seq.max(p.seq);
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.index.collect(&p.path, &p.event_type, &mut matches);
        if !self.filtered.is_empty() {
            let mut refreshes = std::mem::take(&mut self.refreshes);
            refreshes.clear();
            self.filtered.collect(p, &mut matches, &mut refreshes);
            matches.extend_from_slice(&refreshes);
            self.refreshes = refreshes;
        }
        if let Some(change) = &p.entity {
            let c = change.collection.clone();
            self.live_queries_missed(Some(&c), 1);
        }
        for &(key, sub) in &matches {
            if key & FEED_BIT != 0 {
                let Some(feed) = self.feeds.get((key & !FEED_BIT) as usize) else {
                    continue;
                };
                for &(k, _) in &feed.members {
                    if let Some(ws) = self.conns.get_mut(k as usize).and_then(|c| c.ws_mut()) {
                        ws.count_dropped(&[sub]);
                    }
                }
                self.metrics
                    .dropped_shard_queue
                    .increment(feed.members.len() as u64);
            } else if let Some(ws) = self.conns.get_mut(key as usize).and_then(|c| c.ws_mut()) {
                ws.count_dropped(&[sub]);
                self.metrics.dropped_shard_queue.increment(1);
            }
        }
        self.matches = matches;
    }

    /// Publications lost past the router's overflow bound: which subscriptions they
    /// matched is unknown, so every subscription on the shard is warned with the count
    /// as an upper bound.
    pub(super) fn lost_publications(&mut self, n: u64) {
        tracing::warn!(
            shard = self.id,
            lost = n,
            "shard queue overflowed past its bound; warning every subscription"
        );
        for (_, conn) in self.conns.iter_mut() {
            if let Some(ws) = conn.ws_mut() {
                let ids: Vec<u32> = ws.subscriptions.iter().map(|s| s.id).collect();
                for id in ids {
                    ws.add_dropped(id, n);
                }
            }
        }
        self.metrics.dropped_shard_queue.increment(n);
        self.live_queries_missed(None, n);
    }

    pub(super) fn mark_dirty(&mut self, key: usize, gen: u32) {
        if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
            if !ws.dirty {
                ws.dirty = true;
                self.dirty.push_back((key as u32, gen));
            }
        }
    }

    /// Whether the connection's ring should be flushed now.
    pub(super) fn flush_due(&self, key: usize) -> bool {
        let Some(ws) = self.conns.get(key).and_then(|c| c.ws()) else {
            return false;
        };
        let (waiting, oldest) = match ws.feed.checked_sub(1) {
            None => (ws.ring.len(), ws.ring.oldest().map(|f| f.arrived_ms)),
            Some(slot) => {
                let Some(feed) = self.feeds.get(slot as usize) else {
                    return false;
                };
                let (start, _) = feed.start(ws.cursor);
                (feed.pending(start) as usize, feed.arrived_ms(start))
            }
        };
        match oldest {
            None => false,
            Some(oldest) => {
                waiting >= ws.batch_max as usize
                    || flush_deadline(self.now, oldest, ws.batch_ms) <= self.now
            }
        }
    }

    pub(super) fn flush_timer(&mut self, key: usize, at: u64) {
        let gen = match self.conns.get_mut(key) {
            Some(c) => {
                let gen = c.gen;
                match c.ws_mut() {
                    Some(ws) if ws.flush_at == Some(at) => {
                        ws.flush_at = None;
                        gen
                    }
                    _ => return,
                }
            }
            None => return,
        };
        self.mark_dirty(key, gen);
    }

    /// Flushes connections waiting for it, oldest-marked first, at most
    /// [`FLUSH_BUDGET`] per loop turn. Between turns the shard polls its sockets and
    /// drains its mailbox, so publications that arrive while it is writing join the rings
    /// of connections not yet flushed and share their write: under load, even
    /// `batchMs=0` coalesces (nats-server's `flushClients(budget)` does the same).
    pub(super) fn flush_dirty(&mut self) {
        let mut budget = FLUSH_BUDGET;
        while budget > 0 {
            let Some((key, gen)) = self.dirty.pop_front() else {
                break;
            };
            let key = key as usize;
            match self.conns.get_mut(key) {
                Some(c) if c.gen == gen => {
                    if let Some(ws) = c.ws_mut() {
                        ws.dirty = false;
                    }
                }
                _ => continue,
            }
            self.flush_with(key, true);
            budget -= 1;
        }
        self.complete_uring();
    }

    /// Writes up to `batchMax` waiting messages (after any overflow warnings) in one
    /// vectored write, then arms the next flush for what is left.
    pub(super) fn flush(&mut self, key: usize) {
        self.flush_with(key, false);
    }

    /// As [`Shard::flush`]; with `defer` the write may go to io_uring and finish in
    /// [`Shard::complete_uring`] (only `flush_dirty` defers: it reaps before anything else
    /// can write to the same sockets).
    pub(super) fn flush_with(&mut self, key: usize, defer: bool) {
        // A `since` replay being prepared off the shard goes out first (`replay_ready`
        // flushes what waited).
        if self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.replaying > 0)
        {
            return;
        }
        // A live query that lost a message starts over before anything else is written.
        self.reload_overflowed_live_queries(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has_pending() {
            // The socket has not taken the last flush yet: messages stay in the ring or
            // feed (where overflow drops the oldest) until it is writable.
            return;
        }
        let gen = conn.gen;
        let Conn {
            sock, out, kind, ..
        } = conn;
        let Kind::Ws(ws) = kind else {
            return;
        };
        // What waits: the connection's own ring, or its feed from its cursor on. A run of
        // many messages is written as one flat copy of it (one segment instead of one per
        // message: see `Feed::flat`): a feed member's from its feed, where the members of
        // its cohort share it; a ring's made for this flush. Not for a compressing
        // connection: its bytes are compressed (`super::deflate`; a cohort's compressed
        // batch takes the same slot below).
        let mut flat = None;
        let (frames, start) = match ws.feed.checked_sub(1) {
            None => {
                let frames = ws.ring.front(ws.batch_max as usize);
                if frames.len() >= FLAT_MIN && ws.deflate.is_none() {
                    flat = Some(Rc::new(flatten(frames.clone(), ws.framing)));
                }
                (frames, None)
            }
            Some(slot) => {
                let Some(feed) = self.feeds.get_mut(slot as usize) else {
                    return;
                };
                let (start, skipped) = feed.start(ws.cursor);
                if skipped > 0 {
                    // Counted in the drop metric as they left the log.
                    ws.add_dropped(feed.key.sub, skipped);
                    ws.cursor = start;
                }
                let n = feed.pending(start).min(ws.batch_max as u64) as usize;
                if n >= FLAT_MIN && ws.deflate.is_none() {
                    flat = Some(feed.flat(start, n));
                }
                let feed = &self.feeds[slot as usize];
                (feed.frames(start, n), Some(start))
            }
        };
        let n = frames.len();
        if n == 0 {
            return;
        }
        // Overflow warnings go first, one per affected subscription still held.
        let mut warnings: Vec<Vec<u8>> = Vec::new();
        for (id, count) in ws.dropped.drain(..) {
            if ws.subscriptions.iter().any(|s| s.id == id) {
                warnings.push(protocol::overflow_warning(self.interner.name(id), count));
            }
        }
        // permessage-deflate: the connection's agreement, and (`framing=array`) where the
        // batch's payload starts in `head` and its length.
        let agreed = ws.deflate.as_ref().map(|d| d.agreed);
        let (mut batch_at, mut batch_len) = (0, 0);
        let mut head: Vec<u8> = Vec::new();
        let frames_written = match ws.framing {
            Framing::Frames => {
                for w in &warnings {
                    ws::write_frame(&mut head, ws::OpCode::Text, w);
                }
                n + warnings.len()
            }
            Framing::Array => {
                let msgs = frames.clone().map(|f| f.message().len()).sum::<usize>()
                    + warnings.iter().map(|w| w.len()).sum::<usize>();
                let count = n + warnings.len();
                let len = BATCH_OPEN.len() + msgs + count - 1 + BATCH_CLOSE.len();
                let mut h = [0u8; ws::MAX_HEADER];
                let hn = ws::encode_header(&mut h, ws::OpCode::Text, len);
                (batch_at, batch_len) = (hn, len);
                head.extend_from_slice(&h[..hn]);
                head.extend_from_slice(BATCH_OPEN);
                for w in &warnings {
                    head.extend_from_slice(w);
                    head.push(b',');
                }
                1
            }
        };
        // permessage-deflate: each frame's shared compressed form, the whole flush
        // compressed into `head`, or a compressed batch written as it is (a cohort's,
        // shared like a flat run, and kept alive the same way).
        let deflated = agreed.map_or(Deflated::Plain, |agreed| {
            let flush = super::deflate::DeflateFlush {
                agreed,
                framing: ws.framing,
                feed: start
                    .and_then(|s| Some((self.feeds.get(ws.feed.checked_sub(1)? as usize)?, s))),
                no_warnings: warnings.is_empty(),
                batch_at,
                batch_len,
            };
            flush.write(frames.clone(), &mut self.compressor, &mut head)
        });
        if let Deflated::Whole(run) = &deflated {
            head.clear();
            flat = Some(run.clone());
        }
        let mut segments: Vec<&[u8]> = Vec::with_capacity(2 * n + 2);
        if !head.is_empty() {
            segments.push(&head);
        }
        match (&deflated, ws.framing, flat.as_deref()) {
            (Deflated::InHead, ..) => {}
            (Deflated::PerFrame, ..) => {
                // Each frame compressed once, by the first connection to flush it.
                let c = &mut self.compressor;
                segments.extend(frames.clone().map(|f| f.deflated_bytes(c)));
            }
            (Deflated::Whole(_), _, Some(run)) | (_, Framing::Frames, Some(run)) => {
                segments.push(run)
            }
            (_, Framing::Array, Some(run)) => {
                segments.push(run);
                segments.push(BATCH_CLOSE);
            }
            (_, Framing::Frames, None) => segments.extend(frames.clone().map(|f| f.frame_bytes())),
            (_, Framing::Array, None) => {
                for (i, f) in frames.clone().enumerate() {
                    if i > 0 {
                        segments.push(b",");
                    }
                    segments.push(f.message());
                }
                segments.push(BATCH_CLOSE);
            }
        }
        let flushed = Flushed {
            messages: n,
            start,
            frames_written,
            events: if ws.echo { 0 } else { n as u64 },
            oldest: frames.clone().next().and_then(|f| f.ingested_at),
            // With batchMax waiting, the flush was due when the last of them arrived.
            full_at: if n >= ws.batch_max as usize {
                frames.clone().next_back().and_then(|f| f.ingested_at)
            } else {
                None
            },
            batch_ms: ws.batch_ms,
        };
        if defer && segments.len() <= uring::MAX_IOV {
            if let Some(writer) = self.uring.as_mut() {
                use std::os::fd::AsRawFd;
                // The iovecs point into the frames (or their flat run), `head` and static
                // data; all of it moves into the pending flush (a Vec's heap buffer does
                // not move).
                let frames: Vec<Rc<Frame>> = match flat {
                    Some(_) => Vec::new(),
                    None => frames.cloned().collect(),
                };
                let iov = uring::iovecs(&segments);
                drop(segments);
                let pending = uring::PendingFlush::new(key, gen, flushed, frames, flat, head, iov);
                match writer.push(sock.as_raw_fd(), pending) {
                    Ok(()) => return,
                    Err(pending) => {
                        // The ring is full even after submitting: write this one now.
                        let result = write_segments(sock, out, &pending.segments());
                        match result {
                            Ok(written) => self.flush_done(key, written, &pending.flushed),
                            Err(_) => self.drop_conn(key, "write_error"),
                        }
                        return;
                    }
                }
            }
        }
        let result = write_segments(sock, out, &segments);
        drop(segments);
        match result {
            Ok(written) => self.flush_done(key, written, &flushed),
            Err(_) => self.drop_conn(key, "write_error"),
        }
    }

    /// Reaps the io_uring flushes of this turn and finishes each like a direct write.
    pub(super) fn complete_uring(&mut self) {
        let Some(writer) = self.uring.as_mut() else {
            return;
        };
        if writer.is_empty() {
            return;
        }
        let results = match writer.complete() {
            Ok(r) => r,
            Err(e) => {
                // Without completions the kernel may still read the buffers: keep the
                // ring (and so the buffers) and stop using it; those connections stall
                // until their peers go away. Not expected outside of a broken kernel.
                tracing::error!(
                    shard = self.id,
                    "io_uring wait failed: {e}; using direct writes"
                );
                if let Some(w) = self.uring.take() {
                    std::mem::forget(w);
                }
                return;
            }
        };
        // Once per turn: what proves (tests, operators) that io_uring does the writing.
        self.metrics.uring_writes.increment(results.len() as u64);
        for (p, res) in results {
            match self.conns.get_mut(p.key) {
                Some(c) if c.gen == p.gen => {
                    let written = if res >= 0 {
                        res as usize
                    } else if res == -libc::EAGAIN {
                        0
                    } else {
                        self.drop_conn(p.key, "write_error");
                        continue;
                    };
                    if written < p.total {
                        c.out.extend_from_slice(&p.rest(written));
                    }
                    self.flush_done(p.key, written, &p.flushed);
                }
                _ => {}
            }
        }
    }

    /// After a flush's bytes went to the socket (or to `out`): the messages leave the
    /// ring (or the cursor moves past them), the next flush is armed for what is left,
    /// and the metrics count it.
    fn flush_done(&mut self, key: usize, written: usize, f: &Flushed) {
        let m = &self.metrics;
        m.bytes_written.increment(written as u64);
        m.frames_written.increment(f.frames_written as u64);
        m.deliveries.increment(f.events);
        m.flushes.increment(1);
        m.batch_size.record(f.messages as f64);
        if let Some(t) = f.oldest {
            let age = t.elapsed();
            m.publish_to_flush.record(age.as_secs_f64());
            let mut late = age.saturating_sub(Duration::from_millis(f.batch_ms as u64));
            if let Some(full) = f.full_at {
                late = late.min(full.elapsed());
            }
            m.flush_delay.record(late.as_secs_f64());
        }
        if let Some(start) = f.start {
            self.feed_flushed(key, start, f.messages);
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Kind::Ws(ws) = &mut conn.kind else {
            return;
        };
        ws.ring.consume(f.messages);
        if ws.channel_upto > 0 && ws.ring.is_empty() {
            self.channel_written(key);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Kind::Ws(ws) = &mut conn.kind else {
            return;
        };
        // What is left flushes when batchMax wait again or batchMs after its oldest.
        let next = match ws.ring.oldest().map(|f| f.arrived_ms) {
            None => None,
            Some(_) if ws.ring.len() >= ws.batch_max as usize => Some(self.now),
            Some(oldest_at) => Some(flush_deadline(self.now, oldest_at, ws.batch_ms)),
        };
        let read_paused = ws.read_paused;
        // A connection back to one subscription and an empty ring can share a feed.
        let may_attach = next.is_none() && ws.feed == 0 && ws.subscriptions.len() == 1;
        match next {
            Some(at) if at <= self.now && !ws.dirty => {
                ws.dirty = true;
                self.dirty.push_back((key as u32, gen));
            }
            Some(at) if at <= self.now => {}
            Some(at) => {
                ws.flush_at = Some(at);
                self.arm(at, key, gen, TimerKind::Flush);
            }
            None => {}
        }
        if read_paused {
            self.resume_read(key);
        }
        if may_attach {
            self.attach_feed(key);
        }
    }
}

/// Connections flushed per loop turn before the shard looks at its sockets and mailbox
/// again: small enough that a turn stays around a millisecond or two of writes, large
/// enough that the extra `epoll_wait` per turn is noise. Also the io_uring queue depth.
pub(super) const FLUSH_BUDGET: usize = 256;

/// From this many messages on, a flush writes a flat copy of its run instead of one
/// segment per message (`benches/hot_path.rs` "flush 200 frames": the copy and one write
/// cost less than the kernel's walk over 200 segments). Immediate mode flushes one or a
/// few, where the segments are cheaper than a copy.
const FLAT_MIN: usize = 8;

const BATCH_OPEN: &[u8] = b"{\"type\":\"batch\",\"messages\":[";
pub(super) const BATCH_CLOSE: &[u8] = b"]}";

/// The frame for publication `p` listing subscription ids `ids` (sorted), built once
/// per publication per distinct list.
fn frame_for(
    cache: &mut hashbrown::HashMap<Box<[u32]>, Rc<Frame>>,
    interner: &super::interner::Interner,
    p: &Publication,
    ids: &[u32],
    now32: u32,
) -> Rc<Frame> {
    if let Some(f) = cache.get(ids) {
        return f.clone();
    }
    let ids_len: usize = ids.iter().map(|&i| interner.json(i).len() + 1).sum();
    let len = EVENT_HEAD_LEN + ids_len + p.tail.len();
    let frame = Rc::new(Frame::build(
        ws::OpCode::Text,
        len,
        ids.into(),
        Some(p.ingested_at),
        now32,
        |buf| {
            protocol::event_prefix(buf, ids.iter().map(|&i| interner.json(i)));
            buf.extend_from_slice(&p.tail);
        },
    ));
    debug_assert!(frame.buf.len() <= HEADER_ROOM + len);
    cache.insert(ids.into(), frame.clone());
    frame
}

/// The single-id frame for `sub`, remembering the last one built: most deliveries of a
/// publication share one id, so this spares a hash lookup each.
fn single(
    last: &mut Option<(u32, Rc<Frame>)>,
    cache: &mut hashbrown::HashMap<Box<[u32]>, Rc<Frame>>,
    interner: &super::interner::Interner,
    p: &Publication,
    sub: u32,
    now32: u32,
) -> Rc<Frame> {
    match last {
        Some((s, f)) if *s == sub => f.clone(),
        _ => {
            let f = frame_for(cache, interner, p, &[sub], now32);
            *last = Some((sub, f.clone()));
            f
        }
    }
}
