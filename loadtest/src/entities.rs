//! Scenario entities' writer and report: `--connections` keep-alive HTTP/1.1 connections to
//! `--http` on one `mio` event loop (the main thread), each with up to `--pipeline` requests
//! in flight (pipelining: the server answers a connection's requests in order), writing
//! `PUT /api/v1/entities/load/e{n mod K}` ([`crate::scenario::entities`]).
//!
//! Pacing: with `--rate R > 0` the schedule is open loop, like the publisher's: write n is
//! due at window start + n/R, over all connections, each due write going to the next
//! connection with a free pipeline slot (round robin). When every slot is taken the
//! schedule slips (the report shows `scheduled` against `sent`); no write due after the
//! window's end is sent. With `--rate 0` it is closed loop: every connection keeps
//! `--pipeline` requests in flight for the whole window.
//!
//! An answer counts as acknowledged when it is `200` with `"seq"` in its body. Anything
//! else is a failed write: another status or a body without `"seq"` (the first few bodies
//! are kept as samples), and every request in flight on a connection that broke, that the
//! server closed (`Connection: close` included) or that had no answer within 10 s, or that
//! was still unanswered when the run ended. A connection that ends during the window is
//! opened again after 200 ms. Latency, of acknowledged writes only: from the moment the
//! request's last byte was written to the socket to the moment its answer was read whole,
//! in an HDR histogram (µs).
//!
//! The run: connect everything (15 s at most), read the server's RSS, write for
//! `--duration`, wait for the answers in flight (at most 11 s), read the server's CPU
//! (window start to here) and RSS, report.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

use crate::cli::Config;
use crate::conn::short_io;
use crate::net::Endpoint;
use crate::procstat;
use crate::publish::parse_response_head;
use crate::report::{new_histogram, ServerStats};
use crate::scenario::entities::{push_put_request, Entities};
use crate::scenario::services::{
    parse_publish_answer, push_publish_request, PublishBatches, SeqRanges,
};
use crate::util::{human_bytes, human_count};

/// From the start of a TCP connect to the connection being established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a request may wait for its answer (from being queued); then its connection is
/// given up and everything in flight on it fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that ended during the window is opened again this much later.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Answers kept as samples of failures.
pub const MAX_SAMPLES: usize = 5;
/// Bytes of an answer's body kept in a sample.
const SAMPLE_BYTES: usize = 300;
const MAX_HEAD: usize = 64 * 1024;
const MAX_ANSWER_BODY: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// How often connections are checked for timeouts.
const SCAN_EVERY: Duration = Duration::from_millis(100);

/// What the writer needs.
pub struct Plan {
    pub http: Endpoint,
    pub api_key: String,
    pub connections: usize,
    pub pipeline: usize,
    /// Writes per second over all connections; 0: closed loop.
    pub rate: f64,
    pub payload: usize,
    pub requests: Requests,
}

/// What the writer sends.
pub enum Requests {
    /// Scenario entities: `PUT /api/v1/entities/load/e{n mod K}`, acknowledged by `200`
    /// with `"seq"`.
    Entities(Entities),
    /// Scenario services: `POST /api/v1/publish` of a batch of events (the request's
    /// queue time in each event's `data.t`), acknowledged by `202` with `"accepted"`.
    Publish(PublishBatches),
}

/// One parse of the start of a connection's input.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// More bytes are needed.
    Incomplete,
    /// A whole answer of `used` bytes.
    Whole {
        status: u16,
        keep: bool,
        body: Vec<u8>,
        used: usize,
    },
    /// Not an answer this client can frame: the connection is given up.
    Bad(String),
}

/// Parses the answer at the start of `buf` (Content-Length or chunked bodies).
pub fn parse_answer(buf: &[u8]) -> Answer {
    let Some(i) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Answer::Bad("answer head longer than 64 KiB".into())
        } else {
            Answer::Incomplete
        };
    };
    let head_end = i + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let Some((status, keep, length, chunked)) = parse_response_head(&head) else {
        let first = head.lines().next().unwrap_or("");
        return Answer::Bad(format!(
            "bad answer head {:?}",
            &first[..first.len().min(80)]
        ));
    };
    let rest = &buf[head_end..];
    if chunked {
        return match dechunk(rest) {
            Ok(None) => Answer::Incomplete,
            Ok(Some((body, used))) => Answer::Whole {
                status,
                keep,
                body,
                used: head_end + used,
            },
            Err(e) => Answer::Bad(e.into()),
        };
    }
    match length {
        Some(n) if n > MAX_ANSWER_BODY => Answer::Bad(format!("answer body of {n} bytes")),
        Some(n) if rest.len() < n => Answer::Incomplete,
        Some(n) => Answer::Whole {
            status,
            keep,
            body: rest[..n].to_vec(),
            used: head_end + n,
        },
        None => Answer::Bad("answer without Content-Length".into()),
    }
}

