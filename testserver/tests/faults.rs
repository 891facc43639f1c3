//! Scripted faults: triggers with each timing, withheld acks, DISCONNECT, raw bytes,
//! half-open silence; observability and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use paho_packets::{DisconnectReasonCode, Packet, PacketType, QoS};
use paho_testserver::raw::{publish, RawClient};
use paho_testserver::{CloseReason, EventKind, Fault, Target, TestServer, Trigger, When};

#[tokio::test]
async fn drop_before_processing_loses_the_packet() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "t", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    server
        .faults()
        .drop_on(PacketType::Publish, 2, When::BeforeProcessing);
    p.send(publish("t", "1", QoS::AtLeastOnce, 1))
        .await
        .unwrap();
    p.expect().await.unwrap();
    p.send(publish("t", "2", QoS::AtLeastOnce, 2))
        .await
        .unwrap();
    assert_eq!(p.recv().await.unwrap(), None, "dropped without DISCONNECT");
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"1");
    s.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        s.expect().await.unwrap(),
        Packet::PingResp,
        "message 2 was never routed"
    );
    assert_eq!(server.faults().armed(), 0, "triggers fire once");
    let closed = server
        .wait_for(|e| e.kind == EventKind::Closed(CloseReason::Dropped))
        .await;
    assert_eq!(closed.client_id.as_deref(), Some("p"));
}

#[tokio::test]
async fn drop_after_processing_routes_but_loses_the_ack() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "t", QoS::AtMostOnce).await;
    let (mut p, _) = persistent(&server, "p", None).await;
    server.faults().on(
        Trigger::nth(PacketType::Publish, 1)
            .when(When::AfterProcessing)
            .from_client("p"),
        Fault::Drop,
    );
    p.send(publish("t", "x", QoS::ExactlyOnce, 1))
        .await
        .unwrap();
    assert_eq!(p.recv().await.unwrap(), None, "no PUBREC before the drop");
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"x");
    // The client resends on the same session: acknowledged, not routed again.
    let (mut p, present) = persistent(&server, "p", None).await;
    assert!(present);
    let mut dup = publish("t", "x", QoS::ExactlyOnce, 1);
    dup.dup = true;
    p.send(dup).await.unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(_)));
    pubrel(&mut p, pid(1)).await;
    assert!(matches!(p.expect().await.unwrap(), Packet::PubComp(c) if c.reason_code.as_u8() == 0));
    s.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        s.expect().await.unwrap(),
        Packet::PingResp,
        "no duplicate delivery"
    );
}

#[tokio::test]
async fn drop_after_reply_flushes_the_reply_first() {
    let server = TestServer::start().await.unwrap();
    server
        .faults()
        .drop_on(PacketType::Subscribe, 1, When::AfterReply);
    let mut c = client(&server, "c").await;
    c.send(paho_packets::Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![paho_packets::Subscription::new("t", Default::default())],
    })
    .await
    .unwrap();
    assert!(matches!(c.expect().await.unwrap(), Packet::SubAck(_)));
    assert_eq!(c.recv().await.unwrap(), None);
}

#[tokio::test]
async fn trigger_on_connect_can_refuse_silently() {
    let server = TestServer::start().await.unwrap();
    server
        .faults()
        .drop_on(PacketType::Connect, 1, When::AfterProcessing);
    let mut c = RawClient::new(server.connect_duplex());
    c.send(paho_packets::Packet::from(paho_packets::Connect {
        client_id: "c".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(c.recv().await.unwrap(), None, "CONNACK lost");
    // The next connection works.
    client(&server, "c").await;
}

#[tokio::test]
async fn withheld_acks_are_released_in_order() {
    let server = TestServer::start().await.unwrap();
    let mut p = client(&server, "p").await;
    server.faults().withhold_acks();
    p.send(publish("t", "1", QoS::AtLeastOnce, 1))
        .await
        .unwrap();
    p.send(publish("t", "2", QoS::ExactlyOnce, 2))
        .await
        .unwrap();
    p.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        p.expect().await.unwrap(),
        Packet::PingResp,
        "other packets still flow"
    );
    server.faults().release();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubAck(a) if a.packet_id == pid(1)));
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(r) if r.packet_id == pid(2)));
    // Withholding one type only.
    server.faults().withhold(&[PacketType::PingResp]);
    p.send(Packet::PingReq).await.unwrap();
    p.send(publish("t", "3", QoS::AtLeastOnce, 3))
        .await
        .unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubAck(_)));
    server.faults().clear();
    assert_eq!(p.expect().await.unwrap(), Packet::PingResp);
}

