//! The busiest paths: a Space-Saving sketch (Metwally, Agrawal, El Abbadi 2005) of the
//! paths publications are made on, for the operator console's "busiest paths"
//! (`GET /api/v1/admin/subscriptions`).
//!
//! Owned by the backend that takes publications ([`crate::backend::Backend::publish`]):
//! it notes each publish request's paths, once per request, whichever thread hands the
//! request to the backend (for REST, the shard that read it), before the sequencer's lock
//! and off the fan-out path: no delivery touches it, and `src/shard` does not name it. Memory is bounded: at most [`CAPACITY`]
//! paths are tracked, each at most [`MAX_PATH_BYTES`] long. A note is O(log k): a hash
//! lookup and a sift in a min-heap of the tracked counts (9–17 ns per publication on one
//! hot path, 98–155 ns on all-distinct paths, against ~800 ns for the whole of ingest;
//! docs/PERFORMANCE.md, "Operator console"). Space-Saving's guarantee: every
//! path published more than total/k times is tracked, and a tracked path's true count
//! lies in `[count - error, count]`.

use std::sync::Mutex;

/// Paths tracked at once.
pub const CAPACITY: usize = 64;

/// Longer paths are tracked by their first this many bytes (on a char boundary), so the
/// sketch's memory stays bounded whatever is published.
pub const MAX_PATH_BYTES: usize = 256;

/// One tracked path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathCount {
    pub path: String,
    /// Publications counted (an over-estimate by at most `error`).
    pub count: u64,
    /// How much of `count` may belong to paths this one replaced.
    pub error: u64,
}

/// A tracked path with its hash (computed once per note; the index is keyed by it).
#[derive(Clone, Debug)]
struct Entry {
    hash: u64,
    path: String,
    count: u64,
    error: u64,
}

/// The sketch: a min-heap on `count` plus each path's place in it, keyed by the path's
/// hash so that a sift moves integers, not strings, and a replacement reuses the evicted
/// path's buffer (no allocation once warm). Two paths whose 64-bit hashes collide while
/// both are tracked cannot both be: the later one is then counted in `total` only.
#[derive(Default)]
struct Sketch {
    heap: Vec<Entry>,
    at: hashbrown::HashMap<u64, usize>,
    hasher: hashbrown::DefaultHashBuilder,
    total: u64,
}

impl Sketch {
    fn note(&mut self, path: &str) {
        use std::hash::BuildHasher;
        self.total += 1;
        let hash = self.hasher.hash_one(path);
        if let Some(&i) = self.at.get(&hash) {
            if self.heap[i].path == path {
                self.heap[i].count += 1;
                self.sift_down(i);
            }
            return;
        }
        if self.heap.len() < CAPACITY {
            let i = self.heap.len();
            self.heap.push(Entry {
                hash,
                path: path.to_string(),
                count: 1,
                error: 0,
            });
            self.at.insert(hash, i);
            self.sift_up(i);
            return;
        }
        // Replace the least counted path: the newcomer inherits its count as error.
        let root = &mut self.heap[0];
        self.at.remove(&root.hash);
        root.hash = hash;
        root.path.clear();
        root.path.push_str(path);
        root.error = root.count;
        root.count += 1;
        self.at.insert(hash, 0);
        self.sift_down(0);
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for i in [a, b] {
            if let Some(slot) = self.at.get_mut(&self.heap[i].hash) {
                *slot = i;
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].count <= self.heap[i].count {
                break;
            }
            self.swap(parent, i);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].count < self.heap[least].count {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].count < self.heap[least].count {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

/// See the module docs. Shared by the threads that publish; one short lock per request.
#[derive(Default)]
pub struct BusiestPaths {
    sketch: Mutex<Sketch>,
}

impl BusiestPaths {
    pub fn new() -> BusiestPaths {
        BusiestPaths::default()
    }

    /// Counts one publication on each of `paths` (one request's, already validated).
    pub fn note<'a>(&self, paths: impl IntoIterator<Item = &'a str>) {
        let mut s = self.sketch.lock().unwrap_or_else(|e| e.into_inner());
        for p in paths {
            s.note(clip(p));
        }
    }

    /// The `k` most counted paths, most first (ties by path), and the publications
    /// counted in all.
    pub fn top(&self, k: usize) -> (Vec<PathCount>, u64) {
        let s = self.sketch.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<PathCount> = s
            .heap
            .iter()
            .map(|e| PathCount {
                path: e.path.clone(),
                count: e.count,
                error: e.error,
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        all.truncate(k);
        (all, s.total)
    }
}

fn clip(path: &str) -> &str {
    if path.len() <= MAX_PATH_BYTES {
        return path;
    }
    let mut end = MAX_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_while_under_capacity() {
        let b = BusiestPaths::new();
        b.note(["a", "b", "a", "c", "a", "b"]);
        let (top, total) = b.top(2);
        assert_eq!(total, 6);
        assert_eq!(
            top,
            vec![
                PathCount {
                    path: "a".into(),
                    count: 3,
                    error: 0
                },
                PathCount {
                    path: "b".into(),
                    count: 2,
                    error: 0
                },
            ]
        );
    }

    #[test]
    fn heavy_paths_survive_a_long_tail_in_bounded_memory() {
        let b = BusiestPaths::new();
        // 10,000 distinct one-off paths interleaved with two heavy ones.
        for i in 0..10_000 {
            let tail = format!("tail/{i}");
            b.note([tail.as_str(), "hot/1"]);
            if i % 2 == 0 {
                b.note(["hot/2"]);
            }
        }
        let s = b.sketch.lock().unwrap();
        assert_eq!(s.heap.len(), CAPACITY);
        assert_eq!(s.at.len(), CAPACITY);
        for (i, e) in s.heap.iter().enumerate() {
            assert_eq!(s.at[&e.hash], i, "the index follows the heap");
        }
        drop(s);
        let (top, total) = b.top(2);
        assert_eq!(total, 25_000);
        assert_eq!(top[0].path, "hot/1");
        assert_eq!(top[1].path, "hot/2");
        // The true counts lie within [count - error, count].
        assert!(top[0].count - top[0].error <= 10_000 && 10_000 <= top[0].count);
        assert!(top[1].count - top[1].error <= 5_000 && 5_000 <= top[1].count);
    }

    #[test]
    fn long_paths_are_clipped_on_a_char_boundary() {
        let b = BusiestPaths::new();
        let long = "é".repeat(300);
        b.note([long.as_str()]);
        let (top, _) = b.top(1);
        assert!(top[0].path.len() <= MAX_PATH_BYTES);
        assert!(long.starts_with(&top[0].path));
    }
}
