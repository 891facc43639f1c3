//! The connection manager against the in-process test broker, on tokio's paused clock: a
//! connector keyed by URL host decides which "servers" refuse, so failover, backoff and
//! reconnects are deterministic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use autopaho::{
    Backoff, ConnectionManager, ConnectionState, Event, FnConnector, ManagerConfig, Servers,
};
use bytes::Bytes;
use paho::packets::{
    Packet, PacketType, Publish, QoS, SubscribeProperties, Subscription, SubscriptionOptions,
};
use paho::session::{MemoryStore, SessionConfig};
use paho::{ConnectOptions, SessionHandle};
use paho_queue::{MemoryQueue, Queue};
use paho_testserver::TestServer;
use paho_testserver::{Fault, Target, When};
use tokio::io::DuplexStream;

/// The virtual-time bound on a test body: a stuck test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(3600);

async fn within<F: std::future::Future>(body: F) -> F::Output {
    match tokio::time::timeout(LIMIT, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test is stuck after {LIMIT:?} of virtual time"),
    }
}

type Dial = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<DuplexStream>> + Send>>;

/// Hosts named `refuse*` refuse; anything else reaches `server` over a pipe, unless `down`.
#[derive(Clone)]
struct Net {
    server: Arc<TestServer>,
    down: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
}

impl Net {
    async fn new(server: TestServer) -> Net {
        Net {
            server: Arc::new(server),
            down: Arc::new(AtomicBool::new(false)),
            attempts: Arc::default(),
        }
    }

    fn connector(&self) -> FnConnector<impl Fn(autopaho::ServerUrl) -> Dial + Send + Sync> {
        let net = self.clone();
        FnConnector::new(move |url: autopaho::ServerUrl| {
            let net = net.clone();
            Box::pin(async move {
                net.attempts
                    .lock()
                    .unwrap()
                    .push((url.host().to_owned(), tokio::time::Instant::now()));
                if url.host().starts_with("refuse") || net.down.load(Ordering::SeqCst) {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                }
                Ok(net.server.connect_duplex())
            }) as Dial
        })
    }

    fn attempts(&self) -> Vec<(String, tokio::time::Instant)> {
        self.attempts.lock().unwrap().clone()
    }
}

fn servers(urls: &[&str]) -> Servers {
    Servers::parse(urls.iter().copied()).unwrap()
}

fn config(net: &Net, urls: &[&str], id: &str) -> autopaho::ManagerConfigBuilder {
    ManagerConfig::builder(servers(urls))
        .connector(net.connector())
        .connect_options(ConnectOptions::builder().client_id(id).build().unwrap())
        .backoff(
            Backoff::exponential()
                .initial(Duration::from_secs(1))
                .max(Duration::from_secs(8))
                .jitter(0.0)
                .build()
                .unwrap(),
        )
}

fn msg(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: payload.into(),
        ..Default::default()
    }
}

fn session(expiry: u32) -> SessionHandle<MemoryStore> {
    SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(expiry))
}

fn queue() -> Arc<MemoryQueue> {
    Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded()))
}

