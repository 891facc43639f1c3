//! [`SessionHandle`]: the session shared by the successive connections of one client.

use std::fmt;
use std::sync::Arc;

use paho_packets::Publish;
use paho_session::{MemoryStore, Session, SessionConfig, Store};
use tokio::sync::Mutex;

use crate::Error;

/// The session engine and its store, shared by the successive clients of one logical client.
///
/// A connection ([`Client::connect`](crate::Client::connect)) takes the session for its whole
/// life and gives it back when it ends; the next connection (a new [`Client`](crate::Client),
/// typically made by a reconnecting manager) takes the same handle and resumes: unfinished
/// publishes are resent and their futures, started on the old connection, resolve on the new
/// one. Only one connection drives a session at a time: `connect` waits until the previous
/// connection's task has let it go.
///
/// Cloning the handle is cheap (an [`Arc`]). The session lives as long as any clone (or a
/// connection using it) does; when the last goes, waiting publish futures resolve with
/// [`SessionClosed`](paho_session::Error::SessionClosed).
///
/// A reconnect loop (what `autopaho` does, with backoff, TLS and several servers):
///
/// ```no_run
/// use paho::session::{FileStore, SessionConfig, StoreIdentity};
/// use paho::{Client, ConnectOptions, SessionHandle};
///
/// # async fn run() -> Result<(), paho::Error> {
/// let identity = StoreIdentity::new("tcp://broker:1883", "sensor-1")?;
/// let store = FileStore::open("/var/lib/sensor-1/session", identity).await?;
/// // Resumes whatever a killed process left in the store.
/// let session = SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store)
///     .await?;
/// let mut options = ConnectOptions::builder().client_id("sensor-1").clean_start(false).build()?;
/// loop {
///     let Ok(tcp) = tokio::net::TcpStream::connect("broker:1883").await else {
///         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///         continue;
///     };
///     let Ok((client, _incoming)) = Client::connect(tcp, options.clone(), session.clone()).await
///     else {
///         continue;
///     };
///     // Later connections keep the id the server assigned, if it assigned one.
///     options = options.with_client_id(client.client_id());
///     // ... hand `client` to the application; publishes started on an earlier connection
///     // finish on this one ...
///     let _why = client.closed().await;
/// }
/// # }
/// ```
pub struct SessionHandle<S: Store = MemoryStore> {
    pub(crate) inner: Arc<Mutex<SessionState<S>>>,
    abandoned: Abandoned,
}

/// Messages the session gave up on, readable while a connection holds the session.
pub(crate) type Abandoned = Arc<std::sync::Mutex<Vec<Publish>>>;

pub(crate) struct SessionState<S> {
    pub(crate) session: Session,
    pub(crate) store: S,
    pub(crate) abandoned: Abandoned,
}

impl<S: Store> Clone for SessionHandle<S> {
    fn clone(&self) -> Self {
        SessionHandle {
            inner: Arc::clone(&self.inner),
            abandoned: Arc::clone(&self.abandoned),
        }
    }
}

impl<S: Store> fmt::Debug for SessionHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("in_use", &self.inner.try_lock().is_err())
            .finish_non_exhaustive()
    }
}

impl SessionHandle<MemoryStore> {
    /// A new, empty session kept in memory.
    pub fn in_memory(config: SessionConfig) -> Self {
        SessionHandle::new(Session::new(config), MemoryStore::new())
    }
}

/// The session's counters as the connection's task last published them (after every
/// event it handled), readable while it drives the session.
#[derive(Debug, Default)]
pub(crate) struct LiveStats {
    unfinished: std::sync::atomic::AtomicUsize,
    waiting: std::sync::atomic::AtomicUsize,
    inbound_pending: std::sync::atomic::AtomicUsize,
    packet_ids_in_use: std::sync::atomic::AtomicUsize,
}

impl LiveStats {
    pub(crate) fn publish(&self, s: &Session) {
        use std::sync::atomic::Ordering::Relaxed;
        self.unfinished.store(s.unfinished(), Relaxed);
        self.waiting.store(s.waiting(), Relaxed);
        self.inbound_pending.store(s.inbound_pending(), Relaxed);
        self.packet_ids_in_use.store(s.packet_ids_in_use(), Relaxed);
    }

