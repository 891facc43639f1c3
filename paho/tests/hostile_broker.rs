//! Scenario 5 of the reliability campaign: a hostile broker. One table, one case per way a
//! server can misbehave (malformed packets of every type, client-only packets, oversize
//! lengths, acknowledgements for ids nobody sent, a second CONNACK, topic aliases never set,
//! DISCONNECTs only a client may send, a flood of packets that want answers while the server
//! never reads). For every case:
//!
//! * the client reacts as MQTT v5 says (closes with the right reason code, or, where the
//!   specification gives a normal answer, gives it and carries on);
//! * nothing panics (a panic hook counts panics on any thread);
//! * nothing allocates what the attacker claims (a counting allocator records the peak of
//!   this thread's live heap while the case runs; the client's connection task runs on it);
//! * the session survives for the next connection: a QoS 1 publish (at the PUBLISH stage)
//!   and a QoS 2 publish (at the PUBREL stage) started before the hostile packet are resent
//!   on a new connection to a well-behaved server on the same `SessionHandle`, and their
//!   handles, created before the fault, resolve with success.
//!
//! Everything runs over in-memory pipes on tokio's paused clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use paho::packets::{
    ConnAck, Connect, Disconnect, DisconnectReasonCode, Packet, PubAck, PubComp, PubCompReasonCode,
    PubRec, PubRel, Publish, QoS, Subscribe, Subscription, SubscriptionOptions, Unsubscribe,
};
use paho::session::MemoryStore;
use paho::{Client, Error, PublishHandle, SessionHandle};
use tokio::time::Instant;

// ----- measuring: heap of this thread, and panics anywhere --------------------------------

/// Counts the live heap bytes allocated by each thread and that thread's peak since the last
/// reset (frees on another thread are credited there; the cases run on one thread).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// The workspace denies unsafe code; a global allocator cannot be written without it, and it
// only forwards to `System` and counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Starts a measurement: the peak is reset to the current live size, which is returned.
fn heap_mark() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// How far the heap rose above `mark` since [`heap_mark`].
fn heap_rise(mark: isize) -> usize {
    (PEAK.with(Cell::get) - mark).max(0) as usize
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

// ----- the cases ---------------------------------------------------------------------------

/// What the client must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Send DISCONNECT with this reason code, close, and report the same code.
    Close(u8),
    /// Answer with this packet and keep the connection.
    Answer(&'static str),
    /// Ignore the packet and keep the connection.
    Ignore,
    /// Close without writing (the link is stuck), reporting a keepalive timeout within
    /// 1.5 keepalives of the last thing read.
    KeepAliveTimeout,
}

#[derive(Debug, Clone)]
enum Inject {
    /// These bytes, after the in-flight exchanges are set up.
    Bytes(Vec<u8>),
    /// These bytes, then silence: a frame that never completes.
    BytesThenSilence(Vec<u8>),
    /// PUBRELs for ids nobody sent (each wants a PUBCOMP) into a pipe the server never reads.
    PubRelFlood,
}

struct Case {
    name: &'static str,
    inject: Inject,
    /// Our Maximum Packet Size, if the case sets one.
    max_packet_size: Option<u32>,
    expect: Expect,
}

const KEEP_ALIVE: Duration = Duration::from_secs(30);

fn encoded(p: impl Into<Packet>) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.into().encode(&mut b).unwrap();
    b.to_vec()
}

/// The ids the in-flight exchanges get on a fresh session: the QoS 1 one first.
const QOS1_ID: u16 = 1;
const QOS2_ID: u16 = 2;

