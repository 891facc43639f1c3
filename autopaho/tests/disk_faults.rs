//! Scenario 6 of the reliability campaign: the disk goes away under the stores.
//!
//! * a full disk: a small tmpfs mounted by the test, under a `FileStore` (the `paho`
//!   publish path) and under a `FileQueue` (autopaho's `publish_via_queue`);
//! * a read-only disk under open stores: the tests run as root, which ignores permissions,
//!   so the files and the directory are made immutable (`chattr +i`), which refuses writes
//!   even to root and even through descriptors already open (a read-only remount is refused
//!   while files are open for writing);
//! * deleted files: the store's directory removed while it is open.
//!
//! For each: the error is typed and says what; its class is right ("not done": the message
//! was not accepted and is never sent; "outcome unknown": it may be sent, do not publish it
//! again); and no message accepted earlier is lost: once the disk is back, a fresh open
//! delivers every message acknowledged before the fault. Where `mount` or `chattr` does not
//! work (not root, no tmpfs, a file system without the immutable flag) a case prints a
//! notice and skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopaho::{ConnectionManager, ManagerConfig, Servers};
use bytes::Bytes;
use paho::packets::{Publish, QoS};
use paho::session::{FileStore, SessionConfig, StoreIdentity};
use paho::{Client, ConnectOptions, SessionHandle};
use paho_queue::{FileQueue, Queue};
use paho_testserver::TestServer;

fn long() -> u32 {
    if std::env::var_os("PAHO_CAMPAIGN_LONG").is_some_and(|v| v != "0") {
        10
    } else {
        1
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd}: {e}")),
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        match run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path],
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                eprintln!("NOTICE: skipping the full-disk case: cannot mount a tmpfs ({e})");
                None
            }
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The disk comes back: more room.
    fn grow(&self, size: &str) {
        run(
            "mount",
            &[
                "-o",
                &format!("remount,size={size}"),
                self.path().to_str().unwrap(),
            ],
        )
        .unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run("umount", &["-l", self.path().to_str().unwrap()]) {
            eprintln!("could not unmount the test tmpfs: {e}");
        }
    }
}

/// `chattr -R +i` on a directory, undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Result<Immutable, String> {
        run("chattr", &["-R", "+i", dir.to_str().unwrap()])?;
        Ok(Immutable(dir.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = run("chattr", &["-R", "-i", self.0.to_str().unwrap()]);
    }
}

/// Whether `chattr +i` works here (root on a file system with the flag).
fn immutable_works(dir: &Path) -> bool {
    let probe = dir.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let ok = match Immutable::set(&probe) {
        Ok(_guard) => std::fs::OpenOptions::new()
            .append(true)
            .open(&probe)
            .is_err(),
        Err(e) => {
            eprintln!("NOTICE: skipping the read-only case: chattr +i does not work here ({e})");
            return false;
        }
    };
    std::fs::remove_file(&probe).unwrap();
    if !ok {
        eprintln!("NOTICE: skipping the read-only case: an immutable file is still writable");
    }
    ok
}

fn qos_of(i: u32) -> QoS {
    if i.is_multiple_of(2) {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn msg(i: u32, size: usize) -> Publish {
    let mut payload = format!("{i} ").into_bytes();
    payload.resize(size, b'.');
    Publish {
        topic: "disk/m".into(),
        qos: qos_of(i),
        payload: Bytes::from(payload),
        ..Default::default()
    }
}

/// A subscriber on the test server: how many times each message number arrived.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<HashMap<u32, u32>>>);

async fn subscriber(server: &TestServer) -> (Client, Inbox) {
    let (c, mut incoming) = Client::connect(
        server.connect_tcp().await.unwrap(),
        ConnectOptions::builder()
            .client_id("disk-sub")
            .build()
            .unwrap(),
        SessionHandle::in_memory(SessionConfig::new()),
    )
    .await
    .unwrap();
    c.subscribe_to("disk/#", QoS::ExactlyOnce).await.unwrap();
    let inbox = Inbox::default();
    let i = inbox.clone();
    tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            let body = std::str::from_utf8(m.payload()).unwrap();
            let n: u32 = body.split(' ').next().unwrap().parse().unwrap();
            *i.0.lock().unwrap().entry(n).or_default() += 1;
        }
    });
    (c, inbox)
}

