//! Deterministic tests of the session engine against a scripted broker with a virtual clock.
//!
//! The harness plays the `paho` driver: it carries out the engine's actions in order (store
//! operations awaited before anything after them), records what would go on the wire, and lets
//! each test play the broker's side packet by packet. Time only moves when a test moves it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paho_packets::{
    ConnAck, Packet, PacketId, PubAck, PubComp, PubCompReasonCode, PubRec, PubRecReasonCode,
    PubRel, Publish, PublishProperties, QoS, SubAck, Subscribe, Subscription, SubscriptionOptions,
};
use paho_session::{
    Action, Delivery, EntryKind, Error, FileStore, Key, MemoryStore, PublishOutcome, Session,
    SessionConfig, SessionLostPolicy, Store, StoreIdentity,
};

fn pid(n: u16) -> PacketId {
    NonZeroU16::new(n).unwrap()
}

fn msg(qos: QoS, topic: &str, payload: &str) -> Publish {
    Publish {
        qos,
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

fn incoming(qos: QoS, id: u16, payload: &str) -> Publish {
    Publish {
        qos,
        topic: "in/topic".into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

fn subscribe() -> Subscribe {
    Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![Subscription::new(
            "a/#",
            SubscriptionOptions::qos(QoS::AtLeastOnce),
        )],
    }
}

/// The scripted broker and the driver stand-in.
struct Harness<S: Store> {
    session: Session,
    store: S,
    now: Instant,
    wire: VecDeque<Packet>,
    delivered: Vec<Delivery>,
    abandoned: Vec<Publish>,
}

impl<S: Store> Harness<S> {
    fn new(session: Session, store: S) -> Self {
        Harness {
            session,
            store,
            now: Instant::now(),
            wire: VecDeque::new(),
            delivered: Vec::new(),
            abandoned: Vec::new(),
        }
    }

    /// Carries out every pending action, in order.
    async fn drive(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Store(op) => {
                    let put = match &op {
                        paho_session::StoreOp::Put { key, .. } => Some(*key),
                        _ => None,
                    };
                    op.apply(&self.store).await.unwrap();
                    if let Some(key) = put {
                        self.session.on_stored(key);
                    }
                }
                Action::Send(p) => self.wire.push_back(p),
                Action::Deliver(d) => self.delivered.push(d),
                Action::Abandoned(p) => self.abandoned.push(p),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    /// CONNECT + CONNACK. Returns the Clean Start flag the session asked for.
    async fn connect(&mut self, session_present: bool, receive_max: Option<u16>) -> bool {
        let clean = self.session.begin_connect(false, self.now);
        let mut connack = ConnAck {
            session_present,
            ..Default::default()
        };
        connack.properties.receive_maximum = receive_max;
        self.session.on_connack(&connack, self.now).unwrap();
        self.drive().await;
        clean
    }

    async fn drop_link(&mut self) {
        self.session.on_connection_lost(self.now);
        self.wire.clear(); // whatever was in flight on the dead link is gone
        self.drive().await;
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    async fn feed(&mut self, p: impl Into<Packet>) {
        self.session.handle(p.into(), self.now).unwrap();
        self.drive().await;
    }

    async fn publish(&mut self, p: Publish) -> paho_session::PublishCompletion {
        let c = self.session.publish(p, self.now).unwrap();
        self.drive().await;
        c
    }

    fn take_wire(&mut self) -> Vec<Packet> {
        self.wire.drain(..).collect()
    }

    fn sent_publishes(&mut self) -> Vec<Publish> {
        self.take_wire()
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    async fn stored(&self) -> Vec<(Key, EntryKind)> {
        self.store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key(), e.kind()))
            .collect()
    }
}

fn memory_harness(expiry: u32) -> Harness<MemoryStore> {
    Harness::new(
        Session::new(SessionConfig::new().session_expiry_interval(expiry)),
        MemoryStore::new(),
    )
}

/// A harness whose session hands exchanges back when the session is lost.
fn failing_harness(expiry: u32) -> Harness<MemoryStore> {
    Harness::new(
        Session::new(
            SessionConfig::new()
                .session_expiry_interval(expiry)
                .on_session_lost(SessionLostPolicy::Fail),
        ),
        MemoryStore::new(),
    )
}

const HOUR: u32 = 3600;

fn puback(id: PacketId) -> PubAck {
    PubAck::new(id)
}

// ----- resend ----------------------------------------------------------------------------

#[tokio::test]
async fn qos1_resent_with_dup_after_drop_before_puback() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let mut done = h.publish(msg(QoS::AtLeastOnce, "t/1", "hello")).await;
    let first = h.sent_publishes();
    assert_eq!(first.len(), 1);
    let id = first[0].packet_id.unwrap();
    assert!(!first[0].dup);
    assert_eq!(
        h.stored().await,
        vec![(Key::Outbound(id), EntryKind::Publish)]
    );

    h.drop_link().await;
    assert!(
        done.try_outcome().is_none(),
        "the handle outlives the connection"
    );
    h.advance(Duration::from_secs(5));
    assert!(!h.connect(true, None).await, "not expired: no clean start");
    let resent = h.sent_publishes();
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, Some(id));
    assert_eq!(resent[0].payload, first[0].payload);

    h.feed(puback(id)).await;
    let outcome = done.await.unwrap();
    assert!(matches!(outcome, PublishOutcome::PubAck(_)));
    assert_eq!(outcome.reason_code(), 0);
    assert!(h.stored().await.is_empty());
    assert_eq!(h.session.packet_ids_in_use(), 0);
}

#[tokio::test]
async fn qos2_resent_with_dup_after_drop_before_pubrec() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::ExactlyOnce, "t/2", "once")).await;
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.drop_link().await;
    h.connect(true, None).await;
    let resent = h.sent_publishes();
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, Some(id));

    h.feed(PubRec::new(id)).await;
    assert_eq!(h.take_wire(), vec![Packet::PubRel(PubRel::new(id))]);
    assert_eq!(
        h.stored().await,
        vec![(Key::Outbound(id), EntryKind::PubRel)]
    );
    h.feed(PubComp::new(id)).await;
    assert!(matches!(done.await.unwrap(), PublishOutcome::PubComp(_)));
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn drop_after_pubrec_resends_pubrel_and_not_publish() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::ExactlyOnce, "t", "x")).await;
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.feed(PubRec::new(id)).await;
    assert_eq!(h.take_wire(), vec![Packet::PubRel(PubRel::new(id))]);
    h.drop_link().await;
    h.connect(true, None).await;
    assert_eq!(h.take_wire(), vec![Packet::PubRel(PubRel::new(id))]);
    h.feed(PubComp::new(id)).await;
    assert!(done.await.unwrap().is_success());
}

#[tokio::test]
async fn resend_keeps_original_order_across_kinds() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let mut ids = Vec::new();
    for (i, qos) in [
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        drop(h.publish(msg(qos, "t", &i.to_string())).await);
        ids.push(h.sent_publishes()[0].packet_id.unwrap());
    }
    // The second one advances to PUBREL; it must still be resent in second place.
    h.feed(PubRec::new(ids[1])).await;
    h.take_wire();
    h.drop_link().await;
    h.connect(true, None).await;
    let wire = h.take_wire();
    let order: Vec<(PacketId, &str)> = wire
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.packet_id.unwrap(), "PUBLISH"),
            Packet::PubRel(r) => (r.packet_id, "PUBREL"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (ids[0], "PUBLISH"),
            (ids[1], "PUBREL"),
            (ids[2], "PUBLISH"),
            (ids[3], "PUBLISH")
        ]
    );
}

