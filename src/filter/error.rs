//! The limits every filter, orderBy and field path is held to, and [`FilterError`], the
//! one error type of the parsers (a message and the byte offset where the problem was
//! found). Owned by the filter module; everything else in it reports through this.

use std::fmt;
/// Longest filter or orderBy text accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of `!` and parentheses in a filter.
pub const MAX_DEPTH: usize = 32;
/// Most `in` list items in one filter, all lists together.
pub const MAX_IN_ITEMS: usize = 256;
/// Most keys in one orderBy.
pub const MAX_ORDER_KEYS: usize = 8;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a filter, orderBy or field path did not parse, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    /// Byte offset into the input where the problem was found (always a char boundary,
    /// at most the input's length).
    pub offset: usize,
    /// What is wrong, without the offset (`Display` appends " at byte N").
    pub message: String,
}

impl FilterError {
    pub(super) fn new(offset: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            offset,
            message: message.into(),
        }
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for FilterError {}

/// The error for input over [`MAX_LEN`], placed on a char boundary so that callers may
/// slice the input at any error offset.
pub(super) fn too_long(src: &str, what: &str) -> FilterError {
    let mut at = MAX_LEN;
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    FilterError::new(at, format!("{what} is longer than {MAX_LEN} bytes"))
}
#[cfg(test)]
mod tests {
    use crate::filter::Filter;

    #[test]
    fn errors_display_their_offset() {
        let e = Filter::parse("status ==").expect_err("incomplete");
        assert_eq!(e.to_string(), "expected a literal at byte 9");
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), e.to_string());
    }
}
