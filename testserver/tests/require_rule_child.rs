//! The team rule for mosquitto tests, seen from outside: this binary runs itself as a child
//! with `$MOSQUITTO` pointing nowhere and checks what the child prints and how it exits, so
//! the skip notice and the failure are what a developer and CI actually get.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use paho_testserver::mosquitto;

/// Set in the child's environment: only then does [`child`] do anything.
const CHILD: &str = "PAHO_TESTSERVER_RULE_CHILD";

/// The child: a test that needs mosquitto, written the way the team rule says.
#[tokio::test]
async fn child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let Some(_broker) = mosquitto::start_or_skip().await else {
        println!("CHILD SKIPPED");
        return;
    };
    println!("CHILD RAN");
}

fn run_child(require: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("MOSQUITTO", "/nonexistent/mosquitto")
        .env_remove(mosquitto::REQUIRE_ENV);
    if let Some(v) = require {
        cmd.env(mosquitto::REQUIRE_ENV, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_missing_mosquitto_skips_with_a_notice() {
    let out = run_child(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("CHILD SKIPPED"), "{stdout}");
    assert!(
        stderr.contains("NOTICE: mosquitto not installed; skipping"),
        "{stderr}"
    );
}

#[test]
fn a_missing_mosquitto_fails_when_required() {
    let out = run_child(Some("1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("CHILD SKIPPED"), "{stdout}");
    assert!(stderr.contains("PAHO_REQUIRE_MOSQUITTO"), "{stderr}");
}