#[tokio::test]
async fn session_present_0_fails_waiters_clears_store_and_keeps_unsent() {
    let mut h = failing_harness(HOUR);
    h.connect(false, Some(2)).await;
    let a = h.publish(msg(QoS::AtLeastOnce, "t", "a")).await;
    let b = h.publish(msg(QoS::ExactlyOnce, "t", "b")).await;
    let c = h.publish(msg(QoS::AtLeastOnce, "t", "c")).await; // waits for quota
    assert_eq!(h.sent_publishes().len(), 2);
    h.drop_link().await;
    h.connect(false, Some(2)).await; // the server lost the session
                                     // The messages come back with the errors, for the application to decide.
    let a = a.await.unwrap_err();
    assert!(matches!(a, Error::SessionLost { .. }));
    assert!(!a.is_outcome_unknown());
    assert_eq!(a.message().unwrap().payload, Bytes::from_static(b"a"));
    assert_eq!(a.message().unwrap().packet_id, None);
    let b = b.await.unwrap_err();
    assert_eq!(b.message().unwrap().payload, Bytes::from_static(b"b"));
    // The never-sent publish goes out now, as a new exchange.
    let sent = h.sent_publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload, Bytes::from_static(b"c"));
    assert!(!sent[0].dup);
    assert_eq!(h.stored().await.len(), 1);
    h.feed(puback(sent[0].packet_id.unwrap())).await;
    assert!(c.await.unwrap().is_success());
    assert!(h.stored().await.is_empty());
}

// ----- packet ids ------------------------------------------------------------------------

#[tokio::test]
async fn all_ids_exhausted_then_freed_then_reused() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(u16::MAX)).await;
    // One SUBSCRIBE plus 65,534 publishes hold every id.
    let _sub = h.session.subscribe(subscribe(), h.now).unwrap();
    let mut handles = Vec::new();
    for i in 0..65_534u32 {
        handles.push(
            h.session
                .publish(msg(QoS::AtLeastOnce, "t", &i.to_string()), h.now)
                .unwrap(),
        );
    }
    h.drive().await;
    assert_eq!(h.session.packet_ids_in_use(), 65_535);
    let wire = h.take_wire();
    let mut seen = std::collections::HashSet::new();
    for p in &wire {
        let id = match p {
            Packet::Publish(p) => p.packet_id.unwrap(),
            Packet::Subscribe(s) => s.packet_id,
            other => panic!("{other:?}"),
        };
        assert!(seen.insert(id), "id {id} handed out twice");
    }
    // Quota remains (65,534 < 65,535), but no id: a typed error, for both kinds.
    assert!(matches!(
        h.session.publish(msg(QoS::AtLeastOnce, "t", "more"), h.now),
        Err(Error::PacketIdsExhausted)
    ));
    assert!(matches!(
        h.session.subscribe(subscribe(), h.now),
        Err(Error::PacketIdsExhausted)
    ));

    // Free one, and it is used again.
    let freed = pid(4242);
    h.feed(puback(freed)).await;
    let again = h.publish(msg(QoS::AtLeastOnce, "t", "again")).await;
    let sent = h.sent_publishes();
    assert_eq!(sent[0].packet_id, Some(freed));
    h.feed(puback(freed)).await;
    assert!(again.await.unwrap().is_success());
}

/// An id freed and reused at once (every other id is held) leaves the old exchange's place
/// in the send order behind: a resend goes by the new exchange's place, once.
#[tokio::test]
async fn a_reused_id_is_resent_once_in_its_new_place() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(u16::MAX)).await;
    let mut handles = Vec::new();
    for i in 0..65_535u32 {
        handles.push(
            h.session
                .publish(msg(QoS::AtLeastOnce, "t", &i.to_string()), h.now)
                .unwrap(),
        );
    }
    h.drive().await;
    h.take_wire();
    // Id 5 finishes; the next publish can only get id 5 back.
    h.feed(puback(pid(5))).await;
    let _last = h.publish(msg(QoS::AtLeastOnce, "t", "last")).await;
    assert_eq!(h.sent_publishes()[0].packet_id, Some(pid(5)));
    h.drop_link().await;
    h.connect(true, Some(u16::MAX)).await;
    let resent = h.sent_publishes();
    assert_eq!(resent.len(), 65_535, "every unfinished exchange once");
    let fives: Vec<usize> = (0..resent.len())
        .filter(|&i| resent[i].packet_id == Some(pid(5)))
        .collect();
    assert_eq!(
        fives,
        vec![65_534],
        "id 5 once, where its new exchange was sent"
    );
    assert_eq!(&resent[65_534].payload[..], b"last");
}

#[tokio::test]
async fn more_than_65535_sequential_publishes() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    for i in 0..70_000u32 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let done = h.publish(msg(qos, "seq", &i.to_string())).await;
        let id = h.sent_publishes()[0].packet_id.unwrap();
        if qos == QoS::AtLeastOnce {
            h.feed(puback(id)).await;
        } else {
            h.feed(PubRec::new(id)).await;
            h.take_wire();
            h.feed(PubComp::new(id)).await;
        }
        assert!(done.await.unwrap().is_success(), "publish {i}");
    }
    assert_eq!(h.session.packet_ids_in_use(), 0);
    assert!(h.stored().await.is_empty());
}

// ----- send quota ------------------------------------------------------------------------

#[tokio::test]
async fn quota_blocks_and_releases_first_in_first_out() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(2)).await;
    let mut handles = Vec::new();
    for i in 0..5 {
        handles.push(h.publish(msg(QoS::AtLeastOnce, "q", &i.to_string())).await);
    }
    let first = h.sent_publishes();
    assert_eq!(first.len(), 2);
    assert_eq!(h.session.waiting(), 3);
    assert_eq!(h.session.send_quota(), 0);
    // Nothing waiting is stored yet: only accepted-and-sent messages are.
    assert_eq!(h.stored().await.len(), 2);

    let mut order = vec![first[0].payload.clone(), first[1].payload.clone()];
    let mut inflight: VecDeque<PacketId> = first.iter().map(|p| p.packet_id.unwrap()).collect();
    while let Some(id) = inflight.pop_front() {
        h.feed(puback(id)).await;
        for p in h.sent_publishes() {
            order.push(p.payload.clone());
            inflight.push_back(p.packet_id.unwrap());
        }
        assert!(h.session.in_flight() <= 2);
    }
    let expected: Vec<Bytes> = (0..5).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(order, expected);
    for c in handles {
        assert!(c.await.unwrap().is_success());
    }
}

#[tokio::test]
async fn smaller_receive_maximum_on_reconnect_is_honoured() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(10)).await;
    for i in 0..4 {
        drop(h.publish(msg(QoS::AtLeastOnce, "r", &i.to_string())).await);
    }
    assert_eq!(h.sent_publishes().len(), 4);
    h.drop_link().await;
    h.connect(true, Some(2)).await;
    let resent = h.sent_publishes();
    assert_eq!(
        resent.len(),
        2,
        "only as many resends as the new quota allows"
    );
    assert_eq!(h.session.send_quota(), 0);
    h.feed(puback(resent[0].packet_id.unwrap())).await;
    let next = h.sent_publishes();
    assert_eq!(next.len(), 1);
    assert!(next[0].dup);
    assert_eq!(next[0].payload, Bytes::from_static(b"2"));
}

