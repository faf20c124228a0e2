//! Signal models: pure functions of elapsed time, the machine and a seeded RNG.
//! Each model takes its own parameters (`SignalModel`), not a scenario file's.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Bearing or winding temperature: slow drift, noise, rare spikes.
    Temperature,
    /// Vibration velocity RMS (mm/s): noise, and after `wear_start` a
    /// bearing-wear term that grows with the square of time.
    Vibration,
    /// Motor current (A): a periodic load cycle plus noise.
    MotorCurrent,
}

/// Standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The parameters of one sensor's signal, already checked and typed. The
/// scenario file builds one per sensor (`SensorSpec::signal`); the models know
/// nothing of scenario files.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalModel {
    pub kind: SignalKind,
    /// The healthy operating value.
    pub base: f64,
    /// Standard deviation of the measurement noise.
    pub noise: f64,
    /// Slow linear drift, in units per hour.
    pub drift_per_hour: f64,
    /// Probability per reading of a short spike.
    pub spike_probability: f64,
    pub spike_magnitude: f64,
    /// Vibration only: bearing wear, if it ever starts.
    pub wear: Option<Wear>,
    /// Motor current only: the load cycle, if there is one.
    pub load: Option<LoadCycle>,
}

/// Bearing wear: a term that grows with the square of the time since `start`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wear {
    pub start: Duration,
    /// Growth of the wear term, units per hour squared.
    pub rate: f64,
}

/// A periodic load: a sine of `amplitude` with period `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadCycle {
    pub period: Duration,
    pub amplitude: f64,
}

impl SignalModel {
    /// The value on machine `machine` at `t` seconds after start.
    pub fn sample(&self, machine: u32, t: f64, rng: &mut impl Rng) -> f64 {
        // Machines differ a little from each other, deterministically.
        let machine_offset = ((machine as f64 * 0.618_034).fract() - 0.5) * 0.1 * self.base.abs();
        let hours = t / 3600.0;
        let mut v =
            self.base + machine_offset + self.drift_per_hour * hours + self.noise * gaussian(rng);
        match self.kind {
            SignalKind::Temperature => {}
            SignalKind::Vibration => {
                if let Some(wear) = self.wear {
                    let worn = (t - wear.start.as_secs_f64()).max(0.0) / 3600.0;
                    v += wear.rate * worn * worn;
                }
                v = v.max(0.0);
            }
            SignalKind::MotorCurrent => {
                if let Some(load) = self.load {
                    let phase = std::f64::consts::TAU * t / load.period.as_secs_f64().max(0.001);
                    v += load.amplitude * phase.sin();
                }
                v = v.max(0.0);
            }
        }
        if self.spike_probability > 0.0 && rng.random::<f64>() < self.spike_probability {
            v += self.spike_magnitude;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn model(kind: SignalKind) -> SignalModel {
        SignalModel {
            kind,
            base: 2.0,
            noise: 0.0,
            drift_per_hour: 0.0,
            spike_probability: 0.0,
            spike_magnitude: 0.0,
            wear: Some(Wear {
                start: Duration::from_secs(3600),
                rate: 4.0,
            }),
            load: Some(LoadCycle {
                period: Duration::from_secs(60),
                amplitude: 1.0,
            }),
        }
    }

    #[test]
    fn bearing_wear_raises_vibration_after_it_starts() {
        let mut rng = SmallRng::seed_from_u64(1);
        let s = model(SignalKind::Vibration);
        let before = s.sample(0, 1800.0, &mut rng);
        let at_start = s.sample(0, 3600.0, &mut rng);
        let later = s.sample(0, 3.0 * 3600.0, &mut rng);
        assert_eq!(before, at_start);
        assert!((later - at_start - 16.0).abs() < 1e-9, "{later} {at_start}");
    }

    #[test]
    fn noise_has_the_configured_spread() {
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| gaussian(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn motor_current_follows_the_load_cycle() {
        let mut rng = SmallRng::seed_from_u64(1);
        let s = model(SignalKind::MotorCurrent);
        let quarter = s.sample(0, 15.0, &mut rng);
        let three_quarters = s.sample(0, 45.0, &mut rng);
        assert!((quarter - three_quarters - 2.0).abs() < 1e-9);
    }
}
