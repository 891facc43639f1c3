//! Reliability campaign, scenarios 1 and 3 (first part): QoS 1 and QoS 2 messages from an
//! `autopaho` publisher to an `autopaho` subscriber, both on persistent sessions, both
//! through the fault-injecting proxy (`paho_testserver::proxy`) that cuts every connection
//! 50-500 ms after it opens, to a real mosquitto spawned by the test; then the same traffic
//! while mosquitto (with persistence) is stopped and started again twice.
//!
//! Every payload is the message's number; the subscriber counts the arrivals of each. QoS 1
//! must lose nothing, QoS 2 must lose nothing and duplicate nothing, and every
//! `QueuedPublish::outcome()` must resolve successfully.
//!
//! mosquitto runs on the real clock, so these tests do too. They never assert on durations:
//! the only bound is a hang guard that fires when nothing has progressed for
//! [`STALL`]. Skips with a notice when mosquitto is absent, unless
//! `PAHO_REQUIRE_MOSQUITTO=1`. `PAHO_CAMPAIGN_LONG=1` runs ten times the messages;
//! `CAMPAIGN_PER_QOS=N` sets scenario 1's messages per QoS (for quick runs while breaking
//! things on purpose).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod campaign;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autopaho::{Backoff, ConnectionManager, Event, ManagerConfig, Servers};
use bytes::Bytes;
use campaign::{scale, Receipts};
use paho::packets::{Publish, QoS, SubscribeProperties, Subscription, SubscriptionOptions};
use paho::session::{MemoryStore, SessionConfig};
use paho::{ConnectOptions, SessionHandle};
use paho_queue::MemoryQueue;
use paho_testserver::mosquitto::{self, Mosquitto, MosquittoBuilder};
use paho_testserver::proxy::Proxy;

/// The hang guard: the run fails when neither a receipt nor an outcome has come for this
/// long (real time; a healthy run progresses every few milliseconds).
const STALL: Duration = Duration::from_secs(30);

/// The cut interval of scenario 1 (the 50-500 ms).
const CUT_MIN: Duration = Duration::from_millis(50);
const CUT_MAX: Duration = Duration::from_millis(500);

/// mosquitto with no cap on what it queues for an offline subscriber (its default, 1,000,
/// drops QoS 1/2 messages beyond it while a cut subscriber reconnects).
fn broker() -> Option<MosquittoBuilder> {
    Some(mosquitto::require()?.config("max_queued_messages 0"))
}

/// Quick reconnects: the cuts come every 50-500 ms, so a connection rarely lives long enough
/// for the default reset (30 s); the backoff starts over after 40 ms up.
fn config(url: &str, id: &str) -> ManagerConfig {
    ManagerConfig::builder(Servers::parse([url]).unwrap())
        .connect_options(
            ConnectOptions::builder()
                .client_id(id)
                // Persistent from the first connection on (mosquitto saves only the sessions
                // of clients whose current connection had Clean Start 0).
                .clean_start(false)
                // mosquitto keeps more QoS 2 deliveries outstanding than a small Receive
                // Maximum allows (FIELD-NOTES).
                .receive_maximum(u16::MAX)
                .build()
                .unwrap(),
        )
        .backoff(
            Backoff::exponential()
                .initial(Duration::from_millis(10))
                .max(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .reset_backoff_after(Duration::from_millis(40))
        .build()
        .unwrap()
}

fn session() -> SessionHandle<MemoryStore> {
    SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600))
}

/// Message `i`: even numbers QoS 1, odd ones QoS 2, each on its own topic.
fn qos_of(i: usize) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

fn message(i: usize) -> Publish {
    let qos = qos_of(i);
    Publish {
        topic: if qos == QoS::AtLeastOnce {
            "campaign/q1"
        } else {
            "campaign/q2"
        }
        .into(),
        qos,
        payload: Bytes::from(i.to_string()),
        ..Default::default()
    }
}

/// How long a manager was without a connection each time: from `Disconnected` to the next
/// `Connected`.
#[derive(Clone, Default)]
struct Outages {
    gaps: Arc<Mutex<Vec<Duration>>>,
    /// Reconnects that met Session Present = 0.
    session_lost: Arc<AtomicU64>,
}

