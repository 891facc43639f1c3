//! Tracing output covers the connection and never contains secrets (password, authentication
//! data). A minimal subscriber captures every span field and event at every level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use paho::packets::{Auth, AuthProperties, AuthReasonCode, ConnAck, Packet, QoS};
use paho::{Authenticator, Client, Error};
use tracing::field::{Field, Visit};
use tracing::span;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &span::Attributes<'_>) -> span::Id {
        let mut s = self.0.lock().unwrap();
        let _ = write!(s, "\nspan {} ", attrs.metadata().name());
        attrs.record(&mut Fields(&mut s));
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, values: &span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut s = self.0.lock().unwrap();
        let _ = write!(s, "\n{} ", event.metadata().level());
        event.record(&mut Fields(&mut s));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

struct Secretive;

impl Authenticator for Secretive {
    fn method(&self) -> &str {
        "SECRET-METHOD"
    }
    fn initial_data(&mut self, _: bool) -> Result<Option<Bytes>, Error> {
        Ok(Some(Bytes::from_static(b"initial-auth-secret")))
    }
    fn challenge(&mut self, _: Option<&Bytes>) -> Result<Option<Bytes>, Error> {
        Ok(Some(Bytes::from_static(b"response-auth-secret")))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn logs_cover_the_connection_but_never_hold_secrets() {
    within(LIMIT, async {
        let capture = Capture::default();
        let _guard = tracing::subscriber::set_default(capture.clone());
        let opts = options()
            .username("alice")
            .password(Bytes::from_static(b"hunter2-password"))
            .authenticator(Secretive)
            .build()
            .unwrap();
        // The options' Debug redacts too.
        assert!(!format!("{opts:?}").contains("hunter2"));
        let (io, mut peer) = pipe();
        let server = tokio::spawn(async move {
            peer.expect().await;
            peer.send(Auth {
                reason_code: AuthReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some("SECRET-METHOD".into()),
                    authentication_data: Some(Bytes::from_static(b"challenge-auth-secret")),
                    ..Default::default()
                },
            })
            .await;
            peer.expect().await;
            peer.send(Packet::from(ConnAck::default())).await;
            peer
        });
        let (client, mut incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let mut peer = server.await.unwrap();
        let h = client.start_publish(publish("t", QoS::AtLeastOnce, "x"));
        let id = peer.expect_publish().await.packet_id.unwrap();
        peer.puback(id).await;
        h.await.unwrap();
        peer.send(server_publish("in", QoS::AtLeastOnce, 1, "y"))
            .await;
        incoming.recv().await.unwrap();
        peer.expect().await;
        client.disconnect_normally().await.unwrap();

        let log = capture.0.lock().unwrap().clone();
        for needle in [
            "connected",
            "sending CONNECT",
            "PUBLISH out",
            "PUBLISH in",
            "disconnected",
        ] {
            assert!(log.contains(needle), "{needle} missing from:\n{log}");
        }
        for secret in ["hunter2", "auth-secret", "auth_secret"] {
            assert!(!log.contains(secret), "{secret} logged:\n{log}");
        }
    })
    .await
}
