//! Filter and orderBy text: `filter::Filter::parse`, `filter::OrderBy::parse`.
//! Invariants: `shardcast_fuzz::filter` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::filter(data));
