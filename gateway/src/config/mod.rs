//! Configuration: a TOML file, read in two stages.
//!
//! Stage one ([`raw`]) deserializes each section on its own with unknown
//! fields rejected; stage two checks values and their relations and builds
//! the typed [`Config`], one file per section (`gateway.rs`, `sources.rs`
//! with `mqtt.rs` and `serial.rs`, `rules.rs` with `stats.rs`,
//! `pipeline.rs`, `upstream.rs` with `batch.rs` and `tls.rs` (TLS and credentials,
//! shared with MQTT sources), `buffer.rs`, `http.rs`, `clock.rs`), each with its type, its
//! validation and how `check` prints it. Both stages collect every mistake
//! they find as a [`Diagnostic`] with a line and column and a hint
//! (`diag.rs`), so an operator fixes a file in one pass rather than one
//! error per restart. This file reads the file and runs the sections in
//! order.

mod batch;
mod buffer;
mod clock;
mod diag;
mod gateway;
mod http;
mod mqtt;
mod pipeline;
mod raw;
mod rules;
mod serial;
mod sources;
mod stats;
mod tls;
mod upstream;

pub use batch::BatchConfig;
pub use buffer::{BufferConfig, Durability, WhenFull};
pub use clock::ClockConfig;
pub use diag::Diagnostic;
pub use gateway::GatewayConfig;
pub use http::HttpConfig;
pub use mqtt::BrokerAddr;
pub use pipeline::PipelineConfig;
pub use rules::{Delivery, SensorRule};
pub use serial::{FlowControl, Parity, SerialSourceConfig};
pub use sources::{MqttSourceConfig, SourceConfig};
pub use stats::StatSet;
pub use tls::{ClientAuth, Credentials, Password, TlsConfig};
pub use upstream::{Protocol, UpstreamConfig, MAX_BROKERS};

use std::fmt::Write;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use diag::{named, render_diagnostics, suggest, Cx, Named};
use raw::{RawBuffer, RawClock, RawGateway, RawHttp, RawPipeline, RawSensorRule, RawUpstream};
use sources::SourceKind;

/// The validated configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub sources: Vec<SourceConfig>,
    pub sensors: Vec<SensorRule>,
    pub pipeline: PipelineConfig,
    pub upstream: UpstreamConfig,
    pub buffer: BufferConfig,
    /// SHA-256 of the file's text, in hex, as `sha256sum` prints it: what
    /// an operator compares to tell which config a gateway runs.
    pub digest: String,
    /// The metrics and health endpoints; `None` (no `[http]`) runs none.
    pub http: Option<HttpConfig>,
    pub clock: ClockConfig,
    /// Settings that work but should change (`file:line:column: message;
    /// hint: ...`), such as a password written in the file: `check` prints
    /// them and the daemon logs them at start.
    pub warnings: Vec<String>,
    /// Files the configuration names that cannot be used now (the
    /// upstream's TLS certificates and key), as `file:line:column: ...`:
    /// `check` and a reload refuse such a file; a starting gateway logs
    /// them, runs and buffers, and its upstream link reads the files again
    /// at every attempt until they can be used.
    pub deferred: Vec<String>,
}

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_diagnostics(path, diagnostics))]
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// One line per mistake (`file:line:column: message; hint: ...`), for
    /// logs whose records are single lines (journald).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![self.to_string()],
            ConfigError::Invalid { path, diagnostics } => {
                diagnostics.iter().map(|d| d.located(path, "; ")).collect()
            }
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Reads and validates the file at `path` for a starting gateway: files
    /// the upstream's TLS names that cannot be used now do not stop it
    /// ([`Config::deferred`]); every other mistake does.
    pub fn load_to_run(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse_as(&text, path, false)
    }

    /// Validates `text`; `path` is used in messages only. A file the
    /// configuration names that cannot be used is a mistake here.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_as(text, path, true)
    }

    fn parse_as(text: &str, path: &Path, strict: bool) -> Result<Config, ConfigError> {
        let mut cx = Cx::new(text);
        let config = cx.build();
        if strict {
            let deferred = std::mem::take(&mut cx.deferred);
            cx.diags.extend(deferred);
        }
        match config {
            Some(mut c) if cx.diags.is_empty() => {
                c.warnings = cx.warnings.iter().map(|d| d.located(path, "; ")).collect();
                c.deferred = cx.deferred.iter().map(|d| d.located(path, "; ")).collect();
                Ok(c)
            }
            _ => {
                cx.diags.sort_by_key(|d| (d.line, d.column));
                cx.diags.dedup();
                Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    diagnostics: cx.diags,
                })
            }
        }
    }

    /// The configuration as the gateway will run it, defaults filled in, in
    /// the file's own syntax.
    pub fn render_effective(&self) -> String {
        let mut s = String::new();
        self.gateway.render(&mut s);
        for source in &self.sources {
            source.render(&mut s);
        }
        for rule in &self.sensors {
            rule.render(&mut s);
        }
        self.pipeline.render(&mut s);
        self.upstream.render(&mut s);
        self.buffer.render(&mut s);
        HttpConfig::render(self.http.as_ref(), &mut s);
        self.clock.render(&mut s);
        s
    }
}

/// SHA-256 of `text` in lowercase hex.
fn digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The top-level sections of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Gateway,
    Source,
    Sensor,
    Pipeline,
    Upstream,
    Buffer,
    Http,
    Clock,
}

