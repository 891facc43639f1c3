//! Keepalive bookkeeping: when to ping and when to give the link up for dead.

use std::time::Duration;

use tokio::time::Instant;

/// What the keepalive timer says when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    Ping,
    Dead,
}

/// Pings when nothing was sent or nothing was received for one interval; declares the link
/// dead when nothing was received for 1.5 intervals (a PINGREQ sent after one silent interval
/// had half an interval to be answered).
#[derive(Debug)]
pub(crate) struct KeepAlive {
    interval: Option<Duration>,
    last_sent: Instant,
    last_received: Instant,
    ping_outstanding: bool,
}

impl KeepAlive {
    pub(crate) fn new(secs: u16, now: Instant) -> Self {
        KeepAlive {
            interval: (secs > 0).then(|| Duration::from_secs(secs.into())),
            last_sent: now,
            last_received: now,
            ping_outstanding: false,
        }
    }

    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    pub(crate) fn received(&mut self, now: Instant) {
        self.last_received = now;
    }

    pub(crate) fn pong(&mut self) {
        self.ping_outstanding = false;
    }

    fn dead_at(&self, i: Duration) -> Instant {
        self.last_received + i + i / 2
    }

    /// The next instant something may be due, if keepalive is on.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let i = self.interval?;
        let dead = self.dead_at(i);
        if self.ping_outstanding {
            return Some(dead);
        }
        Some((self.last_sent.min(self.last_received) + i).min(dead))
    }

    /// What is due at `now`. A returned [`Due::Ping`] counts the PINGREQ as sent.
    pub(crate) fn poll(&mut self, now: Instant) -> Due {
        let Some(i) = self.interval else {
            return Due::Nothing;
        };
        if now >= self.dead_at(i) {
            return Due::Dead;
        }
        if !self.ping_outstanding && now >= self.last_sent.min(self.last_received) + i {
            self.ping_outstanding = true;
            self.last_sent = now;
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_after_an_idle_interval_and_dies_at_one_and_a_half() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = KeepAlive::new(10, t0);
        assert_eq!(k.deadline(), Some(t0 + 10 * s));
        assert_eq!(k.poll(t0 + 9 * s), Due::Nothing);
        assert_eq!(k.poll(t0 + 10 * s), Due::Ping);
        assert_eq!(k.deadline(), Some(t0 + 15 * s));
        assert_eq!(k.poll(t0 + 14 * s), Due::Nothing);
        assert_eq!(k.poll(t0 + 15 * s), Due::Dead);
    }

    #[test]
    fn traffic_received_postpones_death_and_sent_only_does_not() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = KeepAlive::new(10, t0);
        k.sent(t0 + 8 * s);
        // Nothing received for 10 s: ping even though something was sent.
        assert_eq!(k.poll(t0 + 10 * s), Due::Ping);
        k.received(t0 + 12 * s);
        k.pong();
        assert_eq!(k.poll(t0 + 15 * s), Due::Nothing);
        assert_eq!(k.deadline(), Some(t0 + 20 * s));
    }

    #[test]
    fn zero_turns_it_off() {
        let mut k = KeepAlive::new(0, Instant::now());
        assert_eq!(k.deadline(), None);
        assert_eq!(
            k.poll(Instant::now() + Duration::from_secs(1000)),
            Due::Nothing
        );
    }
}
