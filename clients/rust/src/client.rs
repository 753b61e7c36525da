//! The public handle: [`Client`] (connect, subscribe, live queries, service calls),
//! [`SubscriptionHandle`], the options ([`ClientOptions`], [`Auth`]) and the
//! connection-level [`ClientEvent`]s.
//!
//! A `Client` is a cheap clone around the command channel of one connection driver task
//! (`connection.rs`), which owns the socket and every table (subscriptions, live queries,
//! pending requests). Nothing here holds connection state: calls send a command and, where
//! the protocol answers, await the answer on a oneshot, bounded by the request timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::backoff::ReconnectPolicy;
use crate::connection::{self, Command};
use crate::error::Error;
use crate::live_query::{parse_order_by, LiveChange, LiveView};
use crate::protocol::{
    ClientMessage, ConnectionOptions, Event, LiveQuerySpec, LogLevel, ServerError, ServerMessage,
    Subscribed, Subscription, SubscriptionRefresh, Warning,
};
use crate::rest::Rest;

/// What a credential callback returns.
pub type CredentialFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;
/// A credential callback: called before every connection attempt, so a reconnect gets a
/// fresh token (refresh) or a fresh single-use ticket.
pub type CredentialFn = Arc<dyn Fn() -> CredentialFuture + Send + Sync>;

/// How the connection authenticates (PROTOCOL.md section 2).
#[derive(Clone)]
pub enum Auth {
    /// `?token=<jwt>` in the URL.
    Token(CredentialFn),
    /// `?uuid=<ticket>`: the callback fetches a ticket (see [`Auth::ticket_from`]).
    Ticket(CredentialFn),
    /// The first message `{"type":"auth","token":...}`; connection options go in it.
    AuthMessage(CredentialFn),
}

fn fixed(token: String) -> CredentialFn {
    Arc::new(move || {
        let t = token.clone();
        Box::pin(async move { Ok(t) })
    })
}

fn boxed<F, Fut>(f: F) -> CredentialFn
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Error>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

impl Auth {
    /// A fixed token in the URL.
    pub fn token(token: impl Into<String>) -> Auth {
        Auth::Token(fixed(token.into()))
    }

    /// A token in the URL from `refresh`, called before every connection attempt.
    pub fn token_with<F, Fut>(refresh: F) -> Auth
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Auth::Token(boxed(refresh))
    }

    /// A fixed token sent as the first message.
    pub fn auth_message(token: impl Into<String>) -> Auth {
        Auth::AuthMessage(fixed(token.into()))
    }

    /// A token from `refresh`, sent as the first message.
    pub fn auth_message_with<F, Fut>(refresh: F) -> Auth
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Auth::AuthMessage(boxed(refresh))
    }

    /// A ticket from `fetch`, called before every connection attempt.
    pub fn ticket_with<F, Fut>(fetch: F) -> Auth
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Auth::Ticket(boxed(fetch))
    }

    /// A ticket from `POST /api/v1/ws-tickets` with `rest`'s credential (a Bearer token).
    pub fn ticket_from(rest: Rest) -> Auth {
        Auth::ticket_with(move || {
            let rest = rest.clone();
            async move { rest.ws_ticket().await.map(|t| t.uuid) }
        })
    }

    pub(crate) fn credential(&self) -> &CredentialFn {
        match self {
            Auth::Token(f) | Auth::Ticket(f) | Auth::AuthMessage(f) => f,
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credential in debug output: it may end up in logs.
        f.write_str(match self {
            Auth::Token(_) => "Auth::Token",
            Auth::Ticket(_) => "Auth::Ticket",
            Auth::AuthMessage(_) => "Auth::AuthMessage",
        })
    }
}

/// Everything [`Client::connect`] needs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/ws` or `ws://host:port/channels/{channel_id}`.
    pub url: String,
    pub auth: Auth,
    /// `batchMs`, `batchMax`, `framing`, `group`.
    pub options: ConnectionOptions,
    pub reconnect: ReconnectPolicy,
    /// How long a call waits for its answer (and a connection for `authenticated`).
    pub request_timeout: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, auth: Auth) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            auth,
            options: ConnectionOptions::default(),
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The connection's state, as [`ClientEvent::State`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    /// Authenticated; subscriptions and live queries are being restored.
    Connected {
        connection_id: String,
    },
    /// Lost; the next attempt comes after `retry_in` (the drain close's delay, or the
    /// backoff's).
    Disconnected {
        code: Option<u16>,
        reason: String,
        retry_in: Duration,
    },
    /// For good: closed by the app, refused (4001, 4002, 1000), or reconnecting is off.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// Connection-level events (see [`Client::events`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    State(ConnectionState),
    /// `QUEUE_OVERFLOW`: events (or a live query's messages) were dropped; re-sync.
    Overflow(Warning),
    /// A resubscription after a reconnect was answered `recovered: false`: what happened
    /// after `since` is not all retained, so the app re-syncs that subscription.
    Resync {
        subscription_id: String,
        since: u64,
    },
    /// An `error` that answers no request of this client (or a refused resubscription).
    Error(ServerError),
}

