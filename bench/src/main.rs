//! `paho-bench`: this project's MQTT v5 client side by side with `rumqttc` and with a raw
//! socket (the physical ceiling), each doing exactly the same work in its own child process.
//!
//! ```text
//! cargo run --release -p paho-bench -- [scenario...] [--server URL] [--quick] [--rounds N] [--write-docs]
//! ```
//!
//! Scenarios: `sink` (client-limited, against the minimal server in [`sink`]), `mosquitto`
//! (end to end through a broker, publisher and subscriber of the same implementation),
//! `durable` (FileStore / FileQueue against their in-memory counterparts), `latency`
//! (percentiles at half the measured maximum rate), `connections` (connections per second and
//! memory per idle client, 1,000 clients). A mosquitto is spawned on a free loopback port
//! unless `--server` is given. `--quick` runs fewer messages, fewer cells and one round.
//!
//! # Layout
//!
//! - `main` (this file): dispatch between the parent (the harness) and a child (`child`
//!   subcommand, hidden; the parent re-executes its own binary with a [`job::Job`]).
//! - [`cli`]: the command line.
//! - [`scenarios`]: the cells of each scenario and the runner (rounds, children, sink,
//!   broker, delivery checks).
//! - [`child`]: a child's main: runtime, measurement window, `RESULT` line.
//! - [`impls`]: the three implementations ([`impls::ours`], [`impls::rumqttc`],
//!   [`impls::raw`]) behind one publisher shape, and the measured sequence.
//! - [`measure`]: getrusage, the counting global allocator, the in-process perf counter of
//!   system calls, RSS, the open-files limit.
//! - [`job`]: a child's job and report, the delivery [`job::Tracker`], the pacer.
//! - [`sink`]: the minimal MQTT v5 server for the client-limited scenario.
//! - [`wire`]: the hand-written wire format the raw client and the sink speak (not the
//!   project's codec, so that the ceiling does not move with it).
//! - [`report`]: tables, machine description, SVG chart, the `docs/BENCHMARKS.md` section.
//!
//! CI runs only `tests/smoke.rs`: a few hundred messages against the sink for all three
//! implementations, checking the delivery counts, and that a loss is flagged. Timings
//! belong in the benchmark, never in tests.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod child;
mod cli;
mod impls;
mod job;
mod measure;
mod report;
mod scenarios;
mod sink;
mod wire;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

#[global_allocator]
static ALLOC: measure::Counting = measure::Counting;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "child") {
        return child::main(&args[2..]);
    }
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paho-bench: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(parent(cli, &args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paho-bench: {e}");
            ExitCode::from(2)
        }
    }
}

async fn parent(cli: cli::Cli, args: &[String]) -> Result<ExitCode, String> {
    let started = Instant::now();
    let scenarios = cli.scenarios()?;
    // mosquitto inherits this limit (1,000 clients need 1,000 of its sockets too).
    let fds = measure::raise_fd_limit();
    if scenarios.contains(&"connections") && fds < 2100 {
        eprintln!("paho-bench: warning: the open-files limit is {fds}; 1,000 clients need more");
    }
    let load_before = report::loadavg();
    let mut runner = scenarios::Runner::new(&cli)?;
    let mut failed = None;
    for s in &scenarios {
        eprintln!("== scenario {s}");
        if let Err(e) = runner.scenario(s).await {
            failed = Some(format!("scenario {s}: {e}"));
            break;
        }
    }
    let broker = runner.broker_description();
    runner.shutdown().await;
    let total = started.elapsed().as_secs_f64();
    let tables = report::tables(&runner.results);
    let machine = report::machine(broker, &load_before, &report::loadavg());
    let command = format!(
        "cargo run --release -p paho-bench --{}",
        args.iter()
            .skip(1)
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    println!("{machine}\n{tables}");
    println!("total time: {total:.0} s ({command})");
    if cli.write_docs {
        let dir = cli
            .docs_dir
            .clone()
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"));
        let section = report::docs_section(&command, &machine, &tables, total);
        report::write_docs(&dir, &section, &report::svg(&runner.results))
            .map_err(|e| format!("writing {}: {e}", dir.display()))?;
        eprintln!("wrote {}/BENCHMARKS.md and bench-chart.svg", dir.display());
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if !runner.violations.is_empty() {
        eprintln!(
            "\n!!! {} VIOLATION(S): a delivery guarantee was broken or a run failed:",
            runner.violations.len()
        );
        for v in &runner.violations {
            eprintln!("!!!   {v}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