    pub(crate) fn read(&self) -> SessionStats {
        use std::sync::atomic::Ordering::Relaxed;
        SessionStats {
            unfinished: self.unfinished.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            inbound_pending: self.inbound_pending.load(Relaxed),
            packet_ids_in_use: self.packet_ids_in_use.load(Relaxed),
        }
    }
}

/// A snapshot of a session's counters, from [`SessionHandle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Unfinished outgoing QoS 1/2 exchanges.
    pub unfinished: usize,
    /// Publishes waiting for a connection, send quota or a packet id.
    pub waiting: usize,
    /// Incoming QoS 2 exchanges awaiting PUBREL.
    pub inbound_pending: usize,
    /// Packet identifiers in use.
    pub packet_ids_in_use: usize,
}

impl<S: Store> SessionHandle<S> {
    /// Wraps a session and the store it was restored from (or an empty one).
    pub fn new(session: Session, store: S) -> Self {
        let abandoned = Abandoned::default();
        SessionHandle {
            inner: Arc::new(Mutex::new(SessionState {
                session,
                store,
                abandoned: Arc::clone(&abandoned),
            })),
            abandoned,
        }
    }

    /// Takes the messages the session gave up on: exchanges restored from the store (their
    /// callers belonged to an earlier process) that the server no longer knew when the
    /// session's [`SessionLostPolicy`](paho_session::SessionLostPolicy) is `Fail`. They are
    /// no longer in the store; publish them again if they must arrive. (Live publishes given
    /// up that way fail their own futures with
    /// [`SessionLost`](paho_session::Error::SessionLost), carrying the message.) Under the
    /// default policy, `Republish`, this stays empty: the session sends them again itself.
    pub fn take_abandoned(&self) -> Vec<Publish> {
        match self.abandoned.lock() {
            Ok(mut a) => std::mem::take(&mut *a),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    /// Restores a session from what `store` holds (what a killed process left) and wraps it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads the store.
    pub async fn restore(config: SessionConfig, store: S) -> Result<Self, Error> {
        let session = Session::restore_from(config, &store).await?;
        Ok(SessionHandle::new(session, store))
    }

    /// The session's counters, read without waiting: `None` while a connection is driving the
    /// session (the connection's task owns it then).
    pub fn stats(&self) -> Option<SessionStats> {
        let g = self.inner.try_lock().ok()?;
        Some(SessionStats {
            unfinished: g.session.unfinished(),
            waiting: g.session.waiting(),
            inbound_pending: g.session.inbound_pending(),
            packet_ids_in_use: g.session.packet_ids_in_use(),
        })
    }

    /// Takes the session and its store back out (for example to close a
    /// [`FileStore`](paho_session::FileStore) before reopening its directory). Fails, returning
    /// the handle, while another clone exists or a connection still uses the session.
    pub fn try_into_parts(self) -> Result<(Session, S), Self> {
        match Arc::try_unwrap(self.inner) {
            Ok(m) => {
                let s = m.into_inner();
                Ok((s.session, s.store))
            }
            Err(inner) => Err(SessionHandle {
                inner,
                abandoned: self.abandoned,
            }),
        }
    }

    /// The outgoing queue entries this session holds (see
    /// [`Client::start_publish_with_origin`](crate::Client::start_publish_with_origin)), read
    /// without waiting: `None` while a connection is driving the session. A queue owner reads
    /// it at start-up, before the first connection, and removes those entries from its queue
    /// instead of sending them again.
    pub fn held_origins(&self) -> Option<Vec<u64>> {
        Some(self.inner.try_lock().ok()?.session.held_origins())
    }

    /// [`Client::release_origins_before`](crate::Client::release_origins_before) while no
    /// connection drives the session (the store entries it frees are deleted when the next
    /// connection starts). `false`, doing nothing, while a connection is driving it: use the
    /// client then.
    pub fn release_origins_before(&self, seq: u64) -> bool {
        match self.inner.try_lock() {
            Ok(mut g) => {
                g.session.release_origins_before(seq);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether a connection is driving the session now.
    pub fn in_use(&self) -> bool {
        self.inner.try_lock().is_err()
    }
}
