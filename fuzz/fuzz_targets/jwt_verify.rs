//! Tokens: `auth::jwt::verify` on raw text, and on fuzzed header/payload JSON signed
//! correctly (so the claim checks are reached).
//! Invariants: `shardcast_fuzz::jwt_verify` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::jwt_verify(data));
