//! Routing, QoS flows, retained messages, subscription options.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use paho_packets::{
    Packet, PacketType, PubAckReasonCode, Publish, PublishProperties, QoS, RetainHandling,
    SubAckReasonCode, SubscriptionOptions, UnsubAckReasonCode, Unsubscribe,
};
use paho_testserver::raw::publish;
use paho_testserver::TestServer;

#[tokio::test]
async fn qos0_1_2_round_trip() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "t/#", QoS::ExactlyOnce).await;
    let mut p = client(&server, "p").await;

    p.send(publish("t/0", "zero", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    let m = s.expect_publish().await.unwrap();
    assert_eq!(
        (m.qos, &m.payload[..], m.packet_id),
        (QoS::AtMostOnce, &b"zero"[..], None)
    );

    p.send(publish("t/1", "one", QoS::AtLeastOnce, 7))
        .await
        .unwrap();
    match p.expect().await.unwrap() {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, pid(7));
            assert_eq!(a.reason_code, PubAckReasonCode::Success);
        }
        other => panic!("{other:?}"),
    }
    let m = s.expect_publish().await.unwrap();
    assert_eq!(m.qos, QoS::AtLeastOnce);
    puback(&mut s, m.packet_id.unwrap()).await;

    p.send(publish("t/2", "two", QoS::ExactlyOnce, 8))
        .await
        .unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(r) if r.packet_id == pid(8)));
    pubrel(&mut p, pid(8)).await;
    assert!(matches!(p.expect().await.unwrap(), Packet::PubComp(c) if c.packet_id == pid(8)));
    let m = s.expect_publish().await.unwrap();
    assert_eq!(m.qos, QoS::ExactlyOnce);
    let id = m.packet_id.unwrap();
    pubrec(&mut s, id).await;
    assert!(matches!(s.expect().await.unwrap(), Packet::PubRel(r) if r.packet_id == id));
    pubcomp(&mut s, id).await;
    server.wait_for_received(PacketType::PubComp).await;
    assert_eq!(server.outbound("s"), Some((0, 0)));
    server.shutdown().await;
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "a", QoS::AtLeastOnce).await;
    let mut p = client(&server, "p").await;
    p.send(publish("a", "x", QoS::ExactlyOnce, 1))
        .await
        .unwrap();
    let m = s.expect_publish().await.unwrap();
    assert_eq!(m.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn inbound_qos2_duplicate_is_not_routed_twice() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "a", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    p.send(publish("a", "once", QoS::ExactlyOnce, 5))
        .await
        .unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(_)));
    let mut dup = publish("a", "once", QoS::ExactlyOnce, 5);
    dup.dup = true;
    p.send(dup).await.unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(_)));
    pubrel(&mut p, pid(5)).await;
    assert!(matches!(p.expect().await.unwrap(), Packet::PubComp(c) if c.reason_code.as_u8() == 0));
    // After PUBREL the id is free: a new message with it is routed again.
    p.send(publish("a", "twice", QoS::ExactlyOnce, 5))
        .await
        .unwrap();
    assert!(matches!(p.expect().await.unwrap(), Packet::PubRec(_)));
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"once");
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"twice");
    // A PUBREL for an unknown id gets PUBCOMP 0x92.
    pubrel(&mut p, pid(9)).await;
    pubrel(&mut p, pid(5)).await;
    let mut codes = vec![];
    for _ in 0..2 {
        match p.expect().await.unwrap() {
            Packet::PubComp(c) => codes.push(c.reason_code.as_u8()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(codes, vec![0x92, 0x00]);
}

#[tokio::test]
async fn wildcards_match_levels() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "a/+/c", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    for t in ["a/b/c", "a/b/d", "a/c", "a/x/c"] {
        p.send(publish(t, t.to_owned(), QoS::AtMostOnce, 0))
            .await
            .unwrap();
    }
    assert_eq!(s.expect_publish().await.unwrap().topic, "a/b/c");
    assert_eq!(s.expect_publish().await.unwrap().topic, "a/x/c");
}

#[tokio::test]
async fn retained_messages_are_sent_on_subscribe_and_deleted_by_empty_payload() {
    let server = TestServer::start().await.unwrap();
    let mut p = client(&server, "p").await;
    let mut r = publish("r/1", "kept", QoS::AtLeastOnce, 1);
    r.retain = true;
    p.send(r).await.unwrap();
    p.expect().await.unwrap();
    let mut r2 = publish("r/2", "gone", QoS::AtMostOnce, 0);
    r2.retain = true;
    p.send(r2).await.unwrap();
    let mut del = publish("r/2", "", QoS::AtMostOnce, 0);
    del.retain = true;
    p.send(del).await.unwrap();
    server
        .wait_for_count(3, |e| {
            e.received()
                .is_some_and(|p| p.packet_type() == PacketType::Publish)
        })
        .await;
    assert_eq!(server.retained().len(), 1);

    let mut s = client(&server, "s").await;
    let ack = subscribe(&mut s, 1, "r/#", SubscriptionOptions::qos(QoS::AtLeastOnce)).await;
    assert!(
        matches!(ack, Packet::SubAck(_)),
        "SUBACK comes before retained messages"
    );
    let m = s.expect_publish().await.unwrap();
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"kept");

    // Retain handling 1: only for a new subscription; 2: never.
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    subscribe(&mut s, 2, "r/#", opts).await;
    let opts2 = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    subscribe(&mut s, 3, "r/+", opts2).await;
    subscribe(&mut s, 4, "r/1", opts).await;
    // Only the new r/1 subscription with SendIfNew produced a retained message.
    let m = s.expect_publish().await.unwrap();
    assert!(m.retain && m.topic == "r/1");
    s.send(publish("x", "ping", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    server.shutdown().await;
    assert_eq!(
        s.recv().await.unwrap().map(|p| p.packet_type()),
        Some(PacketType::Disconnect)
    );
}

#[tokio::test]
async fn retain_flag_is_cleared_unless_retain_as_published() {
    let server = TestServer::start().await.unwrap();
    let mut plain = client(&server, "plain").await;
    sub(&mut plain, "t", QoS::AtMostOnce).await;
    let mut rap = client(&server, "rap").await;
    let opts = SubscriptionOptions {
        retain_as_published: true,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    subscribe(&mut rap, 1, "t", opts).await;
    let mut p = client(&server, "p").await;
    let mut m = publish("t", "v", QoS::AtMostOnce, 0);
    m.retain = true;
    p.send(m).await.unwrap();
    assert!(!plain.expect_publish().await.unwrap().retain);
    assert!(rap.expect_publish().await.unwrap().retain);
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    let opts = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::qos(QoS::AtMostOnce)
    };
    subscribe(&mut c, 1, "t", opts).await;
    let mut other = client(&server, "o").await;
    c.send(publish("t", "mine", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    other
        .send(publish("t", "theirs", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    assert_eq!(&c.expect_publish().await.unwrap().payload[..], b"theirs");
}

#[tokio::test]
async fn subscription_identifiers_and_properties_pass_through() {
    let server = TestServer::start().await.unwrap();
    let mut s = client(&server, "s").await;
    let mut subscribe_pkt = paho_packets::Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![paho_packets::Subscription::new(
            "a/+",
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
    };
    subscribe_pkt.properties.subscription_identifier = Some(42);
    s.send(subscribe_pkt.clone()).await.unwrap();
    s.expect().await.unwrap();
    subscribe_pkt.packet_id = pid(2);
    subscribe_pkt.properties.subscription_identifier = Some(7);
    subscribe_pkt.subscriptions[0].filter = "a/#".into();
    s.send(subscribe_pkt).await.unwrap();
    s.expect().await.unwrap();

    let mut p = client(&server, "p").await;
    let mut m = publish("a/b", "x", QoS::AtMostOnce, 0);
    m.properties = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        response_topic: Some("reply".into()),
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    p.send(m).await.unwrap();
    let got = s.expect_publish().await.unwrap();
    let mut ids = got.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 42], "one delivery carrying both identifiers");
    assert_eq!(
        got.properties.user_properties,
        vec![("k".into(), "v".into())]
    );
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        got.properties.correlation_data.as_deref(),
        Some(&b"corr"[..])
    );
    assert_eq!(got.properties.response_topic.as_deref(), Some("reply"));
    assert_eq!(got.properties.message_expiry_interval, Some(60));
}

#[tokio::test(start_paused = true)]
async fn message_expiry_counts_down_while_queued() {
    let server = TestServer::start().await.unwrap();
    let (mut s, _) = persistent(&server, "s", None).await;
    sub(&mut s, "t", QoS::AtLeastOnce).await;
    drop(s);
    server.wait_connection_count(0).await;
    let mut p = client(&server, "p").await;
    for (payload, expiry) in [("short", 5u32), ("long", 100)] {
        let mut m = publish("t", payload, QoS::AtLeastOnce, 1);
        m.properties.message_expiry_interval = Some(expiry);
        p.send(m).await.unwrap();
        p.expect().await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let (mut s, present) = persistent(&server, "s", None).await;
    assert!(present);
    let m = s.expect_publish().await.unwrap();
    assert_eq!(&m.payload[..], b"long", "the expired message was dropped");
    assert_eq!(m.properties.message_expiry_interval, Some(90));
}

#[tokio::test]
async fn shared_subscriptions_round_robin() {
    let server = TestServer::start().await.unwrap();
    let mut a = client(&server, "a").await;
    let mut b = client(&server, "b").await;
    sub(&mut a, "$share/g/jobs/+", QoS::AtMostOnce).await;
    sub(&mut b, "$share/g/jobs/+", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    for i in 0..4 {
        p.send(publish("jobs/x", format!("{i}"), QoS::AtMostOnce, 0))
            .await
            .unwrap();
    }
    let mut got_a = vec![];
    let mut got_b = vec![];
    for _ in 0..2 {
        got_a.push(a.expect_publish().await.unwrap().payload);
        got_b.push(b.expect_publish().await.unwrap().payload);
    }
    let mut all: Vec<_> = got_a.iter().chain(&got_b).map(|b| b.to_vec()).collect();
    all.sort();
    assert_eq!(
        all,
        vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
}

#[tokio::test]
async fn unsubscribe_reports_missing_subscriptions() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    sub(&mut c, "a", QoS::AtMostOnce).await;
    c.send(Unsubscribe {
        packet_id: pid(3),
        properties: Default::default(),
        filters: vec!["a".into(), "b".into()],
    })
    .await
    .unwrap();
    match c.expect().await.unwrap() {
        Packet::UnsubAck(u) => assert_eq!(
            u.reason_codes,
            vec![
                UnsubAckReasonCode::Success,
                UnsubAckReasonCode::NoSubscriptionExisted
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert!(server.subscriptions("c").is_empty());
}

#[tokio::test]
async fn server_publish_reaches_subscribers() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    sub(&mut c, "n", QoS::AtLeastOnce).await;
    let n = server.publish(Publish {
        topic: "n".into(),
        qos: QoS::AtLeastOnce,
        payload: Bytes::from_static(b"hi"),
        ..Default::default()
    });
    assert_eq!(n, 1);
    assert_eq!(&c.expect_publish().await.unwrap().payload[..], b"hi");
    let _ = SubAckReasonCode::GrantedQoS0;
}

#[tokio::test(start_paused = true)]
async fn expired_retained_messages_are_not_sent() {
    let server = TestServer::start().await.unwrap();
    let mut p = client(&server, "p").await;
    let mut r = publish("r", "brief", QoS::AtLeastOnce, 1);
    r.retain = true;
    r.properties.message_expiry_interval = Some(5);
    p.send(r).await.unwrap();
    p.expect().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut s = client(&server, "s").await;
    sub(&mut s, "r", QoS::AtLeastOnce).await;
    let m = s.expect_publish().await.unwrap();
    assert_eq!(m.properties.message_expiry_interval, Some(2));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut late = client(&server, "late").await;
    sub(&mut late, "r", QoS::AtLeastOnce).await;
    late.send(Packet::PingReq).await.unwrap();
    assert_eq!(
        late.expect().await.unwrap(),
        Packet::PingResp,
        "no retained message"
    );
}
