//! The durable outgoing publish queue of the paho-rs MQTT v5 client family.
//!
//! A [`Queue`] holds opaque byte entries (for `autopaho`, encoded PUBLISH requests) in FIFO
//! order. A producer [enqueues](Queue::enqueue) an entry with the time it was created; a
//! consumer [waits](Queue::wait_non_empty) until there is something to send,
//! [peeks](Queue::peek) at the head and [finishes](Queue::finish) it in exactly one of three
//! ways: [remove](Finish::Remove) it, [leave](Finish::Leave) it for later, or
//! [quarantine](Finish::Quarantine) it as unreadable.
//!
//! Two implementations:
//!
//! - [`MemoryQueue`]: a `VecDeque` behind a mutex, for tests and for applications that accept
//!   losing the backlog with the process.
//! - [`FileQueue`]: a directory of append-only, checksummed segment files. An enqueue returns
//!   only after its record is fsync'd; concurrent enqueues share one fsync (group commit) on a
//!   dedicated I/O thread, so blocking file I/O never runs on the async executor. Order is the
//!   persisted sequence number; peek is O(1) (the head is kept loaded); fully consumed segments
//!   are deleted; a torn or garbled tail is detected by checksum on open, quarantined, reported
//!   and truncated away.
//!
//! Both honour [`Limits`] (entry count, total bytes, per-entry bytes) with an [`Overflow`]
//! policy: block the producer, reject with [`Error::Full`], or drop the oldest entries (returned
//! in [`Enqueued::dropped`] and reported). Anything the queue does on its own (drops,
//! quarantines, damage found on open) is surfaced as a [`Report`] via [`Queue::take_reports`].
//!
//! # Module layout
//!
//! - `queue` (this file): the [`Queue`] trait.
//! - `entry`: [`Entry`], [`Finish`], [`Enqueued`], [`Dropped`], [`Report`], [`Stats`].
//! - `limits`: [`Limits`], [`LimitsBuilder`], [`Overflow`].
//! - `error`: [`Error`], the crate's only error type.
//! - `memory`: [`MemoryQueue`].
//! - `file`: [`FileQueue`] and its builder; inside it `format` (the on-disk record layout),
//!   `scan` (parsing a segment and resynchronising after damage), `worker` (the I/O thread:
//!   group commit, head loading, quarantine, segment rolling and reclaiming), `reader`
//!   (buffered, read-ahead reading of head records), `recovery`
//!   (opening a directory), `fs` (the file-system seam every file operation goes through;
//!   unit tests put a simulated disk behind it) and `guard` (one opener per directory: a process-wide registry plus
//!   a lock file against other processes).
//! - `wait`: runtime-agnostic, first-come-first-served waiting (no async runtime needed). The
//!   I/O thread answers callers through `futures-channel`'s runtime-agnostic oneshot.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use bytes::Bytes;
//! use paho_queue::{FileQueue, Finish, Queue};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("outbox");
//! # let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! # rt.block_on(async {
//! let queue = FileQueue::builder(&dir).open().await?;
//! let receipt = queue.enqueue(Bytes::from_static(b"hello"), SystemTime::now()).await?;
//!
//! queue.wait_non_empty().await?;
//! if let Some(entry) = queue.peek()? {
//!     assert_eq!(entry.seq(), receipt.seq());
//!     assert_eq!(&entry.payload()[..], b"hello");
//!     queue.finish(entry, Finish::Remove).await?; // durable once this returns
//! }
//! assert!(queue.is_empty());
//! queue.close().await?;
//! # Ok::<(), paho_queue::Error>(())
//! # })?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod entry;
mod error;
mod file;
mod limits;
mod memory;
mod wait;

use std::future::Future;
use std::time::SystemTime;

use bytes::Bytes;

pub use entry::{Dropped, Enqueued, Entry, Finish, QuarantineReason, Report, Stats};
pub use error::{Error, Result};
pub use file::{FileQueue, FileQueueBuilder, QuarantinedRecord};
pub use limits::{Limits, LimitsBuilder, Overflow, MAX_ENTRY_BYTES};
pub use memory::MemoryQueue;

/// A FIFO queue of opaque byte entries. See the [crate docs](crate) for the life of an entry.
///
/// All methods take `&self`; share a queue between a producer and a consumer task with an
/// `Arc`. There is meant to be one consumer: [`finish`](Queue::finish) only accepts the current
/// head.
pub trait Queue: Send + Sync {
    /// Appends `payload`, stamped with `enqueued_at` (the queue reads no clock), and returns its
    /// sequence number once the entry is stored: for [`FileQueue`], once it is fsync'd.
    ///
    /// When the queue is at a limit the [`Overflow`] policy applies: wait for room, fail with
    /// [`Error::Full`], or drop the oldest entries (listed in the receipt). Producers waiting
    /// for room get it in the order they started waiting; one that arrives while others wait
    /// queues behind them even if its entry would fit, so a large entry is never starved.
    ///
    /// # Errors
    /// [`Error::EntryTooLarge`], [`Error::Full`], and for [`FileQueue`] I/O errors. An error
    /// means the entry was not enqueued and never will be (it is safe to enqueue it again),
    /// except [`Error::OutcomeUnknown`]: the entry may or may not be in the queue.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits for room (policy `Block`) enqueues nothing and gives
    /// its place in line to the next waiting producer. Once the
    /// entry has been handed to the file queue's I/O thread, dropping the future does not
    /// withdraw it: the entry may still be stored, you just do not learn its sequence number.
    /// [`MemoryQueue`] completes on its first poll unless it waits for room.
    fn enqueue(
        &self,
        payload: Bytes,
        enqueued_at: SystemTime,
    ) -> impl Future<Output = Result<Enqueued>> + Send;

    /// Completes when the queue holds at least one entry.
    ///
    /// # Errors
    /// [`Error::Failed`] if the file queue failed earlier.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only deregisters its waker.
    fn wait_non_empty(&self) -> impl Future<Output = Result<()>> + Send;

    /// The head entry, without removing it; `None` if the queue is empty. O(1) and
    /// non-blocking: the file queue keeps its head loaded in memory.
    ///
    /// # Errors
    /// [`Error::Failed`] if the file queue failed earlier.
    fn peek(&self) -> Result<Option<Entry>>;

    /// Finishes with `entry`, which must be the current head (as returned by
    /// [`peek`](Queue::peek)). [`Finish::Leave`] keeps it at the head; [`Finish::Remove`] and
    /// [`Finish::Quarantine`] return once the removal is stored (for [`FileQueue`], fsync'd
    /// unless [`FileQueueBuilder::sync_removals`] was turned off).
    ///
    /// # Errors
    /// [`Error::NotHead`] if `entry` is no longer the head; I/O errors for [`FileQueue`]
    /// (the entry stays in the queue), or [`Error::OutcomeUnknown`] (it may come back).
    ///
    /// # Cancel safety
    /// Once polled, the removal has been handed to the I/O thread and happens even if the
    /// future is dropped; a later [`peek`](Queue::peek) shows the outcome.
    fn finish(&self, entry: Entry, how: Finish) -> impl Future<Output = Result<()>> + Send;

    /// Entries queued now.
    fn len(&self) -> u64;

    /// Whether the queue is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes queued now.
    fn bytes(&self) -> u64;

    /// A snapshot of the queue's counters.
    fn stats(&self) -> Stats;

    /// Drains the reports collected since the last call (drops, quarantines, damage found on
    /// open), oldest first.
    fn take_reports(&self) -> Vec<Report>;
}
