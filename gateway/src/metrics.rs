//! Counters and gauges: every outcome the gateway can have, by name.
//!
//! One [`Metrics`] is shared by all tasks through an `Arc`; a [`Counter`] or
//! [`Gauge`] is one relaxed atomic, so the processing core can count without
//! locks. Every metric is declared once, in the list given to
//! `declare_metrics!` below: its field, its type, its Prometheus name and
//! help, or the family it is one labelled member of. The struct and the
//! Prometheus text ([`Metrics::render_prometheus`], the `--metrics-file`
//! snapshot) both come from that list, in its order; the periodic log line
//! ([`Metrics::one_line`]) picks a few of its fields. Each rejection reason
//! has its own counter so that "nothing is lost silently" can be checked by
//! adding them up: `received = accepted + sum(rejected)`.
//!
//! This module counts and renders only: why a reading or command is refused
//! is decided in [`crate::reject`], by the code that refuses it.

use std::fmt::{Display, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::Lane;
use crate::reject::{CommandReject, Reason, Refusal, Reject};

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, or is set.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counter per reason, rendered as `name{reason="…"}`.
#[derive(Debug)]
pub struct ByReason<R: Reason> {
    counters: Box<[Counter]>,
    reason: PhantomData<R>,
}

impl<R: Reason> Default for ByReason<R> {
    fn default() -> Self {
        Self {
            counters: R::ALL.iter().map(|_| Counter::default()).collect(),
            reason: PhantomData,
        }
    }
}

impl<R: Reason> ByReason<R> {
    pub fn inc(&self, reason: R) {
        self.counters[reason.index()].inc();
    }

    pub fn get(&self, reason: R) -> u64 {
        self.counters[reason.index()].get()
    }

    pub fn total(&self) -> u64 {
        self.counters.iter().map(Counter::get).sum()
    }
}

/// How one declared field appears in the Prometheus text.
#[derive(Debug)]
enum Spec {
    /// A metric of its own.
    Own {
        name: &'static str,
        help: &'static str,
    },
    /// One member of a family whose members are separate fields, under
    /// `family.key = label`. Members of one family are declared together.
    Member {
        family: &'static Family,
        label: &'static str,
    },
    /// Renders its own metrics (the serial ports).
    Nested,
}

/// The name, help and type shared by the members of a family.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    key: &'static str,
}

const fn own(name: &'static str, help: &'static str) -> Spec {
    Spec::Own { name, help }
}

const fn member(family: &'static Family, label: &'static str) -> Spec {
    Spec::Member { family, label }
}

const UPSTREAM_DROPPED: Family = Family {
    name: "gateway_upstream_dropped_total",
    help: "Records dropped before delivery, by reason.",
    kind: "counter",
    key: "reason",
};

const HTTP_REQUESTS: Family = Family {
    name: "gateway_http_requests_total",
    help: "HTTP requests answered, by outcome: metrics, healthz, ready and not_ready (/readyz answered 200 or 503), not_found, method_not_allowed.",
    kind: "counter",
    key: "outcome",
};

const CLOCK_JUMPS: Family = Family {
    name: "gateway_clock_jumps_total",
    help:
        "Steps of the wall clock against the monotonic clock by more than a second, by direction.",
    kind: "counter",
    key: "direction",
};

/// Declares [`Metrics`]: each field with its type and its [`Spec`], in the
/// order of the Prometheus text.
macro_rules! declare_metrics {
    ($(
        $(#[$attr:meta])*
        $vis:vis $field:ident : $ty:ty = $spec:expr
    ),* $(,)?) => {
        /// All of the gateway's counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$attr])* $vis $field: $ty, )*
        }

        impl Metrics {
            /// Calls `f` with every declared field and its [`Spec`], in
            /// declaration order.
            fn visit(&self, f: &mut dyn FnMut(&Spec, &dyn Render)) {
                $( f(&$spec, &self.$field); )*
            }
        }
    };
}

