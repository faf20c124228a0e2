//! The `[pipeline]` section: the channel to the core, windows, lateness,
//! and the bounds on sensors, payloads and event times.

use std::fmt::Write;
use std::time::Duration;

use super::diag::{duration_text, Cx};
use super::raw::RawPipeline;

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Messages held between the sources and the processing core.
    pub channel_capacity: usize,
    /// The window length of sensors that no rule matches.
    pub default_window: Duration,
    /// How long after a window's end a reading is still merged into it.
    pub allowed_lateness: Duration,
    /// Distinct sensors kept at once; beyond it new ones are rejected
    /// (`sensor_limit`) until silent ones are retired.
    pub max_sensors: usize,
    pub max_payload_bytes: usize,
    /// Silence after which a sensor with nothing pending is forgotten;
    /// `None`: four of its windows plus the allowed lateness, at least 60 s.
    pub retire_after: Option<Duration>,
    /// A reading stamped further ahead of the gateway clock than this is
    /// rejected (`future`), so a wrong node clock cannot move a watermark.
    pub max_future_skew: Duration,
    /// A reading stamped further behind the gateway clock than this is
    /// rejected (`too_old`); never more than `buffer.max_age`, so an
    /// accepted reading's summary is not silently expired by the buffer.
    pub max_event_age: Duration,
}

impl PipelineConfig {
    /// Default of `max_sensors`: fits the service's 64 MiB memory limit
    /// with room to spare (see docs/performance.md for bytes per sensor).
    pub const DEFAULT_MAX_SENSORS: usize = 20_000;
    /// Default of `max_future_skew`.
    pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);
    /// Upper bounds of the two settings, so that event times stay far from
    /// the ends of `i64` milliseconds.
    pub const MAX_FUTURE_SKEW_LIMIT: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_EVENT_AGE_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    /// Default of `max_event_age` when `buffer.max_age` does not bound it.
    pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The default `max_event_age` for a buffer `max_age` (0: none): seven
    /// days, or half of `max_age` when that is shorter, so that a summary
    /// of an accepted reading still has at least half of `max_age` of an
    /// upstream outage to be delivered before the buffer expires it.
    pub fn default_max_event_age(buffer_max_age_ms: i64) -> Duration {
        if buffer_max_age_ms <= 0 {
            return Self::DEFAULT_MAX_EVENT_AGE;
        }
        Self::DEFAULT_MAX_EVENT_AGE.min(Duration::from_millis(buffer_max_age_ms as u64 / 2))
    }

    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let d = duration_text;
        let _ = writeln!(
            s,
            "[pipeline]\nchannel_capacity = {}\ndefault_window = {:?}\nallowed_lateness = {:?}\nmax_sensors = {}\nmax_payload_bytes = {}\nmax_future_skew = {:?}\nmax_event_age = {:?}\n",
            self.channel_capacity, d(self.default_window), d(self.allowed_lateness), self.max_sensors, self.max_payload_bytes, d(self.max_future_skew), d(self.max_event_age)
        );
        if let Some(r) = self.retire_after {
            let _ = writeln!(s, "retire_after = {:?}\n", d(r));
        }
    }
}

impl Cx<'_> {
    pub(super) fn pipeline(
        &mut self,
        raw: Option<RawPipeline>,
        buffer_max_age_ms: i64,
    ) -> PipelineConfig {
        let raw = raw.unwrap_or_default();
        let mut max_future_skew = self.duration(
            &raw.max_future_skew,
            PipelineConfig::DEFAULT_MAX_FUTURE_SKEW,
        );
        if let Some(v) = &raw.max_future_skew {
            if max_future_skew > PipelineConfig::MAX_FUTURE_SKEW_LIMIT {
                self.at(
                    v.span(),
                    "`max_future_skew` must be at most one day: a clock further ahead is wrong, and its readings would hold windows open",
                    Some("a few minutes covers unsynchronised clocks; leave it out to get 5m".into()),
                );
                max_future_skew = PipelineConfig::DEFAULT_MAX_FUTURE_SKEW;
            }
        }
        let default_age = PipelineConfig::default_max_event_age(buffer_max_age_ms);
        let mut max_event_age = self.duration(&raw.max_event_age, default_age);
        if let Some(v) = &raw.max_event_age {
            let max_age = Duration::from_millis(buffer_max_age_ms.max(0) as u64);
            let leave_out = || {
                Some(format!(
                    "leave it out to get {}",
                    duration_text(default_age)
                ))
            };
            if max_event_age.is_zero() {
                self.at(
                    v.span(),
                    "`max_event_age` must be longer than zero",
                    leave_out(),
                );
                max_event_age = default_age;
            } else if max_event_age > PipelineConfig::MAX_EVENT_AGE_LIMIT {
                self.at(
                    v.span(),
                    "`max_event_age` must be at most 100 years",
                    leave_out(),
                );
                max_event_age = default_age;
            } else if buffer_max_age_ms > 0 && max_event_age > max_age {
                self.at(
                    v.span(),
                    format!(
                        "`max_event_age` ({}) is longer than buffer.max_age ({}), so readings the gateway accepts could be summarised only to be expired by the buffer",
                        v.get_ref(),
                        duration_text(max_age)
                    ),
                    Some("make it at most buffer.max_age (half of it leaves time for an outage), or raise buffer.max_age".into()),
                );
                max_event_age = default_age;
            }
        }
        PipelineConfig {
            max_future_skew,
            max_event_age,
            channel_capacity: self.positive(&raw.channel_capacity, "channel_capacity", 1024),
            default_window: self.duration(&raw.default_window, Duration::from_secs(10)),
            allowed_lateness: self.duration(&raw.allowed_lateness, Duration::from_secs(2)),
            max_sensors: self.positive(
                &raw.max_sensors,
                "max_sensors",
                PipelineConfig::DEFAULT_MAX_SENSORS,
            ),
            max_payload_bytes: self.positive(&raw.max_payload_bytes, "max_payload_bytes", 4096),
            retire_after: raw
                .retire_after
                .is_some()
                .then(|| self.duration(&raw.retire_after, Duration::from_secs(60))),
        }
    }
}
