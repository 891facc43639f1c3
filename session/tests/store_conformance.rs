//! One conformance suite, run against every store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU16;

use bytes::Bytes;
use paho_session::{EntryKind, Error, FileStore, Key, MemoryStore, Store, StoreIdentity};

fn id(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn out(n: u16) -> Key {
    Key::Outbound(id(n))
}

fn inb(n: u16) -> Key {
    Key::Inbound(id(n))
}

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn keys<S: Store>(s: &S) -> Vec<(Key, EntryKind, Bytes)> {
    s.list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key(), e.kind(), e.value().clone()))
        .collect()
}

/// A store under test plus whatever keeps it alive (a temporary directory).
trait Fixture {
    type S: Store;
    fn store(&self) -> &Self::S;
}

struct Mem(MemoryStore);
impl Fixture for Mem {
    type S = MemoryStore;
    fn store(&self) -> &MemoryStore {
        &self.0
    }
}

struct File(FileStore, #[allow(dead_code)] tempfile::TempDir);
impl Fixture for File {
    type S = FileStore;
    fn store(&self) -> &FileStore {
        &self.0
    }
}

async fn memory() -> Mem {
    Mem(MemoryStore::new())
}

async fn file() -> File {
    let dir = tempfile::tempdir().unwrap();
    let ident = StoreIdentity::new("mqtt://test", "conformance").unwrap();
    File(
        FileStore::open(dir.path().join("s"), ident).await.unwrap(),
        dir,
    )
}

async fn put_then_get<S: Store>(s: &S) {
    assert_eq!(s.get(out(1)).await.unwrap(), None);
    s.put(out(1), EntryKind::Publish, val("a")).await.unwrap();
    let e = s.get(out(1)).await.unwrap().unwrap();
    assert_eq!(e.key(), out(1));
    assert_eq!(e.kind(), EntryKind::Publish);
    assert_eq!(e.value(), &val("a"));
}

async fn list_is_in_put_order_not_id_order<S: Store>(s: &S) {
    for n in [500, 3, 65535, 1, 42] {
        s.put(out(n), EntryKind::Publish, val(&n.to_string()))
            .await
            .unwrap();
    }
    let order: Vec<Key> = keys(s).await.into_iter().map(|k| k.0).collect();
    assert_eq!(order, vec![out(500), out(3), out(65535), out(1), out(42)]);
    let seqs: Vec<u64> = s.list().await.unwrap().iter().map(|e| e.seq()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

async fn replacement_keeps_send_position<S: Store>(s: &S) {
    for n in 1..=3 {
        s.put(out(n), EntryKind::Publish, val("pub")).await.unwrap();
    }
    s.put(out(1), EntryKind::PubRel, val("rel")).await.unwrap();
    assert_eq!(
        keys(s).await,
        vec![
            (out(1), EntryKind::PubRel, val("rel")),
            (out(2), EntryKind::Publish, val("pub")),
            (out(3), EntryKind::Publish, val("pub")),
        ]
    );
}

async fn delete_removes_and_absent_delete_succeeds<S: Store>(s: &S) {
    s.put(out(1), EntryKind::Publish, val("a")).await.unwrap();
    s.put(out(2), EntryKind::Publish, val("b")).await.unwrap();
    s.delete(out(1)).await.unwrap();
    s.delete(out(9)).await.unwrap();
    assert_eq!(keys(s).await, vec![(out(2), EntryKind::Publish, val("b"))]);
    // A deleted id that is put again goes to the end: it is a new exchange.
    s.put(out(1), EntryKind::Publish, val("c")).await.unwrap();
    let order: Vec<Key> = keys(s).await.into_iter().map(|k| k.0).collect();
    assert_eq!(order, vec![out(2), out(1)]);
}

async fn directions_are_separate_id_spaces<S: Store>(s: &S) {
    s.put(out(7), EntryKind::Publish, val("o")).await.unwrap();
    s.put(inb(7), EntryKind::PubRec, val("i")).await.unwrap();
    s.delete(out(7)).await.unwrap();
    assert_eq!(keys(s).await, vec![(inb(7), EntryKind::PubRec, val("i"))]);
}

async fn kind_must_fit_key<S: Store>(s: &S) {
    let e = s.put(out(1), EntryKind::PubRec, val("x")).await;
    assert!(matches!(e, Err(Error::KindMismatch { .. })), "{e:?}");
    let e = s.put(inb(1), EntryKind::Publish, val("x")).await;
    assert!(matches!(e, Err(Error::KindMismatch { .. })), "{e:?}");
    assert!(keys(s).await.is_empty());
}

async fn reset_clears_and_later_puts_still_order<S: Store>(s: &S) {
    s.put(out(1), EntryKind::Publish, val("a")).await.unwrap();
    s.put(inb(2), EntryKind::PubRec, val("b")).await.unwrap();
    s.reset().await.unwrap();
    assert!(keys(s).await.is_empty());
    s.put(out(9), EntryKind::Publish, val("c")).await.unwrap();
    s.put(out(1), EntryKind::Publish, val("d")).await.unwrap();
    let order: Vec<Key> = keys(s).await.into_iter().map(|k| k.0).collect();
    assert_eq!(order, vec![out(9), out(1)]);
}

async fn quarantine_removes_and_reports<S: Store>(s: &S) {
    s.put(out(1), EntryKind::Publish, val("bad")).await.unwrap();
    s.put(out(2), EntryKind::Publish, val("good"))
        .await
        .unwrap();
    s.quarantine(out(1), "does not decode".into())
        .await
        .unwrap();
    s.quarantine(out(3), "absent".into()).await.unwrap();
    assert_eq!(
        keys(s).await,
        vec![(out(2), EntryKind::Publish, val("good"))]
    );
    let q = s.quarantined();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key(), Some(out(1)));
    assert_eq!(q[0].reason(), "does not decode");
    assert_eq!(q[0].len(), 3);
    if let Some(path) = q[0].saved_to() {
        assert_eq!(std::fs::read(path).unwrap(), b"bad");
    }
}

async fn operations_apply_in_call_order<S: Store>(s: &S) {
    // Issued back to back, awaited together: call order decides.
    let a = s.put(out(1), EntryKind::Publish, val("1"));
    let b = s.put(out(1), EntryKind::PubRel, val("2"));
    let c = s.delete(out(1));
    let d = s.put(out(2), EntryKind::Publish, val("3"));
    let (a, b, c, d) = (a.await, b.await, c.await, d.await);
    a.unwrap();
    b.unwrap();
    c.unwrap();
    d.unwrap();
    assert_eq!(keys(s).await, vec![(out(2), EntryKind::Publish, val("3"))]);
}

async fn concurrent_writers_all_land<S: Store + Clone>(s: &S) {
    let mut tasks = Vec::new();
    for t in 0..16u16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u16 {
                let n = t * 50 + i + 1;
                s.put(out(n), EntryKind::Publish, val(&n.to_string()))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let list = keys(s).await;
    assert_eq!(list.len(), 800);
    for (k, _, v) in list {
        assert_eq!(v, val(&k.packet_id().to_string()));
    }
}

async fn oversized_value_refused<S: Store>(s: &S) {
    let big = Bytes::from(vec![0u8; paho_session::MAX_VALUE_LEN + 1]);
    let e = s.put(out(1), EntryKind::Publish, big).await;
    assert!(matches!(e, Err(Error::ValueTooLarge { .. })), "{e:?}");
}

macro_rules! conformance {
    ($store:ident: $($case:ident),* $(,)?) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let f = super::$store().await;
                    super::$case(super::Fixture::store(&f)).await;
                }
            )*
        }
    };
}

