//! Capped exponential backoff with jitter, for every reconnect loop.
//!
//! A gateway that nobody can reach for a week must never give up on a broker,
//! and must not hammer it either: delays double from `initial` up to `max`
//! and stay there; a successful connection resets them.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    /// A small xorshift state, so jitter needs no global RNG.
    rng: u64,
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
            rng: seed,
        }
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

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
