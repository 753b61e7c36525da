//! The retained window of publications that `since` replays (PROTOCOL.md §5): the last
//! `history.size` publications, none older than `history.ttl_ms`.
//!
//! Written only by the sequencer, under its lock, in `seq` order (so the window is always
//! a contiguous run of `seq`s); read by any shard answering a `subscribeEvents` with
//! `since`, under this window's own short lock (taken inside the sequencer lock by the
//! writer, never the other way round). Entries are the same `Arc<Publication>`s the
//! shards deliver, so the window costs a pointer per publication plus whatever the
//! publications would hold anyway for as long as they stay; its bytes are counted in
//! `shardcast_history_bytes`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics;
use crate::publication::Publication;

/// Bytes a publication is counted for beyond its encoded tail (the struct, the pointer).
const ENTRY_OVERHEAD: usize = 160;

/// The window. See the module docs.
pub struct History {
    inner: Mutex<Window>,
    size: usize,
    ttl_ms: u64,
}

struct Window {
    entries: VecDeque<(u64, Arc<Publication>)>,
    /// The newest `seq` ever appended (what "reached back" is measured against when the
    /// window is empty).
    newest: u64,
    bytes: usize,
}

/// Estimated bytes an entity state (a parsed JSON value) costs per byte of its JSON text:
/// serde_json's maps, strings and vectors are separate allocations.
const STATE_FACTOR: usize = 3;

/// What a retained publication is counted for: its encoded tail, and for an entity write
/// the states before and after it keeps alive (estimated from the JSON text), so the
/// gauge tracks memory rather than only the event bytes.
fn cost(p: &Publication) -> usize {
    let states = p.entity.as_ref().map_or(0, |c| {
        let n = usize::from(c.before.is_some()) + usize::from(c.after.is_some());
        n * STATE_FACTOR * p.data_json().len()
    });
    p.tail.len() + ENTRY_OVERHEAD + states
}

impl History {
    pub fn new(size: usize, ttl_ms: u64, newest: u64) -> History {
        History {
            inner: Mutex::new(Window {
                entries: VecDeque::new(),
                newest,
                bytes: 0,
            }),
            size,
            ttl_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Appends and trims keep the window consistent at every step: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends sequenced publications (the sequencer, in `seq` order, once per request);
    /// `now_ms` is the wall clock of their `timestamp`.
    pub fn append(&self, ps: &[Arc<Publication>], now_ms: u64) {
        let mut a = self.appender(now_ms);
        for p in ps {
            a.push(p);
        }
    }

    /// Holds the window for a request's publications (the sequencer, under its lock):
    /// each is appended with [`Appender::push`] before it goes to the shards; the window
    /// is trimmed and its gauges set once, when the appender is dropped.
    pub fn appender(&self, now_ms: u64) -> Appender<'_> {
        Appender {
            w: self.lock(),
            h: self,
            now_ms,
        }
    }

    fn expire(w: &mut Window, now_ms: u64, ttl_ms: u64) {
        while let Some((at, _)) = w.entries.front() {
            if now_ms.saturating_sub(*at) <= ttl_ms {
                break;
            }
            if let Some((_, old)) = w.entries.pop_front() {
                w.bytes -= cost(&old);
            }
        }
    }

    /// Calls `f` for every retained publication with `since < seq <= upto`, in order.
    /// Returns whether the window reached back that far: every publication after `since`
    /// up to `upto` was still retained (`recovered`).
    pub fn replay(
        &self,
        since: u64,
        upto: u64,
        now_ms: u64,
        f: &mut dyn FnMut(&Arc<Publication>),
    ) -> bool {
        let mut w = self.lock();
        Self::expire(&mut w, now_ms, self.ttl_ms);
        metrics::history_size(w.entries.len(), w.bytes);
        if since >= upto {
            return true;
        }
        // The oldest seq still held, or (empty window) the one after the newest.
        let oldest = w.entries.front().map_or(w.newest + 1, |(_, p)| p.seq);
        let recovered = since + 1 >= oldest;
        // Seqs in the window are contiguous, so the first wanted one is found by offset.
        let skip = (since + 1).saturating_sub(oldest) as usize;
        for (_, p) in w.entries.iter().skip(skip) {
            if p.seq > upto {
                break;
            }
            f(p);
        }
        recovered
    }

    /// Forgets every retained publication: the window starts again after `newest` (a
    /// cluster node past a gap in the sequence; a `since` from before answers
    /// `recovered: false`).
    pub fn reset(&self, newest: u64) {
        let mut w = self.lock();
        w.entries.clear();
        w.bytes = 0;
        w.newest = newest;
        metrics::history_size(0, 0);
    }

    /// Publications held and their counted bytes.
    pub fn stats(&self) -> (usize, usize) {
        let w = self.lock();
        (w.entries.len(), w.bytes)
    }
}

/// See [`History::appender`].
pub struct Appender<'a> {
    w: MutexGuard<'a, Window>,
    h: &'a History,
    now_ms: u64,
}

