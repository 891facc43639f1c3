//! [`FileQueue`]: the durable queue over a directory.
//!
//! The async-facing half lives here; all file I/O happens on the queue's own thread
//! (`worker`), which this half talks to through a channel. Shared state that `peek`, `len` and
//! the waiting futures need (counts, the loaded head, wakers, reports) sits behind one mutex
//! that the worker updates after each committed batch.

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod fault;
mod format;
mod fs;
mod guard;
mod reader;
mod recovery;
mod scan;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;

use crate::entry::{
    from_millis, to_millis, Enqueued, Entry, Finish, QuarantineReason, Report, Reports, Stats,
};
use crate::error::{Error, Result};
use crate::limits::{Limits, Overflow};
use crate::wait::{lock, WaitFor, WakerSet};
use crate::Queue;
use futures_channel::oneshot;

use format::{decode_file_header, Kind, QUARANTINE_MAGIC, RECORD_HEADER_LEN, UNKNOWN_SEQ};
use worker::Worker;

/// Name of the quarantine file inside the queue directory.
pub(crate) const QUARANTINE_FILE: &str = "quarantine.q";

const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

/// Settings the worker needs.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) dir: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) segment_bytes: u64,
    pub(crate) sync_removals: bool,
    /// Unit tests only: make the fsync after this many successful ones fail.
    #[cfg(test)]
    pub(crate) fail_fsync_after: Option<u64>,
    /// Unit tests only: every fsync first takes (and releases) this lock.
    #[cfg(test)]
    pub(crate) pause_fsync: Option<Arc<Mutex<()>>>,
    /// Unit tests only: the I/O thread panics in its first batch.
    #[cfg(test)]
    pub(crate) panic_in_batch: bool,
    /// Unit tests only: a simulated disk instead of the real file system.
    #[cfg(test)]
    pub(crate) fault_fs: Option<fault::FaultFs>,
}

/// Requests from async callers to the I/O thread.
#[derive(Debug)]
pub(crate) enum Command {
    Append {
        payload: Bytes,
        time_ms: u64,
        /// The caller reserved room under `Block`/`Reject`; release it when answering.
        reserved: bool,
        reply: oneshot::Sender<Result<Enqueued>>,
    },
    Finish {
        seq: u64,
        quarantine: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Unit tests only: commands that must form one batch (or part of one).
    #[cfg(test)]
    Many(Vec<Command>),
}

/// What async callers can see without asking the I/O thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Committed (durable) entries and their payload bytes.
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    /// Room reserved by enqueues in flight (`Block` and `Reject` policies).
    pub(crate) reserved_entries: u64,
    pub(crate) reserved_bytes: u64,
    /// The loaded head entry: what `peek` returns.
    pub(crate) head: Option<Entry>,
    pub(crate) failed: Option<String>,
    pub(crate) non_empty: WakerSet,
    pub(crate) space: WakerSet,
    pub(crate) reports: Reports,
    pub(crate) stats: Stats,
}

impl Shared {
    /// The I/O thread is gone without closing the queue (it panicked): nothing will ever update
    /// this state again, so fail the queue and wake every waiter rather than leave them waiting.
    fn io_thread_gone(&mut self) {
        if self.failed.is_none() {
            self.failed = Some("the queue's I/O thread stopped unexpectedly".into());
        }
        self.head = None;
        self.non_empty.wake_all();
        self.space.wake_all();
    }

    fn non_empty(&mut self) -> &mut WakerSet {
        &mut self.non_empty
    }

    fn space(&mut self) -> &mut WakerSet {
        &mut self.space
    }
}

/// A durable FIFO queue stored in a directory. See the [crate docs](crate) for an example and
/// `docs/ARCHITECTURE.md` for the on-disk format.
///
/// - An enqueue returns after its record is fsync'd; concurrent enqueues share one fsync.
/// - Order is the persisted sequence number. Peek is O(1): the head entry is kept in memory,
///   loaded by the I/O thread whenever the head changes. Memory use is about 40 bytes per
///   queued entry (an index of where each record is) plus the head's payload.
/// - Segments are deleted once every entry in them is consumed.
/// - Opening reads and checks every record once; damage is quarantined and reported via
///   [`Queue::take_reports`], never returned as data.
/// - An operation answered with an error never takes effect later: a batch whose write or
///   fsync fails is cut back out of the files first. If that fails too, the answer is
///   [`Error::OutcomeUnknown`]. After either, the queue has failed until reopened.
/// - One opener at a time: the directory is locked (a file named `lock` in it) while the queue
///   is open, so a second open, in this process or another, fails with [`Error::AlreadyOpen`].
///
/// Dropping the queue stops its I/O thread and waits for it (at most one batch, plus an fsync
/// of lazy removals); in async code prefer [`FileQueue::close`].
#[derive(Debug)]
pub struct FileQueue {
    shared: Arc<Mutex<Shared>>,
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    limits: Limits,
    dir: PathBuf,
}

