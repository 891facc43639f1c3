//! The writer thread: the only code that touches a store's files.
//!
//! Callers enqueue requests on a channel and await a oneshot reply. The thread takes every
//! request waiting on the channel (up to a batch limit), stages them against the index, appends
//! their records to the log with one write, fsyncs once, and only then applies them to the
//! index and answers all of them. That is group commit: with 64 concurrent writers one fsync
//! serves many operations. A batch that fails is cut back out of the log before it is answered
//! (see `Writer::commit`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::fs::Fs;
use super::meta;
use super::record::{self, Record, HEADER_LEN};
use super::{FileStoreOptions, Shared, StoreIdentity};
use crate::store::{check_put, EntryKind, Index, Key, QuarantineReport, StoredEntry};
use crate::Error;

pub(super) const LOG: &str = "log";
const LOG_COMPACT: &str = "log.compact";
const META: &str = "meta";
const META_TMP: &str = "meta.tmp";
const QUARANTINE_PREFIX: &str = "quarantine-";
/// Quarantine files: `quarantine-NNNNNN.bin`, or `.pending` while the open that wrote it has
/// not succeeded yet (see `Writer::report_pending`).
const SAVED: &str = ".bin";
const PENDING: &str = ".pending";
/// Part of the reason reported for an unparseable end of the log, which tests look for.
pub(super) const TAIL: &str = "unparseable end of the log";

pub(super) type Reply = oneshot::Sender<Result<(), Error>>;

/// One operation for the writer thread.
#[derive(Debug)]
pub(super) enum Request {
    Put {
        key: Key,
        kind: EntryKind,
        value: Bytes,
        reply: Reply,
    },
    Delete {
        key: Key,
        reply: Reply,
    },
    Reset {
        reply: Reply,
    },
    Quarantine {
        key: Key,
        reason: String,
        reply: Reply,
    },
}

pub(super) struct Writer {
    fs: Box<dyn Fs>,
    shared: Arc<Shared>,
    options: FileStoreOptions,
    log_len: u64,
    next_quarantine: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("log_len", &self.log_len)
            .finish_non_exhaustive()
    }
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

impl Writer {
    pub(super) fn new(fs: Box<dyn Fs>, shared: Arc<Shared>, options: FileStoreOptions) -> Self {
        Writer {
            fs,
            shared,
            options,
            log_len: 0,
            next_quarantine: 0,
            buf: Vec::new(),
        }
    }

    fn sync(&mut self, name: &str) -> Result<(), Error> {
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fs.sync(name).map_err(io("syncing a file"))
    }

    fn sync_dir(&mut self) -> Result<(), Error> {
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fs.sync_dir().map_err(io("syncing the directory"))
    }

    /// Locks the directory, checks or writes the identity file, replays the log, and sets
    /// corrupt parts aside.
    pub(super) fn open(&mut self, identity: &StoreIdentity) -> Result<(), Error> {
        // First, before reading anything: another process may be appending to the log.
        if !self
            .fs
            .try_lock()
            .map_err(io("locking the store directory"))?
        {
            return Err(Error::Locked(self.fs.path_of("")));
        }
        let names = self.fs.list().map_err(io("listing the store directory"))?;
        self.next_quarantine = names
            .iter()
            .filter_map(|n| {
                let n = n.strip_prefix(QUARANTINE_PREFIX)?;
                n.strip_suffix(SAVED).or_else(|| n.strip_suffix(PENDING))
            })
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        // Bytes an earlier open set aside and then failed (so never reported): report them now.
        let mut pending: Vec<SetAside> = Vec::new();
        let mut earlier: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(QUARANTINE_PREFIX) && n.ends_with(PENDING))
            .collect();
        earlier.sort();
        for name in earlier {
            let len = self
                .fs
                .read(name)
                .map_err(io("reading a quarantine file"))?
                .map_or(0, |b| b.len());
            pending.push(SetAside {
                stem: name[..name.len() - PENDING.len()].to_owned(),
                reason: "log bytes set aside by an earlier open that failed before it could \
                         report them"
                    .to_owned(),
                len,
            });
        }

