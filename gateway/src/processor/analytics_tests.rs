//! The analytics paths of the core, deterministic: alarm events and their
//! payloads, delivery modes, anomaly events, acknowledgements, and state
//! that survives a restart.

use std::path::Path;

use super::test_support::{described, rule, settings, windows_of, with_high_alarm};
use super::*;
use crate::config::Config;
use crate::model::Lane;
use crate::reject::CommandReject;

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

[[sensor]]
match = "*/pressure"
window = "1s"

[sensor.alarm]
high = 10.0
hysteresis = 1.0

[upstream]
broker = "127.0.0.1:1884"
"#;

/// The settings `RULES` gives, built in code.
fn rules() -> CoreSettings {
    use crate::alarm::{AlarmKind, AlarmSpec, Severity, Threshold};
    use crate::anomaly::AnomalySpec;
    use crate::policy::{Delivery, SensorPolicy, StatSet};
    let vibration = SensorPolicy {
        stats: StatSet {
            min: false,
            max: false,
            std: false,
            ..StatSet::EVERYTHING
        },
        unit: Some("mm/s".into()),
        alarm: Some(Arc::new(AlarmSpec {
            thresholds: vec![
                Threshold {
                    kind: AlarmKind::High,
                    limit: 2.8,
                    severity: Severity::Warning,
                },
                Threshold {
                    kind: AlarmKind::HighHigh,
                    limit: 4.5,
                    severity: Severity::Critical,
                },
            ],
            hysteresis: 0.2,
            latch: true,
            stale_after_ms: Some(5 * S),
            ..AlarmSpec::default()
        })),
        anomaly: Some(AnomalySpec {
            warmup_windows: 5,
            min_relative_std: 0.01,
            ..AnomalySpec::default()
        }),
        ..windows_of(S)
    };
    let level = SensorPolicy {
        delivery: Delivery::OnChange {
            deadband: Some(0.5),
            deadband_percent: None,
            max_silence_ms: Some(10 * S),
        },
        ..windows_of(10 * S)
    };
    let door = SensorPolicy {
        delivery: Delivery::Raw,
        ..windows_of(10 * S)
    };
    let mut pressure = with_high_alarm(windows_of(S), 10.0);
    if let Some(alarm) = pressure.alarm.as_mut() {
        Arc::make_mut(alarm).hysteresis = 1.0;
    }
    let mut s = settings(vec![
        rule("*/vibration", vibration),
        rule("*/level", level),
        rule("*/door", door),
        rule("*/pressure", pressure),
    ]);
    // The configuration's defaults.
    s.gateway_id = "gw".into();
    s.allowed_lateness_ms = 2 * S;
    s.max_sensors = 20_000;
    s.max_payload_bytes = 4096;
    s
}

#[test]
fn the_core_takes_from_the_rules_file_what_these_tests_build_in_code() {
    let config = Config::parse(RULES, Path::new("t.toml")).unwrap();
    assert_eq!(
        described(&CoreSettings::from_config(&config)),
        described(&rules())
    );
}

struct Core {
    p: Processor,
    metrics: Arc<Metrics>,
    out: Vec<Record>,
}

