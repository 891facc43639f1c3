//! Shared pieces of the `paho-examples` programs (`demo`, `pub`, `sub`): TLS from
//! mosquitto-style flags, the documented exit codes, and the connection setup of `pub` and
//! `sub`. Not a library for other crates: depend on `autopaho` instead.

use std::path::Path;

use autopaho::TlsOptions;

/// TLS options from `--cafile`, `--cert`/`--key` and `--insecure`; `None` when none is given
/// (the default connector then uses the public roots for `mqtts://` and `wss://`).
///
/// # Errors
///
/// A file that cannot be read, a `--cert` without `--key` (or the other way round), or PEM
/// that does not parse, as one line of text.
pub fn tls_from_flags(
    cafile: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    insecure: bool,
) -> Result<Option<TlsOptions>, String> {
    if cafile.is_none() && cert.is_none() && key.is_none() && !insecure {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut b = TlsOptions::builder();
    if let Some(ca) = cafile {
        b = b.ca_pem(read(ca)?);
    }
    match (cert, key) {
        (Some(c), Some(k)) => b = b.client_cert_pem(read(c)?, read(k)?),
        (None, None) => {}
        _ => return Err("--cert and --key go together".into()),
    }
    if insecure {
        b = b.danger_accept_invalid_certs();
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

use std::path::PathBuf;

use std::time::Duration;

use autopaho::{Backoff, ConnectionManager, Connector, Event, ManagerConfig, ServerUrl, Servers};
use paho::packets::QoS;
use paho::session::{FileStore, SessionConfig, StoreIdentity};
use paho::{ConnectOptions, SessionHandle};
use tokio::sync::broadcast;

/// The exit codes of `pub` and `sub` (documented in their `--help` and the README).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Anything else that stopped the work: the connection failed for good, a publish was
    /// refused by the broker, stdin or a file could not be read.
    pub const FAILED: u8 = 1;
    /// Bad flags (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// The broker cannot be reached (DNS, TCP, WebSocket, connect timeout).
    pub const UNREACHABLE: u8 = 3;
    /// The broker refused the CONNECT (bad credentials, not authorised, ...).
    pub const REFUSED: u8 = 4;
    /// TLS failed: a certificate file, the handshake or the server's certificate.
    pub const TLS: u8 = 5;
    /// The `--session-dir` is in use by another process.
    pub const LOCKED: u8 = 6;
    /// A message is larger than the broker's Maximum Packet Size (never dropped in silence).
    pub const TOO_LARGE: u8 = 7;
    /// The `--session-dir` cannot be used: I/O error, corrupt files, another client's.
    pub const STORE: u8 = 8;
    /// `sub -W`: the timeout passed before `-C` messages came (as `mosquitto_sub`).
    pub const TIMEOUT: u8 = 27;
}

/// An error to print as one line, with the exit code that goes with it.
#[derive(Debug)]
pub struct Fail {
    /// The exit code (see [`exit`]).
    pub code: u8,
    /// The line.
    pub message: String,
}

impl Fail {
    /// A failure with this code.
    pub fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for a manager's error.
pub fn code_of(e: &autopaho::Error) -> u8 {
    use autopaho::Error as E;
    match e {
        E::Io { .. } | E::Timeout { .. } | E::WebSocket { .. } => exit::UNREACHABLE,
        E::CertificateVerification { .. }
        | E::Tls { .. }
        | E::Pem { .. }
        | E::TlsConfig(_)
        | E::InvalidServerName(_) => exit::TLS,
        E::Client(paho::Error::ConnectionRefused { .. }) => exit::REFUSED,
        E::Client(paho::Error::PacketTooLarge { .. }) => exit::TOO_LARGE,
        e if e.is_config() => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// The flags `pub` and `sub` share, spelled as mosquitto spells them. `-h` is the host (as
/// in mosquitto), so help is `--help` only; `-V` is the protocol version, so the version is
/// `--version` only.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Broker host.
    #[arg(
        short = 'h',
        long = "host",
        default_value = "localhost",
        env = "MQTT_HOST"
    )]
    pub host: String,
    /// Broker port (default 1883, or 8883 with TLS flags).
    #[arg(short = 'p', long = "port", env = "MQTT_PORT")]
    pub port: Option<u16>,
    /// Broker URL instead of -h/-p: mqtt://, mqtts://, ws://, wss://, with an optional
    /// topic as its path (mqtt://host:1883/some/topic). Credentials in the URL are allowed
    /// (user:pass@host), as in mosquitto.
    #[arg(short = 'L', long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// Client id (default: one made up for this run; required with --session-dir).
    #[arg(short = 'i', long = "id", env = "MQTT_CLIENT_ID")]
    pub id: Option<String>,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0, env = "MQTT_QOS", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// No clean start: resume a persistent session (Session Expiry from -x, or never).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// Session Expiry Interval in seconds (with -c or --session-dir).
    #[arg(short = 'x', long = "session-expiry-interval", value_name = "SECONDS")]
    pub expiry: Option<u32>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    /// Keepalive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// Print connection events on stderr.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// CA certificates (PEM) to verify the broker with; turns TLS on.
    #[arg(long, value_name = "FILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM), with --key.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not verify the broker's certificate (TLS still on).
    #[arg(long)]
    pub insecure: bool,
    /// MQTT version: always 5 (mqttv5 or 5 accepted, for mosquitto compatibility).
    #[arg(short = 'V', long = "protocol-version", value_parser = ["mqttv5", "5"], default_value = "mqttv5")]
    pub protocol: String,
    /// Keep the session (and, for pub, a durable outgoing queue) in this directory, and
    /// reconnect by itself; implies -c.
    #[arg(long = "session-dir", value_name = "DIR", env = "PAHO_SESSION_DIR")]
    pub session_dir: Option<PathBuf>,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Print the version.
    #[arg(long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,
}

/// Where to connect, and the topic a `-L` URL carried.
#[derive(Debug)]
pub struct Target {
    /// The server.
    pub server: ServerUrl,
    /// The topic from the URL's path, if any.
    pub topic: Option<String>,
    /// Credentials from the URL.
    pub username: Option<String>,
    /// Credentials from the URL.
    pub password: Option<String>,
}

impl Common {
    /// The QoS.
    pub fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    fn tls_flags(&self) -> bool {
        self.cafile.is_some() || self.cert.is_some() || self.insecure
    }

    /// The server from -L or -h/-p.
    ///
    /// # Errors
    ///
    /// A URL that does not parse ([`exit::USAGE`]).
    pub fn target(&self) -> Result<Target, Fail> {
        let usage = |m: String| Fail::new(exit::USAGE, m);
        let Some(url) = &self.url else {
            let scheme = if self.tls_flags() { "mqtts" } else { "mqtt" };
            let host = if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            };
            let url = match self.port {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            };
            let server = ServerUrl::parse(&url).map_err(|e| usage(format!("-h/-p: {e}")))?;
            return Ok(Target {
                server,
                topic: None,
                username: None,
                password: None,
            });
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| usage(format!("-L {url}: not a URL (mqtt://host:port/topic)")))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (creds, hostport) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        let (username, password) = match creds.map(|c| c.split_once(':')) {
            Some(Some((u, p))) => (Some(u.to_owned()), Some(p.to_owned())),
            Some(None) => (creds.map(str::to_owned), None),
            None => (None, None),
        };
        let server = ServerUrl::parse(&format!("{scheme}://{hostport}"))
            .map_err(|e| usage(format!("-L {url}: {e}")))?;
        let topic = path.filter(|p| !p.is_empty()).map(str::to_owned);
        Ok(Target {
            server,
            topic,
            username,
            password,
        })
    }

    /// The client id: `-i`, or a made-up one.
    pub fn client_id(&self, prefix: &str) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => format!(
                "{prefix}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            ),
        }
    }

    fn persistent(&self) -> bool {
        self.persistent || self.session_dir.is_some()
    }

    /// The session's configuration: expiry from -x, or never with -c / --session-dir, or 0.
    pub fn session_config(&self) -> SessionConfig {
        let expiry = match (self.expiry, self.persistent()) {
            (Some(x), _) => x,
            (None, true) => u32::MAX,
            (None, false) => 0,
        };
        SessionConfig::new().session_expiry_interval(expiry)
    }

    /// The manager's configuration for `client_id`.
    ///
    /// # Errors
    ///
    /// Bad TLS files ([`exit::TLS`]) or an invalid option ([`exit::USAGE`]).
    pub fn manager_config(
        &self,
        target: &Target,
        client_id: &str,
        manual_acks: bool,
    ) -> Result<ManagerConfig, Fail> {
        let tls = tls_from_flags(
            self.cafile.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
            self.insecure,
        )
        .map_err(|e| Fail::new(exit::TLS, format!("TLS: {e}")))?;
        let mut connector = Connector::builder();
        if let Some(tls) = tls {
            connector = connector.tls(tls);
        }
        let connector = connector
            .build()
            .map_err(|e| Fail::new(code_of(&e), e.to_string()))?;
        let mut o = ConnectOptions::builder()
            .client_id(client_id)
            .clean_start(!self.persistent())
            .keep_alive(Duration::from_secs(u64::from(self.keepalive)))
            .manual_acks(manual_acks);
        if manual_acks && self.session_dir.is_some() {
            // sub's durable mode: one unfinished delivery at a time, so that what a kill can
            // leave printed but not yet acknowledged (and so printed again) is one message.
            o = o.receive_maximum(1);
        }
        if let Some(u) = self.username.as_ref().or(target.username.as_ref()) {
            o = o.username(u.as_str());
        }
        if let Some(p) = self.password.as_ref().or(target.password.as_ref()) {
            o = o.password(p.clone().into_bytes());
        }
        let options = o
            .build()
            .map_err(|e| Fail::new(exit::USAGE, format!("connect options: {e}")))?;
        let backoff = Backoff::exponential()
            .initial(Duration::from_millis(200))
            .max(Duration::from_secs(10))
            .build()
            .map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
        let servers = Servers::new(vec![target.server.clone()])
            .map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
        ManagerConfig::builder(servers)
            .connector(connector)
            .connect_options(options)
            .backoff(backoff)
            .build()
            .map_err(|e| Fail::new(code_of(&e), e.to_string()))
    }

    /// Opens the `--session-dir`'s session store (in `DIR/session`) for `client_id`.
    ///
    /// # Errors
    ///
    /// [`exit::LOCKED`] when another process has it open, [`exit::STORE`] otherwise.
    pub async fn open_session(
        &self,
        dir: &Path,
        target: &Target,
        client_id: &str,
    ) -> Result<SessionHandle<FileStore>, Fail> {
        let identity = StoreIdentity::new(target.server.to_string(), client_id)
            .map_err(|e| Fail::new(exit::USAGE, e.to_string()))?;
        let store_fail = |e: paho::session::Error| {
            let code = if matches!(e, paho::session::Error::Locked(_)) {
                exit::LOCKED
            } else {
                exit::STORE
            };
            Fail::new(code, format!("--session-dir {}: {e}", dir.display()))
        };
        let store = FileStore::open(dir.join("session"), identity)
            .await
            .map_err(store_fail)?;
        SessionHandle::restore(self.session_config(), store)
            .await
            .map_err(|e| Fail::new(exit::STORE, format!("--session-dir {}: {e}", dir.display())))
    }
}

