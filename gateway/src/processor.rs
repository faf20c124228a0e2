//! The processing core: raw messages in, encoded summaries out.
//!
//! [`Processor`] is synchronous and does no I/O; the caller passes the current
//! time into every call. It resolves a topic to an interned sensor, decodes
//! the payload, drops and counts what is invalid (NaN, out of range, late),
//! keeps per-sensor tumbling windows on event time, and renders each closed
//! window as a [`Record`] for upstream, numbered with the gateway's
//! monotonically increasing sequence number.
//!
//! Window closing: a window `[start, end)` of a sensor is emitted when that
//! sensor's newest event time reaches `end + allowed_lateness` (the event
//! watermark), or when the sensor has been silent for `window +
//! allowed_lateness` of gateway time (so a sensor that stops still reports its
//! last window). A reading whose window was already emitted is late: it is
//! counted and dropped, never merged into a later window.

use std::sync::Arc;

use serde::Serialize;

use crate::decode::{self, DecodeError, PayloadFormat};
use crate::metrics::Metrics;
use crate::model::payload::{Envelope, Header, Labels, RecordKind, SummaryBody, SCHEMA};
use crate::model::{Reading, Record, RegistryError, SensorKey, SensorRegistry};
use crate::policy::{PolicyRule, SensorPolicy, StatSet};
use crate::reject::{LogLimiter, Reject};
use crate::topic::{OutputTemplate, ResolveError, TopicTemplate};
use crate::window::WindowStats;
use crate::wire::SerialReading;

/// One message as a source received it.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Index of the source in the configuration.
    pub source: usize,
    pub topic: String,
    pub payload: bytes::Bytes,
    /// Gateway time of arrival, ms since the Unix epoch.
    pub received_ms: i64,
}

/// What the sources hand to the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// An MQTT message, decoded by the core.
    Message(RawMessage),
    /// Readings a serial port decoded (the port's decoder is pure too, but
    /// runs in the port's task so that one busy port does not stall the
    /// others' framing).
    Serial(Vec<SerialReading>),
}

impl Input {
    /// Moves the times the gateway clock gave this input by `delta_ms`: the
    /// arrival time of a message, the event times of serial readings that
    /// came from the gateway clock. Times from the sender's own clock stay.
    /// Used when the input waited for the clock to become trustworthy.
    pub fn correct_gateway_times(&mut self, delta_ms: i64) {
        match self {
            Input::Message(m) => m.received_ms = m.received_ms.saturating_add(delta_ms),
            Input::Serial(readings) => {
                for r in readings.iter_mut().filter(|r| r.gateway_clock) {
                    r.ts_ms = r.ts_ms.saturating_add(delta_ms);
                }
            }
        }
    }
}

/// How a source's messages are interpreted.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub template: TopicTemplate,
    pub payload: PayloadFormat,
}

/// Settings of the core, resolved from the configuration by the runtime
/// (`CoreSettings::from_config` lives there: the core never sees a `Config`).
#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub gateway_id: String,
    /// Per configured source, by index; `None` for a serial port, whose
    /// readings arrive decoded.
    pub sources: Vec<Option<SourceSpec>>,
    /// Per-sensor policies by id pattern; a sensor no rule matches gets
    /// [`SensorPolicy::default_for`] `default_window_ms`.
    pub rules: Vec<PolicyRule>,
    pub default_window_ms: i64,
    pub allowed_lateness_ms: i64,
    pub max_sensors: usize,
    pub max_payload_bytes: usize,
    /// Silence after which a sensor is forgotten (`None`: four of its
    /// windows plus the allowed lateness, at least [`MIN_RETIRE_AFTER_MS`]).
    pub retire_after_ms: Option<i64>,
    /// Event times more than this ahead of `now_ms` are rejected (`future`).
    pub max_future_skew_ms: i64,
    /// Event times more than this behind `now_ms` are rejected (`too_old`).
    pub max_event_age_ms: i64,
    pub summary_topic: OutputTemplate,
    pub alarm_topic: OutputTemplate,
    pub value_topic: OutputTemplate,
}

/// The shortest default silence before a sensor is retired.
pub const MIN_RETIRE_AFTER_MS: i64 = 60_000;

