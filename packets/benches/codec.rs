//! Codec throughput, side by side with rumqttc's MQTT v5 codec doing the same work in the
//! same run: PUBLISH (16 B, 1 KiB, 64 KiB payloads, with and without properties), CONNECT with
//! properties, and SUBSCRIBE with several filters.
//!
//! Run with `cargo bench -p paho-packets`. Each benchmark id is `<case>/<codec>`, so the two
//! codecs' figures for one case sit next to each other in the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use paho_packets as ours;
use rumqttc::v5::mqttbytes::v5 as theirs;

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
    for (name, ours_p, theirs_p, batch) in common::cases() {
        case(c, &name, ours_p, theirs_p, batch);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
