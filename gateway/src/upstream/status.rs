//! The gateway's status topic (`upstream.status_topic`, by default
//! `gateways/{gateway}/status`): whether a gateway is alive, as seen from
//! upstream.
//!
//! Every message is retained and is a whole snapshot, so a consumer that
//! subscribes late reads the current state from one message:
//! - on every connection, a birth (`"state": "online"`: version, config
//!   digest, start time, sources, and the backlog),
//! - every `status_interval` while connected, the same with fresh figures,
//! - on a clean shutdown, `"state": "offline", "clean": true`,
//! - when the connection dies without that, the broker publishes the last
//!   will registered at connect: `"state": "offline", "clean": false`.
//!
//! Status messages are published with QoS 0: they are state, not data (the
//! next one replaces a lost one), and they never take a packet id the
//! sink's PUBACK bookkeeping would have to tell from a record's. The last
//! will is QoS 1: the broker holds it.

use rumqttc::{LastWill, QoS};
use serde::Serialize;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Lane;

/// What the status topic says of this gateway that does not change while
/// it runs.
#[derive(Debug, Clone)]
pub struct StatusIdentity {
    pub topic: String,
    pub gateway: String,
    pub version: &'static str,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub started_ms: i64,
}

impl StatusIdentity {
    pub fn new(config: &Config, started_ms: i64) -> Self {
        let started = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(started_ms).unwrap_or(0));
        Self {
            topic: config.upstream.status_topic.clone(),
            gateway: config.gateway.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: humantime::format_rfc3339_seconds(started).to_string(),
            started_ms,
        }
    }

    /// Registered at connect; the broker publishes it if the connection
    /// dies without a clean disconnect.
    pub fn last_will(&self, metrics: &Metrics) -> LastWill {
        LastWill::new(
            self.topic.clone(),
            self.offline(false, metrics, None),
            QoS::AtLeastOnce,
            true,
        )
    }

    /// The birth and periodic message.
    pub fn online(&self, metrics: &Metrics, now_ms: i64) -> Vec<u8> {
        let figures = Figures::read(metrics, now_ms, self.started_ms);
        self.render("online", None, metrics, Some(figures))
    }

    /// The message of a clean shutdown (`clean`) or of the last will;
    /// `now_ms` adds the figures (a clean shutdown has them, the last will
    /// registered at connect has not).
    pub fn offline(&self, clean: bool, metrics: &Metrics, now_ms: Option<i64>) -> Vec<u8> {
        let figures = now_ms.map(|now| Figures::read(metrics, now, self.started_ms));
        self.render("offline", Some(clean), metrics, figures)
    }

    /// The configuration digest and the sources are the running ones (a
    /// reload changes them), read from `metrics`.
    fn render(
        &self,
        state: &str,
        clean: Option<bool>,
        metrics: &Metrics,
        figures: Option<Figures>,
    ) -> Vec<u8> {
        let sources: Vec<SourceStatus> = metrics
            .source_states()
            .into_iter()
            .map(|s| SourceStatus {
                name: s.name,
                kind: s.kind,
                connected: s.connected,
            })
            .collect();
        let msg = StatusMessage {
            state,
            clean,
            gateway: &self.gateway,
            version: self.version,
            config_sha256: metrics.config_sha256().unwrap_or_default(),
            started_at: &self.started_at,
            sources,
            figures,
        };
        // Serializing plain data into a Vec cannot fail.
        serde_json::to_vec(&msg).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct StatusMessage<'a> {
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    clean: Option<bool>,
    gateway: &'a str,
    version: &'a str,
    config_sha256: String,
    started_at: &'a str,
    sources: Vec<SourceStatus>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    figures: Option<Figures>,
}

#[derive(Serialize)]
struct SourceStatus {
    name: String,
    kind: &'static str,
    connected: bool,
}

