//! Cheap classification of incoming text messages without parsing JSON per event.
//!
//! The server can push millions of events per second, so the hot path only looks for
//! byte patterns: every `"type":"<kind>"` (events are counted, pings answered, other kinds
//! noted) and every `"t":<digits>` (the publisher's send time, for latency). This works the
//! same for a single message and for a `{"type":"batch","messages":[...]}` flush. Rare
//! messages (errors, acknowledgements, overflow warnings) are parsed fully, off the hot path.

use memchr::memmem::Finder;
use serde_json::Value;

pub const K_AUTHENTICATED: u16 = 1;
pub const K_SUBSCRIBED: u16 = 1 << 1;
pub const K_ERROR: u16 = 1 << 2;
pub const K_WARNING: u16 = 1 << 3;
pub const K_BATCH: u16 = 1 << 4;
pub const K_PONG: u16 = 1 << 5;
pub const K_OTHER: u16 = 1 << 6;

/// What one text message held.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Scan {
    /// `"type":"event"` occurrences.
    pub events: u32,
    /// `"type":"ping"` occurrences: each wants a `{"type":"pong"}`.
    pub pings: u32,
    /// `K_*` bits of the other kinds seen.
    pub kinds: u16,
}

pub struct Scanner {
    /// `"t` starts both keys of interest: `"type"` and `"t"`, so one pass finds both.
    quote_t: Finder<'static>,
    /// Fast path for the common compact single event: `"data":{"t":` (the publisher's
    /// data object starts with `t`).
    data_t: Finder<'static>,
}

/// A compact single event, as the server writes them.
const EVENT_PREFIX: &[u8] = br#"{"type":"event","#;

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// After a key at `i` (just past its closing quote): the index just past `:` and spaces.
#[inline]
fn after_colon(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, i);
    if i < b.len() && b[i] == b':' {
        Some(skip_ws(b, i + 1))
    } else {
        None
    }
}

/// `t` values seen before the message's first event (unusual key order) wait here.
const EARLY_T: usize = 8;

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            quote_t: Finder::new(b"\"t"),
            data_t: Finder::new(br#""data":{"t":"#),
        }
    }

    /// Classifies `msg`; calls `on_t` with every `"t":<unsigned integer>` value found in a
    /// message that holds events.
    pub fn scan(&self, msg: &[u8], mut on_t: impl FnMut(u64)) -> Scan {
        if msg.starts_with(EVENT_PREFIX) {
            if let Some(p) = self.data_t.find(&msg[EVENT_PREFIX.len()..]) {
                // one event whose data is the publisher's; anything else in it (the pad,
                // the timestamp) cannot hold another message
                let v = EVENT_PREFIX.len() + p + self.data_t.needle().len();
                if let Some(t) = parse_u64(&msg[v..]) {
                    on_t(t);
                }
                return Scan {
                    events: 1,
                    ..Scan::default()
                };
            }
        }
        let mut s = Scan::default();
        let mut early = [0u64; EARLY_T];
        let mut n_early = 0;
        for pos in self.quote_t.find_iter(msg) {
            let rest = &msg[pos + 2..];
            if rest.first() == Some(&b'"') {
                // the key "t"
                let Some(v) = after_colon(msg, pos + 3) else {
                    continue;
                };
                if let Some(t) = parse_u64(&msg[v..]) {
                    if s.events > 0 {
                        on_t(t);
                    } else if n_early < EARLY_T {
                        early[n_early] = t;
                        n_early += 1;
                    }
                }
            } else if rest.starts_with(b"ype\"") {
                let Some(v) = after_colon(msg, pos + 6) else {
                    continue;
                };
                if v >= msg.len() || msg[v] != b'"' {
                    continue;
                }
                let value = &msg[v + 1..];
                let Some(end) = memchr::memchr(b'"', value) else {
                    continue;
                };
                match &value[..end] {
                    b"event" => s.events += 1,
                    b"ping" => s.pings += 1,
                    b"batch" => s.kinds |= K_BATCH,
                    b"authenticated" => s.kinds |= K_AUTHENTICATED,
                    b"subscribedEvents" => s.kinds |= K_SUBSCRIBED,
                    b"error" => s.kinds |= K_ERROR,
                    b"warning" => s.kinds |= K_WARNING,
                    b"pong" => s.kinds |= K_PONG,
                    _ => s.kinds |= K_OTHER,
                }
            }
        }
        if s.events > 0 {
            for &t in &early[..n_early] {
                on_t(t);
            }
        }
        s
    }
}