#[tokio::test]
async fn retransmission_beyond_quota_never_underflows() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(10)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        drop(h.publish(msg(QoS::ExactlyOnce, "r", &i.to_string())).await);
        ids.push(h.sent_publishes()[0].packet_id.unwrap());
    }
    for &id in &ids {
        h.feed(PubRec::new(id)).await;
    }
    h.take_wire();
    h.drop_link().await;
    // Three PUBRELs are owed but the new Receive Maximum is 2: all three are resent anyway
    // (the server already holds those messages), and the quota stays at 0, not below.
    h.connect(true, Some(2)).await;
    let wire = h.take_wire();
    assert_eq!(wire.len(), 3);
    assert!(wire.iter().all(|p| matches!(p, Packet::PubRel(_))));
    assert_eq!(h.session.in_flight(), 3);
    assert_eq!(h.session.send_quota(), 0);

    let waiting = h.publish(msg(QoS::AtLeastOnce, "r", "new")).await;
    assert!(h.take_wire().is_empty());
    h.feed(PubComp::new(ids[0])).await;
    assert!(
        h.take_wire().is_empty(),
        "2 in flight, quota 2: still blocked"
    );
    h.feed(PubComp::new(ids[1])).await;
    let sent = h.sent_publishes();
    assert_eq!(sent.len(), 1);
    h.feed(puback(sent[0].packet_id.unwrap())).await;
    assert!(waiting.await.unwrap().is_success());
}

// ----- completion handles ----------------------------------------------------------------

#[tokio::test]
async fn dropping_a_handle_does_not_withdraw_a_stored_publish() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    drop(
        h.publish(msg(QoS::AtLeastOnce, "t", "fire and forget"))
            .await,
    );
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.drop_link().await;
    h.connect(true, None).await;
    assert_eq!(h.sent_publishes().len(), 1, "still resent");
    assert_eq!(h.session.packet_ids_in_use(), 1, "id held until completion");
    h.feed(puback(id)).await;
    assert_eq!(h.session.packet_ids_in_use(), 0);
    assert!(h.stored().await.is_empty());
}

/// `drop(client.start_publish(m))`: the caller's handle is gone before the driver hands the
/// message to the session. With quota free it is still sent (as a completion made by
/// `publish` is alive during that call); only one that has to wait for quota, abandoned
/// meanwhile, is withdrawn.
#[tokio::test]
async fn a_handle_dropped_before_the_handover_still_sends_when_quota_allows() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(1)).await;
    let (completer, completion) = paho_session::PublishCompletion::pair_for_handover();
    drop(completion);
    h.session
        .publish_with(msg(QoS::AtLeastOnce, "t", "first"), None, completer, h.now);
    h.drive().await;
    let sent = h.sent_publishes();
    assert_eq!(
        sent.len(),
        1,
        "a handed-over message with quota free is sent"
    );
    // The quota (1) is used: a second abandoned one waits, and is withdrawn.
    let (completer, completion) = paho_session::PublishCompletion::pair_for_handover();
    drop(completion);
    h.session
        .publish_with(msg(QoS::AtLeastOnce, "t", "second"), None, completer, h.now);
    h.drive().await;
    assert!(h.sent_publishes().is_empty());
    h.feed(puback(sent[0].packet_id.unwrap())).await;
    assert!(
        h.sent_publishes().is_empty(),
        "an abandoned message that waited for quota is withdrawn"
    );
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn failure_reason_codes_resolve_the_handle() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::ExactlyOnce, "t", "x")).await;
    let id = h.sent_publishes()[0].packet_id.unwrap();
    let mut rec = PubRec::new(id);
    rec.reason_code = PubRecReasonCode::QuotaExceeded;
    h.feed(rec).await;
    let outcome = done.await.unwrap();
    assert!(matches!(outcome, PublishOutcome::PubRec(_)));
    assert_eq!(outcome.reason_code(), 0x97);
    assert!(!outcome.is_success());
    assert!(h.take_wire().is_empty(), "no PUBREL after a failed PUBREC");
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn subscribe_fails_with_connection_lost_and_frees_its_id() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let sub = h.session.subscribe(subscribe(), h.now).unwrap();
    h.drive().await;
    assert_eq!(h.session.packet_ids_in_use(), 1);
    h.drop_link().await;
    assert!(matches!(sub.await, Err(Error::ConnectionLost)));
    assert_eq!(h.session.packet_ids_in_use(), 0);
    h.connect(true, None).await;
    let sub = h.session.subscribe(subscribe(), h.now).unwrap();
    h.drive().await;
    let Packet::Subscribe(s) = h.take_wire().remove(0) else {
        panic!()
    };
    h.feed(SubAck {
        packet_id: s.packet_id,
        properties: Default::default(),
        reason_codes: vec![paho_packets::SubAckReasonCode::GrantedQoS1],
    })
    .await;
    assert_eq!(sub.await.unwrap().reason_codes.len(), 1);
}

// ----- topic aliases ---------------------------------------------------------------------

#[tokio::test]
async fn topic_alias_is_never_stored() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let mut p = msg(QoS::AtLeastOnce, "full/topic", "x");
    p.properties = PublishProperties {
        topic_alias: Some(5),
        ..Default::default()
    };
    drop(h.publish(p).await);
    let entry = h.store.list().await.unwrap().remove(0);
    let Packet::Publish(stored) = Packet::decode_exact(entry.value().clone()).unwrap() else {
        panic!()
    };
    assert_eq!(&*stored.topic, "full/topic");
    assert_eq!(stored.properties.topic_alias, None);
    // An alias-only PUBLISH cannot enter the session at all.
    let mut alias_only = msg(QoS::AtLeastOnce, "", "x");
    alias_only.properties.topic_alias = Some(5);
    assert!(matches!(
        h.session.publish(alias_only, h.now),
        Err(Error::InvalidPacket(_))
    ));
}

// ----- inbound ---------------------------------------------------------------------------

#[tokio::test]
async fn inbound_qos2_stored_before_pubrec_and_not_redelivered_across_reconnect() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    h.feed(incoming(QoS::ExactlyOnce, 9, "exactly")).await;
    assert_eq!(h.delivered.len(), 1);
    assert!(
        h.take_wire().is_empty(),
        "PUBREC waits for the application's ack"
    );
    // Nothing stored yet: a process that dies now must get the message again.
    assert!(h.stored().await.is_empty());
    let token = h.delivered[0].ack_token().unwrap();
    h.session.ack(token, h.now).unwrap();
    // The ack stores the marker, and only then does PUBREC go.
    let store_op = match h.session.poll_action() {
        Some(Action::Store(op)) => op,
        other => panic!("expected the marker's store operation first, got {other:?}"),
    };
    assert!(matches!(
        &store_op,
        paho_session::StoreOp::Put { key, kind: EntryKind::PubRec, .. } if *key == Key::Inbound(pid(9))
    ));
    store_op.apply(&h.store).await.unwrap();
    assert_eq!(
        h.session.poll_action(),
        Some(Action::Send(Packet::PubRec(PubRec::new(pid(9)))))
    );
    assert_eq!(h.session.poll_action(), None);

    h.drop_link().await;
    h.connect(true, None).await;
    let mut dup = incoming(QoS::ExactlyOnce, 9, "exactly");
    dup.dup = true;
    h.feed(dup).await;
    assert_eq!(h.delivered.len(), 1, "not delivered twice");
    assert_eq!(h.take_wire(), vec![Packet::PubRec(PubRec::new(pid(9)))]);
    h.feed(PubRel::new(pid(9))).await;
    assert_eq!(h.take_wire(), vec![Packet::PubComp(PubComp::new(pid(9)))]);
    assert!(h.stored().await.is_empty());
    // After PUBCOMP the id is free for a new message, which is delivered.
    h.feed(incoming(QoS::ExactlyOnce, 9, "new")).await;
    assert_eq!(h.delivered.len(), 2);
}

