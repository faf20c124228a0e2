//! The shape of a simulated cellular link: one-way latency, a bandwidth cap
//! per direction, stalls and connection resets at seeded, jittered times.
//!
//! This module is pure: time is passed in as the offset from the start of
//! the link, and randomness comes from a seed, so a profile replays
//! identically. [`crate::uplink`] applies it to real sockets.

use std::time::Duration;

/// What the link does to the bytes it carries. The default is a perfect
/// link (no latency, no cap, no faults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProfile {
    /// Added to every chunk, in each direction (one way).
    pub latency: Duration,
    /// Bandwidth cap in bits per second, in each direction.
    pub rate_bps: Option<u64>,
    /// A stall (no byte moves either way, connections stay open) starts
    /// about this often...
    pub stall_every: Option<Duration>,
    /// ...and lasts about this long.
    pub stall_for: Duration,
    /// Every relayed connection is closed about this often.
    pub reset_every: Option<Duration>,
    /// Seed of the stall and reset times.
    pub seed: u64,
}

impl Default for LinkProfile {
    fn default() -> Self {
        LinkProfile {
            latency: Duration::ZERO,
            rate_bps: None,
            stall_every: None,
            stall_for: Duration::from_secs(1),
            reset_every: None,
            seed: 1,
        }
    }
}

impl LinkProfile {
    /// A metered cellular uplink: `rate_bps` each way, `latency` one way.
    pub fn cellular(rate_bps: u64, latency: Duration) -> Self {
        LinkProfile {
            latency,
            rate_bps: Some(rate_bps),
            ..LinkProfile::default()
        }
    }

    /// The stall times of this profile, if it has stalls.
    pub fn stalls(&self) -> Option<Schedule> {
        self.stall_every
            .map(|every| Schedule::new(self.seed, every, self.stall_for))
    }

    /// The reset times of this profile, if it has resets.
    pub fn resets(&self) -> Option<Schedule> {
        self.reset_every
            .map(|every| Schedule::new(self.seed ^ 0x0005_eed0_f5e7, every, Duration::ZERO))
    }
}

/// Parses a bit rate: a number of bits per second with an optional `k`,
/// `M` or `G` suffix and an optional `bit/s` or `bps` unit ("64k",
/// "64kbit/s", "1.5M", "9600").
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("bit/s")
        .or_else(|| t.strip_suffix("bps"))
        .unwrap_or(t)
        .trim();
    let (number, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'M')) => (&t[..i], 1e6),
        Some((i, 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a bit rate (for example \"64k\" or \"64000\")"))?;
    let bps = value * scale;
    if !(bps.is_finite() && bps >= 8.0) {
        return Err(format!("`{text}`: the rate must be at least 8 bit/s"));
    }
    Ok(bps as u64)
}

/// A token bucket counting bytes: it fills at the link's rate up to
/// `burst` bytes; sending takes tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(rate_bps: u64, burst_bytes: usize, now: Duration) -> Self {
        let burst = burst_bytes.max(1) as f64;
        TokenBucket {
            bytes_per_s: rate_bps as f64 / 8.0,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.bytes_per_s).min(self.burst);
        self.last = self.last.max(now);
    }

    /// The largest chunk that may ever be asked for at once.
    pub fn burst(&self) -> usize {
        self.burst as usize
    }

    /// How long from `now` until `n` bytes (at most the burst) may go.
    pub fn wait_for(&mut self, n: usize, now: Duration) -> Duration {
        self.refill(now);
        let missing = (n as f64).min(self.burst) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.bytes_per_s)
        }
    }

    /// Takes `n` bytes' worth of tokens at `now` if they are there.
    pub fn try_take(&mut self, n: usize, now: Duration) -> bool {
        self.refill(now);
        let n = (n as f64).min(self.burst);
        if self.tokens + 1e-9 >= n {
            self.tokens = (self.tokens - n).max(0.0);
            true
        } else {
            false
        }
    }
}

/// Events at jittered intervals: the k-th starts at the (k-1)-th's start
/// plus `every` times a factor in [0.5, 1.5), and lasts `length` times a
/// factor in [0.5, 1.5). Seeded, so a run replays identically.
#[derive(Debug, Clone)]
pub struct Schedule {
    rng: SplitMix64,
    every: Duration,
    length: Duration,
    /// The current or next event: (start, end).
    next: (Duration, Duration),
}

