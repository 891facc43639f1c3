//! CONNACK (MQTT v5 section 3.2).

use super::{Body, PacketType, Sizes};
use crate::properties::ConnAckProperties;
use crate::reason::ConnectReasonCode;
use crate::wire::{self, Out, Reader};
use crate::Error;

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// The server resumed a session it kept for this client.
    pub session_present: bool,
    /// The outcome.
    pub reason_code: ConnectReasonCode,
    /// The server's capabilities and limits.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn read(r: &mut Reader) -> Result<ConnAck, Error> {
        let flags = r.u8("connect acknowledge flags")?;
        let reason_code = ConnectReasonCode::try_from(r.u8("reason code")?)?;
        // Bits 7-1 are reserved; a failed connect never has a session (MQTT-3.2.2-6).
        if flags & 0xFE != 0 || (flags & 1 != 0 && reason_code.is_error()) {
            return Err(Error::InvalidConnAckFlags(flags));
        }
        let properties = ConnAckProperties::read(r)?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason_code,
            properties,
        })
    }
}

impl Body for ConnAck {
    const TYPE: PacketType = PacketType::ConnAck;

    fn sizes(&self) -> Result<Sizes, Error> {
        if self.session_present && self.reason_code.is_error() {
            return Err(Error::InvalidConnAckFlags(1));
        }
        let props = self.properties.body_len()?;
        Ok(Sizes {
            remaining: 2 + wire::varint_len(props) + props,
            props,
            will_props: 0,
        })
    }

    fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
        buf.put_u8(u8::from(self.session_present));
        buf.put_u8(self.reason_code.as_u8());
        self.properties.put(sizes.props, buf);
    }
}
