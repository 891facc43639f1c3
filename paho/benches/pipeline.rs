//! The client-limited publish path, measured: `paho::Client` over loopback TCP against an
//! in-process sink that acknowledges at once, in batches, with Receive Maximum 100.
//!
//! ```text
//! cargo bench -p paho --bench pipeline                 # QoS 0, 1 and 2, 16 B, 200,000 each
//! cargo bench -p paho --bench pipeline -- -n 500000 -q 1 -p 1024 -w 100
//! ```
//!
//! For each QoS it prints msg/s, the CPU time of the client's thread per message
//! (`getrusage(RUSAGE_THREAD)`: the client runs on a current-thread runtime, the sink on a
//! thread of its own) and the heap allocations per message made on the client's thread (a
//! counting global allocator). The publisher keeps `-w` `start_publish` handles in flight
//! and awaits the oldest when the window is full, as the crate docs show.
//!
//! The sink allocates nothing per message (its buffers are reused), and what it does is not
//! counted anyway: only the client's thread is measured.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paho::packets::{Publish, QoS};
use paho::session::SessionConfig;
use paho::{Client, ConnectOptions, SessionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ----- counting allocator -----------------------------------------------------------------

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether allocations on this thread are counted (the client's thread only).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

thread_local! {
    /// Set while a sampled allocation's backtrace is taken (which allocates itself).
    static SAMPLING: Cell<bool> = const { Cell::new(false) };
}

/// Every this many counted allocations one backtrace is kept (`PAHO_BENCH_ALLOC_SITES=N`);
/// 0 keeps none.
static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
static SITES: std::sync::Mutex<Option<std::collections::HashMap<String, u64>>> =
    std::sync::Mutex::new(None);

fn count() {
    // `try_with`: an allocation made while the thread-local is being torn down is not counted.
    if !COUNTED.try_with(Cell::get).unwrap_or(false) || SAMPLING.with(Cell::get) {
        return;
    }
    let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
    let every = SAMPLE_EVERY.load(Ordering::Relaxed);
    if every != 0 && n.is_multiple_of(every) {
        SAMPLING.with(|s| s.set(true));
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        // The frames of interest: the first few below the allocator.
        let site: Vec<&str> = bt
            .lines()
            .filter(|l| !l.trim_start().starts_with("at "))
            .filter(|l| {
                ![
                    "backtrace",
                    "alloc::",
                    "pipeline::count",
                    "Counting",
                    "__rust",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .take(7)
            .collect();
        let site = site.join("\n");
        let mut g = SITES.lock().unwrap_or_else(|p| p.into_inner());
        *g.get_or_insert_with(Default::default)
            .entry(site)
            .or_default() += 1;
        SAMPLING.with(|s| s.set(false));
    }
}

fn print_sites() {
    let mut g = SITES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(map) = g.take() else { return };
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    for (site, n) in v.into_iter().take(12) {
        println!("--- {n} samples\n{site}");
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ----- the sink ---------------------------------------------------------------------------

/// CONNACK: success, Session Present 0, Receive Maximum 100.
const CONNACK: [u8; 8] = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x64];

/// Reads whole frames and answers each batch read with one write: PUBACK for QoS 1, PUBREC
/// for QoS 2, PUBCOMP for PUBREL, PINGRESP for PINGREQ, CONNACK for CONNECT.
async fn sink(mut s: TcpStream) {
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0;
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match s.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        len += n;
        let mut at = 0;
        while let Some((hdr, body)) = frame(&buf[at..len]) {
            let b0 = buf[at];
            let p = &buf[at + hdr..at + hdr + body];
            match b0 >> 4 {
                1 => out.extend_from_slice(&CONNACK),
                3 => {
                    let qos = (b0 >> 1) & 3;
                    let tl = usize::from(u16::from_be_bytes([p[0], p[1]]));
                    let id = [p[2 + tl], p[3 + tl]];
                    match qos {
                        1 => out.extend_from_slice(&[0x40, 2, id[0], id[1]]),
                        2 => out.extend_from_slice(&[0x50, 2, id[0], id[1]]),
                        _ => {}
                    }
                }
                6 => out.extend_from_slice(&[0x70, 2, p[0], p[1]]),
                12 => out.extend_from_slice(&[0xD0, 0]),
                14 => return,
                _ => {}
            }
            at += hdr + body;
        }
        buf.copy_within(at..len, 0);
        len -= at;
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// (fixed header length, body length) of the complete frame at the start of `b`.
fn frame(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    let mut shift = 0;
    for i in 1..5 {
        let byte = *b.get(i)?;
        len |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return (b.len() >= 1 + i + len).then_some((1 + i, len));
        }
    }
    None
}

fn start_sink() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(sink(s));
            }
        });
    });
    rx.recv().unwrap()
}