// Every metric, in the order of the Prometheus text: adding one is adding
// an entry here (and its lines to `tests/data/metrics.prom`, which pins the
// text).
declare_metrics! {
    pub messages_received: Counter = own(
        "gateway_messages_received_total",
        "Messages read from MQTT sources and readings decoded by serial ports, as they reach the core (each ends accepted or rejected under a reason).",
    ),
    pub readings_accepted: Counter = own(
        "gateway_readings_accepted_total",
        "Readings accepted: merged into a window, or handed to on_change or raw delivery.",
    ),
    pub summaries_produced: Counter = own(
        "gateway_summaries_produced_total",
        "Window summaries produced.",
    ),
    /// Every record numbered for upstream: summaries, alarm and anomaly
    /// events, values.
    pub records_produced: Counter = own(
        "gateway_records_produced_total",
        "Records numbered for upstream: summaries, alarm and anomaly events, values (each is delivered or counted as dropped).",
    ),
    pub alarms_raised: Counter = own(
        "gateway_alarms_raised_total",
        "Alarms raised.",
    ),
    pub alarms_cleared: Counter = own(
        "gateway_alarms_cleared_total",
        "Alarms cleared.",
    ),
    pub alarms_acknowledged: Counter = own(
        "gateway_alarms_acknowledged_total",
        "Alarms acknowledged through the command topic.",
    ),
    pub anomalies_raised: Counter = own(
        "gateway_anomalies_raised_total",
        "Anomalies (z-score or drift) raised.",
    ),
    pub values_sent: Counter = own(
        "gateway_values_sent_total",
        "Values sent by on_change or raw delivery.",
    ),
    pub commands_received: Counter = own(
        "gateway_commands_received_total",
        "Commands received on the command topic.",
    ),
    /// Sensors forgotten after `pipeline.retire_after` of silence, or by a
    /// reload that left no rule for them.
    pub sensors_retired: Counter = own(
        "gateway_sensors_retired_total",
        "Sensors forgotten: after pipeline.retire_after of silence, or at a reload that left no rule for them.",
    ),
    pub state_saves: Counter = own(
        "gateway_state_saves_total",
        "Saves of the alarm and baseline state file.",
    ),
    pub state_save_errors: Counter = own(
        "gateway_state_save_errors_total",
        "Failed saves of the alarm and baseline state file.",
    ),
    pub state_load_errors: Counter = own(
        "gateway_state_load_errors_total",
        "State files that could not be read at start-up (set aside, started fresh).",
    ),
    pub source_connections: Counter = own(
        "gateway_source_connections_total",
        "Successful source broker connections.",
    ),
    pub source_subscriptions: Counter = own(
        "gateway_source_subscriptions_total",
        "Subscriptions granted by source brokers.",
    ),
    pub source_disconnects: Counter = own(
        "gateway_source_disconnects_total",
        "Source broker connections lost.",
    ),
    pub upstream_published: Counter = own(
        "gateway_upstream_published_total",
        "Publishes sent upstream, retransmissions included.",
    ),
    pub upstream_acked: Counter = own(
        "gateway_upstream_acked_total",
        "Records acknowledged by the upstream broker (delivered).",
    ),
    pub upstream_retransmitted: Counter = own(
        "gateway_upstream_retransmitted_total",
        "Records sent again after a reconnect.",
    ),
    pub upstream_connections: Counter = own(
        "gateway_upstream_connections_total",
        "Successful upstream connections.",
    ),
    pub upstream_disconnects: Counter = own(
        "gateway_upstream_disconnects_total",
        "Upstream connections lost or refused.",
    ),
    /// Publishes the upstream broker refused (MQTT 5 reason codes), per
    /// [`Refusal`]; the records stay in the buffer and are sent again.
    upstream_refused: ByReason<Refusal> = own(
        "gateway_upstream_refused_total",
        "Publishes the upstream broker refused with an MQTT 5 reason code, by reason (not delivered: the records stay buffered and are sent again).",
    ),
    pub upstream_batches: Counter = own(
        "gateway_upstream_batches_total",
        "Envelopes (batches of records, [upstream.batch]) published upstream, retransmissions included.",
    ),
    pub upstream_payload_bytes: Counter = own(
        "gateway_upstream_payload_bytes_total",
        "Payload bytes of the publishes sent upstream (records or envelopes, after compression), retransmissions included.",
    ),
    pub upstream_failovers: Counter = own(
        "gateway_upstream_failovers_total",
        "Connections made to another node of `brokers` than the previous connection's.",
    ),
    /// Records still in the buffer when the gateway stopped (delivered
    /// after the next start).
    pub upstream_undelivered_at_shutdown: Counter = own(
        "gateway_upstream_undelivered_at_shutdown_total",
        "Records left in the buffer at shutdown, delivered after restart.",
    ),
    pub buffer_bytes_written: Counter = own(
        "gateway_buffer_bytes_written_total",
        "Bytes written to the buffer's files (segments and cursor).",
    ),
    pub buffer_fsyncs: Counter = own(
        "gateway_buffer_fsyncs_total",
        "fsync calls on buffer segments.",
    ),
    pub buffer_spills: Counter = own(
        "gateway_buffer_spills_total",
        "Times records held in memory were written to disk.",
    ),
    pub buffer_write_errors: Counter = own(
        "gateway_buffer_write_errors_total",
        "Failed buffer writes (the records stay in memory).",
    ),
    pub buffer_read_errors: Counter = own(
        "gateway_buffer_read_errors_total",
        "Failed attempts to read the buffer back while running (I/O errors and damaged records).",
    ),
    pub buffer_torn_tails: Counter = own(
        "gateway_buffer_torn_tails_total",
        "Torn segment tails cut at start-up.",
    ),
    pub buffer_quarantined: Counter = own(
        "gateway_buffer_quarantined_total",
        "Damaged buffer files moved to quarantine at start-up.",
    ),
    /// Bytes of the buffer skipped as damaged or unreadable.
    pub buffer_corrupt_bytes: Counter = own(
        "gateway_buffer_skipped_bytes_total",
        "Bytes of buffer segments skipped as damaged or unreadable while reading them back.",
    ),
    /// Times a sequence reservation could not be made durable.
    pub buffer_reservation_failures: Counter = own(
        "gateway_buffer_reservation_failures_total",
        "Sequence reservations that could not be made durable (publishing waits for one).",
    ),
    pub alarms_active: Gauge = own(
        "gateway_alarms_active",
        "Alarms active now (including latched, unacknowledged ones).",
    ),
    pub upstream_connected: Gauge = own(
        "gateway_upstream_connected",
        "1 while the upstream broker is connected.",
    ),
    pub upstream_node: Gauge = own(
        "gateway_upstream_node",
        "The position (from 0) in `brokers` of the node connected now; -1 while none is.",
    ),
    pub upstream_protocol_version: Gauge = own(
        "gateway_upstream_protocol_version",
        "The MQTT protocol level of the upstream connection: 4 (3.1.1) or 5; 0 before the first connection.",
    ),
    pub upstream_queue_records: Gauge = own(
        "gateway_upstream_queue_records",
        "Records waiting for delivery.",
    ),
    pub upstream_queue_bytes: Gauge = own(
        "gateway_upstream_queue_bytes",
        "Bytes of records waiting for delivery.",
    ),
    pub buffer_disk_bytes: Gauge = own(
        "gateway_buffer_disk_bytes",
        "Bytes of buffer segments on disk.",
    ),
    pub buffer_memory_bytes: Gauge = own(
        "gateway_buffer_memory_bytes",
        "Bytes of records held in memory by the buffer.",
    ),
    /// Every record at or below this sequence number is durable (fsynced),
    /// acknowledged or counted as dropped.
    pub buffer_last_synced_seq: Gauge = own(
        "gateway_buffer_last_synced_seq",
        "Every record at or below this sequence number is durable (fsynced), acknowledged by upstream or counted as dropped.",
    ),
    /// The first sequence number this run hands out.
    pub buffer_first_seq_this_run: Gauge = own(
        "gateway_buffer_first_seq_this_run",
        "First sequence number of this run.",
    ),
    /// Measurement time of the oldest unacknowledged record on disk, ms.
    pub buffer_oldest_ts_ms: Gauge = own(
        "gateway_buffer_oldest_timestamp_ms",
        "Measurement time of the oldest unacknowledged record on disk.",
    ),
    /// Sensors known now (bounded by `pipeline.max_sensors`).
    pub sensors_live: Gauge = own(
        "gateway_sensors",
        "Sensors known now (at most pipeline.max_sensors).",
    ),
    rejected: ByReason<Reject> = own(
        "gateway_readings_rejected_total",
        "Messages or readings dropped, by reason.",
    ),
    pub buffer_dropped_oldest: Counter = member(&UPSTREAM_DROPPED, "buffer_full_oldest"),
    pub buffer_dropped_disk_full: Counter = member(&UPSTREAM_DROPPED, "buffer_full_newest"),
    /// Records the core made but could not hand to the sink before it
    /// stopped (shutdown took longer than its bound).
    pub records_lost_at_shutdown: Counter = member(&UPSTREAM_DROPPED, "shutdown"),
    pub buffer_expired: Counter = member(&UPSTREAM_DROPPED, "expired"),
    /// Damaged regions skipped while reading the buffer back (each held at
    /// least one record).
    pub buffer_corrupt_regions: Counter = member(&UPSTREAM_DROPPED, "corrupt"),
    /// Segments whose rest was given up after open or read errors persisted.
    pub buffer_unreadable_segments: Counter = member(&UPSTREAM_DROPPED, "unreadable"),
    /// Records upstream refused to take, set aside in the quarantine file.
    pub buffer_set_aside: Counter = member(&UPSTREAM_DROPPED, "unpublishable"),
    /// One entry per serial port, in configuration order.
    serial: SerialPorts = Spec::Nested,
    /// Commands not obeyed, per [`CommandReject`].
    commands_rejected: ByReason<CommandReject> = own(
        "gateway_commands_rejected_total",
        "Commands not obeyed, by reason.",
    ),
    /// Alarm events sent again at start-up because a crash lost them
    /// before they were stored.
    pub alarm_events_reemitted: Counter = own(
        "gateway_alarm_events_reemitted_total",
        "Alarm events sent again at start-up because a crash lost them before they were stored.",
    ),
    /// Alarm events forgotten by a sensor's crash-recovery ledger because it
    /// held `MAX_LEDGER_EVENTS` events not yet known durable.
    pub alarm_ledger_overflow: Counter = own(
        "gateway_alarm_ledger_overflow_total",
        "Alarm events forgotten by a sensor's crash-recovery ledger, which was full of events not yet durable.",
    ),
    build_info: BuildInfo = own(
        "gateway_build_info",
        "Always 1; the labels name the gateway's version and the target it was built for.",
    ),
    config_info: ConfigInfo = own(
        "gateway_config_info",
        "Always 1; the label is the SHA-256 of the configuration file the gateway runs (as sha256sum prints it).",
    ),
    uptime: Uptime = own(
        "gateway_uptime_seconds",
        "Seconds since the gateway started.",
    ),
    /// Records waiting for delivery per lane (in memory, on disk or in
    /// flight), set by the buffer.
    pub backlog_records: ByLane = own(
        "gateway_backlog_records",
        "Records waiting for delivery (in memory, on disk or in flight), by lane.",
    ),
    /// Bytes the records waiting per lane take: their unacknowledged
    /// segments on disk and the records held only in memory.
    pub backlog_bytes: ByLane = own(
        "gateway_backlog_bytes",
        "Bytes of records waiting for delivery: the lane's segments holding unacknowledged records, and records held only in memory.",
    ),
    /// Age of the oldest record waiting per lane, by its measurement time;
    /// 0 when the lane is empty.
    pub backlog_oldest_age_seconds: ByLane = own(
        "gateway_backlog_oldest_age_seconds",
        "Age, by measurement time, of the oldest record waiting for delivery, by lane (0 when nothing waits).",
    ),
    /// Seconds until the buffer's disk bound would be reached if nothing
    /// were delivered from now on, at the rate records arrived over the
    /// last minute; -1 while nothing arrives. Read by the status line
    /// and the status topic too.
    pub outage_seconds_left: Gauge = own(
        "gateway_outage_seconds_left",
        "Seconds until the buffer reaches its disk bound (buffer.max_disk_bytes, or the filesystem's end if that comes first) if nothing is delivered from now on, at the bytes per second records arrived over the last minute: while upstream is down, the time left before when_full applies; while it is up, how long an outage starting now could last. -1 while no records arrive.",
    ),
    /// Time from a PUBLISH leaving the upstream client to its PUBACK.
    pub upstream_puback_latency: Histogram = own(
        "gateway_upstream_puback_latency_seconds",
        "Time from a record's PUBLISH leaving the upstream client to the broker's PUBACK.",
    ),
    /// MQTT sources, in configuration order.
    mqtt_sources: MqttSources = Spec::Nested,
    pub http_metrics: Counter = member(&HTTP_REQUESTS, "metrics"),
    pub http_healthz: Counter = member(&HTTP_REQUESTS, "healthz"),
    pub http_ready: Counter = member(&HTTP_REQUESTS, "ready"),
    pub http_not_ready: Counter = member(&HTTP_REQUESTS, "not_ready"),
    pub http_not_found: Counter = member(&HTTP_REQUESTS, "not_found"),
    pub http_method_not_allowed: Counter = member(&HTTP_REQUESTS, "method_not_allowed"),
    /// Connections closed at once because `http::MAX_CONNECTIONS` were open.
    pub http_connections_refused: Counter = own(
        "gateway_http_connections_refused_total",
        "HTTP connections closed unanswered because the limit of open connections was reached.",
    ),
    /// Connections that ended in an error: headers too large or too slow,
    /// a malformed request, a reset.
    pub http_connection_errors: Counter = own(
        "gateway_http_connection_errors_total",
        "HTTP connections that ended in an error (headers too large or too slow, a malformed request, a reset).",
    ),
    pub reloads_applied: Counter = own(
        "gateway_reloads_applied_total",
        "Configuration reloads (SIGHUP) applied.",
    ),
    pub reloads_rejected: Counter = own(
        "gateway_reloads_rejected_total",
        "Configuration reloads (SIGHUP) refused because the file could not be read or is invalid; the running configuration stayed.",
    ),
    /// 1 once the wall clock is trusted (synchronised, or past
    /// `clock.not_before` unless `clock.require_sync`).
    pub clock_trusted: Gauge = own(
        "gateway_clock_trusted",
        "1 once the gateway's wall clock is trusted (synchronised, or past clock.not_before unless clock.require_sync); until then readings wait.",
    ),
    pub clock_synchronized: Gauge = own(
        "gateway_clock_synchronized",
        "1 while the kernel reports the wall clock synchronised (adjtimex).",
    ),
    pub clock_waiting_inputs: Gauge = own(
        "gateway_clock_waiting_inputs",
        "Messages and serial batches waiting for a trustworthy clock.",
    ),
    /// Inputs that waited for a trustworthy clock and were stamped again.
    pub clock_restamped: Counter = own(
        "gateway_clock_restamped_total",
        "Messages and serial batches that waited for a trustworthy clock and were stamped again by it.",
    ),
    pub clock_jumps_forward: Counter = member(&CLOCK_JUMPS, "forward"),
    pub clock_jumps_backward: Counter = member(&CLOCK_JUMPS, "backward"),
    /// Set at start, at each reload and once a day; 0 without a client
    /// certificate.
    pub tls_client_cert_expiry_seconds: Gauge = own(
        "gateway_tls_client_cert_expiry_seconds",
        "Seconds until the upstream TLS client certificate (cert_file) expires, negative once expired; 0 without one. A warning is logged when fewer than 30 days remain.",
    ),
}

