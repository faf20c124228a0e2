//! Core settings for the processor's tests, built in code: the core takes
//! policies, not a configuration file.

use std::sync::Arc;

use super::{CoreSettings, RawMessage, SourceSpec};
use crate::decode::PayloadFormat;
use crate::policy::{PolicyRule, SensorPolicy};
use crate::topic::{OutputTemplate, TopicTemplate};

/// One MQTT source with JSON payloads on `plant/{line}/{machine}/{sensor}`,
/// `rules`, 10 s default windows, no allowed lateness, at most 100 sensors
/// and 1 KiB payloads, and the configuration's defaults for everything
/// else.
pub(super) fn settings(rules: Vec<PolicyRule>) -> CoreSettings {
    let labels: Vec<String> = ["line", "machine", "sensor"].map(String::from).into();
    let topic = |t: &str| OutputTemplate::parse(t, &labels).expect("a valid output template");
    CoreSettings {
        gateway_id: "gw-test".into(),
        sources: vec![Some(SourceSpec {
            template: TopicTemplate::parse("plant/{line}/{machine}/{sensor}")
                .expect("a valid topic template"),
            payload: PayloadFormat::json_default(),
        })],
        rules,
        default_window_ms: 10_000,
        allowed_lateness_ms: 0,
        max_sensors: 100,
        max_payload_bytes: 1024,
        retire_after_ms: None,
        max_future_skew_ms: 5 * 60_000,
        max_event_age_ms: 7 * 24 * 3_600_000,
        summary_topic: topic("gateways/{gateway}/summary/{sensor}"),
        alarm_topic: topic("gateways/{gateway}/alarm/{sensor}"),
        value_topic: topic("gateways/{gateway}/value/{sensor}"),
    }
}

/// `settings` as text to compare: every field, and the rules as patterns
/// and policies (a glob matcher's own text is that of its regex engine).
pub(super) fn described(settings: &CoreSettings) -> String {
    let rules: Vec<_> = settings
        .rules
        .iter()
        .map(|r| (r.pattern.as_str(), &*r.policy))
        .collect();
    let rest = CoreSettings {
        rules: Vec::new(),
        ..settings.clone()
    };
    format!("{rules:#?}\n{rest:#?}")
}

/// A rule giving the sensors `pattern` matches `policy`.
pub(super) fn rule(pattern: &str, policy: SensorPolicy) -> PolicyRule {
    PolicyRule::new(pattern, policy).expect("a valid pattern")
}

/// Windows of `window_ms`, no range, default statistics, summaries only.
pub(super) fn windows_of(window_ms: i64) -> SensorPolicy {
    SensorPolicy::default_for(window_ms)
}

/// A high alarm at `limit` on top of `policy`.
pub(super) fn with_high_alarm(policy: SensorPolicy, limit: f64) -> SensorPolicy {
    use crate::alarm::{AlarmKind, AlarmSpec, Severity, Threshold};
    SensorPolicy {
        alarm: Some(Arc::new(AlarmSpec {
            thresholds: vec![Threshold {
                kind: AlarmKind::High,
                limit,
                severity: Severity::Warning,
            }],
            ..AlarmSpec::default()
        })),
        ..policy
    }
}

/// A JSON reading of `value` at `ts` on `topic`, arriving at `ts`.
pub(super) fn reading(topic: &str, value: f64, ts: i64) -> RawMessage {
    RawMessage {
        source: 0,
        topic: topic.into(),
        payload: format!(r#"{{"value":{value},"ts":{ts}}}"#).into(),
        received_ms: ts,
    }
}
