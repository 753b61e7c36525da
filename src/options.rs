//! Connection options (`batchMs`, `batchMax`, `framing`, `group`), from URL query
//! parameters or the `options` object of an `auth` message, bounded by the config.
//!
//! Pure: the shard calls [`ConnOptions::apply`] while authenticating. Out-of-range and
//! malformed values are refused with a message that names the option
//! (PROTOCOL.md §2: error `BAD_MESSAGE`).

use serde_json::Value;

use crate::config::{Config, Framing};

/// A connection's delivery options.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnOptions {
    pub batch_ms: u32,
    pub batch_max: u32,
    pub framing: Framing,
    pub group: Option<String>,
}

/// The option names this server knows.
pub const NAMES: [&str; 4] = ["batchMs", "batchMax", "framing", "group"];

impl ConnOptions {
    /// The configured defaults.
    pub fn defaults(cfg: &Config) -> ConnOptions {
        ConnOptions {
            batch_ms: cfg.delivery.batch_ms.min(u32::MAX as u64) as u32,
            batch_max: cfg.delivery.batch_max.min(u32::MAX as usize) as u32,
            framing: cfg.delivery.framing,
            group: None,
        }
    }

    /// Applies one option. `value` is a JSON value (numbers may also come as strings, as
    /// they do from a URL).
    pub fn apply(&mut self, cfg: &Config, name: &str, value: &Value) -> Result<(), String> {
        match name {
            "batchMs" => {
                let max = cfg.delivery.max_batch_ms;
                let v = as_u64(value)
                    .filter(|v| *v <= max)
                    .ok_or_else(|| format!("option batchMs must be an integer from 0 to {max}"))?;
                self.batch_ms = v as u32;
            }
            "batchMax" => {
                let max = cfg.delivery.queue_capacity as u64;
                let v = as_u64(value)
                    .filter(|v| (1..=max).contains(v))
                    .ok_or_else(|| {
                        format!(
                            "option batchMax must be an integer from 1 to {max} (queue_capacity)"
                        )
                    })?;
                self.batch_max = v as u32;
            }
            "framing" => {
                self.framing = match value.as_str() {
                    Some("frames") => Framing::Frames,
                    Some("array") => Framing::Array,
                    _ => return Err("option framing must be \"frames\" or \"array\"".into()),
                };
            }
            "group" => match value.as_str() {
                Some(g) if !g.is_empty() && g.len() <= 256 => self.group = Some(g.to_string()),
                _ => {
                    return Err(
                        "option group must be a non-empty string of at most 256 bytes".into(),
                    )
                }
            },
            other => {
                return Err(format!(
                    "unknown option '{other}' (known: {})",
                    NAMES.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Applies the known options among URL query pairs; other parameters (`token`,
    /// `uuid`, cache busters added by proxies) are not options and are left alone.
    pub fn apply_query<'a>(
        &mut self,
        cfg: &Config,
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        for (k, v) in pairs {
            if NAMES.contains(&k) {
                self.apply(cfg, k, &Value::String(v.to_string()))?;
            }
        }
        Ok(())
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_and_names() {
        let cfg = Config::default();
        let mut o = ConnOptions::defaults(&cfg);
        assert_eq!(o.batch_ms, 5000);
        assert_eq!(o.batch_max, 1000);
        o.apply(&cfg, "batchMs", &json!(0)).unwrap();
        o.apply(&cfg, "batchMs", &json!("250")).unwrap();
        assert_eq!(o.batch_ms, 250);
        let e = o.apply(&cfg, "batchMs", &json!(60_001)).unwrap_err();
        assert!(e.contains("batchMs"), "{e}");
        assert!(o.apply(&cfg, "batchMs", &json!(-1)).is_err());
        assert!(o.apply(&cfg, "batchMax", &json!(0)).is_err());
        assert!(o.apply(&cfg, "batchMax", &json!(10_001)).is_err());
        o.apply(&cfg, "framing", &json!("array")).unwrap();
        assert_eq!(o.framing, Framing::Array);
        assert!(o.apply(&cfg, "framing", &json!("xml")).is_err());
        let e = o.apply(&cfg, "batchms", &json!(1)).unwrap_err();
        assert!(e.contains("unknown option 'batchms'"), "{e}");
        o.apply_query(&cfg, [("token", "x"), ("batchMax", "3")].into_iter())
            .unwrap();
        assert_eq!(o.batch_max, 3);
    }
}
