//! Fuzz target: arbitrary bytes through the decoder. The check lives in `harness/decode.rs`,
//! which the stable corpus replay (`packets/tests/fuzz_corpus.rs`) runs too.
#![no_main]

#[path = "../harness/decode.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::check(data);
});
