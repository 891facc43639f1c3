//! A scripted MQTT peer over an in-memory pipe: the test plays the server packet by packet.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use paho::packets::{
    decode, ConnAck, Connect, Packet, PacketId, PubAck, Publish, QoS, SubAck, SubAckReasonCode,
    MAX_PACKET_SIZE,
};
use paho::session::{MemoryStore, SessionConfig};
use paho::{Client, ConnectOptions, Incoming, SessionHandle};
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub mod stores;

/// The virtual-time bound on a paused-clock test's body.
pub const LIMIT: Duration = Duration::from_secs(600);

/// Runs a test body, failing it if it has not finished after `limit` of *virtual* time. On
/// tokio's paused clock the runtime jumps to the next timer whenever every task is idle, so a
/// test stuck waiting for something that never comes (while keepalive timers keep firing)
/// fails at once with this message instead of hanging CI. No wall-clock time is involved.
pub async fn within<F: Future>(limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test is stuck: not finished after {limit:?} of virtual time"),
    }
}

pub struct Peer {
    io: DuplexStream,
    buf: BytesMut,
}

pub fn pipe() -> (DuplexStream, Peer) {
    pipe_with_capacity(1 << 20)
}

/// A pipe holding at most `capacity` bytes in each direction: a peer that stops reading makes
/// the client's writes block, as a full socket buffer does.
pub fn pipe_with_capacity(capacity: usize) -> (DuplexStream, Peer) {
    let (a, b) = tokio::io::duplex(capacity);
    (
        a,
        Peer {
            io: b,
            buf: BytesMut::new(),
        },
    )
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn publish(topic: &str, qos: QoS, payload: &str) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

pub fn server_publish(topic: &str, qos: QoS, id: u16, payload: &str) -> Publish {
    let mut p = publish(topic, qos, payload);
    p.packet_id = (qos != QoS::AtMostOnce).then(|| pid(id));
    p
}

impl Peer {
    /// The next packet from the client; `None` at EOF.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, MAX_PACKET_SIZE).expect("client sent garbage") {
                return Some(p);
            }
            let n = self.io.read_buf(&mut self.buf).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn expect(&mut self) -> Packet {
        self.recv().await.expect("connection closed")
    }

    pub async fn expect_publish(&mut self) -> Publish {
        match self.expect().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: impl Into<Packet>) {
        let mut b = BytesMut::new();
        p.into().encode(&mut b).unwrap();
        self.io.write_all(&b).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// Like [`Peer::send_raw`], but a closed pipe is an answer, not a failure (for a flood
    /// that runs until the client gives up).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Reads CONNECT and answers `connack`.
    pub async fn accept(&mut self, connack: ConnAck) -> Connect {
        let c = match self.expect().await {
            Packet::Connect(c) => *c,
            other => panic!("expected CONNECT, got {other:?}"),
        };
        self.send(Packet::ConnAck(Box::new(connack))).await;
        c
    }

    /// Everything the client sends until it closes the pipe.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(p) = self.recv().await {
            v.push(p);
        }
        v
    }

    pub async fn puback(&mut self, id: PacketId) {
        self.send(PubAck::new(id)).await;
    }

    pub async fn suback(&mut self, id: PacketId, codes: Vec<SubAckReasonCode>) {
        self.send(SubAck {
            packet_id: id,
            properties: Default::default(),
            reason_codes: codes,
        })
        .await;
    }
}

pub fn options() -> paho::ConnectOptionsBuilder {
    ConnectOptions::builder().client_id("test-client")
}

pub fn memory_session(expiry: u32) -> SessionHandle<MemoryStore> {
    SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(expiry))
}

/// Connects a client through a pipe to a scripted peer that answers `connack`.
pub async fn connect_with(
    opts: ConnectOptions,
    session: SessionHandle<MemoryStore>,
    connack: ConnAck,
) -> (Client, Incoming, Peer, Connect) {
    let (io, mut peer) = pipe();
    let server = tokio::spawn(async move {
        let c = peer.accept(connack).await;
        (peer, c)
    });
    let (client, incoming) = Client::connect(io, opts, session).await.unwrap();
    let (peer, c) = server.await.unwrap();
    (client, incoming, peer, c)
}

pub async fn connect_default() -> (Client, Incoming, Peer) {
    let (c, i, p, _) = connect_with(
        options().build().unwrap(),
        memory_session(0),
        ConnAck::default(),
    )
    .await;
    (c, i, p)
}
