//! From a [`ServerUrl`] to a connected transport: the [`Connect`] trait, the default
//! [`Connector`] (TCP, TLS, WebSocket) and [`FnConnector`] for transports of your own.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use crate::{Error, Scheme, ServerUrl, TlsOptions};

/// The connect timeout used when none is set: 10 s for the whole connect (TCP, TLS and
/// WebSocket handshakes).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected byte stream that MQTT can run over: what [`paho::Client::connect`] takes.
///
/// Implemented for every `AsyncRead + AsyncWrite + Send + Unpin + 'static` type.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T> Transport for T where T: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

/// A boxed [`Transport`]. It is itself `AsyncRead + AsyncWrite + Send + Unpin`, so it goes
/// straight into [`paho::Client::connect`].
pub type BoxTransport = Box<dyn Transport>;

/// The future that [`Connect::connect`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxTransport, Error>> + Send + 'a>>;

/// Makes one connection to a server: the seam between the connection manager and the
/// network. The manager calls it once per attempt, with the server for that attempt, and
/// runs MQTT's CONNECT over what it returns.
///
/// The trait is object safe (`Arc<dyn Connect>`). [`Connector`] is the default
/// implementation and [`FnConnector`] wraps a closure; tests implement it to script
/// failures. An implementation should bound its own duration (both shipped ones apply a
/// connect timeout) and should not retry: retrying, backoff and failover are the manager's.
///
/// Cancel safety: dropping the future abandons the attempt and closes whatever it had
/// opened.
pub trait Connect: Send + Sync {
    /// Connects to `server`, returning the transport or a typed error.
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a>;
}

impl<C: Connect + ?Sized> Connect for Arc<C> {
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a> {
        (**self).connect(server)
    }
}

impl<C: Connect + ?Sized> Connect for Box<C> {
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a> {
        (**self).connect(server)
    }
}

/// Runs `fut` under the connect timeout, mapping the elapsed timer to [`Error::Timeout`].
async fn bounded<F>(server: &ServerUrl, after: Duration, fut: F) -> Result<BoxTransport, Error>
where
    F: Future<Output = Result<BoxTransport, Error>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            server: server.to_string(),
            after,
        }),
    }
}

fn check_timeout(after: Duration) -> Result<Duration, Error> {
    if after.is_zero() {
        return Err(Error::InvalidConnectTimeout);
    }
    Ok(after)
}

/// The default connector: dispatches on the URL's [`Scheme`].
///
/// - `mqtt`/`tcp`: TCP with `TCP_NODELAY` (MQTT's small acks should not wait for Nagle).
/// - `mqtts`/`ssl`/`tls`/`mqtt+ssl`/`tcps`: TLS over TCP, with the [`TlsOptions`].
/// - `ws`: WebSocket over TCP, with the `mqtt` subprotocol and the extra headers; binary
///   frames adapted to a byte stream (see the crate docs).
/// - `wss`: the same over TLS.
///
/// The connect timeout ([`DEFAULT_CONNECT_TIMEOUT`]) bounds the whole connect, on tokio's
/// clock. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use autopaho::{Connect, Connector, ServerUrl};
/// let connector = Connector::builder().build()?;
/// let server = ServerUrl::parse("mqtts://broker.example.com")?;
/// let transport = connector.connect(&server).await?;
/// # let _ = transport; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector {
    tls: TlsOptions,
    timeout: Duration,
    nodelay: bool,
    #[cfg(feature = "websocket")]
    ws: Arc<crate::ws::WsOptions>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Connector");
        d.field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("nodelay", &self.nodelay);
        #[cfg(feature = "websocket")]
        d.field("ws", &self.ws);
        d.finish()
    }
}

impl Connector {
    /// A builder with the defaults: public TLS roots, a 10 s connect timeout, `TCP_NODELAY`,
    /// no extra WebSocket headers.
    pub fn builder() -> ConnectorBuilder {
        ConnectorBuilder {
            tls: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            nodelay: true,
            headers: Vec::new(),
        }
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.timeout
    }

