//! Property test: the session engine against a model broker over a lossy link, with restarts,
//! store failures and brokers that forget the session.
//!
//! The world holds the engine, a store that can be told to fail, a link with an outbound
//! (client to broker) and an inbound (broker to client) queue, and a broker that keeps its own
//! session. Random operations publish, deliver the head of either queue, drop the link (all in
//! flight is lost), reconnect with a random Receive Maximum and Session Present, restart the
//! process (restore from the store), make the next store put fail ("not done" or "outcome
//! unknown", after which the driver reopens the store and restores a new session), let the
//! broker publish QoS 1/2 messages to the client, and let the application ack deliveries.
//!
//! Per case it chooses the session-lost policy (republish or fail), where the broker releases
//! a QoS 2 message to subscribers (at PUBLISH, or at PUBREL as mosquitto does) and the Session
//! Expiry Interval (never, or 0).
//!
//! Checked on the way: store before wire (a PUBLISH, PUBREL or PUBREC is on the wire only
//! while the store holds it; a PUBCOMP only once the inbound marker is gone), the send quota
//! and packet ids in use as the client sees them, the store mirroring the session, the two
//! error classes of a store failure, QoS 2 released by the broker at most once unless it forgot
//! its session after a release, inbound QoS 2 delivered to the application at most once unless
//! a process died before the ack was durable, stale acks typed. At the end (after a final
//! connection that answers everything): every handle resolved, nothing accepted lost (unless
//! handed back under the fail policy), every inbound message the broker counts as received
//! was delivered, and everything is empty.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{ready, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use paho_packets::{
    ConnAck, Packet, PacketId, PubAck, PubComp, PubCompReasonCode, PubRec, PubRel, Publish, QoS,
};
use paho_session::{
    AckToken, Action, EntryKind, Error, Key, MemoryStore, PublishCompletion, QuarantineReport,
    Session, SessionConfig, SessionLostPolicy, Store, StoreOp, StoredEntry,
};
use proptest::prelude::*;

/// Store futures here are ready when created, so one poll is enough.
fn now_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("store future not ready"),
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

// ----- a store that fails on request ----------------------------------------------------------

/// How the next put fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Not applied; `Error::StoreFailed`.
    NotDone,
    /// Applied, then `Error::OutcomeUnknown`.
    Unknown,
}

/// A [`MemoryStore`] whose next put can be made to fail.
#[derive(Debug, Clone, Default)]
struct FailingStore {
    inner: MemoryStore,
    fail_next_put: Arc<Mutex<Option<Failure>>>,
}

impl FailingStore {
    fn arm(&self, f: Option<Failure>) {
        *self.fail_next_put.lock().unwrap() = f;
    }

    fn entries(&self) -> Vec<StoredEntry> {
        now_ready(self.inner.list()).unwrap()
    }

    /// Outbound entries as (key, kind, payload).
    fn outbound(&self) -> Vec<(PacketId, EntryKind, Bytes)> {
        self.entries()
            .into_iter()
            .filter_map(|e| match e.key() {
                Key::Outbound(id) => match Packet::decode_exact(e.value().clone()) {
                    Ok(Packet::Publish(p)) => Some((id, e.kind(), p.payload)),
                    other => panic!("outbound entry {id} holds {other:?}"),
                },
                Key::Inbound(_) => None,
            })
            .collect()
    }

    fn markers(&self) -> HashSet<PacketId> {
        self.entries()
            .into_iter()
            .filter_map(|e| match e.key() {
                Key::Inbound(id) => {
                    assert_eq!(e.kind(), EntryKind::PubRec);
                    Some(id)
                }
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
        let failure = self.fail_next_put.lock().unwrap().take();
        let r = match failure {
            Some(Failure::NotDone) => Err(Error::StoreFailed),
            Some(Failure::Unknown) => now_ready(self.inner.put(key, kind, value))
                .and_then(|()| Err(Error::outcome_unknown(Error::StoreFailed))),
            None => now_ready(self.inner.put(key, kind, value)),
        };
        ready(r)
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, Error>> + Send + 'static {
        ready(now_ready(self.inner.get(key)))
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        ready(now_ready(self.inner.delete(key)))
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredEntry>, Error>> + Send + 'static {
        ready(now_ready(self.inner.list()))
    }

    fn reset(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        ready(now_ready(self.inner.reset()))
    }

    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        ready(now_ready(self.inner.quarantine(key, reason)))
    }

    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.inner.quarantined()
    }
}

