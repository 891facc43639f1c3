//! What the server advertises in CONNACK and how it behaves: [`Builder`] and its options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use paho_packets::{ConnectReasonCode, QoS};

use crate::auth::Authenticator;
use crate::server::TestServer;
use crate::Error;

/// The default of [`Builder::wait_limit`].
const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The default of [`Builder::event_limit`]: room for the 8 events of each of 10,000 QoS 2
/// messages through the server, with a margin.
const DEFAULT_EVENT_LIMIT: usize = 100_000;

/// How the server honours a client's Receive Maximum when it delivers QoS 1/2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlowControl {
    /// Never more unacknowledged QoS 1/2 deliveries than the client's Receive Maximum
    /// (MQTT-4.9.0-2). A QoS 2 delivery counts until its PUBCOMP.
    #[default]
    Honour,
    /// Like mosquitto 2.0.11: a QoS 2 delivery stops counting once the client's PUBREC has
    /// arrived, so more unfinished QoS 2 deliveries (awaiting PUBCOMP) are outstanding than the
    /// client's Receive Maximum allows. Reproduces the quirk in the field notes.
    ReleaseAtPubRec,
    /// Ignore the client's Receive Maximum entirely: send every message at once.
    Ignore,
}

/// Settings of a [`TestServer`]; the values it advertises in CONNACK and how it behaves.
///
/// Built through [`Builder`]; a running server's settings can be changed for future
/// connections with [`TestServer::reconfigure`].
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) maximum_packet_size: Option<u32>,
    pub(crate) topic_alias_maximum: u16,
    pub(crate) maximum_qos: QoS,
    pub(crate) retain_available: bool,
    pub(crate) wildcard_available: bool,
    pub(crate) subscription_ids_available: bool,
    pub(crate) shared_available: bool,
    pub(crate) server_keep_alive: Option<u16>,
    pub(crate) session_present: Option<bool>,
    pub(crate) assigned_client_id: Option<String>,
    pub(crate) connack_reason: ConnectReasonCode,
    pub(crate) send_topic_aliases: bool,
    pub(crate) flow_control: FlowControl,
    pub(crate) enforce_keep_alive: bool,
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) duplex_buffer: usize,
    pub(crate) wait_limit: Duration,
    pub(crate) event_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            receive_maximum: None,
            maximum_packet_size: None,
            // mosquitto advertises 10 too; clients may then send aliases.
            topic_alias_maximum: 10,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_available: true,
            subscription_ids_available: true,
            shared_available: true,
            server_keep_alive: None,
            session_present: None,
            assigned_client_id: None,
            connack_reason: ConnectReasonCode::Success,
            send_topic_aliases: false,
            flow_control: FlowControl::Honour,
            enforce_keep_alive: true,
            authenticator: None,
            duplex_buffer: 64 * 1024,
            wait_limit: DEFAULT_WAIT_LIMIT,
            event_limit: DEFAULT_EVENT_LIMIT,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("receive_maximum", &self.receive_maximum)
            .field("maximum_packet_size", &self.maximum_packet_size)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("maximum_qos", &self.maximum_qos)
            .field("retain_available", &self.retain_available)
            .field("wildcard_available", &self.wildcard_available)
            .field(
                "subscription_ids_available",
                &self.subscription_ids_available,
            )
            .field("shared_available", &self.shared_available)
            .field("server_keep_alive", &self.server_keep_alive)
            .field("session_present", &self.session_present)
            .field("assigned_client_id", &self.assigned_client_id)
            .field("connack_reason", &self.connack_reason)
            .field("send_topic_aliases", &self.send_topic_aliases)
            .field("flow_control", &self.flow_control)
            .field("enforce_keep_alive", &self.enforce_keep_alive)
            .field("authenticator", &self.authenticator.is_some())
            .field("wait_limit", &self.wait_limit)
            .field("event_limit", &self.event_limit)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The largest packet the server accepts (its own Maximum Packet Size, or the protocol's).
    pub(crate) fn max_inbound_packet(&self) -> u32 {
        self.maximum_packet_size
            .unwrap_or(paho_packets::MAX_PACKET_SIZE)
    }

    /// The number of unacknowledged QoS 1/2 PUBLISHes a client may have outstanding.
    pub(crate) fn inbound_receive_maximum(&self) -> u16 {
        self.receive_maximum.unwrap_or(u16::MAX)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.receive_maximum == Some(0) {
            return Err(Error::Config("Receive Maximum must be at least 1"));
        }
        if self.maximum_packet_size == Some(0) {
            return Err(Error::Config("Maximum Packet Size must be at least 1"));
        }
        if self.duplex_buffer == 0 {
            return Err(Error::Config(
                "the duplex buffer must hold at least one byte",
            ));
        }
        if self.event_limit == 0 {
            return Err(Error::Config("the event limit must be at least 1"));
        }
        if self.wait_limit.is_zero() {
            return Err(Error::Config("the wait limit must be more than zero"));
        }
        if self.assigned_client_id.as_deref() == Some("") {
            return Err(Error::Config("an assigned client id must not be empty"));
        }
        Ok(())
    }
}