/// Leading decimal digits of `b` as a number (None when there are none or it overflows).
#[inline]
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b.iter().take(20) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(v)
}

/// The messages inside `v`: the message itself, or a batch's `messages`.
fn messages(v: &Value) -> Vec<&Value> {
    if v.get("type").and_then(Value::as_str) == Some("batch") {
        v.get("messages")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    } else {
        vec![v]
    }
}

/// Sum of `dropped` over the `QUEUE_OVERFLOW` warnings in a message (single or batch).
/// Only called when the scan saw a warning, so a full parse is fine.
pub fn overflow_dropped(msg: &[u8]) -> u64 {
    if let Ok(v) = serde_json::from_slice::<Value>(msg) {
        return messages(&v)
            .into_iter()
            .filter(|m| {
                m.get("type").and_then(Value::as_str) == Some("warning")
                    && m.get("code").and_then(Value::as_str) == Some("QUEUE_OVERFLOW")
            })
            .filter_map(|m| m.get("dropped").and_then(Value::as_u64))
            .sum();
    }
    // not valid JSON: best effort, the first "dropped" number after each code
    let mut total = 0;
    let dropped = Finder::new(b"\"dropped\"");
    for pos in Finder::new(b"QUEUE_OVERFLOW").find_iter(msg) {
        let window = &msg[pos..msg.len().min(pos + 1024)];
        if let Some(d) = dropped.find(window) {
            if let Some(v) = after_colon(window, d + 9) {
                total += parse_u64(&window[v..]).unwrap_or(0);
            }
        }
    }
    total
}

/// The `code` of the first `error` message and the start of its `message` (for failure
/// reasons: `CODE: message`), `"?"` if none.
pub fn error_code(msg: &[u8]) -> String {
    serde_json::from_slice::<Value>(msg)
        .ok()
        .and_then(|v| {
            let m = messages(&v)
                .into_iter()
                .find(|m| m.get("type").and_then(Value::as_str) == Some("error"))?;
            let code = m.get("code").and_then(Value::as_str)?;
            Some(match m.get("message").and_then(Value::as_str) {
                Some(text) if !text.is_empty() => {
                    let cut: String = text.chars().take(100).collect();
                    format!("{code}: {cut}")
                }
                _ => code.to_string(),
            })
        })
        .unwrap_or_else(|| "?".to_string())
}

