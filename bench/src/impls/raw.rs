//! The ceiling: one tokio `TcpStream` per connection, one task, packets copied from a
//! pre-encoded template (only the packet id and the message number change) into a large
//! buffer that is written with as few system calls as the socket allows, and acknowledgements
//! read in large chunks. It still does the QoS flows correctly: at most Receive Maximum
//! messages unacknowledged, a packet id reused only once its exchange ended, PUBREL for every
//! PUBREC, PUBACK/PUBREC/PUBCOMP for what it receives.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{BenchError, Publisher};
use crate::job::{now_ns, Job, Tracker};
use crate::wire::{self, PublishTemplate, WireError, FENCE};

/// Bytes gathered before a write; larger batches mean fewer system calls.
const BATCH: usize = 256 * 1024;
const READ_CHUNK: usize = 256 * 1024;

/// Connects and completes the handshake; the server's Receive Maximum and any bytes read
/// past the CONNACK.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    receive_maximum: Option<u16>,
) -> Result<(TcpStream, u16, BytesMut), BenchError> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&wire::connect(client_id, 60, receive_maximum))
        .await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some((h, body, total)) = wire::frame(&buf)? {
            if h != wire::CONNACK {
                return Err(WireError::Malformed("expected CONNACK").into());
            }
            let rm = wire::parse_connack(&buf[body..total])?;
            buf.advance(total);
            return Ok((s, rm, buf));
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(BenchError::Closed("before CONNACK"));
        }
    }
}

/// Connects a publisher.
pub async fn publisher(addr: SocketAddr, id: &str) -> Result<RawPublisher, BenchError> {
    let (stream, rm, rbuf) = connect(addr, id, None).await?;
    Ok(RawPublisher { stream, rm, rbuf })
}

/// A connected raw publisher.
#[derive(Debug)]
pub struct RawPublisher {
    stream: TcpStream,
    rm: u16,
    rbuf: BytesMut,
}

