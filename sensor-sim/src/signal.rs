//! Signal models: pure functions of elapsed time, the machine and a seeded RNG.

use rand::Rng;
use serde::Deserialize;

use crate::scenario::SensorSpec;

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

/// The value of `spec` on machine `machine` at `t` seconds after start.
pub fn sample(spec: &SensorSpec, machine: u32, t: f64, rng: &mut impl Rng) -> f64 {
    // Machines differ a little from each other, deterministically.
    let machine_offset = ((machine as f64 * 0.618_034).fract() - 0.5) * 0.1 * spec.base.abs();
    let hours = t / 3600.0;
    let mut v =
        spec.base + machine_offset + spec.drift_per_hour * hours + spec.noise * gaussian(rng);
    match spec.kind {
        SignalKind::Temperature => {}
        SignalKind::Vibration => {
            if let Some(start) = spec.wear_start() {
                let worn = (t - start.as_secs_f64()).max(0.0) / 3600.0;
                v += spec.wear_rate * worn * worn;
            }
            v = v.max(0.0);
        }
        SignalKind::MotorCurrent => {
            if let Some(period) = spec.load_period() {
                let phase = std::f64::consts::TAU * t / period.as_secs_f64().max(0.001);
                v += spec.load_amplitude * phase.sin();
            }
            v = v.max(0.0);
        }
    }
    if spec.spike_probability > 0.0 && rng.random::<f64>() < spec.spike_probability {
        v += spec.spike_magnitude;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn spec(kind: SignalKind) -> SensorSpec {
        SensorSpec {
            name: "x".into(),
            kind,
            base: 2.0,
            noise: 0.0,
            drift_per_hour: 0.0,
            spike_probability: 0.0,
            spike_magnitude: 0.0,
            wear_start: Some("1h".into()),
            wear_rate: 4.0,
            load_period: Some("60s".into()),
            load_amplitude: 1.0,
            stop_after: None,
        }
    }

    #[test]
    fn bearing_wear_raises_vibration_after_it_starts() {
        let mut rng = SmallRng::seed_from_u64(1);
        let s = spec(SignalKind::Vibration);
        let before = sample(&s, 0, 1800.0, &mut rng);
        let at_start = sample(&s, 0, 3600.0, &mut rng);
        let later = sample(&s, 0, 3.0 * 3600.0, &mut rng);
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
        let s = spec(SignalKind::MotorCurrent);
        let quarter = sample(&s, 0, 15.0, &mut rng);
        let three_quarters = sample(&s, 0, 45.0, &mut rng);
        assert!((quarter - three_quarters - 2.0).abs() < 1e-9);
    }
}
