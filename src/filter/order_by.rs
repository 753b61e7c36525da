//! `orderBy` (PROTOCOL.md §7): parsing and printing the key list, and the total order
//! over JSON values ([`compare_values`]) that entity lists and live queries sort by, ties
//! broken by `id`.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use serde_json::{Number, Value};

use super::error::{too_long, FilterError, MAX_LEN, MAX_ORDER_KEYS};
use super::path::{is_name_char, lookup, name_end, scan_path, FieldPath};

/// Sort direction of one orderBy key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

/// A parsed orderBy: keys in priority order.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderBy {
    pub keys: Vec<(FieldPath, Direction)>,
}

impl OrderBy {
    /// Parses `field [asc|desc] (, field [asc|desc])*`.
    pub fn parse(src: &str) -> Result<OrderBy, FilterError> {
        if src.len() > MAX_LEN {
            return Err(too_long(src, "orderBy"));
        }
        let b = src.as_bytes();
        let skip_ws = |mut at: usize| {
            while matches!(b.get(at), Some(b' ' | b'\t' | b'\r' | b'\n')) {
                at += 1;
            }
            at
        };
        let mut keys = Vec::new();
        let mut at = skip_ws(0);
        if at == b.len() {
            return Err(FilterError::new(0, "orderBy is empty"));
        }
        loop {
            at = skip_ws(at);
            if matches!(b.get(at), None | Some(b',')) {
                return Err(FilterError::new(at, "empty orderBy item"));
            }
            if keys.len() == MAX_ORDER_KEYS {
                return Err(FilterError::new(
                    at,
                    format!("more than {MAX_ORDER_KEYS} orderBy keys"),
                ));
            }
            let (path, end) = scan_path(src, at)?;
            at = skip_ws(end);
            let mut dir = Direction::Asc;
            let mut has_dir = false;
            if b.get(at).is_some_and(|&c| is_name_char(c)) {
                let word_end = name_end(b, at);
                dir = match &src[at..word_end] {
                    "asc" => Direction::Asc,
                    "desc" => Direction::Desc,
                    _ => {
                        return Err(FilterError::new(
                            at,
                            "unknown direction (expected 'asc' or 'desc')",
                        ))
                    }
                };
                has_dir = true;
                at = skip_ws(word_end);
            }
            keys.push((path, dir));
            match b.get(at) {
                None => return Ok(OrderBy { keys }),
                Some(b',') => at += 1,
                Some(_) if has_dir => {
                    return Err(FilterError::new(at, "expected ',' or end of orderBy"));
                }
                Some(_) => {
                    return Err(FilterError::new(
                        at,
                        "expected 'asc', 'desc', ',' or end of orderBy",
                    ));
                }
            }
        }
    }

    /// Total order of two entities under this orderBy; ties are broken by the entities'
    /// `id` fields ascending (by [`compare_values`], which for string ids is byte order).
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (path, dir) in &self.keys {
            let ord = compare_values(path.get(a), path.get(b));
            let ord = match dir {
                Direction::Asc => ord,
                Direction::Desc => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        fn id(v: &Value) -> Option<&Value> {
            lookup(v.as_object()?, "id")
        }
        compare_values(id(a), id(b))
    }

    /// The values `compare` looks at, in order: one per key, then the `id` (appended to
    /// `out`, `self.keys.len() + 1` of them). Sorting many entities compares these
    /// instead of walking each entity's fields at every comparison.
    pub fn sort_key<'a>(&self, v: &'a Value, out: &mut Vec<Option<&'a Value>>) {
        for (path, _) in &self.keys {
            out.push(path.get(v));
        }
        out.push(v.as_object().and_then(|o| lookup(o, "id")));
    }

    /// [`OrderBy::compare`] on two [`OrderBy::sort_key`]s.
    pub fn compare_keys(&self, a: &[Option<&Value>], b: &[Option<&Value>]) -> Ordering {
        for (i, (_, dir)) in self.keys.iter().enumerate() {
            let ord = compare_values(a[i], b[i]);
            let ord = match dir {
                Direction::Asc => ord,
                Direction::Desc => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        let n = self.keys.len();
        compare_values(a[n], b[n])
    }
}

/// Canonical and compact: `createdAt desc,id` (`asc` is implied).
impl fmt::Display for OrderBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (path, dir)) in self.keys.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{path}")?;
            if *dir == Direction::Desc {
                f.write_str(" desc")?;
            }
        }
        Ok(())
    }
}

