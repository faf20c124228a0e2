//! Publishes a scenario's readings to an MQTT broker at a fixed total rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::scenario::Scenario;
use crate::signal::SignalModel;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub qos: QoS,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// What was sent, for the tally at the end.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub faults: AtomicU64,
}

/// Publishes until the count or duration is reached or `cancel` fires, then
/// waits until everything has left the client (QoS 0) or been acknowledged
/// (QoS 1).
pub async fn publish(
    scenario: &Scenario,
    opts: &PublishOptions,
    stats: Arc<PublishStats>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let written = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let (w, a) = (written.clone(), acked.clone());
    let driver = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if ready.is_some() {
                        tracing::warn!(error = %e, "Cannot reach the broker yet; retrying.");
                    } else {
                        tracing::warn!(error = %e, "Lost the broker; retrying.");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .context("the broker did not accept a connection within 30 s")?
        .ok();

    let mut rng = SmallRng::seed_from_u64(scenario.seed);
    let sensors = scenario.sensor_count();
    let topics: Vec<(String, usize, u32)> = (0..sensors).map(|i| scenario.topic(i)).collect();
    let models: Vec<SignalModel> = scenario.sensors.iter().map(|s| s.signal()).collect();
    let mut seqs = vec![0u64; sensors as usize];
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    'run: loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let elapsed = start.elapsed();
        if opts.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let mut due = (scenario.rate * elapsed.as_secs_f64()) as u64;
        if let Some(c) = opts.count {
            due = due.min(c);
        }
        while sent < due {
            let i = (sent % sensors) as usize;
            let (topic, sensor, machine) = &topics[i];
            let spec = &scenario.sensors[*sensor];
            if spec.stop_after().is_some_and(|d| elapsed >= d) {
                // Fallen silent: its share of the rate stays unused.
                sent += 1;
                continue;
            }
            seqs[i] += 1;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let value = models[*sensor].sample(*machine, elapsed.as_secs_f64(), &mut rng);
            let payload = if scenario.fault_probability > 0.0
                && rng.random::<f64>() < scenario.fault_probability
            {
                stats.faults.fetch_add(1, Ordering::Relaxed);
                fault(&mut rng)
            } else if scenario.payload == "number" {
                format!("{value:.4}").into_bytes()
            } else {
                format!(r#"{{"value":{value:.4},"ts":{now_ms},"seq":{}}}"#, seqs[i]).into_bytes()
            };
            if client
                .publish(topic.clone(), opts.qos, false, payload)
                .await
                .is_err()
            {
                break 'run;
            }
            sent += 1;
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        if opts.count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    // Let everything leave the client before disconnecting.
    let target = sent;
    let counter = if opts.qos == QoS::AtMostOnce {
        written
    } else {
        acked
    };
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        while counter.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if wait.is_err() {
        tracing::warn!(
            sent = target,
            confirmed = counter.load(Ordering::Relaxed),
            "Not every message was confirmed before the deadline."
        );
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    Ok(())
}

/// A malformed message of one of the kinds a field device produces.
fn fault(rng: &mut impl Rng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => b"#@!{not json".to_vec(),
        1 => br#"{"value":"NaN"}"#.to_vec(),
        2 => br#"{"value":1e12}"#.to_vec(),
        _ => br#"{"value":12.5,"ts""#.to_vec(),
    }
}

/// Subscribes to `topic` and counts messages until none arrived for `idle`
/// (after the first one). Does nothing else with them: the bare cost of
/// receiving MQTT with rumqttc.
pub async fn count(host: &str, port: u16, topic: &str, idle: Duration) -> anyhow::Result<u64> {
    let mut opts = MqttOptions::new(
        format!("sensor-sim-count-{}", std::process::id()),
        host,
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let mut n = 0u64;
    loop {
        let ev = if n == 0 {
            eventloop.poll().await
        } else {
            match tokio::time::timeout(idle, eventloop.poll()).await {
                Ok(ev) => ev,
                Err(_) => break,
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.try_subscribe(topic, QoS::AtMostOnce)?;
                // Tell a waiting benchmark script that we are subscribed.
                eprintln!("subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(_))) => n += 1,
            Ok(_) => {}
            Err(e) => anyhow::bail!("broker connection failed: {e}"),
        }
    }
    Ok(n)
}
