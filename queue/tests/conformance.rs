//! One conformance suite, run against both queues: FIFO order, leave/remove/quarantine,
//! limits with each overflow policy, and waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use paho_queue::{
    Error, FileQueue, Finish, Limits, MemoryQueue, Overflow, QuarantineReason, Queue, Report,
};
use tempfile::TempDir;

struct Harness<Q> {
    q: Arc<Q>,
    _dir: Option<TempDir>,
}

async fn memory(limits: Limits) -> Harness<MemoryQueue> {
    Harness {
        q: Arc::new(MemoryQueue::new(limits)),
        _dir: None,
    }
}

async fn file(limits: Limits) -> Harness<FileQueue> {
    let dir = tempfile::tempdir().unwrap();
    let q = FileQueue::builder(dir.path().join("q"))
        .limits(limits)
        .segment_bytes(4096)
        .open()
        .await
        .unwrap();
    Harness {
        q: Arc::new(q),
        _dir: Some(dir),
    }
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Polls a future once; true if it is still pending.
fn pending_once<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(f.poll(&mut cx), Poll::Pending)
}

fn limits(entries: Option<u64>, bytes: Option<u64>, overflow: Overflow) -> Limits {
    let mut l = Limits::builder().overflow(overflow);
    if let Some(n) = entries {
        l = l.max_entries(n);
    }
    if let Some(n) = bytes {
        l = l.max_bytes(n);
    }
    l.build().unwrap()
}

async fn drain<Q: Queue>(q: &Q) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while let Some(e) = q.peek().unwrap() {
        out.push((e.seq(), e.payload().clone()));
        q.finish(e, Finish::Remove).await.unwrap();
    }
    out
}

async fn fifo_order<Q: Queue>(q: &Q) {
    assert!(q.peek().unwrap().is_none());
    let mut seqs = Vec::new();
    for i in 0..200u64 {
        let r = q.enqueue(b(&format!("m{i}")), at(1_000 + i)).await.unwrap();
        assert!(r.dropped().is_empty());
        seqs.push(r.seq());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase");
    assert_eq!(q.len(), 200);
    for (i, seq) in seqs.iter().enumerate() {
        let e = q.peek().unwrap().unwrap();
        assert_eq!(e.seq(), *seq);
        assert_eq!(e.payload(), &b(&format!("m{i}")));
        assert_eq!(e.enqueued_at(), at(1_000 + i as u64));
        q.finish(e, Finish::Remove).await.unwrap();
    }
    assert!(q.is_empty());
    assert_eq!(q.bytes(), 0);
    assert!(q.peek().unwrap().is_none());
    assert_eq!(q.stats().removed, 200);
    assert_eq!(q.stats().enqueued, 200);
}

async fn leave_keeps_head<Q: Queue>(q: &Q) {
    q.enqueue(b("a"), at(1)).await.unwrap();
    q.enqueue(b("b"), at(2)).await.unwrap();
    for _ in 0..3 {
        let e = q.peek().unwrap().unwrap();
        assert_eq!(e.payload(), &b("a"));
        q.finish(e, Finish::Leave).await.unwrap();
        assert_eq!(q.len(), 2);
    }
    assert_eq!(drain(q).await.len(), 2);
}

async fn finish_needs_the_head<Q: Queue>(q: &Q) {
    q.enqueue(b("a"), at(1)).await.unwrap();
    q.enqueue(b("b"), at(2)).await.unwrap();
    let stale = q.peek().unwrap().unwrap();
    let same = q.peek().unwrap().unwrap();
    q.finish(same, Finish::Remove).await.unwrap();
    let err = q.finish(stale, Finish::Remove).await.unwrap_err();
    assert!(
        matches!(err, Error::NotHead { head: Some(_), .. }),
        "{err:?}"
    );
    assert_eq!(q.len(), 1, "a stale finish removes nothing");
    let head = q.peek().unwrap().unwrap();
    assert_eq!(head.payload(), &b("b"));
}

async fn quarantine_moves_on_and_reports<Q: Queue>(q: &Q) {
    q.enqueue(b("bad"), at(5)).await.unwrap();
    q.enqueue(b("good"), at(6)).await.unwrap();
    let e = q.peek().unwrap().unwrap();
    let seq = e.seq();
    q.finish(e, Finish::Quarantine).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q.peek().unwrap().unwrap().payload(), &b("good"));
    let reports = q.take_reports();
    assert_eq!(
        reports,
        vec![Report::Quarantined {
            seq: Some(seq),
            reason: QuarantineReason::Unreadable,
            len: 3
        }]
    );
    assert!(q.take_reports().is_empty(), "reports are drained");
    assert_eq!(q.stats().quarantined, 1);
}

