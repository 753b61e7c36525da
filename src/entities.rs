//! Entities (PROTOCOL.md §8): the in-memory replica every read is served from, the
//! durable write that changes it, merge patch, and the list query with its opaque
//! cursor.
//!
//! Ownership: the [`Replica`] is written only by the sequencer ([`crate::ingest`]), under
//! its lock, after the write's group commit is durable; shards read it under its
//! `RwLock` (REST `GET`), and so do the offload threads for lists and live-query
//! snapshots, which copy a collection's states out under the lock and scan the copy. So
//! a reader never sees a state that a crash could take back, and the replica is never
//! behind a publication a shard has received: a snapshot taken at replica seq `S` plus every entity publication with
//! `seq > S` is exactly the current state (the live-query seam, PROTOCOL-NOTES.md).
//!
//! Writes are carried out by the backend (the local one: `backend::local::EntityJob`, on
//! the store's writer thread); this module only defines them. With Redis (the cluster
//! issue) the replica is the same type, fed by the stream instead.

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::filter::{Filter, OrderBy};
use crate::protocol::{validate_path, ErrorCode, Refusal};
use crate::publication::EntityChange;

/// Default and largest `limit` of a list (PROTOCOL.md §8).
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Checks a collection name or an entity id: one path segment (PROTOCOL.md §4), not a
/// system name.
pub fn validate_segment(what: &str, s: &str) -> Result<(), Refusal> {
    if s.starts_with('$') || s.contains('/') || validate_path(s).is_err() {
        return Err(Refusal::new(
            ErrorCode::InvalidPath,
            format!(
                "{what} '{}' is not a valid path segment (1 to 512 of A-Z a-z 0-9 _ . : @ -)",
                crate::protocol::truncate(s, 64)
            ),
        ));
    }
    Ok(())
}

/// RFC 7386 JSON merge patch: `patch` applied to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.shift_remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// One collection's entities. Dense, so a scan (lists, live queries) walks one array of
/// pointers in order rather than a hash table's scattered slots: measured on 100k
/// entities, that and the bounded heap in [`Replica::query`] took a filtered, ordered,
/// capped query from ~95 ms to the figure in docs/PERFORMANCE.md.
#[derive(Default)]
struct Collection {
    states: Vec<Arc<Value>>,
    /// `ids[i]` is the id of `states[i]`.
    ids: Vec<Box<str>>,
    /// `versions[i]` is the `seq` of the write that left `states[i]` (or the `seq` it was
    /// loaded at): a change is applied only over an older version.
    versions: Vec<u64>,
    /// id → position in `states`.
    at: HashMap<Box<str>, usize>,
}

impl Collection {
    fn get(&self, id: &str) -> Option<&Arc<Value>> {
        self.at.get(id).map(|&i| &self.states[i])
    }

    fn version(&self, id: &str) -> Option<u64> {
        self.at.get(id).map(|&i| self.versions[i])
    }

    fn insert(&mut self, id: &str, state: Arc<Value>, version: u64) {
        match self.at.get(id) {
            Some(&i) => {
                self.states[i] = state;
                self.versions[i] = version;
            }
            None => {
                self.at.insert(id.into(), self.states.len());
                self.states.push(state);
                self.ids.push(id.into());
                self.versions.push(version);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(i) = self.at.remove(id) else { return };
        self.states.swap_remove(i);
        self.ids.swap_remove(i);
        self.versions.swap_remove(i);
        if let Some(moved) = self.ids.get(i) {
            self.at.insert(moved.clone(), i);
        }
    }

    fn len(&self) -> usize {
        self.states.len()
    }

    fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// A candidate of a query's top: its sort key ([`OrderBy::sort_key`]), read once.
struct Ranked<'a> {
    key: Vec<Option<&'a Value>>,
    order: &'a OrderBy,
    state: &'a Arc<Value>,
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == CmpOrdering::Equal
    }
}
impl Eq for Ranked<'_> {}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked<'_> {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.order.compare_keys(&self.key, &o.key)
    }
}

#[derive(Default)]
struct ReplicaInner {
    /// The `seq` of the newest change applied.
    applied_seq: u64,
    collections: HashMap<Box<str>, Collection>,
}

/// Every entity's current state. See the module docs for who writes it.
#[derive(Default)]
pub struct Replica {
    inner: RwLock<ReplicaInner>,
}

/// A page of a list query.
#[derive(Debug)]
pub struct Page {
    pub data: Vec<Arc<Value>>,
    pub total: usize,
    /// More matches follow this page.
    pub more: bool,
}