/// Builder for [`FileQueue`]; made by [`FileQueue::builder`].
#[derive(Debug, Clone)]
pub struct FileQueueBuilder {
    cfg: Config,
}

impl FileQueueBuilder {
    /// Entry and byte limits and the overflow policy (default: unbounded).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Roll to a new segment file when the current one would exceed this size (default
    /// 64 MiB; 4 KiB ..= 1 GiB). Smaller segments reclaim space sooner; larger ones mean fewer
    /// files. An entry larger than this gets a segment of its own.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.cfg.segment_bytes = bytes;
        self
    }

    /// Whether [`Queue::finish`] with `Remove`/`Quarantine` waits for an fsync (default `true`).
    ///
    /// With `false`, removals are written at once but made durable by the next enqueue's fsync
    /// or on close: a crash may then bring recently removed entries back (delivered twice),
    /// never lose one. This saves one fsync per dequeued entry.
    pub fn sync_removals(mut self, sync: bool) -> Self {
        self.cfg.sync_removals = sync;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.cfg.segment_bytes) {
            return Err(Error::Config("segment_bytes must be in 4 KiB ..= 1 GiB"));
        }
        Ok(())
    }

    /// Opens (creating if needed) the queue. Recovery runs on the queue's I/O thread, so this
    /// does not block the executor.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings; [`Error::Io`] if the directory cannot be read or
    /// repaired.
    ///
    /// # Cancel safety
    /// Dropping the future after the first poll drops the half-open queue, which waits for
    /// recovery to finish on the calling thread.
    pub async fn open(self) -> Result<FileQueue> {
        let (tx, rx) = oneshot::channel();
        let queue = self.start(move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(queue)
    }

    /// Like [`open`](FileQueueBuilder::open), blocking the calling thread until recovery is done.
    /// For use outside async code.
    ///
    /// # Errors
    /// As for [`open`](FileQueueBuilder::open).
    pub fn open_blocking(self) -> Result<FileQueue> {
        // A plain channel: this caller blocks its thread anyway.
        let (tx, rx) = mpsc::sync_channel(1);
        let queue = self.start(move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| Error::Closed)??;
        Ok(queue)
    }

    /// Spawns the I/O thread, which recovers the directory and then calls `ready` with the
    /// outcome (having released the directory first if recovery failed).
    fn start(self, ready: impl FnOnce(Result<()>) + Send + 'static) -> Result<FileQueue> {
        self.validate()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::channel();
        let cfg = self.cfg.clone();
        let worker_shared = Arc::clone(&shared);
        let on_panic = FailOnPanic(Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("paho-queue-io".into())
            .spawn(move || {
                let _on_panic = on_panic;
                let mut worker = Worker::new(cfg, worker_shared);
                match worker.recover() {
                    Ok(()) => {
                        ready(Ok(()));
                        worker.run(rx);
                    }
                    Err(e) => {
                        // Release the directory (and every handle) before answering, so a
                        // caller that retries at once does not see `AlreadyOpen`.
                        drop(worker);
                        ready(Err(e));
                    }
                }
            })
            .map_err(Error::io("spawning the queue's I/O thread"))?;
        Ok(FileQueue {
            shared,
            tx: Some(tx),
            thread: Some(thread),
            limits: self.cfg.limits,
            dir: self.cfg.dir,
        })
    }
}

impl FileQueue {
    /// Starts configuring a queue stored in `dir`.
    pub fn builder(dir: impl AsRef<Path>) -> FileQueueBuilder {
        FileQueueBuilder {
            cfg: Config {
                dir: dir.as_ref().to_path_buf(),
                limits: Limits::unbounded(),
                segment_bytes: DEFAULT_SEGMENT_BYTES,
                sync_removals: true,
                #[cfg(test)]
                fail_fsync_after: None,
                #[cfg(test)]
                pause_fsync: None,
                #[cfg(test)]
                panic_in_batch: false,
                #[cfg(test)]
                fault_fs: None,
            },
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits the queue was opened with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Makes pending removals durable and stops the I/O thread.
    ///
    /// # Errors
    /// [`Error::Failed`] if the queue had failed, or the final fsync failed.
    ///
    /// # Cancel safety
    /// If dropped after the first poll, the queue still closes (the drop waits for it).
    pub async fn close(self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close { reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Reads the quarantine file of the queue directory `dir`: every record moved there, oldest
    /// first. Blocking; run it off the executor. Returns an empty list if there is none.
    ///
    /// # Errors
    /// [`Error::Io`] if the file exists but cannot be read.
    pub fn read_quarantine(dir: impl AsRef<Path>) -> Result<Vec<QuarantinedRecord>> {
        let path = dir.as_ref().join(QUARANTINE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("reading the quarantine file")(e)),
        };
        Ok(parse_quarantine(&data))
    }

    fn send(&self, cmd: Command) -> Result<()> {
        match &self.tx {
            Some(tx) => tx.send(cmd).map_err(|_| self.thread_gone()),
            None => Err(Error::Closed),
        }
    }

    /// A command could not be sent or was dropped unanswered. While the queue is open (and
    /// `&self` proves it is) that means the I/O thread died. The caller that notices marks the
    /// queue failed before returning, so no other waiter depends on the thread's own clean-up.
    fn thread_gone(&self) -> Error {
        lock(&self.shared).io_thread_gone();
        Error::Closed
    }

    fn check_failed(&self) -> Result<()> {
        match &lock(&self.shared).failed {
            Some(msg) => Err(Error::Failed(msg.clone())),
            None => Ok(()),
        }
    }

    /// Waits for room under `Block`, or fails under `Reject`, and reserves it.
    async fn reserve(&self, len: u64) -> Result<Reservation<'_>> {
        let limits = self.limits;
        // Fair: a producer that finds others already waiting for room queues behind them, so a
        // large entry is not starved by smaller ones that fit into each bit of freed room.
        WaitFor::fair(&self.shared, Shared::space, move |s: &mut Shared, first| {
            if let Some(msg) = &s.failed {
                return Some(Err(Error::Failed(msg.clone())));
            }
            let entries = s.entries + s.reserved_entries;
            let bytes = s.bytes + s.reserved_bytes;
            if first && limits.fits(entries, bytes, len) {
                s.reserved_entries += 1;
                s.reserved_bytes += len;
                return Some(Ok(()));
            }
            match limits.overflow() {
                Overflow::Reject => Some(Err(Error::Full { entries, bytes })),
                _ => None,
            }
        })
        .await?;
        Ok(Reservation {
            shared: &self.shared,
            len,
            armed: true,
        })
    }
}

/// The records of a quarantine file's contents, oldest first.
fn parse_quarantine(data: &[u8]) -> Vec<QuarantinedRecord> {
    let start = if decode_file_header(data, QUARANTINE_MAGIC).is_some() {
        format::FILE_HEADER_LEN
    } else {
        0
    };
    let mut out = Vec::new();
    for item in scan::scan(data, start) {
        if let scan::Item::Record {
            offset,
            header,
            data_ok,
        } = item
        {
            if header.kind != Kind::Quarantined {
                continue;
            }
            let s = offset as usize + RECORD_HEADER_LEN;
            out.push(QuarantinedRecord {
                seq: (header.seq != UNKNOWN_SEQ).then_some(header.seq),
                reason: QuarantineReason::from_code(header.flag),
                enqueued_at_ms: header.time_ms,
                data: Bytes::copy_from_slice(&data[s..s + header.len as usize]),
                intact: data_ok,
            });
        }
    }
    out
}

/// Held by the I/O thread: if it unwinds, the queue is marked failed and every waiter woken.
#[derive(Debug)]
struct FailOnPanic(Arc<Mutex<Shared>>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("paho-queue: the I/O thread panicked; the queue has failed");
            lock(&self.0).io_thread_gone();
        }
    }
}

/// Room reserved for an enqueue in flight; given back if the enqueue never reaches the I/O
/// thread (e.g. its future is dropped).
#[derive(Debug)]
struct Reservation<'a> {
    shared: &'a Mutex<Shared>,
    len: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = lock(self.shared);
            s.reserved_entries = s.reserved_entries.saturating_sub(1);
            s.reserved_bytes = s.reserved_bytes.saturating_sub(self.len);
            s.space.wake_all();
        }
    }
}

