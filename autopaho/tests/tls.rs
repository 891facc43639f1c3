//! TLS through the default connector against an in-test rustls server (certificates made
//! by rcgen at test time) in front of the in-process `paho_testserver::TestServer`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use autopaho::{CertificateProblem, Connect, Connector, Error, ServerUrl, TlsOptions};
use bytes::Bytes;
use common::{acceptor, bounded, round_trip, tls_front, Ca, WarnCounter};
use paho_testserver::TestServer;

async fn server() -> Arc<TestServer> {
    Arc::new(TestServer::start().await.unwrap())
}

fn connector(tls: TlsOptions) -> Connector {
    Connector::builder().tls(tls).build().unwrap()
}

fn url(host: &str, port: u16) -> ServerUrl {
    ServerUrl::parse(&format!("mqtts://{host}:{port}")).unwrap()
}

/// A custom CA, the server certificate for 127.0.0.1: a publish/subscribe round trip over
/// `mqtts://127.0.0.1`, and over `tls://localhost` (the name from the URL as SNI).
#[tokio::test]
async fn tls_round_trip_with_a_custom_ca() {
    bounded(async {
        let ca = Ca::new("test CA");
        let front = tls_front(acceptor(&ca.server(), None), server().await).await;
        let c = connector(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap());
        let t = c
            .connect(&url("127.0.0.1", front.addr.port()))
            .await
            .unwrap();
        round_trip(t, "tls-ip", Bytes::from_static(b"hello over tls")).await;
        let by_name = ServerUrl::parse(&format!("tls://localhost:{}", front.addr.port())).unwrap();
        let t = c.connect(&by_name).await.unwrap();
        round_trip(t, "tls-name", Bytes::from_static(b"by name")).await;
        assert!(front.errors.lock().unwrap().is_empty());
    })
    .await;
}

/// The server requires a client certificate: with one signed by the CA it trusts, the round
/// trip works.
#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    bounded(async {
        let ca = Ca::new("test CA");
        let client = ca.client();
        let front = tls_front(acceptor(&ca.server(), Some(&ca)), server().await).await;
        let tls = TlsOptions::builder()
            .ca_pem(ca.pem())
            .client_cert_pem(&client.cert_pem, &client.key_pem)
            .build()
            .unwrap();
        let t = connector(tls)
            .connect(&url("127.0.0.1", front.addr.port()))
            .await
            .unwrap();
        round_trip(t, "mtls", Bytes::from_static(b"mutual")).await;
        assert!(front.errors.lock().unwrap().is_empty());
    })
    .await;
}

/// The server requires a client certificate and gets none: the connection fails, and the
/// error names the missing certificate. With TLS 1.3 the client's handshake completes
/// before the server checks, so the failure surfaces on the MQTT CONNECT as the server's
/// `CertificateRequired` alert.
#[tokio::test]
async fn mutual_tls_without_a_client_certificate_fails_clearly() {
    bounded(async {
        let ca = Ca::new("test CA");
        let front = tls_front(acceptor(&ca.server(), Some(&ca)), server().await).await;
        let c = connector(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap());
        let res = match c.connect(&url("127.0.0.1", front.addr.port())).await {
            Err(e) => e.to_string(),
            Ok(t) => {
                let options = paho::ConnectOptions::builder()
                    .client_id("no-cert")
                    .build()
                    .unwrap();
                let session = paho::SessionHandle::in_memory(paho::session::SessionConfig::new());
                match paho::Client::connect(t, options, session).await {
                    Ok(_) => panic!("connected without a client certificate"),
                    Err(e) => e.to_string(),
                }
            }
        };
        assert!(res.contains("CertificateRequired"), "unclear error: {res}");
        let server_side = front.errors.lock().unwrap().join("; ");
        assert!(
            server_side.contains("no certificate"),
            "server saw: {server_side}"
        );
    })
    .await;
}

