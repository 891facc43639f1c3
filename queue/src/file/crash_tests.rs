//! Crash-consistency tests over the simulated disk (`fault::FaultFs`), in the manner of redb's:
//! run a workload on a disk whose N-th operation fails, for every N, take the images a power
//! loss and a process crash would leave, reopen each, and compare with what the callers were
//! told.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::fault::{CrashKind, Failure, FaultFs};
use super::fs::Fs;
use super::*;

/// The simulated disk has only `/sim`; the queue lives three levels below it, so opening it
/// first creates `a`, `b` and `queue`.
fn root() -> PathBuf {
    PathBuf::from("/sim")
}

fn queue_dir() -> PathBuf {
    Path::new("/sim/a/b/queue").to_path_buf()
}

fn new_disk() -> FaultFs {
    FaultFs::new(&root(), &queue_dir())
}

/// Small segments, so the workload rolls and reclaims several.
fn builder(fs: &FaultFs) -> FileQueueBuilder {
    let mut b = FileQueue::builder(queue_dir()).segment_bytes(MIN_SEGMENT_BYTES);
    b.cfg.fault_fs = Some(fs.clone());
    b
}

/// The queue variants the sweep runs: unbounded, or at most 6 entries with the oldest dropped
/// (the drops are committed in the enqueue's batch, so they must be cut back with it).
fn builder_for(fs: &FaultFs, drop_oldest: bool) -> FileQueueBuilder {
    let b = builder(fs);
    if drop_oldest {
        let limits = Limits::builder()
            .max_entries(6)
            .overflow(Overflow::DropOldest)
            .build()
            .unwrap();
        b.limits(limits)
    } else {
        b
    }
}

/// Entry `id`'s payload: the id, then filler; 300 to 800 bytes, so a 4 KiB segment holds a few.
fn payload(id: u32) -> Bytes {
    let len = 300 + (id as usize * 137) % 500;
    let mut v = id.to_le_bytes().to_vec();
    v.extend((0..len).map(|i| (i as u32 ^ id) as u8));
    Bytes::from(v)
}

fn id_of(p: &[u8]) -> u32 {
    let id = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    assert_eq!(p, &payload(id)[..], "payload of entry {id} altered");
    id
}

/// One batch: enqueue these ids, after removing this many entries from the head (the first
/// of them quarantined if `quarantine`).
#[derive(Debug, Clone)]
struct Step {
    remove: usize,
    quarantine: bool,
    enqueue: Vec<u32>,
}

fn step(remove: usize, enqueue: impl IntoIterator<Item = u32>) -> Step {
    Step {
        remove,
        quarantine: false,
        enqueue: enqueue.into_iter().collect(),
    }
}

fn quarantine_then(remove: usize, enqueue: impl IntoIterator<Item = u32>) -> Step {
    Step {
        quarantine: true,
        ..step(remove, enqueue)
    }
}

fn workload() -> Vec<Step> {
    vec![
        step(0, [1]),
        step(0, 2..=4),
        // Crosses at least one roll inside the batch: the roll fsyncs the batch's first
        // records into the old segment before the batch's own fsync.
        step(0, 5..=16),
        step(1, []),
        step(2, []),
        step(0, [17]),
        // Removals and enqueues in one batch; the removals reclaim a segment.
        step(6, 18..=20),
        step(0, 21..=29),
        step(4, []),
        quarantine_then(1, [30]),
        step(9, []),
        step(0, [31]),
        step(1, []),
        step(0, [32, 33]),
        quarantine_then(3, []),
        step(1, []),
    ]
}

