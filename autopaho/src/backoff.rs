//! The reconnect delay: [`Backoff`], a pure policy (no clock, no sleeping) with a seeded
//! random source for the jitter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;

/// Default first delay of [`Backoff::exponential`]: 1 s.
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
/// Default largest delay of [`Backoff::exponential`]: 60 s.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Default growth factor of [`Backoff::exponential`]: 2.
pub const DEFAULT_FACTOR: f64 = 2.0;
/// Default jitter of [`Backoff::exponential`]: ±25 % (as HiveMQ's client).
pub const DEFAULT_JITTER: f64 = 0.25;

/// How long to wait before the next connect attempt.
///
/// The manager calls [`next_delay`](Backoff::next_delay) after each failed attempt (a
/// refused TCP connect, a refusing CONNACK, a connection the server closed) and
/// [`reset`](Backoff::reset) once a connection has stayed up for a while, so that a broker
/// which accepts and then kicks never makes a tight loop. It returns a `Duration`, not a
/// timer: the caller sleeps on its own (tokio) clock, which keeps this type pure and its
/// tests exact.
///
/// Three policies:
/// - [`Backoff::exponential`]: attempt `n` (from 0) waits
///   `base(n) = min(initial · factorⁿ, max)`, then jitter: `base(n) · (1 + jitter · u)`
///   with `u` uniform in `[-1, 1)`, clipped to `max`. Every delay lies in
///   `[initial · (1 − jitter), max]`, and `base(n)` never decreases.
/// - [`Backoff::constant`]: always the same delay.
/// - [`Backoff::from_fn`]: your function of the attempt number (0 for the first retry).
///
/// ```
/// use std::time::Duration;
/// use autopaho::Backoff;
/// let mut b = Backoff::exponential()
///     .initial(Duration::from_millis(100))
///     .max(Duration::from_secs(10))
///     .jitter(0.0)
///     .build()?;
/// assert_eq!(b.next_delay(), Duration::from_millis(100));
/// assert_eq!(b.next_delay(), Duration::from_millis(200));
/// b.reset();
/// assert_eq!(b.next_delay(), Duration::from_millis(100));
/// # Ok::<(), autopaho::Error>(())
/// ```
#[derive(Clone)]
pub struct Backoff {
    policy: Policy,
    attempt: u32,
    rng: SplitMix64,
}

#[derive(Clone)]
enum Policy {
    Exponential {
        initial: Duration,
        max: Duration,
        factor: f64,
        jitter: f64,
    },
    Constant(Duration),
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Backoff");
        match &self.policy {
            Policy::Exponential {
                initial,
                max,
                factor,
                jitter,
            } => d
                .field("initial", initial)
                .field("max", max)
                .field("factor", factor)
                .field("jitter", jitter),
            Policy::Constant(c) => d.field("constant", c),
            Policy::Custom(_) => d.field("custom", &"fn(attempt)"),
        };
        d.field("attempt", &self.attempt).finish()
    }
}

impl Default for Backoff {
    /// Exponential with the defaults: 1 s, ×2, up to 60 s, ±25 %.
    fn default() -> Self {
        Backoff {
            policy: Policy::Exponential {
                initial: DEFAULT_INITIAL,
                max: DEFAULT_MAX,
                factor: DEFAULT_FACTOR,
                jitter: DEFAULT_JITTER,
            },
            attempt: 0,
            rng: SplitMix64::from_entropy(),
        }
    }
}

impl Backoff {
    /// A builder for the exponential policy, with the defaults (1 s, ×2, 60 s, ±25 %).
    pub fn exponential() -> ExponentialBuilder {
        ExponentialBuilder {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
            factor: DEFAULT_FACTOR,
            jitter: DEFAULT_JITTER,
            seed: None,
        }
    }

    /// Always `delay`. A zero delay is an error: it would retry in a tight loop.
    pub fn constant(delay: Duration) -> Result<Backoff, Error> {
        if delay.is_zero() {
            return Err(Error::InvalidBackoff(
                "a constant delay of zero would retry in a tight loop",
            ));
        }
        Ok(Backoff {
            policy: Policy::Constant(delay),
            attempt: 0,
            rng: SplitMix64::new(0),
        })
    }

