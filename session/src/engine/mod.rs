//! The I/O-free session engine: [`Session`].

mod action;
mod completion;
mod exchanges;
mod ids;
mod inbound;

pub use action::{AckToken, Action, Delivery, StoreOp};
pub use completion::{
    Completion, PublishCompleter, PublishCompletion, PublishOutcome, SubscribeCompletion,
    UnsubscribeCompletion,
};
pub use ids::PacketIds;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use paho_packets::{
    ConnAck, Packet, PacketId, PubAck, PubComp, PubCompReasonCode, PubRec, PubRel,
    PubRelReasonCode, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use self::completion::Completer;
use self::inbound::AckQueue;
use crate::store::{EntryKind, Key, Store, StoredEntry};
use crate::Error;

/// Session settings, validated on construction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionConfig {
    session_expiry_interval: u32,
    on_session_lost: SessionLostPolicy,
}

/// What the session does with its unfinished outgoing exchanges when the server has forgotten
/// the session (CONNACK with Session Present = 0: a broker restarted without persistence, a
/// session that expired on the server, a first connection after a restart with Session Expiry
/// 0) or when it expired locally.
///
/// Nothing the client accepted is dropped in silence under either policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionLostPolicy {
    /// Send every unfinished outgoing exchange again as a new one (DUP 0), in its original
    /// order: those awaiting PUBACK, PUBREC *and* PUBCOMP (a broker may release a QoS 2
    /// message to subscribers only at PUBREL, as mosquitto does, so one lost at that stage may
    /// never have reached anyone). Exchanges restored from a store after a restart are
    /// republished too. Their completion handles stay pending and resolve with the new
    /// exchange's acknowledgement.
    ///
    /// At QoS 1 nothing is lost. At QoS 2 a message that the broker had already released to
    /// subscribers before it lost its state can arrive twice: the broker no longer knows the
    /// packet id, so no client can tell a duplicate apart then.
    #[default]
    Republish,
    /// Give up on the unfinished exchanges and hand them back: a live completion fails with
    /// [`Error::SessionLost`] (or [`Error::SessionExpired`]) carrying the message, and an
    /// exchange restored from the store (whose caller belonged to an earlier process) comes
    /// out as [`Action::Abandoned`] for the driver to pass to the application.
    Fail,
}

impl SessionConfig {
    /// Defaults: Session Expiry Interval 0 (the session ends with the connection), as in MQTT.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Session Expiry Interval in seconds that the driver sends in CONNECT; `u32::MAX`
    /// means the session never expires.
    pub fn session_expiry_interval(mut self, secs: u32) -> Self {
        self.session_expiry_interval = secs;
        self
    }

    /// What to do with unfinished outgoing exchanges when the session is lost (default:
    /// [`SessionLostPolicy::Republish`]).
    pub fn on_session_lost(mut self, policy: SessionLostPolicy) -> Self {
        self.on_session_lost = policy;
        self
    }
}

/// Where an outgoing QoS 1/2 publish is in its exchange: which acknowledgement it awaits.
#[derive(Debug)]
enum OutState {
    /// QoS 1, PUBLISH stored, awaiting PUBACK.
    Puback(Publish),
    /// QoS 2, PUBLISH stored, awaiting PUBREC.
    Pubrec(Publish),
    /// QoS 2, PUBREL stored (with the message, so that it can be republished if the server
    /// forgets the session), awaiting PUBCOMP. `None` only for an entry restored from a store
    /// written before the message was kept with the PUBREL.
    Pubcomp(Option<Publish>),
}

#[derive(Debug)]
struct Outbound {
    order: u64,
    state: OutState,
    /// Whether it was sent on the current connection and so uses one unit of send quota.
    counted: bool,
    /// Whether the server has never seen it in its current session: the next send is a first
    /// send (DUP 0). Set when a lost session is republished.
    fresh: bool,
    /// Whether its first [`StoreOp::Put`] is known to have completed: true for exchanges
    /// restored from a store and for those of an earlier connection (a driver finishes its
    /// store operations before the next connection begins); false for one stored on this
    /// connection. Decides which error a store failure gives its handle.
    stored: bool,
    /// `None` for exchanges restored from a store (their caller belonged to another process).
    completer: Option<Completer<PublishOutcome>>,
    /// The outgoing queue entry this message came from (see
    /// [`Session::publish_with_origin`]), stored with it.
    origin: Option<u64>,
    /// When it was accepted, for its Message Expiry Interval; `None` for one restored from a
    /// store until its first resend (the time of acceptance is not stored, so after a restart
    /// the interval counts from the restart).
    accepted: Option<Instant>,
}

#[derive(Debug)]
struct Waiting {
    publish: Publish,
    completer: Completer<PublishOutcome>,
    origin: Option<u64>,
    /// When the application handed it over: its Message Expiry Interval counts from here.
    accepted: Instant,
}

/// Why a session is being given up.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// CONNACK said Session Present = 0.
    ServerForgot,
    /// Its Session Expiry Interval passed (or was 0) after the link dropped.
    Expired,
}

impl Loss {
    fn error(self, message: Publish) -> Error {
        let message = Box::new(message);
        match self {
            Loss::ServerForgot => Error::SessionLost { message },
            Loss::Expired => Error::SessionExpired { message },
        }
    }
}

#[derive(Debug)]
enum Request {
    Subscribe(Completer<SubAck>),
    Unsubscribe(Completer<UnsubAck>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection.
    Down,
    /// CONNECT sent with this Clean Start flag, CONNACK awaited.
    Connecting { clean_start: bool },
    /// CONNACK received.
    Up,
}

/// The state of one MQTT session on the client side, independent of any connection: packet
/// ids, send quota, outgoing exchanges and their completion handles, resend on reconnect and
/// inbound QoS 2 deduplication.
///
/// It performs no I/O and reads no clock. A driver feeds it events (method calls, with the
/// current time where time matters) and carries out the [`Action`]s it returns through
/// [`poll_action`](Session::poll_action). See the [crate documentation](crate) for the
/// contract.
#[derive(Debug)]
pub struct Session {
    /// The latest time a caller passed in (every mutating input takes the current time, so
    /// that time-dependent rules, such as message expiry, never read a clock).
    now: Option<Instant>,
    expiry: u32,
    lost_policy: SessionLostPolicy,
    link: Link,
    /// When the last established connection dropped; `None` while connected, before the first
    /// connection, and after a restart (the server's Session Present decides then). Failed
    /// connection attempts do not move it: expiry counts from the loss of the session's link.
    lost_at: Option<Instant>,
    ids: PacketIds,
    outbound: exchanges::Slab<Outbound>,
    /// Send order of `outbound`, for resending.
    order: exchanges::SendOrder,
    next_order: u64,
    /// QoS 1/2 publishes waiting for a connection, send quota or a packet id, in arrival order.
    waiting: VecDeque<Waiting>,
    /// Stored publishes to resend once send quota allows, in send order.
    resend: VecDeque<PacketId>,
    requests: HashMap<PacketId, Request>,
    /// Incoming QoS 2 exchanges awaiting PUBREL.
    inbound: HashMap<PacketId, inbound::State>,
    acks: AckQueue,
    receive_max: u16,
    in_flight: usize,
    /// The server's limits from the last CONNACK.
    limits: Limits,
    actions: VecDeque<Action>,
    /// Finished exchanges whose queue entry is not yet known to be gone from its queue: their
    /// store entries (and packet ids) are kept so that a restart still knows the queue entry
    /// was handed over. By origin.
    retired: BTreeMap<u64, PacketId>,
    /// Every origin below this has left its queue durably.
    released_before: u64,
    /// What store values are cut from (see [`encode_stored`]).
    arena: BytesMut,
}

/// What the server said it accepts (CONNACK); MQTT's defaults until then.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_packet_size: u32,
    max_qos: QoS,
    retain_available: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: u32::MAX,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
        }
    }
}

