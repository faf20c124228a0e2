//! The runtime: wires sources, the processing core and the upstream sink
//! together and owns shutdown.
//!
//! Shutdown is a chain of closed channels, so that nothing accepted is
//! dropped on the way out: the token stops the sources and the reload task;
//! when the last of them ends, the core sees its input close, flushes every open window and closes
//! its output; the sink then delivers what is queued within
//! `upstream.shutdown_grace` and stops. Every task is spawned on one
//! `TaskTracker`, and nothing is detached.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffer::Buffer;
use crate::config::{Config, SensorRule, SourceConfig};
use crate::metrics::Metrics;
use crate::model::{Lane, Record};
use crate::policy::{PolicyRule, SensorPolicy};
use crate::processor::{escaped, Command, CoreSettings, Input, Processor};
use crate::reject::{CommandLogLimiter, Throttle};
use crate::reload::{CoreReload, ReloadTrigger, Reloader};
use crate::supervisor::{self, Liveness, Probe};
use crate::upstream;

mod core_clock;
use core_clock::CoreClock;

/// How often the core looks at the buffer's fsync mark while alarm events
/// it passed on are not yet known durable (their ledger waits for it).
/// Otherwise the core sleeps until its next timer is due
/// ([`Processor::next_due`], the state saver's retry or baseline save).
const DURABLE_POLL: Duration = Duration::from_millis(100);
/// The processor's timers are scanned at most this often (a scan visits
/// every sensor): sensors whose due times lie a few ms apart cost one scan
/// per interval, as the fixed tick did, not one each.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Messages taken from the channel per wake-up before flushing output.
const BATCH: usize = 256;

/// Options of one run that are not part of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to write a Prometheus text snapshot of the metrics every
    /// `gateway.metrics_interval` and at exit (node_exporter's textfile
    /// collector reads this format).
    pub metrics_file: Option<PathBuf>,
    /// Reload the configuration file when triggered (SIGHUP); `None`: the
    /// configuration is fixed for the run.
    pub reload: Option<ReloadTrigger>,
}

