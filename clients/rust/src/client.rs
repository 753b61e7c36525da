//! The public handle: [`Client`] (connect, subscribe, live queries, service calls),
//! [`SubscriptionHandle`] and [`LiveQuery`].
//!
//! A `Client` is a cheap clone around the command channel of one connection driver task
//! (`connection.rs`), which owns the socket and every table (subscriptions, live queries,
//! pending requests). Nothing here holds connection state: calls send a command and, where
//! the protocol answers, await the answer on a oneshot, bounded by the request timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::connection::{self, Command};
use crate::error::Error;
use crate::events::{ClientEvent, Delivery};
use crate::live_query::{parse_order_by, LiveChange, LiveView};
use crate::options::ClientOptions;
use crate::protocol::{
    ClientMessage, Event, LiveQuerySpec, LogLevel, ServerMessage, Subscribed, Subscription,
};

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
            // Checked here because the view sorts by it; the server would refuse it with
            // the same code.
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