/// A chunked body at the start of `b`: `(body, bytes used)`, `None` while incomplete.
fn dechunk(mut b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, &'static str> {
    let total = b.len();
    let mut out = Vec::new();
    loop {
        let Some(i) = memchr::memmem::find(b, b"\r\n") else {
            return Ok(None);
        };
        let size_str = std::str::from_utf8(&b[..i]).map_err(|_| "bad chunk size")?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| "bad chunk size")?;
        if size > MAX_ANSWER_BODY || out.len() + size > MAX_ANSWER_BODY {
            return Err("chunked answer body over 1 MiB");
        }
        b = &b[i + 2..];
        if size == 0 {
            // trailers, up to an empty line
            loop {
                let Some(j) = memchr::memmem::find(b, b"\r\n") else {
                    return Ok(None);
                };
                b = &b[j + 2..];
                if j == 0 {
                    return Ok(Some((out, total - b.len())));
                }
            }
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        if &b[size..size + 2] != b"\r\n" {
            return Err("bad chunk end");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Whether an answer acknowledges the write: 200 with `"seq"` in the body.
pub fn acknowledges(status: u16, body: &[u8]) -> bool {
    status == 200 && memchr::memmem::find(body, b"\"seq\"").is_some()
}

/// Counters of a run.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Requests queued on a connection.
    pub sent: u64,
    pub acknowledged: u64,
    /// Acknowledged with `"op":"created"` / `"op":"updated"`.
    pub created: u64,
    pub updated: u64,
    pub failed: u64,
    /// Failed writes by kind (`HTTP 500`, `HTTP 200 without "seq"`, `timeout: …`, …).
    pub failures: BTreeMap<String, u64>,
    /// The first few failed answers: `HTTP <status>: <body>`.
    pub samples: Vec<String>,
    /// Connections that could not be established, by reason.
    pub connect_failures: BTreeMap<String, u64>,
    /// Connections opened again during the window.
    pub reconnects: u64,
    /// Acknowledged writes' latency, µs.
    pub latency: Histogram<u64>,
    pub last_ack: Option<Instant>,
    /// The answers are publish answers ([`Requests::Publish`]): events accepted (the sum
    /// of `accepted`), the seq ranges `firstSeq..=lastSeq` they were given, and answers
    /// whose range did not have `accepted` seqs (or was missing).
    pub publish: bool,
    pub events_accepted: u64,
    pub seq_ranges: SeqRanges,
    pub odd_ranges: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            sent: 0,
            acknowledged: 0,
            created: 0,
            updated: 0,
            failed: 0,
            failures: BTreeMap::new(),
            samples: Vec::new(),
            connect_failures: BTreeMap::new(),
            reconnects: 0,
            latency: new_histogram(),
            last_ack: None,
            publish: false,
            events_accepted: 0,
            seq_ranges: SeqRanges::default(),
            odd_ranges: 0,
        }
    }
}

impl Counts {
    /// Written and neither acknowledged nor failed yet.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.acknowledged + self.failed)
    }

    /// Counts one answer read at `now` for a request whose last byte was written at
    /// `written`.
    fn answer(&mut self, status: u16, body: &[u8], written: Option<Instant>, now: Instant) {
        let acked = if self.publish {
            match parse_publish_answer(status, body) {
                Some(a) => {
                    self.events_accepted += a.accepted;
                    match (a.first_seq, a.last_seq) {
                        (Some(f), Some(l)) if l >= f && l - f + 1 == a.accepted => {
                            self.seq_ranges.add(f, l)
                        }
                        _ if a.accepted == 0 => {}
                        _ => self.odd_ranges += 1,
                    }
                    true
                }
                None => false,
            }
        } else if acknowledges(status, body) {
            if memchr::memmem::find(body, b"\"created\"").is_some() {
                self.created += 1;
            } else if memchr::memmem::find(body, b"\"updated\"").is_some() {
                self.updated += 1;
            }
            true
        } else {
            false
        };
        if acked {
            self.acknowledged += 1;
            let us = written.map_or(0, |t| now.saturating_duration_since(t).as_micros() as u64);
            self.latency.saturating_record(us.max(1));
            self.last_ack = Some(now);
            return;
        }
        let kind = match status {
            202 if self.publish => "HTTP 202 without \"accepted\"".to_string(),
            200 if !self.publish => "HTTP 200 without \"seq\"".to_string(),
            _ => format!("HTTP {status}"),
        };
        let text = String::from_utf8_lossy(&body[..body.len().min(SAMPLE_BYTES)]);
        let sample = format!("{kind}: {text}");
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample.clone());
        }
        self.fail(kind, 1, &sample);
    }

    /// Counts `n` failed writes of `kind`; the first of each kind is also told on stderr.
    fn fail(&mut self, kind: String, n: u64, detail: &str) {
        if n == 0 {
            return;
        }
        if !self.failures.contains_key(&kind) {
            let detail = if detail.is_empty() { &kind } else { detail };
            let what = if self.publish { "publish" } else { "write" };
            eprintln!("\nloadtest: {what} failed: {detail}");
        }
        self.failed += n;
        *self.failures.entry(kind).or_default() += n;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
}

struct InFlight {
    /// Where the request ends in the connection's output (bytes since it opened).
    end: u64,
    queued: Instant,
    /// When its last byte was written (`None`: not yet).
    written: Option<Instant>,
}

