//! A harness for integration tests against a real Debian `mosquitto` (2.0.x): spawn it on a
//! free loopback port with a temporary config, restart it on the same port, stop it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), paho_testserver::Error> {
//! use paho_testserver::mosquitto;
//! // Skips (None) when mosquitto is missing, fails when PAHO_REQUIRE_MOSQUITTO=1.
//! let Some(builder) = mosquitto::require() else { return Ok(()) };
//! let mut broker = builder.config("max_inflight_messages 2").persistence(true).start().await?;
//! let addr = broker.addr(); // 127.0.0.1:<port>
//! # let _ = addr;
//! broker.restart().await?; // same port; with persistence, sessions survive
//! broker.stop().await?;
//! # Ok(()) }
//! ```
//!
//! A TLS listener instead of plain TCP: [`MosquittoBuilder::tls`] with a [`TlsListener`]
//! (the CA, the server certificate and key in PEM, optionally requiring client
//! certificates). The harness writes the files into its temporary directory.
//!
//! The team rule for tests that need mosquitto: when it is not installed, print a notice and
//! skip, unless `PAHO_REQUIRE_MOSQUITTO=1` is set, in which case fail. [`require`] and
//! [`start_or_skip`] implement it. Nothing listens beyond `127.0.0.1`.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::Error;

/// The environment variable that turns a missing mosquitto from a skip into a failure.
pub const REQUIRE_ENV: &str = "PAHO_REQUIRE_MOSQUITTO";

/// How long mosquitto may take to accept connections (it usually takes 10-25 ms).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness polls.
const POLL: Duration = Duration::from_millis(5);
/// How long SIGTERM may take before the harness kills mosquitto.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at finding a port nobody else takes between our probe and mosquitto's bind.
const PORT_ATTEMPTS: usize = 8;

/// Finds the mosquitto binary: `$MOSQUITTO`, then `PATH`, then `/usr/sbin` and
/// `/usr/local/sbin` (Debian installs it in `/usr/sbin`, often not in a user's `PATH`).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when `PAHO_REQUIRE_MOSQUITTO=1`.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The team rule: a builder when mosquitto is installed; otherwise a notice on stderr and
/// `None` (the test returns early, i.e. skips), or a panic when `PAHO_REQUIRE_MOSQUITTO=1`.
///
/// # Panics
///
/// When mosquitto is missing and `PAHO_REQUIRE_MOSQUITTO=1` is set: that is the point.
pub fn require() -> Option<MosquittoBuilder> {
    match binary() {
        Some(bin) => Some(MosquittoBuilder::with_binary(bin)),
        None if required() => panic!(
            "mosquitto is required ({REQUIRE_ENV}=1) but was not found in $MOSQUITTO, PATH or \
             /usr/sbin; install the Debian package `mosquitto`"
        ),
        None => {
            eprintln!(
                "NOTICE: mosquitto not installed; skipping this test (set {REQUIRE_ENV}=1 to \
                 make this a failure; install the Debian package `mosquitto` to run it)"
            );
            None
        }
    }
}

/// [`require`], then start mosquitto with the default config.
///
/// # Panics
///
/// When mosquitto is required but missing, or installed but fails to start (a test helper:
/// the panic message carries mosquitto's log).
pub async fn start_or_skip() -> Option<Mosquitto> {
    let builder = require()?;
    match builder.start().await {
        Ok(m) => Some(m),
        Err(e) => panic!("mosquitto failed to start: {e}"),
    }
}

/// Configures a mosquitto to spawn: extra config lines and persistence.
#[derive(Debug, Clone)]
pub struct MosquittoBuilder {
    binary: PathBuf,
    lines: Vec<String>,
    persistence: bool,
    log_all: bool,
    tls: Option<TlsListener>,
}

/// A TLS listener: mosquitto's `cafile`, `certfile`, `keyfile` and `require_certificate`
/// options, given as PEM texts (the harness writes them into its temporary directory).
#[derive(Clone)]
pub struct TlsListener {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    require_certificate: bool,
}

impl std::fmt::Debug for TlsListener {
    /// Leaves out the PEM texts (the key is a secret, even a test's).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("require_certificate", &self.require_certificate)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// A TLS listener with this server certificate chain and key (PEM); `ca_pem` is the CA
    /// that client certificates must be signed by (mosquitto wants a `cafile` even when it
    /// does not ask for client certificates). Client certificates are not required unless
    /// [`TlsListener::require_certificate`] is set.
    pub fn new(
        ca_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        TlsListener {
            ca_pem: ca_pem.into(),
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            require_certificate: false,
        }
    }

    /// Requires a client certificate signed by the CA (mutual TLS).
    pub fn require_certificate(mut self, on: bool) -> Self {
        self.require_certificate = on;
        self
    }
}

