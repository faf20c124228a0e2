//! Drift and anomaly detection on window features. Pure.
//!
//! For each watched feature of a sensor's closed windows (the mean and the
//! RMS), a [`Baseline`] keeps:
//!
//! - a **warm-up reference**: the mean and standard deviation of the
//!   feature over the first `warmup_windows` windows (Welford), frozen
//!   afterwards. Nothing is reported during warm-up.
//! - an **EWMA** of the feature and of its variance (smoothing `alpha`),
//!   giving a z-score `z = (x - ewma) / σ` for sudden changes, reported when
//!   `|z| > z_limit` and cleared below `z_limit / 2`.
//! - a two-sided **CUSUM** against the frozen reference,
//!   `S+ = max(0, S+ + (x - μ0)/σ0 - k)` and the mirror `S-`, for slow
//!   drift that an adapting EWMA would absorb; reported when `S > h`,
//!   cleared below `h / 2`. `S` is capped at `4 h` so that recovery after a
//!   long excursion takes a bounded number of windows.
//!
//! Every σ is floored at `max(σ, min_relative_std |μ|, 1e-9)`, so a
//! perfectly constant signal during warm-up does not make every later
//! wobble an anomaly. Baselines are serialised with the alarm state and
//! survive restarts.

use serde::{Deserialize, Serialize};

/// Settings of a rule's anomaly detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalySpec {
    pub warmup_windows: u32,
    pub alpha: f64,
    pub z_limit: f64,
    pub cusum_k: f64,
    pub cusum_h: f64,
    pub min_relative_std: f64,
}

impl Default for AnomalySpec {
    fn default() -> Self {
        Self {
            warmup_windows: 60,
            alpha: 0.1,
            z_limit: 5.0,
            cusum_k: 1.0,
            cusum_h: 10.0,
            min_relative_std: 0.01,
        }
    }
}

/// The features watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    Mean,
    Rms,
}

impl Feature {
    pub const ALL: [Feature; 2] = [Feature::Mean, Feature::Rms];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Mean => "mean",
            Feature::Rms => "rms",
        }
    }
}

/// The detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detector {
    EwmaZ,
    Cusum,
}

impl Detector {
    pub fn name(self) -> &'static str {
        match self {
            Detector::EwmaZ => "ewma_z",
            Detector::Cusum => "cusum",
        }
    }
}

/// An anomaly event.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyEvent {
    pub detector: Detector,
    pub feature: Feature,
    pub raised: bool,
    /// `up` or `down`.
    pub upward: bool,
    /// The z-score, or the CUSUM statistic.
    pub score: f64,
    pub limit: f64,
    pub value: f64,
    pub baseline_mean: f64,
    pub baseline_std: f64,
}

/// State of one feature.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureState {
    /// Warm-up Welford accumulators, then the frozen reference.
    n: u32,
    ref_mean: f64,
    ref_m2: f64,
    ewma: f64,
    ewma_var: f64,
    cusum_up: f64,
    cusum_down: f64,
    z_active: bool,
    cusum_active: bool,
}

/// The baseline of one sensor.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub windows: u32,
    features: [FeatureState; 2],
}

/// A detector's state change: raised above `limit`, cleared below half of
/// it; `Some(raised)` when it changed.
fn crossed(active: &mut bool, score: f64, limit: f64) -> Option<bool> {
    if !*active && score > limit {
        *active = true;
        Some(true)
    } else if *active && score < limit / 2.0 {
        *active = false;
        Some(false)
    } else {
        None
    }
}

fn floor(spec: &AnomalySpec, std: f64, mean: f64) -> f64 {
    std.max(spec.min_relative_std * mean.abs()).max(1e-9)
}

impl Baseline {
    /// Whether the warm-up is over.
    pub fn warmed_up(&self, spec: &AnomalySpec) -> bool {
        self.windows >= spec.warmup_windows
    }

