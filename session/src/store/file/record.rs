//! The log's record format, and replaying a log into an [`Index`].
//!
//! ```text
//! record := magic u32 LE = 0x5053_4C52 ("RLSP")
//!           len   u32 LE          length of body, at most MAX_BODY
//!           crc   u32 LE          CRC-32 of the len field followed by body
//!           body  [len]
//! body   := 0x01 seq u64 LE  dir u8  id u16 LE  kind u8  value...   put
//!         | 0x02 dir u8  id u16 LE                                  delete
//!         | 0x03                                                    reset
//! dir    := 0 outbound | 1 inbound
//! ```
//!
//! The checksum covers the length, so a flipped length bit is detected rather than trusted.
//! Replay never allocates from a length field: it slices the file it already holds, after
//! checking the length against both `MAX_BODY` and the bytes that remain.

use std::num::NonZeroU16;
use std::ops::Range;

use bytes::Bytes;

use crate::store::{EntryKind, Index, Key, MAX_VALUE_LEN};

const MAGIC: u32 = 0x5053_4C52;
pub(super) const HEADER_LEN: usize = 12;
const PUT_FIXED: usize = 1 + 8 + 1 + 2 + 1;
/// The largest body a valid record can have.
const MAX_BODY: usize = PUT_FIXED + MAX_VALUE_LEN;

/// Sequence numbers a valid log can hold. A store would need 2^62 puts to get here; a larger
/// number can only come from a damaged or crafted file, and believing it would make the next
/// put overflow the sequence counter (a panic in debug builds, a wrap to 0 that sorts new
/// entries first in release builds).
pub(super) const MAX_SEQ: u64 = 1 << 62;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_RESET: u8 = 3;

/// One decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    Put {
        seq: u64,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    },
    Delete {
        key: Key,
    },
    Reset,
}

fn put_key(out: &mut Vec<u8>, key: Key) {
    let (dir, id) = match key {
        Key::Outbound(id) => (0u8, id),
        Key::Inbound(id) => (1u8, id),
    };
    out.push(dir);
    out.extend_from_slice(&id.get().to_le_bytes());
}

/// Appends the encoded record to `out`.
pub(super) fn encode(out: &mut Vec<u8>, record: &Record) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // len and crc, patched below
    match record {
        Record::Put {
            seq,
            key,
            kind,
            value,
        } => {
            out.push(OP_PUT);
            out.extend_from_slice(&seq.to_le_bytes());
            put_key(out, *key);
            out.push(kind.to_u8());
            out.extend_from_slice(value);
        }
        Record::Delete { key } => {
            out.push(OP_DELETE);
            put_key(out, *key);
        }
        Record::Reset => out.push(OP_RESET),
    }
    // Values are checked against MAX_VALUE_LEN before they get here, so the body fits a u32.
    let body_len = (out.len() - start - HEADER_LEN) as u32;
    let len_bytes = body_len.to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(&out[start + HEADER_LEN..]);
    let crc = h.finalize();
    out[start + 4..start + 8].copy_from_slice(&len_bytes);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn key_at(b: &[u8], at: usize) -> Option<Key> {
    let id = NonZeroU16::new(u16_at(b, at + 1)?)?;
    match *b.get(at)? {
        0 => Some(Key::Outbound(id)),
        1 => Some(Key::Inbound(id)),
        _ => None,
    }
}

/// Parses the record starting at `pos` of `file`; returns it and the offset after it, or
/// `None` if the bytes there are not a whole, valid record.
pub(super) fn parse_at(file: &Bytes, pos: usize) -> Option<(Record, usize)> {
    let b = file.as_ref();
    if u32_at(b, pos)? != MAGIC {
        return None;
    }
    let len = u32_at(b, pos + 4)? as usize;
    let crc = u32_at(b, pos + 8)?;
    let body_start = pos + HEADER_LEN;
    if len > MAX_BODY || len > b.len().saturating_sub(body_start) {
        return None;
    }
    let body = &b[body_start..body_start + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&b[pos + 4..pos + 8]);
    h.update(body);
    if h.finalize() != crc {
        return None;
    }
    let record = match *body.first()? {
        OP_PUT if len >= PUT_FIXED => {
            let seq = u64_at(body, 1)?;
            if seq > MAX_SEQ {
                return None;
            }
            let key = key_at(body, 9)?;
            let kind = EntryKind::from_u8(*body.get(12)?)?;
            if !kind.fits(key) {
                return None;
            }
            let value = file.slice(body_start + PUT_FIXED..body_start + len);
            Record::Put {
                seq,
                key,
                kind,
                value,
            }
        }
        OP_DELETE if len == 4 => Record::Delete {
            key: key_at(body, 1)?,
        },
        OP_RESET if len == 1 => Record::Reset,
        _ => return None,
    };
    Some((record, body_start + len))
}

