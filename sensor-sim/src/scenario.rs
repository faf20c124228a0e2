//! Scenario files: which machines and sensors to simulate, and how fast.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::signal::{LoadCycle, SignalKind, SignalModel, Wear};

/// A simulated plant, as read from a scenario TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Topics are `{topic_prefix}/{line}/{machine}/{sensor}`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default = "one")]
    pub lines: u32,
    #[serde(default = "one")]
    pub machines_per_line: u32,
    /// Readings per second, summed over every sensor of every machine.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// `json` (`{"value":..,"ts":..,"seq":..}`) or `number` (a bare number).
    #[serde(default = "default_payload")]
    pub payload: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Fraction of messages replaced by a fault (garbage, NaN, out of range).
    #[serde(default)]
    pub fault_probability: f64,
    #[serde(rename = "sensor")]
    pub sensors: Vec<SensorSpec>,
}

/// One sensor type fitted to every machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSpec {
    pub name: String,
    pub kind: SignalKind,
    /// The healthy operating value.
    pub base: f64,
    /// Standard deviation of the measurement noise.
    #[serde(default)]
    pub noise: f64,
    /// Slow linear drift, in units per hour.
    #[serde(default)]
    pub drift_per_hour: f64,
    /// Probability per reading of a short spike.
    #[serde(default)]
    pub spike_probability: f64,
    #[serde(default)]
    pub spike_magnitude: f64,
    /// Vibration only: when bearing wear starts (a duration such as "30s").
    pub wear_start: Option<String>,
    /// Vibration only: growth of the wear term, units per hour squared.
    #[serde(default)]
    pub wear_rate: f64,
    /// Motor current only: period of the load cycle (a duration).
    pub load_period: Option<String>,
    /// Motor current only: amplitude of the load cycle.
    #[serde(default)]
    pub load_amplitude: f64,
    /// The sensor falls silent after this long (a duration): a cut cable,
    /// for the stale-sensor alarm.
    pub stop_after: Option<String>,
}

fn default_prefix() -> String {
    "plant".into()
}
fn one() -> u32 {
    1
}
fn default_rate() -> f64 {
    100.0
}
fn default_payload() -> String {
    "json".into()
}
fn default_seed() -> u64 {
    42
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {} is invalid", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        anyhow::ensure!(
            s.rate > 0.0 && s.rate.is_finite(),
            "rate must be a positive number"
        );
        anyhow::ensure!(
            s.lines > 0 && s.machines_per_line > 0,
            "lines and machines_per_line must be at least 1"
        );
        anyhow::ensure!(
            !s.sensors.is_empty(),
            "a scenario needs at least one [[sensor]]"
        );
        anyhow::ensure!(
            matches!(s.payload.as_str(), "json" | "number"),
            "payload must be \"json\" or \"number\""
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&s.fault_probability),
            "fault_probability must be within 0..1"
        );
        for sensor in &s.sensors {
            for d in [&sensor.wear_start, &sensor.load_period, &sensor.stop_after]
                .into_iter()
                .flatten()
            {
                humantime::parse_duration(d)
                    .with_context(|| format!("sensor {}: `{d}` is not a duration", sensor.name))?;
            }
        }
        Ok(s)
    }

    /// Number of distinct sensors (topics).
    pub fn sensor_count(&self) -> u64 {
        u64::from(self.lines) * u64::from(self.machines_per_line) * self.sensors.len() as u64
    }

    /// The topic of sensor number `i` (0-based, machines major).
    pub fn topic(&self, i: u64) -> (String, usize, u32) {
        let per_machine = self.sensors.len() as u64;
        let machine = (i / per_machine) as u32;
        let sensor = (i % per_machine) as usize;
        let line = machine / self.machines_per_line;
        let m = machine % self.machines_per_line;
        (
            format!(
                "{}/line{}/m{}/{}",
                self.topic_prefix,
                line + 1,
                m + 1,
                self.sensors[sensor].name
            ),
            sensor,
            machine,
        )
    }
}

impl SensorSpec {
    /// The signal model this sensor follows.
    pub fn signal(&self) -> SignalModel {
        SignalModel {
            kind: self.kind,
            base: self.base,
            noise: self.noise,
            drift_per_hour: self.drift_per_hour,
            spike_probability: self.spike_probability,
            spike_magnitude: self.spike_magnitude,
            wear: self.wear_start().map(|start| Wear {
                start,
                rate: self.wear_rate,
            }),
            load: self.load_period().map(|period| LoadCycle {
                period,
                amplitude: self.load_amplitude,
            }),
        }
    }

    fn wear_start(&self) -> Option<Duration> {
        self.wear_start
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
    }

    pub fn stop_after(&self) -> Option<Duration> {
        self.stop_after
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
    }

    fn load_period(&self) -> Option<Duration> {
        self.load_period
            .as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
    }
}
