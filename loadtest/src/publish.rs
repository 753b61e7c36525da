//! The publisher: `POST {http}/api/v1/publish` at a fixed rate over keep-alive HTTP/1.1
//! connections, each body carrying its send time `t` (Unix nanos) for latency.
//!
//! The schedule is open-loop: publication n is due at start + n/rate whatever happened to
//! the ones before, so a slow server does not lower the offered rate silently (the report
//! shows the achieved rate). Above ~2000/s several connections share the schedule.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::net::Endpoint;
use crate::scenario::Scenario;
use crate::util::unix_nanos;

/// Publications per second one connection is asked to carry before another is added.
const PER_CONNECTION_RATE: f64 = 2000.0;
const MAX_PUBLISHERS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one request/response may take in all (a server trickling bytes included).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

pub struct PublishPlan {
    pub http: Endpoint,
    pub api_key: String,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
    pub scenario: Arc<dyn Scenario>,
}

#[derive(Debug, Default)]
pub struct PublishResult {
    /// Accepted (2xx) publications per path.
    pub published_per_path: Vec<u64>,
    /// Failures by kind ("HTTP 400", "io: ...").
    pub errors: BTreeMap<String, u64>,
}

impl PublishResult {
    pub fn published(&self) -> u64 {
        self.published_per_path.iter().sum()
    }
}

pub struct Publisher {
    handles: Vec<JoinHandle<PublishResult>>,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    paths: usize,
}

impl Publisher {
    pub fn start(plan: PublishPlan) -> Publisher {
        let n = ((plan.rate / PER_CONNECTION_RATE).ceil() as usize).clamp(1, MAX_PUBLISHERS);
        let paths = plan.scenario.path_count();
        let plan = Arc::new(plan);
        let published = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let handles = (0..n)
            .map(|k| {
                let (plan, published, stop) =
                    (Arc::clone(&plan), Arc::clone(&published), Arc::clone(&stop));
                std::thread::Builder::new()
                    .name(format!("publisher-{k}"))
                    .spawn(move || publish_loop(&plan, k, n, start, &published, &stop))
                    .expect("spawn a publisher thread")
            })
            .collect();
        Publisher {
            handles,
            published,
            stop,
            paths,
        }
    }

    /// Accepted publications so far.
    pub fn published(&self) -> u64 {
        self.published.load(Relaxed)
    }

    /// Waits for the schedule to end (or stops it now with `stop_now`), returns the counts.
    pub fn finish(self, stop_now: bool) -> PublishResult {
        if stop_now {
            self.stop.store(true, Relaxed);
        }
        let mut total = PublishResult {
            published_per_path: vec![0; self.paths],
            errors: BTreeMap::new(),
        };
        for h in self.handles {
            match h.join() {
                Ok(r) => {
                    for (a, b) in total
                        .published_per_path
                        .iter_mut()
                        .zip(&r.published_per_path)
                    {
                        *a += b;
                    }
                    for (k, v) in r.errors {
                        *total.errors.entry(k).or_default() += v;
                    }
                }
                Err(_) => *total.errors.entry("publisher panicked".into()).or_default() += 1,
            }
        }
        total
    }
}

