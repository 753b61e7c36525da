//! The config file and `SHARDCAST_*` variables: `Config::from_toml_str`.
//! Invariants: `shardcast_fuzz::config_toml` (fuzz/src/lib.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| shardcast_fuzz::config_toml(data));
