//! The analytics part of the core: alarms on every reading, report by
//! exception (`on_change`) and `raw` delivery, anomaly detection on closed
//! windows, alarm acknowledgements, and the state that survives restarts.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Processor, Record};
use crate::alarm::{AlarmEvent, AlarmKind, SensorAlarms, Transition};
use crate::anomaly::{AnomalyEvent, Baseline};
use crate::model::payload::{AlarmBody, AnomalyBody, RecordKind, ValueBody};
use crate::model::Lane;
use crate::model::{Reading, SensorInfo, SensorKey};
use crate::policy::Delivery;
use crate::reject::CommandReject;
use crate::window::WindowStats;

/// Per-sensor analytics state.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    alarms: SensorAlarms,
    baseline: Baseline,
    /// The last value sent by `on_change`: (value, event time, gateway time sent).
    last_sent: Option<(f64, i64, i64)>,
    /// Per alarm kind (at most one entry each): the current occurrence and
    /// the events emitted but not yet known durable, persisted so that a
    /// restart can tell whether they reached the buffer.
    ledger: Vec<AlarmLedger>,
}

impl Extra {
    /// When an `on_change` sensor's heartbeat is due (gateway time), if it
    /// has one.
    pub(super) fn heartbeat_due(&self, delivery: &Delivery) -> Option<i64> {
        let Delivery::OnChange {
            max_silence_ms: Some(silence),
            ..
        } = delivery
        else {
            return None;
        };
        self.last_sent
            .map(|(_, _, sent_at)| sent_at.saturating_add(*silence))
    }

    /// The gateway clock stepped: the time the last value was sent moves
    /// with it.
    pub(super) fn clock_stepped(&mut self, delta_ms: i64) {
        if let Some((_, _, sent_at)) = self.last_sent.as_mut() {
            *sent_at = sent_at.saturating_add(delta_ms);
        }
    }
}

/// The most alarm events one sensor's ledger keeps while they are not known
/// to be durable. An occurrence emits at most three (`raised`,
/// `acknowledged`, `cleared`), and the buffer makes alarm events durable as
/// soon as it takes them, so the ledger normally holds a few; it fills only
/// when an alarm flaps while durability lags (a state save or the buffer
/// failing). Beyond it the oldest event is forgotten and counted
/// (`gateway_alarm_ledger_overflow_total`): a crash then could not send it
/// again.
pub const MAX_LEDGER_EVENTS: usize = 32;

/// The largest command payload looked at; larger ones are rejected unread.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// `by` is kept (and logged) up to this many characters.
const MAX_BY_CHARS: usize = 64;
/// Outsider text (alarm ids, names, error text) is logged up to this many
/// characters, escaped.
const MAX_LOGGED_CHARS: usize = 64;

/// An acknowledgement from upstream, parsed and bounded:
/// `{"command":"ack","alarm_id":"...","occurrence":...,"by":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `<sensor id>:<alarm kind>`, as alarm events carry it.
    pub alarm_id: String,
    /// The occurrence acknowledged: the `occurrence` field of the alarm's
    /// events (the seq of the event that raised it).
    pub occurrence: u64,
    /// Who acknowledged (an operator's name), for the record; at most
    /// 64 characters.
    pub by: String,
}

impl Extra {
    /// Whether an alarm of the sensor is active or latched.
    pub(super) fn holds_alarm(&self) -> bool {
        self.alarms.any_active()
    }

    /// Whether no alarm event of the sensor waits to be known durable
    /// ([`Processor::confirm_durable`]). A sensor whose ledger is not empty
    /// must not be retired: its events would no longer be sent again if a
    /// crash lost them before the buffer stored them.
    pub(crate) fn ledger_is_empty(&self) -> bool {
        self.ledger.iter().all(|l| l.events.is_empty())
    }

    /// Forgets the alarm states (a reload removed the sensor's alarms);
    /// returns how many were active. Pending ledger events stay until they
    /// are durable.
    pub(super) fn drop_alarms(&mut self) -> usize {
        let active = self.alarms.states.iter().filter(|a| a.active).count();
        self.alarms = SensorAlarms::default();
        forget_settled(self);
        active
    }
}

