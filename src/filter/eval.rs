//! Evaluating a [`Filter`] against a JSON value: the semantics of PROTOCOL.md §4 (a
//! missing field is `null`, mismatched types never compare, truthiness). This is the
//! fan-out hot path: no allocation, no formatting.

use serde_json::Value;

use super::ast::{Expr, Filter, Literal, Op};

impl Filter {
    /// Whether `data` satisfies the filter. Allocates nothing.
    #[inline]
    pub fn matches(&self, data: &Value) -> bool {
        self.root.eval(data)
    }
}

impl Expr {
    fn eval(&self, v: &Value) -> bool {
        match self {
            Expr::Or(xs) => xs.iter().any(|x| x.eval(v)),
            Expr::And(xs) => xs.iter().all(|x| x.eval(v)),
            Expr::Not(x) => !x.eval(v),
            Expr::Cmp(path, op, lit) => compare(path.get(v), *op, lit),
            Expr::In(path, lits) => {
                let field = path.get(v);
                lits.iter().any(|lit| compare(field, Op::Eq, lit))
            }
            Expr::Truthy(path) => truthy(path.get(v)),
        }
    }
}

#[inline]
fn compare(field: Option<&Value>, op: Op, lit: &Literal) -> bool {
    match (field, lit) {
        (None | Some(Value::Null), Literal::Null) => op == Op::Eq,
        (Some(Value::Bool(a)), Literal::Bool(b)) => match op {
            Op::Eq => a == b,
            Op::Ne => a != b,
            _ => false,
        },
        (Some(Value::Number(a)), Literal::Num(b)) => {
            match a.as_f64().and_then(|a| a.partial_cmp(b)) {
                Some(ord) => op.holds(ord),
                None => false,
            }
        }
        (Some(Value::String(a)), Literal::Str(b)) => match op {
            Op::Eq => a.as_str() == &**b,
            Op::Ne => a.as_str() != &**b,
            _ => op.holds(a.as_bytes().cmp(b.as_bytes())),
        },
        _ => false,
    }
}

