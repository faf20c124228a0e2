//! Reloading the configuration on SIGHUP without a restart.
//!
//! [`ReloadPlan::between`] compares the running configuration with the file
//! (pure: no I/O); [`run`] is the task that, at each signal, reads the file,
//! refuses an invalid one (every mistake logged with its file:line, nothing
//! changed), logs the plan of a valid one and applies it: the core takes its
//! new settings (sensors whose policy is unchanged keep their windows, alarm
//! states and baselines), changed sources are restarted, and a changed
//! upstream connection is reconnected by the sink, which keeps its buffer.
//! Settings that need a restart are named and left as they were.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig};
use crate::metrics::Metrics;
use crate::processor::{CoreSettings, SensorPlan};
use crate::runtime::Sources;
use crate::upstream::{self, SinkSettings, StatusIdentity};

/// Where a reload comes from: the file to read again, and the signal that
/// asks for it (`main` notifies it on SIGHUP).
#[derive(Debug, Clone)]
pub struct ReloadTrigger {
    pub config_path: PathBuf,
    pub signal: Arc<Notify>,
}

/// The core's part of a reload: its new settings, and where it answers
/// with what it did to its sensors.
pub type CoreReload = (CoreSettings, oneshot::Sender<SensorPlan>);

/// Settings that are read once at start-up: a change is reported and left
/// as it was until the next restart.
const NEEDS_RESTART: &[&str] = &[
    "gateway.id",
    "gateway.state_dir",
    "gateway.metrics_interval",
    "pipeline.channel_capacity",
    "pipeline.max_sensors",
    "[buffer]",
    "[http]",
    "[clock]",
];

/// What differs between the running configuration and a new one, and the
/// configuration to run.
#[derive(Debug)]
pub struct ReloadPlan {
    /// Indexes (in the file's order) of sources only the new file has.
    pub sources_added: Vec<usize>,
    /// Indexes of sources only the running configuration has.
    pub sources_removed: Vec<usize>,
    /// Indexes of sources whose settings changed: restarted.
    pub sources_changed: Vec<usize>,
    /// `[[sensor]]` patterns added, removed, or with changed settings.
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    /// The upstream connection's settings changed: the link reconnects.
    pub upstream_changed: bool,
    /// Settings of the core changed (rules, windows, bounds, topics).
    pub core_changed: bool,
    /// Changed settings that need a restart (see [`NEEDS_RESTART`]).
    pub needs_restart: Vec<&'static str>,
    /// The new configuration, with the settings that need a restart as
    /// they were.
    pub config: Config,
}

impl ReloadPlan {
    pub fn between(old: &Config, new: Config) -> ReloadPlan {
        let mut config = new;
        let mut needs_restart = Vec::new();
        let (g, p) = (&config.gateway, &config.pipeline);
        let kept = [
            differs(&old.gateway.id, &g.id),
            differs(&old.gateway.state_dir, &g.state_dir),
            differs(&old.gateway.metrics_interval, &g.metrics_interval),
            differs(&old.pipeline.channel_capacity, &p.channel_capacity),
            differs(&old.pipeline.max_sensors, &p.max_sensors),
            differs(&old.buffer, &config.buffer),
            differs(&old.http, &config.http),
            differs(&old.clock, &config.clock),
        ];
        for (name, changed) in NEEDS_RESTART.iter().zip(kept) {
            if changed {
                needs_restart.push(*name);
            }
        }
        config.gateway = old.gateway.clone();
        config.buffer = old.buffer.clone();
        config.http = old.http.clone();
        config.clock = old.clock.clone();
        config.pipeline.channel_capacity = old.pipeline.channel_capacity;
        config.pipeline.max_sensors = old.pipeline.max_sensors;

        // MQTT sources take the payload bound too.
        let payload_bound_changed =
            old.pipeline.max_payload_bytes != config.pipeline.max_payload_bytes;
        let (n_old, n_new) = (old.sources.len(), config.sources.len());
        let sources_changed = (0..n_old.min(n_new))
            .filter(|&i| {
                let (a, b) = (&old.sources[i], &config.sources[i]);
                differs(a, b)
                    || credentials(a) != credentials(b)
                    || (payload_bound_changed && matches!(b, SourceConfig::Mqtt(_)))
            })
            .collect();

        let mut rules_changed = Vec::new();
        let mut rules_added = Vec::new();
        for rule in &config.sensors {
            match old.sensors.iter().find(|r| r.pattern == rule.pattern) {
                Some(o) if differs(o, rule) => rules_changed.push(rule.pattern.clone()),
                Some(_) => {}
                None => rules_added.push(rule.pattern.clone()),
            }
        }
        let rules_removed = old
            .sensors
            .iter()
            .filter(|o| !config.sensors.iter().any(|r| r.pattern == o.pattern))
            .map(|o| o.pattern.clone())
            .collect();
        let core_changed = differs(
            &CoreSettings::from_config(old),
            &CoreSettings::from_config(&config),
        );
        ReloadPlan {
            sources_added: (n_old..n_new).collect(),
            sources_removed: (n_new..n_old).collect(),
            sources_changed,
            rules_added,
            rules_removed,
            rules_changed,
            upstream_changed: link_changed(old, &config),
            core_changed,
            needs_restart,
            config,
        }
    }

