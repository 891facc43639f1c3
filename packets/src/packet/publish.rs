//! PUBLISH (MQTT v5 section 3.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::{read_packet_id, Body, PacketType, Sizes};
use crate::properties::PublishProperties;
use crate::wire::{self, Reader};
use crate::{Error, MqttString, PacketId, QoS};

/// An application message on its way between client and server.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use paho_packets::{decode, Packet, Publish, QoS, PacketId, MAX_PACKET_SIZE};
///
/// let publish = Publish {
///     qos: QoS::AtLeastOnce,
///     topic: "sensors/1".into(),
///     packet_id: PacketId::new(7),
///     payload: Bytes::from_static(b"21.5"),
///     ..Default::default()
/// };
/// let mut buf = BytesMut::new();
/// Packet::from(publish.clone()).encode(&mut buf)?;
/// assert_eq!(decode(&mut buf, MAX_PACKET_SIZE)?, Some(Packet::Publish(publish)));
/// # Ok::<(), paho_packets::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Set on a re-delivery of a QoS 1/2 message.
    pub dup: bool,
    /// The message's quality of service.
    pub qos: QoS,
    /// Ask the server to retain the message.
    pub retain: bool,
    /// The topic name; may be empty only when a topic alias is set.
    pub topic: MqttString,
    /// Present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// The message's properties.
    pub properties: PublishProperties,
    /// The application payload.
    pub payload: Bytes,
}

impl Publish {
    #[inline]
    pub(crate) fn read(flags: u8, r: &mut Reader) -> Result<Publish, Error> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::try_from((flags >> 1) & 0b11)?;
        let retain = flags & 0b0001 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        let topic = r.topic_name("topic name")?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ => Some(read_packet_id(r, "PUBLISH")?),
        };
        let properties = PublishProperties::read(r)?;
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(Error::InvalidTopicName(String::new()));
        }
        let payload = r.rest();
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }
}

impl Body for Publish {
    const TYPE: PacketType = PacketType::Publish;

    fn first_byte(&self) -> u8 {
        0x30 | (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    fn sizes(&self) -> Result<Sizes, Error> {
        wire::check_topic(&self.topic)?;
        if self.topic.is_empty() && self.properties.topic_alias.is_none() {
            return Err(Error::InvalidTopicName(String::new()));
        }
        let id_len = match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => 0,
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => 2,
            _ => return Err(Error::PacketIdMismatch),
        };
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        let props = self.properties.body_len()?;
        Ok(Sizes {
            remaining: 2
                + self.topic.len()
                + id_len
                + wire::varint_len(props)
                + props
                + self.payload.len(),
            props,
            will_props: 0,
        })
    }

    fn put_body(&self, sizes: &Sizes, buf: &mut BytesMut) {
        wire::put_prefixed(buf, self.topic.as_bytes());
        if let Some(id) = self.packet_id {
            buf.put_u16(id.get());
        }
        self.properties.put(sizes.props, buf);
        buf.put_slice(&self.payload);
    }
}
