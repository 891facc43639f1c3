//! The `wait_*` helpers are bounded: a test whose event never comes fails with the last
//! events instead of hanging CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::client;
use paho_packets::PacketType;
use paho_testserver::TestServer;
use tokio::time::Instant;

/// Far beyond any wait limit; only reached when a wait has no bound at all (paused clock:
/// it costs no real time).
const HANG: Duration = Duration::from_secs(24 * 3600);

/// Runs `wait` on its own task and returns its panic message and how long (virtual) it took.
async fn panics<F>(wait: F) -> (String, Duration)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let joined = tokio::time::timeout(HANG, tokio::spawn(wait))
        .await
        .expect("the wait hung: it has no bound");
    let err = joined.expect_err("the wait returned although nothing matched");
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    (msg, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn wait_for_an_event_that_never_comes_panics_after_the_limit() {
    let server = Arc::new(TestServer::start().await.unwrap());
    let _c = client(&server, "c").await;
    let s = server.clone();
    let (msg, took) = panics(async move {
        s.wait_for(|_| false).await;
    })
    .await;
    assert_eq!(took, Duration::from_secs(60), "the default limit");
    assert!(msg.contains("wait_for did not happen"), "{msg}");
    // The message shows what did happen.
    assert!(msg.contains("Connect"), "{msg}");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_wait_helper_is_bounded_by_the_configured_limit() {
    let server = Arc::new(
        TestServer::builder()
            .wait_limit(Duration::from_secs(5))
            .start()
            .await
            .unwrap(),
    );
    let s = server.clone();
    let (msg, took) = panics(async move {
        s.wait_for_count(3, |_| true).await;
    })
    .await;
    assert_eq!(took, Duration::from_secs(5));
    assert!(msg.contains("wait_for_count(3)"), "{msg}");
    let s = server.clone();
    let (msg, _) = panics(async move {
        s.wait_for_received(PacketType::Subscribe).await;
    })
    .await;
    assert!(msg.contains("wait_for_received(Subscribe)"), "{msg}");
    let s = server.clone();
    let (msg, _) = panics(async move {
        s.wait_connection_count(2).await;
    })
    .await;
    assert!(msg.contains("wait_connection_count(2)"), "{msg}");
    assert!(TestServer::builder()
        .wait_limit(Duration::ZERO)
        .start()
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn a_wait_left_pending_by_shutdown_does_not_hang() {
    let server = Arc::new(TestServer::start().await.unwrap());
    let s = server.clone();
    let waiting = tokio::spawn(async move {
        s.wait_for_received(PacketType::Publish).await;
    });
    server.shutdown().await;
    let joined = tokio::time::timeout(HANG, waiting)
        .await
        .expect("the wait hung after shutdown");
    assert!(joined.unwrap_err().is_panic());
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_matches_returns_without_waiting_for_the_limit() {
    let server = TestServer::start().await.unwrap();
    let start = Instant::now();
    let _c = client(&server, "c").await;
    server.wait_for_received(PacketType::Connect).await;
    server.wait_connection_count(1).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn raw_client_recv_is_bounded() {
    let server = TestServer::start().await.unwrap();
    let mut c = client(&server, "c").await;
    let start = Instant::now();
    // Nothing will come: the server has nothing to say to a client that said nothing.
    let got = tokio::time::timeout(HANG, c.recv())
        .await
        .expect("recv hung: it has no bound");
    assert!(
        matches!(got, Err(paho_testserver::Error::Timeout(_))),
        "{got:?}"
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(60),
        "the default limit"
    );
    c.set_recv_limit(Some(Duration::from_secs(2)));
    let start = Instant::now();
    assert!(c.expect().await.is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // The client still works after a timed-out read.
    c.send(paho_packets::Packet::PingReq).await.unwrap();
    assert_eq!(c.expect().await.unwrap(), paho_packets::Packet::PingResp);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_event_log_is_bounded_and_waits_go_on_across_a_trim() {
    let server = TestServer::builder().event_limit(10).start().await.unwrap();
    let mut c = client(&server, "c").await;
    for _ in 0..100 {
        c.send(paho_packets::Packet::PingReq).await.unwrap();
        assert_eq!(c.expect().await.unwrap(), paho_packets::Packet::PingResp);
    }
    // 2 events per ping plus the connect's 3: far more than twice the limit were logged.
    let events = server.events();
    assert!(
        (10..20).contains(&events.len()),
        "{} events kept",
        events.len()
    );
    assert!(
        matches!(
            events.last().unwrap().sent(),
            Some(paho_packets::Packet::PingResp)
        ),
        "the latest are kept"
    );
    // A wait for the 30th PINGREQ from now on counts across trims.
    let waiting = {
        let server = std::sync::Arc::new(server);
        let s = server.clone();
        let h = tokio::spawn(async move {
            s.wait_for_count(30, |e| {
                matches!(e.received(), Some(paho_packets::Packet::PingReq))
            })
            .await
            .len()
        });
        (server, h)
    };
    let (server, h) = waiting;
    server.clear_events();
    for _ in 0..30 {
        c.send(paho_packets::Packet::PingReq).await.unwrap();
        assert_eq!(c.expect().await.unwrap(), paho_packets::Packet::PingResp);
        // Let the waiter look at every ping before the next trim.
        tokio::task::yield_now().await;
    }
    assert_eq!(h.await.unwrap(), 30);
    assert!(server.events().len() < 20);
    assert!(TestServer::builder().event_limit(0).start().await.is_err());
    server.shutdown().await;
}
