//! Windowed statistics: the accumulator of one tumbling window.
//!
//! Every moment is updated online with the numerically stable recurrences
//! of Welford (mean, variance) and Pébay/Terriberry (third and fourth
//! central moments), and the trend with an online co-moment of time and
//! value, so that a 0.001-amplitude vibration on a 10,000 offset keeps its
//! digits (a naive sum of squares loses all of them). RMS comes from the
//! mean and the variance (`rms² = mean² + variance`), not from a sum of
//! squares. Percentiles come from a [`Sketch`] (bounded memory, 2 %
//! relative error), allocated only when a rule asks for percentiles.

use crate::sketch::Sketch;

/// The running statistics of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    mean: f64,
    /// Sums of powers of deviations from the mean (M2, M3, M4).
    m2: f64,
    m3: f64,
    m4: f64,
    /// Time is in seconds since `origin_ms`, so it keeps its precision.
    origin_ms: i64,
    mean_t: f64,
    m2_t: f64,
    /// Co-moment of time and value.
    c_tv: f64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub first: f64,
    pub last: f64,
    pub sketch: Option<Box<Sketch>>,
}

impl Default for WindowStats {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowStats {
    pub const fn new() -> Self {
        Self::starting_at(0, false)
    }

    /// A window whose times are measured from `origin_ms` (its start), with
    /// a percentile sketch if `percentiles`.
    pub const fn starting_at(origin_ms: i64, percentiles: bool) -> Self {
        let _ = percentiles;
        Self {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
            origin_ms,
            mean_t: 0.0,
            m2_t: 0.0,
            c_tv: 0.0,
            first_ts_ms: i64::MAX,
            last_ts_ms: i64::MIN,
            first: f64::NAN,
            last: f64::NAN,
            sketch: None,
        }
    }

    /// Like [`WindowStats::starting_at`], allocating the sketch when asked.
    pub fn with_options(origin_ms: i64, percentiles: bool) -> Self {
        let mut w = Self::starting_at(origin_ms, percentiles);
        if percentiles {
            w.sketch = Some(Box::default());
        }
        w
    }

    /// Adds one finite value observed at `ts_ms`.
    pub fn push(&mut self, value: f64, ts_ms: i64) {
        let n1 = self.count as f64;
        self.count += 1;
        let n = self.count as f64;
        let delta = value - self.mean;
        let delta_n = delta / n;
        let delta_n2 = delta_n * delta_n;
        let term1 = delta * delta_n * n1;
        self.mean += delta_n;
        self.m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * self.m2
            - 4.0 * delta_n * self.m3;
        self.m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * self.m2;
        // Welford's form of `m2 += term1`, which rounds more kindly.
        self.m2 += delta * (value - self.mean);

        let t = (ts_ms - self.origin_ms) as f64 / 1000.0;
        let dt = t - self.mean_t;
        self.mean_t += dt / n;
        self.m2_t += dt * (t - self.mean_t);
        self.c_tv += dt * (value - self.mean);

        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if ts_ms < self.first_ts_ms {
            self.first_ts_ms = ts_ms;
            self.first = value;
        }
        if ts_ms >= self.last_ts_ms {
            self.last_ts_ms = ts_ms;
            self.last = value;
        }
        if let Some(s) = &mut self.sketch {
            s.add(value);
        }
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    fn variance(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).max(0.0)
        }
    }

    /// Population standard deviation (divides by `count`); 0 for one value.
    pub fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Root mean square.
    pub fn rms(&self) -> f64 {
        (self.mean * self.mean + self.variance()).sqrt()
    }

    pub fn peak_to_peak(&self) -> f64 {
        self.max - self.min
    }

    /// Peak over RMS; `None` when the RMS is 0.
    pub fn crest_factor(&self) -> Option<f64> {
        let rms = self.rms();
        (rms > 0.0).then(|| self.max.abs().max(self.min.abs()) / rms)
    }

    /// Sample skewness g1 = sqrt(n) M3 / M2^1.5; `None` without spread.
    pub fn skewness(&self) -> Option<f64> {
        (self.m2 > 0.0 && self.count > 1)
            .then(|| (self.count as f64).sqrt() * self.m3 / self.m2.powf(1.5))
    }

    /// Kurtosis n M4 / M2² (Pearson's, not excess: 3 for a normal
    /// distribution, 1.5 for a sine); `None` without spread.
    pub fn kurtosis(&self) -> Option<f64> {
        (self.m2 > 0.0 && self.count > 1).then(|| self.count as f64 * self.m4 / (self.m2 * self.m2))
    }

    /// Least-squares slope of value over time, in units per hour; `None`
    /// when all readings share one timestamp.
    pub fn slope_per_hour(&self) -> Option<f64> {
        (self.m2_t > 0.0).then(|| self.c_tv / self.m2_t * 3600.0)
    }

    /// The `q` quantile (0..=1) from the sketch, if percentiles are kept.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.as_ref().and_then(|s| s.quantile(q))
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests;
