//! Counters and gauges: every outcome the gateway can have, by name.
//!
//! One [`Metrics`] is shared by all tasks through an `Arc`; updates are
//! relaxed atomic adds, so the processing core can count without locks. The
//! names follow Prometheus conventions and are rendered by
//! [`Metrics::render_prometheus`], which the periodic log line and the
//! `--metrics-file` snapshot use. Each rejection reason has its own counter so
//! that "nothing is lost silently" can be checked by adding them up:
//! `received = accepted + sum(rejected)`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Why a message or reading did not enter a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The payload exceeds `max_payload_bytes`.
    Oversize,
    /// The topic does not fit the source's template.
    UnknownTopic,
    /// The sensor limit (`max_sensors`) is reached.
    SensorLimit,
    NotUtf8,
    NotANumber,
    JsonSyntax,
    MissingValue,
    ValueNotNumber,
    BadTimestamp,
    BadSequence,
    /// NaN or infinite.
    NonFinite,
    /// Outside the sensor rule's `[min, max]`.
    OutOfRange,
    /// Its window was already emitted.
    Late,
    /// Its event time is further ahead of the gateway clock than
    /// `pipeline.max_future_skew` (a node or sender with a wrong clock).
    Future,
    /// Its event time is older than `pipeline.max_event_age`.
    TooOld,
    /// A name taken from the wire (an MQTT topic level, a serial node or
    /// channel) is not usable as a sensor id or topic level.
    BadName,
}

