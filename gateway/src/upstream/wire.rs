//! One upstream connection in either MQTT version, as the link task and the
//! sink see it: a [`Conn`] (client and event loop) whose events come out as
//! protocol-neutral [`Wire`] values, and a [`Publisher`] with which the sink
//! publishes records on it. Everything that differs between MQTT 3.1.1 and
//! 5 is written here: properties, topic aliases, reason codes, last wills.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill as LastWill5, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{LastWill, QoS};

use crate::config::Protocol;
use crate::mqtt;

pub use crate::reject::Refusal;

/// What the upstream link knows of a refusal beyond its name.
pub trait RefusalExt {
    fn from_v5(reason: PubAckReason) -> Option<Refusal>;
    fn fix(self) -> &'static str;
}

impl RefusalExt for Refusal {
    /// The refusal a PUBACK reason stands for; `None` when it acknowledges
    /// (success, or no subscriber matched: the broker took the message).
    fn from_v5(reason: PubAckReason) -> Option<Refusal> {
        match reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
            PubAckReason::NotAuthorized => Some(Refusal::NotAuthorized),
            PubAckReason::QuotaExceeded => Some(Refusal::QuotaExceeded),
            PubAckReason::TopicNameInvalid => Some(Refusal::TopicNameInvalid),
            PubAckReason::PayloadFormatInvalid => Some(Refusal::PayloadFormatInvalid),
            PubAckReason::PacketIdentifierInUse => Some(Refusal::PacketIdInUse),
            PubAckReason::UnspecifiedError => Some(Refusal::Unspecified),
            PubAckReason::ImplementationSpecificError => Some(Refusal::ImplementationSpecific),
        }
    }

    /// What the operator can do about it.
    fn fix(self) -> &'static str {
        match self {
            Refusal::NotAuthorized => "the broker's access control denies this client publishing on this topic: allow the gateway's user (or certificate) to publish under its topics in the broker's ACL, or change the topic templates in [upstream]",
            Refusal::QuotaExceeded => "the broker's quota for this client is used up: raise it on the broker, or lower the gateway's rate (batching in [upstream.batch] sends fewer messages)",
            Refusal::TopicNameInvalid => "the broker does not accept this topic name: change the topic templates in [upstream]",
            Refusal::PayloadFormatInvalid => "the broker rejects the payload format: check the broker's payload rules against docs/payloads.md",
            Refusal::PacketIdInUse => "the broker reports a packet id still in use: the gateway sends the record again",
            Refusal::Unspecified | Refusal::ImplementationSpecific => "the broker gave no specific reason: its log says why",
        }
    }
}

/// What happened on the connection, in either protocol.
#[derive(Debug)]
pub enum Wire {
    /// The broker accepted the connection; `receive_max` is how many QoS 1
    /// publishes it takes at once (MQTT 5), `alias_max` how many topic
    /// aliases.
    ConnAck {
        receive_max: Option<u16>,
        alias_max: u16,
    },
    /// A publish left the client with this packet id.
    Sent(u16),
    /// The broker answered the publish with this packet id.
    PubAck { pkid: u16, refused: Option<Refusal> },
    /// A message on a subscribed topic.
    Message {
        topic: Bytes,
        payload: Bytes,
        retain: bool,
    },
    /// Anything else (pings, SUBACKs, our own acknowledgements).
    Other,
}

/// A connection attempt or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    V4(#[from] rumqttc::ConnectionError),
    #[error("{0}")]
    V5(#[from] rumqttc::v5::ConnectionError),
}

impl LinkError {
    /// Whether an MQTT 5 attempt failed in a way a broker that speaks only
    /// 3.1.1 fails it: the connection was made, then refused with
    /// "unsupported protocol version", answered with something that is not
    /// an MQTT 5 CONNACK, or closed.
    pub fn suggests_v311(&self) -> bool {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
        use rumqttc::v5::ConnectionError as E;
        use std::io::ErrorKind as K;
        match self {
            LinkError::V4(_) => false,
            LinkError::V5(e) => match e {
                E::ConnectionRefused(ConnectReturnCode::UnsupportedProtocolVersion) => true,
                E::MqttState(_) | E::NotConnAck(_) => true,
                E::Io(io) => matches!(
                    io.kind(),
                    K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
                ),
                _ => false,
            },
        }
    }
}

/// A publish as the sink hands it over.
pub struct Message<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// MQTT 5 message expiry, in seconds.
    pub expiry_s: Option<u32>,
    /// MQTT 5 content type (and, for `application/json`, the UTF-8 payload
    /// format indicator).
    pub content_type: &'static str,
    /// MQTT 5 user properties, such as the payload schema.
    pub properties: &'a [(&'static str, &'a str)],
}

