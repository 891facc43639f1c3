//! Byte-exact vectors for every packet type, written by hand from the field layouts of the
//! MQTT v5 specification (chapter 3), not captured from our own encoder. Each vector is
//! decoded and compared with the expected packet, re-encoded and compared with the bytes,
//! and every strict prefix of it must decode as "need more bytes".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use paho_packets::*;

/// Concatenates byte pieces, so a vector can be written field by field.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn s(v: &str) -> MqttString {
    MqttString::from(v)
}

fn check(bytes: &[u8], expected: Packet) {
    // Every strict prefix is incomplete, never an error and never a packet.
    for cut in 0..bytes.len() {
        let mut partial = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut partial, MAX_PACKET_SIZE),
            Ok(None),
            "prefix of {cut} bytes of {expected:?}"
        );
        assert_eq!(
            partial.len(),
            cut,
            "a partial decode must not consume bytes"
        );
    }
    // The whole vector, followed by the start of another packet, decodes to exactly one.
    let mut buf = BytesMut::from(&cat(&[bytes, &[0xC0]])[..]);
    let got = decode(&mut buf, MAX_PACKET_SIZE).unwrap();
    assert_eq!(got.as_ref(), Some(&expected));
    assert_eq!(
        &buf[..],
        &[0xC0],
        "the decoder must consume exactly one packet"
    );
    // Re-encoding gives the same bytes, and the size was predicted exactly.
    let mut out = BytesMut::new();
    let n = expected.encode(&mut out).unwrap();
    assert_eq!(&out[..], bytes, "re-encoding {expected:?}");
    assert_eq!(n, bytes.len());
    assert_eq!(expected.encoded_len().unwrap(), bytes.len());
    assert_eq!(
        Packet::decode_exact(Bytes::copy_from_slice(bytes)),
        Ok(expected)
    );
}

#[test]
fn connect_minimal() {
    // 3.1: fixed header 0x10; "MQTT", level 5, flags 0x02 (clean start), keepalive 60,
    // no properties, client id "c".
    let bytes = cat(&[
        &[0x10, 0x0E],
        &[0x00, 0x04],
        b"MQTT",
        &[0x05, 0x02, 0x00, 0x3C, 0x00],
        &[0x00, 0x01],
        b"c",
    ]);
    check(
        &bytes,
        Packet::from(Connect {
            clean_start: true,
            keep_alive: 60,
            client_id: s("c"),
            ..Default::default()
        }),
    );
}

#[test]
fn connect_every_field() {
    let bytes = cat(&[
        &[0x10, 0x61], // remaining length 97
        &[0x00, 0x04],
        b"MQTT",
        &[0x05],
        // user name, password, will retain, will QoS 1, will flag, clean start
        &[0xEE],
        &[0x00, 0x3C],
        // properties: 40 bytes
        &[0x28],
        &[0x11, 0x00, 0x00, 0x00, 0x78], // session expiry 120
        &[0x21, 0x00, 0x14],             // receive maximum 20
        &[0x27, 0x00, 0x00, 0x10, 0x00], // maximum packet size 4096
        &[0x22, 0x00, 0x0A],             // topic alias maximum 10
        &[0x19, 0x01],                   // request response information
        &[0x17, 0x00],                   // request problem information
        &[0x15, 0x00, 0x05],
        b"SCRAM",                                    // authentication method
        &[0x16, 0x00, 0x02, 0x01, 0x02],             // authentication data
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'], // user property
        // payload: client id
        &[0x00, 0x03],
        b"cid",
        // will properties: 26 bytes
        &[0x1A],
        &[0x18, 0x00, 0x00, 0x00, 0x05], // will delay 5
        &[0x01, 0x01],                   // payload format: UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x3C], // message expiry 60
        &[0x03, 0x00, 0x03],
        b"t/p",                    // content type
        &[0x08, 0x00, 0x01, b'r'], // response topic
        &[0x09, 0x00, 0x01, 0xAA], // correlation data
        // will topic, will payload, user name, password
        &[0x00, 0x01, b'w'],
        &[0x00, 0x02, b'b', b'y'],
        &[0x00, 0x01, b'u'],
        &[0x00, 0x02, b'p', b'w'],
    ]);
    let mut properties = ConnectProperties {
        session_expiry_interval: Some(120),
        receive_maximum: Some(20),
        maximum_packet_size: Some(4096),
        topic_alias_maximum: Some(10),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        authentication_method: Some(s("SCRAM")),
        authentication_data: Some(Bytes::from_static(&[1, 2])),
        ..Default::default()
    };
    properties.user_properties.push((s("k"), s("v")));
    check(
        &bytes,
        Packet::from(Connect {
            clean_start: true,
            keep_alive: 60,
            properties,
            client_id: s("cid"),
            will: Some(Will {
                topic: s("w"),
                payload: Bytes::from_static(b"by"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(true),
                    message_expiry_interval: Some(60),
                    content_type: Some(s("t/p")),
                    response_topic: Some(s("r")),
                    correlation_data: Some(Bytes::from_static(&[0xAA])),
                    user_properties: vec![],
                },
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"pw")),
        }),
    );
}

