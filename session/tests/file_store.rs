//! FileStore behaviour beyond the shared conformance suite: persistence, identity, corruption,
//! group commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::num::NonZeroU16;

use bytes::Bytes;
use paho_session::{EntryKind, Error, FileStore, FileStoreOptions, Key, Store, StoreIdentity};

fn out(n: u16) -> Key {
    Key::Outbound(NonZeroU16::new(n).unwrap())
}

fn ident() -> StoreIdentity {
    StoreIdentity::new("mqtt://broker", "client-a").unwrap()
}

async fn contents(s: &FileStore) -> Vec<(Key, EntryKind, Bytes)> {
    s.list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key(), e.kind(), e.value().clone()))
        .collect()
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_reopen_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    for n in [9, 4, 7, 1] {
        s.put(out(n), EntryKind::Publish, Bytes::from(vec![n as u8; 10]))
            .await
            .unwrap();
    }
    s.put(out(9), EntryKind::PubRel, Bytes::from_static(b"rel"))
        .await
        .unwrap();
    s.delete(out(7)).await.unwrap();
    let before = contents(&s).await;
    s.close().await;
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    assert_eq!(contents(&s).await, before);
    assert_eq!(
        before.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![out(9), out(4), out(1)]
    );
    // Sequence numbers continue after reopen: a new entry sorts last.
    s.put(out(2), EntryKind::Publish, Bytes::new())
        .await
        .unwrap();
    assert_eq!(contents(&s).await.last().unwrap().0, out(2));
    s.close().await;
}

#[tokio::test]
async fn order_survives_file_times_being_meaningless() {
    // Order comes from persisted sequence numbers: touching files changes nothing.
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    for n in [3, 2, 1] {
        s.put(out(n), EntryKind::Publish, Bytes::new())
            .await
            .unwrap();
    }
    s.close().await;
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(e.unwrap().path())
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    }
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let order: Vec<Key> = contents(&s).await.into_iter().map(|e| e.0).collect();
    assert_eq!(order, vec![out(3), out(2), out(1)]);
    s.close().await;
}

#[tokio::test]
async fn refuses_a_directory_of_another_server_or_client() {
    let tmp = tempfile::tempdir().unwrap();
    FileStore::open(tmp.path(), ident())
        .await
        .unwrap()
        .close()
        .await;
    let other_client = StoreIdentity::new("mqtt://broker", "client-b").unwrap();
    match FileStore::open(tmp.path(), other_client).await {
        Err(Error::IdentityMismatch {
            expected_client,
            found_client,
            ..
        }) => {
            assert_eq!(expected_client, "client-b");
            assert_eq!(found_client, "client-a");
        }
        other => panic!("{other:?}"),
    }
    let other_server = StoreIdentity::new("mqtts://elsewhere", "client-a").unwrap();
    let err = FileStore::open(tmp.path(), other_server).await.unwrap_err();
    assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
    assert!(err.to_string().contains("elsewhere"));
    // The rightful owner still opens it.
    FileStore::open(tmp.path(), ident())
        .await
        .unwrap()
        .close()
        .await;
}

#[tokio::test]
async fn a_damaged_identity_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    FileStore::open(tmp.path(), ident())
        .await
        .unwrap()
        .close()
        .await;
    let meta = tmp.path().join("meta");
    let mut b = std::fs::read(&meta).unwrap();
    let last = b.len() - 6;
    b[last] ^= 0x40;
    std::fs::write(&meta, b).unwrap();
    let err = FileStore::open(tmp.path(), ident()).await.unwrap_err();
    assert!(matches!(err, Error::CorruptMeta { .. }), "{err}");
    std::fs::remove_file(&meta).unwrap();
    let err = FileStore::open(tmp.path(), ident()).await.unwrap_err();
    assert!(matches!(err, Error::CorruptMeta { .. }), "{err}");
}

#[tokio::test]
async fn one_open_store_per_directory_in_a_process() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let err = FileStore::open(tmp.path(), ident()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyOpen(_)), "{err}");
    drop(s);
    // Once every handle is gone the directory can be opened again (the open waits for the old
    // writer to finish instead of failing).
    FileStore::open(tmp.path(), ident())
        .await
        .unwrap()
        .close()
        .await;
}

