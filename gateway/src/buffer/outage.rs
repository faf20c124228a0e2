//! How long the buffer could ride out an outage: the rate at which records
//! arrive, and the time until the disk bound at that rate. Pure: time is
//! passed in.

/// Seconds of history the rate is averaged over.
pub const RATE_WINDOW_SECS: usize = 60;

/// Slots of the ring: the window's complete seconds and the current one.
const SLOTS: usize = RATE_WINDOW_SECS + 1;

/// Bytes of records pushed into the buffer per second, averaged over the
/// last [`RATE_WINDOW_SECS`] complete seconds (or since the first push, if
/// that is more recent): one counter per second in a ring, so memory is
/// fixed.
#[derive(Debug, Clone)]
pub struct InputRate {
    /// Bytes pushed in each second; slot `s % SLOTS` holds second `s`.
    slots: [u64; SLOTS],
    /// The latest second written to or cleared, in seconds since the epoch.
    newest: i64,
    /// The second of the first push: the average does not count the time
    /// before it as seconds without input.
    first: Option<i64>,
}

impl Default for InputRate {
    fn default() -> Self {
        InputRate {
            slots: [0; SLOTS],
            newest: i64::MIN,
            first: None,
        }
    }
}

impl InputRate {
    /// Counts `bytes` pushed at `now_ms`.
    pub fn add(&mut self, bytes: u64, now_ms: i64) {
        let sec = now_ms.div_euclid(1000);
        self.advance(sec);
        self.first.get_or_insert(sec);
        let slot = &mut self.slots[Self::slot(sec)];
        *slot = slot.saturating_add(bytes);
    }

    /// Average bytes per second over the complete seconds of the window
    /// before `now_ms`; 0 when nothing arrived in it.
    pub fn bytes_per_sec(&mut self, now_ms: i64) -> f64 {
        let sec = now_ms.div_euclid(1000);
        self.advance(sec);
        let Some(first) = self.first else {
            return 0.0;
        };
        // Complete seconds only: the current one is still filling.
        let span = (sec - first).clamp(0, RATE_WINDOW_SECS as i64);
        if span == 0 {
            return 0.0;
        }
        let total: u64 = (1..=span)
            .map(|back| self.slots[Self::slot(sec - back)])
            .sum();
        total as f64 / span as f64
    }

    /// Clears the slots of the seconds between the newest one written and
    /// `sec`, so that a quiet spell counts as zeros.
    fn advance(&mut self, sec: i64) {
        if sec <= self.newest {
            return;
        }
        let gap = sec.saturating_sub(self.newest).min(SLOTS as i64);
        for back in 0..gap {
            self.slots[Self::slot(sec - back)] = 0;
        }
        self.newest = sec;
    }

    fn slot(sec: i64) -> usize {
        sec.rem_euclid(SLOTS as i64) as usize
    }
}

/// Whole seconds until `free_bytes` are filled at `bytes_per_sec`; -1 when
/// nothing arrives (the bound is never reached).
pub fn seconds_left(free_bytes: u64, bytes_per_sec: f64) -> i64 {
    if bytes_per_sec <= 0.0 {
        return -1;
    }
    let secs = (free_bytes as f64 / bytes_per_sec).floor();
    if secs >= i64::MAX as f64 {
        i64::MAX
    } else {
        secs as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn the_rate_averages_the_complete_seconds_since_the_first_push() {
        let mut r = InputRate::default();
        assert_eq!(r.bytes_per_sec(T0), 0.0);
        r.add(1000, T0);
        r.add(1000, T0 + 999);
        // The first second is still filling.
        assert_eq!(r.bytes_per_sec(T0 + 500), 0.0);
        r.add(500, T0 + 1_200);
        assert_eq!(r.bytes_per_sec(T0 + 2_000), 1250.0);
    }

    #[test]
    fn the_rate_forgets_what_is_older_than_the_window() {
        let mut r = InputRate::default();
        r.add(60_000, T0);
        for s in 1..60 {
            r.add(0, T0 + s * 1000);
        }
        assert_eq!(r.bytes_per_sec(T0 + 60_000), 1000.0);
        // One second later the burst of the first second is out of the window.
        assert_eq!(r.bytes_per_sec(T0 + 61_000), 0.0);
    }

    #[test]
    fn a_quiet_spell_counts_as_seconds_without_input() {
        let mut r = InputRate::default();
        for s in 0..60 {
            r.add(100, T0 + s * 1000);
        }
        assert_eq!(r.bytes_per_sec(T0 + 60_000), 100.0);
        // 30 quiet seconds: half the window is empty.
        assert_eq!(r.bytes_per_sec(T0 + 90_000), 50.0);
        // Hours later, nothing is left of it.
        assert_eq!(r.bytes_per_sec(T0 + 3_600_000), 0.0);
    }

    #[test]
    fn a_clock_stepping_back_does_not_break_the_ring() {
        let mut r = InputRate::default();
        r.add(100, T0 + 10_000);
        r.add(100, T0);
        assert!(r.bytes_per_sec(T0 + 11_000) >= 0.0);
    }

    #[test]
    fn seconds_left_is_the_free_space_over_the_rate() {
        assert_eq!(seconds_left(1_000_000, 1000.0), 1000);
        assert_eq!(seconds_left(1_500, 1000.0), 1);
        assert_eq!(seconds_left(0, 1000.0), 0);
        assert_eq!(seconds_left(1_000_000, 0.0), -1, "no input: never");
        assert_eq!(seconds_left(u64::MAX, 1e-300), i64::MAX);
    }
}
