//! A plant on a metered cellular uplink: a backlog of hours of summaries
//! (and a few alarms raised at the end of the outage) waits in the
//! gateway's buffer; the link comes back as 64 kbit/s each way with 150 ms
//! of one-way latency and a stall of about 3 s every 30 s or so. The whole
//! backlog drains with nothing lost, alarms first, per-sensor order kept,
//! and over one connection: no keep-alive timeout turns the slow link into
//! a reconnect storm. The drain time and the bytes carried are printed
//! (docs/performance.md, "Draining over a cellular link").
//!
//! The backlog is written through the library's `Buffer`, as the gateway
//! writes it during an outage, which takes a second where a publisher
//! would take minutes. Its length is a parameter: half an hour in every
//! run, six hours with `INTEROP_HEAVY=1`; `DRAIN_HOURS` overrides both.

use std::time::{Duration, Instant};

use sensor_gateway::buffer::Buffer;
use sensor_gateway::metrics::Metrics;
use sensor_gateway::model::{Lane, Record};
use sensor_gateway_e2e::servers::{heavy_enabled, loud};
use sensor_gateway_e2e::*;

/// Windows of the backlog (10 s, as in the shipped configs).
const WINDOW_MS: i64 = 10_000;
const SENSORS: [&str; 2] = ["line1/p101/vibration", "line1/p101/bearing_temp"];
const ALARMS: u64 = 3;

/// The simulated link: 64 kbit/s each way, 150 ms one way, stalls.
fn cellular() -> LinkProfile {
    LinkProfile {
        stall_every: Some(Duration::from_secs(30)),
        stall_for: Duration::from_secs(3),
        seed: 7,
        ..LinkProfile::cellular(64_000, Duration::from_millis(150))
    }
}

