//! The filter evaluator and the orderBy comparison allocate nothing per call (the entities
//! issue: they run on the fan-out path): a counting global allocator, in a test binary of
//! its own so it replaces no other test's allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use shardcast::filter::{Filter, OrderBy};

/// Counts every allocation of this process.
struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn matches_and_compare_do_not_allocate() {
    let mut big = serde_json::Map::new();
    for i in 0..20 {
        big.insert(format!("k{i}"), json!(i));
    }
    let values = [
        json!({"a": "x", "b": 5, "c": {"d": [1, 2]}, "s": "é", "id": "1"}),
        serde_json::Value::Object(big),
        json!(null),
    ];
    let filters: Vec<Filter> = [
        "a == 'x' && b > 3",
        "a in ['q', 'x', 1, null] || !(c.d == 1) && s >= 'a'",
        "k17 == 17 && k3 && !missing.x",
        "c.d != null || b <= -1e3 || a < \"y\"",
    ]
    .iter()
    .map(|s| Filter::parse(s).unwrap())
    .collect();
    let order = OrderBy::parse("b desc, a, c.d").unwrap();
    let before = ALLOCS.load(Ordering::SeqCst);
    let mut n = 0;
    for f in &filters {
        for v in &values {
            n += usize::from(f.matches(v));
            for w in &values {
                n += usize::from(order.compare(v, w).is_lt());
            }
        }
    }
    assert_eq!(ALLOCS.load(Ordering::SeqCst), before, "allocated ({n})");
}
