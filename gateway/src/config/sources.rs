//! `[[source]]` sections: choosing the kind, and MQTT sources (topic
//! template, subscriptions, payload format). Serial sources are in
//! `serial.rs`.

use std::fmt::Write;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::diag::{duration_text, named, Cx, Named};
use super::mqtt::{qos_number, BrokerAddr};
use super::raw::{RawMqttSource, RawPayload, RawSerialSource};
use super::serial::SerialSourceConfig;
use super::tls::{render_security, Credentials, TlsConfig};
use crate::decode::{PayloadFormat, TimestampUnit};
use crate::topic::TopicTemplate;

#[derive(Debug, Clone)]
pub enum SourceConfig {
    Mqtt(MqttSourceConfig),
    Serial(SerialSourceConfig),
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
    /// Boxed, as `tls`: most sources have neither.
    pub credentials: Option<Box<Credentials>>,
    /// TLS to the plant broker; the source's guard speaks it.
    pub tls: Option<Box<TlsConfig>>,
    pub payload: PayloadFormat,
}

/// The `kind` of a `[[source]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceKind {
    Mqtt,
    Serial,
}

named!(SourceKind, "source kind": Mqtt => "mqtt", Serial => "serial");

impl SourceKind {
    /// "`kind = "mqtt"` or `kind = "serial"`", for hints.
    pub(super) fn settings() -> String {
        let all: Vec<String> = Self::ALL
            .iter()
            .map(|k| format!("`kind = {:?}`", k.name()))
            .collect();
        all.join(" or ")
    }

    /// The first line of a source as `check` prints it.
    pub(super) fn header(self) -> String {
        format!("[[source]]\nkind = {:?}", self.name())
    }
}

/// The `format` of an MQTT source's `payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    Json,
    Number,
}

named!(PayloadKind, "payload format": Json => "json", Number => "number");

named!(TimestampUnit, "timestamp_unit", tail = "; RFC 3339 strings are recognised by themselves":
    Seconds => "s",
    Milliseconds => "ms",
    Microseconds => "us",
);

impl SourceConfig {
    /// The source's `name`.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Serial(c) => &c.name,
            SourceConfig::Mqtt(m) => &m.name,
        }
    }

    /// The source as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        match self {
            SourceConfig::Serial(c) => c.render(s),
            SourceConfig::Mqtt(m) => m.render(s),
        }
    }
}

impl MqttSourceConfig {
    fn render(&self, s: &mut String) {
        let d = duration_text;
        let _ = writeln!(
            s,
            "{}\nname = {:?}\nbroker = \"{}\"\nclient_id = {:?}\ntopic_template = {:?}\ntopics = {:?}\nqos = {}\nkeep_alive = {:?}\nreconnect_backoff_max = {:?}",
            SourceKind::Mqtt.header(), self.name, self.broker, self.client_id, self.template.as_str(), self.topics, qos_number(self.qos), d(self.keep_alive), d(self.reconnect_backoff_max)
        );
        render_security(self.credentials.as_deref(), self.tls.as_deref(), s);
        match &self.payload {
            PayloadFormat::Number => {
                let _ = writeln!(
                    s,
                    "payload = {{ format = {:?} }}\n",
                    PayloadKind::Number.name()
                );
            }
            PayloadFormat::Json {
                value_field: value,
                timestamp_field: ts,
                timestamp_unit: unit,
                sequence_field: seq,
            } => {
                // An empty field name turns the field off.
                let _ = writeln!(
                    s,
                    "payload = {{ format = {:?}, value_field = {value:?}, timestamp_field = {:?}, timestamp_unit = {:?}, sequence_field = {:?} }}\n",
                    PayloadKind::Json.name(),
                    ts.as_deref().unwrap_or(""),
                    unit.name(),
                    seq.as_deref().unwrap_or("")
                );
            }
        }
    }
}

