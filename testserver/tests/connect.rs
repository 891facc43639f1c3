//! CONNACK values, limits the server enforces, topic aliases, enhanced authentication,
//! malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use paho_packets::{
    Auth, AuthReasonCode, Connect, ConnectProperties, ConnectReasonCode, DisconnectReasonCode,
    Packet, QoS, SubAckReasonCode, Subscribe, Subscription, SubscriptionOptions,
};
use paho_testserver::auth::{AuthOutcome, AuthRequest, ChallengeResponse};
use paho_testserver::raw::{publish, RawClient};
use paho_testserver::{CloseReason, EventKind, TestServer};

async fn expect_disconnect(c: &mut Client) -> DisconnectReasonCode {
    match c.expect().await.unwrap() {
        Packet::Disconnect(d) => {
            assert_eq!(
                c.recv().await.unwrap(),
                None,
                "the server closes after DISCONNECT"
            );
            d.reason_code
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn connack_carries_the_configured_values() {
    let server = TestServer::builder()
        .receive_maximum(5)
        .maximum_packet_size(2048)
        .topic_alias_maximum(3)
        .maximum_qos(QoS::AtLeastOnce)
        .retain_available(false)
        .wildcard_subscription_available(false)
        .subscription_identifiers_available(false)
        .shared_subscription_available(false)
        .server_keep_alive(7)
        .assigned_client_id("given")
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c.connect("").await.unwrap();
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(5));
    assert_eq!(p.maximum_packet_size, Some(2048));
    assert_eq!(p.topic_alias_maximum, Some(3));
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.server_keep_alive, Some(7));
    assert_eq!(p.assigned_client_identifier.as_deref(), Some("given"));
    assert!(server.has_session("given") || !ack.session_present);
    // Defaults: only Topic Alias Maximum 10 is advertised.
    let plain = TestServer::start().await.unwrap();
    let mut c = RawClient::new(plain.connect_duplex());
    let ack = c.connect("").await.unwrap();
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    assert_eq!(ack.properties.receive_maximum, None);
    assert!(ack
        .properties
        .assigned_client_identifier
        .as_deref()
        .unwrap()
        .starts_with("testserver-"));
}

#[tokio::test]
async fn session_present_can_be_forced_and_connect_refused() {
    let server = TestServer::builder()
        .session_present(true)
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    assert!(c.connect("x").await.unwrap().session_present);
    server
        .reconfigure(|b| {
            b.connack_reason(ConnectReasonCode::ServerBusy);
        })
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c.connect("y").await.unwrap();
    assert_eq!(ack.reason_code, ConnectReasonCode::ServerBusy);
    assert!(!ack.session_present);
    assert_eq!(c.recv().await.unwrap(), None);
    assert!(server
        .reconfigure(|b| {
            b.receive_maximum(0);
        })
        .is_err());
}

#[tokio::test]
async fn capability_limits_are_enforced() {
    let server = TestServer::builder()
        .maximum_qos(QoS::AtLeastOnce)
        .retain_available(false)
        .wildcard_subscription_available(false)
        .shared_subscription_available(false)
        .subscription_identifiers_available(false)
        .start()
        .await
        .unwrap();
    let mut c = client(&server, "c").await;
    let subscribe = Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![
            Subscription::new("a/+", SubscriptionOptions::qos(QoS::AtMostOnce)),
            Subscription::new("$share/g/a", SubscriptionOptions::qos(QoS::AtMostOnce)),
            Subscription::new("a", SubscriptionOptions::qos(QoS::ExactlyOnce)),
        ],
    };
    c.send(subscribe.clone()).await.unwrap();
    match c.expect().await.unwrap() {
        Packet::SubAck(s) => assert_eq!(
            s.reason_codes,
            vec![
                SubAckReasonCode::WildcardSubscriptionsNotSupported,
                SubAckReasonCode::SharedSubscriptionsNotSupported,
                SubAckReasonCode::GrantedQoS1,
            ]
        ),
        other => panic!("{other:?}"),
    }
    let mut with_id = subscribe;
    with_id.properties.subscription_identifier = Some(1);
    c.send(with_id).await.unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::SubscriptionIdentifiersNotSupported
    );

    let mut c = client(&server, "c").await;
    c.send(publish("a", "x", QoS::ExactlyOnce, 1))
        .await
        .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::QoSNotSupported
    );
    let mut c = client(&server, "c").await;
    let mut r = publish("a", "x", QoS::AtMostOnce, 0);
    r.retain = true;
    c.send(r).await.unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::RetainNotSupported
    );
}

