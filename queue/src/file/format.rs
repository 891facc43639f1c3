//! The on-disk layout: file headers and records. All integers are little-endian.
//!
//! ```text
//! file header (24 bytes), at the start of every segment and of the quarantine file:
//!   magic     [u8; 8]  "PAHOQSEG" (segment) or "PAHOQQUA" (quarantine)
//!   version   u32      1
//!   base      u64      segment: the first sequence number it may hold; quarantine: 0
//!   crc       u32      CRC-32 of the 20 bytes above
//!
//! record header (36 bytes), followed by `len` payload bytes:
//!   magic     u32      0x5051_5243 ("CRQP" on disk), to resynchronise after damage
//!   kind      u8       1 = entry, 2 = head, 3 = quarantined bytes
//!   flag      u8       quarantine reason code (kind 3), else 0
//!   reserved  u16      0
//!   seq       u64      entry: its sequence number; head: first unconsumed sequence number;
//!                      quarantine: the entry's sequence number or u64::MAX if unknown
//!   time      u64      enqueue time, ms since the Unix epoch (0 for head records)
//!   len       u32      payload length (<= MAX_ENTRY_BYTES)
//!   data_crc  u32      CRC-32 of the payload
//!   head_crc  u32      CRC-32 of the 32 header bytes above
//! ```
//!
//! The header has its own checksum so that a garbled length is never trusted: a reader only
//! believes `len` after `head_crc` matches and `len` fits both the limit and the file.
//!
//! A head record with a non-zero `flag` is a recovery *note* (see [`Note`]): `seq` is 0, so a
//! reader that only knows plain head records takes it as "nothing consumed" and ignores it.

use crate::limits::MAX_ENTRY_BYTES;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"PAHOQSEG";
pub(crate) const QUARANTINE_MAGIC: [u8; 8] = *b"PAHOQQUA";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const FILE_HEADER_LEN: usize = 24;
pub(crate) const RECORD_MAGIC: u32 = 0x5051_5243;
pub(crate) const RECORD_HEADER_LEN: usize = 36;
/// Sequence number written for quarantined bytes whose entry could not be identified.
pub(crate) const UNKNOWN_SEQ: u64 = u64::MAX;
/// Sequence numbers a queue can reach (it would take 2^62 enqueues to get here). A larger one
/// in a record or a segment name can only come from damage or a crafted file; believing it
/// would make the next sequence number overflow (a panic of the I/O thread on open in debug
/// builds, a wrap to 0 in release). Found by the `queue_open` fuzz target.
pub(crate) const MAX_SEQ: u64 = 1 << 62;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A queued entry.
    Entry,
    /// A head marker: every entry with a smaller sequence number has been consumed.
    Head,
    /// Bytes moved to the quarantine file.
    Quarantined,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Entry => 1,
            Kind::Head => 2,
            Kind::Quarantined => 3,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        match c {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Head),
            3 => Some(Kind::Quarantined),
            _ => None,
        }
    }
}

/// `flag` of a note recording a damaged byte range already quarantined.
const NOTE_DAMAGE: u8 = 1;
/// `flag` of a note recording a gap in the sequence numbers already reported.
const NOTE_GAP: u8 = 2;

/// What recovery has already dealt with, written (as a head-kind record with sequence number 0
/// and a non-zero flag) to the active segment after the damage was quarantined or reported, so
/// that later opens do not quarantine and report the same damage again while it stays on disk.
/// A note is always written after the damage it describes (in the same segment or a newer
/// one), and segments are reclaimed oldest first, so a note outlives its damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Note {
    /// Bytes `offset..offset + len` of the segment with base `segment` are in quarantine.
    Damage { segment: u64, offset: u64, len: u64 },
    /// The loss of sequence numbers `first..=last` was reported.
    Gap { first: u64, last: u64 },
}

impl Note {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::with_capacity(24);
        let flag = match *self {
            Note::Damage {
                segment,
                offset,
                len,
            } => {
                for v in [segment, offset, len] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                NOTE_DAMAGE
            }
            Note::Gap { first, last } => {
                for v in [first, last] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                NOTE_GAP
            }
        };
        encode_record(out, Kind::Head, flag, 0, 0, &p);
    }

    /// The note in a head-kind record with a verified payload; `None` for a plain head record
    /// or a note this version does not know.
    pub(crate) fn decode(header: &RecordHeader, payload: &[u8]) -> Option<Note> {
        if header.kind != Kind::Head || header.seq != 0 {
            return None;
        }
        match (header.flag, payload.len()) {
            (NOTE_DAMAGE, 24) => Some(Note::Damage {
                segment: le_u64(&payload[0..8]),
                offset: le_u64(&payload[8..16]),
                len: le_u64(&payload[16..24]),
            }),
            (NOTE_GAP, 16) => Some(Note::Gap {
                first: le_u64(&payload[0..8]),
                last: le_u64(&payload[8..16]),
            }),
            _ => None,
        }
    }
}