impl Replica {
    fn read(&self) -> RwLockReadGuard<'_, ReplicaInner> {
        // Writers apply one change at a time; a panic mid-apply cannot leave a torn map.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Start-up (or a cluster node filling its replica from Redis): an entity as
    /// recovered, at `version` (the `seq` of its last write, or any `seq` at least that:
    /// the one the snapshot was taken at). Moves the replica's `seq` up to it.
    pub fn load(&self, collection: &str, id: &str, state: Value, version: u64) {
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        w.applied_seq = w.applied_seq.max(version);
        w.collections
            .entry(collection.into())
            .or_default()
            .insert(id, Arc::new(state), version);
    }

    /// Forgets every entity and the replica's `seq` (a cluster node whose Redis lost its
    /// data loads again from scratch).
    pub fn reset(&self) {
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *w = ReplicaInner::default();
    }

    /// The applier, in `seq` order: applies a durable change as `seq`, unless the entity
    /// already holds a version at least as new (a change read again after a snapshot
    /// that already had it); whether it was applied. The replica's `seq` moves to `seq`
    /// either way.
    pub fn apply(&self, change: &EntityChange, seq: u64) -> bool {
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        w.applied_seq = w.applied_seq.max(seq);
        let held = w
            .collections
            .get(&*change.collection)
            .and_then(|c| c.version(&change.id));
        if held.is_some_and(|v| v >= seq) {
            return false;
        }
        match &change.after {
            Some(state) => {
                w.collections
                    .entry(change.collection.clone())
                    .or_default()
                    .insert(&change.id, state.clone(), seq);
            }
            None => {
                if let Some(c) = w.collections.get_mut(&change.collection) {
                    c.remove(&change.id);
                    if c.is_empty() {
                        w.collections.remove(&change.collection);
                    }
                }
            }
        }
        true
    }

    pub fn get(&self, collection: &str, id: &str) -> Option<Arc<Value>> {
        self.read().collections.get(collection)?.get(id).cloned()
    }

    /// An entity's state and version (the `seq` of the write that left it).
    pub fn get_versioned(&self, collection: &str, id: &str) -> Option<(Arc<Value>, u64)> {
        let r = self.read();
        let c = r.collections.get(collection)?;
        Some((c.get(id)?.clone(), c.version(id)?))
    }

    /// The replica's `seq`: every change up to it is applied.
    pub fn applied_seq(&self) -> u64 {
        self.read().applied_seq
    }

    /// Entities in all collections.
    pub fn len(&self) -> usize {
        self.read().collections.values().map(|c| c.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entities of `collection` matching `filter`, in `order`, strictly after
    /// `after` (a cursor position), at most `limit`; `total` counts every match.
    /// Returns the replica's `seq` too: the page is exactly the state at that `seq`.
    pub fn query(
        &self,
        collection: &str,
        filter: Option<&Filter>,
        order: &OrderBy,
        after: Option<&Value>,
        limit: usize,
    ) -> (Page, u64) {
        let r = self.read();
        let seq = r.applied_seq;
        let Some(c) = r.collections.get(collection) else {
            return (
                Page {
                    data: Vec::new(),
                    total: 0,
                    more: false,
                },
                seq,
            );
        };
        // The states at `seq`, taken out under the read lock (a pointer copy each, ~1 ms
        // for 150k) and scanned without it: a write waiting for the write lock would hold
        // the sequencer, and every shard's publishes behind it, for the whole scan.
        let states: Vec<Arc<Value>> = c.states.clone();
        drop(r);
        // The top `limit` + 1 (to know whether more follow) in a bounded max-heap: each
        // match is compared with the heap's worst, which stays in cache, instead of
        // sorting every match.
        let want = limit.saturating_add(1);
        let mut after_key = Vec::new();
        if let Some(a) = after {
            order.sort_key(a, &mut after_key);
        }
        let mut heap: std::collections::BinaryHeap<Ranked<'_>> =
            std::collections::BinaryHeap::with_capacity(want.min(states.len()) + 1);
        let mut key: Vec<Option<&Value>> = Vec::with_capacity(order.keys.len() + 1);
        let mut total = 0usize;
        for v in &states {
            if filter.is_some_and(|f| !f.matches(v)) {
                continue;
            }
            total += 1;
            key.clear();
            order.sort_key(v, &mut key);
            if after.is_some() && order.compare_keys(&key, &after_key) != CmpOrdering::Greater {
                continue;
            }
            if heap.len() >= want {
                match heap.peek() {
                    Some(worst) if order.compare_keys(&key, &worst.key) == CmpOrdering::Less => {
                        heap.pop();
                    }
                    _ => continue,
                }
            }
            heap.push(Ranked {
                key: key.clone(),
                order,
                state: v,
            });
        }
        let mut hits = heap.into_sorted_vec();
        let more = hits.len() > limit;
        hits.truncate(limit);
        (
            Page {
                data: hits.into_iter().map(|r| r.state.clone()).collect(),
                total,
                more,
            },
            seq,
        )
    }
}

/// What a write does.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// The whole new state (an object).
    Put(Map<String, Value>),
    /// A merge patch (an object).
    Patch(Map<String, Value>),
    Delete,
}

/// An entity read (`GET` of one, or a list), checked, to be run on a replica by the shard
/// that read it: at once on a single node, or once a cluster node's replica reflects
/// every write answered before the read arrived
/// ([`crate::backend::Backend::read_entities`]). It answers a status and a JSON body.
pub struct EntityRead {
    f: Box<ReadFn>,
    /// A list: a scan of the whole collection, run off the shard ([`crate::offload`]);
    /// a `GET` of one entity is a lookup, run where it is.
    scan: bool,
}

/// What an [`EntityRead`] runs: the replica in, the REST status and JSON body out.
type ReadFn = dyn FnOnce(&Replica) -> (u16, Vec<u8>) + Send;

impl EntityRead {
    /// A lookup (one entity).
    pub fn new(f: impl FnOnce(&Replica) -> (u16, Vec<u8>) + Send + 'static) -> Self {
        EntityRead {
            f: Box::new(f),
            scan: false,
        }
    }

