//! Completion handles: runtime-agnostic futures that resolve when an exchange ends.
//!
//! One shared slot per exchange carries both of a publish's events (stored, then the
//! outcome), so a publish costs one allocation here, not one per event.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

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

/// What the two halves of a completion share.
#[derive(Debug)]
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

#[derive(Debug)]
struct SlotState<T> {
    outcome: Option<Result<T, Error>>,
    /// The exchange's first store write completed.
    stored: bool,
    /// The sending half is gone: with `outcome` still `None`, this error is the outcome.
    dropped: Option<Error>,
    /// The task waiting on the receiving half (one owner polls both of its futures).
    waker: Option<Waker>,
}

impl<T> Slot<T> {
    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        // Every update is a few field writes without user code: a poisoned lock is still
        // consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> SlotState<T> {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// The outcome, if the exchange has ended (or its sending half was dropped).
    fn take(&mut self) -> Option<Result<T, Error>> {
        self.outcome.take().or_else(|| self.dropped.take().map(Err))
    }
}

/// A future that resolves when an exchange started on the [`Session`](crate::Session) ends:
/// with the acknowledgement, or a typed error ([`Error::SessionLost`],
/// [`Error::SessionExpired`], [`Error::ConnectionLost`] for SUBSCRIBE/UNSUBSCRIBE,
/// [`Error::SessionClosed`] when the session is dropped).
///
/// It survives reconnects: the engine keeps the sending half with the stored exchange. It is
/// runtime-agnostic (a shared slot with a waker), `Send`, and can be moved to any task.
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
    /// `None` once the outcome was taken, or for one made ready.
    slot: Option<Arc<Slot<T>>>,
    /// Whether it reports a "stored" stage (publishes of QoS 1/2) that has not been seen yet.
    stored_pending: bool,
    /// An outcome taken early (by [`PublishCompletion::stored`]) or given at construction,
    /// returned by the next poll.
    early: Option<Result<T, Error>>,
}

/// The completion of a publish.
pub type PublishCompletion = Completion<PublishOutcome>;
/// The completion of a subscribe: the SUBACK with one reason code per filter.
pub type SubscribeCompletion = Completion<SubAck>;
/// The completion of an unsubscribe: the UNSUBACK with one reason code per filter.
pub type UnsubscribeCompletion = Completion<UnsubAck>;

impl<T> Completion<T> {
    fn make(stored_stage: bool, dropped: Error) -> (Completer<T>, Completion<T>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                outcome: None,
                stored: false,
                dropped: None,
                waker: None,
            }),
        });
        (
            Completer {
                slot: Some(Arc::clone(&slot)),
                dropped,
            },
            Completion {
                slot: Some(slot),
                stored_pending: stored_stage,
                early: None,
            },
        )
    }

    pub(crate) fn pair() -> (Completer<T>, Completion<T>) {
        Self::make(false, Error::SessionClosed)
    }

    /// A pair whose completion can also report the "stored" stage.
    pub(crate) fn pair_with_stored() -> (Completer<T>, Completion<T>) {
        Self::make(true, Error::SessionClosed)
    }

    /// A completion that is already resolved (allocates nothing).
    pub(crate) fn ready(value: Result<T, Error>) -> Completion<T> {
        Completion {
            slot: None,
            stored_pending: false,
            early: Some(value),
        }
    }

    /// The outcome if the exchange has already ended, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<T, Error>> {
        if let Some(v) = self.early.take() {
            return Some(v);
        }
        let Some(slot) = &self.slot else {
            // Taken before.
            return Some(Err(Error::SessionClosed));
        };
        let v = slot.lock().take();
        if v.is_some() {
            self.slot = None;
        }
        v
    }
}

// Nothing in it is ever pinned (`early` is moved out by value).
impl<T> Unpin for Completion<T> {}

impl<T> Future for Completion<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(v) = self.early.take() {
            return Poll::Ready(v);
        }
        let Some(slot) = &self.slot else {
            return Poll::Ready(Err(Error::SessionClosed));
        };
        let mut st = slot.lock();
        match st.take() {
            Some(v) => {
                drop(st);
                self.slot = None;
                Poll::Ready(v)
            }
            None => {
                st.register(cx);
                Poll::Pending
            }
        }
    }
}

