//! [`TestServer`]: starting the broker, attaching clients (TCP or in-memory pipes),
//! observing it and shutting it down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use paho_packets::{Packet, PacketType, Publish};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::{AfterClose, Broker, ConnCmd, LiveConn};
use crate::config::{Builder, Config};
use crate::conn::Conn;
use crate::events::{lock, ConnId, Event, EventKind, EventLog};
use crate::faults::{ConnFault, FaultState, Faults, Target};
use crate::Error;

/// State shared by the server handle, the fault handle and every task.
pub(crate) struct Shared {
    pub(crate) broker: Mutex<Broker>,
    pub(crate) faults: Mutex<FaultState>,
    pub(crate) events: EventLog,
    tasks: Mutex<JoinSet<()>>,
    /// Panic messages of server tasks (bugs in this crate), reported by `shutdown`.
    failures: Mutex<Vec<String>>,
    runtime: Handle,
    shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
}

impl Shared {
    /// Spawns a task the server owns (aborted at drop, awaited at shutdown).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = lock(&self.tasks);
        // Reap finished tasks so a long test does not accumulate them.
        while let Some(r) = tasks.try_join_next() {
            self.record(r);
        }
        if *self.shutdown.borrow() {
            return;
        }
        tasks.spawn_on(task, &self.runtime);
    }

    /// Joins the tasks that have ended, remembering panics.
    fn reap(&self) {
        let mut tasks = lock(&self.tasks);
        while let Some(r) = tasks.try_join_next() {
            self.record(r);
        }
    }

    /// Remembers a task that panicked (aborted tasks are not failures).
    fn record(&self, result: Result<(), tokio::task::JoinError>) {
        let Err(e) = result else { return };
        if let Ok(payload) = e.try_into_panic() {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic)".to_owned());
            lock(&self.failures).push(msg);
        }
    }

    /// Starts serving one client over `io`.
    pub(crate) fn serve<T>(self: &Arc<Self>, io: T) -> ConnId
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1);
        if *self.shutdown.borrow() {
            // Dropping `io` closes the client's end at once.
            return id;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.broker).conns.insert(
            id,
            LiveConn {
                client_id: None,
                tx: tx.clone(),
            },
        );
        self.events.push(Event {
            conn: id,
            client_id: None,
            kind: EventKind::Opened,
        });
        let conn = Conn::new(self.clone(), id, tx);
        let shutdown = self.shutdown.subscribe();
        self.spawn(conn.run(io, rx, shutdown));
        id
    }

    /// Sends a fault command to the live connections `target` names.
    pub(crate) fn send_to_conns(&self, target: &Target, make: impl Fn() -> ConnFault) -> usize {
        let broker = lock(&self.broker);
        broker
            .conns
            .iter()
            .filter(|(id, c)| match target {
                Target::All => true,
                Target::Conn(want) => *id == want,
                Target::Client(want) => c.client_id.as_deref() == Some(want.as_str()),
            })
            .filter(|(_, c)| c.tx.send(ConnCmd::Fault(make())).is_ok())
            .count()
    }

    /// Starts the timers a closed connection left: delayed will, session expiry.
    pub(crate) fn spawn_after_close(self: &Arc<Self>, after: AfterClose) {
        let shared = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        self.spawn(async move {
            let timers = async {
                let start = Instant::now();
                if let Some(d) = after.will_delay {
                    tokio::time::sleep_until(start + d).await;
                    lock(&shared.broker).will_due(
                        &after.client_id,
                        after.generation,
                        Instant::now(),
                    );
                }
                if let Some(e) = after.expiry {
                    tokio::time::sleep_until(start + e).await;
                    lock(&shared.broker).expiry_due(&after.client_id, after.generation);
                }
            };
            tokio::select! {
                _ = stopped(&mut shutdown) => {}
                _ = timers => {}
            }
        });
    }
}

/// Resolves once the server is shutting down, including when it already was before the call
/// (unlike `changed`, which would wait for the next change).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

