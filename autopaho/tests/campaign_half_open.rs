//! Reliability campaign, scenario 4: half-open links. An `autopaho` publisher and an
//! `autopaho` subscriber (persistent sessions, keepalive 10 s) each reach the in-process
//! test broker through their own fault-injecting proxy (`paho_testserver::proxy`) over
//! in-memory pipes, on tokio's paused clock, while QoS 1 and QoS 2 messages flow
//! (20 a second). In each cycle the proxy blackholes one client's open connection (nothing
//! passes, nothing is closed); later connections pass. The client must notice and be
//! connected again within 1.5 keepalives of the start of the silence (plus its one reconnect
//! delay), and at the end nothing is lost and no QoS 2 message is duplicated.
//!
//! All times are virtual and exact, so the bounds are asserted as they are.
//! `PAHO_CAMPAIGN_LONG=1` runs ten times the cycles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod campaign;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopaho::{Backoff, ConnectionManager, Event, FnConnector, ManagerConfig, Servers};
use bytes::Bytes;
use campaign::{scale, Receipts};
use paho::packets::{Publish, QoS, SubscribeProperties, Subscription, SubscriptionOptions};
use paho::session::{MemoryStore, SessionConfig};
use paho::{ConnectOptions, SessionHandle};
use paho_queue::MemoryQueue;
use paho_testserver::proxy::{Direction, Proxy};
use paho_testserver::TestServer;
use tokio::sync::broadcast;
use tokio::time::Instant;

const KEEPALIVE: Duration = Duration::from_secs(10);
/// The managers' one reconnect delay (constant, no jitter: the bound is exact).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Messages are published this often, all through the test.
const EVERY: Duration = Duration::from_millis(200);
/// A cycle: quiet traffic, the blackhole, recovery, quiet traffic again.
const CYCLE: Duration = Duration::from_secs(60);

fn config(server: &Arc<TestServer>, proxy: &Proxy, id: &str) -> ManagerConfig {
    let (s, p) = (server.clone(), proxy.clone());
    let connector = FnConnector::new(move |_url| {
        let pipe = p.wrap(s.connect_duplex());
        async move { Ok::<_, io::Error>(pipe) }
    });
    ManagerConfig::builder(Servers::parse(["mqtt://behind-the-proxy"]).unwrap())
        .connector(connector)
        .connect_options(
            ConnectOptions::builder()
                .client_id(id)
                .clean_start(false)
                .keep_alive(KEEPALIVE)
                .build()
                .unwrap(),
        )
        .backoff(Backoff::constant(RECONNECT_DELAY).unwrap())
        .build()
        .unwrap()
}

fn qos_of(i: usize) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// One blackhole: whose link, which way, for how long (`None`: for good).
#[derive(Debug, Clone, Copy)]
struct Cut {
    who: Who,
    dir: Direction,
    period: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Publisher,
    Subscriber,
}

/// What one cycle measured, from the start of the silence.
#[derive(Debug)]
struct Recovery {
    cut: Cut,
    detected: Duration,
    connected: Duration,
}

