//! The scenarios as lists of cells, and the runner: for each cell, `rounds` rounds of the
//! rows (normally the three implementations) one after the other, A B C A B C, each in a
//! fresh child process. It checks every run's delivery counts against what its QoS promises.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use paho_testserver::mosquitto::{self, Mosquitto};
use tokio::process::Command;

use crate::cli::Cli;
use crate::job::{Impl, Job, Kind, Report, Storage};
use crate::sink::Sink;

/// One line of a cell's table: an implementation, and for ours its storage.
#[derive(Debug, Clone)]
pub struct Row {
    /// The name shown in tables.
    pub name: String,
    /// The implementation.
    pub imp: Impl,
    /// Ours: the session store or queue.
    pub storage: Storage,
}

impl Row {
    fn plain(imp: Impl) -> Row {
        Row {
            name: imp.name().to_string(),
            imp,
            storage: Storage::Memory,
        }
    }

    fn three() -> Vec<Row> {
        Impl::ALL.into_iter().map(Row::plain).collect()
    }
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The scenario's name.
    pub scenario: &'static str,
    /// What varies between cells, for tables ("QoS 1, 16 B, RM 100").
    pub label: String,
    /// What the children measure.
    pub kind: Kind,
    /// QoS.
    pub qos: u8,
    /// Payload bytes.
    pub size: usize,
    /// Messages per run.
    pub n: u64,
    /// Sink only: the Receive Maximum it advertises.
    pub rm: Option<u16>,
    /// Through a broker, to a subscriber.
    pub subscribe: bool,
    /// Latency: messages per second.
    pub rate: u64,
    /// Connections: clients.
    pub clients: usize,
    /// The rows, run in this order in every round.
    pub rows: Vec<Row>,
}

/// A cell's runs: per row, one report per round that succeeded.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// Per row (same order as `cell.rows`), the reports of its runs.
    pub runs: Vec<Vec<Report>>,
}

/// Everything a harness run collects.
#[derive(Debug)]
pub struct Runner {
    exe: PathBuf,
    rounds: usize,
    quick: bool,
    messages: Option<u64>,
    drop_every: u64,
    server: Option<SocketAddr>,
    broker: Option<Mosquitto>,
    /// Every cell measured, in order.
    pub results: Vec<CellResult>,
    /// Delivery guarantees broken, and failed runs: any of them makes the harness fail.
    pub violations: Vec<String>,
}

