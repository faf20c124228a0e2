//! The runtime: wires sources, the processing core and the upstream sink
//! together and owns shutdown.
//!
//! Shutdown is a chain of closed channels, so that nothing accepted is
//! dropped on the way out: the token stops the sources; when the last source
//! ends, the core sees its input close, flushes every open window and closes
//! its output; the sink then delivers what is queued within
//! `upstream.shutdown_grace` and stops. Every task is spawned on one
//! `TaskTracker`, and nothing is detached.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SourceConfig};
use crate::metrics::Metrics;
use crate::processor::{CoreSettings, Processor, RawMessage, Record};
use crate::upstream::{self, MemoryQueue};

/// How often the core checks for windows to close.
const TICK: Duration = Duration::from_millis(100);
/// Messages taken from the channel per wake-up before flushing output.
const BATCH: usize = 256;

/// Options of one run that are not part of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to write a Prometheus text snapshot of the metrics every
    /// `gateway.metrics_interval` and at exit (node_exporter's textfile
    /// collector reads this format).
    pub metrics_file: Option<PathBuf>,
}

/// Runs the gateway until `shutdown` fires and everything has drained.
pub async fn run(
    config: Config,
    options: RunOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let opts = upstream::mqtt_options(&config.upstream)?;
    let tracker = TaskTracker::new();
    let (raw_tx, raw_rx) = mpsc::channel::<RawMessage>(config.pipeline.channel_capacity);
    let (rec_tx, rec_rx) = mpsc::channel::<Record>(1024);

    for (index, source) in config.sources.iter().enumerate() {
        match source {
            SourceConfig::Mqtt(m) => {
                tracker.spawn(crate::source::mqtt::run(
                    index,
                    m.clone(),
                    config.pipeline.max_payload_bytes,
                    raw_tx.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ));
            }
        }
    }
    drop(raw_tx);

    let processor = Processor::new(CoreSettings::from_config(&config), metrics.clone(), 1);
    tracker.spawn(process(processor, raw_rx, rec_tx));
    let outbox = MemoryQueue::new(config.upstream.queue_max_bytes);
    let sink = tracker.spawn(upstream::run(
        config.upstream.clone(),
        opts,
        outbox,
        rec_rx,
        metrics.clone(),
    ));

    let reporter_stop = CancellationToken::new();
    tracker.spawn(report(
        metrics.clone(),
        config.gateway.metrics_interval,
        options.metrics_file.clone(),
        reporter_stop.clone(),
    ));
    tracker.close();
    tracing::info!(gateway = %config.gateway.id, sources = config.sources.len(), rules = config.sensors.len(), "Gateway running.");

    let _ = sink.await;
    reporter_stop.cancel();
    tracker.wait().await;
    tracing::info!(metrics = %metrics.one_line(), "Gateway stopped.");
    Ok(())
}

/// The core's task: feeds messages to the processor, ticks it, forwards
/// closed windows, and flushes everything when its input closes.
async fn process(
    mut processor: Processor,
    mut rx: mpsc::Receiver<RawMessage>,
    tx: mpsc::Sender<Record>,
) {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let now = crate::now_ms();
                for msg in batch.drain(..) {
                    processor.ingest(&msg, now, &mut out);
                }
            }
            _ = tick.tick() => processor.flush_due(crate::now_ms(), &mut out),
        }
        for rec in out.drain(..) {
            if tx.send(rec).await.is_err() {
                tracing::error!(
                    "The upstream sink stopped before the core; summaries cannot be delivered."
                );
                return;
            }
        }
    }
    processor.flush_all(&mut out);
    let flushed = out.len();
    for rec in out.drain(..) {
        if tx.send(rec).await.is_err() {
            break;
        }
    }
    tracing::info!(
        flushed_windows = flushed,
        sensors = processor.registry().len(),
        "Processing core stopped; open windows flushed."
    );
}

/// Logs a metrics line and writes the metrics file periodically.
async fn report(
    metrics: Arc<Metrics>,
    every: Duration,
    file: Option<PathBuf>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if let Some(path) = &file {
            write_metrics_file(path, &metrics.render_prometheus()).await;
        }
        if stopping {
            break;
        }
        tracing::info!(metrics = %metrics.one_line(), "Status.");
    }
}

/// Writes atomically (temporary file, then rename), so a reader never sees a
/// half-written file.
async fn write_metrics_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    let result = async {
        tokio::fs::write(&tmp, text).await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "Cannot write the metrics file.");
    }
}
