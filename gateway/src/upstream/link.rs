//! The link task: owns the connection to one node of the upstream broker
//! (or cluster) at a time, reports what happens on the wire to the sink as
//! [`LinkEvent`]s, receives commands, publishes the status, and reconnects
//! with backoff, forever, until cancelled.
//!
//! **Nodes.** `brokers` lists the nodes of one cluster in the order tried.
//! A failed attempt or a lost connection moves on to the next node, with
//! the usual backoff across the list; the sink sends again, from the
//! acknowledged cursor, whatever was in flight.
//!
//! **Protocol.** With `protocol = "5"` each node is first spoken to in MQTT
//! 5. A node that refuses it (it closes the connection, or answers with
//! "unsupported protocol version" or with something that is not an MQTT 5
//! CONNACK) is tried at once in 3.1.1; if that connects, the node is spoken
//! to in 3.1.1 from then on and a warning says what is lost (PUBACK reason
//! codes). A rumqttc client and event loop are made fresh for every
//! attempt, so rumqttc never replays a previous connection behind the
//! sink's back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::wire::{Attempt, Conn, LinkError, Publisher, Refusal, Wire};
use super::{StatusIdentity, COMMAND_LOG_INTERVAL_MS};
use crate::backoff::Backoff;
use crate::config::{BrokerAddr, Protocol, UpstreamConfig};
use crate::metrics::Metrics;
use crate::mqtt::{ClientSettings, Endpoint, Session};
use crate::processor::Command;
use crate::reject::CommandLogLimiter;

/// What the link task reports to the sink.
pub(super) enum LinkEvent {
    /// Connected (CONNACK received); publish through `publisher`, at most
    /// `receive_max` at once when the broker set one.
    Up {
        epoch: u64,
        publisher: Publisher,
        receive_max: Option<u16>,
    },
    /// A publish left the client with this packet id.
    Sent { epoch: u64, pkid: u16 },
    /// The broker answered this packet id: acknowledged, or refused.
    Acked {
        epoch: u64,
        pkid: u16,
        refused: Option<Refusal>,
    },
    /// The connection is gone.
    Down { epoch: u64 },
}

/// What the link does besides carrying records: commands in, status out.
pub(super) struct LinkDuties {
    pub command_topic: String,
    pub commands: mpsc::Sender<Command>,
    pub status: StatusIdentity,
    pub status_interval: Duration,
}

/// What the link connects with: the upstream section and the TLS settings
/// prepared from it (files read once, at start or reload).
pub struct LinkPlan {
    pub cfg: UpstreamConfig,
    pub tls: Option<rumqttc::TlsConfiguration>,
}

impl LinkPlan {
    fn settings<'a>(&'a self, broker: &'a BrokerAddr, protocol: Protocol) -> ClientSettings<'a> {
        let cfg = &self.cfg;
        ClientSettings {
            client_id: &cfg.client_id,
            endpoint: match &self.tls {
                None => Endpoint::Tcp(broker),
                Some(tls) => Endpoint::Tls(broker, tls.clone()),
            },
            keep_alive: cfg.keep_alive,
            credentials: cfg.credentials.as_ref(),
            // rumqttc's own window is larger than ours, so ours is what
            // limits. MQTT 5 keeps the command subscription across
            // disconnects.
            session: match protocol {
                Protocol::V311 => Session::Clean {
                    inflight: cfg.inflight,
                },
                Protocol::V5 => Session::Resumable {
                    inflight: cfg.inflight,
                    expiry: super::wire::SESSION_EXPIRY,
                },
            },
            max_packet: (super::MAX_PACKET_BYTES, super::MAX_PACKET_BYTES),
        }
    }
}

/// How long a node that refused MQTT 5 is spoken to in 3.1.1 before MQTT 5
/// is tried again (at its next connection attempt; a working connection is
/// never dropped for it). A reset during one MQTT 5 CONNECT on a flaky link
/// looks like a refusal; this is how long such a mistake can last.
const V5_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The node tried next and the protocol each node is spoken to in.
struct Nodes {
    count: usize,
    current: usize,
    configured: Protocol,
    /// Per node: the protocol to use (3.1.1 once a node refused MQTT 5).
    speaks: Vec<Protocol>,
    /// Per node: when it was last moved to 3.1.1.
    downgraded_at: Vec<Option<std::time::Instant>>,
    /// Per node: it has accepted an MQTT 5 connection, so a failed MQTT 5
    /// attempt later is a failure, not a refusal of the protocol.
    spoke_v5: Vec<bool>,
    /// An attempt in 3.1.1 right after a node refused MQTT 5: if it fails
    /// too, the node is not marked as 3.1.1-only.
    trial: bool,
}

