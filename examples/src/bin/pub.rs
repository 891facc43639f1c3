//! `pub`: publish MQTT v5 messages, with mosquitto_pub's flags, and a durable outbox with
//! `--session-dir`. See `pub --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use autopaho::{ConnectionManager, Event};
use bytes::Bytes;
use clap::Parser;
use paho::packets::{Publish, PublishProperties};
use paho::session::FileStore;
use paho::SessionHandle;
use paho_examples::{code_of, exit, first_connection, print_events, Common, Fail};
use paho_queue::FileQueue;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const ABOUT: &str = "Publish MQTT v5 messages; the flags follow mosquitto_pub.";

const LONG_ABOUT: &str = "\
Publish MQTT v5 messages; the flags follow mosquitto_pub (-V mqttv5 is accepted and ignored: \
it always speaks MQTT v5).

Exactly one message source: -m MSG, -f FILE, -n (an empty message), -s (all of stdin as one \
message) or -l (one message per line of stdin). pub exits 0 once the broker acknowledged every \
message (at QoS 0: once written).

--session-dir DIR keeps the session (DIR/session) and a durable outgoing queue (DIR/queue): \
each message is fsynced there before pub goes on, pub reconnects by itself, and if it is \
killed, running it again with the same -i and --session-dir (and an empty stdin: \
`pub ... </dev/null`) delivers what was queued or in flight, then exits 0, even when the \
broker has forgotten the session meanwhile (it is then published again as new: at QoS 2 a \
message the broker had already passed on can then come twice).

A message larger than the broker's Maximum Packet Size is an error (exit 7), never dropped in \
silence.";

const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 failed (connection lost for good, publish refused, stdin/file \
unreadable); 2 bad flags; 3 broker unreachable; 4 CONNECT refused; 5 TLS failure; 6 \
--session-dir in use by another process; 7 message over the broker's Maximum Packet Size; 8 \
--session-dir unusable.

Environment: MQTT_HOST, MQTT_PORT, MQTT_CLIENT_ID, MQTT_QOS, MQTT_TOPIC, PAHO_SESSION_DIR \
stand for -h, -p, -i, -q, -t, --session-dir.";

#[derive(Parser, Debug)]
#[command(
    name = "pub",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    disable_help_flag = true,
    disable_version_flag = true,
    group(clap::ArgGroup::new("source").required(true).args(["message", "file", "null", "stdin_file", "lines"]))
)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic", env = "MQTT_TOPIC")]
    topic: Option<String>,
    /// The message.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// Send this file's contents as the message.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send an empty (null) message.
    #[arg(short = 'n', long = "null-message")]
    null: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file")]
    stdin_file: bool,
    /// Send each line of stdin as a message.
    #[arg(short = 'l', long = "stdin-line")]
    lines: bool,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Send the message this many times (-m, -f, -n, -s).
    #[arg(long = "repeat", default_value_t = 1, value_name = "N")]
    repeat: u32,
    /// Seconds between repeats.
    #[arg(long = "repeat-delay", default_value_t = 0.0, value_name = "SECONDS")]
    repeat_delay: f64,
    /// A PUBLISH property, as mosquitto spells it: -D publish message-expiry-interval 60,
    /// content-type, response-topic, correlation-data, payload-format-indicator, or
    /// user-property NAME VALUE.
    #[arg(short = 'D', long = "property", num_args = 3..=4, value_names = ["COMMAND", "NAME", "VALUE"], action = clap::ArgAction::Append)]
    properties: Vec<String>,
    /// The -D occurrences, grouped (filled from the matches).
    #[arg(skip)]
    property_groups: Vec<Vec<String>>,
}

