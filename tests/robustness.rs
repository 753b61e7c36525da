//! Deterministic random-input robustness test for every parser that sees bytes from
//! outside: WebSocket frames, HTTP requests, client commands, paths, publish bodies, JWTs,
//! the config file, filters and orderBy, and the REST bodies and query strings of entities,
//! channels and services. No server is started.
//!
//! About 300k inputs from a seeded xorshift generator: pure random bytes, mutations of
//! valid inputs (bit flips, truncations, duplicated slices, inserted tokens, length-field
//! edits) and structured generators whose expected outcome is known. Every input goes
//! through the invariants the fuzz targets assert (`fuzz/src/lib.rs`, included below),
//! and structured inputs are also checked against their expected result.
//!
//! A failing invariant prints the input and a minimized copy of it. Environment:
//! `ROBUSTNESS_SEED=<n>` changes the seeds, `ROBUSTNESS_SCALE=<n>` multiplies the counts
//! (for longer runs than CI's).

#[path = "../fuzz/src/lib.rs"]
mod invariants;

use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};

use serde_json::{json, Value};
use shardcast::api::{
    parse_channel_create, parse_channel_list, parse_dead_letters_query, parse_entity_body,
    parse_entity_list, parse_publish, DeadLettersQuery, Refused, MAX_BODY_DEPTH,
};
use shardcast::auth::jwt::{self, Role, Scopes, NBF_LEEWAY_SECS};
use shardcast::channels::{ChannelKind, ListQuery, NewChannel, Status};
use shardcast::config::Config;
use shardcast::entities::{Cursors, DEFAULT_LIMIT, MAX_LIMIT};
use shardcast::filter::{Direction, Filter, OrderBy};
use shardcast::http::{self, Parsed};
use shardcast::protocol::ws::{self, OpCode, Utf8Check, WsError};
use shardcast::protocol::{self, validate_path, Command, ErrorCode};

use invariants::{FrameEnd, JWT_NOW, JWT_SECRET};

// ---------------------------------------------------------------------------------------
// Generator plumbing
// ---------------------------------------------------------------------------------------

