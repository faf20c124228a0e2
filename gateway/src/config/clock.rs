//! The `[clock]` section: when the gateway's wall clock is trusted.

use std::fmt::Write;
use std::time::UNIX_EPOCH;

use super::diag::Cx;
use super::raw::RawClock;
use crate::clock::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockConfig {
    /// Trust the wall clock only once the kernel reports it synchronised
    /// (NTP); until then readings wait, and are stamped when it is.
    pub require_sync: bool,
    /// Without synchronisation, a wall time before this is not trusted
    /// (ms since the Unix epoch); by default the build time.
    pub not_before_ms: i64,
}

impl ClockConfig {
    /// The time this binary was built (`SOURCE_DATE_EPOCH` when the build
    /// set it), ms since the Unix epoch: the default `not_before`.
    pub fn build_time_ms() -> i64 {
        env!("SENSOR_GATEWAY_BUILD_TIME")
            .parse::<i64>()
            .map_or(0, |s| s.saturating_mul(1000))
    }

    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n[clock]\nrequire_sync = {}\nnot_before = {:?}",
            self.require_sync,
            rfc3339(self.not_before_ms),
        );
    }
}

impl Cx<'_> {
    pub(super) fn clock(&mut self, raw: Option<RawClock>) -> ClockConfig {
        let raw = raw.unwrap_or_default();
        let build = ClockConfig::build_time_ms();
        let not_before_ms = match &raw.not_before {
            None => build,
            Some(v) => match humantime::parse_rfc3339_weak(v.get_ref()) {
                Ok(t) => t
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                Err(e) => {
                    self.at(
                        v.span(),
                        format!("`{}` is not a date and time: {e}", v.get_ref()),
                        Some(format!(
                            "write an RFC 3339 time such as \"2026-01-01T00:00:00Z\", or leave it out to use the build time ({})",
                            rfc3339(build)
                        )),
                    );
                    build
                }
            },
        };
        ClockConfig {
            require_sync: raw.require_sync.unwrap_or(false),
            not_before_ms,
        }
    }
}
