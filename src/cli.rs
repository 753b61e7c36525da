//! The command line of PROTOCOL.md section 13: `shardcast serve [--config FILE]`,
//! `shardcast token ...`, `help` and `--version`, parsed by hand into a [`Command`].
//!
//! Used only by `main`. Parsing is pure (arguments in, `Command` or [`CliError`] out; the
//! caller prints and exits), so every accepted and refused form is unit-tested here.
//! Guarantees: no argument is silently dropped (an unknown flag, a stray argument or a
//! repeated single-valued flag is an error naming it), and plain `shardcast` with no
//! arguments means `serve` on the built-in defaults.

use crate::auth::jwt::{sign, Role};
use crate::config::edit_distance;
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// What the process was asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run a node; `config: None` runs on the defaults (still overridable by environment).
    Serve { config: Option<PathBuf> },
    /// Print a signed token.
    Token(TokenArgs),
    /// Print [`usage`] and exit 0.
    Help,
    /// Print [`version`] and exit 0.
    Version,
}

/// `shardcast token` arguments, checked: `secret`, `sub`, every scope and the group are
/// non-empty, `ttl_secs >= 1`.
#[derive(Clone, PartialEq)]
pub struct TokenArgs {
    pub secret: String,
    pub sub: String,
    /// Default: user.
    pub role: Role,
    /// `--scope`, in order given; empty: the role's default (see PROTOCOL.md section 1).
    pub scopes: Vec<String>,
    pub group: Option<String>,
    /// Default: 3600.
    pub ttl_secs: u64,
}

// The secret stays out of debug output, which may end up in logs.
impl fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenArgs")
            .field("secret", &"<redacted>")
            .field("sub", &self.sub)
            .field("role", &self.role)
            .field("scopes", &self.scopes)
            .field("group", &self.group)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl TokenArgs {
    /// A token valid from `now_unix_secs` for `ttl_secs`, with claims `sub`, `exp`, `role`,
    /// and `scopes` / `group` only when given.
    pub fn token(&self, now_unix_secs: u64) -> String {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from(self.sub.as_str()));
        claims.insert(
            "exp".into(),
            Value::from(now_unix_secs.saturating_add(self.ttl_secs)),
        );
        claims.insert("role".into(), Value::from(self.role.as_str()));
        if !self.scopes.is_empty() {
            claims.insert("scopes".into(), Value::from(self.scopes.clone()));
        }
        if let Some(group) = &self.group {
            claims.insert("group".into(), Value::from(group.as_str()));
        }
        sign(self.secret.as_bytes(), &Value::Object(claims))
    }
}

/// Why the arguments were refused; the message names the offending argument.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CliError {
    #[error("unknown command `{command}`{} (try `shardcast --help`)", did_you_mean(.suggestion))]
    UnknownCommand {
        command: String,
        suggestion: Option<&'static str>,
    },
    #[error("unknown flag `{flag}` for `shardcast {command}`{} (try `shardcast --help`)", did_you_mean(.suggestion))]
    UnknownFlag {
        command: &'static str,
        flag: String,
        suggestion: Option<&'static str>,
    },
    #[error("missing value for `{flag}`")]
    MissingValue { flag: &'static str },
    #[error("missing required `{flag}` for `shardcast {command}`")]
    MissingRequired {
        command: &'static str,
        flag: &'static str,
    },
    #[error("bad `{flag} {value}`: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unknown role `{0}` for `--role` (expected user, service or admin)")]
    UnknownRole(String),
    #[error("`{flag}` given more than once")]
    Repeated { flag: &'static str },
    #[error("unexpected argument `{0}`")]
    UnexpectedArgument(String),
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// The help text.
pub fn usage() -> &'static str {
    "\
shardcast: a real-time WebSocket push server

Usage:
  shardcast [serve] [--config FILE]
  shardcast token --secret S --sub ID [--role R] [--scope P]... [--group G] [--ttl SECONDS]
  shardcast help | --help | -h
  shardcast --version | -V

serve (the default command)
  --config FILE     TOML configuration; without it the built-in defaults are used
                    (listen 127.0.0.1:8080, data in ./data, single node).
  Any key can be overridden by an environment variable: SHARDCAST_<SECTION>__<KEY>
  (e.g. SHARDCAST_DELIVERY__BATCH_MS=0) or SHARDCAST_<KEY> for top-level keys
  (e.g. SHARDCAST_LISTEN=0.0.0.0:8080).

token: print a signed HS256 token for trying things out
  --secret S        the server's auth.jwt_secret (required)
  --sub ID          user or service instance id (required)
  --role R          user (default), service or admin
  --scope P         a path prefix the holder may subscribe to; repeatable; \"*\" means all
  --group G         service group (default: the sub)
  --ttl SECONDS     lifetime, default 3600

Flags take their value as the next argument or after '=' (--config=FILE).
"
}

/// `shardcast <version>`, for `--version`.
pub fn version() -> &'static str {
    concat!("shardcast ", env!("CARGO_PKG_VERSION"))
}

