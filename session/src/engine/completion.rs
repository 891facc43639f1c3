//! Completion handles: runtime-agnostic futures that resolve when an exchange ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;
use paho_packets::{PubAck, PubComp, PubRec, SubAck, UnsubAck};

use crate::Error;

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// A QoS 0 message was handed to the driver to write; there is no acknowledgement.
    Sent,
    /// The PUBACK that ended a QoS 1 exchange (its reason code may be a failure).
    PubAck(PubAck),
    /// A PUBREC with a failure reason code (0x80 or above), which ends a QoS 2 exchange early.
    PubRec(PubRec),
    /// The PUBCOMP that ended a QoS 2 exchange (its reason code may be 0x92, not found, which
    /// still means the message was accepted: see [`is_success`](PublishOutcome::is_success)).
    PubComp(PubComp),
}

impl PublishOutcome {
    /// The reason code of the acknowledgement (0 for [`PublishOutcome::Sent`]).
    pub fn reason_code(&self) -> u8 {
        match self {
            PublishOutcome::Sent => 0,
            PublishOutcome::PubAck(p) => p.reason_code.as_u8(),
            PublishOutcome::PubRec(p) => p.reason_code.as_u8(),
            PublishOutcome::PubComp(p) => p.reason_code.as_u8(),
        }
    }

    /// Whether the server accepted the message: a PUBACK below 0x80, or a PUBCOMP whatever
    /// its reason code.
    ///
    /// A QoS 2 exchange reaches PUBCOMP only after a successful PUBREC, which is where the
    /// server takes the message on. PUBCOMP 0x92 (Packet Identifier not found) answers a PUBREL
    /// resent after a reconnect when the server already completed the exchange and its
    /// PUBCOMP was lost with the old connection: the message was accepted, and reporting a
    /// failure would invite the application to publish it a second time.
    pub fn is_success(&self) -> bool {
        match self {
            PublishOutcome::PubComp(_) => true,
            _ => self.reason_code() < 0x80,
        }
    }
}

/// A future that resolves when an exchange started on the [`Session`](crate::Session) ends:
/// with the acknowledgement, or a typed error ([`Error::SessionLost`],
/// [`Error::SessionExpired`], [`Error::ConnectionLost`] for SUBSCRIBE/UNSUBSCRIBE,
/// [`Error::SessionClosed`] when the session is dropped).
///
/// It survives reconnects: the engine keeps the sending half with the stored exchange. It is
/// runtime-agnostic (a oneshot channel), `Send`, and can be moved to any task.
///
/// # Cancel safety
///
/// Dropping a completion does not withdraw the exchange once it has been assigned a packet id
/// and stored: it is still sent, resent and acknowledged, and its id is freed only then. A
/// publish still waiting for send quota when its completion is dropped is withdrawn (it was
/// never stored or sent).
#[derive(Debug)]
#[must_use = "a completion does nothing unless awaited (dropping it does not cancel the exchange)"]
pub struct Completion<T> {
    rx: oneshot::Receiver<Result<T, Error>>,
    /// Fired once the exchange's first store write completed (publishes of QoS 1/2 only).
    stored: Option<oneshot::Receiver<()>>,
    /// An outcome taken early by [`PublishCompletion::stored`], returned by the next poll.
    early: Option<Result<T, Error>>,
}

/// The completion of a publish.
pub type PublishCompletion = Completion<PublishOutcome>;
/// The completion of a subscribe: the SUBACK with one reason code per filter.
pub type SubscribeCompletion = Completion<SubAck>;
/// The completion of an unsubscribe: the UNSUBACK with one reason code per filter.
pub type UnsubscribeCompletion = Completion<UnsubAck>;

impl<T> Completion<T> {
    pub(crate) fn pair() -> (Completer<T>, Completion<T>) {
        let (tx, rx) = oneshot::channel();
        (
            Completer { tx, stored: None },
            Completion {
                rx,
                stored: None,
                early: None,
            },
        )
    }

    /// A pair whose completion can also report the "stored" stage.
    pub(crate) fn pair_with_stored() -> (Completer<T>, Completion<T>) {
        let (tx, rx) = oneshot::channel();
        let (stx, srx) = oneshot::channel();
        (
            Completer {
                tx,
                stored: Some(stx),
            },
            Completion {
                rx,
                stored: Some(srx),
                early: None,
            },
        )
    }

    pub(crate) fn ready(value: Result<T, Error>) -> Completion<T> {
        let (tx, rx) = Self::pair();
        tx.complete(value);
        rx
    }

    /// The outcome if the exchange has already ended, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<T, Error>> {
        if let Some(v) = self.early.take() {
            return Some(v);
        }
        match self.rx.try_recv() {
            Ok(Some(v)) => Some(v),
            Ok(None) => None,
            Err(_) => Some(Err(Error::SessionClosed)),
        }
    }
}

// Nothing in it is ever pinned (the receivers are `Unpin`; `early` is moved out by value).
impl<T> Unpin for Completion<T> {}

impl<T> Future for Completion<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(v) = self.early.take() {
            return Poll::Ready(v);
        }
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(v)) => Poll::Ready(v),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::SessionClosed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Completion<PublishOutcome> {
    /// Waits until the message is **durable in the session store** (the first stage of a
    /// QoS 1/2 publish: its PUBLISH is written to the store before it goes on the wire), and
    /// returns `Ok(())`; the completion itself still resolves later with the acknowledgement.
    /// A QoS 0 message is never stored, and returns `Ok(())` at once.
    ///
    /// If the exchange ends before it was stored (a capability check failed when it left the
    /// queue, the session was dropped, the store failed before the write), this returns that
    /// outcome's error, which a later poll of the completion returns again. What "durable"
    /// means depends on the store: a [`FileStore`](crate::FileStore) has fsynced it.
    ///
    /// This is what a durable outbox waits for before it removes a message from its queue.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping this future loses nothing; call it again.
    pub async fn stored(&mut self) -> Result<(), Error> {
        let Some(rx) = self.stored.as_mut() else {
            return Ok(());
        };
        if rx.await.is_ok() {
            self.stored = None;
            return Ok(());
        }
        // The engine let go of the stored signal without firing it: the exchange ended (or
        // the session went) first. Keep the outcome for the completion's own poll.
        self.stored = None;
        let outcome = match self.early.take() {
            Some(v) => v,
            None => match (&mut self.rx).await {
                Ok(v) => v,
                Err(_) => Err(Error::SessionClosed),
            },
        };
        let r = match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        self.early = Some(outcome);
        r
    }
}

/// The engine's half of a [`Completion`].
#[derive(Debug)]
pub(crate) struct Completer<T> {
    tx: oneshot::Sender<Result<T, Error>>,
    stored: Option<oneshot::Sender<()>>,
}

impl<T> Completer<T> {
    /// Reports the "stored" stage (once; later calls do nothing).
    pub(crate) fn stored(&mut self) {
        if let Some(s) = self.stored.take() {
            let _ = s.send(());
        }
    }

    pub(crate) fn complete(self, value: Result<T, Error>) {
        // The caller may have dropped its handle; the exchange still ended, nothing to report.
        let _ = self.tx.send(value);
    }

    /// Whether the caller dropped its handle.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.tx.is_canceled()
    }
}
