//! `[[sensor]]` rules: the pattern and valid range, window, delivery mode,
//! `[sensor.alarm]` and `[sensor.anomaly]` (statistics are in `stats.rs`).

use std::fmt::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::diag::{duration_text, ms_text, named, Cx, Named};
use super::raw::{RawAlarm, RawAnomaly, RawSensorRule};
use super::stats::StatSet;
use crate::alarm::{AlarmKind, AlarmSpec, Delay, RateSpec, Severity, Threshold};
use crate::anomaly::AnomalySpec;
pub use crate::policy::Delivery;

/// Settings for the sensors whose id matches a glob pattern.
#[derive(Debug, Clone)]
pub struct SensorRule {
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
    /// Readings outside `[min, max]` are dropped and counted.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub window: Duration,
    pub stats: StatSet,
    pub unit: Option<String>,
    pub delivery: Delivery,
    pub alarm: Option<Arc<AlarmSpec>>,
    pub anomaly: Option<AnomalySpec>,
}

impl SensorRule {
    /// The index of the most specific rule whose pattern matches `id`; ties
    /// go to the rule that comes first in the file (the core's choice,
    /// [`crate::policy::best_match`]).
    pub fn best(rules: &[SensorRule], id: &str) -> Option<usize> {
        crate::policy::best_match(rules.iter().map(|r| (r.pattern.as_str(), &r.matcher)), id)
    }
}

/// How a rule names its delivery mode (the type is the core's, in `policy.rs`).
impl Delivery {
    pub fn name(&self) -> &'static str {
        self.mode().name()
    }

    fn mode(&self) -> DeliveryMode {
        match self {
            Delivery::Summary => DeliveryMode::Summary,
            Delivery::OnChange { .. } => DeliveryMode::OnChange,
            Delivery::Raw => DeliveryMode::Raw,
        }
    }
}

/// The `delivery` setting, before its `on_change` settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryMode {
    Summary,
    OnChange,
    Raw,
}

impl DeliveryMode {
    /// `delivery = "..."`, for messages.
    fn setting(self) -> String {
        format!("delivery = {:?}", self.name())
    }
}

named!(DeliveryMode, "delivery", suggest = true:
    Summary => "summary",
    OnChange => "on_change",
    Raw => "raw",
);

/// The alarm's own names (`Severity::name`).
impl Named for Severity {
    const SETTING: &'static str = "severity";
    const ALL: &'static [Self] = &[Severity::Info, Severity::Warning, Severity::Critical];

    fn name(self) -> &'static str {
        Severity::name(self)
    }
}

/// `rate_direction`: whether a falling rate counts too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateDirection {
    Up,
    Both,
}

named!(RateDirection, "rate_direction": Up => "up", Both => "both");