const COMMANDS: &[&str] = &["serve", "token", "help", "version"];
const SERVE_FLAGS: &[&str] = &["--config", "--help", "--version"];
const TOKEN_FLAGS: &[&str] = &[
    "--secret", "--sub", "--role", "--scope", "--group", "--ttl", "--help",
];

/// Parses the arguments after `argv[0]`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut args = Args::new(args);
    let Some(first) = args.peek() else {
        return Ok(Command::Serve { config: None });
    };
    match first {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "version" | "--version" | "-V" => Ok(Command::Version),
        "serve" => {
            args.skip();
            parse_serve(args)
        }
        "token" => {
            args.skip();
            parse_token(args)
        }
        // `shardcast --config f.toml`: flags without a command are serve's.
        flag if flag.starts_with('-') => parse_serve(args),
        command => Err(CliError::UnknownCommand {
            command: command.to_string(),
            suggestion: closest(command, COMMANDS),
        }),
    }
}

fn parse_serve(mut args: Args) -> Result<Command, CliError> {
    let mut config = None;
    while let Some(item) = args.next_item() {
        match item {
            Item::Flag { name, inline } => match name.as_str() {
                "--help" | "-h" if inline.is_none() => return Ok(Command::Help),
                "--version" | "-V" if inline.is_none() => return Ok(Command::Version),
                "--config" => {
                    let value = args.value("--config", inline)?;
                    non_empty("--config", &value)?;
                    set_once(&mut config, "--config", PathBuf::from(value))?;
                }
                _ => return Err(unknown_flag("serve", name, SERVE_FLAGS)),
            },
            Item::Positional(arg) => return Err(CliError::UnexpectedArgument(arg)),
        }
    }
    Ok(Command::Serve { config })
}

fn parse_token(mut args: Args) -> Result<Command, CliError> {
    let mut secret = None;
    let mut sub = None;
    let mut role = None;
    let mut scopes = Vec::new();
    let mut group = None;
    let mut ttl = None;
    while let Some(item) = args.next_item() {
        let (name, inline) = match item {
            Item::Flag { name, inline } => (name, inline),
            Item::Positional(arg) => return Err(CliError::UnexpectedArgument(arg)),
        };
        match name.as_str() {
            "--help" | "-h" if inline.is_none() => return Ok(Command::Help),
            "--secret" => {
                let v = args.value("--secret", inline)?;
                non_empty("--secret", &v)?;
                set_once(&mut secret, "--secret", v)?;
            }
            "--sub" => {
                let v = args.value("--sub", inline)?;
                non_empty("--sub", &v)?;
                set_once(&mut sub, "--sub", v)?;
            }
            "--role" => {
                let v = args.value("--role", inline)?;
                let parsed = Role::from_claim(&v).ok_or(CliError::UnknownRole(v))?;
                set_once(&mut role, "--role", parsed)?;
            }
            "--scope" => {
                let v = args.value("--scope", inline)?;
                non_empty("--scope", &v)?;
                scopes.push(v);
            }
            "--group" => {
                let v = args.value("--group", inline)?;
                non_empty("--group", &v)?;
                set_once(&mut group, "--group", v)?;
            }
            "--ttl" => {
                let v = args.value("--ttl", inline)?;
                let secs = parse_ttl(&v)?;
                set_once(&mut ttl, "--ttl", secs)?;
            }
            _ => return Err(unknown_flag("token", name, TOKEN_FLAGS)),
        }
    }
    let required = |flag| CliError::MissingRequired {
        command: "token",
        flag,
    };
    Ok(Command::Token(TokenArgs {
        secret: secret.ok_or_else(|| required("--secret"))?,
        sub: sub.ok_or_else(|| required("--sub"))?,
        role: role.unwrap_or(Role::User),
        scopes,
        group,
        ttl_secs: ttl.unwrap_or(3600),
    }))
}