    /// A list (a scan of the collection).
    pub fn list(f: impl FnOnce(&Replica) -> (u16, Vec<u8>) + Send + 'static) -> Self {
        EntityRead {
            f: Box::new(f),
            scan: true,
        }
    }

    /// Whether it scans a collection (and so runs off the shard).
    pub fn is_scan(&self) -> bool {
        self.scan
    }

    /// Runs the read on `replica`: the REST status and JSON body.
    pub fn run(self, replica: &Replica) -> (u16, Vec<u8>) {
        (self.f)(replica)
    }
}

impl std::fmt::Debug for EntityRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntityRead")
    }
}

/// One entity write as the REST API parsed it.
#[derive(Debug, Clone)]
pub struct EntityWrite {
    pub collection: String,
    pub id: String,
    pub op: WriteOp,
}

/// What a write does to an entity's state, decided by [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `created`, `updated` or `deleted`: the publication's `eventType` and the answer's
    /// `op`.
    pub event_type: &'static str,
    /// The new state (`None`: deleted), with `id` set.
    pub after: Option<Arc<Value>>,
}

/// The write decision, a pure function of the entity's current state and the write,
/// shared by every backend: the local one applies it under its group commit, a cluster
/// one against the state and version it read, retrying if the version moved. `PUT`
/// creates or replaces (the body is the whole state); `PATCH` merges (RFC 7386) into an
/// existing entity; `DELETE` removes one. `PATCH` or `DELETE` of a missing entity is 404
/// `NOT_FOUND`. The body moves into the new state: no copy of it.
pub fn decide(
    current: Option<&Value>,
    collection: &str,
    id: &str,
    op: WriteOp,
) -> Result<Decision, Refusal> {
    let missing = || {
        Refusal::new(
            ErrorCode::NotFound,
            format!("no entity '{id}' in collection '{collection}'"),
        )
    };
    let with_id = |mut m: Map<String, Value>| {
        m.insert("id".into(), Value::String(id.to_string()));
        Arc::new(Value::Object(m))
    };
    Ok(match op {
        WriteOp::Put(state) => Decision {
            event_type: if current.is_some() {
                "updated"
            } else {
                "created"
            },
            after: Some(with_id(state)),
        },
        WriteOp::Patch(patch) => {
            let mut v = current.ok_or_else(missing)?.clone();
            merge_patch(&mut v, &Value::Object(patch));
            let Value::Object(m) = v else {
                return Err(missing());
            };
            Decision {
                event_type: "updated",
                after: Some(with_id(m)),
            }
        }
        WriteOp::Delete => {
            current.ok_or_else(missing)?;
            Decision {
                event_type: "deleted",
                after: None,
            }
        }
    })
}

/// The answer to a write: 200 `{"seq","op"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    pub seq: u64,
    pub op: &'static str,
}

