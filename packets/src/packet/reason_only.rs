//! DISCONNECT and AUTH (MQTT v5 sections 3.14 and 3.15): packets whose whole body is a
//! reason code and properties, both of which may be left out.

use super::{Body, PacketType, Sizes};
use crate::properties::{AuthProperties, DisconnectProperties};
use crate::reason::{AuthReasonCode, DisconnectReasonCode};
use crate::wire::{self, Out, Reader};
use crate::Error;

macro_rules! reason_only_packet {
    (
        $(#[$meta:meta])* $name:ident, $code:ident, $props:ident,
        $code_doc:literal, $props_doc:literal
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            #[doc = $code_doc]
            pub reason_code: $code,
            #[doc = $props_doc]
            pub properties: $props,
        }

        impl $name {
            /// A packet with the given reason and no properties.
            pub fn new(reason_code: $code) -> Self {
                $name {
                    reason_code,
                    properties: $props::default(),
                }
            }

            pub(crate) fn read(r: &mut Reader) -> Result<Self, Error> {
                let reason_code = match r.remaining() {
                    0 => $code::default(),
                    _ => $code::try_from(r.u8("reason code")?)?,
                };
                let properties = match r.remaining() {
                    0 => $props::default(),
                    _ => $props::read(r)?,
                };
                Ok($name { reason_code, properties })
            }
        }

        impl Body for $name {
            const TYPE: PacketType = PacketType::$name;

            fn sizes(&self) -> Result<Sizes, Error> {
                let props = self.properties.body_len()?;
                let remaining = if props > 0 {
                    1 + wire::varint_len(props) + props
                } else if self.reason_code != $code::default() {
                    1
                } else {
                    0
                };
                Ok(Sizes { remaining, props, will_props: 0 })
            }

            fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
                if sizes.remaining > 0 {
                    buf.put_u8(self.reason_code.as_u8());
                }
                if sizes.remaining > 1 {
                    self.properties.put(sizes.props, buf);
                }
            }
        }
    };
}

reason_only_packet!(
    /// The last packet on a connection, from either side.
    Disconnect,
    DisconnectReasonCode,
    DisconnectProperties,
    "Why the connection ends.",
    "Session expiry, reason string, server reference, user properties."
);

reason_only_packet!(
    /// A step of enhanced authentication, during CONNECT or for re-authentication.
    Auth,
    AuthReasonCode,
    AuthProperties,
    "Continue, re-authenticate, or success.",
    "Method, data, reason string and user properties."
);
