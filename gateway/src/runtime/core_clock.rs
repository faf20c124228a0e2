//! The clock of the core's task: reads the machine's clocks at every wake,
//! keeps input waiting while the wall clock is not trustworthy, re-stamps
//! and hands it to the processor once it is, and tells the processor of
//! steps. The judgement itself is pure (`crate::clock`); this is its shell.

use std::time::Duration;

use crate::clock::system::SystemClock;
use crate::clock::{rfc3339, ClockGuard, ClockReading, ClockSettings, Clocks, Pending};
use crate::config::ClockConfig;
use crate::metrics::Metrics;
use crate::model::Record;
use crate::processor::{Input, Processor};
use crate::reject::Throttle;

/// How often the clock is read again while it is not trusted.
pub(super) const CLOCK_POLL: Duration = Duration::from_secs(1);

/// At most this many inputs (messages, serial batches) wait for the clock;
/// then the core takes no more input and the sources stop reading.
const MAX_WAITING_INPUTS: usize = 4096;

/// Clock lines (jumps, waiting) are logged at most this often (monotonic
/// time: a jump must not silence its own log line).
const CLOCK_LOG_INTERVAL_MS: i64 = 60_000;

pub(super) struct CoreClock<C: Clocks = SystemClock> {
    system: C,
    guard: ClockGuard,
    settings: ClockSettings,
    waiting: Pending<Input>,
    jump_log: Throttle,
    wait_log: Throttle,
}

impl CoreClock {
    pub(super) fn new(cfg: &ClockConfig) -> Self {
        Self::with_clocks(cfg, SystemClock::new())
    }
}

impl<C: Clocks> CoreClock<C> {
    pub(super) fn with_clocks(cfg: &ClockConfig, system: C) -> Self {
        let settings = ClockSettings {
            require_sync: cfg.require_sync,
            not_before_ms: cfg.not_before_ms,
        };
        Self {
            system,
            guard: ClockGuard::new(settings),
            settings,
            waiting: Pending::new(MAX_WAITING_INPUTS),
            jump_log: Throttle::default(),
            wait_log: Throttle::default(),
        }
    }

    pub(super) fn is_trusted(&self) -> bool {
        self.guard.is_trusted()
    }

    /// Whether input must wait before the core takes more.
    pub(super) fn is_full(&self) -> bool {
        self.waiting.is_full()
    }

    /// When to read the clock again without other cause: while it is not
    /// trusted (input, commands and the processor's timers wait for it).
    pub(super) fn poll_at(&self) -> Option<tokio::time::Instant> {
        (!self.guard.is_trusted()).then(|| tokio::time::Instant::now() + CLOCK_POLL)
    }

    /// Reads the clocks. A step seen on a trusted clock is counted, logged
    /// and passed to the processor; on the first trusted reading the inputs
    /// that waited are stamped again and ingested (their records go to
    /// `out`). Returns the reading, and the time to use for the core when
    /// the clock is trusted.
    pub(super) fn check(
        &mut self,
        processor: &mut Processor,
        metrics: &Metrics,
        out: &mut Vec<Record>,
    ) -> (ClockReading, Option<i64>) {
        let reading = self.system.read();
        let was_trusted = self.guard.is_trusted();
        let verdict = self.guard.observe(reading);
        metrics.clock_synchronized.set(i64::from(reading.synced));
        metrics.clock_trusted.set(i64::from(verdict.trusted));
        if let Some(jump) = verdict.jump_ms {
            if jump > 0 {
                metrics.clock_jumps_forward.inc();
            } else {
                metrics.clock_jumps_backward.inc();
            }
            if let Some(suppressed) = self.jump_log.allow(CLOCK_LOG_INTERVAL_MS, reading.mono_ms) {
                tracing::warn!(
                    jump_s = jump as f64 / 1000.0,
                    now = %rfc3339(reading.wall_ms),
                    synchronized = reading.synced,
                    suppressed_since_last = suppressed,
                    "The wall clock jumped (an NTP step, or someone set it); times measured on the gateway clock move with it, and windows already sent stay sent. Counted in gateway_clock_jumps_total."
                );
            }
            if was_trusted {
                processor.clock_stepped(jump, reading.wall_ms, out);
            }
        }
        if verdict.became_trusted {
            let n = self.waiting.len();
            for released in self.waiting.release(reading) {
                let mut input = released.item;
                input.correct_gateway_times(released.correction_ms);
                processor.ingest_input(&input, released.arrived_ms, out);
            }
            metrics.clock_restamped.add(n as u64);
            metrics.clock_waiting_inputs.set(0);
            if n > 0 || !reading.synced {
                tracing::info!(
                    now = %rfc3339(reading.wall_ms),
                    synchronized = reading.synced,
                    restamped = n,
                    "The wall clock is trusted now; what waited for it was stamped again and processed."
                );
            }
        }
        (reading, verdict.trusted.then_some(reading.wall_ms))
    }

