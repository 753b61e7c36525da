//! [`Config::validate`]: the relations and ranges that types alone cannot express (every
//! refusal names its key), the token keys ([`Config::load_keys`]) and the refusal of the
//! shipped example secrets off loopback.

use super::error::ConfigError;
use super::sections::{Config, SHIPPED_API_KEY, SHIPPED_JWT_SECRET};

fn at_least_one(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value >= 1 {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: "must be at least 1".to_string(),
        })
    }
}

/// Paths the server answers itself; an echo endpoint there would shadow or be shadowed.
const RESERVED_PATHS: &[&str] = &["/ws", "/metrics", "/healthz", "/readyz"];
const RESERVED_PREFIXES: &[&str] = &["/api", "/channels", "/console"];

fn check_echo_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be empty or start with '/'"));
    }
    if path
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{path:?} must be a plain path (no '?', '#' or whitespace)"
        ));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!("{path:?} is one of the server's own endpoints"));
    }
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if RESERVED_PREFIXES.iter().any(|p| under(p)) {
        return Err(format!(
            "{path:?} is under one of the server's own endpoints"
        ));
    }
    Ok(())
}

impl Config {
    /// Checks the relations and ranges that types alone cannot express. Every refusal
    /// names its key. The first problem found is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        let l = &self.limits;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                reason: "must not be empty".to_string(),
            });
        }
        if self.auth.jwt_secret.is_empty() {
            return Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                reason: "must not be empty".to_string(),
            });
        }
        self.load_keys()?;
        if let Err(reason) = crate::origin::Origins::from_config(&self.auth.allowed_origins) {
            return Err(ConfigError::Invalid {
                key: "auth.allowed_origins",
                reason,
            });
        }
        // An empty key would let `Authorization: apikey ` (nothing after it) in.
        if let Some(i) = self.auth.api_keys.iter().position(|k| k.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "auth.api_keys",
                reason: format!("entry {i} is empty; api keys must not be empty"),
            });
        }
        at_least_one("auth.auth_timeout_ms", self.auth.auth_timeout_ms)?;
        at_least_one("auth.ticket_ttl_ms", self.auth.ticket_ttl_ms)?;
        at_least_one("delivery.batch_max", d.batch_max as u64)?;
        if d.batch_ms > d.max_batch_ms {
            return Err(ConfigError::Invalid {
                key: "delivery.batch_ms",
                reason: format!(
                    "{} is greater than 'delivery.max_batch_ms' ({})",
                    d.batch_ms, d.max_batch_ms
                ),
            });
        }
        at_least_one("delivery.queue_capacity", d.queue_capacity as u64)?;
        at_least_one("delivery.heartbeat_ms", d.heartbeat_ms)?;
        at_least_one("delivery.pong_timeout_ms", d.pong_timeout_ms)?;
        at_least_one(
            "delivery.shard_queue_capacity",
            d.shard_queue_capacity as u64,
        )?;
        // A zero page would never finish sending a live query's initial data.
        at_least_one("live_query.page", self.live_query.page as u64)?;
        at_least_one("services.ack_timeout_ms", self.services.ack_timeout_ms)?;
        at_least_one(
            "services.max_attempts",
            u64::from(self.services.max_attempts),
        )?;
        // A zero prefetch would never hand a task to anyone.
        at_least_one("services.prefetch", self.services.prefetch as u64)?;
        at_least_one("limits.max_message_bytes", l.max_message_bytes as u64)?;
        at_least_one("limits.max_subscriptions", l.max_subscriptions as u64)?;
        at_least_one("limits.max_live_queries", l.max_live_queries as u64)?;
        at_least_one("limits.commands_per_sec", u64::from(l.commands_per_sec))?;
        at_least_one("limits.commands_burst", u64::from(l.commands_burst))?;
        at_least_one("limits.max_connections", l.max_connections as u64)?;
        at_least_one("limits.max_http_body_bytes", l.max_http_body_bytes as u64)?;
        at_least_one("limits.max_publish_batch", l.max_publish_batch as u64)?;
        at_least_one("limits.request_timeout_ms", l.request_timeout_ms)?;
        at_least_one("limits.max_http_connections", l.max_http_connections as u64)?;
        check_echo_path(&self.testing.echo_path).map_err(|reason| ConfigError::Invalid {
            key: "testing.echo_path",
            reason,
        })?;
        if !self.cluster.node_id.is_empty() {
            crate::node_id::check(&self.cluster.node_id).map_err(|reason| {
                ConfigError::Invalid {
                    key: "cluster.node_id",
                    reason,
                }
            })?;
        }
        if !self.cluster.redis_url.is_empty() {
            check_redis_url(&self.cluster.redis_url).map_err(|reason| ConfigError::Invalid {
                key: "cluster.redis_url",
                reason,
            })?;
        }
        self.check_shipped_secrets()
    }

    /// The token keys: `auth.jwt_secret` for HS256 and the public key in the file
    /// `auth.jwt_public_key`, if set, read and checked now so that a missing or unusable
    /// key stops start-up naming the key and the file.
    pub fn load_keys(&self) -> Result<crate::auth::jwt::Keys, ConfigError> {
        let secret = self.auth.jwt_secret.as_bytes();
        let path = &self.auth.jwt_public_key;
        if path.as_os_str().is_empty() {
            return Ok(crate::auth::jwt::Keys::hs256(secret));
        }
        let invalid = |reason: String| ConfigError::Invalid {
            key: "auth.jwt_public_key",
            reason: format!("{}: {reason}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot be read ({e})")))?;
        crate::auth::jwt::Keys::new(secret, Some(&pem)).map_err(invalid)
    }

    /// PROTOCOL.md section 13: off loopback, the shipped example secret and api key stop
    /// start-up (this runs before anything binds). A list that merely also holds
    /// `dev-key` is refused too: that one key would still let anyone publish.
    fn check_shipped_secrets(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if self.auth.jwt_secret == SHIPPED_JWT_SECRET {
            return Err(ConfigError::ShippedSecret {
                key: "auth.jwt_secret",
                listen: self.listen,
                what: "is \"change-me\"",
                fix: "set a secret of your own as jwt_secret under [auth] in the config file, \
                      or in the environment variable SHARDCAST_AUTH__JWT_SECRET",
            });
        }
        if self.auth.api_keys.iter().any(|k| k == SHIPPED_API_KEY) {
            return Err(ConfigError::ShippedSecret {
                key: "auth.api_keys",
                listen: self.listen,
                what: "holds \"dev-key\"",
                fix: "set keys of your own as api_keys under [auth] in the config file, \
                      or in the environment variable SHARDCAST_AUTH__API_KEYS \
                      (e.g. '[\"k1\",\"k2\"]')",
            });
        }
        Ok(())
    }
}

