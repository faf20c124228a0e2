//! The analytics paths of the core, deterministic: alarm events and their
//! payloads, delivery modes, anomaly events, acknowledgements, and state
//! that survives a restart.

use std::path::Path;

use super::*;

const T0: i64 = 1_700_000_000_000;
const S: i64 = 1000;

const RULES: &str = r#"
[gateway]
id = "gw"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"

[[sensor]]
match = "*/vibration"
unit = "mm/s"
window = "1s"
stats = ["count", "mean", "rms", "p2p", "crest", "skewness", "kurtosis", "p50", "p90", "p95", "p99", "slope", "first_last"]

[sensor.alarm]
high = 2.8
high_high = 4.5
hysteresis = 0.2
latch = true
stale_after = "5s"

[sensor.anomaly]
warmup_windows = 5
min_relative_std = 0.01

[[sensor]]
match = "*/level"
delivery = "on_change"
deadband = 0.5
max_silence = "10s"

[[sensor]]
match = "*/door"
delivery = "raw"

[upstream]
broker = "127.0.0.1:1884"
"#;

struct Core {
    p: Processor,
    metrics: Arc<Metrics>,
    out: Vec<Record>,
}

impl Core {
    fn new() -> Self {
        let config = Config::parse(RULES, Path::new("t.toml")).unwrap();
        let metrics = Arc::new(Metrics::new());
        Core {
            p: Processor::new(CoreSettings::from_config(&config), metrics.clone(), 1),
            metrics,
            out: Vec::new(),
        }
    }

    fn reading(&mut self, sensor: &str, value: f64, ts: i64) {
        let msg = RawMessage {
            source: 0,
            topic: format!("plant/{sensor}"),
            payload: bytes::Bytes::from(format!(r#"{{"value":{value},"ts":{ts}}}"#)),
            received_ms: ts,
        };
        self.p.ingest(&msg, ts, &mut self.out);
    }

    /// The records so far, as (lane, JSON), taken.
    fn take(&mut self) -> Vec<(Lane, serde_json::Value)> {
        self.out
            .drain(..)
            .map(|r| (r.lane, serde_json::from_slice(&r.payload).unwrap()))
            .collect()
    }

    fn kinds(&mut self) -> Vec<String> {
        self.take()
            .into_iter()
            .map(|(_, v)| match v["kind"].as_str().unwrap() {
                "alarm" => format!(
                    "alarm:{}:{}",
                    v["event"].as_str().unwrap(),
                    v["type"].as_str().unwrap()
                ),
                "anomaly" => format!(
                    "anomaly:{}:{}:{}",
                    v["event"].as_str().unwrap(),
                    v["detector"].as_str().unwrap(),
                    v["feature"].as_str().unwrap()
                ),
                k => k.to_owned(),
            })
            .collect()
    }
}

#[test]
fn alarms_bypass_windows_on_the_alarm_lane_with_full_payloads() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 1.0, T0);
    c.reading("l1/m1/vibration", 3.1, T0 + 100);
    let recs = c.take();
    assert_eq!(recs.len(), 1, "the alarm comes before its window closes");
    let (lane, v) = &recs[0];
    assert_eq!(*lane, Lane::Alarm);
    assert_eq!(v["kind"], "alarm");
    assert_eq!(v["event"], "raised");
    assert_eq!(v["alarm_id"], "l1/m1/vibration:high");
    assert_eq!(v["type"], "high");
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["value"], 3.1);
    assert_eq!(v["limit"], 2.8);
    assert_eq!(v["unit"], "mm/s");
    assert_eq!(v["latched"], true);
    assert_eq!(v["ts_ms"], T0 + 100);
    assert_eq!(v["labels"]["machine"], "m1");
    assert_eq!(
        c.metrics
            .alarms_active
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let (alarms, _) = c.p.take_dirty();
    assert!(alarms, "alarm state must be saved before delivery");
}

#[test]
fn every_statistic_appears_in_the_summary() {
    let mut c = Core::new();
    for i in 0..100 {
        c.reading("l1/m1/vibration", 1.0 + (i as f64 * 0.3).sin(), T0 + i * 10);
    }
    c.p.flush_all(&mut c.out);
    let recs = c.take();
    let summary = &recs.iter().find(|(_, v)| v["kind"] == "summary").unwrap().1;
    for key in [
        "rms",
        "p2p",
        "crest",
        "skewness",
        "kurtosis",
        "p50",
        "p90",
        "p95",
        "p99",
        "slope_per_hour",
        "first",
        "last",
        "first_ts_ms",
    ] {
        assert!(summary[key].is_number(), "{key} missing in {summary}");
    }
    assert!(summary.get("min").is_none(), "only the listed statistics");
    let p99 = summary["p99"].as_f64().unwrap();
    assert!(p99 > 1.9 && p99 <= 2.0 * 1.03, "{p99}");
}

