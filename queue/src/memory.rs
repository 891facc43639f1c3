//! [`MemoryQueue`]: the in-memory queue.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::entry::{
    to_millis, Dropped, Enqueued, Entry, Finish, QuarantineReason, Report, Reports, Stats,
};
use crate::error::{Error, Result};
use crate::limits::{Limits, Overflow};
use crate::wait::{lock, WaitFor, WakerSet};
use crate::Queue;

/// A queue held in memory. Everything is lost with the process; use [`FileQueue`](crate::FileQueue)
/// for durability. Every operation is O(1) (amortised).
///
/// ```
/// use std::time::SystemTime;
/// use bytes::Bytes;
/// use paho_queue::{Finish, Limits, MemoryQueue, Overflow, Queue};
///
/// # fn main() -> Result<(), paho_queue::Error> {
/// let limits = Limits::builder().max_entries(2).overflow(Overflow::DropOldest).build()?;
/// let q = MemoryQueue::new(limits);
/// # let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| paho_queue::Error::Io { op: "rt", source: e })?;
/// # rt.block_on(async {
/// for p in ["a", "b", "c"] {
///     q.enqueue(Bytes::from(p), SystemTime::UNIX_EPOCH).await?;
/// }
/// let head = q.peek()?.expect("two entries left");
/// assert_eq!(&head.payload()[..], b"b"); // "a" was dropped to make room
/// q.finish(head, Finish::Remove).await?;
/// # Ok::<(), paho_queue::Error>(())
/// # })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryQueue {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
    non_empty: WakerSet,
    space: WakerSet,
    reports: Reports,
    stats: Stats,
    /// Newest last; bounded, see [`QUARANTINE_CAPACITY`].
    quarantined: VecDeque<Entry>,
    quarantined_bytes: u64,
}

/// The quarantine list keeps at most this many entries (and, if the queue has a byte limit, at
/// most that many payload bytes), so a consumer that never calls
/// [`MemoryQueue::take_quarantined`] cannot grow memory without bound.
const QUARANTINE_CAPACITY: usize = 4096;

impl State {
    fn non_empty(&mut self) -> &mut WakerSet {
        &mut self.non_empty
    }

    fn space(&mut self) -> &mut WakerSet {
        &mut self.space
    }

    fn report(&mut self, r: Report) {
        if self.reports.push(r) {
            self.stats.reports_discarded += 1;
        }
    }

    fn pop_head(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= e.payload().len() as u64;
        self.space.wake_all();
        Some(e)
    }

    fn push(&mut self, payload: Bytes, at_ms: u64, dropped: Vec<Dropped>) -> Enqueued {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += payload.len() as u64;
        self.entries.push_back(Entry::new(seq, at_ms, payload));
        self.stats.enqueued += 1;
        self.non_empty.wake_all();
        Enqueued::new(seq, dropped)
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new(Limits::unbounded())
    }
}

impl MemoryQueue {
    /// An empty queue with the given limits.
    pub fn new(limits: Limits) -> Self {
        MemoryQueue {
            limits,
            state: Mutex::new(State {
                entries: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                non_empty: WakerSet::default(),
                space: WakerSet::default(),
                reports: Reports::default(),
                stats: Stats::default(),
                quarantined: VecDeque::new(),
                quarantined_bytes: 0,
            }),
        }
    }

    /// The limits this queue was created with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes the entries quarantined since the last call, oldest first (the memory queue's
    /// quarantine is this list). It keeps the newest 4,096 entries, and no more payload bytes
    /// than the queue's byte limit if it has one; older ones are discarded and counted in
    /// [`Stats::quarantine_discarded`] (each was reported when it was quarantined).
    pub fn take_quarantined(&self) -> Vec<Entry> {
        let mut s = lock(&self.state);
        s.quarantined_bytes = 0;
        s.quarantined.drain(..).collect()
    }
}

