//! [`RawClient`]: a minimal MQTT v5 client that sends and receives whole packets and does
//! nothing on its own (no acks, no keepalive), for tests that script both sides.

use std::time::Duration;

use bytes::BytesMut;
use paho_packets::{
    decode, ConnAck, Connect, ConnectProperties, Packet, PacketId, Publish, QoS, SubAck, Subscribe,
    Subscription, SubscriptionOptions, MAX_PACKET_SIZE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// How long [`RawClient::recv`] waits by default.
const DEFAULT_RECV_LIMIT: Duration = Duration::from_secs(60);

/// A packet-level client over any transport: [`RawClient::send`] writes one packet,
/// [`RawClient::recv`] reads the next one. Nothing is answered automatically.
///
/// Reads are bounded (60 s of tokio time by default, free under a paused clock; see
/// [`RawClient::set_recv_limit`]), so a test waiting for a packet that never comes fails
/// with [`Error::Timeout`] instead of hanging.
#[derive(Debug)]
pub struct RawClient<T> {
    io: T,
    rbuf: BytesMut,
    max_packet_size: u32,
    recv_limit: Option<Duration>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawClient<T> {
    /// Wraps a connected transport (a [`tokio::io::DuplexStream`], a `TcpStream`, ...).
    pub fn new(io: T) -> Self {
        RawClient {
            io,
            rbuf: BytesMut::with_capacity(8 * 1024),
            max_packet_size: MAX_PACKET_SIZE,
            recv_limit: Some(DEFAULT_RECV_LIMIT),
        }
    }

    /// The largest packet [`RawClient::recv`] accepts (default: no limit).
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// How long [`RawClient::recv`] (and everything that reads) waits for a packet before it
    /// fails with [`Error::Timeout`]; `None` waits for ever (only inside the test's own
    /// `tokio::time::timeout`). Default: 60 s of tokio time.
    pub fn set_recv_limit(&mut self, limit: Option<Duration>) {
        self.recv_limit = limit;
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: impl Into<Packet>) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        packet.into().encode(&mut buf)?;
        self.send_raw(&buf).await
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads the next packet; `Ok(None)` when the peer closed the connection cleanly
    /// between packets; [`Error::Timeout`] when nothing whole arrived within the limit
    /// ([`RawClient::set_recv_limit`]). Cancel safe (bytes read so far stay buffered).
    pub async fn recv(&mut self) -> Result<Option<Packet>, Error> {
        match self.recv_limit {
            Some(limit) => tokio::time::timeout(limit, self.recv_unbounded())
                .await
                .unwrap_or(Err(Error::Timeout("a packet from the peer"))),
            None => self.recv_unbounded().await,
        }
    }

    async fn recv_unbounded(&mut self) -> Result<Option<Packet>, Error> {
        loop {
            if let Some(p) = decode(&mut self.rbuf, self.max_packet_size)? {
                return Ok(Some(p));
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) if self.rbuf.is_empty() => return Ok(None),
                Ok(0) => return Err(Error::Closed),
                Ok(_) => {}
                // A reset after the server's last packet is a close, not a test failure.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the next packet, failing if the connection closed.
    pub async fn expect(&mut self) -> Result<Packet, Error> {
        self.recv().await?.ok_or(Error::Closed)
    }

    /// Reads the next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self) -> Result<Publish, Error> {
        match self.expect().await? {
            Packet::Publish(p) => Ok(p),
            got => Err(Error::Unexpected {
                expected: "PUBLISH",
                got: Box::new(got),
            }),
        }
    }

    /// Sends a CONNECT with a clean start and this client id, and returns the CONNACK.
    pub async fn connect(&mut self, client_id: &str) -> Result<ConnAck, Error> {
        self.connect_with(Connect {
            clean_start: true,
            client_id: client_id.into(),
            ..Default::default()
        })
        .await
    }

    /// Sends a CONNECT that keeps the session (clean start off, Session Expiry Interval
    /// `expiry` seconds) and returns the CONNACK.
    pub async fn connect_persistent(
        &mut self,
        client_id: &str,
        expiry: u32,
    ) -> Result<ConnAck, Error> {
        self.connect_with(Connect {
            clean_start: false,
            client_id: client_id.into(),
            properties: ConnectProperties {
                session_expiry_interval: Some(expiry),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
    }

    /// Sends this CONNECT and returns the CONNACK.
    pub async fn connect_with(&mut self, connect: Connect) -> Result<ConnAck, Error> {
        self.send(Packet::from(connect)).await?;
        match self.expect().await? {
            Packet::ConnAck(c) => Ok(*c),
            got => Err(Error::Unexpected {
                expected: "CONNACK",
                got: Box::new(got),
            }),
        }
    }

    /// Subscribes to one filter at `qos` with packet id `id` and returns the SUBACK (which
    /// must be the next packet).
    pub async fn subscribe(&mut self, id: u16, filter: &str, qos: QoS) -> Result<SubAck, Error> {
        let sub = Subscribe {
            packet_id: packet_id(id),
            properties: Default::default(),
            subscriptions: vec![Subscription::new(filter, SubscriptionOptions::qos(qos))],
        };
        self.send(sub).await?;
        match self.expect().await? {
            Packet::SubAck(s) => Ok(s),
            got => Err(Error::Unexpected {
                expected: "SUBACK",
                got: Box::new(got),
            }),
        }
    }

    /// The transport, for closing it or injecting faults.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.io
    }
}

/// A packet id from a number, with 0 mapped to 1 (0 is not a valid id).
pub fn packet_id(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or(PacketId::MIN)
}

/// A PUBLISH of `payload` to `topic` at `qos`, with packet id `id` when QoS > 0.
pub fn publish(topic: &str, payload: impl Into<bytes::Bytes>, qos: QoS, id: u16) -> Publish {
    Publish {
        qos,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| packet_id(id)),
        payload: payload.into(),
        ..Default::default()
    }
}