/// Total order over JSON values for sorting: missing = `null` < `false` < `true` <
/// numbers (as `f64`, `-0` equal to `0`) < strings (byte order) < arrays < objects; all
/// arrays compare equal to each other, and so do all objects.
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
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
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => compare_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn compare_numbers(x: &Number, y: &Number) -> Ordering {
    // `as_f64` only fails with serde_json's arbitrary_precision; NaN then sorts by
    // `total_cmp` (after every number) so the order stays total.
    let x = x.as_f64().unwrap_or(f64::NAN);
    let y = y.as_f64().unwrap_or(f64::NAN);
    x.partial_cmp(&y).unwrap_or_else(|| x.total_cmp(&y))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use serde_json::json;

    // -----------------------------------------------------------------------------------
    // orderBy
    // -----------------------------------------------------------------------------------

    fn ob(src: &str) -> OrderBy {
        OrderBy::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    #[test]
    fn order_by_parse_and_print() {
        let o = ob("createdAt desc, id");
        assert_eq!(
            o.keys,
            vec![
                (path("createdAt"), Direction::Desc),
                (path("id"), Direction::Asc)
            ]
        );
        assert_eq!(o.to_string(), "createdAt desc,id");
        assert_eq!(ob("a asc").to_string(), "a");
        assert_eq!(ob("\ta\n desc ,  b.c  asc ,d").to_string(), "a desc,b.c,d");
        assert_eq!(ob("in desc,desc,asc asc").to_string(), "in desc,desc,asc");
        let eight = ["k"; MAX_ORDER_KEYS].join(",");
        assert_eq!(ob(&eight).keys.len(), MAX_ORDER_KEYS);
    }

    #[test]
    fn order_by_errors() {
        order_err_at("", 0, "orderBy is empty");
        order_err_at(" \n", 0, "orderBy is empty");
        order_err_at("a,", 2, "empty orderBy item");
        order_err_at("a, ", 3, "empty orderBy item");
        order_err_at(",a", 0, "empty orderBy item");
        order_err_at("a,,b", 2, "empty orderBy item");
        order_err_at("a DESC", 2, "unknown direction");
        order_err_at("a up", 2, "unknown direction");
        order_err_at("a descx", 2, "unknown direction");
        order_err_at("a 1", 2, "unknown direction");
        order_err_at("a desc x", 7, "expected ',' or end of orderBy");
        order_err_at("a desc;", 6, "expected ',' or end of orderBy");
        order_err_at("a;", 1, "expected 'asc', 'desc', ',' or end of orderBy");
        order_err_at("1a", 0, "expected a field name");
        order_err_at("a.", 2, "expected a name after '.'");
        order_err_at("a, é", 3, "expected a field name");
        let nine = ["k"; MAX_ORDER_KEYS + 1].join(", ");
        order_err_at(&nine, nine.len() - 1, "more than 8 orderBy keys");
        order_err_at(&"a".repeat(MAX_LEN + 1), MAX_LEN, "longer than");
    }

    #[test]
    fn order_by_compare() {
        let rows = [
            json!({"id": "3", "t": 2}),
            json!({"id": "1", "t": 2}),
            json!({"id": "2", "t": 1}),
            json!({"id": "4"}),
            json!({"id": "0", "t": "x"}),
        ];
        let sorted = |src: &str| {
            let o = ob(src);
            let mut v: Vec<&Value> = rows.iter().collect();
            v.sort_by(|a, b| o.compare(a, b));
            v.iter()
                .map(|r| r["id"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join("")
        };
        assert_eq!(sorted("t"), "42130");
        assert_eq!(sorted("t desc"), "01324");
        assert_eq!(sorted("missing"), "01234");
        assert_eq!(sorted("missing desc, t desc"), "01324");
        let o = ob("a.b desc");
        assert_eq!(
            o.compare(&json!({"a": {"b": 1}}), &json!({"a": {"b": 2}})),
            Ordering::Greater
        );
        assert_eq!(
            o.compare(&json!({"id": "a"}), &json!({"id": "b"})),
            Ordering::Less
        );
        assert_eq!(
            o.compare(&json!({"id": "b"}), &json!({"id": "b"})),
            Ordering::Equal
        );
        assert_eq!(o.compare(&json!({}), &json!({"id": "b"})), Ordering::Less);
    }

    #[test]
    fn value_order() {
        let chain = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-1),
            json!(0),
            json!(0.5),
            json!(2),
            json!(""),
            json!("B"),
            json!("a"),
            json!("é"),
            json!([]),
            json!({}),
        ];
        assert_eq!(compare_values(None, Some(&chain[0])), Ordering::Equal);
        assert_eq!(compare_values(None, Some(&chain[1])), Ordering::Less);
        for (i, a) in chain.iter().enumerate() {
            for (j, b) in chain.iter().enumerate() {
                assert_eq!(compare_values(Some(a), Some(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        for (a, b) in [
            (json!(1), json!(1.0)),
            (json!(-0.0), json!(0)),
            (json!([1]), json!([2, 3])),
            (json!({}), json!({"a": 1})),
        ] {
            assert_eq!(
                compare_values(Some(&a), Some(&b)),
                Ordering::Equal,
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn property_order_by_round_trip_and_total_order() {
        let mut rng = Rng(0x5151_7777_abab_0101);
        for _ in 0..1000 {
            let keys: Vec<(FieldPath, Direction)> = (0..1 + rng.below(MAX_ORDER_KEYS))
                .map(|_| {
                    let dir = if rng.one_in(2) {
                        Direction::Asc
                    } else {
                        Direction::Desc
                    };
                    (to_path(&gen_path(&mut rng)), dir)
                })
                .collect();
            let order = OrderBy { keys };
            let text = order.to_string();
            assert_eq!(OrderBy::parse(&text).as_ref(), Ok(&order), "{text}");
            let mut noisy_src = String::new();
            for (i, (p, dir)) in order.keys.iter().enumerate() {
                if i > 0 {
                    noisy_ws(&mut rng, &mut noisy_src);
                    noisy_src.push(',');
                }
                noisy_ws(&mut rng, &mut noisy_src);
                noisy_src.push_str(&p.to_string());
                let word = match dir {
                    Direction::Desc => Some("desc"),
                    Direction::Asc if rng.one_in(2) => Some("asc"),
                    Direction::Asc => None,
                };
                if let Some(word) = word {
                    noisy_src.push(' ');
                    noisy_ws(&mut rng, &mut noisy_src);
                    noisy_src.push_str(word);
                }
                noisy_ws(&mut rng, &mut noisy_src);
            }
            assert_eq!(
                OrderBy::parse(&noisy_src).as_ref(),
                Ok(&order),
                "{noisy_src:?}"
            );
        }
        for _ in 0..20 {
            let order = OrderBy {
                keys: (0..1 + rng.below(3))
                    .map(|_| {
                        let dir = if rng.one_in(2) {
                            Direction::Asc
                        } else {
                            Direction::Desc
                        };
                        (to_path(&[*rng.pick(&NAMES[..4])]), dir)
                    })
                    .collect(),
            };
            let rows: Vec<Value> = (0..40)
                .map(|_| {
                    let mut v = gen_value(&mut rng, 1);
                    if let Value::Object(map) = &mut v {
                        if !rng.one_in(5) {
                            map.insert("id".into(), json!(rng.below(30).to_string()));
                        }
                    }
                    v
                })
                .collect();
            for a in &rows {
                assert_eq!(order.compare(a, a), Ordering::Equal);
                for b in &rows {
                    let ab = order.compare(a, b);
                    assert_eq!(ab, order.compare(b, a).reverse(), "{order}: {a} vs {b}");
                    if ab == Ordering::Equal {
                        // Ties remain only between rows with the same id.
                        assert_eq!(compare_values(a.get("id"), b.get("id")), Ordering::Equal);
                    }
                    for c in &rows {
                        let bc = order.compare(b, c);
                        if ab != Ordering::Greater && bc != Ordering::Greater {
                            let ac = order.compare(a, c);
                            assert_ne!(ac, Ordering::Greater, "{order}: {a} <= {b} <= {c}");
                            if ab == Ordering::Equal && bc == Ordering::Equal {
                                assert_eq!(ac, Ordering::Equal);
                            }
                        }
                    }
                }
            }
        }
    }
}
