//! The `queue_open` fuzz check: arbitrary files in a `FileQueue` directory, then open.
//!
//! Shared, unchanged, by the cargo-fuzz target (`fuzz/fuzz_targets/queue_open.rs`) and the
//! stable replay of its corpus (`queue/tests/fuzz_queue_open_corpus.rs`), which both include
//! this file (and `alloc_limit.rs`) with `#[path]`.
//!
//! The input decodes (with `arbitrary`) into segment files `seg-NNNNNNNNNNNNNNNNNNNN.q` (any
//! base; a good header, one for another base, raw bytes or none; then pieces: well-formed
//! entry, head, quarantine and note records with any fields, raw bytes, and records with one
//! bit flipped or cut short) and a `quarantine.q` of raw bytes. Well-formed records are
//! encoded here from the documented format (`queue/src/file/format.rs`) so that the fuzzer
//! gets past the checksums.
//!
//! Checked:
//! - no panic, on any thread (the I/O thread dying shows as `Error::Closed`);
//! - no single allocation above the bytes written plus [`alloc_limit::SLACK`];
//! - an open that succeeds is readable: every entry can be peeked and removed, in increasing
//!   sequence order, and the entries read plus those quarantined on the way make `len()`;
//! - damage is reported, not silent: a bit flipped or a record cut short is reported (unless
//!   it hit an entry already consumed, or the input holds notes or raw bytes that may say
//!   "already reported"); with no report at all, a directory of well-formed records and good
//!   headers yields exactly the entries a model of them holds, in order;
//! - the queue works after opening: an entry enqueued gets a higher sequence number than any
//!   read, and a reopen finds just that entry and reports nothing new.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use paho_queue::{Error, FileQueue, Finish, QuarantineReason, Queue, Report};

use crate::alloc_limit;

