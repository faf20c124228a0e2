//! The serial source: one task per port.
//!
//! The task opens the device (following a `/dev/serial/by-id/...` link anew
//! at every open), reads whatever bytes arrive, feeds them to the port's pure
//! [`PortDecoder`] and sends the decoded readings to the core. When the
//! device disappears (an unplugged USB adapter gives EIO or end of file) the
//! partial frame is counted as torn and the task reopens the device with
//! capped backoff as soon as it reappears, without a restart. A busy port
//! and a permission problem are logged with the fix. A half-dead adapter
//! (the open succeeds, the first read fails) is retried with growing
//! backoff, which restarts from its first step only once a port stayed
//! readable for [`HEALTHY_AFTER_MS`] or delivered data; while a port flaps
//! like that its losses are logged once per [`FLAP_LOG_INTERVAL_MS`].
//!
//! Backpressure: when the core's channel is full the task waits, the kernel's
//! receive buffer fills and the UART then drops bytes (or, with
//! `flow_control = "hardware"`, deasserts RTS and the sender pauses). Bytes
//! lost that way show up as sequence gaps, counted per node.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{FlowControl, Parity, SerialSourceConfig};
use crate::metrics::Metrics;
use crate::processor::Input;
use crate::wire::PortDecoder;

/// Bytes read per system call at most.
const READ_CHUNK: usize = 4096;
/// At most one log line per this interval for dropped frames of a port.
const DROP_LOG_INTERVAL_MS: i64 = 10_000;
/// A port that stayed readable this long (or delivered data) was healthy:
/// the reopen backoff restarts from its first step (the same rule as every
/// reconnect loop's).
const HEALTHY_AFTER_MS: i64 = crate::backoff::STABLE_AFTER.as_millis() as i64;
/// While a port fails right after every open, at most one log line per
/// this interval.
const FLAP_LOG_INTERVAL_MS: i64 = 60_000;
/// The first reopen delay.
const REOPEN_INITIAL: Duration = Duration::from_millis(100);

