//! permessage-deflate (RFC 7692) against the real server: the negotiation's answers,
//! compressed client messages with and without context takeover, the inflate limit
//! (a deflate bomb closed 1009), RSV1 refused without the extension, and events that
//! inflate to exactly the bytes a plain subscriber gets, in both framings, for feed
//! members and for a client that asked for a small window.
//!
//! The client here is a raw socket: tungstenite (the other suites' client) has no
//! permessage-deflate, and these tests must see RSV1 and the compressed bytes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const ON: &str = "[delivery]\ncompression = \"on\"\n[testing]\necho_path = \"/echo\"";

/// A WebSocket client on a raw socket.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// The answer's `Sec-WebSocket-Extensions`, if any.
    extension: Option<String>,
}

/// One server frame.
struct In {
    b0: u8,
    payload: Vec<u8>,
}

impl In {
    fn rsv1(&self) -> bool {
        self.b0 & 0x40 != 0
    }
    fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }
}

impl Raw {
    fn connect(s: &Server, path: &str, offers: &[&str]) -> Raw {
        let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        sock.set_nodelay(true).unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for o in offers {
            req.push_str(&format!("Sec-WebSocket-Extensions: {o}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).unwrap();
        let mut raw = Raw {
            s: sock,
            buf: Vec::new(),
            extension: None,
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                raw.fill(Instant::now() + Duration::from_secs(10)),
                "no answer"
            );
        };
        let head = String::from_utf8(raw.buf[..end].to_vec()).unwrap();
        raw.buf.drain(..end);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.extension = head.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_string())
        });
        raw
    }

    /// Reads more bytes; `false` at the deadline or end of stream.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.s.set_read_timeout(Some(left)).unwrap();
        let mut b = [0u8; 65536];
        match self.s.read(&mut b) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
        }
    }

    /// The next frame within 10 s.
    fn frame(&mut self) -> In {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let f = In {
                        b0: self.buf[0],
                        payload: self.buf[at..at + len].to_vec(),
                    };
                    self.buf.drain(..at + len);
                    return f;
                }
            }
            assert!(self.fill(deadline), "no frame within 10 s");
        }
    }

    /// The next text message, skipping server pings; `(compressed, raw payload)`.
    fn text(&mut self) -> In {
        loop {
            let f = self.frame();
            assert_eq!(f.b0 & 0x80, 0x80, "the server does not fragment");
            if f.opcode() == 1 || f.opcode() == 2 {
                return f;
            }
            assert_ne!(f.opcode(), 8, "closed: {:?}", f.payload);
        }
    }

    /// The close code the server sent (reading past other frames).
    fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame();
            if f.opcode() == 8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    fn send(&mut self, b0: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![b0];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.s.write_all(&f).unwrap();
    }

    fn send_text(&mut self, v: &Value) {
        self.send(0x81, v.to_string().as_bytes());
    }

    /// A JSON message, inflated if compressed.
    fn json(&mut self) -> Value {
        let f = self.text();
        let plain = if f.rsv1() {
            inflate(&f.payload, 15)
        } else {
            f.payload
        };
        serde_json::from_slice(&plain).unwrap()
    }

    fn json_type(&mut self, typ: &str) -> Value {
        loop {
            let m = self.json();
            if m["type"] == typ {
                return m;
            }
            assert_eq!(m["type"], "ping", "expected {typ}, got {m}");
        }
    }
}