/// A Redis URL the cluster backend can use: `redis://[user:password@]host[:port][/db]`.
fn check_redis_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err(format!(
            "'{url}': TLS to Redis is not supported; use redis:// (a local Redis, or a TLS \
             tunnel)"
        ));
    }
    match url.strip_prefix("redis://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
        _ => Err(format!(
            "'{url}' is not a redis:// URL (e.g. \"redis://127.0.0.1:6379\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testkit::*;

    #[test]
    fn shipped_secrets_are_refused_off_loopback_only() {
        let own = "[auth]\njwt_secret = \"s3cret\"\napi_keys = [\"k1\"]";
        // Loopback (v4 and v6) keeps the shipped examples working out of the box.
        for listen in ["127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080"] {
            let c = Config::from_toml_str(&format!("listen = \"{listen}\""), no_env());
            assert!(c.is_ok(), "{listen}: {c:?}");
        }
        for listen in ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080"] {
            let err = load_err(&format!("listen = \"{listen}\""), &[]);
            assert!(
                matches!(
                    err,
                    ConfigError::ShippedSecret {
                        key: "auth.jwt_secret",
                        ..
                    }
                ),
                "{listen}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(listen) && msg.contains("'auth.jwt_secret' is \"change-me\""));
            assert!(msg.contains("SHARDCAST_AUTH__JWT_SECRET"), "{msg}");
            // With an own secret, the shipped api key is the next refusal, even in a list.
            let err = load_err(
                &format!("listen = \"{listen}\"\n[auth]\njwt_secret = \"x\"\napi_keys = [\"k\", \"dev-key\"]"),
                &[],
            );
            let msg = err.to_string();
            assert!(msg.contains("'auth.api_keys' holds \"dev-key\""), "{msg}");
            assert!(msg.contains("SHARDCAST_AUTH__API_KEYS"), "{msg}");
            let c = Config::from_toml_str(&format!("listen = \"{listen}\"\n{own}"), no_env());
            assert!(c.is_ok(), "{listen}: {c:?}");
        }
        // The environment's values count, both ways.
        let err = load_err(
            own,
            &[
                ("SHARDCAST_LISTEN", "0.0.0.0:1"),
                ("SHARDCAST_AUTH__JWT_SECRET", "change-me"),
            ],
        );
        assert!(matches!(
            err,
            ConfigError::ShippedSecret {
                key: "auth.jwt_secret",
                ..
            }
        ));
        let c = Config::from_toml_str(
            "listen = \"0.0.0.0:1\"",
            env(&[
                ("SHARDCAST_AUTH__JWT_SECRET", "mine"),
                ("SHARDCAST_AUTH__API_KEYS", "[\"a\"]"),
            ]),
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn validation_errors_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("[delivery]\nbatch_max = 0", "delivery.batch_max"),
            ("[delivery]\nbatch_ms = 70000", "delivery.batch_ms"),
            ("[delivery]\nqueue_capacity = 0", "delivery.queue_capacity"),
            ("[delivery]\nheartbeat_ms = 0", "delivery.heartbeat_ms"),
            (
                "[delivery]\npong_timeout_ms = 0",
                "delivery.pong_timeout_ms",
            ),
            (
                "[delivery]\nshard_queue_capacity = 0",
                "delivery.shard_queue_capacity",
            ),
            ("[auth]\nauth_timeout_ms = 0", "auth.auth_timeout_ms"),
            ("[auth]\nticket_ttl_ms = 0", "auth.ticket_ttl_ms"),
            ("[auth]\njwt_secret = \"\"", "auth.jwt_secret"),
            ("[auth]\napi_keys = [\"a\", \"\"]", "auth.api_keys"),
            (
                "[limits]\nmax_message_bytes = 0",
                "limits.max_message_bytes",
            ),
            (
                "[limits]\nmax_subscriptions = 0",
                "limits.max_subscriptions",
            ),
            ("[limits]\nmax_live_queries = 0", "limits.max_live_queries"),
            ("[limits]\ncommands_per_sec = 0", "limits.commands_per_sec"),
            ("[limits]\ncommands_burst = 0", "limits.commands_burst"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            (
                "[limits]\nmax_http_body_bytes = 0",
                "limits.max_http_body_bytes",
            ),
            (
                "[limits]\nmax_publish_batch = 0",
                "limits.max_publish_batch",
            ),
            (
                "[limits]\nrequest_timeout_ms = 0",
                "limits.request_timeout_ms",
            ),
            (
                "[limits]\nmax_http_connections = 0",
                "limits.max_http_connections",
            ),
            ("[live_query]\npage = 0", "live_query.page"),
            ("[services]\nack_timeout_ms = 0", "services.ack_timeout_ms"),
            ("[services]\nmax_attempts = 0", "services.max_attempts"),
            ("[services]\nprefetch = 0", "services.prefetch"),
            ("data_dir = \"\"", "data_dir"),
            ("[testing]\necho_path = \"echo\"", "testing.echo_path"),
            ("[testing]\necho_path = \"/ws\"", "testing.echo_path"),
            ("[testing]\necho_path = \"/metrics\"", "testing.echo_path"),
            (
                "[testing]\necho_path = \"/api/v1/echo\"",
                "testing.echo_path",
            ),
            ("[testing]\necho_path = \"/echo?x\"", "testing.echo_path"),
        ];
        for (text, want) in cases {
            let err = load_err(text, &[]);
            match &err {
                ConfigError::Invalid { key, .. } if key == want => {}
                other => panic!("{text:?}: expected Invalid for {want}, got {other:?}"),
            }
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid value for '{want}': ")),
                "{err}"
            );
        }
    }

    #[test]
    fn batch_ms_may_equal_max_batch_ms_and_zero_limits_elsewhere_are_fine() {
        let c = Config::from_toml_str(
            "[delivery]\nbatch_ms = 60000\n[history]\nsize = 0\nttl_ms = 0\n\
             [channels]\nbacklog = 0\n[testing]\necho_path = \"/echo\"",
            no_env(),
        )
        .unwrap();
        assert_eq!(c.delivery.batch_ms, 60_000);
        assert_eq!(c.testing.echo_path, "/echo");
    }

    #[test]
    fn redis_urls_are_checked() {
        for good in [
            "redis://127.0.0.1:6379",
            "redis://localhost",
            "redis://:pw@h:1/2",
        ] {
            let c = Config::from_toml_str(&format!("[cluster]\nredis_url = \"{good}\""), no_env())
                .unwrap();
            assert_eq!(c.cluster.redis_url, good);
        }
        let err = load_err("[cluster]\nredis_url = \"127.0.0.1:6379\"", &[]);
        assert_eq!(
            err.to_string(),
            "invalid value for 'cluster.redis_url': '127.0.0.1:6379' is not a redis:// URL \
             (e.g. \"redis://127.0.0.1:6379\")"
        );
        let err = load_err("[cluster]\nredis_url = \"rediss://h:6380\"", &[]);
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn node_ids_are_names() {
        let err = load_err("[cluster]\nnode_id = \"n 1\"", &[]);
        assert!(
            err.to_string().contains("cluster.node_id") && err.to_string().contains("' '"),
            "{err}"
        );
    }

    #[test]
    fn validate_on_a_hand_built_config() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        c.delivery.max_batch_ms = 10;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "delivery.batch_ms")
        );
    }
}
