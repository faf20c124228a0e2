//! Alarms: thresholds with hysteresis, on/off delays and latching,
//! rate of change, and stale sensors. Pure: time is passed in, events
//! come out.
//!
//! Each sensor with an `[sensor.alarm]` rule has one [`AlarmState`] per
//! [`AlarmKind`]. A threshold alarm is a small state machine:
//!
//! ```text
//! normal --(condition holds for on_delay)--> active --(clear condition holds for off_delay)--> normal
//!                                              |  latch, not acknowledged
//!                                              v
//!                                        active, returned to normal --(acknowledge)--> normal
//! ```
//!
//! The raise condition of `high`/`high_high` is `value > limit`, its clear
//! condition `value < limit - hysteresis` (mirrored for `low`/`low_low`), so
//! a value wandering inside the band never flaps. Delays count event time
//! or readings. An acknowledgement of an active alarm emits `acknowledged`;
//! a latched alarm whose condition has already cleared then also clears.
//! Threshold and rate alarms run on event time; the stale alarm on gateway
//! time (it is about readings *not* arriving).

use serde::{Deserialize, Serialize};

/// What an alarm watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    LowLow,
    Low,
    High,
    HighHigh,
    /// Rate of change above a limit (units per minute).
    Rate,
    /// No reading for longer than `stale_after`.
    Stale,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 6] = [
        AlarmKind::LowLow,
        AlarmKind::Low,
        AlarmKind::High,
        AlarmKind::HighHigh,
        AlarmKind::Rate,
        AlarmKind::Stale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::LowLow => "low_low",
            AlarmKind::Low => "low",
            AlarmKind::High => "high",
            AlarmKind::HighHigh => "high_high",
            AlarmKind::Rate => "rate_of_change",
            AlarmKind::Stale => "stale",
        }
    }

    pub fn from_name(name: &str) -> Option<AlarmKind> {
        AlarmKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn is_low(self) -> bool {
        matches!(self, AlarmKind::LowLow | AlarmKind::Low)
    }
}

/// How urgent an alarm is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn from_name(name: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Critical]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// How long a condition must hold before it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delay {
    #[default]
    None,
    /// For this long, in event time.
    Ms(i64),
    /// For this many consecutive readings.
    Readings(u32),
}

/// One threshold of a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub kind: AlarmKind,
    pub limit: f64,
    pub severity: Severity,
}

/// A rate-of-change alarm: the value changes faster than `limit_per_min`
/// (upwards, or in both directions with `both_directions`), measured over
/// `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    pub limit_per_min: f64,
    pub interval_ms: i64,
    pub both_directions: bool,
    pub severity: Severity,
}

/// The alarm settings of a sensor rule.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlarmSpec {
    pub thresholds: Vec<Threshold>,
    pub hysteresis: f64,
    pub on_delay: Delay,
    pub off_delay: Delay,
    pub latch: bool,
    pub rate: Option<RateSpec>,
    pub stale_after_ms: Option<i64>,
    pub stale_severity: Severity,
}

/// The state of one alarm of one sensor; persisted across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AlarmState {
    pub active: bool,
    /// When it was raised (event time; gateway time for `stale`).
    pub since_ms: i64,
    pub acknowledged: bool,
    /// Latched and the condition has cleared: waiting for acknowledgement.
    pub returned: bool,
    /// The most extreme value while active.
    pub peak: f64,
    /// Progress of a pending on- or off-delay.
    pending_since_ms: Option<i64>,
    pending_readings: u32,
}

/// All alarm state of one sensor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SensorAlarms {
    pub states: [AlarmState; 6],
    /// The reference point of the rate of change: (event time, value).
    rate_ref: Option<(i64, f64)>,
}

/// What happened to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    Raised,
    Cleared,
    Acknowledged,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Cleared => "cleared",
            Transition::Acknowledged => "acknowledged",
        }
    }
}

/// An alarm event, before it is encoded for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    pub kind: AlarmKind,
    pub transition: Transition,
    pub severity: Severity,
    /// The value that caused the transition (the rate, for `rate_of_change`;
    /// `None` for `stale` and acknowledgements).
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub ts_ms: i64,
    /// When the alarm was raised.
    pub since_ms: i64,
    /// How long it had been active (cleared, acknowledged).
    pub duration_ms: i64,
    pub peak: Option<f64>,
    /// Who acknowledged.
    pub by: Option<String>,
}

