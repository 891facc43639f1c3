//! `sub`: subscribe and print MQTT v5 messages, with mosquitto_sub's flags, and a durable
//! session with `--session-dir`. See `sub --help`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopaho::ConnectionManager;
use clap::Parser;
use paho::packets::{Subscription, SubscriptionOptions};
use paho::Message;
use paho_examples::{code_of, exit, first_connection, print_events, Common, Fail};
use tokio::sync::Notify;

const LONG_ABOUT: &str = "\
Subscribe to MQTT v5 topics and print each message on its own line, flushed at once; the flags \
follow mosquitto_sub (-V mqttv5 is accepted and ignored: it always speaks MQTT v5).

--session-dir DIR -c -q 2 keeps the session in DIR/session (a file store), including the \
inbound QoS 2 state, so that a QoS 2 message the broker sends again after a reconnect or a \
restart of sub is never printed twice; sub reconnects by itself, and subscribes again when the \
broker has forgotten the session. One window remains that no client can close: a kill after a \
message is printed and before its acknowledgement is stored prints it again on the next run. \
sub acknowledges right after the one write that prints a message, and with --session-dir it \
announces Receive Maximum 1, so that a broker sends one QoS 1/2 message at a time and the \
window is one message (a broker that ignores Receive Maximum widens it). Without --session-dir, -c still \
reconnects with the session in memory while the process lives.";

const EXIT_CODES: &str = "\
Exit codes: 0 done (-C reached, or interrupted); 1 failed (connection lost for good, \
subscription refused); 2 bad flags; 3 broker unreachable; 4 CONNECT refused; 5 TLS failure; 6 \
--session-dir in use by another process; 8 --session-dir unusable; 27 -W timeout (as \
mosquitto_sub).

Format (-F): %t topic, %p payload, %q QoS, %r retain flag (0/1), %l payload length, %%; \\n, \
\\t and \\\\ escapes.

Environment: MQTT_HOST, MQTT_PORT, MQTT_CLIENT_ID, MQTT_QOS, MQTT_TOPIC, PAHO_SESSION_DIR \
stand for -h, -p, -i, -q, -t, --session-dir.";

