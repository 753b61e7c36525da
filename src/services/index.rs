//! The durable subscriptions of every service group, as ingest matches them: which
//! groups a publication becomes a task for, and under which subscription ids.
//!
//! Built by the services thread whenever a group's subscriptions change and swapped in
//! under the sequencer lock (so a subscription's answer names exactly the first `seq`
//! it covers); read by ingest, under that lock, for every publication while any durable
//! subscription exists. Immutable once built.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::filter::{FieldPath, Filter, IndexKey};
use crate::publication::Publication;

/// One durable subscription as the client defined it.
#[derive(Clone, Debug, PartialEq)]
pub struct DurableSub {
    pub id: String,
    pub path: String,
    /// Empty: every event type.
    pub events: Vec<String>,
    pub filter: Option<Filter>,
}

impl DurableSub {
    /// As kept in the store (the filter in its canonical text).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "events": self.events,
            "filter": self.filter.as_ref().map(|f| f.to_string()),
        })
    }

    pub fn from_json(id: &str, v: &serde_json::Value) -> Option<DurableSub> {
        let filter = match v.get("filter") {
            Some(serde_json::Value::String(s)) => Some(Filter::parse(s).ok()?),
            _ => None,
        };
        Some(DurableSub {
            id: id.to_string(),
            path: v.get("path")?.as_str()?.to_string(),
            events: v
                .get("events")?
                .as_array()?
                .iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect(),
            filter,
        })
    }

    fn matches(&self, p: &Publication) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| **e == *p.event_type))
            && self.filter.as_ref().is_none_or(|f| f.matches(p.data()))
    }
}

/// Who a durable subscription belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A service group: the publication becomes one of its tasks.
    Group(Arc<str>),
    /// A REST-created channel (PROTOCOL.md §9): it joins the channel's backlog.
    Channel(Arc<str>),
}

impl Owner {
    fn same(&self, other: &Owner) -> bool {
        match (self, other) {
            (Owner::Group(a), Owner::Group(b)) | (Owner::Channel(a), Owner::Channel(b)) => {
                Arc::ptr_eq(a, b)
            }
            _ => false,
        }
    }
}

struct Entry {
    owner: Owner,
    /// The id as a JSON string literal.
    id_json: Box<[u8]>,
    sub: DurableSub,
}

/// The entries of one path: those whose filter has an equality term are filed under its
/// field and literal (as the shard's filtered index does), so ten thousand channels each
/// `organisation_id == '<theirs>'` cost one lookup per publication, not ten thousand
/// evaluations; the rest are evaluated for every publication.
#[derive(Default)]
struct PathEntries {
    scan: Vec<usize>,
    terms: HashMap<FieldPath, HashMap<IndexKey, Vec<usize>>>,
}

/// Durable subscriptions by path, for matching (see the module docs). Changed in place,
/// one subscription at a time, so creating the 10,000th channel costs what the first did.
#[derive(Default)]
pub struct GroupIndex {
    /// Cluster mode: the version of Redis's index this copy is (0 on a single node).
    pub version: u64,
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// (is a channel, owner, subscription id) → slot.
    slots: HashMap<(bool, Arc<str>, String), usize>,
    by_path: HashMap<Box<str>, PathEntries>,
}

fn owner_key(owner: &Owner) -> (bool, Arc<str>) {
    match owner {
        Owner::Group(g) => (false, g.clone()),
        Owner::Channel(c) => (true, c.clone()),
    }
}

impl GroupIndex {
    /// The index of every group's subscriptions and every channel's.
    pub fn build(
        groups: &BTreeMap<Arc<str>, BTreeMap<String, DurableSub>>,
        channels: &[(Arc<str>, DurableSub)],
    ) -> GroupIndex {
        let mut ix = GroupIndex::default();
        for (group, subs) in groups {
            for sub in subs.values() {
                ix.add(Owner::Group(group.clone()), sub.clone());
            }
        }
        for (id, sub) in channels {
            ix.add(Owner::Channel(id.clone()), sub.clone());
        }
        ix
    }

    /// Adds `owner`'s subscription `sub` (replacing one with its id).
    pub fn add(&mut self, owner: Owner, sub: DurableSub) {
        self.remove(&owner, &sub.id);
        let mut id_json = Vec::new();
        crate::protocol::write_json_str(&mut id_json, &sub.id);
        let at = self.free.pop().unwrap_or(self.entries.len());
        let path = self.by_path.entry(sub.path.as_str().into()).or_default();
        match sub.filter.as_ref().and_then(|f| f.index_term()) {
            Some((field, keys)) => {
                let by_key = path.terms.entry(field.clone()).or_default();
                for k in keys {
                    by_key.entry(k).or_default().push(at);
                }
            }
            None => path.scan.push(at),
        }
        let (channel, name) = owner_key(&owner);
        self.slots.insert((channel, name, sub.id.clone()), at);
        let entry = Entry {
            owner,
            id_json: id_json.into(),
            sub,
        };
        if at == self.entries.len() {
            self.entries.push(Some(entry));
        } else {
            self.entries[at] = Some(entry);
        }
    }

