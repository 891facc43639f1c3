//! Test stores: a memory store that fails on command, or holds its puts until released.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use paho::session::{
    EntryKind, Error as SessionError, Key, MemoryStore, QuarantineReport, Store, StoredEntry,
};
use tokio::sync::Semaphore;

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send>>;

/// A memory store whose puts start failing on command: the `n`th put from then on fails
/// ("not done": nothing applied), and every operation after it too (sticky, like a file
/// store after a failed fsync), or, with `unknown`, it is applied and then reported as
/// outcome unknown.
#[derive(Debug, Clone)]
pub struct Flaky {
    pub inner: MemoryStore,
    /// Puts wait for a permit when `gated` is set.
    gate: Arc<Semaphore>,
    gated: Arc<AtomicBool>,
    puts_left: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    unknown: Arc<AtomicBool>,
    /// Whether it tells the driver that its operations complete at once (while puts are not
    /// held), so that the driver applies them in place instead of keeping their futures.
    immediate: bool,
}

impl Default for Flaky {
    fn default() -> Self {
        Flaky {
            inner: MemoryStore::new(),
            gate: Arc::new(Semaphore::new(0)),
            gated: Arc::new(AtomicBool::new(false)),
            puts_left: Arc::default(),
            armed: Arc::default(),
            failed: Arc::default(),
            unknown: Arc::default(),
            immediate: false,
        }
    }
}

impl Flaky {
    /// A store the driver applies in place ([`Store::is_immediate`]) until its puts are held,
    /// as it does the memory store; the default one has its futures kept and awaited.
    pub fn immediate() -> Self {
        Flaky {
            immediate: true,
            ..Flaky::default()
        }
    }

    /// From now on every put waits until [`release`](Flaky::release) lets it through (the
    /// put is applied when it is let through, as a slow fsync would make it durable).
    pub fn hold_puts(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    /// Lets `n` held puts through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn fail_after_puts(&self, n: usize, unknown: bool) {
        self.puts_left.store(n, Ordering::SeqCst);
        self.unknown.store(unknown, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Store for Flaky {
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let fut: Fut<()> = if self.failed() {
            Box::pin(async { Err(SessionError::StoreFailed) })
        } else if self.armed.load(Ordering::SeqCst)
            && self.puts_left.fetch_sub(1, Ordering::SeqCst) == 0
        {
            self.failed.store(true, Ordering::SeqCst);
            if self.unknown.load(Ordering::SeqCst) {
                let applied = self.inner.put(key, kind, value);
                Box::pin(async move {
                    applied.await?;
                    Err(SessionError::outcome_unknown(SessionError::StoreFailed))
                })
            } else {
                Box::pin(async { Err(SessionError::StoreFailed) })
            }
        } else if self.gated.load(Ordering::SeqCst) {
            let gate = Arc::clone(&self.gate);
            let inner = self.inner.clone();
            Box::pin(async move {
                gate.acquire().await.unwrap().forget();
                inner.put(key, kind, value).await
            })
        } else {
            Box::pin(self.inner.put(key, kind, value))
        };
        fut
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.get(key)
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let fut: Fut<()> = if self.failed() {
            Box::pin(async { Err(SessionError::StoreFailed) })
        } else {
            Box::pin(self.inner.delete(key))
        };
        fut
    }

    fn list(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.list()
    }

    fn reset(&self) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.inner.reset()
    }

    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.inner.quarantine(key, reason)
    }

    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.inner.quarantined()
    }

    fn is_immediate(&self) -> bool {
        // Its futures are ready at once unless puts are held.
        self.immediate && !self.gated.load(Ordering::SeqCst)
    }
}