#[tokio::test]
async fn unknown_pubrel_gets_pubcomp_0x92() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    h.feed(PubRel::new(pid(77))).await;
    let mut expected = PubComp::new(pid(77));
    expected.reason_code = PubCompReasonCode::PacketIdentifierNotFound;
    assert_eq!(h.take_wire(), vec![Packet::PubComp(expected)]);
}

#[tokio::test]
async fn acks_go_out_in_arrival_order_and_stale_acks_are_typed() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    h.feed(incoming(QoS::AtLeastOnce, 1, "a")).await;
    h.feed(incoming(QoS::ExactlyOnce, 2, "b")).await;
    h.feed(incoming(QoS::AtLeastOnce, 3, "c")).await;
    let tokens: Vec<_> = h.delivered.iter().map(|d| d.ack_token().unwrap()).collect();
    h.session.ack(tokens[2], h.now).unwrap();
    h.session.ack(tokens[1], h.now).unwrap();
    h.drive().await;
    assert!(
        h.take_wire().is_empty(),
        "waits for the first message's ack"
    );
    h.session.ack(tokens[0], h.now).unwrap();
    h.drive().await;
    assert_eq!(
        h.take_wire(),
        vec![
            Packet::PubAck(PubAck::new(pid(1))),
            Packet::PubRec(PubRec::new(pid(2))),
            Packet::PubAck(PubAck::new(pid(3))),
        ]
    );
    h.feed(incoming(QoS::AtLeastOnce, 4, "d")).await;
    let stale = h.delivered[3].ack_token().unwrap();
    h.drop_link().await;
    h.connect(true, None).await;
    assert!(matches!(h.session.ack(stale, h.now), Err(Error::StaleAck)));
    h.drive().await;
    assert!(h.take_wire().is_empty());
}

// ----- restart (FileStore) ---------------------------------------------------------------

fn ident() -> StoreIdentity {
    StoreIdentity::new("mqtt://scripted", "engine-test").unwrap()
}

#[tokio::test]
async fn inbound_qos2_duplicate_suppressed_across_restart() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(tmp.path(), ident()).await.unwrap();
        let session =
            Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
                .await
                .unwrap();
        let mut h = Harness::new(session, store);
        h.connect(false, None).await;
        h.feed(incoming(QoS::ExactlyOnce, 21, "only once")).await;
        assert_eq!(h.delivered.len(), 1);
        h.session
            .ack(h.delivered[0].ack_token().unwrap(), h.now)
            .unwrap();
        h.drive().await;
        assert_eq!(h.take_wire(), vec![Packet::PubRec(PubRec::new(pid(21)))]);
        // The process dies here, after PUBREC: the marker is durable (it was stored first).
        h.store.close().await;
    }
    let store = FileStore::open(tmp.path(), ident()).await.unwrap();
    let session = Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
        .await
        .unwrap();
    let mut h = Harness::new(session, store);
    assert_eq!(h.session.inbound_pending(), 1);
    h.connect(true, None).await;
    let mut dup = incoming(QoS::ExactlyOnce, 21, "only once");
    dup.dup = true;
    h.feed(dup).await;
    assert!(h.delivered.is_empty(), "delivered again after restart");
    assert_eq!(h.take_wire(), vec![Packet::PubRec(PubRec::new(pid(21)))]);
    h.feed(PubRel::new(pid(21))).await;
    assert_eq!(h.take_wire(), vec![Packet::PubComp(PubComp::new(pid(21)))]);
    assert!(h.stored().await.is_empty());
    h.store.close().await;
}

#[tokio::test]
async fn outbound_exchanges_resume_after_restart_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let store = FileStore::open(tmp.path(), ident()).await.unwrap();
        let mut h = Harness::new(
            Session::new(SessionConfig::new().session_expiry_interval(HOUR)),
            store,
        );
        h.connect(false, None).await;
        drop(h.publish(msg(QoS::ExactlyOnce, "r/a", "a")).await);
        drop(h.publish(msg(QoS::AtLeastOnce, "r/b", "b")).await);
        let sent = h.sent_publishes();
        (a, b) = (sent[0].packet_id.unwrap(), sent[1].packet_id.unwrap());
        h.feed(PubRec::new(a)).await;
        h.store.close().await;
    }
    let store = FileStore::open(tmp.path(), ident()).await.unwrap();
    let session = Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
        .await
        .unwrap();
    let mut h = Harness::new(session, store);
    assert_eq!(h.session.unfinished(), 2);
    h.connect(true, None).await;
    let wire = h.take_wire();
    assert_eq!(wire[0], Packet::PubRel(PubRel::new(a)));
    let Packet::Publish(p) = &wire[1] else {
        panic!("{wire:?}")
    };
    assert_eq!((p.packet_id, p.dup, &*p.topic), (Some(b), true, "r/b"));
    // A new publish does not reuse an id the restored session holds.
    drop(h.publish(msg(QoS::AtLeastOnce, "r/c", "c")).await);
    let c = h.sent_publishes()[0].packet_id.unwrap();
    assert!(c != a && c != b);
    h.store.close().await;
}

#[tokio::test]
async fn corrupt_entries_are_quarantined_at_load_and_the_rest_resumes() {
    let store = MemoryStore::new();
    let mut good = bytes::BytesMut::new();
    Packet::Publish(Publish {
        packet_id: Some(pid(2)),
        ..msg(QoS::AtLeastOnce, "ok", "fine")
    })
    .encode(&mut good)
    .unwrap();
    store
        .put(
            Key::Outbound(pid(1)),
            EntryKind::Publish,
            Bytes::from_static(b"\x30\xFFgarbage"),
        )
        .await
        .unwrap();
    store
        .put(Key::Outbound(pid(2)), EntryKind::Publish, good.freeze())
        .await
        .unwrap();
    // Valid packet, wrong key: also unusable.
    store
        .put(Key::Inbound(pid(3)), EntryKind::PubRec, {
            let mut b = bytes::BytesMut::new();
            Packet::PubRec(PubRec::new(pid(4))).encode(&mut b).unwrap();
            b.freeze()
        })
        .await
        .unwrap();
    let session = Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
        .await
        .unwrap();
    let mut h = Harness::new(session, store);
    h.drive().await;
    let q = h.store.quarantined();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(
        h.stored().await,
        vec![(Key::Outbound(pid(2)), EntryKind::Publish)]
    );
    h.connect(true, None).await;
    let resent = h.sent_publishes();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].packet_id, Some(pid(2)));
}

