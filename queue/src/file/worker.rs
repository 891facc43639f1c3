//! The I/O thread. It owns every file handle and the index of live entries; async callers talk
//! to it through a channel and get answers through oneshot channels.
//!
//! Group commit: the thread blocks for one command, then drains whatever else is already
//! waiting (up to [`MAX_BATCH`]), writes all resulting records with one `write` and makes them
//! durable with one `fsync`, and only then answers. While it is in `fsync`, new enqueues pile up
//! in the channel and form the next batch, so N concurrent producers share one fsync.

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::format::{
    decode_record_header, encode_file_header, encode_record, Kind, FILE_HEADER_LEN,
    QUARANTINE_MAGIC, RECORD_HEADER_LEN, SEGMENT_MAGIC, UNKNOWN_SEQ,
};
use super::fs::Fs;
use super::reader::SegmentReader;
use super::{Command, Config, Shared, QUARANTINE_FILE};
use crate::entry::{Dropped, Enqueued, Entry, QuarantineReason, Report};
use crate::error::{Error, Result};
use crate::limits::{Overflow, MAX_ENTRY_BYTES};
use crate::wait::lock;
use futures_channel::oneshot;

/// At most this many commands share one write + fsync. Bounds the latency of the first
/// command in a batch and the memory of the write buffer.
pub(crate) const MAX_BATCH: usize = 1024;

/// Write the buffer out (without fsync) once it grows past this, so large entries in a big
/// batch do not pile up in memory.
const FLUSH_THRESHOLD: usize = 4 * 1024 * 1024;

/// One segment file on disk.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The first sequence number the segment may hold; also in its name and header.
    pub(crate) base: u64,
    /// The file name, [`segment_name`] of `base`.
    pub(crate) name: String,
    /// Bytes written to the file (the append position).
    pub(crate) len: u64,
}

/// Where a live entry is. 40 bytes per queued entry is the queue's memory cost; payloads stay
/// on disk, except the head's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) seq: u64,
    /// Base of the segment holding the record.
    pub(crate) segment: u64,
    /// Offset of the record header in that segment.
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) time_ms: u64,
    /// The payload failed its checksum when the directory was opened.
    pub(crate) corrupt: bool,
}

/// Counters and reports gathered while processing, published to [`Shared`] in one go.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) fsyncs: u64,
    pub(crate) enqueued: u64,
    pub(crate) removed: u64,
    pub(crate) quarantined: u64,
    pub(crate) dropped: u64,
    pub(crate) reports: Vec<Report>,
}

pub(crate) enum Answer {
    Enqueued {
        reply: oneshot::Sender<Result<Enqueued>>,
        result: Result<Enqueued>,
        /// Bytes reserved by the caller's admission check, released now.
        reserved: Option<u64>,
    },
    Done {
        reply: oneshot::Sender<Result<()>>,
        result: Result<()>,
    },
}

/// Where the batch being processed started, so that a failed batch can be cut back out.
#[derive(Debug, Default)]
struct Mark {
    /// The newest segment when the batch started, and its length then.
    segment: Option<(u64, u64)>,
    /// Segments this batch created (or tried to create), newest last.
    created: Vec<u64>,
    /// The quarantine file's length when the batch started (or when the batch opened it).
    quarantine: Option<u64>,
}

