//! [`FileStore`]: a crash-safe store in a directory.
//!
//! # On-disk layout
//!
//! | file | what |
//! |---|---|
//! | `meta` | the identity (server URL and client id) the directory belongs to, checksummed; written once at creation (`meta.tmp`, fsync, rename, directory fsync) |
//! | `log` | an append-only log of checksummed put / delete / reset records, replayed at open |
//! | `log.compact` | a compaction in progress (ignored and overwritten if a crash left it) |
//! | `quarantine-NNNNNN.bin` | bytes set aside: corrupt log stretches and an unparseable end of the log found at open, and entries passed to [`Store::quarantine`] |
//! | `quarantine-NNNNNN.pending` | bytes an open set aside before it succeeded; renamed to `.bin` once it has, and reported by every open until then (so an open that fails after truncating or rewriting the log does not lose the report) |
//! | `lock` | empty; exclusively locked while a store has the directory open, so a second process is refused |
//!
//! Order is the sequence number each put record carries, persisted in the log; file times are
//! never consulted. See `record.rs` for the record format.
//!
//! # Threads
//!
//! Every file operation runs on one dedicated writer thread per open store, never on the
//! caller's (async) thread. Callers enqueue a request and await a runtime-agnostic oneshot
//! reply, so the store works under any executor. Reads ([`Store::get`], [`Store::list`]) are
//! answered from an in-memory index without touching the disk.

mod fs;
mod meta;
mod record;
mod writer;

#[cfg(test)]
mod fault;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::{ready, Future};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_channel::oneshot;

use self::fs::{Fs, RealFs};
use self::writer::{Request, Writer};
use super::{EntryKind, Index, Key, QuarantineReport, Store, StoredEntry};
use crate::Error;

/// Whom a store directory belongs to: a server URL and a client id.
///
/// A session is only meaningful with the server that holds its other half, so a directory
/// created for one identity refuses to open for another ([`Error::IdentityMismatch`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreIdentity {
    server: String,
    client_id: String,
}

impl StoreIdentity {
    /// An identity. Both parts must be non-empty and at most 65,535 bytes (the longest MQTT
    /// string). A server-assigned client id is known only after CONNACK: open the store then.
    pub fn new(server: impl Into<String>, client_id: impl Into<String>) -> Result<Self, Error> {
        let (server, client_id) = (server.into(), client_id.into());
        if server.is_empty() || client_id.is_empty() {
            return Err(Error::InvalidConfig(
                "store identity needs a non-empty server URL and client id",
            ));
        }
        if server.len() > 65_535 || client_id.len() > 65_535 {
            return Err(Error::InvalidConfig(
                "store identity parts must be at most 65,535 bytes",
            ));
        }
        Ok(StoreIdentity { server, client_id })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

/// Tuning for a [`FileStore`], validated by its setters.
#[derive(Clone, Debug)]
pub struct FileStoreOptions {
    compact_min_bytes: u64,
    max_batch: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            compact_min_bytes: 4 << 20,
            max_batch: 1024,
        }
    }
}

impl FileStoreOptions {
    /// Default options: compaction considered once the log passes 4 MiB, batches of up to
    /// 1,024 operations per fsync.
    pub fn new() -> Self {
        Self::default()
    }

    /// The log is rewritten once it is at least this large and more than three quarters of it
    /// is garbage. Must be at least 1.
    pub fn compact_min_bytes(mut self, bytes: u64) -> Result<Self, Error> {
        if bytes == 0 {
            return Err(Error::InvalidConfig("compact_min_bytes must be at least 1"));
        }
        self.compact_min_bytes = bytes;
        Ok(self)
    }

    /// The most operations one fsync may cover. Must be at least 1.
    pub fn max_batch(mut self, ops: usize) -> Result<Self, Error> {
        if ops == 0 {
            return Err(Error::InvalidConfig("max_batch must be at least 1"));
        }
        self.max_batch = ops;
        Ok(self)
    }
}

/// Counters of a [`FileStore`], cheap to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Write operations processed (put, delete, reset, quarantine).
    pub operations: u64,
    /// fsync calls on files and the directory, including those of opening and compaction.
    pub fsyncs: u64,
    /// Group commits: batches of operations written and synced together.
    pub batches: u64,
    /// Log rewrites.
    pub compactions: u64,
}

/// What the handles and the writer thread share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    index: Mutex<Index>,
    quarantined: Mutex<Vec<QuarantineReport>>,
    failed: AtomicBool,
    operations: AtomicU64,
    fsyncs: AtomicU64,
    batches: AtomicU64,
    compactions: AtomicU64,
    on_exit: Mutex<Vec<oneshot::Sender<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that can panic runs under these locks, but if it ever did the data is still a
    // consistent map, so recover rather than propagate the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    fn lock_quarantined(&self) -> MutexGuard<'_, Vec<QuarantineReport>> {
        lock(&self.quarantined)
    }
}

