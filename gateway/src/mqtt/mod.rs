//! What every MQTT connection of the gateway shares, on either side: the
//! rumqttc options it is built from ([`options`]), TLS ([`tls`]) and an
//! orderly [`disconnect`]. The sources and the upstream link each say what
//! their connection needs in a [`ClientSettings`]; how that becomes rumqttc
//! options is written here once, so a change of client library or protocol
//! version starts in this module.

pub mod tls;

use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, TlsConfiguration, Transport};

use crate::config::{BrokerAddr, Credentials};

/// Where a client connects.
pub enum Endpoint<'a> {
    /// A broker over plain TCP.
    Tcp(&'a BrokerAddr),
    /// A broker over TLS.
    Tls(&'a BrokerAddr, TlsConfiguration),
    /// A Unix socket (a source's guard, which relays to the broker).
    Unix(&'a Path),
}

/// What the broker keeps of a client between connections.
pub enum Session {
    /// The broker keeps the subscriptions and their QoS 1 messages while the
    /// client is away; the client acknowledges each message itself, once it
    /// has handed it on.
    Persistent,
    /// A fresh session at every connection; rumqttc's in-flight window is
    /// set a little above `inflight`, so the caller's own window is what
    /// limits.
    Clean { inflight: u16 },
    /// MQTT 5 only: the upstream link. It publishes like a clean session
    /// (its own window limits), but the broker keeps its subscriptions and
    /// their QoS 1 messages for `expiry` after a disconnect, so commands
    /// sent while the gateway is away arrive when it is back.
    Resumable { inflight: u16, expiry: Duration },
}

impl Endpoint<'_> {
    /// Host, port and rumqttc transport, for either protocol's options.
    fn parts(self) -> (String, u16, Transport) {
        match self {
            Endpoint::Tcp(b) => (b.host.clone(), b.port, Transport::Tcp),
            Endpoint::Tls(b, tls) => (b.host.clone(), b.port, Transport::tls_with_config(tls)),
            Endpoint::Unix(path) => (path.to_string_lossy().into_owned(), 0, Transport::Unix),
        }
    }
}

/// The settings of one gateway MQTT client.
pub struct ClientSettings<'a> {
    pub client_id: &'a str,
    pub endpoint: Endpoint<'a>,
    /// At least one second is used.
    pub keep_alive: Duration,
    pub credentials: Option<&'a Credentials>,
    pub session: Session,
    /// The largest packet taken and the largest sent, in bytes.
    pub max_packet: (usize, usize),
}

/// Builds the rumqttc options of one client.
pub fn options(s: ClientSettings<'_>) -> MqttOptions {
    let (host, port, transport) = s.endpoint.parts();
    let mut opts = MqttOptions::new(s.client_id, host, port);
    opts.set_transport(transport);
    opts.set_keep_alive(s.keep_alive.max(Duration::from_secs(1)));
    match s.session {
        Session::Persistent => {
            opts.set_clean_session(false);
            opts.set_manual_acks(true);
        }
        Session::Clean { inflight } | Session::Resumable { inflight, .. } => {
            opts.set_clean_session(true);
            opts.set_inflight(inflight.saturating_add(8));
        }
    }
    opts.set_max_packet_size(s.max_packet.0, s.max_packet.1);
    if let Some(c) = s.credentials {
        opts.set_credentials(c.username.clone(), c.password.expose().to_owned());
    }
    opts
}

/// What an MQTT 5 client announces beyond the common settings.
pub struct V5Settings {
    /// The most topic aliases the client accepts from the broker (0: none).
    pub topic_alias_max: u16,
}

/// Builds the rumqttc options of one MQTT 5 client.
pub fn options_v5(s: ClientSettings<'_>, v5: V5Settings) -> rumqttc::v5::MqttOptions {
    let (host, port, transport) = s.endpoint.parts();
    let mut opts = rumqttc::v5::MqttOptions::new(s.client_id, host, port);
    opts.set_transport(transport);
    opts.set_keep_alive(s.keep_alive.max(Duration::from_secs(1)));
    match s.session {
        Session::Persistent => {
            opts.set_clean_start(false);
            opts.set_session_expiry_interval(Some(u32::MAX));
            opts.set_manual_acks(true);
        }
        Session::Clean { inflight } => {
            opts.set_clean_start(true);
            opts.set_outgoing_inflight_upper_limit(inflight.saturating_add(8));
        }
        Session::Resumable { inflight, expiry } => {
            opts.set_clean_start(false);
            let secs = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
            opts.set_session_expiry_interval(Some(secs));
            opts.set_outgoing_inflight_upper_limit(inflight.saturating_add(8));
        }
    }
    // rumqttc v5 takes one limit for both directions.
    let max = s.max_packet.0.max(s.max_packet.1);
    opts.set_max_packet_size(Some(u32::try_from(max).unwrap_or(u32::MAX)));
    opts.set_topic_alias_max(Some(v5.topic_alias_max));
    if let Some(c) = s.credentials {
        opts.set_credentials(c.username.clone(), c.password.expose().to_owned());
    }
    opts
}

/// Sends DISCONNECT and gives the event loop a moment to write it, so the
/// broker does not wait for a keep-alive timeout.
pub async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// [`disconnect`] for an MQTT 5 client.
pub async fn disconnect_v5(
    client: &rumqttc::v5::AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
) {
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => {
                        break
                    }
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Password;

    #[test]
    fn a_source_gets_a_persistent_session_with_manual_acknowledgements() {
        let creds = Credentials {
            username: "user".to_owned(),
            password: Password::from("secret"),
            password_file: None,
        };
        let opts = options(ClientSettings {
            client_id: "gw-src",
            endpoint: Endpoint::Unix(Path::new("/run/gw/source-0.sock")),
            keep_alive: Duration::from_millis(10),
            credentials: Some(&creds),
            session: Session::Persistent,
            max_packet: (4096, 65536),
        });
        assert_eq!(opts.client_id(), "gw-src");
        assert_eq!(
            opts.broker_address(),
            ("/run/gw/source-0.sock".to_owned(), 0)
        );
        assert!(matches!(opts.transport(), Transport::Unix));
        assert_eq!(opts.keep_alive(), Duration::from_secs(1));
        assert!(!opts.clean_session());
        assert!(opts.manual_acks());
        assert_eq!(opts.max_packet_size(), 4096);
        assert!(opts.credentials().is_some());
    }

    #[test]
    fn upstream_gets_a_clean_session_with_a_wider_window_than_its_own() {
        let broker = BrokerAddr {
            host: "upstream.example".into(),
            port: 8883,
        };
        let opts = options(ClientSettings {
            client_id: "gw-up",
            endpoint: Endpoint::Tcp(&broker),
            keep_alive: Duration::from_secs(30),
            credentials: None,
            session: Session::Clean { inflight: 32 },
            max_packet: (1 << 20, 1 << 20),
        });
        assert_eq!(opts.broker_address(), ("upstream.example".to_owned(), 8883));
        assert!(matches!(opts.transport(), Transport::Tcp));
        assert_eq!(opts.keep_alive(), Duration::from_secs(30));
        assert!(opts.clean_session());
        assert!(!opts.manual_acks());
        assert_eq!(opts.inflight(), 40);
        assert!(opts.credentials().is_none());
    }
}
