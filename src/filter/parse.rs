//! The filter parser: text to [`Filter`] under the grammar, escapes and limits of the
//! module docs, every refusal a [`FilterError`] with the byte offset. Recursion is
//! bounded by [`MAX_DEPTH`], so no input overflows the stack.

use super::ast::{Expr, Filter, Literal, Op};
use super::error::{too_long, FilterError, MAX_DEPTH, MAX_IN_ITEMS, MAX_LEN};
use super::path::{is_name_char, is_name_start, name_end, scan_path, FieldPath};

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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testkit::*;
    use crate::filter::OrderBy;
    use serde_json::json;

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
}