    /// The TLS options used for `mqtts` and `wss`.
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    async fn connect_unbounded(&self, server: &ServerUrl) -> Result<BoxTransport, Error> {
        #[cfg(not(feature = "websocket"))]
        if server.scheme().is_websocket() {
            return Err(Error::WebSocketDisabled(server.to_string()));
        }
        let tcp = TcpStream::connect((server.host(), server.port()))
            .await
            .map_err(|e| Error::io(server, &e))?;
        if self.nodelay {
            tcp.set_nodelay(true).map_err(|e| Error::io(server, &e))?;
        }
        tracing::debug!("TCP connected");
        match server.scheme() {
            Scheme::Tcp => Ok(Box::new(tcp)),
            Scheme::Tls => Ok(Box::new(self.tls_handshake(server, tcp).await?)),
            #[cfg(feature = "websocket")]
            Scheme::Ws => Ok(Box::new(crate::ws::handshake(server, tcp, &self.ws).await?)),
            #[cfg(feature = "websocket")]
            Scheme::Wss => {
                let tls = self.tls_handshake(server, tcp).await?;
                Ok(Box::new(crate::ws::handshake(server, tls, &self.ws).await?))
            }
            #[cfg(not(feature = "websocket"))]
            Scheme::Ws | Scheme::Wss => Err(Error::WebSocketDisabled(server.to_string())),
        }
    }

    async fn tls_handshake(
        &self,
        server: &ServerUrl,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        if self.tls.accepts_invalid_certs() {
            tracing::warn!(
                %server,
                "TLS certificate verification is OFF (danger_accept_invalid_certs): this \
                 connection can be read and changed by anyone on the path"
            );
        }
        let name = self.tls.server_name_for(server)?;
        let stream = TlsConnector::from(Arc::clone(self.tls.client_config()))
            .connect(name, tcp)
            .await
            .map_err(|e| crate::tls::handshake_error(server, &e))?;
        tracing::debug!(
            alpn = ?stream.get_ref().1.alpn_protocol().map(String::from_utf8_lossy),
            version = ?stream.get_ref().1.protocol_version(),
            "TLS established"
        );
        Ok(stream)
    }
}

impl Connect for Connector {
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a> {
        let span = tracing::debug_span!("connect", %server);
        Box::pin(bounded(server, self.timeout, self.connect_unbounded(server)).instrument(span))
    }
}

/// Builds a [`Connector`]; [`ConnectorBuilder::build`] validates.
#[derive(Debug)]
pub struct ConnectorBuilder {
    tls: Option<TlsOptions>,
    timeout: Duration,
    nodelay: bool,
    headers: Vec<(String, String)>,
}

impl ConnectorBuilder {
    /// The TLS options for `mqtts` and `wss` URLs. Default: `TlsOptions::builder().build()`
    /// (public roots, verification on).
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The bound on one whole connect (TCP, TLS and WebSocket handshakes), on tokio's
    /// clock. Default [`DEFAULT_CONNECT_TIMEOUT`]; zero is an error at build time.
    pub fn connect_timeout(mut self, after: Duration) -> Self {
        self.timeout = after;
        self
    }

    /// Whether to set `TCP_NODELAY` (default: on).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// An extra header for the WebSocket upgrade request (for example `Authorization`).
    /// Headers the handshake sets itself (`Host`, `Connection`, `Upgrade`,
    /// `Sec-WebSocket-*`) are refused at build time. Without the `websocket` feature the
    /// headers are checked and then unused.
    pub fn ws_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Checks the options and builds the connector.
    pub fn build(self) -> Result<Connector, Error> {
        let timeout = check_timeout(self.timeout)?;
        let tls = match self.tls {
            Some(t) => t,
            None => TlsOptions::builder().build()?,
        };
        #[cfg(feature = "websocket")]
        let ws = Arc::new(crate::ws::WsOptions::new(self.headers)?);
        #[cfg(not(feature = "websocket"))]
        for (name, _) in &self.headers {
            if name.is_empty() {
                return Err(Error::InvalidHeader {
                    name: name.clone(),
                    reason: "empty name",
                });
            }
        }
        Ok(Connector {
            tls,
            timeout,
            nodelay: self.nodelay,
            #[cfg(feature = "websocket")]
            ws,
        })
    }
}