/// What replaying a log found.
#[derive(Debug, Default)]
pub(super) struct Replay {
    pub(super) index: Index,
    /// Stretches in the middle of the log that are not valid records, with valid records after.
    pub(super) corrupt: Vec<Range<usize>>,
    /// Where an invalid tail starts, if there is one: usually an append that a crash cut short,
    /// but possibly damage to the magic or length of the last record, so the writer saves and
    /// reports these bytes before it truncates them.
    pub(super) torn_from: Option<usize>,
    /// How many records were applied.
    pub(super) records: usize,
    /// Bytes checksummed while resynchronising (bounded; see [`replay`]).
    pub(super) scanned: usize,
}

/// The body length a header at `pos` claims, if the header is intact enough to be believed
/// (magic matches, length plausible and within the file).
fn claimed_len(file: &[u8], pos: usize) -> Option<usize> {
    if u32_at(file, pos)? != MAGIC {
        return None;
    }
    let len = u32_at(file, pos + 4)? as usize;
    (len <= MAX_BODY && len <= file.len().saturating_sub(pos + HEADER_LEN)).then_some(len)
}

/// Replays a whole log file.
///
/// An invalid record is one of:
/// - a *torn tail*: no valid record follows and the bytes do not even hold the whole record
///   their header claims (the last append of a crashed process, never acknowledged);
/// - *corruption*: valid records follow, or the whole claimed record is there but fails its
///   checksum. The scanner resynchronises on the next offset that holds a whole record with a
///   valid checksum, and the stretch in between is reported.
///
/// Resynchronising checks candidate offsets, which costs a checksum of each candidate's
/// claimed length. That work is capped (at 8 times the file size plus 1 MiB), so a file crafted
/// with many fake headers cannot make opening quadratic: past the cap the rest of the file is
/// reported as one corrupt stretch.
pub(super) fn replay(file: &Bytes) -> Replay {
    let mut out = Replay::default();
    let mut budget = file.len().saturating_mul(8).saturating_add(1 << 20);
    let mut pos = 0;
    while pos < file.len() {
        if let Some((record, next)) = parse_at(file, pos) {
            apply(&mut out.index, record);
            out.records += 1;
            pos = next;
            continue;
        }
        let mut resync = None;
        let mut exhausted = false;
        for p in pos + 1..file.len() {
            let Some(len) = claimed_len(file, p) else {
                continue;
            };
            if len > budget {
                exhausted = true;
                break;
            }
            budget -= len;
            out.scanned += len;
            if parse_at(file, p).is_some() {
                resync = Some(p);
                break;
            }
        }
        match resync {
            Some(p) => {
                out.corrupt.push(pos..p);
                pos = p;
            }
            None if claimed_len(file, pos).is_some() || exhausted => {
                // The record is all there and still wrong: damage, not a torn append.
                out.corrupt.push(pos..file.len());
                break;
            }
            None => {
                out.torn_from = Some(pos);
                break;
            }
        }
    }
    out
}