#[tokio::test]
async fn oversize_inbound_packet_gets_0x95() {
    let server = TestServer::builder()
        .maximum_packet_size(64)
        .start()
        .await
        .unwrap();
    let mut c = client(&server, "c").await;
    c.send(publish("t", vec![0u8; 100], QoS::AtMostOnce, 0))
        .await
        .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::PacketTooLarge
    );
}

#[tokio::test]
async fn oversize_outbound_message_is_not_sent_to_a_small_client() {
    let server = TestServer::start().await.unwrap();
    let mut s = RawClient::new(server.connect_duplex());
    s.connect_with(Connect {
        clean_start: true,
        client_id: "small".into(),
        properties: ConnectProperties {
            maximum_packet_size: Some(40),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    sub(&mut s, "t", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    p.send(publish("t", vec![1u8; 100], QoS::AtMostOnce, 0))
        .await
        .unwrap();
    p.send(publish("t", "fits", QoS::AtMostOnce, 0))
        .await
        .unwrap();
    assert_eq!(&s.expect_publish().await.unwrap().payload[..], b"fits");
}

#[tokio::test]
async fn receive_maximum_exceeded_gets_0x93() {
    let server = TestServer::builder()
        .receive_maximum(2)
        .start()
        .await
        .unwrap();
    server.faults().withhold_acks();
    let mut c = client(&server, "c").await;
    for i in 1..=2 {
        c.send(publish("t", "x", QoS::AtLeastOnce, i))
            .await
            .unwrap();
    }
    // Resending an unacknowledged id does not count twice.
    c.send(publish("t", "x", QoS::AtLeastOnce, 2))
        .await
        .unwrap();
    c.send(publish("t", "x", QoS::AtLeastOnce, 3))
        .await
        .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::ReceiveMaximumExceeded
    );
}

#[tokio::test]
async fn inbound_topic_aliases_resolve_and_bad_ones_disconnect() {
    let server = TestServer::builder()
        .topic_alias_maximum(2)
        .start()
        .await
        .unwrap();
    let mut s = client(&server, "s").await;
    sub(&mut s, "long/topic", QoS::AtMostOnce).await;
    let mut c = client(&server, "c").await;
    let mut first = publish("long/topic", "1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(1);
    c.send(first).await.unwrap();
    let mut second = publish("", "2", QoS::AtMostOnce, 0);
    second.properties.topic_alias = Some(1);
    c.send(second).await.unwrap();
    for want in ["1", "2"] {
        let m = s.expect_publish().await.unwrap();
        assert_eq!(m.topic, "long/topic");
        assert_eq!(m.properties.topic_alias, None);
        assert_eq!(&m.payload[..], want.as_bytes());
    }
    let mut unknown = publish("", "3", QoS::AtMostOnce, 0);
    unknown.properties.topic_alias = Some(2);
    c.send(unknown).await.unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::ProtocolError
    );
    let mut c = client(&server, "c").await;
    let mut too_high = publish("x", "4", QoS::AtMostOnce, 0);
    too_high.properties.topic_alias = Some(3);
    c.send(too_high).await.unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::TopicAliasInvalid
    );
}

#[tokio::test]
async fn outbound_topic_aliases_when_enabled() {
    let server = TestServer::builder()
        .send_topic_aliases(true)
        .start()
        .await
        .unwrap();
    let mut s = RawClient::new(server.connect_duplex());
    s.connect_with(Connect {
        clean_start: true,
        client_id: "s".into(),
        properties: ConnectProperties {
            topic_alias_maximum: Some(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    sub(&mut s, "#", QoS::AtMostOnce).await;
    let mut p = client(&server, "p").await;
    for t in ["a", "a", "b", "a", "c", "b", "a"] {
        p.send(publish(t, t.to_owned(), QoS::AtMostOnce, 0))
            .await
            .unwrap();
    }
    let mut wire = Vec::new();
    let mut resolved = Vec::new();
    let mut mapping = std::collections::HashMap::new();
    for _ in 0..7 {
        let m = s.expect_publish().await.unwrap();
        let alias = m.properties.topic_alias.unwrap();
        assert!(alias <= 2, "never above the client's Topic Alias Maximum");
        if !m.topic.is_empty() {
            mapping.insert(alias, m.topic.to_string());
        }
        wire.push((m.topic.to_string(), alias));
        resolved.push(mapping[&alias].clone());
        assert_eq!(
            &m.payload[..],
            mapping[&alias].as_bytes(),
            "the alias resolves to the topic"
        );
    }
    assert_eq!(resolved, vec!["a", "a", "b", "a", "c", "b", "a"]);
    assert_eq!(
        wire,
        vec![
            ("a".to_owned(), 1),
            ("".to_owned(), 1),
            ("b".to_owned(), 2),
            ("".to_owned(), 1),
            // All taken: the least recently used (b's 2) is reassigned to c.
            ("c".to_owned(), 2),
            // b comes back on the least recently used, a's 1.
            ("b".to_owned(), 1),
            ("a".to_owned(), 2),
        ]
    );
    // A client that accepts no aliases gets none.
    let mut plain = client(&server, "plain").await;
    sub(&mut plain, "a", QoS::AtMostOnce).await;
    p.send(publish("a", "x", QoS::AtMostOnce, 0)).await.unwrap();
    assert_eq!(
        plain.expect_publish().await.unwrap().properties.topic_alias,
        None
    );
}

fn auth_connect(id: &str, method: &str, data: &'static [u8]) -> Connect {
    Connect {
        clean_start: true,
        client_id: id.into(),
        properties: ConnectProperties {
            authentication_method: Some(method.into()),
            authentication_data: Some(Bytes::from_static(data)),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn auth(code: AuthReasonCode, method: &str, data: &'static [u8]) -> Auth {
    let mut a = Auth::new(code);
    a.properties.authentication_method = Some(method.into());
    a.properties.authentication_data = Some(Bytes::from_static(data));
    a
}

#[tokio::test]
async fn enhanced_auth_challenge_response_and_reauth() {
    let script = ChallengeResponse::new("demo")
        .round("c1", "r1")
        .round("c2", "r2")
        .success_data("ok");
    let server = TestServer::builder()
        .authenticator(script)
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    c.send(Packet::from(auth_connect("a", "demo", b"hello")))
        .await
        .unwrap();
    for (challenge, response) in [(&b"c1"[..], &b"r1"[..]), (b"c2", b"r2")] {
        match c.expect().await.unwrap() {
            Packet::Auth(a) => {
                assert_eq!(a.reason_code, AuthReasonCode::ContinueAuthentication);
                assert_eq!(a.properties.authentication_data.as_deref(), Some(challenge));
            }
            other => panic!("{other:?}"),
        }
        let mut a = Auth::new(AuthReasonCode::ContinueAuthentication);
        a.properties.authentication_method = Some("demo".into());
        a.properties.authentication_data = Some(Bytes::copy_from_slice(response));
        c.send(a).await.unwrap();
    }
    match c.expect().await.unwrap() {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.reason_code, ConnectReasonCode::Success);
            assert_eq!(
                ack.properties.authentication_method.as_deref(),
                Some("demo")
            );
            assert_eq!(
                ack.properties.authentication_data.as_deref(),
                Some(&b"ok"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    // Re-authentication on the live connection.
    c.send(auth(AuthReasonCode::ReAuthenticate, "demo", b"again"))
        .await
        .unwrap();
    assert!(
        matches!(c.expect().await.unwrap(), Packet::Auth(a) if a.reason_code == AuthReasonCode::ContinueAuthentication)
    );
    c.send(auth(AuthReasonCode::ContinueAuthentication, "demo", b"r1"))
        .await
        .unwrap();
    c.expect().await.unwrap();
    c.send(auth(AuthReasonCode::ContinueAuthentication, "demo", b"r2"))
        .await
        .unwrap();
    assert!(
        matches!(c.expect().await.unwrap(), Packet::Auth(a) if a.reason_code == AuthReasonCode::Success)
    );
    // A failed re-authentication disconnects with 0x87.
    c.send(auth(AuthReasonCode::ReAuthenticate, "demo", b""))
        .await
        .unwrap();
    c.expect().await.unwrap();
    c.send(auth(
        AuthReasonCode::ContinueAuthentication,
        "demo",
        b"wrong",
    ))
    .await
    .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::NotAuthorized
    );
}

#[tokio::test]
async fn auth_failures_are_refused_in_connack() {
    let server = TestServer::builder()
        .authenticator(|r: &AuthRequest<'_>| match r.data.map(|d| &d[..]) {
            Some(b"letmein") => AuthOutcome::Success(None),
            _ => AuthOutcome::Fail,
        })
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c
        .connect_with(auth_connect("a", "pw", b"letmein"))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ConnectReasonCode::Success);
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c
        .connect_with(auth_connect("b", "pw", b"nope"))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ConnectReasonCode::NotAuthorized);
    // Without an authenticator, any method is refused with 0x8C.
    let plain = TestServer::start().await.unwrap();
    let mut c = RawClient::new(plain.connect_duplex());
    let ack = c.connect_with(auth_connect("c", "pw", b"x")).await.unwrap();
    assert_eq!(ack.reason_code, ConnectReasonCode::BadAuthenticationMethod);
}

#[tokio::test]
async fn malformed_and_out_of_order_packets_close_with_the_right_reason() {
    let server = TestServer::start().await.unwrap();
    // QoS 3 in a PUBLISH: malformed.
    let mut c = client(&server, "c").await;
    c.send_raw(&[0x36, 0x04, 0x00, 0x01, b't', 0x00])
        .await
        .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::MalformedPacket
    );
    // A second CONNECT: protocol error.
    let mut c = client(&server, "c").await;
    c.send(Packet::from(Connect {
        client_id: "c".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::ProtocolError
    );
    // Garbage instead of CONNECT: a failure CONNACK.
    let mut c = RawClient::new(server.connect_duplex());
    c.send_raw(&[0x10, 0x03, 0x00, 0x01, b'X']).await.unwrap();
    match c.expect().await.unwrap() {
        Packet::ConnAck(a) => assert!(a.reason_code.is_error()),
        other => panic!("{other:?}"),
    }
    // A first packet other than CONNECT: the link is just closed.
    let mut c = RawClient::new(server.connect_duplex());
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(c.recv().await.unwrap(), None);
    let malformed = server
        .events()
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Malformed(_)))
        .count();
    assert_eq!(malformed, 2);
}

#[tokio::test(start_paused = true)]
async fn keepalive_is_enforced_at_one_and_a_half_times() {
    let server = TestServer::start().await.unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    c.connect_with(Connect {
        clean_start: true,
        keep_alive: 10,
        client_id: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(14)).await;
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp);
    let start = tokio::time::Instant::now();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::KeepAliveTimeout
    );
    assert_eq!(start.elapsed(), Duration::from_secs(15));
    let closed = server
        .wait_for(|e| matches!(e.kind, EventKind::Closed(_)))
        .await;
    assert_eq!(
        closed.kind,
        EventKind::Closed(CloseReason::ServerDisconnect(
            DisconnectReasonCode::KeepAliveTimeout
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn server_keep_alive_overrides_and_enforcement_can_be_off() {
    let server = TestServer::builder()
        .server_keep_alive(2)
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c
        .connect_with(Connect {
            clean_start: true,
            keep_alive: 60,
            client_id: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ack.properties.server_keep_alive, Some(2));
    let start = tokio::time::Instant::now();
    assert_eq!(
        expect_disconnect(&mut c).await,
        DisconnectReasonCode::KeepAliveTimeout
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "1.5 x the server's keepalive"
    );

    let lax = TestServer::builder()
        .enforce_keep_alive(false)
        .start()
        .await
        .unwrap();
    let mut c = RawClient::new(lax.connect_duplex());
    c.connect_with(Connect {
        clean_start: true,
        keep_alive: 1,
        client_id: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    c.send(Packet::PingReq).await.unwrap();
    assert_eq!(c.expect().await.unwrap(), Packet::PingResp);
}

#[tokio::test]
async fn any_transport_can_be_served() {
    let server = TestServer::start().await.unwrap();
    let (client_end, server_end) = tokio::io::duplex(1024);
    let conn = server.serve(server_end);
    let mut c = RawClient::new(client_end);
    c.connect("custom").await.unwrap();
    let opened = server.wait_for(|e| e.conn == conn).await;
    assert_eq!(opened.kind, EventKind::Opened);
}

#[tokio::test]
async fn a_new_outbound_alias_never_pushes_a_delivery_over_the_clients_maximum_packet_size() {
    let server = TestServer::builder()
        .send_topic_aliases(true)
        .start()
        .await
        .unwrap();
    // Exactly the size of this delivery without an alias: setting one up adds 3 bytes.
    let fits = publish("exact", vec![b'x'; 20], QoS::AtMostOnce, 0);
    let limit = u32::try_from(Packet::Publish(fits.clone()).encoded_len().unwrap()).unwrap();
    let mut s = RawClient::new(server.connect_duplex());
    s.set_max_packet_size(limit);
    s.connect_with(Connect {
        clean_start: true,
        client_id: "s".into(),
        properties: ConnectProperties {
            topic_alias_maximum: Some(2),
            maximum_packet_size: Some(limit),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    sub(&mut s, "#", QoS::AtMostOnce).await;
    for _ in 0..2 {
        server.publish(fits.clone());
        // Over the limit, recv would fail with PacketTooLarge.
        let m = s.expect_publish().await.unwrap();
        assert_eq!(m.topic, "exact");
        assert_eq!(m.properties.topic_alias, None, "no room for an alias");
    }
    // With room to spare, the same topic gets its alias.
    server.publish(publish("exact", "x", QoS::AtMostOnce, 0));
    let m = s.expect_publish().await.unwrap();
    assert_eq!(m.properties.topic_alias, Some(1));
    server.shutdown().await;
}