/// What the callers were told.
#[derive(Debug, Default)]
struct Told {
    /// Enqueues answered Ok, in order.
    enqueued: Vec<u32>,
    /// Enqueues answered with an error that means "not done".
    enqueue_failed: BTreeSet<u32>,
    /// Enqueues and removals answered `OutcomeUnknown`.
    enqueue_unknown: BTreeSet<u32>,
    removed: BTreeSet<u32>,
    /// The removals of `removed` that were quarantines.
    quarantined: BTreeSet<u32>,
    remove_failed: BTreeSet<u32>,
    remove_unknown: BTreeSet<u32>,
    /// Some operation (or the open, or the close) returned an error.
    any_error: bool,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Runs the workload on `fs` (failing as set), stopping at the first error, and closes the
/// queue. Returns what the callers were told.
async fn run(fs: &FaultFs, drop_oldest: bool) -> Told {
    let mut told = Told::default();
    let Ok(q) = builder_for(fs, drop_oldest).open().await else {
        told.any_error = true;
        return told;
    };
    // The ids live in the queue, oldest first, as far as the callers know.
    let mut live: VecDeque<(u64, u32)> = VecDeque::new();
    'steps: for s in workload() {
        let mut cmds = Vec::new();
        let mut removes = Vec::new();
        let mut enqueues = Vec::new();
        for (k, &(seq, id)) in live.iter().take(s.remove).enumerate() {
            let (reply, rx) = oneshot::channel();
            let quarantine = s.quarantine && k == 0;
            cmds.push(Command::Finish {
                seq,
                quarantine,
                reply,
            });
            removes.push((id, quarantine, rx));
        }
        for &id in &s.enqueue {
            let (reply, rx) = oneshot::channel();
            cmds.push(Command::Append {
                payload: payload(id),
                time_ms: 0,
                reserved: false,
                reply,
            });
            enqueues.push((id, rx));
        }
        q.send(Command::Many(cmds)).unwrap();
        let mut failed = false;
        for (id, quarantine, rx) in removes {
            match rx.await.unwrap() {
                Ok(()) => {
                    told.removed.insert(id);
                    if quarantine {
                        told.quarantined.insert(id);
                    }
                    live.pop_front();
                }
                Err(e) if e.is_outcome_unknown() => {
                    told.remove_unknown.insert(id);
                    failed = true;
                }
                Err(_) => {
                    told.remove_failed.insert(id);
                    failed = true;
                }
            }
        }
        for (id, rx) in enqueues {
            match rx.await.unwrap() {
                Ok(e) => {
                    told.enqueued.push(id);
                    live.push_back((e.seq(), id));
                    // Dropped to make room: gone as surely as a removal answered Ok.
                    for d in e.dropped() {
                        let pos = live.iter().position(|l| l.0 == d.seq());
                        let Some((_, gone)) = pos.and_then(|p| live.remove(p)) else {
                            panic!("dropped {} was not live", d.seq());
                        };
                        told.removed.insert(gone);
                    }
                }
                Err(e) if e.is_outcome_unknown() => {
                    told.enqueue_unknown.insert(id);
                    // Whatever the batch would have dropped may be gone too.
                    if drop_oldest {
                        told.remove_unknown.extend(live.iter().map(|l| l.1));
                    }
                    failed = true;
                }
                Err(_) => {
                    told.enqueue_failed.insert(id);
                    failed = true;
                }
            }
        }
        if failed {
            told.any_error = true;
            break 'steps;
        }
        // The queue agrees with the model between batches (or has failed, which the next
        // batch will show).
        if let Ok(head) = q.peek() {
            assert_eq!(
                head.map(|e| id_of(e.payload())),
                live.front().map(|l| l.1),
                "head"
            );
        }
    }
    if told.any_error {
        // Sticky: once failed, everything fails plainly, and nothing more is written.
        let before = fs.ops_done();
        let r = q.enqueue(payload(999), UNIX_EPOCH).await;
        assert!(matches!(r, Err(Error::Failed(_))), "{r:?}");
        assert!(matches!(q.peek(), Err(Error::Failed(_))));
        assert_eq!(fs.ops_done(), before, "a failed queue touched the disk");
    }
    if q.close().await.is_err() {
        told.any_error = true;
    }
    told
}