/// Why a command was not obeyed. [`CommandError::reason`] is what is
/// counted; the message escapes and truncates whatever the sender wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("retained message ignored: commands must be published without the retain flag")]
    Retained,
    #[error("payload of {0} bytes is larger than a command can be ({MAX_COMMAND_BYTES})")]
    Oversize(usize),
    #[error("not a command object: {}", escaped(.0))]
    Malformed(String),
    #[error("ack without `alarm_id`")]
    MissingAlarmId,
    #[error("unknown command {} (known: ack)", escaped(.0))]
    UnknownCommand(String),
    #[error("ack of {} without `occurrence`: copy the `occurrence` field of the alarm's event, so that an old ack cannot silence a later occurrence", escaped(.0))]
    MissingOccurrence(String),
    #[error("{} is not an alarm id (<sensor>:<type>)", escaped(.0))]
    NotAnAlarmId(String),
    #[error("unknown alarm type {}", escaped(.0))]
    UnknownAlarmType(String),
    #[error("unknown sensor {}", escaped(.0))]
    UnknownSensor(String),
    #[error("sensor {} has no alarms", escaped(.0))]
    NoAlarms(String),
    #[error("alarm {} is not active or already acknowledged", escaped(.0))]
    NotActive(String),
    #[error("ack of {} names occurrence {named}, but the alarm's latest occurrence is {current}", escaped(.alarm_id))]
    StaleOccurrence {
        alarm_id: String,
        named: u64,
        current: u64,
    },
    #[error("too many commands at once; dropped")]
    Overloaded,
}

impl CommandError {
    /// The reason it is counted under.
    pub fn reason(&self) -> CommandReject {
        match self {
            CommandError::Retained => CommandReject::Retained,
            CommandError::Oversize(_) => CommandReject::Oversize,
            CommandError::Malformed(_) | CommandError::MissingAlarmId => CommandReject::Malformed,
            CommandError::UnknownCommand(_) => CommandReject::UnknownCommand,
            CommandError::MissingOccurrence(_) => CommandReject::MissingOccurrence,
            CommandError::NotAnAlarmId(_)
            | CommandError::UnknownAlarmType(_)
            | CommandError::UnknownSensor(_)
            | CommandError::NoAlarms(_) => CommandReject::UnknownAlarm,
            CommandError::NotActive(_) => CommandReject::NotActive,
            CommandError::StaleOccurrence { .. } => CommandReject::StaleOccurrence,
            CommandError::Overloaded => CommandReject::Overloaded,
        }
    }
}

/// Outsider text made safe for a log line: truncated to 64 characters and
/// escaped (`{:?}`), so it can neither flood nor forge log lines.
pub fn escaped(text: &str) -> String {
    match text.char_indices().nth(MAX_LOGGED_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[derive(Deserialize)]
struct RawCommand {
    command: Option<String>,
    alarm_id: Option<String>,
    occurrence: Option<u64>,
    by: Option<String>,
}

/// Parses a command as it came off the command topic. A retained message is
/// refused whatever it says: the broker replays it on every subscription, so
/// an old acknowledgement would be obeyed again after each reconnect.
pub fn parse_command(payload: &[u8], retained: bool) -> Result<Command, CommandError> {
    if retained {
        return Err(CommandError::Retained);
    }
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::Oversize(payload.len()));
    }
    let raw: RawCommand =
        serde_json::from_slice(payload).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let command = raw.command.unwrap_or_default();
    if command != "ack" {
        return Err(CommandError::UnknownCommand(command));
    }
    let Some(alarm_id) = raw.alarm_id else {
        return Err(CommandError::MissingAlarmId);
    };
    let Some(occurrence) = raw.occurrence else {
        return Err(CommandError::MissingOccurrence(alarm_id));
    };
    let mut by = raw.by.unwrap_or_else(|| "unknown".into());
    if let Some((cut, _)) = by.char_indices().nth(MAX_BY_CHARS) {
        by.truncate(cut);
    }
    Ok(Command {
        alarm_id,
        occurrence,
        by,
    })
}

