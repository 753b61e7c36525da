//! The live-query helper (PROTOCOL.md section 7): a local result kept sorted by the
//! query's `orderBy`, built from the initial pages and kept current by added / updated /
//! removed nodes; it starts over on every `liveQueryCreated` for its id (the server
//! reloads an overflowed query, and the driver re-creates it after a reconnect).
//!
//! [`LiveView`] is pure (messages in, sorted nodes out) and unit-tested here; the
//! `LiveQuery` handle (`client.rs`) owns one and is fed by the connection driver.
//! Ordering follows docs/PROTOCOL-NOTES.md: ties and no `orderBy` order by `id`; across
//! types missing/`null` < `false` < `true` < numbers < strings < arrays < objects.

use std::cmp::Ordering;

use serde_json::Value;

use crate::protocol::ServerMessage;

/// One `orderBy` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderKey {
    /// Dotted field path, split.
    pub field: Vec<String>,
    pub descending: bool,
}

/// Parses `field [asc|desc], ...`; `None` or blank is the empty order (by `id` only).
pub fn parse_order_by(order_by: Option<&str>) -> Result<Vec<OrderKey>, String> {
    let Some(text) = order_by.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|item| {
            let mut words = item.split_whitespace();
            let field = words
                .next()
                .ok_or_else(|| format!("orderBy: empty item in `{text}`"))?;
            let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(format!("orderBy: `{other}` is not asc or desc")),
            };
            if words.next().is_some() {
                return Err(format!("orderBy: too many words in `{}`", item.trim()));
            }
            Ok(OrderKey {
                field: field.split('.').map(str::to_string).collect(),
                descending,
            })
        })
        .collect()
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(false)) => 1,
        Some(Value::Bool(true)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// The total order of values the server sorts by.
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        // Arrays and objects only rank: their inner order is not part of the contract.
        _ => rank(a).cmp(&rank(b)),
    }
}

fn field<'a>(node: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(node, |v, name| v.get(name))
}

