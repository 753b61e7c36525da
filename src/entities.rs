//! Entities (PROTOCOL.md §8): the in-memory replica every read is served from, the
//! durable write that changes it, merge patch, and the list query with its opaque
//! cursor.
//!
//! Ownership: the [`Replica`] is written only by the sequencer ([`crate::ingest`]), under
//! its lock, after the write's group commit is durable; shards read it under its
//! `RwLock` (REST `GET` and lists, live-query snapshots). So a reader never sees a state
//! that a crash could take back, and the replica is never behind a publication a shard
//! has received: a snapshot taken at replica seq `S` plus every entity publication with
//! `seq > S` is exactly the current state (the live-query seam, PROTOCOL-NOTES.md).
//!
//! An [`EntityJob`] runs on the store's writer thread: it reads the entity's current
//! state (from this group's earlier writes, else the replica), decides the operation,
//! stages the new state, and once the commit is durable hands the change to the
//! sequencer and the answer to the requesting shard. With Redis (the cluster issue) the
//! replica is the same type, fed by the stream instead.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::filter::{Filter, OrderBy};
use crate::ingest::{EntityChange, Ingest};
use crate::protocol::{validate_path, ErrorCode, Refusal};
use crate::router::{Answer, ReplyTo};
use crate::store::{Job, JobOutcome, StoreError, Table, WriteTx};

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

