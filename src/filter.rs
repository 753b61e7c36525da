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

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use serde_json::{Map, Number, Value};

/// Longest filter or orderBy text accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of `!` and parentheses in a filter.
pub const MAX_DEPTH: usize = 32;
/// Most `in` list items in one filter, all lists together.
pub const MAX_IN_ITEMS: usize = 256;
/// Most keys in one orderBy.
pub const MAX_ORDER_KEYS: usize = 8;

/// Objects up to this many entries are searched by a linear scan instead of a hash lookup:
/// typical publications are small, and comparing a few short keys beats hashing one.
const SCAN_LIMIT: usize = 8;

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
    fn new(offset: usize, message: impl Into<String>) -> FilterError {
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
fn too_long(src: &str, what: &str) -> FilterError {
    let mut at = MAX_LEN;
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    FilterError::new(at, format!("{what} is longer than {MAX_LEN} bytes"))
}

// ---------------------------------------------------------------------------------------
// Field paths
// ---------------------------------------------------------------------------------------

/// A dotted field path (`a.b.c`): object keys from the root of a JSON value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Box<str>>);

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
fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_LIMIT {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// End of the name starting at `at` (which must be a name start).
fn name_end(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(|&c| is_name_char(c)) {
        at += 1;
    }
    at
}

/// Scans `name(.name)*` at `start`; returns the path and the offset after it.
fn scan_path(src: &str, start: usize) -> Result<(FieldPath, usize), FilterError> {
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

// ---------------------------------------------------------------------------------------
// The filter AST
// ---------------------------------------------------------------------------------------

/// A parsed filter. Build with [`Filter::parse`]; evaluate with [`Filter::matches`].
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    root: Expr,
}

/// `And`/`Or` hold at least two operands; parentheses leave no node of their own, so the
/// tree is exactly what canonical printing reproduces.
#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(FieldPath, Op, Literal),
    In(FieldPath, Vec<Literal>),
    Truthy(FieldPath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    #[inline]
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

/// Numbers are always finite (the parser rejects the rest).
#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
}

// ---------------------------------------------------------------------------------------
// Evaluation (the fan-out hot path: no allocation, no formatting)
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Indexing
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Filter parser
// ---------------------------------------------------------------------------------------

impl Filter {
    /// Parses filter text; see the module docs for the language and its limits.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        if src.len() > MAX_LEN {
            return Err(too_long(src, "filter"));
        }
        let mut p = Parser {
            src,
            b: src.as_bytes(),
            pos: 0,
            in_items: 0,
            after_field: false,
        };
        p.ws();
        if p.pos == src.len() {
            return Err(FilterError::new(0, "filter is empty"));
        }
        let root = p.parse_or(0)?;
        p.ws();
        if p.pos != src.len() {
            return Err(p.bad_continuation(false));
        }
        Ok(Filter { root })
    }
}

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    /// `in` list items so far, against [`MAX_IN_ITEMS`].
    in_items: usize,
    /// Whether the last thing parsed was a bare field, so that an error right after it can
    /// say an operator was also possible.
    after_field: bool,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    fn at(&self, token: &str) -> bool {
        self.b
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(token.as_bytes()))
    }

    fn err(&self, message: impl Into<String>) -> FilterError {
        FilterError::new(self.pos, message)
    }

    /// The error for whatever follows a complete operand where `&&`, `||`, `)` (inside
    /// parentheses) or the end was needed.
    fn bad_continuation(&self, in_parens: bool) -> FilterError {
        if self.pos == self.b.len() && in_parens {
            return self.err("expected ')'");
        }
        match self.peek() {
            Some(b'&') => return self.err("expected '&&'"),
            Some(b'|') => return self.err("expected '||'"),
            _ => {}
        }
        let op = if self.after_field {
            "an operator, "
        } else {
            ""
        };
        let end = if in_parens { "')'" } else { "end of filter" };
        self.err(format!("expected {op}'&&', '||' or {end}"))
    }

    fn parse_or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let first = self.parse_and(depth)?;
        self.ws();
        if !self.at("||") {
            return Ok(first);
        }
        let mut xs = vec![first];
        while self.at("||") {
            self.pos += 2;
            xs.push(self.parse_and(depth)?);
            self.ws();
        }
        Ok(Expr::Or(xs))
    }

    fn parse_and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let first = self.parse_unary(depth)?;
        self.ws();
        if !self.at("&&") {
            return Ok(first);
        }
        let mut xs = vec![first];
        while self.at("&&") {
            self.pos += 2;
            xs.push(self.parse_unary(depth)?);
            self.ws();
        }
        Ok(Expr::And(xs))
    }

    /// `depth` counts the `!`s and `(`s enclosing this point of the text. Counting the
    /// text rather than the tree bounds the recursion for inputs like `((((…` or `!!!!…`,
    /// and canonical printing never emits more of either than the source had.
    fn parse_unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        self.ws();
        match self.peek() {
            Some(b'!') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.parse_unary(depth + 1)?)))
            }
            Some(b'(') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                self.pos += 1;
                let e = self.parse_or(depth + 1)?;
                self.ws();
                if self.peek() != Some(b')') {
                    return Err(self.bad_continuation(true));
                }
                self.pos += 1;
                self.after_field = false;
                Ok(e)
            }
            Some(c) if is_name_start(c) => self.parse_cmp(),
            _ => Err(self.err("expected a field name, '!' or '('")),
        }
    }

    fn parse_cmp(&mut self) -> Result<Expr, FilterError> {
        let (path, end) = scan_path(self.src, self.pos)?;
        self.pos = end;
        self.after_field = false;
        self.ws();
        let op = match (self.peek(), self.peek_at(1)) {
            (Some(b'='), Some(b'=')) => Op::Eq,
            (Some(b'='), _) => {
                return Err(self.err("expected '==' (a single '=' is not an operator)"));
            }
            (Some(b'!'), Some(b'=')) => Op::Ne,
            (Some(b'<'), Some(b'=')) => Op::Le,
            (Some(b'<'), _) => Op::Lt,
            (Some(b'>'), Some(b'=')) => Op::Ge,
            (Some(b'>'), _) => Op::Gt,
            (Some(b'i'), Some(b'n')) if !self.peek_at(2).is_some_and(is_name_char) => {
                self.pos += 2;
                return self.parse_in(path);
            }
            _ => {
                self.after_field = true;
                return Ok(Expr::Truthy(path));
            }
        };
        self.pos += op.as_str().len();
        self.ws();
        let lit = self.parse_literal()?;
        Ok(Expr::Cmp(path, op, lit))
    }

    fn parse_in(&mut self, path: FieldPath) -> Result<Expr, FilterError> {
        self.ws();
        if self.peek() != Some(b'[') {
            return Err(self.err("expected '['"));
        }
        self.pos += 1;
        let mut lits = Vec::new();
        loop {
            self.ws();
            if self.in_items == MAX_IN_ITEMS {
                return Err(self.err(format!(
                    "more than {MAX_IN_ITEMS} 'in' list items in the filter"
                )));
            }
            self.in_items += 1;
            lits.push(self.parse_literal()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Expr::In(path, lits));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn parse_literal(&mut self) -> Result<Literal, FilterError> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.parse_string(q).map(Literal::Str),
            Some(b'-' | b'0'..=b'9') => self.parse_number().map(Literal::Num),
            Some(c) if is_name_start(c) => {
                let end = name_end(self.b, self.pos);
                let lit = match &self.src[self.pos..end] {
                    "true" => Literal::Bool(true),
                    "false" => Literal::Bool(false),
                    "null" => Literal::Null,
                    _ => return Err(self.err("expected a literal")),
                };
                self.pos = end;
                Ok(lit)
            }
            _ => Err(self.err("expected a literal")),
        }
    }

    fn digits(&mut self) -> Result<(), FilterError> {
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.err("expected a digit"));
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        Ok(())
    }

    fn parse_number(&mut self) -> Result<f64, FilterError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        self.digits()?;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.digits()?;
        }
        match self.src[start..self.pos].parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(FilterError::new(start, "number out of range")),
        }
    }

    fn parse_string(&mut self, quote: u8) -> Result<Box<str>, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            let Some(c) = self.peek() else {
                return Err(FilterError::new(open, "unterminated string"));
            };
            if c == quote {
                out.push_str(&self.src[run..self.pos]);
                self.pos += 1;
                return Ok(out.into_boxed_str());
            }
            if c < 0x20 {
                return Err(self.err("control character in string (use an escape)"));
            }
            if c != b'\\' {
                self.pos += 1;
                continue;
            }
            out.push_str(&self.src[run..self.pos]);
            let ch = match self.peek_at(1) {
                Some(b'u') => self.unicode_escape()?,
                next => {
                    let ch = match next {
                        Some(b'\\') => '\\',
                        Some(b'\'') => '\'',
                        Some(b'"') => '"',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        None => return Err(FilterError::new(open, "unterminated string")),
                        Some(_) => return Err(self.err("invalid escape in string")),
                    };
                    self.pos += 2;
                    ch
                }
            };
            out.push(ch);
            run = self.pos;
        }
    }

    /// `\uXXXX` (or a surrogate pair of them) at `pos`; leaves `pos` after it.
    fn unicode_escape(&mut self) -> Result<char, FilterError> {
        let esc = self.pos;
        let hi = self.hex4(esc)?;
        self.pos = esc + 6;
        let code = match hi {
            0xD800..=0xDBFF => {
                let lo = if self.at("\\u") {
                    self.hex4(self.pos)?
                } else {
                    0
                };
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(FilterError::new(esc, "unpaired surrogate in \\u escape"));
                }
                self.pos += 6;
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(FilterError::new(esc, "unpaired surrogate in \\u escape"));
            }
            _ => hi,
        };
        char::from_u32(code).ok_or_else(|| FilterError::new(esc, "invalid \\u escape"))
    }

    /// The four hex digits of the `\u` escape whose backslash is at `esc`.
    fn hex4(&self, esc: usize) -> Result<u32, FilterError> {
        let mut code = 0;
        for i in 0..4 {
            let digit = self
                .b
                .get(esc + 2 + i)
                .and_then(|&c| (c as char).to_digit(16))
                .ok_or_else(|| FilterError::new(esc, "invalid \\u escape (need 4 hex digits)"))?;
            code = code * 16 + digit;
        }
        Ok(code)
    }
}

