//! The command line: `shardcast serve [--config FILE]` and `shardcast token ...` of
//! PROTOCOL.md section 13, the operator's `sub` and `pub`, `help [COMMAND]` and
//! `--version`, parsed into a [`Command`] with help per command.
//!
//! Used only by `main`. `lexopt` splits the arguments (`--flag value`, `--flag=value`,
//! `--`); what they mean, the help texts and every error message are ours. Parsing is
//! pure (arguments and an environment lookup in, `Command` or [`CliError`] out; the caller
//! prints and exits), so every accepted and refused form is unit-tested here.
//! Guarantees: no argument is silently dropped (an unknown flag, a stray argument or a
//! repeated single-valued flag is an error naming it), plain `shardcast` with no
//! arguments means `serve` on the built-in defaults, `pub`'s DATA is checked as JSON
//! before anything is sent, and a flag wins over its environment variable.

use crate::auth::jwt::{sign, Role};
use crate::config::edit_distance;
use lexopt::Arg;
use serde_json::{Map, Value};
use std::ffi::OsString;
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
    /// Print the annotated default configuration file (`config::default_toml`).
    Config,
    /// Print each event of a subscription as a JSON line until interrupted.
    Sub(SubArgs),
    /// Publish one event over REST and print the answer.
    Pub(PubArgs),
    /// Print [`help`] for the topic and exit 0.
    Help(Topic),
    /// Print [`version`] and exit 0.
    Version,
}

/// Which help text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    General,
    Serve,
    Token,
    Config,
    Sub,
    Pub,
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

/// The default of `sub --url`: `serve`'s default listen address.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8080/ws";
/// The default of `pub --url`.
pub const DEFAULT_HTTP_URL: &str = "http://127.0.0.1:8080";
/// Where `sub` takes its token when `--token` is not given.
pub const TOKEN_ENV: &str = "SHARDCAST_TOKEN";
/// Where `pub` takes its api key when `--api-key` is not given.
pub const API_KEY_ENV: &str = "SHARDCAST_API_KEY";

/// `shardcast sub` arguments.
#[derive(Clone, PartialEq)]
pub struct SubArgs {
    pub path: String,
    pub url: String,
    /// From `--token`, else `SHARDCAST_TOKEN`.
    pub token: String,
    pub filter: Option<String>,
    pub since: Option<u64>,
    /// The connection option `batchMs`: 0 (each event at once) unless `--batch-ms` says
    /// otherwise, since someone watching a terminal wants events as they happen, not after
    /// the server's default flush interval (5 s shipped).
    pub batch_ms: u64,
}

impl fmt::Debug for SubArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubArgs")
            .field("path", &self.path)
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("filter", &self.filter)
            .field("since", &self.since)
            .field("batch_ms", &self.batch_ms)
            .finish()
    }
}

/// `shardcast pub` arguments; `data` is the parsed DATA.
#[derive(Clone, PartialEq)]
pub struct PubArgs {
    pub path: String,
    pub event_type: String,
    pub data: Value,
    pub url: String,
    /// From `--api-key`, else `SHARDCAST_API_KEY`.
    pub api_key: String,
}

impl fmt::Debug for PubArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubArgs")
            .field("path", &self.path)
            .field("event_type", &self.event_type)
            .field("data", &self.data)
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .finish()
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
    #[error("unknown flag `{flag}` for `shardcast {command}`{} (try `shardcast {command} --help`)", did_you_mean(.suggestion))]
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
    #[error("missing `{flag}` for `shardcast {command}` (or set {env})")]
    MissingSecret {
        command: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("missing {name} for `shardcast {command}` (try `shardcast {command} --help`)")]
    MissingArgument {
        command: &'static str,
        name: &'static str,
    },
    #[error("bad `{flag} {value}`: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("bad DATA `{value}`: not JSON ({reason}); quote strings, e.g. '\"text\"'")]
    BadData { value: String, reason: String },
    #[error("unknown role `{0}` for `--role` (expected user, service or admin)")]
    UnknownRole(String),
    #[error("`{flag}` given more than once")]
    Repeated { flag: &'static str },
    #[error("`{flag}` takes no value (got `{value}`)")]
    UnexpectedValue { flag: String, value: String },
    #[error("unexpected argument `{0}`")]
    UnexpectedArgument(String),
    #[error("argument `{0}` is not valid UTF-8")]
    NotUnicode(String),
}

