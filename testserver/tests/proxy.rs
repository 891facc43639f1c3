//! The fault-injecting proxy: each behaviour does what it says, on tokio's paused clock over
//! in-memory pipes (exact virtual times), and the TCP front on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use paho_testserver::proxy::{Direction, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};

const MS: Duration = Duration::from_millis(1);

/// A proxied connection over pipes: (the client's end, the server's end).
fn pair(proxy: &Proxy) -> (DuplexStream, DuplexStream) {
    let (up_client, up_server) = tokio::io::duplex(64 * 1024);
    (proxy.wrap(up_client), up_server)
}

/// Reads exactly `n` bytes, or fails after `within` of (virtual) time.
async fn read_n(s: &mut DuplexStream, n: usize, within: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(within, s.read_exact(&mut buf))
        .await
        .expect("the bytes did not arrive in time")
        .expect("the stream ended");
    buf
}

/// True when nothing (not even the end of the stream) arrives within `within`.
async fn silent_for(s: &mut DuplexStream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    timeout(within, s.read(&mut b)).await.is_err()
}

/// Reads until the end of the stream (or an error, which a cut may give).
async fn until_eof(s: &mut DuplexStream) {
    let mut buf = [0u8; 4096];
    while let Ok(1..) = s.read(&mut buf).await {}
}

#[tokio::test(start_paused = true)]
async fn transparent_by_default_both_ways_and_the_end_of_stream_passes() {
    let proxy = Proxy::new(1);
    let (mut c, mut s) = pair(&proxy);
    let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let (u, d) = (up.clone(), down.clone());
    let (mut cr, mut cw) = tokio::io::split(c);
    let (mut sr, mut sw) = tokio::io::split(s);
    let start = Instant::now();
    let (got_up, got_down, (), ()) = tokio::join!(
        async {
            let mut v = Vec::new();
            sr.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            let mut v = vec![0u8; d.len()];
            cr.read_exact(&mut v).await.unwrap();
            v
        },
        async {
            cw.write_all(&u).await.unwrap();
            cw.shutdown().await.unwrap();
        },
        async { sw.write_all(&d).await.unwrap() },
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "no delay configured");
    assert!(got_up == up, "client to server bytes changed");
    assert!(got_down == down, "server to client bytes changed");
    let st = proxy.stats();
    assert_eq!(st.connections, 1);
    assert_eq!(st.bytes_to_server, up.len() as u64);
    assert_eq!(st.bytes_to_client, down.len() as u64);
    assert_eq!(st.cuts, 0);
    c = cr.unsplit(cw);
    s = sr.unsplit(sw);
    drop((c, s));
}