/// What one serial port reports. The port's decoder is owned by its task;
/// the task copies the decoder's counters here after every read.
#[derive(Debug, Default)]
pub struct SerialPortMetrics {
    pub port: String,
    pub connected: Gauge,
    pub opens: Counter,
    pub disconnects: Counter,
    pub open_failures: Counter,
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

    /// Registers a serial port's metrics; a port started again (after a
    /// reload) keeps its counters, so they never go backwards.
    pub fn serial_port(&self, port: &str) -> Arc<SerialPortMetrics> {
        let Ok(mut v) = self.serial.0.lock() else {
            return Arc::default();
        };
        if let Some(m) = v.iter().find(|m| m.port == port) {
            return m.clone();
        }
        let m = Arc::new(SerialPortMetrics {
            port: port.to_owned(),
            ..Default::default()
        });
        v.push(m.clone());
        m
    }

    /// Registers an MQTT source; the gauge is 1 while it is connected. A
    /// source started again (after a reload) gets its gauge back.
    pub fn mqtt_source(&self, name: &str) -> Arc<Gauge> {
        let Ok(mut v) = self.mqtt_sources.0.lock() else {
            return Arc::default();
        };
        if let Some((_, g)) = v.iter().find(|(n, _)| n == name) {
            return g.clone();
        }
        let g = Arc::new(Gauge::default());
        v.push((name.to_owned(), g.clone()));
        g
    }

