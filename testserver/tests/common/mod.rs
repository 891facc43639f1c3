//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use paho_packets::{
    Connect, ConnectProperties, Packet, PacketId, PubAck, PubComp, PubRec, PubRel, QoS, Subscribe,
    Subscription, SubscriptionOptions,
};
use paho_testserver::raw::RawClient;
use paho_testserver::TestServer;
use tokio::io::DuplexStream;

pub type Client = RawClient<DuplexStream>;

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// A connected raw client with a clean session.
pub async fn client(server: &TestServer, id: &str) -> Client {
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c.connect(id).await.unwrap();
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    c
}

/// A connected raw client with a persistent session.
pub async fn persistent(server: &TestServer, id: &str, receive_max: Option<u16>) -> (Client, bool) {
    let mut c = RawClient::new(server.connect_duplex());
    let ack = c
        .connect_with(Connect {
            clean_start: false,
            client_id: id.into(),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: receive_max,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    (c, ack.session_present)
}

pub async fn subscribe(
    c: &mut Client,
    id: u16,
    filter: &str,
    options: SubscriptionOptions,
) -> Packet {
    c.send(Subscribe {
        packet_id: pid(id),
        properties: Default::default(),
        subscriptions: vec![Subscription::new(filter, options)],
    })
    .await
    .unwrap();
    c.expect().await.unwrap()
}

pub async fn sub(c: &mut Client, filter: &str, qos: QoS) {
    let ack = c.subscribe(1, filter, qos).await.unwrap();
    assert!(!ack.reason_codes[0].is_error(), "{ack:?}");
}

pub async fn puback(c: &mut Client, id: PacketId) {
    c.send(PubAck::new(id)).await.unwrap();
}

pub async fn pubrec(c: &mut Client, id: PacketId) {
    c.send(PubRec::new(id)).await.unwrap();
}

pub async fn pubrel(c: &mut Client, id: PacketId) {
    c.send(PubRel::new(id)).await.unwrap();
}

pub async fn pubcomp(c: &mut Client, id: PacketId) {
    c.send(PubComp::new(id)).await.unwrap();
}
