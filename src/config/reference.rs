//! The configuration's reference, generated from the key table (`keys::KEYS`) so that it
//! cannot drift from the code: the environment variable of each key ([`env_name`]), the
//! annotated default file `shardcast config` prints ([`default_toml`]), the start-up
//! warning for a `SHARDCAST_` variable that names no key ([`unknown_env_warning`]), and
//! the test that docs/CONFIG.md lists exactly the table's keys with their defaults.

use std::fmt::Write as _;

use toml::{Table, Value};

use super::keys::{edit_distance, KeySpec, KEYS, SECTIONS};
use super::sections::Config;

/// Variables with the `SHARDCAST_` prefix that are not configuration keys but belong to
/// this project (the log level, the command line's secrets, the tests' and tools'
/// switches): no warning for them.
const OTHER_VARIABLES: &[&str] = &[
    "SHARDCAST_LOG",
    "SHARDCAST_TOKEN",
    "SHARDCAST_API_KEY",
    "SHARDCAST_BIN",
    "SHARDCAST_TEST_IO",
    "SHARDCAST_SHARE_PORT",
    "SHARDCAST_STORE_BENCH_DIR",
    "SHARDCAST_STORE_CRASH_CHILD_DIR",
];

/// The environment variable that overrides a key: `SHARDCAST_<SECTION>__<KEY>`, or
/// `SHARDCAST_<KEY>` for a top-level key.
pub fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("SHARDCAST_{}", key.to_ascii_uppercase())
    } else {
        format!(
            "SHARDCAST_{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }
}

/// The defaults as a TOML table (what [`Config::default`] serializes to).
fn defaults() -> Table {
    match Value::try_from(Config::default()) {
        Ok(Value::Table(t)) => t,
        // Config is a struct of plain fields: it always serializes to a table.
        other => unreachable!("Config::default() serialized to {other:?}"),
    }
}

/// A key's default, as TOML value text (`5000`, `"./data"`, `["dev-key"]`).
pub(super) fn default_text(defaults: &Table, spec: &KeySpec) -> String {
    let value = if spec.section.is_empty() {
        defaults.get(spec.key)
    } else {
        defaults
            .get(spec.section)
            .and_then(Value::as_table)
            .and_then(|t| t.get(spec.key))
    };
    match value {
        Some(v) => v.to_string(),
        None => unreachable!(
            "{}.{} has no default (KEYS and Config disagree)",
            spec.section, spec.key
        ),
    }
}

/// The annotated default file: every key with its default, under a one-line comment of
/// its meaning and environment variable; extension keys (beyond PROTOCOL.md section 13)
/// say so. Loading it gives [`Config::default`].
pub fn default_toml() -> String {
    let defaults = defaults();
    let mut out = String::from(
        "# shardcast configuration: every key at its default (docs/CONFIG.md explains each).\n\
         # Run with `shardcast serve --config FILE`; any key can also be set by the\n\
         # environment variable named in its comment, which wins over the file.\n",
    );
    for section in std::iter::once("").chain(SECTIONS.iter().copied()) {
        out.push('\n');
        if !section.is_empty() {
            let _ = writeln!(out, "[{section}]");
        }
        for spec in KEYS.iter().filter(|k| k.section == section) {
            let ext = if spec.ext { " (extension)" } else { "" };
            let _ = writeln!(
                out,
                "# {}{ext} (env {})\n{} = {}",
                spec.doc,
                env_name(spec.section, spec.key),
                spec.key,
                default_text(&defaults, spec)
            );
        }
    }
    out
}

/// The start-up warning for a `SHARDCAST_` variable that sets no key (one without `__`
/// that is not a top-level key), naming the closest key's variable when one is close;
/// `None` for the project's other variables ([`OTHER_VARIABLES`]).
pub fn unknown_env_warning(name: &str) -> Option<String> {
    if OTHER_VARIABLES.contains(&name) {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    // Underscores are the usual slip (`_` for `__`), so they weigh nothing when choosing.
    let squash = |s: &str| s.replace('_', "");
    let closest = KEYS
        .iter()
        .map(|k| env_name(k.section, k.key))
        .map(|env| {
            let d = edit_distance(&squash(&env), &squash(&upper));
            (d, edit_distance(&env, &upper), env)
        })
        .min();
    let rest = upper.trim_start_matches("SHARDCAST_");
    let near = closest.filter(|(d, _, _)| *d <= (rest.len() / 4).max(1));
    Some(match near {
        Some((_, _, env)) => format!(
            "ignoring environment variable {name}: it sets no configuration key; did you mean {env}?"
        ),
        None => format!(
            "ignoring environment variable {name}: it sets no configuration key (a key under a \
             section is SHARDCAST_<SECTION>__<KEY>, two underscores; see docs/CONFIG.md)"
        ),
    })
}

impl Config {
    /// The warnings to log at start-up for [`Config::ignored_env`], one per variable.
    pub fn env_warnings(&self) -> Vec<String> {
        self.ignored_env
            .iter()
            .filter_map(|name| unknown_env_warning(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testkit::*;

    #[test]
    fn the_printed_default_file_loads_as_the_defaults() {
        let text = default_toml();
        let loaded =
            Config::from_toml_str(&text, no_env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded, Config::default());
        // Every key is in it, set and commented, in the table's order.
        for spec in KEYS {
            let line = format!("\n{} = {}\n", spec.key, default_text(&defaults(), spec));
            assert!(
                text.contains(&line),
                "{}.{} missing: {text}",
                spec.section,
                spec.key
            );
            let env = format!(
                " (env {})\n{} = ",
                env_name(spec.section, spec.key),
                spec.key
            );
            assert!(text.contains(&env), "{} has no comment: {text}", spec.key);
        }
        // A changed default shows: the file is generated, not written by hand.
        assert!(text.contains("\n[delivery]\n"), "{text}");
        assert!(text.contains("\nbatch_ms = 5000\n"), "{text}");
    }

    /// One row of docs/CONFIG.md's key table: `| `key` | `default` | `VARIABLE` | meaning |`.
    fn doc_rows() -> Vec<(String, String, String)> {
        include_str!("../../docs/CONFIG.md")
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                let code = |i: usize| {
                    cells
                        .get(i)
                        .map(|c| c.trim_matches('`').to_string())
                        .unwrap_or_default()
                };
                (code(0), code(1), code(2))
            })
            .collect()
    }

    #[test]
    fn config_md_lists_every_key_with_its_default_and_variable() {
        let defaults = defaults();
        let rows = doc_rows();
        for spec in KEYS {
            let name = if spec.section.is_empty() {
                spec.key.to_string()
            } else {
                format!("{}.{}", spec.section, spec.key)
            };
            let row = rows.iter().find(|r| r.0 == name);
            let Some((_, default, env)) = row else {
                panic!("docs/CONFIG.md has no row for {name}");
            };
            assert_eq!(
                default,
                &default_text(&defaults, spec),
                "default of {name} in docs/CONFIG.md"
            );
            assert_eq!(env, &env_name(spec.section, spec.key), "variable of {name}");
        }
        for (name, _, _) in &rows {
            let (section, key) = name.split_once('.').unwrap_or(("", name));
            assert!(
                KEYS.iter().any(|k| k.section == section && k.key == key),
                "docs/CONFIG.md lists {name}, which is not a key"
            );
        }
        assert_eq!(
            rows.len(),
            KEYS.len(),
            "a key listed twice in docs/CONFIG.md"
        );
    }

    #[test]
    fn unknown_variables_warn_with_the_closest_key() {
        let w = unknown_env_warning("SHARDCAST_DELIVERY_BATCH_MS").unwrap();
        assert!(
            w.ends_with("did you mean SHARDCAST_DELIVERY__BATCH_MS?"),
            "{w}"
        );
        assert!(w.contains("SHARDCAST_DELIVERY_BATCH_MS"), "{w}");
        let w = unknown_env_warning("SHARDCAST_LIMITS_MAX_CONECTIONS").unwrap();
        assert!(
            w.ends_with("did you mean SHARDCAST_LIMITS__MAX_CONNECTIONS?"),
            "{w}"
        );
        let w = unknown_env_warning("SHARDCAST_LISTN").unwrap();
        assert!(w.ends_with("did you mean SHARDCAST_LISTEN?"), "{w}");
        let w = unknown_env_warning("SHARDCAST_COLOUR").unwrap();
        assert!(w.contains("sets no configuration key (a key under"), "{w}");
        for other in OTHER_VARIABLES {
            assert_eq!(unknown_env_warning(other), None, "{other}");
        }
        // Through loading: the ignored variable becomes exactly this warning.
        let c = Config::from_toml_str(
            "",
            env(&[
                ("SHARDCAST_DELIVERY_BATCH_MS", "0"),
                ("SHARDCAST_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.delivery.batch_ms, 5000);
        assert_eq!(
            c.env_warnings(),
            vec![unknown_env_warning("SHARDCAST_DELIVERY_BATCH_MS").unwrap()]
        );
    }

    /// A key is marked an extension exactly when docs/PROTOCOL.md section 13 does not list
    /// it, and every key listed there is in the table.
    #[test]
    fn extension_keys_are_the_ones_outside_the_contract() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let listing =
            &doc[doc.find("## 13.").expect("section 13")..doc.find("## 14.").expect("section 14")];
        let mut section = "";
        let mut listed: Vec<(&str, &str)> = Vec::new();
        for line in listing.lines().filter_map(|l| l.strip_prefix("    ")) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
            } else if let Some((key, _)) = line.split_once(" = ") {
                listed.push((section, key.trim()));
            }
        }
        assert!(listed.len() > 30, "{listed:?}");
        for (section, key) in &listed {
            let spec = KEYS.iter().find(|k| k.section == *section && k.key == *key);
            assert!(
                spec.is_some_and(|k| !k.ext),
                "{section}.{key}: listed in section 13"
            );
        }
        for k in KEYS
            .iter()
            .filter(|k| !listed.contains(&(k.section, k.key)))
        {
            assert!(
                k.ext,
                "{}.{} is not in section 13: mark it an extension",
                k.section, k.key
            );
        }
    }
}
