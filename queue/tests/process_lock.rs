//! Two processes opening one queue directory: the second gets `Error::AlreadyOpen` instead of
//! both appending to (and reclaiming) the same segments.
//!
//! The second process is this test binary re-executed with `PAHO_QUEUE_LOCK_CHILD` set to the
//! queue directory, running only `child_open`, which prints what opening gave it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use paho_queue::{Error, FileQueue};

const ENV: &str = "PAHO_QUEUE_LOCK_CHILD";

/// The child: opens the directory once and reports the outcome on stdout.
#[test]
fn child_open() {
    let Some(dir) = std::env::var_os(ENV) else {
        return; // Not in child mode: nothing to do.
    };
    match FileQueue::builder(&dir).open_blocking() {
        Ok(q) => {
            drop(q);
            println!("OUTCOME opened");
        }
        Err(Error::AlreadyOpen { dir }) => println!("OUTCOME already-open {}", dir.display()),
        Err(e) => println!("OUTCOME error {e}"),
    }
}

/// Runs the child on `dir` and returns its `OUTCOME` line.
fn open_in_child(dir: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_open", "--nocapture", "--test-threads=1"])
        .env(ENV, dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        // The test harness may print its "test child_open ... " prefix on the same line.
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("child printed no outcome: {stdout}"))
        .to_owned()
}

#[test]
fn a_second_process_gets_already_open_until_the_first_closes() {
    if std::env::var_os(ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let q = FileQueue::builder(&dir).open_blocking().unwrap();

    let outcome = open_in_child(&dir);
    assert!(outcome.starts_with("already-open "), "{outcome}");
    assert!(
        outcome.contains("outbox"),
        "the error names the directory: {outcome}"
    );

    drop(q);
    assert_eq!(open_in_child(&dir), "opened");
    // And the child released it on exit.
    FileQueue::builder(&dir).open_blocking().unwrap();
}