// ----- operations -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// The application publishes (QoS 2 if true, else QoS 1).
    Publish(bool),
    /// The head of the client-to-broker queue arrives.
    ToBroker,
    /// The head of the broker-to-client queue arrives.
    ToClient,
    /// The broker publishes a message to the client (QoS 2 if true).
    BrokerPublish(bool),
    /// The application acks one of its unacked deliveries.
    Ack(usize),
    /// The link drops: everything in flight is lost.
    Drop,
    /// (Drop and) connect again; the broker keeps its session if `present` (and it can).
    Reconnect { present: bool, receive_max: u16 },
    /// The process is killed; a new one restores the session from the store. With `flush`
    /// what it had written reaches the broker first.
    Restart { flush: bool },
    /// The next store put fails; the driver then fails the session, closes the connection
    /// (`flush` as for a restart) and reopens the store.
    FailPut { unknown: bool, flush: bool },
    /// The process is killed after the next `after` actions (in the middle of carrying out
    /// what the engine asked), then restarted as for `Restart`.
    Crash { after: u8, flush: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Publish),
        7 => Just(Op::ToBroker),
        7 => Just(Op::ToClient),
        2 => any::<bool>().prop_map(Op::BrokerPublish),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => Just(Op::Drop),
        2 => (any::<bool>(), 1u16..5)
            .prop_map(|(present, receive_max)| Op::Reconnect { present, receive_max }),
        1 => any::<bool>().prop_map(|flush| Op::Restart { flush }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(unknown, flush)| Op::FailPut { unknown, flush }),
        1 => (0u8..4, any::<bool>()).prop_map(|(after, flush)| Op::Crash { after, flush }),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Config {
    policy: SessionLostPolicy,
    /// mosquitto's release point: the broker counts a QoS 2 message delivered at PUBREL.
    release_at_pubrel: bool,
    expiry: u32,
}

impl Config {
    fn session(&self) -> SessionConfig {
        SessionConfig::new()
            .session_expiry_interval(self.expiry)
            .on_session_lost(self.policy)
    }
}

fn config() -> impl Strategy<Value = Config> {
    (any::<bool>(), any::<bool>(), prop::bool::weighted(0.15)).prop_map(
        |(fail, release_at_pubrel, expiry_zero)| Config {
            policy: if fail {
                SessionLostPolicy::Fail
            } else {
                SessionLostPolicy::Republish
            },
            release_at_pubrel,
            expiry: if expiry_zero { 0 } else { u32::MAX },
        },
    )
}

// ----- the model --------------------------------------------------------------------------------

/// How a publish handle resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Stored, outcome unknown: must still arrive.
    Unknown,
    /// Handed back under the fail policy.
    GivenBack,
    /// A plain store error: not stored, never sent.
    NotDone,
    /// Still waiting when its process died: never stored, never sent.
    Closed,
    /// Its process was killed in the middle of carrying out actions.
    Died,
}

/// A message the application published.
#[derive(Debug)]
struct OutMsg {
    qos: QoS,
    handle: PublishCompletion,
    outcome: Option<Outcome>,
    /// Sent on the wire at least once.
    sent: bool,
    /// How often the broker counted it received (QoS 1: PUBLISH arrivals; QoS 2: releases).
    received: u32,
    /// How many QoS 2 releases are legitimate (1, plus one per forgotten session after a
    /// release while the client still held the message).
    allowed: u32,
    /// It was in the store when a process died or reopened its store: it must arrive.
    accepted: bool,
    /// Handed back to the application (error with the message, or `Action::Abandoned`).
    given_back: bool,
    /// It was stored at the PUBREL stage when the broker forgot its session, and its entry
    /// has not gone back to "PUBLISH stored" since.
    forgotten_at_pubrel: bool,
    /// A new process restored it at the PUBREL stage although the broker had forgotten the
    /// session (the rewrite to "PUBLISH stored" failed with the store): the known gap, see
    /// `known_gap_pubrel_rewrite_lost_with_the_store`.
    exposed: bool,
}

/// A message the broker published to the client.
#[derive(Debug)]
struct InMsg {
    id: PacketId,
    qos: QoS,
    /// How often it was delivered to the application.
    delivered: u32,
    /// A process died after delivering it and before its ack was durable: one more delivery
    /// is legitimate.
    redeliver_ok: bool,
    /// The broker got its PUBACK or PUBREC: it counts the message as received by the client.
    done_at_broker: bool,
    /// Published with the id of a stale marker (the known gap): the client may swallow it.
    swallowable: bool,
}

/// One of the broker's exchanges towards the client.
#[derive(Debug)]
struct BrokerOut {
    id: PacketId,
    msg: usize,
    qos: QoS,
    /// PUBREL sent (PUBREC received).
    released: bool,
    /// The client got its PUBREL (so it may have deleted its marker, and its PUBCOMP may
    /// have been lost).
    completed: bool,
}

#[derive(Debug, Default)]
struct Broker {
    up: bool,
    /// Client-to-broker QoS 2 exchanges awaiting PUBREL: message and whether released.
    qos2: HashMap<PacketId, (usize, bool)>,
    /// Broker-to-client exchanges, in order (the broker's session).
    to_client: Vec<BrokerOut>,
}

