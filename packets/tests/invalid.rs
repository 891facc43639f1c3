//! One test per validation rule: each feeds a packet that breaks exactly that rule and checks
//! the typed error and the reason code the receiver must answer with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use paho_packets::*;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn decode_err(bytes: &[u8]) -> Error {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, MAX_PACKET_SIZE) {
        Err(e) => e,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

fn malformed(bytes: &[u8]) -> Error {
    let e = decode_err(bytes);
    assert_eq!(
        e.disconnect_reason(),
        DisconnectReasonCode::MalformedPacket,
        "{e}"
    );
    e
}

fn protocol_error(bytes: &[u8]) -> Error {
    let e = decode_err(bytes);
    assert_eq!(
        e.disconnect_reason(),
        DisconnectReasonCode::ProtocolError,
        "{e}"
    );
    e
}

#[test]
fn reserved_packet_type() {
    assert_eq!(malformed(&[0x00, 0x00]), Error::ReservedPacketType);
}

#[test]
fn reserved_fixed_header_flags() {
    // PUBACK must have flags 0000, PUBREL/SUBSCRIBE/UNSUBSCRIBE 0010.
    for first in [0x41u8, 0x60, 0x80, 0xA0, 0xC1, 0x2F, 0xE8, 0xF1, 0x11] {
        assert!(
            matches!(malformed(&[first, 0x00]), Error::InvalidHeaderFlags { .. }),
            "{first:#04x}"
        );
    }
}

#[test]
fn qos_3() {
    assert_eq!(
        malformed(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]),
        Error::InvalidQoS(3)
    );
}

#[test]
fn dup_on_qos0() {
    assert_eq!(
        malformed(&[0x38, 0x04, 0x00, 0x01, b't', 0x00]),
        Error::DupOnQoS0
    );
}

#[test]
fn packet_id_zero() {
    assert_eq!(
        protocol_error(&[0x40, 0x02, 0x00, 0x00]),
        Error::ZeroPacketId("PUBACK")
    );
    assert_eq!(
        protocol_error(&[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00]),
        Error::ZeroPacketId("PUBLISH")
    );
    assert_eq!(
        protocol_error(&[0x82, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00]),
        Error::ZeroPacketId("SUBSCRIBE")
    );
}

#[test]
fn variable_byte_integer_longer_than_4_bytes() {
    assert_eq!(
        malformed(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
        Error::VarIntTooLong
    );
    // Four continuation bytes are already fatal: no need to wait for a fifth.
    assert_eq!(
        malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
        Error::VarIntTooLong
    );
    // Inside a property block too.
    assert_eq!(
        malformed(&cat(&[
            &[0x30, 0x09, 0x00, 0x01, b't', 0x05],
            &[0x0B, 0x80, 0x80, 0x80, 0x80]
        ])),
        Error::VarIntTooLong
    );
}

#[test]
fn oversize_rejected_before_allocation() {
    // A header claiming 268,435,455 bytes against a 1 KiB limit: rejected from 5 bytes, and
    // the buffer has not grown to hold the claimed size.
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    let err = decode(&mut buf, 1024).unwrap_err();
    assert_eq!(
        err,
        Error::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        }
    );
    assert_eq!(
        err.disconnect_reason(),
        DisconnectReasonCode::PacketTooLarge
    );
    assert!(buf.capacity() < 4096, "capacity grew to {}", buf.capacity());
    // Exactly at the limit is fine, one byte over is not.
    let ok = [0x30, 0x05, 0x00, 0x01, b't', 0x00, b'x'];
    assert!(decode(&mut BytesMut::from(&ok[..]), 7).unwrap().is_some());
    assert!(decode(&mut BytesMut::from(&ok[..]), 6).is_err());
    // And the limit applies even before the body has arrived.
    assert!(decode(&mut BytesMut::from(&ok[..2]), 6).is_err());
}

