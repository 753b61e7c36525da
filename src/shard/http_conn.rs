//! HTTP connections on a shard: read requests, answer them through [`crate::api`],
//! run publish requests through ingest (on this thread, or a large body on an offload
//! thread) and answer, upgrade to WebSocket.
//!
//! Part of [`Shard`]; runs on the shard's thread only. Requests on one connection are
//! answered in order.

use std::io::{self, Read};

use crate::api::{self, Route};
use crate::backend::{published, PublishReply};
use crate::config::Compression;
use crate::http::{self, Parsed};
use crate::protocol::deflate;
use crate::router::{Answer, ReplyTo, ShardMsg};

use super::conn::{AnswerSlot, Ending, Kind};
use super::{Shard, TimerKind};

impl Shard {
    pub(super) fn http_readable(&mut self, key: usize) {
        let mut eof = false;
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if total >= HTTP_READ_BUDGET {
                // The rest next iteration, without waiting for a new edge.
                self.resume_later(key);
                break;
            }
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if conn.ending == Ending::HalfClosed {
                        continue;
                    }
                    conn.rbuf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(key, "read_error");
                    return;
                }
            }
        }
        self.http_process(key);
        if eof {
            self.http_eof(key);
        }
    }

    /// The peer is done sending (a half-close): what it sent is answered; once the
    /// answers are written, the connection is finished.
    fn http_eof(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Kind::Http(h) = &mut conn.kind {
            if !h.pending.is_empty() || h.stashed.is_some() {
                // Answers are still to come ([`Shard::on_answer`] finishes this).
                h.eof = true;
                return;
            }
        }
        if !conn.has_pending() {
            self.drop_conn(key, "http_eof");
        } else if conn.ending == Ending::Open {
            conn.ending = Ending::AfterWrite;
        }
    }

    /// Answers every complete request waiting in the connection's input (up to
    /// [`MAX_PIPELINED`] awaiting their answers).
    pub(super) fn http_process(&mut self, key: usize) {
        match self.conns.get_mut(key).map(|c| &mut c.kind) {
            Some(Kind::Http(h)) if !h.processing => h.processing = true,
            _ => return,
        }
        self.http_process_loop(key);
        if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
            h.processing = false;
        }
    }

    fn http_process_loop(&mut self, key: usize) {
        let max_body = self.node.config().limits.max_http_body_bytes;
        let now = self.now;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Kind::Http(h) = &mut conn.kind else {
                return;
            };
            if conn.ending != Ending::Open
                || conn.rbuf.is_empty()
                || h.closing
                || h.stashed.is_some()
                || h.publishing.is_some()
                || h.pending.len() >= MAX_PIPELINED
            {
                return;
            }
            match http::parse(&conn.rbuf, max_body) {
                Parsed::NeedHead => return,
                Parsed::NeedBody { expect_continue } => {
                    if expect_continue && !h.continue_sent {
                        h.continue_sent = true;
                        self.send_raw(key, b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    return;
                }
                Parsed::Error(status, message) => {
                    let code = if status == 413 {
                        "LIMIT_EXCEEDED"
                    } else {
                        "BAD_MESSAGE"
                    };
                    conn.rbuf = Vec::new();
                    let r = http::error_response(status, code, &message, None, true);
                    self.answer_now(key, r, true);
                    return;
                }
                Parsed::Complete(req, used) => {
                    h.continue_sent = false;
                    h.since = now;
                    conn.rbuf.drain(..used);
                    if conn.rbuf.is_empty() {
                        conn.rbuf = Vec::new();
                    }
                    self.http_request(key, *req);
                }
            }
        }
    }

    fn http_request(&mut self, key: usize, mut req: http::Request) {
        // Named in the log line of a refused credential.
        req.peer = self.conns.get(key).and_then(|c| c.sock.peer_addr().ok());
        // The shared flag, not this shard's drain state: readiness fails (and answers
        // say `Connection: close`) from the moment of the signal.
        let close = req.close || self.node.is_draining();
        // Browsers (PROTOCOL.md §11): a disallowed `Origin` is refused before anything
        // else, a preflight is answered here, and an allowed origin is named on the answer.
        let route = match api::check_origin(&req, &self.node, close) {
            Err(answer) => Route::Respond(answer),
            Ok(cors) => {
                if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
                    h.cors = cors.map(String::into_boxed_str);
                }
                api::route(&req, &self.node, close)
            }
        };
        if !matches!(route, Route::Upgrade { .. }) && !self.admit_http(key, &req) {
            return;
        }
        match route {
            Route::Respond(bytes) => self.answer_now(key, bytes, close),
            Route::Upgrade {
                echo,
                accept,
                channel,
            } => {
                let waiting = matches!(
                    self.conns.get(key).map(|c| &c.kind),
                    Some(Kind::Http(h)) if !h.pending.is_empty()
                );
                if waiting {
                    // Switching protocols must follow every earlier answer.
                    if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
                        h.stashed = Some(Box::new(req));
                    }
                    return;
                }
                if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
                    // Earlier requests on this connection counted it as an HTTP client;
                    // `limits.max_connections` governs it from here.
                    if std::mem::take(&mut h.counted) {
                        self.node.http_closed();
                    }
                }
                // permessage-deflate when the client offers it and the node compresses.
                let deflate = if self.node.config().delivery.compression == Compression::On {
                    deflate::negotiate(
                        req.headers
                            .iter()
                            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                            .map(|(_, v)| v.as_str()),
                    )
                } else {
                    None
                };
                let extension = deflate.map(|a| a.response());
                self.send_raw(key, &http::upgrade_response(&accept, extension.as_deref()));
                self.start_ws(key, echo, &req.query, channel, deflate);
                // Frames the client sent right behind its request are already here.
                self.ws_input(key);
            }
            Route::Publish(items) => {
                let Some(reply) = self.await_answer(key, close) else {
                    return;
                };
                let published = self
                    .node
                    .backend()
                    .publish(&items, PublishReply::Rest(reply))
                    .and_then(|outcome| published(PublishReply::Rest(reply), outcome));
                if let Some((_, Answer::Http { status, body })) = published {
                    self.fill_answer(key, reply.req, http::json_response(status, &body, close));
                }
            }
            Route::PublishOffShard => {
                let Some(reply) = self.await_answer(key, close) else {
                    return;
                };
                if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
                    // A connection's publications are sequenced in request order: nothing
                    // more of it is read until this one is answered.
                    h.publishing = Some(reply.req);
                }
                self.publish_off_shard(std::mem::take(&mut req.body), reply);
            }
            Route::Ticket(claims) => {
                if let Some(reply) = self.await_answer(key, close) {
                    let ttl = self.node.config().auth.ticket_ttl_ms;
                    self.node.backend().issue_ticket(claims, ttl, reply);
                }
            }
            Route::EntityRead(read) => {
                if self.node.backend().reads_wait() {
                    if let Some(reply) = self.await_answer(key, close) {
                        self.node.backend().read_entities(read, reply);
                    }
                } else if read.is_scan() {
                    // A list scans the collection: off the shard (`crate::offload`).
                    if let Some(reply) = self.await_answer(key, close) {
                        self.read_off_shard(read, reply.conn, reply.gen, reply.req);
                    }
                } else {
                    // The replica is the truth here: answered now, from this thread.
                    let (status, body) = read.run(self.node.backend().replica());
                    let bytes = http::response(status, "application/json", &body, close);
                    self.answer_now(key, bytes, close);
                }
            }
            Route::EntityWrite(write) => {
                if let Some(reply) = self.await_answer(key, close) {
                    self.node.backend().write_entity(write, reply);
                }
            }
            Route::Channels { caller, req } => {
                if let Some(reply) = self.await_answer(key, close) {
                    self.node
                        .backend()
                        .services(crate::services::ServiceCmd::Channels { caller, req, reply });
                }
            }
            Route::Services(req) => {
                if let Some(reply) = self.await_answer(key, close) {
                    self.node
                        .backend()
                        .services(crate::services::ServiceCmd::Ops { req, reply });
                }
            }
        }
    }

    /// A whole request that is not a WebSocket upgrade arrived: from now on the connection
    /// counts against `limits.max_http_connections` (the cap on plain HTTP clients, which
    /// keep their connection between requests). Beyond the cap the request is refused
    /// with 503 and the connection closed; a health probe (`GET /healthz`, `/readyz`) is
    /// answered instead, with `Connection: close`, so that a full HTTP cap never makes a
    /// load balancer or an orchestrator take the node for dead. Returns whether the
    /// request may go on.
    fn admit_http(&mut self, key: usize, req: &http::Request) -> bool {
        let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) else {
            return false;
        };
        if h.counted {
            return true;
        }
        let cap = self.node.config().limits.max_http_connections;
        if self.node.http_opened() <= cap {
            h.counted = true;
            return true;
        }
        self.node.http_closed();
        if req.method == "GET" && matches!(req.path.as_str(), "/healthz" | "/readyz") {
            if let Route::Respond(answer) = api::route(req, &self.node, true) {
                self.answer_now(key, answer, true);
                return false;
            }
        }
        crate::metrics::http_closed("http_full");
        let body = format!(
            "{cap} connections that are not WebSockets are open \
             (limits.max_http_connections); try again later"
        );
        let r = http::error_response(503, "LIMIT_EXCEEDED", &body, None, true);
        self.answer_now(key, r, true);
        false
    }

    /// Takes a slot for a request's answer, in request order; the answer comes through
    /// [`Shard::fill_answer`] (or the mailbox: [`Shard::on_answer`]).
    fn await_answer(&mut self, key: usize, close: bool) -> Option<ReplyTo> {
        let shard = self.id;
        let c = self.conns.get_mut(key)?;
        let gen = c.gen;
        let Kind::Http(h) = &mut c.kind else {
            return None;
        };
        let cors = h.cors.take();
        h.pending.push_back(AnswerSlot {
            response: None,
            close,
            cors,
        });
        h.closing |= close;
        Some(ReplyTo {
            shard,
            conn: key as u32,
            gen,
            req: h.base.wrapping_add(h.pending.len() as u32 - 1),
        })
    }

    /// An answer known at once: written now, or queued behind earlier answers still to
    /// come.
    fn answer_now(&mut self, key: usize, bytes: Vec<u8>, close: bool) {
        if let Some(reply) = self.await_answer(key, close) {
            self.fill_answer(key, reply.req, bytes);
        }
    }

    /// Fills the answer of request `req` and queues every answer that is now next in
    /// order, to be written at the end of this part of the loop turn (corked, see
    /// [`Shard::send_corked_raw`]). (It reads no further request: its callers do, so that a
    /// long pipeline of answers known at once never recurses.)
    fn fill_answer(&mut self, key: usize, req: u32, bytes: Vec<u8>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let Kind::Http(h) = &mut c.kind else {
            return;
        };
        let at = req.wrapping_sub(h.base) as usize;
        let Some(slot) = h.pending.get_mut(at) else {
            return;
        };
        slot.response = Some(match &slot.cors {
            Some(origin) => api::with_cors(bytes, origin),
            None => bytes,
        });
        let mut out: Vec<u8> = Vec::new();
        let mut close = false;
        while h.pending.front().is_some_and(|s| s.response.is_some()) {
            let Some(slot) = h.pending.pop_front() else {
                break;
            };
            h.base = h.base.wrapping_add(1);
            out.extend_from_slice(&slot.response.unwrap_or_default());
            if slot.close {
                close = true;
                h.pending.clear();
                h.stashed = None;
                break;
            }
        }
        if close {
            c.ending = Ending::AfterWrite;
            c.rbuf = Vec::new();
        }
        if h.pending.is_empty() {
            // Answered: the next request's time starts now.
            h.since = self.now;
        }
        if !out.is_empty() {
            self.send_corked_raw(key, &out);
        }
    }

    /// `limits.request_timeout_ms` ran out, perhaps: a connection that has not sent its
    /// whole next request in time (a slow head or body, a handshake that never finishes,
    /// an answer it does not read) or that sat idle since its last answer is closed. One
    /// timer per connection, moved forward here, so requests cost no timer of their own.
    pub(super) fn request_timeout(&mut self, key: usize) {
        let timeout = self.node.config().limits.request_timeout_ms;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let gen = c.gen;
        // A WebSocket now: `auth_timeout_ms` and the heartbeat govern it.
        let Kind::Http(h) = &c.kind else {
            return;
        };
        if !h.pending.is_empty() || h.stashed.is_some() {
            // The server owes the answer: the client is not the one late.
            self.arm(self.now + timeout, key, gen, TimerKind::RequestTimeout);
            return;
        }
        let due = h.since + timeout;
        if self.now < due {
            self.arm(due, key, gen, TimerKind::RequestTimeout);
            return;
        }
        let mid_request = !c.rbuf.is_empty() || c.has_pending();
        if !c.rbuf.is_empty() {
            // Tell a slow but honest client why (best effort; it is closed either way).
            let message = format!(
                "the request did not arrive within limits.request_timeout_ms ({timeout} ms)"
            );
            let r = http::error_response(408, "BAD_MESSAGE", &message, None, true);
            let _ = io::Write::write(&mut c.sock, &r);
        }
        let reason = if mid_request {
            "request_timeout"
        } else {
            "idle_timeout"
        };
        crate::metrics::http_closed(reason);
        self.drop_conn(key, reason);
    }

    /// Parses, checks and sequences a large publish body on an offload thread (see
    /// [`Route::PublishOffShard`]); when the publications became service tasks the answer
    /// comes once those are durable, as on the shard.
    fn publish_off_shard(&mut self, body: Vec<u8>, reply: ReplyTo) {
        let max_batch = self.node.config().limits.max_publish_batch;
        self.answer_off_shard(reply.conn, reply.gen, reply.req, move |backend| {
            match api::publish_body(&body, max_batch) {
                Err((status, body)) => Some(Answer::Http { status, body }),
                Ok(items) => backend
                    .publish(&items, PublishReply::Rest(reply))
                    .and_then(|outcome| published(PublishReply::Rest(reply), outcome))
                    .map(|(_, answer)| answer),
            }
        });
    }

    /// Runs an entity read on an offload thread.
    fn read_off_shard(&mut self, read: crate::entities::EntityRead, conn: u32, gen: u32, req: u32) {
        self.answer_off_shard(conn, gen, req, move |backend| {
            let (status, body) = read.run(backend.replica());
            Some(Answer::Json { status, body })
        });
    }

    /// Runs `job` on an offload thread ([`crate::offload`]); its answer, if it has one
    /// (`None`: someone else answers later), comes back through this shard's mailbox into
    /// request `req`'s slot.
    fn answer_off_shard(
        &mut self,
        conn: u32,
        gen: u32,
        req: u32,
        job: impl FnOnce(&dyn crate::backend::Backend) -> Option<Answer> + Send + 'static,
    ) {
        let backend = self.node.backend_handle();
        let mailbox = self.mailbox.clone();
        self.node.offload().run(move || {
            if let Some(answer) = job(&*backend) {
                mailbox.send_control(ShardMsg::Answer {
                    conn,
                    gen,
                    req,
                    answer,
                });
            }
        });
    }

    /// An answer worked out off the shard, for connection `key` if it is still the
    /// one that asked (`gen`).
    pub(super) fn on_answer(&mut self, key: usize, gen: u32, req: u32, answer: Answer) {
        let answer = match answer {
            Answer::Ws(bytes) => {
                match self.conns.get(key) {
                    Some(c) if c.gen == gen && c.ws().is_some_and(|w| !w.close_sent) => {
                        self.send_corked(key, &bytes)
                    }
                    _ => {}
                }
                return;
            }
            Answer::Ticket(redeemed) => {
                self.ticket_redeemed(key, gen, redeemed);
                return;
            }
            // A scan runs off the shard and answers again; a lookup here, on the shard,
            // not on the thread that saw the wait end.
            Answer::Read(read) if read.is_scan() => {
                self.read_off_shard(read, key as u32, gen, req);
                return;
            }
            Answer::Read(read) => {
                let (status, body) = read.run(self.node.backend().replica());
                Answer::Json { status, body }
            }
            other => other,
        };
        match self.conns.get(key) {
            Some(c) if c.gen == gen && matches!(c.kind, Kind::Http(_)) => {}
            _ => return,
        }
        let close = match self.conns.get(key).map(|c| &c.kind) {
            Some(Kind::Http(h)) => h
                .pending
                .get(req.wrapping_sub(h.base) as usize)
                .is_some_and(|s| s.close),
            _ => false,
        } || self.node.is_draining();
        let Some(bytes) = http_bytes(answer, close) else {
            return;
        };
        if close {
            if let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) {
                if let Some(s) = h.pending.get_mut(req.wrapping_sub(h.base) as usize) {
                    s.close = true;
                }
            }
        }
        self.fill_answer(key, req, bytes);
        let Some(Kind::Http(h)) = self.conns.get_mut(key).map(|c| &mut c.kind) else {
            return;
        };
        if h.publishing == Some(req) {
            h.publishing = None;
        }
        if !h.pending.is_empty() {
            // Room for requests that waited.
            self.http_process(key);
            return;
        }
        let stashed = h.stashed.take();
        let eof = h.eof;
        if let Some(req) = stashed {
            self.http_request(key, *req);
        }
        self.http_process(key);
        if eof {
            self.http_eof(key);
        }
    }

    /// Drain: idle HTTP connections close now; one still writing an answer closes after
    /// it.
    pub(super) fn http_drain(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Kind::Http(h) = &mut conn.kind {
            if let Some(last) = h.pending.back_mut() {
                // Answers are on the way: close right after the last.
                last.close = true;
                h.closing = true;
                return;
            }
        }
        let pending = conn.has_pending();
        if pending {
            conn.ending = Ending::AfterWrite;
        } else {
            self.drop_conn(key, "draining");
        }
    }
}

/// Most bytes read from one HTTP connection per loop iteration: a 2 MB publish body read
/// in one go took 4 ms of the shard's turn (the copies and the buffer's growth); in
/// slices of this size it takes ~0.5 ms a turn and other connections go in between.
const HTTP_READ_BUDGET: usize = 256 << 10;

/// Requests of one connection awaiting their answers before the shard stops reading more
/// of its input: enough for a pipelining client to fill a group commit, few enough that
/// one connection cannot queue unbounded work.
const MAX_PIPELINED: usize = 64;

/// A REST answer's bytes (`None`: not a REST answer).
fn http_bytes(answer: Answer, close: bool) -> Option<Vec<u8>> {
    match answer {
        Answer::Http { status, body } => Some(http::json_response(status, &body, close)),
        Answer::Json { status, body } => {
            Some(http::response(status, "application/json", &body, close))
        }
        Answer::Ws(_) | Answer::Ticket(_) | Answer::Read(_) => None,
    }
}