/// Runs the gateway until `shutdown` fires and everything has drained.
pub async fn run(
    config: Config,
    options: RunOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let link_plan = upstream::link_plan_to_run(&config.upstream);
    let http_listener = match &config.http {
        Some(h) => Some(crate::http::bind(h.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (`[http] listen`); choose a free port or remove `[http]`",
                h.listen
            )
        })?),
        None => None,
    };
    metrics.set_config_sha256(&config.digest);
    check_free_space(&config);
    let (mut buffer, recovery) =
        Buffer::open(&config.buffer, &config.gateway.state_dir, metrics.clone())?;
    tracing::info!(
        segments = recovery.segments,
        records = recovery.records,
        bytes = recovery.bytes,
        torn_tails = recovery.torn_tails,
        quarantined = recovery.quarantined.len(),
        next_seq = recovery.next_seq,
        dir = %buffer.root().display(),
        "Buffer recovered."
    );
    let tracker = TaskTracker::new();
    let (raw_tx, raw_rx) = mpsc::channel::<Input>(config.pipeline.channel_capacity);
    let (rec_tx, rec_rx) = mpsc::channel::<Record>(256);

    let mut sources = Sources {
        tasks: Vec::new(),
        tx: raw_tx,
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    };
    for index in 0..config.sources.len() {
        sources.start(&config, index);
    }

    let live = Liveness::default();
    let mut processor = Processor::new(
        CoreSettings::from_config(&config),
        metrics.clone(),
        buffer.next_seq(),
    );
    let state_dir = config.gateway.state_dir.clone();
    let mut reemitted = Vec::new();
    match crate::state::load(&state_dir, crate::now_ms()) {
        Ok(Some(state)) => {
            let n = processor.restore(state, crate::now_ms());
            // An alarm event the state remembers but the buffer never
            // stored was lost in a crash: emit it again.
            let again = processor
                .reemit_lost_alarm_events(|seq| buffer.holds(Lane::Alarm, seq), &mut reemitted);
            tracing::info!(
                sensors = n,
                active_alarms = metrics.alarms_active.get(),
                alarm_events_sent_again = again,
                "Alarm and baseline state restored."
            );
        }
        Ok(None) => {}
        Err(e) => {
            metrics.state_load_errors.inc();
            tracing::error!(error = %e, "Alarm and baseline state not restored; starting without it.");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>(64);
    let (core_reload_tx, core_reload_rx) = mpsc::channel::<CoreReload>(1);
    let (relink_tx, relink_rx) = mpsc::channel::<upstream::SinkSettings>(1);
    let started_ms = crate::now_ms();
    // The core waits for the sink when this channel is full; the watchdog
    // then asks the sink instead (a weak handle keeps nothing open).
    let core_output = rec_tx.downgrade();
    tracker.spawn(process(
        processor,
        metrics.clone(),
        CoreIo {
            input: raw_rx,
            output: rec_tx,
            commands: cmd_rx,
            reloads: core_reload_rx,
            clock: CoreClock::new(&config.clock),
        },
        StateSaver::new(state_dir, metrics.clone()),
        reemitted,
        live.core.clone(),
    ));
    // The sources are known to the metrics before the sink's first status
    // (the birth) lists them, whichever task starts first.
    for source in &config.sources {
        match source {
            SourceConfig::Mqtt(m) => drop(metrics.mqtt_source(&m.name)),
            SourceConfig::Serial(s) => drop(metrics.serial_port(&s.name)),
        }
    }
    let sink = tracker.spawn(upstream::run(
        upstream::SinkSettings {
            plan: link_plan,
            status: upstream::StatusIdentity::new(&config, started_ms),
        },
        buffer,
        upstream::SinkIo {
            records: rec_rx,
            commands: cmd_tx,
            relink: relink_rx,
        },
        metrics.clone(),
        shutdown.clone(),
        live.sink.clone(),
    ));
    match options.reload.clone() {
        // The reload task holds the sources' sender until shutdown.
        Some(trigger) => {
            let reloader = Reloader {
                trigger,
                running: config.clone(),
                started_ms,
                sources,
                core: core_reload_tx,
                relink: relink_tx,
                metrics: metrics.clone(),
            };
            tracker.spawn(reloader.run(shutdown.clone()));
        }
        None => drop(sources),
    }

    let reporter_stop = CancellationToken::new();
    if let Some(listener) = http_listener {
        // Serves until everything else has stopped, so the drain can be
        // watched; it turns not ready when shutdown begins.
        tracing::info!(listen = ?listener.local_addr().ok(), "Serving /metrics, /healthz and /readyz.");
        tracker.spawn(crate::http::serve(
            listener,
            crate::http::Endpoints {
                metrics: metrics.clone(),
                sources: config.sources.len(),
                shutdown: shutdown.clone(),
            },
            reporter_stop.clone(),
        ));
    }
    tracker.spawn(report(
        metrics.clone(),
        config.gateway.metrics_interval,
        options.metrics_file.clone(),
        reporter_stop.clone(),
    ));
    tracker.spawn(supervisor::supervise(
        live,
        metrics.clone(),
        move || core_output.upgrade().is_some_and(|tx| tx.capacity() == 0),
        shutdown.clone(),
    ));
    let stopped = CancellationToken::new();
    tracker.spawn({
        let (metrics, shutdown, stopped) = (metrics.clone(), shutdown.clone(), stopped.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => supervisor::stopping(metrics, stopped).await,
                _ = stopped.cancelled() => {}
            }
        }
    });
    tracker.close();
    tracing::info!(gateway = %config.gateway.id, sources = config.sources.len(), rules = config.sensors.len(), "Gateway running.");

    let _ = sink.await;
    stopped.cancel();
    reporter_stop.cancel();
    tracker.wait().await;
    tracing::info!(metrics = %metrics.one_line(), "Gateway stopped.");
    Ok(())
}

