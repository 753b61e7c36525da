//! The filter and `orderBy` languages of PROTOCOL.md §4 (subscription filters) and §7 (live
//! queries and entity lists): parsing, canonical printing and evaluation against
//! `serde_json::Value`s.
//!
//! Everything here is pure: no I/O, no global state, no interior mutability. A parsed
//! [`Filter`] or [`OrderBy`] is plain data (`Send + Sync`), so a shard can evaluate it on
//! its own thread without coordination.
//!
//! # Filters
//!
//! ```text
//! expr  := or          or := and ("||" and)*          and := unary ("&&" unary)*
//! unary := "!" unary | cmp | "(" expr ")"
//! cmp   := field op literal | field "in" "[" literal ("," literal)* "]" | field
//! op    := == != < <= > >=        field := name ("." name)*     name := [A-Za-z_][A-Za-z0-9_]*
//! literal := 'str' | "str" | number | true | false | null
//! ```
//!
//! - Whitespace (space, tab, CR, LF) may separate tokens; a field path is one token (no
//!   whitespace around its dots). `true`, `false`, `null` and `in` are keywords only where a
//!   literal or an operator is expected, so fields such as `inbox`, `nullable` or even `in`
//!   parse as fields.
//! - Strings take single or double quotes and the escapes `\\ \' \" \n \t \r \/ \uXXXX`
//!   (UTF-16 surrogate pairs combine; a lone surrogate is an error). Any other escape, and a
//!   raw control character (below U+0020) inside a string, is an error, as in JSON.
//! - Numbers are JSON-like (`-?digits(.digits)?([eE][+-]?digits)?`) and become `f64`; a
//!   literal that overflows to infinity is an error.
//! - `!` binds tightest, then `&&`, then `||`. `!` applies to a whole unary, so `!a == 1`
//!   means `!(a == 1)`.
//!
//! ## Semantics
//!
//! - A field path walks objects by key. A missing key, or a step through anything that is
//!   not an object, makes the field *missing*, and a missing field behaves exactly like
//!   `null`: `x == null` holds when `x` is absent.
//! - Comparisons only hold between values of the same type, and **every** comparison of
//!   mismatched types is false, `!=` included: `n != 'a'` is false for `n = 3`, and
//!   `x != null` is false for every `x` (write `x` or `!(x == null)` instead). This keeps
//!   `!=` from matching documents that merely lack a field or carry another type, which is
//!   what subscribers almost always mean.
//! - Numbers compare as `f64` (JSON `1` equals `1.0`; `-0` equals `0`; integers beyond
//!   2^53 compare as the `f64` they round to). Strings compare by bytes (UTF-8 order, which
//!   is code point order). Booleans support `==` and `!=` only; `<`, `<=`, `>`, `>=` on
//!   booleans are false. `null` equals only `null`/missing, and `null <= null` is false.
//!   An array or object as the field value makes every comparison false.
//! - `field in [l1, l2, ...]` holds when `field == li` holds for some `i`.
//! - `field` alone tests truthiness: false for missing, `null`, `false`, the number `0`
//!   (and `-0`) and the empty string; true for everything else, including every array and
//!   object (even empty ones).
//!
//! ## Printing
//!
//! [`Filter`]'s `Display` is the canonical form: compact (no optional whitespace, no
//! redundant parentheses, the quote that needs fewer escapes, the shortest number text), so
//! that it is never longer nor more deeply nested than any source that parses to the same
//! filter. `Filter::parse(&f.to_string()) == Ok(f)` therefore holds for every parsed filter,
//! limits included.
//!
//! ## Limits
//!
//! Input at most [`MAX_LEN`] bytes, `!`/parenthesis nesting at most [`MAX_DEPTH`], at most
//! [`MAX_IN_ITEMS`] `in` list items in the whole filter. Going past any of them is a
//! [`FilterError`] with the byte offset where it happened; no input makes the parser or
//! the evaluator panic or overflow the stack (evaluation recursion is bounded by the
//! nesting limit).
//!
//! # orderBy
//!
//! `field [asc|desc]` items joined by commas (`createdAt desc, id`), default `asc`,
//! directions lowercase, at most [`MAX_ORDER_KEYS`] items and [`MAX_LEN`] bytes. Sorting
//! uses [`compare_values`], a total order over JSON values: missing = `null` < `false` <
//! `true` < numbers (as `f64`) < strings (bytes) < arrays < objects, where all arrays are
//! equal to each other and all objects are equal to each other (sorting by a structured
//! field is meaningless, and comparing them without allocating keeps sorts cheap).
//! [`OrderBy::compare`] breaks remaining ties by the entity's `id`, so the order is total
//! and stable across shards.
//!
//! # Modules
//!
//! This module is the public surface (the re-exports below); the work is split by concern:
//! `error` (the limits and [`FilterError`]), `path` (field paths), `ast` (the parsed
//! form), `parse` (text to [`Filter`]), `print` (canonical printing), `eval` (matching),
//! `index` (the equality index's keys) and `order_by` (`orderBy` and the value order).
//! Each submodule uses only modules named before it in that list, never one after it.

mod ast;
mod error;
mod eval;
mod index;
mod order_by;
mod parse;
mod path;
mod print;
#[cfg(test)]
mod testkit;

pub use ast::Filter;
pub use error::{FilterError, MAX_DEPTH, MAX_IN_ITEMS, MAX_LEN, MAX_ORDER_KEYS};
pub use index::IndexKey;
pub use order_by::{compare_values, Direction, OrderBy};
pub use path::FieldPath;