/// An in-process MQTT v5 broker for tests.
///
/// Started with [`TestServer::start`] or [`TestServer::builder`]; it listens on
/// `127.0.0.1:<free port>` ([`TestServer::addr`]) and serves in-memory pipes
/// ([`TestServer::connect_duplex`]). Faults are scripted through [`TestServer::faults`] and
/// everything that crosses the wire is logged ([`TestServer::events`],
/// [`TestServer::wait_for`]).
///
/// Dropping the server aborts all its tasks; [`TestServer::shutdown`] stops them gracefully
/// and waits for them.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A builder for a server with non-default CONNACK values or behaviours.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts a server with default settings.
    pub async fn start() -> Result<TestServer, Error> {
        Builder::default().start().await
    }

    pub(crate) async fn start_with(config: Config) -> Result<TestServer, Error> {
        let runtime = Handle::try_current()?;
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let event_limit = config.event_limit;
        let shared = Arc::new(Shared {
            broker: Mutex::new(Broker::new(config)),
            faults: Mutex::new(FaultState::default()),
            events: EventLog::new(event_limit),
            tasks: Mutex::new(JoinSet::new()),
            failures: Mutex::new(Vec::new()),
            runtime,
            shutdown,
            next_conn: AtomicU64::new(0),
        });
        let accept = shared.clone();
        let mut stop = shared.shutdown.subscribe();
        shared.spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    r = listener.accept() => match r {
                        Ok((stream, _)) => {
                            // Acks are small; do not let Nagle delay them.
                            let _ = stream.set_nodelay(true);
                            accept.serve(stream);
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off a little
                            // instead of spinning.
                            tracing::warn!(error = %e, "testserver accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    },
                }
            }
        });
        tracing::debug!(%addr, "testserver listening");
        Ok(TestServer { shared, addr })
    }

    /// The TCP address the server listens on (`127.0.0.1`, a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connects a new client over TCP (Nagle off).
    pub async fn connect_tcp(&self) -> Result<TcpStream, Error> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Connects a new client over an in-memory pipe and returns the client's end. Works with
    /// tokio's paused clock. After [`TestServer::shutdown`] the pipe is closed at once.
    pub fn connect_duplex(&self) -> DuplexStream {
        let size = lock(&self.shared.broker).config.duplex_buffer;
        let (client, server) = tokio::io::duplex(size);
        self.shared.serve(server);
        client
    }

    /// Serves a client over any transport the test made (for example a pipe with its own
    /// fault injection). Returns the connection's id.
    pub fn serve<T>(&self, io: T) -> ConnId
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.shared.serve(io)
    }

    /// The handle that scripts faults.
    pub fn faults(&self) -> Faults {
        Faults {
            shared: self.shared.clone(),
        }
    }

    /// Changes settings. CONNACK values and the limits enforced on a connection apply to
    /// connections made from now on (live ones keep theirs); [`FlowControl`] and the
    /// capability flags checked at SUBSCRIBE apply at once.
    ///
    /// [`FlowControl`]: crate::FlowControl
    pub fn reconfigure(&self, change: impl FnOnce(&mut Builder)) -> Result<(), Error> {
        let mut broker = lock(&self.shared.broker);
        let mut builder = Builder {
            config: broker.config.clone(),
        };
        change(&mut builder);
        builder.config.validate()?;
        self.shared.events.set_limit(builder.config.event_limit);
        broker.config = builder.config;
        Ok(())
    }

    /// Publishes a message as the server itself (no client is its origin, so no-local never
    /// filters it), for example to feed a subscriber without a second client. Returns how
    /// many sessions it was routed to. The topic must be a full topic name.
    pub fn publish(&self, publish: Publish) -> usize {
        let mut p = publish;
        p.packet_id = None;
        p.dup = false;
        p.properties.topic_alias = None;
        lock(&self.shared.broker).route(&p, "", Instant::now())
    }

    /// Every event so far, in order (since the last [`TestServer::clear_events`], and at
    /// least the latest [`Builder::event_limit`] of them).
    ///
    /// [`Builder::event_limit`]: crate::Builder::event_limit
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.snapshot()
    }

    /// Every packet received from any client so far, in order.
    pub fn received(&self) -> Vec<Packet> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Received(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Every packet sent to any client so far, in order.
    pub fn sent(&self) -> Vec<Packet> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Sent(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The packets received from connections of `client_id`, in order.
    pub fn received_from(&self, client_id: &str) -> Vec<Packet> {
        self.events()
            .into_iter()
            .filter(|e| e.client_id.as_deref() == Some(client_id))
            .filter_map(|e| match e.kind {
                EventKind::Received(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// The packets sent to connections of `client_id`, in order.
    pub fn sent_to(&self, client_id: &str) -> Vec<Packet> {
        self.events()
            .into_iter()
            .filter(|e| e.client_id.as_deref() == Some(client_id))
            .filter_map(|e| match e.kind {
                EventKind::Sent(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Forgets the events logged so far (waits then look at later ones only).
    pub fn clear_events(&self) {
        self.shared.events.clear();
    }

    /// Waits until an event matching `pred` is in the log (looking at the whole log, from
    /// the first event or the last [`TestServer::clear_events`]) and returns the first such.
    /// Each event is shown to `pred` once; `pred` must not call back into the server.
    ///
    /// Cancel safe. Bounded, so a test cannot hang on an event that never comes.
    ///
    /// # Panics
    ///
    /// When no event matches within the wait limit ([`Builder::wait_limit`], default 60 s
    /// of tokio time: free under a paused clock), with the last events in the message. Under a
    /// paused clock, use [`TestServer::connect_duplex`] rather than TCP: tokio may advance a
    /// paused clock while real sockets are busy.
    ///
    /// [`Builder::wait_limit`]: crate::Builder::wait_limit
    pub async fn wait_for(&self, mut pred: impl FnMut(&Event) -> bool) -> Event {
        self.shared
            .events
            .wait(self.wait_limit(), "wait_for", |new, _| {
                new.iter().find(|e| pred(e)).cloned()
            })
            .await
    }

    fn wait_limit(&self) -> std::time::Duration {
        lock(&self.shared.broker).config.wait_limit
    }

    /// Waits until `n` events in the log match `pred` and returns the first `n`. Same rules
    /// as [`TestServer::wait_for`].
    pub async fn wait_for_count(
        &self,
        n: usize,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let mut found = Vec::new();
        let what = format!("wait_for_count({n})");
        self.shared
            .events
            .wait(self.wait_limit(), &what, |new, restarted| {
                if restarted {
                    found.clear();
                }
                for e in new {
                    if found.len() >= n {
                        break;
                    }
                    if pred(e) {
                        found.push(e.clone());
                    }
                }
                (found.len() >= n).then(|| std::mem::take(&mut found))
            })
            .await
    }

    /// Waits until a packet of `kind` has been received from a client and returns the first.
    /// Same rules as [`TestServer::wait_for`].
    pub async fn wait_for_received(&self, kind: PacketType) -> Packet {
        let what = format!("wait_for_received({kind:?})");
        self.shared
            .events
            .wait(self.wait_limit(), &what, |new, _| {
                new.iter()
                    .find_map(|e| e.received().filter(|p| p.packet_type() == kind).cloned())
            })
            .await
    }

    /// The number of live connections (accepted and not yet closed).
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.broker).conns.len()
    }

    /// Waits until exactly `n` connections are live. Cancel safe. Same bound as
    /// [`TestServer::wait_for`].
    pub async fn wait_connection_count(&self, n: usize) {
        let shared = &self.shared;
        let what = format!("wait_connection_count({n})");
        shared
            .events
            .wait_until(self.wait_limit(), &what, || {
                lock(&shared.broker).conns.len() == n
            })
            .await
    }

    /// True when the server keeps a session for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        lock(&self.shared.broker).sessions.contains_key(client_id)
    }

    /// Discards the session of `client_id` if no connection is attached to it (as if it
    /// expired); returns whether one was discarded.
    pub fn discard_session(&self, client_id: &str) -> bool {
        let mut broker = lock(&self.shared.broker);
        let idle = broker
            .sessions
            .get(client_id)
            .is_some_and(|s| s.link.is_none());
        if idle {
            broker.sessions.remove(client_id);
        }
        idle
    }

    /// The topic filters `client_id` is subscribed to (including `$share/` prefixes).
    pub fn subscriptions(&self, client_id: &str) -> Vec<String> {
        lock(&self.shared.broker).subscriptions(client_id)
    }

    /// The retained messages, ordered by topic.
    pub fn retained(&self) -> Vec<Publish> {
        lock(&self.shared.broker).retained()
    }

    /// For `client_id`'s session: (QoS 1/2 deliveries sent and not yet acknowledged,
    /// deliveries queued behind flow control or while offline); `None` without a session.
    pub fn outbound(&self, client_id: &str) -> Option<(usize, usize)> {
        lock(&self.shared.broker).outbound_counts(client_id)
    }

    /// Stops accepting, sends DISCONNECT 0x8B to every connected client, closes every
    /// connection, cancels will and expiry timers, and waits until every task has ended.
    /// Idempotent.
    ///
    /// # Panics
    ///
    /// If a task of the server panicked at any time (a bug in this crate, never the client's
    /// input), so that a test cannot pass over it.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        while let Some(r) = tasks.join_next().await {
            self.shared.record(r);
        }
        // A connection accepted while the set was being drained was never spawned (spawn
        // checks the flag), but its entry may remain.
        lock(&self.shared.broker).conns.clear();
        self.shared.events.poke();
        let failures = self.task_failures();
        if !failures.is_empty() {
            panic!("a testserver task panicked (a bug in paho-testserver): {failures:?}");
        }
    }

    /// Panic messages of server tasks so far. Always empty unless this crate has a bug (or a
    /// transport given to [`TestServer::serve`] panicked); see [`TestServer::shutdown`].
    pub fn task_failures(&self) -> Vec<String> {
        // Collect tasks that ended since the last look: a panic is only known once its task
        // is joined.
        self.shared.reap();
        lock(&self.shared.failures).clone()
    }

    /// True once [`TestServer::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }
}

impl Drop for TestServer {
    /// Aborts every task. A server task that had panicked fails the test here too (unless it
    /// is already failing), so a test that drops the server without
    /// [`TestServer::shutdown`] cannot pass over a bug either.
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        // The tasks hold the shared state, so they would keep each other alive: abort them.
        lock(&self.shared.tasks).abort_all();
        let failures = self.task_failures();
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("a testserver task panicked (a bug in paho-testserver): {failures:?}");
        }
    }
}
