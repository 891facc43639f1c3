//! The `session` fuzz check: arbitrary sequences of inbound packets and user commands driven
//! against `paho_session`'s engine, with its invariants checked after every step.
//!
//! Shared, unchanged, by the cargo-fuzz target (`fuzz/fuzz_targets/session.rs`) and by the
//! stable replay of the committed corpus (`session/tests/fuzz_session_corpus.rs`), which both
//! include this file with `#[path]`: the replay runs exactly the check the fuzzer ran.
//!
//! The input decodes (with `arbitrary`) into a configuration (session-lost policy, Session
//! Expiry Interval) and up to [`MAX_OPS`] operations: the application publishes (QoS 0, 1 or
//! 2, with or without a Message Expiry Interval), subscribes, unsubscribes and acks its
//! deliveries; a well-behaved broker answers any packet the client wrote; a hostile one sends
//! PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK or a second CONNACK with ids of
//! its choosing; the link drops; the client reconnects with Session Present 0 or 1 and any
//! Receive Maximum; the next store write fails ("not done" or "outcome unknown"), after which
//! the driver restores a new session from the store; the process restarts; time advances.
//!
//! The driver here follows the contract in `session/src/lib.rs`: actions in order, store
//! before wire, `on_stored` after each Put, `on_store_failed` and a restore when the store
//! fails, a disconnect when the engine reports a protocol error.
//!
//! Checked after every step (the four invariants of issue 12, and what they rest on):
//! - **no packet id reused while in flight**: a new exchange's first Put, a SUBSCRIBE or an
//!   UNSUBSCRIBE never takes an id that an unfinished exchange or request holds; the engine's
//!   count of ids in use and of unfinished exchanges equals the ids the observer sees held;
//! - **the send quota never negative**: a QoS 1/2 PUBLISH is written only while fewer than
//!   Receive Maximum QoS 1/2 exchanges are unacknowledged on the connection, and the engine's
//!   `in_flight` equals the observer's count;
//! - **no QoS 2 double delivery** within a session: an inbound QoS 2 packet id is handed to
//!   the application at most once until its exchange ends (PUBCOMP sent), the session is lost
//!   or the process restarts before the ack was stored (the documented window);
//! - **nothing accepted forgotten without an outcome**: at the end a well-behaved broker
//!   answers everything, and every publish that was accepted has resolved, success or error,
//!   the engine holds nothing and the store no outbound entry.
//!
//! Also: store before wire (a PUBLISH, PUBREL or PUBREC is written only while the store holds
//! its entry), an outcome matches the message's QoS, and a message answered with anything but
//! "outcome unknown" is not in the store afterwards (an error never takes effect later).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use paho_packets::{
    ConnAck, ConnectReasonCode, Packet, PacketId, PubAck, PubAckReasonCode, PubComp,
    PubCompReasonCode, PubRec, PubRecReasonCode, PubRel, PubRelReasonCode, Publish, QoS, SubAck,
    SubAckReasonCode, Subscribe, Subscription, SubscriptionOptions, UnsubAck, UnsubAckReasonCode,
    Unsubscribe,
};
use paho_session::{
    AckToken, Action, EntryKind, Error, Key, MemoryStore, PublishCompletion, PublishOutcome,
    QuarantineReport, Session, SessionConfig, SessionLostPolicy, Store, StoreOp, StoredEntry,
    SubscribeCompletion, UnsubscribeCompletion,
};

/// Operations per input: enough for every interleaving that matters, few enough that one run
/// takes well under a millisecond.
pub const MAX_OPS: usize = 200;

/// Runs one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(cfg) = Config::arbitrary(&mut u) else {
        return;
    };
    let debug = std::env::var_os("PAHO_FUZZ_DEBUG").is_some();
    if debug {
        eprintln!("{cfg:?}");
    }
    let mut world = World::new(cfg);
    world.connect(false, None);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        if debug {
            eprintln!("{op:?}");
        }
        world.step(op);
    }
    world.settle();
    world.check_end();
}

// ----- the input ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Expiry {
    /// The session ends with the connection.
    Zero,
    /// Ten seconds (so that `Advance` can expire it while offline).
    Short,
    Never,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct Config {
    fail_policy: bool,
    expiry: Expiry,
}

