//! Topic aliases of one connection: inbound ones resolved, outbound ones assigned (least
//! recently used out). Neither is ever stored in the session.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU16;

use paho_packets::{MqttString, Publish};

use crate::Error;

/// Aliases the server set on this connection.
#[derive(Debug)]
pub(crate) struct Inbound {
    max: u16,
    map: HashMap<u16, MqttString>,
}

impl Inbound {
    pub(crate) fn new(max: u16) -> Self {
        Inbound {
            max,
            map: HashMap::new(),
        }
    }

    /// Replaces a topic alias by its topic (recording a new mapping when the PUBLISH carries
    /// both), so the application and the session always see the topic name.
    pub(crate) fn resolve(&mut self, p: &mut Publish) -> Result<(), Error> {
        let Some(alias) = p.properties.topic_alias.take() else {
            if p.topic.is_empty() {
                return Err(Error::protocol(0x82, "PUBLISH without topic name or alias"));
            }
            return Ok(());
        };
        if alias > self.max {
            return Err(Error::protocol(
                0x94,
                format!(
                    "topic alias {} above our Topic Alias Maximum {}",
                    alias, self.max
                ),
            ));
        }
        if p.topic.is_empty() {
            match self.map.get(&alias) {
                Some(t) => p.topic = t.clone(),
                None => {
                    return Err(Error::protocol(
                        0x82,
                        format!("unknown topic alias {alias} with an empty topic name"),
                    ))
                }
            }
        } else {
            self.map.insert(alias, p.topic.clone());
        }
        Ok(())
    }
}

/// Aliases this client assigns on this connection, bounded, least recently used out.
#[derive(Debug)]
pub(crate) struct Outbound {
    max: u16,
    by_topic: HashMap<MqttString, (NonZeroU16, u64)>,
    lru: BTreeMap<u64, MqttString>,
    tick: u64,
    /// The next alias never used; `u32` so that it can pass `max` even when `max` is 65,535
    /// (a `u16` saturating there would hand alias 65,535 to a second topic while the first
    /// still used it, and the server would deliver the first topic's messages under the second).
    next: u32,
}

impl Outbound {
    pub(crate) fn new(max: u16) -> Self {
        Outbound {
            max,
            by_topic: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            next: 1,
        }
    }

    /// Whether this connection assigns aliases at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Applies an alias to a PUBLISH about to be written: a known topic is replaced by its
    /// alias; a new one gets a free alias (or the least recently used one's) and is sent
    /// with both, which sets the mapping on the server.
    pub(crate) fn apply(&mut self, p: &mut Publish) {
        p.properties.topic_alias = None;
        if self.max == 0 || p.topic.is_empty() {
            return;
        }
        self.tick += 1;
        let tick = self.tick;
        if let Some((alias, used)) = self.by_topic.get_mut(&p.topic) {
            self.lru.remove(used);
            *used = tick;
            self.lru.insert(tick, p.topic.clone());
            p.properties.topic_alias = Some(alias.get());
            p.topic = MqttString::new();
            return;
        }
        let alias = if self.next <= u32::from(self.max) {
            let a = u16::try_from(self.next).ok().and_then(NonZeroU16::new);
            self.next += 1;
            a
        } else {
            self.lru
                .pop_first()
                .and_then(|(_, old)| self.by_topic.remove(&old))
                .map(|(a, _)| a)
        };
        let Some(alias) = alias else { return };
        self.by_topic.insert(p.topic.clone(), (alias, tick));
        self.lru.insert(tick, p.topic.clone());
        p.properties.topic_alias = Some(alias.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str) -> Publish {
        Publish {
            topic: topic.into(),
            ..Default::default()
        }
    }

    #[test]
    fn outbound_assigns_reuses_and_evicts_least_recently_used() {
        let mut o = Outbound::new(2);
        let mut a = publish("a");
        o.apply(&mut a);
        assert_eq!((&*a.topic, a.properties.topic_alias), ("a", Some(1)));
        let mut a2 = publish("a");
        o.apply(&mut a2);
        assert_eq!((&*a2.topic, a2.properties.topic_alias), ("", Some(1)));
        let mut b = publish("b");
        o.apply(&mut b);
        assert_eq!(b.properties.topic_alias, Some(2));
        // Touch "a" so that "b" is the least recently used, then "c" takes b's alias.
        o.apply(&mut publish("a"));
        let mut c = publish("c");
        o.apply(&mut c);
        assert_eq!((&*c.topic, c.properties.topic_alias), ("c", Some(2)));
        let mut b2 = publish("b");
        o.apply(&mut b2);
        assert_eq!((&*b2.topic, b2.properties.topic_alias), ("b", Some(1)));
    }

    #[test]
    fn outbound_with_the_largest_maximum_never_gives_one_alias_to_two_topics() {
        let mut o = Outbound::new(u16::MAX);
        for i in 0..u32::from(u16::MAX) {
            let mut p = publish(&i.to_string());
            o.apply(&mut p);
        }
        // Every alias is taken: topic "0" (alias 1) is the least recently used and goes; the
        // last topic that got 65,535 keeps it.
        let mut last = publish(&u16::MAX.to_string());
        o.apply(&mut last);
        assert_eq!(
            (&*last.topic, last.properties.topic_alias),
            ("65535", Some(1))
        );
        let mut holder = publish("65534");
        o.apply(&mut holder);
        assert_eq!(
            (&*holder.topic, holder.properties.topic_alias),
            ("", Some(65535))
        );
    }

    #[test]
    fn outbound_off_strips_aliases() {
        let mut o = Outbound::new(0);
        let mut p = publish("a");
        p.properties.topic_alias = Some(3);
        o.apply(&mut p);
        assert_eq!((&*p.topic, p.properties.topic_alias), ("a", None));
    }

    #[test]
    fn inbound_resolves_and_rejects() {
        let mut i = Inbound::new(5);
        let mut set = publish("t/1");
        set.properties.topic_alias = Some(2);
        i.resolve(&mut set).unwrap();
        assert_eq!((&*set.topic, set.properties.topic_alias), ("t/1", None));
        let mut used = publish("");
        used.properties.topic_alias = Some(2);
        i.resolve(&mut used).unwrap();
        assert_eq!(&*used.topic, "t/1");
        let mut unknown = publish("");
        unknown.properties.topic_alias = Some(3);
        assert_eq!(
            i.resolve(&mut unknown).unwrap_err().reason_code(),
            Some(0x82)
        );
        let mut high = publish("x");
        high.properties.topic_alias = Some(6);
        assert_eq!(i.resolve(&mut high).unwrap_err().reason_code(), Some(0x94));
    }
}