// ----- the client -------------------------------------------------------------------------

struct Args {
    n: u64,
    qos: Vec<QoS>,
    payload: usize,
    window: usize,
}

fn args() -> Args {
    let mut a = Args {
        n: 200_000,
        qos: vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce],
        payload: 16,
        window: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "-n" => a.n = val().parse().expect("-n N"),
            "-q" => {
                a.qos = vec![match val().as_str() {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                }]
            }
            "-p" => a.payload = val().parse().expect("-p BYTES"),
            "-w" => a.window = val().parse().expect("-w N"),
            // cargo bench passes --bench; anything else is ignored too.
            _ => {}
        }
    }
    a
}

/// The message is built from a topic and payload made once: cloning them costs a reference
/// count, so every allocation counted is the client's.
async fn publish_n(client: &Client, msg: &Publish, n: u64, window: usize) {
    let mut handles = VecDeque::with_capacity(window);
    for _ in 0..n {
        if handles.len() == window {
            let h: paho::PublishHandle = handles.pop_front().unwrap();
            assert!(h.await.expect("publish failed").is_success());
        }
        handles.push_back(client.start_publish(msg.clone()));
    }
    for h in handles {
        assert!(h.await.expect("publish failed").is_success());
    }
}

fn main() {
    let a = args();
    if let Some(n) = std::env::var("PAHO_BENCH_ALLOC_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        SAMPLE_EVERY.store(n, Ordering::Relaxed);
    }
    let addr = start_sink();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = Bytes::from(vec![0x5a; a.payload]);
    let topic: paho::packets::MqttString = "bench/pipeline".into();
    println!(
        "paho pipeline: loopback TCP sink, Receive Maximum 100, window {}, payload {} B, {} messages",
        a.window, a.payload, a.n
    );
    println!("qos  msg/s        cpu µs/msg  allocs/msg");
    for &qos in &a.qos {
        let msg = Publish {
            qos,
            topic: topic.clone(),
            payload: payload.clone(),
            ..Default::default()
        };
        rt.block_on(async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let opts = ConnectOptions::builder()
                .client_id("bench")
                .keep_alive(Duration::ZERO)
                .build()
                .unwrap();
            let (client, _incoming) =
                Client::connect(tcp, opts, SessionHandle::in_memory(SessionConfig::new()))
                    .await
                    .unwrap();
            // Warm-up: buffers and queues reach their working size.
            publish_n(&client, &msg, a.n / 10 + 1000, a.window).await;
            COUNTED.with(|c| c.set(true));
            let allocs0 = ALLOCS.load(Ordering::Relaxed);
            let cpu0 = thread_cpu();
            let t0 = Instant::now();
            publish_n(&client, &msg, a.n, a.window).await;
            let wall = t0.elapsed();
            let cpu = thread_cpu() - cpu0;
            let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
            COUNTED.with(|c| c.set(false));
            println!(
                "{}    {:<12.0} {:<11.2} {:.2}",
                qos as u8,
                a.n as f64 / wall.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / a.n as f64,
                allocs as f64 / a.n as f64
            );
            client.disconnect_normally().await.unwrap();
        });
        print_sites();
    }
}
