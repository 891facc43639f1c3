//! Routing: matching a message against subscriptions (plain and shared), the retained
//! store, SUBSCRIBE and UNSUBSCRIBE, and the PUBLISH a will becomes.

use std::cmp::{max, min};
use std::collections::BTreeMap;

use paho_packets::topic;
use paho_packets::{
    DisconnectReasonCode, Publish, PublishProperties, QoS, RetainHandling, SubAck,
    SubAckReasonCode, Subscribe, UnsubAck, UnsubAckReasonCode, Unsubscribe, Will,
};
use tokio::time::Instant;

use super::delivery::deliver_at;
use super::{Broker, Queued, Sub};

impl Broker {
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
}

/// The PUBLISH a will becomes.
pub(super) fn will_publish(w: &Will) -> Publish {
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
