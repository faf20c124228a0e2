//! `sensor-gateway consume`: the reference consumer, the other half of the
//! upstream contract. It subscribes with QoS 1 in a persistent session,
//! decodes every message (a plain JSON record or an envelope of them, see
//! `crate::envelope`), drops records already written by `(gateway, seq)`
//! and writes one line of JSON per record; a message is acknowledged only
//! once its lines are written and flushed, so a consumer that dies loses
//! nothing and at most repeats what the dedup window then filters.
//!
//! This file is the async shell (the MQTT client, the output file, the
//! deadline); what a message becomes is pure, in `consume/lines.rs` and
//! `consume/dedup.rs`.

mod dedup;
mod lines;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use dedup::{Dedup, Verdict, MAX_GATEWAYS, MAX_GATEWAY_LEN, WINDOW};
pub use lines::{Reader, Tally, Undecodable};

use crate::backoff::Backoff;
use crate::config::{BrokerAddr, Protocol, TlsConfig};
use crate::mqtt::{self, ClientSettings, Endpoint, Session, V5Settings};

/// What `consume` was asked to do.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub broker: BrokerAddr,
    /// Topic filters, each subscribed with QoS 1.
    pub topics: Vec<String>,
    pub protocol: Protocol,
    pub tls: Option<TlsConfig>,
    /// Lines are appended here; standard output without it.
    pub output: Option<PathBuf>,
    /// Stop once this many records were written.
    pub count: Option<u64>,
    /// Stop after this long.
    pub timeout: Option<Duration>,
    /// Names the persistent session: the broker keeps messages for it
    /// while the consumer is away.
    pub client_id: String,
}

/// Why `consume` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `--count` records were written.
    Count,
    /// `--timeout` passed first.
    Timeout,
    /// Asked to stop (a signal).
    Shutdown,
}

/// Largest message taken: an envelope decompresses to at most 16 MiB, and
/// the gateway sends at most 1 MiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Undecodable messages described on standard error; the rest are counted.
const DESCRIBED_AT_MOST: u64 = 10;

/// Parses `host:port` (`[v6]:port` for an IPv6 address).
pub fn parse_broker(text: &str) -> Result<BrokerAddr, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port number"))?;
    if host.is_empty() {
        return Err(format!("`{text}` names no host"));
    }
    Ok(BrokerAddr {
        host: host.into(),
        port,
    })
}