/// Store key of an entity: `collection/id` (both single path segments, so unambiguous).
pub fn entity_key(collection: &str, id: &str) -> String {
    format!("{collection}/{id}")
}

/// A list cursor: where the previous page ended, for the same query only. Opaque to
/// clients: base64url of `{"q":<query hash>,"p":<position>}` and an HMAC over it, so a
/// forged or edited cursor is refused (400) rather than silently paging elsewhere.
#[derive(Clone)]
pub struct Cursors {
    key: Vec<u8>,
}

impl Cursors {
    /// `secret`: stable across restarts (derived from the node's JWT secret), so a
    /// client paging through a restart keeps going.
    pub fn new(secret: &[u8]) -> Cursors {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"shardcast list cursor\0");
        h.update(secret);
        Cursors {
            key: h.finalize().to_vec(),
        }
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(body);
        m.finalize().into_bytes()[..16].to_vec()
    }

    /// The cursor after entity `last` of a page of the query `query` (its canonical
    /// text: filter and orderBy).
    pub fn encode(&self, query: &str, order: &OrderBy, last: &Value) -> String {
        let mut pos = Map::new();
        for (field, _) in &order.keys {
            if let Some(v) = field.get(last) {
                set_path(&mut pos, &field.to_string(), v.clone());
            }
        }
        if let Some(id) = last.get("id") {
            pos.insert("id".into(), id.clone());
        }
        let body =
            serde_json::to_vec(&json!({"q": query_hash(query), "p": pos})).unwrap_or_default();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b64.encode(&body), b64.encode(self.mac(&body)))
    }

    /// The position a cursor names, if it is one of ours and for this query.
    pub fn decode(&self, query: &str, cursor: &str) -> Result<Value, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (body, mac) = cursor
            .split_once('.')
            .ok_or("cursor is not one this server issued")?;
        let body = b64
            .decode(body)
            .map_err(|_| "cursor is not one this server issued")?;
        let mac = b64
            .decode(mac)
            .map_err(|_| "cursor is not one this server issued")?;
        let want = self.mac(&body);
        // Constant-time compare: a cursor must not be forgeable byte by byte.
        if mac.len() != want.len() || mac.iter().zip(&want).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0
        {
            return Err("cursor is not one this server issued (forged or corrupted)".into());
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| "cursor is corrupted")?;
        if v.get("q").and_then(Value::as_str) != Some(query_hash(query).as_str()) {
            return Err(
                "cursor belongs to another query (its filter or orderBy differ): start again without it"
                    .into(),
            );
        }
        Ok(v.get("p").cloned().unwrap_or(Value::Null))
    }
}

