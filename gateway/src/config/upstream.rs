//! The `[upstream]` section: the broker records go to, the output topics,
//! delivery settings and TLS.

use std::fmt::Write;
use std::time::Duration;

use toml::Spanned;

use super::batch::BatchConfig;
use super::diag::{duration_text, named, Cx, Named};
use super::mqtt::{qos_number, BrokerAddr};
use super::raw::RawUpstream;
use super::tls::{render_security, Credentials, TlsConfig};
use crate::topic::OutputTemplate;

/// The most nodes `brokers` may list.
pub const MAX_BROKERS: usize = 16;

/// The MQTT protocol version the upstream link speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1: a PUBACK carries no reason, so a publish the broker
    /// refuses (an ACL, say) is acknowledged like any other.
    V311,
    /// MQTT 5: PUBACK reason codes, topic aliases, message expiry, user
    /// properties, receive maximum and session expiry. A broker that does
    /// not speak it is spoken to in 3.1.1 instead (logged once).
    V5,
}

named!(Protocol, "protocol":
    V5 => "5" ["(the default; falls back to 3.1.1 where the broker lacks it)"],
    V311 => "3.1.1",
);

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The nodes of the upstream broker (or cluster), tried in this order,
    /// at least one.
    pub brokers: Vec<BrokerAddr>,
    pub protocol: Protocol,
    pub client_id: String,
    pub summary_topic: OutputTemplate,
    /// Where alarm and anomaly events go.
    pub alarm_topic: OutputTemplate,
    /// Where `on_change` and `raw` values go.
    pub value_topic: OutputTemplate,
    /// Subscribed for commands (alarm acknowledgements).
    pub command_topic: String,
    /// Where the gateway says whether it is alive (retained birth, status
    /// and last will).
    pub status_topic: String,
    /// How often the status is published while connected.
    pub status_interval: Duration,
    pub qos: rumqttc::QoS,
    pub keep_alive: Duration,
    pub reconnect_backoff_max: Duration,
    /// QoS 1 publishes awaiting PUBACK at once.
    pub inflight: u16,
    pub shutdown_grace: Duration,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsConfig>,
    /// `[upstream.batch]`: envelopes, or one plain message per record.
    pub batch: BatchConfig,
}

impl UpstreamConfig {
    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let d = duration_text;
        let _ = writeln!(
            s,
            "[upstream]\nbrokers = [{}]\nprotocol = \"{}\"\nclient_id = {:?}\nsummary_topic = {:?}\nalarm_topic = {:?}\nvalue_topic = {:?}\ncommand_topic = {:?}\nstatus_topic = {:?}\nstatus_interval = {:?}\nqos = {}\nkeep_alive = {:?}\nreconnect_backoff_max = {:?}\ninflight = {}\nshutdown_grace = {:?}",
            self.brokers.iter().map(|b| format!("\"{b}\"")).collect::<Vec<_>>().join(", "), self.protocol.name(), self.client_id, self.summary_topic.as_str(), self.alarm_topic.as_str(), self.value_topic.as_str(), self.command_topic, self.status_topic, d(self.status_interval), qos_number(self.qos), d(self.keep_alive), d(self.reconnect_backoff_max), self.inflight, d(self.shutdown_grace)
        );
        render_security(self.credentials.as_ref(), self.tls.as_ref(), s);
        self.batch.render(s);
    }
}