#[tokio::test]
async fn corrupt_log_stretch_is_quarantined_and_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    for n in 1..=3 {
        s.put(out(n), EntryKind::Publish, Bytes::from(vec![b'x'; 50]))
            .await
            .unwrap();
    }
    s.close().await;
    let log = tmp.path().join("log");
    let mut b = std::fs::read(&log).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xFF;
    std::fs::write(&log, b).unwrap();

    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let keys: Vec<Key> = contents(&s).await.into_iter().map(|e| e.0).collect();
    assert_eq!(keys, vec![out(1), out(3)]);
    let q = s.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    let saved = std::fs::read(q[0].saved_to().unwrap()).unwrap();
    assert_eq!(saved.len(), q[0].len());
    s.close().await;
}

#[tokio::test]
async fn torn_tail_is_quarantined_then_truncated_and_writes_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    s.put(out(1), EntryKind::Publish, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    s.close().await;
    // Half a record, as a crash in the middle of an append leaves it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(tmp.path().join("log"))
        .unwrap();
    let tail = [0x52, 0x4C, 0x53, 0x50, 200, 0, 0, 0, 1, 2];
    f.write_all(&tail).unwrap();
    drop(f);
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    // It cannot be told from damage to the newest record, so its bytes are kept and reported.
    let q = s.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].key(), None);
    assert!(
        q[0].reason().contains("end of the log"),
        "{}",
        q[0].reason()
    );
    assert_eq!(std::fs::read(q[0].saved_to().unwrap()).unwrap(), tail);
    s.put(out(2), EntryKind::Publish, Bytes::from_static(b"new"))
        .await
        .unwrap();
    s.close().await;
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let keys: Vec<Key> = contents(&s).await.into_iter().map(|e| e.0).collect();
    assert_eq!(keys, vec![out(1), out(2)]);
    // The tail was cut off after it was saved: it is not found (or reported) again.
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let start = s.stats();
    let mut tasks = Vec::new();
    for t in 0..64u16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u16 {
                let k = out(t * 20 + i + 1);
                s.put(k, EntryKind::Publish, Bytes::from_static(b"payload"))
                    .await
                    .unwrap();
                s.delete(k).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = s.stats();
    let ops = end.operations - start.operations;
    let fsyncs = end.fsyncs - start.fsyncs;
    assert_eq!(ops, 64 * 20 * 2);
    // Without group commit there would be one fsync per operation.
    assert!(fsyncs * 2 < ops, "{fsyncs} fsyncs for {ops} ops");
    assert!(end.batches - start.batches < ops);
    s.close().await;
}

#[tokio::test]
async fn options_are_validated() {
    assert!(matches!(
        FileStoreOptions::new().compact_min_bytes(0),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        FileStoreOptions::new().max_batch(0),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        StoreIdentity::new("", "c"),
        Err(Error::InvalidConfig(_))
    ));
    assert!(matches!(
        StoreIdentity::new("s", ""),
        Err(Error::InvalidConfig(_))
    ));
}

/// A minimal executor: park the thread until woken. No tokio anywhere.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn works_without_tokio() {
    let tmp = tempfile::tempdir().unwrap();
    let s = block_on(FileStore::open(tmp.path(), ident())).unwrap();
    block_on(s.put(out(1), EntryKind::Publish, Bytes::from_static(b"v"))).unwrap();
    block_on(s.close());
    let s = block_on(FileStore::open(tmp.path(), ident())).unwrap();
    assert_eq!(block_on(s.list()).unwrap().len(), 1);
    block_on(s.close());
}

/// Descriptors of this process open on files inside `dir`.
#[cfg(target_os = "linux")]
fn fds_inside(dir: &std::path::Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn quarantining_does_not_hold_a_descriptor_per_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    for n in 1..=40 {
        s.put(out(n), EntryKind::Publish, Bytes::from_static(b"x"))
            .await
            .unwrap();
        s.quarantine(out(n), "test".into()).await.unwrap();
    }
    assert_eq!(s.quarantined().len(), 40);
    // The log and the lock file, nothing per quarantine file.
    let open = fds_inside(tmp.path());
    assert!(
        open <= 2,
        "{open} descriptors open inside the store directory"
    );
    s.close().await;
}

#[tokio::test]
async fn dropping_the_store_with_operations_in_flight_answers_them_all() {
    // The last handle goes while 200 operations are still queued for the writer thread: every
    // future still resolves (the writer drains its queue before it stops), and all of them
    // are on disk.
    let tmp = tempfile::tempdir().unwrap();
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    let pending: Vec<_> = (1..=200u16)
        .map(|n| s.put(out(n), EntryKind::Publish, Bytes::from(vec![n as u8; 10])))
        .collect();
    drop(s);
    for p in pending {
        p.await.unwrap();
    }
    let s = FileStore::open(tmp.path(), ident()).await.unwrap();
    assert_eq!(s.list().await.unwrap().len(), 200);
    s.close().await;
}
