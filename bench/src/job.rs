//! What one child process does (a [`Job`], passed on its command line) and what it reports
//! (a [`Report`], one `RESULT key=value ...` line on its stdout), plus the pieces every
//! implementation shares: the [`Tracker`] that counts what a subscriber received, the
//! clock for timestamps and the pacer for fixed-rate publishing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::wire::{self, FENCE};

/// The three implementations, in the order they run in every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impl {
    /// This project's client.
    Ours,
    /// The `rumqttc` crate's v5 client.
    Rumqttc,
    /// A tokio socket writing pre-encoded packets: the ceiling.
    Raw,
}

impl Impl {
    /// All three, in run order.
    pub const ALL: [Impl; 3] = [Impl::Ours, Impl::Rumqttc, Impl::Raw];

    /// The name used on command lines and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Rumqttc => "rumqttc",
            Impl::Raw => "raw",
        }
    }
}

impl FromStr for Impl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Impl::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| format!("unknown implementation {s:?}"))
    }
}

impl fmt::Display for Impl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Publish `n` messages as fast as the implementation goes (to the sink, or through a
    /// broker to a subscriber of the same implementation).
    Throughput,
    /// Publish at a fixed rate through a broker and record each message's end-to-end delay.
    Latency,
    /// Connect `clients` clients, then hold them idle and measure memory.
    Connections,
}

/// Ours only: where the session keeps its QoS 1/2 state, and whether messages go through
/// `publish_via_queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `MemoryStore` session, `start_publish`.
    Memory,
    /// `FileStore` session, `start_publish`.
    FileStore,
    /// `publish_via_queue` with a `MemoryQueue`.
    MemoryQueue,
    /// `publish_via_queue` with a `FileQueue`.
    FileQueue,
}

impl Storage {
    /// The name used on command lines and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Storage::Memory => "memory",
            Storage::FileStore => "filestore",
            Storage::MemoryQueue => "memoryqueue",
            Storage::FileQueue => "filequeue",
        }
    }
}

impl FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Storage::Memory,
            Storage::FileStore,
            Storage::MemoryQueue,
            Storage::FileQueue,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown storage {s:?}"))
    }
}

/// One child's work.
#[derive(Debug, Clone)]
pub struct Job {
    /// What to measure.
    pub kind: Kind,
    /// Which implementation.
    pub imp: Impl,
    /// The server (sink or broker).
    pub addr: SocketAddr,
    /// QoS of the measured messages.
    pub qos: u8,
    /// Payload bytes (at least 16).
    pub size: usize,
    /// Messages to publish (excluding the fence).
    pub n: u64,
    /// Whether a subscriber of the same implementation receives them (through a broker).
    pub subscribe: bool,
    /// Ours: session store / queue.
    pub storage: Storage,
    /// Messages per second for [`Kind::Latency`].
    pub rate: u64,
    /// Clients for [`Kind::Connections`].
    pub clients: usize,
    /// A directory for file stores and queues.
    pub dir: Option<PathBuf>,
    /// Test only: the raw publisher skips every `drop_every`-th message (0: none), so that
    /// the smoke test can check that a loss is flagged.
    pub drop_every: u64,
}

impl Job {
    /// The command-line arguments after `child`.
    pub fn to_args(&self) -> Vec<String> {
        let kind = match self.kind {
            Kind::Throughput => "throughput",
            Kind::Latency => "latency",
            Kind::Connections => "connections",
        };
        let mut a = vec![
            format!("kind={kind}"),
            format!("impl={}", self.imp),
            format!("addr={}", self.addr),
            format!("qos={}", self.qos),
            format!("size={}", self.size),
            format!("n={}", self.n),
            format!("subscribe={}", self.subscribe),
            format!("storage={}", self.storage.name()),
            format!("rate={}", self.rate),
            format!("clients={}", self.clients),
            format!("drop_every={}", self.drop_every),
        ];
        if let Some(d) = &self.dir {
            a.push(format!("dir={}", d.display()));
        }
        a
    }