fn kib(size: usize) -> String {
    match size {
        s if s >= 1024 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

impl Runner {
    /// A runner for the command line given.
    pub fn new(cli: &Cli) -> Result<Runner, String> {
        Ok(Runner {
            exe: std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?,
            rounds: cli.rounds(),
            quick: cli.quick,
            messages: cli.messages,
            drop_every: cli.drop_every.unwrap_or(0),
            server: cli.server_addr()?,
            broker: None,
            results: Vec::new(),
            violations: Vec::new(),
        })
    }

    /// The broker's version line, if one was spawned.
    pub fn broker_description(&self) -> Option<String> {
        match (&self.server, &self.broker) {
            (Some(s), _) => Some(format!("the broker at {s} (--server)")),
            (None, Some(_)) => Some(
                "mosquitto spawned on a free loopback port (max_inflight_messages 100, \
                 max_queued_messages 0, persistence off)"
                    .to_string(),
            ),
            _ => None,
        }
    }

    fn n(&self, full: u64) -> u64 {
        self.messages.unwrap_or(if self.quick {
            (full / 5).max(100)
        } else {
            full
        })
    }

    async fn broker(&mut self) -> Result<SocketAddr, String> {
        if let Some(s) = self.server {
            return Ok(s);
        }
        if self.broker.is_none() {
            let builder = mosquitto::require()
                .ok_or("mosquitto is not installed (install the Debian package `mosquitto` or pass --server)")?;
            let m = builder
                // The Receive Maximum our publishers see; the queue per subscriber is not
                // limited, so that a slow subscriber slows the run instead of losing QoS 1/2
                // messages (mosquitto drops past max_queued_messages, 1,000 by default).
                .config("max_inflight_messages 100")
                .config("max_queued_messages 0")
                .start()
                .await
                .map_err(|e| format!("mosquitto failed to start: {e}"))?;
            self.broker = Some(m);
        }
        self.broker
            .as_ref()
            .map(|b| b.addr())
            .ok_or_else(|| "no broker".to_string())
    }

    /// Runs one scenario.
    pub async fn scenario(&mut self, name: &str) -> Result<(), String> {
        let cells = match name {
            "sink" => self.sink_cells(),
            "mosquitto" => self.mosquitto_cells(),
            "durable" => self.durable_cells(),
            "latency" => self.latency_cells().await?,
            "connections" => self.connection_cells(),
            other => return Err(format!("unknown scenario {other}")),
        };
        for cell in cells {
            let r = self.cell(cell).await?;
            self.results.push(r);
        }
        Ok(())
    }

    fn cell_of(&self, scenario: &'static str, qos: u8, size: usize, n: u64) -> Cell {
        Cell {
            scenario,
            label: format!("QoS {qos}, {}", kib(size)),
            kind: Kind::Throughput,
            qos,
            size,
            n: self.n(n),
            rm: None,
            subscribe: scenario != "sink",
            rate: 0,
            clients: 0,
            rows: Row::three(),
        }
    }

    fn sink_cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        let sizes: &[usize] = &[16, 1024];
        for qos in 0..=2u8 {
            for &size in sizes {
                // Receive Maximum does not apply to QoS 0: one cell.
                let rms: &[u16] = if qos == 0 {
                    &[u16::MAX]
                } else {
                    &[100, u16::MAX]
                };
                for &rm in rms {
                    let quick_cell = matches!(
                        (qos, size, rm),
                        (0, 16, _) | (1 | 2, 16, 100) | (1, 1024, u16::MAX)
                    );
                    if self.quick && !quick_cell {
                        continue;
                    }
                    let n = match (qos, size) {
                        (0, 16) => 300_000,
                        (0, _) => 200_000,
                        (1, _) => 100_000,
                        _ => 60_000,
                    };
                    let mut c = self.cell_of("sink", qos, size, n);
                    c.rm = Some(rm);
                    if qos > 0 {
                        c.label = format!("{}, RM {rm}", c.label);
                    }
                    cells.push(c);
                }
            }
        }
        cells
    }

    fn mosquitto_cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for qos in 0..=2u8 {
            for size in [16usize, 1024, 65_536] {
                if self.quick && !(size == 16 || (qos == 1 && size == 1024)) {
                    continue;
                }
                let n = match (qos, size) {
                    (_, 65_536) => 3_000,
                    (0, _) => 30_000,
                    (1, _) => 20_000,
                    _ => 15_000,
                };
                cells.push(self.cell_of("mosquitto", qos, size, n));
            }
        }
        cells
    }

    fn durable_cells(&self) -> Vec<Cell> {
        let ours = |name: &str, storage| Row {
            name: name.to_string(),
            imp: Impl::Ours,
            storage,
        };
        let mut store = self.cell_of("durable", 1, 16, 10_000);
        store.label = "QoS 1, 16 B, session store".into();
        store.rows = vec![
            ours("ours MemoryStore", Storage::Memory),
            ours("ours FileStore", Storage::FileStore),
            Row::plain(Impl::Rumqttc),
            Row::plain(Impl::Raw),
        ];
        let mut queue = self.cell_of("durable", 1, 16, 2_000);
        queue.label = "QoS 1, 16 B, publish_via_queue".into();
        queue.rows = vec![
            ours("ours MemoryQueue", Storage::MemoryQueue),
            ours("ours FileQueue", Storage::FileQueue),
        ];
        vec![store, queue]
    }

    /// Latency at half the measured maximum: the lowest of the three implementations'
    /// median end-to-end rates at that QoS and 16 B (so that each can sustain it), from the
    /// mosquitto scenario of this run, or from a calibration run of that cell.
    async fn latency_cells(&mut self) -> Result<Vec<Cell>, String> {
        let qoss: &[u8] = if self.quick { &[1] } else { &[0, 1, 2] };
        let secs = if self.quick { 1 } else { 2 };
        let mut cells = Vec::new();
        for &qos in qoss {
            let max = match self.max_rate(qos) {
                Some(m) => m,
                None => {
                    let mut c = self.cell_of("mosquitto", qos, 16, 20_000);
                    c.n = self.messages.unwrap_or(20_000);
                    eprintln!("[latency] calibrating QoS {qos}: end-to-end maximum of each implementation");
                    let saved = std::mem::replace(&mut self.rounds, 1);
                    let r = self.cell(c).await;
                    self.rounds = saved;
                    let r = r?;
                    min_median_rate(&r).ok_or("calibration failed")?
                }
            };
            let rate = ((max / 2.0) as u64).max(100);
            let mut c = self.cell_of("latency", qos, 16, 0);
            c.kind = Kind::Latency;
            c.rate = rate;
            c.n = self.messages.unwrap_or(rate * secs);
            c.label = format!("QoS {qos}, 16 B, {rate} msg/s");
            cells.push(c);
        }
        Ok(cells)
    }

    fn max_rate(&self, qos: u8) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.cell.scenario == "mosquitto" && r.cell.qos == qos && r.cell.size == 16)
            .and_then(min_median_rate)
    }

    fn connection_cells(&self) -> Vec<Cell> {
        let mut c = self.cell_of("connections", 0, 16, 0);
        c.kind = Kind::Connections;
        c.clients = self.messages.map_or(1000, |m| m.min(1000) as usize);
        c.n = c.clients as u64;
        c.subscribe = false;
        c.label = format!("{} clients", c.clients);
        vec![c]
    }

    async fn cell(&mut self, cell: Cell) -> Result<CellResult, String> {
        let mut runs = vec![Vec::new(); cell.rows.len()];
        for round in 0..self.rounds {
            for (k, row) in cell.rows.iter().enumerate() {
                let what = format!(
                    "[{}] {} round {}/{} {}",
                    cell.scenario,
                    cell.label,
                    round + 1,
                    self.rounds,
                    row.name
                );
                match self.run(&cell, row).await {
                    Ok(r) => {
                        let v = check(&cell, &r);
                        eprintln!("{what}: {}", summary(&cell, &r));
                        for v in v {
                            let msg = format!("{what}: {v}");
                            eprintln!("VIOLATION {msg}");
                            self.violations.push(msg);
                        }
                        runs[k].push(r);
                    }
                    Err(e) => {
                        let msg = format!("{what}: run failed: {e}");
                        eprintln!("VIOLATION {msg}");
                        self.violations.push(msg);
                    }
                }
            }
        }
        Ok(CellResult { cell, runs })
    }

    async fn run(&mut self, cell: &Cell, row: &Row) -> Result<Report, String> {
        let sink = match cell.rm {
            Some(rm) => Some(
                Sink::start(rm, cell.n, cell.qos)
                    .await
                    .map_err(|e| format!("sink: {e}"))?,
            ),
            None => None,
        };
        let addr = match &sink {
            Some(s) => s.addr(),
            None => self.broker().await?,
        };
        let dir = if matches!(row.storage, Storage::FileStore | Storage::FileQueue) {
            let base = self
                .exe
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            Some(tempfile::tempdir_in(base).map_err(|e| format!("tempdir: {e}"))?)
        } else {
            None
        };
        let job = Job {
            kind: cell.kind,
            imp: row.imp,
            addr,
            qos: cell.qos,
            size: cell.size,
            n: cell.n,
            subscribe: cell.subscribe,
            storage: row.storage,
            rate: cell.rate,
            clients: cell.clients,
            dir: dir.as_ref().map(|d| d.path().to_path_buf()),
            drop_every: if row.imp == Impl::Raw {
                self.drop_every
            } else {
                0
            },
        };
        let child = Command::new(&self.exe)
            .arg("child")
            .args(job.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(600), child)
            .await
            .map_err(|_| "the child hung for 600 s".to_string())?
            .map_err(|e| format!("spawning the child: {e}"))?;
        if !out.status.success() {
            return Err(format!("the child exited with {}", out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut r = stdout
            .lines()
            .rev()
            .find_map(Report::from_line)
            .ok_or("the child printed no RESULT line")?;
        if let Some(s) = sink {
            // The sink saw what arrived; give the last acknowledgements' packets a moment
            // (they were all read before the fence was acknowledged, so this is only for
            // the counts' lock).
            tokio::time::sleep(Duration::from_millis(10)).await;
            let c = s.tracker().counts();
            r.set("lost", c.lost(cell.n) as f64);
            r.set("dup", c.dup as f64);
            r.set("bad", c.bad as f64);
            r.set("fence", if c.fence { 1.0 } else { 0.0 });
        }
        Ok(r)
    }

    /// Stops the broker, if spawned.
    pub async fn shutdown(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.stop().await;
        }
    }
}

/// The lowest median msg/s among a cell's rows.
fn min_median_rate(r: &CellResult) -> Option<f64> {
    r.runs
        .iter()
        .filter_map(|runs| {
            let v: Vec<f64> = runs.iter().filter_map(rate).collect();
            crate::report::median(&v)
        })
        .min_by(|a, b| a.total_cmp(b))
}

/// Messages per second of a run.
pub fn rate(r: &Report) -> Option<f64> {
    Some(r.get("msgs")? / r.get("wall_s")?)
}

fn summary(cell: &Cell, r: &Report) -> String {
    let per = |k: &str| r.get(k).map(|v| v / r.get("msgs").unwrap_or(1.0));
    let mut s = match cell.kind {
        Kind::Connections => format!(
            "{:.0} conn/s, {:.1} KiB/client",
            r.get("conn_per_s").unwrap_or(0.0),
            r.get("kib_per_client").unwrap_or(0.0)
        ),
        _ => format!(
            "{:.0} msg/s, {:.2} µs CPU/msg",
            rate(r).unwrap_or(0.0),
            per("cpu_s").unwrap_or(0.0) * 1e6
        ),
    };
    if let Some(p) = r.get("p99_us") {
        s.push_str(&format!(
            ", p50 {:.0} µs, p99 {p:.0} µs",
            r.get("p50_us").unwrap_or(0.0)
        ));
    }
    if let Some(l) = r.get("lost") {
        s.push_str(&format!(", lost {l}, dup {}", r.get("dup").unwrap_or(0.0)));
    }
    s
}

/// What a run broke of its QoS's promise: QoS 0 at most once (no duplicates), QoS 1 at
/// least once (no loss; duplicates are allowed but reported), QoS 2 exactly once; and the
/// fence (QoS 1) must arrive. Connections have nothing to check here.
pub fn check(cell: &Cell, r: &Report) -> Vec<String> {
    if cell.kind == Kind::Connections {
        return Vec::new();
    }
    let get = |k| r.get(k).unwrap_or(0.0) as u64;
    let mut v = Vec::new();
    if r.get("lost").is_none() {
        v.push("no delivery counts reported".to_string());
        return v;
    }
    let (lost, dup, bad) = (get("lost"), get("dup"), get("bad"));
    if cell.qos >= 1 && lost > 0 {
        v.push(format!(
            "{lost} of {} QoS {} messages lost",
            cell.n, cell.qos
        ));
    }
    if cell.qos != 1 && dup > 0 {
        v.push(format!("{dup} QoS {} messages duplicated", cell.qos));
    }
    if bad > 0 {
        v.push(format!("{bad} payloads without a valid message number"));
    }
    if get("fence") == 0 {
        v.push("the fence (QoS 1) never arrived".to_string());
    }
    v
}

/// Per scenario, its cells in run order.
pub fn by_scenario(results: &[CellResult]) -> BTreeMap<&'static str, Vec<&CellResult>> {
    let mut m: BTreeMap<&'static str, Vec<&CellResult>> = BTreeMap::new();
    for r in results {
        m.entry(r.cell.scenario).or_default().push(r);
    }
    m
}