fn delay_met(delay: Delay, st: &mut AlarmState, ts_ms: i64) -> bool {
    let since = *st.pending_since_ms.get_or_insert(ts_ms);
    st.pending_readings += 1;
    match delay {
        Delay::None => true,
        Delay::Ms(ms) => ts_ms - since >= ms,
        Delay::Readings(n) => st.pending_readings >= n,
    }
}

fn reset_pending(st: &mut AlarmState) {
    st.pending_since_ms = None;
    st.pending_readings = 0;
}

/// Inputs of one evaluation of a level-style alarm.
struct Step {
    kind: AlarmKind,
    severity: Severity,
    value: f64,
    limit: f64,
    raise: bool,
    clear: bool,
    more_extreme: fn(f64, f64) -> bool,
    on_delay: Delay,
    off_delay: Delay,
    latch: bool,
}

fn step(st: &mut AlarmState, s: Step, ts_ms: i64, out: &mut Vec<AlarmEvent>) {
    let event = |st: &AlarmState, transition, ts_ms: i64| AlarmEvent {
        kind: s.kind,
        transition,
        severity: s.severity,
        value: Some(s.value),
        limit: Some(s.limit),
        ts_ms,
        since_ms: st.since_ms,
        duration_ms: (ts_ms - st.since_ms).max(0),
        peak: Some(st.peak),
        by: None,
    };
    if !st.active {
        if s.raise {
            if delay_met(s.on_delay, st, ts_ms) {
                reset_pending(st);
                *st = AlarmState {
                    active: true,
                    since_ms: ts_ms,
                    peak: s.value,
                    ..AlarmState::default()
                };
                out.push(event(st, Transition::Raised, ts_ms));
            }
        } else {
            reset_pending(st);
        }
        return;
    }
    if (s.more_extreme)(s.value, st.peak) {
        st.peak = s.value;
    }
    if st.returned {
        // Latched and waiting for acknowledgement; the condition is back.
        if s.raise {
            st.returned = false;
        }
        return;
    }
    if s.clear {
        if delay_met(s.off_delay, st, ts_ms) {
            reset_pending(st);
            if s.latch && !st.acknowledged {
                st.returned = true;
            } else {
                out.push(event(st, Transition::Cleared, ts_ms));
                *st = AlarmState::default();
            }
        }
    } else {
        reset_pending(st);
    }
}

impl SensorAlarms {
    /// Evaluates one accepted reading (event time `ts_ms`).
    pub fn reading(&mut self, spec: &AlarmSpec, value: f64, ts_ms: i64, out: &mut Vec<AlarmEvent>) {
        for t in &spec.thresholds {
            let (raise, clear) = if t.kind.is_low() {
                (value < t.limit, value > t.limit + spec.hysteresis)
            } else {
                (value > t.limit, value < t.limit - spec.hysteresis)
            };
            let more_extreme: fn(f64, f64) -> bool = if t.kind.is_low() {
                |a, b| a < b
            } else {
                |a, b| a > b
            };
            step(
                &mut self.states[t.kind as usize],
                Step {
                    kind: t.kind,
                    severity: t.severity,
                    value,
                    limit: t.limit,
                    raise,
                    clear,
                    more_extreme,
                    on_delay: spec.on_delay,
                    off_delay: spec.off_delay,
                    latch: spec.latch,
                },
                ts_ms,
                out,
            );
        }
        if let Some(rate) = &spec.rate {
            match self.rate_ref {
                None => self.rate_ref = Some((ts_ms, value)),
                Some((t0, _)) if ts_ms < t0 => {}
                Some((t0, v0)) if ts_ms - t0 >= rate.interval_ms => {
                    let per_min = (value - v0) / ((ts_ms - t0) as f64 / 60_000.0);
                    self.rate_ref = Some((ts_ms, value));
                    let r = if rate.both_directions {
                        per_min.abs()
                    } else {
                        per_min
                    };
                    let hysteresis = rate.limit_per_min * 0.1;
                    step(
                        &mut self.states[AlarmKind::Rate as usize],
                        Step {
                            kind: AlarmKind::Rate,
                            severity: rate.severity,
                            value: per_min,
                            limit: rate.limit_per_min,
                            raise: r > rate.limit_per_min,
                            clear: r < rate.limit_per_min - hysteresis,
                            more_extreme: |a, b| a.abs() > b.abs(),
                            // Evaluated once per interval: no delays.
                            on_delay: Delay::None,
                            off_delay: Delay::None,
                            latch: spec.latch,
                        },
                        ts_ms,
                        out,
                    );
                }
                Some(_) => {}
            }
        }
        // A reading ends a stale alarm (gateway time is not known here, so
        // the event carries the reading's time).
        let st = &mut self.states[AlarmKind::Stale as usize];
        if st.active && !st.returned {
            if spec.latch && !st.acknowledged {
                st.returned = true;
            } else {
                out.push(AlarmEvent {
                    kind: AlarmKind::Stale,
                    transition: Transition::Cleared,
                    severity: spec.stale_severity,
                    value: Some(value),
                    limit: spec.stale_after_ms.map(|ms| ms as f64 / 1000.0),
                    ts_ms,
                    since_ms: st.since_ms,
                    duration_ms: (ts_ms - st.since_ms).max(0),
                    peak: None,
                    by: None,
                });
                *st = AlarmState::default();
            }
        }
    }

