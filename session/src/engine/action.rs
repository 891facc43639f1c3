//! What the engine asks its driver to do.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use paho_packets::{Packet, PacketId, Publish, QoS};

use crate::store::{EntryKind, Key, Store};
use crate::Error;

/// One thing for the driver to do, taken from [`Session::poll_action`](crate::Session::poll_action).
///
/// Actions must be carried out **in the order they are returned**, and a [`Action::Send`] or
/// [`Action::Deliver`] only after every earlier [`Action::Store`] has completed successfully
/// (that is what makes a message durable before it is on the wire).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Perform this operation on the session's [`Store`] (see [`StoreOp::apply`]).
    Store(StoreOp),
    /// Write this packet to the connection. A PUBLISH carries its full topic name and no topic
    /// alias; the driver may apply an alias for this connection as it writes.
    Send(Packet),
    /// Hand this message to the application.
    Deliver(Delivery),
    /// A message the session gave up on that no caller waits for: an exchange restored from
    /// the store (its caller belonged to an earlier process) when the session was lost under
    /// [`SessionLostPolicy::Fail`](crate::SessionLostPolicy::Fail). The store no longer holds
    /// it; the driver hands it to the application, which decides whether to publish it again.
    /// It carries its full topic, no packet id and DUP 0.
    Abandoned(Publish),
}

/// A store operation requested by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// [`Store::put`].
    Put {
        /// The key.
        key: Key,
        /// What the value is.
        kind: EntryKind,
        /// The encoded packet.
        value: Bytes,
    },
    /// [`Store::delete`].
    Delete(Key),
    /// [`Store::reset`].
    Reset,
    /// [`Store::quarantine`].
    Quarantine {
        /// The unusable entry.
        key: Key,
        /// Why.
        reason: String,
    },
}

impl StoreOp {
    /// Performs the operation on `store`. Like every [`Store`] method, it is enqueued when this
    /// is called, so a driver may apply several operations back to back and await them
    /// together (sharing one fsync) as long as it sends nothing before they complete.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not cancel the operation, only the wait for its outcome.
    pub fn apply<S: Store>(
        self,
        store: &S,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let fut: std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> = match self {
            StoreOp::Put { key, kind, value } => Box::pin(store.put(key, kind, value)),
            StoreOp::Delete(key) => Box::pin(store.delete(key)),
            StoreOp::Reset => Box::pin(store.reset()),
            StoreOp::Quarantine { key, reason } => Box::pin(store.quarantine(key, reason)),
        };
        fut
    }

    /// Performs the operation on a store that [completes at once](Store::is_immediate) and
    /// returns its outcome, polling the store's future in place: nothing is boxed or kept.
    ///
    /// If the future is not ready after all (the store broke its `is_immediate` promise), the
    /// operation was still enqueued and may take effect, so this answers
    /// [`Error::OutcomeUnknown`].
    pub fn apply_now<S: Store>(self, store: &S) -> Result<(), Error> {
        match self {
            StoreOp::Put { key, kind, value } => poll_once(store.put(key, kind, value)),
            StoreOp::Delete(key) => poll_once(store.delete(key)),
            StoreOp::Reset => poll_once(store.reset()),
            StoreOp::Quarantine { key, reason } => poll_once(store.quarantine(key, reason)),
        }
    }
}

fn poll_once(fut: impl Future<Output = Result<(), Error>>) -> Result<(), Error> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => {
            tracing::error!("a store that claims to complete at once returned a pending future");
            Err(Error::outcome_unknown(Error::StoreFailed))
        }
    }
}

/// A message for the application.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    publish: Publish,
    ack: Option<AckToken>,
}

impl Delivery {
    pub(crate) fn new(publish: Publish, ack: Option<AckToken>) -> Self {
        Delivery { publish, ack }
    }

    /// The message as received (with a topic alias, if the driver did not resolve it first).
    pub fn publish(&self) -> &Publish {
        &self.publish
    }

    /// Takes the message out.
    pub fn into_publish(self) -> Publish {
        self.publish
    }

    /// The token to pass to [`Session::ack`](crate::Session::ack) once the application is
    /// done with a QoS 1 or 2 message (`None` for QoS 0).
    pub fn ack_token(&self) -> Option<AckToken> {
        self.ack
    }

    /// Splits the delivery into the message and its ack token.
    pub fn into_parts(self) -> (Publish, Option<AckToken>) {
        (self.publish, self.ack)
    }
}

/// Identifies a received QoS 1/2 message for [`Session::ack`](crate::Session::ack).
///
/// Tokens are bound to the connection the message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) packet_id: PacketId,
    pub(crate) qos: QoS,
}

impl AckToken {
    /// The message's packet identifier.
    pub fn packet_id(&self) -> PacketId {
        self.packet_id
    }

    /// The message's QoS (1 or 2).
    pub fn qos(&self) -> QoS {
        self.qos
    }
}