impl Cx<'_> {
    pub(super) fn rule(&mut self, raw: RawSensorRule) -> Option<SensorRule> {
        let matcher = match globset::GlobBuilder::new(raw.pattern.get_ref())
            .literal_separator(false)
            .build()
        {
            Ok(g) => Some(g.compile_matcher()),
            Err(e) => {
                self.at(
                    raw.pattern.span(),
                    format!(
                        "`{}` is not a valid glob: {}",
                        raw.pattern.get_ref(),
                        e.kind()
                    ),
                    Some("use `*` for any text, such as \"line1/*/temperature\"".into()),
                );
                None
            }
        };
        let min = raw.min.as_ref().map(|m| *m.get_ref());
        let max = raw.max.as_ref().map(|m| *m.get_ref());
        if let (Some(lo), Some(hi)) = (&raw.min, &raw.max) {
            if lo.get_ref() >= hi.get_ref() {
                self.at(
                    hi.span(),
                    format!(
                        "`max` ({}) must be greater than `min` ({})",
                        hi.get_ref(),
                        lo.get_ref()
                    ),
                    Some("swap them, or widen the range".into()),
                );
            }
        }
        for v in [&raw.min, &raw.max].into_iter().flatten() {
            if !v.get_ref().is_finite() {
                self.at(v.span(), "a range limit must be a finite number", None);
            }
        }
        let window = self.duration(&raw.window, Duration::from_secs(10));
        if let Some(w) = &raw.window {
            if window < Duration::from_millis(100) {
                self.at(w.span(), "`window` must be at least 100ms", None);
            }
        }
        let stats = self.stats(&raw.stats);
        let delivery = self.delivery(&raw);
        let alarm = raw
            .alarm
            .as_ref()
            .map(|a| self.alarm(a, (min, max), raw.unit.as_deref()));
        let anomaly = raw.anomaly.as_ref().map(|a| {
            let span = raw.delivery.as_ref().map(|d| d.span());
            self.anomaly(a, delivery, span)
        });
        Some(SensorRule {
            pattern: raw.pattern.into_inner(),
            matcher: matcher?,
            min,
            max,
            window,
            stats,
            unit: raw.unit,
            delivery,
            alarm,
            anomaly,
        })
    }

    pub(super) fn delivery(&mut self, raw: &RawSensorRule) -> Delivery {
        let mode = raw
            .delivery
            .as_ref()
            .and_then(|d| Some((self.named(d)?, d.span())));
        let delivery = match mode {
            None | Some((DeliveryMode::Summary, _)) => Delivery::Summary,
            Some((DeliveryMode::Raw, _)) => Delivery::Raw,
            Some((DeliveryMode::OnChange, span)) => {
                let deadband = raw.deadband.as_ref().map(|d| *d.get_ref());
                let deadband_percent = raw.deadband_percent.as_ref().map(|d| *d.get_ref());
                for d in [&raw.deadband, &raw.deadband_percent].into_iter().flatten() {
                    if !(d.get_ref().is_finite() && *d.get_ref() >= 0.0) {
                        self.at(d.span(), "a deadband must be a finite number >= 0", None);
                    }
                }
                let max_silence_ms = raw.max_silence.as_ref().map(|_| {
                    self.duration(&raw.max_silence, Duration::from_secs(300))
                        .as_millis() as i64
                });
                if deadband.is_none() && deadband_percent.is_none() && max_silence_ms.is_none() {
                    self.at(
                        span,
                        "`on_change` needs `deadband`, `deadband_percent` or `max_silence`",
                        Some("for example `deadband = 0.5` and `max_silence = \"15m\"`".into()),
                    );
                }
                Delivery::OnChange {
                    deadband,
                    deadband_percent,
                    max_silence_ms,
                }
            }
        };
        if !matches!(delivery, Delivery::OnChange { .. }) {
            let on_change = DeliveryMode::OnChange.setting();
            for (name, span) in [
                ("deadband", raw.deadband.as_ref().map(|d| d.span())),
                (
                    "deadband_percent",
                    raw.deadband_percent.as_ref().map(|d| d.span()),
                ),
                ("max_silence", raw.max_silence.as_ref().map(|d| d.span())),
            ] {
                if let Some(span) = span {
                    self.at(
                        span,
                        format!("`{name}` applies to `{on_change}` only"),
                        Some(format!("set `{on_change}` or remove it")),
                    );
                }
            }
        }
        delivery
    }

    fn delay(&mut self, time: &Option<Spanned<String>>, readings: &Option<Spanned<u32>>) -> Delay {
        match (time, readings) {
            (Some(_), Some(r)) => {
                self.at(
                    r.span(),
                    "set a delay as a duration or as a number of readings, not both",
                    None,
                );
                Delay::None
            }
            (Some(_), None) => Delay::Ms(self.duration(time, Duration::ZERO).as_millis() as i64),
            (None, Some(r)) => Delay::Readings(*r.get_ref()),
            (None, None) => Delay::None,
        }
    }

    /// Validates `[sensor.alarm]` against the rule's range and unit.
    pub(super) fn alarm(
        &mut self,
        raw: &Spanned<RawAlarm>,
        range: (Option<f64>, Option<f64>),
        unit: Option<&str>,
    ) -> Arc<AlarmSpec> {
        let table = raw.span();
        let raw = raw.get_ref();
        let sev = raw.severity.as_ref();
        let levels = [
            (
                AlarmKind::LowLow,
                &raw.low_low,
                Severity::Critical,
                sev.and_then(|s| s.low_low.clone()),
            ),
            (
                AlarmKind::Low,
                &raw.low,
                Severity::Warning,
                sev.and_then(|s| s.low.clone()),
            ),
            (
                AlarmKind::High,
                &raw.high,
                Severity::Warning,
                sev.and_then(|s| s.high.clone()),
            ),
            (
                AlarmKind::HighHigh,
                &raw.high_high,
                Severity::Critical,
                sev.and_then(|s| s.high_high.clone()),
            ),
        ];
        let mut thresholds = Vec::new();
        let mut previous: Option<(AlarmKind, f64)> = None;
        let mut smallest_gap: Option<(f64, AlarmKind, AlarmKind)> = None;
        for (kind, limit, default, severity) in levels {
            let Some(limit) = limit else { continue };
            let value = *limit.get_ref();
            if !value.is_finite() {
                self.at(limit.span(), "an alarm limit must be a finite number", None);
                continue;
            }
            if let Some((pk, pv)) = previous {
                if value <= pv {
                    self.at(
                        limit.span(),
                        format!(
                            "`{}` ({value}) must be greater than `{}` ({pv})",
                            kind.name(),
                            pk.name()
                        ),
                        Some(
                            "limits must rise in the order low_low < low < high < high_high".into(),
                        ),
                    );
                } else if smallest_gap.is_none_or(|(g, _, _)| value - pv < g) {
                    smallest_gap = Some((value - pv, pk, kind));
                }
            }
            if let Some(lo) = range.0.filter(|lo| value < *lo) {
                self.at(
                    limit.span(),
                    format!(
                        "`{}` ({value}) is below the rule's `min` ({lo}): it can never be reached",
                        kind.name()
                    ),
                    Some("readings below `min` are rejected before alarms see them".into()),
                );
            }
            if let Some(hi) = range.1.filter(|hi| value > *hi) {
                self.at(
                    limit.span(),
                    format!(
                        "`{}` ({value}) is above the rule's `max` ({hi}): it can never be reached",
                        kind.name()
                    ),
                    Some("readings above `max` are rejected before alarms see them".into()),
                );
            }
            previous = Some((kind, value));
            let severity = self.choice(&severity, default);
            thresholds.push(Threshold {
                kind,
                limit: value,
                severity,
            });
        }
        let hysteresis = raw.hysteresis.as_ref().map(|h| *h.get_ref()).unwrap_or(0.0);
        if let Some(h) = &raw.hysteresis {
            if !(hysteresis.is_finite() && hysteresis >= 0.0) {
                self.at(h.span(), "`hysteresis` must be a finite number >= 0", None);
            } else if let Some((gap, a, b)) = smallest_gap.filter(|(g, _, _)| hysteresis >= *g) {
                self.at(
                    h.span(),
                    format!("`hysteresis` ({hysteresis}) must be smaller than the band between `{}` and `{}` ({gap})", a.name(), b.name()),
                    Some("otherwise the lower alarm could never clear while the upper one is active".into()),
                );
            }
        }
        let rate = raw.rate_of_change.as_ref().map(|r| {
            if !(r.get_ref().is_finite() && *r.get_ref() > 0.0) {
                self.at(
                    r.span(),
                    "`rate_of_change` must be a positive number (units per minute)",
                    None,
                );
            }
            let both = self.choice(&raw.rate_direction, RateDirection::Up) == RateDirection::Both;
            let interval = self.duration(&raw.rate_interval, Duration::from_secs(60));
            if let Some(i) = &raw.rate_interval {
                if interval < Duration::from_secs(1) {
                    self.at(i.span(), "`rate_interval` must be at least 1s", None);
                }
            }
            RateSpec {
                limit_per_min: *r.get_ref(),
                interval_ms: interval.as_millis() as i64,
                both_directions: both,
                severity: self.choice(
                    &sev.and_then(|s| s.rate_of_change.clone()),
                    Severity::Warning,
                ),
            }
        });
        for (name, v) in [
            ("rate_interval", &raw.rate_interval),
            ("rate_direction", &raw.rate_direction),
        ] {
            if let (Some(v), None) = (v, &raw.rate_of_change) {
                self.at(v.span(), format!("`{name}` needs `rate_of_change`"), None);
            }
        }
        let stale_after_ms = raw.stale_after.as_ref().map(|_| {
            self.duration(&raw.stale_after, Duration::from_secs(60))
                .as_millis() as i64
        });
        if let (Some(au), Some(ru)) = (&raw.unit, unit) {
            if au.get_ref() != ru {
                self.at(
                    au.span(),
                    format!(
                        "the alarm's unit `{}` differs from the rule's unit `{ru}`",
                        au.get_ref()
                    ),
                    Some("write the limits in the rule's unit".into()),
                );
            }
        }
        if let (Some(au), None) = (&raw.unit, unit) {
            self.at(
                au.span(),
                "the alarm names a unit but its rule has none",
                Some("set `unit` on the `[[sensor]]` rule".into()),
            );
        }
        if thresholds.is_empty() && rate.is_none() && stale_after_ms.is_none() {
            self.at(
                table.clone(),
                "`[sensor.alarm]` sets no alarm",
                Some("set a limit (`high = ...`), `rate_of_change` or `stale_after`".into()),
            );
        }
        let spec = AlarmSpec {
            thresholds,
            hysteresis,
            on_delay: self.delay(&raw.on_delay, &raw.on_delay_readings),
            off_delay: self.delay(&raw.off_delay, &raw.off_delay_readings),
            latch: raw.latch.unwrap_or(false),
            rate,
            stale_after_ms,
            stale_severity: self.choice(&sev.and_then(|s| s.stale.clone()), Severity::Warning),
        };
        Arc::new(spec)
    }

    pub(super) fn anomaly(
        &mut self,
        raw: &Spanned<RawAnomaly>,
        delivery: Delivery,
        delivery_span: Option<Range<usize>>,
    ) -> AnomalySpec {
        let span = raw.span();
        let raw = raw.get_ref();
        if delivery != Delivery::Summary {
            self.at(
                delivery_span.unwrap_or(span),
                format!(
                    "`[sensor.anomaly]` works on window statistics and needs `{}`",
                    DeliveryMode::Summary.setting()
                ),
                None,
            );
        }
        let d = AnomalySpec::default();
        let mut f = |v: &Option<Spanned<f64>>,
                     name: &str,
                     default: f64,
                     ok: fn(f64) -> bool,
                     what: &str|
         -> f64 {
            match v {
                None => default,
                Some(x) if ok(*x.get_ref()) => *x.get_ref(),
                Some(x) => {
                    self.at(x.span(), format!("`{name}` must be {what}"), None);
                    default
                }
            }
        };
        let alpha = f(
            &raw.alpha,
            "alpha",
            d.alpha,
            |x| x > 0.0 && x <= 1.0,
            "in (0, 1]",
        );
        let z_limit = f(
            &raw.z_limit,
            "z_limit",
            d.z_limit,
            |x| x > 0.0 && x.is_finite(),
            "a positive number",
        );
        let cusum_k = f(
            &raw.cusum_k,
            "cusum_k",
            d.cusum_k,
            |x| x >= 0.0 && x.is_finite(),
            "a number >= 0",
        );
        let cusum_h = f(
            &raw.cusum_h,
            "cusum_h",
            d.cusum_h,
            |x| x > 0.0 && x.is_finite(),
            "a positive number",
        );
        let min_relative_std = f(
            &raw.min_relative_std,
            "min_relative_std",
            d.min_relative_std,
            |x| (0.0..1.0).contains(&x),
            "in [0, 1)",
        );
        let warmup_windows = match &raw.warmup_windows {
            None => d.warmup_windows,
            Some(w) if *w.get_ref() >= 2 => *w.get_ref(),
            Some(w) => {
                self.at(w.span(), "`warmup_windows` must be at least 2", None);
                d.warmup_windows
            }
        };
        AnomalySpec {
            warmup_windows,
            alpha,
            z_limit,
            cusum_k,
            cusum_h,
            min_relative_std,
        }
    }
}

