//! What the server said it supports (CONNACK), and the checks made against it before a packet
//! is sent.

use paho_packets::topic::split_shared;
use paho_packets::{ConnAck, Packet, Publish, QoS, Subscribe};

use crate::Error;

/// The server's capabilities and limits from CONNACK, with MQTT's defaults for what it left
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCapabilities {
    receive_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
    maximum_packet_size: Option<u32>,
    topic_alias_maximum: u16,
    wildcard_subscription_available: bool,
    subscription_identifiers_available: bool,
    shared_subscription_available: bool,
    server_keep_alive: Option<u16>,
}

impl ServerCapabilities {
    /// Reads them from a CONNACK.
    pub fn from_connack(c: &ConnAck) -> Self {
        let p = &c.properties;
        ServerCapabilities {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            maximum_packet_size: p.maximum_packet_size,
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            wildcard_subscription_available: p.wildcard_subscription_available.unwrap_or(true),
            subscription_identifiers_available: p
                .subscription_identifiers_available
                .unwrap_or(true),
            shared_subscription_available: p.shared_subscription_available.unwrap_or(true),
            server_keep_alive: p.server_keep_alive,
        }
    }

    /// How many QoS 1/2 publishes the server accepts unacknowledged (the send quota).
    pub fn receive_maximum(&self) -> u16 {
        self.receive_maximum
    }
    /// The highest QoS the server accepts.
    pub fn maximum_qos(&self) -> QoS {
        self.maximum_qos
    }
    /// Whether retained messages are supported.
    pub fn retain_available(&self) -> bool {
        self.retain_available
    }
    /// The largest packet the server accepts, if it set a limit.
    pub fn maximum_packet_size(&self) -> Option<u32> {
        self.maximum_packet_size
    }
    /// The highest topic alias the server accepts (0: none).
    pub fn topic_alias_maximum(&self) -> u16 {
        self.topic_alias_maximum
    }
    /// Whether wildcard subscriptions are supported.
    pub fn wildcard_subscription_available(&self) -> bool {
        self.wildcard_subscription_available
    }
    /// Whether subscription identifiers are supported.
    pub fn subscription_identifiers_available(&self) -> bool {
        self.subscription_identifiers_available
    }
    /// Whether shared subscriptions are supported.
    pub fn shared_subscription_available(&self) -> bool {
        self.shared_subscription_available
    }
    /// The keepalive the server imposed, if any.
    pub fn server_keep_alive(&self) -> Option<u16> {
        self.server_keep_alive
    }

    fn max_size(&self) -> u32 {
        self.maximum_packet_size
            .unwrap_or(paho_packets::MAX_PACKET_SIZE)
    }

    /// Checks the encoded size of `packet` against the server's Maximum Packet Size (and
    /// validates it for encoding on the way).
    pub(crate) fn check_size(&self, packet: &Packet) -> Result<(), Error> {
        self.check_len(packet.encoded_len()?)
    }

    /// Checks a packet size against the server's Maximum Packet Size.
    fn check_len(&self, size: usize) -> Result<(), Error> {
        if size as u64 > u64::from(self.max_size()) {
            return Err(Error::PacketTooLarge {
                size,
                max: self.max_size(),
            });
        }
        Ok(())
    }

    /// Checks a PUBLISH: QoS, retain, topic alias and size.
    pub(crate) fn check_publish(&self, p: &Publish) -> Result<(), Error> {
        if p.qos > self.maximum_qos {
            return Err(Error::NotSupported {
                reason_code: 0x9B,
                what: "QoS above the server's Maximum QoS",
            });
        }
        if p.retain && !self.retain_available {
            return Err(Error::NotSupported {
                reason_code: 0x9A,
                what: "retained messages",
            });
        }
        if let Some(alias) = p.properties.topic_alias {
            if alias > self.topic_alias_maximum {
                return Err(Error::NotSupported {
                    reason_code: 0x94,
                    what: "topic alias above the server's Topic Alias Maximum",
                });
            }
        }
        if p.topic.is_empty() {
            return Err(Error::InvalidArgument(
                "a PUBLISH needs its topic name (aliases are applied by the client)",
            ));
        }
        // The size as the session stores and first sends it (identifier iff QoS > 0, no
        // alias), computed without cloning the message.
        self.check_len(p.sent_len()?)
    }

