//! Fuzz target: arbitrary bytes through the decoder, with a small and a large maximum packet
//! size. Whatever decodes must re-encode to a packet that decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use paho_packets::{decode, MAX_PACKET_SIZE};

fuzz_target!(|data: &[u8]| {
    for max in [64, MAX_PACKET_SIZE] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, max) {
            let mut out = BytesMut::new();
            if packet.encode(&mut out).is_ok() {
                let again = decode(&mut out, MAX_PACKET_SIZE);
                assert_eq!(again, Ok(Some(packet)), "re-encoded packet decodes differently");
            }
        }
    }
});