/// What a subscription's stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Event(Event),
    Refresh(SubscriptionRefresh),
}

/// One subscription: its answer and its deliveries.
pub struct SubscriptionHandle {
    subscribed: Subscribed,
    rx: mpsc::UnboundedReceiver<Delivery>,
    client: Client,
}

impl SubscriptionHandle {
    pub fn id(&self) -> &str {
        &self.subscribed.id
    }

    /// The `subscribedEvents` entry: `seq` where live delivery starts, `recovered`.
    pub fn subscribed(&self) -> &Subscribed {
        &self.subscribed
    }

    /// The next event or refresh; `None` once unsubscribed or the client ended.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next event, skipping refreshes.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Delivery::Event(e) = self.next().await? {
                return Some(e);
            }
        }
    }

    /// `unsubscribeEvents`; nothing for it arrives after this resolves.
    pub async fn unsubscribe(self) -> Result<(), Error> {
        let id = self.subscribed.id.clone();
        self.client
            .call(|reply| Command::Unsubscribe { id, reply })
            .await
    }
}

/// A live query on a [`Client`]: its view, fed by the connection.
pub struct LiveQuery {
    id: String,
    view: LiveView,
    rx: mpsc::UnboundedReceiver<ServerMessage>,
    client: Client,
}

impl LiveQuery {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn view(&self) -> &LiveView {
        &self.view
    }

    /// Waits for the next message for this query, applies it and says what changed;
    /// `None` when the query or the client ended.
    pub async fn changed(&mut self) -> Option<LiveChange> {
        loop {
            let m = self.rx.recv().await?;
            if let Some(change) = self.view.apply(m) {
                return Some(change);
            }
        }
    }

    /// Waits until the view's initial pages have all arrived.
    pub async fn loaded(&mut self) -> Result<&LiveView, Error> {
        while !self.view.is_loaded() {
            self.changed().await.ok_or(Error::Closed)?;
        }
        Ok(&self.view)
    }

    /// `destroyLiveQuery`; resolves on `liveQueryDestroyed`.
    pub async fn destroy(self) -> Result<(), Error> {
        self.client.destroy_live_query(&self.id).await
    }
}

/// `lockResult`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub name: String,
    pub acquired: bool,
    /// Grows with every grant; `None` when not acquired.
    pub fencing_token: Option<u64>,
    pub expires_at: Option<String>,
}

/// A connection to one shardcast node that reconnects by itself.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<ClientEvent>,
    /// Channel-socket events, until [`Client::channel_events`] takes them.
    channel_events: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    request_timeout: Duration,
}

