//! The single-connection MQTT v5 client of the paho-rs family.
//!
//! One [`Client`] drives one network connection over any `AsyncRead + AsyncWrite` transport
//! (TCP, TLS, WebSocket adapter, in-memory pipe), on tokio. It drives a session
//! ([`SessionHandle`]) that outlives the connection: a publish started on one connection
//! finishes on the next one made with the same session, which is how the reconnecting
//! `autopaho` manager uses it (a new `Client` per connection, one session throughout).
//!
//! # Layout
//!
//! - [`Client`] (`client`): the cloneable handle, [`Client::connect`] and the CONNECT /
//!   CONNACK / enhanced-authentication handshake; [`PublishHandle`].
//! - `driver` (private): the connection's task, the only place with a `select!` over the
//!   socket, the handles' commands, the store and the keepalive timer. It feeds the
//!   [`Session`](session::Session) engine and carries out its actions in order.
//! - [`SessionHandle`] (`session_handle`): the session and its store, shared by successive
//!   connections.
//! - [`ConnectOptions`] (`options`): what goes in CONNECT and how the connection behaves,
//!   built by a validating builder.
//! - [`ServerCapabilities`] (`capabilities`): the CONNACK's limits, checked before sending.
//! - [`Message`], [`Incoming`], [`AckOutcome`] (`message`): receiving and acknowledging.
//! - [`Handler`], [`Chain`] (`handler`) and [`router::Router`]: dispatching received messages.
//! - [`Authenticator`] (`auth`): enhanced authentication and re-authentication.
//! - `alias` and `keepalive` (private): per-connection topic aliases and keepalive timing.
//! - [`extensions::rpc`]: request and response helpers.
//! - [`Error`]: the crate's one error type. [`packets`] and [`session`] re-export the codec
//!   and the session crate.
//!
//! # Example
//!
//! ```no_run
//! use paho::packets::{Publish, QoS};
//! use paho::session::SessionConfig;
//! use paho::{Client, ConnectOptions, SessionHandle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:1883").await?;
//! stream.set_nodelay(true)?;
//! let options = ConnectOptions::builder().client_id("sensor-1").clean_start(false).build()?;
//! let session = SessionHandle::in_memory(SessionConfig::new().session_expiry_interval(3600));
//! let (client, mut incoming) = Client::connect(stream, options, session.clone()).await?;
//!
//! client.subscribe_to("commands/sensor-1/#", QoS::AtLeastOnce).await?;
//! tokio::spawn(async move {
//!     while let Some(message) = incoming.recv().await {
//!         println!("{}: {:?}", message.topic(), message.payload());
//!     }
//! });
//!
//! let outcome = client
//!     .publish(Publish {
//!         topic: "sensors/1".into(),
//!         qos: QoS::ExactlyOnce,
//!         payload: "21.5".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! assert!(outcome.is_success());
//! client.disconnect_normally().await?;
//! # Ok(()) }
//! ```
//!
//! # Receiving and backpressure
//!
//! Messages are queued by the connection's task on [`Incoming`] (never waiting for the
//! application). The client advertises a Receive Maximum
//! ([`ConnectOptionsBuilder::receive_maximum`]); a QoS 1/2 message counts against it until the
//! application takes it ([`Incoming::recv`], automatic acks) or acks it ([`Message::ack`],
//! manual acks), so a slow application slows the server down. PUBACK/PUBREC always go out in
//! arrival order. A server that overshoots the Receive Maximum (mosquitto 2.0.11 at QoS 2) is
//! tolerated with a warning unless [`ConnectOptionsBuilder::strict_receive_maximum`] is set.
//!
//! # Cancel safety
//!
//! Every public async function documents its cancel safety. In short: dropping a publish
//! future never withdraws a message that was stored (it is still sent and acknowledged);
//! dropping [`Client::connect`] gives the session back untouched; receiving is cancel safe.
//!
//! # Logging
//!
//! `tracing` spans (`mqtt`, with the client id) cover the connection; events report connect,
//! close, publish and acknowledgement flow (at `trace` for per-message events). Passwords and
//! authentication data are never logged.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod alias;
mod auth;
mod capabilities;
mod client;
mod driver;
mod error;
pub mod extensions;
mod handler;
mod keepalive;
mod message;
mod options;
pub mod router;
mod session_handle;

pub use auth::Authenticator;
pub use capabilities::ServerCapabilities;
pub use client::{Client, PublishHandle};
pub use error::Error;
pub use handler::{Chain, Handler};
pub use message::{AckOutcome, Incoming, Message};
pub use options::{
    ConnectOptions, ConnectOptionsBuilder, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_QOS0,
    DEFAULT_RECEIVE_MAXIMUM, DEFAULT_TOPIC_ALIAS_MAXIMUM,
};
pub use paho_session::PublishOutcome;
pub use session_handle::{SessionHandle, SessionStats};

/// The MQTT v5 codec (the `paho-packets` crate).
pub use paho_packets as packets;
/// The session state and its stores (the `paho-session` crate).
pub use paho_session as session;

#[cfg(test)]
mod send_sync {
    //! Compile-time checks that handles and futures can move between tasks and threads.

    use super::*;
    use paho_session::FileStore;

    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn handles_and_futures_are_send(
        client: Client,
        incoming: Incoming,
        options: ConnectOptions,
        session: SessionHandle<FileStore>,
        memory: SessionHandle,
        transport: tokio::io::DuplexStream,
    ) {
        send_sync(&client);
        send_sync(&options);
        send_sync(&session);
        send(&incoming);
        send(&client.start_publish(Default::default()));
        send(&client.publish(Default::default()));
        send(&client.subscribe_to("a", paho_packets::QoS::AtMostOnce));
        send(&client.disconnect_normally());
        send(&client.closed());
        send(&Client::connect(transport, options, memory));
    }
}