/// The running source tasks, one per configured source, each stopped by
/// its own token (a child of the shutdown token), so that a reload can
/// restart one. Holds the sender of the core's input: the core sees its
/// input close once this and every source task are gone.
pub(crate) struct Sources {
    /// Per source index: its token and task; `None` once stopped.
    tasks: Vec<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    tx: mpsc::Sender<Input>,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Sources {
    /// Starts source `index` of `config`.
    pub(crate) fn start(&mut self, config: &Config, index: usize) {
        let Some(source) = config.sources.get(index) else {
            return;
        };
        let cancel = self.shutdown.child_token();
        let task = match source {
            SourceConfig::Mqtt(m) => self.tracker.spawn(crate::source::mqtt::run(
                index,
                m.clone(),
                config.pipeline.max_payload_bytes,
                config.gateway.state_dir.clone(),
                self.tx.clone(),
                self.metrics.clone(),
                cancel.clone(),
            )),
            SourceConfig::Serial(s) => self.tracker.spawn(crate::source::serial::run(
                s.clone(),
                self.tx.clone(),
                self.metrics.clone(),
                cancel.clone(),
            )),
        };
        if self.tasks.len() <= index {
            self.tasks.resize_with(index + 1, || None);
        }
        self.tasks[index] = Some((cancel, task));
    }

    /// Stops the sources at `indexes` and waits up to `wait` for their tasks
    /// to end (an MQTT source disconnects in order and frees its guard's
    /// socket, which its successor binds again).
    pub(crate) async fn stop(&mut self, indexes: &[usize], wait: Duration) {
        let mut tasks = Vec::new();
        for &i in indexes {
            if let Some((cancel, task)) = self.tasks.get_mut(i).and_then(Option::take) {
                cancel.cancel();
                tasks.push(task);
            }
        }
        for task in tasks {
            if tokio::time::timeout(wait, task).await.is_err() {
                tracing::warn!(wait = ?wait, "A source did not stop in time after a reload; starting its successor anyway.");
            }
        }
    }
}

/// How often changed baselines are saved (alarm changes are saved at once).
const BASELINE_SAVE_EVERY: Duration = Duration::from_secs(30);

/// After a failed save, the next attempt waits at least this long.
const SAVE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Saves the processor's alarm and baseline state to the state directory.
struct StateSaver {
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Alarm state changed and is not saved yet (a save failed).
    alarms_pending: bool,
    baselines_pending: bool,
    last_save: tokio::time::Instant,
    /// When the last save failed; the changes stay pending and are saved
    /// at the next opportunity after [`SAVE_RETRY_AFTER`].
    failed_at: Option<tokio::time::Instant>,
}

impl StateSaver {
    /// Whether every alarm change so far is saved, so that its events may
    /// go to the sink.
    fn alarms_saved(&self) -> bool {
        !self.alarms_pending
    }

    fn new(dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self {
            dir,
            metrics,
            alarms_pending: false,
            baselines_pending: false,
            last_save: tokio::time::Instant::now(),
            failed_at: None,
        }
    }

    /// When [`Self::save_if_needed`] next has work without new changes: the
    /// retry after a failed save, or the periodic save of changed
    /// baselines.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        if !(self.alarms_pending || self.baselines_pending) {
            return None;
        }
        Some(match self.failed_at {
            Some(t) => t + SAVE_RETRY_AFTER,
            None => self.last_save + BASELINE_SAVE_EVERY,
        })
    }

    /// Saves when alarm state changed (before its events go out, so a
    /// restart neither repeats nor forgets an alarm), when baselines changed
    /// and the last save is old enough, or when `force`d. A failed save is
    /// not forgotten: what it should have saved stays pending and is saved
    /// at the next call a second or more later (at once when `force`d).
    async fn save_if_needed(&mut self, processor: &mut Processor, force: bool) {
        let (alarms, baselines) = processor.take_dirty();
        self.alarms_pending |= alarms;
        self.baselines_pending |= baselines;
        let retry_wait = !force
            && self
                .failed_at
                .is_some_and(|t| t.elapsed() < SAVE_RETRY_AFTER);
        if retry_wait {
            return;
        }
        let due = self.baselines_pending && self.last_save.elapsed() >= BASELINE_SAVE_EVERY;
        if !(self.alarms_pending || due || (force && self.baselines_pending)) {
            return;
        }
        let bytes = crate::state::encode(&processor.export_state());
        let dir = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || crate::state::save(&dir, &bytes)).await;
        self.last_save = tokio::time::Instant::now();
        let error = match result {
            Ok(Ok(())) => {
                self.alarms_pending = false;
                self.baselines_pending = false;
                self.failed_at = None;
                self.metrics.state_saves.inc();
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the state-saving task failed: {e}"),
        };
        self.metrics.state_save_errors.inc();
        // Logged once per failure streak and then at most every minute of
        // retries, not on every retry.
        let first = self.failed_at.is_none();
        self.failed_at = Some(tokio::time::Instant::now());
        let saves_failed = self.metrics.state_save_errors.get();
        if first || saves_failed % 60 == 0 {
            tracing::error!(dir = %self.dir.display(), error = %error, failed_saves = saves_failed, "Cannot save the alarm and baseline state; retrying every second. A restart now would forget the changes since the last save. Check that the state directory is writable and its disk healthy.");
        }
    }
}

