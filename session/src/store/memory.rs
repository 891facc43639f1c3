//! [`MemoryStore`]: a store that lives as long as the process.

use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{check_put, EntryKind, Index, Key, QuarantineReport, Store, StoredEntry};
use crate::Error;

/// A [`Store`] in memory: a session that survives reconnects but not the process.
///
/// Clones share the same entries. Every operation completes when it is called; the returned
/// futures are already ready.
///
/// ```
/// use paho_session::{EntryKind, Key, MemoryStore, Store};
/// # use std::num::NonZeroU16;
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// let store = MemoryStore::new();
/// let id = NonZeroU16::new(7).ok_or("zero")?;
/// block_on(store.put(Key::Outbound(id), EntryKind::Publish, "packet".into()))?;
/// assert_eq!(block_on(store.list())?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    index: Index,
    quarantined: Vec<QuarantineReport>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the index half-updated (every update is
        // a few map operations without user code), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let r = check_put(key, kind, &value).map(|()| {
            self.lock().index.put(key, kind, value);
        });
        ready(r)
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, Error>> + Send + 'static {
        ready(Ok(self.lock().index.get(key)))
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.lock().index.delete(key);
        ready(Ok(()))
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredEntry>, Error>> + Send + 'static {
        ready(Ok(self.lock().index.list()))
    }

    fn reset(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.lock().index.reset();
        ready(Ok(()))
    }

    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let mut inner = self.lock();
        if let Some(e) = inner.index.delete(key) {
            let len = e.value().len();
            inner
                .quarantined
                .push(QuarantineReport::new(Some(key), reason, None, len));
        }
        ready(Ok(()))
    }

    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.lock().quarantined.clone()
    }

    fn is_immediate(&self) -> bool {
        true
    }
}
