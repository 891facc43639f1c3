//! Connection settings: [`ConnectOptions`] and its validating builder.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use paho_packets::topic::validate_topic_name;
use paho_packets::{MqttString, UserProperty, Will};

use crate::auth::Authenticator;
use crate::Error;

/// The Receive Maximum the client advertises unless told otherwise.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 1024;
/// The Topic Alias Maximum (inbound) the client advertises unless told otherwise.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 16;
/// How many received QoS 0 messages may wait for the application unless told otherwise.
pub const DEFAULT_MAX_QUEUED_QOS0: usize = 10_000;
/// How many bytes of received messages may wait for the application unless told otherwise.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

/// Everything the client puts in CONNECT, and how it behaves on the connection.
///
/// Built with [`ConnectOptions::builder`], which validates. Cheap to clone (a reconnecting
/// manager connects again with the same options). The Session Expiry Interval is not here: it
/// belongs to the session ([`SessionConfig`](paho_session::SessionConfig)), which sends it in
/// CONNECT.
#[derive(Clone)]
pub struct ConnectOptions {
    pub(crate) client_id: MqttString,
    pub(crate) clean_start: bool,
    pub(crate) keep_alive: u16,
    pub(crate) will: Option<Will>,
    pub(crate) username: Option<MqttString>,
    pub(crate) password: Option<Bytes>,
    pub(crate) authenticator: Option<Arc<Mutex<dyn Authenticator>>>,
    pub(crate) receive_maximum: u16,
    pub(crate) maximum_packet_size: Option<u32>,
    pub(crate) topic_alias_maximum: u16,
    pub(crate) outbound_topic_aliases: u16,
    pub(crate) request_response_information: Option<bool>,
    pub(crate) request_problem_information: Option<bool>,
    pub(crate) user_properties: Vec<UserProperty>,
    pub(crate) manual_acks: bool,
    pub(crate) strict_receive_maximum: bool,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) max_queued_qos0: usize,
    pub(crate) max_queued_bytes: usize,
}

// Hand-written so that the password and the authenticator never reach a log.
impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("will_topic", &self.will.as_ref().map(|w| &w.topic))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "authenticator",
                &self.authenticator.as_ref().map(|_| "<authenticator>"),
            )
            .field("receive_maximum", &self.receive_maximum)
            .field("maximum_packet_size", &self.maximum_packet_size)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("outbound_topic_aliases", &self.outbound_topic_aliases)
            .field("manual_acks", &self.manual_acks)
            .field("strict_receive_maximum", &self.strict_receive_maximum)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_queued_qos0", &self.max_queued_qos0)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// A builder with the defaults: empty client id (the server assigns one), Clean Start 1,
    /// keepalive 60 s, Receive Maximum [`DEFAULT_RECEIVE_MAXIMUM`], no Maximum Packet Size
    /// (any size accepted), Topic Alias Maximum [`DEFAULT_TOPIC_ALIAS_MAXIMUM`], no outbound
    /// aliases, automatic acknowledgement, lenient Receive Maximum, connect timeout 30 s, at
    /// most [`DEFAULT_MAX_QUEUED_QOS0`] QoS 0 messages and [`DEFAULT_MAX_QUEUED_BYTES`] bytes
    /// of messages waiting for the application.
    pub fn builder() -> ConnectOptionsBuilder {
        ConnectOptionsBuilder {
            opts: ConnectOptions {
                client_id: MqttString::new(),
                clean_start: true,
                keep_alive: 60,
                will: None,
                username: None,
                password: None,
                authenticator: None,
                receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
                maximum_packet_size: None,
                topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
                outbound_topic_aliases: 0,
                request_response_information: None,
                request_problem_information: None,
                user_properties: Vec::new(),
                manual_acks: false,
                strict_receive_maximum: false,
                connect_timeout: Some(Duration::from_secs(30)),
                max_queued_qos0: DEFAULT_MAX_QUEUED_QOS0,
                max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            },
            error: None,
        }
    }

    /// The client identifier sent in CONNECT (empty: the server assigns one).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The Clean Start flag requested.
    pub fn clean_start(&self) -> bool {
        self.clean_start
    }

    /// A copy with another Clean Start flag (a reconnecting manager connects with `false`
    /// after the first connection).
    pub fn with_clean_start(&self, clean_start: bool) -> ConnectOptions {
        let mut o = self.clone();
        o.clean_start = clean_start;
        o
    }

    /// A copy with manual acknowledgement on or off (a manager that acknowledges each message
    /// only after its handlers ran turns it on underneath).
    pub fn with_manual_acks(&self, on: bool) -> ConnectOptions {
        let mut o = self.clone();
        o.manual_acks = on;
        o
    }

    /// A copy with another client identifier (for example the one the server assigned).
    pub fn with_client_id(&self, client_id: impl Into<MqttString>) -> ConnectOptions {
        let mut o = self.clone();
        o.client_id = client_id.into();
        o
    }

    /// The keepalive requested, in seconds (0: off).
    pub fn keep_alive(&self) -> u16 {
        self.keep_alive
    }

    /// The Receive Maximum advertised.
    pub fn receive_maximum(&self) -> u16 {
        self.receive_maximum
    }

    /// Whether messages are acknowledged by the application ([`Message::ack`](crate::Message::ack)).
    pub fn manual_acks(&self) -> bool {
        self.manual_acks
    }
}

