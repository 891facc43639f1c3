//! The `decode` fuzz check: arbitrary bytes through the decoder, with a small and a large
//! maximum packet size. Whatever decodes must re-encode to a packet that decodes to the same
//! value.
//!
//! Shared, unchanged, by the cargo-fuzz target (`fuzz/fuzz_targets/decode.rs`) and the stable
//! replay of its corpus (`packets/tests/fuzz_corpus.rs`), which both include this file with
//! `#[path]`.

use bytes::BytesMut;
use paho_packets::{decode, MAX_PACKET_SIZE};

/// Runs one input; panics on a broken invariant. Returns how many packets decoded.
pub fn check(data: &[u8]) -> usize {
    let mut decoded = 0;
    for max in [64, MAX_PACKET_SIZE] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, max) {
            decoded += 1;
            let mut out = BytesMut::new();
            if packet.encode(&mut out).is_ok() {
                let again = decode(&mut out, MAX_PACKET_SIZE);
                assert_eq!(
                    again,
                    Ok(Some(packet)),
                    "re-encoded packet decodes differently"
                );
            }
        }
    }
    decoded
}
