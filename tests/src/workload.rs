//! The shipped condition-monitoring rules (`configs/condition-monitoring.toml`,
//! windows shortened to 10 s) run through the real processing core on the
//! simulator's plant signals (`configs/sim-plant.toml`) at 10 readings per
//! second per sensor: the readings as a plant broker would carry them and
//! the records the gateway would send upstream. Deterministic for a seed.
//! Used by the bandwidth measurement and to train the zstd dictionary.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sensor_gateway::config::Config;
use sensor_gateway::metrics::Metrics;
use sensor_gateway::model::Record;
use sensor_gateway::processor::{CoreSettings, Processor, RawMessage};
use sensor_sim::scenario::Scenario;

/// Readings per second per sensor.
pub const RATE_HZ: u64 = 10;
const T0_MS: i64 = 1_800_000_000_000;

/// What a run produced.
pub struct Workload {
    /// Every reading as the plant broker carried it: topic and JSON payload.
    pub readings: Vec<(String, Vec<u8>)>,
    /// Every record the core emitted, in order.
    pub records: Vec<Record>,
}

/// `machines` machines of the simulated plant (three sensors each) for
/// `seconds`, with the signals' noise drawn from `seed`.
pub fn condition_monitoring(machines: u32, seconds: u64, seed: u64) -> Workload {
    let root = crate::repo_root();
    let rules = std::fs::read_to_string(root.join("configs/condition-monitoring.toml"))
        .expect("configs/condition-monitoring.toml is readable")
        .replace("window = \"1m\"", "window = \"10s\"");
    let config = Config::parse(&rules, Path::new("condition-monitoring.toml"))
        .expect("the shipped condition-monitoring config is valid");
    let mut core = Processor::new(
        CoreSettings::from_config(&config),
        Arc::new(Metrics::new()),
        1,
    );
    let mut scenario = Scenario::load(&root.join("configs/sim-plant.toml"))
        .expect("configs/sim-plant.toml is a valid scenario");
    scenario.lines = 1;
    scenario.machines_per_line = machines;
    let signals: Vec<_> = scenario.sensors.iter().map(|s| s.signal()).collect();
    let topics: Vec<_> = (0..scenario.sensor_count())
        .map(|i| scenario.topic(i))
        .collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut readings = Vec::new();
    let mut records = Vec::new();
    let step_ms = 1000 / RATE_HZ as i64;
    for tick in 0..seconds * RATE_HZ {
        let now = T0_MS + tick as i64 * step_ms;
        let t = tick as f64 / RATE_HZ as f64;
        for (topic, sensor, machine) in &topics {
            let value = signals[*sensor].sample(*machine, t, &mut rng);
            let payload = format!(r#"{{"value":{value:.4},"ts":{now},"seq":{tick}}}"#).into_bytes();
            let msg = RawMessage {
                source: 0,
                topic: topic.clone(),
                payload: payload.clone().into(),
                received_ms: now,
            };
            core.ingest(&msg, now, &mut records);
            readings.push((topic.clone(), payload));
        }
        core.flush_due(now, &mut records);
    }
    core.flush_all(&mut records);
    Workload { readings, records }
}