/// A decoded, checksum-verified record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) kind: Kind,
    pub(crate) flag: u8,
    pub(crate) seq: u64,
    pub(crate) time_ms: u64,
    pub(crate) len: u32,
    pub(crate) data_crc: u32,
}

pub(crate) fn encode_file_header(magic: [u8; 8], base: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Returns the base of a valid file header with the given magic.
pub(crate) fn decode_file_header(buf: &[u8], magic: [u8; 8]) -> Option<u64> {
    let h = buf.get(..FILE_HEADER_LEN)?;
    if h[0..8] != magic || le_u32(&h[8..12]) != FORMAT_VERSION {
        return None;
    }
    if le_u32(&h[20..24]) != crc32fast::hash(&h[0..20]) {
        return None;
    }
    Some(le_u64(&h[12..20]))
}

/// Appends one record to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    kind: Kind,
    flag: u8,
    seq: u64,
    time_ms: u64,
    payload: &[u8],
) {
    // Callers check payload lengths against MAX_ENTRY_BYTES (< u32::MAX) before getting here.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind.code();
    h[5] = flag;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&time_ms.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..32].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[0..32]);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

/// Decodes a record header at the start of `buf`. `None` if it is short, has the wrong magic,
/// fails its checksum, has an unknown kind, non-zero reserved bits, or a length over
/// [`MAX_ENTRY_BYTES`]. The caller must still check that the payload fits in the file.
pub(crate) fn decode_record_header(buf: &[u8]) -> Option<RecordHeader> {
    let h = buf.get(..RECORD_HEADER_LEN)?;
    if le_u32(&h[0..4]) != RECORD_MAGIC {
        return None;
    }
    if le_u32(&h[32..36]) != crc32fast::hash(&h[0..32]) {
        return None;
    }
    let kind = Kind::from_code(h[4])?;
    if h[6] != 0 || h[7] != 0 {
        return None;
    }
    let len = le_u32(&h[24..28]);
    if u64::from(len) > MAX_ENTRY_BYTES {
        return None;
    }
    Some(RecordHeader {
        kind,
        flag: h[5],
        seq: le_u64(&h[8..16]),
        time_ms: le_u64(&h[16..24]),
        len,
        data_crc: le_u32(&h[28..32]),
    })
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Entry, 0, 7, 1234, b"payload");
        let h = decode_record_header(&buf).unwrap();
        assert_eq!(h.kind, Kind::Entry);
        assert_eq!((h.seq, h.time_ms, h.len), (7, 1234, 7));
        assert_eq!(h.data_crc, crc32fast::hash(b"payload"));
        assert_eq!(&buf[RECORD_HEADER_LEN..], b"payload");
    }

    #[test]
    fn any_flipped_header_bit_is_rejected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Head, 0, 9, 0, b"");
        for byte in 0..RECORD_HEADER_LEN {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(decode_record_header(&b).is_none(), "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn file_header_round_trip_and_rejects_garbage() {
        let h = encode_file_header(SEGMENT_MAGIC, 42);
        assert_eq!(decode_file_header(&h, SEGMENT_MAGIC), Some(42));
        assert_eq!(decode_file_header(&h, QUARANTINE_MAGIC), None);
        assert_eq!(decode_file_header(&h[..10], SEGMENT_MAGIC), None);
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(decode_file_header(&bad, SEGMENT_MAGIC), None);
    }

    #[test]
    fn notes_round_trip_and_are_not_plain_heads() {
        for note in [
            Note::Damage {
                segment: 7,
                offset: 1234,
                len: 99,
            },
            Note::Gap { first: 5, last: 9 },
        ] {
            let mut buf = Vec::new();
            note.encode(&mut buf);
            let h = decode_record_header(&buf).unwrap();
            assert_eq!((h.kind, h.seq), (Kind::Head, 0));
            assert_ne!(h.flag, 0);
            assert_eq!(Note::decode(&h, &buf[RECORD_HEADER_LEN..]), Some(note));
        }
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Head, 0, 0, 0, &[]);
        let h = decode_record_header(&buf).unwrap();
        assert_eq!(Note::decode(&h, &[]), None);
    }

    #[test]
    fn huge_length_is_rejected_before_allocation() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Kind::Entry, 0, 1, 0, b"x");
        // Forge a header claiming 4 GiB with a correct header checksum.
        buf[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&buf[0..32]);
        buf[32..36].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_record_header(&buf).is_none());
    }
}