fn cases() -> Vec<Case> {
    use Expect::*;
    use Inject::*;
    let close = |name, bytes: Vec<u8>, code| Case {
        name,
        inject: Bytes(bytes),
        max_packet_size: None,
        expect: Close(code),
    };
    let mut alias_unknown = server_publish("", QoS::AtMostOnce, 0, "x");
    alias_unknown.properties.topic_alias = Some(3);
    let mut alias_high = server_publish("t", QoS::AtMostOnce, 0, "x");
    alias_high.properties.topic_alias = Some(paho::DEFAULT_TOPIC_ALIAS_MAXIMUM + 1);
    let mut disconnect_with_expiry = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
    disconnect_with_expiry.properties.session_expiry_interval = Some(0);
    let mut big_ack = PubAck::new(pid(QOS1_ID));
    big_ack.properties.reason_string = Some("r".repeat(2000).into());
    let mut v = vec![
        // --- malformed packets of every type a server may send ---
        close("CONNACK truncated", vec![0x20, 0x01, 0x00], 0x81),
        close("CONNACK bad flags", vec![0x21, 0x02, 0x00, 0x00], 0x81),
        close(
            "CONNACK reserved acknowledge flags",
            vec![0x20, 0x03, 0x02, 0x00, 0x00],
            0x81,
        ),
        close(
            "PUBLISH QoS 3",
            vec![0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            0x81,
        ),
        close(
            "PUBLISH topic runs past the packet",
            vec![0x30, 0x03, 0x00, 0x09, b'a'],
            0x81,
        ),
        close(
            "PUBLISH topic not UTF-8",
            vec![0x30, 0x04, 0x00, 0x01, 0xFF, 0x00],
            0x81,
        ),
        close(
            "PUBLISH unknown property",
            vec![0x30, 0x06, 0x00, 0x01, b'a', 0x01, 0x7F, 0x00],
            0x81,
        ),
        close(
            "PUBLISH topic with a wildcard",
            vec![0x30, 0x04, 0x00, 0x01, b'#', 0x00],
            0x82,
        ),
        close(
            "PUBLISH QoS 1 with packet id 0",
            vec![0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            0x82,
        ),
        close("PUBACK truncated", vec![0x40, 0x01, 0x00], 0x81),
        close(
            "PUBACK bad reason code",
            vec![0x40, 0x03, 0x00, QOS1_ID as u8, 0x05],
            0x81,
        ),
        close("PUBACK packet id 0", vec![0x40, 0x02, 0x00, 0x00], 0x82),
        close("PUBREC bad flags", vec![0x51, 0x02, 0x00, 0x09], 0x81),
        close(
            "PUBREC bad reason code",
            vec![0x50, 0x03, 0x00, 0x09, 0x05],
            0x81,
        ),
        close("PUBREL bad flags", vec![0x60, 0x02, 0x00, 0x09], 0x81),
        close(
            "PUBREL bad reason code",
            vec![0x62, 0x03, 0x00, 0x09, 0x05],
            0x81,
        ),
        close("PUBCOMP truncated", vec![0x70, 0x01, 0x00], 0x81),
        close(
            "PUBCOMP bad reason code",
            vec![0x70, 0x03, 0x00, QOS2_ID as u8, 0x10],
            0x81,
        ),
        close("SUBACK truncated", vec![0x90, 0x01, 0x00], 0x81),
        close(
            "SUBACK without reason codes",
            vec![0x90, 0x03, 0x00, 0x01, 0x00],
            0x82,
        ),
        close(
            "UNSUBACK bad reason code",
            vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x05],
            0x81,
        ),
        close("PINGRESP with a body", vec![0xD0, 0x01, 0x00], 0x81),
        close("PINGRESP bad flags", vec![0xD1, 0x00], 0x81),
        close("DISCONNECT bad reason code", vec![0xE0, 0x01, 0x01], 0x81),
        close(
            "DISCONNECT properties run past the packet",
            vec![0xE0, 0x02, 0x00, 0x05],
            0x81,
        ),
        close("AUTH bad reason code", vec![0xF0, 0x01, 0x05], 0x81),
        close(
            "AUTH without enhanced authentication",
            vec![0xF0, 0x01, 0x18],
            0x82,
        ),
        close("reserved packet type 0", vec![0x00, 0x00], 0x81),
        close(
            "remaining length over four bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            0x81,
        ),
        close("remaining length not minimal", vec![0xD0, 0x80, 0x00], 0x81),
        // --- packets only a client may send ---
        close("CONNECT from the server", encoded(Connect::default()), 0x82),
        close(
            "SUBSCRIBE from the server",
            encoded(Subscribe {
                packet_id: pid(1),
                properties: Default::default(),
                subscriptions: vec![Subscription::new("a", SubscriptionOptions::default())],
            }),
            0x82,
        ),
        close(
            "SUBSCRIBE with bad flags from the server",
            vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            0x81,
        ),
        close(
            "UNSUBSCRIBE from the server",
            encoded(Unsubscribe {
                packet_id: pid(1),
                properties: Default::default(),
                filters: vec!["a".into()],
            }),
            0x82,
        ),
        close("PINGREQ from the server", vec![0xC0, 0x00], 0x82),
        // --- the exchange broken ---
        close("a second CONNACK", encoded(ConnAck::default()), 0x82),
        close(
            "PUBACK for the QoS 2 exchange",
            encoded(PubAck::new(pid(QOS2_ID))),
            0x82,
        ),
        close(
            "PUBREC for the QoS 1 exchange",
            encoded(PubRec::new(pid(QOS1_ID))),
            0x82,
        ),
        close("a topic alias never set", encoded(alias_unknown), 0x82),
        close("a topic alias above our maximum", encoded(alias_high), 0x94),
        close(
            "PUBLISH topic alias 0",
            vec![0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00],
            0x82,
        ),
        // MQTT v5 §3.14.2.1: 0x04 (Disconnect with Will Message) is for a client only;
        // §3.14.2.2.2 [MQTT-3.14.2-2]: a server must not send a Session Expiry Interval.
        close(
            "server DISCONNECT 0x04",
            encoded(Disconnect::new(
                DisconnectReasonCode::DisconnectWithWillMessage,
            )),
            0x82,
        ),
        close(
            "server DISCONNECT with a Session Expiry Interval",
            encoded(disconnect_with_expiry),
            0x82,
        ),
        // --- acknowledgements for ids nobody sent: the specification's answers ---
        Case {
            // §4.3.3, PUBCOMP reason 0x92: "Packet Identifier not found".
            name: "PUBREL for an unknown id",
            inject: Bytes(encoded(PubRel::new(pid(77)))),
            max_packet_size: None,
            expect: Answer("PUBCOMP 0x92"),
        },
        Case {
            // No rule makes it an error, and nothing is waiting for it: a late or repeated
            // acknowledgement is ignored (logged), as for PUBCOMP.
            name: "PUBACK for an unknown id",
            inject: Bytes(encoded(PubAck::new(pid(77)))),
            max_packet_size: None,
            expect: Ignore,
        },
        Case {
            name: "PUBCOMP for an unknown id",
            inject: Bytes(encoded(PubComp::new(pid(77)))),
            max_packet_size: None,
            expect: Ignore,
        },
        // --- oversize ---
        Case {
            name: "whole packet over our Maximum Packet Size",
            inject: Bytes(encoded(big_ack)),
            max_packet_size: Some(1024),
            expect: Close(0x95),
        },
        Case {
            // 268,435,455 bytes, the largest length MQTT can express: refused from the five
            // header bytes, before any body arrives.
            name: "256 MiB claimed, over our maximum",
            inject: BytesThenSilence(vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01]),
            max_packet_size: Some(1 << 20),
            expect: Close(0x95),
        },
        Case {
            // No maximum of ours (the default): the claim is legal, so the client waits for
            // the body, but reserves room only as bytes arrive (at most 64 KiB ahead); the
            // server then goes silent and the keepalive ends it.
            name: "256 MiB claimed, no maximum, 4 KiB sent",
            inject: BytesThenSilence({
                let mut v = vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b't'];
                v.resize(4096, b'x');
                v
            }),
            max_packet_size: None,
            expect: KeepAliveTimeout,
        },
        // --- a flood that wants answers while the server never reads ---
        Case {
            name: "PUBREL flood, server never reads",
            inject: PubRelFlood,
            max_packet_size: None,
            expect: KeepAliveTimeout,
        },
    ];
    // Sanity: names are unique so the printed table is unambiguous.
    v.sort_by_key(|c| c.name);
    v.dedup_by_key(|c| c.name);
    v
}

