//! MQTT over WebSocket: the upgrade with the `mqtt` subprotocol, and [`WsStream`], which
//! turns binary messages into a byte stream both ways.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::{Error, ServerUrl};

/// The subprotocol MQTT v5 (and 3.1.1) uses over WebSocket.
pub const SUBPROTOCOL: &str = "mqtt";

/// The largest binary message one write makes. MQTT packets may span messages; brokers
/// reassemble them, so a 256 KiB PUBLISH goes out as four messages.
const MAX_WRITE_MESSAGE: usize = 64 * 1024;

/// Headers the handshake sets itself.
const RESERVED: [&str; 7] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// The WebSocket options of a [`Connector`](crate::Connector): the validated extra headers.
pub(crate) struct WsOptions {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for WsOptions {
    /// Header names only: values may be tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.headers.iter().map(|(n, _)| n))
            .finish()
    }
}

impl WsOptions {
    pub(crate) fn new(headers: Vec<(String, String)>) -> Result<WsOptions, Error> {
        let headers = headers
            .into_iter()
            .map(|(name, value)| {
                let bad = |reason| Error::InvalidHeader {
                    name: name.clone(),
                    reason,
                };
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("not a valid header name"))?;
                if RESERVED.contains(&n.as_str()) {
                    return Err(bad("the WebSocket handshake sets this header itself"));
                }
                let v =
                    HeaderValue::from_str(&value).map_err(|_| bad("not a valid header value"))?;
                Ok((n, v))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(WsOptions { headers })
    }
}

/// Runs the WebSocket upgrade over `stream` (TCP or TLS), asking for the `mqtt`
/// subprotocol, and checks that the server chose it.
pub(crate) async fn handshake<S>(
    server: &ServerUrl,
    stream: S,
    options: &WsOptions,
) -> Result<WsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |reason: String| Error::WebSocket {
        server: server.to_string(),
        reason,
    };
    let mut request = server
        .websocket_uri()
        .into_client_request()
        .map_err(|e| failed(format!("bad request URL: {e}")))?;
    let headers = request.headers_mut();
    for (name, value) in &options.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| match e {
            WsError::Io(e) => Error::io(server, &e),
            WsError::Http(r) => failed(format!("the server answered HTTP {}", r.status())),
            e => failed(e.to_string()),
        })?;
    // tungstenite checks this too; the check is ours to keep.
    let chosen = response.headers().get("sec-websocket-protocol");
    if chosen.map(HeaderValue::as_bytes) != Some(SUBPROTOCOL.as_bytes()) {
        return Err(failed(format!(
            "the server did not accept the {SUBPROTOCOL:?} subprotocol (it chose {chosen:?})"
        )));
    }
    tracing::debug!("WebSocket established");
    Ok(WsStream {
        inner: ws,
        read: Bytes::new(),
        eof: false,
    })
}

/// A WebSocket connection as a byte stream.
///
/// Reading: binary messages are concatenated, so an MQTT packet may span messages and a
/// message may hold several packets; a read takes as much of the current message as fits
/// and keeps the rest for the next read. Pings are answered by tungstenite (the pong goes
/// out with the next read or write), pongs are ignored, a close frame or the end of the
/// stream is EOF, and a text message is an error (MQTT over WebSocket is binary only).
///
/// Writing: each write sends one binary message of up to 64 KiB (a short write beyond), and
/// flush flushes the socket; a write either queues its whole message or nothing, so a
/// cancelled write wrote nothing. Shutdown sends a close frame.
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    read: Bytes,
    eof: bool,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = buf.remaining().min(this.read.len());
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a WebSocket text message: MQTT over WebSocket is binary only",
                    )))
                }
                Some(Ok(Message::Close(frame))) => {
                    tracing::debug!(?frame, "WebSocket closed by the server");
                    this.eof = true;
                }
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.eof = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_WRITE_MESSAGE);
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
