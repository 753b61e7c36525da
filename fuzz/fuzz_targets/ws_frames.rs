//! Client bytes after the upgrade: frame headers in a loop, unmasking, close payloads,
//! UTF-8 of text messages across fragments (and whole text messages as commands).
//! Invariants: `shardcast_fuzz::ws_frames` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardcast_fuzz::ws_frames(data);
});