fn disconnect_reason(packets: &[Packet]) -> Option<u8> {
    packets.iter().rev().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code.as_u8()),
        _ => None,
    })
}

fn message(topic: &str, qos: QoS) -> Publish {
    publish(topic, qos, topic)
}

struct InFlight {
    qos1: PublishHandle,
    qos2: PublishHandle,
}

/// Connects on `session` to a scripted peer, starts a QoS 1 publish (left at the PUBLISH
/// stage) and a QoS 2 publish (taken to the PUBREL stage).
async fn connect_with_exchanges_in_flight(
    session: &SessionHandle<MemoryStore>,
    max_packet_size: Option<u32>,
    capacity: usize,
) -> (Client, paho::Incoming, Peer, InFlight) {
    let mut b = options().clean_start(false).keep_alive(KEEP_ALIVE);
    if let Some(m) = max_packet_size {
        b = b.maximum_packet_size(m);
    }
    let (io, mut peer) = pipe_with_capacity(capacity);
    let server = tokio::spawn(async move {
        peer.accept(ConnAck::default()).await;
        peer
    });
    let (client, incoming) = Client::connect(io, b.build().unwrap(), session.clone())
        .await
        .unwrap();
    let mut peer = server.await.unwrap();
    let qos1 = client.start_publish(message("inflight/1", QoS::AtLeastOnce));
    let qos2 = client.start_publish(message("inflight/2", QoS::ExactlyOnce));
    let p1 = peer.expect_publish().await;
    let p2 = peer.expect_publish().await;
    assert_eq!(p1.packet_id, Some(pid(QOS1_ID)));
    assert_eq!(p2.packet_id, Some(pid(QOS2_ID)));
    peer.send(PubRec::new(pid(QOS2_ID))).await;
    assert_eq!(
        peer.expect().await,
        Packet::PubRel(PubRel::new(pid(QOS2_ID)))
    );
    (client, incoming, peer, InFlight { qos1, qos2 })
}