/// Builds a [`TestServer`]: the CONNACK values it advertises and the behaviours it has.
///
/// Every setter has the protocol's default (or mosquitto's) until called. [`Builder::start`]
/// validates the settings and starts the server.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    pub(crate) config: Config,
}

impl Builder {
    /// Receive Maximum in CONNACK, enforced on inbound QoS 1/2 PUBLISHes: a client with more
    /// unacknowledged ones gets DISCONNECT 0x93. Default: not sent (65,535). Must be >= 1.
    pub fn receive_maximum(&mut self, n: u16) -> &mut Self {
        self.config.receive_maximum = Some(n);
        self
    }

    /// Maximum Packet Size in CONNACK, enforced on every inbound packet: a larger one gets
    /// DISCONNECT 0x95. Default: not sent (no limit). Must be >= 1.
    pub fn maximum_packet_size(&mut self, n: u32) -> &mut Self {
        self.config.maximum_packet_size = Some(n);
        self
    }

    /// Topic Alias Maximum in CONNACK: the highest alias a client may send. 0 turns inbound
    /// aliases off (an alias is then DISCONNECT 0x94). Default: 10, like mosquitto.
    pub fn topic_alias_maximum(&mut self, n: u16) -> &mut Self {
        self.config.topic_alias_maximum = n;
        self
    }

    /// Maximum QoS in CONNACK. A PUBLISH above it gets DISCONNECT 0x9B, a will above it
    /// CONNACK 0x9B; subscriptions are granted at most this QoS. Default: 2 (not sent).
    pub fn maximum_qos(&mut self, qos: paho_packets::QoS) -> &mut Self {
        self.config.maximum_qos = qos;
        self
    }

    /// Retain Available in CONNACK. When false, a retained PUBLISH gets DISCONNECT 0x9A and a
    /// retained will CONNACK 0x9A. Default: true (not sent).
    pub fn retain_available(&mut self, yes: bool) -> &mut Self {
        self.config.retain_available = yes;
        self
    }

    /// Wildcard Subscription Available in CONNACK. When false, a wildcard filter gets SUBACK
    /// 0xA2. Default: true (not sent).
    pub fn wildcard_subscription_available(&mut self, yes: bool) -> &mut Self {
        self.config.wildcard_available = yes;
        self
    }

    /// Subscription Identifier Available in CONNACK. When false, a SUBSCRIBE with an
    /// identifier gets DISCONNECT 0xA1. Default: true (not sent).
    pub fn subscription_identifiers_available(&mut self, yes: bool) -> &mut Self {
        self.config.subscription_ids_available = yes;
        self
    }

    /// Shared Subscription Available in CONNACK. When false, a `$share/` filter gets SUBACK
    /// 0x9E. Default: true (not sent).
    pub fn shared_subscription_available(&mut self, yes: bool) -> &mut Self {
        self.config.shared_available = yes;
        self
    }