    /// Forgets the sources a reload removed: their series leave the
    /// exposition and `/readyz` no longer waits for them.
    pub fn keep_sources(&self, names: &[&str]) {
        if let Ok(mut v) = self.mqtt_sources.0.lock() {
            v.retain(|(n, _)| names.contains(&n.as_str()));
        }
        if let Ok(mut v) = self.serial.0.lock() {
            v.retain(|m| names.contains(&m.port.as_str()));
        }
    }

    /// Every registered source, MQTT sources first, each in configuration
    /// order.
    pub fn source_states(&self) -> Vec<SourceState> {
        let mut out = Vec::new();
        if let Ok(v) = self.mqtt_sources.0.lock() {
            out.extend(v.iter().map(|(name, g)| SourceState {
                kind: "mqtt",
                name: name.clone(),
                connected: g.get() == 1,
            }));
        }
        if let Ok(v) = self.serial.0.lock() {
            out.extend(v.iter().map(|p| SourceState {
                kind: "serial",
                name: p.port.clone(),
                connected: p.connected.get() == 1,
            }));
        }
        out
    }

    /// Seconds since the oldest record not yet acknowledged was measured;
    /// `None` when nothing waits. Read by the `STATUS=` line and the
    /// status topic.
    pub fn oldest_backlog_age_s(&self, now_ms: i64) -> Option<i64> {
        let oldest = self.buffer_oldest_ts_ms.get();
        (oldest > 0 && self.upstream_queue_records.get() > 0)
            .then(|| now_ms.saturating_sub(oldest).max(0) / 1000)
    }