/// The payloads of the PUBLISHes `server` received from `client`, in arrival order.
fn received_payloads(server: &TestServer, client: &str) -> Vec<Bytes> {
    server
        .received_from(client)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fails_over_across_three_servers_the_first_two_refusing() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let cfg = config(
            &net,
            &["mqtt://refuse-1", "mqtt://refuse-2", "mqtt://good"],
            "fo",
        )
        .build()
        .unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        let mut events = mgr.events();
        let client = mgr.await_connection().await.unwrap();
        assert_eq!(client.client_id(), "fo");
        let hosts: Vec<String> = net.attempts().into_iter().map(|(h, _)| h).collect();
        assert_eq!(hosts, vec!["refuse-1", "refuse-2", "good"]);
        let mut failed = 0;
        loop {
            match events.recv().await.unwrap() {
                Event::ConnectFailed { .. } => failed += 1,
                Event::Connected { server, .. } => {
                    assert!(server.contains("good"), "{server}");
                    break;
                }
                Event::Backoff { .. } => panic!("no backoff within a round"),
                _ => {}
            }
        }
        assert_eq!(failed, 2);
        assert_eq!(mgr.state(), ConnectionState::Connected);
        mgr.disconnect().await.unwrap();
        assert_eq!(mgr.state(), ConnectionState::Stopped);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_between_rounds_and_resets_after_a_long_connection() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        net.down.store(true, Ordering::SeqCst);
        let cfg = config(&net, &["mqtt://a", "mqtt://b"], "bo")
            .reset_backoff_after(Duration::from_secs(30))
            .build()
            .unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        tokio::time::sleep(Duration::from_secs(40)).await;
        let attempts = net.attempts();
        // Rounds of two attempts each, at 0, 1, 3, 7, 15, 23, 31, 39 s (1, 2, 4, 8, 8, ...).
        let starts: Vec<u64> = attempts
            .iter()
            .step_by(2)
            .map(|(_, t)| (*t - attempts[0].1).as_secs())
            .collect();
        assert_eq!(starts, vec![0, 1, 3, 7, 15, 23, 31, 39]);
        for pair in attempts.chunks(2) {
            assert_eq!(
                pair[0].1, pair[1].1,
                "the servers of a round are tried back to back"
            );
        }
        // Up for longer than 30 s, then dropped: the next delay starts from 1 s again.
        net.down.store(false, Ordering::SeqCst);
        let mut events = mgr.events();
        let _ = mgr.await_connection().await.unwrap();
        tokio::time::sleep(Duration::from_secs(31)).await;
        let before = net.attempts().len();
        let dropped_at = tokio::time::Instant::now();
        let kick = |events: &mut tokio::sync::broadcast::Receiver<Event>| {
            net.server.faults().apply(Target::All, Fault::Drop);
            let mut events = events.resubscribe();
            async move { while !matches!(events.recv().await.unwrap(), Event::Connected { .. }) {} }
        };
        kick(&mut events).await;
        let again = &net.attempts()[before];
        assert_eq!(
            (again.1 - dropped_at).as_secs(),
            1,
            "backoff reset to its first delay"
        );
        // A server that accepts and kicks at once meets growing delays, never a tight loop.
        let before = net.attempts().len();
        for _ in 0..4 {
            kick(&mut events).await;
        }
        let kicks: Vec<_> = net.attempts()[before..].iter().map(|(_, t)| *t).collect();
        let gaps: Vec<u64> = kicks.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, vec![4, 8, 8], "{gaps:?}");
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_messages_queued_while_never_connected_arrive_in_order() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        net.down.store(true, Ordering::SeqCst);
        let cfg = config(&net, &["mqtt://only"], "offline").build().unwrap();
        let q = queue();
        let mgr = ConnectionManager::start(cfg, session(3600), Arc::clone(&q));
        let mut outcomes = Vec::new();
        assert_eq!(mgr.stats().in_flight, 0);
        for i in 0..10_000u32 {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            let p = mgr
                .publish_via_queue(msg("q", qos, i.to_string()))
                .await
                .unwrap();
            outcomes.push(p);
        }
        assert_eq!(mgr.stats().queue_len, 10_000);
        assert!(mgr.publish(msg("q", QoS::AtLeastOnce, "x")).await.is_err());
        net.down.store(false, Ordering::SeqCst);
        for o in outcomes {
            assert!(o.outcome().await.unwrap().is_success());
        }
        let got = received_payloads(&net.server, "offline");
        let want: Vec<Bytes> = (0..10_000u32).map(|i| Bytes::from(i.to_string())).collect();
        assert_eq!(got, want, "every message once, in order");
        assert_eq!(mgr.stats().queue_len, 0);
        assert_eq!(mgr.stats().sent_from_queue, 10_000);
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn queued_messages_survive_link_drops_in_order() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let cfg = config(&net, &["mqtt://only"], "drops").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let _ = mgr.await_connection().await.unwrap();
        // Three rounds; in each the link is cut on the 10th PUBLISH, before the server takes it.
        let faults = net.server.faults();
        for round in 0..3u32 {
            faults.drop_on(PacketType::Publish, 10, When::BeforeProcessing);
            let mut outcomes = Vec::new();
            for i in round * 60..(round + 1) * 60 {
                let qos = if i % 3 == 0 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                outcomes.push(
                    mgr.publish_via_queue(msg("d", qos, i.to_string()))
                        .await
                        .unwrap(),
                );
            }
            for o in outcomes {
                assert!(o.outcome().await.unwrap().is_success());
            }
        }
        let got = received_payloads(&net.server, "drops");
        // Every message arrived; the first arrivals are in order (a resend may repeat one).
        let mut seen = HashSet::new();
        let firsts: Vec<u32> = got
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap().parse::<u32>().unwrap())
            .filter(|n| seen.insert(*n))
            .collect();
        assert_eq!(firsts, (0..180).collect::<Vec<_>>());
        assert_eq!(mgr.stats().connects, 4, "{:?}", mgr.stats());
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_server_assigned_client_id_is_reused_on_every_reconnect() {
    within(async {
        let server = TestServer::builder()
            .assigned_client_id("assigned-7")
            .start()
            .await
            .unwrap();
        let net = Net::new(server).await;
        let cfg = config(&net, &["mqtt://only"], "").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let c = mgr.await_connection().await.unwrap();
        assert_eq!(c.client_id(), "assigned-7");
        net.server.faults().apply(Target::All, Fault::Drop);
        let _ = c.closed().await;
        let _ = mgr.await_connection().await.unwrap();
        let ids: Vec<String> = net
            .server
            .received()
            .into_iter()
            .filter_map(|p| match p {
                Packet::Connect(c) => Some(c.client_id.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec!["".to_owned(), "assigned-7".to_owned()]);
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_made_again_when_the_server_forgot_the_session_and_handlers_survive() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let cfg = config(&net, &["mqtt://only"], "resub").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let count = Arc::new(AtomicUsize::new(0));
        let c2 = Arc::clone(&count);
        let id = mgr.add_on_publish_received(move |m| {
            assert_eq!(m.topic(), "news/1");
            c2.fetch_add(1, Ordering::SeqCst);
        });
        // Subscribing before any connection is up waits for one.
        let ack = mgr
            .subscribe(
                vec![Subscription::new(
                    "news/#",
                    SubscriptionOptions::qos(QoS::AtLeastOnce),
                )],
                SubscribeProperties::default(),
            )
            .await
            .unwrap();
        assert!(ack.reason_codes.iter().all(|c| c.as_u8() < 0x80));
        let mut events = mgr.events();
        net.server.publish(msg("news/1", QoS::AtLeastOnce, "a"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // The broker forgets the session while the link is down.
        net.server.faults().apply(Target::All, Fault::Drop);
        while !matches!(events.recv().await.unwrap(), Event::Disconnected { .. }) {}
        assert!(net.server.discard_session("resub"));
        while !matches!(events.recv().await.unwrap(), Event::Connected { .. }) {}
        assert_eq!(net.server.subscriptions("resub"), vec!["news/#".to_owned()]);
        net.server.publish(msg("news/1", QoS::AtLeastOnce, "b"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "the handler outlived the reconnect"
        );
        assert!(mgr.remove_on_publish_received(id));
        net.server.publish(msg("news/1", QoS::AtLeastOnce, "c"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2, "removed");
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn expired_queued_messages_are_dropped_and_the_others_leave_with_a_shorter_interval() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        net.down.store(true, Ordering::SeqCst);
        let q = queue();
        // Entries queued 100 s ago (the queue keeps the time it is given).
        let long_ago = SystemTime::now() - Duration::from_secs(100);
        let encode = |mut p: Publish| {
            p.packet_id = Some(paho::packets::PacketId::MIN);
            let mut b = bytes::BytesMut::new();
            Packet::Publish(p).encode(&mut b).unwrap();
            b.freeze()
        };
        let mut expired = msg("e", QoS::AtLeastOnce, "expired");
        expired.properties.message_expiry_interval = Some(50);
        let mut fresh = msg("e", QoS::AtLeastOnce, "fresh");
        fresh.properties.message_expiry_interval = Some(500);
        let expired_seq = q.enqueue(encode(expired), long_ago).await.unwrap().seq();
        q.enqueue(encode(fresh), long_ago).await.unwrap();
        let cfg = config(&net, &["mqtt://only"], "exp").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), Arc::clone(&q));
        let mut events = mgr.events();
        net.down.store(false, Ordering::SeqCst);
        loop {
            if let Event::QueueExpired { seq } = events.recv().await.unwrap() {
                assert_eq!(seq, expired_seq);
                break;
            }
        }
        net.server.wait_for_received(PacketType::Publish).await;
        let sent: Vec<Publish> = net
            .server
            .received_from("exp")
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].payload, Bytes::from_static(b"fresh"));
        let left = sent[0].properties.message_expiry_interval.unwrap();
        assert!((399..=400).contains(&left), "{left}");
        assert_eq!(mgr.stats().expired, 1);
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_publishes_under_a_full_quota_does_not_deadlock() {
    within(async {
        let server = TestServer::builder()
            .receive_maximum(1)
            .start()
            .await
            .unwrap();
        let net = Net::new(server).await;
        let cfg = config(&net, &["mqtt://only"], "echo").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let echo = mgr.clone();
        mgr.add_on_publish_received(move |m| {
            // Never waits: the handles go to the test, which awaits them.
            let h = echo.start_publish(msg("echo/out", QoS::AtLeastOnce, m.payload().clone()));
            let _ = tx.send(h);
        });
        mgr.subscribe(
            vec![Subscription::new(
                "echo/in",
                SubscriptionOptions::qos(QoS::AtLeastOnce),
            )],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();
        for i in 0..50u32 {
            net.server
                .publish(msg("echo/in", QoS::AtLeastOnce, i.to_string()));
        }
        for _ in 0..50 {
            let h = rx.recv().await.unwrap().unwrap();
            assert!(h.await.unwrap().is_success());
        }
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn disconnect_stops_everything_and_done_reports_it() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let cfg = config(&net, &["mqtt://only"], "bye").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        let _ = mgr.await_connection().await.unwrap();
        // Under load: many messages in flight when the stop comes.
        for i in 0..500u32 {
            let _ = mgr.start_publish(msg("l", QoS::AtLeastOnce, i.to_string()));
        }
        mgr.disconnect().await.unwrap();
        assert!(mgr.done().await.is_ok());
        assert_eq!(mgr.state(), ConnectionState::Stopped);
        net.server.wait_connection_count(0).await;
        let late = mgr
            .publish_via_queue(msg("l", QoS::AtLeastOnce, "late"))
            .await
            .expect("the queue still takes messages for the next run");
        assert!(matches!(
            late.outcome().await,
            Err(autopaho::Error::Stopped)
        ));
        assert!(mgr.await_connection().await.is_err());
        // Dropping every handle of a running manager stops it too.
        let cfg = config(&net, &["mqtt://only"], "dropped").build().unwrap();
        let other = ConnectionManager::start(cfg, session(0), queue());
        let _ = other.await_connection().await.unwrap();
        drop(other);
        net.server.wait_connection_count(0).await;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn the_connect_hook_sees_each_attempt_and_may_skip_a_server_and_the_disconnect_hook_says_how_to_leave(
) {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&seen);
        let cfg = config(&net, &["mqtt://skipped", "mqtt://good"], "hooks")
            .on_connect(move |url, opts| {
                s2.lock().unwrap().push(url.host().to_owned());
                if url.host() == "skipped" {
                    return None;
                }
                // A fresh credential for every attempt.
                Some(
                    ConnectOptions::builder()
                        .client_id(opts.client_id())
                        .username("svc")
                        .password("token-1")
                        .build()
                        .unwrap(),
                )
            })
            .on_disconnect(|| {
                paho::packets::Disconnect::new(
                    paho::packets::DisconnectReasonCode::DisconnectWithWillMessage,
                )
            })
            .build()
            .unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        let _ = mgr.await_connection().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["skipped", "good"]);
        let hosts: Vec<String> = net.attempts().into_iter().map(|(h, _)| h).collect();
        assert_eq!(hosts, vec!["good"], "a skipped server is not dialled");
        let connect = net
            .server
            .received()
            .into_iter()
            .find_map(|p| match p {
                Packet::Connect(c) => Some(c),
                _ => None,
            })
            .unwrap();
        assert_eq!(connect.password.as_deref(), Some(&b"token-1"[..]));
        mgr.disconnect().await.unwrap();
        let reason = net.server.received().into_iter().find_map(|p| match p {
            Packet::Disconnect(d) => Some(d.reason_code.as_u8()),
            _ => None,
        });
        assert_eq!(reason, Some(0x04));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_that_drops_the_oldest_says_so() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        net.down.store(true, Ordering::SeqCst);
        let limits = paho_queue::Limits::builder()
            .max_entries(3)
            .overflow(paho_queue::Overflow::DropOldest)
            .build()
            .unwrap();
        let q = Arc::new(MemoryQueue::new(limits));
        let cfg = config(&net, &["mqtt://only"], "full").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), q);
        let mut events = mgr.events();
        let mut seqs = Vec::new();
        for i in 0..5u32 {
            seqs.push(
                mgr.publish_via_queue(msg("f", QoS::AtLeastOnce, i.to_string()))
                    .await
                    .unwrap()
                    .seq(),
            );
        }
        let mut dropped = Vec::new();
        while dropped.len() < 2 {
            if let Event::QueueOverflow { dropped: d } = events.recv().await.unwrap() {
                dropped.extend(d);
            }
        }
        assert_eq!(dropped, seqs[..2].to_vec());
        assert_eq!(mgr.stats().overflowed, 2);
        assert_eq!(mgr.stats().queue_len, 3);
        net.down.store(false, Ordering::SeqCst);
        let _ = mgr.await_connection().await.unwrap();
        mgr.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_handler_holding_a_weak_handle_does_not_keep_the_manager_alive() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let cfg = config(&net, &["mqtt://only"], "weak").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        let weak = mgr.downgrade();
        mgr.add_on_publish_received(move |m| {
            if let Some(mgr) = weak.upgrade() {
                let _ = mgr.start_publish(msg("echo", QoS::AtMostOnce, m.payload().clone()));
            }
        });
        let _ = mgr.await_connection().await.unwrap();
        let probe = mgr.downgrade();
        drop(mgr);
        net.server.wait_connection_count(0).await;
        assert!(probe.upgrade().is_none());
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_messages_offline_stay_within_the_queue_limits() {
    within(async {
        // The server's event log must hold every PUBLISH and its PUBACK.
        let server = TestServer::builder()
            .event_limit(1_000_000)
            .start()
            .await
            .unwrap();
        let net = Net::new(server).await;
        net.down.store(true, Ordering::SeqCst);
        let limits = paho_queue::Limits::builder()
            .max_entries(1000)
            .max_bytes(64 * 1024)
            .overflow(paho_queue::Overflow::Block)
            .build()
            .unwrap();
        let q = Arc::new(MemoryQueue::new(limits));
        let cfg = config(&net, &["mqtt://only"], "bulk").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), Arc::clone(&q));
        const N: u32 = 100_000;
        let producer = tokio::spawn({
            let mgr = mgr.clone();
            async move {
                for i in 0..N {
                    // Blocks while the queue is full: the backlog is bounded by its limits.
                    drop(
                        mgr.publish_via_queue(msg("b", QoS::AtLeastOnce, i.to_string()))
                            .await
                            .unwrap(),
                    );
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!producer.is_finished());
        let s = mgr.stats();
        assert!(s.queue_len <= 1000 && s.queue_bytes <= 64 * 1024, "{s:?}");
        assert!(s.queue_len > 0);
        net.down.store(false, Ordering::SeqCst);
        producer.await.unwrap();
        while mgr.stats().sent_from_queue < u64::from(N) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(mgr.stats().queue_len <= 1000);
        }
        mgr.disconnect().await.unwrap();
        let got = received_payloads(&net.server, "bulk");
        assert_eq!(got.len(), N as usize);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, p)| p == &Bytes::from(i.to_string())));
    })
    .await
}

#[test]
fn the_public_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ManagerConfig::builder(servers(&["mqtt://x"]))
            .build()
            .unwrap();
        let mgr = ConnectionManager::start_in_memory(cfg, SessionConfig::new());
        send(&mgr.publish_via_queue(msg("t", QoS::AtLeastOnce, "x")));
        send(&mgr.publish(msg("t", QoS::AtLeastOnce, "x")));
        send(&mgr.subscribe(vec![], SubscribeProperties::default()));
        send(&mgr.unsubscribe(vec![]));
        send(&mgr.await_connection());
        send(&mgr.disconnect());
        send(&mgr.done());
        send(&mgr.reauthenticate());
    });
}

