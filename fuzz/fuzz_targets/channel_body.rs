//! Channels REST (`/api/v1/realtime-subscriptions`): `api::parse_channel_create` for the
//! organisation, user and custom kinds, and `api::parse_channel_list`. First byte: which.
//! Invariants: `shardcast_fuzz::channel_body` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::channel_body(data));
