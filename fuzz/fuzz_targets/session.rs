//! Fuzz target: arbitrary sequences of inbound packets and user commands against the session
//! engine, its invariants checked after every step. The check lives in `harness/session.rs`,
//! which the stable corpus replay (`session/tests/fuzz_session_corpus.rs`) runs too.
#![no_main]

#[path = "../harness/session.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
