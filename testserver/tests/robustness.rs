//! Bad input never panics the server, and volume does not stall it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use paho_packets::{
    Auth, AuthReasonCode, Connect, ConnectProperties, Disconnect, DisconnectReasonCode, Packet,
    PubAck, PubRel, QoS, Subscribe, Subscription, SubscriptionOptions, Unsubscribe,
};
use paho_testserver::raw::{publish, RawClient};
use paho_testserver::{FlowControl, TestServer};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn valid_packets() -> Vec<Packet> {
    let mut alias = publish("a/b", "x", QoS::ExactlyOnce, 3);
    alias.properties.topic_alias = Some(1);
    let mut reauth = Auth::new(AuthReasonCode::ReAuthenticate);
    reauth.properties.authentication_method = Some("m".into());
    vec![
        publish("a/b", "payload", QoS::AtMostOnce, 0).into(),
        publish("a/b", "payload", QoS::AtLeastOnce, 1).into(),
        alias.into(),
        Subscribe {
            packet_id: pid(2),
            properties: Default::default(),
            subscriptions: vec![Subscription::new(
                "$share/g/a/+",
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )],
        }
        .into(),
        Unsubscribe {
            packet_id: pid(4),
            properties: Default::default(),
            filters: vec!["a/#".into()],
        }
        .into(),
        PubAck::new(pid(1)).into(),
        PubRel::new(pid(3)).into(),
        Packet::PingReq,
        reauth.into(),
        Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage).into(),
    ]
}

#[tokio::test(start_paused = true)]
async fn mutated_and_random_input_never_panics() {
    let server = TestServer::builder()
        .maximum_packet_size(512)
        .start()
        .await
        .unwrap();
    // A subscriber that receives whatever gets through.
    let mut watcher = client(&server, "watcher").await;
    sub(&mut watcher, "#", QoS::ExactlyOnce).await;
    let packets = valid_packets();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..400 {
        let mut c = RawClient::new(server.connect_duplex());
        let connect = Connect {
            clean_start: round % 3 == 0,
            client_id: format!("fuzz{}", round % 7).into(),
            keep_alive: 5,
            properties: ConnectProperties {
                session_expiry_interval: Some(10),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut bytes = BytesMut::new();
        Packet::from(connect).encode(&mut bytes).unwrap();
        for _ in 0..rng.below(4) {
            packets[rng.below(packets.len())]
                .encode(&mut bytes)
                .unwrap();
        }
        match round % 4 {
            // Flip bytes of valid packets (the CONNECT too, sometimes).
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            // Append random bytes.
            2 => {
                for _ in 0..rng.below(64) {
                    bytes.extend_from_slice(&[rng.next() as u8]);
                }
            }
            // Truncate.
            _ => {
                let keep = rng.below(bytes.len());
                bytes.truncate(keep);
            }
        }
        let _ = c.send_raw(&bytes).await;
        // Read whatever the server answers until it closes or goes quiet.
        while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(20), c.recv()).await {}
    }
    // Still serving, and no task panicked (shutdown would panic).
    let mut last = client(&server, "after").await;
    last.send(Packet::PingReq).await.unwrap();
    assert_eq!(last.expect().await.unwrap(), Packet::PingResp);
    drop(watcher);
    server.shutdown().await;
    assert!(server.task_failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_qos1_and_qos2_through_receive_maximum_2() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let server = TestServer::builder()
            .receive_maximum(2)
            .flow_control(FlowControl::Honour)
            .start()
            .await
            .unwrap();
        let (mut s, _) = persistent(&server, "s", Some(2)).await;
        sub(&mut s, "t", qos).await;
        let (p, _) = persistent(&server, "p", None).await;
        let (mut p_rd, mut p_wr) = {
            let io = p.into_inner();
            tokio::io::split(io)
        };
        const N: u16 = 10_000;
        // Publisher: keeps at most 2 unacknowledged (the server's Receive Maximum).
        let publisher = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut rbuf = BytesMut::new();
            let mut inflight = 0;
            let mut next = 1u16;
            let mut done = 0;
            while done < N {
                while inflight < 2 && next <= N {
                    let mut b = BytesMut::new();
                    Packet::from(publish(
                        "t",
                        Bytes::from(next.to_be_bytes().to_vec()),
                        qos,
                        next,
                    ))
                    .encode(&mut b)
                    .unwrap();
                    p_wr.write_all(&b).await.unwrap();
                    inflight += 1;
                    next += 1;
                }
                let packet = loop {
                    if let Some(p) = paho_packets::decode(&mut rbuf, u32::MAX).unwrap() {
                        break p;
                    }
                    assert!(p_rd.read_buf(&mut rbuf).await.unwrap() > 0);
                };
                match packet {
                    Packet::PubAck(_) | Packet::PubComp(_) => {
                        inflight -= 1;
                        done += 1;
                    }
                    Packet::PubRec(r) => {
                        let mut b = BytesMut::new();
                        Packet::from(PubRel::new(r.packet_id))
                            .encode(&mut b)
                            .unwrap();
                        p_wr.write_all(&b).await.unwrap();
                    }
                    other => panic!("{other:?}"),
                }
            }
        });
        let mut received = 0u16;
        while received < N {
            match s.expect().await.unwrap() {
                Packet::Publish(m) => {
                    received += 1;
                    assert_eq!(
                        &m.payload[..],
                        &received.to_be_bytes()[..],
                        "in order, no loss, no duplicate"
                    );
                    let (inflight, _) = server.outbound("s").unwrap();
                    assert!(
                        inflight <= 2,
                        "never more than the client's Receive Maximum"
                    );
                    match qos {
                        QoS::AtLeastOnce => puback(&mut s, m.packet_id.unwrap()).await,
                        _ => pubrec(&mut s, m.packet_id.unwrap()).await,
                    }
                }
                Packet::PubRel(r) => pubcomp(&mut s, r.packet_id).await,
                other => panic!("{other:?}"),
            }
        }
        publisher.await.unwrap();
        server.shutdown().await;
    }
}
