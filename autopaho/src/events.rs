//! What the manager tells the application: [`Event`]s and [`ConnectionState`].

use paho::packets::ConnAck;

use crate::Error;

/// Where the manager is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Trying a server.
    Connecting,
    /// A connection is up.
    Connected,
    /// Waiting before the next round of attempts.
    Backoff,
    /// Stopped for good ([`ConnectionManager::done`](crate::ConnectionManager::done) says why).
    Stopped,
}

/// Something that happened, in order. Read with
/// [`ConnectionManager::events`](crate::ConnectionManager::events).
///
/// Events go to a broadcast channel (a `tokio::sync::broadcast` of 1,024): every receiver sees
/// every event, a slow one skips the oldest (and is told how many), and the manager never
/// waits for the application. A stream fits tokio code better than callbacks: the
/// application reads it wherever it likes (a `select!`, a logging task), and a slow reader
/// cannot stall reconnection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An attempt to connect to this server starts.
    Connecting {
        /// The server.
        server: String,
    },
    /// A connection is up.
    Connected {
        /// The server.
        server: String,
        /// The server's CONNACK (Session Present, assigned client id, limits).
        connack: Box<ConnAck>,
    },
    /// An attempt failed: the transport could not be opened, or the server refused the
    /// CONNECT (then [`Error::reason_code`] gives its CONNACK reason code).
    ConnectFailed {
        /// The server.
        server: String,
        /// Why.
        error: Error,
    },
    /// The connection closed. `error` is `None` when the application asked for it.
    Disconnected {
        /// Why, if it was not asked for.
        error: Option<Error>,
    },
    /// The next round of attempts starts after this delay.
    Backoff {
        /// How long the manager waits.
        delay: std::time::Duration,
    },
    /// The server had forgotten the session (CONNACK Session Present = 0 in answer to a
    /// CONNECT that asked to resume it, on a reconnect or on the first connection of a
    /// restarted process):
    /// subscriptions made through the manager are made again (unless turned off), and the
    /// session's policy republishes or gives back its unfinished messages.
    SessionLost,
    /// A queued message was dropped before it was sent: its Message Expiry Interval had
    /// passed while it waited.
    QueueExpired {
        /// The queue entry's number.
        seq: u64,
    },
    /// The queue was full and its `DropOldest` policy dropped these entries (oldest first)
    /// to make room for a new one.
    QueueOverflow {
        /// The dropped entries' numbers.
        dropped: Vec<u64>,
    },
    /// A queued message could never be sent (it does not decode, or the server refuses it
    /// for good: too large, QoS or retain not supported); it was moved to the queue's
    /// quarantine.
    QueueRefused {
        /// The queue entry's number.
        seq: u64,
        /// Why.
        error: Error,
    },
    /// Messages the session handed back because the server had forgotten the session and
    /// its policy is `Fail`: the application decides whether to publish them again.
    Abandoned {
        /// The messages.
        messages: Vec<paho::packets::Publish>,
    },
    /// A remembered subscription could not be made again on a new connection.
    ResubscribeFailed {
        /// The filters.
        filters: Vec<String>,
        /// Why.
        error: Error,
    },
}