/// An alarm event as it was emitted: enough to emit it again, with the
/// same content, if a crash lost it before it was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmittedAlarmEvent {
    pub seq: u64,
    pub occurrence: u64,
    pub transition: Transition,
    pub ts_ms: i64,
    /// The record as emitted; emitted again with only its `seq` changed.
    pub topic: String,
    pub payload: Vec<u8>,
}

/// One alarm of a sensor: its current (or latest) occurrence, and every
/// event it emitted that is not yet known to be durable, in emission order.
/// Kept while the alarm is active or an event is pending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmLedger {
    pub kind: AlarmKind,
    /// The seq of the event that raised the current (or latest) occurrence;
    /// kept after its events became durable, because acknowledgements name
    /// it. 0 for an alarm restored from a state file of version 1.
    pub occurrence: u64,
    /// Emitted, not yet known durable, oldest first.
    pub events: Vec<EmittedAlarmEvent>,
}

impl AlarmLedger {
    fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.occurrence).chain(self.events.iter().map(|e| e.seq))
    }
}

/// What survives a restart: alarm states, the last alarm events and
/// baselines, per sensor id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub sensors: Vec<PersistedSensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedSensor {
    pub id: String,
    pub alarms: SensorAlarms,
    pub baseline: Baseline,
    /// Empty in state files of version 1.
    pub alarm_events: Vec<AlarmLedger>,
}

impl Processor {
    /// The unit of a sensor: its rule's, else its serial mapping's.
    pub(super) fn unit_of(&self, key: SensorKey) -> Option<Arc<str>> {
        let state = &self.sensors[key.index()];
        state.policy.unit.clone().or_else(|| state.unit.clone())
    }

