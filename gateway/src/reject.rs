//! Why a reading or a command is refused, and how often the gateway says so.
//!
//! [`Reject`] names every reason a message or reading does not enter a
//! window, [`CommandReject`] every reason a command from the command topic is
//! not obeyed, [`Refusal`] every reason the upstream broker gives for not
//! taking a record. The processor decides them, the sources (the guard's
//! oversize messages) and the upstream link report them, and
//! [`crate::metrics`] counts them by name. A reason an outsider can trigger
//! is logged at most once per interval: [`Throttle`] is the rate limit of one
//! kind of log line (time is passed in), [`LogLimiter`] holds one per
//! reason. [`Reason`] is what both reason sets share: their names and order.

use std::marker::PhantomData;

/// Declares an enum of reasons, each variant with the name it is logged and
/// counted under, its `ALL` (in declaration order) and its [`Reason`] impl.
macro_rules! reasons {
    (
        $(#[$attr:meta])*
        pub enum $enum:ident {
            $( $(#[$vattr:meta])* $variant:ident = $name:literal, )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $enum {
            $( $(#[$vattr])* $variant, )*
        }

        impl $enum {
            pub const ALL: [$enum; [$($name),*].len()] = [$($enum::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $( $enum::$variant => $name, )*
                }
            }
        }

        impl Reason for $enum {
            const ALL: &'static [Self] = &$enum::ALL;

            fn name(self) -> &'static str {
                $enum::name(self)
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

reasons! {
    /// Why a message or reading did not enter a window.
    pub enum Reject {
        /// The payload exceeds `max_payload_bytes`.
        Oversize = "oversize",
        /// The topic does not fit the source's template.
        UnknownTopic = "unknown_topic",
        /// The sensor limit (`max_sensors`) is reached.
        SensorLimit = "sensor_limit",
        NotUtf8 = "not_utf8",
        NotANumber = "not_a_number",
        JsonSyntax = "json_syntax",
        MissingValue = "missing_value",
        ValueNotNumber = "value_not_number",
        BadTimestamp = "bad_timestamp",
        BadSequence = "bad_sequence",
        /// NaN or infinite.
        NonFinite = "non_finite",
        /// Outside the sensor rule's `[min, max]`.
        OutOfRange = "out_of_range",
        /// Its window was already emitted.
        Late = "late",
        /// Its event time is further ahead of the gateway clock than
        /// `pipeline.max_future_skew` (a node or sender with a wrong clock).
        Future = "future",
        /// Its event time is older than `pipeline.max_event_age`.
        TooOld = "too_old",
        /// A name taken from the wire (an MQTT topic level, a serial node or
        /// channel) is not usable as a sensor id or topic level.
        BadName = "bad_name",
    }
}

reasons! {
    /// Why a command from the command topic was not obeyed.
    pub enum CommandReject {
        /// A retained message: the broker replays it on every subscription.
        Retained = "retained",
        /// Larger than a command can be.
        Oversize = "oversize",
        /// Not JSON, or not a command object.
        Malformed = "malformed",
        /// A `command` other than `ack`.
        UnknownCommand = "unknown_command",
        /// An `ack` without the `occurrence` it acknowledges.
        MissingOccurrence = "missing_occurrence",
        /// The alarm id names no sensor with that alarm.
        UnknownAlarm = "unknown_alarm",
        /// The occurrence is not the alarm's current one.
        StaleOccurrence = "stale_occurrence",
        /// The alarm is not active, or already acknowledged.
        NotActive = "not_active",
        /// Too many commands at once; dropped.
        Overloaded = "overloaded",
    }
}

reasons! {
    /// Why the upstream broker refused a publish (an MQTT 5 PUBACK reason
    /// code of 0x80 or above). The record is not delivered: it stays in the
    /// buffer and is sent again.
    pub enum Refusal {
        NotAuthorized = "not_authorized",
        QuotaExceeded = "quota_exceeded",
        TopicNameInvalid = "topic_name_invalid",
        PayloadFormatInvalid = "payload_format_invalid",
        PacketIdInUse = "packet_id_in_use",
        Unspecified = "unspecified_error",
        ImplementationSpecific = "implementation_specific_error",
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

/// Keeps a noisy event from flooding the log: one [`Throttle`] per
/// reason.
#[derive(Debug)]
pub struct LogLimiter<R: Reason = Reject> {
    interval_ms: i64,
    per_reason: Vec<Throttle>,
    reason: PhantomData<R>,
}

/// [`LogLimiter`] for rejected commands.
pub type CommandLogLimiter = LogLimiter<CommandReject>;

impl<R: Reason> LogLimiter<R> {
    pub fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms,
            per_reason: vec![Throttle::default(); R::ALL.len()],
            reason: PhantomData,
        }
    }

    /// `Some(suppressed_since_last)` when this occurrence should be logged.
    pub fn allow(&mut self, reason: R, now_ms: i64) -> Option<u64> {
        self.per_reason[reason.index()].allow(self.interval_ms, now_ms)
    }
}

/// A closed set of reasons, each with the name it is logged and counted
/// under.
pub trait Reason: Copy + std::fmt::Debug + 'static {
    /// Every reason, in the order they are rendered.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    /// The position in [`Reason::ALL`].
    fn index(self) -> usize;
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
    fn command_log_is_rate_limited_per_reason() {
        let mut l = CommandLogLimiter::new(1000);
        assert_eq!(l.allow(CommandReject::Malformed, 0), Some(0));
        assert_eq!(l.allow(CommandReject::Malformed, 10), None);
        assert_eq!(l.allow(CommandReject::Retained, 20), Some(0));
        assert_eq!(l.allow(CommandReject::Malformed, 1000), Some(1));
    }
}
