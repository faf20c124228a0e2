//! Reload without losing state: `sensor-gateway reload` (SIGHUP through the
//! pid file) with one rule changed and one unchanged, then with a config
//! that has a mistake.

use std::time::Duration;

use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

const HOUR_MS: i64 = 3_600_000;

/// Temperature: hourly windows, a high alarm at 50, anomaly detection warm
/// after two windows. Pressure: hourly windows (`{pressure_window}`).
fn rules(pressure_window: &str) -> String {
    format!(
        r#"
[[sensor]]
match = "*/temp"
window = "1h"

[sensor.alarm]
high = 50.0
hysteresis = 1.0

[sensor.anomaly]
warmup_windows = 2

[[sensor]]
match = "*/pressure"
window = "{pressure_window}"
"#
    )
}

fn reading(value: f64, ts: i64) -> String {
    format!(r#"{{"value":{value},"ts":{ts}}}"#)
}

fn of_kind<'a>(messages: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    messages.iter().filter(|m| m["kind"] == kind).collect()
}

async fn reload_keeps_unchanged_sensors_and_refuses_a_bad_config(kind: BrokerKind) {
    let source = Broker::start(kind).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, &rules("1h")));
    gw.wait_ready().await;
    let pid_file = gw.pid_file();
    let pid_file = pid_file.to_str().unwrap();
    let config = gw.config_path();
    let config = config.to_str().unwrap();
    assert!(gw.pid_file().exists(), "run --pid-file writes it");

    // Event time in whole hours, hours ago: windows close only by the
    // readings' own times, never by the test's pace.
    let h = aligned_base_ms() - aligned_base_ms().rem_euclid(HOUR_MS) - 6 * HOUR_MS;
    let mut publisher = Publisher::connect(source.addr).await;
    // Two temperature windows close (the baseline is warm after them);
    // the third is open with the alarm raised; pressure's first is open.
    for (topic, value, ts) in [
        ("plant/l1/m1/temp", 20.0, h + 60_000),
        ("plant/l1/m1/temp", 21.0, h + HOUR_MS + 60_000),
        ("plant/l1/m1/temp", 60.0, h + 2 * HOUR_MS + 60_000),
        ("plant/l1/m1/pressure", 3.0, h + 2 * HOUR_MS + 60_000),
    ] {
        publisher.send(topic, reading(value, ts)).await;
    }
    publisher.flush().await;
    let messages = sub.wait_for_unique(3, Duration::from_secs(10)).await;
    assert_eq!(of_kind(&messages, "summary").len(), 2);
    assert_eq!(of_kind(&messages, "alarm")[0]["event"], "raised");

    // Pressure's rule changes; temperature's does not.
    gw.write_config(&gateway_config(source.addr, upstream.addr, &rules("30m")));
    let (code, text) = gw.command(&["reload", "--pid-file", pid_file, "--config", config]);
    assert_eq!(code, 0, "{text}");
    wait_until("the reload applied", Duration::from_secs(10), || {
        gw.metric("gateway_reloads_applied_total") >= 1.0
    })
    .await;
    // The changed sensor's open window is flushed at once.
    let messages = sub.wait_for_unique(4, Duration::from_secs(10)).await;
    let pressure: Vec<_> = of_kind(&messages, "summary")
        .into_iter()
        .filter(|m| m["sensor"] == "l1/m1/pressure")
        .collect();
    assert_eq!(pressure.len(), 1);
    assert_eq!(pressure[0]["count"], 1);

    // Temperature's open window takes a reading after the reload; the
    // alarm is still active (nothing raised again); the next hour closes
    // the window, and the warm baseline sees its jump.
    for (value, ts) in [(62.0, h + 2 * HOUR_MS + 120_000), (20.0, h + 3 * HOUR_MS)] {
        publisher.send("plant/l1/m1/temp", reading(value, ts)).await;
    }
    publisher.flush().await;
    wait_until(
        "the temperature window closed",
        Duration::from_secs(10),
        || {
            sub.snapshot()
                .iter()
                .any(|m| m["kind"] == "summary" && m["window_start_ms"] == h + 2 * HOUR_MS)
        },
    )
    .await;
    wait_until("the anomaly event", Duration::from_secs(10), || {
        !of_kind(&sub.snapshot(), "anomaly").is_empty()
    })
    .await;
    let messages = dedupe(&sub.snapshot());
    let temp = of_kind(&messages, "summary")
        .into_iter()
        .find(|m| m["sensor"] == "l1/m1/temp" && m["window_start_ms"] == h + 2 * HOUR_MS)
        .expect("the window open across the reload");
    assert_eq!(
        temp["count"], 2,
        "readings from before and after the reload"
    );
    assert_eq!(temp["max"], 62.0);
    let raised = of_kind(&messages, "alarm")
        .into_iter()
        .filter(|m| m["event"] == "raised")
        .count();
    assert_eq!(raised, 1, "the alarm stayed raised across the reload");
    assert!(
        of_kind(&messages, "anomaly")
            .iter()
            .any(|m| m["event"] == "raised" && m["sensor"] == "l1/m1/temp"),
        "the baseline stayed warm across the reload"
    );

    // A config with a mistake: `reload --config` refuses to signal; the
    // signal itself is refused by the gateway, which keeps running.
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        good.replace("window = \"30m\"", "window = \"soon\""),
    )
    .unwrap();
    let line = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .lines()
        .position(|l| l.contains("\"soon\""))
        .unwrap()
        + 1;
    let (code, text) = gw.command(&["reload", "--pid-file", pid_file, "--config", config]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("{config}:{line}:")), "{text}");
    let (code, text) = gw.command(&["reload", "--pid-file", pid_file]);
    assert_eq!(code, 0, "{text}");
    wait_until("the reload refused", Duration::from_secs(10), || {
        gw.metric("gateway_reloads_rejected_total") >= 1.0
    })
    .await;
    assert!(gw.is_running());
    assert!(
        gw.log().contains(&format!("{config}:{line}:")),
        "every mistake is logged with file:line\n{}",
        gw.log()
    );
    assert_eq!(gw.metric("gateway_reloads_applied_total"), 1.0);
    // Still running the configuration it had: pressure in 30 min windows.
    for (value, ts) in [
        (4.0, h + 3 * HOUR_MS + 60_000),
        (5.0, h + 3 * HOUR_MS + 1_860_000),
    ] {
        publisher
            .send("plant/l1/m1/pressure", reading(value, ts))
            .await;
    }
    publisher.flush().await;
    wait_until(
        "a 30-minute pressure window",
        Duration::from_secs(10),
        || {
            sub.snapshot().iter().any(|m| {
                m["sensor"] == "l1/m1/pressure"
                    && m["window_start_ms"] == h + 3 * HOUR_MS
                    && m["window_end_ms"] == h + 3 * HOUR_MS + 1_800_000
            })
        },
    )
    .await;

    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    assert!(!gw.pid_file().exists(), "a clean exit removes the pid file");
}

