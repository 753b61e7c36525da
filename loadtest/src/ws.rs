//! Client side of RFC 6455: the upgrade request and its check, masked frame encoding, and
//! an incremental frame decoder that works in place on a read buffer.

use base64::Engine;
use sha1::{Digest, Sha1};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest frame the decoder accepts (a `framing=array` flush of 1000 big events fits).
pub const MAX_FRAME: u64 = 64 * 1024 * 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Appends one frame to `out`. With `mask` (client frames must have one) the payload is
/// XORed with it as RFC 6455 section 5.3 says; without, the frame is a server frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], m);
        }
        None => out.extend_from_slice(payload),
    }
}

/// XORs `buf` with the 4-byte mask, starting at mask offset 0.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m32 = u32::from_ne_bytes(mask);
    let m64 = (u64::from(m32) << 32) | u64::from(m32);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // chunks of 8 keep the mask phase at 0
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A decoded frame; its payload is unmasked and lives in the caller's buffer.
#[derive(Debug, PartialEq)]
pub struct Frame<'a> {
    pub fin: bool,
    /// RSV1: a permessage-deflate message's first frame.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
}

#[derive(Debug, PartialEq)]
pub enum Decode<'a> {
    /// A whole frame and the number of bytes it used.
    Frame(Frame<'a>, usize),
    /// Not enough bytes yet; `need` is the total the frame will take when known (else the
    /// header size still missing is at least 1 byte).
    Incomplete { need: usize },
    /// The peer broke the protocol; the connection should be failed (close 1002).
    Error(&'static str),
}

/// Decodes one frame at the start of `buf`. A masked frame (not expected from a server, but
/// tolerated) is unmasked in place, which is why `buf` is mutable.
pub fn decode_frame(buf: &mut [u8]) -> Decode<'_> {
    if buf.len() < 2 {
        return Decode::Incomplete { need: 2 };
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 {
        return Decode::Error("reserved bits set");
    }
    let opcode = b0 & 0x0F;
    if rsv1 && !matches!(opcode, OP_TEXT | OP_BINARY) {
        return Decode::Error("RSV1 on a control or continuation frame");
    }
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Decode::Error("fragmented control frame");
            }
        }
        _ => return Decode::Error("unknown opcode"),
    }
    let masked = b1 & 0x80 != 0;
    let len7 = (b1 & 0x7F) as u64;
    let (len, mut hdr) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Decode::Incomplete { need: 4 };
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4usize)
        }
        127 => {
            if buf.len() < 10 {
                return Decode::Incomplete { need: 10 };
            }
            let v = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if v >> 63 != 0 {
                return Decode::Error("frame length has its top bit set");
            }
            (v, 10usize)
        }
        n => (n, 2usize),
    };
    if opcode >= OP_CLOSE && len > 125 {
        return Decode::Error("control frame longer than 125 bytes");
    }
    if len > MAX_FRAME {
        return Decode::Error("frame too large");
    }
    let mask = if masked {
        if buf.len() < hdr + 4 {
            return Decode::Incomplete { need: hdr + 4 };
        }
        let m = [buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]];
        hdr += 4;
        Some(m)
    } else {
        None
    };
    let total = hdr + len as usize;
    if buf.len() < total {
        return Decode::Incomplete { need: total };
    }
    let payload = &mut buf[hdr..total];
    if let Some(m) = mask {
        apply_mask(payload, m);
    }
    Decode::Frame(
        Frame {
            fin,
            rsv1,
            opcode,
            payload,
        },
        total,
    )
}

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh random `Sec-WebSocket-Key` (base64 of 16 random bytes).
pub fn random_key(rng: &mut crate::util::Rng) -> String {
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The HTTP/1.1 upgrade request.
pub fn handshake_request(host: &str, path_and_query: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: shardcast-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// Adds a permessage-deflate offer (RFC 7692) to an upgrade request.
pub fn offer_deflate(request: &mut Vec<u8>) {
    let at = request.len() - 2;
    request.splice(
        at..at,
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
            .iter()
            .copied(),
    );
}

/// Inflates server messages compressed without context (`server_no_context_takeover`):
/// one per thread, started afresh for each message.
pub struct Inflater {
    z: flate2::Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: flate2::Decompress::new(false),
            out: Vec::with_capacity(64 * 1024),
        }
    }
}

impl Inflater {
    /// The plain message of one compressed payload (all its frames).
    pub fn message(&mut self, payload: &[u8]) -> Result<&[u8], &'static str> {
        self.z.reset(false);
        self.out.clear();
        for (input, flush) in [
            (payload, flate2::FlushDecompress::None),
            (&[0, 0, 0xff, 0xff][..], flate2::FlushDecompress::Sync),
        ] {
            let mut input = input;
            loop {
                if self.out.len() == self.out.capacity() {
                    self.out.reserve(self.out.capacity().max(4096));
                }
                let before = self.z.total_in();
                let status = self
                    .z
                    .decompress_vec(input, &mut self.out, flush)
                    .map_err(|_| "bad deflate data")?;
                input = &input[(self.z.total_in() - before) as usize..];
                if status == flate2::Status::StreamEnd {
                    return Ok(&self.out);
                }
                if input.is_empty() && self.out.len() < self.out.capacity() {
                    break;
                }
                if self.out.len() > MAX_FRAME as usize {
                    return Err("inflated message too large");
                }
            }
        }
        Ok(&self.out)
    }
}