#[test]
fn latched_alarm_stays_until_acknowledged_by_command() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 3.0, T0);
    c.reading("l1/m1/vibration", 1.0, T0 + S);
    assert_eq!(
        c.kinds(),
        ["alarm:raised:high"],
        "latched: no clear without ack"
    );
    let ack = parse_command(br#"{"command":"ack","alarm_id":"l1/m1/vibration:high","by":"jane"}"#)
        .unwrap();
    c.p.command(&ack, T0 + 2 * S, &mut c.out).unwrap();
    let recs = c.take();
    let events: Vec<_> = recs
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["acknowledged", "cleared"]);
    assert_eq!(recs[0].1["by"], "jane");
    assert_eq!(recs[1].1["duration_ms"], 2 * S);
    // Unknown and repeated acknowledgements are errors, not events.
    assert!(c.p.command(&ack, T0 + 3 * S, &mut c.out).is_err());
    let bad = parse_command(br#"{"command":"ack","alarm_id":"nope:high"}"#).unwrap();
    assert!(c
        .p
        .command(&bad, T0, &mut c.out)
        .unwrap_err()
        .contains("unknown sensor"));
    assert!(parse_command(br#"{"command":"reboot"}"#).is_err());
}

#[test]
fn restart_with_an_active_alarm_raises_nothing_twice_and_clears_later() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 5.0, T0);
    assert_eq!(c.kinds(), ["alarm:raised:high", "alarm:raised:high_high"]);
    let saved = crate::state::encode(&c.p.export_state());

    // A new process: same config, the saved state.
    let mut d = Core::new();
    let dir = tempfile::tempdir().unwrap();
    crate::state::save(dir.path(), &saved).unwrap();
    let state = crate::state::load(dir.path(), 0).unwrap().unwrap();
    assert_eq!(d.p.restore(state, T0 + S), 1);
    d.reading("l1/m1/vibration", 5.1, T0 + 2 * S);
    assert!(
        d.kinds().iter().all(|k| k == "summary"),
        "nothing raised twice"
    );
    d.reading("l1/m1/vibration", 1.0, T0 + 3 * S);
    let ack = |kind: &str| Command {
        command: "ack".into(),
        alarm_id: format!("l1/m1/vibration:{kind}"),
        by: "op".into(),
    };
    d.p.command(&ack("high_high"), T0 + 4 * S, &mut d.out)
        .unwrap();
    d.p.command(&ack("high"), T0 + 4 * S, &mut d.out).unwrap();
    let k: Vec<_> = d.kinds().into_iter().filter(|k| k != "summary").collect();
    assert_eq!(
        k,
        [
            "alarm:acknowledged:high_high",
            "alarm:cleared:high_high",
            "alarm:acknowledged:high",
            "alarm:cleared:high"
        ]
    );
    assert_eq!(
        d.metrics
            .alarms_active
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_silent_sensor_goes_stale_on_gateway_time() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 1.0, T0);
    c.p.flush_due(T0 + 4 * S, &mut c.out);
    assert!(!c.kinds().iter().any(|k| k.starts_with("alarm")));
    c.p.flush_due(T0 + 5 * S, &mut c.out);
    assert!(c.kinds().contains(&"alarm:raised:stale".to_owned()));
    c.p.flush_due(T0 + 9 * S, &mut c.out);
    assert!(c.kinds().is_empty(), "raised once");
}

