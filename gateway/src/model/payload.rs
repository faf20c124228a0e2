//! The JSON layouts of what goes upstream. Every payload is one envelope: a
//! header every kind shares (schema, kind, event, gateway, seq, sensor,
//! labels, unit) followed by the fields of its kind. The processor fills
//! them; anything that re-encodes records (another encoding, batching) reads
//! the same types.

use serde::Serialize;

use super::{Lane, SensorInfo};

/// Version of the payload layouts; bumped on any incompatible change.
pub const SCHEMA: u32 = 1;

/// The kinds of record the core emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Summary,
    Alarm,
    Anomaly,
    Value,
}

impl RecordKind {
    /// The `kind` field of the payload.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Summary => "summary",
            RecordKind::Alarm => "alarm",
            RecordKind::Anomaly => "anomaly",
            RecordKind::Value => "value",
        }
    }

    /// The delivery lane: alarm and anomaly events go before summaries.
    pub fn lane(self) -> Lane {
        match self {
            RecordKind::Alarm | RecordKind::Anomaly => Lane::Alarm,
            RecordKind::Summary | RecordKind::Value => Lane::Summary,
        }
    }
}

/// What every payload starts with.
#[derive(Serialize)]
pub struct Header<'a> {
    pub schema: u32,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    pub gateway: &'a str,
    pub seq: u64,
    pub sensor: &'a str,
    pub labels: Labels<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
}

/// A header followed by the fields of one kind, as one JSON object.
#[derive(Serialize)]
pub struct Envelope<'a, B> {
    #[serde(flatten)]
    pub header: Header<'a>,
    #[serde(flatten)]
    pub body: B,
}

/// A sensor's labels (the named captures of its topic or serial mapping), as
/// a JSON object, serialized without copying.
pub struct Labels<'a>(pub &'a SensorInfo);

impl Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.names.len()))?;
        for (k, v) in self.0.labels() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// A closed window's statistics; absent statistics are left out.
#[derive(Serialize)]
pub struct SummaryBody {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p2p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crest: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skewness: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kurtosis: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slope_per_hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_ts_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ts_ms: Option<i64>,
}

/// An alarm transition (`raised`, `cleared`, `acknowledged`).
#[derive(Serialize)]
pub struct AlarmBody<'a> {
    pub alarm_id: String,
    #[serde(rename = "type")]
    pub alarm_type: &'static str,
    pub severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    pub ts_ms: i64,
    pub since_ms: i64,
    pub duration_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<f64>,
    pub latched: bool,
    /// The seq of the event that raised this occurrence; acknowledgements
    /// must name it.
    pub occurrence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'a str>,
}

/// An anomaly detector's verdict on a closed window.
#[derive(Serialize)]
pub struct AnomalyBody {
    pub anomaly_id: String,
    pub detector: &'static str,
    pub feature: &'static str,
    pub direction: &'static str,
    pub score: f64,
    pub limit: f64,
    pub value: f64,
    pub baseline_mean: f64,
    pub baseline_std: f64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

/// One reading delivered as it is (`on_change` or `raw` delivery).
#[derive(Serialize)]
pub struct ValueBody {
    pub ts_ms: i64,
    pub value: f64,
    pub reason: &'static str,
}