impl Completion<PublishOutcome> {
    /// A publish completion and its sending half, made before the message is handed to a
    /// session: give the [`PublishCompleter`] to
    /// [`Session::publish_with`](crate::Session::publish_with) (a driver does, on its own
    /// task) and keep the completion. It reports the "stored" stage like one from
    /// [`Session::publish`](crate::Session::publish). If the completer is dropped before it
    /// reached a session, the completion fails with [`Error::NotHandedOver`] ("not done").
    pub fn pair_for_handover() -> (PublishCompleter, PublishCompletion) {
        let (c, completion) = Self::make(true, Error::NotHandedOver);
        (PublishCompleter(c), completion)
    }

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
        poll_fn(|cx| self.poll_stored(cx)).await
    }

    fn poll_stored(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // An exchange that ended before it was stored says so every time it is asked (a
        // caller that retries `stored` after an error must not hear `Ok`).
        if let Some(v) = &self.early {
            return Poll::Ready(v.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        if !self.stored_pending {
            return Poll::Ready(Ok(()));
        }
        let Some(slot) = &self.slot else {
            self.stored_pending = false;
            return Poll::Ready(Ok(()));
        };
        let mut st = slot.lock();
        if st.stored {
            drop(st);
            self.stored_pending = false;
            return Poll::Ready(Ok(()));
        }
        match st.take() {
            // Ended without being stored (or the engine never said): keep the outcome for
            // the completion's own poll.
            Some(v) => {
                drop(st);
                let r = v.as_ref().map(|_| ()).map_err(Clone::clone);
                self.slot = None;
                self.early = Some(v);
                Poll::Ready(r)
            }
            None => {
                st.register(cx);
                Poll::Pending
            }
        }
    }
}

/// The sending half of a [`PublishCompletion`] made by
/// [`PublishCompletion::pair_for_handover`], to give to
/// [`Session::publish_with`](crate::Session::publish_with).
#[derive(Debug)]
pub struct PublishCompleter(pub(crate) Completer<PublishOutcome>);

/// The engine's half of a [`Completion`].
#[derive(Debug)]
pub(crate) struct Completer<T> {
    /// `None` once completed.
    slot: Option<Arc<Slot<T>>>,
    /// What the completion hears if this is dropped without completing.
    dropped: Error,
}

impl<T> Completer<T> {
    /// Reports the "stored" stage (once; later calls do nothing).
    pub(crate) fn stored(&mut self) {
        if let Some(slot) = &self.slot {
            let mut st = slot.lock();
            if !st.stored {
                st.stored = true;
                st.wake();
            }
        }
    }

    pub(crate) fn complete(mut self, value: Result<T, Error>) {
        // The caller may have dropped its handle; the exchange still ended, nothing to report.
        if let Some(slot) = self.slot.take() {
            let mut st = slot.lock();
            st.outcome = Some(value);
            st.wake();
        }
    }

    /// Keeps the caller's side counted as present while the guard lives (see
    /// `Session::publish_with`).
    pub(crate) fn hold(&self) -> Option<Arc<Slot<T>>> {
        self.slot.clone()
    }

    /// Whether the caller dropped its handle.
    pub(crate) fn is_abandoned(&self) -> bool {
        // The completion holds the only other reference while it may still be polled.
        self.slot.as_ref().is_none_or(|s| Arc::strong_count(s) == 1)
    }

    /// From now on, being dropped tells the caller the session was closed (the message has
    /// reached the session).
    pub(crate) fn in_session(&mut self) {
        self.dropped = Error::SessionClosed;
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut st = slot.lock();
            st.dropped = Some(self.dropped.clone());
            st.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_now<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = std::pin::pin!(f);
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_completer_dropped_before_the_session_took_it_is_not_done_every_time() {
        let (c, mut completion) = PublishCompletion::pair_for_handover();
        assert!(poll_now(completion.stored()).is_pending());
        drop(c);
        for _ in 0..2 {
            assert!(matches!(
                poll_now(completion.stored()),
                Poll::Ready(Err(Error::NotHandedOver))
            ));
        }
        assert!(matches!(
            poll_now(&mut completion),
            Poll::Ready(Err(Error::NotHandedOver))
        ));
    }

    #[test]
    fn stored_then_outcome_and_a_dropped_session_completer() {
        let (mut c, mut completion) = Completion::<PublishOutcome>::pair_with_stored();
        assert!(!c.is_abandoned());
        c.stored();
        assert!(matches!(poll_now(completion.stored()), Poll::Ready(Ok(()))));
        assert!(poll_now(&mut completion).is_pending());
        c.complete(Ok(PublishOutcome::Sent));
        assert!(matches!(
            poll_now(&mut completion),
            Poll::Ready(Ok(PublishOutcome::Sent))
        ));

        let (mut c, completion) = PublishCompletion::pair_for_handover();
        c.0.in_session();
        drop(completion);
        assert!(c.0.is_abandoned());
        let (c, mut completion) = PublishCompletion::pair_for_handover();
        let mut c = c.0;
        c.in_session();
        drop(c);
        assert!(matches!(
            completion.try_outcome(),
            Some(Err(Error::SessionClosed))
        ));
    }
}