impl Outages {
    fn watch(mgr: &ConnectionManager) -> Outages {
        let out = Outages::default();
        let o = out.clone();
        let mut events = mgr.events();
        tokio::spawn(async move {
            let mut down: Option<Instant> = None;
            loop {
                match events.recv().await {
                    Ok(Event::Disconnected { .. }) => down = down.or(Some(Instant::now())),
                    Ok(Event::Connected { connack, .. }) => {
                        if let Some(d) = down.take() {
                            o.gaps.lock().unwrap().push(d.elapsed());
                            // A reconnect (not the first connection, which has no session
                            // to find) must find the session.
                            if !connack.session_present {
                                o.session_lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        out
    }

    /// (count, mean, max).
    fn summary(&self) -> (usize, Duration, Duration) {
        let v = self.gaps.lock().unwrap();
        let max = v.iter().max().copied().unwrap_or_default();
        let mean = if v.is_empty() {
            Duration::ZERO
        } else {
            v.iter().sum::<Duration>() / v.len() as u32
        };
        (v.len(), mean, max)
    }
}

/// What one run measured.
struct Figures {
    messages: usize,
    elapsed: Duration,
    cuts: u64,
    publisher_connects: u64,
    subscriber_connects: u64,
    publisher_outages: (usize, Duration, Duration),
    subscriber_outages: (usize, Duration, Duration),
    qos1_duplicates: usize,
}

/// Sends `2 * per_qos` messages (half QoS 1, half QoS 2) through a proxy cutting every
/// connection after 50-500 ms, and stops and restarts `m` once the subscriber has received
/// each fraction of `restarts_at`. Asserts that nothing is lost, no QoS 2 message is
/// duplicated and every outcome succeeds.
async fn cut_traffic(m: &mut Mosquitto, per_qos: usize, restarts_at: &[f64], tag: &str) -> Figures {
    let n = 2 * per_qos;
    let proxy = Proxy::listen(m.addr(), 0x5EED_0001).await.unwrap();
    let url = format!("mqtt://{}", proxy.addr().unwrap());
    proxy.set_cuts(CUT_MIN, CUT_MAX);

    let receipts = Receipts::new(n);
    let sub = ConnectionManager::start_in_memory(
        config(&url, &format!("{tag}-sub")),
        SessionConfig::new().session_expiry_interval(3600),
    );
    let sub_outages = Outages::watch(&sub);
    let r = receipts.clone();
    sub.add_on_publish_received(move |msg| {
        let i = std::str::from_utf8(msg.payload())
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        match i {
            Some(i) if i < r.len() && msg.qos() == qos_of(i) => r.record(i),
            _ => {
                r.strange.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Through the cutting proxy too: the manager retries until the SUBACK comes.
    let ack = sub
        .subscribe(
            vec![Subscription::new(
                "campaign/#",
                SubscriptionOptions::qos(QoS::ExactlyOnce),
            )],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();
    assert!(ack.reason_codes.iter().all(|c| c.as_u8() < 0x80), "{ack:?}");

    let publisher_session = session();
    let publisher = ConnectionManager::start(
        config(&url, &format!("{tag}-pub")),
        publisher_session.clone(),
        Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded())),
    );
    let pub_outages = Outages::watch(&publisher);
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));

    let start = Instant::now();
    for i in 0..n {
        let h = publisher.publish_via_queue(message(i)).await.unwrap();
        let (ok, bad) = (succeeded.clone(), failed.clone());
        tokio::spawn(async move {
            match h.outcome().await {
                Ok(o) if o.is_success() => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                other => bad.lock().unwrap().push((i, format!("{other:?}"))),
            }
        });
    }

    let mut restarts = restarts_at.iter().map(|f| (f * n as f64) as usize);
    let mut next_restart = restarts.next();
    let resolved = || succeeded.load(Ordering::Relaxed) as usize + failed.lock().unwrap().len();
    let mut last = (receipts.distinct(), resolved(), Instant::now());
    while receipts.distinct() < n || resolved() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(at) = next_restart.filter(|at| receipts.distinct() >= *at) {
            // SIGTERM (mosquitto saves its state), a pause in which the proxy's upstream
            // connects are refused, and a start on the same port and files.
            m.stop().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            m.restart().await.unwrap();
            eprintln!(
                "{tag}: mosquitto restarted at {at} received ({} of {n} outcomes resolved)",
                resolved()
            );
            next_restart = restarts.next();
        }
        let now = (receipts.distinct(), resolved());
        if now != (last.0, last.1) {
            last = (now.0, now.1, Instant::now());
        }
        assert!(
            last.2.elapsed() < STALL,
            "{tag}: no progress for {STALL:?}: {} of {n} received (missing QoS 1 {:?}, QoS 2 \
             {:?}), {} outcomes resolved; publisher {:?}; subscriber {:?}; proxy {:?}; \
             mosquitto log: {}",
            receipts.distinct(),
            receipts.missing(|i| qos_of(i) == QoS::AtLeastOnce),
            receipts.missing(|i| qos_of(i) == QoS::ExactlyOnce),
            resolved(),
            publisher.stats(),
            sub.stats(),
            proxy.stats(),
            m.log()
        );
    }
    let elapsed = start.elapsed();
    assert!(next_restart.is_none(), "{tag}: a restart did not happen");
    proxy.stop_cuts();
    // Late duplicates, if any, would come now (a QoS 2 resend after the last cut).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "{tag}: failed outcomes: {failed:?}");
    let strange = receipts.strange.load(Ordering::Relaxed);
    assert_eq!(strange, 0, "{tag}: arrivals with a bad number or QoS");
    let q1 = |i: usize| qos_of(i) == QoS::AtLeastOnce;
    let q2 = |i: usize| qos_of(i) == QoS::ExactlyOnce;
    let lost1 = receipts.missing(q1);
    let lost2 = receipts.missing(q2);
    assert!(lost1.is_empty(), "{tag}: QoS 1 lost: {lost1:?}");
    assert!(lost2.is_empty(), "{tag}: QoS 2 lost: {lost2:?}");
    let dup2 = receipts.duplicated(q2);
    assert!(dup2.is_empty(), "{tag}: QoS 2 duplicated: {dup2:?}");
    let qos1_duplicates = receipts.duplicated(q1).len();

    for (who, o) in [("publisher", &pub_outages), ("subscriber", &sub_outages)] {
        let lost = o.session_lost.load(Ordering::Relaxed);
        assert_eq!(lost, 0, "{tag}: the {who}'s persistent session was lost");
    }
    let figures = Figures {
        messages: n,
        elapsed,
        cuts: proxy.stats().cuts,
        publisher_connects: publisher.stats().connects,
        subscriber_connects: sub.stats().connects,
        publisher_outages: pub_outages.summary(),
        subscriber_outages: sub_outages.summary(),
        qos1_duplicates,
    };
    publisher.disconnect().await.unwrap();
    let stats = publisher_session.stats().expect("the session is free");
    assert_eq!(stats.unfinished, 0, "{tag}: {stats:?}");
    sub.disconnect().await.unwrap();
    assert!(
        figures.cuts > 0 && figures.publisher_connects > 1 && figures.subscriber_connects > 1,
        "{tag}: the proxy did not cut anything"
    );
    figures
}

fn print(tag: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{tag}: {} messages ({} QoS 1 + {} QoS 2) in {:.1} s ({:.0} msg/s); proxy cuts {}; \
         reconnects: publisher {} (outage mean {:.0} ms, max {:.0} ms), subscriber {} (mean \
         {:.0} ms, max {:.0} ms); lost 0; QoS 2 duplicated 0; QoS 1 duplicated {}",
        f.messages,
        f.messages / 2,
        f.messages / 2,
        f.elapsed.as_secs_f64(),
        f.messages as f64 / f.elapsed.as_secs_f64(),
        f.cuts,
        f.publisher_connects - 1,
        ms(f.publisher_outages.1),
        ms(f.publisher_outages.2),
        f.subscriber_connects - 1,
        ms(f.subscriber_outages.1),
        ms(f.subscriber_outages.2),
        f.qos1_duplicates,
    );
}

/// The two tests share the machine's two cores with mosquitto: one at a time, so that
/// neither starves the other (the figures are per scenario).
/// (A tokio mutex: it is held across awaits, and a failed test does not poison it.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The messages of scenario 1 per QoS (see the README's `--long` mode).
fn scenario_1_size() -> usize {
    20_000 * scale() as usize
}

/// Scenario 1: 20,000 QoS 1 and 20,000 QoS 2 messages through cuts every 50-500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_every_50_to_500_ms_lose_nothing_and_duplicate_no_qos2() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(b) = broker() else { return };
    let mut m = b.start().await.expect("mosquitto failed to start");
    let per_qos = std::env::var("CAMPAIGN_PER_QOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(scenario_1_size);
    let f = cut_traffic(&mut m, per_qos, &[], "cuts").await;
    print("scenario 1 (cuts)", &f);
}

/// Scenario 3, first part: scenario 1's traffic (a fifth of it) with mosquitto, persistence
/// on, stopped (SIGTERM) and started again twice, at a third and two thirds of the
/// receipts, while the proxy keeps cutting. Both sessions come back (no `SessionLost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_mosquitto_restarted_twice_under_cuts_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(b) = broker() else { return };
    let mut m = b
        .persistence(true)
        .start()
        .await
        .expect("mosquitto failed to start");
    let f = cut_traffic(
        &mut m,
        scenario_1_size() / 5,
        &[1.0 / 3.0, 2.0 / 3.0],
        "restarts",
    )
    .await;
    print("scenario 3a (2 persistent restarts + cuts)", &f);
}
