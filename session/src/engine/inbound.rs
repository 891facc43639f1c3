//! Incoming-side bookkeeping: QoS 2 markers and the in-order acknowledgement queue.

use std::collections::VecDeque;

use paho_packets::{PacketId, QoS};

use super::action::AckToken;

/// An incoming QoS 2 exchange awaiting PUBREL.
///
/// The marker is stored just before PUBREC goes out, normally when the application acks, not
/// on delivery: the server takes PUBREC as "received", so from then on the message must not
/// be delivered again, even after a restart; before it, a process killed while the
/// application still had the message must get it again (the server resends it), or it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Delivered on this connection; the application has not acked it yet, so nothing is
    /// stored and PUBREC has not gone out.
    Awaiting,
    /// Delivered on an earlier connection of this process and not acked before it closed:
    /// nothing stored, no PUBREC sent. The application has had the message, so the server's
    /// resend is not delivered again: it is answered with PUBREC (marker stored first) at once,
    /// as the ack of the first delivery cannot reach this connection.
    Orphaned,
    /// Marker stored (or queued to be, before PUBREC) and PUBREC sent, or restored from the
    /// store: a repeated PUBLISH is answered with PUBREC and not delivered.
    Recorded,
}

/// Acknowledgements of one connection in the order the PUBLISHes arrived. Tokens carry a
/// sequence number, so marking is O(1); popping only releases the acked prefix.
#[derive(Debug, Default)]
pub(super) struct AckQueue {
    epoch: u64,
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<(PacketId, QoS, bool)>,
    /// QoS 1 entries not yet marked, kept so the count is O(1).
    unacked_qos1: usize,
}

impl AckQueue {
    pub(super) fn push(&mut self, id: PacketId, qos: QoS) -> AckToken {
        let seq = self.base + self.entries.len() as u64;
        self.entries.push_back((id, qos, false));
        if qos == QoS::AtLeastOnce {
            self.unacked_qos1 += 1;
        }
        AckToken {
            epoch: self.epoch,
            seq,
            packet_id: id,
            qos,
        }
    }

    /// Marks a token acked; false if it belongs to an earlier connection.
    pub(super) fn mark(&mut self, t: AckToken) -> bool {
        if t.epoch != self.epoch {
            return false;
        }
        if let Some(i) = t.seq.checked_sub(self.base) {
            if let Some(e) = usize::try_from(i)
                .ok()
                .and_then(|i| self.entries.get_mut(i))
            {
                if !e.2 && e.1 == QoS::AtLeastOnce {
                    self.unacked_qos1 -= 1;
                }
                e.2 = true;
            }
        }
        true
    }

    pub(super) fn pop_ready(&mut self) -> Option<(PacketId, QoS)> {
        match self.entries.front() {
            Some(&(id, qos, true)) => {
                self.entries.pop_front();
                self.base += 1;
                Some((id, qos))
            }
            _ => None,
        }
    }

    pub(super) fn unacked_qos1(&self) -> usize {
        self.unacked_qos1
    }

    pub(super) fn new_connection(&mut self) {
        self.epoch += 1;
        self.base += self.entries.len() as u64;
        self.entries.clear();
        self.unacked_qos1 = 0;
    }
}
