//! The client against a scripted peer over an in-memory pipe: the test plays the server packet
//! by packet, so each behaviour (and each server fault) is exercised exactly. Time-dependent
//! tests run on tokio's paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use paho::packets::{
    Auth, AuthProperties, AuthReasonCode, ConnAck, ConnAckProperties, ConnectReasonCode,
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PubAck, PubAckReasonCode,
    PubComp, PubRec, PubRel, Publish, QoS, RetainHandling, SubAckReasonCode, SubscribeProperties,
    Subscription, SubscriptionOptions, UnsubAck, UnsubAckReasonCode, Will, WillProperties,
};
use paho::session::{PublishOutcome, SessionConfig, SessionLostPolicy};
use paho::{AckOutcome, Authenticator, Chain, Client, Error, Message, SessionHandle};
use tokio::time::Instant;

fn disconnect_reason(packets: &[Packet]) -> Option<u8> {
    packets.iter().rev().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code.as_u8()),
        _ => None,
    })
}

async fn nothing_within(peer: &mut Peer, d: Duration) -> bool {
    tokio::time::timeout(d, peer.recv()).await.is_err()
}

// ----- connect ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn connect_sends_the_full_connect_and_returns_the_server_capabilities() {
    within(LIMIT, async {
        let will = Will {
            topic: "wills/x".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        };
        let opts = options()
            .client_id("")
            .clean_start(false)
            .keep_alive(Duration::from_secs(30))
            .will(will.clone())
            .username("user")
            .password(Bytes::from_static(b"secret"))
            .receive_maximum(7)
            .maximum_packet_size(4096)
            .topic_alias_maximum(3)
            .request_problem_information(true)
            .request_response_information(true)
            .user_property("k", "v")
            .build()
            .unwrap();
        let connack = ConnAck {
            properties: ConnAckProperties {
                assigned_client_identifier: Some("assigned-1".into()),
                receive_maximum: Some(5),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                server_keep_alive: Some(20),
                topic_alias_maximum: Some(4),
                maximum_packet_size: Some(1000),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _incoming, _peer, c) = connect_with(opts, memory_session(600), connack).await;
        assert!(!c.clean_start);
        assert_eq!(c.keep_alive, 30);
        assert_eq!(&*c.client_id, "");
        assert_eq!(c.will, Some(will));
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some(&b"secret"[..]));
        let p = &c.properties;
        assert_eq!(p.session_expiry_interval, Some(600));
        assert_eq!(p.receive_maximum, Some(7));
        assert_eq!(p.maximum_packet_size, Some(4096));
        assert_eq!(p.topic_alias_maximum, Some(3));
        assert_eq!(p.request_problem_information, Some(true));
        assert_eq!(p.request_response_information, Some(true));
        assert_eq!(p.user_properties.len(), 1);

        assert_eq!(client.client_id(), "assigned-1");
        assert_eq!(client.keep_alive(), 20);
        let s = client.server();
        assert_eq!(s.receive_maximum(), 5);
        assert_eq!(s.maximum_qos(), QoS::AtLeastOnce);
        assert!(!s.retain_available());
        assert_eq!(s.topic_alias_maximum(), 4);
        assert_eq!(s.maximum_packet_size(), Some(1000));
        assert!(!client.session_present());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_reports_the_reason_and_frees_the_session() {
    within(LIMIT, async {
        let session = memory_session(0);
        let (io, mut peer) = pipe();
        tokio::spawn(async move {
            let mut refusal = ConnAck {
                reason_code: ConnectReasonCode::NotAuthorized,
                ..Default::default()
            };
            refusal.properties.reason_string = Some("nope".into());
            peer.accept(refusal).await;
            peer.until_closed().await
        });
        let err = Client::connect(io, options().build().unwrap(), session.clone())
            .await
            .unwrap_err();
        match err {
            Error::ConnectionRefused {
                reason_code,
                reason_string,
            } => {
                assert_eq!(reason_code, 0x87);
                assert_eq!(reason_string.as_deref(), Some("nope"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!session.in_use());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn connect_times_out_without_connack() {
    within(LIMIT, async {
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            peer.expect().await;
            peer.until_closed().await
        });
        let opts = options()
            .connect_timeout(Some(Duration::from_secs(3)))
            .build()
            .unwrap();
        let start = Instant::now();
        let err = Client::connect(io, opts, memory_session(0))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        server.await.unwrap();
    })
    .await
}

// ----- publish ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn publish_resolves_with_the_outcome_at_each_qos() {
    within(LIMIT, async {
        let (client, _incoming, mut peer) = connect_default().await;

        let out = client
            .publish(publish("t/0", QoS::AtMostOnce, "a"))
            .await
            .unwrap();
        assert_eq!(out, PublishOutcome::Sent);
        let p = peer.expect_publish().await;
        assert_eq!(
            (&*p.topic, p.qos, p.packet_id),
            ("t/0", QoS::AtMostOnce, None)
        );

        let h = client.start_publish(publish("t/1", QoS::AtLeastOnce, "b"));
        let p = peer.expect_publish().await;
        let id = p.packet_id.unwrap();
        peer.send(PubAck {
            packet_id: id,
            reason_code: PubAckReasonCode::NoMatchingSubscribers,
            properties: Default::default(),
        })
        .await;
        let out = h.await.unwrap();
        assert_eq!(out.reason_code(), 0x10);
        assert!(out.is_success());

        let h = client.start_publish(publish("t/2", QoS::ExactlyOnce, "c"));
        let p = peer.expect_publish().await;
        let id = p.packet_id.unwrap();
        peer.send(PubRec::new(id)).await;
        assert_eq!(peer.expect().await, Packet::PubRel(PubRel::new(id)));
        peer.send(PubComp::new(id)).await;
        assert!(matches!(h.await.unwrap(), PublishOutcome::PubComp(_)));

        // A refusal is an outcome with its reason code, not an error.
        let h = client.start_publish(publish("t/1", QoS::AtLeastOnce, "d"));
        let id = peer.expect_publish().await.packet_id.unwrap();
        peer.send(PubAck {
            packet_id: id,
            reason_code: PubAckReasonCode::NotAuthorized,
            properties: Default::default(),
        })
        .await;
        let out = h.await.unwrap();
        assert_eq!(out.reason_code(), 0x87);
        assert!(!out.is_success());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn server_capabilities_are_checked_before_sending() {
    within(LIMIT, async {
        let connack = ConnAck {
            properties: ConnAckProperties {
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                wildcard_subscription_available: Some(false),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(false),
                maximum_packet_size: Some(256),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) =
            connect_with(options().build().unwrap(), memory_session(0), connack).await;
        let code = |r: Result<PublishOutcome, Error>| r.unwrap_err().reason_code();
        assert_eq!(
            code(client.publish(publish("a", QoS::ExactlyOnce, "x")).await),
            Some(0x9B)
        );
        let mut retained = publish("a", QoS::AtMostOnce, "x");
        retained.retain = true;
        assert_eq!(code(client.publish(retained).await), Some(0x9A));
        let big = publish("a", QoS::AtLeastOnce, &"x".repeat(300));
        assert!(matches!(
            client.publish(big).await,
            Err(Error::PacketTooLarge { max: 256, .. })
        ));
        let mut aliased = publish("a", QoS::AtMostOnce, "x");
        aliased.properties.topic_alias = Some(1);
        assert_eq!(code(client.publish(aliased).await), Some(0x94));
        let sub = |f: &str| vec![Subscription::new(f, SubscriptionOptions::default())];
        let sub_code = |r: Result<_, Error>| r.unwrap_err().reason_code();
        assert_eq!(
            sub_code(client.subscribe(sub("a/+"), Default::default()).await),
            Some(0xA2)
        );
        assert_eq!(
            sub_code(
                client
                    .subscribe(sub("$share/g/a"), Default::default())
                    .await
            ),
            Some(0x9E)
        );
        let with_id = SubscribeProperties {
            subscription_identifier: Some(1),
            ..Default::default()
        };
        assert_eq!(
            sub_code(client.subscribe(sub("a"), with_id).await),
            Some(0xA1)
        );
        // Nothing of the above reached the wire: the next packet is this one.
        client
            .publish(publish("ok", QoS::AtMostOnce, "y"))
            .await
            .unwrap();
        assert_eq!(&*peer.expect_publish().await.topic, "ok");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_publishes_respect_receive_maximum_two() {
    within(LIMIT, async {
        let connack = ConnAck {
            properties: ConnAckProperties {
                receive_maximum: Some(2),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) =
            connect_with(options().build().unwrap(), memory_session(0), connack).await;
        let handles: Vec<_> = (0..100)
            .map(|i| client.start_publish(publish("q", QoS::AtLeastOnce, &i.to_string())))
            .collect();
        let mut unacked = std::collections::VecDeque::new();
        let mut payloads = Vec::new();
        while payloads.len() < 100 {
            let p = peer.expect_publish().await;
            payloads.push(String::from_utf8(p.payload.to_vec()).unwrap());
            unacked.push_back(p.packet_id.unwrap());
            assert!(unacked.len() <= 2, "more than Receive Maximum in flight");
            if unacked.len() == 2 {
                // The client must not send a third before an acknowledgement.
                assert!(nothing_within(&mut peer, Duration::from_millis(50)).await);
                let id = unacked.pop_front().unwrap();
                peer.puback(id).await;
            }
        }
        while let Some(id) = unacked.pop_front() {
            peer.puback(id).await;
        }
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
        // First in, first out.
        let expected: Vec<String> = (0..100).map(|i: i32| i.to_string()).collect();
        assert_eq!(payloads, expected);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn dropping_a_publish_future_after_it_was_stored_does_not_withdraw_it() {
    within(LIMIT, async {
        let session = memory_session(0);
        let connack = ConnAck {
            properties: ConnAckProperties {
                receive_maximum: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) =
            connect_with(options().build().unwrap(), session.clone(), connack).await;
        // Stored and sent, then the caller goes away: still acknowledged and its id freed.
        let c = client.clone();
        let task =
            tokio::spawn(async move { c.publish(publish("a", QoS::ExactlyOnce, "1")).await });
        let first = peer.expect_publish().await;
        task.abort();
        let _ = task.await;
        // Waiting for quota, then dropped: withdrawn, never sent.
        let waiting = client.start_publish(publish("b", QoS::AtLeastOnce, "2"));
        tokio::task::yield_now().await;
        drop(waiting);
        let id = first.packet_id.unwrap();
        peer.send(PubRec::new(id)).await;
        assert_eq!(peer.expect().await, Packet::PubRel(PubRel::new(id)));
        peer.send(PubComp::new(id)).await;
        assert!(nothing_within(&mut peer, Duration::from_secs(1)).await);
        client.disconnect_normally().await.unwrap();
        let stats = session.stats().unwrap();
        assert_eq!(
            (stats.unfinished, stats.waiting, stats.packet_ids_in_use),
            (0, 0, 0)
        );
    })
    .await
}

// ----- reconnects through a shared session ------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_client_on_the_same_session_finishes_publishes_interrupted_by_a_drop() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let opts = options()
            .clean_start(false)
            .outbound_topic_aliases(5)
            .build()
            .unwrap();
        let aliases = ConnAck {
            properties: ConnAckProperties {
                topic_alias_maximum: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let (c1, _i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), aliases.clone()).await;
        let h1 = c1.start_publish(publish("q/1", QoS::AtLeastOnce, "one"));
        let h2 = c1.start_publish(publish("q/2", QoS::ExactlyOnce, "two"));
        let h3 = c1.start_publish(publish("q/3", QoS::ExactlyOnce, "three"));
        let a = p1.expect_publish().await;
        let b = p1.expect_publish().await;
        let c = p1.expect_publish().await;
        // On the first connection the client applied aliases.
        assert_eq!(a.properties.topic_alias, Some(1));
        let c_id = c.packet_id.unwrap();
        p1.send(PubRec::new(c_id)).await;
        assert_eq!(p1.expect().await, Packet::PubRel(PubRel::new(c_id)));
        drop(p1); // the link drops
        assert!(matches!(c1.closed().await, Err(Error::ConnectionClosed)));

        let present = ConnAck {
            session_present: true,
            ..Default::default()
        };
        let (c2, _i2, mut p2, connect) = connect_with(opts, session.clone(), present).await;
        assert!(!connect.clean_start);
        // Resent in order: PUBLISHes with DUP, full topic, no alias (aliases are never stored);
        // the PUBREL as PUBREL.
        let ra = p2.expect_publish().await;
        assert_eq!(
            (ra.packet_id, ra.dup, &*ra.topic),
            (a.packet_id, true, "q/1")
        );
        assert_eq!(ra.properties.topic_alias, None);
        let rb = p2.expect_publish().await;
        assert_eq!(
            (rb.packet_id, rb.dup, &*rb.topic),
            (b.packet_id, true, "q/2")
        );
        assert_eq!(p2.expect().await, Packet::PubRel(PubRel::new(c_id)));
        p2.puback(a.packet_id.unwrap()).await;
        let b_id = b.packet_id.unwrap();
        p2.send(PubRec::new(b_id)).await;
        assert_eq!(p2.expect().await, Packet::PubRel(PubRel::new(b_id)));
        p2.send(PubComp::new(b_id)).await;
        p2.send(PubComp::new(c_id)).await;
        assert!(matches!(h1.await.unwrap(), PublishOutcome::PubAck(_)));
        assert!(matches!(h2.await.unwrap(), PublishOutcome::PubComp(_)));
        assert!(matches!(h3.await.unwrap(), PublishOutcome::PubComp(_)));
        c2.disconnect_normally().await.unwrap();
        assert_eq!(session.stats().unwrap().unfinished, 0);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_hundred_publishes_started_before_a_drop_all_complete_after_it() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let opts = options().clean_start(false).build().unwrap();
        let (c1, _i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), ConnAck::default()).await;
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let qos = if i % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                c1.start_publish(publish("many", qos, &i.to_string()))
            })
            .collect();
        for _ in 0..100 {
            p1.expect_publish().await;
        }
        drop(p1);
        let _ = c1.closed().await;
        let present = ConnAck {
            session_present: true,
            ..Default::default()
        };
        let (_c2, _i2, mut p2, _) = connect_with(opts, session, present).await;
        let mut resent = Vec::new();
        for i in 0..100 {
            let p = p2.expect_publish().await;
            assert!(p.dup);
            assert_eq!(p.payload, Bytes::from(i.to_string()));
            resent.push(p);
        }
        for p in &resent {
            let id = p.packet_id.unwrap();
            if p.qos == QoS::AtLeastOnce {
                p2.puback(id).await;
            } else {
                p2.send(PubRec::new(id)).await;
            }
        }
        for p in resent.iter().filter(|p| p.qos == QoS::ExactlyOnce) {
            let id = p.packet_id.unwrap();
            assert_eq!(p2.expect().await, Packet::PubRel(PubRel::new(id)));
            p2.send(PubComp::new(id)).await;
        }
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn session_present_zero_republishes_the_waiting_publishes_by_default() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let opts = options().clean_start(false).build().unwrap();
        let (c1, _i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), ConnAck::default()).await;
        let h = c1.start_publish(publish("x", QoS::ExactlyOnce, "1"));
        let first = p1.expect_publish().await;
        p1.send(PubRec::new(first.packet_id.unwrap())).await;
        assert!(matches!(p1.expect().await, Packet::PubRel(_)));
        drop(p1); // lost at the PUBREL stage, then the server forgets the session
        let _ = c1.closed().await;
        let (_c2, _i2, mut p2, _) = connect_with(opts, session.clone(), ConnAck::default()).await;
        let again = p2.expect_publish().await;
        assert_eq!(again.payload, first.payload);
        assert!(!again.dup, "a new exchange");
        let id = again.packet_id.unwrap();
        p2.send(PubRec::new(id)).await;
        assert_eq!(p2.expect().await, Packet::PubRel(PubRel::new(id)));
        p2.send(PubComp::new(id)).await;
        assert!(h.await.unwrap().is_success());
        assert!(session.take_abandoned().is_empty());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn session_present_zero_under_fail_gives_the_message_back() {
    within(LIMIT, async {
        let session = SessionHandle::in_memory(
            SessionConfig::new()
                .session_expiry_interval(3600)
                .on_session_lost(SessionLostPolicy::Fail),
        );
        let opts = options().clean_start(false).build().unwrap();
        let (c1, _i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), ConnAck::default()).await;
        let h = c1.start_publish(publish("x", QoS::AtLeastOnce, "1"));
        p1.expect_publish().await;
        drop(p1);
        let _ = c1.closed().await;
        let (_c2, _i2, _p2, _) = connect_with(opts, session, ConnAck::default()).await;
        let e = h.await.unwrap_err();
        let Error::Session(e @ paho::session::Error::SessionLost { .. }) = e else {
            panic!("{e}");
        };
        assert_eq!(e.message().unwrap().payload, Bytes::from_static(b"1"));
        assert!(!e.is_outcome_unknown());
    })
    .await
}

// ----- subscribe and receive --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn subscribe_and_unsubscribe_report_per_filter_codes_and_subscription_ids() {
    within(LIMIT, async {
        let (client, mut incoming, mut peer) = connect_default().await;
        let opts = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let props = SubscribeProperties {
            subscription_identifier: Some(42),
            user_properties: vec![("k".into(), "v".into())],
        };
        let c = client.clone();
        let sub = tokio::spawn(async move {
            c.subscribe(
                vec![
                    Subscription::new("a/#", opts),
                    Subscription::new("b", SubscriptionOptions::qos(QoS::AtLeastOnce)),
                ],
                props,
            )
            .await
        });
        let Packet::Subscribe(s) = peer.expect().await else {
            panic!()
        };
        assert_eq!(s.properties.subscription_identifier, Some(42));
        assert_eq!(s.subscriptions[0].options, opts);
        assert_eq!(&*s.subscriptions[1].filter, "b");
        peer.suback(
            s.packet_id,
            vec![
                SubAckReasonCode::GrantedQoS2,
                SubAckReasonCode::NotAuthorized,
            ],
        )
        .await;
        let ack = sub.await.unwrap().unwrap();
        assert_eq!(
            ack.reason_codes,
            [
                SubAckReasonCode::GrantedQoS2,
                SubAckReasonCode::NotAuthorized
            ]
        );

        let mut p = server_publish("a/x", QoS::AtMostOnce, 0, "hi");
        p.properties.subscription_identifiers = vec![42];
        peer.send(p).await;
        let m = incoming.recv().await.unwrap();
        assert_eq!(
            (m.topic(), m.subscription_identifiers()),
            ("a/x", &[42u32][..])
        );

        let c = client.clone();
        let unsub = tokio::spawn(async move {
            c.unsubscribe(vec!["a/#".into(), "c".into()], Default::default())
                .await
        });
        let Packet::Unsubscribe(u) = peer.expect().await else {
            panic!()
        };
        assert_eq!(u.filters.len(), 2);
        peer.send(UnsubAck {
            packet_id: u.packet_id,
            properties: Default::default(),
            reason_codes: vec![
                UnsubAckReasonCode::Success,
                UnsubAckReasonCode::NoSubscriptionExisted,
            ],
        })
        .await;
        let ack = unsub.await.unwrap().unwrap();
        assert_eq!(
            ack.reason_codes[1],
            UnsubAckReasonCode::NoSubscriptionExisted
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn messages_are_acknowledged_when_taken_which_is_the_backpressure() {
    within(LIMIT, async {
        let opts = options().receive_maximum(2).build().unwrap();
        let (_client, mut incoming, mut peer, connect) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        assert_eq!(connect.properties.receive_maximum, Some(2));
        peer.send(incoming_msg(1)).await;
        peer.send(incoming_msg(2)).await;
        // The application has not taken them: no PUBACK, the server's quota stays used up.
        assert!(nothing_within(&mut peer, Duration::from_secs(5)).await);
        let m = incoming.recv().await.unwrap();
        assert_eq!(m.payload(), &Bytes::from("1"));
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        incoming.recv().await.unwrap();
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(2))));
    })
    .await
}

fn incoming_msg(id: u16) -> Publish {
    server_publish("in", QoS::AtLeastOnce, id, &id.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_server_overshooting_receive_maximum_is_tolerated_by_default() {
    within(LIMIT, async {
        let opts = options().receive_maximum(2).build().unwrap();
        let (client, mut incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        for id in 1..=3 {
            peer.send(server_publish("in", QoS::ExactlyOnce, id, "x"))
                .await;
        }
        for id in 1..=3 {
            incoming.recv().await.unwrap();
            assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(id))));
        }
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn strict_receive_maximum_disconnects_with_0x93() {
    within(LIMIT, async {
        let opts = options()
            .receive_maximum(2)
            .strict_receive_maximum(true)
            .build()
            .unwrap();
        let (client, _incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        for id in 1..=3 {
            peer.send(server_publish("in", QoS::ExactlyOnce, id, "x"))
                .await;
        }
        assert_eq!(disconnect_reason(&peer.until_closed().await), Some(0x93));
        assert_eq!(client.closed().await.unwrap_err().reason_code(), Some(0x93));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn manual_acks_out_of_order_still_go_out_in_arrival_order() {
    within(LIMIT, async {
        let opts = options().manual_acks(true).build().unwrap();
        let (_client, mut incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        peer.send(server_publish("a", QoS::AtLeastOnce, 1, "1"))
            .await;
        peer.send(server_publish("b", QoS::ExactlyOnce, 2, "2"))
            .await;
        peer.send(server_publish("c", QoS::AtLeastOnce, 3, "3"))
            .await;
        let m1 = incoming.recv().await.unwrap();
        let m2 = incoming.recv().await.unwrap();
        let m3 = incoming.recv().await.unwrap();
        assert!(m1.needs_ack());
        assert_eq!(m3.ack(), AckOutcome::Accepted);
        assert_eq!(m2.ack(), AckOutcome::Accepted);
        assert!(nothing_within(&mut peer, Duration::from_secs(5)).await);
        assert_eq!(m1.ack(), AckOutcome::Accepted);
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(2))));
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(3))));
        // A message whose connection closed: acking it is a typed no-op.
        peer.send(server_publish("d", QoS::AtLeastOnce, 4, "4"))
            .await;
        let m4 = incoming.recv().await.unwrap();
        drop(peer);
        assert!(incoming.recv().await.is_none());
        assert_eq!(m4.ack(), AckOutcome::ConnectionClosed);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn inbound_qos2_duplicates_are_not_delivered_again() {
    within(LIMIT, async {
        let (_client, mut incoming, mut peer) = connect_default().await;
        peer.send(server_publish("q2", QoS::ExactlyOnce, 5, "once"))
            .await;
        let m = incoming.recv().await.unwrap();
        assert_eq!(m.payload(), &Bytes::from("once"));
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(5))));
        let mut dup = server_publish("q2", QoS::ExactlyOnce, 5, "once");
        dup.dup = true;
        peer.send(dup).await;
        // Acknowledged again, not delivered again.
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(5))));
        peer.send(PubRel::new(pid(5))).await;
        assert_eq!(peer.expect().await, Packet::PubComp(PubComp::new(pid(5))));
        assert!(incoming.try_recv().is_none());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_publishes_does_not_deadlock_with_the_quota_full() {
    within(LIMIT, async {
        let connack = ConnAck {
            properties: ConnAckProperties {
                receive_maximum: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, incoming, mut peer, _) =
            connect_with(options().build().unwrap(), memory_session(0), connack).await;
        let handles = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (client.clone(), Arc::clone(&handles));
        let echo = move |m: &Message| {
            let p = publish("echo", QoS::AtLeastOnce, m.topic());
            h.lock().unwrap().push(c.start_publish(p));
            true
        };
        tokio::spawn(incoming.dispatch(Chain::new().then(echo)));
        for id in 1..=3 {
            peer.send(server_publish("in", QoS::AtLeastOnce, id, "x"))
                .await;
        }
        // All three are handled and acknowledged although only one echo may be in flight.
        let mut acks = 0;
        let mut echoes = Vec::new();
        while acks < 3 || echoes.is_empty() {
            match peer.expect().await {
                Packet::PubAck(_) => acks += 1,
                Packet::Publish(p) => echoes.push(p.packet_id.unwrap()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(echoes.len(), 1);
        for _ in 0..2 {
            let id = echoes.pop().unwrap();
            peer.puback(id).await;
            echoes.push(peer.expect_publish().await.packet_id.unwrap());
        }
        peer.puback(echoes.pop().unwrap()).await;
        let hs: Vec<_> = std::mem::take(&mut *handles.lock().unwrap());
        assert_eq!(hs.len(), 3);
        for h in hs {
            assert!(h.await.unwrap().is_success());
        }
    })
    .await
}

// ----- keepalive --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn pings_when_idle_and_detects_a_half_open_link_within_one_and_a_half_keepalives() {
    within(LIMIT, async {
        let opts = options()
            .keep_alive(Duration::from_secs(10))
            .build()
            .unwrap();
        let (client, _i, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        let start = Instant::now();
        assert_eq!(peer.expect().await, Packet::PingReq);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        peer.send(Packet::PingResp).await;
        assert_eq!(peer.expect().await, Packet::PingReq);
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        // Now the server goes silent.
        let closed = client.closed().await;
        assert!(matches!(closed, Err(Error::KeepAliveTimeout)), "{closed:?}");
        assert!(
            start.elapsed() <= Duration::from_secs(35),
            "{:?}",
            start.elapsed()
        );
        // Nothing more is written to a link presumed dead (and 0x8D is a server-only reason).
        assert_eq!(peer.until_closed().await, []);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_server_keepalive_from_connack_is_honoured() {
    within(LIMIT, async {
        let opts = options()
            .keep_alive(Duration::from_secs(60))
            .build()
            .unwrap();
        let connack = ConnAck {
            properties: ConnAckProperties {
                server_keep_alive: Some(4),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) = connect_with(opts, memory_session(0), connack).await;
        assert_eq!(client.keep_alive(), 4);
        let start = Instant::now();
        assert_eq!(peer.expect().await, Packet::PingReq);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    })
    .await
}

// ----- topic aliases ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn inbound_topic_aliases_are_resolved_for_the_application() {
    within(LIMIT, async {
        let opts = options().topic_alias_maximum(5).build().unwrap();
        let (_client, mut incoming, mut peer, connect) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        assert_eq!(connect.properties.topic_alias_maximum, Some(5));
        let mut set = server_publish("long/topic/name", QoS::AtMostOnce, 0, "1");
        set.properties.topic_alias = Some(3);
        peer.send(set).await;
        let mut used = server_publish("", QoS::AtLeastOnce, 1, "2");
        used.properties.topic_alias = Some(3);
        peer.send(used).await;
        for payload in ["1", "2"] {
            let m = incoming.recv().await.unwrap();
            assert_eq!(
                (m.topic(), m.payload()),
                ("long/topic/name", &Bytes::from(payload))
            );
            assert_eq!(m.properties().topic_alias, None);
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn outbound_topic_aliases_are_bounded_by_the_server_and_least_recently_used() {
    within(LIMIT, async {
        let opts = options().outbound_topic_aliases(10).build().unwrap();
        let connack = ConnAck {
            properties: ConnAckProperties {
                topic_alias_maximum: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) = connect_with(opts, memory_session(0), connack).await;
        let mut seen = Vec::new();
        for t in ["x", "x", "y", "y", "x"] {
            client
                .publish(publish(t, QoS::AtMostOnce, ""))
                .await
                .unwrap();
            let p = peer.expect_publish().await;
            seen.push((p.topic.to_string(), p.properties.topic_alias));
        }
        assert_eq!(
            seen,
            [
                ("x".into(), Some(1)),
                ("".into(), Some(1)),
                ("y".into(), Some(1)),
                ("".into(), Some(1)),
                ("x".into(), Some(1)),
            ]
        );
    })
    .await
}

// ----- closing ----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_server_disconnect_is_reported_with_its_reason() {
    within(LIMIT, async {
        let (client, mut incoming, mut peer) = connect_default().await;
        let mut d = Disconnect::new(DisconnectReasonCode::ServerShuttingDown);
        d.properties.reason_string = Some("bye".into());
        d.properties.server_reference = Some("other.example".into());
        peer.send(d).await;
        match client.closed().await {
            Err(Error::ServerDisconnected {
                reason_code,
                reason_string,
                server_reference,
            }) => {
                assert_eq!(reason_code, 0x8B);
                assert_eq!(reason_string.as_deref(), Some("bye"));
                assert_eq!(server_reference.as_deref(), Some("other.example"));
            }
            other => panic!("{other:?}"),
        }
        assert!(incoming.recv().await.is_none());
        assert!(matches!(
            client.publish(publish("a", QoS::AtMostOnce, "")).await,
            Err(Error::ConnectionClosed)
        ));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn disconnect_sends_the_reason_and_properties() {
    within(LIMIT, async {
        let session = memory_session(60);
        let (client, _i, mut peer, _) = connect_with(
            options().build().unwrap(),
            session.clone(),
            ConnAck::default(),
        )
        .await;
        let mut d = Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage);
        d.properties = DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some("going".into()),
            ..Default::default()
        };
        client.disconnect(d.clone()).await.unwrap();
        assert_eq!(peer.until_closed().await, [Packet::Disconnect(d)]);
        assert!(client.closed().await.is_ok());
        assert!(!session.in_use());
        // A second disconnect is a no-op.
        client.disconnect_normally().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_may_not_raise_a_zero_session_expiry() {
    within(LIMIT, async {
        let (client, _i, _peer) = connect_default().await;
        let mut d = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        d.properties.session_expiry_interval = Some(10);
        assert!(matches!(
            client.disconnect(d).await,
            Err(Error::InvalidArgument(_))
        ));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn no_task_is_left_running_after_disconnect() {
    within(LIMIT, async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let (client, incoming, mut peer) = connect_default().await;
        let dispatcher = tokio::spawn(incoming.dispatch(|_: &Message| true));
        assert!(metrics.num_alive_tasks() > before);
        client.disconnect_normally().await.unwrap();
        assert_eq!(disconnect_reason(&peer.until_closed().await), Some(0x00));
        dispatcher.await.unwrap();
        for _ in 0..100 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_connection() {
    within(LIMIT, async {
        let (client, _incoming, mut peer) = connect_default().await;
        drop(client);
        assert_eq!(disconnect_reason(&peer.until_closed().await), Some(0x00));
    })
    .await
}

// ----- bad input from the server -----------------------------------------------------------

async fn bad_input_closes_with(bytes: &[u8], max_packet_size: Option<u32>, expected: u8) {
    let mut b = options();
    if let Some(m) = max_packet_size {
        b = b.maximum_packet_size(m);
    }
    let (client, _i, mut peer, _) =
        connect_with(b.build().unwrap(), memory_session(0), ConnAck::default()).await;
    peer.send_raw(bytes).await;
    let sent = peer.until_closed().await;
    assert_eq!(disconnect_reason(&sent), Some(expected), "{bytes:02x?}");
    let err = client.closed().await.unwrap_err();
    assert_eq!(err.reason_code(), Some(expected), "{bytes:02x?}: {err}");
}

#[tokio::test(start_paused = true)]
async fn each_malformed_or_forbidden_packet_from_the_server_closes_with_the_right_reason() {
    within(LIMIT, async {
        let cases: &[(&str, &[u8], u8)] = &[
            ("reserved type 0", &[0x00, 0x00], 0x81),
            (
                "CONNECT from the server",
                &encoded(Packet::from(paho::packets::Connect::default())),
                0x82,
            ),
            (
                "second CONNACK",
                &encoded(Packet::from(ConnAck::default())),
                0x82,
            ),
            (
                "PUBLISH with QoS 3",
                &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
                0x81,
            ),
            (
                "PUBLISH topic with wildcard",
                &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
                0x82,
            ),
            (
                "PUBLISH QoS 1 with id 0",
                &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
                0x82,
            ),
            (
                "PUBLISH topic alias 0",
                &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
                0x82,
            ),
            ("PUBACK id 0", &[0x40, 0x02, 0x00, 0x00], 0x82),
            (
                "PUBACK bad reason code",
                &[0x40, 0x03, 0x00, 0x01, 0x05],
                0x81,
            ),
            ("PUBREC bad flags", &[0x51, 0x02, 0x00, 0x01], 0x81),
            ("PUBREL bad flags", &[0x60, 0x02, 0x00, 0x01], 0x81),
            ("PUBCOMP truncated", &[0x70, 0x01, 0x00], 0x81),
            (
                "SUBSCRIBE from the server",
                &[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
                0x81,
            ),
            ("SUBACK empty", &[0x90, 0x03, 0x00, 0x01, 0x00], 0x82),
            (
                "UNSUBACK bad reason code",
                &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x05],
                0x81,
            ),
            ("PINGREQ from the server", &[0xC0, 0x00], 0x82),
            ("PINGRESP with a body", &[0xD0, 0x01, 0x00], 0x81),
            ("DISCONNECT bad reason code", &[0xE0, 0x01, 0x01], 0x81),
            ("AUTH bad reason code", &[0xF0, 0x01, 0x05], 0x81),
            ("AUTH without authentication", &[0xF0, 0x01, 0x18], 0x82),
            (
                "variable length over 4 bytes",
                &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                0x81,
            ),
            (
                "unknown property",
                &[0x40, 0x05, 0x00, 0x01, 0x00, 0x01, 0x7F],
                0x81,
            ),
            (
                "well-formed SUBSCRIBE from the server",
                &encoded(Packet::Subscribe(paho::packets::Subscribe {
                    packet_id: pid(1),
                    properties: Default::default(),
                    subscriptions: vec![Subscription::new("a", SubscriptionOptions::default())],
                })),
                0x82,
            ),
        ];
        for (name, bytes, expected) in cases {
            println!("case: {name}");
            bad_input_closes_with(bytes, None, *expected).await;
        }
    })
    .await
}

fn encoded(p: Packet) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    p.encode(&mut b).unwrap();
    b.to_vec()
}

#[tokio::test(start_paused = true)]
async fn oversize_packets_from_the_server_close_with_0x95() {
    within(LIMIT, async {
        // A whole PUBLISH over our Maximum Packet Size.
        let big = encoded(Packet::Publish(publish(
            "t",
            QoS::AtMostOnce,
            &"x".repeat(300),
        )));
        bad_input_closes_with(&big, Some(200), 0x95).await;
        // Only a header announcing 1 MB: refused before the body arrives.
        bad_input_closes_with(&[0x30, 0x80, 0x80, 0x40], Some(200), 0x95).await;
        // Every other packet type, oversize through its properties.
        let mut ack = PubAck::new(pid(1));
        ack.properties.reason_string = Some("r".repeat(300).into());
        bad_input_closes_with(&encoded(Packet::PubAck(ack)), Some(200), 0x95).await;
        let mut d = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        d.properties.reason_string = Some("r".repeat(300).into());
        bad_input_closes_with(&encoded(Packet::Disconnect(d)), Some(200), 0x95).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn protocol_violations_in_the_exchange_close_with_0x82() {
    within(LIMIT, async {
        // PUBACK for a QoS 2 exchange.
        let (client, _i, mut peer) = connect_default().await;
        let _h = client.start_publish(publish("a", QoS::ExactlyOnce, ""));
        let id = peer.expect_publish().await.packet_id.unwrap();
        peer.puback(id).await;
        assert_eq!(disconnect_reason(&peer.until_closed().await), Some(0x82));
        // An unknown inbound topic alias, and one above our maximum.
        let mut unknown = server_publish("", QoS::AtMostOnce, 0, "");
        unknown.properties.topic_alias = Some(2);
        bad_input_closes_with(&encoded(Packet::Publish(unknown)), None, 0x82).await;
        let mut high = server_publish("t", QoS::AtMostOnce, 0, "");
        high.properties.topic_alias = Some(paho::DEFAULT_TOPIC_ALIAS_MAXIMUM + 1);
        bad_input_closes_with(&encoded(Packet::Publish(high)), None, 0x94).await;
    })
    .await
}

// ----- enhanced authentication ------------------------------------------------------------

struct Token {
    log: Arc<Mutex<Vec<String>>>,
}

impl Authenticator for Token {
    fn method(&self) -> &str {
        "TOKEN"
    }
    fn initial_data(&mut self, reauth: bool) -> Result<Option<Bytes>, Error> {
        self.log
            .lock()
            .unwrap()
            .push(format!("initial reauth={reauth}"));
        Ok(Some(Bytes::from_static(b"hello")))
    }
    fn challenge(&mut self, data: Option<&Bytes>) -> Result<Option<Bytes>, Error> {
        self.log.lock().unwrap().push(format!("challenge {data:?}"));
        match data.map(|d| &d[..]) {
            Some(b"prove it") => Ok(Some(Bytes::from_static(b"proof"))),
            _ => Err(Error::Auth("unexpected challenge".into())),
        }
    }
    fn success(&mut self, data: Option<&Bytes>) -> Result<(), Error> {
        self.log.lock().unwrap().push(format!("success {data:?}"));
        Ok(())
    }
}

fn auth(code: AuthReasonCode, data: &'static [u8]) -> Auth {
    Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some("TOKEN".into()),
            authentication_data: Some(Bytes::from_static(data)),
            ..Default::default()
        },
    }
}

#[tokio::test(start_paused = true)]
async fn enhanced_authentication_at_connect_and_reauthentication() {
    within(LIMIT, async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let opts = options()
            .authenticator(Token {
                log: Arc::clone(&log),
            })
            .build()
            .unwrap();
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            let Packet::Connect(c) = peer.expect().await else {
                panic!()
            };
            assert_eq!(c.properties.authentication_method.as_deref(), Some("TOKEN"));
            assert_eq!(
                c.properties.authentication_data.as_deref(),
                Some(&b"hello"[..])
            );
            peer.send(auth(AuthReasonCode::ContinueAuthentication, b"prove it"))
                .await;
            assert_eq!(
                peer.expect().await,
                Packet::Auth(auth(AuthReasonCode::ContinueAuthentication, b"proof"))
            );
            let mut ok = ConnAck::default();
            ok.properties.authentication_method = Some("TOKEN".into());
            ok.properties.authentication_data = Some(Bytes::from_static(b"welcome"));
            peer.send(Packet::ConnAck(Box::new(ok))).await;
            // Re-authentication later.
            assert_eq!(
                peer.expect().await,
                Packet::Auth(auth(AuthReasonCode::ReAuthenticate, b"hello"))
            );
            peer.send(auth(AuthReasonCode::ContinueAuthentication, b"prove it"))
                .await;
            assert_eq!(
                peer.expect().await,
                Packet::Auth(auth(AuthReasonCode::ContinueAuthentication, b"proof"))
            );
            peer.send(auth(AuthReasonCode::Success, b"again")).await;
            peer
        });
        let (client, _incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        client.reauthenticate().await.unwrap();
        let _peer = server.await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "initial reauth=false",
                "challenge Some(b\"prove it\")",
                "success Some(b\"welcome\")",
                "initial reauth=true",
                "challenge Some(b\"prove it\")",
                "success Some(b\"again\")",
            ]
        );
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn reauthenticating_without_an_authenticator_is_a_typed_error() {
    within(LIMIT, async {
        let (client, _i, _peer) = connect_default().await;
        assert!(matches!(
            client.reauthenticate().await,
            Err(Error::InvalidArgument(_))
        ));
    })
    .await
}

// ----- routing and rpc --------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn rpc_matches_responses_and_cleans_up_timeouts() {
    within(LIMIT, async {
        use paho::extensions::rpc::{response_to, Requester};
        let (client, incoming, mut peer) = connect_default().await;
        let c = client.clone();
        let made = tokio::spawn(async move { Requester::new(c, "replies/me").await });
        let Packet::Subscribe(s) = peer.expect().await else {
            panic!()
        };
        assert_eq!(&*s.subscriptions[0].filter, "replies/me");
        peer.suback(s.packet_id, vec![SubAckReasonCode::GrantedQoS1])
            .await;
        let rpc = made.await.unwrap().unwrap();
        let routed = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&routed);
        let router = paho::router::Router::new()
            .route("other/+", move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        tokio::spawn(incoming.dispatch(Chain::new().then(rpc.responses()).then(router)));

        let r2 = rpc.clone();
        let req = tokio::spawn(async move {
            r2.request(
                publish("svc/add", QoS::AtMostOnce, "1 2"),
                Duration::from_secs(5),
            )
            .await
        });
        let request = peer.expect_publish().await;
        assert_eq!(
            request.properties.response_topic.as_deref(),
            Some("replies/me")
        );
        let response = response_to(&Message::from_publish(request), "3").unwrap();
        // A message for the router first, then the response.
        peer.send(publish("other/x", QoS::AtMostOnce, "")).await;
        peer.send(response).await;
        let answer = req.await.unwrap().unwrap();
        assert_eq!(answer.payload, Bytes::from("3"));
        assert_eq!(routed.load(Ordering::SeqCst), 1);

        // No response: a timeout, and nothing left behind.
        let err = rpc
            .request(
                publish("svc/add", QoS::AtMostOnce, "1 2"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout));
        assert_eq!(rpc.pending(), 0);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn messages_nobody_takes_after_incoming_is_dropped_are_still_acknowledged() {
    within(LIMIT, async {
        let opts = options().manual_acks(true).build().unwrap();
        let (client, incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        drop(incoming);
        peer.send(server_publish("in", QoS::AtLeastOnce, 1, "x"))
            .await;
        peer.send(server_publish("in", QoS::ExactlyOnce, 2, "y"))
            .await;
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(2))));
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn qos0_messages_the_application_does_not_take_are_bounded() {
    within(LIMIT, async {
        let opts = options().max_queued_qos0(2).build().unwrap();
        let (client, mut incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        for i in 0..5 {
            peer.send(server_publish("q0", QoS::AtMostOnce, 0, &i.to_string()))
                .await;
        }
        // QoS 1 is never dropped.
        peer.send(server_publish("q1", QoS::AtLeastOnce, 1, "kept"))
            .await;
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(incoming.recv().await.unwrap().payload().clone());
        }
        assert_eq!(
            got,
            [Bytes::from("0"), Bytes::from("1"), Bytes::from("kept")]
        );
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        // Taking them made room again.
        peer.send(server_publish("q0", QoS::AtMostOnce, 0, "later"))
            .await;
        assert_eq!(
            incoming.recv().await.unwrap().payload(),
            &Bytes::from("later")
        );
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_second_connection_on_a_session_waits_for_the_first_to_end() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let (c1, _i1, mut p1, _) = connect_with(
            options().build().unwrap(),
            session.clone(),
            ConnAck::default(),
        )
        .await;
        assert!(session.in_use());
        let (io2, mut p2) = pipe();
        let s2 = session.clone();
        let second =
            tokio::spawn(async move { Client::connect(io2, options().build().unwrap(), s2).await });
        // Nothing is sent on the second link while the first drives the session.
        assert!(nothing_within(&mut p2, Duration::from_secs(10)).await);
        c1.disconnect_normally().await.unwrap();
        assert_eq!(disconnect_reason(&p1.until_closed().await), Some(0x00));
        p2.accept(ConnAck::default()).await;
        let (c2, _i2) = second.await.unwrap().unwrap();
        assert!(!c2.is_closed());
    })
    .await
}

// ----- review fixes -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dropping_incoming_with_messages_queued_still_acknowledges_them() {
    within(LIMIT, async {
        // Messages still queued when `Incoming` is dropped must be acknowledged like later ones:
        // acks leave in arrival order, so two lost acks would hold every later one for good.
        let (client, incoming, mut peer) = connect_default().await;
        peer.send(incoming_msg(1)).await;
        peer.send(server_publish("in", QoS::ExactlyOnce, 2, "2"))
            .await;
        // Not taken by the application: no ack yet (they are queued in `incoming`).
        assert!(nothing_within(&mut peer, Duration::from_secs(5)).await);
        drop(incoming);
        peer.send(incoming_msg(3)).await;
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(2))));
        assert_eq!(peer.expect().await, Packet::PubAck(PubAck::new(pid(3))));
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_outbound_alias_never_pushes_a_publish_over_the_servers_maximum() {
    within(LIMIT, async {
        // A QoS 1 PUBLISH exactly at the server's Maximum Packet Size without an alias.
        let mut at_max = publish("t/x", QoS::AtLeastOnce, &"p".repeat(100));
        at_max.packet_id = Some(pid(1));
        let max = Packet::Publish(at_max.clone()).encoded_len().unwrap() as u32;
        at_max.packet_id = None;
        let connack = ConnAck {
            properties: ConnAckProperties {
                topic_alias_maximum: Some(5),
                maximum_packet_size: Some(max),
                ..Default::default()
            },
            ..Default::default()
        };
        let opts = options().outbound_topic_aliases(5).build().unwrap();
        let (client, _i, mut peer, _) = connect_with(opts, memory_session(0), connack).await;
        let h = client.start_publish(at_max);
        // It goes out with its topic and no alias (an alias would make it too large).
        let p = peer.expect_publish().await;
        assert_eq!((&*p.topic, p.properties.topic_alias), ("t/x", None));
        peer.puback(p.packet_id.unwrap()).await;
        assert!(h.await.unwrap().is_success());
        // No alias was recorded for it: the next message on the topic sets one (topic and alias),
        // and only the one after that uses it alone.
        for expected in [("t/x", Some(1)), ("", Some(1))] {
            client
                .publish(publish("t/x", QoS::AtMostOnce, "small"))
                .await
                .unwrap();
            let p = peer.expect_publish().await;
            assert_eq!((&*p.topic, p.properties.topic_alias), expected);
        }
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_qos0_publish_written_by_the_closing_write_reports_sent() {
    within(LIMIT, async {
        let (client, _i, mut peer) = connect_default().await;
        // Both commands reach the connection together: the PUBLISH goes out in the final write.
        let h = client.start_publish(publish("last", QoS::AtMostOnce, "x"));
        client.disconnect_normally().await.unwrap();
        assert_eq!(h.await.unwrap(), PublishOutcome::Sent);
        let sent = peer.until_closed().await;
        assert!(
            matches!(&sent[0], Packet::Publish(p) if &*p.topic == "last"),
            "{sent:?}"
        );
        assert_eq!(disconnect_reason(&sent), Some(0x00));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_half_open_link_is_reported_in_time_even_with_a_write_stuck_on_a_full_socket() {
    within(LIMIT, async {
        // The peer reads CONNECT, answers, then neither reads nor writes: the pipe (a socket
        // buffer) fills up while the application keeps publishing, so packets are queued and
        // never written. Detection must not depend on writes completing, and the close must not
        // wait on the dead link either.
        let session = memory_session(0);
        let (io, mut peer) = pipe_with_capacity(1024);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let opts = options()
            .keep_alive(Duration::from_secs(10))
            .build()
            .unwrap();
        let (client, _i) = Client::connect(io, opts, session.clone()).await.unwrap();
        let start = Instant::now();
        let _peer = server.await.unwrap();
        let c = client.clone();
        let publisher = tokio::spawn(async move {
            loop {
                drop(c.start_publish(publish("t", QoS::AtMostOnce, &"x".repeat(600))));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let closed = client.closed().await;
        assert!(matches!(closed, Err(Error::KeepAliveTimeout)), "{closed:?}");
        assert!(
            start.elapsed() <= Duration::from_secs(15),
            "reported after {:?}",
            start.elapsed()
        );
        // The session is free for a reconnect at once.
        assert!(!session.in_use());
        publisher.abort();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn nothing_more_is_written_after_the_server_disconnects() {
    within(LIMIT, async {
        let (client, _incoming, mut peer) = connect_default().await;
        // A PUBREL (answered at once with PUBCOMP) and the server's DISCONNECT arrive
        // together: the PUBCOMP must not be written to a link the server is closing.
        let mut both = bytes::BytesMut::new();
        Packet::PubRel(PubRel::new(pid(9)))
            .encode(&mut both)
            .unwrap();
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ServerShuttingDown))
            .encode(&mut both)
            .unwrap();
        peer.send_raw(&both).await;
        let closed = client.closed().await;
        assert_eq!(closed.unwrap_err().reason_code(), Some(0x8B));
        assert_eq!(peer.until_closed().await, []);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_over_the_servers_maximum_leaves_out_its_reason_string() {
    within(LIMIT, async {
        let connack = ConnAck {
            properties: ConnAckProperties {
                maximum_packet_size: Some(128),
                ..Default::default()
            },
            ..Default::default()
        };
        let (client, _i, mut peer, _) =
            connect_with(options().build().unwrap(), memory_session(0), connack).await;
        let mut d = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        d.properties.reason_string = Some("r".repeat(300).into());
        d.properties.user_properties = vec![("k".into(), "v".into())];
        client.disconnect(d).await.unwrap();
        // Still a normal close (the server discards the will), just without the extras.
        assert_eq!(
            peer.until_closed().await,
            [Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::NormalDisconnection
            ))]
        );
        assert!(client.closed().await.is_ok());
    })
    .await
}

struct BigReauth;

impl Authenticator for BigReauth {
    fn method(&self) -> &str {
        "BIG"
    }
    fn initial_data(&mut self, reauth: bool) -> Result<Option<Bytes>, Error> {
        let n = if reauth { 500 } else { 1 };
        Ok(Some(Bytes::from(vec![b'x'; n])))
    }
    fn challenge(&mut self, _: Option<&Bytes>) -> Result<Option<Bytes>, Error> {
        Ok(None)
    }
}

#[tokio::test(start_paused = true)]
async fn a_reauthentication_over_the_servers_maximum_fails_the_call_not_the_connection() {
    within(LIMIT, async {
        let connack = ConnAck {
            properties: ConnAckProperties {
                maximum_packet_size: Some(200),
                ..Default::default()
            },
            ..Default::default()
        };
        let opts = options().authenticator(BigReauth).build().unwrap();
        let (client, _i, mut peer, _) = connect_with(opts, memory_session(0), connack).await;
        assert!(matches!(
            client.reauthenticate().await,
            Err(Error::PacketTooLarge { max: 200, .. })
        ));
        // The connection is still up and usable.
        client
            .publish(publish("after", QoS::AtMostOnce, ""))
            .await
            .unwrap();
        assert_eq!(&*peer.expect_publish().await.topic, "after");
        assert!(!client.is_closed());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn inbound_topic_aliases_do_not_carry_over_to_the_next_connection() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let opts = options().clean_start(false).build().unwrap();
        let (c1, mut i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), ConnAck::default()).await;
        let mut set = server_publish("a/topic", QoS::AtMostOnce, 0, "1");
        set.properties.topic_alias = Some(2);
        p1.send(set).await;
        assert_eq!(i1.recv().await.unwrap().topic(), "a/topic");
        drop(p1);
        let _ = c1.closed().await;
        // The server uses the alias alone on the new connection: unknown there (0x82).
        let present = ConnAck {
            session_present: true,
            ..Default::default()
        };
        let (c2, _i2, mut p2, _) = connect_with(opts, session, present).await;
        let mut stale = server_publish("", QoS::AtMostOnce, 0, "2");
        stale.properties.topic_alias = Some(2);
        p2.send(stale).await;
        assert_eq!(disconnect_reason(&p2.until_closed().await), Some(0x82));
        assert_eq!(c2.closed().await.unwrap_err().reason_code(), Some(0x82));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_stale_manual_ack_is_a_typed_no_op_and_never_reaches_the_next_connection() {
    within(LIMIT, async {
        let session = memory_session(3600);
        let opts = options()
            .clean_start(false)
            .manual_acks(true)
            .build()
            .unwrap();
        let (c1, mut i1, mut p1, _) =
            connect_with(opts.clone(), session.clone(), ConnAck::default()).await;
        p1.send(incoming_msg(1)).await;
        let old = i1.recv().await.unwrap();
        drop(p1);
        let _ = c1.closed().await;
        // `c1` is still held (its command sender alive): the ack must still go nowhere.
        let present = ConnAck {
            session_present: true,
            ..Default::default()
        };
        let (_c2, mut i2, mut p2, _) = connect_with(opts, session, present).await;
        let mut again = incoming_msg(1);
        again.dup = true;
        p2.send(again).await;
        p2.send(incoming_msg(2)).await;
        let m1 = i2.recv().await.unwrap();
        let m2 = i2.recv().await.unwrap();
        assert_eq!(old.ack(), AckOutcome::ConnectionClosed);
        assert!(nothing_within(&mut p2, Duration::from_secs(5)).await);
        assert_eq!(m2.ack(), AckOutcome::Accepted);
        assert_eq!(m1.ack(), AckOutcome::Accepted);
        assert_eq!(p2.expect().await, Packet::PubAck(PubAck::new(pid(1))));
        assert_eq!(p2.expect().await, Packet::PubAck(PubAck::new(pid(2))));
        drop(c1);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_rpc_handler_in_the_chain_does_not_keep_the_connection_open() {
    use paho::extensions::rpc::Requester;
    within(LIMIT, async {
        let (client, incoming, mut peer) = connect_default().await;
        let rpc = Requester::without_subscribing(client.clone(), "replies/me");
        let dispatcher = tokio::spawn(incoming.dispatch(Chain::new().then(rpc.responses())));
        drop((rpc, client));
        // Every handle the application held is gone: the connection closes normally and the
        // dispatching task ends.
        assert_eq!(disconnect_reason(&peer.until_closed().await), Some(0x00));
        dispatcher.await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_lenient_client_still_bounds_the_messages_a_server_leaves_unacknowledged() {
    within(LIMIT, async {
        let opts = options().receive_maximum(10).build().unwrap();
        let (client, _incoming, mut peer, _) =
            connect_with(opts, memory_session(0), ConnAck::default()).await;
        // The application takes nothing, and the server keeps reusing one packet id: beyond
        // one message per packet identifier it is not overshooting, it is flooding.
        let mut flood = bytes::BytesMut::new();
        for _ in 0..=u16::MAX {
            Packet::Publish(incoming_msg(1)).encode(&mut flood).unwrap();
        }
        let writer = tokio::spawn(async move {
            peer.send_raw(&flood).await;
            peer.until_closed().await
        });
        assert_eq!(client.closed().await.unwrap_err().reason_code(), Some(0x93));
        assert_eq!(disconnect_reason(&writer.await.unwrap()), Some(0x93));
    })
    .await
}
