//! Replays the committed corpus of the `decode` fuzz target (`fuzz/corpus/decode/`) on stable
//! Rust, through the very check the fuzzer runs (`fuzz/harness/decode.rs`, included here with
//! `#[path]`): no panic, and whatever decodes re-encodes to a packet that decodes to the same
//! value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/harness/decode.rs"]
mod harness;

use std::path::Path;

#[test]
fn seed_corpus_decodes_without_panic_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/decode");
    let mut files = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        files += 1;
        decoded += harness::check(&data);
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