/// Directories open in this process: `false` while in use, `true` once every handle is dropped
/// and the writer is finishing. A second open waits out the latter and refuses the former.
static REGISTRY: Mutex<Option<HashMap<PathBuf, bool>>> = Mutex::new(None);
static REGISTRY_CHANGED: Condvar = Condvar::new();

fn register(dir: &Path) -> Result<(), Error> {
    let mut reg = lock(&REGISTRY);
    loop {
        match reg.get_or_insert_with(HashMap::new).get(dir) {
            None => break,
            Some(false) => return Err(Error::AlreadyOpen(dir.to_owned())),
            Some(true) => {
                reg = REGISTRY_CHANGED
                    .wait(reg)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    reg.get_or_insert_with(HashMap::new)
        .insert(dir.to_owned(), false);
    Ok(())
}

/// Removes the registration when the writer thread ends, however it ends.
struct Unregister(PathBuf);

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Some(reg) = lock(&REGISTRY).as_mut() {
            reg.remove(&self.0);
        }
        REGISTRY_CHANGED.notify_all();
    }
}

/// Marks the directory as closing when the last handle goes.
#[derive(Debug)]
struct Handle {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(reg) = lock(&REGISTRY).as_mut() {
            if let Some(closing) = reg.get_mut(&self.dir) {
                *closing = true;
            }
        }
    }
}

/// The future of a write: waits for the writer thread's answer.
#[derive(Debug)]
struct Pending {
    sent: bool,
    rx: oneshot::Receiver<Result<(), Error>>,
}

