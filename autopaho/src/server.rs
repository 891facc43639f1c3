//! Server URLs: [`ServerUrl`] (one validated URL) and [`Servers`] (a non-empty list).

use std::fmt;
use std::str::FromStr;

use url::Url;

use crate::Error;

/// The WebSocket path used when a `ws`/`wss` URL has none (or only `/`): `/mqtt`, the path
/// of HiveMQ, EMQX, VerneMQ and AWS IoT (mosquitto accepts any path).
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// How a server is reached, from the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// MQTT over TCP: `mqtt://`, `tcp://` (default port 1883).
    Tcp,
    /// MQTT over TLS over TCP: `mqtts://`, `ssl://`, `tls://`, `mqtt+ssl://`, `tcps://`
    /// (default port 8883).
    Tls,
    /// MQTT over WebSocket: `ws://` (default port 80).
    Ws,
    /// MQTT over WebSocket over TLS: `wss://` (default port 443).
    Wss,
}

impl Scheme {
    /// The scheme for a URL scheme name (lower case, as `url` gives it), or `None`.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Some(match name {
            "mqtt" | "tcp" => Scheme::Tcp,
            "mqtts" | "ssl" | "tls" | "mqtt+ssl" | "tcps" => Scheme::Tls,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => return None,
        })
    }

    /// The port used when the URL gives none: 1883, 8883, 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 1883,
            Scheme::Tls => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// True for the schemes that run over TLS (`Tls`, `Wss`).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    /// True for the WebSocket schemes (`Ws`, `Wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// One validated server URL: a known scheme, a host, a port (the scheme's default when
/// absent) and, for WebSocket, a path.
///
/// | scheme | transport | default port |
/// |---|---|---|
/// | `mqtt`, `tcp` | TCP | 1883 |
/// | `mqtts`, `ssl`, `tls`, `mqtt+ssl`, `tcps` | TLS | 8883 |
/// | `ws` | WebSocket | 80 |
/// | `wss` | WebSocket over TLS | 443 |
///
/// Rules, each a typed [`Error`]:
/// - an unknown scheme is [`Error::UnknownScheme`]; no host is [`Error::MissingHost`];
/// - a user name or password in the URL is refused ([`Error::CredentialsInUrl`]): URLs are
///   printed in logs and errors, and credentials belong in the CONNECT options;
/// - a path, query or fragment on a TCP/TLS URL is refused ([`Error::InvalidUrl`]): MQTT has
///   no use for them, so they are most likely a mistake;
/// - a WebSocket URL keeps its path and query; an empty path or `/` becomes
///   [`DEFAULT_WS_PATH`] (`/mqtt`). A fragment is refused.
///
/// `Display` prints `scheme://host:port` (plus the path for WebSocket), never the query,
/// which may hold a token.
///
/// ```
/// use autopaho::{Scheme, ServerUrl};
/// let url: ServerUrl = "mqtts://broker.example.com".parse()?;
/// assert_eq!((url.scheme(), url.host(), url.port()), (Scheme::Tls, "broker.example.com", 8883));
/// let ws = ServerUrl::parse("ws://127.0.0.1:9001")?;
/// assert_eq!(ws.path(), "/mqtt");
/// assert!(ServerUrl::parse("http://example.com").is_err());
/// # Ok::<(), autopaho::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    url: Url,
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
}

impl ServerUrl {
    /// Parses and validates a URL.
    pub fn parse(text: &str) -> Result<ServerUrl, Error> {
        let url = Url::parse(text.trim()).map_err(|e| Error::InvalidUrl {
            url: redact(text),
            reason: e.to_string(),
        })?;
        ServerUrl::from_url(url)
    }

