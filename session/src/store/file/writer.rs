//! The writer thread: the only code that touches a store's files.
//!
//! Callers enqueue requests on a channel and await a oneshot reply. The thread takes every
//! request waiting on the channel (up to a batch limit), applies them to the index, appends
//! their records to the log with one write, fsyncs once, and only then answers all of them.
//! That is group commit: with 64 concurrent writers one fsync serves many operations.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;

use super::fs::Fs;
use super::meta;
use super::record::{self, Record, HEADER_LEN};
use super::{FileStoreOptions, Shared, StoreIdentity};
use crate::store::{check_put, EntryKind, Key, QuarantineReport, StoredEntry};
use crate::Error;

pub(super) const LOG: &str = "log";
const LOG_COMPACT: &str = "log.compact";
const META: &str = "meta";
const META_TMP: &str = "meta.tmp";
const QUARANTINE_PREFIX: &str = "quarantine-";

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
            .filter_map(|n| n.strip_prefix(QUARANTINE_PREFIX)?.strip_suffix(".bin"))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);

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
            let bytes = &file[range.clone()];
            let report = self.save_quarantine(
                None,
                format!(
                    "log bytes {}..{} are not a valid record (checksum or framing)",
                    range.start, range.end
                ),
                bytes,
            )?;
            tracing::warn!(
                offset = range.start,
                len = range.len(),
                "session store: corrupt log stretch quarantined"
            );
            self.shared.lock_quarantined().push(report);
        }
        if let Some(from) = replay.torn_from {
            // The tail of a crashed append: its operation never returned success, so it is
            // dropped (and never read back as valid).
            tracing::warn!(
                offset = from,
                len = file.len() - from,
                "session store: torn log tail truncated"
            );
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
        Ok(())
    }

    fn save_quarantine(
        &mut self,
        key: Option<Key>,
        reason: String,
        bytes: &[u8],
    ) -> Result<QuarantineReport, Error> {
        let name = format!("{QUARANTINE_PREFIX}{:06}.bin", self.next_quarantine);
        self.next_quarantine += 1;
        self.fs
            .write_new(&name, bytes)
            .map_err(io("writing a quarantine file"))?;
        self.sync(&name)?;
        self.sync_dir()?;
        // Written once and never appended to: keeping its handle would hold one descriptor
        // per quarantined entry for the store's lifetime.
        self.fs.close(&name);
        Ok(QuarantineReport::new(
            key,
            reason,
            Some(self.fs.path_of(&name)),
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
        self.buf.clear();
        {
            let mut index = self.shared.lock_index();
            for r in batch {
                match r {
                    Request::Put {
                        key,
                        kind,
                        value,
                        reply,
                    } => {
                        let res = check_put(key, kind, &value).map(|()| {
                            let seq = index.put(key, kind, value.clone());
                            record::encode(
                                &mut self.buf,
                                &Record::Put {
                                    seq,
                                    key,
                                    kind,
                                    value,
                                },
                            );
                        });
                        replies.push((reply, res));
                    }
                    Request::Delete { key, reply } => {
                        // Deleting an absent key changes nothing, so it writes nothing.
                        if index.delete(key).is_some() {
                            record::encode(&mut self.buf, &Record::Delete { key });
                        }
                        replies.push((reply, Ok(())));
                    }
                    Request::Reset { reply } => {
                        index.reset();
                        record::encode(&mut self.buf, &Record::Reset);
                        replies.push((reply, Ok(())));
                    }
                    Request::Quarantine { key, reason, reply } => {
                        if let Some(entry) = index.delete(key) {
                            record::encode(&mut self.buf, &Record::Delete { key });
                            to_quarantine.push((entry, reason));
                        }
                        replies.push((reply, Ok(())));
                    }
                }
            }
        }
        let result = self.commit(to_quarantine);
        self.shared.operations.fetch_add(n, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => answer(replies),
            Err(e) => {
                self.fail(&e);
                answer(
                    replies
                        .into_iter()
                        .map(|(reply, _)| (reply, Err(e.clone())))
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

    fn commit(&mut self, to_quarantine: Vec<(StoredEntry, String)>) -> Result<(), Error> {
        // Quarantined bytes are saved before the delete that drops them from the log becomes
        // durable, so a crash in between leaves the entry in both places, never in neither.
        for (entry, reason) in to_quarantine {
            let report = self.save_quarantine(Some(entry.key()), reason, entry.value())?;
            self.shared.lock_quarantined().push(report);
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self
            .fs
            .append(LOG, &buf)
            .map_err(io("appending to the log"))
            .and_then(|()| self.sync(LOG));
        self.log_len += buf.len() as u64;
        self.buf = buf;
        res
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
