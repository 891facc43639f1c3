//! The connection manager against real mosquitto processes spawned by the tests: failover
//! from a killed first server to a second, restarts without persistence while QoS 1 and 2
//! messages are in flight (with persistence: the campaign's `campaign_cuts.rs`), shared
//! subscriptions over two managers, and mutual TLS with a reconnect.
//!
//! mosquitto runs outside tokio's clock, so these tests run on real time. They never assert
//! on durations: waits are polls bounded by a deadline that only a hang reaches, and the
//! whole body by [`common::bounded`] (120 s). Skips with a notice when mosquitto is absent,
//! unless `PAHO_REQUIRE_MOSQUITTO=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopaho::{Backoff, ConnectionManager, Connector, Event, ManagerConfig, Servers, TlsOptions};
use bytes::Bytes;
use common::{bounded, Ca};
use paho::packets::{Publish, QoS, SubscribeProperties, Subscription, SubscriptionOptions};
use paho::session::{MemoryStore, SessionConfig};
use paho::{ConnectOptions, SessionHandle};
use paho_queue::MemoryQueue;
use paho_testserver::mosquitto::{self, Mosquitto, MosquittoBuilder, TlsListener};
use tokio::sync::broadcast;

/// How long a condition may take to come true before the test fails with a description
/// (real time; only a hang reaches it, never an assertion on speed).
const WAIT: Duration = Duration::from_secs(10);

/// mosquitto with the options these tests need: no cap on the messages it queues for a
/// subscriber (its default, 1,000, drops QoS 1/2 messages beyond it while a subscriber is
/// reconnecting).
fn broker() -> Option<MosquittoBuilder> {
    Some(mosquitto::require()?.config("max_queued_messages 0"))
}

async fn start(b: MosquittoBuilder) -> Mosquitto {
    b.start().await.expect("mosquitto failed to start")
}

fn url(m: &Mosquitto) -> String {
    format!("mqtt://127.0.0.1:{}", m.port())
}

/// Small delays, so that reconnects are quick.
fn backoff() -> Backoff {
    Backoff::exponential()
        .initial(Duration::from_millis(50))
        .max(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// A manager configuration for `urls` with client id `id`.
///
/// - Receive Maximum 65,535: mosquitto keeps more QoS 2 deliveries outstanding than a small
///   one allows (FIELD-NOTES).
/// - Clean Start 0 from the first connection on (the ids are fresh, so there is nothing to
///   resume): mosquitto 2.0.11 saves at shutdown only the sessions of clients whose current
///   connection had Clean Start 0; a client still on its first, Clean Start 1, connection
///   loses its session in a restart even with persistence and a Session Expiry Interval.
fn config(urls: &[&str], id: &str) -> autopaho::ManagerConfigBuilder {
    ManagerConfig::builder(Servers::parse(urls.iter().copied()).unwrap())
        .connect_options(
            ConnectOptions::builder()
                .client_id(id)
                .clean_start(false)
                .receive_maximum(u16::MAX)
                .build()
                .unwrap(),
        )
        .backoff(backoff())
}

/// A manager with a session in memory that the broker keeps for an hour.
fn manager(config: autopaho::ManagerConfigBuilder) -> ConnectionManager {
    ConnectionManager::start_in_memory(
        config.build().unwrap(),
        SessionConfig::new().session_expiry_interval(3600),
    )
}

fn qos_of(i: u32) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

fn msg(topic: &str, i: u32, qos: QoS) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: Bytes::from(i.to_string()),
        ..Default::default()
    }
}

/// What a subscriber received: how many times each message number arrived.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<HashMap<u32, u32>>>);

impl Inbox {
    /// Records every message `mgr` receives (the handler survives reconnects).
    fn attach(mgr: &ConnectionManager) -> Inbox {
        let inbox = Inbox::default();
        let i = inbox.clone();
        mgr.add_on_publish_received(move |m| {
            let n: u32 = std::str::from_utf8(m.payload()).unwrap().parse().unwrap();
            *i.0.lock().unwrap().entry(n).or_default() += 1;
        });
        inbox
    }

    fn counts(&self) -> HashMap<u32, u32> {
        self.0.lock().unwrap().clone()
    }

    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn has_all(&self, range: std::ops::Range<u32>) -> bool {
        let m = self.0.lock().unwrap();
        range.into_iter().all(|i| m.contains_key(&i))
    }

