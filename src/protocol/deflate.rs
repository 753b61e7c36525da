//! permessage-deflate (RFC 7692) without I/O: the negotiation of a client's
//! `Sec-WebSocket-Extensions` offers, the shard's compressor and a connection's inflater.
//!
//! Owned by nobody: pure functions and small value types, used by the shard's upgrade
//! (`shard::http_conn`), its flush path (`shard::fanout`, which compresses a frame once for
//! every connection that gets it) and its reader (`shard::ws_conn`). The server always
//! answers with `server_no_context_takeover`: each server message is compressed on its
//! own, so one compressed frame is valid on every connection that negotiated the
//! extension, whatever else it sent before.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use thiserror::Error;

use super::ws;

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// Level of the server's compressor. Measured (docs/PERFORMANCE.md, "Compression
/// (permessage-deflate)"): level 1 makes an event 13% larger than level 6 in a quarter
/// to a third of the time, and that time is spent on the shard's thread.
pub const LEVEL: u32 = 1;

/// The four bytes a sync flush ends with; RFC 7692 §7.2.1 takes them off each message
/// and §7.2.2 puts them back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What a connection agreed to (the accepted offer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The client's `server_max_window_bits` (15 when it did not ask; 9..=15, an offer
    /// of 8 is declined: zlib has no raw 256-byte window). Each message is compressed
    /// without context, so it refers back at most its own length: the shared form
    /// (32 KiB window) is valid for this window when the message is at most `2^bits`
    /// long; a longer one is compressed for this connection with its window.
    pub server_window_bits: u8,
    /// The offer named `server_max_window_bits`: the answer repeats it (RFC 7692
    /// §7.1.2.1 accepts the parameter by including it), even at 15.
    pub server_window_asked: bool,
    /// The client offered `client_no_context_takeover`: it compresses each message on
    /// its own, so its inflater need not be kept between messages.
    pub client_no_context_takeover: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut r = format!("{EXTENSION}; server_no_context_takeover");
        if self.server_window_asked {
            r.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        if self.client_no_context_takeover {
            r.push_str("; client_no_context_takeover");
        }
        r
    }

    /// Whether the shared (32 KiB window) compressed form of a message of `len` plain
    /// bytes is valid on this connection.
    pub fn fits_window(&self, len: usize) -> bool {
        self.server_window_bits >= 15 || len <= 1usize << self.server_window_bits
    }
}

/// Picks the first acceptable `permessage-deflate` offer of the request's
/// `Sec-WebSocket-Extensions` header values (each may list several offers). An offer
/// that breaks RFC 7692 §7.1 (unknown or repeated parameter, a bad window value) is
/// declined, not fatal: the next one is tried, and without one the connection goes on
/// uncompressed.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    for value in values {
        for offer in split_outside_quotes(value, ',') {
            let mut parts = split_outside_quotes(offer, ';').into_iter();
            let name = parts.next().unwrap_or("").trim();
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            if let Some(a) = accept_offer(parts) {
                return Some(a);
            }
        }
    }
    None
}

/// One offer's parameters; `None`: declined.
fn accept_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut agreed = Agreed {
        server_window_bits: 15,
        server_window_asked: false,
        client_no_context_takeover: false,
    };
    let mut seen = [false; 4];
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p.trim(), None),
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            // We answer with it whether or not it was asked.
            0 if value.is_none() => {}
            1 if value.is_none() => agreed.client_no_context_takeover = true,
            2 => {
                agreed.server_window_bits = window_bits(value?).filter(|&b| b >= 9)?;
                agreed.server_window_asked = true;
            }
            // Any client window inflates with ours (32 KiB): the answer leaves it out.
            3 => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// RFC 7692 §7.1.2: a decimal 8..=15 without leading zeros.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value as a token or a quoted string (RFC 6455 §9.1); `None` if malformed.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            // Window values never need escapes or quotes inside.
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(v),
    }
}

/// Splits at `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut from) = (false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

