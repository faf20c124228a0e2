//! The `[gateway]` section: who this gateway is and where it keeps state.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::diag::{duration_text, Cx};
use super::raw::RawGateway;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Names this gateway upstream; part of every summary and of the
    /// deduplication key `(gateway, seq)`.
    pub id: String,
    pub state_dir: PathBuf,
    /// How often counters are written to the log.
    pub metrics_interval: Duration,
}

impl GatewayConfig {
    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "[gateway]\nid = {:?}\nstate_dir = {:?}\nmetrics_interval = {:?}\n",
            self.id,
            self.state_dir,
            duration_text(self.metrics_interval)
        );
    }
}

impl Cx<'_> {
    pub(super) fn gateway(&mut self, raw: RawGateway) -> GatewayConfig {
        let id = raw.id.get_ref().trim().to_owned();
        if crate::topic::check_name(&id).is_err() {
            self.at(
                raw.id.span(),
                format!("{id:?} is not a usable gateway id"),
                Some(format!(
                    "use a non-empty name of at most {} bytes without `/`, `+`, `#` or control characters, such as \"press-line-1\"",
                    crate::topic::MAX_NAME_BYTES
                )),
            );
        }
        GatewayConfig {
            id,
            state_dir: raw
                .state_dir
                .map(|s| PathBuf::from(s.into_inner()))
                .unwrap_or_else(|| PathBuf::from("/var/lib/sensor-gateway")),
            metrics_interval: self.duration(&raw.metrics_interval, Duration::from_secs(60)),
        }
    }
}