    /// Keeps input that arrived while the clock is not trusted.
    pub(super) fn wait(&mut self, input: Input, at: ClockReading, metrics: &Metrics) {
        if self.waiting.is_empty() {
            if let Some(suppressed) = self.wait_log.allow(CLOCK_LOG_INTERVAL_MS, at.mono_ms) {
                tracing::warn!(
                    now = %rfc3339(at.wall_ms),
                    not_before = %rfc3339(self.settings.not_before_ms),
                    require_sync = self.settings.require_sync,
                    synchronized = at.synced,
                    limit = MAX_WAITING_INPUTS,
                    suppressed_since_last = suppressed,
                    "The wall clock is not trustworthy yet (not synchronised, or before clock.not_before): readings wait and are stamped once it is; at the limit the sources stop reading. Check NTP (timedatectl), or set clock.require_sync = false."
                );
            }
        }
        self.waiting.hold(input, at);
        metrics.clock_waiting_inputs.set(self.waiting.len() as i64);
    }

    /// At shutdown, with the clock still not trusted: what waited is
    /// processed with the times it has, so that it is counted.
    pub(super) fn drain(&mut self, processor: &mut Processor, out: &mut Vec<Record>) {
        let now = self.system.read();
        for released in self.waiting.release(now) {
            processor.ingest_input(&released.item, released.arrived_ms, out);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core's clock with an injected clock: no real clock, no sleeps.

    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::processor::{CoreSettings, RawMessage};
    use crate::reject::Reject;

    /// 2026-11-26T00:00:00Z, the build date the tests assume.
    const BUILD_MS: i64 = 1_795_651_200_000;
    /// The time NTP brings, an hour after the build date.
    const TRUE_MS: i64 = BUILD_MS + 3_600_000;

    /// One rule for every sensor: 10 s windows, a stale alarm after 30 s.
    const CONFIG: &str = r#"
gateway = { id = "gw" }
source = [{ kind = "mqtt", broker = "127.0.0.1:1883", topic_template = "plant/{line}/{machine}/{sensor}" }]
sensor = [{ match = "*", window = "10s", alarm = { high = 100.0, stale_after = "30s" } }]
pipeline = { allowed_lateness = "1s" }
upstream = { broker = "127.0.0.1:1884" }
"#;

    /// Clocks the test sets.
    #[derive(Clone)]
    struct FakeClock(Rc<Cell<ClockReading>>);

    impl Clocks for FakeClock {
        fn read(&self) -> ClockReading {
            self.0.get()
        }
    }

    struct Core {
        now: FakeClock,
        clock: CoreClock<FakeClock>,
        p: Processor,
        metrics: Arc<Metrics>,
        out: Vec<Record>,
    }

    impl Core {
        /// A core whose machine reads `wall_ms` after `mono_ms` of uptime.
        fn new(require_sync: bool, wall_ms: i64, mono_ms: i64, synced: bool) -> Self {
            let config = Config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
            let metrics = Arc::new(Metrics::new());
            let now = FakeClock(Rc::new(Cell::new(ClockReading {
                wall_ms,
                mono_ms,
                synced,
            })));
            let cfg = ClockConfig {
                require_sync,
                not_before_ms: BUILD_MS,
            };
            Core {
                clock: CoreClock::with_clocks(&cfg, now.clone()),
                now,
                p: Processor::new(CoreSettings::from_config(&config), metrics.clone(), 1),
                metrics,
                out: Vec::new(),
            }
        }

        /// Both clocks advance by `ms`.
        fn pass(&mut self, ms: i64) {
            let mut r = self.now.0.get();
            r.wall_ms += ms;
            r.mono_ms += ms;
            self.now.0.set(r);
        }

        /// The wall clock is set to `wall_ms` (a step), synchronised or not.
        fn set_wall(&mut self, wall_ms: i64, synced: bool) {
            let mut r = self.now.0.get();
            r.wall_ms = wall_ms;
            r.synced = synced;
            self.now.0.set(r);
        }

        /// A reading without a timestamp of its own arrives, as the runtime
        /// hands it to the core: stamped by the gateway clock, then either
        /// processed or kept waiting.
        fn arrive(&mut self, value: f64) {
            let (at, now) = self.clock.check(&mut self.p, &self.metrics, &mut self.out);
            let input = Input::Message(RawMessage {
                source: 0,
                topic: "plant/l1/m1/temp".into(),
                payload: bytes::Bytes::from(format!(r#"{{"value":{value}}}"#)),
                received_ms: at.wall_ms,
            });
            match now {
                Some(now) => self.p.ingest_input(&input, now, &mut self.out),
                None => self.clock.wait(input, at, &self.metrics),
            }
        }

        /// A timer wake of the core's task.
        fn wake(&mut self) {
            if let (_, Some(now)) = self.clock.check(&mut self.p, &self.metrics, &mut self.out) {
                self.p.flush_due(now, &mut self.out);
            }
        }

        /// (window start, count) of every summary so far, after flushing.
        fn summaries(&mut self) -> Vec<(i64, u64)> {
            self.p.flush_all(&mut self.out);
            self.out
                .iter()
                .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
                .filter(|v| v["kind"] == "summary")
                .map(|v| {
                    (
                        v["window_start_ms"].as_i64().unwrap(),
                        v["count"].as_u64().unwrap(),
                    )
                })
                .collect()
        }
    }

    #[test]
    fn readings_before_the_first_sync_wait_and_carry_the_synchronised_time() {
        // Booted at 1970 (no real-time clock), 5 s of uptime.
        let mut c = Core::new(true, 5_000, 5_000, false);
        c.arrive(1.0);
        c.pass(2_000);
        c.arrive(2.0);
        c.wake();
        assert_eq!(c.metrics.clock_waiting_inputs.get(), 2);
        assert_eq!(
            c.metrics.messages_received.get(),
            0,
            "nothing reached the core"
        );
        assert!(c.clock.poll_at().is_some(), "the clock is read again soon");
        // NTP steps the clock 3 s later.
        c.pass(3_000);
        c.set_wall(TRUE_MS, true);
        c.wake();
        assert_eq!(c.metrics.clock_trusted.get(), 1);
        assert_eq!(c.metrics.clock_restamped.get(), 2);
        assert_eq!(c.metrics.clock_jumps_forward.get(), 1);
        assert_eq!(c.metrics.readings_accepted.get(), 2);
        // Arrived 5 s and 3 s before the sync: both in the window of
        // TRUE_MS - 10 s .. TRUE_MS, and nothing in 1970.
        assert_eq!(c.summaries(), [(TRUE_MS - 10_000, 2)]);
        assert!(c.clock.poll_at().is_none(), "no polling once trusted");
    }

    #[test]
    fn without_require_sync_a_clock_past_the_build_date_is_used_at_once() {
        let mut c = Core::new(false, TRUE_MS, 0, false);
        c.arrive(1.0);
        assert_eq!(c.metrics.readings_accepted.get(), 1);
        assert_eq!(c.metrics.clock_trusted.get(), 1);
        assert_eq!(c.metrics.clock_synchronized.get(), 0);
        // The same clock with require_sync: the reading waits.
        let mut c = Core::new(true, TRUE_MS, 0, false);
        c.arrive(1.0);
        assert_eq!(c.metrics.readings_accepted.get(), 0);
        assert_eq!(c.metrics.clock_waiting_inputs.get(), 1);
        // And a clock at 1970 waits without require_sync too.
        let mut c = Core::new(false, 5_000, 5_000, false);
        c.arrive(1.0);
        assert_eq!(c.metrics.readings_accepted.get(), 0);
    }

    #[test]
    fn a_forward_jump_is_neither_silence_nor_a_summary_in_the_future() {
        let mut c = Core::new(false, TRUE_MS, 0, true);
        c.arrive(1.0);
        c.pass(1_000);
        // The clock steps an hour ahead (the saved time was an hour late).
        c.set_wall(TRUE_MS + 3_600_000 + 1_000, true);
        c.wake();
        assert_eq!(c.metrics.clock_jumps_forward.get(), 1);
        // One second of real silence: no stale alarm (30 s), the window is
        // not closed for silence and the sensor is not retired.
        assert_eq!(c.metrics.alarms_raised.get(), 0);
        assert_eq!(c.metrics.summaries_produced.get(), 0);
        assert_eq!(c.metrics.sensors_retired.get(), 0);
        c.arrive(2.0);
        c.pass(31_000);
        c.wake();
        assert_eq!(
            c.metrics.alarms_raised.get(),
            1,
            "real silence still counts"
        );
        let windows = c.summaries();
        assert_eq!(windows.len(), 2);
        assert!(windows
            .iter()
            .all(|&(start, _)| start <= TRUE_MS + 3_700_000));
    }

    #[test]
    fn a_backward_jump_does_not_make_live_readings_late() {
        let mut c = Core::new(false, TRUE_MS, 0, true);
        for _ in 0..25 {
            c.arrive(1.0);
            c.pass(1_000);
            c.wake();
        }
        assert_eq!(c.metrics.summaries_produced.get(), 2);
        // The clock steps an hour back (it was an hour ahead).
        let back = TRUE_MS + 25_000 - 3_600_000;
        c.set_wall(back, true);
        c.wake();
        assert_eq!(c.metrics.clock_jumps_backward.get(), 1);
        for _ in 0..5 {
            c.arrive(1.0);
            c.pass(1_000);
            c.wake();
        }
        assert_eq!(c.metrics.rejected(Reject::Late), 0);
        assert_eq!(c.metrics.readings_accepted.get(), 30);
        assert_eq!(c.metrics.alarms_raised.get(), 0, "no stale alarm either");
        let windows = c.summaries();
        let total: u64 = windows.iter().map(|w| w.1).sum();
        assert_eq!(total, 30, "every reading is in a summary: {windows:?}");
        assert!(windows.iter().any(|&(start, _)| start <= back));
    }
}
