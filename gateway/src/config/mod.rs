//! Configuration: a TOML file, read in two stages.
//!
//! Stage one ([`raw`]) deserializes each section on its own with unknown
//! fields rejected; stage two (this module) checks values and their relations
//! and builds the typed [`Config`]. Both stages collect every mistake they find
//! as a [`Diagnostic`] with a line and column and a hint, so an operator fixes
//! a file in one pass rather than one error per restart.

mod raw;
mod rules;
mod serial;

pub use rules::{Delivery, STAT_NAMES};

pub use serial::{FlowControl, Parity};

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use std::sync::Arc;

use crate::alarm::AlarmSpec;
use crate::anomaly::AnomalySpec;
use crate::decode::{PayloadFormat, TimestampUnit};
use crate::topic::{OutputTemplate, TopicTemplate};
use raw::*;

/// The validated configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub sources: Vec<SourceConfig>,
    pub sensors: Vec<SensorRule>,
    pub pipeline: PipelineConfig,
    pub upstream: UpstreamConfig,
    pub buffer: BufferConfig,
}

/// When records are written to the durable buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every record is written when produced; fsync every `commit_interval`.
    Always,
    /// Summaries stay in memory while upstream acknowledges them promptly;
    /// they are written when upstream is down, when unacknowledged for
    /// `spill_after`, when the memory budget is exceeded, and at shutdown.
    Outage,
}

/// What happens when the buffer reaches `max_disk_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Delete the oldest segment (summaries first, alarms last).
    DropOldest,
    /// Refuse the new record.
    DropNewest,
    /// Stop taking records: MQTT sources stop reading (backpressure).
    Block,
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub durability: Durability,
    pub commit_interval_ms: i64,
    pub spill_after_ms: i64,
    pub max_disk_bytes: u64,
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub memory_budget_bytes: u64,
    /// Records older than this (by measurement time) are dropped at
    /// delivery; 0 keeps them forever.
    pub max_age_ms: i64,
}

impl BufferConfig {
    /// Minimum `max_disk_bytes`: small devices need small buffers.
    pub const MIN_DISK_BYTES: u64 = 1024 * 1024;
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Names this gateway upstream; part of every summary and of the
    /// deduplication key `(gateway, seq)`.
    pub id: String,
    pub state_dir: PathBuf,
    /// How often counters are written to the log.
    pub metrics_interval: Duration,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Mqtt(MqttSourceConfig),
    Serial(SerialSourceConfig),
}

/// A serial port: the line settings and how its bytes are decoded.
#[derive(Debug, Clone)]
pub struct SerialSourceConfig {
    pub name: String,
    /// The device; a `/dev/serial/by-id/...` link is followed at every open,
    /// so a re-plugged adapter is found again under its stable name.
    pub device: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    pub reopen_backoff_max: Duration,
    pub port: crate::wire::PortSettings,
}