/// Runs the consumer until `--count`, `--timeout` or `shutdown`.
pub async fn consume(
    opts: &ConsumeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<(Tally, Ending)> {
    let mut out: Box<dyn AsyncWrite + Unpin + Send> = match &opts.output {
        Some(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .with_context(|| format!("cannot open {} for writing", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut link = Link::new(opts)?;
    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut reader = Reader::default();
    let mut lines = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    // Subscriptions sent and not yet acknowledged.
    let mut awaiting = 0;
    let ending = loop {
        if opts.count.is_some_and(|n| reader.tally().records >= n) {
            break Ending::Count;
        }
        let polled = tokio::select! {
            () = shutdown.cancelled() => break Ending::Shutdown,
            () = sleep_until(deadline) => break Ending::Timeout,
            p = link.poll() => p,
        };
        match polled {
            Ok(Polled::Connected) => {
                backoff.connected(Instant::now());
                link.subscribe(&opts.topics).await?;
                awaiting = opts.topics.len();
            }
            Ok(Polled::Subscribed(refused)) => {
                if let Some(reason) = refused {
                    eprintln!("consume: the broker refused a subscription ({reason}): check the topic filters and the broker's ACL");
                }
                awaiting = awaiting.saturating_sub(1);
                if awaiting == 0 {
                    eprintln!(
                        "consume: subscribed to {:?} on {}",
                        opts.topics, opts.broker
                    );
                }
            }
            Ok(Polled::Message {
                topic,
                payload,
                ack,
            }) => {
                lines.clear();
                if let Err(e) = reader.message(&topic, &payload, &mut lines) {
                    let n = reader.tally().undecodable;
                    if n <= DESCRIBED_AT_MOST {
                        eprintln!("undecodable message on {topic:?}: {e}");
                    }
                    if n == DESCRIBED_AT_MOST {
                        eprintln!("further undecodable messages are only counted");
                    }
                }
                out.write_all(&lines)
                    .await
                    .context("cannot write the output")?;
                out.flush().await.context("cannot write the output")?;
                link.ack(ack).await?;
            }
            Ok(Polled::Other) => {}
            Err(e) => {
                let now = Instant::now();
                let delay = backoff.failed(now);
                if let Some(missed) = backoff.log_due(now) {
                    eprintln!(
                        "cannot reach {} ({missed} more failures since the last message): {e}; retrying",
                        opts.broker
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break Ending::Shutdown,
                    () = sleep_until(deadline) => break Ending::Timeout,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    link.disconnect().await;
    out.flush().await.context("cannot write the output")?;
    Ok((reader.tally(), ending))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What one poll of the client gave.
enum Polled {
    Connected,
    /// A subscription was answered: `Some(reason)` if refused.
    Subscribed(Option<String>),
    Message {
        topic: String,
        payload: bytes::Bytes,
        ack: Ack,
    },
    Other,
}

/// What acknowledges a message, per protocol.
enum Ack {
    V4(rumqttc::Publish),
    V5(Box<rumqttc::v5::mqttbytes::v5::Publish>),
}

/// The MQTT client of either protocol version.
enum Link {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl Link {
    fn new(opts: &ConsumeOptions) -> anyhow::Result<Link> {
        let settings = || -> anyhow::Result<ClientSettings<'_>> {
            let endpoint = match &opts.tls {
                Some(t) => Endpoint::Tls(&opts.broker, mqtt::tls::client_config(t)?),
                None => Endpoint::Tcp(&opts.broker),
            };
            Ok(ClientSettings {
                client_id: &opts.client_id,
                endpoint,
                keep_alive: Duration::from_secs(30),
                credentials: None,
                session: Session::Persistent,
                max_packet: (MAX_MESSAGE_BYTES + 64 * 1024, 64 * 1024),
            })
        };
        Ok(match opts.protocol {
            Protocol::V311 => {
                let (client, events) = rumqttc::AsyncClient::new(mqtt::options(settings()?), 64);
                Link::V4(client, Box::new(events))
            }
            Protocol::V5 => {
                let v5 = mqtt::options_v5(settings()?, V5Settings { topic_alias_max: 0 });
                let (client, events) = rumqttc::v5::AsyncClient::new(v5, 64);
                Link::V5(client, Box::new(events))
            }
        })
    }

    async fn poll(&mut self) -> Result<Polled, String> {
        use rumqttc::v5::mqttbytes::v5::Packet as P5;
        use rumqttc::{Event, Packet};
        match self {
            Link::V4(_, events) => match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => Ok(Polled::Connected),
                Event::Incoming(Packet::SubAck(a)) => Ok(Polled::Subscribed(
                    a.return_codes
                        .iter()
                        .find(|c| !matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
                        .map(|c| format!("{c:?}")),
                )),
                Event::Incoming(Packet::Publish(p)) => Ok(Polled::Message {
                    topic: p.topic.clone(),
                    payload: p.payload.clone(),
                    ack: Ack::V4(p),
                }),
                _ => Ok(Polled::Other),
            },
            Link::V5(_, events) => match events.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(P5::ConnAck(_)) => Ok(Polled::Connected),
                rumqttc::v5::Event::Incoming(P5::SubAck(a)) => Ok(Polled::Subscribed(
                    a.return_codes
                        .iter()
                        .find(|c| {
                            !matches!(
                                c,
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                            )
                        })
                        .map(|c| format!("{c:?}")),
                )),
                rumqttc::v5::Event::Incoming(P5::Publish(p)) => Ok(Polled::Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.clone(),
                    ack: Ack::V5(Box::new(p)),
                }),
                _ => Ok(Polled::Other),
            },
        }
    }

    async fn subscribe(&self, topics: &[String]) -> anyhow::Result<()> {
        for t in topics {
            match self {
                Link::V4(c, _) => c.subscribe(t, rumqttc::QoS::AtLeastOnce).await?,
                Link::V5(c, _) => {
                    c.subscribe(t, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                        .await?
                }
            }
        }
        Ok(())
    }

    async fn ack(&self, ack: Ack) -> anyhow::Result<()> {
        match (self, ack) {
            (Link::V4(c, _), Ack::V4(p)) => c.ack(&p).await?,
            (Link::V5(c, _), Ack::V5(p)) => c.ack(&p).await?,
            _ => {}
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        match self {
            Link::V4(c, events) => mqtt::disconnect(c, events).await,
            Link::V5(c, events) => {
                if c.try_disconnect().is_ok() {
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while events.poll().await.is_ok() {}
                    })
                    .await;
                }
            }
        }
    }
}
