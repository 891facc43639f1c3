//! The client against a real mosquitto (Debian 2.0.x), spawned by the test on a free loopback
//! port. Skips with a notice when mosquitto is absent, unless `PAHO_REQUIRE_MOSQUITTO=1`.
//!
//! Not covered here: topic aliases *from* the broker (mosquitto never sends them; the inbound
//! alias path is tested against the scripted peer and `paho-testserver`). Our outbound aliases
//! are tested against mosquitto. Every test body is bounded ([`bounded`]) so a hang fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use paho::packets::{
    Disconnect, DisconnectReasonCode, Publish, QoS, SubAckReasonCode, SubscribeProperties,
    Subscription, SubscriptionOptions, Will,
};
use paho::session::{MemoryStore, PublishOutcome, SessionConfig};
use paho::{Client, ConnectOptions, ConnectOptionsBuilder, Error, Incoming, SessionHandle};
use paho_testserver::mosquitto::{self, Mosquitto};
use tokio::net::TcpStream;

/// Generous: only a broken client or broker reaches it.
const WAIT: Duration = Duration::from_secs(60);
/// The bound on a whole test (real time: mosquitto runs outside the runtime's clock). Only a
/// hang reaches it; it turns the hang into a failure instead of a CI job that never ends.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// Runs a test body, failing it with a message if it has not finished within [`TEST_LIMIT`].
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("the test is stuck: not finished after {TEST_LIMIT:?}");
    }
}

async fn broker(lines: &[&str]) -> Option<Mosquitto> {
    let mut b = mosquitto::require()?;
    for l in lines {
        b = b.config(*l);
    }
    Some(b.start().await.expect("mosquitto failed to start"))
}

fn opts(id: &str) -> ConnectOptionsBuilder {
    ConnectOptions::builder().client_id(id)
}

async fn connect_to(
    addr: SocketAddr,
    o: ConnectOptionsBuilder,
    session: SessionHandle<MemoryStore>,
) -> (Client, Incoming) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    Client::connect(tcp, o.build().unwrap(), session)
        .await
        .unwrap()
}

async fn client(addr: SocketAddr, id: &str) -> (Client, Incoming) {
    connect_to(
        addr,
        opts(id),
        SessionHandle::in_memory(SessionConfig::new()),
    )
    .await
}

async fn next(incoming: &mut Incoming) -> paho::Message {
    tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("no message")
        .expect("connection closed")
}

fn msg(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: payload.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn qos_0_1_2_round_trips() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (sub, mut inc) = client(m.addr(), "rt-sub").await;
        let ack = sub.subscribe_to("rt/#", QoS::ExactlyOnce).await.unwrap();
        assert_eq!(ack.reason_codes, [SubAckReasonCode::GrantedQoS2]);
        let (publisher, _) = client(m.addr(), "rt-pub").await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let out = publisher
                .publish(msg(&format!("rt/{i}"), qos, format!("m{i}")))
                .await
                .unwrap();
            match qos {
                QoS::AtMostOnce => assert_eq!(out, PublishOutcome::Sent),
                QoS::AtLeastOnce => assert!(matches!(out, PublishOutcome::PubAck(_))),
                QoS::ExactlyOnce => assert!(matches!(out, PublishOutcome::PubComp(_))),
            }
            assert!(out.is_success());
            let got = next(&mut inc).await;
            assert_eq!((got.topic(), got.qos()), (&*format!("rt/{i}"), qos));
            assert_eq!(got.payload(), &Bytes::from(format!("m{i}")));
        }
        publisher.disconnect_normally().await.unwrap();
        sub.disconnect_normally().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn retained_messages() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (publisher, _) = client(m.addr(), "ret-pub").await;
        let mut p = msg("ret/a", QoS::AtLeastOnce, "kept");
        p.retain = true;
        publisher.publish(p).await.unwrap();
        let (sub, mut inc) = client(m.addr(), "ret-sub").await;
        sub.subscribe_to("ret/#", QoS::AtLeastOnce).await.unwrap();
        let got = next(&mut inc).await;
        assert_eq!((got.topic(), got.retain()), ("ret/a", true));
        assert_eq!(got.payload(), &Bytes::from("kept"));
    })
    .await
}

