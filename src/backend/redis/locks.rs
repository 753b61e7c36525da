//! Locks across nodes (PROTOCOL.md §10, §14), this node's side. The lock itself, its
//! fencing counter and its wait queue are in Redis (`lock.lua`, `unlock.lua`): one holder
//! cluster-wide, tokens from one counter, waiters first come first served whichever node
//! they are on. Here: which locks this node's connections hold (released when they
//! disconnect) and which of their requests wait; a waiting request is retried every
//! [`RETRY`] until the lock is its (it is then at the head of the queue and the lock is
//! free) or its `waitMs` runs out. A holder on a node that died keeps the lock until its
//! `ttlMs` runs out (the key expires).
//!
//! Owned by the writer thread ([`super::writer`]), which sends the scripts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::router::{Answer, ReplyTo};
use crate::services::Addr;

pub(super) const LOCK_LUA: &str = include_str!("lock.lua");
pub(super) const UNLOCK_LUA: &str = include_str!("unlock.lua");

/// How often a waiting request asks again (the hand-over delay after an unlock or expiry
/// is at most this).
pub(super) const RETRY: Duration = Duration::from_millis(20);

/// A request of this node waiting for a lock.
pub(super) struct Waiter {
    pub at: Addr,
    pub request_id: Option<Value>,
    pub name: String,
    pub ttl_ms: u64,
    /// When its `waitMs` runs out (ms since the epoch).
    pub deadline: u64,
}

/// This node's side of the locks (see the module docs).
#[derive(Default)]
pub(super) struct NodeLocks {
    /// Locks each connection holds.
    pub held: HashMap<Addr, HashSet<String>>,
    /// Waiting requests, in the order they came.
    pub waiting: Vec<Waiter>,
}

/// A connection's name as a lock holder, unique in the cluster.
pub(super) fn holder_id(node_id: &str, at: Addr) -> String {
    format!("{node_id}/{}/{}/{}", at.shard, at.conn, at.gen)
}

/// Where a connection's answers go.
pub(super) fn reply_to(at: Addr) -> ReplyTo {
    ReplyTo {
        shard: at.shard as usize,
        conn: at.conn,
        gen: at.gen,
        req: 0,
    }
}

/// `lockResult`: granted with a fencing token until `expires_at`, or not acquired.
pub(super) fn lock_result(
    name: &str,
    request_id: &Option<Value>,
    granted: Option<(u64, u64)>,
) -> Answer {
    let msg = match granted {
        Some((token, expires_at)) => json!({"type": "lockResult", "name": name, "acquired": true,
            "fencingToken": token, "expiresAt": crate::time::rfc3339_ms(expires_at)}),
        None => json!({"type": "lockResult", "name": name, "acquired": false}),
    };
    Answer::Ws(crate::protocol::to_bytes(
        &crate::services::with_request_id(msg, request_id),
    ))
}

/// `unlockResult`.
pub(super) fn unlock_result(name: &str, request_id: &Option<Value>, released: bool) -> Answer {
    let msg = json!({"type": "unlockResult", "name": name, "released": released});
    Answer::Ws(crate::protocol::to_bytes(
        &crate::services::with_request_id(msg, request_id),
    ))
}