/// The most alarm-lane records kept back while the alarm state is not saved.
/// Once reached, the core takes no more input (the sources then stop
/// reading) and closes no windows until a save succeeds.
const MAX_HELD_ALARM_RECORDS: usize = 4 * BATCH;

/// How often the lines about kept-back and forgotten alarm events are logged
/// at most.
const HOLD_LOG_INTERVAL_MS: i64 = 60_000;

/// Alarm-lane records kept back, in order, while the alarm state that
/// produced them is not saved (a save failed and waits for its retry):
/// "alarm state is saved before its events are handed to the sink".
/// Summaries and values are not held.
#[derive(Debug, Default)]
struct AlarmHold {
    held: VecDeque<Record>,
    log: Throttle,
    /// The highest seq of an alarm-lane record let through: until the
    /// buffer's fsync mark passes it, the ledger waits for the mark.
    highest_passed: u64,
}

impl AlarmHold {
    /// Prepares `out` for the sink. With the alarm state saved, every record
    /// kept back goes first, then `out`, in order. Unsaved, `out`'s
    /// alarm-lane records are kept back, in order, and only the rest stays.
    fn sort(&mut self, out: &mut Vec<Record>, alarms_saved: bool) {
        if alarms_saved {
            if !self.held.is_empty() {
                let rest = std::mem::take(out);
                out.extend(self.held.drain(..));
                out.extend(rest);
            }
            let passed = out.iter().filter(|r| r.lane == Lane::Alarm).map(|r| r.seq);
            self.highest_passed = passed.fold(self.highest_passed, u64::max);
            return;
        }
        let mut rest = Vec::with_capacity(out.len());
        for rec in out.drain(..) {
            if rec.lane == Lane::Alarm {
                self.held.push_back(rec);
            } else {
                rest.push(rec);
            }
        }
        *out = rest;
    }

    fn is_full(&self) -> bool {
        self.held.len() >= MAX_HELD_ALARM_RECORDS
    }

    /// The highest seq the ledger may take as durable, given the buffer's
    /// fsync watermark `synced`: below every record kept back (a summary
    /// after it may already be synced).
    fn durable_limit(&self, synced: u64) -> u64 {
        match self.held.front() {
            Some(first) => synced.min(first.seq.saturating_sub(1)),
            None => synced,
        }
    }
}

/// Sends `out` to the sink, keeping alarm-lane records back while the alarm
/// state is not saved; false if the sink is gone.
async fn pass_on(
    out: &mut Vec<Record>,
    hold: &mut AlarmHold,
    saver: &StateSaver,
    tx: &mpsc::Sender<Record>,
    metrics: &Metrics,
) -> bool {
    let before = hold.held.len();
    hold.sort(out, saver.alarms_saved());
    if hold.held.len() > before {
        if let Some(suppressed) = hold.log.allow(HOLD_LOG_INTERVAL_MS, crate::now_ms()) {
            tracing::warn!(
                held = hold.held.len(),
                limit = MAX_HELD_ALARM_RECORDS,
                suppressed_since_last = suppressed,
                "Alarm events are kept back because the alarm state they change is not saved yet (see the state-save error); they go upstream, in order, once a save succeeds. At the limit the gateway stops taking readings until then."
            );
        }
    }
    let sent = forward(out, tx, metrics).await;
    if !sent && !hold.held.is_empty() {
        // The sink is gone: what is kept back cannot go either.
        metrics.records_lost_at_shutdown.add(hold.held.len() as u64);
        hold.held.clear();
    }
    sent
}