impl Reject {
    pub const ALL: [Reject; 16] = [
        Reject::Oversize,
        Reject::UnknownTopic,
        Reject::SensorLimit,
        Reject::NotUtf8,
        Reject::NotANumber,
        Reject::JsonSyntax,
        Reject::MissingValue,
        Reject::ValueNotNumber,
        Reject::BadTimestamp,
        Reject::BadSequence,
        Reject::NonFinite,
        Reject::OutOfRange,
        Reject::Late,
        Reject::Future,
        Reject::TooOld,
        Reject::BadName,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reject::Oversize => "oversize",
            Reject::UnknownTopic => "unknown_topic",
            Reject::SensorLimit => "sensor_limit",
            Reject::NotUtf8 => "not_utf8",
            Reject::NotANumber => "not_a_number",
            Reject::JsonSyntax => "json_syntax",
            Reject::MissingValue => "missing_value",
            Reject::ValueNotNumber => "value_not_number",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::BadSequence => "bad_sequence",
            Reject::NonFinite => "non_finite",
            Reject::OutOfRange => "out_of_range",
            Reject::Late => "late",
            Reject::Future => "future",
            Reject::TooOld => "too_old",
            Reject::BadName => "bad_name",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// All of the gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages_received: AtomicU64,
    pub readings_accepted: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    pub summaries_produced: AtomicU64,
    /// Every record numbered for upstream: summaries, alarm and anomaly
    /// events, values.
    pub records_produced: AtomicU64,
    pub alarms_raised: AtomicU64,
    pub alarms_cleared: AtomicU64,
    pub alarms_acknowledged: AtomicU64,
    pub alarms_active: AtomicI64,
    pub anomalies_raised: AtomicU64,
    pub values_sent: AtomicU64,
    pub commands_received: AtomicU64,
    pub state_saves: AtomicU64,
    pub state_save_errors: AtomicU64,
    pub state_load_errors: AtomicU64,
    pub source_connections: AtomicU64,
    pub source_disconnects: AtomicU64,
    pub source_subscriptions: AtomicU64,
    pub upstream_published: AtomicU64,
    pub upstream_acked: AtomicU64,
    pub upstream_retransmitted: AtomicU64,
    pub upstream_connections: AtomicU64,
    pub upstream_disconnects: AtomicU64,
    pub upstream_connected: AtomicI64,
    pub upstream_queue_records: AtomicI64,
    pub upstream_queue_bytes: AtomicI64,
    /// Records still in the buffer when the gateway stopped (delivered
    /// after the next start).
    pub upstream_undelivered_at_shutdown: AtomicU64,
    /// Records the core made but could not hand to the sink before it
    /// stopped (shutdown took longer than its bound).
    pub records_lost_at_shutdown: AtomicU64,
    /// Sensors known now (bounded by `pipeline.max_sensors`).
    pub sensors_live: AtomicI64,
    /// Sensors forgotten after `pipeline.retire_after` of silence.
    pub sensors_retired: AtomicU64,
    pub buffer_bytes_written: AtomicU64,
    pub buffer_fsyncs: AtomicU64,
    pub buffer_spills: AtomicU64,
    pub buffer_dropped_oldest: AtomicU64,
    pub buffer_dropped_disk_full: AtomicU64,
    pub buffer_expired: AtomicU64,
    pub buffer_write_errors: AtomicU64,
    pub buffer_read_errors: AtomicU64,
    pub buffer_torn_tails: AtomicU64,
    pub buffer_quarantined: AtomicU64,
    pub buffer_disk_bytes: AtomicI64,
    pub buffer_memory_bytes: AtomicI64,
    /// Every record at or below this sequence number is durable (fsynced),
    /// acknowledged or counted as dropped.
    pub buffer_last_synced_seq: AtomicI64,
    /// The first sequence number this run hands out.
    pub buffer_first_seq_this_run: AtomicI64,
    /// Measurement time of the oldest unacknowledged record on disk, ms.
    pub buffer_oldest_ts_ms: AtomicI64,
    /// Damaged regions skipped while reading the buffer back (each held at
    /// least one record).
    pub buffer_corrupt_regions: AtomicU64,
    /// Segments whose rest was given up after open or read errors persisted.
    pub buffer_unreadable_segments: AtomicU64,
    /// Bytes of the buffer skipped as damaged or unreadable.
    pub buffer_corrupt_bytes: AtomicU64,
    /// Times a sequence reservation could not be made durable.
    pub buffer_reservation_failures: AtomicU64,
    /// Records upstream refused to take, set aside in the quarantine file.
    pub buffer_set_aside: AtomicU64,
    /// One entry per serial port, in configuration order.
    serial: std::sync::Mutex<Vec<Arc<SerialPortMetrics>>>,
    /// Commands not obeyed, per [`CommandReject`].
    commands_rejected: [AtomicU64; CommandReject::ALL.len()],
    /// Alarm events sent again at start-up because a crash lost them
    /// before they were stored.
    pub alarm_events_reemitted: AtomicU64,
    /// Alarm events forgotten by a sensor's crash-recovery ledger because it
    /// held `MAX_LEDGER_EVENTS` events not yet known durable.
    pub alarm_ledger_overflow: AtomicU64,
}

/// What one serial port reports. The port's decoder is owned by its task;
/// the task copies the decoder's counters here after every read.
#[derive(Debug, Default)]
pub struct SerialPortMetrics {
    pub port: String,
    pub connected: AtomicI64,
    pub opens: AtomicU64,
    pub disconnects: AtomicU64,
    pub open_failures: AtomicU64,
    snapshot: std::sync::Mutex<SerialSnapshot>,
}

#[derive(Debug, Default, Clone)]
pub struct SerialSnapshot {
    pub counters: crate::wire::PortCounters,
    /// Per node id, sorted.
    pub nodes: Vec<(String, crate::wire::node::NodeCounters)>,
}

impl SerialPortMetrics {
    pub fn update(&self, decoder: &crate::wire::PortDecoder) {
        let Ok(mut s) = self.snapshot.lock() else {
            return;
        };
        s.counters = decoder.counters().clone();
        // The decoder lists its nodes sorted by id. While the node set is the
        // one already copied, only the counters change: copy them in place;
        // names are copied again only when a node was added.
        let same_nodes = s.nodes.len() == decoder.nodes().len()
            && s.nodes.iter().zip(decoder.nodes()).all(|(a, b)| a.0 == b.0);
        if same_nodes {
            for (slot, (_, c)) in s.nodes.iter_mut().zip(decoder.nodes()) {
                slot.1 = *c;
            }
        } else {
            s.nodes = decoder.nodes().map(|(n, c)| (n.to_owned(), *c)).collect();
        }
    }

