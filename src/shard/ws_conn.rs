//! WebSocket sessions on a shard: reading frames, the commands of PROTOCOL.md §§2–5,
//! authentication, heartbeats, limits and the closing handshake.
//!
//! Part of [`Shard`]; runs on the shard's thread only. Input is read into the shard's
//! scratch buffer; only an incomplete frame is kept on the connection. Errors answer
//! with an `error` message and keep the connection, except where the protocol names a
//! close code (4001, 4002, 4003, 1009, 1007, 1002). A refused credential (or a `group`
//! option against the token's claim) is counted and logged by `auth::failures`.

use std::io::{self, Read};
use std::rc::Rc;

use serde_json::{json, Value};

use crate::auth::jwt::{self, Claims, Role};
use crate::metrics;
use crate::options::ConnOptions;
use crate::protocol::deflate::{Agreed, InflateError};
use crate::protocol::ws::{self, close, OpCode, WsError};
use crate::protocol::{self, Command, ErrorCode, Refusal, SubscriptionRequest};

use super::conn::{Ending, Fragments, Frame, Kind, Subscription, WsState};
use super::feed::Leave;
use super::filtered::FilteredEntry;
use super::index::Entry;
use super::{Shard, TimerKind, LINGER_MS};

/// Most bytes read from one socket per readable event before others get a turn; the
/// rest is read on the next loop iteration.
const READ_BUDGET: usize = 1 << 20;

/// What to do after handling one frame.
pub(super) enum Flow {
    Continue,
    /// Stop reading this connection (closed, closing or paused).
    Stop,
}