fn query_hash(query: &str) -> String {
    use sha2::Digest;
    let d = Sha256::digest(query.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets `a.b.c` in an object, making the intermediate objects.
fn set_path(obj: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.into(), v);
        }
        Some((head, rest)) => {
            let e = obj
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !e.is_object() {
                *e = Value::Object(Map::new());
            }
            if let Value::Object(m) = e {
                set_path(m, rest, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386 appendix A.
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"b"}"#, r#"["c"]"#, r#"["c"]"#),
            (r#"{"a":"foo"}"#, "null", "null"),
            (r#"{"a":"foo"}"#, r#""bar""#, r#""bar""#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ];
        for (t, p, want) in cases {
            let mut t: Value = serde_json::from_str(t).unwrap();
            merge_patch(&mut t, &serde_json::from_str(p).unwrap());
            assert_eq!(t, serde_json::from_str::<Value>(want).unwrap(), "{p}");
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        }
    }

    #[test]
    fn the_write_decision_depends_only_on_the_state_and_the_write() {
        let put = |v| WriteOp::Put(obj(v));
        let d = decide(None, "c", "x", put(json!({"a": 1}))).unwrap();
        assert_eq!(d.event_type, "created");
        assert_eq!(*d.after.unwrap(), json!({"a": 1, "id": "x"}));
        let cur = json!({"a": 1, "b": {"c": 2}, "id": "x"});
        let d = decide(Some(&cur), "c", "x", put(json!({"z": 0, "id": "other"}))).unwrap();
        // PUT replaces the whole state, and `id` is always the URL's.
        assert_eq!(
            (d.event_type, &*d.after.unwrap()),
            ("updated", &json!({"z": 0, "id": "x"}))
        );
        let d = decide(
            Some(&cur),
            "c",
            "x",
            WriteOp::Patch(obj(json!({"b": {"c": null, "d": 3}}))),
        )
        .unwrap();
        assert_eq!(*d.after.unwrap(), json!({"a": 1, "b": {"d": 3}, "id": "x"}));
        let d = decide(Some(&cur), "c", "x", WriteOp::Delete).unwrap();
        assert_eq!((d.event_type, d.after), ("deleted", None));
        for op in [WriteOp::Patch(obj(json!({"a": 2}))), WriteOp::Delete] {
            let r = decide(None, "c", "x", op).unwrap_err();
            assert_eq!(r.code, ErrorCode::NotFound);
            assert_eq!(r.message, "no entity 'x' in collection 'c'");
        }
    }

    fn change(id: &str, after: Option<Value>) -> EntityChange {
        EntityChange {
            collection: "c".into(),
            id: id.into(),
            before: None,
            after: after.map(Arc::new),
        }
    }

    #[test]
    fn changes_apply_only_over_older_versions() {
        let r = Replica::default();
        // Loaded from a snapshot taken at seq 10.
        r.load("c", "a", json!({"v": 1}), 10);
        assert_eq!(r.applied_seq(), 10);
        // A change the snapshot already had (read again from the stream) is skipped...
        assert!(!r.apply(&change("a", Some(json!({"v": 0}))), 9));
        assert!(!r.apply(&change("a", None), 10));
        assert_eq!(
            r.get_versioned("c", "a"),
            Some((Arc::new(json!({"v": 1})), 10))
        );
        // ...a newer one applies and carries its seq as the version.
        assert!(r.apply(&change("a", Some(json!({"v": 2}))), 11));
        assert_eq!(
            r.get_versioned("c", "a"),
            Some((Arc::new(json!({"v": 2})), 11))
        );
        assert!(r.apply(&change("b", Some(json!({"v": 3}))), 12));
        assert!(r.apply(&change("a", None), 13));
        assert_eq!(r.get("c", "a"), None);
        assert_eq!(r.applied_seq(), 13);
        // Versions follow entities through the dense layout's swap-removes.
        assert_eq!(r.get_versioned("c", "b").map(|(_, v)| v), Some(12));
        r.reset();
        assert!(r.is_empty());
        assert_eq!(r.applied_seq(), 0);
    }

    fn entity(id: &str, n: i64) -> Value {
        json!({"id": id, "n": n, "even": n % 2 == 0})
    }

    #[test]
    fn query_pages_in_order_with_totals() {
        let r = Replica::default();
        for i in 0..25 {
            r.load("c", &format!("e{i:02}"), entity(&format!("e{i:02}"), i), 0);
        }
        let order = OrderBy::parse("n desc").unwrap();
        let f = Filter::parse("even").unwrap();
        let (p, _) = r.query("c", Some(&f), &order, None, 5);
        assert_eq!(p.total, 13);
        assert!(p.more);
        let ns: Vec<i64> = p.data.iter().map(|v| v["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [24, 22, 20, 18, 16]);
        let (p2, _) = r.query("c", Some(&f), &order, Some(&p.data[4]), 100);
        assert_eq!(p2.data.len(), 8);
        assert!(!p2.more);
        assert_eq!(p2.data[0]["n"], 14);
        let (none, _) = r.query("nope", None, &order, None, 5);
        assert_eq!((none.total, none.data.len()), (0, 0));
    }

    #[test]
    fn cursors_refuse_forgery_and_other_queries() {
        let c = Cursors::new(b"secret");
        let order = OrderBy::parse("n desc, name").unwrap();
        let last = json!({"id": "x", "n": 3, "name": "a", "other": 1});
        let cur = c.encode("q1", &order, &last);
        let pos = c.decode("q1", &cur).unwrap();
        assert_eq!(pos, json!({"n": 3, "name": "a", "id": "x"}));
        assert!(c.decode("q2", &cur).unwrap_err().contains("another query"));
        let mut forged = cur.clone().into_bytes();
        forged[3] ^= 1;
        assert!(c
            .decode("q1", std::str::from_utf8(&forged).unwrap())
            .is_err());
        assert!(c.decode("q1", "garbage").is_err());
        assert!(Cursors::new(b"other").decode("q1", &cur).is_err());
    }

    #[test]
    fn segments() {
        assert!(validate_segment("id", "acc_7:x@y.z-1").is_ok());
        for bad in ["", "a/b", "$sys", "a b", &"x".repeat(513)] {
            assert_eq!(
                validate_segment("id", bad).unwrap_err().code,
                ErrorCode::InvalidPath
            );
        }
    }
}
