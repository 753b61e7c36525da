//! entities: durable entity writes over REST (PROTOCOL.md §8). Write n (0-based, over the
//! whole run) is `PUT {http}/api/v1/entities/load/e{n mod K}` with the body
//! `{"i":n,"pad":"xxx…"}` padded to `--payload` bytes, answered `200
//! {"seq":N,"op":"created"|"updated"}` once durable: the first K writes create, the rest
//! update. No WebSocket connections and nothing published; the writer (HTTP/1.1
//! connections, pipelining, pacing, answers, report) is [`crate::entities`].

use std::io::Write;

use super::Scenario;
use crate::net::Endpoint;

/// The collection every write goes to.
pub const COLLECTION: &str = "load";

pub struct Entities {
    /// Distinct ids: `e0..e{entities-1}`.
    pub entities: u64,
}

impl Entities {
    /// The id number written by write `n`.
    pub fn id_of(&self, n: u64) -> u64 {
        n % self.entities.max(1)
    }
}

impl Scenario for Entities {
    fn name(&self) -> &'static str {
        "entities"
    }
    fn publishes(&self) -> bool {
        false
    }
    fn publish_path(&self, _i: usize) -> String {
        COLLECTION.to_string()
    }
}

/// The body's bytes without padding, for write `n`.
fn body_head(n: u64) -> String {
    format!(r#"{{"i":{n},"pad":""#)
}

const BODY_TAIL: &[u8] = b"\"}";

/// The length of write `n`'s body: `payload`, or the unpadded body when that is longer.
pub fn body_len(n: u64, payload: usize) -> usize {
    (body_head(n).len() + BODY_TAIL.len()).max(payload)
}

/// Appends write `n`'s body `{"i":n,"pad":"xxx…"}`, padded with `x` to `payload` bytes
/// (never shorter than the body without padding).
pub fn push_body(out: &mut Vec<u8>, n: u64, payload: usize) {
    let head = body_head(n);
    let pad = payload.saturating_sub(head.len() + BODY_TAIL.len());
    out.extend_from_slice(head.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(BODY_TAIL);
}

/// Appends the whole request of write `n` (HTTP/1.1, keep-alive) for entity `e{id}`.
pub fn push_put_request(
    out: &mut Vec<u8>,
    http: &Endpoint,
    api_key: &str,
    id: u64,
    n: u64,
    payload: usize,
) {
    let _ = write!(
        out,
        "PUT {}/api/v1/entities/{COLLECTION}/e{id} HTTP/1.1\r\nHost: {}\r\n\
         Authorization: apikey {api_key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        http.path,
        http.host_header,
        body_len(n, payload)
    );
    push_body(out, n, payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cycle_creates_then_updates() {
        let s = Entities { entities: 3 };
        let ids: Vec<u64> = (0..7).map(|n| s.id_of(n)).collect();
        assert_eq!(ids, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(s.name(), "entities");
        assert!(!s.publishes());
    }

    #[test]
    fn body_is_sized_and_a_json_object() {
        for (n, payload) in [
            (0u64, 0usize),
            (7, 10),
            (12_345, 200),
            (u64::MAX, 64),
            (3, 5000),
        ] {
            let mut b = Vec::new();
            push_body(&mut b, n, payload);
            assert_eq!(b.len(), body_len(n, payload), "n {n} payload {payload}");
            let mut unpadded = Vec::new();
            push_body(&mut unpadded, n, 0);
            assert_eq!(b.len(), payload.max(unpadded.len()));
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["i"], n);
            assert!(v["pad"].as_str().unwrap().bytes().all(|c| c == b'x'));
        }
    }

    #[test]
    fn request_bytes() {
        let http = crate::net::parse_url("http://127.0.0.1:9000/base", "http").unwrap();
        let mut out = Vec::new();
        push_put_request(&mut out, &http, "k1", 4, 104, 30);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("PUT /base/api/v1/entities/load/e4 HTTP/1.1\r\n"));
        assert!(head.contains("\r\nHost: 127.0.0.1:9000\r\n"));
        assert!(head.contains("\r\nAuthorization: apikey k1\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        assert_eq!(body.len(), 30);
        assert!(body.starts_with(r#"{"i":104,"pad":"x"#));
    }
}
