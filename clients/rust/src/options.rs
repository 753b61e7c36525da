//! How a client connects: [`ClientOptions`] and [`Auth`] with its credential callbacks.
//!
//! Plain configuration, built by the app and handed to `Client::connect`; afterwards only
//! the connection driver reads it (each attempt calls the credential callback afresh).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::ReconnectPolicy;
use crate::error::Error;
use crate::protocol::ConnectionOptions;
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

/// Everything `Client::connect` needs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/ws` or `ws://host:port/channels/{channel_id}`.
    pub url: String,
    pub auth: Auth,
    /// `batchMs`, `batchMax`, `framing`, `group`.
    pub options: ConnectionOptions,
    pub reconnect: ReconnectPolicy,
    /// How long a call waits for its answer.
    pub request_timeout: Duration,
    /// How long one connection attempt may take to reach `authenticated` (credential
    /// callback, TCP connect, WebSocket handshake, authentication) before it is given
    /// up ([`Error::ConnectTimeout`]) and, after the first connection, retried with
    /// backoff like any failed attempt. Default 10 s; `Duration::ZERO`: no deadline.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, auth: Auth) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            auth,
            options: ConnectionOptions::default(),
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
