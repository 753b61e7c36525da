//! Test support shared by the filter modules' tests: parse-or-panic helpers, a small
//! deterministic RNG, and random filters (an AST of the tests' own, a noisy printer and a
//! reference evaluator written from the rules in the module docs, sharing no code with
//! the module). Compiled for tests only.

use serde_json::{json, Map, Value};

use super::ast::{Expr, Literal, Op};
use super::{FieldPath, Filter, OrderBy};

// -----------------------------------------------------------------------------------
// Helpers
// -----------------------------------------------------------------------------------

pub(super) fn f(src: &str) -> Filter {
    Filter::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

pub(super) fn m(src: &str, v: &Value) -> bool {
    f(src).matches(v)
}

pub(super) fn err_at(src: &str, offset: usize, part: &str) {
    let e = match Filter::parse(src) {
        Ok(x) => panic!("{src:?} parsed as {x:?}"),
        Err(e) => e,
    };
    assert_eq!(e.offset, offset, "{src:?}: {e}");
    assert!(e.message.contains(part), "{src:?}: {e} (wanted {part:?})");
    assert!(
        e.to_string().ends_with(&format!(" at byte {offset}")),
        "{e}"
    );
}

pub(super) fn order_err_at(src: &str, offset: usize, part: &str) {
    let e = match OrderBy::parse(src) {
        Ok(x) => panic!("{src:?} parsed as {x:?}"),
        Err(e) => e,
    };
    assert_eq!(e.offset, offset, "{src:?}: {e}");
    assert!(e.message.contains(part), "{src:?}: {e} (wanted {part:?})");
}

pub(super) fn path(s: &str) -> FieldPath {
    FieldPath::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// xorshift64: deterministic, dependency-free.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub(super) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

// -----------------------------------------------------------------------------------
// Random filters: an AST of the test's own, a noisy printer and a reference evaluator
// written from the rules in the module docs, sharing no code with the module.
// -----------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub(super) enum T {
    Or(Vec<T>),
    And(Vec<T>),
    Not(Box<T>),
    Cmp(Vec<&'static str>, &'static str, L),
    In(Vec<&'static str>, Vec<L>),
    Truthy(Vec<&'static str>),
}

#[derive(Clone, Debug)]
pub(super) enum L {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

pub(super) const NAMES: &[&str] = &[
    "a", "b", "c", "in", "inbox", "true", "null", "nullable", "false_x", "_", "x1", "desc",
];
pub(super) const OPS: &[&str] = &["==", "!=", "<", "<=", ">", ">="];
pub(super) const STRS: &[&str] = &[
    "", "a", "b", "A", "é", "x'y", "q\"", "\\", "\n\t", "😀", "\u{1}", "ab",
];
pub(super) const NUMS: &[f64] = &[0.0, -0.0, 1.0, 2.0, -1.0, 0.5, 2.5, 3.0, 1e300, 12e5];

pub(super) fn gen_path(rng: &mut Rng) -> Vec<&'static str> {
    (0..1 + rng.below(3).saturating_sub(1))
        .map(|_| *rng.pick(NAMES))
        .collect()
}

pub(super) fn gen_lit(rng: &mut Rng) -> L {
    match rng.below(10) {
        0 => L::Null,
        1 => L::Bool(rng.one_in(2)),
        2..=4 => L::Num(*rng.pick(NUMS)),
        5 => loop {
            let x = f64::from_bits(rng.next());
            if x.is_finite() {
                break L::Num(x);
            }
        },
        6..=8 => L::Str(rng.pick(STRS).to_string()),
        _ => {
            let pool = [
                'a', '\'', '"', '\\', '/', '\n', '\u{0}', '\u{1f}', 'é', '\u{ffff}', '😀', ' ',
            ];
            L::Str((0..rng.below(6)).map(|_| *rng.pick(&pool)).collect())
        }
    }
}

pub(super) fn gen_expr(rng: &mut Rng, depth: usize) -> T {
    if depth == 0 || rng.one_in(3) {
        return match rng.below(4) {
            0 | 1 => T::Cmp(gen_path(rng), OPS[rng.below(OPS.len())], gen_lit(rng)),
            2 => T::In(
                gen_path(rng),
                (0..1 + rng.below(3)).map(|_| gen_lit(rng)).collect(),
            ),
            _ => T::Truthy(gen_path(rng)),
        };
    }
    let kids = |rng: &mut Rng| {
        (0..2 + rng.below(2))
            .map(|_| gen_expr(rng, depth - 1))
            .collect()
    };
    match rng.below(3) {
        0 => T::Or(kids(rng)),
        1 => T::And(kids(rng)),
        _ => T::Not(Box::new(gen_expr(rng, depth - 1))),
    }
}

pub(super) fn to_path(p: &[&str]) -> FieldPath {
    FieldPath(p.iter().map(|&s| Box::from(s)).collect())
}

pub(super) fn to_lit(l: &L) -> Literal {
    match l {
        L::Null => Literal::Null,
        L::Bool(b) => Literal::Bool(*b),
        L::Num(x) => Literal::Num(*x),
        L::Str(s) => Literal::Str(s.as_str().into()),
    }
}

pub(super) fn to_expr(t: &T) -> Expr {
    match t {
        T::Or(xs) => Expr::Or(xs.iter().map(to_expr).collect()),
        T::And(xs) => Expr::And(xs.iter().map(to_expr).collect()),
        T::Not(x) => Expr::Not(Box::new(to_expr(x))),
        T::Cmp(p, op, l) => {
            let op = match *op {
                "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                _ => Op::Ge,
            };
            Expr::Cmp(to_path(p), op, to_lit(l))
        }
        T::In(p, ls) => Expr::In(to_path(p), ls.iter().map(to_lit).collect()),
        T::Truthy(p) => Expr::Truthy(to_path(p)),
    }
}

/// Prints `t` as some valid source for it: random whitespace, redundant parentheses,
/// either quote, random escapes and number spellings.
pub(super) fn noisy(rng: &mut Rng, t: &T, out: &mut String) {
    let redundant = rng.one_in(8);
    if redundant {
        out.push('(');
        noisy_ws(rng, out);
    }
    match t {
        T::Or(xs) | T::And(xs) => {
            let (sep, is_or) = if matches!(t, T::Or(_)) {
                ("||", true)
            } else {
                ("&&", false)
            };
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    noisy_ws(rng, out);
                    out.push_str(sep);
                    noisy_ws(rng, out);
                }
                let needs = matches!(x, T::Or(_)) || (!is_or && matches!(x, T::And(_)));
                noisy_operand(rng, x, needs, out);
            }
        }
        T::Not(x) => {
            out.push('!');
            noisy_ws(rng, out);
            noisy_operand(rng, x, matches!(**x, T::Or(_) | T::And(_)), out);
        }
        T::Cmp(p, op, l) => {
            out.push_str(&p.join("."));
            noisy_ws(rng, out);
            out.push_str(op);
            noisy_ws(rng, out);
            noisy_lit(rng, l, out);
        }
        T::In(p, ls) => {
            out.push_str(&p.join("."));
            out.push(*rng.pick(&[' ', '\t', '\n', '\r']));
            noisy_ws(rng, out);
            out.push_str("in");
            noisy_ws(rng, out);
            out.push('[');
            for (i, l) in ls.iter().enumerate() {
                noisy_ws(rng, out);
                if i > 0 {
                    out.push(',');
                    noisy_ws(rng, out);
                }
                noisy_lit(rng, l, out);
            }
            noisy_ws(rng, out);
            out.push(']');
        }
        T::Truthy(p) => out.push_str(&p.join(".")),
    }
    if redundant {
        noisy_ws(rng, out);
        out.push(')');
    }
}

pub(super) fn noisy_operand(rng: &mut Rng, t: &T, parens: bool, out: &mut String) {
    if parens {
        out.push('(');
        noisy_ws(rng, out);
    }
    noisy(rng, t, out);
    if parens {
        noisy_ws(rng, out);
        out.push(')');
    }
}

pub(super) fn noisy_ws(rng: &mut Rng, out: &mut String) {
    if rng.one_in(2) {
        for _ in 0..1 + rng.below(2) {
            out.push(*rng.pick(&[' ', ' ', '\t', '\n', '\r']));
        }
    }
}

pub(super) fn noisy_lit(rng: &mut Rng, l: &L, out: &mut String) {
    match l {
        L::Null => out.push_str("null"),
        L::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        L::Num(x) => {
            let text = match rng.below(4) {
                0 => format!("{x}"),
                1 => format!("{x:e}"),
                2 => format!("{x:E}"),
                _ => format!("{x:e}").replace("e", "e+").replace("+-", "-"),
            };
            out.push_str(&text);
        }
        L::Str(s) => {
            let quote = if rng.one_in(2) { '\'' } else { '"' };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\n' if rng.one_in(2) => out.push_str("\\n"),
                    '\t' if rng.one_in(2) => out.push_str("\\t"),
                    c if (c as u32) < 0x20 || rng.one_in(6) => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            if rng.one_in(2) {
                                out.push_str(&format!("\\u{:04x}", u));
                            } else {
                                out.push_str(&format!("\\u{:04X}", u));
                            }
                        }
                    }
                    '/' if rng.one_in(2) => out.push_str("\\/"),
                    '\'' | '"' if rng.one_in(2) => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
    }
}

