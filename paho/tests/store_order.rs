//! The driver contract with the store: nothing goes on the wire before the store operations
//! it depends on have completed, and a failing store closes the connection and fails the
//! waiters instead of sending what was not stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use paho::packets::{ConnAck, Packet, PubRec, PubRel, QoS};
use paho::session::{
    EntryKind, Error as SessionError, Key, MemoryStore, QuarantineReport, Session, SessionConfig,
    Store, StoredEntry,
};
use paho::{Client, Error, SessionHandle};
use tokio::sync::watch;

/// A memory store whose writes complete only when the gate is open, and fail when told to.
#[derive(Debug, Clone)]
struct Gated {
    inner: MemoryStore,
    open: watch::Receiver<bool>,
    fail: Arc<AtomicBool>,
}

impl Gated {
    fn wait<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, SessionError>> + Send + 'static,
    ) -> impl Future<Output = Result<T, SessionError>> + Send + 'static {
        let mut open = self.open.clone();
        let fail = self.fail.load(Ordering::SeqCst);
        async move {
            if fail {
                return Err(SessionError::StoreFailed);
            }
            let _ = open.wait_for(|o| *o).await;
            f.await
        }
    }
}

impl Store for Gated {
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.wait(self.inner.put(key, kind, value))
    }
    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.get(key)
    }
    fn delete(&self, key: Key) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.wait(self.inner.delete(key))
    }
    fn list(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.list()
    }
    fn reset(&self) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.wait(self.inner.reset())
    }
    fn quarantine(
        &self,
        key: Key,
        reason: String,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.inner.quarantine(key, reason)
    }
    fn quarantined(&self) -> Vec<QuarantineReport> {
        self.inner.quarantined()
    }
}

async fn connect_gated(store: Gated) -> (Client, paho::Incoming, Peer, SessionHandle<Gated>) {
    let session = SessionHandle::new(
        Session::new(SessionConfig::new().session_expiry_interval(60)),
        store,
    );
    let (io, mut peer) = pipe();
    let server = tokio::spawn(async move {
        peer.accept(ConnAck::default()).await;
        peer
    });
    let (c, i) = Client::connect(io, options().build().unwrap(), session.clone())
        .await
        .unwrap();
    (c, i, server.await.unwrap(), session)
}

async fn nothing_within(peer: &mut Peer, d: Duration) -> bool {
    tokio::time::timeout(d, peer.recv()).await.is_err()
}

#[tokio::test(start_paused = true)]
async fn a_publish_is_on_the_wire_only_after_it_was_stored() {
    within(LIMIT, async {
        let (open_tx, open) = watch::channel(false);
        let store = Gated {
            inner: MemoryStore::new(),
            open,
            fail: Arc::new(AtomicBool::new(false)),
        };
        let (client, _incoming, mut peer, _session) = connect_gated(store.clone()).await;
        let h = client.start_publish(publish("a", QoS::ExactlyOnce, "1"));
        // The store has not confirmed the PUBLISH: nothing is sent.
        assert!(nothing_within(&mut peer, Duration::from_secs(10)).await);
        assert_eq!(
            store.inner.list().await.unwrap().len(),
            1,
            "put was issued at once"
        );
        open_tx.send_replace(true);
        let p = peer.expect_publish().await;
        assert_eq!(store.inner.list().await.unwrap().len(), 1);
        // The PUBREL likewise waits for the PUBLISH to be replaced by it in the store.
        open_tx.send_replace(false);
        let id = p.packet_id.unwrap();
        peer.send(PubRec::new(id)).await;
        assert!(nothing_within(&mut peer, Duration::from_secs(10)).await);
        open_tx.send_replace(true);
        assert_eq!(peer.expect().await, Packet::PubRel(PubRel::new(id)));
        peer.send(paho::packets::PubComp::new(id)).await;
        assert!(h.await.unwrap().is_success());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_closes_the_connection_and_fails_the_waiters() {
    within(LIMIT, async {
        let (_open_tx, open) = watch::channel(true);
        let fail = Arc::new(AtomicBool::new(false));
        let store = Gated {
            inner: MemoryStore::new(),
            open,
            fail: Arc::clone(&fail),
        };
        let (client, _incoming, mut peer, _session) = connect_gated(store).await;
        fail.store(true, Ordering::SeqCst);
        let h = client.start_publish(publish("a", QoS::AtLeastOnce, "never sent"));
        let sent = peer.until_closed().await;
        // The PUBLISH that could not be stored never reached the wire; the server hears why.
        assert!(
            !sent.iter().any(|p| matches!(p, Packet::Publish(_))),
            "{sent:?}"
        );
        assert!(
            matches!(sent.last(), Some(Packet::Disconnect(d)) if d.reason_code.as_u8() == 0x80)
        );
        assert!(matches!(
            h.await,
            Err(Error::Session(SessionError::StoreFailed))
        ));
        assert!(matches!(
            client.closed().await,
            Err(Error::Session(SessionError::StoreFailed))
        ));
    })
    .await
}