// ---------------------------------------------------------------------------------------
// Filter printing
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// orderBy
// ---------------------------------------------------------------------------------------

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
    use serde_json::json;

    // -----------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------

    fn f(src: &str) -> Filter {
        Filter::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    fn m(src: &str, v: &Value) -> bool {
        f(src).matches(v)
    }

    fn err_at(src: &str, offset: usize, part: &str) {
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

    fn order_err_at(src: &str, offset: usize, part: &str) {
        let e = match OrderBy::parse(src) {
            Ok(x) => panic!("{src:?} parsed as {x:?}"),
            Err(e) => e,
        };
        assert_eq!(e.offset, offset, "{src:?}: {e}");
        assert!(e.message.contains(part), "{src:?}: {e} (wanted {part:?})");
    }

    fn path(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// xorshift64: deterministic, dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
    }

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
    fn precedence() {
        assert_eq!(f("a || b && c"), f("a || (b && c)"));
        assert_ne!(f("a || b && c"), f("(a || b) && c"));
        assert_eq!(f("!a && b"), f("(!a) && b"));
        assert_eq!(f("!a == 1"), f("!(a == 1)"));
        assert_eq!(f("!a in [1]"), f("!(a in [1])"));
        assert_eq!(f("a && b || c && d"), f("(a && b) || (c && d)"));
        assert_eq!(f("!!a"), f("!(!a)"));
        assert_eq!(f("((a))"), f("a"));
        let v = json!({"a": true, "b": false, "c": false});
        assert!(m("a || b && c", &v));
        assert!(!m("(a || b) && c", &v));
        assert!(!m("!a || b", &v));
        assert!(m("!(a && b)", &v));
        assert!(!m("!a == true", &v));
        // The chains are n-ary; parenthesized chains keep their own node.
        assert_eq!(
            f("a && b && c").root,
            Expr::And(vec![tr("a"), tr("b"), tr("c")])
        );
        assert_eq!(
            f("(a && b) && c").root,
            Expr::And(vec![Expr::And(vec![tr("a"), tr("b")]), tr("c")])
        );
    }

    fn tr(p: &str) -> Expr {
        Expr::Truthy(path(p))
    }

    fn str_lit(src: &str) -> Box<str> {
        match f(&format!("s == {src}")).root {
            Expr::Cmp(_, Op::Eq, Literal::Str(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn string_escapes() {
        for (src, want) in [
            (r"'a\'b'", "a'b"),
            (r#""a\"b""#, "a\"b"),
            (r#"'a\"b'"#, "a\"b"),
            (r#""a\'b""#, "a'b"),
            (r"'\\'", "\\"),
            (r"'\n\t\r\/'", "\n\t\r/"),
            (r"'\u00e9'", "é"),
            (r"'\u00E9x'", "éx"),
            (r"'\ud83d\ude00'", "😀"),
            (r"'\uD83D\uDE00!'", "😀!"),
            (r#"'"'"#, "\""),
            (r#""'""#, "'"),
            ("'é😀'", "é😀"),
            (r"'\u0000'", "\0"),
            ("''", ""),
            ("'\u{7f}'", "\u{7f}"),
        ] {
            assert_eq!(&*str_lit(src), want, "{src}");
            assert!(m(&format!("s == {src}"), &json!({ "s": want })), "{src}");
        }
    }

    #[test]
    fn string_escape_errors() {
        err_at(r"s == 'a\qb'", 7, "invalid escape");
        err_at(r"s == 'a\b'", 7, "invalid escape");
        err_at(r"s == 'a\x41'", 7, "invalid escape");
        err_at(r"s == '\u12'", 6, "\\u escape");
        err_at(r"s == '\u12g4'", 6, "\\u escape");
        err_at(r"s == '\ud800'", 6, "unpaired surrogate");
        err_at(r"s == '\ud800\u0041'", 6, "unpaired surrogate");
        err_at(r"s == '\ud800\ud800'", 6, "unpaired surrogate");
        err_at(r"s == 'x\udc00'", 7, "unpaired surrogate");
        err_at("s == 'a\nb'", 7, "control character");
        err_at("s == 'a\tb'", 7, "control character");
        err_at("s == 'a\\", 5, "unterminated string");
        err_at("s == \"a'", 5, "unterminated string");
        err_at("s == 'a\\'", 5, "unterminated string");
    }

    #[test]
    fn keywords_are_fields_outside_literal_and_operator_positions() {
        let v = json!({
            "inbox": 1, "nullable": true, "true_": 2, "in": 3, "true": "t", "null": false,
            "falsey": 0, "index": {"in": 4}
        });
        for src in [
            "inbox == 1",
            "inbox in [1]",
            "nullable",
            "nullable == true",
            "true_ == 2",
            "in == 3",
            "in in [3]",
            "true == 't'",
            "true",
            "!null",
            "!falsey",
            "falsey == 0",
            "index.in == 4",
            "index.in in [4]",
        ] {
            assert!(m(src, &v), "{src}");
        }
        err_at("a == nullx", 5, "expected a literal");
        err_at("a == True", 5, "expected a literal");
        err_at("a == in", 5, "expected a literal");
        err_at(
            "a inbox",
            2,
            "expected an operator, '&&', '||' or end of filter",
        );
        err_at("a in", 4, "expected '['");
    }

    #[test]
    fn whitespace_between_tokens() {
        assert_eq!(f("\t( a\r\n==\n1 )\t&&\r!\nb  "), f("(a==1)&&!b"));
        assert_eq!(f(" a in [ 'x' ,\n'y' ] "), f("a in['x','y']"));
        // A path is a single token.
        err_at("a . b", 2, "expected an operator");
        err_at("a. b", 2, "expected a name after '.'");
    }

    #[test]
    fn error_offsets() {
        err_at("", 0, "filter is empty");
        err_at("  \t\r\n", 0, "filter is empty");
        err_at("status ==", 9, "expected a literal");
        err_at("status ==   ", 12, "expected a literal");
        err_at("a == 'x", 5, "unterminated string");
        err_at("a = 1", 2, "expected '=='");
        err_at("a =! 1", 2, "expected '=='");
        err_at("(a", 2, "expected ')'");
        err_at("((a == 1) && b", 14, "expected ')'");
        err_at("a == 1 b", 7, "expected '&&', '||' or end of filter");
        err_at("(a == 1 b)", 8, "expected '&&', '||' or ')'");
        err_at("(a b)", 3, "expected an operator, '&&', '||' or ')'");
        err_at("(a) b", 4, "expected '&&', '||' or end of filter");
        err_at("a b", 2, "expected an operator");
        err_at("a !< 1", 2, "expected an operator");
        err_at("a )", 2, "end of filter");
        err_at("== 1", 0, "expected a field name, '!' or '('");
        err_at("a &&", 4, "expected a field name");
        err_at("a && || b", 5, "expected a field name");
        err_at("a & b", 2, "expected '&&'");
        err_at("a | b", 2, "expected '||'");
        err_at("()", 1, "expected a field name");
        err_at("!", 1, "expected a field name");
        err_at("a.", 2, "expected a name after '.'");
        err_at("a..b", 2, "expected a name after '.'");
        err_at("a.1", 2, "expected a name after '.'");
        err_at(".a", 0, "expected a field name");
        err_at("1 == a", 0, "expected a field name");
        err_at("a == b", 5, "expected a literal");
        err_at("a == 'x' == 'y'", 9, "expected '&&', '||' or end of filter");
        err_at("a in 1", 5, "expected '['");
        err_at("a in [", 6, "expected a literal");
        err_at("a in []", 6, "expected a literal");
        err_at("a in [1", 7, "expected ',' or ']'");
        err_at("a in [1,]", 8, "expected a literal");
        err_at("a in [1 2]", 8, "expected ',' or ']'");
        err_at("a == -", 6, "expected a digit");
        err_at("a == -x", 6, "expected a digit");
        err_at("a == 1.", 7, "expected a digit");
        err_at("a == 1.e5", 7, "expected a digit");
        err_at("a == 1e", 7, "expected a digit");
        err_at("a == 1e+", 8, "expected a digit");
        err_at("a == .5", 5, "expected a literal");
        err_at("a == +5", 5, "expected a literal");
        err_at("a == 1e999", 5, "number out of range");
        err_at("a == -1e999", 5, "number out of range");
        err_at("a == 1.5.2", 8, "expected '&&'");
        err_at("a == 1x", 6, "expected '&&'");
        err_at("é == 1", 0, "expected a field name");
        err_at("a == 1 é", 7, "expected '&&'");
        err_at("a == 'x' && b ==", 16, "expected a literal");
    }

    #[test]
    fn limits() {
        let nest = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        f(&nest(MAX_DEPTH));
        err_at(&nest(MAX_DEPTH + 1), MAX_DEPTH, "nesting deeper than 32");
        f(&format!("{}a", "!".repeat(MAX_DEPTH)));
        err_at(
            &format!("{}a", "!".repeat(MAX_DEPTH + 1)),
            MAX_DEPTH,
            "nesting",
        );
        let mixed = format!(
            "{}a{}",
            "!(".repeat(MAX_DEPTH / 2),
            ")".repeat(MAX_DEPTH / 2)
        );
        f(&mixed);
        err_at(&format!("!{mixed}"), MAX_DEPTH, "nesting");
        // Far past the limit: an error, not a stack overflow.
        err_at(&"(".repeat(MAX_LEN), MAX_DEPTH, "nesting");
        err_at(&"!".repeat(MAX_LEN), MAX_DEPTH, "nesting");
        err_at(&"(!".repeat(MAX_LEN / 2), MAX_DEPTH, "nesting");

        let src = format!("a == '{}'", "x".repeat(MAX_LEN - 7));
        assert_eq!(src.len(), MAX_LEN);
        f(&src);
        err_at(
            &format!("{src} "),
            MAX_LEN,
            "filter is longer than 4096 bytes",
        );
        // The offset stays on a char boundary.
        let wide = format!("a{}", "é".repeat(MAX_LEN));
        err_at(&wide, MAX_LEN - 1, "longer than");

        let items: Vec<String> = (0..MAX_IN_ITEMS).map(|i| i.to_string()).collect();
        let full = format!("a in [{}]", items.join(","));
        assert!(m(&full, &json!({"a": 255})));
        let over = format!("{full} || b in [1, 2]");
        err_at(&over, over.len() - 5, "more than 256 'in' list items");
        let half = format!("a in [{}]", items[..128].join(", "));
        f(&format!("{half} && {half}"));
        let over = format!("{half} && {half} && c in [null]");
        err_at(&over, over.len() - 5, "more than 256");
    }

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

    #[test]
    fn errors_display_their_offset() {
        let e = Filter::parse("status ==").expect_err("incomplete");
        assert_eq!(e.to_string(), "expected a literal at byte 9");
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), e.to_string());
    }

    // -----------------------------------------------------------------------------------
    // Random filters: an AST of the test's own, a noisy printer and a reference evaluator
    // written from the rules in the module docs, sharing no code with the module.
    // -----------------------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum T {
        Or(Vec<T>),
        And(Vec<T>),
        Not(Box<T>),
        Cmp(Vec<&'static str>, &'static str, L),
        In(Vec<&'static str>, Vec<L>),
        Truthy(Vec<&'static str>),
    }

    #[derive(Clone, Debug)]
    enum L {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
    }

    const NAMES: &[&str] = &[
        "a", "b", "c", "in", "inbox", "true", "null", "nullable", "false_x", "_", "x1", "desc",
    ];
    const OPS: &[&str] = &["==", "!=", "<", "<=", ">", ">="];
    const STRS: &[&str] = &[
        "", "a", "b", "A", "é", "x'y", "q\"", "\\", "\n\t", "😀", "\u{1}", "ab",
    ];
    const NUMS: &[f64] = &[0.0, -0.0, 1.0, 2.0, -1.0, 0.5, 2.5, 3.0, 1e300, 12e5];

    fn gen_path(rng: &mut Rng) -> Vec<&'static str> {
        (0..1 + rng.below(3).saturating_sub(1))
            .map(|_| *rng.pick(NAMES))
            .collect()
    }

    fn gen_lit(rng: &mut Rng) -> L {
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

    fn gen_expr(rng: &mut Rng, depth: usize) -> T {
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

    fn to_path(p: &[&str]) -> FieldPath {
        FieldPath(p.iter().map(|&s| Box::from(s)).collect())
    }

    fn to_lit(l: &L) -> Literal {
        match l {
            L::Null => Literal::Null,
            L::Bool(b) => Literal::Bool(*b),
            L::Num(x) => Literal::Num(*x),
            L::Str(s) => Literal::Str(s.as_str().into()),
        }
    }

    fn to_expr(t: &T) -> Expr {
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
    fn noisy(rng: &mut Rng, t: &T, out: &mut String) {
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

    fn noisy_operand(rng: &mut Rng, t: &T, parens: bool, out: &mut String) {
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

    fn noisy_ws(rng: &mut Rng, out: &mut String) {
        if rng.one_in(2) {
            for _ in 0..1 + rng.below(2) {
                out.push(*rng.pick(&[' ', ' ', '\t', '\n', '\r']));
            }
        }
    }

    fn noisy_lit(rng: &mut Rng, l: &L, out: &mut String) {
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

    fn ref_get<'a>(v: &'a Value, p: &[&str]) -> Option<&'a Value> {
        let mut cur = v;
        for key in p {
            match cur {
                Value::Object(map) => cur = map.get(*key)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn ref_cmp(v: Option<&Value>, op: &str, l: &L) -> bool {
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

    fn ref_eval(t: &T, v: &Value) -> bool {
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

    fn gen_leaf(rng: &mut Rng) -> Value {
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

    fn gen_value(rng: &mut Rng, depth: usize) -> Value {
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

    fn lit_value(l: &L) -> Value {
        match l {
            L::Null => Value::Null,
            L::Bool(b) => Value::Bool(*b),
            L::Num(x) if x.fract() == 0.0 && x.abs() < 1e15 && *x != 0.0 => json!(*x as i64),
            L::Num(x) => json!(*x),
            L::Str(s) => json!(s),
        }
    }

    fn set_path(v: &mut Value, p: &[&str], to: Value) {
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

    /// Whatever the input, the parser returns; success round-trips and never grows the
    /// text; errors point inside the input at a char boundary.
    fn check_any_input(src: &str) {
        match Filter::parse(src) {
            Ok(filter) => {
                let text = filter.to_string();
                assert!(text.len() <= src.len(), "{src:?} -> {text:?}");
                assert_eq!(
                    Filter::parse(&text).as_ref(),
                    Ok(&filter),
                    "{src:?} -> {text:?}"
                );
                let _ = filter.matches(&json!({"a": 1, "b": {"c": "x"}}));
                let _ = filter.index_term();
            }
            Err(e) => {
                assert!(
                    e.offset <= src.len() && src.is_char_boundary(e.offset),
                    "{src:?}: {e}"
                );
                assert!(!e.message.is_empty());
            }
        }
        match OrderBy::parse(src) {
            Ok(order) => {
                let text = order.to_string();
                assert!(text.len() <= src.len(), "{src:?} -> {text:?}");
                assert_eq!(
                    OrderBy::parse(&text).as_ref(),
                    Ok(&order),
                    "{src:?} -> {text:?}"
                );
            }
            Err(e) => {
                assert!(
                    e.offset <= src.len() && src.is_char_boundary(e.offset),
                    "{src:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn property_arbitrary_text_never_panics() {
        const PIECES: &[&str] = &[
            "a", "b.c", "in", "inbox", " ", "\t", "==", "!=", "<", "<=", ">", ">=", "=", "!", "(",
            ")", "&&", "||", "&", "|", "[", "]", ",", "'x'", "\"y\"", "'", "\"", "\\", "\\u",
            "\\ud800", "1", "-2.5e3", "1e999", "true", "null", "false", ".", "é", "\n", "00", "e",
            "desc", "asc", ",", "\u{0}",
        ];
        let mut rng = Rng(0x0bad_5eed_1234_5678);
        for _ in 0..30_000 {
            let src: String = (0..1 + rng.below(12)).map(|_| *rng.pick(PIECES)).collect();
            check_any_input(&src);
        }
        // Mutations of valid filters reach deeper.
        for _ in 0..20_000 {
            let t = gen_expr(&mut rng, 3);
            let mut src = String::new();
            noisy(&mut rng, &t, &mut src);
            let mut chars: Vec<char> = src.chars().collect();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(chars.len() + 1);
                match rng.below(3) {
                    0 if at < chars.len() => {
                        chars.remove(at);
                    }
                    1 => chars.insert(at, *rng.pick(&['(', ')', '!', '\'', '\\', ' ', '&', ','])),
                    _ => {
                        for c in rng.pick(PIECES).chars().rev() {
                            chars.insert(at, c);
                        }
                    }
                }
            }
            check_any_input(&chars.into_iter().collect::<String>());
        }
    }

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
