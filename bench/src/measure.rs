//! What a child measures over its window: wall time, CPU time (getrusage), system calls
//! (perf's `raw_syscalls:sys_enter` tracepoint, opened in-process), allocations (a counting
//! global allocator) and peak RSS.
//!
//! Everything here counts the whole child process (all threads), which is why each
//! implementation runs in its own child.
// The allocator and the libc calls need `unsafe`; each block says why it is sound.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting allocations (and reallocations, which may move).
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // `const` initialisation: reading it never allocates, so the allocator may use it.
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !UNCOUNTED.with(|u| u.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only an atomic and a const-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made so far by the whole process (outside [`uncounted`] sections).
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

/// Runs `f` without counting its allocations on this thread: the harness's own work per
/// message (building the payload with its id) is not the client's cost.
pub fn uncounted<T>(f: impl FnOnce() -> T) -> T {
    UNCOUNTED.with(|u| u.set(true));
    let r = f();
    UNCOUNTED.with(|u| u.set(false));
    r
}

/// CPU time (user + system) of the whole process.
pub fn cpu_time() -> Duration {
    let ru = rusage();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Peak resident set size of the process so far, in KiB.
pub fn max_rss_kib() -> u64 {
    rusage().ru_maxrss as u64
}

fn rusage() -> libc::rusage {
    // SAFETY: `getrusage` fills the struct it is given; an all-zero `rusage` is a valid value.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    }
}

/// The resident set size now, in KiB (from `/proc/self/statm`).
pub fn rss_now_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * (page.max(0) as u64) / 1024
}

/// This process's nice value (children inherit it).
pub fn niceness() -> i32 {
    // SAFETY: getpriority has no pointer arguments; -1 is also a valid result, which only
    // makes the figure wrong, not unsafe.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Raises the soft limit on open files to the hard limit (1,000 clients need 1,000 sockets;
/// mosquitto, spawned by the parent, inherits the parent's limit).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: get/setrlimit read and write the struct they are given.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

/// A counter of system calls made by this process and every thread it starts afterwards:
/// perf's `raw_syscalls:sys_enter` tracepoint through `perf_event_open`, with `inherit`.
/// Open it before starting the runtime's threads. `None` (reported "n/a") when the kernel
/// or its tracefs does not offer the tracepoint or perf events are not permitted.
#[derive(Debug)]
pub struct SyscallCounter {
    fd: i32,
}

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0), which is all a
/// counting tracepoint event needs.
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const FLAG_DISABLED: u64 = 1 << 0;
const FLAG_INHERIT: u64 = 1 << 1;
// _IO('$', 0) and _IO('$', 1)
const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
const PERF_EVENT_IOC_RESET: u64 = 0x2403;

fn tracepoint_id() -> Option<u64> {
    [
        "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
        "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

impl SyscallCounter {
    /// Opens the counter, disabled.
    pub fn open() -> Option<SyscallCounter> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: tracepoint_id()?,
            sample_period: 0,
            sample_type: 0,
            read_format: 0,
            flags: FLAG_DISABLED | FLAG_INHERIT,
            wakeup_events: 0,
            bp_type: 0,
            config1: 0,
        };
        // SAFETY: perf_event_open reads `size` bytes of the attribute struct, which is
        // `repr(C)` and as large as it says; pid 0 / cpu -1 = this process on any CPU.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                0 as libc::c_ulong,
            )
        };
        (fd >= 0).then_some(SyscallCounter { fd: fd as i32 })
    }

    /// Resets the count and starts counting.
    pub fn start(&self) {
        // SAFETY: ioctls on our own perf fd, no pointers.
        unsafe {
            libc::ioctl(self.fd, PERF_EVENT_IOC_RESET as _, 0);
            libc::ioctl(self.fd, PERF_EVENT_IOC_ENABLE as _, 0);
        }
    }

    /// Stops counting and returns the count since [`start`](Self::start), summed over the
    /// threads (the kernel adds the inherited counters of the threads to the parent's).
    pub fn stop(&self) -> Option<u64> {
        let mut v: u64 = 0;
        // SAFETY: a counting event without read_format flags reads as one u64.
        let n = unsafe {
            libc::ioctl(self.fd, PERF_EVENT_IOC_DISABLE as _, 0);
            libc::read(self.fd, (&mut v as *mut u64).cast(), 8)
        };
        (n == 8).then_some(v)
    }
}

impl Drop for SyscallCounter {
    fn drop(&mut self) {
        // SAFETY: closing our own fd once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// The measured window of one child: start it right before the first message, stop it when
/// the last one is accounted for.
#[derive(Debug)]
pub struct Window {
    syscalls: Option<SyscallCounter>,
    started: Option<(Instant, Duration, u64)>,
    /// What the window measured, once stopped.
    pub measured: Option<Measured>,
}

/// The raw figures of a window.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Wall time.
    pub wall: Duration,
    /// CPU time of the process (user + system).
    pub cpu: Duration,
    /// System calls, when countable.
    pub syscalls: Option<u64>,
    /// Allocations.
    pub allocs: u64,
}

impl Window {
    /// A window that counts system calls with `syscalls` when given.
    pub fn new(syscalls: Option<SyscallCounter>) -> Window {
        Window {
            syscalls,
            started: None,
            measured: None,
        }
    }

    /// Starts measuring.
    pub fn start(&mut self) {
        if let Some(s) = &self.syscalls {
            s.start();
        }
        self.started = Some((Instant::now(), cpu_time(), allocations()));
    }

    /// Stops measuring (only the first call counts).
    pub fn stop(&mut self) {
        let Some((t0, cpu0, a0)) = self.started else {
            return;
        };
        if self.measured.is_some() {
            return;
        }
        let wall = t0.elapsed();
        let cpu = cpu_time().saturating_sub(cpu0);
        let allocs = allocations() - a0;
        let syscalls = self.syscalls.as_ref().and_then(|s| s.stop());
        self.measured = Some(Measured {
            wall,
            cpu,
            syscalls,
            allocs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_outside_uncounted_sections() {
        let a0 = allocations();
        let v: Vec<Box<u64>> = (0..100).map(Box::new).collect();
        let a1 = allocations();
        assert!(a1 - a0 >= 100, "{} allocations counted", a1 - a0);
        let w: Vec<Box<u64>> = uncounted(|| (0..10_000).map(Box::new).collect());
        // Other test threads may allocate meanwhile, but not 10,000 times; ours are not
        // counted.
        assert!(allocations() - a1 < 10_000);
        drop((v, w));
    }

    #[test]
    fn cpu_time_advances_with_work() {
        let c0 = cpu_time();
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > c0);
    }

    #[test]
    fn syscall_counter_counts_syscalls_when_available() {
        let Some(c) = SyscallCounter::open() else {
            eprintln!("NOTICE: perf tracepoint not available; skipping");
            return;
        };
        c.start();
        for _ in 0..50 {
            let _ = std::fs::metadata("/");
        }
        let n = c.stop().unwrap_or(0);
        assert!(n >= 50, "{n} syscalls counted for 50 stat calls");
    }
}
