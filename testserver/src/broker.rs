//! The broker's state, shared by all connections: sessions (subscriptions, messages in
//! flight and queued, inbound QoS 2 state, will), retained messages, and routing.
//!
//! Everything here is synchronous and runs under one mutex that is never held across an
//! `.await`; connections are reached through their command channels, so routing a message
//! never blocks on a slow client.

use std::cmp::{max, min};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use paho_packets::topic;
use paho_packets::{
    Connect, DisconnectReasonCode, Packet, PacketId, PubRecReasonCode, PubRel, PubRelReasonCode,
    Publish, PublishProperties, QoS, RetainHandling, SubAck, SubAckReasonCode, Subscribe,
    SubscriptionOptions, UnsubAck, UnsubAckReasonCode, Unsubscribe, Will,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, FlowControl};
use crate::events::ConnId;
use crate::faults::ConnFault;

/// What other parts of the server tell a connection's task.
#[derive(Debug)]
// `Send` is nearly every command; boxing it would cost an allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ConnCmd {
    /// Send this packet (a delivery, or a resend).
    Send(Packet),
    /// A fault from the [`Faults`](crate::Faults) handle.
    Fault(ConnFault),
    /// A new connection took this one's session over: DISCONNECT 0x8E and close.
    TakenOver,
}

pub(crate) type ConnTx = mpsc::UnboundedSender<ConnCmd>;

/// The connection a session is attached to, and that client's limits.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) conn: ConnId,
    pub(crate) tx: ConnTx,
    /// The client's Receive Maximum.
    pub(crate) receive_max: u16,
    /// The client's Maximum Packet Size.
    pub(crate) max_packet: u32,
}

/// A message waiting to be delivered, with the time it arrived (for Message Expiry).
#[derive(Debug, Clone)]
struct Queued {
    publish: Publish,
    at: Instant,
}

/// An outbound QoS 1/2 delivery the client has not finished acknowledging.
#[derive(Debug, Clone)]
struct Inflight {
    id: PacketId,
    /// As first sent (full topic, no alias, DUP clear).
    publish: Publish,
    /// QoS 2 after PUBREC: waiting for PUBCOMP (a resend is a PUBREL).
    awaiting_comp: bool,
}

#[derive(Debug, Clone)]
struct Sub {
    options: SubscriptionOptions,
    id: Option<u32>,
}

/// What the server keeps for one client id.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// By full filter (including any `$share/group/` prefix).
    subs: BTreeMap<String, Sub>,
    /// Outbound deliveries in send order.
    inflight: VecDeque<Inflight>,
    /// Outbound deliveries not yet sent (flow control, or client offline).
    pending: VecDeque<Queued>,
    next_id: u16,
    /// Inbound QoS 2 packet ids whose PUBREC was sent and whose PUBREL has not arrived:
    /// a PUBLISH with one of these ids is a duplicate and is not routed again.
    pub(crate) inbound_qos2: HashSet<u16>,
    pub(crate) link: Option<Link>,
    /// Session Expiry Interval in seconds (0: ends with the connection).
    pub(crate) expiry: u32,
    /// Counts connections, so timers started at a disconnect can tell whether the client
    /// came back since.
    generation: u64,
    /// The will of the attached connection.
    will: Option<Will>,
    /// A will waiting for its delay after the connection closed.
    pending_will: Option<Will>,
}

/// Timers a closed connection leaves behind: publish the will after a delay, end the
/// session after its expiry. Both are cancelled if the client reconnects.
#[derive(Debug)]
pub(crate) struct AfterClose {
    pub(crate) client_id: String,
    pub(crate) generation: u64,
    pub(crate) will_delay: Option<Duration>,
    pub(crate) expiry: Option<Duration>,
}

/// A connection that has not closed yet, for fault targeting and counting.
#[derive(Debug)]
pub(crate) struct LiveConn {
    pub(crate) client_id: Option<String>,
    pub(crate) tx: ConnTx,
}

