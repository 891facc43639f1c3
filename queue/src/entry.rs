//! The values that flow through a queue: entries, enqueue receipts, reports and statistics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// One queued entry, as returned by [`Queue::peek`](crate::Queue::peek).
///
/// Deliberately not `Clone`: the entry is handed back to
/// [`Queue::finish`](crate::Queue::finish) exactly once. Clone the payload (cheap, it is
/// reference counted) if you need to keep it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    seq: u64,
    enqueued_at_ms: u64,
    payload: Bytes,
}

impl Entry {
    pub(crate) fn new(seq: u64, enqueued_at_ms: u64, payload: Bytes) -> Self {
        Entry {
            seq,
            enqueued_at_ms,
            payload,
        }
    }

    /// The entry's sequence number: strictly increasing in enqueue order, persisted by
    /// [`FileQueue`](crate::FileQueue), starting at 1.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The time the caller passed to [`Queue::enqueue`](crate::Queue::enqueue), at millisecond
    /// precision (both queues store milliseconds since the Unix epoch, so they agree).
    pub fn enqueued_at(&self) -> SystemTime {
        from_millis(self.enqueued_at_ms)
    }

    /// The opaque payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Consumes the entry, returning the payload. Note that the entry can then no longer be
    /// passed to [`Queue::finish`](crate::Queue::finish); take the sequence number first.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    pub(crate) fn clone_entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            enqueued_at_ms: self.enqueued_at_ms,
            payload: self.payload.clone(),
        }
    }
}

/// How the consumer finishes with the head entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// The entry was handled (e.g. handed to the session store): remove it.
    Remove,
    /// Not now (e.g. offline): keep it at the head for a later peek.
    Leave,
    /// The caller cannot use the entry (e.g. it does not decode): move it to quarantine and
    /// report it, so the queue can move on without losing the bytes.
    Quarantine,
}

/// The receipt for a completed enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    seq: u64,
    dropped: Vec<Dropped>,
}

impl Enqueued {
    pub(crate) fn new(seq: u64, dropped: Vec<Dropped>) -> Self {
        Enqueued { seq, dropped }
    }

    /// The new entry's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The entries removed to make room under [`Overflow::DropOldest`](crate::Overflow),
    /// oldest first. Empty under the other policies.
    pub fn dropped(&self) -> &[Dropped] {
        &self.dropped
    }
}

/// An entry removed by [`Overflow::DropOldest`](crate::Overflow::DropOldest) to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    seq: u64,
    enqueued_at_ms: u64,
    len: u64,
}

impl Dropped {
    pub(crate) fn new(seq: u64, enqueued_at_ms: u64, len: u64) -> Self {
        Dropped {
            seq,
            enqueued_at_ms,
            len,
        }
    }

    /// The dropped entry's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// When the dropped entry was enqueued.
    pub fn enqueued_at(&self) -> SystemTime {
        from_millis(self.enqueued_at_ms)
    }

    /// The dropped entry's payload length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the dropped payload was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why bytes were moved to quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuarantineReason {
    /// The consumer finished the entry with [`Finish::Quarantine`].
    Unreadable,
    /// The stored payload does not match its checksum.
    Checksum,
    /// Bytes between two good records that do not form a record (garbled header).
    Garbled,
    /// An incomplete or garbled record at the end of the newest segment, typically a write torn
    /// by a crash before its fsync returned. The bytes are quarantined and the segment
    /// truncated so that new records follow the last good one.
    TornTail,
}

impl QuarantineReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            QuarantineReason::Unreadable => 1,
            QuarantineReason::Checksum => 2,
            QuarantineReason::Garbled => 3,
            QuarantineReason::TornTail => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(QuarantineReason::Unreadable),
            2 => Some(QuarantineReason::Checksum),
            3 => Some(QuarantineReason::Garbled),
            4 => Some(QuarantineReason::TornTail),
            _ => None,
        }
    }
}