/// The shard's compressor: each message compressed on its own (no context kept), so its
/// output is valid on every connection that negotiated the extension.
/// Its deflate states (a few hundred KiB each) are made on first use, one per window
/// size in use: a shard whose clients never negotiate the extension holds none.
#[derive(Default)]
pub struct Compressor {
    /// By window bits − 9.
    z: [Option<Compress>; 7],
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    /// Appends to `out` the whole compressed frame (header with RSV1, then the
    /// compressed payload) of the message made of `parts` in order, with a window of
    /// `2^window_bits` (9..=15); `false` (and `out` as it was) if the compressor failed,
    /// so it goes out plain. A message that does not get smaller is still sent
    /// compressed: a few bytes more on short messages, and one message type on the
    /// wire for clients that mishandle mixing (kosoku does).
    pub fn frame(
        &mut self,
        opcode: ws::OpCode,
        parts: &[&[u8]],
        window_bits: u8,
        out: &mut Vec<u8>,
    ) -> bool {
        let mark = out.len();
        // Room for the longest header first; the payload is moved up once its length is
        // known (a 2- or 4-byte header in the common case).
        out.resize(mark + ws::MAX_HEADER, 0);
        let body = out.len();
        if self.compress(parts, window_bits, out).is_none() {
            out.truncate(mark);
            return false;
        }
        let len = out.len() - body;
        let mut h = [0u8; ws::MAX_HEADER];
        let hn = ws::encode_header(&mut h, opcode, len);
        h[0] |= ws::RSV1;
        out.copy_within(body.., mark + hn);
        out.truncate(mark + hn + len);
        out[mark..mark + hn].copy_from_slice(&h[..hn]);
        true
    }

    /// Appends the compressed payload of `parts` (sync flush, tail removed) to `out`.
    fn compress(&mut self, parts: &[&[u8]], window_bits: u8, out: &mut Vec<u8>) -> Option<()> {
        let bits = window_bits.clamp(9, 15);
        let z = self.z[bits as usize - 9].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
        z.reset();
        for (i, part) in parts.iter().enumerate() {
            let flush = if i + 1 == parts.len() {
                FlushCompress::Sync
            } else {
                FlushCompress::None
            };
            feed(z, part, flush, out)?;
        }
        if parts.is_empty() {
            feed(z, &[], FlushCompress::Sync, out)?;
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        Some(())
    }
}

fn feed(z: &mut Compress, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) -> Option<()> {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(input.len() / 2 + 64);
        }
        let before = z.total_in();
        z.compress_vec(input, out, flush).ok()?;
        input = &input[(z.total_in() - before) as usize..];
        // Done when the input is taken and (for a flush) the output had room left.
        if input.is_empty() && (flush == FlushCompress::None || out.len() < out.capacity()) {
            return Some(());
        }
    }
}

/// Why a compressed client message was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("compressed message inflates past the limit of {0} bytes")]
    TooBig(usize),
    #[error("compressed message is not valid deflate data")]
    Corrupt,
}

impl InflateError {
    pub fn close_code(&self) -> u16 {
        match self {
            InflateError::TooBig(_) => ws::close::TOO_BIG,
            InflateError::Corrupt => ws::close::INVALID_PAYLOAD,
        }
    }
}

/// A connection's inflater: kept between messages while the client keeps its context
/// (context takeover), started over when a message ends the deflate stream.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new(false),
        }
    }
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

/// Output is grown by at most this much at a time, so a message far under the limit
/// does not reserve the whole limit.
const INFLATE_STEP: usize = 16 * 1024;

impl Inflater {
    /// Inflates one message (the compressed payload of all its frames) into `out`.
    /// Stops with `TooBig` as soon as the output passes `max` bytes: the work is bounded
    /// by the input's length plus `max`, whatever the ratio of a crafted message.
    pub fn message(
        &mut self,
        payload: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let mut ended = self.run(payload, FlushDecompress::None, max, out)?;
        if !ended {
            ended = self.run(&TAIL, FlushDecompress::Sync, max, out)?;
        }
        if ended {
            // A final block ended the stream: the next message starts a new one.
            self.z.reset(false);
        }
        Ok(())
    }