    /// `f(attempt)`, with attempt 0 for the delay after the first failure. The function is
    /// yours to keep sane (a zero delay retries at once).
    pub fn from_fn(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Backoff {
        Backoff {
            policy: Policy::Custom(Arc::new(f)),
            attempt: 0,
            rng: SplitMix64::new(0),
        }
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let n = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        match &self.policy {
            Policy::Constant(d) => *d,
            Policy::Custom(f) => f(n),
            Policy::Exponential {
                initial,
                max,
                factor,
                jitter,
            } => {
                let base = exponential_base(*initial, *max, *factor, n);
                let u = self.rng.next_f64() * 2.0 - 1.0; // [-1, 1)
                let secs = base.as_secs_f64() * (1.0 + jitter * u);
                Duration::try_from_secs_f64(secs.max(0.0))
                    .unwrap_or(*max)
                    .min(*max)
            }
        }
    }

    /// Starts over: the next delay is the first one again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were given since the start or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// `min(initial · factorⁿ, max)`, without overflow for any `n`.
fn exponential_base(initial: Duration, max: Duration, factor: f64, n: u32) -> Duration {
    let max_s = max.as_secs_f64();
    let exp = i32::try_from(n).unwrap_or(i32::MAX);
    let s = initial.as_secs_f64() * factor.powi(exp);
    if !s.is_finite() || s >= max_s {
        return max;
    }
    Duration::try_from_secs_f64(s).unwrap_or(max).min(max)
}

/// Builds an exponential [`Backoff`]; [`ExponentialBuilder::build`] validates.
#[derive(Debug, Clone)]
pub struct ExponentialBuilder {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    seed: Option<u64>,
}

impl ExponentialBuilder {
    /// The first delay (more than zero, at most `max`). Default 1 s.
    pub fn initial(mut self, d: Duration) -> Self {
        self.initial = d;
        self
    }

    /// The largest delay. Default 60 s.
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }

    /// The growth per attempt (at least 1; 1 is a constant base with jitter). Default 2.
    pub fn factor(mut self, f: f64) -> Self {
        self.factor = f;
        self
    }

    /// The relative jitter, in `[0, 1]`: 0.25 is ±25 %. Default 0.25.
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }

    /// Seeds the jitter's random source, for reproducible delays (tests). By default the
    /// seed comes from the standard library's per-process random hasher keys.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the parameters: `0 < initial <= max`, `factor >= 1`, `0 <= jitter <= 1`, all
    /// finite.
    pub fn build(self) -> Result<Backoff, Error> {
        if self.initial.is_zero() {
            return Err(Error::InvalidBackoff(
                "the initial delay must be more than zero",
            ));
        }
        if self.initial > self.max {
            return Err(Error::InvalidBackoff(
                "the initial delay must not exceed the maximum",
            ));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(Error::InvalidBackoff(
                "the factor must be finite and at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidBackoff("the jitter must be in [0, 1]"));
        }
        Ok(Backoff {
            policy: Policy::Exponential {
                initial: self.initial,
                max: self.max,
                factor: self.factor,
                jitter: self.jitter,
            },
            attempt: 0,
            rng: self
                .seed
                .map(SplitMix64::new)
                .unwrap_or_else(SplitMix64::from_entropy),
        })
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for jitter. Not for
/// anything secret.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        SplitMix64(h.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults() {
        let mut b = Backoff::default();
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(750) && d <= DEFAULT_MAX, "{d:?}");
        }
        let mut b = Backoff::exponential().jitter(0.0).build().unwrap();
        let secs: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.attempt(), 9);
    }

    #[test]
    fn validation() {
        let bad = [
            Backoff::exponential().initial(Duration::ZERO).build(),
            Backoff::exponential()
                .initial(Duration::from_secs(2))
                .max(Duration::from_secs(1))
                .build(),
            Backoff::exponential().factor(0.5).build(),
            Backoff::exponential().factor(f64::NAN).build(),
            Backoff::exponential().factor(f64::INFINITY).build(),
            Backoff::exponential().jitter(-0.1).build(),
            Backoff::exponential().jitter(1.5).build(),
            Backoff::exponential().jitter(f64::NAN).build(),
            Backoff::constant(Duration::ZERO),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::InvalidBackoff(_))), "{r:?}");
        }
    }

    #[test]
    fn constant_and_custom() {
        let mut c = Backoff::constant(Duration::from_secs(3)).unwrap();
        assert_eq!(c.next_delay(), Duration::from_secs(3));
        assert_eq!(c.next_delay(), Duration::from_secs(3));
        let mut f = Backoff::from_fn(|n| Duration::from_millis(10 * u64::from(n)));
        assert_eq!(f.next_delay(), Duration::ZERO);
        assert_eq!(f.next_delay(), Duration::from_millis(10));
        assert_eq!(f.next_delay(), Duration::from_millis(20));
        f.reset();
        assert_eq!(f.next_delay(), Duration::ZERO);
    }

    #[test]
    fn same_seed_same_delays_and_jitter_spreads() {
        let make = |seed| {
            Backoff::exponential()
                .initial(Duration::from_secs(10))
                .max(Duration::from_secs(10))
                .seed(seed)
                .build()
                .unwrap()
        };
        let (mut a, mut b, mut c) = (make(7), make(7), make(8));
        let da: Vec<_> = (0..50).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        let dc: Vec<_> = (0..50).map(|_| c.next_delay()).collect();
        assert_eq!(da, db);
        assert_ne!(da, dc);
        // At the cap the jitter only goes down; it must actually spread the delays.
        let min = da.iter().min().unwrap();
        assert!(*min < Duration::from_secs(9), "{min:?}");
        assert!(da.iter().all(|d| *d >= Duration::from_millis(7500)));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(
            exponential_base(
                Duration::from_secs(1),
                Duration::from_secs(60),
                2.0,
                u32::MAX
            ),
            Duration::from_secs(60)
        );
        let mut b = Backoff::exponential()
            .max(Duration::MAX)
            .factor(1e6)
            .build()
            .unwrap();
        for _ in 0..200 {
            let _ = b.next_delay();
        }
    }

    fn params() -> impl Strategy<Value = (u64, u64, f64, f64, u64)> {
        (
            1u64..10_000,
            0u64..1_000_000,
            1.0f64..10.0,
            0.0f64..=1.0,
            any::<u64>(),
        )
            .prop_map(|(init, extra, factor, jitter, seed)| {
                (init, init + extra, factor, jitter, seed)
            })
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds((init, max, factor, jitter, seed) in params(), n in 1usize..80) {
            let (initial, max) = (Duration::from_millis(init), Duration::from_millis(max));
            let mut b = Backoff::exponential()
                .initial(initial).max(max).factor(factor).jitter(jitter).seed(seed)
                .build().unwrap();
            let lower = initial.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1));
            for i in 0..n {
                let d = b.next_delay();
                prop_assert!(d >= lower && d <= max, "delay {i}: {d:?} not in [{lower:?}, {max:?}]");
                let base = exponential_base(initial, max, factor, i as u32);
                let lo = base.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1));
                let hi = base.mul_f64(1.0 + jitter).min(max) + Duration::from_nanos(1);
                prop_assert!(d >= lo && d <= hi, "delay {i}: {d:?} not around base {base:?}");
            }
        }

        #[test]
        fn base_is_monotone((init, max, factor, _j, _s) in params(), n in 0u32..200) {
            let (initial, max) = (Duration::from_millis(init), Duration::from_millis(max));
            let a = exponential_base(initial, max, factor, n);
            let b = exponential_base(initial, max, factor, n + 1);
            prop_assert!(a <= b, "{a:?} > {b:?}");
            prop_assert!(a >= initial && b <= max);
        }

        #[test]
        fn reset_returns_to_the_start((init, max, factor, jitter, seed) in params(), n in 0usize..50) {
            let build = || Backoff::exponential()
                .initial(Duration::from_millis(init)).max(Duration::from_millis(max))
                .factor(factor).jitter(0.0).seed(seed).build().unwrap();
            let mut b = build();
            let first = b.next_delay();
            for _ in 0..n { b.next_delay(); }
            b.reset();
            prop_assert_eq!(b.attempt(), 0);
            prop_assert_eq!(b.next_delay(), first);
            // With jitter, the first delay after a reset is within the first attempt's band.
            let mut j = Backoff::exponential()
                .initial(Duration::from_millis(init)).max(Duration::from_millis(max))
                .factor(factor).jitter(jitter).seed(seed).build().unwrap();
            for _ in 0..n { j.next_delay(); }
            j.reset();
            let d = j.next_delay();
            let lo = first.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1));
            let hi = first.mul_f64(1.0 + jitter).min(Duration::from_millis(max)) + Duration::from_nanos(1);
            prop_assert!(d >= lo && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
        }
    }
}
