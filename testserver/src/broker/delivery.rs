//! Delivery to one session: queueing, flow control against the client's Receive Maximum
//! (as [`FlowControl`] says), packet ids, Message Expiry and Maximum Packet Size at send
//! time, and the client's acknowledgements that free the slots.

use paho_packets::{Packet, PacketId, PubRecReasonCode, PubRel, PubRelReasonCode, Publish, QoS};
use tokio::time::Instant;

use super::{Broker, ConnCmd, Inflight, Queued, Session};
use crate::config::FlowControl;

impl Broker {
    /// The client acknowledged a QoS 1 delivery.
    pub(crate) fn puback(&mut self, client_id: &str, id: PacketId) {
        let flow = self.config.flow_control;
        if let Some(s) = self.sessions.get_mut(client_id) {
            s.inflight
                .retain(|i| !(i.id == id && i.publish.qos == QoS::AtLeastOnce));
            pump(s, flow);
        }
    }

    /// The client sent PUBREC for a QoS 2 delivery; returns the PUBREL to send, if any (none
    /// after a failure code: the exchange ends there).
    pub(crate) fn pubrec(
        &mut self,
        client_id: &str,
        id: PacketId,
        reason: PubRecReasonCode,
    ) -> Option<PubRel> {
        let flow = self.config.flow_control;
        let s = self.sessions.get_mut(client_id)?;
        let pos = s
            .inflight
            .iter()
            .position(|i| i.id == id && i.publish.qos == QoS::ExactlyOnce);
        let reply = match pos {
            Some(p) if reason.is_error() => {
                s.inflight.remove(p);
                None
            }
            Some(p) => {
                if let Some(i) = s.inflight.get_mut(p) {
                    i.awaiting_comp = true;
                }
                Some(PubRel::new(id))
            }
            None => Some(PubRel {
                packet_id: id,
                reason_code: PubRelReasonCode::PacketIdentifierNotFound,
                properties: Default::default(),
            }),
        };
        pump(s, flow);
        reply
    }

    /// The client completed a QoS 2 delivery.
    pub(crate) fn pubcomp(&mut self, client_id: &str, id: PacketId) {
        let flow = self.config.flow_control;
        if let Some(s) = self.sessions.get_mut(client_id) {
            s.inflight.retain(|i| !(i.id == id && i.awaiting_comp));
            pump(s, flow);
        }
    }
}

/// Queues a delivery of `msg` (which arrived at `at`) to a session and sends what flow
/// control allows. QoS 0 to an offline client is dropped, like mosquitto's default.
pub(super) fn deliver_at(
    s: &mut Session,
    msg: &Publish,
    qos: QoS,
    retain: bool,
    ids: Vec<u32>,
    at: Instant,
    flow: FlowControl,
) {
    if qos == QoS::AtMostOnce && s.link.is_none() {
        return;
    }
    let mut properties = msg.properties.clone();
    properties.topic_alias = None;
    properties.subscription_identifiers = ids;
    let publish = Publish {
        dup: false,
        qos,
        retain,
        topic: msg.topic.clone(),
        packet_id: None,
        properties,
        payload: msg.payload.clone(),
    };
    s.pending.push_back(Queued { publish, at });
    pump(s, flow);
}

/// Sends queued deliveries to the attached connection while the client's Receive Maximum
/// (as `flow` interprets it) allows. Order is kept: a QoS 0 message waits behind a blocked
/// QoS 1/2 one.
pub(super) fn pump(s: &mut Session, flow: FlowControl) {
    let Some(link) = s.link.clone() else {
        return;
    };
    let now = Instant::now();
    while let Some(front) = s.pending.front() {
        if front.publish.qos != QoS::AtMostOnce {
            let counted = match flow {
                FlowControl::Honour => s.inflight.len(),
                FlowControl::ReleaseAtPubRec => {
                    s.inflight.iter().filter(|i| !i.awaiting_comp).count()
                }
                FlowControl::Ignore => 0,
            };
            // 65,535 in flight leaves no packet id to use.
            if counted >= usize::from(link.receive_max) || s.inflight.len() >= 65_535 {
                break;
            }
        }
        let Some(q) = s.pending.pop_front() else {
            break;
        };
        let mut p = q.publish;
        if let Some(e) = p.properties.message_expiry_interval {
            // The receiver gets the remaining lifetime (MQTT-3.3.2-6); expired ones are
            // dropped.
            let waited = now.saturating_duration_since(q.at).as_secs();
            if waited >= u64::from(e) {
                continue;
            }
            p.properties.message_expiry_interval = Some(e - waited as u32);
        }
        // A packet larger than the client's Maximum Packet Size is discarded as if sent
        // (MQTT-3.1.2-25).
        // (Measured with a placeholder packet id: every id has the same size.)
        if p.qos != QoS::AtMostOnce {
            p.packet_id = Some(PacketId::MIN);
        }
        let size = Packet::Publish(p.clone())
            .encoded_len()
            .unwrap_or(usize::MAX);
        if size as u64 > u64::from(link.max_packet) {
            continue;
        }
        if p.qos != QoS::AtMostOnce {
            let id = next_id(s);
            p.packet_id = Some(id);
            s.inflight.push_back(Inflight {
                id,
                publish: p.clone(),
                awaiting_comp: false,
            });
        }
        let _ = link.tx.send(ConnCmd::Send(Packet::Publish(p)));
    }
}

/// The next packet id not in flight (the caller made sure one is free).
fn next_id(s: &mut Session) -> PacketId {
    loop {
        s.next_id = s.next_id.wrapping_add(1);
        let Some(id) = PacketId::new(s.next_id) else {
            continue;
        };
        if !s.inflight.iter().any(|i| i.id == id) {
            return id;
        }
    }
}
