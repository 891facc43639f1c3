//! Reason codes, one enum per packet so that a code can only hold the values the
//! specification allows in that packet (MQTT v5 section 2.4).

use crate::Error;

macro_rules! reason_codes {
    // Several packets that the specification gives the same list of codes: one enum each,
    // from one list.
    (
        $( $(#[$meta:meta])* $name:ident in $packet:literal ),+ ; $body:tt
    ) => {
        $( reason_codes! { $(#[$meta])* $name in $packet $body } )+
    };
    (
        $(#[$meta:meta])*
        $name:ident in $packet:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// The code's byte on the wire.
            pub const fn as_u8(self) -> u8 {
                self as u8
            }

            /// True for the failure codes (0x80 and above).
            pub const fn is_error(self) -> bool {
                (self as u8) >= 0x80
            }
        }

        impl From<$name> for u8 {
            fn from(code: $name) -> u8 {
                code as u8
            }
        }

        impl TryFrom<u8> for $name {
            type Error = Error;
            fn try_from(code: u8) -> Result<Self, Error> {
                match code {
                    $( $value => Ok($name::$variant), )+
                    _ => Err(Error::InvalidReasonCode { packet: $packet, code }),
                }
            }
        }
    };
}

reason_codes! {
    /// The reason code of a CONNACK.
    ConnectReasonCode in "CONNACK" {
        /// The connection is accepted.
        #[default]
        Success = 0x00,
        /// The server does not wish to reveal the reason.
        UnspecifiedError = 0x80,
        /// The CONNECT could not be parsed.
        MalformedPacket = 0x81,
        /// The CONNECT broke the protocol.
        ProtocolError = 0x82,
        /// Valid, but not accepted by this server.
        ImplementationSpecificError = 0x83,
        /// The server does not speak the requested protocol version.
        UnsupportedProtocolVersion = 0x84,
        /// The client identifier is not allowed.
        ClientIdentifierNotValid = 0x85,
        /// Wrong user name or password.
        BadUserNameOrPassword = 0x86,
        /// The client is not authorized to connect.
        NotAuthorized = 0x87,
        /// The server is not available.
        ServerUnavailable = 0x88,
        /// The server is busy; try later.
        ServerBusy = 0x89,
        /// This client is banned.
        Banned = 0x8A,
        /// The authentication method is not supported.
        BadAuthenticationMethod = 0x8C,
        /// The will topic is not accepted.
        TopicNameInvalid = 0x90,
        /// The CONNECT exceeded the maximum packet size.
        PacketTooLarge = 0x95,
        /// A quota was exceeded.
        QuotaExceeded = 0x97,
        /// The will payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// The server does not support retained messages and the will asked to be retained.
        RetainNotSupported = 0x9A,
        /// The server does not support the will QoS.
        QoSNotSupported = 0x9B,
        /// Use another server (temporarily).
        UseAnotherServer = 0x9C,
        /// Use another server (permanently).
        ServerMoved = 0x9D,
        /// Connection rate limit exceeded.
        ConnectionRateExceeded = 0x9F,
    }
}

reason_codes! {
    /// The reason code of a PUBACK.
    PubAckReasonCode in "PUBACK",
    /// The reason code of a PUBREC.
    PubRecReasonCode in "PUBREC"; {
        /// The message is accepted.
        #[default]
        Success = 0x00,
        /// Accepted, but nobody is subscribed.
        NoMatchingSubscribers = 0x10,
        /// Not accepted, reason not revealed.
        UnspecifiedError = 0x80,
        /// Valid, but not accepted by this server.
        ImplementationSpecificError = 0x83,
        /// The publisher is not authorized.
        NotAuthorized = 0x87,
        /// The topic name is not accepted.
        TopicNameInvalid = 0x90,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// A quota was exceeded.
        QuotaExceeded = 0x97,
        /// The payload does not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
    }
}

reason_codes! {
    /// The reason code of a PUBREL.
    PubRelReasonCode in "PUBREL",
    /// The reason code of a PUBCOMP.
    PubCompReasonCode in "PUBCOMP"; {
        /// Released (PUBREL) or complete (PUBCOMP).
        #[default]
        Success = 0x00,
        /// The packet identifier is not known.
        PacketIdentifierNotFound = 0x92,
    }
}

reason_codes! {
    /// The reason code of one subscription in a SUBACK.
    SubAckReasonCode in "SUBACK" {
        /// Subscribed; messages are sent at QoS 0 at most.
        #[default]
        GrantedQoS0 = 0x00,
        /// Subscribed; messages are sent at QoS 1 at most.
        GrantedQoS1 = 0x01,
        /// Subscribed; messages are sent at QoS 2 at most.
        GrantedQoS2 = 0x02,
        /// Not subscribed, reason not revealed.
        UnspecifiedError = 0x80,
        /// Valid, but not accepted by this server.
        ImplementationSpecificError = 0x83,
        /// Not authorized to subscribe.
        NotAuthorized = 0x87,
        /// The topic filter is not accepted.
        TopicFilterInvalid = 0x8F,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
        /// A quota was exceeded.
        QuotaExceeded = 0x97,
        /// The server does not support shared subscriptions.
        SharedSubscriptionsNotSupported = 0x9E,
        /// The server does not support subscription identifiers.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// The server does not support wildcard subscriptions.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_codes! {
    /// The reason code of one filter in an UNSUBACK.
    UnsubAckReasonCode in "UNSUBACK" {
        /// Unsubscribed.
        #[default]
        Success = 0x00,
        /// There was no such subscription.
        NoSubscriptionExisted = 0x11,
        /// Not unsubscribed, reason not revealed.
        UnspecifiedError = 0x80,
        /// Valid, but not accepted by this server.
        ImplementationSpecificError = 0x83,
        /// Not authorized to unsubscribe.
        NotAuthorized = 0x87,
        /// The topic filter is not accepted.
        TopicFilterInvalid = 0x8F,
        /// The packet identifier is already in use.
        PacketIdentifierInUse = 0x91,
    }
}

reason_codes! {
    /// The reason code of a DISCONNECT.
    DisconnectReasonCode in "DISCONNECT" {
        /// Close normally; do not send the will.
        #[default]
        NormalDisconnection = 0x00,
        /// Close, and have the server send the will.
        DisconnectWithWillMessage = 0x04,
        /// Reason not revealed.
        UnspecifiedError = 0x80,
        /// A packet could not be parsed.
        MalformedPacket = 0x81,
        /// A packet broke the protocol.
        ProtocolError = 0x82,
        /// Valid, but not accepted by this implementation.
        ImplementationSpecificError = 0x83,
        /// Not authorized.
        NotAuthorized = 0x87,
        /// The server is busy.
        ServerBusy = 0x89,
        /// The server is shutting down.
        ServerShuttingDown = 0x8B,
        /// No packet within 1.5 times the keepalive.
        KeepAliveTimeout = 0x8D,
        /// Another connection took the session over.
        SessionTakenOver = 0x8E,
        /// A topic filter is not accepted.
        TopicFilterInvalid = 0x8F,
        /// A topic name is not accepted.
        TopicNameInvalid = 0x90,
        /// More QoS 1/2 publishes in flight than Receive Maximum allows.
        ReceiveMaximumExceeded = 0x93,
        /// A topic alias is invalid.
        TopicAliasInvalid = 0x94,
        /// A packet exceeded the maximum packet size.
        PacketTooLarge = 0x95,
        /// The message rate is too high.
        MessageRateTooHigh = 0x96,
        /// A quota was exceeded.
        QuotaExceeded = 0x97,
        /// Closed by an administrator.
        AdministrativeAction = 0x98,
        /// A payload did not match its payload format indicator.
        PayloadFormatInvalid = 0x99,
        /// Retained messages are not supported.
        RetainNotSupported = 0x9A,
        /// The QoS is not supported.
        QoSNotSupported = 0x9B,
        /// Use another server (temporarily).
        UseAnotherServer = 0x9C,
        /// Use another server (permanently).
        ServerMoved = 0x9D,
        /// Shared subscriptions are not supported.
        SharedSubscriptionsNotSupported = 0x9E,
        /// Connection rate limit exceeded.
        ConnectionRateExceeded = 0x9F,
        /// The maximum connection time was reached.
        MaximumConnectTime = 0xA0,
        /// Subscription identifiers are not supported.
        SubscriptionIdentifiersNotSupported = 0xA1,
        /// Wildcard subscriptions are not supported.
        WildcardSubscriptionsNotSupported = 0xA2,
    }
}

reason_codes! {
    /// The reason code of an AUTH.
    AuthReasonCode in "AUTH" {
        /// Authentication succeeded.
        #[default]
        Success = 0x00,
        /// Continue the authentication exchange.
        ContinueAuthentication = 0x18,
        /// Start a re-authentication.
        ReAuthenticate = 0x19,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reject_unknown() {
        for b in 0..=255u8 {
            if let Ok(c) = DisconnectReasonCode::try_from(b) {
                assert_eq!(c.as_u8(), b);
                assert_eq!(c.is_error(), b >= 0x80);
            }
        }
        assert_eq!(
            PubRelReasonCode::try_from(0x80),
            Err(Error::InvalidReasonCode {
                packet: "PUBREL",
                code: 0x80
            })
        );
        assert_eq!(
            SubAckReasonCode::try_from(0x02),
            Ok(SubAckReasonCode::GrantedQoS2)
        );
        assert!(AuthReasonCode::try_from(0x01).is_err());
    }
}