struct HttpConn {
    stream: TcpStream,
    state: State,
    gen: u32,
    opened: Instant,
    /// Bytes not yet written.
    out: Vec<u8>,
    /// Bytes queued and written since the connection opened.
    queued: u64,
    written: u64,
    /// Requests without an answer, oldest first; the first `stamped` are written whole.
    inflight: VecDeque<InFlight>,
    stamped: usize,
    /// Input not yet parsed (a partial answer).
    input: Vec<u8>,
    /// In the writer's `dirty` list.
    dirty: bool,
}

/// The event loop: connections, pipeline slots, pacing, counters.
pub struct Writer {
    plan: Plan,
    poll: Poll,
    events: Events,
    conns: Vec<Option<HttpConn>>,
    /// Free pipeline slots, round robin: (connection, generation). A connection adds
    /// `--pipeline` when it opens and one per answer; slots of ended connections are
    /// skipped when they come up.
    slots: VecDeque<(usize, u32)>,
    /// Connections to open again, in due order.
    reopen: VecDeque<(Instant, usize)>,
    next_gen: u32,
    /// The next write's number (= writes queued so far).
    next_write: u64,
    /// Connections with bytes queued in this turn.
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    pub counts: Counts,
    /// The window is open: connections that end are opened again.
    reconnect: bool,
    /// While the window is open: its start, the rate asked and its length.
    pace: Option<(Instant, f64, Duration)>,
    last_scan: Instant,
}

impl Writer {
    pub fn new(plan: Plan) -> io::Result<Writer> {
        let counts = Counts {
            publish: matches!(plan.requests, Requests::Publish(_)),
            ..Counts::default()
        };
        Ok(Writer {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: (0..plan.connections).map(|_| None).collect(),
            slots: VecDeque::new(),
            reopen: VecDeque::new(),
            next_gen: 0,
            next_write: 0,
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            counts,
            reconnect: false,
            pace: None,
            last_scan: Instant::now(),
            plan,
        })
    }