#[derive(Debug, PartialEq)]
pub enum HandshakeError {
    /// The server answered with this status instead of 101.
    Status(u16),
    /// Not HTTP, missing or wrong upgrade headers.
    Bad(&'static str),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Status(s) => write!(f, "upgrade refused: HTTP {s}"),
            HandshakeError::Bad(m) => write!(f, "bad upgrade response: {m}"),
        }
    }
}

/// Longest upgrade response head accepted.
pub const MAX_HANDSHAKE: usize = 16 * 1024;

/// Checks the server's answer. `Ok(None)`: the head is not complete yet; `Ok(Some(n))`: a
/// valid 101 whose head is `n` bytes (what follows belongs to the WebSocket stream).
pub fn check_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let end = match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None => {
            if buf.len() > MAX_HANDSHAKE {
                return Err(HandshakeError::Bad("response head too long"));
            }
            if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
                return Err(HandshakeError::Bad("not an HTTP response"));
            }
            return Ok(None);
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HandshakeError::Bad("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HandshakeError::Bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HandshakeError::Bad("no status code"))?;
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }
    let mut upgrade = false;
    let mut accept_ok = false;
    let want = accept_key(key);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value == want;
        }
    }
    if !upgrade {
        return Err(HandshakeError::Bad("missing Upgrade: websocket"));
    }
    if !accept_ok {
        return Err(HandshakeError::Bad("wrong Sec-WebSocket-Accept"));
    }
    Ok(Some(end))
}

