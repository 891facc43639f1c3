//! Property test: every generated packet, of every type and with every property, encodes to
//! exactly `encoded_len` bytes and decodes back to itself, also when fed byte by byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use paho_packets::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

fn mstr() -> impl Strategy<Value = MqttString> {
    // Any UTF-8 without U+0000, including multi-byte characters.
    "[^\u{0}]{0,12}".prop_map(MqttString::from)
}

fn topic_name() -> impl Strategy<Value = MqttString> {
    "[a-z0-9$é/ ]{1,16}".prop_map(MqttString::from)
}

fn topic_filter() -> impl Strategy<Value = MqttString> {
    prop_oneof![
        vec(prop_oneof!["[a-z0-9é]{0,5}", Just("+".to_string())], 1..5)
            .prop_map(|levels| levels.join("/")),
        vec("[a-z0-9]{0,5}", 0..4).prop_map(|levels| {
            let mut l = levels;
            l.push("#".into());
            l.join("/")
        }),
        "[a-z]{1,5}/[a-z+]{1}".prop_map(|f| format!("$share/grp/{f}")),
    ]
    .prop_filter("valid filter", |f| topic::validate_topic_filter(f).is_ok())
    .prop_map(MqttString::from)
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn user_props() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((mstr(), mstr()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1u16..=u16::MAX).prop_map(|n| PacketId::new(n).unwrap())
}

fn nz16() -> impl Strategy<Value = u16> {
    1u16..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    1u32..=268_435_455
}

fn connect() -> impl Strategy<Value = Packet> {
    let props = (
        of(any::<u32>()),
        of(nz16()),
        of(1u32..),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(mstr()),
        of(bin()),
        user_props(),
    )
        .prop_map(
            |(se, rm, mps, tam, rri, rpi, am, ad, up)| ConnectProperties {
                session_expiry_interval: se,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                // Authentication Data needs a Method (section 3.1.2.11.10).
                authentication_data: ad.filter(|_| am.is_some()),
                authentication_method: am,
                user_properties: up,
            },
        );
    let will_props = (
        of(any::<u32>()),
        of(any::<bool>()),
        of(any::<u32>()),
        of(mstr()),
        of(topic_name()),
        of(bin()),
        user_props(),
    )
        .prop_map(|(wd, pfi, me, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wd,
            payload_format_indicator: pfi,
            message_expiry_interval: me,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        });
    let will = (topic_name(), bin(), qos(), any::<bool>(), will_props).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    (
        any::<bool>(),
        any::<u16>(),
        props,
        mstr(),
        of(will),
        of(mstr()),
        of(bin()),
    )
        .prop_map(
            |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                Packet::from(Connect {
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                })
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    let a = (
        of(any::<u32>()),
        of(nz16()),
        of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        of(any::<bool>()),
        of(1u32..),
        of(mstr()),
        of(any::<u16>()),
        of(mstr()),
    );
    let b = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<u16>()),
        of(mstr()),
        of(mstr()),
        of(mstr()),
        of(bin()),
        user_props(),
    );
    let code = (0u8..=255).prop_filter_map("valid code", |c| ConnectReasonCode::try_from(c).ok());
    (any::<bool>(), code, a, b).prop_map(|(sp, reason_code, a, b)| {
        Packet::from(ConnAck {
            session_present: sp && !reason_code.is_error(),
            reason_code,
            properties: ConnAckProperties {
                session_expiry_interval: a.0,
                receive_maximum: a.1,
                maximum_qos: a.2,
                retain_available: a.3,
                maximum_packet_size: a.4,
                assigned_client_identifier: a.5,
                topic_alias_maximum: a.6,
                reason_string: a.7,
                wildcard_subscription_available: b.0,
                subscription_identifiers_available: b.1,
                shared_subscription_available: b.2,
                server_keep_alive: b.3,
                response_information: b.4,
                server_reference: b.5,
                authentication_method: b.6,
                authentication_data: b.7,
                user_properties: b.8,
            },
        })
    })
}

fn publish() -> impl Strategy<Value = Packet> {
    let props = (
        of(any::<bool>()),
        of(any::<u32>()),
        of(nz16()),
        of(topic_name()),
        of(bin()),
        of(mstr()),
        vec(sub_id(), 0..3),
        user_props(),
    )
        .prop_map(|(pfi, me, ta, rt, cd, ct, si, up)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: me,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            content_type: ct,
            subscription_identifiers: si,
            user_properties: up,
        });
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        pid(),
        props,
        vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(
            |(dup, qos, retain, topic, id, mut properties, payload, alias_only)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An alias-only PUBLISH has an empty topic name.
                let topic = if alias_only && properties.topic_alias.is_some() {
                    MqttString::new()
                } else {
                    topic
                };
                if !alias_only {
                    properties.topic_alias = properties.topic_alias.filter(|_| !topic.is_empty());
                }
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: (!at_most_once).then_some(id),
                    properties,
                    payload: Bytes::from(payload),
                })
            },
        )
}

