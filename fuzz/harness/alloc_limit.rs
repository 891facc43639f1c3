//! A global allocator that refuses any single allocation above a limit, for the checks that
//! opening a damaged store or queue "never allocates more than the file holds".
//!
//! Shared by the `store_open` and `queue_open` fuzz targets and their corpus replays (each
//! binary declares `#[global_allocator] static A: alloc_limit::Limit = alloc_limit::Limit;`).
//! The limit is process-wide (the stores open on threads of their own) and off until
//! [`arm`]ed. An allocation over it prints what it was and aborts the process: under libFuzzer
//! that is a crash with the input saved; in the replay test the test binary dies with the
//! message. Aborting at once, rather than recording and asserting later, also stops an
//! allocation of a claimed 4 GiB before it can take the machine's memory.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait; this only forwards to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The largest single allocation seen while armed.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// What every allocation may use beyond the bytes of the input: buffers of fixed size (the
/// queue's 64 KiB read-ahead, channel blocks, paths, thread bookkeeping).
pub const SLACK: usize = 256 * 1024;

/// The limiting allocator.
#[derive(Debug)]
pub struct Limit;

fn check(size: usize) {
    if size > LIMIT.load(Ordering::Relaxed) {
        // No formatting machinery that could allocate: write the numbers by hand.
        let mut buf = [0u8; 128];
        let mut n = 0;
        let mut put = |buf: &mut [u8; 128], bytes: &[u8]| {
            buf[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        let mut digits = [0u8; 20];
        put(&mut buf, b"alloc_limit: one allocation of ");
        put(&mut buf, decimal(&mut digits, size));
        put(&mut buf, b" bytes, limit ");
        put(
            &mut buf,
            decimal(&mut digits, LIMIT.load(Ordering::Relaxed)),
        );
        put(&mut buf, b"\n");
        use std::io::Write;
        let _ = std::io::stderr().write_all(&buf[..n]);
        std::process::abort();
    }
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

/// `v` in decimal, in `digits`.
fn decimal(digits: &mut [u8; 20], mut v: usize) -> &[u8] {
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[k..]
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; `check`
// only reads atomics and may abort the process, which is allowed in an allocator.
unsafe impl GlobalAlloc for Limit {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations above `bytes` abort the process from now until [`disarm`]. Returns a guard
/// that disarms when dropped (also when a check panics).
pub fn arm(bytes: usize) -> Armed {
    LARGEST.store(0, Ordering::Relaxed);
    LIMIT.store(bytes, Ordering::Relaxed);
    Armed
}

/// Lifts the limit; returns the largest single allocation seen while armed.
pub fn disarm() -> usize {
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    LARGEST.load(Ordering::Relaxed)
}

/// Disarms on drop.
#[derive(Debug)]
pub struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        disarm();
    }
}