    fn missing(&self, range: std::ops::Range<u32>) -> Vec<u32> {
        let m = self.0.lock().unwrap();
        range.into_iter().filter(|i| !m.contains_key(i)).collect()
    }
}

/// Polls `cond` until it holds; fails with `what` (and the state `show` gives) after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool, show: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            show()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads events until `pred` matches one, and returns it; fails after [`WAIT`].
async fn next_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for the event: {what}"))
}

/// A subscriber: a manager on `url` whose handler records into an [`Inbox`], subscribed to
/// `filter` (through the manager, so that it is made again if the broker forgets it).
async fn subscriber(url: &str, id: &str, filter: &str, qos: QoS) -> (ConnectionManager, Inbox) {
    let mgr = manager(config(&[url], id));
    let inbox = Inbox::attach(&mgr);
    subscribe(&mgr, filter, qos).await;
    (mgr, inbox)
}

async fn subscribe(mgr: &ConnectionManager, filter: &str, qos: QoS) {
    let ack = mgr
        .subscribe(
            vec![Subscription::new(filter, SubscriptionOptions::qos(qos))],
            SubscribeProperties::default(),
        )
        .await
        .unwrap();
    assert!(ack.reason_codes.iter().all(|c| c.as_u8() < 0x80), "{ack:?}");
}

/// How many `QueuedPublish::outcome()`s may stay unresolved per link loss of the publisher.
/// This file found that one could (the queue pump was cancelled with the message's
/// `PublishHandle` when the link closed while it waited for the store write; see
/// `the_outcome_of_a_message_handed_over_as_the_link_drops_resolves`), and it was fixed: none.
const STRANDED_PER_LINK_LOSS: usize = 0;

/// How one `QueuedPublish::outcome()` ended, and how many connections the publisher had made
/// by then (1: acknowledged by the first connection).
#[derive(Debug, Clone)]
struct Outcome {
    result: Result<(), String>,
    connects: u64,
}

/// A publishing manager, with its session (to check at the end that nothing is unfinished)
/// and the outcome of every message it queued, each awaited in its own task.
struct Publisher {
    mgr: ConnectionManager,
    session: SessionHandle<MemoryStore>,
    queued: Vec<u32>,
    outcomes: Arc<Mutex<HashMap<u32, Outcome>>>,
}

/// What became of the publisher's messages, once it has stopped.
#[derive(Debug)]
struct Report {
    outcomes: HashMap<u32, Outcome>,
    /// Queued, but the outcome never resolved (the bug above).
    stranded: Vec<u32>,
}

impl Publisher {
    fn start(config: autopaho::ManagerConfigBuilder) -> Publisher {
        let session = SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600));
        let mgr = ConnectionManager::start(
            config.build().unwrap(),
            session.clone(),
            Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded())),
        );
        Publisher {
            mgr,
            session,
            queued: Vec::new(),
            outcomes: Arc::default(),
        }
    }

    /// Queues messages `range` on `topic` (QoS by [`qos_of`] unless `qos` is given).
    async fn queue(&mut self, topic: &str, range: std::ops::Range<u32>, qos: Option<QoS>) {
        for i in range {
            let q = qos.unwrap_or_else(|| qos_of(i));
            let h = self.mgr.publish_via_queue(msg(topic, i, q)).await.unwrap();
            self.queued.push(i);
            let (outcomes, mgr) = (Arc::clone(&self.outcomes), self.mgr.clone());
            tokio::spawn(async move {
                let result = match h.outcome().await {
                    Ok(o) if o.is_success() => Ok(()),
                    Ok(o) => Err(format!("{o:?}")),
                    Err(e) => Err(e.to_string()),
                };
                let connects = mgr.stats().connects;
                outcomes
                    .lock()
                    .unwrap()
                    .insert(i, Outcome { result, connects });
            });
        }
    }

    /// Waits until every outcome of `range` resolved, successfully, with at most `stranded`
    /// of them never resolving (see [`STRANDED_PER_LINK_LOSS`]): when that many are still
    /// pending, until none has resolved for a second (an exchange in flight takes
    /// milliseconds; a stranded outcome never resolves).
    async fn wait_outcomes(&self, range: std::ops::Range<u32>, stranded: usize) {
        let resolved = || {
            let o = self.outcomes.lock().unwrap();
            range.clone().filter(|i| o.contains_key(i)).count()
        };
        wait_until(
            "the outcomes",
            || resolved() + stranded >= range.len(),
            || {
                format!(
                    "{} of {} resolved; {:?}",
                    resolved(),
                    range.len(),
                    self.mgr.stats()
                )
            },
        )
        .await;
        let mut last = (resolved(), std::time::Instant::now());
        while last.0 < range.len() && last.1.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = resolved();
            if now != last.0 {
                last = (now, std::time::Instant::now());
            }
        }
        let o = self.outcomes.lock().unwrap();
        let failed: Vec<_> = range
            .clone()
            .filter_map(|i| {
                o.get(&i)
                    .filter(|o| o.result.is_err())
                    .map(|o| (i, o.clone()))
            })
            .collect();
        assert!(failed.is_empty(), "failed outcomes: {failed:?}");
    }

    /// Stops the manager, checks that its session holds nothing unfinished, and reports.
    /// An outcome still pending then never resolves: every exchange has completed.
    async fn finish(self) -> Report {
        self.mgr.disconnect().await.unwrap();
        let stats = self
            .session
            .stats()
            .expect("the stopped manager let go of the session");
        assert_eq!(stats.unfinished, 0, "{stats:?}");
        assert_eq!(self.mgr.stats().queue_len, 0);
        // Whatever had resolved has been recorded by now (the tasks only record it).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let outcomes = self.outcomes.lock().unwrap().clone();
        let stranded = self
            .queued
            .iter()
            .copied()
            .filter(|i| !outcomes.contains_key(i))
            .collect();
        Report { outcomes, stranded }
    }
}

