//! The client against `paho-testserver`, the in-process scriptable broker: round trips through
//! a real broker, and every failure made to happen on purpose (dropped links at chosen
//! packets, withheld acknowledgements, half-open links, server DISCONNECTs, malformed bytes).
//! Pipes and tokio's paused clock keep it deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use paho::packets::{
    DisconnectReasonCode, Packet, PacketType, Publish, QoS, SubscribeProperties, Subscription,
    SubscriptionOptions, Will,
};
use paho::session::{MemoryStore, PublishOutcome, SessionConfig};
use paho::{AckOutcome, Authenticator, Client, ConnectOptions, ConnectOptionsBuilder, Error};
use paho::{Incoming, SessionHandle};
use paho_testserver::auth::ChallengeResponse;
use paho_testserver::{CloseReason, EventKind};
use paho_testserver::{Fault, FlowControl, Target, TestServer, Trigger, When};

mod common;
use common::{within, LIMIT};
use tokio::time::Instant;

fn msg(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: payload.into(),
        ..Default::default()
    }
}

fn opts(id: &str) -> ConnectOptionsBuilder {
    ConnectOptions::builder().client_id(id)
}

fn persistent() -> SessionHandle<MemoryStore> {
    SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600))
}

async fn join(
    server: &TestServer,
    o: ConnectOptionsBuilder,
    session: SessionHandle<MemoryStore>,
) -> (Client, Incoming) {
    Client::connect(server.connect_duplex(), o.build().unwrap(), session)
        .await
        .unwrap()
}

async fn simple(server: &TestServer, id: &str) -> (Client, Incoming) {
    join(
        server,
        opts(id),
        SessionHandle::in_memory(SessionConfig::new()),
    )
    .await
}

/// How many PUBLISHes from `client` the server has received.
fn publishes_from(server: &TestServer, client: &str) -> usize {
    server
        .events()
        .iter()
        .filter(|e| e.client_id.as_deref() == Some(client))
        .filter(|e| matches!(e.received(), Some(Packet::Publish(_))))
        .count()
}

