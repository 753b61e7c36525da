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

use crate::filter::Filter;
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

struct Entry {
    group: Arc<str>,
    /// The id as a JSON string literal.
    id_json: Box<[u8]>,
    sub: DurableSub,
}

/// Durable subscriptions by path, for matching (see the module docs).
#[derive(Default)]
pub struct GroupIndex {
    by_path: HashMap<Box<str>, Vec<Entry>>,
}

impl GroupIndex {
    pub fn build(groups: &BTreeMap<Arc<str>, BTreeMap<String, DurableSub>>) -> GroupIndex {
        let mut by_path: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        for (group, subs) in groups {
            for sub in subs.values() {
                let mut id_json = Vec::new();
                crate::protocol::write_json_str(&mut id_json, &sub.id);
                by_path
                    .entry(sub.path.as_str().into())
                    .or_default()
                    .push(Entry {
                        group: group.clone(),
                        id_json: id_json.into(),
                        sub: sub.clone(),
                    });
            }
        }
        GroupIndex { by_path }
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Calls `f(group, ids)` once per group whose subscriptions `p` matches, `ids` being
    /// the matched ids as JSON string literals joined by commas. A path matches its own
    /// subscriptions and those of every prefix (PROTOCOL.md §4): one lookup per prefix.
    pub fn matches(&self, p: &Publication, f: &mut dyn FnMut(&Arc<str>, &[u8])) {
        let mut found: Vec<(&Arc<str>, Vec<u8>)> = Vec::new();
        let path: &str = &p.path;
        let ends = path
            .char_indices()
            .filter(|&(_, c)| c == '/')
            .map(|(i, _)| i)
            .chain(std::iter::once(path.len()));
        for end in ends {
            let Some(entries) = self.by_path.get(&path[..end]) else {
                continue;
            };
            for e in entries {
                if !e.sub.matches(p) {
                    continue;
                }
                match found.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &e.group)) {
                    Some((_, ids)) => {
                        ids.push(b',');
                        ids.extend_from_slice(&e.id_json);
                    }
                    None => found.push((&e.group, e.id_json.to_vec())),
                }
            }
        }
        for (g, ids) in found {
            f(g, &ids);
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
        let idx = GroupIndex::build(&groups);
        let run = |path: &str, et: &str, data: &str| {
            let p = Publication::new(1, path, et, data, 0);
            let mut out = Vec::new();
            idx.matches(&p, &mut |g, ids| {
                out.push((g.to_string(), String::from_utf8(ids.to_vec()).unwrap()))
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
        let round =
            DurableSub::from_json("big", &sub("big", "jobs", &["e"], Some("n > 5")).to_json());
        assert_eq!(round, Some(sub("big", "jobs", &["e"], Some("n > 5"))));
    }
}