impl Nodes {
    fn new(count: usize, protocol: Protocol) -> Nodes {
        let count = count.max(1);
        Nodes {
            count,
            current: 0,
            configured: protocol,
            speaks: vec![protocol; count],
            downgraded_at: vec![None; count],
            spoke_v5: vec![false; count],
            trial: false,
        }
    }

    /// The protocol of the next attempt on the current node: MQTT 5 again
    /// once [`V5_RETRY_AFTER`] has passed since the node refused it.
    fn protocol(&mut self, now: std::time::Instant) -> Protocol {
        let n = self.current;
        if self.speaks[n] == Protocol::V311
            && self.configured == Protocol::V5
            && !self.trial
            && self.downgraded_at[n].is_some_and(|at| now.duration_since(at) >= V5_RETRY_AFTER)
        {
            self.speaks[n] = Protocol::V5;
            self.downgraded_at[n] = None;
        }
        self.speaks[n]
    }

    /// The current node accepted a connection in `protocol`.
    fn connected(&mut self, protocol: Protocol) {
        if protocol == Protocol::V5 {
            self.spoke_v5[self.current] = true;
        }
    }

    /// An attempt failed (or a connection was lost). Returns true when the
    /// same node is to be tried again at once in 3.1.1.
    fn failed(&mut self, protocol: Protocol, up: bool, e: &LinkError) -> bool {
        if !up && protocol == Protocol::V5 && !self.spoke_v5[self.current] && e.suggests_v311() {
            self.speaks[self.current] = Protocol::V311;
            self.downgraded_at[self.current] = Some(std::time::Instant::now());
            self.trial = true;
            return true;
        }
        if self.trial {
            // 3.1.1 did not help either: the refusal was something else.
            self.speaks[self.current] = Protocol::V5;
            self.downgraded_at[self.current] = None;
            self.trial = false;
        }
        self.current = (self.current + 1) % self.count;
        false
    }
}