#[test]
fn property_not_allowed_in_packet() {
    // Message Expiry (0x02) in a PUBACK.
    let e = malformed(&[
        0x40, 0x09, 0x00, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x00, 0x01,
    ]);
    assert_eq!(
        e,
        Error::PropertyNotAllowed {
            packet: "acknowledgement",
            id: 0x02
        }
    );
    // Topic Alias (0x23) in a CONNECT.
    let connect = cat(&[
        &[0x10, 0x10, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x00, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, 0x00, 0x00],
    ]);
    assert!(matches!(
        malformed(&connect),
        Error::PropertyNotAllowed { id: 0x23, .. }
    ));
    // An unknown identifier.
    assert!(matches!(
        malformed(&[0xE0, 0x03, 0x00, 0x01, 0x7F]),
        Error::PropertyNotAllowed { id: 0x7F, .. }
    ));
    // Subscription Identifier in SUBACK.
    assert!(matches!(
        malformed(&[0x90, 0x06, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00]),
        Error::PropertyNotAllowed { id: 0x0B, .. }
    ));
}

#[test]
fn duplicated_property() {
    let twice = [
        0x30, 0x0E, 0x00, 0x01, b't', 0x0A, 0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00,
        0x02,
    ];
    assert_eq!(protocol_error(&twice), Error::DuplicateProperty(0x02));
    // User Property and (in PUBLISH) Subscription Identifier may repeat.
    let ok = [
        0x30, 0x14, 0x00, 0x01, b't', 0x10, 0x26, 0x00, 0x00, 0x00, 0x00, 0x26, 0x00, 0x00, 0x00,
        0x00, 0x0B, 0x01, 0x0B, 0x02, 0x0B, 0x03,
    ];
    let Some(Packet::Publish(p)) = decode(&mut BytesMut::from(&ok[..]), MAX_PACKET_SIZE).unwrap()
    else {
        panic!("expected PUBLISH")
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2, 3]);
    // But not in SUBSCRIBE.
    let sub = [
        0x82, 0x0A, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
    ];
    let sub = {
        let mut v = sub.to_vec();
        v[1] = (v.len() - 2) as u8;
        v
    };
    assert_eq!(protocol_error(&sub), Error::DuplicateProperty(0x0B));
}

#[test]
fn invalid_property_values() {
    // Receive Maximum 0 in CONNACK.
    assert_eq!(
        protocol_error(&[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00]),
        Error::InvalidPropertyValue(0x21)
    );
    // Maximum QoS 2.
    assert_eq!(
        protocol_error(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02]),
        Error::InvalidPropertyValue(0x24)
    );
    // A boolean of 2.
    assert_eq!(
        protocol_error(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02]),
        Error::InvalidPropertyValue(0x25)
    );
    // Topic Alias 0.
    assert_eq!(
        protocol_error(&[0x30, 0x08, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00, b'x']),
        Error::InvalidPropertyValue(0x23)
    );
    // Subscription Identifier 0.
    assert_eq!(
        protocol_error(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00]),
        Error::InvalidPropertyValue(0x0B)
    );
    // Maximum Packet Size 0.
    assert_eq!(
        protocol_error(&[0x20, 0x08, 0x00, 0x00, 0x05, 0x27, 0x00, 0x00, 0x00, 0x00]),
        Error::InvalidPropertyValue(0x27)
    );
}

#[test]
fn invalid_utf8_and_null() {
    // 0xFF is never valid UTF-8.
    assert_eq!(
        malformed(&[0x30, 0x04, 0x00, 0x01, 0xFF, 0x00]),
        Error::InvalidUtf8
    );
    // An encoded surrogate (U+D800) is not valid UTF-8 either.
    assert_eq!(
        malformed(&[0x30, 0x06, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00]),
        Error::InvalidUtf8
    );
    assert_eq!(
        malformed(&[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00]),
        Error::NullCharacter
    );
    // In a user property of a DISCONNECT.
    assert_eq!(
        malformed(&[0xE0, 0x08, 0x00, 0x06, 0x26, 0x00, 0x01, 0xC3, 0x00, 0x00]),
        Error::InvalidUtf8
    );
    // In a client identifier.
    let connect = cat(&[
        &[0x10, 0x0E, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00],
    ]);
    assert_eq!(malformed(&connect), Error::NullCharacter);
}

