//! What the service manager is told: `READY=1` once the pipeline runs,
//! `STATUS=` lines an operator reads in `systemctl status`, `STOPPING=1` at
//! shutdown, and `WATCHDOG=1` only while the core and the sink answer.
//!
//! Liveness is asked, not assumed: every watchdog period the supervisor
//! asks each task's [`Probe`]; a task answers on the next turn of its loop
//! (an idle task is woken by the question, so idling costs one wake-up per
//! question and is not mistaken for a hang). A task stuck in a loop, or
//! awaiting something that never comes, does not answer, the pings stop and
//! systemd restarts the gateway. The one wait that is not a hang is the
//! core held back by a full sink (`buffer.when_full = "block"` during an
//! outage): while the sink answers and the record channel is full, the core
//! counts as live.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every notification is a
//! no-op, and without `WATCHDOG_USEC` nothing is asked.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reject::Throttle;

/// How often `STATUS=` is refreshed when no watchdog asks more often.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// At most one line about a task that does not answer per this interval.
const SILENT_LOG_INTERVAL_MS: i64 = 60_000;

/// A question a task answers on every turn of its loop.
#[derive(Debug, Default)]
pub struct Probe {
    asked: AtomicU32,
    answered: AtomicU32,
    wake: Notify,
}

impl Probe {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called by the task on every turn of its loop: the latest question
    /// is answered.
    pub fn answer(&self) {
        self.answered
            .store(self.asked.load(Ordering::Acquire), Ordering::Release);
    }

    /// Completes when a question is asked; a task selects on it so that an
    /// idle loop turns (and answers).
    pub async fn asked(&self) {
        self.wake.notified().await;
    }

    /// Asks; returns the question's number.
    fn ask(&self) -> u32 {
        let n = self.asked.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.wake.notify_one();
        n
    }

    /// Whether question `n` (or a later one) was answered.
    fn answered(&self, n: u32) -> bool {
        // Wrapping distance: answers never run ahead of questions.
        self.answered.load(Ordering::Acquire).wrapping_sub(n) < u32::MAX / 2
    }
}

/// The probes of the tasks whose progress the watchdog vouches for.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub core: Arc<Probe>,
    pub sink: Arc<Probe>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            core: Probe::new(),
            sink: Probe::new(),
        }
    }
}

/// Which tasks did not answer the last question; empty when all did.
fn silent(live: &Liveness, asked: (u32, u32), core_held_by_sink: bool) -> Vec<&'static str> {
    let sink_ok = live.sink.answered(asked.1);
    let core_ok = live.core.answered(asked.0) || (sink_ok && core_held_by_sink);
    let mut out = Vec::new();
    if !core_ok {
        out.push("core");
    }
    if !sink_ok {
        out.push("sink");
    }
    out
}

/// Sends `states` to the service manager; a failure is logged, never fatal
/// (the gateway's job does not depend on systemd hearing it).
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "Cannot notify the service manager.");
    }
}

/// Tells the service manager the gateway is up, then keeps `STATUS=` fresh
/// and feeds the watchdog (when systemd set one) while every task answers,
/// until `stop`. `core_held_by_sink` says whether the core waits for room
/// in the sink's channel.
pub async fn supervise(
    live: Liveness,
    metrics: Arc<Metrics>,
    core_held_by_sink: impl Fn() -> bool,
    stop: CancellationToken,
) {
    let watchdog = sd_notify::watchdog_enabled();
    // Three questions per period: one unanswered question still leaves a
    // ping inside the period, two do not.
    let every = watchdog.map_or(STATUS_EVERY, |p| {
        (p / 3).clamp(Duration::from_millis(100), STATUS_EVERY)
    });
    let mut status = status_line(&metrics, crate::now_ms());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(p) = watchdog {
        tracing::info!(period = ?p, "systemd watchdog enabled; pinged while the core and the sink answer.");
    }
    let mut asked = (live.core.ask(), live.sink.ask());
    let mut log = Throttle::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let next = status_line(&metrics, crate::now_ms());
        if watchdog.is_some() {
            let quiet = silent(&live, asked, core_held_by_sink());
            if quiet.is_empty() {
                notify(&[NotifyState::Watchdog]);
            } else if let Some(suppressed) = log.allow(SILENT_LOG_INTERVAL_MS, crate::now_ms()) {
                tracing::error!(tasks = ?quiet, suppressed_since_last = suppressed, "A pipeline task has not answered for a watchdog interval; no longer pinging the systemd watchdog, which will restart the gateway.");
            }
            asked = (live.core.ask(), live.sink.ask());
        }
        if next != status {
            status = next;
            notify(&[NotifyState::Status(&status)]);
        }
    }
}

