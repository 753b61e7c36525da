//! Dotted field paths (`a.b.c`): scanning them from filter and orderBy text, printing
//! them, and walking a JSON value by them (the lookup every evaluation and sort goes
//! through). Shared by the parser, the evaluator, the index and `orderBy`.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};

use super::error::{too_long, FilterError, MAX_LEN};

/// Objects up to this many entries are searched by a linear scan instead of a hash lookup:
/// typical publications are small, and comparing a few short keys beats hashing one.
const SCAN_LIMIT: usize = 8;

/// A dotted field path (`a.b.c`): object keys from the root of a JSON value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath(pub(super) Vec<Box<str>>);

impl FieldPath {
    /// The value at this path, or `None` when a key is missing or a step meets a
    /// non-object.
    #[inline]
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for key in &self.0 {
            cur = lookup(cur.as_object()?, key)?;
        }
        Some(cur)
    }

    /// Parses a whole string as a path (`name(.name)*`, no whitespace).
    pub fn parse(s: &str) -> Result<FieldPath, FilterError> {
        if s.len() > MAX_LEN {
            return Err(too_long(s, "field path"));
        }
        let (path, end) = scan_path(s, 0)?;
        if end != s.len() {
            return Err(FilterError::new(end, "unexpected character in field path"));
        }
        Ok(path)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char('.')?;
            }
            f.write_str(key)?;
        }
        Ok(())
    }
}

#[inline]
pub(super) fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_LIMIT {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

pub(super) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

pub(super) fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// End of the name starting at `at` (which must be a name start).
pub(super) fn name_end(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(|&c| is_name_char(c)) {
        at += 1;
    }
    at
}

/// Scans `name(.name)*` at `start`; returns the path and the offset after it.
pub(super) fn scan_path(src: &str, start: usize) -> Result<(FieldPath, usize), FilterError> {
    let b = src.as_bytes();
    if !b.get(start).is_some_and(|&c| is_name_start(c)) {
        return Err(FilterError::new(start, "expected a field name"));
    }
    let mut keys = Vec::new();
    let mut at = start;
    loop {
        let end = name_end(b, at);
        keys.push(Box::from(&src[at..end]));
        at = end;
        if b.get(at) != Some(&b'.') {
            return Ok((FieldPath(keys), at));
        }
        at += 1;
        if !b.get(at).is_some_and(|&c| is_name_start(c)) {
            return Err(FilterError::new(at, "expected a name after '.'"));
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use serde_json::json;

    #[test]
    fn field_paths() {
        let p = path("a.b_2._c");
        assert_eq!(p.to_string(), "a.b_2._c");
        assert_eq!(p.get(&json!({"a": {"b_2": {"_c": 7}}})), Some(&json!(7)));
        assert_eq!(p.get(&json!({"a": {"b_2": 1}})), None);
        assert_eq!(path("x").get(&json!("x")), None);
        for (s, at) in [
            ("", 0),
            ("a.", 2),
            ("a b", 1),
            (" a", 0),
            ("a.b.", 4),
            ("a-b", 1),
            ("é", 0),
        ] {
            let e = FieldPath::parse(s).expect_err(s);
            assert_eq!(e.offset, at, "{s:?}: {e}");
        }
    }
}