    /// Parses [`to_args`](Self::to_args)'s output.
    pub fn from_args(args: &[String]) -> Result<Job, String> {
        let mut m = BTreeMap::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("bad child argument {a:?}"))?;
            m.insert(k.to_string(), v.to_string());
        }
        let get = |k: &str| m.get(k).cloned().ok_or_else(|| format!("missing {k}"));
        fn num<T: FromStr>(s: String) -> Result<T, String> {
            s.parse().map_err(|_| format!("bad number {s:?}"))
        }
        Ok(Job {
            kind: match get("kind")?.as_str() {
                "throughput" => Kind::Throughput,
                "latency" => Kind::Latency,
                "connections" => Kind::Connections,
                k => return Err(format!("unknown kind {k:?}")),
            },
            imp: get("impl")?.parse()?,
            addr: get("addr")?.parse().map_err(|e| format!("addr: {e}"))?,
            qos: num(get("qos")?)?,
            size: num(get("size")?)?,
            n: num(get("n")?)?,
            subscribe: get("subscribe")? == "true",
            storage: get("storage")?.parse()?,
            rate: num(get("rate")?)?,
            clients: num(get("clients")?)?,
            dir: m.get("dir").map(PathBuf::from),
            drop_every: num(get("drop_every")?)?,
        })
    }
}

/// What a child reports: named figures (`msgs`, `wall_s`, `cpu_s`, `syscalls`, `allocs`,
/// `maxrss_kib`, `lost`, `dup`, `bad`, latency percentiles, ...). A missing figure is "n/a".
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The figures by name.
    pub values: BTreeMap<String, f64>,
}

impl Report {
    /// Sets a figure.
    pub fn set(&mut self, k: &str, v: f64) {
        self.values.insert(k.to_string(), v);
    }

    /// A figure, if reported.
    pub fn get(&self, k: &str) -> Option<f64> {
        self.values.get(k).copied()
    }

