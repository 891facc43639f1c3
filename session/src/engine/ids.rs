//! Packet identifier allocation: a cursor over a bit set of the ids in use.

use std::num::NonZeroU16;

use paho_packets::PacketId;

use crate::Error;

/// Hands out packet identifiers 1..=65,535, shared by PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
///
/// A cursor walks the id space and a bit set (8 KiB, made on first use) holds the ids in use.
/// Allocation moves the cursor forward past ids in use, a 64-id word at a time; since the
/// cursor only ever advances and a full wrap is bounded by the id space, allocation is O(1)
/// amortised while some ids are free. Ids are reused only after a wrap, so a just-freed id is
/// not handed straight out again (which keeps a late duplicate acknowledgement from matching
/// a new exchange).
#[derive(Debug, Clone)]
pub struct PacketIds {
    next: u16,
    /// Bit `id % 64` of word `id / 64` is set while `id` is in use (bit 0 of word 0, id 0,
    /// never is). Empty until the first id is taken.
    bits: Vec<u64>,
    in_use: usize,
}

const WORDS: usize = 65_536 / 64;

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds {
            next: 1,
            bits: Vec::new(),
            in_use: 0,
        }
    }
}

impl PacketIds {
    /// An allocator with every id free.
    pub fn new() -> Self {
        Self::default()
    }

    fn bits(&mut self) -> &mut [u64] {
        if self.bits.is_empty() {
            self.bits = vec![0; WORDS];
        }
        &mut self.bits
    }

    /// Sets `id`'s bit; false if it was set already.
    fn set(&mut self, id: u16) -> bool {
        let (w, b) = (usize::from(id / 64), id % 64);
        let word = &mut self.bits()[w];
        if *word & (1 << b) != 0 {
            return false;
        }
        *word |= 1 << b;
        self.in_use += 1;
        true
    }

    /// Takes a free id, or fails with [`Error::PacketIdsExhausted`] when all 65,535 are in use.
    pub fn allocate(&mut self) -> Result<PacketId, Error> {
        if self.in_use >= usize::from(u16::MAX) {
            return Err(Error::PacketIdsExhausted);
        }
        let mut at = self.next;
        let bits = self.bits();
        loop {
            // The first free id at or after `at` within its word, if any.
            let (w, b) = (usize::from(at / 64), u32::from(at % 64));
            let free = !bits[w] & (u64::MAX << b);
            // Id 0 is never handed out.
            let free = if w == 0 { free & !1 } else { free };
            if free != 0 {
                let id = (w as u16) * 64 + free.trailing_zeros() as u16;
                self.next = id.checked_add(1).unwrap_or(1);
                self.set(id);
                return NonZeroU16::new(id).ok_or(Error::PacketIdsExhausted);
            }
            // Next word, wrapping to the start of the id space.
            at = if w + 1 == WORDS {
                1
            } else {
                (w as u16 + 1) * 64
            };
        }
    }

    /// Marks a specific id as in use (restoring a session). Returns false if it already was.
    pub fn claim(&mut self, id: PacketId) -> bool {
        self.set(id.get())
    }

    /// Returns an id to the pool. Freeing a free id does nothing.
    pub fn free(&mut self, id: PacketId) {
        let id = id.get();
        let (w, b) = (usize::from(id / 64), id % 64);
        if let Some(word) = self.bits.get_mut(w) {
            if *word & (1 << b) != 0 {
                *word &= !(1 << b);
                self.in_use -= 1;
            }
        }
    }

    /// Whether `id` is in use.
    pub fn is_in_use(&self, id: PacketId) -> bool {
        let id = id.get();
        self.bits
            .get(usize::from(id / 64))
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// How many ids are in use.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Frees every id.
    pub fn clear(&mut self) {
        self.bits.fill(0);
        self.in_use = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn never_zero_all_distinct_then_exhausted_then_reused() {
        let mut ids = PacketIds::new();
        let mut seen = HashSet::new();
        for _ in 0..u16::MAX {
            let id = ids.allocate().unwrap();
            assert!(seen.insert(id.get()));
        }
        assert!(matches!(ids.allocate(), Err(Error::PacketIdsExhausted)));
        let freed = NonZeroU16::new(4242).unwrap();
        ids.free(freed);
        assert_eq!(ids.allocate().unwrap(), freed);
        assert!(matches!(ids.allocate(), Err(Error::PacketIdsExhausted)));
    }

    #[test]
    fn cursor_skips_claimed_ids_and_wraps() {
        let mut ids = PacketIds::new();
        ids.claim(NonZeroU16::new(1).unwrap());
        ids.claim(NonZeroU16::new(2).unwrap());
        assert_eq!(ids.allocate().unwrap().get(), 3);
        for _ in 4..=u16::MAX {
            ids.allocate().unwrap();
        }
        ids.free(NonZeroU16::new(2).unwrap());
        assert_eq!(ids.allocate().unwrap().get(), 2);
    }
}