/// How a batch ended, for the answers to its callers.
#[derive(Debug)]
pub(crate) enum BatchEnd {
    /// Every record of the batch is durable (later work, such as reclaiming, may still have
    /// failed the queue; the batch's own operations took effect all the same).
    Committed,
    /// The batch failed and was cut back out of every segment: none of it took effect.
    CutBack,
    /// The batch failed and cutting it back failed too: its records may or may not be found
    /// by a later open.
    Unknown {
        op: &'static str,
        kind: std::io::ErrorKind,
        text: String,
    },
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) cfg: Config,
    pub(crate) shared: Arc<Mutex<Shared>>,
    /// Every file operation goes through here (a simulated disk in crash tests).
    pub(crate) fs: Box<dyn Fs>,
    pub(crate) segments: VecDeque<Segment>,
    /// Reader of one segment, used to load the head.
    pub(crate) reader: Option<SegmentReader>,
    /// Whether the quarantine file exists with its header (it is created on first use).
    pub(crate) quarantine_open: bool,
    /// The quarantine file's length, once open.
    quarantine_len: u64,
    pub(crate) index: VecDeque<Slot>,
    pub(crate) live_bytes: u64,
    pub(crate) next_seq: u64,
    /// Records encoded but not yet written to the active segment.
    pub(crate) buf: Vec<u8>,
    /// Records written without an fsync yet (lazy removals).
    pub(crate) unsynced: bool,
    /// The loaded head entry.
    pub(crate) head: Option<Entry>,
    pub(crate) failed: Option<String>,
    pub(crate) pending: Pending,
    pub(crate) fsync: FsyncGate,
    /// The error that failed the current batch, for the callers in that batch.
    batch_error: Option<(&'static str, std::io::ErrorKind, String)>,
    mark: Mark,
}

pub(crate) fn segment_name(base: u64) -> String {
    format!("seg-{base:020}.q")
}

/// Parses a segment file name back into its base sequence number. A base of
/// [`MAX_SEQ`](super::format::MAX_SEQ) or more is no segment of a queue (none gets there), and
/// the file is left alone.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".q")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|b| *b < super::format::MAX_SEQ)
}

/// Every fsync goes through here, so that it is counted and, in unit tests, can be made to
/// fail (to test that a failed fsync is never reported as durable).
#[derive(Debug, Default)]
pub(crate) struct FsyncGate {
    /// Successful fsyncs left before one injected failure.
    #[cfg(test)]
    pub(crate) fail_after: Option<u64>,
    /// Every fsync waits for this lock, so a test can hold the I/O thread inside an fsync.
    #[cfg(test)]
    pub(crate) pause: Option<Arc<Mutex<()>>>,
}

impl FsyncGate {
    fn check(&mut self, op: &'static str) -> Result<()> {
        #[cfg(test)]
        if let Some(p) = &self.pause {
            drop(lock(p));
        }
        #[cfg(test)]
        if let Some(n) = &mut self.fail_after {
            if *n == 0 {
                // One failure only, so the cut-back that follows can succeed.
                self.fail_after = None;
                return Err(Error::Io {
                    op,
                    source: std::io::Error::other("injected fsync failure"),
                });
            }
            *n -= 1;
        }
        let _ = op;
        Ok(())
    }

    /// `fdatasync`: file data plus the metadata needed to read it back (e.g. its size).
    pub(crate) fn data(
        &mut self,
        fs: &mut dyn Fs,
        name: &str,
        p: &mut Pending,
        op: &'static str,
    ) -> Result<()> {
        self.check(op)?;
        p.fsyncs += 1;
        fs.sync_data(name).map_err(Error::io(op))
    }

    /// `fsync`: data and all metadata; used for truncation and repairs.
    pub(crate) fn all(
        &mut self,
        fs: &mut dyn Fs,
        name: &str,
        p: &mut Pending,
        op: &'static str,
    ) -> Result<()> {
        self.check(op)?;
        p.fsyncs += 1;
        fs.sync_all(name).map_err(Error::io(op))
    }

    /// `fsync` of the queue directory: file creations and removals.
    pub(crate) fn dir(&mut self, fs: &mut dyn Fs, p: &mut Pending, op: &'static str) -> Result<()> {
        self.check(op)?;
        p.fsyncs += 1;
        fs.sync_dir().map_err(Error::io(op))
    }
}

