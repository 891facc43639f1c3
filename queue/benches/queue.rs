//! Queue benchmarks: enqueue and dequeue throughput with 1 KiB entries (1 and 16 producers),
//! with fsyncs per entry, and peek+remove cost at 10 versus 1,000,000 queued entries.
//!
//! Run: `cargo bench -p paho-queue`. Sample counts and times are kept small so the whole run
//! takes a few minutes on a shared 2-core machine.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paho_queue::{FileQueue, Finish, MemoryQueue, Queue};
use tokio::runtime::Runtime;

const ENTRY: usize = 1024;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Enqueues `n` entries from `producers` concurrent tasks.
async fn produce<Q: Queue + 'static>(q: &Arc<Q>, n: u64, producers: u64, payload: &Bytes) {
    let mut tasks = Vec::new();
    for p in 0..producers {
        let share = n / producers + u64::from(p < n % producers);
        let q = Arc::clone(q);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                q.enqueue(payload.clone(), SystemTime::UNIX_EPOCH)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn consume<Q: Queue>(q: &Q, n: u64) {
    for _ in 0..n {
        let e = q.peek().unwrap().unwrap();
        q.finish(e, Finish::Remove).await.unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    File { sync_removals: bool },
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::File {
                sync_removals: true,
            } => "file",
            Kind::File {
                sync_removals: false,
            } => "file_lazy_removals",
        }
    }
}

enum AnyQueue {
    Memory(Arc<MemoryQueue>),
    File {
        q: Arc<FileQueue>,
        // Declared after `q` so the queue is dropped (and its thread joined) first.
        _dir: tempfile::TempDir,
    },
}

impl AnyQueue {
    async fn open(kind: Kind) -> AnyQueue {
        match kind {
            Kind::Memory => AnyQueue::Memory(Arc::new(MemoryQueue::default())),
            Kind::File { sync_removals } => {
                // The default temp dir; on the benchmark machine it is on the same ext4 disk as
                // everything else, so fsync costs what it really costs there.
                let dir = tempfile::tempdir().unwrap();
                let q = FileQueue::builder(dir.path())
                    .sync_removals(sync_removals)
                    .open()
                    .await
                    .unwrap();
                AnyQueue::File {
                    q: Arc::new(q),
                    _dir: dir,
                }
            }
        }
    }

    fn fsyncs(&self) -> u64 {
        match self {
            AnyQueue::Memory(q) => q.stats().fsyncs,
            AnyQueue::File { q, .. } => q.stats().fsyncs,
        }
    }

    async fn produce(&self, n: u64, producers: u64, payload: &Bytes) {
        match self {
            AnyQueue::Memory(q) => produce(q, n, producers, payload).await,
            AnyQueue::File { q, .. } => produce(q, n, producers, payload).await,
        }
    }

    async fn consume(&self, n: u64) {
        match self {
            AnyQueue::Memory(q) => consume(&**q, n).await,
            AnyQueue::File { q, .. } => consume(&**q, n).await,
        }
    }
}

/// Totals over every measured iteration, for the fsyncs-per-entry figure.
#[derive(Default)]
struct Tally {
    entries: u64,
    fsyncs: u64,
}

impl Tally {
    fn print(&self, what: &str) {
        if self.entries > 0 {
            eprintln!(
                "{what}: {} entries, {} fsyncs, {:.4} fsyncs/entry",
                self.entries,
                self.fsyncs,
                self.fsyncs as f64 / self.entries as f64
            );
        }
    }
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0xabu8; ENTRY]);
    let mut g = c.benchmark_group("enqueue_1KiB");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for kind in [
        Kind::Memory,
        Kind::File {
            sync_removals: true,
        },
    ] {
        for producers in [1u64, 16] {
            let mut tally = Tally::default();
            g.bench_with_input(
                BenchmarkId::new(kind.name(), producers),
                &producers,
                |b, &p| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let q = AnyQueue::open(kind).await;
                            let before = q.fsyncs();
                            let start = Instant::now();
                            q.produce(iters, p, &payload).await;
                            let took = start.elapsed();
                            tally.entries += iters;
                            tally.fsyncs += q.fsyncs() - before;
                            took
                        })
                    })
                },
            );
            tally.print(&format!("enqueue_1KiB/{}/{producers}", kind.name()));
        }
    }
    g.finish();
}

fn dequeue(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![0xabu8; ENTRY]);
    let mut g = c.benchmark_group("dequeue_1KiB");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for kind in [
        Kind::Memory,
        Kind::File {
            sync_removals: true,
        },
        Kind::File {
            sync_removals: false,
        },
    ] {
        let mut tally = Tally::default();
        g.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let q = AnyQueue::open(kind).await;
                    q.produce(iters, 16, &payload).await;
                    let before = q.fsyncs();
                    let start = Instant::now();
                    q.consume(iters).await;
                    let took = start.elapsed();
                    tally.entries += iters;
                    tally.fsyncs += q.fsyncs() - before;
                    took
                })
            })
        });
        tally.print(&format!("dequeue_1KiB/{}", kind.name()));
    }
    g.finish();
}

/// peek + remove with `depth` entries queued. Each batch of `iters` removals is preceded by
/// `iters` untimed enqueues, so the depth stays between `depth` and `depth + iters`.
fn peek_remove_depth(c: &mut Criterion) {
    let rt = runtime();
    let small = Bytes::from_static(b"0123456789abcdef");
    let mut g = c.benchmark_group("peek_remove_by_depth");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for kind in [
        Kind::Memory,
        Kind::File {
            sync_removals: false,
        },
        Kind::File {
            sync_removals: true,
        },
    ] {
        for depth in [10u64, 1_000_000] {
            let (q, fill) = rt.block_on(async {
                let q = AnyQueue::open(kind).await;
                let start = Instant::now();
                q.produce(depth, 64, &small).await;
                (q, start.elapsed())
            });
            eprintln!(
                "peek_remove_by_depth/{}/{depth}: prefill took {fill:?}",
                kind.name()
            );
            let mut tally = Tally::default();
            g.bench_with_input(BenchmarkId::new(kind.name(), depth), &depth, |b, _| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        q.produce(iters, 16, &small).await;
                        let before = q.fsyncs();
                        let start = Instant::now();
                        q.consume(iters).await;
                        let took = start.elapsed();
                        tally.entries += iters;
                        tally.fsyncs += q.fsyncs() - before;
                        took
                    })
                })
            });
            tally.print(&format!("peek_remove_by_depth/{}/{depth}", kind.name()));
            drop(q);
        }
    }
    g.finish();
}

criterion_group!(benches, enqueue, dequeue, peek_remove_depth);
criterion_main!(benches);