/// Opens an image and checks it against what the callers were told: every enqueue answered
/// Ok is there unless its removal was answered Ok, in order, intact; nothing answered with a
/// "not done" error is there (a removal answered so left its entry in place); only
/// `OutcomeUnknown` operations may go either way.
async fn check_image(fs: &FaultFs, kind: CrashKind, told: &Told, ctx: &str, drop_oldest: bool) {
    let mut image = fs.crash_image(kind);
    // Quarantined copies: every quarantine answered Ok is there, and no entry whose removal
    // was answered "not done" (a quarantine in a batch that was cut back).
    let copies: BTreeSet<u32> = match image.read(QUARANTINE_FILE) {
        Ok(data) => parse_quarantine(&data)
            .iter()
            .filter(|r| r.intact() && r.reason() == Some(QuarantineReason::Unreadable))
            .map(|r| id_of(r.data()))
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    for id in &told.quarantined {
        assert!(copies.contains(id), "{ctx} {kind:?}: quarantined {id} lost");
    }
    for id in &copies {
        assert!(
            told.quarantined.contains(id) || told.remove_unknown.contains(id),
            "{ctx} {kind:?}: {id} in quarantine, told {told:?}"
        );
    }
    let q = match builder_for(&image, drop_oldest).open().await {
        Ok(q) => q,
        Err(e) => panic!("{ctx} {kind:?}: reopening failed: {e}"),
    };
    let mut found = Vec::new();
    while let Some(e) = q.peek().unwrap() {
        found.push(id_of(e.payload()));
        q.finish(e, Finish::Remove).await.unwrap();
    }
    q.close().await.unwrap();
    let ctx = format!("{ctx} {kind:?}: found {found:?}, told {told:?}");
    assert!(found.windows(2).all(|w| w[0] < w[1]), "out of order: {ctx}");
    let enqueued: BTreeSet<u32> = told.enqueued.iter().copied().collect();
    for id in &found {
        assert!(
            enqueued.contains(id) || told.enqueue_unknown.contains(id),
            "entry {id} was never acknowledged: {ctx}"
        );
        assert!(
            !told.removed.contains(id),
            "entry {id} came back after its removal was acknowledged: {ctx}"
        );
    }
    for id in &told.enqueued {
        if !told.removed.contains(id) && !told.remove_unknown.contains(id) {
            assert!(found.contains(id), "acknowledged entry {id} lost: {ctx}");
        }
    }
}

/// The sweep: for every operation N of the workload, make N fail, in several ways (only N, or
/// N and everything after, or N and then everything from a few operations later; a failing
/// sync that persisted nothing, or one that persisted the data anyway), and check both crash
/// images.
#[test]
fn every_failure_point_leaves_images_that_match_what_callers_were_told() {
    sweep(false);
}

/// The same with `Overflow::DropOldest`, whose drops are part of the enqueue's batch.
#[test]
fn every_failure_point_with_drop_oldest_matches_what_callers_were_told() {
    sweep(true);
}

fn sweep(drop_oldest: bool) {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let told = run(&fs, drop_oldest).await;
        assert!(!told.any_error, "{told:?}");
        assert_eq!(told.enqueued.len(), 33);
        if drop_oldest {
            assert!(told.removed.len() > 28, "nothing dropped: {told:?}");
        } else {
            assert_eq!(told.removed.len(), 28);
            assert_eq!(told.quarantined.len(), 2);
        }
        let total = fs.ops_done();
        assert!(total > 40, "workload too small to be interesting: {total}");
        // Segments were rolled and reclaimed.
        assert!(fs.names().iter().filter(|n| n.starts_with("seg-")).count() < 3);

        let mut unknown = 0;
        let mut cut_back = 0;
        for n in 0..total {
            // (sticky, persists, then_from): one failure; the disk gone from then on; and one
            // failure followed by the disk going away during the reaction to it (the cut-back
            // has at most six operations).
            let mut modes: Vec<(bool, bool, Option<u64>)> = Vec::new();
            for sticky in [false, true] {
                for persists in [false, true] {
                    modes.push((sticky, persists, None));
                }
            }
            modes.extend((n + 1..=n + 6).map(|m| (false, true, Some(m))));
            for (sticky, sync_persists, then_from) in modes {
                let fs = new_disk();
                fs.set_failure(Failure {
                    at: Some(n),
                    sticky,
                    sync_persists,
                    then_from,
                });
                let told = run(&fs, drop_oldest).await;
                let ctx = format!(
                    "n = {n}, sticky = {sticky}, persists = {sync_persists}, then {then_from:?}"
                );
                assert!(told.any_error, "failure not reported: {ctx}");
                if !told.enqueue_unknown.is_empty() || !told.remove_unknown.is_empty() {
                    unknown += 1;
                }
                let failed_plainly =
                    !told.enqueue_failed.is_empty() || !told.remove_failed.is_empty();
                if !sticky && then_from.is_none() && failed_plainly {
                    cut_back += 1;
                }
                for kind in [CrashKind::SyncedOnly, CrashKind::PageCache] {
                    check_image(&fs, kind, &told, &ctx, drop_oldest).await;
                }
            }
        }
        // Both endings were exercised: cut back (a transient failure) and outcome unknown
        // (the disk gone, so the cut-back fails too).
        assert!(cut_back > 0 && unknown > 0, "{cut_back} {unknown}");
    });
}

