//! Canonical printing of a [`Filter`] (its `Display`): compact, the quote that needs
//! fewer escapes, the shortest number text, so that printing then parsing gives the same
//! filter and never a longer text.

use std::fmt::{self, Write as _};

use super::ast::{Expr, Filter, Literal};

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(f, &self.root)
    }
}

fn write_expr(f: &mut fmt::Formatter<'_>, e: &Expr) -> fmt::Result {
    match e {
        Expr::Or(xs) => write_chain(f, xs, "||", |x| matches!(x, Expr::Or(_))),
        Expr::And(xs) => write_chain(f, xs, "&&", |x| matches!(x, Expr::Or(_) | Expr::And(_))),
        Expr::Not(x) => {
            f.write_char('!')?;
            write_operand(f, x, matches!(**x, Expr::Or(_) | Expr::And(_)))
        }
        Expr::Cmp(path, op, lit) => {
            write!(f, "{path}{}", op.as_str())?;
            write_literal(f, lit)
        }
        Expr::In(path, lits) => {
            write!(f, "{path} in[")?;
            for (i, lit) in lits.iter().enumerate() {
                if i > 0 {
                    f.write_char(',')?;
                }
                write_literal(f, lit)?;
            }
            f.write_char(']')
        }
        Expr::Truthy(path) => write!(f, "{path}"),
    }
}

fn write_chain(
    f: &mut fmt::Formatter<'_>,
    xs: &[Expr],
    sep: &str,
    needs_parens: fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, x) in xs.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write_operand(f, x, needs_parens(x))?;
    }
    Ok(())
}

fn write_operand(f: &mut fmt::Formatter<'_>, e: &Expr, parens: bool) -> fmt::Result {
    if parens {
        f.write_char('(')?;
        write_expr(f, e)?;
        f.write_char(')')
    } else {
        write_expr(f, e)
    }
}

fn write_literal(f: &mut fmt::Formatter<'_>, lit: &Literal) -> fmt::Result {
    match lit {
        Literal::Null => f.write_str("null"),
        Literal::Bool(b) => write!(f, "{b}"),
        Literal::Num(x) => f.write_str(&number_text(*x)),
        Literal::Str(s) => write_string(f, s),
    }
}

/// Quotes with whichever quote character the string contains less often (single on a
/// tie), so the printed literal never needs more escapes than its source did.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let singles = s.bytes().filter(|&c| c == b'\'').count();
    let doubles = s.bytes().filter(|&c| c == b'"').count();
    let quote = if singles > doubles { '"' } else { '\'' };
    f.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c == quote => {
                f.write_char('\\')?;
                f.write_char(c)?;
            }
            c if c < ' ' => write!(f, "\\u{:04x}", c as u32)?,
            c => f.write_char(c)?,
        }
    }
    f.write_char(quote)
}

