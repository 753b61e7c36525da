//! The operator console's rows of the cluster's nodes (cluster mode): each node writes its
//! own row (connections, publications, deliveries, uptime; [`crate::api`]'s overview
//! row) into one Redis hash every [`PERIOD`] and reads everyone's back, so any node's
//! console shows one row per node.
//!
//! Owned by its own thread with its own connection ("shardcast-redis-nodes"), started when
//! the server hands the backend the row's source ([`Nodes::start`]): nothing on the
//! publish path or in the writer waits for it, and a Redis that is away only makes the
//! rows old (each carries its `at`). A row not renewed for [`FORGET_AFTER`] (a node that
//! stopped) is deleted by the next node that reads it, so the hash stays as small as the
//! cluster.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::Shared;

/// How often a node writes its row and reads the others'.
pub const PERIOD: Duration = Duration::from_secs(2);

/// A row older than this is a node that is gone: not shown, and deleted.
pub const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The row source the server hands over: this node's overview row, as JSON.
pub type RowSource = Box<dyn Fn() -> Value + Send + Sync>;

/// The rows as last read (see the module docs).
#[derive(Default)]
pub struct Nodes {
    rows: Mutex<Option<Vec<Value>>>,
}

impl Nodes {
    /// Every node's latest row, by `node`; `None` before the first read.
    pub fn rows(&self) -> Option<Vec<Value>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the thread; it stops with the backend (`shared.stopping`).
    pub fn start(self: &Arc<Self>, shared: Arc<Shared>, source: RowSource) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("shardcast-redis-nodes".into())
            .spawn(move || me.run(&shared, &source));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the console's node rows thread: the overview shows this node only");
        }
    }

    fn run(&self, shared: &Shared, source: &RowSource) {
        let key = format!("{}console:nodes", shared.keys.prefix);
        let mut con = None;
        while !shared.stopping.load(Ordering::Acquire) {
            if con.is_none() {
                con = shared
                    .client
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .ok();
                if let Some(c) = &mut con {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                }
            }
            if let Some(c) = &mut con {
                match self.exchange(c, &key, &shared.node_id, source()) {
                    Ok(rows) => *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = Some(rows),
                    // Reconnect at the next turn; the rows read before stay, with their `at`.
                    Err(_) => con = None,
                }
            }
            std::thread::sleep(PERIOD);
        }
        // A stopping node takes its row away (best effort: the others forget it anyway).
        if let Some(c) = &mut con {
            let _: redis::RedisResult<i64> =
                redis::cmd("HDEL").arg(&key).arg(&shared.node_id).query(c);
        }
    }

    /// Writes this node's row, reads every row, deletes the ones too old.
    fn exchange(
        &self,
        con: &mut redis::Connection,
        key: &str,
        node_id: &str,
        mut row: Value,
    ) -> redis::RedisResult<Vec<Value>> {
        let now = crate::time::unix_ms();
        row["at"] = Value::String(crate::time::rfc3339_ms(now));
        row["atMs"] = Value::from(now);
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(node_id)
            .arg(row.to_string())
            .query(con)?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(con)?;
        let forget = FORGET_AFTER.as_millis() as u64;
        let mut rows = Vec::new();
        for (node, text) in all {
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            let at = parsed
                .as_ref()
                .and_then(|r| r["atMs"].as_u64())
                .unwrap_or(0);
            match parsed {
                Some(r) if now.saturating_sub(at) <= forget => rows.push(r),
                _ => {
                    let _: i64 = redis::cmd("HDEL").arg(key).arg(&node).query(con)?;
                }
            }
        }
        rows.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
        Ok(rows)
    }
}