/// A broker address, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    pub name: String,
    pub broker: BrokerAddr,
    pub client_id: String,
    pub template: TopicTemplate,
    pub topics: Vec<String>,
    pub qos: rumqttc::QoS,
    pub keep_alive: Duration,
    pub reconnect_backoff_max: Duration,
    pub credentials: Option<(String, String)>,
    pub payload: PayloadFormat,
}

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
    /// The quantiles of `percentiles`, in order.
    pub const QUANTILES: [(f64, &'static str); 4] =
        [(0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")];

    pub fn any_percentile(&self) -> bool {
        self.percentiles.iter().any(|p| *p)
    }

    /// The names, as a rule lists them.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec!["count"];
        for (on, n) in [
            (self.min, "min"),
            (self.max, "max"),
            (self.mean, "mean"),
            (self.std, "std"),
            (self.rms, "rms"),
            (self.p2p, "p2p"),
            (self.crest, "crest"),
            (self.skewness, "skewness"),
            (self.kurtosis, "kurtosis"),
            (self.percentiles[0], "p50"),
            (self.percentiles[1], "p90"),
            (self.percentiles[2], "p95"),
            (self.percentiles[3], "p99"),
            (self.slope, "slope"),
            (self.first_last, "first_last"),
        ] {
            if on {
                v.push(n);
            }
        }
        v
    }
}

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
    /// go to the rule that comes first in the file.
    pub fn best(rules: &[SensorRule], id: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, r) in rules.iter().enumerate() {
            if r.matcher.is_match(id) {
                let spec = r.specificity();
                if best.is_none_or(|(b, _)| spec > b) {
                    best = Some((spec, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// More literal characters means a more specific pattern.
    pub fn specificity(&self) -> usize {
        self.pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?' | '[' | ']' | '{' | '}'))
            .count()
    }
}

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
}

/// Default `pipeline.max_sensors`: fits the service's 64 MiB memory limit
/// with room to spare (see docs/performance.md for bytes per sensor).
pub const DEFAULT_MAX_SENSORS: usize = 20_000;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub broker: BrokerAddr,
    pub client_id: String,
    pub summary_topic: OutputTemplate,
    /// Where alarm and anomaly events go.
    pub alarm_topic: OutputTemplate,
    /// Where `on_change` and `raw` values go.
    pub value_topic: OutputTemplate,
    /// Subscribed for commands (alarm acknowledgements).
    pub command_topic: String,
    pub qos: rumqttc::QoS,
    pub keep_alive: Duration,
    pub reconnect_backoff_max: Duration,
    /// QoS 1 publishes awaiting PUBACK at once.
    pub inflight: u16,
    pub shutdown_grace: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM CA bundle; the system roots are not used, so it is required.
    pub ca_file: PathBuf,
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
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

fn render_diagnostics(path: &Path, diags: &[Diagnostic]) -> String {
    let mut out = format!(
        "{} has {} mistake{}:",
        path.display(),
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
    for d in diags {
        out.push_str(&format!(
            "\n{}:{}:{}: {}",
            path.display(),
            d.line,
            d.column,
            d.message
        ));
        if let Some(h) = &d.hint {
            out.push_str(&format!("\n    hint: {h}"));
        }
    }
    out
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

    /// Validates `text`; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cx = Cx {
            text,
            diags: Vec::new(),
            mapped_units: Vec::new(),
            gateway_id: String::new(),
            client_ids: Vec::new(),
        };
        let config = cx.build();
        match config {
            Some(c) if cx.diags.is_empty() => Ok(c),
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
        use std::fmt::Write;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let q = |q: rumqttc::QoS| q as u8;
        let mut s = String::new();
        let g = &self.gateway;
        let _ = writeln!(
            s,
            "[gateway]\nid = {:?}\nstate_dir = {:?}\nmetrics_interval = {:?}\n",
            g.id,
            g.state_dir,
            d(g.metrics_interval)
        );
        for src in &self.sources {
            match src {
                SourceConfig::Serial(c) => serial::render(&mut s, c),
                SourceConfig::Mqtt(m) => {
                    let _ = writeln!(
                        s,
                        "[[source]]\nkind = \"mqtt\"\nname = {:?}\nbroker = \"{}\"\nclient_id = {:?}\ntopic_template = {:?}\ntopics = {:?}\nqos = {}\nkeep_alive = {:?}\nreconnect_backoff_max = {:?}",
                        m.name, m.broker, m.client_id, m.template.as_str(), m.topics, q(m.qos), d(m.keep_alive), d(m.reconnect_backoff_max)
                    );
                    match &m.payload {
                        PayloadFormat::Number => {
                            let _ = writeln!(s, "payload = {{ format = \"number\" }}\n");
                        }
                        PayloadFormat::Json {
                            value_field,
                            timestamp_field,
                            timestamp_unit,
                            sequence_field,
                        } => {
                            let _ = writeln!(
                                s,
                                "payload = {{ format = \"json\", value_field = {:?}, timestamp_field = {:?}, timestamp_unit = {:?}, sequence_field = {:?} }}\n",
                                value_field,
                                timestamp_field.as_deref().unwrap_or(""),
                                unit_name(*timestamp_unit),
                                sequence_field.as_deref().unwrap_or("")
                            );
                        }
                    }
                }
            }
        }
        for r in &self.sensors {
            let _ = writeln!(s, "[[sensor]]\nmatch = {:?}", r.pattern);
            if let Some(min) = r.min {
                let _ = writeln!(s, "min = {min:?}");
            }
            if let Some(max) = r.max {
                let _ = writeln!(s, "max = {max:?}");
            }
            let stats = r.stats.names();
            let _ = writeln!(s, "window = {:?}\nstats = {:?}", d(r.window), stats);
            if let Some(u) = &r.unit {
                let _ = writeln!(s, "unit = {u:?}");
            }
            let _ = writeln!(s, "delivery = {:?}", r.delivery.name());
            if let Delivery::OnChange {
                deadband,
                deadband_percent,
                max_silence_ms,
            } = r.delivery
            {
                if let Some(v) = deadband {
                    let _ = writeln!(s, "deadband = {v:?}");
                }
                if let Some(v) = deadband_percent {
                    let _ = writeln!(s, "deadband_percent = {v:?}");
                }
                if let Some(v) = max_silence_ms {
                    let _ = writeln!(s, "max_silence = {:?}", d(Duration::from_millis(v as u64)));
                }
            }
            if let Some(a) = &r.alarm {
                rules::render_alarm(&mut s, a);
            }
            if let Some(a) = &r.anomaly {
                let _ = writeln!(s, "[sensor.anomaly]\nwarmup_windows = {}\nalpha = {:?}\nz_limit = {:?}\ncusum_k = {:?}\ncusum_h = {:?}\nmin_relative_std = {:?}", a.warmup_windows, a.alpha, a.z_limit, a.cusum_k, a.cusum_h, a.min_relative_std);
            }
            s.push('\n');
        }
        let p = &self.pipeline;
        let _ = writeln!(
            s,
            "[pipeline]\nchannel_capacity = {}\ndefault_window = {:?}\nallowed_lateness = {:?}\nmax_sensors = {}\nmax_payload_bytes = {}\nmax_future_skew = {:?}\nmax_event_age = {:?}\n",
            p.channel_capacity, d(p.default_window), d(p.allowed_lateness), p.max_sensors, p.max_payload_bytes, d(p.max_future_skew), d(p.max_event_age)
        );
        if let Some(r) = p.retire_after {
            let _ = writeln!(s, "retire_after = {:?}\n", d(r));
        }
        let u = &self.upstream;
        let _ = writeln!(
            s,
            "[upstream]\nbroker = \"{}\"\nclient_id = {:?}\nsummary_topic = {:?}\nalarm_topic = {:?}\nvalue_topic = {:?}\ncommand_topic = {:?}\nqos = {}\nkeep_alive = {:?}\nreconnect_backoff_max = {:?}\ninflight = {}\nshutdown_grace = {:?}",
            u.broker, u.client_id, u.summary_topic.as_str(), u.alarm_topic.as_str(), u.value_topic.as_str(), u.command_topic, q(u.qos), d(u.keep_alive), d(u.reconnect_backoff_max), u.inflight, d(u.shutdown_grace)
        );
        if let Some(t) = &u.tls {
            let _ = writeln!(s, "tls = {{ ca_file = {:?} }}", t.ca_file);
        }
        let b = &self.buffer;
        let ms = |v: i64| d(Duration::from_millis(v.max(0) as u64));
        let _ = writeln!(
            s,
            "\n[buffer]\ndurability = {:?}\ncommit_interval = {:?}\nspill_after = {:?}\nmax_disk_bytes = {}\nsegment_bytes = {}\nwhen_full = {:?}\nmemory_budget_bytes = {}\nmax_age = {:?}",
            match b.durability { Durability::Always => "always", Durability::Outage => "outage" },
            ms(b.commit_interval_ms),
            ms(b.spill_after_ms),
            b.max_disk_bytes,
            b.segment_bytes,
            match b.when_full { WhenFull::DropOldest => "drop_oldest", WhenFull::DropNewest => "drop_newest", WhenFull::Block => "block" },
            b.memory_budget_bytes,
            if b.max_age_ms == 0 { "0s".to_owned() } else { ms(b.max_age_ms) },
        );
        s
    }

    /// Every label name the sources define, for output templates.
    pub fn label_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for s in &self.sources {
            match s {
                SourceConfig::Mqtt(m) => {
                    for n in m.template.names() {
                        if !names.iter().any(|x| x == n) {
                            names.push(n.to_owned());
                        }
                    }
                }
                SourceConfig::Serial(_) => {}
            }
        }
        names
    }
}

fn unit_name(u: TimestampUnit) -> &'static str {
    match u {
        TimestampUnit::Seconds => "s",
        TimestampUnit::Milliseconds => "ms",
        TimestampUnit::Microseconds => "us",
    }
}

const SECTIONS: &[&str] = &[
    "gateway", "source", "sensor", "pipeline", "upstream", "buffer",
];
const SOURCE_KINDS: &[&str] = &["mqtt", "serial"];

/// The validation context: the text (for line numbers) and what went wrong.
struct Cx<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
    /// Units given by serial channel mappings: (sensor, unit, where), checked
    /// against the rules once those are read.
    mapped_units: Vec<(String, String, Range<usize>)>,
    /// The gateway id, once read (sources' default client ids include it).
    gateway_id: String,
    /// Every MQTT client id with where it was set (or, when defaulted, the
    /// source's table): two connections with one id take over each other's
    /// session at the broker.
    client_ids: Vec<(String, Range<usize>)>,
}

impl<'a> Cx<'a> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    fn toml_error(&mut self, e: toml::de::Error, fallback: Range<usize>) {
        let span = e.span().unwrap_or(fallback);
        let message = e.message().trim().to_owned();
        let hint = if message.starts_with("unknown field") {
            Some(
                "remove the field or fix its spelling; the accepted names are listed above"
                    .to_owned(),
            )
        } else if message.starts_with("missing field") {
            Some("add the field; it has no default".to_owned())
        } else if message.starts_with("invalid type") {
            Some("check the value's type: strings need quotes, durations are strings such as \"10s\"".to_owned())
        } else {
            None
        };
        self.at(span, message, hint);
    }

    fn section<T: for<'de> Deserialize<'de>>(&mut self, value: Spanned<DeValue<'a>>) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml_error(e, span);
                None
            }
        }
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.at(
                        s.span(),
                        format!("`{}` is not a duration: {e}", s.get_ref()),
                        Some(
                            "write a number and a unit, such as \"500ms\", \"10s\" or \"5m\""
                                .into(),
                        ),
                    );
                    default
                }
            },
        }
    }

    fn qos(&mut self, v: &Option<Spanned<u8>>, default: rumqttc::QoS) -> rumqttc::QoS {
        match v.as_ref().map(|q| (*q.get_ref(), q.span())) {
            None => default,
            Some((0, _)) => rumqttc::QoS::AtMostOnce,
            Some((1, _)) => rumqttc::QoS::AtLeastOnce,
            Some((2, _)) => rumqttc::QoS::ExactlyOnce,
            Some((n, span)) => {
                self.at(
                    span,
                    format!("QoS {n} does not exist"),
                    Some("use 0, 1 or 2".into()),
                );
                default
            }
        }
    }

    fn broker(&mut self, v: &Spanned<String>, tls: bool) -> BrokerAddr {
        let text = v.get_ref().trim();
        let stripped = text
            .strip_prefix("mqtts://")
            .or_else(|| text.strip_prefix("mqtt://"))
            .or_else(|| text.strip_prefix("tcp://"))
            .unwrap_or(text);
        let default_port = if tls { 8883 } else { 1883 };
        let parsed = match stripped.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(|p| (host, p)),
            Some(_) => None,
            None if !stripped.is_empty() && !stripped.contains('/') => {
                Some((stripped, default_port))
            }
            None => None,
        };
        match parsed {
            Some((host, port)) => BrokerAddr {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            },
            None => {
                self.at(
                    v.span(),
                    format!("`{text}` is not a broker address"),
                    Some("write host:port, such as \"127.0.0.1:1883\" or \"broker.plant.local:8883\"".into()),
                );
                BrokerAddr {
                    host: String::new(),
                    port: default_port,
                }
            }
        }
    }

    fn positive<T: Copy + PartialOrd + Default + fmt::Display>(
        &mut self,
        v: &Option<Spanned<T>>,
        name: &str,
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(s) if *s.get_ref() > T::default() => *s.get_ref(),
            Some(s) => {
                self.at(s.span(), format!("`{name}` must be greater than 0"), None);
                default
            }
        }
    }

    fn build(&mut self) -> Option<Config> {
        let root = match DeTable::parse(self.text) {
            Ok(r) => r,
            Err(e) => {
                self.toml_error(e, 0..0);
                return None;
            }
        };
        let mut gateway = None;
        let mut sources = Vec::new();
        let mut rules = Vec::new();
        let mut pipeline = None;
        let mut upstream = None;
        let mut buffer = None;
        let mut source_items = Vec::new();
        let mut saw_source = false;
        let mut saw_gateway = false;
        let mut saw_upstream = false;
        for (key, value) in root.into_inner() {
            let key_span = key.span();
            match key.get_ref().as_ref() {
                "gateway" => {
                    saw_gateway = true;
                    gateway = self.section::<RawGateway>(value);
                }
                "pipeline" => pipeline = self.section::<RawPipeline>(value),
                "buffer" => buffer = self.section::<RawBuffer>(value),
                "upstream" => {
                    saw_upstream = true;
                    upstream = self.section::<RawUpstream>(value);
                }
                "source" => {
                    saw_source = true;
                    // Read after `[gateway]`: default client ids name it.
                    source_items.extend(self.array_of_tables(value, "source"));
                }
                "sensor" => {
                    for item in self.array_of_tables(value, "sensor") {
                        if let Some(r) = self.section::<RawSensorRule>(item) {
                            rules.push(r);
                        }
                    }
                }
                other => {
                    let hint = did_you_mean(other, SECTIONS)
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("known sections: {}", SECTIONS.join(", ")));
                    self.at(key_span, format!("unknown section `{other}`"), Some(hint));
                }
            }
        }
        let end = self.text.len()..self.text.len();
        if !saw_source {
            self.at(
                end.clone(),
                "no `[[source]]` is configured, so the gateway would read nothing",
                Some("add a `[[source]]` with `kind = \"mqtt\"` or `kind = \"serial\"`".into()),
            );
        }
        // Check every section that parsed before giving up on a missing one,
        // so that all mistakes are reported together.
        let gateway = gateway.map(|g| self.gateway(g));
        self.gateway_id = gateway.as_ref().map(|g| g.id.clone()).unwrap_or_default();
        for item in source_items {
            if let Some(s) = self.source(item) {
                sources.push(s);
            }
        }
        let rules: Vec<SensorRule> = rules.into_iter().filter_map(|r| self.rule(r)).collect();
        for (sensor, unit, span) in std::mem::take(&mut self.mapped_units) {
            let best = SensorRule::best(&rules, &sensor).map(|i| &rules[i]);
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
        let buffer = self.buffer(buffer);
        let pipeline = self.pipeline(pipeline, buffer.max_age_ms);
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
        let mut config = Config {
            gateway,
            sources,
            sensors: rules,
            pipeline,
            buffer,
            upstream: UpstreamConfig {
                broker: BrokerAddr {
                    host: String::new(),
                    port: 0,
                },
                client_id: String::new(),
                summary_topic: OutputTemplate::parse("x", &[]).ok()?,
                alarm_topic: OutputTemplate::parse("x", &[]).ok()?,
                value_topic: OutputTemplate::parse("x", &[]).ok()?,
                command_topic: String::new(),
                qos: rumqttc::QoS::AtLeastOnce,
                keep_alive: Duration::ZERO,
                reconnect_backoff_max: Duration::ZERO,
                inflight: 1,
                shutdown_grace: Duration::ZERO,
                credentials: None,
                tls: None,
            },
        };
        config.upstream = self.upstream(upstream, &config.gateway.id, &config.label_names())?;
        self.check_client_ids();
        Some(config)
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

    fn source(&mut self, item: Spanned<DeValue<'a>>) -> Option<SourceConfig> {
        let span = item.span();
        let kind = match item.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == "kind")
                .map(|(_, v)| (v.get_ref().as_str().map(str::to_owned), v.span())),
            _ => None,
        };
        match kind {
            Some((Some(k), _)) if k == "mqtt" => {
                let raw = self.section::<RawMqttSource>(item)?;
                Some(SourceConfig::Mqtt(self.mqtt_source(raw)))
            }
            Some((Some(k), _)) if k == "serial" => {
                let raw = self.section::<raw::RawSerialSource>(item)?;
                Some(SourceConfig::Serial(self.serial_source(raw)))
            }
            Some((k, kspan)) => {
                let hint = format!("known kinds: {}", SOURCE_KINDS.join(", "));
                self.at(
                    kspan,
                    format!("unknown source kind `{}`", k.unwrap_or_default()),
                    Some(hint),
                );
                None
            }
            None => {
                self.at(
                    span,
                    "a `[[source]]` has no `kind`",
                    Some("add `kind = \"mqtt\"` or `kind = \"serial\"`".into()),
                );
                None
            }
        }
    }

    fn gateway(&mut self, raw: RawGateway) -> GatewayConfig {
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

    /// Reports client ids used by more than one connection.
    fn check_client_ids(&mut self) {
        let ids = std::mem::take(&mut self.client_ids);
        for (i, (id, span)) in ids.iter().enumerate() {
            if let Some((_, first)) = ids[..i].iter().find(|(other, _)| other == id) {
                let (line, _) = line_col(self.text, first.start);
                self.at(
                    span.clone(),
                    format!("the MQTT client id `{id}` is already used on line {line}"),
                    Some("give each source and the upstream its own `client_id`: a broker disconnects the older of two connections with one id, so they would take over each other's session".into()),
                );
            }
        }
    }

    fn mqtt_source(&mut self, raw: RawMqttSource) -> MqttSourceConfig {
        let template = match TopicTemplate::parse(raw.topic_template.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.at(
                    raw.topic_template.span(),
                    format!("bad topic_template: {e}"),
                    Some("example: \"plant/{line}/{machine}/{sensor}\"".into()),
                );
                None
            }
        };
        let template = template.unwrap_or_else(|| {
            TopicTemplate::parse("{invalid}").expect("a literal valid template")
        });
        let topics = match raw.topics {
            Some(list) => list
                .into_iter()
                .map(|t| {
                    if t.get_ref().is_empty() {
                        self.at(t.span(), "an empty topic filter", None);
                    }
                    t.into_inner()
                })
                .collect(),
            None => vec![template.subscription_filter()],
        };
        let payload = match raw.payload {
            None => PayloadFormat::json_default(),
            Some(p) => match p.format.get_ref().as_str() {
                "number" => PayloadFormat::Number,
                "json" => {
                    let unit = match p
                        .timestamp_unit
                        .as_ref()
                        .map(|u| (u.get_ref().as_str(), u.span()))
                    {
                        None | Some(("ms", _)) => TimestampUnit::Milliseconds,
                        Some(("s", _)) => TimestampUnit::Seconds,
                        Some(("us", _)) => TimestampUnit::Microseconds,
                        Some((other, span)) => {
                            self.at(span, format!("unknown timestamp_unit `{other}`"), Some("use \"s\", \"ms\" or \"us\"; RFC 3339 strings are recognised by themselves".into()));
                            TimestampUnit::Milliseconds
                        }
                    };
                    PayloadFormat::Json {
                        value_field: p.value_field.unwrap_or_else(|| "value".into()),
                        timestamp_field: Some(p.timestamp_field.unwrap_or_else(|| "ts".into()))
                            .filter(|s| !s.is_empty()),
                        timestamp_unit: unit,
                        sequence_field: Some(p.sequence_field.unwrap_or_else(|| "seq".into()))
                            .filter(|s| !s.is_empty()),
                    }
                }
                other => {
                    self.at(
                        p.format.span(),
                        format!("unknown payload format `{other}`"),
                        Some("use \"json\" or \"number\"".into()),
                    );
                    PayloadFormat::json_default()
                }
            },
        };
        let name = raw
            .name
            .map(|n| n.into_inner())
            .unwrap_or_else(|| "mqtt".into());
        let client_id = match raw.client_id {
            Some(c) => {
                self.client_ids.push((c.get_ref().clone(), c.span()));
                c.into_inner()
            }
            None => {
                let id = format!("sensor-gateway-{}-{name}", self.gateway_id);
                self.client_ids.push((id.clone(), raw.broker.span()));
                id
            }
        };
        MqttSourceConfig {
            client_id,
            name,
            broker: self.broker(&raw.broker, false),
            template,
            topics,
            qos: self.qos(&raw.qos, rumqttc::QoS::AtLeastOnce),
            keep_alive: self.duration(&raw.keep_alive, Duration::from_secs(30)),
            reconnect_backoff_max: self
                .duration(&raw.reconnect_backoff_max, Duration::from_secs(30)),
            credentials: credentials(raw.username, raw.password),
            payload,
        }
    }

    fn rule(&mut self, raw: RawSensorRule) -> Option<SensorRule> {
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

    fn pipeline(&mut self, raw: Option<RawPipeline>, buffer_max_age_ms: i64) -> PipelineConfig {
        let raw = raw.unwrap_or(RawPipeline {
            channel_capacity: None,
            default_window: None,
            allowed_lateness: None,
            max_sensors: None,
            max_payload_bytes: None,
            retire_after: None,
            max_future_skew: None,
            max_event_age: None,
        });
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
            if max_event_age.is_zero() {
                self.at(
                    v.span(),
                    "`max_event_age` must be longer than zero",
                    Some(format!(
                        "leave it out to get {}",
                        humantime::format_duration(default_age)
                    )),
                );
                max_event_age = default_age;
            } else if max_event_age > PipelineConfig::MAX_EVENT_AGE_LIMIT {
                self.at(
                    v.span(),
                    "`max_event_age` must be at most 100 years",
                    Some(format!(
                        "leave it out to get {}",
                        humantime::format_duration(default_age)
                    )),
                );
                max_event_age = default_age;
            } else if buffer_max_age_ms > 0 && max_event_age > max_age {
                self.at(
                    v.span(),
                    format!(
                        "`max_event_age` ({}) is longer than buffer.max_age ({}), so readings the gateway accepts could be summarised only to be expired by the buffer",
                        v.get_ref(),
                        humantime::format_duration(max_age)
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
            max_sensors: self.positive(&raw.max_sensors, "max_sensors", DEFAULT_MAX_SENSORS),
            max_payload_bytes: self.positive(&raw.max_payload_bytes, "max_payload_bytes", 4096),
            retire_after: raw
                .retire_after
                .is_some()
                .then(|| self.duration(&raw.retire_after, Duration::from_secs(60))),
        }
    }

    fn upstream(
        &mut self,
        raw: RawUpstream,
        gateway_id: &str,
        labels: &[String],
    ) -> Option<UpstreamConfig> {
        let tls = raw.tls.as_ref().map(|t| {
            let ca = match &t.ca_file {
                Some(ca) => PathBuf::from(ca.get_ref()),
                None => PathBuf::new(),
            };
            if t.ca_file.is_none() {
                self.at(
                    0..0,
                    "`[upstream.tls]` needs `ca_file`",
                    Some(
                        "point it at the PEM file of the CA that signed the broker's certificate"
                            .into(),
                    ),
                );
            }
            let client_auth = match (&t.client_cert_file, &t.client_key_file) {
                (Some(c), Some(k)) => {
                    Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref())))
                }
                (None, None) => None,
                (Some(c), None) => {
                    self.at(
                        c.span(),
                        "`client_cert_file` is set without `client_key_file`",
                        Some("set both or neither".into()),
                    );
                    None
                }
                (None, Some(k)) => {
                    self.at(
                        k.span(),
                        "`client_key_file` is set without `client_cert_file`",
                        Some("set both or neither".into()),
                    );
                    None
                }
            };
            TlsConfig {
                ca_file: ca,
                client_auth,
            }
        });
        let mut topic = |v: &Option<Spanned<String>>, name: &str, default: &str| {
            let (text, span) = v
                .as_ref()
                .map(|t| (t.get_ref().clone(), t.span()))
                .unwrap_or_else(|| (default.to_owned(), raw.broker.span()));
            match OutputTemplate::parse(&text, labels) {
                Ok(t) if t.max_len(gateway_id) > crate::topic::MAX_TOPIC_BYTES => {
                    self.at(
                        span,
                        format!(
                            "bad {name}: a rendered topic could be {} bytes, more than MQTT's {}",
                            t.max_len(gateway_id),
                            crate::topic::MAX_TOPIC_BYTES
                        ),
                        Some("shorten the template's fixed text".into()),
                    );
                    None
                }
                Ok(t) => Some(t),
                Err(e) => {
                    self.at(span, format!("bad {name}: {e}"), None);
                    None
                }
            }
        };
        let summary_topic = topic(
            &raw.summary_topic,
            "summary_topic",
            "gateways/{gateway}/summary/{sensor}",
        );
        let alarm_topic = topic(
            &raw.alarm_topic,
            "alarm_topic",
            "gateways/{gateway}/alarm/{sensor}",
        );
        let value_topic = topic(
            &raw.value_topic,
            "value_topic",
            "gateways/{gateway}/value/{sensor}",
        );
        let command_topic = match &raw.command_topic {
            None => format!("gateways/{gateway_id}/command"),
            Some(t) => {
                let text = t.get_ref().replace("{gateway}", gateway_id);
                if text.is_empty() || text.contains(['+', '#', '{']) {
                    self.at(t.span(), "`command_topic` must be a plain topic (`{gateway}` is the only placeholder)", Some("for example \"gateways/{gateway}/command\"".into()));
                }
                text
            }
        };
        let qos = self.qos(&raw.qos, rumqttc::QoS::AtLeastOnce);
        if let Some(q) = &raw.qos {
            if qos != rumqttc::QoS::AtLeastOnce {
                self.at(q.span(), "upstream QoS must be 1", Some("summaries are delivered at least once: the gateway counts a summary delivered only on the broker's PUBACK".into()));
            }
        }
        Some(UpstreamConfig {
            broker: self.broker(&raw.broker, tls.is_some()),
            client_id: match raw.client_id {
                Some(c) => {
                    self.client_ids.push((c.get_ref().clone(), c.span()));
                    c.into_inner()
                }
                None => format!("sensor-gateway-{gateway_id}"),
            },
            summary_topic: summary_topic?,
            alarm_topic: alarm_topic?,
            value_topic: value_topic?,
            command_topic,
            qos,
            keep_alive: self.duration(&raw.keep_alive, Duration::from_secs(30)),
            reconnect_backoff_max: self
                .duration(&raw.reconnect_backoff_max, Duration::from_secs(30)),
            inflight: self.positive(&raw.inflight, "inflight", 32),
            shutdown_grace: self.duration(&raw.shutdown_grace, Duration::from_secs(5)),
            credentials: credentials(raw.username, raw.password),
            tls,
        })
    }
}