impl Config {
    fn session(&self) -> SessionConfig {
        SessionConfig::new()
            .session_expiry_interval(match self.expiry {
                Expiry::Zero => 0,
                Expiry::Short => 10,
                Expiry::Never => u32::MAX,
            })
            .on_session_lost(if self.fail_policy {
                SessionLostPolicy::Fail
            } else {
                SessionLostPolicy::Republish
            })
    }
}

/// Which packet id a hostile packet carries: one the client holds (outbound exchange or
/// request), one it was delivered (inbound), or a raw number.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum IdPick {
    Held(u8),
    Inbound(u8),
    Raw(u8),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Hostile {
    Publish { qos: u8, dup: bool },
    PubAck { reason: u8 },
    PubRec { reason: u8 },
    PubRel { reason: u8 },
    PubComp { reason: u8 },
    SubAck { codes: u8 },
    UnsubAck { codes: u8 },
    ConnAck { session_present: bool },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    /// The application publishes at QoS `qos % 3`, with a Message Expiry Interval if given.
    Publish {
        qos: u8,
        expiry: Option<u8>,
    },
    Subscribe,
    Unsubscribe,
    /// The application acks one of its unacked deliveries (also stale ones).
    Ack(u8),
    /// The broker answers one of the packets the client wrote, as MQTT says.
    Answer(u8),
    /// The broker answers everything the client wrote, in order.
    AnswerAll,
    /// The broker publishes a QoS 1/2 message with an id of its own choosing.
    BrokerPublish {
        qos2: bool,
        id: u8,
    },
    /// The broker sends any acknowledgement (or a second CONNACK) with any id.
    Hostile(Hostile, IdPick),
    /// The link drops.
    Drop,
    /// (Drop and) connect again.
    Reconnect {
        session_present: bool,
        receive_max: Option<u8>,
    },
    /// The next store write fails; the driver then fails the session and restores a new one
    /// from the store.
    FailNextPut {
        unknown: bool,
    },
    /// The process dies and a new one restores the session from the store.
    Restart,
    /// Time passes.
    Advance(u8),
}

// ----- a store that fails on request -----------------------------------------------------------

/// Store futures here are ready when created.
fn now_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("memory store future not ready"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Not applied: `Error::StoreFailed`.
    NotDone,
    /// Applied, then `Error::OutcomeUnknown`.
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct FailingStore {
    inner: MemoryStore,
    fail_next_put: Arc<Mutex<Option<Failure>>>,
}

impl FailingStore {
    fn arm(&self, f: Option<Failure>) {
        *self.fail_next_put.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    fn entries(&self) -> Vec<StoredEntry> {
        now_ready(self.inner.list()).expect("memory store list")
    }

    fn get(&self, key: Key) -> Option<StoredEntry> {
        now_ready(self.inner.get(key)).expect("memory store get")
    }

    /// The message (by payload tag) an outbound entry holds, if it is a PUBLISH of ours.
    fn outbound_tag(&self, id: PacketId) -> Option<(EntryKind, usize)> {
        let e = self.get(Key::Outbound(id))?;
        let tag = match Packet::decode_exact(e.value().clone()) {
            Ok(Packet::Publish(p)) => tag_of(&p.payload)?,
            _ => return None,
        };
        Some((e.kind(), tag))
    }

    fn outbound_tags(&self) -> HashSet<usize> {
        self.entries()
            .iter()
            .filter_map(|e| match e.key() {
                Key::Outbound(id) => self.outbound_tag(id).map(|(_, t)| t),
                Key::Inbound(_) => None,
            })
            .collect()
    }

    fn markers(&self) -> HashSet<PacketId> {
        self.entries()
            .iter()
            .filter_map(|e| match e.key() {
                Key::Inbound(id) => Some(id),
                Key::Outbound(_) => None,
            })
            .collect()
    }
}

impl Store for FailingStore {
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let failure = self
            .fail_next_put
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let r = match failure {
            Some(Failure::NotDone) => Err(Error::StoreFailed),
            Some(Failure::Unknown) => now_ready(self.inner.put(key, kind, value))
                .and_then(|()| Err(Error::outcome_unknown(Error::StoreFailed))),
            None => now_ready(self.inner.put(key, kind, value)),
        };
        std::future::ready(r)
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, Error>> + Send + 'static {
        self.inner.get(key)
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner.delete(key)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredEntry>, Error>> + Send + 'static {
        self.inner.list()
    }

    fn reset(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner.reset()
    }

    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        self.inner.quarantine(key, reason)
    }

    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.inner.quarantined()
    }
}