impl Limits {
    /// Checks a PUBLISH against the server's capabilities.
    fn check(&self, p: &Publish) -> Result<(), Error> {
        if p.qos > self.max_qos {
            return Err(Error::NotSupported {
                reason_code: 0x9B,
                what: "QoS above the server's Maximum QoS",
            });
        }
        if p.retain && !self.retain_available {
            return Err(Error::NotSupported {
                reason_code: 0x9A,
                what: "retained messages",
            });
        }
        self.check_size(p)
    }

    fn check_size(&self, p: &Publish) -> Result<(), Error> {
        // The size as first sent (identifier iff QoS > 0, no alias), without a clone.
        let size = p.sent_len()?;
        if size as u64 > u64::from(self.max_packet_size) {
            return Err(Error::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        Ok(())
    }
}

fn encode(packet: &Packet) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf)?;
    Ok(buf.freeze())
}

/// What is left, in whole seconds, of a Message Expiry Interval after `waited`; `None` once it
/// has passed (MQTT v5 §3.3.2.3.3: the interval sent on is the one received minus the time
/// the message has waited).
fn expiry_left(interval: u32, waited: Duration) -> Option<u32> {
    let waited = u32::try_from(waited.as_secs()).unwrap_or(u32::MAX);
    interval.checked_sub(waited).filter(|left| *left > 0)
}

/// Marks the origin trailer after a stored PUBLISH.
const ORIGIN_MAGIC: &[u8; 8] = b"PAHOORG1";

/// The store value of an outgoing PUBLISH: the encoded packet, followed, for a message that
/// came from an outgoing queue, by `ORIGIN_MAGIC` and the queue entry's number (u64, little
/// endian). The packet's own length says where it ends, so the trailer is never ambiguous.
///
/// It takes the packet by reference (callers wrap their PUBLISH and take it back out), so that
/// encoding it costs no clone of the message.
///
/// The value is cut from `arena`, a shared buffer of [`ARENA_CHUNK`] bytes that the next
/// values are cut from too, so a small message costs no allocation of its own (a reference
/// count instead). When the chunk is full, encoding reserves a new one (or reuses the old one
/// in place if every value cut from it is gone); a value larger than a chunk gets a buffer of
/// its own size. The cost: a live value keeps its whole chunk alive, so memory held by the
/// unacknowledged messages is at most one chunk per message even when the server acknowledges
/// out of order, and about their own size when it acknowledges in order.
fn encode_stored(
    arena: &mut BytesMut,
    packet: &Packet,
    origin: Option<u64>,
) -> Result<Bytes, Error> {
    packet.encode(arena)?;
    if let Some(o) = origin {
        arena.extend_from_slice(ORIGIN_MAGIC);
        arena.extend_from_slice(&o.to_le_bytes());
    }
    Ok(arena.split().freeze())
}

/// The size of the shared buffer that store values are cut from (see [`encode_stored`]).
const ARENA_CHUNK: usize = 2048;

/// Splits a stored value into its packet and origin (see [`encode_stored`]).
fn decode_stored(value: &Bytes) -> Result<(Packet, Option<u64>), &'static str> {
    let mut buf = BytesMut::from(&value[..]);
    let packet = match paho_packets::decode(&mut buf, paho_packets::MAX_PACKET_SIZE) {
        Ok(Some(p)) => p,
        _ => return Err("stored bytes are not a valid MQTT packet"),
    };
    match buf.len() {
        0 => Ok((packet, None)),
        16 if &buf[..8] == ORIGIN_MAGIC => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[8..]);
            Ok((packet, Some(u64::from_le_bytes(n))))
        }
        _ => Err("stored bytes have trailing garbage after the packet"),
    }
}

impl Session {
    /// A new, empty session.
    pub fn new(config: SessionConfig) -> Self {
        Session {
            now: None,
            expiry: config.session_expiry_interval,
            lost_policy: config.on_session_lost,
            link: Link::Down,
            lost_at: None,
            ids: PacketIds::new(),
            outbound: exchanges::Slab::default(),
            order: exchanges::SendOrder::default(),
            next_order: 0,
            waiting: VecDeque::new(),
            resend: VecDeque::new(),
            requests: HashMap::new(),
            inbound: HashMap::new(),
            acks: AckQueue::default(),
            receive_max: u16::MAX,
            in_flight: 0,
            limits: Limits::default(),
            actions: VecDeque::new(),
            retired: BTreeMap::new(),
            released_before: 0,
            arena: BytesMut::with_capacity(ARENA_CHUNK),
        }
    }

    /// A session resuming what `entries` (a [`Store::list`], in send order) hold: outgoing
    /// publishes to resend, PUBRELs to resend, and incoming QoS 2 ids whose PUBLISH must not be
    /// delivered again.
    ///
    /// An entry that does not decode, or does not match its key and kind, is not loaded: a
    /// [`StoreOp::Quarantine`] action for it is queued (and logged) instead, so one bad entry
    /// costs one message rather than the whole session.
    pub fn restore(config: SessionConfig, entries: impl IntoIterator<Item = StoredEntry>) -> Self {
        let mut s = Session::new(config);
        for entry in entries {
            if let Err(reason) = s.restore_one(&entry) {
                tracing::warn!(key = ?entry.key(), reason, "session: unusable stored entry quarantined");
                s.actions.push_back(Action::Store(StoreOp::Quarantine {
                    key: entry.key(),
                    reason: reason.to_owned(),
                }));
            }
        }
        s
    }