    /// Records the running configuration file's SHA-256 (at start-up, and
    /// again at every applied reload).
    pub fn set_config_sha256(&self, hex: &str) {
        if let Ok(mut h) = self.config_info.0.lock() {
            *h = Some(hex.to_owned());
        }
    }

    /// The running configuration file's SHA-256, once set.
    pub fn config_sha256(&self) -> Option<String> {
        self.config_info.0.lock().ok().and_then(|h| h.clone())
    }

    /// Time since the gateway started.
    pub fn uptime(&self) -> std::time::Duration {
        self.uptime.0.elapsed()
    }

    pub fn reject(&self, reason: Reject) {
        self.rejected.inc(reason);
    }

    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected.get(reason)
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.total()
    }

    /// Counts a publish the upstream broker refused.
    pub fn refused_upstream(&self, reason: Refusal) {
        self.upstream_refused.inc(reason);
    }

    pub fn upstream_refused(&self, reason: Refusal) -> u64 {
        self.upstream_refused.get(reason)
    }

    /// Counts a command that was not obeyed.
    pub fn reject_command(&self, reason: CommandReject) {
        self.commands_rejected.inc(reason);
    }

    pub fn commands_rejected(&self, reason: CommandReject) -> u64 {
        self.commands_rejected.get(reason)
    }

    /// Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut text = Text::default();
        self.visit(&mut |spec, metric| metric.render(spec, &mut text));
        text.out
    }

    /// Records dropped before delivery, all reasons but `shutdown`.
    pub fn upstream_dropped_total(&self) -> u64 {
        self.buffer_dropped_oldest.get()
            + self.buffer_dropped_disk_full.get()
            + self.buffer_expired.get()
            + self.buffer_corrupt_regions.get()
            + self.buffer_unreadable_segments.get()
            + self.buffer_set_aside.get()
    }

    /// A one-line summary for the periodic log line.
    pub fn one_line(&self) -> String {
        format!(
            "received={} accepted={} rejected={} summaries={} delivered={} queued={} dropped={} upstream_connected={}",
            self.messages_received.get(),
            self.readings_accepted.get(),
            self.rejected_total(),
            self.summaries_produced.get(),
            self.upstream_acked.get(),
            self.upstream_queue_records.get(),
            self.upstream_dropped_total(),
            self.upstream_connected.get() == 1,
        )
    }
}

