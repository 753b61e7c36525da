//! The node's configuration: one typed [`Config`] built from the TOML file of PROTOCOL.md
//! section 13, overridden by `SHARDCAST_*` environment variables, then validated.
//!
//! Owned by start-up: `main` builds it once with [`Config::load`] and hands clones or parts
//! to the router, shards and REST handlers, which treat it as read-only. Loading does no I/O
//! beyond reading the one file it is given; the environment is passed in, so tests never
//! touch the process environment. Guarantee: a `Config` returned by [`Config::load`] or
//! [`Config::from_toml_str`] has passed [`Config::validate`], and every refusal (unknown
//! key, mistyped value, out-of-range value) is an error whose message names the key as
//! `section.key` and where it came from (the file, or the environment variable).
//!
//! The work is split by concern, each submodule depending only on those before it here:
//! `error` ([`ConfigError`], [`Origin`]), `sections` (the typed [`Config`] and its
//! defaults), `keys` (the key table and the checks against it), `validate`
//! ([`Config::validate`]), `load` (file and environment into a `Config`) and `reference`
//! (what is generated from the key table: `shardcast config`'s annotated file, the
//! environment variables' names and warnings; docs/CONFIG.md is checked against it). This
//! module is the public surface: callers name everything as `crate::config::X`.

mod error;
mod keys;
mod load;
mod reference;
mod sections;
#[cfg(test)]
mod testkit;
mod validate;

pub use error::{ConfigError, Origin};
pub(crate) use keys::edit_distance;
pub use load::process_env;
pub use reference::{default_toml, env_name, unknown_env_warning};
pub use sections::{
    AuthConfig, ChannelsConfig, ClusterConfig, Compression, Config, ConsoleConfig, DeliveryConfig,
    Framing, HistoryConfig, Io, LimitsConfig, LiveQueryConfig, LogFormat, ServicesConfig,
    TestingConfig, SHIPPED_API_KEY, SHIPPED_JWT_SECRET,
};