    /// The `RESULT ...` line.
    pub fn to_line(&self) -> String {
        let mut s = String::from("RESULT");
        for (k, v) in &self.values {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    /// Parses a `RESULT ...` line.
    pub fn from_line(line: &str) -> Option<Report> {
        let rest = line.strip_prefix("RESULT")?;
        let mut r = Report::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            r.set(k, v.parse().ok()?);
        }
        Some(r)
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's first call: the timestamp a message carries (publisher
/// and subscriber share the process, so they share the clock).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Counts the messages a subscriber (or the sink) received, by the number in their payload.
#[derive(Debug)]
pub struct Tracker {
    n: u64,
    qos: u8,
    inner: Mutex<Counts>,
    done: Notify,
}

/// What a [`Tracker`] counted.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    seen: Vec<u8>,
    /// Distinct messages received.
    pub distinct: u64,
    /// Messages received more than once (each extra copy counts).
    pub dup: u64,
    /// Payloads that carry no valid message number.
    pub bad: u64,
    /// The fence arrived.
    pub fence: bool,
    /// End-to-end delays in nanoseconds, when recording them.
    pub delays: Vec<u64>,
    record_delays: bool,
    notified: bool,
}

impl Counts {
    /// Messages never received.
    pub fn lost(&self, n: u64) -> u64 {
        n - self.distinct
    }
}

impl Tracker {
    /// A tracker for messages `0..n` at `qos`; `delays`: record end-to-end delays.
    pub fn new(n: u64, qos: u8, delays: bool) -> Tracker {
        Tracker {
            n,
            qos,
            inner: Mutex::new(Counts {
                seen: vec![0; n as usize],
                record_delays: delays,
                delays: Vec::with_capacity(if delays { n as usize } else { 0 }),
                ..Counts::default()
            }),
            done: Notify::new(),
        }
    }

    /// Records one received payload.
    pub fn record(&self, payload: &[u8]) {
        self.record_all(std::iter::once(wire::payload_header(payload)));
    }

    /// Records the headers ([`wire::payload_header`]) of many payloads under one lock.
    pub fn record_all(&self, headers: impl IntoIterator<Item = Option<(u64, u64)>>) {
        let now = now_ns();
        let Ok(mut c) = self.inner.lock() else {
            return;
        };
        for h in headers {
            self.count(&mut c, h, now);
        }
    }

    fn count(&self, c: &mut Counts, header: Option<(u64, u64)>, now: u64) {
        match header {
            Some((FENCE, _)) => c.fence = true,
            Some((i, t)) if i < self.n => {
                let s = &mut c.seen[i as usize];
                if *s == 0 {
                    *s = 1;
                    c.distinct += 1;
                    if c.record_delays {
                        c.delays.push(now.saturating_sub(t));
                    }
                } else {
                    c.dup += 1;
                }
            }
            _ => c.bad += 1,
        }
        // Every QoS 1/2 message must arrive; QoS 0 ones may be lost, and the fence (QoS 1,
        // sent after them, delivered in order) says the rest will not come.
        let complete = c.fence && (self.qos == 0 || c.distinct == self.n);
        if complete && !c.notified {
            c.notified = true;
            self.done.notify_one();
        }
    }

    /// Waits until the fence and (QoS 1/2) every message arrived, at most `guard` (a hang
    /// guard: what is missing then is reported as lost).
    pub async fn wait(&self, guard: Duration) {
        let _ = tokio::time::timeout(guard, self.done.notified()).await;
    }

    /// What was counted.
    pub fn counts(&self) -> Counts {
        self.inner.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Puts the counts into a report.
    pub fn report(&self, r: &mut Report) {
        let c = self.counts();
        r.set("lost", c.lost(self.n) as f64);
        r.set("dup", c.dup as f64);
        r.set("bad", c.bad as f64);
        r.set("fence", if c.fence { 1.0 } else { 0.0 });
        if c.record_delays {
            let mut d = c.delays;
            d.sort_unstable();
            for (k, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
                if let Some(v) = percentile(&d, q) {
                    r.set(k, v as f64 / 1000.0);
                }
            }
        }
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Publishing at a fixed rate: message `i` is due `i / rate` seconds after the start.
#[derive(Debug)]
pub struct Pacer {
    start: tokio::time::Instant,
    rate: u64,
}

impl Pacer {
    /// A pacer for `rate` messages per second (0: as fast as possible).
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            start: tokio::time::Instant::now(),
            rate,
        }
    }

    /// Waits until message `i` is due.
    pub async fn wait(&self, i: u64) {
        if self.rate == 0 {
            return;
        }
        let due = self.start + Duration::from_nanos(i * 1_000_000_000 / self.rate);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

/// How long a child waits for the last message before it reports the missing ones as lost.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_arguments() {
        let j = Job {
            kind: Kind::Latency,
            imp: Impl::Rumqttc,
            addr: "127.0.0.1:1234".parse().unwrap(),
            qos: 2,
            size: 1024,
            n: 5000,
            subscribe: true,
            storage: Storage::FileQueue,
            rate: 300,
            clients: 7,
            dir: Some("/tmp/x".into()),
            drop_every: 3,
        };
        let k = Job::from_args(&j.to_args()).unwrap();
        assert_eq!(format!("{j:?}"), format!("{k:?}"));
        assert!(Job::from_args(&["kind=throughput".into()]).is_err());
    }

    #[test]
    fn tracker_counts_lost_duplicated_and_bad() {
        let t = Tracker::new(4, 1, false);
        for i in [0u64, 1, 1, 3] {
            t.record(&wire::payload(16, i, 0));
        }
        t.record(b"short");
        t.record(&wire::payload(16, 99, 0));
        t.record(&wire::payload(16, FENCE, 0));
        let c = t.counts();
        assert_eq!(
            (c.distinct, c.lost(4), c.dup, c.bad, c.fence),
            (3, 1, 1, 2, true)
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), Some(500));
        assert_eq!(percentile(&v, 0.99), Some(990));
        assert_eq!(percentile(&v, 0.999), Some(999));
        assert_eq!(percentile(&[], 0.5), None);
        let r = Report::from_line(&{
            let mut r = Report::default();
            r.set("msgs", 3.0);
            r.set("p99_us", 1.5);
            r.to_line()
        })
        .unwrap();
        assert_eq!((r.get("msgs"), r.get("p99_us")), (Some(3.0), Some(1.5)));
    }
}