impl Appender<'_> {
    pub fn push(&mut self, p: &Arc<Publication>) {
        self.w.newest = p.seq;
        if self.h.size > 0 {
            self.w.bytes += cost(p);
            self.w.entries.push_back((self.now_ms, p.clone()));
        }
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        if self.h.size == 0 {
            return;
        }
        let w = &mut *self.w;
        while w.entries.len() > self.h.size {
            if let Some((_, old)) = w.entries.pop_front() {
                w.bytes -= cost(&old);
            }
        }
        History::expire(w, self.now_ms, self.h.ttl_ms);
        metrics::history_size(w.entries.len(), w.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(seq: u64) -> Arc<Publication> {
        Arc::new(Publication::new(seq, "a/b", "e", "{\"i\":1}", 0))
    }

    fn seqs(h: &History, since: u64, upto: u64, now: u64) -> (Vec<u64>, bool) {
        let mut out = Vec::new();
        let r = h.replay(since, upto, now, &mut |p| out.push(p.seq));
        (out, r)
    }

    #[test]
    fn bounded_by_size_and_honest_about_reach() {
        let h = History::new(3, 1000, 0);
        for s in 1..=5 {
            h.append(&[publication(s)], 0);
        }
        assert_eq!(seqs(&h, 2, 5, 0), (vec![3, 4, 5], true));
        assert_eq!(seqs(&h, 1, 5, 0), (vec![3, 4, 5], false));
        assert_eq!(seqs(&h, 4, 4, 0), (vec![], true));
        // `upto` bounds what is replayed: later ones come live.
        assert_eq!(seqs(&h, 2, 4, 0), (vec![3, 4], true));
        assert_eq!(h.stats().0, 3);
    }

    #[test]
    fn expires_by_age() {
        let h = History::new(100, 1000, 0);
        h.append(&[publication(1)], 0);
        h.append(&[publication(2)], 500);
        assert_eq!(seqs(&h, 0, 2, 1200), (vec![2], false));
        assert_eq!(seqs(&h, 1, 2, 1200), (vec![2], true));
        // Everything expired: a client that saw the newest is still recovered.
        assert_eq!(seqs(&h, 2, 2, 5000), (vec![], true));
        assert_eq!(seqs(&h, 1, 2, 5000), (vec![], false));
        assert_eq!(h.stats(), (0, 0));
    }

    #[test]
    fn starts_after_a_restart_mark() {
        // After a restart the window is empty and `seq` resumes past the mark: a `since`
        // from before the restart is not recovered.
        let h = History::new(10, 1000, 100);
        h.append(&[publication(101)], 0);
        assert_eq!(seqs(&h, 100, 101, 0), (vec![101], true));
        assert_eq!(seqs(&h, 50, 101, 0), (vec![101], false));
    }
}