#[test]
fn on_change_sends_past_the_deadband_and_heartbeats() {
    let mut c = Core::new();
    for (i, v) in [10.0, 10.2, 10.4, 10.6, 10.7, 11.2].iter().enumerate() {
        c.reading("l1/t1/level", *v, T0 + i as i64 * 100);
    }
    let values: Vec<f64> = c
        .take()
        .iter()
        .map(|(lane, v)| {
            assert_eq!(*lane, Lane::Summary);
            assert_eq!(v["kind"], "value");
            v["value"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(
        values,
        [10.0, 10.6, 11.2],
        "first value, then moves of more than 0.5"
    );
    c.p.flush_due(T0 + 500 + 9 * S, &mut c.out);
    assert!(c.take().is_empty());
    c.p.flush_due(T0 + 500 + 10 * S, &mut c.out);
    let hb = c.take();
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].1["reason"], "heartbeat");
    assert_eq!(hb[0].1["value"], 11.2);
    c.p.flush_all(&mut c.out);
    assert!(c.take().is_empty(), "on_change sensors have no windows");
}

#[test]
fn raw_forwards_every_reading() {
    let mut c = Core::new();
    for i in 0..5 {
        c.reading("l1/m1/door", (i % 2) as f64, T0 + i);
    }
    let recs = c.take();
    assert_eq!(recs.len(), 5);
    assert!(recs.iter().all(|(_, v)| v["reason"] == "raw"));
    assert_eq!(
        c.metrics
            .values_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[test]
fn a_step_in_vibration_after_warm_up_is_an_anomaly() {
    let mut c = Core::new();
    // Ten 1-second windows at ~1 mm/s, then a window at ~2 mm/s.
    for w in 0..10 {
        for i in 0..20 {
            let v = 1.0 + 0.05 * ((w * 20 + i) as f64 * 0.7).sin();
            c.reading("l1/m2/vibration", v, T0 + w * S + i * 50);
        }
    }
    for i in 0..20 {
        c.reading(
            "l1/m2/vibration",
            2.0 + 0.05 * (i as f64).sin(),
            T0 + 10 * S + i * 50,
        );
    }
    c.p.flush_all(&mut c.out);
    let anomalies: Vec<_> = c
        .take()
        .into_iter()
        .filter(|(_, v)| v["kind"] == "anomaly")
        .collect();
    assert!(!anomalies.is_empty());
    let (lane, a) = &anomalies[0];
    assert_eq!(*lane, Lane::Alarm);
    assert_eq!(a["event"], "raised");
    assert_eq!(a["direction"], "up");
    assert!(a["anomaly_id"]
        .as_str()
        .unwrap()
        .starts_with("l1/m2/vibration:"));
}

#[test]
fn rule_mistakes_are_reported_with_lines() {
    let text = r#"[gateway]
id = "g"
[[source]]
kind = "mqtt"
broker = "h:1"
topic_template = "p/{sensor}"
[[sensor]]
match = "*/t"
min = 0.0
max = 100.0
unit = "degC"
delivery = "on_chage"
[sensor.alarm]
low = 50.0
high = 40.0
high_high = 120.0
hysteresis = 80.0
unit = "degF"
[upstream]
broker = "h:2"
"#;
    let err = Config::parse(text, Path::new("r.toml"))
        .unwrap_err()
        .to_string();
    for expected in [
        "r.toml:12:",
        "did you mean `on_change`",
        "r.toml:15:",
        "`high` (40) must be greater than `low` (50)",
        "r.toml:16:",
        "above the rule's `max`",
        "r.toml:18:",
        "differs from the rule's unit",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn hysteresis_must_be_smaller_than_the_band() {
    let text = RULES.replace("hysteresis = 0.2", "hysteresis = 2.0");
    let err = Config::parse(&text, Path::new("r.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must be smaller than the band between `high` and `high_high`"),
        "{err}"
    );
}

#[test]
fn a_serial_mapping_unit_must_agree_with_its_rule() {
    let text = r#"[gateway]
id = "g"
[[source]]
kind = "serial"
device = "/dev/ttyUSB0"
format = "frame"
[[source.channel]]
node = 1
channel = 0
sensor = "pump/bearing_temp"
unit = "degF"
[[sensor]]
match = "*/bearing_temp"
unit = "degC"
[upstream]
broker = "h:2"
"#;
    let err = Config::parse(text, Path::new("u.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("u.toml:7:"), "{err}");
    assert!(
        err.contains("mapped with unit `degF`, but its rule says `degC`"),
        "{err}"
    );
}

#[test]
fn a_restored_serial_sensor_keeps_its_mapped_unit() {
    let mut c = Core::new();
    let state = PersistedState {
        sensors: vec![PersistedSensor {
            id: "uart/1/0".into(),
            alarms: Default::default(),
            baseline: Default::default(),
        }],
    };
    c.p.restore(state, T0);
    let r = crate::wire::SerialReading {
        sensor: Arc::from("uart/1/0"),
        unit: Some(Arc::from("bar")),
        ts_ms: T0,
        value: 4.2,
    };
    c.p.ingest_serial(&r, T0, &mut c.out);
    c.p.flush_all(&mut c.out);
    let recs = c.take();
    assert_eq!(recs[0].1["unit"], "bar");
}
