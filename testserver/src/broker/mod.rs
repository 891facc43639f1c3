//! The broker's state, shared by all connections: sessions (subscriptions, messages in
//! flight and queued, inbound QoS 2 state, will), retained messages, and routing.
//!
//! Everything here is synchronous and runs under one mutex that is never held across an
//! `.await`; connections are reached through their command channels, so routing a message
//! never blocks on a slow client.
//!
//! This module holds the state and the session lifecycle (connect, takeover, disconnect,
//! will and expiry timers); `routing` matches messages to subscriptions, and `delivery`
//! sends them to one session under flow control.

use std::cmp::min;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use paho_packets::{Connect, Packet, PacketId, PubRel, Publish, SubscriptionOptions, Will};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::events::ConnId;
use crate::faults::ConnFault;

mod delivery;
mod routing;

use delivery::pump;
use routing::will_publish;

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
                // delayed will is cancelled by a new connection to the same session
                // (MQTT 3.1.3.2.2), but Clean Start ends that session, as does the old
                // connection closing when its Session Expiry was 0, and a will waits for its
                // delay or the end of the session, whichever comes first: then it is due now
                // too (mosquitto 2.0 `connect__on_authorised` sends it in both cases).
                let session_ends = connect.clean_start || s.expiry == 0;
                if let Some(w) = s.will.take() {
                    if w.properties.will_delay_interval.unwrap_or(0) == 0 || session_ends {
                        old_will = Some(w);
                    }
                }
            }
            // The same for a will already waiting for its delay after an earlier close.
            if let Some(w) = s.pending_will.take() {
                if connect.clean_start {
                    old_will = old_will.or(Some(w));
                }
            }
        }
        if connect.clean_start {
            self.sessions.remove(client_id);
        }
        let present = self.sessions.contains_key(client_id);
        let max_packet = link.max_packet;
        let session = self.sessions.entry(client_id.to_owned()).or_default();
        // Generations are unique across sessions, so a timer of a discarded session never
        // matches a new session of the same client id.
        self.generations += 1;
        session.generation = self.generations;
        session.link = Some(link);
        session.expiry = connect.properties.session_expiry_interval.unwrap_or(0);
        session.will = connect.will.clone();
        // The new connection may allow smaller packets than the one a delivery was first
        // sent on. A resend over its Maximum Packet Size is discarded as if it had been
        // delivered (MQTT-3.1.2-25), like a first send; a PUBREL is always small enough.
        session.inflight.retain(|i| {
            if i.awaiting_comp {
                return true;
            }
            let mut p = i.publish.clone();
            p.dup = true;
            let size = Packet::Publish(p).encoded_len().unwrap_or(usize::MAX);
            size as u64 <= u64::from(max_packet)
        });
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