    /// Feeds `input`; `true` if the deflate stream ended.
    fn run(
        &mut self,
        mut input: &[u8],
        flush: FlushDecompress,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, InflateError> {
        loop {
            if out.len() > max {
                return Err(InflateError::TooBig(max));
            }
            if out.len() == out.capacity() {
                // One byte past the limit is enough to know it was passed.
                let room = (max + 1 - out.len()).min(INFLATE_STEP.max(input.len() * 4));
                out.reserve_exact(room);
            }
            let (in0, out0) = (self.z.total_in(), out.len());
            let status = self
                .z
                .decompress_vec(input, out, flush)
                .map_err(|_| InflateError::Corrupt)?;
            input = &input[(self.z.total_in() - in0) as usize..];
            match status {
                Status::StreamEnd => {
                    if out.len() > max {
                        return Err(InflateError::TooBig(max));
                    }
                    return Ok(true);
                }
                Status::Ok | Status::BufError => {
                    let room_left = out.len() < out.capacity();
                    if input.is_empty() && room_left {
                        return Ok(false);
                    }
                    if status == Status::BufError && out.len() == out0 && room_left {
                        // No progress with input and room: truncated or stuck data.
                        return Err(InflateError::Corrupt);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(bits: u8, client_nct: bool) -> Option<Agreed> {
        Some(Agreed {
            server_window_bits: bits,
            server_window_asked: bits < 15,
            client_no_context_takeover: client_nct,
        })
    }

    #[test]
    fn negotiates_offers_and_parameters() {
        assert_eq!(negotiate(["permessage-deflate"]), agreed(15, false));
        assert_eq!(
            negotiate(["permessage-deflate; client_max_window_bits"]),
            agreed(15, false)
        );
        assert_eq!(
            negotiate([
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"
            ]),
            agreed(10, true)
        );
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=\"12\""]),
            agreed(12, false)
        );
        // Several offers: the first valid one wins, across header lines too.
        assert_eq!(
            negotiate([
                "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=9"
            ]),
            agreed(9, false)
        );
        assert_eq!(
            negotiate(["foo", "permessage-deflate; client_no_context_takeover"]),
            agreed(15, true)
        );
        assert_eq!(
            agreed(9, true).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_no_context_takeover"
        );
        assert_eq!(
            agreed(15, false).unwrap().response(),
            "permessage-deflate; server_no_context_takeover"
        );
        // Asked at 15: accepted by repeating it.
        let a = negotiate(["permessage-deflate; server_max_window_bits=15"]).unwrap();
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
        );
    }

    #[test]
    fn declines_invalid_offers() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"9",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([bad]), None, "{bad}");
        }
    }

    fn inflate_frame(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0] & ws::RSV1, ws::RSV1);
        let h = 2 + match frame[1] {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mut out = Vec::new();
        Inflater::default()
            .message(&frame[h..], 1 << 20, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn compresses_each_message_alone() {
        let mut c = Compressor::default();
        let msg = br#"{"type":"event","subscriptionIds":["s1"],"channel":"prices/eu","event":"tick","seq":1,"data":{"price":1.5,"price2":1.5,"price3":1.5}}"#;
        for _ in 0..3 {
            let mut out = vec![9];
            assert!(c.frame(ws::OpCode::Text, &[&msg[..20], &msg[20..]], 15, &mut out));
            assert_eq!(out[0], 9);
            assert_eq!(out[1], 0x80 | ws::RSV1 | 0x1);
            assert!(out.len() < msg.len());
            assert_eq!(inflate_frame(&out[1..]), msg);
        }
        // Too short to gain: compressed all the same.
        let mut out = Vec::new();
        assert!(c.frame(ws::OpCode::Binary, &[b"ab"], 15, &mut out));
        assert_eq!(inflate_frame(&out), b"ab");
        // A long message gets the long header form, with each window.
        let long: Vec<u8> = (0..300_000u32).map(|i| (i % 1000 / 7) as u8).collect();
        for bits in [9, 12, 15] {
            let mut out = Vec::new();
            assert!(c.frame(ws::OpCode::Binary, &[&long], bits, &mut out));
            assert_eq!(inflate_frame(&out), long);
        }
    }

    #[test]
    fn inflates_with_context_takeover() {
        // A client keeping its context: the second message refers to the first.
        let mut z = Compress::new(Compression::default(), false);
        let mut msgs = Vec::new();
        for text in ["hello hello hello", "hello hello hello"] {
            let mut out = Vec::with_capacity(256);
            z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            msgs.push(out);
        }
        assert!(msgs[1].len() < msgs[0].len());
        let mut inf = Inflater::default();
        for m in &msgs {
            let mut out = Vec::new();
            inf.message(m, 100, &mut out).unwrap();
            assert_eq!(out, b"hello hello hello");
        }
        // A message ending the stream (BFINAL) starts the next one afresh.
        let mut fin = Vec::with_capacity(256);
        let mut z = Compress::new(Compression::default(), false);
        z.compress_vec(b"abc", &mut fin, FlushCompress::Finish)
            .unwrap();
        for _ in 0..2 {
            let mut out = Vec::new();
            inf.message(&fin, 100, &mut out).unwrap();
            assert_eq!(out, b"abc");
        }
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        // 16 MiB of zeros compresses to ~16 KB.
        let zeros = vec![0u8; 16 << 20];
        let mut bomb = Vec::with_capacity(1 << 20);
        let mut z = Compress::new(Compression::best(), false);
        z.compress_vec(&zeros, &mut bomb, FlushCompress::Sync)
            .unwrap();
        assert!(bomb.len() < 100_000);
        let mut out = Vec::new();
        let r = Inflater::default().message(&bomb, 65_536, &mut out);
        assert_eq!(r, Err(InflateError::TooBig(65_536)));
        assert!(out.len() <= 65_537);
        let mut out = Vec::new();
        assert_eq!(
            Inflater::default().message(&[0xff, 0xff, 0xff], 100, &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
