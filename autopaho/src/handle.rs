//! [`ConnectionManager`]: the cloneable handle the application holds.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use paho::packets::{Packet, Publish, SubAck, SubscribeProperties, Subscription};
use paho::session::{MemoryStore, PublishOutcome, SessionConfig, Store};
use paho::{Client, Message, PublishHandle, SessionHandle};
use paho_queue::{MemoryQueue, Queue};
use tokio::sync::{broadcast, oneshot, watch};

use crate::events::{ConnectionState, Event};
use crate::manager::{self, Subscriptions};
use crate::{Error, ManagerConfig};

/// The entry's number, and the numbers of the entries the overflow policy dropped for it.
type EnqueueFuture =
    Pin<Box<dyn Future<Output = Result<(u64, Vec<u64>), paho_queue::Error>> + Send>>;
pub(crate) type Enqueue = Box<dyn Fn(Bytes, SystemTime) -> EnqueueFuture + Send + Sync>;
type Handler = Arc<dyn Fn(&Message) + Send + Sync>;

/// What the handles and the manager's task share.
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The live connection, while one is up.
    pub(crate) client: watch::Sender<Option<Client>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) subscriptions: Mutex<Subscriptions>,
    handlers: Mutex<Vec<(u64, Handler)>>,
    next_handler: AtomicU64,
    enqueue: Enqueue,
    /// Outcomes of `publish_via_queue` calls, by queue entry.
    handoff: Mutex<Handoff>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) done: watch::Sender<Option<Result<(), Error>>>,
    pub(crate) counters: Counters,
    queue_depth: Box<dyn Fn() -> (u64, u64) + Send + Sync>,
}

#[derive(Default)]
struct Handoff {
    waiting: HashMap<u64, oneshot::Sender<PublishHandle>>,
    /// Handles the pump produced before the enqueue that made the entry learned its number.
    unclaimed: HashMap<u64, PublishHandle>,
    /// Enqueues in progress: only while one is, an unclaimed handle may still be claimed.
    enqueuing: usize,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) attempts: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) sent_from_queue: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) overflowed: AtomicU64,
    pub(crate) received: AtomicU64,
}

impl Shared {
    pub(crate) fn emit(&self, e: Event) {
        tracing::debug!(event = ?e, "autopaho event");
        let _ = self.events.send(e);
    }

    pub(crate) fn dispatch(&self, m: &Message) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let handlers: Vec<Handler> = match self.handlers.lock() {
            Ok(h) => h.iter().map(|(_, f)| Arc::clone(f)).collect(),
            Err(_) => return,
        };
        for h in handlers {
            h(m);
        }
    }

    /// The manager stopped: nobody will hand the queued messages over in this run.
    pub(crate) fn forget_waiters(&self) {
        if let Ok(mut h) = self.handoff.lock() {
            h.waiting.clear();
            h.unclaimed.clear();
        }
    }

    /// The pump handed entry `seq` to the session: give its handle to whoever enqueued it.
    pub(crate) fn handed_over(&self, seq: u64, handle: PublishHandle) {
        let Ok(mut h) = self.handoff.lock() else {
            return;
        };
        if let Some(tx) = h.waiting.remove(&seq) {
            let _ = tx.send(handle);
        } else if h.enqueuing > 0 {
            h.unclaimed.insert(seq, handle);
        }
        // Otherwise it was queued by an earlier process, or its caller is gone: nobody
        // waits, and the session finishes it all the same.
    }
}