impl SensorRule {
    /// The rule as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(s, "[[sensor]]\nmatch = {:?}", self.pattern);
        if let Some(min) = self.min {
            let _ = writeln!(s, "min = {min:?}");
        }
        if let Some(max) = self.max {
            let _ = writeln!(s, "max = {max:?}");
        }
        let _ = writeln!(
            s,
            "window = {:?}\nstats = {:?}",
            duration_text(self.window),
            self.stats.names()
        );
        if let Some(u) = &self.unit {
            let _ = writeln!(s, "unit = {u:?}");
        }
        let _ = writeln!(s, "delivery = {:?}", self.delivery.name());
        if let Delivery::OnChange {
            deadband,
            deadband_percent,
            max_silence_ms,
        } = self.delivery
        {
            if let Some(v) = deadband {
                let _ = writeln!(s, "deadband = {v:?}");
            }
            if let Some(v) = deadband_percent {
                let _ = writeln!(s, "deadband_percent = {v:?}");
            }
            if let Some(v) = max_silence_ms {
                let _ = writeln!(s, "max_silence = {:?}", ms_text(v));
            }
        }
        if let Some(a) = &self.alarm {
            render_alarm(s, a);
        }
        if let Some(a) = &self.anomaly {
            let _ = writeln!(s, "[sensor.anomaly]\nwarmup_windows = {}\nalpha = {:?}\nz_limit = {:?}\ncusum_k = {:?}\ncusum_h = {:?}\nmin_relative_std = {:?}", a.warmup_windows, a.alpha, a.z_limit, a.cusum_k, a.cusum_h, a.min_relative_std);
        }
        s.push('\n');
    }
}