/// Per-sensor state. Windows are few (the current one and those still within
/// the allowed lateness), so a small vector sorted by start is enough.
#[derive(Debug)]
struct SensorState {
    /// False once retired: the slot waits for reuse.
    live: bool,
    /// Silence (gateway time since the last accepted reading) after which
    /// the sensor is retired when nothing of it is pending.
    retire_after_ms: i64,
    /// Resolved when the sensor was first seen and again at each reload.
    policy: Arc<SensorPolicy>,
    /// Whether a rule gave the policy (else it is the default one).
    ruled: bool,
    /// The unit a serial mapping gave, used when no rule names one.
    unit: Option<Arc<str>>,
    open: Vec<(i64, WindowStats)>,
    max_event_ms: i64,
    last_arrival_ms: i64,
    /// Windows ending at or before this were emitted; older readings are late.
    closed_until_ms: i64,
    /// Alarm, baseline and report-by-exception state, for sensors whose
    /// rule asks for them (boxed: most sensors have none).
    extra: Option<Box<analytics::Extra>>,
}

/// The synchronous processing core.
pub struct Processor {
    settings: CoreSettings,
    /// The policy of sensors no rule matches.
    default_policy: Arc<SensorPolicy>,
    registry: SensorRegistry,
    sensors: Vec<SensorState>,
    /// Retired sensors' closed-window marks, so that one coming back never
    /// sends a window again.
    tombstones: crate::model::Tombstones,
    metrics: Arc<Metrics>,
    next_seq: u64,
    limiter: LogLimiter,
    /// Where a bounded flush resumes (one cursor per kind of flush).
    flush_cursor: usize,
    flush_all_cursor: usize,
    /// Alarm state changed since the last [`Processor::take_dirty`] (it must
    /// be persisted before the events are delivered).
    alarms_dirty: bool,
    /// Baselines changed since the last [`Processor::take_dirty`].
    baselines_dirty: bool,
    /// Scratch space for events, reused.
    alarm_events: Vec<crate::alarm::AlarmEvent>,
    anomaly_events: Vec<crate::anomaly::AnomalyEvent>,
    /// Scratch space for encoding a record's payload, reused.
    scratch: Vec<u8>,
    /// The earliest gateway time after the last complete scan of
    /// [`Processor::flush_due_bounded`] at which time alone changes
    /// something (a window closes for silence, a stale alarm or heartbeat
    /// is due, a sensor retires); lowered by every accepted reading.
    /// `i64::MIN` until the first scan: due at once.
    next_due_ms: i64,
    /// The same, gathered by the scan in progress.
    scan_due_ms: i64,
}

impl Processor {
    /// `next_seq` is the sequence number the next record gets; it continues
    /// from what was handed out before a restart.
    pub fn new(settings: CoreSettings, metrics: Arc<Metrics>, next_seq: u64) -> Self {
        Self {
            default_policy: Arc::new(SensorPolicy::default_for(settings.default_window_ms)),
            registry: SensorRegistry::new(settings.max_sensors),
            tombstones: crate::model::Tombstones::new(settings.max_sensors),
            settings,
            sensors: Vec::new(),
            metrics,
            next_seq: next_seq.max(1),
            limiter: LogLimiter::new(10_000),
            flush_cursor: 0,
            flush_all_cursor: 0,
            alarms_dirty: false,
            baselines_dirty: false,
            alarm_events: Vec::new(),
            anomaly_events: Vec::new(),
            scratch: Vec::with_capacity(1024),
            next_due_ms: i64::MIN,
            scan_due_ms: i64::MAX,
        }
    }

    /// The gateway time at which [`Processor::flush_due`] next has work,
    /// if any: the shell sleeps until then instead of ticking. Valid once
    /// a scan of `flush_due` completed; new readings only make it earlier.
    pub fn next_due(&self) -> Option<i64> {
        (self.next_due_ms != i64::MAX).then_some(self.next_due_ms)
    }

    /// When time alone next changes sensor `i`, later than `now_ms`
    /// (`i64::MAX`: never, until a reading arrives). Times already past are
    /// left out: what they made due was done at `now_ms`, or waits for
    /// something other than time (a latched alarm keeps a silent sensor).
    fn sensor_due(&self, i: usize, now_ms: i64) -> i64 {
        let s = &self.sensors[i];
        if !s.live || s.last_arrival_ms == i64::MIN {
            return i64::MAX;
        }
        let mut due = if s.open.is_empty() {
            s.last_arrival_ms.saturating_add(s.retire_after_ms)
        } else {
            s.last_arrival_ms
                .saturating_add(s.policy.window_ms)
                .saturating_add(self.settings.allowed_lateness_ms)
        };
        if let Some(extra) = &s.extra {
            let rule = &s.policy;
            let stale = rule
                .alarm
                .as_ref()
                .and_then(|a| a.stale_after_ms)
                .map(|after| s.last_arrival_ms.saturating_add(after));
            let heartbeat = extra.heartbeat_due(&rule.delivery);
            for t in [stale, heartbeat].into_iter().flatten() {
                if t > now_ms {
                    due = due.min(t);
                }
            }
        }
        if due > now_ms {
            due
        } else {
            i64::MAX
        }
    }

