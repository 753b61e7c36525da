//! The connection driver: one tokio task per [`crate::Client`] that owns the socket and
//! all connection state (subscriptions with their last `seq`, live queries, pending
//! requests), connects and authenticates (each attempt within `connect_timeout`), routes
//! what the server sends, answers `ping`,
//! and reconnects (backoff, drain delay, no retry on 4001/4002), restoring subscriptions
//! with `since` and live queries.
//!
//! Only `client.rs` talks to it (and only it imports this module), through [`Command`]s; it talks back through oneshots
//! (answers), per-subscription channels (deliveries) and the broadcast of
//! [`ClientEvent`]s. Nothing else touches its tables, so they need no lock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::{on_close, Backoff, CloseAction};
use crate::error::Error;
use crate::events::{ClientEvent, ConnectionState, Delivery};
use crate::options::{Auth, ClientOptions};
use crate::protocol::{
    ClientMessage, Event, LiveQuerySpec, ServerError, ServerMessage, Subscribed, Subscription,
};
use crate::rest::{encode_query_value, split_url};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What a `Client` asks of the driver.
pub(crate) enum Command {
    Subscribe {
        subscription: Subscription,
        tx: mpsc::UnboundedSender<Delivery>,
        reply: Reply<Subscribed>,
    },
    Unsubscribe {
        id: String,
        reply: Reply<()>,
    },
    CreateLiveQuery {
        id: String,
        query: LiveQuerySpec,
        tx: mpsc::UnboundedSender<ServerMessage>,
        reply: Reply<()>,
    },
    /// A message answered by `requestId` (lock, unlock, publish, destroyLiveQuery).
    Request {
        message: ClientMessage,
        reply: Reply<ServerMessage>,
    },
    /// A message with no answer (taskComplete, taskFailed, log).
    Send(ClientMessage),
    Close,
}

/// A subscription the server has accepted.
struct SubscriptionState {
    /// As asked for; `since` is replaced on resubscription.
    subscription: Subscription,
    tx: mpsc::UnboundedSender<Delivery>,
    /// The newest `seq` delivered (or where live delivery started): the `since` of a
    /// resubscription, so nothing retained is missed and nothing is delivered twice.
    last_seq: u64,
}

struct LiveQueryState {
    query: LiveQuerySpec,
    tx: mpsc::UnboundedSender<ServerMessage>,
}

/// A request waiting for its answer, by `requestId`.
enum Pending {
    Subscribe {
        subscription: Subscription,
        tx: mpsc::UnboundedSender<Delivery>,
        reply: Reply<Subscribed>,
    },
    /// The driver's own resubscription after a reconnect.
    Resubscribe,
    Unsubscribe {
        id: String,
        reply: Reply<()>,
    },
    CreateLiveQuery {
        id: String,
        query: LiveQuerySpec,
        tx: mpsc::UnboundedSender<ServerMessage>,
        reply: Option<Reply<()>>,
    },
    Request(Reply<ServerMessage>),
}

/// Why a connection ended.
enum End {
    /// The app closed the client (or dropped every handle).
    ClientClosed,
    /// A close frame.
    Closed { code: u16, reason: String },
    /// The socket failed or went silent.
    Lost(String),
}

struct Driver {
    options: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Commands that came while disconnected; run once connected again.
    deferred: VecDeque<Command>,
    events: broadcast::Sender<ClientEvent>,
    channel_tx: mpsc::UnboundedSender<Event>,
    subscriptions: HashMap<String, SubscriptionState>,
    live_queries: HashMap<String, LiveQueryState>,
    pending: HashMap<String, Pending>,
    /// Live query id → the `requestId` of its `createLiveQuery` (`liveQueryCreated` carries
    /// only the id).
    creating: HashMap<String, String>,
    next_request: u64,
    backoff: Backoff,
}

pub(crate) async fn run(
    options: ClientOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Sender<ClientEvent>,
    channel_tx: mpsc::UnboundedSender<Event>,
    first: oneshot::Sender<Result<(), Error>>,
) {
    let backoff = Backoff::new(options.reconnect.clone());
    let mut d = Driver {
        options,
        commands,
        deferred: VecDeque::new(),
        events,
        channel_tx,
        subscriptions: HashMap::new(),
        live_queries: HashMap::new(),
        pending: HashMap::new(),
        creating: HashMap::new(),
        next_request: 0,
        backoff,
    };
    d.run(first).await;
}