    /// Feeds one closed window's features.
    pub fn window(&mut self, spec: &AnomalySpec, mean: f64, rms: f64, out: &mut Vec<AnomalyEvent>) {
        self.windows = self.windows.saturating_add(1);
        let warm = self.windows > spec.warmup_windows;
        for (f, x) in Feature::ALL.into_iter().zip([mean, rms]) {
            let st = &mut self.features[f as usize];
            if !warm {
                st.n += 1;
                let d = x - st.ref_mean;
                st.ref_mean += d / f64::from(st.n);
                st.ref_m2 += d * (x - st.ref_mean);
                if st.n == 1 {
                    st.ewma = x;
                } else {
                    let d = x - st.ewma;
                    st.ewma += spec.alpha * d;
                    st.ewma_var = (1.0 - spec.alpha) * (st.ewma_var + spec.alpha * d * d);
                }
                continue;
            }
            let ref_std = floor(
                spec,
                (st.ref_m2 / f64::from(st.n.max(1))).sqrt(),
                st.ref_mean,
            );
            // EWMA z-score against the baseline before this window.
            let ewma_std = floor(spec, st.ewma_var.sqrt().max(ref_std * 0.5), st.ewma);
            let z = (x - st.ewma) / ewma_std;
            let (prev_mean, prev_std) = (st.ewma, ewma_std);
            let d = x - st.ewma;
            st.ewma += spec.alpha * d;
            st.ewma_var = (1.0 - spec.alpha) * (st.ewma_var + spec.alpha * d * d);
            if let Some(raised) = crossed(&mut st.z_active, z.abs(), spec.z_limit) {
                out.push(AnomalyEvent {
                    detector: Detector::EwmaZ,
                    feature: f,
                    raised,
                    upward: z > 0.0,
                    score: z,
                    limit: spec.z_limit,
                    value: x,
                    baseline_mean: prev_mean,
                    baseline_std: prev_std,
                });
            }
            // CUSUM against the frozen reference.
            let s = (x - st.ref_mean) / ref_std;
            let cap = 4.0 * spec.cusum_h;
            st.cusum_up = (st.cusum_up + s - spec.cusum_k).clamp(0.0, cap);
            st.cusum_down = (st.cusum_down - s - spec.cusum_k).clamp(0.0, cap);
            let score = st.cusum_up.max(st.cusum_down);
            let upward = st.cusum_up >= st.cusum_down;
            if let Some(raised) = crossed(&mut st.cusum_active, score, spec.cusum_h) {
                out.push(AnomalyEvent {
                    detector: Detector::Cusum,
                    feature: f,
                    raised,
                    upward,
                    score,
                    limit: spec.cusum_h,
                    value: x,
                    baseline_mean: st.ref_mean,
                    baseline_std: ref_std,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic uniform noise in [-0.5, 0.5) (splitmix64).
    fn noise(i: u32) -> f64 {
        let mut z = u64::from(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    fn spec() -> AnomalySpec {
        AnomalySpec {
            warmup_windows: 20,
            ..AnomalySpec::default()
        }
    }

    #[test]
    fn nothing_is_reported_during_warm_up_or_on_a_steady_signal() {
        let mut b = Baseline::default();
        let mut out = Vec::new();
        for i in 0..5000 {
            let x = 2.0 + 0.1 * noise(i);
            b.window(&spec(), x, x, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn slow_drift_is_caught_by_cusum_before_the_ewma_notices() {
        let mut b = Baseline::default();
        let mut out = Vec::new();
        for i in 0..20 {
            b.window(&spec(), 2.0 + 0.1 * noise(i), 2.0, &mut out);
        }
        // +0.01 per window: 0.1 sigma of the reference per window.
        let mut raised_at = None;
        for i in 0..200 {
            let x = 2.0 + 0.01 * f64::from(i) + 0.1 * noise(100 + i);
            b.window(&spec(), x, 2.0, &mut out);
            if raised_at.is_none() && !out.is_empty() {
                raised_at = Some(i);
            }
        }
        let first = &out[0];
        assert_eq!(
            (first.detector, first.feature, first.raised, first.upward),
            (Detector::Cusum, Feature::Mean, true, true)
        );
        assert!(raised_at.is_some_and(|i| i < 60), "{raised_at:?}");
        assert!(
            !out.iter()
                .any(|e| e.detector == Detector::EwmaZ && e.feature == Feature::Mean),
            "the adapting EWMA absorbs a slow drift"
        );
    }

    #[test]
    fn a_sudden_step_is_a_z_anomaly() {
        let mut b = Baseline::default();
        let mut out = Vec::new();
        for i in 0..40 {
            b.window(&spec(), 2.0, 1.0 + 0.05 * noise(i), &mut out);
        }
        b.window(&spec(), 2.0, 3.0, &mut out);
        assert!(
            out.iter().any(|e| e.detector == Detector::EwmaZ
                && e.feature == Feature::Rms
                && e.raised
                && e.upward),
            "{out:?}"
        );
    }

    #[test]
    fn a_constant_warm_up_does_not_make_every_wobble_an_anomaly() {
        let mut b = Baseline::default();
        let mut out = Vec::new();
        for _ in 0..20 {
            b.window(&spec(), 50.0, 50.0, &mut out);
        }
        // 0.2 % wobble: below the 1 % relative floor.
        for i in 0..100 {
            let x = 50.0 + 0.1 * noise(i);
            b.window(&spec(), x, x, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn baseline_round_trips() {
        let mut b = Baseline::default();
        let mut out = Vec::new();
        for i in 0..30 {
            b.window(&spec(), 1.0 + noise(i), 1.0, &mut out);
        }
        let bytes = postcard::to_allocvec(&b).unwrap();
        let back: Baseline = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(b, back);
        assert!(back.warmed_up(&spec()));
    }
}
