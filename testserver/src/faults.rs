//! Scriptable faults: the [`Faults`] handle, what it can do to a connection ([`Fault`]), when
//! a triggered fault fires relative to the packet that triggers it ([`When`]), and which
//! connections an immediate fault hits ([`Target`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use paho_packets::{DisconnectReasonCode, PacketType};

use crate::events::{lock, ConnId};
use crate::server::Shared;

/// Something the server does to a connection on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Close the link at once, without DISCONNECT and without flushing what is queued (as if
    /// the network failed). The client's will is published.
    Drop,
    /// Send DISCONNECT with this reason code (after what is already queued), then close.
    Disconnect(DisconnectReasonCode),
    /// Write these bytes as they are, after what is already queued; the connection carries
    /// on. Use it for malformed or oversize packets.
    SendRaw(Bytes),
    /// Send this packet as it is (not withheld, no topic alias applied), after what is
    /// already queued; the connection carries on. Use it for well-formed packets the
    /// protocol forbids here (a second CONNACK, a PUBREL for an unknown id, a DISCONNECT
    /// with properties, ...).
    SendPacket(Box<paho_packets::Packet>),
    /// Go half-open: stop reading and writing but keep the link open, so only the client's
    /// keepalive can notice. Queued and later packets wait in the write buffer.
    GoSilent,
    /// Undo [`Fault::GoSilent`]: read and write again, starting with what waited.
    Resume,
}

/// When a triggered fault fires, relative to the packet that triggers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum When {
    /// Before the packet is processed: it is discarded as if lost on the way (no state
    /// change, no routing, no reply).
    #[default]
    BeforeProcessing,
    /// After the packet is processed (session updated, message routed) but before its
    /// replies (PUBACK, PUBREC, SUBACK, CONNACK, ...) are queued: the replies are discarded,
    /// as if lost on the way back.
    AfterProcessing,
    /// After the packet is processed and its replies are queued; a [`Fault::Drop`] then
    /// flushes them before closing.
    AfterReply,
}

/// Which live connections an immediate fault hits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every live connection.
    All,
    /// The connections whose CONNECT carried (or was assigned) this client id.
    Client(String),
    /// One connection.
    Conn(ConnId),
}

/// A rule that fires a fault when the `nth` packet of a type arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    kind: PacketType,
    /// Matching packets still to come, this one included; a `Cell` so `retain` can count.
    remaining: std::cell::Cell<u32>,
    when: When,
    client: Option<String>,
}

impl Trigger {
    /// Fires on the `n`th packet of `kind` received from now on (1 is the next one), counted
    /// over all connections. `n` = 0 is treated as 1.
    pub fn nth(kind: PacketType, n: u32) -> Self {
        Trigger {
            kind,
            remaining: std::cell::Cell::new(n.max(1)),
            when: When::default(),
            client: None,
        }
    }

    /// When to fire relative to the packet (default [`When::BeforeProcessing`]).
    pub fn when(mut self, when: When) -> Self {
        self.when = when;
        self
    }

    /// Counts only packets from this client id.
    pub fn from_client(mut self, client_id: impl Into<String>) -> Self {
        self.client = Some(client_id.into());
        self
    }
}

/// The fault state shared by the handle and the connections.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    triggers: Vec<(Trigger, Fault)>,
    withheld: HashSet<PacketType>,
}

impl FaultState {
    /// Counts an arriving packet against the triggers and returns every fault whose trigger
    /// reached its count, in the order they were armed (fired triggers are removed: each
    /// fires once).
    pub(crate) fn on_packet(
        &mut self,
        kind: PacketType,
        client_id: Option<&str>,
    ) -> Vec<(When, Fault)> {
        let mut fired = Vec::new();
        self.triggers.retain(|(t, fault)| {
            let counts = t.kind == kind
                && t.client
                    .as_deref()
                    .is_none_or(|want| client_id == Some(want));
            if !counts {
                return true;
            }
            if t.remaining.get() > 1 {
                t.remaining.set(t.remaining.get() - 1);
                return true;
            }
            fired.push((t.when, fault.clone()));
            false
        });
        fired
    }

    pub(crate) fn is_withheld(&self, kind: PacketType) -> bool {
        self.withheld.contains(&kind)
    }
}

/// Commands the handle sends to a live connection's task.
#[derive(Debug)]
pub(crate) enum ConnFault {
    Apply(Fault),
    ReleaseWithheld,
}

/// Scripts faults on a running [`TestServer`](crate::TestServer); get one from
/// [`TestServer::faults`](crate::TestServer::faults). Cheap to clone; usable from any task
/// while connections are live.
///
/// Triggers ([`Faults::on`], [`Faults::drop_on`]) and withholding affect current and future
/// connections; [`Faults::apply`] hits the live connections only.
#[derive(Clone)]
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

/// The acknowledgements [`Faults::withhold_acks`] holds back: the server's replies in the
/// client's publish flows.
pub const PUBLISH_ACKS: [PacketType; 3] =
    [PacketType::PubAck, PacketType::PubRec, PacketType::PubComp];

impl Faults {
    /// Fires `fault` when `trigger` matches. Triggers fire once; several may be armed.
    pub fn on(&self, trigger: Trigger, fault: Fault) {
        lock(&self.shared.faults).triggers.push((trigger, fault));
    }

    /// Drops the link ([`Fault::Drop`]) when the `n`th packet of `kind` from now on arrives,
    /// at the point `when` says.
    pub fn drop_on(&self, kind: PacketType, n: u32, when: When) {
        self.on(Trigger::nth(kind, n).when(when), Fault::Drop);
    }

    /// Applies `fault` now to the live connections `target` names; returns how many.
    pub fn apply(&self, target: Target, fault: Fault) -> usize {
        self.shared
            .send_to_conns(&target, || ConnFault::Apply(fault.clone()))
    }

    /// Holds back every packet of these types the server would send, on current and future
    /// connections, until [`Faults::release`]. DISCONNECT is never held.
    pub fn withhold(&self, kinds: &[PacketType]) {
        lock(&self.shared.faults)
            .withheld
            .extend(kinds.iter().copied());
    }

    /// Holds back PUBACK, PUBREC and PUBCOMP ([`PUBLISH_ACKS`]) until [`Faults::release`].
    pub fn withhold_acks(&self) {
        self.withhold(&PUBLISH_ACKS);
    }

    /// Stops withholding and sends what each live connection held, in order. Packets held by
    /// connections that have since closed are gone (the client resends after reconnecting).
    pub fn release(&self) {
        lock(&self.shared.faults).withheld.clear();
        self.shared
            .send_to_conns(&Target::All, || ConnFault::ReleaseWithheld);
    }

    /// Disarms every trigger and releases everything withheld.
    pub fn clear(&self) {
        lock(&self.shared.faults).triggers.clear();
        self.release();
    }

    /// How many triggers are still armed (not yet fired).
    pub fn armed(&self) -> usize {
        lock(&self.shared.faults).triggers.len()
    }
}

/// Packets a connection holds back while their type is withheld.
pub(crate) type Held = VecDeque<paho_packets::Packet>;
