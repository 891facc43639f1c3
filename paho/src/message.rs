//! Received messages: [`Message`], the [`Incoming`] stream, and acknowledgement.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use paho_packets::{Publish, PublishProperties, QoS};
use paho_session::AckToken;
use tokio::sync::mpsc;

use crate::client::Command;

/// What became of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckOutcome {
    /// Handed to the connection. The PUBACK/PUBREC goes out once every message that arrived
    /// before this one has been acknowledged (MQTT-4.6.0-2).
    Accepted,
    /// Nothing to acknowledge: a QoS 0 message, or the connection acknowledges automatically.
    NotNeeded,
    /// The connection this message arrived on has closed. Nothing is sent; this is not an
    /// error: the server redelivers the message on the next connection of the session.
    ConnectionClosed,
}

/// A message received from the server, with its topic always resolved (never an alias).
pub struct Message {
    publish: Publish,
    ack: Option<(AckToken, mpsc::WeakUnboundedSender<Command>)>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.publish.topic)
            .field("qos", &self.publish.qos)
            .field("retain", &self.publish.retain)
            .field("dup", &self.publish.dup)
            .field("payload_len", &self.publish.payload.len())
            .field("manual_ack", &self.ack.is_some())
            .finish_non_exhaustive()
    }
}

impl Message {
    pub(crate) fn new(
        publish: Publish,
        ack: Option<(AckToken, mpsc::WeakUnboundedSender<Command>)>,
    ) -> Self {
        Message { publish, ack }
    }

    /// A message built by hand (for testing handlers and routers); it has nothing to ack.
    pub fn from_publish(publish: Publish) -> Self {
        Message { publish, ack: None }
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        &self.publish.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.publish.payload
    }

    /// The QoS it was delivered with.
    pub fn qos(&self) -> QoS {
        self.publish.qos
    }

    /// The RETAIN flag.
    pub fn retain(&self) -> bool {
        self.publish.retain
    }

    /// The DUP flag (a redelivery of a QoS 1 message).
    pub fn dup(&self) -> bool {
        self.publish.dup
    }

    /// Its properties (never a topic alias).
    pub fn properties(&self) -> &PublishProperties {
        &self.publish.properties
    }

    /// The identifiers of the subscriptions that matched it.
    pub fn subscription_identifiers(&self) -> &[u32] {
        &self.publish.properties.subscription_identifiers
    }

    /// The PUBLISH as received, topic resolved.
    pub fn publish(&self) -> &Publish {
        &self.publish
    }

    /// Takes the PUBLISH out (a manual ack not yet made is then never made: the server
    /// redelivers on the next connection, and later acks of this connection wait behind it).
    pub fn into_publish(self) -> Publish {
        self.publish
    }

    /// Whether this message still needs [`ack`](Message::ack) (manual acknowledgement of a
    /// QoS 1/2 message).
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Acknowledges the message (manual acknowledgement mode). PUBACK/PUBREC go out in the
    /// order the messages arrived, whatever order they are acked in. Acking twice does
    /// nothing more. Never blocks and never fails: after the connection closed it returns
    /// [`AckOutcome::ConnectionClosed`] and sends nothing.
    pub fn ack(&self) -> AckOutcome {
        match &self.ack {
            None => AckOutcome::NotNeeded,
            Some((token, tx)) => send_ack(*token, tx),
        }
    }
}

fn send_ack(token: AckToken, tx: &mpsc::WeakUnboundedSender<Command>) -> AckOutcome {
    match tx.upgrade() {
        Some(tx) if tx.send(Command::Ack(token)).is_ok() => AckOutcome::Accepted,
        _ => AckOutcome::ConnectionClosed,
    }
}

/// The messages received on one connection, in arrival order.
///
/// Taking a message is what lets the server send more: with automatic acknowledgement, a QoS
/// 1/2 message is acknowledged when [`recv`](Incoming::recv) returns it, and the server may
/// have at most the advertised Receive Maximum unacknowledged. The connection's task never
/// waits for the application: it queues messages here. QoS 0 messages, which MQTT does not
/// flow-control, queue up to
/// [`max_queued_qos0`](crate::ConnectOptionsBuilder::max_queued_qos0); later ones are dropped.
///
/// The stream ends (`None`) when the connection has closed and every message received before
/// was taken. Dropping it acknowledges (and drops) the messages still queued in it, and makes
/// the connection do the same with every later message.
/// It also implements [`futures_util::Stream`].
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Delivered>,
    tx: mpsc::WeakUnboundedSender<Command>,
    manual: bool,
    backlog: Arc<Backlog>,
}