/// For a `subscribedEvents` answer: the code of the first rejected subscription, if any.
pub fn rejected_code(msg: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<Value>(msg).ok()?;
    let m = messages(&v)
        .into_iter()
        .find(|m| m.get("type").and_then(Value::as_str) == Some("subscribedEvents"))?;
    let first = m.get("rejected")?.as_array()?.first()?;
    Some(
        first
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(msg: &str) -> (Scan, Vec<u64>) {
        let mut ts = Vec::new();
        let s = Scanner::new().scan(msg.as_bytes(), |t| ts.push(t));
        (s, ts)
    }

    #[test]
    fn single_event() {
        let (s, ts) = scan(
            r#"{"type":"event","subscriptionIds":["load"],"eventType":"tick","path":"load/fanout","data":{"t":1774512862123456789,"pad":"xxxx"},"timestamp":"2026-03-26T08:14:22.123Z","seq":1303}"#,
        );
        assert_eq!(s.events, 1);
        assert_eq!(s.pings, 0);
        assert_eq!(s.kinds, 0);
        assert_eq!(ts, vec![1774512862123456789]);
    }

    #[test]
    fn key_order_and_spaces() {
        let (s, ts) = scan(r#"{ "data" : { "pad":"x", "t" : 42 }, "type" : "event" }"#);
        assert_eq!(s.events, 1);
        assert_eq!(ts, vec![42]);
        // data before type in every message of a batch
        let (s, mut ts) = scan(
            r#"{"messages":[{"data":{"t":1},"type":"event"},{"data":{"t":2},"type":"event"}],"type":"batch"}"#,
        );
        assert_eq!(s.events, 2);
        ts.sort();
        assert_eq!(ts, vec![1, 2]);
    }

    #[test]
    fn timestamp_is_not_t() {
        let (s, ts) = scan(r#"{"type":"event","timestamp":"2026","data":{"tt":5,"t":7},"seq":9}"#);
        assert_eq!(s.events, 1);
        assert_eq!(ts, vec![7]);
        // a string value "t" is not a key
        let (_, ts) = scan(r#"{"type":"event","eventType":"t","data":{"t":8}}"#);
        assert_eq!(ts, vec![8]);
    }

    #[test]
    fn batch_of_events_and_a_ping() {
        let msg = r#"{"type":"batch","messages":[{"type":"event","data":{"t":1}},{"type":"ping"},{"type":"event","data":{"t":2}},{"type":"event","data":{"t":3}}]}"#;
        let (s, ts) = scan(msg);
        assert_eq!(s.events, 3);
        assert_eq!(s.pings, 1);
        assert_eq!(s.kinds, K_BATCH);
        assert_eq!(ts, vec![1, 2, 3]);
    }

    #[test]
    fn control_messages() {
        let (s, ts) = scan(r#"{"type":"authenticated","connectionId":"c1","heartbeatMs":30000}"#);
        assert_eq!(s.kinds, K_AUTHENTICATED);
        assert!(ts.is_empty());
        let (s, _) = scan(r#"{"type":"subscribedEvents","requestId":"s","subscriptions":[]}"#);
        assert_eq!(s.kinds, K_SUBSCRIBED);
        let (s, _) = scan(r#"{"type":"ping"}"#);
        assert_eq!(s.pings, 1);
        let (s, _) = scan(r#"{"type":"error","code":"UNAUTHORIZED","message":"x"}"#);
        assert_eq!(s.kinds, K_ERROR);
        let (s, _) = scan(r#"{"type":"liveQueryData"}"#);
        assert_eq!(s.kinds, K_OTHER);
        // no t recorded without events
        let (_, ts) = scan(r#"{"type":"other","t":5}"#);
        assert!(ts.is_empty());
    }

    #[test]
    fn malformed_does_not_panic() {
        for m in [
            "",
            "\"type\"",
            "\"type\":",
            "\"type\":\"eve",
            "{\"type\":\"event\",\"t\":",
            "{\"type\":\"event\",\"t\":x}",
            "{\"type\":\"event\",\"t\":99999999999999999999999}",
        ] {
            let _ = scan(m);
        }
        let (s, ts) = scan("{\"type\":\"event\",\"t\":99999999999999999999999}");
        assert_eq!(s.events, 1);
        assert!(ts.is_empty(), "overflowing numbers are skipped");
    }

    #[test]
    fn overflow_warning() {
        let w = r#"{"type":"warning","code":"QUEUE_OVERFLOW","subscriptionId":"load","dropped":5,"message":"5 events dropped"}"#;
        let (s, _) = scan(w);
        assert_eq!(s.kinds, K_WARNING);
        assert_eq!(overflow_dropped(w.as_bytes()), 5);
        let b = format!(
            r#"{{"type":"batch","messages":[{w},{{"type":"event","data":{{"t":1}}}},{{"type":"warning","code":"QUEUE_OVERFLOW","dropped":7}},{{"type":"warning","code":"OTHER","dropped":100}}]}}"#
        );
        assert_eq!(overflow_dropped(b.as_bytes()), 12);
        // fallback when not JSON
        assert_eq!(
            overflow_dropped(br#"{"code":"QUEUE_OVERFLOW","dropped": 9 ,"#),
            9
        );
    }

    #[test]
    fn error_and_rejected() {
        assert_eq!(
            error_code(br#"{"type":"error","code":"FORBIDDEN","message":"no"}"#),
            "FORBIDDEN: no"
        );
        assert_eq!(
            error_code(br#"{"type":"error","code":"FORBIDDEN"}"#),
            "FORBIDDEN"
        );
        assert_eq!(error_code(b"nope"), "?");
        assert_eq!(
            rejected_code(
                br#"{"type":"subscribedEvents","subscriptions":[],"rejected":[{"id":"load","code":"FORBIDDEN","message":"m"}]}"#
            ),
            Some("FORBIDDEN".to_string())
        );
        assert_eq!(
            rejected_code(br#"{"type":"subscribedEvents","subscriptions":[{"id":"load"}]}"#),
            None
        );
    }

    #[test]
    fn parse_numbers() {
        assert_eq!(parse_u64(b"123,"), Some(123));
        assert_eq!(parse_u64(b"x"), None);
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }
}