/// The whole broker state.
#[derive(Debug, Default)]
pub(crate) struct Broker {
    pub(crate) config: Config,
    pub(crate) sessions: BTreeMap<String, Session>,
    retained: BTreeMap<String, Queued>,
    /// Round-robin position per shared subscription (group, filter).
    shared_next: HashMap<(String, String), usize>,
    pub(crate) conns: BTreeMap<ConnId, LiveConn>,
    assigned: u64,
    generations: u64,
}

impl Broker {
    pub(crate) fn new(config: Config) -> Self {
        Broker {
            config,
            ..Default::default()
        }
    }

    /// A fresh client id for a client that sent an empty one.
    pub(crate) fn assign_client_id(&mut self) -> String {
        if let Some(id) = &self.config.assigned_client_id {
            return id.clone();
        }
        self.assigned += 1;
        format!("testserver-{}", self.assigned)
    }

    /// Attaches a connection to the session of `client_id` (taking it over from another
    /// connection, or starting a new one). Returns Session Present and the packets to resend
    /// right after CONNACK (unacknowledged PUBLISHes with DUP set, and PUBRELs), in order.
    pub(crate) fn connect(
        &mut self,
        client_id: &str,
        connect: &Connect,
        link: Link,
        now: Instant,
    ) -> (bool, Vec<Packet>) {
        let mut old_will = None;
        if let Some(s) = self.sessions.get_mut(client_id) {
            if let Some(old) = s.link.take() {
                let _ = old.tx.send(ConnCmd::TakenOver);
                // The old connection closes now; with no delay its will is due now. A
                // delayed will is cancelled by the new connection (MQTT 3.1.2.5).
                if let Some(w) = s.will.take() {
                    if w.properties.will_delay_interval.unwrap_or(0) == 0 {
                        old_will = Some(w);
                    }
                }
            }
            s.pending_will = None;
        }
        if connect.clean_start {
            self.sessions.remove(client_id);
        }
        let present = self.sessions.contains_key(client_id);
        let session = self.sessions.entry(client_id.to_owned()).or_default();
        // Generations are unique across sessions, so a timer of a discarded session never
        // matches a new session of the same client id.
        self.generations += 1;
        session.generation = self.generations;
        session.link = Some(link);
        session.expiry = connect.properties.session_expiry_interval.unwrap_or(0);
        session.will = connect.will.clone();
        let resend = session
            .inflight
            .iter()
            .map(|i| {
                if i.awaiting_comp {
                    Packet::PubRel(PubRel::new(i.id))
                } else {
                    let mut p = i.publish.clone();
                    p.dup = true;
                    Packet::Publish(p)
                }
            })
            .collect();
        // Queued messages go out through the channel, so after CONNACK and the resends.
        pump(session, self.config.flow_control);
        if let Some(w) = old_will {
            self.route(&will_publish(&w), client_id, now);
        }
        (present, resend)
    }

    /// Detaches connection `conn` from its session; publishes the will now or says when to.
    pub(crate) fn disconnect(
        &mut self,
        conn: ConnId,
        client_id: &str,
        publish_will: bool,
        now: Instant,
    ) -> Option<AfterClose> {
        let s = self.sessions.get_mut(client_id)?;
        if s.link.as_ref().map(|l| l.conn) != Some(conn) {
            // Taken over, or discarded: the session is not this connection's any more.
            return None;
        }
        s.link = None;
        let will = s.will.take().filter(|_| publish_will);
        let expiry = s.expiry;
        let generation = s.generation;
        let mut after = AfterClose {
            client_id: client_id.to_owned(),
            generation,
            will_delay: None,
            expiry: None,
        };
        if let Some(w) = will {
            // The will waits for its delay, but never outlives the session.
            let delay = min(w.properties.will_delay_interval.unwrap_or(0), expiry);
            if delay == 0 {
                self.route(&will_publish(&w), client_id, now);
            } else {
                after.will_delay = Some(Duration::from_secs(delay.into()));
                if let Some(s) = self.sessions.get_mut(client_id) {
                    s.pending_will = Some(w);
                }
            }
        }
        match expiry {
            0 => {
                if after.will_delay.is_none() {
                    self.sessions.remove(client_id);
                }
            }
            u32::MAX => {}
            e => after.expiry = Some(Duration::from_secs(e.into())),
        }
        (after.will_delay.is_some() || after.expiry.is_some()).then_some(after)
    }