impl Future for Pending {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.sent {
            return Poll::Ready(Err(Error::StoreClosed));
        }
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::StoreClosed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A crash-safe [`Store`] in a directory: an append-only, checksummed log with group commit.
///
/// * Every operation whose future returned `Ok` survives a crash of the process or machine,
///   whole; a half-written record is never read back as valid.
/// * Entries are ordered by a persisted sequence number.
/// * The directory is bound to one server URL and client id.
/// * Corrupt parts are quarantined at open and reported by [`Store::quarantined`]; the rest
///   of the session loads.
/// * Concurrent operations share fsyncs; file I/O runs on a dedicated thread.
///
/// Reads ([`Store::get`], [`Store::list`]) come from the in-memory index, which the writer
/// updates only once a batch is durable (just before answering it), so a read never shows an
/// operation that a crash could still undo, nor one that was answered with an error.
///
/// An operation answered with an error never takes effect later: a batch whose append or fsync
/// fails is cut back out of the log before its callers hear of it. If that fails too, they get
/// [`Error::OutcomeUnknown`] instead (the operation may be in the log; a publish must not be
/// repeated). Either way the store then refuses everything ([`Error::StoreFailed`]) until it is
/// reopened.
///
/// Clones are handles to the same open store. At most one store per directory can be open in
/// a process ([`Error::AlreadyOpen`]), and in the whole system: an open store holds an
/// exclusive lock on the directory's `lock` file (`std::fs::File::try_lock`, `flock` on Unix),
/// so opening it from another process fails with [`Error::Locked`]. The lock goes with the
/// process, even on `kill -9`. Where the file system has no locks, the store opens unlocked
/// (with a warning).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), paho_session::Error> {
/// use paho_session::{EntryKind, FileStore, Key, Store, StoreIdentity};
/// # let tmp = tempfile::tempdir().map_err(|e| paho_session::Error::InvalidConfig("tmp"))?;
/// # let dir = tmp.path().join("session");
/// let identity = StoreIdentity::new("mqtt://broker:1883", "sensor-17")?;
/// let store = FileStore::open(&dir, identity).await?;
/// let id = std::num::NonZeroU16::MIN;
/// store.put(Key::Outbound(id), EntryKind::Publish, "encoded PUBLISH".into()).await?;
/// assert_eq!(store.list().await?.len(), 1);
/// store.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    handle: Arc<Handle>,
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir` for `identity`, with default options.
    ///
    /// # Cancel safety
    ///
    /// Opening runs on the store's own thread; dropping the future before it resolves lets
    /// that thread finish opening and then close the store again.
    pub fn open(
        dir: impl AsRef<Path>,
        identity: StoreIdentity,
    ) -> impl Future<Output = Result<FileStore, Error>> + Send + 'static {
        Self::open_with(dir, identity, FileStoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir` for `identity`.
    ///
    /// # Cancel safety
    ///
    /// As [`open`](FileStore::open).
    pub fn open_with(
        dir: impl AsRef<Path>,
        identity: StoreIdentity,
        options: FileStoreOptions,
    ) -> impl Future<Output = Result<FileStore, Error>> + Send + 'static {
        let dir = dir.as_ref().to_owned();
        Self::spawn(
            move || {
                let fs =
                    RealFs::new(dir.clone()).map_err(|e| Error::io("creating the directory", e))?;
                let key = dir
                    .canonicalize()
                    .map_err(|e| Error::io("resolving the directory", e))?;
                Ok((Box::new(fs) as Box<dyn Fs>, key))
            },
            identity,
            options,
        )
    }

    /// Opens over any [`Fs`] (the crash tests' fault-injecting disk).
    pub(crate) fn spawn(
        make_fs: impl FnOnce() -> Result<(Box<dyn Fs>, PathBuf), Error> + Send + 'static,
        identity: StoreIdentity,
        options: FileStoreOptions,
    ) -> impl Future<Output = Result<FileStore, Error>> + Send + 'static {
        let (ready_tx, ready_rx) = oneshot::channel::<Result<FileStore, Error>>();
        let spawned = std::thread::Builder::new()
            .name("paho-session-store".into())
            .spawn(move || {
                let (fs, key) = match make_fs() {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if let Err(e) = register(&key) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let unregister = Unregister(key.clone());
                let shared = Arc::new(Shared::default());
                let mut writer = Writer::new(fs, shared.clone(), options);
                if let Err(e) = writer.open(&identity) {
                    // Release the directory (its lock file with the writer's files, then the
                    // registration) before answering, so that the caller may retry at once
                    // without meeting its own failed attempt as `Locked` or `AlreadyOpen`.
                    drop(writer);
                    drop(unregister);
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let (tx, rx) = mpsc::channel();
                let store = FileStore {
                    handle: Arc::new(Handle {
                        tx,
                        shared: shared.clone(),
                        dir: key,
                    }),
                };
                // If the opener went away the store is dropped here, which ends the loop below.
                let _ = ready_tx.send(Ok(store));
                writer.run(rx);
                drop(unregister);
                for tx in lock(&shared.on_exit).drain(..) {
                    let _ = tx.send(());
                }
            });
        async move {
            spawned.map_err(|e| Error::io("starting the store thread", e))?;
            ready_rx.await.unwrap_or(Err(Error::StoreClosed))
        }
    }

    /// Drops this handle and, if it was the last one, waits until the writer thread has
    /// finished every enqueued operation and released the directory, so that it can be
    /// reopened at once.
    ///
    /// # Cancel safety
    ///
    /// The handle is dropped when `close` is called; dropping the future only stops waiting.
    pub fn close(self) -> impl Future<Output = ()> + Send + 'static {
        let rx = match Arc::try_unwrap(self.handle) {
            Ok(handle) => {
                let (tx, rx) = oneshot::channel();
                lock(&handle.shared.on_exit).push(tx);
                drop(handle);
                Some(rx)
            }
            Err(_) => None,
        };
        async move {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
        }
    }

    /// Counters: operations, fsyncs, batches, compactions.
    pub fn stats(&self) -> StoreStats {
        let s = &self.handle.shared;
        StoreStats {
            operations: s.operations.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            compactions: s.compactions.load(Ordering::Relaxed),
        }
    }

    /// The directory (canonical path).
    pub fn dir(&self) -> &Path {
        &self.handle.dir
    }

    fn submit(&self, make: impl FnOnce(writer::Reply) -> Request) -> Pending {
        let (tx, rx) = oneshot::channel();
        // Enqueued now, at call time: operations apply in call order however they are awaited.
        let sent = self.handle.tx.send(make(tx)).is_ok();
        Pending { sent, rx }
    }

    fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, Error> {
        if self.handle.shared.failed.load(Ordering::Acquire) {
            return Err(Error::StoreFailed);
        }
        Ok(f(&self.handle.shared.lock_index()))
    }
}

impl Store for FileStore {
    /// Cancel safe: the operation is enqueued at call time and completes regardless.
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.submit(|reply| Request::Put {
            key,
            kind,
            value,
            reply,
        })
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, Error>> + Send + 'static {
        ready(self.read(|i| i.get(key)))
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.submit(|reply| Request::Delete { key, reply })
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredEntry>, Error>> + Send + 'static {
        ready(self.read(Index::list))
    }

    fn reset(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.submit(|reply| Request::Reset { reply })
    }

    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.submit(|reply| Request::Quarantine { key, reason, reply })
    }

    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.handle.shared.lock_quarantined().clone()
    }
}