        match self
            .fs
            .read(META)
            .map_err(io("reading the identity file"))?
        {
            Some(bytes) => {
                let found = meta::decode(&bytes).map_err(|reason| Error::CorruptMeta {
                    path: self.fs.path_of(META),
                    reason,
                })?;
                if &found != identity {
                    return Err(Error::IdentityMismatch {
                        dir: self.fs.path_of(""),
                        expected_server: identity.server().to_owned(),
                        expected_client: identity.client_id().to_owned(),
                        found_server: found.server().to_owned(),
                        found_client: found.client_id().to_owned(),
                    });
                }
            }
            None => {
                if names.iter().any(|n| n == LOG) {
                    // The identity file is written before the log ever is, so a log without one
                    // was not made by us (or its identity was deleted): refuse to guess.
                    return Err(Error::CorruptMeta {
                        path: self.fs.path_of(META),
                        reason: "missing, but a log exists",
                    });
                }
                self.fs
                    .write_new(META_TMP, &meta::encode(identity))
                    .map_err(io("writing the identity file"))?;
                self.sync(META_TMP)?;
                self.fs
                    .rename(META_TMP, META)
                    .map_err(io("renaming the identity file"))?;
                self.sync_dir()?;
            }
        }

        let file = match self.fs.read(LOG).map_err(io("reading the log"))? {
            Some(v) => Bytes::from(v),
            None => {
                self.fs
                    .write_new(LOG, &[])
                    .map_err(io("creating the log"))?;
                self.sync(LOG)?;
                self.sync_dir()?;
                Bytes::new()
            }
        };
        let replay = record::replay(&file);
        self.log_len = file.len() as u64;
        *self.shared.lock_index() = replay.index;