#[tokio::test]
async fn disconnect_with_a_chosen_reason() {
    let server = TestServer::start().await.unwrap();
    let mut a = client(&server, "a").await;
    let mut b = client(&server, "b").await;
    let n = server.faults().apply(
        Target::Client("a".into()),
        Fault::Disconnect(DisconnectReasonCode::AdministrativeAction),
    );
    assert_eq!(n, 1);
    match a.expect().await.unwrap() {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::AdministrativeAction)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.recv().await.unwrap(), None);
    b.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        b.expect().await.unwrap(),
        Packet::PingResp,
        "b is untouched"
    );
    // Triggered: DISCONNECT 0x97 when the third PINGREQ arrives.
    server.faults().on(
        Trigger::nth(PacketType::PingReq, 2),
        Fault::Disconnect(DisconnectReasonCode::QuotaExceeded),
    );
    b.send(Packet::PingReq).await.unwrap();
    assert_eq!(b.expect().await.unwrap(), Packet::PingResp);
    b.send(Packet::PingReq).await.unwrap();
    assert!(
        matches!(b.expect().await.unwrap(), Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::QuotaExceeded)
    );
}

#[tokio::test]
async fn raw_bytes_reach_the_client_verbatim() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    // A PUBACK with a zero packet id: malformed for the client to deal with.
    let bad = Bytes::from_static(&[0x40, 0x02, 0x00, 0x00]);
    server
        .faults()
        .apply(Target::All, Fault::SendRaw(bad.clone()));
    assert!(c.recv().await.is_err(), "the client's decoder rejects it");
    assert!(server
        .events()
        .iter()
        .any(|e| e.kind == EventKind::SentRaw(bad.clone())));
    // An oversize header: 2 MB announced.
    let mut c = client(&server, "c2").await;
    c.set_max_packet_size(1024);
    server.faults().apply(
        Target::Client("c2".into()),
        Fault::SendRaw(Bytes::from_static(&[0x30, 0x80, 0x80, 0x80, 0x01])),
    );
    assert!(matches!(
        c.recv().await,
        Err(paho_testserver::Error::Packet(
            paho_packets::Error::PacketTooLarge { .. }
        ))
    ));
}

#[tokio::test(start_paused = true)]
async fn silent_server_is_half_open_until_resumed() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    server.faults().apply(Target::All, Fault::GoSilent);
    c.send(Packet::PingReq).await.unwrap();
    // Wait far beyond the client's own read bound: nothing may come in all that time.
    c.set_recv_limit(None);
    let waited = tokio::time::timeout(Duration::from_secs(3600), c.recv()).await;
    assert!(waited.is_err(), "no answer and no close: half-open");
    assert_eq!(server.connection_count(), 1);
    server.faults().apply(Target::All, Fault::Resume);
    assert_eq!(
        c.expect().await.unwrap(),
        Packet::PingResp,
        "the PINGREQ waited"
    );
}

#[tokio::test(start_paused = true)]
async fn silence_after_connack_for_future_connections() {
    let server = TestServer::start().await.unwrap();
    server.faults().on(
        Trigger::nth(PacketType::Connect, 1).when(When::AfterReply),
        Fault::GoSilent,
    );
    let mut c = RawClient::new(server.connect_duplex());
    // The CONNACK was queued before the silence began, but is not written until resumed:
    // silence stops writing too.
    c.send(paho_packets::Packet::from(paho_packets::Connect {
        client_id: "c".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(matches!(
        c.recv().await,
        Err(paho_testserver::Error::Timeout(_))
    ));
}

#[tokio::test]
async fn events_record_both_directions_per_connection() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    c.send(Packet::PingReq).await.unwrap();
    c.expect().await.unwrap();
    let events = server.events();
    let kinds: Vec<_> = events.iter().map(|e| &e.kind).collect();
    assert!(matches!(kinds[0], EventKind::Opened));
    assert!(matches!(kinds[1], EventKind::Received(Packet::Connect(_))));
    assert!(matches!(kinds[2], EventKind::Sent(Packet::ConnAck(_))));
    assert!(matches!(kinds[3], EventKind::Received(Packet::PingReq)));
    assert!(matches!(kinds[4], EventKind::Sent(Packet::PingResp)));
    assert!(events[1..]
        .iter()
        .all(|e| e.client_id.as_deref() == Some("c")));
    assert_eq!(server.received_from("c").len(), 2, "CONNECT and PINGREQ");
    assert_eq!(server.sent_to("c").len(), 2, "CONNACK and PINGRESP");
    assert!(server.received_from("other").is_empty());
    assert_eq!(server.received().len(), 2);
    assert_eq!(server.sent().len(), 2);
    server.clear_events();
    assert!(server.events().is_empty());
}

#[tokio::test]
async fn tcp_clients_work_too() {
    let server = TestServer::start().await.unwrap();
    assert!(server.addr().ip().is_loopback());
    let mut c = RawClient::new(server.connect_tcp().await.unwrap());
    c.connect("tcp").await.unwrap();
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp);
    server.shutdown().await;
    assert!(
        matches!(c.expect().await.unwrap(), Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::ServerShuttingDown)
    );
}

#[tokio::test]
async fn shutdown_ends_every_task() {
    let server = TestServer::start().await.unwrap();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(client(&server, &format!("c{i}")).await);
    }
    // A silent connection and a pending will timer must not keep shutdown waiting.
    server
        .faults()
        .apply(Target::Client("c0".into()), Fault::GoSilent);
    let mut w = RawClient::new(server.connect_duplex());
    w.connect_persistent("w", 100).await.unwrap();
    drop(w);
    server.wait_connection_count(5).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown finishes");
    assert_eq!(server.connection_count(), 0);
    assert!(server.is_shut_down());
    for c in &mut clients[1..] {
        assert!(matches!(
            c.recv().await.unwrap(),
            Some(Packet::Disconnect(_))
        ));
        assert_eq!(c.recv().await.unwrap(), None);
    }
    // After shutdown, a new pipe is closed at once.
    let mut late = RawClient::new(server.connect_duplex());
    assert!(late.connect("late").await.is_err());
    // The runtime has no task of the server left.
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0);
}