/// The next connection, to a server that kept the session: the QoS 1 PUBLISH comes again
/// with DUP, the PUBREL as a PUBREL, and both handles from before the fault resolve.
async fn resumes_on_a_good_server(session: &SessionHandle<MemoryStore>, inflight: InFlight) {
    let opts = options()
        .clean_start(false)
        .keep_alive(KEEP_ALIVE)
        .build()
        .unwrap();
    let present = ConnAck {
        session_present: true,
        ..Default::default()
    };
    let (client, _incoming, mut peer, connect) = connect_with(opts, session.clone(), present).await;
    assert!(
        !connect.clean_start,
        "the next connection must resume the session"
    );
    let p = peer.expect_publish().await;
    assert_eq!(
        (p.packet_id, p.dup, &*p.topic, p.qos),
        (Some(pid(QOS1_ID)), true, "inflight/1", QoS::AtLeastOnce),
        "the QoS 1 publish was not resent"
    );
    assert_eq!(p.payload, Bytes::from_static(b"inflight/1"));
    assert_eq!(
        peer.expect().await,
        Packet::PubRel(PubRel::new(pid(QOS2_ID))),
        "the QoS 2 exchange did not resume at PUBREL"
    );
    peer.puback(pid(QOS1_ID)).await;
    peer.send(PubComp::new(pid(QOS2_ID))).await;
    assert!(inflight.qos1.await.unwrap().is_success());
    assert!(inflight.qos2.await.unwrap().is_success());
    client.disconnect_normally().await.unwrap();
    assert_eq!(session.stats().unwrap().unfinished, 0);
}

/// Sends PUBRELs for ids nobody sent, never reading, until the client closes the pipe;
/// counts the bytes that got in.
async fn pubrel_flood(peer: &mut Peer, written: &AtomicUsize) {
    let mut id = 1000u16;
    loop {
        let mut chunk = Vec::with_capacity(4096);
        while chunk.len() < 4096 {
            id = id.wrapping_add(1).max(1000);
            chunk.extend_from_slice(&[0x62, 0x02, (id >> 8) as u8, id as u8]);
        }
        if peer.try_send_raw(&chunk).await.is_err() {
            return;
        }
        written.fetch_add(chunk.len(), Ordering::Relaxed);
    }
}

struct Outcome {
    reaction: String,
    heap_rise: usize,
}