/// Inflates one server message with a window of `2^bits` (no context: the server
/// answers `server_no_context_takeover`).
fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut z = Decompress::new_with_window_bits(false, bits);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    loop {
        let before = z.total_in() as usize;
        z.decompress_vec(&input[before..], &mut out, FlushDecompress::Sync)
            .expect("valid deflate data for this window");
        if z.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// A client-side compressor; `keep`: context takeover across messages.
struct Deflater {
    z: Compress,
    keep: bool,
}

impl Deflater {
    fn new(keep: bool) -> Deflater {
        Deflater {
            z: Compress::new(Compression::default(), false),
            keep,
        }
    }

    fn message(&mut self, plain: &[u8]) -> Vec<u8> {
        if !self.keep {
            self.z.reset();
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let start = self.z.total_in();
        loop {
            let done = (self.z.total_in() - start) as usize;
            self.z
                .compress_vec(&plain[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (self.z.total_in() - start) as usize == plain.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }
}

#[test]
fn negotiation_answers_offers() {
    let s = Server::start(ON);
    let answer = |offers: &[&str]| Raw::connect(&s, "/echo", offers).extension;
    assert_eq!(answer(&[]), None);
    assert_eq!(
        answer(&["permessage-deflate"]).as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    assert_eq!(
        answer(&["permessage-deflate; client_max_window_bits; server_max_window_bits=10"])
            .as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
    );
    // Several offers in one header and across headers: the first valid one wins.
    assert_eq!(
        answer(&[
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; bogus",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover"
        ])
        .as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // An invalid offer alone is declined, not fatal: the connection goes on plain.
    let mut c = Raw::connect(
        &s,
        "/echo",
        &["permessage-deflate; server_max_window_bits=16"],
    );
    assert_eq!(c.extension, None);
    c.send(0x81, b"plain");
    let f = c.text();
    assert!(!f.rsv1());
    assert_eq!(f.payload, b"plain");

    // `off` declines every offer.
    let off = Server::start("[testing]\necho_path = \"/echo\"");
    assert_eq!(
        Raw::connect(&off, "/echo", &["permessage-deflate"]).extension,
        None
    );
}

#[test]
fn compressed_client_messages_with_and_without_context_takeover() {
    let s = Server::start(ON);
    for (offer, keep) in [
        ("permessage-deflate", true),
        ("permessage-deflate; client_no_context_takeover", false),
    ] {
        let mut c = Raw::connect(&s, "/echo", &[offer]);
        assert!(c.extension.is_some());
        let mut d = Deflater::new(keep);
        let text = "the same words again and again, the same words again".repeat(20);
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let z = d.message(text.as_bytes());
            sizes.push(z.len());
            c.send(0x81 | 0x40, &z);
            let f = c.text();
            assert!(f.rsv1(), "the echo is compressed");
            assert_eq!(inflate(&f.payload, 15), text.as_bytes());
        }
        // With context takeover the later messages refer back to the first.
        assert_eq!(keep, sizes[1] < sizes[0], "{offer}: {sizes:?}");
        // A compressed message in three fragments: RSV1 on the first only.
        let z = d.message(b"fragmented and compressed");
        let (a, rest) = z.split_at(3);
        let (b, tail) = rest.split_at(2);
        c.send(0x01 | 0x40, a);
        c.send(0x00, b);
        c.send(0x80, tail);
        assert_eq!(inflate(&c.text().payload, 15), b"fragmented and compressed");
    }

    // On /ws: a compressed command is answered like a plain one.
    let mut c = Raw::connect(&s, "/ws", &["permessage-deflate"]);
    let auth = json!({"type": "auth", "token": token("u1", "user", &["*"])});
    let mut d = Deflater::new(true);
    c.send(0x81 | 0x40, &d.message(auth.to_string().as_bytes()));
    c.json_type("authenticated");
    let sub = json!({"type": "subscribeEvents", "requestId": "r1",
        "subscriptions": [{"id": "a", "path": "t"}]});
    c.send(0x81 | 0x40, &d.message(sub.to_string().as_bytes()));
    assert_eq!(c.json_type("subscribedEvents")["requestId"], "r1");
}

#[test]
fn deflate_bomb_is_closed_1009() {
    let s = Server::start(ON);
    // 64 MiB of zeros in about 64 KiB: far past max_message_bytes (64 KiB) once inflated.
    let mut d = Deflater::new(false);
    let bomb = d.message(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 65_536, "{}", bomb.len());
    let mut c = Raw::connect(&s, "/ws", &["permessage-deflate"]);
    c.send(0x81 | 0x40, &bomb);
    assert_eq!(c.close_code(), 1009);
    // Invalid deflate data: 1007.
    let mut c = Raw::connect(&s, "/ws", &["permessage-deflate"]);
    c.send(0x81 | 0x40, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(c.close_code(), 1007);
}

#[test]
fn rsv1_without_the_extension_is_a_protocol_error() {
    let s = Server::start(ON);
    let mut c = Raw::connect(&s, "/echo", &[]);
    c.send(0x81 | 0x40, &Deflater::new(false).message(b"hello"));
    assert_eq!(c.close_code(), 1002);
    // RSV1 on a control frame, even with the extension.
    let mut c = Raw::connect(&s, "/echo", &["permessage-deflate"]);
    c.send(0x89 | 0x40, b"");
    assert_eq!(c.close_code(), 1002);
}

/// Subscribes `c` (authenticated by URL) to path `t`.
fn subscriber(s: &Server, options: &str, offers: &[&str]) -> Raw {
    let t = token("u1", "user", &["*"]);
    let mut c = Raw::connect(s, &format!("/ws?token={t}{options}"), offers);
    c.json_type("authenticated");
    c.send_text(&json!({"type": "subscribeEvents", "requestId": "r",
        "subscriptions": [{"id": "a", "path": "t"}]}));
    c.json_type("subscribedEvents");
    c
}

#[test]
fn compressed_events_inflate_to_the_plain_bytes() {
    let s = Server::start(ON);
    // `frames` unbatched, and `array` flushed at batchMax only, so every subscriber's
    // flushes hold the same events and so the same bytes.
    for options in ["&batchMs=0", "&batchMs=60000&batchMax=4&framing=array"] {
        let mut plain = subscriber(&s, options, &[]);
        // Two compressed members of one feed (same subscription and options) and one
        // that asked for a 512-byte window.
        let mut z1 = subscriber(&s, options, &["permessage-deflate"]);
        let mut z2 = subscriber(&s, options, &["permessage-deflate"]);
        let mut small = subscriber(
            &s,
            options,
            &["permessage-deflate; server_max_window_bits=9"],
        );
        assert!(z1.extension.is_some() && small.extension.is_some());
        let events: Vec<Value> = (0..8)
            .map(|i| {
                json!({"path": "t", "eventType": "e",
                    "data": {"i": i, "text": "compressible ".repeat(if i % 2 == 0 { 5 } else { 90 })}})
            })
            .collect();
        s.publish_batch(events);
        let mut got = 0;
        while got < 8 {
            let p = plain.text();
            assert!(!p.rsv1());
            let a = z1.text();
            let b = z2.text();
            let w = small.text();
            assert!(a.rsv1() && w.rsv1(), "{options}");
            assert_eq!(
                a.payload, b.payload,
                "feed members share one compressed frame"
            );
            assert_eq!(inflate(&a.payload, 15), p.payload, "{options}");
            assert_eq!(
                inflate(&w.payload, 9),
                p.payload,
                "{options}: 512-byte window"
            );
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            got += if v["type"] == "batch" {
                v["messages"].as_array().unwrap().len()
            } else {
                1
            };
        }
        assert_eq!(got, 8, "{options}");
    }
}