    /// Server Keep Alive in CONNACK: the keepalive the client must use instead of its own
    /// (and the one the server enforces). Default: not sent.
    pub fn server_keep_alive(&mut self, seconds: u16) -> &mut Self {
        self.config.server_keep_alive = Some(seconds);
        self
    }

    /// Forces the Session Present flag of successful CONNACKs, whatever the server kept (for
    /// example `false` to test a client whose session the server "lost"). Default: the truth.
    pub fn session_present(&mut self, present: bool) -> &mut Self {
        self.config.session_present = Some(present);
        self
    }

    /// The client id to assign to a client that connects with an empty one. Default:
    /// `testserver-N` with N counting up.
    pub fn assigned_client_id(&mut self, id: impl Into<String>) -> &mut Self {
        self.config.assigned_client_id = Some(id.into());
        self
    }

    /// Refuses every CONNECT with this CONNACK reason code (a failure code, 0x80 or above);
    /// [`ConnectReasonCode::Success`] accepts again. Default: accept.
    pub fn connack_reason(&mut self, code: ConnectReasonCode) -> &mut Self {
        self.config.connack_reason = code;
        self
    }

    /// Sends topic aliases to clients that accept them (their CONNECT's Topic Alias Maximum):
    /// the first message on a topic carries the topic and a new alias, later ones an empty
    /// topic and the alias. Aliases are per connection; once they run out, the least recently
    /// used one is reassigned to the new topic (sent with that topic, so the client must
    /// replace its mapping). Default: off (mosquitto never sends aliases).
    pub fn send_topic_aliases(&mut self, yes: bool) -> &mut Self {
        self.config.send_topic_aliases = yes;
        self
    }

    /// How the client's Receive Maximum limits QoS 1/2 deliveries. Default:
    /// [`FlowControl::Honour`].
    pub fn flow_control(&mut self, flow: FlowControl) -> &mut Self {
        self.config.flow_control = flow;
        self
    }

    /// Whether the server closes a connection that is silent for 1.5 times its keepalive
    /// (sending DISCONNECT 0x8D). Default: true.
    pub fn enforce_keep_alive(&mut self, yes: bool) -> &mut Self {
        self.config.enforce_keep_alive = yes;
        self
    }

    /// Enables enhanced authentication: a CONNECT with an Authentication Method is passed to
    /// `auth`, and so is a later AUTH 0x19 (re-authentication). Without an authenticator, a
    /// CONNECT with a method gets CONNACK 0x8C.
    pub fn authenticator(&mut self, auth: impl Authenticator) -> &mut Self {
        self.config.authenticator = Some(Arc::new(auth));
        self
    }

    /// The buffer size of each in-memory pipe made by [`TestServer::connect_duplex`], in bytes.
    /// Default: 64 KiB.
    pub fn duplex_buffer(&mut self, bytes: usize) -> &mut Self {
        self.config.duplex_buffer = bytes;
        self
    }

    /// How long [`TestServer::wait_for`] and the other `wait_*` helpers wait before they
    /// panic (with the last events in the message). Default: 60 s of tokio time, which costs
    /// no real time under a paused clock; it is there so a test whose event never comes
    /// fails instead of hanging CI.
    pub fn wait_limit(&mut self, limit: Duration) -> &mut Self {
        self.config.wait_limit = limit;
        self
    }

    /// How many of the latest events the log keeps at least ([`TestServer::events`] and the
    /// `wait_*` helpers). Once it holds twice as many, the oldest are dropped down to this
    /// number, so a long test or a demo does not grow memory without bound; a wait that had
    /// not looked at dropped events yet goes on from the oldest kept. Default: 100,000.
    /// [`TestServer::clear_events`] empties the log at any time.
    pub fn event_limit(&mut self, events: usize) -> &mut Self {
        self.config.event_limit = events;
        self
    }

    /// Validates the settings, binds `127.0.0.1:0` and starts the server.
    ///
    /// Must be called inside a tokio runtime; the server's tasks run on that runtime.
    pub async fn start(&self) -> Result<TestServer, Error> {
        self.config.validate()?;
        TestServer::start_with(self.config.clone()).await
    }
}