    fn note_due(&mut self, due: i64) {
        self.next_due_ms = self.next_due_ms.min(due);
        self.scan_due_ms = self.scan_due_ms.min(due);
    }

    pub fn registry(&self) -> &SensorRegistry {
        &self.registry
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Takes one raw message; closed windows are appended to `out`.
    pub fn ingest(&mut self, msg: &RawMessage, now_ms: i64, out: &mut Vec<Record>) {
        self.metrics.messages_received.inc();
        match self.decode_message(msg) {
            Ok(reading) => self.record(reading, now_ms, out),
            Err(reason) => self.rejected(reason, &msg.topic, None, now_ms),
        }
    }

    fn decode_message(&mut self, msg: &RawMessage) -> Result<Reading, Reject> {
        if msg.payload.len() > self.settings.max_payload_bytes {
            return Err(Reject::Oversize);
        }
        let Some(Some(spec)) = self.settings.sources.get(msg.source) else {
            return Err(Reject::UnknownTopic);
        };
        let sensor = match self.registry.lookup(&msg.topic) {
            Some(k) => k,
            None => {
                let info = spec.template.resolve(&msg.topic).map_err(|e| match e {
                    ResolveError::NoMatch => Reject::UnknownTopic,
                    ResolveError::BadName(_) => Reject::BadName,
                })?;
                self.intern(&msg.topic, info, None)?
            }
        };
        let Some(Some(spec)) = self.settings.sources.get(msg.source) else {
            return Err(Reject::UnknownTopic);
        };
        let decoded = decode::decode(&spec.payload, &msg.payload).map_err(|e| match e {
            DecodeError::NotUtf8 => Reject::NotUtf8,
            DecodeError::NotANumber => Reject::NotANumber,
            DecodeError::Json { .. } => Reject::JsonSyntax,
            DecodeError::MissingValue => Reject::MissingValue,
            DecodeError::ValueNotNumber => Reject::ValueNotNumber,
            DecodeError::BadTimestamp => Reject::BadTimestamp,
            DecodeError::BadSequence => Reject::BadSequence,
        })?;
        Ok(Reading {
            sensor,
            ts_ms: decoded.ts_ms.unwrap_or(msg.received_ms),
            value: decoded.value,
            seq: decoded.seq,
        })
    }

    /// Takes what a source sent; closed windows are appended to `out`.
    pub fn ingest_input(&mut self, input: &Input, now_ms: i64, out: &mut Vec<Record>) {
        match input {
            Input::Message(m) => self.ingest(m, now_ms, out),
            Input::Serial(readings) => {
                for r in readings {
                    self.ingest_serial(r, now_ms, out);
                }
            }
        }
    }

    /// Takes one reading of a serial channel.
    pub fn ingest_serial(&mut self, r: &SerialReading, now_ms: i64, out: &mut Vec<Record>) {
        // Each reading counts as one message, so that received = accepted +
        // rejected holds for serial sources too.
        self.metrics.messages_received.inc();
        let sensor = match self.registry.lookup(&r.sensor) {
            Some(k) => k,
            None if crate::topic::check_sensor_id(&r.sensor).is_err() => {
                // The port's decoder checks the names it builds; this keeps
                // the core's own promise for any other producer.
                self.rejected(Reject::BadName, &r.sensor.clone(), Some(r.value), now_ms);
                return;
            }
            None => {
                let info = crate::model::SensorInfo {
                    id: r.sensor.clone(),
                    names: Arc::from(Vec::new()),
                };
                match self.intern(&r.sensor, info, r.unit.clone()) {
                    Ok(key) => key,
                    Err(reason) => {
                        self.rejected(reason, &r.sensor.clone(), Some(r.value), now_ms);
                        return;
                    }
                }
            }
        };
        self.record(
            Reading {
                sensor,
                ts_ms: r.ts_ms,
                value: r.value,
                seq: None,
            },
            now_ms,
            out,
        );
    }

    /// Interns a sensor under `wire_name` and gives a new one its state. A
    /// sensor already known by its id (restored from saved state, or named
    /// by another wire name) keeps its state and takes a `unit` it lacked.
    fn intern(
        &mut self,
        wire_name: &str,
        info: crate::model::SensorInfo,
        unit: Option<Arc<str>>,
    ) -> Result<SensorKey, Reject> {
        let key = self.registry.insert(wire_name, info).map_err(|e| match e {
            RegistryError::Full(_) => Reject::SensorLimit,
        })?;
        if self.sensors.get(key.index()).is_none_or(|s| !s.live) {
            self.add_sensor_state(key, unit);
        } else if let Some(state) = self.sensors.get_mut(key.index()) {
            if state.unit.is_none() {
                state.unit = unit;
            }
        }
        Ok(key)
    }

    fn add_sensor_state(&mut self, key: SensorKey, unit: Option<Arc<str>>) {
        let info = self.registry.info(key);
        let (policy, ruled) =
            crate::policy::resolve(&self.settings.rules, &self.default_policy, &info.id);
        // A sensor retired and back: windows it already sent stay sent.
        let closed_until_ms = self.tombstones.take(&info.id).unwrap_or(i64::MIN);
        let state = SensorState {
            live: true,
            retire_after_ms: self.retire_after(&policy),
            extra: policy.needs_analytics().then(Box::default),
            policy,
            ruled,
            unit,
            open: Vec::with_capacity(2),
            max_event_ms: i64::MIN,
            last_arrival_ms: i64::MIN,
            closed_until_ms,
        };
        match self.sensors.get_mut(key.index()) {
            Some(slot) => *slot = state,
            None => self.sensors.push(state),
        }
        self.metrics.sensors_live.set(self.registry.len() as i64);
    }

    /// The silence after which a sensor of `policy` is retired: never before
    /// its last window could have closed.
    fn retire_after(&self, policy: &SensorPolicy) -> i64 {
        let lateness = self.settings.allowed_lateness_ms;
        let window_ms = policy.window_ms.max(1);
        let closes_after = window_ms.saturating_add(lateness);
        self.settings
            .retire_after_ms
            .unwrap_or_else(|| {
                (window_ms.saturating_mul(4))
                    .saturating_add(lateness)
                    .max(MIN_RETIRE_AFTER_MS)
            })
            .max(closes_after)
    }

    /// Validates a decoded reading and merges it into its window.
    pub fn record(&mut self, r: Reading, now_ms: i64, out: &mut Vec<Record>) {
        let Some(state) = self.sensors.get_mut(r.sensor.index()) else {
            return;
        };
        // Time from outside is checked against the gateway clock before it
        // can move the watermark or make a summary the buffer would expire.
        let reject = if !r.value.is_finite() {
            Some(Reject::NonFinite)
        } else if r.value < state.policy.min || r.value > state.policy.max {
            Some(Reject::OutOfRange)
        } else if r.ts_ms > now_ms.saturating_add(self.settings.max_future_skew_ms) {
            Some(Reject::Future)
        } else if r.ts_ms < now_ms.saturating_sub(self.settings.max_event_age_ms) {
            Some(Reject::TooOld)
        } else if r.ts_ms < state.closed_until_ms {
            Some(Reject::Late)
        } else {
            None
        };
        if let Some(reason) = reject {
            let id = self.registry.info(r.sensor).id.clone();
            self.rejected(reason, &id, Some(r.value), now_ms);
            return;
        }
        state.max_event_ms = state.max_event_ms.max(r.ts_ms);
        state.last_arrival_ms = now_ms;
        self.metrics.readings_accepted.inc();
        if state.extra.is_some() {
            // Alarms bypass the windows; non-summary delivery skips them.
            if !self.analyse_reading(r, now_ms, out) {
                return;
            }
        }
        let state = &mut self.sensors[r.sensor.index()];
        let window_ms = state.policy.window_ms.max(1);
        let start = r.ts_ms.saturating_sub(r.ts_ms.rem_euclid(window_ms));
        match state.open.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => state.open[i].1.push(r.value, r.ts_ms),
            Err(i) => {
                let mut w = WindowStats::with_options(start, state.policy.stats.any_percentile());
                w.push(r.value, r.ts_ms);
                state.open.insert(i, (start, w));
            }
        }
        let watermark = state
            .max_event_ms
            .saturating_sub(self.settings.allowed_lateness_ms);
        self.close_sensor(r.sensor, watermark, out);
        let due = self.sensor_due(r.sensor.index(), now_ms);
        self.note_due(due);
    }