/// What waits in [`Incoming`] for the application, shared with the connection's task, which
/// bounds it: QoS 0 messages by count and bytes (newer ones dropped), and all messages by
/// bytes (reading from the socket pauses; see
/// [`max_queued_bytes`](crate::ConnectOptionsBuilder::max_queued_bytes)).
#[derive(Debug)]
pub(crate) struct Backlog {
    qos0: AtomicUsize,
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Woken when the application takes a message that brings the bytes under the bound.
    pub(crate) drained: tokio::sync::Notify,
}

impl Backlog {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Backlog {
            qos0: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_bytes,
            drained: tokio::sync::Notify::new(),
        }
    }

    /// The memory a queued message is counted for: its payload and topic (the rest is small
    /// and bounded per message).
    pub(crate) fn size_of(p: &Publish) -> usize {
        p.payload.len() + p.topic.len() + 64
    }

    pub(crate) fn qos0(&self) -> usize {
        self.qos0.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn over(&self) -> bool {
        self.bytes() > self.max_bytes
    }

    pub(crate) fn add(&self, p: &Publish) {
        if p.qos == QoS::AtMostOnce {
            self.qos0.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(Self::size_of(p), Ordering::Relaxed);
    }

    /// Undoes [`add`](Backlog::add) for a message that was taken, or never reached the
    /// application.
    pub(crate) fn take(&self, p: &Publish) {
        if p.qos == QoS::AtMostOnce {
            self.qos0.fetch_sub(1, Ordering::Relaxed);
        }
        let n = Self::size_of(p);
        let before = self.bytes.fetch_sub(n, Ordering::Relaxed);
        if before > self.max_bytes && before - n <= self.max_bytes {
            self.drained.notify_one();
        }
    }
}

pub(crate) struct Delivered {
    pub(crate) publish: Publish,
    pub(crate) token: Option<AckToken>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("queued", &self.rx.len())
            .field("manual_acks", &self.manual)
            .finish()
    }
}

impl Incoming {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Delivered>,
        tx: mpsc::WeakUnboundedSender<Command>,
        manual: bool,
        backlog: Arc<Backlog>,
    ) -> Self {
        Incoming {
            rx,
            tx,
            manual,
            backlog,
        }
    }

    /// The bytes of the messages waiting here (payloads and topics, plus a small per-message
    /// allowance), which [`max_queued_bytes`](crate::ConnectOptionsBuilder::max_queued_bytes)
    /// bounds.
    pub fn queued_bytes(&self) -> usize {
        self.backlog.bytes()
    }

    fn wrap(&self, d: Delivered) -> Message {
        self.backlog.take(&d.publish);
        match d.token {
            Some(token) if self.manual => Message::new(d.publish, Some((token, self.tx.clone()))),
            Some(token) => {
                let _ = send_ack(token, &self.tx);
                Message::new(d.publish, None)
            }
            None => Message::new(d.publish, None),
        }
    }

    /// The next message, or `None` once the connection has closed and all were taken.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken (and auto-acknowledged) only when this returns it.
    pub async fn recv(&mut self) -> Option<Message> {
        let d = self.rx.recv().await?;
        Some(self.wrap(d))
    }

    /// A message if one is queued now.
    pub fn try_recv(&mut self) -> Option<Message> {
        let d = self.rx.try_recv().ok()?;
        Some(self.wrap(d))
    }

    /// Passes every message to `handler` until the connection closes (the handler chain).
    /// With automatic acknowledgement a message is acknowledged when it is taken, just before
    /// the handler is called. Handlers run on the caller's task, one at a time; one that
    /// publishes should use [`Client::start_publish`](crate::Client::start_publish), which
    /// never waits.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe between messages (see [`recv`](Incoming::recv)).
    pub async fn dispatch(mut self, handler: impl crate::Handler) {
        while let Some(m) = self.recv().await {
            handler.handle(&m);
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Messages still queued here would vanish with the channel and their acks would never
        // be made; since PUBACK/PUBREC leave in arrival order, every later ack of the connection
        // would then wait behind them and the server's quota for us would run out for good.
        // Acknowledge them, as the connection does with the messages that arrive after this.
        // Closing first makes the connection's later sends fail (and take that path) so that
        // none slips in behind the drain.
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            self.backlog.take(&d.publish);
            if let Some(token) = d.token {
                let _ = send_ack(token, &self.tx);
            }
        }
    }
}

impl futures_util::Stream for Incoming {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(d)) => Poll::Ready(Some(self.wrap(d))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
