//! The outgoing exchanges by packet id, and their send order: a slab indexed through a table
//! by packet id (no hashing), and a queue in send order (no tree).

use std::collections::VecDeque;

use paho_packets::PacketId;

/// Values by packet id. `by_id` maps an id to its slot (plus one; 0 is "none") and grows to
/// the largest id used (at most 128 KiB); the slots are dense, reused through a free list, so
/// values stay as many as are live.
#[derive(Debug)]
pub(super) struct Slab<T> {
    by_id: Vec<u16>,
    slots: Vec<Option<(PacketId, T)>>,
    free: Vec<u16>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            by_id: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn slot(&self, id: PacketId) -> Option<usize> {
        match self.by_id.get(usize::from(id.get())) {
            Some(&s) if s != 0 => Some(usize::from(s) - 1),
            _ => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn get(&self, id: &PacketId) -> Option<&T> {
        let s = self.slot(*id)?;
        self.slots[s].as_ref().map(|(_, v)| v)
    }

    pub(super) fn get_mut(&mut self, id: &PacketId) -> Option<&mut T> {
        let s = self.slot(*id)?;
        self.slots[s].as_mut().map(|(_, v)| v)
    }

    /// Inserts or replaces the value for `id`.
    pub(super) fn insert(&mut self, id: PacketId, value: T) {
        if let Some(s) = self.slot(id) {
            self.slots[s] = Some((id, value));
            return;
        }
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[usize::from(s)] = Some((id, value));
                usize::from(s)
            }
            None => {
                self.slots.push(Some((id, value)));
                self.slots.len() - 1
            }
        };
        let at = usize::from(id.get());
        if self.by_id.len() <= at {
            self.by_id.resize(at + 1, 0);
        }
        // At most 65,535 ids exist, so at most 65,535 slots: `s + 1` fits.
        self.by_id[at] = u16::try_from(s + 1).unwrap_or(u16::MAX);
        self.len += 1;
    }

    pub(super) fn remove(&mut self, id: &PacketId) -> Option<T> {
        let s = self.slot(*id)?;
        let (_, v) = self.slots[s].take()?;
        self.by_id[usize::from(id.get())] = 0;
        self.free.push(u16::try_from(s).unwrap_or(u16::MAX));
        self.len -= 1;
        Some(v)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|(_, v)| v)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten().map(|(_, v)| v)
    }

    /// Takes every value out (in no particular order).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (PacketId, T)> {
        self.by_id.clear();
        self.free.clear();
        self.len = 0;
        std::mem::take(&mut self.slots).into_iter().flatten()
    }
}

/// Packet ids in send order, each with its exchange's order number. A finished exchange is
/// not looked for in the queue: its entry goes stale (the id is gone, or now belongs to a
/// later exchange with another number) and is skipped by readers, dropped when it reaches
/// the front, and swept out when stale entries outnumber live ones, so the queue stays
/// proportional to the live exchanges.
#[derive(Debug, Default)]
pub(super) struct SendOrder {
    queue: VecDeque<(u64, PacketId)>,
}

impl SendOrder {
    pub(super) fn push(&mut self, order: u64, id: PacketId) {
        self.queue.push_back((order, id));
    }

    /// Drops stale entries from the front, and sweeps the whole queue when more than half of
    /// it is stale; `live(order, id)` says whether an entry is current.
    pub(super) fn tidy(&mut self, live_count: usize, live: impl Fn(u64, PacketId) -> bool) {
        while let Some(&(o, id)) = self.queue.front() {
            if live(o, id) {
                break;
            }
            self.queue.pop_front();
        }
        if self.queue.len() > 2 * live_count + 32 {
            self.queue.retain(|&(o, id)| live(o, id));
        }
    }

    /// The entries in send order, stale ones included (the caller skips them).
    pub(super) fn snapshot(&self) -> Vec<(u64, PacketId)> {
        self.queue.iter().copied().collect()
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    #[test]
    fn slab_inserts_replaces_removes_and_reuses_slots() {
        let mut s = Slab::default();
        s.insert(id(3), "a");
        s.insert(id(65535), "b");
        s.insert(id(3), "c");
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&id(3)), Some(&"c"));
        assert_eq!(s.get(&id(4)), None);
        assert_eq!(s.remove(&id(3)), Some("c"));
        assert_eq!(s.remove(&id(3)), None);
        s.insert(id(7), "d");
        // The freed slot was reused.
        assert_eq!(s.slots.len(), 2);
        assert_eq!(s.get(&id(7)), Some(&"d"));
        let mut all: Vec<_> = s.drain().collect();
        all.sort();
        assert_eq!(all, vec![(id(7), "d"), (id(65535), "b")]);
        assert!(s.is_empty() && s.get(&id(7)).is_none());
    }

    #[test]
    fn send_order_stays_proportional_to_live_entries() {
        let mut q = SendOrder::default();
        let mut live = std::collections::HashSet::new();
        // One straggler at the front stays live while 10,000 later ones finish.
        q.push(0, id(1));
        live.insert(0u64);
        for o in 1..10_000u64 {
            q.push(o, id(2));
            q.tidy(live.len(), |o, _| live.contains(&o));
        }
        assert!(q.queue.len() <= 2 * live.len() + 33, "{}", q.queue.len());
        assert_eq!(q.snapshot()[0], (0, id(1)));
    }
}