fn parse_ttl(value: &str) -> Result<u64, CliError> {
    let bad = |reason| CliError::BadValue {
        flag: "--ttl",
        value: value.to_string(),
        reason,
    };
    match value.parse::<u64>() {
        Ok(0) => Err(bad("must be at least 1 second")),
        Ok(secs) => Ok(secs),
        Err(_) => Err(bad("expected a whole number of seconds")),
    }
}

fn non_empty(flag: &'static str, value: &str) -> Result<(), CliError> {
    if value.is_empty() {
        Err(CliError::BadValue {
            flag,
            value: "\"\"".to_string(),
            reason: "must not be empty",
        })
    } else {
        Ok(())
    }
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Repeated { flag });
    }
    *slot = Some(value);
    Ok(())
}

fn unknown_flag(command: &'static str, flag: String, known: &[&'static str]) -> CliError {
    let suggestion = closest(&flag, known);
    CliError::UnknownFlag {
        command,
        flag,
        suggestion,
    }
}

/// The known name within edit distance 2 of `given`, if any: most typos are one or two
/// keystrokes.
fn closest(given: &str, known: &[&'static str]) -> Option<&'static str> {
    let given = given.split('=').next().unwrap_or(given);
    known
        .iter()
        .map(|k| (edit_distance(k, given), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

enum Item {
    /// `--name` or `--name=value` (or a short `-x`).
    Flag {
        name: String,
        inline: Option<String>,
    },
    Positional(String),
}

/// The argument list as a cursor, so a flag can take the next argument as its value.
struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn new(args: impl IntoIterator<Item = String>) -> Args {
        Args {
            items: args.into_iter().collect(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<&str> {
        self.items.get(self.pos).map(String::as_str)
    }

    fn skip(&mut self) {
        self.pos += 1;
    }

    fn next_item(&mut self) -> Option<Item> {
        let arg = self.items.get(self.pos)?.clone();
        self.pos += 1;
        if arg.len() > 1 && arg.starts_with('-') && arg != "--" {
            Some(match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => Item::Flag {
                    name: name.to_string(),
                    inline: Some(value.to_string()),
                },
                _ => Item::Flag {
                    name: arg,
                    inline: None,
                },
            })
        } else {
            Some(Item::Positional(arg))
        }
    }

    /// The flag's value: after `=`, or the next argument unless that is itself a `--flag`
    /// (then the value was forgotten, and taking the flag as a value would hide that).
    fn value(&mut self, flag: &'static str, inline: Option<String>) -> Result<String, CliError> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.items.get(self.pos) {
            Some(next) if !next.starts_with("--") => {
                let v = next.clone();
                self.pos += 1;
                Ok(v)
            }
            _ => Err(CliError::MissingValue { flag }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{verify, Scopes};

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn token_args(args: &[&str]) -> TokenArgs {
        match p(args) {
            Ok(Command::Token(t)) => t,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn no_arguments_serve_defaults() {
        assert_eq!(p(&[]), Ok(Command::Serve { config: None }));
        assert_eq!(p(&["serve"]), Ok(Command::Serve { config: None }));
    }

    #[test]
    fn serve_with_config_both_forms() {
        let want = Ok(Command::Serve {
            config: Some(PathBuf::from("/etc/shardcast.toml")),
        });
        assert_eq!(p(&["serve", "--config", "/etc/shardcast.toml"]), want);
        assert_eq!(p(&["serve", "--config=/etc/shardcast.toml"]), want);
        assert_eq!(p(&["--config", "/etc/shardcast.toml"]), want);
        // Only the first '=' splits.
        assert_eq!(
            p(&["serve", "--config=a=b.toml"]),
            Ok(Command::Serve {
                config: Some(PathBuf::from("a=b.toml"))
            })
        );
    }

    #[test]
    fn serve_errors() {
        let e = p(&["serve", "--confg", "x"]).unwrap_err();
        assert_eq!(
            e,
            CliError::UnknownFlag {
                command: "serve",
                flag: "--confg".into(),
                suggestion: Some("--config"),
            }
        );
        assert!(e.to_string().contains("unknown flag `--confg`"), "{e}");
        assert!(e.to_string().contains("did you mean `--config`"), "{e}");
        assert_eq!(
            p(&["serve", "--config"]),
            Err(CliError::MissingValue { flag: "--config" })
        );
        assert_eq!(
            p(&["serve", "--config", "--help"]),
            Err(CliError::MissingValue { flag: "--config" })
        );
        assert_eq!(
            p(&["serve", "--config", "a", "--config", "b"]),
            Err(CliError::Repeated { flag: "--config" })
        );
        assert_eq!(
            p(&["serve", "extra"]),
            Err(CliError::UnexpectedArgument("extra".into()))
        );
        assert!(matches!(
            p(&["serve", "--config="]),
            Err(CliError::BadValue {
                flag: "--config",
                ..
            })
        ));
    }

    #[test]
    fn help_and_version() {
        for args in [
            &["help"][..],
            &["--help"],
            &["-h"],
            &["serve", "--help"],
            &["token", "--help"],
        ] {
            assert_eq!(p(args), Ok(Command::Help), "{args:?}");
        }
        for args in [
            &["--version"][..],
            &["-V"],
            &["version"],
            &["serve", "--version"],
        ] {
            assert_eq!(p(args), Ok(Command::Version), "{args:?}");
        }
        assert!(usage().contains("shardcast token --secret S --sub ID"));
        assert!(version().starts_with("shardcast "));
    }

    #[test]
    fn unknown_command() {
        let e = p(&["serv"]).unwrap_err();
        assert_eq!(
            e,
            CliError::UnknownCommand {
                command: "serv".into(),
                suggestion: Some("serve"),
            }
        );
        assert!(e.to_string().starts_with("unknown command `serv`"), "{e}");
        assert!(matches!(
            p(&["frobnicate"]),
            Err(CliError::UnknownCommand {
                suggestion: None,
                ..
            })
        ));
    }

    #[test]
    fn token_full() {
        let t = token_args(&[
            "token",
            "--secret",
            "s3",
            "--sub",
            "svc-1",
            "--role",
            "service",
            "--scope",
            "jobs",
            "--scope=accounts",
            "--group",
            "billing",
            "--ttl",
            "60",
        ]);
        assert_eq!(t.secret, "s3");
        assert_eq!(t.sub, "svc-1");
        assert_eq!(t.role, Role::Service);
        assert_eq!(t.scopes, vec!["jobs".to_string(), "accounts".to_string()]);
        assert_eq!(t.group.as_deref(), Some("billing"));
        assert_eq!(t.ttl_secs, 60);
        assert!(!format!("{t:?}").contains("s3"));
    }

    #[test]
    fn token_defaults() {
        let t = token_args(&["token", "--secret=s", "--sub=u1"]);
        assert_eq!(t.role, Role::User);
        assert!(t.scopes.is_empty());
        assert_eq!(t.group, None);
        assert_eq!(t.ttl_secs, 3600);
    }

    #[test]
    fn token_errors() {
        assert_eq!(
            p(&["token", "--sub", "u"]),
            Err(CliError::MissingRequired {
                command: "token",
                flag: "--secret"
            })
        );
        let e = p(&["token", "--secret", "s"]).unwrap_err();
        assert_eq!(
            e,
            CliError::MissingRequired {
                command: "token",
                flag: "--sub"
            }
        );
        assert_eq!(
            e.to_string(),
            "missing required `--sub` for `shardcast token`"
        );
        let e = p(&["token", "--secret"]).unwrap_err();
        assert_eq!(e, CliError::MissingValue { flag: "--secret" });
        assert_eq!(e.to_string(), "missing value for `--secret`");
        assert_eq!(
            p(&["token", "--secret", "--sub", "u"]),
            Err(CliError::MissingValue { flag: "--secret" })
        );
        let e = p(&["token", "--secret", "s", "--sub", "u", "--ttl", "abc"]).unwrap_err();
        assert!(matches!(&e, CliError::BadValue { flag: "--ttl", value, .. } if value == "abc"));
        assert!(e.to_string().starts_with("bad `--ttl abc`"), "{e}");
        assert!(matches!(
            p(&["token", "--secret", "s", "--sub", "u", "--ttl", "0"]),
            Err(CliError::BadValue { flag: "--ttl", .. })
        ));
        assert!(matches!(
            p(&["token", "--secret", "s", "--sub", "u", "--ttl", "-5"]),
            Err(CliError::BadValue { flag: "--ttl", .. })
        ));
        let e = p(&["token", "--secret", "s", "--sub", "u", "--role", "root"]).unwrap_err();
        assert_eq!(e, CliError::UnknownRole("root".into()));
        assert!(e.to_string().contains("unknown role `root`"), "{e}");
        assert!(matches!(
            p(&["token", "--secret", "s", "--sub", "u", "--rol", "admin"]),
            Err(CliError::UnknownFlag {
                suggestion: Some("--role"),
                ..
            })
        ));
        assert!(matches!(
            p(&["token", "--config", "x"]),
            Err(CliError::UnknownFlag {
                command: "token",
                ..
            })
        ));
        assert_eq!(
            p(&["token", "--secret", "s", "--sub", "a", "--sub", "b"]),
            Err(CliError::Repeated { flag: "--sub" })
        );
        assert_eq!(
            p(&["token", "--secret", "s", "--sub", "u", "stray"]),
            Err(CliError::UnexpectedArgument("stray".into()))
        );
        assert!(matches!(
            p(&["token", "--secret=", "--sub", "u"]),
            Err(CliError::BadValue {
                flag: "--secret",
                ..
            })
        ));
    }

    #[test]
    fn token_output_verifies() {
        let t = token_args(&[
            "token", "--secret", "s3cret", "--sub", "svc-1", "--role", "service", "--scope",
            "jobs", "--group", "billing", "--ttl", "60",
        ]);
        let now = 1_774_512_862;
        let claims = verify(b"s3cret", &t.token(now), now).unwrap();
        assert_eq!(claims.sub, "svc-1");
        assert_eq!(claims.exp, now + 60);
        assert_eq!(claims.role, Role::Service);
        assert_eq!(claims.scopes, Scopes::Prefixes(vec!["jobs".into()]));
        assert_eq!(claims.group(), "billing");
        // Still valid one second before the end, expired at it.
        assert!(verify(b"s3cret", &t.token(now), now + 59).is_ok());
        assert!(verify(b"s3cret", &t.token(now), now + 60).is_err());
    }

    #[test]
    fn token_without_scopes_gets_role_defaults() {
        let now = 1_000;
        let user = token_args(&["token", "--secret", "k", "--sub", "u"]);
        let c = verify(b"k", &user.token(now), now).unwrap();
        assert_eq!(c.scopes, Scopes::Prefixes(vec![]));
        assert_eq!(c.group, None);
        let admin = token_args(&["token", "--secret", "k", "--sub", "a", "--role", "admin"]);
        let c = verify(b"k", &admin.token(now), now).unwrap();
        assert_eq!(c.scopes, Scopes::All);
        let star = token_args(&["token", "--secret", "k", "--sub", "u", "--scope", "*"]);
        assert_eq!(
            verify(b"k", &star.token(now), now).unwrap().scopes,
            Scopes::All
        );
    }
}
