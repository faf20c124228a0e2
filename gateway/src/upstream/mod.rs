//! The upstream sink: delivers records to the upstream broker with QoS 1.
//!
//! Two tasks cooperate. The *link* task ([`drive_link`]) owns a rumqttc event
//! loop, a fresh one per connection attempt so that rumqttc never replays a
//! previous session behind our back, and reports what happens on the wire as
//! [`LinkEvent`]s. The *sink* task ([`run`]) owns the [`Buffer`]: it publishes
//! unsent records while fewer than `inflight` await a PUBACK, and advances
//! only on the broker's PUBACK. rumqttc's `publish` returns no packet id, so
//! the sink correlates them itself: publishes leave the client in the order
//! they were queued, so the n-th `Outgoing::Publish(pkid)` of a connection
//! belongs to the n-th record published on it.
//!
//! Shutdown: when the pipeline closes the record channel, everything is
//! written to the durable buffer and fsynced first; then the sink keeps
//! delivering for `shutdown_grace`. What is left is delivered after restart.
//! From the moment shutdown begins the sink takes every record, even with
//! `when_full = "block"` and a full buffer (what does not fit is dropped
//! and counted), so that the core can flush its windows; and it stops at
//! the latest [`SHUTDOWN_FLUSH_BOUND`] after `shutdown_grace`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::model::Record;
use crate::mqtt::{self, ClientSettings, Endpoint, Session};
use crate::processor::Command;
use crate::reject::CommandLogLimiter;

pub mod status;

pub use status::StatusIdentity;

/// What the link task reports to the sink.
#[derive(Debug)]
enum LinkEvent {
    /// Connected (CONNACK received); publish through this client.
    Up { epoch: u64, client: AsyncClient },
    /// A publish left the client with this packet id.
    Sent { epoch: u64, pkid: u16 },
    /// The broker acknowledged this packet id.
    Acked { epoch: u64, pkid: u16 },
    /// The connection is gone.
    Down { epoch: u64 },
}

/// The largest packet the upstream link sends or takes.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Why a record cannot be published at all: the client would refuse it, or
/// it would make the connection fail (rumqttc drops the connection on an
/// outgoing packet above its limit), at every attempt.
pub fn unpublishable(topic: &str, payload_len: usize) -> Option<&'static str> {
    if topic.is_empty() {
        Some("empty_topic")
    } else if topic.contains(['+', '#', '\0']) {
        Some("wildcard_in_topic")
    } else if topic.len() > usize::from(u16::MAX) {
        Some("topic_too_long")
    } else if topic.len() + payload_len + 16 > MAX_PACKET_BYTES {
        Some("too_large")
    } else {
        None
    }
}

/// Builds the rumqttc options for the upstream connection.
pub fn mqtt_options(cfg: &UpstreamConfig) -> anyhow::Result<MqttOptions> {
    let endpoint = match &cfg.tls {
        None => Endpoint::Tcp(&cfg.broker),
        Some(tls) => Endpoint::Tls(&cfg.broker, mqtt::tls::client_config(tls)?),
    };
    Ok(mqtt::options(ClientSettings {
        client_id: &cfg.client_id,
        endpoint,
        keep_alive: cfg.keep_alive,
        credentials: cfg.credentials.as_ref(),
        // rumqttc's own window is larger than ours, so ours is what limits.
        session: Session::Clean {
            inflight: cfg.inflight,
        },
        max_packet: (MAX_PACKET_BYTES, MAX_PACKET_BYTES),
    }))
}

/// At most one log line per rejection reason of commands in this interval.
pub const COMMAND_LOG_INTERVAL_MS: i64 = 10_000;

/// After records, acknowledgements or a change of the link, and while
/// records wait for a connected upstream or the core for room, the buffer's
/// periodic work runs again this much later (so that a stream of PUBACKs
/// costs one `maintain` per interval, not one each). Otherwise the sink
/// sleeps until the buffer's next timer ([`Buffer::next_due`]).
const MAINTAIN_AFTER: Duration = Duration::from_millis(100);