#[tokio::test]
async fn corrupt_file_store_bytes_are_quarantined_and_the_session_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(tmp.path(), ident()).await.unwrap();
        let mut h = Harness::new(
            Session::new(SessionConfig::new().session_expiry_interval(HOUR)),
            store,
        );
        h.connect(false, None).await;
        for i in 0..3 {
            drop(
                h.publish(msg(
                    QoS::AtLeastOnce,
                    "c",
                    &format!("payload-{i}-{}", "x".repeat(40)),
                ))
                .await,
            );
        }
        h.store.close().await;
    }
    let log = tmp.path().join("log");
    let mut b = std::fs::read(&log).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&log, b).unwrap();
    let store = FileStore::open(tmp.path(), ident()).await.unwrap();
    assert_eq!(store.quarantined().len(), 1);
    let session = Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
        .await
        .unwrap();
    let mut h = Harness::new(session, store);
    h.connect(true, None).await;
    let payloads: Vec<Bytes> = h.sent_publishes().into_iter().map(|p| p.payload).collect();
    assert_eq!(payloads.len(), 2);
    assert!(payloads[0].starts_with(b"payload-0"));
    assert!(payloads[1].starts_with(b"payload-2"));
    h.store.close().await;
}

// ----- session expiry --------------------------------------------------------------------

#[tokio::test]
async fn expiry_elapsed_while_offline_starts_clean_and_fails_waiters() {
    let mut h = failing_harness(60);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::AtLeastOnce, "e", "x")).await;
    h.feed(incoming(QoS::ExactlyOnce, 5, "in")).await;
    h.drop_link().await;
    h.advance(Duration::from_secs(61));
    assert!(h.connect(false, None).await, "expired: clean start");
    assert!(matches!(done.await, Err(Error::SessionExpired { .. })));
    assert!(h.stored().await.is_empty());
    assert!(h.take_wire().is_empty(), "nothing resent");
    assert_eq!(h.session.inbound_pending(), 0);
}

#[tokio::test]
async fn expiry_not_yet_elapsed_keeps_the_session() {
    let mut h = memory_harness(60);
    h.connect(false, None).await;
    let _done = h.publish(msg(QoS::AtLeastOnce, "e", "x")).await;
    h.take_wire();
    h.drop_link().await;
    h.advance(Duration::from_secs(59));
    assert!(!h.connect(true, None).await);
    assert_eq!(h.sent_publishes().len(), 1);
}

#[tokio::test]
async fn expiry_interval_zero_clears_on_loss() {
    let mut h = failing_harness(0);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::AtLeastOnce, "e", "x")).await;
    h.drop_link().await;
    assert!(matches!(done.await, Err(Error::SessionExpired { .. })));
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn server_session_expiry_from_connack_wins() {
    let mut h = failing_harness(HOUR);
    let clean = h.session.begin_connect(false, h.now);
    assert!(!clean);
    let mut connack = ConnAck::default();
    connack.properties.session_expiry_interval = Some(10);
    h.session.on_connack(&connack, h.now).unwrap();
    let done = h.publish(msg(QoS::AtLeastOnce, "e", "x")).await;
    h.drop_link().await;
    h.advance(Duration::from_secs(11));
    assert!(h.connect(false, None).await);
    assert!(matches!(done.await, Err(Error::SessionExpired { .. })));
}

// ----- protocol checks -------------------------------------------------------------------

#[tokio::test]
async fn refused_connack_and_impossible_session_present_are_typed_errors() {
    let mut h = memory_harness(HOUR);
    h.session.begin_connect(false, h.now);
    let connack = ConnAck {
        reason_code: paho_packets::ConnectReasonCode::NotAuthorized,
        ..Default::default()
    };
    assert!(matches!(
        h.session.on_connack(&connack, h.now),
        Err(Error::ConnectionRefused { reason_code: 0x87 })
    ));
    assert!(!h.session.is_connected());
    h.session.begin_connect(true, h.now);
    let bogus = ConnAck {
        session_present: true,
        ..Default::default()
    };
    let e = h.session.on_connack(&bogus, h.now).unwrap_err();
    assert_eq!(e.reason_code(), Some(0x82));
}

#[tokio::test]
async fn failed_reconnect_attempts_do_not_restart_the_expiry_clock() {
    let mut h = failing_harness(60);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::AtLeastOnce, "e", "x")).await;
    h.drop_link().await;
    for _ in 0..2 {
        h.advance(Duration::from_secs(25));
        assert!(!h.session.begin_connect(false, h.now), "not expired yet");
        h.session.on_connection_lost(h.now); // the attempt failed before CONNACK
    }
    h.advance(Duration::from_secs(25));
    // 75 s after the link dropped: expired, even though the last attempt was just now.
    assert!(h.connect(false, None).await);
    assert!(matches!(done.await, Err(Error::SessionExpired { .. })));
}

#[tokio::test]
async fn pubrel_before_our_pubrec_is_a_protocol_error_and_inbound_count_tracks() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    h.feed(incoming(QoS::AtLeastOnce, 1, "a")).await;
    h.feed(incoming(QoS::ExactlyOnce, 2, "b")).await;
    assert_eq!(h.session.inbound_in_flight(), 2);
    let e = h
        .session
        .handle(PubRel::new(pid(2)).into(), h.now)
        .unwrap_err();
    assert_eq!(e.reason_code(), Some(0x82));
    for d in h.delivered.clone() {
        h.session.ack(d.ack_token().unwrap(), h.now).unwrap();
    }
    h.drive().await;
    assert_eq!(
        h.session.inbound_in_flight(),
        1,
        "QoS 2 counts until PUBREL"
    );
    h.feed(PubRel::new(pid(2))).await;
    assert_eq!(h.session.inbound_in_flight(), 0);
}

// ----- server limits ---------------------------------------------------------------------

async fn connect_with(h: &mut Harness<MemoryStore>, present: bool, f: impl FnOnce(&mut ConnAck)) {
    h.session.begin_connect(false, h.now);
    let mut connack = ConnAck {
        session_present: present,
        ..Default::default()
    };
    f(&mut connack);
    h.session.on_connack(&connack, h.now).unwrap();
    h.drive().await;
}

#[tokio::test]
async fn server_capabilities_are_checked_before_anything_is_stored() {
    let mut h = memory_harness(HOUR);
    connect_with(&mut h, false, |c| {
        c.properties.maximum_packet_size = Some(100);
        c.properties.maximum_qos = Some(QoS::AtLeastOnce);
        c.properties.retain_available = Some(false);
    })
    .await;
    let big = msg(QoS::AtLeastOnce, "t", &"x".repeat(200));
    assert!(matches!(
        h.session.publish(big, h.now),
        Err(Error::PacketTooLarge { max: 100, .. })
    ));
    let e = h
        .session
        .publish(msg(QoS::ExactlyOnce, "t", "x"), h.now)
        .unwrap_err();
    assert_eq!(e.reason_code(), Some(0x9B));
    let mut retained = msg(QoS::AtLeastOnce, "t", "x");
    retained.retain = true;
    let e = h.session.publish(retained, h.now).unwrap_err();
    assert_eq!(e.reason_code(), Some(0x9A));
    h.drive().await;
    assert!(h.stored().await.is_empty());
    assert!(h.take_wire().is_empty());
    assert_eq!(h.session.packet_ids_in_use(), 0);
}

#[tokio::test]
async fn stored_message_too_large_for_the_new_server_limit_is_discarded_in_order() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let small1 = h.publish(msg(QoS::AtLeastOnce, "t", "a")).await;
    let big = h
        .publish(msg(QoS::AtLeastOnce, "t", &"x".repeat(500)))
        .await;
    let small2 = h.publish(msg(QoS::AtLeastOnce, "t", "b")).await;
    h.take_wire();
    h.drop_link().await;
    connect_with(&mut h, true, |c| {
        c.properties.maximum_packet_size = Some(100)
    })
    .await;
    // MQTT v5 §3.1.2.24: discard without sending, as if sent.
    let resent: Vec<Bytes> = h.sent_publishes().into_iter().map(|p| p.payload).collect();
    assert_eq!(
        resent,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    assert!(matches!(big.await, Err(Error::PacketTooLarge { .. })));
    assert_eq!(h.stored().await.len(), 2);
    assert_eq!(h.session.packet_ids_in_use(), 2);
    drop((small1, small2));
}

