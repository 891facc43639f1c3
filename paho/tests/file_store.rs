//! The client over a crash-safe `FileStore`: what was stored before a restart of the process is
//! resent (and inbound QoS 2 is not redelivered) after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use paho::packets::{ConnAck, Packet, PubComp, PubRec, PubRel, QoS};
use paho::session::{FileStore, SessionConfig, StoreIdentity};
use paho::{Client, SessionHandle};

async fn open(dir: &std::path::Path) -> SessionHandle<FileStore> {
    let identity = StoreIdentity::new("tcp://test", "test-client").unwrap();
    let store = FileStore::open(dir, identity).await.unwrap();
    SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store)
        .await
        .unwrap()
}

async fn connect(
    session: SessionHandle<FileStore>,
    present: bool,
) -> (Client, paho::Incoming, Peer) {
    let (io, mut peer) = pipe();
    let server = tokio::spawn(async move {
        peer.accept(ConnAck {
            session_present: present,
            ..Default::default()
        })
        .await;
        peer
    });
    let opts = options().clean_start(false).build().unwrap();
    let (c, i) = Client::connect(io, opts, session).await.unwrap();
    (c, i, server.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_exchanges_survive_a_restart_of_the_process() {
    // Real time here (the store's writer thread lives outside the runtime's clock): the bound only
    // turns a hang into a failure.
    within(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let session = open(dir.path()).await;
        let (client, mut incoming, mut peer) = connect(session.clone(), false).await;
        let h1 = client.start_publish(publish("a", QoS::AtLeastOnce, "1"));
        let h2 = client.start_publish(publish("b", QoS::ExactlyOnce, "2"));
        let a = peer.expect_publish().await;
        let b = peer.expect_publish().await;
        // An inbound QoS 2 message accepted (PUBREC sent) before the crash.
        peer.send(server_publish("in", QoS::ExactlyOnce, 7, "once"))
            .await;
        incoming.recv().await.unwrap();
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(7))));
        drop(peer);
        let _ = client.closed().await;
        drop((client, incoming));
        // The process "dies": the session goes, its store is closed, the waiters learn of it.
        let (old, store) = session.try_into_parts().unwrap();
        drop(old);
        // It was stored: not "failed" (publishing it again would duplicate it) but "outcome
        // unknown", and the reopened store resends it below.
        let e = h1.await.unwrap_err();
        assert!(e.is_outcome_unknown(), "{e}");
        drop(h2);
        store.close().await;

        let session = open(dir.path()).await;
        let (client, mut incoming, mut peer) = connect(session.clone(), true).await;
        let ra = peer.expect_publish().await;
        assert_eq!(
            (ra.packet_id, ra.dup, &*ra.payload),
            (a.packet_id, true, &b"1"[..])
        );
        let rb = peer.expect_publish().await;
        assert_eq!((rb.packet_id, rb.dup), (b.packet_id, true));
        peer.puback(ra.packet_id.unwrap()).await;
        let b_id = rb.packet_id.unwrap();
        peer.send(PubRec::new(b_id)).await;
        assert_eq!(peer.expect().await, Packet::PubRel(PubRel::new(b_id)));
        peer.send(PubComp::new(b_id)).await;
        // The broker resends the QoS 2 message: acknowledged, not delivered twice.
        let mut dup = server_publish("in", QoS::ExactlyOnce, 7, "once");
        dup.dup = true;
        peer.send(dup).await;
        assert_eq!(peer.expect().await, Packet::PubRec(PubRec::new(pid(7))));
        peer.send(PubRel::new(pid(7))).await;
        assert_eq!(peer.expect().await, Packet::PubComp(PubComp::new(pid(7))));
        assert!(incoming.try_recv().is_none());
        client.disconnect_normally().await.unwrap();
        let stats = session.stats().unwrap();
        assert_eq!((stats.unfinished, stats.inbound_pending), (0, 0));
    })
    .await
}
