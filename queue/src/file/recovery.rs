//! Opening a queue directory: find the segments, check every record, rebuild the index, and
//! deal with damage (quarantine it, report it, and truncate a torn tail).
//!
//! Opening reads every segment once, so it costs O(bytes on disk); after that no operation
//! rescans the directory.

use std::collections::HashSet;

use super::format::{
    decode_file_header, encode_file_header, Kind, Note, FILE_HEADER_LEN, MAX_SEQ,
    RECORD_HEADER_LEN, SEGMENT_MAGIC,
};
use super::fs::create_dir_durably;
use super::scan::{scan, Item};
use super::worker::{parse_segment_name, Segment, Slot, Worker};
use crate::entry::{QuarantineReason, Report};
use crate::error::{Error, Result};

/// Damage that stays on disk (it is not a torn tail to cut off), to be quarantined once every
/// segment, and so every [`Note`], has been read.
#[derive(Debug)]
struct Kept {
    name: String,
    /// The byte range of the segment to quarantine.
    note: Note,
    seq: Option<u64>,
    time_ms: u64,
}

impl Worker {
    /// Recovers the state of the directory. On success the worker is ready to run and its state
    /// (entries, head, reports of any damage) has been published.
    pub(crate) fn recover(&mut self) -> Result<()> {
        let dir = self.cfg.dir.clone();
        create_dir_durably(&mut *self.fs, &dir)
            .map_err(Error::io("creating the queue directory"))?;
        self.fs.lock()?;
        let found = self.list_segments()?;
        if found.is_empty() {
            self.create_segment(1)?;
            self.next_seq = 1;
        } else {
            self.recover_segments(found)?;
        }
        let before = self.segments.len();
        self.reclaim()?;
        // A head record in a segment just reclaimed may have been the only record of how far
        // the queue was consumed (a head beyond the next segment's base, which no queue writes
        // but a damaged directory can hold; found by the `queue_open` fuzz target): write it
        // again in the active segment, or the next open reports the consumed numbers missing.
        let head = self.index.front().map_or(self.next_seq, |s| s.seq);
        if self.segments.len() < before && self.segments.front().is_some_and(|s| s.base < head) {
            self.write_head_record();
            self.commit(true)?;
        }
        self.load_head()?;
        self.publish(Vec::new(), &super::worker::BatchEnd::Committed);
        tracing::debug!(
            dir = %self.cfg.dir.display(),
            entries = self.index.len(),
            next_seq = self.next_seq,
            "paho-queue: opened"
        );
        Ok(())
    }

    /// Segment files sorted by the base sequence number in their names (never by mtime).
    fn list_segments(&mut self) -> Result<Vec<(u64, String)>> {
        let mut found = Vec::new();
        let names = self
            .fs
            .list()
            .map_err(Error::io("listing the queue directory"))?;
        for name in names {
            if let Some(base) = parse_segment_name(&name) {
                found.push((base, name));
            }
        }
        found.sort_by_key(|(base, _)| *base);
        Ok(found)
    }