impl Report {
    /// Every outcome that resolved was successful; at most `tolerated` never resolved, and
    /// those were delivered all the same (`delivered`).
    fn check(&self, tolerated: usize, delivered: impl Fn(u32) -> bool) {
        let failed: Vec<_> = self
            .outcomes
            .iter()
            .filter(|(_, o)| o.result.is_err())
            .collect();
        assert!(failed.is_empty(), "failed outcomes: {failed:?}");
        assert!(
            self.stranded.len() <= tolerated,
            "outcomes that never resolved: {:?}",
            self.stranded
        );
        let lost: Vec<u32> = self
            .stranded
            .iter()
            .copied()
            .filter(|i| !delivered(*i))
            .collect();
        assert!(lost.is_empty(), "stranded and not delivered: {lost:?}");
    }
}

/// Numbers received more than once, among those of `qos`.
fn duplicates(counts: &HashMap<u32, u32>, qos: QoS) -> Vec<u32> {
    let mut d: Vec<u32> = counts
        .iter()
        .filter(|(i, n)| qos_of(**i) == qos && **n > 1)
        .map(|(i, _)| *i)
        .collect();
    d.sort_unstable();
    d
}

// ------------------------------------------------------------------------------ 1. failover

/// Two brokers without persistence; the publisher's list is [first, second]. The first is
/// SIGKILLed while messages are in flight: the manager fails over to the second (the events
/// say so: the first refuses, the second accepts with Session Present = 0), and every
/// message queued before, during and after the switch arrives, with one exception the
/// client cannot help: a message the killed broker had already acknowledged, and then lost
/// with its memory before forwarding it. So:
/// - every message the first broker did not acknowledge (all those acknowledged on the
///   second connection, and all those queued from the kill on) arrives at the subscriber
///   on the second broker, no QoS 2 message twice there;
/// - every outcome resolves successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_second_mosquitto_when_the_first_is_killed() {
    bounded(async {
        let Some(b) = broker() else { return };
        const N: u32 = 900;
        let mut first = start(b.clone()).await;
        let second = start(b).await;
        let (u1, u2) = (url(&first), url(&second));
        let (sub1, inbox1) = subscriber(&u1, "fo-sub-1", "fo/#", QoS::ExactlyOnce).await;
        let (sub2, inbox2) = subscriber(&u2, "fo-sub-2", "fo/#", QoS::ExactlyOnce).await;

        let mut publisher = Publisher::start(config(&[&u1, &u2], "fo-pub"));
        let c = publisher.mgr.await_connection().await.unwrap();
        assert_eq!(c.connack().reason_code.as_u8(), 0);
        drop(c);
        // From here on (the first Connected is behind us).
        let mut events = publisher.mgr.events();
        // Before: queued on the first broker; the kill comes while many are in flight.
        publisher.queue("fo/m", 0..300, None).await;
        wait_until(
            "the first 100 at the first broker's subscriber",
            || inbox1.distinct() >= 100,
            || format!("{} received", inbox1.distinct()),
        )
        .await;
        first.kill().await.unwrap();
        let at_kill = inbox1.distinct();
        // During: queued while the manager notices, backs off and tries the list again.
        publisher.queue("fo/m", 300..600, None).await;
        let mut refused_first = false;
        let server = loop {
            match next_event(&mut events, "Connected to the second broker", |e| {
                matches!(e, Event::Connected { .. } | Event::ConnectFailed { .. })
            })
            .await
            {
                Event::ConnectFailed { server, .. } => {
                    assert_eq!(server, u1, "only the killed broker refuses");
                    refused_first = true;
                }
                Event::Connected { server, connack } => {
                    assert!(!connack.session_present, "a new broker has no session");
                    break server;
                }
                _ => unreachable!(),
            }
        };
        assert_eq!(server, u2, "the manager moved to the second broker");
        assert!(
            refused_first,
            "the first broker was tried (and refused) first"
        );
        next_event(&mut events, "SessionLost", |e| {
            matches!(e, Event::SessionLost)
        })
        .await;
        // After: on the second broker.
        publisher.queue("fo/m", 600..N, None).await;
        publisher.wait_outcomes(0..N, STRANDED_PER_LINK_LOSS).await;
        let by_first = |i: u32| {
            publisher
                .outcomes
                .lock()
                .unwrap()
                .get(&i)
                .is_some_and(|o| o.connects == 1)
        };
        // Known to have been acknowledged on the second connection, or queued after the kill.
        // (A stranded outcome, see STRANDED_PER_LINK_LOSS, says nothing: that message may have
        // been acknowledged by the first broker, and then lost with it.)
        let by_second = |i: u32| {
            publisher
                .outcomes
                .lock()
                .unwrap()
                .get(&i)
                .is_some_and(|o| o.connects == 2)
        };
        let must_reach_second: Vec<u32> = (0..N).filter(|i| *i >= 300 || by_second(*i)).collect();
        wait_until(
            "every message the first broker did not acknowledge, at the second",
            || {
                must_reach_second
                    .iter()
                    .all(|i| inbox2.counts().contains_key(i))
            },
            || {
                let c2 = inbox2.counts();
                let missing: Vec<_> = must_reach_second
                    .iter()
                    .filter(|i| !c2.contains_key(i))
                    .collect();
                format!("missing {missing:?}")
            },
        )
        .await;
        assert!((300..N).all(|i| !by_first(i)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (c1, c2) = (inbox1.counts(), inbox2.counts());
        let lost_with_first: Vec<u32> = (0..N)
            .filter(|i| !c1.contains_key(i) && !c2.contains_key(i))
            .collect();
        assert!(
            lost_with_first.iter().all(|i| !by_second(*i) && *i < 300),
            "{lost_with_first:?}"
        );
        let dup2_at_second = duplicates(&c2, QoS::ExactlyOnce);
        assert!(
            dup2_at_second.is_empty(),
            "QoS 2 twice at the second broker's subscriber: {dup2_at_second:?}"
        );
        let on_both = (0..N)
            .filter(|i| c1.contains_key(i) && c2.contains_key(i))
            .count();
        let acked_by_first = (0..N).filter(|i| by_first(*i)).count();
        let report = publisher.finish().await;
        // A stranded message may be one the first broker acknowledged and lost: no delivery
        // check for it.
        report.check(STRANDED_PER_LINK_LOSS, |_| true);
        eprintln!(
            "failover: {N} queued (300 before the kill, 300 during the switch, 300 after); \
             {at_kill} at the first broker's subscriber at the kill; {acked_by_first} \
             acknowledged by the first broker, {} by the second; {} received at the first and \
             {} at the second, {on_both} at both; lost with the killed broker after it \
             acknowledged them: {}; QoS 1 duplicates at the second {}, QoS 2 duplicates 0; \
             stranded outcomes (bug) {:?}",
            N as usize - acked_by_first - report.stranded.len(),
            c1.len(),
            c2.len(),
            lost_with_first.len(),
            duplicates(&c2, QoS::AtLeastOnce).len(),
            report.stranded,
        );
        sub2.disconnect().await.unwrap();
        drop(sub1); // Its broker is gone: dropping the last handle stops it.
    })
    .await;
}

// ---------------------------------------------------- 2. restarts with persistence, in flight

// mosquitto with persistence restarted twice while QoS 1 and 2 messages flow is scenario 3 of
// the reliability campaign, now in `campaign_cuts.rs`
// (`persistent_mosquitto_restarted_twice_under_cuts_loses_nothing`: the same traffic through a
// proxy that also cuts every connection every 50-500 ms).

// -------------------------------------------------- 3. restarts without persistence (SP = 0)

/// mosquitto without persistence restarted: it forgets both sessions (Session Present = 0,
/// then [`Event::SessionLost`] on both managers). The subscriber's subscription, made through
/// the manager, is made again, so messages published after the restart reach it. A second
/// restart with 1,000 messages in flight: the default session-lost policy republishes what
/// the session held, and every outcome resolves successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_without_persistence_forgets_the_session_and_the_manager_restores_it() {
    bounded(async {
        let Some(b) = broker() else { return };
        let mut m = start(b).await;
        let u = url(&m);
        let (sub, inbox) = subscriber(&u, "np-sub", "np/#", QoS::ExactlyOnce).await;
        let mut publisher = Publisher::start(config(&[&u], "np-pub"));
        let _ = publisher.mgr.await_connection().await.unwrap();
        let mut pub_events = publisher.mgr.events();
        let mut sub_events = sub.events();

        // Round 0 before any restart.
        publisher.queue("np/m", 0..200, None).await;
        publisher.wait_outcomes(0..200, 0).await;
        wait_until(
            "round 0",
            || inbox.has_all(0..200),
            || format!("missing {:?}", inbox.missing(0..200)),
        )
        .await;

        // Restart 1, between messages: nothing in flight.
        m.restart().await.unwrap();
        expect_session_lost(&mut pub_events, "publisher").await;
        expect_session_lost(&mut sub_events, "subscriber").await;
        // Resubscribed before the manager hands out the new connection.
        let _ = sub.await_connection().await.unwrap();
        publisher.queue("np/m", 200..400, None).await;
        publisher.wait_outcomes(200..400, 0).await;
        wait_until(
            "round 1, after the restart",
            || inbox.has_all(200..400),
            || format!("missing {:?}", inbox.missing(200..400)),
        )
        .await;

        // Restart 2, with messages in flight: the publisher's session-lost policy republishes
        // them. (Those published while the subscriber was not subscribed again are gone with
        // the broker's state, as MQTT says; only their outcomes are checked.)
        publisher.queue("np/m", 400..1400, None).await;
        wait_until(
            "some of the burst",
            || inbox.distinct() >= 450,
            || format!("{} received", inbox.distinct()),
        )
        .await;
        let resolved_at_restart = publisher.outcomes.lock().unwrap().len();
        m.restart().await.unwrap();
        expect_session_lost(&mut pub_events, "publisher").await;
        expect_session_lost(&mut sub_events, "subscriber").await;
        publisher
            .wait_outcomes(400..1400, STRANDED_PER_LINK_LOSS)
            .await;
        let _ = sub.await_connection().await.unwrap();
        publisher.queue("np/m", 1400..1600, None).await;
        publisher.wait_outcomes(1400..1600, 0).await;
        wait_until(
            "round 2, after the second restart",
            || inbox.has_all(1400..1600),
            || format!("missing {:?}", inbox.missing(1400..1600)),
        )
        .await;
        let counts = inbox.counts();
        let burst = (400..1400).filter(|i| counts.contains_key(i)).count();
        assert_eq!(publisher.mgr.stats().connects, 3);
        assert_eq!(sub.stats().connects, 3);
        let report = publisher.finish().await;
        // A stranded message of the burst may have gone to the broker before the subscriber
        // was subscribed again: its delivery cannot be checked.
        report.check(STRANDED_PER_LINK_LOSS, |i| {
            counts.contains_key(&i) || (400..1400).contains(&i)
        });
        eprintln!(
            "no persistence: 2 restarts, Session Present = 0 and SessionLost each time on both \
             managers; the 400 published around them (0..200 before, 200..400 and 1400..1600 \
             after a resubscription) all received; the burst of 1,000 in flight at restart 2 \
             ({resolved_at_restart} of 1,400 outcomes resolved by then): every resolved outcome \
             successful, stranded (bug) {:?}, {burst} of the burst reached the subscriber; \
             QoS 2 duplicates {}",
            report.stranded,
            duplicates(&counts, QoS::ExactlyOnce).len()
        );
        sub.disconnect().await.unwrap();
    })
    .await;
}

