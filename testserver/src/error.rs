//! The crate's one error type.

use paho_packets::Packet;

/// Everything that can go wrong in the test server, the raw client and the mosquitto harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket, pipe, process or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A packet could not be encoded or decoded.
    #[error("packet error: {0}")]
    Packet(#[from] paho_packets::Error),
    /// A builder was given a value the protocol does not allow.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// The server was started outside a tokio runtime.
    #[error("no tokio runtime: {0}")]
    NoRuntime(#[from] tokio::runtime::TryCurrentError),
    /// The server has been shut down.
    #[error("the server has been shut down")]
    Shutdown,
    /// No `mosquitto` binary was found in `PATH`, `/usr/sbin` or `$MOSQUITTO`.
    #[error("mosquitto not found (install the Debian package `mosquitto`)")]
    MosquittoNotFound,
    /// mosquitto was spawned but did not come up.
    #[error("mosquitto did not start: {reason}; its log:\n{log}")]
    MosquittoStart {
        /// What was seen.
        reason: String,
        /// What mosquitto wrote to stderr.
        log: String,
    },
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// A bounded wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The raw client got a packet other than the one it waited for.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// The packet type that was expected.
        expected: &'static str,
        /// The packet that arrived.
        got: Box<Packet>,
    },
}