impl Inbox {
    async fn wait_for(&self, want: &[u32]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let missing: Vec<u32> = {
                let m = self.0.lock().unwrap();
                want.iter()
                    .copied()
                    .filter(|i| !m.contains_key(i))
                    .collect()
            };
            if missing.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never delivered: {missing:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    fn counts(&self) -> HashMap<u32, u32> {
        self.0.lock().unwrap().clone()
    }
}

/// What the test checks at the end: every accepted message arrived (QoS 2 once), and none
/// refused with "not done" ever did.
fn check_delivery(inbox: &Inbox, accepted: &[u32], not_done: &[u32], what: &str) -> (usize, usize) {
    let counts = inbox.counts();
    let lost: Vec<u32> = accepted
        .iter()
        .copied()
        .filter(|i| !counts.contains_key(i))
        .collect();
    assert!(lost.is_empty(), "{what}: accepted and lost {lost:?}");
    let sent_anyway: Vec<u32> = not_done
        .iter()
        .copied()
        .filter(|i| counts.contains_key(i))
        .collect();
    assert!(
        sent_anyway.is_empty(),
        "{what}: answered \"not done\" and delivered anyway {sent_anyway:?}"
    );
    let dup2 = counts
        .iter()
        .filter(|(i, n)| qos_of(**i) == QoS::ExactlyOnce && **n > 1)
        .count();
    assert_eq!(dup2, 0, "{what}: QoS 2 duplicated");
    let dup1 = counts
        .iter()
        .filter(|(i, n)| qos_of(**i) == QoS::AtLeastOnce && **n > 1)
        .count();
    (dup1, dup2)
}

/// The error said what: an I/O error of the session store, with the OS's reason.
fn says(e: &paho::Error, what: &str) -> String {
    let text = format!("{e}");
    assert!(
        matches!(
            e,
            paho::Error::Session(paho::session::Error::Io { .. })
                | paho::Error::Session(paho::session::Error::OutcomeUnknown { .. })
        ),
        "{what}: not a typed store I/O error: {e:?}"
    );
    text
}

// --------------------------------------------- the session store (the `paho` publish path)

/// A server that answers CONNECT and then reads and discards everything: what the client
/// sends it stays unfinished in the client's session.
fn black_hole() -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, mut server) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        if server.read(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
        let mut connack = bytes::BytesMut::new();
        paho::packets::Packet::ConnAck(Box::default())
            .encode(&mut connack)
            .unwrap();
        if server.write_all(&connack).await.is_err() {
            return;
        }
        while server.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    client
}

/// Publishes on a `FileStore` in `dir`, through a connection to a server that never
/// acknowledges (so every accepted message stays unfinished in the store), until a publish
/// is not stored: the fault (injected by `fault` after `before` messages were stored, or the
/// disk filling by itself). Then the disk comes back (`heal`), the store is opened afresh and
/// connected to a real server, and every message accepted before the fault must arrive
/// (republished from the reopened store: that server never had them), and none refused.
async fn session_store_case(
    what: &str,
    dir: &Path,
    before: u32,
    size: usize,
    fault: impl FnOnce(),
    heal: impl FnOnce(),
    files_survive: bool,
) -> String {
    let server = TestServer::start().await.unwrap();
    let (sub, inbox) = subscriber(&server).await;
    let url = format!("mqtt://{}", server.addr());
    let open = || async {
        let store = FileStore::open(
            dir.join("session"),
            StoreIdentity::new(&url, "disk-pub").unwrap(),
        )
        .await?;
        SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store).await
    };
    let opts = ConnectOptions::builder()
        .client_id("disk-pub")
        .clean_start(false)
        .build()
        .unwrap();
    let session = open().await.unwrap();
    let (client, _incoming) = Client::connect(black_hole(), opts.clone(), session.clone())
        .await
        .unwrap();
    let mut accepted = Vec::new();
    let mut handles = Vec::new();
    let mut fault = Some(fault);
    let mut i = 0;
    let (refused_i, stored_err, outcome_err) = loop {
        if i == before {
            if let Some(f) = fault.take() {
                f();
            }
        }
        let mut h = client.start_publish(msg(i, size));
        match h.stored().await {
            Ok(()) => {
                accepted.push(i);
                handles.push(h);
            }
            Err(e) => break (i, e, h.await.unwrap_err()),
        }
        i += 1;
        assert!(
            i < before.saturating_add(2_000) && i < 100_000,
            "{what}: {i} publishes stored, none refused"
        );
    };
    let text = says(&stored_err, what);
    assert_eq!(
        stored_err.is_outcome_unknown(),
        outcome_err.is_outcome_unknown(),
        "{what}: stored() and the outcome disagree"
    );
    // Later publishes are refused ("not done") until the store is reopened.
    let later_err = client
        .start_publish(msg(refused_i + 1, size))
        .await
        .unwrap_err();
    assert!(!later_err.is_outcome_unknown(), "{what}: {later_err:?}");
    // The connection closed over the failed store (DISCONNECT 0x80).
    let closed = client.closed().await.unwrap_err();
    // The handles of messages stored before: resent when the store is reopened, so "outcome
    // unknown" (never "not done", which would invite a second copy).
    for h in handles {
        let e = h.await.unwrap_err();
        assert!(
            e.is_outcome_unknown(),
            "{what}: an accepted message's handle: {e:?}"
        );
    }
    let mut not_done = vec![refused_i + 1];
    if !stored_err.is_outcome_unknown() {
        not_done.push(refused_i);
    }
    drop(client);
    drop(session);
    heal();
    // A fresh open on the healed disk, on a server that has never seen these messages.
    let session = open().await.unwrap();
    let restored = session.stats().unwrap().unfinished;
    let healed_at = std::time::Instant::now();
    let connect = || async {
        Client::connect(
            server.connect_tcp().await.unwrap(),
            opts.clone(),
            session.clone(),
        )
        .await
        .unwrap()
    };
    let (client, _incoming) = connect().await;
    let lost_with_the_files = if files_survive {
        inbox.wait_for(&accepted).await;
        0
    } else {
        // The files that held them are gone: a fresh open cannot know them.
        assert_eq!(restored, 0, "{what}");
        std::mem::take(&mut accepted).len()
    };
    let recovery = healed_at.elapsed();
    // Everything the reopened session republished completes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    client.disconnect_normally().await.unwrap();
    while session.stats().unwrap().unfinished > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: unfinished exchanges remain"
        );
        let (c, _i) = connect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.disconnect_normally().await.unwrap();
    }
    // Nothing more arrives late (a "not done" message would have been sent by now).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (dup1, _) = check_delivery(&inbox, &accepted, &not_done, what);
    sub.disconnect_normally().await.unwrap();
    format!(
        "{what}: {} stored before the fault (never acknowledged), message {refused_i} answered \
         {} ({text}); connection closed: {}; reopened after the disk came back: \
         {restored} restored, all {} delivered in {recovery:?} ({lost_with_the_files} lost \
         with the deleted files), QoS 1 duplicates {dup1}, QoS 2 0",
        accepted.len() + lost_with_the_files,
        if stored_err.is_outcome_unknown() {
            "outcome unknown"
        } else {
            "not stored"
        },
        closed,
        accepted.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_session_store() {
    common::bounded(async {
        let Some(fs) = Tmpfs::mount(&format!("{}k", 256 * long())) else {
            return;
        };
        let report = session_store_case(
            "FileStore on a full tmpfs",
            fs.path(),
            u32::MAX, // no injected fault: the disk fills by itself
            2048,
            || {},
            || fs.grow("16m"),
            true,
        )
        .await;
        println!("{report}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_under_the_session_store() {
    common::bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        if !immutable_works(tmp.path()) {
            return;
        }
        let guard = Arc::new(Mutex::new(None));
        let (g1, g2) = (Arc::clone(&guard), Arc::clone(&guard));
        let dir = tmp.path().join("session");
        let report = session_store_case(
            "FileStore made read-only (chattr +i) while open",
            tmp.path(),
            40 * long(),
            512,
            move || *g1.lock().unwrap() = Some(Immutable::set(&dir).unwrap()),
            move || drop(g2.lock().unwrap().take()),
            true,
        )
        .await;
        println!("{report}");
        // Opening on a read-only directory fails with a typed error that says so.
        let dir = tmp.path().join("session");
        let _ro = Immutable::set(&dir).unwrap();
        let e = FileStore::open(
            &dir,
            StoreIdentity::new("mqtt://127.0.0.1:1", "disk-pub").unwrap(),
        )
        .await
        .unwrap_err();
        println!("FileStore::open on a read-only directory: {e}");
        assert!(matches!(e, paho::session::Error::Io { .. }), "{e:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_store_directory_removed_while_open() {
    common::bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let report = session_store_case(
            "FileStore directory removed while open",
            tmp.path(),
            40 * long(),
            512,
            move || std::fs::remove_dir_all(dir.join("session")).unwrap(),
            || {},
            false,
        )
        .await;
        println!("{report}");
        // The first batch after the removal was refused: nothing was acknowledged into
        // a file that no open can find.
        assert!(report.contains("deleted"), "{report}");
    })
    .await;
}

// ------------------------------------------ the durable queue (`publish_via_queue`)

/// An address nobody listens on, so that the manager stays disconnected and the queue only
/// fills.
fn nowhere() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("mqtt://{a}")
}

fn queue_manager(url: &str, queue: Arc<FileQueue>) -> ConnectionManager {
    let config = ManagerConfig::builder(Servers::parse([url]).unwrap())
        .connect_options(
            ConnectOptions::builder()
                .client_id("disk-qpub")
                .build()
                .unwrap(),
        )
        .backoff(autopaho::Backoff::constant(Duration::from_millis(50)).unwrap())
        .build()
        .unwrap();
    ConnectionManager::start(
        config,
        SessionHandle::in_memory(SessionConfig::new()),
        queue,
    )
}

/// Enqueues with `publish_via_queue` into a `FileQueue` in `dir` while the manager cannot
/// connect, until an enqueue fails (the fault, injected after `before` were accepted, or the
/// disk filling). Then the disk comes back, the queue is opened afresh under a manager that
/// reaches a real server, and every accepted message must arrive, none refused.
async fn queue_case(
    what: &str,
    dir: &Path,
    before: u32,
    size: usize,
    fault: impl FnOnce(),
    heal: impl FnOnce(),
    files_survive: bool,
) -> String {
    let qdir = dir.join("queue");
    let queue = Arc::new(FileQueue::builder(&qdir).open().await.unwrap());
    let mgr = queue_manager(&nowhere(), Arc::clone(&queue));
    let mut accepted = Vec::new();
    let mut fault = Some(fault);
    let mut i = 0;
    let refused = loop {
        if i == before {
            if let Some(f) = fault.take() {
                f();
            }
        }
        match mgr.publish_via_queue(msg(i, size)).await {
            Ok(_) => accepted.push(i),
            Err(e) => break e,
        }
        i += 1;
        assert!(
            i < before.saturating_add(2_000) && i < 100_000,
            "{what}: {i} enqueued, none refused"
        );
    };
    let refused_i = i;
    assert!(
        matches!(refused, autopaho::Error::Queue(_)),
        "{what}: not a typed queue error: {refused:?}"
    );
    let text = refused.to_string();
    // Later enqueues are refused ("not done") until the queue is reopened.
    let later = mgr
        .publish_via_queue(msg(refused_i + 1, size))
        .await
        .unwrap_err();
    assert!(!later.is_outcome_unknown(), "{what}: {later:?}");
    let mut not_done = vec![refused_i + 1];
    if !refused.is_outcome_unknown() {
        not_done.push(refused_i);
    }
    mgr.disconnect().await.unwrap();
    drop(mgr);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut queue = queue;
    let queue = loop {
        match Arc::try_unwrap(queue) {
            Ok(q) => break q,
            Err(q) => queue = q,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the manager kept the queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = queue.close().await; // it failed: the close may say so
    heal();
    let server = TestServer::start().await.unwrap();
    let (sub, inbox) = subscriber(&server).await;
    let queue = Arc::new(FileQueue::builder(&qdir).open().await.unwrap());
    let restored = queue.len();
    let healed_at = std::time::Instant::now();
    let mgr = queue_manager(&format!("mqtt://{}", server.addr()), Arc::clone(&queue));
    let lost_with_the_files = if files_survive {
        inbox.wait_for(&accepted).await;
        0
    } else {
        assert_eq!(restored, 0, "{what}");
        std::mem::take(&mut accepted).len()
    };
    let recovery = healed_at.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mgr.stats().queue_len > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (dup1, _) = check_delivery(&inbox, &accepted, &not_done, what);
    mgr.disconnect().await.unwrap();
    sub.disconnect_normally().await.unwrap();
    format!(
        "{what}: {} enqueued before the fault, message {refused_i} answered {} ({text}); \
         reopened after the disk came back: {restored} entries, all {} delivered in \
         {recovery:?} ({lost_with_the_files} lost with the deleted files), QoS 1 duplicates \
         {dup1}, QoS 2 0",
        accepted.len() + lost_with_the_files,
        if refused.is_outcome_unknown() {
            "outcome unknown"
        } else {
            "not stored"
        },
        accepted.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_queue() {
    common::bounded(async {
        let Some(fs) = Tmpfs::mount(&format!("{}k", 256 * long())) else {
            return;
        };
        let report = queue_case(
            "FileQueue on a full tmpfs",
            fs.path(),
            u32::MAX,
            2048,
            || {},
            || fs.grow("16m"),
            true,
        )
        .await;
        println!("{report}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_under_the_queue() {
    common::bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        if !immutable_works(tmp.path()) {
            return;
        }
        let guard = Arc::new(Mutex::new(None));
        let (g1, g2) = (Arc::clone(&guard), Arc::clone(&guard));
        let dir = tmp.path().join("queue");
        let report = queue_case(
            "FileQueue made read-only (chattr +i) while open",
            tmp.path(),
            40 * long(),
            512,
            move || *g1.lock().unwrap() = Some(Immutable::set(&dir).unwrap()),
            move || drop(g2.lock().unwrap().take()),
            true,
        )
        .await;
        println!("{report}");
        let dir = tmp.path().join("queue");
        let _ro = Immutable::set(&dir).unwrap();
        let e = FileQueue::builder(&dir).open().await.unwrap_err();
        println!("FileQueue::open on a read-only directory: {e}");
        assert!(matches!(e, paho_queue::Error::Io { .. }), "{e:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_directory_removed_while_open() {
    common::bounded(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let report = queue_case(
            "FileQueue directory removed while open",
            tmp.path(),
            40 * long(),
            512,
            move || std::fs::remove_dir_all(dir.join("queue")).unwrap(),
            || {},
            false,
        )
        .await;
        println!("{report}");
        assert!(report.contains("deleted"), "{report}");
    })
    .await;
}
