//! Parsing the records of a file image and resynchronising after damage.

use super::format::{decode_record_header, RecordHeader, RECORD_HEADER_LEN, RECORD_MAGIC};

/// One thing found while scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A record with a valid header whose payload lies inside the file.
    Record {
        offset: u64,
        header: RecordHeader,
        /// Whether the payload matches its checksum.
        data_ok: bool,
    },
    /// Bytes that do not form a record. `tail` means no good record follows.
    Damage { offset: u64, len: u64, tail: bool },
}

/// Whether a record with a believable header starts at `off`: header checksum matches and the
/// payload fits in the file. Used both for normal parsing and to resynchronise.
fn header_at(buf: &[u8], off: usize) -> Option<RecordHeader> {
    let h = decode_record_header(buf.get(off..)?)?;
    let end = off
        .checked_add(RECORD_HEADER_LEN)?
        .checked_add(h.len as usize)?;
    (end <= buf.len()).then_some(h)
}

/// The next offset after `from` where a believable record header starts.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let last = buf.len().checked_sub(RECORD_HEADER_LEN)?;
    (from..=last).find(|&p| buf[p..p + 4] == magic && header_at(buf, p).is_some())
}

/// Scans `buf` from `start` to the end. Never panics and never allocates per claimed length:
/// a length is only used after the header checksum matched and it fits in `buf`.
pub(crate) fn scan(buf: &[u8], start: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut off = start;
    while off < buf.len() {
        if let Some(header) = header_at(buf, off) {
            let data = &buf[off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + header.len as usize];
            items.push(Item::Record {
                offset: off as u64,
                header,
                data_ok: crc32fast::hash(data) == header.data_crc,
            });
            off += RECORD_HEADER_LEN + header.len as usize;
            continue;
        }
        if decode_record_header(&buf[off..]).is_some() {
            // A whole, checksummed header whose payload runs past the end of the file: the file
            // ends inside this record (a torn write), so every byte after the header is part of
            // its opaque payload. Resynchronising in there could accept record-shaped bytes of a
            // payload as an entry; it is all one damaged tail.
            items.push(Item::Damage {
                offset: off as u64,
                len: (buf.len() - off) as u64,
                tail: true,
            });
            break;
        }
        match resync(buf, off + 1) {
            Some(next) => {
                items.push(Item::Damage {
                    offset: off as u64,
                    len: (next - off) as u64,
                    tail: false,
                });
                off = next;
            }
            None => {
                items.push(Item::Damage {
                    offset: off as u64,
                    len: (buf.len() - off) as u64,
                    tail: true,
                });
                break;
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_record, Kind};
    use super::*;

    fn three() -> Vec<u8> {
        let mut b = Vec::new();
        for (seq, p) in [(1u64, &b"one"[..]), (2, b"two"), (3, b"three")] {
            encode_record(&mut b, Kind::Entry, 0, seq, 0, p);
        }
        b
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record { header, .. } => Some(header.seq),
                Item::Damage { .. } => None,
            })
            .collect()
    }

    #[test]
    fn clean_scan() {
        let items = scan(&three(), 0);
        assert_eq!(seqs(&items), vec![1, 2, 3]);
        assert!(items
            .iter()
            .all(|i| matches!(i, Item::Record { data_ok: true, .. })));
    }

    #[test]
    fn truncated_tail_is_damage() {
        let b = three();
        let items = scan(&b[..b.len() - 2], 0);
        assert_eq!(seqs(&items), vec![1, 2]);
        assert!(matches!(
            items.last(),
            Some(Item::Damage { tail: true, .. })
        ));
    }

    #[test]
    fn garbled_middle_header_resyncs() {
        let mut b = three();
        b[RECORD_HEADER_LEN + 3 + 10] ^= 0xff; // inside record 2's header
        let items = scan(&b, 0);
        assert_eq!(seqs(&items), vec![1, 3]);
        assert!(items
            .iter()
            .any(|i| matches!(i, Item::Damage { tail: false, .. })));
    }

    #[test]
    fn bad_payload_is_flagged_not_skipped() {
        let mut b = three();
        b[RECORD_HEADER_LEN + 1] ^= 1; // record 1's payload
        let items = scan(&b, 0);
        assert_eq!(seqs(&items), vec![1, 2, 3]);
        assert!(matches!(items[0], Item::Record { data_ok: false, .. }));
    }

    #[test]
    fn no_resync_inside_the_payload_of_a_cut_record() {
        let mut inner = Vec::new();
        encode_record(&mut inner, Kind::Entry, 0, 99, 0, b"inner");
        let mut b = three();
        let outer_at = b.len();
        let mut outer = b"xx".to_vec();
        outer.extend_from_slice(&inner);
        outer.extend_from_slice(&[0u8; 50]);
        encode_record(&mut b, Kind::Entry, 0, 4, 0, &outer);
        b.truncate(outer_at + RECORD_HEADER_LEN + 2 + inner.len() + 5);
        let items = scan(&b, 0);
        assert_eq!(seqs(&items), vec![1, 2, 3]);
        assert_eq!(
            items.last(),
            Some(&Item::Damage {
                offset: outer_at as u64,
                len: (b.len() - outer_at) as u64,
                tail: true
            })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = scan(&buf, 0);
        }
    }
}