    /// Whether the new file changes nothing that a reload applies.
    pub fn is_empty(&self) -> bool {
        self.sources_added.is_empty()
            && self.sources_removed.is_empty()
            && self.sources_changed.is_empty()
            && !self.upstream_changed
            && !self.core_changed
    }

    /// Logs the plan, before it is applied.
    pub fn log(&self) {
        let names = |idx: &[usize]| -> Vec<String> {
            idx.iter()
                .map(|&i| match self.config.sources.get(i) {
                    Some(s) => format!("#{} {}", i + 1, source_name(s)),
                    None => format!("#{}", i + 1),
                })
                .collect()
        };
        tracing::info!(
            sources_added = ?names(&self.sources_added),
            sources_removed = ?self.sources_removed.iter().map(|i| format!("#{}", i + 1)).collect::<Vec<_>>(),
            sources_changed = ?names(&self.sources_changed),
            rules_added = ?self.rules_added,
            rules_removed = ?self.rules_removed,
            rules_changed = ?self.rules_changed,
            upstream_changed = self.upstream_changed,
            core_changed = self.core_changed,
            "Reload plan: changed sources restart, a changed upstream reconnects (the buffer stays), sensors whose rule changed flush their windows, the others keep them."
        );
        if !self.needs_restart.is_empty() {
            tracing::warn!(
                settings = ?self.needs_restart,
                "These settings changed but take effect only at a restart; they stay as they were until then."
            );
        }
    }
}

/// Whether two values of the configuration differ. Its types hold glob
/// matchers, templates and TLS settings that have no `PartialEq`; their
/// `Debug` text shows every field but passwords (which it hides, so
/// credentials are compared on their own), so it is what is compared.
fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// Whether the upstream connection's settings changed (the output topics
/// are the core's, applied without reconnecting).
fn link_changed(old: &Config, new: &Config) -> bool {
    let link = |c: &Config| {
        let u = &c.upstream;
        format!(
            "{:?}",
            (
                (&u.brokers, u.protocol),
                &u.client_id,
                &u.command_topic,
                u.qos,
                u.keep_alive,
                u.reconnect_backoff_max,
                u.inflight,
                u.shutdown_grace,
                &u.credentials,
                &u.tls,
                &u.status_topic,
                u.status_interval,
            )
        )
    };
    link(old) != link(new) || old.upstream.credentials != new.upstream.credentials
}

/// An MQTT source's credentials (the password, which `Debug` hides).
fn credentials(s: &SourceConfig) -> Option<&crate::config::Credentials> {
    match s {
        SourceConfig::Mqtt(m) => m.credentials.as_deref(),
        SourceConfig::Serial(_) => None,
    }
}

fn source_name(s: &SourceConfig) -> &str {
    match s {
        SourceConfig::Mqtt(m) => &m.name,
        SourceConfig::Serial(s) => &s.name,
    }
}

