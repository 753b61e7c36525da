//! Filter and orderBy text: `filter::Filter::parse`, `filter::OrderBy::parse`.
//! Invariants (kept here until they move to fuzz/src/lib.rs): a parse either fails with an
//! offset inside the input, on a char boundary, whose `Display` names it, or succeeds and
//! prints a canonical text no longer than the input that parses back to an equal value
//! (and prints the same again); `matches` never panics, and when it holds, the value's
//! `IndexKey` for `index_term`'s field is one of the term's keys.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use shardcast::filter::{Filter, FilterError, IndexKey, OrderBy};

/// A few documents of every shape: the seed's match, scalars at the root, nesting,
/// arrays and objects where scalars are expected, keyword-like keys.
fn values() -> &'static [Value] {
    static VALUES: OnceLock<Vec<Value>> = OnceLock::new();
    VALUES.get_or_init(|| {
        vec![
            json!({"status": "failed", "n": 5, "tags": {"x": "a"}, "done": false}),
            json!({"a": 1, "b": {"c": "x", "d": [1, 2]}, "in": true, "null": null, "e": ""}),
            json!({"a": -0.0, "b": 1e300, "c": {}, "d": [], "x": "é😀", "true": 0}),
            json!(null),
            json!(42),
            json!("a"),
            json!([{"a": 1}]),
        ]
    })
}

fn check_error(src: &str, e: &FilterError) {
    let at = e.offset;
    assert!(at <= src.len(), "offset past the {} bytes: {e}", src.len());
    assert!(src.is_char_boundary(at), "offset inside a char: {e}");
    assert!(!e.message.is_empty());
    assert!(e.to_string().contains(&format!("at byte {at}")), "{e}");
}

fn filter(src: &str) {
    let f = match Filter::parse(src) {
        Ok(f) => f,
        Err(e) => return check_error(src, &e),
    };
    let text = f.to_string();
    assert!(text.len() <= src.len(), "{src:?} printed longer: {text:?}");
    let again = Filter::parse(&text).unwrap_or_else(|e| panic!("{src:?} printed {text:?}: {e}"));
    assert_eq!(again, f, "{src:?} printed {text:?}");
    assert_eq!(again.to_string(), text);
    let term = f.index_term();
    for v in values() {
        if f.matches(v) {
            if let Some((path, keys)) = &term {
                let key = IndexKey::of(path.get(v));
                assert!(
                    key.as_ref().is_some_and(|k| keys.contains(k)),
                    "{text} matches {v} but its key {key:?} for {path} is not in {keys:?}"
                );
            }
        }
    }
}

fn order_by(src: &str) {
    let o = match OrderBy::parse(src) {
        Ok(o) => o,
        Err(e) => return check_error(src, &e),
    };
    let text = o.to_string();
    assert!(text.len() <= src.len(), "{src:?} printed longer: {text:?}");
    let again = OrderBy::parse(&text).unwrap_or_else(|e| panic!("{src:?} printed {text:?}: {e}"));
    assert_eq!(again, o, "{src:?} printed {text:?}");
    let vs = values();
    for a in vs {
        for b in vs {
            let (ab, ba) = (o.compare(a, b), o.compare(b, a));
            assert_eq!(ab, ba.reverse(), "{text}: {a} vs {b}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    filter(src);
    order_by(src);
});