#[test]
fn connack_minimal() {
    // 3.2: flags 0, reason Success, empty properties.
    check(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        Packet::from(ConnAck::default()),
    );
    // A refusal.
    check(
        &[0x20, 0x03, 0x00, 0x87, 0x00],
        Packet::from(ConnAck {
            reason_code: ConnectReasonCode::NotAuthorized,
            ..Default::default()
        }),
    );
}

#[test]
fn connack_every_property() {
    let bytes = cat(&[
        &[0x20, 0x44],                   // remaining length 68
        &[0x01, 0x00],                   // session present, success
        &[0x41],                         // properties: 65 bytes
        &[0x11, 0x00, 0x00, 0x0E, 0x10], // session expiry 3600
        &[0x21, 0x00, 0x0A],             // receive maximum 10
        &[0x24, 0x01],                   // maximum QoS 1
        &[0x25, 0x00],                   // retain not available
        &[0x27, 0x00, 0x01, 0x00, 0x00], // maximum packet size 65536
        &[0x12, 0x00, 0x03],
        b"id1",              // assigned client identifier
        &[0x22, 0x00, 0x05], // topic alias maximum 5
        &[0x1F, 0x00, 0x02],
        b"ok",               // reason string
        &[0x28, 0x01],       // wildcard subscriptions available
        &[0x29, 0x00],       // subscription identifiers not available
        &[0x2A, 0x01],       // shared subscriptions available
        &[0x13, 0x00, 0x1E], // server keepalive 30
        &[0x1A, 0x00, 0x02],
        b"ri", // response information
        &[0x1C, 0x00, 0x02],
        b"s2",                     // server reference
        &[0x15, 0x00, 0x01, b'm'], // authentication method
        &[0x16, 0x00, 0x01, 0x07], // authentication data
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'],
    ]);
    let properties = ConnAckProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(10),
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        maximum_packet_size: Some(65536),
        assigned_client_identifier: Some(s("id1")),
        topic_alias_maximum: Some(5),
        reason_string: Some(s("ok")),
        wildcard_subscription_available: Some(true),
        subscription_identifiers_available: Some(false),
        shared_subscription_available: Some(true),
        server_keep_alive: Some(30),
        response_information: Some(s("ri")),
        server_reference: Some(s("s2")),
        authentication_method: Some(s("m")),
        authentication_data: Some(Bytes::from_static(&[7])),
        user_properties: vec![(s("a"), s("b"))],
    };
    check(
        &bytes,
        Packet::from(ConnAck {
            session_present: true,
            reason_code: ConnectReasonCode::Success,
            properties,
        }),
    );
}

#[test]
fn publish_qos0() {
    // 3.3: topic "a/b", no packet id at QoS 0, empty properties, payload "x".
    let bytes = cat(&[&[0x30, 0x07, 0x00, 0x03], b"a/b", &[0x00], b"x"]);
    check(
        &bytes,
        Packet::Publish(Publish {
            topic: s("a/b"),
            payload: Bytes::from_static(b"x"),
            ..Default::default()
        }),
    );
}