/// Upstream and the source move to other brokers: the link reconnects with
/// the buffer it had (what was buffered while upstream was unreachable is
/// delivered to the new one), and the source is restarted on its new broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_upstream_and_source_without_losing_the_buffer() {
    let old_source = Broker::start(BrokerKind::Rumqttd).await;
    let unreachable = free_addr();
    let mut gw = Gateway::start(&gateway_config(old_source.addr, unreachable, ""));
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(old_source.addr).await;
    let base = aligned_base_ms();
    // Three one-second windows, closed while upstream is unreachable.
    for (value, ts) in [(0.0, base), (1.0, base + 1000), (2.0, base + 2000)] {
        publisher.send("plant/l1/m1/flow", reading(value, ts)).await;
    }
    publisher.flush().await;
    wait_until("three summaries buffered", Duration::from_secs(10), || {
        gw.metric("gateway_summaries_produced_total") >= 3.0
    })
    .await;

    let new_source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    gw.write_config(&gateway_config(new_source.addr, upstream.addr, ""));
    let pid_file = gw.pid_file();
    let (code, text) = gw.command(&["reload", "--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let messages = sub.wait_for_unique(3, Duration::from_secs(20)).await;
    let counts: Vec<_> = messages.iter().map(|m| m["count"].clone()).collect();
    assert_eq!(counts, [1, 1, 1], "the buffered summaries, delivered");

    wait_until("the source restarted", Duration::from_secs(20), || {
        gw.metric("gateway_source_subscriptions_total") >= 2.0
    })
    .await;
    let mut publisher = Publisher::connect(new_source.addr).await;
    publisher
        .send("plant/l1/m1/flow", reading(7.0, base + 10_000))
        .await;
    publisher.flush().await;
    let messages = sub.wait_for_unique(4, Duration::from_secs(20)).await;
    assert!(
        messages.iter().any(|m| m["min"] == 7.0),
        "read from the new source"
    );
    assert!(gw
        .log()
        .contains("Reconnecting upstream with the reloaded settings"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_sensors_and_refuses_a_bad_config_rumqttd() {
    reload_keeps_unchanged_sensors_and_refuses_a_bad_config(BrokerKind::Rumqttd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_sensors_and_refuses_a_bad_config_mosquitto() {
    if !mosquitto_available() {
        return;
    }
    reload_keeps_unchanged_sensors_and_refuses_a_bad_config(BrokerKind::Mosquitto).await;
}