/// Connects, reports events, reconnects with backoff, forever, until
/// cancelled.
pub(super) async fn drive_link(
    mut plan: LinkPlan,
    tx: mpsc::UnboundedSender<LinkEvent>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    duties: LinkDuties,
) {
    let LinkDuties {
        command_topic,
        commands,
        status,
        status_interval,
    } = duties;
    let brokers = &plan.cfg.brokers;
    let request_capacity = usize::from(plan.cfg.inflight) * 2 + 16;
    let mut backoff = Backoff::new(Duration::from_millis(250), plan.cfg.reconnect_backoff_max);
    let mut command_log = CommandLogLimiter::new(COMMAND_LOG_INTERVAL_MS);
    let mut nodes = Nodes::new(brokers.len(), plan.cfg.protocol);
    let mut last_node: Option<usize> = None;
    let mut epoch = 0u64;
    metrics.upstream_node.set(-1);
    'outer: loop {
        epoch += 1;
        let node = nodes.current;
        let Some(broker) = brokers.get(node) else {
            return;
        };
        // TLS files that could not be used are read again at every
        // attempt: fixing them needs no restart.
        if let (Some(tls), None) = (&plan.cfg.tls, &plan.tls) {
            match crate::mqtt::tls::client_config(tls) {
                Ok(t) => {
                    tracing::info!("The upstream's TLS files can be used now.");
                    plan.tls = Some(t);
                }
                Err(e) => {
                    let now = std::time::Instant::now();
                    let delay = backoff.failed(now);
                    if let Some(unlogged) = backoff.log_due(now) {
                        tracing::error!(error = %e, fix = %e.hint, retry_in = ?delay, failed_attempts_not_logged = unlogged, "Cannot connect to upstream: its TLS files cannot be used; buffering, and reading them again at every attempt. Fix the file named here.");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break 'outer,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue 'outer;
                }
            }
        }
        let protocol = nodes.protocol(std::time::Instant::now());
        // The last will is rendered for each connection: it names the
        // running configuration and sources (a reload changes them).
        let mut conn = Conn::new(
            protocol,
            Attempt {
                settings: plan.settings(broker, protocol),
                last_will: status.last_will(&metrics),
                request_capacity,
            },
        );
        let mut was_up = false;
        let mut status_due = tokio::time::interval(status_interval);
        status_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    if was_up {
                        // A clean offline replaces the birth; a clean
                        // DISCONNECT then discards the last will.
                        let bye = status.offline(true, &metrics, Some(crate::now_ms()));
                        let _ = conn.publish_retained(&status.topic, bye);
                    }
                    conn.disconnect().await;
                    break 'outer;
                }
                _ = status_due.tick(), if was_up => {
                    publish_status(&conn, &status, &metrics);
                    continue;
                }
                ev = conn.poll() => ev,
            };
            let link_ev = match ev {
                Ok(Wire::ConnAck {
                    receive_max,
                    alias_max,
                }) => {
                    backoff.connected(std::time::Instant::now());
                    nodes.connected(protocol);
                    was_up = true;
                    metrics.upstream_connections.inc();
                    if last_node.is_some_and(|n| n != node) {
                        metrics.upstream_failovers.inc();
                    }
                    last_node = Some(node);
                    metrics.upstream_node.set(node as i64);
                    metrics
                        .upstream_protocol_version
                        .set(protocol_level(protocol));
                    if nodes.trial {
                        nodes.trial = false;
                        tracing::warn!(%broker, "The broker does not speak MQTT 5; using MQTT 3.1.1 with it. A publish it refuses (by an ACL, say) cannot be told from a delivered one in 3.1.1: see docs/interop.md, or set protocol = \"3.1.1\" in [upstream] to silence this.");
                    }
                    tracing::info!(%broker, node, protocol = protocol_name(protocol), ?receive_max, topic_aliases = alias_max, "Connected to upstream.");
                    if let Err(e) = conn.subscribe(&command_topic) {
                        tracing::error!(topic = %command_topic, error = %e, "Cannot subscribe to the command topic.");
                    }
                    // The birth; the periodic status follows one interval on.
                    publish_status(&conn, &status, &metrics);
                    status_due.reset();
                    LinkEvent::Up {
                        epoch,
                        publisher: conn.publisher(alias_max),
                        receive_max,
                    }
                }
                Ok(Wire::Sent(pkid)) => LinkEvent::Sent { epoch, pkid },
                Ok(Wire::PubAck { pkid, refused }) => LinkEvent::Acked {
                    epoch,
                    pkid,
                    refused,
                },
                Ok(Wire::Message {
                    topic,
                    payload,
                    retain,
                }) if topic.as_ref() == command_topic.as_bytes() => {
                    // Anyone who can publish on the command topic chooses
                    // what arrives here: every outcome is counted, logged
                    // at most once per reason per interval, and bounded
                    // (the channel to the core is; a full one drops).
                    metrics.commands_received.inc();
                    let result =
                        crate::processor::parse_command(&payload, retain).and_then(|cmd| {
                            commands
                                .try_send(cmd)
                                .map_err(|_| crate::processor::CommandError::Overloaded)
                        });
                    if let Err(e) = result {
                        metrics.reject_command(e.reason());
                        if let Some(suppressed) = command_log.allow(e.reason(), crate::now_ms()) {
                            tracing::warn!(topic = %command_topic, reason = e.reason().name(), suppressed_since_last = suppressed, error = %e, "Rejected a command; counted in gateway_commands_rejected_total.");
                        }
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    metrics.upstream_disconnects.inc();
                    metrics.upstream_node.set(-1);
                    let _ = tx.send(LinkEvent::Down { epoch });
                    if nodes.failed(protocol, was_up, &e) {
                        tracing::debug!(%broker, error = %e, "MQTT 5 refused; trying MQTT 3.1.1.");
                        continue 'outer;
                    }
                    let now = std::time::Instant::now();
                    let delay = backoff.failed(now);
                    if let Some(unlogged) = backoff.log_due(now) {
                        // A certificate problem names the file and the fix.
                        let e =
                            crate::mqtt::tls::describe_connection_error(&e, plan.cfg.tls.as_ref());
                        let next = brokers.get(nodes.current).unwrap_or(broker);
                        if was_up {
                            tracing::warn!(%broker, error = %e, retry_in = ?delay, %next, "Lost the upstream connection; buffering and retrying.");
                        } else {
                            tracing::warn!(%broker, error = %e, retry_in = ?delay, %next, failed_attempts_not_logged = unlogged, "Cannot connect to upstream; buffering and retrying (logged at most every 5 minutes while it lasts).");
                        }
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break 'outer,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue 'outer;
                }
            };
            if tx.send(link_ev).is_err() {
                break 'outer;
            }
        }
    }
    metrics.upstream_node.set(-1);
}

