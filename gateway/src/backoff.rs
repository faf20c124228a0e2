//! Capped exponential backoff with jitter, for every reconnect loop.
//!
//! A gateway that nobody can reach for a week must never give up on a broker,
//! and must not hammer it either: delays double from `initial` up to `max`
//! and stay there. Only a connection that *stayed up* (for [`STABLE_AFTER`])
//! resets them: a broker that accepts the connection and drops it at once
//! (a poison message, an ACL that kicks the client, a half-dead adapter) must
//! not turn the loop into a reconnect storm. Time is passed in.

use std::time::{Duration, Instant};

/// How long a connection must last before the next failure starts the
/// delays from `initial` again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// While a peer stays unreachable, at most one line about it per this
/// interval (the lines carry how many attempts failed in between).
pub const RETRY_LOG_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    /// When the current connection came up, if it is up.
    connected_at: Option<Instant>,
    /// A small xorshift state, so jitter needs no global RNG.
    rng: u64,
    /// Whether the last failure ended a connection that was up.
    lost_a_connection: bool,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Self {
            initial,
            max: max.max(initial),
            current: initial,
            connected_at: None,
            rng: seed,
            lost_a_connection: false,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// The connection is up (CONNACK received, port opened and readable).
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection failed at `now`: the delay before the next attempt.
    /// The delays start over only if the connection that failed had lasted
    /// [`STABLE_AFTER`].
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.lost_a_connection = self.connected_at.is_some();
        if let Some(up) = self.connected_at.take() {
            if now.saturating_duration_since(up) >= STABLE_AFTER {
                self.reset();
            }
        }
        self.next_delay()
    }

    /// The delay before the next attempt: the current step plus up to 20 %
    /// jitter, never above `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.current;
        let jitter = base.mul_f64((self.rng % 1000) as f64 / 5000.0);
        self.current = (self.current * 2).min(self.max);
        (base + jitter).min(self.max)
    }

    /// Whether the failure just reported should be logged: always when it
    /// ended a connection that was up, else at most once per
    /// [`RETRY_LOG_EVERY`]. `Some(failures not logged since the last line)`.
    pub fn log_due(&mut self, now: Instant) -> Option<u64> {
        let due = self.lost_a_connection
            || self
                .last_logged
                .is_none_or(|t| now.saturating_duration_since(t) >= RETRY_LOG_EVERY);
        if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_peer_is_logged_once_per_interval_and_a_lost_connection_always() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let t0 = Instant::now();
        b.failed(t0);
        assert_eq!(b.log_due(t0), Some(0));
        for i in 1..=10 {
            let t = t0 + Duration::from_secs(i * 20);
            b.failed(t);
            assert_eq!(b.log_due(t), None);
        }
        let t = t0 + RETRY_LOG_EVERY;
        b.failed(t);
        assert_eq!(
            b.log_due(t),
            Some(10),
            "the line says how many were not logged"
        );
        // Up, then lost: logged at once.
        b.connected(t);
        let t = t + Duration::from_secs(1);
        b.failed(t);
        assert_eq!(b.log_due(t), Some(0));
    }

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(120));
        assert!(delays[1] >= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn a_connection_that_fails_at_once_does_not_reset_the_backoff() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..6u32 {
            let now = t0 + Duration::from_secs(u64::from(i));
            b.connected(now);
            last = b.failed(now + Duration::from_millis(50));
        }
        // Six immediate failures: 100 ms doubled five times, not 100 ms again.
        assert!(last >= Duration::from_millis(3200), "{last:?}");
    }

    #[test]
    fn a_connection_that_stayed_up_resets_the_backoff() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..5 {
            b.next_delay();
        }
        let t0 = Instant::now();
        b.connected(t0);
        let d = b.failed(t0 + STABLE_AFTER);
        assert!(d <= Duration::from_millis(120), "{d:?}");
    }
}
