//! Loading: the file (or text) parsed as TOML, checked against the key table, overridden
//! by `SHARDCAST_*` environment variables, deserialized into [`Config`] and validated
//! ([`Config::load`], [`Config::from_toml_str`]); [`process_env`] reads the environment
//! without panicking on non-UTF-8 entries.

use serde::Deserialize;
use std::path::Path;
use toml::{Table, Value};

use super::error::{ConfigError, Origin};
use super::keys::{
    check_table, check_value, find_key, full_name, suggest_key, suggest_section, Kind, SECTIONS,
};
use super::sections::Config;

/// Prefix of every environment variable that may override a key.
const ENV_PREFIX: &str = "SHARDCAST_";

/// Parses one environment value as a TOML value (`0`, `true`, `["a","b"]`, `"quoted"`).
fn parse_toml_value(raw: &str) -> Option<Value> {
    Value::deserialize(toml::de::ValueDeserializer::new(raw)).ok()
}

/// The value an environment variable sets for a key of this kind.
///
/// String-valued keys take the text verbatim unless it is a quoted TOML string, so
/// `SHARDCAST_AUTH__JWT_SECRET=12345` is the secret "12345", not a type error. A list key
/// takes a TOML array, or else the whole text as a one-element list (an empty text is the
/// empty list). Numbers are parsed as TOML; anything unparsable becomes a string, which
/// the kind check then refuses with the text in the message.
fn env_value(kind: Kind, raw: &str) -> Value {
    let parsed = parse_toml_value(raw);
    let as_string = || match &parsed {
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String(raw.to_string()),
    };
    match kind {
        Kind::Str | Kind::Addr | Kind::OneOf(_) => as_string(),
        Kind::StrList => match &parsed {
            Some(Value::Array(items)) => Value::Array(items.clone()),
            _ if raw.trim().is_empty() => Value::Array(Vec::new()),
            _ => Value::Array(vec![as_string()]),
        },
        Kind::UInt { .. } | Kind::Bool => parsed.unwrap_or_else(|| Value::String(raw.to_string())),
    }
}

/// Applies `SHARDCAST_*` overrides to the parsed file. Returns the ignored names, sorted.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut ignored = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let origin = Origin::Env(name.clone());
        let (section, key) = match rest.split_once("__") {
            Some((section, key)) => (section.to_string(), key.to_string()),
            // Without `__` the variable may belong to another tool sharing the prefix.
            None if find_key("", &rest).is_some() => (String::new(), rest),
            None => {
                ignored.push(name);
                continue;
            }
        };
        if !section.is_empty() && !SECTIONS.contains(&section.as_str()) {
            return Err(ConfigError::UnknownSection {
                suggestion: suggest_section(&section),
                section,
                origin,
            });
        }
        let Some(spec) = find_key(&section, &key) else {
            return Err(ConfigError::UnknownKey {
                key: full_name(&section, &key),
                origin,
                suggestion: suggest_key(&section, &key),
            });
        };
        let value = env_value(spec.kind, &raw);
        check_value(spec, &value, &origin)?;
        if section.is_empty() {
            table.insert(key, value);
        } else {
            let entry = table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()));
            // check_table already refused a non-table section in the file.
            if let Value::Table(section_table) = entry {
                section_table.insert(key, value);
            }
        }
    }
    ignored.sort();
    Ok(ignored)
}

/// File (or text) plus environment into a typed, not yet validated, `Config`.
pub(super) fn merge(
    text: &str,
    origin: &Origin,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        origin: origin.clone(),
        message: one_line(e.message()) + &position(text, e.span()),
    })?;
    check_table(&table, origin)?;
    let ignored_env = apply_env(&mut table, env)?;
    // The walk above has checked every key and type, so serde failing here would be a
    // mismatch between KEYS and the structs; still reported, never a panic.
    let mut config: Config = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.clone(),
            message: e.message().to_string(),
        })?;
    config.ignored_env = ignored_env;
    Ok(config)
}

/// toml's message spans lines; a start-up error should be one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// " at line L, column C" for a parse error's span, since `message()` has no position.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let upto = text.get(..span.start).unwrap_or(text);
    let line = upto.matches('\n').count() + 1;
    let column = upto.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at line {line}, column {column}")
}

impl Config {
    /// Reads `file` (None: the built-in defaults), applies the overrides found in `env`,
    /// and validates. `env` is the process environment: pass [`process_env`]`()?` in
    /// production (`std::env::vars()` panics on a non-UTF-8 variable), a `Vec` in tests.
    /// Variables `SHARDCAST_<NAME>` that are not top-level keys end up in
    /// [`Config::ignored_env`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        match file {
            None => Self::from_toml_at("", &Origin::Text, env),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::from_toml_at(&text, &Origin::File(path.to_path_buf()), env)
            }
        }
    }

    /// As [`Config::load`] for TOML text already in memory.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_at(text, &Origin::Text, env)
    }

    fn from_toml_at(
        text: &str,
        origin: &Origin,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = merge(text, origin, env)?;
        config.validate()?;
        Ok(config)
    }
}