#[tokio::test]
async fn a_will_is_delivered_on_an_abnormal_close() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (sub, mut inc) = client(m.addr(), "will-sub").await;
        sub.subscribe_to("wills/#", QoS::AtLeastOnce).await.unwrap();
        // The client talks to mosquitto through a relay the test can cut, like a network failure.
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let mut tcp = TcpStream::connect(m.addr()).await.unwrap();
        let relay = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut far, &mut tcp).await;
        });
        let will = Will {
            topic: "wills/dying".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let o = opts("will-client").will(will).build().unwrap();
        let (dying, _inc) =
            Client::connect(near, o, SessionHandle::in_memory(SessionConfig::new()))
                .await
                .unwrap();
        // A normal disconnect would discard the will: cut the link instead.
        relay.abort();
        let got = next(&mut inc).await;
        assert_eq!(
            (got.topic(), got.payload()),
            ("wills/dying", &Bytes::from("gone"))
        );
        assert!(dying.closed().await.is_err());
    })
    .await
}

#[tokio::test]
async fn shared_subscriptions_split_the_messages() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (a, mut ia) = client(m.addr(), "sh-a").await;
        let (b, mut ib) = client(m.addr(), "sh-b").await;
        for c in [&a, &b] {
            let ack = c
                .subscribe_to("$share/g/sh/#", QoS::AtLeastOnce)
                .await
                .unwrap();
            assert!(!ack.reason_codes[0].is_error());
        }
        let (publisher, _) = client(m.addr(), "sh-pub").await;
        for i in 0..10 {
            publisher
                .publish(msg("sh/x", QoS::AtLeastOnce, format!("{i}")))
                .await
                .unwrap();
        }
        let (mut na, mut nb) = (0, 0);
        while na + nb < 10 {
            tokio::select! {
                Some(_) = ia.recv() => na += 1,
                Some(_) = ib.recv() => nb += 1,
            }
        }
        assert!(na > 0 && nb > 0, "{na} / {nb}");
    })
    .await
}

#[tokio::test]
async fn user_properties_and_message_expiry_pass_through() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (sub, mut inc) = client(m.addr(), "up-sub").await;
        sub.subscribe_to("up/#", QoS::AtLeastOnce).await.unwrap();
        let (publisher, _) = client(m.addr(), "up-pub").await;
        let mut p = msg("up/a", QoS::AtLeastOnce, "x");
        p.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
        p.properties.message_expiry_interval = Some(120);
        p.properties.content_type = Some("text/plain".into());
        publisher.publish(p).await.unwrap();
        let got = next(&mut inc).await;
        let props = got.properties();
        let ups: Vec<(String, String)> = props
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(ups, [("k".into(), "v".into()), ("k".into(), "w".into())]);
        let expiry = props.message_expiry_interval.expect("expiry passed on");
        assert!((110..=120).contains(&expiry), "{expiry}");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    })
    .await
}

#[tokio::test]
async fn subscription_identifiers_are_reported() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let (sub, mut inc) = client(m.addr(), "sid-sub").await;
        for (filter, id) in [("sid/#", 7), ("sid/x", 9)] {
            sub.subscribe(
                vec![Subscription::new(
                    filter,
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                )],
                SubscribeProperties {
                    subscription_identifier: Some(id),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        let (publisher, _) = client(m.addr(), "sid-pub").await;
        publisher
            .publish(msg("sid/x", QoS::AtLeastOnce, "1"))
            .await
            .unwrap();
        publisher
            .publish(msg("sid/y", QoS::AtLeastOnce, "2"))
            .await
            .unwrap();
        let mut ids = Vec::new();
        // mosquitto may deliver one message per matching subscription or one with both ids.
        loop {
            let got = next(&mut inc).await;
            if got.payload() == &Bytes::from("2") {
                assert_eq!(got.subscription_identifiers(), [7]);
                break;
            }
            ids.extend_from_slice(got.subscription_identifiers());
        }
        let ids: HashSet<u32> = ids.into_iter().collect();
        assert_eq!(ids, HashSet::from([7, 9]));
    })
    .await
}