/// Waits for the manager's first connection. A refusal or a TLS failure is final; an
/// unreachable broker is final unless `retry` (a `--session-dir` run keeps trying).
///
/// `events` must have been taken right after the manager started, before anything awaited.
///
/// # Errors
///
/// The first attempt's error, with its exit code.
pub async fn first_connection(
    mgr: &ConnectionManager,
    events: &mut broadcast::Receiver<Event>,
    retry: bool,
    debug: bool,
) -> Result<(), Fail> {
    loop {
        match events.recv().await {
            Ok(Event::Connected { .. }) => return Ok(()),
            Ok(Event::ConnectFailed { server, error }) => {
                let code = code_of(&error);
                if !retry || code != exit::UNREACHABLE {
                    let _ = mgr.disconnect().await;
                    return Err(Fail::new(code, format!("{server}: {error}")));
                }
                if debug {
                    eprintln!("{server}: {error}; retrying (--session-dir)");
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Fail::new(exit::FAILED, "the connection manager stopped"));
            }
        }
    }
}

/// Prints the manager's events on stderr (for `-d`) until it stops.
pub fn print_events(mut events: broadcast::Receiver<Event>) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Connected { server, connack }) => eprintln!(
                    "connected to {server} (session present: {})",
                    connack.session_present
                ),
                Ok(Event::SessionLost) => {
                    eprintln!("the broker had forgotten the session: republishing, resubscribing")
                }
                Ok(e) => eprintln!("{e:?}"),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
}

/// The README's Rust example, compiled as a doctest so that it cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