// ----- review fixes ----------------------------------------------------------------------

#[tokio::test]
async fn a_second_connack_is_a_protocol_error_and_resends_nothing() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let _a = h.publish(msg(QoS::AtLeastOnce, "t", "a")).await;
    let _b = h.publish(msg(QoS::ExactlyOnce, "t", "b")).await;
    assert_eq!(h.sent_publishes().len(), 2);
    let again = ConnAck {
        session_present: true,
        ..Default::default()
    };
    let e = h.session.on_connack(&again, h.now).unwrap_err();
    assert_eq!(e.reason_code(), Some(0x82));
    h.drive().await;
    // Nothing went out twice on the link that already carries both, and the quota is intact.
    assert!(h.take_wire().is_empty());
    assert_eq!(h.session.in_flight(), 2);
}

#[tokio::test]
async fn pubcomp_0x92_after_a_resent_pubrel_counts_as_accepted() {
    // The server completed the exchange, but its PUBCOMP was lost with the connection; the
    // resent PUBREL then finds no packet id. The message was accepted at PUBREC.
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::ExactlyOnce, "t", "x")).await;
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.feed(PubRec::new(id)).await;
    h.take_wire();
    h.drop_link().await;
    h.connect(true, None).await;
    assert_eq!(h.take_wire(), vec![Packet::PubRel(PubRel::new(id))]);
    let mut comp = PubComp::new(id);
    comp.reason_code = PubCompReasonCode::PacketIdentifierNotFound;
    h.feed(comp).await;
    let outcome = done.await.unwrap();
    assert_eq!(outcome.reason_code(), 0x92);
    assert!(outcome.is_success());
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn inbound_qos2_not_acked_before_a_crash_is_delivered_again_after_restart() {
    // The application had the message but had not said it was done with it (no ack, so no
    // PUBREC) when the process died. The server still awaits PUBREC and resends it; the new
    // process must deliver it, or it is lost for the application.
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(tmp.path(), ident()).await.unwrap();
        let session =
            Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
                .await
                .unwrap();
        let mut h = Harness::new(session, store);
        h.connect(false, None).await;
        h.feed(incoming(QoS::ExactlyOnce, 21, "must arrive")).await;
        assert_eq!(h.delivered.len(), 1);
        assert!(h.take_wire().is_empty(), "no PUBREC before the ack");
        h.store.close().await; // killed before the application acked
    }
    let store = FileStore::open(tmp.path(), ident()).await.unwrap();
    let session = Session::restore_from(SessionConfig::new().session_expiry_interval(HOUR), &store)
        .await
        .unwrap();
    let mut h = Harness::new(session, store);
    assert_eq!(h.session.inbound_pending(), 0);
    h.connect(true, None).await;
    let mut dup = incoming(QoS::ExactlyOnce, 21, "must arrive");
    dup.dup = true;
    h.feed(dup).await;
    assert_eq!(
        h.delivered.len(),
        1,
        "the unacknowledged message is delivered"
    );
    // Once acked it is recorded (before PUBREC) and a further resend is not delivered again.
    h.session
        .ack(h.delivered[0].ack_token().unwrap(), h.now)
        .unwrap();
    h.drive().await;
    assert_eq!(
        h.stored().await,
        vec![(Key::Inbound(pid(21)), EntryKind::PubRec)]
    );
    assert_eq!(h.take_wire(), vec![Packet::PubRec(PubRec::new(pid(21)))]);
    h.store.close().await;
}

#[tokio::test]
async fn inbound_qos2_delivered_but_not_acked_when_the_link_drops_is_not_delivered_twice() {
    // Same process: the application has had the message when the link drops before its ack.
    // The server's resend is not delivered a second time; it is answered at once (marker
    // stored first), and does not hold later acks of the new connection behind an ack that
    // belongs to the old one.
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    h.feed(incoming(QoS::ExactlyOnce, 5, "once")).await;
    let first = h.delivered[0].ack_token().unwrap();
    assert!(h.stored().await.is_empty(), "nothing stored before the ack");
    h.drop_link().await;
    h.connect(true, None).await;
    let mut dup = incoming(QoS::ExactlyOnce, 5, "once");
    dup.dup = true;
    h.feed(dup).await;
    assert_eq!(h.delivered.len(), 1, "not delivered twice");
    assert_eq!(
        h.stored().await,
        vec![(Key::Inbound(pid(5)), EntryKind::PubRec)]
    );
    assert_eq!(h.take_wire(), vec![Packet::PubRec(PubRec::new(pid(5)))]);
    assert!(matches!(h.session.ack(first, h.now), Err(Error::StaleAck)));
    h.feed(incoming(QoS::AtLeastOnce, 6, "next")).await;
    h.session
        .ack(h.delivered[1].ack_token().unwrap(), h.now)
        .unwrap();
    h.drive().await;
    assert_eq!(h.take_wire(), vec![Packet::PubAck(PubAck::new(pid(6)))]);
    h.feed(PubRel::new(pid(5))).await;
    assert_eq!(h.take_wire(), vec![Packet::PubComp(PubComp::new(pid(5)))]);
    assert!(h.stored().await.is_empty());
}

// ----- the session-lost policy -----------------------------------------------------------

/// What the wire carried, as (payload or "PUBREL", dup).
fn wire_summary(wire: Vec<Packet>) -> Vec<(String, bool)> {
    wire.into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (String::from_utf8(p.payload.to_vec()).unwrap(), p.dup),
            Packet::PubRel(_) => ("PUBREL".to_owned(), false),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn session_present_0_republishes_every_unfinished_exchange_in_order_as_new() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(3)).await;
    let a = h.publish(msg(QoS::AtLeastOnce, "t", "a")).await; // awaits PUBACK
    let b = h.publish(msg(QoS::ExactlyOnce, "t", "b")).await; // awaits PUBREC
    let c = h.publish(msg(QoS::ExactlyOnce, "t", "c")).await; // will await PUBCOMP
    let d = h.publish(msg(QoS::AtLeastOnce, "t", "d")).await; // waits for quota
    let sent = h.sent_publishes();
    assert_eq!(sent.len(), 3);
    h.feed(PubRec::new(sent[2].packet_id.unwrap())).await;
    h.take_wire();
    // An inbound QoS 2 message the server will forget with its session.
    h.feed(incoming(QoS::ExactlyOnce, 7, "in")).await;
    h.session
        .ack(h.delivered[0].ack_token().unwrap(), h.now)
        .unwrap();
    h.drive().await;
    h.take_wire();
    h.drop_link().await;

    h.connect(false, Some(10)).await; // the server lost the session
    let wire = h.take_wire();
    assert_eq!(
        wire_summary(wire.clone()),
        vec![
            ("a".to_owned(), false),
            ("b".to_owned(), false),
            // At PUBREL before: the broker may never have released it, so it goes again.
            ("c".to_owned(), false),
            ("d".to_owned(), false),
        ]
    );
    // The PUBREL stage went back to "PUBLISH stored", so a crash now republishes it again.
    let kinds: Vec<EntryKind> = h.stored().await.into_iter().map(|(_, k)| k).collect();
    assert_eq!(kinds, vec![EntryKind::Publish; 4]);
    // The forgotten inbound marker is gone: the same id is a new message now.
    h.feed(incoming(QoS::ExactlyOnce, 7, "new")).await;
    assert_eq!(h.delivered.len(), 2);

    // The original handles finish with the new exchanges.
    for p in wire {
        let Packet::Publish(p) = p else {
            unreachable!()
        };
        let id = p.packet_id.unwrap();
        if p.qos == QoS::AtLeastOnce {
            h.feed(puback(id)).await;
        } else {
            h.feed(PubRec::new(id)).await;
            h.feed(PubComp::new(id)).await;
        }
    }
    for done in [a, b, c, d] {
        assert!(done.await.unwrap().is_success());
    }
    assert!(h.stored().await.is_empty());
}

