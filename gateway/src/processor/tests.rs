//! Deterministic tests of the core: time is passed in, nothing is async.

use std::path::Path;

use super::test_support::{described, rule, settings, windows_of, with_high_alarm};
use super::*;
use crate::config::Config;

const T0: i64 = 1_700_000_000_000;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[gateway]
id = "gw-test"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{{line}}/{{machine}}/{{sensor}}"

[[sensor]]
match = "*/temp"
min = -40.0
max = 150.0
window = "1s"
unit = "degC"

[[sensor]]
match = "l1/m1/temp"
window = "2s"

[pipeline]
allowed_lateness = "500ms"
max_sensors = 3
max_payload_bytes = 200

[upstream]
broker = "127.0.0.1:1884"
summary_topic = "gw/{{gateway}}/{{line}}/{{sensor}}"
{extra}
"#
    );
    Config::parse(&text, Path::new("t.toml")).unwrap()
}

/// The settings `config("")` gives, built in code.
fn base() -> CoreSettings {
    let temp = SensorPolicy {
        min: -40.0,
        max: 150.0,
        unit: Some("degC".into()),
        ..windows_of(1_000)
    };
    let mut s = settings(vec![
        rule("*/temp", temp),
        rule("l1/m1/temp", windows_of(2_000)),
    ]);
    s.allowed_lateness_ms = 500;
    s.max_sensors = 3;
    s.max_payload_bytes = 200;
    let labels = ["line", "machine", "sensor"].map(String::from);
    s.summary_topic = crate::topic::OutputTemplate::parse("gw/{gateway}/{line}/{sensor}", &labels)
        .expect("a valid template");
    s
}

#[test]
fn the_core_takes_from_a_configuration_file_what_its_tests_build_in_code() {
    assert_eq!(
        described(&CoreSettings::from_config(&config(""))),
        described(&base())
    );
}

struct Check {
    p: Processor,
    metrics: Arc<Metrics>,
    out: Vec<Record>,
}

impl Check {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        let p = Processor::new(base(), metrics.clone(), 1);
        Check {
            p,
            metrics,
            out: Vec::new(),
        }
    }

    fn send(&mut self, topic: &str, payload: &str, now: i64) {
        let msg = RawMessage {
            source: 0,
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            received_ms: now,
        };
        self.p.ingest(&msg, now, &mut self.out);
    }

    fn reading(&mut self, topic: &str, value: f64, ts: i64) {
        self.send(topic, &format!(r#"{{"value":{value},"ts":{ts}}}"#), ts);
    }

    fn summaries(&mut self) -> Vec<serde_json::Value> {
        self.out
            .drain(..)
            .map(|r| {
                let mut v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["_topic"] = r.topic.into();
                assert_eq!(v["seq"], r.seq);
                v
            })
            .collect()
    }
}

#[test]
fn window_summary_has_exact_statistics() {
    let mut c = Check::new();
    for (i, v) in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].iter().enumerate() {
        c.reading("plant/l2/m1/temp", *v, T0 + i as i64 * 100);
    }
    assert!(c.out.is_empty(), "the window is still open");
    // A reading in the next window moves the watermark past end + lateness.
    c.reading("plant/l2/m1/temp", 1.0, T0 + 1_600);
    let s = c.summaries();
    assert_eq!(s.len(), 1);
    let s = &s[0];
    assert_eq!(s["schema"], 1);
    assert_eq!(s["kind"], "summary");
    assert_eq!(s["gateway"], "gw-test");
    assert_eq!(s["seq"], 1);
    assert_eq!(s["sensor"], "l2/m1/temp");
    assert_eq!(s["labels"]["machine"], "m1");
    assert_eq!(s["unit"], "degC");
    assert_eq!(s["_topic"], "gw/gw-test/l2/l2/m1/temp");
    assert_eq!(s["window_start_ms"], T0);
    assert_eq!(s["window_end_ms"], T0 + 1000);
    assert_eq!(s["count"], 8);
    assert_eq!(s["min"], 2.0);
    assert_eq!(s["max"], 9.0);
    assert_eq!(s["mean"], 5.0);
    assert_eq!(s["std"], 2.0);
    assert_eq!(s["first_ts_ms"], T0);
    assert_eq!(s["last_ts_ms"], T0 + 700);
}

