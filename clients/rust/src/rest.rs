//! The REST calls a client needs (PROTOCOL.md sections 2 and 8): `POST /api/v1/publish`
//! and `POST /api/v1/ws-tickets`, plus [`Rest::send`] for any other JSON call.
//!
//! A small HTTP/1.1 client written by hand over a tokio `TcpStream`: one request per
//! connection (`Connection: close`), a `Content-Length` body, the answer read to EOF. That
//! is all these calls need, and it keeps hyper/reqwest (and their trees) out of the
//! client (README.md, dependency table). `http://` only, like the WebSocket side.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;

/// `scheme://host[:port][/path]`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Url {
    pub host: String,
    pub port: u16,
    /// Starts with `/` (or is empty); query included.
    pub path: String,
}

pub(crate) fn split_url(url: &str, scheme: &str, default_port: u16) -> Result<Url, Error> {
    let bad = |reason: &str| Error::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| {
            if url.starts_with("https://") || url.starts_with("wss://") {
                bad("TLS is not supported by this client (use http:// or ws://)")
            } else {
                bad(&format!("expected a {scheme}:// URL"))
            }
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p.parse::<u16>().map_err(|_| bad("bad port"))?;
            (h, port)
        }
        _ => (authority, default_port),
    };
    Ok(Url {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path: path.to_string(),
    })
}

/// Percent-encodes a URL query value (everything but RFC 3986's unreserved characters).
pub(crate) fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP answer: status and body text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `Ok(body JSON)` for a 2xx answer, else [`Error::Http`] with the server's
    /// `{"error":{"code","message"}}`.
    pub fn into_result(self) -> Result<Value, Error> {
        let v = self.json();
        if self.is_success() {
            return Ok(v);
        }
        let err = &v["error"];
        Err(Error::Http {
            status: self.status,
            code: err["code"].as_str().unwrap_or("").to_string(),
            message: err["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or(self.body),
        })
    }
}

/// `202 {"accepted","firstSeq","lastSeq"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishAccepted {
    pub accepted: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// `201 {"uuid","expiresAt"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub uuid: String,
    pub expires_at: String,
}

/// A REST endpoint with one credential.
#[derive(Clone, Debug)]
pub struct Rest {
    url: Url,
    /// The `Authorization` header value.
    authorization: Option<String>,
    timeout: Duration,
}

impl Rest {
    /// `base_url`: `http://host[:port]` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Rest, Error> {
        let mut url = split_url(base_url, "http", 80)?;
        url.path = url.path.trim_end_matches('/').to_string();
        Ok(Rest {
            url,
            authorization: None,
            timeout: Duration::from_secs(30),
        })
    }

    /// `Authorization: apikey K` (publishers, operators).
    pub fn api_key(mut self, key: &str) -> Rest {
        self.authorization = Some(format!("apikey {key}"));
        self
    }

    /// `Authorization: Bearer T`.
    pub fn bearer(mut self, token: &str) -> Rest {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Rest {
        self.timeout = timeout;
        self
    }

    /// One request; `Err` only when no answer was read (I/O, timeout, not HTTP).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, Error> {
        let work = self.send_inner(method, path, body);
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }

    async fn send_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, Error> {
        let io = |e: std::io::Error| Error::Connection(e.to_string());
        let mut stream = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(io)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n",
            self.url.path, self.url.host, self.url.port
        );
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        stream.write_all(&bytes).await.map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io)?;
        parse_response(&raw)
    }

    /// `POST /api/v1/publish` of one publication.
    pub async fn publish(
        &self,
        path: &str,
        event_type: &str,
        data: Value,
    ) -> Result<PublishAccepted, Error> {
        let body = json!({"path": path, "eventType": event_type, "data": data});
        let v = self
            .send("POST", "/api/v1/publish", Some(&body))
            .await?
            .into_result()?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("publish answer: {e}")))
    }

    /// `POST /api/v1/ws-tickets` (needs [`Rest::bearer`]): a one-time `?uuid=` ticket.
    pub async fn ws_ticket(&self) -> Result<Ticket, Error> {
        let v = self
            .send("POST", "/api/v1/ws-tickets", None)
            .await?
            .into_result()?;
        serde_json::from_value(v).map_err(|e| Error::Protocol(format!("ticket answer: {e}")))
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, Error> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Protocol("HTTP answer without a complete head".into()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| Error::Protocol(format!("not an HTTP answer: {:.60}", head)))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let u = split_url("ws://127.0.0.1:9000/ws?x=1", "ws", 80).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/ws?x=1")
        );
        let u = split_url("http://example", "http", 80).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example", 80, "")
        );
        let u = split_url("ws://[::1]:8080/ws", "ws", 80).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        let e = split_url("wss://x/ws", "ws", 80).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(split_url("http://x:99999", "http", 80).is_err());
        assert!(split_url("ftp://x", "http", 80).is_err());
    }

    #[test]
    fn responses_parse() {
        let r =
            parse_response(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((r.status, r.body.as_str()), (202, "{}"));
        let r = parse_response(
            b"HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":{\"code\":\"BAD_MESSAGE\",\"message\":\"m\"}}",
        )
        .unwrap();
        assert_eq!(
            r.into_result(),
            Err(Error::Http {
                status: 400,
                code: "BAD_MESSAGE".into(),
                message: "m".into()
            })
        );
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn query_values_encode() {
        assert_eq!(encode_query_value("a.b-c_~"), "a.b-c_~");
        assert_eq!(encode_query_value("a b&c"), "a%20b%26c");
    }
}