impl Shard {
    /// Turns an upgraded HTTP connection into a WebSocket session and authenticates it
    /// from the URL when it carries a `token` or `uuid`.
    pub(super) fn start_ws(
        &mut self,
        key: usize,
        echo: bool,
        query: &str,
        channel: Option<String>,
        deflate: Option<Agreed>,
    ) {
        let cfg = self.node.config();
        self.next_number += 1;
        let mut state = WsState::new(
            echo,
            self.next_number,
            cfg.delivery.queue_capacity,
            cfg.limits.commands_burst as f32,
            self.now,
        );
        if echo {
            state.batch_ms = 0;
            state.batch_max = cfg.delivery.queue_capacity as u32;
            state.claims = Some(Rc::new(Claims {
                sub: "echo".into(),
                exp: u64::MAX,
                role: Role::Admin,
                scopes: jwt::Scopes::All,
                group: None,
                org: None,
            }));
        }
        let auth_ms = cfg.auth.auth_timeout_ms;
        let max_connections = cfg.limits.max_connections;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        state.channel = channel.map(|c| c.as_str().into());
        state.deflate = deflate.map(|agreed| {
            Box::new(super::conn::WsDeflate {
                agreed,
                inflater: None,
            })
        });
        // No longer an HTTP connection (the upgrade took it off the HTTP count):
        // `limits.max_connections` and the auth timeout govern it from here.
        conn.kind = Kind::Ws(state);
        let gen = conn.gen;
        if echo {
            return;
        }
        self.role_counts[0] += 1;
        self.metrics.connections[0].set(self.role_counts[0] as f64);
        let open = self.node.connection_opened();
        if open > max_connections {
            self.close_ws(key, close::SERVER_FULL, "server full", "server_full");
            return;
        }
        let pairs: Vec<(String, String)> = crate::http::query_pairs(query).collect();
        let find = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(token) = find("token") {
            let claims = jwt::verify_with(self.node.keys(), &token, crate::time::unix_secs())
                .map_err(|e| (e.reason(), e.to_string()));
            self.url_credential(key, gen, &pairs, claims);
        } else if let Some(ticket) = find("uuid") {
            // The backend answers through the mailbox (the ticket may be in Redis): until
            // then the connection reads nothing, so commands sent right behind the upgrade
            // wait for the credential as they do with `?token=`; the auth timeout bounds
            // the wait.
            if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
                ws.ticket_wait = Some(Box::new(pairs));
            }
            self.arm(self.now + auth_ms, key, gen, TimerKind::AuthTimeout);
            let reply = crate::router::ReplyTo {
                shard: self.id,
                conn: key as u32,
                gen,
                req: 0,
            };
            self.node.backend().redeem_ticket(&ticket, reply);
        } else {
            self.arm(self.now + auth_ms, key, gen, TimerKind::AuthTimeout);
        }
    }

    /// The backend's answer to a `?uuid=` ticket of connection `key` (if it is still the
    /// one that asked and still waiting): authenticate or refuse, then read what the
    /// client sent meanwhile.
    pub(super) fn ticket_redeemed(
        &mut self,
        key: usize,
        gen: u32,
        redeemed: Result<Claims, crate::auth::tickets::TicketError>,
    ) {
        let Some(pairs) = self.ws_of(key, gen).and_then(|w| w.ticket_wait.take()) else {
            return;
        };
        let claims = redeemed.map_err(|e| (e.reason(), e.to_string()));
        self.url_credential(key, gen, &pairs, claims);
        // Frames that arrived with the upgrade or while waiting are in `rbuf` or the
        // socket: handle the first now, and read the socket again without a new edge.
        self.ws_input(key);
        self.resume_later(key);
    }

    /// A credential from the URL (`?token=`, or a redeemed `?uuid=` ticket), checked:
    /// authenticate with the URL's options, or refuse.
    fn url_credential(
        &mut self,
        key: usize,
        gen: u32,
        pairs: &[(String, String)],
        claims: Result<Claims, (&'static str, String)>,
    ) {
        let auth_ms = self.node.config().auth.auth_timeout_ms;
        match claims {
            Err((reason, message)) => self.refuse_auth(key, reason, &message),
            Ok(claims) => {
                let mut opts = ConnOptions::defaults(self.node.config());
                let q = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                match opts.apply_query(self.node.config(), q) {
                    Ok(()) => self.authenticate(key, claims, opts, None),
                    Err(m) => {
                        // The credential was fine but the options are not: the client may
                        // still authenticate with an `auth` message carrying good ones.
                        self.send_error(
                            key,
                            ErrorCode::BadMessage,
                            &format!("{m}; the connection is not authenticated"),
                            None,
                        );
                        self.arm(self.now + auth_ms, key, gen, TimerKind::AuthTimeout);
                    }
                }
            }
        }
    }

    fn refuse_auth(&mut self, key: usize, reason: &'static str, message: &str) {
        if reason == crate::auth::tickets::TicketError::Unavailable.reason() {
            // Not a bad credential: the ticket could not be checked (cluster mode, Redis
            // away). `UNAVAILABLE` and 1013 (try again later), and the ticket is not used.
            crate::auth::failures::refused(reason, || self.whence(key));
            self.send_error(key, ErrorCode::Unavailable, message, None);
            self.close_ws(key, close::SERVER_FULL, "try again later", "unavailable");
            return;
        }
        self.refuse_connection(key, reason, ErrorCode::Unauthorized, message, None);
    }

    /// A credential refused, or one that does not allow what the connection asked for:
    /// counted and logged, an `error` with `code`, then close 4001.
    fn refuse_connection(
        &mut self,
        key: usize,
        reason: &'static str,
        code: ErrorCode,
        message: &str,
        request_id: Option<&Value>,
    ) {
        crate::auth::failures::refused(reason, || self.whence(key));
        self.send_error(key, code, message, request_id);
        self.close_ws(key, close::UNAUTHORIZED, "unauthorized", "unauthorized");
    }

    /// What the log line of a refused credential names: the socket's request path (never
    /// its query, which may hold the token) and its peer's address.
    fn whence(&self, key: usize) -> (String, Option<std::net::SocketAddr>) {
        let Some(c) = self.conns.get(key) else {
            return ("/ws".into(), None);
        };
        let path = match c.ws().and_then(|w| w.channel.as_deref()) {
            Some(channel) => format!("/channels/{channel}"),
            None => "/ws".into(),
        };
        (path, c.sock.peer_addr().ok())
    }

    fn authenticate(
        &mut self,
        key: usize,
        claims: Claims,
        opts: ConnOptions,
        request_id: Option<&Value>,
    ) {
        let heartbeat = self.node.config().delivery.heartbeat_ms;
        // The `group` option names a group only for a token without a `group` claim
        // (PROTOCOL.md §2): a token issued for one group cannot join another's queue and
        // complete its tasks. Equal to the claim, it changes nothing and is accepted.
        if let (Some(claim), Some(option)) = (claims.group.as_deref(), opts.group.as_deref()) {
            if claim != option {
                let m = format!(
                    "the group option '{option}' differs from the token's group claim '{claim}': \
                     a token with a group claim belongs to that group (omit the option)"
                );
                self.refuse_connection(key, "group_mismatch", ErrorCode::Forbidden, &m, request_id);
                return;
            }
        }
        // A service's group names its tasks (`group:seq`) and its logs' path
        // (`$logs/{group}`): it must be a path segment.
        // (A channel socket is its channel's, whatever the token's role.)
        let on_channel = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.channel.is_some());
        let group = (claims.role == Role::Service && !on_channel).then(|| {
            opts.group
                .clone()
                .unwrap_or_else(|| claims.group().to_string())
        });
        if let Some(g) = &group {
            if let Err(r) = crate::entities::validate_segment("service group", g) {
                self.refuse_auth(key, "malformed", &r.message);
                return;
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        let old_slot = ws.role_slot();
        ws.claims = Some(Rc::new(claims));
        ws.batch_ms = opts.batch_ms;
        ws.batch_max = opts.batch_max;
        ws.framing = opts.framing;
        let new_slot = ws.role_slot();
        let id = format!("{}-{}-{:x}", self.node.id(), self.id, ws.number);
        self.role_counts[old_slot] -= 1;
        self.role_counts[new_slot] += 1;
        self.metrics.connections[old_slot].set(self.role_counts[old_slot] as f64);
        self.metrics.connections[new_slot].set(self.role_counts[new_slot] as f64);
        let msg = json!({"type": "authenticated", "connectionId": id, "heartbeatMs": heartbeat});
        self.send_text(key, &protocol::to_bytes(&msg));
        self.arm(self.now + heartbeat, key, gen, TimerKind::Ping);
        if let Some(g) = group {
            self.attach_service(key, g.into());
        } else if let Some(c) = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .and_then(|w| w.channel.clone())
        {
            self.attach_channel(key, c);
        }
    }

    pub(super) fn ws_readable(&mut self, key: usize) {
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn
                .ws()
                .is_some_and(|w| w.read_paused || w.parked || w.ticket_wait.is_some())
            {
                return;
            }
            let n = match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = if conn.ending == Ending::Open {
                        "eof"
                    } else {
                        "closed"
                    };
                    self.drop_conn(key, reason);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(key, "read_error");
                    return;
                }
            };
            if conn.ending == Ending::HalfClosed {
                // Our side is done; input is only drained until the peer closes.
                continue;
            }
            total += n;
            let flow = if conn.rbuf.is_empty() {
                // The common case: whole frames in this read, nothing kept.
                let mut buf = std::mem::take(&mut self.scratch);
                let (used, flow) = self.ws_frames(key, &mut buf[..n]);
                if used < n {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.rbuf.extend_from_slice(&buf[used..n]);
                    }
                }
                self.scratch = buf;
                flow
            } else {
                conn.rbuf.extend_from_slice(&self.scratch[..n]);
                let mut buf = std::mem::take(&mut conn.rbuf);
                let (used, flow) = self.ws_frames(key, &mut buf);
                if let Some(conn) = self.conns.get_mut(key) {
                    if used < buf.len() {
                        buf.drain(..used);
                        conn.rbuf = buf;
                    }
                }
                flow
            };
            if matches!(flow, Flow::Stop) || total >= READ_BUDGET {
                if total >= READ_BUDGET {
                    // Come back next iteration without waiting for a new edge.
                    self.resume_later(key);
                }
                return;
            }
        }
    }

    /// Reading stopped early (budget or back-pressure) must resume without a new
    /// readiness edge: mark the connection to be read again.
    pub(super) fn resume_later(&mut self, key: usize) {
        if let Some(c) = self.conns.get(key) {
            self.deferred_reads.push((key as u32, c.gen));
        }
    }

    /// Reads again after back-pressure lifted.
    pub(super) fn resume_read(&mut self, key: usize) {
        let cap = self.node.config().delivery.queue_capacity;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        if ws.read_paused && ws.ring.len() < cap {
            ws.read_paused = false;
            self.resume_later(key);
        }
    }

    /// Handles the frames already read into `rbuf` (sent right behind the upgrade
    /// request, or while a ticket was being redeemed or a subscribe was parked); none
    /// while a ticket is still with the backend, a subscribe is parked, or once a close
    /// was sent. What is left of an incomplete frame stays.
    pub(super) fn ws_input(&mut self, key: usize) {
        let leftover = self
            .conns
            .get_mut(key)
            .filter(|c| {
                c.ws()
                    .is_some_and(|w| w.ticket_wait.is_none() && !w.parked && !w.close_sent)
            })
            .map(|c| std::mem::take(&mut c.rbuf));
        let Some(mut buf) = leftover.filter(|b| !b.is_empty()) else {
            return;
        };
        let (used, _) = self.ws_frames(key, &mut buf);
        if let Some(c) = self.conns.get_mut(key) {
            if used < buf.len() {
                buf.drain(..used);
                c.rbuf = buf;
            }
        }
    }

    /// Parses and handles the complete frames at the front of `buf`; returns how many
    /// bytes were consumed.
    fn ws_frames(&mut self, key: usize, buf: &mut [u8]) -> (usize, Flow) {
        let max = self.max_message(key);
        let deflate = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.deflate.is_some());
        let mut pos = 0;
        loop {
            let h = match ws::parse_header_with(&buf[pos..], deflate) {
                Ok(Some(h)) => h,
                Ok(None) => return (pos, Flow::Continue),
                Err(e) => {
                    self.protocol_error(key, e);
                    return (pos, Flow::Stop);
                }
            };
            let pending = self
                .conns
                .get(key)
                .and_then(|c| c.ws())
                .and_then(|w| w.fragments.as_ref())
                .map_or(0, |f| f.data.len() as u64);
            if !h.opcode.is_control() && pending + h.payload_len > max as u64 {
                self.protocol_error(key, WsError::TooBig(pending + h.payload_len));
                return (pos, Flow::Stop);
            }
            let end = pos + h.header_len + h.payload_len as usize;
            if buf.len() < end {
                return (pos, Flow::Continue);
            }
            let payload = &mut buf[pos + h.header_len..end];
            ws::unmask(payload, h.mask);
            pos = end;
            if let Flow::Stop = self.ws_frame(key, h.opcode, h.fin, h.rsv1, payload) {
                return (pos, Flow::Stop);
            }
        }
    }

    fn max_message(&self, key: usize) -> usize {
        let echo = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.echo);
        if echo {
            // Conformance runs send messages of up to 16 MiB to the echo endpoint.
            ECHO_MAX_MESSAGE.max(self.node.config().limits.max_message_bytes)
        } else {
            self.node.config().limits.max_message_bytes
        }
    }

    fn ws_frame(
        &mut self,
        key: usize,
        opcode: OpCode,
        fin: bool,
        compressed: bool,
        payload: &[u8],
    ) -> Flow {
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return Flow::Stop;
        };
        match opcode {
            OpCode::Ping => {
                if !ws.close_sent {
                    let mut f = Vec::with_capacity(payload.len() + 2);
                    ws::write_frame(&mut f, OpCode::Pong, payload);
                    self.send_raw(key, &f);
                }
                Flow::Continue
            }
            OpCode::Pong => {
                // An unsolicited pong frame is allowed; one answering our heartbeat
                // counts like a `pong` message.
                ws.ping_sent = None;
                Flow::Continue
            }
            OpCode::Close => {
                let code = ws::parse_close_payload(payload);
                if ws.close_sent {
                    self.drop_conn(key, "closed");
                    return Flow::Stop;
                }
                match code {
                    Ok(code) => {
                        metrics::connection_closed("client");
                        ws.close_sent = true;
                        ws.ring.clear();
                        self.detach_feed(key, Leave::Discard);
                        let mut f = Vec::new();
                        ws::write_close(&mut f, code, "");
                        if let Some(c) = self.conns.get_mut(key) {
                            c.ending = Ending::AfterWrite;
                        }
                        self.send_raw(key, &f);
                    }
                    Err(e) => self.protocol_error(key, e),
                }
                Flow::Stop
            }
            OpCode::Continuation => {
                let Some(frag) = ws.fragments.as_mut() else {
                    self.protocol_error(key, WsError::UnexpectedContinuation);
                    return Flow::Stop;
                };
                frag.data.extend_from_slice(payload);
                if frag.compressed {
                    if !fin {
                        return Flow::Continue;
                    }
                    let Some(frag) = ws.fragments.take() else {
                        return Flow::Stop;
                    };
                    return self.ws_compressed(key, frag.opcode, &frag.data);
                }
                if frag.opcode == OpCode::Text {
                    let r = if fin {
                        frag.utf8.finish(&frag.data)
                    } else {
                        frag.utf8.feed(&frag.data)
                    };
                    if let Err(e) = r {
                        self.protocol_error(key, e);
                        return Flow::Stop;
                    }
                }
                if !fin {
                    return Flow::Continue;
                }
                let Some(frag) = ws.fragments.take() else {
                    return Flow::Stop;
                };
                self.ws_message(key, frag.opcode, &frag.data)
            }
            OpCode::Text | OpCode::Binary => {
                if ws.fragments.is_some() {
                    self.protocol_error(key, WsError::ExpectedContinuation);
                    return Flow::Stop;
                }
                if fin && compressed {
                    return self.ws_compressed(key, opcode, payload);
                }
                if fin {
                    if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                        self.protocol_error(key, WsError::InvalidUtf8);
                        return Flow::Stop;
                    }
                    return self.ws_message(key, opcode, payload);
                }
                let mut frag = Box::new(Fragments {
                    opcode,
                    compressed,
                    data: payload.to_vec(),
                    utf8: ws::Utf8Check::default(),
                });
                if opcode == OpCode::Text && !compressed {
                    if let Err(e) = frag.utf8.feed(&frag.data) {
                        self.protocol_error(key, e);
                        return Flow::Stop;
                    }
                }
                ws.fragments = Some(frag);
                Flow::Continue
            }
        }
    }

    /// A whole compressed message (RSV1, permessage-deflate): inflated within the
    /// message size limit (close 1009 as soon as it passes it), checked as UTF-8 if
    /// text, then handled like a plain one.
    fn ws_compressed(&mut self, key: usize, opcode: OpCode, payload: &[u8]) -> Flow {
        let max = self.max_message(key);
        let Some(d) = self
            .conns
            .get_mut(key)
            .and_then(|c| c.ws_mut())
            .and_then(|w| w.deflate.as_mut())
        else {
            return Flow::Stop;
        };
        let mut plain = Vec::new();
        let r = d
            .inflater
            .get_or_insert_with(Default::default)
            .message(payload, max, &mut plain);
        if d.agreed.client_no_context_takeover || r.is_err() {
            // Nothing to carry to the next message: the memory goes now.
            d.inflater = None;
        }
        if let Err(e) = r {
            let metric = match e {
                InflateError::TooBig(_) => "too_big",
                InflateError::Corrupt => "protocol_error",
            };
            self.close_ws(key, e.close_code(), &e.to_string(), metric);
            return Flow::Stop;
        }
        if opcode == OpCode::Text && std::str::from_utf8(&plain).is_err() {
            self.protocol_error(key, WsError::InvalidUtf8);
            return Flow::Stop;
        }
        self.ws_message(key, opcode, &plain)
    }

    /// A violation of RFC 6455 or of the size limit: close with its code.
    fn protocol_error(&mut self, key: usize, e: WsError) {
        let reason = match e {
            WsError::TooBig(_) => "too_big",
            WsError::InvalidUtf8 => "invalid_utf8",
            _ => "protocol_error",
        };
        let text = e.to_string();
        self.close_ws(key, e.close_code(), &text, reason);
    }

    /// Starts the closing handshake: a close frame, then the socket closes once the peer
    /// answers or the linger time passes. Waiting messages are discarded.
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &str, metric: &'static str) {
        let echo_waiting = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.echo && !w.close_sent && !w.ring.is_empty());
        if echo_waiting {
            // Echoes of messages before the failure go out first (Autobahn "strict").
            self.flush(key);
        }
        self.close_ws_now(key, code, reason, metric);
    }

    fn close_ws_now(&mut self, key: usize, code: u16, reason: &str, metric: &'static str) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        if ws.close_sent {
            return;
        }
        ws.close_sent = true;
        ws.ring.clear();
        ws.fragments = None;
        if !ws.echo {
            metrics::connection_closed(metric);
        }
        let mut f = Vec::new();
        ws::write_close(&mut f, code, reason);
        conn.ending = Ending::AfterWrite;
        self.detach_feed(key, Leave::Discard);
        self.arm(now + LINGER_MS, key, gen, TimerKind::Linger);
        self.send_raw(key, &f);
    }

    /// A complete text or binary message.
    fn ws_message(&mut self, key: usize, opcode: OpCode, payload: &[u8]) -> Flow {
        let cap = self.node.config().delivery.queue_capacity;
        let now32 = self.now as u32;
        let Some(conn) = self.conns.get_mut(key) else {
            return Flow::Stop;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else {
            return Flow::Stop;
        };
        if ws.close_sent {
            return Flow::Continue;
        }
        if ws.echo {
            // The same frame, ring and flush path as events; back-pressure instead of
            // drops, because conformance checks every echo.
            let frame = Frame::build(opcode, payload.len(), Box::new([]), None, now32, |b| {
                b.extend_from_slice(payload)
            });
            ws.ring.push_unbounded(Rc::new(frame));
            let full = ws.ring.len() >= cap;
            if full {
                ws.read_paused = true;
            }
            self.mark_dirty(key, gen);
            return if full { Flow::Stop } else { Flow::Continue };
        }
        if opcode == OpCode::Binary {
            self.send_error(
                key,
                ErrorCode::BadMessage,
                "binary frames are not accepted; send JSON text frames",
                None,
            );
            return Flow::Continue;
        }
        if !self.take_token(key) {
            self.send_error(
                key,
                ErrorCode::RateLimited,
                "too many commands; slow down",
                None,
            );
            return Flow::Continue;
        }
        let env = match protocol::parse_command(payload) {
            Ok(env) => env,
            Err(e) => {
                // Before authentication every message but an `auth` gets UNAUTHORIZED
                // (PROTOCOL.md §2); a malformed `auth` is told what is wrong with it.
                let authenticated = self
                    .conns
                    .get(key)
                    .and_then(|c| c.ws())
                    .is_some_and(|w| w.claims.is_some());
                if authenticated || is_auth_message(payload) {
                    self.send_error(
                        key,
                        e.refusal.code,
                        &e.refusal.message,
                        e.request_id.as_ref(),
                    );
                } else {
                    self.send_error(
                        key,
                        ErrorCode::Unauthorized,
                        UNAUTHENTICATED,
                        e.request_id.as_ref(),
                    );
                }
                return Flow::Continue;
            }
        };
        self.command(key, env.command, env.request_id.as_ref());
        if self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.parked)
        {
            // A parked subscribe: the frames after it wait (`shard::replay`).
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// The command rate limit of user connections (token bucket).
    fn take_token(&mut self, key: usize) -> bool {
        let rate = self.node.config().limits.commands_per_sec as f32;
        let burst = self.node.config().limits.commands_burst as f32;
        let now = self.now;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        if matches!(ws.role(), Some(Role::Service | Role::Admin)) {
            return true;
        }
        let elapsed = now.saturating_sub(ws.tokens_at) as f32 / 1000.0;
        ws.tokens = (ws.tokens + elapsed * rate).min(burst);
        ws.tokens_at = now;
        if ws.tokens >= 1.0 {
            ws.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn command(&mut self, key: usize, command: Command, request_id: Option<&Value>) {
        let Some(ws) = self.conns.get(key).and_then(|c| c.ws()) else {
            return;
        };
        let role = ws.role();
        let Some(role) = role else {
            // Not authenticated: only `auth` is accepted.
            match command {
                Command::Auth { token, options } => {
                    self.auth_message(key, &token, options, request_id)
                }
                _ => self.send_error(key, ErrorCode::Unauthorized, UNAUTHENTICATED, request_id),
            }
            return;
        };
        match command {
            Command::Auth { .. } => self.send_error(
                key,
                ErrorCode::BadMessage,
                "already authenticated",
                request_id,
            ),
            Command::Ping => self.send_text(key, br#"{"type":"pong"}"#),
            Command::Pong => {
                if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
                    ws.ping_sent = None;
                }
            }
            Command::SubscribeEvents { subscriptions } if role == Role::Service => {
                self.service_subscribe(key, subscriptions, request_id)
            }
            Command::SubscribeEvents { subscriptions } => {
                self.subscribe(key, role, subscriptions, request_id, false)
            }
            Command::UnsubscribeEvents { ids } if role == Role::Service => {
                self.service_unsubscribe(key, ids, request_id)
            }
            Command::UnsubscribeEvents { ids } => self.unsubscribe(key, ids, request_id),
            Command::CreateLiveQuery(req) => self.create_live_query(key, req, request_id),
            Command::DestroyLiveQuery { id } => self.destroy_live_query(key, &id, request_id),
            other => self.service_command(key, role, other, request_id),
        }
    }

    fn auth_message(
        &mut self,
        key: usize,
        token: &str,
        options: Option<serde_json::Map<String, Value>>,
        request_id: Option<&Value>,
    ) {
        let claims = match jwt::verify_with(self.node.keys(), token, crate::time::unix_secs()) {
            Ok(c) => c,
            Err(e) => {
                self.refuse_connection(
                    key,
                    e.reason(),
                    ErrorCode::Unauthorized,
                    &e.to_string(),
                    request_id,
                );
                return;
            }
        };
        let mut opts = ConnOptions::defaults(self.node.config());
        for (k, v) in options.iter().flatten() {
            if let Err(m) = opts.apply(self.node.config(), k, v) {
                self.send_error(
                    key,
                    ErrorCode::BadMessage,
                    &format!("{m}; the connection is not authenticated"),
                    request_id,
                );
                return;
            }
        }
        self.authenticate(key, claims, opts, request_id);
    }

    /// `waited`: the command was parked and its wait is over (answer it now).
    pub(super) fn subscribe(
        &mut self,
        key: usize,
        role: Role,
        requests: Vec<SubscriptionRequest>,
        request_id: Option<&Value>,
        waited: bool,
    ) {
        let max = self.node.config().limits.max_subscriptions;
        let newest = self.node.backend().head_seq();
        // A `since` this shard has not reached yet (it lags ingest by its queue, or this
        // node lags the cluster's head): take in what comes first, so that nothing up to
        // `since` arrives live afterwards; if that is not enough, the command waits off
        // the loop (`shard::replay`). Bounded: a `since` still ahead after the wait is
        // refused `UNAVAILABLE` (retry), not served with a gap or a duplicate.
        let since_max = requests
            .iter()
            .filter(|r| r.problem.is_none())
            .filter_map(|r| r.since)
            .filter(|&s| s <= newest)
            .max()
            .unwrap_or(0);
        if !waited && !self.caught_up(since_max) {
            self.park_subscribe(key, role, requests, request_id, since_max);
            return;
        }
        let last_seq = self.last_seq;
        // Subscribing changes what the connection holds: it goes on alone (and may join
        // a feed again below).
        self.detach_feed(key, Leave::Keep);
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut replays = Vec::new();
        for req in requests {
            let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
                return;
            };
            let claims = ws.claims.clone();
            let refusal =
                if let Some(r) = subscription_refusal(&req, role, claims.as_deref(), newest) {
                    Some(r)
                } else if let Some(s) = req.since.filter(|&s| s > last_seq) {
                    Some(Refusal::new(
                        ErrorCode::Unavailable,
                        format!(
                            "since {s}: this node has applied publications up to seq {last_seq} \
                         and did not catch up within {} ms; retry",
                            super::replay::CATCH_UP_WAIT.as_millis()
                        ),
                    ))
                } else {
                    let replaces = self
                        .interner
                        .lookup(&req.id)
                        .is_some_and(|id| ws.subscriptions.iter().any(|s| s.id == id));
                    (!replaces && ws.subscriptions.len() >= max).then(|| {
                        Refusal::new(
                            ErrorCode::LimitExceeded,
                            format!("a connection may hold at most {max} subscriptions"),
                        )
                    })
                };
            if let Some(r) = refusal {
                metrics::command_error(r.code.as_str());
                rejected.push(json!({"id": req.id, "code": r.code.as_str(), "message": r.message}));
                continue;
            }
            // Reusing an id replaces that subscription.
            self.remove_subscription(key, &req.id);
            let id = self.interner.intern(&req.id);
            let events: Option<Rc<[Box<str>]>> = (!req.events.is_empty()).then(|| {
                req.events
                    .iter()
                    .map(|e| Box::<str>::from(e.as_str()))
                    .collect()
            });
            let filter = req.filter.map(Rc::new);
            match &filter {
                Some(f) => self.filtered.insert(
                    &req.path,
                    FilteredEntry {
                        conn: key as u32,
                        sub: id,
                        events: events.clone(),
                        filter: f.clone(),
                    },
                ),
                None => self.index.insert(
                    &req.path,
                    Entry {
                        conn: key as u32,
                        sub: id,
                        events: events.clone(),
                    },
                ),
            }
            let sub = Subscription {
                id,
                path: req.path.as_str().into(),
                events,
                filter,
            };
            let answer =
                json!({"id": req.id, "path": req.path, "events": req.events, "seq": last_seq});
            if let Some(since) = req.since {
                // `recovered` is set by the replay, off the shard.
                replays.push((
                    accepted.len(),
                    since,
                    self.interner.json(id).to_vec(),
                    super::replay::ReplaySpec::of(&sub),
                ));
            }
            if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
                // Most connections hold one or two subscriptions: grow the list one by one
                // up to four (a `Vec` would make room for four at once: 144 B more per
                // idle single-subscription connection, docs/PERFORMANCE.md "Idle memory").
                if ws.subscriptions.len() < 4 {
                    ws.subscriptions.reserve_exact(1);
                }
                ws.subscriptions.push(sub);
            }
            accepted.push(answer);
        }
        let mut msg = json!({"type": "subscribedEvents", "subscriptions": accepted});
        if let Some(r) = request_id {
            msg["requestId"] = r.clone();
        }
        if !rejected.is_empty() {
            msg["rejected"] = Value::Array(rejected);
        }
        if replays.is_empty() {
            self.send_text(key, &protocol::to_bytes(&msg));
            self.attach_feed(key);
            return;
        }
        // Replayed publications follow the answer, before anything live (which is all
        // after `last_seq`): both are prepared off the shard while the connection's
        // flushes are held (`shard::replay`).
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else {
            return;
        };
        ws.replaying = ws.replaying.saturating_add(1);
        let (framing, batch_max) = (ws.framing, ws.batch_max as usize);
        let backend = self.node.backend_handle();
        let mailbox = self.mailbox.clone();
        self.node.offload().run(move || {
            let mut replayed = 0u64;
            let mut encoded = Vec::with_capacity(replays.len());
            for (i, since, name, spec) in replays {
                let (found, recovered) = spec.matches(&*backend, since, last_seq);
                msg["subscriptions"][i]["recovered"] = json!(recovered);
                replayed += found.len() as u64;
                encoded.push(super::replay::encode_replay(
                    &found, &name, framing, batch_max,
                ));
            }
            let mut frames = Vec::with_capacity(256 + encoded.iter().map(Vec::len).sum::<usize>());
            ws::write_frame(&mut frames, OpCode::Text, &protocol::to_bytes(&msg));
            for e in encoded {
                frames.extend_from_slice(&e);
            }
            mailbox.send_control(crate::router::ShardMsg::Replayed {
                conn: key as u32,
                gen,
                frames,
                replayed,
            });
        });
    }

    /// Removes subscription `id` of the connection, if it has one; true if it did.
    fn remove_subscription(&mut self, key: usize, id: &str) -> bool {
        let Some(num) = self.interner.lookup(id) else {
            return false;
        };
        self.detach_feed(key, Leave::Keep);
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        let Some(i) = ws.subscriptions.iter().position(|s| s.id == num) else {
            return false;
        };
        let s = ws.subscriptions.swap_remove(i);
        ws.dropped.retain(|(d, _)| *d != num);
        match &s.filter {
            Some(f) => self.filtered.remove(&s.path, key as u32, num, f),
            None => self.index.remove(&s.path, key as u32, num),
        }
        self.interner.release(num);
        true
    }

    fn unsubscribe(&mut self, key: usize, ids: Vec<String>, request_id: Option<&Value>) {
        let mut removed = Vec::new();
        let mut unknown = Vec::new();
        for id in ids {
            if self.remove_subscription(key, &id) {
                removed.push(id);
            } else {
                unknown.push(id);
            }
        }
        if !removed.is_empty() {
            // Messages already waiting for an unsubscribed id would otherwise still arrive
            // after the answer; a message that also lists a remaining subscription stays.
            if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
                let held: Vec<u32> = ws.subscriptions.iter().map(|s| s.id).collect();
                ws.ring.retain(|f| f.subs.iter().any(|s| held.contains(s)));
            }
            self.attach_feed(key);
        }
        let mut msg = json!({"type": "unsubscribedEvents", "ids": removed});
        if let Some(r) = request_id {
            msg["requestId"] = r.clone();
        }
        if !unknown.is_empty() {
            // Not an error (the end state is what the client asked for), but said.
            msg["notFound"] = json!(unknown);
        }
        self.send_text(key, &protocol::to_bytes(&msg));
    }

    /// Sends a control message as its own text frame, ahead of any batch.
    pub(super) fn send_text(&mut self, key: usize, json: &[u8]) {
        let mut f = Vec::with_capacity(json.len() + 4);
        ws::write_frame(&mut f, OpCode::Text, json);
        self.send_raw(key, &f);
    }

    pub(super) fn send_error(
        &mut self,
        key: usize,
        code: ErrorCode,
        message: &str,
        request_id: Option<&Value>,
    ) {
        metrics::command_error(code.as_str());
        let m = protocol::error_message(code, message, request_id);
        self.send_text(key, &m);
    }

    pub(super) fn auth_timeout(&mut self, key: usize) {
        let authenticated = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .is_some_and(|w| w.claims.is_some());
        if !authenticated {
            crate::auth::failures::refused("timeout", || self.whence(key));
            self.close_ws(
                key,
                close::AUTH_TIMEOUT,
                "authentication timeout",
                "auth_timeout",
            );
        }
    }

    pub(super) fn send_ping(&mut self, key: usize) {
        let heartbeat = self.node.config().delivery.heartbeat_ms;
        let pong_timeout = self.node.config().delivery.pong_timeout_ms;
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(ws) = conn.ws_mut() else { return };
        if ws.close_sent {
            return;
        }
        if ws.ping_sent.is_none() {
            ws.ping_sent = Some(now as u32);
            self.arm(now + pong_timeout, key, gen, TimerKind::PongCheck);
            self.send_text(key, br#"{"type":"ping"}"#);
        }
        self.arm(now + heartbeat, key, gen, TimerKind::Ping);
    }

    pub(super) fn pong_check(&mut self, key: usize) {
        let pong_timeout = self.node.config().delivery.pong_timeout_ms;
        let late = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .and_then(|w| w.ping_sent)
            .is_some_and(|sent| (self.now as u32).wrapping_sub(sent) as u64 >= pong_timeout);
        if late {
            self.close_ws(
                key,
                close::HEARTBEAT_TIMEOUT,
                "heartbeat timeout",
                "heartbeat_timeout",
            );
        }
    }

    /// A drain reached this connection: write what waits, then close with 1001 and a
    /// jittered reconnect delay, so clients do not all come back at the same moment.
    pub(super) fn drain_close(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.ws().is_none()) {
            self.http_drain(key);
            return;
        }
        self.flush(key);
        let period = self.node.config().drain_period_ms.max(1);
        let delay = 1000 + self.random() % period;
        self.close_ws(
            key,
            close::GOING_AWAY,
            &format!("reconnect in {delay}"),
            "draining",
        );
    }
}

