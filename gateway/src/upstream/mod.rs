//! The upstream sink: delivers records to the upstream broker with QoS 1.
//!
//! Two tasks cooperate. The *link* task ([`drive_link`]) owns a rumqttc event
//! loop, a fresh one per connection attempt so that rumqttc never replays a
//! previous session behind our back, and reports what happens on the wire as
//! [`LinkEvent`]s. The *sink* task ([`run`]) owns the [`Outbox`]: it publishes
//! unsent records while fewer than `inflight` await a PUBACK, and advances
//! only on the broker's PUBACK. rumqttc's `publish` returns no packet id, so
//! the sink correlates them itself: publishes leave the client in the order
//! they were queued, so the n-th `Outgoing::Publish(pkid)` of a connection
//! belongs to the n-th record published on it.
//!
//! Shutdown: when the pipeline closes the record channel, the sink keeps
//! delivering for `shutdown_grace`, then reports what is left undelivered.

mod queue;
mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use queue::{MemoryQueue, Outbox};

use crate::backoff::Backoff;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::processor::Record;

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

/// Builds the rumqttc options for the upstream connection.
pub fn mqtt_options(cfg: &UpstreamConfig) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.broker.host.clone(),
        cfg.broker.port,
    );
    opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
    opts.set_clean_session(true);
    // rumqttc's own window is larger than ours, so ours is what limits.
    opts.set_inflight(cfg.inflight.saturating_add(8));
    opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some((u, p)) = &cfg.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::tls_with_config(tls::client_config(tls)?));
    }
    Ok(opts)
}

