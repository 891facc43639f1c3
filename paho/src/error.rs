//! The crate's one error type.

use std::sync::Arc;

/// Everything that can go wrong on a connection.
///
/// Errors that carry an MQTT reason code say so through [`Error::reason_code`]. The enum is
/// [`Clone`] because one connection's end is reported to every waiting caller; I/O causes are
/// shared through an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the transport failed.
    #[error("transport I/O failed: {0}")]
    Io(Arc<std::io::Error>),
    /// The connection is closed (the server closed the transport without a DISCONNECT, or the
    /// client's connection task has ended); nothing was sent.
    #[error("the connection is closed")]
    ConnectionClosed,
    /// The server refused the connection: CONNACK carried this failure reason code.
    #[error("the server refused the connection (CONNACK reason {reason_code:#04x}){}", fmt_reason(.reason_string))]
    ConnectionRefused {
        /// The CONNACK reason code.
        reason_code: u8,
        /// The server's Reason String, if it sent one.
        reason_string: Option<String>,
    },
    /// The server sent a DISCONNECT.
    #[error("the server disconnected (reason {reason_code:#04x}){}", fmt_reason(.reason_string))]
    ServerDisconnected {
        /// The DISCONNECT reason code.
        reason_code: u8,
        /// The server's Reason String, if it sent one.
        reason_string: Option<String>,
        /// The Server Reference (another server to use), if it sent one.
        server_reference: Option<String>,
    },
    /// The server broke the protocol; the client closed the link with a DISCONNECT carrying
    /// `reason_code` (0x81 Malformed Packet, 0x82 Protocol Error, 0x93 Receive Maximum
    /// exceeded, 0x94 Topic Alias invalid, 0x95 Packet too large, ...).
    #[error("protocol violation by the server ({reason_code:#04x}): {what}")]
    Protocol {
        /// The reason code the client disconnected with.
        reason_code: u8,
        /// What happened.
        what: String,
    },
    /// Nothing arrived from the server within 1.5 times the keepalive interval (a half-open
    /// link); the transport was closed at once, without writing anything more to a link
    /// presumed dead. [`Error::reason_code`] gives 0x8D (Keep Alive timeout).
    #[error("keepalive timeout: nothing received from the server within 1.5x the keepalive")]
    KeepAliveTimeout,
    /// No CONNACK arrived within the connect timeout.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server said in CONNACK that it does not support this. Carries the matching reason
    /// code (0x9B QoS not supported, 0x9A Retain not supported, 0x9E shared subscriptions,
    /// 0xA1 subscription identifiers, 0xA2 wildcard subscriptions, 0x94 topic alias).
    #[error("not supported by the server ({reason_code:#04x}): {what}")]
    NotSupported {
        /// The matching reason code.
        reason_code: u8,
        /// What was refused.
        what: &'static str,
    },
    /// The packet is larger than the server's Maximum Packet Size (checked before sending).
    #[error("packet of {size} bytes exceeds the server's Maximum Packet Size of {max}")]
    PacketTooLarge {
        /// The encoded size.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// An option given to a builder is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// An argument is invalid for this call.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Enhanced authentication failed or was used wrongly.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The session engine or its store reported an error (for example
    /// [`SessionLost`](paho_session::Error::SessionLost) for a publish abandoned because the
    /// server answered Session Present = 0).
    #[error(transparent)]
    Session(paho_session::Error),
    /// A packet could not be encoded (for example a string over 65,535 bytes or a wildcard in a
    /// topic name).
    #[error("codec error: {0}")]
    Codec(#[from] paho_packets::Error),
}

fn fmt_reason(r: &Option<String>) -> String {
    match r {
        Some(s) => format!(": {s}"),
        None => String::new(),
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<paho_session::Error> for Error {
    fn from(e: paho_session::Error) -> Self {
        use paho_session::Error as S;
        match e {
            S::PacketTooLarge { size, max } => Error::PacketTooLarge { size, max },
            S::NotSupported { reason_code, what } => Error::NotSupported { reason_code, what },
            S::Codec(c) => Error::Codec(c),
            // The connection closed before it took the message (see `PublishReply`).
            S::NotHandedOver => Error::ConnectionClosed,
            S::Protocol { reason_code, what } => Error::Protocol {
                reason_code,
                what: what.to_owned(),
            },
            other => Error::Session(other),
        }
    }
}

impl Error {
    /// The MQTT reason code this error carries, if any: the code the server sent (CONNACK,
    /// DISCONNECT), the code the client closed the link with (protocol violations, keepalive
    /// timeout), or the code matching a refused capability.
    pub fn reason_code(&self) -> Option<u8> {
        match self {
            Error::ConnectionRefused { reason_code, .. }
            | Error::ServerDisconnected { reason_code, .. }
            | Error::Protocol { reason_code, .. }
            | Error::NotSupported { reason_code, .. } => Some(*reason_code),
            Error::KeepAliveTimeout => Some(0x8D),
            Error::PacketTooLarge { .. } => Some(0x95),
            Error::Session(s) => s.reason_code(),
            _ => None,
        }
    }

    /// Whether the operation may still have taken effect: for a publish, the message is (or
    /// may be) in the session store and is resent when the session is reopened from it, so
    /// publishing it again would deliver a second copy
    /// ([`OutcomeUnknown`](paho_session::Error::OutcomeUnknown)). Every other error of a
    /// publish means "not done": the message was not stored, and publishing it again is safe
    /// (though after [`SessionLost`](paho_session::Error::SessionLost) it may have reached
    /// the server before the server forgot the session).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Session(s) if s.is_outcome_unknown())
    }

    pub(crate) fn protocol(reason_code: u8, what: impl Into<String>) -> Self {
        Error::Protocol {
            reason_code,
            what: what.into(),
        }
    }
}