/// The `[sensor.alarm]` table as `check` prints it.
fn render_alarm(s: &mut String, a: &AlarmSpec) {
    let delay = |d: Delay, name: &str| match d {
        Delay::None => String::new(),
        Delay::Ms(ms) => format!("{name} = {:?}\n", ms_text(ms)),
        Delay::Readings(n) => format!("{name}_readings = {n}\n"),
    };
    let _ = writeln!(s, "[sensor.alarm]");
    for t in &a.thresholds {
        let _ = writeln!(s, "{} = {:?}", t.kind.name(), t.limit);
    }
    let _ = write!(
        s,
        "hysteresis = {:?}\n{}{}latch = {}\n",
        a.hysteresis,
        delay(a.on_delay, "on_delay"),
        delay(a.off_delay, "off_delay"),
        a.latch
    );
    if let Some(r) = &a.rate {
        let direction = if r.both_directions {
            RateDirection::Both
        } else {
            RateDirection::Up
        };
        let _ = writeln!(
            s,
            "rate_of_change = {:?}\nrate_interval = {:?}\nrate_direction = {:?}",
            r.limit_per_min,
            ms_text(r.interval_ms),
            direction.name()
        );
    }
    if let Some(ms) = a.stale_after_ms {
        let _ = writeln!(s, "stale_after = {:?}", ms_text(ms));
    }
    let mut sev: Vec<String> = a
        .thresholds
        .iter()
        .map(|t| format!("{} = {:?}", t.kind.name(), t.severity.name()))
        .collect();
    if let Some(r) = &a.rate {
        sev.push(format!(
            "{} = {:?}",
            AlarmKind::Rate.name(),
            r.severity.name()
        ));
    }
    if a.stale_after_ms.is_some() {
        sev.push(format!(
            "{} = {:?}",
            AlarmKind::Stale.name(),
            a.stale_severity.name()
        ));
    }
    if !sev.is_empty() {
        let _ = writeln!(s, "severity = {{ {} }}", sev.join(", "));
    }
}