impl Driver {
    fn emit(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }

    fn state(&self, s: ConnectionState) {
        self.emit(ClientEvent::State(s));
    }

    async fn run(&mut self, first: oneshot::Sender<Result<(), Error>>) {
        let mut first = Some(first);
        loop {
            self.state(ConnectionState::Connecting);
            let (code, reason, delay) = match self.connect().await {
                Ok((mut ws, connection_id, heartbeat_ms)) => {
                    self.backoff.reset();
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                    self.state(ConnectionState::Connected { connection_id });
                    let end = match self.restore(&mut ws).await {
                        Ok(()) => self.serve(&mut ws, heartbeat_ms).await,
                        Err(end) => end,
                    };
                    self.fail_pending();
                    match end {
                        End::ClientClosed => return self.closed(None, "closed by the client"),
                        End::Closed { code, reason } => match on_close(code, &reason) {
                            CloseAction::Stop => return self.closed(Some(code), &reason),
                            CloseAction::Retry(d) => {
                                let d = d.unwrap_or_else(|| self.backoff.next_delay());
                                (Some(code), reason, d)
                            }
                        },
                        End::Lost(reason) => (None, reason, self.backoff.next_delay()),
                    }
                }
                Err(e) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e));
                        return;
                    }
                    match &e {
                        Error::Refused { code, reason, .. }
                            if on_close(*code, reason) == CloseAction::Stop =>
                        {
                            let (code, reason) = (*code, e.to_string());
                            return self.closed(Some(code), &reason);
                        }
                        // The server refused what this client sends (its options): the
                        // same attempt would fail again.
                        Error::Server { .. } => return self.closed(None, &e.to_string()),
                        _ => (None, e.to_string(), self.backoff.next_delay()),
                    }
                }
            };
            if !self.options.reconnect.enabled {
                return self.closed(code, &reason);
            }
            self.state(ConnectionState::Disconnected {
                code,
                reason,
                retry_in: delay,
            });
            if !self.wait(delay).await {
                return self.closed(None, "closed by the client");
            }
        }
    }

    /// The end: every stream ends (their senders drop with the driver), answers fail.
    fn closed(&mut self, code: Option<u16>, reason: &str) {
        self.fail_pending();
        for c in self.deferred.drain(..) {
            fail_command(c, Error::Closed);
        }
        self.subscriptions.clear();
        self.live_queries.clear();
        self.state(ConnectionState::Closed {
            code,
            reason: reason.to_string(),
        });
    }

    /// Sleeps `delay`, keeping commands for later; `false` if the client was closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                c = self.commands.recv() => match c {
                    None | Some(Command::Close) => return false,
                    Some(c) => self.deferred.push_back(c),
                },
            }
        }
    }

    fn fail_pending(&mut self) {
        self.creating.clear();
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Subscribe { reply, .. } => drop(reply.send(Err(Error::Disconnected))),
                Pending::Unsubscribe { reply, .. } => drop(reply.send(Err(Error::Disconnected))),
                Pending::CreateLiveQuery {
                    reply: Some(reply), ..
                } => drop(reply.send(Err(Error::Disconnected))),
                Pending::Request(reply) => drop(reply.send(Err(Error::Disconnected))),
                // A re-creation still in flight: try again on the next connection.
                Pending::CreateLiveQuery {
                    id,
                    query,
                    tx,
                    reply: None,
                } => {
                    self.live_queries.insert(id, LiveQueryState { query, tx });
                }
                Pending::Resubscribe => {}
            }
        }
    }

    /// One attempt: credential, handshake, `authenticated`, all within `connect_timeout`
    /// (a proxy that accepts and never answers, or a credential callback that hangs,
    /// would otherwise hold the client in `Connecting` for good).
    async fn connect(&mut self) -> Result<(Socket, String, u64), Error> {
        let timeout = self.options.connect_timeout;
        if timeout.is_zero() {
            return self.attempt().await;
        }
        tokio::time::timeout(timeout, self.attempt())
            .await
            .map_err(|_| Error::ConnectTimeout(timeout))?
    }

    async fn attempt(&mut self) -> Result<(Socket, String, u64), Error> {
        let credential = (self.options.auth.credential())().await?;
        let url = connect_url(&self.options, &credential)?;
        let work = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| Error::Connection(e.to_string()))?;
            if let Auth::AuthMessage(_) = self.options.auth {
                let options = Some(self.options.options.clone()).filter(|o| !o.is_empty());
                let auth = ClientMessage::Auth {
                    token: credential.clone(),
                    options,
                };
                send(&mut ws, &auth).await?;
            }
            let mut error: Option<String> = None;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => match parse(&t)? {
                        ServerMessage::Authenticated {
                            connection_id,
                            heartbeat_ms,
                        } => return Ok((ws, connection_id, heartbeat_ms)),
                        // UNAUTHORIZED: the close (4001) follows and is the answer. Any
                        // other error (bad options) leaves the socket unauthenticated
                        // until 4002: give up now, with the server's words.
                        ServerMessage::Error(e) if e.code == "UNAUTHORIZED" => {
                            error = Some(format!("{}: {}", e.code, e.message))
                        }
                        ServerMessage::Error(e) => {
                            return Err(Error::Server {
                                code: e.code,
                                message: e.message,
                            })
                        }
                        ServerMessage::Ping => send(&mut ws, &ClientMessage::Pong).await?,
                        _ => {}
                    },
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = close_parts(f);
                        return Err(Error::Refused {
                            code,
                            reason,
                            message: error,
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(Error::Connection(e.to_string())),
                    None => return Err(Error::Connection("closed before authenticated".into())),
                }
            }
        };
        work.await
    }

    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!("rs-{}", self.next_request)
    }

    /// After (re)connecting: resubscribe with `since`, re-create live queries, then run
    /// what came while disconnected.
    async fn restore(&mut self, ws: &mut Socket) -> Result<(), End> {
        let lost = |e: Error| End::Lost(e.to_string());
        if !self.subscriptions.is_empty() {
            let subscriptions = self
                .subscriptions
                .values()
                .map(|s| Subscription {
                    since: Some(s.last_seq),
                    ..s.subscription.clone()
                })
                .collect();
            let request_id = self.request_id();
            self.pending
                .insert(request_id.clone(), Pending::Resubscribe);
            send(
                ws,
                &ClientMessage::SubscribeEvents {
                    request_id,
                    subscriptions,
                },
            )
            .await
            .map_err(lost)?;
        }
        let live: Vec<(String, LiveQueryState)> = self.live_queries.drain().collect();
        for (id, lq) in live {
            self.create_live_query(ws, id, lq.query, lq.tx, None)
                .await
                .map_err(lost)?;
        }
        while let Some(c) = self.deferred.pop_front() {
            if c.abandoned() {
                continue;
            }
            if self.command(ws, c).await.map_err(lost)? {
                return Err(End::ClientClosed);
            }
        }
        Ok(())
    }

    async fn create_live_query(
        &mut self,
        ws: &mut Socket,
        id: String,
        query: LiveQuerySpec,
        tx: mpsc::UnboundedSender<ServerMessage>,
        reply: Option<Reply<()>>,
    ) -> Result<(), Error> {
        let request_id = self.request_id();
        let message = ClientMessage::CreateLiveQuery {
            id: id.clone(),
            query: query.clone(),
            request_id: Some(request_id.clone()),
        };
        self.creating.insert(id.clone(), request_id.clone());
        self.pending.insert(
            request_id,
            Pending::CreateLiveQuery {
                id,
                query,
                tx,
                reply,
            },
        );
        send(ws, &message).await
    }

    /// Runs one command; `Ok(true)` when it was `Close`.
    async fn command(&mut self, ws: &mut Socket, c: Command) -> Result<bool, Error> {
        match c {
            Command::Subscribe {
                subscription,
                tx,
                reply,
            } => {
                let request_id = self.request_id();
                let message = ClientMessage::SubscribeEvents {
                    request_id: request_id.clone(),
                    subscriptions: vec![subscription.clone()],
                };
                self.pending.insert(
                    request_id,
                    Pending::Subscribe {
                        subscription,
                        tx,
                        reply,
                    },
                );
                send(ws, &message).await?;
            }
            Command::Unsubscribe { id, reply } => {
                let request_id = self.request_id();
                let message = ClientMessage::UnsubscribeEvents {
                    request_id: request_id.clone(),
                    ids: vec![id.clone()],
                };
                self.pending
                    .insert(request_id, Pending::Unsubscribe { id, reply });
                send(ws, &message).await?;
            }
            Command::CreateLiveQuery {
                id,
                query,
                tx,
                reply,
            } => {
                self.create_live_query(ws, id, query, tx, Some(reply))
                    .await?
            }
            Command::Request { mut message, reply } => {
                let request_id = self.request_id();
                message.set_request_id(request_id.clone());
                self.pending.insert(request_id, Pending::Request(reply));
                send(ws, &message).await?;
            }
            Command::Send(message) => send(ws, &message).await?,
            Command::Close => {
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))
                    .await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads and runs commands until the connection ends.
    async fn serve(&mut self, ws: &mut Socket, heartbeat_ms: u64) -> End {
        // The server pings every heartbeatMs; silence for two of them (plus slack) means
        // the connection is dead even if TCP has not noticed.
        let silence =
            Duration::from_millis(heartbeat_ms.saturating_mul(2)) + Duration::from_secs(5);
        let mut deadline = Instant::now() + silence;
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        deadline = Instant::now() + silence;
                        match serde_json::from_str::<ServerMessage>(&t) {
                            Ok(m) => {
                                if let Err(e) = self.handle(ws, m).await {
                                    return End::Lost(e.to_string());
                                }
                            }
                            Err(e) => self.emit(ClientEvent::Error(ServerError {
                                code: "BAD_MESSAGE".into(),
                                message: format!("unreadable server message: {e}"),
                                request_id: None,
                            })),
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = close_parts(f);
                        return End::Closed { code, reason };
                    }
                    Some(Ok(_)) => deadline = Instant::now() + silence,
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    None => return End::Lost("connection closed".into()),
                },
                c = self.commands.recv() => {
                    let c = c.unwrap_or(Command::Close);
                    match self.command(ws, c).await {
                        Ok(true) => return End::ClientClosed,
                        Ok(false) => {}
                        Err(e) => return End::Lost(e.to_string()),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return End::Lost(format!("no message from the server for {silence:?}"));
                }
            }
        }
    }

    /// Routes one server message.
    async fn handle(&mut self, ws: &mut Socket, m: ServerMessage) -> Result<(), Error> {
        match m {
            ServerMessage::Batch { messages } => {
                for m in messages {
                    Box::pin(self.handle(ws, m)).await?;
                }
            }
            ServerMessage::Ping => send(ws, &ClientMessage::Pong).await?,
            ServerMessage::Event(e) => self.deliver(e),
            ServerMessage::SubscriptionRefresh(r) => {
                if let Some(s) = self.subscriptions.get_mut(&r.subscription_id) {
                    s.last_seq = s.last_seq.max(r.seq);
                    let _ = s.tx.send(Delivery::Refresh(r));
                }
            }
            ServerMessage::Warning(w) => self.emit(ClientEvent::Overflow(w)),
            ServerMessage::Error(e) => {
                let pending = e.request_id.as_ref().and_then(|r| self.pending.remove(r));
                match pending {
                    Some(p) => self.fail(p, e),
                    None => self.emit(ClientEvent::Error(e)),
                }
            }
            ServerMessage::SubscribedEvents {
                request_id,
                subscriptions,
                rejected,
            } => match request_id.and_then(|r| self.pending.remove(&r)) {
                Some(Pending::Subscribe {
                    subscription,
                    tx,
                    reply,
                }) => {
                    if let Some(r) = rejected.into_iter().find(|r| r.id == subscription.id) {
                        let _ = reply.send(Err(Error::Server {
                            code: r.code,
                            message: r.message,
                        }));
                    } else if let Some(s) =
                        subscriptions.into_iter().find(|s| s.id == subscription.id)
                    {
                        // Replayed publications come after the answer, up to `s.seq`.
                        let last_seq = subscription.since.unwrap_or(s.seq);
                        self.subscriptions.insert(
                            s.id.clone(),
                            SubscriptionState {
                                subscription,
                                tx,
                                last_seq,
                            },
                        );
                        let _ = reply.send(Ok(s));
                    } else {
                        let _ = reply.send(Err(Error::Protocol(
                            "subscribedEvents does not list the subscription".into(),
                        )));
                    }
                }
                Some(Pending::Resubscribe) => {
                    for s in subscriptions {
                        if s.recovered == Some(false) {
                            let since = self.subscriptions.get(&s.id).map_or(0, |x| x.last_seq);
                            self.emit(ClientEvent::Resync {
                                subscription_id: s.id,
                                since,
                            });
                        }
                    }
                    for r in rejected {
                        // Its stream ends: the sender drops with the entry.
                        self.subscriptions.remove(&r.id);
                        self.emit(ClientEvent::Error(ServerError {
                            code: r.code,
                            message: format!("resubscribing '{}': {}", r.id, r.message),
                            request_id: None,
                        }));
                    }
                }
                Some(other) => self.fail_unexpected(other, "subscribedEvents"),
                None => {}
            },
            ServerMessage::UnsubscribedEvents { request_id, .. } => {
                match request_id.and_then(|r| self.pending.remove(&r)) {
                    Some(Pending::Unsubscribe { id, reply }) => {
                        self.subscriptions.remove(&id);
                        let _ = reply.send(Ok(()));
                    }
                    Some(other) => self.fail_unexpected(other, "unsubscribedEvents"),
                    None => {}
                }
            }
            ServerMessage::LiveQueryCreated { ref id, .. } => {
                let pending = self
                    .creating
                    .remove(id)
                    .and_then(|r| self.pending.remove(&r));
                if let Some(Pending::CreateLiveQuery {
                    id,
                    query,
                    tx,
                    reply,
                }) = pending
                {
                    self.live_queries.insert(id, LiveQueryState { query, tx });
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                self.forward_live(m);
            }
            ServerMessage::LiveQueryData { .. }
            | ServerMessage::LiveQueryAddedNode { .. }
            | ServerMessage::LiveQueryUpdatedNode { .. }
            | ServerMessage::LiveQueryRemovedNode { .. } => self.forward_live(m),
            ServerMessage::LiveQueryDestroyed {
                ref id,
                ref request_id,
            } => {
                let id = id.clone();
                let pending = request_id.as_ref().and_then(|r| self.pending.remove(r));
                self.forward_live(m.clone());
                self.live_queries.remove(&id);
                if let Some(Pending::Request(reply)) = pending {
                    let _ = reply.send(Ok(m));
                }
            }
            ServerMessage::LockResult { .. }
            | ServerMessage::UnlockResult { .. }
            | ServerMessage::Published { .. } => {
                let pending = m.request_id().and_then(|r| self.pending.remove(r));
                match pending {
                    Some(Pending::Request(reply)) => drop(reply.send(Ok(m))),
                    Some(other) => self.fail_unexpected(other, "an answer"),
                    None => {}
                }
            }
            ServerMessage::Authenticated { .. } | ServerMessage::Pong | ServerMessage::Unknown => {}
        }
        Ok(())
    }

    fn deliver(&mut self, e: Event) {
        if e.subscription_ids.is_empty() {
            // Channel sockets: events carry channelId instead.
            let _ = self.channel_tx.send(e);
            return;
        }
        for id in &e.subscription_ids {
            if let Some(s) = self.subscriptions.get_mut(id) {
                s.last_seq = s.last_seq.max(e.seq);
                let _ = s.tx.send(Delivery::Event(e.clone()));
            }
        }
    }

    fn forward_live(&mut self, m: ServerMessage) {
        let id = match &m {
            ServerMessage::LiveQueryCreated { id, .. }
            | ServerMessage::LiveQueryData { id, .. }
            | ServerMessage::LiveQueryAddedNode { id, .. }
            | ServerMessage::LiveQueryUpdatedNode { id, .. }
            | ServerMessage::LiveQueryRemovedNode { id, .. }
            | ServerMessage::LiveQueryDestroyed { id, .. } => id,
            _ => return,
        };
        if let Some(lq) = self.live_queries.get(id) {
            let _ = lq.tx.send(m);
        }
    }

    /// An `error` answering a pending request.
    fn fail(&mut self, p: Pending, e: ServerError) {
        let err = Error::Server {
            code: e.code.clone(),
            message: e.message.clone(),
        };
        match p {
            Pending::Subscribe { reply, .. } => drop(reply.send(Err(err))),
            Pending::Unsubscribe { reply, .. } => drop(reply.send(Err(err))),
            Pending::Request(reply) => drop(reply.send(Err(err))),
            Pending::CreateLiveQuery { id, reply, .. } => {
                self.creating.remove(&id);
                match reply {
                    Some(reply) => drop(reply.send(Err(err))),
                    // A re-creation after a reconnect failed: the query's stream ends.
                    None => self.emit(ClientEvent::Error(e)),
                }
            }
            Pending::Resubscribe => self.emit(ClientEvent::Error(e)),
        }
    }

    fn fail_unexpected(&mut self, p: Pending, got: &str) {
        self.fail(
            p,
            ServerError {
                code: "INTERNAL".into(),
                message: format!("unexpected {got} for this request"),
                request_id: None,
            },
        );
    }
}

