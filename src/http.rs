//! HTTP/1.1 on the shards' sockets, without I/O: parse a request from bytes, build a
//! response as bytes.
//!
//! REST, `/metrics`, the health checks and the WebSocket upgrade share the one port and
//! the shards, so this is deliberately small: `Content-Length` bodies (chunked request
//! bodies are refused with 411), keep-alive, `Expect: 100-continue`. Used by
//! `shard::conn` for the I/O and by `api` for routing.

use serde_json::json;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query string (without `?`), possibly empty.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
    /// The client's address, when the shard that read the request set it (for the log
    /// line of a refused credential, `auth::failures`).
    pub peer: Option<std::net::SocketAddr>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (comma-separated, case-insensitive).
    pub fn header_has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decoded `(name, value)` pairs of a query string.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|s| !s.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// `%XX` and `+` decoding; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet.
    NeedHead,
    /// The head is complete, the body is not; `expect_continue` asks for a `100 Continue`.
    NeedBody { expect_continue: bool },
    /// A whole request, and how many bytes it used.
    Complete(Box<Request>, usize),
    /// Not acceptable: answer with this status and message, then close.
    Error(u16, String),
}

/// Parses one request from the front of `buf`.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        // The limit holds however the bytes were split into reads.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Parsed::Error(431, "request head too large".into())
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Parsed::Error(431, "request head too large".into())
            } else {
                Parsed::NeedHead
            }
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(431, format!("more than {MAX_HEADERS} headers"))
        }
        Err(e) => return Parsed::Error(400, format!("malformed HTTP request: {e}")),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut r = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        close: req.version == Some(0),
        peer: None,
    };
    if r.header_has("connection", "close") {
        r.close = true;
    }
    if r.header_has("connection", "keep-alive") {
        r.close = false;
    }
    // One credential per request (PROTOCOL.md §2): with two `Authorization` headers this
    // server would read the first and a proxy in front of it might check the last, so
    // neither is taken.
    if r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .nth(1)
        .is_some()
    {
        return Parsed::Error(
            400,
            "more than one Authorization header: send exactly one".into(),
        );
    }
    if r.header("transfer-encoding").is_some() {
        return Parsed::Error(
            411,
            "chunked request bodies are not supported; send Content-Length".into(),
        );
    }
    // Every Content-Length must be plain digits and all must agree (RFC 9112 §6.3): a
    // lenient reading here is what request smuggling behind a proxy feeds on.
    let mut len: Option<usize> = None;
    for (_, v) in r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let v = v.trim();
        let n = match v.parse::<usize>() {
            Ok(n) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Parsed::Error(400, format!("bad Content-Length '{v}'")),
        };
        if len.is_some_and(|l| l != n) {
            return Parsed::Error(400, "conflicting Content-Length headers".into());
        }
        len = Some(n);
    }
    let len = len.unwrap_or(0);
    if len > max_body {
        return Parsed::Error(
            413,
            format!("request body of {len} bytes exceeds the limit of {max_body}"),
        );
    }
    if buf.len() < head_len + len {
        return Parsed::NeedBody {
            expect_continue: r.header_has("expect", "100-continue"),
        };
    }
    r.body = buf[head_len..head_len + len].to_vec();
    Parsed::Complete(Box::new(r), head_len + len)
}

/// The reason phrase of the statuses this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A whole response.
pub fn response(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    metrics_http(status);
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A response with extra headers; an empty `content_type` sends none (a 204).
pub fn response_with(
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    metrics_http(status);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !content_type.is_empty() {
        out.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn metrics_http(status: u16) {
    crate::metrics::http_request(status);
}

/// A JSON response.
pub fn json_response(status: u16, v: &serde_json::Value, close: bool) -> Vec<u8> {
    response(
        status,
        "application/json",
        &serde_json::to_vec(v).unwrap_or_default(),
        close,
    )
}

/// `{"error":{"code","message"[,"index"]}}` with `status`.
pub fn error_response(
    status: u16,
    code: &str,
    message: &str,
    index: Option<usize>,
    close: bool,
) -> Vec<u8> {
    json_response(status, &error_body(code, message, index), close)
}

/// The body of [`error_response`]: `{"error":{"code","message"[,"index"]}}`.
pub fn error_body(code: &str, message: &str, index: Option<usize>) -> serde_json::Value {
    let mut e = json!({"code": code, "message": message});
    if let Some(i) = index {
        e["index"] = json!(i);
    }
    json!({ "error": e })
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade, with the accepted
/// extension (`Sec-WebSocket-Extensions`) if one was negotiated.
pub fn upgrade_response(accept: &str, extension: Option<&str>) -> Vec<u8> {
    metrics_http(101);
    let ext = extension
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_head_and_body_incrementally() {
        let raw = b"POST /api/v1/publish?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello";
        let head_end = raw.len() - 5;
        assert!(matches!(parse(&raw[..10], 100), Parsed::NeedHead));
        assert!(matches!(
            parse(&raw[..head_end + 2], 100),
            Parsed::NeedBody {
                expect_continue: true
            }
        ));
        match parse(raw, 100) {
            Parsed::Complete(r, n) => {
                assert_eq!(n, raw.len());
                assert_eq!(r.method, "POST");
                assert_eq!(r.path, "/api/v1/publish");
                assert_eq!(r.query_param("x").as_deref(), Some("1"));
                assert_eq!(r.body, b"hello");
                assert!(!r.close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 10),
            Parsed::Error(411, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10),
            Parsed::Error(413, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10),
            Parsed::Error(400, _)
        ));
        assert!(matches!(
            parse(b"\x00\x01 / HTTP/1.1\r\n\r\n", 10),
            Parsed::Error(400, _)
        ));
        // Two credentials, in any spelling of the name, even when equal.
        assert!(matches!(
            parse(
                b"GET /ws HTTP/1.1\r\nAuthorization: apikey a\r\nauthorization: apikey a\r\n\r\n",
                10
            ),
            Parsed::Error(400, m) if m.contains("Authorization")
        ));
        assert!(matches!(
            parse(b"GET /ws HTTP/1.1\r\nAuthorization: apikey a\r\n\r\n", 10),
            Parsed::Complete(..)
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(
            query_pairs("token=a.b&batchMs=0&&x").collect::<Vec<_>>(),
            [
                ("token".into(), "a.b".into()),
                ("batchMs".into(), "0".into()),
                ("x".into(), String::new())
            ]
        );
    }
}