/// Item B: opening a queue in a directory that does not exist yet creates every missing
/// level and fsyncs the parent of each, so a power loss cannot take the directory (and the
/// acknowledged entries in it) away.
#[test]
fn creating_the_queue_directory_fsyncs_the_parent_of_every_level_created() {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let q = builder(&fs).open().await.unwrap();
        q.enqueue(payload(1), UNIX_EPOCH).await.unwrap();
        q.close().await.unwrap();
        let syncs = fs.dir_syncs();
        let parents: Vec<PathBuf> = syncs
            .iter()
            .filter(|p| **p != queue_dir())
            .cloned()
            .collect();
        assert_eq!(
            parents,
            vec![root(), root().join("a"), root().join("a").join("b")],
            "{syncs:?}"
        );
        // Each level is synced before anything is written inside the queue directory.
        assert_eq!(&syncs[..3], &parents[..]);

        // After a power loss the directory and the entry are there.
        let image = fs.crash_image(CrashKind::SyncedOnly);
        let q = builder(&image).open().await.unwrap();
        assert_eq!(q.len(), 1);
        q.close().await.unwrap();
        // Opening an existing directory syncs no parent.
        let before = image.dir_syncs().len();
        let q = builder(&image).open().await.unwrap();
        q.close().await.unwrap();
        assert!(image.dir_syncs()[before..]
            .iter()
            .all(|p| *p == queue_dir()));
    });
}

/// Item A, deterministically: an enqueue whose fsync fails is answered with the I/O error and
/// is cut back, so it is in neither image, even when the failed fsync persisted the record.
#[test]
fn an_enqueue_whose_fsync_failed_is_never_found_again() {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let q = builder(&fs).open().await.unwrap();
        q.enqueue(payload(1), UNIX_EPOCH).await.unwrap();
        // The next enqueue is one append and one fsync: fail the fsync.
        fs.set_failure(Failure {
            at: Some(fs.ops_done() + 1),
            sticky: false,
            sync_persists: true,
            then_from: None,
        });
        let r = q.enqueue(payload(2), UNIX_EPOCH).await;
        assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
        assert!(matches!(q.peek(), Err(Error::Failed(_))));
        drop(q);
        for kind in [CrashKind::SyncedOnly, CrashKind::PageCache] {
            let q = builder(&fs.crash_image(kind)).open().await.unwrap();
            let e = q.peek().unwrap().unwrap();
            assert_eq!(id_of(e.payload()), 1, "{kind:?}");
            assert_eq!(q.len(), 1, "{kind:?}: the failed enqueue came back");
            q.close().await.unwrap();
        }
    });
}

/// Item A, the roll: a batch that rolls to a new segment fsyncs its first records into the
/// old segment. If the batch then fails, those records are cut back too, and every caller in
/// the batch gets the error.
#[test]
fn a_batch_that_failed_after_rolling_is_cut_back_whole() {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let q = builder(&fs).open().await.unwrap();
        q.enqueue(payload(1), UNIX_EPOCH).await.unwrap();
        let before = fs.names();
        // Fail the batch's last operation (its final fsync, after the roll), with the data
        // persisted anyway. Found by running the same batch on a copy of the disk.
        let probe = fs.crash_image(CrashKind::PageCache);
        let batch = |q: &FileQueue| {
            let mut rxs = Vec::new();
            let mut cmds = Vec::new();
            for id in 2..=12 {
                let (reply, rx) = oneshot::channel();
                cmds.push(Command::Append {
                    payload: payload(id),
                    time_ms: 0,
                    reserved: false,
                    reply,
                });
                rxs.push(rx);
            }
            q.send(Command::Many(cmds)).unwrap();
            rxs
        };
        let pq = builder(&probe).open().await.unwrap();
        let start = probe.ops_done();
        for rx in batch(&pq) {
            rx.await.unwrap().unwrap();
        }
        let last = probe.ops_done() - 1 - start;
        assert!(probe.names().len() > before.len(), "the batch did not roll");
        pq.close().await.unwrap();

        fs.set_failure(Failure {
            at: Some(fs.ops_done() + last),
            sticky: false,
            sync_persists: true,
            then_from: None,
        });
        for rx in batch(&q) {
            let r = rx.await.unwrap();
            assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
        }
        drop(q);
        // The new segment is gone and the old one is back to one entry, in both images.
        assert_eq!(fs.names(), before);
        for kind in [CrashKind::SyncedOnly, CrashKind::PageCache] {
            let q = builder(&fs.crash_image(kind)).open().await.unwrap();
            assert_eq!(q.len(), 1, "{kind:?}");
            assert!(q.take_reports().is_empty(), "{kind:?}");
            q.close().await.unwrap();
        }
    });
}

