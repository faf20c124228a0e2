//! Readings in, summaries out: counts add up exactly, statistics are right,
//! invalid readings are counted by reason and never reach a summary.

use std::collections::HashMap;
use std::time::Duration;

use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_statistics_are_exact_rumqttd() {
    exact_counts(BrokerKind::Rumqttd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_statistics_are_exact_mosquitto() {
    if mosquitto_available() {
        exact_counts(BrokerKind::Mosquitto).await;
    }
}

async fn exact_counts(kind: BrokerKind) {
    let source = Broker::start(kind).await;
    let upstream = Broker::start(kind).await;
    let sub = Subscriber::start_keeping_topics(upstream.addr, "gateways/#").await;
    let rules = r#"
[[sensor]]
match = "*/temp"
min = -40.0
max = 150.0
window = "1s"
unit = "degC"
"#;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, rules));
    gw.wait_ready().await;

    let base = aligned_base_ms();
    let sensors = ["l1/m1/temp", "l1/m1/vib", "l1/m2/temp"];
    // Expected (count, min, max, sum) per (sensor, window start).
    let mut expected: HashMap<(String, i64), (u64, f64, f64, f64)> = HashMap::new();
    let mut publisher = Publisher::connect(source.addr).await;
    for (si, sensor) in sensors.iter().enumerate() {
        for (window, n) in [(0i64, 50u64), (1, 30)] {
            for i in 0..n {
                let ts = base + window * 1000 + (i as i64 * 997 / n as i64);
                let value = si as f64 * 10.0 + (i as f64 * 0.37).sin() * 5.0 + window as f64;
                publisher
                    .send(
                        &format!("plant/{sensor}"),
                        format!(r#"{{"value":{value},"ts":{ts},"seq":{i}}}"#),
                    )
                    .await;
                let e = expected
                    .entry((sensor.to_string(), base + window * 1000))
                    .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0));
                e.0 += 1;
                e.1 = e.1.min(value);
                e.2 = e.2.max(value);
                e.3 += value;
            }
        }
    }
    // Invalid input, each with its own reason.
    let bad: &[(&str, String)] = &[
        ("plant/l1/m1/temp", "#@!{not json".into()),
        ("plant/l1/m1/temp", "{\"value\":12.5,\"ts\"".into()),
        ("plant/l1/m1/vib", "\u{0}\u{1}binary".into()),
        (
            "plant/l1/m1/temp",
            format!(r#"{{"value":500.0,"ts":{base}}}"#),
        ),
        (
            "plant/l1/m2/temp",
            format!(r#"{{"value":-41.0,"ts":{base}}}"#),
        ),
        ("plant/l1/m1/vib", r#"{"reading":1.0}"#.into()),
        ("plant/l1/m1/vib", r#"{"value":"NaN"}"#.into()),
        (
            "plant/l1/m1/vib",
            format!(r#"{{"value":1,"pad":"{}"}}"#, "x".repeat(5000)),
        ),
    ];
    for (topic, payload) in bad {
        publisher.send(topic, payload.clone()).await;
    }
    publisher.flush().await;

    let messages = sub.wait_for_unique(6, Duration::from_secs(20)).await;
    let summaries = dedupe(&messages);
    assert_eq!(
        summaries.len(),
        6,
        "exactly one summary per sensor and window: {summaries:#?}"
    );
    let total: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 240, "every valid reading is in exactly one summary");
    for s in &summaries {
        let key = (
            s["sensor"].as_str().unwrap().to_owned(),
            s["window_start_ms"].as_i64().unwrap(),
        );
        let (count, min, max, sum) = expected[&key];
        assert_eq!(s["gateway"], "gw-e2e");
        assert_eq!(s["schema"], 1);
        assert_eq!(s["count"].as_u64().unwrap(), count, "{key:?}");
        assert_eq!(s["min"].as_f64().unwrap(), min, "{key:?}");
        assert_eq!(s["max"].as_f64().unwrap(), max, "{key:?}");
        let mean = s["mean"].as_f64().unwrap();
        assert!((mean - sum / count as f64).abs() < 1e-9, "{key:?}: {mean}");
        assert!(
            s["max"].as_f64().unwrap() < 150.0,
            "out-of-range values never reach a summary"
        );
    }
    let mut seqs: Vec<u64> = summaries
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());

    // Every message is accounted for in the metrics.
    wait_until(
        "the metrics to show every message",
        Duration::from_secs(10),
        || {
            gw.metric("gateway_messages_received_total") >= 248.0
                && gw.metric("gateway_upstream_acked_total") >= 6.0
        },
    )
    .await;
    let m = gw.metrics();
    let r = |reason: &str| m[&format!("gateway_readings_rejected_total{{reason=\"{reason}\"}}")];
    assert_eq!(m["gateway_messages_received_total"], 248.0);
    assert_eq!(m["gateway_readings_accepted_total"], 240.0);
    assert_eq!(r("json_syntax"), 3.0);
    assert_eq!(r("out_of_range"), 2.0);
    assert_eq!(r("missing_value"), 1.0);
    assert_eq!(r("value_not_number"), 1.0);
    assert_eq!(r("oversize"), 1.0);
    assert_eq!(m["gateway_summaries_produced_total"], 6.0);
    assert_eq!(m["gateway_upstream_acked_total"], 6.0);
    assert!(
        gw.log().contains("Dropped a reading"),
        "rejections are logged"
    );
    let checked = crate::schemas::check_upstream(&sub);
    assert!(checked.get("summary") >= Some(&6), "{checked:?}");
}

/// A node with a wrong real-time clock stamps one reading in 2100: it is
/// rejected as `future` and costs only itself. Before, it moved the
/// sensor's watermark to 2100, so every correctly stamped reading after it
/// was `late` and a summary of 2100 went upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_stamped_in_2100_costs_only_itself() {
    let kind = if mosquitto_available() {
        BrokerKind::Mosquitto
    } else {
        BrokerKind::Rumqttd
    };
    let source = Broker::start(kind).await;
    let upstream = Broker::start(kind).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, ""));
    gw.wait_ready().await;
    let base = aligned_base_ms();
    let y2100 = 4_102_444_800_000i64;
    let mut publisher = Publisher::connect(source.addr).await;
    // Two windows of 10 readings; the bad one comes after the third.
    for i in 0..20i64 {
        let ts = base + i * 100;
        publisher
            .send("plant/l1/m1/temp", format!(r#"{{"value":{i},"ts":{ts}}}"#))
            .await;
        if i == 2 {
            publisher
                .send(
                    "plant/l1/m1/temp",
                    format!(r#"{{"value":1000,"ts":{y2100}}}"#),
                )
                .await;
        }
    }
    publisher.flush().await;
    let messages = sub.wait_for_unique(2, Duration::from_secs(20)).await;
    wait_until(
        "the metrics to show every message",
        Duration::from_secs(10),
        || gw.metric("gateway_messages_received_total") >= 21.0,
    )
    .await;
    // A third summary would be the 2100 window; give it time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let summaries = dedupe(&sub.snapshot());
    assert_eq!(summaries.len(), 2, "{summaries:#?} {messages:#?}");
    for s in &summaries {
        assert_eq!(s["count"], 10, "{s}");
        assert!(s["window_end_ms"].as_i64().unwrap() <= base + 2000, "{s}");
        assert!(s["max"].as_f64().unwrap() < 1000.0, "{s}");
    }
    let m = gw.metrics();
    let r = |reason: &str| {
        m.get(&format!(
            "gateway_readings_rejected_total{{reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(r("future"), 1.0);
    assert_eq!(r("late"), 0.0);
    assert_eq!(m["gateway_readings_accepted_total"], 20.0);
    assert!(gw.log().contains("max_future_skew"), "{}", gw.log());
}
