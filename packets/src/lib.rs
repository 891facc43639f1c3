//! The MQTT v5 codec of the paho-rs client family.
//!
//! This crate turns bytes into MQTT v5 control packets and back. It does no I/O and reads no
//! clock: a client or server feeds it the bytes it read and writes the bytes it gets.
//!
//! # Layout
//!
//! - [`packet`]: the 15 control packets ([`Connect`], [`ConnAck`], [`Publish`], [`PubAck`],
//!   [`PubRec`], [`PubRel`], [`PubComp`], [`Subscribe`], [`SubAck`], [`Unsubscribe`],
//!   [`UnsubAck`], PINGREQ, PINGRESP, [`Disconnect`], [`Auth`]), the [`Packet`] enum over them,
//!   [`decode`] and [`Packet::encode`].
//! - [`properties`]: one struct of properties per packet, holding exactly the properties the
//!   specification allows there.
//! - [`reason`]: reason codes, one enum per packet.
//! - [`topic`]: topic name and filter validation, and filter matching.
//! - [`MqttString`]: the string type, a UTF-8 view of shared bytes.
//! - [`Error`]: every way a packet can be malformed, with the reason code to answer it with.
//!
//! # Decoding
//!
//! [`decode`] takes the connection's read buffer. It returns `Ok(None)` until a whole packet
//! is there, then removes that packet from the buffer and returns it. The payload and all the
//! strings of the packet are [`bytes::Bytes`] slices of the read buffer, not copies. The
//! maximum packet size is checked as soon as the fixed header is in, before anything is
//! allocated for the body.
//!
//! Decoding is strict: reserved flags, QoS 3, a zero packet identifier, a variable byte
//! integer longer than four bytes or than its value needs, properties not allowed in the
//! packet or repeated, invalid UTF-8 or U+0000, wildcards in topic names (Response Topic
//! included), malformed filters, reserved subscription options, empty SUBSCRIBE or
//! UNSUBSCRIBE payloads and fields that overrun the packet are all typed errors.
//! [`Error::disconnect_reason`] says which reason code to close the connection with.
//!
//! # Encoding
//!
//! [`Packet::encode`] appends to a [`bytes::BytesMut`], reserving the exact size once;
//! [`Packet::encoded_len`] computes that size without allocating. A string or binary field
//! longer than 65,535 bytes is an error, never truncated, and
//! [`Packet::encode_with_max`] refuses a packet larger than the peer's Maximum Packet Size.
//!
//! ```
//! use bytes::BytesMut;
//! use paho_packets::{decode, Packet, Subscribe, Subscription, SubscriptionOptions, QoS,
//!     PacketId, MAX_PACKET_SIZE};
//!
//! let subscribe = Subscribe {
//!     packet_id: PacketId::new(1).unwrap(),
//!     properties: Default::default(),
//!     subscriptions: vec![Subscription::new("sensors/+/temp",
//!         SubscriptionOptions::qos(QoS::AtLeastOnce))],
//! };
//! let packet = Packet::from(subscribe);
//! let mut buf = BytesMut::new();
//! let n = packet.encode(&mut buf)?;
//! assert_eq!(n, packet.encoded_len()?);
//! assert_eq!(decode(&mut buf, MAX_PACKET_SIZE)?, Some(packet));
//! # Ok::<(), paho_packets::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod packet;
pub mod properties;
pub mod reason;
mod string;
pub mod topic;
mod types;
mod wire;

pub use error::Error;
pub use packet::{
    decode, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PubAck, PubComp, PubRec,
    PubRel, Publish, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will, MAX_PACKET_SIZE,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubAckProperties, SubscribeProperties, UnsubscribeProperties, UserProperty,
    WillProperties,
};
pub use reason::{
    AuthReasonCode, ConnectReasonCode, DisconnectReasonCode, PubAckReasonCode, PubCompReasonCode,
    PubRecReasonCode, PubRelReasonCode, SubAckReasonCode, UnsubAckReasonCode,
};
pub use string::MqttString;
pub use types::{PacketId, QoS, RetainHandling, SubscriptionOptions};