async fn wait_non_empty_wakes<Q: Queue + 'static>(q: Arc<Q>) {
    {
        let mut w = pin!(q.wait_non_empty());
        assert!(pending_once(w.as_mut()), "empty queue: waiting");
        let q2 = Arc::clone(&q);
        tokio::spawn(async move { q2.enqueue(b("x"), at(1)).await.unwrap() })
            .await
            .unwrap();
        w.await.unwrap();
    }
    // Already non-empty: completes at once.
    let mut w = pin!(q.wait_non_empty());
    assert!(!pending_once(w.as_mut()));
    // A waiter started on an empty queue wakes when a producer task enqueues.
    let e = q.peek().unwrap().unwrap();
    q.finish(e, Finish::Remove).await.unwrap();
    let q2 = Arc::clone(&q);
    let waiter = tokio::spawn(async move { q2.wait_non_empty().await });
    tokio::task::yield_now().await;
    q.enqueue(b("y"), at(2)).await.unwrap();
    waiter.await.unwrap().unwrap();
}

async fn reject_by_entries<Q: Queue>(q: &Q) {
    q.enqueue(b("1"), at(1)).await.unwrap();
    q.enqueue(b("2"), at(2)).await.unwrap();
    let err = q.enqueue(b("3"), at(3)).await.unwrap_err();
    assert!(matches!(err, Error::Full { entries: 2, .. }), "{err:?}");
    assert_eq!(q.len(), 2);
    let e = q.peek().unwrap().unwrap();
    q.finish(e, Finish::Remove).await.unwrap();
    q.enqueue(b("3"), at(3)).await.unwrap();
    let got: Vec<Bytes> = drain(q).await.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b("2"), b("3")]);
}

async fn reject_by_bytes<Q: Queue>(q: &Q) {
    q.enqueue(b("aaaa"), at(1)).await.unwrap();
    q.enqueue(b("bbbb"), at(2)).await.unwrap();
    let err = q.enqueue(b("ccc"), at(3)).await.unwrap_err();
    assert!(matches!(err, Error::Full { bytes: 8, .. }), "{err:?}");
    q.enqueue(b("cc"), at(3)).await.unwrap();
    assert_eq!(q.bytes(), 10);
}

async fn too_large_is_refused<Q: Queue>(q: &Q) {
    let err = q.enqueue(b("01234567890"), at(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::EntryTooLarge { len: 11, limit: 10 }),
        "{err:?}"
    );
    assert!(q.is_empty());
}

async fn block_waits_for_room<Q: Queue + 'static>(q: Arc<Q>) {
    q.enqueue(b("a"), at(1)).await.unwrap();
    // A blocked enqueue that is dropped enqueues nothing and gives its place back.
    {
        let mut f = pin!(q.enqueue(b("d"), at(2)));
        assert!(pending_once(f.as_mut()), "full: producer waits");
    }
    let q2 = Arc::clone(&q);
    let producer = tokio::spawn(async move { q2.enqueue(b("b"), at(3)).await });
    // Let the producer reach its wait (it cannot complete while the queue is full).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!producer.is_finished());
    assert_eq!(q.len(), 1);
    let e = q.peek().unwrap().unwrap();
    q.finish(e, Finish::Remove).await.unwrap();
    let r = producer.await.unwrap().unwrap();
    assert!(r.dropped().is_empty());
    let got: Vec<Bytes> = drain(&*q).await.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b("b")]);
}