/// The figures of a status message, read from the metrics.
#[derive(Debug, Serialize, PartialEq)]
struct Figures {
    ts: i64,
    uptime_s: i64,
    backlog_records: i64,
    backlog_bytes: i64,
    /// Age of the oldest record not yet acknowledged; 0 when none waits.
    oldest_age_s: i64,
    /// Per lane (`alarm`, `summary`): records, bytes, oldest age.
    lanes: [LaneFigures; 2],
    /// How long the buffer holds at the current input rate before
    /// `buffer.when_full` applies; -1 while nothing arrives.
    outage_seconds_left: i64,
    /// Records dropped since start (buffer full, expired, unpublishable).
    dropped: u64,
    /// Readings rejected since start, all reasons.
    rejected: u64,
}

#[derive(Debug, Serialize, PartialEq)]
struct LaneFigures {
    lane: &'static str,
    records: i64,
    bytes: i64,
    oldest_age_s: i64,
}

impl Figures {
    fn read(m: &Metrics, now_ms: i64, started_ms: i64) -> Self {
        let records = m.upstream_queue_records.get().max(0);
        Self {
            ts: now_ms,
            uptime_s: (now_ms - started_ms).max(0) / 1000,
            backlog_records: records,
            backlog_bytes: m.upstream_queue_bytes.get().max(0),
            oldest_age_s: m.oldest_backlog_age_s(now_ms).unwrap_or(0),
            lanes: [Lane::Alarm, Lane::Summary].map(|lane| LaneFigures {
                lane: lane.dir_name(),
                records: m.backlog_records.get(lane),
                bytes: m.backlog_bytes.get(lane),
                oldest_age_s: m.backlog_oldest_age_seconds.get(lane),
            }),
            outage_seconds_left: m.outage_seconds_left.get(),
            dropped: m.upstream_dropped_total(),
            rejected: m.rejected_total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> StatusIdentity {
        StatusIdentity {
            topic: "gateways/gw1/status".into(),
            gateway: "gw1".into(),
            version: "1.2.3",
            started_at: "2026-11-26T10:00:00Z".into(),
            started_ms: 1_000_000,
        }
    }

    fn metrics() -> Metrics {
        let m = Metrics::new();
        m.set_config_sha256(&"ab".repeat(32));
        m.mqtt_source("plant").set(1);
        let _ = m.serial_port("line1");
        m
    }

    #[test]
    fn the_last_will_is_a_retained_offline_that_says_it_was_not_clean() {
        let will = identity().last_will(&metrics());
        assert_eq!(will.topic, "gateways/gw1/status");
        assert!(will.retain);
        assert_eq!(will.qos, QoS::AtLeastOnce);
        let v: serde_json::Value = serde_json::from_slice(&will.message).unwrap();
        assert_eq!(v["state"], "offline");
        assert_eq!(v["clean"], false);
        assert_eq!(v["gateway"], "gw1");
        assert_eq!(v["config_sha256"], "ab".repeat(32));
    }

    #[test]
    fn the_birth_carries_identity_and_backlog() {
        let m = metrics();
        m.upstream_queue_records.set(7);
        m.upstream_queue_bytes.set(700);
        m.buffer_oldest_ts_ms.set(1_001_000);
        let now = 1_061_000;
        let v: serde_json::Value = serde_json::from_slice(&identity().online(&m, now)).unwrap();
        assert_eq!(v["state"], "online");
        assert!(v.get("clean").is_none());
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["started_at"], "2026-11-26T10:00:00Z");
        assert_eq!(
            v["sources"],
            serde_json::json!([
                {"name": "plant", "kind": "mqtt", "connected": true},
                {"name": "line1", "kind": "serial", "connected": false}
            ])
        );
        // A reload changes the digest the next message carries.
        m.set_config_sha256(&"cd".repeat(32));
        let v: serde_json::Value = serde_json::from_slice(&identity().online(&m, now)).unwrap();
        assert_eq!(v["config_sha256"], "cd".repeat(32));
        assert_eq!(v["backlog_records"], 7);
        assert_eq!(v["backlog_bytes"], 700);
        assert_eq!(v["oldest_age_s"], 60);
        assert_eq!(v["uptime_s"], 61);
        assert_eq!(v["dropped"], 0);
        assert_eq!(v["lanes"][0]["lane"], "alarms", "{v}");
        assert_eq!(v["lanes"][1]["lane"], "summaries", "{v}");
        assert!(v["outage_seconds_left"].is_i64(), "{v}");
    }
}
