//! A store that fails under a live connection: every waiting publish hears which of the two
//! classes of error it is in. "Not stored" may be published again; "stored, outcome unknown"
//! must not be, since a reopened store resends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use paho::packets::{ConnAck, Packet, QoS};
use paho::session::{
    EntryKind, Error as SessionError, Key, MemoryStore, QuarantineReport, Session, SessionConfig,
    Store, StoredEntry,
};
use paho::{Client, Error, SessionHandle};

type Fut<T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send>>;

/// A memory store whose puts start failing on command: the `n`th put from then on fails
/// ("not done": nothing applied), and every operation after it too (sticky, like a file
/// store after a failed fsync), or, with `unknown`, it is applied and then reported as
/// outcome unknown.
#[derive(Debug, Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    puts_left: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    unknown: Arc<AtomicBool>,
}

impl Flaky {
    fn fail_after_puts(&self, n: usize, unknown: bool) {
        self.puts_left.store(n, Ordering::SeqCst);
        self.unknown.store(unknown, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Store for Flaky {
    fn put(
        &self,
        key: Key,
        kind: EntryKind,
        value: Bytes,
    ) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let fut: Fut<()> = if self.failed() {
            Box::pin(async { Err(SessionError::StoreFailed) })
        } else if self.armed.load(Ordering::SeqCst)
            && self.puts_left.fetch_sub(1, Ordering::SeqCst) == 0
        {
            self.failed.store(true, Ordering::SeqCst);
            if self.unknown.load(Ordering::SeqCst) {
                let applied = self.inner.put(key, kind, value);
                Box::pin(async move {
                    applied.await?;
                    Err(SessionError::outcome_unknown(SessionError::StoreFailed))
                })
            } else {
                Box::pin(async { Err(SessionError::StoreFailed) })
            }
        } else {
            Box::pin(self.inner.put(key, kind, value))
        };
        fut
    }

    fn get(
        &self,
        key: Key,
    ) -> impl Future<Output = Result<Option<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.get(key)
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        let fut: Fut<()> = if self.failed() {
            Box::pin(async { Err(SessionError::StoreFailed) })
        } else {
            Box::pin(self.inner.delete(key))
        };
        fut
    }

    fn list(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredEntry>, SessionError>> + Send + 'static {
        self.inner.list()
    }

    fn reset(&self) -> impl Future<Output = Result<(), SessionError>> + Send + 'static {
        self.inner.reset()
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

async fn connect(store: Flaky) -> (Client, paho::Incoming, Peer, SessionHandle<Flaky>) {
    let session = SessionHandle::new(
        Session::new(SessionConfig::new().session_expiry_interval(3600)),
        store,
    );
    let (io, mut peer) = pipe();
    let server = tokio::spawn(async move {
        peer.accept(ConnAck::default()).await;
        peer
    });
    let opts = options().clean_start(false).build().unwrap();
    let (c, i) = Client::connect(io, opts, session.clone()).await.unwrap();
    (c, i, server.await.unwrap(), session)
}

#[tokio::test(start_paused = true)]
async fn a_failed_put_is_not_stored_and_earlier_stored_publishes_are_outcome_unknown() {
    within(LIMIT, async {
        let store = Flaky::default();
        let (client, _incoming, mut peer, _session) = connect(store.clone()).await;
        let earlier = client.start_publish(publish("t", QoS::AtLeastOnce, "stored"));
        assert!(matches!(peer.expect().await, Packet::Publish(_)));
        store.fail_after_puts(0, false);
        let failed = client.start_publish(publish("t", QoS::ExactlyOnce, "put failed"));
        let e = failed.await.unwrap_err();
        assert!(
            !e.is_outcome_unknown(),
            "its put failed, it is not stored: {e}"
        );
        let e = earlier.await.unwrap_err();
        assert!(
            e.is_outcome_unknown(),
            "stored and sent before the failure, it is resent on reopen: {e}"
        );
        assert!(store.inner.list().await.unwrap().len() == 1);
        // The connection closed with 0x80, and the failed PUBLISH never reached the wire.
        let rest = peer.until_closed().await;
        assert!(
            !rest.iter().any(|p| matches!(p, Packet::Publish(_))),
            "{rest:?}"
        );
        assert!(matches!(client.closed().await, Err(Error::Session(_))));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_put_whose_outcome_is_unknown_is_reported_so() {
    within(LIMIT, async {
        let store = Flaky::default();
        let (client, _incoming, _peer, _session) = connect(store.clone()).await;
        store.fail_after_puts(0, true);
        let h = client.start_publish(publish("t", QoS::ExactlyOnce, "maybe"));
        let e = h.await.unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        // It was in fact applied: a reopen would resend it.
        assert_eq!(store.inner.list().await.unwrap().len(), 1);
    })
    .await
}
