//! `rpc`: request/response over MQTT v5 with `paho::extensions::rpc`.
//!
//! A responder subscribes to `rpc/add` and answers each request ("1 2 3") with the sum, on
//! the request's Response Topic with its Correlation Data; a requester sends `--requests N`
//! requests concurrently and checks every answer. By default both talk to an embedded
//! broker on 127.0.0.1; `--server mqtt://host:port` uses a real one. Exits 0 when every
//! answer is right, 1 otherwise, 2 on bad flags, 3 when the broker cannot be reached.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use paho::extensions::rpc::{response_to, Requester};
use paho::packets::{Publish, QoS};
use paho::session::SessionConfig;
use paho::{Chain, Client, ConnectOptions, SessionHandle};
use tokio::net::TcpStream;

/// Request/response over MQTT v5: a responder that adds numbers and a requester that checks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The broker (`mqtt://host:port`); without it, an embedded broker on 127.0.0.1.
    #[arg(long)]
    server: Option<String>,
    /// How many requests to send (concurrently).
    #[arg(long, default_value_t = 10)]
    requests: u32,
    /// How long to wait for each answer, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

async fn connect(addr: &str, id: &str) -> Result<(Client, paho::Incoming), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let options = ConnectOptions::builder()
        .client_id(id)
        .build()
        .map_err(|e| e.to_string())?;
    Client::connect(tcp, options, SessionHandle::in_memory(SessionConfig::new()))
        .await
        .map_err(|e| format!("{addr} refused {id}: {e}"))
}

/// "1 2 3" -> "6"; anything else -> an error text (the requester reports it).
fn answer(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    let mut sum: i64 = 0;
    for word in text.split_whitespace() {
        match word.parse::<i64>() {
            Ok(n) => sum = sum.saturating_add(n),
            Err(_) => return format!("error: {word:?} is not a number"),
        }
    }
    sum.to_string()
}

async fn run(args: Args) -> Result<bool, (u8, String)> {
    let embedded;
    let addr = match &args.server {
        Some(url) => {
            let url = autopaho::ServerUrl::parse(url).map_err(|e| (2, e.to_string()))?;
            format!("{}:{}", url.host(), url.port())
        }
        None => {
            embedded = paho_testserver::TestServer::start()
                .await
                .map_err(|e| (1, format!("embedded broker: {e}")))?;
            embedded.addr().to_string()
        }
    };
    // The responder: answers on each request's Response Topic.
    let (responder, requests) = connect(&addr, "rpc-responder").await.map_err(|e| (3, e))?;
    responder
        .subscribe_to("rpc/add", QoS::AtLeastOnce)
        .await
        .map_err(|e| (1, e.to_string()))?;
    let answering = responder.clone();
    tokio::spawn(async move {
        let mut requests = requests;
        while let Some(m) = requests.recv().await {
            if let Some(reply) = response_to(&m, answer(m.payload())) {
                // Never waits: a handler must not block the messages behind it.
                drop(answering.start_publish(reply));
            }
        }
    });

    // The requester: its responses go through the handler chain of its own connection.
    let (client, incoming) = connect(&addr, "rpc-requester").await.map_err(|e| (3, e))?;
    let rpc = Requester::new(client.clone(), "rpc/replies/rpc-requester")
        .await
        .map_err(|e| (1, e.to_string()))?;
    tokio::spawn(incoming.dispatch(Chain::new().then(rpc.responses())));

    let mut calls = Vec::new();
    for i in 0..args.requests {
        let rpc = rpc.clone();
        let numbers = format!("{i} {} {}", i * 2, i * 3);
        let timeout = Duration::from_secs(args.timeout);
        calls.push(tokio::spawn(async move {
            let request = Publish {
                topic: "rpc/add".into(),
                qos: QoS::AtLeastOnce,
                payload: numbers.clone().into(),
                ..Default::default()
            };
            (i, numbers, rpc.request(request, timeout).await)
        }));
    }
    let mut right = 0;
    for call in calls {
        let (i, numbers, result) = call.await.map_err(|e| (1, e.to_string()))?;
        match result {
            Ok(response) => {
                let got = String::from_utf8_lossy(&response.payload).into_owned();
                let want = (i64::from(i) * 6).to_string();
                if got == want {
                    right += 1;
                    println!("add {numbers} = {got}");
                } else {
                    println!("add {numbers}: wrong answer {got:?} (want {want})");
                }
            }
            Err(e) => println!("add {numbers}: no answer ({e})"),
        }
    }
    println!("requests {}", args.requests);
    println!("answered {right}");
    let _ = client.disconnect_normally().await;
    let _ = responder.disconnect_normally().await;
    Ok(right == args.requests)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            eprintln!(
                "rpc: {}",
                e.to_string().lines().next().unwrap_or("bad arguments")
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help, --version
            print!("{e}");
            return ExitCode::SUCCESS;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rpc: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err((code, message)) => {
            eprintln!("rpc: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn adds_and_refuses_what_is_not_a_number() {
        assert_eq!(answer(b"1 2 3"), "6");
        assert_eq!(answer(b""), "0");
        assert!(answer(b"1 x").starts_with("error"));
    }
}
