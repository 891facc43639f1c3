//! Regression tests for what the `queue_open` fuzz target (`fuzz/`, see docs/RELIABILITY.md,
//! Fuzzing) found in `FileQueue`'s recovery, one test per finding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use paho_queue::{FileQueue, Finish, Queue, Report};

/// A segment file as the format documents it (`queue/src/file/format.rs`).
fn segment(base: u64, records: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = [0u8; 24];
    h[0..8].copy_from_slice(b"PAHOQSEG");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    for (kind, seq, payload) in records {
        let mut r = [0u8; 36];
        r[0..4].copy_from_slice(&0x5051_5243u32.to_le_bytes());
        r[4] = *kind;
        r[8..16].copy_from_slice(&seq.to_le_bytes());
        r[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        r[28..32].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let crc = crc32fast::hash(&r[0..32]);
        r[32..36].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&r);
        out.extend_from_slice(payload);
    }
    out
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

const ENTRY: u8 = 1;
const HEAD: u8 = 2;

/// Found by `queue_open`: a checksummed entry (or head) record with sequence number
/// `u64::MAX` made recovery compute `seq + 1` and overflow: the I/O thread panicked on open in
/// debug builds (the open failed with `Closed`); in release builds the next sequence number
/// wrapped to 0. Sequence numbers of 2^62 and more (which no queue reaches) are damage now:
/// quarantined and reported, and the queue goes on after the good entries.
#[test]
fn a_sequence_number_no_queue_reaches_is_damage_not_an_overflow() {
    for (kind, what) in [(ENTRY, "entry"), (HEAD, "head")] {
        let tmp = tempfile::tempdir().unwrap();
        let file = segment(
            1,
            &[
                (ENTRY, 1, b"one"),
                (kind, u64::MAX, b""),
                (ENTRY, 2, b"two"),
            ],
        );
        std::fs::write(tmp.path().join(format!("seg-{:020}.q", 1)), file).unwrap();
        let q = FileQueue::builder(tmp.path())
            .open_blocking()
            .unwrap_or_else(|e| panic!("{what} seq u64::MAX: open failed: {e}"));
        let reports = q.take_reports();
        assert!(
            reports
                .iter()
                .any(|r| matches!(r, Report::Quarantined { .. })),
            "{what} seq u64::MAX not reported: {reports:?}"
        );
        let mut read = Vec::new();
        while let Some(e) = q.peek().unwrap() {
            read.push((e.seq(), e.payload().clone()));
            block_on(q.finish(e, Finish::Remove)).unwrap();
        }
        assert_eq!(
            read,
            vec![
                (1, Bytes::from_static(b"one")),
                (2, Bytes::from_static(b"two"))
            ],
            "{what}"
        );
        let next = block_on(q.enqueue(Bytes::from_static(b"three"), UNIX_EPOCH)).unwrap();
        assert_eq!(next.seq(), 3, "{what}: the next sequence number");
        block_on(q.close()).unwrap();
    }
}

/// The same for a segment file whose name carries such a base: it is not one of the queue's
/// segments (left alone), and the queue's numbering does not jump to it.
#[test]
fn a_segment_name_no_queue_reaches_is_not_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(format!("seg-{:020}.q", 1)),
        segment(1, &[(ENTRY, 1, b"one")]),
    )
    .unwrap();
    let stray = tmp.path().join(format!("seg-{:020}.q", u64::MAX));
    std::fs::write(&stray, segment(u64::MAX, &[])).unwrap();
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    let e = q.peek().unwrap().unwrap();
    assert_eq!(e.seq(), 1);
    block_on(q.finish(e, Finish::Remove)).unwrap();
    let next = block_on(q.enqueue(Bytes::from_static(b"two"), UNIX_EPOCH)).unwrap();
    assert_eq!(next.seq(), 2);
    block_on(q.close()).unwrap();
    assert!(stray.exists(), "a file that is not a segment was deleted");
}