/// Something the queue did on its own that the application should know about.
///
/// Collected in a bounded buffer and drained with [`Queue::take_reports`](crate::Queue::take_reports);
/// each report is also logged with `tracing`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// An entry was dropped to make room ([`Overflow::DropOldest`](crate::Overflow::DropOldest)).
    Dropped(Dropped),
    /// Bytes were moved to quarantine.
    Quarantined {
        /// The entry's sequence number, when it could be read.
        seq: Option<u64>,
        /// Why.
        reason: QuarantineReason,
        /// How many bytes were quarantined.
        len: u64,
    },
    /// On open, entries that should have been in the queue (sequence numbers `first..=last`,
    /// not yet consumed) were not found whole: the file holding them was truncated or garbled.
    /// Whatever bytes remained of them were quarantined. Reported by the open that first finds
    /// the loss; later opens remember it and stay quiet.
    Missing {
        /// The first missing sequence number.
        first: u64,
        /// The last missing sequence number.
        last: u64,
    },
}

/// A snapshot of a queue's counters. Counters start at zero when the queue is created or
/// opened; `entries` and `bytes` describe the current contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries queued now.
    pub entries: u64,
    /// Payload bytes queued now.
    pub bytes: u64,
    /// Enqueues completed.
    pub enqueued: u64,
    /// Entries removed by [`Finish::Remove`].
    pub removed: u64,
    /// Entries or byte ranges quarantined (by the consumer or on detecting corruption).
    pub quarantined: u64,
    /// Entries dropped by [`Overflow::DropOldest`](crate::Overflow::DropOldest).
    pub dropped: u64,
    /// fsync calls made ([`FileQueue`](crate::FileQueue) only; always 0 for memory).
    pub fsyncs: u64,
    /// Reports discarded because [`Queue::take_reports`](crate::Queue::take_reports) was not
    /// called often enough (the oldest are discarded first).
    pub reports_discarded: u64,
    /// Quarantined entries discarded from [`MemoryQueue`](crate::MemoryQueue)'s bounded
    /// quarantine list because [`take_quarantined`](crate::MemoryQueue::take_quarantined) was
    /// not called often enough (always 0 for [`FileQueue`](crate::FileQueue), whose quarantine
    /// is a file).
    pub quarantine_discarded: u64,
}

/// The report buffer keeps at most this many reports.
const REPORT_CAPACITY: usize = 4096;

/// A bounded buffer of reports, so a consumer that never drains them cannot grow memory.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    items: std::collections::VecDeque<Report>,
}

impl Reports {
    /// Adds a report, logging it; returns true if an older report had to be discarded.
    pub(crate) fn push(&mut self, report: Report) -> bool {
        tracing::warn!(?report, "paho-queue report");
        let discarded = if self.items.len() >= REPORT_CAPACITY {
            self.items.pop_front();
            true
        } else {
            false
        };
        self.items.push_back(report);
        discarded
    }

    pub(crate) fn take(&mut self) -> Vec<Report> {
        self.items.drain(..).collect()
    }
}

/// Milliseconds since the Unix epoch; times before the epoch are stored as 0.
pub(crate) fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_buffer_is_bounded_and_keeps_the_newest() {
        let mut r = Reports::default();
        let mut discarded = 0;
        for seq in 0..(REPORT_CAPACITY as u64 + 10) {
            if r.push(Report::Dropped(Dropped::new(seq, 0, 1))) {
                discarded += 1;
            }
        }
        assert_eq!(discarded, 10);
        let all = r.take();
        assert_eq!(all.len(), REPORT_CAPACITY);
        assert_eq!(all[0], Report::Dropped(Dropped::new(10, 0, 1)));
        assert!(r.take().is_empty());
    }

    #[test]
    fn times_round_trip_at_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_micros(1_234_567);
        assert_eq!(
            from_millis(to_millis(t)),
            UNIX_EPOCH + Duration::from_millis(1_234)
        );
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
