//! Crash-consistency tests over the fault-injecting disk, in the manner of redb's: run a
//! workload on a disk that fails after N operations, for every N, take the image a crash would
//! leave, reopen it, and compare with a reference model.

use std::future::Future;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::fault::{CrashKind, FaultFs};
use super::fs::Fs;
use super::writer::TAIL;
use super::{FileStore, FileStoreOptions, StoreIdentity};
use crate::store::{EntryKind, Key, Store};
use crate::Error;

fn ident() -> StoreIdentity {
    StoreIdentity::new("mqtt://crash", "crash-test").unwrap()
}

/// A registry key unique to each open, so images of one disk can be opened one after another.
fn unique_key() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    PathBuf::from(format!("/fault-fs/{}", N.fetch_add(1, Ordering::Relaxed)))
}

async fn open_on(fs: &FaultFs, options: FileStoreOptions) -> Result<FileStore, Error> {
    let fs = fs.clone();
    FileStore::spawn(
        move || Ok((Box::new(fs) as Box<dyn Fs>, unique_key())),
        ident(),
        options,
    )
    .await
}

fn small_logs() -> FileStoreOptions {
    // Compact early so the workload crosses several compactions.
    FileStoreOptions::new().compact_min_bytes(256).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Put(Key, EntryKind, Bytes),
    Delete(Key),
    Reset,
    Quarantine(Key),
}

fn workload() -> Vec<Op> {
    let o = |n: u16| Key::Outbound(NonZeroU16::new(n).unwrap());
    let i = |n: u16| Key::Inbound(NonZeroU16::new(n).unwrap());
    let v = |n: usize| Bytes::from(vec![n as u8; 20 + n % 7]);
    let mut ops = Vec::new();
    for round in 0..3usize {
        for n in 1..=6u16 {
            ops.push(Op::Put(
                o(n),
                EntryKind::Publish,
                v(round * 10 + n as usize),
            ));
        }
        ops.push(Op::Put(i(3), EntryKind::PubRec, v(99)));
        ops.push(Op::Put(o(2), EntryKind::PubRel, v(50 + round)));
        ops.push(Op::Delete(o(1)));
        ops.push(Op::Delete(o(4)));
        ops.push(Op::Quarantine(o(5)));
        ops.push(Op::Delete(i(3)));
        if round == 1 {
            ops.push(Op::Reset);
        }
    }
    ops
}

/// Issues the operation at once (store futures enqueue when called), so that operations issued
/// back to back share a batch.
fn apply<S: Store>(s: &S, op: &Op) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> {
    match op.clone() {
        Op::Put(k, kind, v) => Box::pin(s.put(k, kind, v)),
        Op::Delete(k) => Box::pin(s.delete(k)),
        Op::Reset => Box::pin(s.reset()),
        Op::Quarantine(k) => Box::pin(s.quarantine(k, "test".into())),
    }
}

type Image = Vec<(Key, EntryKind, Bytes)>;

async fn contents<S: Store>(s: &S) -> Image {
    s.list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key(), e.kind(), e.value().clone()))
        .collect()
}

/// The reference model: entries in the order their key was first put.
fn model_apply(m: &mut Image, op: &Op) {
    match op {
        Op::Put(k, kind, v) => match m.iter_mut().find(|e| e.0 == *k) {
            Some(e) => *e = (*k, *kind, v.clone()),
            None => m.push((*k, *kind, v.clone())),
        },
        Op::Delete(k) | Op::Quarantine(k) => m.retain(|e| e.0 != *k),
        Op::Reset => m.clear(),
    }
}

/// What an operation was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    /// A plain error: "not done". It must not be found in any image.
    NotDone,
    /// [`Error::OutcomeUnknown`]: it may or may not be found.
    Unknown,
}

fn answer_of(r: &Result<(), Error>) -> Answer {
    match r {
        Ok(()) => Answer::Ok,
        Err(e) if e.is_outcome_unknown() => Answer::Unknown,
        Err(_) => Answer::NotDone,
    }
}

