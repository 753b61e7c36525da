//! RFC 6455 framing without I/O: parse client frames, encode server frame headers,
//! validate close payloads and UTF-8 across fragments.
//!
//! Owned by nobody: pure functions and small value types, used by the shard's connection
//! code (`shard::conn`), the echo endpoint, the fuzz target and the benches. Server frames
//! are never masked, so one encoded frame can be written to every socket that gets it.

use thiserror::Error;

/// Frame opcodes this server understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may not be fragmented and carry ≤ 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Why a client's bytes are not acceptable WebSocket; each maps to a close code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WsError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("client frame is not masked")]
    Unmasked,
    #[error("frame length does not fit in 63 bits")]
    BadLength,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is unfinished")]
    ExpectedContinuation,
    #[error("message of {0} bytes exceeds the limit")]
    TooBig(u64),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame payload is malformed")]
    BadClosePayload,
}

impl WsError {
    /// The close code RFC 6455 §7.4.1 assigns to this failure.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig(_) => close::TOO_BIG,
            WsError::InvalidUtf8 => close::INVALID_PAYLOAD,
            _ => close::PROTOCOL_ERROR,
        }
    }
}

/// Close codes, the protocol's (PROTOCOL.md §11) and RFC 6455's, in one place.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    /// RFC 6455's "try again later": `max_connections` reached, or (cluster mode) what
    /// the connection needs is out of reach (Redis).
    pub const SERVER_FULL: u16 = 1013;
    pub const UNAUTHORIZED: u16 = 4001;
    pub const AUTH_TIMEOUT: u16 = 4002;
    pub const HEARTBEAT_TIMEOUT: u16 = 4003;
}

/// A parsed frame header; the payload follows at `header_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    pub payload_len: u64,
    pub header_len: usize,
    /// RSV1: the message is compressed (permessage-deflate, RFC 7692), set on the first
    /// frame of a data message only.
    pub rsv1: bool,
}

/// The first header byte's bit that marks a permessage-deflate message (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// Parses a client frame header at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    parse_header_with(buf, false)
}

/// As [`parse_header`]; `deflate`: permessage-deflate was negotiated, so RSV1 is allowed
/// on the first frame of a text or binary message (never on a control frame or a
/// continuation, RFC 7692 §6.1).
pub fn parse_header_with(buf: &[u8], deflate: bool) -> Result<Option<FrameHeader>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let rsv1 = b0 & RSV1 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(WsError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
    if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(WsError::Unmasked);
    }
    let (payload_len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(WsError::BadLength);
            }
            (n, 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() && (!fin || payload_len > 125) {
        return Err(WsError::BadControlFrame);
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[at..at + 4]);
    at += 4;
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len: at,
        rsv1,
    }))
}

/// Unmasks `data` in place; the mask is applied word-wise because echo and large
/// commands pass through here.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_ne_bytes(w) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Longest server frame header: 2 bytes + 8 length bytes, no mask.
pub const MAX_HEADER: usize = 10;

/// Encodes an unmasked, final frame header for `len` payload bytes into `out`; returns
/// its length.
pub fn encode_header(out: &mut [u8; MAX_HEADER], opcode: OpCode, len: usize) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends a whole unmasked frame (header and payload) to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER];
    let n = encode_header(&mut h, opcode, payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit the 125-byte limit on a
/// character boundary).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, OpCode::Close, &p);
}

/// Validates a received close payload; returns the code to echo back.
pub fn parse_close_payload(p: &[u8]) -> Result<u16, WsError> {
    match p.len() {
        0 => Ok(close::NORMAL),
        1 => Err(WsError::BadClosePayload),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            // RFC 6455 §7.4: codes a peer may send; 1004-1006 and 1015 are reserved.
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(WsError::BadClosePayload);
            }
            std::str::from_utf8(&p[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(code)
        }
    }
}

/// Checks UTF-8 of a text message as its fragments arrive, so an invalid sequence fails
/// at the fragment that contains it rather than at the end of the message.
///
/// `checked` counts the bytes already known to be complete, valid characters.
#[derive(Default, Debug)]
pub struct Utf8Check {
    checked: usize,
}

