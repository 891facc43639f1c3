//! A store that fails under a live connection: every waiting publish hears which of the two
//! classes of error it is in. "Not stored" may be published again; "stored, outcome unknown"
//! must not be, since a reopened store resends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::stores::Flaky;
use common::*;
use paho::packets::{ConnAck, Packet, QoS};
use paho::session::{Session, SessionConfig, Store};
use paho::{Client, Error, SessionHandle};

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

/// A store the driver awaits (`false`) or applies in place (`true`, as the memory store).
fn flaky(immediate: bool) -> Flaky {
    if immediate {
        Flaky::immediate()
    } else {
        Flaky::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_put_is_not_stored_and_earlier_stored_publishes_are_outcome_unknown() {
    failed_put_is_not_stored(false).await
}

#[tokio::test(start_paused = true)]
async fn a_failed_put_is_not_stored_and_earlier_stored_publishes_are_outcome_unknown_in_place() {
    failed_put_is_not_stored(true).await
}

async fn failed_put_is_not_stored(immediate: bool) {
    within(LIMIT, async {
        let store = flaky(immediate);
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
    put_outcome_unknown(false).await
}

#[tokio::test(start_paused = true)]
async fn a_put_whose_outcome_is_unknown_is_reported_so_in_place() {
    put_outcome_unknown(true).await
}

async fn put_outcome_unknown(immediate: bool) {
    within(LIMIT, async {
        let store = flaky(immediate);
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
