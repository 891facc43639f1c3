//! Two processes opening one store directory: the second gets a typed error instead of both
//! appending to one log.
//!
//! The second process is this test binary re-executed with `PAHO_SESSION_LOCK_CHILD` set to the
//! store directory, running only `child_open`, which prints what opening gave it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use paho_session::{Error, FileStore, StoreIdentity};

const ENV: &str = "PAHO_SESSION_LOCK_CHILD";

fn ident() -> StoreIdentity {
    StoreIdentity::new("mqtt://lock", "lock-test").unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// The child: opens the directory once and reports the outcome on stdout.
#[test]
fn child_open() {
    let Ok(dir) = std::env::var(ENV) else {
        return; // Not in child mode: nothing to do.
    };
    runtime().block_on(async move {
        match FileStore::open(&dir, ident()).await {
            Ok(store) => {
                store.close().await;
                println!("OUTCOME opened");
            }
            Err(Error::Locked(path)) => println!("OUTCOME locked {}", path.display()),
            Err(e) => println!("OUTCOME error {e}"),
        }
    });
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
fn a_second_process_gets_a_typed_error_until_the_first_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let rt = runtime();
    let store = rt.block_on(FileStore::open(&dir, ident())).unwrap();

    let outcome = open_in_child(&dir);
    assert!(outcome.starts_with("locked "), "{outcome}");
    // The error names the directory.
    assert!(outcome.contains("store"), "{outcome}");

    rt.block_on(store.close());
    assert_eq!(open_in_child(&dir), "opened");
}

#[test]
fn a_failed_open_releases_the_lock_before_answering() {
    // A failed open (here: another identity) must not leave its lock behind for the caller's
    // immediate retry to trip over.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let rt = runtime();
    rt.block_on(async {
        FileStore::open(&dir, ident()).await.unwrap().close().await;
        let other = StoreIdentity::new("mqtt://lock", "someone-else").unwrap();
        for _ in 0..200 {
            let err = FileStore::open(&dir, other.clone()).await.unwrap_err();
            assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
            let store = FileStore::open(&dir, ident())
                .await
                .unwrap_or_else(|e| panic!("retry after a failed open: {e}"));
            store.close().await;
        }
    });
}
