//! A minimal MQTT v5 server for the client-limited scenario: it accepts any CONNECT with a
//! CONNACK carrying the Receive Maximum it was given, acknowledges at once and in batches
//! (PUBACK; PUBREC, then PUBCOMP on PUBREL; one write per chunk read), answers PINGREQ, and
//! counts the message numbers it receives (lost, duplicated) in a [`Tracker`].
//!
//! It runs in the parent process on its own runtime threads, so its CPU time is not charged
//! to the child being measured.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::job::Tracker;
use crate::wire::{self, WireError};

/// A running sink; dropping it stops it.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    tracker: Arc<Tracker>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Listens on `127.0.0.1:0` for a client that will send messages `0..n` at `qos`.
    pub async fn start(receive_maximum: u16, n: u64, qos: u8) -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tracker = Arc::new(Tracker::new(n, qos, false));
        let t = Arc::clone(&tracker);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let t = Arc::clone(&t);
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, receive_maximum, &t).await {
                        eprintln!("sink: connection ended: {e}");
                    }
                });
            }
        });
        Ok(Sink {
            addr,
            tracker,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it counted.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, rm: u16, tracker: &Tracker) -> Result<(), SinkError> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(1 << 18);
    let mut out = Vec::with_capacity(1 << 16);
    let mut headers = Vec::with_capacity(1 << 14);
    loop {
        if buf.capacity() - buf.len() < 1 << 16 {
            buf.reserve(1 << 18);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut closed = false;
        while let Some((h, body, total)) = wire::frame(&buf)? {
            let b = &buf[body..total];
            match h >> 4 {
                1 => out.extend_from_slice(&wire::connack(rm)),
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
                12 => out.extend_from_slice(&[wire::PINGRESP, 0]),
                14 => closed = true,
                _ => return Err(WireError::Malformed("unexpected packet at the sink").into()),
            }
            buf.advance(total);
            if closed {
                break;
            }
        }
        if !headers.is_empty() {
            tracker.record_all(headers.drain(..));
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closed {
            return Ok(());
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SinkError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
}
