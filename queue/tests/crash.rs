//! Kill -9 tests: a child process (this test binary re-executed in "child mode") enqueues and
//! dequeues in a loop and prints each completed operation; the parent SIGKILLs it mid-flight,
//! reopens the directory, and checks that every enqueue the child reported is still there, in
//! order, and every removal it reported is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use paho_queue::{FileQueue, Finish, Queue};

/// Set (to the queue directory) only in the child process.
const CHILD_ENV: &str = "PAHO_QUEUE_CRASH_CHILD_DIR";
const PRODUCERS: u64 = 4;
/// Upper bound on the child's work, so it stops by itself if never killed.
const PER_PRODUCER: u64 = 100_000;

/// Child mode: does nothing in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async move {
        // Small segments so the kill also lands during segment rolls and deletions.
        let q = Arc::new(
            FileQueue::builder(&dir)
                .segment_bytes(4096)
                .open()
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for t in 0..PRODUCERS {
            let q = Arc::clone(&q);
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_PRODUCER {
                    let p = format!("{t}-{i}");
                    let r = q.enqueue(Bytes::from(p.clone()), SystemTime::now()).await;
                    println!("ENQ {} {p}", r.unwrap().seq());
                }
            }));
        }
        // A consumer removing every third entry it sees, reporting each removal.
        let consumer = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                consumer.wait_non_empty().await.unwrap();
                let Some(e) = consumer.peek().unwrap() else {
                    continue;
                };
                n += 1;
                if n.is_multiple_of(3) {
                    let seq = e.seq();
                    consumer.finish(e, Finish::Remove).await.unwrap();
                    println!("DEL {seq}");
                } else {
                    // Leave it and wait for the next enqueue to change something.
                    consumer.finish(e, Finish::Leave).await.unwrap();
                    tokio::task::yield_now().await;
                    if n > PRODUCERS * PER_PRODUCER * 4 {
                        break;
                    }
                }
            }
        }));
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn run_and_kill(
    dir: &std::path::Path,
    kill_after: usize,
) -> (BTreeMap<u64, String>, BTreeSet<u64>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut enq = BTreeMap::new();
    let mut del = BTreeSet::new();
    let parse = |line: &str, enq: &mut BTreeMap<u64, String>, del: &mut BTreeSet<u64>| {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ENQ"), Some(seq), Some(p)) => {
                enq.insert(seq.parse().unwrap(), p.to_owned());
            }
            (Some("DEL"), Some(seq), None) => {
                del.insert(seq.parse().unwrap());
            }
            _ => {}
        }
    };
    for line in lines.by_ref() {
        parse(&line.unwrap(), &mut enq, &mut del);
        if enq.len() >= kill_after {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Lines already in the pipe were printed after their operation completed: they count too.
    for line in lines.map_while(Result::ok) {
        parse(&line, &mut enq, &mut del);
    }
    let _ = child.wait();
    (enq, del)
}

#[test]
fn sigkill_loses_no_reported_enqueue_and_resurrects_no_reported_removal() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    for kill_after in [50, 700, 3000] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        let (enq, del) = run_and_kill(&dir, kill_after);
        assert!(enq.len() >= kill_after);

        let q = FileQueue::builder(&dir).open_blocking().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let found: Vec<(u64, String)> = rt.block_on(async {
            let mut out = Vec::new();
            while let Some(e) = q.peek().unwrap() {
                out.push((e.seq(), String::from_utf8(e.payload().to_vec()).unwrap()));
                q.finish(e, Finish::Remove).await.unwrap();
            }
            out
        });
        assert!(
            found.windows(2).all(|w| w[0].0 < w[1].0),
            "FIFO by sequence number after the crash"
        );
        let found_map: BTreeMap<u64, String> = found.iter().cloned().collect();
        // The consumer only ever removes the head, so what is gone is a prefix in sequence
        // order: everything reported from the first surviving entry on must be there.
        let first = found.first().map_or(u64::MAX, |(s, _)| *s);
        for seq in &del {
            assert!(
                !found_map.contains_key(seq),
                "removed entry {seq} came back"
            );
        }
        let mut unreported_removals = 0;
        for (seq, p) in &enq {
            if *seq >= first {
                assert_eq!(found_map.get(seq), Some(p), "reported entry {seq} lost");
            } else if !del.contains(seq) {
                unreported_removals += 1;
            }
        }
        // The consumer has at most one removal in flight when killed (done, not yet printed).
        assert!(
            unreported_removals <= 1,
            "{unreported_removals} reported entries before the head vanished"
        );
        // Each producer's entries come out in the order it enqueued them.
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, p) in &found {
            let (t, i) = p.split_once('-').unwrap();
            let i: u64 = i.parse().unwrap();
            if let Some(prev) = last.insert(t, i) {
                assert!(prev < i, "producer {t}: {prev} before {i}");
            }
        }
        // Whatever the crash tore was reported, not served: no report may name a reported entry.
        for r in q.take_reports() {
            if let paho_queue::Report::Quarantined { seq: Some(s), .. } = r {
                assert!(
                    !enq.contains_key(&s) || del.contains(&s),
                    "quarantined acked {s}"
                );
            }
        }
    }
}
