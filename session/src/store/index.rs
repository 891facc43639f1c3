//! The in-memory ordered map both stores use: entries by key, and keys by send sequence.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::{EntryKind, Key, StoredEntry};

#[derive(Debug, Clone)]
struct Slot {
    seq: u64,
    kind: EntryKind,
    value: Bytes,
}

/// Entries by key plus a second map from sequence number to key, so that both lookups and
/// in-order listing are cheap and a replacement can keep its sequence number.
#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    by_key: HashMap<Key, Slot>,
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