    fn recover_segments(&mut self, found: Vec<(u64, String)>) -> Result<()> {
        let count = found.len();
        let mut head = 0u64;
        let mut last_seq = 0u64;
        // Sequence numbers are dense: a segment starts at the number after the last entry
        // appended before it, and entries follow one by one. A jump means entries were lost to
        // damage; remember the ranges and report those not yet consumed once the head is known.
        let mut expected: Option<u64> = None;
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        // What earlier opens already quarantined and reported, and the damage found now that
        // stays in place; see `Note`.
        let mut notes: HashSet<Note> = HashSet::new();
        let mut kept: Vec<Kept> = Vec::new();
        let bases: Vec<u64> = found.iter().map(|(base, _)| *base).collect();
        for (i, (base, name)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            // A segment holds only entries below the next segment's base: it was rolled when
            // the next entry got that number. An entry at or beyond it is out of place (not
            // written there by a queue), and believing it would let reclaiming delete the
            // segment while the entry is live (found by the `queue_open` fuzz target).
            let below = bases.get(i + 1).copied().unwrap_or(MAX_SEQ);
            match expected {
                Some(e) if base > e => gaps.push((e, base - 1)),
                _ => {}
            }
            // Sequence numbers start at 1: a segment named with base 0 (none is) must not make
            // the next segment look as if entry 0 were missing (found by `queue_open`).
            expected = Some(expected.map_or(base, |e| e.max(base)).max(1));
            let data = self
                .fs
                .read(&name)
                .map_err(Error::io("reading a segment"))?;
            let mut len = data.len() as u64;
            if decode_file_header(&data, SEGMENT_MAGIC) != Some(base) {
                // A crash between creating a segment and syncing its header leaves it short; any
                // other bad header is damage. Keep the bytes, then write a good header so later
                // opens do not report the same damage again.
                let bad = &data[..data.len().min(FILE_HEADER_LEN)];
                if !bad.is_empty() {
                    let reason = if is_last && data.len() <= FILE_HEADER_LEN {
                        QuarantineReason::TornTail
                    } else {
                        QuarantineReason::Garbled
                    };
                    self.write_quarantine(None, 0, reason, bad)?;
                }
                self.rewrite_header(&name, base)?;
                len = len.max(FILE_HEADER_LEN as u64);
            }
            let items = scan(&data, FILE_HEADER_LEN.min(data.len()));
            let mut truncate_at = None;
            let n_items = items.len();
            for (k, item) in items.into_iter().enumerate() {
                let at_tail = is_last && k + 1 == n_items;
                match item {
                    Item::Record {
                        offset,
                        header,
                        data_ok,
                    } => {
                        let start = offset as usize + RECORD_HEADER_LEN;
                        let payload = &data[start..start + header.len as usize];
                        match header.kind {
                            Kind::Head if header.seq < MAX_SEQ => {
                                match Note::decode(&header, payload) {
                                    // A note whose payload fails its checksum is ignored: the worst
                                    // outcome is quarantining and reporting its damage again.
                                    Some(note) if data_ok => {
                                        notes.insert(note);
                                    }
                                    Some(_) => {}
                                    None => head = head.max(header.seq),
                                }
                            }
                            Kind::Entry if !data_ok && at_tail => {
                                // Most likely a write torn by a crash before its fsync returned
                                // (so never acknowledged); quarantined either way.
                                self.write_quarantine(
                                    Some(header.seq),
                                    header.time_ms,
                                    QuarantineReason::TornTail,
                                    payload,
                                )?;
                                truncate_at = Some(offset);
                            }
                            Kind::Entry
                                if header.seq > last_seq
                                    && header.seq >= base
                                    && header.seq < below =>
                            {
                                last_seq = header.seq;
                                if let Some(e) = expected.filter(|e| header.seq > *e) {
                                    gaps.push((e, header.seq - 1));
                                }
                                expected = Some(header.seq + 1);
                                self.index.push_back(Slot {
                                    seq: header.seq,
                                    segment: base,
                                    offset,
                                    len: header.len,
                                    time_ms: header.time_ms,
                                    corrupt: !data_ok,
                                });
                                self.live_bytes += u64::from(header.len);
                            }
                            // An entry out of sequence order or out of its segment's range, a
                            // sequence number beyond MAX_SEQ, or a quarantine record inside a
                            // segment: not something this queue wrote there. Keep, report.
                            Kind::Entry | Kind::Head | Kind::Quarantined => kept.push(Kept {
                                name: name.clone(),
                                note: Note::Damage {
                                    segment: base,
                                    offset: start as u64,
                                    len: u64::from(header.len),
                                },
                                seq: (header.kind == Kind::Entry).then_some(header.seq),
                                time_ms: header.time_ms,
                            }),
                        }
                    }
                    Item::Damage { offset, len, tail } => {
                        if tail && is_last {
                            let bytes = &data[offset as usize..(offset + len) as usize];
                            self.write_quarantine(None, 0, QuarantineReason::TornTail, bytes)?;
                            truncate_at = Some(offset);
                        } else {
                            kept.push(Kept {
                                name: name.clone(),
                                note: Note::Damage {
                                    segment: base,
                                    offset,
                                    len,
                                },
                                seq: None,
                                time_ms: 0,
                            });
                        }
                    }
                }
            }
            if let Some(at) = truncate_at {
                // The damaged bytes are safe in quarantine (fsync'd above); cut them off so new
                // records follow the last good one.
                self.fs
                    .truncate(&name, at)
                    .map_err(Error::io("truncating a torn tail"))?;
                self.fsync.all(
                    &mut *self.fs,
                    &name,
                    &mut self.pending,
                    "syncing a truncated segment",
                )?;
                len = at;
            }
            self.segments.push_back(Segment { base, name, len });
        }

        // Segments are deleted only once consumed, so everything before the oldest one was.
        if let Some(first) = self.segments.front() {
            head = head.max(first.base);
        }
        // Damage left in place: quarantined (and fsync'd) before its note is written, so a crash
        // in between can only quarantine it twice, never lose it.
        let mut new_notes = Vec::new();
        for k in kept {
            if notes.contains(&k.note) {
                continue;
            }
            if let Note::Damage { offset, len, .. } = k.note {
                // A range recovery found in the file, so it exists and `len` is bounded by the
                // file's size.
                let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
                let n = self
                    .fs
                    .read_at(&k.name, offset, &mut bytes)
                    .map_err(Error::io("reading damage"))?;
                bytes.truncate(n);
                self.write_quarantine(k.seq, k.time_ms, QuarantineReason::Garbled, &bytes)?;
            }
            new_notes.push(k.note);
        }
        for (first, last) in gaps {
            let note = Note::Gap { first, last };
            if last >= head && !notes.contains(&note) {
                tracing::warn!(
                    first = first.max(head),
                    last,
                    "paho-queue: entries missing after damage"
                );
                self.pending.reports.push(Report::Missing {
                    first: first.max(head),
                    last,
                });
                new_notes.push(note);
            }
        }
        while self.index.front().is_some_and(|s| s.seq < head) {
            if let Some(s) = self.index.pop_front() {
                self.live_bytes -= u64::from(s.len);
            }
        }
        let last_base = self.segments.back().map_or(1, |s| s.base);
        self.next_seq = (last_seq + 1).max(last_base).max(head).max(1);

        if self.segments.is_empty() {
            return Err(Error::Failed("no segment after recovery".into()));
        }
        // Appends go to the end of the newest segment, which is where its last good record
        // ends: a torn tail was truncated above.
        for note in &new_notes {
            note.encode(&mut self.buf);
        }
        self.commit(true)
    }

    fn rewrite_header(&mut self, name: &str, base: u64) -> Result<()> {
        self.fs
            .write_at(name, 0, &encode_file_header(SEGMENT_MAGIC, base))
            .map_err(Error::io("repairing a segment header"))?;
        self.fsync.all(
            &mut *self.fs,
            name,
            &mut self.pending,
            "syncing a repaired segment header",
        )
    }
}