    /// Connections being connected / open.
    pub fn connecting(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.state == State::Connecting)
            .count()
    }

    /// Connections asked for.
    pub fn connections(&self) -> usize {
        self.plan.connections
    }

    pub fn open_count(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.state == State::Open)
            .count()
    }

    /// Starts connecting every connection.
    pub fn open_all(&mut self) {
        for slot in 0..self.conns.len() {
            self.open(slot);
        }
    }

    fn open(&mut self, slot: usize) {
        if self.conns[slot].is_some() {
            return;
        }
        let mut stream = match crate::net::connect_nonblocking(self.plan.http.addr, None) {
            Ok(s) => s,
            Err(e) => return self.connect_failed(slot, format!("connect: {}", short_io(&e))),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.connect_failed(slot, format!("register: {}", short_io(&e)));
        }
        let _ = stream.set_nodelay(true);
        self.next_gen = self.next_gen.wrapping_add(1);
        self.conns[slot] = Some(HttpConn {
            stream,
            state: State::Connecting,
            gen: self.next_gen,
            opened: Instant::now(),
            out: Vec::new(),
            queued: 0,
            written: 0,
            inflight: VecDeque::new(),
            stamped: 0,
            input: Vec::new(),
            dirty: false,
        });
    }

    fn connect_failed(&mut self, slot: usize, why: String) {
        *self.counts.connect_failures.entry(why).or_default() += 1;
        if self.reconnect {
            self.reopen
                .push_back((Instant::now() + RECONNECT_DELAY, slot));
        }
    }

    /// Ends a connection: what is in flight on it fails with `why`.
    fn end(&mut self, slot: usize, why: String) {
        let Some(mut c) = self.conns[slot].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.state == State::Connecting {
            return self.connect_failed(slot, why);
        }
        self.counts.fail(why, c.inflight.len() as u64, "");
        if self.reconnect {
            self.reopen
                .push_back((Instant::now() + RECONNECT_DELAY, slot));
        }
    }

    /// The window opens at `t0`: writes are queued (at `rate` per second over all
    /// connections, or as fast as slots free up when it is 0) until `window` has passed;
    /// connections that end are opened again.
    pub fn window_opens(&mut self, t0: Instant, rate: f64, window: Duration) {
        self.reconnect = true;
        self.pace = Some((t0, rate, window));
    }

    /// The window is over: nothing more is written or opened again.
    pub fn window_ends(&mut self) {
        self.reconnect = false;
        self.pace = None;
        self.reopen.clear();
        self.slots.clear();
    }

    /// One turn: queue the writes due, write, wait for events (at most `max_wait`, less
    /// when the next write falls due sooner), read answers, check timeouts.
    pub fn turn(&mut self, max_wait: Duration) {
        let now = Instant::now();
        let mut timeout = max_wait;
        if let Some((t0, rate, window)) = self.pace {
            let elapsed = now.saturating_duration_since(t0);
            let due = due_by(elapsed, rate, window);
            self.queue_due(due);
            // all due are queued: sleep until the next one is due (else a slot must
            // free up first: an answer wakes the loop)
            if rate > 0.0 && self.next_write == due && due < scheduled(rate, window) {
                timeout = timeout.min(due_at(due, rate).saturating_sub(elapsed));
            }
        }
        self.flush_dirty();
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("loadtest: poll failed: {e}");
            }
        }
        let ready: Vec<(usize, bool)> = self
            .events
            .iter()
            .map(|ev| (ev.token().0, ev.is_writable() || ev.is_error()))
            .collect();
        for (slot, writable) in ready {
            self.on_event(slot, writable);
        }
        let now = Instant::now();
        while let Some(&(at, slot)) = self.reopen.front() {
            if at > now {
                break;
            }
            self.reopen.pop_front();
            if self.conns[slot].is_none() {
                self.counts.reconnects += 1;
                self.open(slot);
            }
        }
        if now.duration_since(self.last_scan) >= SCAN_EVERY {
            self.last_scan = now;
            self.expire(now);
        }
    }

    /// Queues writes while fewer than `due` are queued and a pipeline slot is free.
    fn queue_due(&mut self, due: u64) {
        while self.next_write < due {
            let Some(slot) = self.take_slot() else {
                return;
            };
            let n = self.next_write;
            self.next_write += 1;
            let c = self.conns[slot]
                .as_mut()
                .expect("a slot of an open connection");
            let before = c.out.len();
            match &self.plan.requests {
                Requests::Entities(e) => push_put_request(
                    &mut c.out,
                    &self.plan.http,
                    &self.plan.api_key,
                    e.id_of(n),
                    n,
                    self.plan.payload,
                ),
                Requests::Publish(b) => push_publish_request(
                    &mut c.out,
                    &self.plan.http,
                    &self.plan.api_key,
                    n,
                    *b,
                    crate::util::unix_nanos() / 1000,
                ),
            }
            c.queued += (c.out.len() - before) as u64;
            c.inflight.push_back(InFlight {
                end: c.queued,
                queued: Instant::now(),
                written: None,
            });
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
            self.counts.sent += 1;
        }
    }

    fn take_slot(&mut self) -> Option<usize> {
        while let Some((slot, gen)) = self.slots.pop_front() {
            if let Some(c) = &self.conns[slot] {
                if c.gen == gen && c.state == State::Open && c.inflight.len() < self.plan.pipeline {
                    return Some(slot);
                }
            }
        }
        None
    }

    fn flush_dirty(&mut self) {
        for slot in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.conns[slot].as_mut() {
                c.dirty = false;
                if c.state == State::Open {
                    self.flush(slot);
                }
            }
        }
    }

    /// Writes what waits in the connection's output; stamps the requests written whole.
    fn flush(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        let mut n = 0;
        let mut broke = None;
        while n < c.out.len() {
            match c.stream.write(&c.out[n..]) {
                Ok(0) => {
                    broke = Some("write returned 0".to_string());
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    broke = Some(format!("write: {}", short_io(&e)));
                    break;
                }
            }
        }
        c.out.drain(..n);
        if c.out.is_empty() && c.out.capacity() > 64 * 1024 {
            c.out = Vec::new();
        }
        c.written += n as u64;
        let now = Instant::now();
        while c.stamped < c.inflight.len() && c.inflight[c.stamped].end <= c.written {
            c.inflight[c.stamped].written = Some(now);
            c.stamped += 1;
        }
        if let Some(why) = broke {
            self.end(slot, why);
        }
    }

    fn on_event(&mut self, slot: usize, writable: bool) {
        let pipeline = self.plan.pipeline;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if c.state == State::Connecting {
            if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                return self.end(slot, format!("connect: {}", short_io(&e)));
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    c.state = State::Open;
                    let gen = c.gen;
                    self.slots
                        .extend(std::iter::repeat_n((slot, gen), pipeline));
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.end(slot, format!("connect: {}", short_io(&e))),
            }
        } else if writable && !c.out.is_empty() {
            self.flush(slot);
        }
        self.read(slot);
    }

    /// Reads until the socket would block, counting every whole answer.
    fn read(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else {
            return;
        };
        let mut ended = None;
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    ended = Some(if c.inflight.is_empty() {
                        "the server closed the connection".to_string()
                    } else {
                        "the server closed the connection with requests in flight".to_string()
                    });
                    break;
                }
                Ok(n) => c.input.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    ended = Some(format!("read: {}", short_io(&e)));
                    break;
                }
            }
        }
        let now = Instant::now();
        let mut used = 0;
        while used < c.input.len() {
            match parse_answer(&c.input[used..]) {
                Answer::Incomplete => break,
                Answer::Bad(why) => {
                    ended = Some(why);
                    break;
                }
                Answer::Whole {
                    status,
                    keep,
                    body,
                    used: n,
                } => {
                    used += n;
                    if (100..200).contains(&status) {
                        continue; // an interim answer (100 Continue); the final one follows
                    }
                    let Some(req) = c.inflight.pop_front() else {
                        ended = Some(format!("an answer without a request (HTTP {status})"));
                        break;
                    };
                    c.stamped = c.stamped.saturating_sub(1);
                    self.counts.answer(status, &body, req.written, now);
                    if !keep {
                        ended = Some(
                            "the server closed the connection (Connection: close) with requests in flight"
                                .to_string(),
                        );
                        break;
                    }
                    self.slots.push_back((slot, c.gen));
                }
            }
        }
        c.input.drain(..used);
        if c.input.is_empty() && c.input.capacity() > READ_CHUNK {
            c.input = Vec::new();
        }
        if let Some(why) = ended {
            self.end(slot, why);
        }
    }

    /// Gives up connections that took too long to connect or to answer.
    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let why = match &self.conns[slot] {
                Some(c) if c.state == State::Connecting => (now.duration_since(c.opened)
                    >= CONNECT_TIMEOUT)
                    .then(|| "connect: timeout".to_string()),
                Some(c) => c
                    .inflight
                    .front()
                    .filter(|r| now.duration_since(r.queued) >= ANSWER_TIMEOUT)
                    .map(|_| format!("timeout: no answer within {}s", ANSWER_TIMEOUT.as_secs())),
                None => None,
            };
            if let Some(why) = why {
                self.end(slot, why);
            }
        }
    }

    /// The end of the run: whatever is still in flight fails; every connection closes.
    pub fn close_all(&mut self, why: &str) {
        self.reconnect = false;
        for slot in 0..self.conns.len() {
            if let Some(mut c) = self.conns[slot].take() {
                let _ = self.poll.registry().deregister(&mut c.stream);
                if c.state == State::Open {
                    self.counts
                        .fail(why.to_string(), c.inflight.len() as u64, "");
                }
            }
        }
    }
}