pub(super) fn apply(index: &mut Index, record: Record) {
    match record {
        Record::Put {
            seq,
            key,
            kind,
            value,
        } => index.put_with_seq(key, seq, kind, value),
        Record::Delete { key } => {
            index.delete(key);
        }
        Record::Reset => index.reset(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
    }

    fn log(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(&mut out, r);
        }
        out
    }

    #[test]
    fn round_trip() {
        let recs = vec![
            Record::Put {
                seq: 9,
                key: Key::Outbound(id(3)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"abc"),
            },
            Record::Delete {
                key: Key::Inbound(id(65535)),
            },
            Record::Reset,
        ];
        let bytes = Bytes::from(log(&recs));
        let mut pos = 0;
        for r in &recs {
            let (got, next) = parse_at(&bytes, pos).unwrap_or((Record::Reset, usize::MAX));
            assert_eq!(&got, r);
            pos = next;
        }
        assert_eq!(pos, bytes.len());
    }

    #[test]
    fn every_torn_prefix_is_detected_and_earlier_records_kept() {
        let recs: Vec<Record> = (1..=3)
            .map(|n| Record::Put {
                seq: n.into(),
                key: Key::Outbound(id(n)),
                kind: EntryKind::Publish,
                value: Bytes::from(vec![n as u8; 40]),
            })
            .collect();
        let full = log(&recs);
        let first_two = log(&recs[..2]).len();
        for cut in first_two + 1..full.len() {
            let r = replay(&Bytes::copy_from_slice(&full[..cut]));
            assert_eq!(r.index.len(), 2, "cut at {cut}");
            assert_eq!(r.torn_from, Some(first_two));
            assert!(r.corrupt.is_empty());
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let recs = vec![
            Record::Put {
                seq: 1,
                key: Key::Outbound(id(1)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"first"),
            },
            Record::Put {
                seq: 2,
                key: Key::Outbound(id(2)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"second"),
            },
        ];
        let good = log(&recs);
        let first_len = log(&recs[..1]).len();
        for byte in 0..first_len {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                let r = replay(&Bytes::from(bad));
                // The damaged record never comes back as valid, the one after it always does.
                let entries = r.index.list();
                assert_eq!(entries.len(), 1, "byte {byte} bit {bit}");
                assert_eq!(entries[0].value().as_ref(), b"second");
                assert_eq!(r.corrupt, vec![0..first_len]);
            }
        }
    }

    #[test]
    fn a_damaged_last_record_is_reported_not_silently_dropped() {
        let recs = vec![
            Record::Reset,
            Record::Put {
                seq: 1,
                key: Key::Outbound(id(1)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"acknowledged"),
            },
        ];
        let mut b = log(&recs);
        let last = b.len() - 1;
        b[last] ^= 1;
        let r = replay(&Bytes::from(b));
        assert_eq!(r.torn_from, None);
        assert_eq!(r.corrupt, vec![log(&recs[..1]).len()..log(&recs).len()]);
    }

    #[test]
    fn fake_headers_cannot_make_replay_quadratic() {
        // A file of back-to-back headers that each claim (almost) the rest of the file and
        // fail their checksum: unbounded, resynchronising would hash O(n^2) bytes.
        let n = 64 * 1024;
        let mut b = Vec::with_capacity(n);
        while b.len() + HEADER_LEN <= n {
            let remaining = (n - b.len() - HEADER_LEN) as u32;
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&remaining.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        let r = replay(&Bytes::from(b));
        assert!(r.scanned <= 8 * n + (1 << 20), "{}", r.scanned);
        assert_eq!(r.index.len(), 0);
        assert!(r.torn_from.is_some() || !r.corrupt.is_empty());
    }

    fn arb_record() -> impl proptest::strategy::Strategy<Value = Record> {
        use proptest::prelude::*;
        let key = (any::<bool>(), 1u16..6).prop_map(|(inb, n)| {
            if inb {
                Key::Inbound(id(n))
            } else {
                Key::Outbound(id(n))
            }
        });
        prop_oneof![
            6 => (key.clone(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(key, seq, v)| Record::Put {
                    seq: seq.into(),
                    key,
                    kind: if matches!(key, Key::Inbound(_)) { EntryKind::PubRec } else { EntryKind::Publish },
                    value: Bytes::from(v),
                }),
            2 => key.prop_map(|key| Record::Delete { key }),
            1 => proptest::strategy::Just(Record::Reset),
        ]
    }

    proptest::proptest! {
        /// Whatever happens to the bytes, replay never panics and never returns a value that
        /// was not written under that key.
        #[test]
        fn damaged_logs_never_panic_or_invent_entries(
            records in proptest::collection::vec(arb_record(), 0..30),
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut b = log(&records);
            for (at, x) in damage {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= x;
                }
            }
            if !b.is_empty() {
                b.truncate(cut % (b.len() + 1));
            }
            let written: Vec<(Key, Bytes)> = records
                .iter()
                .filter_map(|r| match r {
                    Record::Put { key, value, .. } => Some((*key, value.clone())),
                    _ => None,
                })
                .collect();
            let r = replay(&Bytes::from(b));
            for e in r.index.list() {
                proptest::prop_assert!(
                    written.contains(&(e.key(), e.value().clone())),
                    "invented {:?}",
                    e
                );
            }
        }
    }

    #[test]
    fn a_put_with_an_absurd_sequence_number_is_not_believed() {
        // A checksummed (so not torn or bit-flipped, but crafted or written by a bug) record
        // with the largest sequence number, then a good one.
        let recs = vec![
            Record::Put {
                seq: u64::MAX,
                key: Key::Outbound(id(1)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"crafted"),
            },
            Record::Put {
                seq: 3,
                key: Key::Outbound(id(2)),
                kind: EntryKind::Publish,
                value: Bytes::from_static(b"good"),
            },
        ];
        let mut r = replay(&Bytes::from(log(&recs)));
        assert_eq!(r.corrupt, vec![0..log(&recs[..1]).len()]);
        assert_eq!(r.index.len(), 1);
        // The store keeps working: the next put neither overflows nor sorts first.
        let seq = r
            .index
            .put(Key::Outbound(id(9)), EntryKind::Publish, Bytes::new());
        assert_eq!(seq, 4);
    }

    #[test]
    fn huge_length_claim_is_rejected_without_allocating() {
        let mut b = log(&[Record::Reset]);
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let r = replay(&Bytes::from(b));
        assert_eq!(r.torn_from, Some(0));
    }
}
