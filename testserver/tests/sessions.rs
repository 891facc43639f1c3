//! Persistent sessions, resend, takeover, wills, flow control towards the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use paho_packets::{
    Connect, ConnectProperties, Disconnect, DisconnectReasonCode, Packet, PacketType, QoS, Will,
    WillProperties,
};
use paho_testserver::raw::{publish, RawClient};
use paho_testserver::{CloseReason, EventKind, FlowControl, TestServer};

#[tokio::test]
async fn unacked_deliveries_are_resent_with_dup_and_pubrel_after_reconnect() {
    let server = TestServer::start().await.unwrap();
    let (mut s, present) = persistent(&server, "s", None).await;
    assert!(!present);
    sub(&mut s, "t", QoS::ExactlyOnce).await;
    let mut p = client(&server, "p").await;
    p.send(publish("t", "q1", QoS::AtLeastOnce, 1))
        .await
        .unwrap();
    p.send(publish("t", "q2", QoS::ExactlyOnce, 2))
        .await
        .unwrap();
    let m1 = s.expect_publish().await.unwrap();
    let m2 = s.expect_publish().await.unwrap();
    // Acknowledge only the first step of the QoS 2 delivery, then lose the link.
    pubrec(&mut s, m2.packet_id.unwrap()).await;
    assert!(matches!(s.expect().await.unwrap(), Packet::PubRel(_)));
    drop(s);
    server.wait_connection_count(1).await;
    assert!(server.has_session("s"));

    let (mut s, present) = persistent(&server, "s", None).await;
    assert!(present);
    let again = s.expect_publish().await.unwrap();
    assert!(again.dup, "a resent PUBLISH has DUP set");
    assert_eq!(again.packet_id, m1.packet_id);
    assert_eq!(&again.payload[..], b"q1");
    match s.expect().await.unwrap() {
        Packet::PubRel(r) => assert_eq!(r.packet_id, m2.packet_id.unwrap()),
        other => panic!("expected the PUBREL resent, got {other:?}"),
    }
    puback(&mut s, m1.packet_id.unwrap()).await;
    pubcomp(&mut s, m2.packet_id.unwrap()).await;
    server
        .wait_for_count(2, |e| {
            e.received().is_some_and(|p| {
                p.packet_type() == PacketType::PubComp || p.packet_type() == PacketType::PubAck
            }) && e.client_id.as_deref() == Some("s")
        })
        .await;
    assert_eq!(server.outbound("s"), Some((0, 0)));
}