pub(super) fn ref_get<'a>(v: &'a Value, p: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in p {
        match cur {
            Value::Object(map) => cur = map.get(*key)?,
            _ => return None,
        }
    }
    Some(cur)
}

pub(super) fn ref_cmp(v: Option<&Value>, op: &str, l: &L) -> bool {
    let v = v.unwrap_or(&Value::Null);
    match (v, l) {
        (Value::Null, L::Null) => op == "==",
        (Value::Bool(a), L::Bool(b)) => match op {
            "==" => a == b,
            "!=" => a != b,
            _ => false,
        },
        (Value::Number(a), L::Num(b)) => {
            let a = a.as_f64().expect("finite");
            match op {
                "==" => a == *b,
                "!=" => a != *b,
                "<" => a < *b,
                "<=" => a <= *b,
                ">" => a > *b,
                _ => a >= *b,
            }
        }
        (Value::String(a), L::Str(b)) => {
            let (a, b) = (a.as_bytes(), b.as_bytes());
            match op {
                "==" => a == b,
                "!=" => a != b,
                "<" => a < b,
                "<=" => a <= b,
                ">" => a > b,
                _ => a >= b,
            }
        }
        _ => false,
    }
}

pub(super) fn ref_eval(t: &T, v: &Value) -> bool {
    match t {
        T::Or(xs) => xs.iter().any(|x| ref_eval(x, v)),
        T::And(xs) => xs.iter().all(|x| ref_eval(x, v)),
        T::Not(x) => !ref_eval(x, v),
        T::Cmp(p, op, l) => ref_cmp(ref_get(v, p), op, l),
        T::In(p, ls) => ls.iter().any(|l| ref_cmp(ref_get(v, p), "==", l)),
        T::Truthy(p) => match ref_get(v, p).unwrap_or(&Value::Null) {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(_) | Value::Object(_) => true,
        },
    }
}