/// Runs one input in the (empty, existing) directory `dir`; panics on a broken invariant.
pub fn check(data: &[u8], dir: &Path) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    if std::env::var_os("PAHO_FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    run(&input, dir);
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Base {
    Small(u8),
    Any(u64),
}

impl Base {
    fn get(self) -> u64 {
        match self {
            Base::Small(b) => u64::from(b),
            Base::Any(b) => b,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Header {
    Good,
    Other(u64),
    Raw(Vec<u8>),
    Absent,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Seq {
    /// One more than the previous entry of this input (the segment's base for the first).
    Next,
    Small(u8),
    Any(u64),
}

#[derive(Debug, Clone, Arbitrary)]
enum Rec {
    Entry {
        seq: Seq,
        time_ms: u64,
        payload: Vec<u8>,
    },
    Head {
        seq: Seq,
    },
    Quarantined {
        flag: u8,
        seq: u64,
        payload: Vec<u8>,
    },
    /// A head-kind record with a flag: a recovery note, well-formed or not.
    Note {
        flag: u8,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Record(Rec),
    /// A well-formed record with bit `bit % (8 * len)` flipped.
    Flipped(Rec, u16),
    /// A well-formed record cut to `keep % len` bytes.
    Cut(Rec, u16),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Segment {
    base: Base,
    header: Header,
    pieces: Vec<Piece>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    segments: Vec<Segment>,
    quarantine: Option<Vec<u8>>,
}

// ----- the documented format --------------------------------------------------------------------

const SEGMENT_MAGIC: [u8; 8] = *b"PAHOQSEG";
const RECORD_MAGIC: u32 = 0x5051_5243;
const HEADER: usize = 24;
const RECORD_HEADER: usize = 36;
/// Mirrors `format::MAX_SEQ`.
const MAX_SEQ: u64 = 1 << 62;

fn file_header(base: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn record(kind: u8, flag: u8, seq: u64, time_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind;
    h[5] = flag;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&time_ms.to_le_bytes());
    h[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[28..32].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(payload);
    out
}

/// Sequence numbers as the input resolves them.
struct Seqs {
    last: Option<u64>,
}

impl Seqs {
    fn resolve(&mut self, s: Seq, base: u64) -> u64 {
        match s {
            Seq::Next => self.last.map_or(base, |l| l.saturating_add(1)),
            Seq::Small(n) => u64::from(n),
            Seq::Any(n) => n,
        }
    }
}

/// One record as written, with what the model needs.
struct Written {
    bytes: Vec<u8>,
    /// For an entry: its sequence number and payload.
    entry: Option<(u64, Vec<u8>)>,
    /// For a plain head record: its sequence number.
    head: Option<u64>,
}

fn encode(r: &Rec, seqs: &mut Seqs, base: u64) -> Written {
    match r {
        Rec::Entry {
            seq,
            time_ms,
            payload,
        } => {
            let seq = seqs.resolve(*seq, base);
            seqs.last = Some(seq);
            // Times beyond what SystemTime holds are the queue's to handle; keep them sane
            // here only so that the model compares payloads, not clocks.
            Written {
                bytes: record(1, 0, seq, *time_ms, payload),
                entry: Some((seq, payload.clone())),
                head: None,
            }
        }
        Rec::Head { seq } => {
            let seq = seqs.resolve(*seq, base);
            Written {
                bytes: record(2, 0, seq, 0, &[]),
                entry: None,
                head: Some(seq),
            }
        }
        Rec::Quarantined { flag, seq, payload } => Written {
            bytes: record(3, *flag, *seq, 0, payload),
            entry: None,
            head: None,
        },
        Rec::Note { flag, payload } => Written {
            bytes: record(2, flag.max(&1).to_owned(), 0, 0, payload),
            entry: None,
            head: None,
        },
    }
}

// ----- running it ------------------------------------------------------------------------------

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn run(input: &Input, dir: &Path) {
    let mut written = 0usize;
    // Damage the queue must report, and whether the directory is one the model describes.
    let mut must_report = false;
    let mut modelled = true;
    let mut suppressible = input.quarantine.is_some();
    let mut seqs = Seqs { last: None };
    // Per base (ascending, as the queue orders segments): entries in file order.
    let mut by_base: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut ignored: Vec<u64> = Vec::new();
    let mut heads: Vec<u64> = Vec::new();
    // Payload-damaged entries: (seq, base); reported only if not consumed.
    let mut hurt_entries: Vec<u64> = Vec::new();
    for seg in &input.segments {
        let base = seg.base.get();
        if by_base.contains_key(&base) || ignored.contains(&base) {
            continue; // one file per base
        }
        // No queue reaches a base of MAX_SEQ: such a file is not one of its segments, and is
        // left alone (what it holds is neither loaded nor damage).
        let segment = base < MAX_SEQ;
        let mut seg_modelled = true;
        let mut seg_suppressible = false;
        let mut seg_must_report = false;
        let mut seg_hurt: Vec<u64> = Vec::new();
        let mut seg_heads: Vec<u64> = Vec::new();
        let mut file = Vec::new();
        match &seg.header {
            Header::Good => file.extend_from_slice(&file_header(base)),
            Header::Other(b) => {
                file.extend_from_slice(&file_header(*b));
                seg_modelled &= *b == base;
            }
            Header::Raw(b) => {
                file.extend_from_slice(b);
                seg_modelled = false;
                seg_suppressible = true;
            }
            Header::Absent => seg_modelled = false,
        }
        let mut entries = Vec::new();
        for p in &seg.pieces {
            match p {
                Piece::Record(r) => {
                    let w = encode(r, &mut seqs, base);
                    file.extend_from_slice(&w.bytes);
                    if let Some(e) = w.entry {
                        entries.push(e);
                    }
                    if let Some(h) = w.head {
                        seg_heads.push(h);
                    }
                    match r {
                        Rec::Entry { .. } | Rec::Head { .. } => {}
                        Rec::Quarantined { .. } => seg_modelled = false,
                        Rec::Note { .. } => {
                            seg_modelled = false;
                            seg_suppressible = true;
                        }
                    }
                }
                Piece::Flipped(r, bit) => {
                    let w = encode(r, &mut seqs, base);
                    let mut b = w.bytes;
                    let bit = usize::from(*bit) % (8 * b.len());
                    b[bit / 8] ^= 1 << (bit % 8);
                    file.extend_from_slice(&b);
                    seg_modelled = false;
                    match (r, w.entry) {
                        (Rec::Entry { .. }, Some((seq, _))) if bit >= 8 * RECORD_HEADER => {
                            seg_hurt.push(seq);
                        }
                        (Rec::Head { .. }, _) => {
                            // A head record that no longer parses is damage; one whose flip
                            // left it parseable cannot be (the header is checksummed).
                            seg_must_report = true;
                        }
                        // A note's payload is only ever a hint ("already reported"); one that
                        // fails its checksum is ignored by design, and nothing is lost.
                        (Rec::Note { .. }, _) if bit >= 8 * RECORD_HEADER => {}
                        _ => seg_must_report = true,
                    }
                    if let Some(h) = w.head {
                        seg_heads.push(h);
                    }
                }
                Piece::Cut(r, keep) => {
                    let w = encode(r, &mut seqs, base);
                    let keep = usize::from(*keep) % w.bytes.len();
                    file.extend_from_slice(&w.bytes[..keep]);
                    seg_modelled = false;
                    seg_must_report |= keep > 0;
                    if let Some(h) = w.head {
                        seg_heads.push(h);
                    }
                }
                Piece::Raw(b) => {
                    file.extend_from_slice(b);
                    seg_modelled = false;
                    seg_suppressible = true;
                }
            }
        }
        written += file.len();
        std::fs::write(dir.join(format!("seg-{base:020}.q")), &file).expect("writing the input");
        if segment {
            by_base.insert(base, entries);
            must_report |= seg_must_report;
            hurt_entries.extend(seg_hurt);
            heads.extend(seg_heads);
            modelled &= seg_modelled;
            suppressible |= seg_suppressible;
        } else {
            ignored.push(base);
        }
    }
    if let Some(q) = &input.quarantine {
        written += q.len();
        std::fs::write(dir.join("quarantine.q"), q).expect("writing the input");
    }
    // Everything below the oldest segment's base, or below a head record, was consumed.
    let head = heads
        .iter()
        .copied()
        .chain(by_base.keys().next().copied())
        .max()
        .unwrap_or(0);
    // Conservative: any base or head bounds what counts as consumed.
    let consumed_below = heads
        .iter()
        .copied()
        .chain(by_base.keys().copied())
        .max()
        .unwrap_or(0);
    if hurt_entries.iter().any(|s| *s >= consumed_below) {
        must_report = true;
    }
    let limit = written + alloc_limit::SLACK;

    // ----- open and drain -------------------------------------------------------------------
    let armed = alloc_limit::arm(limit);
    let queue = match FileQueue::builder(dir).open_blocking() {
        Ok(q) => q,
        Err(e) => {
            drop(armed);
            assert!(
                !matches!(e, Error::Closed),
                "the queue's I/O thread died while opening (a panic?)"
            );
            panic!("open failed on a readable directory: {e}");
        }
    };
    let len = queue.len();
    let mut reports = queue.take_reports();
    let mut drained: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut quarantined_on_the_way = 0u64;
    loop {
        let head = queue.peek().expect("peek after a successful open");
        let Some(entry) = head else {
            break;
        };
        if let Some((prev, _)) = drained.last() {
            assert!(
                entry.seq() > *prev,
                "entries out of order: {prev} then {}",
                entry.seq()
            );
        }
        // The enqueue time is whatever the file said; reading it must not panic.
        let _ = entry
            .enqueued_at()
            .duration_since(SystemTime::UNIX_EPOCH + Duration::ZERO);
        drained.push((entry.seq(), entry.payload().to_vec()));
        block_on(queue.finish(entry, Finish::Remove)).expect("removing the head");
        let more = queue.take_reports();
        quarantined_on_the_way += more
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Report::Quarantined {
                        reason: QuarantineReason::Checksum,
                        ..
                    }
                )
            })
            .count() as u64;
        reports.extend(more);
    }
    assert_eq!(
        drained.len() as u64 + quarantined_on_the_way,
        len,
        "len() said {len}; {} entries read, {quarantined_on_the_way} quarantined",
        drained.len()
    );
    assert_eq!(queue.len(), 0, "drained, yet len() is not 0");
    let after = block_on(queue.enqueue(
        bytes::Bytes::from_static(b"after open"),
        SystemTime::UNIX_EPOCH,
    ))
    .expect("an enqueue after opening");
    if let Some((last, _)) = drained.last() {
        assert!(
            after.seq() > *last,
            "sequence numbers went back: {last} then {}",
            after.seq()
        );
    }
    block_on(queue.close()).expect("closing");
    drop(armed);

    if must_report && !suppressible {
        assert!(!reports.is_empty(), "damage opened without a report");
    }
    if modelled && reports.is_empty() {
        let mut want = Vec::new();
        let mut last = 0u64;
        for (base, entries) in &by_base {
            for (seq, payload) in entries {
                if *seq > last && seq >= base {
                    last = *seq;
                    want.push((*seq, payload.clone()));
                }
            }
        }
        want.retain(|(seq, _)| *seq >= head);
        assert!(
            drained == want,
            "read {drained:?}, the files hold {want:?} (head {head})"
        );
    }

    // ----- a reopen agrees ------------------------------------------------------------------
    let armed = alloc_limit::arm(limit);
    let again = FileQueue::builder(dir)
        .open_blocking()
        .expect("reopening the queue");
    assert_eq!(
        again.len(),
        1,
        "reopened with other entries than the one enqueued"
    );
    let entry = again
        .peek()
        .expect("peek")
        .expect("the entry enqueued after opening");
    assert_eq!(
        (entry.seq(), entry.payload().as_ref()),
        (after.seq(), &b"after open"[..])
    );
    block_on(again.finish(entry, Finish::Remove)).expect("removing it");
    let new_reports = again.take_reports();
    block_on(again.close()).expect("closing");
    drop(armed);
    assert!(
        new_reports.is_empty(),
        "the reopen reported again: {new_reports:?} (first open: {reports:?})"
    );
}