#[test]
fn publish_qos1_dup_retain_every_property() {
    let bytes = cat(&[
        &[0x3B, 0x2E], // DUP, QoS 1, RETAIN; remaining length 46
        &[0x00, 0x01, b't'],
        &[0x00, 0x0A],                   // packet id 10
        &[0x26],                         // properties: 38 bytes
        &[0x01, 0x01],                   // payload format: UTF-8
        &[0x02, 0x00, 0x00, 0x00, 0x0A], // message expiry 10
        &[0x23, 0x00, 0x02],             // topic alias 2
        &[0x08, 0x00, 0x01, b'r'],       // response topic
        &[0x09, 0x00, 0x02, 0x01, 0x02], // correlation data
        &[0x03, 0x00, 0x04],
        b"json",             // content type
        &[0x0B, 0x01],       // subscription identifier 1
        &[0x0B, 0x80, 0x01], // subscription identifier 128
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        b"hi",
    ]);
    check(
        &bytes,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("t"),
            packet_id: Some(pid(10)),
            properties: PublishProperties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(10),
                topic_alias: Some(2),
                response_topic: Some(s("r")),
                correlation_data: Some(Bytes::from_static(&[1, 2])),
                content_type: Some(s("json")),
                subscription_identifiers: vec![1, 128],
                user_properties: vec![(s("k"), s("v"))],
            },
            payload: Bytes::from_static(b"hi"),
        }),
    );
}

#[test]
fn publish_qos2_alias_only() {
    // An empty topic name is allowed when a topic alias is present (3.3.2.3.4).
    let bytes = [0x34, 0x08, 0x00, 0x00, 0x00, 0x01, 0x03, 0x23, 0x00, 0x01];
    check(
        &bytes,
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: Some(pid(1)),
            properties: PublishProperties {
                topic_alias: Some(1),
                ..Default::default()
            },
            ..Default::default()
        }),
    );
}

#[test]
fn publish_large_payload_length_encoding() {
    // 200-byte payload: remaining length 2 + 1 + 1 + 200 = 204 = 0xCC 0x01.
    let payload = vec![0x5A; 200];
    let bytes = cat(&[&[0x30, 0xCC, 0x01, 0x00, 0x01, b'z', 0x00], &payload]);
    check(
        &bytes,
        Packet::Publish(Publish {
            topic: s("z"),
            payload: Bytes::from(payload.clone()),
            ..Default::default()
        }),
    );
}

#[test]
fn puback_forms() {
    // 3.4.2.1: reason code and properties may be omitted.
    check(
        &[0x40, 0x02, 0x00, 0x01],
        Packet::PubAck(PubAck::new(pid(1))),
    );
    check(
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        Packet::PubAck(PubAck {
            packet_id: pid(1),
            reason_code: PubAckReasonCode::NoMatchingSubscribers,
            properties: Default::default(),
        }),
    );
    check(
        &cat(&[
            &[0x40, 0x0A, 0x00, 0x01, 0x87, 0x06, 0x1F, 0x00, 0x03],
            b"bad",
        ]),
        Packet::PubAck(PubAck {
            packet_id: pid(1),
            reason_code: PubAckReasonCode::NotAuthorized,
            properties: AckProperties {
                reason_string: Some(s("bad")),
                user_properties: vec![],
            },
        }),
    );
    // A success code with empty properties written out in full decodes the same.
    let mut buf = BytesMut::from(&[0x40u8, 0x04, 0x00, 0x01, 0x00, 0x00][..]);
    assert_eq!(
        decode(&mut buf, MAX_PACKET_SIZE).unwrap(),
        Some(Packet::PubAck(PubAck::new(pid(1))))
    );
}

#[test]
fn pubrec_pubrel_pubcomp() {
    check(
        &[0x50, 0x03, 0x00, 0x02, 0x91],
        Packet::PubRec(PubRec {
            packet_id: pid(2),
            reason_code: PubRecReasonCode::PacketIdentifierInUse,
            properties: Default::default(),
        }),
    );
    check(
        &[0x50, 0x02, 0xFF, 0xFF],
        Packet::PubRec(PubRec::new(pid(65535))),
    );
    check(
        &[0x62, 0x02, 0x00, 0x03],
        Packet::PubRel(PubRel::new(pid(3))),
    );
    check(
        &[0x62, 0x03, 0x00, 0x03, 0x92],
        Packet::PubRel(PubRel {
            packet_id: pid(3),
            reason_code: PubRelReasonCode::PacketIdentifierNotFound,
            properties: Default::default(),
        }),
    );
    check(
        &[0x70, 0x02, 0x00, 0x04],
        Packet::PubComp(PubComp::new(pid(4))),
    );
    check(
        &[
            0x70, 0x0B, 0x00, 0x04, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
        ],
        Packet::PubComp(PubComp {
            packet_id: pid(4),
            reason_code: PubCompReasonCode::Success,
            properties: AckProperties {
                reason_string: None,
                user_properties: vec![(s("k"), s("v"))],
            },
        }),
    );
}

