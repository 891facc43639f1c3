//! `publish_via_queue` on a `FileQueue` and a `FileStore`, in a child process that is killed
//! with SIGKILL at five points of its work and restarted on the same directories: every
//! message it reported queued reaches the subscriber, and no QoS 2 message arrives twice.
//! A last restart meets a broker that has forgotten the session (Session Present = 0), and
//! still nothing is lost.
//!
//! The child is this test binary re-executed with `AUTOPAHO_KILL_CHILD` set, running only
//! `child_publisher`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autopaho::{ConnectionManager, ManagerConfig, Servers};
use bytes::Bytes;
use paho::packets::{Publish, QoS};
use paho::session::{FileStore, SessionConfig, StoreIdentity};
use paho::{Client, ConnectOptions, SessionHandle};
use paho_queue::FileQueue;
use paho_testserver::TestServer;

const ENV: &str = "AUTOPAHO_KILL_CHILD";

fn qos_of(i: u32) -> QoS {
    if i.is_multiple_of(2) {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// The child: `AUTOPAHO_KILL_CHILD=dir,addr,first,end` publishes messages `first..end` through
/// the durable queue, printing `Q i` once each is durable there, then waits until everything
/// it holds is acknowledged, prints `DONE` and exits. Runs until killed.
#[test]
fn child_publisher() {
    let Ok(arg) = std::env::var(ENV) else {
        return; // Not in child mode.
    };
    let mut parts = arg.split(',');
    let (dir, addr, first, end) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse::<u32>().unwrap(),
        parts.next().unwrap().parse::<u32>().unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = std::path::PathBuf::from(dir);
        let url = format!("mqtt://{addr}");
        let identity = StoreIdentity::new(&url, "killed-publisher").unwrap();
        let store = FileStore::open(dir.join("session"), identity)
            .await
            .unwrap();
        let session =
            SessionHandle::restore(SessionConfig::new().session_expiry_interval(3600), store)
                .await
                .unwrap();
        let queue = Arc::new(FileQueue::builder(dir.join("queue")).open().await.unwrap());
        let config = || {
            ManagerConfig::builder(Servers::parse([url.as_str()]).unwrap())
                .connect_options(
                    ConnectOptions::builder()
                        .client_id("killed-publisher")
                        .clean_start(false)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        };
        let mut mgr = ConnectionManager::start(config(), session.clone(), Arc::clone(&queue));
        for i in first..end {
            let p = Publish {
                topic: "kill/m".into(),
                qos: qos_of(i),
                payload: Bytes::from(i.to_string()),
                ..Default::default()
            };
            mgr.publish_via_queue(p).await.unwrap();
            println!("Q {i}");
        }
        // Drain: the queue empty and the session with nothing unfinished (the session's
        // counters can be read only between connections, so stop and look, and start again
        // if something is left).
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if mgr.stats().queue_len > 0 {
                continue;
            }
            mgr.disconnect().await.unwrap();
            if session.stats().is_some_and(|s| s.unfinished == 0) {
                break;
            }
            mgr = ConnectionManager::start(config(), session.clone(), Arc::clone(&queue));
        }
        println!("DONE");
    });
}

struct Run {
    reported: Vec<u32>,
    done: bool,
}

