//! A fault-injecting proxy for tests: it sits between clients and a broker and, on command,
//! cuts connections at random intervals, delays traffic, splits writes into 1-byte pieces,
//! blackholes a direction without closing anything (a half-open link), or closes one
//! direction only.
//!
//! [`Proxy::listen`] is a TCP proxy on `127.0.0.1:<free port>` in front of an upstream
//! address (a real `mosquitto`, the [`TestServer`](crate::TestServer)'s TCP port). The same
//! relay runs over any pair of `AsyncRead + AsyncWrite` streams: [`Proxy::wrap`] puts it in
//! front of an in-memory pipe, so a test on tokio's paused clock can dial
//! `proxy.wrap(server.connect_duplex())` and assert on virtual time.
//!
//! Every timer is tokio's (so the paused clock drives it) and every random choice comes from
//! a small SplitMix64 of our own, seeded by the test: connection `n` draws from a generator
//! derived from `(seed, n)`, so a run's cut points depend only on the seed and the order of
//! connections, never on the machine.
//!
//! Behaviours that apply to every connection, present and future, are switched at runtime
//! ([`Proxy::set_cuts`], [`Proxy::set_delay`], [`Proxy::set_split`]); faults aimed at the
//! connections open now ([`Proxy::blackhole`], [`Proxy::close_one_way`], [`Proxy::cut_all`])
//! leave later connections alone, which is how a half-open link differs from a dead
//! network: the client's next connection works. [`Proxy::stats`] counts connections, cuts
//! and bytes.
//!
//! A blackholed direction is stalled, not emptied: the proxy stops reading from the sender
//! (whose writes succeed until the buffers fill, as over a real silent path) and delivers
//! nothing; when the blackhole ends, the bytes flow on, in order and complete. The byte
//! stream is never corrupted: a cut or a one-way close loses what was in flight, as a real
//! link does, but nothing arrives out of order or torn.

use std::fmt;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The in-memory pipe's buffer in [`Proxy::wrap`] (each way).
const PIPE_BUFFER: usize = 64 * 1024;
/// The most one read takes from a sender.
const READ_CHUNK: usize = 16 * 1024;
/// Chunks read but not yet delivered, per direction (what a delay holds back is bounded by
/// this many reads, so a sender is slowed by TCP as through a real slow link).
const IN_FLIGHT_CHUNKS: usize = 64;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream server.
    ToServer,
    /// From the upstream server to the client.
    ToClient,
    /// Both of them.
    Both,
}

impl Direction {
    fn includes(self, one: usize) -> bool {
        match self {
            Direction::ToServer => one == TO_SERVER,
            Direction::ToClient => one == TO_CLIENT,
            Direction::Both => true,
        }
    }
}

const TO_SERVER: usize = 0;
const TO_CLIENT: usize = 1;

/// What the proxy has done so far ([`Proxy::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections relayed (accepted with an upstream connection made, or wrapped).
    pub connections: u64,
    /// Connections open now.
    pub live: usize,
    /// Connections cut by the proxy (the random cuts and [`Proxy::cut_all`]).
    pub cuts: u64,
    /// Accepted client connections whose upstream connect failed (closed at once).
    pub upstream_failures: u64,
    /// Directions closed by [`Proxy::close_one_way`].
    pub one_way_closes: u64,
    /// Directions blackholed by [`Proxy::blackhole`].
    pub blackholes: u64,
    /// Bytes delivered to the server.
    pub bytes_to_server: u64,
    /// Bytes delivered to the client.
    pub bytes_to_client: u64,
}

/// The behaviours that apply to every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Behaviour {
    /// Each connection is cut after a time drawn uniformly from `[min, max]` (drawn again
    /// when the setting changes).
    cuts: Option<(Duration, Duration)>,
    /// Every chunk is delivered this long after it was read.
    delay: Duration,
    /// Every byte is written on its own.
    split: bool,
}

/// Until when a blackholed direction stays silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    Until(Instant),
    UntilHealed,
}

/// The faults aimed at one connection.
#[derive(Debug, Clone, Copy, Default)]
struct LinkFaults {
    stall: [Option<Stall>; 2],
    closed: [bool; 2],
    cut: bool,
}