/// The status code of a close frame payload (1005 when it carries none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, &payload, Some(mask));
        // header size by RFC 6455 length encoding, plus 4 mask bytes
        let hdr = if len < 126 {
            2
        } else if len <= 0xFFFF {
            4
        } else {
            10
        };
        assert_eq!(out.len(), hdr + 4 + len, "len {len}");
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] & 0x80, 0x80, "client frames are masked");
        match len {
            l if l < 126 => assert_eq!(out[1] & 0x7F, l as u8),
            l if l <= 0xFFFF => {
                assert_eq!(out[1] & 0x7F, 126);
                assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, l);
            }
            l => {
                assert_eq!(out[1] & 0x7F, 127);
                assert_eq!(
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                    l
                );
            }
        }
        assert_eq!(&out[hdr..hdr + 4], &mask);
        // the bytes on the wire are payload XOR mask
        for (i, b) in out[hdr + 4..].iter().enumerate() {
            assert_eq!(*b, payload[i] ^ mask[i % 4]);
        }
        // and the decoder gives the payload back
        let mut buf = out.clone();
        match decode_frame(&mut buf) {
            Decode::Frame(f, used) => {
                assert!(f.fin);
                assert_eq!(f.opcode, OP_TEXT);
                assert_eq!(f.payload, &payload[..]);
                assert_eq!(used, out.len());
            }
            other => panic!("len {len}: {other:?}"),
        }
    }

    #[test]
    fn length_boundaries() {
        for len in [0, 1, 124, 125, 126, 127, 65535, 65536, 70000] {
            roundtrip(len);
        }
    }

    #[test]
    fn unmasked_server_frames() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, None);
            assert_eq!(out[1] & 0x80, 0);
            let mut buf = out.clone();
            match decode_frame(&mut buf) {
                Decode::Frame(f, used) => {
                    assert_eq!(f.payload.len(), len);
                    assert_eq!(used, out.len());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn known_mask_vector() {
        // RFC 6455 5.7: a masked "Hello"
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(out, wire);
        let mut buf = wire;
        match decode_frame(&mut buf) {
            Decode::Frame(f, 11) => assert_eq!(f.payload, b"Hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_mask_any_offset_length() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let mut v: Vec<u8> = (0..len as u8).collect();
            apply_mask(&mut v, mask);
            for (i, b) in v.iter().enumerate() {
                assert_eq!(*b, (i as u8) ^ mask[i % 4]);
            }
        }
    }

    #[test]
    fn split_input_every_byte() {
        // three frames back to back (small, 16-bit and 64-bit lengths), fed one byte more
        // at a time: never a frame before it is complete, each exactly once.
        let mut wire = Vec::new();
        let a = b"{\"type\":\"event\"}".to_vec();
        let b = vec![b'b'; 300];
        let c = vec![b'c'; 65536];
        encode_frame(&mut wire, OP_TEXT, &a, None);
        encode_frame(&mut wire, OP_TEXT, &b, None);
        encode_frame(&mut wire, OP_TEXT, &c, None);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for chunk in wire.chunks(997) {
            pending.extend_from_slice(chunk);
            loop {
                match decode_frame(&mut pending) {
                    Decode::Frame(f, used) => {
                        got.push(f.payload.to_vec());
                        pending.drain(..used);
                    }
                    Decode::Incomplete { need } => {
                        assert!(need > pending.len());
                        break;
                    }
                    Decode::Error(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(got, vec![a.clone(), b.clone(), c.clone()]);
        // byte by byte over the first two frames
        let mut pending = Vec::new();
        let mut n = 0;
        let two = 2 + a.len() + 4 + b.len();
        for &byte in &wire[..two] {
            pending.push(byte);
            if let Decode::Frame(_, used) = decode_frame(&mut pending) {
                pending.drain(..used);
                n += 1;
            }
        }
        assert_eq!(n, 2);
        assert!(pending.is_empty());
    }

    #[test]
    fn incomplete_headers() {
        let mut b = [0x81u8];
        assert_eq!(decode_frame(&mut b), Decode::Incomplete { need: 2 });
        let mut b = [0x81u8, 126, 0];
        assert_eq!(decode_frame(&mut b), Decode::Incomplete { need: 4 });
        let mut b = [0x81u8, 127, 0, 0, 0];
        assert_eq!(decode_frame(&mut b), Decode::Incomplete { need: 10 });
        let mut b = [0x81u8, 126, 1, 0];
        assert_eq!(decode_frame(&mut b), Decode::Incomplete { need: 4 + 256 });
    }

    #[test]
    fn protocol_errors() {
        let mut b = [0xA1u8, 0]; // RSV2
        assert!(matches!(decode_frame(&mut b), Decode::Error(_)));
        // RSV1 decodes (permessage-deflate); without --compression the connection
        // refuses it (conn.rs).
        let mut b = [0xC1u8, 0];
        assert!(matches!(decode_frame(&mut b), Decode::Frame(f, 2) if f.rsv1));
        let mut b = [0x83u8, 0]; // opcode 3
        assert!(matches!(decode_frame(&mut b), Decode::Error(_)));
        let mut b = [0x09u8, 0]; // fragmented ping
        assert!(matches!(decode_frame(&mut b), Decode::Error(_)));
        let mut b = [0x89u8, 126, 0, 126]; // long ping
        assert!(matches!(decode_frame(&mut b), Decode::Error(_)));
        let mut b = [0x81u8, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(decode_frame(&mut b), Decode::Error(_)));
    }

    #[test]
    fn fragments_and_control() {
        let mut wire = Vec::new();
        let mut f = Vec::new();
        encode_frame(&mut f, OP_TEXT, b"ab", None);
        f[0] &= 0x7F; // not fin
        wire.extend_from_slice(&f);
        encode_frame(&mut wire, OP_PING, b"p", None);
        encode_frame(&mut wire, OP_CONT, b"cd", None);
        let mut pos = 0;
        let mut seen = Vec::new();
        while pos < wire.len() {
            match decode_frame(&mut wire[pos..]) {
                Decode::Frame(f, used) => {
                    seen.push((f.fin, f.opcode, f.payload.to_vec()));
                    pos += used;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (false, OP_TEXT, b"ab".to_vec()),
                (true, OP_PING, b"p".to_vec()),
                (true, OP_CONT, b"cd".to_vec())
            ]
        );
    }

    #[test]
    fn handshake_accept() {
        // RFC 6455 section 1.3 example
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        assert_eq!(check_handshake_response(ok, key), Ok(Some(ok.len() - 2)));
        assert_eq!(check_handshake_response(&ok[..20], key), Ok(None));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            check_handshake_response(refused, key),
            Err(HandshakeError::Status(401))
        );
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Sec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            check_handshake_response(wrong, key),
            Err(HandshakeError::Bad(_))
        ));
        assert!(matches!(
            check_handshake_response(b"SSH-2.0-OpenSSH\r\n", key),
            Err(HandshakeError::Bad(_))
        ));
        let req = String::from_utf8(handshake_request("h:1", "/ws?token=a", key)).unwrap();
        assert!(req.starts_with("GET /ws?token=a HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn close_codes() {
        assert_eq!(close_code(&[0x0f, 0xa1, b'x']), 4001);
        assert_eq!(close_code(&[]), 1005);
    }

    #[test]
    fn deflate_offer_and_inflate() {
        let mut req = handshake_request("h:1", "/ws", "k");
        offer_deflate(&mut req);
        let req = String::from_utf8(req).unwrap();
        assert!(req.ends_with("Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
        // A message as the server sends it: raw deflate, sync flush, tail removed.
        let plain = br#"{"type":"event","data":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
        let mut z = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut c = Vec::with_capacity(256);
        z.compress_vec(plain, &mut c, flate2::FlushCompress::Sync)
            .unwrap();
        c.truncate(c.len() - 4);
        let mut frame = vec![0x80 | 0x40 | OP_TEXT, c.len() as u8];
        frame.extend_from_slice(&c);
        let Decode::Frame(f, _) = decode_frame(&mut frame) else {
            panic!("frame")
        };
        assert!(f.rsv1);
        let mut inf = Inflater::default();
        for _ in 0..2 {
            assert_eq!(inf.message(f.payload).unwrap(), plain);
        }
        // RSV1 is for data frames only.
        let mut ping = vec![0x80 | 0x40 | OP_PING, 0];
        assert!(matches!(decode_frame(&mut ping), Decode::Error(_)));
    }
}