/// The protocol level MQTT gives each version (4 is 3.1.1).
fn protocol_level(p: Protocol) -> i64 {
    match p {
        Protocol::V311 => 4,
        Protocol::V5 => 5,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    }
}

/// Publishes the retained online status (QoS 0: see [`super::status`]).
fn publish_status(conn: &Conn, status: &StatusIdentity, metrics: &Metrics) {
    let msg = status.online(metrics, crate::now_ms());
    if let Err(e) = conn.publish_retained(&status.topic, msg) {
        tracing::debug!(error = %e, "Status not queued; the next one follows.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eof() -> LinkError {
        LinkError::V5(rumqttc::v5::ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        )))
    }

    fn refused() -> LinkError {
        LinkError::V5(rumqttc::v5::ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )))
    }

    #[test]
    fn failures_move_on_to_the_next_node_round_the_list() {
        let mut n = Nodes::new(3, Protocol::V311);
        let e = LinkError::V4(rumqttc::ConnectionError::RequestsDone);
        assert!(!n.failed(Protocol::V311, true, &e));
        assert_eq!(n.current, 1);
        assert!(!n.failed(Protocol::V311, false, &e));
        assert!(!n.failed(Protocol::V311, false, &e));
        assert_eq!(n.current, 0);
    }

    #[test]
    fn a_node_that_refuses_mqtt5_is_tried_at_once_in_3_1_1_and_kept_there() {
        let mut n = Nodes::new(2, Protocol::V5);
        assert!(n.failed(Protocol::V5, false, &eof()));
        assert_eq!((n.current, n.speaks[0], n.trial), (0, Protocol::V311, true));
        // The 3.1.1 attempt connects (the link clears `trial`): node 0 stays
        // 3.1.1, node 1 is still asked for MQTT 5.
        n.trial = false;
        assert!(!n.failed(Protocol::V311, true, &eof()));
        assert_eq!(
            (n.current, n.speaks[0], n.speaks[1]),
            (1, Protocol::V311, Protocol::V5)
        );
    }

    #[test]
    fn a_node_that_refuses_both_protocols_is_asked_for_mqtt5_again() {
        let mut n = Nodes::new(2, Protocol::V5);
        assert!(n.failed(Protocol::V5, false, &eof()));
        assert!(!n.failed(Protocol::V311, false, &refused()));
        assert_eq!((n.current, n.speaks[0], n.trial), (1, Protocol::V5, false));
    }

    #[test]
    fn a_node_that_once_spoke_mqtt5_is_never_moved_to_3_1_1() {
        let mut n = Nodes::new(1, Protocol::V5);
        n.connected(Protocol::V5);
        // A reset during a later MQTT 5 CONNECT (a flaky cellular link).
        assert!(!n.failed(Protocol::V5, false, &eof()));
        assert_eq!(n.speaks[0], Protocol::V5);
    }

    #[test]
    fn mqtt5_is_tried_again_an_hour_after_a_node_refused_it() {
        let t0 = std::time::Instant::now();
        let mut n = Nodes::new(1, Protocol::V5);
        assert!(n.failed(Protocol::V5, false, &eof()));
        n.trial = false;
        n.connected(Protocol::V311);
        assert_eq!(n.protocol(t0), Protocol::V311);
        assert_eq!(
            n.protocol(t0 + V5_RETRY_AFTER + Duration::from_secs(1)),
            Protocol::V5
        );
    }

    #[test]
    fn a_lost_mqtt5_connection_is_not_taken_for_a_refusal_of_mqtt5() {
        let mut n = Nodes::new(1, Protocol::V5);
        assert!(!n.failed(Protocol::V5, true, &eof()));
        assert_eq!(n.speaks[0], Protocol::V5);
    }
}