#[test]
fn most_specific_rule_wins() {
    let mut c = Check::new();
    c.reading("plant/l1/m1/temp", 1.0, T0);
    c.reading("plant/l1/m1/temp", 1.0, T0 + 4_000);
    let s = c.summaries();
    assert_eq!(
        s[0]["window_end_ms"].as_i64().unwrap() - s[0]["window_start_ms"].as_i64().unwrap(),
        2000
    );
    assert!(s[0].get("unit").is_none(), "the 2 s rule has no unit");
}

#[test]
fn invalid_readings_are_counted_by_reason_and_never_summarised() {
    let mut c = Check::new();
    let now = T0;
    c.send("plant/l2/m1/temp", r#"{"value":20.0}"#, now);
    c.send("plant/l2/m1/temp", r#"{"value":999.0}"#, now);
    c.send("plant/l2/m1/temp", r#"{"value":-41}"#, now);
    c.send("plant/l2/m1/temp", "garbage", now);
    c.send("plant/l2/m1/temp", r#"{"temp":1}"#, now);
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":1,"pad":"{}"}}"#, "x".repeat(300)),
        now,
    );
    c.send("plant/l2/m1", r#"{"value":1}"#, now);
    c.send("elsewhere/l2/m1/temp", r#"{"value":1}"#, now);
    c.p.flush_all(&mut c.out);
    let s = c.summaries();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["count"], 1);
    assert_eq!(s[0]["max"], 20.0);
    let m = &c.metrics;
    assert_eq!(m.rejected(Reject::OutOfRange), 2);
    assert_eq!(m.rejected(Reject::JsonSyntax), 1);
    assert_eq!(m.rejected(Reject::MissingValue), 1);
    assert_eq!(m.rejected(Reject::Oversize), 1);
    assert_eq!(m.rejected(Reject::UnknownTopic), 2);
    let received = m.messages_received.get();
    let accepted = m.readings_accepted.get();
    assert_eq!(received, 8);
    assert_eq!(
        accepted + m.rejected_total(),
        received,
        "every message is accounted for"
    );
}

#[test]
fn nan_and_infinity_are_rejected() {
    let metrics = Arc::new(Metrics::new());
    let mut p = Processor::new(base(), metrics.clone(), 1);
    let mut out = Vec::new();
    p.ingest(
        &RawMessage {
            source: 0,
            topic: "plant/a/b/c".into(),
            payload: "1".into(),
            received_ms: T0,
        },
        T0,
        &mut out,
    );
    let key = p.registry().lookup("plant/a/b/c").unwrap();
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        p.record(
            Reading {
                sensor: key,
                ts_ms: T0,
                value: v,
                seq: None,
            },
            T0,
            &mut out,
        );
    }
    assert_eq!(metrics.rejected(Reject::NonFinite), 3);
}

#[test]
fn late_readings_are_counted_not_merged() {
    let mut c = Check::new();
    c.reading("plant/l2/m1/temp", 1.0, T0 + 100);
    c.reading("plant/l2/m1/temp", 2.0, T0 + 1_200);
    // Within lateness (500 ms after the first window's end): still merged.
    c.reading("plant/l2/m1/temp", 3.0, T0 + 900);
    assert!(c.out.is_empty());
    c.reading("plant/l2/m1/temp", 4.0, T0 + 1_600);
    let first = c.summaries();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["count"], 2);
    // Now the first window is gone: a reading for it is late.
    c.reading("plant/l2/m1/temp", 5.0, T0 + 999);
    assert_eq!(c.metrics.rejected(Reject::Late), 1);
    c.p.flush_all(&mut c.out);
    let rest = c.summaries();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["count"], 2, "4 and 2, not 5");
}

#[test]
fn a_quiet_sensor_is_flushed_by_gateway_time() {
    let mut c = Check::new();
    c.reading("plant/l2/m1/temp", 1.0, T0);
    c.p.flush_due(T0 + 1_400, &mut c.out);
    assert!(
        c.out.is_empty(),
        "window 1 s + lateness 0.5 s has not passed"
    );
    c.p.flush_due(T0 + 1_500, &mut c.out);
    assert_eq!(c.summaries().len(), 1);
}

#[test]
fn receive_time_is_used_without_a_timestamp() {
    let mut c = Check::new();
    c.send("plant/l2/m1/temp", r#"{"value":7}"#, T0 + 250);
    c.p.flush_all(&mut c.out);
    let s = c.summaries();
    assert_eq!(s[0]["first_ts_ms"], T0 + 250);
    assert_eq!(s[0]["window_start_ms"], T0);
}

#[test]
fn sequence_numbers_are_monotonic_across_sensors_and_continue_from_start_value() {
    let metrics = Arc::new(Metrics::new());
    let mut p = Processor::new(base(), metrics, 41);
    let mut out = Vec::new();
    for (i, topic) in ["plant/a/b/temp", "plant/a/c/temp", "plant/a/d/temp"]
        .iter()
        .enumerate()
    {
        let msg = RawMessage {
            source: 0,
            topic: (*topic).into(),
            payload: format!(r#"{{"value":1,"ts":{}}}"#, T0 + i as i64).into(),
            received_ms: T0,
        };
        p.ingest(&msg, T0, &mut out);
    }
    p.flush_all(&mut out);
    let seqs: Vec<u64> = out.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![41, 42, 43]);
    assert_eq!(p.next_seq(), 44);
}

#[test]
fn sensor_limit_is_enforced_and_counted() {
    let mut c = Check::new();
    for m in 0..5 {
        c.send(&format!("plant/l/m{m}/temp"), r#"{"value":1}"#, T0);
    }
    assert_eq!(c.p.registry().len(), 3);
    assert_eq!(c.metrics.rejected(Reject::SensorLimit), 2);
}

#[test]
fn bounded_flush_hands_out_slices_and_loses_nothing() {
    let metrics = Arc::new(Metrics::new());
    let mut settings = base();
    settings.max_sensors = 1000;
    let mut p = Processor::new(settings, metrics, 1);
    let mut out = Vec::new();
    for m in 0..500 {
        let msg = RawMessage {
            source: 0,
            topic: format!("plant/l/m{m}/vib"),
            payload: format!(r#"{{"value":1,"ts":{T0}}}"#).into(),
            received_ms: T0,
        };
        p.ingest(&msg, T0, &mut out);
    }
    let mut slices = 0;
    loop {
        let before = out.len();
        let done = p.flush_due_bounded(T0 + 60_000, &mut out, 64);
        assert!(out.len() - before <= 64);
        slices += 1;
        if done {
            break;
        }
    }
    assert_eq!(out.len(), 500);
    assert!(slices >= 8);
    let seqs: Vec<u64> = out.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
}

#[test]
fn a_flood_of_sensors_ages_out_and_a_later_sensor_is_summarised() {
    let metrics = Arc::new(Metrics::new());
    let mut c = Check {
        p: Processor::new(base(), metrics.clone(), 1),
        metrics,
        out: Vec::new(),
    };
    // The flood fills the table (max_sensors = 3).
    for m in 0..1000 {
        c.reading(&format!("plant/flood/m{m}/temp"), 1.0, T0);
    }
    assert_eq!(c.p.registry().len(), 3);
    c.reading("plant/l2/m1/temp", 20.0, T0 + 100);
    assert_eq!(c.metrics.rejected(Reject::SensorLimit), 998);
    // Their windows close by gateway time; a minute of silence retires them.
    c.p.flush_due(T0 + 5_000, &mut c.out);
    assert_eq!(c.summaries().len(), 3);
    c.p.flush_due(T0 + MIN_RETIRE_AFTER_MS + 1_000, &mut c.out);
    assert_eq!(c.p.registry().len(), 0);
    assert_eq!(c.metrics.sensors_retired.get(), 3);
    // A sensor that appears after the flood is summarised.
    let t = T0 + 120_000;
    c.reading("plant/l2/m1/temp", 20.0, t);
    c.reading("plant/l2/m1/temp", 22.0, t + 10);
    c.p.flush_due(t + 5_000, &mut c.out);
    let s = c.summaries();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["sensor"], "l2/m1/temp");
    assert_eq!(s[0]["count"], 2);
    assert_eq!(s[0]["unit"], "degC");
}

#[test]
fn a_retired_sensor_slot_is_reused_without_its_old_name_or_state() {
    let mut c = Check::new();
    c.reading("plant/a/m1/temp", 1.0, T0);
    c.p.flush_due(T0 + 5_000, &mut c.out);
    c.p.flush_due(T0 + MIN_RETIRE_AFTER_MS + 5_000, &mut c.out);
    c.summaries();
    assert_eq!(c.p.registry().len(), 0);
    let t = T0 + 200_000;
    c.reading("plant/b/m1/temp", 5.0, t);
    c.reading("plant/a/m1/temp", 7.0, t);
    c.p.flush_due(t + 5_000, &mut c.out);
    let mut s = c.summaries();
    s.sort_by_key(|v| v["sensor"].as_str().map(str::to_owned));
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0]["sensor"].as_str(), s[0]["count"].as_u64()),
        (Some("a/m1/temp"), Some(1))
    );
    assert_eq!(s[0]["min"], 7.0);
    assert_eq!(
        (s[1]["sensor"].as_str(), s[1]["count"].as_u64()),
        (Some("b/m1/temp"), Some(1))
    );
}

