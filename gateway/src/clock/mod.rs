//! Whether the gateway's wall clock can be trusted, and what waits until it
//! can. Pure: readings of the clocks are passed in ([`ClockReading`]);
//! `system.rs` takes them from the kernel for the runtime.
//!
//! A Raspberry Pi has no real-time clock: it boots at the time it saved at
//! shutdown, or at 1970, and jumps when NTP synchronises it. The
//! [`ClockGuard`] trusts the wall clock once the kernel reports it
//! synchronised, or, unless `clock.require_sync` is set, once it reads a
//! time within [`ClockSettings::not_before_ms`] (the build date by default)
//! and [`MAX_AHEAD_OF_BOUND_MS`] after it. Once trusted it stays trusted
//! (the kernel reports "unsynchronised" again after hours without an NTP
//! server; the time it keeps is still good).
//!
//! Until then, what the sources hand over waits in [`Pending`], bounded,
//! with the monotonic time of its arrival, and is re-stamped when the wall
//! clock becomes trustworthy: its gateway times move by the change of the
//! wall clock's offset from the monotonic clock since it arrived.
//!
//! A jump is a change of that offset by more than [`JUMP_THRESHOLD_MS`]
//! between two readings (NTP slews both clocks alike; only a step moves
//! one against the other), forward or backward. The guard reports it, so
//! that the runtime can count and log it and tell the processor, which
//! moves its gateway-time marks with it
//! (`Processor::clock_stepped`).

use std::collections::VecDeque;
use std::time::{Duration, UNIX_EPOCH};

pub mod system;

/// A change of the wall clock against the monotonic clock larger than this
/// is a jump.
pub const JUMP_THRESHOLD_MS: i64 = 1_000;

/// Without a synchronised kernel clock, a wall time further than this after
/// the lower bound (30 years) is not believed either: a real-time clock
/// with a flat battery or a corrupt saved time can read 2106 as easily as
/// 1970.
pub const MAX_AHEAD_OF_BOUND_MS: i64 = 30 * 365 * 24 * 3600 * 1000;

/// A time in ms since the Unix epoch as RFC 3339 (UTC, seconds), for
/// logs and `check`; times before 1970 print as 1970.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What the guard needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// Trust the wall clock only once the kernel reports it synchronised.
    pub require_sync: bool,
    /// A wall time before this is never trusted without synchronisation.
    pub not_before_ms: i64,
}

/// One look at the clocks, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// Wall-clock time, ms since the Unix epoch.
    pub wall_ms: i64,
    /// Monotonic time, ms since any fixed origin.
    pub mono_ms: i64,
    /// The kernel reports the wall clock synchronised (`adjtimex`:
    /// `STA_UNSYNC` clear). `false` where it cannot tell.
    pub synced: bool,
}

/// Where readings of the clocks come from: the machine
/// ([`system::SystemClock`]), or a test.
pub trait Clocks {
    fn read(&self) -> ClockReading;
}

impl ClockReading {
    fn offset(&self) -> i64 {
        self.wall_ms.saturating_sub(self.mono_ms)
    }
}

/// What the guard made of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Wall time can be used; until then inputs wait in [`Pending`].
    pub trusted: bool,
    /// This reading is the first trusted one.
    pub became_trusted: bool,
    /// The wall clock moved by this much against the monotonic clock since
    /// the previous reading (positive: forward); `None` below the
    /// threshold.
    pub jump_ms: Option<i64>,
}

/// Decides whether the wall clock is trustworthy and detects its jumps.
#[derive(Debug, Clone)]
pub struct ClockGuard {
    settings: ClockSettings,
    trusted: bool,
    /// Wall minus monotonic at the last reading.
    offset_ms: Option<i64>,
}

impl ClockGuard {
    pub fn new(settings: ClockSettings) -> Self {
        Self {
            settings,
            trusted: false,
            offset_ms: None,
        }
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// Takes one reading of the clocks.
    pub fn observe(&mut self, r: ClockReading) -> Verdict {
        let offset = r.offset();
        let jump_ms = self
            .offset_ms
            .map(|before| offset.saturating_sub(before))
            .filter(|d| d.abs() > JUMP_THRESHOLD_MS);
        self.offset_ms = Some(offset);
        let was = self.trusted;
        self.trusted =
            was || r.synced || (!self.settings.require_sync && self.plausible(r.wall_ms));
        Verdict {
            trusted: self.trusted,
            became_trusted: self.trusted && !was,
            jump_ms,
        }
    }

    /// A wall time within the bounds believed without synchronisation.
    fn plausible(&self, wall_ms: i64) -> bool {
        let lo = self.settings.not_before_ms;
        wall_ms >= lo && wall_ms <= lo.saturating_add(MAX_AHEAD_OF_BOUND_MS)
    }
}

/// Inputs that arrived while the wall clock was not trustworthy, oldest
/// first, each with the clocks as they read at its arrival. Bounded: when
/// full, the runtime stops taking input (the sources stop reading), as it
/// does for any backpressure.
#[derive(Debug)]
pub struct Pending<T> {
    items: VecDeque<(T, ClockReading)>,
    capacity: usize,
}

impl<T> Pending<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Keeps `item`, which arrived at `at`. The caller checks
    /// [`Self::is_full`] first; beyond the capacity nothing is dropped, the
    /// queue only grows past it by what the caller already held.
    pub fn hold(&mut self, item: T, at: ClockReading) {
        self.items.push_back((item, at));
    }

    /// Hands every held input out, oldest first, with the correction of its
    /// gateway times (add it to every time the gateway clock gave it) and
    /// its arrival time on the trusted clock `now`.
    pub fn release(&mut self, now: ClockReading) -> impl Iterator<Item = Released<T>> + '_ {
        self.items.drain(..).map(move |(item, at)| {
            let correction_ms = now.offset().saturating_sub(at.offset());
            Released {
                item,
                correction_ms,
                arrived_ms: at.wall_ms.saturating_add(correction_ms),
            }
        })
    }
}

/// One input handed out by [`Pending::release`].
#[derive(Debug)]
pub struct Released<T> {
    pub item: T,
    /// Add to the times the gateway clock gave the input.
    pub correction_ms: i64,
    /// When it arrived, on the trusted clock.
    pub arrived_ms: i64,
}

#[cfg(test)]
mod tests;
