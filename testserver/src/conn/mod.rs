//! One client connection: the task that reads packets, applies faults, answers, and writes
//! what the broker routes to it.
//!
//! The task owns both halves of the transport and is the only writer. Everything it sends,
//! its own replies and deliveries routed from other connections (which arrive through its
//! command channel), passes through [`Conn::queue_out`], where withholding and outbound
//! topic aliases are applied. Reading stops while the write buffer is large, so a client
//! that does not read slows the server down instead of growing memory without bound.
//!
//! This module holds the task (the `select!` loop, faults, output); `handle` what each
//! packet does, and `auth` the AUTH exchanges.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use paho_packets::{
    decode, Connect, ConnectReasonCode, Disconnect, DisconnectReasonCode, MqttString, Packet,
    PacketType, Publish,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::broker::ConnCmd;
use crate::config::Config;
use crate::events::{lock, CloseReason, ConnId, Event, EventKind};
use crate::faults::{ConnFault, Fault, Held, When};
use crate::server::{stopped, Shared};

mod auth;
mod handle;

/// Stop reading while this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 1 << 20;
/// How long a closing connection may take to flush what it queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Phase {
    AwaitConnect,
    /// Enhanced authentication of the CONNECT is in progress.
    Authenticating {
        connect: Box<Connect>,
        method: String,
        step: u32,
    },
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Drop the link at once.
    Abort,
    /// Write what is queued, then close.
    Flush,
}

pub(crate) struct Conn {
    shared: Arc<Shared>,
    id: ConnId,
    config: Config,
    client_id: Option<String>,
    phase: Phase,
    tx: mpsc::UnboundedSender<ConnCmd>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    held: Held,
    /// Set by [`Fault::Resume`]: process what was read before the silence.
    resumed: bool,
    reading: bool,
    writing: bool,
    keep_alive: Option<Duration>,
    last_rx: Instant,
    alias_in: HashMap<u16, MqttString>,
    /// Topic -> (alias, last use) for aliases sent to the client.
    alias_out: HashMap<MqttString, (u16, u64)>,
    alias_out_max: u16,
    alias_clock: u64,
    /// The client's Maximum Packet Size, which a new alias must not push a delivery over.
    max_packet_out: u32,
    /// Inbound QoS 1/2 packet ids whose final ack (PUBACK, PUBCOMP) was not written yet:
    /// what the server's Receive Maximum limits.
    inbound_unacked: HashSet<u16>,
    /// Replies of the packet being handled, queued (or discarded by a fault) afterwards.
    replies: Vec<Packet>,
    close: Option<(Close, CloseReason)>,
    publish_will: bool,
    auth_method: Option<String>,
    reauth_step: Option<u32>,
}

impl Conn {
    pub(crate) fn new(shared: Arc<Shared>, id: ConnId, tx: mpsc::UnboundedSender<ConnCmd>) -> Self {
        let config = lock(&shared.broker).config.clone();
        Conn {
            shared,
            id,
            config,
            client_id: None,
            phase: Phase::AwaitConnect,
            tx,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::new(),
            held: Held::new(),
            resumed: false,
            reading: true,
            writing: true,
            keep_alive: None,
            last_rx: Instant::now(),
            alias_in: HashMap::new(),
            alias_out: HashMap::new(),
            alias_out_max: 0,
            alias_clock: 0,
            max_packet_out: paho_packets::MAX_PACKET_SIZE,
            inbound_unacked: HashSet::new(),
            replies: Vec::new(),
            close: None,
            publish_will: true,
            auth_method: None,
            reauth_step: None,
        }
    }