#[test]
fn wildcards_in_topic_name() {
    for topic in [&b"a/+"[..], b"#", b"a/b#"] {
        let mut bytes = vec![0x30, (topic.len() + 3) as u8, 0x00, topic.len() as u8];
        bytes.extend_from_slice(topic);
        bytes.push(0x00);
        assert!(matches!(protocol_error(&bytes), Error::InvalidTopicName(_)));
    }
    // An empty topic without a topic alias.
    assert!(matches!(
        protocol_error(&[0x30, 0x03, 0x00, 0x00, 0x00]),
        Error::InvalidTopicName(_)
    ));
    // A will topic with a wildcard.
    let connect = cat(&[
        &[0x10, 0x13, 0x00, 0x04],
        b"MQTT",
        &[
            0x05, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'#', 0x00, 0x00,
        ],
    ]);
    assert!(matches!(
        protocol_error(&connect),
        Error::InvalidTopicName(_)
    ));
}

fn subscribe_with(filter: &[u8], options: u8) -> Vec<u8> {
    let mut v = vec![0x82, 0, 0x00, 0x01, 0x00, 0x00, filter.len() as u8];
    v.extend_from_slice(filter);
    v.push(options);
    v[1] = (v.len() - 2) as u8;
    v
}

#[test]
fn misplaced_wildcards_in_topic_filters() {
    for filter in [
        &b"a/#/b"[..],
        b"a+",
        b"a/b#",
        b"",
        b"$share/g",
        b"$share//a",
        b"$share/g+/a",
    ] {
        assert!(
            matches!(
                protocol_error(&subscribe_with(filter, 0)),
                Error::InvalidTopicFilter(_)
            ),
            "{:?}",
            String::from_utf8_lossy(filter)
        );
    }
    // UNSUBSCRIBE filters are checked the same way.
    assert!(matches!(
        protocol_error(&[0xA2, 0x08, 0x00, 0x01, 0x00, 0x00, 0x03, b'a', b'#', b'b']),
        Error::InvalidTopicFilter(_)
    ));
}

#[test]
fn reserved_subscription_option_bits() {
    assert_eq!(
        malformed(&subscribe_with(b"a", 0xC1)),
        Error::InvalidSubscriptionOptions(0xC1)
    );
    // Maximum QoS 3 is not a reserved bit: section 3.8.3.1 makes it a Protocol Error.
    assert_eq!(
        protocol_error(&subscribe_with(b"a", 0x03)),
        Error::InvalidSubscriptionOptions(0x03)
    );
    // Reserved bits win when both are wrong.
    assert_eq!(
        malformed(&subscribe_with(b"a", 0x43)),
        Error::InvalidSubscriptionOptions(0x43)
    );
    assert_eq!(
        protocol_error(&subscribe_with(b"a", 0x30)),
        Error::InvalidRetainHandling
    );
    assert!(matches!(
        protocol_error(&subscribe_with(b"$share/g/a", 0x04)),
        Error::NoLocalOnSharedSubscription(_)
    ));
}

#[test]
fn empty_subscribe_and_unsubscribe() {
    assert_eq!(
        protocol_error(&[0x82, 0x03, 0x00, 0x01, 0x00]),
        Error::EmptyPayload("SUBSCRIBE")
    );
    assert_eq!(
        protocol_error(&[0xA2, 0x03, 0x00, 0x01, 0x00]),
        Error::EmptyPayload("UNSUBSCRIBE")
    );
    assert_eq!(
        protocol_error(&[0x90, 0x03, 0x00, 0x01, 0x00]),
        Error::EmptyPayload("SUBACK")
    );
}

#[test]
fn fields_overrunning_the_packet() {
    // Topic length 10 with 3 bytes left.
    assert!(matches!(
        malformed(&[0x30, 0x05, 0x00, 0x0A, b'a', b'b', b'c']),
        Error::UnexpectedEnd(_)
    ));
    // Property length beyond the packet.
    assert!(matches!(
        malformed(&[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x01]),
        Error::UnexpectedEnd(_)
    ));
    // A property value cut by the end of the property block (block of 2, value of 4).
    assert!(matches!(
        malformed(&[0x30, 0x09, 0x00, 0x01, b't', 0x02, 0x02, 0x00, 0x00, 0x00, 0x01]),
        Error::UnexpectedEnd(_)
    ));
    // A packet id cut short.
    assert!(matches!(
        malformed(&[0x40, 0x01, 0x00]),
        Error::UnexpectedEnd(_)
    ));
    // A CONNACK without its reason code.
    assert!(matches!(
        malformed(&[0x20, 0x01, 0x00]),
        Error::UnexpectedEnd(_)
    ));
}

