//! Reads the clocks of the machine for [`super::ClockGuard`]: the wall
//! clock, the monotonic clock, and whether the kernel reports the wall
//! clock synchronised.

use std::time::Instant;

use super::{ClockReading, Clocks};

/// The machine's clocks; the monotonic one counts from the creation of this
/// value.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clocks for SystemClock {
    /// Reads the three together (two clock reads and one `adjtimex`).
    fn read(&self) -> ClockReading {
        let mono_ms = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        ClockReading {
            wall_ms: crate::now_ms(),
            mono_ms,
            synced: kernel_synced(),
        }
    }
}

/// The flag file systemd-timesyncd creates once it has synchronised the
/// clock (systemd 239 and later).
const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// Whether the kernel's NTP state says the wall clock is synchronised:
/// `adjtimex` with no modes (read only) returns a clock state other than
/// `TIME_ERROR` and leaves `STA_UNSYNC` clear. NTP daemons (chrony,
/// systemd-timesyncd, ntpd) clear it once they have set the clock. Where
/// `adjtimex` is refused (the shipped systemd unit's system call filter
/// denies the `@clock` group, reads included), systemd-timesyncd's flag
/// file says it instead.
#[cfg(target_os = "linux")]
pub fn kernel_synced() -> bool {
    // SAFETY: `adjtimex` reads and writes only the `timex` it is given,
    // which lives on this stack frame; `modes = 0` changes nothing.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return std::path::Path::new(TIMESYNCD_FLAG).exists();
    }
    state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// Elsewhere the state is not known: only the lower bound applies.
#[cfg(not(target_os = "linux"))]
pub fn kernel_synced() -> bool {
    false
}
