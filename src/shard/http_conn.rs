//! HTTP connections on a shard: read requests, answer them through [`crate::api`],
//! run publish requests through ingest (on this thread) and answer, upgrade to
//! WebSocket.
//!
//! Part of [`Shard`]; runs on the shard's thread only. Requests on one connection are
//! answered in order.

use std::io::{self, Read};

use serde_json::json;

use crate::api::{self, Route};
use crate::http::{self, Parsed};
use crate::metrics::Source;
use crate::router::{Answer, ReplyTo};

use super::conn::{Ending, Kind};
use super::Shard;

impl Shard {
    pub(super) fn http_readable(&mut self, key: usize) {
        let mut eof = false;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
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
            if h.awaiting {
                // An answer is still to come ([`Shard::on_answer`] finishes this).
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

    /// Answers every complete request waiting in the connection's input.
    pub(super) fn http_process(&mut self, key: usize) {
        let max_body = self.shared.config.limits.max_http_body_bytes;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Kind::Http(h) = &mut conn.kind else {
                return;
            };
            if conn.ending != Ending::Open || conn.rbuf.is_empty() || h.awaiting {
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
                    conn.ending = Ending::AfterWrite;
                    conn.rbuf = Vec::new();
                    let r = http::error_response(status, code, &message, None, true);
                    self.send_raw(key, &r);
                    return;
                }
                Parsed::Complete(req, used) => {
                    h.continue_sent = false;
                    conn.rbuf.drain(..used);
                    if conn.rbuf.is_empty() {
                        conn.rbuf = Vec::new();
                    }
                    self.http_request(key, *req);
                }
            }
        }
    }

    fn http_request(&mut self, key: usize, req: http::Request) {
        // The shared flag, not this shard's drain state: readiness fails (and answers
        // say `Connection: close`) from the moment of the signal.
        let close = req.close || self.shared.is_draining();
        match api::route(&req, &self.shared, close) {
            Route::Respond(bytes) => {
                if close {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.ending = Ending::AfterWrite;
                    }
                }
                self.send_raw(key, &bytes);
            }
            Route::Upgrade { echo, accept } => {
                self.send_raw(key, &http::upgrade_response(&accept));
                self.start_ws(key, echo, &req.query);
                // Frames the client sent right behind its request are already here.
                let leftover = self.conns.get_mut(key).map(|c| std::mem::take(&mut c.rbuf));
                if let Some(mut buf) = leftover.filter(|b| !b.is_empty()) {
                    let (used, _) = self.ws_input(key, &mut buf);
                    if let Some(c) = self.conns.get_mut(key) {
                        if used < buf.len() {
                            buf.drain(..used);
                            c.rbuf = buf;
                        }
                    }
                }
            }
            Route::Publish(items) => {
                let reply = self.reply_to(key);
                match self.shared.backend.publish(&items, Source::Http, reply) {
                    Some(outcome) => {
                        let body = json!({
                            "accepted": outcome.accepted,
                            "firstSeq": outcome.first_seq,
                            "lastSeq": outcome.last_seq,
                        });
                        self.answer_http(key, 202, &body, close);
                    }
                    None => self.await_answer(key, close),
                }
            }
            Route::EntityWrite(write) => {
                let reply = self.reply_to(key);
                self.await_answer(key, close);
                self.shared.backend.write_entity(write, reply);
            }
        }
    }

    fn reply_to(&self, key: usize) -> ReplyTo {
        ReplyTo {
            shard: self.id,
            conn: key as u32,
            gen: self.conns.get(key).map_or(0, |c| c.gen),
        }
    }

    /// The request's answer comes through the mailbox ([`Shard::on_answer`]); until
    /// then the connection reads no further request.
    fn await_answer(&mut self, key: usize, close: bool) {
        if let Some(c) = self.conns.get_mut(key) {
            if let Kind::Http(h) = &mut c.kind {
                h.awaiting = true;
                h.close_after = close;
            }
        }
    }

    fn answer_http(&mut self, key: usize, status: u16, body: &serde_json::Value, close: bool) {
        if close {
            if let Some(c) = self.conns.get_mut(key) {
                c.ending = Ending::AfterWrite;
            }
        }
        self.send_raw(key, &http::json_response(status, body, close));
    }

    /// An answer worked out off the shard, for connection `key` if it is still the
    /// one that asked (`gen`).
    pub(super) fn on_answer(&mut self, key: usize, gen: u32, answer: Answer) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.gen != gen {
            return;
        }
        let Kind::Http(h) = &mut c.kind else {
            return;
        };
        if !h.awaiting {
            return;
        }
        h.awaiting = false;
        let close = h.close_after || self.shared.is_draining();
        match answer {
            Answer::Http { status, body } => self.answer_http(key, status, &body, close),
        }
        // Requests that arrived meanwhile.
        self.http_process(key);
        let eof = match self.conns.get(key).map(|c| &c.kind) {
            Some(Kind::Http(h)) => h.eof && !h.awaiting,
            _ => false,
        };
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
            if h.awaiting {
                // Its answer is on the way: close right after it.
                h.close_after = true;
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
