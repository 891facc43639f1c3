//! Replays the committed fuzz seed corpus (`fuzz/corpus/decode/`) through the decoder on
//! stable Rust, with the same checks as the fuzz target: no panic, and whatever decodes
//! re-encodes to a packet that decodes to the same value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bytes::BytesMut;
use paho_packets::{decode, MAX_PACKET_SIZE};

#[test]
fn seed_corpus_decodes_without_panic_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        files += 1;
        for max in [64, MAX_PACKET_SIZE] {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(packet)) = decode(&mut buf, max) {
                decoded += 1;
                let mut out = BytesMut::new();
                if packet.encode(&mut out).is_ok() {
                    assert_eq!(
                        decode(&mut out, MAX_PACKET_SIZE),
                        Ok(Some(packet)),
                        "{}",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(
        files >= 20,
        "seed corpus missing: {files} files in {}",
        dir.display()
    );
    assert!(
        decoded >= 20,
        "most seeds should decode; only {decoded} packets did"
    );
}
