//! An entity list's query string: `api::parse_entity_list` (filter, orderBy, limit, and
//! the signed cursor).
//! Invariants: `shardcast_fuzz::entity_list_query` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::entity_list_query(data));
