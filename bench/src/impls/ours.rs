//! This project's client, used as its documentation shows: an `autopaho`
//! [`ConnectionManager`] per connection (in-memory session unless the job says otherwise),
//! and for throughput the [`paho::Client`] it connected, with
//! [`start_publish`](paho::Client::start_publish) handles kept in a window of 1,024 plus the
//! server's Receive Maximum (as far ahead as rumqttc's request channel of 1,024 lets it run;
//! 1,024 at QoS 0), the oldest awaited when the window is full.
//! The durable-queue variant keeps as many `publish_via_queue` calls in flight (one task
//! each) so that the file queue can commit them in groups.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use autopaho::{ConnectionManager, ManagerConfig, Servers};
use bytes::Bytes;
use paho::packets::{
    MqttString, Publish, QoS, SubscribeProperties, Subscription, SubscriptionOptions,
};
use paho::session::{FileStore, MemoryStore, SessionConfig, StoreIdentity};
use paho::{ConnectOptions, PublishOutcome, SessionHandle};
use paho_queue::{FileQueue, Limits, MemoryQueue};

use super::{BenchError, Publisher};
use crate::job::{now_ns, Job, Pacer, Storage, Tracker};
use crate::measure::uncounted;
use crate::wire::{self, FENCE};

/// Handles kept in flight at QoS 0, where no Receive Maximum applies.
const QOS0_WINDOW: usize = 1024;

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn config(addr: SocketAddr, client_id: &str) -> Result<ManagerConfig, BenchError> {
    let options = ConnectOptions::builder()
        .client_id(client_id)
        .keep_alive(Duration::from_secs(60))
        .receive_maximum(u16::MAX)
        // A subscriber at QoS 0 must not drop what its handler has not yet seen.
        .max_queued_qos0(1 << 20)
        .max_queued_bytes(1 << 30)
        .build()?;
    Ok(
        ManagerConfig::builder(Servers::parse([format!("mqtt://{addr}")])?)
            .connect_options(options)
            .build()?,
    )
}

/// Starts a manager with the job's storage and waits for its connection.
async fn start(
    addr: SocketAddr,
    client_id: &str,
    job: &Job,
) -> Result<(ConnectionManager, paho::Client), BenchError> {
    let cfg = config(addr, client_id)?;
    let mgr = match job.storage {
        Storage::Memory => ConnectionManager::start_in_memory(cfg, SessionConfig::new()),
        Storage::FileStore => {
            let dir = job
                .dir
                .clone()
                .ok_or(BenchError::Closed("no directory given"))?;
            let url = format!("mqtt://{addr}");
            let store =
                FileStore::open(dir.join("session"), StoreIdentity::new(url, client_id)?).await?;
            let session = SessionHandle::restore(SessionConfig::new(), store).await?;
            ConnectionManager::start(
                cfg,
                session,
                Arc::new(MemoryQueue::new(Limits::unbounded())),
            )
        }
        Storage::MemoryQueue => ConnectionManager::start(
            cfg,
            SessionHandle::<MemoryStore>::in_memory(SessionConfig::new()),
            Arc::new(MemoryQueue::new(Limits::unbounded())),
        ),
        Storage::FileQueue => {
            let dir = job
                .dir
                .clone()
                .ok_or(BenchError::Closed("no directory given"))?;
            let queue = FileQueue::builder(dir.join("queue")).open().await?;
            ConnectionManager::start(
                cfg,
                SessionHandle::<MemoryStore>::in_memory(SessionConfig::new()),
                Arc::new(queue),
            )
        }
    };
    let client = mgr.await_connection().await?;
    Ok((mgr, client))
}

/// A connected publisher.
#[derive(Debug)]
pub struct OursPublisher {
    mgr: ConnectionManager,
    client: paho::Client,
}

/// Connects a publisher.
pub async fn publisher(addr: SocketAddr, id: &str, job: &Job) -> Result<OursPublisher, BenchError> {
    let (mgr, client) = start(addr, id, job).await?;
    Ok(OursPublisher { mgr, client })
}

fn message(topic: &MqttString, q: u8, size: usize, number: u64, stamp: u64) -> Publish {
    Publish {
        topic: topic.clone(),
        qos: qos(q),
        payload: uncounted(|| Bytes::from(wire::payload(size, number, stamp))),
        ..Default::default()
    }
}

fn check(outcome: PublishOutcome) -> Result<(), BenchError> {
    if outcome.is_success() {
        Ok(())
    } else {
        Err(BenchError::Refused(outcome.reason_code()))
    }
}