#[tokio::test(start_paused = true)]
async fn session_lost_is_reported_whenever_a_resume_was_asked_for_and_refused() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let resume = ConnectOptions::builder()
            .client_id("restarted")
            .clean_start(false)
            .build()
            .unwrap();
        // A restarted process resuming its session: the server has none.
        let cfg = config(&net, &["mqtt://only"], "restarted")
            .connect_options(resume)
            .build()
            .unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let mut events = mgr.events();
        loop {
            match events.recv().await.unwrap() {
                Event::SessionLost => break,
                Event::Connected { connack, .. } => assert!(!connack.session_present),
                _ => {}
            }
        }
        mgr.disconnect().await.unwrap();
        // A clean start asked for no session: nothing was lost.
        let cfg = config(&net, &["mqtt://only"], "fresh").build().unwrap();
        let mgr = ConnectionManager::start(cfg, session(3600), queue());
        let mut events = mgr.events();
        let _ = mgr.await_connection().await.unwrap();
        mgr.disconnect().await.unwrap();
        while let Ok(e) = events.try_recv() {
            assert!(!matches!(e, Event::SessionLost), "{e:?}");
        }
    })
    .await
}

/// The event channel keeps the configured number of events for a receiver that does not
/// read (its room is reserved up front, per manager, so the default is small): six refusing
/// servers make more events than a capacity of 4, and the receiver hears `Lagged` with the
/// count it lost, then the newest four.
#[tokio::test(start_paused = true)]
async fn a_receiver_that_falls_behind_the_event_capacity_hears_lagged() {
    within(async {
        let net = Net::new(TestServer::start().await.unwrap()).await;
        let urls = [
            "mqtt://refuse-1",
            "mqtt://refuse-2",
            "mqtt://refuse-3",
            "mqtt://refuse-4",
            "mqtt://refuse-5",
            "mqtt://good",
        ];
        let cfg = config(&net, &urls, "lag")
            .event_capacity(4)
            .build()
            .unwrap();
        let mgr = ConnectionManager::start(cfg, session(0), queue());
        let mut events = mgr.events();
        mgr.await_connection().await.unwrap();
        // Connecting + ConnectFailed for each refusal, then Connecting + Connected: 12 events.
        match events.recv().await {
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                assert!(n >= 8, "lost {n}")
            }
            other => panic!("expected Lagged, got {other:?}"),
        }
        let mut kept = Vec::new();
        while let Ok(e) = events.try_recv() {
            kept.push(e);
        }
        assert!(kept.len() <= 4, "{kept:?}");
        assert!(
            matches!(kept.last(), Some(Event::Connected { .. })),
            "{kept:?}"
        );
        assert_eq!(
            autopaho::DEFAULT_EVENT_CAPACITY,
            64,
            "the documented default"
        );
        mgr.disconnect().await.unwrap();
    })
    .await
}
