//! Alarms and anomaly detection end to end: sensor-sim's wear scenario
//! (`configs/sim-wear.toml`) through the real gateway binary; an
//! acknowledgement over the command topic; kill -9 and restart with active
//! alarms; the alarms clearing when the machine is healthy again. Then: a
//! `raised` held back by a full blocking buffer survives kill -9 exactly
//! once; a retained acknowledgement is never obeyed; junk commands are
//! counted and logged rate-limited.

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

[[sensor]]
match = "*/level"
unit = "%"
delivery = "on_change"
deadband = 0.5
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
    let sub = Subscriber::start_keeping_topics(upstream.addr, "gateways/#").await;
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

    // Acknowledge the zone C alarm over the command topic, naming the
    // occurrence its events carry.
    let mut operator = Publisher::connect(upstream.addr).await;
    assert_eq!(high["occurrence"], high["seq"]);
    operator
        .send(
            "gateways/gw-e2e/command",
            format!(
                r#"{{"command":"ack","alarm_id":"{HIGH}","occurrence":{},"by":"e2e"}}"#,
                high["occurrence"]
            ),
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
    // A tank level reported by exception: 10.0 and 12.0 are sent, 10.1 is
    // within the deadband.
    for (i, level) in [10.0, 10.1, 12.0].into_iter().enumerate() {
        plant
            .send(
                "plant/line1/t1/level",
                format!(r#"{{"value":{level},"ts":{}}}"#, now_ms() + i as i64),
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
            format!(
                r#"{{"command":"ack","alarm_id":"{HIGH_HIGH}","occurrence":{},"by":"e2e"}}"#,
                trip["occurrence"]
            ),
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
        gw.metric("gateway_commands_rejected_total{reason=\"malformed\"}") >= 1.0
    })
    .await;
    wait_until("the two level values", Duration::from_secs(10), || {
        events(&sub, "value").len() == 2
    })
    .await;
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
    wait_until("the clean offline status", Duration::from_secs(10), || {
        sub.status_snapshot()
            .last()
            .is_some_and(|(v, _)| v["state"] == "offline")
    })
    .await;
    // Every message of the run matches the schema of its topic.
    let checked = crate::schemas::check_upstream(&sub);
    for kind in ["summary", "alarm", "anomaly", "value", "status"] {
        assert!(
            checked.get(kind) > Some(&0),
            "no {kind} checked: {checked:?}"
        );
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const VIBRATION_ALARM: &str = r#"
[[sensor]]
match = "*/vibration"
window = "1s"

[sensor.alarm]
high = 2.8
latch = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_alarm_held_back_by_a_full_blocking_buffer_survives_kill_9_exactly_once() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let mut upstream = Broker::start(BrokerKind::Rumqttd).await;
    upstream.kill();
    // Raw readings fill the smallest buffer quickly while upstream is down.
    let rules = format!(
        r#"{VIBRATION_ALARM}
[[sensor]]
match = "*/door"
delivery = "raw"

[buffer]
max_disk_bytes = 1048576
when_full = "block"
"#
    );
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, &rules));
    gw.wait_ready().await;
    let mut plant = Publisher::connect(source.addr).await;
    let full = "The buffer is full and buffer.when_full";
    let mut sent = 0;
    while !gw.log().contains(full) {
        assert!(sent < 20_000, "the buffer never filled\n{}", gw.log());
        for _ in 0..50 {
            plant
                .send(
                    "plant/line1/m1/door",
                    format!(r#"{{"value":{sent},"ts":{}}}"#, now_ms()),
                )
                .await;
            sent += 1;
        }
        plant.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sink takes nothing now: the alarm's event waits in the channel
    // while the state already says the alarm is active.
    plant
        .send(
            "plant/line1/m1/vibration",
            format!(r#"{{"value":3.0,"ts":{}}}"#, now_ms()),
        )
        .await;
    plant.flush().await;
    wait_until("the alarm state saved", Duration::from_secs(10), || {
        gw.metric("gateway_alarms_raised_total") >= 1.0
            && gw.metric("gateway_state_saves_total") >= 1.0
    })
    .await;
    gw.kill();

    upstream.restart().await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    sub.wait_subscribed(1).await;
    gw.restart();
    const ID: &str = "line1/m1/vibration:high";
    wait_until("the raised alarm upstream", Duration::from_secs(30), || {
        !alarm(&events(&sub, "alarm"), ID, "raised").is_empty()
    })
    .await;
    wait_until("the backlog delivered", Duration::from_secs(60), || {
        gw.metric("gateway_upstream_connected") == 1.0
            && gw.metric("gateway_upstream_queue_records") == 0.0
    })
    .await;
    assert_eq!(gw.metric("gateway_alarm_events_reemitted_total"), 1.0);
    // A second restart finds it held: not sent again.
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
    gw.restart();
    wait_until(
        "the restarted gateway upstream",
        Duration::from_secs(20),
        || gw.metric("gateway_upstream_connected") == 1.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raised = alarm(&events(&sub, "alarm"), ID, "raised")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(raised.len(), 1, "exactly once: {raised:#?}");
    assert_eq!(raised[0]["value"], 3.0);
    assert_eq!(gw.metric("gateway_alarm_events_reemitted_total"), 0.0);
    assert!(
        gw.log()
            .contains("lost in a crash before the buffer stored it"),
        "the re-emission is logged"
    );
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_ack_does_not_acknowledge_the_next_occurrence_after_reconnect() {
    if !mosquitto_available() {
        return;
    }
    let source = Broker::start(BrokerKind::Rumqttd).await;
    // Mosquitto keeps retained messages and flags them on subscription.
    let upstream = Broker::start(BrokerKind::Mosquitto).await;
    let sub = Subscriber::start(upstream.addr, "gateways/+/alarm/#").await;
    sub.wait_subscribed(1).await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, VIBRATION_ALARM));
    gw.wait_ready().await;
    wait_until("upstream", Duration::from_secs(20), || {
        gw.metric("gateway_upstream_connected") == 1.0
    })
    .await;

    // An acknowledgement published with the retain flag, before the
    // occurrence exists.
    let mut opts = rumqttc::MqttOptions::new(
        format!("e2e-retainer-{}", upstream.addr.port()),
        upstream.addr.ip().to_string(),
        upstream.addr.port(),
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let driver = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    client
        .publish(
            "gateways/gw-e2e/command",
            rumqttc::QoS::AtLeastOnce,
            true,
            r#"{"command":"ack","alarm_id":"line1/m1/vibration:high","occurrence":1,"by":"old"}"#,
        )
        .await
        .expect("queue the retained ack");
    wait_until("the live ack refused", Duration::from_secs(10), || {
        gw.metric("gateway_commands_received_total") >= 1.0
    })
    .await;
    driver.abort();

    // The occurrence.
    let mut plant = Publisher::connect(source.addr).await;
    plant
        .send(
            "plant/line1/m1/vibration",
            format!(r#"{{"value":3.0,"ts":{}}}"#, now_ms()),
        )
        .await;
    plant.flush().await;
    const ID: &str = "line1/m1/vibration:high";
    wait_until("the raised alarm", Duration::from_secs(15), || {
        !alarm(&events(&sub, "alarm"), ID, "raised").is_empty()
    })
    .await;

    // Reconnect: the broker hands the retained ack over again.
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
    gw.restart();
    wait_until("the retained ack refused", Duration::from_secs(20), || {
        gw.metric("gateway_commands_rejected_total{reason=\"retained\"}") >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        alarm(&events(&sub, "alarm"), ID, "acknowledged").is_empty(),
        "a retained ack acknowledged the alarm"
    );
    assert_eq!(gw.metric("gateway_alarms_acknowledged_total"), 0.0);
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_commands_are_counted_and_logged_rate_limited() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, VIBRATION_ALARM));
    gw.wait_ready().await;
    wait_until("upstream", Duration::from_secs(20), || {
        gw.metric("gateway_upstream_connected") == 1.0
    })
    .await;
    let mut attacker = Publisher::connect(upstream.addr).await;
    for i in 0..4000 {
        attacker
            .send(
                "gateways/gw-e2e/command",
                format!("junk {i}\n2026-01-01T00:00:00Z ERROR forged line"),
            )
            .await;
    }
    for i in 0..1000 {
        attacker
            .send(
                "gateways/gw-e2e/command",
                format!(
                    r#"{{"command":"ack","alarm_id":"nope/{i}\n:high","occurrence":{i},"by":"{}"}}"#,
                    "x".repeat(500)
                ),
            )
            .await;
    }
    attacker.flush().await;
    wait_until("every command counted", Duration::from_secs(30), || {
        gw.metric("gateway_commands_received_total") >= 5000.0
    })
    .await;
    // The metrics file is written every 100 ms: settle on a snapshot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = gw.metrics();
    let rejected = |r: &str| {
        m.get(&format!(
            "gateway_commands_rejected_total{{reason=\"{r}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(m["gateway_commands_received_total"], 5000.0);
    assert_eq!(rejected("malformed"), 4000.0);
    assert_eq!(rejected("unknown_alarm") + rejected("overloaded"), 1000.0);
    let log = gw.log();
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("ommand"))
        .count();
    assert!((1..=12).contains(&warns), "{warns} WARN lines\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with(":high")),
        "outsider text is escaped"
    );
    assert!(
        !log.contains(&"x".repeat(100)),
        "outsider text is truncated"
    );
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
}
