//! The shard's index of filtered subscriptions (PROTOCOL.md §4, §6): path → the
//! subscriptions with a `filter` on exactly that path, and for each publication the
//! verdict per subscription: an `event`, a `subscriptionRefresh` (an entity that matched
//! before the write and does not after), or nothing.
//!
//! Owned by one shard, beside [`super::index::Index`] (which holds the unfiltered ones
//! and is untouched by filters, so fan-out without filters costs what it did). Many
//! subscriptions with equality filters on one path (100k users each watching
//! `assigneeId == '<me>'`) must not cost one evaluation each per write: a filter whose
//! conjunction has a `field == literal` (or `field in [...]`) term is filed under that
//! field and literal, and a publication looks up only the subscriptions filed under the
//! value its data has there (and, for a refresh, the value the entity had before). The
//! full filter is then evaluated on those candidates alone.

use std::rc::Rc;

use hashbrown::HashMap;
use serde_json::Value;

use crate::filter::{FieldPath, Filter, IndexKey};
use crate::protocol::path_prefixes;
use crate::publication::Publication;

use super::index::EventSet;

/// One filtered subscription as the index sees it.
#[derive(Clone, Debug)]
pub struct FilteredEntry {
    pub conn: u32,
    pub sub: u32,
    pub events: EventSet,
    pub filter: Rc<Filter>,
}

impl FilteredEntry {
    fn wants(&self, event_type: &str) -> bool {
        match &self.events {
            None => true,
            Some(set) => set.iter().any(|t| **t == *event_type),
        }
    }
}

/// The subscriptions of one path.
#[derive(Default, Debug)]
struct PathSubs {
    /// Filters without an indexable term: evaluated for every publication.
    scan: Vec<FilteredEntry>,
    /// Field → literal → subscriptions whose filter requires `field == literal`.
    terms: HashMap<FieldPath, HashMap<IndexKey, Vec<FilteredEntry>>>,
    len: usize,
}

/// See the module docs.
#[derive(Default, Debug)]
pub struct FilteredIndex {
    by_path: HashMap<Box<str>, PathSubs>,
    len: usize,
    /// Filter evaluations so far (the `shardcast_filter_evaluations_total` counter).
    pub evaluations: u64,
}

/// What a publication means for one filtered subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Event,
    Refresh,
    Nothing,
}