#[inline]
fn truthy(field: Option<&Value>) -> bool {
    match field {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_) | Value::Object(_)) => true,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use crate::filter::MAX_LEN;
    use serde_json::json;

    // -----------------------------------------------------------------------------------
    // Operators and semantics
    // -----------------------------------------------------------------------------------

    #[test]
    fn number_operators() {
        let v = json!({"n": 2, "x": 2.5, "neg": -1, "z": -0.0, "big": 1e300});
        for (src, want) in [
            ("n == 2", true),
            ("n == 2.0", true),
            ("n == 2e0", true),
            ("n == 0.2E1", true),
            ("n == 007e-2", false),
            ("n == 002", true),
            ("n != 2", false),
            ("n != 3", true),
            ("n < 3", true),
            ("n < 2", false),
            ("n <= 2", true),
            ("n <= 1.9", false),
            ("n > 1.5", true),
            ("n > 2", false),
            ("n >= 2", true),
            ("n >= 2.5", false),
            ("x == 2.5", true),
            ("x > 2", true),
            ("neg < 0", true),
            ("neg == -1", true),
            ("neg == -1.0e0", true),
            ("z == 0", true),
            ("z == -0", true),
            ("z < 0", false),
            ("z >= 0", true),
            ("big == 1e300", true),
            ("big > 9e299", true),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
        for v in [json!({"n": 1}), json!({"n": 1.0}), json!({"n": -1i64 + 2})] {
            assert!(
                m("n == 1", &v) && m("n == 1.0", &v) && m("n == 10e-1", &v),
                "{v}"
            );
        }
    }

    #[test]
    fn string_operators() {
        let v = json!({"s": "b", "e": "", "u": "é", "up": "B"});
        for (src, want) in [
            ("s == 'b'", true),
            ("s == \"b\"", true),
            ("s != 'a'", true),
            ("s != 'b'", false),
            ("s > 'a'", true),
            ("s < 'c'", true),
            ("s >= 'b'", true),
            ("s <= 'a'", false),
            ("s < 'ba'", true),
            ("up < 'a'", true),
            ("e == ''", true),
            ("e < 'a'", true),
            ("u > 'z'", true),
            ("u == 'é'", true),
            ("u == '\\u00e9'", true),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
    }

    #[test]
    fn boolean_operators() {
        let v = json!({"t": true, "f": false});
        for (src, want) in [
            ("t == true", true),
            ("t != false", true),
            ("f == false", true),
            ("t != true", false),
            ("t == false", false),
            ("t > false", false),
            ("t >= true", false),
            ("t <= true", false),
            ("f < true", false),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
    }

    #[test]
    fn null_and_missing_fields() {
        let v = json!({"n": null, "a": 1, "s": "x"});
        for (src, want) in [
            ("n == null", true),
            ("missing == null", true),
            ("n != null", false),
            ("missing != null", false),
            ("a != null", false),
            ("s != null", false),
            ("a == null", false),
            ("n < null", false),
            ("n <= null", false),
            ("n >= null", false),
            ("missing > null", false),
            ("missing == 1", false),
            ("missing != 1", false),
            ("missing != 'x'", false),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
        // The root need not be an object: every field is then missing.
        assert!(m("a == null", &json!(5)));
        assert!(!m("a", &json!([1])));
    }

    #[test]
    fn mismatched_types_are_false_for_every_operator() {
        let v = json!({"n": 3, "s": "3", "b": true, "z": null, "arr": [3], "obj": {"k": 3}});
        let fields = [
            ("n", 'n'),
            ("s", 's'),
            ("b", 'b'),
            ("z", 'z'),
            ("arr", 'a'),
            ("obj", 'o'),
        ];
        let lits = [("3", 'n'), ("'3'", 's'), ("true", 'b'), ("null", 'z')];
        for (field, ft) in fields {
            for (lit, lt) in lits {
                if ft == lt {
                    continue;
                }
                for op in ["==", "!=", "<", "<=", ">", ">="] {
                    let src = format!("{field} {op} {lit}");
                    assert!(!m(&src, &v), "{src}");
                }
                assert!(!m(&format!("{field} in [{lit}]"), &v));
            }
        }
    }

    #[test]
    fn arrays_and_objects_never_compare() {
        let v = json!({"arr": [1], "obj": {"k": 1}, "ea": [], "eo": {}});
        for src in [
            "arr == 1",
            "arr != 1",
            "arr == null",
            "arr != null",
            "obj == null",
            "obj != 'x'",
            "obj in [1, null, 'k']",
            "ea == null",
            "eo == null",
            "ea < 1",
        ] {
            assert!(!m(src, &v), "{src}");
        }
    }

    #[test]
    fn nested_fields_and_paths_through_non_objects() {
        let v = json!({"a": {"b": {"c": 1}}, "n": 5, "l": [{"x": 1}], "s": "str"});
        for (src, want) in [
            ("a.b.c == 1", true),
            ("a.b.c != 2", true),
            ("a.b.d == null", true),
            ("a.b == null", false),
            ("a.b", true),
            ("n.x == null", true),
            ("s.length == null", true),
            ("l.x == null", true),
            ("l.x == 1", false),
            ("a.b.c.d == null", true),
            ("a.b.c.d", false),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
        // Many keys: the hash lookup path.
        let mut big = serde_json::Map::new();
        for i in 0..20 {
            big.insert(format!("k{i}"), json!(i));
        }
        let big = Value::Object(big);
        assert!(m("k17 == 17 && k0 == 0 && k20 == null", &big));
    }

    #[test]
    fn truthiness() {
        let v = json!({
            "t": true, "f": false, "z": 0, "fz": 0.0, "nz": -0.0, "one": 1, "half": 0.5,
            "neg": -1, "e": "", "s0": "0", "sf": "false", "ea": [], "eo": {}, "nul": null
        });
        for (src, want) in [
            ("t", true),
            ("f", false),
            ("z", false),
            ("fz", false),
            ("nz", false),
            ("one", true),
            ("half", true),
            ("neg", true),
            ("e", false),
            ("s0", true),
            ("sf", true),
            ("ea", true),
            ("eo", true),
            ("nul", false),
            ("missing", false),
            ("!missing", true),
            ("!e", true),
            ("!!t", true),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
    }

    #[test]
    fn in_lists() {
        let v = json!({"x": 1, "s": "a", "b": false});
        for (src, want) in [
            ("x in [1]", true),
            ("x in [0, 1.0]", true),
            ("x in ['1']", false),
            ("s in ['b', 'a']", true),
            ("s in [1, null]", false),
            ("missing in [null]", true),
            ("missing in [1, 'a']", false),
            ("b in [false]", true),
            ("b in [0, '', null]", false),
            ("x in [1, 'a', null]", true),
            ("!(x in [2])", true),
            ("!x in [2]", true),
            ("x in[1]", true),
            ("x  in  [ 1 , 2 ]", true),
            ("x\tin\n[\r2,1]", true),
        ] {
            assert_eq!(m(src, &v), want, "{src}");
        }
    }

    #[test]
    fn property_noisy_source_parses_and_matches_reference() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let (mut cases, mut hits, mut checks) = (0, 0, 0);
        while cases < 4000 {
            let t = gen_expr(&mut rng, 4);
            let mut src = String::new();
            noisy(&mut rng, &t, &mut src);
            if src.len() > MAX_LEN {
                continue;
            }
            cases += 1;
            let filter = Filter::parse(&src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(filter.root, to_expr(&t), "{src}");
            let canonical = filter.to_string();
            assert!(canonical.len() <= src.len(), "{src:?} -> {canonical:?}");
            for _ in 0..20 {
                let v = gen_value(&mut rng, 2);
                let want = ref_eval(&t, &v);
                assert_eq!(filter.matches(&v), want, "{src} on {v}");
                hits += usize::from(want);
                checks += 1;
            }
        }
        // The generators must exercise both outcomes.
        assert!(
            hits > checks / 10 && hits < checks * 9 / 10,
            "{hits}/{checks}"
        );
    }

    // -----------------------------------------------------------------------------------
    // Speed (cargo test --release -- --ignored --nocapture)
    // -----------------------------------------------------------------------------------

    #[test]
    #[ignore]
    fn timing() {
        let v = json!({"a": "x", "b": 5, "c": true, "d": "zzz", "id": "e1"});
        for src in [
            "a == 'x' && b > 3",
            "a in ['q', 'r', 'x']",
            "c && !(d == 'y') || b < 0",
        ] {
            let filter = f(src);
            let n = 5_000_000u32;
            let start = std::time::Instant::now();
            let mut count = 0u32;
            for _ in 0..n {
                count += u32::from(filter.matches(std::hint::black_box(&v)));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            println!("{src}: {ns:.1} ns/match");
            assert_eq!(count, n);
        }
    }
}