    /// Validates a parsed URL.
    pub fn from_url(url: Url) -> Result<ServerUrl, Error> {
        let shown = || {
            let mut u = url.clone();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        };
        let scheme = Scheme::from_name(url.scheme())
            .ok_or_else(|| Error::UnknownScheme(url.scheme().into()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::CredentialsInUrl(shown()));
        }
        let host = match url.host() {
            // `Host::Ipv6` displays without brackets; `host_str` would keep them.
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(Error::MissingHost(shown())),
        };
        if url.fragment().is_some() {
            return Err(Error::InvalidUrl {
                url: shown(),
                reason: "a server URL has no use for a fragment".into(),
            });
        }
        let path = if scheme.is_websocket() {
            match url.path() {
                "" | "/" => DEFAULT_WS_PATH.to_string(),
                p => p.to_string(),
            }
        } else {
            if !matches!(url.path(), "" | "/") || url.query().is_some() {
                return Err(Error::InvalidUrl {
                    url: shown(),
                    reason: "a path or query is only meaningful for ws:// and wss:// URLs".into(),
                });
            }
            String::new()
        };
        let port = url.port().unwrap_or(scheme.default_port());
        Ok(ServerUrl {
            url,
            scheme,
            host,
            port,
            path,
        })
    }

    /// The transport, from the scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host: a DNS name, or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebSocket path (`/mqtt` when the URL has none); empty for TCP and TLS.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The WebSocket query, if any.
    pub fn query(&self) -> Option<&str> {
        self.url.query()
    }

    /// True when the transport runs over TLS (`mqtts`, `wss`, ...).
    pub fn is_tls(&self) -> bool {
        self.scheme.is_tls()
    }

    /// The URL as given (validated).
    pub fn as_url(&self) -> &Url {
        &self.url
    }

    /// The URL for the WebSocket request: `ws://host:port/path?query` (or `wss://`).
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn websocket_uri(&self) -> String {
        let scheme = if self.scheme == Scheme::Wss {
            "wss"
        } else {
            "ws"
        };
        let mut s = format!("{scheme}://{}{}", self.authority(), self.path);
        if let Some(q) = self.url.query() {
            s.push('?');
            s.push_str(q);
        }
        s
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.url.scheme(),
            self.authority(),
            self.path
        )
    }
}

impl FromStr for ServerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ServerUrl::parse(s)
    }
}

impl TryFrom<&str> for ServerUrl {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        ServerUrl::parse(s)
    }
}

impl TryFrom<Url> for ServerUrl {
    type Error = Error;
    fn try_from(u: Url) -> Result<Self, Error> {
        ServerUrl::from_url(u)
    }
}

/// A URL that did not parse, with anything that looks like credentials cut out.
fn redact(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &text[..s], &text[at + 1..]),
        _ => text.to_string(),
    }
}

/// A non-empty list of server URLs, tried in order each round.
///
/// ```
/// use autopaho::Servers;
/// let servers = Servers::parse(["mqtt://a.example", "mqtts://b.example"])?;
/// assert_eq!(servers.len(), 2);
/// assert!(Servers::parse(Vec::<&str>::new()).is_err());
/// # Ok::<(), autopaho::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    list: Vec<ServerUrl>,
}

impl Servers {
    /// Parses every URL; the first invalid one is the error, and no URL at all is
    /// [`Error::NoServers`].
    pub fn parse<I, S>(urls: I) -> Result<Servers, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list = urls
            .into_iter()
            .map(|u| ServerUrl::parse(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Servers::new(list)
    }

    /// A list of validated URLs; empty is [`Error::NoServers`].
    pub fn new(list: Vec<ServerUrl>) -> Result<Servers, Error> {
        if list.is_empty() {
            return Err(Error::NoServers);
        }
        Ok(Servers { list })
    }

    /// The servers, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ServerUrl> {
        self.list.iter()
    }

    /// The first server (the list is never empty).
    pub fn first(&self) -> &ServerUrl {
        &self.list[0]
    }

    /// The server at `index` modulo the length: the manager's round robin.
    pub fn get_wrapping(&self, index: usize) -> &ServerUrl {
        &self.list[index % self.list.len()]
    }

    /// How many servers (at least one).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.list.len()
    }
}

impl From<ServerUrl> for Servers {
    fn from(url: ServerUrl) -> Servers {
        Servers { list: vec![url] }
    }
}

