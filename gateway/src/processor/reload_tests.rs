//! Reloads of the core: which sensors keep their state, which flush.

use std::sync::Arc;

use super::test_support::{reading, rule, settings, windows_of, with_high_alarm};
use super::*;
use crate::anomaly::AnomalySpec;
use crate::policy::SensorPolicy;

const T0: i64 = 1_700_000_000_000;

struct Core {
    p: Processor,
    metrics: Arc<Metrics>,
    out: Vec<Record>,
}

impl Core {
    fn new(settings: CoreSettings) -> Core {
        let metrics = Arc::new(Metrics::new());
        Core {
            p: Processor::new(settings, metrics.clone(), 1),
            metrics,
            out: Vec::new(),
        }
    }

    fn send(&mut self, topic: &str, value: f64, ts: i64) {
        self.p.ingest(&reading(topic, value, ts), ts, &mut self.out);
    }

    /// The records emitted since the last call: (kind, topic, payload).
    fn take(&mut self) -> Vec<(String, String, serde_json::Value)> {
        self.out
            .drain(..)
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                (v["kind"].as_str().unwrap().to_owned(), r.topic, v)
            })
            .collect()
    }
}

/// Temperature: 10 s windows, a high alarm at 50 and anomaly detection
/// (so it has a baseline).
fn temperature() -> SensorPolicy {
    SensorPolicy {
        anomaly: Some(AnomalySpec::default()),
        ..with_high_alarm(windows_of(10_000), 50.0)
    }
}

#[test]
fn an_unchanged_rule_keeps_window_alarm_and_baseline_and_a_changed_rule_flushes() {
    let mut c = Core::new(settings(vec![
        rule("*/temp", temperature()),
        rule("*/pressure", windows_of(10_000)),
    ]));
    // The first temperature window closes (the baseline takes it) with
    // the alarm raised; the second stays open, as does pressure's.
    c.send("plant/l1/m1/temp", 60.0, T0 + 1_000);
    c.send("plant/l1/m1/temp", 61.0, T0 + 11_000);
    c.send("plant/l1/m1/pressure", 2.0, T0 + 11_000);
    c.send("plant/l1/m1/pressure", 3.0, T0 + 12_000);
    let before: Vec<_> = c.take().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(before, ["alarm", "summary"]);
    let state = c.p.export_state();
    assert_eq!(state.sensors[0].baseline.windows, 1);

    let mut new = settings(vec![
        rule("*/temp", temperature()),
        rule("*/pressure", windows_of(5_000)),
    ]);
    let labels = ["line", "machine", "sensor"].map(String::from);
    new.summary_topic = crate::topic::OutputTemplate::parse("v2/{sensor}", &labels).unwrap();
    let plan = c.p.reconfigure(new, &mut c.out);

    assert_eq!(
        (plan.kept, plan.changed, plan.forgotten, plan.alarms_dropped),
        (1, 1, 0, 0)
    );
    assert_eq!(plan.listed, [Arc::from("l1/m1/pressure")]);
    let flushed = c.take();
    assert_eq!(flushed.len(), 1, "only the changed sensor flushes");
    let (kind, topic, summary) = &flushed[0];
    assert_eq!(kind, "summary");
    assert_eq!(summary["sensor"], "l1/m1/pressure");
    assert_eq!(summary["count"], 2);
    assert_eq!(
        topic, "gateways/gw-test/summary/l1/m1/pressure",
        "flushed on the topic it was opened under"
    );
    assert_eq!(c.p.export_state(), state, "alarm and baseline kept");
    assert_eq!(c.metrics.alarms_active.get(), 1);

    // Still active: a high reading raises nothing new; the open window
    // takes it beside the reading from before the reload.
    c.send("plant/l1/m1/temp", 62.0, T0 + 15_000);
    assert!(c.take().is_empty());
    // Pressure's flushed window is closed: a reading into it is late.
    c.send("plant/l1/m1/pressure", 4.0, T0 + 12_500);
    assert_eq!(c.metrics.rejected(Reject::Late), 1);
    c.send("plant/l1/m1/pressure", 5.0, T0 + 21_000);
    c.p.flush_all(&mut c.out);
    let after = c.take();
    let temp = after
        .iter()
        .find(|(_, _, v)| v["sensor"] == "l1/m1/temp")
        .unwrap();
    assert_eq!(temp.1, "v2/l1/m1/temp");
    assert_eq!(temp.2["window_start_ms"], T0 + 10_000);
    assert_eq!(
        temp.2["count"], 2,
        "readings from before and after the reload"
    );
    let pressure = after
        .iter()
        .find(|(_, _, v)| v["sensor"] == "l1/m1/pressure")
        .unwrap();
    assert_eq!(pressure.2["window_start_ms"], T0 + 20_000);
    assert_eq!(pressure.2["window_end_ms"], T0 + 25_000, "the new window");
}

#[test]
fn a_sensor_no_rule_matches_any_more_is_flushed_and_forgotten_with_its_alarm() {
    let mut c = Core::new(settings(vec![rule(
        "*/vib",
        with_high_alarm(windows_of(10_000), 10.0),
    )]));
    c.send("plant/l1/m1/vib", 20.0, T0 + 1_000);
    assert_eq!(c.metrics.alarms_active.get(), 1);
    c.take();

    let plan = c.p.reconfigure(settings(Vec::new()), &mut c.out);

    assert_eq!((plan.kept, plan.changed, plan.forgotten), (0, 0, 1));
    assert_eq!(plan.alarms_dropped, 1);
    assert_eq!(plan.records_flushed, 1);
    assert_eq!(c.take()[0].2["count"], 1);
    assert_eq!(c.p.registry().len(), 0);
    assert_eq!(c.metrics.alarms_active.get(), 0);
    assert_eq!(c.p.export_state(), PersistedState::default());
    // It comes back under the default policy; its sent window stays sent.
    c.send("plant/l1/m1/vib", 20.0, T0 + 2_000);
    assert_eq!(c.metrics.rejected(Reject::Late), 1);
    c.send("plant/l1/m1/vib", 20.0, T0 + 12_000);
    assert!(c.take().is_empty(), "no alarm any more");
}

#[test]
fn sensors_without_a_rule_keep_their_windows_unless_the_default_window_changes() {
    let mut c = Core::new(settings(Vec::new()));
    c.send("plant/l1/m1/flow", 1.0, T0 + 1_000);

    let plan = c.p.reconfigure(
        settings(vec![rule("*/level", windows_of(1_000))]),
        &mut c.out,
    );
    assert_eq!((plan.kept, plan.changed, plan.records_flushed), (1, 0, 0));

    let mut longer = settings(Vec::new());
    longer.default_window_ms = 60_000;
    let plan = c.p.reconfigure(longer, &mut c.out);
    assert_eq!((plan.kept, plan.changed, plan.forgotten), (0, 1, 0));
    assert_eq!(c.take()[0].2["window_end_ms"], T0 + 10_000);
}

#[test]
fn a_sensor_a_new_rule_matches_takes_its_alarm() {
    let mut c = Core::new(settings(Vec::new()));
    c.send("plant/l1/m1/press", 5.0, T0 + 1_000);

    let plan = c.p.reconfigure(
        settings(vec![rule(
            "*/press",
            with_high_alarm(windows_of(10_000), 10.0),
        )]),
        &mut c.out,
    );
    assert_eq!(plan.changed, 1);
    c.take();
    c.send("plant/l1/m1/press", 20.0, T0 + 11_000);
    let events = c.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "alarm");
    assert_eq!(events[0].2["event"], "raised");
}