fn ack_props() -> impl Strategy<Value = AckProperties> {
    (of(mstr()), user_props()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn acks() -> impl Strategy<Value = Packet> {
    let codes = 0u8..=255;
    prop_oneof![
        (
            pid(),
            codes
                .clone()
                .prop_filter_map("code", |c| PubAckReasonCode::try_from(c).ok()),
            ack_props()
        )
            .prop_map(
                |(packet_id, reason_code, properties)| Packet::PubAck(PubAck {
                    packet_id,
                    reason_code,
                    properties
                })
            ),
        (
            pid(),
            codes
                .clone()
                .prop_filter_map("code", |c| PubRecReasonCode::try_from(c).ok()),
            ack_props()
        )
            .prop_map(
                |(packet_id, reason_code, properties)| Packet::PubRec(PubRec {
                    packet_id,
                    reason_code,
                    properties
                })
            ),
        (
            pid(),
            codes
                .clone()
                .prop_filter_map("code", |c| PubRelReasonCode::try_from(c).ok()),
            ack_props()
        )
            .prop_map(
                |(packet_id, reason_code, properties)| Packet::PubRel(PubRel {
                    packet_id,
                    reason_code,
                    properties
                })
            ),
        (
            pid(),
            codes.prop_filter_map("code", |c| PubCompReasonCode::try_from(c).ok()),
            ack_props()
        )
            .prop_map(
                |(packet_id, reason_code, properties)| Packet::PubComp(PubComp {
                    packet_id,
                    reason_code,
                    properties
                })
            ),
    ]
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(qos, nl, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        }
    });
    let sub = (topic_filter(), options).prop_map(|(filter, mut options)| {
        if filter.starts_with("$share/") {
            options.no_local = false;
        }
        Subscription { filter, options }
    });
    (pid(), of(sub_id()), user_props(), vec(sub, 1..5)).prop_map(
        |(packet_id, si, up, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties: SubscribeProperties {
                    subscription_identifier: si,
                    user_properties: up,
                },
                subscriptions,
            })
        },
    )
}

fn sub_ack_props() -> impl Strategy<Value = SubAckProperties> {
    (of(mstr()), user_props()).prop_map(|(reason_string, user_properties)| SubAckProperties {
        reason_string,
        user_properties,
    })
}

fn others() -> impl Strategy<Value = Packet> {
    let codes = 0u8..=255;
    prop_oneof![
        (
            pid(),
            sub_ack_props(),
            vec(
                codes
                    .clone()
                    .prop_filter_map("code", |c| SubAckReasonCode::try_from(c).ok()),
                1..6
            )
        )
            .prop_map(
                |(packet_id, properties, reason_codes)| Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reason_codes
                })
            ),
        (pid(), user_props(), vec(topic_filter(), 1..5)).prop_map(|(packet_id, up, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: UnsubscribeProperties {
                    user_properties: up,
                },
                filters,
            })
        }),
        (
            pid(),
            sub_ack_props(),
            vec(
                codes
                    .clone()
                    .prop_filter_map("code", |c| UnsubAckReasonCode::try_from(c).ok()),
                1..6
            )
        )
            .prop_map(
                |(packet_id, properties, reason_codes)| Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reason_codes
                })
            ),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (
            codes
                .clone()
                .prop_filter_map("code", |c| DisconnectReasonCode::try_from(c).ok()),
            of(any::<u32>()),
            of(mstr()),
            of(mstr()),
            user_props()
        )
            .prop_map(
                |(reason_code, se, rs, sr, up)| Packet::Disconnect(Disconnect {
                    reason_code,
                    properties: DisconnectProperties {
                        session_expiry_interval: se,
                        reason_string: rs,
                        server_reference: sr,
                        user_properties: up,
                    },
                })
            ),
        (
            codes.prop_filter_map("code", |c| AuthReasonCode::try_from(c).ok()),
            of(mstr()),
            of(bin()),
            of(mstr()),
            user_props()
        )
            .prop_map(|(reason_code, am, ad, rs, up)| Packet::Auth(Auth {
                reason_code,
                properties: AuthProperties {
                    authentication_method: am,
                    authentication_data: ad,
                    reason_string: rs,
                    user_properties: up,
                },
            })),
    ]
}

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish(),
        acks(),
        subscribe(),
        others()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(packet in any_packet()) {
        let mut buf = BytesMut::new();
        let n = packet.encode(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(packet.encoded_len().unwrap(), n);
        let wire = buf.clone().freeze();
        let decoded = decode(&mut buf, MAX_PACKET_SIZE).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&packet));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(Packet::decode_exact(wire), Ok(packet));
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_packet_once(packet in any_packet()) {
        let mut wire = BytesMut::new();
        packet.encode(&mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match decode(&mut buf, MAX_PACKET_SIZE).unwrap() {
                None => prop_assert!(i + 1 < wire.len()),
                Some(p) => {
                    prop_assert_eq!(i + 1, wire.len());
                    got = Some(p);
                }
            }
        }
        prop_assert_eq!(got, Some(packet));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Keep decoding until the input is exhausted or rejected; never panic, never loop.
        for _ in 0..64 {
            match decode(&mut buf, 1024) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}
