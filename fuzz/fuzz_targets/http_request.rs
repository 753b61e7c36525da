//! Bytes on a fresh connection: `http::parse`, whole and split across reads.
//! Invariants: `shardcast_fuzz::http_request` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::http_request(data));
