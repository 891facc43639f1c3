//! The crate's one error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in `autopaho`: a bad configuration (found when it is built)
/// or a failed connect attempt (found when it runs).
///
/// Configuration errors ([`Error::InvalidUrl`] to [`Error::InvalidHeader`]) never go away by
/// retrying; connect errors ([`Error::Io`] to [`Error::WebSocket`]) may. See
/// [`Error::is_config`].
///
/// Errors are `Clone` (an I/O error is kept as its kind and message) and never carry a
/// password or a private key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- configuration ----
    /// The text is not a URL, or a URL that this crate cannot use.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (with any credentials removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is none of `mqtt`, `tcp`, `mqtts`, `ssl`, `tls`, `mqtt+ssl`, `tcps`,
    /// `ws`, `wss`.
    #[error(
        "unknown URL scheme {0:?} (expected mqtt, tcp, mqtts, ssl, tls, mqtt+ssl, tcps, ws or wss)"
    )]
    UnknownScheme(String),
    /// The URL names no host.
    #[error("server URL {0:?} has no host")]
    MissingHost(String),
    /// The URL carries a user name or password. They belong in the CONNECT options, where
    /// they are never logged; a URL is printed in logs and errors.
    #[error(
        "server URL {0:?} carries credentials; set the user name and password in the connect \
         options instead"
    )]
    CredentialsInUrl(String),
    /// An empty list of servers.
    #[error("no servers given: at least one server URL is needed")]
    NoServers,
    /// A `ws`/`wss` URL, but the crate was built without its `websocket` feature.
    #[error("WebSocket URL {0:?}, but autopaho was built without its `websocket` feature")]
    WebSocketDisabled(String),
    /// A PEM input holds no usable item, or a malformed one.
    #[error("invalid PEM for the {what}: {reason}")]
    Pem {
        /// Which input: "CA certificates", "client certificate chain" or "client private key".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS configuration (for example a client key that does not match
    /// its certificate, or a CA certificate it cannot use as a trust anchor).
    #[error("invalid TLS configuration: {0}")]
    TlsConfig(String),
    /// The TLS server name (the URL's host or the override) is not a DNS name or an IP
    /// address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// A backoff parameter is out of range.
    #[error("invalid backoff: {0}")]
    InvalidBackoff(&'static str),
    /// A connect timeout of zero.
    #[error("invalid connect timeout: it must be more than zero")]
    InvalidConnectTimeout,
    /// A WebSocket header name or value is malformed, or names a header the handshake sets
    /// itself.
    #[error("invalid WebSocket header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    // ---- a connect attempt ----
    /// A socket error while connecting (DNS, TCP, or an I/O error from a custom connector).
    #[error("connecting to {server}: {message}")]
    Io {
        /// The server, as [`ServerUrl`](crate::ServerUrl)'s `Display` prints it.
        server: String,
        /// The I/O error's kind.
        kind: io::ErrorKind,
        /// The I/O error's message.
        message: String,
    },
    /// The whole connect (TCP, TLS and WebSocket handshakes) took longer than the connect
    /// timeout.
    #[error("connecting to {server} timed out after {after:?}")]
    Timeout {
        /// The server.
        server: String,
        /// The connect timeout that ran out.
        after: Duration,
    },
    /// The server's certificate failed verification: an unknown CA, an expired or not yet
    /// valid certificate, a name mismatch, and so on.
    #[error("TLS certificate verification failed for {server}: {problem}")]
    CertificateVerification {
        /// The server.
        server: String,
        /// What is wrong with the certificate.
        problem: CertificateProblem,
    },
    /// The TLS handshake failed for another reason (for example a fatal alert from the
    /// server, or no protocol version in common).
    #[error("TLS handshake with {server} failed: {reason}")]
    Tls {
        /// The server.
        server: String,
        /// rustls's description of the failure.
        reason: String,
    },
    /// The WebSocket upgrade failed (an HTTP error status, a missing `mqtt` subprotocol in
    /// the answer, a malformed response).
    #[error("WebSocket handshake with {server} failed: {reason}")]
    WebSocket {
        /// The server.
        server: String,
        /// What went wrong.
        reason: String,
    },

    // ---- the connection manager ----
    /// The connection (`paho`) failed or refused: a refusing CONNACK
    /// ([`paho::Error::ConnectionRefused`], see [`Error::reason_code`]), a server
    /// DISCONNECT, a protocol violation, a keepalive timeout, or the error of a publish or
    /// subscribe. [`Error::is_outcome_unknown`] tells a publish that must not be retried.
    #[error(transparent)]
    Client(paho::Error),
    /// The outgoing queue failed.
    #[error("outgoing queue: {0}")]
    Queue(std::sync::Arc<paho_queue::Error>),
    /// The operation needs a connection, and none is up (`publish` fails fast; use
    /// `publish_via_queue` to have the message wait).
    #[error("not connected")]
    NotConnected,
    /// The manager has stopped (after `disconnect`, when its last handle was dropped, or on
    /// a fatal store or queue failure: see `done`).
    #[error("the connection manager has stopped")]
    Stopped,
}

/// Two errors are equal when they are the same variant with the same message (the
/// connection's and the queue's errors are not comparable themselves).
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for Error {}

impl From<paho::Error> for Error {
    fn from(e: paho::Error) -> Self {
        Error::Client(e)
    }
}

impl From<paho_queue::Error> for Error {
    fn from(e: paho_queue::Error) -> Self {
        Error::Queue(std::sync::Arc::new(e))
    }
}

impl Error {
    /// The MQTT reason code this error carries, if any (a refusing CONNACK's, a server
    /// DISCONNECT's, ...).
    pub fn reason_code(&self) -> Option<u8> {
        match self {
            Error::Client(e) => e.reason_code(),
            _ => None,
        }
    }

    /// Whether the publish this error answers may still have taken effect (the message is
    /// or may be in the session store, and is resent when the session is reopened):
    /// publishing it again would duplicate it. Every other error of a publish means "not
    /// done".
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::Client(e) => e.is_outcome_unknown(),
            Error::Queue(e) => e.is_outcome_unknown(),
            _ => false,
        }
    }

    /// True for a configuration error: retrying the same configuration gives the same error.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::InvalidUrl { .. }
                | Error::UnknownScheme(_)
                | Error::MissingHost(_)
                | Error::CredentialsInUrl(_)
                | Error::NoServers
                | Error::WebSocketDisabled(_)
                | Error::Pem { .. }
                | Error::TlsConfig(_)
                | Error::InvalidServerName(_)
                | Error::InvalidBackoff(_)
                | Error::InvalidConnectTimeout
                | Error::InvalidHeader { .. }
        )
    }

    pub(crate) fn io(server: &impl std::fmt::Display, e: &io::Error) -> Error {
        Error::Io {
            server: server.to_string(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Why a server certificate failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// It is not signed by a trusted CA (check the CA certificates in
    /// [`TlsOptions`](crate::TlsOptions)).
    #[error("unknown issuer: the certificate is not signed by a trusted CA")]
    UnknownIssuer,
    /// It has expired.
    #[error("the certificate has expired")]
    Expired,
    /// It is not valid yet (check the clock).
    #[error("the certificate is not valid yet")]
    NotValidYet,
    /// It is not valid for the server name (the URL's host, or the server name override).
    #[error("the certificate is not valid for the server name")]
    NameMismatch,
    /// It has been revoked.
    #[error("the certificate has been revoked")]
    Revoked,
    /// Its signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Another problem, as rustls describes it.
    #[error("{0}")]
    Other(String),
}
