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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttSourceConfig;
use crate::metrics::Metrics;
use crate::processor::{Input, RawMessage};

/// Runs one MQTT source until `cancel` fires.
pub async fn run(
    index: usize,
    cfg: MqttSourceConfig,
    max_payload_bytes: usize,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut opts = MqttOptions::new(
        cfg.client_id.clone(),
        cfg.broker.host.clone(),
        cfg.broker.port,
    );
    opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
    opts.set_clean_session(false);
    // Oversize payloads are still read (and then counted by the core) up to a
    // generous limit; beyond it the broker connection would be cut.
    let packet_limit = (max_payload_bytes * 4).max(64 * 1024) + 1024;
    opts.set_max_packet_size(packet_limit, packet_limit);
    if let Some((u, p)) = &cfg.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let mut backoff = Backoff::new(Duration::from_millis(200), cfg.reconnect_backoff_max);
    tracing::info!(source = %cfg.name, broker = %cfg.broker, topics = ?cfg.topics, "Starting MQTT source.");
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                metrics.source_connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %cfg.name, broker = %cfg.broker, "Connected to the source broker.");
                for topic in &cfg.topics {
                    if let Err(e) = client.try_subscribe(topic.clone(), cfg.qos) {
                        tracing::error!(source = %cfg.name, topic, error = %e, "Could not queue a subscription.");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = RawMessage {
                    source: index,
                    topic: p.topic,
                    payload: p.payload,
                    received_ms: crate::now_ms(),
                };
                let sent = tokio::select! {
                    biased;
                    r = tx.send(Input::Message(msg)) => r.is_ok(),
                    _ = cancel.cancelled() => false,
                };
                if !sent {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(source = %cfg.name, "The source broker refused a subscription; check its ACLs for the configured topics.");
                } else {
                    metrics.source_subscriptions.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.source_disconnects.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(source = %cfg.name, broker = %cfg.broker, error = %e, retry_in = ?delay, "Source broker connection failed; retrying.");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    disconnect(&client, &mut eventloop).await;
    tracing::info!(source = %cfg.name, "MQTT source stopped.");
}

/// Sends DISCONNECT and gives the event loop a moment to write it, so the
/// broker does not wait for a keep-alive timeout.
pub(crate) async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
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