conformance!(memory: put_then_get, list_is_in_put_order_not_id_order, replacement_keeps_send_position,
    delete_removes_and_absent_delete_succeeds, directions_are_separate_id_spaces, kind_must_fit_key,
    reset_clears_and_later_puts_still_order, quarantine_removes_and_reports,
    operations_apply_in_call_order, concurrent_writers_all_land, oversized_value_refused);
conformance!(file: put_then_get, list_is_in_put_order_not_id_order, replacement_keeps_send_position,
    delete_removes_and_absent_delete_succeeds, directions_are_separate_id_spaces, kind_must_fit_key,
    reset_clears_and_later_puts_still_order, quarantine_removes_and_reports,
    operations_apply_in_call_order, concurrent_writers_all_land, oversized_value_refused);

/// The driver moves these between tasks and threads.
#[test]
fn public_types_are_send_and_sync_where_the_driver_needs_it() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    fn send_future<F: std::future::Future + Send + 'static>(_: F) {}
    send::<paho_session::Session>();
    send::<paho_session::PublishCompletion>();
    send::<paho_session::SubscribeCompletion>();
    send::<FileStore>();
    sync::<FileStore>();
    sync::<MemoryStore>();
    send::<paho_session::Error>();
    sync::<paho_session::Error>();
    let s = MemoryStore::new();
    send_future(s.put(out(1), EntryKind::Publish, Bytes::new()));
    send_future(s.list());
}