#[tokio::test]
async fn a_restart_that_meets_session_present_0_republishes_what_was_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || SessionConfig::new().session_expiry_interval(HOUR);
    {
        let store = FileStore::open(tmp.path(), ident()).await.unwrap();
        let session = Session::restore_from(config(), &store).await.unwrap();
        let mut h = Harness::new(session, store);
        h.connect(false, None).await;
        drop(h.publish(msg(QoS::AtLeastOnce, "t", "one")).await);
        drop(h.publish(msg(QoS::ExactlyOnce, "t", "two")).await);
        drop(h.publish(msg(QoS::ExactlyOnce, "t", "three")).await);
        let sent = h.sent_publishes();
        h.feed(PubRec::new(sent[2].packet_id.unwrap())).await; // "three" at PUBREL
        h.store.close().await; // the process dies
    }
    let store = FileStore::open(tmp.path(), ident()).await.unwrap();
    let session = Session::restore_from(config(), &store).await.unwrap();
    let mut h = Harness::new(session, store);
    h.connect(false, None).await; // a broker without persistence: Session Present = 0
    assert_eq!(
        wire_summary(h.take_wire()),
        vec![
            ("one".to_owned(), false),
            ("two".to_owned(), false),
            ("three".to_owned(), false)
        ]
    );
    assert!(h.abandoned.is_empty());
    h.store.close().await;
}

#[tokio::test]
async fn under_fail_restored_exchanges_are_handed_to_the_application() {
    let store = MemoryStore::new();
    let fail = || {
        SessionConfig::new()
            .session_expiry_interval(HOUR)
            .on_session_lost(SessionLostPolicy::Fail)
    };
    let mut h = Harness::new(Session::new(fail()), store.clone());
    h.connect(false, None).await;
    drop(h.publish(msg(QoS::AtLeastOnce, "t", "one")).await);
    drop(h.publish(msg(QoS::ExactlyOnce, "t", "two")).await);
    let sent = h.sent_publishes();
    h.feed(PubRec::new(sent[1].packet_id.unwrap())).await; // "two" at PUBREL
    let restored = Session::restore(fail(), store.list().await.unwrap());
    let mut h = Harness::new(restored, store);
    h.connect(false, None).await; // Session Present = 0
    assert!(h.take_wire().is_empty(), "nothing republished under Fail");
    let back: Vec<(Bytes, Option<PacketId>)> = h
        .abandoned
        .iter()
        .map(|p| (p.payload.clone(), p.packet_id))
        .collect();
    assert_eq!(
        back,
        vec![
            (Bytes::from_static(b"one"), None),
            (Bytes::from_static(b"two"), None)
        ]
    );
    assert!(h.stored().await.is_empty());
    assert_eq!(h.session.packet_ids_in_use(), 0);
}

#[tokio::test]
async fn expiry_zero_under_republish_keeps_the_messages_for_the_next_connection() {
    let mut h = memory_harness(0);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::ExactlyOnce, "e", "x")).await;
    h.take_wire();
    h.drop_link().await; // the session ends with the link
    assert_eq!(h.stored().await.len(), 1, "still stored");
    assert!(h.connect(false, None).await, "a clean start");
    let sent = h.sent_publishes();
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].dup, "a new exchange on a new session");
    let id = sent[0].packet_id.unwrap();
    h.feed(PubRec::new(id)).await;
    h.feed(PubComp::new(id)).await;
    assert!(done.await.unwrap().is_success());
}

// ----- the two classes of error ------------------------------------------------------------

#[tokio::test]
async fn a_store_failure_tells_stored_exchanges_from_unstored_ones() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(2)).await;
    let stored = h.publish(msg(QoS::AtLeastOnce, "t", "stored")).await;
    h.take_wire();
    // The driver applies this one's Put, and the store answers with an error.
    let failed_put = h
        .session
        .publish(msg(QoS::ExactlyOnce, "t", "put failed"), h.now)
        .unwrap();
    let mut failed_id = None;
    while let Some(a) = h.session.poll_action() {
        if let Action::Store(paho_session::StoreOp::Put {
            key: Key::Outbound(id),
            ..
        }) = a
        {
            failed_id = Some(id);
        }
    }
    let waiting = h.publish(msg(QoS::AtLeastOnce, "t", "waiting")).await;
    h.session
        .on_store_failed(Error::StoreFailed, [failed_id.unwrap()]);
    let e = stored.await.unwrap_err();
    assert!(e.is_outcome_unknown(), "stored before: {e}");
    let e = failed_put.await.unwrap_err();
    assert!(!e.is_outcome_unknown(), "its put failed: {e}");
    assert!(matches!(e, Error::StoreFailed));
    let e = waiting.await.unwrap_err();
    assert!(!e.is_outcome_unknown(), "never stored: {e}");
}

#[tokio::test]
async fn an_exchange_of_an_earlier_connection_counts_as_stored_whatever_the_driver_says() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let done = h.publish(msg(QoS::AtLeastOnce, "t", "x")).await;
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.drop_link().await;
    h.connect(true, None).await; // resent: a new Put would not be its first
    h.session.on_store_failed(Error::StoreFailed, [id]);
    assert!(done.await.unwrap_err().is_outcome_unknown());
}

#[tokio::test]
async fn dropping_the_session_says_outcome_unknown_for_stored_and_closed_for_waiting() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(1)).await;
    let stored = h.publish(msg(QoS::AtLeastOnce, "t", "stored")).await;
    let waiting = h.publish(msg(QoS::AtLeastOnce, "t", "waiting")).await;
    drop(h);
    assert!(stored.await.unwrap_err().is_outcome_unknown());
    let e = waiting.await.unwrap_err();
    assert!(matches!(e, Error::SessionClosed), "{e}");
}

// ----- the stored stage -------------------------------------------------------------------

#[tokio::test]
async fn the_stored_stage_comes_after_the_put_and_waits_for_quota() {
    /// Polls once: the harness carries out store operations synchronously, so a stage that
    /// is reached is ready at once (and a missing signal fails instead of hanging).
    fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(1)).await;
    let mut first = h.publish(msg(QoS::AtLeastOnce, "t", "1")).await;
    let mut second = h.publish(msg(QoS::ExactlyOnce, "t", "2")).await;
    assert!(
        matches!(now(first.stored()), Some(Ok(()))),
        "stored: quota allowed it"
    );
    assert!(
        now(second.stored()).is_none(),
        "waits for quota: not stored yet"
    );
    assert!(first.try_outcome().is_none(), "stored is not acknowledged");
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.feed(puback(id)).await;
    assert!(matches!(now(second.stored()), Some(Ok(()))));
    assert!(now(first).unwrap().unwrap().is_success());
    // A QoS 0 message has no stored stage.
    let mut q0 = h.publish(msg(QoS::AtMostOnce, "t", "0")).await;
    assert!(matches!(now(q0.stored()), Some(Ok(()))));
    assert!(matches!(now(q0), Some(Ok(PublishOutcome::Sent))));
}

