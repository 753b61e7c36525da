//! The NATS client protocol, as much of it as the harness speaks (`--target nats`):
//! an incremental parser for what the server sends (`INFO`, `MSG`, `PING`, `PONG`, `+OK`,
//! `-ERR`) and the few lines a client sends.
//!
//! Over WebSocket, nats-server sends binary frames whose payloads, concatenated, are the
//! same byte stream as on a plain TCP connection: a frame may hold several `MSG`s, and a
//! `MSG` (its line or its payload) may be split over frames or reads. The parser is fed
//! whatever arrived and keeps only the bytes of an unfinished item.
//!
//! ```text
//! INFO {...}\r\n
//! MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
//! PING\r\n  PONG\r\n  +OK\r\n  -ERR 'message'\r\n
//! ```

use memchr::memmem::Finder;

/// Longest protocol line accepted (an `INFO` with many cluster URLs stays well below).
pub const MAX_LINE: usize = 64 * 1024;
/// Largest `MSG` payload accepted (nats-server's `max_payload` is 1 MiB by default).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// The first line a harness client sends after the server's `INFO`.
pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// One item from the server. Slices borrow the parser's input (or its partial buffer).
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// The JSON after `INFO `.
    Info(&'a [u8]),
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// The text after `-ERR ` (quotes included, as the server sends it).
    Err(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// An incremental parser; one per connection. Holds no bytes between items.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of an unfinished item (empty most of the time).
    partial: Vec<u8>,
}

/// Outcome of parsing one item at the start of a buffer.
enum Step<'a> {
    Item(Item<'a>, usize),
    /// Not complete; at least this many bytes are needed in all (0: unknown).
    Incomplete,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Bytes held for an unfinished item.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes that arrived; calls `on` for every complete item. After an error the
    /// connection should be dropped (the stream is out of step).
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(Item<'_>)) -> Result<(), ParseError> {
        if self.partial.is_empty() {
            let used = parse_all(data, &mut on)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            return Ok(());
        }
        // an item was cut: finish it (and whatever follows) from the joined bytes
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(data);
        let used = parse_all(&buf, &mut on)?;
        buf.drain(..used);
        if buf.capacity() > MAX_LINE && buf.len() < MAX_LINE / 4 {
            buf.shrink_to_fit();
        }
        self.partial = buf;
        Ok(())
    }
}

/// Parses the complete items at the start of `buf`; returns the bytes used.
fn parse_all(buf: &[u8], on: &mut impl FnMut(Item<'_>)) -> Result<usize, ParseError> {
    let mut pos = 0;
    while pos < buf.len() {
        match parse_one(&buf[pos..])? {
            Step::Item(item, used) => {
                on(item);
                pos += used;
            }
            Step::Incomplete => break,
        }
    }
    Ok(pos)
}

/// The line at the start of `b` without its `\r\n`, and the length with it.
fn line(b: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    match memchr::memchr(b'\n', b) {
        Some(i) => {
            let l = if i > 0 && b[i - 1] == b'\r' {
                &b[..i - 1]
            } else {
                &b[..i]
            };
            Ok(Some((l, i + 1)))
        }
        None if b.len() > MAX_LINE => Err(bad("protocol line longer than 64 KiB")),
        None => Ok(None),
    }
}

fn starts_with_ci(b: &[u8], word: &[u8]) -> bool {
    b.len() >= word.len() && b[..word.len()].eq_ignore_ascii_case(word)
}

fn parse_one(b: &[u8]) -> Result<Step<'_>, ParseError> {
    // fast path: MSG, by far the most frequent
    if starts_with_ci(b, b"MSG ") || starts_with_ci(b, b"MSG\t") {
        let Some((l, line_len)) = line(b)? else {
            return Ok(Step::Incomplete);
        };
        let args: Vec<&[u8]> = l[4..]
            .split(|c| *c == b' ' || *c == b'\t')
            .filter(|a| !a.is_empty())
            .collect();
        let (subject, sid, reply, size) = match args.as_slice() {
            [s, i, n] => (*s, *i, None, *n),
            [s, i, r, n] => (*s, *i, Some(*r), *n),
            _ => return Err(bad(format!("bad MSG line {:?}", lossy(l)))),
        };
        let size = crate::scan::parse_u64(size)
            .filter(|_| size.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| bad(format!("bad MSG size in {:?}", lossy(l))))?
            as usize;
        if size > MAX_PAYLOAD {
            return Err(bad(format!("MSG payload of {size} bytes is too large")));
        }
        let end = line_len + size;
        if b.len() < end + 2 {
            return Ok(Step::Incomplete);
        }
        if &b[end..end + 2] != b"\r\n" {
            return Err(bad("MSG payload not followed by CRLF"));
        }
        return Ok(Step::Item(
            Item::Msg {
                subject,
                sid,
                reply,
                payload: &b[line_len..end],
            },
            end + 2,
        ));
    }
    let Some((l, used)) = line(b)? else {
        return Ok(Step::Incomplete);
    };
    let item = if l.eq_ignore_ascii_case(b"PING") {
        Item::Ping
    } else if l.eq_ignore_ascii_case(b"PONG") {
        Item::Pong
    } else if l.eq_ignore_ascii_case(b"+OK") {
        Item::Ok
    } else if starts_with_ci(l, b"INFO ") || starts_with_ci(l, b"INFO\t") {
        Item::Info(trim(&l[5..]))
    } else if starts_with_ci(l, b"-ERR") {
        Item::Err(trim(&l[4..]))
    } else {
        return Err(bad(format!("unknown protocol line {:?}", lossy(l))));
    };
    Ok(Step::Item(item, used))
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned()
}

/// A control frame that came with the stream (publisher side; subscribers handle frames
/// in their event loop).
#[derive(Debug, PartialEq, Eq)]
pub enum WsControl {
    /// A WebSocket ping: answer with a pong frame carrying this payload.
    Ping(Vec<u8>),
    /// The server closed the WebSocket with this code.
    Close(u16),
}

/// Takes the NATS byte stream out of nats-server's WebSocket frames, for a connection that
/// is not on the hot path (the publisher's, which reads only `PONG`, `PING` and `-ERR`):
/// raw bytes in, the data frames' payloads out, in order. Keeps only an unfinished frame.
#[derive(Debug, Default)]
pub struct WsUnwrap {
    partial: Vec<u8>,
}

impl WsUnwrap {
    /// Feeds bytes read from the socket: appends the payloads of the complete data frames
    /// to `data` and their control frames to `control`. An error means the server broke
    /// RFC 6455; the connection should be dropped.
    pub fn feed(
        &mut self,
        raw: &[u8],
        data: &mut Vec<u8>,
        control: &mut Vec<WsControl>,
    ) -> Result<(), ParseError> {
        self.partial.extend_from_slice(raw);
        let mut pos = 0;
        loop {
            match crate::ws::decode_frame(&mut self.partial[pos..]) {
                crate::ws::Decode::Frame(f, used) => {
                    match f.opcode {
                        // frame boundaries mean nothing to the NATS stream
                        crate::ws::OP_TEXT | crate::ws::OP_BINARY | crate::ws::OP_CONT => {
                            data.extend_from_slice(f.payload)
                        }
                        crate::ws::OP_PING => control.push(WsControl::Ping(f.payload.to_vec())),
                        crate::ws::OP_CLOSE => {
                            control.push(WsControl::Close(crate::ws::close_code(f.payload)))
                        }
                        _ => {} // a pong
                    }
                    pos += used;
                }
                crate::ws::Decode::Incomplete { .. } => break,
                crate::ws::Decode::Error(e) => return Err(bad(format!("websocket: {e}"))),
            }
        }
        self.partial.drain(..pos);
        Ok(())
    }
}

/// `SUB <subject> <sid>\r\n`
pub fn sub_line(subject: &str, sid: u64) -> Vec<u8> {
    format!("SUB {subject} {sid}\r\n").into_bytes()
}

/// Appends `PUB <subject> <len>\r\n<payload>\r\n`.
pub fn push_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A NATS subject for a shardcast-style path (`load/p3` → `load.p3`).
pub fn subject_of(path: &str) -> String {
    path.replace('/', ".")
}

/// Finds the publisher's send time in a `MSG` payload: the first `"t":<digits>` (the
/// payload is the publish body, `{"path":..,"eventType":"tick","data":{"t":..,"pad":..}}`).
pub struct TimeFinder(Finder<'static>);

impl Default for TimeFinder {
    fn default() -> Self {
        TimeFinder(Finder::new(b"\"t\":"))
    }
}

impl TimeFinder {
    pub fn find(&self, payload: &[u8]) -> Option<u64> {
        let i = self.0.find(payload)?;
        crate::scan::parse_u64(&payload[i + 4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Own {
        Info(String),
        Msg(String, String, Option<String>, Vec<u8>),
        Ping,
        Pong,
        Ok,
        Err(String),
    }

    fn own(i: Item<'_>) -> Own {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match i {
            Item::Info(j) => Own::Info(s(j)),
            Item::Msg {
                subject,
                sid,
                reply,
                payload,
            } => Own::Msg(s(subject), s(sid), reply.map(s), payload.to_vec()),
            Item::Ping => Own::Ping,
            Item::Pong => Own::Pong,
            Item::Ok => Own::Ok,
            Item::Err(e) => Own::Err(s(e)),
        }
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Result<(Vec<Own>, usize), ParseError> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |i| out.push(own(i)))?;
        }
        Ok((out, p.pending()))
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"N1\",\"max_payload\":1048576} \r\n\
PING\r\n\
MSG load 1 5\r\nhello\r\n\
MSG load.p3 7 _INBOX.x 0\r\n\r\n\
+OK\r\n\
MSG load 1 12\r\nwith\r\nCRLF!!\r\n\
PONG\r\n\
-ERR 'Slow Consumer'\r\n";

    fn expected() -> Vec<Own> {
        vec![
            Own::Info("{\"server_id\":\"N1\",\"max_payload\":1048576}".into()),
            Own::Ping,
            Own::Msg("load".into(), "1".into(), None, b"hello".to_vec()),
            Own::Msg(
                "load.p3".into(),
                "7".into(),
                Some("_INBOX.x".into()),
                Vec::new(),
            ),
            Own::Ok,
            Own::Msg("load".into(), "1".into(), None, b"with\r\nCRLF!!".to_vec()),
            Own::Pong,
            Own::Err("'Slow Consumer'".into()),
        ]
    }

    #[test]
    fn whole_stream() {
        let (items, pending) = parse_chunks(&[STREAM]).unwrap();
        assert_eq!(items, expected());
        assert_eq!(pending, 0);
    }

    #[test]
    fn split_at_every_byte() {
        // every split point, including inside the MSG line, its size and its payload
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            let (items, pending) = parse_chunks(&[a, b]).unwrap();
            assert_eq!(items, expected(), "cut at {cut}");
            assert_eq!(pending, 0, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        let (items, pending) = parse_chunks(&chunks).unwrap();
        assert_eq!(items, expected());
        assert_eq!(pending, 0);
    }

    #[test]
    fn size_digits_split_across_reads() {
        // "MSG load 1 1" | "23\r\n" + 123 bytes: the size is 123, not 1
        let payload = vec![b'x'; 123];
        let mut tail = b"23\r\n".to_vec();
        tail.extend_from_slice(&payload);
        tail.extend_from_slice(b"\r\nPING\r\n");
        let (items, pending) = parse_chunks(&[b"MSG load 1 1", &tail]).unwrap();
        assert_eq!(
            items,
            vec![
                Own::Msg("load".into(), "1".into(), None, payload),
                Own::Ping
            ]
        );
        assert_eq!(pending, 0);
    }

    #[test]
    fn incomplete_items_wait() {
        let (items, pending) = parse_chunks(&[b"MSG load 1 5\r\nhel"]).unwrap();
        assert!(items.is_empty());
        assert_eq!(pending, b"MSG load 1 5\r\nhel".len());
        let (items, pending) = parse_chunks(&[b"PIN"]).unwrap();
        assert!(items.is_empty());
        assert_eq!(pending, 3);
        // payload complete but its CRLF not yet
        let (items, _) = parse_chunks(&[b"MSG load 1 5\r\nhello"]).unwrap();
        assert!(items.is_empty());
    }

    #[test]
    fn lower_case_and_bare_lf() {
        let (items, _) = parse_chunks(&[b"ping\npong\r\nmsg a 2 1\r\nz\r\n"]).unwrap();
        assert_eq!(
            items,
            vec![
                Own::Ping,
                Own::Pong,
                Own::Msg("a".into(), "2".into(), None, b"z".to_vec())
            ]
        );
    }

    #[test]
    fn errors() {
        for bad_input in [
            &b"HELLO\r\n"[..],
            b"MSG load\r\n",
            b"MSG load 1 x\r\n",
            b"MSG load 1 -5\r\n",
            b"MSG a b c d e\r\n",
            b"MSG load 1 3\r\nabcXY",
            b"MSG load 1 99999999999\r\n",
        ] {
            assert!(
                parse_chunks(&[bad_input]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad_input)
            );
        }
        let long = vec![b'I'; MAX_LINE + 1];
        assert!(parse_chunks(&[&long]).is_err());
    }

    #[test]
    fn client_lines() {
        assert_eq!(sub_line("load", 1), b"SUB load 1\r\n");
        let mut out = Vec::new();
        push_pub(&mut out, "load.p2", b"{\"t\":1}");
        assert_eq!(out, b"PUB load.p2 7\r\n{\"t\":1}\r\n");
        assert_eq!(subject_of("load/p2"), "load.p2");
        assert!(CONNECT.starts_with(b"CONNECT {\"verbose\":false"));
    }

    #[test]
    fn websocket_frames_unwrap_to_the_stream() {
        // the stream in three server frames (one MSG split over two), a ping between
        let mut raw = Vec::new();
        let (a, rest) = STREAM.split_at(40);
        let (b, c) = rest.split_at(30);
        crate::ws::encode_frame(&mut raw, crate::ws::OP_BINARY, a, None);
        crate::ws::encode_frame(&mut raw, crate::ws::OP_PING, b"p1", None);
        crate::ws::encode_frame(&mut raw, crate::ws::OP_BINARY, b, None);
        crate::ws::encode_frame(&mut raw, crate::ws::OP_TEXT, c, None);
        crate::ws::encode_frame(&mut raw, crate::ws::OP_CLOSE, &1001u16.to_be_bytes(), None);
        // fed at every split point: the same bytes and controls come out
        for cut in 0..=raw.len() {
            let mut w = WsUnwrap::default();
            let (mut data, mut ctl) = (Vec::new(), Vec::new());
            w.feed(&raw[..cut], &mut data, &mut ctl).unwrap();
            w.feed(&raw[cut..], &mut data, &mut ctl).unwrap();
            assert_eq!(data, STREAM, "cut at {cut}");
            assert_eq!(
                ctl,
                vec![WsControl::Ping(b"p1".to_vec()), WsControl::Close(1001)],
                "cut at {cut}"
            );
            assert!(w.partial.is_empty());
        }
        let (mut data, mut ctl) = (Vec::new(), Vec::new());
        assert!(WsUnwrap::default()
            .feed(&[0xF2, 0x00], &mut data, &mut ctl)
            .is_err());
    }

    #[test]
    fn time_in_payload() {
        let body = crate::publish::publish_body("load", 1_774_512_862_123_456_789, 128);
        assert_eq!(
            TimeFinder::default().find(body.as_bytes()),
            Some(1_774_512_862_123_456_789)
        );
        assert_eq!(
            TimeFinder::default().find(b"{\"eventType\":\"tick\"}"),
            None
        );
    }
}