/// The most topic aliases the gateway uses on one connection, whatever the
/// broker allows: one per distinct topic, first come first served.
pub const ALIAS_MAX: u16 = 1024;

/// Topic aliases of one MQTT 5 connection: a topic's first publish carries
/// it with a new alias, the later ones only the alias.
#[derive(Debug, Default)]
struct Aliases {
    max: u16,
    map: HashMap<String, u16>,
}

impl Aliases {
    /// The topic to send (empty when the alias stands for it) and the alias.
    fn resolve<'t>(&mut self, topic: &'t str) -> (&'t str, Option<u16>) {
        if let Some(a) = self.map.get(topic) {
            return ("", Some(*a));
        }
        if self.map.len() < usize::from(self.max) {
            let a = u16::try_from(self.map.len() + 1).unwrap_or(u16::MAX);
            self.map.insert(topic.to_owned(), a);
            return (topic, Some(a));
        }
        (topic, None)
    }
}

/// Publishes records on one connection; owned by the sink.
pub enum Publisher {
    V4(rumqttc::AsyncClient),
    V5 {
        client: rumqttc::v5::AsyncClient,
        aliases: Aliases5,
    },
}

/// The topic aliases of an MQTT 5 [`Publisher`].
pub struct Aliases5(Aliases);

impl Publisher {
    /// Queues a QoS 1 publish; an error means the connection is going down.
    pub fn publish(&mut self, m: &Message<'_>) -> Result<(), String> {
        match self {
            Publisher::V4(c) => c
                .try_publish(m.topic, QoS::AtLeastOnce, false, m.payload)
                .map_err(|e| e.to_string()),
            Publisher::V5 { client, aliases } => {
                let (topic, alias) = aliases.0.resolve(m.topic);
                let props = PublishProperties {
                    payload_format_indicator: (m.content_type == JSON).then_some(1),
                    message_expiry_interval: m.expiry_s,
                    topic_alias: alias,
                    content_type: Some(m.content_type.to_owned()),
                    user_properties: m
                        .properties
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        topic,
                        QoS5::AtLeastOnce,
                        false,
                        Bytes::copy_from_slice(m.payload),
                        props,
                    )
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Publisher::V4(_) => Protocol::V311,
            Publisher::V5 { .. } => Protocol::V5,
        }
    }
}

/// The content type of a plain JSON record.
pub const JSON: &str = "application/json";

/// A client and its event loop, in either protocol (one per connection
/// attempt, so the size difference of the two event loops costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    V4 {
        client: rumqttc::AsyncClient,
        eventloop: rumqttc::EventLoop,
    },
    V5 {
        client: rumqttc::v5::AsyncClient,
        eventloop: rumqttc::v5::EventLoop,
    },
}

/// Everything a connection attempt needs besides the protocol.
pub struct Attempt<'a> {
    pub settings: mqtt::ClientSettings<'a>,
    pub last_will: LastWill,
    pub request_capacity: usize,
}