/// How much longer than `shutdown_grace` the sink waits, from the start of
/// shutdown, for the core to flush its windows.
pub const SHUTDOWN_FLUSH_BOUND: Duration = Duration::from_secs(10);

/// The sink's channels: records from the core, commands to it, and new
/// connection settings at a reload.
pub struct SinkIo {
    pub records: mpsc::Receiver<Record>,
    pub commands: mpsc::Sender<Command>,
    pub relink: mpsc::Receiver<SinkSettings>,
}

/// What the sink connects with and how it introduces itself.
pub struct SinkSettings {
    pub cfg: UpstreamConfig,
    pub opts: MqttOptions,
    pub status: StatusIdentity,
}

/// What the link does besides carrying records: commands in, status out.
struct LinkDuties {
    command_topic: String,
    commands: mpsc::Sender<Command>,
    status: StatusIdentity,
    status_interval: Duration,
    /// Names the TLS files in connection errors.
    tls: Option<crate::config::TlsConfig>,
}

/// The link task of one connection configuration, with what the sink needs
/// to talk to it and to stop it.
struct LinkTask {
    events: mpsc::UnboundedReceiver<LinkEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LinkTask {
    /// Starts the link task of `settings`; returns it with the upstream
    /// section, which the sink keeps.
    fn spawn(
        settings: SinkSettings,
        metrics: &Arc<Metrics>,
        commands: &mpsc::Sender<Command>,
    ) -> (LinkTask, UpstreamConfig) {
        let SinkSettings { cfg, opts, status } = settings;
        let (tx, events) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(drive_link(
            opts,
            cfg.reconnect_backoff_max,
            usize::from(cfg.inflight) * 2 + 16,
            tx,
            metrics.clone(),
            cancel.clone(),
            LinkDuties {
                command_topic: cfg.command_topic.clone(),
                commands: commands.clone(),
                status,
                status_interval: cfg.status_interval,
                tls: cfg.tls.clone(),
            },
        ));
        let link = LinkTask {
            events,
            cancel,
            task,
        };
        (link, cfg)
    }

    /// Cancels the link task (it says goodbye: a clean offline status, then
    /// DISCONNECT) and waits for it.
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Runs the sink until the record channel closes and the buffer drains (or
/// the grace period ends). Settings from `relink` (a reload changed the
/// upstream connection) replace the link task: the connection is closed and
/// opened again with the new options; the buffer, and what it holds, stays.
pub async fn run(
    settings: SinkSettings,
    mut buffer: Buffer,
    io: SinkIo,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    probe: Arc<crate::supervisor::Probe>,
) {
    let SinkIo {
        mut records,
        commands,
        mut relink,
    } = io;
    let (mut link, mut cfg) = LinkTask::spawn(settings, &metrics, &commands);
    let mut relink_open = true;

    let mut state = SinkState {
        epoch: 0,
        client: None,
        awaiting_pkid: VecDeque::new(),
        pkid_to_seq: HashMap::new(),
    };
    let mut window = usize::from(cfg.inflight);
    let mut input_open = true;
    let mut deadline: Option<Instant> = None;
    // When `maintain` runs next: after activity, or when a buffer timer is
    // due; `None` while nothing is pending.
    let mut maintain_at: Option<Instant> = None;
    let mut blocked = false;
    let mut stopping = false;
    let mut maintain = true;
    tracing::info!(broker = %cfg.broker, client_id = %cfg.client_id, "Starting upstream sink.");
    loop {
        probe.answer();
        let now = crate::now_ms();
        // Timers and writes after new records or when a timer is due; never per PUBACK,
        // so draining a backlog costs O(1) per record.
        if maintain {
            buffer.maintain(now, state.client.is_some());
            maintain = false;
            maintain_at = buffer.next_due(now).map(|at| {
                Instant::now() + Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
            });
        }
        // Alarms just pushed wait a few ms for their group commit, so that a
        // burst shares one fsync (`next_due` includes it); nothing is
        // published before it.
        if buffer.commit_due().is_none() {
            state.pump(&mut buffer, window, &cfg, &metrics, now);
        }
        if !input_open && buffer.is_empty() {
            break;
        }
        // Once shutdown begins, nothing may hold the core back: records that
        // do not fit are dropped and counted by the buffer.
        let room = buffer.has_room() || stopping;
        if room == blocked {
            blocked = !room;
            if blocked {
                tracing::warn!("The buffer is full and buffer.when_full = \"block\": no longer taking records; sources are held back.");
            } else {
                tracing::info!("The buffer has room again; taking records.");
            }
        }
        // While records wait for a connected upstream, or the core waits for
        // room, something is pending: look again at least every
        // MAINTAIN_AFTER, as the fixed tick did.
        if blocked || (state.client.is_some() && !buffer.is_empty()) {
            maintain_at = earliest(maintain_at, Instant::now() + MAINTAIN_AFTER);
        }
        tokio::select! {
            _ = probe.asked() => {}
            r = records.recv(), if input_open && room => match r {
                Some(rec) => {
                    maintain = true;
                    maintain_at = earliest(maintain_at, Instant::now() + MAINTAIN_AFTER);
                    let now = crate::now_ms();
                    buffer.push(rec, now);
                    while buffer.has_room() {
                        match records.try_recv() {
                            Ok(rec) => buffer.push(rec, now),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    input_open = false;
                    deadline = earliest(deadline, Instant::now() + cfg.shutdown_grace);
                    // Nothing accepted may be lost to a power cut during the
                    // grace period: write and fsync everything first.
                    buffer.close(crate::now_ms());
                    tracing::info!(queued = buffer.len(), grace = ?cfg.shutdown_grace, "Pipeline stopped; the backlog is on disk; delivering what we can.");
                }
            },
            ev = link.events.recv() => match ev {
                Some(ev) => {
                    let was_up = state.client.is_some();
                    state.on_link_event(ev, &mut buffer, &metrics);
                    maintain |= was_up != state.client.is_some();
                    maintain_at = earliest(maintain_at, Instant::now() + MAINTAIN_AFTER);
                }
                None => break,
            },
            new = relink.recv(), if relink_open => {
                let Some(new) = new else {
                    relink_open = false;
                    continue;
                };
                tracing::info!(broker = %new.cfg.broker, client_id = %new.cfg.client_id, "Reconnecting upstream with the reloaded settings; the buffer stays.");
                link.stop().await;
                (link, cfg) = LinkTask::spawn(new, &metrics, &commands);
                // What was in flight is sent again on the new connection.
                state.on_link_event(LinkEvent::Down { epoch: state.epoch }, &mut buffer, &metrics);
                state.epoch = 0;
                window = usize::from(cfg.inflight);
                maintain = true;
            }
            _ = sleep_until(maintain_at) => maintain = true,
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                deadline = earliest(deadline, Instant::now() + cfg.shutdown_grace + SHUTDOWN_FLUSH_BOUND);
            }
            _ = sleep_until(deadline) => break,
        }
    }
    // Whatever the core still sent is kept if it fits; the core counts what
    // it could not send after this.
    records.close();
    let now = crate::now_ms();
    while let Ok(rec) = records.try_recv() {
        buffer.push(rec, now);
    }
    buffer.rewind();
    buffer.close(crate::now_ms());
    let left = buffer.len();
    if left > 0 {
        metrics.upstream_undelivered_at_shutdown.add(left);
        tracing::info!(undelivered = left, "Stopping with records not yet acknowledged by upstream; they are in the buffer and will be delivered after restart.");
    }
    // The link says goodbye (a clean offline status, then DISCONNECT).
    link.stop().await;
    metrics.upstream_connected.set(0);
    tracing::info!("Upstream sink stopped.");
}

/// The earlier of a deadline already set and a new one. The sink learns of
/// shutdown twice (the token, and its input closing) in either order; the
/// second must never push back the first.
fn earliest(deadline: Option<Instant>, at: Instant) -> Option<Instant> {
    Some(deadline.map_or(at, |d| d.min(at)))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct SinkState {
    epoch: u64,
    client: Option<AsyncClient>,
    /// Seqs published on this connection whose packet id is not known yet.
    awaiting_pkid: VecDeque<u64>,
    /// In flight on this connection: packet id to seq and when the PUBLISH
    /// left the client (for `gateway_upstream_puback_latency_seconds`).
    pkid_to_seq: HashMap<u16, (u64, Instant)>,
}

impl SinkState {
    fn pump(
        &mut self,
        buffer: &mut Buffer,
        window: usize,
        cfg: &UpstreamConfig,
        metrics: &Metrics,
        now_ms: i64,
    ) {
        let Some(client) = &self.client else {
            return;
        };
        while buffer.in_flight() < window {
            let Some(rec) = buffer.next_unsent(now_ms) else {
                break;
            };
            if let Some(reason) = unpublishable(&rec.topic, rec.payload.len()) {
                // Retrying cannot help, and must not block what follows.
                buffer.set_aside(rec.seq, reason, now_ms);
                continue;
            }
            // The buffer keeps the record until its PUBACK; the client takes
            // its own copy of topic and payload (its non-blocking publish
            // accepts nothing shared).
            match client.try_publish(rec.topic.as_str(), cfg.qos, false, rec.payload.as_slice()) {
                Ok(()) => {
                    self.awaiting_pkid.push_back(rec.seq);
                    metrics.upstream_published.inc();
                }
                Err(e) => {
                    // The link is going down: take the records back and wait
                    // for the next connection.
                    tracing::debug!(error = %e, "Publish not queued; will retry.");
                    buffer.rewind();
                    self.awaiting_pkid.clear();
                    self.pkid_to_seq.clear();
                    self.client = None;
                    break;
                }
            }
        }
    }

    fn on_link_event(&mut self, ev: LinkEvent, buffer: &mut Buffer, metrics: &Metrics) {
        match ev {
            LinkEvent::Up { epoch, client } => {
                self.epoch = epoch;
                self.client = Some(client);
                self.awaiting_pkid.clear();
                self.pkid_to_seq.clear();
                let resent = buffer.rewind();
                metrics.upstream_retransmitted.add(resent as u64);
                metrics.upstream_connected.set(1);
                if !buffer.is_empty() {
                    tracing::info!(
                        backlog = buffer.len(),
                        "Upstream is back; delivering the backlog, alarms first."
                    );
                }
            }
            LinkEvent::Sent { epoch, pkid } if epoch == self.epoch && pkid != 0 => {
                if let Some(seq) = self.awaiting_pkid.pop_front() {
                    self.pkid_to_seq.insert(pkid, (seq, Instant::now()));
                }
            }
            LinkEvent::Acked { epoch, pkid } if epoch == self.epoch => {
                if let Some((seq, sent)) = self.pkid_to_seq.remove(&pkid) {
                    buffer.ack(seq);
                    metrics.upstream_acked.inc();
                    metrics.upstream_puback_latency.observe(sent.elapsed());
                }
            }
            LinkEvent::Down { epoch } if epoch == self.epoch => {
                self.client = None;
                self.awaiting_pkid.clear();
                self.pkid_to_seq.clear();
                buffer.rewind();
                metrics.upstream_connected.set(0);
            }
            _ => {}
        }
    }
}

/// Owns the connection: connects, reports events, reconnects with backoff,
/// forever, until cancelled.
async fn drive_link(
    opts: MqttOptions,
    backoff_max: Duration,
    request_capacity: usize,
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
        tls,
    } = duties;
    let mut backoff = Backoff::new(Duration::from_millis(250), backoff_max);
    let mut command_log = CommandLogLimiter::new(COMMAND_LOG_INTERVAL_MS);
    let mut epoch = 0u64;
    let broker = format!("{}:{}", opts.broker_address().0, opts.broker_address().1);
    'outer: loop {
        epoch += 1;
        // The last will is rendered for each connection: it names the
        // running configuration and sources (a reload changes them).
        let mut opts = opts.clone();
        opts.set_last_will(status.last_will(&metrics));
        let (client, mut eventloop) = AsyncClient::new(opts, request_capacity);
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
                        let _ = client.try_publish(status.topic.clone(), QoS::AtMostOnce, true, bye);
                    }
                    mqtt::disconnect(&client, &mut eventloop).await;
                    break 'outer;
                }
                _ = status_due.tick(), if was_up => {
                    publish_status(&client, &status, &metrics);
                    continue;
                }
                ev = eventloop.poll() => ev,
            };
            let link_ev = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.connected(std::time::Instant::now());
                    was_up = true;
                    metrics.upstream_connections.inc();
                    tracing::info!(%broker, "Connected to upstream.");
                    if let Err(e) =
                        client.try_subscribe(command_topic.clone(), rumqttc::QoS::AtLeastOnce)
                    {
                        tracing::error!(topic = %command_topic, error = %e, "Cannot subscribe to the command topic.");
                    }
                    // The birth; the periodic status follows one interval on.
                    publish_status(&client, &status, &metrics);
                    status_due.reset();
                    LinkEvent::Up {
                        epoch,
                        client: client.clone(),
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Sent { epoch, pkid },
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == command_topic => {
                    // Anyone who can publish on the command topic chooses
                    // what arrives here: every outcome is counted, logged
                    // at most once per reason per interval, and bounded
                    // (the channel to the core is; a full one drops).
                    metrics.commands_received.inc();
                    let result =
                        crate::processor::parse_command(&p.payload, p.retain).and_then(|cmd| {
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
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked {
                    epoch,
                    pkid: ack.pkid,
                },
                Ok(_) => continue,
                Err(e) => {
                    metrics.upstream_disconnects.inc();
                    let now = std::time::Instant::now();
                    let delay = backoff.failed(now);
                    if let Some(unlogged) = backoff.log_due(now) {
                        let e = mqtt::tls::describe_connection_error(&e, tls.as_ref());
                        if was_up {
                            tracing::warn!(%broker, error = %e, retry_in = ?delay, "Lost the upstream connection; buffering and retrying.");
                        } else {
                            tracing::warn!(%broker, error = %e, retry_in = ?delay, failed_attempts_not_logged = unlogged, "Cannot connect to upstream; buffering and retrying (logged at most every 5 minutes while it lasts).");
                        }
                    }
                    let _ = tx.send(LinkEvent::Down { epoch });
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
}

/// Publishes the retained online status (QoS 0: see [`status`]).
fn publish_status(client: &AsyncClient, status: &StatusIdentity, metrics: &Metrics) {
    let msg = status.online(metrics, crate::now_ms());
    if let Err(e) = client.try_publish(status.topic.clone(), QoS::AtMostOnce, true, msg) {
        tracing::debug!(error = %e, "Status not queued; the next one follows.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_is_not_extended_when_the_shutdown_token_is_seen_last() {
        let t0 = Instant::now();
        let grace_end = t0 + Duration::from_secs(5);
        let flush_bound = t0 + Duration::from_secs(15);
        // Input closed first, then the token: the grace end stands.
        assert_eq!(
            earliest(earliest(None, grace_end), flush_bound),
            Some(grace_end)
        );
        // Token first, then the input: the grace end is earlier and wins.
        assert_eq!(
            earliest(earliest(None, flush_bound), grace_end),
            Some(grace_end)
        );
    }

    #[test]
    fn records_the_client_would_refuse_are_recognised() {
        assert_eq!(unpublishable("gw/s/a+b", 10), Some("wildcard_in_topic"));
        assert_eq!(unpublishable("gw/#", 10), Some("wildcard_in_topic"));
        assert_eq!(unpublishable("", 10), Some("empty_topic"));
        assert_eq!(
            unpublishable(&"t".repeat(70_000), 10),
            Some("topic_too_long")
        );
        assert_eq!(unpublishable("gw/s", MAX_PACKET_BYTES), Some("too_large"));
        assert_eq!(unpublishable("gw/summary/l1/m1/temp", 300), None);
        // rumqttc's own check agrees on what it refuses.
        assert!(!rumqttc::valid_topic("gw/s/a+b"));
        assert!(rumqttc::valid_topic("gw/summary/l1/m1/temp"));
    }
}