/// The process environment for [`Config::load`], without `std::env::vars()`'s panic on
/// non-UTF-8 entries: those are skipped unless they carry the `SHARDCAST_` prefix, in which
/// case they are an error (silently altering, say, a secret would be worse).
pub fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            (Ok(name), Err(_)) if name.starts_with(ENV_PREFIX) => {
                return Err(ConfigError::NonUnicodeEnv { name })
            }
            (Err(name), _) if name.to_string_lossy().starts_with(ENV_PREFIX) => {
                return Err(ConfigError::NonUnicodeEnv {
                    name: name.to_string_lossy().into_owned(),
                })
            }
            _ => {}
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testkit::*;
    use crate::config::{Framing, LogFormat};
    use std::net::SocketAddr;
    use std::path::PathBuf;

    #[test]
    fn file_values_and_partial_sections() {
        let c = Config::from_toml_str(
            "listen = \"0.0.0.0:9000\"\nlog_format = \"json\"\n[delivery]\nbatch_ms = 0\n\
             [auth]\njwt_secret = \"s\"\napi_keys = [\"k\"]\n",
            no_env(),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.delivery.batch_ms, 0);
        // Keys not written keep their defaults, even in a section that is present.
        assert_eq!(c.delivery.batch_max, 1_000);
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let path = Path::new("/nonexistent/shardcast/config.toml");
        let err = Config::load(Some(path), no_env()).unwrap_err();
        assert!(matches!(&err, ConfigError::Read { path: p, .. } if p == path));
        assert!(err
            .to_string()
            .contains("/nonexistent/shardcast/config.toml"));
    }

    #[test]
    fn syntax_error_reports_position() {
        let err = load_err("listen = \n[delivery", &[]);
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("at line 1, column 10"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::from_toml_str(
            "[delivery]\nbatch_ms = 100\n",
            env(&[
                ("SHARDCAST_DELIVERY__BATCH_MS", "0"),
                ("SHARDCAST_LISTEN", "127.0.0.1:9000"),
                ("SHARDCAST_DATA_DIR", "/var/lib/shardcast"),
                ("SHARDCAST_LOG_FORMAT", "json"),
                ("SHARDCAST_AUTH__API_KEYS", "[\"a\", \"b\"]"),
                ("SHARDCAST_AUTH__JWT_SECRET", "12345"),
                ("SHARDCAST_TESTING__ECHO_PATH", "\"/echo\""),
                ("SHARDCAST_DELIVERY__FRAMING", "array"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.delivery.batch_ms, 0);
        assert_eq!(c.listen, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/shardcast"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.auth.api_keys, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c.auth.jwt_secret, "12345");
        assert_eq!(c.testing.echo_path, "/echo");
        assert_eq!(c.delivery.framing, Framing::Array);
        assert!(c.ignored_env.is_empty());
    }

    #[test]
    fn env_list_forms() {
        let c = Config::from_toml_str("", env(&[("SHARDCAST_AUTH__API_KEYS", "solo")])).unwrap();
        assert_eq!(c.auth.api_keys, vec!["solo".to_string()]);
        let c = Config::from_toml_str("", env(&[("SHARDCAST_AUTH__API_KEYS", "")])).unwrap();
        assert!(c.auth.api_keys.is_empty());
        let err = load_err("", &[("SHARDCAST_AUTH__API_KEYS", "[1]")]);
        assert!(matches!(&err, ConfigError::InvalidValue { key, .. } if key == "auth.api_keys"));
    }

    #[test]
    fn env_bad_value_names_key_and_variable() {
        let err = load_err("", &[("SHARDCAST_DELIVERY__BATCH_MS", "x")]);
        assert_eq!(
            err.to_string(),
            "invalid value for 'delivery.batch_ms': expected an unsigned integer, \
             found string \"x\" (from SHARDCAST_DELIVERY__BATCH_MS)"
        );
        let err = load_err("", &[("SHARDCAST_LIMITS__COMMANDS_PER_SEC", "1.5")]);
        assert!(err.to_string().contains("found float 1.5"), "{err}");
    }

    #[test]
    fn env_unknown_section_or_key_is_an_error() {
        let err = load_err("", &[("SHARDCAST_DELIVERY__BATCH_MSX", "1")]);
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, origin: Origin::Env(n), .. }
                if key == "delivery.batch_msx" && n == "SHARDCAST_DELIVERY__BATCH_MSX"),
            "{err:?}"
        );
        let err = load_err("", &[("SHARDCAST_DELIVERYX__BATCH_MS", "1")]);
        assert!(
            matches!(&err, ConfigError::UnknownSection { section, .. } if section == "deliveryx")
        );
        assert!(
            err.to_string().contains("SHARDCAST_DELIVERYX__BATCH_MS"),
            "{err}"
        );
    }

    #[test]
    fn env_without_double_underscore_that_is_not_a_key_is_ignored() {
        let c = Config::from_toml_str(
            "",
            env(&[
                ("SHARDCAST_LOG", "debug"),
                ("SHARDCAST_BIN", "/usr/bin/shardcast"),
                ("SHARDCAST_SHARDS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.shard_count(), 3);
        assert_eq!(c.ignored_env, vec!["SHARDCAST_BIN", "SHARDCAST_LOG"]);
    }

    #[test]
    fn process_env_reads_without_panicking() {
        let vars = process_env().unwrap();
        assert!(vars.iter().all(|(name, _)| !name.is_empty()));
    }
}
