//! What a sensor's readings are subject to, as the core owns it.
//!
//! A [`SensorPolicy`] (window, valid range, statistics, unit, delivery
//! mode, alarm and anomaly settings) is resolved once per sensor, when the
//! core first sees it, from the [`PolicyRule`]s the core was given: the most
//! specific pattern matching the sensor id wins, else the default policy.
//! A reload hands the core new rules and it resolves every known sensor
//! again; two policies that compare equal mean the sensor keeps its state.
//! The runtime builds the rules from the configuration; nothing here knows
//! how a configuration is written.

use std::sync::Arc;

use crate::alarm::AlarmSpec;
use crate::anomaly::AnomalySpec;

/// Which window statistics a sensor reports. `count`, the window bounds and
/// the sensor id are always present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatSet {
    pub min: bool,
    pub max: bool,
    pub mean: bool,
    pub std: bool,
    pub first_last: bool,
    pub rms: bool,
    pub p2p: bool,
    pub crest: bool,
    pub skewness: bool,
    pub kurtosis: bool,
    pub slope: bool,
    /// p50, p90, p95, p99.
    pub percentiles: [bool; 4],
}

impl StatSet {
    /// What a rule without `stats` reports.
    pub const DEFAULT: StatSet = StatSet {
        min: true,
        max: true,
        mean: true,
        std: true,
        first_last: true,
        ..StatSet::NONE
    };
    pub const NONE: StatSet = StatSet {
        min: false,
        max: false,
        mean: false,
        std: false,
        first_last: false,
        rms: false,
        p2p: false,
        crest: false,
        skewness: false,
        kurtosis: false,
        slope: false,
        percentiles: [false; 4],
    };
    /// Every statistic.
    pub const EVERYTHING: StatSet = StatSet {
        min: true,
        max: true,
        mean: true,
        std: true,
        first_last: true,
        rms: true,
        p2p: true,
        crest: true,
        skewness: true,
        kurtosis: true,
        slope: true,
        percentiles: [true; 4],
    };
    /// The quantiles of `percentiles`, in order, with their names.
    pub const QUANTILES: [(f64, &'static str); 4] =
        [(0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")];

    pub fn any_percentile(&self) -> bool {
        self.percentiles.iter().any(|p| *p)
    }
}

/// How a sensor's readings go upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delivery {
    /// Window summaries.
    Summary,
    /// Report by exception: a value is sent when it moved by more than a
    /// deadband from the last one sent, or after `max_silence` anyway.
    OnChange {
        deadband: Option<f64>,
        deadband_percent: Option<f64>,
        max_silence_ms: Option<i64>,
    },
    /// Every reading, for event-like signals.
    Raw,
}

/// Everything the core applies to one sensor's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorPolicy {
    /// Tumbling window length, at least 1 ms.
    pub window_ms: i64,
    /// Readings outside `[min, max]` are dropped and counted.
    pub min: f64,
    pub max: f64,
    pub stats: StatSet,
    /// The rule's unit; a serial mapping's unit applies when this is `None`.
    pub unit: Option<Arc<str>>,
    pub delivery: Delivery,
    pub alarm: Option<Arc<AlarmSpec>>,
    pub anomaly: Option<AnomalySpec>,
}

impl SensorPolicy {
    /// The policy of a sensor no rule matches: the default window, no range,
    /// the default statistics, summaries only.
    pub fn default_for(window_ms: i64) -> SensorPolicy {
        SensorPolicy {
            window_ms: window_ms.max(1),
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
            stats: StatSet::DEFAULT,
            unit: None,
            delivery: Delivery::Summary,
            alarm: None,
            anomaly: None,
        }
    }

    /// Whether the sensor needs alarm, baseline or delivery state beside
    /// its windows.
    pub fn needs_analytics(&self) -> bool {
        self.alarm.is_some() || self.anomaly.is_some() || self.delivery != Delivery::Summary
    }

    /// Whether its alarms watch for silence (a sensor that does is never
    /// retired for being silent).
    pub fn watches_staleness(&self) -> bool {
        self.alarm
            .as_ref()
            .is_some_and(|a| a.stale_after_ms.is_some())
    }
}

/// A glob pattern over sensor ids and the policy of the sensors it matches.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
    pub policy: Arc<SensorPolicy>,
}

impl PolicyRule {
    /// Matches `pattern` (a glob where `*` also crosses `/`).
    pub fn new(pattern: &str, policy: SensorPolicy) -> Result<PolicyRule, globset::Error> {
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()?
            .compile_matcher();
        Ok(PolicyRule {
            pattern: pattern.to_owned(),
            matcher,
            policy: Arc::new(policy),
        })
    }
}

/// The policy of sensor `id`: the most specific matching rule's (see
/// [`best_match`]), and whether a rule matched; else `default`.
pub fn resolve(
    rules: &[PolicyRule],
    default: &Arc<SensorPolicy>,
    id: &str,
) -> (Arc<SensorPolicy>, bool) {
    match best_match(rules.iter().map(|r| (r.pattern.as_str(), &r.matcher)), id) {
        Some(i) => (rules[i].policy.clone(), true),
        None => (default.clone(), false),
    }
}

/// Of `(pattern, matcher)` pairs, the index of the most specific one that
/// matches `id`: more literal characters is more specific; ties go to the
/// first.
pub fn best_match<'a>(
    rules: impl IntoIterator<Item = (&'a str, &'a globset::GlobMatcher)>,
    id: &str,
) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, (pattern, matcher)) in rules.into_iter().enumerate() {
        if matcher.is_match(id) {
            let spec = specificity(pattern);
            if best.is_none_or(|(b, _)| spec > b) {
                best = Some((spec, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// More literal characters means a more specific pattern.
pub fn specificity(pattern: &str) -> usize {
    pattern
        .chars()
        .filter(|c| !matches!(c, '*' | '?' | '[' | ']' | '{' | '}'))
        .count()
}
