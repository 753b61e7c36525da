//! Service connections on a shard (PROTOCOL.md §10): attaching an authenticated service
//! to its group, forwarding its subscriptions, acknowledgements and locks to the
//! services thread, publishing its logs and `publish`es, and queueing the tasks that
//! thread sends.
//!
//! Part of [`Shard`]; runs on the shard's thread only. The group's state is the
//! services thread's: a shard keeps only which group a connection belongs to.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::auth::jwt::Role;
use crate::backend::PublishReply;
use crate::ingest::PublishItem;
use crate::protocol::{self, ws, Command, ErrorCode, SubscriptionRequest};
use crate::router::ReplyTo;
use crate::services::{Addr, DurableSub, ServiceCmd, SubscribeRequest};

use super::conn::{Frame, Kind};
use super::Shard;

/// Events a channel's socket may have queued and not yet written (the services
/// thread's credit, `services::channels`).
const CHANNEL_CREDIT: usize = 8192;

impl Shard {
    fn addr(&self, key: usize) -> Option<Addr> {
        let c = self.conns.get(key)?;
        Some(Addr {
            shard: self.id as u32,
            conn: key as u32,
            gen: c.gen,
        })
    }

    fn group_of(&self, key: usize) -> Option<Arc<str>> {
        self.conns.get(key)?.ws()?.group.clone()
    }

