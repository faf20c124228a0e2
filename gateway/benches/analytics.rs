//! The processing core with every statistic, alarms and anomaly detection
//! on: readings per second on one core, and memory per sensor.
//!
//! Run: cargo bench -p sensor-gateway --bench analytics
//!
//! Readings enter as a serial port delivers them (decoded, named), so that
//! the figure is the core's own cost: interning lookup, validation, alarm
//! state machines, the window's moments and percentile sketch, and window
//! closing with anomaly detection and summary encoding. `core.rs` measures
//! the MQTT path, JSON decoding included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput};
use sensor_gateway::config::Config;
use sensor_gateway::metrics::Metrics;
use sensor_gateway::processor::{CoreSettings, Processor};
use sensor_gateway::wire::SerialReading;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Every statistic, every alarm kind, anomaly detection.
pub const CONFIG: &str = r#"
[gateway]
id = "bench"
[[source]]
kind = "serial"
device = "/dev/null"
format = "frame"
[[sensor]]
match = "*"
unit = "mm/s"
window = "10s"
stats = ["count", "min", "max", "mean", "std", "rms", "p2p", "crest", "skewness", "kurtosis",
         "p50", "p90", "p95", "p99", "slope", "first_last"]
[sensor.alarm]
low_low = -1.0
low = 0.0
high = 7.1
high_high = 11.0
hysteresis = 0.2
on_delay_readings = 3
latch = true
rate_of_change = 60.0
rate_interval = "10s"
stale_after = "5m"
[sensor.anomaly]
warmup_windows = 10
[pipeline]
max_sensors = 20000
[upstream]
broker = "127.0.0.1:1884"
"#;

const T0: i64 = 1_700_000_000_000;

fn readings(sensors: usize, n: usize) -> Vec<SerialReading> {
    let ids: Vec<Arc<str>> = (0..sensors)
        .map(|i| Arc::from(format!("line{}/m{}/vibration", i / 1000, i % 1000)))
        .collect();
    (0..n)
        .map(|i| SerialReading {
            sensor: ids[i % sensors].clone(),
            unit: None,
            ts_ms: T0 + (i / sensors) as i64 * 10,
            value: 2.0 + ((i % 97) as f64 * 0.37).sin(),
            gateway_clock: false,
        })
        .collect()
}

fn processor() -> Processor {
    processor_with(CONFIG)
}

/// The core of one config.
fn processor_with(text: &str) -> Processor {
    let config = Config::parse(text, Path::new("bench.toml")).expect("valid bench config");
    Processor::new(
        CoreSettings::from_config(&config),
        Arc::new(Metrics::new()),
        1,
    )
}

/// The same sensors without any rule: the default statistics (count, min,
/// max, mean, std, first/last), no alarms, no anomaly detection.
const DEFAULT_CONFIG: &str = r#"
[gateway]
id = "bench"
[[source]]
kind = "serial"
device = "/dev/null"
format = "frame"
[pipeline]
max_sensors = 20000
[upstream]
broker = "127.0.0.1:1884"
"#;

/// Live heap bytes per sensor, each with one open window of 100 readings.
fn report_memory() {
    for (what, config) in [
        ("every statistic, alarms and anomaly detection", CONFIG),
        ("the default statistics, no alarms", DEFAULT_CONFIG),
    ] {
        for sensors in [1_000usize, 10_000] {
            report_memory_of(what, config, sensors);
        }
    }
}

fn report_memory_of(what: &str, config: &str, sensors: usize) {
    {
        let rs = readings(sensors, sensors * 100);
        let before = LIVE.load(Ordering::Relaxed);
        let mut p = processor_with(config);
        let mut out = Vec::new();
        for r in &rs {
            p.ingest_serial(r, r.ts_ms, &mut out);
        }
        out.clear();
        out.shrink_to_fit();
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "memory: {sensors} sensors with {what}: {} bytes per sensor (one open window)",
            bytes / sensors as i64
        );
        drop(p);
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("analytics");
    // 100 readings per sensor and window (10 s windows at 10 Hz): the
    // steady state, with one window close per 100 readings.
    for sensors in [100usize, 10_000] {
        let n = sensors.max(2_000) * 100;
        let rs = readings(sensors, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("all_stats_alarms_anomaly_{sensors}_sensors"), |b| {
            b.iter_batched_ref(
                || {
                    let mut p = processor();
                    let mut out = Vec::new();
                    for r in &rs[..sensors] {
                        p.ingest_serial(r, r.ts_ms, &mut out);
                    }
                    (p, out)
                },
                |(p, out)| {
                    for r in &rs {
                        p.ingest_serial(r, r.ts_ms, out);
                    }
                    p.flush_due(T0 + 600_000, out);
                    out.clear();
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn main() {
    report_memory();
    let mut c = Criterion::default().sample_size(20).configure_from_args();
    benches(&mut c);
    c.final_summary();
}