/// A waker that records whether it was woken.
#[derive(Default)]
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Flag {
    fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Blocked producers get room in arrival order: a small entry arriving later must not take the
/// room a large one is waiting for (under steady small traffic the large one would starve).
async fn block_is_first_come_first_served<Q: Queue>(q: &Q) {
    for p in ["a", "b", "c", "d"] {
        q.enqueue(b(p), at(1)).await.unwrap();
    }
    let mut big = pin!(q.enqueue(b("XXX"), at(2)));
    assert!(pending_once(big.as_mut()), "full: the big entry waits");
    let e = q.peek().unwrap().unwrap();
    q.finish(e, Finish::Remove).await.unwrap();
    // One byte is free: enough for the small entry, not for the big one ahead of it.
    let mut small = pin!(q.enqueue(b("s"), at(3)));
    let early = match small.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r.unwrap().seq()),
        Poll::Pending => None,
    };
    drain(q).await;
    let big = big.await.unwrap().seq();
    let small = match early {
        Some(seq) => seq,
        None => small.await.unwrap().seq(),
    };
    assert!(big < small, "first come, first served: {big} then {small}");
}

/// A blocked producer that is dropped while first in line passes its turn on: the producer
/// behind it is woken (not left waiting for a removal that may never come).
async fn cancelled_blocked_producer_wakes_the_next<Q: Queue>(q: &Q) {
    for p in ["a", "b", "c", "d"] {
        q.enqueue(b(p), at(1)).await.unwrap();
    }
    let mut first = Box::pin(q.enqueue(b("XXX"), at(2)));
    assert!(pending_once(first.as_mut()));
    let e = q.peek().unwrap().unwrap();
    q.finish(e, Finish::Remove).await.unwrap();
    let flag = Arc::new(Flag::default());
    let waker = Waker::from(Arc::clone(&flag));
    let mut next = pin!(q.enqueue(b("y"), at(3)));
    assert!(
        next.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "waits behind the first producer"
    );
    flag.take();
    drop(first);
    assert!(
        flag.take(),
        "the next producer is woken when the first gives up"
    );
    let r = next.await.unwrap();
    assert!(r.seq() > 4);
    assert_eq!(q.len(), 4);
}

async fn drop_oldest_by_entries<Q: Queue>(q: &Q) {
    let s1 = q.enqueue(b("1"), at(1)).await.unwrap().seq();
    q.enqueue(b("2"), at(2)).await.unwrap();
    let held = q.peek().unwrap().unwrap();
    let r = q.enqueue(b("3"), at(3)).await.unwrap();
    assert_eq!(r.dropped().len(), 1);
    assert_eq!(r.dropped()[0].seq(), s1);
    assert_eq!(r.dropped()[0].enqueued_at(), at(1));
    assert_eq!(r.dropped()[0].len(), 1);
    assert_eq!(
        q.take_reports(),
        vec![Report::Dropped(r.dropped()[0].clone())]
    );
    // The consumer held the dropped entry: finishing it is refused, not misapplied.
    let err = q.finish(held, Finish::Remove).await.unwrap_err();
    assert!(matches!(err, Error::NotHead { .. }), "{err:?}");
    assert_eq!(q.stats().dropped, 1);
    let got: Vec<Bytes> = drain(q).await.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b("2"), b("3")]);
}

async fn drop_oldest_by_bytes<Q: Queue>(q: &Q) {
    q.enqueue(b("aaaa"), at(1)).await.unwrap();
    q.enqueue(b("bbbb"), at(2)).await.unwrap();
    q.enqueue(b("c"), at(3)).await.unwrap();
    let r = q.enqueue(b("dddddddd"), at(4)).await.unwrap();
    assert_eq!(r.dropped().len(), 2, "drops just enough: {r:?}");
    assert_eq!(q.bytes(), 9);
    let got: Vec<Bytes> = drain(q).await.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, vec![b("c"), b("dddddddd")]);
}

