//! CONNECT (MQTT v5 section 3.1).

use bytes::Bytes;

use super::{Body, PacketType, Sizes};
use crate::properties::{ConnectProperties, WillProperties};
use crate::wire::{self, Out, Reader};
use crate::{Error, MqttString, QoS};

const PROTOCOL_NAME: &[u8] = b"MQTT";
const PROTOCOL_LEVEL: u8 = 5;

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Start a new session, discarding any the server kept.
    pub clean_start: bool,
    /// Keepalive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Connection properties.
    pub properties: ConnectProperties,
    /// The client identifier; empty asks the server to assign one.
    pub client_id: MqttString,
    /// The will message, published by the server if the connection ends abnormally.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<MqttString>,
    /// Password (binary in MQTT v5).
    pub password: Option<Bytes>,
}

/// A will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// The topic to publish to.
    pub topic: MqttString,
    /// The message.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// Its properties.
    pub properties: WillProperties,
}

impl Connect {
    pub(crate) fn read(r: &mut Reader) -> Result<Connect, Error> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        if &name[..] != PROTOCOL_NAME || level != PROTOCOL_LEVEL {
            return Err(Error::UnsupportedProtocol {
                name: String::from_utf8_lossy(&name).into_owned(),
                level,
            });
        }
        let flags = r.u8("connect flags")?;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        if flags & 0x01 != 0 || will_qos == 3 || (!will_flag && (will_qos != 0 || will_retain)) {
            return Err(Error::InvalidConnectFlags(flags));
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = ConnectProperties::read(r)?;
        check_auth(&properties)?;
        let client_id = r.string("client identifier")?;
        let will = if will_flag {
            let properties = WillProperties::read(r)?;
            let topic = r.topic_name("will topic")?;
            if topic.is_empty() {
                return Err(Error::InvalidTopicName(String::new()));
            }
            let payload = r.binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: QoS::try_from(will_qos)?,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = match flags & 0x80 {
            0 => None,
            _ => Some(r.string("user name")?),
        };
        let password = match flags & 0x40 {
            0 => None,
            _ => Some(r.binary("password")?),
        };
        Ok(Connect {
            clean_start: flags & 0x02 != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut f = u8::from(self.clean_start) << 1;
        if let Some(w) = &self.will {
            f |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        f
    }
}

/// Authentication Data only means something to an Authentication Method: section 3.1.2.11.10
/// makes Data without a Method a Protocol Error.
fn check_auth(p: &ConnectProperties) -> Result<(), Error> {
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(Error::AuthenticationDataWithoutMethod);
    }
    Ok(())
}

impl Body for Connect {
    const TYPE: PacketType = PacketType::Connect;

    fn sizes(&self) -> Result<Sizes, Error> {
        check_auth(&self.properties)?;
        let props = self.properties.body_len()?;
        wire::check_str(&self.client_id)?;
        // Variable header: name (2 + 4), level, flags, keep alive.
        let mut n = 6 + 1 + 1 + 2 + wire::varint_len(props) + props + 2 + self.client_id.len();
        let mut will_props = 0;
        if let Some(w) = &self.will {
            will_props = w.properties.body_len()?;
            wire::check_topic(&w.topic)?;
            if w.topic.is_empty() {
                return Err(Error::InvalidTopicName(String::new()));
            }
            wire::check_bin(&w.payload)?;
            n +=
                wire::varint_len(will_props) + will_props + 2 + w.topic.len() + 2 + w.payload.len();
        }
        if let Some(u) = &self.username {
            wire::check_str(u)?;
            n += 2 + u.len();
        }
        if let Some(p) = &self.password {
            wire::check_bin(p)?;
            n += 2 + p.len();
        }
        Ok(Sizes {
            remaining: n,
            props,
            will_props,
        })
    }

    fn put_body(&self, sizes: &Sizes, buf: &mut Out<'_>) {
        wire::put_prefixed(buf, PROTOCOL_NAME);
        buf.put_u8(PROTOCOL_LEVEL);
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        self.properties.put(sizes.props, buf);
        wire::put_prefixed(buf, self.client_id.as_bytes());
        if let Some(w) = &self.will {
            w.properties.put(sizes.will_props, buf);
            wire::put_prefixed(buf, w.topic.as_bytes());
            wire::put_prefixed(buf, &w.payload);
        }
        if let Some(u) = &self.username {
            wire::put_prefixed(buf, u.as_bytes());
        }
        if let Some(p) = &self.password {
            wire::put_prefixed(buf, p);
        }
    }
}