struct World {
    cfg: Config,
    /// No exemptions for the known gap (for the tests that show it).
    strict: bool,
    session: Session,
    store: FailingStore,
    now: Instant,
    broker: Broker,
    outq: VecDeque<Packet>,
    inq: VecDeque<Packet>,
    /// Receive Maximum of this connection.
    receive_max: usize,
    /// Client-side view of this connection: ids sent (PUBLISH or PUBREL) whose PUBACK or
    /// PUBCOMP has not reached the client.
    in_flight: HashSet<PacketId>,
    /// Inbound ids whose PUBREC went on the wire and whose PUBREL has not reached the client:
    /// the store must hold their markers.
    expected_markers: HashSet<PacketId>,
    out: Vec<OutMsg>,
    inm: Vec<InMsg>,
    /// The application's unacked deliveries: token and the connection it arrived on.
    tokens: Vec<(AckToken, u64)>,
    epoch: u64,
    /// Bumped whenever a new process (or reopened store) takes over.
    generation: u64,
    /// Whether the armed store failure flushes what was written before the connection closes.
    flush_on_failure: bool,
    /// The session is applying a session loss (its store operations are being carried out).
    losing: bool,
    /// How often a store failure interrupted a session loss (the known gap).
    gap_hits: u32,
    /// The process will be killed after this many more actions (and whether what it wrote
    /// reaches the broker).
    crash_in: Option<(u8, bool)>,
    /// The handles now resolving belong to a process killed mid-drive.
    crashing: bool,
    /// Inbound markers restored from the store although the broker has no such exchange: left
    /// behind by a session loss that a store failure interrupted (the known gap).
    stale: HashSet<PacketId>,
}

fn out_index(payload: &Bytes) -> usize {
    std::str::from_utf8(&payload[1..]).unwrap().parse().unwrap()
}

impl World {
    fn new(cfg: Config) -> Self {
        World {
            cfg,
            strict: false,
            session: Session::new(cfg.session()),
            store: FailingStore::default(),
            now: Instant::now(),
            broker: Broker::default(),
            outq: VecDeque::new(),
            inq: VecDeque::new(),
            receive_max: 0,
            in_flight: HashSet::new(),
            expected_markers: HashSet::new(),
            out: Vec::new(),
            inm: Vec::new(),
            tokens: Vec::new(),
            epoch: 0,
            generation: 0,
            flush_on_failure: false,
            losing: false,
            gap_hits: 0,
            crash_in: None,
            crashing: false,
            stale: HashSet::new(),
        }
    }

    // ----- the driver -------------------------------------------------------------------------

    /// Carries out the engine's actions in order; a store failure ends the session.
    fn drive(&mut self) {
        while let Some(a) = self.session.poll_action() {
            match self.crash_in {
                Some((0, flush)) => {
                    // Killed before this action (and the rest) was carried out.
                    self.crash_in = None;
                    let gap = std::mem::take(&mut self.losing);
                    if gap {
                        self.gap_hits += 1;
                    }
                    self.link_down(flush);
                    self.crashing = true;
                    self.new_process(gap);
                    return;
                }
                Some((n, flush)) => self.crash_in = Some((n - 1, flush)),
                None => {}
            }
            match a {
                Action::Store(op) => {
                    let first_put = match &op {
                        StoreOp::Put {
                            key: Key::Outbound(id),
                            kind: EntryKind::Publish,
                            ..
                        } => Some(*id),
                        _ => None,
                    };
                    if let Err(e) = now_ready(op.apply(&self.store)) {
                        self.store_failed(e, first_put);
                        return;
                    }
                }
                Action::Send(p) => self.client_sends(p),
                Action::Deliver(d) => {
                    let (p, token) = d.into_parts();
                    self.app_receives(p, token.expect("QoS 1/2 delivery has a token"));
                }
                Action::Abandoned(p) => {
                    assert_eq!(self.cfg.policy, SessionLostPolicy::Fail, "abandoned {p:?}");
                    assert!(p.packet_id.is_none() && !p.dup);
                    let m = out_index(&p.payload);
                    self.out[m].given_back = true;
                }
                other => panic!("unexpected action {other:?}"),
            }
        }
        self.collect();
        // The store mirrors the session.
        assert_eq!(self.store.outbound().len(), self.session.unfinished());
        let markers = self.store.markers();
        assert!(
            markers.is_superset(&self.expected_markers),
            "inbound markers {markers:?} lost some of {:?}",
            self.expected_markers
        );
        assert!(markers.len() <= self.session.inbound_pending());
    }

    /// The driver's reaction to a failed store operation: fail the session's handles, close
    /// the connection and reopen the store with a new session.
    fn store_failed(&mut self, e: Error, first_put: Option<PacketId>) {
        let not_stored: Vec<PacketId> = if e.is_outcome_unknown() {
            Vec::new()
        } else {
            first_put.into_iter().collect()
        };
        // The driver passes the cause, not the "outcome unknown" wrapper: `on_store_failed`
        // gives `error` itself to the never-stored handles (waiting ones included), so an
        // `OutcomeUnknown` error would tell them "stored, do not publish again" although they
        // are lost (see `store_failure_outcome_unknown_misleads_waiting_handles` below).
        let e = match e {
            Error::OutcomeUnknown { cause } => (*cause).clone(),
            e => e,
        };
        self.session.on_store_failed(e, not_stored);
        self.collect();
        // The session loss in progress (if any) may now be only partly in the store.
        let gap = std::mem::take(&mut self.losing);
        if gap {
            self.gap_hits += 1;
        }
        self.link_down(self.flush_on_failure);
        self.new_process(gap);
    }