/// How the disk goes on failing after the chosen operation failed, as `then_ok` of
/// [`FaultFs::fail_at`]: for good (so the clean-up fails too), transiently (the clean-up
/// succeeds), or after one more success (a truncate succeeds, the fsync after it fails).
const SCHEDULES: [Option<u64>; 3] = [Some(0), None, Some(1)];

/// The workload in groups issued together, so that batches hold several operations.
fn grouped_workload() -> Vec<Vec<Op>> {
    let ops = workload();
    let mut groups = Vec::new();
    let mut it = ops.into_iter().peekable();
    let mut size = 1;
    while it.peek().is_some() {
        groups.push(it.by_ref().take(size).collect());
        size = size % 3 + 1;
    }
    groups
}

/// One run of the workload on a disk that fails as scheduled: every operation with its answer
/// (empty if opening failed).
async fn run_until_failure(n: u64, then_ok: Option<u64>) -> (FaultFs, Vec<(Op, Answer)>) {
    let fs = FaultFs::new();
    fs.fail_at(n, then_ok);
    let mut answers = Vec::new();
    let Ok(store) = open_on(&fs, small_logs()).await else {
        return (fs, answers);
    };
    let mut failed = false;
    for group in grouped_workload() {
        let pending: Vec<_> = group.iter().map(|op| apply(&store, op)).collect();
        for (op, p) in group.into_iter().zip(pending) {
            let a = answer_of(&p.await);
            failed |= a != Answer::Ok;
            answers.push((op, a));
        }
    }
    if failed {
        // Once failed, the store refuses everything rather than guess what is on disk, and
        // serves no reads that could show a batch that failed.
        assert!(matches!(
            store
                .put(
                    Key::Outbound(NonZeroU16::MIN),
                    EntryKind::Publish,
                    Bytes::new()
                )
                .await,
            Err(Error::StoreFailed)
        ));
        assert!(matches!(store.list().await, Err(Error::StoreFailed)));
    } else if let Ok(list) = store.list().await {
        // (A compaction after the last batch may have failed the store without failing an
        // operation; then there is nothing to read.)
        let mut model = Image::new();
        for (op, _) in &answers {
            model_apply(&mut model, op);
        }
        let got: Image = list
            .into_iter()
            .map(|e| (e.key(), e.kind(), e.value().clone()))
            .collect();
        assert_eq!(got, model);
    }
    store.close().await;
    (fs, answers)
}

/// Every state the store may recover to: operations answered `Ok` applied, those answered with
/// a plain error not, and each one answered `OutcomeUnknown` either way.
fn acceptable(answers: &[(Op, Answer)]) -> Vec<Image> {
    let mut states = vec![Image::new()];
    for (op, a) in answers {
        match a {
            Answer::Ok => states.iter_mut().for_each(|m| model_apply(m, op)),
            Answer::NotDone => {}
            Answer::Unknown => {
                let mut with: Vec<Image> = states.clone();
                with.iter_mut().for_each(|m| model_apply(m, op));
                for m in with {
                    if !states.contains(&m) {
                        states.push(m);
                    }
                }
            }
        }
    }
    states
}

/// The values that quarantines answered `Ok` or `OutcomeUnknown` set aside: their bytes must be
/// in a quarantine file whatever the image.
fn quarantined_values(answers: &[(Op, Answer)]) -> Vec<Bytes> {
    let mut m = Image::new();
    let mut out = Vec::new();
    for (op, a) in answers {
        if *a == Answer::NotDone {
            continue;
        }
        if let Op::Quarantine(k) = op {
            if let Some(e) = m.iter().find(|e| e.0 == *k) {
                out.push(e.2.clone());
            }
        }
        model_apply(&mut m, op);
    }
    out
}

