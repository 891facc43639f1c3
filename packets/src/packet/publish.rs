//! PUBLISH (MQTT v5 section 3.3).

use bytes::{Bytes, BytesMut};

use super::{Body, Packet, PacketType, Sizes};
use crate::properties::PublishProperties;
use crate::topic::WILDCARD;
use crate::wire::{self, Out, Reader};
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
    /// Decodes the PUBLISH in `frame` (a whole packet whose fixed header, `header` bytes,
    /// starts with `first`) and returns it through `wrap`.
    ///
    /// This is the decoder's hot path, so it works on the frame's bytes directly rather than
    /// through [`Reader`], takes the empty property block (the common case) without the
    /// property parser, and builds the packet in the caller's return slot: `wrap` turns the
    /// `Packet` into what the caller returns (`Some` for [`super::decode`]) so that the
    /// 256-byte value is not moved from one `Result` into another on the way out. The checks
    /// and their order are those of the general path, error for error.
    #[inline(always)]
    pub(crate) fn decode_frame<T>(
        first: u8,
        mut frame: Bytes,
        header: usize,
        wrap: impl FnOnce(Packet) -> T,
    ) -> Result<T, Error> {
        let dup = first & 0b1000 != 0;
        let qos = QoS::try_from((first >> 1) & 0b11)?;
        let retain = first & 0b0001 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        let b: &[u8] = &frame;
        let Some(&[hi, lo]) = b.get(header..header + 2) else {
            return Err(Error::UnexpectedEnd("topic name"));
        };
        let topic_len = usize::from(u16::from_be_bytes([hi, lo]));
        let topic_start = header + 2;
        let mut pos = topic_start + topic_len;
        let Some(raw) = b.get(topic_start..pos) else {
            return Err(Error::UnexpectedEnd("topic name"));
        };
        let flags = wire::check_scanned(raw)?;
        if flags & WILDCARD != 0 {
            return Err(Error::InvalidTopicName(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        }
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            let Some(&[hi, lo]) = b.get(pos..pos + 2) else {
                return Err(Error::UnexpectedEnd("packet identifier"));
            };
            pos += 2;
            match PacketId::new(u16::from_be_bytes([hi, lo])) {
                Some(id) => Some(id),
                None => return Err(Error::ZeroPacketId("PUBLISH")),
            }
        };
        let props_len = match b.get(pos) {
            Some(&l) => l,
            None => return Err(Error::UnexpectedEnd("property length")),
        };
        let topic = if topic_len == 0 {
            MqttString::new()
        } else {
            MqttString::from_checked(frame.slice(topic_start..topic_start + topic_len), flags)
        };
        if props_len != 0 {
            return Self::decode_with_properties(dup, qos, retain, topic, packet_id, frame, pos)
                .map(|p| wrap(Packet::Publish(p)));
        }
        if topic_len == 0 {
            // Without properties there is no topic alias to stand in for the topic.
            return Err(Error::InvalidTopicName(String::new()));
        }
        bytes::Buf::advance(&mut frame, pos + 1);
        Ok(wrap(Packet::Publish(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties: PublishProperties::default(),
            payload: frame,
        })))
    }

    /// The rest of [`Publish::decode_frame`] for a PUBLISH with properties, whose block
    /// starts at `frame[pos]`.
    #[inline(never)]
    fn decode_with_properties(
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: MqttString,
        packet_id: Option<PacketId>,
        frame: Bytes,
        pos: usize,
    ) -> Result<Publish, Error> {
        let mut r = Reader::new(frame, pos);
        let properties = PublishProperties::read(&mut r)?;
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

impl Publish {
    /// The exact size of this PUBLISH on the wire, as it is, computed without allocating.
    pub fn encoded_len(&self) -> Result<usize, Error> {
        super::encoded_len_of(self)
    }

    /// The size this PUBLISH has when a client sends it for the first time: with a packet
    /// identifier exactly when its QoS is 1 or 2 (whatever `packet_id` holds now) and without a
    /// topic alias (a per-connection detail the client adds at send time; the session stores
    /// the full topic). This is the size to check against the server's Maximum Packet Size
    /// before a message is accepted, without cloning it to fill in an identifier.
    pub fn sent_len(&self) -> Result<usize, Error> {
        let alias_len = if self.properties.topic_alias.is_some() {
            3
        } else {
            0
        };
        let (remaining, _) = self.remaining_len(self.qos != QoS::AtMostOnce, alias_len, false)?;
        super::frame_len(remaining)
    }

    /// Validates and sizes the body: `with_id` says whether a packet identifier is written,
    /// `minus_alias` how many property bytes a dropped topic alias saves, and `alias_may_name`
    /// whether an alias may stand in for an empty topic.
    ///
    /// Inlined, with the empty property block (the common case) sized by one test of each
    /// field instead of a call that sizes and validates them one by one.
    #[inline(always)]
    fn remaining_len(
        &self,
        with_id: bool,
        minus_alias: usize,
        alias_may_name: bool,
    ) -> Result<(usize, usize), Error> {
        wire::check_topic(&self.topic)?;
        if self.topic.is_empty() && !(alias_may_name && self.properties.topic_alias.is_some()) {
            return Err(Error::InvalidTopicName(String::new()));
        }
        // `minus_alias` is 0 unless a topic alias is set, so it never applies to an empty
        // block.
        let props = if self.properties.is_empty() {
            0
        } else {
            self.properties.body_len()? - minus_alias
        };
        let remaining = 2
            + self.topic.len()
            + if with_id { 2 } else { 0 }
            + wire::varint_len(props)
            + props
            + self.payload.len();
        Ok((remaining, props))
    }
}

impl Publish {
    /// Encodes a PUBLISH whose property block is empty (the caller has checked), with the
    /// same checks in the same order as [`Body::sizes`], error for error, and the whole
    /// frame written by [`wire::put_frame`]: the fixed header and the topic length as one
    /// word, the packet identifier and the empty property block as another.
    #[inline(always)]
    pub(crate) fn encode_without_properties(
        &self,
        buf: &mut BytesMut,
        max: u32,
    ) -> Result<usize, Error> {
        debug_assert!(self.properties.is_empty());
        let with_id = self.packet_id.is_some();
        if with_id != (self.qos != QoS::AtMostOnce) {
            return Err(Error::PacketIdMismatch);
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        wire::check_topic(&self.topic)?;
        let topic_len = self.topic.len();
        if topic_len == 0 {
            // Without properties there is no topic alias to stand in for the topic.
            return Err(Error::InvalidTopicName(String::new()));
        }
        let id_len = if with_id { 2 } else { 0 };
        let remaining = 2 + topic_len + id_len + 1 + self.payload.len();
        let total = super::frame_len(remaining)?;
        if total as u64 > u64::from(max) {
            return Err(Error::PacketTooLarge {
                size: total as u64,
                max,
            });
        }
        let (varint, varint_len) = wire::varint_bytes(remaining);
        let head = u64::from(self.first_byte())
            | (u64::from(varint) << 8)
            | (u64::from((topic_len as u16).swap_bytes()) << (8 + 8 * varint_len));
        // The identifier (big-endian) and the property length 0, or just the 0.
        let mid = match self.packet_id {
            Some(id) => u32::from(id.get().swap_bytes()),
            None => 0,
        };
        let n = wire::put_frame(
            buf,
            head.to_le_bytes(),
            1 + varint_len + 2,
            self.topic.as_bytes(),
            mid.to_le_bytes(),
            id_len + 1,
            &self.payload,
        );
        debug_assert_eq!(n, total);
        Ok(total)
    }
}

impl Body for Publish {
    const TYPE: PacketType = PacketType::Publish;

    #[inline(always)]
    fn first_byte(&self) -> u8 {
        0x30 | (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    #[inline(always)]
    fn sizes(&self) -> Result<Sizes, Error> {
        // An identifier exactly when QoS is 1 or 2.
        let with_id = self.packet_id.is_some();
        if with_id != (self.qos != QoS::AtMostOnce) {
            return Err(Error::PacketIdMismatch);
        }
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(Error::DupOnQoS0);
        }
        let (remaining, props) = self.remaining_len(with_id, 0, true)?;
        Ok(Sizes {
            remaining,
            props,
            will_props: 0,
        })
    }

    #[inline(always)]
    fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
        wire::put_prefixed(buf, self.topic.as_bytes());
        if let Some(id) = self.packet_id {
            buf.put_u16(id.get());
        }
        if sizes.props == 0 {
            buf.put_u8(0);
        } else {
            self.properties.put(sizes.props, buf);
        }
        buf.put_slice(&self.payload);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Packet;

    #[test]
    fn sent_len_is_the_size_of_the_stored_form() {
        let mut p = Publish {
            qos: QoS::ExactlyOnce,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        p.properties.topic_alias = Some(3);
        p.properties.message_expiry_interval = Some(9);
        // The form a client sends first: an identifier, no alias, no DUP.
        let mut stored = p.clone();
        stored.packet_id = PacketId::new(1);
        stored.properties.topic_alias = None;
        let expected = Packet::Publish(stored).encoded_len().unwrap();
        assert_eq!(p.sent_len(), Ok(expected));
        // QoS 0 has no identifier, whatever `packet_id` holds.
        p.qos = QoS::AtMostOnce;
        p.properties.topic_alias = None;
        assert_eq!(p.sent_len(), Ok(expected - 2));
        // The stored form needs the topic: an alias alone does not name it.
        p.topic = MqttString::new();
        p.properties.topic_alias = Some(3);
        assert!(matches!(p.sent_len(), Err(Error::InvalidTopicName(_))));
        assert!(p.encoded_len().is_ok());
    }
}
