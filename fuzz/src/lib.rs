//! Invariants of shardcast's parsers for bytes that come from outside, one entry point per
//! fuzz target.
//!
//! Each `pub fn` takes arbitrary bytes, drives one parser the way the server does, and
//! panics only if the parser panics or breaks a property that must hold for every input.
//! The fuzz targets in `fuzz_targets/` call these functions; `tests/robustness.rs` includes
//! this file as a module (`#[path]`) and calls them on ~300k generated inputs on stable, so
//! the invariants are compiled and exercised in CI even though cargo-fuzz needs nightly.

use std::str;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use shardcast::api::{
    parse_channel_create, parse_channel_list, parse_dead_letters_query, parse_entity_body,
    parse_entity_list, parse_publish, DeadLettersQuery, EntityListQuery, Refused, MAX_BODY_DEPTH,
};
use shardcast::auth::jwt::{self, TokenError};
use shardcast::channels::{ChannelKind, ListQuery, NewChannel, Status};
use shardcast::config::{Config, ConfigError};
use shardcast::entities::{merge_patch, Cursors, DEFAULT_LIMIT, MAX_LIMIT};
use shardcast::filter::{Filter, FilterError, IndexKey, OrderBy};
use shardcast::http::{self, Parsed};
use shardcast::protocol::ws::{self, close, OpCode, Utf8Check, WsError};
use shardcast::protocol::{self, validate_path, Command, ErrorCode};

/// Longest frame header a client can send: 2 bytes, 8 length bytes, 4 mask bytes.
pub const MAX_CLIENT_HEADER: usize = 14;

/// The secret the JWT checks sign with.
pub const JWT_SECRET: &[u8] = b"fuzz-secret";

/// A realistic "now" for JWT checks (2026-03-26T08:14:22Z).
pub const JWT_NOW: u64 = 1_774_512_862;

/// Bodies larger than this are not buffered by the frame loop (the server's limit is a
/// config value; this only bounds the harness).
const MAX_BUFFERED_PAYLOAD: u64 = 1 << 24;

// ---------------------------------------------------------------------------------------
// WebSocket frames
// ---------------------------------------------------------------------------------------