/// Found by `queue_open`: an empty segment named with base 0 opened quietly, but once an enqueue
/// had rolled to a segment with base 1, every later open reported `Missing { first: 0, last: 0 }`,
/// a loss that never happened (no entry has sequence number 0).
#[test]
fn a_segment_with_base_0_reports_no_missing_entry_0() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(format!("seg-{:020}.q", 0)), segment(0, &[])).unwrap();
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    assert_eq!(q.take_reports(), vec![]);
    let e = block_on(q.enqueue(Bytes::from_static(b"one"), UNIX_EPOCH)).unwrap();
    block_on(q.close()).unwrap();
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    assert_eq!(
        q.take_reports(),
        vec![],
        "a loss reported that never happened"
    );
    let head = q.peek().unwrap().unwrap();
    assert_eq!(
        (head.seq(), head.payload().as_ref()),
        (e.seq(), &b"one"[..])
    );
    block_on(q.close()).unwrap();
}

/// Found by `queue_open`: a head record (199) beyond the next segment's base (160), in an
/// older segment. The first open believed it and reclaimed that segment, so the record was
/// gone; the entry enqueued next (199) went into segment 160, and every later open reported
/// 160..=198 missing, a loss that never happened. The open now writes the head again in the
/// active segment when it reclaimed the one that held it.
#[test]
fn a_head_record_in_a_reclaimed_segment_is_not_forgotten() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(format!("seg-{:020}.q", 49)),
        segment(49, &[(HEAD, 199, b""), (ENTRY, 49, b"consumed")]),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join(format!("seg-{:020}.q", 160)),
        segment(160, &[]),
    )
    .unwrap();
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    assert_eq!(q.take_reports(), vec![]);
    assert_eq!(q.len(), 0);
    let e = block_on(q.enqueue(Bytes::from_static(b"new"), UNIX_EPOCH)).unwrap();
    assert_eq!(e.seq(), 199);
    block_on(q.close()).unwrap();
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    assert_eq!(
        q.take_reports(),
        vec![],
        "a loss reported that never happened"
    );
    let head = q.peek().unwrap().unwrap();
    assert_eq!((head.seq(), head.payload().as_ref()), (199, &b"new"[..]));
    block_on(q.close()).unwrap();
}

/// Found by `queue_open`: an entry (104) in a segment (base 48) at or beyond the next segment's
/// base (92). Opening believed it, then reclaimed segment 48 as consumed (everything in it was
/// taken to be below 92) while the entry was live: the file holding it was deleted, and the
/// open failed reading it. Such an entry is out of place now: quarantined and reported, and the
/// queue opens.
#[test]
fn an_entry_beyond_the_next_segments_base_is_quarantined_not_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(format!("seg-{:020}.q", 48)),
        segment(48, &[(ENTRY, 104, b"misplaced")]),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join(format!("seg-{:020}.q", 92)),
        segment(92, &[]),
    )
    .unwrap();
    let q = FileQueue::builder(tmp.path())
        .open_blocking()
        .unwrap_or_else(|e| panic!("open failed: {e}"));
    let reports = q.take_reports();
    assert!(
        reports
            .iter()
            .any(|r| matches!(r, Report::Quarantined { seq: Some(104), .. })),
        "{reports:?}"
    );
    assert_eq!(q.len(), 0);
    let e = block_on(q.enqueue(Bytes::from_static(b"new"), UNIX_EPOCH)).unwrap();
    block_on(q.close()).unwrap();
    let saved = FileQueue::read_quarantine(tmp.path()).unwrap();
    assert!(
        saved.iter().any(|r| r.data().as_ref() == b"misplaced"),
        "{saved:?}"
    );
    let q = FileQueue::builder(tmp.path()).open_blocking().unwrap();
    assert_eq!(q.take_reports(), vec![]);
    assert_eq!(q.peek().unwrap().unwrap().seq(), e.seq());
    block_on(q.close()).unwrap();
}