impl CliError {
    /// The help to show with the error: the command's, where the error is about one.
    pub fn topic(&self) -> Topic {
        let command = match self {
            CliError::UnknownFlag { command, .. }
            | CliError::MissingRequired { command, .. }
            | CliError::MissingSecret { command, .. }
            | CliError::MissingArgument { command, .. } => *command,
            CliError::BadData { .. } => "pub",
            _ => "",
        };
        topic_of(command).unwrap_or(Topic::General)
    }
}

/// The help to show with `error` from parsing `args`: the error's own topic, else the
/// command's being parsed (so `token --ttl 0` shows `token`'s flags, not the overview).
pub fn error_topic(args: &[String], error: &CliError) -> Topic {
    match error.topic() {
        Topic::General => args
            .first()
            .and_then(|c| topic_of(c))
            .unwrap_or(Topic::General),
        t => t,
    }
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

fn topic_of(command: &str) -> Option<Topic> {
    Some(match command {
        "serve" => Topic::Serve,
        "token" => Topic::Token,
        "config" => Topic::Config,
        "sub" => Topic::Sub,
        "pub" => Topic::Pub,
        _ => return None,
    })
}

const SERVE_HELP: &str = "\
serve (the default command): run a node
  --config FILE     TOML configuration; without it the built-in defaults are used
                    (listen 127.0.0.1:8080, data in ./data, single node).
  Any key can be overridden by an environment variable: SHARDCAST_<SECTION>__<KEY>
  (e.g. SHARDCAST_DELIVERY__BATCH_MS=0) or SHARDCAST_<KEY> for top-level keys
  (e.g. SHARDCAST_LISTEN=0.0.0.0:8080).
";

const TOKEN_HELP: &str = "\
token: print a signed HS256 token for trying things out
  --secret S        the server's auth.jwt_secret (required)
  --sub ID          user or service instance id (required)
  --role R          user (default), service or admin
  --scope P         a path prefix the holder may subscribe to; repeatable; \"*\" means all
  --group G         service group (default: the sub)
  --ttl SECONDS     lifetime, default 3600
";

const CONFIG_HELP: &str = "\
config: print a configuration file with every key at its default, each under a comment
  saying what it means and which environment variable overrides it (docs/CONFIG.md).
  `shardcast config > shardcast.toml`, edit, then `shardcast serve --config shardcast.toml`.
";

const SUB_HELP: &str = "\
sub PATH: print each event under PATH as one JSON line on stdout until interrupted
  --url WS_URL      the node's WebSocket endpoint (default ws://127.0.0.1:8080/ws)
  --token T         a token whose scopes allow PATH (default: $SHARDCAST_TOKEN)
  --filter F        a filter expression over the event's data, e.g. \"status == 'failed'\"
  --since N         first replay the retained events with seq > N
  --batch-ms MS     the connection's batchMs (default 0: each event as it is published;
                    the server's own default would hold events up to its batch_ms)
  Connection changes, overflow warnings and re-sync notices go to stderr. A lost
  connection is retried (jittered backoff; a draining node's suggested delay), and the
  subscription resumes after the last seq printed. Ctrl-C ends it with exit 0.
";

const PUB_HELP: &str = "\
pub PATH EVENT_TYPE DATA: publish one event (POST /api/v1/publish), print the answer
  DATA              JSON: an object, a number, true, null or a quoted string ('\"text\"')
  --url HTTP_URL    the node's HTTP endpoint (default http://127.0.0.1:8080)
  --api-key K       one of the node's auth.api_keys (default: $SHARDCAST_API_KEY)
  A refused request prints the server's error on stderr and exits 1.
";

/// The general help text.
pub fn usage() -> &'static str {
    "\
shardcast: a real-time WebSocket push server

Usage:
  shardcast [serve] [--config FILE]
  shardcast token --secret S --sub ID [--role R] [--scope P]... [--group G] [--ttl SECONDS]
  shardcast config
  shardcast sub PATH [--url WS_URL] [--token T] [--filter F] [--since N]
  shardcast pub PATH EVENT_TYPE DATA [--url HTTP_URL] [--api-key K]
  shardcast help [COMMAND] | COMMAND --help | --help | -h
  shardcast --version | -V

Commands:
  serve   run a node (the default command; `shardcast --config FILE` is serve)
  token   print a signed HS256 token for trying things out
  config  print the default configuration file, every key annotated
  sub     print the events under a path as JSON lines until interrupted
  pub     publish one event over REST and print the answer

`shardcast COMMAND --help` (or `shardcast help COMMAND`) lists a command's flags.
Flags take their value as the next argument or after '=' (--config=FILE); after `--`
every argument is positional (for a DATA such as -5).
"
}

/// The help text of a topic.
pub fn help(topic: Topic) -> String {
    let body = match topic {
        Topic::General => return usage().to_string(),
        Topic::Serve => SERVE_HELP,
        Topic::Token => TOKEN_HELP,
        Topic::Config => CONFIG_HELP,
        Topic::Sub => SUB_HELP,
        Topic::Pub => PUB_HELP,
    };
    let usage_line = match topic {
        Topic::Serve => "shardcast [serve] [--config FILE]",
        Topic::Token => {
            "shardcast token --secret S --sub ID [--role R] [--scope P]... [--group G] [--ttl SECONDS]"
        }
        Topic::Config => "shardcast config",
        Topic::Sub => "shardcast sub PATH [--url WS_URL] [--token T] [--filter F] [--since N]",
        Topic::Pub => "shardcast pub PATH EVENT_TYPE DATA [--url HTTP_URL] [--api-key K]",
        Topic::General => unreachable!("returned above"),
    };
    format!("Usage: {usage_line}\n\n{body}\nFlags take their value as the next argument or after '=' (--flag=VALUE).\n")
}

/// `shardcast <version>`, for `--version`.
pub fn version() -> &'static str {
    concat!("shardcast ", env!("CARGO_PKG_VERSION"))
}

