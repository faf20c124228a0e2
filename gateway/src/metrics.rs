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

use crate::reject::{CommandReject, Reason, Reject};

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
    /// Sensors forgotten after `pipeline.retire_after` of silence.
    pub sensors_retired: Counter = own(
        "gateway_sensors_retired_total",
        "Sensors forgotten after pipeline.retire_after of silence.",
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

    /// Registers a serial port's metrics.
    pub fn serial_port(&self, port: &str) -> Arc<SerialPortMetrics> {
        let m = Arc::new(SerialPortMetrics {
            port: port.to_owned(),
            ..Default::default()
        });
        if let Ok(mut v) = self.serial.0.lock() {
            v.push(m.clone());
        }
        m
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

    /// Sets every value to the next of a test's sequence.
    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler);
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
        if let Spec::Own { name, help } = *spec {
            text.family = None;
            text.header(name, help, "counter");
            for &r in R::ALL {
                let _ = writeln!(
                    text.out,
                    "{name}{{reason=\"{}\"}} {}",
                    r.name(),
                    self.get(r)
                );
            }
        }
    }

    #[cfg(test)]
    fn fill(&self, next: &mut tests::Filler) {
        for c in self.counters.iter() {
            c.fill(next);
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
        m.serial_port("ttyA");
        m.serial_port("ttyB");
        let mut next = Filler::default();
        m.visit(&mut |_, metric| metric.fill(&mut next));
        m
    }

    /// Names, help, types, labels and order are what dashboards, the
    /// end-to-end tests and the documents read: the text must not change
    /// unless a metric is added on purpose.
    #[test]
    fn prometheus_text_is_unchanged() {
        let expected = include_str!("../tests/data/metrics.prom");
        assert_eq!(filled().render_prometheus(), expected);
    }

    #[test]
    fn one_line_summarises_the_main_counters() {
        assert_eq!(
            filled().one_line(),
            "received=8 accepted=15 rejected=4552 summaries=22 delivered=134 queued=-12 dropped=2197 upstream_connected=false"
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