#[tokio::test]
async fn an_exchange_that_ends_before_it_is_stored_reports_its_error_at_both_stages() {
    let mut h = memory_harness(HOUR);
    h.connect(false, Some(1)).await;
    let _first = h.publish(msg(QoS::AtLeastOnce, "t", "1")).await;
    let mut waiting = h.publish(msg(QoS::AtLeastOnce, "t", "2")).await;
    drop(h); // the session goes while it still waits for quota
    let e = waiting.stored().await.unwrap_err();
    assert!(matches!(e, Error::SessionClosed), "{e}");
    let e = waiting.await.unwrap_err();
    assert!(
        matches!(e, Error::SessionClosed),
        "the outcome is kept: {e}"
    );
}

// ----- the handoff from an outgoing queue ---------------------------------------------------

#[tokio::test]
async fn a_queued_message_stays_on_record_until_its_queue_entry_is_released() {
    let store = MemoryStore::new();
    let config = || SessionConfig::new().session_expiry_interval(HOUR);
    let mut h = Harness::new(Session::new(config()), store.clone());
    h.connect(false, None).await;
    let now = h.now;
    let done = h
        .session
        .publish_with_origin(msg(QoS::AtLeastOnce, "q", "seven"), 7, now)
        .unwrap();
    h.drive().await;
    assert_eq!(h.session.held_origins(), vec![7]);
    // A crash now: the restarted session knows it holds queue entry 7.
    let restored = Session::restore(config(), store.list().await.unwrap());
    assert_eq!(restored.held_origins(), vec![7]);
    drop(restored);

    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.feed(puback(id)).await;
    assert!(done.await.unwrap().is_success());
    // Acknowledged, but the queue has not said the entry is gone: still on record.
    assert_eq!(h.session.unfinished(), 0);
    assert_eq!(h.session.held_origins(), vec![7]);
    assert_eq!(h.stored().await.len(), 1);
    let restored = Session::restore(config(), store.list().await.unwrap());
    assert_eq!(
        restored.held_origins(),
        vec![7],
        "a crash now must not resend entry 7"
    );
    drop(restored);

    h.session.release_origins_before(8);
    h.drive().await;
    assert!(h.session.held_origins().is_empty());
    assert!(h.stored().await.is_empty());
    assert_eq!(h.session.packet_ids_in_use(), 0);

    // Released before it finishes: deleted as usual when it does.
    let done = h
        .session
        .publish_with_origin(msg(QoS::ExactlyOnce, "q", "nine"), 9, now)
        .unwrap();
    h.drive().await;
    h.session.release_origins_before(10);
    let id = h.sent_publishes()[0].packet_id.unwrap();
    h.feed(PubRec::new(id)).await;
    // The PUBREL stage keeps the origin with the message.
    let restored = Session::restore(config(), store.list().await.unwrap());
    assert_eq!(restored.held_origins(), vec![9]);
    drop(restored);
    h.take_wire();
    h.feed(PubComp::new(id)).await;
    assert!(done.await.unwrap().is_success());
    assert!(h.stored().await.is_empty());
    assert!(h.session.held_origins().is_empty());
}

#[tokio::test]
async fn a_stored_value_with_a_garbled_origin_trailer_is_quarantined() {
    let store = MemoryStore::new();
    let mut h = Harness::new(Session::new(SessionConfig::new()), store.clone());
    h.connect(false, None).await;
    let now = h.now;
    drop(
        h.session
            .publish_with_origin(msg(QoS::AtLeastOnce, "q", "x"), 3, now)
            .unwrap(),
    );
    h.drive().await;
    let entry = store.list().await.unwrap().remove(0);
    let mut bad = entry.value().to_vec();
    bad.push(0); // 17 bytes after the packet: not a trailer
    let other = MemoryStore::new();
    other
        .put(entry.key(), entry.kind(), Bytes::from(bad))
        .await
        .unwrap();
    let mut s = Session::restore(SessionConfig::new(), other.list().await.unwrap());
    assert_eq!(s.unfinished(), 0);
    assert!(matches!(
        s.poll_action(),
        Some(Action::Store(paho_session::StoreOp::Quarantine { .. }))
    ));
}

// ----- message expiry ------------------------------------------------------------------------

fn expiring(qos: QoS, payload: &str, secs: u32) -> Publish {
    let mut p = msg(qos, "x", payload);
    p.properties.message_expiry_interval = Some(secs);
    p
}

#[tokio::test]
async fn a_message_that_expires_while_it_waits_is_never_sent_and_the_others_go_with_what_is_left() {
    let mut h = memory_harness(HOUR);
    let now = h.now;
    // Accepted while offline: they wait in the queue of publishes.
    let gone = h
        .session
        .publish(expiring(QoS::AtLeastOnce, "gone", 10), now)
        .unwrap();
    let kept = h
        .session
        .publish(expiring(QoS::ExactlyOnce, "kept", 100), now)
        .unwrap();
    let plain = h
        .session
        .publish(msg(QoS::AtLeastOnce, "x", "plain"), now)
        .unwrap();
    h.advance(Duration::from_secs(15));
    h.connect(false, None).await;
    let sent = h.sent_publishes();
    let summary: Vec<(Bytes, Option<u32>)> = sent
        .iter()
        .map(|p| (p.payload.clone(), p.properties.message_expiry_interval))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Bytes::from_static(b"kept"), Some(85)),
            (Bytes::from_static(b"plain"), None)
        ]
    );
    assert!(matches!(gone.await, Err(Error::MessageExpired)));
    // The store keeps the interval as accepted; each send says what is left of it.
    let stored = h.store.list().await.unwrap();
    let Packet::Publish(p) = Packet::decode_exact(stored[0].value().clone()).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.message_expiry_interval, Some(100));
    drop((kept, plain));
}

#[tokio::test]
async fn after_a_long_outage_an_expired_qos1_is_dropped_and_an_expired_qos2_goes_with_1s() {
    let mut h = memory_harness(HOUR);
    h.connect(false, None).await;
    let q1 = h.publish(expiring(QoS::AtLeastOnce, "one", 30)).await;
    let _q2 = h.publish(expiring(QoS::ExactlyOnce, "two", 30)).await;
    let _fresh = h.publish(expiring(QoS::AtLeastOnce, "fresh", 300)).await;
    h.take_wire();
    h.drop_link().await;
    h.advance(Duration::from_secs(40));
    h.connect(true, None).await;
    let resent: Vec<(Bytes, Option<u32>, bool)> = h
        .sent_publishes()
        .iter()
        .map(|p| {
            (
                p.payload.clone(),
                p.properties.message_expiry_interval,
                p.dup,
            )
        })
        .collect();
    assert_eq!(
        resent,
        vec![
            // The server may hold it under its packet id: resent, with the least interval.
            (Bytes::from_static(b"two"), Some(1), true),
            (Bytes::from_static(b"fresh"), Some(260), true),
        ]
    );
    assert!(matches!(q1.await, Err(Error::MessageExpired)));
    assert_eq!(h.stored().await.len(), 2, "the expired QoS 1 entry is gone");
}