named!(Section, "section":
    Gateway => "gateway",
    Source => "source",
    Sensor => "sensor",
    Pipeline => "pipeline",
    Upstream => "upstream",
    Buffer => "buffer",
    Http => "http",
    Clock => "clock",
);

impl<'a> Cx<'a> {
    /// Reads every section, then validates them in the order their
    /// relations need: gateway (its id names default client ids), sources
    /// (their labels feed the upstream's templates), rules (checked
    /// against serial channel units), buffer (its `max_age` bounds the
    /// pipeline's `max_event_age`), pipeline, http, clock, upstream, client ids.
    fn build(&mut self) -> Option<Config> {
        let root = match DeTable::parse(self.text) {
            Ok(r) => r,
            Err(e) => {
                self.toml_error(e, 0..0);
                return None;
            }
        };
        let mut gateway = None;
        let mut rules = Vec::new();
        let mut pipeline = None;
        let mut upstream = None;
        let mut buffer = None;
        let mut http = None;
        let mut clock = None;
        let mut source_items = Vec::new();
        let mut saw_source = false;
        let mut saw_gateway = false;
        let mut saw_upstream = false;
        for (key, value) in root.into_inner() {
            let key_span = key.span();
            let name = key.get_ref().as_ref();
            match Section::from_name(name) {
                Some(Section::Gateway) => {
                    saw_gateway = true;
                    gateway = self.section::<RawGateway>(value);
                }
                Some(Section::Pipeline) => pipeline = self.section::<RawPipeline>(value),
                Some(Section::Buffer) => buffer = self.section::<RawBuffer>(value),
                Some(Section::Http) => http = self.section::<RawHttp>(value),
                Some(Section::Clock) => clock = self.section::<RawClock>(value),
                Some(Section::Upstream) => {
                    saw_upstream = true;
                    upstream = self.section::<RawUpstream>(value);
                }
                Some(Section::Source) => {
                    saw_source = true;
                    // Read after `[gateway]`: default client ids name it.
                    source_items.extend(self.array_of_tables(value, name));
                }
                Some(Section::Sensor) => {
                    for item in self.array_of_tables(value, name) {
                        if let Some(r) = self.section::<RawSensorRule>(item) {
                            rules.push(r);
                        }
                    }
                }
                None => {
                    let known = Section::names();
                    let hint = suggest(name, &known, || {
                        format!("known sections: {}", known.join(", "))
                    });
                    self.at(key_span, format!("unknown section `{name}`"), Some(hint));
                }
            }
        }
        let end = self.text.len()..self.text.len();
        if !saw_source {
            self.at(
                end.clone(),
                "no `[[source]]` is configured, so the gateway would read nothing",
                Some(format!(
                    "add a `[[source]]` with {}",
                    SourceKind::settings()
                )),
            );
        }
        // Check every section that parsed before giving up on a missing one,
        // so that all mistakes are reported together.
        let gateway = gateway.map(|g| self.gateway(g));
        self.gateway_id = gateway.as_ref().map(|g| g.id.clone()).unwrap_or_default();
        let sources: Vec<SourceConfig> = source_items
            .into_iter()
            .filter_map(|item| self.source(item))
            .collect();
        let rules: Vec<SensorRule> = rules.into_iter().filter_map(|r| self.rule(r)).collect();
        self.check_mapped_units(&rules);
        let buffer = self.buffer(buffer);
        let pipeline = self.pipeline(pipeline, buffer.max_age_ms);
        let http = http.and_then(|h| self.http(h));
        let clock = self.clock(clock);
        let Some(gateway) = gateway else {
            if !saw_gateway {
                self.at(
                    0..0,
                    "the `[gateway]` section is missing",
                    Some("add `[gateway]` with `id = \"...\"`".into()),
                );
            }
            return None;
        };
        let Some(upstream) = upstream else {
            if !saw_upstream {
                self.at(
                    end,
                    "the `[upstream]` section is missing",
                    Some("add `[upstream]` with `broker = \"host:port\"`".into()),
                );
            }
            return None;
        };
        let labels = std::mem::take(&mut self.labels);
        let upstream = self.upstream(upstream, &gateway.id, &labels);
        self.check_client_ids();
        self.check_source_names();
        let upstream = upstream?;
        Some(Config {
            gateway,
            sources,
            sensors: rules,
            pipeline,
            upstream,
            buffer,
            http,
            digest: digest(self.text),
            clock,
            warnings: Vec::new(),
            deferred: Vec::new(),
        })
    }

    /// Reports serial channel mappings whose unit differs from the unit of
    /// the rule that governs their sensor.
    fn check_mapped_units(&mut self, rules: &[SensorRule]) {
        for (sensor, unit, span) in std::mem::take(&mut self.mapped_units) {
            let best = SensorRule::best(rules, &sensor).map(|i| &rules[i]);
            if let Some(rule_unit) = best.and_then(|r| r.unit.as_deref()) {
                if rule_unit != unit {
                    self.at(
                        span,
                        format!("sensor `{sensor}` is mapped with unit `{unit}`, but its rule says `{rule_unit}`"),
                        Some("alarm limits and statistics are in the rule's unit: make the two agree".into()),
                    );
                }
            }
        }
    }

    fn array_of_tables(
        &mut self,
        value: Spanned<DeValue<'a>>,
        name: &str,
    ) -> Vec<Spanned<DeValue<'a>>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => items.into_iter().collect(),
            _ => {
                self.at(
                    span,
                    format!("`{name}` must be a list of tables"),
                    Some(format!("write each one under a `[[{name}]]` header")),
                );
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests;
