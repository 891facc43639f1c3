//! Fuzz target: arbitrary files in a `FileQueue` directory, then open. The check lives in
//! `harness/queue_open.rs`, which the stable corpus replay
//! (`queue/tests/fuzz_queue_open_corpus.rs`) runs too.
#![no_main]

#[path = "../harness/alloc_limit.rs"]
mod alloc_limit;
#[path = "../harness/queue_open.rs"]
mod queue_open;
#[path = "../harness/scratch.rs"]
mod scratch;

#[global_allocator]
static ALLOC: alloc_limit::Limit = alloc_limit::Limit;

libfuzzer_sys::fuzz_target!(|data: &[u8]| scratch::with_dir(|dir| queue_open::check(data, dir)));