fn main() -> ExitCode {
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let mut args = match <Args as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    args.property_groups = matches
        .get_occurrences::<String>("properties")
        .map(|o| o.map(|v| v.cloned().collect()).collect())
        .unwrap_or_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pub: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("pub: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn properties(list: &[Vec<String>]) -> Result<PublishProperties, Fail> {
    let usage = |m: String| Fail::new(exit::USAGE, m);
    let mut p = PublishProperties::default();
    for d in list {
        let (cmd, name) = (d[0].as_str(), d[1].as_str());
        if cmd != "publish" {
            return Err(usage(format!(
                "-D {cmd}: only `publish` properties are supported"
            )));
        }
        let value = d[2].as_str();
        let need3 =
            |p: &mut PublishProperties,
             f: fn(&mut PublishProperties, &str) -> Result<(), String>| {
                if d.len() != 3 {
                    return Err(usage(format!("-D publish {name} takes one value")));
                }
                f(p, value).map_err(|e| usage(format!("-D publish {name}: {e}")))
            };
        match name {
            "message-expiry-interval" => need3(&mut p, |p, v| {
                p.message_expiry_interval = Some(v.parse().map_err(|_| "not a number")?);
                Ok(())
            })?,
            "content-type" => need3(&mut p, |p, v| {
                p.content_type = Some(v.into());
                Ok(())
            })?,
            "response-topic" => need3(&mut p, |p, v| {
                p.response_topic = Some(v.into());
                Ok(())
            })?,
            "correlation-data" => need3(&mut p, |p, v| {
                p.correlation_data = Some(Bytes::copy_from_slice(v.as_bytes()));
                Ok(())
            })?,
            "payload-format-indicator" => need3(&mut p, |p, v| {
                p.payload_format_indicator = Some(match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err("0 or 1".into()),
                });
                Ok(())
            })?,
            "user-property" => {
                let [_, _, k, v] = d.as_slice() else {
                    return Err(usage("-D publish user-property takes NAME VALUE".into()));
                };
                p.user_properties
                    .push((k.as_str().into(), v.as_str().into()));
            }
            other => return Err(usage(format!("-D publish {other}: unknown property"))),
        }
    }
    Ok(p)
}

/// What the run holds: the manager, and with `--session-dir` the session and the queue.
struct Outbox {
    mgr: ConnectionManager,
    durable: Option<(SessionHandle<FileStore>, Arc<FileQueue>)>,
}