impl Core {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        Core {
            p: Processor::new(rules(), metrics.clone(), 1),
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
    assert_eq!(
        v["occurrence"], v["seq"],
        "an occurrence is named by its raised event"
    );
    assert_eq!(v["labels"]["machine"], "m1");
    assert_eq!(c.metrics.alarms_active.get(), 1);
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
    let occurrence = c.p.export_state().sensors[0].alarm_events[0].occurrence;
    let ack = parse_command(
        format!(r#"{{"command":"ack","alarm_id":"l1/m1/vibration:high","occurrence":{occurrence},"by":"jane"}}"#)
            .as_bytes(),
        false,
    )
    .unwrap();
    c.p.command(&ack, T0 + 2 * S, &mut c.out).unwrap();
    let recs = c.take();
    let events: Vec<_> = recs
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["acknowledged", "cleared"]);
    assert_eq!(recs[0].1["by"], "jane");
    assert_eq!(recs[0].1["occurrence"], occurrence);
    assert_eq!(recs[1].1["duration_ms"], 2 * S);
    // Unknown and repeated acknowledgements are errors, not events.
    assert_eq!(
        c.p.command(&ack, T0 + 3 * S, &mut c.out)
            .unwrap_err()
            .reason(),
        CommandReject::NotActive
    );
    let bad = parse_command(
        br#"{"command":"ack","alarm_id":"nope:high","occurrence":1}"#,
        false,
    )
    .unwrap();
    let err = c.p.command(&bad, T0, &mut c.out).unwrap_err();
    assert_eq!(err.reason(), CommandReject::UnknownAlarm);
    assert!(err.to_string().contains("unknown sensor"), "{err}");
    assert_eq!(
        parse_command(br#"{"command":"reboot"}"#, false)
            .unwrap_err()
            .reason(),
        CommandReject::UnknownCommand
    );
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
    let occurrence = |kind: &str| {
        d.p.export_state().sensors[0]
            .alarm_events
            .iter()
            .find(|l| l.kind.name() == kind)
            .unwrap()
            .occurrence
    };
    let ack = |kind: &str, occurrence: u64| Command {
        alarm_id: format!("l1/m1/vibration:{kind}"),
        occurrence,
        by: "op".into(),
    };
    let (hh, h) = (occurrence("high_high"), occurrence("high"));
    d.p.command(&ack("high_high", hh), T0 + 4 * S, &mut d.out)
        .unwrap();
    d.p.command(&ack("high", h), T0 + 4 * S, &mut d.out)
        .unwrap();
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
    assert_eq!(d.metrics.alarms_active.get(), 0);
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
    assert_eq!(c.metrics.values_sent.get(), 5);
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
            alarm_events: Vec::new(),
        }],
    };
    c.p.restore(state, T0);
    let r = crate::wire::SerialReading {
        sensor: Arc::from("uart/1/0"),
        unit: Some(Arc::from("bar")),
        ts_ms: T0,
        value: 4.2,
        gateway_clock: false,
    };
    c.p.ingest_serial(&r, T0, &mut c.out);
    c.p.flush_all(&mut c.out);
    let recs = c.take();
    assert_eq!(recs[0].1["unit"], "bar");
}

/// A processor restarted from `c`'s state as saved now, the buffer holding
/// exactly the seqs in `held`; returns it after the re-emission pass.
fn restart_holding(c: &mut Core, held: &[u64]) -> Core {
    let state = c.p.export_state();
    let mut d = Core::new();
    d.p.restore(state, T0 + 10 * S);
    let n =
        d.p.reemit_lost_alarm_events(|seq| held.contains(&seq), &mut d.out);
    assert_eq!(n, d.out.len());
    d
}

fn seqs_of(recs: &[(Lane, serde_json::Value)]) -> Vec<u64> {
    recs.iter()
        .map(|(_, v)| v["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_raised_event_lost_before_the_buffer_is_emitted_again_after_restart() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 3.0, T0);
    let raised = c.take();
    assert_eq!(raised.len(), 1);
    let lost_seq = raised[0].1["seq"].as_u64().unwrap();

    // The buffer never got it (a kill -9 between the state save and the
    // sink, or a blocked sink): it comes again, same content, new seq.
    let mut d = restart_holding(&mut c, &[]);
    let again = d.take();
    assert_eq!(again.len(), 1, "{again:?}");
    let (lane, v) = &again[0];
    assert_eq!(*lane, Lane::Alarm);
    let new_seq = v["seq"].as_u64().unwrap();
    assert!(new_seq > lost_seq, "a new seq, never a reused one");
    let mut expected = raised[0].1.clone();
    expected["seq"] = v["seq"].clone();
    assert_eq!(v, &expected, "same content");
    assert_eq!(v["occurrence"], lost_seq, "the occurrence keeps its id");
    assert_eq!(d.metrics.alarm_events_reemitted.get(), 1);
    assert!(d.p.take_dirty().0, "the new seq is saved before delivery");

    // Lost again before the buffer took it: emitted once more. Once held,
    // never again.
    let mut e = restart_holding(&mut d, &[]);
    let third = e.take();
    assert_eq!(third.len(), 1);
    let mut f = restart_holding(&mut e, &seqs_of(&third));
    assert!(f.take().is_empty(), "a held raised is not repeated");
    // The restored alarm is active and acknowledgeable under its occurrence.
    let ack = Command {
        alarm_id: "l1/m1/vibration:high".into(),
        occurrence: lost_seq,
        by: "op".into(),
    };
    f.p.command(&ack, T0 + 11 * S, &mut f.out).unwrap();
}

#[test]
fn a_durable_raised_event_is_not_repeated_and_a_lost_clear_is_sent_again() {
    let mut c = Core::new();
    c.reading("l1/m1/temp", 1.0, T0); // no alarm rule: no events
    c.reading("l1/m1/vibration", 3.0, T0);
    let raised = seqs_of(&c.take());
    let mut d = restart_holding(&mut c, &raised);
    assert!(d.take().is_empty(), "held: nothing again");

    // Acknowledged (and cleared, being latched and back to normal); the
    // buffer holds the acknowledgement but lost the clear.
    d.reading("l1/m1/vibration", 1.0, T0 + 11 * S);
    let occ = raised[0];
    let ack = Command {
        alarm_id: "l1/m1/vibration:high".into(),
        occurrence: occ,
        by: "op".into(),
    };
    d.p.command(&ack, T0 + 12 * S, &mut d.out).unwrap();
    let recs: Vec<_> = d
        .take()
        .into_iter()
        .filter(|(l, _)| *l == Lane::Alarm)
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].1["event"], "cleared");
    let mut e = restart_holding(&mut d, &[raised[0], recs[0].1["seq"].as_u64().unwrap()]);
    let again = e.take();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1["event"], "cleared");
    assert_eq!(again[0].1["occurrence"], occ);

    // Everything held and nothing active: the events are forgotten, and
    // the sensor no longer needs saving.
    let held = [
        raised[0],
        recs[0].1["seq"].as_u64().unwrap(),
        seqs_of(&again)[0],
    ];
    let mut f = restart_holding(&mut e, &held);
    assert!(f.take().is_empty());
    assert!(f.p.export_state().sensors.is_empty());
}

