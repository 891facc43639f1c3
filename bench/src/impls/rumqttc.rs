//! The incumbent: `rumqttc`'s v5 client as its documentation recommends, an [`AsyncClient`]
//! that publishes while a task polls its [`EventLoop`] in a loop. The event loop keeps at
//! most the server's Receive Maximum unacknowledged; `publish` waits when the request
//! channel (capacity [`CAP`]) is full. Completion is counted from the loop's events
//! (PUBACK, PUBCOMP).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::{BenchError, Publisher};
use crate::job::{now_ns, Job, Pacer, Tracker};
use crate::measure::uncounted;
use crate::wire::{self, FENCE};

/// The request channel's capacity.
pub const CAP: usize = 1024;

/// The in-flight limit of the idle clients of the connections scenario (mosquitto's Receive
/// Maximum there).
pub const IDLE_INFLIGHT_LIMIT: u16 = 100;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    // 64 KiB payloads must be accepted by the subscriber (the default limit is 10 KiB).
    o.set_max_packet_size(Some(1 << 20));
    o.set_receive_maximum(Some(u16::MAX));
    o
}

/// Polls until the CONNACK.
async fn connected(el: &mut EventLoop) -> Result<(), BenchError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.map_err(err)? {
            return Ok(());
        }
    }
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(format!("rumqttc: {e}"))
}

/// A connected publisher: the client, and the task polling its event loop.
#[derive(Debug)]
pub struct RumqttcPublisher {
    client: AsyncClient,
    acks: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    changed: Arc<Notify>,
    task: JoinHandle<Result<(), BenchError>>,
}

/// Connects a publisher.
pub async fn publisher(addr: SocketAddr, id: &str) -> Result<RumqttcPublisher, BenchError> {
    let (client, mut el) = AsyncClient::new(options(addr, id), CAP);
    connected(&mut el).await?;
    let acks = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let changed = Arc::new(Notify::new());
    let (a, f, c) = (Arc::clone(&acks), Arc::clone(&failed), Arc::clone(&changed));
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if !matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    a.fetch_add(1, Ordering::Relaxed);
                    c.notify_one();
                }
                Ok(Event::Incoming(Packet::PubComp(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                    c.notify_one();
                }
                Ok(_) => {}
                // The end of the connection (our DISCONNECT, or the test is over).
                Err(_) => return Ok(()),
            }
        }
    });
    Ok(RumqttcPublisher {
        client,
        acks,
        failed,
        changed,
        task,
    })
}

impl Publisher for RumqttcPublisher {
    async fn run(&mut self, job: &Job) -> Result<(), BenchError> {
        let pacer = Pacer::new(job.rate);
        let q = qos(job.qos);
        for i in 0..job.n {
            pacer.wait(i).await;
            let stamp = if job.rate > 0 { now_ns() } else { 0 };
            let payload = uncounted(|| Bytes::from(wire::payload(job.size, i, stamp)));
            self.client
                .publish(wire::TOPIC, q, false, payload)
                .await
                .map_err(err)?;
        }
        let fence = uncounted(|| Bytes::from(wire::payload(wire::MIN_PAYLOAD, FENCE, 0)));
        self.client
            .publish(wire::TOPIC, QoS::AtLeastOnce, false, fence)
            .await
            .map_err(err)?;
        // QoS 1/2: every message and the fence; QoS 0: the fence.
        let expect = if job.qos == 0 { 1 } else { job.n + 1 };
        loop {
            let notified = self.changed.notified();
            if self.acks.load(Ordering::Relaxed) >= expect {
                break;
            }
            if self.task.is_finished() {
                return Err(BenchError::Closed("rumqttc event loop ended"));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            _ => Err(BenchError::Other(
                "rumqttc: a PUBACK reported failure".into(),
            )),
        }
    }

    async fn close(self) -> Result<(), BenchError> {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        Ok(())
    }
}

/// A subscriber at QoS 2 recording into `tracker`; returns once the SUBACK arrived.
pub async fn subscriber(
    addr: SocketAddr,
    tracker: Arc<Tracker>,
) -> Result<(AsyncClient, JoinHandle<()>), BenchError> {
    let (client, mut el) = AsyncClient::new(options(addr, "rumqttc-sub"), CAP);
    connected(&mut el).await?;
    client
        .subscribe(wire::TOPIC, QoS::ExactlyOnce)
        .await
        .map_err(err)?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => tracker.record(&p.payload),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("rumqttc subscriber: {e}");
                    return;
                }
            }
        }
    });
    rx.await.map_err(|_| BenchError::Closed("before SUBACK"))?;
    Ok((client, task))
}

/// Connects `n` clients, `batch` at a time; each keeps a task polling its event loop.
pub async fn connect_many(
    addr: SocketAddr,
    n: usize,
    batch: usize,
) -> Result<Vec<(AsyncClient, JoinHandle<()>)>, BenchError> {
    let mut all = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let mut waits = Vec::new();
        for k in start..(start + batch).min(n) {
            // Its defaults, except one: the event loop preallocates a slot per possible
            // in-flight message up to its upper limit, 65,535 by default (about 13.5 MiB per
            // client, 13 GiB for 1,000); capped at the broker's Receive Maximum, as a user
            // with many clients would do.
            let mut o =
                MqttOptions::new(format!("rumqttc-c{k}"), addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(60));
            o.set_outgoing_inflight_upper_limit(IDLE_INFLIGHT_LIMIT);
            let (client, mut el) = AsyncClient::new(o, 10);
            let (tx, rx) = oneshot::channel();
            let task = tokio::spawn(async move {
                let mut tx = Some(tx);
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            waits.push(rx);
            all.push((client, task));
        }
        for rx in waits {
            rx.await.map_err(|_| BenchError::Closed("before CONNACK"))?;
        }
    }
    Ok(all)
}