#[derive(Parser, Debug)]
#[command(
    name = "sub",
    version,
    about = "Subscribe to MQTT v5 topics and print the messages; the flags follow mosquitto_sub.",
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Topic filter to subscribe to (repeatable).
    #[arg(short = 't', long = "topic", env = "MQTT_TOPIC", value_delimiter = None)]
    topics: Vec<String>,
    /// Print `topic payload`.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', value_name = "COUNT")]
    count: Option<u64>,
    /// Exit with code 27 after this many seconds (unless -C was reached first).
    #[arg(short = 'W', value_name = "SECONDS")]
    timeout: Option<u64>,
    /// No newline after each message.
    #[arg(short = 'N')]
    no_newline: bool,
    /// Do not print stale retained messages.
    #[arg(short = 'R')]
    no_retained: bool,
    /// Print each message with this format (see below).
    #[arg(short = 'F', value_name = "FORMAT")]
    format: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sub: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("sub: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// One message as `sub` prints it.
fn render(out: &mut Vec<u8>, m: &Message, verbose: bool, format: Option<&str>, newline: bool) {
    match format {
        Some(f) => {
            let mut chars = f.chars();
            while let Some(ch) = chars.next() {
                match ch {
                    '%' => match chars.next() {
                        Some('t') => out.extend_from_slice(m.topic().as_bytes()),
                        Some('p') => out.extend_from_slice(m.payload()),
                        Some('q') => out.extend_from_slice((m.qos() as u8).to_string().as_bytes()),
                        Some('r') => out.push(if m.retain() { b'1' } else { b'0' }),
                        Some('l') => {
                            out.extend_from_slice(m.payload().len().to_string().as_bytes())
                        }
                        Some('%') => out.push(b'%'),
                        Some(other) => {
                            out.push(b'%');
                            out.extend_from_slice(other.to_string().as_bytes());
                        }
                        None => out.push(b'%'),
                    },
                    '\\' => match chars.next() {
                        Some('n') => out.push(b'\n'),
                        Some('t') => out.push(b'\t'),
                        Some('\\') => out.push(b'\\'),
                        Some(other) => {
                            out.push(b'\\');
                            out.extend_from_slice(other.to_string().as_bytes());
                        }
                        None => out.push(b'\\'),
                    },
                    c => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
        }
        None => {
            if verbose {
                out.extend_from_slice(m.topic().as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(m.payload());
        }
    }
    if newline {
        out.push(b'\n');
    }
}

async fn run(args: Args) -> Result<(), Fail> {
    let c = &args.common;
    let target = c.target()?;
    let mut topics = args.topics.clone();
    if topics.is_empty() {
        topics.extend(target.topic.clone());
    }
    if topics.is_empty() {
        return Err(Fail::new(
            exit::USAGE,
            "a topic is needed: -t TOPIC (or -L URL/TOPIC)",
        ));
    }
    if c.session_dir.is_some() && c.id.is_none() {
        return Err(Fail::new(
            exit::USAGE,
            "--session-dir needs -i CLIENT_ID (the session belongs to one client id)",
        ));
    }
    let id = c.client_id("paho-sub");
    // Acknowledge by hand, right after printing: never acknowledged before it is printed.
    let config = c.manager_config(&target, &id, true)?;
    let mgr = match &c.session_dir {
        Some(dir) => {
            let session = c.open_session(dir, &target, &id).await?;
            ConnectionManager::start(
                config,
                session,
                Arc::new(paho_queue::MemoryQueue::new(paho_queue::Limits::unbounded())),
            )
        }
        None => ConnectionManager::start_in_memory(config, c.session_config()),
    };
    let mut first = mgr.events();
    if c.debug {
        print_events(mgr.events());
    }
    let printed = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(Notify::new());
    let write_failed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    {
        let (printed, reached, write_failed) = (
            Arc::clone(&printed),
            Arc::clone(&reached),
            Arc::clone(&write_failed),
        );
        let (verbose, format, newline, limit, no_retained) = (
            args.verbose,
            args.format.clone(),
            !args.no_newline,
            args.count,
            args.no_retained,
        );
        // One buffer, reused: each message is rendered, then written with one write.
        let buf = Mutex::new(Vec::new());
        mgr.add_on_publish_received(move |m| {
            if no_retained && m.retain() {
                m.ack();
                return;
            }
            if limit.is_some_and(|l| printed.load(Ordering::SeqCst) >= l) {
                // Past -C: neither printed nor acknowledged (a persistent session keeps it).
                return;
            }
            let Ok(mut b) = buf.lock() else { return };
            b.clear();
            render(&mut b, m, verbose, format.as_deref(), newline);
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&b).and_then(|()| out.flush()) {
                if let Ok(mut w) = write_failed.lock() {
                    w.get_or_insert(e.to_string());
                }
                reached.notify_one();
                return;
            }
            m.ack();
            let n = printed.fetch_add(1, Ordering::SeqCst) + 1;
            if limit.is_some_and(|l| n >= l) {
                reached.notify_one();
            }
        });
    }
    let timeout = async {
        match args.timeout {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let work = async {
        first_connection(&mgr, &mut first, c.session_dir.is_some(), c.debug).await?;
        let options = SubscriptionOptions::qos(c.qos());
        let subs = topics
            .iter()
            .map(|t| Subscription::new(t.as_str(), options))
            .collect();
        let ack = mgr
            .subscribe(subs, Default::default())
            .await
            .map_err(|e| Fail::new(code_of(&e), format!("subscribe: {e}")))?;
        for (t, rc) in topics.iter().zip(ack.reason_codes.iter()) {
            let code = *rc as u8;
            if code >= 0x80 {
                return Err(Fail::new(
                    exit::FAILED,
                    format!("subscription to {t} refused (reason code 0x{code:02x})"),
                ));
            }
        }
        // Until -C is reached (or forever), while the manager runs.
        tokio::select! {
            () = reached.notified() => {}
            r = mgr.done() => {
                return Err(match r {
                    Ok(()) => Fail::new(exit::FAILED, "the connection manager stopped"),
                    Err(e) => Fail::new(code_of(&e), e.to_string()),
                });
            }
        }
        if let Some(e) = write_failed.lock().ok().and_then(|w| w.clone()) {
            return Err(Fail::new(exit::FAILED, format!("writing stdout: {e}")));
        }
        Ok(())
    };
    let r = tokio::select! {
        r = work => r,
        () = timeout => Err(Fail::new(exit::TIMEOUT, "timed out (-W)")),
        r = tokio::signal::ctrl_c() => r.map_err(|e| Fail::new(exit::FAILED, e.to_string())),
    };
    let _ = mgr.disconnect().await;
    r
}
