//! The child process: one implementation doing one job, measured, reported on stdout.

use std::process::ExitCode;
use std::time::Duration;

use crate::impls;
use crate::job::Job;
use crate::measure::{self, SyscallCounter, Window};

/// Runs the job described by `args` (the arguments after `child`).
pub fn main(args: &[String]) -> ExitCode {
    let job = match Job::from_args(args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("paho-bench child: {e}");
            return ExitCode::from(2);
        }
    };
    measure::raise_fd_limit();
    // Before the runtime starts its threads, so that they inherit the counter.
    let syscalls = SyscallCounter::open();
    let counting = syscalls.is_some();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paho-bench child: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut w = Window::new(syscalls);
    let result = rt.block_on(impls::run(&job, &mut w));
    rt.shutdown_timeout(Duration::from_secs(1));
    match (result, w.measured) {
        (Ok(mut r), Some(m)) => {
            r.set("wall_s", m.wall.as_secs_f64());
            r.set("cpu_s", m.cpu.as_secs_f64());
            r.set("allocs", m.allocs as f64);
            if let (true, Some(s)) = (counting, m.syscalls) {
                r.set("syscalls", s as f64);
            }
            r.set("maxrss_kib", measure::max_rss_kib() as f64);
            println!("{}", r.to_line());
            ExitCode::SUCCESS
        }
        (Ok(_), None) => {
            eprintln!(
                "paho-bench child {}: the window was never measured",
                job.imp
            );
            ExitCode::FAILURE
        }
        (Err(e), _) => {
            eprintln!("paho-bench child {}: {e}", job.imp);
            ExitCode::FAILURE
        }
    }
}
