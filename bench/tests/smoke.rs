//! CI's only run of the harness: a few hundred messages against the sink for all three
//! implementations (seconds, no broker needed). It checks delivery counts, not speed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paho-bench"))
        .args(args)
        .output()
        .expect("run paho-bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The detailed table's rows: (cell, impl, lost / dup).
fn rows(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| QoS"))
        .map(|l| {
            l.split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        // The detailed table has 12 columns (14 fields with the outer bars).
        .filter(|c| c.len() == 14)
        .map(|c| (c[1].clone(), c[2].clone(), c[12].clone()))
        .collect()
}

#[test]
fn all_three_deliver_everything_to_the_sink_and_the_docs_section_is_written() {
    let docs = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        docs.path().join("BENCHMARKS.md"),
        "# Benchmarks\n\n## Codec\n",
    )
    .expect("write");
    let dir = docs.path().to_string_lossy().into_owned();
    let (ok, stdout, stderr) = bench(&[
        "sink",
        "--quick",
        "--messages",
        "300",
        "--write-docs",
        "--docs-dir",
        &dir,
    ]);
    assert!(ok, "the harness failed:\n{stderr}\n{stdout}");
    let rows = rows(&stdout);
    // 4 quick sink cells x 3 implementations.
    assert_eq!(rows.len(), 12, "{stdout}");
    for imp in ["ours", "rumqttc", "raw"] {
        assert_eq!(rows.iter().filter(|r| r.1 == imp).count(), 4, "{stdout}");
    }
    for (cell, imp, lost_dup) in &rows {
        assert_eq!(lost_dup, "0 / 0", "{cell} {imp}: lost / dup\n{stdout}");
    }
    let md = std::fs::read_to_string(docs.path().join("BENCHMARKS.md")).expect("read");
    assert!(md.starts_with("# Benchmarks\n\n## Codec\n"), "{md}");
    assert!(md.contains("## Client benchmark") && md.contains("bench-chart.svg"));
    let svg = std::fs::read_to_string(docs.path().join("bench-chart.svg")).expect("svg");
    assert_eq!(
        svg.matches("<rect x=").count() - 3,
        12,
        "one bar per cell and implementation"
    );
}

#[test]
fn a_lost_message_is_flagged_and_fails_the_run() {
    let (ok, stdout, stderr) =
        bench(&["sink", "--quick", "--messages", "300", "--drop-every", "50"]);
    assert!(!ok, "a run that lost QoS 1/2 messages must fail:\n{stdout}");
    assert!(stderr.contains("VIOLATION"), "{stderr}");
    // 300 messages, every 50th skipped by the raw publisher: 6 lost at QoS 1 and 2.
    assert!(stderr.contains("6 of 300 QoS 1 messages lost"), "{stderr}");
    assert!(stderr.contains("6 of 300 QoS 2 messages lost"), "{stderr}");
    // QoS 0 may lose: reported, not flagged.
    assert!(!stderr.contains("QoS 0 messages lost"), "{stderr}");
    let raw_qos0 = rows(&stdout)
        .into_iter()
        .find(|r| r.0 == "QoS 0, 16 B" && r.1 == "raw")
        .expect("raw QoS 0 row");
    assert_eq!(raw_qos0.2, "6 / 0");
}
