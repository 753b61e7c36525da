//! One WebSocket text message: `protocol::parse_command` (and `validate_path`).
//! Invariants: `shardcast_fuzz::client_command` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::client_command(data));