#[tokio::test]
async fn maximum_packet_size_both_ways() {
    bounded(async {
        let Some(m) = broker(&["max_packet_size 1000"]).await else {
            return;
        };
        let (publisher, _) = client(m.addr(), "mps-pub").await;
        assert_eq!(publisher.server().maximum_packet_size(), Some(1000));
        let err = publisher
            .publish(msg("mps/a", QoS::AtLeastOnce, vec![0u8; 2000]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PacketTooLarge { max: 1000, .. }),
            "{err:?}"
        );
        // Our own limit: the broker must not send us more than 300 bytes.
        let (sub, mut inc) = connect_to(
            m.addr(),
            opts("mps-sub").maximum_packet_size(300),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        sub.subscribe_to("mps/#", QoS::AtLeastOnce).await.unwrap();
        publisher
            .publish(msg("mps/a", QoS::AtLeastOnce, vec![1u8; 600]))
            .await
            .unwrap();
        publisher
            .publish(msg("mps/a", QoS::AtLeastOnce, vec![2u8; 100]))
            .await
            .unwrap();
        let got = next(&mut inc).await;
        assert_eq!(
            got.payload().len(),
            100,
            "the oversize message was not withheld"
        );
        assert!(!publisher.is_closed() && !sub.is_closed());
    })
    .await
}

async fn flood(qos: QoS, n: usize, m: &Mosquitto, receive_maximum: u16, broker_rm: u16) {
    let (sub, mut inc) = connect_to(
        m.addr(),
        opts(&format!("flood-sub-{qos:?}")).receive_maximum(receive_maximum),
        SessionHandle::in_memory(SessionConfig::new()),
    )
    .await;
    sub.subscribe_to("flood/#", qos).await.unwrap();
    let (publisher, _) = client(m.addr(), &format!("flood-pub-{qos:?}")).await;
    assert_eq!(publisher.server().receive_maximum(), broker_rm);
    let sender = tokio::spawn(async move {
        let mut handles = std::collections::VecDeque::new();
        for i in 0..n {
            handles.push_back(publisher.start_publish(msg("flood/x", qos, format!("{i}"))));
            // Keep a bounded number of publishes queued in the session.
            if handles.len() >= 256 {
                assert!(handles.pop_front().unwrap().await.unwrap().is_success());
            }
        }
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
        publisher
    });
    let mut last = None;
    for i in 0..n {
        let got = next(&mut inc).await;
        let v: usize = std::str::from_utf8(got.payload()).unwrap().parse().unwrap();
        // In order (no loss, no duplicate delivered).
        assert_eq!(v, i, "after {last:?}");
        last = Some(v);
    }
    let publisher = sender.await.unwrap();
    publisher.disconnect_normally().await.unwrap();
    assert!(!sub.is_closed(), "the subscriber's connection dropped");
    sub.disconnect_normally().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_2_with_ten_thousand_qos1_and_qos2_messages() {
    bounded(async {
        // mosquitto drops QoS 1/2 messages queued for a subscriber beyond `max_queued_messages`
        // (default 1000). With only 2 in flight per client, a publisher that outpaces the
        // subscriber fills that queue, and the broker (not the client) would lose messages.
        let Some(m) = broker(&["max_inflight_messages 2", "max_queued_messages 0"]).await else {
            return;
        };
        flood(QoS::AtLeastOnce, 10_000, &m, 1024, 2).await;
        flood(QoS::ExactlyOnce, 10_000, &m, 1024, 2).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquittos_qos2_receive_maximum_overshoot_does_not_drop_the_link() {
    bounded(async {
        // mosquitto 2.0.11 keeps more unfinished QoS 2 deliveries outstanding than a small
        // Receive Maximum allows (the strict test below shows it happens under these very
        // conditions); the client tolerates it by default.
        let Some(m) = broker(&[]).await else { return };
        flood(QoS::ExactlyOnce, 300, &m, 2, 20).await; // mosquitto's default max_inflight_messages is 20
    })
    .await
}

#[tokio::test]
async fn session_present_after_reconnecting_with_a_stored_session() {
    bounded(async {
        let Some(m) = broker(&[]).await else { return };
        let session = SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(300));
        let (c1, _) = connect_to(m.addr(), opts("sp-client"), session.clone()).await;
        assert!(!c1.session_present());
        c1.subscribe_to("sp/#", QoS::AtLeastOnce).await.unwrap();
        c1.disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            .await
            .unwrap();
        // Messages published while offline are kept by the broker for the session.
        let (publisher, _) = client(m.addr(), "sp-pub").await;
        publisher
            .publish(msg("sp/a", QoS::AtLeastOnce, "while away"))
            .await
            .unwrap();
        let (c2, mut inc) =
            connect_to(m.addr(), opts("sp-client").clean_start(false), session).await;
        assert!(c2.session_present());
        let got = next(&mut inc).await;
        assert_eq!(got.payload(), &Bytes::from("while away"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_receive_maximum_catches_mosquittos_qos2_overshoot() {
    bounded(async {
        // The same quirk, made visible: in strict mode the client disconnects with 0x93.
        let Some(m) = broker(&[]).await else { return };
        let (sub, mut inc) = connect_to(
            m.addr(),
            opts("strict-sub")
                .receive_maximum(2)
                .strict_receive_maximum(true),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        sub.subscribe_to("strict/#", QoS::ExactlyOnce)
            .await
            .unwrap();
        let (publisher, _) = client(m.addr(), "strict-pub").await;
        let handles: Vec<_> = (0..300)
            .map(|i| publisher.start_publish(msg("strict/x", QoS::ExactlyOnce, format!("{i}"))))
            .collect();
        let reader = tokio::spawn(async move { while inc.recv().await.is_some() {} });
        let closed = tokio::time::timeout(WAIT, sub.closed())
            .await
            .expect("never overshot");
        assert_eq!(closed.unwrap_err().reason_code(), Some(0x93));
        reader.await.unwrap();
        for h in handles {
            h.await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn outbound_topic_aliases_are_accepted_by_mosquitto() {
    bounded(async {
        let Some(m) = broker(&["max_packet_size 1000"]).await else {
            return;
        };
        let (sub, mut inc) = client(m.addr(), "ta-sub").await;
        sub.subscribe_to("ta/#", QoS::AtLeastOnce).await.unwrap();
        let (publisher, _) = connect_to(
            m.addr(),
            opts("ta-pub").outbound_topic_aliases(10),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        assert_eq!(publisher.server().topic_alias_maximum(), 10);
        // A QoS 1 message exactly at the broker's maximum without an alias, on a topic with no
        // alias yet: setting one would make it too large, so it must go with its topic alone
        // (not close the connection).
        let at_max = (800..1000)
            .map(|n| {
                let mut p = msg("ta/big", QoS::AtLeastOnce, vec![b'm'; n]);
                p.packet_id = paho::packets::PacketId::new(1);
                p
            })
            .find(|p| {
                paho::packets::Packet::Publish(p.clone())
                    .encoded_len()
                    .unwrap()
                    == 1000
            })
            .map(|mut p| {
                p.packet_id = None;
                p
            })
            .unwrap();
        let mut expected = Vec::new();
        for (i, topic) in ["ta/x", "ta/y", "ta/x", "ta/x", "ta/y"].iter().enumerate() {
            if i == 2 {
                publisher.publish(at_max.clone()).await.unwrap();
                expected.push(("ta/big".to_string(), at_max.payload.to_vec()));
            }
            publisher
                .publish(msg(topic, QoS::AtLeastOnce, format!("{i}")))
                .await
                .unwrap();
            expected.push((topic.to_string(), format!("{i}").into_bytes()));
        }
        // And the topic still gets an alias for the smaller messages that follow.
        for i in 0..2 {
            publisher
                .publish(msg("ta/big", QoS::AtLeastOnce, format!("small {i}")))
                .await
                .unwrap();
            expected.push(("ta/big".into(), format!("small {i}").into_bytes()));
        }
        for (topic, payload) in expected {
            let got = next(&mut inc).await;
            assert_eq!((got.topic(), &got.payload()[..]), (&*topic, &payload[..]));
        }
        assert!(!publisher.is_closed() && !sub.is_closed());
    })
    .await
}
