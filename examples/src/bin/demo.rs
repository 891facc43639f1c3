//! `demo`: numbered QoS 2 messages through link cuts, a killed publisher and a broker that
//! forgets every session, and proof that each arrived exactly once.
//!
//! See `demo --help`, and the crate docs for how the faults are made.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autopaho::{
    Backoff, BoxTransport, Connect, ConnectFuture, ConnectionManager, ConnectionState, Connector,
    Event, ManagerConfig, ServerUrl, Servers,
};
use bytes::Bytes;
use clap::Parser;
use paho::packets::{Publish, QoS, SubscriptionOptions};
use paho::session::{FileStore, SessionConfig, StoreIdentity};
use paho::{ConnectOptions, SessionHandle};
use paho_examples::tls_from_flags;
use paho_queue::FileQueue;
use paho_testserver::{Fault, Target, TestServer};
use tokio::sync::watch;

const LONG_ABOUT: &str = "\
Sends numbered QoS 2 messages from a publisher with a durable outbox (publish_via_queue on a \
FileQueue, session in a FileStore, both in a temporary directory) to a subscriber on a \
persistent session, while it:

  1. cuts both clients' links (at 1/5 of the messages),
  2. restarts the publisher from its files, as if its process had died (2/5),
  3. cuts both links again (3/5),
  4. restarts the broker with every session forgotten (4/5): the publisher republishes what \
it held and the subscriber subscribes again by itself.

Then it prints a summary (sent, received, duplicates, lost, reconnects, time; one `name N` per \
line) and exits 0 only if every message arrived exactly once (1 otherwise, 2 on a setup error).

By default the broker is the in-process test broker on 127.0.0.1 (a free port). Its restart is \
a real one: the old broker is shut down and a new one started on a new free port, and the \
clients' connector (which holds each client offline while the demo says so) dials the current \
address. Before the restart the demo lets everything settle, makes the broker stop reading the \
publisher's link, and queues a few more messages: they are in the publisher's session, written \
to a socket the broker never reads, so the republish after the restart delivers them exactly \
once. (A QoS 2 message the broker had already passed on before it forgot its state can come \
twice: no client can tell then. The demo avoids that moment; the docs say it plainly.)

With --server URL the same runs against a real broker: links are cut by the demo's connector \
(which relays every connection), and \"forgetting the sessions\" is a takeover of each client id \
with Clean Start and Session Expiry 0, which makes any MQTT v5 broker discard the session.";

#[derive(Parser, Debug)]
#[command(name = "demo", version, about = "paho-rs demo: nothing lost, nothing twice, through faults", long_about = LONG_ABOUT)]
struct Args {
    /// How many numbered messages to send.
    #[arg(long, default_value_t = 500, value_name = "N")]
    messages: u32,
    /// Run against this broker (mqtt://, mqtts://, ws://, wss://) instead of the embedded one.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// A CA certificate (PEM) for an mqtts:// or wss:// --server.
    #[arg(long, value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// Do not verify the --server's certificate.
    #[arg(long)]
    insecure: bool,
    /// Keep the publisher's files here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Give up (and report what is missing) after this many seconds: a hang guard.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
}

const PUB: usize = 0;
const SUB: usize = 1;

/// What the demo's connector needs: where the broker is now, which client may connect, and
/// the switch that cuts relayed links.
struct Net {
    /// The embedded broker's current address; `None` with `--server`.
    embedded: Mutex<Option<std::net::SocketAddr>>,
    /// The real connector, with `--server`.
    remote: Option<Connector>,
    /// Per client: may it connect now?
    open: [AtomicBool; 2],
    /// Per client: bumped to cut the relayed links (with `--server`).
    cut: [watch::Sender<u64>; 2],
}

struct DemoConnector {
    net: Arc<Net>,
    who: usize,
}

impl Connect for DemoConnector {
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a> {
        Box::pin(async move {
            let refused = |message: String| autopaho::Error::Io {
                server: server.to_string(),
                kind: std::io::ErrorKind::ConnectionRefused,
                message,
            };
            if !self.net.open[self.who].load(Ordering::SeqCst) {
                return Err(refused("the demo holds this client offline".into()));
            }
            let embedded = *self
                .net
                .embedded
                .lock()
                .map_err(|_| refused("poisoned".into()))?;
            if let Some(addr) = embedded {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| refused(e.to_string()))?;
                let _ = s.set_nodelay(true);
                return Ok(Box::new(s) as BoxTransport);
            }
            let Some(connector) = &self.net.remote else {
                return Err(refused("no broker".into()));
            };
            // Relay through a pipe, so that the demo can cut the link from its side.
            let mut real = connector.connect(server).await?;
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            let mut cut = self.net.cut[self.who].subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut theirs, &mut real) => {}
                    _ = cut.changed() => {}
                }
            });
            Ok(Box::new(ours) as BoxTransport)
        })
    }
}