    /// Lists `store` and [restores](Session::restore) from it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub fn restore_from<S: Store>(
        config: SessionConfig,
        store: &S,
    ) -> impl Future<Output = Result<Session, Error>> + Send + 'static {
        // Boxed because a trait method's `impl Future` is taken to borrow `store`, although it is
        // `'static`; boxing it as `dyn Future + 'static` lets the returned future stand alone.
        let list: std::pin::Pin<Box<dyn Future<Output = Result<Vec<StoredEntry>, Error>> + Send>> =
            Box::pin(store.list());
        async move { Ok(Session::restore(config, list.await?)) }
    }

    fn restore_one(&mut self, entry: &StoredEntry) -> Result<(), &'static str> {
        let (packet, origin) = decode_stored(entry.value())?;
        if origin.is_some() && !matches!(packet, Packet::Publish(_)) {
            return Err("an origin trailer after a packet that is not a PUBLISH");
        }
        let id = entry.key().packet_id();
        match (entry.key(), entry.kind(), packet) {
            (Key::Outbound(_), EntryKind::Publish, Packet::Publish(p)) => {
                if p.packet_id != Some(id) {
                    return Err("stored PUBLISH has another packet id than its key");
                }
                if p.topic.is_empty() || p.properties.topic_alias.is_some() {
                    return Err("stored PUBLISH lacks its topic name or carries a topic alias");
                }
                let state = match p.qos {
                    QoS::AtLeastOnce => OutState::Puback(p),
                    QoS::ExactlyOnce => OutState::Pubrec(p),
                    QoS::AtMostOnce => return Err("stored PUBLISH has QoS 0"),
                };
                self.insert_outbound(id, state, None, origin);
            }
            (Key::Outbound(_), EntryKind::PubRel, Packet::Publish(p)) => {
                // The PUBREL stage keeps its message (see `on_pubrec`).
                if p.packet_id != Some(id) || p.qos != QoS::ExactlyOnce {
                    return Err("stored PUBREL's message has another packet id or QoS");
                }
                if p.topic.is_empty() || p.properties.topic_alias.is_some() {
                    return Err("stored PUBLISH lacks its topic name or carries a topic alias");
                }
                self.insert_outbound(id, OutState::Pubcomp(Some(p)), None, origin);
            }
            (Key::Outbound(_), EntryKind::PubRel, Packet::PubRel(p)) if p.packet_id == id => {
                // Written by a version that stored the bare PUBREL: it can be completed, but
                // not republished if the server has forgotten the session.
                self.insert_outbound(id, OutState::Pubcomp(None), None, None);
            }
            (Key::Inbound(_), EntryKind::PubRec, Packet::PubRec(p)) if p.packet_id == id => {
                self.inbound.insert(id, inbound::State::Recorded);
            }
            _ => return Err("stored packet does not match its key and kind"),
        }
        Ok(())
    }

    /// The unfinished exchanges' ids in send order.
    fn ids_in_send_order(&self) -> Vec<PacketId> {
        self.order
            .snapshot()
            .into_iter()
            .filter(|(o, id)| self.outbound.get(id).is_some_and(|out| out.order == *o))
            .map(|(_, id)| id)
            .collect()
    }

    fn insert_outbound(
        &mut self,
        id: PacketId,
        state: OutState,
        completer: Option<Completer<PublishOutcome>>,
        origin: Option<u64>,
    ) {
        self.ids.claim(id);
        let order = self.next_order;
        self.next_order += 1;
        self.order.push(order, id);
        self.outbound.insert(
            id,
            Outbound {
                order,
                state,
                counted: false,
                fresh: false,
                // A restored exchange is in the store; a live one has just had its Put issued.
                stored: completer.is_none(),
                completer,
                origin,
                accepted: None,
            },
        );
    }

    // ----- connection lifecycle -------------------------------------------------------------

    /// Call before sending CONNECT. Returns the Clean Start flag to send: `clean_start`, or
    /// `true` if the session expired while offline (its Session Expiry Interval passed since
    /// the link dropped), in which case the [`SessionLostPolicy`] is applied first
    /// (republish: the unfinished exchanges go out again as new ones after CONNACK; fail:
    /// handles fail with [`Error::SessionExpired`], store reset queued).
    ///
    /// The driver must have carried out every store operation of the previous connection
    /// before it calls this: exchanges from then on count as stored (see
    /// [`on_store_failed`](Session::on_store_failed)).
    pub fn begin_connect(&mut self, clean_start: bool, now: Instant) -> bool {
        self.tick(now);
        if self.link == Link::Up {
            // The driver did not report the old connection's end; it has ended now.
            self.on_connection_lost(now);
        }
        for out in self.outbound.values_mut() {
            out.stored = true;
        }
        let mut clean = clean_start;
        if let Some(lost) = self.lost_at {
            let expired = self.expiry != u32::MAX
                && now.saturating_duration_since(lost) >= Duration::from_secs(self.expiry.into());
            if expired {
                tracing::debug!("session expired while offline; starting clean");
                self.lose_session(Loss::Expired);
                clean = true;
            }
        }
        self.link = Link::Connecting { clean_start: clean };
        clean
    }

    /// Call with the server's CONNACK.
    ///
    /// On success this takes the send quota from Receive Maximum (default 65,535) and the
    /// Session Expiry Interval if the server set one. With Session Present = 1 it resends every
    /// unfinished exchange in its original order (PUBLISH with DUP set, as far as the quota
    /// allows; PUBREL as PUBREL). With Session Present = 0 it applies the
    /// [`SessionLostPolicy`]: by default every unfinished exchange is sent again as a new one
    /// (DUP 0, in order, within the quota) and inbound QoS 2 markers are dropped; with
    /// [`SessionLostPolicy::Fail`] the store is reset and the exchanges are handed back
    /// ([`Error::SessionLost`], [`Action::Abandoned`]). Publishes that were waiting for quota
    /// and never sent are kept and sent after them.
    ///
    /// A CONNACK with a failure reason code leaves the session offline, untouched, and returns
    /// [`Error::ConnectionRefused`] with that code. Session Present = 1 in answer to Clean
    /// Start = 1 is a protocol violation ([`Error::Protocol`], 0x82) and also leaves the session
    /// offline. A second CONNACK on a connection that is up is a protocol violation too and
    /// changes nothing (the driver disconnects and reports the loss).
    pub fn on_connack(&mut self, connack: &ConnAck, now: Instant) -> Result<(), Error> {
        self.tick(now);
        if self.link == Link::Up {
            // A second CONNACK on one connection (MQTT-3.2.0-2 allows one). Taking it as a new
            // connection would resend every unfinished exchange on the link that already
            // carries them: duplicates, and more than Receive Maximum in flight.
            return Err(protocol("a second CONNACK on one connection"));
        }
        if connack.reason_code.is_error() {
            self.link = Link::Down;
            return Err(Error::ConnectionRefused {
                reason_code: connack.reason_code.as_u8(),
            });
        }
        if self.link == (Link::Connecting { clean_start: true }) && connack.session_present {
            self.link = Link::Down;
            return Err(protocol("Session Present = 1 in answer to Clean Start = 1"));
        }
        self.link = Link::Up;
        self.lost_at = None;
        self.receive_max = connack
            .properties
            .receive_maximum
            .unwrap_or(u16::MAX)
            .max(1);
        if let Some(secs) = connack.properties.session_expiry_interval {
            self.expiry = secs;
        }
        self.limits = Limits {
            max_packet_size: connack.properties.maximum_packet_size.unwrap_or(u32::MAX),
            max_qos: connack.properties.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: connack.properties.retain_available.unwrap_or(true),
        };
        self.in_flight = 0;
        self.resend.clear();
        if !connack.session_present {
            self.lose_session(Loss::ServerForgot);
        }
        {
            // Republished exchanges (Session Present = 0) go out like resent ones, in order,
            // but as first sends: `fresh` clears DUP.
            let ids = self.ids_in_send_order();
            for id in ids {
                let Some(out) = self.outbound.get_mut(&id) else {
                    continue;
                };
                match out.state {
                    OutState::Pubcomp(_) => {
                        // A PUBREL already counts against the quota (the server holds the
                        // message), and must be resent whatever the quota says.
                        out.counted = true;
                        self.in_flight += 1;
                        self.actions
                            .push_back(Action::Send(Packet::PubRel(PubRel::new(id))));
                    }
                    OutState::Puback(_) | OutState::Pubrec(_) => {
                        // In original order while the quota lasts; the rest are held back (in
                        // order) and go out as acknowledgements free quota.
                        if self.resend.is_empty() && self.in_flight < usize::from(self.receive_max)
                        {
                            self.resend_publish(id);
                        } else {
                            self.resend.push_back(id);
                        }
                    }
                }
            }
        }
        tracing::debug!(
            session_present = connack.session_present,
            receive_maximum = self.receive_max,
            unfinished = self.outbound.len(),
            resent = self.in_flight,
            held_back = self.resend.len(),
            "session: connected"
        );
        self.pump();
        Ok(())
    }

    /// Call when the connection closes, for whatever reason.
    ///
    /// Unacknowledged publishes stay in the session for the next connection. SUBSCRIBE and
    /// UNSUBSCRIBE awaiting their acknowledgement fail with [`Error::ConnectionLost`]. Ack
    /// tokens of this connection become stale. With a Session Expiry Interval of 0 the session
    /// is cleared at once ([`Error::SessionExpired`]).
    pub fn on_connection_lost(&mut self, now: Instant) {
        self.tick(now);
        match self.link {
            Link::Down => return,
            Link::Connecting { .. } => {
                // No CONNACK: nothing was sent on this connection, nothing to undo.
                self.link = Link::Down;
                return;
            }
            Link::Up => {}
        }
        self.link = Link::Down;
        self.lost_at = Some(now);
        tracing::debug!(
            unfinished = self.outbound.len(),
            waiting = self.waiting.len(),
            expiry_interval = self.expiry,
            "session: connection lost"
        );
        self.in_flight = 0;
        self.resend.clear();
        for out in self.outbound.values_mut() {
            out.counted = false;
        }
        for (id, req) in self.requests.drain() {
            self.ids.free(id);
            match req {
                Request::Subscribe(c) => c.complete(Err(Error::ConnectionLost)),
                Request::Unsubscribe(c) => c.complete(Err(Error::ConnectionLost)),
            }
        }
        self.acks.new_connection();
        for st in self.inbound.values_mut() {
            if *st == inbound::State::Awaiting {
                *st = inbound::State::Orphaned;
            }
        }
        if self.expiry == 0 {
            self.lose_session(Loss::Expired);
        }
    }

    /// The session is gone (the server forgot it, or it expired): applies the
    /// [`SessionLostPolicy`] to the unfinished outgoing exchanges and drops inbound QoS 2
    /// state (the server's side of it is gone, so a stale marker would swallow a new message
    /// that reuses its packet id).
    fn lose_session(&mut self, loss: Loss) {
        if self.outbound.is_empty() && self.inbound.is_empty() {
            return;
        }
        tracing::info!(
            unfinished = self.outbound.len(),
            inbound = self.inbound.len(),
            ?loss,
            policy = ?self.lost_policy,
            "session: lost"
        );
        self.resend.clear();
        self.in_flight = 0;
        match self.lost_policy {
            SessionLostPolicy::Republish => {
                // Nothing leaves the store here: every exchange keeps its entry (and packet
                // id, which the server no longer knows) until its new exchange finishes, so a
                // crash now loses nothing. Inbound markers are deleted one by one.
                let ids = self.ids_in_send_order();
                for id in ids {
                    let Some(out) = self.outbound.get_mut(&id) else {
                        continue;
                    };
                    out.fresh = true;
                    out.counted = false;
                    let message = match &out.state {
                        OutState::Puback(_) | OutState::Pubrec(_) => continue,
                        OutState::Pubcomp(m) => m.clone(),
                    };
                    let Some(p) = message else {
                        tracing::warn!(
                            id = id.get(),
                            "session: a QoS 2 exchange restored without its message cannot be \
                             republished; dropped"
                        );
                        self.finish(id, Err(Error::SessionClosed));
                        continue;
                    };
                    // Back to "PUBLISH stored": if the process dies before PUBREC, a restart
                    // must republish it, not resend a PUBREL that the new server session would
                    // answer with 0x92 (taken as success).
                    let packet = Packet::Publish(p);
                    let value = encode_stored(&mut self.arena, &packet, out.origin);
                    let Packet::Publish(p) = packet else {
                        continue;
                    };
                    match value {
                        Ok(value) => {
                            out.state = OutState::Pubrec(p);
                            self.actions.push_back(Action::Store(StoreOp::Put {
                                key: Key::Outbound(id),
                                kind: EntryKind::Publish,
                                value,
                            }));
                        }
                        Err(e) => self.finish(id, Err(e)),
                    }
                }
            }
            SessionLostPolicy::Fail => {
                let ids = self.ids_in_send_order();
                for id in ids {
                    let Some(out) = self.outbound.remove(&id) else {
                        continue;
                    };
                    self.ids.free(id);
                    let message = match out.state {
                        OutState::Puback(p) | OutState::Pubrec(p) | OutState::Pubcomp(Some(p)) => {
                            Some(given_back(p))
                        }
                        OutState::Pubcomp(None) => None,
                    };
                    match (out.completer, message) {
                        (Some(c), Some(m)) => c.complete(Err(loss.error(m))),
                        (Some(c), None) => c.complete(Err(Error::SessionClosed)),
                        (None, Some(m)) => self.actions.push_back(Action::Abandoned(m)),
                        (None, None) => tracing::warn!(
                            id = id.get(),
                            "session: a QoS 2 exchange restored without its message was abandoned"
                        ),
                    }
                }
                self.order.clear();
                for (_, id) in std::mem::take(&mut self.retired) {
                    self.ids.free(id);
                }
                self.actions.push_back(Action::Store(StoreOp::Reset));
                self.inbound.clear();
                return;
            }
        }
        let inbound: Vec<PacketId> = self.inbound.drain().map(|(id, _)| id).collect();
        for id in inbound {
            self.actions
                .push_back(Action::Store(StoreOp::Delete(Key::Inbound(id))));
        }
    }

    /// Updates the Session Expiry Interval (for example from a DISCONNECT's property).
    pub fn set_session_expiry_interval(&mut self, secs: u32) {
        self.expiry = secs;
    }

    /// The Session Expiry Interval in force.
    pub fn session_expiry_interval(&self) -> u32 {
        self.expiry
    }

    // ----- outgoing -------------------------------------------------------------------------

    /// Starts a publish.
    ///
    /// QoS 0 is sent at once if connected ([`Error::NotConnected`] otherwise) and its
    /// completion is already resolved with [`PublishOutcome::Sent`].
    ///
    /// QoS 1/2 joins the first-in, first-out queue of publishes; when it reaches the front
    /// while connected and the send quota allows, it gets a packet id, is stored (a
    /// [`StoreOp::Put`]) and sent. Any topic alias and DUP flag are removed and the packet id
    /// replaced. Fails at once with [`Error::PacketIdsExhausted`] if it could be sent now but
    /// every packet id is in use, and with [`Error::InvalidPacket`] for a PUBLISH without a
    /// topic name.
    pub fn publish(&mut self, publish: Publish, now: Instant) -> Result<PublishCompletion, Error> {
        self.publish_inner(publish, None, now)
    }

    /// [`publish`](Session::publish) for a message taken from an outgoing queue, whose entry
    /// is numbered `origin` (numbers increase in queue order). The number is stored with the
    /// message, so that after a crash between "stored in the session" and "removed from the
    /// queue" the queue's owner can see ([`held_origins`](Session::held_origins)) that the
    /// session already holds the entry, and remove it instead of sending it a second time.
    ///
    /// Until the owner reports the entry gone from its queue
    /// ([`release_origins_before`](Session::release_origins_before)), a finished exchange
    /// keeps its store entry and packet id (its handle resolves as usual): else a crash after
    /// the acknowledgement but before the queue removal became durable would leave the entry
    /// in the queue with nothing to say it was delivered, and it would be sent again.
    pub fn publish_with_origin(
        &mut self,
        publish: Publish,
        origin: u64,
        now: Instant,
    ) -> Result<PublishCompletion, Error> {
        self.publish_inner(publish, Some(origin), now)
    }

    /// The queue entries (by origin number) that this session holds, unfinished or finished
    /// but not yet released, in increasing order. A queue owner calls it at start-up, after a
    /// [`restore`](Session::restore): each queue head whose number is in it must be removed
    /// from the queue, not sent again.
    pub fn held_origins(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .outbound
            .values()
            .filter_map(|o| o.origin)
            .chain(self.retired.keys().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Reports that every queue entry numbered below `seq` is durably gone from its queue:
    /// finished exchanges that came from them delete their store entries and free their
    /// packet ids now, and later ones do so when they finish.
    pub fn release_origins_before(&mut self, seq: u64) {
        if seq <= self.released_before {
            return;
        }
        self.released_before = seq;
        let keep = self.retired.split_off(&seq);
        for (_, id) in std::mem::replace(&mut self.retired, keep) {
            self.ids.free(id);
            self.actions
                .push_back(Action::Store(StoreOp::Delete(Key::Outbound(id))));
        }
    }

    /// [`publish`](Session::publish) (or [`publish_with_origin`](Session::publish_with_origin)
    /// when `origin` is given) for a message whose completion was made before it reached the
    /// session, by [`PublishCompletion::pair_for_handover`]: a driver that takes messages from
    /// its handles over a channel gives each handle its completion at once, and only one
    /// allocation is made per publish. Every outcome, an immediate failure included, goes to
    /// `completer`; a QoS 0 message completes as [`PublishOutcome::Sent`] when it is queued.
    pub fn publish_with(
        &mut self,
        publish: Publish,
        origin: Option<u64>,
        completer: PublishCompleter,
        now: Instant,
    ) {
        let mut completer = completer.0;
        completer.in_session();
        // The caller may have dropped its handle before the message got here (fire and
        // forget: `drop(client.start_publish(m))`). As with `publish`, whose completion is
        // made here, a message handed over is sent if the quota allows it now; only one that
        // has to wait for quota and is abandoned meanwhile is withdrawn. So the caller's side
        // counts as present until this call has pumped.
        let _present = completer.hold();
        match self.admit(publish, now) {
            Err(e) => completer.complete(Err(e)),
            Ok(None) => completer.complete(Ok(PublishOutcome::Sent)),
            Ok(Some(publish)) => self.enqueue(publish, completer, origin, now),
        }
    }

    fn publish_inner(
        &mut self,
        publish: Publish,
        origin: Option<u64>,
        now: Instant,
    ) -> Result<PublishCompletion, Error> {
        match self.admit(publish, now)? {
            None => Ok(Completion::ready(Ok(PublishOutcome::Sent))),
            Some(publish) => {
                let (completer, completion) = Completion::pair_with_stored();
                self.enqueue(publish, completer, origin, now);
                Ok(completion)
            }
        }
    }

    /// Checks a new publish. A QoS 0 one is sent at once (`None`); a QoS 1/2 one is returned,
    /// checked, to join the queue.
    fn admit(&mut self, mut publish: Publish, now: Instant) -> Result<Option<Publish>, Error> {
        self.tick(now);
        if publish.topic.is_empty() {
            return Err(Error::InvalidPacket(
                "a PUBLISH given to the session needs its topic name (aliases are per connection)",
            ));
        }
        publish.properties.topic_alias = None;
        publish.dup = false;
        if publish.qos == QoS::AtMostOnce {
            if self.link != Link::Up {
                return Err(Error::NotConnected);
            }
            publish.packet_id = None;
            self.limits.check(&publish)?;
            self.actions
                .push_back(Action::Send(Packet::Publish(publish)));
            return Ok(None);
        }
        // Validate now so that a bad packet fails its caller instead of failing later inside
        // the queue (`sent_len` sizes it with a packet id, without cloning it).
        publish.packet_id = Some(PacketId::MIN);
        if self.link == Link::Up {
            // Checked again when it leaves the queue, against the limits in force then.
            self.limits.check(&publish)?;
        } else {
            publish.sent_len()?;
        }
        if self.link == Link::Up
            && self.waiting.is_empty()
            && self.resend.is_empty()
            && self.in_flight < usize::from(self.receive_max)
            && self.ids.in_use() >= usize::from(u16::MAX)
        {
            return Err(Error::PacketIdsExhausted);
        }
        Ok(Some(publish))
    }

    fn enqueue(
        &mut self,
        publish: Publish,
        completer: Completer<PublishOutcome>,
        origin: Option<u64>,
        now: Instant,
    ) {
        self.waiting.push_back(Waiting {
            publish,
            completer,
            origin,
            accepted: now,
        });
        self.pump();
    }

    /// Resends a stored PUBLISH with DUP set, using one unit of quota; or, if the server's
    /// Maximum Packet Size no longer admits it, discards it (MQTT v5 §3.1.2.24) and fails its
    /// handle.
    fn resend_publish(&mut self, id: PacketId) {
        let Some(out) = self.outbound.get_mut(&id) else {
            return;
        };
        let (OutState::Puback(p) | OutState::Pubrec(p)) = &out.state else {
            return;
        };
        if let Err(e) = self.limits.check_size(p) {
            tracing::warn!(id = id.get(), error = %e, "session: stored PUBLISH discarded");
            self.finish(id, Err(e));
            return;
        }
        let now = self.now;
        let accepted = *out
            .accepted
            .get_or_insert_with(|| now.unwrap_or_else(Instant::now));
        let waited = now.map_or(Duration::ZERO, |n| n.saturating_duration_since(accepted));
        let mut p = p.clone();
        if let Some(interval) = p.properties.message_expiry_interval {
            match (expiry_left(interval, waited), p.qos) {
                (Some(left), _) => p.properties.message_expiry_interval = Some(left),
                // Expired. A QoS 1 message is dropped. A QoS 2 one may sit in the server's
                // state under its packet id (PUBLISH sent, no PUBREC back): dropping it would
                // free the id while the server still holds it, and the next message to reuse
                // the id would be taken for a duplicate and swallowed; MQTT also requires
                // resending it. So it goes again with the least interval there is.
                (None, QoS::ExactlyOnce) => p.properties.message_expiry_interval = Some(1),
                (None, _) => {
                    tracing::debug!(id = id.get(), "session: stored PUBLISH expired; dropped");
                    self.finish(id, Err(Error::MessageExpired));
                    return;
                }
            }
        }
        let Some(out) = self.outbound.get_mut(&id) else {
            return;
        };
        p.dup = !out.fresh;
        out.fresh = false;
        out.counted = true;
        self.in_flight += 1;
        self.actions.push_back(Action::Send(Packet::Publish(p)));
    }

    /// Sends what the send quota allows: held-back retransmissions first, then waiting
    /// publishes, each in order.
    fn pump(&mut self) {
        if self.link != Link::Up {
            return;
        }
        while self.in_flight < usize::from(self.receive_max) {
            if let Some(id) = self.resend.pop_front() {
                self.resend_publish(id);
                continue;
            }
            let Some(front) = self.waiting.front() else {
                break;
            };
            if front.completer.is_abandoned() {
                // Dropped before it was stored or sent: withdrawn, as documented.
                self.waiting.pop_front();
                continue;
            }
            let id = match self.ids.allocate() {
                Ok(id) => id,
                // Wait: an id comes free with the next acknowledgement, which pumps again.
                Err(_) => break,
            };
            let Some(Waiting {
                mut publish,
                completer,
                origin,
                accepted,
            }) = self.waiting.pop_front()
            else {
                break;
            };
            // Its Message Expiry Interval counts from when it was accepted: one that passed
            // while it waited for a connection or quota is dropped, never sent; the others go
            // with what is left of it.
            let waited = self
                .now
                .map_or(Duration::ZERO, |n| n.saturating_duration_since(accepted));
            let left = match publish.properties.message_expiry_interval {
                None => None,
                Some(interval) => match expiry_left(interval, waited) {
                    Some(l) => Some(l),
                    None => {
                        self.ids.free(id);
                        completer.complete(Err(Error::MessageExpired));
                        continue;
                    }
                },
            };
            publish.packet_id = Some(id);
            if let Err(e) = self.limits.check(&publish) {
                self.ids.free(id);
                completer.complete(Err(e));
                continue;
            }
            let packet = Packet::Publish(publish);
            let value = encode_stored(&mut self.arena, &packet, origin);
            let Packet::Publish(publish) = packet else {
                break;
            };
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    self.ids.free(id);
                    completer.complete(Err(e));
                    continue;
                }
            };
            let kind = EntryKind::Publish;
            self.actions.push_back(Action::Store(StoreOp::Put {
                key: Key::Outbound(id),
                kind,
                value,
            }));
            let mut sent = publish.clone();
            if left.is_some() {
                sent.properties.message_expiry_interval = left;
            }
            self.actions.push_back(Action::Send(Packet::Publish(sent)));
            let state = if publish.qos == QoS::ExactlyOnce {
                OutState::Pubrec(publish)
            } else {
                OutState::Puback(publish)
            };
            self.insert_outbound(id, state, Some(completer), origin);
            if let Some(out) = self.outbound.get_mut(&id) {
                out.counted = true;
                out.accepted = Some(accepted);
            }
            self.in_flight += 1;
        }
    }

    /// Sends a SUBSCRIBE with a fresh packet id (the given one is replaced). SUBSCRIBE is not
    /// stored and not resent: if the connection drops first, the completion fails with
    /// [`Error::ConnectionLost`].
    pub fn subscribe(
        &mut self,
        mut subscribe: Subscribe,
        now: Instant,
    ) -> Result<SubscribeCompletion, Error> {
        self.tick(now);
        let id = self.request_id()?;
        subscribe.packet_id = id;
        let (completer, completion) = Completion::pair();
        self.requests.insert(id, Request::Subscribe(completer));
        self.actions
            .push_back(Action::Send(Packet::Subscribe(subscribe)));
        Ok(completion)
    }

    /// Sends an UNSUBSCRIBE with a fresh packet id; as [`subscribe`](Session::subscribe).
    pub fn unsubscribe(
        &mut self,
        mut unsubscribe: Unsubscribe,
        now: Instant,
    ) -> Result<UnsubscribeCompletion, Error> {
        self.tick(now);
        let id = self.request_id()?;
        unsubscribe.packet_id = id;
        let (completer, completion) = Completion::pair();
        self.requests.insert(id, Request::Unsubscribe(completer));
        self.actions
            .push_back(Action::Send(Packet::Unsubscribe(unsubscribe)));
        Ok(completion)
    }

    fn request_id(&mut self) -> Result<PacketId, Error> {
        if self.link != Link::Up {
            return Err(Error::NotConnected);
        }
        self.ids.allocate()
    }

    // ----- incoming -------------------------------------------------------------------------

    /// Feeds a packet received from the server.
    ///
    /// Handles PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK; CONNACK must go
    /// to [`on_connack`](Session::on_connack); other packets are ignored (they are the driver's
    /// business). Returns [`Error::Protocol`] when the server broke the protocol in a way the
    /// connection cannot survive; the driver should then disconnect with
    /// [`Error::reason_code`].
    pub fn handle(&mut self, packet: Packet, now: Instant) -> Result<(), Error> {
        self.tick(now);
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(r) => self.on_pubrec(r),
            Packet::PubRel(r) => self.on_pubrel(r),
            Packet::PubComp(c) => self.on_pubcomp(c),
            Packet::SubAck(a) => match self.requests.remove(&a.packet_id) {
                Some(Request::Subscribe(c)) => {
                    self.ids.free(a.packet_id);
                    c.complete(Ok(a));
                    self.pump();
                    Ok(())
                }
                Some(other) => {
                    self.requests.insert(a.packet_id, other);
                    Err(protocol("SUBACK for a packet id that awaits UNSUBACK"))
                }
                None => {
                    tracing::warn!(
                        id = a.packet_id.get(),
                        "SUBACK for an unknown packet id ignored"
                    );
                    Ok(())
                }
            },
            Packet::UnsubAck(a) => match self.requests.remove(&a.packet_id) {
                Some(Request::Unsubscribe(c)) => {
                    self.ids.free(a.packet_id);
                    c.complete(Ok(a));
                    self.pump();
                    Ok(())
                }
                Some(other) => {
                    self.requests.insert(a.packet_id, other);
                    Err(protocol("UNSUBACK for a packet id that awaits SUBACK"))
                }
                None => {
                    tracing::warn!(
                        id = a.packet_id.get(),
                        "UNSUBACK for an unknown packet id ignored"
                    );
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }

    /// Ends an outgoing exchange: frees its id and quota, deletes it from the store and resolves
    /// its handle. Does not pump (callers decide when, so resend order is not disturbed).
    fn finish(&mut self, id: PacketId, outcome: Result<PublishOutcome, Error>) {
        if let Some(out) = self.outbound.remove(&id) {
            let outbound = &self.outbound;
            self.order.tidy(outbound.len(), |o, id| {
                outbound.get(&id).is_some_and(|out| out.order == o)
            });
            if out.counted {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            match out.origin {
                Some(o) if o >= self.released_before => {
                    // Its queue entry may still be in the queue: keep the store entry (and
                    // the id) as the record that it was handed over, until it is released.
                    self.retired.insert(o, id);
                }
                _ => {
                    self.ids.free(id);
                    self.actions
                        .push_back(Action::Store(StoreOp::Delete(Key::Outbound(id))));
                }
            }
            tracing::trace!(
                id = id.get(),
                ok = outcome.is_ok(),
                "session: publish finished"
            );
            if let Some(c) = out.completer {
                c.complete(outcome);
            }
        }
    }

    fn on_puback(&mut self, ack: PubAck) -> Result<(), Error> {
        match self.outbound.get(&ack.packet_id).map(|o| &o.state) {
            Some(OutState::Puback(_)) => {
                let id = ack.packet_id;
                self.finish(id, Ok(PublishOutcome::PubAck(ack)));
                self.pump();
                Ok(())
            }
            Some(_) => Err(protocol("PUBACK for a QoS 2 exchange")),
            None => {
                tracing::warn!(
                    id = ack.packet_id.get(),
                    "PUBACK for an unknown packet id ignored"
                );
                Ok(())
            }
        }
    }

    fn on_pubrec(&mut self, rec: PubRec) -> Result<(), Error> {
        let id = rec.packet_id;
        match self.outbound.get_mut(&id) {
            Some(out) => match out.state {
                // PUBREC answers a PUBLISH sent on this connection (a server resends only
                // PUBLISH and PUBREL on reconnect). One held back by the quota, not yet resent,
                // cannot have reached this server session: taking the PUBREC would send a
                // PUBREL outside the quota (more than Receive Maximum in flight) for a message
                // the server may never have had. Found by the `session` fuzz target.
                OutState::Pubrec(_) if !out.counted => {
                    Err(protocol("PUBREC for a PUBLISH not sent on this connection"))
                }
                OutState::Pubrec(_) if rec.reason_code.is_error() => {
                    self.finish(id, Ok(PublishOutcome::PubRec(rec)));
                    self.pump();
                    Ok(())
                }
                OutState::Pubcomp(_) => {
                    // A repeated PUBREC is answered with the PUBREL again (nothing to store).
                    self.actions
                        .push_back(Action::Send(Packet::PubRel(PubRel::new(id))));
                    Ok(())
                }
                OutState::Pubrec(_) => {
                    // Its PUBLISH was on the wire, so its first Put completed: a later failed
                    // Put for it (the PUBREL stage, a republish) does not make it "not stored".
                    out.stored = true;
                    let OutState::Pubrec(p) =
                        std::mem::replace(&mut out.state, OutState::Pubcomp(None))
                    else {
                        return Ok(());
                    };
                    // The PUBREL stage keeps the message in the store (the value is the
                    // PUBLISH, the kind says PUBREL): if the server forgets the session before
                    // PUBCOMP, it may never have released the message, and it must be
                    // republished, even by a restarted process.
                    let packet = Packet::Publish(p);
                    let value = encode_stored(&mut self.arena, &packet, out.origin);
                    let Packet::Publish(p) = packet else {
                        return Ok(());
                    };
                    out.state = OutState::Pubcomp(Some(p));
                    let value = value?;
                    self.actions.push_back(Action::Store(StoreOp::Put {
                        key: Key::Outbound(id),
                        kind: EntryKind::PubRel,
                        value,
                    }));
                    self.actions
                        .push_back(Action::Send(Packet::PubRel(PubRel::new(id))));
                    Ok(())
                }
                OutState::Puback(_) => Err(protocol("PUBREC for a QoS 1 exchange")),
            },
            None => {
                let mut pubrel = PubRel::new(id);
                pubrel.reason_code = PubRelReasonCode::PacketIdentifierNotFound;
                self.actions.push_back(Action::Send(Packet::PubRel(pubrel)));
                Ok(())
            }
        }
    }

    fn on_pubcomp(&mut self, comp: PubComp) -> Result<(), Error> {
        match self.outbound.get(&comp.packet_id).map(|o| &o.state) {
            Some(OutState::Pubcomp(_)) => {
                let id = comp.packet_id;
                self.finish(id, Ok(PublishOutcome::PubComp(comp)));
                self.pump();
                Ok(())
            }
            Some(_) => Err(protocol("PUBCOMP before PUBREC")),
            None => {
                tracing::warn!(
                    id = comp.packet_id.get(),
                    "PUBCOMP for an unknown packet id ignored"
                );
                Ok(())
            }
        }
    }

    fn on_publish(&mut self, publish: Publish) -> Result<(), Error> {
        let (qos, id) = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                self.actions
                    .push_back(Action::Deliver(Delivery::new(publish, None)));
                return Ok(());
            }
            (qos, Some(id)) => (qos, id),
            (_, None) => return Err(protocol("QoS 1/2 PUBLISH without a packet id")),
        };
        if qos == QoS::ExactlyOnce {
            match self.inbound.get_mut(&id) {
                Some(inbound::State::Recorded | inbound::State::Orphaned) => {
                    // Accepted before (on an earlier connection or by an earlier process), or
                    // delivered on an earlier connection of this process: acknowledge (an
                    // orphan's marker is stored first, in `flush_acks`), do not deliver again.
                    let token = self.acks.push(id, qos);
                    self.acks.mark(token);
                    return self.flush_acks();
                }
                Some(inbound::State::Awaiting) => {
                    // Same connection, the application has not acked yet: its PUBREC will go.
                    return Ok(());
                }
                None => {
                    let token = self.acks.push(id, qos);
                    self.inbound.insert(id, inbound::State::Awaiting);
                    self.actions
                        .push_back(Action::Deliver(Delivery::new(publish, Some(token))));
                    return Ok(());
                }
            }
        }
        let token = self.acks.push(id, qos);
        self.actions
            .push_back(Action::Deliver(Delivery::new(publish, Some(token))));
        Ok(())
    }

    fn on_pubrel(&mut self, rel: PubRel) -> Result<(), Error> {
        let id = rel.packet_id;
        let mut comp = PubComp::new(id);
        if matches!(
            self.inbound.get(&id),
            Some(inbound::State::Awaiting | inbound::State::Orphaned)
        ) {
            // Our PUBREC has not been sent (the application has not acked yet).
            return Err(protocol("PUBREL before PUBREC"));
        }
        if self.inbound.remove(&id).is_some() {
            // Deleted before PUBCOMP goes out: once the server sees PUBCOMP it may reuse the
            // id, and a stale marker would then swallow a new message.
            self.actions
                .push_back(Action::Store(StoreOp::Delete(Key::Inbound(id))));
        } else {
            comp.reason_code = PubCompReasonCode::PacketIdentifierNotFound;
        }
        self.actions.push_back(Action::Send(Packet::PubComp(comp)));
        Ok(())
    }

    /// Acknowledges a delivered QoS 1/2 message. PUBACK/PUBREC go out in the order the
    /// PUBLISHes arrived (MQTT-4.6.0-2), whatever order the application acks in: an ack waits
    /// for the acks of earlier messages.
    ///
    /// For QoS 2 the ack is what makes the message "received": the engine then stores the
    /// inbound marker (a [`StoreOp::Put`]) and sends PUBREC, and from then on a resend is not
    /// delivered again, even by a restarted process. A process that dies before the ack gets
    /// the message again from the server.
    ///
    /// Acking a message whose connection has closed returns [`Error::StaleAck`] and sends
    /// nothing: the server redelivers it; a QoS 1 message is then delivered again, a QoS 2 one
    /// (which the application has had) is answered with PUBREC without being delivered again.
    /// Acking twice does nothing.
    pub fn ack(&mut self, token: AckToken, now: Instant) -> Result<(), Error> {
        self.tick(now);
        if !self.acks.mark(token) {
            return Err(Error::StaleAck);
        }
        self.flush_acks()
    }

    fn flush_acks(&mut self) -> Result<(), Error> {
        while let Some((id, qos)) = self.acks.pop_ready() {
            let packet = if qos == QoS::ExactlyOnce {
                let pubrec = Packet::PubRec(PubRec::new(id));
                if self.inbound.get(&id) != Some(&inbound::State::Recorded) {
                    // Stored before PUBREC goes: from PUBREC on the server counts the message
                    // as received and a restarted process must not deliver it again.
                    let value = encode(&pubrec)?;
                    self.actions.push_back(Action::Store(StoreOp::Put {
                        key: Key::Inbound(id),
                        kind: EntryKind::PubRec,
                        value,
                    }));
                    self.inbound.insert(id, inbound::State::Recorded);
                }
                pubrec
            } else {
                Packet::PubAck(PubAck::new(id))
            };
            self.actions.push_back(Action::Send(packet));
        }
        Ok(())
    }

    // ----- driver plumbing ------------------------------------------------------------------

    /// Records the time of an input. A clock that goes backwards (two drivers' clocks, or a
    /// test) never moves it back.
    fn tick(&mut self, now: Instant) {
        if self.now.is_none_or(|t| now > t) {
            self.now = Some(now);
        }
    }

    /// The latest time passed to the session, if any.
    pub fn now(&self) -> Option<Instant> {
        self.now
    }

    /// Call when a [`StoreOp::Put`] for `key` has completed successfully. The first one of an
    /// outgoing exchange resolves its handle's "stored" stage
    /// ([`PublishCompletion::stored`]) and makes a later store failure report it as
    /// [`Error::OutcomeUnknown`]. Other keys, and later Puts, change nothing.
    pub fn on_stored(&mut self, key: Key) {
        if let Key::Outbound(id) = key {
            if let Some(out) = self.outbound.get_mut(&id) {
                out.stored = true;
                if let Some(c) = out.completer.as_mut() {
                    c.stored();
                }
            }
        }
    }

    /// The next thing for the driver to do, in order. Call until it returns `None` after
    /// every method call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// For a driver whose store failed: fails every waiting handle and forgets all in-memory
    /// state, without touching the store, which must be reopened and a session
    /// [restored](Session::restore) from it.
    ///
    /// The handles get one of the two classes of error:
    ///
    /// * **not stored** (`error` itself): publishes still waiting for quota, and those whose
    ///   first [`StoreOp::Put`] the driver lists in `not_stored` (it was answered with an error
    ///   that is not [`Error::OutcomeUnknown`]) or never carried out. Publishing them again is
    ///   safe;
    /// * **stored, outcome unknown** ([`Error::OutcomeUnknown`] wrapping `error`): every other
    ///   unfinished exchange. It is in the store and is resent when the session is reopened;
    ///   publishing it again would duplicate it.
    pub fn on_store_failed(
        &mut self,
        error: Error,
        not_stored: impl IntoIterator<Item = PacketId>,
    ) {
        let mut not_stored: std::collections::HashSet<PacketId> = not_stored.into_iter().collect();
        // Puts the driver never got to are not stored either.
        for a in &self.actions {
            if let Action::Store(StoreOp::Put {
                key: Key::Outbound(id),
                kind: EntryKind::Publish,
                ..
            }) = a
            {
                not_stored.insert(*id);
            }
        }
        // The "not done" class gets the plain cause: when the store's own answer was "outcome
        // unknown" (about the batch that failed), a publish that never reached the store must
        // not hear it, or its caller would not publish it again and it would be lost.
        let plain = match &error {
            Error::OutcomeUnknown { cause } => (**cause).clone(),
            e => e.clone(),
        };
        for (id, out) in self.outbound.drain() {
            if let Some(c) = out.completer {
                let e = if !out.stored && not_stored.contains(&id) {
                    plain.clone()
                } else {
                    Error::outcome_unknown(error.clone())
                };
                c.complete(Err(e));
            }
        }
        for w in self.waiting.drain(..) {
            w.completer.complete(Err(plain.clone()));
        }
        for (_, req) in self.requests.drain() {
            match req {
                Request::Subscribe(c) => c.complete(Err(plain.clone())),
                Request::Unsubscribe(c) => c.complete(Err(plain.clone())),
            }
        }
        self.ids.clear();
        self.order.clear();
        self.retired.clear();
        self.resend.clear();
        self.inbound.clear();
        self.actions.clear();
        self.in_flight = 0;
    }

    /// QoS 1/2 publishes sent on this connection and not yet finished (the send quota used).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many more QoS 1/2 publishes may be sent now (never negative: retransmissions beyond a
    /// smaller Receive Maximum leave it at 0).
    pub fn send_quota(&self) -> usize {
        usize::from(self.receive_max).saturating_sub(self.in_flight)
    }

    /// Publishes waiting for a connection, send quota or a packet id.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Unfinished outgoing QoS 1/2 exchanges (sent or to be resent).
    pub fn unfinished(&self) -> usize {
        self.outbound.len()
    }

    /// Incoming QoS 2 exchanges awaiting PUBREL.
    pub fn inbound_pending(&self) -> usize {
        self.inbound.len()
    }

    /// Incoming QoS 1/2 exchanges the server counts against the Receive Maximum this client
    /// advertised: QoS 1 messages not yet acked plus QoS 2 messages awaiting PUBREL. A driver
    /// compares it with its Receive Maximum to detect a server that overshoots it.
    pub fn inbound_in_flight(&self) -> usize {
        self.acks.unacked_qos1() + self.inbound.len()
    }

    /// Packet ids in use.
    pub fn packet_ids_in_use(&self) -> usize {
        self.ids.in_use()
    }

    /// Whether a CONNACK was received and the link has not been reported lost since.
    pub fn is_connected(&self) -> bool {
        self.link == Link::Up
    }
}

impl Drop for Session {
    /// A session dropped with unfinished exchanges cannot finish them, but their messages
    /// were sent or stored: their handles hear "outcome unknown" (a durable store resends
    /// them when reopened), never a plain failure that would invite a second copy. Publishes
    /// still waiting for quota were never stored and get [`Error::SessionClosed`].
    fn drop(&mut self) {
        for (_, out) in self.outbound.drain() {
            if let Some(c) = out.completer {
                c.complete(Err(Error::outcome_unknown(Error::SessionClosed)));
            }
        }
    }
}

/// A message handed back to the application: the packet id and DUP flag belong to the
/// exchange that was given up.
fn given_back(mut p: Publish) -> Publish {
    p.packet_id = None;
    p.dup = false;
    p
}

fn protocol(what: &'static str) -> Error {
    Error::Protocol {
        reason_code: 0x82,
        what,
    }
}
