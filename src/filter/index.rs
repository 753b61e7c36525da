//! The equality index's view of a filter: [`IndexKey`], a hashable key for a JSON scalar,
//! and [`Filter::index_term`], the `field == literal` / `field in [..]` conjunct every
//! match must satisfy. The shards' subscription indexes are built on these.

use serde_json::Value;

use super::ast::{Expr, Filter, Literal, Op};
use super::path::FieldPath;

/// A hashable key for a JSON scalar: `IndexKey::of(Some(v)) == key of literal l` exactly
/// when `v == l` holds under the filter's `==` rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Null,
    Bool(bool),
    /// `f64::to_bits` of the number, with `-0.0` folded into `0.0`.
    Num(u64),
    Str(Box<str>),
}

impl IndexKey {
    /// The key of a field value: missing and `null` give `Null`; arrays and objects, which
    /// equal no literal, give `None`.
    pub fn of(v: Option<&Value>) -> Option<IndexKey> {
        match v {
            None | Some(Value::Null) => Some(IndexKey::Null),
            Some(Value::Bool(b)) => Some(IndexKey::Bool(*b)),
            Some(Value::Number(n)) => n.as_f64().map(num_key),
            Some(Value::String(s)) => Some(IndexKey::Str(s.as_str().into())),
            Some(Value::Array(_) | Value::Object(_)) => None,
        }
    }

    fn of_literal(lit: &Literal) -> IndexKey {
        match lit {
            Literal::Null => IndexKey::Null,
            Literal::Bool(b) => IndexKey::Bool(*b),
            Literal::Num(x) => num_key(*x),
            Literal::Str(s) => IndexKey::Str(s.clone()),
        }
    }
}

fn num_key(x: f64) -> IndexKey {
    // -0.0 == 0.0 under `==`, so they must share a key.
    IndexKey::Num(if x == 0.0 { 0.0f64 } else { x }.to_bits())
}

impl Filter {
    /// An equality term that is a necessary condition of the whole filter, for indexing:
    /// the first conjunct of the outermost `&&` chain (or the whole filter; nested `&&`
    /// chains in parentheses count as part of it) of the form `field == literal` or
    /// `field in [..]`. Returns its field path and the distinct keys of its literals: a
    /// value matches the filter only if `IndexKey::of(path.get(value))` is one of them.
    /// `None` if no conjunct has that form.
    pub fn index_term(&self) -> Option<(&FieldPath, Vec<IndexKey>)> {
        fn find(e: &Expr) -> Option<(&FieldPath, &[Literal])> {
            match e {
                Expr::Cmp(path, Op::Eq, lit) => Some((path, std::slice::from_ref(lit))),
                Expr::In(path, lits) => Some((path, lits)),
                Expr::And(xs) => xs.iter().find_map(find),
                _ => None,
            }
        }
        let (path, lits) = find(&self.root)?;
        let mut keys: Vec<IndexKey> = Vec::with_capacity(lits.len());
        for lit in lits {
            let key = IndexKey::of_literal(lit);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Some((path, keys))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use serde_json::json;

    #[test]
    fn index_terms() {
        let key = |src: &str| f(src).index_term().map(|(p, keys)| (p.to_string(), keys));
        let num = |x: f64| IndexKey::Num(x.to_bits());
        assert_eq!(key("a == 1 && b"), Some(("a".into(), vec![num(1.0)])));
        assert_eq!(key("a == 1"), Some(("a".into(), vec![num(1.0)])));
        assert_eq!(
            key("(x.y == 'v')"),
            Some(("x.y".into(), vec![IndexKey::Str("v".into())]))
        );
        assert_eq!(
            key("b && a in [1, 1.0, 'x', null, false, -0, 0, 'x']"),
            Some((
                "a".into(),
                vec![
                    num(1.0),
                    IndexKey::Str("x".into()),
                    IndexKey::Null,
                    IndexKey::Bool(false),
                    num(0.0)
                ]
            ))
        );
        assert_eq!(
            key("c > 1 && (d == null && e == 2) && a == 1"),
            Some(("d".into(), vec![IndexKey::Null]))
        );
        assert_eq!(
            key("c > 1 && b != 2 && a == 1"),
            Some(("a".into(), vec![num(1.0)]))
        );
        for src in [
            "a == 1 || b == 2",
            "a != 1",
            "!a == 1",
            "a",
            "a < 1 && b",
            "!(a == 1 && b == 2)",
        ] {
            assert_eq!(key(src), None, "{src}");
        }
    }

    #[test]
    fn index_keys_of_values() {
        assert_eq!(IndexKey::of(None), Some(IndexKey::Null));
        assert_eq!(IndexKey::of(Some(&json!(null))), Some(IndexKey::Null));
        assert_eq!(IndexKey::of(Some(&json!(true))), Some(IndexKey::Bool(true)));
        assert_eq!(
            IndexKey::of(Some(&json!(1))),
            IndexKey::of(Some(&json!(1.0)))
        );
        assert_eq!(
            IndexKey::of(Some(&json!(-0.0))),
            IndexKey::of(Some(&json!(0)))
        );
        assert_ne!(
            IndexKey::of(Some(&json!(1))),
            IndexKey::of(Some(&json!("1")))
        );
        assert_eq!(
            IndexKey::of(Some(&json!("s"))),
            Some(IndexKey::Str("s".into()))
        );
        assert_eq!(IndexKey::of(Some(&json!([]))), None);
        assert_eq!(IndexKey::of(Some(&json!({}))), None);
    }

    #[test]
    fn property_index_never_misses_a_match() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let (mut with_term, mut matched) = (0, 0);
        for _ in 0..3000 {
            let term = if rng.one_in(2) {
                T::Cmp(gen_path(&mut rng), "==", gen_lit(&mut rng))
            } else {
                T::In(
                    gen_path(&mut rng),
                    (0..1 + rng.below(3)).map(|_| gen_lit(&mut rng)).collect(),
                )
            };
            let t = match rng.below(3) {
                0 => term.clone(),
                1 => T::And(vec![term.clone(), gen_expr(&mut rng, 2)]),
                _ => gen_expr(&mut rng, 3),
            };
            let filter = Filter { root: to_expr(&t) };
            let Some((p, keys)) = filter.index_term() else {
                continue;
            };
            with_term += 1;
            let lits: Vec<&L> = match &term {
                T::Cmp(_, _, l) => vec![l],
                T::In(_, ls) => ls.iter().collect(),
                _ => vec![],
            };
            for _ in 0..30 {
                let mut v = gen_value(&mut rng, 2);
                if rng.one_in(2) {
                    let segs: Vec<&str> = p.0.iter().map(|s| &**s).collect();
                    // Usually a literal of the term, sometimes of any type.
                    let to = match (rng.one_in(4), lits.is_empty()) {
                        (false, false) => lit_value(lits[rng.below(lits.len())]),
                        _ => gen_leaf(&mut rng),
                    };
                    set_path(&mut v, &segs, to);
                }
                if filter.matches(&v) {
                    matched += 1;
                    let key = IndexKey::of(p.get(&v));
                    assert!(
                        key.as_ref().is_some_and(|k| keys.contains(k)),
                        "{filter} matches {v} but its key {key:?} is not in {keys:?}"
                    );
                }
            }
        }
        assert!(with_term > 1000 && matched > 2000, "{with_term} {matched}");
    }
}
