//! The shard's subscription index: path → the subscriptions of this shard's connections
//! on exactly that path (PROTOCOL.md §4 matching).
//!
//! Owned by one shard; only that shard's thread touches it. A publication on
//! `jobs/550e/steps` is matched with one hash lookup per prefix (`jobs`, `jobs/550e`,
//! `jobs/550e/steps`), so matching costs O(depth), not O(subscriptions).

use std::rc::Rc;

use hashbrown::HashMap;

use crate::protocol::path_prefixes;

/// Event types a subscription wants; `None` means all.
pub type EventSet = Option<Rc<[Box<str>]>>;

/// One subscription as the index sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The connection's slab key on this shard.
    pub conn: u32,
    /// The subscription id, interned on this shard.
    pub sub: u32,
    pub events: EventSet,
}

/// Path → subscriptions whose path is exactly that.
#[derive(Default, Debug)]
pub struct Index {
    by_path: HashMap<Box<str>, Vec<Entry>>,
    len: usize,
}

impl Index {
    pub fn insert(&mut self, path: &str, entry: Entry) {
        match self.by_path.get_mut(path) {
            Some(v) => v.push(entry),
            None => {
                self.by_path.insert(path.into(), vec![entry]);
            }
        }
        self.len += 1;
    }

    /// Removes the subscription `sub` of connection `conn` on `path`.
    pub fn remove(&mut self, path: &str, conn: u32, sub: u32) {
        let Some(v) = self.by_path.get_mut(path) else {
            return;
        };
        if let Some(i) = v.iter().position(|e| e.conn == conn && e.sub == sub) {
            v.swap_remove(i);
            self.len -= 1;
        }
        if v.is_empty() {
            self.by_path.remove(path);
        }
    }

    /// Number of subscriptions indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `(conn, sub)` for every subscription matching a publication on `path` with
    /// `event_type`. Returns how many prefixes contributed matches: when more than one
    /// did, one connection may appear more than once and the caller must group.
    pub fn collect(&self, path: &str, event_type: &str, out: &mut Vec<(u32, u32)>) -> usize {
        let mut levels = 0;
        for prefix in path_prefixes(path) {
            let Some(v) = self.by_path.get(prefix) else {
                continue;
            };
            let before = out.len();
            for e in v {
                let wanted = match &e.events {
                    None => true,
                    Some(set) => set.iter().any(|t| **t == *event_type),
                };
                if wanted {
                    out.push((e.conn, e.sub));
                }
            }
            if out.len() > before {
                levels += 1;
            }
        }
        levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conn: u32, sub: u32, events: &[&str]) -> Entry {
        Entry {
            conn,
            sub,
            events: if events.is_empty() {
                None
            } else {
                Some(events.iter().map(|e| Box::<str>::from(*e)).collect())
            },
        }
    }

    #[test]
    fn prefix_matching_follows_segments() {
        let mut ix = Index::default();
        ix.insert("jobs", entry(1, 10, &[]));
        ix.insert("jobs/550e", entry(2, 20, &["done"]));
        ix.insert("jobsx", entry(3, 30, &[]));
        ix.insert("jobs/550e/steps/2", entry(4, 40, &[]));
        let mut out = Vec::new();
        assert_eq!(ix.collect("jobs/550e/steps/2", "done", &mut out), 3);
        out.sort();
        assert_eq!(out, [(1, 10), (2, 20), (4, 40)]);
        out.clear();
        // Event-type sets filter; `jobsx` is not under `jobs`.
        ix.collect("jobs/550e", "started", &mut out);
        assert_eq!(out, [(1, 10)]);
        out.clear();
        ix.collect("jobsx/1", "x", &mut out);
        assert_eq!(out, [(3, 30)]);
        out.clear();
        ix.collect("job", "x", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn remove_is_exact() {
        let mut ix = Index::default();
        ix.insert("a", entry(1, 1, &[]));
        ix.insert("a", entry(2, 1, &[]));
        ix.remove("a", 1, 1);
        ix.remove("a", 9, 9);
        assert_eq!(ix.len(), 1);
        let mut out = Vec::new();
        ix.collect("a/b", "e", &mut out);
        assert_eq!(out, [(2, 1)]);
        ix.remove("a", 2, 1);
        assert!(ix.is_empty());
        assert!(ix.by_path.is_empty());
    }

    /// Property: for random subscriptions, removals and publications, `collect` returns
    /// exactly what the contract's rule gives by brute force (Q == P or Q starts with
    /// P + "/", and the event type is wanted), each subscription once.
    #[test]
    fn property_matches_the_contract_rule() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let segs = ["a", "b", "ab", "a.b", "c-1"];
        let types = ["x", "y", "z"];
        for _case in 0..100 {
            let mut ix = Index::default();
            // (path, conn, sub, events) — the model.
            let mut model: Vec<(String, u32, u32, Vec<&str>)> = Vec::new();
            let random_path = |next: &mut dyn FnMut() -> u64| {
                let depth = (next() % 4 + 1) as usize;
                (0..depth)
                    .map(|_| segs[(next() % segs.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join("/")
            };
            for i in 0..60u32 {
                let path = random_path(&mut next);
                let events: Vec<&str> = types.iter().copied().filter(|_| next() % 3 == 0).collect();
                let (conn, sub) = (i % 7, i);
                ix.insert(&path, entry(conn, sub, &events));
                model.push((path, conn, sub, events));
                if next() % 5 == 0 {
                    let k = (next() % model.len() as u64) as usize;
                    let (p, c, s, _) = model.swap_remove(k);
                    ix.remove(&p, c, s);
                }
            }
            assert_eq!(ix.len(), model.len());
            for _ in 0..50 {
                let q = random_path(&mut next);
                let t = types[(next() % 3) as usize];
                let mut got = Vec::new();
                ix.collect(&q, t, &mut got);
                got.sort_unstable();
                let mut want: Vec<(u32, u32)> = model
                    .iter()
                    .filter(|(p, _, _, ev)| {
                        (q == *p || q.starts_with(&format!("{p}/")))
                            && (ev.is_empty() || ev.contains(&t))
                    })
                    .map(|(_, c, s, _)| (*c, *s))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "publication {q} type {t}");
            }
        }
    }
}
