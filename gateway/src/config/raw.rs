//! Stage one of configuration: the TOML file as written, field by field.
//!
//! Every struct rejects unknown fields, so a typo is an error with a line
//! number rather than a silently ignored setting. Values that need checking
//! against each other are kept `Spanned` so that stage two can point at them.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: Spanned<String>,
    pub state_dir: Option<Spanned<String>>,
    pub metrics_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSource {
    /// Always `"mqtt"` here; the loader reads it first to choose this struct.
    #[allow(dead_code)]
    pub kind: String,
    pub name: Option<Spanned<String>>,
    pub broker: Spanned<String>,
    pub client_id: Option<Spanned<String>>,
    pub topic_template: Spanned<String>,
    pub topics: Option<Vec<Spanned<String>>>,
    pub qos: Option<Spanned<u8>>,
    pub keep_alive: Option<Spanned<String>>,
    pub reconnect_backoff_max: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub payload: Option<RawPayload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayload {
    pub format: Spanned<String>,
    pub value_field: Option<String>,
    pub timestamp_field: Option<String>,
    pub timestamp_unit: Option<Spanned<String>>,
    pub sequence_field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSensorRule {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub window: Option<Spanned<String>>,
    pub stats: Option<Spanned<Vec<String>>>,
    pub unit: Option<String>,
    pub delivery: Option<Spanned<String>>,
    pub deadband: Option<Spanned<f64>>,
    pub deadband_percent: Option<Spanned<f64>>,
    pub max_silence: Option<Spanned<String>>,
    pub alarm: Option<Spanned<RawAlarm>>,
    pub anomaly: Option<Spanned<RawAnomaly>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlarm {
    pub low_low: Option<Spanned<f64>>,
    pub low: Option<Spanned<f64>>,
    pub high: Option<Spanned<f64>>,
    pub high_high: Option<Spanned<f64>>,
    pub hysteresis: Option<Spanned<f64>>,
    pub on_delay: Option<Spanned<String>>,
    pub on_delay_readings: Option<Spanned<u32>>,
    pub off_delay: Option<Spanned<String>>,
    pub off_delay_readings: Option<Spanned<u32>>,
    pub latch: Option<bool>,
    pub severity: Option<RawSeverities>,
    pub rate_of_change: Option<Spanned<f64>>,
    pub rate_interval: Option<Spanned<String>>,
    pub rate_direction: Option<Spanned<String>>,
    pub stale_after: Option<Spanned<String>>,
    /// The unit the limits are written in; must match the rule's.
    pub unit: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeverities {
    pub low_low: Option<Spanned<String>>,
    pub low: Option<Spanned<String>>,
    pub high: Option<Spanned<String>>,
    pub high_high: Option<Spanned<String>>,
    pub rate_of_change: Option<Spanned<String>>,
    pub stale: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    pub warmup_windows: Option<Spanned<u32>>,
    pub alpha: Option<Spanned<f64>>,
    pub z_limit: Option<Spanned<f64>>,
    pub cusum_k: Option<Spanned<f64>>,
    pub cusum_h: Option<Spanned<f64>>,
    pub min_relative_std: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub channel_capacity: Option<Spanned<usize>>,
    pub default_window: Option<Spanned<String>>,
    pub allowed_lateness: Option<Spanned<String>>,
    pub max_sensors: Option<Spanned<usize>>,
    pub max_payload_bytes: Option<Spanned<usize>>,
    pub retire_after: Option<Spanned<String>>,
    pub max_future_skew: Option<Spanned<String>>,
    pub max_event_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub broker: Option<Spanned<String>>,
    pub brokers: Option<Spanned<Vec<Spanned<String>>>>,
    pub protocol: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub summary_topic: Option<Spanned<String>>,
    pub alarm_topic: Option<Spanned<String>>,
    pub value_topic: Option<Spanned<String>>,
    pub command_topic: Option<Spanned<String>>,
    pub status_topic: Option<Spanned<String>>,
    pub status_interval: Option<Spanned<String>>,
    pub qos: Option<Spanned<u8>>,
    pub keep_alive: Option<Spanned<String>>,
    pub reconnect_backoff_max: Option<Spanned<String>>,
    pub inflight: Option<Spanned<u16>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub batch: Option<RawBatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub max_records: Option<Spanned<usize>>,
    pub max_bytes: Option<Spanned<usize>>,
    pub max_delay: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub compression: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
}

/// `[upstream.tls]`, or a source's `tls` table. The names of earlier
/// releases (`client_cert_file`, `client_key_file`) are still read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<Spanned<String>>,
    #[serde(alias = "client_cert_file")]
    pub cert_file: Option<Spanned<String>>,
    #[serde(alias = "client_key_file")]
    pub key_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<Spanned<String>>,
    pub allow_non_loopback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub durability: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<String>>,
    pub spill_after: Option<Spanned<String>>,
    pub max_disk_bytes: Option<Spanned<u64>>,
    pub segment_bytes: Option<Spanned<u64>>,
    pub when_full: Option<Spanned<String>>,
    pub memory_budget_bytes: Option<Spanned<u64>>,
    pub max_age: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialSource {
    /// Always `"serial"` here; the loader reads it first to choose this struct.
    #[allow(dead_code)]
    pub kind: String,
    pub name: Option<Spanned<String>>,
    pub device: Spanned<String>,
    pub baud: Option<Spanned<u32>>,
    pub data_bits: Option<Spanned<u8>>,
    pub parity: Option<Spanned<String>>,
    pub stop_bits: Option<Spanned<u8>>,
    pub flow_control: Option<Spanned<String>>,
    pub format: Spanned<String>,
    pub checksum: Option<Spanned<String>>,
    pub max_line_bytes: Option<Spanned<usize>>,
    pub node_time: Option<Spanned<String>>,
    pub unmapped: Option<Spanned<String>>,
    pub max_nodes: Option<Spanned<usize>>,
    pub reopen_backoff_max: Option<Spanned<String>>,
    pub channel: Option<Vec<Spanned<RawChannel>>>,
}

/// A node or channel id: a name, or a number as `frame` nodes use.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    Name(String),
    Number(i64),
}

impl NameOrNumber {
    pub fn text(&self) -> String {
        match self {
            NameOrNumber::Name(s) => s.clone(),
            NameOrNumber::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub node: Option<NameOrNumber>,
    pub channel: NameOrNumber,
    pub sensor: String,
    pub unit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClock {
    pub require_sync: Option<bool>,
    pub not_before: Option<Spanned<String>>,
}
