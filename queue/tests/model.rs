//! Property test: random enqueue / peek / remove / leave / quarantine (and, for the file queue,
//! reopen) sequences against a `VecDeque` model, for both queues.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use paho_queue::{FileQueue, Finish, MemoryQueue, Queue};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue(Vec<u8>),
    Peek,
    Remove,
    Leave,
    Quarantine,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Enqueue),
        2 => Just(Op::Peek),
        3 => Just(Op::Remove),
        1 => Just(Op::Leave),
        1 => Just(Op::Quarantine),
        1 => Just(Op::Reopen),
    ]
}

fn at(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(n)
}

type Model = VecDeque<(u64, Bytes, SystemTime)>;

/// Applies one op to the queue and the model and checks they agree.
async fn step<Q: Queue>(q: &Q, model: &mut Model, last_seq: &mut u64, op: &Op, clock: u64) {
    match op {
        Op::Enqueue(p) => {
            let r = q.enqueue(Bytes::from(p.clone()), at(clock)).await.unwrap();
            assert!(r.seq() > *last_seq, "sequence numbers increase");
            *last_seq = r.seq();
            model.push_back((r.seq(), Bytes::from(p.clone()), at(clock)));
        }
        Op::Peek | Op::Leave | Op::Remove | Op::Quarantine | Op::Reopen => {
            let head = q.peek().unwrap();
            let want = model.front();
            assert_eq!(
                head.as_ref()
                    .map(|e| (e.seq(), e.payload().clone(), e.enqueued_at())),
                want.cloned()
            );
            if let Some(e) = head {
                let how = match op {
                    Op::Remove => Finish::Remove,
                    Op::Quarantine => Finish::Quarantine,
                    _ => Finish::Leave,
                };
                q.finish(e, how).await.unwrap();
                if how != Finish::Leave {
                    model.pop_front();
                }
            }
        }
    }
    assert_eq!(q.len(), model.len() as u64);
    let bytes: u64 = model.iter().map(|(_, p, _)| p.len() as u64).sum();
    assert_eq!(q.bytes(), bytes);
}

fn run_memory(ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = MemoryQueue::default();
        let mut model = Model::new();
        let mut last = 0;
        for (i, op) in ops.iter().enumerate() {
            step(&q, &mut model, &mut last, op, i as u64).await;
        }
    });
}

async fn open(dir: &Path) -> FileQueue {
    // Tiny segments so the sequences exercise rolling and reclaiming.
    FileQueue::builder(dir)
        .segment_bytes(4096)
        .open()
        .await
        .unwrap()
}

fn run_file(ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let mut q = open(tmp.path()).await;
        let mut model = Model::new();
        let mut last = 0;
        for (i, op) in ops.iter().enumerate() {
            if let Op::Reopen = op {
                q.close().await.unwrap();
                q = open(tmp.path()).await;
                assert!(q.take_reports().is_empty(), "clean reopen");
            }
            step(&q, &mut model, &mut last, op, i as u64).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_queue_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run_memory(&ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn file_queue_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run_file(&ops);
    }
}
