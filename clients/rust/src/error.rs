//! The client's one error type. Owned by this crate; every public call returns it.

use thiserror::Error;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    /// The server answered with an error (or rejected a subscription): its code and message.
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// The server closed the connection for good (e.g. 4001 unauthorized, 4002 auth
    /// timeout); `message` is the `error` that came before the close, if any.
    #[error("connection closed by the server with {code} {reason:?}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        code: u16,
        reason: String,
        message: Option<String>,
    },
    /// The connection dropped before the answer came.
    #[error("disconnected before the answer came")]
    Disconnected,
    /// The client was closed (or the server refused it for good).
    #[error("the client is closed")]
    Closed,
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A connection attempt did not reach `authenticated` within `connect_timeout`
    /// (credential callback, TCP connect, WebSocket handshake and authentication).
    #[error("not authenticated within connect_timeout ({0:?})")]
    ConnectTimeout(std::time::Duration),
    /// The credential callback failed.
    #[error("credential: {0}")]
    Credential(String),
    /// Connecting, the WebSocket handshake or the socket failed.
    #[error("connection: {0}")]
    Connection(String),
    /// A URL the client cannot use.
    #[error("bad URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    /// A REST answer that was not 2xx: the status and the server's error code and message.
    #[error("HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// The server sent something the contract does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
}