#[test]
fn trailing_bytes() {
    assert_eq!(malformed(&[0xC0, 0x01, 0x00]), Error::TrailingBytes(1));
    assert_eq!(
        malformed(&[0x20, 0x04, 0x00, 0x00, 0x00, 0xAA]),
        Error::TrailingBytes(1)
    );
    assert_eq!(
        Packet::decode_exact(Bytes::from_static(&[0xD0, 0x00, 0x00])),
        Err(Error::TrailingBytes(1))
    );
    assert!(matches!(
        Packet::decode_exact(Bytes::from_static(&[0x40, 0x02, 0x00])),
        Err(Error::UnexpectedEnd(_))
    ));
}

#[test]
fn invalid_reason_codes() {
    assert_eq!(
        malformed(&[0x40, 0x03, 0x00, 0x01, 0x05]),
        Error::InvalidReasonCode {
            packet: "PUBACK",
            code: 0x05
        }
    );
    assert_eq!(
        malformed(&[0x62, 0x03, 0x00, 0x01, 0x80]),
        Error::InvalidReasonCode {
            packet: "PUBREL",
            code: 0x80
        }
    );
    assert_eq!(
        malformed(&[0x20, 0x03, 0x00, 0x01, 0x00]),
        Error::InvalidReasonCode {
            packet: "CONNACK",
            code: 0x01
        }
    );
    assert_eq!(
        malformed(&[0xF0, 0x01, 0x01]),
        Error::InvalidReasonCode {
            packet: "AUTH",
            code: 0x01
        }
    );
}

#[test]
fn connect_rules() {
    // MQTT 3.1.1 (level 4) and MQTT 3.1 ("MQIsdp").
    let v311 = cat(&[
        &[0x10, 0x0C, 0x00, 0x04],
        b"MQTT",
        &[0x04, 0x02, 0x00, 0x3C, 0x00, 0x00],
    ]);
    assert!(matches!(
        decode_err(&v311),
        Error::UnsupportedProtocol { level: 4, .. }
    ));
    let v31 = cat(&[
        &[0x10, 0x0E, 0x00, 0x06],
        b"MQIsdp",
        &[0x03, 0x02, 0x00, 0x3C, 0x00, 0x00],
    ]);
    assert!(matches!(
        decode_err(&v31),
        Error::UnsupportedProtocol { .. }
    ));
    // Reserved flag bit 0.
    let reserved = cat(&[
        &[0x10, 0x0D, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00],
    ]);
    assert_eq!(malformed(&reserved), Error::InvalidConnectFlags(0x01));
    // Will QoS without the will flag; will retain without the will flag; will QoS 3.
    for flags in [0x08u8, 0x20, 0x1C] {
        let bad = cat(&[
            &[0x10, 0x0D, 0x00, 0x04],
            b"MQTT",
            &[0x05, flags, 0x00, 0x00, 0x00, 0x00, 0x00],
        ]);
        assert_eq!(malformed(&bad), Error::InvalidConnectFlags(flags));
    }
}

#[test]
fn connack_rules() {
    assert_eq!(
        malformed(&[0x20, 0x03, 0x02, 0x00, 0x00]),
        Error::InvalidConnAckFlags(0x02)
    );
    // Session present on a refused connection.
    assert_eq!(
        malformed(&[0x20, 0x03, 0x01, 0x87, 0x00]),
        Error::InvalidConnAckFlags(0x01)
    );
}