    /// Runs the connection until it closes or the server shuts down.
    pub(crate) async fn run<T>(
        mut self,
        io: T,
        mut rx: mpsc::UnboundedReceiver<ConnCmd>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        while self.close.is_none() {
            if self.resumed {
                // Packets that were already buffered when the connection went silent.
                self.resumed = false;
                self.process();
                continue;
            }
            let ka_deadline = self
                .keep_alive
                .filter(|_| self.config.enforce_keep_alive && self.reading)
                // MQTT-3.1.2-22: one and a half times the keepalive.
                .map(|k| self.last_rx + k + k / 2);
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            let can_read = self.reading && self.wbuf.len() < WRITE_HIGH_WATER;
            let can_write = self.writing && !self.wbuf.is_empty();
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => self.on_shutdown(),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => self.on_shutdown(),
                },
                r = wr.write_buf(&mut self.wbuf), if can_write => {
                    if !matches!(r, Ok(n) if n > 0) {
                        self.close = Some((Close::Abort, CloseReason::LinkClosed));
                    }
                }
                r = rd.read_buf(&mut self.rbuf), if can_read => match r {
                    Ok(n) if n > 0 => self.process(),
                    _ => self.close = Some((Close::Abort, CloseReason::LinkClosed)),
                },
                _ = tokio::time::sleep_until(ka_deadline.unwrap_or(far)), if ka_deadline.is_some() => {
                    self.server_disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    let replies = mem::take(&mut self.replies);
                    replies.into_iter().for_each(|p| self.queue_out(p));
                }
            }
        }
        let (how, reason) = self
            .close
            .take()
            .unwrap_or((Close::Abort, CloseReason::LinkClosed));
        if how == Close::Flush && self.writing && !self.wbuf.is_empty() {
            let wbuf = mem::take(&mut self.wbuf);
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
                wr.write_all(&wbuf).await?;
                wr.flush().await?;
                wr.shutdown().await
            })
            .await;
        }
        drop((rd, wr));
        self.finish(reason);
    }

    fn on_shutdown(&mut self) {
        if matches!(self.phase, Phase::Connected) {
            self.write_packet(Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::ServerShuttingDown,
            )));
        }
        self.publish_will = false;
        self.close = Some((Close::Flush, CloseReason::Shutdown));
    }

    fn command(&mut self, cmd: ConnCmd) {
        match cmd {
            ConnCmd::Send(p) => self.queue_out(p),
            ConnCmd::Fault(ConnFault::Apply(f)) => self.apply_fault(f, false),
            ConnCmd::Fault(ConnFault::ReleaseWithheld) => {
                let held = mem::take(&mut self.held);
                held.into_iter().for_each(|p| self.write_packet(p));
            }
            ConnCmd::TakenOver => {
                self.publish_will = false;
                self.server_disconnect(DisconnectReasonCode::SessionTakenOver);
                let replies = mem::take(&mut self.replies);
                replies.into_iter().for_each(|p| self.queue_out(p));
            }
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    fn process(&mut self) {
        while self.close.is_none() && self.reading {
            let max = self.config.max_inbound_packet();
            match decode(&mut self.rbuf, max) {
                Ok(None) => return,
                Ok(Some(packet)) => self.on_packet(packet),
                Err(e) => {
                    self.log(EventKind::Malformed(e.to_string()));
                    let reason = e.disconnect_reason();
                    if matches!(self.phase, Phase::Connected) {
                        self.server_disconnect(reason);
                    } else {
                        let code = match e {
                            paho_packets::Error::UnsupportedProtocol { .. } => {
                                ConnectReasonCode::UnsupportedProtocolVersion
                            }
                            _ => ConnectReasonCode::try_from(reason.as_u8())
                                .unwrap_or(ConnectReasonCode::MalformedPacket),
                        };
                        self.refuse(code);
                    }
                    let replies = mem::take(&mut self.replies);
                    replies.into_iter().for_each(|p| self.queue_out(p));
                    return;
                }
            }
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        self.last_rx = Instant::now();
        // A CONNECT is attributed to the client id it carries, so per-client views of the
        // log include it.
        let client = match &packet {
            Packet::Connect(c) if !c.client_id.is_empty() => Some(c.client_id.to_string()),
            _ => self.client_id.clone(),
        };
        self.shared.events.push(Event {
            conn: self.id,
            client_id: client.clone(),
            kind: EventKind::Received(packet.clone()),
        });
        let trigger_client = client;
        let fired =
            lock(&self.shared.faults).on_packet(packet.packet_type(), trigger_client.as_deref());
        if fired.is_empty() {
            self.handle(packet);
            let replies = mem::take(&mut self.replies);
            replies.into_iter().for_each(|p| self.queue_out(p));
            return;
        }
        if fired
            .iter()
            .any(|(when, _)| *when == When::BeforeProcessing)
        {
            // The packet is lost; every fault it triggered fires now.
            fired
                .into_iter()
                .for_each(|(_, f)| self.apply_fault(f, false));
            return;
        }
        self.handle(packet);
        let replies = mem::take(&mut self.replies);
        if fired.iter().any(|(when, _)| *when == When::AfterProcessing) {
            // The replies are lost.
            fired
                .into_iter()
                .for_each(|(_, f)| self.apply_fault(f, false));
        } else {
            replies.into_iter().for_each(|p| self.queue_out(p));
            fired
                .into_iter()
                .for_each(|(_, f)| self.apply_fault(f, true));
        }
    }

    /// Does what `fault` says; `flush` makes a [`Fault::Drop`] write what is queued first.
    fn apply_fault(&mut self, fault: Fault, flush: bool) {
        match fault {
            Fault::Drop => {
                let how = if flush { Close::Flush } else { Close::Abort };
                self.close = Some((how, CloseReason::Dropped));
            }
            Fault::Disconnect(reason) => {
                self.write_packet(Packet::Disconnect(Disconnect::new(reason)));
                self.close = Some((Close::Flush, CloseReason::ServerDisconnect(reason)));
            }
            Fault::SendRaw(bytes) => {
                self.wbuf.extend_from_slice(&bytes);
                self.log(EventKind::SentRaw(bytes));
            }
            Fault::SendPacket(packet) => {
                if let Err(e) = packet.encode(&mut self.wbuf) {
                    // The test asked for a packet the codec refuses to encode; say so.
                    tracing::warn!(conn = %self.id, error = %e, "testserver could not encode a scripted packet");
                    return;
                }
                self.log(EventKind::Sent(*packet));
            }
            Fault::GoSilent => {
                self.reading = false;
                self.writing = false;
            }
            Fault::Resume => {
                self.resumed = !self.reading;
                self.reading = true;
                self.writing = true;
                self.last_rx = Instant::now();
            }
        }
    }

    /// Sends a packet unless its type is withheld (then it waits for release).
    fn queue_out(&mut self, packet: Packet) {
        let kind = packet.packet_type();
        if kind != PacketType::Disconnect && lock(&self.shared.faults).is_withheld(kind) {
            self.held.push_back(packet);
            return;
        }
        self.write_packet(packet);
    }

    /// Encodes a packet into the write buffer, applying outbound topic aliases.
    fn write_packet(&mut self, mut packet: Packet) {
        match &mut packet {
            Packet::Publish(p) => self.apply_alias(p),
            Packet::PubAck(a) => {
                self.inbound_unacked.remove(&a.packet_id.get());
            }
            Packet::PubComp(c) => {
                self.inbound_unacked.remove(&c.packet_id.get());
            }
            Packet::PubRec(r) if r.reason_code.is_error() => {
                self.inbound_unacked.remove(&r.packet_id.get());
            }
            _ => {}
        }
        if let Err(e) = packet.encode(&mut self.wbuf) {
            // Only a broken invariant of this server gets here; say so and carry on.
            tracing::warn!(conn = %self.id, error = %e, "testserver could not encode a packet");
            return;
        }
        self.log(EventKind::Sent(packet));
    }

    /// Outbound topic aliases: a known topic goes as an empty topic plus its alias; a new one
    /// gets the next free alias, or, once all are taken, the least recently used one is
    /// reassigned (sent with the new topic, so the client must update its mapping).
    fn apply_alias(&mut self, p: &mut Publish) {
        if self.alias_out_max == 0 || p.topic.is_empty() {
            return;
        }
        self.alias_clock += 1;
        let now = self.alias_clock;
        if let Some((alias, used)) = self.alias_out.get_mut(&p.topic) {
            *used = now;
            p.properties.topic_alias = Some(*alias);
            p.topic = MqttString::new();
            return;
        }
        // Setting up an alias sends the topic and the alias property (3 bytes more than the
        // size checked against the client's Maximum Packet Size when the delivery was
        // queued): a delivery that fits only without it goes without an alias.
        let mut with_alias = p.clone();
        with_alias.properties.topic_alias = Some(1);
        let size = Packet::Publish(with_alias)
            .encoded_len()
            .unwrap_or(usize::MAX);
        if size as u64 > u64::from(self.max_packet_out) {
            return;
        }
        let alias = if self.alias_out.len() < usize::from(self.alias_out_max) {
            self.alias_out.len() as u16 + 1
        } else {
            let oldest = self
                .alias_out
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(topic, (alias, _))| (topic.clone(), *alias));
            let Some((topic, alias)) = oldest else {
                return;
            };
            self.alias_out.remove(&topic);
            alias
        };
        self.alias_out.insert(p.topic.clone(), (alias, now));
        p.properties.topic_alias = Some(alias);
    }

    fn log(&self, kind: EventKind) {
        self.shared.events.push(Event {
            conn: self.id,
            client_id: self.client_id.clone(),
            kind,
        });
    }

    /// Detaches from the session (will, expiry) and records the close.
    fn finish(self, reason: CloseReason) {
        let now = Instant::now();
        let after = {
            let mut broker = lock(&self.shared.broker);
            broker.conns.remove(&self.id);
            match (&self.client_id, &self.phase) {
                (Some(client_id), Phase::Connected) => {
                    broker.disconnect(self.id, client_id, self.publish_will, now)
                }
                _ => None,
            }
        };
        tracing::debug!(conn = %self.id, client = ?self.client_id, ?reason, "testserver connection closed");
        self.log(EventKind::Closed(reason));
        if let Some(after) = after {
            self.shared.spawn_after_close(after);
        }
    }
}
