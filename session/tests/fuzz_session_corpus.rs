//! Replays the committed corpus of the `session` fuzz target (`fuzz/corpus/session/`) on
//! stable Rust, through the very check the fuzzer runs (`fuzz/harness/session.rs`, included
//! here with `#[path]`): the engine's invariants after every step, and every accepted publish
//! resolved at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/harness/session.rs"]
mod harness;

use std::path::Path;

#[test]
fn session_corpus_keeps_the_engine_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/session");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        harness::check(&data);
        files += 1;
    }
    assert!(
        files >= 20,
        "corpus missing: {files} files in {}",
        dir.display()
    );
}