    /// Removes `owner`'s subscription `id`; true if there was one.
    pub fn remove(&mut self, owner: &Owner, id: &str) -> bool {
        let (channel, name) = owner_key(owner);
        let Some(at) = self.slots.remove(&(channel, name, id.to_string())) else {
            return false;
        };
        let Some(e) = self.entries.get_mut(at).and_then(Option::take) else {
            return false;
        };
        self.free.push(at);
        if let Some(path) = self.by_path.get_mut(e.sub.path.as_str()) {
            match e.sub.filter.as_ref().and_then(|f| f.index_term()) {
                Some((field, keys)) => {
                    if let Some(by_key) = path.terms.get_mut(field) {
                        for k in keys {
                            if let Some(v) = by_key.get_mut(&k) {
                                v.retain(|&i| i != at);
                                if v.is_empty() {
                                    by_key.remove(&k);
                                }
                            }
                        }
                        if by_key.is_empty() {
                            path.terms.remove(field);
                        }
                    }
                }
                None => path.scan.retain(|&i| i != at),
            }
            if path.scan.is_empty() && path.terms.is_empty() {
                self.by_path.remove(e.sub.path.as_str());
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Calls `f(owner, ids)` once per owner whose subscriptions `p` matches, `ids` being
    /// the matched ids as JSON string literals joined by commas. A path matches its own
    /// subscriptions and those of every prefix (PROTOCOL.md §4): one lookup per prefix.
    pub fn matches(&self, p: &Publication, f: &mut dyn FnMut(&Owner, &[u8])) {
        // Candidates first (one lookup per prefix, and per indexed field), then the
        // full check of each.
        let mut candidates: Vec<usize> = Vec::new();
        for prefix in crate::protocol::path_prefixes(&p.path) {
            let Some(path) = self.by_path.get(prefix) else {
                continue;
            };
            candidates.extend_from_slice(&path.scan);
            if path.terms.is_empty() {
                continue;
            }
            let data = p.data();
            for (field, by_key) in &path.terms {
                if let Some(key) = IndexKey::of(field.get(data)) {
                    candidates.extend(by_key.get(&key).into_iter().flatten());
                }
            }
        }
        let mut found: Vec<(&Owner, Vec<u8>)> = Vec::new();
        for i in candidates {
            let Some(e) = self.entries.get(i).and_then(Option::as_ref) else {
                continue;
            };
            if !e.sub.matches(p) {
                continue;
            }
            match found.iter_mut().find(|(o, _)| o.same(&e.owner)) {
                Some((_, ids)) => {
                    ids.push(b',');
                    ids.extend_from_slice(&e.id_json);
                }
                None => found.push((&e.owner, e.id_json.to_vec())),
            }
        }
        for (o, ids) in found {
            f(o, &ids);
        }
    }
}

/// The index ingest reads, with a flag so that a node without durable subscriptions
/// pays one atomic load per publish request. Ingest reads it under the sequencer lock;
/// the services thread changes it under that lock too ([`crate::ingest::Ingest::at_boundary`]),
/// so the read lock is never contended by a writer while a publication is matched.
#[derive(Default)]
pub struct DurableSubs {
    active: AtomicBool,
    index: RwLock<GroupIndex>,
}

impl DurableSubs {
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, GroupIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the index (the services thread, under the sequencer lock).
    pub fn change(&self, f: impl FnOnce(&mut GroupIndex)) {
        let mut ix = self.index.write().unwrap_or_else(|p| p.into_inner());
        f(&mut ix);
        self.active.store(!ix.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, path: &str, events: &[&str], filter: Option<&str>) -> DurableSub {
        DurableSub {
            id: id.into(),
            path: path.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            filter: filter.map(|f| Filter::parse(f).unwrap()),
        }
    }

    #[test]
    fn matches_prefixes_events_and_filters_per_group() {
        let mut groups = BTreeMap::new();
        let mut billing = BTreeMap::new();
        billing.insert("all".to_string(), sub("all", "jobs", &[], None));
        billing.insert("done".to_string(), sub("done", "jobs/1", &["done"], None));
        let mut audit = BTreeMap::new();
        audit.insert("big".to_string(), sub("big", "jobs", &[], Some("n > 5")));
        groups.insert(Arc::<str>::from("billing"), billing);
        groups.insert(Arc::<str>::from("audit"), audit);
        let chan = sub("c", "jobs", &[], Some("n == 9 && kind == 'x'"));
        let idx = GroupIndex::build(&groups, &[(Arc::<str>::from("chan_1"), chan)]);
        let run = |path: &str, et: &str, data: &str| {
            let p = Publication::new(1, path, et, data, 0);
            let mut out = Vec::new();
            idx.matches(&p, &mut |o, ids| {
                let name = match o {
                    Owner::Group(g) => g.to_string(),
                    Owner::Channel(c) => format!("channel {c}"),
                };
                out.push((name, String::from_utf8(ids.to_vec()).unwrap()))
            });
            out.sort();
            out
        };
        assert_eq!(
            run("jobs/1", "done", r#"{"n":9}"#),
            vec![
                ("audit".into(), r#""big""#.into()),
                ("billing".into(), r#""all","done""#.into())
            ]
        );
        assert_eq!(
            run("jobs/1", "other", r#"{"n":1}"#),
            vec![("billing".to_string(), r#""all""#.to_string())]
        );
        assert!(run("jobsx/1", "done", "{}").is_empty());
        // The channel's filter is filed under `n == 9`: found by that value alone.
        assert_eq!(
            run("jobs/2", "e", r#"{"n":9,"kind":"x"}"#),
            vec![
                ("audit".into(), r#""big""#.into()),
                ("billing".into(), r#""all""#.into()),
                ("channel chan_1".into(), r#""c""#.into())
            ]
        );
        assert!(!run("jobs/2", "e", r#"{"n":9,"kind":"y"}"#)
            .iter()
            .any(|(o, _)| o.starts_with("channel")));
        let round =
            DurableSub::from_json("big", &sub("big", "jobs", &["e"], Some("n > 5")).to_json());
        assert_eq!(round, Some(sub("big", "jobs", &["e"], Some("n > 5"))));
    }
}