/// The URL of one attempt: the credential (`token` or `uuid`) and, unless they go in the
/// `auth` message, the connection options as query parameters.
fn connect_url(options: &ClientOptions, credential: &str) -> Result<String, Error> {
    split_url(&options.url, "ws", 80)?;
    let mut url = options.url.clone();
    let mut pairs: Vec<(&str, String)> = Vec::new();
    match &options.auth {
        Auth::Token(_) => pairs.push(("token", credential.to_string())),
        Auth::Ticket(_) => pairs.push(("uuid", credential.to_string())),
        Auth::AuthMessage(_) => {}
    }
    if !matches!(options.auth, Auth::AuthMessage(_)) {
        pairs.extend(options.options.query_pairs());
    }
    for (i, (k, v)) in pairs.iter().enumerate() {
        let sep = if i == 0 && !url.contains('?') {
            '?'
        } else {
            '&'
        };
        url.push(sep);
        url.push_str(k);
        url.push('=');
        url.push_str(&encode_query_value(v));
    }
    Ok(url)
}

impl Command {
    /// Whether the caller stopped waiting (its request timed out while the command was
    /// deferred): then it must not run late, e.g. a publish the caller counts as failed.
    fn abandoned(&self) -> bool {
        match self {
            Command::Subscribe { reply, .. } => reply.is_closed(),
            Command::Unsubscribe { reply, .. } => reply.is_closed(),
            Command::CreateLiveQuery { reply, .. } => reply.is_closed(),
            Command::Request { reply, .. } => reply.is_closed(),
            Command::Send(_) | Command::Close => false,
        }
    }
}

