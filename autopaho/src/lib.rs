//! The reconnecting MQTT v5 client of the paho-rs family: its transport layer.
//!
//! This first layer of `autopaho` turns a server URL into a connected byte stream that a
//! [`paho::Client`] runs MQTT over, and decides how long to wait between attempts. The
//! reconnecting connection manager is built on top of it (see "What is still to come").
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
//! # What is still to come
//!
//! The manager, built on this layer: a validated configuration (servers, CONNECT options,
//! session and queue stores, backoff, events); `policy` (a connect error or a closed
//! connection becomes retry, next server or stop); `manager` (the one task and `select!`,
//! state `Backoff | Connecting | Connected | Stopping`, a `watch` of the connection state);
//! `pump` (queued publishes into the session, exactly once); and `handle` (the cloneable
//! `ConnectionManager`). Until then, use [`Connect`] and [`Backoff`] with [`paho::Client`]
//! directly, as above.
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
pub use config::{ManagerConfig, ManagerConfigBuilder, DEFAULT_BACKOFF_RESET_AFTER};
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