/// Runs one serial port until `cancel` fires.
pub async fn run(
    cfg: SerialSourceConfig,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let port_metrics = metrics.serial_port(&cfg.name);
    let mut decoder = PortDecoder::new(cfg.port.clone());
    let mut reopen = Reopen::new(Backoff::new(REOPEN_INITIAL, cfg.reopen_backoff_max));
    let mut last_error: Option<String> = None;
    let mut drops_logged = DropLog::default();
    let mut buf = vec![0u8; READ_CHUNK];
    tracing::info!(port = %cfg.name, device = %cfg.device.display(), baud = cfg.baud, format = cfg.port.format.name(), "Starting serial source.");
    'outer: loop {
        match open(&cfg) {
            Ok(mut port) => {
                last_error = None;
                port_metrics.opens.inc();
                port_metrics.connected.set(1);
                if reopen.opened(crate::now_ms()) {
                    tracing::info!(port = %cfg.name, device = %cfg.device.display(), "Serial port open.");
                }
                // Why the open port ended: what the loss log line says.
                let error: String = loop {
                    let read = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break 'outer,
                        r = port.read(&mut buf) => r,
                    };
                    let n = match read {
                        Ok(0) => break "end of file".into(),
                        Ok(n) => n,
                        Err(e) => break e.to_string(),
                    };
                    reopen.data();
                    let now = crate::now_ms();
                    let mut out = Vec::new();
                    decoder.push(&mut buf[..n], now, &mut out);
                    port_metrics.update(&decoder);
                    drops_logged.log(&cfg.name, &mut decoder, now);
                    if !out.is_empty() && tx.send(Input::Serial(out)).await.is_err() {
                        break 'outer;
                    }
                };
                decoder.disconnected();
                port_metrics.update(&decoder);
                port_metrics.connected.set(0);
                port_metrics.disconnects.inc();
                let (delay, log) = reopen.closed(crate::now_ms());
                match log {
                    Some(Loss::Healthy) => {
                        tracing::warn!(port = %cfg.name, device = %cfg.device.display(), error = %error, "Serial port lost (unplugged?); reopening when it reappears.");
                    }
                    Some(Loss::Flapping { suppressed }) => {
                        tracing::warn!(port = %cfg.name, device = %cfg.device.display(), error = %error, similar_suppressed = suppressed, retry_in = ?delay, "Serial port fails right after opening (a half-dead adapter or cable?); retrying with growing delays. Replug or replace the adapter if this persists.");
                    }
                    None => {}
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            Err(e) => {
                port_metrics.open_failures.inc();
                let (message, hint) = explain(&cfg, &e);
                if last_error.as_deref() != Some(message.as_str()) {
                    if hint.is_some() {
                        tracing::error!(port = %cfg.name, device = %cfg.device.display(), error = %message, fix = hint.unwrap_or(""), "Cannot open the serial port; retrying.");
                    } else {
                        tracing::warn!(port = %cfg.name, device = %cfg.device.display(), error = %message, "Serial port not available; waiting for it.");
                    }
                    last_error = Some(message);
                }
            }
        }
        let delay = reopen.open_failed();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    port_metrics.connected.set(0);
    port_metrics.update(&decoder);
    tracing::info!(port = %cfg.name, "Serial source stopped.");
}

fn open(cfg: &SerialSourceConfig) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    let path = cfg.device.to_string_lossy();
    tokio_serial::new(path, cfg.baud)
        .data_bits(match cfg.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match cfg.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(match cfg.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        })
        .flow_control(match cfg.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
}

/// An operator-facing reading of an open failure: the message, and a fix
/// when the failure is not just "the device is not plugged in".
fn explain(cfg: &SerialSourceConfig, e: &tokio_serial::Error) -> (String, Option<&'static str>) {
    use tokio_serial::ErrorKind;
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let io = match e.kind() {
        ErrorKind::Io(k) => Some(k),
        _ => None,
    };
    if io == Some(std::io::ErrorKind::PermissionDenied) || lower.contains("permission denied") {
        (
            format!("permission denied opening {}", cfg.device.display()),
            Some("the gateway's user may not use serial ports: add it to the `dialout` group (`usermod -aG dialout sensor-gateway`), or keep `SupplementaryGroups=dialout` in its systemd unit"),
        )
    } else if lower.contains("busy") || lower.contains("lock") {
        (
            format!("{} is in use by another program", cfg.device.display()),
            Some("find it with `fuser -v <device>` (often a getty, ModemManager or a second gateway) and stop it"),
        )
    } else if io == Some(std::io::ErrorKind::NotFound)
        || matches!(e.kind(), ErrorKind::NoDevice)
        || lower.contains("no such file")
    {
        (
            format!("{} does not exist (unplugged?)", cfg.device.display()),
            None,
        )
    } else {
        (
            text,
            Some("check `device` and the line settings of this `[[source]]`"),
        )
    }
}

/// The reopen policy of one port: pure, time passed in.
#[derive(Debug)]
struct Reopen {
    backoff: Backoff,
    /// When the current session opened; `None` while closed.
    opened_ms: Option<i64>,
    got_data: bool,
    /// Sessions in a row that ended before they were healthy.
    flaps: u64,
    last_flap_log_ms: Option<i64>,
    suppressed: u64,
}

/// Whether and how to report the loss of an open port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// It had been healthy: an unplug, say.
    Healthy,
    /// It failed right after opening, again; `suppressed` such losses were
    /// not logged since the last line.
    Flapping { suppressed: u64 },
}

impl Reopen {
    fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            opened_ms: None,
            got_data: false,
            flaps: 0,
            last_flap_log_ms: None,
            suppressed: 0,
        }
    }

    /// The port opened; whether to log it (not while it flaps).
    fn opened(&mut self, now_ms: i64) -> bool {
        self.opened_ms = Some(now_ms);
        self.got_data = false;
        self.flaps == 0
    }

    /// Bytes arrived: the port works.
    fn data(&mut self) {
        self.got_data = true;
    }

    /// The open port failed or closed: the delay before the next open, and
    /// what to log. The backoff restarts only if the session was healthy.
    fn closed(&mut self, now_ms: i64) -> (Duration, Option<Loss>) {
        let healthy = self.got_data
            || self
                .opened_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= HEALTHY_AFTER_MS);
        self.opened_ms = None;
        let log = if healthy {
            self.backoff.reset();
            self.flaps = 0;
            self.suppressed = 0;
            self.last_flap_log_ms = None;
            Some(Loss::Healthy)
        } else {
            self.flaps += 1;
            let due = self
                .last_flap_log_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= FLAP_LOG_INTERVAL_MS);
            if due {
                self.last_flap_log_ms = Some(now_ms);
                Some(Loss::Flapping {
                    suppressed: std::mem::take(&mut self.suppressed),
                })
            } else {
                self.suppressed += 1;
                None
            }
        };
        (self.backoff.next_delay(), log)
    }

    /// The open failed: the delay before the next attempt.
    fn open_failed(&mut self) -> Duration {
        self.backoff.next_delay()
    }
}