pub(super) fn gen_leaf(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => json!(rng.below(5) as i64 - 1),
        3 => json!(*rng.pick(NUMS)),
        4 | 5 => json!(rng.pick(STRS)),
        6 => json!([rng.below(3)]),
        7 => json!({}),
        _ => json!([]),
    }
}

pub(super) fn gen_value(rng: &mut Rng, depth: usize) -> Value {
    if depth == 2 && rng.one_in(20) {
        return gen_leaf(rng);
    }
    let mut map = Map::new();
    for _ in 0..rng.below(7) {
        let v = if depth > 0 && rng.one_in(3) {
            gen_value(rng, depth - 1)
        } else {
            gen_leaf(rng)
        };
        map.insert(rng.pick(NAMES).to_string(), v);
    }
    Value::Object(map)
}

pub(super) fn lit_value(l: &L) -> Value {
    match l {
        L::Null => Value::Null,
        L::Bool(b) => Value::Bool(*b),
        L::Num(x) if x.fract() == 0.0 && x.abs() < 1e15 && *x != 0.0 => json!(*x as i64),
        L::Num(x) => json!(*x),
        L::Str(s) => json!(s),
    }
}

pub(super) fn set_path(v: &mut Value, p: &[&str], to: Value) {
    if !v.is_object() {
        *v = json!({});
    }
    let Value::Object(map) = v else { return };
    match p {
        [] => {}
        [last] => {
            map.insert(last.to_string(), to);
        }
        [first, rest @ ..] => {
            set_path(
                map.entry(first.to_string()).or_insert(Value::Null),
                rest,
                to,
            );
        }
    }
}
