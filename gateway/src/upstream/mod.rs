//! The upstream sink: delivers records to the upstream broker with QoS 1.
//!
//! Two tasks cooperate. The *link* task ([`link::drive_link`]) owns the
//! connection to one node of the upstream broker at a time, in MQTT 5 or
//! 3.1.1 ([`wire`]), and reports what happens on the wire as
//! [`link::LinkEvent`]s. The *sink* task ([`run`]) owns the [`Buffer`]: it publishes
//! unsent records while fewer than `inflight` await a PUBACK, and advances
//! only on the broker's PUBACK (an MQTT 5 PUBACK with a refusing reason code
//! keeps the record: it is sent again later, see [`SinkState::refused`]).
//! rumqttc's `publish` returns no packet id, so
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

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::buffer::Buffer;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::model::Record;
use crate::mqtt;
use crate::processor::Command;

mod batch;
mod link;
pub mod status;
mod wire;

pub use link::LinkPlan;
use link::{LinkDuties, LinkEvent};
pub use status::StatusIdentity;
pub use wire::Refusal;
use wire::RefusalExt;

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

/// Reads what the upstream connection needs from files (TLS certificates
/// and keys), at start and at a reload. A reload refuses files that cannot
/// be used; at start the link reads them again at every attempt instead
/// (the gateway buffers meanwhile), so this fails only for a reload.
pub fn link_plan(cfg: &UpstreamConfig) -> anyhow::Result<LinkPlan> {
    let tls = match &cfg.tls {
        None => None,
        Some(tls) => Some(mqtt::tls::client_config(tls)?),
    };
    Ok(LinkPlan {
        cfg: cfg.clone(),
        tls,
    })
}