/// The handle of a running connection manager: cheap to clone, `Send` and `Sync`. When the
/// last clone is dropped the manager disconnects and stops.
///
/// Made by [`ConnectionManager::start`]. Every method works whether or not a connection is
/// up: [`publish`](ConnectionManager::publish) fails fast when none is, while
/// [`publish_via_queue`](ConnectionManager::publish_via_queue) and
/// [`subscribe`](ConnectionManager::subscribe) wait for one.
#[derive(Clone)]
pub struct ConnectionManager {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Stops the manager when the last handle goes.
struct Owner {
    stop: watch::Sender<bool>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner").finish_non_exhaustive()
    }
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

/// A snapshot of the manager's counters, from [`ConnectionManager::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Where the manager is.
    pub state: ConnectionState,
    /// Connection attempts (each server tried counts once).
    pub attempts: u64,
    /// Connections that came up.
    pub connects: u64,
    /// Entries in the outgoing queue.
    pub queue_len: u64,
    /// Payload bytes in the outgoing queue.
    pub queue_bytes: u64,
    /// Queue entries handed to the session (stored there, then removed from the queue).
    pub sent_from_queue: u64,
    /// Queue entries dropped because their Message Expiry Interval passed while they waited.
    pub expired: u64,
    /// Queue entries dropped by the queue's `DropOldest` overflow policy.
    pub overflowed: u64,
    /// Messages received and passed to the handlers.
    pub received: u64,
    /// Outgoing QoS 1/2 exchanges the session has not finished (sent and awaiting their
    /// acknowledgement, or to be resent), while a connection is up; 0 otherwise.
    pub in_flight: usize,
    /// Publishes waiting in the session for send quota (the server's Receive Maximum).
    pub waiting: usize,
}

/// The outcome of [`ConnectionManager::publish_via_queue`]: the message is durable in the
/// queue; this resolves with the server's acknowledgement once the exchange completes (while
/// this process lives).
#[derive(Debug)]
pub struct QueuedPublish {
    seq: u64,
    rx: oneshot::Receiver<PublishHandle>,
}

impl QueuedPublish {
    /// The queue entry's number (increasing in queue order).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits for the acknowledgement: the PUBACK, or the PUBCOMP (or a failing PUBREC).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the manager stopped before the message left the queue (it stays
    /// there, durable, for the next run on the same queue), the publish's own error, or a
    /// [`Error::is_outcome_unknown`] error: then it is in the session store and is resent
    /// when that store is reopened; do not publish it again.
    ///
    /// # Cancel safety
    ///
    /// Dropping it loses only the outcome: the message is still sent.
    pub async fn outcome(self) -> Result<PublishOutcome, Error> {
        let handle = self.rx.await.map_err(|_| Error::Stopped)?;
        Ok(handle.await?)
    }
}

/// A handle that does not keep the manager running ([`ConnectionManager::downgrade`]): what a
/// message handler should hold, since the manager holds its handlers (a handler holding a
/// [`ConnectionManager`] would keep it from stopping when the application drops its own).
#[derive(Clone, Debug)]
pub struct WeakConnectionManager {
    shared: std::sync::Weak<Shared>,
    owner: std::sync::Weak<Owner>,
}

impl WeakConnectionManager {
    /// The manager, if any strong handle still exists.
    pub fn upgrade(&self) -> Option<ConnectionManager> {
        Some(ConnectionManager {
            shared: self.shared.upgrade()?,
            _owner: self.owner.upgrade()?,
        })
    }
}

/// Removes the message handler it was returned for ([`ConnectionManager::add_on_publish_received`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