    /// Emits every window that is complete at `now_ms` (by watermark or
    /// because its sensor went quiet).
    pub fn flush_due(&mut self, now_ms: i64, out: &mut Vec<Record>) {
        while !self.flush_due_bounded(now_ms, out, usize::MAX) {}
    }

    /// Like [`Processor::flush_due`], but stops once `out` has grown by
    /// `max` records, so that a shell can pass them on before taking more
    /// (10,000 sensors whose windows end together would otherwise make
    /// 10,000 records at once). Returns whether the scan of all sensors is
    /// complete; the next call resumes where this one stopped.
    pub fn flush_due_bounded(&mut self, now_ms: i64, out: &mut Vec<Record>, max: usize) -> bool {
        let lateness = self.settings.allowed_lateness_ms;
        let limit = out.len().saturating_add(max);
        if self.flush_cursor == 0 {
            self.scan_due_ms = i64::MAX;
        }
        while self.flush_cursor < self.sensors.len() {
            let i = self.flush_cursor;
            self.flush_cursor += 1;
            if !self.sensors[i].live {
                continue;
            }
            if self.sensors[i].extra.is_some() {
                self.analyse_time(SensorKey(i as u32), now_ms, out);
            }
            let s = &self.sensors[i];
            if s.open.is_empty() {
                if now_ms.saturating_sub(s.last_arrival_ms) >= s.retire_after_ms
                    && self.retirable(SensorKey(i as u32))
                {
                    self.retire(SensorKey(i as u32));
                }
                let due = self.sensor_due(i, now_ms);
                self.note_due(due);
                continue;
            }
            let idle = now_ms.saturating_sub(s.last_arrival_ms) >= s.policy.window_ms + lateness;
            let watermark = if idle {
                i64::MAX
            } else {
                s.max_event_ms.saturating_sub(lateness)
            };
            self.close_sensor(SensorKey(i as u32), watermark, out);
            let due = self.sensor_due(i, now_ms);
            self.note_due(due);
            if out.len() >= limit {
                return false;
            }
        }
        self.flush_cursor = 0;
        self.next_due_ms = self.scan_due_ms;
        true
    }

