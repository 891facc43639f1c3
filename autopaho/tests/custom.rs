//! A custom connector over an in-memory pipe served by `TestServer`, and the connect
//! timeout, all on tokio's paused clock (the hang guard is virtual time here too, and only
//! a hang reaches it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::pending;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use autopaho::{
    Connect, Connector, Error, FnConnector, ServerUrl, TlsOptions, DEFAULT_CONNECT_TIMEOUT,
};
use bytes::Bytes;
use common::{bounded, round_trip};
use paho_testserver::TestServer;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A closure connector handing out `TestServer::connect_duplex` pipes: the manager's test
/// seam. It sees the URL of each attempt; a paho round trip runs over what it returns.
#[tokio::test(start_paused = true)]
async fn a_custom_connector_over_an_in_memory_pipe() {
    bounded(async {
        let server = Arc::new(TestServer::start().await.unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, log) = (server.clone(), seen.clone());
        let connector = FnConnector::new(move |url: ServerUrl| {
            log.lock().unwrap().push(url.to_string());
            let pipe = s.connect_duplex();
            async move { Ok::<_, io::Error>(pipe) }
        });
        let dynamic: Arc<dyn Connect> = Arc::new(connector);
        let url = ServerUrl::parse("mqtt://scripted.invalid").unwrap();
        let t = dynamic.connect(&url).await.unwrap();
        round_trip(t, "custom", Bytes::from_static(b"through a pipe")).await;
        assert_eq!(*seen.lock().unwrap(), ["mqtt://scripted.invalid:1883"]);
    })
    .await;
}

/// The custom function's `io::Error` becomes a typed `Error::Io` naming the server.
#[tokio::test(start_paused = true)]
async fn a_custom_connector_error_is_typed() {
    let connector = FnConnector::new(|_url: ServerUrl| async {
        Err::<tokio::io::DuplexStream, _>(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the proxy said no",
        ))
    });
    let url = ServerUrl::parse("mqtt://via-proxy:1884").unwrap();
    match connector.connect(&url).await {
        Err(Error::Io {
            server,
            kind,
            message,
        }) => {
            assert_eq!(server, "mqtt://via-proxy:1884");
            assert_eq!(kind, io::ErrorKind::PermissionDenied);
            assert_eq!(message, "the proxy said no");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected"),
    }
}

/// A custom connector that never finishes is cut off by its connect timeout, at exactly
/// that virtual time.
#[tokio::test(start_paused = true)]
async fn a_custom_connector_is_bounded_by_the_connect_timeout() {
    bounded(async {
        let connector = FnConnector::new(|_url: ServerUrl| async {
            pending::<io::Result<tokio::io::DuplexStream>>().await
        })
        .with_connect_timeout(Duration::from_secs(3))
        .unwrap();
        let url = ServerUrl::parse("mqtt://nowhere").unwrap();
        let start = Instant::now();
        let e = connector.connect(&url).await.err().expect("connected");
        assert_eq!(
            e,
            Error::Timeout {
                server: "mqtt://nowhere:1883".into(),
                after: Duration::from_secs(3)
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    })
    .await;
}

/// A server that accepts TCP, reads what the client sends and never answers. Returns its
/// address, how many connections it accepted and the first bytes it got (proof that the
/// client was in its TLS or WebSocket handshake when the timeout hit).
async fn silent_server() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, f) = (accepted.clone(), first.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    f.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                pending::<()>().await; // never answered, never closed
            });
        }
    });
    (addr, accepted, first)
}

/// The default connect timeout (10 s) covers the TLS handshake: against a server that
/// accepts TCP but never answers the ClientHello, `mqtts://` fails with `Error::Timeout`
/// after 10 s of virtual time.
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_covers_a_tls_handshake_that_never_answers() {
    bounded(async {
        let (addr, accepted, first) = silent_server().await;
        let c = Connector::builder()
            .tls(
                TlsOptions::builder()
                    .danger_accept_invalid_certs()
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let url = ServerUrl::parse(&format!("mqtts://127.0.0.1:{}", addr.port())).unwrap();
        let start = Instant::now();
        let e = c.connect(&url).await.err().expect("connected");
        assert!(
            matches!(e, Error::Timeout { after, .. } if after == DEFAULT_CONNECT_TIMEOUT),
            "{e:?}"
        );
        assert_eq!(start.elapsed(), DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "TCP was not accepted");
        // 0x16: a TLS handshake record (the ClientHello) reached the server.
        assert_eq!(first.lock().unwrap().first(), Some(&0x16));
    })
    .await;
}

/// The connect timeout covers the WebSocket upgrade: `ws://` to the silent server times out
/// after the configured 2 s.
#[cfg(feature = "websocket")]
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_covers_a_websocket_upgrade_that_never_answers() {
    bounded(async {
        let (addr, accepted, first) = silent_server().await;
        let c = Connector::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = ServerUrl::parse(&format!("ws://127.0.0.1:{}", addr.port())).unwrap();
        let start = Instant::now();
        let e = c.connect(&url).await.err().expect("connected");
        assert!(
            matches!(e, Error::Timeout { after, .. } if after == Duration::from_secs(2)),
            "{e:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(first.lock().unwrap().starts_with(b"GET /mqtt HTTP/1.1"));
    })
    .await;
}