/// Open-loop pacing: writes due by `elapsed` into the window (write k is due at k/rate,
/// the first at 0), at most those due before the window's end.
pub fn due_by(elapsed: Duration, rate: f64, window: Duration) -> u64 {
    if rate <= 0.0 {
        return u64::MAX;
    }
    let total = scheduled(rate, window);
    ((elapsed.as_secs_f64() * rate).floor() as u64 + 1).min(total)
}

/// Writes the schedule asks for over the window: those due before its end.
pub fn scheduled(rate: f64, window: Duration) -> u64 {
    (window.as_secs_f64() * rate).ceil() as u64
}

/// When write `n` is due, into the window.
fn due_at(n: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate)
}

/// The progress line, once a second.
struct Ticker {
    started: Instant,
    last: Instant,
    last_acked: u64,
}

impl Ticker {
    fn tick(&mut self, phase: &str, w: &Writer, requested: usize) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let c = &w.counts;
        let rate = c.acknowledged.saturating_sub(self.last_acked) as f64 / dt;
        self.last = now;
        self.last_acked = c.acknowledged;
        let p99 = if c.latency.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.2} ms",
                c.latency.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        let cf: u64 = c.connect_failures.values().sum();
        eprintln!(
            "[{:>6.1}s] {phase:<10} open {}/{requested} connect-failed {cf} | acked {}/s (total {}) | in flight {} | p99 {p99} | failed {}",
            now.duration_since(self.started).as_secs_f64(),
            w.open_count(),
            human_count(rate),
            human_count(c.acknowledged as f64),
            c.in_flight(),
            c.failed
        );
    }
}

/// Runs scenario entities; returns the exit code.
pub fn run(cfg: &Config) -> i32 {
    let limit = crate::net::raise_nofile_limit();
    if cfg.connections + 64 > limit {
        eprintln!(
            "loadtest: --connections {}: this process may open {limit} files",
            cfg.connections
        );
        return 3;
    }
    let pids = &cfg.server_pids;
    let mut server = ServerStats {
        rss_before: procstat::sample(pids).map(|s| s.rss_bytes),
        ..ServerStats::default()
    };
    let plan = Plan {
        http: cfg.http.clone(),
        api_key: cfg.api_key.clone().unwrap_or_default(),
        connections: cfg.connections as usize,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        payload: cfg.payload,
        requests: Requests::Entities(Entities {
            entities: cfg.entities,
        }),
    };
    let requested = plan.connections;
    let mut w = match Writer::new(plan) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("loadtest: cannot create an event loop: {e}");
            return 3;
        }
    };
    let t = Instant::now();
    let mut ticker = Ticker {
        started: t,
        last: t,
        last_acked: 0,
    };

    // connect
    w.open_all();
    while w.connecting() > 0 && t.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1) {
        w.turn(Duration::from_millis(20));
        ticker.tick("connecting", &w, requested);
    }
    let connected = w.open_count();
    let cf: u64 = w.counts.connect_failures.values().sum();
    eprintln!(
        "loadtest: {connected} of {requested} connections open in {:.1}s ({cf} failed)",
        t.elapsed().as_secs_f64()
    );
    server.rss_connected = procstat::sample(pids).map(|s| s.rss_bytes);

    // window
    let window_start = procstat::sample(pids);
    server.rss_window_start = window_start.map(|s| s.rss_bytes);
    let t0 = Instant::now();
    let window = if connected > 0 {
        cfg.duration
    } else {
        Duration::ZERO
    };
    w.window_opens(t0, cfg.rate, window);
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= window {
            break;
        }
        w.turn(Duration::from_millis(50).min(window - elapsed));
        ticker.tick("writing", &w, requested);
    }
    let window_secs = t0.elapsed().as_secs_f64();
    w.window_ends();
    server.rss_window_end = procstat::sample(pids).map(|s| s.rss_bytes);

    // the answers in flight
    let d0 = Instant::now();
    while w.counts.in_flight() > 0 && d0.elapsed() < ANSWER_TIMEOUT + Duration::from_secs(1) {
        w.turn(Duration::from_millis(20));
        ticker.tick("draining", &w, requested);
    }
    let cpu_end = procstat::sample(pids);
    if let (Some(a), Some(b)) = (window_start, cpu_end) {
        server.cpu_seconds = Some((b.cpu_seconds - a.cpu_seconds).max(0.0));
    }
    w.close_all("no answer by the end of the run");

    let counts = w.counts.clone();
    let ack_secs = counts
        .last_ack
        .map_or(0.0, |l| l.saturating_duration_since(t0).as_secs_f64())
        .max(window_secs);
    let report = EntitiesReport {
        requested: requested as u64,
        connected: connected as u64,
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        entities: cfg.entities,
        payload: cfg.payload,
        scheduled: (cfg.rate > 0.0).then(|| scheduled(cfg.rate, window)),
        window_secs,
        ack_secs,
        counts,
        server,
        loadtest_cpu_seconds: procstat::self_cpu_seconds(),
    };
    let _ = report.print_table(&mut io::stderr().lock());
    if let Some(path) = &cfg.json {
        if let Err(e) = report.write_json(path) {
            eprintln!("loadtest: --json {}: {e}", path.display());
            return 3;
        }
    }
    if report.healthy() {
        0
    } else {
        1
    }
}