#[test]
fn subscribe_with_options() {
    let bytes = cat(&[
        &[0x82, 0x1E],
        &[0x00, 0x0A],
        &[0x02, 0x0B, 0x05], // subscription identifier 5
        &[0x00, 0x03],
        b"a/#",
        &[0x01], // QoS 1
        &[0x00, 0x0A],
        b"$share/g/x",
        &[0x2A], // QoS 2, retain as published, retain handling 2
        &[0x00, 0x03],
        b"+/y",
        &[0x04], // QoS 0, no local
    ]);
    check(
        &bytes,
        Packet::Subscribe(Subscribe {
            packet_id: pid(10),
            properties: SubscribeProperties {
                subscription_identifier: Some(5),
                user_properties: vec![],
            },
            subscriptions: vec![
                Subscription::new("a/#", SubscriptionOptions::qos(QoS::AtLeastOnce)),
                Subscription::new(
                    "$share/g/x",
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                Subscription::new(
                    "+/y",
                    SubscriptionOptions {
                        no_local: true,
                        ..Default::default()
                    },
                ),
            ],
        }),
    );
}

#[test]
fn suback() {
    check(
        &[0x90, 0x07, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80, 0xA2],
        Packet::SubAck(SubAck {
            packet_id: pid(10),
            properties: Default::default(),
            reason_codes: vec![
                SubAckReasonCode::GrantedQoS1,
                SubAckReasonCode::GrantedQoS2,
                SubAckReasonCode::UnspecifiedError,
                SubAckReasonCode::WildcardSubscriptionsNotSupported,
            ],
        }),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    let bytes = cat(&[
        &[0xA2, 0x12, 0x00, 0x0B],
        &[0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x00, 0x03],
        b"a/#",
        &[0x00, 0x01],
        b"+",
    ]);
    check(
        &bytes,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(11),
            properties: UnsubscribeProperties {
                user_properties: vec![(s("k"), s("v"))],
            },
            filters: vec![s("a/#"), s("+")],
        }),
    );
    check(
        &[0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11],
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(11),
            properties: Default::default(),
            reason_codes: vec![
                UnsubAckReasonCode::Success,
                UnsubAckReasonCode::NoSubscriptionExisted,
            ],
        }),
    );
}

#[test]
fn pings() {
    check(&[0xC0, 0x00], Packet::PingReq);
    check(&[0xD0, 0x00], Packet::PingResp);
}

#[test]
fn disconnect_forms() {
    check(&[0xE0, 0x00], Packet::Disconnect(Disconnect::default()));
    check(
        &[0xE0, 0x01, 0x04],
        Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::DisconnectWithWillMessage,
        )),
    );
    let bytes = cat(&[
        &[0xE0, 0x11, 0x9C, 0x0F],
        &[0x11, 0x00, 0x00, 0x00, 0x00],
        &[0x1F, 0x00, 0x02],
        b"by",
        &[0x1C, 0x00, 0x02],
        b"s2",
    ]);
    check(
        &bytes,
        Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::UseAnotherServer,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some(s("by")),
                server_reference: Some(s("s2")),
                user_properties: vec![],
            },
        }),
    );
}

#[test]
fn auth_forms() {
    check(&[0xF0, 0x00], Packet::Auth(Auth::default()));
    let bytes = cat(&[
        &[0xF0, 0x13, 0x18, 0x11],
        &[0x15, 0x00, 0x05],
        b"SCRAM",
        &[0x16, 0x00, 0x02, 0x01, 0x02],
        &[0x1F, 0x00, 0x01, b'r'],
    ]);
    check(
        &bytes,
        Packet::Auth(Auth {
            reason_code: AuthReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
                reason_string: Some(s("r")),
                user_properties: vec![],
            },
        }),
    );
}