impl Queue for MemoryQueue {
    async fn enqueue(&self, payload: Bytes, enqueued_at: SystemTime) -> Result<Enqueued> {
        let len = payload.len() as u64;
        self.limits.check_entry(len)?;
        let at_ms = to_millis(enqueued_at);
        let limits = self.limits;
        let mut payload = Some(payload);
        // Fair: a producer that finds others already waiting for room queues behind them, so a
        // large entry is not starved by smaller ones that fit into each bit of freed room.
        WaitFor::fair(&self.state, State::space, move |s: &mut State, first| {
            if first && limits.fits(s.entries.len() as u64, s.bytes, len) {
                return Some(Ok(s.push(payload.take()?, at_ms, Vec::new())));
            }
            match limits.overflow() {
                Overflow::Reject => Some(Err(Error::Full {
                    entries: s.entries.len() as u64,
                    bytes: s.bytes,
                })),
                Overflow::DropOldest => {
                    let mut dropped = Vec::new();
                    // check_entry guarantees the entry fits in an empty queue.
                    while !limits.fits(s.entries.len() as u64, s.bytes, len) {
                        let Some(old) = s.pop_head() else { break };
                        let d = Dropped::new(
                            old.seq(),
                            to_millis(old.enqueued_at()),
                            old.payload().len() as u64,
                        );
                        s.stats.dropped += 1;
                        s.report(Report::Dropped(d.clone()));
                        dropped.push(d);
                    }
                    Some(Ok(s.push(payload.take()?, at_ms, dropped)))
                }
                // Block, and any future policy: wait for the consumer to make room.
                _ => None,
            }
        })
        .await
    }

    async fn wait_non_empty(&self) -> Result<()> {
        WaitFor::new(&self.state, State::non_empty, |s: &mut State, _| {
            (!s.entries.is_empty()).then_some(())
        })
        .await;
        Ok(())
    }

    fn peek(&self) -> Result<Option<Entry>> {
        Ok(lock(&self.state).entries.front().map(Entry::clone_entry))
    }

    async fn finish(&self, entry: Entry, how: Finish) -> Result<()> {
        let mut s = lock(&self.state);
        let head = s.entries.front().map(Entry::seq);
        if head != Some(entry.seq()) {
            return Err(Error::NotHead {
                seq: entry.seq(),
                head,
            });
        }
        match how {
            Finish::Leave => {}
            Finish::Remove => {
                s.pop_head();
                s.stats.removed += 1;
            }
            Finish::Quarantine => {
                if let Some(e) = s.pop_head() {
                    s.stats.quarantined += 1;
                    s.report(Report::Quarantined {
                        seq: Some(e.seq()),
                        reason: QuarantineReason::Unreadable,
                        len: e.payload().len() as u64,
                    });
                    let len = e.payload().len() as u64;
                    let max_bytes = self.limits.max_bytes().unwrap_or(u64::MAX);
                    while !s.quarantined.is_empty()
                        && (s.quarantined.len() >= QUARANTINE_CAPACITY
                            || s.quarantined_bytes.saturating_add(len) > max_bytes)
                    {
                        if let Some(old) = s.quarantined.pop_front() {
                            s.quarantined_bytes -= old.payload().len() as u64;
                            s.stats.quarantine_discarded += 1;
                        }
                    }
                    s.quarantined_bytes += len;
                    s.quarantined.push_back(e);
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        lock(&self.state).entries.len() as u64
    }

    fn bytes(&self) -> u64 {
        lock(&self.state).bytes
    }

    fn stats(&self) -> Stats {
        let s = lock(&self.state);
        Stats {
            entries: s.entries.len() as u64,
            bytes: s.bytes,
            ..s.stats.clone()
        }
    }

    fn take_reports(&self) -> Vec<Report> {
        lock(&self.state).reports.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantine_all(q: &MemoryQueue, payloads: impl Iterator<Item = Bytes>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for p in payloads {
                q.enqueue(p, SystemTime::UNIX_EPOCH).await.unwrap();
                let e = q.peek().unwrap().unwrap();
                q.finish(e, Finish::Quarantine).await.unwrap();
            }
        });
    }

    /// A consumer that quarantines a lot and never takes the list must not grow memory without
    /// bound: the list keeps the newest entries (by count, and by the byte limit if any).
    #[test]
    fn quarantine_list_is_bounded() {
        let q = MemoryQueue::default();
        let n = 4096 + 3;
        quarantine_all(&q, (0..n).map(|i| Bytes::from(i.to_string())));
        let kept = q.take_quarantined();
        assert_eq!(kept.len(), 4096);
        assert_eq!(kept[0].payload(), &Bytes::from("3"));
        assert_eq!(q.stats().quarantine_discarded, 3);
        assert_eq!(q.stats().quarantined, n);

        let q = MemoryQueue::new(Limits::builder().max_bytes(10).build().unwrap());
        quarantine_all(&q, ["aaaa", "bbbb", "cccc"].into_iter().map(Bytes::from));
        let kept: Vec<Bytes> = q
            .take_quarantined()
            .into_iter()
            .map(Entry::into_payload)
            .collect();
        assert_eq!(kept, vec![Bytes::from("bbbb"), Bytes::from("cccc")]);
    }
}
