//! PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT v5 sections 3.4 to 3.7): four packets of one
//! shape, a packet identifier, a reason code and properties.

use super::{read_packet_id, Body, PacketType, Sizes};
use crate::properties::AckProperties;
use crate::reason::{PubAckReasonCode, PubCompReasonCode, PubRecReasonCode, PubRelReasonCode};
use crate::wire::{self, Out, Reader};
use crate::{Error, PacketId};

macro_rules! ack_packet {
    ($(#[$meta:meta])* $name:ident, $code:ident, $ptype:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// The identifier of the PUBLISH this acknowledges.
            pub packet_id: PacketId,
            /// The outcome.
            pub reason_code: $code,
            /// Reason string and user properties.
            pub properties: AckProperties,
        }

        impl $name {
            /// A successful acknowledgement without properties.
            pub fn new(packet_id: PacketId) -> Self {
                $name {
                    packet_id,
                    reason_code: $code::default(),
                    properties: AckProperties::default(),
                }
            }

            pub(crate) fn read(r: &mut Reader) -> Result<Self, Error> {
                let packet_id = read_packet_id(r, PacketType::$ptype.name())?;
                // The reason code and the properties may be left out (section 3.4.2.1).
                let reason_code = match r.remaining() {
                    0 => $code::default(),
                    _ => $code::try_from(r.u8("reason code")?)?,
                };
                let properties = match r.remaining() {
                    0 => AckProperties::default(),
                    _ => AckProperties::read(r)?,
                };
                Ok($name { packet_id, reason_code, properties })
            }
        }

        impl Body for $name {
            const TYPE: PacketType = PacketType::$ptype;

            fn sizes(&self) -> Result<Sizes, Error> {
                let props = self.properties.body_len()?;
                let remaining = if props > 0 {
                    3 + wire::varint_len(props) + props
                } else if self.reason_code != $code::default() {
                    3
                } else {
                    2
                };
                Ok(Sizes { remaining, props, will_props: 0 })
            }

            fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
                buf.put_u16(self.packet_id.get());
                if sizes.remaining > 2 {
                    buf.put_u8(self.reason_code.as_u8());
                }
                if sizes.remaining > 3 {
                    self.properties.put(sizes.props, buf);
                }
            }
        }
    };
}

ack_packet!(
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck,
    PubAckReasonCode,
    PubAck
);
ack_packet!(
    /// First acknowledgement of a QoS 2 PUBLISH.
    PubRec,
    PubRecReasonCode,
    PubRec
);
ack_packet!(
    /// Releases a QoS 2 message after PUBREC.
    PubRel,
    PubRelReasonCode,
    PubRel
);
ack_packet!(
    /// Completes a QoS 2 exchange.
    PubComp,
    PubCompReasonCode,
    PubComp
);