struct Link {
    id: u64,
    faults: watch::Sender<LinkFaults>,
    abort: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    cuts: AtomicU64,
    upstream_failures: AtomicU64,
    one_way_closes: AtomicU64,
    blackholes: AtomicU64,
    bytes: [AtomicU64; 2],
}

struct Shared {
    seed: u64,
    behaviour: watch::Sender<Behaviour>,
    links: Mutex<Vec<Arc<Link>>>,
    next_link: AtomicU64,
    counters: Counters,
}

/// Stops the proxy's tasks when the last [`Proxy`] clone goes.
struct Guard {
    shared: Arc<Shared>,
    accept: Option<AbortHandle>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(a) = &self.accept {
            a.abort();
        }
        for link in lock(&self.shared.links).drain(..) {
            if let Some(a) = lock(&link.abort).take() {
                a.abort();
            }
        }
    }
}

/// The fault-injecting proxy; see the [module documentation](self).
///
/// Cloning gives another handle to the same proxy. Dropping the last handle stops it: the
/// listener closes and every relayed connection is closed.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    addr: Option<SocketAddr>,
    _guard: Arc<Guard>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("seed", &self.shared.seed)
            .field("behaviour", &*self.shared.behaviour.borrow())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Proxy {
    /// A proxy without a listener, for in-memory streams ([`Proxy::wrap`],
    /// [`Proxy::relay`]). It starts transparent. Needs a tokio runtime when relaying.
    pub fn new(seed: u64) -> Proxy {
        let shared = Self::shared(seed);
        Proxy {
            _guard: Arc::new(Guard {
                shared: shared.clone(),
                accept: None,
            }),
            shared,
            addr: None,
        }
    }

    /// A TCP proxy listening on `127.0.0.1:<free port>` ([`Proxy::addr`]) that relays every
    /// connection it accepts to `upstream` (connected anew for each, Nagle off on both
    /// sides). A client whose upstream connect fails is closed at once (counted in
    /// [`ProxyStats::upstream_failures`]), as when the broker is down. It starts transparent.
    pub async fn listen(upstream: SocketAddr, seed: u64) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Self::shared(seed);
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let client = match listener.accept().await {
                    Ok((c, _)) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let s = s.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(upstream).await {
                        Ok(up) => {
                            let _ = client.set_nodelay(true);
                            let _ = up.set_nodelay(true);
                            Shared::spawn_link(&s, client, up);
                        }
                        Err(_) => {
                            s.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        Ok(Proxy {
            _guard: Arc::new(Guard {
                shared: shared.clone(),
                accept: Some(accept.abort_handle()),
            }),
            shared,
            addr: Some(addr),
        })
    }

    fn shared(seed: u64) -> Arc<Shared> {
        Arc::new(Shared {
            seed,
            behaviour: watch::channel(Behaviour::default()).0,
            links: Mutex::new(Vec::new()),
            next_link: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    /// The address clients connect to (only for [`Proxy::listen`]).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Puts the proxy in front of `upstream` (for example `TestServer::connect_duplex()`)
    /// and returns the client's end of a new in-memory pipe.
    pub fn wrap<U>(&self, upstream: U) -> DuplexStream
    where
        U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (client, far) = tokio::io::duplex(PIPE_BUFFER);
        Shared::spawn_link(&self.shared, far, upstream);
        client
    }

    /// Relays between `client` and `upstream` (any streams) in a task of its own.
    pub fn relay<C, U>(&self, client: C, upstream: U)
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Shared::spawn_link(&self.shared, client, upstream);
    }

    /// Cuts every connection, present and future, after a time drawn from `[min, max]` from
    /// when it opened (for connections open now: from now). Both ends are closed at once;
    /// what was in flight is lost.
    ///
    /// # Panics
    ///
    /// If `min` is zero or greater than `max` (a test's mistake).
    pub fn set_cuts(&self, min: Duration, max: Duration) {
        assert!(
            !min.is_zero() && min <= max,
            "cuts need 0 < min <= max, not {min:?}..{max:?}"
        );
        self.shared
            .behaviour
            .send_modify(|b| b.cuts = Some((min, max)));
    }

    /// No more random cuts.
    pub fn stop_cuts(&self) {
        self.shared.behaviour.send_modify(|b| b.cuts = None);
    }

    /// Delivers every chunk `delay` after it was read (zero: at once), both ways, on every
    /// connection. Chunks are pipelined (a delay is latency, not a rate limit), at most a
    /// bounded number per direction.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.behaviour.send_modify(|b| b.delay = delay);
    }

    /// Writes every byte on its own (with a flush and a yield in between), both ways, on
    /// every connection, so the receiver's reads are as small as they can get.
    pub fn set_split(&self, on: bool) {
        self.shared.behaviour.send_modify(|b| b.split = on);
    }

    /// Silences `dir` on every connection open now, without closing anything, for `period`
    /// (`None`: until [`Proxy::heal`]). Connections opened later are not affected. Returns
    /// how many connections were blackholed.
    pub fn blackhole(&self, dir: Direction, period: Option<Duration>) -> usize {
        let stall = match period {
            Some(p) => Stall::Until(Instant::now() + p),
            None => Stall::UntilHealed,
        };
        let n = self.for_each_link(|f| {
            for (i, s) in f.stall.iter_mut().enumerate() {
                if dir.includes(i) {
                    *s = Some(stall);
                }
            }
        });
        let per = if dir == Direction::Both { 2 } else { 1 };
        self.shared
            .counters
            .blackholes
            .fetch_add(per * n as u64, Ordering::Relaxed);
        n
    }

    /// Ends every blackhole: the stalled bytes flow on.
    pub fn heal(&self) {
        self.for_each_link(|f| f.stall = [None, None]);
    }

    /// Closes `dir` on every connection open now: its receiver sees the end of the stream
    /// (what was in flight that way is lost), and what its sender writes from now on is read
    /// and thrown away, so the sender notices nothing. The other direction flows on.
    /// Returns how many connections it touched.
    pub fn close_one_way(&self, dir: Direction) -> usize {
        let n = self.for_each_link(|f| {
            for (i, c) in f.closed.iter_mut().enumerate() {
                if dir.includes(i) {
                    *c = true;
                }
            }
        });
        let per = if dir == Direction::Both { 2 } else { 1 };
        self.shared
            .counters
            .one_way_closes
            .fetch_add(per * n as u64, Ordering::Relaxed);
        n
    }

    /// Cuts every connection open now. Returns how many.
    pub fn cut_all(&self) -> usize {
        self.for_each_link(|f| f.cut = true)
    }

    fn for_each_link(&self, mut change: impl FnMut(&mut LinkFaults)) -> usize {
        let links = lock(&self.shared.links);
        for link in links.iter() {
            link.faults.send_modify(&mut change);
        }
        links.len()
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            live: lock(&self.shared.links).len(),
            cuts: c.cuts.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            one_way_closes: c.one_way_closes.load(Ordering::Relaxed),
            blackholes: c.blackholes.load(Ordering::Relaxed),
            bytes_to_server: c.bytes[TO_SERVER].load(Ordering::Relaxed),
            bytes_to_client: c.bytes[TO_CLIENT].load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    fn spawn_link<C, U>(shared: &Arc<Shared>, client: C, upstream: U)
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let id = shared.next_link.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link {
            id,
            faults: watch::channel(LinkFaults::default()).0,
            abort: Mutex::new(None),
        });
        // Registered before the task runs, so that a fault aimed at "every connection open
        // now" right after a connect reaches this one.
        lock(&shared.links).push(link.clone());
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let l = link.clone();
        let task = tokio::spawn(async move {
            run_link(&s, &l, client, upstream).await;
            lock(&s.links).retain(|x| x.id != l.id);
        });
        *lock(&link.abort) = Some(task.abort_handle());
    }
}

/// Relays one connection until both directions have ended or the connection is cut; the
/// streams are dropped (closed) on return.
async fn run_link<C, U>(shared: &Arc<Shared>, link: &Arc<Link>, client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (client_rd, client_wr) = tokio::io::split(client);
    let (up_rd, up_wr) = tokio::io::split(upstream);
    let to_server = pump(TO_SERVER, client_rd, up_wr, shared, link);
    let to_client = pump(TO_CLIENT, up_rd, client_wr, shared, link);
    let mut rng = SplitMix64::new(shared.seed ^ SplitMix64::new(link.id).next_u64());
    let cut = cut_timer(shared, link, &mut rng);
    tokio::select! {
        _ = async { tokio::join!(to_server, to_client) } => {}
        _ = cut => {}
    }
}

/// Resolves when the connection is to be cut (counted here, before the streams close).
async fn cut_timer(shared: &Shared, link: &Link, rng: &mut SplitMix64) {
    let mut behaviour = shared.behaviour.subscribe();
    let mut faults = link.faults.subscribe();
    let mut deadline = draw(behaviour.borrow_and_update().cuts, rng);
    loop {
        if faults.borrow_and_update().cut {
            break;
        }
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = sleep => break,
            r = behaviour.changed() => match r {
                Ok(()) => deadline = draw(behaviour.borrow_and_update().cuts, rng),
                Err(_) => deadline = None,
            },
            r = faults.changed() => if r.is_err() {
                return pending().await;
            },
        }
    }
    shared.counters.cuts.fetch_add(1, Ordering::Relaxed);
}