impl FilteredIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, path: &str, entry: FilteredEntry) {
        let subs = self.by_path.entry_ref(path).or_default();
        match entry.filter.index_term() {
            Some((field, keys)) => {
                let by_key = subs.terms.entry(field.clone()).or_default();
                for k in keys {
                    by_key.entry(k).or_default().push(entry.clone());
                }
            }
            None => subs.scan.push(entry),
        }
        subs.len += 1;
        self.len += 1;
    }

    /// Removes subscription `sub` of connection `conn` on `path` (with the filter it was
    /// filed with).
    pub fn remove(&mut self, path: &str, conn: u32, sub: u32, filter: &Filter) {
        let Some(subs) = self.by_path.get_mut(path) else {
            return;
        };
        let hit = |e: &FilteredEntry| e.conn == conn && e.sub == sub;
        let removed = match filter.index_term() {
            Some((field, keys)) => {
                let mut removed = false;
                if let Some(by_key) = subs.terms.get_mut(field) {
                    for k in keys {
                        if let Some(v) = by_key.get_mut(&k) {
                            if let Some(i) = v.iter().position(hit) {
                                v.swap_remove(i);
                                removed = true;
                            }
                            if v.is_empty() {
                                by_key.remove(&k);
                            }
                        }
                    }
                    if by_key.is_empty() {
                        subs.terms.remove(field);
                    }
                }
                removed
            }
            None => match subs.scan.iter().position(hit) {
                Some(i) => {
                    subs.scan.swap_remove(i);
                    true
                }
                None => false,
            },
        };
        if removed {
            subs.len -= 1;
            self.len -= 1;
        }
        if subs.len == 0 {
            self.by_path.remove(path);
        }
    }

    /// Appends `(conn, sub)` to `events` for every filtered subscription the publication
    /// is an event for, and to `refreshes` for every one it is a refresh for.
    pub fn collect(
        &mut self,
        p: &Publication,
        events: &mut Vec<(u32, u32)>,
        refreshes: &mut Vec<(u32, u32)>,
    ) {
        // The entity's state before the write: only an update can make one leave.
        let before: Option<&Value> = p
            .entity
            .as_ref()
            .filter(|c| c.after.is_some())
            .and_then(|c| c.before.as_deref());
        let mut evaluations = 0u64;
        let mut judge = |e: &FilteredEntry, shown: &Value, event_ok: bool, refresh_ok: bool| {
            if !e.wants(&p.event_type) {
                return Verdict::Nothing;
            }
            evaluations += 1;
            if e.filter.matches(shown) {
                // A subscription that matches now is always filed under the value now
                // (its term holds), so the events pass has it.
                return if event_ok {
                    Verdict::Event
                } else {
                    Verdict::Nothing
                };
            }
            if let (true, Some(b)) = (refresh_ok, before) {
                evaluations += 1;
                if e.filter.matches(b) {
                    return Verdict::Refresh;
                }
            }
            Verdict::Nothing
        };
        let mut push = |v: Verdict, e: &FilteredEntry| match v {
            Verdict::Event => events.push((e.conn, e.sub)),
            Verdict::Refresh => refreshes.push((e.conn, e.sub)),
            Verdict::Nothing => {}
        };
        for prefix in path_prefixes(&p.path) {
            let Some(subs) = self.by_path.get(prefix) else {
                continue;
            };
            // Parsed here, under a path a filtered subscription watches, and not before:
            // parsing costs more than the whole fan-out of a small publication, and the
            // parsed value stays with the publication while the history window holds it
            // (in the soak: ~90 MiB of parsed values no filter was ever asked about).
            let shown = p.data();
            for e in &subs.scan {
                push(judge(e, shown, true, true), e);
            }
            for (field, by_key) in &subs.terms {
                let now_key = IndexKey::of(field.get(shown));
                let was_key = before.and_then(|b| IndexKey::of(field.get(b)));
                if now_key.is_some() && now_key == was_key {
                    for e in now_key
                        .as_ref()
                        .and_then(|k| by_key.get(k))
                        .into_iter()
                        .flatten()
                    {
                        push(judge(e, shown, true, true), e);
                    }
                    continue;
                }
                // Different values before and after: events come from the subscriptions
                // filed under the new value, refreshes from those under the old one. A
                // subscription filed under both (`in`) is judged once for each role.
                for e in now_key
                    .as_ref()
                    .and_then(|k| by_key.get(k))
                    .into_iter()
                    .flatten()
                {
                    push(judge(e, shown, true, false), e);
                }
                for e in was_key
                    .as_ref()
                    .and_then(|k| by_key.get(k))
                    .into_iter()
                    .flatten()
                {
                    push(judge(e, shown, false, true), e);
                }
            }
        }
        self.evaluations += evaluations;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::publication::EntityChange;

    fn entity_pub(before: Option<Value>, after: Option<Value>) -> Publication {
        let shown = after.clone().or(before.clone()).unwrap();
        let mut p = Publication::new(1, "acc/a1", "updated", &shown.to_string(), 0);
        p.entity = Some(Box::new(EntityChange {
            collection: "acc".into(),
            id: "a1".into(),
            before: before.map(Arc::new),
            after: after.map(Arc::new),
        }));
        p
    }

    fn entry(conn: u32, f: &str) -> FilteredEntry {
        FilteredEntry {
            conn,
            sub: conn,
            events: None,
            filter: Rc::new(Filter::parse(f).unwrap()),
        }
    }

    #[test]
    fn refresh_when_an_entity_leaves() {
        let mut ix = FilteredIndex::default();
        ix.insert("acc", entry(1, "ws == 'denials'"));
        ix.insert("acc", entry(2, "ws == 'none'"));
        ix.insert("acc", entry(3, "n > 1"));
        let p = entity_pub(
            Some(json!({"id":"a1","ws":"denials","n":2})),
            Some(json!({"id":"a1","ws":"none","n":0})),
        );
        let (mut ev, mut rf) = (Vec::new(), Vec::new());
        ix.collect(&p, &mut ev, &mut rf);
        assert_eq!(ev, [(2, 2)]);
        rf.sort();
        assert_eq!(rf, [(1, 1), (3, 3)]);
    }

    #[test]
    fn data_is_parsed_only_under_a_filtered_path() {
        let mut ix = FilteredIndex::default();
        ix.insert("acc", entry(1, "n > 1"));
        let (mut ev, mut rf) = (Vec::new(), Vec::new());
        let elsewhere = Publication::new(1, "news/eu", "created", r#"{"n":5}"#, 0);
        ix.collect(&elsewhere, &mut ev, &mut rf);
        assert!(!elsewhere.data_parsed(), "no filter can see news/eu");
        let under = Publication::new(2, "acc/a1", "created", r#"{"n":5}"#, 0);
        ix.collect(&under, &mut ev, &mut rf);
        assert!(under.data_parsed());
        assert_eq!(ev, [(1, 1)]);
        assert!(rf.is_empty());
    }

    /// Property: the equality index gives exactly what evaluating every filter on its
    /// own gives (events and refreshes), for random filters and random writes.
    #[test]
    fn index_equals_brute_force() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let vals = ["'a'", "'b'", "'c'", "1", "2", "true", "null"];
        let jvals = [
            json!("a"),
            json!("b"),
            json!("c"),
            json!(1),
            json!(2.0),
            json!(true),
            Value::Null,
        ];
        for _case in 0..200 {
            let mut ix = FilteredIndex::default();
            let mut model: Vec<FilteredEntry> = Vec::new();
            for conn in 0..30u32 {
                let pick = |n: u64| vals[(n % vals.len() as u64) as usize];
                let f = match next() % 5 {
                    0 => format!("k == {}", pick(next())),
                    1 => format!("k == {} && m != {}", pick(next()), pick(next())),
                    2 => format!("k in [{}, {}]", pick(next()), pick(next())),
                    3 => format!("m == {} || k == {}", pick(next()), pick(next())),
                    _ => format!("k == {} && (m == {} || !x)", pick(next()), pick(next())),
                };
                let e = entry(conn, &f);
                ix.insert("acc", e.clone());
                model.push(e);
                if next() % 6 == 0 {
                    let i = (next() % model.len() as u64) as usize;
                    let gone = model.swap_remove(i);
                    ix.remove("acc", gone.conn, gone.sub, &gone.filter);
                }
            }
            assert_eq!(ix.len(), model.len());
            for _ in 0..20 {
                let mut state = || {
                    let mut m = serde_json::Map::new();
                    for f in ["k", "m", "x"] {
                        if next() % 4 != 0 {
                            m.insert(
                                f.into(),
                                jvals[(next() % jvals.len() as u64) as usize].clone(),
                            );
                        }
                    }
                    Value::Object(m)
                };
                let (b, a) = (state(), state());
                let p = entity_pub(Some(b.clone()), Some(a.clone()));
                let (mut ev, mut rf) = (Vec::new(), Vec::new());
                ix.collect(&p, &mut ev, &mut rf);
                ev.sort();
                rf.sort();
                let mut want_ev: Vec<(u32, u32)> = model
                    .iter()
                    .filter(|e| e.filter.matches(&a))
                    .map(|e| (e.conn, e.sub))
                    .collect();
                let mut want_rf: Vec<(u32, u32)> = model
                    .iter()
                    .filter(|e| e.filter.matches(&b) && !e.filter.matches(&a))
                    .map(|e| (e.conn, e.sub))
                    .collect();
                want_ev.sort();
                want_rf.sort();
                assert_eq!(ev, want_ev, "events for {b} -> {a}");
                assert_eq!(rf, want_rf, "refreshes for {b} -> {a}");
            }
        }
    }
}