/// [`link_plan`] for a starting gateway: TLS files that cannot be used yet
/// are left for the link to read again.
pub fn link_plan_to_run(cfg: &UpstreamConfig) -> LinkPlan {
    let tls = cfg
        .tls
        .as_ref()
        .and_then(|tls| mqtt::tls::client_config(tls).ok());
    LinkPlan {
        cfg: cfg.clone(),
        tls,
    }
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
    pub plan: LinkPlan,
    pub status: StatusIdentity,
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
        let SinkSettings { plan, status } = settings;
        let cfg = plan.cfg.clone();
        let (tx, events) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(link::drive_link(
            plan,
            tx,
            metrics.clone(),
            cancel.clone(),
            LinkDuties {
                command_topic: cfg.command_topic.clone(),
                commands: commands.clone(),
                status,
                status_interval: cfg.status_interval,
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

    let mut state = SinkState::new(&cfg);
    buffer.set_batch_wait_ms(batch_wait_ms(&cfg));
    let mut input_open = true;
    let mut deadline: Option<Instant> = None;
    // When `maintain` runs next: after activity, or when a buffer timer is
    // due; `None` while nothing is pending.
    let mut maintain_at: Option<Instant> = None;
    let mut blocked = false;
    let mut stopping = false;
    let mut maintain = true;
    tracing::info!(brokers = ?cfg.brokers, client_id = %cfg.client_id, "Starting upstream sink.");
    loop {
        probe.answer();
        let now = crate::now_ms();
        // Timers and writes after new records or when a timer is due; never per PUBACK,
        // so draining a backlog costs O(1) per record.
        if maintain {
            buffer.maintain(now, state.publisher.is_some());
            maintain = false;
            maintain_at = buffer.next_due(now).map(|at| {
                Instant::now() + Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
            });
        }
        // Alarms just pushed wait a few ms for their group commit, so that a
        // burst shares one fsync (`next_due` includes it); nothing is
        // published before it.
        if buffer.commit_due().is_none() {
            state.pump(&mut buffer, &metrics, now, !input_open || stopping);
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
        if blocked || (state.publisher.is_some() && !buffer.is_empty()) {
            maintain_at = earliest(maintain_at, Instant::now() + MAINTAIN_AFTER);
        }
        // Refused records go back at their time; an open batch goes out at
        // its `max_delay`.
        if let Some(&(at, _)) = state.parked.front() {
            maintain_at = earliest(maintain_at, at);
        }
        if state.publisher.is_some() && state.has_room() {
            if let Some(at) = state.batch_due() {
                maintain_at = earliest(maintain_at, at);
            }
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
                    let was_up = state.publisher.is_some();
                    state.on_link_event(ev, &mut buffer, &metrics, &cfg);
                    maintain |= was_up != state.publisher.is_some();
                    maintain_at = earliest(maintain_at, Instant::now() + MAINTAIN_AFTER);
                }
                None => break,
            },
            new = relink.recv(), if relink_open => {
                let Some(new) = new else {
                    relink_open = false;
                    continue;
                };
                tracing::info!(brokers = ?new.plan.cfg.brokers, client_id = %new.plan.cfg.client_id, "Reconnecting upstream with the reloaded settings; the buffer stays.");
                link.stop().await;
                (link, cfg) = LinkTask::spawn(new, &metrics, &commands);
                // What was in flight is sent again on the new connection.
                state.on_link_event(LinkEvent::Down { epoch: state.epoch }, &mut buffer, &metrics, &cfg);
                state.reconfigure(&cfg);
                buffer.set_batch_wait_ms(batch_wait_ms(&cfg));
                maintain = true;
            }
            _ = sleep_until(maintain_at) => {
                maintain = true;
                state.unpark_due(&mut buffer, Instant::now());
            }
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

/// The longest a refused record waits before it is sent again.
const REFUSAL_RETRY_MAX: Duration = Duration::from_secs(60);

/// At most one log line per refusal reason in this interval.
const REFUSAL_LOG_INTERVAL_MS: i64 = 60_000;

struct SinkState {
    epoch: u64,
    publisher: Option<wire::Publisher>,
    /// QoS 1 publishes awaiting PUBACK at once: `upstream.inflight`, or
    /// fewer when the broker's receive maximum (MQTT 5) says so.
    window: usize,
    inflight_cfg: u16,
    /// Publishes on this connection whose packet id is not known yet.
    awaiting_pkid: VecDeque<Unit>,
    /// In flight on this connection: packet id to records and when the
    /// PUBLISH left the client (for `gateway_upstream_puback_latency_seconds`).
    pkid_to_seq: HashMap<u16, (Unit, Instant)>,
    /// Publishes the broker refused, with when each is sent again, in that
    /// order. Their records stay in flight for the buffer (their lane does
    /// not settle past them); they hold their places of the window.
    parked: VecDeque<(Instant, Unit)>,
    /// The open batch, when `[upstream.batch]` sends envelopes.
    batcher: Option<batch::Batcher>,
    /// Payload bytes of the publishes on the wire (awaiting their PUBACK).
    inflight_bytes: usize,
    /// Bounds `inflight_bytes` on a slow link ([`AckRate`]).
    ack_rate: AckRate,
    keep_alive: Duration,
    /// How long the next refused record waits: doubles with each round of
    /// refusals up to [`REFUSAL_RETRY_MAX`]; once a record that had been
    /// refused is acknowledged it starts again from one second (after
    /// the backoff's own quiet period).
    refusal_backoff: Backoff,
    /// Seqs refused at least once (at most four windows' worth): their acknowledgement
    /// ends the refusal backoff.
    refused: std::collections::HashSet<u64>,
    refusal_log: crate::reject::LogLimiter<Refusal>,
}

impl SinkState {
    fn new(cfg: &UpstreamConfig) -> SinkState {
        let inflight = cfg.inflight;
        SinkState {
            batcher: cfg
                .batch
                .enveloped()
                .then(|| batch::Batcher::new(cfg.batch.clone())),
            epoch: 0,
            publisher: None,
            window: usize::from(inflight),
            inflight_cfg: inflight,
            awaiting_pkid: VecDeque::new(),
            pkid_to_seq: HashMap::new(),
            parked: VecDeque::new(),
            refusal_backoff: Backoff::new(Duration::from_secs(1), REFUSAL_RETRY_MAX),
            refused: std::collections::HashSet::new(),
            refusal_log: crate::reject::LogLimiter::new(REFUSAL_LOG_INTERVAL_MS),
            inflight_bytes: 0,
            ack_rate: AckRate::new(),
            keep_alive: cfg.keep_alive,
        }
    }

    /// New connection settings (a reload), once the old link is gone.
    fn reconfigure(&mut self, cfg: &UpstreamConfig) {
        self.epoch = 0;
        self.keep_alive = cfg.keep_alive;
        self.ack_rate.reset();
        self.inflight_cfg = cfg.inflight;
        self.window = usize::from(cfg.inflight);
        self.batcher = cfg
            .batch
            .enveloped()
            .then(|| batch::Batcher::new(cfg.batch.clone()));
    }

    /// Publishes in flight or refused and waiting: what the window limits.
    fn messages_in_flight(&self) -> usize {
        self.awaiting_pkid.len() + self.pkid_to_seq.len() + self.parked.len()
    }

    /// Whether another publish may go out: the window has room, and the
    /// link has taken what is on it ([`AckRate`]; one publish always may).
    fn has_room(&self) -> bool {
        self.messages_in_flight() < self.window
            && (self.inflight_bytes == 0
                || self.inflight_bytes < self.ack_rate.limit(self.keep_alive))
    }

    /// A publish of `bytes` went to the client.
    fn sent(&mut self, unit: Unit) {
        if self.inflight_bytes == 0 {
            self.ack_rate.started(Instant::now());
        }
        self.inflight_bytes += unit.bytes();
        self.awaiting_pkid.push_back(unit);
    }

    /// Publishes what waits, while the window has room. `flush`: an open
    /// batch goes out without waiting for more records (shutdown).
    fn pump(&mut self, buffer: &mut Buffer, metrics: &Metrics, now_ms: i64, flush: bool) {
        if self.batcher.is_some() {
            self.pump_batches(buffer, metrics, now_ms, flush);
            return;
        }
        let max_age_ms = buffer.max_age_ms();
        while self.has_room() {
            let Some(publisher) = self.publisher.as_mut() else {
                return;
            };
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
            let msg = wire::Message {
                topic: &rec.topic,
                payload: &rec.payload,
                expiry_s: expiry_s(max_age_ms, rec.ts_ms, now_ms),
                content_type: wire::JSON,
                properties: &[("schema", SCHEMA_TEXT)],
            };
            match publisher.publish(&msg) {
                Ok(()) => {
                    self.sent(Unit::One(rec.seq, rec.payload.len()));
                    metrics.upstream_published.inc();
                    metrics.upstream_payload_bytes.add(rec.payload.len() as u64);
                }
                Err(e) => {
                    // The link is going down: take the records back and wait
                    // for the next connection.
                    tracing::debug!(error = %e, "Publish not queued; will retry.");
                    self.disconnected(buffer, metrics);
                    break;
                }
            }
        }
    }

    /// [`Self::pump`] with envelopes: each publish carries a batch.
    fn pump_batches(&mut self, buffer: &mut Buffer, metrics: &Metrics, now_ms: i64, flush: bool) {
        let max_age_ms = buffer.max_age_ms();
        while self.publisher.is_some() && self.has_room() {
            let Some(b) = self.batcher.as_mut() else {
                return;
            };
            b.fill(buffer, now_ms);
            if !b.ready(Instant::now(), flush) {
                return;
            }
            let sealed = match b.seal() {
                Ok(sealed) => sealed,
                Err(seqs) => {
                    for seq in seqs {
                        buffer.set_aside(seq, "unencodable", now_ms);
                    }
                    continue;
                }
            };
            let count = sealed.seqs.len().to_string();
            let msg = wire::Message {
                topic: &b.cfg.topic,
                payload: &sealed.payload,
                expiry_s: expiry_s(max_age_ms, sealed.oldest_ts_ms, now_ms),
                content_type: crate::envelope::content_type(&b.settings),
                properties: &[("schema", SCHEMA_TEXT), ("records", &count)],
            };
            let Some(publisher) = self.publisher.as_mut() else {
                return;
            };
            match publisher.publish(&msg) {
                Ok(()) => {
                    metrics.upstream_published.inc();
                    metrics.upstream_batches.inc();
                    metrics
                        .upstream_payload_bytes
                        .add(sealed.payload.len() as u64);
                    self.sent(Unit::Batch(sealed.seqs, sealed.payload.len()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Publish not queued; will retry.");
                    self.disconnected(buffer, metrics);
                    return;
                }
            }
        }
    }

    /// When the open batch is due (its `max_delay`).
    fn batch_due(&self) -> Option<Instant> {
        self.batcher.as_ref().and_then(|b| b.due_at())
    }

    /// The connection is gone: what was in flight (refused records too) is
    /// sent again on the next one.
    fn disconnected(&mut self, buffer: &mut Buffer, metrics: &Metrics) {
        self.publisher = None;
        self.awaiting_pkid.clear();
        self.pkid_to_seq.clear();
        self.parked.clear();
        self.inflight_bytes = 0;
        self.ack_rate.acked(0, Instant::now(), true);
        if let Some(b) = &mut self.batcher {
            b.reset();
        }
        // What was handed out goes out again on the next connection.
        metrics.upstream_retransmitted.add(buffer.rewind() as u64);
    }

    /// Refused records whose time has come go back to be sent again.
    fn unpark_due(&mut self, buffer: &mut Buffer, now: Instant) {
        while self.parked.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, unit)) = self.parked.pop_front() {
                for &seq in unit.seqs() {
                    buffer.retry_later(seq);
                }
            }
        }
    }

    fn on_link_event(
        &mut self,
        ev: LinkEvent,
        buffer: &mut Buffer,
        metrics: &Metrics,
        cfg: &UpstreamConfig,
    ) {
        match ev {
            LinkEvent::Up {
                epoch,
                publisher,
                receive_max,
            } => {
                let protocol = publisher.protocol();
                self.disconnected(buffer, metrics);
                self.epoch = epoch;
                self.publisher = Some(publisher);
                self.window = receive_max
                    .map_or(self.inflight_cfg, |r| r.min(self.inflight_cfg).max(1))
                    .into();
                metrics.upstream_connected.set(1);
                if self.window < usize::from(cfg.inflight) {
                    tracing::info!(inflight = self.window, configured = cfg.inflight, "The broker takes fewer publishes at once (receive maximum) than upstream.inflight; using its limit.");
                }
                if !buffer.is_empty() {
                    tracing::info!(
                        backlog = buffer.len(),
                        protocol = ?protocol,
                        "Upstream is back; delivering the backlog, alarms first."
                    );
                }
            }
            LinkEvent::Sent { epoch, pkid } if epoch == self.epoch && pkid != 0 => {
                if let Some(unit) = self.awaiting_pkid.pop_front() {
                    self.pkid_to_seq.insert(pkid, (unit, Instant::now()));
                }
            }
            LinkEvent::Acked {
                epoch,
                pkid,
                refused: None,
            } if epoch == self.epoch => {
                if let Some((unit, sent)) = self.pkid_to_seq.remove(&pkid) {
                    metrics.upstream_puback_latency.observe(sent.elapsed());
                    self.inflight_bytes = self.inflight_bytes.saturating_sub(unit.bytes());
                    self.ack_rate
                        .acked(unit.bytes(), Instant::now(), self.inflight_bytes == 0);
                    for &seq in unit.seqs() {
                        buffer.ack(seq);
                        metrics.upstream_acked.inc();
                        if self.refused.remove(&seq) {
                            self.refusal_backoff.connected(std::time::Instant::now());
                        }
                    }
                }
            }
            LinkEvent::Acked {
                epoch,
                pkid,
                refused: Some(why),
            } if epoch == self.epoch => {
                if let Some((unit, _)) = self.pkid_to_seq.remove(&pkid) {
                    self.inflight_bytes = self.inflight_bytes.saturating_sub(unit.bytes());
                    // A refusal measures nothing about the link.
                    self.ack_rate
                        .acked(0, Instant::now(), self.inflight_bytes == 0);
                    self.refuse(unit, why, buffer, metrics);
                }
            }
            LinkEvent::Down { epoch } if epoch == self.epoch => {
                self.disconnected(buffer, metrics);
                metrics.upstream_connected.set(0);
            }
            _ => {}
        }
    }

    /// The broker refused the record `seq` (MQTT 5 reason code): it is not
    /// delivered. It is counted, logged with the fix, and sent again after
    /// a backoff; meanwhile it holds a place of the in-flight window.
    fn refuse(&mut self, unit: Unit, why: Refusal, buffer: &mut Buffer, metrics: &Metrics) {
        let seq = unit.seqs().first().copied().unwrap_or(0);
        metrics.refused_upstream(why);
        // Refusals that arrive while others wait join their round: the
        // backoff grows once per round, not once per record.
        let now = Instant::now();
        let at = match self.parked.back() {
            Some(&(at, _)) if at > now => at,
            _ => now + self.refusal_backoff.failed(std::time::Instant::now()),
        };
        let delay = at - now;
        if self.refused.len() < self.window.max(1) * 4 {
            self.refused.insert(seq);
        }
        self.parked.push_back((at, unit));
        if let Some(suppressed) = self.refusal_log.allow(why, crate::now_ms()) {
            let topic = buffer.in_flight_topic(seq).unwrap_or_default();
            tracing::warn!(seq, topic = %topic, reason = why.name(), retry_in = ?delay, suppressed_since_last = suppressed, fix = why.fix(), "Upstream refused a record; it is kept in the buffer and sent again (counted in gateway_upstream_refused_total).");
        }
    }
}

/// The records one publish carries: one, or an envelope's.
/// (With the payload bytes of the publish.)
enum Unit {
    One(u64, usize),
    Batch(Vec<u64>, usize),
}

impl Unit {
    fn seqs(&self) -> &[u64] {
        match self {
            Unit::One(seq, _) => std::slice::from_ref(seq),
            Unit::Batch(seqs, _) => seqs,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Unit::One(_, b) | Unit::Batch(_, b) => *b,
        }
    }
}

/// The rate at which the broker acknowledges payload bytes, measured over
/// intervals of at least a second while something is in flight, smoothed.
/// On a slow link (a cellular uplink with a bandwidth cap) it bounds what
/// the sink puts in flight, so that a keep-alive ping never waits longer
/// than half the keep-alive behind queued publishes and PUBACKs do not
/// take longer than the broker or the link allows.
#[derive(Debug)]
struct AckRate {
    bytes_per_s: Option<f64>,
    interval_start: Option<Instant>,
    interval_bytes: usize,
}

impl AckRate {
    /// What may be in flight before anything was measured, and the least
    /// ever allowed.
    const FLOOR_BYTES: usize = 32 * 1024;
    /// The most that is ever in flight, however fast the link.
    const CEILING_BYTES: usize = 16 * 1024 * 1024;

    fn new() -> AckRate {
        AckRate {
            bytes_per_s: None,
            interval_start: None,
            interval_bytes: 0,
        }
    }

    /// Something was sent while nothing was in flight: measuring starts.
    fn started(&mut self, now: Instant) {
        if self.interval_start.is_none() {
            self.interval_start = Some(now);
            self.interval_bytes = 0;
        }
    }

    /// `bytes` were acknowledged; `idle` when nothing is in flight after.
    fn acked(&mut self, bytes: usize, now: Instant, idle: bool) {
        let Some(start) = self.interval_start else {
            return;
        };
        self.interval_bytes += bytes;
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        if elapsed >= 1.0 {
            let rate = self.interval_bytes as f64 / elapsed;
            self.bytes_per_s = Some(match self.bytes_per_s {
                None => rate,
                Some(r) => 0.7 * r + 0.3 * rate,
            });
            self.interval_start = Some(now);
            self.interval_bytes = 0;
        }
        if idle {
            // An idle link measures nothing; the next burst starts anew.
            self.interval_start = None;
        }
    }

    /// The most payload bytes to have in flight with this keep-alive.
    fn limit(&self, keep_alive: Duration) -> usize {
        match self.bytes_per_s {
            None => Self::FLOOR_BYTES,
            Some(r) => {
                let bytes = r * keep_alive.as_secs_f64() / 2.0;
                (bytes as usize).clamp(Self::FLOOR_BYTES, Self::CEILING_BYTES)
            }
        }
    }

    /// Forget the link (a new connection may be another node or path).
    fn reset(&mut self) {
        *self = AckRate::new();
    }
}

/// How long a record may wait for its batch: `max_delay` when batching.
fn batch_wait_ms(cfg: &UpstreamConfig) -> i64 {
    if cfg.batch.enveloped() {
        i64::try_from(cfg.batch.max_delay.as_millis()).unwrap_or(i64::MAX)
    } else {
        0
    }
}

/// The payload schema, as the `schema` user property says it.
const SCHEMA_TEXT: &str = {
    // One digit per version so far; a compile error when that changes.
    const _: () = assert!(crate::model::payload::SCHEMA < 10);
    match crate::model::payload::SCHEMA {
        1 => "1",
        _ => "?",
    }
};

/// The MQTT 5 message expiry of a record measured at `ts_ms`: what is left
/// of `buffer.max_age` (at least a second), none when records never expire.
fn expiry_s(max_age_ms: i64, ts_ms: i64, now_ms: i64) -> Option<u32> {
    if max_age_ms <= 0 {
        return None;
    }
    let left_ms = max_age_ms
        .saturating_sub(now_ms.saturating_sub(ts_ms))
        .max(1000);
    Some(u32::try_from((left_ms + 999) / 1000).unwrap_or(u32::MAX))
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
    fn on_a_slow_link_what_is_in_flight_follows_the_acknowledged_rate() {
        let t0 = Instant::now();
        let ka = Duration::from_secs(30);
        let mut r = AckRate::new();
        // Nothing measured yet: a small start.
        assert_eq!(r.limit(ka), AckRate::FLOOR_BYTES);
        r.started(t0);
        // 8 KB/s, a 64 kbit/s uplink: half a keep-alive of it.
        for s in 1..=10 {
            r.acked(8_000, t0 + Duration::from_secs(s), false);
        }
        assert_eq!(r.limit(ka), 120_000);
        // A fast link: bounded by the ceiling.
        let mut fast = AckRate::new();
        fast.started(t0);
        fast.acked(100_000_000, t0 + Duration::from_secs(1), true);
        assert_eq!(fast.limit(ka), AckRate::CEILING_BYTES);
        // An idle spell measures nothing: the rate stands.
        fast.acked(10, t0 + Duration::from_secs(100), true);
        assert_eq!(fast.limit(ka), AckRate::CEILING_BYTES);
    }

    #[test]
    fn message_expiry_is_what_is_left_of_max_age() {
        assert_eq!(expiry_s(0, 0, 5_000), None);
        assert_eq!(expiry_s(60_000, 10_000, 20_000), Some(50));
        // Already older than max_age: the broker still gets a second.
        assert_eq!(expiry_s(60_000, 0, 600_000), Some(1));
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