impl Conn {
    /// A client for one attempt (nothing is sent before the first poll).
    pub fn new(protocol: Protocol, a: Attempt<'_>) -> Conn {
        match protocol {
            Protocol::V311 => {
                let mut opts = mqtt::options(a.settings);
                opts.set_last_will(a.last_will);
                let (client, eventloop) = rumqttc::AsyncClient::new(opts, a.request_capacity);
                Conn::V4 { client, eventloop }
            }
            Protocol::V5 => {
                let mut opts =
                    mqtt::options_v5(a.settings, mqtt::V5Settings { topic_alias_max: 0 });
                let w = a.last_will;
                opts.set_last_will(LastWill5::new(
                    w.topic,
                    w.message,
                    qos5(w.qos),
                    w.retain,
                    None,
                ));
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, a.request_capacity);
                Conn::V5 { client, eventloop }
            }
        }
    }

    /// The next event of the connection.
    pub async fn poll(&mut self) -> Result<Wire, LinkError> {
        match self {
            Conn::V4 { eventloop, .. } => {
                use rumqttc::{Event, Outgoing, Packet};
                Ok(match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(_)) => Wire::ConnAck {
                        receive_max: None,
                        alias_max: 0,
                    },
                    Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Sent(pkid),
                    Event::Incoming(Packet::PubAck(a)) => Wire::PubAck {
                        pkid: a.pkid,
                        refused: None,
                    },
                    Event::Incoming(Packet::Publish(p)) => Wire::Message {
                        topic: Bytes::from(p.topic.into_bytes()),
                        payload: p.payload,
                        retain: p.retain,
                    },
                    _ => Wire::Other,
                })
            }
            Conn::V5 { eventloop, .. } => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::Event;
                use rumqttc::Outgoing;
                Ok(match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(c)) => {
                        let p = c.properties.as_ref();
                        Wire::ConnAck {
                            receive_max: p.and_then(|p| p.receive_max),
                            alias_max: p.and_then(|p| p.topic_alias_max).unwrap_or(0),
                        }
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => Wire::Sent(pkid),
                    Event::Incoming(Packet::PubAck(a)) => Wire::PubAck {
                        pkid: a.pkid,
                        refused: Refusal::from_v5(a.reason),
                    },
                    Event::Incoming(Packet::Publish(p)) => Wire::Message {
                        topic: p.topic,
                        payload: p.payload,
                        retain: p.retain,
                    },
                    _ => Wire::Other,
                })
            }
        }
    }

    /// A publisher for the sink, once connected.
    pub fn publisher(&self, alias_max: u16) -> Publisher {
        match self {
            Conn::V4 { client, .. } => Publisher::V4(client.clone()),
            Conn::V5 { client, .. } => Publisher::V5 {
                client: client.clone(),
                aliases: Aliases5(Aliases {
                    max: alias_max.min(ALIAS_MAX),
                    map: HashMap::new(),
                }),
            },
        }
    }

    /// Queues a retained QoS 0 message (the status).
    pub fn publish_retained(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Conn::V4 { client, .. } => client
                .try_publish(topic, QoS::AtMostOnce, true, payload)
                .map_err(|e| e.to_string()),
            Conn::V5 { client, .. } => {
                let props = PublishProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some(JSON.to_owned()),
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(topic, QoS5::AtMostOnce, true, payload, props)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Subscribes with QoS 1.
    pub fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Conn::V4 { client, .. } => client
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Conn::V5 { client, .. } => client
                .try_subscribe(topic, QoS5::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends DISCONNECT (which discards the last will) and gives the event
    /// loop a moment to write it.
    pub async fn disconnect(&mut self) {
        match self {
            Conn::V4 { client, eventloop } => mqtt::disconnect(client, eventloop).await,
            Conn::V5 { client, eventloop } => mqtt::disconnect_v5(client, eventloop).await,
        }
    }
}

fn qos5(q: QoS) -> QoS5 {
    match q {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

/// How long an MQTT 5 broker keeps the command subscription (and commands
/// sent to it) while the gateway is away.
pub const SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_sent_in_full_once_per_connection_then_by_alias() {
        let mut a = Aliases {
            max: 2,
            map: HashMap::new(),
        };
        assert_eq!(a.resolve("gw/summary/a"), ("gw/summary/a", Some(1)));
        assert_eq!(a.resolve("gw/summary/b"), ("gw/summary/b", Some(2)));
        assert_eq!(a.resolve("gw/summary/a"), ("", Some(1)));
        // The broker's maximum is used up: the topic goes in full.
        assert_eq!(a.resolve("gw/summary/c"), ("gw/summary/c", None));
        assert_eq!(a.resolve("gw/summary/c"), ("gw/summary/c", None));
        assert_eq!(a.resolve("gw/summary/b"), ("", Some(2)));
    }

    #[test]
    fn a_broker_without_aliases_gets_every_topic_in_full() {
        let mut a = Aliases::default();
        assert_eq!(a.resolve("gw/x"), ("gw/x", None));
        assert_eq!(a.resolve("gw/x"), ("gw/x", None));
    }

    #[test]
    fn only_refusing_reason_codes_keep_a_record() {
        assert_eq!(Refusal::from_v5(PubAckReason::Success), None);
        // No subscriber matched: the broker still took the message.
        assert_eq!(Refusal::from_v5(PubAckReason::NoMatchingSubscribers), None);
        assert_eq!(
            Refusal::from_v5(PubAckReason::NotAuthorized),
            Some(Refusal::NotAuthorized)
        );
        assert_eq!(
            Refusal::from_v5(PubAckReason::QuotaExceeded),
            Some(Refusal::QuotaExceeded)
        );
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
    }

    #[test]
    fn a_broker_that_closes_on_an_mqtt5_connect_is_tried_in_3_1_1() {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
        use rumqttc::v5::ConnectionError as E;
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
        assert!(LinkError::V5(E::Io(eof)).suggests_v311());
        assert!(LinkError::V5(E::ConnectionRefused(
            ConnectReturnCode::UnsupportedProtocolVersion
        ))
        .suggests_v311());
        // Nobody listening, or a wrong password: 3.1.1 would not help.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!LinkError::V5(E::Io(refused)).suggests_v311());
        assert!(
            !LinkError::V5(E::ConnectionRefused(ConnectReturnCode::BadUserNamePassword))
                .suggests_v311()
        );
    }
}
