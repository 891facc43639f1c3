//! The three implementations behind one shape: connect a [`Publisher`], optionally a
//! subscriber of the same implementation, then [`run`] measures the window from the first
//! message to the last acknowledgement (and, through a broker, the last arrival).

pub mod ours;
pub mod raw;
pub mod rumqttc;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::job::{Impl, Job, Kind, Report, Tracker, HANG_GUARD};
use crate::measure::{self, Window};

/// Why a child could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The hand-written wire format met something unexpected.
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    /// Our client.
    #[error("paho: {0}")]
    Paho(#[from] paho::Error),
    /// Our manager.
    #[error("autopaho: {0}")]
    Autopaho(#[from] autopaho::Error),
    /// Our session store.
    #[error("session: {0}")]
    Session(#[from] paho::session::Error),
    /// Our queue.
    #[error("queue: {0}")]
    Queue(#[from] paho_queue::Error),
    /// The server refused a message with this reason code.
    #[error("a message was refused with reason code {0:#04x}")]
    Refused(u8),
    /// A connection or task ended early.
    #[error("closed {0}")]
    Closed(&'static str),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A connected publisher of one implementation.
pub trait Publisher {
    /// Publishes the job's messages and the fence, returning once all are acknowledged
    /// (QoS 0: once the fence is).
    fn run(&mut self, job: &Job) -> impl Future<Output = Result<(), BenchError>>;
    /// Disconnects.
    fn close(self) -> impl Future<Output = Result<(), BenchError>>;
}

/// Keeps a subscriber alive until dropped.
#[allow(dead_code)] // held for its drop
enum SubGuard {
    Ours(autopaho::ConnectionManager),
    Rumqttc(::rumqttc::v5::AsyncClient, tokio::task::JoinHandle<()>),
    Raw(tokio::task::JoinHandle<Result<(), BenchError>>),
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        match self {
            SubGuard::Ours(_) => {}
            SubGuard::Rumqttc(_, t) => t.abort(),
            SubGuard::Raw(t) => t.abort(),
        }
    }
}

/// Runs a child's job, measuring its window.
pub async fn run(job: &Job, w: &mut Window) -> Result<Report, BenchError> {
    match job.kind {
        Kind::Throughput | Kind::Latency => match job.imp {
            Impl::Ours => {
                let id = format!("ours-pub-{}", std::process::id());
                let sub = subscribe(job).await?;
                let p = ours::publisher(job.addr, &id, job).await?;
                measured(job, w, p, sub).await
            }
            Impl::Rumqttc => {
                let id = format!("rumqttc-pub-{}", std::process::id());
                let sub = subscribe(job).await?;
                let p = rumqttc::publisher(job.addr, &id).await?;
                measured(job, w, p, sub).await
            }
            Impl::Raw => {
                let id = format!("raw-pub-{}", std::process::id());
                let sub = subscribe(job).await?;
                let p = raw::publisher(job.addr, &id).await?;
                measured(job, w, p, sub).await
            }
        },
        Kind::Connections => connections(job, w).await,
    }
}

async fn subscribe(job: &Job) -> Result<Option<(SubGuard, Arc<Tracker>)>, BenchError> {
    if !job.subscribe {
        return Ok(None);
    }
    let tracker = Arc::new(Tracker::new(job.n, job.qos, job.kind == Kind::Latency));
    let t = Arc::clone(&tracker);
    let guard = match job.imp {
        Impl::Ours => SubGuard::Ours(ours::subscriber(job.addr, t).await?),
        Impl::Rumqttc => {
            let (c, task) = rumqttc::subscriber(job.addr, t).await?;
            SubGuard::Rumqttc(c, task)
        }
        Impl::Raw => SubGuard::Raw(raw::subscriber(job.addr, t).await?),
    };
    Ok(Some((guard, tracker)))
}

async fn measured<P: Publisher>(
    job: &Job,
    w: &mut Window,
    mut p: P,
    sub: Option<(SubGuard, Arc<Tracker>)>,
) -> Result<Report, BenchError> {
    w.start();
    p.run(job).await?;
    if let Some((_, t)) = &sub {
        t.wait(HANG_GUARD).await;
    }
    w.stop();
    let mut r = Report::default();
    r.set("msgs", job.n as f64);
    if let Some((guard, t)) = sub {
        t.report(&mut r);
        drop(guard);
    }
    p.close().await?;
    Ok(r)
}

/// How many clients connect at once.
const CONNECT_BATCH: usize = 50;

async fn connections(job: &Job, w: &mut Window) -> Result<Report, BenchError> {
    let n = job.clients;
    let rss0 = measure::rss_now_kib();
    let t0 = Instant::now();
    w.start();
    let held: Box<dyn std::any::Any> = match job.imp {
        Impl::Ours => Box::new(ours::connect_many(job.addr, n, CONNECT_BATCH).await?),
        Impl::Rumqttc => Box::new(rumqttc::connect_many(job.addr, n, CONNECT_BATCH).await?),
        Impl::Raw => Box::new(raw::connect_many(job.addr, n, CONNECT_BATCH).await?),
    };
    w.stop();
    let secs = t0.elapsed().as_secs_f64();
    // Idle: let whatever each connection does after its CONNACK settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss1 = measure::rss_now_kib();
    let mut r = Report::default();
    r.set("msgs", n as f64);
    r.set("conn_per_s", n as f64 / secs);
    r.set(
        "kib_per_client",
        rss1.saturating_sub(rss0) as f64 / n as f64,
    );
    drop(held);
    Ok(r)
}
