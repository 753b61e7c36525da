//! The one rule for the query strings of the REST list endpoints (entities, channels,
//! dead letters), so that a client learns it once:
//!
//! - the string is split into percent-decoded `name=value` pairs ([`http::query_pairs`]);
//! - the names are checked first, left to right: a name the endpoint does not take, or a
//!   name given a second time, is 400 `BAD_MESSAGE` naming it (a repeated parameter is
//!   ambiguous, and answering with either value would hide a client's mistake);
//! - then the endpoint checks the values, in the order of its parameter list, each refusal
//!   naming its parameter; a number is plain decimal digits (`0`-`9`, no sign, no leading
//!   zero, no spaces), so `+5`, `007` and ` 5` are refused rather than read as 5.
//!
//! Used by `api::entities`, `api::channels` and `api::services`; pure (a string in, a
//! [`Params`] or a [`Refused`] out).

use crate::http;
use crate::protocol::truncate;

use super::Refused;

/// The checked parameters of one query string: each name at most once, every name one the
/// endpoint takes.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(&'static str, String)>,
}

fn bad(message: String) -> Refused {
    (400, "BAD_MESSAGE", message)
}

/// Splits and checks `query` against the endpoint's parameter names (`known`, in the order
/// the endpoint checks their values; an unknown name's refusal lists them).
pub fn parse(query: &str, known: &[&'static str]) -> Result<Params, Refused> {
    let mut pairs: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in http::query_pairs(query) {
        let Some(&known_name) = known.iter().find(|k| **k == name) else {
            return Err(bad(format!(
                "unknown query parameter '{}' (this list takes {})",
                truncate(&name, 64),
                known.join(", ")
            )));
        };
        if pairs.iter().any(|(k, _)| *k == known_name) {
            return Err(bad(format!(
                "query parameter '{known_name}' is given more than once"
            )));
        }
        pairs.push((known_name, value));
    }
    Ok(Params { pairs })
}

impl Params {
    /// The value of `name`, if given (possibly empty).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` as a whole number from `min` to `max` (see [`number`]), or
    /// `None` if not given.
    pub fn number(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, Refused> {
        self.get(name)
            .map(|v| number(name, v, min, max))
            .transpose()
    }
}

/// `value` as a whole number from `min` to `max`, written in plain decimal digits (no
/// sign, no leading zero, no spaces). The refusal names the parameter and the range.
pub fn number(name: &str, value: &str, min: u64, max: u64) -> Result<u64, Refused> {
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    match value.parse::<u64>() {
        Ok(n) if plain && (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "{name} must be a whole number from {min} to {max} in plain decimal digits, got '{}'",
            truncate(value, 32)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["limit", "cursor"];

    fn refused(r: Result<impl std::fmt::Debug, Refused>, needle: &str) {
        match r {
            Ok(v) => panic!("accepted {v:?}, wanted a refusal with {needle:?}"),
            Err((status, code, m)) => {
                assert_eq!((status, code), (400, "BAD_MESSAGE"), "{m}");
                assert!(m.contains(needle), "{m:?} does not contain {needle:?}");
            }
        }
    }

    #[test]
    fn names_once_and_known() {
        let p = parse("limit=5&cursor=&", KNOWN).unwrap();
        assert_eq!(p.get("limit"), Some("5"));
        assert_eq!(p.get("cursor"), Some(""));
        assert_eq!(parse("", KNOWN).unwrap().get("limit"), None);
        // Decoded before comparing: `%6Cimit` is `limit`.
        refused(
            parse("limit=1&%6Cimit=2", KNOWN),
            "'limit' is given more than once",
        );
        refused(
            parse("cursor=1&cursor=1", KNOWN),
            "'cursor' is given more than once",
        );
        refused(
            parse("limit=&limit=", KNOWN),
            "'limit' is given more than once",
        );
        refused(
            parse("limit=1&sort=asc", KNOWN),
            "unknown query parameter 'sort' (this list takes limit, cursor)",
        );
        // The first problem from the left counts.
        refused(parse("x=1&limit=1&limit=2", KNOWN), "'x'");
        refused(
            parse("limit=1&limit=2&x=1", KNOWN),
            "'limit' is given more than once",
        );
        let long = format!("{}=1", "n".repeat(500));
        let (_, _, m) = parse(&long, KNOWN).unwrap_err();
        assert!(m.len() < 200, "{m}");
    }

    #[test]
    fn numbers_are_plain_decimal_digits() {
        for (v, want) in [("1", 1), ("10", 10), ("0", 0), ("1000", 1000)] {
            assert_eq!(number("limit", v, 0, 1000), Ok(want), "{v}");
        }
        for v in [
            "+5",
            "-5",
            "007",
            "05",
            "00",
            " 5",
            "5 ",
            "5.0",
            "5e1",
            "0x5",
            "",
            "٥",
            "1001",
            "99999999999999999999",
        ] {
            refused(
                number("limit", v, 0, 1000),
                "limit must be a whole number from 0 to 1000",
            );
        }
        refused(
            number("page", "0", 1, 9),
            "page must be a whole number from 1 to 9",
        );
        let p = parse("limit=%2B5", KNOWN).unwrap();
        refused(p.number("limit", 1, 10), "got '+5'");
        assert_eq!(
            parse("limit=7", KNOWN).unwrap().number("limit", 1, 10),
            Ok(Some(7))
        );
        assert_eq!(parse("", KNOWN).unwrap().number("limit", 1, 10), Ok(None));
    }
}