    /// The gateway clock stepped by `delta_ms` (positive: forward) and now
    /// reads `now_ms`. What was measured on it moves with it: the arrival
    /// times behind the silence checks (a window closing for silence, stale
    /// alarms, heartbeats, retirement), so a step is not mistaken for
    /// silence or for activity. After a backward step, readings stamped by
    /// the corrected clock would fall into windows already emitted: every
    /// sensor whose marks are ahead of the clock emits its open windows
    /// now, and its lateness and watermark marks are brought back to the
    /// clock, so that live readings are not counted `late`.
    pub fn clock_stepped(&mut self, delta_ms: i64, now_ms: i64, out: &mut Vec<Record>) {
        for i in 0..self.sensors.len() {
            let s = &mut self.sensors[i];
            if !s.live {
                continue;
            }
            if s.last_arrival_ms != i64::MIN {
                s.last_arrival_ms = s.last_arrival_ms.saturating_add(delta_ms).min(now_ms);
            }
            if let Some(extra) = s.extra.as_mut() {
                extra.clock_stepped(delta_ms);
            }
            if delta_ms >= 0 || (s.closed_until_ms <= now_ms && s.max_event_ms <= now_ms) {
                continue;
            }
            self.close_sensor(SensorKey(i as u32), i64::MAX, out);
            let s = &mut self.sensors[i];
            let floor = now_ms.saturating_sub(self.settings.allowed_lateness_ms);
            let window_start = floor.saturating_sub(floor.rem_euclid(s.policy.window_ms));
            s.closed_until_ms = s.closed_until_ms.min(window_start);
            s.max_event_ms = s.max_event_ms.min(now_ms);
        }
        // Due times moved: the next scan finds them again.
        self.next_due_ms = i64::MIN;
    }

