//! `pub` and `sub` against a real mosquitto (spawned here on a free loopback port; skipped
//! with a notice when mosquitto is missing, failed when `PAHO_REQUIRE_MOSQUITTO=1`):
//! interoperation with Debian's `mosquitto_pub`/`mosquitto_sub` both ways at QoS 0, 1 and 2,
//! `pub -l --session-dir` killed with SIGKILL and resumed (with and without a broker restart
//! that forgets every session) with no line lost, and every documented exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use paho_testserver::mosquitto::Mosquitto;

const PUB: &str = env!("CARGO_BIN_EXE_pub");
const SUB: &str = env!("CARGO_BIN_EXE_sub");
/// Hang guard for every wait (never a timing assertion).
const GUARD: Duration = Duration::from_secs(60);

struct Broker {
    rt: tokio::runtime::Runtime,
    m: Mosquitto,
}

impl Broker {
    fn start(extra: &[&str]) -> Option<Broker> {
        let mut b = paho_testserver::mosquitto::require()?.log_all(true);
        for line in extra {
            b = b.config(*line);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m = rt.block_on(b.start()).unwrap();
        Some(Broker { rt, m })
    }

    fn port(&self) -> String {
        self.m.port().to_string()
    }

    /// Waits until mosquitto's log holds `needle` at least `n` times. This one polls: the
    /// harness captures mosquitto's stderr into a buffer with no change signal, and mosquitto
    /// runs outside any clock a test could pause.
    fn wait_log(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.m.log().matches(needle).count() < n {
            assert!(
                start.elapsed() < GUARD,
                "no {needle:?} x{n} in\n{}",
                self.m.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn restart(&mut self) {
        self.rt.block_on(self.m.restart()).unwrap();
    }
}

/// A child whose stdout (and stderr) are collected in the background.
struct Running {
    child: Child,
    out: Arc<Captured>,
    err: Arc<Captured>,
}

/// What a child wrote to one of its pipes, with a signal on every change (no polling).
#[derive(Default)]
struct Captured {
    /// The text so far, and whether the pipe reached EOF.
    state: Mutex<(String, bool)>,
    changed: Condvar,
}

impl Captured {
    fn text(&self) -> String {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits until `pred` holds for the text (or, with `eof`, until the pipe closed), for
    /// at most the hang guard.
    fn wait(&self, eof: bool, pred: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + GUARD;
        let mut g = self.state.lock().unwrap();
        loop {
            if (!eof && pred(&g.0)) || (eof && g.1) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(g.0.clone());
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }
}

fn collect(r: impl Read + Send + 'static) -> Arc<Captured> {
    let buf = Arc::new(Captured::default());
    let b = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut r = r;
        let mut chunk = [0u8; 8192];
        loop {
            let n = r.read(&mut chunk).unwrap_or(0);
            let mut g = b.state.lock().unwrap();
            if n == 0 {
                g.1 = true;
            } else {
                g.0.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            drop(g);
            b.changed.notify_all();
            if n == 0 {
                break;
            }
        }
    });
    buf
}

fn spawn(program: &str, args: &[&str], stdin: Stdio) -> Running {
    let mut child = Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    Running { child, out, err }
}

impl Running {
    fn wait_out(&self, pred: impl Fn(&str) -> bool) {
        if let Err(out) = self.out.wait(false, pred) {
            panic!("stuck; stdout:\n{out}\nstderr:\n{}", self.err.text());
        }
    }

    fn wait_err_lines(&self, prefix: &str, n: usize) {
        let enough = |t: &str| t.lines().filter(|l| l.starts_with(prefix)).count() >= n;
        if let Err(err) = self.err.wait(false, enough) {
            panic!("stuck; stderr:\n{err}");
        }
    }

    /// Waits for the exit (hang guard) and returns the code, stdout and stderr. Both pipes
    /// reach EOF when the child exits, so that is what it waits for.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let closed = self
            .out
            .wait(true, |_| true)
            .and(self.err.wait(true, |_| true));
        if closed.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "did not exit; stdout:\n{}\nstderr:\n{}",
                self.out.text(),
                self.err.text()
            );
        }
        let status = self.child.wait().unwrap();
        (status.code(), self.out.text(), self.err.text())
    }
}

fn run(program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    spawn(program, args, Stdio::null()).finish()
}

#[test]
fn pub_to_mosquitto_sub_at_qos_0_1_2() {
    let Some(b) = Broker::start(&[]) else { return };
    let port = b.port();
    for qos in ["0", "1", "2"] {
        let topic = format!("interop/pub/{qos}");
        let id = format!("msub-{qos}");
        let sub = spawn(
            "mosquitto_sub",
            &[
                "-V", "mqttv5", "-p", &port, "-t", &topic, "-q", qos, "-C", "3", "-v", "-i", &id,
            ],
            Stdio::null(),
        );
        b.wait_log(&format!("Received SUBSCRIBE from {id}"), 1);
        let (code, _, err) = run(
            PUB,
            &[
                "-p", &port, "-t", &topic, "-q", qos, "-m", "hello", "--repeat", "3", "-V",
                "mqttv5",
            ],
        );
        assert_eq!(code, Some(0), "pub failed: {err}");
        let (code, out, _) = sub.finish();
        assert_eq!(code, Some(0));
        assert_eq!(out, format!("{topic} hello\n").repeat(3), "QoS {qos}");
    }
}

#[test]
fn mosquitto_pub_to_sub_at_qos_0_1_2() {
    let Some(b) = Broker::start(&[]) else { return };
    let port = b.port();
    for qos in ["0", "1", "2"] {
        let topic = format!("interop/sub/{qos}");
        let id = format!("oursub-{qos}");
        let sub = spawn(
            SUB,
            &[
                "-p", &port, "-t", &topic, "-q", qos, "-C", "3", "-v", "-i", &id,
            ],
            Stdio::null(),
        );
        b.wait_log(&format!("Received SUBSCRIBE from {id}"), 1);
        let mut p = Command::new("mosquitto_pub")
            .args(["-V", "mqttv5", "-p", &port, "-t", &topic, "-q", qos, "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin
            .take()
            .unwrap()
            .write_all(b"one\ntwo\nthree\n")
            .unwrap();
        assert!(p.wait().unwrap().success());
        let (code, out, err) = sub.finish();
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out,
            format!("{topic} one\n{topic} two\n{topic} three\n"),
            "QoS {qos}"
        );
    }
}

#[test]
fn sub_format_no_newline_and_retained_filtering() {
    let Some(b) = Broker::start(&[]) else { return };
    let port = b.port();
    // A retained message first: -R must not print it.
    let (code, _, _) = run(
        PUB,
        &["-p", &port, "-t", "fmt/a", "-m", "old", "-r", "-q", "1"],
    );
    assert_eq!(code, Some(0));
    let sub = spawn(
        SUB,
        &[
            "-p",
            &port,
            "-t",
            "fmt/#",
            "-R",
            "-N",
            "-F",
            "%t|%p|%q|%r|%l;",
            "-C",
            "1",
            "-q",
            "1",
            "-i",
            "fmt",
        ],
        Stdio::null(),
    );
    b.wait_log("Received SUBSCRIBE from fmt", 1);
    let (code, _, _) = run(PUB, &["-p", &port, "-t", "fmt/b", "-m", "new", "-q", "1"]);
    assert_eq!(code, Some(0));
    let (code, out, _) = sub.finish();
    assert_eq!(code, Some(0));
    // -N: no newline at all.
    assert_eq!(out, "fmt/b|new|1|0|3;");
}

/// `pub -l --session-dir` is SIGKILLed after it has queued part of its input, then run
/// again with the same -i and dir and an empty stdin: every line it had queued arrives.
/// With `restart`, mosquitto (without persistence) restarts between the kill and the
/// resume, forgetting every session: the session-lost policy republishes.
fn killed_and_resumed(restart: bool) {
    let Some(mut b) = Broker::start(&[]) else {
        return;
    };
    let port = b.port();
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let topic = "kill/lines";
    // The watcher: mosquitto_sub with a persistent session, reconnecting by itself (-c).
    let watcher = spawn(
        "mosquitto_sub",
        &[
            "-V", "mqttv5", "-p", &port, "-t", topic, "-q", "1", "-c", "-i", "watcher", "-x", "600",
        ],
        Stdio::null(),
    );
    b.wait_log("Received SUBSCRIBE from watcher", 1);
    let args = [
        "-p",
        &port,
        "-t",
        topic,
        "-q",
        "1",
        "-l",
        "-i",
        "outbox",
        "--session-dir",
        &dir_s,
        "-d",
    ];
    let mut first = spawn(PUB, &args, Stdio::piped());
    let mut stdin = first.child.stdin.take().unwrap();
    let input: String = (0..3000).map(|i| format!("line-{i}\n")).collect();
    let writer = std::thread::spawn(move || {
        // Fails once the child is killed: fine. The pipe is handed back, still open, so that
        // the child sees no EOF before the kill.
        let _ = stdin.write_all(input.as_bytes());
        stdin
    });
    first.wait_err_lines("queued ", 400);
    first.child.kill().unwrap(); // SIGKILL
    let (_, _, err) = first.finish();
    drop(writer.join());
    let queued = err.lines().filter(|l| l.starts_with("queued ")).count();
    assert!(queued >= 400);
    if restart {
        let before = b.m.log().matches("Received SUBSCRIBE from watcher").count();
        b.restart();
        // The watcher reconnects and subscribes again on its own (the log spans restarts).
        b.wait_log("Received SUBSCRIBE from watcher", before + 1);
    }
    let (code, _, err) = spawn(PUB, &args, Stdio::null()).finish();
    assert_eq!(code, Some(0), "the resumed pub failed: {err}");
    // -d reports the CONNACK: after the restart the broker had forgotten the session.
    let expect = format!("session present: {}", !restart);
    assert!(
        err.contains(&expect),
        "no {expect:?} in the resumed run's stderr:\n{err}"
    );
    // An end marker from another client: mosquitto routes in order, so once it is seen,
    // everything acknowledged before it was delivered.
    let (code, _, _) = run(PUB, &["-p", &port, "-t", topic, "-q", "1", "-m", "END"]);
    assert_eq!(code, Some(0));
    watcher.wait_out(|o| o.lines().any(|l| l == "END"));
    let mut watcher = watcher;
    watcher.child.kill().unwrap();
    let (_, out, _) = watcher.finish();
    let got: HashSet<&str> = out.lines().collect();
    let lost: Vec<String> = (0..queued)
        .map(|i| format!("line-{i}"))
        .filter(|l| !got.contains(l.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {queued} queued lines lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

#[test]
fn pub_lines_with_session_dir_survive_sigkill() {
    killed_and_resumed(false);
}

#[test]
fn pub_lines_with_session_dir_survive_sigkill_and_a_broker_that_forgot() {
    killed_and_resumed(true);
}

#[test]
fn exit_codes() {
    // 2: bad flags, a QoS out of range, no message source, --session-dir without -i.
    assert_eq!(run(PUB, &["--no-such-flag"]).0, Some(2));
    assert_eq!(run(PUB, &["-t", "x", "-m", "y", "-q", "3"]).0, Some(2));
    assert_eq!(run(PUB, &["-t", "x"]).0, Some(2));
    assert_eq!(run(SUB, &["-t", "x", "--session-dir", "/tmp/x"]).0, Some(2));
    assert_eq!(run(SUB, &["-V", "mqttv3"]).0, Some(2));
    // --help and --version exit 0 (and -h is the host, as in mosquitto).
    let (code, out, _) = run(PUB, &["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Exit codes"), "{out}");
    assert_eq!(run(SUB, &["--version"]).0, Some(0));

    // 3: nothing listens there (a port just freed).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let (code, _, err) = run(PUB, &["-h", "127.0.0.1", "-p", &port, "-t", "x", "-m", "y"]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert_eq!(
        run(SUB, &["-h", "127.0.0.1", "-p", &port, "-t", "x"]).0,
        Some(3)
    );

    // 5: TLS: a CA file that is not PEM.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let (code, _, err) = run(
        PUB,
        &[
            "-p",
            &port,
            "-t",
            "x",
            "-m",
            "y",
            "--cafile",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(5), "{err}");

    let Some(b) = Broker::start(&["max_packet_size 1000"]) else {
        return;
    };
    let port = b.port();
    // 27: sub -W with nothing coming.
    assert_eq!(
        run(SUB, &["-p", &port, "-t", "quiet", "-W", "1"]).0,
        Some(27)
    );
    // 7: over the broker's Maximum Packet Size: an error, not dropped in silence.
    let big = "x".repeat(5000);
    let (code, _, err) = run(PUB, &["-p", &port, "-t", "big", "-q", "1", "-m", &big]);
    assert_eq!(code, Some(7), "{err}");
    // 6: the session dir is held by a running sub.
    let sd = dir.path().join("session");
    let sd = sd.to_str().unwrap();
    let holder = spawn(
        SUB,
        &[
            "-p",
            &port,
            "-t",
            "x",
            "-i",
            "same",
            "--session-dir",
            sd,
            "-c",
        ],
        Stdio::null(),
    );
    b.wait_log("Received SUBSCRIBE from same", 1);
    let (code, _, err) = run(
        PUB,
        &[
            "-p",
            &port,
            "-t",
            "x",
            "-m",
            "y",
            "-i",
            "same",
            "--session-dir",
            sd,
        ],
    );
    assert_eq!(code, Some(6), "{err}");
    let mut holder = holder;
    holder.child.kill().unwrap();
    holder.finish();

    // 4: a broker that refuses anonymous clients.
    let Some(strict) = Broker::start(&["allow_anonymous false"]) else {
        return;
    };
    let (code, _, err) = run(PUB, &["-p", &strict.port(), "-t", "x", "-m", "y"]);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(run(SUB, &["-p", &strict.port(), "-t", "x"]).0, Some(4));
}

#[test]
fn pub_sources_properties_and_url() {
    let Some(b) = Broker::start(&[]) else { return };
    let port = b.port();
    let sub = spawn(
        "mosquitto_sub",
        &[
            "-V",
            "mqttv5",
            "-p",
            &port,
            "-t",
            "src/#",
            "-q",
            "1",
            "-C",
            "5",
            "-i",
            "srcs",
            "-F",
            "%t|%C|%E|%R|%D|%P|%l|%p",
        ],
        Stdio::null(),
    );
    b.wait_log("Received SUBSCRIBE from srcs", 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.txt");
    std::fs::write(&file, "from a file").unwrap();
    // -f FILE
    let (code, _, err) = run(
        PUB,
        &[
            "-p",
            &port,
            "-t",
            "src/f",
            "-q",
            "1",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    // -s: all of stdin as one message
    let mut p = Command::new(PUB)
        .args(["-p", &port, "-t", "src/s", "-q", "1", "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"two\nlines").unwrap();
    assert!(p.wait().unwrap().success());
    // -n: a null message
    assert_eq!(
        run(PUB, &["-p", &port, "-t", "src/n", "-q", "1", "-n"]).0,
        Some(0)
    );
    // -D publish properties, as mosquitto spells them
    let (code, _, err) = run(
        PUB,
        &[
            "-p",
            &port,
            "-t",
            "src/d",
            "-q",
            "1",
            "-m",
            "body",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
            "-D",
            "publish",
            "response-topic",
            "re/ply",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    // -L with the topic as the URL's path
    let url = format!("mqtt://127.0.0.1:{port}/src/url");
    assert_eq!(
        run(PUB, &["-L", &url, "-m", "via url", "-q", "1"]).0,
        Some(0)
    );
    let (code, out, _) = sub.finish();
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "src/f||||||11|from a file",
            "src/s||||||9|two",
            "lines",
            "src/n||||||0|",
            "src/d|text/plain|60|re/ply|abc|k:v|4|body",
            "src/url||||||7|via url",
        ]
    );
    // Unknown or malformed -D: bad flags.
    assert_eq!(
        run(PUB, &["-t", "x", "-m", "y", "-D", "publish", "nope", "1"]).0,
        Some(2)
    );
    assert_eq!(
        run(
            PUB,
            &["-t", "x", "-m", "y", "-D", "connect", "content-type", "a"]
        )
        .0,
        Some(2)
    );
}

#[test]
fn credentials_keepalive_and_session_flags_reach_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-c", "-b", pw.to_str().unwrap(), "alice", "secret"])
        .status();
    let Ok(status) = ok else {
        eprintln!("NOTICE: mosquitto_passwd missing; skipping");
        return;
    };
    assert!(status.success());
    let pw_line = format!("password_file {}", pw.display());
    let Some(b) = Broker::start(&["allow_anonymous false", &pw_line]) else {
        return;
    };
    let port = b.port();
    let (code, _, err) = run(
        PUB,
        &[
            "-p", &port, "-t", "x", "-m", "y", "-u", "alice", "-P", "secret", "-k", "17", "-i",
            "cred-1",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    // mosquitto logs the keepalive (k17) and clean start (c1) of each CONNECT.
    b.wait_log("as cred-1 (p5, c1, k17", 1);
    // Credentials in a -L URL, as mosquitto takes them; -c gives Clean Start 0.
    let url = format!("mqtt://alice:secret@127.0.0.1:{port}/x");
    let (code, _, err) = run(
        PUB,
        &["-L", &url, "-m", "y", "-c", "-x", "60", "-i", "cred-2"],
    );
    assert_eq!(code, Some(0), "{err}");
    b.wait_log("as cred-2 (p5, c0, k60", 1);
    // The wrong password: refused.
    let (code, _, _) = run(
        PUB,
        &[
            "-p", &port, "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong",
        ],
    );
    assert_eq!(code, Some(4));
}

/// `sub --session-dir -c -q 2`, SIGKILLed while messages flow and started again while the
/// rest are published: every message is printed, and at most the one in the documented
/// window (printed, acknowledgement not yet stored) twice. Then mosquitto restarts without
/// persistence: `sub` subscribes again by itself and keeps printing.
#[test]
fn sub_with_session_dir_survives_sigkill_and_resubscribes_after_a_broker_restart() {
    let Some(mut b) = Broker::start(&[]) else {
        return;
    };
    let port = b.port();
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().to_str().unwrap().to_owned();
    let sub_args = [
        "-p",
        &port,
        "-t",
        "dur/#",
        "-q",
        "2",
        "-c",
        "-i",
        "dsub",
        "--session-dir",
        &sd,
        "-d",
    ];
    let first = spawn(SUB, &sub_args, Stdio::null());
    b.wait_log("Received SUBSCRIBE from dsub", 1);
    let publisher = {
        let port = port.clone();
        std::thread::spawn(move || {
            let mut p = Command::new(PUB)
                .args(["-p", &port, "-t", "dur/n", "-q", "2", "-l"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let input: String = (0..300).map(|i| format!("{i}\n")).collect();
            p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            assert!(p.wait().unwrap().success());
        })
    };
    first.wait_out(|o| o.lines().count() >= 50);
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL
    let (_, out1, _) = first.finish();
    publisher.join().unwrap(); // all 300 acknowledged by the broker: queued for dsub
    let second = spawn(SUB, &sub_args, Stdio::null());
    second.wait_out(|o| {
        let got: HashSet<&str> = out1.lines().chain(o.lines()).collect();
        (0..300).all(|i| got.contains(i.to_string().as_str()))
    });
    let printed = out1.lines().count() + second.out.text().lines().count();
    assert!(
        printed <= 301,
        "{printed} lines for 300 messages: more than the one-message window"
    );
    // The broker forgets everything; sub notices Session Present = 0 and subscribes again.
    let before = b.m.log().matches("Received SUBSCRIBE from dsub").count();
    b.restart();
    b.wait_log("Received SUBSCRIBE from dsub", before + 1);
    assert_eq!(
        run(PUB, &["-p", &port, "-t", "dur/n", "-q", "2", "-m", "after"]).0,
        Some(0)
    );
    second.wait_out(|o| o.lines().any(|l| l == "after"));
    assert!(second.err.text().contains("session present: false"));
    let mut second = second;
    second.child.kill().unwrap();
    second.finish();
}