    /// A new process (or a reopened store) restores the session. `gap`: a store failure
    /// interrupted a session loss.
    fn new_process(&mut self, gap: bool) {
        let entries = self.store.entries();
        for (_, kind, payload) in self.store.outbound() {
            let o = &mut self.out[out_index(&payload)];
            o.accepted = true;
            if o.given_back {
                // Handed back (fail policy), then killed before the store reset was carried
                // out: the new process has it again, and resends or hands it back again.
                // (Handing back before the reset risks a duplicate, never a loss.)
                assert!(self.crashing, "{payload:?} handed back but still stored");
                o.given_back = false;
            }
            if kind == EntryKind::PubRel && o.forgotten_at_pubrel {
                // (With expiry 0 the next connection finds Session Present = 0 and republishes.)
                assert!(
                    gap || self.cfg.expiry == 0 || o.exposed,
                    "a PUBREL-stage entry of a forgotten session survived"
                );
                o.exposed = true;
            }
        }
        let markers = self.store.markers();
        let stale: HashSet<PacketId> = markers
            .iter()
            .copied()
            .filter(|id| {
                self.stale.contains(id)
                    || self
                        .broker
                        .to_client
                        .iter()
                        .all(|b| b.id != *id || b.qos != QoS::ExactlyOnce)
            })
            .collect();
        assert!(
            gap || self.cfg.expiry == 0 || stale.is_subset(&self.stale),
            "inbound markers {stale:?} of a forgotten session survived"
        );
        self.stale = stale;
        for m in &mut self.inm {
            if m.qos == QoS::ExactlyOnce && m.delivered >= 1 && !markers.contains(&m.id) {
                m.redeliver_ok = true;
            }
        }
        self.tokens.clear(); // the application's tokens belong to the old session
        self.generation += 1;
        let old = std::mem::replace(
            &mut self.session,
            Session::restore(self.cfg.session(), entries),
        );
        drop(old);
        self.collect();
        self.crashing = false;
        self.drive();
    }

    /// Resolves handles that have an outcome, checking each against the store.
    fn collect(&mut self) {
        let mut stored: Option<HashSet<Bytes>> = None;
        for i in 0..self.out.len() {
            if self.out[i].outcome.is_some() {
                continue;
            }
            let Some(r) = self.out[i].handle.try_outcome() else {
                continue;
            };
            let payload = Bytes::from(format!("o{i}"));
            let in_store = stored
                .get_or_insert_with(|| {
                    self.store
                        .outbound()
                        .into_iter()
                        .map(|(_, _, p)| p)
                        .collect()
                })
                .contains(&payload);
            let m = &mut self.out[i];
            let outcome = match r {
                Ok(o) => {
                    assert!(o.is_success(), "{i}: {o:?}");
                    assert!(m.received >= 1, "{i} acknowledged but never received");
                    Outcome::Ok
                }
                Err(_) if self.crashing => {
                    // Its process was killed mid-drive, perhaps before the store operations
                    // behind this answer were carried out: what it was told does not matter
                    // (the caller died too); it must arrive if it was stored (`accepted`).
                    Outcome::Died
                }
                Err(e) if e.is_outcome_unknown() => {
                    assert!(in_store, "{i}: outcome unknown but not in the store: {e}");
                    Outcome::Unknown
                }
                Err(Error::SessionLost { message } | Error::SessionExpired { message }) => {
                    assert_eq!(self.cfg.policy, SessionLostPolicy::Fail);
                    assert_eq!(message.payload, payload);
                    assert!(message.packet_id.is_none() && !message.dup);
                    assert!(!in_store, "{i} handed back but still stored");
                    m.given_back = true;
                    Outcome::GivenBack
                }
                Err(Error::SessionClosed) => {
                    assert!(!in_store && !m.sent, "{i}: closed, but stored or sent");
                    Outcome::Closed
                }
                Err(Error::StoreFailed) => {
                    assert!(!in_store, "{i}: 'not done' but in the store");
                    assert!(!m.sent, "{i}: 'not done' but sent");
                    Outcome::NotDone
                }
                Err(e) => panic!("{i}: unexpected {e}"),
            };
            m.outcome = Some(outcome);
        }
    }