#[test]
fn a_silent_sensor_with_an_active_alarm_is_never_retired() {
    let mut settings = base();
    settings
        .rules
        .push(rule("*/press", with_high_alarm(windows_of(1_000), 10.0)));
    let metrics = Arc::new(Metrics::new());
    let mut c = Check {
        p: Processor::new(settings, metrics.clone(), 1),
        metrics,
        out: Vec::new(),
    };
    c.reading("plant/l1/m1/press", 50.0, T0);
    c.reading("plant/l1/m2/press", 1.0, T0);
    c.p.flush_due(T0 + 5_000, &mut c.out);
    c.p.flush_due(T0 + 10 * MIN_RETIRE_AFTER_MS, &mut c.out);
    let out: Vec<serde_json::Value> = c
        .out
        .drain(..)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert!(out.iter().any(|v| v["event"] == "raised"), "{out:?}");
    assert_eq!(c.p.registry().len(), 1, "the alarmed sensor stays");
    assert!(c.p.registry().lookup_id("l1/m1/press").is_some());
}

#[test]
fn a_reading_stamped_in_2100_is_rejected_as_future_and_the_next_are_not_late() {
    let mut c = Check::new();
    let now = T0;
    // 2100-01-01, from a node with a wrong real-time clock.
    let y2100 = 4_102_444_800_000i64;
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":1,"ts":{}}}"#, now - 100),
        now,
    );
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":99,"ts":{y2100}}}"#),
        now,
    );
    assert_eq!(c.metrics.rejected(Reject::Future), 1);
    assert!(c.out.is_empty(), "the watermark did not move to 2100");
    for i in 0..5 {
        c.send(
            "plant/l2/m1/temp",
            &format!(r#"{{"value":2,"ts":{}}}"#, now + i * 100),
            now + i * 100,
        );
    }
    assert_eq!(c.metrics.rejected(Reject::Late), 0);
    // Just within the skew (5 minutes by default) is accepted.
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":3,"ts":{}}}"#, now + 400 + 299_000),
        now + 400,
    );
    assert_eq!(c.metrics.rejected(Reject::Future), 1);
    c.p.flush_all(&mut c.out);
    let s = c.summaries();
    let counted: u64 = s.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 7);
    assert!(
        s.iter().all(|s| s["max"].as_f64() != Some(99.0)),
        "the 2100 value is in no summary"
    );
    let accepted = c.metrics.readings_accepted.get();
    assert_eq!(accepted, 7);
}