/// Runs the child over `first..end`; kills it after `kill_after` reported messages (if
/// `Some`).
fn run_child(
    dir: &std::path::Path,
    addr: &str,
    (first, end): (u32, u32),
    kill_after: Option<usize>,
) -> Run {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_publisher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV, format!("{},{addr},{first},{end}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut run = Run {
        reported: Vec::new(),
        done: false,
    };
    let parse = |line: &str, run: &mut Run| {
        if line == "DONE" {
            run.done = true;
        } else if let Some(i) = line.strip_prefix("Q ").and_then(|i| i.parse().ok()) {
            run.reported.push(i);
        }
    };
    for line in lines.by_ref() {
        parse(&line.unwrap(), &mut run);
        if kill_after.is_some_and(|k| run.reported.len() >= k) || run.done {
            break;
        }
    }
    if kill_after.is_some() {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    for line in lines {
        let Ok(line) = line else { break };
        parse(&line, &mut run);
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_publishers_lose_nothing_and_never_duplicate_qos2() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let server = TestServer::start().await.unwrap();
        let addr = server.addr().to_string();
        // The subscriber: a persistent QoS 2 session on the same broker.
        let tcp = server.connect_tcp().await.unwrap();
        let (sub, mut inbox) = Client::connect(
            tcp,
            ConnectOptions::builder()
                .client_id("watcher")
                .build()
                .unwrap(),
            SessionHandle::in_memory(SessionConfig::new()),
        )
        .await
        .unwrap();
        sub.subscribe_to("kill/#", QoS::ExactlyOnce).await.unwrap();
        let got = Arc::new(std::sync::Mutex::new(HashMap::<u32, u32>::new()));
        let g = Arc::clone(&got);
        let collector = tokio::spawn(async move {
            while let Some(m) = inbox.recv().await {
                let i: u32 = std::str::from_utf8(m.payload()).unwrap().parse().unwrap();
                *g.lock().unwrap().entry(i).or_default() += 1;
            }
        });

        let tmp = tempfile::tempdir().unwrap();
        let run = |range: (u32, u32), kill: Option<usize>| {
            let (dir, addr) = (tmp.path().to_owned(), addr.clone());
            tokio::task::spawn_blocking(move || run_child(&dir, &addr, range, kill))
        };
        // Phase 1: five kills at points counted in reported messages (early, mid-burst, just
        // after a start, ...), then a run that finishes. Nothing reported may be lost, and no
        // QoS 2 message may arrive twice.
        const END1: u32 = 1200;
        let mut reported = Vec::new();
        // The message whose enqueue a kill interrupted may be durable in the queue without its
        // caller having heard, and the next run (which starts after the last reported one, as
        // an application would) publishes it again. Only those may come twice.
        let mut republished_by_the_app = HashSet::new();
        let mut next = 0;
        for k in [40, 170, 5, 260, 90] {
            let r = run((next, END1), Some(k)).await.unwrap();
            assert!(!r.done);
            // Only what was reported counts as accepted; the next run starts after it.
            next = r.reported.last().map_or(next, |l| l + 1);
            republished_by_the_app.insert(next);
            reported.extend(r.reported);
        }
        let r = run((next, END1), None).await.unwrap();
        assert!(r.done, "the finishing run did not finish");
        reported.extend(r.reported);
        let settle = || tokio::time::sleep(Duration::from_millis(500));
        settle().await;
        {
            let got = got.lock().unwrap();
            let lost: Vec<u32> = reported
                .iter()
                .copied()
                .filter(|i| !got.contains_key(i))
                .collect();
            assert!(
                lost.is_empty(),
                "lost {} of {}: {lost:?}",
                lost.len(),
                reported.len()
            );
            let dup2: Vec<u32> = got
                .iter()
                .filter(|(i, n)| {
                    qos_of(**i) == QoS::ExactlyOnce
                        && **n > 1
                        && !republished_by_the_app.contains(*i)
                })
                .map(|(i, _)| *i)
                .collect();
            assert!(dup2.is_empty(), "QoS 2 messages received twice: {dup2:?}");
            let by_app = republished_by_the_app
                .iter()
                .filter(|i| got.get(i).is_some_and(|n| *n > 1))
                .count();
            let dup1 = got
                .iter()
                .filter(|(i, n)| qos_of(**i) == QoS::AtLeastOnce && **n > 1)
                .count();
            eprintln!(
                "kill test, 5 kills: {} reported, {} received, QoS 1 duplicates {dup1}, QoS 2 \
                 duplicates 0 (and {by_app} enqueued twice by the restarted application)",
                reported.len(),
                got.len()
            );
        }

        // Phase 2: a kill, then the broker forgets the publisher's session before the restart.
        // The session-lost policy republishes what the session held and the queue sends the
        // rest: nothing is lost (a QoS 2 message the broker had already released before it
        // forgot may come twice; counted, not failed).
        const END2: u32 = 1600;
        let r = run((END1, END2), Some(150)).await.unwrap();
        let mut reported2 = r.reported.clone();
        let next = r.reported.last().map_or(END1, |l| l + 1);
        // Once the server has seen the dead child's link close (only the watcher remains).
        server.wait_connection_count(1).await;
        assert!(server.discard_session("killed-publisher"));
        let r = run((next, END2), None).await.unwrap();
        assert!(r.done, "the last run did not finish");
        reported2.extend(r.reported);
        settle().await;
        sub.disconnect_normally().await.unwrap();
        collector.await.unwrap();
        let got = got.lock().unwrap();
        let lost: Vec<u32> = reported2
            .iter()
            .copied()
            .filter(|i| !got.contains_key(i))
            .collect();
        assert!(lost.is_empty(), "lost after Session Present = 0: {lost:?}");
        let dup2 = reported2
            .iter()
            .filter(|i| qos_of(**i) == QoS::ExactlyOnce && got.get(i).is_some_and(|n| *n > 1))
            .count();
        eprintln!(
            "kill test, session forgotten: {} reported, all received, QoS 2 duplicates {dup2}",
            reported2.len()
        );
    })
    .await
    .expect("the test is stuck");
}
