//! A `POST /api/v1/publish` body: `api::parse_publish` with several batch limits.
//! Invariants: `shardcast_fuzz::publish_body` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::publish_body(data));
