//! Packet identifier allocation without a 65,535-slot table.

use std::collections::HashSet;
use std::num::NonZeroU16;

use paho_packets::PacketId;

use crate::Error;

/// Hands out packet identifiers 1..=65,535, shared by PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
///
/// A cursor walks the id space and a set holds the ids in use. Allocation moves the cursor
/// forward past ids in use; since the cursor only ever advances and a full wrap is bounded
/// by the set's size, allocation is O(1) amortised while some ids are free, and memory is
/// proportional to the ids in use rather than to the id space. Ids are reused only after a
/// wrap, so a just-freed id is not handed straight out again (which keeps a late duplicate
/// acknowledgement from matching a new exchange).
#[derive(Debug, Clone)]
pub struct PacketIds {
    next: u16,
    in_use: HashSet<u16>,
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds {
            next: 1,
            in_use: HashSet::new(),
        }
    }
}

impl PacketIds {
    /// An allocator with every id free.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a free id, or fails with [`Error::PacketIdsExhausted`] when all 65,535 are in use.
    pub fn allocate(&mut self) -> Result<PacketId, Error> {
        if self.in_use.len() >= usize::from(u16::MAX) {
            return Err(Error::PacketIdsExhausted);
        }
        loop {
            let candidate = self.next;
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            if let Some(id) = NonZeroU16::new(candidate) {
                if self.in_use.insert(candidate) {
                    return Ok(id);
                }
            }
        }
    }

    /// Marks a specific id as in use (restoring a session). Returns false if it already was.
    pub fn claim(&mut self, id: PacketId) -> bool {
        self.in_use.insert(id.get())
    }

    /// Returns an id to the pool. Freeing a free id does nothing.
    pub fn free(&mut self, id: PacketId) {
        self.in_use.remove(&id.get());
    }

    /// Whether `id` is in use.
    pub fn is_in_use(&self, id: PacketId) -> bool {
        self.in_use.contains(&id.get())
    }

    /// How many ids are in use.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Frees every id.
    pub fn clear(&mut self) {
        self.in_use.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