/// Lets the ledger forget the alarm events the buffer has made durable
/// (`gateway_buffer_last_synced_seq`), and logs, rate-limited, events the
/// ledger had to forget early. `seen` carries the last watermark applied
/// and the overflow count last logged.
fn confirm_durable(
    processor: &mut Processor,
    hold: &AlarmHold,
    metrics: &Metrics,
    seen: &mut (u64, u64),
    log: &mut Throttle,
    now_ms: i64,
) {
    let synced = metrics.buffer_last_synced_seq.get();
    let limit = hold.durable_limit(u64::try_from(synced).unwrap_or(0));
    if limit > seen.0 {
        seen.0 = limit;
        processor.confirm_durable(limit);
    }
    let overflow = metrics.alarm_ledger_overflow.get();
    if overflow > seen.1 {
        if let Some(suppressed) = log.allow(HOLD_LOG_INTERVAL_MS, now_ms) {
            tracing::warn!(
                forgotten = overflow - seen.1,
                suppressed_since_last = suppressed,
                "A sensor's alarm events were not yet durable when its ledger filled (an alarm flapping while the buffer or the state save lagged); the oldest were forgotten and a crash now could not send them again. Counted in gateway_alarm_ledger_overflow_total; check the state directory's disk."
            );
            seen.1 = overflow;
        }
    }
}

/// The core task's channels: messages from the sources, records to the
/// sink, commands from upstream, new settings at a reload.
struct CoreIo {
    input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Record>,
    commands: mpsc::Receiver<Command>,
    reloads: mpsc::Receiver<CoreReload>,
    /// Decides when the input may be processed (a trusted wall clock).
    clock: CoreClock,
}

/// The core's task: feeds messages to the processor, ticks it, applies
/// commands, forwards closed windows and events, and flushes everything
/// when its input closes.
async fn process(
    mut processor: Processor,
    metrics: Arc<Metrics>,
    io: CoreIo,
    mut saver: StateSaver,
    reemitted: Vec<Record>,
    probe: Arc<Probe>,
) {
    let CoreIo {
        input: mut rx,
        output: tx,
        mut commands,
        mut reloads,
        mut clock,
    } = io;
    // Alarm events lost in a crash and emitted again: their new seqs are
    // saved before they go out, like every alarm change.
    let mut out = reemitted;
    let mut hold = AlarmHold::default();
    saver.save_if_needed(&mut processor, false).await;
    if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
        return;
    }
    // Whether the wall clock can be trusted is known before anything waits
    // for it.
    clock.check(&mut processor, &metrics, &mut out);
    let mut durable_seen = (0, 0);
    let mut last_scan: Option<tokio::time::Instant> = None;
    let mut overflow_log = Throttle::default();
    let mut command_log = CommandLogLimiter::new(upstream::COMMAND_LOG_INTERVAL_MS);
    let mut batch = Vec::with_capacity(BATCH);
    let mut commands_open = true;
    let mut reloads_open = true;
    loop {
        probe.answer();
        // The processor's timers run only on a trusted clock and while no
        // alarm events are kept back (only the save is retried then).
        let ticks = clock.is_trusted() && (!hold.is_full() || rx.is_closed());
        let wake = next_wake(
            ticks.then_some((&processor, last_scan)),
            &saver,
            &hold,
            durable_seen.0,
        );
        let wake = [wake, clock.poll_at()].into_iter().flatten().min();
        tokio::select! {
            _ = probe.asked() => {}
            // At shutdown (input closed) the input is drained whatever is
            // kept back: its channel bounds what that adds.
            n = rx.recv_many(&mut batch, BATCH), if (!hold.is_full() && !clock.is_full()) || rx.is_closed() => {
                if n == 0 {
                    break;
                }
                match clock.check(&mut processor, &metrics, &mut out) {
                    (_, Some(now)) => {
                        for msg in batch.drain(..) {
                            processor.ingest_input(&msg, now, &mut out);
                        }
                    }
                    (at, None) => {
                        for msg in batch.drain(..) {
                            clock.wait(msg, at, &metrics);
                        }
                    }
                }
                saver.save_if_needed(&mut processor, false).await;
                if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
                    return;
                }
            }
            reload = reloads.recv(), if reloads_open => {
                let Some((settings, reply)) = reload else {
                    reloads_open = false;
                    continue;
                };
                // The flushed windows go on like any others (alarm-lane
                // records wait for the state save).
                let _ = reply.send(processor.reconfigure(settings, &mut out));
                saver.save_if_needed(&mut processor, false).await;
                if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
                    return;
                }
            }
            // Commands wait in their channel while the clock is not trusted.
            cmd = commands.recv(), if commands_open && !hold.is_full() && clock.is_trusted() => {
                let Some(cmd) = cmd else {
                    commands_open = false;
                    continue;
                };
                let now = clock.check(&mut processor, &metrics, &mut out).1.unwrap_or_else(crate::now_ms);
                match processor.command(&cmd, now, &mut out) {
                    Err(e) => {
                        saver.metrics.reject_command(e.reason());
                        if let Some(suppressed) = command_log.allow(e.reason(), now) {
                            tracing::warn!(alarm_id = %escaped(&cmd.alarm_id), by = %escaped(&cmd.by), reason = e.reason().name(), suppressed_since_last = suppressed, error = %e, "Command rejected; counted in gateway_commands_rejected_total.");
                        }
                    }
                    Ok(_) => {
                        tracing::info!(alarm_id = %escaped(&cmd.alarm_id), occurrence = cmd.occurrence, by = %escaped(&cmd.by), "Alarm acknowledged.");
                    }
                }
                saver.save_if_needed(&mut processor, false).await;
                if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
                    return;
                }
            }
            _ = sleep_until(wake) => {
                let (at, now) = clock.check(&mut processor, &metrics, &mut out);
                confirm_durable(&mut processor, &hold, &metrics, &mut durable_seen, &mut overflow_log, at.wall_ms);
                let Some(now) = now else {
                    continue;
                };
                if hold.is_full() && !rx.is_closed() {
                    // Only retry the save until the kept-back events can go.
                    saver.save_if_needed(&mut processor, false).await;
                    if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
                        return;
                    }
                    continue;
                }
                last_scan = Some(tokio::time::Instant::now());
                // Windows of many sensors end together: pass them on in
                // slices, so memory holds one slice, not all of them.
                loop {
                    let done = processor.flush_due_bounded(now, &mut out, BATCH);
                    saver.save_if_needed(&mut processor, false).await;
                    if !pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await {
                        return;
                    }
                    if done {
                        break;
                    }
                }
            }
        }
    }
    clock.drain(&mut processor, &mut out);
    let mut flushed = 0;
    loop {
        let done = processor.flush_all_bounded(&mut out, BATCH);
        flushed += out.len();
        saver.save_if_needed(&mut processor, done).await;
        let sent = if done && !saver.alarms_saved() {
            if !hold.held.is_empty() {
                tracing::error!(
                    held = hold.held.len(),
                    "The alarm state could not be saved before shutdown; its kept-back alarm events go upstream anyway, so that none is lost. A restart starts from the last saved alarm state and may raise some of these alarms again."
                );
            }
            hold.sort(&mut out, true);
            forward(&mut out, &tx, &metrics).await
        } else {
            pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await
        };
        if !sent || done {
            break;
        }
    }
    tracing::info!(
        flushed_windows = flushed,
        sensors = processor.registry().len(),
        "Processing core stopped; open windows flushed."
    );
}