impl Schedule {
    pub fn new(seed: u64, every: Duration, length: Duration) -> Self {
        let mut s = Schedule {
            rng: SplitMix64(seed),
            every,
            length,
            next: (Duration::ZERO, Duration::ZERO),
        };
        s.next = s.after(Duration::ZERO);
        s
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.5 + self.rng.unit())
    }

    fn after(&mut self, t: Duration) -> (Duration, Duration) {
        let start = t + self.jitter(self.every).max(Duration::from_millis(1));
        let end = start + self.jitter(self.length);
        (start, end)
    }

    /// The event in progress at `now`, if any, as (start, end); events
    /// that ended are passed over. Times must not go back.
    pub fn active(&mut self, now: Duration) -> Option<(Duration, Duration)> {
        while self.next.1 <= now {
            self.next = self.after(self.next.0);
        }
        (self.next.0 <= now).then_some(self.next)
    }

    /// Whether an event started since the last call, up to `now`: for
    /// instantaneous events such as resets. Times must not go back.
    pub fn fired(&mut self, now: Duration) -> bool {
        let mut fired = false;
        while self.next.0 <= now {
            fired = true;
            self.next = self.after(self.next.0);
        }
        fired
    }

    /// When the next event that has not yet been reported starts.
    pub fn next_start(&self) -> Duration {
        self.next.0
    }
}

/// SplitMix64: a tiny, well-known generator whose output does not depend
/// on a crate's version, so that a seed names the same schedule forever.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_lets_a_full_burst_go_then_paces_at_the_rate() {
        // 64 kbit/s = 8000 bytes/s, burst 1000 bytes.
        let mut b = TokenBucket::new(64_000, 1000, ms(0));
        assert!(b.try_take(1000, ms(0)));
        assert!(!b.try_take(1, ms(0)));
        assert_eq!(b.wait_for(800, ms(0)), ms(100));
        assert!(!b.try_take(800, ms(99)));
        assert!(b.try_take(800, ms(100)));
    }

    #[test]
    fn bucket_never_holds_more_than_its_burst() {
        let mut b = TokenBucket::new(64_000, 1000, ms(0));
        assert!(b.try_take(1000, ms(60_000)));
        assert!(!b.try_take(1000, ms(60_000)));
    }

    #[test]
    fn bucket_throughput_over_a_minute_is_the_rate() {
        let mut b = TokenBucket::new(64_000, 1500, ms(0));
        let mut now = ms(0);
        let mut sent = 0u64;
        while now < Duration::from_secs(60) {
            let wait = b.wait_for(500, now);
            now += wait;
            assert!(b.try_take(500, now));
            sent += 500;
        }
        // 60 s at 8000 bytes/s plus the initial burst, within one chunk.
        assert!((480_000..=482_000).contains(&sent), "{sent}");
    }

    #[test]
    fn asking_for_more_than_the_burst_waits_for_the_burst() {
        let mut b = TokenBucket::new(8_000, 100, ms(0));
        assert!(b.try_take(5000, ms(0)));
        assert_eq!(b.wait_for(5000, ms(0)), ms(100));
    }

    #[test]
    fn schedule_is_the_same_for_the_same_seed_and_differs_for_another() {
        let starts = |seed| {
            let mut s = Schedule::new(seed, ms(10_000), ms(2_000));
            (0..5)
                .map(|_| {
                    let event = s.next;
                    let _ = s.active(event.1);
                    event
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(starts(7), starts(7));
        assert_ne!(starts(7), starts(8));
    }

    #[test]
    fn stalls_come_about_as_often_and_last_about_as_long_as_asked() {
        let mut s = Schedule::new(3, ms(10_000), ms(2_000));
        let (mut stalled_ms, mut count, mut was) = (0u64, 0u64, false);
        for t in 0..1_000_000u64 {
            let now = ms(t);
            let is = s.active(now).is_some();
            if is {
                stalled_ms += 1;
                if !was {
                    count += 1;
                }
            }
            was = is;
        }
        // 1000 s: about 100 stalls of about 2 s (jitter 0.5x to 1.5x).
        assert!((80..=120).contains(&count), "{count} stalls");
        assert!(
            (150_000..=250_000).contains(&stalled_ms),
            "{stalled_ms} ms stalled"
        );
    }

    #[test]
    fn active_reports_the_window_and_nothing_outside_it() {
        let mut s = Schedule::new(1, ms(1_000), ms(300));
        let (start, end) = s.next;
        assert!(start >= ms(500) && start < ms(1_500));
        assert_eq!(s.active(start - ms(1)), None);
        assert_eq!(s.active(start), Some((start, end)));
        assert_eq!(s.active(end - ms(1)), Some((start, end)));
        assert_ne!(s.active(end), Some((start, end)));
    }

    #[test]
    fn resets_fire_once_each() {
        let profile = LinkProfile {
            reset_every: Some(ms(1_000)),
            ..LinkProfile::default()
        };
        let mut r = profile.resets().expect("resets");
        let mut fired = 0;
        for t in (0..100_000).step_by(10) {
            if r.fired(ms(t)) {
                fired += 1;
            }
        }
        assert!((80..=120).contains(&fired), "{fired} resets in 100 s");
    }

    #[test]
    fn rates_parse_with_suffixes_and_units() {
        assert_eq!(parse_rate("64k"), Ok(64_000));
        assert_eq!(parse_rate("64kbit/s"), Ok(64_000));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("9600"), Ok(9_600));
        assert_eq!(parse_rate("9600bps"), Ok(9_600));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
