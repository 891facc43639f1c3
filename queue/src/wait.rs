//! Runtime-agnostic waiting: a set of wakers and a future that re-checks a condition under the
//! queue's lock each time it is woken.
//!
//! Written here rather than taken from an async runtime so that the queue works under any
//! executor (the brief keeps tokio out of the core crates).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Locks a mutex, recovering the data if a previous holder panicked.
///
/// No code in this crate panics while holding a queue lock, and the state stays consistent
/// between statements, so continuing is sound and better than cascading the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakers of tasks waiting for one kind of event, keyed so a dropped waiter can deregister.
///
/// Kept in arrival order, and a waiter stays in the set until it completes or is dropped
/// (waking does not remove it), so the set also tells who came first: see [`WaitFor::fair`].
#[derive(Debug, Default)]
pub(crate) struct WakerSet {
    next_id: u64,
    wakers: Vec<(u64, Waker)>,
}

impl WakerSet {
    /// Registers (or refreshes) the waker of the waiter whose id is in `slot`.
    pub(crate) fn register(&mut self, slot: &mut Option<u64>, waker: &Waker) {
        if let Some(id) = *slot {
            if let Some((_, w)) = self.wakers.iter_mut().find(|(i, _)| *i == id) {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
                return;
            }
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.wakers.push((id, waker.clone()));
        *slot = Some(id);
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.wakers.retain(|(i, _)| *i != id);
    }

    /// Wakes every waiter. Waiters re-check their condition, so spurious wake-ups are harmless;
    /// waking all keeps the logic simple and the sets are small (one per blocked task).
    pub(crate) fn wake_all(&mut self) {
        for (_, w) in &self.wakers {
            w.wake_by_ref();
        }
    }

    /// Whether no waiter registered before the one whose id is `id` (`None`: not registered,
    /// so it would come last) is still waiting.
    fn is_first(&self, id: Option<u64>) -> bool {
        match self.wakers.first() {
            None => true,
            Some((first, _)) => Some(*first) == id,
        }
    }
}

/// A future that locks `state`, runs `check`, and either completes with its value or parks in
/// the waker set chosen by `set`. Deregisters on drop, so cancelling it leaves nothing behind.
///
/// `check` also gets whether this waiter is first in line (no earlier waiter in the set is still
/// waiting); a [fair](WaitFor::fair) waiter uses it to take its turn in arrival order.
pub(crate) struct WaitFor<'a, S, T, F>
where
    F: FnMut(&mut S, bool) -> Option<T>,
{
    state: &'a Mutex<S>,
    set: fn(&mut S) -> &mut WakerSet,
    check: F,
    id: Option<u64>,
    fair: bool,
}

impl<'a, S, T, F> WaitFor<'a, S, T, F>
where
    F: FnMut(&mut S, bool) -> Option<T>,
{
    pub(crate) fn new(state: &'a Mutex<S>, set: fn(&mut S) -> &mut WakerSet, check: F) -> Self {
        WaitFor {
            state,
            set,
            check,
            id: None,
            fair: false,
        }
    }

    /// A waiter whose `check` only succeeds when it is first in line. When it completes or is
    /// dropped it wakes the waiters behind it, since the next one's turn has come (without that,
    /// room left by a cancelled producer would wait for an unrelated event).
    pub(crate) fn fair(state: &'a Mutex<S>, set: fn(&mut S) -> &mut WakerSet, check: F) -> Self {
        let mut w = WaitFor::new(state, set, check);
        w.fair = true;
        w
    }
}

impl<S, T, F> Future for WaitFor<'_, S, T, F>
where
    F: FnMut(&mut S, bool) -> Option<T> + Unpin,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let mut guard = lock(this.state);
        let first = (this.set)(&mut guard).is_first(this.id);
        if let Some(v) = (this.check)(&mut guard, first) {
            let set = (this.set)(&mut guard);
            if let Some(id) = this.id.take() {
                set.remove(id);
            }
            if this.fair {
                set.wake_all();
            }
            return Poll::Ready(v);
        }
        (this.set)(&mut guard).register(&mut this.id, cx.waker());
        Poll::Pending
    }
}

impl<S, T, F> Drop for WaitFor<'_, S, T, F>
where
    F: FnMut(&mut S, bool) -> Option<T>,
{
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut guard = lock(self.state);
            let set = (self.set)(&mut guard);
            set.remove(id);
            if self.fair {
                set.wake_all();
            }
        }
    }
}

impl<S, T, F> std::fmt::Debug for WaitFor<'_, S, T, F>
where
    F: FnMut(&mut S, bool) -> Option<T>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitFor").field("id", &self.id).finish()
    }
}
