//! The reconnecting MQTT v5 client of the paho-rs family: hand it a message and it gets
//! there, across dropped links, broker restarts, failover between servers and (with file
//! stores) the death of the process.
//!
//! [`ConnectionManager`] keeps one connection up to one of a list of servers, reconnecting
//! with backoff; its session outlives every connection, so publishes started on one finish on
//! the next. [`ConnectionManager::publish_via_queue`] adds a durable outbox: it returns once
//! the message is stored in the queue, and the manager moves it to the session exactly once.
//!
//! # Connect and subscribe
//!
//! ```no_run
//! use autopaho::{ConnectionManager, ManagerConfig, Servers};
//! use paho::packets::{QoS, SubscribeProperties, Subscription, SubscriptionOptions};
//! use paho::session::SessionConfig;
//! use paho::ConnectOptions;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ManagerConfig::builder(Servers::parse(["mqtt://broker.example.com"])?)
//!     .connect_options(ConnectOptions::builder().client_id("sensor-1").build()?)
//!     .build()?;
//! let mgr = ConnectionManager::start_in_memory(config, SessionConfig::new());
//! mgr.add_on_publish_received(|m| println!("{} {:?}", m.topic(), m.payload()));
//! // Waits for the first connection; made again whenever the server forgets the session.
//! mgr.subscribe(
//!     vec![Subscription::new("commands/#", SubscriptionOptions::qos(QoS::AtLeastOnce))],
//!     SubscribeProperties::default(),
//! )
//! .await?;
//! mgr.disconnect().await?;
//! # Ok(()) }
//! ```
//!
//! # A durable outbox on files
//!
//! ```no_run
//! use std::sync::Arc;
//! use autopaho::{ConnectionManager, ManagerConfig, Servers};
//! use paho::packets::{Publish, QoS};
//! use paho::session::{FileStore, SessionConfig, StoreIdentity};
//! use paho::{ConnectOptions, SessionHandle};
//! use paho_queue::FileQueue;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "mqtts://broker.example.com";
//! let store = FileStore::open("/var/lib/sensor-1/session", StoreIdentity::new(url, "sensor-1")?)
//!     .await?;
//! // Resumes whatever a killed process left in the session and the queue.
//! let session =
//!     SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store).await?;
//! let queue = Arc::new(FileQueue::builder("/var/lib/sensor-1/queue").open().await?);
//! let config = ManagerConfig::builder(Servers::parse([url])?)
//!     .connect_options(ConnectOptions::builder().client_id("sensor-1").clean_start(false).build()?)
//!     .build()?;
//! let mgr = ConnectionManager::start(config, session, queue);
//! let queued = mgr
//!     .publish_via_queue(Publish {
//!         topic: "sensors/1".into(),
//!         qos: QoS::ExactlyOnce,
//!         payload: "21.5".into(),
//!         ..Default::default()
//!     })
//!     .await?; // fsynced in the queue: it will be delivered, even after a crash
//! let outcome = queued.outcome().await?; // the PUBCOMP, while this process lives
//! assert!(outcome.is_success());
//! # Ok(()) }
//! ```
//!
//! # TLS, WebSocket and failover
//!
//! ```no_run
//! use autopaho::{Backoff, ConnectionManager, Connector, ManagerConfig, Servers, TlsOptions};
//! use paho::session::SessionConfig;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = std::fs::read("ca.pem")?;
//! let (cert, key) = (std::fs::read("client.pem")?, std::fs::read("client.key")?);
//! let tls = TlsOptions::builder().ca_pem(&ca).client_cert_pem(&cert, &key).build()?;
//! let config = ManagerConfig::builder(Servers::parse([
//!     // Tried in order in every round: a cluster's nodes, then a fallback over WebSocket.
//!     "mqtts://node-1.example.com",
//!     "mqtts://node-2.example.com",
//!     "wss://gateway.example.com/mqtt",
//! ])?)
//! .connector(Connector::builder().tls(tls).ws_header("X-Site", "plant-7").build()?)
//! .backoff(Backoff::exponential().initial(Duration::from_millis(500)).max(Duration::from_secs(30)).build()?)
//! .build()?;
//! # let rt = tokio::runtime::Runtime::new()?;
//! # let _g = rt.enter();
//! let mgr = ConnectionManager::start_in_memory(config, SessionConfig::new());
//! let mut events = mgr.events(); // Connecting, Connected, ConnectFailed, Disconnected, ...
//! # let _ = (&mut events, mgr);
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`ServerUrl`], [`Servers`], [`Scheme`] (`server`): validated URLs (`mqtt`/`tcp`,
//!   `mqtts`/`ssl`/`tls`/`mqtt+ssl`/`tcps`, `ws`, `wss`, with default ports 1883, 8883, 80,
//!   443) and a non-empty list of them, tried in order.
//! - [`TlsOptions`] (`tls`): a validating builder for the rustls `ClientConfig`: the public
//!   roots of `webpki-roots` by default, or CAs from PEM, a client certificate for mutual
//!   TLS, the server name (SNI), ALPN. Verification is on unless
//!   [`TlsOptionsBuilder::danger_accept_invalid_certs`] is called, and then every connect
//!   logs a warning. The crypto provider is `ring` (only a C compiler needed to build it).
//! - [`Connect`], [`Connector`], [`FnConnector`] (`connector`): the seam between the
//!   manager and the network. [`Connector`] dispatches on the scheme (TCP with
//!   `TCP_NODELAY`, TLS, WebSocket with the `mqtt` subprotocol) and bounds the whole connect
//!   with a timeout (10 s by default) on tokio's clock; [`FnConnector`] wraps your own
//!   async function for any other transport.
//! - `ws` (private, feature `websocket`, on by default): the WebSocket upgrade and the
//!   adapter from binary messages to a byte stream.
//! - [`Backoff`] (`backoff`): the pure reconnect-delay policy: exponential with jitter,
//!   constant, or your function of the attempt number, with a seedable random source.
//! - [`Error`]: the crate's one error type; [`CertificateProblem`] says why a certificate
//!   was refused.
//!
//! # Example: one connection over a URL
//!
//! ```no_run
//! use autopaho::{Connect, Connector, ServerUrl, TlsOptions};
//! use paho::packets::QoS;
//! use paho::session::SessionConfig;
//! use paho::{Client, ConnectOptions, SessionHandle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca_pem = std::fs::read("ca.pem")?;
//! let connector = Connector::builder()
//!     .tls(TlsOptions::builder().ca_pem(&ca_pem).build()?)
//!     .build()?;
//! // Or "mqtt://...", "ws://host:port/mqtt", "wss://...".
//! let server = ServerUrl::parse("mqtts://broker.example.com:8883")?;
//! let transport = connector.connect(&server).await?;
//!
//! let options = ConnectOptions::builder().client_id("sensor-1").build()?;
//! let session = SessionHandle::in_memory(SessionConfig::new());
//! let (client, _incoming) = Client::connect(transport, options, session).await?;
//! client.subscribe_to("commands/#", QoS::AtLeastOnce).await?;
//! client.disconnect_normally().await?;
//! # Ok(()) }
//! ```
//!
//! # WebSocket
//!
//! MQTT over WebSocket sends MQTT's bytes in binary messages; an MQTT packet may span
//! messages and a message may hold several packets. The adapter reads binary messages into
//! a buffer and hands out as much as each read asks for; it answers pings (tungstenite
//! queues the pong), treats a close frame as end of stream and a text message as an error.
//! Each write becomes one binary message of at most 64 KiB. The path defaults to `/mqtt`
//! when the URL has none; extra headers (for example `Authorization`) are set with
//! [`ConnectorBuilder::ws_header`].
//!
//! # Backoff
//!
//! Attempt `n` (from 0) of [`Backoff::exponential`] waits
//! `min(initial · factorⁿ, max) · (1 + jitter · u)`, `u` uniform in `[-1, 1)`, clipped to
//! `max`. Defaults: 1 s, ×2, 60 s, ±25 %.
//!
//! # The manager
//!
//! - [`ManagerConfig`] (`config`): servers, connector, CONNECT options (Clean Start on the
//!   first connection only), backoff and its reset, resubscription, connect and disconnect
//!   hooks; validated when built.
//! - `manager` (private): the one task. `Connecting` tries every server of the list in
//!   order; `Connected` runs the queue pump and the message dispatch until the link closes;
//!   then `Backoff` waits (never a tight loop, even against a server that accepts and kicks)
//!   and the round starts again. A client id the server assigned is kept. Before every
//!   connection the queue-to-session handoff is settled (queue heads the session already
//!   holds are removed, not sent again).
//! - [`ConnectionManager`] (`handle`): the cloneable handle; dropping the last one stops the
//!   manager; [`WeakConnectionManager`] is for message handlers.
//! - [`Event`], [`ConnectionState`] (`events`): a broadcast stream of what happens.
//!
//! Publishes follow the session's two classes of error: an error means "not done" except
//! one for which [`Error::is_outcome_unknown`] is true (the message is in the session store
//! and is resent when it is reopened; do not publish it again).
//!
//! # Cargo features
//!
//! - `websocket` (default): `ws://` and `wss://` through tokio-tungstenite. Without it a
//!   WebSocket URL still parses, and connecting to it is [`Error::WebSocketDisabled`].
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod backoff;
mod config;
mod connector;
mod error;
mod events;
mod handle;
mod manager;
mod server;
mod tls;
#[cfg(feature = "websocket")]
mod ws;

pub use backoff::{
    Backoff, ExponentialBuilder, DEFAULT_FACTOR, DEFAULT_INITIAL, DEFAULT_JITTER, DEFAULT_MAX,
};
pub use config::{
    ManagerConfig, ManagerConfigBuilder, DEFAULT_BACKOFF_RESET_AFTER, DEFAULT_EVENT_CAPACITY,
};
pub use connector::{
    BoxTransport, Connect, ConnectFuture, Connector, ConnectorBuilder, FnConnector, Transport,
    DEFAULT_CONNECT_TIMEOUT,
};
pub use error::{CertificateProblem, Error};
pub use events::{ConnectionState, Event};
pub use handle::{ConnectionManager, HandlerId, QueuedPublish, Stats, WeakConnectionManager};
pub use server::{Scheme, ServerUrl, Servers, DEFAULT_WS_PATH};
pub use tls::{TlsOptions, TlsOptionsBuilder};
#[cfg(feature = "websocket")]
pub use ws::SUBPROTOCOL as WS_SUBPROTOCOL;

/// The rustls crate this crate builds its TLS configuration with, for
/// [`TlsOptions::from_client_config`].
pub use tokio_rustls::rustls;