/// The shortest text that parses back to exactly `x`: Rust's shortest round-trip digits,
/// placed either as a plain decimal or as a mantissa with an exponent, whichever is
/// shorter (plain on a tie, then the fewest digits before the point). Never longer than
/// any literal text for the same `f64`.
fn number_text(x: f64) -> String {
    let sci = format!("{x:e}");
    let (sign, body) = match sci.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", sci.as_str()),
    };
    let Some((mantissa, exp)) = body.split_once('e') else {
        return format!("{x}");
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return format!("{x}");
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let d = digits.len() as i64;
    // The value is 0.DIGITS × 10^point.
    let point = exp + 1;
    let plain = if digits == "0" {
        "0".to_string()
    } else if point >= d {
        format!("{digits}{}", "0".repeat((point - d) as usize))
    } else if point > 0 {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    };
    let mut best = plain;
    for p in 1..=digits.len() {
        let (int, frac) = digits.split_at(p);
        let e = point - p as i64;
        let candidate = if frac.is_empty() {
            format!("{int}e{e}")
        } else {
            format!("{int}.{frac}e{e}")
        };
        if candidate.len() < best.len() {
            best = candidate;
        }
    }
    format!("{sign}{best}")
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use crate::filter::MAX_LEN;

    #[test]
    fn canonical_printing() {
        for (src, want) in [
            (
                "status == 'failed' && (n > 3 || tags.x in [1, 'a', null]) && !done",
                "status=='failed'&&(n>3||tags.x in[1,'a',null])&&!done",
            ),
            ("!(a == 1)", "!a==1"),
            ("!(a && b)", "!(a&&b)"),
            ("!(!(a))", "!!a"),
            ("(a || b) || c", "(a||b)||c"),
            ("a || (b || c)", "a||(b||c)"),
            ("a || (b && c)", "a||b&&c"),
            ("(a || b) && c", "(a||b)&&c"),
            ("((a)) && (b)", "a&&b"),
            ("a == \"it's\"", "a==\"it's\""),
            ("a == 'say \"hi\"'", "a=='say \"hi\"'"),
            ("a == 'it\\'s \"x\" \"y\"'", "a=='it\\'s \"x\" \"y\"'"),
            ("a == \"x\"", "a=='x'"),
            (r"a == '\/\u00e9\u0001\n\\'", r"a=='/é\u0001\n\\'"),
            (
                "a != true && b >= false || c <= null",
                "a!=true&&b>=false||c<=null",
            ),
            ("a in ['x']", "a in['x']"),
        ] {
            assert_eq!(f(src).to_string(), want, "{src}");
            assert_eq!(f(want), f(src));
        }
    }

    #[test]
    fn number_printing() {
        for (src, want) in [
            ("1", "1"),
            ("1.0", "1"),
            ("-0", "-0"),
            ("-0.0e5", "-0"),
            ("0.1", "0.1"),
            ("-2.5", "-2.5"),
            ("100", "100"),
            ("1000", "1e3"),
            ("1200000", "12e5"),
            ("12e5", "12e5"),
            ("1.2e6", "12e5"),
            ("0.001", "1e-3"),
            ("0.0015", "15e-4"),
            ("1.5e-7", "15e-8"),
            ("1e300", "1e300"),
            ("123456789", "123456789"),
            ("123.456", "123.456"),
            ("9007199254740993", "9007199254740992"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("1e-400", "0"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "17976931348623157e292"),
        ] {
            let text = number_text(src.parse().unwrap_or_else(|e| panic!("{src}: {e}")));
            assert_eq!(text, want, "{src}");
        }
    }

    #[test]
    fn number_text_is_shortest_and_exact() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            // Random decimal texts of every shape the grammar allows.
            let mut src = String::new();
            if rng.one_in(3) {
                src.push('-');
            }
            let int_digits = 1 + rng.below(if i % 2 == 0 { 3 } else { 20 });
            for _ in 0..int_digits {
                src.push(char::from(b'0' + rng.below(10) as u8));
            }
            if rng.one_in(2) {
                src.push('.');
                for _ in 0..1 + rng.below(20) {
                    src.push(char::from(b'0' + rng.below(10) as u8));
                }
            }
            if rng.one_in(2) {
                src.push(*rng.pick(&['e', 'E']));
                src.push_str(["", "+", "-"][rng.below(3)]);
                let range = if rng.one_in(2) { 30 } else { 340 };
                src.push_str(&rng.below(range).to_string());
            }
            check_number(&src);
            // And the shortest forms of random bit patterns.
            let x = f64::from_bits(rng.next());
            if x.is_finite() {
                check_number(&format!("{x}"));
                check_number(&format!("{x:e}"));
                check_number(&format!("{x:E}"));
            }
        }
    }

    fn check_number(src: &str) {
        let Ok(x) = src.parse::<f64>() else {
            panic!("{src}")
        };
        if !x.is_finite() {
            return;
        }
        let text = number_text(x);
        assert!(text.len() <= src.len(), "{src} printed as {text}");
        let back: f64 = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back.to_bits(), x.to_bits(), "{src} printed as {text}");
    }

    #[test]
    fn property_print_parse_round_trip() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..5000 {
            let filter = Filter {
                root: to_expr(&gen_expr(&mut rng, 4)),
            };
            let text = filter.to_string();
            assert!(text.len() <= MAX_LEN, "{text}");
            let back = Filter::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(back, filter, "{text}");
            assert_eq!(back.to_string(), text);
        }
    }
}
