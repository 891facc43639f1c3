//! Shared by the reliability campaign's scenario files (`campaign_*.rs`): the size of a run
//! and the record of a subscriber's receipts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// `PAHO_CAMPAIGN_LONG=1` (the README's `--long` mode) multiplies every scenario's size by
/// this.
pub const LONG_FACTOR: u32 = 10;

/// 1, or [`LONG_FACTOR`] when `PAHO_CAMPAIGN_LONG=1`.
pub fn scale() -> u32 {
    if std::env::var("PAHO_CAMPAIGN_LONG").is_ok_and(|v| v == "1") {
        LONG_FACTOR
    } else {
        1
    }
}

/// How many times each message number arrived, and how many numbers arrived at least once.
#[derive(Clone)]
pub struct Receipts {
    counts: Arc<Vec<AtomicU32>>,
    distinct: Arc<AtomicU64>,
    /// Arrivals that do not parse as a number below the size, or came with the wrong QoS.
    pub strange: Arc<AtomicU64>,
}

impl Receipts {
    pub fn new(n: usize) -> Receipts {
        Receipts {
            counts: Arc::new((0..n).map(|_| AtomicU32::new(0)).collect()),
            distinct: Arc::default(),
            strange: Arc::default(),
        }
    }

    /// Records one arrival of number `i`.
    pub fn record(&self, i: usize) {
        match self.counts.get(i) {
            Some(c) => {
                if c.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.distinct.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.strange.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Relaxed) as usize
    }

    pub fn count(&self, i: usize) -> u32 {
        self.counts[i].load(Ordering::Relaxed)
    }

    /// The numbers accepted by `pick` that never arrived.
    pub fn missing(&self, pick: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.len())
            .filter(|i| pick(*i) && self.count(*i) == 0)
            .collect()
    }

    /// The numbers accepted by `pick` that arrived more than once.
    pub fn duplicated(&self, pick: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.len())
            .filter(|i| pick(*i) && self.count(*i) > 1)
            .collect()
    }
}
