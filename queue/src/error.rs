//! The crate's single error type.

use std::io;

/// Everything that can go wrong in this crate.
///
/// Marked `#[non_exhaustive]` so that new failure modes can be added without a breaking change;
/// match the variants you handle and treat the rest as fatal for the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed. `op` names what the queue was doing. The operation did not
    /// take effect and never will: a [`FileQueue`](crate::FileQueue) batch that fails is cut
    /// back out of the queue files before anyone is answered (see [`Error::OutcomeUnknown`] for
    /// when that fails too).
    #[error("queue I/O failed while {op}: {source}")]
    Io {
        /// What the queue was doing, e.g. "appending a batch".
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The queue is at its entry or byte limit and the overflow policy is
    /// [`Overflow::Reject`](crate::Overflow::Reject).
    #[error("queue is full: {entries} entries, {bytes} bytes")]
    Full {
        /// Entries held (including enqueues in flight) when the entry was refused.
        entries: u64,
        /// Payload bytes held (including enqueues in flight) when the entry was refused.
        bytes: u64,
    },
    /// The entry alone is larger than the per-entry or total byte limit, so it can never fit.
    #[error("entry of {len} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge {
        /// The payload length.
        len: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// [`Queue::finish`](crate::Queue::finish) was given an entry that is not the current head,
    /// for example because it was already removed, or dropped by
    /// [`Overflow::DropOldest`](crate::Overflow::DropOldest) while the caller held it.
    #[error("entry {seq} is not the head of the queue (head: {head:?})")]
    NotHead {
        /// The sequence number the caller passed.
        seq: u64,
        /// The current head, if any.
        head: Option<u64>,
    },
    /// A builder was given an invalid setting.
    #[error("invalid queue configuration: {0}")]
    Config(&'static str),
    /// An earlier write or fsync failed. The on-disk state after a failed fsync is unknown, so
    /// the queue refuses further work; reopen it to recover from what is on disk.
    #[error("the queue failed earlier and must be reopened: {0}")]
    Failed(String),
    /// A write or fsync failed, and so did cutting the failed batch back out of the queue
    /// files: the operation **may or may not have taken effect**. For an enqueue, the entry
    /// may be found (and delivered) after the queue is reopened, or it may not; **do not
    /// enqueue it again blindly**, or it may be delivered twice (and under
    /// [`Overflow::DropOldest`](crate::Overflow::DropOldest) the entries it would have dropped
    /// may be gone). For a removal, the entry may come back. The queue has failed (every later call returns [`Error::Failed`]); reopen it
    /// and look at what it holds. Every other error of an operation means "not done": nothing
    /// of it will ever be found. See [`Error::is_outcome_unknown`].
    #[error(
        "outcome unknown, the operation may or may not have taken effect ({failure}); \
         cutting it back failed while {op}: {source}"
    )]
    OutcomeUnknown {
        /// The failure that failed the operation's batch.
        failure: String,
        /// What the queue was doing when cutting the batch back failed.
        op: &'static str,
        /// The error that stopped the cut-back.
        #[source]
        source: io::Error,
    },
    /// A [`FileQueue`](crate::FileQueue) is already open on the directory, in this process or
    /// in another one (the directory is locked for as long as a queue has it open).
    #[error("queue directory {} is already open (in this or another process)", dir.display())]
    AlreadyOpen {
        /// The directory, canonicalised.
        dir: std::path::PathBuf,
    },
    /// The queue's I/O thread has stopped (the queue is closing or the thread could not start).
    #[error("the queue's I/O thread has stopped")]
    Closed,
}

impl Error {
    /// Whether the operation may still have taken effect ([`Error::OutcomeUnknown`]): an
    /// enqueue answered so must not be repeated blindly. `false` for every other error, which
    /// means the operation did not take effect and never will.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