impl ConnectionManager {
    /// Starts a manager with the session and the outgoing queue given (for example a
    /// [`FileStore`](paho::session::FileStore) session and a
    /// [`FileQueue`](paho_queue::FileQueue), for an outbox that survives the process) and
    /// returns at once; the first connection attempt starts in the background. Must be
    /// called within a tokio runtime.
    ///
    /// At start, the queue entries that the session already holds (a process killed between
    /// handing an entry to the session and removing it from the queue) are removed from the
    /// queue, not sent again.
    pub fn start<S: Store, Q: Queue + 'static>(
        config: ManagerConfig,
        session: SessionHandle<S>,
        queue: Arc<Q>,
    ) -> ConnectionManager {
        let q = Arc::clone(&queue);
        let enqueue: Enqueue = Box::new(move |payload, at| {
            let q = Arc::clone(&q);
            Box::pin(async move {
                q.enqueue(payload, at)
                    .await
                    .map(|e| (e.seq(), e.dropped().iter().map(|d| d.seq()).collect()))
            })
        });
        // Weak: the handles must not keep the queue open after the manager has stopped (an
        // application that closes a `FileQueue` takes it back with `Arc::try_unwrap`).
        let qd = Arc::downgrade(&queue);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: watch::channel(ConnectionState::Connecting).0,
            client: watch::channel(None).0,
            events: broadcast::channel(config.event_capacity).0,
            subscriptions: Mutex::new(Subscriptions::default()),
            handlers: Mutex::new(Vec::new()),
            next_handler: AtomicU64::new(0),
            enqueue,
            handoff: Mutex::new(Handoff::default()),
            stop: stop.clone(),
            done: watch::channel(None).0,
            counters: Counters::default(),
            queue_depth: Box::new(move || qd.upgrade().map_or((0, 0), |q| (q.len(), q.bytes()))),
        });
        tokio::spawn(manager::run(
            Arc::clone(&shared),
            config,
            session,
            queue,
            stop_rx,
        ));
        ConnectionManager {
            shared,
            _owner: Arc::new(Owner { stop }),
        }
    }

    /// [`start`](ConnectionManager::start) with a session in memory (Session Expiry 0 unless
    /// `session` says otherwise) and an unbounded queue in memory: reconnects keep what
    /// is in flight, a restart of the process does not.
    pub fn start_in_memory(config: ManagerConfig, session: SessionConfig) -> ConnectionManager {
        ConnectionManager::start(
            config,
            SessionHandle::<MemoryStore>::in_memory(session),
            Arc::new(MemoryQueue::new(paho_queue::Limits::unbounded())),
        )
    }

    /// A handle that does not keep the manager running: for message handlers (see
    /// [`WeakConnectionManager`]).
    pub fn downgrade(&self) -> WeakConnectionManager {
        WeakConnectionManager {
            shared: Arc::downgrade(&self.shared),
            owner: Arc::downgrade(&self._owner),
        }
    }

    /// Re-authenticates on the current connection with the connect options'
    /// [`Authenticator`](paho::Authenticator) (AUTH 0x19). Fails fast with
    /// [`Error::NotConnected`] when no connection is up; later connections authenticate
    /// afresh in their CONNECT anyway.
    ///
    /// # Cancel safety
    ///
    /// As [`paho::Client::reauthenticate`].
    pub async fn reauthenticate(&self) -> Result<(), Error> {
        let c = self.current().ok_or(Error::NotConnected)?;
        Ok(c.reauthenticate().await?)
    }

    /// The events from this call on (see [`Event`]); a receiver sees only what happens after
    /// it was made. The first connection attempt starts at once in the background, so take
    /// the receiver right after [`start`](ConnectionManager::start), before awaiting
    /// anything, and look at [`state`](ConnectionManager::state) for where the manager
    /// already is.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Where the manager is now.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// Waits until a connection is up and returns its client (for what the manager does not
    /// wrap: re-authentication, the server's capabilities, ...).
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the manager stops first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn await_connection(&self) -> Result<Client, Error> {
        let mut rx = self.shared.client.subscribe();
        let mut done = self.shared.done.subscribe();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                if !c.is_closed() {
                    return Ok(c);
                }
            }
            if done.borrow().is_some() {
                return Err(Error::Stopped);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(Error::Stopped) },
                _ = done.changed() => {}
            }
        }
    }

    fn current(&self) -> Option<Client> {
        self.shared
            .client
            .borrow()
            .clone()
            .filter(|c| !c.is_closed())
    }

    /// Publishes on the current connection, without the durable queue. It fails fast with
    /// [`Error::NotConnected`] when no connection is up. The returned handle resolves like
    /// [`paho::Client::publish`]; a stored QoS 1/2 message survives reconnects (the session
    /// outlives the connection). It never waits, so a message handler may call it.
    pub fn start_publish(&self, publish: Publish) -> Result<PublishHandle, Error> {
        let c = self.current().ok_or(Error::NotConnected)?;
        Ok(c.start_publish(publish))
    }

    /// [`start_publish`](ConnectionManager::start_publish), awaiting the outcome.
    ///
    /// # Cancel safety
    ///
    /// As [`paho::Client::publish`]: a message already stored is still sent.
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, Error> {
        Ok(self.start_publish(publish)?.await?)
    }

    /// Hands a message to the durable outgoing queue and returns once it is stored there
    /// (for a [`FileQueue`](paho_queue::FileQueue), fsynced), whether or not a connection is
    /// up. The manager sends queued messages in order while connected; one leaves the queue
    /// only once its PUBLISH is durable in the session, and a crash between the two never
    /// sends it twice. Packet identifiers are assigned when a message leaves the queue, so
    /// the backlog is not limited to 65,535. A message whose Message Expiry Interval passes
    /// in the queue is dropped ([`Event::QueueExpired`]); the others leave with the interval
    /// reduced by the time they waited. Topic aliases are applied per connection, never
    /// stored.
    ///
    /// # Errors
    ///
    /// The queue's errors (full under `Overflow::Reject`, too large, I/O): the message was
    /// not queued, and publishing it again is safe, unless [`Error::is_outcome_unknown`].
    /// A PUBLISH that cannot be encoded is refused here.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while the queue waits for room enqueues nothing; once the entry
    /// was handed to the queue, dropping it does not withdraw the message.
    pub async fn publish_via_queue(&self, mut publish: Publish) -> Result<QueuedPublish, Error> {
        // A placeholder the session replaces when the message leaves the queue (packet ids are
        // per connection; the queue is not limited to 65,535 of them).
        publish.packet_id =
            (publish.qos != paho::packets::QoS::AtMostOnce).then_some(paho::packets::PacketId::MIN);
        publish.dup = false;
        publish.properties.topic_alias = None;
        if publish.topic.is_empty() {
            return Err(Error::Client(paho::Error::InvalidArgument(
                "a queued message needs its topic name",
            )));
        }
        let mut buf = BytesMut::new();
        Packet::Publish(publish)
            .encode(&mut buf)
            .map_err(|e| Error::Client(e.into()))?;
        if let Ok(mut h) = self.shared.handoff.lock() {
            h.enqueuing += 1;
        }
        let r = (self.shared.enqueue)(buf.freeze(), SystemTime::now()).await;
        let (tx, rx) = oneshot::channel();
        let mut h = self.shared.handoff.lock().map_err(|_| Error::Stopped)?;
        h.enqueuing -= 1;
        let result = match r {
            Ok((seq, dropped)) => {
                if !dropped.is_empty() {
                    self.shared
                        .counters
                        .overflowed
                        .fetch_add(dropped.len() as u64, Ordering::Relaxed);
                    self.shared.emit(Event::QueueOverflow { dropped });
                }
                match h.unclaimed.remove(&seq) {
                    Some(handle) => {
                        let _ = tx.send(handle);
                    }
                    // Stopped: no pump in this run; `outcome` says `Stopped`, and the message
                    // waits in the queue for the next run.
                    None if self.shared.done.borrow().is_some() => drop(tx),
                    None => {
                        h.waiting.insert(seq, tx);
                    }
                }
                Ok(QueuedPublish { seq, rx })
            }
            Err(e) => Err(e.into()),
        };
        if h.enqueuing == 0 {
            h.unclaimed.clear();
        }
        result
    }

    /// Subscribes, and remembers the subscriptions: they are made again whenever a CONNACK
    /// says the server has forgotten the session. While no connection is up it waits for
    /// the next one; if the connection drops before the SUBACK it tries again on the next.
    /// A filter the server refuses (reason code 0x80 or above) is forgotten.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe for the waiting; the subscriptions are remembered from the call on, and a
    /// SUBSCRIBE already sent is not withdrawn.
    pub async fn subscribe(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<SubAck, Error> {
        if let Ok(mut s) = self.shared.subscriptions.lock() {
            s.remember(&subscriptions, &properties);
        }
        loop {
            let c = self.await_connection().await?;
            match c.subscribe(subscriptions.clone(), properties.clone()).await {
                Ok(ack) => {
                    if let Ok(mut s) = self.shared.subscriptions.lock() {
                        s.refused(&subscriptions, &ack);
                    }
                    return Ok(ack);
                }
                Err(paho::Error::ConnectionClosed)
                | Err(paho::Error::Session(paho::session::Error::ConnectionLost)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Unsubscribes (and forgets the filters). Waits for a connection like
    /// [`subscribe`](ConnectionManager::subscribe).
    pub async fn unsubscribe(
        &self,
        filters: Vec<String>,
    ) -> Result<paho::packets::UnsubAck, Error> {
        if let Ok(mut s) = self.shared.subscriptions.lock() {
            s.forget(&filters);
        }
        loop {
            let c = self.await_connection().await?;
            let f = filters.iter().map(|f| f.as_str().into()).collect();
            match c.unsubscribe(f, Default::default()).await {
                Ok(ack) => return Ok(ack),
                Err(paho::Error::ConnectionClosed)
                | Err(paho::Error::Session(paho::session::Error::ConnectionLost)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Adds a handler called for every message received, on every connection, until it is
    /// [removed](ConnectionManager::remove_on_publish_received). Handlers run one after the
    /// other on the manager's receiving task: keep them short, and publish from them with
    /// [`start_publish`](ConnectionManager::start_publish) or
    /// [`publish_via_queue`](ConnectionManager::publish_via_queue) in a spawned task, never by
    /// blocking. With automatic acknowledgement (the default) a QoS 1/2 message is
    /// acknowledged once every handler has returned for it, so a process killed while a
    /// handler runs gets the message again from the server (at-least-once to the
    /// application, even at QoS 2); with
    /// [`manual_acks`](paho::ConnectOptionsBuilder::manual_acks) a handler acks it itself.
    pub fn add_on_publish_received(
        &self,
        f: impl Fn(&Message) + Send + Sync + 'static,
    ) -> HandlerId {
        let id = self.shared.next_handler.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.shared.handlers.lock() {
            h.push((id, Arc::new(f)));
        }
        HandlerId(id)
    }

    /// Removes a handler; `false` if it was already gone.
    pub fn remove_on_publish_received(&self, id: HandlerId) -> bool {
        match self.shared.handlers.lock() {
            Ok(mut h) => {
                let before = h.len();
                h.retain(|(i, _)| *i != id.0);
                h.len() != before
            }
            Err(_) => false,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let (queue_len, queue_bytes) = (self.shared.queue_depth)();
        let live = self.current().map(|c| c.session_stats());
        Stats {
            state: self.state(),
            attempts: c.attempts.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            queue_len,
            queue_bytes,
            sent_from_queue: c.sent_from_queue.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            overflowed: c.overflowed.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            in_flight: live.map_or(0, |s| s.unfinished),
            waiting: live.map_or(0, |s| s.waiting),
        }
    }

    /// Stops the manager: sends DISCONNECT (normal) on the connection if one is up, stops
    /// reconnecting, and waits until the manager's task has ended. Unfinished publishes
    /// stay in the session and queued messages in the queue, for the next start. Returns
    /// promptly under load (the DISCONNECT does not wait behind a stuck socket for more than
    /// paho's close timeout).
    ///
    /// # Cancel safety
    ///
    /// Once called, the stop happens even if the future is dropped.
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.shared.stop.send_replace(true);
        self.done().await
    }

    /// Waits until the manager has stopped, and says why: `Ok` after
    /// [`disconnect`](ConnectionManager::disconnect), or the fatal error (a failed session
    /// store or queue). Every task the manager started has ended by then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn done(&self) -> Result<(), Error> {
        let mut rx = self.shared.done.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(Error::Stopped);
            }
        }
    }
}