/// The client trusts another CA: a typed certificate-verification error (unknown issuer),
/// whose message says so.
#[tokio::test]
async fn a_wrong_ca_fails_with_certificate_verification() {
    bounded(async {
        let ca = Ca::new("the server's CA");
        let other = Ca::new("another CA");
        let front = tls_front(acceptor(&ca.server(), None), server().await).await;
        let c = connector(TlsOptions::builder().ca_pem(other.pem()).build().unwrap());
        let e = c
            .connect(&url("127.0.0.1", front.addr.port()))
            .await
            .err()
            .expect("connected although the CA is wrong");
        assert!(
            matches!(
                &e,
                Error::CertificateVerification {
                    problem: CertificateProblem::UnknownIssuer,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("certificate verification failed"),
            "{e}"
        );
        assert!(!e.is_config());
    })
    .await;
}

/// The default roots (webpki-roots) do not trust a private CA either.
#[tokio::test]
async fn public_roots_do_not_trust_a_private_ca() {
    bounded(async {
        let ca = Ca::new("test CA");
        let front = tls_front(acceptor(&ca.server(), None), server().await).await;
        let c = Connector::builder().build().unwrap();
        let e = c
            .connect(&url("127.0.0.1", front.addr.port()))
            .await
            .err()
            .expect("connected with the public roots to a private CA");
        assert!(
            matches!(
                &e,
                Error::CertificateVerification {
                    problem: CertificateProblem::UnknownIssuer,
                    ..
                }
            ),
            "{e:?}"
        );
    })
    .await;
}

/// An expired server certificate: a typed "expired" error.
#[tokio::test]
async fn an_expired_server_certificate_fails_clearly() {
    bounded(async {
        let ca = Ca::new("test CA");
        let front = tls_front(acceptor(&ca.expired_server(), None), server().await).await;
        let c = connector(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap());
        let e = c
            .connect(&url("127.0.0.1", front.addr.port()))
            .await
            .err()
            .expect("connected with an expired certificate");
        assert!(
            matches!(
                &e,
                Error::CertificateVerification {
                    problem: CertificateProblem::Expired,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("expired"), "{e}");
    })
    .await;
}

/// A certificate for another name fails with a name mismatch, and the server name override
/// makes it pass.
#[tokio::test]
async fn name_mismatch_and_the_server_name_override() {
    bounded(async {
        let ca = Ca::new("test CA");
        let front = tls_front(
            acceptor(&ca.server_for("broker.internal"), None),
            server().await,
        )
        .await;
        let target = url("127.0.0.1", front.addr.port());
        let c = connector(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap());
        let e = c.connect(&target).await.err().expect("name not checked");
        assert!(
            matches!(
                &e,
                Error::CertificateVerification {
                    problem: CertificateProblem::NameMismatch,
                    ..
                }
            ),
            "{e:?}"
        );
        let c = connector(
            TlsOptions::builder()
                .ca_pem(ca.pem())
                .server_name("broker.internal")
                .build()
                .unwrap(),
        );
        let t = c.connect(&target).await.unwrap();
        round_trip(t, "override", Bytes::from_static(b"sni")).await;
    })
    .await;
}

/// `danger_accept_invalid_certs` connects to a server whose CA nobody trusts, and warns at
/// every connect.
#[tokio::test(flavor = "current_thread")]
async fn accepting_invalid_certificates_is_explicit_and_warns_every_time() {
    let (subscriber, warnings) = WarnCounter::new("verification is OFF");
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let ca = Ca::new("untrusted CA");
        let front = tls_front(acceptor(&ca.expired_server(), None), server().await).await;
        let tls = TlsOptions::builder()
            .danger_accept_invalid_certs()
            .build()
            .unwrap();
        assert!(tls.accepts_invalid_certs());
        let c = connector(tls);
        let target = url("127.0.0.1", front.addr.port());
        let t = c.connect(&target).await.unwrap();
        round_trip(t, "danger", Bytes::from_static(b"insecure")).await;
        let _t = c.connect(&target).await.unwrap();
        assert_eq!(warnings.load(Ordering::Relaxed), 2);
    })
    .await;
}

/// ALPN is offered when asked for (the server here offers none, which rustls accepts).
#[tokio::test]
async fn alpn_is_configurable() {
    let tls = TlsOptions::builder().alpn("mqtt").build().unwrap();
    assert_eq!(tls.client_config().alpn_protocols, vec![b"mqtt".to_vec()]);
}

/// A client key that does not parse is a typed PEM error, never a panic.
#[tokio::test]
async fn a_bad_client_key_is_a_typed_error() {
    let ca = Ca::new("test CA");
    let client = ca.client();
    let e = TlsOptions::builder()
        .client_cert_pem(
            &client.cert_pem,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::Pem { .. } | Error::TlsConfig(_)),
        "{e:?}"
    );
    // A key that parses but belongs to another certificate.
    let other = ca.client();
    let e = TlsOptions::builder()
        .client_cert_pem(&client.cert_pem, &other.key_pem)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::TlsConfig(_)), "{e:?}");
}
