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
            // The peer is done sending (a half-close): what it sent is answered above;
            // once the answers are written, the connection is finished.
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.has_pending() {
                self.drop_conn(key, "http_eof");
            } else if conn.ending == Ending::Open {
                conn.ending = Ending::AfterWrite;
            }
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
            if conn.ending != Ending::Open || conn.rbuf.is_empty() {
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
                let outcome = self.shared.ingest.publish(&items, Source::Http);
                if close {
                    if let Some(c) = self.conns.get_mut(key) {
                        c.ending = Ending::AfterWrite;
                    }
                }
                let body = json!({
                    "accepted": outcome.accepted,
                    "firstSeq": outcome.first_seq,
                    "lastSeq": outcome.last_seq,
                });
                self.send_raw(key, &http::json_response(202, &body, close));
            }
        }
    }

    /// Drain: idle HTTP connections close now; one still writing an answer closes after
    /// it.
    pub(super) fn http_drain(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let pending = conn.has_pending();
        if pending {
            conn.ending = Ending::AfterWrite;
        } else {
            self.drop_conn(key, "draining");
        }
    }
}