#[test]
fn an_ack_must_name_the_current_occurrence() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 3.0, T0);
    let first = c.take()[0].1["occurrence"].as_u64().unwrap();
    let ack = |occurrence| Command {
        alarm_id: "l1/m1/vibration:high".into(),
        occurrence,
        by: "op".into(),
    };
    c.p.command(&ack(first), T0 + S, &mut c.out).unwrap();
    // Acknowledged and latched: clears when the value does.
    c.reading("l1/m1/vibration", 1.0, T0 + 2 * S);
    c.reading("l1/m1/vibration", 3.2, T0 + 3 * S);
    let second = c
        .take()
        .into_iter()
        .find(|(_, v)| v["event"] == "raised")
        .unwrap()
        .1["occurrence"]
        .as_u64()
        .unwrap();
    assert_ne!(first, second);
    // The old acknowledgement, delivered again, does not silence the new
    // occurrence.
    let err =
        c.p.command(&ack(first), T0 + 4 * S, &mut c.out)
            .unwrap_err();
    assert_eq!(err.reason(), CommandReject::StaleOccurrence);
    assert!(c.take().is_empty());
    c.p.command(&ack(second), T0 + 4 * S, &mut c.out).unwrap();
}

#[test]
fn retained_missing_occurrence_and_junk_commands_are_refused_by_reason() {
    let ok = br#"{"command":"ack","alarm_id":"a:high","occurrence":7,"by":"op"}"#;
    assert_eq!(
        parse_command(ok, false).unwrap(),
        Command {
            alarm_id: "a:high".into(),
            occurrence: 7,
            by: "op".into()
        }
    );
    let reason = |p: &[u8], retained| parse_command(p, retained).unwrap_err().reason();
    assert_eq!(reason(ok, true), CommandReject::Retained);
    assert_eq!(
        reason(br#"{"command":"ack","alarm_id":"a:high"}"#, false),
        CommandReject::MissingOccurrence
    );
    assert_eq!(reason(b"reboot please", false), CommandReject::Malformed);
    assert_eq!(
        reason(br#"{"command":"ack"}"#, false),
        CommandReject::Malformed
    );
    assert_eq!(reason(br#"[1,2]"#, false), CommandReject::Malformed);
    let big = format!(r#"{{"command":"ack","alarm_id":"{}"}}"#, "x".repeat(5000));
    assert_eq!(reason(big.as_bytes(), false), CommandReject::Oversize);
    // Outsider text is bounded and escaped wherever it is kept or logged.
    let long_by = format!(
        r#"{{"command":"ack","alarm_id":"a:high","occurrence":1,"by":"{}"}}"#,
        "é".repeat(100)
    );
    assert_eq!(
        parse_command(long_by.as_bytes(), false)
            .unwrap()
            .by
            .chars()
            .count(),
        64
    );
    let evil = format!(
        "{{\"command\":\"x\\n2026-01-01 ERROR forged{}\"}}",
        "y".repeat(200)
    );
    let err = parse_command(evil.as_bytes(), false).unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");
    assert!(err.to_string().len() < 150, "{err}");
}

#[test]
fn the_buffer_holds_alarm_events_it_stored_or_settled_across_a_restart() {
    use crate::buffer::Buffer;
    use crate::config::{BufferConfig, Durability, WhenFull};
    let cfg = BufferConfig {
        durability: Durability::Outage,
        commit_interval_ms: 1000,
        spill_after_ms: 2000,
        max_disk_bytes: 64 * 1024 * 1024,
        segment_bytes: 16 * 1024,
        when_full: WhenFull::Block,
        memory_budget_bytes: 1024 * 1024,
        max_age_ms: 0,
    };
    let rec = |seq: u64| Record {
        seq,
        lane: Lane::Alarm,
        ts_ms: T0,
        topic: "gw/alarm".into(),
        payload: format!(r#"{{"seq":{seq}}}"#).into_bytes(),
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    {
        let (mut b, _) = Buffer::open(&cfg, dir.path(), metrics.clone()).unwrap();
        for seq in [10, 11, 12] {
            b.push(rec(seq), T0);
        }
        assert!(b.holds(Lane::Alarm, 11), "in memory");
        let first = b.next_unsent(T0).unwrap();
        assert_eq!(first.seq, 10);
        b.ack(10);
        // A crash: nothing closed.
    }
    let (mut b, _) = Buffer::open(&cfg, dir.path(), metrics).unwrap();
    assert!(
        b.holds(Lane::Alarm, 10),
        "acknowledged (or still in its segment)"
    );
    assert!(b.holds(Lane::Alarm, 12), "in a segment");
    assert!(!b.holds(Lane::Alarm, 13), "never stored");
    assert!(!b.holds(Lane::Summary, 12), "another lane");
}

/// The alarm events `c` emitted so far, as (event, occurrence), taken.
fn alarm_events(c: &mut Core) -> Vec<(String, u64)> {
    c.take()
        .into_iter()
        .filter(|(l, _)| *l == Lane::Alarm)
        .map(|(_, v)| {
            (
                v["event"].as_str().unwrap().to_owned(),
                v["occurrence"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn alarm_seqs(c: &mut Core) -> Vec<u64> {
    let alarms: Vec<_> = c
        .take()
        .into_iter()
        .filter(|(l, _)| *l == Lane::Alarm)
        .collect();
    seqs_of(&alarms)
}

#[test]
fn acknowledging_a_returned_latched_alarm_keeps_both_events_for_a_restart() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 3.0, T0);
    c.reading("l1/m1/vibration", 1.0, T0 + S);
    let raised = seqs_of(&c.take());
    let ack = Command {
        alarm_id: "l1/m1/vibration:high".into(),
        occurrence: raised[0],
        by: "op".into(),
    };
    // One call emits `acknowledged` and `cleared`; a crash loses both.
    c.p.command(&ack, T0 + 2 * S, &mut c.out).unwrap();
    let emitted = alarm_events(&mut c);
    assert_eq!(
        emitted,
        [
            ("acknowledged".to_owned(), raised[0]),
            ("cleared".to_owned(), raised[0])
        ]
    );
    let mut d = restart_holding(&mut c, &raised);
    assert_eq!(alarm_events(&mut d), emitted, "both, in order");
}

#[test]
fn a_raise_clear_raise_in_one_batch_keeps_the_first_pair_for_a_restart() {
    let mut c = Core::new();
    c.reading("l1/m1/pressure", 11.0, T0);
    c.reading("l1/m1/pressure", 5.0, T0 + 100);
    c.reading("l1/m1/pressure", 12.0, T0 + 200);
    let emitted = alarm_events(&mut c);
    let (first, second) = (emitted[0].1, emitted[2].1);
    assert_eq!(
        emitted,
        [
            ("raised".to_owned(), first),
            ("cleared".to_owned(), first),
            ("raised".to_owned(), second)
        ]
    );
    let mut d = restart_holding(&mut c, &[]);
    let again = d.take();
    let seqs = seqs_of(&again);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let again: Vec<_> = again
        .iter()
        .map(|(_, v)| {
            (
                v["event"].as_str().unwrap().to_owned(),
                v["occurrence"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(again, emitted, "every lost event, in the order emitted");
}

#[test]
fn durable_alarm_events_are_forgotten_while_running() {
    let mut c = Core::new();
    c.reading("l1/m1/pressure", 11.0, T0);
    c.reading("l1/m1/pressure", 5.0, T0 + 100);
    let seqs = alarm_seqs(&mut c);
    let key = c.p.registry.lookup_id("l1/m1/pressure").unwrap();
    let pending = |c: &Core| {
        !c.p.sensors[key.index()]
            .extra
            .as_ref()
            .unwrap()
            .ledger_is_empty()
    };
    assert!(pending(&c));
    assert_eq!(c.p.confirm_durable(seqs[0]), 1);
    assert!(pending(&c), "the clear is not durable yet");
    assert_eq!(c.p.export_state().sensors.len(), 1);
    assert_eq!(c.p.confirm_durable(seqs[1]), 1);
    assert!(!pending(&c));
    assert!(
        c.p.export_state().sensors.is_empty(),
        "a cleared alarm whose events are durable costs the state file nothing"
    );
    assert!(
        c.p.take_dirty().1,
        "the smaller state is saved with the next save"
    );
    // An acknowledgement of it is refused as not active, not as stale.
    let ack = Command {
        alarm_id: "l1/m1/pressure:high".into(),
        occurrence: seqs[0],
        by: "op".into(),
    };
    let err = c.p.command(&ack, T0 + S, &mut c.out).unwrap_err();
    assert_eq!(err.reason(), CommandReject::NotActive);

    // An active alarm keeps its occurrence once its events are durable.
    c.reading("l1/m1/vibration", 3.0, T0 + S);
    let raised = alarm_seqs(&mut c);
    c.p.confirm_durable(raised[0]);
    let state = c.p.export_state();
    let ledger = &state.sensors[0].alarm_events[0];
    assert!(ledger.events.is_empty());
    assert_eq!(ledger.occurrence, raised[0]);
    let ack = Command {
        alarm_id: "l1/m1/vibration:high".into(),
        occurrence: raised[0],
        by: "op".into(),
    };
    c.p.command(&ack, T0 + 2 * S, &mut c.out).unwrap();
    // Nothing durable is emitted again after a restart.
    c.take();
    let mut d = restart_holding(&mut c, &[]);
    assert_eq!(
        alarm_events(&mut d),
        [("acknowledged".to_owned(), raised[0])]
    );
}

#[test]
fn the_ledger_of_a_flapping_alarm_is_capped_and_counts_what_it_forgets() {
    let mut c = Core::new();
    for i in 0..40 {
        c.reading("l1/m1/pressure", 11.0, T0 + i * 200);
        c.reading("l1/m1/pressure", 5.0, T0 + i * 200 + 100);
    }
    assert_eq!(alarm_events(&mut c).len(), 80);
    assert_eq!(
        c.metrics.alarm_ledger_overflow.get(),
        80 - analytics::MAX_LEDGER_EVENTS as u64
    );
    // The newest are kept, and a restart sends those again in order.
    let mut d = restart_holding(&mut c, &[]);
    let again = d.take();
    assert_eq!(again.len(), analytics::MAX_LEDGER_EVENTS);
    let expected: Vec<_> = (0..analytics::MAX_LEDGER_EVENTS)
        .map(|i| if i % 2 == 0 { "raised" } else { "cleared" })
        .collect();
    let got: Vec<_> = again
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn every_record_kind_starts_with_the_same_header() {
    let mut c = Core::new();
    c.reading("l1/m1/vibration", 1.0, T0);
    c.reading("l1/m1/vibration", 3.1, T0 + 100); // alarm
    c.reading("l1/m1/level", 5.0, T0 + 200); // value (on_change)
    c.p.flush_all(&mut c.out); // summaries
    let kinds: Vec<String> = c
        .out
        .iter()
        .map(|r| {
            let text = std::str::from_utf8(&r.payload).unwrap();
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let kind = v["kind"].as_str().unwrap().to_owned();
            let event = v["event"]
                .as_str()
                .map(|e| format!(r#""event":"{e}","#))
                .unwrap_or_default();
            let sensor = v["sensor"].as_str().unwrap();
            let head = format!(
                r#"{{"schema":1,"kind":"{kind}",{event}"gateway":"gw","seq":{},"sensor":"{sensor}","labels":{{"#,
                r.seq
            );
            assert!(text.starts_with(&head), "{text} does not start with {head}");
            kind
        })
        .collect();
    for k in ["alarm", "value", "summary"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}
