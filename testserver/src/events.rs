//! What tests can observe: a log of every packet the server received and sent, per
//! connection, and a way to wait for an entry.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use paho_packets::{DisconnectReasonCode, Packet};
use tokio::sync::Notify;

/// Identifies one network connection (TCP or duplex pipe) to the server, in accept order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The number behind the id (1 for the first connection).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason.
    ClientDisconnect(DisconnectReasonCode),
    /// The server sent DISCONNECT with this reason (protocol error, fault, takeover, ...).
    ServerDisconnect(DisconnectReasonCode),
    /// The server refused the CONNECT with a failure CONNACK.
    Refused,
    /// The client closed the link without DISCONNECT, or it failed.
    LinkClosed,
    /// A [`Fault::Drop`](crate::Fault::Drop) closed the link.
    Dropped,
    /// The server was shut down.
    Shutdown,
}

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A connection was accepted.
    Opened,
    /// A packet arrived from the client (logged before any fault or processing).
    Received(Packet),
    /// A packet was queued for writing to the client (after withholding and topic aliasing,
    /// so this is what goes on the wire).
    Sent(Packet),
    /// Raw bytes were queued for writing by [`Fault::SendRaw`](crate::Fault::SendRaw).
    SentRaw(Bytes),
    /// The server could not decode what the client sent; it closes the connection.
    Malformed(String),
    /// The connection ended.
    Closed(CloseReason),
}

/// One entry of the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The connection.
    pub conn: ConnId,
    /// The client id once the CONNECT was read (the assigned one if the server assigned it).
    pub client_id: Option<String>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The packet received from the client, if this is a [`EventKind::Received`].
    pub fn received(&self) -> Option<&Packet> {
        match &self.kind {
            EventKind::Received(p) => Some(p),
            _ => None,
        }
    }

    /// The packet sent to the client, if this is a [`EventKind::Sent`].
    pub fn sent(&self) -> Option<&Packet> {
        match &self.kind {
            EventKind::Sent(p) => Some(p),
            _ => None,
        }
    }
}

/// How many of the latest events a failed wait shows.
const GAVE_UP_TAIL: usize = 20;

/// The append-only log and the notification that wakes waiters on every append.
#[derive(Debug)]
pub(crate) struct EventLog {
    inner: Mutex<Log>,
    appended: Notify,
}

#[derive(Debug)]
struct Log {
    entries: Vec<Event>,
    /// How many events were removed from the front (trimmed or cleared) over the log's life,
    /// so waiters can keep absolute read positions.
    removed: u64,
    /// Counts [`EventLog::clear`]s, so a waiter knows to forget what it counted.
    clears: u64,
    /// Keep at least this many of the latest events (see [`EventLog::push`]).
    limit: usize,
}

impl EventLog {
    pub(crate) fn new(limit: usize) -> Self {
        EventLog {
            inner: Mutex::new(Log {
                entries: Vec::new(),
                removed: 0,
                clears: 0,
                limit,
            }),
            appended: Notify::new(),
        }
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        lock(&self.inner).limit = limit;
    }

    /// Appends an event. Once the log holds twice its limit, the oldest are dropped down to
    /// the limit: a long test or a demo left running must not grow memory without bound, and
    /// trimming in batches keeps a push O(1) amortised.
    pub(crate) fn push(&self, event: Event) {
        tracing::trace!(conn = %event.conn, client = ?event.client_id, kind = ?event.kind, "testserver event");
        {
            let mut log = lock(&self.inner);
            log.entries.push(event);
            let limit = log.limit;
            if log.entries.len() >= limit.saturating_mul(2) {
                let excess = log.entries.len() - limit;
                log.entries.drain(..excess);
                log.removed += excess as u64;
            }
        }
        self.appended.notify_waiters();
    }

    pub(crate) fn snapshot(&self) -> Vec<Event> {
        lock(&self.inner).entries.clone()
    }

    pub(crate) fn clear(&self) {
        let mut log = lock(&self.inner);
        log.removed += log.entries.len() as u64;
        log.entries.clear();
        log.clears += 1;
    }

    /// Wakes waiters without appending (used when the connection count changes).
    pub(crate) fn poke(&self) {
        self.appended.notify_waiters();
    }

    /// Waits until `cond` holds; `cond` is checked on every append or poke, without the log's
    /// lock held.
    ///
    /// # Panics
    ///
    /// When `cond` still does not hold after `limit` of tokio time; `what` names the wait.
    pub(crate) async fn wait_until(
        &self,
        limit: Duration,
        what: &str,
        mut cond: impl FnMut() -> bool,
    ) {
        let waiting = async {
            loop {
                let notified = self.appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if cond() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, waiting).await.is_err() {
            self.gave_up(limit, what);
        }
    }

    /// Waits until `check` returns `Some`. `check` is given the entries it has not seen yet
    /// (so a long log is scanned once, not once per append) and `true` when the log was
    /// cleared since its last call (it must then forget what it counted). It runs under the
    /// log's lock and must not call back into the server.
    ///
    /// # Panics
    ///
    /// When `check` found nothing after `limit` of tokio time; `what` names the wait.
    pub(crate) async fn wait<T>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&[Event], bool) -> Option<T>,
    ) -> T {
        // Absolute position (counting removed events) of the first event not yet checked.
        let mut seen: u64 = 0;
        let mut clears = None;
        let waiting = async {
            loop {
                // Register interest before looking, so an append between the look and the await
                // is not missed.
                let notified = self.appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let log = lock(&self.inner);
                    let restarted = clears.is_some_and(|c| c != log.clears);
                    clears = Some(log.clears);
                    // Events trimmed before this waiter saw them are gone; it goes on from
                    // the oldest one kept.
                    let start = usize::try_from(seen.saturating_sub(log.removed))
                        .unwrap_or(usize::MAX)
                        .min(log.entries.len());
                    let found = check(&log.entries[start..], restarted);
                    seen = log.removed + log.entries.len() as u64;
                    if let Some(found) = found {
                        return found;
                    }
                }
                notified.await;
            }
        };
        match tokio::time::timeout(limit, waiting).await {
            Ok(found) => found,
            Err(_) => self.gave_up(limit, what),
        }
    }

    /// A wait ran out: fail the test with what it waited for and the last events, instead of
    /// letting it hang (an event that never comes would otherwise block CI for good).
    fn gave_up(&self, limit: Duration, what: &str) -> ! {
        let log = lock(&self.inner);
        let tail: Vec<String> = log
            .entries
            .iter()
            .rev()
            .take(GAVE_UP_TAIL)
            .rev()
            .map(|e| format!("  {} {:?}: {:?}", e.conn, e.client_id, e.kind))
            .collect();
        let total = log.entries.len();
        drop(log);
        panic!(
            "paho-testserver: {what} did not happen within {limit:?} (Builder::wait_limit); \
             the last {} of {total} events:\n{}",
            tail.len(),
            tail.join("\n")
        );
    }
}

/// Locks a mutex, ignoring poisoning: a test that panicked while holding it has already
/// failed, and the data (a log, a map) is still consistent enough to read.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
