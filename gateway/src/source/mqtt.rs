//! The MQTT source: subscribes to a plant broker and forwards raw messages.
//!
//! The task owns one rumqttc event loop. It does no decoding (that is the
//! core's job); it stamps each message with its arrival time and sends it into
//! the bounded pipeline channel. When the channel is full the task waits, so
//! it stops reading the socket and the broker's flow control holds the
//! publishers back instead of the gateway dropping data. A lost connection is
//! retried forever with capped exponential backoff; the session is persistent
//! (`clean_session = false`) so that a QoS 1 subscription keeps its messages
//! at the broker while the gateway reconnects.
//!
//! Acknowledgements are manual: a QoS 1/2 message is acknowledged to the
//! broker only once it is in the core's channel, so a message the broker
//! considers delivered is always in the core's hands (the core drains its
//! channel at shutdown). rumqttc connects through the [`guard`] on a Unix
//! socket, which reads past oversize messages so that one poison message
//! cannot make the connection fail.
//!
//! [`guard`]: crate::source::guard

use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttSourceConfig;
use crate::metrics::Metrics;
use crate::mqtt::{self, ClientSettings, Endpoint, Session};
use crate::processor::{Input, RawMessage};
use crate::source::guard::{self, Guard};

/// Runs one MQTT source until `cancel` fires.
pub async fn run(
    index: usize,
    cfg: MqttSourceConfig,
    max_payload_bytes: usize,
    state_dir: PathBuf,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let limit = guard::packet_limit(max_payload_bytes);
    let guard = match Guard::bind(
        guard::socket_path(&state_dir, index),
        cfg.broker.clone(),
        limit,
        cfg.name.clone(),
        metrics.clone(),
    ) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(source = %cfg.name, dir = %state_dir.display(), error = %e, "Cannot create the source's socket in the state directory; this source stays off. Check that gateway.state_dir is writable.");
            return;
        }
    };
    let guard = match &cfg.tls {
        None => guard,
        Some(tls) => match guard.with_tls(tls) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(source = %cfg.name, error = %e, "Cannot set up TLS to the source's broker; this source stays off.");
                return;
            }
        },
    };
    let opts = mqtt::options(ClientSettings {
        client_id: &cfg.client_id,
        endpoint: Endpoint::Unix(guard.path()),
        keep_alive: cfg.keep_alive,
        credentials: cfg.credentials.as_deref(),
        session: Session::Persistent,
        // The guard passes nothing larger, so this limit is never what fails.
        max_packet: (limit.saturating_add(16), 64 * 1024),
    });
    let last_error = guard.last_error();
    let guard_cancel = CancellationToken::new();
    let relay = guard.serve(guard_cancel.clone());
    let source = run_client(index, &cfg, opts, tx, &metrics, &cancel, &last_error);
    tokio::pin!(relay);
    tokio::select! {
        _ = &mut relay => {}
        _ = source => {}
    }
    guard_cancel.cancel();
    relay.await;
    tracing::info!(source = %cfg.name, "MQTT source stopped.");
}

async fn run_client(
    index: usize,
    cfg: &MqttSourceConfig,
    opts: MqttOptions,
    tx: mpsc::Sender<Input>,
    metrics: &Metrics,
    cancel: &CancellationToken,
    last_error: &std::sync::Mutex<Option<String>>,
) {
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let connected = metrics.mqtt_source(&cfg.name);
    let mut backoff = Backoff::new(Duration::from_millis(200), cfg.reconnect_backoff_max);
    // Acknowledgements not yet queued in rumqttc (its request channel was
    // full); bounded by the broker's in-flight window for this session.
    let mut acks: VecDeque<(QoS, u16)> = VecDeque::new();
    tracing::info!(source = %cfg.name, broker = %cfg.broker, topics = ?cfg.topics, "Starting MQTT source.");
    // One wait for cancellation for the source's life: made per message, it
    // would register and unregister a waiter (two lock round trips) for
    // every reading.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        while let Some(&(qos, pkid)) = acks.front() {
            let mut p = Publish::new("", qos, Vec::new());
            p.pkid = pkid;
            if client.try_ack(&p).is_err() {
                break;
            }
            acks.pop_front();
        }
        // Events first (the cancellation is checked above, so a flood cannot
        // hold off shutdown); the wait for cancellation is polled only while
        // no event is ready.
        let event = tokio::select! {
            biased;
            ev = eventloop.poll() => ev,
            _ = &mut cancelled => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.connected(Instant::now());
                metrics.source_connections.inc();
                connected.set(1);
                tracing::info!(source = %cfg.name, broker = %cfg.broker, "Connected to the source broker.");
                for topic in &cfg.topics {
                    if let Err(e) = client.try_subscribe(topic.clone(), cfg.qos) {
                        tracing::error!(source = %cfg.name, topic, error = %e, "Could not queue a subscription.");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let ack = (p.qos != QoS::AtMostOnce).then_some((p.qos, p.pkid));
                let msg = RawMessage {
                    source: index,
                    topic: p.topic,
                    payload: p.payload,
                    received_ms: crate::now_ms(),
                };
                let sent = tokio::select! {
                    biased;
                    r = tx.send(Input::Message(msg)) => r.is_ok(),
                    _ = &mut cancelled => false,
                };
                if !sent {
                    // Not acknowledged: the broker sends it again.
                    break;
                }
                acks.extend(ack);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(source = %cfg.name, "The source broker refused a subscription; check its ACLs for the configured topics.");
                } else {
                    metrics.source_subscriptions.inc();
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.source_disconnects.inc();
                connected.set(0);
                // Acknowledgements belong to the connection that is gone;
                // the broker sends those messages again.
                acks.clear();
                let now = Instant::now();
                let delay = backoff.failed(now);
                let cause = last_error.lock().ok().and_then(|mut l| l.take());
                if let Some(unlogged) = backoff.log_due(now) {
                    tracing::warn!(source = %cfg.name, broker = %cfg.broker, error = %e, cause, retry_in = ?delay, failed_attempts_not_logged = unlogged, "Source broker connection failed; retrying (logged at most every 5 minutes while it lasts).");
                }
                tokio::select! {
                    _ = &mut cancelled => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    while let Some((qos, pkid)) = acks.pop_front() {
        let mut p = Publish::new("", qos, Vec::new());
        p.pkid = pkid;
        let _ = client.try_ack(&p);
    }
    mqtt::disconnect(&client, &mut eventloop).await;
    connected.set(0);
}