/// Waits for the next `Disconnected`, then the next `Connected`; returns when each came.
async fn outage(events: &mut broadcast::Receiver<Event>) -> (Instant, Instant) {
    let mut down = None;
    loop {
        match events.recv().await {
            Ok(Event::Disconnected { .. }) if down.is_none() => down = Some(Instant::now()),
            Ok(Event::Connected { connack, .. }) if down.is_some() => {
                assert!(connack.session_present, "the session was lost");
                return (down.unwrap(), Instant::now());
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_half_open_link_is_detected_and_recovered_within_one_and_a_half_keepalives() {
    // Both ways for good, both ways for a while (the old link's bytes flow again after the
    // client has left it), and each way alone, on either client.
    let pattern = [
        (Who::Publisher, Direction::Both, None),
        (Who::Subscriber, Direction::Both, None),
        (Who::Publisher, Direction::Both, Some(3 * KEEPALIVE)),
        (Who::Subscriber, Direction::ToClient, None),
        (Who::Publisher, Direction::ToClient, None),
        // The client's PINGREQs and acks vanish; the broker notices the silence (it
        // enforces 1.5 keepalives, as mosquitto does) and closes, which the client sees.
        (Who::Publisher, Direction::ToServer, None),
        (Who::Subscriber, Direction::ToServer, None),
    ];
    let cuts: Vec<Cut> = (0..scale())
        .flat_map(|_| pattern.iter())
        .map(|&(who, dir, period)| Cut { who, dir, period })
        .collect();

    let limit = CYCLE * (cuts.len() as u32 + 10);
    tokio::time::timeout(limit, async {
        let server = Arc::new(
            TestServer::builder()
                .event_limit(1000)
                .start()
                .await
                .unwrap(),
        );
        let (pub_proxy, sub_proxy) = (Proxy::new(41), Proxy::new(42));
        let n_max = (limit.as_millis() / EVERY.as_millis()) as usize;
        let receipts = Receipts::new(n_max);

        let sub = ConnectionManager::start_in_memory(
            config(&server, &sub_proxy, "ho-sub"),
            SessionConfig::new().session_expiry_interval(3600),
        );
        let r = receipts.clone();
        sub.add_on_publish_received(move |m| {
            match std::str::from_utf8(m.payload())
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            {
                Some(i) if m.qos() == qos_of(i) => r.record(i),
                _ => {
                    r.strange.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        sub.subscribe(
            vec![Subscription::new(
                "ho/#",
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();

        let session: SessionHandle<MemoryStore> =
            SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600));
        let publisher = ConnectionManager::start(
            config(&server, &pub_proxy, "ho-pub"),
            session.clone(),
            Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded())),
        );
        let _ = publisher.await_connection().await.unwrap();

        // The feeder: one message every 50 ms until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let feeder = {
            let (p, stop, ok, failed) =
                (publisher.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && i < n_max {
                    let qos = qos_of(i);
                    let h = p
                        .publish_via_queue(Publish {
                            topic: if qos == QoS::AtLeastOnce {
                                "ho/1"
                            } else {
                                "ho/2"
                            }
                            .into(),
                            qos,
                            payload: Bytes::from(i.to_string()),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    let (ok, failed) = (ok.clone(), failed.clone());
                    tokio::spawn(async move {
                        match h.outcome().await {
                            Ok(o) if o.is_success() => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failed.lock().unwrap().push((i, format!("{other:?}"))),
                        }
                    });
                    i += 1;
                    tokio::time::sleep(EVERY).await;
                }
                i
            })
        };

        let mut recoveries = Vec::new();
        for cut in &cuts {
            tokio::time::sleep(CYCLE / 3).await;
            let (mgr, proxy) = match cut.who {
                Who::Publisher => (&publisher, &pub_proxy),
                Who::Subscriber => (&sub, &sub_proxy),
            };
            let mut events = mgr.events();
            // The open connection, and the earlier ones this proxy blackholed for good (they
            // stay half-open, as a real one would until the broker's keepalive ends it).
            let silenced = proxy.blackhole(cut.dir, cut.period);
            assert!(silenced >= 1, "no open connection to silence");
            let start = Instant::now();
            let (down, up) = outage(&mut events).await;
            let r = Recovery {
                cut: *cut,
                detected: down - start,
                connected: up - start,
            };
            eprintln!(
                "half-open {:?} {:?} (period {:?}): detected after {:.2} s, connected again \
                 after {:.2} s (keepalive {} s)",
                r.cut.who,
                r.cut.dir,
                r.cut.period,
                r.detected.as_secs_f64(),
                r.connected.as_secs_f64(),
                KEEPALIVE.as_secs()
            );
            // Not before a keepalive of silence (so it was the silence that was noticed, not
            // some other failure), and by 1.5 keepalives.
            assert!(
                r.detected > KEEPALIVE && r.detected <= KEEPALIVE * 3 / 2,
                "{r:?}"
            );
            assert!(r.connected <= r.detected + RECONNECT_DELAY, "{r:?}");
            recoveries.push(r);
            tokio::time::sleep(CYCLE * 2 / 3 - r_elapsed(start)).await;
        }

        stop.store(true, Ordering::Relaxed);
        let n = feeder.await.unwrap();
        // Everything published arrives, and every outcome resolves.
        let resolved = || ok.load(Ordering::Relaxed) as usize + failed.lock().unwrap().len();
        while resolved() < n || (0..n).any(|i| receipts.count(i) == 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let failed = failed.lock().unwrap().clone();
        assert!(failed.is_empty(), "failed outcomes: {failed:?}");
        assert_eq!(receipts.strange.load(Ordering::Relaxed), 0);
        let upto = |i: usize| i < n;
        assert!(receipts.missing(upto).is_empty());
        let dup2 = receipts.duplicated(|i| i < n && qos_of(i) == QoS::ExactlyOnce);
        assert!(dup2.is_empty(), "QoS 2 duplicated: {dup2:?}");
        let dup1 = receipts.duplicated(|i| i < n && qos_of(i) == QoS::AtLeastOnce);
        let worst = recoveries.iter().map(|r| r.connected).max().unwrap();
        let detect_worst = recoveries.iter().map(|r| r.detected).max().unwrap();
        eprintln!(
            "scenario 4 (half-open): {} blackholes, {n} messages (QoS 1 and 2 alternating), \
             lost 0, QoS 2 duplicated 0, QoS 1 duplicated {}; detected within {:.2} s, \
             connected again within {:.2} s of the silence (keepalive {} s, 1.5x = {} s, \
             reconnect delay {} ms)",
            recoveries.len(),
            dup1.len(),
            detect_worst.as_secs_f64(),
            worst.as_secs_f64(),
            KEEPALIVE.as_secs(),
            KEEPALIVE.as_secs_f64() * 1.5,
            RECONNECT_DELAY.as_millis()
        );
        publisher.disconnect().await.unwrap();
        assert_eq!(session.stats().unwrap().unfinished, 0);
        sub.disconnect().await.unwrap();
    })
    .await
    .expect("stuck (virtual time)");
}

fn r_elapsed(start: Instant) -> Duration {
    start.elapsed().min(CYCLE * 2 / 3)
}

/// The proxy's other behaviours against the client: every byte written on its own, a 250 ms
/// delay each way, and cuts every 2-5 s, while 600 messages flow between the two managers.
/// The client's decoder sees reads of one byte; keepalive (10 s) is not fooled by the delay;
/// nothing is lost and no QoS 2 message comes twice.
#[tokio::test(start_paused = true)]
async fn one_byte_writes_delay_and_cuts_together_lose_nothing() {
    let n = 600 * scale() as usize;
    tokio::time::timeout(Duration::from_secs(3600 * u64::from(scale())), async {
        let server = Arc::new(
            TestServer::builder()
                .event_limit(1000)
                .start()
                .await
                .unwrap(),
        );
        let proxy = Proxy::new(43);
        proxy.set_split(true);
        proxy.set_delay(Duration::from_millis(250));
        let receipts = Receipts::new(n);
        let sub = ConnectionManager::start_in_memory(
            config(&server, &proxy, "sd-sub"),
            SessionConfig::new().session_expiry_interval(3600),
        );
        let r = receipts.clone();
        sub.add_on_publish_received(move |m| {
            match std::str::from_utf8(m.payload())
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            {
                Some(i) if m.qos() == qos_of(i) => r.record(i),
                _ => {
                    r.strange.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        sub.subscribe(
            vec![Subscription::new(
                "sd/#",
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();
        proxy.set_cuts(Duration::from_secs(2), Duration::from_secs(5));
        let session: SessionHandle<MemoryStore> =
            SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600));
        let publisher = ConnectionManager::start(
            config(&server, &proxy, "sd-pub"),
            session.clone(),
            Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded())),
        );
        let mut outcomes = Vec::new();
        for i in 0..n {
            let qos = qos_of(i);
            let h = publisher
                .publish_via_queue(Publish {
                    topic: if qos == QoS::AtLeastOnce {
                        "sd/1"
                    } else {
                        "sd/2"
                    }
                    .into(),
                    qos,
                    payload: Bytes::from(i.to_string()),
                    ..Default::default()
                })
                .await
                .unwrap();
            outcomes.push(tokio::spawn(h.outcome()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for o in outcomes {
            assert!(o.await.unwrap().unwrap().is_success());
        }
        while receipts.distinct() < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(receipts.missing(|_| true).is_empty());
        assert_eq!(receipts.strange.load(Ordering::Relaxed), 0);
        let dup2 = receipts.duplicated(|i| qos_of(i) == QoS::ExactlyOnce);
        assert!(dup2.is_empty(), "QoS 2 duplicated: {dup2:?}");
        let st = proxy.stats();
        assert!(st.cuts >= 2, "{st:?}");
        eprintln!(
            "1-byte writes + 250 ms delay + cuts every 2-5 s: {n} messages, lost 0, QoS 2 \
             duplicated 0, QoS 1 duplicated {}; proxy {} cuts, {} B to the broker and {} B to \
             the clients, one byte per write; publisher connects {}, subscriber {}",
            receipts.duplicated(|i| qos_of(i) == QoS::AtLeastOnce).len(),
            st.cuts,
            st.bytes_to_server,
            st.bytes_to_client,
            publisher.stats().connects,
            sub.stats().connects,
        );
        publisher.disconnect().await.unwrap();
        assert_eq!(session.stats().unwrap().unfinished, 0);
        sub.disconnect().await.unwrap();
    })
    .await
    .expect("stuck (virtual time)");
}