    /// Checks a SUBSCRIBE: wildcard, subscription identifier and shared subscription support,
    /// filter validity and size.
    pub(crate) fn check_subscribe(&self, s: &Subscribe) -> Result<(), Error> {
        if s.subscriptions.is_empty() {
            return Err(Error::InvalidArgument(
                "SUBSCRIBE needs at least one filter",
            ));
        }
        if s.properties.subscription_identifier.is_some()
            && !self.subscription_identifiers_available
        {
            return Err(Error::NotSupported {
                reason_code: 0xA1,
                what: "subscription identifiers",
            });
        }
        for sub in &s.subscriptions {
            let shared = split_shared(&sub.filter)?;
            if shared.is_some() && !self.shared_subscription_available {
                return Err(Error::NotSupported {
                    reason_code: 0x9E,
                    what: "shared subscriptions",
                });
            }
            if !self.wildcard_subscription_available
                && sub.filter.bytes().any(|b| b == b'+' || b == b'#')
            {
                return Err(Error::NotSupported {
                    reason_code: 0xA2,
                    what: "wildcard subscriptions",
                });
            }
        }
        self.check_size(&Packet::Subscribe(s.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paho_packets::{ConnAckProperties, PacketId, Subscription, SubscriptionOptions};

    fn caps(p: ConnAckProperties) -> ServerCapabilities {
        ServerCapabilities::from_connack(&ConnAck {
            properties: p,
            ..Default::default()
        })
    }

    fn sub(filter: &str) -> Subscribe {
        Subscribe {
            packet_id: PacketId::MIN,
            properties: Default::default(),
            subscriptions: vec![Subscription::new(filter, SubscriptionOptions::default())],
        }
    }

    #[test]
    fn defaults_allow_everything() {
        let c = caps(Default::default());
        assert_eq!(c.receive_maximum(), u16::MAX);
        let p = Publish {
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a".into(),
            ..Default::default()
        };
        assert!(c.check_publish(&p).is_ok());
        assert!(c.check_subscribe(&sub("$share/g/a/#")).is_ok());
    }

    #[test]
    fn refusals_carry_reason_codes() {
        let c = caps(ConnAckProperties {
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            wildcard_subscription_available: Some(false),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(false),
            maximum_packet_size: Some(200),
            ..Default::default()
        });
        let p = |qos, retain, len: usize| Publish {
            qos,
            retain,
            topic: "a".into(),
            payload: vec![0u8; len].into(),
            ..Default::default()
        };
        let code = |r: Result<(), Error>| r.err().and_then(|e| e.reason_code());
        assert_eq!(
            code(c.check_publish(&p(QoS::ExactlyOnce, false, 1))),
            Some(0x9B)
        );
        assert_eq!(
            code(c.check_publish(&p(QoS::AtLeastOnce, true, 1))),
            Some(0x9A)
        );
        assert_eq!(
            code(c.check_publish(&p(QoS::AtLeastOnce, false, 500))),
            Some(0x95)
        );
        assert!(c.check_publish(&p(QoS::AtLeastOnce, false, 100)).is_ok());
        let mut aliased = p(QoS::AtMostOnce, false, 1);
        aliased.properties.topic_alias = Some(1);
        assert_eq!(code(c.check_publish(&aliased)), Some(0x94));
        assert_eq!(code(c.check_subscribe(&sub("a/+"))), Some(0xA2));
        assert_eq!(code(c.check_subscribe(&sub("$share/g/a"))), Some(0x9E));
        let mut with_id = sub("a");
        with_id.properties.subscription_identifier = Some(3);
        assert_eq!(code(c.check_subscribe(&with_id)), Some(0xA1));
        assert!(c.check_subscribe(&sub("a")).is_ok());
    }
}