#[test]
fn properties_in_any_order_decode_the_same() {
    // The encoder writes a fixed order; the decoder must accept any order.
    let bytes = [
        0x30, 0x0F, 0x00, 0x01, b't', 0x0B, 0x26, 0x00, 0x01, b'k', 0x00, 0x00, 0x02, 0x00, 0x00,
        0x00, 0x01,
    ];
    let mut buf = BytesMut::from(&bytes[..]);
    let Some(Packet::Publish(p)) = decode(&mut buf, MAX_PACKET_SIZE).unwrap() else {
        panic!("expected a PUBLISH");
    };
    assert_eq!(p.properties.message_expiry_interval, Some(1));
    assert_eq!(p.properties.user_properties, vec![(s("k"), s(""))]);
    assert!(p.payload.is_empty());
}

#[test]
fn decoded_payload_shares_the_read_buffer() {
    let bytes = cat(&[&[0x30, 0x0A, 0x00, 0x01, b't', 0x00], b"abcdefg"]);
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, MAX_PACKET_SIZE).unwrap() else {
        panic!("expected a PUBLISH");
    };
    // Zero copy: the payload and the topic point into the original allocation.
    assert_eq!(p.payload.as_ptr() as usize, base + 6);
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0u8, 0x00, 0xD0, 0x00, 0x40, 0x02, 0x00][..]);
    assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Ok(Some(Packet::PingReq)));
    assert_eq!(
        decode(&mut buf, MAX_PACKET_SIZE),
        Ok(Some(Packet::PingResp))
    );
    assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Ok(None));
    buf.extend_from_slice(&[0x07]);
    assert_eq!(
        decode(&mut buf, MAX_PACKET_SIZE),
        Ok(Some(Packet::PubAck(PubAck::new(pid(7)))))
    );
    assert!(buf.is_empty());
}

#[test]
fn success_codes_are_written_when_properties_follow() {
    // 3.15.2.1 / 3.14.2.1 / 3.4.2.1: only the code *and* the properties together may be left
    // out; with properties, a Success (0x00) code is on the wire.
    check(
        &cat(&[&[0xF0, 0x0B, 0x00, 0x09, 0x15, 0x00, 0x06], b"SCRAM1"]),
        Packet::Auth(Auth {
            reason_code: AuthReasonCode::Success,
            properties: AuthProperties {
                authentication_method: Some(s("SCRAM1")),
                ..Default::default()
            },
        }),
    );
    check(
        &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x3C],
        Packet::Disconnect(Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: DisconnectProperties {
                session_expiry_interval: Some(60),
                ..Default::default()
            },
        }),
    );
    check(
        &[0x70, 0x08, 0x00, 0x02, 0x00, 0x04, 0x1F, 0x00, 0x01, b'r'],
        Packet::PubComp(PubComp {
            packet_id: pid(2),
            reason_code: PubCompReasonCode::Success,
            properties: AckProperties {
                reason_string: Some(s("r")),
                user_properties: vec![],
            },
        }),
    );
}

#[test]
fn bom_and_noncharacters_are_kept_byte_for_byte() {
    // MQTT-1.5.4-3: 0xEF 0xBB 0xBF is U+FEFF wherever it appears and must not be skipped or
    // stripped. Non-characters (U+FFFF) are allowed (a receiver MAY refuse them; we do not).
    let topic = "\u{FEFF}a/\u{FFFF}";
    assert_eq!(topic.len(), 8);
    let bytes = cat(&[&[0x30, 0x0B, 0x00, 0x08], topic.as_bytes(), &[0x00]]);
    check(
        &bytes,
        Packet::Publish(Publish {
            topic: s(topic),
            ..Default::default()
        }),
    );
}

#[test]
fn password_without_user_name() {
    // 3.1.2.9: MQTT v5 allows a password without a user name (flags 0x40).
    let bytes = cat(&[
        &[0x10, 0x12, 0x00, 0x04],
        b"MQTT",
        &[0x05, 0x40, 0x00, 0x00, 0x00],
        &[0x00, 0x01, b'c'],
        &[0x00, 0x02, b'p', b'w'],
    ]);
    check(
        &bytes,
        Packet::from(Connect {
            client_id: s("c"),
            password: Some(Bytes::from_static(b"pw")),
            ..Default::default()
        }),
    );
}
