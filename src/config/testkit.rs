//! Test support shared by the config modules' tests. Compiled for tests only.

use super::{Config, ConfigError};

pub(super) fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn load_err(text: &str, vars: &[(&str, &str)]) -> ConfigError {
    match Config::from_toml_str(text, env(vars)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}
