//! Windowed statistics: the accumulator of one tumbling window.
//!
//! Mean and variance use Welford's update, which stays accurate for signals
//! with a large offset (a naive sum of squares loses every digit of a
//! 0.001-amplitude vibration on a 10,000 offset). The accumulator is a plain
//! value with no allocation, so a sensor's state has a fixed size.

/// The running statistics of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    mean: f64,
    /// Sum of squared deviations from the mean (Welford's M2).
    m2: f64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
}

impl Default for WindowStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowStats {
    pub const fn new() -> Self {
        Self {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            first_ts_ms: i64::MAX,
            last_ts_ms: i64::MIN,
        }
    }

    /// Adds one finite value observed at `ts_ms`.
    pub fn push(&mut self, value: f64, ts_ms: i64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.first_ts_ms = self.first_ts_ms.min(ts_ms);
        self.last_ts_ms = self.last_ts_ms.max(ts_ms);
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population standard deviation (divides by `count`); 0 for one value.
    pub fn std_dev(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).max(0.0).sqrt()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_values() {
        // Reference: population statistics of 2, 4, 4, 4, 5, 5, 7, 9 are
        // mean 5 and standard deviation 2 (a textbook example).
        let mut w = WindowStats::new();
        for (i, v) in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .into_iter()
            .enumerate()
        {
            w.push(v, 100 - i as i64);
        }
        assert_eq!(w.count, 8);
        assert_eq!(w.mean(), 5.0);
        assert_eq!(w.std_dev(), 2.0);
        assert_eq!((w.min, w.max), (2.0, 9.0));
        assert_eq!((w.first_ts_ms, w.last_ts_ms), (93, 100));
    }

    #[test]
    fn stays_accurate_with_a_huge_offset() {
        let mut w = WindowStats::new();
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            w.push(1e9 + v, 0);
        }
        assert!((w.mean() - (1e9 + 5.0)).abs() < 1e-6);
        assert!((w.std_dev() - 2.0).abs() < 1e-6, "{}", w.std_dev());
    }

    #[test]
    fn single_and_constant_values() {
        let mut w = WindowStats::new();
        w.push(3.5, 1);
        assert_eq!(w.std_dev(), 0.0);
        for _ in 0..1000 {
            w.push(3.5, 1);
        }
        assert_eq!(w.std_dev(), 0.0);
        assert_eq!(w.mean(), 3.5);
    }
}