/// Config options a test may not set: where mosquitto listens is the harness's business, so
/// that nothing ever listens beyond `127.0.0.1` (`include_dir` could pull in config files
/// with listeners of their own, e.g. Debian's `/etc/mosquitto/conf.d`).
/// The listener's TLS options are set through [`MosquittoBuilder::tls`]: mosquitto reads
/// them only after the `listener` line.
const RESERVED: [&str; 13] = [
    "listener",
    "port",
    "bind_address",
    "bind_interface",
    "socket_domain",
    "user",
    "include_dir",
    "cafile",
    "capath",
    "certfile",
    "keyfile",
    "require_certificate",
    "protocol",
];

impl MosquittoBuilder {
    /// A builder for the mosquitto found by [`binary`].
    pub fn new() -> Result<Self, Error> {
        binary()
            .map(Self::with_binary)
            .ok_or(Error::MosquittoNotFound)
    }

    /// A builder for this mosquitto binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        MosquittoBuilder {
            binary: binary.into(),
            lines: Vec::new(),
            persistence: false,
            log_all: false,
            tls: None,
        }
    }

    /// Adds a global config line, e.g. `max_inflight_messages 2` or `max_packet_size 1000`.
    /// Lines go before the `listener` line, where mosquitto reads global options. Lines that
    /// would change where it listens (`listener`, `port`, `bind_address`, ...) or hold a line
    /// break make [`MosquittoBuilder::start`] fail.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// Turns persistence on, in the harness's temporary directory: sessions and retained
    /// messages survive [`Mosquitto::restart`] (mosquitto saves them at SIGTERM).
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Logs everything (`log_type all`: every packet), for debugging a test; see
    /// [`Mosquitto::log`]. Off by default: it slows mosquitto down on bulk tests.
    pub fn log_all(mut self, on: bool) -> Self {
        self.log_all = on;
        self
    }

    /// Makes the listener a TLS listener (still on `127.0.0.1` only); see [`TlsListener`].
    pub fn tls(mut self, tls: TlsListener) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Picks a free loopback port, writes the config, spawns mosquitto and waits until it
    /// accepts connections. Retries with another port if one was taken in between.
    pub async fn start(self) -> Result<Mosquitto, Error> {
        for line in &self.lines {
            if line.contains(['\n', '\r']) {
                return Err(Error::Config(
                    "a mosquitto config line must not hold a line break",
                ));
            }
            let option = line.split_whitespace().next().unwrap_or("");
            if RESERVED.contains(&option) {
                return Err(Error::Config(
                    "the harness sets listener, port, bind options, user and includes itself \
                     (and the listener's TLS options: use MosquittoBuilder::tls)",
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("paho-mosquitto-")
            .tempdir()?;
        let mut m = Mosquitto {
            binary: self.binary.clone(),
            lines: self.lines.clone(),
            persistence: self.persistence,
            log_all: self.log_all,
            tls: self.tls.clone(),
            port: 0,
            child: None,
            dir,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            m.port = free_port()?;
            match m.spawn().await {
                Ok(()) => return Ok(m),
                Err(Spawn::PortTaken(e)) => last = Some(e),
                Err(Spawn::Failed(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::MosquittoStart {
            reason: "no free port".into(),
            log: String::new(),
        }))
    }
}

/// A running mosquitto, killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    binary: PathBuf,
    lines: Vec<String>,
    persistence: bool,
    log_all: bool,
    tls: Option<TlsListener>,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Drop for Mosquitto {
    /// Kills mosquitto and reaps it before the temp dir goes. `kill_on_drop` alone only sends
    /// SIGKILL: the process would outlive the handle for a moment (still listening, its
    /// directory deleted under it) and stay a zombie until tokio happens to reap it.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.start_kill().is_err() {
            return; // already reaped
        }
        // SIGKILL takes effect within milliseconds. A synchronous drop cannot await, so it
        // polls, yielding the thread, bounded by real time.
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

enum Spawn {
    PortTaken(Error),
    Failed(Error),
}

impl Mosquitto {
    /// Starts mosquitto with the default config (see [`MosquittoBuilder`] for more).
    pub async fn start() -> Result<Mosquitto, Error> {
        MosquittoBuilder::new()?.start().await
    }

    /// A builder, failing if mosquitto is not installed (tests should use [`require`]).
    pub fn builder() -> Result<MosquittoBuilder, Error> {
        MosquittoBuilder::new()
    }

    /// The address to connect to: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// mosquitto's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// True while mosquitto runs (between start/restart and stop).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything mosquitto wrote to stderr so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temporary directory holding the config, the log and the persistence files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops mosquitto with SIGTERM (it saves persistent state) and waits for it to exit;
    /// kills it if it takes more than 5 s. Does nothing when it is not running.
    pub async fn stop(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // `kill` avoids unsafe libc calls; the workspace denies unsafe code.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if !exited_within(&mut child, STOP_TIMEOUT).await? {
            child.kill().await?;
        }
        Ok(())
    }

    /// Kills mosquitto at once (SIGKILL): no state is saved. Does nothing when it is not
    /// running.
    pub async fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops mosquitto (if running) and starts it again on the same port with the same
    /// config. With persistence on, sessions and retained messages survive.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await?;
        // The old socket may linger briefly; mosquitto binds with SO_REUSEADDR, but retry a
        // few times in case another process grabbed the port meanwhile.
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(Spawn::PortTaken(e)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Spawn::Failed(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::MosquittoStart {
            reason: "port stayed taken".into(),
            log: self.log(),
        }))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn write_config(&self) -> Result<PathBuf, Error> {
        let dir = self.dir.path();
        let mut conf = String::new();
        // Global options come before `listener`: mosquitto applies them to all listeners.
        conf.push_str("per_listener_settings false\n");
        conf.push_str("allow_anonymous true\n");
        conf.push_str("log_dest stderr\n");
        if self.log_all {
            conf.push_str("log_type all\n");
        } else {
            // mosquitto's defaults, written out so that a test's own `log_type` line adds to
            // them instead of replacing them: readiness is read from a notice.
            for t in ["error", "warning", "notice", "information"] {
                conf.push_str(&format!("log_type {t}\n"));
            }
        }
        conf.push_str("sys_interval 0\n");
        // Running as root, mosquitto would drop to user `mosquitto` and could not write the
        // persistence files in our temp dir.
        conf.push_str("user root\n");
        if self.persistence {
            conf.push_str("persistence true\n");
            conf.push_str(&format!("persistence_location {}/\n", dir.display()));
        } else {
            conf.push_str("persistence false\n");
        }
        for line in &self.lines {
            conf.push_str(line);
            conf.push('\n');
        }
        conf.push_str(&format!("listener {} 127.0.0.1\n", self.port));
        // Per-listener options come after their `listener` line.
        if let Some(tls) = &self.tls {
            let files = [
                ("cafile", "tls-ca.pem", &tls.ca_pem),
                ("certfile", "tls-server.pem", &tls.cert_pem),
                ("keyfile", "tls-server.key", &tls.key_pem),
            ];
            for (option, name, pem) in files {
                let path = dir.join(name);
                fs::write(&path, pem)?;
                conf.push_str(&format!("{option} {}\n", path.display()));
            }
            if tls.require_certificate {
                conf.push_str("require_certificate true\n");
            }
        }
        let path = dir.join("mosquitto.conf");
        fs::write(&path, conf)?;
        Ok(path)
    }

    /// Spawns mosquitto on `self.port` and waits until the port accepts connections.
    async fn spawn(&mut self) -> Result<(), Spawn> {
        let conf = self.write_config().map_err(Spawn::Failed)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| Spawn::Failed(e.into()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Spawn::Failed(e.into()))?;
        // Bounded by real time, not by attempts: under a paused tokio clock the sleeps pass
        // instantly, and the real clock still bounds the wait.
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log_since(log_start);
                let err = Error::MosquittoStart {
                    reason: format!("exited with {status}"),
                    log: log.clone(),
                };
                return Err(if log.contains("Address already in use") {
                    Spawn::PortTaken(err)
                } else {
                    Spawn::Failed(err)
                });
            }
            // The port alone could be answered by another process that took it between our
            // probe and mosquitto's bind (mosquitto then exits with "Address already in use");
            // mosquitto logs "... running" only once its listener is bound.
            let running = self.log_since(log_start).contains(" running");
            if running && TcpStream::connect(self.addr()).await.is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(Spawn::Failed(Error::MosquittoStart {
                    reason: format!("port {} did not accept connections", self.port),
                    log: self.log_since(log_start),
                }));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_since(&self, start: u64) -> String {
        let all = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(start).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }
}

/// Waits up to `limit` of real time for `child` to exit; false if it is still running.
///
/// Real time, not tokio time: under a paused clock tokio jumps to the next timer whenever the
/// runtime is idle, including while mosquitto is still writing its persistence file after
/// SIGTERM, so a `tokio::time::timeout` would give up at once and the caller would SIGKILL it.
/// The short tokio sleeps only pace the polling (under a paused clock they pass at once, and
/// the real-time deadline still bounds the loop).
async fn exited_within(child: &mut Child, limit: Duration) -> Result<bool, Error> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        tokio::select! {
            r = child.wait() => {
                r?;
                return Ok(true);
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// A loopback port that was free a moment ago (mosquitto has no port 0).
fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