    pub fn snapshot(&self) -> SerialSnapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a serial port's metrics.
    pub fn serial_port(&self, port: &str) -> Arc<SerialPortMetrics> {
        let m = Arc::new(SerialPortMetrics {
            port: port.to_owned(),
            ..Default::default()
        });
        if let Ok(mut v) = self.serial.lock() {
            v.push(m.clone());
        }
        m
    }

    pub fn reject(&self, reason: Reject) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        Reject::ALL.iter().map(|r| self.rejected(*r)).sum()
    }

    /// Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let counters: &[(&str, &str, u64)] = &[
            (
                "gateway_messages_received_total",
                "Messages read from MQTT sources and readings decoded by serial ports, as they reach the core (each ends accepted or rejected under a reason).",
                c(&self.messages_received),
            ),
            (
                "gateway_readings_accepted_total",
                "Readings merged into a window.",
                c(&self.readings_accepted),
            ),
            (
                "gateway_summaries_produced_total",
                "Window summaries produced.",
                c(&self.summaries_produced),
            ),
            (
                "gateway_alarms_raised_total",
                "Alarms raised.",
                c(&self.alarms_raised),
            ),
            (
                "gateway_alarms_cleared_total",
                "Alarms cleared.",
                c(&self.alarms_cleared),
            ),
            (
                "gateway_alarms_acknowledged_total",
                "Alarms acknowledged through the command topic.",
                c(&self.alarms_acknowledged),
            ),
            (
                "gateway_anomalies_raised_total",
                "Anomalies (z-score or drift) raised.",
                c(&self.anomalies_raised),
            ),
            (
                "gateway_values_sent_total",
                "Values sent by on_change or raw delivery.",
                c(&self.values_sent),
            ),
            (
                "gateway_commands_received_total",
                "Commands received on the command topic.",
                c(&self.commands_received),
            ),
            (
                "gateway_sensors_retired_total",
                "Sensors forgotten after pipeline.retire_after of silence.",
                c(&self.sensors_retired),
            ),
            (
                "gateway_state_saves_total",
                "Saves of the alarm and baseline state file.",
                c(&self.state_saves),
            ),
            (
                "gateway_state_save_errors_total",
                "Failed saves of the alarm and baseline state file.",
                c(&self.state_save_errors),
            ),
            (
                "gateway_state_load_errors_total",
                "State files that could not be read at start-up (set aside, started fresh).",
                c(&self.state_load_errors),
            ),
            (
                "gateway_source_connections_total",
                "Successful source broker connections.",
                c(&self.source_connections),
            ),
            (
                "gateway_source_subscriptions_total",
                "Subscriptions granted by source brokers.",
                c(&self.source_subscriptions),
            ),
            (
                "gateway_source_disconnects_total",
                "Source broker connections lost.",
                c(&self.source_disconnects),
            ),
            (
                "gateway_upstream_published_total",
                "Publishes sent upstream, retransmissions included.",
                c(&self.upstream_published),
            ),
            (
                "gateway_upstream_acked_total",
                "Records acknowledged by the upstream broker (delivered).",
                c(&self.upstream_acked),
            ),
            (
                "gateway_upstream_retransmitted_total",
                "Records sent again after a reconnect.",
                c(&self.upstream_retransmitted),
            ),
            (
                "gateway_upstream_connections_total",
                "Successful upstream connections.",
                c(&self.upstream_connections),
            ),
            (
                "gateway_upstream_disconnects_total",
                "Upstream connections lost or refused.",
                c(&self.upstream_disconnects),
            ),
            (
                "gateway_upstream_undelivered_at_shutdown_total",
                "Records left in the buffer at shutdown, delivered after restart.",
                c(&self.upstream_undelivered_at_shutdown),
            ),
            (
                "gateway_buffer_bytes_written_total",
                "Bytes written to the buffer's files (segments and cursor).",
                c(&self.buffer_bytes_written),
            ),
            (
                "gateway_buffer_fsyncs_total",
                "fsync calls on buffer segments.",
                c(&self.buffer_fsyncs),
            ),
            (
                "gateway_buffer_spills_total",
                "Times records held in memory were written to disk.",
                c(&self.buffer_spills),
            ),
            (
                "gateway_buffer_write_errors_total",
                "Failed buffer writes (the records stay in memory).",
                c(&self.buffer_write_errors),
            ),
            (
                "gateway_buffer_read_errors_total",
                "Failed attempts to read the buffer back while running (I/O errors and damaged records).",
                c(&self.buffer_read_errors),
            ),
            (
                "gateway_buffer_torn_tails_total",
                "Torn segment tails cut at start-up.",
                c(&self.buffer_torn_tails),
            ),
            (
                "gateway_buffer_quarantined_total",
                "Damaged buffer files moved to quarantine at start-up.",
                c(&self.buffer_quarantined),
            ),
            (
                "gateway_buffer_skipped_bytes_total",
                "Bytes of buffer segments skipped as damaged or unreadable while reading them back.",
                c(&self.buffer_corrupt_bytes),
            ),
            (
                "gateway_buffer_reservation_failures_total",
                "Sequence reservations that could not be made durable (publishing waits for one).",
                c(&self.buffer_reservation_failures),
            ),
        ];
        let gauges: &[(&str, &str, i64)] = &[
            (
                "gateway_alarms_active",
                "Alarms active now (including latched, unacknowledged ones).",
                g(&self.alarms_active),
            ),
            (
                "gateway_upstream_connected",
                "1 while the upstream broker is connected.",
                g(&self.upstream_connected),
            ),
            (
                "gateway_upstream_queue_records",
                "Records waiting for delivery.",
                g(&self.upstream_queue_records),
            ),
            (
                "gateway_upstream_queue_bytes",
                "Bytes of records waiting for delivery.",
                g(&self.upstream_queue_bytes),
            ),
            (
                "gateway_buffer_disk_bytes",
                "Bytes of buffer segments on disk.",
                g(&self.buffer_disk_bytes),
            ),
            (
                "gateway_buffer_memory_bytes",
                "Bytes of records held in memory by the buffer.",
                g(&self.buffer_memory_bytes),
            ),
            (
                "gateway_buffer_last_synced_seq",
                "Every record at or below this sequence number is durable (fsynced), acknowledged by upstream or counted as dropped.",
                g(&self.buffer_last_synced_seq),
            ),
            (
                "gateway_buffer_first_seq_this_run",
                "First sequence number of this run.",
                g(&self.buffer_first_seq_this_run),
            ),
            (
                "gateway_buffer_oldest_timestamp_ms",
                "Measurement time of the oldest unacknowledged record on disk.",
                g(&self.buffer_oldest_ts_ms),
            ),
            (
                "gateway_sensors",
                "Sensors known now (at most pipeline.max_sensors).",
                g(&self.sensors_live),
            ),
        ];
        let mut s = String::with_capacity(4096);
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(s, "# HELP gateway_readings_rejected_total Messages or readings dropped, by reason.\n# TYPE gateway_readings_rejected_total counter");
        for r in Reject::ALL {
            let _ = writeln!(
                s,
                "gateway_readings_rejected_total{{reason=\"{}\"}} {}",
                r.name(),
                self.rejected(r)
            );
        }
        let _ = writeln!(s, "# HELP gateway_upstream_dropped_total Records dropped before delivery, by reason.\n# TYPE gateway_upstream_dropped_total counter");
        for (reason, v) in [
            ("buffer_full_oldest", c(&self.buffer_dropped_oldest)),
            ("buffer_full_newest", c(&self.buffer_dropped_disk_full)),
            ("shutdown", c(&self.records_lost_at_shutdown)),
            ("expired", c(&self.buffer_expired)),
            ("corrupt", c(&self.buffer_corrupt_regions)),
            ("unreadable", c(&self.buffer_unreadable_segments)),
            ("unpublishable", c(&self.buffer_set_aside)),
        ] {
            let _ = writeln!(
                s,
                "gateway_upstream_dropped_total{{reason=\"{reason}\"}} {v}"
            );
        }
        self.render_serial(&mut s);
        self.render_commands(&mut s);
        s
    }

    fn render_serial(&self, s: &mut String) {
        use std::fmt::Write;
        let ports: Vec<Arc<SerialPortMetrics>> = match self.serial.lock() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        if ports.is_empty() {
            return;
        }
        let snaps: Vec<SerialSnapshot> = ports.iter().map(|p| p.snapshot()).collect();
        type PortValue = fn(&SerialPortMetrics, &SerialSnapshot) -> u64;
        let per_port: &[(&str, &str, &str, PortValue)] = &[
            (
                "gateway_serial_connected",
                "gauge",
                "1 while the port is open.",
                |p, _| p.connected.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "gateway_serial_opens_total",
                "counter",
                "Times the port was opened.",
                |p, _| p.opens.load(Ordering::Relaxed),
            ),
            (
                "gateway_serial_disconnects_total",
                "counter",
                "Times the port went away (unplugged, I/O error).",
                |p, _| p.disconnects.load(Ordering::Relaxed),
            ),
            (
                "gateway_serial_open_failures_total",
                "counter",
                "Failed attempts to open the port.",
                |p, _| p.open_failures.load(Ordering::Relaxed),
            ),
            (
                "gateway_serial_bytes_total",
                "counter",
                "Bytes read.",
                |_, s| s.counters.bytes,
            ),
            (
                "gateway_serial_frames_total",
                "counter",
                "Frames or lines decoded and accepted.",
                |_, s| s.counters.frames,
            ),
            (
                "gateway_serial_readings_total",
                "counter",
                "Channel readings passed to the core.",
                |_, s| s.counters.readings,
            ),
            (
                "gateway_serial_unmapped_total",
                "counter",
                "Channel readings dropped because no mapping names them.",
                |_, s| s.counters.unmapped,
            ),
        ];
        for (name, kind, help, f) in per_port {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (p, snap) in ports.iter().zip(&snaps) {
                let _ = writeln!(s, "{name}{{port=\"{}\"}} {}", p.port, f(p, snap));
            }
        }
        let _ = writeln!(s, "# HELP gateway_serial_dropped_total Frames or lines dropped, by reason.\n# TYPE gateway_serial_dropped_total counter");
        for (p, snap) in ports.iter().zip(&snaps) {
            for r in crate::wire::DropReason::ALL {
                let _ = writeln!(
                    s,
                    "gateway_serial_dropped_total{{port=\"{}\",reason=\"{}\"}} {}",
                    p.port,
                    r.name(),
                    snap.counters.dropped(r)
                );
            }
        }
        type NodeValue = fn(&crate::wire::node::NodeCounters) -> u64;
        let per_node: &[(&str, &str, NodeValue)] = &[
            (
                "gateway_serial_node_frames_total",
                "Frames accepted from the node.",
                |c| c.frames,
            ),
            (
                "gateway_serial_node_lost_frames_total",
                "Frames the node sent that never arrived (sequence gaps).",
                |c| c.lost,
            ),
            (
                "gateway_serial_node_duplicates_total",
                "Repeated or replayed frames dropped.",
                |c| c.duplicates,
            ),
            (
                "gateway_serial_node_reboots_total",
                "Node restarts detected (sequence and clock restarted).",
                |c| c.reboots,
            ),
            (
                "gateway_serial_node_clock_resyncs_total",
                "Jumps of the node's clock mapping.",
                |c| c.resyncs,
            ),
        ];
        for (name, help, f) in per_node {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (p, snap) in ports.iter().zip(&snaps) {
                for (node, c) in &snap.nodes {
                    let _ = writeln!(
                        s,
                        "{name}{{port=\"{}\",node=\"{}\"}} {}",
                        p.port,
                        escape_label(node),
                        f(c)
                    );
                }
            }
        }
    }

    /// Records dropped before delivery, all reasons.
    pub fn upstream_dropped_total(&self) -> u64 {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c(&self.buffer_dropped_oldest)
            + c(&self.buffer_dropped_disk_full)
            + c(&self.buffer_expired)
            + c(&self.buffer_corrupt_regions)
            + c(&self.buffer_unreadable_segments)
            + c(&self.buffer_set_aside)
    }

    /// A one-line summary for the periodic log line.
    pub fn one_line(&self) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "received={} accepted={} rejected={} summaries={} delivered={} queued={} dropped={} upstream_connected={}",
            c(&self.messages_received),
            c(&self.readings_accepted),
            self.rejected_total(),
            c(&self.summaries_produced),
            c(&self.upstream_acked),
            self.upstream_queue_records.load(Ordering::Relaxed),
            self.upstream_dropped_total(),
            self.upstream_connected.load(Ordering::Relaxed) == 1,
        )
    }
}

