//! The two stages of a QoS 1/2 publish: durable in the session store (what a durable outbox
//! waits for before it drops its copy), then acknowledged by the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::stores::Flaky;
use common::*;
use paho::packets::{ConnAck, QoS};
use paho::session::{PublishOutcome, Session, SessionConfig, Store};
use paho::{Client, SessionHandle};

#[tokio::test(start_paused = true)]
async fn stored_waits_for_the_store_write_and_not_for_the_ack() {
    within(LIMIT, async {
        let store = Flaky::default();
        let session = SessionHandle::new(Session::new(SessionConfig::new()), store.clone());
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            let mut ack = ConnAck::default();
            ack.properties.receive_maximum = Some(1);
            peer.accept(ack).await;
            peer
        });
        let (client, _incoming) = Client::connect(io, options().build().unwrap(), session)
            .await
            .unwrap();
        let mut peer = server.await.unwrap();
        store.hold_puts();
        let mut first = client.start_publish(publish("t", QoS::AtLeastOnce, "1"));
        let mut second = client.start_publish(publish("t", QoS::ExactlyOnce, "2"));
        // The store has not finished the write: not stored yet, and nothing on the wire.
        let r = tokio::time::timeout(Duration::from_secs(5), first.stored()).await;
        assert!(r.is_err(), "stored before the store write finished");
        store.release(1);
        first.stored().await.unwrap();
        let p = peer.expect_publish().await;
        // The second waits for quota (Receive Maximum 1): not even handed to the store.
        let r = tokio::time::timeout(Duration::from_secs(5), second.stored()).await;
        assert!(r.is_err(), "stored while waiting for quota");
        store.release(1);
        peer.puback(p.packet_id.unwrap()).await;
        assert!(first.await.unwrap().is_success());
        second.stored().await.unwrap();
        // QoS 0 has no stored stage and still resolves as sent.
        let mut q0 = client.start_publish(publish("t", QoS::AtMostOnce, "0"));
        q0.stored().await.unwrap();
        assert!(matches!(q0.await, Ok(PublishOutcome::Sent)));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_message_from_a_queue_stays_on_record_until_released() {
    within(LIMIT, async {
        let store = Flaky::default();
        let session = SessionHandle::new(Session::new(SessionConfig::new()), store.clone());
        assert_eq!(session.held_origins(), Some(vec![]));
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let (client, _incoming) = Client::connect(io, options().build().unwrap(), session.clone())
            .await
            .unwrap();
        let mut peer = server.await.unwrap();
        let mut h = client.start_publish_with_origin(publish("q", QoS::AtLeastOnce, "41"), 41);
        h.stored().await.unwrap();
        assert_eq!(session.held_origins(), None, "busy while connected");
        let p = peer.expect_publish().await;
        peer.puback(p.packet_id.unwrap()).await;
        assert!(h.await.unwrap().is_success());
        // Acknowledged, but the queue entry is not released: its record stays in the store.
        assert_eq!(store.inner.list().await.unwrap().len(), 1);
        client.release_origins_before(42);
        client.disconnect_normally().await.unwrap();
        assert!(store.inner.list().await.unwrap().is_empty());
        assert_eq!(session.held_origins(), Some(vec![]));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_session_counters_are_readable_while_connected() {
    within(LIMIT, async {
        let session = SessionHandle::new(Session::new(SessionConfig::new()), Flaky::default());
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            let mut ack = ConnAck::default();
            ack.properties.receive_maximum = Some(1);
            peer.accept(ack).await;
            peer
        });
        let (client, _incoming) = Client::connect(io, options().build().unwrap(), session)
            .await
            .unwrap();
        let mut peer = server.await.unwrap();
        let _a = client.start_publish(publish("t", QoS::AtLeastOnce, "a"));
        let _b = client.start_publish(publish("t", QoS::AtLeastOnce, "b"));
        let p = peer.expect_publish().await;
        let s = client.session_stats();
        assert_eq!((s.unfinished, s.waiting), (1, 1));
        peer.puback(p.packet_id.unwrap()).await;
        let p = peer.expect_publish().await;
        peer.puback(p.packet_id.unwrap()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = client.session_stats();
        assert_eq!((s.unfinished, s.waiting), (0, 0));
    })
    .await
}
