//! Fuzz target: arbitrary files in a `FileStore` directory, then open. The check lives in
//! `harness/store_open.rs`, which the stable corpus replay
//! (`session/tests/fuzz_store_open_corpus.rs`) runs too.
#![no_main]

#[path = "../harness/alloc_limit.rs"]
mod alloc_limit;
#[path = "../harness/scratch.rs"]
mod scratch;
#[path = "../harness/store_open.rs"]
mod store_open;

#[global_allocator]
static ALLOC: alloc_limit::Limit = alloc_limit::Limit;

libfuzzer_sys::fuzz_target!(|data: &[u8]| scratch::with_dir(|dir| store_open::check(data, dir)));