impl Publisher for RawPublisher {
    async fn run(&mut self, job: &Job) -> Result<(), BenchError> {
        let qos = job.qos;
        let tmpl = PublishTemplate::new(qos, job.size.max(wire::MIN_PAYLOAD));
        let fence = PublishTemplate::new(1, wire::MIN_PAYLOAD);
        let limit = self.rm.max(1) as usize;
        let mut in_flight = vec![false; 65_536];
        let mut count = 0usize;
        let mut next_id: u16 = 1;
        let mut i = 0u64;
        let (mut fence_sent, mut fence_acked) = (false, false);
        let mut out: Vec<u8> = Vec::with_capacity(BATCH + tmpl.bytes.len() * 2);
        let mut pos = 0usize;
        let start = tokio::time::Instant::now();
        let due = |i: u64| start + std::time::Duration::from_nanos(i * 1_000_000_000 / job.rate);
        loop {
            // Fill the batch with what may be sent now.
            let mut wait_until = None;
            while out.len() - pos < BATCH && !fence_sent {
                if i < job.n && job.rate > 0 && due(i) > tokio::time::Instant::now() {
                    wait_until = Some(due(i));
                    break;
                }
                let uses_id = i >= job.n || qos > 0;
                if uses_id && count >= limit {
                    break;
                }
                let id = if uses_id {
                    // Ids are freed in send order by the servers we meet, so the next one is
                    // normally free; if not, wait for acknowledgements.
                    if in_flight[next_id as usize] {
                        break;
                    }
                    let id = next_id;
                    in_flight[id as usize] = true;
                    count += 1;
                    next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                    id
                } else {
                    0
                };
                if i < job.n {
                    if job.drop_every > 0 && i % job.drop_every == job.drop_every - 1 {
                        // Test fault: the number is skipped, so the receiver must miss it.
                        if uses_id {
                            in_flight[id as usize] = false;
                            count -= 1;
                        }
                        i += 1;
                        continue;
                    }
                    let stamp = if job.rate > 0 { now_ns() } else { 0 };
                    tmpl.put(&mut out, id, i, stamp);
                    i += 1;
                } else {
                    fence.put(&mut out, id, FENCE, 0);
                    fence_sent = true;
                }
            }
            if fence_acked && count == 0 {
                return Ok(());
            }
            let interest = if pos < out.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let ready = match wait_until {
                Some(t) if pos == out.len() => {
                    tokio::select! {
                        r = self.stream.ready(interest) => r?,
                        _ = tokio::time::sleep_until(t) => continue,
                    }
                }
                _ => self.stream.ready(interest).await?,
            };
            if ready.is_readable() {
                self.rbuf.reserve(READ_CHUNK);
                match self.stream.try_read_buf(&mut self.rbuf) {
                    Ok(0) => return Err(BenchError::Closed("by the server")),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                while let Some((h, body, total)) = wire::frame(&self.rbuf)? {
                    let b = &self.rbuf[body..total];
                    match h {
                        wire::PUBACK | wire::PUBCOMP => {
                            let id = wire::ack_id(b)?;
                            if let Some(r) = b.get(2) {
                                if *r >= 0x80 {
                                    return Err(BenchError::Refused(*r));
                                }
                            }
                            if !std::mem::replace(&mut in_flight[id as usize], false) {
                                return Err(
                                    WireError::Malformed("ack for an id not in flight").into()
                                );
                            }
                            count -= 1;
                            if fence_sent && count == 0 && i >= job.n {
                                fence_acked = true;
                            }
                        }
                        wire::PUBREC => {
                            let id = wire::ack_id(b)?;
                            if !in_flight[id as usize] {
                                return Err(
                                    WireError::Malformed("PUBREC for an id not in flight").into()
                                );
                            }
                            wire::put_ack(&mut out, wire::PUBREL, id);
                        }
                        wire::PINGRESP => {}
                        _ => return Err(WireError::Malformed("unexpected packet").into()),
                    }
                    self.rbuf.advance(total);
                }
            }
            if ready.is_writable() && pos < out.len() {
                match self.stream.try_write(&out[pos..]) {
                    Ok(k) => {
                        pos += k;
                        if pos == out.len() {
                            out.clear();
                            pos = 0;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    async fn close(mut self) -> Result<(), BenchError> {
        self.stream.write_all(&[0xE0, 0]).await?;
        Ok(())
    }
}

/// A subscriber to [`wire::TOPIC`] at QoS 2 that records what it receives; returns once the
/// SUBACK arrived, with the task that keeps receiving.
pub async fn subscriber(
    addr: SocketAddr,
    tracker: Arc<Tracker>,
) -> Result<tokio::task::JoinHandle<Result<(), BenchError>>, BenchError> {
    let (mut s, _, mut buf) = connect(addr, "raw-sub", Some(u16::MAX)).await?;
    s.write_all(&wire::subscribe(1, wire::TOPIC, 2)).await?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut out = Vec::with_capacity(1 << 16);
        let mut headers = Vec::with_capacity(1 << 14);
        loop {
            while let Some((h, body, total)) = wire::frame(&buf)? {
                let b = &buf[body..total];
                match h >> 4 {
                    9 => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    3 => {
                        let p = wire::parse_publish(h, b)?;
                        headers.push(wire::payload_header(p.payload));
                        match p.qos {
                            1 => wire::put_ack(&mut out, wire::PUBACK, p.packet_id),
                            2 => wire::put_ack(&mut out, wire::PUBREC, p.packet_id),
                            _ => {}
                        }
                    }
                    6 => wire::put_ack(&mut out, wire::PUBCOMP, wire::ack_id(b)?),
                    13 => {}
                    _ => return Err(WireError::Malformed("unexpected packet").into()),
                }
                buf.advance(total);
            }
            if !headers.is_empty() {
                tracker.record_all(headers.drain(..));
            }
            if !out.is_empty() {
                s.write_all(&out).await?;
                out.clear();
            }
            buf.reserve(READ_CHUNK);
            if s.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    });
    rx.await.map_err(|_| BenchError::Closed("before SUBACK"))?;
    Ok(task)
}

/// Connects `n` clients, `batch` at a time; returns them (held open, idle).
pub async fn connect_many(
    addr: SocketAddr,
    n: usize,
    batch: usize,
) -> Result<Vec<TcpStream>, BenchError> {
    let mut all = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let mut set = tokio::task::JoinSet::new();
        for k in start..(start + batch).min(n) {
            set.spawn(async move { connect(addr, &format!("raw-c{k}"), None).await });
        }
        while let Some(r) = set.join_next().await {
            let (s, _, _) = r.map_err(|_| BenchError::Closed("connect task"))??;
            all.push(s);
        }
    }
    Ok(all)
}