// ----- the observer ----------------------------------------------------------------------------

fn tag_of(payload: &Bytes) -> Option<usize> {
    std::str::from_utf8(payload.strip_prefix(b"o")?)
        .ok()?
        .parse()
        .ok()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n.max(1)).unwrap_or(PacketId::MIN)
}

/// Who holds an outbound packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Message(usize),
    Subscribe,
    Unsubscribe,
}

#[derive(Debug)]
struct Msg {
    qos: QoS,
    handle: PublishCompletion,
    outcome: Option<Result<PublishOutcome, Error>>,
    /// Written to the wire at least once (or restored: written by an earlier process).
    sent: bool,
}

#[derive(Debug)]
enum Request {
    Subscribe(SubscribeCompletion, usize),
    Unsubscribe(UnsubscribeCompletion, usize),
}

struct World {
    cfg: Config,
    session: Session,
    store: FailingStore,
    now: Instant,
    /// Connected (CONNACK accepted, not lost since).
    up: bool,
    receive_max: usize,
    /// What the client wrote on this connection and the broker has not answered yet.
    wire: VecDeque<Packet>,
    /// Outbound ids held by unfinished exchanges and requests.
    held: HashMap<PacketId, Holder>,
    /// QoS 1/2 exchanges whose PUBLISH (or PUBREL) went out on this connection, unfinished.
    unacked: HashSet<PacketId>,
    /// Inbound QoS 2 ids handed to the application in this session, exchange not ended.
    delivered_qos2: HashSet<PacketId>,
    /// Inbound ids the application was given (for hostile PUBRELs to aim at).
    inbound_ids: Vec<PacketId>,
    msgs: Vec<Msg>,
    requests: HashMap<PacketId, Request>,
    /// The application's unacked delivery tokens.
    tokens: Vec<AckToken>,
    next_inbound_tag: usize,
}

impl World {
    fn new(cfg: Config) -> Self {
        World {
            cfg,
            session: Session::new(cfg.session()),
            store: FailingStore::default(),
            now: Instant::now(),
            up: false,
            receive_max: usize::from(u16::MAX),
            wire: VecDeque::new(),
            held: HashMap::new(),
            unacked: HashSet::new(),
            delivered_qos2: HashSet::new(),
            inbound_ids: Vec::new(),
            msgs: Vec::new(),
            requests: HashMap::new(),
            tokens: Vec::new(),
            next_inbound_tag: 0,
        }
    }

    // ----- the driver ---------------------------------------------------------------------------