        for range in &replay.corrupt {
            let stem = self.write_quarantine(&file[range.clone()], PENDING)?;
            tracing::warn!(
                offset = range.start,
                len = range.len(),
                "session store: corrupt log stretch quarantined"
            );
            pending.push(SetAside {
                stem,
                reason: format!(
                    "log bytes {}..{} are not a valid record (checksum or framing)",
                    range.start, range.end
                ),
                len: range.len(),
            });
        }
        if let Some(from) = replay.torn_from {
            // An end of the log that does not parse. Usually the tail of an append that a crash
            // cut short (never acknowledged), but the same bytes are what damage to the magic
            // or length of the newest, acknowledged, record looks like: nothing tells the two
            // apart. So the bytes are saved and reported first, fsynced before the truncation
            // can be, and only then cut off (so that appends go on after valid records). A real
            // torn append costs a quarantine file; damage is never a silent loss.
            let stem = self.write_quarantine(&file[from..], PENDING)?;
            tracing::warn!(
                offset = from,
                len = file.len() - from,
                "session store: unparseable log tail quarantined, then truncated"
            );
            pending.push(SetAside {
                stem,
                reason: format!(
                    "log bytes {from}..{}: {TAIL}, set aside and truncated (an append torn by a \
                     crash, never acknowledged, or damage to the newest record)",
                    file.len()
                ),
                len: file.len() - from,
            });
            self.fs
                .truncate(LOG, from as u64)
                .map_err(io("truncating a torn log tail"))?;
            self.sync(LOG)?;
            self.log_len = from as u64;
        }
        if !replay.corrupt.is_empty() {
            // Rewrite without the corrupt stretches, so they are not found again next time.
            self.compact()?;
        }
        self.report_pending(pending);
        Ok(())
    }

    /// Publishes the reports of what opening set aside, now that opening cannot fail any more.
    ///
    /// Opening saves damage as `.pending` files, then truncates or rewrites the log. Had it
    /// failed after that, its error would have been the only answer, and the next open, finding
    /// a clean log, would have nothing to report: so a `.pending` file is reported by every open
    /// until one succeeds, and only then renamed to `.bin`. A failure of that rename (or of the
    /// directory fsync after it) is no reason to fail an open that has done everything else: at
    /// worst the bytes are reported again by the next open.
    fn report_pending(&mut self, pending: Vec<SetAside>) {
        let mut renamed = false;
        for p in pending {
            let (from, to) = (format!("{}{PENDING}", p.stem), format!("{}{SAVED}", p.stem));
            let name = match self.fs.rename(&from, &to) {
                Ok(()) => {
                    renamed = true;
                    to
                }
                Err(e) => {
                    tracing::warn!(file = from, error = %e, "session store: keeping a quarantine file pending");
                    from
                }
            };
            let report = QuarantineReport::new(None, p.reason, Some(self.fs.path_of(&name)), p.len);
            self.shared.lock_quarantined().push(report);
        }
        if renamed {
            if let Err(e) = self.sync_dir() {
                tracing::warn!(error = %e, "session store: quarantine files may be reported again");
            }
        }
    }

    /// Writes `bytes` to a new quarantine file (fsynced, with its directory entry) named with
    /// `suffix`; returns the name without the suffix.
    fn write_quarantine(&mut self, bytes: &[u8], suffix: &str) -> Result<String, Error> {
        let stem = format!("{QUARANTINE_PREFIX}{:06}", self.next_quarantine);
        // Counted before the write: a failed write may leave part of a file under this name,
        // which is never overwritten.
        self.next_quarantine += 1;
        let name = format!("{stem}{suffix}");
        self.fs
            .write_new(&name, bytes)
            .map_err(io("writing a quarantine file"))?;
        self.sync(&name)?;
        self.sync_dir()?;
        // Written once and never appended to: keeping its handle would hold one descriptor
        // per quarantined entry for the store's lifetime.
        self.fs.close(&name);
        Ok(stem)
    }

    fn save_quarantine(
        &mut self,
        key: Option<Key>,
        reason: String,
        bytes: &[u8],
    ) -> Result<QuarantineReport, Error> {
        let stem = self.write_quarantine(bytes, SAVED)?;
        Ok(QuarantineReport::new(
            key,
            reason,
            Some(self.fs.path_of(&format!("{stem}{SAVED}"))),
            bytes.len(),
        ))
    }

    /// Serves requests until every handle is dropped.
    pub(super) fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut bytes = value_len(&first);
            let mut batch = vec![first];
            // Bounded by count and by bytes, so a burst of large publishes does not make one
            // huge write buffer.
            while batch.len() < self.options.max_batch && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += value_len(&r);
                        batch.push(r);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.process(batch);
            if self.buf.capacity() > MAX_BATCH_BYTES {
                self.buf = Vec::new();
            }
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let n = batch.len() as u64;
        let mut replies: Vec<(Reply, Result<(), Error>)> = Vec::with_capacity(batch.len());
        if self.shared.failed.load(Ordering::Acquire) {
            for r in batch {
                replies.push((reply_of(r), Err(Error::StoreFailed)));
            }
            answer(replies);
            return;
        }
        let mut to_quarantine: Vec<(StoredEntry, String)> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        self.buf.clear();
        {
            // The batch is staged against the index without changing it: reads are served from
            // the index, and it must never show an operation that has not reached the disk, or
            // one of a batch that failed.
            let index = self.shared.lock_index();
            let mut stage = Stage::new(&index);
            for r in batch {
                match r {
                    Request::Put {
                        key,
                        kind,
                        value,
                        reply,
                    } => {
                        let res = check_put(key, kind, &value).map(|()| {
                            let seq = stage.put(key, kind, value.clone());
                            records.push(Record::Put {
                                seq,
                                key,
                                kind,
                                value,
                            });
                        });
                        replies.push((reply, res));
                    }
                    Request::Delete { key, reply } => {
                        // Deleting an absent key changes nothing, so it writes nothing.
                        if stage.delete(key).is_some() {
                            records.push(Record::Delete { key });
                        }
                        replies.push((reply, Ok(())));
                    }
                    Request::Reset { reply } => {
                        stage.reset();
                        records.push(Record::Reset);
                        replies.push((reply, Ok(())));
                    }
                    Request::Quarantine { key, reason, reply } => {
                        if let Some(entry) = stage.delete(key) {
                            records.push(Record::Delete { key });
                            to_quarantine.push((entry, reason));
                        }
                        replies.push((reply, Ok(())));
                    }
                }
            }
        }
        for r in &records {
            record::encode(&mut self.buf, r);
        }
        let mut reports = Vec::with_capacity(to_quarantine.len());
        let result = self.commit(to_quarantine, &mut reports);
        self.shared.operations.fetch_add(n, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                {
                    let mut index = self.shared.lock_index();
                    for r in records {
                        record::apply(&mut index, r);
                    }
                }
                self.shared.lock_quarantined().extend(reports);
                answer(replies);
            }
            Err(failure) => {
                let e = match failure {
                    Failure::NotDone(e) => e,
                    Failure::Unknown(cause) => {
                        // The quarantine files are whole and fsynced, and the log may or may
                        // not still hold their entries: report where the bytes are.
                        self.shared.lock_quarantined().extend(reports);
                        Error::outcome_unknown(cause)
                    }
                };
                self.fail(&e);
                answer(
                    replies
                        .into_iter()
                        // A put refused before it reached the log keeps its own error: it is
                        // "not done" whatever happened to the batch.
                        .map(|(reply, res)| (reply, res.and(Err(e.clone()))))
                        .collect(),
                );
                return;
            }
        }
        // Compaction comes after the answers: the batch is durable in the log already, and a
        // failed compaction must not tell its callers they failed (they would republish what
        // a reopen then resends). It fails the store for the operations after it instead.
        if let Err(e) = self.maybe_compact() {
            self.fail(&e);
        }
    }

    /// After a failed write or fsync the files' contents are unknown (the kernel may have
    /// dropped the dirty pages), so nothing more is written until a reopen replays what really
    /// reached the disk.
    fn fail(&mut self, e: &Error) {
        tracing::error!(error = %e, "session store failed; refusing further operations");
        self.shared.failed.store(true, Ordering::Release);
    }

    /// Makes the batch in `self.buf` durable, after saving the entries it quarantines (their
    /// reports go to `reports`).
    ///
    /// On failure the batch is cut back out of the log (truncated to its length before the
    /// batch, and fsynced), because its callers are told it failed, and a caller told so may
    /// publish again: if the bytes stayed, a reopen in the same boot (the page cache survives
    /// a process crash) or after a failed fsync that did reach the disk would replay them, and
    /// the engine would resend the first copy too. Only if the cut-back fails as well is the
    /// outcome unknown.
    fn commit(
        &mut self,
        to_quarantine: Vec<(StoredEntry, String)>,
        reports: &mut Vec<QuarantineReport>,
    ) -> Result<(), Failure> {
        // Quarantined bytes are saved before the delete that drops them from the log becomes
        // durable, so a crash in between leaves the entry in both places, never in neither.
        // A failure here has not touched the log: the entries are all still there.
        for (entry, reason) in to_quarantine {
            let report = self
                .save_quarantine(Some(entry.key()), reason, entry.value())
                .map_err(Failure::NotDone)?;
            reports.push(report);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self
            .fs
            .append(LOG, &buf)
            .map_err(io("appending to the log"))
            .and_then(|()| self.sync(LOG))
            .and_then(|()| self.check_linked());
        let len = buf.len() as u64;
        self.buf = buf;
        match res {
            Ok(()) => {
                self.log_len += len;
                Ok(())
            }
            Err(e) => match self.cut_back() {
                Ok(()) => Err(Failure::NotDone(e)),
                Err(cut) => {
                    tracing::error!(
                        error = %e,
                        cut_back = %cut,
                        "session store: a failed batch could not be cut back out of the log; \
                         its outcome is unknown until a reopen"
                    );
                    Err(Failure::Unknown(e))
                }
            },
        }
    }

    /// Fails if the log was deleted under the store (its directory removed, say): the batch
    /// is then in a file no open will find, so it is "not done" however the fsync went, and
    /// the store stops before it acknowledges more into the void. One `fstat` per batch.
    fn check_linked(&mut self) -> Result<(), Error> {
        match self.fs.still_linked(LOG) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::io(
                "checking the log after a write",
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the log file was deleted (or its directory removed) while the store was open",
                ),
            )),
            Err(e) => Err(Error::io("checking the log after a write", e)),
        }
    }

    /// Cuts the log back to its length before the current batch, durably.
    fn cut_back(&mut self) -> Result<(), Error> {
        self.fs
            .truncate(LOG, self.log_len)
            .map_err(io("cutting a failed batch out of the log"))?;
        self.sync(LOG)
    }

    fn maybe_compact(&mut self) -> Result<(), Error> {
        let live = {
            let index = self.shared.lock_index();
            index.live_bytes() + (index.len() * (HEADER_LEN + 13)) as u64
        };
        if self.log_len >= self.options.compact_min_bytes && self.log_len > live.saturating_mul(4) {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the log with only the live entries: write a new file, fsync it, rename it over
    /// the log, fsync the directory. A crash at any point leaves either the old log or the new
    /// one, and both hold the same live entries.
    fn compact(&mut self) -> Result<(), Error> {
        let entries = self.shared.lock_index().list();
        let mut out = Vec::new();
        for e in entries {
            record::encode(
                &mut out,
                &Record::Put {
                    seq: e.seq(),
                    key: e.key(),
                    kind: e.kind(),
                    value: e.value().clone(),
                },
            );
        }
        self.fs
            .write_new(LOG_COMPACT, &out)
            .map_err(io("writing the compacted log"))?;
        self.sync(LOG_COMPACT)?;
        self.fs
            .rename(LOG_COMPACT, LOG)
            .map_err(io("replacing the log"))?;
        self.sync_dir()?;
        self.log_len = out.len() as u64;
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(bytes = out.len(), "session store: log compacted");
        Ok(())
    }
}

/// A quarantine file written by opening, to be reported once opening has succeeded.
#[derive(Debug)]
struct SetAside {
    /// The file name without its suffix.
    stem: String,
    reason: String,
    len: usize,
}

/// Why a batch failed.
#[derive(Debug)]
enum Failure {
    /// Nothing of the batch is in the log (it never got there, or it was cut back out).
    NotDone(Error),
    /// The batch may be in the log, whole or in part: every operation in it may have taken
    /// effect. Its quarantine files were saved.
    Unknown(Error),
}

/// A batch applied to a view of the index, leaving the index itself alone until the batch is
/// durable: what each operation finds and the sequence numbers its puts get.
struct Stage<'a> {
    index: &'a Index,
    /// Keys the batch put (`Some`) or removed (`None`) so far.
    touched: HashMap<Key, Option<StoredEntry>>,
    /// Whether the batch reset the store: every key not touched since is absent.
    reset: bool,
    next_seq: u64,
}