/// The lifetimes of 30 connections opened at once under cuts in [50, 500] ms.
async fn lifetimes(seed: u64) -> Vec<Duration> {
    let proxy = Proxy::new(seed);
    proxy.set_cuts(50 * MS, 500 * MS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (mut c, mut s) = pair(&proxy);
        tasks.push(tokio::spawn(async move {
            until_eof(&mut c).await;
            let at = start.elapsed();
            // The server's end is closed too.
            until_eof(&mut s).await;
            assert_eq!(start.elapsed(), at, "the server's end closed later");
            at
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    let st = proxy.stats();
    assert_eq!((st.connections, st.cuts, st.live), (30, 30, 0));
    out
}

#[tokio::test(start_paused = true)]
async fn cuts_every_connection_at_a_seeded_random_time_within_the_bounds() {
    let a = lifetimes(7).await;
    assert!(
        a.iter().all(|d| *d >= 50 * MS && *d <= 500 * MS),
        "out of bounds: {a:?}"
    );
    let (min, max) = (a.iter().min().unwrap(), a.iter().max().unwrap());
    assert!(*max - *min > 200 * MS, "not spread out: {a:?}");
    assert_eq!(lifetimes(7).await, a, "the same seed gives the same cuts");
    assert_ne!(lifetimes(8).await, a, "another seed gives other cuts");
}

#[tokio::test(start_paused = true)]
async fn cuts_are_switched_at_runtime_and_traffic_flows_until_the_cut() {
    let proxy = Proxy::new(3);
    let (mut c, mut s) = pair(&proxy);
    // No cuts: alive after an hour.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    c.write_all(b"still here").await.unwrap();
    assert_eq!(read_n(&mut s, 10, MS).await, b"still here");
    // Switched on: drawn from now.
    let on = Instant::now();
    proxy.set_cuts(Duration::from_secs(2), Duration::from_secs(3));
    let (mut c2, _s2) = pair(&proxy);
    until_eof(&mut c).await;
    let cut_after = on.elapsed();
    assert!(
        (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&cut_after),
        "{cut_after:?}"
    );
    until_eof(&mut c2).await;
    assert!(on.elapsed() <= Duration::from_secs(3));
    // Switched off again: a new connection lives on.
    proxy.stop_cuts();
    let (mut c3, mut s3) = pair(&proxy);
    tokio::time::sleep(Duration::from_secs(60)).await;
    s3.write_all(b"ok").await.unwrap();
    assert_eq!(read_n(&mut c3, 2, MS).await, b"ok");
    assert_eq!(proxy.stats().cuts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_every_chunk_back_and_is_pipelined() {
    let proxy = Proxy::new(1);
    proxy.set_delay(200 * MS);
    let (mut c, mut s) = pair(&proxy);
    let t0 = Instant::now();
    c.write_all(b"a").await.unwrap();
    tokio::time::sleep(50 * MS).await;
    c.write_all(b"b").await.unwrap();
    assert_eq!(read_n(&mut s, 1, Duration::from_secs(1)).await, b"a");
    assert_eq!(t0.elapsed(), 200 * MS);
    assert_eq!(read_n(&mut s, 1, Duration::from_secs(1)).await, b"b");
    assert_eq!(t0.elapsed(), 250 * MS, "latency, not one chunk at a time");
    // The other way too.
    let t1 = Instant::now();
    s.write_all(b"back").await.unwrap();
    assert_eq!(read_n(&mut c, 4, Duration::from_secs(1)).await, b"back");
    assert_eq!(t1.elapsed(), 200 * MS);
    // Switched off: at once.
    proxy.set_delay(Duration::ZERO);
    let t2 = Instant::now();
    c.write_all(b"now").await.unwrap();
    assert_eq!(read_n(&mut s, 3, Duration::from_secs(1)).await, b"now");
    assert_eq!(t2.elapsed(), Duration::ZERO);
}

/// A stream that records the size of every write it takes.
struct Recording {
    inner: DuplexStream,
    writes: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.writes.lock().unwrap().push(n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn split_writes_every_byte_on_its_own_and_keeps_the_bytes() {
    let proxy = Proxy::new(1);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let (up_client, mut s) = tokio::io::duplex(64 * 1024);
    let mut c = proxy.wrap(Recording {
        inner: up_client,
        writes: writes.clone(),
    });
    let msg: Vec<u8> = (0..=255u8).collect();
    c.write_all(&msg).await.unwrap();
    assert_eq!(read_n(&mut s, 256, Duration::from_secs(1)).await, msg);
    let before = std::mem::take(&mut *writes.lock().unwrap());
    assert!(
        before.len() < 10,
        "unsplit, the chunk goes whole: {before:?}"
    );

    proxy.set_split(true);
    c.write_all(&msg).await.unwrap();
    assert_eq!(read_n(&mut s, 256, Duration::from_secs(1)).await, msg);
    let w = writes.lock().unwrap().clone();
    assert_eq!(w.len(), 256, "one write per byte");
    assert!(w.iter().all(|n| *n == 1), "{w:?}");
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_for_a_period_is_silent_without_closing_then_delivers_intact() {
    let proxy = Proxy::new(1);
    let (mut c, mut s) = pair(&proxy);
    assert_eq!(
        proxy.blackhole(Direction::Both, Some(Duration::from_secs(5))),
        1
    );
    let t0 = Instant::now();
    // The senders' writes succeed (the buffers take them); nothing arrives, nothing closes.
    c.write_all(b"ping").await.unwrap();
    s.write_all(b"pong").await.unwrap();
    assert!(silent_for(&mut s, Duration::from_millis(4900)).await);
    assert!(silent_for(&mut c, 50 * MS).await);
    // A connection opened meanwhile is not affected.
    let (mut c2, mut s2) = pair(&proxy);
    c2.write_all(b"new").await.unwrap();
    assert_eq!(read_n(&mut s2, 3, MS).await, b"new");
    // At the end of the period, everything flows, in order.
    assert_eq!(read_n(&mut s, 4, Duration::from_secs(1)).await, b"ping");
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    assert_eq!(read_n(&mut c, 4, MS).await, b"pong");
    assert_eq!(proxy.stats().blackholes, 2);
    assert_eq!(proxy.stats().cuts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_until_healed_holds_for_as_long_as_it_takes() {
    let proxy = Proxy::new(1);
    let (mut c, mut s) = pair(&proxy);
    proxy.blackhole(Direction::ToServer, None);
    c.write_all(b"hello").await.unwrap();
    assert!(silent_for(&mut s, Duration::from_secs(3600)).await);
    // Only that direction: the other flows.
    s.write_all(b"down").await.unwrap();
    assert_eq!(read_n(&mut c, 4, MS).await, b"down");
    proxy.heal();
    assert_eq!(read_n(&mut s, 5, MS).await, b"hello");
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_stalls_the_sender_as_a_silent_path_does() {
    let proxy = Proxy::new(1);
    let (mut c, mut s) = pair(&proxy);
    proxy.blackhole(Direction::ToServer, None);
    // The pipes' buffers and the proxy's chunks fill; then the sender waits.
    let big = vec![7u8; 4 * 1024 * 1024];
    assert!(
        timeout(Duration::from_secs(10), c.write_all(&big))
            .await
            .is_err(),
        "4 MiB went into a blackhole without the sender waiting"
    );
    assert!(silent_for(&mut s, MS).await);
    assert_eq!(proxy.stats().bytes_to_server, 0);
}

#[tokio::test(start_paused = true)]
async fn closing_one_way_ends_that_direction_only() {
    let proxy = Proxy::new(1);
    // Towards the server: it sees the end of the stream; the client notices nothing and still
    // receives.
    let (mut c, mut s) = pair(&proxy);
    assert_eq!(proxy.close_one_way(Direction::ToServer), 1);
    let mut b = [0u8; 8];
    assert_eq!(timeout(MS, s.read(&mut b)).await.unwrap().unwrap(), 0);
    for _ in 0..100 {
        c.write_all(&[0u8; 1024]).await.unwrap();
    }
    s.write_all(b"still").await.unwrap();
    assert_eq!(read_n(&mut c, 5, MS).await, b"still");

    // Towards the client, on a new connection (the first one is not touched again).
    let (mut c2, mut s2) = pair(&proxy);
    assert_eq!(proxy.close_one_way(Direction::ToClient), 2);
    assert_eq!(timeout(MS, c2.read(&mut b)).await.unwrap().unwrap(), 0);
    c2.write_all(b"up").await.unwrap();
    assert_eq!(read_n(&mut s2, 2, MS).await, b"up");
    s2.write_all(b"swallowed").await.unwrap();
    assert_eq!(proxy.stats().one_way_closes, 3);
    assert_eq!(proxy.stats().cuts, 0);
}

#[tokio::test(start_paused = true)]
async fn cut_all_closes_both_ends_of_every_open_connection() {
    let proxy = Proxy::new(1);
    let (mut c1, mut s1) = pair(&proxy);
    let (mut c2, mut s2) = pair(&proxy);
    assert_eq!(proxy.stats().live, 2);
    assert_eq!(proxy.cut_all(), 2);
    for s in [&mut c1, &mut s1, &mut c2, &mut s2] {
        timeout(MS, until_eof(s)).await.unwrap();
    }
    let (mut c3, mut s3) = pair(&proxy);
    c3.write_all(b"after").await.unwrap();
    assert_eq!(read_n(&mut s3, 5, MS).await, b"after");
    let st = proxy.stats();
    assert_eq!((st.connections, st.cuts, st.live), (3, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_proxy_closes_its_connections() {
    let proxy = Proxy::new(1);
    let (mut c, mut s) = pair(&proxy);
    let other = proxy.clone();
    drop(proxy);
    c.write_all(b"x").await.unwrap();
    assert_eq!(
        read_n(&mut s, 1, MS).await,
        b"x",
        "a clone keeps it running"
    );
    drop(other);
    timeout(MS, until_eof(&mut c)).await.unwrap();
    timeout(MS, until_eof(&mut s)).await.unwrap();
}

/// The TCP front, on real sockets and the real clock (no timing asserted; the timeouts are
/// hang guards).
#[tokio::test]
async fn the_tcp_front_relays_to_its_upstream_cuts_and_counts_a_dead_upstream() {
    const GUARD: Duration = Duration::from_secs(10);
    // An echo server upstream.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut t, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = t.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = Proxy::listen(upstream, 9).await.unwrap();
    let addr = proxy.addr().unwrap();
    assert!(addr.ip().is_loopback());
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    t.write_all(b"echo me").await.unwrap();
    let mut b = [0u8; 7];
    timeout(GUARD, t.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"echo me");
    assert_eq!(proxy.cut_all(), 1);
    let mut rest = Vec::new();
    let r = timeout(GUARD, t.read_to_end(&mut rest)).await.unwrap();
    assert!(r.is_err() || rest.is_empty(), "{r:?} {rest:?}");

    // An upstream that refuses: the client is closed at once, and it is counted.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = gone.local_addr().unwrap();
    drop(gone);
    let proxy2 = Proxy::listen(dead, 9).await.unwrap();
    let mut t2 = tokio::net::TcpStream::connect(proxy2.addr().unwrap())
        .await
        .unwrap();
    let mut rest = Vec::new();
    let r = timeout(GUARD, t2.read_to_end(&mut rest)).await.unwrap();
    assert!(r.is_err() || rest.is_empty());
    let st = proxy2.stats();
    assert_eq!((st.connections, st.upstream_failures), (0, 1));
}