/// The next connection of a manager meets Session Present = 0: `Connected` (with it), then
/// `SessionLost`.
async fn expect_session_lost(events: &mut broadcast::Receiver<Event>, who: &str) {
    match next_event(events, "Connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await
    {
        Event::Connected { connack, .. } => {
            assert!(!connack.session_present, "{who}: mosquitto kept a session")
        }
        _ => unreachable!(),
    }
    match next_event(events, "SessionLost", |e| {
        matches!(e, Event::SessionLost | Event::Connected { .. })
    })
    .await
    {
        Event::SessionLost => {}
        e => panic!("{who}: no SessionLost after Session Present = 0: {e:?}"),
    }
}

// ------------------------------------------------------------------ 4. shared subscriptions

/// Two managers on `$share/group/...` share the load: both get some, together all, none
/// twice (QoS 1, no reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_spreads_the_load_over_two_managers() {
    bounded(async {
        let Some(b) = broker() else { return };
        const N: u32 = 1000;
        let m = start(b).await;
        let u = url(&m);
        let filter = "$share/workers/jobs/#";
        let (w1, in1) = subscriber(&u, "worker-1", filter, QoS::AtLeastOnce).await;
        let (w2, in2) = subscriber(&u, "worker-2", filter, QoS::AtLeastOnce).await;
        let mut publisher = Publisher::start(config(&[&u], "jobs-pub"));
        publisher
            .queue("jobs/1", 0..N, Some(QoS::AtLeastOnce))
            .await;
        publisher.wait_outcomes(0..N, 0).await;
        wait_until(
            "every job at one of the workers",
            || in1.distinct() + in2.distinct() >= N as usize,
            || format!("{} + {}", in1.distinct(), in2.distinct()),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (c1, c2) = (in1.counts(), in2.counts());
        assert!(
            !c1.is_empty() && !c2.is_empty(),
            "{} and {}",
            c1.len(),
            c2.len()
        );
        let twice: Vec<u32> = (0..N)
            .filter(|i| c1.get(i).copied().unwrap_or(0) + c2.get(i).copied().unwrap_or(0) > 1)
            .collect();
        assert!(twice.is_empty(), "delivered twice: {twice:?}");
        let lost: Vec<u32> = (0..N)
            .filter(|i| !c1.contains_key(i) && !c2.contains_key(i))
            .collect();
        assert!(lost.is_empty(), "lost: {lost:?}");
        publisher.finish().await.check(0, |_| true);
        eprintln!(
            "shared subscription: {N} QoS 1 jobs, {} to worker 1 and {} to worker 2, none \
             twice, none lost",
            c1.len(),
            c2.len()
        );
        w1.disconnect().await.unwrap();
        w2.disconnect().await.unwrap();
    })
    .await;
}

// ------------------------------------------------------------------------------ 5. mutual TLS

/// The manager over `mqtts://` to mosquitto requiring client certificates (made by rcgen):
/// messages round-trip (the manager subscribes to what it publishes), mosquitto restarts,
/// the manager reconnects over TLS by itself, its subscription is made again (no
/// persistence), and messages round-trip again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_reconnects_over_mutual_tls_after_a_mosquitto_restart() {
    bounded(async {
        let Some(b) = broker() else { return };
        let ca = Ca::new("mosquitto manager test CA");
        let server = ca.server();
        let mut m = start(b.tls(
            TlsListener::new(ca.pem(), server.cert_pem, server.key_pem).require_certificate(true),
        ))
        .await;
        let u = format!("mqtts://127.0.0.1:{}", m.port());
        let client = ca.client();
        let tls = TlsOptions::builder()
            .ca_pem(ca.pem())
            .client_cert_pem(&client.cert_pem, &client.key_pem)
            .build()
            .unwrap();
        let mut publisher = Publisher::start(
            config(&[&u], "tls-mgr").connector(Connector::builder().tls(tls).build().unwrap()),
        );
        let inbox = Inbox::attach(&publisher.mgr);
        subscribe(&publisher.mgr, "tls/#", QoS::ExactlyOnce).await;
        let mut events = publisher.mgr.events();
        publisher.queue("tls/m", 0..100, None).await;
        publisher.wait_outcomes(0..100, 0).await;
        wait_until(
            "the messages before the restart",
            || inbox.has_all(0..100),
            || format!("missing {:?}", inbox.missing(0..100)),
        )
        .await;

        m.restart().await.unwrap();
        next_event(&mut events, "Disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
        match next_event(&mut events, "Connected", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await
        {
            Event::Connected { server, .. } => assert_eq!(server, u),
            _ => unreachable!(),
        }
        let _ = publisher.mgr.await_connection().await.unwrap();
        publisher.queue("tls/m", 100..200, None).await;
        publisher.wait_outcomes(100..200, 0).await;
        wait_until(
            "the messages after the restart",
            || inbox.has_all(100..200),
            || format!("missing {:?}", inbox.missing(100..200)),
        )
        .await;
        let counts = inbox.counts();
        assert!(duplicates(&counts, QoS::ExactlyOnce).is_empty());
        let connects = publisher.mgr.stats().connects;
        assert_eq!(connects, 2);
        publisher.finish().await.check(0, |_| true);
        eprintln!("mutual TLS: 100 + 100 round trips around a restart, connects {connects}");
    })
    .await;
}

// ------------------------------------------------------------------------- the bug, strictly

/// Was a bug in `autopaho` (see [`STRANDED_PER_LINK_LOSS`]). Reproduction:
/// one mosquitto, one manager; queue 300 messages with `publish_via_queue`, SIGKILL mosquitto
/// while they flow, start it again on the same port; repeat five times. Every message
/// arrives (the session republishes what it held), but in most rounds the outcome of one
/// message (the one whose handoff the link drop interrupted) never resolves: the manager's
/// `sent_from_queue` stays one short of the messages queued while the queue is empty, and
/// the `QueuedPublish::outcome()` future stays pending for ever, even after `disconnect`.
///
/// Cause (autopaho/src/manager.rs): `pump` is cancelled by the `select!` in `run_inner` when
/// `client.closed()` fires while it awaits `handle.stored()` (or `queue.finish`); the
/// `PublishHandle` is dropped with it, `Shared::handed_over` is never called for that
/// sequence number, and `settle_handoff` before the next connection removes the queue entry
/// because the session holds it. The `oneshot::Sender` in `Handoff::waiting` is never used
/// nor dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_of_a_message_handed_over_as_the_link_drops_resolves() {
    bounded(async {
        let Some(b) = broker() else { return };
        const ROUNDS: u32 = 5;
        const PER: u32 = 300;
        let mut m = start(b).await;
        let u = url(&m);
        let (sub, inbox) = subscriber(&u, "strand-sub", "strand/#", QoS::ExactlyOnce).await;
        let mut publisher = Publisher::start(config(&[&u], "strand-pub"));
        let _ = publisher.mgr.await_connection().await.unwrap();
        for r in 0..ROUNDS {
            let first = r * PER;
            publisher.queue("strand/m", first..first + PER, None).await;
            wait_until(
                "a third of the round",
                || inbox.distinct() >= (first + PER / 3) as usize,
                || format!("{} received", inbox.distinct()),
            )
            .await;
            m.kill().await.unwrap();
            m.restart().await.unwrap();
            // The subscriber lost its subscription with the broker; it is made again.
            let _ = sub.await_connection().await.unwrap();
            let _ = publisher.mgr.await_connection().await.unwrap();
            // Wait until the publisher is idle: its queue empty, and everything it handed
            // over resolved but at most the stranded ones.
            publisher
                .wait_outcomes(first..first + PER, STRANDED_PER_LINK_LOSS)
                .await;
        }
        let sent = publisher.mgr.stats().sent_from_queue;
        let report = publisher.finish().await;
        eprintln!(
            "stranded outcomes over {ROUNDS} kills: {:?}; sent_from_queue {sent} of {}",
            report.stranded,
            ROUNDS * PER
        );
        assert!(
            report.stranded.is_empty(),
            "outcomes that never resolved although every exchange completed: {:?}",
            report.stranded
        );
        sub.disconnect().await.unwrap();
    })
    .await;
}
