//! What each packet from the client does: CONNECT (accept or refuse), PUBLISH (limits,
//! topic aliases, QoS flows), acknowledgements, SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT.
//! Handlers push their replies to `Conn::replies`; the caller queues or discards them.

use std::time::Duration;

use paho_packets::{
    ConnAck, ConnAckProperties, Connect, ConnectReasonCode, Disconnect, DisconnectReasonCode,
    MqttString, Packet, PubAck, PubComp, PubCompReasonCode, PubRec, Publish, QoS, MAX_PACKET_SIZE,
};
use tokio::time::Instant;

use super::{Close, Conn, Phase};
use crate::auth::AuthRequest;
use crate::broker::Link;
use crate::events::{lock, CloseReason};

impl Conn {
    pub(super) fn handle(&mut self, packet: Packet) {
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

    /// Accepts the CONNECT: attaches the session and queues CONNACK and the resends.
    pub(super) fn accept(&mut self, c: Connect, auth: Option<(String, Option<bytes::Bytes>)>) {
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
        self.max_packet_out = c.properties.maximum_packet_size.unwrap_or(MAX_PACKET_SIZE);
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
        tracing::debug!(conn = %self.id, client = ?self.client_id, present, "testserver client connected");
        self.phase = Phase::Connected;
    }

    /// Answers the CONNECT with a failure CONNACK and closes.
    pub(super) fn refuse(&mut self, code: ConnectReasonCode) {
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
    pub(super) fn server_disconnect(&mut self, reason: DisconnectReasonCode) {
        self.replies
            .push(Packet::Disconnect(Disconnect::new(reason)));
        self.close = Some((Close::Flush, CloseReason::ServerDisconnect(reason)));
    }
}
