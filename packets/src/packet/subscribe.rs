//! SUBSCRIBE (MQTT v5 section 3.8).

use super::{read_packet_id, Body, PacketType, Sizes};
use crate::properties::SubscribeProperties;
use crate::wire::{self, Out, Reader};
use crate::{topic, Error, MqttString, PacketId, SubscriptionOptions};

/// One topic filter of a SUBSCRIBE, with its options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscription {
    /// The topic filter (wildcards and `$share/group/` allowed).
    pub filter: MqttString,
    /// The subscription options.
    pub options: SubscriptionOptions,
}

impl Subscription {
    /// A subscription to `filter` with the given options.
    pub fn new(filter: impl Into<MqttString>, options: SubscriptionOptions) -> Self {
        Subscription {
            filter: filter.into(),
            options,
        }
    }

    fn check(&self) -> Result<(), Error> {
        let shared = topic::check_filter(&self.filter, self.filter.has_wildcard())?;
        if self.options.no_local && shared {
            return Err(Error::NoLocalOnSharedSubscription(self.filter.to_string()));
        }
        Ok(())
    }
}

/// A request to subscribe to one or more topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The identifier the SUBACK will carry.
    pub packet_id: PacketId,
    /// Subscription identifier and user properties.
    pub properties: SubscribeProperties,
    /// The filters; at least one.
    pub subscriptions: Vec<Subscription>,
}

impl Subscribe {
    pub(crate) fn read(r: &mut Reader) -> Result<Subscribe, Error> {
        let packet_id = read_packet_id(r, "SUBSCRIBE")?;
        let properties = SubscribeProperties::read(r)?;
        let mut subscriptions = Vec::new();
        while r.remaining() > 0 {
            let filter = r.string("topic filter")?;
            let options = SubscriptionOptions::from_byte(r.u8("subscription options")?)?;
            let s = Subscription { filter, options };
            s.check()?;
            subscriptions.push(s);
        }
        if subscriptions.is_empty() {
            return Err(Error::EmptyPayload("SUBSCRIBE"));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }
}

impl Body for Subscribe {
    const TYPE: PacketType = PacketType::Subscribe;

    fn sizes(&self) -> Result<Sizes, Error> {
        if self.subscriptions.is_empty() {
            return Err(Error::EmptyPayload("SUBSCRIBE"));
        }
        let props = self.properties.body_len()?;
        let mut n = 2 + wire::varint_len(props) + props;
        for s in &self.subscriptions {
            wire::check_str(&s.filter)?;
            s.check()?;
            // Saturating: shared filters can add up past `usize::MAX` on 32-bit targets;
            // `frame_len` refuses anything over the protocol's maximum anyway.
            n = n.saturating_add(2 + s.filter.len() + 1);
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
        for s in &self.subscriptions {
            wire::put_prefixed(buf, s.filter.as_bytes());
            buf.put_u8(s.options.to_byte());
        }
    }
}
