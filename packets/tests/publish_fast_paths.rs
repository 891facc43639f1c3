//! The PUBLISH fast paths (encode without properties, decode with an empty property block)
//! against a frame built by hand, at the sizes where the remaining length changes width
//! (127/128, 16,383/16,384, 2,097,151/2,097,152 bytes), with an empty payload, and next to
//! the general path (properties present, up to a 65,535-byte user property).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use paho_packets::{decode, Error, MqttString, Packet, PacketId, Publish, QoS, MAX_PACKET_SIZE};

fn varint(mut v: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return out;
        }
    }
}

/// The frame of a PUBLISH without properties, byte by byte from the specification.
fn by_hand(qos: QoS, retain: bool, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if qos != QoS::AtMostOnce {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.push(0); // property length
    body.extend_from_slice(payload);
    let mut frame = vec![0x30 | ((qos as u8) << 1) | u8::from(retain)];
    frame.extend(varint(body.len()));
    frame.extend(body);
    frame
}

fn publish(qos: QoS, retain: bool, topic: &str, id: u16, payload: Bytes) -> Publish {
    Publish {
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(id).unwrap()),
        payload,
        ..Default::default()
    }
}

#[test]
fn remaining_length_boundaries_and_empty_payload() {
    let topic = "devices/device-42/telemetry/temperature";
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let fixed = 2 + topic.len() + if qos == QoS::AtMostOnce { 0 } else { 2 } + 1;
        for remaining in [fixed, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let payload = Bytes::from(vec![0xA5; remaining - fixed]);
            let p = publish(qos, remaining % 2 == 0, topic, 0x1234, payload.clone());
            let expected = by_hand(qos, remaining % 2 == 0, topic, 0x1234, &payload);
            // Into an exactly-sized buffer (no slack past the frame), into a roomy one, and
            // after bytes already there.
            for (cap, prefix) in [(expected.len(), &b""[..]), (expected.len() + 64, b"xy")] {
                let mut buf = BytesMut::with_capacity(cap);
                buf.extend_from_slice(prefix);
                let n = Packet::Publish(p.clone()).encode(&mut buf).unwrap();
                assert_eq!(n, expected.len(), "{qos:?} remaining {remaining}");
                assert_eq!(n, Packet::Publish(p.clone()).encoded_len().unwrap());
                assert!(
                    buf[prefix.len()..] == expected[..],
                    "{qos:?} remaining {remaining}: encoding differs"
                );
            }
            let mut buf = BytesMut::from(&expected[..]);
            assert_eq!(
                decode(&mut buf, MAX_PACKET_SIZE),
                Ok(Some(Packet::Publish(p.clone())))
            );
            assert!(buf.is_empty());
            assert_eq!(
                Packet::decode_exact(Bytes::from(expected)),
                Ok(Packet::Publish(p))
            );
        }
    }
}

#[test]
fn fast_and_general_paths_agree_on_properties() {
    // A property block of the largest user property (65,535-byte name and value) goes
    // through the general encoder and decoder; removing it gives the fast paths, and the two
    // frames differ exactly by the block.
    let big = MqttString::from("k".repeat(65_535));
    let mut with = publish(QoS::AtLeastOnce, false, "a/b", 7, Bytes::from_static(b"x"));
    with.properties.user_properties.push((big.clone(), big));
    let without = publish(QoS::AtLeastOnce, false, "a/b", 7, Bytes::from_static(b"x"));
    for p in [with, without] {
        let mut buf = BytesMut::new();
        Packet::Publish(p.clone()).encode(&mut buf).unwrap();
        assert_eq!(
            decode(&mut buf, MAX_PACKET_SIZE),
            Ok(Some(Packet::Publish(p)))
        );
    }
}

#[test]
fn fast_paths_keep_the_checks() {
    let id = PacketId::new(1);
    let cases: [(Publish, Error); 4] = [
        (
            Publish {
                topic: "a/+".into(),
                ..Default::default()
            },
            Error::InvalidTopicName("a/+".into()),
        ),
        (
            Publish {
                topic: MqttString::new(),
                ..Default::default()
            },
            Error::InvalidTopicName(String::new()),
        ),
        (
            Publish {
                topic: "a".into(),
                packet_id: id,
                ..Default::default()
            },
            Error::PacketIdMismatch,
        ),
        (
            Publish {
                topic: "a".into(),
                dup: true,
                ..Default::default()
            },
            Error::DupOnQoS0,
        ),
    ];
    for (p, e) in cases {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(Packet::Publish(p).encode(&mut buf), Err(e));
        assert_eq!(
            &buf[..],
            b"keep",
            "a failed encode leaves the buffer as it was"
        );
    }
    // Decoding: a wildcard or U+0000 in the topic, a zero packet identifier, an empty topic
    // without an alias, a missing property length, a topic past the end, invalid UTF-8.
    for (frame, e) in [
        (
            &b"\x30\x06\x00\x03a/#\x00"[..],
            Error::InvalidTopicName("a/#".into()),
        ),
        (b"\x30\x06\x00\x03a\x00b\x00", Error::NullCharacter),
        (
            b"\x32\x06\x00\x01a\x00\x00\x00",
            Error::ZeroPacketId("PUBLISH"),
        ),
        (
            b"\x30\x03\x00\x00\x00",
            Error::InvalidTopicName(String::new()),
        ),
        (
            b"\x30\x03\x00\x01a",
            Error::UnexpectedEnd("property length"),
        ),
        (b"\x30\x04\x00\x05ab", Error::UnexpectedEnd("topic name")),
        (b"\x30\x05\x00\x02\xc3\x28\x00", Error::InvalidUtf8),
    ] {
        let mut buf = BytesMut::from(frame);
        assert_eq!(decode(&mut buf, MAX_PACKET_SIZE), Err(e), "{frame:02x?}");
    }
}