#[tokio::test]
async fn triggers_on_the_same_packet_all_fire() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    let faults = server.faults();
    faults.on(
        Trigger::nth(PacketType::PingReq, 1).when(When::AfterReply),
        Fault::SendRaw(Bytes::from_static(&[0xD0, 0x00])),
    );
    faults.on(
        Trigger::nth(PacketType::PingReq, 1).when(When::AfterReply),
        Fault::Disconnect(DisconnectReasonCode::ServerBusy),
    );
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp, "the reply");
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp, "the raw bytes");
    assert!(
        matches!(c.expect().await.unwrap(), Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::ServerBusy)
    );
    assert_eq!(faults.armed(), 0);
}

#[tokio::test(start_paused = true)]
async fn resume_handles_packets_buffered_before_the_silence() {
    let server = TestServer::start().await.unwrap();
    server.faults().on(
        Trigger::nth(PacketType::Connect, 1).when(When::AfterReply),
        Fault::GoSilent,
    );
    let mut c = RawClient::new(server.connect_duplex());
    // CONNECT and PINGREQ in one write: both are in the server's read buffer at once.
    let mut bytes = bytes::BytesMut::new();
    Packet::from(paho_packets::Connect {
        client_id: "c".into(),
        ..Default::default()
    })
    .encode(&mut bytes)
    .unwrap();
    Packet::PingReq.encode(&mut bytes).unwrap();
    c.send_raw(&bytes).await.unwrap();
    server.wait_for_received(PacketType::Connect).await;
    assert!(matches!(
        c.recv().await,
        Err(paho_testserver::Error::Timeout(_))
    ));
    assert_eq!(server.received().len(), 1, "the PINGREQ waits unread");
    server.faults().apply(Target::All, Fault::Resume);
    assert!(matches!(c.expect().await.unwrap(), Packet::ConnAck(_)));
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp);
}

#[tokio::test]
async fn faults_can_target_one_connection_by_id() {
    let server = TestServer::start().await.unwrap();
    let _a = client(&server, "a").await;
    let mut b = client(&server, "b").await;
    let conn_b = server
        .wait_for(|e| {
            e.client_id.as_deref() == Some("b")
                && matches!(e.kind, EventKind::Sent(Packet::ConnAck(_)))
        })
        .await
        .conn;
    assert_eq!(server.faults().apply(Target::Conn(conn_b), Fault::Drop), 1);
    assert_eq!(b.recv().await.unwrap(), None);
    server.wait_connection_count(1).await;
    assert_eq!(
        server
            .faults()
            .apply(Target::Client("nobody".into()), Fault::Drop),
        0
    );
}

#[tokio::test]
async fn scripted_packets_are_sent_as_they_are() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    let second_connack = Packet::ConnAck(Box::default());
    server.faults().apply(
        Target::All,
        Fault::SendPacket(Box::new(second_connack.clone())),
    );
    assert_eq!(c.expect().await.unwrap(), second_connack);
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        c.expect().await.unwrap(),
        Packet::PingResp,
        "the connection carries on"
    );
}