/// When the core's task next has timed work: the processor's next due
/// window, stale alarm, heartbeat or retirement (when `processor` is
/// given: its timers run; no sooner than [`MIN_SCAN_INTERVAL`] after its
/// last scan); the state saver's retry or
/// baseline save; a look at the fsync mark while alarm events passed on are
/// not yet durable. `None`: nothing is pending, sleep until input comes.
fn next_wake(
    processor: Option<(&Processor, Option<tokio::time::Instant>)>,
    saver: &StateSaver,
    hold: &AlarmHold,
    durable_seen: u64,
) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now();
    let core = processor.and_then(|(p, last_scan)| {
        let due = p.next_due()?;
        let wait = due.saturating_sub(crate::now_ms()).max(0);
        let at = now + Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        Some(last_scan.map_or(at, |t| at.max(t + MIN_SCAN_INTERVAL)))
    });
    let durable = (hold.highest_passed > durable_seen).then(|| now + DURABLE_POLL);
    [core, saver.next_due(), durable]
        .into_iter()
        .flatten()
        .min()
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends `out` to the sink, in order; false if the sink is gone (it gave up
/// waiting at shutdown), after counting what could not be sent.
async fn forward(out: &mut Vec<Record>, tx: &mpsc::Sender<Record>, metrics: &Metrics) -> bool {
    let mut records = out.drain(..);
    while let Some(rec) = records.next() {
        if tx.send(rec).await.is_err() {
            let lost = 1 + records.len() as u64;
            metrics.records_lost_at_shutdown.add(lost);
            tracing::error!(
                lost,
                "The upstream sink stopped before the core finished flushing (upstream.shutdown_grace and the flush bound passed); these records are lost."
            );
            return false;
        }
    }
    true
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

/// Warns when the buffer's disk bound does not fit the free space of its
/// filesystem: the bound would never be reached, the disk would fill first.
fn check_free_space(config: &Config) {
    let dir = &config.gateway.state_dir;
    let _ = std::fs::create_dir_all(dir);
    match rustix::fs::statvfs(dir.as_path()) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let used = dir_size(&dir.join("buffer"));
            if free.saturating_add(used) < config.buffer.max_disk_bytes {
                tracing::warn!(
                    state_dir = %dir.display(),
                    free_bytes = free,
                    max_disk_bytes = config.buffer.max_disk_bytes,
                    "buffer.max_disk_bytes is larger than the free space of the state directory's filesystem; the disk will fill before the bound applies. Lower buffer.max_disk_bytes or free space."
                );
            }
        }
        Err(e) => {
            tracing::warn!(state_dir = %dir.display(), error = %e, "Cannot read the free space of the state directory.")
        }
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The core's settings, resolved from the configuration here so that the
/// processor never depends on how a configuration is written.
impl CoreSettings {
    pub fn from_config(config: &Config) -> Self {
        CoreSettings {
            gateway_id: config.gateway.id.clone(),
            sources: config
                .sources
                .iter()
                .map(|s| match s {
                    SourceConfig::Mqtt(m) => Some(crate::processor::SourceSpec {
                        template: m.template.clone(),
                        payload: m.payload.clone(),
                    }),
                    SourceConfig::Serial(_) => None,
                })
                .collect(),
            rules: config.sensors.iter().map(policy_rule).collect(),
            default_window_ms: config.pipeline.default_window.as_millis() as i64,
            allowed_lateness_ms: config.pipeline.allowed_lateness.as_millis() as i64,
            max_sensors: config.pipeline.max_sensors,
            max_payload_bytes: config.pipeline.max_payload_bytes,
            retire_after_ms: config.pipeline.retire_after.map(duration_ms),
            max_future_skew_ms: duration_ms(config.pipeline.max_future_skew),
            max_event_age_ms: duration_ms(config.pipeline.max_event_age),
            summary_topic: config.upstream.summary_topic.clone(),
            alarm_topic: config.upstream.alarm_topic.clone(),
            value_topic: config.upstream.value_topic.clone(),
        }
    }
}

/// The core's view of a `[[sensor]]` rule.
fn policy_rule(rule: &SensorRule) -> PolicyRule {
    PolicyRule {
        pattern: rule.pattern.clone(),
        matcher: rule.matcher.clone(),
        policy: Arc::new(SensorPolicy {
            window_ms: duration_ms(rule.window).max(1),
            min: rule.min.unwrap_or(f64::NEG_INFINITY),
            max: rule.max.unwrap_or(f64::INFINITY),
            stats: rule.stats,
            unit: rule.unit.as_deref().map(Arc::from),
            delivery: rule.delivery,
            alarm: rule.alarm.clone(),
            anomaly: rule.anomaly,
        }),
    }
}

/// A duration in ms, saturated to `i64`.
fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::processor::RawMessage;

    const RULES: &str = r#"
[gateway]
id = "gw"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"

[[sensor]]
match = "*/vibration"
window = "1s"

[sensor.alarm]
high = 2.8
hysteresis = 0.2

[upstream]
broker = "127.0.0.1:1884"
"#;

    /// A core that has just raised an alarm (its record in `out`), and a
    /// state saver that cannot create its temporary file (a directory is in
    /// its way, at `tmp`) until `tmp` is removed.
    struct FailingSave {
        dir: tempfile::TempDir,
        tmp: std::path::PathBuf,
        metrics: Arc<Metrics>,
        p: Processor,
        saver: StateSaver,
        out: Vec<Record>,
        t0: i64,
    }

    impl FailingSave {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = Config::parse(RULES, std::path::Path::new("t.toml")).unwrap();
            let metrics = Arc::new(Metrics::new());
            let mut p = Processor::new(CoreSettings::from_config(&config), metrics.clone(), 1);
            let saver = StateSaver::new(dir.path().to_owned(), metrics.clone());
            let tmp = crate::state::path(dir.path()).with_extension("state.tmp");
            std::fs::create_dir(&tmp).unwrap();
            let t0 = 1_700_000_000_000;
            let msg = RawMessage {
                source: 0,
                topic: "plant/l1/m1/vibration".into(),
                payload: bytes::Bytes::from(format!(r#"{{"value":5.0,"ts":{t0}}}"#)),
                received_ms: t0,
            };
            let mut out = Vec::new();
            p.ingest(&msg, t0, &mut out);
            FailingSave {
                dir,
                tmp,
                metrics,
                p,
                saver,
                out,
                t0,
            }
        }
    }

    #[tokio::test]
    async fn a_failed_state_save_is_retried_not_forgotten() {
        let FailingSave {
            dir,
            tmp,
            metrics,
            mut p,
            mut saver,
            out: _,
            t0,
        } = FailingSave::new();
        saver.save_if_needed(&mut p, false).await;
        assert_eq!(metrics.state_save_errors.get(), 1);
        assert!(!crate::state::path(dir.path()).exists());
        std::fs::remove_dir(&tmp).unwrap();
        // Nothing changed since: the pending alarm change is still saved,
        // once the retry delay has passed.
        saver.save_if_needed(&mut p, false).await;
        assert_eq!(metrics.state_saves.get(), 0, "not at once");
        let failed_at = saver.failed_at.unwrap();
        saver.failed_at = failed_at.checked_sub(SAVE_RETRY_AFTER);
        saver.save_if_needed(&mut p, false).await;
        assert_eq!(metrics.state_saves.get(), 1);
        let saved = crate::state::load(dir.path(), t0).unwrap().unwrap();
        assert_eq!(saved, p.export_state());
    }

    fn rec(seq: u64, lane: Lane) -> Record {
        Record {
            seq,
            lane,
            ts_ms: 0,
            topic: "gw/t".into(),
            payload: Vec::new(),
        }
    }

    fn seqs(recs: &[Record]) -> Vec<u64> {
        recs.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn alarm_events_wait_for_a_saved_state_and_summaries_do_not() {
        let mut hold = AlarmHold::default();
        let mut out = vec![
            rec(1, Lane::Alarm),
            rec(2, Lane::Summary),
            rec(3, Lane::Alarm),
        ];
        hold.sort(&mut out, false);
        assert_eq!(seqs(&out), [2]);
        // A summary after a kept-back event may be synced; the event is not.
        assert_eq!(hold.durable_limit(10), 0);
        let mut out = vec![rec(4, Lane::Summary), rec(5, Lane::Alarm)];
        hold.sort(&mut out, false);
        assert_eq!(seqs(&out), [4]);
        let mut out = vec![rec(6, Lane::Alarm), rec(7, Lane::Summary)];
        hold.sort(&mut out, true);
        assert_eq!(seqs(&out), [1, 3, 5, 6, 7], "kept back first, in order");
        assert!(hold.held.is_empty());
        assert_eq!(hold.durable_limit(10), 10);
    }

    #[tokio::test]
    async fn alarm_events_are_not_forwarded_until_a_failed_state_save_succeeds() {
        let FailingSave {
            dir: _dir,
            tmp,
            metrics,
            mut p,
            mut saver,
            mut out,
            t0: _,
        } = FailingSave::new();
        let raised = seqs(&out);
        assert_eq!(raised.len(), 1);
        out.push(rec(100, Lane::Summary));
        let (tx, mut rx) = mpsc::channel(16);
        let mut hold = AlarmHold::default();
        saver.save_if_needed(&mut p, false).await;
        assert_eq!(metrics.state_save_errors.get(), 1);
        assert!(pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await);
        assert_eq!(rx.try_recv().unwrap().seq, 100, "summaries go on");
        assert!(rx.try_recv().is_err(), "the unsaved alarm event waits");
        // Still failing at the retry: still waiting.
        saver.failed_at = saver.failed_at.unwrap().checked_sub(SAVE_RETRY_AFTER);
        saver.save_if_needed(&mut p, false).await;
        assert!(pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await);
        assert!(rx.try_recv().is_err());
        std::fs::remove_dir(&tmp).unwrap();
        saver.failed_at = saver.failed_at.unwrap().checked_sub(SAVE_RETRY_AFTER);
        saver.save_if_needed(&mut p, false).await;
        assert_eq!(metrics.state_saves.get(), 1);
        assert!(pass_on(&mut out, &mut hold, &saver, &tx, &metrics).await);
        assert_eq!(rx.try_recv().unwrap().seq, raised[0], "sent once saved");
    }
}
