//! [`ManagerConfig`]: what the connection manager needs, validated when it is built.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use paho::packets::{Disconnect, DisconnectReasonCode};
use paho::ConnectOptions;

use crate::{Backoff, Connect, Connector, Error, ServerUrl, Servers};

/// See [`ManagerConfigBuilder::on_connect`].
pub(crate) type ConnectHook =
    Arc<dyn Fn(&ServerUrl, ConnectOptions) -> Option<ConnectOptions> + Send + Sync>;
/// See [`ManagerConfigBuilder::on_disconnect`].
pub(crate) type DisconnectHook = Arc<dyn Fn() -> Disconnect + Send + Sync>;

/// How long a connection must stay up before the backoff starts again from its first delay.
/// A broker that accepts and then kicks the client at once therefore meets growing delays,
/// never a tight loop.
pub const DEFAULT_BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// How many [`Event`](crate::Event)s a receiver may fall behind before it loses the oldest
/// (and hears `Lagged`). The channel reserves room for all of them up front, per manager: at
/// 1,024 that was most of an idle client's memory (about 200 KiB of 239 KiB), while events
/// come a few per connection attempt.
pub const DEFAULT_EVENT_CAPACITY: usize = 64;

/// The largest event capacity [`ManagerConfigBuilder::event_capacity`] takes.
const MAX_EVENT_CAPACITY: usize = 1 << 16;

/// The connection manager's configuration. Built by [`ManagerConfig::builder`].
#[derive(Clone)]
pub struct ManagerConfig {
    pub(crate) servers: Servers,
    pub(crate) connector: Arc<dyn Connect>,
    pub(crate) connect: ConnectOptions,
    pub(crate) backoff: Backoff,
    pub(crate) reset_backoff_after: Duration,
    pub(crate) resubscribe: bool,
    pub(crate) on_connect: Option<ConnectHook>,
    pub(crate) on_disconnect: DisconnectHook,
    pub(crate) event_capacity: usize,
}

impl fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("servers", &self.servers)
            .field("connect", &self.connect)
            .field("backoff", &self.backoff)
            .field("reset_backoff_after", &self.reset_backoff_after)
            .field("resubscribe", &self.resubscribe)
            .finish_non_exhaustive()
    }
}

impl ManagerConfig {
    /// A builder for `servers` (tried in order in every round), with the defaults: the
    /// default [`Connector`] (TCP, TLS with the public roots, WebSocket), the default
    /// [`ConnectOptions`] (Clean Start on the first connection only: later ones resume the
    /// session), the default [`Backoff`] (1 s doubling to 60 s, ±25 %), reset after
    /// [`DEFAULT_BACKOFF_RESET_AFTER`] up, and resubscription when the server has forgotten
    /// the session.
    pub fn builder(servers: Servers) -> ManagerConfigBuilder {
        ManagerConfigBuilder {
            servers,
            connector: None,
            connect: None,
            backoff: Backoff::default(),
            reset_backoff_after: DEFAULT_BACKOFF_RESET_AFTER,
            resubscribe: true,
            on_connect: None,
            on_disconnect: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// The servers, in the order they are tried.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }
}

/// Builds a [`ManagerConfig`].
pub struct ManagerConfigBuilder {
    servers: Servers,
    connector: Option<Arc<dyn Connect>>,
    connect: Option<ConnectOptions>,
    backoff: Backoff,
    reset_backoff_after: Duration,
    resubscribe: bool,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    event_capacity: usize,
}

impl fmt::Debug for ManagerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerConfigBuilder")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl ManagerConfigBuilder {
    /// How to reach a server: the default [`Connector`] with your TLS options or headers, a
    /// [`FnConnector`](crate::FnConnector) for a transport of your own, or a test double.
    pub fn connector(mut self, connector: impl Connect + 'static) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// What goes into CONNECT (client id, keepalive, credentials, will, enhanced
    /// authentication, Receive Maximum, manual acks, ...). Its Clean Start flag is used on
    /// the first connection only; every later one resumes the session (Clean Start 0), and a
    /// client id the server assigned is kept for them. The Session Expiry Interval belongs
    /// to the session ([`SessionConfig`](paho::session::SessionConfig)).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect = Some(options);
        self
    }

    /// The delay policy between attempts: applied after a failed round over the servers,
    /// after a refusing CONNACK, and after the server or the network closes a connection.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a connection must stay up for the backoff to start again from its first
    /// delay (must be more than zero).
    pub fn reset_backoff_after(mut self, after: Duration) -> Self {
        self.reset_backoff_after = after;
        self
    }

    /// Whether subscriptions made through the manager are made again when a CONNACK says
    /// the server has forgotten the session (default: yes). They are made before queued
    /// messages flow.
    pub fn resubscribe(mut self, on: bool) -> Self {
        self.resubscribe = on;
        self
    }

    /// A hook called before every connection attempt with the server and the CONNECT
    /// options about to be sent (Clean Start and client id already adjusted for the
    /// attempt): it returns the options to send (for example with a fresh token as the
    /// password), or `None` to skip this server for this attempt.
    pub fn on_connect(
        mut self,
        f: impl Fn(&ServerUrl, ConnectOptions) -> Option<ConnectOptions> + Send + Sync + 'static,
    ) -> Self {
        self.on_connect = Some(Arc::new(f));
        self
    }

    /// The DISCONNECT that [`disconnect`](crate::ConnectionManager::disconnect) sends
    /// (default: reason 0x00, normal disconnection, so the server discards the will). For
    /// example 0x04 (disconnect with will message), or a Session Expiry Interval.
    pub fn on_disconnect(mut self, f: impl Fn() -> Disconnect + Send + Sync + 'static) -> Self {
        self.on_disconnect = Some(Arc::new(f));
        self
    }

    /// How many events a receiver of [`events`](crate::ConnectionManager::events) may fall
    /// behind before it loses the oldest (default [`DEFAULT_EVENT_CAPACITY`]; taken within
    /// 1 to 65,536). The room is reserved up front.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.clamp(1, MAX_EVENT_CAPACITY);
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<ManagerConfig, Error> {
        if self.reset_backoff_after.is_zero() {
            return Err(Error::InvalidBackoff(
                "reset_backoff_after must be more than zero",
            ));
        }
        let connector = match self.connector {
            Some(c) => c,
            None => Arc::new(Connector::builder().build()?),
        };
        let connect = match self.connect {
            Some(c) => c,
            None => ConnectOptions::builder().build().map_err(Error::Client)?,
        };
        Ok(ManagerConfig {
            servers: self.servers,
            connector,
            connect,
            backoff: self.backoff,
            reset_backoff_after: self.reset_backoff_after,
            resubscribe: self.resubscribe,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect.unwrap_or_else(|| {
                Arc::new(|| Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            }),
            event_capacity: self.event_capacity,
        })
    }
}