    /// A service connection authenticated: it joins `group`. Its ring can hold every
    /// task it may have unacknowledged on top of the usual capacity, so the ring's
    /// oldest-drop never drops a task.
    pub(super) fn attach_service(&mut self, key: usize, group: Arc<str>) {
        let cap = self.node.config().delivery.queue_capacity + self.node.config().services.prefetch;
        let Some(at) = self.addr(key) else { return };
        if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) {
            ws.group = Some(group.clone());
            ws.ring = super::ring::Ring::new(cap);
        }
        self.node
            .backend()
            .services(ServiceCmd::Attach { at, group });
    }

    /// A channel socket authenticated: the services thread checks the channel and its
    /// owner, then sends its backlog (or closes the socket with 4001).
    pub(super) fn attach_channel(&mut self, key: usize, channel: Arc<str>) {
        let cap = self.node.config().delivery.queue_capacity + CHANNEL_CREDIT;
        let Some(at) = self.addr(key) else { return };
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        ws.ring = super::ring::Ring::new(cap);
        let Some(claims) = ws.claims.clone() else {
            return;
        };
        let caller = crate::channels::Caller {
            sub: claims.sub.clone(),
            admin: claims.role == Role::Admin,
        };
        self.node.backend().services(ServiceCmd::ChannelAttach {
            at,
            channel: channel.to_string(),
            caller,
        });
    }

    /// A channel's events for its socket.
    pub(super) fn on_channel_events(
        &mut self,
        key: usize,
        gen: u32,
        upto: u64,
        messages: Vec<Vec<u8>>,
    ) {
        if let Some(ws) = self.ws_of(key, gen) {
            ws.channel_upto = ws.channel_upto.max(upto);
        }
        self.on_tasks(key, gen, messages);
    }

    /// Everything queued for a channel socket is written: its events leave the backlog.
    pub(super) fn channel_written(&mut self, key: usize) {
        let Some(at) = self.addr(key) else { return };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has_pending() {
            return;
        }
        let Some(ws) = conn.ws_mut() else { return };
        if ws.channel_upto == 0 || !ws.ring.is_empty() {
            return;
        }
        let upto = std::mem::take(&mut ws.channel_upto);
        self.node
            .backend()
            .services(ServiceCmd::ChannelWritten { at, upto });
    }

    /// The services thread closes a socket (a deleted channel, a refused attach, a newer
    /// socket taking over).
    pub(super) fn on_close_request(
        &mut self,
        key: usize,
        gen: u32,
        code: u16,
        reason: &str,
        error: Option<Vec<u8>>,
    ) {
        if !self
            .conns
            .get(key)
            .is_some_and(|c| c.gen == gen && c.ws().is_some())
        {
            return;
        }
        if let Some(e) = error {
            self.send_text(key, &e);
        }
        self.close_ws(key, code, reason, "closed_by_server");
    }

    /// The connection is going: what it held goes back to its group.
    pub(super) fn detach_service(&mut self, key: usize, gen: u32) {
        self.node.backend().services(ServiceCmd::Detach {
            at: Addr {
                shard: self.id as u32,
                conn: key as u32,
                gen,
            },
        });
    }

    /// `subscribeEvents` from a service: checked here, made durable for the group by the
    /// services thread, which answers.
    pub(super) fn service_subscribe(
        &mut self,
        key: usize,
        requests: Vec<SubscriptionRequest>,
        request_id: Option<&Value>,
    ) {
        let (Some(at), Some(group)) = (self.addr(key), self.group_of(key)) else {
            return;
        };
        let claims = self
            .conns
            .get(key)
            .and_then(|c| c.ws())
            .and_then(|w| w.claims.clone());
        let newest = self.node.backend().head_seq();
        let mut subs = Vec::new();
        let mut rejected = Vec::new();
        for req in requests {
            let refusal = super::ws_conn::subscription_refusal(
                &req,
                Role::Service,
                claims.as_deref(),
                newest,
            );
            match refusal {
                Some(r) => {
                    crate::metrics::command_error(r.code.as_str());
                    rejected
                        .push(json!({"id": req.id, "code": r.code.as_str(), "message": r.message}));
                }
                None => subs.push(SubscribeRequest {
                    sub: DurableSub {
                        id: req.id,
                        path: req.path,
                        events: req.events,
                        filter: req.filter,
                    },
                    since: req.since,
                }),
            }
        }
        self.node.backend().services(ServiceCmd::Subscribe {
            at,
            group,
            request_id: request_id.cloned(),
            subs,
            rejected,
        });
    }

    /// `unsubscribeEvents` from a service ends those durable subscriptions for its
    /// group; their pending tasks stay.
    pub(super) fn service_unsubscribe(
        &mut self,
        key: usize,
        ids: Vec<String>,
        request_id: Option<&Value>,
    ) {
        if let (Some(at), Some(group)) = (self.addr(key), self.group_of(key)) {
            self.node.backend().services(ServiceCmd::Unsubscribe {
                at,
                group,
                request_id: request_id.cloned(),
                ids,
            });
        }
    }

    /// `taskComplete`, `taskFailed`, `lock`, `unlock`, `log`, `publish`: services only
    /// (admins may `publish` too, as over REST).
    pub(super) fn service_command(
        &mut self,
        key: usize,
        role: Role,
        command: Command,
        request_id: Option<&Value>,
    ) {
        let name = command.service_only().unwrap_or("?");
        let allowed = role == Role::Service
            || (role == Role::Admin && matches!(command, Command::Publish { .. }));
        if !allowed {
            self.send_error(
                key,
                ErrorCode::Forbidden,
                &format!("'{name}' is only for service connections"),
                request_id,
            );
            return;
        }
        let Some(at) = self.addr(key) else { return };
        let group = self.group_of(key);
        let reply = ReplyTo {
            shard: self.id,
            conn: at.conn,
            gen: at.gen,
            req: 0,
        };
        match command {
            Command::TaskComplete { ids } => {
                if let Some(group) = group {
                    self.node
                        .backend()
                        .services(ServiceCmd::Complete { group, ids });
                }
            }
            Command::TaskFailed { ids, retry_in_ms } => {
                if let Some(group) = group {
                    self.node.backend().services(ServiceCmd::Failed {
                        at,
                        group,
                        ids,
                        retry_in_ms,
                    });
                }
            }
            Command::Lock {
                name,
                ttl_ms,
                wait_ms,
            } => self.node.backend().services(ServiceCmd::Lock {
                at,
                request_id: request_id.cloned(),
                name,
                ttl_ms,
                wait_ms,
            }),
            Command::Unlock { name } => self.node.backend().services(ServiceCmd::Unlock {
                at,
                request_id: request_id.cloned(),
                name,
            }),
            Command::Log {
                level,
                message,
                fields,
            } => {
                let Some(group) = group else { return };
                let instance = self
                    .conns
                    .get(key)
                    .and_then(|c| c.ws())
                    .and_then(|w| w.claims.as_ref().map(|c| c.sub.clone()))
                    .unwrap_or_default();
                let data = json!({"message": message, "fields": fields.unwrap_or_default(), "instance": instance});
                let Ok(data) = serde_json::value::to_raw_value(&data) else {
                    return;
                };
                let item = PublishItem {
                    path: format!("$logs/{group}"),
                    event_type: level.to_string(),
                    data,
                };
                // A log has no answer (PROTOCOL.md §10).
                let _ = self.node.backend().publish(&[item], PublishReply::Nobody);
            }
            // `$` paths are the server's (PROTOCOL.md §4): refused like a REST publish.
            Command::Publish { body } => match crate::api::parse_publish(&body, 1)
                .and_then(|items| crate::api::refuse_system_paths(&items, &body).map(|()| items))
            {
                Err(e) => {
                    let code = error_code(e.code);
                    self.send_error(key, code, &e.message, request_id);
                }
                Ok(items) => {
                    if let Some(o) = self
                        .node
                        .backend()
                        .publish(&items, PublishReply::Socket(reply, request_id.cloned()))
                    {
                        let m = protocol::published_message(request_id, o.last_seq);
                        self.send_text(key, &m);
                    }
                }
            },
            _ => {}
        }
    }

    /// Tasks from the services thread for connection `key`, if it is still the one they
    /// were meant for (else the services thread has heard, or will hear, that it left,
    /// and puts them back).
    pub(super) fn on_tasks(&mut self, key: usize, gen: u32, messages: Vec<Vec<u8>>) {
        let now32 = self.now as u32;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.gen != gen {
            return;
        }
        let Kind::Ws(ws) = &mut conn.kind else {
            return;
        };
        if ws.close_sent {
            return;
        }
        let was_empty = ws.ring.is_empty();
        for m in messages {
            let frame = Rc::new(Frame::build(
                ws::OpCode::Text,
                m.len(),
                Box::new([]),
                None,
                now32,
                |b| b.extend_from_slice(&m),
            ));
            if ws.ring.push(frame).is_some() {
                // Cannot happen (the ring holds prefetch more than the capacity); were
                // it to, the task stays in flight and goes out again at its deadline.
                tracing::warn!("a service connection's ring overflowed");
            }
        }
        self.schedule_flush(key, gen, was_empty);
    }
}

/// The protocol's code for a publish refusal's code text.
fn error_code(code: &str) -> ErrorCode {
    match code {
        "INVALID_PATH" => ErrorCode::InvalidPath,
        "FORBIDDEN" => ErrorCode::Forbidden,
        "LIMIT_EXCEEDED" => ErrorCode::LimitExceeded,
        "INTERNAL" => ErrorCode::Internal,
        _ => ErrorCode::BadMessage,
    }
}