#[tokio::test]
async fn messages_queue_while_offline_and_clean_start_discards() {
    let server = TestServer::start().await.unwrap();
    let (mut s, _) = persistent(&server, "s", None).await;
    sub(&mut s, "t", QoS::AtLeastOnce).await;
    s.send(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        .await
        .unwrap();
    server.wait_connection_count(0).await;
    let mut p = client(&server, "p").await;
    p.send(publish("t", "q0 is dropped offline", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    p.send(publish("t", "kept", QoS::AtLeastOnce, 1))
        .await
        .unwrap();
    p.expect().await.unwrap();
    assert_eq!(server.outbound("s"), Some((0, 1)));
    let (mut s, present) = persistent(&server, "s", None).await;
    assert!(present);
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"kept");
    drop(s);
    server.wait_connection_count(1).await;
    let mut fresh = RawClient::new(server.connect_duplex());
    let ack = fresh.connect("s").await.unwrap();
    assert!(!ack.session_present, "clean start discards the session");
    assert!(server.subscriptions("s").is_empty());
}

#[tokio::test]
async fn session_expiry_zero_ends_the_session_with_the_connection() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    sub(&mut c, "t", QoS::AtLeastOnce).await;
    drop(c);
    server.wait_connection_count(0).await;
    assert!(!server.has_session("c"));
}

#[tokio::test(start_paused = true)]
async fn session_expires_after_its_interval() {
    let server = TestServer::start().await.unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    c.connect_persistent("c", 30).await.unwrap();
    drop(c);
    server.wait_connection_count(0).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(server.has_session("c"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!server.has_session("c"));
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let server = TestServer::start().await.unwrap();
    let (mut first, _) = persistent(&server, "dup", None).await;
    let (_second, present) = persistent(&server, "dup", None).await;
    assert!(present);
    match first.expect().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, DisconnectReasonCode::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    assert_eq!(first.recv().await.unwrap(), None);
    server.wait_connection_count(1).await;
}

fn will_connect(id: &str, delay: Option<u32>, expiry: u32) -> Connect {
    Connect {
        clean_start: true,
        client_id: id.into(),
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
        will: Some(Will {
            topic: "wills/x".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties {
                will_delay_interval: delay,
                user_properties: vec![("why".into(), "test".into())],
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn will_is_sent_on_abnormal_close_only() {
    let server = TestServer::start().await.unwrap();
    let mut watcher = client(&server, "w").await;
    sub(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let mut polite = RawClient::new(server.connect_duplex());
    polite
        .connect_with(will_connect("polite", None, 0))
        .await
        .unwrap();
    polite
        .send(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        .await
        .unwrap();

    let mut rude = RawClient::new(server.connect_duplex());
    rude.connect_with(will_connect("rude", None, 0))
        .await
        .unwrap();
    drop(rude);

    let mut asks = RawClient::new(server.connect_duplex());
    asks.connect_with(will_connect("asks", None, 0))
        .await
        .unwrap();
    asks.send(Disconnect::new(
        DisconnectReasonCode::DisconnectWithWillMessage,
    ))
    .await
    .unwrap();

    server.wait_connection_count(1).await;
    let a = watcher.expect_publish().await.unwrap();
    let b = watcher.expect_publish().await.unwrap();
    assert_eq!(&a.payload[..], b"gone");
    assert_eq!(
        a.properties.user_properties,
        vec![("why".into(), "test".into())]
    );
    assert_eq!(&b.payload[..], b"gone");
    // Exactly two wills (rude, asks); the polite client's was discarded.
    let wills = server
        .sent()
        .into_iter()
        .filter(|p| matches!(p, Packet::Publish(p) if p.topic == "wills/x"))
        .count();
    assert_eq!(wills, 2);
}

#[tokio::test(start_paused = true)]
async fn will_delay_waits_and_a_reconnect_cancels_it() {
    let server = TestServer::start().await.unwrap();
    let mut watcher = client(&server, "w").await;
    sub(&mut watcher, "wills/#", QoS::AtMostOnce).await;

    let mut c = RawClient::new(server.connect_duplex());
    c.connect_with(will_connect("late", Some(10), 100))
        .await
        .unwrap();
    drop(c);
    server.wait_connection_count(1).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let none_yet = server
        .sent()
        .iter()
        .any(|p| matches!(p, Packet::Publish(p) if p.topic == "wills/x"));
    assert!(!none_yet, "not before the delay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        &watcher.expect_publish().await.unwrap().payload[..],
        b"gone"
    );

    // Reconnecting within the delay cancels the will.
    let mut c = RawClient::new(server.connect_duplex());
    let mut connect = will_connect("back", Some(10), 100);
    c.connect_with(connect.clone()).await.unwrap();
    drop(c);
    server.wait_connection_count(1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    connect.clean_start = false;
    connect.will = None;
    let mut c = RawClient::new(server.connect_duplex());
    c.connect_with(connect).await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let wills = server
        .sent()
        .into_iter()
        .filter(|p| matches!(p, Packet::Publish(p) if p.topic == "wills/x"))
        .count();
    assert_eq!(wills, 1, "only the first client's will");
}

/// Counts PUBLISHes the server sent to client `id` minus those it got PUBCOMP/PUBACK for
/// is what flow control bounds; here the subscriber never acks, so the count of sends is it.
async fn deliveries_before_ack(flow: FlowControl, qos: QoS, ack_pubrec: bool) -> usize {
    let server = TestServer::builder()
        .flow_control(flow)
        .start()
        .await
        .unwrap();
    let (mut s, _) = persistent(&server, "s", Some(2)).await;
    sub(&mut s, "t", qos).await;
    let mut p = client(&server, "p").await;
    for i in 0..6 {
        p.send(publish("t", format!("{i}"), qos, i + 1))
            .await
            .unwrap();
        p.expect().await.unwrap();
    }
    let mut seen = 0;
    // Read what is sent, PUBREC-ing QoS 2 ones if asked, until nothing more comes.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(1), s.expect()).await;
        match next {
            Ok(Ok(Packet::Publish(m))) => {
                seen += 1;
                if ack_pubrec {
                    pubrec(&mut s, m.packet_id.unwrap()).await;
                }
            }
            Ok(Ok(Packet::PubRel(_))) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn receive_maximum_is_honoured_or_overshot_on_purpose() {
    assert_eq!(
        deliveries_before_ack(FlowControl::Honour, QoS::AtLeastOnce, false).await,
        2
    );
    assert_eq!(
        deliveries_before_ack(FlowControl::Honour, QoS::ExactlyOnce, true).await,
        2
    );
    // mosquitto's quirk: PUBREC frees the slot, so all six go out before any PUBCOMP.
    assert_eq!(
        deliveries_before_ack(FlowControl::ReleaseAtPubRec, QoS::ExactlyOnce, true).await,
        6
    );
    assert_eq!(
        deliveries_before_ack(FlowControl::Ignore, QoS::AtLeastOnce, false).await,
        6
    );
}

#[tokio::test(start_paused = true)]
async fn acks_release_queued_deliveries_in_order() {
    let server = TestServer::start().await.unwrap();
    let (mut s, _) = persistent(&server, "s", Some(1)).await;
    sub(&mut s, "t", QoS::AtLeastOnce).await;
    let mut p = client(&server, "p").await;
    for i in 0..5u16 {
        p.send(publish("t", format!("{i}"), QoS::AtLeastOnce, i + 1))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let m = s.expect_publish().await.unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
        assert_eq!(server.outbound("s").unwrap().0, 1);
        puback(&mut s, m.packet_id.unwrap()).await;
    }
    let closed = server
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::Closed(CloseReason::ServerDisconnect(_))));
    assert!(!closed);
}

#[tokio::test]
async fn a_discarded_session_is_not_present() {
    let server = TestServer::start().await.unwrap();
    let (c, _) = persistent(&server, "gone", None).await;
    assert!(!server.discard_session("gone"), "not while connected");
    drop(c);
    server.wait_connection_count(0).await;
    assert!(server.discard_session("gone"));
    let (_c, present) = persistent(&server, "gone", None).await;
    assert!(!present);
}

#[tokio::test]
async fn shared_subscription_prefers_online_members() {
    let server = TestServer::start().await.unwrap();
    let (mut away, _) = persistent(&server, "away", None).await;
    sub(&mut away, "$share/g/t", QoS::AtLeastOnce).await;
    drop(away);
    server.wait_connection_count(0).await;
    let mut here = client(&server, "here").await;
    sub(&mut here, "$share/g/t", QoS::AtLeastOnce).await;
    let mut p = client(&server, "p").await;
    for i in 0..4u16 {
        p.send(publish("t", format!("{i}"), QoS::AtLeastOnce, i + 1))
            .await
            .unwrap();
        p.expect().await.unwrap();
    }
    for i in 0..4 {
        let m = here.expect_publish().await.unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
        puback(&mut here, m.packet_id.unwrap()).await;
    }
    assert_eq!(
        server.outbound("away"),
        Some((0, 0)),
        "nothing queued for the offline member"
    );
}

#[tokio::test]
async fn a_failed_pubrec_ends_the_qos2_delivery() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "t", QoS::ExactlyOnce).await;
    let mut p = client(&server, "p").await;
    p.send(publish("t", "x", QoS::ExactlyOnce, 1))
        .await
        .unwrap();
    let m = s.expect_publish().await.unwrap();
    let mut rec = paho_packets::PubRec::new(m.packet_id.unwrap());
    rec.reason_code = paho_packets::PubRecReasonCode::QuotaExceeded;
    s.send(rec).await.unwrap();
    s.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        s.expect().await.unwrap(),
        Packet::PingResp,
        "no PUBREL after a failure PUBREC"
    );
    assert_eq!(server.outbound("s"), Some((0, 0)));
}

#[tokio::test]
async fn a_resend_larger_than_the_new_connections_maximum_packet_size_is_discarded() {
    let server = TestServer::start().await.unwrap();
    let (mut s, _) = persistent(&server, "s", None).await;
    sub(&mut s, "t", QoS::AtLeastOnce).await;
    server.publish(publish("t", vec![b'x'; 200], QoS::AtLeastOnce, 0));
    let first = s.expect_publish().await.unwrap();
    assert_eq!(first.payload.len(), 200);
    drop(s); // not acknowledged
    server.wait_connection_count(0).await;
    assert_eq!(server.outbound("s"), Some((1, 0)));

    // Back with a Maximum Packet Size the unacknowledged delivery does not fit.
    let mut s = RawClient::new(server.connect_duplex());
    let ack = s
        .connect_with(Connect {
            clean_start: false,
            client_id: "s".into(),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                maximum_packet_size: Some(100),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ack.session_present);
    server.publish(publish("t", "small", QoS::AtLeastOnce, 0));
    let next = s.expect_publish().await.unwrap();
    assert_eq!(
        &next.payload[..],
        b"small",
        "the oversize resend was discarded, not sent"
    );
    assert!(!next.dup);
    assert_eq!(
        server.outbound("s"),
        Some((1, 0)),
        "only the new one in flight"
    );
    server.shutdown().await;
}

/// A delayed will waits for its delay or the end of its session, whichever comes first; a
/// new connection with Clean Start ends the session, so the will goes out then, as it does when
/// the old session had Session Expiry 0 (a reconnect that keeps a lasting session cancels it
/// instead: see above).
#[tokio::test(start_paused = true)]
async fn clean_start_on_the_same_client_id_sends_a_delayed_will_at_once() {
    let server = TestServer::start().await.unwrap();
    let mut watcher = client(&server, "w").await;
    sub(&mut watcher, "wills/#", QoS::AtMostOnce).await;

    // Taken over while connected.
    let mut old = RawClient::new(server.connect_duplex());
    old.connect_with(will_connect("t", Some(30), 100))
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut new = client(&server, "t").await;
    match old.expect().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, DisconnectReasonCode::SessionTakenOver),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        &watcher.expect_publish().await.unwrap().payload[..],
        b"gone"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "not after the delay");
    new.send(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
        .await
        .unwrap();

    // Gone, with its will waiting for the delay, when the clean start comes.
    let mut gone = RawClient::new(server.connect_duplex());
    gone.connect_with(will_connect("g", Some(30), 100))
        .await
        .unwrap();
    drop(gone);
    server.wait_connection_count(1).await; // the watcher only
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = tokio::time::Instant::now();
    let _back = client(&server, "g").await;
    assert_eq!(
        &watcher.expect_publish().await.unwrap().payload[..],
        b"gone"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "not after the delay");

    // Taken over without Clean Start, but the old session was to end with its connection
    // (Session Expiry 0).
    let mut old = RawClient::new(server.connect_duplex());
    old.connect_with(will_connect("z", Some(30), 0))
        .await
        .unwrap();
    let mut again = will_connect("z", None, 0);
    again.clean_start = false;
    again.will = None;
    let mut new = RawClient::new(server.connect_duplex());
    new.connect_with(again).await.unwrap();
    assert!(matches!(old.expect().await.unwrap(), Packet::Disconnect(_)));
    assert_eq!(
        &watcher.expect_publish().await.unwrap().payload[..],
        b"gone"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "not after the delay");
    server.shutdown().await;
}