    /// A delayed will is due: publish it unless the client came back.
    pub(crate) fn will_due(&mut self, client_id: &str, generation: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(client_id) else {
            return;
        };
        if s.generation != generation {
            return;
        }
        if let Some(w) = s.pending_will.take() {
            self.route(&will_publish(&w), client_id, now);
        }
    }

    /// A session's expiry is due: end it unless the client came back.
    pub(crate) fn expiry_due(&mut self, client_id: &str, generation: u64) {
        let due = self
            .sessions
            .get(client_id)
            .is_some_and(|s| s.generation == generation && s.link.is_none());
        if due {
            self.sessions.remove(client_id);
        }
    }

    /// Routes an application message (full topic, no alias) from `origin` to every matching
    /// subscription and updates the retained store. Returns how many sessions get it.
    pub(crate) fn route(&mut self, msg: &Publish, origin: &str, now: Instant) -> usize {
        let topic_name = msg.topic.as_str();
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.remove(topic_name);
            } else {
                let mut kept = msg.clone();
                kept.packet_id = None;
                kept.dup = false;
                kept.properties.topic_alias = None;
                kept.properties.subscription_identifiers.clear();
                self.retained.insert(
                    topic_name.to_owned(),
                    Queued {
                        publish: kept,
                        at: now,
                    },
                );
            }
        }
        let flow = self.config.flow_control;
        let mut matched = 0;
        // Shared subscriptions: (group, filter) -> members, each gets one message per group.
        let mut groups: BTreeMap<(String, String), Vec<(String, Sub)>> = BTreeMap::new();
        for (client_id, session) in self.sessions.iter_mut() {
            let mut qos: Option<QoS> = None;
            let mut keep_retain = false;
            let mut ids = Vec::new();
            for (filter, sub) in &session.subs {
                match topic::split_shared(filter) {
                    Ok(Some((group, inner))) => {
                        if topic::matches(inner, topic_name) {
                            groups
                                .entry((group.to_owned(), inner.to_owned()))
                                .or_default()
                                .push((client_id.clone(), sub.clone()));
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => continue,
                }
                if !topic::matches(filter, topic_name) {
                    continue;
                }
                if sub.options.no_local && client_id == origin {
                    continue;
                }
                qos = max(qos, Some(sub.options.qos));
                keep_retain |= sub.options.retain_as_published;
                ids.extend(sub.id);
            }
            if let Some(q) = qos {
                matched += 1;
                let retain = keep_retain && msg.retain;
                deliver_at(session, msg, min(q, msg.qos), retain, ids, now, flow);
            }
        }
        for (key, members) in groups {
            let start = self.shared_next.get(&key).copied().unwrap_or(0) % members.len();
            // Round robin, skipping members that are offline when one is online.
            let pick = (0..members.len())
                .map(|k| (start + k) % members.len())
                .find(|&i| {
                    self.sessions
                        .get(&members[i].0)
                        .is_some_and(|s| s.link.is_some())
                })
                .unwrap_or(start);
            self.shared_next.insert(key, pick + 1);
            let (client_id, sub) = &members[pick];
            if let Some(session) = self.sessions.get_mut(client_id) {
                matched += 1;
                let retain = sub.options.retain_as_published && msg.retain;
                let ids = sub.id.into_iter().collect();
                deliver_at(
                    session,
                    msg,
                    min(sub.options.qos, msg.qos),
                    retain,
                    ids,
                    now,
                    flow,
                );
            }
        }
        matched
    }

    /// Handles a SUBSCRIBE: records the subscriptions and queues retained messages. A
    /// subscription identifier the server does not support is an error (DISCONNECT 0xA1).
    pub(crate) fn subscribe(
        &mut self,
        client_id: &str,
        sub: &Subscribe,
    ) -> Result<SubAck, DisconnectReasonCode> {
        let id = sub.properties.subscription_identifier;
        if id.is_some() && !self.config.subscription_ids_available {
            return Err(DisconnectReasonCode::SubscriptionIdentifiersNotSupported);
        }
        let config = &self.config;
        let Some(session) = self.sessions.get_mut(client_id) else {
            return Err(DisconnectReasonCode::UnspecifiedError);
        };
        let mut codes = Vec::with_capacity(sub.subscriptions.len());
        let mut retained = Vec::new();
        for s in &sub.subscriptions {
            let filter = s.filter.as_str();
            let (shared, inner) = match topic::split_shared(filter) {
                Ok(Some((_, inner))) => (true, inner),
                Ok(None) => (false, filter),
                Err(_) => {
                    codes.push(SubAckReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if shared && !config.shared_available {
                codes.push(SubAckReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            if inner.contains(['+', '#']) && !config.wildcard_available {
                codes.push(SubAckReasonCode::WildcardSubscriptionsNotSupported);
                continue;
            }
            let mut options = s.options;
            options.qos = min(options.qos, config.maximum_qos);
            let existed = session
                .subs
                .insert(filter.to_owned(), Sub { options, id })
                .is_some();
            codes.push(match options.qos {
                QoS::AtMostOnce => SubAckReasonCode::GrantedQoS0,
                QoS::AtLeastOnce => SubAckReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => SubAckReasonCode::GrantedQoS2,
            });
            // Retained messages are not sent for shared subscriptions (MQTT 4.8.2).
            let send = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send && !shared {
                for (t, q) in &self.retained {
                    if topic::matches(inner, t) {
                        retained.push((q.clone(), options.qos));
                    }
                }
            }
        }
        let flow = config.flow_control;
        for (q, granted) in retained {
            // A retained message sent because of a subscribe keeps RETAIN set (MQTT-3.3.1-9)
            // and its remaining expiry.
            let ids = id.into_iter().collect();
            let qos = min(granted, q.publish.qos);
            deliver_at(session, &q.publish, qos, true, ids, q.at, flow);
        }
        Ok(SubAck {
            packet_id: sub.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        })
    }

    /// Handles an UNSUBSCRIBE.
    pub(crate) fn unsubscribe(&mut self, client_id: &str, unsub: &Unsubscribe) -> UnsubAck {
        let session = self.sessions.get_mut(client_id);
        let mut codes = Vec::with_capacity(unsub.filters.len());
        let mut session = session;
        for f in &unsub.filters {
            let existed = session
                .as_mut()
                .is_some_and(|s| s.subs.remove(f.as_str()).is_some());
            codes.push(if existed {
                UnsubAckReasonCode::Success
            } else {
                UnsubAckReasonCode::NoSubscriptionExisted
            });
        }
        UnsubAck {
            packet_id: unsub.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        }
    }

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

    /// The filters a client is subscribed to.
    pub(crate) fn subscriptions(&self, client_id: &str) -> Vec<String> {
        self.sessions
            .get(client_id)
            .map(|s| s.subs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The retained messages, by topic.
    pub(crate) fn retained(&self) -> Vec<Publish> {
        self.retained.values().map(|q| q.publish.clone()).collect()
    }

    /// How many outbound deliveries to `client_id` are unacknowledged and queued.
    pub(crate) fn outbound_counts(&self, client_id: &str) -> Option<(usize, usize)> {
        self.sessions
            .get(client_id)
            .map(|s| (s.inflight.len(), s.pending.len()))
    }
}

/// The PUBLISH a will becomes.
fn will_publish(w: &Will) -> Publish {
    let p = &w.properties;
    Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: w.topic.clone(),
        packet_id: None,
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            content_type: p.content_type.clone(),
            user_properties: p.user_properties.clone(),
            ..Default::default()
        },
        payload: w.payload.clone(),
    }
}

/// Queues a delivery of `msg` (which arrived at `at`) to a session and sends what flow
/// control allows. QoS 0 to an offline client is dropped, like mosquitto's default.
fn deliver_at(
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
fn pump(s: &mut Session, flow: FlowControl) {
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
