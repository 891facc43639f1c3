//! The in-memory ordered map both stores use: entries by key, and keys by send sequence.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use super::{EntryKind, Key, StoredEntry};

#[derive(Debug, Clone)]
struct Slot {
    seq: u64,
    kind: EntryKind,
    value: Bytes,
}

/// A multiplicative hash for [`Key`]s (a direction and a 16-bit id): SipHash's resistance
/// to chosen keys buys nothing in a space of 131,070 keys, and it was a visible part of
/// every store operation of the memory store. The high half of the product is folded into
/// the low bits, which pick the bucket, so ids that differ only in their high bits spread too.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }

    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }

    fn write_isize(&mut self, v: isize) {
        self.add(v as u64);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// Entries by key plus a second map from sequence number to key, so that both lookups and
/// in-order listing are cheap and a replacement can keep its sequence number.
#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    by_key: HashMap<Key, Slot, BuildHasherDefault<KeyHasher>>,
    by_seq: BTreeMap<u64, Key>,
    next_seq: u64,
    live_bytes: u64,
}

impl Index {
    /// Puts a value, keeping the sequence number of a present key. Returns the entry's seq.
    pub(crate) fn put(&mut self, key: Key, kind: EntryKind, value: Bytes) -> u64 {
        let seq = match self.by_key.get(&key) {
            Some(slot) => slot.seq,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                seq
            }
        };
        self.put_with_seq(key, seq, kind, value);
        seq
    }

    /// Puts a value at a known sequence number (log replay).
    pub(crate) fn put_with_seq(&mut self, key: Key, seq: u64, kind: EntryKind, value: Bytes) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.live_bytes += value.len() as u64;
        if let Some(old) = self.by_key.insert(key, Slot { seq, kind, value }) {
            self.live_bytes -= old.value.len() as u64;
            if old.seq != seq {
                self.by_seq.remove(&old.seq);
            }
        }
        // A replayed log can in principle (only after corruption) carry a seq that another key
        // holds; the later record wins and the displaced key is dropped from the order map's
        // view by removing it outright, so both maps stay consistent.
        if let Some(other) = self.by_seq.insert(seq, key) {
            if other != key {
                if let Some(old) = self.by_key.remove(&other) {
                    self.live_bytes -= old.value.len() as u64;
                }
            }
        }
    }

    pub(crate) fn delete(&mut self, key: Key) -> Option<StoredEntry> {
        let slot = self.by_key.remove(&key)?;
        self.by_seq.remove(&slot.seq);
        self.live_bytes -= slot.value.len() as u64;
        Some(StoredEntry::new(key, slot.kind, slot.seq, slot.value))
    }

    #[cfg(test)]
    fn hash_of(key: Key) -> u64 {
        use std::hash::BuildHasher;
        BuildHasherDefault::<KeyHasher>::default().hash_one(key)
    }

    pub(crate) fn get(&self, key: Key) -> Option<StoredEntry> {
        self.by_key
            .get(&key)
            .map(|s| StoredEntry::new(key, s.kind, s.seq, s.value.clone()))
    }

    pub(crate) fn list(&self) -> Vec<StoredEntry> {
        self.by_seq.values().filter_map(|k| self.get(*k)).collect()
    }

    /// Clears every entry. Sequence numbers keep counting up, so nothing put later can sort
    /// before something put earlier.
    pub(crate) fn reset(&mut self) {
        self.by_key.clear();
        self.by_seq.clear();
        self.live_bytes = 0;
    }

    /// The sequence number the next new key would get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Total size of the live values (used to decide when a log is mostly garbage).
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;

    #[test]
    fn key_hashes_spread_over_low_bits_and_directions() {
        // Ids that differ only in their high bits must not share their low (bucket) bits.
        let mut low = std::collections::HashSet::new();
        for hi in 1..=255u16 {
            let id = NonZeroU16::new(hi << 8).unwrap_or(NonZeroU16::MIN);
            low.insert(Index::hash_of(Key::Outbound(id)) & 0xff);
        }
        assert!(low.len() > 128, "{} distinct low bytes of 255", low.len());
        let id = NonZeroU16::MIN;
        assert_ne!(
            Index::hash_of(Key::Outbound(id)),
            Index::hash_of(Key::Inbound(id))
        );
    }
}