/// A connector from your own async function, for transports this crate does not ship (a
/// proxy, QUIC, a serial link, an in-memory pipe in tests).
///
/// The function gets the server (owned, so that its future can be `'static`) and returns
/// any [`Transport`] or an `io::Error` (which becomes [`Error::Io`]). The connect timeout
/// ([`DEFAULT_CONNECT_TIMEOUT`] unless set) bounds it, on tokio's clock.
///
/// ```
/// use autopaho::{Connect, FnConnector};
/// let connector = FnConnector::new(|server: autopaho::ServerUrl| async move {
///     // Dial through a proxy, open a QUIC stream, ... Here: a TCP stream.
///     tokio::net::TcpStream::connect((server.host(), server.port())).await
/// });
/// # let _: &dyn Connect = &connector;
/// ```
#[derive(Clone)]
pub struct FnConnector<F> {
    f: F,
    timeout: Duration,
}

impl<F> fmt::Debug for FnConnector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnConnector")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, Fut, T> FnConnector<F>
where
    F: Fn(ServerUrl) -> Fut + Send + Sync,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Transport,
{
    /// Wraps `f`, with the default connect timeout.
    pub fn new(f: F) -> Self {
        FnConnector {
            f,
            timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the connect timeout; zero is [`Error::InvalidConnectTimeout`].
    pub fn with_connect_timeout(mut self, after: Duration) -> Result<Self, Error> {
        self.timeout = check_timeout(after)?;
        Ok(self)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.timeout
    }
}

impl<F, Fut, T> Connect for FnConnector<F>
where
    F: Fn(ServerUrl) -> Fut + Send + Sync,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Transport,
{
    fn connect<'a>(&'a self, server: &'a ServerUrl) -> ConnectFuture<'a> {
        let fut = (self.f)(server.clone());
        let span = tracing::debug_span!("connect", %server);
        Box::pin(
            bounded(server, self.timeout, async move {
                match fut.await {
                    Ok(t) => Ok(Box::new(t) as BoxTransport),
                    Err(e) => Err(Error::io(server, &e)),
                }
            })
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    #[test]
    fn validation_and_object_safety() {
        assert_eq!(
            Connector::builder()
                .connect_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            Error::InvalidConnectTimeout
        );
        let c = Connector::builder().build().unwrap();
        assert_eq!(c.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        let dynamic: Arc<dyn Connect> = Arc::new(c);
        let url = ServerUrl::parse("mqtt://127.0.0.1:1").unwrap();
        is_send(&dynamic.connect(&url));
        let f =
            FnConnector::new(|_s: ServerUrl| async { tokio::net::TcpStream::connect("x:1").await });
        assert_eq!(
            f.clone().with_connect_timeout(Duration::ZERO).unwrap_err(),
            Error::InvalidConnectTimeout
        );
        let _: Box<dyn Connect> = Box::new(f);
    }

    #[cfg(feature = "websocket")]
    #[test]
    fn reserved_and_bad_ws_headers() {
        for (name, value) in [
            ("Sec-WebSocket-Protocol", "mqttv3.1"),
            ("host", "x"),
            ("bad header", "x"),
            ("X-Ok", "line\nbreak"),
        ] {
            let e = Connector::builder()
                .ws_header(name, value)
                .build()
                .unwrap_err();
            assert!(matches!(e, Error::InvalidHeader { .. }), "{name}: {e:?}");
        }
        Connector::builder()
            .ws_header("Authorization", "Bearer x")
            .build()
            .unwrap();
    }

    #[tokio::test]
    async fn refused_tcp_is_a_typed_io_error() {
        // Bind then drop: the port is (very likely) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Connector::builder().build().unwrap();
        let url = ServerUrl::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap();
        match c.connect(&url).await {
            Err(Error::Io { kind, server, .. }) => {
                assert_eq!(kind, io::ErrorKind::ConnectionRefused);
                assert_eq!(server, format!("mqtt://127.0.0.1:{port}"));
            }
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => panic!("connected to a closed port"),
        }
    }
}
