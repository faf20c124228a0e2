//! Processing-core throughput: raw MQTT messages (topic + JSON payload) in,
//! window summaries out, on one core, with time passed in; and the reject
//! path, messages whose payloads do not decode (counted, not described).
//!
//! Run: cargo bench -p sensor-gateway --bench core

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sensor_gateway::config::Config;
use sensor_gateway::metrics::Metrics;
use sensor_gateway::model::Record;
use sensor_gateway::processor::{CoreSettings, Processor, RawMessage};

const CONFIG: &str = r#"
[gateway]
id = "bench"
[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"
[[sensor]]
match = "*/temperature"
min = -40.0
max = 200.0
window = "10s"
[[sensor]]
match = "*/vibration"
window = "10s"
[pipeline]
max_sensors = 20000
[upstream]
broker = "127.0.0.1:1884"
"#;

const T0: i64 = 1_700_000_000_000;

fn messages(sensors: usize, n: usize) -> Vec<RawMessage> {
    let topics: Vec<String> = (0..sensors)
        .map(|i| {
            let kind = if i % 2 == 0 {
                "temperature"
            } else {
                "vibration"
            };
            format!("plant/line{}/m{}/{kind}", i / 1000, i % 1000)
        })
        .collect();
    (0..n)
        .map(|i| {
            let ts = T0 + (i / sensors) as i64 * 10;
            RawMessage {
                source: 0,
                topic: topics[i % sensors].clone(),
                payload: format!(
                    r#"{{"value":{:.3},"ts":{ts},"seq":{}}}"#,
                    40.0 + (i % 97) as f64 * 0.1,
                    i / sensors
                )
                .into(),
                received_ms: ts,
            }
        })
        .collect()
}

/// A core that has seen every sensor once: all interned, as in steady state.
fn warm_processor(config: &Config, sensors: usize) -> (Processor, Vec<Record>) {
    let mut p = Processor::new(
        CoreSettings::from_config(config),
        Arc::new(Metrics::new()),
        1,
    );
    let mut out = Vec::new();
    for m in &messages(sensors, sensors) {
        p.ingest(m, T0, &mut out);
    }
    (p, out)
}

fn bench_core(c: &mut Criterion) {
    let config = Config::parse(CONFIG, Path::new("bench.toml")).expect("bench config is valid");
    let mut group = c.benchmark_group("core");
    for sensors in [100usize, 10_000] {
        let n = 100_000;
        let msgs = messages(sensors, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("ingest_json_{sensors}_sensors"), |b| {
            b.iter_batched_ref(
                || warm_processor(&config, sensors),
                |(p, out)| {
                    for m in &msgs {
                        p.ingest(m, m.received_ms, out);
                    }
                    p.flush_due(T0 + 60_000, out);
                    out.clear();
                },
                BatchSize::LargeInput,
            )
        });
    }
    // The reject path: known sensors, payloads that do not decode.
    let sensors = 100usize;
    let n = 100_000;
    let msgs = rejected_messages(sensors, n);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("ingest_rejected_json_{sensors}_sensors"), |b| {
        b.iter_batched_ref(
            || warm_processor(&config, sensors),
            |(p, out)| {
                for m in &msgs {
                    p.ingest(m, m.received_ms, out);
                }
                out.clear();
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Messages to known sensors whose payloads fail to decode, a different
/// way each in turn.
fn rejected_messages(sensors: usize, n: usize) -> Vec<RawMessage> {
    const BAD: [&str; 5] = [
        r#"{"value":"hot","ts":1}"#,
        r#"{"other":1}"#,
        r#"{"value":1,"seq":-1}"#,
        r#"{"value":1,"ts":"yesterday"}"#,
        "not json",
    ];
    messages(sensors, n)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.payload = BAD[i % BAD.len()].as_bytes().to_vec().into();
            m
        })
        .collect()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_core
}
criterion_main!(benches);