/// The result of an entities run.
#[derive(Debug, Clone)]
pub struct EntitiesReport {
    /// `--connections`.
    pub requested: u64,
    /// Connections open when the window started.
    pub connected: u64,
    pub pipeline: usize,
    /// The rate asked (0: as fast as the connections allow).
    pub rate: f64,
    pub entities: u64,
    pub payload: usize,
    /// Writes the schedule asked for (`None` in a closed loop).
    pub scheduled: Option<u64>,
    pub window_secs: f64,
    /// From the window's start to the last acknowledgement, at least the window.
    pub ack_secs: f64,
    pub counts: Counts,
    pub server: ServerStats,
    pub loadtest_cpu_seconds: f64,
}

/// The report's keys, in order (nested objects: their own order below).
const KEYS: &[&str] = &[
    "scenario",
    "target",
    "connections",
    "pipeline",
    "rate_asked",
    "entities",
    "payload",
    "scheduled",
    "sent",
    "acknowledged",
    "failed",
    "acks_per_sec",
    "latency_ms",
    "server",
    "ops",
    "failures",
    "failure_samples",
    "connect_failures",
    "reconnects",
];
const LATENCY_KEYS: &[&str] = &["p50", "p90", "p99", "p999", "max"];
const SERVER_KEYS: &[&str] = &[
    "cpu_seconds",
    "rss_bytes",
    "acks_per_cpu_second",
    "cpu_us_per_ack",
];
const OPS_KEYS: &[&str] = &["created", "updated"];

impl EntitiesReport {
    pub fn acks_per_sec(&self) -> f64 {
        if self.ack_secs > 0.0 {
            self.counts.acknowledged as f64 / self.ack_secs
        } else {
            0.0
        }
    }

    pub fn acks_per_cpu_second(&self) -> Option<f64> {
        let c = self.server.cpu_seconds?;
        (c > 0.0).then(|| self.counts.acknowledged as f64 / c)
    }

    pub fn cpu_us_per_ack(&self) -> Option<f64> {
        let c = self.server.cpu_seconds?;
        (self.counts.acknowledged > 0).then(|| c * 1e6 / self.counts.acknowledged as f64)
    }