impl<'a> Cx<'a> {
    /// Validates one `[[source]]`, as its `kind` says.
    pub(super) fn source(&mut self, item: Spanned<DeValue<'a>>) -> Option<SourceConfig> {
        let span = item.span();
        let kind = match item.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == "kind")
                .map(|(_, v)| (v.get_ref().as_str().map(str::to_owned), v.span())),
            _ => None,
        };
        match kind {
            Some((k, kspan)) => match k.as_deref().and_then(SourceKind::from_name) {
                Some(SourceKind::Mqtt) => {
                    let raw = self.section::<RawMqttSource>(item)?;
                    Some(SourceConfig::Mqtt(self.mqtt_source(raw)?))
                }
                Some(SourceKind::Serial) => {
                    let raw = self.section::<RawSerialSource>(item)?;
                    Some(SourceConfig::Serial(self.serial_source(raw)))
                }
                None => {
                    let hint = format!("known kinds: {}", SourceKind::names().join(", "));
                    self.at(
                        kspan,
                        format!(
                            "unknown {} `{}`",
                            SourceKind::SETTING,
                            k.unwrap_or_default()
                        ),
                        Some(hint),
                    );
                    None
                }
            },
            None => {
                self.at(
                    span,
                    "a `[[source]]` has no `kind`",
                    Some(format!("add {}", SourceKind::settings())),
                );
                None
            }
        }
    }

    fn mqtt_source(&mut self, raw: RawMqttSource) -> Option<MqttSourceConfig> {
        let template = match TopicTemplate::parse(raw.topic_template.get_ref()) {
            Ok(t) => {
                for n in t.names() {
                    if !self.labels.iter().any(|x| x == n) {
                        self.labels.push(n.to_owned());
                    }
                }
                Some(t)
            }
            Err(e) => {
                self.at(
                    raw.topic_template.span(),
                    format!("bad topic_template: {e}"),
                    Some("example: \"plant/{line}/{machine}/{sensor}\"".into()),
                );
                None
            }
        };
        let topics = raw.topics.map(|list| {
            list.into_iter()
                .map(|t| {
                    if t.get_ref().is_empty() {
                        self.at(t.span(), "an empty topic filter", None);
                    }
                    t.into_inner()
                })
                .collect::<Vec<_>>()
        });
        let payload = match raw.payload {
            None => PayloadFormat::json_default(),
            Some(p) => self.payload(p),
        };
        // A source without a name is named after its kind.
        let name_span = raw.name.as_ref().map_or(raw.broker.span(), |n| n.span());
        let name = raw
            .name
            .map(|n| n.into_inner())
            .unwrap_or_else(|| SourceKind::Mqtt.name().into());
        self.source_names.push((name.clone(), name_span));
        let client_id = self.client_id(
            raw.client_id,
            format!("sensor-gateway-{}-{name}", self.gateway_id),
            Some(raw.broker.span()),
        );
        let broker = self.broker(&raw.broker, raw.tls.is_some());
        let tls = match &raw.tls {
            None => Some(None),
            Some(t) => self
                .tls(t, "the source's `tls`", false)
                .map(|t| Some(Box::new(t))),
        };
        let credentials = self.credentials(raw.username, raw.password, raw.password_file);
        let qos = self.qos(&raw.qos, rumqttc::QoS::AtLeastOnce);
        let keep_alive = self.duration(&raw.keep_alive, Duration::from_secs(30));
        let reconnect_backoff_max =
            self.duration(&raw.reconnect_backoff_max, Duration::from_secs(30));
        let template = template?;
        Some(MqttSourceConfig {
            client_id,
            name,
            broker: broker?,
            topics: topics.unwrap_or_else(|| vec![template.subscription_filter()]),
            template,
            qos,
            keep_alive,
            reconnect_backoff_max,
            credentials: credentials.map(Box::new),
            tls: tls?,
            payload,
        })
    }

    fn payload(&mut self, p: RawPayload) -> PayloadFormat {
        match self.named(&p.format) {
            Some(PayloadKind::Number) => PayloadFormat::Number,
            Some(PayloadKind::Json) => PayloadFormat::Json {
                value_field: p.value_field.unwrap_or_else(|| "value".into()),
                timestamp_field: Some(p.timestamp_field.unwrap_or_else(|| "ts".into()))
                    .filter(|s| !s.is_empty()),
                timestamp_unit: self.choice(&p.timestamp_unit, TimestampUnit::Milliseconds),
                sequence_field: Some(p.sequence_field.unwrap_or_else(|| "seq".into()))
                    .filter(|s| !s.is_empty()),
            },
            None => PayloadFormat::json_default(),
        }
    }
}