    /// Whether nothing of a silent sensor would be lost by forgetting it:
    /// no active or latched alarm, no alarm event still waiting to become
    /// durable, and no stale alarm waiting to notice its silence.
    fn retirable(&self, key: SensorKey) -> bool {
        let s = &self.sensors[key.index()];
        if s.last_arrival_ms == i64::MIN {
            // Interned, but no reading was ever accepted: nothing to lose,
            // and no stale alarm can start without a first reading.
            return true;
        }
        // An alarm event not yet durable in the buffer stays in the sensor's
        // ledger (to be sent again after a crash) until it is.
        !s.policy.watches_staleness()
            && s.extra
                .as_ref()
                .is_none_or(|e| !e.holds_alarm() && e.ledger_is_empty())
    }

    /// Forgets a silent sensor: its memory is freed and its slot reused, so
    /// a flood of one-off topics ages out instead of filling the table.
    fn retire(&mut self, key: SensorKey) {
        let Some(s) = self.sensors.get_mut(key.index()) else {
            return;
        };
        s.live = false;
        let had_extra = s.extra.take().is_some();
        s.open = Vec::new();
        s.unit = None;
        let closed_until_ms = s.closed_until_ms;
        if closed_until_ms != i64::MIN {
            let id = self.registry.info(key).id.clone();
            self.tombstones.insert(id, closed_until_ms);
        }
        // Its baseline leaves the saved state at the next save.
        self.baselines_dirty |= had_extra;
        self.registry.retire(key);
        self.metrics.sensors_retired.inc();
        self.metrics.sensors_live.set(self.registry.len() as i64);
    }

    /// Emits every open window, complete or not; used at shutdown.
    pub fn flush_all(&mut self, out: &mut Vec<Record>) {
        while !self.flush_all_bounded(out, usize::MAX) {}
    }

    /// Like [`Processor::flush_all`], in slices of at most `max` records;
    /// returns whether every sensor was visited.
    pub fn flush_all_bounded(&mut self, out: &mut Vec<Record>, max: usize) -> bool {
        let limit = out.len().saturating_add(max);
        while self.flush_all_cursor < self.sensors.len() {
            let i = self.flush_all_cursor;
            self.flush_all_cursor += 1;
            if !self.sensors[i].live {
                continue;
            }
            self.close_sensor(SensorKey(i as u32), i64::MAX, out);
            if out.len() >= limit {
                return false;
            }
        }
        self.flush_all_cursor = 0;
        true
    }

    /// Emits the windows of `key` that end at or before `watermark`.
    fn close_sensor(&mut self, key: SensorKey, watermark: i64, out: &mut Vec<Record>) {
        let state = &mut self.sensors[key.index()];
        let window_ms = state.policy.window_ms.max(1);
        let n = state
            .open
            .iter()
            .take_while(|(start, _)| start.saturating_add(window_ms) <= watermark)
            .count();
        if n == 0 {
            return;
        }
        let closing: Vec<(i64, WindowStats)> = state.open.drain(..n).collect();
        if let Some((start, _)) = closing.last() {
            state.closed_until_ms = state.closed_until_ms.max(start + window_ms);
        }
        let stats = state.policy.stats;
        for (start, w) in closing {
            let q = |k: usize| {
                stats.percentiles[k]
                    .then(|| w.quantile(StatSet::QUANTILES[k].0))
                    .flatten()
            };
            let body = SummaryBody {
                window_start_ms: start,
                window_end_ms: start + window_ms,
                count: w.count,
                min: stats.min.then_some(w.min),
                max: stats.max.then_some(w.max),
                mean: stats.mean.then(|| w.mean()),
                std: stats.std.then(|| w.std_dev()),
                rms: stats.rms.then(|| w.rms()),
                p2p: stats.p2p.then(|| w.peak_to_peak()),
                crest: stats.crest.then(|| w.crest_factor()).flatten(),
                skewness: stats.skewness.then(|| w.skewness()).flatten(),
                kurtosis: stats.kurtosis.then(|| w.kurtosis()).flatten(),
                p50: q(0),
                p90: q(1),
                p95: q(2),
                p99: q(3),
                slope_per_hour: stats.slope.then(|| w.slope_per_hour()).flatten(),
                first: stats.first_last.then_some(w.first),
                last: stats.first_last.then_some(w.last),
                first_ts_ms: stats.first_last.then_some(w.first_ts_ms),
                last_ts_ms: stats.first_last.then_some(w.last_ts_ms),
            };
            self.emit(
                key,
                RecordKind::Summary,
                None,
                start + window_ms,
                |_| body,
                out,
            );
            self.metrics.summaries_produced.inc();
            if self.sensors[key.index()].extra.is_some() {
                self.analyse_window(key, start, start + window_ms, &w, out);
            }
        }
    }

