//! The command line: `paho-bench [scenario...] [--server URL] [--quick] [--rounds N]
//! [--write-docs]`, and the hidden `child` form the harness re-executes itself with.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 5] = ["sink", "mosquitto", "durable", "latency", "connections"];

/// A side-by-side benchmark of this MQTT v5 client, rumqttc and a raw socket.
#[derive(Debug, Parser)]
#[command(name = "paho-bench", version)]
pub struct Cli {
    /// Scenarios to run (all when none is given): sink, mosquitto, durable, latency,
    /// connections.
    pub scenarios: Vec<String>,
    /// Use this broker (mqtt://host:port or host:port) instead of spawning a mosquitto.
    #[arg(long)]
    pub server: Option<String>,
    /// Fewer messages, fewer cells, one round: under 2 minutes for everything.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per cell (default 3, or 1 with --quick); each round runs the three
    /// implementations one after the other.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Write the tables into docs/BENCHMARKS.md (between markers) and the chart into
    /// docs/bench-chart.svg.
    #[arg(long)]
    pub write_docs: bool,
    /// Where the docs are (default: the workspace's docs/).
    #[arg(long, hide = true)]
    pub docs_dir: Option<PathBuf>,
    /// Test only: every cell publishes this many messages.
    #[arg(long, hide = true)]
    pub messages: Option<u64>,
    /// Test only: the raw publisher skips every N-th message (the harness must flag it).
    #[arg(long, hide = true)]
    pub drop_every: Option<u64>,
}

impl Cli {
    /// The scenarios asked for, validated, in run order.
    pub fn scenarios(&self) -> Result<Vec<&'static str>, String> {
        for s in &self.scenarios {
            if !SCENARIOS.contains(&s.as_str()) {
                return Err(format!(
                    "unknown scenario {s:?}; the scenarios are {}",
                    SCENARIOS.join(", ")
                ));
            }
        }
        Ok(SCENARIOS
            .into_iter()
            .filter(|s| self.scenarios.is_empty() || self.scenarios.iter().any(|a| a == s))
            .collect())
    }

    /// Rounds per cell.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }

    /// The `--server` address, resolved.
    pub fn server_addr(&self) -> Result<Option<SocketAddr>, String> {
        let Some(s) = &self.server else {
            return Ok(None);
        };
        let hostport = s
            .strip_prefix("mqtt://")
            .or_else(|| s.strip_prefix("tcp://"))
            .unwrap_or(s)
            .trim_end_matches('/');
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:1883")
        };
        hostport
            .to_socket_addrs()
            .map_err(|e| format!("--server {s}: {e}"))?
            .next()
            .map(Some)
            .ok_or_else(|| format!("--server {s}: no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_validated_and_ordered() {
        let c = Cli::parse_from(["paho-bench", "latency", "sink", "--quick"]);
        assert_eq!(c.scenarios().unwrap(), vec!["sink", "latency"]);
        assert_eq!(c.rounds(), 1);
        let c = Cli::parse_from(["paho-bench"]);
        assert_eq!(c.scenarios().unwrap().len(), 5);
        assert_eq!(c.rounds(), 3);
        assert!(Cli::parse_from(["paho-bench", "nope"]).scenarios().is_err());
    }

    #[test]
    fn server_urls_resolve() {
        let c = Cli::parse_from(["paho-bench", "--server", "mqtt://127.0.0.1:1999"]);
        assert_eq!(
            c.server_addr().unwrap(),
            Some("127.0.0.1:1999".parse().unwrap())
        );
        let c = Cli::parse_from(["paho-bench", "--server", "127.0.0.1"]);
        assert_eq!(
            c.server_addr().unwrap(),
            Some("127.0.0.1:1883".parse().unwrap())
        );
    }
}
