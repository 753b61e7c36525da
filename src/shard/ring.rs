//! The per-connection ring: a bounded queue of messages waiting for the next flush, with
//! oldest-drop overflow (PROTOCOL.md §6).
//!
//! Owned by one connection on one shard. Items are pointers to frames shared by every
//! connection that got the same bytes; each frame carries the shard time it arrived at
//! (all connections get a publication's frame at the same instant), so an item is one
//! pointer and the flush deadline is still exactly "`batchMs` after the oldest waiting
//! one arrived". Storage is allocated on the first push, so an idle connection holds
//! none.

use std::collections::VecDeque;

/// A bounded FIFO that drops its oldest item when full.
#[derive(Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

/// Up to this many slots an emptied ring keeps its storage: a connection that gets a
/// steady stream refills its ring every flush, and regrowing it from nothing each time
/// cost 14% of the shard's CPU in the batched fan-out profile (docs/PERFORMANCE.md). A
/// connection that never receives anything never allocates at all.
const KEEP_SLOTS: usize = 256;

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Ring<T> {
        Ring {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `item`; when the ring is full the oldest item is removed and returned so
    /// the caller can count it against its subscriptions.
    #[inline]
    pub fn push(&mut self, item: T) -> Option<T> {
        let dropped = if self.items.len() >= self.capacity {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        dropped
    }

    /// Appends without the capacity check: for the echo endpoint, which applies
    /// back-pressure by not reading instead of dropping.
    pub fn push_unbounded(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// The oldest waiting item.
    pub fn oldest(&self) -> Option<&T> {
        self.items.front()
    }

    /// The first `n` items, oldest first.
    pub fn front(&self, n: usize) -> std::collections::vec_deque::Iter<'_, T> {
        self.items.range(..n.min(self.items.len()))
    }

    /// The newest item.
    pub fn back(&self) -> Option<&T> {
        self.items.back()
    }

    /// Replaces the newest item.
    pub fn replace_back(&mut self, item: T) {
        if let Some(b) = self.items.back_mut() {
            *b = item;
        }
    }

    /// Removes the first `n` items (they were written).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.items.len());
        self.items.drain(..n);
        if self.items.is_empty() && self.items.capacity() > KEEP_SLOTS {
            self.items = VecDeque::new();
        }
    }

    /// Keeps only the items for which `keep` holds, in order.
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
    }

    /// Discards everything (a closing user connection).
    pub fn clear(&mut self) {
        self.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence (xorshift) for the property test.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn drops_oldest_when_full() {
        let mut r = Ring::new(3);
        for i in 0..3 {
            assert_eq!(r.push(i), None);
        }
        assert_eq!(r.push(3), Some(0));
        assert_eq!(r.front(10).copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(r.oldest(), Some(&1));
    }

    /// Property: under any mix of pushes and consumes, the ring never exceeds its
    /// capacity, the number dropped is exactly pushed − consumed − held, and what it
    /// holds is the newest items in arrival order.
    #[test]
    fn property_capacity_drop_count_and_order() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _case in 0..200 {
            let cap = (xorshift(&mut seed) % 50 + 1) as usize;
            let mut r = Ring::new(cap);
            let (mut next, mut dropped, mut consumed) = (0u64, 0u64, 0u64);
            let mut model: VecDeque<u64> = VecDeque::new();
            for _ in 0..500 {
                if xorshift(&mut seed).is_multiple_of(3) {
                    let n = (xorshift(&mut seed) % 8) as usize;
                    let took = n.min(r.len());
                    r.consume(n);
                    consumed += took as u64;
                    for _ in 0..took {
                        model.pop_front();
                    }
                } else {
                    if let Some(d) = r.push(next) {
                        assert_eq!(Some(d), model.pop_front(), "dropped the oldest");
                        dropped += 1;
                    }
                    model.push_back(next);
                    next += 1;
                }
                assert!(r.len() <= cap);
                assert_eq!(dropped, next - consumed - r.len() as u64);
                assert!(r.front(usize::MAX).copied().eq(model.iter().copied()));
            }
        }
    }

    #[test]
    fn emptied_ring_gives_storage_back() {
        let mut r = Ring::new(10_000);
        for i in 0..1000 {
            r.push(i);
        }
        r.consume(1000);
        assert!(r.is_empty());
        assert_eq!(r.items.capacity(), 0);
        // A small ring keeps its storage for the next burst.
        for i in 0..100 {
            r.push(i);
        }
        r.consume(100);
        assert!(r.items.capacity() >= 100);
    }
}
