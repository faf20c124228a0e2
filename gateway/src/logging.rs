//! How the daemon's log lines look: plain text on a terminal or in a file,
//! journald's conventions under systemd, JSON lines for other collectors.
//!
//! Under systemd the journal stamps every line itself and reads a syslog
//! priority from a `<N>` prefix (sd-daemon(3)), so the journald format
//! writes no timestamp and starts each line with the priority of its level:
//! `journalctl -p warning` then shows warnings and errors only.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log format asked for on the command line (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journald` when standard error is connected to the journal, else
    /// `text`.
    Auto,
    /// Timestamped text lines (coloured on a terminal).
    Text,
    /// No timestamps; each line starts with its syslog priority (`<3>`
    /// error, `<4>` warning, `<6>` info, `<7>` debug).
    Journald,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

impl LogFormat {
    /// Resolves `Auto`. systemd sets `JOURNAL_STREAM` to `<device>:<inode>`
    /// of the stream it connected to the journal; standard error goes to
    /// the journal only if it is that very stream (a redirected stderr of a
    /// child of the service is not).
    pub fn resolve(self, journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> LogFormat {
        if self != LogFormat::Auto {
            return self;
        }
        let connected = journal_stream
            .and_then(|v| v.split_once(':'))
            .and_then(|(dev, ino)| Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?)))
            .is_some_and(|ids: (u64, u64)| Some(ids) == stderr);
        if connected {
            LogFormat::Journald
        } else {
            LogFormat::Text
        }
    }
}

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes the `<N>` priority prefix, then the event as `inner` formats it.
pub struct Journald<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_journald_only_when_stderr_is_the_journal_stream() {
        let auto = LogFormat::Auto;
        assert_eq!(
            auto.resolve(Some("8:12345"), Some((8, 12345))),
            LogFormat::Journald
        );
        assert_eq!(
            auto.resolve(Some("8:12345"), Some((8, 99))),
            LogFormat::Text,
            "stderr redirected elsewhere"
        );
        assert_eq!(
            auto.resolve(None, Some((8, 12345))),
            LogFormat::Text,
            "not under systemd"
        );
        assert_eq!(
            auto.resolve(Some("garbage"), Some((8, 12345))),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::Json.resolve(Some("8:12345"), Some((8, 12345))),
            LogFormat::Json,
            "an explicit format wins"
        );
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