fn fail_command(c: Command, e: Error) {
    match c {
        Command::Subscribe { reply, .. } => drop(reply.send(Err(e))),
        Command::Unsubscribe { reply, .. } => drop(reply.send(Err(e))),
        Command::CreateLiveQuery { reply, .. } => drop(reply.send(Err(e))),
        Command::Request { reply, .. } => drop(reply.send(Err(e))),
        Command::Send(_) | Command::Close => {}
    }
}

fn parse(text: &str) -> Result<ServerMessage, Error> {
    serde_json::from_str(text).map_err(|e| Error::Protocol(format!("unreadable message: {e}")))
}

fn close_parts(f: Option<CloseFrame<'_>>) -> (u16, String) {
    f.map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()))
}

async fn send(ws: &mut Socket, m: &ClientMessage) -> Result<(), Error> {
    let text = serde_json::to_string(m).map_err(|e| Error::Protocol(e.to_string()))?;
    ws.send(Message::Text(text))
        .await
        .map_err(|e| Error::Connection(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ConnectionOptions, Framing};

    fn options(auth: Auth, url: &str) -> ClientOptions {
        let mut o = ClientOptions::new(url, auth);
        o.options = ConnectionOptions {
            batch_ms: Some(0),
            framing: Some(Framing::Array),
            group: Some("a b".into()),
            ..Default::default()
        };
        o
    }

    #[test]
    fn urls_carry_the_credential_and_the_options() {
        let o = options(Auth::token("t"), "ws://h:1/ws");
        assert_eq!(
            connect_url(&o, "jwt.x-y").unwrap(),
            "ws://h:1/ws?token=jwt.x-y&batchMs=0&framing=array&group=a%20b"
        );
        let o = options(
            Auth::ticket_with(|| async { Ok(String::new()) }),
            "ws://h:1/ws?x=1",
        );
        assert_eq!(
            connect_url(&o, "u-1").unwrap(),
            "ws://h:1/ws?x=1&uuid=u-1&batchMs=0&framing=array&group=a%20b"
        );
        // First-message auth: the options travel in the auth message, not the URL.
        let o = options(Auth::auth_message("t"), "ws://h:1/channels/c");
        assert_eq!(connect_url(&o, "t").unwrap(), "ws://h:1/channels/c");
        assert!(connect_url(&options(Auth::token("t"), "wss://h/ws"), "t").is_err());
    }
}