/// Builds [`ConnectOptions`]; [`build`](ConnectOptionsBuilder::build) validates.
#[derive(Debug, Clone)]
pub struct ConnectOptionsBuilder {
    opts: ConnectOptions,
    error: Option<Error>,
}

impl ConnectOptionsBuilder {
    fn fail(&mut self, e: &'static str) {
        if self.error.is_none() {
            self.error = Some(Error::InvalidConfig(e));
        }
    }

    /// The client identifier; empty asks the server to assign one (returned by
    /// [`Client::client_id`](crate::Client::client_id)).
    pub fn client_id(mut self, id: impl Into<MqttString>) -> Self {
        self.opts.client_id = id.into();
        self
    }

    /// Clean Start: discard any session the server kept (and the local one).
    pub fn clean_start(mut self, clean: bool) -> Self {
        self.opts.clean_start = clean;
        self
    }

    /// The keepalive interval, whole seconds up to 65,535; zero turns keepalive off. The
    /// server may impose its own (Server Keep Alive in CONNACK), which the client then uses.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        match u16::try_from(interval.as_secs()) {
            Ok(s) if interval.subsec_nanos() == 0 => self.opts.keep_alive = s,
            _ => self.fail("keep_alive must be whole seconds up to 65,535"),
        }
        self
    }

    /// The will message, published by the server if the connection ends abnormally.
    pub fn will(mut self, will: Will) -> Self {
        if validate_topic_name(&will.topic).is_err() {
            self.fail("the will topic must be a non-empty topic name without wildcards");
        }
        self.opts.will = Some(will);
        self
    }

    /// User name.
    pub fn username(mut self, username: impl Into<MqttString>) -> Self {
        self.opts.username = Some(username.into());
        self
    }

    /// Password (never logged).
    pub fn password(mut self, password: impl Into<Bytes>) -> Self {
        self.opts.password = Some(password.into());
        self
    }

    /// Enhanced authentication: the method and data come from `authenticator`.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        if authenticator.method().is_empty() {
            self.fail("the authentication method must not be empty");
        }
        self.opts.authenticator = Some(Arc::new(Mutex::new(authenticator)));
        self
    }

    /// The Receive Maximum to advertise: how many QoS 1/2 messages the server may have
    /// unacknowledged towards this client (1..=65,535). It is the backpressure the application
    /// applies: a message counts until the application has taken it (automatic acks) or acked
    /// it (manual acks).
    pub fn receive_maximum(mut self, n: u16) -> Self {
        if n == 0 {
            self.fail("receive_maximum must be at least 1");
        }
        self.opts.receive_maximum = n;
        self
    }

    /// The largest packet the client accepts; a larger one from the server closes the link
    /// with 0x95. At least 128 bytes. Unset: any size.
    pub fn maximum_packet_size(mut self, max: u32) -> Self {
        if max < 128 {
            self.fail("maximum_packet_size must be at least 128 bytes");
        }
        self.opts.maximum_packet_size = Some(max);
        self
    }

    /// The highest topic alias the server may use towards the client (0: none). Aliases the
    /// server uses are resolved before the application sees a message.
    pub fn topic_alias_maximum(mut self, max: u16) -> Self {
        self.opts.topic_alias_maximum = max;
        self
    }

    /// How many topic aliases the client may assign to outgoing PUBLISHes (0: off), least
    /// recently used first out; capped by the server's Topic Alias Maximum. Aliases are
    /// applied per connection as packets are written and never stored.
    pub fn outbound_topic_aliases(mut self, max: u16) -> Self {
        self.opts.outbound_topic_aliases = max;
        self
    }

    /// Ask for Response Information in CONNACK.
    pub fn request_response_information(mut self, on: bool) -> Self {
        self.opts.request_response_information = Some(on);
        self
    }

    /// Whether the server may send Reason Strings and User Properties on failures.
    pub fn request_problem_information(mut self, on: bool) -> Self {
        self.opts.request_problem_information = Some(on);
        self
    }

    /// Adds a User Property to CONNECT.
    pub fn user_property(
        mut self,
        key: impl Into<MqttString>,
        value: impl Into<MqttString>,
    ) -> Self {
        self.opts.user_properties.push((key.into(), value.into()));
        self
    }

    /// Manual acknowledgement: QoS 1/2 messages are acknowledged when the application calls
    /// [`Message::ack`](crate::Message::ack) (PUBACK/PUBREC still go out in arrival order).
    /// Because of that order, a message dropped without an ack holds back the acks of every
    /// later message of the connection (the server redelivers it on the next connection), so
    /// ack or close. Off: a message is acknowledged when the application takes it from
    /// [`Incoming`](crate::Incoming).
    pub fn manual_acks(mut self, on: bool) -> Self {
        self.opts.manual_acks = on;
        self
    }

    /// Strict Receive Maximum: a server that has more QoS 1/2 messages unacknowledged than the
    /// advertised Receive Maximum is disconnected with 0x93. Off (the default): a warning is
    /// logged and the messages are processed (mosquitto 2.0.11 overshoots at QoS 2), up to
    /// 65,535 unacknowledged (one per packet identifier): beyond that the server is reusing
    /// identifiers, and the connection is closed with 0x93 in either mode.
    pub fn strict_receive_maximum(mut self, on: bool) -> Self {
        self.opts.strict_receive_maximum = on;
        self
    }

    /// How long [`Client::connect`](crate::Client::connect) waits for CONNACK (including an
    /// enhanced-authentication exchange); `None`: forever.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.opts.connect_timeout = timeout;
        self
    }

    /// How many received QoS 0 messages may wait in [`Incoming`](crate::Incoming) for the
    /// application (at least 1). MQTT has no flow control for QoS 0, so past this bound new
    /// ones are dropped (at most once allows it) with a warning, rather than memory growing
    /// without limit. QoS 1/2 messages are never dropped: the Receive Maximum bounds them.
    pub fn max_queued_qos0(mut self, n: usize) -> Self {
        if n == 0 {
            self.fail("max_queued_qos0 must be at least 1");
        }
        self.opts.max_queued_qos0 = n;
        self
    }

    /// How many bytes of received messages (payloads and topics, plus a small allowance per
    /// message) may wait in [`Incoming`](crate::Incoming) for the application (at least 1).
    /// A count of messages is not a bound on memory when any size is accepted, so this is
    /// the bound in bytes:
    ///
    /// * while more than this waits, the connection stops reading from the socket, so the
    ///   server is held back by TCP, until the application takes enough messages; nothing is
    ///   lost;
    /// * except while the application waits for an answer from the server (an
    ///   unacknowledged publish, a subscribe or unsubscribe, a re-authentication): reading
    ///   goes on then, so that a handler that publishes and awaits the outcome cannot
    ///   deadlock. QoS 0 messages past the bound are then dropped with a warning (as past
    ///   [`max_queued_qos0`](Self::max_queued_qos0)), and QoS 1/2 ones are bounded by our
    ///   Receive Maximum times our Maximum Packet Size.
    ///
    /// While reading is paused the keepalive still pings the server, but the link is not
    /// declared dead (the answers wait behind the unread messages).
    pub fn max_queued_bytes(mut self, n: usize) -> Self {
        if n == 0 {
            self.fail("max_queued_bytes must be at least 1");
        }
        self.opts.max_queued_bytes = n;
        self
    }

    /// Validates and returns the options.
    pub fn build(self) -> Result<ConnectOptions, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let o = self.opts;
        if o.client_id.len() > 65_535 {
            return Err(Error::InvalidConfig("client id longer than 65,535 bytes"));
        }
        if o.password.as_ref().is_some_and(|p| p.len() > 65_535) {
            return Err(Error::InvalidConfig("password longer than 65,535 bytes"));
        }
        Ok(o)
    }
}
