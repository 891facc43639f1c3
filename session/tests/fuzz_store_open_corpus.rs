//! Replays the committed corpus of the `store_open` fuzz target (`fuzz/corpus/store_open/`)
//! on stable Rust, through the very check the fuzzer runs (`fuzz/harness/store_open.rs`,
//! included here with `#[path]`), under the same allocation limit (`alloc_limit.rs`: any
//! single allocation above the bytes written plus a fixed slack aborts the binary).
//!
//! One test in this binary: the limit is process-wide, so nothing else may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/harness/alloc_limit.rs"]
mod alloc_limit;
#[path = "../../fuzz/harness/store_open.rs"]
mod store_open;

use std::path::Path;

#[global_allocator]
static ALLOC: alloc_limit::Limit = alloc_limit::Limit;

#[test]
fn store_open_corpus_never_panics_overallocates_or_hides_damage() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/store_open");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        eprintln!("{}", path.display());
        store_open::check(&data, tmp.path());
        files += 1;
    }
    assert!(
        files >= 20,
        "corpus missing: {files} files in {}",
        dir.display()
    );
}
