//! Alarms and anomaly detection end to end: sensor-sim's wear scenario
//! (`configs/sim-wear.toml`) through the real gateway binary; an
//! acknowledgement over the command topic; kill -9 and restart with active
//! alarms; the alarms clearing when the machine is healthy again.

use std::process::{Command, Stdio};
use std::time::Duration;

use sensor_gateway_e2e::*;

const RULES: &str = r#"
[[sensor]]
match = "*/vibration"
unit = "mm/s"
window = "1s"
stats = ["count", "mean", "rms", "p2p", "crest", "kurtosis", "p95", "slope"]

[sensor.alarm]
high = 2.8
high_high = 4.5
hysteresis = 0.2
latch = true

[sensor.anomaly]
warmup_windows = 8

[[sensor]]
match = "*/temperature"
unit = "degC"
window = "1s"

[sensor.alarm]
high = 85.0
rate_of_change = 5.0
rate_interval = "5s"

[[sensor]]
match = "*/current"
unit = "A"
window = "1s"

[sensor.alarm]
low_low = 18.5
low = 20.0
hysteresis = 0.5
on_delay_readings = 3

[[sensor]]
match = "*/pressure"
window = "1s"

[sensor.alarm]
stale_after = "3s"
"#;

/// Distinct events (by seq) of `kind` ("alarm" or "anomaly").
fn events(sub: &Subscriber, kind: &str) -> Vec<serde_json::Value> {
    dedupe(&sub.snapshot())
        .into_iter()
        .filter(|m| m["kind"] == kind)
        .collect()
}

fn alarm<'a>(all: &'a [serde_json::Value], id: &str, event: &str) -> Vec<&'a serde_json::Value> {
    all.iter()
        .filter(|m| m["alarm_id"] == id && m["event"] == event)
        .collect()
}

const HIGH: &str = "line1/m1/vibration:high";
const HIGH_HIGH: &str = "line1/m1/vibration:high_high";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wear_scenario_raises_drift_before_the_alarms_and_survives_a_crash() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, RULES));
    gw.wait_ready().await;

    let mut sim = Command::new(bin("sensor-sim"))
        .args(["run", "--scenario"])
        .arg(repo_root().join("configs/sim-wear.toml"))
        .args(["--broker", &source.addr.to_string(), "--duration", "60s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start sensor-sim");

    // The trip limit is reached about 22 s into the scenario.
    wait_until("the zone D alarm", Duration::from_secs(60), || {
        !alarm(&events(&sub, "alarm"), HIGH_HIGH, "raised").is_empty()
    })
    .await;
    let alarms = events(&sub, "alarm");
    let high = alarm(&alarms, HIGH, "raised")[0].clone();
    let trip = alarm(&alarms, HIGH_HIGH, "raised")[0].clone();
    assert!(high["ts_ms"].as_i64() < trip["ts_ms"].as_i64());
    assert!(trip["value"].as_f64().unwrap() > 4.5);
    assert_eq!(trip["severity"], "critical");
    // The drift detector fired before the vibration reached zone C.
    let anomalies = events(&sub, "anomaly");
    let first = anomalies
        .iter()
        .filter(|a| a["sensor"] == "line1/m1/vibration" && a["event"] == "raised")
        .min_by_key(|a| a["window_end_ms"].as_i64())
        .unwrap_or_else(|| panic!("no vibration anomaly: {anomalies:#?}"));
    assert!(
        first["window_end_ms"].as_i64().unwrap() <= high["ts_ms"].as_i64().unwrap(),
        "anomaly {first} after the alarm {high}"
    );
    assert!(first["value"].as_f64().unwrap() < 2.8, "{first}");
    assert_eq!(first["direction"], "up");
    // The bearing heating up, the cut pressure cable, and the pump losing
    // suction at every trough of its load cycle (and recovering).
    wait_until(
        "rate, stale and low alarms",
        Duration::from_secs(20),
        || {
            let a = events(&sub, "alarm");
            !alarm(&a, "line1/m1/temperature:rate_of_change", "raised").is_empty()
                && !alarm(&a, "line1/m1/pressure:stale", "raised").is_empty()
                && !alarm(&a, "line1/m1/current:low_low", "cleared").is_empty()
                && !alarm(&a, "line1/m1/current:low", "cleared").is_empty()
        },
    )
    .await;
    let a = events(&sub, "alarm");
    let low = alarm(&a, "line1/m1/current:low", "raised")[0];
    assert!(low["value"].as_f64().unwrap() < 20.0, "{low}");
    assert_eq!(
        alarm(&a, "line1/m1/current:low_low", "raised")[0]["severity"],
        "critical"
    );

    // Acknowledge the zone C alarm over the command topic.
    let mut operator = Publisher::connect(upstream.addr).await;
    operator
        .send(
            "gateways/gw-e2e/command",
            format!(r#"{{"command":"ack","alarm_id":"{HIGH}","by":"e2e"}}"#),
        )
        .await;
    wait_until("the acknowledgement", Duration::from_secs(10), || {
        !alarm(&events(&sub, "alarm"), HIGH, "acknowledged").is_empty()
    })
    .await;
    assert_eq!(
        alarm(&events(&sub, "alarm"), HIGH, "acknowledged")[0]["by"],
        "e2e"
    );

    // Power cut with four alarms active; the machine is still worn.
    gw.kill();
    gw.restart();
    let before = sub.snapshot().len();
    wait_until(
        "summaries after the restart",
        Duration::from_secs(20),
        || sub.snapshot().len() > before + 20,
    )
    .await;
    let alarms = events(&sub, "alarm");
    for id in [
        HIGH,
        HIGH_HIGH,
        "line1/m1/temperature:rate_of_change",
        "line1/m1/pressure:stale",
    ] {
        assert_eq!(
            alarm(&alarms, id, "raised").len(),
            1,
            "{id} raised again after the restart"
        );
    }
    assert!(gw.log().contains("Alarm and baseline state restored"));

    // The machine is repaired: vibration back to normal.
    let _ = sim.kill();
    let _ = sim.wait();
    let mut plant = Publisher::connect(source.addr).await;
    for i in 0..10 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        plant
            .send(
                "plant/line1/m1/vibration",
                format!(r#"{{"value":1.2,"ts":{}}}"#, now + i),
            )
            .await;
    }
    plant.flush().await;
    // Acknowledged: clears when the condition does.
    wait_until("the zone C alarm to clear", Duration::from_secs(15), || {
        !alarm(&events(&sub, "alarm"), HIGH, "cleared").is_empty()
    })
    .await;
    // Latched and not acknowledged: stays until someone acknowledges it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alarm(&events(&sub, "alarm"), HIGH_HIGH, "cleared").is_empty());
    operator
        .send(
            "gateways/gw-e2e/command",
            format!(r#"{{"command":"ack","alarm_id":"{HIGH_HIGH}","by":"e2e"}}"#),
        )
        .await;
    wait_until("the zone D alarm to clear", Duration::from_secs(15), || {
        !alarm(&events(&sub, "alarm"), HIGH_HIGH, "cleared").is_empty()
    })
    .await;
    // A malformed command is counted, not obeyed.
    operator
        .send("gateways/gw-e2e/command", "reboot please")
        .await;
    wait_until("the rejected command", Duration::from_secs(10), || {
        gw.metric("gateway_commands_rejected_total") >= 1.0
    })
    .await;
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
}
