//! The query of `GET /api/v1/services/{group}/dead-letters`:
//! `api::parse_dead_letters_query` (limit, cursor).
//! Invariants: `shardcast_fuzz::services_query` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::services_query(data));