impl Drop for FileQueue {
    fn drop(&mut self) {
        // Closing the channel makes the I/O thread finish its batch, sync, and exit.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("paho-queue: the I/O thread panicked");
            }
        }
    }
}

impl Queue for FileQueue {
    async fn enqueue(&self, payload: Bytes, enqueued_at: SystemTime) -> Result<Enqueued> {
        let len = payload.len() as u64;
        self.limits.check_entry(len)?;
        self.check_failed()?;
        let mut reservation = match self.limits.overflow() {
            Overflow::DropOldest => None,
            _ => Some(self.reserve(len).await?),
        };
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            payload,
            time_ms: to_millis(enqueued_at),
            reserved: reservation.is_some(),
            reply,
        })?;
        // The I/O thread releases the reservation when it answers.
        if let Some(r) = &mut reservation {
            r.armed = false;
        }
        rx.await.map_err(|_| self.thread_gone())?
    }

    async fn wait_non_empty(&self) -> Result<()> {
        WaitFor::new(&self.shared, Shared::non_empty, |s: &mut Shared, _| {
            if let Some(msg) = &s.failed {
                return Some(Err(Error::Failed(msg.clone())));
            }
            (s.entries > 0).then_some(Ok(()))
        })
        .await
    }

    fn peek(&self) -> Result<Option<Entry>> {
        let s = lock(&self.shared);
        if let Some(msg) = &s.failed {
            return Err(Error::Failed(msg.clone()));
        }
        Ok(s.head.as_ref().map(Entry::clone_entry))
    }

    async fn finish(&self, entry: Entry, how: Finish) -> Result<()> {
        let quarantine = match how {
            Finish::Leave => {
                let s = lock(&self.shared);
                if let Some(msg) = &s.failed {
                    return Err(Error::Failed(msg.clone()));
                }
                let head = s.head.as_ref().map(Entry::seq);
                return if head == Some(entry.seq()) {
                    Ok(())
                } else {
                    Err(Error::NotHead {
                        seq: entry.seq(),
                        head,
                    })
                };
            }
            Finish::Remove => false,
            Finish::Quarantine => true,
        };
        self.check_failed()?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Finish {
            seq: entry.seq(),
            quarantine,
            reply,
        })?;
        rx.await.map_err(|_| self.thread_gone())?
    }

    fn len(&self) -> u64 {
        lock(&self.shared).entries
    }

    fn bytes(&self) -> u64 {
        lock(&self.shared).bytes
    }

    fn stats(&self) -> Stats {
        let s = lock(&self.shared);
        Stats {
            entries: s.entries,
            bytes: s.bytes,
            ..s.stats.clone()
        }
    }

    fn take_reports(&self) -> Vec<Report> {
        lock(&self.shared).reports.take()
    }
}

