//! How a service task is kept in the store, and how it is shown on the wire.
//!
//! Owned by the services thread and the jobs it submits; pure functions. Key:
//! `group 0x00 seq` (big-endian `seq`, so a group's tasks are in `seq` order, and its
//! prefix `group 0x00` never matches another group: a group name holds no NUL). Value:
//! `flags (1) | attempts (4) | ids length (4) | ids | tail`, where `ids` are the
//! matched durable subscriptions' ids as JSON string literals joined by commas and
//! `tail` is the publication's encoded tail (`"eventType":…,"seq":N}`).

use crate::protocol::{write_event_head, EventHead};

/// The task was put back (a replayed dead letter): the group's delivery watermark does
/// not count it as delivered, only its own `attempts` does.
pub const FRESH: u8 = 1;

const HEADER: usize = 9;

/// A group's prefix in the `Tasks` and `DeadLetters` tables.
pub fn group_prefix(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + 1);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

pub fn task_key(group: &str, seq: u64) -> Vec<u8> {
    let mut k = group_prefix(group);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `(group, seq)` of a task key.
pub fn parse_key(key: &[u8]) -> Option<(&str, u64)> {
    if key.len() < 9 || key[key.len() - 9] != 0 {
        return None;
    }
    let (g, rest) = key.split_at(key.len() - 9);
    let seq = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(g).ok()?, seq))
}

pub fn encode(flags: u8, attempts: u32, ids: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + ids.len() + tail.len());
    v.push(flags);
    v.extend_from_slice(&attempts.to_be_bytes());
    v.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    v.extend_from_slice(ids);
    v.extend_from_slice(tail);
    v
}

/// A decoded value, borrowing its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub flags: u8,
    /// Deliveries recorded for this task itself (first deliveries are recorded by the
    /// group's watermark instead, see `services::queue`).
    pub attempts: u32,
    pub ids: &'a [u8],
    pub tail: &'a [u8],
}

pub fn decode(v: &[u8]) -> Option<Record<'_>> {
    if v.len() < HEADER {
        return None;
    }
    let attempts = u32::from_be_bytes(v[1..5].try_into().ok()?);
    let n = u32::from_be_bytes(v[5..9].try_into().ok()?) as usize;
    let ids = v.get(HEADER..HEADER + n)?;
    Some(Record {
        flags: v[0],
        attempts,
        ids,
        tail: &v[HEADER + n..],
    })
}

/// The same record with another header (the payload is copied once).
pub fn with_header(v: &[u8], flags: u8, attempts: u32) -> Vec<u8> {
    let mut out = v.to_vec();
    if out.len() >= HEADER {
        out[0] = flags;
        out[1..5].copy_from_slice(&attempts.to_be_bytes());
    }
    out
}

/// `taskId`: `group:seq`.
pub fn task_id(group: &str, seq: u64) -> String {
    format!("{group}:{seq}")
}

/// `(group, seq)` of a `taskId`; the group is everything before the last `:`.
pub fn parse_task_id(id: &str) -> Option<(&str, u64)> {
    let (g, s) = id.rsplit_once(':')?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((g, s.parse().ok()?))
}

/// The task's `event` message for delivery attempt `attempt`.
pub fn event_message(out: &mut Vec<u8>, group: &str, seq: u64, attempt: u32, r: &Record<'_>) {
    let id = task_id(group, seq);
    write_event_head(
        out,
        EventHead::Task {
            ids: &[r.ids],
            task_id: &id,
            attempt,
        },
    );
    out.extend_from_slice(r.tail);
}

/// The event as a dead letter shows it (`{"type":"event","subscriptionIds":…,…}`).
pub fn event_value(r: &Record<'_>) -> serde_json::Value {
    let mut out = Vec::with_capacity(r.ids.len() + r.tail.len() + 40);
    write_event_head(&mut out, EventHead::Subscriptions(&[r.ids]));
    out.extend_from_slice(r.tail);
    serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids_round_trip() {
        let k = task_key("billing", 1303);
        assert_eq!(parse_key(&k), Some(("billing", 1303)));
        assert!(k.starts_with(&group_prefix("billing")));
        assert!(!k.starts_with(&group_prefix("bill")));
        assert!(task_key("a", 2) > task_key("a", 1));
        assert!(task_key("a", 256) > task_key("a", 255));
        assert_eq!(parse_task_id("billing:1303"), Some(("billing", 1303)));
        assert_eq!(parse_task_id("a:b:7"), Some(("a:b", 7)));
        assert_eq!(parse_task_id("billing:"), None);
        assert_eq!(parse_task_id("billing:-1"), None);
        assert_eq!(parse_task_id("nocolon"), None);
    }

    #[test]
    fn record_round_trips_and_renders() {
        let tail = br#""eventType":"e","path":"a/b","data":{"x":1},"timestamp":"t","seq":9}"#;
        let v = encode(0, 0, br#""s1","s2""#, tail);
        let r = decode(&v).unwrap();
        assert_eq!((r.flags, r.attempts), (0, 0));
        let v2 = with_header(&v, FRESH, 3);
        let r2 = decode(&v2).unwrap();
        assert_eq!(
            (r2.flags, r2.attempts, r2.ids, r2.tail),
            (FRESH, 3, r.ids, r.tail)
        );
        let mut m = Vec::new();
        event_message(&mut m, "g", 9, 2, &r);
        let j: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"type":"event","subscriptionIds":["s1","s2"],"taskId":"g:9",
                "attempt":2,"eventType":"e","path":"a/b","data":{"x":1},"timestamp":"t","seq":9})
        );
        assert_eq!(
            event_value(&r)["subscriptionIds"],
            serde_json::json!(["s1", "s2"])
        );
        assert!(decode(&v[..5]).is_none());
    }
}