#[test]
fn encoder_refuses_over_long_fields() {
    let long = "a".repeat(65_536);
    let p = Packet::Publish(Publish {
        topic: MqttString::from(long.as_str()),
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    assert_eq!(p.encode(&mut buf), Err(Error::FieldTooLong(65_536)));
    assert!(buf.is_empty(), "a failed encode must not write anything");
    // Exactly 65,535 is fine.
    let p = Packet::Publish(Publish {
        topic: MqttString::from(&long[..65_535]),
        ..Default::default()
    });
    assert!(p.encode(&mut buf).is_ok());

    let props = PublishProperties {
        correlation_data: Some(Bytes::from(vec![0; 70_000])),
        ..Default::default()
    };
    let p = Packet::Publish(Publish {
        topic: "t".into(),
        properties: props,
        ..Default::default()
    });
    assert_eq!(p.encoded_len(), Err(Error::FieldTooLong(70_000)));

    let mut connect = Connect::default();
    connect
        .properties
        .user_properties
        .push(("k".into(), long.as_str().into()));
    assert_eq!(
        Packet::from(connect).encoded_len(),
        Err(Error::FieldTooLong(65_536))
    );
}

#[test]
fn encoder_refuses_invalid_packets() {
    let mut buf = BytesMut::new();
    let wildcard = Packet::Publish(Publish {
        topic: "a/#".into(),
        ..Default::default()
    });
    assert!(matches!(
        wildcard.encode(&mut buf),
        Err(Error::InvalidTopicName(_))
    ));
    let no_id = Packet::Publish(Publish {
        topic: "a".into(),
        qos: QoS::AtLeastOnce,
        ..Default::default()
    });
    assert_eq!(no_id.encode(&mut buf), Err(Error::PacketIdMismatch));
    let nul = Packet::Publish(Publish {
        topic: "a\0".into(),
        ..Default::default()
    });
    assert_eq!(nul.encode(&mut buf), Err(Error::NullCharacter));
    let empty = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![],
    });
    assert_eq!(
        empty.encode(&mut buf),
        Err(Error::EmptyPayload("SUBSCRIBE"))
    );
    let mut zero_rm = ConnAck::default();
    zero_rm.properties.receive_maximum = Some(0);
    assert_eq!(
        Packet::from(zero_rm).encode(&mut buf),
        Err(Error::InvalidPropertyValue(0x21))
    );
    assert!(buf.is_empty());
}

#[test]
fn encoder_honours_maximum_packet_size() {
    let p = Packet::Publish(Publish {
        topic: "t".into(),
        payload: Bytes::from(vec![0; 100]),
        ..Default::default()
    });
    let size = p.encoded_len().unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        p.encode_with_max(&mut buf, size as u32 - 1),
        Err(Error::PacketTooLarge {
            size: size as u64,
            max: size as u32 - 1
        })
    );
    assert!(buf.is_empty());
    assert_eq!(p.encode_with_max(&mut buf, size as u32), Ok(size));
}

#[test]
fn non_minimal_variable_byte_integers() {
    // MQTT-1.5.5-1: a variable byte integer must use the fewest bytes its value needs.
    // Remaining length 0 as 0x80 0x00 (a PINGREQ).
    assert_eq!(malformed(&[0xC0, 0x80, 0x00]), Error::VarIntNotMinimal);
    // Remaining length 2 as 0x82 0x00 (a PUBACK).
    assert_eq!(
        malformed(&[0x40, 0x82, 0x00, 0x00, 0x01]),
        Error::VarIntNotMinimal
    );
    // Property length 0 as 0x80 0x00 in a PUBLISH.
    assert_eq!(
        malformed(&[0x30, 0x06, 0x00, 0x01, b't', 0x80, 0x00, b'x']),
        Error::VarIntNotMinimal
    );
    // Property identifier 0x02 as 0x82 0x00 in a PUBLISH.
    assert_eq!(
        malformed(&[0x30, 0x0B, 0x00, 0x01, b't', 0x06, 0x82, 0x00, 0x00, 0x00, 0x00, 0x01, b'x']),
        Error::VarIntNotMinimal
    );
    // Subscription Identifier 1 as 0x81 0x00 in a SUBSCRIBE.
    assert_eq!(
        malformed(&[0x82, 0x0A, 0x00, 0x01, 0x03, 0x0B, 0x81, 0x00, 0x00, 0x01, b'a', 0x00]),
        Error::VarIntNotMinimal
    );
    // While the length is still arriving, a continuation byte is just "need more".
    assert_eq!(
        decode(&mut BytesMut::from(&[0xC0, 0x80][..]), MAX_PACKET_SIZE),
        Ok(None)
    );
}

