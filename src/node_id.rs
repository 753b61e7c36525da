//! The node's stable name (`cluster.node_id`, PROTOCOL.md §13): given in the
//! configuration, or generated once and kept in `data_dir/node_id`, so a node keeps its
//! name across restarts. It labels every log line (a `node` span), every metric (the
//! global label `node`) and `/healthz`; in a cluster it tells the nodes apart.
//!
//! Resolved once at start-up, before logging and metrics are set up; read-only after.
//! Only this module reads or writes the file.

use std::path::Path;

/// The file under `data_dir` that keeps a generated id.
pub const FILE: &str = "node_id";

/// Longest id accepted: it appears in every metric series and log line.
const MAX_LEN: usize = 64;

/// The node's id: `configured` when not empty (checked), else the one kept in
/// `data_dir`, generated and written there the first time. Calling it again with the
/// same arguments gives the same id.
pub fn resolve(configured: &str, data_dir: &Path) -> Result<String, String> {
    if !configured.is_empty() {
        check(configured).map_err(|e| format!("cluster.node_id: {e}"))?;
        return Ok(configured.to_string());
    }
    let file = data_dir.join(FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let id = text.trim();
            check(id).map_err(|e| {
                format!(
                    "{}: {e} (delete the file to generate a new id, or set cluster.node_id)",
                    file.display()
                )
            })?;
            return Ok(id.to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
    let id = generate();
    // Written aside and renamed: a crash never leaves a half-written id behind.
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(id)
}

/// A new id: `node-` and 8 random hex digits (one in four billion to collide).
fn generate() -> String {
    let uuid = crate::auth::tickets::uuid_v4();
    format!("node-{}", &uuid[..8])
}

/// Ids are used as Prometheus label values, log fields and Redis key parts: letters,
/// digits, `-`, `_` and `.`, at most 64.
pub fn check(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > MAX_LEN {
        return Err(format!("is {} bytes long, at most {MAX_LEN}", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "'{id}' contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("shardcast-node-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = resolve("", &dir).unwrap();
        assert!(first.starts_with("node-") && first.len() == 13, "{first}");
        assert_eq!(resolve("", &dir).unwrap(), first);
        // A configured id wins and leaves the kept one alone.
        assert_eq!(resolve("edge-1", &dir).unwrap(), "edge-1");
        assert_eq!(resolve("", &dir).unwrap(), first);
        // A damaged file is an error naming it, not a silent new identity.
        std::fs::write(dir.join(FILE), "no spaces allowed\n").unwrap();
        let e = resolve("", &dir).unwrap_err();
        assert!(e.contains("node_id") && e.contains("' '"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn configured_ids_are_checked() {
        let dir = Path::new("/nonexistent");
        assert!(resolve("a b", dir)
            .unwrap_err()
            .starts_with("cluster.node_id: "));
        assert!(resolve(&"x".repeat(65), dir)
            .unwrap_err()
            .contains("at most 64"));
        assert_eq!(resolve("n1.eu-west_2", dir).unwrap(), "n1.eu-west_2");
    }
}
