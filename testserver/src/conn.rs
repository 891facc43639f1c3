//! One client connection: the task that reads packets, applies faults, answers, and writes
//! what the broker routes to it.
//!
//! The task owns both halves of the transport and is the only writer. Everything it sends,
//! its own replies and deliveries routed from other connections (which arrive through its
//! command channel), passes through [`Conn::queue_out`], where withholding and outbound
//! topic aliases are applied. Reading stops while the write buffer is large, so a client
//! that does not read slows the server down instead of growing memory without bound.

use std::collections::{HashMap, HashSet};
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use paho_packets::{
    decode, Auth, AuthReasonCode, ConnAck, ConnAckProperties, Connect, ConnectReasonCode,
    Disconnect, DisconnectReasonCode, MqttString, Packet, PacketType, PubAck, PubComp,
    PubCompReasonCode, PubRec, Publish, QoS, MAX_PACKET_SIZE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::auth::{AuthOutcome, AuthRequest};
use crate::broker::{ConnCmd, Link};
use crate::config::Config;
use crate::events::{lock, CloseReason, ConnId, Event, EventKind};
use crate::faults::{ConnFault, Fault, Held, When};
use crate::server::{stopped, Shared};

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
    alias_out: HashMap<MqttString, u16>,
    alias_out_max: u16,
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

    fn handle(&mut self, packet: Packet) {
        match (&self.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(c)) => self.on_connect(*c),
            // MQTT-3.1.0-1: the first packet must be CONNECT; anything else just closes.
            (Phase::AwaitConnect, _) => {
                self.publish_will = false;
                self.close = Some((Close::Abort, CloseReason::Refused));
            }
            (Phase::Authenticating { .. }, Packet::Auth(a)) => self.on_connect_auth(a),
            (Phase::Authenticating { .. }, Packet::Disconnect(_)) => {
                self.close = Some((Close::Flush, CloseReason::Refused));
            }
            (Phase::Authenticating { .. }, _) => self.refuse(ConnectReasonCode::ProtocolError),
            (Phase::Connected, packet) => self.on_connected(packet),
        }
    }

    fn on_connected(&mut self, packet: Packet) {
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        match packet {
            Packet::Publish(p) => self.on_publish(&client_id, p),
            Packet::PubAck(a) => lock(&self.shared.broker).puback(&client_id, a.packet_id),
            Packet::PubRec(r) => {
                let rel = lock(&self.shared.broker).pubrec(&client_id, r.packet_id, r.reason_code);
                self.replies.extend(rel.map(Packet::PubRel));
            }
            Packet::PubRel(r) => {
                let known = lock(&self.shared.broker)
                    .sessions
                    .get_mut(&client_id)
                    .is_some_and(|s| s.inbound_qos2.remove(&r.packet_id.get()));
                let mut comp = PubComp::new(r.packet_id);
                if !known {
                    comp.reason_code = PubCompReasonCode::PacketIdentifierNotFound;
                }
                self.replies.push(Packet::PubComp(comp));
            }
            Packet::PubComp(c) => lock(&self.shared.broker).pubcomp(&client_id, c.packet_id),
            Packet::Subscribe(s) => {
                let r = lock(&self.shared.broker).subscribe(&client_id, &s);
                match r {
                    Ok(suback) => self.replies.push(Packet::SubAck(suback)),
                    Err(reason) => self.server_disconnect(reason),
                }
            }
            Packet::Unsubscribe(u) => {
                let unsuback = lock(&self.shared.broker).unsubscribe(&client_id, &u);
                self.replies.push(Packet::UnsubAck(unsuback));
            }
            Packet::PingReq => self.replies.push(Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    let mut broker = lock(&self.shared.broker);
                    if let Some(s) = broker.sessions.get_mut(&client_id) {
                        // MQTT-3.14.2-2: a session that was to end with the connection may
                        // not be given an expiry at DISCONNECT.
                        if s.expiry == 0 && e != 0 {
                            drop(broker);
                            self.server_disconnect(DisconnectReasonCode::ProtocolError);
                            return;
                        }
                        s.expiry = e;
                    }
                }
                self.publish_will = d.reason_code != DisconnectReasonCode::NormalDisconnection;
                self.close = Some((Close::Flush, CloseReason::ClientDisconnect(d.reason_code)));
            }
            Packet::Auth(a) => self.on_reauth(&client_id, a),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.server_disconnect(DisconnectReasonCode::ProtocolError),
        }
    }

    fn on_publish(&mut self, client_id: &str, mut p: Publish) {
        let c = &self.config;
        if p.qos > c.maximum_qos {
            return self.server_disconnect(DisconnectReasonCode::QoSNotSupported);
        }
        if p.retain && !c.retain_available {
            return self.server_disconnect(DisconnectReasonCode::RetainNotSupported);
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6: only the server sends subscription identifiers.
            return self.server_disconnect(DisconnectReasonCode::ProtocolError);
        }
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias > c.topic_alias_maximum {
                return self.server_disconnect(DisconnectReasonCode::TopicAliasInvalid);
            }
            if p.topic.is_empty() {
                match self.alias_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    // MQTT 3.3.2.3.4: an alias with no mapping is a protocol error.
                    None => return self.server_disconnect(DisconnectReasonCode::ProtocolError),
                }
            } else {
                self.alias_in.insert(alias, p.topic.clone());
            }
        }
        let id = p.packet_id;
        if let Some(id) = id {
            let id = id.get();
            let limit = usize::from(c.inbound_receive_maximum());
            if !self.inbound_unacked.contains(&id) && self.inbound_unacked.len() >= limit {
                return self.server_disconnect(DisconnectReasonCode::ReceiveMaximumExceeded);
            }
            self.inbound_unacked.insert(id);
        }
        p.dup = false;
        let now = Instant::now();
        let mut broker = lock(&self.shared.broker);
        match (p.qos, id) {
            (QoS::AtLeastOnce, Some(id)) => {
                broker.route(&p, client_id, now);
                drop(broker);
                self.replies.push(Packet::PubAck(PubAck::new(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // A PUBLISH whose id awaits PUBREL is a resend: acknowledge, do not route.
                let fresh = broker
                    .sessions
                    .get_mut(client_id)
                    .is_some_and(|s| s.inbound_qos2.insert(id.get()));
                if fresh {
                    broker.route(&p, client_id, now);
                }
                drop(broker);
                self.replies.push(Packet::PubRec(PubRec::new(id)));
            }
            _ => {
                broker.route(&p, client_id, now);
            }
        }
    }

    fn on_connect(&mut self, c: Connect) {
        let cfg = &self.config;
        if cfg.connack_reason.is_error() {
            return self.refuse(cfg.connack_reason);
        }
        if let Some(w) = &c.will {
            if w.qos > cfg.maximum_qos {
                return self.refuse(ConnectReasonCode::QoSNotSupported);
            }
            if w.retain && !cfg.retain_available {
                return self.refuse(ConnectReasonCode::RetainNotSupported);
            }
        }
        let Some(method) = c.properties.authentication_method.clone() else {
            return self.accept(c, None);
        };
        let Some(auth) = cfg.authenticator.clone() else {
            return self.refuse(ConnectReasonCode::BadAuthenticationMethod);
        };
        let outcome = auth.authenticate(&AuthRequest {
            client_id: c.client_id.as_str(),
            method: method.as_str(),
            data: c.properties.authentication_data.as_ref(),
            step: 0,
            reauthenticate: false,
        });
        self.connect_auth_outcome(Box::new(c), method.to_string(), 0, outcome);
    }

    fn on_connect_auth(&mut self, a: Auth) {
        let Phase::Authenticating {
            connect,
            method,
            step,
        } = mem::replace(&mut self.phase, Phase::AwaitConnect)
        else {
            return;
        };
        if a.reason_code != AuthReasonCode::ContinueAuthentication
            || a.properties.authentication_method.as_deref() != Some(method.as_str())
        {
            return self.refuse(ConnectReasonCode::ProtocolError);
        }
        let Some(auth) = self.config.authenticator.clone() else {
            return self.refuse(ConnectReasonCode::BadAuthenticationMethod);
        };
        let outcome = auth.authenticate(&AuthRequest {
            client_id: connect.client_id.as_str(),
            method: &method,
            data: a.properties.authentication_data.as_ref(),
            step,
            reauthenticate: false,
        });
        self.connect_auth_outcome(connect, method, step, outcome);
    }

    fn connect_auth_outcome(
        &mut self,
        connect: Box<Connect>,
        method: String,
        step: u32,
        outcome: AuthOutcome,
    ) {
        match outcome {
            AuthOutcome::Continue(data) => {
                self.replies.push(auth_packet(
                    AuthReasonCode::ContinueAuthentication,
                    &method,
                    Some(data),
                ));
                self.phase = Phase::Authenticating {
                    connect,
                    method,
                    step: step + 1,
                };
            }
            AuthOutcome::Success(data) => self.accept(*connect, Some((method, data))),
            AuthOutcome::Fail => self.refuse(ConnectReasonCode::NotAuthorized),
            AuthOutcome::BadMethod => self.refuse(ConnectReasonCode::BadAuthenticationMethod),
        }
    }

    fn on_reauth(&mut self, client_id: &str, a: Auth) {
        let method_ok = a.properties.authentication_method.as_deref()
            == self.auth_method.as_deref()
            && self.auth_method.is_some();
        let step = match (a.reason_code, self.reauth_step) {
            (AuthReasonCode::ReAuthenticate, None) => 0,
            (AuthReasonCode::ContinueAuthentication, Some(step)) => step,
            _ => return self.server_disconnect(DisconnectReasonCode::ProtocolError),
        };
        let (Some(auth), true) = (self.config.authenticator.clone(), method_ok) else {
            return self.server_disconnect(DisconnectReasonCode::ProtocolError);
        };
        let method = self.auth_method.clone().unwrap_or_default();
        let outcome = auth.authenticate(&AuthRequest {
            client_id,
            method: &method,
            data: a.properties.authentication_data.as_ref(),
            step,
            reauthenticate: true,
        });
        match outcome {
            AuthOutcome::Continue(data) => {
                self.reauth_step = Some(step + 1);
                self.replies.push(auth_packet(
                    AuthReasonCode::ContinueAuthentication,
                    &method,
                    Some(data),
                ));
            }
            AuthOutcome::Success(data) => {
                self.reauth_step = None;
                self.replies
                    .push(auth_packet(AuthReasonCode::Success, &method, data));
            }
            AuthOutcome::Fail => self.server_disconnect(DisconnectReasonCode::NotAuthorized),
            AuthOutcome::BadMethod => {
                self.server_disconnect(DisconnectReasonCode::ImplementationSpecificError)
            }
        }
    }

    /// Accepts the CONNECT: attaches the session and queues CONNACK and the resends.
    fn accept(&mut self, c: Connect, auth: Option<(String, Option<bytes::Bytes>)>) {
        let now = Instant::now();
        let mut broker = lock(&self.shared.broker);
        let assigned = c.client_id.is_empty().then(|| broker.assign_client_id());
        let client_id = assigned.clone().unwrap_or_else(|| c.client_id.to_string());
        if let Some(live) = broker.conns.get_mut(&self.id) {
            live.client_id = Some(client_id.clone());
        }
        let cfg = &self.config;
        let link = Link {
            conn: self.id,
            tx: self.tx.clone(),
            receive_max: c.properties.receive_maximum.unwrap_or(u16::MAX),
            max_packet: c.properties.maximum_packet_size.unwrap_or(MAX_PACKET_SIZE),
        };
        let (present, resend) = broker.connect(&client_id, &c, link, now);
        drop(broker);
        self.client_id = Some(client_id);
        let keep_alive = cfg.server_keep_alive.unwrap_or(c.keep_alive);
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(keep_alive.into()));
        self.alias_out_max = if cfg.send_topic_aliases {
            c.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        };
        let (auth_method, auth_data) = match auth {
            Some((m, d)) => (Some(m), d),
            None => (None, None),
        };
        self.auth_method = auth_method.clone();
        let properties = ConnAckProperties {
            receive_maximum: cfg.receive_maximum,
            maximum_packet_size: cfg.maximum_packet_size,
            topic_alias_maximum: (cfg.topic_alias_maximum > 0).then_some(cfg.topic_alias_maximum),
            maximum_qos: (cfg.maximum_qos < QoS::ExactlyOnce).then_some(cfg.maximum_qos),
            retain_available: (!cfg.retain_available).then_some(false),
            wildcard_subscription_available: (!cfg.wildcard_available).then_some(false),
            subscription_identifiers_available: (!cfg.subscription_ids_available).then_some(false),
            shared_subscription_available: (!cfg.shared_available).then_some(false),
            server_keep_alive: cfg.server_keep_alive,
            assigned_client_identifier: assigned.map(MqttString::from),
            authentication_method: auth_method.map(MqttString::from),
            authentication_data: auth_data,
            ..Default::default()
        };
        let connack = ConnAck {
            session_present: cfg.session_present.unwrap_or(present),
            reason_code: ConnectReasonCode::Success,
            properties,
        };
        self.replies.push(Packet::ConnAck(Box::new(connack)));
        self.replies.extend(resend);
        self.phase = Phase::Connected;
    }

    /// Answers the CONNECT with a failure CONNACK and closes.
    fn refuse(&mut self, code: ConnectReasonCode) {
        self.publish_will = false;
        self.phase = Phase::AwaitConnect;
        self.replies.push(Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            reason_code: code,
            properties: Default::default(),
        })));
        self.close = Some((Close::Flush, CloseReason::Refused));
    }

    /// Queues DISCONNECT with `reason` as a reply and closes after writing it.
    fn server_disconnect(&mut self, reason: DisconnectReasonCode) {
        self.replies
            .push(Packet::Disconnect(Disconnect::new(reason)));
        self.close = Some((Close::Flush, CloseReason::ServerDisconnect(reason)));
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

    fn apply_alias(&mut self, p: &mut Publish) {
        if self.alias_out_max == 0 || p.topic.is_empty() {
            return;
        }
        if let Some(&alias) = self.alias_out.get(&p.topic) {
            p.properties.topic_alias = Some(alias);
            p.topic = MqttString::new();
        } else if self.alias_out.len() < usize::from(self.alias_out_max) {
            let alias = self.alias_out.len() as u16 + 1;
            self.alias_out.insert(p.topic.clone(), alias);
            p.properties.topic_alias = Some(alias);
        }
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
        self.log(EventKind::Closed(reason));
        if let Some(after) = after {
            self.shared.spawn_after_close(after);
        }
    }
}

fn auth_packet(code: AuthReasonCode, method: &str, data: Option<bytes::Bytes>) -> Packet {
    let mut auth = Auth::new(code);
    auth.properties.authentication_method = Some(MqttString::from(method));
    auth.properties.authentication_data = data;
    Packet::Auth(auth)
}