impl Cx<'_> {
    fn buffer(&mut self, raw: Option<RawBuffer>) -> BufferConfig {
        let raw = raw.unwrap_or(RawBuffer {
            durability: None,
            commit_interval: None,
            spill_after: None,
            max_disk_bytes: None,
            segment_bytes: None,
            when_full: None,
            memory_budget_bytes: None,
            max_age: None,
        });
        let durability = match raw
            .durability
            .as_ref()
            .map(|d| (d.get_ref().as_str(), d.span()))
        {
            None | Some(("outage", _)) => Durability::Outage,
            Some(("always", _)) => Durability::Always,
            Some((other, span)) => {
                self.at(
                    span,
                    format!("unknown durability `{other}`"),
                    Some("use \"outage\" (SD-card saver, the default) or \"always\"".into()),
                );
                Durability::Outage
            }
        };
        let when_full = match raw
            .when_full
            .as_ref()
            .map(|d| (d.get_ref().as_str(), d.span()))
        {
            None | Some(("drop_oldest", _)) => WhenFull::DropOldest,
            Some(("drop_newest", _)) => WhenFull::DropNewest,
            Some(("block", _)) => WhenFull::Block,
            Some((other, span)) => {
                self.at(
                    span,
                    format!("unknown when_full `{other}`"),
                    Some("use \"drop_oldest\", \"drop_newest\" or \"block\"".into()),
                );
                WhenFull::DropOldest
            }
        };
        let max_disk_bytes = match &raw.max_disk_bytes {
            None => 256 * 1024 * 1024,
            Some(v) if *v.get_ref() < BufferConfig::MIN_DISK_BYTES => {
                self.at(
                    v.span(),
                    format!(
                        "`max_disk_bytes` must be at least {} (1 MiB)",
                        BufferConfig::MIN_DISK_BYTES
                    ),
                    None,
                );
                BufferConfig::MIN_DISK_BYTES
            }
            Some(v) => *v.get_ref(),
        };
        // Recovery reads one segment at a time, so the segment size is the
        // peak memory a backlog adds at start-up: keep it at most 1 MiB.
        let segment_default = (max_disk_bytes / 16).clamp(64 * 1024, 1024 * 1024);
        let segment_bytes = match &raw.segment_bytes {
            None => segment_default,
            Some(v) if *v.get_ref() < 4096 || *v.get_ref() > max_disk_bytes / 4 => {
                self.at(
                    v.span(),
                    "`segment_bytes` must be at least 4096 and at most a quarter of max_disk_bytes",
                    Some("leave it out to get max_disk_bytes / 16".into()),
                );
                segment_default
            }
            Some(v) => *v.get_ref(),
        };
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        BufferConfig {
            durability,
            commit_interval_ms: ms(self.duration(&raw.commit_interval, Duration::from_secs(1)))
                .max(1),
            spill_after_ms: ms(self.duration(&raw.spill_after, Duration::from_secs(2))),
            max_disk_bytes,
            segment_bytes,
            when_full,
            memory_budget_bytes: self.positive(
                &raw.memory_budget_bytes,
                "memory_budget_bytes",
                1024 * 1024,
            ),
            max_age_ms: ms(self.duration(&raw.max_age, Duration::from_secs(30 * 24 * 3600))),
        }
    }
}

fn credentials(user: Option<String>, password: Option<String>) -> Option<(String, String)> {
    user.map(|u| (u, password.unwrap_or_default()))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0)
        + 1;
    (line, col)
}

/// The closest known name within two edits, for "did you mean".
fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests;
