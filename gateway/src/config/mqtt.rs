//! What every MQTT connection's settings share, sources and upstream
//! alike: the broker address, QoS and client ids (unique across the file).
//! Credentials and TLS are in `tls.rs`.

use std::fmt;
use std::ops::Range;

use toml::Spanned;

use super::diag::Cx;

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

/// The number `check` prints for a QoS.
pub(super) fn qos_number(q: rumqttc::QoS) -> u8 {
    q as u8
}

impl Cx<'_> {
    pub(super) fn qos(&mut self, v: &Option<Spanned<u8>>, default: rumqttc::QoS) -> rumqttc::QoS {
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

    /// The address in `v`; `None` (reported) when it is not one.
    pub(super) fn broker(&mut self, v: &Spanned<String>, tls: bool) -> Option<BrokerAddr> {
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
        let addr = parsed.map(|(host, port)| BrokerAddr {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        });
        if addr.is_none() {
            self.at(
                v.span(),
                format!("`{text}` is not a broker address"),
                Some(
                    "write host:port, such as \"127.0.0.1:1883\" or \"broker.plant.local:8883\""
                        .into(),
                ),
            );
        }
        addr
    }

    /// The client id set in `v`, or `default`. A set id is remembered for
    /// [`Cx::check_client_ids`], a default one only with the span
    /// `default_at` to point at.
    pub(super) fn client_id(
        &mut self,
        v: Option<Spanned<String>>,
        default: String,
        default_at: Option<Range<usize>>,
    ) -> String {
        let (id, span) = match v {
            Some(c) => {
                let span = c.span();
                (c.into_inner(), Some(span))
            }
            None => (default, default_at),
        };
        if let Some(span) = span {
            self.client_ids.push((id.clone(), span));
        }
        id
    }

    /// Reports a source name used twice: names label the metrics of a
    /// source and tell sources apart at a reload.
    pub(super) fn check_source_names(&mut self) {
        let names = std::mem::take(&mut self.source_names);
        self.report_repeats(&names, |name, line| {
            (
                format!("the source name `{name}` is already used on line {line}"),
                "give each `[[source]]` its own `name` (unnamed sources are named after their kind or device)",
            )
        });
    }

    /// Reports client ids used by more than one connection.
    pub(super) fn check_client_ids(&mut self) {
        let ids = std::mem::take(&mut self.client_ids);
        self.report_repeats(&ids, |id, line| {
            (
                format!("the MQTT client id `{id}` is already used on line {line}"),
                "give each source and the upstream its own `client_id`: a broker disconnects the older of two connections with one id, so they would take over each other's session",
            )
        });
    }

    /// Reports every value of `items` seen before, at its place, naming the
    /// line of the first; `say` gives the message and the hint.
    fn report_repeats(
        &mut self,
        items: &[(String, std::ops::Range<usize>)],
        say: impl Fn(&str, usize) -> (String, &'static str),
    ) {
        for (i, (value, span)) in items.iter().enumerate() {
            if let Some((_, first)) = items[..i].iter().find(|(other, _)| other == value) {
                let (message, hint) = say(value, self.line_of(first.start));
                self.at(span.clone(), message, Some(hint.into()));
            }
        }
    }
}
