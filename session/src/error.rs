//! The crate's single error type.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in a store or in the session engine.
///
/// Errors that fan out to many callers (a failed group commit answers every writer in the
/// batch) share their I/O cause through an [`Arc`], which is why the enum is [`Clone`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation of a [`FileStore`](crate::FileStore) failed.
    #[error("session store I/O failed while {context}: {source}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The store directory was created for another server or client id.
    #[error(
        "session store {dir} belongs to server {found_server:?} and client id {found_client:?}, \
         not to server {expected_server:?} and client id {expected_client:?}"
    )]
    IdentityMismatch {
        /// The store directory.
        dir: PathBuf,
        /// The server URL the caller asked for.
        expected_server: String,
        /// The client id the caller asked for.
        expected_client: String,
        /// The server URL recorded in the directory.
        found_server: String,
        /// The client id recorded in the directory.
        found_client: String,
    },
    /// The store's identity file is unreadable, so the directory's owner cannot be verified.
    #[error("session store metadata {path} is corrupt: {reason}")]
    CorruptMeta {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another [`FileStore`](crate::FileStore) of this process already has the directory open.
    #[error("session store {0} is already open in this process")]
    AlreadyOpen(PathBuf),
    /// Another process has the store directory open (it holds the exclusive lock on the
    /// directory's `lock` file). Two processes writing one log would corrupt it.
    #[error("session store {0} is in use by another process")]
    Locked(PathBuf),
    /// An earlier write or fsync failed; what is on disk is unknown, so the store refuses
    /// everything until it is reopened (which replays what really reached the disk).
    #[error("the session store failed earlier and must be reopened")]
    StoreFailed,
    /// The operation may or may not have taken effect, and nobody can tell until the store is
    /// reopened: it failed after it reached the store (for example an fsync failed and cutting
    /// the batch back out of the log failed too), or, for a publish, its message was already
    /// in the session store when the store or the session failed.
    ///
    /// **Do not publish such a message again.** It is (or may be) durable, and it is resent
    /// when the session is reopened from the store; a second copy would be delivered as well,
    /// which breaks QoS 2. Every other error of a publish means "not done": the message was
    /// not stored, and publishing it again is safe. [`Error::is_outcome_unknown`] tells the
    /// two apart.
    #[error("outcome unknown, the operation may have taken effect: {cause}")]
    OutcomeUnknown {
        /// What went wrong.
        #[source]
        cause: Arc<Error>,
    },
    /// The store's background writer has stopped (the store was dropped or its thread died).
    #[error("the session store is closed")]
    StoreClosed,
    /// An entry kind was used with a key of the other direction (for example a PUBREC
    /// marker under an outbound key).
    #[error("entry kind {kind:?} does not belong under key {key:?}")]
    KindMismatch {
        /// The key.
        key: crate::Key,
        /// The kind that does not fit it.
        kind: crate::EntryKind,
    },
    /// A stored value is larger than any MQTT packet can be.
    #[error("stored value of {len} bytes exceeds the maximum MQTT packet size")]
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
    /// A builder was given an invalid setting.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// All 65,535 packet identifiers are held by unfinished exchanges.
    #[error("all 65,535 packet identifiers are in use")]
    PacketIdsExhausted,
    /// The server answered CONNACK with Session Present = 0, so it no longer holds the
    /// exchange this handle was waiting for, and the session's
    /// [`SessionLostPolicy`](crate::SessionLostPolicy) is `Fail` (the default republishes
    /// instead). The message may or may not have been delivered, and the store no longer
    /// holds it; it is given back here: publish it again if it must arrive.
    #[error("the server discarded the session (Session Present = 0); the exchange was abandoned")]
    SessionLost {
        /// The message (full topic, no packet id).
        message: Box<paho_packets::Publish>,
    },
    /// The message's Message Expiry Interval passed before it could be sent (it waited for a
    /// connection or send quota: it was never sent), or before a QoS 1 message could be
    /// resent after a reconnect (it may have reached the server before the link dropped). It
    /// was dropped as MQTT requires; publishing it again makes no sense. (An expired QoS 2
    /// message that was sent is resent with an interval of 1 s, never dropped: see the
    /// engine's docs.)
    #[error("the message expired before it could be sent")]
    MessageExpired,
    /// The session expired (its Session Expiry Interval passed while offline, or it was 0 and
    /// the link dropped), so it was cleared locally under
    /// [`SessionLostPolicy::Fail`](crate::SessionLostPolicy::Fail). As
    /// [`Error::SessionLost`], the message is given back.
    #[error("the session expired and was cleared")]
    SessionExpired {
        /// The message (full topic, no packet id).
        message: Box<paho_packets::Publish>,
    },
    /// The connection closed before the server answered a SUBSCRIBE or UNSUBSCRIBE (these,
    /// unlike PUBLISH and PUBREL, are not resent on the next connection).
    #[error("the connection closed before the server answered")]
    ConnectionLost,
    /// The session engine was shut down, or failed after a store error, and can no longer
    /// complete this exchange.
    #[error("the session was closed")]
    SessionClosed,
    /// The server refused the connection: CONNACK carried this failure reason code.
    #[error("the server refused the connection (CONNACK reason {reason_code:#04x})")]
    ConnectionRefused {
        /// The CONNACK reason code.
        reason_code: u8,
    },
    /// The operation needs a connection, but none is up.
    #[error("not connected")]
    NotConnected,
    /// The publish never reached a session: its [`PublishCompleter`](crate::PublishCompleter)
    /// was dropped before it was given to [`Session::publish_with`](crate::Session::publish_with)
    /// (in `paho`: the connection closed before it took the message). "Not done": publishing
    /// it again is safe.
    #[error("the message never reached the session")]
    NotHandedOver,
    /// The application acknowledged a message received on a connection that has since closed.
    /// Nothing is sent: the server redelivers the message on the next connection (a QoS 1
    /// message is then delivered again; a QoS 2 one is acknowledged without being delivered
    /// again, since the application has had it).
    #[error("the connection this message arrived on has closed; the server will redeliver it")]
    StaleAck,
    /// The server broke the protocol (for example it acknowledged a packet id that is not in
    /// flight with the wrong kind of acknowledgement). Carries the reason code to disconnect with.
    #[error("protocol error by the server ({reason_code:#04x}): {what}")]
    Protocol {
        /// The reason code for the DISCONNECT (0x82 Protocol Error, 0x93 Receive Maximum
        /// exceeded, ...).
        reason_code: u8,
        /// What happened.
        what: &'static str,
    },
    /// The packet is larger than the server's Maximum Packet Size. A stored message found too
    /// large on resend (the server lowered its limit) is discarded, as MQTT v5 §3.1.2.24
    /// requires, and its handle gets this error.
    #[error("packet of {size} bytes exceeds the server's Maximum Packet Size of {max}")]
    PacketTooLarge {
        /// The encoded size.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The server said in CONNACK that it does not support this (a QoS above its Maximum QoS:
    /// reason 0x9B; retain when Retain Available is 0: reason 0x9A).
    #[error("not supported by the server ({reason_code:#04x}): {what}")]
    NotSupported {
        /// The matching reason code.
        reason_code: u8,
        /// What was refused.
        what: &'static str,
    },
    /// The packet is not valid for this operation (for example a QoS 0 message passed where a
    /// QoS 1/2 one is required, or a PUBLISH with a topic alias but no topic name).
    #[error("invalid packet: {0}")]
    InvalidPacket(&'static str),
    /// Encoding or decoding a packet failed.
    #[error("codec error: {0}")]
    Codec(#[from] paho_packets::Error),
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            context,
            source: Arc::new(source),
        }
    }

    /// An [`Error::OutcomeUnknown`] wrapping `cause` (unless it already is one).
    pub fn outcome_unknown(cause: Error) -> Self {
        match cause {
            e @ Error::OutcomeUnknown { .. } => e,
            cause => Error::OutcomeUnknown {
                cause: Arc::new(cause),
            },
        }
    }

    /// Whether the operation that failed may still have taken effect
    /// ([`Error::OutcomeUnknown`]): for a publish, the message is (or may be) in the session
    /// store and is sent again when the session is reopened, so publishing it again would
    /// duplicate it. `false` means "not done": nothing was stored, and retrying is safe.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// The message a publish gave back ([`Error::SessionLost`], [`Error::SessionExpired`]).
    pub fn message(&self) -> Option<&paho_packets::Publish> {
        match self {
            Error::SessionLost { message } | Error::SessionExpired { message } => Some(message),
            _ => None,
        }
    }

    /// The MQTT reason code this error corresponds to, if there is one (for example the
    /// reason to put in a DISCONNECT after [`Error::Protocol`]).
    pub fn reason_code(&self) -> Option<u8> {
        match self {
            Error::Protocol { reason_code, .. }
            | Error::ConnectionRefused { reason_code }
            | Error::NotSupported { reason_code, .. } => Some(*reason_code),
            Error::PacketTooLarge { .. } => Some(0x95),
            _ => None,
        }
    }
}
