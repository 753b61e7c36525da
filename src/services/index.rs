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

/// Durable subscriptions by path, for matching (see the module docs).
#[derive(Default)]
pub struct GroupIndex {
    entries: Vec<Entry>,
    by_path: HashMap<Box<str>, PathEntries>,
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

    fn add(&mut self, owner: Owner, sub: DurableSub) {
        let mut id_json = Vec::new();
        crate::protocol::write_json_str(&mut id_json, &sub.id);
        let at = self.entries.len();
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
        self.entries.push(Entry {
            owner,
            id_json: id_json.into(),
            sub,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
            let e = &self.entries[i];
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

/// The index ingest reads: swapped whole, with a flag so that a node without durable
/// subscriptions pays one atomic load per publish request.
#[derive(Default)]
pub struct DurableSubs {
    active: AtomicBool,
    current: RwLock<Arc<GroupIndex>>,
}

impl DurableSubs {
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<GroupIndex> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new index (the services thread, under the sequencer lock).
    pub fn install(&self, index: GroupIndex) {
        let empty = index.is_empty();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        self.active.store(!empty, Ordering::Release);
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