/// Logs dropped frames of a port at most once per interval, with how many
/// were dropped since the last line and an example.
#[derive(Default)]
struct DropLog {
    logged_total: u64,
    last_log_ms: Option<i64>,
}

impl DropLog {
    fn log(&mut self, port: &str, decoder: &mut PortDecoder, now_ms: i64) {
        let total = decoder.counters().dropped_total();
        if total == self.logged_total {
            return;
        }
        if self
            .last_log_ms
            .is_some_and(|t| now_ms - t < DROP_LOG_INTERVAL_MS)
        {
            return;
        }
        if let Some((reason, detail)) = decoder.take_last_drop() {
            tracing::warn!(
                port,
                dropped = total - self.logged_total,
                dropped_total = total,
                last_reason = reason.name(),
                last = ?detail,
                "Dropped damaged or invalid serial frames (counted in gateway_serial_dropped_total)."
            );
        }
        self.logged_total = total;
        self.last_log_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config() -> SerialSourceConfig {
        let text = "[gateway]\nid = \"g\"\n[[source]]\nkind = \"serial\"\ndevice = \"/dev/ttyUSB0\"\nformat = \"line\"\n[upstream]\nbroker = \"localhost:1883\"\n";
        match Config::parse(text, std::path::Path::new("t.toml")) {
            Ok(c) => match c.sources.into_iter().next() {
                Some(crate::config::SourceConfig::Serial(s)) => s,
                _ => panic!("a serial source"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_port_that_fails_right_after_open_is_retried_with_growing_delays() {
        let max = Duration::from_secs(30);
        let mut r = Reopen::new(Backoff::new(REOPEN_INITIAL, max));
        let mut now = 1_000_000i64;
        let mut delays = Vec::new();
        let mut logged = Vec::new();
        for _ in 0..12 {
            assert_eq!(
                r.opened(now),
                delays.is_empty(),
                "only the first open is logged"
            );
            now += 1;
            let (delay, log) = r.closed(now);
            delays.push(delay);
            logged.extend(log);
            now += delay.as_millis() as i64;
        }
        // 100 ms, 200 ms, 400 ms, ... up to the cap, never back to 100 ms.
        assert!(delays[0] <= Duration::from_millis(120));
        for w in delays.windows(2) {
            assert!(w[1] >= w[0] || w[1] == max, "{delays:?}");
        }
        assert_eq!(*delays.last().unwrap(), max);
        // Logged: the first loss, then once a minute with the count between.
        assert_eq!(logged[0], Loss::Flapping { suppressed: 0 });
        assert!(logged.len() < 6, "{logged:?}");
        assert!(matches!(logged[1], Loss::Flapping { suppressed } if suppressed > 0));
        // A session that delivered data was healthy: back to the first step.
        r.opened(now);
        r.data();
        let (delay, log) = r.closed(now + 1);
        assert!(delay <= Duration::from_millis(120), "{delay:?}");
        assert_eq!(log, Some(Loss::Healthy));
        // So was one that stayed readable for 10 s, even without data.
        for _ in 0..3 {
            r.opened(now);
            r.closed(now + 1);
        }
        assert!(!r.opened(now), "flapping opens are not logged");
        let (delay, log) = r.closed(now + HEALTHY_AFTER_MS);
        assert!(delay <= Duration::from_millis(120), "{delay:?}");
        assert_eq!(log, Some(Loss::Healthy));
        assert!(r.opened(now), "a healthy port's next open is logged");
    }

    #[test]
    fn open_failures_name_the_cause_and_the_fix() {
        use tokio_serial::{Error, ErrorKind};
        let cfg = config();
        let denied = Error::new(
            ErrorKind::Io(std::io::ErrorKind::PermissionDenied),
            "Permission denied",
        );
        let (msg, fix) = explain(&cfg, &denied);
        assert!(msg.contains("permission denied"), "{msg}");
        assert!(fix.is_some_and(|f| f.contains("dialout")));
        let locked = Error::new(
            ErrorKind::NoDevice,
            "Unable to acquire exclusive lock on serial port",
        );
        let (msg, fix) = explain(&cfg, &locked);
        assert!(msg.contains("in use by another program"), "{msg}");
        assert!(fix.is_some_and(|f| f.contains("fuser")));
        let gone = Error::new(
            ErrorKind::Io(std::io::ErrorKind::NotFound),
            "No such file or directory",
        );
        let (msg, fix) = explain(&cfg, &gone);
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(
            fix.is_none(),
            "an unplugged device is waited for, not an error"
        );
    }
}
