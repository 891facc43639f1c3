//! The crate's one error type.

use crate::reason::DisconnectReasonCode;

/// Everything that can go wrong while encoding or decoding an MQTT v5 packet.
///
/// Decoding errors say which reason code the receiver should close the connection with:
/// see [`Error::disconnect_reason`]. The variants name the rule that was broken, so a log line
/// is enough to find the offending byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The first byte names packet type 0, which is reserved.
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// The fixed-header flags are not the ones the specification fixes for this packet type.
    #[error("invalid fixed-header flags {flags:#06b} for {packet}")]
    InvalidHeaderFlags {
        /// The packet type name.
        packet: &'static str,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A QoS field holds 3, or a value out of range.
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// A PUBLISH at QoS 0 has the DUP flag set.
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A packet identifier is 0 where a non-zero one is required.
    #[error("packet identifier 0 in {0}")]
    ZeroPacketId(&'static str),
    /// A variable byte integer runs past 4 bytes.
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    /// A variable byte integer uses more bytes than its value needs (for example `0x80 0x00`
    /// for 0), which MQTT-1.5.5-1 forbids.
    #[error("variable byte integer not in its shortest encoding")]
    VarIntNotMinimal,
    /// A value is too large to encode as a variable byte integer (max 268,435,455).
    #[error("value {0} is too large for a variable byte integer")]
    VarIntOutOfRange(u64),
    /// The whole packet is larger than the maximum packet size in force.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The packet's full size (fixed header included).
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// A field runs past the end of the packet (or of its property block).
    #[error("{0} runs past the end of the packet")]
    UnexpectedEnd(&'static str),
    /// Bytes are left over after the last field of the packet.
    #[error("{0} trailing bytes after the end of the packet")]
    TrailingBytes(usize),
    /// A property identifier that is unknown, or not allowed in this packet.
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The packet type name.
        packet: &'static str,
        /// The property identifier.
        id: u32,
    },
    /// A property that may appear once appears again.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property holds a value the specification forbids (0 where it must be non-zero, a
    /// boolean that is neither 0 nor 1, ...).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string contains the null character U+0000.
    #[error("string contains U+0000")]
    NullCharacter,
    /// A string or binary field is longer than 65,535 bytes and cannot be encoded.
    #[error("field of {0} bytes exceeds the 65,535-byte limit")]
    FieldTooLong(usize),
    /// A topic name is empty (without a topic alias) or contains a wildcard.
    #[error("invalid topic name {0:?}")]
    InvalidTopicName(String),
    /// A topic filter is empty, has a misplaced wildcard, or is a malformed shared subscription.
    #[error("invalid topic filter {0:?}")]
    InvalidTopicFilter(String),
    /// Subscription options use reserved bits (Malformed Packet) or Maximum QoS 3 (Protocol
    /// Error).
    #[error("invalid subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    /// Retain Handling is 3, which is reserved.
    #[error("retain handling 3 is reserved")]
    InvalidRetainHandling,
    /// No Local is set on a shared subscription.
    #[error("No Local set on shared subscription {0:?}")]
    NoLocalOnSharedSubscription(String),
    /// A SUBSCRIBE, UNSUBSCRIBE, SUBACK or UNSUBACK without a single entry.
    #[error("{0} has an empty payload")]
    EmptyPayload(&'static str),
    /// A reason code that is not defined for this packet.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// The packet type name.
        packet: &'static str,
        /// The offending byte.
        code: u8,
    },
    /// CONNECT names a protocol other than MQTT 5.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name as sent (lossily decoded).
        name: String,
        /// The protocol level byte.
        level: u8,
    },
    /// CONNECT flags break a rule: reserved bit set, or will QoS/retain without the will flag.
    #[error("invalid CONNECT flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// CONNACK acknowledge flags use reserved bits, or claim a session on a failed connect.
    #[error("invalid CONNACK flags {0:#010b}")]
    InvalidConnAckFlags(u8),
    /// A CONNECT carries Authentication Data without an Authentication Method, which
    /// section 3.1.2.11.10 makes a Protocol Error.
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
    /// A QoS 1 or 2 PUBLISH to encode has no packet identifier, or a QoS 0 one has one.
    #[error("packet identifier does not match the QoS")]
    PacketIdMismatch,
}

impl Error {
    /// The reason code a receiver should put in the DISCONNECT (or CONNACK) it sends before
    /// closing the connection because of this error.
    ///
    /// Errors in the shape of a packet are Malformed Packet (0x81); well-formed packets that
    /// break a rule of the protocol are Protocol Error (0x82); an oversize packet is Packet Too
    /// Large (0x95) and a foreign protocol in CONNECT is Unsupported Protocol Version (0x84,
    /// for the CONNACK).
    pub fn disconnect_reason(&self) -> DisconnectReasonCode {
        use DisconnectReasonCode as R;
        match self {
            Error::PacketTooLarge { .. } => R::PacketTooLarge,
            Error::ZeroPacketId(_)
            | Error::DuplicateProperty(_)
            | Error::InvalidPropertyValue(_)
            | Error::InvalidTopicName(_)
            | Error::InvalidTopicFilter(_)
            | Error::EmptyPayload(_)
            | Error::InvalidRetainHandling
            | Error::NoLocalOnSharedSubscription(_)
            | Error::AuthenticationDataWithoutMethod
            | Error::PacketIdMismatch => R::ProtocolError,
            // Reserved bits 6-7 make the SUBSCRIBE malformed (MQTT-3.8.3-5), but with them clear
            // the options failed on Maximum QoS 3, which section 3.8.3.1 calls a Protocol Error.
            Error::InvalidSubscriptionOptions(b) if b & 0xC0 == 0 => R::ProtocolError,
            // CONNACK cannot carry 0x84 through a DISCONNECT code; the caller that decodes a
            // CONNECT answers with `ConnectReasonCode::UnsupportedProtocolVersion` instead.
            Error::UnsupportedProtocol { .. } => R::ProtocolError,
            _ => R::MalformedPacket,
        }
    }

    /// True when the error is a Malformed Packet (reason code 0x81).
    pub fn is_malformed(&self) -> bool {
        self.disconnect_reason() == DisconnectReasonCode::MalformedPacket
    }
}