    fn client_sends(&mut self, p: Packet) {
        assert!(self.broker.up, "sent while offline: {p:?}");
        match &p {
            Packet::Publish(pb) => {
                let id = pb.packet_id.expect("QoS 1/2");
                let m = out_index(&pb.payload);
                let entry = now_ready(self.store.get(Key::Outbound(id))).unwrap();
                let stored = entry.and_then(|e| match Packet::decode_exact(e.value().clone()) {
                    Ok(Packet::Publish(s)) if e.kind() == EntryKind::Publish => Some(s.payload),
                    _ => None,
                });
                assert_eq!(
                    stored.as_ref(),
                    Some(&pb.payload),
                    "PUBLISH {id} on the wire while the store does not hold it"
                );
                let o = &mut self.out[m];
                assert_eq!(o.qos, pb.qos);
                assert!(!o.given_back, "{m} sent after it was handed back");
                assert_ne!(
                    o.outcome,
                    Some(Outcome::NotDone),
                    "{m} sent after 'not done'"
                );
                o.sent = true;
                o.forgotten_at_pubrel = false;
                assert!(
                    self.in_flight.len() < self.receive_max,
                    "PUBLISH beyond Receive Maximum {}",
                    self.receive_max
                );
                assert!(self.in_flight.insert(id), "id {id} reused while in flight");
            }
            Packet::PubRel(r) => {
                let entry = now_ready(self.store.get(Key::Outbound(r.packet_id))).unwrap();
                assert_eq!(
                    entry.map(|e| e.kind()),
                    Some(EntryKind::PubRel),
                    "PUBREL {} on the wire while the store does not hold it",
                    r.packet_id
                );
                // A PUBREL resent after a reconnect counts against the quota too.
                self.in_flight.insert(r.packet_id);
            }
            Packet::PubRec(r) => {
                assert!(
                    self.store.markers().contains(&r.packet_id),
                    "PUBREC {} on the wire before its marker is stored",
                    r.packet_id
                );
                self.expected_markers.insert(r.packet_id);
            }
            Packet::PubComp(c) => {
                assert!(
                    !self.store.markers().contains(&c.packet_id),
                    "PUBCOMP {} on the wire while its marker is still stored",
                    c.packet_id
                );
            }
            Packet::PubAck(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        self.outq.push_back(p);
    }

    fn app_receives(&mut self, p: Publish, token: AckToken) {
        let i = out_index(&p.payload);
        let m = &mut self.inm[i];
        assert_eq!(m.qos, p.qos);
        if m.qos == QoS::ExactlyOnce && m.delivered >= 1 {
            assert!(
                m.redeliver_ok,
                "inbound QoS 2 message {i} delivered {} times",
                m.delivered + 1
            );
            m.redeliver_ok = false;
        }
        m.delivered += 1;
        self.tokens.push((token, self.epoch));
    }

    fn ack(&mut self, k: usize) {
        if self.tokens.is_empty() {
            return;
        }
        let (token, epoch) = self.tokens.remove(k % self.tokens.len());
        let r = self.session.ack(token, self.now);
        if epoch == self.epoch {
            r.unwrap();
        } else {
            assert!(matches!(r, Err(Error::StaleAck)), "{r:?}");
        }
        self.drive();
    }

    fn client_receives(&mut self, p: Packet) {
        match &p {
            Packet::PubAck(a) => {
                self.in_flight.remove(&a.packet_id);
            }
            Packet::PubComp(c) => {
                self.in_flight.remove(&c.packet_id);
            }
            Packet::PubRel(r) => {
                self.expected_markers.remove(&r.packet_id);
                self.stale.remove(&r.packet_id);
                if let Some(b) = self
                    .broker
                    .to_client
                    .iter_mut()
                    .find(|b| b.id == r.packet_id && b.released)
                {
                    b.completed = true;
                }
            }
            _ => {}
        }
        self.session.handle(p, self.now).unwrap();
        self.drive();
    }

    // ----- the broker -------------------------------------------------------------------------

    fn release(&mut self, m: usize) {
        let o = &mut self.out[m];
        o.received += 1;
        assert!(
            o.received <= o.allowed,
            "QoS 2 message {m} released {} times (allowed {})",
            o.received,
            o.allowed
        );
    }

    fn broker_receives(&mut self, p: Packet) {
        match p {
            Packet::Publish(pb) => {
                let id = pb.packet_id.unwrap();
                let m = out_index(&pb.payload);
                if pb.qos == QoS::ExactlyOnce {
                    match self.broker.qos2.get(&id) {
                        Some(&(other, _)) => {
                            assert_eq!(other, m, "id {id} reused while the broker holds {other}");
                            assert!(pb.dup, "{m} resent without DUP");
                        }
                        None => {
                            let released = !self.cfg.release_at_pubrel;
                            self.broker.qos2.insert(id, (m, released));
                            if released {
                                self.release(m);
                            }
                        }
                    }
                    self.inq.push_back(Packet::PubRec(PubRec::new(id)));
                } else {
                    self.out[m].received += 1;
                    self.inq.push_back(Packet::PubAck(PubAck::new(id)));
                }
            }
            Packet::PubRel(r) => {
                let id = r.packet_id;
                let mut comp = PubComp::new(id);
                match self.broker.qos2.remove(&id) {
                    Some((m, released)) => {
                        if !released {
                            self.release(m);
                        }
                    }
                    None => comp.reason_code = PubCompReasonCode::PacketIdentifierNotFound,
                }
                self.inq.push_back(Packet::PubComp(comp));
            }
            Packet::PubAck(a) => {
                let k = self
                    .broker
                    .to_client
                    .iter()
                    .position(|b| b.id == a.packet_id && b.qos == QoS::AtLeastOnce)
                    .unwrap_or_else(|| panic!("unexpected {a:?}"));
                let b = self.broker.to_client.remove(k);
                self.inm[b.msg].done_at_broker = true;
            }
            Packet::PubRec(r) => {
                let b = self
                    .broker
                    .to_client
                    .iter_mut()
                    .find(|b| b.id == r.packet_id && b.qos == QoS::ExactlyOnce && !b.released)
                    .unwrap_or_else(|| panic!("unexpected {r:?}"));
                b.released = true;
                self.inm[b.msg].done_at_broker = true;
                self.inq.push_back(Packet::PubRel(PubRel::new(r.packet_id)));
            }
            Packet::PubComp(c) => {
                let k = self
                    .broker
                    .to_client
                    .iter()
                    .position(|b| b.id == c.packet_id && b.released)
                    .unwrap_or_else(|| panic!("unexpected {c:?}"));
                let b = self.broker.to_client.remove(k);
                // 0x92 only answers a resent PUBREL after the client got the first one (its
                // PUBCOMP was lost): the client must not forget an inbound exchange before.
                assert!(
                    c.reason_code == PubCompReasonCode::Success || b.completed,
                    "the client forgot inbound {} before completing it",
                    c.packet_id
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn broker_publishes(&mut self, qos2: bool) {
        if !self.broker.up || self.broker.to_client.len() >= 4 {
            return;
        }
        // The lowest free id: ids are reused as soon as possible.
        let id = (1..)
            .map(pid)
            .find(|id| self.broker.to_client.iter().all(|b| b.id != *id))
            .unwrap();
        let qos = if qos2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let msg = self.inm.len();
        self.inm.push(InMsg {
            id,
            qos,
            delivered: 0,
            redeliver_ok: false,
            done_at_broker: false,
            swallowable: self.stale.contains(&id),
        });
        self.broker.to_client.push(BrokerOut {
            id,
            msg,
            qos,
            released: false,
            completed: false,
        });
        self.inq.push_back(Packet::Publish(Publish {
            qos,
            topic: "in".into(),
            packet_id: Some(id),
            payload: Bytes::from(format!("i{msg}")),
            ..Default::default()
        }));
    }

    /// The broker drops its session (Session Present = 0 next, or expiry 0 at a disconnect).
    fn broker_forgets(&mut self) {
        // A QoS 2 message released before and still held by the client will be republished
        // (under the republish policy) and may be released once more.
        for (_, kind, payload) in self.store.outbound() {
            let o = &mut self.out[out_index(&payload)];
            if o.qos == QoS::ExactlyOnce && o.received >= 1 {
                o.allowed = o.allowed.max(o.received + 1);
            }
            if kind == EntryKind::PubRel {
                o.forgotten_at_pubrel = true;
            }
        }
        self.broker.qos2.clear();
        self.broker.to_client.clear(); // its messages to the client are lost with it
        self.expected_markers.clear();
        self.stale.clear(); // the session loss deletes them (unless a store failure interrupts)
    }

    // ----- the link ---------------------------------------------------------------------------

    /// The connection ends; with `flush`, what the client wrote still reaches the broker.
    fn link_down(&mut self, flush: bool) {
        if self.broker.up {
            if flush {
                while let Some(p) = self.outq.pop_front() {
                    self.broker_receives(p);
                }
            }
            if self.cfg.expiry == 0 {
                self.broker_forgets();
            }
            self.epoch += 1;
        }
        self.broker.up = false;
        self.outq.clear();
        self.inq.clear();
        self.in_flight.clear();
    }

    fn drop_link(&mut self) {
        self.link_down(false);
        self.session.on_connection_lost(self.now);
        self.losing = self.cfg.expiry == 0;
        self.drive();
        self.losing = false;
    }

    fn connect(&mut self, want_present: bool, receive_max: u16) {
        if self.broker.up {
            self.drop_link();
        }
        let generation = self.generation;
        let clean = self.session.begin_connect(false, self.now);
        self.losing = clean;
        self.drive();
        self.losing = false;
        if generation != self.generation {
            return; // the store failed; the new session is offline
        }
        let present = want_present && !clean && self.cfg.expiry != 0;
        if !present {
            self.broker_forgets();
        }
        self.broker.up = true;
        self.receive_max = receive_max.into();
        if present {
            // MQTT: the broker resends its unacknowledged exchanges, in order.
            for b in &self.broker.to_client {
                let p = if b.released {
                    Packet::PubRel(PubRel::new(b.id))
                } else {
                    Packet::Publish(Publish {
                        qos: b.qos,
                        dup: true,
                        topic: "in".into(),
                        packet_id: Some(b.id),
                        payload: Bytes::from(format!("i{}", b.msg)),
                        ..Default::default()
                    })
                };
                self.inq.push_back(p);
            }
        }
        let mut connack = ConnAck {
            session_present: present,
            ..Default::default()
        };
        connack.properties.receive_maximum = Some(receive_max);
        self.session.on_connack(&connack, self.now).unwrap();
        self.losing = !present;
        self.drive();
        self.losing = false;
    }

    fn publish(&mut self, qos2: bool) {
        let qos = if qos2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let i = self.out.len();
        let p = Publish {
            qos,
            topic: "m".into(),
            payload: Bytes::from(format!("o{i}")),
            ..Default::default()
        };
        let handle = self.session.publish(p, self.now).unwrap();
        self.out.push(OutMsg {
            qos,
            handle,
            outcome: None,
            sent: false,
            received: 0,
            allowed: 1,
            accepted: false,
            given_back: false,
            forgotten_at_pubrel: false,
            exposed: false,
        });
        self.drive();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Publish(qos2) => self.publish(qos2),
            Op::ToBroker => {
                if let Some(p) = self.outq.pop_front() {
                    self.broker_receives(p);
                }
            }
            Op::ToClient => {
                if let Some(p) = self.inq.pop_front() {
                    self.client_receives(p);
                }
            }
            Op::BrokerPublish(qos2) => self.broker_publishes(qos2),
            Op::Ack(k) => self.ack(k),
            Op::Drop => {
                if self.broker.up {
                    self.drop_link();
                }
            }
            Op::Reconnect {
                present,
                receive_max,
            } => self.connect(present, receive_max),
            Op::Restart { flush } => {
                self.link_down(flush);
                self.new_process(false);
            }
            Op::FailPut { unknown, flush } => {
                self.store.arm(Some(if unknown {
                    Failure::Unknown
                } else {
                    Failure::NotDone
                }));
                self.flush_on_failure = flush;
            }
            Op::Crash { after, flush } => self.crash_in = Some((after, flush)),
        }
    }

    /// A final connection that keeps the session, answers everything and acks every delivery.
    fn settle(&mut self) {
        self.store.arm(None);
        self.crash_in = None;
        self.connect(true, u16::MAX);
        for _ in 0..100_000 {
            if let Some(p) = self.outq.pop_front() {
                self.broker_receives(p);
            } else if let Some(p) = self.inq.pop_front() {
                self.client_receives(p);
            } else if !self.tokens.is_empty() {
                self.ack(0);
            } else {
                return;
            }
        }
        panic!("did not settle");
    }

    fn check_end(&mut self) {
        assert_eq!(self.session.unfinished(), 0);
        assert_eq!(self.session.waiting(), 0);
        assert_eq!(self.session.packet_ids_in_use(), 0);
        // Only stale markers of the known gap may be left.
        let markers = self.store.markers();
        assert!(markers.is_subset(&self.stale), "{markers:?} left behind");
        assert_eq!(self.session.inbound_pending(), markers.len());
        assert!(self.store.outbound().is_empty());
        assert!(self.store.quarantined().is_empty());
        assert!(self.broker.qos2.is_empty());
        assert!(self.broker.to_client.is_empty());
        self.collect();
        for (i, m) in self.out.iter().enumerate() {
            let outcome = m
                .outcome
                .unwrap_or_else(|| panic!("handle {i} never resolved"));
            if self.cfg.policy == SessionLostPolicy::Republish {
                assert!(!m.given_back, "{i} handed back under republish");
            }
            let must_arrive = matches!(outcome, Outcome::Ok | Outcome::Unknown) || m.accepted;
            if must_arrive && !m.given_back && (self.strict || !m.exposed) {
                assert!(
                    m.received >= 1,
                    "accepted message {i} ({outcome:?}) never received"
                );
            }
            if matches!(outcome, Outcome::NotDone | Outcome::Closed) {
                assert_eq!(m.received, 0, "{i} ({outcome:?}) received");
            }
            if m.qos == QoS::ExactlyOnce {
                assert!(m.received <= m.allowed);
            }
        }
        for (i, m) in self.inm.iter().enumerate() {
            if m.done_at_broker && (self.strict || !m.swallowable) {
                assert!(
                    m.delivered >= 1,
                    "inbound {i} acknowledged to the broker but never delivered"
                );
            }
        }
    }
}

/// Engine bug (reported, not fixed here): when the store error a driver passes to
/// `on_store_failed` is itself `OutcomeUnknown` (an applied put whose fsync failed), publishes
/// still waiting for quota, which were never stored, get `OutcomeUnknown` too: the
/// application is told not to publish them again, and they are lost.
#[test]
fn store_failure_outcome_unknown_misleads_waiting_handles() {
    let mut session = Session::new(SessionConfig::new().session_expiry_interval(u32::MAX));
    session.begin_connect(false, Instant::now());
    let mut connack = ConnAck::default();
    connack.properties.receive_maximum = Some(1);
    session.on_connack(&connack, Instant::now()).unwrap();
    let publish = |payload: &'static str| Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        payload: Bytes::from_static(payload.as_bytes()),
        ..Default::default()
    };
    let mut stored = session.publish(publish("stored"), Instant::now()).unwrap();
    let mut waiting = session.publish(publish("waiting"), Instant::now()).unwrap();
    // The driver carried the first Put out; it was applied, then its fsync failed: outcome
    // unknown.
    while session.poll_action().is_some() {}
    session.on_store_failed(Error::outcome_unknown(Error::StoreFailed), []);
    assert!(stored
        .try_outcome()
        .unwrap()
        .unwrap_err()
        .is_outcome_unknown());
    let e = waiting.try_outcome().unwrap().unwrap_err();
    assert!(!e.is_outcome_unknown(), "never stored, yet: {e}");
}

/// The known gap, with a plain kill: a QoS 2 exchange at the PUBREL stage meets Session
/// Present = 0, and the process dies before the rewrite of its entry to "PUBLISH stored" is
/// durable. The new process restores it at the PUBREL stage and, since the broker now holds a
/// (new, empty) session, connects with Session Present = 1: it resends PUBREL, the broker
/// answers PUBCOMP 0x92, which counts as success, and a broker that releases at PUBREL
/// (mosquitto) never delivered the message. Lost, while the caller heard "outcome unknown".
#[test]
#[ignore = "known gap, kept to reproduce it: a crash between CONNACK Session Present = 0 and the fsync of the session-loss writes, then a reconnect to the new server session, is not survived (docs/ARCHITECTURE.md, When the session is lost); fails until a session loss is recorded durably first"]
fn known_gap_pubrel_rewrite_lost_with_the_store() {
    let cfg = Config {
        policy: SessionLostPolicy::Republish,
        release_at_pubrel: true,
        expiry: u32::MAX,
    };
    let ops = vec![
        Op::Publish(true),
        Op::ToBroker, // PUBLISH arrives, PUBREC back
        Op::ToClient, // PUBREC: the PUBREL stage is stored, PUBREL is lost with the link
        Op::Crash {
            after: 0,
            flush: false,
        },
        // Session Present = 0: killed before the entry goes back to "PUBLISH stored".
        Op::Reconnect {
            present: false,
            receive_max: 3,
        },
    ];
    run_with(cfg, ops, true);
}

/// The known gap, inbound side: an inbound QoS 2 marker of the forgotten session survives a
/// kill before its deletion is durable, and swallows the broker's next message with that id.
#[test]
#[ignore = "known gap, kept to reproduce it: a crash between CONNACK Session Present = 0 and the fsync of the session-loss writes, then a reconnect to the new server session, is not survived (docs/ARCHITECTURE.md, When the session is lost); fails until a session loss is recorded durably first"]
fn known_gap_stale_inbound_marker_swallows_a_new_message() {
    let cfg = Config {
        policy: SessionLostPolicy::Republish,
        release_at_pubrel: false,
        expiry: u32::MAX,
    };
    let ops = vec![
        Op::BrokerPublish(true),
        Op::ToClient,
        Op::Ack(0), // marker stored, PUBREC sent (and lost with the link)
        Op::Crash {
            after: 0,
            flush: false,
        },
        // Session Present = 0: killed before the marker's deletion is carried out.
        Op::Reconnect {
            present: false,
            receive_max: 3,
        },
        Op::Reconnect {
            present: true,
            receive_max: 3,
        },
        Op::BrokerPublish(true), // the same id, a new message
        Op::ToClient,
    ];
    run_with(cfg, ops, true);
}

fn run(cfg: Config, ops: Vec<Op>) {
    run_with(cfg, ops, false);
}

/// Minimal sequences that caught seeded engine bugs (proptest seeds do not survive changes to
/// the strategies; these do).
#[test]
fn sequences_that_caught_seeded_bugs() {
    use Op::*;
    let cfg = |policy, release_at_pubrel, expiry| Config {
        policy,
        release_at_pubrel,
        expiry,
    };
    let rep = SessionLostPolicy::Republish;
    let reconnect = |present, receive_max| Reconnect {
        present,
        receive_max,
    };
    let cases: Vec<(&str, Config, Vec<Op>)> = vec![
        (
            "QoS 1 completed without resend on Session Present = 1",
            cfg(rep, false, u32::MAX),
            vec![Publish(false), Publish(false), Publish(false)],
        ),
        (
            "PUBREL stage not republished after Session Present = 0",
            cfg(rep, true, u32::MAX),
            vec![
                Publish(true),
                ToBroker,
                ToClient,
                reconnect(false, 3),
                Publish(false),
            ],
        ),
        (
            "every handle told 'not done' by on_store_failed",
            cfg(rep, false, u32::MAX),
            vec![
                FailPut {
                    unknown: true,
                    flush: false,
                },
                Publish(false),
            ],
        ),
        (
            "inbound marker stored after PUBREC, or never",
            cfg(rep, false, u32::MAX),
            vec![BrokerPublish(true), ToClient, Ack(0)],
        ),
        (
            "inbound markers kept on Session Present = 0",
            cfg(rep, false, u32::MAX),
            vec![
                BrokerPublish(true),
                ToClient,
                Ack(0),
                reconnect(false, 1),
                BrokerPublish(true),
                ToClient,
            ],
        ),
        (
            "a republish Put failing after expiry 0 told the caller 'not done'",
            cfg(rep, false, 0),
            vec![
                Publish(true),
                ToBroker,
                ToClient,
                FailPut {
                    unknown: false,
                    flush: false,
                },
                Drop,
            ],
        ),
    ];
    for (what, cfg, ops) in cases {
        eprintln!("{what}");
        run(cfg, ops);
    }
}

fn run_with(cfg: Config, ops: Vec<Op>, strict: bool) {
    let mut w = World::new(cfg);
    w.strict = strict;
    w.connect(false, 3);
    for op in ops {
        w.step(op);
    }
    w.settle();
    w.check_end();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_invariants(
        cfg in config(),
        ops in proptest::collection::vec(op(), 0..150),
    ) {
        run(cfg, ops);
    }
}
