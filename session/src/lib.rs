//! Session state for the paho-rs MQTT v5 clients: what lets a publish started on one
//! connection finish on the next, and lets a killed process pick up where it stopped.
//!
//! # Layout
//!
//! - [`store`]: what a persistent session keeps. The [`Store`] trait (outbound QoS 1/2
//!   packets and inbound QoS 2 markers by packet id, in send order), [`MemoryStore`], and
//!   [`FileStore`] (a crash-safe, checksummed, group-committed append-only log in a directory
//!   bound to one server and client id).
//! - The engine, [`Session`]: packet ids ([`PacketIds`]), send quota, completion handles
//!   ([`Completion`]), resend on reconnect, inbound QoS 2 deduplication, session expiry and
//!   restore at start-up. It does no I/O and reads no clock.
//! - [`Error`]: the crate's one error type.
//!
//! # The driver contract
//!
//! A driver (the `paho` client) owns one [`Session`] inside one task, next to the socket, and
//! serves publishers from other tasks over a channel, handing each its [`Completion`]. The
//! session is fed events and returns [`Action`]s:
//!
//! | event | call |
//! |---|---|
//! | about to send CONNECT | [`Session::begin_connect`] (returns the Clean Start flag to use) |
//! | CONNACK received | [`Session::on_connack`] |
//! | any other packet received | [`Session::handle`] (PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK) |
//! | the application publishes / subscribes / unsubscribes | [`Session::publish`] / [`Session::subscribe`] / [`Session::unsubscribe`] |
//! | the application is done with a delivered message | [`Session::ack`] |
//! | the connection closed | [`Session::on_connection_lost`] |
//!
//! After every call the driver drains [`Session::poll_action`] and carries the actions out
//! **in order**:
//!
//! - [`Action::Store`]: apply it to the store ([`StoreOp::apply`]). Nothing after it may be
//!   sent or delivered before it completed: that is how a PUBLISH is durable before it is on
//!   the wire, a PUBREL replaces its PUBLISH before it is sent, and an inbound QoS 2 marker is
//!   durable before PUBREC. Store operations are enqueued when applied, so a driver may apply
//!   several in a row and await them together to share one fsync. If one fails, the driver
//!   closes the connection, waits for the rest, and calls [`Session::on_store_failed`] with
//!   the outbound ids whose Put failed ("not stored"); every other exchange's handle hears
//!   [`Error::OutcomeUnknown`]. The store must be reopened.
//! - [`Action::Send`]: write the packet. PUBLISHes carry their full topic; the driver may apply
//!   a per-connection topic alias as it writes. The engine has already checked every PUBLISH
//!   against the server's Maximum Packet Size, Maximum QoS and Retain Available from CONNACK
//!   (a stored message the limit no longer admits is discarded, MQTT v5 §3.1.2.24); other
//!   packets (SUBSCRIBE, ...) are the driver's to check.
//! - [`Action::Deliver`]: hand the message to the application (resolve inbound topic aliases
//!   *before* feeding a PUBLISH to the session). QoS 1/2 deliveries carry an [`AckToken`];
//!   PUBACK/PUBREC go out in arrival order whatever the order of [`Session::ack`] calls.
//! - [`Action::Abandoned`]: a restored message given up under [`SessionLostPolicy::Fail`];
//!   hand it to the application.
//!
//! Time is an argument ([`std::time::Instant`]), so tests drive the engine with a virtual
//! clock and the driver can pass tokio's (possibly paused) clock.
//!
//! ```
//! use std::time::Instant;
//! use paho_packets::{ConnAck, Packet, PubAck, Publish, QoS};
//! use paho_session::{Action, MemoryStore, Session, SessionConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), paho_session::Error> {
//! let store = MemoryStore::new();
//! let mut session =
//!     Session::restore_from(SessionConfig::new().session_expiry_interval(3600), &store).await?;
//! let mut wire = Vec::new();
//!
//! let clean_start = session.begin_connect(false, Instant::now());
//! assert!(!clean_start);
//! session.on_connack(&ConnAck::default(), Instant::now())?;
//!
//! let done = session.publish(
//!     Publish {
//!         qos: QoS::AtLeastOnce,
//!         topic: "sensors/1".into(),
//!         payload: "21.5".into(),
//!         ..Default::default()
//!     },
//!     Instant::now(),
//! )?;
//! // The driver loop: store first, then send, in order.
//! while let Some(action) = session.poll_action() {
//!     match action {
//!         Action::Store(op) => op.apply(&store).await?,
//!         // (a real driver reports each completed Put: session.on_stored(key))
//!         Action::Send(packet) => wire.push(packet),
//!         Action::Deliver(_message) => {}
//!         _ => {}
//!     }
//! }
//! let Some(Packet::Publish(sent)) = wire.pop() else { unreachable!() };
//! let id = sent.packet_id.ok_or(paho_session::Error::InvalidPacket("no id"))?;
//!
//! // Later the broker acknowledges; the handle resolves with the reason code.
//! session.handle(Packet::PubAck(PubAck::new(id)), Instant::now())?;
//! while let Some(action) = session.poll_action() {
//!     if let Action::Store(op) = action {
//!         op.apply(&store).await?;
//!     }
//! }
//! assert_eq!(done.await?.reason_code(), 0);
//! # Ok(()) }
//! ```
//!
//! # Guarantees and their limits
//!
//! - A [`Completion`] survives reconnects and resolves with the PUBACK/PUBCOMP (or failed
//!   PUBREC), or with an error of one of two classes. **Not done** (publishing again is
//!   safe): the message never reached the store, for example [`Error::SessionClosed`] for one
//!   still waiting for quota when the session was dropped, or the store's error for one
//!   whose write failed. **Stored, outcome unknown** ([`Error::OutcomeUnknown`], tested by
//!   [`Error::is_outcome_unknown`]): the message is in the store (or was sent) and the
//!   session can no longer finish it here; it is resent when the session is reopened from a
//!   durable store, so publishing it again would duplicate it. Dropping a completion never
//!   withdraws a stored message.
//! - When the server forgets the session (Session Present = 0) or it expires, the
//!   [`SessionLostPolicy`] decides: republish every unfinished exchange as a new one (the
//!   default; at QoS 2 a message the broker had already released can then arrive twice), or
//!   hand them back ([`Error::SessionLost`] / [`Error::SessionExpired`] carrying the message,
//!   [`Action::Abandoned`] for restored ones). Nothing is dropped in silence.
//! - Exchanges restored from a store have no completion handle (their caller was in another
//!   process); they are resent and completed all the same.
//! - The time the link dropped is kept in memory only: after a restart the server's Session
//!   Present decides whether the session still exists.
//! - The Message Expiry Interval counts from when a publish was accepted: one that expires
//!   before it is sent is dropped ([`Error::MessageExpired`]); the others are sent, and
//!   resent, with what is left of it; an expired QoS 2 message that was already sent is
//!   resent with 1 s (the server may hold its packet id). For an exchange restored after a
//!   restart the interval counts from the restart (the time of acceptance is not stored).
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod engine;
mod error;
pub mod store;

pub use engine::{
    AckToken, Action, Completion, Delivery, PacketIds, PublishCompleter, PublishCompletion,
    PublishOutcome, Session, SessionConfig, SessionLostPolicy, StoreOp, SubscribeCompletion,
    UnsubscribeCompletion,
};
pub use error::Error;
pub use store::file::{FileStore, FileStoreOptions, StoreIdentity, StoreStats};
pub use store::{EntryKind, Key, MemoryStore, QuarantineReport, Store, StoredEntry, MAX_VALUE_LEN};