impl<'a> IntoIterator for &'a Servers {
    type Item = &'a ServerUrl;
    type IntoIter = std::slice::Iter<'a, ServerUrl>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_default_ports() {
        let table = [
            ("mqtt://h", Scheme::Tcp, 1883, ""),
            ("tcp://h", Scheme::Tcp, 1883, ""),
            ("mqtt://h:1884", Scheme::Tcp, 1884, ""),
            ("mqtt://h/", Scheme::Tcp, 1883, ""),
            ("mqtts://h", Scheme::Tls, 8883, ""),
            ("ssl://h", Scheme::Tls, 8883, ""),
            ("tls://h", Scheme::Tls, 8883, ""),
            ("mqtt+ssl://h", Scheme::Tls, 8883, ""),
            ("tcps://h", Scheme::Tls, 8883, ""),
            ("TCPS://h:9", Scheme::Tls, 9, ""),
            ("ws://h", Scheme::Ws, 80, "/mqtt"),
            ("ws://h/", Scheme::Ws, 80, "/mqtt"),
            ("ws://h:8080/custom/path", Scheme::Ws, 8080, "/custom/path"),
            ("wss://h", Scheme::Wss, 443, "/mqtt"),
            ("wss://h:8443/ws", Scheme::Wss, 8443, "/ws"),
        ];
        for (text, scheme, port, path) in table {
            let u = ServerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(u.scheme(), scheme, "{text}");
            assert_eq!(u.port(), port, "{text}");
            assert_eq!(u.path(), path, "{text}");
            assert_eq!(u.host(), "h", "{text}");
            assert_eq!(u.is_tls(), scheme.is_tls(), "{text}");
        }
    }

    #[test]
    fn hosts() {
        let u = ServerUrl::parse("mqtt://[::1]:1883").unwrap();
        assert_eq!(u.host(), "::1");
        assert_eq!(u.to_string(), "mqtt://[::1]:1883");
        let u = ServerUrl::parse("mqtts://127.0.0.1").unwrap();
        assert_eq!(u.host(), "127.0.0.1");
        let u = ServerUrl::parse(" mqtt://Broker.Example.COM ").unwrap();
        assert_eq!(u.host(), "broker.example.com");
    }

    #[test]
    fn websocket_keeps_query_but_display_hides_it() {
        let u = ServerUrl::parse("wss://h/mqtt?token=secret").unwrap();
        assert_eq!(u.query(), Some("token=secret"));
        assert_eq!(u.websocket_uri(), "wss://h:443/mqtt?token=secret");
        assert_eq!(u.to_string(), "wss://h:443/mqtt");
    }

    #[test]
    fn errors() {
        assert_eq!(
            ServerUrl::parse("http://h"),
            Err(Error::UnknownScheme("http".into()))
        );
        assert_eq!(
            ServerUrl::parse("quic://h:1"),
            Err(Error::UnknownScheme("quic".into()))
        );
        assert!(matches!(
            ServerUrl::parse("not a url"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            ServerUrl::parse("mqtt://h:99999"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            ServerUrl::parse("mqtt://"),
            Err(Error::InvalidUrl { .. } | Error::MissingHost(_))
        ));
        assert!(matches!(
            ServerUrl::parse("mqtt:/path-only"),
            Err(Error::MissingHost(_))
        ));
        assert!(matches!(
            ServerUrl::parse("mqtt://h/topic"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            ServerUrl::parse("mqtt://h?x=1"),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            ServerUrl::parse("ws://h/mqtt#frag"),
            Err(Error::InvalidUrl { .. })
        ));
    }

    #[test]
    fn credentials_are_refused_and_never_echoed() {
        for text in ["mqtt://user:hunter2@h", "mqtts://user@h", "ws://:hunter2@h"] {
            let e = ServerUrl::parse(text).unwrap_err();
            assert!(matches!(e, Error::CredentialsInUrl(_)), "{text}: {e:?}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        // Even when the URL does not parse, the password is not echoed.
        let e = ServerUrl::parse("mqtt://user:hunter2@h:notaport").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn server_lists() {
        assert_eq!(Servers::parse(Vec::<String>::new()), Err(Error::NoServers));
        assert_eq!(Servers::new(vec![]), Err(Error::NoServers));
        assert!(matches!(
            Servers::parse(["mqtt://a", "gopher://b"]),
            Err(Error::UnknownScheme(_))
        ));
        let s = Servers::parse(["mqtt://a", "ws://b"]).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.first().host(), "a");
        assert_eq!(s.get_wrapping(3).host(), "b");
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn from_url() {
        let u = Url::parse("mqtt://h:1").unwrap();
        assert_eq!(ServerUrl::try_from(u).unwrap().port(), 1);
    }
}