fn quarantine_files(image: &FaultFs) -> Vec<Vec<u8>> {
    let mut fs = image.clone();
    let mut names = fs.list().unwrap();
    names.sort();
    names
        .iter()
        .filter(|n| n.starts_with("quarantine-"))
        .filter_map(|n| fs.read(n).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_point_and_image_agrees_with_the_answers() {
    // redb-style: for every disk operation of the workload, and three ways of failing there,
    // run until the failure, take every image a crash (or a plain reopen, page cache intact)
    // could leave, reopen it and compare with the model. An operation answered with a plain
    // error is in no image (its caller may publish again; a reopen must not resend the first
    // copy), one answered Ok is in every image, one answered OutcomeUnknown may be either.
    let (fs, answers) = run_until_failure(u64::MAX, None).await;
    assert!(answers.iter().all(|(_, a)| *a == Answer::Ok));
    let total = fs.ops_done();
    assert!(total > 50, "workload too small to be interesting: {total}");

    let (mut not_done, mut unknown, mut compared) = (0, 0, 0);
    // Batches form as the writer finds requests waiting, so the count of operations varies a
    // little from run to run; the slack makes sure the last ones are covered too.
    for n in 0..total + 16 {
        for then_ok in SCHEDULES {
            let (fs, answers) = run_until_failure(n, then_ok).await;
            not_done += answers.iter().filter(|a| a.1 == Answer::NotDone).count();
            unknown += answers.iter().filter(|a| a.1 == Answer::Unknown).count();
            let states = acceptable(&answers);
            let set_aside = quarantined_values(&answers);
            let any_unknown = answers.iter().any(|a| a.1 == Answer::Unknown);
            for kind in [
                CrashKind::SyncedOnly,
                CrashKind::Everything,
                CrashKind::Torn,
            ] {
                let ctx = format!("n = {n}, then_ok = {then_ok:?}, {kind:?}");
                let image = fs.crash_image(kind);
                let files = quarantine_files(&image);
                for v in &set_aside {
                    assert!(
                        files.iter().any(|f| f == v),
                        "{ctx}: quarantined bytes lost: {v:?}"
                    );
                }
                let store = open_on(&image, small_logs())
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
                let got = contents(&store).await;
                assert!(
                    states.contains(&got),
                    "{ctx}:\n got        {got:?}\n acceptable {states:?}\n answers    {answers:?}"
                );
                // A torn log end can only be left by an append whose cut-back failed, and then
                // it is reported, never dropped in silence.
                for q in store.quarantined() {
                    assert!(
                        q.key().is_some() || (any_unknown && q.reason().contains(TAIL)),
                        "{ctx}: {q:?}"
                    );
                }
                // And the recovered store keeps working.
                store
                    .put(
                        Key::Inbound(NonZeroU16::MAX),
                        EntryKind::PubRec,
                        Bytes::from_static(b"x"),
                    )
                    .await
                    .unwrap();
                store.close().await;
                compared += 1;
            }
        }
    }
    eprintln!(
        "{total} disk operations; {compared} images compared; answers: {not_done} not done, \
         {unknown} outcome unknown"
    );
    // Both failure answers happened, so both rules above were exercised.
    assert!(not_done > 0 && unknown > 0, "{not_done} {unknown}");
    assert_eq!(compared, 3 * 3 * (total + 16));
}

#[tokio::test]
async fn a_flipped_bit_in_the_log_is_quarantined_and_the_rest_loads() {
    let fs = FaultFs::new();
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    let o = |n: u16| Key::Outbound(NonZeroU16::new(n).unwrap());
    for n in 1..=3 {
        store
            .put(o(n), EntryKind::Publish, Bytes::from(vec![n as u8; 30]))
            .await
            .unwrap();
    }
    store.close().await;
    let log_len = fs.file_len("log").unwrap();
    // Damage the middle record's payload.
    fs.flip_bit("log", log_len / 2, 3);
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    let got: Vec<Key> = contents(&store).await.into_iter().map(|e| e.0).collect();
    assert_eq!(got, vec![o(1), o(3)]);
    let q = store.quarantined();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key(), None);
    assert!(q[0].len() > 30);
    store.close().await;
    // The corrupt stretch was set aside and the log rewritten: the next open is clean.
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    assert!(store.quarantined().is_empty());
    assert_eq!(contents(&store).await.len(), 2);
    store.close().await;
}

#[tokio::test]
async fn compaction_keeps_order_and_shrinks_the_log() {
    let fs = FaultFs::new();
    let store = open_on(&fs, small_logs()).await.unwrap();
    let o = |n: u16| Key::Outbound(NonZeroU16::new(n).unwrap());
    store
        .put(o(100), EntryKind::Publish, Bytes::from_static(b"first"))
        .await
        .unwrap();
    for n in 1..=50 {
        store
            .put(o(n), EntryKind::Publish, Bytes::from(vec![1; 40]))
            .await
            .unwrap();
        store.delete(o(n)).await.unwrap();
    }
    store
        .put(o(100), EntryKind::PubRel, Bytes::from_static(b"second"))
        .await
        .unwrap();
    store
        .put(o(7), EntryKind::Publish, Bytes::from_static(b"last"))
        .await
        .unwrap();
    assert!(store.stats().compactions > 0);
    store.close().await;
    assert!(fs.file_len("log").unwrap() < 1000);
    let store = open_on(&fs, small_logs()).await.unwrap();
    assert_eq!(
        contents(&store).await,
        vec![
            (o(100), EntryKind::PubRel, Bytes::from_static(b"second")),
            (o(7), EntryKind::Publish, Bytes::from_static(b"last")),
        ]
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_filled_tail_loses_no_acknowledged_operation() {
    // When the file size reaches the disk before the data, the unacknowledged tail reads as
    // zeros after a crash. A record whose header got written but whose body did not is then
    // whole-but-wrong, which the replay classifies as damage and quarantines (it cannot tell
    // it from a damaged acknowledged record, and keeping the bytes is the safe side). What
    // matters: only unacknowledged bytes are set aside, and the state is still a model state.
    let (fs, _) = run_until_failure(u64::MAX, None).await;
    let total = fs.ops_done();
    let mut set_aside = 0;
    for n in 0..=total {
        let (fs, answers) = run_until_failure(n, Some(0)).await;
        let image = fs.crash_image(CrashKind::ZeroFilled);
        let store = open_on(&image, small_logs())
            .await
            .unwrap_or_else(|e| panic!("n = {n}: reopen failed: {e}"));
        let got = contents(&store).await;
        let states = acceptable(&answers);
        assert!(
            states.contains(&got),
            "n = {n}:\n got        {got:?}\n acceptable {states:?}"
        );
        set_aside += store
            .quarantined()
            .iter()
            .filter(|q| q.key().is_none())
            .count();
        store.close().await;
    }
    // The workload does reach the whole-header-zero-body case.
    assert!(set_aside > 0);
}

fn out(n: u16) -> Key {
    Key::Outbound(NonZeroU16::new(n).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_show_a_batch_only_once_it_is_durable_and_never_a_failed_one() {
    let fs = FaultFs::new();
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    let v = Bytes::from_static(b"v");
    store
        .put(out(1), EntryKind::Publish, v.clone())
        .await
        .unwrap();

    // A batch that will succeed, held inside its fsync: not visible yet.
    fs.hold_next_sync();
    let put = store.put(out(2), EntryKind::Publish, v.clone());
    let held = fs.clone();
    tokio::task::spawn_blocking(move || held.wait_held())
        .await
        .unwrap();
    let keys = |s: &FileStore| {
        let s = s.clone();
        async move {
            contents(&s)
                .await
                .into_iter()
                .map(|e| e.0)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(keys(&store).await, vec![out(1)]);
    fs.release();
    put.await.unwrap();
    assert_eq!(keys(&store).await, vec![out(1), out(2)]);

    // A batch whose fsync fails (the cut-back then succeeds): never visible, and answered
    // "not done".
    fs.hold_next_sync();
    fs.fail_at(1, None); // the append succeeds, its fsync fails
    let put = store.put(out(3), EntryKind::Publish, v.clone());
    let held = fs.clone();
    tokio::task::spawn_blocking(move || held.wait_held())
        .await
        .unwrap();
    assert_eq!(keys(&store).await, vec![out(1), out(2)]);
    fs.release();
    let err = put.await.unwrap_err();
    assert!(!err.is_outcome_unknown(), "{err}");
    assert!(matches!(store.list().await, Err(Error::StoreFailed)));
    store.close().await;
    let store = open_on(
        &fs.crash_image(CrashKind::Everything),
        FileStoreOptions::new(),
    )
    .await
    .unwrap();
    assert_eq!(keys(&store).await, vec![out(1), out(2)]);
    store.close().await;
}

#[tokio::test]
async fn a_failed_quarantine_reports_nothing_and_keeps_its_entry() {
    let fs = FaultFs::new();
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    let v = Bytes::from_static(b"unusable");
    store
        .put(out(1), EntryKind::Publish, v.clone())
        .await
        .unwrap();
    // write quarantine file, fsync it, fsync the directory, append, fsync the log: the last
    // fails, the cut-back succeeds.
    fs.fail_at(4, None);
    let err = store.quarantine(out(1), "test".into()).await.unwrap_err();
    assert!(!err.is_outcome_unknown(), "{err}");
    assert!(store.quarantined().is_empty(), "{:?}", store.quarantined());
    store.close().await;
    for kind in [CrashKind::SyncedOnly, CrashKind::Everything] {
        let image = fs.crash_image(kind);
        let store = open_on(&image, FileStoreOptions::new()).await.unwrap();
        assert_eq!(
            contents(&store).await,
            vec![(out(1), EntryKind::Publish, v.clone())]
        );
        store.close().await;
    }

    // The same failure with the cut-back failing too: outcome unknown, and then the bytes are
    // reported where they were saved, whichever way the log went.
    let fs = FaultFs::new();
    let store = open_on(&fs, FileStoreOptions::new()).await.unwrap();
    store
        .put(out(1), EntryKind::Publish, v.clone())
        .await
        .unwrap();
    fs.fail_at(4, Some(0));
    let err = store.quarantine(out(1), "test".into()).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    let q = store.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(quarantine_files(&fs), vec![v.to_vec()]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_the_last_record_is_never_a_silent_loss() {
    // The newest record is the one a damaged or torn end of the log takes with it. Flip each
    // of its bits in turn, and cut it at each length: after reopening, the entry is either
    // back whole, or the bytes are in a quarantine file that `quarantined()` reports.
    let base = FaultFs::new();
    let store = open_on(&base, FileStoreOptions::new()).await.unwrap();
    let newest = Bytes::from_static(b"newest publish");
    store
        .put(out(1), EntryKind::Publish, Bytes::from(vec![1; 20]))
        .await
        .unwrap();
    store
        .put(out(2), EntryKind::Publish, newest.clone())
        .await
        .unwrap();
    store.close().await;
    let end = base.file_len("log").unwrap();
    let start = end - (12 + 13 + newest.len());

    let mut variants = Vec::new();
    for byte in start..end {
        for bit in 0..8 {
            let image = base.crash_image(CrashKind::SyncedOnly);
            image.flip_bit("log", byte, bit);
            variants.push((format!("byte {byte} bit {bit}"), image));
        }
    }
    let flips = variants.len();
    for len in start + 1..end {
        let image = base.crash_image(CrashKind::SyncedOnly);
        image.cut("log", len);
        variants.push((format!("cut at {len}"), image));
    }
    let (mut silent_flips, mut silent_cuts) = (0, 0);
    for (i, (what, image)) in variants.iter().enumerate() {
        let damaged = image.clone().read("log").unwrap().unwrap()[start..].to_vec();
        let store = open_on(image, FileStoreOptions::new()).await.unwrap();
        let present =
            contents(&store)
                .await
                .contains(&(out(2), EntryKind::Publish, newest.clone()));
        let saved = store.quarantined().iter().any(|q| {
            let name = q
                .saved_to()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str());
            name.and_then(|n| image.clone().read(n).ok().flatten()) == Some(damaged.clone())
                && q.len() == damaged.len()
        });
        if !present && !saved {
            eprintln!("{what}: the last record vanished with nothing quarantined");
            if i < flips {
                silent_flips += 1;
            } else {
                silent_cuts += 1;
            }
        }
        store.close().await;
    }
    let cuts = variants.len() - flips;
    assert_eq!(
        (silent_flips, silent_cuts),
        (0, 0),
        "{silent_flips} of {flips} bit flips and {silent_cuts} of {cuts} cuts lost the last record silently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_that_fails_after_setting_damage_aside_leaves_it_reported_next_time() {
    // Opening changes files (it truncates an unparseable tail, or rewrites the log without a
    // damaged stretch) after saving the bytes. An open that fails after such a change was
    // answered with an error, so nobody saw its reports: the next open, which finds a clean
    // log, must report the saved bytes instead.
    let base = FaultFs::new();
    let store = open_on(&base, FileStoreOptions::new()).await.unwrap();
    for n in 1..=2 {
        store
            .put(out(n), EntryKind::Publish, Bytes::from(vec![n as u8; 20]))
            .await
            .unwrap();
    }
    store.close().await;
    let end = base.file_len("log").unwrap();
    let first = 12 + 13 + 20;
    let torn = base.crash_image(CrashKind::SyncedOnly);
    torn.cut("log", end - 7);
    let flipped = base.crash_image(CrashKind::SyncedOnly);
    flipped.flip_bit("log", first / 2, 0);
    for (what, damaged_disk, range) in [
        ("torn tail", torn, first..end - 7),
        ("damaged first record", flipped, 0..first),
    ] {
        let damaged = damaged_disk.clone().read("log").unwrap().unwrap()[range].to_vec();
        let probe = damaged_disk.crash_image(CrashKind::SyncedOnly);
        open_on(&probe, FileStoreOptions::new())
            .await
            .unwrap()
            .close()
            .await;
        let open_ops = probe.ops_done();
        for k in 0..open_ops {
            for then_ok in SCHEDULES {
                let disk = damaged_disk.crash_image(CrashKind::SyncedOnly);
                disk.fail_at(k, then_ok);
                let first_open = open_on(&disk, FileStoreOptions::new()).await;
                let reported = |s: &FileStore, image: &FaultFs| {
                    s.quarantined().iter().any(|q| {
                        let name = q
                            .saved_to()
                            .and_then(|p| p.file_name())
                            .and_then(|n| n.to_str());
                        name.and_then(|n| image.clone().read(n).ok().flatten())
                            == Some(damaged.clone())
                    })
                };
                if let Ok(s) = first_open {
                    assert!(
                        reported(&s, &disk),
                        "{what}, k = {k}: {:?}",
                        s.quarantined()
                    );
                    s.close().await;
                    continue;
                }
                for kind in [CrashKind::SyncedOnly, CrashKind::Everything] {
                    let image = disk.crash_image(kind);
                    let s = open_on(&image, FileStoreOptions::new()).await.unwrap();
                    assert!(
                        reported(&s, &image),
                        "{what}, k = {k}, then_ok = {then_ok:?}, {kind:?}: the bytes set aside by \
                         the failed open are not reported: {:?}",
                        s.quarantined()
                    );
                    s.close().await;
                }
            }
        }
    }
}