impl Client {
    /// Connects and authenticates. The first attempt's failure is returned (a wrong URL
    /// or credential shows at once); after that the client reconnects by itself.
    pub async fn connect(options: ClientOptions) -> Result<Client, Error> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let (channel_tx, channel_rx) = mpsc::unbounded_channel();
        let request_timeout = options.request_timeout;
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(connection::run(
            options,
            commands_rx,
            events.clone(),
            channel_tx,
            first_tx,
        ));
        first_rx.await.map_err(|_| Error::Closed)??;
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                events,
                channel_events: Mutex::new(Some(channel_rx)),
                request_timeout,
            }),
        })
    }

    /// Connection-level events from now on: state changes, overflow warnings, re-sync
    /// requests, unsolicited errors. Each call is a new receiver.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// The events of a channel socket (`/channels/{id}`), which carry `channelId`;
    /// `None` after the first call.
    pub fn channel_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.inner
            .channel_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.inner.commands.send(command).map_err(|_| Error::Closed)
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx))?;
        let t = self.inner.request_timeout;
        match tokio::time::timeout(t, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(t)),
        }
    }

    async fn request(&self, message: ClientMessage) -> Result<ServerMessage, Error> {
        self.call(|reply| Command::Request { message, reply }).await
    }

    /// `subscribeEvents` with one subscription. A rejection is `Err(Error::Server)` with
    /// its code (e.g. `INVALID_FILTER`). After a reconnect the client resubscribes with
    /// `since` = the last `seq` it delivered for it.
    pub async fn subscribe(&self, subscription: Subscription) -> Result<SubscriptionHandle, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscribed = self
            .call(|reply| Command::Subscribe {
                subscription,
                tx,
                reply,
            })
            .await?;
        Ok(SubscriptionHandle {
            subscribed,
            rx,
            client: self.clone(),
        })
    }

    /// `createLiveQuery`; resolves on `liveQueryCreated` (the pages follow: see
    /// [`LiveQuery::loaded`]).
    pub async fn live_query(
        &self,
        id: impl Into<String>,
        query: LiveQuerySpec,
    ) -> Result<LiveQuery, Error> {
        let id = id.into();
        let keys = parse_order_by(query.order_by.as_deref()).map_err(|m| Error::Server {
            code: "INVALID_FILTER".into(),
            message: m,
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let live_id = id.clone();
        self.call(|reply| Command::CreateLiveQuery {
            id: live_id,
            query,
            tx,
            reply,
        })
        .await?;
        Ok(LiveQuery {
            id,
            view: LiveView::new(keys),
            rx,
            client: self.clone(),
        })
    }

    pub(crate) async fn destroy_live_query(&self, id: &str) -> Result<(), Error> {
        self.request(ClientMessage::DestroyLiveQuery {
            id: id.to_string(),
            request_id: None,
        })
        .await
        .map(|_| ())
    }

    /// Services: `taskComplete` (no answer; idempotent).
    pub fn task_complete<S: AsRef<str>>(&self, task_ids: &[S]) -> Result<(), Error> {
        self.send(Command::Send(ClientMessage::TaskComplete {
            task_ids: task_ids.iter().map(|s| s.as_ref().to_string()).collect(),
        }))
    }

    /// Services: `taskFailed`; redelivered with `attempt` + 1 after `retry_in_ms`.
    pub fn task_failed<S: AsRef<str>>(
        &self,
        task_ids: &[S],
        retry_in_ms: u64,
    ) -> Result<(), Error> {
        self.send(Command::Send(ClientMessage::TaskFailed {
            task_ids: task_ids.iter().map(|s| s.as_ref().to_string()).collect(),
            retry_in_ms,
        }))
    }

    /// Services: `lock`, waiting up to `wait_ms` for it.
    pub async fn lock(&self, name: &str, ttl_ms: u64, wait_ms: u64) -> Result<Lock, Error> {
        match self
            .request(ClientMessage::Lock {
                request_id: String::new(),
                name: name.to_string(),
                ttl_ms,
                wait_ms,
            })
            .await?
        {
            ServerMessage::LockResult {
                name,
                acquired,
                fencing_token,
                expires_at,
                ..
            } => Ok(Lock {
                name,
                acquired,
                fencing_token,
                expires_at,
            }),
            other => Err(unexpected("lockResult", &other)),
        }
    }

    /// Services: `unlock`; whether a held lock was released.
    pub async fn unlock(&self, name: &str) -> Result<bool, Error> {
        match self
            .request(ClientMessage::Unlock {
                request_id: String::new(),
                name: name.to_string(),
            })
            .await?
        {
            ServerMessage::UnlockResult { released, .. } => Ok(released),
            other => Err(unexpected("unlockResult", &other)),
        }
    }

    /// Services: `log` (no answer), published on `$logs/{group}`.
    pub fn log(
        &self,
        level: LogLevel,
        message: impl Into<String>,
        fields: Option<serde_json::Map<String, Value>>,
    ) -> Result<(), Error> {
        self.send(Command::Send(ClientMessage::Log {
            level,
            message: message.into(),
            fields,
        }))
    }

    /// Services and admins: `publish` over the socket; the publication's `seq`.
    pub async fn publish(&self, path: &str, event_type: &str, data: Value) -> Result<u64, Error> {
        match self
            .request(ClientMessage::Publish {
                request_id: String::new(),
                path: path.to_string(),
                event_type: event_type.to_string(),
                data,
            })
            .await?
        {
            ServerMessage::Published { seq, .. } => Ok(seq),
            other => Err(unexpected("published", &other)),
        }
    }

    /// Closes the connection (1000) and ends the driver; every handle's stream ends.
    pub fn close(&self) {
        let _ = self.send(Command::Close);
    }
}

fn unexpected(wanted: &str, got: &ServerMessage) -> Error {
    Error::Protocol(format!("expected {wanted}, got {got:?}"))
}
