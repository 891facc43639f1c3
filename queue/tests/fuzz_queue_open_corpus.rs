//! Replays the committed corpus of the `queue_open` fuzz target (`fuzz/corpus/queue_open/`)
//! on stable Rust, through the very check the fuzzer runs (`fuzz/harness/queue_open.rs`,
//! included here with `#[path]`), under the same allocation limit (`alloc_limit.rs`: any
//! single allocation above the bytes written plus a fixed slack aborts the binary).
//!
//! One test in this binary runs by default (the other is an ignored known gap): the limit is
//! process-wide, so nothing else may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/harness/alloc_limit.rs"]
mod alloc_limit;
#[path = "../../fuzz/harness/queue_open.rs"]
mod queue_open;

use std::path::Path;

#[global_allocator]
static ALLOC: alloc_limit::Limit = alloc_limit::Limit;

#[test]
fn queue_open_corpus_never_panics_overallocates_or_hides_damage() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/queue_open");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        eprintln!("{}", path.display());
        queue_open::check(&data, tmp.path());
        files += 1;
    }
    assert!(
        files >= 20,
        "corpus missing: {files} files in {}",
        dir.display()
    );
}

/// A finding of `queue_open` not fixed yet (docs/RELIABILITY.md, Fuzzing): damage kept in place
/// at the end of the newest segment (cut records, one not a torn tail) is quarantined and noted
/// by the first open; an entry appended after it makes the next open parse the same bytes into
/// other stretches (a cut record's payload now fits in the file), which the notes do not match,
/// so they are quarantined and reported again. Nothing is lost (the new entry reads back); the
/// report is a repeat. Fails until appends never follow kept damage (roll to a new segment).
#[test]
#[ignore = "known gap, kept to reproduce it: kept damage at the end of the newest segment is reported again after an append (docs/RELIABILITY.md, Fuzzing); fails until the queue rolls to a new segment after such damage"]
fn known_gap_kept_damage_at_the_tail_is_reported_again_after_an_append() {
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/known-gaps/queue_open/reopen-reports-kept-damage-again");
    let data = std::fs::read(input).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    queue_open::check(&data, tmp.path());
}