    /// Evaluates the passage of gateway time: a sensor silent since
    /// `last_arrival_ms` goes stale.
    pub fn tick(
        &mut self,
        spec: &AlarmSpec,
        now_ms: i64,
        last_arrival_ms: i64,
        out: &mut Vec<AlarmEvent>,
    ) {
        let Some(after) = spec.stale_after_ms else {
            return;
        };
        let st = &mut self.states[AlarmKind::Stale as usize];
        if !st.active && now_ms.saturating_sub(last_arrival_ms) >= after {
            *st = AlarmState {
                active: true,
                since_ms: now_ms,
                peak: f64::NAN,
                ..AlarmState::default()
            };
            out.push(AlarmEvent {
                kind: AlarmKind::Stale,
                transition: Transition::Raised,
                severity: spec.stale_severity,
                value: None,
                limit: Some(after as f64 / 1000.0),
                ts_ms: now_ms,
                since_ms: last_arrival_ms,
                duration_ms: now_ms - last_arrival_ms,
                peak: None,
                by: None,
            });
        }
    }

    /// Acknowledges alarm `kind`; returns false if it is not active or
    /// already acknowledged.
    pub fn acknowledge(
        &mut self,
        spec: &AlarmSpec,
        kind: AlarmKind,
        by: &str,
        now_ms: i64,
        out: &mut Vec<AlarmEvent>,
    ) -> bool {
        let severity = match kind {
            AlarmKind::Rate => spec.rate.map(|r| r.severity).unwrap_or_default(),
            AlarmKind::Stale => spec.stale_severity,
            k => spec
                .thresholds
                .iter()
                .find(|t| t.kind == k)
                .map(|t| t.severity)
                .unwrap_or_default(),
        };
        let st = &mut self.states[kind as usize];
        if !st.active || st.acknowledged {
            return false;
        }
        st.acknowledged = true;
        let base = AlarmEvent {
            kind,
            transition: Transition::Acknowledged,
            severity,
            value: None,
            limit: None,
            ts_ms: now_ms,
            since_ms: st.since_ms,
            duration_ms: (now_ms - st.since_ms).max(0),
            peak: Some(st.peak).filter(|p| p.is_finite()),
            by: Some(by.to_owned()),
        };
        out.push(base.clone());
        if st.returned {
            out.push(AlarmEvent {
                transition: Transition::Cleared,
                by: None,
                ..base
            });
            *st = AlarmState::default();
        }
        true
    }

    /// Whether any alarm is active (for persistence).
    pub fn any_active(&self) -> bool {
        self.states.iter().any(|s| s.active)
    }
}

#[cfg(test)]
mod tests;
