//! TLS against a real mosquitto with a TLS listener (certificates made by rcgen at test
//! time). Skips with a notice when mosquitto is absent, unless `PAHO_REQUIRE_MOSQUITTO=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use autopaho::{CertificateProblem, Connect, Connector, Error, ServerUrl, TlsOptions};
use bytes::Bytes;
use common::{bounded, round_trip, Ca};
use paho_testserver::mosquitto::{self, Mosquitto, TlsListener};

async fn tls_broker(ca: &Ca, require_certificate: bool) -> Option<Mosquitto> {
    let server = ca.server();
    let builder = mosquitto::require()?.tls(
        TlsListener::new(ca.pem(), server.cert_pem, server.key_pem)
            .require_certificate(require_certificate),
    );
    Some(builder.start().await.expect("mosquitto failed to start"))
}

fn url(m: &Mosquitto) -> ServerUrl {
    ServerUrl::parse(&format!("mqtts://127.0.0.1:{}", m.port())).unwrap()
}

/// mosquitto requires client certificates: with one, a paho round trip over `mqtts://`.
#[tokio::test]
async fn mosquitto_mutual_tls_round_trip() {
    bounded(async {
        let ca = Ca::new("mosquitto test CA");
        let Some(broker) = tls_broker(&ca, true).await else {
            return;
        };
        let client = ca.client();
        let tls = TlsOptions::builder()
            .ca_pem(ca.pem())
            .client_cert_pem(&client.cert_pem, &client.key_pem)
            .build()
            .unwrap();
        let c = Connector::builder().tls(tls).build().unwrap();
        let t = c.connect(&url(&broker)).await.unwrap();
        round_trip(t, "mosq-mtls", Bytes::from(vec![7u8; 10_000])).await;
    })
    .await;
}

/// mosquitto requires client certificates and gets none: the connection fails with an error
/// about the certificate (at the TLS handshake or, with TLS 1.3, at the MQTT CONNECT).
#[tokio::test]
async fn mosquitto_refuses_a_client_without_a_certificate() {
    bounded(async {
        let ca = Ca::new("mosquitto test CA");
        let Some(broker) = tls_broker(&ca, true).await else {
            return;
        };
        let c = Connector::builder()
            .tls(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap())
            .build()
            .unwrap();
        let res = match c.connect(&url(&broker)).await {
            Err(e) => e.to_string(),
            Ok(t) => {
                let options = paho::ConnectOptions::builder()
                    .client_id("no-cert")
                    .build()
                    .unwrap();
                let session = paho::SessionHandle::in_memory(paho::session::SessionConfig::new());
                match paho::Client::connect(t, options, session).await {
                    Ok(_) => panic!("mosquitto accepted a client without a certificate"),
                    Err(e) => e.to_string(),
                }
            }
        };
        eprintln!("without a client certificate: {res}");
        assert!(
            res.to_lowercase().contains("certificate"),
            "unclear error: {res}"
        );
    })
    .await;
}

/// Server-only TLS on mosquitto: a wrong CA is a typed verification error; the right CA
/// gives a round trip.
#[tokio::test]
async fn mosquitto_tls_wrong_ca_then_right_ca() {
    bounded(async {
        let ca = Ca::new("mosquitto test CA");
        let Some(broker) = tls_broker(&ca, false).await else {
            return;
        };
        let other = Ca::new("another CA");
        let c = Connector::builder()
            .tls(TlsOptions::builder().ca_pem(other.pem()).build().unwrap())
            .build()
            .unwrap();
        let e = c
            .connect(&url(&broker))
            .await
            .err()
            .expect("wrong CA accepted");
        assert!(
            matches!(
                e,
                Error::CertificateVerification {
                    problem: CertificateProblem::UnknownIssuer,
                    ..
                }
            ),
            "{e:?}"
        );
        let c = Connector::builder()
            .tls(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap())
            .build()
            .unwrap();
        let t = c.connect(&url(&broker)).await.unwrap();
        round_trip(t, "mosq-tls", Bytes::from_static(b"server-only tls")).await;
    })
    .await;
}
