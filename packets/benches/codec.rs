//! Codec throughput, side by side with rumqttc's MQTT v5 codec doing the same work in the
//! same run: PUBLISH (16 B, 1 KiB, 64 KiB payloads, with and without properties), CONNECT with
//! properties, and SUBSCRIBE with several filters.
//!
//! Run with `cargo bench -p paho-packets`. Each benchmark id is `<case>/<codec>`, so the two
//! codecs' figures for one case sit next to each other in the report.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use paho_packets as ours;
use rumqttc::v5::mqttbytes::v5 as theirs;
use rumqttc::v5::mqttbytes::QoS as TheirQoS;

const SIZES: [(&str, usize); 3] = [("16B", 16), ("1KiB", 1024), ("64KiB", 65536)];

fn our_publish(payload: &Bytes, props: bool) -> ours::Packet {
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

fn their_publish(payload: &Bytes, props: bool) -> theirs::Packet {
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

fn our_connect() -> ours::Packet {
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

fn their_connect() -> theirs::Packet {
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

fn our_subscribe() -> ours::Packet {
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

fn their_subscribe() -> theirs::Packet {
    let mut s = theirs::Subscribe::new_many(
        FILTERS
            .iter()
            .map(|f| theirs::Filter::new(*f, TheirQoS::AtLeastOnce)),
        None,
    );
    s.pkid = 1;
    theirs::Packet::Subscribe(s)
}

/// Benchmarks encode and decode of one case for both codecs.
///
/// Both directions work on a stream of `batch` packets, as a connection does: encoding
/// appends them to one write buffer, decoding takes them one by one out of one read buffer
/// (and drops them). Criterion reports the time per batch; the throughput line is in
/// packets per second.
fn case(
    c: &mut Criterion,
    name: &str,
    ours_p: ours::Packet,
    theirs_p: theirs::Packet,
    batch: usize,
) {
    let mut one_ours = BytesMut::new();
    ours_p.encode(&mut one_ours).unwrap();
    let mut one_theirs = BytesMut::new();
    theirs_p.write(&mut one_theirs, None).unwrap();
    // Both codecs must produce packets of the same size for the comparison to be fair.
    assert_eq!(
        one_ours.len(),
        one_theirs.len(),
        "{name}: wire sizes differ"
    );

    let mut g = c.benchmark_group(format!("encode/{name}"));
    g.throughput(Throughput::Elements(batch as u64));
    let mut buf = BytesMut::with_capacity(one_ours.len() * batch);
    g.bench_function("paho", |b| {
        b.iter(|| {
            buf.clear();
            for _ in 0..batch {
                black_box(&ours_p).encode(&mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    g.bench_function("rumqttc", |b| {
        b.iter(|| {
            buf.clear();
            for _ in 0..batch {
                black_box(&theirs_p).write(&mut buf, None).unwrap();
            }
            black_box(buf.len())
        })
    });
    g.finish();

    let stream_ours = one_ours.repeat(batch);
    let stream_theirs = one_theirs.repeat(batch);
    let mut g = c.benchmark_group(format!("decode/{name}"));
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("paho", |b| {
        b.iter_batched(
            || BytesMut::from(&stream_ours[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(p) = ours::decode(&mut buf, ours::MAX_PACKET_SIZE).unwrap() {
                    black_box(p);
                    n += 1;
                }
                assert_eq!(n, batch);
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("rumqttc", |b| {
        b.iter_batched(
            || BytesMut::from(&stream_theirs[..]),
            |mut buf| {
                let mut n = 0;
                while !buf.is_empty() {
                    black_box(theirs::Packet::read(&mut buf, None).unwrap());
                    n += 1;
                }
                assert_eq!(n, batch);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    for (label, size) in SIZES {
        let payload = Bytes::from(vec![0x5Au8; size]);
        for props in [false, true] {
            let name = format!("publish_{label}{}", if props { "_props" } else { "" });
            let batch = if size > 4096 { 64 } else { 1000 };
            case(
                c,
                &name,
                our_publish(&payload, props),
                their_publish(&payload, props),
                batch,
            );
        }
    }
    case(c, "connect_props", our_connect(), their_connect(), 1000);
    case(
        c,
        "subscribe_5_filters",
        our_subscribe(),
        their_subscribe(),
        1000,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