const COMMANDS: &[&str] = &["serve", "token", "config", "sub", "pub", "help", "version"];
const SERVE_FLAGS: &[&str] = &["--config", "--help", "--version"];
const TOKEN_FLAGS: &[&str] = &[
    "--secret", "--sub", "--role", "--scope", "--group", "--ttl", "--help",
];
const CONFIG_FLAGS: &[&str] = &["--help"];
const SUB_FLAGS: &[&str] = &[
    "--url",
    "--token",
    "--filter",
    "--since",
    "--batch-ms",
    "--help",
];
const PUB_FLAGS: &[&str] = &["--url", "--api-key", "--help"];

/// Parses the arguments after `argv[0]`, with secrets from the process environment.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    parse_with_env(args, |name| std::env::var(name).ok())
}

/// Parses the arguments after `argv[0]`; `env` looks up `SHARDCAST_TOKEN` and
/// `SHARDCAST_API_KEY` (an empty value counts as unset).
pub fn parse_with_env(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, CliError> {
    let mut args: Vec<String> = args.into_iter().collect();
    let Some(first) = args.first().cloned() else {
        return Ok(Command::Serve { config: None });
    };
    let rest = |args: &mut Vec<String>| Flags::new(args.split_off(1));
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    match first.as_str() {
        "help" | "--help" | "-h" => match args.get(1) {
            None => Ok(Command::Help(Topic::General)),
            Some(c) => topic_of(c)
                .map(Command::Help)
                .ok_or_else(|| CliError::UnknownCommand {
                    command: c.clone(),
                    suggestion: closest(c, COMMANDS),
                }),
        },
        "version" | "--version" | "-V" => Ok(Command::Version),
        "serve" => parse_serve(rest(&mut args)),
        "token" => parse_token(rest(&mut args)),
        "config" => parse_config(rest(&mut args)),
        "sub" => parse_sub(rest(&mut args), &env),
        "pub" => parse_pub(rest(&mut args), &env),
        // `shardcast --config f.toml`: flags without a command are serve's.
        flag if flag.starts_with('-') => parse_serve(Flags::new(args)),
        command => Err(CliError::UnknownCommand {
            command: command.to_string(),
            suggestion: closest(command, COMMANDS),
        }),
    }
}

fn parse_serve(mut args: Flags) -> Result<Command, CliError> {
    let mut config = None;
    while let Some(item) = args.next_item()? {
        match item {
            Item::Flag(name) => match name.as_str() {
                "--help" | "-h" => return args.no_value(name, Command::Help(Topic::Serve)),
                "--version" | "-V" => return args.no_value(name, Command::Version),
                "--config" => {
                    let value = args.value("--config")?;
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

/// `config` takes no arguments but `--help`.
fn parse_config(mut args: Flags) -> Result<Command, CliError> {
    match args.next_item()? {
        None => Ok(Command::Config),
        Some(Item::Flag(name)) if name == "--help" || name == "-h" => {
            args.no_value(name, Command::Help(Topic::Config))
        }
        Some(Item::Flag(name)) => Err(unknown_flag("config", name, CONFIG_FLAGS)),
        Some(Item::Positional(arg)) => Err(CliError::UnexpectedArgument(arg)),
    }
}

fn parse_token(mut args: Flags) -> Result<Command, CliError> {
    let mut secret = None;
    let mut sub = None;
    let mut role = None;
    let mut scopes = Vec::new();
    let mut group = None;
    let mut ttl = None;
    while let Some(item) = args.next_item()? {
        let name = match item {
            Item::Flag(name) => name,
            Item::Positional(arg) => return Err(CliError::UnexpectedArgument(arg)),
        };
        match name.as_str() {
            "--help" | "-h" => return args.no_value(name, Command::Help(Topic::Token)),
            "--secret" => {
                let v = args.value("--secret")?;
                non_empty("--secret", &v)?;
                set_once(&mut secret, "--secret", v)?;
            }
            "--sub" => {
                let v = args.value("--sub")?;
                non_empty("--sub", &v)?;
                set_once(&mut sub, "--sub", v)?;
            }
            "--role" => {
                let v = args.value("--role")?;
                let parsed = Role::from_claim(&v).ok_or(CliError::UnknownRole(v))?;
                set_once(&mut role, "--role", parsed)?;
            }
            "--scope" => {
                let v = args.value("--scope")?;
                non_empty("--scope", &v)?;
                scopes.push(v);
            }
            "--group" => {
                let v = args.value("--group")?;
                non_empty("--group", &v)?;
                set_once(&mut group, "--group", v)?;
            }
            "--ttl" => {
                let v = args.value("--ttl")?;
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

fn parse_sub(mut args: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    let mut path = None;
    let mut url = None;
    let mut token = None;
    let mut filter = None;
    let mut since = None;
    let mut batch_ms = None;
    while let Some(item) = args.next_item()? {
        let name = match item {
            Item::Flag(name) => name,
            Item::Positional(arg) if path.is_none() => {
                non_empty("PATH", &arg)?;
                path = Some(arg);
                continue;
            }
            Item::Positional(arg) => return Err(CliError::UnexpectedArgument(arg)),
        };
        match name.as_str() {
            "--help" | "-h" => return args.no_value(name, Command::Help(Topic::Sub)),
            "--url" => {
                let v = args.value("--url")?;
                ws_url("--url", &v)?;
                set_once(&mut url, "--url", v)?;
            }
            "--token" => {
                let v = args.value("--token")?;
                non_empty("--token", &v)?;
                set_once(&mut token, "--token", v)?;
            }
            "--filter" => {
                let v = args.value("--filter")?;
                non_empty("--filter", &v)?;
                set_once(&mut filter, "--filter", v)?;
            }
            "--since" => {
                let v = args.value("--since")?;
                let n = v.parse::<u64>().map_err(|_| CliError::BadValue {
                    flag: "--since",
                    value: v.clone(),
                    reason: "expected a seq (a whole number)",
                })?;
                set_once(&mut since, "--since", n)?;
            }
            "--batch-ms" => {
                let v = args.value("--batch-ms")?;
                let n = v.parse::<u64>().map_err(|_| CliError::BadValue {
                    flag: "--batch-ms",
                    value: v.clone(),
                    reason: "expected a whole number of milliseconds",
                })?;
                set_once(&mut batch_ms, "--batch-ms", n)?;
            }
            _ => return Err(unknown_flag("sub", name, SUB_FLAGS)),
        }
    }
    let path = path.ok_or(CliError::MissingArgument {
        command: "sub",
        name: "PATH",
    })?;
    let token = token
        .or_else(|| env(TOKEN_ENV))
        .ok_or(CliError::MissingSecret {
            command: "sub",
            flag: "--token",
            env: TOKEN_ENV,
        })?;
    Ok(Command::Sub(SubArgs {
        path,
        url: url.unwrap_or_else(|| DEFAULT_WS_URL.to_string()),
        token,
        filter,
        since,
        batch_ms: batch_ms.unwrap_or(0),
    }))
}

fn parse_pub(mut args: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    let mut positional = Vec::new();
    let mut url = None;
    let mut api_key = None;
    while let Some(item) = args.next_item()? {
        let name = match item {
            Item::Flag(name) => name,
            Item::Positional(arg) if positional.len() < 3 => {
                positional.push(arg);
                continue;
            }
            Item::Positional(arg) => return Err(CliError::UnexpectedArgument(arg)),
        };
        match name.as_str() {
            "--help" | "-h" => return args.no_value(name, Command::Help(Topic::Pub)),
            "--url" => {
                let v = args.value("--url")?;
                if !v.starts_with("http://") {
                    return Err(CliError::BadValue {
                        flag: "--url",
                        value: v,
                        reason: "expected an http:// URL (no TLS in this client)",
                    });
                }
                set_once(&mut url, "--url", v)?;
            }
            "--api-key" => {
                let v = args.value("--api-key")?;
                non_empty("--api-key", &v)?;
                set_once(&mut api_key, "--api-key", v)?;
            }
            _ => return Err(unknown_flag("pub", name, PUB_FLAGS)),
        }
    }
    let mut positional = positional.into_iter();
    let mut next = |name| {
        positional.next().ok_or(CliError::MissingArgument {
            command: "pub",
            name,
        })
    };
    let path = next("PATH")?;
    let event_type = next("EVENT_TYPE")?;
    let raw = next("DATA")?;
    // Checked before any request, so a typo never reaches the node.
    let data = serde_json::from_str::<Value>(&raw).map_err(|e| CliError::BadData {
        value: raw.clone(),
        reason: e.to_string(),
    })?;
    non_empty("PATH", &path)?;
    non_empty("EVENT_TYPE", &event_type)?;
    let api_key = api_key
        .or_else(|| env(API_KEY_ENV))
        .ok_or(CliError::MissingSecret {
            command: "pub",
            flag: "--api-key",
            env: API_KEY_ENV,
        })?;
    Ok(Command::Pub(PubArgs {
        path,
        event_type,
        data,
        url: url.unwrap_or_else(|| DEFAULT_HTTP_URL.to_string()),
        api_key,
    }))
}

fn ws_url(flag: &'static str, v: &str) -> Result<(), CliError> {
    if v.starts_with("ws://") {
        Ok(())
    } else {
        Err(CliError::BadValue {
            flag,
            value: v.to_string(),
            reason: "expected a ws:// URL (no TLS in this client)",
        })
    }
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
    /// `--name` (its `=value`, if any, is taken by [`Flags::value`]) or a short `-x`.
    Flag(String),
    Positional(String),
}

/// The arguments of one command, split by lexopt.
struct Flags {
    parser: lexopt::Parser,
}

fn utf8(v: OsString) -> Result<String, CliError> {
    v.into_string()
        .map_err(|v| CliError::NotUnicode(v.to_string_lossy().into_owned()))
}

impl Flags {
    fn new(args: Vec<String>) -> Flags {
        Flags {
            parser: lexopt::Parser::from_args(args),
        }
    }

    fn next_item(&mut self) -> Result<Option<Item>, CliError> {
        match self.parser.next() {
            Ok(None) => Ok(None),
            Ok(Some(Arg::Long(name))) => Ok(Some(Item::Flag(format!("--{name}")))),
            Ok(Some(Arg::Short(c))) => Ok(Some(Item::Flag(format!("-{c}")))),
            Ok(Some(Arg::Value(v))) => utf8(v).map(|v| Some(Item::Positional(v))),
            Err(lexopt::Error::UnexpectedValue { option, value }) => {
                Err(CliError::UnexpectedValue {
                    flag: option,
                    value: value.to_string_lossy().into_owned(),
                })
            }
            Err(lexopt::Error::NonUnicodeValue(v)) => {
                Err(CliError::NotUnicode(v.to_string_lossy().into_owned()))
            }
            Err(e) => Err(CliError::UnexpectedArgument(e.to_string())),
        }
    }

    /// The flag's value: after `=`, or the next argument unless that is itself a `--flag`
    /// (then the value was forgotten, and taking the flag as a value would hide that).
    fn value(&mut self, flag: &'static str) -> Result<String, CliError> {
        if let Some(v) = self.parser.optional_value() {
            return utf8(v);
        }
        let next = self
            .parser
            .try_raw_args()
            .and_then(|mut raw| raw.next_if(|a| !a.to_string_lossy().starts_with("--")));
        match next {
            Some(v) => utf8(v),
            None => Err(CliError::MissingValue { flag }),
        }
    }

    /// `done` for a flag that takes no value, refusing `--help=x` rather than dropping `x`.
    fn no_value(&mut self, flag: String, done: Command) -> Result<Command, CliError> {
        match self.parser.optional_value() {
            Some(v) => Err(CliError::UnexpectedValue {
                flag,
                value: v.to_string_lossy().into_owned(),
            }),
            None => Ok(done),
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
        for (args, topic) in [
            (&["help"][..], Topic::General),
            (&["--help"], Topic::General),
            (&["-h"], Topic::General),
            (&["serve", "--help"], Topic::Serve),
            (&["token", "--help"], Topic::Token),
            (&["sub", "--help"], Topic::Sub),
            (&["pub", "-h"], Topic::Pub),
            (&["help", "sub"], Topic::Sub),
        ] {
            assert_eq!(p(args), Ok(Command::Help(topic)), "{args:?}");
        }
        assert_eq!(
            p(&["serve", "--help=x"]),
            Err(CliError::UnexpectedValue {
                flag: "--help".into(),
                value: "x".into()
            })
        );
        for args in [
            &["--version"][..],
            &["-V"],
            &["version"],
            &["serve", "--version"],
        ] {
            assert_eq!(p(args), Ok(Command::Version), "{args:?}");
        }
        assert!(usage().contains("shardcast token --secret S --sub ID"));
        assert!(usage().contains("shardcast sub PATH"));
        assert!(help(Topic::Sub).contains("--since N"));
        assert!(help(Topic::Pub).contains("SHARDCAST_API_KEY"));
        assert!(help(Topic::Token).contains("--ttl SECONDS"));
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

    fn pe(args: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_with_env(args.iter().map(|s| s.to_string()), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn sub_parses_with_defaults_and_env() {
        let want = SubArgs {
            path: "jobs".into(),
            url: DEFAULT_WS_URL.into(),
            token: "from-env".into(),
            filter: None,
            since: None,
            batch_ms: 0,
        };
        assert_eq!(
            pe(&["sub", "jobs"], &[(TOKEN_ENV, "from-env")]),
            Ok(Command::Sub(want.clone()))
        );
        // The flag wins over the environment.
        let Ok(Command::Sub(a)) = pe(
            &[
                "sub",
                "--url=ws://10.0.0.1:9000/ws",
                "jobs/1",
                "--token",
                "flag",
                "--filter",
                "status == 'failed'",
                "--since",
                "42",
                "--batch-ms",
                "250",
            ],
            &[(TOKEN_ENV, "from-env")],
        ) else {
            panic!()
        };
        assert_eq!(a.token, "flag");
        assert_eq!(a.path, "jobs/1");
        assert_eq!(a.url, "ws://10.0.0.1:9000/ws");
        assert_eq!(a.filter.as_deref(), Some("status == 'failed'"));
        assert_eq!(a.since, Some(42));
        assert_eq!(a.batch_ms, 250);
        assert!(!format!("{a:?}").contains("flag\""), "{a:?}");
    }

    #[test]
    fn a_bad_value_shows_its_commands_help() {
        let args: Vec<String> = ["token", "--secret", "s", "--sub", "u", "--ttl", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = parse_with_env(args.clone(), |_| None).unwrap_err();
        assert_eq!(error_topic(&args, &e), Topic::Token);
        let args: Vec<String> = ["sub", "jobs", "--batch-ms", "soon"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = parse_with_env(args.clone(), |_| None).unwrap_err();
        assert!(e.to_string().contains("--batch-ms soon"), "{e}");
        assert_eq!(error_topic(&args, &e), Topic::Sub);
        // No known command: the overview.
        let args = vec!["frobnicate".to_string()];
        let e = parse_with_env(args.clone(), |_| None).unwrap_err();
        assert_eq!(error_topic(&args, &e), Topic::General);
    }

    #[test]
    fn sub_errors() {
        let e = pe(&["sub", "jobs"], &[]).unwrap_err();
        assert_eq!(
            e,
            CliError::MissingSecret {
                command: "sub",
                flag: "--token",
                env: TOKEN_ENV
            }
        );
        assert!(e.to_string().contains("SHARDCAST_TOKEN"), "{e}");
        // An empty variable is no token.
        assert!(matches!(
            pe(&["sub", "jobs"], &[(TOKEN_ENV, "")]),
            Err(CliError::MissingSecret { .. })
        ));
        assert_eq!(
            pe(&["sub", "--token", "t"], &[]),
            Err(CliError::MissingArgument {
                command: "sub",
                name: "PATH"
            })
        );
        let e = pe(&["sub", "jobs", "--filtr", "x", "--token", "t"], &[]).unwrap_err();
        assert_eq!(
            e,
            CliError::UnknownFlag {
                command: "sub",
                flag: "--filtr".into(),
                suggestion: Some("--filter")
            }
        );
        assert_eq!(e.topic(), Topic::Sub);
        assert_eq!(
            pe(&["sub", "jobs", "--since", "x1", "--token", "t"], &[]),
            Err(CliError::BadValue {
                flag: "--since",
                value: "x1".into(),
                reason: "expected a seq (a whole number)"
            })
        );
        assert_eq!(
            pe(&["sub", "a", "b", "--token", "t"], &[]),
            Err(CliError::UnexpectedArgument("b".into()))
        );
        assert_eq!(
            pe(&["sub", "a", "--token", "t", "--token", "u"], &[]),
            Err(CliError::Repeated { flag: "--token" })
        );
        assert!(matches!(
            pe(&["sub", "a", "--token", "t", "--url", "wss://x/ws"], &[]),
            Err(CliError::BadValue { flag: "--url", .. })
        ));
        assert_eq!(
            pe(&["sub", "a", "--token"], &[]),
            Err(CliError::MissingValue { flag: "--token" })
        );
    }

    #[test]
    fn pub_parses_data_as_json() {
        let Ok(Command::Pub(a)) = pe(
            &["pub", "jobs/1", "done", r#"{"ok":true}"#],
            &[(API_KEY_ENV, "k")],
        ) else {
            panic!()
        };
        assert_eq!(a.data, serde_json::json!({"ok": true}));
        assert_eq!(
            (a.url.as_str(), a.api_key.as_str()),
            (DEFAULT_HTTP_URL, "k")
        );
        assert!(!format!("{a:?}").contains("\"k\""), "{a:?}");
        let Ok(Command::Pub(a)) = pe(
            &[
                "pub",
                "--api-key=flag",
                "jobs/1",
                "done",
                "--url",
                "http://h:1",
                "--",
                "-5",
            ],
            &[(API_KEY_ENV, "k")],
        ) else {
            panic!()
        };
        assert_eq!(
            (a.data.clone(), a.api_key.as_str()),
            (serde_json::json!(-5), "flag")
        );
        assert_eq!(a.url, "http://h:1");
    }

    #[test]
    fn pub_errors() {
        let e = pe(&["pub", "jobs/1", "done", "{oops"], &[(API_KEY_ENV, "k")]).unwrap_err();
        assert!(
            matches!(&e, CliError::BadData { value, .. } if value == "{oops"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("bad DATA `{oops`: not JSON"),
            "{e}"
        );
        // A bare word is not JSON either: strings are quoted.
        assert!(matches!(
            pe(&["pub", "jobs/1", "done", "hello"], &[(API_KEY_ENV, "k")]),
            Err(CliError::BadData { .. })
        ));
        // Bad DATA is named before a missing key.
        assert!(matches!(
            pe(&["pub", "jobs/1", "done", "{oops"], &[]),
            Err(CliError::BadData { .. })
        ));
        assert_eq!(
            pe(&["pub", "jobs/1", "done", "1"], &[]),
            Err(CliError::MissingSecret {
                command: "pub",
                flag: "--api-key",
                env: API_KEY_ENV
            })
        );
        assert_eq!(
            pe(&["pub", "jobs/1", "--api-key", "k"], &[]),
            Err(CliError::MissingArgument {
                command: "pub",
                name: "EVENT_TYPE"
            })
        );
        let e = pe(&["pub", "jobs/1", "done", "--api-key", "k"], &[]).unwrap_err();
        assert_eq!(
            e,
            CliError::MissingArgument {
                command: "pub",
                name: "DATA"
            }
        );
        assert_eq!(
            e.to_string(),
            "missing DATA for `shardcast pub` (try `shardcast pub --help`)"
        );
        assert_eq!(
            pe(&["pub", "a", "b", "1", "extra", "--api-key", "k"], &[]),
            Err(CliError::UnexpectedArgument("extra".into()))
        );
        assert!(matches!(
            pe(&["pub", "a", "b", "1", "--api-kye", "k"], &[]),
            Err(CliError::UnknownFlag {
                suggestion: Some("--api-key"),
                ..
            })
        ));
        assert!(matches!(
            pe(
                &["pub", "a", "b", "1", "--api-key", "k", "--url", "ws://x"],
                &[]
            ),
            Err(CliError::BadValue { flag: "--url", .. })
        ));
    }

    #[test]
    fn unknown_help_topic() {
        assert!(matches!(
            p(&["help", "sbu"]),
            Err(CliError::UnknownCommand {
                suggestion: Some("sub"),
                ..
            })
        ));
    }
}