impl Publisher for OursPublisher {
    async fn run(&mut self, job: &Job) -> Result<(), BenchError> {
        let topic = MqttString::from(wire::TOPIC);
        let pacer = Pacer::new(job.rate);
        let stamp = || if job.rate > 0 { now_ns() } else { 0 };
        if matches!(job.storage, Storage::MemoryQueue | Storage::FileQueue) {
            return self.run_queued(job, &topic, &pacer).await;
        }
        // As much ahead of the acknowledgements as rumqttc keeps (its request channel plus
        // the server's Receive Maximum in flight): a window of exactly the Receive Maximum
        // would hand the client one message per acknowledgement, never a batch.
        let window = match job.qos {
            0 => QOS0_WINDOW,
            _ => QOS0_WINDOW + self.client.server().receive_maximum() as usize,
        };
        let mut pending = VecDeque::with_capacity(window);
        for i in 0..job.n {
            pacer.wait(i).await;
            if pending.len() >= window {
                if let Some(h) = pending.pop_front() {
                    check(h.await?)?;
                }
            }
            pending.push_back(self.client.start_publish(message(
                &topic,
                job.qos,
                job.size,
                i,
                stamp(),
            )));
        }
        pending.push_back(self.client.start_publish(message(
            &topic,
            1,
            wire::MIN_PAYLOAD,
            FENCE,
            0,
        )));
        for h in pending {
            check(h.await?)?;
        }
        Ok(())
    }

    async fn close(self) -> Result<(), BenchError> {
        self.mgr.disconnect().await?;
        Ok(())
    }
}

impl OursPublisher {
    /// `publish_via_queue`, as many in flight as the server's Receive Maximum, each awaited
    /// to its acknowledgement.
    async fn run_queued(
        &self,
        job: &Job,
        topic: &MqttString,
        pacer: &Pacer,
    ) -> Result<(), BenchError> {
        let window = self.client.server().receive_maximum().max(1) as usize;
        let mut set = tokio::task::JoinSet::new();
        let spawn = |set: &mut tokio::task::JoinSet<Result<(), BenchError>>, p: Publish| {
            let mgr = self.mgr.clone();
            set.spawn(async move { check(mgr.publish_via_queue(p).await?.outcome().await?) });
        };
        for i in 0..job.n {
            pacer.wait(i).await;
            if set.len() >= window {
                if let Some(r) = set.join_next().await {
                    r.map_err(|_| BenchError::Closed("publish task"))??;
                }
            }
            let stamp = if job.rate > 0 { now_ns() } else { 0 };
            spawn(&mut set, message(topic, job.qos, job.size, i, stamp));
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|_| BenchError::Closed("publish task"))??;
        }
        // The fence goes last, after every message was acknowledged.
        check(
            self.mgr
                .publish_via_queue(message(topic, 1, wire::MIN_PAYLOAD, FENCE, 0))
                .await?
                .outcome()
                .await?,
        )
    }
}

/// A subscriber to [`wire::TOPIC`] at QoS 2 recording into `tracker`; returns once
/// subscribed, with the manager to keep alive.
pub async fn subscriber(
    addr: SocketAddr,
    tracker: Arc<Tracker>,
) -> Result<ConnectionManager, BenchError> {
    let mgr = ConnectionManager::start_in_memory(config(addr, "ours-sub")?, SessionConfig::new());
    mgr.add_on_publish_received(move |m| tracker.record(m.payload()));
    mgr.subscribe(
        vec![Subscription::new(
            wire::TOPIC,
            SubscriptionOptions::qos(QoS::ExactlyOnce),
        )],
        SubscribeProperties::default(),
    )
    .await?;
    Ok(mgr)
}

/// Connects `n` managers, `batch` at a time, each waiting for its connection.
pub async fn connect_many(
    addr: SocketAddr,
    n: usize,
    batch: usize,
) -> Result<Vec<ConnectionManager>, BenchError> {
    let mut all = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let mut set = tokio::task::JoinSet::new();
        for k in start..(start + batch).min(n) {
            // Its defaults, as an idle client would have them.
            let options = ConnectOptions::builder()
                .client_id(format!("ours-c{k}"))
                .keep_alive(Duration::from_secs(60))
                .build()?;
            let cfg = ManagerConfig::builder(Servers::parse([format!("mqtt://{addr}")])?)
                .connect_options(options)
                .build()?;
            set.spawn(async move {
                let mgr = ConnectionManager::start_in_memory(cfg, SessionConfig::new());
                mgr.await_connection().await.map(|_| mgr)
            });
        }
        while let Some(r) = set.join_next().await {
            all.push(r.map_err(|_| BenchError::Closed("connect task"))??);
        }
    }
    Ok(all)
}
