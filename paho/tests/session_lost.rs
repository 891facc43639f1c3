//! A process killed with publishes in flight, restarted against a real mosquitto that has
//! forgotten its session (Session Present = 0: the default Session Expiry 0, or a broker
//! restarted without persistence). Under the default session-lost policy every message the
//! dead process had accepted, including a QoS 2 one already at its PUBREL stage, is
//! republished and reaches a subscriber exactly once. Skips with a notice when mosquitto is
//! absent, unless `PAHO_REQUIRE_MOSQUITTO=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{options, pipe, publish};
use paho::packets::{ConnAck, Packet, PubRec, QoS};
use paho::session::{FileStore, SessionConfig, SessionLostPolicy, StoreIdentity};
use paho::{Client, SessionHandle};
use paho_testserver::mosquitto;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(120);

async fn open(dir: &std::path::Path, policy: SessionLostPolicy) -> SessionHandle<FileStore> {
    let identity = StoreIdentity::new("tcp://mosquitto", "restarted").unwrap();
    let store = FileStore::open(dir, identity).await.unwrap();
    let config = SessionConfig::new()
        .session_expiry_interval(3600)
        .on_session_lost(policy);
    SessionHandle::restore(config, store).await.unwrap()
}

/// The restarted client's CONNECT: the same client id, resuming its session.
fn resume_options() -> paho::ConnectOptions {
    options()
        .client_id("restarted")
        .clean_start(false)
        .build()
        .unwrap()
}

/// The first process: three messages stored and sent to a server that acknowledges none of
/// them but the PUBREC of the third. Then it "dies" (its store closed, nothing completed).
async fn first_process(dir: &std::path::Path) {
    let session = open(dir, SessionLostPolicy::Republish).await;
    let (io, mut peer) = pipe();
    let server = tokio::spawn(async move {
        peer.accept(ConnAck::default()).await;
        peer
    });
    let opts = resume_options();
    let (client, incoming) = Client::connect(io, opts, session.clone()).await.unwrap();
    let mut peer = server.await.unwrap();
    let handles = [
        client.start_publish(publish("lost/a", QoS::AtLeastOnce, "a")),
        client.start_publish(publish("lost/b", QoS::ExactlyOnce, "b")),
        client.start_publish(publish("lost/c", QoS::ExactlyOnce, "c")),
    ];
    let mut c_id = None;
    for _ in 0..3 {
        let p = peer.expect_publish().await;
        if p.payload == Bytes::from_static(b"c") {
            c_id = p.packet_id;
        }
    }
    peer.send(PubRec::new(c_id.unwrap())).await;
    assert!(matches!(peer.expect().await, Packet::PubRel(_)));
    drop(peer);
    let _ = client.closed().await;
    drop((client, incoming, handles));
    let (_session, store) = session.try_into_parts().unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_meets_session_present_0_republishes_everything_to_mosquitto() {
    let Some(b) = mosquitto::require() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let m = b.start().await.expect("mosquitto failed to start");
        let dir = tempfile::tempdir().unwrap();
        first_process(dir.path()).await;

        let sub_session = SessionHandle::in_memory(SessionConfig::new());
        let tcp = TcpStream::connect(m.addr()).await.unwrap();
        let (sub, mut inbox) = Client::connect(
            tcp,
            options().client_id("watcher").build().unwrap(),
            sub_session,
        )
        .await
        .unwrap();
        sub.subscribe_to("lost/#", QoS::ExactlyOnce).await.unwrap();

        // The second process: mosquitto never saw this client id, so Session Present = 0.
        let session = open(dir.path(), SessionLostPolicy::Republish).await;
        let tcp = TcpStream::connect(m.addr()).await.unwrap();
        let opts = resume_options();
        let (client, _incoming) = Client::connect(tcp, opts, session.clone()).await.unwrap();
        assert!(!client.session_present());
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
                .await
                .expect("a republished message did not arrive")
                .unwrap();
            got.push(m.payload().clone());
        }
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c")
            ],
            "all three, in their original order"
        );
        // ... exactly once each, and the session finishes them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(inbox.try_recv().is_none(), "a duplicate arrived");
        client.disconnect_normally().await.unwrap();
        let stats = session.stats().unwrap();
        assert_eq!(stats.unfinished, 0);
        assert!(session.take_abandoned().is_empty());
    })
    .await
    .expect("the test is stuck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_a_restart_hands_the_messages_to_the_application() {
    let Some(b) = mosquitto::require() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let m = b.start().await.expect("mosquitto failed to start");
        let dir = tempfile::tempdir().unwrap();
        first_process(dir.path()).await;
        let session = open(dir.path(), SessionLostPolicy::Fail).await;
        let tcp = TcpStream::connect(m.addr()).await.unwrap();
        let opts = resume_options();
        let (client, _incoming) = Client::connect(tcp, opts, session.clone()).await.unwrap();
        client.disconnect_normally().await.unwrap();
        let back: Vec<Bytes> = session
            .take_abandoned()
            .into_iter()
            .map(|p| p.payload)
            .collect();
        assert_eq!(
            back,
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c")
            ]
        );
        assert_eq!(session.stats().unwrap().unfinished, 0);
    })
    .await
    .expect("the test is stuck");
}