/// A declared field that can put itself into the Prometheus text.
trait Render {
    fn render(&self, spec: &Spec, text: &mut Text);

    /// Sets every value to the next of a test's sequence (nothing, for
    /// what is not a count).
    #[cfg(test)]
    fn fill(&self, _next: &mut tests::Filler) {}
}

/// The Prometheus text being written.
#[derive(Default)]
struct Text {
    out: String,
    /// The family whose header was written last, if its members follow.
    family: Option<&'static str>,
}

impl Text {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// For a metric of its own that writes its samples itself: writes its
    /// header and returns its name; `None` for any other [`Spec`].
    fn own_header(&mut self, spec: &Spec, kind: &str) -> Option<&'static str> {
        let Spec::Own { name, help } = *spec else {
            return None;
        };
        self.family = None;
        self.header(name, help, kind);
        Some(name)
    }

    fn value(&mut self, spec: &Spec, kind: &str, v: impl Display) {
        match *spec {
            Spec::Own { name, help } => {
                self.family = None;
                self.header(name, help, kind);
                let _ = writeln!(self.out, "{name} {v}");
            }
            Spec::Member { family, label } => {
                if self.family != Some(family.name) {
                    self.family = Some(family.name);
                    self.header(family.name, family.help, family.kind);
                }
                let _ = writeln!(
                    self.out,
                    "{}{{{}=\"{label}\"}} {v}",
                    family.name, family.key
                );
            }
            Spec::Nested => {}
        }
    }
}

impl Render for Counter {
    fn render(&self, spec: &Spec, text: &mut Text) {
        text.value(spec, "counter", self.get());
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        self.0.store(next.counter(), Ordering::Relaxed);
    }
}

impl Render for Gauge {
    fn render(&self, spec: &Spec, text: &mut Text) {
        text.value(spec, "gauge", self.get());
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        self.set(next.gauge());
    }
}

impl<R: Reason> Render for ByReason<R> {
    fn render(&self, spec: &Spec, text: &mut Text) {
        let Some(name) = text.own_header(spec, "counter") else {
            return;
        };
        for &r in R::ALL {
            let _ = writeln!(
                text.out,
                "{name}{{reason=\"{}\"}} {}",
                r.name(),
                self.get(r)
            );
        }
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        for c in self.counters.iter() {
            c.fill(next);
        }
    }
}

/// `gateway_build_info`: the version and the target triple as labels.
#[derive(Debug, Default)]
struct BuildInfo;

impl BuildInfo {
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const TARGET: &'static str = env!("GATEWAY_TARGET");
}

/// `gateway_config_info`: the running configuration file's SHA-256, set
/// at start-up and by every applied reload.
#[derive(Debug, Default)]
struct ConfigInfo(std::sync::Mutex<Option<String>>);

/// Seconds since the metrics were made, which is at the process's start.
#[derive(Debug)]
struct Uptime(std::time::Instant);

impl Default for Uptime {
    fn default() -> Self {
        Uptime(std::time::Instant::now())
    }
}

/// One gauge per delivery lane, rendered as `name{lane="…"}` with the
/// lane's directory name (`summaries`, `alarms`).
#[derive(Debug, Default)]
pub struct ByLane([Gauge; 2]);

impl ByLane {
    pub fn set(&self, lane: Lane, v: i64) {
        self.0[lane as usize].set(v);
    }

    pub fn get(&self, lane: Lane) -> i64 {
        self.0[lane as usize].get()
    }
}

