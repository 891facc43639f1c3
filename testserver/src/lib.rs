//! Test support for the paho-rs client family: an in-process, scriptable MQTT v5 broker
//! ([`TestServer`]) and a harness for a real `mosquitto` ([`mosquitto`]).
//!
//! This crate is not published; the other crates use it in their tests.
//!
//! # Layout
//!
//! - [`server`](TestServer): starting the broker, attaching clients over TCP
//!   ([`TestServer::addr`]) or in-memory pipes ([`TestServer::connect_duplex`], which work
//!   with tokio's paused clock), observing it, shutting it down.
//! - [`Builder`]: the CONNACK values the server advertises (Receive Maximum, Maximum Packet
//!   Size, Topic Alias Maximum, Maximum QoS, Retain Available, Session Present, Server Keep
//!   Alive, assigned client id, capability flags) and its behaviours ([`FlowControl`],
//!   outbound topic aliases, keepalive enforcement, an [`auth::Authenticator`]).
//! - [`Faults`]: scripted failures, fired when the Nth packet of a type arrives
//!   ([`Trigger`], [`When`]) or applied at once ([`Target`]): drop the link, DISCONNECT with a
//!   reason, raw bytes or out-of-place packets, half-open silence; and withholding
//!   acknowledgements until release.
//! - [`Event`]s: every packet received and sent, per connection, with
//!   [`TestServer::wait_for`].
//! - [`raw::RawClient`]: a packet-level client that does nothing on its own, for scripting
//!   the client side in tests.
//! - [`mosquitto`]: spawn a real mosquitto on a free loopback port; the skip/require rule.
//! - [`proxy::Proxy`]: a seeded fault-injecting proxy (TCP or in-memory) between clients and
//!   a broker: random cuts, delay, 1-byte writes, half-open blackholes, one-way closes.
//! - [`Error`]: the crate's one error type.
//!
//! Internally, `broker` holds the shared state (sessions, retained messages, routing) under
//! one mutex that is never held across an `.await`, and `conn` runs one task per connection
//! that owns its socket, is the only writer to it, and gets deliveries routed by other
//! connections through a channel.
//!
//! # What the broker does
//!
//! Subscriptions with `+`/`#` wildcards and `$share/group/` shared subscriptions (round
//! robin, online members first); retained messages (an empty payload deletes; retain
//! handling 0/1/2; retain-as-published); no-local; subscription identifiers on deliveries;
//! QoS 0/1/2 both ways with inbound QoS 2 deduplication; persistent sessions (Clean Start
//! 0 + Session Expiry) with resend of unacknowledged PUBLISHes (DUP set) and PUBRELs on
//! reconnect, and session takeover (DISCONNECT 0x8E); wills on abnormal close with Will
//! Delay; inbound topic aliases, and outbound ones when enabled; user properties and the
//! other PUBLISH properties passed through, Message Expiry counted down; the client's
//! Receive Maximum and Maximum Packet Size honoured; its own limits enforced with the
//! right DISCONNECT reason; enhanced authentication and re-authentication. Malformed
//! packets close the connection with DISCONNECT 0x81/0x82 (or a failure CONNACK before
//! CONNECT is accepted), never a panic.
//!
//! # Example
//!
//! ```
//! use paho_packets::{Packet, PacketType, QoS};
//! use paho_testserver::raw::{publish, RawClient};
//! use paho_testserver::{Fault, TestServer, Trigger, When};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), paho_testserver::Error> {
//! let server = TestServer::builder().receive_maximum(10).start().await?;
//!
//! let mut sub = RawClient::new(server.connect_duplex());
//! sub.connect("sub").await?;
//! sub.subscribe(1, "sensors/+", QoS::AtLeastOnce).await?;
//!
//! let mut publisher = RawClient::new(server.connect_duplex());
//! let connack = publisher.connect("pub").await?;
//! assert_eq!(connack.properties.receive_maximum, Some(10));
//!
//! // The second PUBLISH from now on is lost on its way to the server.
//! server.faults().on(
//!     Trigger::nth(PacketType::Publish, 2).when(When::BeforeProcessing),
//!     Fault::Drop,
//! );
//! publisher.send(publish("sensors/1", "21.5", QoS::AtLeastOnce, 1)).await?;
//! assert!(matches!(publisher.expect().await?, Packet::PubAck(_)));
//! let delivered = sub.expect_publish().await?;
//! assert_eq!(&delivered.payload[..], b"21.5");
//!
//! publisher.send(publish("sensors/1", "22.0", QoS::AtLeastOnce, 2)).await?;
//! assert_eq!(publisher.recv().await?, None); // the link was dropped
//!
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod auth;
mod broker;
mod config;
mod conn;
mod error;
mod events;
mod faults;
pub mod mosquitto;
pub mod proxy;
pub mod raw;
mod server;

pub use config::{Builder, FlowControl};
pub use error::Error;
pub use events::{CloseReason, ConnId, Event, EventKind};
pub use faults::{Fault, Faults, Target, Trigger, When, PUBLISH_ACKS};
pub use server::TestServer;
