//! Size limits and what to do when an enqueue would exceed them.

use crate::error::{Error, Result};

/// The largest payload any queue accepts: 256 MiB, the largest MQTT packet.
///
/// Also the bound the file queue checks a stored length field against before allocating.
pub const MAX_ENTRY_BYTES: u64 = 256 * 1024 * 1024;

/// What an enqueue does when the queue is at a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait (asynchronously) until the consumer makes room. The default: nothing is lost and
    /// the producer feels back-pressure.
    #[default]
    Block,
    /// Fail at once with [`Error::Full`].
    Reject,
    /// Drop the oldest entries until the new one fits. The dropped entries are returned in
    /// [`Enqueued::dropped`](crate::Enqueued::dropped) and reported through
    /// [`Queue::take_reports`](crate::Queue::take_reports).
    DropOldest,
}

/// Entry and byte limits plus the overflow policy. Build with [`Limits::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    max_entry_bytes: u64,
    overflow: Overflow,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::unbounded()
    }
}

impl Limits {
    /// No entry or byte limit; each entry may be up to [`MAX_ENTRY_BYTES`].
    pub fn unbounded() -> Self {
        Limits {
            max_entries: None,
            max_bytes: None,
            max_entry_bytes: MAX_ENTRY_BYTES,
            overflow: Overflow::Block,
        }
    }

    /// Starts building limits.
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder {
            limits: Limits::unbounded(),
        }
    }

    /// The maximum number of entries, if any.
    pub fn max_entries(&self) -> Option<u64> {
        self.max_entries
    }

    /// The maximum total payload bytes, if any.
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// The maximum size of one payload.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// Fails if an entry of `len` bytes could never fit.
    pub(crate) fn check_entry(&self, len: u64) -> Result<()> {
        let limit = match self.max_bytes {
            Some(total) => total.min(self.max_entry_bytes),
            None => self.max_entry_bytes,
        };
        if len > limit {
            return Err(Error::EntryTooLarge { len, limit });
        }
        Ok(())
    }

    /// Whether one more entry of `len` bytes fits on top of `entries` / `bytes`.
    pub(crate) fn fits(&self, entries: u64, bytes: u64, len: u64) -> bool {
        let entries_ok = self
            .max_entries
            .is_none_or(|max| entries.saturating_add(1) <= max);
        let bytes_ok = self
            .max_bytes
            .is_none_or(|max| bytes.saturating_add(len) <= max);
        entries_ok && bytes_ok
    }
}

/// Builder for [`Limits`]; [`build`](LimitsBuilder::build) validates.
#[derive(Debug, Clone)]
pub struct LimitsBuilder {
    limits: Limits,
}

impl LimitsBuilder {
    /// At most `n` entries (at least 1).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.limits.max_entries = Some(n);
        self
    }

    /// At most `n` payload bytes in total (at least 1).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.limits.max_bytes = Some(n);
        self
    }

    /// At most `n` bytes per payload (1 ..= [`MAX_ENTRY_BYTES`]).
    pub fn max_entry_bytes(mut self, n: u64) -> Self {
        self.limits.max_entry_bytes = n;
        self
    }

    /// What to do when a limit is reached.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.limits.overflow = overflow;
        self
    }

    /// Validates and returns the limits.
    ///
    /// # Errors
    /// [`Error::Config`] if a limit is zero or the per-entry limit exceeds [`MAX_ENTRY_BYTES`].
    pub fn build(self) -> Result<Limits> {
        let l = self.limits;
        if l.max_entries == Some(0) {
            return Err(Error::Config("max_entries must be at least 1"));
        }
        if l.max_bytes == Some(0) {
            return Err(Error::Config("max_bytes must be at least 1"));
        }
        if l.max_entry_bytes == 0 || l.max_entry_bytes > MAX_ENTRY_BYTES {
            return Err(Error::Config(
                "max_entry_bytes must be in 1..=MAX_ENTRY_BYTES",
            ));
        }
        Ok(l)
    }
}
