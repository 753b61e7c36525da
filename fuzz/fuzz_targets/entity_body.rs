//! A PUT or PATCH body of `/api/v1/entities/{collection}/{id}`: `api::parse_entity_body`.
//! First byte: the PATCH bit and the path's id; the rest is the body.
//! Invariants: `shardcast_fuzz::entity_body` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::entity_body(data));