#[test]
fn response_topic_must_be_a_topic_name() {
    // MQTT-3.3.2-14: no wildcards; MQTT-4.7.3-1: not empty. PUBLISH with Response Topic "a/#".
    let wild = [
        0x30, 0x0B, 0x00, 0x01, b't', 0x06, 0x08, 0x00, 0x03, b'a', b'/', b'#', b'x',
    ];
    assert!(matches!(
        protocol_error(&wild),
        Error::InvalidTopicName(t) if t == "a/#"
    ));
    let empty = [0x30, 0x08, 0x00, 0x01, b't', 0x03, 0x08, 0x00, 0x00, b'x'];
    assert!(matches!(protocol_error(&empty), Error::InvalidTopicName(_)));
    // The will's Response Topic too: CONNECT, will flag, will properties {0x08 "+"}.
    let will = cat(&[
        &[0x10, 0x16, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x04, 0x08, 0x00, 0x01, b'+'],
        &[0x00, 0x01, b'w', 0x00, 0x00],
    ]);
    assert!(matches!(
        protocol_error(&will),
        Error::InvalidTopicName(t) if t == "+"
    ));
    // The encoder refuses what the decoder refuses.
    for topic in ["a/+", ""] {
        let p = Packet::Publish(Publish {
            topic: "t".into(),
            properties: PublishProperties {
                response_topic: Some(topic.into()),
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(
            matches!(p.encoded_len(), Err(Error::InvalidTopicName(_))),
            "{topic:?}"
        );
    }
}

#[test]
fn authentication_data_without_method() {
    // Section 3.1.2.11.10: Authentication Data without Authentication Method is a Protocol
    // Error. CONNECT with properties {0x16 [0x01]} only.
    let connect = cat(&[
        &[0x10, 0x11, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x00, 0x00, 0x00],
        &[0x04, 0x16, 0x00, 0x01, 0x01],
        &[0x00, 0x00],
    ]);
    assert_eq!(
        protocol_error(&connect),
        Error::AuthenticationDataWithoutMethod
    );
    let mut c = Connect::default();
    c.properties.authentication_data = Some(Bytes::from_static(b"\x01"));
    assert_eq!(
        Packet::from(c.clone()).encoded_len(),
        Err(Error::AuthenticationDataWithoutMethod)
    );
    // With a method it is fine.
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut buf = BytesMut::new();
    Packet::from(c.clone()).encode(&mut buf).unwrap();
    assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Ok(Some(Packet::from(c))));
}

#[test]
fn unlimited_size_header_does_not_reserve_the_claimed_size() {
    // With no limit (the client's default), a 5-byte header claiming 268 MB must not make the
    // decoder reserve 268 MB: the claim is the peer's, the memory ours.
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Ok(None));
    assert_eq!(&buf[..], &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    assert!(
        buf.capacity() <= 1 << 20,
        "capacity grew to {}",
        buf.capacity()
    );
    // A packet that is on its way still gets its room ahead of time.
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x30, 0x80, 0x08]);
    assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Ok(None));
    assert!(buf.capacity() >= 1 + 2 + 1024);
}

#[test]
fn body_error_removes_the_packet_header_error_does_not() {
    // A PUBACK with packet id 0, then a PINGRESP: the bad packet's bytes are gone.
    let mut buf = BytesMut::from(&[0x40, 0x02, 0x00, 0x00, 0xD0, 0x00][..]);
    assert_eq!(
        decode(&mut buf, MAX_PACKET_SIZE),
        Err(Error::ZeroPacketId("PUBACK"))
    );
    assert_eq!(&buf[..], &[0xD0, 0x00]);
    // A bad first byte leaves everything in place.
    let mut buf = BytesMut::from(&[0x41, 0x02, 0x00, 0x01][..]);
    assert!(decode(&mut buf, MAX_PACKET_SIZE).is_err());
    assert_eq!(buf.len(), 4);
}

#[test]
fn encoder_refuses_sums_of_shared_fields_past_the_protocol_maximum() {
    // Clones of one 65,535-byte string share their bytes, so a list of them can describe a
    // packet far larger than memory. The encoder must refuse it from the sizes alone
    // (on a 32-bit target the sum would otherwise overflow `usize`).
    let big = MqttString::from("v".repeat(65_535));
    let mut connack = ConnAck::default();
    connack.properties.user_properties = vec![("k".into(), big.clone()); 4_200];
    assert!(matches!(
        Packet::from(connack).encoded_len(),
        Err(Error::VarIntOutOfRange(_))
    ));
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Default::default(),
        filters: vec![big.clone(); 4_200],
    });
    let mut buf = BytesMut::new();
    assert!(matches!(
        unsubscribe.encode(&mut buf),
        Err(Error::VarIntOutOfRange(_))
    ));
    assert!(buf.is_empty());
}