async fn run_case(case: &Case) -> Outcome {
    let session = memory_session(3600);
    let capacity = match case.inject {
        Inject::PubRelFlood => 64 * 1024,
        _ => 1 << 20,
    };
    let (client, incoming, mut peer, inflight) =
        connect_with_exchanges_in_flight(&session, case.max_packet_size, capacity).await;
    let mark = heap_mark();
    let reaction = match (&case.inject, case.expect) {
        (Inject::Bytes(b), Expect::Close(code))
        | (Inject::BytesThenSilence(b), Expect::Close(code)) => {
            peer.send_raw(b).await;
            let sent = peer.until_closed().await;
            assert_eq!(
                disconnect_reason(&sent),
                Some(code),
                "{}: the client sent {sent:?}",
                case.name
            );
            let err = client.closed().await.unwrap_err();
            assert!(
                matches!(err, Error::Protocol { .. }),
                "{}: {err:?}",
                case.name
            );
            assert_eq!(err.reason_code(), Some(code), "{}: {err}", case.name);
            format!("DISCONNECT {code:#04x}")
        }
        (Inject::Bytes(b), Expect::Answer(what)) => {
            peer.send_raw(b).await;
            let got = peer.expect().await;
            assert_eq!(what, "PUBCOMP 0x92");
            match &got {
                Packet::PubComp(c) => {
                    assert_eq!(c.packet_id, pid(77));
                    assert_eq!(c.reason_code, PubCompReasonCode::PacketIdentifierNotFound);
                }
                other => panic!("{}: expected PUBCOMP 0x92, got {other:?}", case.name),
            }
            still_up(&client, &mut peer, case.name).await;
            drop(peer);
            assert!(matches!(
                client.closed().await,
                Err(Error::ConnectionClosed)
            ));
            what.to_owned()
        }
        (Inject::Bytes(b), Expect::Ignore) => {
            peer.send_raw(b).await;
            still_up(&client, &mut peer, case.name).await;
            drop(peer);
            assert!(matches!(
                client.closed().await,
                Err(Error::ConnectionClosed)
            ));
            "ignored, connection kept".to_owned()
        }
        (Inject::BytesThenSilence(b), Expect::KeepAliveTimeout) => {
            peer.send_raw(b).await;
            let start = Instant::now();
            let err = client.closed().await.unwrap_err();
            assert!(
                matches!(err, Error::KeepAliveTimeout),
                "{}: {err:?}",
                case.name
            );
            let took = start.elapsed();
            assert!(took <= KEEP_ALIVE * 3 / 2, "{}: took {took:?}", case.name);
            drop(peer);
            format!("keepalive timeout after {took:?}")
        }
        (Inject::PubRelFlood, Expect::KeepAliveTimeout) => {
            let written = AtomicUsize::new(0);
            let start = Instant::now();
            let (_, closed) = tokio::join!(pubrel_flood(&mut peer, &written), client.closed());
            let err = closed.unwrap_err();
            assert!(
                matches!(err, Error::KeepAliveTimeout),
                "{}: {err:?}",
                case.name
            );
            let took = start.elapsed();
            assert!(took <= KEEP_ALIVE * 3 / 2, "{}: took {took:?}", case.name);
            let n = written.load(Ordering::Relaxed);
            drop(peer);
            format!("keepalive timeout after {took:?}, {n} flood bytes taken")
        }
        (inject, expect) => panic!("{}: no script for {inject:?} / {expect:?}", case.name),
    };
    let heap_rise = heap_rise(mark);
    drop(incoming);
    drop(client);
    // The closed connection hands the session back; the next one resumes it.
    assert!(
        !session.in_use(),
        "{}: the session is still held",
        case.name
    );
    resumes_on_a_good_server(&session, inflight).await;
    Outcome {
        reaction,
        heap_rise,
    }
}

/// The connection is still up after the packet and nothing more was sent in answer. (The
/// caller then cuts the link: the next connection must still resume the session.)
async fn still_up(client: &Client, peer: &mut Peer, name: &str) {
    assert!(
        tokio::time::timeout(Duration::from_secs(1), client.closed())
            .await
            .is_err(),
        "{name}: the client closed"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(10), peer.recv())
            .await
            .is_err(),
        "{name}: the client sent something more"
    );
}

#[tokio::test(start_paused = true)]
async fn every_hostile_server_behaviour_closes_right_and_keeps_the_session() {
    count_panics();
    within(LIMIT * 10, async {
        let cases = cases();
        println!("hostile broker: {} cases", cases.len());
        println!("| case | our max | reaction | heap rise | session kept |");
        for case in &cases {
            eprintln!("case: {}", case.name);
            let out = run_case(case).await;
            // The largest buffers a case may need: a read of 64 KiB ahead, a 1 MiB write
            // buffer for the flood's answers, the pipe itself. Never the 256 MiB claimed.
            let bound = match case.inject {
                Inject::PubRelFlood => 3 << 20,
                _ => 256 << 10,
            };
            assert!(
                out.heap_rise < bound,
                "{}: the heap rose by {} bytes (bound {bound})",
                case.name,
                out.heap_rise
            );
            println!(
                "| {} | {} | {} | {} B | yes |",
                case.name,
                case.max_packet_size
                    .map_or("none".to_owned(), |m| m.to_string()),
                out.reaction,
                out.heap_rise
            );
        }
    })
    .await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}