/// One record of the quarantine file, as returned by [`FileQueue::read_quarantine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    seq: Option<u64>,
    reason: Option<QuarantineReason>,
    enqueued_at_ms: u64,
    data: Bytes,
    intact: bool,
}

impl QuarantinedRecord {
    /// The entry's sequence number, if it was known.
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Why the bytes were quarantined (`None` for a reason code this version does not know).
    pub fn reason(&self) -> Option<QuarantineReason> {
        self.reason
    }

    /// The entry's enqueue time, if known (the Unix epoch when it was not).
    pub fn enqueued_at(&self) -> SystemTime {
        from_millis(self.enqueued_at_ms)
    }

    /// The bytes as they were found in the queue (for damage, possibly garbage).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Whether the quarantine record itself is undamaged (its checksum matches).
    pub fn intact(&self) -> bool {
        self.intact
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// A failed fsync must never be reported as a durable enqueue, and must stop the queue
    /// (after a failed fsync the kernel may have dropped the dirty pages).
    #[test]
    fn failed_fsync_fails_the_enqueue_and_the_queue() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut b = FileQueue::builder(tmp.path());
            // Opening an empty directory: segment + directory fsync. Then three enqueues.
            b.cfg.fail_fsync_after = Some(2 + 3);
            let q = b.open().await.unwrap();
            for i in 0..3u8 {
                q.enqueue(Bytes::from(vec![i]), UNIX_EPOCH).await.unwrap();
            }
            let err = q.enqueue(Bytes::from_static(b"x"), UNIX_EPOCH).await;
            assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
            let err = q.enqueue(Bytes::from_static(b"y"), UNIX_EPOCH).await;
            assert!(matches!(err, Err(Error::Failed(_))), "{err:?}");
            assert!(matches!(q.peek(), Err(Error::Failed(_))));
            assert!(matches!(q.wait_non_empty().await, Err(Error::Failed(_))));
            assert!(matches!(q.close().await, Err(Error::Failed(_))));

            // Reopening recovers every acknowledged entry from disk.
            let q = FileQueue::builder(tmp.path()).open().await.unwrap();
            for i in 0..3u8 {
                let e = q.peek().unwrap().unwrap();
                assert_eq!(&e.payload()[..], &[i]);
                q.finish(e, Finish::Remove).await.unwrap();
            }
        });
    }

    /// Group commit, deterministically: hold the I/O thread inside the fsync of a first
    /// enqueue, queue 15 more, release it. They must share at most one more fsync (without
    /// group commit: 16 fsyncs).
    #[test]
    fn enqueues_waiting_behind_an_fsync_share_the_next_one() {
        use std::future::Future;
        use std::task::{Context, Waker};

        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let pause = Arc::new(Mutex::new(()));
            let mut b = FileQueue::builder(tmp.path());
            b.cfg.pause_fsync = Some(Arc::clone(&pause));
            let q = b.open().await.unwrap();
            let before = q.stats().fsyncs;

            let held = lock(&pause);
            let mut cx = Context::from_waker(Waker::noop());
            let mut futures: Vec<_> = (0..16u8)
                .map(|i| Box::pin(q.enqueue(Bytes::from(vec![i]), UNIX_EPOCH)))
                .collect();
            // The first poll of each hands its command to the I/O thread, which is (or soon
            // will be) stuck in the first batch's fsync.
            for f in &mut futures {
                assert!(f.as_mut().poll(&mut cx).is_pending());
            }
            drop(held);
            let mut seqs = Vec::new();
            for f in futures {
                seqs.push(f.await.unwrap().seq());
            }
            assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
            let fsyncs = q.stats().fsyncs - before;
            assert!(fsyncs <= 2, "{fsyncs} fsyncs for 16 enqueues");
        });
    }

    /// If the I/O thread dies (a bug), waiters that only watch the shared state must not wait
    /// forever: they are woken with `Error::Failed`.
    #[test]
    fn a_dead_io_thread_fails_waiters_instead_of_hanging_them() {
        use std::future::Future;
        use std::task::{Context, Poll, Wake, Waker};

        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }

        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let limits = Limits::builder().max_entries(1).build().unwrap();
            let mut b = FileQueue::builder(tmp.path()).limits(limits);
            b.cfg.panic_in_batch = true;
            let q = b.open().await.unwrap();
            let flag = Arc::new(Flag(false.into()));
            let waker = Waker::from(Arc::clone(&flag));
            let mut cx = Context::from_waker(&waker);
            let mut waiting = Box::pin(q.wait_non_empty());
            assert!(waiting.as_mut().poll(&mut cx).is_pending());

            // The enqueue's batch kills the thread: its caller learns at once.
            let err = q.enqueue(Bytes::from_static(b"x"), UNIX_EPOCH).await;
            assert!(err.is_err(), "{err:?}");
            assert!(
                flag.0.load(std::sync::atomic::Ordering::SeqCst),
                "waiter woken"
            );
            assert!(matches!(
                waiting.as_mut().poll(&mut cx),
                Poll::Ready(Err(Error::Failed(_)))
            ));
            assert!(matches!(q.peek(), Err(Error::Failed(_))));
            assert!(matches!(
                q.enqueue(Bytes::from_static(b"y"), UNIX_EPOCH).await,
                Err(Error::Failed(_))
            ));
        });
    }

    /// Same for a removal: the consumer must not be told it is durable.
    #[test]
    fn failed_fsync_fails_the_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut b = FileQueue::builder(tmp.path());
            b.cfg.fail_fsync_after = Some(2 + 1);
            let q = b.open().await.unwrap();
            q.enqueue(Bytes::from_static(b"a"), UNIX_EPOCH)
                .await
                .unwrap();
            let e = q.peek().unwrap().unwrap();
            let err = q.finish(e, Finish::Remove).await;
            assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
            drop(q);
            let q = FileQueue::builder(tmp.path()).open().await.unwrap();
            assert!(q.len() <= 1);
        });
    }
}