async fn concurrent_producers_keep_fifo<Q: Queue + 'static>(q: Arc<Q>) {
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25u32 {
                let r = q.enqueue(b(&format!("{t}-{i}")), at(1)).await.unwrap();
                seqs.push((r.seq(), format!("{t}-{i}")));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0].0 < w[1].0),
            "per producer order"
        );
        all.extend(seqs);
    }
    all.sort();
    let got = drain(&*q).await;
    let want: Vec<(u64, Bytes)> = all.into_iter().map(|(s, p)| (s, b(&p))).collect();
    assert_eq!(got, want, "dequeued in sequence order, nothing lost");
}

macro_rules! conformance {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            fn unbounded() -> Limits {
                Limits::unbounded()
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fifo_order() {
                super::fifo_order(&*$make(unbounded()).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn leave_keeps_head() {
                super::leave_keeps_head(&*$make(unbounded()).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn finish_needs_the_head() {
                super::finish_needs_the_head(&*$make(unbounded()).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quarantine_moves_on_and_reports() {
                super::quarantine_moves_on_and_reports(&*$make(unbounded()).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wait_non_empty_wakes() {
                let h = $make(unbounded()).await;
                super::wait_non_empty_wakes(Arc::clone(&h.q)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reject_by_entries() {
                let l = limits(Some(2), None, Overflow::Reject);
                super::reject_by_entries(&*$make(l).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reject_by_bytes() {
                let l = limits(None, Some(10), Overflow::Reject);
                super::reject_by_bytes(&*$make(l).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn too_large_is_refused_under_every_policy() {
                for p in [Overflow::Block, Overflow::Reject, Overflow::DropOldest] {
                    let l = limits(None, Some(10), p);
                    super::too_large_is_refused(&*$make(l).await.q).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn block_waits_for_room() {
                let h = $make(limits(Some(1), None, Overflow::Block)).await;
                super::block_waits_for_room(Arc::clone(&h.q)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn block_waits_for_bytes() {
                let h = $make(limits(None, Some(1), Overflow::Block)).await;
                super::block_waits_for_room(Arc::clone(&h.q)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn block_is_first_come_first_served() {
                let h = $make(limits(None, Some(4), Overflow::Block)).await;
                super::block_is_first_come_first_served(&*h.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancelled_blocked_producer_wakes_the_next() {
                let h = $make(limits(None, Some(4), Overflow::Block)).await;
                super::cancelled_blocked_producer_wakes_the_next(&*h.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_oldest_by_entries() {
                let l = limits(Some(2), None, Overflow::DropOldest);
                super::drop_oldest_by_entries(&*$make(l).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_oldest_by_bytes() {
                let l = limits(None, Some(10), Overflow::DropOldest);
                super::drop_oldest_by_bytes(&*$make(l).await.q).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_producers_keep_fifo() {
                let h = $make(unbounded()).await;
                super::concurrent_producers_keep_fifo(Arc::clone(&h.q)).await;
            }
        }
    };
}

conformance!(memory_queue, memory);
conformance!(file_queue, file);

#[test]
fn limits_builder_validates() {
    assert!(matches!(
        Limits::builder().max_entries(0).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Limits::builder().max_bytes(0).build(),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Limits::builder()
            .max_entry_bytes(paho_queue::MAX_ENTRY_BYTES + 1)
            .build(),
        Err(Error::Config(_))
    ));
    let l = Limits::builder()
        .max_entries(3)
        .max_bytes(4)
        .overflow(Overflow::Reject)
        .build()
        .unwrap();
    assert_eq!(
        (l.max_entries(), l.max_bytes(), l.overflow()),
        (Some(3), Some(4), Overflow::Reject)
    );
}
