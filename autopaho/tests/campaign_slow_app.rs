//! Reliability campaign, scenario 7: a slow application. The in-process test broker always
//! has messages waiting for a subscriber (QoS 1 and QoS 2 alternating, 4 KiB each, 10,000 in
//! all) whose application takes one message a second, on tokio's paused clock (10,000 s of
//! virtual time). The subscriber is a plain `paho::Client`: the manager's handlers are
//! synchronous callbacks, and the bound under test is the one on `paho::Incoming`.
//!
//! - The client's memory stays bounded: [`paho::Incoming::queued_bytes`] never exceeds
//!   `max_queued_bytes` (16 KiB) by more than what one read of the socket brings (the driver
//!   decodes a whole read before it looks at the bound again), far below the 50 messages of
//!   Receive Maximum (about 210 KB) that could otherwise pile up.
//! - The broker is slowed down by Receive Maximum: its unacknowledged deliveries (replayed
//!   from its event log, packet by packet) never exceed 50, and reach it (its pipe to the
//!   client has room for far more, so it is the Receive Maximum that holds it back).
//! - Nothing is lost or duplicated: the application sees every number once, in order.
//!
//! `PAHO_CAMPAIGN_LONG=1` runs ten times the messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod campaign;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use campaign::scale;
use paho::packets::{Packet, Publish, QoS};
use paho::session::SessionConfig;
use paho::{Client, ConnectOptions, SessionHandle};
use paho_testserver::{EventKind, TestServer};
use tokio::time::Instant;

const RECEIVE_MAXIMUM: u16 = 50;
const MAX_QUEUED_BYTES: usize = 16 * 1024;
const PAYLOAD: usize = 4096;
const TOPIC: &str = "slow/t";
/// What one read of the socket can bring beyond the bound: the driver reads into a buffer of
/// at most 16 KiB plus the 4 KiB it keeps spare (`paho/src/driver.rs`), and every message
/// counts its payload, topic and 64 bytes.
const ONE_READ: usize =
    20 * 1024 / (PAYLOAD + 12) * (PAYLOAD + TOPIC.len() + 64) + (PAYLOAD + TOPIC.len() + 64);

fn qos_of(i: usize) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

fn message(i: usize) -> Publish {
    let mut payload = format!("{i:010}").into_bytes();
    payload.resize(PAYLOAD, b'.');
    Publish {
        topic: TOPIC.into(),
        qos: qos_of(i),
        payload: Bytes::from(payload),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_application_bounds_the_clients_memory_and_slows_the_broker() {
    let n = 10_000 * scale() as usize;
    // Hang guard in virtual time: the application alone takes n seconds.
    let limit = Duration::from_secs(n as u64 + 3600);
    tokio::time::timeout(limit, async {
        let server = Arc::new(
            TestServer::builder()
                // Room for every packet of every exchange.
                .event_limit(6 * n + 1000)
                // The pipe to the client could hold 250 messages: what holds the broker
                // back must be the Receive Maximum.
                .duplex_buffer(1 << 20)
                .start()
                .await
                .unwrap(),
        );
        let options = ConnectOptions::builder()
            .client_id("slow")
            .receive_maximum(RECEIVE_MAXIMUM)
            .max_queued_bytes(MAX_QUEUED_BYTES)
            .build()
            .unwrap();
        let session = SessionHandle::in_memory(SessionConfig::new());
        let (client, mut incoming) = Client::connect(server.connect_duplex(), options, session)
            .await
            .unwrap();
        client.subscribe_to("slow/#", QoS::ExactlyOnce).await.unwrap();

        // The broker always has messages waiting for the subscriber: topped up to 100 queued.
        let done = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (server, done) = (server.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while i < n && !done.load(Ordering::Relaxed) {
                    let queued = server.outbound("slow").map_or(0, |(_, q)| q);
                    for _ in queued..100 {
                        if i < n {
                            assert_eq!(server.publish(message(i)), 1);
                            i += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };

        let start = Instant::now();
        let mut max_queued = 0usize;
        let mut max_in_flight_sampled = 0usize;
        for expected in 0..n {
            tokio::time::sleep(Duration::from_secs(1)).await;
            max_queued = max_queued.max(incoming.queued_bytes());
            let (in_flight, _) = server.outbound("slow").unwrap();
            max_in_flight_sampled = max_in_flight_sampled.max(in_flight);
            let m = incoming.recv().await.expect("the connection closed");
            let got: usize = std::str::from_utf8(&m.payload()[..10])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(got, expected, "lost, duplicated or out of order");
            assert_eq!(m.qos(), qos_of(got));
            assert_eq!(m.payload().len(), PAYLOAD);
        }
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        feeder.await.unwrap();
        // Nothing more comes: the broker had exactly n.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(incoming.try_recv().is_none(), "more than was published");
        let (in_flight_end, queued_end) = server.outbound("slow").unwrap();

        // The broker's unacknowledged deliveries, packet by packet (a QoS 2 delivery counts
        // until its PUBCOMP, as MQTT-4.9.0-2 says).
        let mut in_flight = 0i64;
        let mut max_in_flight = 0i64;
        let mut sent = 0usize;
        for e in server.events() {
            if e.client_id.as_deref() != Some("slow") {
                continue;
            }
            match e.kind {
                EventKind::Sent(Packet::Publish(p)) if p.qos != QoS::AtMostOnce => {
                    assert!(!p.dup, "a resend without a reconnect");
                    in_flight += 1;
                    sent += 1;
                }
                EventKind::Received(Packet::PubAck(_) | Packet::PubComp(_)) => in_flight -= 1,
                _ => {}
            }
            max_in_flight = max_in_flight.max(in_flight);
        }
        assert_eq!(sent, n, "the event log holds every delivery");
        assert!(
            max_in_flight <= i64::from(RECEIVE_MAXIMUM),
            "the broker had {max_in_flight} unacknowledged deliveries, Receive Maximum {RECEIVE_MAXIMUM}"
        );
        assert_eq!(
            max_in_flight,
            i64::from(RECEIVE_MAXIMUM),
            "the Receive Maximum was never what held the broker back"
        );
        assert!(
            max_queued <= MAX_QUEUED_BYTES + ONE_READ,
            "{max_queued} bytes waited in Incoming; bound {MAX_QUEUED_BYTES} + one read {ONE_READ}"
        );
        let unbounded = usize::from(RECEIVE_MAXIMUM) * (PAYLOAD + TOPIC.len() + 64);
        assert!(MAX_QUEUED_BYTES + ONE_READ < unbounded / 4);
        eprintln!(
            "scenario 7 (slow application): {n} messages (QoS 1 and 2, {PAYLOAD} B), one taken \
             per second, {:.0} s virtual; Incoming held at most {max_queued} B (bound \
             {MAX_QUEUED_BYTES} B + one read {ONE_READ} B; Receive Maximum x size would be \
             {unbounded} B); broker in flight at most {max_in_flight} (sampled {}) = Receive \
             Maximum {RECEIVE_MAXIMUM}; lost 0, duplicated 0, in order; at the end in flight \
             {in_flight_end}, queued {queued_end}",
            elapsed.as_secs_f64(),
            max_in_flight_sampled,
        );
        client.disconnect_normally().await.unwrap();
    })
    .await
    .expect("stuck (virtual time)");
}
