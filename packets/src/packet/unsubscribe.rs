//! UNSUBSCRIBE (MQTT v5 section 3.10).

use super::{read_packet_id, Body, PacketType, Sizes};
use crate::properties::UnsubscribeProperties;
use crate::wire::{self, Out, Reader};
use crate::{topic, Error, MqttString, PacketId};

/// A request to remove one or more subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The identifier the UNSUBACK will carry.
    pub packet_id: PacketId,
    /// User properties.
    pub properties: UnsubscribeProperties,
    /// The filters to remove; at least one.
    pub filters: Vec<MqttString>,
}

impl Unsubscribe {
    pub(crate) fn read(r: &mut Reader) -> Result<Unsubscribe, Error> {
        let packet_id = read_packet_id(r, "UNSUBSCRIBE")?;
        let properties = UnsubscribeProperties::read(r)?;
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            let f = r.string("topic filter")?;
            topic::check_filter(&f, f.has_wildcard())?;
            filters.push(f);
        }
        if filters.is_empty() {
            return Err(Error::EmptyPayload("UNSUBSCRIBE"));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }
}

impl Body for Unsubscribe {
    const TYPE: PacketType = PacketType::Unsubscribe;

    fn sizes(&self) -> Result<Sizes, Error> {
        if self.filters.is_empty() {
            return Err(Error::EmptyPayload("UNSUBSCRIBE"));
        }
        let props = self.properties.body_len()?;
        let mut n = 2 + wire::varint_len(props) + props;
        for f in &self.filters {
            wire::check_str(f)?;
            topic::check_filter(f, f.has_wildcard())?;
            // Saturating, as in SUBSCRIBE: shared filters can add up past `usize::MAX` on
            // 32-bit targets.
            n = n.saturating_add(2 + f.len());
        }
        Ok(Sizes {
            remaining: n,
            props,
            will_props: 0,
        })
    }

    fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
        buf.put_u16(self.packet_id.get());
        self.properties.put(sizes.props, buf);
        for f in &self.filters {
            wire::put_prefixed(buf, f.as_bytes());
        }
    }
}