    /// The next record's sequence number.
    pub(super) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.metrics.records_produced.inc();
        seq
    }

    /// Alarms and non-summary delivery for one accepted reading; returns
    /// whether the reading also goes into a window.
    pub(super) fn analyse_reading(
        &mut self,
        r: Reading,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> bool {
        let state = &mut self.sensors[r.sensor.index()];
        let rule = &*state.policy;
        let Some(extra) = state.extra.as_mut() else {
            return true;
        };
        let mut events = std::mem::take(&mut self.alarm_events);
        if let Some(spec) = &rule.alarm {
            extra.alarms.reading(spec, r.value, r.ts_ms, &mut events);
        }
        let latch = rule.alarm.as_ref().is_some_and(|a| a.latch);
        let send = match rule.delivery {
            Delivery::Summary => None,
            Delivery::Raw => Some("raw"),
            Delivery::OnChange {
                deadband,
                deadband_percent,
                ..
            } => {
                let changed = match extra.last_sent {
                    None => true,
                    Some((last, _, _)) => {
                        let d = (r.value - last).abs();
                        deadband.is_some_and(|b| d > b)
                            || deadband_percent.is_some_and(|p| d > p / 100.0 * last.abs())
                            || (deadband.is_none() && deadband_percent.is_none() && d > 0.0)
                    }
                };
                changed.then_some("change")
            }
        };
        if send.is_some() && matches!(rule.delivery, Delivery::OnChange { .. }) {
            extra.last_sent = Some((r.value, r.ts_ms, now_ms));
        }
        let windows = rule.delivery == Delivery::Summary;
        self.emit_alarm_events(r.sensor, &events, latch, out);
        events.clear();
        self.alarm_events = events;
        if let Some(reason) = send {
            self.emit_value(r.sensor, r.ts_ms, r.value, reason, out);
        }
        windows
    }

    /// Time-driven checks of one sensor: stale alarms, heartbeats.
    pub(super) fn analyse_time(&mut self, key: SensorKey, now_ms: i64, out: &mut Vec<Record>) {
        let state = &mut self.sensors[key.index()];
        let rule = &*state.policy;
        let Some(extra) = state.extra.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.alarm_events);
        if let Some(spec) = &rule.alarm {
            if state.last_arrival_ms != i64::MIN {
                extra
                    .alarms
                    .tick(spec, now_ms, state.last_arrival_ms, &mut events);
            }
        }
        let latch = rule.alarm.as_ref().is_some_and(|a| a.latch);
        let mut heartbeat = None;
        if let Delivery::OnChange {
            max_silence_ms: Some(silence),
            ..
        } = rule.delivery
        {
            if let Some((value, ts, sent_at)) = extra.last_sent {
                if now_ms - sent_at >= silence {
                    extra.last_sent = Some((value, ts, now_ms));
                    heartbeat = Some((ts, value));
                }
            }
        }
        self.emit_alarm_events(key, &events, latch, out);
        events.clear();
        self.alarm_events = events;
        if let Some((ts, value)) = heartbeat {
            self.emit_value(key, ts, value, "heartbeat", out);
        }
    }

    /// Anomaly detection on one closed window.
    pub(super) fn analyse_window(
        &mut self,
        key: SensorKey,
        start_ms: i64,
        end_ms: i64,
        w: &WindowStats,
        out: &mut Vec<Record>,
    ) {
        let state = &mut self.sensors[key.index()];
        let Some(spec) = state.policy.anomaly else {
            return;
        };
        let Some(extra) = state.extra.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.anomaly_events);
        extra.baseline.window(&spec, w.mean(), w.rms(), &mut events);
        self.baselines_dirty = true;
        for e in &events {
            self.emit_anomaly(key, e, start_ms, end_ms, out);
        }
        events.clear();
        self.anomaly_events = events;
    }

    /// Acknowledges an alarm occurrence; the number of events it produced.
    pub fn command(
        &mut self,
        cmd: &Command,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Result<usize, CommandError> {
        let (sensor, kind) = cmd
            .alarm_id
            .rsplit_once(':')
            .ok_or_else(|| CommandError::NotAnAlarmId(cmd.alarm_id.clone()))?;
        let kind = AlarmKind::from_name(kind)
            .ok_or_else(|| CommandError::UnknownAlarmType(kind.to_owned()))?;
        let key = self
            .registry
            .lookup_id(sensor)
            .ok_or_else(|| CommandError::UnknownSensor(sensor.to_owned()))?;
        let state = &mut self.sensors[key.index()];
        let no_alarms = || CommandError::NoAlarms(sensor.to_owned());
        let spec = state.policy.alarm.clone().ok_or_else(no_alarms)?;
        let extra = state.extra.as_mut().ok_or_else(no_alarms)?;
        let not_active = || CommandError::NotActive(cmd.alarm_id.clone());
        // Checked first: the ledger forgets the occurrence of an alarm that
        // is no longer active once its events are durable.
        if !extra.alarms.states[kind as usize].active {
            return Err(not_active());
        }
        let current = current_occurrence(&extra.ledger, kind);
        if cmd.occurrence != current {
            return Err(CommandError::StaleOccurrence {
                alarm_id: cmd.alarm_id.clone(),
                named: cmd.occurrence,
                current,
            });
        }
        let mut events = Vec::new();
        if !extra
            .alarms
            .acknowledge(&spec, kind, &cmd.by, now_ms, &mut events)
        {
            return Err(not_active());
        }
        self.emit_alarm_events(key, &events, spec.latch, out);
        Ok(events.len())
    }

    fn emit_alarm_events(
        &mut self,
        key: SensorKey,
        events: &[AlarmEvent],
        latched: bool,
        out: &mut Vec<Record>,
    ) {
        if events.is_empty() {
            return;
        }
        self.alarms_dirty = true;
        for e in events {
            let m = &self.metrics;
            match e.transition {
                Transition::Raised => {
                    m.alarms_raised.inc();
                    m.alarms_active.inc();
                }
                Transition::Cleared => {
                    m.alarms_cleared.inc();
                    m.alarms_active.sub(1);
                }
                Transition::Acknowledged => {
                    m.alarms_acknowledged.inc();
                }
            }
            // A raise starts an occurrence named by its own seq.
            let occurrence = match (e.transition, &self.sensors[key.index()].extra) {
                (Transition::Raised, _) => None,
                (_, Some(extra)) => Some(current_occurrence(&extra.ledger, e.kind)),
                (_, None) => Some(0),
            };
            let seq = self.emit_alarm_event(key, e, latched, occurrence, out);
            let occurrence = occurrence.unwrap_or(seq);
            // `emit` just pushed the event's record.
            let Some(rec) = out.last() else {
                continue;
            };
            let emitted = EmittedAlarmEvent {
                seq,
                occurrence,
                transition: e.transition,
                ts_ms: e.ts_ms,
                topic: rec.topic.clone(),
                payload: rec.payload.clone(),
            };
            if let Some(extra) = self.sensors[key.index()].extra.as_mut() {
                let i = match extra.ledger.iter().position(|l| l.kind == e.kind) {
                    Some(i) => i,
                    None => {
                        extra.ledger.push(AlarmLedger {
                            kind: e.kind,
                            occurrence: 0,
                            events: Vec::new(),
                        });
                        extra.ledger.len() - 1
                    }
                };
                let entry = &mut extra.ledger[i];
                if e.transition == Transition::Raised {
                    entry.occurrence = seq;
                }
                entry.events.push(emitted);
                if forget_oldest_beyond_cap(&mut extra.ledger) {
                    self.metrics.alarm_ledger_overflow.inc();
                }
            }
        }
    }

    /// Emits an alarm event and returns its seq. `occurrence` is `None` for
    /// a raise: its own seq.
    fn emit_alarm_event(
        &mut self,
        key: SensorKey,
        e: &AlarmEvent,
        latched: bool,
        occurrence: Option<u64>,
        out: &mut Vec<Record>,
    ) -> u64 {
        let alarm_id = format!("{}:{}", self.registry.info(key).id, e.kind.name());
        let event = e.transition.name();
        let seq = self.emit(
            key,
            RecordKind::Alarm,
            Some(event),
            e.ts_ms,
            |seq| AlarmBody {
                alarm_id: alarm_id.clone(),
                alarm_type: e.kind.name(),
                severity: e.severity.name(),
                value: e.value,
                limit: e.limit,
                ts_ms: e.ts_ms,
                since_ms: e.since_ms,
                duration_ms: e.duration_ms,
                peak: e.peak.filter(|p| p.is_finite()),
                latched,
                occurrence: occurrence.unwrap_or(seq),
                by: e.by.as_deref(),
            },
            out,
        );
        tracing::info!(
            alarm = %alarm_id,
            event,
            severity = e.severity.name(),
            value = e.value,
            limit = e.limit,
            occurrence = occurrence.unwrap_or(seq),
            "Alarm."
        );
        seq
    }

    /// At start-up, after [`Processor::restore`]: every alarm event the
    /// restored state says was emitted, but for which `held(seq)` is false
    /// (the buffer neither holds it nor has settled it: a crash lost it
    /// between the state save and the buffer), is emitted again with the
    /// same content and a new seq, in the order they were first emitted.
    /// Events that are held are forgotten, and so are alarms that are no
    /// longer active and have no event left. Returns how many events were
    /// emitted again; the state must be saved before they are delivered.
    pub fn reemit_lost_alarm_events(
        &mut self,
        mut held: impl FnMut(u64) -> bool,
        out: &mut Vec<Record>,
    ) -> usize {
        // (seq first given, sensor, alarm kind)
        let mut lost: Vec<(u64, SensorKey, AlarmKind)> = Vec::new();
        for (i, s) in self.sensors.iter_mut().enumerate() {
            let Some(extra) = s.extra.as_mut() else {
                continue;
            };
            let mut changed = false;
            for entry in &mut extra.ledger {
                let before = entry.events.len();
                entry.events.retain(|e| !held(e.seq));
                changed |= entry.events.len() != before;
                lost.extend(
                    entry
                        .events
                        .iter()
                        .map(|e| (e.seq, SensorKey(i as u32), entry.kind)),
                );
            }
            changed |= forget_settled(extra);
            if changed {
                self.alarms_dirty = true;
            }
        }
        lost.sort_unstable_by_key(|&(seq, _, _)| seq);
        for &(old_seq, key, kind) in &lost {
            let seq = self.take_seq();
            let Some(extra) = self.sensors[key.index()].extra.as_mut() else {
                continue;
            };
            let Some(e) = extra
                .ledger
                .iter_mut()
                .filter(|l| l.kind == kind)
                .flat_map(|l| l.events.iter_mut())
                .find(|e| e.seq == old_seq)
            else {
                continue;
            };
            e.seq = seq;
            e.payload = with_seq(&e.payload, seq);
            let rec = Record {
                seq,
                lane: Lane::Alarm,
                ts_ms: e.ts_ms,
                topic: e.topic.clone(),
                payload: e.payload.clone(),
            };
            let transition = e.transition;
            self.alarms_dirty = true;
            self.metrics.alarm_events_reemitted.inc();
            tracing::warn!(
                alarm = %format!("{}:{}", self.registry.info(key).id, kind.name()),
                event = transition.name(),
                lost_seq = old_seq,
                seq,
                "An alarm event was lost in a crash before the buffer stored it; sending it again."
            );
            out.push(rec);
        }
        lost.len()
    }

    /// Every record up to `durable_seq` is durable in the buffer (or was
    /// refused by it and counted): forgets the ledger's events up to it, and
    /// alarms that are no longer active and have no event left. The runtime
    /// calls it with the buffer's fsync watermark, lowered below any alarm
    /// event it has not handed to the buffer yet. Returns how many events
    /// were forgotten.
    pub fn confirm_durable(&mut self, durable_seq: u64) -> usize {
        let mut forgotten = 0;
        for s in &mut self.sensors {
            let Some(extra) = s.extra.as_mut() else {
                continue;
            };
            // Entries without events are of active alarms: nothing to do.
            if extra.ledger_is_empty() {
                continue;
            }
            for entry in &mut extra.ledger {
                let before = entry.events.len();
                entry.events.retain(|e| e.seq > durable_seq);
                forgotten += before - entry.events.len();
            }
            forget_settled(extra);
        }
        if forgotten > 0 {
            // No prompt save needed: a restart asks the buffer about every
            // event still in the saved ledger. The smaller state goes out
            // with the next save of either kind.
            self.baselines_dirty = true;
        }
        forgotten
    }

    fn emit_anomaly(
        &mut self,
        key: SensorKey,
        e: &AnomalyEvent,
        start_ms: i64,
        end_ms: i64,
        out: &mut Vec<Record>,
    ) {
        self.alarms_dirty = true;
        if e.raised {
            self.metrics.anomalies_raised.inc();
        }
        let anomaly_id = format!(
            "{}:{}:{}",
            self.registry.info(key).id,
            e.detector.name(),
            e.feature.name()
        );
        let event = if e.raised { "raised" } else { "cleared" };
        tracing::info!(anomaly = %anomaly_id, event, score = e.score, "Anomaly.");
        let body = AnomalyBody {
            anomaly_id,
            detector: e.detector.name(),
            feature: e.feature.name(),
            direction: if e.upward { "up" } else { "down" },
            score: e.score,
            limit: e.limit,
            value: e.value,
            baseline_mean: e.baseline_mean,
            baseline_std: e.baseline_std,
            window_start_ms: start_ms,
            window_end_ms: end_ms,
        };
        self.emit(key, RecordKind::Anomaly, Some(event), end_ms, |_| body, out);
    }

    fn emit_value(
        &mut self,
        key: SensorKey,
        ts_ms: i64,
        value: f64,
        reason: &'static str,
        out: &mut Vec<Record>,
    ) {
        self.metrics.values_sent.inc();
        let body = ValueBody {
            ts_ms,
            value,
            reason,
        };
        self.emit(key, RecordKind::Value, None, ts_ms, |_| body, out);
    }

    /// Whether alarm state (first) and baselines (second) changed since the
    /// last call. Alarm changes must be persisted before their events are
    /// delivered, so that a restart neither repeats nor forgets them.
    pub fn take_dirty(&mut self) -> (bool, bool) {
        let d = (self.alarms_dirty, self.baselines_dirty);
        self.alarms_dirty = false;
        self.baselines_dirty = false;
        d
    }

    /// The state to persist: every sensor with an alarm or a baseline.
    pub fn export_state(&self) -> PersistedState {
        let mut sensors = Vec::new();
        for (i, s) in self.sensors.iter().enumerate() {
            let Some(extra) = &s.extra else { continue };
            if !extra.alarms.any_active() && extra.baseline.windows == 0 && extra.ledger.is_empty()
            {
                continue;
            }
            sensors.push(PersistedSensor {
                id: self.registry.info(SensorKey(i as u32)).id.to_string(),
                alarms: extra.alarms.clone(),
                baseline: extra.baseline,
                alarm_events: extra.ledger.clone(),
            });
        }
        PersistedState { sensors }
    }

    /// Restores persisted state at start-up (then call
    /// [`Processor::reemit_lost_alarm_events`]). Sensors are known from now on
    /// (so one that never comes back goes stale), with `now_ms` as their
    /// last arrival: each gets its full `stale_after` to report again.
    pub fn restore(&mut self, state: PersistedState, now_ms: i64) -> usize {
        let mut restored = 0;
        for p in state.sensors {
            let id: Arc<str> = Arc::from(p.id.as_str());
            let info = SensorInfo {
                id: id.clone(),
                names: Arc::from(Vec::new()),
            };
            // Interned under a wire name no source uses, so that the first
            // real message of the sensor goes through `intern` and brings
            // its labels and unit.
            let key = match self.intern(&format!("\u{1f}saved/{id}"), info, None) {
                Ok(key) => key,
                Err(_) => {
                    tracing::warn!(sensor = %id, "Saved alarm state not restored: pipeline.max_sensors is reached.");
                    continue;
                }
            };
            let s = &mut self.sensors[key.index()];
            s.last_arrival_ms = now_ms;
            if let Some(extra) = s.extra.as_mut() {
                let active = p.alarms.states.iter().filter(|a| a.active).count();
                self.metrics.alarms_active.add(active as i64);
                extra.alarms = p.alarms;
                extra.baseline = p.baseline;
                // A seq the state remembers may never have reached the
                // buffer (whose reservation start-up continues from): never
                // hand it out again, so an occurrence names one event.
                let highest = p.alarm_events.iter().flat_map(|l| l.seqs()).max();
                if let Some(h) = highest {
                    self.next_seq = self.next_seq.max(h + 1);
                }
                extra.ledger = p.alarm_events;
                restored += 1;
            }
        }
        restored
    }
}