/// Item A, when the cut-back fails too: the callers are told the outcome is unknown, never
/// plainly "failed", and the queue stays failed.
#[test]
fn a_failed_cut_back_answers_outcome_unknown() {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let q = builder(&fs).open().await.unwrap();
        q.enqueue(payload(1), UNIX_EPOCH).await.unwrap();
        // The fsync fails, and so does everything after it (the truncation of the cut-back).
        fs.set_failure(Failure {
            at: Some(fs.ops_done() + 1),
            sticky: true,
            sync_persists: true,
            then_from: None,
        });
        let r = q.enqueue(payload(2), UNIX_EPOCH).await;
        let Err(e) = r else { panic!("{r:?}") };
        assert!(e.is_outcome_unknown(), "{e:?}");
        assert!(matches!(e, Error::OutcomeUnknown { .. }));
        let r = q.enqueue(payload(3), UNIX_EPOCH).await;
        assert!(matches!(r, Err(Error::Failed(_))), "{r:?}");
        drop(q);
        // The record was persisted by the failed fsync, so a reopen finds it: that is what
        // "unknown" warned about.
        let q = builder(&fs.crash_image(CrashKind::SyncedOnly))
            .open()
            .await
            .unwrap();
        assert_eq!(q.len(), 2);
        q.close().await.unwrap();
    });
}

/// Work after a batch is durable (reclaiming consumed segments) can fail too; the batch's own
/// operations took effect, so they are answered Ok, and only later calls fail.
#[test]
fn a_failure_after_the_commit_answers_the_batch_ok() {
    let rt = rt();
    rt.block_on(async {
        let fs = new_disk();
        let q = builder(&fs).open().await.unwrap();
        let mut seqs = Vec::new();
        for id in 1..=12 {
            seqs.push(q.enqueue(payload(id), UNIX_EPOCH).await.unwrap().seq());
        }
        let segments = fs.names().iter().filter(|n| n.starts_with("seg-")).count();
        assert!(segments >= 2);
        // Remove entries until a removal reclaims the first segment: append, fsync, then the
        // removal of the file fails.
        let mut removed = 0;
        loop {
            let e = q.peek().unwrap().unwrap();
            let probe = fs.crash_image(CrashKind::PageCache);
            let pq = builder(&probe).open().await.unwrap();
            let h = pq.peek().unwrap().unwrap();
            let names_before = probe.names();
            pq.finish(h, Finish::Remove).await.unwrap();
            let reclaims = probe.names().len() < names_before.len();
            pq.close().await.unwrap();
            if reclaims {
                fs.set_failure(Failure {
                    at: Some(fs.ops_done() + 2),
                    sticky: false,
                    sync_persists: false,
                    then_from: None,
                });
                q.finish(e, Finish::Remove).await.unwrap();
                break;
            }
            q.finish(e, Finish::Remove).await.unwrap();
            removed += 1;
        }
        let r = q.enqueue(payload(99), UNIX_EPOCH).await;
        assert!(matches!(r, Err(Error::Failed(_))), "{r:?}");
        drop(q);
        let q = builder(&fs.crash_image(CrashKind::SyncedOnly))
            .open()
            .await
            .unwrap();
        assert_eq!(q.len(), 12 - removed - 1);
        q.close().await.unwrap();
    });
}
