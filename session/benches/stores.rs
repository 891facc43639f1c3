//! Store throughput: put then delete, with 1, 8 and 64 concurrent writers, for MemoryStore
//! and FileStore. Reports operations per second (criterion's elements/s, one element per
//! store operation) and, for FileStore, fsyncs per operation (printed after the run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::RefCell;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use paho_session::{EntryKind, FileStore, Key, MemoryStore, Store, StoreIdentity};

const WRITERS: [u16; 3] = [1, 8, 64];
/// A typical small encoded QoS 1 PUBLISH.
const VALUE: &[u8] = &[0x32; 120];

thread_local! {
    /// (writers, operations, fsyncs) per FileStore run.
    static FSYNCS: RefCell<Vec<(u16, u64, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `iters` put+delete pairs spread over `writers` tasks; returns the elapsed time.
fn run<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    writers: u16,
    iters: u64,
) -> Duration {
    let per_writer = iters.div_ceil(u64::from(writers));
    rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let value = Bytes::from_static(VALUE);
                for i in 0..per_writer {
                    let id = w * 1000 + (i % 1000) as u16 + 1;
                    let key = Key::Outbound(NonZeroU16::new(id).unwrap());
                    store
                        .put(key, EntryKind::Publish, value.clone())
                        .await
                        .unwrap();
                    store.delete(key).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("store_put_delete");
    // One element = one store operation (a put or a delete).
    g.throughput(Throughput::Elements(2));
    for writers in WRITERS {
        let store = MemoryStore::new();
        g.bench_with_input(BenchmarkId::new("memory", writers), &writers, |b, &w| {
            b.iter_custom(|iters| run(&rt, &store, w, iters));
        });
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for writers in WRITERS {
        let dir = tmp.path().join(format!("w{writers}"));
        let ident = StoreIdentity::new("mqtt://bench", "bench").unwrap();
        let store = rt.block_on(FileStore::open(&dir, ident)).unwrap();
        let before = store.stats();
        g.bench_with_input(BenchmarkId::new("file", writers), &writers, |b, &w| {
            b.iter_custom(|iters| run(&rt, &store, w, iters));
        });
        let after = store.stats();
        FSYNCS.with(|f| {
            f.borrow_mut().push((
                writers,
                after.operations - before.operations,
                after.fsyncs - before.fsyncs,
            ))
        });
        rt.block_on(store.close());
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = stores
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    FSYNCS.with(|f| {
        for &(writers, ops, fsyncs) in f.borrow().iter() {
            if ops > 0 {
                println!(
                    "file store, {writers:>2} writers: {ops} ops, {fsyncs} fsyncs, {:.4} fsyncs/op",
                    fsyncs as f64 / ops as f64
                );
            }
        }
    });
}