fn draw(cuts: Option<(Duration, Duration)>, rng: &mut SplitMix64) -> Option<Instant> {
    let (min, max) = cuts?;
    let span = (max - min).as_nanos().min(u64::MAX as u128) as u64;
    let offset = if span == u64::MAX {
        rng.next_u64()
    } else {
        rng.next_u64() % (span + 1)
    };
    Some(Instant::now() + min + Duration::from_nanos(offset))
}

/// Whether a direction may carry bytes now.
enum Flow {
    Open,
    Closed,
}

/// Waits while `dir` is blackholed; says whether it was closed one way.
async fn flowing(dir: usize, faults: &mut watch::Receiver<LinkFaults>) -> Flow {
    loop {
        let f = *faults.borrow_and_update();
        if f.closed[dir] {
            return Flow::Closed;
        }
        match f.stall[dir] {
            None => return Flow::Open,
            Some(Stall::Until(at)) if at <= Instant::now() => return Flow::Open,
            Some(Stall::Until(at)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => return Flow::Open,
                    r = faults.changed() => if r.is_err() { return Flow::Open },
                }
            }
            Some(Stall::UntilHealed) => {
                if faults.changed().await.is_err() {
                    return Flow::Open;
                }
            }
        }
    }
}

/// One direction: a reader that takes chunks from the sender while the direction flows and
/// stamps them with their delivery time, and a writer that delivers them then.
async fn pump<R, W>(dir: usize, mut rd: R, mut wr: W, shared: &Shared, link: &Link)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT_CHUNKS);
    let mut read_faults = link.faults.subscribe();
    let mut write_faults = link.faults.subscribe();
    let behaviour = shared.behaviour.subscribe();

    let reader = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if let Flow::Closed = flowing(dir, &mut read_faults).await {
                // Swallow what the sender writes from now on, so that it notices nothing.
                drop(tx);
                while let Ok(1..) = rd.read(&mut buf).await {}
                return;
            }
            let n = tokio::select! {
                biased;
                r = read_faults.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
            };
            let at = Instant::now() + behaviour.borrow().delay;
            if tx
                .send((at, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return;
            }
        }
    };

    let bytes = &shared.counters.bytes[dir];
    let split = shared.behaviour.subscribe();
    let writer = async move {
        let mut next: Option<(Instant, Bytes)> = None;
        loop {
            if let Flow::Closed = flowing(dir, &mut write_faults).await {
                let _ = wr.shutdown().await;
                return;
            }
            let (at, chunk) = match next.take() {
                Some(c) => c,
                None => tokio::select! {
                    biased;
                    r = write_faults.changed() => {
                        if r.is_err() {
                            return;
                        }
                        continue;
                    }
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => {
                            // The sender finished: pass the end of the stream on.
                            let _ = wr.shutdown().await;
                            return;
                        }
                    },
                },
            };
            if at > Instant::now() {
                // Look at the faults again after the delay: a blackhole may have begun.
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = write_faults.changed() => {}
                }
                next = Some((at, chunk));
                continue;
            }
            let ok = if split.borrow().split {
                write_split(&mut wr, &chunk).await
            } else {
                wr.write_all(&chunk).await.is_ok() && wr.flush().await.is_ok()
            };
            if !ok {
                return;
            }
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(reader, writer);
}

async fn write_split<W: AsyncWrite + Unpin>(wr: &mut W, chunk: &[u8]) -> bool {
    for b in chunk {
        if wr.write_all(std::slice::from_ref(b)).await.is_err() || wr.flush().await.is_err() {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for fault timing.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The proxy's locks guard plain data that a panic cannot leave inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
