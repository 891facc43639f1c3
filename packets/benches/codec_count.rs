//! A deterministic companion to the `codec` benchmark: runs one case of one codec a given
//! number of times, so that `valgrind --tool=callgrind` can count the instructions it takes.
//! Wall-clock figures on a shared 2-core VM swing by tens of percent between runs; instruction
//! counts do not.
//!
//! The measured work sits in the `measured_*` functions (never inlined) and nothing else does:
//! building the packets and filling the read buffer happen outside them. Run callgrind with
//! `--toggle-collect='*measured_*'` so that only that work is counted; the figure per packet is
//! the difference between two runs (2,000 and 1,000 packets) divided by 1,000, which also
//! cancels what happens once per run (the first split of the buffer, its growth).
//! `packets/benches/codec_count.sh` runs every case that way and prints the table that
//! docs/BENCHMARKS.md shows:
//!
//! ```text
//! cargo bench -p paho-packets --bench codec_count --no-run
//! valgrind --tool=callgrind --toggle-collect='*measured_*' \
//!     target/release/deps/codec_count-* decode publish_16B paho 1000
//! ```
//!
//! Both codecs get the same harness: encode appends to one pre-allocated write buffer; decode
//! takes the packets one by one out of one read buffer, looks at each by reference (so that
//! no harness move of the 256-byte value is counted, for either codec) and drops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use paho_packets as ours;
use rumqttc::v5::mqttbytes::v5 as theirs;

#[inline(never)]
fn measured_encode_paho(p: &ours::Packet, n: usize, buf: &mut BytesMut) {
    for _ in 0..n {
        black_box(p).encode(buf).unwrap();
    }
}

#[inline(never)]
fn measured_encode_rumqttc(p: &theirs::Packet, n: usize, buf: &mut BytesMut) {
    for _ in 0..n {
        black_box(p).write(buf, None).unwrap();
    }
}

#[inline(never)]
fn measured_decode_paho(buf: &mut BytesMut) -> usize {
    let mut count = 0;
    loop {
        match ours::decode(buf, ours::MAX_PACKET_SIZE) {
            Ok(Some(ref p)) => {
                black_box(p);
                count += 1;
            }
            Ok(None) => return count,
            Err(e) => panic!("{e}"),
        }
    }
}

#[inline(never)]
fn measured_decode_rumqttc(buf: &mut BytesMut) -> usize {
    let mut count = 0;
    while !buf.is_empty() {
        match theirs::Packet::read(buf, None) {
            Ok(ref p) => {
                black_box(p);
                count += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    count
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() != 4 {
        eprintln!("usage: codec_count <encode|decode> <case> <paho|rumqttc> <iterations>");
        // `cargo bench` runs every bench target without arguments: nothing to do then.
        return;
    }
    let (op, name, codec) = (&args[0], &args[1], &args[2]);
    let n: usize = args[3].parse().expect("iterations must be a number");
    let (_, ours_p, theirs_p, _) = common::cases()
        .into_iter()
        .find(|(c, ..)| c == name)
        .expect("unknown case");
    let mut one = BytesMut::new();
    ours_p.encode(&mut one).unwrap();
    let mut buf = BytesMut::with_capacity(one.len() * n.max(1));
    match (op.as_str(), codec.as_str()) {
        ("encode", "paho") => measured_encode_paho(&ours_p, n, &mut buf),
        ("encode", "rumqttc") => measured_encode_rumqttc(&theirs_p, n, &mut buf),
        ("decode", "paho") => {
            buf.extend_from_slice(&one.repeat(n));
            assert_eq!(measured_decode_paho(&mut buf), n);
        }
        ("decode", "rumqttc") => {
            buf.extend_from_slice(&one.repeat(n));
            assert_eq!(measured_decode_rumqttc(&mut buf), n);
        }
        _ => panic!("unknown operation or codec"),
    }
    black_box(buf);
}