/// The answer to anything but `auth` before authentication.
const UNAUTHENTICATED: &str = "authenticate first: send {\"type\":\"auth\",\"token\":\"<jwt>\"}";

/// Whether a message that failed to parse was meant as `auth` (its errors are worth
/// telling an unauthenticated client).
/// Why subscription request `req` of a connection with `role` and `claims` is refused,
/// if it is, on what every connection's subscriptions must satisfy (shape, system paths,
/// scopes, a `since` not in the future; `newest`: the newest `seq`).
pub(super) fn subscription_refusal(
    req: &SubscriptionRequest,
    role: Role,
    claims: Option<&Claims>,
    newest: u64,
) -> Option<Refusal> {
    if let Some(p) = &req.problem {
        return Some(p.clone());
    }
    if protocol::is_system_path(&req.path) && role != Role::Admin {
        return Some(Refusal::new(
            ErrorCode::Forbidden,
            format!("only admins may subscribe to system path '{}'", req.path),
        ));
    }
    if !claims.is_some_and(|c| c.scopes.allows(&req.path)) {
        return Some(Refusal::new(
            ErrorCode::Forbidden,
            format!("path '{}' is outside the token's scopes", req.path),
        ));
    }
    req.since.filter(|&s| s > newest).map(|s| {
        Refusal::new(
            ErrorCode::BadMessage,
            format!("since {s} is in the future: the newest seq is {newest}"),
        )
    })
}

fn is_auth_message(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload).is_ok_and(|v| v["type"] == "auth")
}

/// Largest message accepted on the echo endpoint (Autobahn's biggest case is 16 MiB).
const ECHO_MAX_MESSAGE: usize = 20 * 1024 * 1024;