/// Batches of up to 100 records, CBOR, zstd with the shipped dictionary
/// (configs/cellular.toml's choice).
const BATCHED: &str = "
[upstream.batch]
max_records = 100
max_bytes = 65536
max_delay = \"1s\"
encoding = \"cbor\"
compression = \"zstd\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_hour_backlog_drains_over_a_64kbit_cellular_link() {
    drain(hours_or(0.5), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hour_backlog_drains_batched_and_compressed_over_a_64kbit_cellular_link() {
    drain(hours_or(6.0), BATCHED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hour_backlog_drains_over_a_64kbit_cellular_link() {
    if !heavy_enabled(
        "six_hour_backlog_drains_over_a_64kbit_cellular_link",
        "draining six hours over 64 kbit/s takes minutes",
    ) {
        return;
    }
    drain(hours_or(6.0), "").await;
}

fn hours_or(default: f64) -> f64 {
    std::env::var("DRAIN_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(default)
}

/// A summary as the shipped condition-monitoring config produces it.
fn summary_payload(seq: u64, sensor: &str, end_ms: i64, i: i64) -> String {
    let mean = 2.0 + (i % 17) as f64 * 0.01;
    format!(
        r#"{{"schema":1,"kind":"summary","event":"window","gateway":"gw-e2e","seq":{seq},"sensor":"{sensor}","labels":{{"line":"line1","machine":"p101"}},"unit":"mm/s","window_start_ms":{},"window_end_ms":{end_ms},"count":100,"min":{:.3},"max":{:.3},"mean":{mean:.3},"std":0.113,"rms":{:.3},"p95":{:.3},"slope_per_hour":0.004}}"#,
        end_ms - WINDOW_MS,
        mean - 0.3,
        mean + 0.4,
        mean + 0.003,
        mean + 0.2,
    )
}

fn alarm_payload(seq: u64, sensor: &str, ts: i64) -> String {
    format!(
        r#"{{"schema":1,"kind":"alarm","event":"raised","gateway":"gw-e2e","seq":{seq},"sensor":"{sensor}","alarm_id":"{sensor}/high","type":"high","severity":"warning","value":2.93,"limit":2.8,"ts_ms":{ts}}}"#
    )
}

/// Writes `hours` of summaries of every sensor, then the alarms, into the
/// buffer under `state`; returns (summaries, alarms, payload bytes).
pub fn write_backlog(
    config: &sensor_gateway::Config,
    state: &std::path::Path,
    hours: f64,
) -> (u64, u64, u64) {
    let metrics = std::sync::Arc::new(Metrics::new());
    let (mut buffer, _) = Buffer::open(&config.buffer, state, metrics).expect("open the buffer");
    let now = crate::aligned_base_ms();
    let windows = (hours * 3600.0 * 1000.0 / WINDOW_MS as f64) as i64;
    let first = buffer.next_seq();
    // (lane, time, topic) of each record, oldest summaries first, the
    // alarms raised at the end of the outage last.
    let mut records: Vec<(Lane, i64, String)> = Vec::new();
    for w in 0..windows {
        let end = now - (windows - w) * WINDOW_MS;
        for sensor in SENSORS {
            records.push((Lane::Summary, end, sensor.to_owned()));
        }
    }
    let summaries = records.len() as u64;
    for a in 0..ALARMS {
        let sensor = SENSORS[a as usize % SENSORS.len()];
        records.push((Lane::Alarm, now - 1000 + a as i64, sensor.to_owned()));
    }
    let mut bytes = 0;
    for (i, (lane, ts, sensor)) in records.into_iter().enumerate() {
        let seq = first + i as u64;
        let (kind, payload) = match lane {
            Lane::Alarm => ("alarm", alarm_payload(seq, &sensor, ts)),
            _ => (
                "summary",
                summary_payload(seq, &sensor, ts, i as i64 / SENSORS.len() as i64),
            ),
        };
        bytes += payload.len() as u64;
        let record = Record {
            seq,
            lane,
            ts_ms: ts,
            topic: format!("gateways/gw-e2e/{kind}/{sensor}"),
            payload: payload.into_bytes(),
        };
        buffer.push(record, now);
    }
    buffer.close(now);
    (summaries, ALARMS, bytes)
}

/// Drains `hours` of backlog with `batch` (an `[upstream.batch]` table or
/// nothing) in the gateway's config.
async fn drain(hours: f64, batch: &str) {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start_with("127.0.0.1:0".parse().unwrap(), upstream.addr, cellular())
        .await
        .unwrap();
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let text = format!("{}{batch}", gateway_config(source.addr, uplink.listen, ""))
        .replace("@STATE_DIR@", &state.display().to_string());
    let config =
        sensor_gateway::Config::parse(&text, std::path::Path::new("t.toml")).expect("valid config");
    let (summaries, alarms, payload_bytes) = write_backlog(&config, &state, hours);
    let total = summaries + alarms;

    let started = Instant::now();
    let mut gw = Gateway::start_in(dir, &text, &state);
    gw.wait_ready().await;
    // Generous: about 2.5 times the payload at the link's rate.
    let within = Duration::from_secs(60 + payload_bytes * 8 * 5 / 2 / 64_000);
    let messages = sub.wait_for_unique(total as usize, within).await;
    let took = started.elapsed();
    let link = uplink.stats();

    let unique = dedupe(&messages);
    assert_eq!(unique.len() as u64, total, "every record exactly once");
    let first: Vec<&str> = unique
        .iter()
        .take(alarms as usize)
        .map(|m| m["kind"].as_str().unwrap_or_default())
        .collect();
    assert!(
        first.iter().all(|k| *k == "alarm"),
        "alarms first: the first arrivals were {first:?}"
    );
    assert_order_per_sensor(&unique);
    wait_until("every PUBACK", Duration::from_secs(30), || {
        gw.metric("gateway_upstream_queue_records") == 0.0
    })
    .await;
    let connections = gw.metric("gateway_upstream_connections_total");
    assert!(
        connections <= 1.0 + link.resets as f64,
        "a reconnect storm: {connections} connections over a link reset {} times\n{}",
        link.resets,
        gw.log()
    );
    loud(&format!(
        "DRAIN over 64 kbit/s, 150 ms, stalls ~3 s every ~30 s, {}: {hours} h backlog = {summaries} summaries + {alarms} alarms, \
         {payload_bytes} payload bytes; drained in {:.1} s; link carried {} bytes up, {} down; {} duplicates; {connections} connection(s)",
        if batch.is_empty() { "one JSON message per record" } else { "batched, CBOR, zstd" },
        took.as_secs_f64(),
        link.bytes_up,
        link.bytes_down,
        messages.len() - unique.len(),
    ));
}
