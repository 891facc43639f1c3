//! The packets both codec benchmarks work on: the same messages built for paho-packets and for
//! rumqttc's v5 codec.
#![allow(dead_code)]

use bytes::Bytes;
use paho_packets as ours;
use rumqttc::v5::mqttbytes::v5 as theirs;
use rumqttc::v5::mqttbytes::QoS as TheirQoS;

pub const SIZES: [(&str, usize); 3] = [("16B", 16), ("1KiB", 1024), ("64KiB", 65536)];

pub fn our_publish(payload: &Bytes, props: bool) -> ours::Packet {
    let mut properties = ours::PublishProperties::default();
    if props {
        properties.message_expiry_interval = Some(3600);
        properties.content_type = Some("application/json".into());
        properties.response_topic = Some("replies/device-42".into());
        properties.correlation_data = Some(Bytes::from_static(b"0123456789abcdef"));
        properties
            .user_properties
            .push(("trace-id".into(), "4bf92f3577b34da6".into()));
    }
    ours::Packet::Publish(ours::Publish {
        qos: ours::QoS::AtLeastOnce,
        topic: "devices/device-42/telemetry/temperature".into(),
        packet_id: ours::PacketId::new(4242),
        properties,
        payload: payload.clone(),
        ..Default::default()
    })
}

pub fn their_publish(payload: &Bytes, props: bool) -> theirs::Packet {
    let properties = props.then(|| theirs::PublishProperties {
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("replies/device-42".into()),
        correlation_data: Some(Bytes::from_static(b"0123456789abcdef")),
        user_properties: vec![("trace-id".into(), "4bf92f3577b34da6".into())],
        ..Default::default()
    });
    let mut p = theirs::Publish::new(
        "devices/device-42/telemetry/temperature",
        TheirQoS::AtLeastOnce,
        payload.clone(),
        properties,
    );
    p.pkid = 4242;
    theirs::Packet::Publish(p)
}

pub fn our_connect() -> ours::Packet {
    let mut c = ours::Connect {
        clean_start: false,
        keep_alive: 30,
        client_id: "device-42-gateway".into(),
        username: Some("device-42".into()),
        password: Some(Bytes::from_static(b"s3cr3t-t0ken")),
        ..Default::default()
    };
    c.properties.session_expiry_interval = Some(86_400);
    c.properties.receive_maximum = Some(100);
    c.properties.maximum_packet_size = Some(1 << 20);
    c.properties.topic_alias_maximum = Some(16);
    c.properties
        .user_properties
        .push(("firmware".into(), "1.4.2".into()));
    ours::Packet::from(c)
}

pub fn their_connect() -> theirs::Packet {
    let mut c = theirs::Connect {
        keep_alive: 30,
        client_id: "device-42-gateway".into(),
        clean_start: false,
        properties: None,
    };
    c.properties = Some(theirs::ConnectProperties {
        session_expiry_interval: Some(86_400),
        receive_maximum: Some(100),
        max_packet_size: Some(1 << 20),
        topic_alias_max: Some(16),
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![("firmware".into(), "1.4.2".into())],
        authentication_method: None,
        authentication_data: None,
    });
    theirs::Packet::Connect(
        c,
        None,
        Some(theirs::Login::new("device-42", "s3cr3t-t0ken")),
    )
}

const FILTERS: [&str; 5] = [
    "devices/+/telemetry/#",
    "devices/device-42/commands/+",
    "fleet/announcements",
    "config/device-42/#",
    "$share/workers/jobs/+",
];

pub fn our_subscribe() -> ours::Packet {
    ours::Packet::Subscribe(ours::Subscribe {
        packet_id: ours::PacketId::MIN,
        properties: Default::default(),
        subscriptions: FILTERS
            .iter()
            .map(|f| {
                ours::Subscription::new(*f, ours::SubscriptionOptions::qos(ours::QoS::AtLeastOnce))
            })
            .collect(),
    })
}

pub fn their_subscribe() -> theirs::Packet {
    let mut s = theirs::Subscribe::new_many(
        FILTERS
            .iter()
            .map(|f| theirs::Filter::new(*f, TheirQoS::AtLeastOnce)),
        None,
    );
    s.pkid = 1;
    theirs::Packet::Subscribe(s)
}

/// Every case: name, our packet, their packet, and how many make one batch.
pub fn cases() -> Vec<(String, ours::Packet, theirs::Packet, usize)> {
    let mut v = Vec::new();
    for (label, size) in SIZES {
        let payload = Bytes::from(vec![0x5Au8; size]);
        for props in [false, true] {
            let name = format!("publish_{label}{}", if props { "_props" } else { "" });
            let batch = if size > 4096 { 64 } else { 1000 };
            v.push((
                name,
                our_publish(&payload, props),
                their_publish(&payload, props),
                batch,
            ));
        }
    }
    v.push(("connect_props".into(), our_connect(), their_connect(), 1000));
    v.push((
        "subscribe_5_filters".into(),
        our_subscribe(),
        their_subscribe(),
        1000,
    ));
    v
}