/// Tells the service manager that the gateway is stopping. It keeps
/// pinging the watchdog while it stops (tasks stop answering as they end;
/// `TimeoutStopSec=` bounds the stop), until `done`.
pub async fn stopping(metrics: Arc<Metrics>, done: CancellationToken) {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status(&format!(
            "stopping: flushing windows, {}",
            backlog_text(&metrics)
        )),
    ]);
    let Some(p) = sd_notify::watchdog_enabled() else {
        return;
    };
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tokio::time::sleep(p / 3) => notify(&[NotifyState::Watchdog]),
        }
    }
}

/// A reload starts: `RELOADING=1` (with the monotonic time systemd asks
/// for since `Type=notify-reload`).
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    notify(&states);
}

/// A reload ended (applied, or refused and nothing changed): `READY=1`
/// and a status that says which.
pub fn reloaded(applied: bool, metrics: &Metrics) {
    let what = if applied {
        "configuration reloaded"
    } else {
        "reload refused (mistakes logged), running configuration unchanged"
    };
    let status = format!("{what}; {}", status_line(metrics, crate::now_ms()));
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The `STATUS=` text: upstream state, backlog, oldest record.
pub fn status_line(metrics: &Metrics, now_ms: i64) -> String {
    let upstream = if metrics.upstream_connected.get() == 1 {
        "upstream connected"
    } else {
        "upstream DOWN (buffering)"
    };
    let age = metrics
        .oldest_backlog_age_s(now_ms)
        .map_or(String::new(), |s| format!(", oldest {}", human_secs(s)));
    // Time left matters while upstream is down: how long the buffer holds
    // at the current input rate.
    let left = metrics.outage_seconds_left.get();
    let left = if metrics.upstream_connected.get() != 1 && left >= 0 {
        format!("; buffer full in {} at this rate", human_secs(left))
    } else {
        String::new()
    };
    let states = metrics.source_states();
    let up = states.iter().filter(|s| s.connected).count();
    let sources = match states.iter().find(|s| !s.connected) {
        Some(down) if up + 1 == states.len() => {
            format!("source {} DOWN", down.name)
        }
        _ => format!("sources {up}/{} up", states.len()),
    };
    format!(
        "{upstream}; {sources}; {}{age}{left}",
        backlog_text(metrics)
    )
}

fn backlog_text(metrics: &Metrics) -> String {
    format!(
        "backlog {} records ({} KiB)",
        metrics.upstream_queue_records.get().max(0),
        metrics.upstream_queue_bytes.get().max(0) / 1024
    )
}

/// `90` -> `1m30s`, `7200` -> `2h0m`, `200000` -> `2d7h`.
fn human_secs(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A drop-in for the unit that allows exactly the addresses `config`'s
/// brokers need (`IPAddressAllow=` takes addresses, not names: a host name
/// is resolved with `resolve` now, and the drop-in says so).
pub fn ip_allow_dropin(
    config: &crate::config::Config,
    config_path: &std::path::Path,
    resolve: impl Fn(&str, u16) -> std::io::Result<Vec<std::net::IpAddr>>,
) -> String {
    use std::fmt::Write;
    let mut brokers: Vec<(&str, &crate::config::BrokerAddr)> = config
        .sources
        .iter()
        .filter_map(|s| match s {
            crate::config::SourceConfig::Mqtt(m) => Some((m.name.as_str(), &m.broker)),
            crate::config::SourceConfig::Serial(_) => None,
        })
        .collect();
    brokers.extend(config.upstream.brokers.iter().map(|b| ("upstream", b)));
    let mut out = format!(
        "# The addresses the brokers of {} need, for the unit's IPAddressAllow=.\n\
         # Install: systemctl edit sensor-gateway (paste this), or save it as\n\
         # /etc/systemd/system/sensor-gateway.service.d/ip-allow.conf and run systemctl daemon-reload.\n\
         [Service]\n",
        config_path.display()
    );
    for (what, b) in brokers {
        if let Ok(ip) = b.host.parse::<std::net::IpAddr>() {
            let _ = writeln!(out, "# {what}: {b}\nIPAddressAllow={ip}");
            continue;
        }
        match resolve(&b.host, b.port) {
            Ok(ips) if !ips.is_empty() => {
                let list: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
                let _ = writeln!(
                    out,
                    "# {what}: {b}, resolved now: generate again when its addresses change\nIPAddressAllow={}",
                    list.join(" ")
                );
            }
            Ok(_) => {
                let _ = writeln!(
                    out,
                    "# {what}: {b} resolved to no address: allow its addresses by hand"
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "# {what}: {b} cannot be resolved here ({e}): allow its addresses by hand"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip_allow_dropin_lists_every_broker_and_says_what_was_resolved() {
        let text = r#"
[gateway]
id = "gw"
state_dir = "/tmp/gw"
[[source]]
kind = "mqtt"
name = "plant"
broker = "10.1.2.3:1883"
topic_template = "p/{sensor}"
[upstream]
broker = "broker.example.net:8883"
"#;
        let path = std::path::Path::new("/etc/sensor-gateway/gateway.toml");
        let config = crate::config::Config::parse(text, path).unwrap();
        let dropin = ip_allow_dropin(&config, path, |host, port| {
            assert_eq!((host, port), ("broker.example.net", 8883));
            Ok(vec![
                "203.0.113.10".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ])
        });
        assert!(dropin.contains("[Service]\n"), "{dropin}");
        assert!(
            dropin.contains("# plant: 10.1.2.3:1883\nIPAddressAllow=10.1.2.3\n"),
            "{dropin}"
        );
        assert!(dropin.contains("resolved now"), "{dropin}");
        assert!(
            dropin.contains("IPAddressAllow=203.0.113.10 2001:db8::1\n"),
            "{dropin}"
        );
        let unresolved =
            ip_allow_dropin(&config, path, |_, _| Err(std::io::Error::other("no DNS")));
        assert!(
            unresolved.contains("cannot be resolved here (no DNS)"),
            "{unresolved}"
        );
        let allows = unresolved
            .lines()
            .filter(|l| l.starts_with("IPAddressAllow="))
            .count();
        assert_eq!(allows, 1, "{unresolved}");
    }

    #[test]
    fn a_task_that_does_not_answer_withholds_the_watchdog_ping() {
        let live = Liveness::default();
        let asked = (live.core.ask(), live.sink.ask());
        live.sink.answer();
        assert_eq!(silent(&live, asked, false), vec!["core"]);
        live.core.answer();
        assert!(silent(&live, asked, false).is_empty());
        // The next question is not answered by the old answer.
        let asked = (live.core.ask(), live.sink.ask());
        live.core.answer();
        assert_eq!(silent(&live, asked, false), vec!["sink"]);
    }

    #[test]
    fn a_core_held_back_by_a_full_sink_is_live_only_while_the_sink_answers() {
        let live = Liveness::default();
        let asked = (live.core.ask(), live.sink.ask());
        live.sink.answer();
        assert!(silent(&live, asked, true).is_empty());
        let asked = (live.core.ask(), live.sink.ask());
        assert_eq!(silent(&live, asked, true), vec!["core", "sink"]);
    }

    #[test]
    fn answers_are_matched_across_the_counter_wrapping() {
        let p = Probe::default();
        p.asked.store(u32::MAX, Ordering::Relaxed);
        p.answer();
        let n = p.ask();
        assert_eq!(n, 0);
        assert!(!p.answered(n));
        p.answer();
        assert!(p.answered(n));
    }

    #[tokio::test]
    async fn a_question_wakes_an_idle_task() {
        let p = Probe::new();
        let task = {
            let p = p.clone();
            tokio::spawn(async move {
                loop {
                    p.answer();
                    p.asked().await;
                }
            })
        };
        let n = p.ask();
        for _ in 0..1000 {
            if p.answered(n) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(p.answered(n));
        task.abort();
    }

    #[test]
    fn status_says_upstream_state_and_backlog() {
        let m = Metrics::new();
        m.upstream_queue_records.set(1234);
        m.upstream_queue_bytes.set(2 * 1024 * 1024);
        m.buffer_oldest_ts_ms.set(1_000);
        m.outage_seconds_left.set(-1);
        assert_eq!(
            status_line(&m, 1_000 + 5_400_000),
            "upstream DOWN (buffering); sources 0/0 up; backlog 1234 records (2048 KiB), oldest 1h30m"
        );
        m.outage_seconds_left.set(3 * 86_400 + 7_200);
        assert_eq!(
            status_line(&m, 1_000 + 5_400_000),
            "upstream DOWN (buffering); sources 0/0 up; backlog 1234 records (2048 KiB), oldest 1h30m; buffer full in 3d2h at this rate"
        );
        m.upstream_connected.set(1);
        m.upstream_queue_records.set(0);
        m.upstream_queue_bytes.set(0);
        m.mqtt_source("plant").set(1);
        let _ = m.serial_port("rs485");
        assert_eq!(
            status_line(&m, 0),
            "upstream connected; source rs485 DOWN; backlog 0 records (0 KiB)"
        );
        m.serial_port("rs485").connected.set(1);
        assert_eq!(
            status_line(&m, 0),
            "upstream connected; sources 2/2 up; backlog 0 records (0 KiB)"
        );
    }
}