/// Whether `data` is a prefix of some valid UTF-8 string.
pub fn is_utf8_prefix(data: &[u8]) -> bool {
    match str::from_utf8(data) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// The close codes RFC 6455 §7.4 lets a peer send that the server must accept; the ones it
/// must refuse are in [`close_code_must_be_refused`]. Codes in neither set (1012-1014,
/// 1016-2999, registered later or reserved for IANA) are left to the implementation.
pub fn close_code_must_be_accepted(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Codes a peer must never send: below 1000, the reserved 1004-1006 and 1015, 5000 and up.
pub fn close_code_must_be_refused(code: u16) -> bool {
    code < 1000 || matches!(code, 1004..=1006 | 1015) || code >= 5000
}

/// Checks one parsed header against the bytes it was parsed from.
pub fn check_header(buf: &[u8], h: &ws::FrameHeader) {
    assert!(
        h.header_len <= buf.len(),
        "header_len {} > input length {}",
        h.header_len,
        buf.len()
    );
    assert!(
        matches!(h.header_len, 6 | 8 | 14),
        "header_len {}",
        h.header_len
    );
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(b0 & 0x70, 0, "accepted a frame with RSV bits set");
    assert_ne!(b1 & 0x80, 0, "accepted an unmasked client frame");
    assert_eq!(h.fin, b0 & 0x80 != 0, "fin bit");
    let want_len = match b1 & 0x7F {
        126 => {
            assert_eq!(h.header_len, 8);
            u16::from_be_bytes([buf[2], buf[3]]) as u64
        }
        127 => {
            assert_eq!(h.header_len, 14);
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
        n => {
            assert_eq!(h.header_len, 6);
            n as u64
        }
    };
    assert_eq!(h.payload_len, want_len, "payload length");
    assert!(h.payload_len < 1 << 63, "length with the top bit set");
    assert_eq!(
        h.mask[..],
        buf[h.header_len - 4..h.header_len],
        "mask bytes"
    );
    let want_op = match b0 & 0x0F {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        other => panic!("accepted unknown opcode {other:#x}"),
    };
    assert_eq!(h.opcode, want_op);
    if h.opcode.is_control() {
        assert!(h.fin, "accepted a fragmented control frame");
        assert!(
            h.payload_len <= 125,
            "accepted a control frame over 125 bytes"
        );
    }
}

/// `parse_header` answers consistently as bytes arrive: every prefix of the header is
/// "need more" (or the same error), every extension gives the same answer.
pub fn check_header_streaming(buf: &[u8]) {
    let full = ws::parse_header(buf);
    match &full {
        Ok(None) => assert!(
            buf.len() < MAX_CLIENT_HEADER,
            "need-more with {} bytes",
            buf.len()
        ),
        Ok(Some(h)) => check_header(buf, h),
        Err(_) => {}
    }
    let mut errored = false;
    for n in 0..=buf.len().min(MAX_CLIENT_HEADER) {
        let part = ws::parse_header(&buf[..n]);
        match (&full, &part) {
            (_, Ok(None)) => {
                assert!(!errored, "need-more after an error on a shorter prefix");
                if let Ok(Some(h)) = &full {
                    assert!(
                        n < h.header_len,
                        "need-more with the whole header ({n} bytes)"
                    );
                }
            }
            (Ok(Some(h)), Ok(Some(p))) => {
                assert!(n >= h.header_len);
                assert_eq!(h, p, "header changed as more bytes arrived");
            }
            (Err(e), Err(p)) => {
                assert_eq!(e, p, "error changed as more bytes arrived");
                errored = true;
            }
            (full, part) => {
                panic!("prefix of {n} bytes parsed as {part:?}, the whole input as {full:?}")
            }
        }
    }
}

/// `unmask` is XOR with the mask repeated from the payload's first byte.
pub fn check_unmask(masked: &[u8], unmasked: &[u8], mask: [u8; 4]) {
    assert_eq!(masked.len(), unmasked.len());
    for (i, (m, u)) in masked.iter().zip(unmasked).enumerate() {
        assert_eq!(*u, m ^ mask[i % 4], "unmask differs from XOR at byte {i}");
    }
}

/// `parse_close_payload` against RFC 6455 §5.5.1 and §7.4.
pub fn check_close_payload(p: &[u8]) {
    let r = ws::parse_close_payload(p);
    if p.is_empty() {
        assert_eq!(r, Ok(close::NORMAL), "empty close payload");
        return;
    }
    if p.len() == 1 {
        assert_eq!(r, Err(WsError::BadClosePayload), "one-byte close payload");
        return;
    }
    let code = u16::from_be_bytes([p[0], p[1]]);
    let reason_ok = str::from_utf8(&p[2..]).is_ok();
    match r {
        Ok(c) => {
            assert_eq!(c, code, "close code not echoed");
            assert!(
                !close_code_must_be_refused(code),
                "accepted close code {code}"
            );
            assert!(reason_ok, "accepted a close reason that is not UTF-8");
        }
        Err(WsError::BadClosePayload) => {
            assert!(
                !close_code_must_be_accepted(code),
                "refused close code {code}"
            )
        }
        Err(WsError::InvalidUtf8) => assert!(!reason_ok, "refused a UTF-8 close reason"),
        Err(e) => panic!("close payload error {e:?}"),
    }
}

/// A text message being reassembled from fragments, as the server keeps it.
struct Fragments {
    text: bool,
    data: Vec<u8>,
    utf8: Utf8Check,
}

/// `Utf8Check` answers exactly "is the message so far a prefix of valid UTF-8" while
/// feeding, and "is it valid UTF-8" when finishing.
pub fn check_utf8_step(utf8: &mut Utf8Check, data: &[u8], fin: bool) -> bool {
    if fin {
        let r = utf8.finish(data);
        assert_eq!(
            r.is_ok(),
            str::from_utf8(data).is_ok(),
            "Utf8Check::finish disagrees with from_utf8 on {data:?}"
        );
        r.is_ok()
    } else {
        let r = utf8.feed(data);
        assert_eq!(
            r.is_ok(),
            is_utf8_prefix(data),
            "Utf8Check::feed disagrees with from_utf8 on {data:?}"
        );
        r.is_ok()
    }
}

/// Why [`ws_frames`] stopped.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum FrameEnd {
    /// The buffer ends inside a header or payload: the server waits for more bytes.
    #[default]
    NeedMore,
    /// A header the server refuses.
    Header(WsError),
    /// A close frame, and what its payload parsed to.
    Close(Result<u16, WsError>),
    /// A frame that breaks the message rules (continuation without a message, data frame
    /// inside a fragmented one, text that is not UTF-8).
    Refused(WsError),
    /// A payload larger than the harness buffers.
    TooLarge,
}

/// What [`ws_frames`] did with a buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FrameRun {
    /// Whole data messages in order: (is text, payload).
    pub messages: Vec<(bool, Vec<u8>)>,
    /// Ping and pong frames in order, unmasked.
    pub controls: Vec<(OpCode, Vec<u8>)>,
    pub end: FrameEnd,
}

/// The server's read loop over one buffer (`shard::ws_conn::ws_frames` and `ws_frame`):
/// parse a header, wait for the whole payload, unmask it in place, then handle the frame
/// (close payloads, UTF-8 of text messages across fragments). Stops where the server would
/// close or wait for more bytes, and says what it saw.
pub fn ws_frames(data: &[u8]) -> FrameRun {
    check_header_streaming(data);
    let mut run = FrameRun::default();
    let mut buf = data.to_vec();
    let mut pos = 0;
    let mut frag: Option<Fragments> = None;
    loop {
        let rest = &buf[pos..];
        let h = match ws::parse_header(rest) {
            Ok(Some(h)) => h,
            Ok(None) => {
                assert!(
                    rest.len() < MAX_CLIENT_HEADER,
                    "need-more with {} bytes",
                    rest.len()
                );
                return run;
            }
            Err(e) => {
                assert_eq!(
                    e.close_code(),
                    close::PROTOCOL_ERROR,
                    "header error {e:?} closes with {}",
                    e.close_code()
                );
                run.end = FrameEnd::Header(e);
                return run;
            }
        };
        check_header(rest, &h);
        let available = (rest.len() - h.header_len) as u64;
        if h.payload_len > MAX_BUFFERED_PAYLOAD {
            run.end = FrameEnd::TooLarge;
            return run;
        }
        if h.payload_len > available {
            return run;
        }
        let start = pos + h.header_len;
        let end = start + h.payload_len as usize;
        let masked = buf[start..end].to_vec();
        let payload = &mut buf[start..end];
        ws::unmask(payload, h.mask);
        check_unmask(&masked, payload, h.mask);
        let mut again = payload.to_vec();
        ws::unmask(&mut again, h.mask);
        assert_eq!(again, masked, "unmask is not an involution");
        let payload = &buf[start..end];
        pos = end;
        match h.opcode {
            OpCode::Close => {
                check_close_payload(payload);
                run.end = FrameEnd::Close(ws::parse_close_payload(payload));
                return run;
            }
            OpCode::Ping | OpCode::Pong => run.controls.push((h.opcode, payload.to_vec())),
            OpCode::Continuation => {
                let Some(f) = frag.as_mut() else {
                    run.end = FrameEnd::Refused(WsError::UnexpectedContinuation);
                    return run;
                };
                f.data.extend_from_slice(payload);
                if f.text && !check_utf8_step(&mut f.utf8, &f.data, h.fin) {
                    run.end = FrameEnd::Refused(WsError::InvalidUtf8);
                    return run;
                }
                if h.fin {
                    if let Some(f) = frag.take() {
                        if f.text {
                            client_command(&f.data);
                        }
                        run.messages.push((f.text, f.data));
                    }
                }
            }
            OpCode::Text | OpCode::Binary => {
                if frag.is_some() {
                    run.end = FrameEnd::Refused(WsError::ExpectedContinuation);
                    return run;
                }
                let text = h.opcode == OpCode::Text;
                let mut f = Fragments {
                    text,
                    data: payload.to_vec(),
                    utf8: Utf8Check::default(),
                };
                if text && !check_utf8_step(&mut f.utf8, &f.data, h.fin) {
                    run.end = FrameEnd::Refused(WsError::InvalidUtf8);
                    return run;
                }
                if h.fin {
                    if text {
                        // A whole text message is what the server hands to parse_command.
                        client_command(&f.data);
                    }
                    run.messages.push((text, f.data));
                } else {
                    frag = Some(f);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP requests
// ---------------------------------------------------------------------------------------

/// Checks one `http::parse` answer for `buf`.
pub fn check_http_answer(buf: &[u8], max_body: usize, p: &Parsed) {
    match p {
        Parsed::NeedHead => assert!(
            buf.len() <= http::MAX_HEAD,
            "need-head with {} bytes buffered (limit {})",
            buf.len(),
            http::MAX_HEAD
        ),
        Parsed::NeedBody { .. } => {}
        Parsed::Complete(r, used) => {
            let used = *used;
            assert!(used <= buf.len(), "consumed {used} of {} bytes", buf.len());
            assert!(r.body.len() <= max_body, "body over max_body");
            assert!(used >= r.body.len());
            let head_len = used - r.body.len();
            assert_eq!(&buf[head_len..used], &r.body[..], "body bytes");
            assert!(
                head_len <= http::MAX_HEAD,
                "accepted a request head of {head_len} bytes; MAX_HEAD is {}",
                http::MAX_HEAD
            );
            assert!(buf[..head_len].ends_with(b"\n"), "head does not end a line");
            assert!(!r.method.is_empty(), "empty method");
            assert!(!r.path.contains('?'), "path keeps the query");
            if let Some(cl) = r.header("content-length") {
                assert_eq!(cl.trim().parse::<usize>().ok(), Some(r.body.len()));
            } else {
                assert!(r.body.is_empty());
            }
            assert!(r.header("transfer-encoding").is_none());
            // Header and query helpers on whatever came in.
            let _ = r.header_has("connection", "close");
            let _ = r.query_param("token");
            for (k, v) in http::query_pairs(&r.query) {
                let _ = (k.len(), v.len());
            }
        }
        Parsed::Error(status, message) => {
            assert!(
                matches!(status, 400 | 411 | 413 | 431),
                "unexpected status {status}"
            );
            assert!(!message.is_empty());
        }
    }
}

/// `http::parse` on `buf` and on prefixes of it: sound answers, and the same answer
/// whatever way the bytes are split across reads (up to the request's end).
pub fn check_http(buf: &[u8], max_body: usize, cuts: &[usize]) {
    let full = http::parse(buf, max_body);
    check_http_answer(buf, max_body, &full);
    if let Parsed::Complete(_, used) = &full {
        // Exactly the request's bytes parse to the same request; so do they plus more.
        match http::parse(&buf[..*used], max_body) {
            Parsed::Complete(_, n) => assert_eq!(n, *used),
            other => panic!("the request's own {used} bytes parse as {other:?}"),
        }
    }
    for &cut in cuts {
        let cut = cut.min(buf.len());
        let part = http::parse(&buf[..cut], max_body);
        check_http_answer(&buf[..cut], max_body, &part);
        match (&full, &part) {
            (Parsed::Complete(_, n), Parsed::Complete(_, m)) => {
                assert!(
                    cut >= *n && m == n,
                    "prefix of {cut} bytes consumed {m}, whole {n}"
                )
            }
            (Parsed::Complete(_, n), Parsed::NeedHead | Parsed::NeedBody { .. }) => {
                assert!(cut < *n)
            }
            (Parsed::NeedHead, Parsed::NeedHead) => {}
            (Parsed::NeedBody { .. }, Parsed::NeedHead | Parsed::NeedBody { .. }) => {}
            (Parsed::Error(..), _) => {}
            (full, part) => {
                panic!("prefix of {cut} bytes parsed as {part:?}, the whole input as {full:?}")
            }
        }
    }
}

/// The `http_request` fuzz target: the whole input as the connection's buffer, with two
/// body limits, and a few ways of splitting it.
pub fn http_request(data: &[u8]) {
    let n = data.len();
    let cuts = [0, 1, n / 3, n / 2, n.saturating_sub(1)];
    check_http(data, 64, &cuts);
    check_http(data, 1 << 20, &cuts);
}

// ---------------------------------------------------------------------------------------
// Client commands and paths
// ---------------------------------------------------------------------------------------

/// A reference model of PROTOCOL.md §4's path rule.
pub fn path_is_valid_model(path: &str) -> bool {
    if path.is_empty() || path.len() > protocol::MAX_PATH_BYTES {
        return false;
    }
    let body = path.strip_prefix('$').unwrap_or(path);
    let segs: Vec<&str> = body.split('/').collect();
    segs.len() <= protocol::MAX_PATH_SEGMENTS
        && segs.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
        })
}

/// `validate_path` agrees with the model.
pub fn check_path(path: &str) {
    let r = validate_path(path);
    assert_eq!(
        r.is_ok(),
        path_is_valid_model(path),
        "validate_path({path:?}) = {r:?}"
    );
    if let Err(m) = r {
        assert!(!m.is_empty());
    }
}

/// The `client_command` fuzz target: one text message through `parse_command`.
pub fn client_command(data: &[u8]) {
    let r = protocol::parse_command(data);
    let rid_ok = |v: &Option<Value>| {
        assert!(
            matches!(v, None | Some(Value::String(_) | Value::Number(_))),
            "requestId {v:?}"
        )
    };
    match r {
        Ok(env) => {
            rid_ok(&env.request_id);
            let v: Value =
                serde_json::from_slice(data).expect("accepted a message that is not JSON");
            let Value::Object(obj) = v else {
                panic!("accepted a message that is not an object")
            };
            assert!(obj.get("type").is_some_and(Value::is_string));
            match env.command {
                Command::Auth { token, .. } => assert!(!token.is_empty()),
                Command::SubscribeEvents { subscriptions } => {
                    for s in subscriptions {
                        assert!(!s.id.is_empty() && s.id.len() <= 256, "id {:?}", s.id);
                        match &s.problem {
                            None => {
                                assert!(validate_path(&s.path).is_ok(), "path {:?}", s.path);
                                assert!(s.events.iter().all(|e| !e.is_empty()));
                            }
                            Some(p) => {
                                assert!(matches!(
                                    p.code,
                                    ErrorCode::InvalidPath
                                        | ErrorCode::BadMessage
                                        | ErrorCode::InvalidFilter
                                ));
                                assert!(!p.message.is_empty());
                            }
                        }
                    }
                }
                Command::Ping
                | Command::Pong
                | Command::UnsubscribeEvents { .. }
                | Command::Publish { .. }
                | Command::DestroyLiveQuery { .. } => {}
                Command::TaskComplete { ids } | Command::TaskFailed { ids, .. } => {
                    assert!(ids.len() <= shardcast::protocol::MAX_TASK_IDS);
                    assert!(ids.iter().all(|i| !i.is_empty() && i.len() <= 1024));
                }
                Command::Lock {
                    name,
                    ttl_ms,
                    wait_ms,
                } => {
                    assert!(!name.is_empty() && name.len() <= 256);
                    assert!((1..=shardcast::protocol::MAX_LOCK_MS).contains(&ttl_ms));
                    assert!(wait_ms <= shardcast::protocol::MAX_LOCK_MS);
                }
                Command::Unlock { name } => assert!(!name.is_empty() && name.len() <= 256),
                Command::Log { level, .. } => {
                    assert!(shardcast::protocol::LOG_LEVELS.contains(&level))
                }
                Command::CreateLiveQuery(q) => {
                    assert!(!q.id.is_empty() && !q.edge.is_empty());
                    assert!(q.limit.is_none_or(|l| l >= 1));
                }
            }
        }
        Err(e) => {
            rid_ok(&e.request_id);
            assert!(matches!(
                e.refusal.code,
                ErrorCode::BadMessage
                    | ErrorCode::UnknownType
                    | ErrorCode::InvalidFilter
                    | ErrorCode::LimitExceeded
            ));
            assert!(!e.refusal.message.is_empty());
            if e.refusal.code == ErrorCode::UnknownType {
                // The echoed type is cut to 64 bytes.
                assert!(e.refusal.message.len() <= 64 + 32, "{}", e.refusal.message);
            }
            // The error message goes back to the client as JSON.
            let out = protocol::error_message(e.refusal.code, &e.refusal.message, None);
            serde_json::from_slice::<Value>(&out).expect("error message is not JSON");
        }
    }
    if let Ok(text) = str::from_utf8(data) {
        if text.len() <= protocol::MAX_PATH_BYTES + 8 {
            check_path(text);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Publish bodies
// ---------------------------------------------------------------------------------------

type RawObject = std::collections::BTreeMap<String, Box<RawValue>>;

/// An accepted body, read independently as JSON objects: its publications as
/// `(path, eventType, data text)`. Panics if it is not what the contract allows.
fn accepted_publications(body: &[u8]) -> Vec<(String, String, String)> {
    let top: RawObject =
        serde_json::from_slice(body).expect("accepted a body that is not a JSON object");
    let objects: Vec<RawObject> = match top.get("events") {
        Some(events) => {
            // Null members count as absent, as elsewhere in the protocol.
            assert!(
                top.iter().all(|(k, v)| k == "events" || v.get() == "null"),
                "accepted a batch with other members"
            );
            let items: Vec<Box<RawValue>> =
                serde_json::from_str(events.get()).expect("accepted 'events' that is not an array");
            items
                .iter()
                .map(|raw| {
                    serde_json::from_str(raw.get()).unwrap_or_else(|_| {
                        panic!("accepted an item that is not an object: {}", raw.get())
                    })
                })
                .collect()
        }
        None => vec![top],
    };
    objects
        .into_iter()
        .map(|o| {
            for k in o.keys() {
                assert!(
                    matches!(k.as_str(), "path" | "eventType" | "data"),
                    "accepted unknown member {k:?}"
                );
            }
            let string = |k: &str| -> String {
                let raw = o
                    .get(k)
                    .unwrap_or_else(|| panic!("accepted an item without {k}"));
                serde_json::from_str(raw.get())
                    .unwrap_or_else(|_| panic!("accepted a non-string {k}"))
            };
            let data = o
                .get("data")
                .map_or("null".to_string(), |d| d.get().to_string());
            (string("path"), string("eventType"), data)
        })
        .collect()
}

/// Checks one `parse_publish` answer.
pub fn check_publish(body: &[u8], max: usize) -> Result<usize, Option<usize>> {
    match parse_publish(body, max) {
        Ok(items) => {
            assert!(
                (1..=max).contains(&items.len()),
                "{} items with max {max}",
                items.len()
            );
            let got: Vec<(String, String, String)> = items
                .iter()
                .map(|it| {
                    (
                        it.path.clone(),
                        it.event_type.clone(),
                        it.data.get().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                accepted_publications(body),
                "items differ from the body"
            );
            for it in &items {
                assert!(validate_path(&it.path).is_ok(), "path {:?}", it.path);
                assert!((1..=256).contains(&it.event_type.len()), "eventType length");
                // The data is copied verbatim into every event: it must be JSON, and the
                // event built around it must be a JSON object with the same fields.
                serde_json::from_str::<serde::de::IgnoredAny>(it.data.get())
                    .expect("data is not JSON");
                let tail = protocol::encode_event_tail(
                    &it.event_type,
                    &it.path,
                    it.data.get(),
                    JWT_NOW * 1000,
                    7,
                );
                let mut msg = Vec::new();
                protocol::event_prefix(&mut msg, [&b"\"s\""[..]].into_iter());
                msg.extend_from_slice(&tail);
                // Parsed with raw members: a number like 4e500 is valid JSON that a
                // strict f64 parser refuses, and it is the publisher's to send.
                let ev: std::collections::BTreeMap<String, Box<RawValue>> =
                    serde_json::from_slice(&msg).expect("event is not a JSON object");
                let field = |k: &str| {
                    ev.get(k)
                        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
                };
                assert_eq!(field("path").as_deref(), Some(&it.path[..]));
                assert_eq!(field("eventType").as_deref(), Some(&it.event_type[..]));
                assert_eq!(ev.get("data").map(|d| d.get()), Some(it.data.get()));
            }
            Ok(items.len())
        }
        Err(e) => {
            assert!(
                matches!(e.code, "BAD_MESSAGE" | "LIMIT_EXCEEDED" | "INVALID_PATH"),
                "code {}",
                e.code
            );
            assert!(!e.message.is_empty());
            if let Some(i) = e.index {
                assert!(i < max, "index {i} with max {max}");
                assert_ne!(e.code, "LIMIT_EXCEEDED");
            }
            Err(e.index)
        }
    }
}

/// The `publish_body` fuzz target: `parse_publish` with a few batch limits; an accepted
/// batch of n items is refused with `LIMIT_EXCEEDED` below n.
pub fn publish_body(data: &[u8]) {
    for max in [1, 3, 10_000] {
        if let Ok(n) = check_publish(data, max) {
            if n > 1 {
                let e = parse_publish(data, n - 1).expect_err("batch over the limit accepted");
                assert_eq!((e.code, e.index), ("LIMIT_EXCEEDED", None));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------

/// An HS256 JWT over arbitrary header and payload bytes.
pub fn sign_parts(secret: &[u8], header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

/// Whether `token`'s signature is right for `secret` (independently of `jwt::verify`).
fn signature_holds(secret: &[u8], token: &str) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(input.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// Checks one `jwt::verify` answer; returns it.
pub fn check_verify(secret: &[u8], token: &str, now: u64) -> Result<jwt::Claims, TokenError> {
    let r = jwt::verify(secret, token, now);
    match &r {
        Ok(c) => {
            assert_eq!(token.split('.').count(), 3);
            assert!(signature_holds(secret, token), "accepted a bad signature");
            assert!(!c.sub.is_empty(), "empty sub");
            assert!(c.exp > now, "exp {} <= now {now}", c.exp);
            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').next().unwrap_or(""))
                    .expect("header base64"),
            )
            .expect("header JSON");
            assert_eq!(header.get("alg").and_then(Value::as_str), Some("HS256"));
            assert!(header.get("crit").is_none(), "accepted a 'crit' header");
            assert!(c.group.as_deref() != Some("") && c.org.as_deref() != Some(""));
            // Expiry is exact: expired at `exp`, valid the second before.
            if c.exp < 1 << 53 {
                assert!(
                    matches!(
                        jwt::verify(secret, token, c.exp),
                        Err(TokenError::Expired { .. })
                    ),
                    "not expired at its own exp"
                );
                assert!(
                    jwt::verify(secret, token, c.exp - 1).is_ok(),
                    "not valid the second before exp"
                );
            }
        }
        Err(e) => {
            // Attacker-chosen text in errors is clipped.
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(msg.len() <= 320, "error message of {} bytes", msg.len());
            assert!(!e.reason().is_empty());
            if matches!(
                e,
                TokenError::Expired { .. }
                    | TokenError::NotYetValid { .. }
                    | TokenError::InvalidClaims(_)
            ) {
                // Claims are only looked at once the signature holds.
                assert!(signature_holds(secret, token), "{e:?} for a bad signature");
            }
        }
    }
    r
}

/// The `jwt_verify` fuzz target. First byte: mode. 0: the rest is the token. 1: the rest
/// is `header 0xFF payload` (raw JSON text, or just the payload with the usual header),
/// signed correctly. 2: the rest is `secret 0xFF payload`, signed with that secret and
/// verified with it and with a different one.
pub fn jwt_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let split = |b: &[u8]| match b.iter().position(|&x| x == 0xFF) {
        Some(i) => (b[..i].to_vec(), b[i + 1..].to_vec()),
        None => (br#"{"alg":"HS256","typ":"JWT"}"#.to_vec(), b.to_vec()),
    };
    match mode % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = check_verify(JWT_SECRET, &token, JWT_NOW);
        }
        1 => {
            let (header, payload) = split(rest);
            let token = sign_parts(JWT_SECRET, &header, &payload);
            for now in [0, JWT_NOW] {
                let r = check_verify(JWT_SECRET, &token, now);
                assert_ne!(r.err(), Some(TokenError::BadSignature));
            }
        }
        _ => {
            let (secret, payload) = match rest.iter().position(|&x| x == 0xFF) {
                Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
                None => (rest.to_vec(), br#"{"sub":"u","exp":4102444800}"#.to_vec()),
            };
            let token = sign_parts(&secret, br#"{"alg":"HS256"}"#, &payload);
            let r = check_verify(&secret, &token, JWT_NOW);
            assert_ne!(r.err(), Some(TokenError::BadSignature));
            let mut other = secret.clone();
            other.push(b'x');
            let r = check_verify(&other, &token, JWT_NOW);
            assert_eq!(r.err(), Some(TokenError::BadSignature));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Checks one `Config::from_toml_str` answer.
pub fn check_config(text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let r = Config::from_toml_str(text, env.iter().cloned());
    match &r {
        Ok(c) => {
            assert!(
                c.validate().is_ok(),
                "returned a config that fails validate"
            );
            assert!(
                c.ignored_env.windows(2).all(|w| w[0] <= w[1]),
                "ignored_env sorted"
            );
            for name in &c.ignored_env {
                // Only prefixed names without a `section__key` separator are ignored.
                let rest = name
                    .strip_prefix("SHARDCAST_")
                    .expect("ignored a foreign name");
                assert!(!rest.contains("__"), "ignored {name}");
            }
            assert!(c.shard_count() >= 1);
            assert!(c.delivery.batch_ms <= c.delivery.max_batch_ms);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if let ConfigError::Syntax { message, .. } = e {
                assert!(
                    !message.contains('\n'),
                    "multi-line syntax error {message:?}"
                );
            }
        }
    }
    r
}

/// The `config_toml` fuzz target: the input up to a NUL byte is the TOML text; after it,
/// `NAME=VALUE` lines are environment variables (`SHARDCAST_` is prefixed when missing).
pub fn config_toml(data: &[u8]) {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = if k.starts_with("SHARDCAST_") {
                k.to_string()
            } else {
                format!("SHARDCAST_{k}")
            };
            (k, v.to_string())
        })
        .collect();
    let _ = check_config(&text, &env);
}

// ---------------------------------------------------------------------------------------
// Filters and orderBy (subscriptions, live queries, entity lists)
// ---------------------------------------------------------------------------------------

/// Filter and orderBy text (`filter::Filter::parse`, `filter::OrderBy::parse`). A parse
/// either fails with an offset inside the input, on a char boundary, whose `Display` names
/// it, or succeeds and prints a canonical text no longer than the input that parses back
/// to an equal value (and prints the same again); `matches` never panics, and when it
/// holds, the value's `IndexKey` for `index_term`'s field is one of the term's keys;
/// `OrderBy::compare` is antisymmetric.
pub fn filter(data: &[u8]) {
    let Ok(src) = str::from_utf8(data) else {
        return;
    };
    check_filter(src);
    check_order_by(src);
}

/// A few documents of every shape: the seed's match, scalars at the root, nesting,
/// arrays and objects where scalars are expected, keyword-like keys.
fn filter_values() -> &'static [Value] {
    static VALUES: OnceLock<Vec<Value>> = OnceLock::new();
    VALUES.get_or_init(|| {
        vec![
            json!({"status": "failed", "n": 5, "tags": {"x": "a"}, "done": false}),
            json!({"a": 1, "b": {"c": "x", "d": [1, 2]}, "in": true, "null": null, "e": ""}),
            json!({"a": -0.0, "b": 1e300, "c": {}, "d": [], "x": "é😀", "true": 0}),
            json!(null),
            json!(42),
            json!("a"),
            json!([{"a": 1}]),
        ]
    })
}

fn check_filter_error(src: &str, e: &FilterError) {
    let at = e.offset;
    assert!(at <= src.len(), "offset past the {} bytes: {e}", src.len());
    assert!(src.is_char_boundary(at), "offset inside a char: {e}");
    assert!(!e.message.is_empty());
    assert!(e.to_string().contains(&format!("at byte {at}")), "{e}");
}

fn check_filter(src: &str) {
    let f = match Filter::parse(src) {
        Ok(f) => f,
        Err(e) => return check_filter_error(src, &e),
    };
    let text = f.to_string();
    assert!(text.len() <= src.len(), "{src:?} printed longer: {text:?}");
    let again = Filter::parse(&text).unwrap_or_else(|e| panic!("{src:?} printed {text:?}: {e}"));
    assert_eq!(again, f, "{src:?} printed {text:?}");
    assert_eq!(again.to_string(), text);
    let term = f.index_term();
    for v in filter_values() {
        if f.matches(v) {
            if let Some((path, keys)) = &term {
                let key = IndexKey::of(path.get(v));
                assert!(
                    key.as_ref().is_some_and(|k| keys.contains(k)),
                    "{text} matches {v} but its key {key:?} for {path} is not in {keys:?}"
                );
            }
        }
    }
}

fn check_order_by(src: &str) {
    let o = match OrderBy::parse(src) {
        Ok(o) => o,
        Err(e) => return check_filter_error(src, &e),
    };
    let text = o.to_string();
    assert!(text.len() <= src.len(), "{src:?} printed longer: {text:?}");
    let again = OrderBy::parse(&text).unwrap_or_else(|e| panic!("{src:?} printed {text:?}: {e}"));
    assert_eq!(again, o, "{src:?} printed {text:?}");
    let vs = filter_values();
    for a in vs {
        for b in vs {
            let (ab, ba) = (o.compare(a, b), o.compare(b, a));
            assert_eq!(ab, ba.reverse(), "{text}: {a} vs {b}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// REST bodies and query strings: entities (§8), channels (§9), services (§10)
// ---------------------------------------------------------------------------------------

/// Longest refusal message for any body or query: text the caller chose is clipped (names
/// to 64 bytes, values to 32; a path is at most 512 bytes), so an answer or a log line
/// never grows with the input.
pub const MAX_REFUSAL_MESSAGE: usize = 1024;

/// The entity ids `entity_body` checks bodies against (its first byte picks one).
pub const ENTITY_IDS: &[&str] = &["e1", "acc_7:x@y.z-1", "0", "id"];

/// The collection `entity_list_query` lists.
pub const ENTITY_COLLECTION: &str = "orders";

/// The list query parameters of PROTOCOL-NOTES.md (Entities).
const ENTITY_LIST_PARAMS: &[&str] = &["filter", "orderBy", "limit", "cursor"];

/// The cursor signer of the list checks (a node derives its own from `auth.jwt_secret`).
pub fn cursors() -> &'static Cursors {
    static CURSORS: OnceLock<Cursors> = OnceLock::new();
    CURSORS.get_or_init(|| Cursors::new(b"fuzz-cursor-secret"))
}

/// Every refusal of a REST body or query: 400, one of `codes`, a short non-empty message.
pub fn check_refused(r: &Refused, codes: &[&str]) {
    let (status, code, m) = r;
    assert_eq!(*status, 400, "status {status} ({code}: {m})");
    assert!(codes.contains(code), "code {code} ({m})");
    assert!(!m.is_empty(), "empty message ({code})");
    assert!(
        m.len() <= MAX_REFUSAL_MESSAGE,
        "message of {} bytes: {}...",
        m.len(),
        protocol::truncate(m, 200)
    );
}

/// The one rule of every REST list's query string (PROTOCOL-NOTES.md, REST), as a model:
/// the decoded pairs, or the start of the refusal of the first name from the left that
/// the list does not take (`known`) or that was given before. Values are the endpoint's.
pub fn query_names_model(query: &str, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = http::query_pairs(query).collect();
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !known.contains(&k.as_str()) {
            return Err(format!(
                "unknown query parameter '{}'",
                protocol::truncate(k, 64)
            ));
        }
        if pairs[..i].iter().any(|(seen, _)| seen == k) {
            return Err(format!("query parameter '{k}' is given more than once"));
        }
    }
    Ok(pairs)
}

/// A query-string number as the rule has it: only ASCII digits, no leading zero (but `0`
/// itself), within `min..=max`.
pub fn plain_number_model(v: &str, min: u64, max: u64) -> Option<u64> {
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = v.len() > 1 && v.starts_with('0');
    if !digits || leading_zero {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

/// The value of `name` among pairs the names model accepted (each name at most once).
fn value_of<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Array/object nesting of a JSON value (a scalar is 0).
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks one `parse_entity_body` answer against a model: accepted exactly when the body
/// is a JSON object nested at most `MAX_BODY_DEPTH` levels whose `id` is absent or the
/// path's; accepted as the object the text is; PUT and PATCH agree; a refusal is
/// `BAD_MESSAGE` naming the body (or its `id`). An accepted PATCH is a merge patch that
/// applies idempotently.
pub fn check_entity_body(
    body: &[u8],
    id: &str,
    patch: bool,
) -> Result<Map<String, Value>, Refused> {
    let r = parse_entity_body(body, id, patch);
    let parsed = str::from_utf8(body)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    let object = match &parsed {
        Some(v @ Value::Object(m)) if json_depth(v) <= MAX_BODY_DEPTH => Some(m),
        _ => None,
    };
    let id_ok = |m: &Map<String, Value>| match m.get("id") {
        None => true,
        Some(Value::String(s)) => s == id,
        Some(_) => false,
    };
    let want_ok = object.is_some_and(id_ok);
    assert_eq!(
        parse_entity_body(body, id, !patch).is_ok(),
        r.is_ok(),
        "PUT and PATCH disagree"
    );
    match &r {
        Ok(m) => {
            assert!(want_ok, "accepted {m:?} for id {id:?}");
            assert_eq!(object, Some(m), "accepted a different object");
            if patch {
                let p = Value::Object(m.clone());
                for t in filter_values() {
                    let mut once = t.clone();
                    merge_patch(&mut once, &p);
                    let out = once.as_object().expect("a patched state is an object");
                    for (k, v) in m {
                        match v {
                            Value::Null => assert!(!out.contains_key(k), "{k} kept"),
                            Value::Object(_) => assert!(out[k].is_object()),
                            v => assert_eq!(&out[k], v),
                        }
                    }
                    let mut twice = once.clone();
                    merge_patch(&mut twice, &p);
                    assert_eq!(once, twice, "merge patch is not idempotent");
                }
            }
        }
        Err(e) => {
            assert!(!want_ok, "refused a good body for id {id:?}: {}", e.2);
            check_refused(e, &["BAD_MESSAGE"]);
            if object.is_some() {
                assert!(e.2.starts_with("the body's id ("), "{}", e.2);
            } else {
                let what = if patch { "a PATCH body" } else { "a PUT body" };
                assert!(e.2.starts_with(what), "{}", e.2);
            }
        }
    }
    r
}

/// The `entity_body` fuzz target. First byte: bit 0 set = PATCH (else PUT), the rest
/// picks the path's id from [`ENTITY_IDS`]; the rest of the input is the body.
pub fn entity_body(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let id = ENTITY_IDS[(mode >> 1) as usize % ENTITY_IDS.len()];
    let _ = check_entity_body(body, id, mode & 1 == 1);
}

/// Checks one `parse_entity_list` answer (collection [`ENTITY_COLLECTION`], signer
/// [`cursors`]) against a model of PROTOCOL-NOTES.md: the names ([`query_names_model`]:
/// unknown or repeated), then `filter`, `orderBy` (`INVALID_FILTER` with the parser's own
/// error), `limit` (plain digits, 1..=1000, default 100), `cursor`; a refusal names the
/// first problem. An accepted query takes a cursor issued for it (at that position), and
/// the same cursor is refused for another collection.
pub fn check_entity_list(query: &str) -> Result<EntityListQuery, Refused> {
    let r = parse_entity_list(ENTITY_COLLECTION, query, cursors());
    let names = query_names_model(query, ENTITY_LIST_PARAMS);
    let pairs = names.clone().unwrap_or_default();
    let first = |name: &str| value_of(&pairs, name);
    let filter_src = first("filter").filter(|f| !f.trim().is_empty());
    let order_src = first("orderBy").filter(|o| !o.trim().is_empty());
    let limit =
        first("limit").map(|l| plain_number_model(l, 1, MAX_LIMIT as u64).map(|n| n as usize));
    let cursor = first("cursor").filter(|c| !c.is_empty());
    match &r {
        Ok(q) => {
            assert!(names.is_ok(), "accepted against {names:?}");
            assert_eq!(
                q.filter.as_ref(),
                filter_src
                    .map(|f| Filter::parse(f).expect("filter"))
                    .as_ref()
            );
            let want_order = order_src.map(|o| OrderBy::parse(o).expect("orderBy"));
            assert_eq!(q.order.keys, want_order.map(|o| o.keys).unwrap_or_default());
            assert_eq!(Some(q.limit), limit.unwrap_or(Some(DEFAULT_LIMIT)), "limit");
            assert_eq!(q.after.is_some(), cursor.is_some(), "cursor");
            let want_query = format!(
                "{ENTITY_COLLECTION}|{}|{}",
                q.filter.as_ref().map(|f| f.to_string()).unwrap_or_default(),
                q.order
            );
            assert_eq!(q.query, want_query);
            let last = json!({"id": "e7", "n": 3, "a": {"b": "x"}, "status": "failed"});
            let cur = cursors().encode(&q.query, &q.order, &last);
            // The query's own cursor, if any, is replaced (a second one would be refused).
            let without_cursor: Vec<&str> = query
                .split('&')
                .filter(|kv| http::percent_decode(kv.split('=').next().unwrap_or("")) != "cursor")
                .collect();
            let with_cursor = format!("cursor={cur}&{}", without_cursor.join("&"));
            let again = parse_entity_list(ENTITY_COLLECTION, &with_cursor, cursors())
                .unwrap_or_else(|e| panic!("its own cursor refused: {e:?}"));
            assert_eq!(again.after, cursors().decode(&q.query, &cur).ok());
            assert_eq!(
                (&again.filter, &again.order, again.limit),
                (&q.filter, &q.order, q.limit)
            );
            let other = parse_entity_list("other", &with_cursor, cursors())
                .expect_err("a cursor of another collection accepted");
            check_refused(&other, &["BAD_MESSAGE"]);
            assert!(other.2.starts_with("cursor: "), "{}", other.2);
        }
        Err(e) => {
            check_refused(e, &["BAD_MESSAGE", "INVALID_FILTER"]);
            let (code, m) = (e.1, e.2.as_str());
            if let Err(want) = &names {
                assert_eq!(code, "BAD_MESSAGE");
                assert!(m.starts_with(want), "'{m}' is not '{want}...'");
            } else if let Some(fe) = filter_src.and_then(|f| Filter::parse(f).err()) {
                assert_eq!((code, m), ("INVALID_FILTER", &*format!("filter: {fe}")));
            } else if let Some(oe) = order_src.and_then(|o| OrderBy::parse(o).err()) {
                assert_eq!((code, m), ("INVALID_FILTER", &*format!("orderBy: {oe}")));
            } else if limit == Some(None) {
                assert_eq!(code, "BAD_MESSAGE");
                assert!(m.starts_with("limit must be"), "{m}");
            } else {
                assert!(cursor.is_some(), "refused a good query: {m}");
                assert_eq!(code, "BAD_MESSAGE");
                assert!(m.starts_with("cursor: "), "{m}");
            }
        }
    }
    r
}

/// The `entity_list_query` fuzz target: the input (lossy UTF-8) is a list's query string.
pub fn entity_list_query(data: &[u8]) {
    let _ = check_entity_list(&String::from_utf8_lossy(data));
}

/// Fields of each channel create body (PROTOCOL.md §9).
fn channel_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "organisation" => &["organisation_id", "user_id", "event_types"],
        "user" => &["user_id", "event_types"],
        _ => &["path", "event_types", "filter"],
    }
}

/// A model of a channel create body's checks: the channel, or the refusal's code and the
/// word its message must contain (the field, in the parser's order of checks).
pub fn channel_model(kind: &str, body: &[u8]) -> Result<NewChannel, (&'static str, &'static str)> {
    let bad = |what: &'static str| ("BAD_MESSAGE", what);
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("body must be a JSON object"));
    };
    let fields = channel_fields(kind);
    if m.keys().any(|k| !fields.contains(&k.as_str())) {
        return Err(bad("unknown field"));
    }
    let id = |name: &'static str| match m.get(name) {
        Some(Value::String(s))
            if (1..=256).contains(&s.len()) && !s.chars().any(char::is_control) =>
        {
            Ok(s.clone())
        }
        _ => Err(bad(name)),
    };
    let types = |required: bool| match m.get("event_types") {
        None | Some(Value::Null) if !required => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= 64 => a
            .iter()
            .map(|t| match t {
                Value::String(s) if (1..=256).contains(&s.len()) => Ok(s.clone()),
                _ => Err(bad("event_types")),
            })
            .collect(),
        _ => Err(bad("event_types")),
    };
    Ok(match kind {
        "organisation" => {
            let organisation_id = id("organisation_id")?;
            let user_id = id("user_id")?;
            NewChannel {
                kind: ChannelKind::OrganisationClaims {
                    organisation_id,
                    user_id,
                },
                event_types: types(true)?,
            }
        }
        "user" => NewChannel {
            kind: ChannelKind::UserClaims {
                user_id: id("user_id")?,
            },
            event_types: types(true)?,
        },
        _ => {
            let Some(Value::String(path)) = m.get("path") else {
                return Err(bad("path"));
            };
            if !path_is_valid_model(path) {
                return Err(("INVALID_PATH", "path: "));
            }
            let event_types = types(false)?;
            let filter = match m.get("filter") {
                None | Some(Value::Null) => None,
                Some(Value::String(f)) if f.trim().is_empty() => None,
                Some(Value::String(f)) if Filter::parse(f).is_ok() => Some(f.clone()),
                Some(Value::String(_)) => return Err(("INVALID_FILTER", "filter: ")),
                Some(_) => return Err(bad("filter must be a string or null")),
            };
            NewChannel {
                kind: ChannelKind::Custom {
                    path: path.clone(),
                    filter,
                },
                event_types,
            }
        }
    })
}

/// Checks one `parse_channel_create` answer against [`channel_model`].
pub fn check_channel_create(kind: &str, body: &[u8]) -> Result<NewChannel, Refused> {
    let r = parse_channel_create(kind, body);
    match (&r, channel_model(kind, body)) {
        (Ok(got), Ok(want)) => assert_eq!(got, &want, "{kind} channel"),
        (Err(e), Err((code, word))) => {
            check_refused(e, &[code]);
            assert!(
                e.2.contains(word),
                "{kind}: '{}' does not name '{word}'",
                e.2
            );
        }
        (got, want) => panic!("{kind}: got {got:?}, the model says {want:?}"),
    }
    r
}

/// Checks one `parse_channel_list` answer against a model: the names
/// ([`query_names_model`]: `page`, `limit`, `status`, `user_id`, `organisation_id`, each
/// at most once), then in that order `page` (plain digits, 1..=1000000, default 1),
/// `limit` (1..=100, default 20), `status` connected|disconnected, non-empty `user_id` and
/// `organisation_id`; the refusal names the first problem.
pub fn check_channel_list(query: &str) -> Result<ListQuery, Refused> {
    let r = parse_channel_list(query);
    let model = || -> Result<ListQuery, String> {
        let pairs = query_names_model(
            query,
            &["page", "limit", "status", "user_id", "organisation_id"],
        )?;
        let get = |name: &str| value_of(&pairs, name);
        let number = |name: &str, max: u64, default: usize| match get(name) {
            None => Ok(default),
            Some(v) => plain_number_model(v, 1, max)
                .map(|n| n as usize)
                .ok_or_else(|| format!("{name} must be a whole number")),
        };
        let page = number("page", 1_000_000, 1)?;
        let limit = number("limit", 100, 20)?;
        let status = match get("status") {
            None => None,
            Some("connected") => Some(Status::Connected),
            Some("disconnected") => Some(Status::Disconnected),
            Some(_) => return Err("status must be 'connected' or 'disconnected'".into()),
        };
        let text = |name: &str| match get(name) {
            Some("") => Err(format!("{name} must not be empty")),
            v => Ok(v.map(str::to_string)),
        };
        Ok(ListQuery {
            page,
            limit,
            status,
            user_id: text("user_id")?,
            organisation_id: text("organisation_id")?,
        })
    };
    match (&r, model()) {
        (Ok(got), Ok(want)) => assert_eq!(got, &want),
        (Err(e), Err(want)) => {
            check_refused(e, &["BAD_MESSAGE"]);
            assert!(e.2.starts_with(&want), "'{}' is not '{want}...'", e.2);
        }
        (got, want) => panic!("got {got:?}, the model says {want:?}"),
    }
    r
}

/// The `channel_body` fuzz target. First byte mod 4: 0 `POST /organisation`, 1 `POST
/// /user`, 2 `POST /` (custom), each with the rest as the body; 3 the list's query string
/// (lossy UTF-8).
pub fn channel_body(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        3 => {
            let _ = check_channel_list(&String::from_utf8_lossy(rest));
        }
        k => {
            let _ = check_channel_create(["organisation", "user", "custom"][k as usize], rest);
        }
    }
}

/// Checks one `parse_dead_letters_query` answer against a model: the names
/// ([`query_names_model`]: `limit`, `cursor`, each at most once), then `limit` (plain
/// digits, 1..=1000, default 100) and `cursor` (plain digits, a u64); the refusal names
/// the first problem.
pub fn check_dead_letters_query(query: &str) -> Result<DeadLettersQuery, Refused> {
    let r = parse_dead_letters_query(query);
    let model = || -> Result<DeadLettersQuery, String> {
        let pairs = query_names_model(query, &["limit", "cursor"])?;
        let limit = match value_of(&pairs, "limit") {
            None => DEFAULT_LIMIT,
            Some(v) => plain_number_model(v, 1, MAX_LIMIT as u64)
                .ok_or("limit must be a whole number")? as usize,
        };
        let cursor = match value_of(&pairs, "cursor") {
            None => None,
            Some(v) => {
                Some(plain_number_model(v, 0, u64::MAX).ok_or("cursor must be a whole number")?)
            }
        };
        Ok(DeadLettersQuery { limit, cursor })
    };
    match (&r, model()) {
        (Ok(got), Ok(want)) => assert_eq!(got, &want),
        (Err(e), Err(want)) => {
            check_refused(e, &["BAD_MESSAGE"]);
            assert!(e.2.starts_with(&want), "'{}' is not '{want}...'", e.2);
        }
        (got, want) => panic!("got {got:?}, the model says {want:?}"),
    }
    r
}

/// The `services_query` fuzz target: the input (lossy UTF-8) is the query string of
/// `GET /api/v1/services/{group}/dead-letters`.
pub fn services_query(data: &[u8]) {
    let _ = check_dead_letters_query(&String::from_utf8_lossy(data));
}