/// xorshift64* — small, fast, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn new(base: u64) -> Rng {
        let extra = std::env::var("ROBUSTNESS_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let mut r = Rng((base ^ extra.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        for _ in 0..4 {
            r.next();
        }
        r
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num/den`.
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Random bytes, usually short, sometimes long.
    fn blob(&mut self) -> Vec<u8> {
        let n = if self.chance(1, 10) {
            self.range(0, 4096)
        } else {
            self.range(0, 64)
        };
        self.bytes(n)
    }
}

/// The count to run, times `ROBUSTNESS_SCALE`.
fn count(n: usize) -> usize {
    let scale = std::env::var("ROBUSTNESS_SCALE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    n * scale.max(1)
}

/// Bytes as a Rust byte-string literal body (long inputs are cut after 4 KiB).
fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(4096) {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7E => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > 4096 {
        let _ = write!(s, "... ({} bytes in all)", bytes.len());
    }
    s
}

fn fails(check: &dyn Fn(&[u8]), input: &[u8]) -> bool {
    panic::catch_unwind(AssertUnwindSafe(|| check(input))).is_err()
}

/// Shrinks a failing input: drops chunks, then simplifies bytes, while it still fails.
fn minimize(check: &dyn Fn(&[u8]), input: &[u8]) -> Vec<u8> {
    let mut cur = input.to_vec();
    let mut tries = 0;
    let mut chunk = cur.len().div_ceil(2).max(1);
    while tries < 4000 {
        let mut i = 0;
        let mut shrunk = false;
        while i < cur.len() && tries < 4000 {
            let mut cand = cur.clone();
            cand.drain(i..(i + chunk).min(cur.len()));
            tries += 1;
            if fails(check, &cand) {
                cur = cand;
                shrunk = true;
            } else {
                i += chunk;
            }
        }
        if !shrunk {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    for i in 0..cur.len() {
        for simpler in [b'a', b'0', b' '] {
            if tries >= 6000 || cur[i] == simpler {
                continue;
            }
            let mut cand = cur.clone();
            cand[i] = simpler;
            tries += 1;
            if fails(check, &cand) {
                cur = cand;
                break;
            }
        }
    }
    cur
}

/// Runs an invariant check on one input; if it fails, prints the input and a minimized
/// copy, then fails with the minimized input's own assertion message.
fn run_case(target: &str, seed_note: &str, input: &[u8], check: &dyn Fn(&[u8])) {
    if panic::catch_unwind(AssertUnwindSafe(|| check(input))).is_ok() {
        return;
    }
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let small = minimize(check, input);
    panic::set_hook(hook);
    eprintln!(
        "\n{target}: invariant broken ({seed_note})\n  input ({} bytes): b\"{}\"\n  minimized ({} bytes): b\"{}\"\n",
        input.len(),
        show(input),
        small.len(),
        show(&small)
    );
    check(&small);
    check(input);
    unreachable!("{target}: the failure did not reproduce");
}

const INTERESTING_BYTES: &[u8] = &[
    0x00, 0x01, 0x7E, 0x7F, 0x80, 0x81, 0xFE, 0xFF, b'"', b'\\', b'{', b'}', b'[', b']', b':',
    b',', b'.', b'/', b'=', b' ', b'\r', b'\n', b'?', b'%', b'$',
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e999",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"..",
    b"//",
    b"$",
    b"=",
    b"[[",
    b"]]",
    b"'''",
    b"\"\"\"",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"\"events\":",
    b"\"path\":",
    b"\"type\":",
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "125",
    "126",
    "127",
    "255",
    "256",
    "257",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "1e300",
    "0.5",
    "+5",
    "007",
];

/// Applies 1 to 4 random edits.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = *rng.pick(INTERESTING_BYTES);
            }
            2 if len > 0 => input.truncate(rng.below(len)),
            3 if len > 0 => {
                let a = rng.below(len);
                let b = rng.range(a, len.min(a + 16));
                input.drain(a..b);
            }
            4 if len > 0 => {
                // Duplicate a slice somewhere else.
                let a = rng.below(len);
                let b = rng.range(a, len.min(a + 64));
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 => {
                let at = rng.below(len + 1);
                let n = rng.range(1, 8);
                let piece = rng.bytes(n);
                input.splice(at..at, piece);
            }
            6 => {
                // Length-field edit: replace a run of digits with an interesting number.
                let runs: Vec<(usize, usize)> = digit_runs(input);
                if runs.is_empty() {
                    continue;
                }
                let (a, b) = *rng.pick(&runs);
                let n = rng.pick(INTERESTING_NUMBERS).as_bytes().to_vec();
                input.splice(a..b, n);
            }
            7 => {
                let at = rng.below(len + 1);
                let t = rng.pick(TOKENS).to_vec();
                input.splice(at..at, t);
            }
            _ if len > 1 => {
                let (i, j) = (rng.below(len), rng.below(len));
                input.swap(i, j);
            }
            _ => {}
        }
    }
    input.truncate(1 << 16);
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// A random valid UTF-8 string of about `chars` characters, from all four lengths.
fn utf8_string(rng: &mut Rng, chars: usize) -> String {
    let mut s = String::new();
    for _ in 0..chars {
        let c = match rng.below(8) {
            0..=3 => rng.range(0x20, 0x7E) as u32,
            4 => rng.range(0, 0x7F) as u32,
            5 => rng.range(0x80, 0x7FF) as u32,
            6 => {
                let mut c = rng.range(0x800, 0xFFFF) as u32;
                if (0xD800..=0xDFFF).contains(&c) {
                    c = 0xFFFD;
                }
                c
            }
            _ => rng.range(0x1_0000, 0x10_FFFF) as u32,
        };
        s.push(char::from_u32(c).unwrap_or('?'));
    }
    s
}

/// A random JSON value, nested at most `depth` levels.
fn any_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => match rng.below(3) {
            0 => json!(rng.next() as i64),
            1 => json!(rng.below(1000)),
            _ => json!((rng.next() % 1_000_000) as f64 / 7.0),
        },
        3 | 4 => {
            let n = rng.range(0, 12);
            Value::String(utf8_string(rng, n))
        }
        5 => {
            let n = rng.range(0, 4);
            Value::Array((0..n).map(|_| any_json(rng, depth - 1)).collect())
        }
        _ => {
            let n = rng.range(0, 4);
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                let k = rng.range(1, 6);
                m.insert(utf8_string(rng, k), any_json(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// A JSON value that is not a string.
fn non_string_json(rng: &mut Rng) -> Value {
    loop {
        let v = any_json(rng, 2);
        if !v.is_string() {
            return v;
        }
    }
}

/// A JSON object text with the members in the given order (serde_json's map sorts keys).
fn object_text(members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

const SEGMENT_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-";

fn valid_path(rng: &mut Rng) -> String {
    let segs = if rng.chance(1, 8) {
        protocol::MAX_PATH_SEGMENTS
    } else {
        rng.range(1, 5)
    };
    let mut p = String::new();
    if rng.chance(1, 8) {
        p.push('$');
    }
    for i in 0..segs {
        if i > 0 {
            p.push('/');
        }
        let n = if rng.chance(1, 20) {
            rng.range(1, 30)
        } else {
            rng.range(1, 8)
        };
        for _ in 0..n {
            p.push(*rng.pick(SEGMENT_CHARS) as char);
        }
    }
    p.truncate(protocol::MAX_PATH_BYTES);
    while p.ends_with('/') {
        p.pop();
    }
    if p.is_empty() || p == "$" {
        p.push('a');
    }
    p
}

/// A path that breaks exactly one rule.
fn invalid_path(rng: &mut Rng) -> String {
    let mut p = valid_path(rng);
    match rng.below(8) {
        0 => String::new(),
        1 => format!("{p}/"),
        2 => format!("/{}", p.trim_start_matches('$')),
        3 => {
            let at = p.find('/').unwrap_or(p.len());
            p.insert(at, '/');
            p.insert(at, '/');
            p
        }
        4 => vec!["a"; protocol::MAX_PATH_SEGMENTS + rng.range(1, 4)].join("/"),
        5 => "x".repeat(protocol::MAX_PATH_BYTES + rng.range(1, 40)),
        _ => {
            // A character outside [A-Za-z0-9_.:@-], not at a leading '$'.
            let bad = *rng.pick(&[
                ' ', '#', '?', '*', '$', '\\', '"', '\0', '\n', '\u{7f}', 'é', '€', '😀', '+', '%',
                '!', ',', ';', '=', '~', '\t',
            ]);
            // A '$' only marks a system path in front; anywhere else it is bad.
            let at = rng.range(usize::from(bad == '$'), p.len());
            p.insert(at, bad);
            p
        }
    }
}

#[test]
fn paths_match_the_rule() {
    let mut rng = Rng::new(0x7061_7468);
    for i in 0..count(5_000) {
        let p = valid_path(&mut rng);
        assert_eq!(validate_path(&p), Ok(()), "valid path {p:?} (case {i})");
        invariants::check_path(&p);
        let q = invalid_path(&mut rng);
        assert!(
            validate_path(&q).is_err(),
            "invalid path {q:?} accepted (case {i})"
        );
        invariants::check_path(&q);
        // Random strings over the allowed alphabet plus a few others, against the model.
        let n = rng.range(0, 24);
        let r: String = (0..n)
            .map(|_| *rng.pick(b"ab9_.:@-/$ /\xc3") as char)
            .collect();
        invariants::check_path(&r);
        let mut m = p.into_bytes();
        mutate(&mut rng, &mut m);
        if let Ok(m) = String::from_utf8(m) {
            invariants::check_path(&m);
        }
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------------------

const VALID_OPCODES: &[u8] = &[0x0, 0x1, 0x2, 0x8, 0x9, 0xA];
const INVALID_OPCODES: &[u8] = &[0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF];

/// One generated client frame and what `parse_header` must say about it.
struct GenFrame {
    bytes: Vec<u8>,
    /// The unmasked payload (empty for header-only frames).
    payload: Vec<u8>,
    /// Ok: the header that must come back. Err: the acceptable errors.
    expect: Result<ws::FrameHeader, Vec<WsError>>,
    /// The frame's payload is not included (its length is far beyond the buffer).
    header_only: bool,
}

fn opcode_of(bits: u8) -> Option<OpCode> {
    Some(match bits {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => return None,
    })
}

/// Encodes a client frame: `form` 0 = shortest length encoding, 1 = 16-bit, 2 = 64-bit.
fn encode_frame(
    b0: u8,
    masked: bool,
    mask: [u8; 4],
    len: u64,
    form: u8,
    payload: &[u8],
) -> Vec<u8> {
    let m = if masked { 0x80 } else { 0 };
    let mut v = vec![b0];
    let form = match form {
        0 if len < 126 => 0,
        0 | 1 if len < 65_536 => 1,
        _ => 2,
    };
    match form {
        0 => v.push(m | len as u8),
        1 => {
            v.push(m | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            v.push(m | 127);
            v.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        v.extend_from_slice(&mask);
    }
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

fn gen_frame(rng: &mut Rng, opcode: u8, fin: bool, payload: Vec<u8>) -> GenFrame {
    let rsv = if rng.chance(1, 20) {
        (rng.range(1, 7) as u8) << 4
    } else {
        0
    };
    let masked = !rng.chance(1, 20);
    let mask = if rng.chance(1, 10) {
        [0; 4]
    } else {
        [rng.byte(), rng.byte(), rng.byte(), rng.byte()]
    };
    let form = if rng.chance(1, 8) {
        rng.range(1, 2) as u8
    } else {
        0
    };
    let len = payload.len() as u64;
    let fin_bit: u8 = if fin { 0x80 } else { 0 };
    let b0 = fin_bit | rsv | opcode;
    let bytes = encode_frame(b0, masked, mask, len, form, &payload);
    let header_len = bytes.len() - payload.len();
    GenFrame {
        expect: expected_header(b0, masked, len, mask, header_len),
        bytes,
        payload,
        header_only: false,
    }
}

fn expected_header(
    b0: u8,
    masked: bool,
    len: u64,
    mask: [u8; 4],
    header_len: usize,
) -> Result<ws::FrameHeader, Vec<WsError>> {
    let fin = b0 & 0x80 != 0;
    let mut errs = Vec::new();
    if b0 & 0x70 != 0 {
        errs.push(WsError::ReservedBits);
    }
    let op = opcode_of(b0 & 0x0F);
    if op.is_none() {
        errs.push(WsError::UnknownOpcode(b0 & 0x0F));
    }
    if !masked {
        errs.push(WsError::Unmasked);
    }
    if len >> 63 != 0 {
        errs.push(WsError::BadLength);
    }
    if op.is_some_and(OpCode::is_control) && (!fin || len > 125) {
        errs.push(WsError::BadControlFrame);
    }
    match op {
        Some(opcode) if errs.is_empty() => Ok(ws::FrameHeader {
            fin,
            opcode,
            mask,
            payload_len: len,
            header_len,
            // `parse_header`: no extension negotiated, so RSV1 never passes.
            rsv1: false,
        }),
        _ => Err(errs),
    }
}

fn random_payload(rng: &mut Rng, opcode: u8) -> Vec<u8> {
    let control = opcode >= 0x8;
    let n = match rng.below(20) {
        0..=11 => rng.range(0, 125),
        12..=14 => rng.range(126, 300),
        15 | 16 => rng.range(0, 3000),
        17 => rng.range(65_530, 65_540),
        _ => rng.range(0, 8),
    };
    let n = if control && !rng.chance(1, 10) {
        n.min(125)
    } else {
        n
    };
    match opcode {
        0x1 | 0x0 if rng.chance(3, 4) => {
            let mut s = utf8_string(rng, n / 2).into_bytes();
            s.truncate(n);
            // Cutting may split a character; keep it valid by backing off.
            while std::str::from_utf8(&s).is_err() {
                s.pop();
            }
            s
        }
        0x8 if rng.chance(3, 4) && n >= 2 => {
            let code = *rng.pick(&[
                1000u16, 1001, 1002, 1003, 1007, 1011, 3000, 4999, 1005, 999, 5000,
            ]);
            let mut p = code.to_be_bytes().to_vec();
            let mut reason = utf8_string(rng, (n - 2) / 3).into_bytes();
            reason.truncate(123);
            while std::str::from_utf8(&reason).is_err() {
                reason.pop();
            }
            p.extend_from_slice(&reason);
            p
        }
        _ => rng.bytes(n),
    }
}

/// A frame with a 64-bit length far beyond the buffer (only its header is present).
fn header_only_frame(rng: &mut Rng) -> GenFrame {
    let opcode = *rng.pick(&[0x1u8, 0x2, 0x0, 0x9]);
    let len = match rng.below(4) {
        0 => rng.next(),
        1 => 1 << 63,
        2 => u64::MAX,
        _ => rng.next() >> 1,
    };
    let mask = [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
    let b0 = 0x80 | opcode;
    let bytes = encode_frame(b0, true, mask, len, 2, &[]);
    GenFrame {
        expect: expected_header(b0, true, len, mask, 14),
        bytes,
        payload: Vec::new(),
        header_only: true,
    }
}

fn random_frame(rng: &mut Rng) -> GenFrame {
    if rng.chance(1, 40) {
        return header_only_frame(rng);
    }
    let opcode = if rng.chance(1, 16) {
        *rng.pick(INVALID_OPCODES)
    } else {
        *rng.pick(VALID_OPCODES)
    };
    let fin = !rng.chance(1, 5);
    let payload = random_payload(rng, opcode);
    gen_frame(rng, opcode, fin, payload)
}

/// Each generated frame parses back to its opcode, flags, length and mask, and unmasks to
/// its payload; a broken one fails with one of the errors it deserves.
#[test]
fn ws_generated_frames_parse_back() {
    let mut rng = Rng::new(0x7773_6672);
    for case in 0..count(15_000) {
        let frames: Vec<GenFrame> = (0..rng.range(1, 5))
            .map(|_| random_frame(&mut rng))
            .collect();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
        let mut pos = 0;
        for (i, f) in frames.iter().enumerate() {
            let ctx = || format!("case {case}, frame {i}, stream b\"{}\"", show(&stream));
            let got = ws::parse_header(&stream[pos..]);
            match &f.expect {
                Ok(want) => {
                    assert_eq!(got, Ok(Some(*want)), "{}", ctx());
                    if f.header_only {
                        break;
                    }
                    let start = pos + want.header_len;
                    let mut p = stream[start..start + want.payload_len as usize].to_vec();
                    ws::unmask(&mut p, want.mask);
                    assert_eq!(p, f.payload, "unmasked payload, {}", ctx());
                    pos = start + p.len();
                }
                Err(acceptable) => {
                    match got {
                        Err(e) => assert!(
                            acceptable.contains(&e),
                            "{e:?} not in {acceptable:?}, {}",
                            ctx()
                        ),
                        other => panic!("expected one of {acceptable:?}, got {other:?}, {}", ctx()),
                    }
                    break;
                }
            }
        }
        run_case(
            "ws_frames",
            &format!("generated case {case}"),
            &stream,
            &|b: &[u8]| {
                invariants::ws_frames(b);
            },
        );
    }
}

/// A valid message stream: text and binary messages, some fragmented with pings and pongs
/// between fragments, then maybe a close. The frame loop hands back exactly the messages.
#[test]
fn ws_fragmented_messages_reassemble() {
    let mut rng = Rng::new(0x6672_6167);
    for case in 0..count(6_000) {
        let mut stream = Vec::new();
        let mut want_msgs = Vec::new();
        let mut want_controls = Vec::new();
        let mask = |rng: &mut Rng| [rng.byte(), rng.byte(), rng.byte(), rng.byte()];
        for _ in 0..rng.range(1, 4) {
            let text = rng.chance(1, 2);
            let msg: Vec<u8> = if text {
                let n = rng.range(0, 200);
                utf8_string(&mut rng, n).into_bytes()
            } else {
                let n = rng.range(0, 300);
                rng.bytes(n)
            };
            // Cut points anywhere, including inside a character.
            let mut cuts: Vec<usize> = (0..rng.range(0, 4))
                .map(|_| rng.range(0, msg.len()))
                .collect();
            cuts.push(0);
            cuts.push(msg.len());
            cuts.sort_unstable();
            let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &msg[w[0]..w[1]]).collect();
            for (k, piece) in pieces.iter().enumerate() {
                let fin = k + 1 == pieces.len();
                let op = if k == 0 {
                    if text {
                        0x1
                    } else {
                        0x2
                    }
                } else {
                    0x0
                };
                let form = if rng.chance(1, 6) { 2 } else { 0 };
                let m = mask(&mut rng);
                let fin_bit: u8 = if fin { 0x80 } else { 0 };
                stream.extend(encode_frame(
                    fin_bit | op,
                    true,
                    m,
                    piece.len() as u64,
                    form,
                    piece,
                ));
                if !fin && rng.chance(1, 3) {
                    let (op, opc) = if rng.chance(1, 2) {
                        (0x9, OpCode::Ping)
                    } else {
                        (0xA, OpCode::Pong)
                    };
                    let n = rng.range(0, 125);
                    let p = rng.bytes(n);
                    let m = mask(&mut rng);
                    stream.extend(encode_frame(0x80 | op, true, m, p.len() as u64, 0, &p));
                    want_controls.push((opc, p));
                }
            }
            want_msgs.push((text, msg));
        }
        let want_end = if rng.chance(1, 2) {
            let code = *rng.pick(&[1000u16, 1001, 1003, 3000, 4001, 4999]);
            let n = rng.range(0, 30);
            let mut p = code.to_be_bytes().to_vec();
            p.extend(utf8_string(&mut rng, n).bytes().take(123));
            while std::str::from_utf8(&p[2..]).is_err() {
                p.pop();
            }
            let m = mask(&mut rng);
            stream.extend(encode_frame(0x88, true, m, p.len() as u64, 0, &p));
            FrameEnd::Close(Ok(code))
        } else {
            FrameEnd::NeedMore
        };
        let run = invariants::ws_frames(&stream);
        assert_eq!(
            run.messages,
            want_msgs,
            "case {case}: b\"{}\"",
            show(&stream)
        );
        assert_eq!(run.controls, want_controls, "case {case}");
        assert_eq!(run.end, want_end, "case {case}");
    }
}

/// Random bytes and mutated valid streams through the server's frame loop.
#[test]
fn ws_random_and_mutated_streams() {
    let mut rng = Rng::new(0x6d75_7473);
    for case in 0..count(40_000) {
        let mut input = match rng.below(4) {
            0 => {
                let mut b = rng.blob();
                // Make the first bytes look like a masked header more often than chance.
                if b.len() >= 2 && rng.chance(1, 2) {
                    b[0] &= 0x8F;
                    b[1] |= 0x80;
                }
                b
            }
            _ => {
                let frames: Vec<GenFrame> = (0..rng.range(1, 4))
                    .map(|_| random_frame(&mut rng))
                    .collect();
                frames.iter().flat_map(|f| f.bytes.clone()).collect()
            }
        };
        if rng.chance(3, 4) {
            mutate(&mut rng, &mut input);
            if input.len() >= 2 && rng.chance(1, 3) {
                // Length-field edit on the first header.
                match rng.below(3) {
                    0 => input[1] = (input[1] & 0x80) | rng.pick(&[0u8, 1, 125, 126, 127]),
                    1 if input.len() >= 4 => input[2] = rng.byte(),
                    _ if input.len() >= 3 => {
                        let at = rng.range(2, (input.len() - 1).min(9));
                        input[at] = *rng.pick(&[0u8, 0x7F, 0x80, 0xFF]);
                    }
                    _ => {}
                }
            }
        }
        run_case(
            "ws_frames",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| {
                invariants::ws_frames(b);
            },
        );
    }
}

/// Close payloads: codes a peer may send with a UTF-8 reason are echoed; reserved codes and
/// bad reasons are refused with the right error.
#[test]
fn ws_close_payloads() {
    let mut rng = Rng::new(0x636c_6f73);
    for case in 0..count(5_000) {
        let code: u16 = match rng.below(4) {
            0 => *rng.pick(&[
                1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
            ]),
            1 => *rng.pick(&[0, 1, 999, 1004, 1005, 1006, 1015, 5000, 65535]),
            2 => rng.range(1000, 5000) as u16,
            _ => rng.next() as u16,
        };
        let n = rng.range(0, 40);
        let mut reason = utf8_string(&mut rng, n).into_bytes();
        reason.truncate(123);
        while std::str::from_utf8(&reason).is_err() {
            reason.pop();
        }
        let bad_reason = rng.chance(1, 4);
        if bad_reason {
            let at = rng.range(0, reason.len());
            let inj = *rng.pick(&[&[0xFFu8][..], &[0x80], &[0xC3], &[0xED, 0xA0, 0x80]]);
            reason.splice(at..at, inj.iter().copied());
        }
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(&reason);
        let got = ws::parse_close_payload(&p);
        let ctx = format!("case {case}: code {code}, payload b\"{}\"", show(&p));
        if invariants::close_code_must_be_refused(code) {
            assert_eq!(got, Err(WsError::BadClosePayload), "{ctx}");
        } else if invariants::close_code_must_be_accepted(code) {
            let utf8 = std::str::from_utf8(&reason).is_ok();
            assert_eq!(
                got,
                if utf8 {
                    Ok(code)
                } else {
                    Err(WsError::InvalidUtf8)
                },
                "{ctx}"
            );
        }
        invariants::check_close_payload(&p);
        invariants::check_close_payload(&p[..rng.range(0, p.len())]);
    }
}

/// Valid UTF-8 split anywhere is accepted; an injected invalid sequence is refused at
/// exactly the fragment that makes the message impossible.
#[test]
fn utf8_check_across_fragments() {
    const BAD: &[&[u8]] = &[
        &[0xFF],
        &[0xFE],
        &[0x80],
        &[0xBF],
        &[0xC0, 0xAF],
        &[0xC1, 0x81],
        &[0xE0, 0x80, 0x80],
        &[0xED, 0xA0, 0x80],
        &[0xED, 0xBF, 0xBF],
        &[0xF0, 0x80, 0x80, 0x80],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0xF5, 0x80, 0x80, 0x80],
        &[0xC3, b'a'],
        &[0xE2, 0x82, b'x'],
        &[0xF0, 0x9F, 0x98, b'x'],
    ];
    let mut rng = Rng::new(0x7574_6638);
    for case in 0..count(10_000) {
        let n = rng.range(0, 60);
        let s = utf8_string(&mut rng, n);
        let mut msg = s.clone().into_bytes();
        let kind = rng.below(3);
        match kind {
            0 => {}
            1 => {
                let bounds: Vec<usize> =
                    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
                let at = *rng.pick(&bounds);
                let bad = rng.pick(BAD);
                msg.splice(at..at, bad.iter().copied());
            }
            _ => {
                // Truncated character at the very end: fine until finished.
                let tail = *rng.pick(&[&[0xC3u8][..], &[0xE2, 0x82], &[0xF0, 0x9F, 0x98]]);
                msg.extend_from_slice(tail);
            }
        }
        let mut cuts: Vec<usize> = (0..rng.range(0, 6))
            .map(|_| rng.range(0, msg.len()))
            .collect();
        cuts.push(msg.len());
        cuts.sort_unstable();
        let mut check = Utf8Check::default();
        let mut failed_at = None;
        for (k, &cut) in cuts.iter().enumerate() {
            let last = k + 1 == cuts.len();
            let so_far = &msg[..cut];
            let r = if last {
                check.finish(so_far)
            } else {
                check.feed(so_far)
            };
            let possible = if last {
                std::str::from_utf8(so_far).is_ok()
            } else {
                invariants::is_utf8_prefix(so_far)
            };
            assert_eq!(
                r.is_ok(),
                possible,
                "case {case}: fragment {k} of b\"{}\" split at {cuts:?}",
                show(&msg)
            );
            if r.is_err() {
                assert_eq!(r, Err(WsError::InvalidUtf8));
                failed_at = Some(k);
                break;
            }
        }
        match kind {
            0 => assert_eq!(failed_at, None, "case {case}: valid {s:?} refused"),
            1 => assert!(
                failed_at.is_some(),
                "case {case}: invalid b\"{}\" accepted",
                show(&msg)
            ),
            _ => assert_eq!(
                failed_at,
                Some(cuts.len() - 1),
                "case {case}: truncated tail"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP requests
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum HttpExpect {
    Complete {
        used: usize,
        method: String,
        path: String,
        query: String,
        body: Vec<u8>,
        close: bool,
        host: Option<String>,
    },
    NeedHead,
    NeedBody {
        expect_continue: bool,
    },
    /// Any of these statuses.
    Error(Vec<u16>),
}

struct GenRequest {
    bytes: Vec<u8>,
    max_body: usize,
    head_len: usize,
    expect: HttpExpect,
}

const TCHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";

fn token(rng: &mut Rng, lo: usize, hi: usize) -> String {
    (0..rng.range(lo, hi))
        .map(|_| *rng.pick(TCHARS) as char)
        .collect()
}

fn header_value(rng: &mut Rng) -> String {
    let n = rng.range(1, 24);
    let mut v: String = (0..n)
        .map(|_| {
            if rng.chance(1, 8) {
                ' '
            } else {
                rng.range(0x21, 0x7E) as u8 as char
            }
        })
        .collect();
    v = v.trim().to_string();
    if v.is_empty() {
        v.push('v');
    }
    v
}

fn gen_request(rng: &mut Rng) -> GenRequest {
    let method = rng
        .pick(&[
            "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "X-Custom",
        ])
        .to_string();
    let mut path = String::from("/");
    for i in 0..rng.range(0, 4) {
        if i > 0 {
            path.push('/');
        }
        path.push_str(&token(rng, 1, 8).replace(['?', '#', '%'], "x"));
    }
    let query = if rng.chance(1, 3) {
        let pairs: Vec<String> = (0..rng.range(1, 3))
            .map(|_| {
                format!(
                    "{}={}",
                    token(rng, 1, 5).replace(['&', '#', '='], "k"),
                    *rng.pick(&["a", "%41", "b+c", "%zz", "", "x%2"])
                )
            })
            .collect();
        pairs.join("&")
    } else {
        String::new()
    };
    let target = if query.is_empty() && !rng.chance(1, 10) {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let http10 = rng.chance(1, 5);
    let eol = if rng.chance(1, 10) { "\n" } else { "\r\n" };
    let max_body = *rng.pick(&[0usize, 10, 100, 1 << 20]);

    let mut headers: Vec<(String, String)> = Vec::new();
    for _ in 0..rng.range(0, 8) {
        let name = match rng.below(4) {
            0 => "Host".to_string(),
            1 => "Accept".to_string(),
            2 => format!("X-{}", token(rng, 1, 10)),
            _ => token(rng, 1, 12),
        };
        if [
            "connection",
            "content-length",
            "transfer-encoding",
            "expect",
        ]
        .contains(&name.to_ascii_lowercase().as_str())
        {
            continue;
        }
        headers.push((name, header_value(rng)));
    }
    let mut conn_tokens: Vec<&str> = Vec::new();
    if rng.chance(1, 3) {
        let v = *rng.pick(&[
            "close",
            "keep-alive",
            "Upgrade",
            "close, Upgrade",
            "Keep-Alive",
            "CLOSE",
            "foo",
        ]);
        headers.push(("Connection".into(), v.into()));
        conn_tokens.extend(v.split(',').map(str::trim));
    }
    let expect_continue = rng.chance(1, 6);
    if expect_continue {
        headers.push(("Expect".into(), "100-continue".into()));
    }
    let chunked = rng.chance(1, 15);
    if chunked {
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    // Content-Length: None, a valid length, or something that is not one.
    let mut cl: Option<Result<usize, ()>> = None;
    match rng.below(6) {
        0 | 1 => {}
        2 | 3 => {
            let n = if rng.chance(1, 2) {
                rng.range(0, 12)
            } else {
                rng.range(0, 300)
            };
            let text = if rng.chance(1, 8) {
                format!("00{n}")
            } else {
                n.to_string()
            };
            headers.push(("Content-Length".into(), text));
            cl = Some(Ok(n));
        }
        4 => {
            let n = rng.range(max_body + 1, max_body + 1000);
            headers.push(("content-length".into(), n.to_string()));
            cl = Some(Ok(n));
        }
        _ => {
            let v = *rng.pick(&[
                "abc",
                "-1",
                "1.5",
                "1 2",
                "0x10",
                "99999999999999999999999",
                "١٢",
            ]);
            headers.push(("Content-Length".into(), v.into()));
            cl = Some(Err(()));
        }
    }
    shuffle(rng, &mut headers);
    if rng.chance(1, 80) {
        // Occasionally a head near or over MAX_HEAD in one piece.
        let n = rng.range(http::MAX_HEAD - 200, http::MAX_HEAD + 4000);
        headers.push(("X-Big".into(), "b".repeat(n)));
    }

    let mut head = format!(
        "{method} {target} HTTP/1.{}{eol}",
        if http10 { 0 } else { 1 }
    );
    for (k, v) in &headers {
        let _ = write!(head, "{k}: {v}{eol}");
    }
    head.push_str(eol);
    let head_len = head.len();
    let mut bytes = head.into_bytes();

    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone());
    let mut close = http10;
    if conn_tokens.iter().any(|t| t.eq_ignore_ascii_case("close")) {
        close = true;
    }
    if conn_tokens
        .iter()
        .any(|t| t.eq_ignore_ascii_case("keep-alive"))
    {
        close = false;
    }

    let expect = if head_len > http::MAX_HEAD {
        HttpExpect::Error(vec![431])
    } else if chunked {
        HttpExpect::Error(if matches!(cl, Some(Err(()))) {
            vec![411, 400]
        } else {
            vec![411]
        })
    } else {
        match cl {
            Some(Err(())) => HttpExpect::Error(vec![400]),
            Some(Ok(n)) if n > max_body => HttpExpect::Error(vec![413]),
            _ => {
                let n = match cl {
                    Some(Ok(n)) => n,
                    _ => 0,
                };
                let body = rng.bytes(n);
                let sent = if n > 0 && rng.chance(1, 4) {
                    rng.range(0, n - 1)
                } else {
                    n
                };
                bytes.extend_from_slice(&body[..sent]);
                if sent < n {
                    HttpExpect::NeedBody { expect_continue }
                } else {
                    if rng.chance(1, 5) {
                        // The start of a pipelined request.
                        bytes.extend_from_slice(b"GET /next HTTP/1.1\r\n");
                    }
                    HttpExpect::Complete {
                        used: head_len + n,
                        method: method.clone(),
                        path: path.clone(),
                        query: if target.contains('?') {
                            query.clone()
                        } else {
                            String::new()
                        },
                        body,
                        close,
                        host,
                    }
                }
            }
        }
    };
    if rng.chance(1, 12) {
        // Cut inside the head: need more.
        let cut = rng.range(0, head_len - 1);
        bytes.truncate(cut);
        let expect = if cut > http::MAX_HEAD {
            HttpExpect::Error(vec![431])
        } else {
            HttpExpect::NeedHead
        };
        return GenRequest {
            bytes,
            max_body,
            head_len: cut + 1,
            expect,
        };
    }
    GenRequest {
        bytes,
        max_body,
        head_len,
        expect,
    }
}

#[test]
fn http_generated_requests() {
    let mut rng = Rng::new(0x6874_7470);
    for case in 0..count(10_000) {
        let g = gen_request(&mut rng);
        let ctx = || {
            format!(
                "case {case}, max_body {}: b\"{}\"",
                g.max_body,
                show(&g.bytes)
            )
        };
        let got = http::parse(&g.bytes, g.max_body);
        match (&g.expect, &got) {
            (
                HttpExpect::Complete {
                    used,
                    method,
                    path,
                    query,
                    body,
                    close,
                    host,
                },
                Parsed::Complete(r, n),
            ) => {
                assert_eq!(n, used, "{}", ctx());
                assert_eq!(&r.method, method, "{}", ctx());
                assert_eq!(&r.path, path, "{}", ctx());
                assert_eq!(&r.query, query, "{}", ctx());
                assert_eq!(&r.body, body, "{}", ctx());
                assert_eq!(r.close, *close, "{}", ctx());
                assert_eq!(r.header("host").map(str::to_string), *host, "{}", ctx());
            }
            (HttpExpect::NeedBody { expect_continue }, Parsed::NeedBody { expect_continue: e }) => {
                assert_eq!(e, expect_continue, "{}", ctx())
            }
            (HttpExpect::NeedHead, Parsed::NeedHead) => {}
            (HttpExpect::Error(statuses), Parsed::Error(s, _)) => {
                assert!(
                    statuses.contains(s),
                    "status {s}, expected {statuses:?}: {}",
                    ctx()
                )
            }
            (want, got) => panic!("expected {want:?}, got {got:?}: {}", ctx()),
        }
        // Any prefix of the head is "need more".
        let cut = rng.range(0, g.head_len - 1);
        if cut <= http::MAX_HEAD {
            assert!(
                matches!(http::parse(&g.bytes[..cut], g.max_body), Parsed::NeedHead),
                "cut {cut}: {}",
                ctx()
            );
        }
        let n = g.bytes.len();
        let cuts = [
            g.head_len - 1,
            g.head_len,
            rng.range(0, n),
            n.saturating_sub(1),
        ];
        run_case(
            "http_request",
            &format!("generated case {case}"),
            &g.bytes,
            &|b: &[u8]| {
                invariants::check_http(b, g.max_body, &cuts);
            },
        );
    }
}

#[test]
fn http_random_and_mutated_requests() {
    let mut rng = Rng::new(0x6d68_7474);
    for case in 0..count(15_000) {
        let mut input = if rng.chance(1, 8) {
            rng.blob()
        } else {
            gen_request(&mut rng).bytes
        };
        if rng.chance(7, 8) {
            mutate(&mut rng, &mut input);
        }
        run_case(
            "http_request",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::http_request(b),
        );
    }
}

/// `MAX_HEAD` is the largest request head accepted, and the answer to a request does not
/// depend on how its bytes were split across reads. Found by the generators above: a head
/// over the limit is refused with 431 when it arrives in pieces, but parsed and served
/// when it arrives in one read.
#[test]
fn http_head_over_max_head_is_refused_whatever_the_split() {
    let raw = format!(
        "GET / HTTP/1.1\r\nA: {}\r\n\r\n",
        "a".repeat(http::MAX_HEAD)
    );
    let raw = raw.as_bytes();
    // The first MAX_HEAD + 1 bytes alone: refused.
    assert!(matches!(
        http::parse(&raw[..http::MAX_HEAD + 1], 0),
        Parsed::Error(431, _)
    ));
    // The same request in one read must be refused too.
    match http::parse(raw, 0) {
        Parsed::Error(431, _) => {}
        Parsed::Complete(r, used) => panic!(
            "a {}-byte head (MAX_HEAD {}) in one read was accepted: {} {}, {used} bytes used",
            raw.len(),
            http::MAX_HEAD,
            r.method,
            r.path
        ),
        other => panic!("a {}-byte head in one read: {other:?}", raw.len()),
    }
}

// ---------------------------------------------------------------------------------------
// Client commands
// ---------------------------------------------------------------------------------------

const SERVICE_ONLY: &[&str] = &[
    "taskComplete",
    "taskFailed",
    "lock",
    "unlock",
    "log",
    "publish",
];
const KNOWN_TYPES: &[&str] = &[
    "auth",
    "ping",
    "pong",
    "subscribeEvents",
    "unsubscribeEvents",
    "taskComplete",
    "taskFailed",
    "lock",
    "unlock",
    "log",
    "publish",
    "createLiveQuery",
    "destroyLiveQuery",
];

/// What `parse_command` must answer for a generated message.
#[derive(Debug)]
enum CmdExpect {
    Err(Vec<ErrorCode>, Option<Value>),
    Auth(String, bool),
    Ping,
    Pong,
    /// Per entry: id, and whether it has a problem (then the acceptable codes), else the
    /// path and events.
    Subscribe(Vec<SubEntry>),
    Unsubscribe(Vec<String>),
    ServiceOnly(String),
    /// A `createLiveQuery` with this id and edge.
    CreateLiveQuery(String, String),
    DestroyLiveQuery(String),
}

/// One expected subscription entry: its id, and either its path and events or the codes
/// its problem may have.
type SubEntry = (String, Result<(String, Vec<String>), Vec<ErrorCode>>);

/// A generated entry; `Err(())`: it fails the whole message.
fn gen_subscription(rng: &mut Rng, i: usize) -> (Value, Result<SubEntry, ()>) {
    if rng.chance(1, 25) {
        return (non_object_json(rng), Err(()));
    }
    let mut o = serde_json::Map::new();
    let id = match rng.below(25) {
        0 => None,
        1 => Some(json!("")),
        2 => Some(Value::String("i".repeat(rng.range(257, 300)))),
        3 => Some(non_string_json(rng)),
        4 => Some(Value::String("é".repeat(128))),
        _ => Some(Value::String(format!("s{i}-{}", token(rng, 0, 6)))),
    };
    let id_ok = match &id {
        Some(Value::String(s)) => !s.is_empty() && s.len() <= 256,
        _ => false,
    };
    if let Some(id) = &id {
        o.insert("id".into(), id.clone());
    }
    let mut codes = Vec::new();
    let mut path_out = String::new();
    match rng.below(10) {
        0 => {
            codes.push(ErrorCode::BadMessage);
        }
        1 => {
            o.insert("path".into(), non_string_json(rng));
            codes.push(ErrorCode::BadMessage);
        }
        2 => {
            o.insert("path".into(), Value::String(invalid_path(rng)));
            codes.push(ErrorCode::InvalidPath);
        }
        _ => {
            let p = valid_path(rng);
            o.insert("path".into(), Value::String(p.clone()));
            path_out = p;
        }
    }
    let mut events = Vec::new();
    match rng.below(8) {
        0 => {}
        1 => {
            o.insert("events".into(), Value::Null);
        }
        2 => {
            o.insert("events".into(), json!(["ok", ""]));
            events.push("ok".to_string());
            codes.push(ErrorCode::BadMessage);
        }
        3 => {
            o.insert("events".into(), non_array_non_null(rng));
            codes.push(ErrorCode::BadMessage);
        }
        _ => {
            events = (0..rng.range(0, 3)).map(|_| token(rng, 1, 6)).collect();
            o.insert("events".into(), json!(events));
        }
    }
    match rng.below(12) {
        0 => {
            o.insert("filter".into(), Value::Null);
        }
        1 => {
            let mut v = any_json(rng, 1);
            if v.is_null() || v.is_string() {
                v = json!(1);
            }
            o.insert("filter".into(), v);
            codes.push(ErrorCode::BadMessage);
        }
        2 => {
            // Malformed: the operator has no literal.
            o.insert(
                "filter".into(),
                json!(format!(
                    "{} ==",
                    token(rng, 1, 4).replace(['.', ':', '@', '-'], "_")
                )),
            );
            codes.push(ErrorCode::InvalidFilter);
        }
        3 => {
            o.insert("filter".into(), json!("status == 'failed' && n > 2"));
        }
        _ => {}
    }
    match rng.below(12) {
        0 => {
            o.insert("since".into(), Value::Null);
        }
        1 => {
            let v = any_json(rng, 1);
            if !v.is_null() {
                if v.as_u64().is_none() {
                    codes.push(ErrorCode::BadMessage);
                }
                o.insert("since".into(), v);
            }
        }
        2 => {
            o.insert("since".into(), json!(rng.below(1_000_000)));
        }
        _ => {}
    }
    if !id_ok {
        return (Value::Object(o), Err(()));
    }
    let id = match id {
        Some(Value::String(s)) => s,
        _ => unreachable!(),
    };
    let entry = if codes.is_empty() {
        Ok((path_out, events))
    } else {
        Err(codes)
    };
    (Value::Object(o), Ok((id, entry)))
}

fn non_object_json(rng: &mut Rng) -> Value {
    loop {
        let v = any_json(rng, 1);
        if !v.is_object() {
            return v;
        }
    }
}

fn non_array_non_null(rng: &mut Rng) -> Value {
    loop {
        let v = any_json(rng, 1);
        if !v.is_array() && !v.is_null() {
            return v;
        }
    }
}

fn gen_command(rng: &mut Rng) -> (Value, CmdExpect) {
    let mut o = serde_json::Map::new();
    // requestId
    let mut rid_bad = false;
    let rid = match rng.below(8) {
        0 => None,
        1 => {
            o.insert("requestId".into(), Value::Null);
            None
        }
        2 | 3 => {
            let v = Value::String(token(rng, 0, 10));
            o.insert("requestId".into(), v.clone());
            Some(v)
        }
        4 | 5 => {
            let v = json!(rng.below(100_000));
            o.insert("requestId".into(), v.clone());
            Some(v)
        }
        _ => {
            let v = loop {
                let v = any_json(rng, 1);
                if !matches!(v, Value::Null | Value::String(_) | Value::Number(_)) {
                    break v;
                }
            };
            o.insert("requestId".into(), v);
            rid_bad = true;
            None
        }
    };
    let bad = |rid: &Option<Value>| CmdExpect::Err(vec![ErrorCode::BadMessage], rid.clone());
    let typ: Option<String> = match rng.below(20) {
        0 => None,
        1 => {
            o.insert("type".into(), non_string_json(rng));
            None
        }
        2 => {
            let t = loop {
                let t = if rng.chance(1, 2) {
                    let n = rng.range(0, 100);
                    utf8_string(rng, n)
                } else {
                    token(rng, 0, 20)
                };
                if !KNOWN_TYPES.contains(&t.as_str()) {
                    break t;
                }
            };
            o.insert("type".into(), Value::String(t.clone()));
            Some(t)
        }
        _ => {
            // Weighted towards the commands with members to get wrong.
            let t = match rng.below(10) {
                0..=3 => "subscribeEvents",
                4 | 5 => "auth",
                6 | 7 => "unsubscribeEvents",
                _ => rng.pick(KNOWN_TYPES),
            }
            .to_string();
            o.insert("type".into(), Value::String(t.clone()));
            Some(t)
        }
    };
    let typ_present_bad = typ.is_none();
    let mut expect = match typ.as_deref() {
        None => bad(&rid),
        Some("auth") => {
            let token_ok = match rng.below(6) {
                0 => false,
                1 => {
                    o.insert("token".into(), json!(""));
                    false
                }
                2 => {
                    o.insert("token".into(), non_string_json(rng));
                    false
                }
                _ => {
                    o.insert("token".into(), json!("a.b.c"));
                    true
                }
            };
            let options = match rng.below(5) {
                0 => Ok(false),
                1 => {
                    o.insert("options".into(), Value::Null);
                    Ok(false)
                }
                2 => {
                    o.insert("options".into(), non_object_json(rng));
                    if o["options"].is_null() {
                        Ok(false)
                    } else {
                        Err(())
                    }
                }
                _ => {
                    o.insert("options".into(), json!({"batchMs": 0}));
                    Ok(true)
                }
            };
            match (token_ok, options) {
                (true, Ok(has)) => CmdExpect::Auth("a.b.c".into(), has),
                _ => bad(&rid),
            }
        }
        Some("ping") => CmdExpect::Ping,
        Some("pong") => CmdExpect::Pong,
        Some("subscribeEvents") => match rng.below(8) {
            0 => bad(&rid),
            1 => {
                o.insert("subscriptions".into(), non_array_non_null(rng));
                bad(&rid)
            }
            _ => {
                let mut items = Vec::new();
                let mut entries = Ok(Vec::new());
                for i in 0..rng.range(0, 5) {
                    let (v, e) = gen_subscription(rng, i);
                    items.push(v);
                    match (e, &mut entries) {
                        (Ok(e), Ok(list)) => list.push(e),
                        (Err(()), Ok(_)) => entries = Err(()),
                        _ => {}
                    }
                }
                o.insert("subscriptions".into(), Value::Array(items));
                match entries {
                    Ok(list) => CmdExpect::Subscribe(list),
                    Err(()) => bad(&rid),
                }
            }
        },
        Some("unsubscribeEvents") => match rng.below(6) {
            0 => bad(&rid),
            1 => {
                o.insert("ids".into(), non_array_non_null(rng));
                bad(&rid)
            }
            2 => {
                let mut ids: Vec<Value> = (0..rng.range(0, 3))
                    .map(|_| json!(token(rng, 1, 5)))
                    .collect();
                let at = rng.range(0, ids.len());
                ids.insert(at, non_string_json(rng));
                o.insert("ids".into(), Value::Array(ids));
                bad(&rid)
            }
            _ => {
                let ids: Vec<String> = (0..rng.range(0, 4)).map(|_| token(rng, 0, 5)).collect();
                o.insert("ids".into(), json!(ids));
                CmdExpect::Unsubscribe(ids)
            }
        },
        // Service commands: well-formed ones parse into their command, and one broken
        // field of each is named.
        Some(t @ ("taskComplete" | "taskFailed")) => {
            if rng.chance(1, 2) {
                let ids: Vec<String> = (0..rng.range(0, 4))
                    .map(|_| format!("g:{}", rng.range(0, 99)))
                    .collect();
                o.insert("taskIds".into(), json!(ids));
                if t == "taskFailed" && rng.chance(1, 2) {
                    o.insert("retryInMs".into(), json!(rng.range(0, 5000)));
                }
                CmdExpect::ServiceOnly(t.into())
            } else {
                o.insert("taskIds".into(), non_array_non_null(rng));
                bad(&rid)
            }
        }
        Some(t @ ("lock" | "unlock")) => {
            o.insert("name".into(), json!(token(rng, 1, 8)));
            if t == "unlock" || rng.chance(1, 2) {
                o.insert("ttlMs".into(), json!(rng.range(1, 100_000)));
                CmdExpect::ServiceOnly(t.into())
            } else {
                // No ttlMs (a lock needs one), or one out of range.
                if rng.chance(1, 2) {
                    o.insert("ttlMs".into(), json!(0));
                }
                bad(&rid)
            }
        }
        Some("log") => {
            o.insert("message".into(), json!(token(rng, 0, 8)));
            if rng.chance(1, 2) {
                let levels = protocol::LOG_LEVELS;
                o.insert(
                    "level".into(),
                    json!(levels[rng.range(0, levels.len() - 1)]),
                );
                CmdExpect::ServiceOnly("log".into())
            } else {
                o.insert("level".into(), json!("loud"));
                bad(&rid)
            }
        }
        Some(t) if SERVICE_ONLY.contains(&t) => CmdExpect::ServiceOnly(t.into()),
        Some("createLiveQuery") => {
            let id = token(rng, 1, 8);
            let edge = token(rng, 1, 8).replace('$', "e");
            let mut q = serde_json::Map::new();
            q.insert("edge".into(), json!(edge));
            if rng.chance(1, 2) {
                q.insert("filter".into(), json!("a == 1 || !b"));
            }
            if rng.chance(1, 2) {
                q.insert("orderBy".into(), json!("a desc, b"));
            }
            if rng.chance(1, 3) {
                q.insert("limit".into(), json!(rng.range(1, 5000)));
            }
            o.insert("id".into(), json!(id));
            // One thing wrong, or none.
            let wrong = match rng.below(8) {
                0 => o
                    .insert("id".into(), non_string_json(rng))
                    .map(|_| ErrorCode::BadMessage),
                1 => q
                    .insert("edge".into(), non_string_json(rng))
                    .map(|_| ErrorCode::BadMessage),
                2 => {
                    q.insert("filter".into(), json!("a =="));
                    Some(ErrorCode::InvalidFilter)
                }
                3 => {
                    q.insert("orderBy".into(), json!("a sideways"));
                    Some(ErrorCode::InvalidFilter)
                }
                4 => {
                    q.insert("limit".into(), json!(-1));
                    Some(ErrorCode::BadMessage)
                }
                _ => None,
            };
            o.insert("query".into(), Value::Object(q));
            match wrong {
                Some(code) => CmdExpect::Err(vec![code], rid.clone()),
                None => CmdExpect::CreateLiveQuery(id, edge),
            }
        }
        Some("destroyLiveQuery") => {
            if rng.chance(1, 3) {
                o.insert("id".into(), non_string_json(rng));
                bad(&rid)
            } else {
                let id = token(rng, 1, 8);
                o.insert("id".into(), json!(id));
                CmdExpect::DestroyLiveQuery(id)
            }
        }
        Some(_) => CmdExpect::Err(vec![ErrorCode::UnknownType], rid.clone()),
    };
    if typ_present_bad {
        expect = bad(&rid);
    }
    if rid_bad {
        expect = CmdExpect::Err(vec![ErrorCode::BadMessage], None);
    }
    // Unrelated members are ignored.
    if rng.chance(1, 4) {
        o.insert("x-extra".into(), any_json(rng, 2));
    }
    (Value::Object(o), expect)
}

fn check_command(case: usize, text: &[u8], expect: &CmdExpect) {
    let got = protocol::parse_command(text);
    let ctx = || format!("case {case}: {}", String::from_utf8_lossy(text));
    match (expect, &got) {
        (CmdExpect::Err(codes, rid), Err(e)) => {
            assert!(
                codes.contains(&e.refusal.code),
                "code {:?}: {}",
                e.refusal.code,
                ctx()
            );
            assert_eq!(&e.request_id, rid, "requestId: {}", ctx());
        }
        (CmdExpect::Err(..), Ok(_)) | (_, Err(_)) => {
            panic!("expected {expect:?}, got {got:?}: {}", ctx())
        }
        (want, Ok(env)) => match (want, &env.command) {
            (CmdExpect::Auth(t, has), Command::Auth { token, options }) => {
                assert_eq!((t, *has), (token, options.is_some()), "{}", ctx())
            }
            (CmdExpect::Ping, Command::Ping) | (CmdExpect::Pong, Command::Pong) => {}
            (CmdExpect::Subscribe(entries), Command::SubscribeEvents { subscriptions }) => {
                assert_eq!(entries.len(), subscriptions.len(), "{}", ctx());
                for (want, got) in entries.iter().zip(subscriptions) {
                    assert_eq!(want.0, got.id, "{}", ctx());
                    match (&want.1, &got.problem) {
                        (Ok((path, events)), None) => {
                            assert_eq!((path, events), (&got.path, &got.events), "{}", ctx())
                        }
                        (Err(codes), Some(p)) => {
                            assert!(
                                codes.contains(&p.code),
                                "problem {p:?}, expected {codes:?}: {}",
                                ctx()
                            )
                        }
                        (w, g) => panic!(
                            "entry {}: expected {w:?}, got problem {g:?}: {}",
                            got.id,
                            ctx()
                        ),
                    }
                }
            }
            (CmdExpect::Unsubscribe(ids), Command::UnsubscribeEvents { ids: got }) => {
                assert_eq!(ids, got, "{}", ctx())
            }
            (CmdExpect::ServiceOnly(t), cmd) if cmd.service_only().is_some() => {
                assert_eq!(Some(t.as_str()), cmd.service_only(), "{}", ctx())
            }
            (CmdExpect::DestroyLiveQuery(t), Command::DestroyLiveQuery { id: g }) => {
                assert_eq!(t, g, "{}", ctx())
            }
            (CmdExpect::CreateLiveQuery(id, edge), Command::CreateLiveQuery(q)) => {
                assert_eq!((id, edge), (&q.id, &q.edge), "{}", ctx())
            }
            (want, got) => panic!("expected {want:?}, got {got:?}: {}", ctx()),
        },
    }
}

#[test]
fn commands_generated_with_random_field_types() {
    let mut rng = Rng::new(0x636d_6473);
    for case in 0..count(12_000) {
        let (v, expect) = gen_command(&mut rng);
        let text = if rng.chance(1, 4) {
            serde_json::to_vec_pretty(&v).unwrap()
        } else {
            serde_json::to_vec(&v).unwrap()
        };
        check_command(case, &text, &expect);
        run_case(
            "client_command",
            &format!("generated case {case}"),
            &text,
            &|b: &[u8]| invariants::client_command(b),
        );
    }
}

#[test]
fn commands_random_and_mutated() {
    let mut rng = Rng::new(0x6d63_6d64);
    for case in 0..count(12_000) {
        let mut input = if rng.chance(1, 8) {
            rng.blob()
        } else {
            serde_json::to_vec(&gen_command(&mut rng).0).unwrap()
        };
        mutate(&mut rng, &mut input);
        run_case(
            "client_command",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::client_command(b),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Filters and orderBy
// ---------------------------------------------------------------------------------------

/// Filter-shaped text: the grammar's tokens in random order (so most inputs get deep into
/// the parser), sometimes a valid filter, then mutated.
#[test]
fn filters_random_and_mutated() {
    const TOKENS: &[&str] = &[
        "status",
        "a.b",
        "n",
        "in",
        "null",
        "true",
        "false",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "&&",
        "||",
        "!",
        "(",
        ")",
        "[",
        "]",
        ",",
        "'x'",
        "\"y\"",
        "'\\u00e9'",
        "3",
        "-1.5e3",
        " ",
        "desc",
        "asc",
        "'",
        "\\",
    ];
    let mut rng = Rng::new(0x6669_6c74);
    for case in 0..count(20_000) {
        let mut input: Vec<u8> = if rng.chance(1, 4) {
            b"status == 'failed' && (n > 3 || tags.x in [1, 'a', null]) && !done".to_vec()
        } else {
            let n = rng.range(1, 12);
            let mut t = String::new();
            for _ in 0..n {
                let tok: &&str = rng.pick(TOKENS);
                t.push_str(tok);
                if rng.chance(1, 2) {
                    t.push(' ');
                }
            }
            t.into_bytes()
        };
        if rng.chance(1, 2) {
            mutate(&mut rng, &mut input);
        }
        run_case("filter", &format!("case {case}"), &input, &|b: &[u8]| {
            invariants::filter(b)
        });
    }
}

// ---------------------------------------------------------------------------------------
// Publish bodies
// ---------------------------------------------------------------------------------------

/// A valid publication as members (in random order) and its expected fields.
fn good_item(rng: &mut Rng) -> (Vec<(String, String)>, Item) {
    let path = valid_path(rng);
    let et = if rng.chance(1, 20) {
        "e".repeat(256)
    } else {
        let n = rng.range(1, 12);
        let mut s = utf8_string(rng, n);
        while s.len() > 256 {
            s.pop();
        }
        if s.is_empty() {
            s.push('e');
        }
        s
    };
    let mut members = vec![
        ("path".to_string(), Value::String(path.clone()).to_string()),
        (
            "eventType".to_string(),
            Value::String(et.clone()).to_string(),
        ),
    ];
    let data = if rng.chance(1, 6) {
        "null".to_string()
    } else {
        let d = any_json(rng, 3).to_string();
        members.push(("data".to_string(), d.clone()));
        d
    };
    shuffle(rng, &mut members);
    (members, (path, et, data))
}

/// A publication with exactly one defect; its expected error code.
fn bad_item(rng: &mut Rng) -> (String, &'static str) {
    let (mut members, _) = good_item(rng);
    let set = |members: &mut Vec<(String, String)>, key: &str, v: String| {
        for m in members.iter_mut() {
            if m.0 == key {
                m.1 = v.clone();
            }
        }
    };
    let code = match rng.below(10) {
        0 => return (non_object_json(rng).to_string(), "BAD_MESSAGE"),
        9 => {
            // The members' values in an array, as if fields were positional.
            members.sort_by_key(|m| match m.0.as_str() {
                "path" => 0,
                "eventType" => 1,
                _ => 2,
            });
            let values: Vec<&str> = members.iter().map(|m| m.1.as_str()).collect();
            return (format!("[{}]", values.join(",")), "BAD_MESSAGE");
        }
        1 => {
            let k = *rng.pick(&["dat", "events", "Path", "id", "seq", ""]);
            members.push((k.to_string(), any_json(rng, 1).to_string()));
            "BAD_MESSAGE"
        }
        2 => {
            members.retain(|m| m.0 != "path");
            "BAD_MESSAGE"
        }
        3 => {
            set(&mut members, "path", non_string_json(rng).to_string());
            "BAD_MESSAGE"
        }
        4 => {
            set(
                &mut members,
                "path",
                Value::String(invalid_path(rng)).to_string(),
            );
            "INVALID_PATH"
        }
        5 => {
            members.retain(|m| m.0 != "eventType");
            "BAD_MESSAGE"
        }
        6 => {
            set(&mut members, "eventType", non_string_json(rng).to_string());
            "BAD_MESSAGE"
        }
        7 => {
            set(&mut members, "eventType", "\"\"".to_string());
            "BAD_MESSAGE"
        }
        _ => {
            set(
                &mut members,
                "eventType",
                Value::String("x".repeat(rng.range(257, 400))).to_string(),
            );
            "BAD_MESSAGE"
        }
    };
    shuffle(rng, &mut members);
    (object_text(&members), code)
}

/// An accepted publication: path, eventType, data text.
type Item = (String, String, String);

struct GenPublish {
    body: String,
    max: usize,
    /// Ok: the items. Err: the error code and index.
    expect: Result<Vec<Item>, (&'static str, Option<usize>)>,
}

fn gen_publish(rng: &mut Rng) -> GenPublish {
    let max = if rng.chance(1, 2) {
        rng.range(1, 12)
    } else {
        10_000
    };
    let ws = |rng: &mut Rng| if rng.chance(1, 4) { " \n " } else { "" };
    match rng.below(10) {
        // One publication, not a batch.
        0 | 1 => {
            if rng.chance(1, 3) {
                let (body, code) = bad_item(rng);
                let top_is_object = body.starts_with('{');
                let expect = if top_is_object {
                    Err((code, None))
                } else {
                    Err(("BAD_MESSAGE", None))
                };
                GenPublish { body, max, expect }
            } else {
                let (members, item) = good_item(rng);
                GenPublish {
                    body: object_text(&members),
                    max,
                    expect: Ok(vec![item]),
                }
            }
        }
        // Empty or oversized batches.
        2 => {
            if rng.chance(1, 2) || max > 20 {
                GenPublish {
                    body: format!("{{\"events\":[{}]}}", ws(rng)),
                    max,
                    expect: Err(("BAD_MESSAGE", None)),
                }
            } else {
                let n = max + rng.range(1, 3);
                let items: Vec<String> = (0..n).map(|_| object_text(&good_item(rng).0)).collect();
                GenPublish {
                    body: format!("{{\"events\":[{}]}}", items.join(",")),
                    max,
                    expect: Err(("LIMIT_EXCEEDED", None)),
                }
            }
        }
        // A batch of good items with at most one bad item at a random index.
        _ => {
            let n = rng.range(1, max.min(12));
            let bad_at = if rng.chance(1, 2) {
                Some(rng.below(n))
            } else {
                None
            };
            let mut texts = Vec::new();
            let mut items = Vec::new();
            let mut code = "";
            for i in 0..n {
                if Some(i) == bad_at {
                    let (t, c) = bad_item(rng);
                    texts.push(t);
                    code = c;
                } else {
                    let (members, item) = good_item(rng);
                    texts.push(object_text(&members));
                    items.push(item);
                }
            }
            let sep = if rng.chance(1, 3) { ", " } else { "," };
            let body = format!("{{{}\"events\"{}:[{}]}}", ws(rng), ws(rng), texts.join(sep));
            let expect = match bad_at {
                Some(k) => Err((code, Some(k))),
                None => Ok(items),
            };
            GenPublish { body, max, expect }
        }
    }
}

#[test]
fn publish_bodies_report_the_bad_item() {
    let mut rng = Rng::new(0x7075_626c);
    for case in 0..count(12_000) {
        let g = gen_publish(&mut rng);
        let ctx = || format!("case {case}, max {}: {}", g.max, g.body);
        match (&g.expect, parse_publish(g.body.as_bytes(), g.max)) {
            (Ok(want), Ok(got)) => {
                let got: Vec<Item> = got
                    .into_iter()
                    .map(|it| (it.path, it.event_type, it.data.get().to_string()))
                    .collect();
                assert_eq!(&got, want, "{}", ctx());
            }
            (Err((code, index)), Err(e)) => {
                assert_eq!(
                    (e.code, e.index),
                    (*code, *index),
                    "{}: {}",
                    e.message,
                    ctx()
                );
                if let Some(k) = index {
                    assert!(
                        e.message.contains(&format!("events[{k}]")),
                        "{}: {}",
                        e.message,
                        ctx()
                    );
                }
            }
            (want, got) => panic!("expected {want:?}, got {got:?}: {}", ctx()),
        }
        run_case(
            "publish_body",
            &format!("generated case {case}"),
            g.body.as_bytes(),
            &|b: &[u8]| invariants::publish_body(b),
        );
    }
}

#[test]
fn publish_random_and_mutated() {
    let mut rng = Rng::new(0x6d70_7562);
    for case in 0..count(12_000) {
        let mut input = if rng.chance(1, 10) {
            rng.blob()
        } else {
            gen_publish(&mut rng).body.into_bytes()
        };
        mutate(&mut rng, &mut input);
        run_case(
            "publish_body",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::publish_body(b),
        );
    }
}

/// A publication is a JSON object (PROTOCOL.md: `{"path","eventType","data"}` or
/// `{"events":[…]}`). Found by the generators above: since publish bodies are deserialized
/// into derived structs, serde also accepts a JSON array as a struct (fields by position),
/// so array items and array bodies are taken as publications.
#[test]
fn publish_items_must_be_objects() {
    // An item that is an array: must be refused with its index, not published.
    let e = parse_publish(br#"{"events":[["jobs/1","done",{"a":1}]]}"#, 10)
        .map(|items| items.len())
        .expect_err("an array item was accepted as a publication");
    assert_eq!((e.code, e.index), ("BAD_MESSAGE", Some(0)), "{}", e.message);
    // A body that is an array of arrays: not a batch.
    let e = parse_publish(br#"[[["jobs/1","done"]]]"#, 10)
        .map(|items| items.len())
        .expect_err("an array body was accepted as a batch");
    assert_eq!((e.code, e.index), ("BAD_MESSAGE", None), "{}", e.message);
}

// ---------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------

/// The error kinds `verify` may answer with, as labels (`TokenError::reason`).
type Reasons = Vec<&'static str>;

struct GenToken {
    token: String,
    now: u64,
    /// Ok: the claims that must come back. Err: the acceptable reasons.
    expect: Result<jwt::Claims, Reasons>,
}

fn gen_token(rng: &mut Rng) -> GenToken {
    let now = if rng.chance(1, 10) {
        rng.range(0, 1000) as u64
    } else {
        JWT_NOW
    };
    // Header.
    let mut header = serde_json::Map::new();
    let mut header_errs: Reasons = Vec::new();
    match rng.below(24) {
        0 => {
            let a = *rng.pick(&["none", "None", "HS512", "RS256", "hs256", "HS256 ", ""]);
            header.insert("alg".into(), json!(a));
            header_errs.push("unsupported_alg");
        }
        1 => {
            header.insert("alg".into(), non_string_json(rng));
            header_errs.push("unsupported_alg");
        }
        2 => header_errs.push("malformed"),
        _ => {
            header.insert("alg".into(), json!("HS256"));
        }
    }
    if rng.chance(1, 2) {
        header.insert("typ".into(), json!("JWT"));
    }
    if rng.chance(1, 15) {
        header.insert("crit".into(), json!(["exp"]));
        header_errs.push("malformed");
    }
    let header_bytes = match rng.below(30) {
        0 => {
            header_errs = vec!["malformed"];
            b"not json".to_vec()
        }
        1 => {
            header_errs = vec!["malformed"];
            b"[\"alg\",\"HS256\"]".to_vec()
        }
        _ => Value::Object(header).to_string().into_bytes(),
    };
    // Claims.
    let mut c = serde_json::Map::new();
    let mut claim_errs: Reasons = Vec::new();
    let sub = match rng.below(12) {
        0 => None,
        1 => Some(json!("")),
        2 => Some(non_string_json(rng)),
        _ => Some(json!(format!("u-{}", token(rng, 1, 6)))),
    };
    let sub_str = match &sub {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    if sub_str.is_empty() {
        claim_errs.push("invalid_claims");
    }
    if let Some(s) = sub {
        c.insert("sub".into(), s);
    }
    let mut exp_out = 0u64;
    match rng.below(14) {
        0 => claim_errs.push("invalid_claims"),
        1 => {
            c.insert("exp".into(), Value::Null);
            claim_errs.push("invalid_claims");
        }
        2 => {
            c.insert("exp".into(), json!("tomorrow"));
            claim_errs.push("invalid_claims");
        }
        3 => {
            c.insert(
                "exp".into(),
                json!(now.saturating_sub(rng.range(0, 1000) as u64)),
            );
            claim_errs.push("expired");
        }
        4 => {
            c.insert("exp".into(), json!(-(rng.range(1, 1000) as i64)));
            claim_errs.push("expired");
        }
        5 => {
            let f = now as f64 - 0.5 - rng.range(0, 100) as f64;
            c.insert("exp".into(), json!(f));
            claim_errs.push("expired");
        }
        6 => {
            let k = rng.range(0, 100) as u64;
            c.insert("exp".into(), json!(now as f64 + k as f64 + 0.25));
            exp_out = now + k + 1;
        }
        7 => {
            c.insert("exp".into(), json!(1e300));
            exp_out = u64::MAX;
        }
        _ => {
            let e = now + rng.range(1, 1_000_000) as u64;
            c.insert("exp".into(), json!(e));
            exp_out = e;
        }
    }
    match rng.below(10) {
        0 => {
            c.insert("nbf".into(), Value::Null);
        }
        1 => {
            c.insert(
                "nbf".into(),
                json!(now.saturating_sub(rng.range(0, 100) as u64)),
            );
        }
        2 => {
            // Beyond the leeway a clock running ahead is given.
            let ahead = NBF_LEEWAY_SECS + rng.range(1, 100) as u64;
            c.insert("nbf".into(), json!(now + ahead));
            claim_errs.push("not_yet_valid");
        }
        3 => {
            c.insert("nbf".into(), json!((now + NBF_LEEWAY_SECS) as f64 + 0.5));
            claim_errs.push("not_yet_valid");
        }
        4 => {
            c.insert("nbf".into(), json!("soon"));
            claim_errs.push("invalid_claims");
        }
        _ => {}
    }
    let role = match rng.below(10) {
        0 => {
            c.insert("role".into(), Value::Null);
            Some(Role::User)
        }
        1 => {
            c.insert(
                "role".into(),
                json!(rng.pick(&["root", "Admin", "", "users"])),
            );
            None
        }
        2 => {
            c.insert("role".into(), non_string_json(rng));
            if c["role"].is_null() {
                Some(Role::User)
            } else {
                None
            }
        }
        3 | 4 => {
            let r = *rng.pick(&[Role::User, Role::Service, Role::Admin]);
            c.insert("role".into(), json!(r.as_str()));
            Some(r)
        }
        _ => Some(Role::User),
    };
    if role.is_none() {
        claim_errs.push("invalid_claims");
    }
    let role_v = role.unwrap_or(Role::User);
    let scopes = match rng.below(8) {
        0 => {
            let list: Vec<String> = (0..rng.range(0, 3))
                .map(|_| {
                    format!(
                        "{}{}",
                        valid_path(rng),
                        if rng.chance(1, 3) { "/" } else { "" }
                    )
                })
                .collect();
            c.insert("scopes".into(), json!(list));
            Some(Scopes::Prefixes(
                list.iter()
                    .map(|s| s.trim_end_matches('/').to_string())
                    .collect(),
            ))
        }
        1 => {
            c.insert("scopes".into(), json!(["jobs", "*"]));
            Some(Scopes::All)
        }
        2 => {
            c.insert("scopes".into(), json!(["jobs", 3]));
            None
        }
        3 => {
            c.insert("scopes".into(), non_array_non_null(rng));
            None
        }
        4 => {
            c.insert("scopes".into(), Value::Null);
            Some(if role_v == Role::User {
                Scopes::Prefixes(vec![])
            } else {
                Scopes::All
            })
        }
        _ => Some(if role_v == Role::User {
            Scopes::Prefixes(vec![])
        } else {
            Scopes::All
        }),
    };
    if scopes.is_none() {
        claim_errs.push("invalid_claims");
    }
    let mut opt = |name: &str,
                   rng: &mut Rng,
                   c: &mut serde_json::Map<String, Value>|
     -> Option<Option<String>> {
        match rng.below(8) {
            0 => {
                c.insert(name.into(), Value::Null);
                Some(None)
            }
            1 => {
                c.insert(name.into(), json!(""));
                Some(None)
            }
            2 => {
                let v = non_string_json(rng);
                let null = v.is_null();
                c.insert(name.into(), v);
                if null {
                    Some(None)
                } else {
                    claim_errs.push("invalid_claims");
                    None
                }
            }
            3 | 4 => {
                let s = token(rng, 1, 6);
                c.insert(name.into(), json!(s));
                Some(Some(s))
            }
            _ => Some(None),
        }
    };
    let group = opt("group", rng, &mut c);
    let org = opt("org", rng, &mut c);
    if rng.chance(1, 4) {
        c.insert("x".into(), any_json(rng, 2));
    }
    let payload_bytes = match rng.below(40) {
        0 => {
            claim_errs = vec!["malformed"];
            b"[1,2]".to_vec()
        }
        1 => {
            claim_errs = vec!["malformed"];
            b"{\"sub\":".to_vec()
        }
        _ => Value::Object(c).to_string().into_bytes(),
    };
    // Signature and structure.
    let good = invariants::sign_parts(JWT_SECRET, &header_bytes, &payload_bytes);
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut sig_errs: Reasons = Vec::new();
    let sig = match rng.below(24) {
        0 => {
            sig_errs.push("bad_signature");
            let other = invariants::sign_parts(b"other", &header_bytes, &payload_bytes);
            other.rsplit_once('.').unwrap().1.to_string()
        }
        1 => {
            sig_errs.extend(["bad_signature", "malformed"]);
            sig[..sig.len() - rng.range(1, 5)].to_string()
        }
        2 => {
            sig_errs.push("bad_signature");
            String::new()
        }
        3 => {
            sig_errs.push("malformed");
            format!("{sig}=")
        }
        4 => {
            sig_errs.push("malformed");
            format!("{}+/", &sig[..sig.len() - 2])
        }
        _ => sig.to_string(),
    };
    let mut token = format!("{input}.{sig}");
    let mut structure_err = false;
    match rng.below(30) {
        0 => {
            token.push_str(".x");
            structure_err = true;
        }
        1 => {
            token = input.to_string();
            structure_err = true;
        }
        2 => {
            token = String::new();
            structure_err = true;
        }
        _ => {}
    }
    let expect = if structure_err {
        Err(vec!["malformed"])
    } else if !header_errs.is_empty() {
        Err(header_errs)
    } else if !sig_errs.is_empty() {
        Err(sig_errs)
    } else if !claim_errs.is_empty() {
        Err(claim_errs)
    } else {
        Ok(jwt::Claims {
            sub: sub_str,
            exp: exp_out,
            role: role_v,
            scopes: scopes.unwrap_or(Scopes::All),
            group: group.flatten(),
            org: org.flatten(),
        })
    };
    GenToken { token, now, expect }
}

#[test]
fn jwt_generated_tokens() {
    let mut rng = Rng::new(0x6a77_7473);
    for case in 0..count(12_000) {
        let g = gen_token(&mut rng);
        let got = invariants::check_verify(JWT_SECRET, &g.token, g.now);
        let ctx = || format!("case {case}, now {}: {}", g.now, g.token);
        match (&g.expect, &got) {
            (Ok(want), Ok(c)) => assert_eq!(want, c, "{}", ctx()),
            (Err(reasons), Err(e)) => assert!(
                reasons.contains(&e.reason()),
                "{e:?}, expected {reasons:?}: {}",
                ctx()
            ),
            (want, got) => panic!("expected {want:?}, got {got:?}: {}", ctx()),
        }
    }
}

#[test]
fn jwt_random_and_mutated() {
    let mut rng = Rng::new(0x6d6a_7774);
    for case in 0..count(8_000) {
        let mut input = vec![rng.below(3) as u8];
        match input[0] {
            0 => {
                let mut t = gen_token(&mut rng).token.into_bytes();
                mutate(&mut rng, &mut t);
                input.extend(t);
            }
            1 => {
                let mut h = if rng.chance(1, 2) {
                    br#"{"alg":"HS256"}"#.to_vec()
                } else {
                    serde_json::to_vec(&any_json(&mut rng, 2)).unwrap()
                };
                mutate(&mut rng, &mut h);
                h.retain(|&b| b != 0xFF);
                input.extend(h);
                input.push(0xFF);
                let mut p = serde_json::to_vec(
                    &json!({"sub":"u","exp": JWT_NOW + 5,"role": "admin","scopes":["a/"]}),
                )
                .unwrap();
                mutate(&mut rng, &mut p);
                input.extend(p);
            }
            _ => {
                let n = *rng.pick(&[0usize, 1, 32, 63, 64, 65, 200]);
                let mut secret = rng.bytes(n);
                secret.retain(|&b| b != 0xFF);
                input.extend(secret);
                input.push(0xFF);
                let mut p = br#"{"sub":"u","exp":4102444800,"nbf":1}"#.to_vec();
                mutate(&mut rng, &mut p);
                input.extend(p);
            }
        }
        run_case(
            "jwt_verify",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::jwt_verify(b),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum KeyKind {
    UInt(u64),
    Str,
    StrList,
    Addr,
    OneOf(&'static [&'static str]),
}

/// PROTOCOL.md §13's keys (with the project's extensions): section, key, kind, and whether
/// validation wants at least 1.
const CONFIG_KEYS: &[(&str, &str, KeyKind, bool)] = &[
    ("", "listen", KeyKind::Addr, false),
    ("", "shards", KeyKind::UInt(u64::MAX), false),
    ("", "data_dir", KeyKind::Str, false),
    ("", "public_url", KeyKind::Str, false),
    ("", "drain_period_ms", KeyKind::UInt(u64::MAX), false),
    ("", "log_format", KeyKind::OneOf(&["human", "json"]), false),
    ("auth", "jwt_secret", KeyKind::Str, false),
    ("auth", "api_keys", KeyKind::StrList, false),
    ("auth", "auth_timeout_ms", KeyKind::UInt(u64::MAX), true),
    ("auth", "ticket_ttl_ms", KeyKind::UInt(u64::MAX), true),
    ("delivery", "batch_ms", KeyKind::UInt(u64::MAX), false),
    ("delivery", "batch_max", KeyKind::UInt(u64::MAX), true),
    ("delivery", "max_batch_ms", KeyKind::UInt(u64::MAX), false),
    (
        "delivery",
        "framing",
        KeyKind::OneOf(&["frames", "array"]),
        false,
    ),
    ("delivery", "queue_capacity", KeyKind::UInt(u64::MAX), true),
    ("delivery", "heartbeat_ms", KeyKind::UInt(u64::MAX), true),
    ("delivery", "pong_timeout_ms", KeyKind::UInt(u64::MAX), true),
    (
        "delivery",
        "shard_queue_capacity",
        KeyKind::UInt(u64::MAX),
        true,
    ),
    ("history", "size", KeyKind::UInt(u64::MAX), false),
    ("history", "ttl_ms", KeyKind::UInt(u64::MAX), false),
    ("live_query", "cap", KeyKind::UInt(u64::MAX), false),
    ("live_query", "page", KeyKind::UInt(u64::MAX), true),
    ("services", "ack_timeout_ms", KeyKind::UInt(u64::MAX), true),
    (
        "services",
        "max_attempts",
        KeyKind::UInt(u32::MAX as u64),
        true,
    ),
    ("services", "prefetch", KeyKind::UInt(u64::MAX), true),
    ("channels", "backlog", KeyKind::UInt(u64::MAX), false),
    ("limits", "max_message_bytes", KeyKind::UInt(u64::MAX), true),
    ("limits", "max_subscriptions", KeyKind::UInt(u64::MAX), true),
    ("limits", "max_live_queries", KeyKind::UInt(u64::MAX), true),
    (
        "limits",
        "commands_per_sec",
        KeyKind::UInt(u32::MAX as u64),
        true,
    ),
    (
        "limits",
        "commands_burst",
        KeyKind::UInt(u32::MAX as u64),
        true,
    ),
    ("limits", "max_connections", KeyKind::UInt(u64::MAX), true),
    (
        "limits",
        "request_timeout_ms",
        KeyKind::UInt(u64::MAX),
        true,
    ),
    (
        "limits",
        "max_http_connections",
        KeyKind::UInt(u64::MAX),
        true,
    ),
    (
        "limits",
        "max_http_body_bytes",
        KeyKind::UInt(u64::MAX),
        true,
    ),
    ("limits", "max_publish_batch", KeyKind::UInt(u64::MAX), true),
    ("cluster", "redis_url", KeyKind::Str, false),
    ("testing", "echo_path", KeyKind::Str, false),
];

/// A number `Config` exposes for a UInt key.
fn config_uint(c: &Config, section: &str, key: &str) -> u64 {
    match (section, key) {
        ("", "shards") => c.shards as u64,
        ("", "drain_period_ms") => c.drain_period_ms,
        ("auth", "auth_timeout_ms") => c.auth.auth_timeout_ms,
        ("auth", "ticket_ttl_ms") => c.auth.ticket_ttl_ms,
        ("delivery", "batch_ms") => c.delivery.batch_ms,
        ("delivery", "batch_max") => c.delivery.batch_max as u64,
        ("delivery", "max_batch_ms") => c.delivery.max_batch_ms,
        ("delivery", "queue_capacity") => c.delivery.queue_capacity as u64,
        ("delivery", "heartbeat_ms") => c.delivery.heartbeat_ms,
        ("delivery", "pong_timeout_ms") => c.delivery.pong_timeout_ms,
        ("delivery", "shard_queue_capacity") => c.delivery.shard_queue_capacity as u64,
        ("history", "size") => c.history.size as u64,
        ("history", "ttl_ms") => c.history.ttl_ms,
        ("live_query", "cap") => c.live_query.cap as u64,
        ("live_query", "page") => c.live_query.page as u64,
        ("services", "ack_timeout_ms") => c.services.ack_timeout_ms,
        ("services", "max_attempts") => c.services.max_attempts as u64,
        ("services", "prefetch") => c.services.prefetch as u64,
        ("channels", "backlog") => c.channels.backlog as u64,
        ("limits", "max_message_bytes") => c.limits.max_message_bytes as u64,
        ("limits", "max_subscriptions") => c.limits.max_subscriptions as u64,
        ("limits", "max_live_queries") => c.limits.max_live_queries as u64,
        ("limits", "commands_per_sec") => c.limits.commands_per_sec as u64,
        ("limits", "commands_burst") => c.limits.commands_burst as u64,
        ("limits", "max_connections") => c.limits.max_connections as u64,
        ("limits", "request_timeout_ms") => c.limits.request_timeout_ms,
        ("limits", "max_http_connections") => c.limits.max_http_connections as u64,
        ("limits", "max_http_body_bytes") => c.limits.max_http_body_bytes as u64,
        ("limits", "max_publish_batch") => c.limits.max_publish_batch as u64,
        other => panic!("no uint key {other:?}"),
    }
}

fn full_key(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// A well-typed, valid TOML value for a key.
fn good_value(
    rng: &mut Rng,
    section: &str,
    key: &str,
    kind: KeyKind,
    at_least_one: bool,
) -> (String, Option<u64>) {
    match kind {
        KeyKind::UInt(max) => {
            let v = match (section, key) {
                ("delivery", "batch_ms") => rng.range(0, 1000) as u64,
                ("delivery", "max_batch_ms") => rng.range(1000, 100_000) as u64,
                _ => match rng.below(4) {
                    0 => max.min(i64::MAX as u64),
                    1 => rng.range(1, 10) as u64,
                    _ => rng.range(if at_least_one { 1 } else { 0 }, 1_000_000) as u64,
                },
            };
            (v.to_string(), Some(v))
        }
        KeyKind::Str => {
            let v = match key {
                "redis_url" => String::new(),
                "echo_path" => rng.pick(&["", "/echo", "/test/echo", "/apix"]).to_string(),
                _ => format!("v{}", token(rng, 0, 10)),
            };
            (Value::String(v).to_string(), None)
        }
        KeyKind::StrList => {
            let keys: Vec<String> = (0..rng.range(0, 3))
                .map(|_| format!("k{}", token(rng, 0, 5)))
                .collect();
            (serde_json::to_string(&keys).unwrap(), None)
        }
        KeyKind::Addr => (
            Value::String(
                rng.pick(&["127.0.0.1:8080", "0.0.0.0:0", "[::1]:9000"])
                    .to_string(),
            )
            .to_string(),
            None,
        ),
        KeyKind::OneOf(opts) => (Value::String(rng.pick(opts).to_string()).to_string(), None),
    }
}

/// A value of the wrong type or out of range for the kind.
fn bad_value(rng: &mut Rng, kind: KeyKind) -> String {
    let wrong: &[&str] = match kind {
        KeyKind::UInt(max) if max == u32::MAX as u64 && rng.chance(1, 2) => &["4294967296"],
        KeyKind::UInt(_) => &[
            "-1",
            "\"5\"",
            "1.5",
            "true",
            "[1]",
            "{ a = 1 }",
            "1979-05-27",
        ],
        KeyKind::Str => &["987654321", "true", "[\"a\"]", "1.5", "{ a = 1 }"],
        KeyKind::StrList => &["\"k\"", "[\"a\", 987654321]", "987654321", "{ a = 1 }"],
        KeyKind::Addr => &["\"localhost:8080\"", "\"8080\"", "\"1.2.3.4\"", "8080"],
        KeyKind::OneOf(_) => &["\"XML\"", "\"\"", "1", "\"Array\""],
    };
    rng.pick(wrong).to_string()
}

struct GenConfig {
    text: String,
    env: Vec<(String, String)>,
    /// Ok: UInt values that must be read back. Err: the key the error must name.
    expect: Result<Vec<(&'static str, &'static str, u64)>, String>,
    /// A value that must not appear in the error (a secret's).
    secret_value: Option<&'static str>,
}

fn gen_config(rng: &mut Rng) -> GenConfig {
    // Pick keys, group them into sections (top-level first).
    let mut chosen: Vec<&(&str, &str, KeyKind, bool)> =
        CONFIG_KEYS.iter().filter(|_| rng.chance(1, 3)).collect();
    // batch_ms and max_batch_ms only together, so batch_ms <= max_batch_ms holds.
    let has = |c: &Vec<&(&str, &str, KeyKind, bool)>, k: &str| c.iter().any(|e| e.1 == k);
    if has(&chosen, "batch_ms") != has(&chosen, "max_batch_ms") {
        chosen.retain(|e| e.1 != "batch_ms" && e.1 != "max_batch_ms");
    }
    let fault = if chosen.is_empty() || rng.chance(1, 2) {
        None
    } else {
        Some(rng.below(chosen.len()))
    };
    let fault_kind = rng.below(6);
    let mut values: Vec<(String, String)> = Vec::new();
    let mut readback = Vec::new();
    let mut err_key = None;
    let mut secret_value = None;
    for (i, &&(section, key, kind, at_least_one)) in chosen.iter().enumerate() {
        let (mut text, num) = good_value(rng, section, key, kind, at_least_one);
        if fault == Some(i) {
            err_key = Some(full_key(section, key));
            match fault_kind {
                0 if at_least_one => text = "0".into(),
                1 if key == "jwt_secret" => text = "\"\"".into(),
                2 if key == "echo_path" => {
                    text =
                        (*rng.pick(&["\"/ws\"", "\"echo\"", "\"/api/x\"", "\"/e?x\"", "\"/e x\""]))
                            .into()
                }
                3 if key == "redis_url" => text = "\"http://127.0.0.1:6379\"".into(),
                4 => {
                    // A misspelt key: named in the error.
                    values.push((full_key(section, &format!("{key}x")), text.clone()));
                    err_key = Some(full_key(section, &format!("{key}x")));
                    continue;
                }
                _ => {
                    text = bad_value(rng, kind);
                    if matches!(key, "jwt_secret" | "api_keys") {
                        secret_value = Some("987654321");
                    }
                }
            }
        } else if let Some(n) = num {
            readback.push((section, key, n));
        }
        values.push((full_key(section, key), text));
    }
    // Render: top-level keys, then one table per section.
    let mut text = String::new();
    let mut sections: Vec<&str> = Vec::new();
    for (full, v) in &values {
        if !full.contains('.') {
            let _ = writeln!(text, "{full} = {v}");
        } else if let Some((s, _)) = full.split_once('.') {
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
    }
    for s in sections {
        let _ = writeln!(text, "\n[{s}]");
        for (full, v) in &values {
            if let Some((sec, k)) = full.split_once('.') {
                if sec == s {
                    let _ = writeln!(text, "{k} = {v}  # comment");
                }
            }
        }
    }
    let mut env = Vec::new();
    if rng.chance(1, 4) {
        env.push(("SHARDCAST_LOG".to_string(), "debug".to_string()));
        env.push(("PATH".to_string(), "/usr/bin".to_string()));
    }
    // Off loopback the shipped example secrets stop start-up (PROTOCOL.md §13), after
    // every other check: the secret first, then the api keys. Generated values are never
    // the shipped ones, so only keys left at their defaults are.
    let off_loopback = values
        .iter()
        .any(|(k, v)| k == "listen" && v.contains("0.0.0.0"));
    if err_key.is_none() && off_loopback {
        for key in ["auth.jwt_secret", "auth.api_keys"] {
            if !values.iter().any(|(k, _)| k == key) {
                err_key = Some(key.to_string());
                break;
            }
        }
    }
    if err_key.is_none() && rng.chance(1, 3) {
        let n = rng.range(1, 1000) as u64;
        env.push(("SHARDCAST_DELIVERY__BATCH_MAX".to_string(), n.to_string()));
        readback.retain(|r| r.1 != "batch_max");
        readback.push(("delivery", "batch_max", n));
    }
    GenConfig {
        text,
        env,
        expect: match err_key {
            Some(k) => Err(k),
            None => Ok(readback),
        },
        secret_value,
    }
}

#[test]
fn config_generated_files() {
    let mut rng = Rng::new(0x636f_6e66);
    for case in 0..count(5_000) {
        let g = gen_config(&mut rng);
        let got = invariants::check_config(&g.text, &g.env);
        let ctx = || format!("case {case}:\n{}\nenv {:?}", g.text, g.env);
        match (&g.expect, &got) {
            (Ok(readback), Ok(c)) => {
                for &(s, k, n) in readback {
                    assert_eq!(config_uint(c, s, k), n, "{s}.{k}: {}", ctx());
                }
            }
            (Err(key), Err(e)) => {
                let msg = e.to_string();
                let named = msg.contains(&format!("'{key}'"));
                assert!(named, "error does not name '{key}': {msg}: {}", ctx());
                if let Some(s) = g.secret_value {
                    assert!(!msg.contains(s), "secret value echoed: {msg}");
                }
            }
            (want, got) => panic!("expected {want:?}, got {got:?}: {}", ctx()),
        }
    }
}

#[test]
fn config_random_and_mutated() {
    let mut rng = Rng::new(0x6d63_6f6e);
    for case in 0..count(5_000) {
        let mut input = if rng.chance(1, 10) {
            rng.blob()
        } else {
            let g = gen_config(&mut rng);
            let mut b = g.text.into_bytes();
            if rng.chance(1, 4) {
                b.push(0);
                for (k, v) in &g.env {
                    b.extend_from_slice(format!("{k}={v}\n").as_bytes());
                }
                let k = *rng.pick(&[
                    "DELIVERY__BATCH_MS",
                    "LISTEN",
                    "AUTH__API_KEYS",
                    "SHARDS",
                    "X__Y",
                    "LOG",
                    "AUTH__JWT_SECRET",
                ]);
                let v = *rng.pick(&["0", "1", "[\"a\"]", "", "\"q\"", "127.0.0.1:1", "x"]);
                b.extend_from_slice(format!("{k}={v}\n").as_bytes());
            }
            b
        };
        mutate(&mut rng, &mut input);
        run_case(
            "config_toml",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::config_toml(b),
        );
    }
    // Deep nesting is refused, not a stack overflow.
    for depth in [100, 1_000, 20_000] {
        let text = format!("x = {}1{}", "[".repeat(depth), "]".repeat(depth));
        invariants::config_toml(text.as_bytes());
        let text = format!("x = {}1{}", "{a=".repeat(depth), "}".repeat(depth));
        invariants::config_toml(text.as_bytes());
        let text = format!("[{}]", vec!["a"; depth].join("."));
        invariants::config_toml(text.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// REST bodies and query strings: entities, channels, services
// ---------------------------------------------------------------------------------------

/// Asserts a refusal's status and code, and that its message starts with `prefix`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(r: Result<T, Refused>, code: &str, prefix: &str, ctx: &str) {
    match r {
        Err((status, c, m)) => {
            assert_eq!((status, c), (400, code), "{m}: {ctx}");
            assert!(
                m.starts_with(prefix),
                "'{m}' does not start with '{prefix}': {ctx}"
            );
        }
        Ok(v) => panic!("accepted {v:?}, want {code} '{prefix}...': {ctx}"),
    }
}

/// `s` as a query-string value: unreserved bytes as they are (sometimes escaped anyway),
/// spaces as `+` or `%20`, everything else `%XX` in either case.
fn query_escape(rng: &mut Rng, s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if plain && !rng.chance(1, 10) {
            out.push(b as char);
        } else if b == b' ' && rng.chance(1, 2) {
            out.push('+');
        } else if rng.chance(1, 2) {
            let _ = write!(out, "%{b:02X}");
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

/// A query string of these pairs (already escaped), joined by `&`, with stray `&`s.
fn query_text(rng: &mut Rng, pairs: &[(String, String)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if !q.is_empty() || rng.chance(1, 10) {
            q.push('&');
        }
        if rng.chance(1, 20) {
            q.push('&');
        }
        let _ = write!(q, "{k}={v}");
    }
    q
}

/// Entity ids and bodies: `(id, patch, body, Ok(the object) | Err(message prefix))`.
struct GenEntityBody {
    id: &'static str,
    patch: bool,
    body: Vec<u8>,
    expect: Result<Value, String>,
}

/// `depth` nested arrays around `0`.
fn nested_arrays(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

fn gen_entity_body(rng: &mut Rng) -> GenEntityBody {
    let id = *rng.pick(invariants::ENTITY_IDS);
    let patch = rng.chance(1, 2);
    let what = if patch {
        "a PATCH body (a JSON merge patch)"
    } else {
        "a PUT body (the entity's whole state)"
    };
    let mut members: Vec<(String, String)> = (0..rng.range(0, 6))
        .map(|_| {
            let n = rng.range(1, 8);
            (utf8_string(rng, n), any_json(rng, 3).to_string())
        })
        .filter(|(k, _)| k != "id")
        .collect();
    if rng.chance(1, 2) {
        members.push(("id".into(), Value::String(id.into()).to_string()));
    }
    if rng.chance(1, 10) {
        // The deepest body accepted (the object is one level).
        members.push(("deep".into(), nested_arrays(MAX_BODY_DEPTH - 1)));
    }
    shuffle(rng, &mut members);
    let good = object_text(&members);
    let good_value: Value = serde_json::from_str(&good).expect("generated JSON");
    let (body, expect) = match rng.below(12) {
        0 => {
            // Not UTF-8: a stray byte inside a string or between tokens.
            let mut b = good.into_bytes();
            let at = rng.range(1, b.len() - 1);
            b.insert(at, *rng.pick(&[0xFF, 0xC3, 0x80, 0xED]));
            (b, Err(format!("{what} must be UTF-8 JSON")))
        }
        1 => {
            // Cut before its closing brace (on a char boundary): never JSON.
            let mut cut = rng.below(good.len());
            while !good.is_char_boundary(cut) {
                cut -= 1;
            }
            (
                good.as_bytes()[..cut].to_vec(),
                Err(format!("{what} is not JSON")),
            )
        }
        2 => (
            non_object_json(rng).to_string().into_bytes(),
            Err(format!("{what} must be a JSON object")),
        ),
        3 => {
            let depth = rng.range(MAX_BODY_DEPTH, MAX_BODY_DEPTH + 400);
            (
                format!("{{\"a\":{}}}", nested_arrays(depth)).into_bytes(),
                Err(format!("{what} nests deeper than {MAX_BODY_DEPTH} levels")),
            )
        }
        4 | 5 => {
            // An id other than the path's: another string, another type, null.
            let other = match rng.below(3) {
                0 => Value::String(format!("{id}x")),
                1 => non_string_json(rng),
                _ => Value::String(utf8_string(rng, 200)),
            };
            members.retain(|(k, _)| k != "id");
            members.push(("id".into(), other.to_string()));
            shuffle(rng, &mut members);
            (
                object_text(&members).into_bytes(),
                Err("the body's id (".to_string()),
            )
        }
        _ => {
            let mut b = good.into_bytes();
            if rng.chance(1, 4) {
                b.splice(0..0, *b" \n\t");
                b.extend_from_slice(b"\r\n ");
            }
            (b, Ok(good_value))
        }
    };
    GenEntityBody {
        id,
        patch,
        body,
        expect,
    }
}

#[test]
fn entity_bodies_generated() {
    let mut rng = Rng::new(0x656e_7462);
    for case in 0..count(10_000) {
        let g = gen_entity_body(&mut rng);
        let ctx = format!("case {case}, id {}, body b\"{}\"", g.id, show(&g.body));
        let got = parse_entity_body(&g.body, g.id, g.patch);
        match &g.expect {
            Ok(want) => {
                let got = got.unwrap_or_else(|e| panic!("refused {e:?}: {ctx}"));
                assert_eq!(&Value::Object(got), want, "{ctx}");
            }
            Err(prefix) => assert_refused(got, "BAD_MESSAGE", prefix, &ctx),
        }
        let mut input = vec![
            u8::from(g.patch)
                | (invariants::ENTITY_IDS
                    .iter()
                    .position(|i| *i == g.id)
                    .unwrap_or(0) as u8)
                    << 1,
        ];
        input.extend_from_slice(&g.body);
        run_case(
            "entity_body",
            &format!("generated case {case}"),
            &input,
            &|b: &[u8]| invariants::entity_body(b),
        );
    }
}

#[test]
fn entity_bodies_random_and_mutated() {
    let mut rng = Rng::new(0x6d65_6e74);
    for case in 0..count(15_000) {
        let mut input = vec![rng.byte()];
        if rng.chance(1, 10) {
            input.extend(rng.blob());
        } else {
            input.extend(gen_entity_body(&mut rng).body);
        }
        mutate(&mut rng, &mut input);
        run_case(
            "entity_body",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::entity_body(b),
        );
    }
}

/// The message of a refused PUT with a mismatched `id` quotes that id clipped: it used to
/// quote the whole value, so a body with a megabyte `id` got a megabyte error answer.
#[test]
fn entity_body_id_mismatch_message_is_clipped() {
    let body = format!(r#"{{"id":"{}","a":1}}"#, "x".repeat(100_000));
    let (status, code, m) = parse_entity_body(body.as_bytes(), "e1", false).unwrap_err();
    assert_eq!((status, code), (400, "BAD_MESSAGE"));
    assert!(m.starts_with("the body's id (\"xxx"), "{m}");
    assert!(m.ends_with("differs from the path's id 'e1'"), "{m}");
    assert!(m.len() < 200, "{} bytes", m.len());
    let body = format!(r#"{{"id":[{}]}}"#, vec!["1"; 50_000].join(","));
    let (_, _, m) = parse_entity_body(body.as_bytes(), "e1", true).unwrap_err();
    assert!(m.len() < 200, "{} bytes", m.len());
}

const VALID_FILTERS: &[&str] = &[
    "status == 'failed'",
    "n > 3 && !done",
    "a.b in [1, 'x', null, true]",
    "done",
    "(a || b) && c != -2.5e3",
    "status == \"é😀\" || n <= 0",
    "  tags.x   ==   'a'  ",
];

const ORDER_FIELDS: &[&str] = &["n", "status", "a.b", "createdAt", "x_1.y2", "in", "desc"];

/// A valid orderBy text and the keys it means.
fn gen_order_by(rng: &mut Rng) -> (String, Vec<(String, Direction)>) {
    let n = rng.range(1, 4);
    let mut text = String::new();
    let mut keys = Vec::new();
    let ws = |rng: &mut Rng| *rng.pick(&["", " ", "  ", "\t", " \n "]);
    for i in 0..n {
        if i > 0 {
            text.push_str(ws(rng));
            text.push(',');
        }
        text.push_str(ws(rng));
        let field = *rng.pick(ORDER_FIELDS);
        text.push_str(field);
        let dir = match rng.below(3) {
            0 => Direction::Asc,
            1 => {
                text.push_str(" asc");
                Direction::Asc
            }
            _ => {
                text.push_str(" desc");
                Direction::Desc
            }
        };
        keys.push((field.to_string(), dir));
    }
    text.push_str(ws(rng));
    (text, keys)
}

/// orderBy text: generated valid lists (checked against their keys), then mutated.
#[test]
fn order_by_generated_and_mutated() {
    let mut rng = Rng::new(0x6f72_6462);
    for case in 0..count(8_000) {
        let (text, keys) = gen_order_by(&mut rng);
        let o = OrderBy::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e} (case {case})"));
        let got: Vec<(String, Direction)> =
            o.keys.iter().map(|(f, d)| (f.to_string(), *d)).collect();
        assert_eq!(got, keys, "{text:?} (case {case})");
        let mut input = text.into_bytes();
        run_case(
            "filter",
            &format!("orderBy case {case}"),
            &input,
            &|b: &[u8]| invariants::filter(b),
        );
        mutate(&mut rng, &mut input);
        run_case(
            "filter",
            &format!("mutated orderBy case {case}"),
            &input,
            &|b: &[u8]| invariants::filter(b),
        );
    }
}

/// What an accepted list query must give: the filter and orderBy texts, the limit, and
/// whether a cursor is in force.
type ListExpect = (Option<String>, Option<String>, usize, bool);

/// A list query string and what it must give, or the refusal's code and message prefix.
struct GenEntityList {
    query: String,
    expect: Result<ListExpect, (&'static str, String)>,
}

fn gen_entity_list(rng: &mut Rng) -> GenEntityList {
    let filter = rng
        .chance(1, 2)
        .then(|| rng.pick(VALID_FILTERS).to_string());
    let order = rng.chance(1, 2).then(|| gen_order_by(rng).0);
    let limit = rng.chance(1, 2).then(|| rng.range(1, MAX_LIMIT));
    let canonical = format!(
        "{}|{}|{}",
        invariants::ENTITY_COLLECTION,
        filter
            .as_deref()
            .map(|f| Filter::parse(f).unwrap().to_string())
            .unwrap_or_default(),
        order
            .as_deref()
            .map(|o| OrderBy::parse(o).unwrap().to_string())
            .unwrap_or_default()
    );
    let order_value = order
        .as_deref()
        .map_or(OrderBy { keys: Vec::new() }, |o| OrderBy::parse(o).unwrap());
    let with_cursor = rng.chance(1, 2);
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(f) = &filter {
        pairs.push(("filter".into(), query_escape(rng, f)));
    }
    if let Some(o) = &order {
        pairs.push(("orderBy".into(), query_escape(rng, o)));
    }
    if let Some(l) = limit {
        pairs.push(("limit".into(), l.to_string()));
    }
    if with_cursor {
        let last = json!({"id": format!("e{}", rng.below(100)), "n": rng.below(10), "status": "x", "a": {"b": 1}});
        let c = invariants::cursors().encode(&canonical, &order_value, &last);
        pairs.push(("cursor".into(), c));
    }
    if rng.chance(1, 8) {
        // Blank filter and orderBy mean none.
        if filter.is_none() {
            pairs.push(("filter".into(), query_escape(rng, "  ")));
        } else if order.is_none() {
            pairs.push(("orderBy".into(), "+".into()));
        }
    }
    shuffle(rng, &mut pairs);
    let ok = Ok((
        filter.clone(),
        order.clone(),
        limit.unwrap_or(DEFAULT_LIMIT),
        with_cursor,
    ));
    let expect = match rng.below(10) {
        0 => {
            let long = "x".repeat(100);
            let k = rng
                .pick(&["sort", "Filter", "offset", "limit ", long.as_str()])
                .to_string();
            pairs.insert(
                rng.below(pairs.len() + 1),
                (query_escape(rng, &k), "1".into()),
            );
            let shown: String = k.chars().take(64).collect();
            Err(("BAD_MESSAGE", format!("unknown query parameter '{shown}'")))
        }
        1 => {
            let bad = *rng.pick(&["status ==", "a &&", "'x", "(a", "a == 1 b", "in [", "!"]);
            pairs.retain(|(k, _)| k != "filter");
            pairs.insert(0, ("filter".into(), query_escape(rng, bad)));
            Err(("INVALID_FILTER", "filter: ".into()))
        }
        2 => {
            let bad = *rng.pick(&["n sideways", "a,,b", ",", "a desc desc", "a.", "'x'"]);
            pairs.retain(|(k, _)| k != "orderBy");
            pairs.insert(0, ("orderBy".into(), query_escape(rng, bad)));
            Err(("INVALID_FILTER", "orderBy: ".into()))
        }
        3 => {
            // Numbers are plain decimal digits: a sign, a leading zero or a space is refused
            // (`+` alone decodes to a space).
            let bad = *rng.pick(&[
                "0",
                "1001",
                "-1",
                "1.5",
                "",
                "x",
                "99999999999999999999999",
                "1e3",
                "%2B5",
                "+5",
                "007",
                "05",
                "5%20",
            ]);
            pairs.retain(|(k, _)| k != "limit");
            pairs.push(("limit".into(), bad.into()));
            Err(("BAD_MESSAGE", "limit must be".into()))
        }
        5 => {
            // A repeated parameter is refused naming it, whatever its values.
            let k = *rng.pick(&["filter", "orderBy", "limit", "cursor"]);
            if !pairs.iter().any(|(n, _)| n == k) {
                pairs.push((k.into(), "1".into()));
            }
            let again = if rng.chance(1, 2) { "%27((" } else { "1" };
            pairs.insert(rng.below(pairs.len() + 1), (k.into(), again.into()));
            Err((
                "BAD_MESSAGE",
                format!("query parameter '{k}' is given more than once"),
            ))
        }
        4 => {
            let bad = match rng.below(4) {
                0 => "garbage".to_string(),
                // Issued for another query.
                1 => invariants::cursors().encode("other|x|", &order_value, &json!({"id": "e1"})),
                2 => {
                    // Issued by another node's key.
                    Cursors::new(b"another secret").encode(
                        &canonical,
                        &order_value,
                        &json!({"id": "e1"}),
                    )
                }
                _ => {
                    let mut c = invariants::cursors()
                        .encode(&canonical, &order_value, &json!({"id": "e1"}))
                        .into_bytes();
                    let i = rng.below(c.len());
                    c[i] = if c[i] == b'A' { b'B' } else { b'A' };
                    String::from_utf8(c).unwrap()
                }
            };
            pairs.retain(|(k, _)| k != "cursor");
            pairs.push(("cursor".into(), bad));
            Err(("BAD_MESSAGE", "cursor: ".into()))
        }
        _ => ok,
    };
    GenEntityList {
        query: query_text(rng, &pairs),
        expect,
    }
}

#[test]
fn entity_list_queries_generated() {
    let mut rng = Rng::new(0x6c69_7374);
    for case in 0..count(10_000) {
        let g = gen_entity_list(&mut rng);
        let ctx = format!("case {case}: {:?}", g.query);
        let got = parse_entity_list(
            invariants::ENTITY_COLLECTION,
            &g.query,
            invariants::cursors(),
        );
        match &g.expect {
            Ok((filter, order, limit, cursor)) => {
                let q = got.unwrap_or_else(|e| panic!("refused {e:?}: {ctx}"));
                assert_eq!(
                    q.filter,
                    filter.as_deref().map(|f| Filter::parse(f).unwrap()),
                    "{ctx}"
                );
                let keys = order.as_deref().map(|o| OrderBy::parse(o).unwrap().keys);
                assert_eq!(q.order.keys, keys.unwrap_or_default(), "{ctx}");
                assert_eq!((q.limit, q.after.is_some()), (*limit, *cursor), "{ctx}");
            }
            Err((code, prefix)) => assert_refused(got, code, prefix, &ctx),
        }
        run_case(
            "entity_list_query",
            &format!("generated case {case}"),
            g.query.as_bytes(),
            &|b: &[u8]| invariants::entity_list_query(b),
        );
    }
}

#[test]
fn entity_list_queries_random_and_mutated() {
    let mut rng = Rng::new(0x6d6c_6973);
    for case in 0..count(12_000) {
        let mut input = if rng.chance(1, 10) {
            rng.blob()
        } else {
            gen_entity_list(&mut rng).query.into_bytes()
        };
        mutate(&mut rng, &mut input);
        run_case(
            "entity_list_query",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::entity_list_query(b),
        );
    }
}

const CHANNEL_KINDS: &[&str] = &["organisation", "user", "custom"];

/// A channel create body: `(kind, body, Ok(the channel) | Err((code, word the message
/// names)))`.
struct GenChannel {
    kind: &'static str,
    body: Vec<u8>,
    expect: Result<NewChannel, (&'static str, &'static str)>,
}

/// An id or event type: 1 to 256 bytes, no control characters.
fn channel_id(rng: &mut Rng) -> String {
    if rng.chance(1, 20) {
        return "u".repeat(256);
    }
    let n = rng.range(1, 16);
    let mut s: String = utf8_string(rng, n)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    while s.len() > 256 {
        s.pop();
    }
    if s.is_empty() {
        s.push('u');
    }
    s
}

fn gen_channel(rng: &mut Rng) -> GenChannel {
    let kind = *rng.pick(CHANNEL_KINDS);
    let types: Vec<String> = if rng.chance(1, 20) {
        (0..64).map(|i| format!("e{i}")).collect()
    } else {
        (0..rng.range(0, 4)).map(|_| channel_id(rng)).collect()
    };
    let types_json = Value::from(types.clone()).to_string();
    let mut members: Vec<(String, String)> = Vec::new();
    let (ch, fields): (ChannelKind, &[&str]) = match kind {
        "organisation" => {
            let (o, u) = (channel_id(rng), channel_id(rng));
            members.push((
                "organisation_id".into(),
                Value::String(o.clone()).to_string(),
            ));
            members.push(("user_id".into(), Value::String(u.clone()).to_string()));
            members.push(("event_types".into(), types_json));
            (
                ChannelKind::OrganisationClaims {
                    organisation_id: o,
                    user_id: u,
                },
                &["organisation_id", "user_id", "event_types"],
            )
        }
        "user" => {
            let u = channel_id(rng);
            members.push(("user_id".into(), Value::String(u.clone()).to_string()));
            members.push(("event_types".into(), types_json));
            (
                ChannelKind::UserClaims { user_id: u },
                &["user_id", "event_types"],
            )
        }
        _ => {
            let path = valid_path(rng);
            members.push(("path".into(), Value::String(path.clone()).to_string()));
            if !types.is_empty() || rng.chance(1, 2) {
                members.push(("event_types".into(), types_json));
            } else if rng.chance(1, 2) {
                members.push(("event_types".into(), "null".into()));
            }
            let filter = match rng.below(4) {
                0 => None,
                1 => {
                    members.push((
                        "filter".into(),
                        rng.pick(&["null", "\"\"", "\"  \""]).to_string(),
                    ));
                    None
                }
                _ => {
                    let f = rng.pick(VALID_FILTERS).to_string();
                    members.push(("filter".into(), Value::String(f.clone()).to_string()));
                    Some(f)
                }
            };
            (
                ChannelKind::Custom { path, filter },
                &["path", "event_types", "filter"],
            )
        }
    };
    let good = NewChannel {
        kind: ch,
        event_types: types,
    };
    let set = |members: &mut Vec<(String, String)>, key: &str, v: String| {
        members.retain(|(k, _)| k != key);
        members.push((key.to_string(), v));
    };
    // At most one defect, in a field the parser checks after every other one is fine.
    let expect = match rng.below(10) {
        0 => {
            let k = rng.pick(&[
                "id",
                "path",
                "user_id",
                "Event_types",
                "filter",
                "organisation_id",
                "",
            ]);
            if fields.contains(k) {
                Ok(good)
            } else {
                members.push((k.to_string(), any_json(rng, 1).to_string()));
                Err(("BAD_MESSAGE", "unknown field"))
            }
        }
        1 => {
            return GenChannel {
                kind,
                body: if rng.chance(1, 2) {
                    non_object_json(rng).to_string().into_bytes()
                } else {
                    let t = object_text(&members);
                    t.as_bytes()[..rng.below(t.len())].to_vec()
                },
                expect: Err(("BAD_MESSAGE", "body must be a JSON object")),
            }
        }
        2 => {
            // event_types: not an array, a bad item, too many.
            let bad = match rng.below(5) {
                0 => non_array_non_null(rng).to_string(),
                1 => "[\"\"]".into(),
                2 => format!("[\"a\",{}]", non_string_json(rng)),
                3 => format!("[\"{}\"]", "e".repeat(257)),
                _ => Value::from((0..65).map(|i| format!("e{i}")).collect::<Vec<_>>()).to_string(),
            };
            set(&mut members, "event_types", bad);
            Err(("BAD_MESSAGE", "event_types"))
        }
        3 if kind != "custom" => {
            if rng.chance(1, 2) {
                members.retain(|(k, _)| k != "event_types");
            } else {
                set(&mut members, "event_types", "null".into());
            }
            Err(("BAD_MESSAGE", "event_types"))
        }
        4 | 5 if kind != "custom" => {
            let field = if kind == "user" || rng.chance(1, 2) {
                "user_id"
            } else {
                "organisation_id"
            };
            match rng.below(5) {
                0 => members.retain(|(k, _)| k != field),
                1 => set(&mut members, field, non_string_json(rng).to_string()),
                2 => set(&mut members, field, "\"\"".into()),
                3 => set(
                    &mut members,
                    field,
                    Value::String("u".repeat(257)).to_string(),
                ),
                _ => set(
                    &mut members,
                    field,
                    Value::String(format!(
                        "a{}b",
                        *rng.pick(&['\0', '\n', '\u{7f}', '\u{85}'])
                    ))
                    .to_string(),
                ),
            }
            Err(("BAD_MESSAGE", field))
        }
        4 => match rng.below(3) {
            0 => {
                members.retain(|(k, _)| k != "path");
                Err(("BAD_MESSAGE", "path is required"))
            }
            1 => {
                set(&mut members, "path", non_string_json(rng).to_string());
                Err(("BAD_MESSAGE", "path must be a string"))
            }
            _ => {
                set(
                    &mut members,
                    "path",
                    Value::String(invalid_path(rng)).to_string(),
                );
                Err(("INVALID_PATH", "path: "))
            }
        },
        5 => {
            if rng.chance(1, 2) {
                let bad = *rng.pick(&["status ==", "a &&", "'x", "(a", "a == 1 b"]);
                set(
                    &mut members,
                    "filter",
                    Value::String(bad.into()).to_string(),
                );
                Err(("INVALID_FILTER", "filter: "))
            } else {
                set(&mut members, "filter", non_array_non_null(rng).to_string());
                match members.last().map(|(_, v)| v.starts_with('"')) {
                    Some(true) => {
                        // A string after all: whether it parses is the filter's business.
                        let f: String = serde_json::from_str(&members.last().unwrap().1).unwrap();
                        if f.trim().is_empty() || Filter::parse(&f).is_ok() {
                            let mut n = good.clone();
                            if let ChannelKind::Custom { filter, .. } = &mut n.kind {
                                *filter = (!f.trim().is_empty()).then_some(f);
                            }
                            Ok(n)
                        } else {
                            Err(("INVALID_FILTER", "filter: "))
                        }
                    }
                    _ => Err(("BAD_MESSAGE", "filter must be a string or null")),
                }
            }
        }
        _ => Ok(good),
    };
    shuffle(rng, &mut members);
    GenChannel {
        kind,
        body: object_text(&members).into_bytes(),
        expect,
    }
}

#[test]
fn channel_bodies_generated() {
    let mut rng = Rng::new(0x6368_616e);
    for case in 0..count(12_000) {
        let g = gen_channel(&mut rng);
        let ctx = format!("case {case}, {} body b\"{}\"", g.kind, show(&g.body));
        let got = parse_channel_create(g.kind, &g.body);
        match (&g.expect, got) {
            (Ok(want), Ok(got)) => assert_eq!(&got, want, "{ctx}"),
            (Err((code, word)), Err((status, c, m))) => {
                assert_eq!((status, c), (400, *code), "{m}: {ctx}");
                assert!(m.contains(word), "'{m}' does not name '{word}': {ctx}");
            }
            (want, got) => panic!("expected {want:?}, got {got:?}: {ctx}"),
        }
        let mut input = vec![CHANNEL_KINDS.iter().position(|k| *k == g.kind).unwrap() as u8];
        input.extend_from_slice(&g.body);
        run_case(
            "channel_body",
            &format!("generated case {case}"),
            &input,
            &|b: &[u8]| invariants::channel_body(b),
        );
    }
}

/// A channel list query string and its expected answer (or the message's start).
fn gen_channel_list(rng: &mut Rng) -> (String, Result<ListQuery, String>) {
    let mut q = ListQuery {
        page: 1,
        limit: 20,
        status: None,
        user_id: None,
        organisation_id: None,
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if rng.chance(1, 2) {
        q.page = if rng.chance(1, 10) {
            1_000_000
        } else {
            rng.range(1, 50)
        };
        pairs.push(("page".into(), q.page.to_string()));
    }
    if rng.chance(1, 2) {
        q.limit = rng.range(1, 100);
        pairs.push(("limit".into(), q.limit.to_string()));
    }
    if rng.chance(1, 2) {
        let (s, v) = *rng.pick(&[
            (Status::Connected, "connected"),
            (Status::Disconnected, "disconnected"),
        ]);
        q.status = Some(s);
        pairs.push(("status".into(), v.into()));
    }
    for name in ["user_id", "organisation_id"] {
        if rng.chance(1, 2) {
            let v = channel_id(rng);
            pairs.push((name.into(), query_escape(rng, &v)));
            if name == "user_id" {
                q.user_id = Some(v);
            } else {
                q.organisation_id = Some(v);
            }
        }
    }
    shuffle(rng, &mut pairs);
    let expect = match rng.below(8) {
        0 => {
            let (k, bad) = *rng.pick(&[
                ("page", "0"),
                ("page", "1000001"),
                ("page", "-1"),
                ("page", "x"),
                ("page", "99999999999999999999999"),
                // Plain decimal digits only: no sign, no leading zero.
                ("page", "%2B5"),
                ("page", "007"),
                ("limit", "05"),
                ("limit", "+5"),
                ("limit", "101"),
                ("limit", ""),
                ("limit", "0"),
                ("status", "gone"),
                ("status", ""),
                ("user_id", ""),
                ("organisation_id", ""),
            ]);
            pairs.retain(|(n, _)| n != k);
            pairs.insert(rng.below(pairs.len() + 1), (k.into(), bad.into()));
            Err(format!("{k} must"))
        }
        1 => {
            let k = *rng.pick(&["Page", "sort", "user", "page ", "id"]);
            pairs.insert(
                rng.below(pairs.len() + 1),
                (query_escape(rng, k), "1".into()),
            );
            Err(format!("unknown query parameter '{k}'"))
        }
        2 if !pairs.is_empty() => {
            let (k, v) = pairs[rng.below(pairs.len())].clone();
            pairs.push((k.clone(), v));
            Err(format!("query parameter '{k}' is given more than once"))
        }
        _ => Ok(q),
    };
    (query_text(rng, &pairs), expect)
}

#[test]
fn channel_list_queries_generated() {
    let mut rng = Rng::new(0x636c_7374);
    for case in 0..count(8_000) {
        let (query, expect) = gen_channel_list(&mut rng);
        let ctx = format!("case {case}: {query:?}");
        match (expect, parse_channel_list(&query)) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{ctx}"),
            (Err(prefix), r) => assert_refused(r, "BAD_MESSAGE", &prefix, &ctx),
            (want, got) => panic!("expected {want:?}, got {got:?}: {ctx}"),
        }
        let mut input = vec![3u8];
        input.extend_from_slice(query.as_bytes());
        run_case(
            "channel_body",
            &format!("list case {case}"),
            &input,
            &|b: &[u8]| invariants::channel_body(b),
        );
    }
}

#[test]
fn channel_bodies_and_queries_random_and_mutated() {
    let mut rng = Rng::new(0x6d63_6861);
    for case in 0..count(20_000) {
        let mut input = vec![rng.byte()];
        match rng.below(10) {
            0 => input.extend(rng.blob()),
            1 | 2 => {
                input[0] = 3;
                input.extend(gen_channel_list(&mut rng).0.into_bytes());
            }
            _ => {
                let g = gen_channel(&mut rng);
                input[0] = CHANNEL_KINDS.iter().position(|k| *k == g.kind).unwrap() as u8;
                input.extend(g.body);
            }
        }
        mutate(&mut rng, &mut input);
        run_case(
            "channel_body",
            &format!("case {case}"),
            &input,
            &|b: &[u8]| invariants::channel_body(b),
        );
    }
}

/// A dead-letter page query and its expected answer (or the message's start).
fn gen_dead_letters_query(rng: &mut Rng) -> (String, Result<DeadLettersQuery, String>) {
    let mut q = DeadLettersQuery {
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if rng.chance(1, 2) {
        q.limit = if rng.chance(1, 10) {
            MAX_LIMIT
        } else {
            rng.range(1, MAX_LIMIT)
        };
        pairs.push(("limit".into(), q.limit.to_string()));
    }
    if rng.chance(1, 2) {
        let c = if rng.chance(1, 10) {
            u64::MAX
        } else {
            rng.next() % 100_000
        };
        q.cursor = Some(c);
        pairs.push(("cursor".into(), c.to_string()));
    }
    shuffle(rng, &mut pairs);
    let expect = match rng.below(7) {
        0 => {
            let bad = *rng.pick(&[
                "0",
                "1001",
                "-1",
                "x",
                "",
                "1.0",
                "99999999999999999999999",
                "%2B5",
                "007",
            ]);
            pairs.retain(|(k, _)| k != "limit");
            pairs.insert(rng.below(pairs.len() + 1), ("limit".into(), bad.into()));
            Err("limit must be a whole number from 1 to 1000".to_string())
        }
        1 => {
            let bad = *rng.pick(&[
                "-1",
                "x",
                "",
                "18446744073709551616",
                "1e3",
                "0x10",
                "%2B5",
                "00",
                "01",
            ]);
            pairs.retain(|(k, _)| k != "cursor");
            pairs.insert(rng.below(pairs.len() + 1), ("cursor".into(), bad.into()));
            Err("cursor must be a whole number from 0 to".to_string())
        }
        3 if !pairs.is_empty() => {
            // A repeated parameter is refused naming it, whatever its values.
            let (k, v) = pairs[rng.below(pairs.len())].clone();
            pairs.insert(rng.below(pairs.len() + 1), (k.clone(), v));
            Err(format!("query parameter '{k}' is given more than once"))
        }
        2 => {
            let long = "k".repeat(rng.range(65, 5000));
            let k = rng
                .pick(&["Limit", "page", "offset", long.as_str()])
                .to_string();
            pairs.insert(rng.below(pairs.len() + 1), (k.clone(), "1".into()));
            let shown: String = k.chars().take(64).collect();
            Err(format!("unknown query parameter '{shown}'"))
        }
        _ => Ok(q),
    };
    (query_text(rng, &pairs), expect)
}

#[test]
fn dead_letter_queries_generated_random_and_mutated() {
    let mut rng = Rng::new(0x6465_6164);
    for case in 0..count(8_000) {
        let (query, expect) = gen_dead_letters_query(&mut rng);
        let ctx = format!("case {case}: {}", show(query.as_bytes()));
        match (expect, parse_dead_letters_query(&query)) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{ctx}"),
            (Err(prefix), r) => assert_refused(r, "BAD_MESSAGE", &prefix, &ctx),
            (want, got) => panic!("expected {want:?}, got {got:?}: {ctx}"),
        }
        run_case(
            "services_query",
            &format!("generated case {case}"),
            query.as_bytes(),
            &|b: &[u8]| invariants::services_query(b),
        );
        let mut input = if rng.chance(1, 10) {
            rng.blob()
        } else {
            query.into_bytes()
        };
        mutate(&mut rng, &mut input);
        run_case(
            "services_query",
            &format!("mutated case {case}"),
            &input,
            &|b: &[u8]| invariants::services_query(b),
        );
    }
}

/// A body of 128 levels is valid JSON that serde_json will not parse into a `Value` (its
/// recursion limit refuses the 128th level): it used to pass the depth check (128 allowed)
/// and be refused as "is not JSON: recursion limit exceeded". Now the depth check says it
/// (the limit is 120 since, so that every message carrying the state parses by default).
#[test]
fn entity_body_depth_limit_is_the_parsers() {
    let at = |depth: usize| format!("{{\"a\":{}}}", nested_arrays(depth - 1));
    let body = at(MAX_BODY_DEPTH);
    let m = parse_entity_body(body.as_bytes(), "e1", false).expect("deepest body refused");
    assert_eq!(invariants::json_depth(&Value::Object(m)), MAX_BODY_DEPTH);
    for depth in [MAX_BODY_DEPTH + 1, MAX_BODY_DEPTH + 2, 10_000] {
        let (status, code, m) = parse_entity_body(at(depth).as_bytes(), "e1", true).unwrap_err();
        assert_eq!((status, code), (400, "BAD_MESSAGE"));
        assert_eq!(
            m,
            format!("a PATCH body (a JSON merge patch) nests deeper than {MAX_BODY_DEPTH} levels")
        );
    }
}

/// An unknown dead-letter query parameter is named clipped to 64 bytes: it used to be
/// quoted whole, so the error answer grew with the query string.
#[test]
fn dead_letters_unknown_parameter_is_clipped() {
    let query = format!("limit=5&{}=1", "k".repeat(10_000));
    let (status, code, m) = parse_dead_letters_query(&query).unwrap_err();
    assert_eq!((status, code), (400, "BAD_MESSAGE"));
    assert_eq!(
        m,
        format!(
            "unknown query parameter '{}' (this list takes limit, cursor)",
            "k".repeat(64)
        )
    );
}