/// The longest a restarted source's old task is waited for before its new
/// one starts (it disconnects from its broker in order).
const SOURCE_STOP_WAIT: Duration = Duration::from_secs(10);

/// The reload task and what it works on.
pub(crate) struct Reloader {
    pub trigger: ReloadTrigger,
    /// The configuration running now.
    pub running: Config,
    /// When the gateway started (the status topic says so after a
    /// reconnect too).
    pub started_ms: i64,
    pub sources: Sources,
    pub core: mpsc::Sender<CoreReload>,
    pub relink: mpsc::Sender<SinkSettings>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Waits for the trigger and applies each reload; ends at shutdown
    /// (dropping the sources' sender, so the core sees its input close once
    /// the sources have stopped).
    /// The client certificates' expiry is reported at start, after each
    /// reload and once a day in between.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut expiry = tokio::time::interval(crate::mqtt::tls::EXPIRY_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = expiry.tick() => {
                    self.report_cert_expiry();
                    continue;
                }
                _ = self.trigger.signal.notified() => {}
            }
            crate::supervisor::reloading();
            let applied = self.reload().await;
            if applied {
                self.metrics.reloads_applied.inc();
            } else {
                self.metrics.reloads_rejected.inc();
            }
            crate::supervisor::reloaded(applied, &self.metrics);
            self.report_cert_expiry();
        }
    }

    /// Sets `gateway_tls_client_cert_expiry_seconds` from the upstream's
    /// client certificate and warns of every client certificate (upstream
    /// and sources) with fewer than 30 days left.
    fn report_cert_expiry(&self) {
        let now_s = crate::now_ms() / 1000;
        let gauge = &self.metrics.tls_client_cert_expiry_seconds;
        match &self.running.upstream.tls {
            Some(tls) => crate::mqtt::tls::report_cert_expiry(tls, "upstream", now_s, Some(gauge)),
            None => gauge.set(0),
        }
        for s in &self.running.sources {
            if let SourceConfig::Mqtt(m) = s {
                if let Some(tls) = &m.tls {
                    crate::mqtt::tls::report_cert_expiry(tls, &m.name, now_s, None);
                }
            }
        }
    }

    /// One reload; whether it was applied.
    async fn reload(&mut self) -> bool {
        let path = self.trigger.config_path.clone();
        tracing::info!(config = %path.display(), "Reloading the configuration.");
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let new = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // One log record per mistake, each with its file:line.
                let lines = e.lines();
                for line in &lines {
                    tracing::error!("{line}");
                }
                tracing::error!(config = %self.trigger.config_path.display(), mistakes = lines.len(), "Reload refused: the configuration cannot be read or has mistakes (above); the gateway keeps running with the configuration it had. Fix them and reload again.");
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "Reload refused: reading the configuration failed; the gateway keeps running with the configuration it had.");
                return false;
            }
        };
        let plan = ReloadPlan::between(&self.running, new);
        // Everything that can fail is prepared before anything is applied.
        let link = if plan.upstream_changed {
            match upstream::link_plan(&plan.config.upstream) {
                Ok(link_plan) => Some(SinkSettings {
                    plan: link_plan,
                    status: StatusIdentity::new(&plan.config, self.started_ms),
                }),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "Reload refused: the new upstream settings cannot be used; the gateway keeps running with the configuration it had.");
                    return false;
                }
            }
        } else {
            None
        };
        plan.log();
        // What the gateway reports of its configuration follows the file
        // (`gateway_config_info`, the status topic).
        self.metrics.set_config_sha256(&plan.config.digest);
        if plan.is_empty() {
            tracing::info!("Reload applied: nothing a reload changes was changed.");
            self.running = plan.config;
            return true;
        }
        if plan.core_changed {
            let (tx, rx) = oneshot::channel();
            let settings = CoreSettings::from_config(&plan.config);
            if self.core.send((settings, tx)).await.is_err() {
                return false;
            }
            let Ok(p) = rx.await else {
                return false;
            };
            tracing::info!(
                kept = p.kept,
                changed = p.changed,
                forgotten = p.forgotten,
                alarms_dropped = p.alarms_dropped,
                records_flushed = p.records_flushed,
                sensors = ?p.listed,
                "Reload applied to the sensors: unchanged ones kept their windows, alarm states and baselines; changed ones flushed their windows first; ones no rule matches any more were flushed and forgotten."
            );
        }
        let restart: Vec<usize> = plan
            .sources_removed
            .iter()
            .chain(&plan.sources_changed)
            .copied()
            .collect();
        self.sources.stop(&restart, SOURCE_STOP_WAIT).await;
        let names: Vec<&str> = plan.config.sources.iter().map(|s| s.name()).collect();
        self.metrics.keep_sources(&names);
        for i in plan.sources_changed.iter().chain(&plan.sources_added) {
            self.sources.start(&plan.config, *i);
        }
        if let Some(link) = link {
            if self.relink.send(link).await.is_err() {
                return false;
            }
        }
        self.running = plan.config;
        tracing::info!("Reload applied.");
        true
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(window: &str, upstream_port: u16, state_dir: &str, sources: &str) -> Config {
        let text = format!(
            r#"
[gateway]
id = "gw"
state_dir = "{state_dir}"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{{line}}/{{machine}}/{{sensor}}"
{sources}
[[sensor]]
match = "*/temp"
window = "10s"

[[sensor]]
match = "*/pressure"
window = "{window}"

[upstream]
broker = "127.0.0.1:{upstream_port}"
"#
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    const SECOND_SOURCE: &str = "\n[[source]]\nkind = \"mqtt\"\nname = \"other\"\nbroker = \"127.0.0.1:1885\"\ntopic_template = \"other/{sensor}\"\n";

    #[test]
    fn the_same_file_again_changes_nothing() {
        let old = config("10s", 1884, "/var/lib/a", "");
        let plan = ReloadPlan::between(&old, config("10s", 1884, "/var/lib/a", ""));
        assert!(plan.is_empty());
        assert!(plan.needs_restart.is_empty());
    }

    #[test]
    fn the_plan_names_changed_rules_sources_and_upstream_and_keeps_restart_only_settings() {
        let old = config("10s", 1884, "/var/lib/a", "");
        let plan = ReloadPlan::between(&old, config("5s", 1886, "/var/lib/b", SECOND_SOURCE));
        assert_eq!(plan.rules_changed, ["*/pressure"]);
        assert!(plan.rules_added.is_empty() && plan.rules_removed.is_empty());
        assert_eq!(plan.sources_added, [1]);
        assert!(plan.sources_changed.is_empty() && plan.sources_removed.is_empty());
        assert!(plan.upstream_changed);
        assert!(plan.core_changed);
        assert_eq!(plan.needs_restart, ["gateway.state_dir"]);
        assert_eq!(plan.config.gateway.state_dir, Path::new("/var/lib/a"));

        let back = ReloadPlan::between(&plan.config, old);
        assert_eq!(back.sources_removed, [1]);
        assert!(back.needs_restart.is_empty());
    }

    #[test]
    fn a_changed_http_or_clock_section_is_named_as_needing_a_restart_and_kept() {
        let old = config("10s", 1884, "/var/lib/a", "");
        let text = |extra: &str| {
            let base = "[gateway]\nid = \"gw\"\nstate_dir = \"/var/lib/a\"\n\n[[source]]\nkind = \"mqtt\"\nbroker = \"127.0.0.1:1883\"\ntopic_template = \"plant/{line}/{machine}/{sensor}\"\n\n[[sensor]]\nmatch = \"*/temp\"\nwindow = \"10s\"\n\n[[sensor]]\nmatch = \"*/pressure\"\nwindow = \"10s\"\n\n[upstream]\nbroker = \"127.0.0.1:1884\"\n";
            Config::parse(&format!("{base}{extra}"), Path::new("t.toml")).unwrap()
        };
        let plan = ReloadPlan::between(
            &old,
            text("\n[http]\nlisten = \"127.0.0.1:9200\"\n\n[clock]\nrequire_sync = true\n"),
        );
        assert_eq!(plan.needs_restart, ["[http]", "[clock]"]);
        assert_eq!(plan.config.http, old.http);
        assert_eq!(plan.config.clock, old.clock);
    }
}
