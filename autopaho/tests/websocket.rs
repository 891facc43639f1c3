//! MQTT over WebSocket through the default connector. Debian's mosquitto has no
//! websockets, so an in-test tokio-tungstenite bridge (requiring the `mqtt` subprotocol)
//! relays binary messages to mosquitto's TCP port; the `wss` bridge is wrapped in rustls.
//! A raw tungstenite server tests the adapter's edge cases (partial reads, pings, close,
//! text).
#![cfg(feature = "websocket")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use autopaho::{Connect, Connector, Error, ServerUrl, TlsOptions};
use bytes::Bytes;
use common::{acceptor, bounded, round_trip, ws_bridge, BridgeConfig, Ca};
use futures_util::{SinkExt, StreamExt};
use paho_testserver::mosquitto::{self, Mosquitto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn broker() -> Option<Mosquitto> {
    Some(
        mosquitto::require()?
            .start()
            .await
            .expect("mosquitto failed to start"),
    )
}

fn ws_url(scheme: &str, addr: SocketAddr, path: &str) -> ServerUrl {
    ServerUrl::parse(&format!("{scheme}://127.0.0.1:{}{path}", addr.port())).unwrap()
}

/// `ws://` to mosquitto through the bridge: a paho round trip; the request carried the
/// default path `/mqtt` and the extra header, and the client answered the bridge's pings.
#[tokio::test]
async fn ws_round_trip_through_a_bridge_to_mosquitto() {
    bounded(async {
        let Some(m) = broker().await else { return };
        let (addr, stats) = ws_bridge(m.addr(), None, BridgeConfig::default()).await;
        let c = Connector::builder()
            .ws_header("X-Test", "hello")
            .build()
            .unwrap();
        let t = c.connect(&ws_url("ws", addr, "")).await.unwrap();
        round_trip(t, "ws", Bytes::from_static(b"over websocket")).await;
        let requests = stats.requests.lock().unwrap().clone();
        assert_eq!(
            requests,
            vec![("/mqtt".to_string(), Some("hello".to_string()))]
        );
        assert!(stats.to_client.load(Ordering::Relaxed) > 0);
        assert!(
            stats.pongs.load(Ordering::Relaxed) > 0,
            "no pong for the bridge's pings"
        );
    })
    .await;
}

/// `wss://` to mosquitto through the bridge wrapped in TLS (custom CA), keeping the user's
/// path.
#[tokio::test]
async fn wss_round_trip_through_a_tls_bridge_to_mosquitto() {
    bounded(async {
        let Some(m) = broker().await else { return };
        let ca = Ca::new("wss test CA");
        let (addr, stats) = ws_bridge(
            m.addr(),
            Some(acceptor(&ca.server(), None)),
            BridgeConfig::default(),
        )
        .await;
        let c = Connector::builder()
            .tls(TlsOptions::builder().ca_pem(ca.pem()).build().unwrap())
            .build()
            .unwrap();
        let t = c.connect(&ws_url("wss", addr, "/custom/ws")).await.unwrap();
        round_trip(t, "wss", Bytes::from_static(b"over secure websocket")).await;
        assert_eq!(stats.requests.lock().unwrap()[0].0, "/custom/ws");
    })
    .await;
}

/// A 256 KiB message, both ways: the bridge sends it to the client in 1000-byte messages
/// (an MQTT packet spanning hundreds of WebSocket messages and many reads), and the client
/// sends it in several messages of at most 64 KiB. It arrives intact.
#[tokio::test]
async fn a_large_message_spanning_many_frames_arrives_intact() {
    bounded(async {
        let Some(m) = broker().await else { return };
        let (addr, stats) = ws_bridge(m.addr(), None, BridgeConfig::default()).await;
        let c = Connector::builder().build().unwrap();
        let t = c.connect(&ws_url("ws", addr, "/mqtt")).await.unwrap();
        let payload: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        round_trip(t, "ws-large", Bytes::from(payload)).await;
        let to_client = stats.to_client.load(Ordering::Relaxed);
        assert!(to_client > 262, "only {to_client} messages to the client");
        assert!(stats.from_client.load(Ordering::Relaxed) >= 4);
        assert!(stats.largest_from_client.load(Ordering::Relaxed) <= 64 * 1024);
    })
    .await;
}

/// A server that does not choose the `mqtt` subprotocol: a typed WebSocket error naming the
/// subprotocol.
#[tokio::test]
async fn a_server_without_the_mqtt_subprotocol_is_refused() {
    bounded(async {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap(); // never reached
        let config = BridgeConfig {
            omit_subprotocol: true,
            ..BridgeConfig::default()
        };
        let (addr, _) = ws_bridge(target, None, config).await;
        let c = Connector::builder().build().unwrap();
        let e = c
            .connect(&ws_url("ws", addr, ""))
            .await
            .err()
            .expect("accepted");
        assert!(matches!(&e, Error::WebSocket { .. }), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("subprotocol"), "{e}");
    })
    .await;
}

/// The adapter's edge cases against a raw tungstenite server: a message read a few bytes at
/// a time, a message holding two reads' worth, an empty message, a ping in between (the
/// client answers), then a close frame, which is EOF. A second connection gets a text
/// message, which is an error.
#[tokio::test]
async fn the_adapter_handles_partial_reads_pings_close_and_text() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // First connection: binary messages, a ping, a close.
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = accept_mqtt(tcp).await;
            ws.send(Message::Binary(Bytes::from_static(b"0123456789")))
                .await
                .unwrap();
            ws.send(Message::Binary(Bytes::new())).await.unwrap();
            ws.send(Message::Ping(Bytes::from_static(b"p")))
                .await
                .unwrap();
            ws.send(Message::Binary(Bytes::from_static(b"abc")))
                .await
                .unwrap();
            // The client's write, then its pong (answered while it reads).
            let mut got = Vec::new();
            let mut pong = false;
            while !(pong && got == b"ping?") {
                match ws.next().await.unwrap().unwrap() {
                    Message::Binary(b) => got.extend_from_slice(&b),
                    Message::Pong(p) => {
                        assert_eq!(&p[..], b"p");
                        pong = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            ws.send(Message::Close(None)).await.unwrap();
            // Second connection: a text message.
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = accept_mqtt(tcp).await;
            ws.send(Message::text("not mqtt")).await.unwrap();
            let _ = ws.next().await;
        });

        let c = Connector::builder().build().unwrap();
        let url = ws_url("ws", addr, "");
        let mut t = c.connect(&url).await.unwrap();
        let mut small = [0u8; 3];
        let mut got = Vec::new();
        while got.len() < 13 {
            let n = t.read(&mut small).await.unwrap();
            assert!(n > 0 && n <= 3);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"0123456789abc");
        t.write_all(b"ping?").await.unwrap();
        t.flush().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(t.read_to_end(&mut rest).await.unwrap(), 0, "close is EOF");

        let mut t = c.connect(&url).await.unwrap();
        let e = t.read(&mut small).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        drop(t);
        server.await.unwrap();
    })
    .await;
}

async fn accept_mqtt(
    tcp: tokio::net::TcpStream,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    tokio_tungstenite::accept_hdr_async(
        tcp,
        |_: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
            );
            Ok(resp)
        },
    )
    .await
    .unwrap()
}