fn publish_loop(
    plan: &PublishPlan,
    k: usize,
    n: usize,
    start: Instant,
    published: &AtomicU64,
    stop: &AtomicBool,
) -> PublishResult {
    let mut res = PublishResult {
        published_per_path: vec![0; plan.scenario.path_count()],
        errors: BTreeMap::new(),
    };
    if plan.rate <= 0.0 {
        return res;
    }
    let end = start + plan.duration;
    let paths: Vec<String> = (0..plan.scenario.path_count())
        .map(|i| plan.scenario.publish_path(i))
        .collect();
    let mut conn: Option<HttpConn> = None;
    let mut reported: Vec<String> = Vec::new();
    let mut seq = k as u64;
    let mut req = Vec::with_capacity(plan.payload + 512);
    loop {
        if stop.load(Relaxed) {
            break;
        }
        let due = start + Duration::from_secs_f64(seq as f64 / plan.rate);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let path_idx = plan.scenario.path_of_publication(seq);
        seq += n as u64;
        if conn.is_none() {
            match HttpConn::connect(plan.http.addr) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    count_error(&mut res, &mut reported, format!("connect: {e}"), "");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        build_request(&mut req, plan, &paths[path_idx], unix_nanos());
        match c.round_trip(&req) {
            Ok((status, keep, body)) => {
                if (200..300).contains(&status) {
                    res.published_per_path[path_idx] += 1;
                    published.fetch_add(1, Relaxed);
                } else {
                    let b = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
                    count_error(&mut res, &mut reported, format!("HTTP {status}"), &b);
                }
                if !keep {
                    conn = None;
                }
            }
            Err(e) => {
                count_error(&mut res, &mut reported, format!("io: {e}"), "");
                conn = None;
            }
        }
    }
    res
}

fn count_error(res: &mut PublishResult, reported: &mut Vec<String>, kind: String, body: &str) {
    if !reported.contains(&kind) {
        eprintln!("\nloadtest: publish failed: {kind} {body}");
        reported.push(kind.clone());
    }
    *res.errors.entry(kind).or_default() += 1;
}

/// The publish body for `path` at time `t`, padded with `x` to `payload` bytes (never
/// shorter than the body without padding).
pub fn publish_body(path: &str, t: u64, payload: usize) -> String {
    let head = format!(
        r#"{{"path":{},"eventType":"tick","data":{{"t":{t},"pad":""#,
        serde_json::Value::from(path)
    );
    let tail = "\"}}";
    let pad = payload.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

fn build_request(out: &mut Vec<u8>, plan: &PublishPlan, path: &str, t: u64) {
    let body = publish_body(path, t, plan.payload);
    out.clear();
    let _ = write!(
        out,
        "POST {}/api/v1/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        plan.http.path,
        plan.http.host_header,
        plan.api_key,
        body.len()
    );
    out.extend_from_slice(body.as_bytes());
}

/// A blocking keep-alive HTTP/1.1 client connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl HttpConn {
    pub fn connect(addr: std::net::SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
            deadline: Instant::now(),
        })
    }

    /// Sends one request, reads one response: (status, keep-alive, body).
    pub fn round_trip(&mut self, req: &[u8]) -> io::Result<(u16, bool, Vec<u8>)> {
        self.deadline = Instant::now() + REQUEST_DEADLINE;
        self.stream.write_all(req)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too long",
                ));
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let (status, keep, length, chunked) = parse_response_head(&head)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad response head"))?;
        let mut body = self.buf.split_off(head_end);
        if chunked {
            loop {
                if let Some(b) = dechunk(&body) {
                    return Ok((status, keep, b));
                }
                self.buf.clear();
                self.fill()?;
                body.extend_from_slice(&self.buf);
            }
        }
        match length {
            Some(n) => {
                while body.len() < n {
                    self.buf.clear();
                    self.fill()?;
                    body.extend_from_slice(&self.buf);
                }
                body.truncate(n);
                Ok((status, keep, body))
            }
            None => {
                // no length: the body runs to the end of the connection
                loop {
                    self.buf.clear();
                    match self.fill() {
                        Ok(()) => body.extend_from_slice(&self.buf),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok((status, false, body))
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response took longer than 10 s",
            ));
        }
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// (status, keep-alive, content-length, chunked)
pub fn parse_response_head(head: &str) -> Option<(u16, bool, Option<usize>, bool)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut keep = version == "HTTP/1.1";
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                keep = false;
            } else if v.contains("keep-alive") {
                keep = true;
            }
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = Some(0);
    }
    Some((status, keep, length, chunked))
}

/// The body of a complete chunked encoding, or None while incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = memchr::memmem::find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..i]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            // trailers end with an empty line
            memchr::memmem::find(b, b"\r\n")?;
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_sized_and_valid() {
        for payload in [0, 50, 64, 128, 1000] {
            let b = publish_body("load/fanout", 1_774_512_862_123_456_789, payload);
            let min = publish_body("load/fanout", 1_774_512_862_123_456_789, 0).len();
            assert_eq!(b.len(), payload.max(min), "payload {payload}");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["path"], "load/fanout");
            assert_eq!(v["eventType"], "tick");
            assert_eq!(v["data"]["t"], 1_774_512_862_123_456_789u64);
        }
    }

    #[test]
    fn body_t_is_found_by_the_scanner() {
        let b = publish_body("load/p3", 42, 200);
        let event = format!(
            r#"{{"type":"event","subscriptionIds":["load"],"data":{}}}"#,
            serde_json::from_str::<serde_json::Value>(&b).unwrap()["data"]
        );
        let mut ts = Vec::new();
        let s = crate::scan::Scanner::new().scan(event.as_bytes(), |t| ts.push(t));
        assert_eq!(s.events, 1);
        assert_eq!(ts, vec![42]);
    }

    #[test]
    fn response_heads() {
        assert_eq!(
            parse_response_head("HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\n\r\n"),
            Some((202, true, Some(12), false))
        );
        assert_eq!(
            parse_response_head(
                "HTTP/1.1 400 Bad\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            Some((400, false, None, true))
        );
        assert_eq!(
            parse_response_head("HTTP/1.0 200 OK\r\n\r\n"),
            Some((200, false, None, false))
        );
        assert_eq!(parse_response_head("garbage"), None);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk(b"5\r\nhello\r\n0\r\n\r\n"), Some(b"hello".to_vec()));
        assert_eq!(dechunk(b"5\r\nhel"), None);
        assert_eq!(dechunk(b"5\r\nhello\r\n"), None);
    }

    #[test]
    fn round_trip_against_a_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            for _ in 0..2 {
                loop {
                    let n = s.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"}}") {
                        break;
                    }
                }
                s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 14\r\n\r\n{\"accepted\":1}")
                    .unwrap();
                got.clear();
            }
        });
        let mut c = HttpConn::connect(addr).unwrap();
        let plan = PublishPlan {
            http: crate::net::parse_url(&format!("http://{addr}"), "http").unwrap(),
            api_key: "k".into(),
            rate: 1.0,
            duration: Duration::from_secs(1),
            payload: 100,
            scenario: Arc::new(crate::scenario::Fanout),
        };
        let mut req = Vec::new();
        for _ in 0..2 {
            build_request(&mut req, &plan, "load/fanout", 1);
            let (status, keep, body) = c.round_trip(&req).unwrap();
            assert_eq!(status, 202);
            assert!(keep);
            assert_eq!(body, b"{\"accepted\":1}");
        }
        srv.join().unwrap();
    }
}