/// Every delivery the subscriber saw, by message number.
struct Received {
    counts: Mutex<Vec<u32>>,
    total: AtomicU64,
    distinct: AtomicU64,
}

impl Received {
    fn record(&self, payload: &[u8]) {
        self.total.fetch_add(1, Ordering::SeqCst);
        let Some(i) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        if let Ok(mut c) = self.counts.lock() {
            if let Some(n) = c.get_mut(i) {
                *n += 1;
                if *n == 1 {
                    self.distinct.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

struct Publisher {
    mgr: ConnectionManager,
    session: SessionHandle<FileStore>,
    queue: Arc<FileQueue>,
    /// Messages this instance queued whose outcome (PUBCOMP) has not come yet.
    pending: Arc<AtomicU64>,
    /// Outcomes that came back as errors.
    failed: Arc<Mutex<Vec<String>>>,
}

struct Demo {
    args: Args,
    net: Arc<Net>,
    servers: Servers,
    /// The embedded broker, while it runs.
    broker: Option<TestServer>,
    dir: PathBuf,
    ids: [String; 2],
    topic: String,
    received: Arc<Received>,
    connects: Arc<AtomicU64>,
    deadline: tokio::time::Instant,
    plain: bool,
    started: Instant,
}

/// One progress line, with the time since the start.
fn print_line(plain: bool, started: Instant, line: &str) {
    let mut out = std::io::stdout().lock();
    let t = started.elapsed().as_secs_f64();
    let _ = if plain {
        writeln!(out, "[{t:6.2}s] {line}")
    } else {
        // Clear the progress bar's line first; the bar is drawn again on the next progress.
        writeln!(out, "\r\x1b[2K\x1b[2m[{t:6.2}s]\x1b[0m {line}")
    };
    let _ = out.flush();
}

type DemoResult<T> = Result<T, String>;

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> DemoResult<bool> {
    let started = Instant::now();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            tmp.path().to_owned()
        }
    };
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let (broker, servers, remote) = match &args.server {
        None => {
            let b = TestServer::start()
                .await
                .map_err(|e| format!("starting the embedded broker: {e}"))?;
            let url = format!("mqtt://{}", b.addr());
            let servers = Servers::parse([url.as_str()]).map_err(|e| e.to_string())?;
            (Some(b), servers, None)
        }
        Some(url) => {
            let servers =
                Servers::parse([url.as_str()]).map_err(|e| format!("--server {url}: {e}"))?;
            let tls = tls_from_flags(args.cafile.as_deref(), None, None, args.insecure)
                .map_err(|e| format!("TLS: {e}"))?;
            let mut c = Connector::builder();
            if let Some(tls) = tls {
                c = c.tls(tls);
            }
            (None, servers, Some(c.build().map_err(|e| e.to_string())?))
        }
    };
    let net = Arc::new(Net {
        embedded: Mutex::new(broker.as_ref().map(|b| b.addr())),
        remote,
        open: [AtomicBool::new(true), AtomicBool::new(true)],
        cut: [watch::channel(0).0, watch::channel(0).0],
    });
    let n = args.messages as usize;
    let plain = !std::io::stdout().is_terminal();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut demo = Demo {
        net,
        servers,
        broker,
        dir,
        ids: [
            format!("paho-demo-pub-{run_id}"),
            format!("paho-demo-sub-{run_id}"),
        ],
        topic: format!("paho-demo/{run_id}/numbers"),
        received: Arc::new(Received {
            counts: Mutex::new(vec![0; n]),
            total: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
        }),
        connects: Arc::new(AtomicU64::new(0)),
        deadline,
        plain,
        started,
        args,
    };
    demo.say(&format!(
        "broker: {} ({}), files in {}",
        demo.servers.first(),
        if demo.broker.is_some() {
            "embedded"
        } else {
            "--server"
        },
        demo.dir.display()
    ));
    let outcome = demo.main_loop(n).await;
    let sent = match &outcome {
        Ok(sent) | Err((sent, _)) => *sent,
    };
    if let Err((_, e)) = &outcome {
        eprintln!("demo: {e}");
    }
    // The summary.
    let counts = demo
        .received
        .counts
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let total = demo.received.total.load(Ordering::SeqCst);
    let distinct_sent = counts.iter().take(sent).filter(|c| **c > 0).count();
    let duplicates = total.saturating_sub(counts.iter().filter(|c| **c > 0).count() as u64);
    let lost = sent - distinct_sent;
    let reconnects = demo.connects.load(Ordering::SeqCst).saturating_sub(2);
    // Written without panicking when stdout is gone (`demo | head`).
    let _ = writeln!(
        std::io::stdout().lock(),
        "sent {sent}\nreceived {total}\nduplicates {duplicates}\nlost {lost}\nreconnects \
         {reconnects}\ntime {:.2}s",
        started.elapsed().as_secs_f64()
    );
    if lost > 0 {
        let missing: Vec<usize> = (0..sent).filter(|i| counts[*i] == 0).take(20).collect();
        eprintln!("demo: missing (first 20): {missing:?}");
    }
    if let Some(b) = demo.broker.take() {
        b.shutdown().await;
    }
    Ok(outcome.is_ok() && lost == 0 && duplicates == 0 && sent == n)
}

impl Demo {
    fn say(&self, line: &str) {
        print_line(self.plain, self.started, line);
    }

    /// Sends the messages and injects the faults; returns how many were sent (accepted by
    /// `publish_via_queue`), with the error that stopped it if one did.
    async fn main_loop(&mut self, n: usize) -> Result<usize, (usize, String)> {
        let mut sent = 0usize;
        let sub = self.start_subscriber().await.map_err(|e| (0, e))?;
        let mut publisher = self.open_publisher().await.map_err(|e| (0, e))?;
        let step = (n / 5).max(1);
        let report_every = (n / 10).max(1);
        let mut broker_restarted = false;
        for i in 0..n {
            match (i / step, i % step) {
                (1, 0) => self
                    .cut("link cut 1", sent, &publisher, &sub)
                    .await
                    .map_err(|e| (sent, e))?,
                (2, 0) => {
                    publisher = self
                        .restart_publisher(publisher, sent)
                        .await
                        .map_err(|e| (sent, e))?;
                }
                (3, 0) => self
                    .cut("link cut 2", sent, &publisher, &sub)
                    .await
                    .map_err(|e| (sent, e))?,
                (4, 0) if !broker_restarted => {
                    broker_restarted = true;
                    sent += self
                        .forget_sessions(&publisher, &sub, sent, n)
                        .await
                        .map_err(|e| (sent, e))?;
                }
                _ => {}
            }
            // The silent-broker step of `forget_sessions` queued some itself.
            if i < sent {
                continue;
            }
            self.send(&publisher, i).await.map_err(|e| (sent, e))?;
            sent += 1;
            if sent.is_multiple_of(report_every) {
                self.progress(sent, n);
            }
        }
        self.say("all sent; waiting for the subscriber to have them all");
        let r = Arc::clone(&self.received);
        self.until("every message to arrive", || {
            r.distinct.load(Ordering::SeqCst) as usize >= sent
        })
        .await
        .map_err(|e| (sent, e))?;
        self.until("the publisher to finish every exchange", || {
            drained(&publisher)
        })
        .await
        .map_err(|e| (sent, e))?;
        let _ = publisher.mgr.disconnect().await;
        let _ = sub.disconnect().await;
        // Connections counted by the managers (the retired publisher's were added at its
        // restart).
        self.connects.fetch_add(
            publisher.mgr.stats().connects + sub.stats().connects,
            Ordering::SeqCst,
        );
        // Now that no connection drives it, the session can be read: nothing may be left.
        let left = publisher.session.stats().map_or(0, |s| s.unfinished);
        if left > 0 {
            return Err((sent, format!("{left} exchanges left unfinished")));
        }
        let failed = publisher
            .failed
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if let Some(first) = failed.first() {
            return Err((
                sent,
                format!("{} publishes failed, first: {first}", failed.len()),
            ));
        }
        Ok(sent)
    }

    /// Plain lines when stdout is not a terminal; on a terminal, a bar of the messages
    /// received, redrawn in place.
    fn progress(&self, sent: usize, n: usize) {
        let received = self.received.distinct.load(Ordering::SeqCst);
        if self.plain {
            self.say(&format!("progress: sent {sent}/{n}, received {received}"));
            return;
        }
        const WIDTH: usize = 40;
        let received = usize::try_from(received).unwrap_or(usize::MAX);
        let filled = (received.min(n) * WIDTH) / n.max(1);
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\r\x1b[2K[{}{}] received {received}/{n}, sent {sent}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled)
        );
        let _ = out.flush();
    }

    async fn send(&self, p: &Publisher, i: usize) -> DemoResult<()> {
        let publish = Publish {
            topic: self.topic.as_str().into(),
            qos: QoS::ExactlyOnce,
            payload: Bytes::from(i.to_string()),
            ..Default::default()
        };
        // Returns once the message is fsynced in the queue. Its outcome (the PUBCOMP) is
        // awaited in the background, to know when this instance has nothing in flight (a
        // restarted publisher cannot hear the outcomes of what its predecessor queued: the
        // session still finishes those).
        let queued = p
            .mgr
            .publish_via_queue(publish)
            .await
            .map_err(|e| format!("publish_via_queue: {e}"))?;
        p.pending.fetch_add(1, Ordering::SeqCst);
        let (pending, failed) = (Arc::clone(&p.pending), Arc::clone(&p.failed));
        tokio::spawn(async move {
            match queued.outcome().await {
                Ok(_) => {}
                // The manager was stopped on purpose (the publisher restart): the message is
                // in the files, and the next instance finishes it.
                Err(autopaho::Error::Stopped) => return,
                Err(e) if e.is_outcome_unknown() => return,
                Err(e) => {
                    if let Ok(mut f) = failed.lock() {
                        f.push(format!("message {i}: {e}"));
                    }
                }
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }

    fn config(&self, who: usize) -> DemoResult<ManagerConfig> {
        let options = ConnectOptions::builder()
            .client_id(self.ids[who].as_str())
            .clean_start(false)
            .keep_alive(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        ManagerConfig::builder(self.servers.clone())
            .connector(DemoConnector {
                net: Arc::clone(&self.net),
                who,
            })
            .connect_options(options)
            .backoff(Backoff::constant(Duration::from_millis(50)).map_err(|e| e.to_string())?)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Prints the manager's connection events and counts its connections.
    fn watch_events(&self, mgr: &ConnectionManager, name: &'static str) {
        let mut events = mgr.events();
        let (plain, started) = (self.plain, self.started);
        tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                let line = match e {
                    Event::Connected { connack, .. } => {
                        format!(
                            "{name}: connected (session present: {})",
                            connack.session_present
                        )
                    }
                    Event::Disconnected { error: Some(e) } => {
                        format!("{name}: link lost ({e})")
                    }
                    Event::SessionLost => {
                        format!("{name}: the broker forgot the session; carrying on")
                    }
                    // autopaho reports some drops without their error (see the report).
                    Event::Disconnected { error: None } => format!("{name}: link closed"),
                    _ => continue,
                };
                print_line(plain, started, &line);
            }
        });
    }

    async fn start_subscriber(&self) -> DemoResult<ConnectionManager> {
        let mgr = ConnectionManager::start_in_memory(
            self.config(SUB)?,
            SessionConfig::new().session_expiry_interval(3600),
        );
        self.watch_events(&mgr, "subscriber");
        let r = Arc::clone(&self.received);
        mgr.add_on_publish_received(move |m| r.record(m.payload()));
        tokio::time::timeout_at(
            self.deadline,
            mgr.subscribe(
                vec![paho::packets::Subscription::new(
                    self.topic.as_str(),
                    SubscriptionOptions::qos(QoS::ExactlyOnce),
                )],
                Default::default(),
            ),
        )
        .await
        .map_err(|_| "timed out subscribing".to_string())?
        .map_err(|e| format!("subscribing: {e}"))?;
        Ok(mgr)
    }

    async fn open_publisher(&self) -> DemoResult<Publisher> {
        // The identity names the broker logically: the embedded one moves to a new port when
        // it restarts, and the session directory stays the publisher's.
        let server = match &self.args.server {
            Some(s) => s.clone(),
            None => "embedded-demo-broker".to_owned(),
        };
        let identity = StoreIdentity::new(server, self.ids[PUB].as_str())
            .map_err(|e| format!("store identity: {e}"))?;
        let store = FileStore::open(self.dir.join("session"), identity)
            .await
            .map_err(|e| format!("opening the session store: {e}"))?;
        let session =
            SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store)
                .await
                .map_err(|e| format!("restoring the session: {e}"))?;
        let queue = Arc::new(
            FileQueue::builder(self.dir.join("queue"))
                .open()
                .await
                .map_err(|e| format!("opening the queue: {e}"))?,
        );
        let mgr = ConnectionManager::start(self.config(PUB)?, session.clone(), Arc::clone(&queue));
        self.watch_events(&mgr, "publisher");
        Ok(Publisher {
            mgr,
            session,
            queue,
            pending: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Cuts both clients' links: the embedded broker drops them (a testserver fault), or the
    /// demo's relay does.
    async fn cut(
        &self,
        what: &str,
        sent: usize,
        p: &Publisher,
        sub: &ConnectionManager,
    ) -> DemoResult<()> {
        // Both up first, so that the cut really cuts two links.
        self.until("both clients to be connected", || {
            p.mgr.state() == ConnectionState::Connected && sub.state() == ConnectionState::Connected
        })
        .await?;
        self.say(&format!("{what}: dropping both links (sent {sent})"));
        match &self.broker {
            Some(b) => {
                b.faults().apply(Target::All, Fault::Drop);
            }
            None => {
                for c in &self.net.cut {
                    c.send_modify(|g| *g += 1);
                }
            }
        }
        Ok(())
    }

    async fn hold_offline(&self, who: usize, mgr: &ConnectionManager) -> DemoResult<()> {
        self.net.open[who].store(false, Ordering::SeqCst);
        match &self.broker {
            Some(b) => {
                b.faults()
                    .apply(Target::Client(self.ids[who].clone()), Fault::Drop);
            }
            None => self.net.cut[who].send_modify(|g| *g += 1),
        }
        self.until("a client to go offline", || {
            mgr.state() != ConnectionState::Connected
        })
        .await
    }

    /// Kills the publisher as if its process had died: no connection, then the manager,
    /// the session store and the queue dropped; then opens them again from the same files.
    async fn restart_publisher(&self, p: Publisher, sent: usize) -> DemoResult<Publisher> {
        self.say(&format!(
            "publisher restart: dropping it and reopening its files (sent {sent}, queued {})",
            p.queue_len()
        ));
        // It dies while connected, with messages in flight.
        self.until("the publisher to be connected", || {
            p.mgr.state() == ConnectionState::Connected
        })
        .await?;
        self.hold_offline(PUB, &p.mgr).await?;
        // Stop the manager (it has no connection to say goodbye on); what it held stays in
        // the files.
        let _ = p.mgr.disconnect().await;
        self.connects
            .fetch_add(p.mgr.stats().connects, Ordering::SeqCst);
        let Publisher {
            mgr,
            session,
            queue,
            ..
        } = p;
        drop(mgr);
        if let Ok((_, store)) = session.try_into_parts() {
            store.close().await;
        }
        if let Ok(q) = Arc::try_unwrap(queue) {
            let _ = q.close().await;
        }
        self.net.open[PUB].store(true, Ordering::SeqCst);
        let mut tries = 0;
        loop {
            match self.open_publisher().await {
                Ok(p) => {
                    self.say(&format!(
                        "publisher restart: reopened with {} queued and {} in its session",
                        p.queue_len(),
                        p.session.stats().map_or(0, |s| s.unfinished)
                    ));
                    return Ok(p);
                }
                // A FileStore or FileQueue lets go of its directory lock when its I/O thread
                // has ended, just after the last handle went.
                Err(e) if tries < 100 && (e.contains("lock") || e.contains("already open")) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the broker forget both sessions while the publisher holds messages the broker
    /// never read, then lets the clients back: the subscriber first (it subscribes again by
    /// itself), then the publisher (it republishes). Queues the messages it needs for that
    /// itself, from `sent` on, and returns how many.
    async fn forget_sessions(
        &mut self,
        p: &Publisher,
        sub: &ConnectionManager,
        sent: usize,
        n: usize,
    ) -> DemoResult<usize> {
        self.say(&format!(
            "broker restart: letting everything settle first (sent {sent})"
        ));
        let r = Arc::clone(&self.received);
        self.until("the subscriber to catch up", || {
            r.distinct.load(Ordering::SeqCst) as usize >= sent && drained(p)
        })
        .await?;
        if let Some(b) = &self.broker {
            // The broker stops reading the publisher's link; what it sends now stays in the
            // publisher's session, unacknowledged, and never reaches the broker.
            b.faults()
                .apply(Target::Client(self.ids[PUB].clone()), Fault::GoSilent);
            let extra = (n - sent).min(10);
            for i in sent..sent + extra {
                self.send(p, i).await?;
            }
            self.until("the silent messages to be in the session", || {
                p.queue_len() == 0
            })
            .await?;
            self.say(&format!(
                "broker restart: {extra} messages written to a broker that does not read; \
                 restarting it"
            ));
            self.hold_offline(SUB, sub).await?;
            self.net.open[PUB].store(false, Ordering::SeqCst);
            if let Some(old) = self.broker.take() {
                old.shutdown().await;
            }
            let b = TestServer::start()
                .await
                .map_err(|e| format!("restarting the embedded broker: {e}"))?;
            self.say(&format!("broker restart: new broker on {}", b.addr()));
            if let Ok(mut a) = self.net.embedded.lock() {
                *a = Some(b.addr());
            }
            // The subscriber first: its manager subscribes again on Session Present = 0.
            self.net.open[SUB].store(true, Ordering::SeqCst);
            let sub_id = self.ids[SUB].clone();
            self.until("the subscriber to subscribe again", || {
                !b.subscriptions(&sub_id).is_empty()
            })
            .await?;
            self.net.open[PUB].store(true, Ordering::SeqCst);
            self.broker = Some(b);
            Ok(extra)
        } else {
            self.hold_offline(SUB, sub).await?;
            self.hold_offline(PUB, &p.mgr).await?;
            for who in [PUB, SUB] {
                self.take_over(who).await?;
            }
            self.say("broker restart (--server): both sessions discarded by takeover");
            self.net.open[SUB].store(true, Ordering::SeqCst);
            // No way to see the broker's subscriptions: subscribe once more ourselves, which
            // returns only once a connection has the subscription in place.
            tokio::time::timeout_at(
                self.deadline,
                sub.subscribe(
                    vec![paho::packets::Subscription::new(
                        self.topic.as_str(),
                        SubscriptionOptions::qos(QoS::ExactlyOnce),
                    )],
                    Default::default(),
                ),
            )
            .await
            .map_err(|_| "timed out subscribing again".to_string())?
            .map_err(|e| format!("subscribing again: {e}"))?;
            self.net.open[PUB].store(true, Ordering::SeqCst);
            Ok(0)
        }
    }

    /// Connects once with `who`'s client id, Clean Start and Session Expiry 0, and
    /// disconnects: the broker discards the session.
    async fn take_over(&self, who: usize) -> DemoResult<()> {
        let Some(connector) = &self.net.remote else {
            return Ok(());
        };
        let t = connector
            .connect(self.servers.first())
            .await
            .map_err(|e| e.to_string())?;
        let options = ConnectOptions::builder()
            .client_id(self.ids[who].as_str())
            .clean_start(true)
            .build()
            .map_err(|e| e.to_string())?;
        let (c, _inbox) =
            paho::Client::connect(t, options, SessionHandle::in_memory(SessionConfig::new()))
                .await
                .map_err(|e| format!("takeover: {e}"))?;
        c.disconnect_normally()
            .await
            .map_err(|e| format!("takeover: {e}"))
    }

    /// Polls `done` until it holds, or fails at the demo's deadline (a hang guard).
    async fn until(&self, what: &str, mut done: impl FnMut() -> bool) -> DemoResult<()> {
        loop {
            if done() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Err(format!(
                    "timed out waiting for {what} (--timeout {})",
                    self.args.timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Publisher {
    fn queue_len(&self) -> u64 {
        self.mgr.stats().queue_len
    }
}

/// The publisher holds nothing it queued: its queue is empty and every message this
/// instance queued is acknowledged. (The session's own count cannot be read while a
/// connection drives it; what an earlier instance left is resent first on the same
/// connection, and the broker answers in order, so it finished before these.)
fn drained(p: &Publisher) -> bool {
    p.queue_len() == 0 && p.pending.load(Ordering::SeqCst) == 0
}