    /// Latency quantile in ms (µs precision).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let h = &self.counts.latency;
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
    }

    fn max_ms(&self) -> Option<f64> {
        let h = &self.counts.latency;
        (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
    }

    /// Healthy: every connection opened, no write failed, and something was acknowledged
    /// when writes were sent.
    pub fn healthy(&self) -> bool {
        let c = &self.counts;
        c.failed == 0
            && c.connect_failures.is_empty()
            && self.connected == self.requested
            && (c.acknowledged > 0 || c.sent == 0)
    }

    pub fn to_json(&self) -> Value {
        let c = &self.counts;
        json!({
            "scenario": "entities",
            "target": "shardcast",
            "connections": self.connected,
            "pipeline": self.pipeline,
            "rate_asked": self.rate,
            "entities": self.entities,
            "payload": self.payload,
            "scheduled": self.scheduled,
            "sent": c.sent,
            "acknowledged": c.acknowledged,
            "failed": c.failed,
            "acks_per_sec": round2(self.acks_per_sec()),
            "latency_ms": {
                "p50": self.quantile_ms(0.50),
                "p90": self.quantile_ms(0.90),
                "p99": self.quantile_ms(0.99),
                "p999": self.quantile_ms(0.999),
                "max": self.max_ms(),
            },
            "server": {
                "cpu_seconds": self.server.cpu_seconds.map(round3),
                "rss_bytes": self.server.rss_window_end.or(self.server.rss_connected),
                "acks_per_cpu_second": self.acks_per_cpu_second().map(round2),
                "cpu_us_per_ack": self.cpu_us_per_ack().map(round2),
            },
            "ops": {"created": c.created, "updated": c.updated},
            "failures": c.failures,
            "failure_samples": c.samples,
            "connect_failures": c.connect_failures,
            "reconnects": c.reconnects,
        })
    }

    /// The report file's text, keys in [`KEYS`] order.
    pub fn to_json_string(&self) -> String {
        let v = self.to_json();
        let obj = |v: &Value, keys: &[&str]| -> String {
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("    \"{k}\": {}", v[*k]))
                .collect();
            format!("{{\n{}\n  }}", inner.join(",\n"))
        };
        let parts: Vec<String> = KEYS
            .iter()
            .map(|k| {
                let text = match *k {
                    "latency_ms" => obj(&v[*k], LATENCY_KEYS),
                    "server" => obj(&v[*k], SERVER_KEYS),
                    "ops" => obj(&v[*k], OPS_KEYS),
                    _ => v[*k].to_string(),
                };
                format!("  \"{k}\": {text}")
            })
            .collect();
        format!("{{\n{}\n}}\n", parts.join(",\n"))
    }

    pub fn write_json(&self, path: &std::path::Path) -> io::Result<()> {
        let text = self.to_json_string();
        if path.as_os_str() == "-" {
            io::stdout().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        }
    }

    pub fn print_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let c = &self.counts;
        let cf: u64 = c.connect_failures.values().sum();
        writeln!(out)?;
        writeln!(out, "loadtest entities against shardcast")?;
        row(
            out,
            "connections",
            format!(
                "{} open of {} ({cf} connect failures, {} reconnects), pipeline {}",
                self.connected, self.requested, c.reconnects, self.pipeline
            ),
        )?;
        let asked = match self.scheduled {
            Some(s) => format!("asked {:.1}/s: {s} scheduled", self.rate),
            None => "asked: as fast as the connections allow".to_string(),
        };
        row(
            out,
            "writes sent",
            format!(
                "{} in {:.1}s ({asked}), ids e0..e{}, {} B bodies",
                c.sent,
                self.window_secs,
                self.entities.saturating_sub(1),
                self.payload
            ),
        )?;
        row(
            out,
            "acknowledged",
            format!(
                "{} (created {}, updated {})",
                c.acknowledged, c.created, c.updated
            ),
        )?;
        row(out, "failed", c.failed.to_string())?;
        row(
            out,
            "acks/s",
            format!(
                "{} (over {:.2}s)",
                human_count(self.acks_per_sec()),
                self.ack_secs
            ),
        )?;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        row(
            out,
            "latency ms p50/p90/p99",
            format!(
                "{} / {} / {}",
                ms(self.quantile_ms(0.5)),
                ms(self.quantile_ms(0.9)),
                ms(self.quantile_ms(0.99))
            ),
        )?;
        row(
            out,
            "latency ms p99.9/max",
            format!("{} / {}", ms(self.quantile_ms(0.999)), ms(self.max_ms())),
        )?;
        let s = &self.server;
        row(
            out,
            "server cpu (window)",
            s.cpu_seconds.map_or("-".into(), |v| format!("{v:.2} s")),
        )?;
        row(
            out,
            "server cpu per write",
            match (self.cpu_us_per_ack(), self.acks_per_cpu_second()) {
                (Some(us), Some(per)) => {
                    format!("{us:.1} us ({} writes per cpu-s)", human_count(per))
                }
                _ => "-".into(),
            },
        )?;
        let b = |v: Option<u64>| v.map_or("-".to_string(), |v| human_bytes(v as f64));
        row(
            out,
            "server rss before/end",
            format!("{} / {}", b(s.rss_before), b(s.rss_window_end)),
        )?;
        row(
            out,
            "loadtest cpu",
            format!("{:.2} s", self.loadtest_cpu_seconds),
        )?;
        for (kind, n) in &c.failures {
            row(out, "failure", format!("{n} x {kind}"))?;
        }
        for sample in &c.samples {
            row(out, "failure sample", sample.clone())?;
        }
        for (why, n) in &c.connect_failures {
            row(out, "connect failure", format!("{n} x {why}"))?;
        }
        Ok(())
    }
}

pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(crate) fn row(out: &mut dyn Write, k: &str, v: String) -> io::Result<()> {
    writeln!(out, "  {k:<28} {v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"seq\":17,\"op\":\"created\"}  ";

    #[test]
    fn answers_whole_and_split_at_every_byte() {
        match parse_answer(OK) {
            Answer::Whole {
                status,
                keep,
                body,
                used,
            } => {
                assert_eq!((status, keep, used), (200, true, OK.len()));
                assert!(acknowledges(status, &body));
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..OK.len() {
            assert_eq!(parse_answer(&OK[..cut]), Answer::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn pipelined_answers_in_one_buffer() {
        let mut buf = OK.to_vec();
        buf.extend_from_slice(
            b"HTTP/1.1 500 Internal\r\ncontent-length: 29\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"INTERNAL\"}}",
        );
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3");
        let mut pos = 0;
        let mut got = Vec::new();
        while let Answer::Whole {
            status, keep, used, ..
        } = parse_answer(&buf[pos..])
        {
            got.push((status, keep));
            pos += used;
        }
        assert_eq!(got, vec![(200, true), (500, false)]);
        assert_eq!(parse_answer(&buf[pos..]), Answer::Incomplete);
    }

    #[test]
    fn chunked_and_bad_answers() {
        let a = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"seq\r\n4\r\n\":1}\r\n0\r\n\r\nNEXT";
        match parse_answer(a) {
            Answer::Whole { body, used, .. } => {
                assert_eq!(body, b"{\"seq\":1}");
                assert_eq!(used, a.len() - 4);
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..a.len() - 4 {
            assert_eq!(parse_answer(&a[..cut]), Answer::Incomplete, "cut {cut}");
        }
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\n\r\n"),
            Answer::Bad(_)
        ));
        assert!(matches!(parse_answer(b"garbage\r\n\r\n"), Answer::Bad(_)));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Answer::Bad(_)
        ));
        // 204 has no body
        assert!(matches!(
            parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Answer::Whole { used: 27, .. }
        ));
    }

    #[test]
    fn what_acknowledges() {
        assert!(acknowledges(200, br#"{"seq":1,"op":"updated"}"#));
        assert!(!acknowledges(200, br#"{"op":"updated"}"#));
        assert!(!acknowledges(202, br#"{"seq":1}"#));
        assert!(!acknowledges(500, br#"{"error":{"code":"INTERNAL"}}"#));
    }

    #[test]
    fn counting_answers_and_samples() {
        let mut c = Counts::default();
        let t = Instant::now();
        c.sent = 10;
        c.answer(
            200,
            br#"{"seq":1,"op":"created"}"#,
            Some(t),
            t + Duration::from_millis(3),
        );
        c.answer(
            200,
            br#"{"seq":2,"op":"updated"}"#,
            Some(t),
            t + Duration::from_millis(5),
        );
        for i in 0..7 {
            c.answer(503, format!("busy {i}").as_bytes(), Some(t), t);
        }
        c.answer(200, b"{}", Some(t), t);
        assert_eq!((c.acknowledged, c.created, c.updated), (2, 1, 1));
        assert_eq!(c.failed, 8);
        assert_eq!(c.failures["HTTP 503"], 7);
        assert_eq!(c.failures["HTTP 200 without \"seq\""], 1);
        assert_eq!(c.samples.len(), MAX_SAMPLES);
        assert_eq!(c.samples[0], "HTTP 503: busy 0");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.latency.len(), 2);
        assert!(c.latency.equivalent(c.latency.max(), 5000));
    }

    #[test]
    fn pacing() {
        let s = Duration::from_secs;
        assert_eq!(scheduled(100.0, s(2)), 200);
        assert_eq!(scheduled(0.5, s(1)), 1);
        assert_eq!(due_by(Duration::ZERO, 100.0, s(2)), 1);
        assert_eq!(due_by(Duration::from_millis(15), 100.0, s(2)), 2);
        assert_eq!(due_by(s(5), 100.0, s(2)), 200);
        assert_eq!(due_by(s(1), 0.0, s(2)), u64::MAX);
        assert_eq!(due_at(150, 100.0), Duration::from_millis(1500));
    }

    fn sample_report() -> EntitiesReport {
        let mut counts = Counts {
            sent: 110,
            acknowledged: 100,
            created: 60,
            updated: 40,
            failed: 10,
            ..Counts::default()
        };
        counts.failures.insert("HTTP 500".into(), 10);
        counts.samples.push("HTTP 500: {}".into());
        for v in [1000, 2000, 3000, 40_000] {
            counts.latency.record(v).unwrap();
        }
        EntitiesReport {
            requested: 4,
            connected: 4,
            pipeline: 2,
            rate: 0.0,
            entities: 60,
            payload: 100,
            scheduled: None,
            window_secs: 2.0,
            ack_secs: 2.5,
            counts,
            server: ServerStats {
                rss_before: Some(1000),
                rss_window_end: Some(5000),
                cpu_seconds: Some(0.5),
                ..ServerStats::default()
            },
            loadtest_cpu_seconds: 0.1,
        }
    }

    #[test]
    fn report_json_keys_in_order() {
        let r = sample_report();
        let text = r.to_json_string();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, r.to_json());
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = KEYS.to_vec();
        want.sort();
        assert_eq!(keys, want);
        let mut last = 0;
        for k in KEYS {
            let at = text.find(&format!("\"{k}\":")).unwrap();
            assert!(at >= last, "{k} out of order");
            last = at;
        }
        assert_eq!(v["scenario"], "entities");
        assert_eq!(v["acks_per_sec"], 40.0);
        assert_eq!(v["latency_ms"]["p50"], 2.0);
        // HDR: the highest value equivalent to 40 000 us (3 significant digits)
        assert!((v["latency_ms"]["max"].as_f64().unwrap() - 40.0).abs() < 0.05);
        assert_eq!(v["server"]["acks_per_cpu_second"], 200.0);
        assert_eq!(v["server"]["cpu_us_per_ack"], 5000.0);
        assert_eq!(v["server"]["rss_bytes"], 5000);
        assert_eq!(v["scheduled"], Value::Null);
        assert_eq!(v["ops"]["created"], 60);
        assert_eq!(v["failure_samples"][0], "HTTP 500: {}");
        assert!(!r.healthy());
        let mut buf = Vec::new();
        r.print_table(&mut buf).unwrap();
        let t = String::from_utf8(buf).unwrap();
        assert!(t.contains("failure sample"), "{t}");
        assert!(t.contains("as fast as the connections allow"), "{t}");
        let mut ok = sample_report();
        ok.counts.failed = 0;
        ok.counts.failures.clear();
        assert!(ok.healthy());
        ok.connected = 3;
        assert!(!ok.healthy());
    }
}