impl Utf8Check {
    /// `buf` is the message so far; returns an error as soon as it cannot be valid.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), WsError> {
        match std::str::from_utf8(&buf[self.checked..]) {
            Ok(_) => {
                self.checked = buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: the next fragment may finish it.
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(WsError::InvalidUtf8),
        }
    }

    /// The message is complete: every byte must now be checked.
    pub fn finish(&mut self, buf: &[u8]) -> Result<(), WsError> {
        self.feed(buf)?;
        if self.checked == buf.len() {
            Ok(())
        } else {
            Err(WsError::InvalidUtf8)
        }
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(0x80 | n as u8);
        } else if n < 65536 {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        v.extend_from_slice(&p);
        v
    }

    #[test]
    fn parses_every_length_form_and_unmasks() {
        for n in [0usize, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let f = masked(0x2, true, &payload, [1, 2, 3, 4]);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, n);
            assert_eq!(h.opcode, OpCode::Binary);
            let mut p = f[h.header_len..].to_vec();
            unmask(&mut p, h.mask);
            assert_eq!(p, payload);
            // Every strict prefix of the header is "need more".
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        assert_eq!(
            parse_header(&[0x81 | 0x40, 0x80, 0, 0, 0, 0]),
            Err(WsError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80, 0, 0, 0, 0]),
            Err(WsError::UnknownOpcode(3))
        );
        assert_eq!(parse_header(&[0x81, 0x00]), Err(WsError::Unmasked));
        // Fragmented ping, and a ping of 126 bytes.
        assert_eq!(
            parse_header(&[0x09, 0x80, 0, 0, 0, 0]),
            Err(WsError::BadControlFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 0x80 | 126, 0, 126]),
            Err(WsError::BadControlFrame)
        );
        let mut big = vec![0x82, 0xFF];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&big), Err(WsError::BadLength));
    }

    #[test]
    fn rsv1_only_with_deflate_and_only_on_data_frames() {
        let text = [0x81 | RSV1, 0x80, 0, 0, 0, 0];
        assert_eq!(parse_header(&text), Err(WsError::ReservedBits));
        assert!(parse_header_with(&text, true).unwrap().unwrap().rsv1);
        for b0 in [0x80 | RSV1, 0x89 | RSV1, 0x81 | 0x20, 0x81 | 0x10] {
            assert_eq!(
                parse_header_with(&[b0, 0x80, 0, 0, 0, 0], true),
                Err(WsError::ReservedBits),
                "{b0:#x}"
            );
        }
    }

    #[test]
    fn header_encoding_matches_lengths() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(encode_header(&mut h, OpCode::Text, 125), 2);
        assert_eq!(h[..2], [0x81, 125]);
        assert_eq!(encode_header(&mut h, OpCode::Text, 126), 4);
        assert_eq!(h[..4], [0x81, 126, 0, 126]);
        assert_eq!(encode_header(&mut h, OpCode::Binary, 65536), 10);
        assert_eq!(h[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(1000));
        assert_eq!(parse_close_payload(&[3]), Err(WsError::BadClosePayload));
        assert_eq!(parse_close_payload(&[0x03, 0xE8, b'o', b'k']), Ok(1000));
        assert_eq!(
            parse_close_payload(&[0x03, 0xED]),
            Err(WsError::BadClosePayload)
        ); // 1005
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(WsError::InvalidUtf8)
        );
        let mut out = Vec::new();
        write_close(&mut out, 4001, &"é".repeat(100));
        assert!(out.len() <= 127);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 4001);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn utf8_across_fragments() {
        let s = "κόσμε".as_bytes();
        let mut c = Utf8Check::default();
        // Split inside a two-byte character: fine until finished.
        c.feed(&s[..3]).unwrap();
        c.finish(s).unwrap();
        let mut c = Utf8Check::default();
        assert_eq!(c.feed(&[b'a', 0xFF]), Err(WsError::InvalidUtf8));
        let mut c = Utf8Check::default();
        c.feed(&[0xCE]).unwrap();
        assert_eq!(c.finish(&[0xCE]), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn accept_key_is_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