impl Cx<'_> {
    /// Validates `[upstream]`; `labels` are the label names the sources
    /// define, which output templates may use.
    pub(super) fn upstream(
        &mut self,
        raw: RawUpstream,
        gateway_id: &str,
        labels: &[String],
    ) -> Option<UpstreamConfig> {
        let tls = match &raw.tls {
            None => Some(None),
            Some(t) => self.tls(t, "[upstream.tls]", true).map(Some),
        };
        let mut topic = |v: &Option<Spanned<String>>, name: &str, default: &str| {
            let (text, span) = v
                .as_ref()
                .map(|t| (t.get_ref().clone(), t.span()))
                .unwrap_or_else(|| (default.to_owned(), 0..0));
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
        let command_topic = self.plain_topic(
            &raw.command_topic,
            "command_topic",
            "gateways/{gateway}/command",
            gateway_id,
        );
        let status_topic = self.plain_topic(
            &raw.status_topic,
            "status_topic",
            "gateways/{gateway}/status",
            gateway_id,
        );
        let status_interval = self.duration(&raw.status_interval, Duration::from_secs(60));
        if let Some(v) = &raw.status_interval {
            if status_interval < Duration::from_secs(1) {
                self.at(
                    v.span(),
                    "`status_interval` must be at least 1s",
                    Some("for example \"60s\"".into()),
                );
            }
        }
        let qos = self.qos(&raw.qos, rumqttc::QoS::AtLeastOnce);
        if let Some(q) = &raw.qos {
            if qos != rumqttc::QoS::AtLeastOnce {
                self.at(q.span(), "upstream QoS must be 1", Some("summaries are delivered at least once: the gateway counts a summary delivered only on the broker's PUBACK".into()));
            }
        }
        let brokers = self.brokers(&raw, raw.tls.is_some());
        let protocol = self.choice(&raw.protocol, Protocol::V5);
        let client_id = self.client_id(raw.client_id, format!("sensor-gateway-{gateway_id}"), None);
        let keep_alive = self.duration(&raw.keep_alive, Duration::from_secs(30));
        let reconnect_backoff_max =
            self.duration(&raw.reconnect_backoff_max, Duration::from_secs(30));
        let inflight = self.positive(&raw.inflight, "inflight", 32);
        let shutdown_grace = self.duration(&raw.shutdown_grace, Duration::from_secs(5));
        let batch = self.batch(raw.batch.as_ref(), gateway_id);
        let credentials = self.credentials(raw.username, raw.password, raw.password_file);
        Some(UpstreamConfig {
            brokers: brokers?,
            protocol,
            client_id,
            summary_topic: summary_topic?,
            alarm_topic: alarm_topic?,
            value_topic: value_topic?,
            command_topic,
            status_topic,
            status_interval,
            qos,
            keep_alive,
            reconnect_backoff_max,
            inflight,
            shutdown_grace,
            credentials,
            tls: tls?,
            batch,
        })
    }

    /// `broker` or `brokers` (one of them, a list of at most
    /// [`MAX_BROKERS`] distinct addresses); `None` (reported) otherwise.
    fn brokers(&mut self, raw: &RawUpstream, tls: bool) -> Option<Vec<BrokerAddr>> {
        let list: Vec<&Spanned<String>> = match (&raw.broker, &raw.brokers) {
            (Some(b), None) => vec![b],
            (None, Some(l)) if !l.get_ref().is_empty() => l.get_ref().iter().collect(),
            (None, Some(l)) => {
                self.at(
                    l.span(),
                    "`brokers` is empty",
                    Some("name at least one broker, such as [\"broker.plant.local:8883\"]".into()),
                );
                return None;
            }
            (Some(b), Some(_)) => {
                self.at(
                    b.span(),
                    "`[upstream]` sets both `broker` and `brokers`",
                    Some(
                        "keep one: `brokers = [..]` lists the nodes of a cluster, tried in order"
                            .into(),
                    ),
                );
                return None;
            }
            (None, None) => {
                self.at(
                    0..0,
                    "`[upstream]` needs `broker` (or `brokers` for a cluster)",
                    Some("for example broker = \"broker.plant.local:8883\"".into()),
                );
                return None;
            }
        };
        if list.len() > MAX_BROKERS {
            self.at(
                list[MAX_BROKERS].span(),
                format!(
                    "`brokers` lists {} addresses, more than {MAX_BROKERS}",
                    list.len()
                ),
                Some("list the nodes of one cluster".into()),
            );
            return None;
        }
        let mut out: Vec<BrokerAddr> = Vec::with_capacity(list.len());
        let mut ok = true;
        for v in list {
            match self.broker(v, tls) {
                Some(b) if out.contains(&b) => {
                    self.at(
                        v.span(),
                        format!("`{b}` is listed twice in `brokers`"),
                        Some("list each node once".into()),
                    );
                    ok = false;
                }
                Some(b) => out.push(b),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A topic the gateway subscribes or publishes to as is: `{gateway}` is
    /// its only placeholder, and wildcards are refused.
    pub(super) fn plain_topic(
        &mut self,
        raw: &Option<Spanned<String>>,
        name: &str,
        default: &str,
        gateway_id: &str,
    ) -> String {
        let Some(t) = raw else {
            return default.replace("{gateway}", gateway_id);
        };
        let text = t.get_ref().replace("{gateway}", gateway_id);
        if text.is_empty() || text.contains(['+', '#', '{']) {
            self.at(
                t.span(),
                format!("`{name}` must be a plain topic (`{{gateway}}` is the only placeholder)"),
                Some(format!("for example {default:?}")),
            );
        }
        text
    }
}
