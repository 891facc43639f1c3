//! Memory stays bounded in bytes whatever the server does: a server that never reads cannot
//! grow what waits to be written, an application that does not take its messages cannot make
//! the connection queue without limit (without deadlocking a handler that publishes), and
//! `disconnect` returns even on a stuck socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use paho::packets::{ConnAck, Packet, PubAck, Publish, QoS};
use paho::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `count` PUBRELs for packet ids nobody sent (each wants a PUBCOMP 0x92 back), in 4 KiB chunks.
fn pubrel_flood(count: u32) -> impl Iterator<Item = Vec<u8>> {
    let mut i = 0u32;
    std::iter::from_fn(move || {
        if i >= count {
            return None;
        }
        let mut chunk = Vec::with_capacity(4096);
        while chunk.len() < 4096 && i < count {
            let id = (i % 65_535 + 1) as u16;
            chunk.extend_from_slice(&[0x62, 0x02, (id >> 8) as u8, id as u8]);
            i += 1;
        }
        Some(chunk)
    })
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_reads_cannot_grow_the_clients_write_buffer() {
    within(LIMIT, async {
        let (io, mut peer) = pipe_with_capacity(64 * 1024);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let opts = options().keep_alive(Duration::ZERO).build().unwrap();
        let (_client, _incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let mut peer = server.await.unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&written);
        const COUNT: u32 = 1_000_000;
        let flood = tokio::spawn(async move {
            for chunk in pubrel_flood(COUNT) {
                peer.send_raw(&chunk).await;
                w.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        });
        // Virtual time: it passes once every task is blocked.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let n = written.load(Ordering::Relaxed);
        eprintln!(
            "a server that never reads: the client took {n} bytes of a 4,000,000-byte PUBREL flood"
        );
        // Each 4-byte PUBREL read costs 5 bytes of PUBCOMP to write. The client takes in only
        // what answers about its 1 MiB high-water mark (plus what the two pipes and one read
        // buffer hold), not the 4 MB the server offers, and the flood stalls.
        assert!(!flood.is_finished(), "the client read the whole flood");
        assert!(
            n < 3 << 19,
            "the client took {n} bytes of PUBRELs from a server that never reads"
        );
        flood.abort();
    })
    .await
}

/// A QoS 1 PUBLISH with a payload of `len` bytes, encoded.
fn qos1(id: u16, len: usize) -> Vec<u8> {
    let p = Publish {
        topic: "big".into(),
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid(id)),
        payload: Bytes::from(vec![b'x'; len]),
        ..Default::default()
    };
    let mut b = BytesMut::new();
    Packet::Publish(p).encode(&mut b).unwrap();
    b.to_vec()
}

const BOUND: usize = 1 << 20;
const BIG: usize = 64 * 1024;

#[tokio::test(start_paused = true)]
async fn an_application_that_does_not_take_messages_holds_the_server_back_within_the_byte_bound() {
    within(LIMIT, async {
        let (io, mut peer) = pipe_with_capacity(64 * 1024);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let opts = options().max_queued_bytes(BOUND).build().unwrap();
        let (_client, incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let mut peer = server.await.unwrap();
        let flood = tokio::spawn(async move {
            // 200 x 64 KiB = 12.8 MB, far past the bound (and within Receive Maximum 1024).
            for id in 1..=200 {
                peer.send_raw(&qos1(id, BIG)).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        let queued = incoming.queued_bytes();
        eprintln!("an application that takes nothing: {queued} bytes queued (bound {BOUND}) of 12.8 MB offered");
        assert!(!flood.is_finished(), "the client read every message");
        // Reading stops once the bound is passed; what one read had already brought in is
        // still handled.
        assert!(
            queued <= BOUND + 3 * BIG,
            "{queued} bytes queued for the application (bound {BOUND})"
        );
        assert!(queued > BOUND, "{queued}: the bound was not reached");
        // Keepalive (60 s) does not declare the link dead while reading is paused by us.
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!_client.is_closed());
        flood.abort();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_publishes_and_awaits_does_not_deadlock_behind_the_byte_bound() {
    within(LIMIT, async {
        let (io, server_io) = tokio::io::duplex(64 * 1024);
        let (mut srd, mut swr) = tokio::io::split(server_io);
        let opts = options().max_queued_bytes(BOUND).build().unwrap();
        // The server: CONNACK, then 100 big messages, then the PUBACK for the client's
        // publish, which arrives behind them all.
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut packets = Vec::new();
            loop {
                while let Some(p) = paho::packets::decode(&mut buf, u32::MAX).unwrap() {
                    packets.push(p);
                }
                if srd.read_buf(&mut buf).await.unwrap() == 0 {
                    return packets;
                }
            }
        });
        let mut connack = BytesMut::new();
        Packet::ConnAck(Box::default())
            .encode(&mut connack)
            .unwrap();
        swr.write_all(&connack).await.unwrap();
        let (client, mut incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let writer = tokio::spawn(async move {
            for id in 1..=100 {
                swr.write_all(&qos1(id, BIG)).await.unwrap();
            }
            let mut ack = BytesMut::new();
            Packet::PubAck(PubAck::new(pid(1)))
                .encode(&mut ack)
                .unwrap();
            swr.write_all(&ack).await.unwrap();
            swr
        });
        // The application takes one message, then publishes and awaits the outcome before it
        // takes the next: the PUBACK sits behind 6 MB of unread messages.
        incoming.recv().await.unwrap();
        let outcome = client
            .publish(publish("reply", QoS::AtLeastOnce, "r"))
            .await
            .unwrap();
        assert!(outcome.is_success());
        let mut taken = 1;
        while taken < 100 {
            incoming.recv().await.unwrap();
            taken += 1;
        }
        let _swr = writer.await.unwrap();
        client.disconnect_normally().await.unwrap();
        let packets = reader.await.unwrap();
        assert!(packets.iter().any(|p| matches!(p, Packet::Publish(_))));
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn qos0_messages_past_the_byte_bound_pause_reading_and_none_is_lost() {
    within(LIMIT, async {
        let (io, mut peer) = pipe_with_capacity(64 * 1024);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let opts = options().max_queued_bytes(BOUND).build().unwrap();
        let (_client, mut incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let mut peer = server.await.unwrap();
        let flood = tokio::spawn(async move {
            let payload = "y".repeat(BIG);
            for _ in 0..40 {
                peer.send(publish("q0", QoS::AtMostOnce, &payload)).await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!flood.is_finished());
        assert!(incoming.queued_bytes() <= BOUND + 3 * BIG);
        // Taking them lets the rest in: nothing was dropped.
        for _ in 0..40 {
            incoming.recv().await.unwrap();
        }
        flood.await.unwrap();
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn while_awaiting_an_ack_qos0_messages_past_the_byte_bound_are_dropped() {
    within(LIMIT, async {
        let (io, mut peer) = pipe_with_capacity(4 << 20);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer
        });
        let opts = options().max_queued_bytes(BOUND).build().unwrap();
        let (client, mut incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let mut peer = server.await.unwrap();
        // Never acknowledged: reading must go on (the PUBACK could be next), so QoS 0 beyond
        // the bound cannot wait and is dropped.
        let _pending = client.start_publish(publish("t", QoS::AtLeastOnce, "p"));
        peer.expect_publish().await;
        let payload = "y".repeat(BIG);
        for _ in 0..40 {
            peer.send(publish("q0", QoS::AtMostOnce, &payload)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(incoming.queued_bytes() <= BOUND + BIG + 64);
        let mut n = 0;
        while incoming.try_recv().is_some() {
            n += 1;
        }
        assert!((16..40).contains(&n), "{n} of 40 QoS 0 messages kept");
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn disconnect_returns_on_a_stuck_socket_without_keepalive() {
    within(LIMIT, async {
        let (io, mut peer) = pipe_with_capacity(64 * 1024);
        let server = tokio::spawn(async move {
            peer.accept(ConnAck::default()).await;
            peer // and never reads again
        });
        let opts = options().keep_alive(Duration::ZERO).build().unwrap();
        let (client, _incoming) = Client::connect(io, opts, memory_session(0)).await.unwrap();
        let _peer = server.await.unwrap();
        // Fill the write buffer past its high-water mark: the connection stops taking commands.
        let payload = "z".repeat(16 * 1024);
        let pending: Vec<_> = (0..200)
            .map(|_| client.start_publish(publish("t", QoS::AtMostOnce, &payload)))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = tokio::time::timeout(Duration::from_secs(60), client.disconnect_normally()).await;
        assert!(r.is_ok(), "disconnect hung behind a stuck socket");
        assert!(client.is_closed());
        drop(pending);
    })
    .await
}
