//! SUBACK and UNSUBACK (MQTT v5 sections 3.9 and 3.11): a packet identifier, properties and
//! one reason code per filter of the request, in order.

use super::{read_packet_id, Body, PacketType, Sizes};
use crate::properties::SubAckProperties;
use crate::reason::{SubAckReasonCode, UnsubAckReasonCode};
use crate::wire::{self, Out, Reader};
use crate::{Error, PacketId};

macro_rules! sub_ack_packet {
    ($(#[$meta:meta])* $name:ident, $code:ident, $request:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            #[doc = concat!("The ", $request, "'s identifier.")]
            pub packet_id: PacketId,
            /// Reason string and user properties.
            pub properties: SubAckProperties,
            /// One code per filter of the request, in order.
            pub reason_codes: Vec<$code>,
        }

        impl $name {
            pub(crate) fn read(r: &mut Reader) -> Result<Self, Error> {
                let packet_id = read_packet_id(r, PacketType::$name.name())?;
                let properties = SubAckProperties::read(r)?;
                let mut reason_codes = Vec::with_capacity(r.remaining());
                while r.remaining() > 0 {
                    reason_codes.push($code::try_from(r.u8("reason code")?)?);
                }
                // A request always has at least one filter, so its answer has a code.
                if reason_codes.is_empty() {
                    return Err(Error::EmptyPayload(PacketType::$name.name()));
                }
                Ok($name {
                    packet_id,
                    properties,
                    reason_codes,
                })
            }
        }

        impl Body for $name {
            const TYPE: PacketType = PacketType::$name;

            fn sizes(&self) -> Result<Sizes, Error> {
                if self.reason_codes.is_empty() {
                    return Err(Error::EmptyPayload(PacketType::$name.name()));
                }
                let props = self.properties.body_len()?;
                Ok(Sizes {
                    remaining: 2 + wire::varint_len(props) + props + self.reason_codes.len(),
                    props,
                    will_props: 0,
                })
            }

            fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
                buf.put_u16(self.packet_id.get());
                self.properties.put(sizes.props, buf);
                for c in &self.reason_codes {
                    buf.put_u8(c.as_u8());
                }
            }
        }
    };
}

sub_ack_packet!(
    /// The server's answer to SUBSCRIBE: one reason code per filter, in order.
    SubAck,
    SubAckReasonCode,
    "SUBSCRIBE"
);

sub_ack_packet!(
    /// The server's answer to UNSUBSCRIBE: one reason code per filter, in order.
    UnsubAck,
    UnsubAckReasonCode,
    "UNSUBSCRIBE"
);
