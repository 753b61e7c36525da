//! Errors of configuration loading: [`ConfigError`], whose every variant about a key names
//! it, and [`Origin`], where a value came from (the file, text, or an environment
//! variable). Leaf of the config module: depends on nothing else in it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

/// Where a value (or a bad key) came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// Text handed to [`Config::from_toml_str`].
    Text,
    /// This environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Text => f.write_str("in the configuration text"),
            Origin::Env(name) => write!(f, "from {name}"),
        }
    }
}

/// Why the configuration was refused. Every variant about a key names it (as
/// `section.key`, or the bare name for top-level keys) and, where known, where the value
/// came from, so an operator can fix it without reading code.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TOML {origin}: {message}")]
    Syntax { origin: Origin, message: String },
    #[error("unknown section '[{section}]' {origin}{}", suggestion_text(.suggestion))]
    UnknownSection {
        section: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    #[error("unknown key '{key}' {origin}{}", key_suggestion_text(.key, .suggestion))]
    UnknownKey {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    /// A value of the wrong type or shape, caught while reading the file or environment.
    #[error("invalid value for '{key}': {reason} ({origin})")]
    InvalidValue {
        key: String,
        reason: String,
        origin: Origin,
    },
    /// A well-typed value that [`Config::validate`] refuses.
    #[error("invalid value for '{key}': {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("environment variable {name} is not valid UTF-8")]
    NonUnicodeEnv { name: String },
    /// A shipped example secret on an address other machines can reach (PROTOCOL.md
    /// section 13): anyone who read the README could mint tokens or publish.
    #[error(
        "refusing to start: 'listen' = {listen} is not a loopback address and '{key}' {what}, \
         the shipped example that anyone can read; {fix}"
    )]
    ShippedSecret {
        key: &'static str,
        listen: SocketAddr,
        what: &'static str,
        fix: &'static str,
    },
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean '{s}'?"),
        None => String::new(),
    }
}

fn key_suggestion_text(key: &str, suggestion: &Option<String>) -> String {
    match suggestion {
        // The usual cause: a top-level key written below a `[section]` header.
        Some(s) if key.contains('.') && !s.contains('.') => format!(
            "; did you mean the top-level '{s}'? (top-level keys must come before the first [section])"
        ),
        _ => suggestion_text(suggestion),
    }
}
