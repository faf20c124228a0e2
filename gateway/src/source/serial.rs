//! The serial source: one task per port.
//!
//! The task opens the device (following a `/dev/serial/by-id/...` link anew
//! at every open), reads whatever bytes arrive, feeds them to the port's pure
//! [`PortDecoder`] and sends the decoded readings to the core. When the
//! device disappears (an unplugged USB adapter gives EIO or end of file) the
//! partial frame is counted as torn and the task reopens the device with
//! capped backoff as soon as it reappears, without a restart. A busy port
//! and a permission problem are logged with the fix.
//!
//! Backpressure: when the core's channel is full the task waits, the kernel's
//! receive buffer fills and the UART then drops bytes (or, with
//! `flow_control = "hardware"`, deasserts RTS and the sender pauses). Bytes
//! lost that way show up as sequence gaps, counted per node.

use std::sync::atomic::Ordering;
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

/// Runs one serial port until `cancel` fires.
pub async fn run(
    cfg: SerialSourceConfig,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let port_metrics = metrics.serial_port(&cfg.name);
    let mut decoder = PortDecoder::new(cfg.port.clone());
    let mut backoff = Backoff::new(Duration::from_millis(100), cfg.reopen_backoff_max);
    let mut last_error: Option<String> = None;
    let mut drops_logged = DropLog::default();
    let mut buf = vec![0u8; READ_CHUNK];
    tracing::info!(port = %cfg.name, device = %cfg.device.display(), baud = cfg.baud, format = cfg.port.format.name(), "Starting serial source.");
    'outer: loop {
        match open(&cfg) {
            Ok(mut port) => {
                backoff.reset();
                last_error = None;
                port_metrics.opens.fetch_add(1, Ordering::Relaxed);
                port_metrics.connected.store(1, Ordering::Relaxed);
                tracing::info!(port = %cfg.name, device = %cfg.device.display(), "Serial port open.");
                loop {
                    let read = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break 'outer,
                        r = port.read(&mut buf) => r,
                    };
                    let n = match read {
                        Ok(0) => {
                            tracing::warn!(port = %cfg.name, device = %cfg.device.display(), "Serial port closed (end of file); reopening when it reappears.");
                            break;
                        }
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(port = %cfg.name, device = %cfg.device.display(), error = %e, "Serial port lost (unplugged?); reopening when it reappears.");
                            break;
                        }
                    };
                    let now = crate::now_ms();
                    let mut out = Vec::new();
                    decoder.push(&mut buf[..n], now, &mut out);
                    port_metrics.update(&decoder);
                    drops_logged.log(&cfg.name, &mut decoder, now);
                    if !out.is_empty() && tx.send(Input::Serial(out)).await.is_err() {
                        break 'outer;
                    }
                }
                decoder.disconnected();
                port_metrics.update(&decoder);
                port_metrics.connected.store(0, Ordering::Relaxed);
                port_metrics.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                port_metrics.open_failures.fetch_add(1, Ordering::Relaxed);
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
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    port_metrics.connected.store(0, Ordering::Relaxed);
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
