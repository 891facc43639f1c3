//! The `rpc` example: every request answered right, over the embedded broker; bad flags exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn every_request_gets_the_right_answer() {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["--requests", "25"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "requests 25"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "answered 25"), "{stdout}");
    assert!(stdout.contains("add 4 8 12 = 24"), "{stdout}");
}

#[test]
fn bad_flags_and_an_unreachable_broker_have_their_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_rpc"))
        .args(["--server", &format!("mqtt://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
