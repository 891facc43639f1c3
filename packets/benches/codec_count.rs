//! A deterministic companion to the `codec` benchmark: runs one case of one codec a given
//! number of times, so that `valgrind --tool=callgrind` can count the instructions it takes.
//! Wall-clock figures on a shared 2-core VM swing by tens of percent between runs; instruction
//! counts do not. Usage (see docs/BENCHMARKS.md for the script that runs every case):
//!
//! ```text
//! cargo bench -p paho-packets --bench codec_count --no-run
//! valgrind --tool=callgrind target/release/deps/codec_count-* decode publish_16B paho 1000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use paho_packets as ours;
use rumqttc::v5::mqttbytes::v5 as theirs;

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
        ("encode", "paho") => {
            for _ in 0..n {
                black_box(&ours_p).encode(&mut buf).unwrap();
            }
        }
        ("encode", "rumqttc") => {
            for _ in 0..n {
                black_box(&theirs_p).write(&mut buf, None).unwrap();
            }
        }
        ("decode", "paho") => {
            buf.extend_from_slice(&one.repeat(n));
            while let Some(p) = ours::decode(&mut buf, ours::MAX_PACKET_SIZE).unwrap() {
                black_box(p);
            }
        }
        ("decode", "rumqttc") => {
            buf.extend_from_slice(&one.repeat(n));
            while !buf.is_empty() {
                black_box(theirs::Packet::read(&mut buf, None).unwrap());
            }
        }
        _ => panic!("unknown operation or codec"),
    }
    black_box(buf);
}