/// Compares two nodes by `keys`, then by `id`.
pub fn compare_nodes(keys: &[OrderKey], a: &Value, b: &Value) -> Ordering {
    for k in keys {
        let o = compare_values(field(a, &k.field), field(b, &k.field));
        let o = if k.descending { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    compare_values(a.get("id"), b.get("id"))
}

/// What one message did to the view.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveChange {
    /// `liveQueryCreated`: the view started over (first load or reload).
    Reset {
        total_count: u64,
        capped: bool,
    },
    /// A page of the initial result; `complete` once the last page arrived.
    Page {
        complete: bool,
    },
    Added(String),
    Updated(String),
    Removed(String),
    /// `liveQueryDestroyed`: nothing more will come.
    Destroyed,
}

/// The sorted local result of one live query.
#[derive(Clone, Debug)]
pub struct LiveView {
    keys: Vec<OrderKey>,
    nodes: Vec<Value>,
    loaded: bool,
    total_count: u64,
    capped: bool,
}

impl LiveView {
    pub fn new(keys: Vec<OrderKey>) -> LiveView {
        LiveView {
            keys,
            nodes: Vec::new(),
            loaded: false,
            total_count: 0,
            capped: false,
        }
    }

    /// The nodes (entity state with `id`) in `orderBy` order.
    pub fn nodes(&self) -> &[Value] {
        &self.nodes
    }

    /// The ids in order.
    pub fn ids(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter_map(|n| n.get("id").and_then(Value::as_str))
            .collect()
    }

    /// Whether the initial pages have all arrived.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The uncapped count at creation.
    pub fn total_count(&self) -> u64 {
        self.total_count
    }

    pub fn capped(&self) -> bool {
        self.capped
    }

    fn position(&self, node_id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.get("id").and_then(Value::as_str) == Some(node_id))
    }

    fn insert_sorted(&mut self, node: Value) {
        let keys = &self.keys;
        let at = self
            .nodes
            .partition_point(|n| compare_nodes(keys, n, &node) != Ordering::Greater);
        self.nodes.insert(at, node);
    }

    fn upsert(&mut self, node_id: &str, mut data: Value) {
        if let Value::Object(m) = &mut data {
            m.entry("id").or_insert_with(|| Value::from(node_id));
        }
        if let Some(i) = self.position(node_id) {
            self.nodes.remove(i);
        }
        self.insert_sorted(data);
    }

    /// Applies one of this query's messages; `None` for a message that is not one.
    pub fn apply(&mut self, message: ServerMessage) -> Option<LiveChange> {
        Some(match message {
            ServerMessage::LiveQueryCreated {
                total_count,
                capped,
                ..
            } => {
                self.nodes.clear();
                self.loaded = false;
                self.total_count = total_count;
                self.capped = capped;
                LiveChange::Reset {
                    total_count,
                    capped,
                }
            }
            ServerMessage::LiveQueryData { data, has_more, .. } => {
                for node in data {
                    match node.get("id").and_then(Value::as_str).map(str::to_string) {
                        Some(id) => self.upsert(&id, node),
                        None => self.insert_sorted(node),
                    }
                }
                self.loaded = !has_more;
                LiveChange::Page {
                    complete: self.loaded,
                }
            }
            ServerMessage::LiveQueryAddedNode { node_id, data, .. } => {
                self.upsert(&node_id, data);
                LiveChange::Added(node_id)
            }
            ServerMessage::LiveQueryUpdatedNode { node_id, data, .. } => {
                self.upsert(&node_id, data);
                LiveChange::Updated(node_id)
            }
            ServerMessage::LiveQueryRemovedNode { node_id, .. } => {
                if let Some(i) = self.position(&node_id) {
                    self.nodes.remove(i);
                }
                LiveChange::Removed(node_id)
            }
            ServerMessage::LiveQueryDestroyed { .. } => LiveChange::Destroyed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created() -> ServerMessage {
        ServerMessage::LiveQueryCreated {
            id: "q".into(),
            total_count: 3,
            capped: false,
        }
    }

    #[test]
    fn order_by_parses() {
        assert_eq!(parse_order_by(None).unwrap(), vec![]);
        let k = parse_order_by(Some("createdAt desc, a.b ASC,c")).unwrap();
        assert_eq!(k.len(), 3);
        assert!(k[0].descending && !k[1].descending && !k[2].descending);
        assert_eq!(k[1].field, vec!["a".to_string(), "b".to_string()]);
        assert!(parse_order_by(Some("x sideways")).is_err());
        assert!(parse_order_by(Some("x,,y")).is_err());
    }

    #[test]
    fn cross_type_order() {
        let vals = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1.5),
            json!(2),
            json!("A"),
            json!("a"),
            json!([1]),
            json!({"k": 1}),
        ];
        for (i, a) in vals.iter().enumerate() {
            for (j, b) in vals.iter().enumerate() {
                assert_eq!(compare_values(Some(a), Some(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(compare_values(None, Some(&json!(null))), Ordering::Equal);
        assert_eq!(
            compare_values(Some(&json!(1)), Some(&json!(1.0))),
            Ordering::Equal
        );
    }

    #[test]
    fn view_keeps_order_through_pages_and_changes() {
        let mut v = LiveView::new(parse_order_by(Some("n desc")).unwrap());
        assert_eq!(
            v.apply(created()),
            Some(LiveChange::Reset {
                total_count: 3,
                capped: false
            })
        );
        v.apply(ServerMessage::LiveQueryData {
            id: "q".into(),
            data: vec![json!({"id":"a","n":3}), json!({"id":"b","n":2})],
            has_more: true,
            capped: false,
        });
        assert!(!v.is_loaded());
        assert_eq!(
            v.apply(ServerMessage::LiveQueryData {
                id: "q".into(),
                data: vec![json!({"id":"c","n":1})],
                has_more: false,
                capped: false,
            }),
            Some(LiveChange::Page { complete: true })
        );
        assert_eq!(v.ids(), ["a", "b", "c"]);
        v.apply(ServerMessage::LiveQueryAddedNode {
            id: "q".into(),
            node_id: "d".into(),
            data: json!({"n": 2}),
        });
        // Ties by id: b before d; the node got its id.
        assert_eq!(v.ids(), ["a", "b", "d", "c"]);
        v.apply(ServerMessage::LiveQueryUpdatedNode {
            id: "q".into(),
            node_id: "c".into(),
            data: json!({"id":"c","n":9}),
        });
        assert_eq!(v.ids(), ["c", "a", "b", "d"]);
        assert_eq!(
            v.apply(ServerMessage::LiveQueryRemovedNode {
                id: "q".into(),
                node_id: "a".into()
            }),
            Some(LiveChange::Removed("a".into()))
        );
        assert_eq!(v.ids(), ["c", "b", "d"]);
        // A reload starts over.
        v.apply(created());
        assert!(v.nodes().is_empty() && !v.is_loaded());
        assert_eq!(v.apply(ServerMessage::Ping), None);
    }

    #[test]
    fn no_order_by_is_by_id() {
        let mut v = LiveView::new(vec![]);
        v.apply(created());
        v.apply(ServerMessage::LiveQueryData {
            id: "q".into(),
            data: vec![json!({"id":"z"}), json!({"id":"m"}), json!({"id":"a"})],
            has_more: false,
            capped: false,
        });
        assert_eq!(v.ids(), ["a", "m", "z"]);
    }
}