async fn run(args: Args) -> Result<(), Fail> {
    let c = &args.common;
    let target = c.target()?;
    let topic =
        args.topic.clone().or(target.topic.clone()).ok_or_else(|| {
            Fail::new(exit::USAGE, "a topic is needed: -t TOPIC (or -L URL/TOPIC)")
        })?;
    let props = properties(&args.property_groups)?;
    if c.session_dir.is_some() && c.id.is_none() {
        return Err(Fail::new(
            exit::USAGE,
            "--session-dir needs -i CLIENT_ID (the session belongs to one client id)",
        ));
    }
    let id = c.client_id("paho-pub");
    let start = || async {
        let config = c.manager_config(&target, &id, false)?;
        Ok::<_, Fail>(match &c.session_dir {
            Some(dir) => {
                let session = c.open_session(dir, &target, &id).await?;
                let queue = FileQueue::builder(dir.join("queue"))
                    .open()
                    .await
                    .map_err(|e| {
                        let code = match e {
                            paho_queue::Error::AlreadyOpen { .. } => exit::LOCKED,
                            _ => exit::STORE,
                        };
                        Fail::new(code, format!("--session-dir {}: {e}", dir.display()))
                    })?;
                let queue = Arc::new(queue);
                Outbox {
                    mgr: ConnectionManager::start(config, session.clone(), Arc::clone(&queue)),
                    durable: Some((session, queue)),
                }
            }
            None => Outbox {
                mgr: ConnectionManager::start_in_memory(config, c.session_config()),
                durable: None,
            },
        })
    };
    let outbox = start().await?;
    // Taken before anything awaits (a current-thread runtime: the manager has not run yet).
    let mut first = outbox.mgr.events();
    let fatal = watch_fatal(outbox.mgr.events(), c.session_dir.is_some());
    if c.debug {
        print_events(outbox.mgr.events());
    }
    let retry = c.session_dir.is_some();
    let work = async {
        if !retry {
            // Without an outbox, fail fast like mosquitto_pub when the broker is not there.
            first_connection(&outbox.mgr, &mut first, false, false).await?;
        }
        let mut outcomes = JoinSet::new();
        let template = Publish {
            topic: topic.as_str().into(),
            qos: c.qos(),
            retain: args.retain,
            properties: props.clone(),
            ..Default::default()
        };
        let debug = c.debug;
        let send = |payload: Bytes| {
            let mut p = template.clone();
            p.payload = payload;
            let mgr = outbox.mgr.clone();
            async move {
                let q = mgr
                    .publish_via_queue(p)
                    .await
                    .map_err(|e| Fail::new(code_of(&e), format!("publish: {e}")))?;
                if debug {
                    // Durable in the queue (with --session-dir, fsynced) from here on.
                    eprintln!("queued {}", q.seq());
                }
                Ok::<_, Fail>(q)
            }
        };
        if args.lines {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| Fail::new(exit::FAILED, format!("reading stdin: {e}")))?
            {
                let q = send(Bytes::from(line)).await?;
                outcomes.spawn(q.outcome());
            }
        } else {
            let payload = if let Some(m) = &args.message {
                Bytes::from(m.clone())
            } else if let Some(f) = &args.file {
                Bytes::from(
                    tokio::fs::read(f)
                        .await
                        .map_err(|e| Fail::new(exit::FAILED, format!("{}: {e}", f.display())))?,
                )
            } else if args.stdin_file {
                let mut buf = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut buf)
                    .await
                    .map_err(|e| Fail::new(exit::FAILED, format!("reading stdin: {e}")))?;
                Bytes::from(buf)
            } else {
                Bytes::new()
            };
            for r in 0..args.repeat {
                let q = send(payload.clone()).await?;
                outcomes.spawn(q.outcome());
                if r + 1 < args.repeat && args.repeat_delay > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
                }
            }
        }
        while let Some(r) = outcomes.join_next().await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Fail::new(code_of(&e), format!("publish: {e}"))),
                Err(e) => return Err(Fail::new(exit::FAILED, e.to_string())),
            }
        }
        Ok(())
    };
    let mut fatal = fatal;
    tokio::select! {
        r = work => r?,
        f = fatal.recv() => {
            let _ = outbox.mgr.disconnect().await;
            return Err(f.unwrap_or_else(|| Fail::new(exit::FAILED, "stopped")));
        }
    }
    let Outbox { mgr, durable } = outbox;
    let Some((session, queue)) = durable else {
        return mgr
            .disconnect()
            .await
            .map_err(|e| Fail::new(code_of(&e), e.to_string()));
    };
    // With --session-dir: also what an earlier run left in the queue and the session. The
    // session's count can only be read while no connection drives it, so: wait for the
    // queue to empty, disconnect, look; if something is left, connect again for a while.
    let mut mgr = mgr;
    let mut grace = Duration::from_millis(100);
    loop {
        tokio::select! {
            r = drain_queue(&mgr) => r?,
            f = fatal.recv() => {
                let _ = mgr.disconnect().await;
                return Err(f.unwrap_or_else(|| Fail::new(exit::FAILED, "stopped")));
            }
        }
        let _ = mgr.disconnect().await;
        drop(mgr);
        let left = session.stats().map_or(usize::MAX, |s| s.unfinished);
        if left == 0 {
            return Ok(());
        }
        if c.debug {
            eprintln!("{left} exchanges still open; connecting again");
        }
        let config = c.manager_config(&target, &id, false)?;
        mgr = ConnectionManager::start(config, session.clone(), Arc::clone(&queue));
        fatal = watch_fatal(mgr.events(), true);
        let mut ev = mgr.events();
        if c.debug {
            print_events(mgr.events());
        }
        first_connection(&mgr, &mut ev, true, c.debug).await?;
        tokio::time::sleep(grace).await;
        grace = (grace * 2).min(Duration::from_secs(5));
    }
}

/// Waits until the manager is connected and its queue is empty.
async fn drain_queue(mgr: &ConnectionManager) -> Result<(), Fail> {
    loop {
        mgr.await_connection()
            .await
            .map_err(|e| Fail::new(code_of(&e), e.to_string()))?;
        if mgr.stats().queue_len == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Watches the events for what must end the run: a refusing broker, a TLS failure, an
/// unreachable broker when there is no outbox to wait in, a message the broker can never
/// take.
fn watch_fatal(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    retry: bool,
) -> mpsc::Receiver<Fail> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            let e = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let fail = match e {
                Event::ConnectFailed { server, error } => {
                    let code = code_of(&error);
                    if retry && code == exit::UNREACHABLE {
                        continue;
                    }
                    Fail::new(code, format!("{server}: {error}"))
                }
                Event::QueueRefused { seq, error } => {
                    let code = match code_of(&error) {
                        exit::TOO_LARGE => exit::TOO_LARGE,
                        _ => exit::FAILED,
                    };
                    Fail::new(code, format!("message {seq} refused: {error}"))
                }
                _ => continue,
            };
            let _ = tx.send(fail).await;
            return;
        }
    });
    rx
}