    /// The one place a record is made: takes the next seq, writes the
    /// header every payload shares (schema, kind, event, gateway, seq,
    /// sensor, labels, unit) before the fields of its kind (`body`, given the
    /// seq), renders the kind's topic and appends the record to `out`.
    /// Returns the seq.
    fn emit<B: Serialize>(
        &mut self,
        key: SensorKey,
        kind: RecordKind,
        event: Option<&'static str>,
        ts_ms: i64,
        body: impl FnOnce(u64) -> B,
        out: &mut Vec<Record>,
    ) -> u64 {
        let seq = self.take_seq();
        let unit = self.unit_of(key);
        let info = self.registry.info(key);
        let envelope = Envelope {
            header: Header {
                schema: SCHEMA,
                kind: kind.name(),
                event,
                gateway: &self.settings.gateway_id,
                seq,
                sensor: &info.id,
                labels: Labels(info),
                unit: unit.as_deref(),
            },
            body: body(seq),
        };
        // Encoded into reused scratch space and copied out at its exact
        // length: no growth reallocations per record, and no spare capacity
        // held while the record waits for its acknowledgement. Serializing
        // plain numbers and strings into a Vec cannot fail.
        self.scratch.clear();
        let _ = serde_json::to_writer(&mut self.scratch, &envelope);
        let payload = self.scratch.clone();
        let template = match kind {
            RecordKind::Summary => &self.settings.summary_topic,
            RecordKind::Alarm | RecordKind::Anomaly => &self.settings.alarm_topic,
            RecordKind::Value => &self.settings.value_topic,
        };
        out.push(Record {
            seq,
            lane: kind.lane(),
            ts_ms,
            topic: template.render(&self.settings.gateway_id, info),
            payload,
        });
        seq
    }

    fn rejected(&mut self, reason: Reject, what: &str, value: Option<f64>, now_ms: i64) {
        self.metrics.reject(reason);
        if let Some(suppressed) = self.limiter.allow(reason, now_ms) {
            tracing::warn!(
                reason = reason.name(),
                sensor_or_topic = ?crate::topic::excerpt(what),
                value,
                similar_suppressed = suppressed,
                "Dropped a reading: {}.",
                reject_sentence(reason)
            );
        }
    }
}

fn reject_sentence(r: Reject) -> &'static str {
    match r {
        Reject::Oversize => "the payload is larger than pipeline.max_payload_bytes",
        Reject::UnknownTopic => "the topic does not fit the source's topic_template",
        Reject::SensorLimit => "pipeline.max_sensors distinct sensors are already known",
        Reject::NotUtf8 => "the payload is not UTF-8 text",
        Reject::NotANumber => "the payload is not a number",
        Reject::JsonSyntax => "the payload is not a JSON object",
        Reject::MissingValue => "the JSON object has no value field",
        Reject::ValueNotNumber => "the value field is not a number",
        Reject::BadTimestamp => "the timestamp field is not a valid time",
        Reject::BadSequence => "the sequence field is not a non-negative integer",
        Reject::NonFinite => "the value is NaN or infinite",
        Reject::OutOfRange => "the value is outside the sensor rule's min..max",
        Reject::Late => {
            "its window was already sent (raise pipeline.allowed_lateness to accept later readings)"
        }
        Reject::Future => {
            "its time is ahead of the gateway clock by more than pipeline.max_future_skew (fix the sender's clock, or the gateway's)"
        }
        Reject::TooOld => {
            "its time is older than pipeline.max_event_age (fix the sender's clock, or raise max_event_age for replayed history)"
        }
        Reject::BadName => {
            "its name has `+`, `#`, `/`, NUL or control characters, or is too long, so it cannot name a sensor or an upstream topic (rename it at the sender)"
        }
    }
}

mod analytics;
#[cfg(test)]
mod analytics_tests;
mod reload;
#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use analytics::{
    escaped, parse_command, AlarmLedger, Command, CommandError, EmittedAlarmEvent, PersistedSensor,
    PersistedState, MAX_COMMAND_BYTES,
};
pub use reload::{SensorPlan, PLAN_LISTS_AT_MOST};