impl<'a> Stage<'a> {
    fn new(index: &'a Index) -> Self {
        Stage {
            index,
            touched: HashMap::new(),
            reset: false,
            next_seq: index.next_seq(),
        }
    }

    fn get(&self, key: Key) -> Option<StoredEntry> {
        match self.touched.get(&key) {
            Some(e) => e.clone(),
            None if self.reset => None,
            None => self.index.get(key),
        }
    }

    /// As [`Index::put`]: a present key keeps its sequence number.
    fn put(&mut self, key: Key, kind: EntryKind, value: Bytes) -> u64 {
        let seq = match self.get(key) {
            Some(e) => e.seq(),
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                seq
            }
        };
        self.touched
            .insert(key, Some(StoredEntry::new(key, kind, seq, value)));
        seq
    }

    fn delete(&mut self, key: Key) -> Option<StoredEntry> {
        let entry = self.get(key)?;
        self.touched.insert(key, None);
        Some(entry)
    }

    fn reset(&mut self) {
        self.reset = true;
        self.touched.clear();
    }
}

/// Past this many bytes of values a batch is committed without waiting for more requests.
const MAX_BATCH_BYTES: usize = 8 << 20;

fn value_len(r: &Request) -> usize {
    match r {
        Request::Put { value, .. } => value.len(),
        _ => 0,
    }
}

fn reply_of(r: Request) -> Reply {
    match r {
        Request::Put { reply, .. }
        | Request::Delete { reply, .. }
        | Request::Reset { reply }
        | Request::Quarantine { reply, .. } => reply,
    }
}

fn answer(replies: Vec<(Reply, Result<(), Error>)>) {
    for (reply, res) in replies {
        // A caller that dropped its future does not want the answer; that is not an error.
        let _ = reply.send(res);
    }
}