    /// Carries out the engine's actions in order, checking each; then the invariants.
    fn drive(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Store(op) => {
                    if let Err(e) = self.apply(op) {
                        self.store_failed(e);
                        return;
                    }
                }
                Action::Send(p) => self.client_sends(p),
                Action::Deliver(d) => {
                    let (p, token) = d.into_parts();
                    self.app_receives(p, token);
                }
                Action::Abandoned(p) => {
                    assert!(self.cfg.fail_policy, "abandoned under republish: {p:?}");
                    assert!(p.packet_id.is_none() && !p.dup, "abandoned as sent: {p:?}");
                }
                other => panic!("unexpected action {other:?}"),
            }
        }
        self.collect();
        self.check_invariants();
    }

    fn apply(&mut self, op: StoreOp) -> Result<(), Error> {
        match &op {
            StoreOp::Put {
                key: Key::Outbound(id),
                kind,
                value,
            } => {
                let tag = match Packet::decode_exact(value.clone()) {
                    Ok(Packet::Publish(p)) => tag_of(&p.payload),
                    other => panic!("outbound {id} stored as {other:?}"),
                };
                let tag = tag.unwrap_or_else(|| panic!("outbound {id}: not one of ours"));
                match self.held.get(id) {
                    None => {
                        assert_eq!(*kind, EntryKind::Publish, "{id}: first Put is a {kind:?}");
                    }
                    Some(Holder::Message(t)) if *t == tag => {}
                    Some(h) => {
                        panic!("packet id {id} reused for message {tag} while {h:?} holds it")
                    }
                }
                self.held.insert(*id, Holder::Message(tag));
            }
            StoreOp::Put { key, kind, .. } => {
                assert_eq!(*kind, EntryKind::PubRec, "{key:?} stored as {kind:?}");
            }
            StoreOp::Delete(Key::Outbound(id)) => {
                // The exchange ended: its id may be reused from now on.
                assert!(
                    matches!(self.held.remove(id), Some(Holder::Message(_))),
                    "deleted outbound {id}, which no exchange held"
                );
                self.unacked.remove(id);
            }
            StoreOp::Reset => {
                self.held.retain(|_, h| !matches!(h, Holder::Message(_)));
                self.unacked.clear();
            }
            StoreOp::Delete(Key::Inbound(_)) | StoreOp::Quarantine { .. } => {}
            _ => {}
        }
        let put_key = match &op {
            StoreOp::Put { key, .. } => Some(*key),
            _ => None,
        };
        now_ready(op.apply(&self.store))?;
        if let Some(key) = put_key {
            self.session.on_stored(key);
        }
        Ok(())
    }

    /// The driver's answer to a failed store write: fail the session, close the connection,
    /// reopen the store (here: the same memory) and restore a new session from it.
    fn store_failed(&mut self, e: Error) {
        // The Put that failed is not stored unless its error says the outcome is unknown; the
        // driver passes the cause, not the wrapper (see `on_store_failed`).
        let not_stored: Vec<PacketId> = Vec::new();
        let cause = match e {
            Error::OutcomeUnknown { cause } => (*cause).clone(),
            e => e,
        };
        self.session.on_store_failed(cause, not_stored);
        self.collect();
        self.new_process();
    }

    /// A new session restored from the store, offline, as after a restart.
    fn new_process(&mut self) {
        self.link_down();
        let entries = self.store.entries();
        let restored = Session::restore(self.cfg.session(), entries);
        let old = std::mem::replace(&mut self.session, restored);
        // Dropping the old one tells its unfinished handles "outcome unknown".
        drop(old);
        self.collect();
        self.tokens.clear();
        self.requests.clear();
        // The new process knows exactly what the store holds.
        self.held.clear();
        for e in self.store.entries() {
            if let Key::Outbound(id) = e.key() {
                let (_, tag) = self
                    .store
                    .outbound_tag(id)
                    .unwrap_or_else(|| panic!("outbound {id} in the store is not ours"));
                self.held.insert(id, Holder::Message(tag));
                self.msgs[tag].sent = true;
            }
        }
        // Acked (marker stored) inbound QoS 2 messages stay delivered; one delivered but not
        // acked when the process died comes again: the documented window.
        let markers = self.store.markers();
        self.delivered_qos2.retain(|id| markers.contains(id));
        self.drive();
    }

    fn link_down(&mut self) {
        self.up = false;
        self.wire.clear();
        self.unacked.clear();
        self.tokens.clear();
        // SUBSCRIBE/UNSUBSCRIBE fail with the connection; their ids come free.
        self.held.retain(|_, h| matches!(h, Holder::Message(_)));
    }

    /// A new session (the server forgot it, or it expired): nothing delivered in it yet.
    fn session_lost(&mut self) {
        self.delivered_qos2.clear();
    }

    fn connection_lost(&mut self) {
        let was_up = self.up;
        self.link_down();
        self.session.on_connection_lost(self.now);
        if was_up && matches!(self.cfg.expiry, Expiry::Zero) {
            self.session_lost();
        }
        self.drive();
    }

    fn connect(&mut self, session_present: bool, receive_max: Option<u16>) {
        if self.up {
            self.connection_lost();
        }
        let clean = self.session.begin_connect(false, self.now);
        if clean {
            self.session_lost();
        }
        self.drive();
        let mut connack = ConnAck {
            session_present,
            ..Default::default()
        };
        connack.properties.receive_maximum = receive_max;
        self.receive_max = usize::from(receive_max.unwrap_or(u16::MAX).max(1));
        match self.session.on_connack(&connack, self.now) {
            Ok(()) => {
                self.up = true;
                if !session_present {
                    self.session_lost();
                }
            }
            Err(e) => {
                assert!(
                    clean && session_present,
                    "CONNACK refused without reason: {e}"
                );
                self.up = false;
            }
        }
        self.drive();
    }

    // ----- the client's side ------------------------------------------------------------------

    fn client_sends(&mut self, p: Packet) {
        assert!(self.up, "sent while offline: {p:?}");
        match &p {
            Packet::Publish(pb) if pb.qos != QoS::AtMostOnce => {
                let id = pb.packet_id.expect("QoS 1/2 PUBLISH without an id");
                let tag = tag_of(&pb.payload).expect("a PUBLISH of ours");
                assert_eq!(
                    self.store.outbound_tag(id),
                    Some((EntryKind::Publish, tag)),
                    "PUBLISH {id} (message {tag}) on the wire while the store does not hold it"
                );
                assert_eq!(self.held.get(&id), Some(&Holder::Message(tag)));
                assert_eq!(
                    self.msgs[tag].qos, pb.qos,
                    "message {tag} sent at another QoS"
                );
                assert!(
                    self.unacked.len() < self.receive_max,
                    "PUBLISH {id} beyond Receive Maximum {}: {} unacknowledged",
                    self.receive_max,
                    self.unacked.len()
                );
                assert!(
                    self.unacked.insert(id),
                    "PUBLISH {id} twice on one connection"
                );
                self.msgs[tag].sent = true;
            }
            Packet::Publish(pb) => {
                assert!(pb.packet_id.is_none(), "QoS 0 with a packet id");
            }
            Packet::PubRel(r) => {
                let id = r.packet_id;
                if r.reason_code == PubRelReasonCode::Success {
                    assert!(
                        matches!(self.store.outbound_tag(id), Some((EntryKind::PubRel, _))),
                        "PUBREL {id} on the wire while the store does not hold it"
                    );
                    // A PUBREL counts against the quota (the server holds the message).
                    self.unacked.insert(id);
                } else {
                    // (Answering a PUBREC for an id that a SUBSCRIBE holds is right: no QoS 2
                    // exchange has it.)
                    assert!(
                        !matches!(self.held.get(&id), Some(Holder::Message(_))),
                        "PUBREL 0x92 for an id an exchange holds"
                    );
                }
            }
            Packet::PubRec(r) => {
                assert!(
                    self.store.markers().contains(&r.packet_id),
                    "PUBREC {} on the wire before its marker is stored",
                    r.packet_id
                );
            }
            Packet::PubComp(c) => {
                // The inbound exchange ended: the server may reuse the id for a new message.
                self.delivered_qos2.remove(&c.packet_id);
            }
            Packet::PubAck(_) => {}
            Packet::Subscribe(s) => {
                assert!(
                    self.held.insert(s.packet_id, Holder::Subscribe).is_none(),
                    "SUBSCRIBE reuses id {}",
                    s.packet_id
                );
            }
            Packet::Unsubscribe(s) => {
                assert!(
                    self.held.insert(s.packet_id, Holder::Unsubscribe).is_none(),
                    "UNSUBSCRIBE reuses id {}",
                    s.packet_id
                );
            }
            other => panic!("unexpected packet from the engine: {other:?}"),
        }
        self.wire.push_back(p);
    }

    fn app_receives(&mut self, p: Publish, token: Option<AckToken>) {
        match p.qos {
            QoS::AtMostOnce => assert!(token.is_none()),
            qos => {
                let id = p.packet_id.expect("QoS 1/2 delivery without an id");
                let token = token.expect("QoS 1/2 delivery without a token");
                assert_eq!((token.packet_id(), token.qos()), (id, qos));
                if qos == QoS::ExactlyOnce {
                    assert!(
                        self.delivered_qos2.insert(id),
                        "inbound QoS 2 message {id} delivered twice in one session ({:?})",
                        p.payload
                    );
                }
                if !self.inbound_ids.contains(&id) {
                    self.inbound_ids.push(id);
                }
                self.tokens.push(token);
            }
        }
    }

    fn publish(&mut self, qos: u8, expiry: Option<u8>) {
        let qos = match qos % 3 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let tag = self.msgs.len();
        let mut p = Publish {
            qos,
            topic: "t".into(),
            payload: Bytes::from(format!("o{tag}")),
            ..Default::default()
        };
        p.properties.message_expiry_interval = expiry.map(u32::from);
        match self.session.publish(p, self.now) {
            Ok(handle) => self.msgs.push(Msg {
                qos,
                handle,
                outcome: None,
                sent: false,
            }),
            Err(Error::NotConnected) => assert!(qos == QoS::AtMostOnce && !self.up),
            Err(e) => panic!("publish refused: {e}"),
        }
        self.drive();
    }

    fn subscribe(&mut self, unsubscribe: bool) {
        let r = if unsubscribe {
            self.session
                .unsubscribe(
                    Unsubscribe {
                        packet_id: PacketId::MIN,
                        properties: Default::default(),
                        filters: vec!["a/#".into(), "b".into()],
                    },
                    self.now,
                )
                .map(|c| Request::Unsubscribe(c, 2))
        } else {
            self.session
                .subscribe(
                    Subscribe {
                        packet_id: PacketId::MIN,
                        properties: Default::default(),
                        subscriptions: vec![Subscription::new(
                            "a/#",
                            SubscriptionOptions::qos(QoS::ExactlyOnce),
                        )],
                    },
                    self.now,
                )
                .map(|c| Request::Subscribe(c, 1))
        };
        match r {
            Ok(req) => {
                // The actions were drained after the last step, so the request is the only
                // one queued.
                let id = match self.session.poll_action() {
                    Some(Action::Send(Packet::Subscribe(s))) => {
                        let id = s.packet_id;
                        self.client_sends(Packet::Subscribe(s));
                        id
                    }
                    Some(Action::Send(Packet::Unsubscribe(s))) => {
                        let id = s.packet_id;
                        self.client_sends(Packet::Unsubscribe(s));
                        id
                    }
                    other => panic!("subscribe queued {other:?}"),
                };
                self.requests.insert(id, req);
            }
            Err(Error::NotConnected) => assert!(!self.up),
            Err(e) => panic!("subscribe refused: {e}"),
        }
        self.drive();
    }

    fn ack(&mut self, k: u8) {
        if self.tokens.is_empty() {
            return;
        }
        let token = self.tokens.remove(usize::from(k) % self.tokens.len());
        match self.session.ack(token, self.now) {
            Ok(()) => {}
            Err(Error::StaleAck) => {}
            Err(e) => panic!("ack: {e}"),
        }
        self.drive();
    }

    /// Resolves the handles that have an outcome and checks each.
    fn collect(&mut self) {
        let stored = self.store.outbound_tags();
        for (tag, m) in self.msgs.iter_mut().enumerate() {
            if m.outcome.is_none() {
                m.outcome = m.handle.try_outcome();
            }
            let Some(outcome) = &m.outcome else {
                continue;
            };
            match outcome {
                Ok(PublishOutcome::Sent) => assert_eq!(m.qos, QoS::AtMostOnce),
                Ok(PublishOutcome::PubAck(_)) => {
                    assert_eq!(m.qos, QoS::AtLeastOnce);
                    assert!(m.sent, "message {tag} acknowledged, never sent");
                }
                Ok(PublishOutcome::PubRec(r)) => {
                    assert_eq!(m.qos, QoS::ExactlyOnce);
                    assert!(
                        r.reason_code.is_error(),
                        "message {tag} ended by a good PUBREC"
                    );
                    assert!(m.sent, "message {tag} acknowledged, never sent");
                }
                Ok(PublishOutcome::PubComp(_)) => {
                    assert_eq!(m.qos, QoS::ExactlyOnce);
                    assert!(m.sent, "message {tag} completed, never sent");
                }
                Ok(other) => panic!("message {tag}: unexpected outcome {other:?}"),
                Err(e) if e.is_outcome_unknown() => {}
                Err(e) => assert!(
                    !stored.contains(&tag),
                    "message {tag} answered {e}, yet still in the store"
                ),
            }
            if let Ok(o) = outcome {
                assert!(
                    !stored.contains(&tag),
                    "message {tag} finished ({o:?}), still stored"
                );
            }
        }
        let mut done = Vec::new();
        for (id, req) in &mut self.requests {
            let finished = match req {
                Request::Subscribe(c, n) => c
                    .try_outcome()
                    .map(|r| r.map(|a| (a.reason_codes.len(), *n))),
                Request::Unsubscribe(c, n) => c
                    .try_outcome()
                    .map(|r| r.map(|a| (a.reason_codes.len(), *n))),
            };
            if let Some(r) = finished {
                if let Ok((got, _)) = r {
                    assert!(got >= 1);
                }
                done.push(*id);
            }
        }
        for id in done {
            self.requests.remove(&id);
            if matches!(
                self.held.get(&id),
                Some(Holder::Subscribe | Holder::Unsubscribe)
            ) {
                self.held.remove(&id);
            }
        }
    }

    fn check_invariants(&mut self) {
        let outbound = self
            .held
            .values()
            .filter(|h| matches!(h, Holder::Message(_)))
            .count();
        assert_eq!(
            self.session.unfinished(),
            outbound,
            "the engine's unfinished exchanges disagree with the ids held"
        );
        assert_eq!(
            self.session.packet_ids_in_use(),
            self.held.len(),
            "packet ids in use disagree with the exchanges and requests that hold them: {:?}",
            self.held
        );
        if self.up {
            assert_eq!(
                self.session.in_flight(),
                self.unacked.len(),
                "the engine's send quota disagrees with what is unacknowledged on the wire"
            );
            assert_eq!(
                self.session.send_quota(),
                self.receive_max.saturating_sub(self.unacked.len())
            );
        } else {
            assert_eq!(self.session.in_flight(), 0, "quota used while offline");
        }
        assert!(self.session.is_connected() == self.up);
    }

    // ----- the broker's side -----------------------------------------------------------------

    /// The well-behaved broker's answer to one packet the client wrote.
    fn answer(&mut self, p: Packet) {
        let reply = match p {
            Packet::Publish(pb) => match (pb.qos, pb.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(PubAck::new(id))),
                (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(PubRec::new(id))),
                _ => None,
            },
            Packet::PubRel(r) => {
                let mut c = PubComp::new(r.packet_id);
                if r.reason_code != PubRelReasonCode::Success {
                    c.reason_code = PubCompReasonCode::PacketIdentifierNotFound;
                }
                Some(Packet::PubComp(c))
            }
            Packet::PubRec(r) if r.reason_code == PubRecReasonCode::Success => {
                Some(Packet::PubRel(PubRel::new(r.packet_id)))
            }
            Packet::Subscribe(s) => Some(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Default::default(),
                reason_codes: vec![SubAckReasonCode::GrantedQoS2],
            })),
            Packet::Unsubscribe(u) => Some(Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Default::default(),
                reason_codes: vec![UnsubAckReasonCode::Success; u.filters.len()],
            })),
            _ => None,
        };
        if let Some(r) = reply {
            self.client_receives(r);
        }
    }

    fn client_receives(&mut self, p: Packet) {
        if !self.up {
            return;
        }
        let r = match p {
            Packet::ConnAck(c) => self.session.on_connack(&c, self.now),
            p => self.session.handle(p, self.now),
        };
        match r {
            Ok(()) => self.drive(),
            Err(Error::Protocol { .. }) => {
                // The driver closes the connection with the reason code.
                self.drive();
                self.connection_lost();
            }
            Err(e) => panic!("handle: unexpected error {e}"),
        }
    }

    fn pick_id(&self, pick: IdPick) -> PacketId {
        match pick {
            IdPick::Held(k) => {
                let mut ids: Vec<PacketId> = self.held.keys().copied().collect();
                ids.sort_unstable();
                match ids.len() {
                    0 => PacketId::MIN,
                    n => ids[usize::from(k) % n],
                }
            }
            IdPick::Inbound(k) => match self.inbound_ids.len() {
                0 => PacketId::MIN,
                n => self.inbound_ids[usize::from(k) % n],
            },
            IdPick::Raw(n) => pid(u16::from(n)),
        }
    }

    fn hostile(&mut self, h: Hostile, pick: IdPick) {
        let id = self.pick_id(pick);
        let p = match h {
            Hostile::Publish { qos, dup } => {
                let tag = self.next_inbound_tag;
                self.next_inbound_tag += 1;
                Packet::Publish(Publish {
                    qos: match qos % 3 {
                        0 => QoS::AtMostOnce,
                        1 => QoS::AtLeastOnce,
                        _ => QoS::ExactlyOnce,
                    },
                    dup,
                    topic: "in".into(),
                    packet_id: (qos % 3 != 0).then_some(id),
                    payload: Bytes::from(format!("i{tag}")),
                    ..Default::default()
                })
            }
            Hostile::PubAck { reason } => Packet::PubAck(PubAck {
                reason_code: PubAckReasonCode::try_from(reason).unwrap_or_default(),
                ..PubAck::new(id)
            }),
            Hostile::PubRec { reason } => Packet::PubRec(PubRec {
                reason_code: PubRecReasonCode::try_from(reason).unwrap_or_default(),
                ..PubRec::new(id)
            }),
            Hostile::PubRel { reason } => Packet::PubRel(PubRel {
                reason_code: PubRelReasonCode::try_from(reason).unwrap_or_default(),
                ..PubRel::new(id)
            }),
            Hostile::PubComp { reason } => Packet::PubComp(PubComp {
                reason_code: PubCompReasonCode::try_from(reason).unwrap_or_default(),
                ..PubComp::new(id)
            }),
            Hostile::SubAck { codes } => Packet::SubAck(SubAck {
                packet_id: id,
                properties: Default::default(),
                reason_codes: vec![SubAckReasonCode::GrantedQoS1; usize::from(codes % 4) + 1],
            }),
            Hostile::UnsubAck { codes } => Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties: Default::default(),
                reason_codes: vec![UnsubAckReasonCode::Success; usize::from(codes % 4) + 1],
            }),
            Hostile::ConnAck { session_present } => Packet::ConnAck(Box::new(ConnAck {
                session_present,
                reason_code: ConnectReasonCode::Success,
                ..Default::default()
            })),
        };
        self.client_receives(p);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Publish { qos, expiry } => self.publish(qos, expiry),
            Op::Subscribe => self.subscribe(false),
            Op::Unsubscribe => self.subscribe(true),
            Op::Ack(k) => self.ack(k),
            Op::Answer(k) => {
                if !self.wire.is_empty() {
                    let k = usize::from(k) % self.wire.len();
                    if let Some(p) = self.wire.remove(k) {
                        self.answer(p);
                    }
                }
            }
            Op::AnswerAll => self.answer_all(),
            Op::BrokerPublish { qos2, id } => {
                let tag = self.next_inbound_tag;
                self.next_inbound_tag += 1;
                let p = Publish {
                    qos: if qos2 {
                        QoS::ExactlyOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                    topic: "in".into(),
                    packet_id: Some(pid(u16::from(id % 8) + 1)),
                    payload: Bytes::from(format!("i{tag}")),
                    ..Default::default()
                };
                self.client_receives(Packet::Publish(p));
            }
            Op::Hostile(h, pick) => self.hostile(h, pick),
            Op::Drop => {
                if self.up {
                    self.connection_lost();
                }
            }
            Op::Reconnect {
                session_present,
                receive_max,
            } => self.connect(session_present, receive_max.map(|r| u16::from(r % 8))),
            Op::FailNextPut { unknown } => self.store.arm(Some(if unknown {
                Failure::Unknown
            } else {
                Failure::NotDone
            })),
            Op::Restart => self.new_process(),
            Op::Advance(secs) => {
                self.now += Duration::from_secs(u64::from(secs));
            }
        }
    }

    fn answer_all(&mut self) {
        let mut budget = 10_000;
        while let Some(p) = self.wire.pop_front() {
            self.answer(p);
            budget -= 1;
            assert!(budget > 0, "the client keeps writing: a livelock");
        }
    }

    /// A final connection that keeps the session, answers everything and acks every delivery.
    fn settle(&mut self) {
        self.store.arm(None);
        if self.up {
            self.connection_lost();
        }
        let clean = self.session.begin_connect(false, self.now);
        if clean {
            self.session_lost();
        }
        self.drive();
        self.receive_max = usize::from(u16::MAX);
        let connack = ConnAck {
            session_present: !clean,
            ..Default::default()
        };
        self.session
            .on_connack(&connack, self.now)
            .expect("final CONNACK");
        self.up = true;
        self.drive();
        for _ in 0..10_000 {
            if !self.wire.is_empty() {
                self.answer_all();
            } else if !self.tokens.is_empty() {
                self.ack(0);
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    fn check_end(&mut self) {
        self.collect();
        for (tag, m) in self.msgs.iter().enumerate() {
            assert!(
                m.outcome.is_some(),
                "message {tag} (QoS {:?}) accepted but never resolved",
                m.qos
            );
        }
        assert_eq!(self.session.unfinished(), 0, "exchanges left unfinished");
        assert_eq!(self.session.waiting(), 0, "publishes left waiting");
        assert_eq!(
            self.session.packet_ids_in_use(),
            0,
            "packet ids left in use"
        );
        assert!(self.requests.is_empty(), "requests left unanswered");
        assert!(
            self.store.outbound_tags().is_empty(),
            "outbound entries left in the store"
        );
    }
}