type Collection = HashMap<Box<str>, Arc<Value>>;

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

    /// Start-up: an entity as recovered from the store.
    pub fn load(&self, collection: &str, id: &str, state: Value) {
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        w.collections
            .entry(collection.into())
            .or_default()
            .insert(id.into(), Arc::new(state));
    }

    /// The sequencer, under its lock: applies a durable change as `seq`.
    pub fn apply(&self, change: &EntityChange, seq: u64) {
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        w.applied_seq = seq;
        match &change.after {
            Some(state) => {
                w.collections
                    .entry(change.collection.clone())
                    .or_default()
                    .insert(change.id.clone(), state.clone());
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
    }

    pub fn get(&self, collection: &str, id: &str) -> Option<Arc<Value>> {
        self.read().collections.get(collection)?.get(id).cloned()
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
        let mut total = 0usize;
        let mut hits: Vec<&Arc<Value>> = Vec::new();
        for v in c.values() {
            if filter.is_some_and(|f| !f.matches(v)) {
                continue;
            }
            total += 1;
            if after.is_some_and(|a| order.compare(v, a) != CmpOrdering::Greater) {
                continue;
            }
            hits.push(v);
        }
        // Top `limit` + 1 (to know whether more follow) without sorting everything.
        let want = limit.saturating_add(1);
        if hits.len() > want {
            hits.select_nth_unstable_by(want - 1, |a, b| order.compare(a, b));
            hits.truncate(want);
        }
        hits.sort_unstable_by(|a, b| order.compare(a, b));
        let more = hits.len() > limit;
        hits.truncate(limit);
        (
            Page {
                data: hits.into_iter().cloned().collect(),
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

/// One entity write as the REST API parsed it.
#[derive(Debug, Clone)]
pub struct EntityWrite {
    pub collection: String,
    pub id: String,
    pub op: WriteOp,
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

thread_local! {
    /// The states written by earlier jobs of the group being committed (writer thread
    /// only): the replica gets them only once the group is durable, but later writes of
    /// the same group must see them. Cleared by [`end_group`].
    static GROUP: RefCell<HashMap<String, Option<Arc<Value>>>> = RefCell::new(HashMap::new());
}

/// The store calls this once per group, after every job's `committed`.
pub fn end_group() {
    GROUP.with(|g| g.borrow_mut().clear());
}

/// What an [`EntityJob`] decided in `apply`.
struct Applied {
    event_type: &'static str,
    before: Option<Arc<Value>>,
    after: Option<Arc<Value>>,
}

/// One entity write on its way through a group commit.
pub struct EntityJob {
    pub write: EntityWrite,
    pub reply: ReplyTo,
    pub ingest: Arc<Ingest>,
    decided: Option<Result<Applied, (u16, Refusal)>>,
}

impl EntityJob {
    pub fn new(write: EntityWrite, reply: ReplyTo, ingest: Arc<Ingest>) -> EntityJob {
        EntityJob {
            write,
            reply,
            ingest,
            decided: None,
        }
    }

    fn decide(&self, tx: &mut WriteTx<'_>) -> Result<Applied, (u16, Refusal)> {
        let w = &self.write;
        let key = entity_key(&w.collection, &w.id);
        let current = GROUP
            .with(|g| g.borrow().get(&key).cloned())
            .unwrap_or_else(|| self.ingest.replica().get(&w.collection, &w.id));
        let missing = || {
            (
                404,
                Refusal::new(
                    ErrorCode::NotFound,
                    format!("no entity '{}' in collection '{}'", w.id, w.collection),
                ),
            )
        };
        let with_id = |mut m: Map<String, Value>| {
            m.insert("id".into(), Value::String(w.id.clone()));
            Arc::new(Value::Object(m))
        };
        let (event_type, after) = match &w.op {
            WriteOp::Put(state) => (
                if current.is_some() {
                    "updated"
                } else {
                    "created"
                },
                Some(with_id(state.clone())),
            ),
            WriteOp::Patch(patch) => {
                let cur = current.clone().ok_or_else(missing)?;
                let mut v = (*cur).clone();
                merge_patch(&mut v, &Value::Object(patch.clone()));
                let Value::Object(m) = v else {
                    return Err(missing());
                };
                ("updated", Some(with_id(m)))
            }
            WriteOp::Delete => {
                current.as_ref().ok_or_else(missing)?;
                ("deleted", None)
            }
        };
        let stored = match &after {
            Some(state) => {
                let bytes = serde_json::to_vec(&**state).map_err(|e| internal(e.to_string()))?;
                tx.put(Table::Entities, key.as_bytes(), &bytes)
            }
            None => tx.delete(Table::Entities, key.as_bytes()).map(|_| ()),
        };
        stored.map_err(|e: StoreError| internal(e.to_string()))?;
        GROUP.with(|g| g.borrow_mut().insert(key, after.clone()));
        Ok(Applied {
            event_type,
            before: current,
            after,
        })
    }
}

fn internal(m: String) -> (u16, Refusal) {
    (
        500,
        Refusal::new(ErrorCode::Internal, format!("store write failed: {m}")),
    )
}

fn refusal_answer(status: u16, r: &Refusal) -> Answer {
    Answer::Http {
        status,
        body: json!({"error": {"code": r.code.as_str(), "message": r.message}}),
    }
}

impl Job for EntityJob {
    fn apply(&mut self, tx: &mut WriteTx<'_>) -> Result<(), String> {
        let d = self.decide(tx);
        let r = match &d {
            Ok(_) => Ok(()),
            Err((_, r)) => Err(r.message.clone()),
        };
        self.decided = Some(d);
        r
    }

    fn committed(self: Box<Self>, outcome: JobOutcome) {
        let this = *self;
        let answer = match (outcome, this.decided) {
            (JobOutcome::Durable, Some(Ok(a))) => {
                let seq = this.ingest.publish_entity(
                    a.event_type,
                    EntityChange {
                        collection: this.write.collection.as_str().into(),
                        id: this.write.id.as_str().into(),
                        before: a.before,
                        after: a.after,
                    },
                );
                crate::metrics::entity_write(a.event_type);
                Answer::Http {
                    status: 200,
                    body: json!({"seq": seq, "op": a.event_type}),
                }
            }
            (JobOutcome::Refused(_), Some(Err((status, r)))) => refusal_answer(status, &r),
            (JobOutcome::Failed(e), _) => {
                tracing::error!("entity write not committed: {e}");
                refusal_answer(
                    500,
                    &Refusal::new(ErrorCode::Internal, format!("store commit failed: {e}")),
                )
            }
            (JobOutcome::Refused(m), _) => {
                refusal_answer(500, &Refusal::new(ErrorCode::Internal, m))
            }
            (JobOutcome::Durable, _) => refusal_answer(
                500,
                &Refusal::new(ErrorCode::Internal, "entity write was not applied"),
            ),
        };
        this.ingest.router().answer(this.reply, answer);
    }
}

/// A list cursor: where the previous page ended, for the same query only. Opaque to
/// clients: base64url of `{"q":<query hash>,"p":<position>}` and an HMAC over it, so a
/// forged or edited cursor is refused (400) rather than silently paging elsewhere.
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

    fn entity(id: &str, n: i64) -> Value {
        json!({"id": id, "n": n, "even": n % 2 == 0})
    }

    #[test]
    fn query_pages_in_order_with_totals() {
        let r = Replica::default();
        for i in 0..25 {
            r.load("c", &format!("e{i:02}"), entity(&format!("e{i:02}"), i));
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