/// Runs the sink until the record channel closes and the queue drains (or the
/// grace period ends).
pub async fn run(
    cfg: UpstreamConfig,
    opts: MqttOptions,
    mut outbox: impl Outbox,
    mut records: mpsc::Receiver<Record>,
    metrics: Arc<Metrics>,
) {
    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    let link_cancel = CancellationToken::new();
    let link = tokio::spawn(drive_link(
        opts,
        cfg.reconnect_backoff_max,
        usize::from(cfg.inflight) * 2 + 16,
        link_tx,
        metrics.clone(),
        link_cancel.clone(),
    ));

    let mut state = SinkState {
        epoch: 0,
        client: None,
        awaiting_pkid: VecDeque::new(),
        pkid_to_seq: HashMap::new(),
    };
    let window = usize::from(cfg.inflight);
    let mut input_open = true;
    let mut deadline: Option<Instant> = None;
    tracing::info!(broker = %cfg.broker, client_id = %cfg.client_id, "Starting upstream sink.");
    loop {
        state.pump(&mut outbox, window, &cfg, &metrics);
        metrics
            .upstream_queue_records
            .store(outbox.len() as i64, Ordering::Relaxed);
        metrics
            .upstream_queue_bytes
            .store(outbox.bytes() as i64, Ordering::Relaxed);
        if !input_open && outbox.is_empty() {
            break;
        }
        tokio::select! {
            r = records.recv(), if input_open => match r {
                Some(rec) => {
                    accept(&mut outbox, rec, &metrics);
                    while let Ok(rec) = records.try_recv() {
                        accept(&mut outbox, rec, &metrics);
                    }
                }
                None => {
                    input_open = false;
                    deadline = Some(Instant::now() + cfg.shutdown_grace);
                    tracing::info!(queued = outbox.len(), grace = ?cfg.shutdown_grace, "Pipeline stopped; delivering what is queued.");
                }
            },
            ev = link_rx.recv() => match ev {
                Some(ev) => state.on_link_event(ev, &mut outbox, &metrics),
                None => break,
            },
            _ = sleep_until(deadline) => break,
        }
    }
    let left = outbox.len() as u64;
    if left > 0 {
        metrics
            .upstream_undelivered_at_shutdown
            .fetch_add(left, Ordering::Relaxed);
        tracing::warn!(undelivered = left, "Stopping with records not acknowledged by upstream; they are lost with the in-memory queue.");
    }
    if let Some(client) = state.client.take() {
        let _ = client.try_disconnect();
    }
    link_cancel.cancel();
    let _ = link.await;
    metrics.upstream_connected.store(0, Ordering::Relaxed);
    tracing::info!("Upstream sink stopped.");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn accept(outbox: &mut impl Outbox, rec: Record, metrics: &Metrics) {
    let seq = rec.seq;
    let dropped = outbox.push(rec);
    if dropped > 0 {
        metrics
            .upstream_dropped_queue_full
            .fetch_add(dropped as u64, Ordering::Relaxed);
        tracing::warn!(dropped, newest_seq = seq, "The upstream queue is full; dropped the oldest records (raise upstream.queue_max_bytes to hold a longer outage).");
    }
}

struct SinkState {
    epoch: u64,
    client: Option<AsyncClient>,
    /// Seqs published on this connection whose packet id is not known yet.
    awaiting_pkid: VecDeque<u64>,
    pkid_to_seq: HashMap<u16, u64>,
}

impl SinkState {
    fn pump(
        &mut self,
        outbox: &mut impl Outbox,
        window: usize,
        cfg: &UpstreamConfig,
        metrics: &Metrics,
    ) {
        let Some(client) = &self.client else {
            return;
        };
        while outbox.in_flight() < window {
            let Some(rec) = outbox.next_unsent() else {
                break;
            };
            match client.try_publish(rec.topic.clone(), cfg.qos, false, rec.payload.clone()) {
                Ok(()) => {
                    self.awaiting_pkid.push_back(rec.seq);
                    metrics.upstream_published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    // The request channel is full or the link is going down:
                    // take the record back and wait for the next event.
                    tracing::debug!(error = %e, "Publish not queued; will retry.");
                    outbox.rewind();
                    self.awaiting_pkid.clear();
                    self.pkid_to_seq.clear();
                    self.client = None;
                    break;
                }
            }
        }
    }

    fn on_link_event(&mut self, ev: LinkEvent, outbox: &mut impl Outbox, metrics: &Metrics) {
        match ev {
            LinkEvent::Up { epoch, client } => {
                self.epoch = epoch;
                self.client = Some(client);
                self.awaiting_pkid.clear();
                self.pkid_to_seq.clear();
                let resent = outbox.rewind();
                metrics
                    .upstream_retransmitted
                    .fetch_add(resent as u64, Ordering::Relaxed);
                metrics.upstream_connected.store(1, Ordering::Relaxed);
                if !outbox.is_empty() {
                    tracing::info!(
                        backlog = outbox.len(),
                        "Upstream is back; delivering the backlog."
                    );
                }
            }
            LinkEvent::Sent { epoch, pkid } if epoch == self.epoch && pkid != 0 => {
                if let Some(seq) = self.awaiting_pkid.pop_front() {
                    self.pkid_to_seq.insert(pkid, seq);
                }
            }
            LinkEvent::Acked { epoch, pkid } if epoch == self.epoch => {
                if let Some(seq) = self.pkid_to_seq.remove(&pkid) {
                    outbox.ack(seq);
                    metrics.upstream_acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            LinkEvent::Down { epoch } if epoch == self.epoch => {
                self.client = None;
                self.awaiting_pkid.clear();
                self.pkid_to_seq.clear();
                outbox.rewind();
                metrics.upstream_connected.store(0, Ordering::Relaxed);
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
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), backoff_max);
    let mut epoch = 0u64;
    let broker = format!("{}:{}", opts.broker_address().0, opts.broker_address().1);
    'outer: loop {
        epoch += 1;
        let (client, mut eventloop) = AsyncClient::new(opts.clone(), request_capacity);
        let mut was_up = false;
        loop {
            let ev = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    crate::source::mqtt::disconnect(&client, &mut eventloop).await;
                    break 'outer;
                }
                ev = eventloop.poll() => ev,
            };
            let link_ev = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    was_up = true;
                    metrics.upstream_connections.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%broker, "Connected to upstream.");
                    LinkEvent::Up {
                        epoch,
                        client: client.clone(),
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Sent { epoch, pkid },
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked {
                    epoch,
                    pkid: ack.pkid,
                },
                Ok(_) => continue,
                Err(e) => {
                    metrics.upstream_disconnects.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    if was_up {
                        tracing::warn!(%broker, error = %e, retry_in = ?delay, "Lost the upstream connection; buffering and retrying.");
                    } else {
                        tracing::warn!(%broker, error = %e, retry_in = ?delay, "Cannot connect to upstream; buffering and retrying.");
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