/// Upper bounds of the PUBACK latency buckets: in microseconds, and as
/// the `le` label writes them (seconds).
const LATENCY_BUCKETS: [(u64, &str); 14] = [
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`] and
/// `+Inf`): one relaxed atomic per bucket, the sum and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is `+Inf`.
    buckets: [Counter; LATENCY_BUCKETS.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&(le, _)| us <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].inc();
        self.sum_us.add(us);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Counter::get).sum()
    }
}

/// The registered MQTT sources: name and whether connected.
#[derive(Debug, Default)]
struct MqttSources(std::sync::Mutex<Vec<(String, Arc<Gauge>)>>);

/// Whether one configured source is connected (MQTT) or open (serial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    /// `mqtt` or `serial`.
    pub kind: &'static str,
    pub name: String,
    pub connected: bool,
}

impl Render for BuildInfo {
    fn render(&self, spec: &Spec, text: &mut Text) {
        let Some(name) = text.own_header(spec, "gauge") else {
            return;
        };
        let _ = writeln!(
            text.out,
            "{name}{{version=\"{}\",target=\"{}\"}} 1",
            Self::VERSION,
            Self::TARGET
        );
    }
}

impl Render for ConfigInfo {
    fn render(&self, spec: &Spec, text: &mut Text) {
        let Some(name) = text.own_header(spec, "gauge") else {
            return;
        };
        if let Some(hex) = self.0.lock().ok().and_then(|h| h.clone()) {
            let _ = writeln!(text.out, "{name}{{sha256=\"{}\"}} 1", escape_label(&hex));
        }
    }

    #[cfg(test)]
    fn fill(&self, _: &mut tests::Filler) {
        if let Ok(mut h) = self.0.lock() {
            *h = Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into());
        }
    }
}

impl Render for Uptime {
    fn render(&self, spec: &Spec, text: &mut Text) {
        text.value(spec, "gauge", self.0.elapsed().as_secs());
    }
}

impl Render for ByLane {
    fn render(&self, spec: &Spec, text: &mut Text) {
        let Some(name) = text.own_header(spec, "gauge") else {
            return;
        };
        for lane in [Lane::Summary, Lane::Alarm] {
            let _ = writeln!(
                text.out,
                "{name}{{lane=\"{}\"}} {}",
                lane.dir_name(),
                self.get(lane)
            );
        }
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        for g in &self.0 {
            g.fill(next);
        }
    }
}

impl Render for Histogram {
    fn render(&self, spec: &Spec, text: &mut Text) {
        let Some(name) = text.own_header(spec, "histogram") else {
            return;
        };
        let mut cumulative = 0;
        let les = LATENCY_BUCKETS.iter().map(|&(_, le)| le).chain(["+Inf"]);
        for (le, n) in les.zip(&self.buckets) {
            cumulative += n.get();
            let _ = writeln!(text.out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.get();
        let _ = writeln!(
            text.out,
            "{name}_sum {}.{:06}\n{name}_count {cumulative}",
            sum / 1_000_000,
            sum % 1_000_000
        );
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        for c in self.buckets.iter().chain([&self.sum_us]) {
            c.fill(next);
        }
    }
}

impl Render for MqttSources {
    fn render(&self, _: &Spec, text: &mut Text) {
        let Ok(sources) = self.0.lock() else {
            return;
        };
        if sources.is_empty() {
            return;
        }
        text.family = None;
        let name = "gateway_source_connected";
        text.header(
            name,
            "1 while the MQTT source's broker is connected.",
            "gauge",
        );
        for (source, g) in sources.iter() {
            let _ = writeln!(
                text.out,
                "{name}{{source=\"{}\"}} {}",
                escape_label(source),
                g.get()
            );
        }
    }

    #[cfg(test)]
    fn fill(&self, _: &mut tests::Filler) {
        if let Ok(sources) = self.0.lock() {
            for (_, g) in sources.iter() {
                g.set(1);
            }
        }
    }
}

/// The registered serial ports, rendered with one label per port (and per
/// node).
#[derive(Debug, Default)]
struct SerialPorts(std::sync::Mutex<Vec<Arc<SerialPortMetrics>>>);

type PortValue = fn(&SerialPortMetrics, &SerialSnapshot) -> u64;

/// The per-port metrics: name, type, help, value.
const PER_PORT: &[(&str, &str, &str, PortValue)] = &[
    (
        "gateway_serial_connected",
        "gauge",
        "1 while the port is open.",
        |p, _| p.connected.get().max(0) as u64,
    ),
    (
        "gateway_serial_opens_total",
        "counter",
        "Times the port was opened.",
        |p, _| p.opens.get(),
    ),
    (
        "gateway_serial_disconnects_total",
        "counter",
        "Times the port went away (unplugged, I/O error).",
        |p, _| p.disconnects.get(),
    ),
    (
        "gateway_serial_open_failures_total",
        "counter",
        "Failed attempts to open the port.",
        |p, _| p.open_failures.get(),
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

/// Frames or lines dropped, per port and [`crate::wire::DropReason`] reason.
const SERIAL_DROPPED: (&str, &str) = (
    "gateway_serial_dropped_total",
    "Frames or lines dropped, by reason.",
);

type NodeValue = fn(&crate::wire::node::NodeCounters) -> u64;

/// The per-node counters: name, help, value.
const PER_NODE: &[(&str, &str, NodeValue)] = &[
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

impl Render for SerialPorts {
    fn render(&self, _: &Spec, text: &mut Text) {
        let ports: Vec<Arc<SerialPortMetrics>> = match self.0.lock() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        if ports.is_empty() {
            return;
        }
        text.family = None;
        let snaps: Vec<SerialSnapshot> = ports.iter().map(|p| p.snapshot()).collect();
        for (name, kind, help, f) in PER_PORT {
            text.header(name, help, kind);
            for (p, snap) in ports.iter().zip(&snaps) {
                let _ = writeln!(text.out, "{name}{{port=\"{}\"}} {}", p.port, f(p, snap));
            }
        }
        let (name, help) = SERIAL_DROPPED;
        text.header(name, help, "counter");
        for (p, snap) in ports.iter().zip(&snaps) {
            for r in crate::wire::DropReason::ALL {
                let _ = writeln!(
                    text.out,
                    "{name}{{port=\"{}\",reason=\"{}\"}} {}",
                    p.port,
                    r.name(),
                    snap.counters.dropped(r)
                );
            }
        }
        for (name, help, f) in PER_NODE {
            text.header(name, help, "counter");
            for (p, snap) in ports.iter().zip(&snaps) {
                for (node, c) in &snap.nodes {
                    let _ = writeln!(
                        text.out,
                        "{name}{{port=\"{}\",node=\"{}\"}} {}",
                        p.port,
                        escape_label(node),
                        f(c)
                    );
                }
            }
        }
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        if let Ok(ports) = self.0.lock() {
            for p in ports.iter() {
                p.connected.set(1);
                for c in [&p.opens, &p.disconnects, &p.open_failures] {
                    c.fill(next);
                }
            }
        }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Distinct values for every counter and gauge, in declaration order.
    #[derive(Default)]
    pub(crate) struct Filler {
        counters: u64,
        gauges: i64,
    }

    impl Filler {
        pub(crate) fn counter(&mut self) -> u64 {
            self.counters += 1;
            self.counters * 7 + 1
        }

        pub(crate) fn gauge(&mut self) -> i64 {
            self.gauges += 1;
            3 - self.gauges * 5
        }
    }

    /// Every metric holds a distinct value; two serial ports are registered.
    fn filled() -> Metrics {
        let m = Metrics::new();
        m.mqtt_source("plant-a");
        m.serial_port("ttyA");
        m.serial_port("ttyB");
        let mut next = Filler::default();
        m.visit(&mut |_, metric| metric.fill(&mut next));
        m
    }

    /// Names, help, types, labels and order are what dashboards, the
    /// end-to-end tests and the documents read: the text must not change
    /// unless a metric is added on purpose.
    /// The text with the build's version and target replaced by
    /// placeholders, so that the pinned text outlives a release.
    fn pinned_text(m: &Metrics) -> String {
        m.render_prometheus()
            .replace(
                &format!("version=\"{}\"", BuildInfo::VERSION),
                "version=\"VERSION\"",
            )
            .replace(
                &format!("target=\"{}\"", BuildInfo::TARGET),
                "target=\"TARGET\"",
            )
    }

    #[test]
    fn prometheus_text_is_unchanged() {
        // After adding a metric: PIN_METRICS=1 cargo test -p sensor-gateway
        // --lib prometheus_text_is_unchanged writes the new text; review
        // its diff.
        let text = pinned_text(&filled());
        if std::env::var_os("PIN_METRICS").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metrics.prom");
            std::fs::write(path, &text).unwrap();
        }
        let expected = include_str!("../tests/data/metrics.prom");
        assert_eq!(text, expected);
    }

    #[test]
    fn the_puback_latency_histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_micros(800));
        h.observe(std::time::Duration::from_millis(30));
        h.observe(std::time::Duration::from_secs(60));
        let m = Metrics::new();
        let mut text = Text::default();
        h.render(&own("x", "h"), &mut text);
        assert!(text.out.contains("x_bucket{le=\"0.001\"} 1\n"));
        assert!(text.out.contains("x_bucket{le=\"0.025\"} 1\n"));
        assert!(text.out.contains("x_bucket{le=\"0.05\"} 2\n"));
        assert!(text.out.contains("x_bucket{le=\"30\"} 2\n"));
        assert!(text.out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.out.contains("x_sum 60.030800\nx_count 3\n"));
        assert_eq!(h.count(), 3);
        assert_eq!(m.upstream_puback_latency.count(), 0);
    }

    #[test]
    fn readiness_sees_every_source_by_name_and_kind() {
        let m = Metrics::new();
        let plant = m.mqtt_source("plant");
        let port = m.serial_port("ttyA");
        plant.set(1);
        let states = m.source_states();
        assert_eq!(states.len(), 2);
        assert_eq!(
            (states[0].kind, states[0].name.as_str(), states[0].connected),
            ("mqtt", "plant", true)
        );
        assert_eq!(
            (states[1].kind, states[1].name.as_str(), states[1].connected),
            ("serial", "ttyA", false)
        );
        port.connected.set(1);
        assert!(m.source_states().iter().all(|s| s.connected));
    }

    #[test]
    fn the_config_hash_follows_the_running_config() {
        let m = Metrics::new();
        assert_eq!(m.config_sha256(), None);
        m.set_config_sha256("ab");
        m.set_config_sha256("cd");
        assert_eq!(m.config_sha256().as_deref(), Some("cd"));
        assert!(m
            .render_prometheus()
            .contains("gateway_config_info{sha256=\"cd\"} 1\n"));
    }

    #[test]
    fn one_line_summarises_the_main_counters() {
        assert_eq!(
            filled().one_line(),
            "received=8 accepted=15 rejected=5672 summaries=22 delivered=134 queued=-22 dropped=2617 upstream_connected=false"
        );
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
    fn command_rejections_are_counted_per_reason() {
        let m = Metrics::new();
        m.reject_command(CommandReject::Retained);
        let text = m.render_prometheus();
        assert!(text.contains("gateway_commands_rejected_total{reason=\"retained\"} 1"));
        for r in CommandReject::ALL {
            assert!(text.contains(&format!("reason=\"{}\"", r.name())));
        }
    }
}