#[test]
fn a_reading_stamped_in_1971_is_rejected_as_too_old() {
    let mut c = Check::new();
    let y1971 = 31_536_000_000i64;
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":1,"ts":{y1971}}}"#),
        T0,
    );
    assert_eq!(c.metrics.rejected(Reject::TooOld), 1);
    c.p.flush_all(&mut c.out);
    assert!(
        c.out.is_empty(),
        "no summary of 1971 for the buffer to expire"
    );
    // The default bound: seven days (half of the 30-day buffer.max_age
    // would be longer).
    let day = 24 * 3600 * 1000i64;
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":1,"ts":{}}}"#, T0 - 6 * day),
        T0,
    );
    c.send(
        "plant/l2/m1/temp",
        &format!(r#"{{"value":1,"ts":{}}}"#, T0 - 8 * day),
        T0,
    );
    assert_eq!(c.metrics.rejected(Reject::TooOld), 2);
}

#[test]
fn max_event_age_defaults_below_buffer_max_age_and_is_bounded_by_it() {
    let c = config("[buffer]\nmax_age = \"2days\"\n");
    assert_eq!(
        c.pipeline.max_event_age,
        std::time::Duration::from_secs(24 * 3600)
    );
    let c = config("[buffer]\nmax_age = \"0s\"\n");
    assert_eq!(
        c.pipeline.max_event_age,
        crate::config::PipelineConfig::DEFAULT_MAX_EVENT_AGE
    );
    let text = "[gateway]\nid = \"g\"\n[[source]]\nkind = \"mqtt\"\nbroker = \"h:1\"\ntopic_template = \"a/{s}\"\n[pipeline]\nmax_event_age = \"3days\"\n[upstream]\nbroker = \"h:2\"\n[buffer]\nmax_age = \"2days\"\n";
    let err = Config::parse(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_event_age"), "{err}");
}

#[test]
fn mqtt_topic_levels_that_are_bad_names_are_rejected_as_bad_name() {
    let mut c = Check::new();
    let long = "m".repeat(crate::topic::MAX_NAME_BYTES + 1);
    c.send(&format!("plant/l2/{long}/temp"), r#"{"value":1}"#, T0);
    c.send("plant/l2/m\u{1b}[2J/temp", r#"{"value":1}"#, T0);
    c.send("plant/l2/m1/temp", r#"{"value":1}"#, T0);
    assert_eq!(c.metrics.rejected(Reject::BadName), 2);
    assert_eq!(c.p.registry().len(), 1, "bad names take no sensor slot");
}

#[test]
fn serial_readings_with_invalid_sensor_ids_are_rejected_as_bad_name() {
    let mut c = Check::new();
    for id in ["p/a+b/temp", "p/\u{0}/temp", ""] {
        let r = SerialReading {
            sensor: id.into(),
            unit: None,
            ts_ms: T0,
            value: 1.0,
            gateway_clock: false,
        };
        c.p.ingest_serial(&r, T0, &mut c.out);
    }
    assert_eq!(c.metrics.rejected(Reject::BadName), 3);
    assert_eq!(c.p.registry().len(), 0);
}

#[test]
fn extreme_event_times_are_rejected_without_overflow() {
    let mut c = Check::new();
    let p = &mut c.p;
    p.ingest(
        &RawMessage {
            source: 0,
            topic: "plant/l2/m1/temp".into(),
            payload: "1".into(),
            received_ms: T0,
        },
        T0,
        &mut c.out,
    );
    let key = p.registry().lookup("plant/l2/m1/temp").unwrap();
    // The gateway clock is sane; event times are anything a sender chose.
    for now in [0, T0, 4_102_444_800_000] {
        for ts in [i64::MIN, i64::MIN + 1, -1, 0, T0, i64::MAX - 1, i64::MAX] {
            let r = Reading {
                sensor: key,
                ts_ms: ts,
                value: 1.0,
                seq: None,
            };
            p.record(r, now, &mut c.out);
        }
        p.flush_due(now, &mut c.out);
    }
    assert!(c.metrics.rejected(Reject::Future) > 0);
    assert!(c.metrics.rejected(Reject::TooOld) > 0);
}

#[test]
fn serial_readings_add_up_to_accepted_plus_rejected() {
    let mut c = Check::new();
    let reading = |sensor: &str, value: f64, ts_ms: i64| crate::wire::SerialReading {
        sensor: sensor.into(),
        unit: None,
        ts_ms,
        value,
        gateway_clock: false,
    };
    for r in [
        reading("n1/temp", 20.0, T0),
        reading("n1/temp", f64::NAN, T0),
        reading("n1/a+b", 1.0, T0),
        reading("n1/temp", 21.0, T0 + 10 * 86_400_000),
    ] {
        c.p.ingest_serial(&r, T0, &mut c.out);
    }
    let m = &c.metrics;
    let received = m.messages_received.get();
    let accepted = m.readings_accepted.get();
    assert_eq!(received, 4);
    assert_eq!(
        received,
        accepted + m.rejected_total(),
        "every reading is accounted for"
    );
}

#[test]
fn a_retired_sensor_that_comes_back_never_sends_a_window_twice() {
    let mut c = Check::new();
    c.reading("plant/a/m1/temp", 1.0, T0);
    c.p.flush_due(T0 + 5_000, &mut c.out);
    assert_eq!(c.summaries().len(), 1);
    let later = T0 + MIN_RETIRE_AFTER_MS + 5_000;
    c.p.flush_due(later, &mut c.out);
    assert_eq!(c.p.registry().len(), 0, "retired");
    // A replay of the window already sent, then a new one.
    c.send(
        "plant/a/m1/temp",
        &format!(r#"{{"value":2,"ts":{}}}"#, T0 + 10),
        later,
    );
    c.send(
        "plant/a/m1/temp",
        &format!(r#"{{"value":3,"ts":{later}}}"#),
        later,
    );
    c.p.flush_due(later + 5_000, &mut c.out);
    let s = c.summaries();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["min"], 3.0);
    assert_eq!(c.metrics.rejected(Reject::Late), 1);
}
