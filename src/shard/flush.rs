//! What a flush is, shared by the modules that make and finish one: when it is due
//! (`batchMs` after the oldest waiting message) and what it covers until its bytes are
//! written (directly, or after an io_uring completion).
//!
//! Pure data and arithmetic; part of the shard, on its thread. `fanout` (rings), `feed`
//! (shared logs) and `uring` all use it, and it uses none of them.

use std::time::Instant;

/// What one flush covers, from building it to finishing it (possibly after an io_uring
/// completion).
#[derive(Debug)]
pub struct Flushed {
    /// Messages taken from the ring or feed.
    pub messages: usize,
    /// For a feed member: the position the flush read from.
    pub start: Option<u64>,
    pub frames_written: usize,
    /// Events delivered (0 for echoes).
    pub events: u64,
    /// When the oldest message was sequenced (latency metrics).
    pub oldest: Option<Instant>,
    /// When the newest message was sequenced, if the flush carried `batchMax` of them.
    pub full_at: Option<Instant>,
    /// The connection's `batchMs` (the flush was due that long after `oldest`).
    pub batch_ms: u32,
}

/// When a flush is due whose oldest waiting message arrived at `oldest_ms` (shard ms,
/// wrapping): `batch_ms` after that, or `now` if that has passed.
pub fn flush_deadline(now: u64, oldest_ms: u32, batch_ms: u32) -> u64 {
    let waited = (now as u32).wrapping_sub(oldest_ms) as u64;
    now + (batch_ms as u64).saturating_sub(waited)
}
