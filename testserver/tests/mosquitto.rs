//! The mosquitto harness against the real broker. Skips when mosquitto is not installed,
//! fails instead when PAHO_REQUIRE_MOSQUITTO=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use paho_packets::{Packet, QoS};
use paho_testserver::mosquitto;
use paho_testserver::raw::{publish, RawClient};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr) -> RawClient<TcpStream> {
    RawClient::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn start_connect_restart_stop() {
    let Some(builder) = mosquitto::require() else {
        return;
    };
    let mut broker = builder
        .config("max_inflight_messages 3")
        .persistence(true)
        .start()
        .await
        .unwrap();
    assert!(broker.addr().ip().is_loopback());
    assert!(broker.port() > 0);

    // A persistent session with a subscription.
    let mut c = raw(broker.addr()).await;
    let ack = c.connect_persistent("harness", 3600).await.unwrap();
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    assert_eq!(
        ack.properties.receive_maximum,
        Some(3),
        "the extra config line applies"
    );
    c.subscribe(1, "harness/t", QoS::AtLeastOnce).await.unwrap();
    c.send(publish("harness/t", "hello", QoS::AtLeastOnce, 1))
        .await
        .unwrap();
    let mut got = None;
    for _ in 0..2 {
        match c.expect().await.unwrap() {
            Packet::Publish(p) => got = Some(p.payload),
            Packet::PubAck(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    drop(c);

    let port = broker.port();
    broker.restart().await.unwrap();
    assert_eq!(broker.port(), port, "restart keeps the port");
    let mut c = raw(broker.addr()).await;
    let ack = c.connect_persistent("harness", 3600).await.unwrap();
    assert!(
        ack.session_present,
        "persistence keeps the session across a restart"
    );
    drop(c);

    broker.stop().await.unwrap();
    assert!(!broker.is_running());
    assert!(
        TcpStream::connect(broker.addr()).await.is_err(),
        "stopped means not listening"
    );
    assert!(broker.log().contains("mosquitto"), "the log is captured");
}

#[tokio::test]
async fn two_brokers_get_different_ports() {
    let Some(a) = mosquitto::start_or_skip().await else {
        return;
    };
    let Some(b) = mosquitto::start_or_skip().await else {
        return;
    };
    assert_ne!(a.port(), b.port());
    let mut c = raw(b.addr()).await;
    assert!(!c.connect("x").await.unwrap().reason_code.is_error());
}

#[tokio::test]
async fn config_lines_cannot_move_the_listener() {
    // Checked before anything is spawned, so this needs no mosquitto.
    for line in [
        "listener 1883",
        "port 1883",
        "bind_address 0.0.0.0",
        "x 1\nlistener 1",
        "include_dir /etc/mosquitto/conf.d",
    ] {
        let b = mosquitto::MosquittoBuilder::with_binary("/nonexistent/mosquitto").config(line);
        assert!(
            matches!(b.start().await, Err(paho_testserver::Error::Config(_))),
            "{line:?} must be refused"
        );
    }
}

#[tokio::test]
async fn a_port_taken_by_another_listener_is_not_mistaken_for_mosquitto() {
    let Some(mut broker) = mosquitto::start_or_skip().await else {
        return;
    };
    broker.stop().await.unwrap();
    // Someone else listens on the port now: mosquitto cannot bind it, and the harness must
    // not take the other listener's answers for mosquitto's.
    let _squatter = std::net::TcpListener::bind(broker.addr()).unwrap();
    let err = broker.restart().await.unwrap_err();
    assert!(
        matches!(&err, paho_testserver::Error::MosquittoStart { log, .. } if log.contains("Address already in use")),
        "{err}"
    );
    assert!(!broker.is_running());
}

/// Under a paused clock tokio jumps to the next timer whenever the runtime is idle, even while
/// mosquitto is still saving its state after SIGTERM: a stop bounded by tokio time would kill
/// it at once and lose the state. The harness bounds its waits by real time.
#[tokio::test(start_paused = true)]
async fn stop_under_a_paused_clock_lets_mosquitto_save_its_state() {
    let Some(builder) = mosquitto::require() else {
        return;
    };
    let mut broker = builder.persistence(true).start().await.unwrap();
    let port = broker.port();
    broker.stop().await.unwrap();
    assert!(
        broker.log().contains("terminating"),
        "mosquitto ended through SIGTERM, not SIGKILL:\n{}",
        broker.log()
    );
    assert!(
        broker.dir().join("mosquitto.db").exists(),
        "mosquitto saved its state at SIGTERM"
    );
    broker.restart().await.unwrap();
    assert_eq!(broker.port(), port);
    broker.stop().await.unwrap();
}

/// The state letter of a process (`Z` for a zombie), or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the command name's closing parenthesis.
    stat.rsplit_once(") ")?.1.chars().next()
}

#[tokio::test]
async fn drop_kills_and_reaps_mosquitto_and_removes_its_directory() {
    let Some(builder) = mosquitto::require() else {
        return;
    };
    let broker = builder.persistence(true).start().await.unwrap();
    let pid = broker.pid().unwrap();
    let dir = broker.dir().to_owned();
    let addr = broker.addr();
    drop(broker);
    // Gone at once: not running, not a zombie waiting to be reaped.
    assert_eq!(process_state(pid), None, "mosquitto {pid} was left behind");
    assert!(!dir.exists(), "the temp dir is removed");
    assert!(TcpStream::connect(addr).await.is_err());
}