#[tokio::test(start_paused = true)]
async fn round_trips_at_every_qos_through_the_broker() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (sub, mut inc) = simple(&server, "sub").await;
        sub.subscribe_to("rt/#", QoS::ExactlyOnce).await.unwrap();
        let (publisher, _) = simple(&server, "pub").await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut p = msg("rt/a", qos, format!("{qos:?}"));
            p.properties.user_properties = vec![("k".into(), "v".into())];
            assert!(publisher.publish(p).await.unwrap().is_success());
            let got = inc.recv().await.unwrap();
            assert_eq!(
                (got.qos(), got.payload()),
                (qos, &Bytes::from(format!("{qos:?}")))
            );
            assert_eq!(got.properties().user_properties.len(), 1);
        }
        // Retained.
        let mut r = msg("rt/retained", QoS::AtLeastOnce, "kept");
        r.retain = true;
        publisher.publish(r).await.unwrap();
        inc.recv().await.unwrap();
        let (late, mut late_inc) = simple(&server, "late").await;
        late.subscribe_to("rt/retained", QoS::AtLeastOnce)
            .await
            .unwrap();
        let got = late_inc.recv().await.unwrap();
        assert!(got.retain());
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_drop_after_publish_at_qos_1_and_2_is_finished_by_a_new_client_on_the_same_session() {
    within(LIMIT, async {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let server = TestServer::start().await.unwrap();
            let (sub, mut inc) = simple(&server, "watcher").await;
            sub.subscribe_to("d/#", QoS::ExactlyOnce).await.unwrap();
            let session = persistent();
            let o = opts("dropper").clean_start(false);
            let (c1, _) = join(&server, o.clone(), session.clone()).await;
            // The server processes the PUBLISH (routes it) but the link drops before its ack.
            server.faults().on(
                Trigger::nth(PacketType::Publish, 1)
                    .from_client("dropper")
                    .when(When::AfterProcessing),
                Fault::Drop,
            );
            let h = c1.start_publish(msg("d/x", qos, "payload"));
            assert!(c1.closed().await.is_err());
            let (c2, _) = join(&server, o, session.clone()).await;
            assert!(c2.session_present());
            let out = h.await.unwrap();
            assert!(out.is_success(), "{qos:?}: {out:?}");
            let first = inc.recv().await.unwrap();
            assert_eq!(first.payload(), &Bytes::from("payload"));
            // The PUBLISH went out twice (the second time with DUP)...
            assert_eq!(publishes_from(&server, "dropper"), 2);
            c2.disconnect_normally().await.unwrap();
            assert_eq!(session.stats().unwrap().unfinished, 0);
            sub.disconnect_normally().await.unwrap();
            if qos == QoS::ExactlyOnce {
                // ...but at QoS 2 the broker routed it once.
                assert!(inc.recv().await.is_none(), "QoS 2 delivered twice");
            }
            server.shutdown().await;
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_hundred_publishes_started_before_a_drop_complete_after_it() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let session = persistent();
        let o = opts("hundred").clean_start(false);
        let (c1, _) = join(&server, o.clone(), session.clone()).await;
        server.faults().withhold_acks();
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let qos = if i % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                c1.start_publish(msg("h/x", qos, format!("{i}")))
            })
            .collect();
        server
            .wait_for_count(100, |e| matches!(e.received(), Some(Packet::Publish(_))))
            .await;
        server
            .faults()
            .apply(Target::Client("hundred".into()), Fault::Drop);
        assert!(c1.closed().await.is_err());
        server.faults().clear();
        let (_c2, _) = join(&server, o, session).await;
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_publishes_with_receive_maximum_two() {
    within(LIMIT, async {
        let server = TestServer::builder()
            .receive_maximum(2)
            .start()
            .await
            .unwrap();
        let (c, _) = simple(&server, "rm2").await;
        assert_eq!(c.server().receive_maximum(), 2);
        let handles: Vec<_> = (0..100)
            .map(|i| c.start_publish(msg("rm/x", QoS::ExactlyOnce, format!("{i}"))))
            .collect();
        for h in handles {
            assert!(h.await.unwrap().is_success());
        }
        // The server enforces its Receive Maximum (DISCONNECT 0x93): the link is still up.
        assert!(!c.is_closed());
        assert_eq!(publishes_from(&server, "rm2"), 100);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_half_open_link_is_detected_within_one_and_a_half_keepalives() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (c, _) = join(
            &server,
            opts("silent").keep_alive(Duration::from_secs(20)),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        let start = Instant::now();
        server
            .faults()
            .apply(Target::Client("silent".into()), Fault::GoSilent);
        let closed = c.closed().await;
        assert!(matches!(closed, Err(Error::KeepAliveTimeout)), "{closed:?}");
        assert!(
            start.elapsed() <= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_server_disconnect_reaches_the_application_with_its_reason() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (c, mut inc) = simple(&server, "kicked").await;
        server.faults().apply(
            Target::Client("kicked".into()),
            Fault::Disconnect(DisconnectReasonCode::ServerBusy),
        );
        assert_eq!(c.closed().await.unwrap_err().reason_code(), Some(0x89));
        assert!(inc.recv().await.is_none());
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn malformed_and_oversize_bytes_from_the_server_close_the_link_with_the_right_reason() {
    within(LIMIT, async {
        let mut ack = paho::packets::PubAck::new(paho::packets::PacketId::MIN);
        ack.properties.reason_string = Some("r".repeat(4096).into());
        let mut oversize = bytes::BytesMut::new();
        Packet::PubAck(ack).encode(&mut oversize).unwrap();
        let oversize = oversize.to_vec();
        let cases: Vec<(Vec<u8>, u8)> = vec![
            (vec![0x00, 0x00], 0x81),                               // reserved type 0
            (vec![0x20, 0x03, 0x00, 0x00, 0x00], 0x82),             // a second CONNACK
            (vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], 0x81), // PUBLISH QoS 3
            (vec![0x30, 0x04, 0x00, 0x01, b'#', 0x00], 0x82),       // PUBLISH wildcard topic
            (vec![0x40, 0x02, 0x00, 0x00], 0x82),                   // PUBACK id 0
            (vec![0x51, 0x02, 0x00, 0x01], 0x81),                   // PUBREC bad flags
            (vec![0x60, 0x02, 0x00, 0x01], 0x81),                   // PUBREL bad flags
            (vec![0x70, 0x01, 0x00], 0x81),                         // PUBCOMP truncated
            (vec![0x90, 0x03, 0x00, 0x01, 0x00], 0x82),             // SUBACK empty
            (vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x05], 0x81),       // UNSUBACK bad reason
            (vec![0xC0, 0x00], 0x82),                               // PINGREQ to a client
            (vec![0xD0, 0x01, 0x00], 0x81),                         // PINGRESP with a body
            (vec![0xE0, 0x01, 0x01], 0x81),                         // DISCONNECT bad reason
            (vec![0xF0, 0x01, 0x18], 0x82),                         // AUTH, no auth in use
            (vec![0x30, 0x80, 0x80, 0x40], 0x95),                   // 1 MB PUBLISH header
            (oversize, 0x95),                                       // 4 KB PUBACK
        ];
        for (bytes, reason) in cases {
            let server = TestServer::start().await.unwrap();
            let (c, _) = join(
                &server,
                opts("victim").maximum_packet_size(4096),
                SessionHandle::in_memory(SessionConfig::new()),
            )
            .await;
            server.faults().apply(
                Target::Client("victim".into()),
                Fault::SendRaw(Bytes::from(bytes.clone())),
            );
            assert_eq!(
                c.closed().await.unwrap_err().reason_code(),
                Some(reason),
                "{bytes:02x?}"
            );
            let code = DisconnectReasonCode::try_from(reason).unwrap();
            server
                .wait_for(|e| e.kind == EventKind::Closed(CloseReason::ClientDisconnect(code)))
                .await;
            server.shutdown().await;
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn inbound_topic_aliases_from_the_broker_are_resolved() {
    within(LIMIT, async {
        let server = TestServer::builder()
            .send_topic_aliases(true)
            .start()
            .await
            .unwrap();
        let (sub, mut inc) = join(
            &server,
            opts("aliased").topic_alias_maximum(4),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        sub.subscribe_to("al/#", QoS::AtLeastOnce).await.unwrap();
        for i in 0..3 {
            server.publish(msg("al/long/topic", QoS::AtLeastOnce, format!("{i}")));
        }
        for _ in 0..3 {
            assert_eq!(inc.recv().await.unwrap().topic(), "al/long/topic");
        }
        let aliased = server
            .sent()
            .into_iter()
            .filter(|p| matches!(p, Packet::Publish(p) if p.topic.is_empty() && p.properties.topic_alias.is_some()))
            .count();
        assert_eq!(aliased, 2, "the broker did not use its alias");
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn outbound_topic_aliases_reach_the_broker_and_subscribers_see_topics() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (sub, mut inc) = simple(&server, "plain").await;
        sub.subscribe_to("oa/#", QoS::AtLeastOnce).await.unwrap();
        let (publisher, _) = join(
            &server,
            opts("aliasing").outbound_topic_aliases(8),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        for i in 0..3 {
            publisher
                .publish(msg("oa/topic", QoS::AtLeastOnce, format!("{i}")))
                .await
                .unwrap();
        }
        for _ in 0..3 {
            assert_eq!(inc.recv().await.unwrap().topic(), "oa/topic");
        }
        let with_alias_only = server
            .received()
            .into_iter()
            .filter(|p| matches!(p, Packet::Publish(p) if p.topic.is_empty() && p.properties.topic_alias == Some(1)))
            .count();
        assert_eq!(with_alias_only, 2);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn manual_acks_out_of_order_reach_the_broker_in_arrival_order() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (sub, mut inc) = join(
            &server,
            opts("manual").manual_acks(true),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        sub.subscribe_to("m/#", QoS::AtLeastOnce).await.unwrap();
        for i in 0..4 {
            server.publish(msg("m/x", QoS::AtLeastOnce, format!("{i}")));
        }
        let mut msgs = Vec::new();
        for _ in 0..4 {
            msgs.push(inc.recv().await.unwrap());
        }
        for m in msgs.iter().rev() {
            assert_eq!(m.ack(), AckOutcome::Accepted);
        }
        let acks = server
            .wait_for_count(4, |e| matches!(e.received(), Some(Packet::PubAck(_))))
            .await;
        let sent_ids: Vec<_> = server
            .sent()
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => p.packet_id,
                _ => None,
            })
            .collect();
        let acked_ids: Vec<_> = acks
            .iter()
            .filter_map(|e| match e.received() {
                Some(Packet::PubAck(a)) => Some(a.packet_id),
                _ => None,
            })
            .collect();
        assert_eq!(acked_ids, sent_ids);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn an_inbound_qos2_message_resent_after_a_drop_is_not_delivered_twice() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let session = persistent();
        let o = opts("q2sub").clean_start(false);
        let (c1, mut inc1) = join(&server, o.clone(), session.clone()).await;
        c1.subscribe_to("q2/#", QoS::ExactlyOnce).await.unwrap();
        // Our PUBREC is lost with the link: the broker will resend the PUBLISH (DUP).
        server.faults().on(
            Trigger::nth(PacketType::PubRec, 1).from_client("q2sub"),
            Fault::Drop,
        );
        server.publish(msg("q2/x", QoS::ExactlyOnce, "once"));
        assert_eq!(inc1.recv().await.unwrap().payload(), &Bytes::from("once"));
        assert!(c1.closed().await.is_err());
        let (c2, mut inc2) = join(&server, o, session).await;
        assert!(c2.session_present());
        // The resend is acknowledged and completed, but not delivered again.
        server
            .wait_for(|e| {
                e.client_id.as_deref() == Some("q2sub")
                    && matches!(e.received(), Some(Packet::PubComp(_)))
            })
            .await;
        server.publish(msg("q2/x", QoS::ExactlyOnce, "next"));
        assert_eq!(inc2.recv().await.unwrap().payload(), &Bytes::from("next"));
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_will_is_published_when_the_link_drops() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (sub, mut inc) = simple(&server, "heir").await;
        sub.subscribe_to("wills/#", QoS::AtLeastOnce).await.unwrap();
        let will = Will {
            topic: "wills/a".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let (dying, _) = join(
            &server,
            opts("dying").will(will),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        server
            .faults()
            .apply(Target::Client("dying".into()), Fault::Drop);
        assert!(dying.closed().await.is_err());
        assert_eq!(inc.recv().await.unwrap().payload(), &Bytes::from("bye"));
        server.shutdown().await;
    })
    .await
}

struct Scripted;

impl Authenticator for Scripted {
    fn method(&self) -> &str {
        "SCRIPT"
    }
    fn initial_data(&mut self, _reauth: bool) -> Result<Option<Bytes>, Error> {
        Ok(None)
    }
    fn challenge(&mut self, data: Option<&Bytes>) -> Result<Option<Bytes>, Error> {
        match data.map(|d| &d[..]) {
            Some(b"nonce") => Ok(Some(Bytes::from_static(b"proof"))),
            other => Err(Error::Auth(format!("unexpected challenge {other:?}"))),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn enhanced_authentication_and_reauthentication_with_the_broker() {
    within(LIMIT, async {
        let server = TestServer::builder()
            .authenticator(ChallengeResponse::new("SCRIPT").round("nonce", "proof"))
            .start()
            .await
            .unwrap();
        let (c, _) = join(
            &server,
            opts("authed").authenticator(Scripted),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await;
        c.reauthenticate().await.unwrap();
        assert!(!c.is_closed());
        // A wrong method is refused with CONNACK 0x8C.
        struct Wrong;
        impl Authenticator for Wrong {
            fn method(&self) -> &str {
                "OTHER"
            }
            fn initial_data(&mut self, _: bool) -> Result<Option<Bytes>, Error> {
                Ok(None)
            }
            fn challenge(&mut self, _: Option<&Bytes>) -> Result<Option<Bytes>, Error> {
                Ok(None)
            }
        }
        let err = Client::connect(
            server.connect_duplex(),
            opts("wrong").authenticator(Wrong).build().unwrap(),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason_code(), Some(0x8C));
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn broker_limits_are_checked_before_sending() {
    within(LIMIT, async {
        let server = TestServer::builder()
            .maximum_packet_size(200)
            .maximum_qos(QoS::AtLeastOnce)
            .subscription_identifiers_available(false)
            .start()
            .await
            .unwrap();
        let (c, _) = simple(&server, "limited").await;
        let big = c.publish(msg("l/x", QoS::AtMostOnce, vec![0u8; 300])).await;
        assert!(
            matches!(big, Err(Error::PacketTooLarge { max: 200, .. })),
            "{big:?}"
        );
        let q2 = c.publish(msg("l/x", QoS::ExactlyOnce, "x")).await;
        assert_eq!(q2.unwrap_err().reason_code(), Some(0x9B));
        let sid = c
            .subscribe(
                vec![Subscription::new("l/#", SubscriptionOptions::default())],
                SubscribeProperties {
                    subscription_identifier: Some(1),
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(sid.unwrap_err().reason_code(), Some(0xA1));
        // The broker, which enforces these limits by disconnecting, saw none of it.
        assert!(!c.is_closed());
        assert_eq!(publishes_from(&server, "limited"), 0);
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_broker_overshooting_receive_maximum_like_mosquitto() {
    within(LIMIT, async {
        for strict in [false, true] {
            let server = TestServer::builder()
                .flow_control(FlowControl::ReleaseAtPubRec)
                .start()
                .await
                .unwrap();
            let (sub, mut inc) = join(
                &server,
                opts("over")
                    .receive_maximum(2)
                    .strict_receive_maximum(strict),
                SessionHandle::in_memory(SessionConfig::new()),
            )
            .await;
            sub.subscribe_to("o/#", QoS::ExactlyOnce).await.unwrap();
            // PUBRELs withheld: unfinished QoS 2 deliveries (PUBREC sent, PUBREL awaited) pile up
            // beyond our Receive Maximum of 2, since this broker stops counting them at PUBREC.
            server.faults().withhold(&[PacketType::PubRel]);
            for i in 0..5 {
                server.publish(msg("o/x", QoS::ExactlyOnce, format!("{i}")));
            }
            let mut got = 0;
            while inc.recv().await.is_some() {
                got += 1;
                if !strict && got == 5 {
                    break;
                }
            }
            if strict {
                assert_eq!(sub.closed().await.unwrap_err().reason_code(), Some(0x93));
            } else {
                assert_eq!(got, 5);
                assert!(!sub.is_closed());
            }
            server.shutdown().await;
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn publish_outcomes_carry_the_server_reason_codes() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let (c, _) = simple(&server, "nobody-listens").await;
        let out = c
            .publish(msg("empty/x", QoS::AtLeastOnce, "x"))
            .await
            .unwrap();
        assert!(matches!(out, PublishOutcome::PubAck(_)));
        // No subscriber: 0x10 No matching subscribers (still a success).
        assert!(out.reason_code() == 0x10 || out.reason_code() == 0x00);
        assert!(out.is_success());
        server.shutdown().await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn no_task_is_left_running_after_disconnect() {
    within(LIMIT, async {
        let server = TestServer::start().await.unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let (c, inc) = simple(&server, "tidy").await;
        let dispatcher = tokio::spawn(inc.dispatch(|_: &paho::Message| true));
        c.subscribe_to("t/#", QoS::AtLeastOnce).await.unwrap();
        c.publish(msg("t/x", QoS::ExactlyOnce, "x")).await.unwrap();
        c.disconnect_normally().await.unwrap();
        dispatcher.await.unwrap();
        server
            .wait_for(|e| {
                e.kind
                    == EventKind::Closed(CloseReason::ClientDisconnect(
                        DisconnectReasonCode::NormalDisconnection,
                    ))
            })
            .await;
        // The client's task and the server's task for this connection are gone.
        for _ in 0..1000 {
            if metrics.num_alive_tasks() == before {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before);
        server.shutdown().await;
    })
    .await
}
