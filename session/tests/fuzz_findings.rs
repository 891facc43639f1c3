//! Regression tests for what the fuzz targets (`fuzz/`, see docs/RELIABILITY.md, Fuzzing)
//! found in the session engine and the file store, one test per finding, each reduced to the
//! few steps that show it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::num::NonZeroU16;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use paho_packets::{ConnAck, Packet, PubComp, PubRec, Publish, QoS};
use paho_session::{Action, Error, MemoryStore, Session, SessionConfig, Store};

fn now_ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("memory store future not ready"),
    }
}

fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

/// Carries out the actions (store first, in order) and returns what was sent.
fn drive(session: &mut Session, store: &MemoryStore) -> Vec<Packet> {
    let mut sent = Vec::new();
    while let Some(a) = session.poll_action() {
        match a {
            Action::Store(op) => now_ready(op.apply(store)).unwrap(),
            Action::Send(p) => sent.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    sent
}

fn connect(session: &mut Session, present: bool, receive_max: u16, now: Instant) {
    session.begin_connect(false, now);
    let mut connack = ConnAck {
        session_present: present,
        ..Default::default()
    };
    connack.properties.receive_maximum = Some(receive_max);
    session.on_connack(&connack, now).unwrap();
}

/// Found by the `session` target (send quota): after a reconnect with a smaller Receive
/// Maximum, a PUBREC for a QoS 2 message that the quota held back (not resent on this
/// connection) was taken: the engine sent PUBREL outside the quota, so more than Receive
/// Maximum exchanges were unacknowledged, and the server, which never had the message in this
/// connection, would answer PUBCOMP 0x92, taken as success. Now it is a protocol error and the
/// message stays unfinished, to be resent.
#[test]
fn pubrec_for_a_publish_held_back_by_the_quota_is_a_protocol_error() {
    let store = MemoryStore::new();
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new().session_expiry_interval(u32::MAX));
    connect(&mut s, false, 10, now);
    let mut handles = Vec::new();
    for i in 0..2 {
        let p = Publish {
            qos: QoS::ExactlyOnce,
            topic: "t".into(),
            payload: Bytes::from(format!("m{i}")),
            ..Default::default()
        };
        handles.push(s.publish(p, now).unwrap());
    }
    assert_eq!(drive(&mut s, &store).len(), 2);
    s.on_connection_lost(now);
    drive(&mut s, &store);
    // Receive Maximum 1: message 1 is resent, message 2 held back.
    connect(&mut s, true, 1, now);
    let sent = drive(&mut s, &store);
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == Some(pid(1)) && p.dup));
    assert_eq!(s.in_flight(), 1);

    let r = s.handle(Packet::PubRec(PubRec::new(pid(2))), now);
    assert!(
        matches!(
            r,
            Err(Error::Protocol {
                reason_code: 0x82,
                ..
            })
        ),
        "PUBREC for a message not sent on this connection taken: {r:?}"
    );
    let sent = drive(&mut s, &store);
    assert!(sent.is_empty(), "answered with {sent:?}");
    assert_eq!(s.in_flight(), 1, "quota");
    let entries = now_ready(store.list()).unwrap();
    assert!(
        entries
            .iter()
            .all(|e| e.kind() == paho_session::EntryKind::Publish),
        "the held-back message moved on to the PUBREL stage"
    );

    // The driver disconnects; on the next connection both finish normally.
    s.on_connection_lost(now);
    drive(&mut s, &store);
    connect(&mut s, true, 10, now);
    let sent = drive(&mut s, &store);
    assert_eq!(sent.len(), 2);
    for id in [1, 2] {
        s.handle(Packet::PubRec(PubRec::new(pid(id))), now).unwrap();
        drive(&mut s, &store);
        s.handle(Packet::PubComp(PubComp::new(pid(id))), now)
            .unwrap();
        drive(&mut s, &store);
    }
    for mut h in handles {
        assert!(h.try_outcome().unwrap().unwrap().is_success());
    }
    assert_eq!(s.unfinished(), 0);
}