impl Worker {
    pub(crate) fn new(cfg: Config, shared: Arc<Mutex<Shared>>) -> Self {
        #[cfg(test)]
        let fs: Box<dyn Fs> = match &cfg.fault_fs {
            Some(f) => Box::new(f.clone()),
            None => Box::new(super::fs::RealFs::new(cfg.dir.clone())),
        };
        #[cfg(not(test))]
        let fs: Box<dyn Fs> = Box::new(super::fs::RealFs::new(cfg.dir.clone()));
        Worker {
            shared,
            fs,
            segments: VecDeque::new(),
            reader: None,
            quarantine_open: false,
            quarantine_len: 0,
            index: VecDeque::new(),
            live_bytes: 0,
            next_seq: 1,
            buf: Vec::new(),
            unsynced: false,
            head: None,
            failed: None,
            pending: Pending::default(),
            batch_error: None,
            mark: Mark::default(),
            fsync: FsyncGate {
                #[cfg(test)]
                fail_after: cfg.fail_fsync_after,
                #[cfg(test)]
                pause: cfg.pause_fsync.clone(),
            },
            cfg,
        }
    }

    /// The command loop. Returns when the queue is closed or dropped.
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            push_command(&mut batch, first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => push_command(&mut batch, cmd),
                    Err(_) => break,
                }
            }
            if self.process(batch) {
                return;
            }
        }
        // Every sender is gone: the queue was dropped. Make lazy removals durable.
        if self.failed.is_none() {
            if let Err(e) = self.commit(true) {
                tracing::error!(error = %e, "paho-queue: final sync failed");
            }
        }
    }

    /// Processes one batch; returns true if the queue is closing.
    fn process(&mut self, batch: Vec<Command>) -> bool {
        #[cfg(test)]
        if self.cfg.panic_in_batch {
            panic!("injected I/O thread panic");
        }
        self.batch_error = None;
        // A queue that failed earlier writes nothing more, so it has nothing to cut back.
        let failed_before = self.failed.is_some();
        self.mark = Mark {
            segment: self.segments.back().map(|s| (s.base, s.len)),
            created: Vec::new(),
            quarantine: self.quarantine_open.then_some(self.quarantine_len),
        };
        let mut answers = Vec::with_capacity(batch.len());
        let mut need_sync = false;
        let mut head_moved = false;
        let mut close = None;
        for cmd in batch {
            match cmd {
                Command::Append {
                    payload,
                    time_ms,
                    reserved,
                    reply,
                } => {
                    let reserved = reserved.then_some(payload.len() as u64);
                    let result = if let Some(msg) = &self.failed {
                        Err(Error::Failed(msg.clone()))
                    } else {
                        self.append(&payload, time_ms)
                    };
                    match &result {
                        Ok(e) => {
                            need_sync = true;
                            head_moved |= !e.dropped().is_empty();
                        }
                        Err(e) => self.fail(e),
                    }
                    answers.push(Answer::Enqueued {
                        reply,
                        result,
                        reserved,
                    });
                }
                Command::Finish {
                    seq,
                    quarantine,
                    reply,
                } => {
                    let result = if let Some(msg) = &self.failed {
                        Err(Error::Failed(msg.clone()))
                    } else {
                        self.finish(seq, quarantine)
                    };
                    match &result {
                        Ok(()) => {
                            head_moved = true;
                            need_sync |= self.cfg.sync_removals;
                        }
                        Err(Error::NotHead { .. }) => {}
                        Err(e) => self.fail(e),
                    }
                    answers.push(Answer::Done { reply, result });
                }
                Command::Close { reply } => {
                    need_sync = true;
                    close = Some(reply);
                }
                // `push_command` flattens these; a nested one is not used by any test.
                #[cfg(test)]
                Command::Many(_) => {}
            }
        }
        if self.failed.is_none() {
            if head_moved {
                self.write_head_record();
            }
            if let Err(e) = self.commit(need_sync) {
                self.fail(&e);
            }
        }
        let end = if failed_before || self.failed.is_none() {
            BatchEnd::Committed
        } else {
            self.cut_back()
        };
        if self.failed.is_none() {
            // The batch is durable; what follows is the queue's own housekeeping. If it fails
            // the queue fails, but the batch's operations took effect and are answered Ok.
            if let Err(e) = self.load_head().and_then(|()| self.reclaim()) {
                self.fail(&e);
            }
        }
        self.publish(answers, &end);
        if let Some(reply) = close {
            let _ = reply.send(match &self.failed {
                Some(msg) => Err(Error::Failed(msg.clone())),
                None => Ok(()),
            });
            return true;
        }
        false
    }

    /// A failed batch is cut back out of the segments before anyone is answered, so that no
    /// operation answered with an error can be found by a later open: neither after a power
    /// loss (a failed fsync may still have persisted data, and `roll` fsyncs the batch's
    /// earlier records into the old segment) nor without one (after a failed write or fsync
    /// the bytes can sit in the page cache, where a reopen in the same boot would read them).
    ///
    /// The batch is all or nothing: records of it that were already durable (synced by a
    /// roll) are cut back too, and every caller in it gets the error.
    ///
    /// Segments created by the batch are removed first (and the directory synced), then the
    /// segment that was newest when the batch started is truncated to its length then and
    /// synced. In that order a crash part-way never leaves a newer segment of the batch behind
    /// an older one whose records are gone. The quarantine file is cut back last: a crash
    /// before that leaves a copy of an entry that is still queued, never an entry that was
    /// removed without its copy.
    fn cut_back(&mut self) -> BatchEnd {
        match self.try_cut_back() {
            Ok(()) => {
                tracing::warn!("paho-queue: the failed batch was cut back out of the queue");
                // Nothing of the batch happened: no drop or quarantine to report or count.
                self.pending = Pending {
                    fsyncs: self.pending.fsyncs,
                    ..Pending::default()
                };
                BatchEnd::CutBack
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "paho-queue: cutting a failed batch back failed; its outcome is unknown"
                );
                let (op, kind, text) = match &e {
                    Error::Io { op, source } => (*op, source.kind(), source.to_string()),
                    other => (
                        "cutting back a failed batch",
                        std::io::ErrorKind::Other,
                        other.to_string(),
                    ),
                };
                BatchEnd::Unknown { op, kind, text }
            }
        }
    }

    fn try_cut_back(&mut self) -> Result<()> {
        self.buf.clear();
        self.reader = None;
        let created = std::mem::take(&mut self.mark.created);
        if !created.is_empty() {
            for &base in created.iter().rev() {
                let name = segment_name(base);
                match self.fs.remove(&name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("removing a failed batch's segment")(e)),
                }
            }
            self.segments.retain(|s| !created.contains(&s.base));
            self.fsync.dir(
                &mut *self.fs,
                &mut self.pending,
                "syncing the directory after a cut-back",
            )?;
        }
        let Some((base, len)) = self.mark.segment else {
            return Ok(());
        };
        let name = segment_name(base);
        self.fs
            .truncate(&name, len)
            .map_err(Error::io("cutting a failed batch back"))?;
        self.fsync.all(
            &mut *self.fs,
            &name,
            &mut self.pending,
            "syncing a cut-back segment",
        )?;
        if let Some(seg) = self.segments.back_mut().filter(|s| s.base == base) {
            seg.len = len;
        }
        if let Some(len) = self.mark.quarantine.filter(|&l| l < self.quarantine_len) {
            self.fs
                .truncate(QUARANTINE_FILE, len)
                .map_err(Error::io("cutting the quarantine file back"))?;
            self.fsync.all(
                &mut *self.fs,
                QUARANTINE_FILE,
                &mut self.pending,
                "syncing the cut-back quarantine file",
            )?;
            self.quarantine_len = len;
        }
        Ok(())
    }

    /// Marks the queue failed: after a failed write or fsync the kernel may have dropped dirty
    /// pages, so nothing in memory can be trusted to match the disk any more.
    fn fail(&mut self, e: &Error) {
        if self.failed.is_none() {
            tracing::error!(error = %e, "paho-queue: I/O failed; the queue must be reopened");
            self.failed = Some(e.to_string());
            self.batch_error = Some(match e {
                Error::Io { op, source } => (*op, source.kind(), source.to_string()),
                other => (
                    "processing a batch",
                    std::io::ErrorKind::Other,
                    other.to_string(),
                ),
            });
        }
    }

    fn append(&mut self, payload: &[u8], time_ms: u64) -> Result<Enqueued> {
        let len = payload.len() as u64;
        let mut dropped = Vec::new();
        if self.cfg.limits.overflow() == Overflow::DropOldest {
            while !self
                .cfg
                .limits
                .fits(self.index.len() as u64, self.live_bytes, len)
            {
                let Some(old) = self.pop_front() else { break };
                let d = Dropped::new(old.seq, old.time_ms, u64::from(old.len));
                self.pending.dropped += 1;
                self.pending.reports.push(Report::Dropped(d.clone()));
                dropped.push(d);
            }
        }
        let record_len = (RECORD_HEADER_LEN as u64).saturating_add(len);
        let (seg_len, seg_base) = self.active_segment()?;
        let used = seg_len + self.buf.len() as u64;
        // Roll to a new segment when this record would overflow a non-empty one. A record larger
        // than the segment size gets a segment to itself.
        //
        // Only a segment that already holds an entry may roll: the new segment is named after
        // `next_seq`, which equals the active segment's base until its first entry. A segment
        // with no entry can still be full of head records (reopened after a crash during a roll,
        // then drained); rolling it would reopen its own file with truncation and list it twice,
        // and reclaiming would delete the file holding the new entry.
        if seg_base < self.next_seq
            && used > FILE_HEADER_LEN as u64
            && used.saturating_add(record_len) > self.cfg.segment_bytes
        {
            self.roll()?;
        }
        let (seg_len, seg_base) = self.active_segment()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let offset = seg_len + self.buf.len() as u64;
        encode_record(&mut self.buf, Kind::Entry, 0, seq, time_ms, payload);
        self.index.push_back(Slot {
            seq,
            segment: seg_base,
            offset,
            len: u32::try_from(len).unwrap_or(u32::MAX),
            time_ms,
            corrupt: false,
        });
        self.live_bytes += len;
        self.pending.enqueued += 1;
        if self.buf.len() > FLUSH_THRESHOLD {
            self.flush_buf()?;
        }
        Ok(Enqueued::new(seq, dropped))
    }

    fn active_segment(&self) -> Result<(u64, u64)> {
        self.segments
            .back()
            .map(|s| (s.len, s.base))
            .ok_or(Error::Failed("no active segment".into()))
    }

    fn finish(&mut self, seq: u64, quarantine: bool) -> Result<()> {
        let head = self.index.front().copied();
        let Some(slot) = head.filter(|s| s.seq == seq) else {
            return Err(Error::NotHead {
                seq,
                head: head.map(|s| s.seq),
            });
        };
        if quarantine {
            let raw = self.read_raw(&slot)?;
            self.write_quarantine(
                Some(slot.seq),
                slot.time_ms,
                QuarantineReason::Unreadable,
                &raw,
            )?;
        } else {
            self.pending.removed += 1;
        }
        self.pop_front();
        Ok(())
    }

    fn pop_front(&mut self) -> Option<Slot> {
        let s = self.index.pop_front()?;
        self.live_bytes -= u64::from(s.len);
        Some(s)
    }

    /// Appends a head record: everything before the current head has been consumed.
    pub(crate) fn write_head_record(&mut self) {
        let head = self.index.front().map_or(self.next_seq, |s| s.seq);
        encode_record(&mut self.buf, Kind::Head, 0, head, 0, &[]);
    }

    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .back_mut()
            .ok_or(Error::Failed("no active segment".into()))?;
        // Set before the write: a failed write may still have put part of the buffer down.
        self.unsynced = true;
        self.fs
            .append(&seg.name, &self.buf)
            .map_err(Error::io("appending records"))?;
        seg.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the buffer out, and fsyncs if `sync` (and anything is unsynced).
    pub(crate) fn commit(&mut self, sync: bool) -> Result<()> {
        self.flush_buf()?;
        if sync && self.unsynced {
            if let Some(seg) = self.segments.back() {
                self.fsync.data(
                    &mut *self.fs,
                    &seg.name,
                    &mut self.pending,
                    "syncing a segment",
                )?;
                // A segment deleted under the queue (its directory removed, say) took the
                // batch into a file no open finds: "not done", however the fsync went. One
                // `fstat` per batch.
                let op = "checking a segment after a write";
                if !self.fs.still_linked(&seg.name).map_err(Error::io(op))? {
                    return Err(Error::Io {
                        op,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the segment was deleted (or the queue directory removed) while \
                             the queue was open",
                        ),
                    });
                }
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Starts a new segment at the next sequence number.
    fn roll(&mut self) -> Result<()> {
        // The old segment's records must be durable on their own: the batch's final fsync only
        // covers the new file.
        self.commit(true)?;
        self.create_segment(self.next_seq)
    }

    pub(crate) fn create_segment(&mut self, base: u64) -> Result<()> {
        // Opening with truncation an existing segment's name would destroy its records.
        if self.segments.back().is_some_and(|s| s.base >= base) {
            return Err(Error::Failed(format!(
                "refusing to create segment {base} at or below the newest one"
            )));
        }
        let name = segment_name(base);
        // Recorded before the file exists, so a failure part-way is cut back too.
        self.mark.created.push(base);
        self.fs
            .create(&name)
            .map_err(Error::io("creating a segment"))?;
        self.fs
            .append(&name, &encode_file_header(SEGMENT_MAGIC, base))
            .map_err(Error::io("writing a segment header"))?;
        self.fsync.data(
            &mut *self.fs,
            &name,
            &mut self.pending,
            "syncing a new segment",
        )?;
        self.sync_dir()?;
        self.segments.push_back(Segment {
            base,
            name,
            len: FILE_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// fsyncs the directory, so created, truncated or removed files survive a crash.
    pub(crate) fn sync_dir(&mut self) -> Result<()> {
        self.fsync.dir(
            &mut *self.fs,
            &mut self.pending,
            "syncing the queue directory",
        )
    }

    /// Deletes segments whose entries have all been consumed. The newest segment is never
    /// deleted: it is where appends go.
    pub(crate) fn reclaim(&mut self) -> Result<()> {
        let head = self.index.front().map_or(self.next_seq, |s| s.seq);
        let mut removed = false;
        while self.segments.len() >= 2 && self.segments[1].base <= head {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            if self
                .reader
                .as_ref()
                .is_some_and(|r| r.segment() == seg.base)
            {
                self.reader = None;
            }
            match self.fs.remove(&seg.name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing a consumed segment")(e)),
            }
            tracing::debug!(base = seg.base, "paho-queue: reclaimed segment");
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Makes sure `self.head` holds the first live entry, quarantining entries that fail their
    /// checksum on the way (never handing them out as data).
    pub(crate) fn load_head(&mut self) -> Result<()> {
        let mut moved = false;
        loop {
            let Some(slot) = self.index.front().copied() else {
                self.head = None;
                break;
            };
            if self.head.as_ref().is_some_and(|h| h.seq() == slot.seq) {
                break;
            }
            if !slot.corrupt {
                if let Some(payload) = self.read_verified(&slot)? {
                    self.head = Some(Entry::new(slot.seq, slot.time_ms, payload));
                    break;
                }
            }
            let raw = self.read_raw(&slot)?;
            self.write_quarantine(
                Some(slot.seq),
                slot.time_ms,
                QuarantineReason::Checksum,
                &raw,
            )?;
            self.pop_front();
            moved = true;
        }
        if moved {
            self.write_head_record();
            self.commit(true)?;
        }
        Ok(())
    }

    /// The reader of `segment` and the file system to read it with.
    fn reader_for(&mut self, segment: u64) -> (&mut SegmentReader, &mut dyn Fs) {
        if self.reader.as_ref().is_some_and(|r| r.segment() != segment) {
            self.reader = None;
        }
        let reader = self
            .reader
            .get_or_insert_with(|| SegmentReader::new(segment_name(segment), segment));
        (reader, &mut *self.fs)
    }

    /// Reads the record at `slot`. `Ok(None)` if its header or payload does not match.
    fn read_verified(&mut self, slot: &Slot) -> Result<Option<Bytes>> {
        let (r, fs) = self.reader_for(slot.segment);
        let mut h = [0u8; RECORD_HEADER_LEN];
        r.read_exact_at(fs, slot.offset, &mut h)
            .map_err(Error::io("reading the head record"))?;
        let Some(header) = decode_record_header(&h) else {
            return Ok(None);
        };
        if header.kind != Kind::Entry || header.seq != slot.seq || header.len != slot.len {
            return Ok(None);
        }
        // `slot.len` came from a checksummed header that fit in the file, or from our own
        // append, and is at most MAX_ENTRY_BYTES: safe to allocate.
        let mut payload = vec![0u8; slot.len as usize];
        r.read_exact_at(fs, slot.offset + RECORD_HEADER_LEN as u64, &mut payload)
            .map_err(Error::io("reading the head payload"))?;
        if crc32fast::hash(&payload) != header.data_crc {
            return Ok(None);
        }
        Ok(Some(Bytes::from(payload)))
    }

    /// Reads the payload bytes at `slot` as stored, without verifying them (for quarantine).
    fn read_raw(&mut self, slot: &Slot) -> Result<Vec<u8>> {
        self.flush_buf()?;
        let (r, fs) = self.reader_for(slot.segment);
        r.read_up_to_at(
            fs,
            slot.offset + RECORD_HEADER_LEN as u64,
            u64::from(slot.len),
        )
        .map_err(Error::io("reading a record"))
    }

    /// Appends `data` to the quarantine file and fsyncs it, then reports it. Called before the
    /// entry's removal is written, so the bytes are safe before they leave the queue.
    pub(crate) fn write_quarantine(
        &mut self,
        seq: Option<u64>,
        time_ms: u64,
        reason: QuarantineReason,
        data: &[u8],
    ) -> Result<()> {
        if !self.quarantine_open {
            let len = self
                .fs
                .len(QUARANTINE_FILE)
                .map_err(Error::io("reading quarantine metadata"))?;
            if len.is_none() {
                self.fs
                    .create(QUARANTINE_FILE)
                    .map_err(Error::io("creating the quarantine file"))?;
            }
            self.quarantine_len = len.unwrap_or(0);
            if self.quarantine_len == 0 {
                self.fs
                    .append(QUARANTINE_FILE, &encode_file_header(QUARANTINE_MAGIC, 0))
                    .map_err(Error::io("writing the quarantine header"))?;
                self.quarantine_len = FILE_HEADER_LEN as u64;
                self.sync_dir()?;
            }
            self.quarantine_open = true;
            // Opened by this batch: a cut-back goes back to here.
            self.mark.quarantine.get_or_insert(self.quarantine_len);
        }
        let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + data.len().min(1 << 20));
        // A garbled range can in theory exceed the record limit: split it.
        let chunk = usize::try_from(MAX_ENTRY_BYTES).unwrap_or(usize::MAX);
        let mut parts = data.chunks(chunk).peekable();
        if parts.peek().is_none() {
            encode_record(
                &mut rec,
                Kind::Quarantined,
                reason.code(),
                seq.unwrap_or(UNKNOWN_SEQ),
                time_ms,
                &[],
            );
        }
        for part in parts {
            encode_record(
                &mut rec,
                Kind::Quarantined,
                reason.code(),
                seq.unwrap_or(UNKNOWN_SEQ),
                time_ms,
                part,
            );
        }
        // Counted before the write: a failed write may still have put part of it down.
        self.quarantine_len += rec.len() as u64;
        self.fs
            .append(QUARANTINE_FILE, &rec)
            .map_err(Error::io("writing the quarantine file"))?;
        self.fsync.data(
            &mut *self.fs,
            QUARANTINE_FILE,
            &mut self.pending,
            "syncing the quarantine file",
        )?;
        self.pending.quarantined += 1;
        self.pending.reports.push(Report::Quarantined {
            seq,
            reason,
            len: data.len() as u64,
        });
        Ok(())
    }

    /// Publishes the new state to async callers, then answers them. The state is updated
    /// before any answer is sent, so a caller whose `finish` returned sees the new head.
    pub(crate) fn publish(&mut self, answers: Vec<Answer>, end: &BatchEnd) {
        let pending = std::mem::take(&mut self.pending);
        let made_room = pending.removed + pending.quarantined + pending.dropped > 0;
        {
            let mut s = lock(&self.shared);
            for a in &answers {
                if let Answer::Enqueued {
                    reserved: Some(len),
                    ..
                } = a
                {
                    s.reserved_entries = s.reserved_entries.saturating_sub(1);
                    s.reserved_bytes = s.reserved_bytes.saturating_sub(*len);
                }
            }
            s.stats.fsyncs += pending.fsyncs;
            s.stats.enqueued += pending.enqueued;
            s.stats.removed += pending.removed;
            s.stats.quarantined += pending.quarantined;
            s.stats.dropped += pending.dropped;
            for r in pending.reports {
                if s.reports.push(r) {
                    s.stats.reports_discarded += 1;
                }
            }
            if let Some(msg) = &self.failed {
                s.failed = Some(msg.clone());
                s.head = None;
                s.non_empty.wake_all();
                s.space.wake_all();
            } else {
                s.entries = self.index.len() as u64;
                s.bytes = self.live_bytes;
                s.head = self.head.as_ref().map(Entry::clone_entry);
                if s.entries > 0 {
                    s.non_empty.wake_all();
                }
                if made_room {
                    s.space.wake_all();
                }
            }
        }
        for a in answers {
            match a {
                // A caller that stopped waiting has nobody to tell.
                Answer::Enqueued { reply, result, .. } => {
                    let _ = reply.send(self.final_result(result, end));
                }
                Answer::Done { reply, result } => {
                    let _ = reply.send(self.final_result(result, end));
                }
            }
        }
    }

    /// The answer for one operation of a batch that ended as `end`.
    ///
    /// - Committed: as the operation itself went (a later housekeeping failure does not undo
    ///   a durable operation).
    /// - Cut back: an operation that succeeded in memory failed with its batch; its caller
    ///   gets the I/O error that failed the batch. Nothing of it is on disk.
    /// - Unknown: every operation that reached the disk (it succeeded in memory, or its own
    ///   write failed part-way) may or may not be found later: [`Error::OutcomeUnknown`].
    ///   Operations refused without touching the disk keep their own error.
    fn final_result<T>(&self, result: Result<T>, end: &BatchEnd) -> Result<T> {
        let batch_error = || match &self.batch_error {
            Some((op, kind, text)) => format!("{op}: {}", std::io::Error::new(*kind, text.clone())),
            None => self.failed.clone().unwrap_or_default(),
        };
        match (end, result) {
            (BatchEnd::Committed, r) => r,
            (BatchEnd::CutBack, Err(e)) => Err(e),
            (BatchEnd::CutBack, Ok(_)) => Err(match &self.batch_error {
                Some((op, kind, text)) => Error::Io {
                    op,
                    source: std::io::Error::new(*kind, text.clone()),
                },
                None => Error::Failed(self.failed.clone().unwrap_or_default()),
            }),
            (BatchEnd::Unknown { op, kind, text }, Ok(_) | Err(Error::Io { .. })) => {
                Err(Error::OutcomeUnknown {
                    failure: batch_error(),
                    op,
                    source: std::io::Error::new(*kind, text.clone()),
                })
            }
            (BatchEnd::Unknown { .. }, Err(e)) => Err(e),
        }
    }
}

/// Adds a command to a batch; a test's [`Command::Many`] joins the batch as its parts, so a
/// test can make a batch of exactly the commands it wants.
fn push_command(batch: &mut Vec<Command>, cmd: Command) {
    match cmd {
        #[cfg(test)]
        Command::Many(cmds) => batch.extend(cmds),
        cmd => batch.push(cmd),
    }
}