/// The occurrence an acknowledgement of `kind` must name: the seq of the
/// event that raised it; 0 for an alarm restored from a state file of
/// version 1, which did not record it.
fn current_occurrence(ledger: &[AlarmLedger], kind: AlarmKind) -> u64 {
    ledger
        .iter()
        .find(|l| l.kind == kind)
        .map_or(0, |l| l.occurrence)
}

/// Drops the entries of alarms that are no longer active and have no event
/// pending; whether any was dropped.
fn forget_settled(extra: &mut Extra) -> bool {
    let before = extra.ledger.len();
    let alarms = &extra.alarms;
    extra
        .ledger
        .retain(|l| !l.events.is_empty() || alarms.states[l.kind as usize].active);
    extra.ledger.len() != before
}

/// Keeps a sensor's ledger within [`MAX_LEDGER_EVENTS`] by forgetting its
/// oldest event; whether one was forgotten.
fn forget_oldest_beyond_cap(ledger: &mut [AlarmLedger]) -> bool {
    let total: usize = ledger.iter().map(|l| l.events.len()).sum();
    if total <= MAX_LEDGER_EVENTS {
        return false;
    }
    // Each entry's events are in seq order: the oldest is a first one.
    let oldest = ledger
        .iter_mut()
        .filter(|l| !l.events.is_empty())
        .min_by_key(|l| l.events[0].seq);
    match oldest {
        Some(l) => {
            l.events.remove(0);
            true
        }
        None => false,
    }
}

/// An encoded event with its `seq` replaced.
fn with_seq(payload: &[u8], seq: u64) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("seq".into(), seq.into());
            serde_json::to_vec(&m).unwrap_or_else(|_| payload.to_vec())
        }
        _ => payload.to_vec(),
    }
}
