//! Shared test support: certificates made at test time (rcgen), an in-test TLS server in
//! front of `paho_testserver::TestServer`, a WebSocket bridge to any TCP MQTT broker, a paho
//! round trip, a tracing warning counter and a hang guard.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// The WebSocket accept callback returns tungstenite's `Result<Response, ErrorResponse>`.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopaho::rustls::server::WebPkiClientVerifier;
use autopaho::rustls::{self, RootCertStore, ServerConfig};
use autopaho::BoxTransport;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use paho::packets::{Publish, QoS};
use paho::session::SessionConfig;
use paho::{Client, ConnectOptions, SessionHandle};
use paho_testserver::TestServer;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::Message;

/// The bound on a whole test. Only a hang reaches it.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Runs a test body, failing it if it has not finished within [`HANG_GUARD`].
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test is stuck: not finished after {HANG_GUARD:?}"),
    }
}

// ---------------------------------------------------------------- certificates

/// A test CA that signs server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, "test");
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    /// A server certificate for `localhost` and `127.0.0.1` that expired in 2001.
    pub fn expired_server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        )
    }

    /// A server certificate for another name only.
    pub fn server_for(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    /// A client certificate.
    pub fn client(&self) -> Leaf {
        self.leaf(&["client-1"], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

// ---------------------------------------------------------------- TLS server

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A rustls acceptor with `leaf` as its certificate; with `client_ca`, client certificates
/// signed by it are required.
pub fn acceptor(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(&ca.pem()) {
                roots.add(c).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = builder
        .with_single_cert(certs(&leaf.cert_pem), key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A TLS server on `127.0.0.1:0` whose decrypted connections the `TestServer` serves.
/// Handshake failures are collected in `errors`.
pub struct TlsFront {
    pub addr: SocketAddr,
    pub errors: Arc<Mutex<Vec<String>>>,
}

pub async fn tls_front(acceptor: TlsAcceptor, server: Arc<TestServer>) -> TlsFront {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let server = server.clone();
            let errs = errs.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        server.serve(tls);
                    }
                    Err(e) => errs.lock().unwrap().push(e.to_string()),
                }
            });
        }
    });
    TlsFront { addr, errors }
}

// ---------------------------------------------------------------- WebSocket bridge

/// What the bridge saw.
#[derive(Default)]
pub struct BridgeStats {
    /// Binary messages relayed to the client.
    pub to_client: AtomicUsize,
    /// Binary messages received from the client.
    pub from_client: AtomicUsize,
    /// The largest message from the client.
    pub largest_from_client: AtomicUsize,
    /// Pongs received from the client (the bridge pings it).
    pub pongs: AtomicUsize,
    /// The request paths and the `x-test` header of the upgrades.
    pub requests: Mutex<Vec<(String, Option<String>)>>,
}

/// How the bridge behaves.
#[derive(Clone, Copy)]
pub struct BridgeConfig {
    /// Messages to the client hold at most this many bytes.
    pub frame: usize,
    /// Accept the upgrade without choosing the `mqtt` subprotocol (a broken server).
    pub omit_subprotocol: bool,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            frame: 1000,
            omit_subprotocol: false,
        }
    }
}

/// A tokio-tungstenite server on `127.0.0.1:0` that requires the `mqtt` subprotocol and
/// relays binary messages to and from the MQTT broker at `target` (TCP), chopping what the
/// broker sends into messages of `config.frame` bytes and pinging the client between them.
/// With `tls`, it is a `wss` server.
pub async fn ws_bridge(
    target: SocketAddr,
    tls: Option<TlsAcceptor>,
    config: BridgeConfig,
) -> (SocketAddr, Arc<BridgeStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(BridgeStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            let st = st.clone();
            tokio::spawn(async move {
                match tls {
                    None => bridge_conn(tcp, target, config, st).await,
                    Some(acc) => {
                        if let Ok(s) = acc.accept(tcp).await {
                            bridge_conn(s, target, config, st).await
                        }
                    }
                }
            });
        }
    });
    (addr, stats)
}

async fn bridge_conn<S>(stream: S, target: SocketAddr, config: BridgeConfig, st: Arc<BridgeStats>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let st2 = st.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let header = req
            .headers()
            .get("x-test")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        st2.requests
            .lock()
            .unwrap()
            .push((req.uri().to_string(), header));
        let offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "mqtt"));
        if !offered {
            let mut r = ErrorResponse::new(Some("the mqtt subprotocol is required".into()));
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            return Err(r);
        }
        if !config.omit_subprotocol {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                http::HeaderValue::from_static("mqtt"),
            );
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Ok(tcp) = TcpStream::connect(target).await else {
        return;
    };
    tcp.set_nodelay(true).unwrap();
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let st_up = st.clone();
    let up = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) => {
                    st_up.from_client.fetch_add(1, Ordering::Relaxed);
                    st_up
                        .largest_from_client
                        .fetch_max(b.len(), Ordering::Relaxed);
                    if tcp_wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Pong(_) => {
                    st_up.pongs.fetch_add(1, Ordering::Relaxed);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            let n = match tcp_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for chunk in buf[..n].chunks(config.frame) {
                if sent.is_multiple_of(8)
                    && ws_tx
                        .send(Message::Ping(Bytes::from_static(b"hi")))
                        .await
                        .is_err()
                {
                    return;
                }
                sent += 1;
                st.to_client.fetch_add(1, Ordering::Relaxed);
                if ws_tx
                    .send(Message::Binary(Bytes::copy_from_slice(chunk)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::join!(up, down);
}

// ---------------------------------------------------------------- paho round trip

/// Connects a paho client over `transport`, subscribes to a topic, publishes `payload` to
/// it at QoS 1 and checks that the same bytes come back. Then disconnects.
pub async fn round_trip(transport: BoxTransport, id: &str, payload: Bytes) {
    let options = ConnectOptions::builder().client_id(id).build().unwrap();
    let session = SessionHandle::in_memory(SessionConfig::new());
    let (client, mut incoming) = Client::connect(transport, options, session)
        .await
        .expect("MQTT connect over the transport");
    let topic = format!("autopaho/{id}");
    client
        .subscribe_to(&topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let outcome = client
        .publish(Publish {
            topic: topic.as_str().into(),
            qos: QoS::AtLeastOnce,
            payload: payload.clone(),
            ..Default::default()
        })
        .await
        .expect("publish");
    assert!(outcome.is_success(), "{outcome:?}");
    let msg = incoming.recv().await.expect("a message");
    assert_eq!(msg.topic(), topic);
    assert_eq!(msg.payload().len(), payload.len());
    assert!(msg.payload() == &payload, "payload corrupted");
    client.disconnect_normally().await.expect("disconnect");
}

// ---------------------------------------------------------------- tracing warnings

/// A minimal `tracing` subscriber that counts WARN events whose message contains a text.
pub struct WarnCounter {
    needle: &'static str,
    count: Arc<AtomicUsize>,
}

impl WarnCounter {
    pub fn new(needle: &'static str) -> (WarnCounter, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        (
            WarnCounter {
                needle,
                count: count.clone(),
            },
            count,
        )
    }
}

struct MessageVisitor(String);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut v = MessageVisitor(String::new());
            event.record(&mut v);
            if v.0.contains(self.needle) {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