/// Escapes a label value of the Prometheus text format (node ids come
/// from the wire).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// Rate limit of one kind of log line: the first occurrence is logged, then
/// at most one per interval, carrying how many were suppressed in between.
/// Time is passed in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throttle {
    last_ms: Option<i64>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed_since_last)` when this occurrence should be logged.
    pub fn allow(&mut self, interval_ms: i64, now_ms: i64) -> Option<u64> {
        match self.last_ms {
            Some(last) if now_ms.saturating_sub(last) < interval_ms => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_ms = Some(now_ms);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Keeps a noisy event from flooding the log: one [`Throttle`] per reject
/// reason.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: i64,
    per_reason: [Throttle; Reject::ALL.len()],
}

impl LogLimiter {
    pub fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms,
            per_reason: [Throttle::default(); Reject::ALL.len()],
        }
    }

    /// `Some(suppressed_since_last)` when this occurrence should be logged.
    pub fn allow(&mut self, reason: Reject, now_ms: i64) -> Option<u64> {
        self.per_reason[reason.index()].allow(self.interval_ms, now_ms)
    }
}

/// Why a command from the command topic was not obeyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandReject {
    /// A retained message: the broker replays it on every subscription.
    Retained,
    /// Larger than a command can be.
    Oversize,
    /// Not JSON, or not a command object.
    Malformed,
    /// A `command` other than `ack`.
    UnknownCommand,
    /// An `ack` without the `occurrence` it acknowledges.
    MissingOccurrence,
    /// The alarm id names no sensor with that alarm.
    UnknownAlarm,
    /// The occurrence is not the alarm's current one.
    StaleOccurrence,
    /// The alarm is not active, or already acknowledged.
    NotActive,
    /// Too many commands at once; dropped.
    Overloaded,
}

impl CommandReject {
    pub const ALL: [CommandReject; 9] = [
        CommandReject::Retained,
        CommandReject::Oversize,
        CommandReject::Malformed,
        CommandReject::UnknownCommand,
        CommandReject::MissingOccurrence,
        CommandReject::UnknownAlarm,
        CommandReject::StaleOccurrence,
        CommandReject::NotActive,
        CommandReject::Overloaded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CommandReject::Retained => "retained",
            CommandReject::Oversize => "oversize",
            CommandReject::Malformed => "malformed",
            CommandReject::UnknownCommand => "unknown_command",
            CommandReject::MissingOccurrence => "missing_occurrence",
            CommandReject::UnknownAlarm => "unknown_alarm",
            CommandReject::StaleOccurrence => "stale_occurrence",
            CommandReject::NotActive => "not_active",
            CommandReject::Overloaded => "overloaded",
        }
    }
}

impl Metrics {
    /// Counts a command that was not obeyed.
    pub fn reject_command(&self, reason: CommandReject) {
        self.commands_rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn commands_rejected(&self, reason: CommandReject) -> u64 {
        self.commands_rejected[reason as usize].load(Ordering::Relaxed)
    }

    fn render_commands(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(s, "# HELP gateway_commands_rejected_total Commands not obeyed, by reason.\n# TYPE gateway_commands_rejected_total counter");
        for r in CommandReject::ALL {
            let _ = writeln!(
                s,
                "gateway_commands_rejected_total{{reason=\"{}\"}} {}",
                r.name(),
                self.commands_rejected(r)
            );
        }
        let _ = writeln!(
            s,
            "# HELP gateway_alarm_events_reemitted_total Alarm events sent again at start-up because a crash lost them before they were stored.\n# TYPE gateway_alarm_events_reemitted_total counter\ngateway_alarm_events_reemitted_total {}",
            self.alarm_events_reemitted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP gateway_alarm_ledger_overflow_total Alarm events forgotten by a sensor's crash-recovery ledger, which was full of events not yet durable.\n# TYPE gateway_alarm_ledger_overflow_total counter\ngateway_alarm_ledger_overflow_total {}",
            self.alarm_ledger_overflow.load(Ordering::Relaxed)
        );
    }
}

/// [`LogLimiter`] for rejected commands: one [`Throttle`] per reason.
#[derive(Debug)]
pub struct CommandLogLimiter {
    interval_ms: i64,
    per_reason: [Throttle; CommandReject::ALL.len()],
}

impl CommandLogLimiter {
    pub fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms,
            per_reason: [Throttle::default(); CommandReject::ALL.len()],
        }
    }

    /// `Some(suppressed_since_last)` when this occurrence should be logged.
    pub fn allow(&mut self, reason: CommandReject, now_ms: i64) -> Option<u64> {
        self.per_reason[reason as usize].allow(self.interval_ms, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_first_then_once_per_interval() {
        let mut l = LogLimiter::new(1000);
        assert_eq!(l.allow(Reject::Late, 0), Some(0));
        assert_eq!(l.allow(Reject::Late, 10), None);
        assert_eq!(l.allow(Reject::Late, 20), None);
        assert_eq!(l.allow(Reject::NonFinite, 30), Some(0));
        assert_eq!(l.allow(Reject::Late, 1000), Some(2));
    }

    #[test]
    fn prometheus_text_names_every_reason() {
        let m = Metrics::new();
        m.reject(Reject::OutOfRange);
        let text = m.render_prometheus();
        assert!(text.contains("gateway_readings_rejected_total{reason=\"out_of_range\"} 1"));
        for r in Reject::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", r.name())));
        }
    }

    #[test]
    fn command_rejections_are_counted_per_reason_and_logged_rate_limited() {
        let m = Metrics::new();
        m.reject_command(CommandReject::Retained);
        let text = m.render_prometheus();
        assert!(text.contains("gateway_commands_rejected_total{reason=\"retained\"} 1"));
        for r in CommandReject::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", r.name())));
        }
        let mut l = CommandLogLimiter::new(1000);
        assert_eq!(l.allow(CommandReject::Malformed, 0), Some(0));
        assert_eq!(l.allow(CommandReject::Malformed, 10), None);
        assert_eq!(l.allow(CommandReject::Retained, 20), Some(0));
        assert_eq!(l.allow(CommandReject::Malformed, 1000), Some(1));
    }
}
