//! Per-node bookkeeping: sequence gaps, duplicates, reboots, and the mapping
//! of a node's uptime clock to gateway time. Pure: time is passed in.
//!
//! Sequence rules, with `d = seq - last` in wrapping `u32` arithmetic:
//! `d == 0` is a duplicate (dropped); `0 < d < 2^31` is in order and `d - 1`
//! frames were lost; anything else is behind. A frame behind is a reboot
//! when its uptime went back (by more than [`REBOOT_UPTIME_SLACK_MS`]), when
//! its sequence number is below [`REBOOT_SEQ_LIMIT`], or when it is the third
//! consecutive frame of a new run (`s, s+1, s+2`, a reboot whose first
//! frames were lost); otherwise it is a replayed duplicate and dropped. A
//! reboot resets the node's sequence and clock mapping and is counted, never
//! reported as a storm of duplicates.
//!
//! Clock mapping: `offset = arrival - uptime` is tracked as a lower envelope
//! (transmission and queueing only ever add delay): it follows a smaller
//! observation at once and rises by at most 1 ms per second of gateway time
//! (so a node clock that runs up to 1000 ppm slow is followed), and jumps to
//! the observation when the two differ by more than [`RESYNC_MS`]. A mapped
//! time is never later than the arrival time.

/// A frame behind with a sequence number below this is a reboot.
pub const REBOOT_SEQ_LIMIT: u32 = 16;
/// Uptime that goes back by more than this is a reboot.
pub const REBOOT_UPTIME_SLACK_MS: u64 = 1_000;
/// An offset observation further than this from the estimate resets it.
pub const RESYNC_MS: i64 = 5_000;
/// A run of this many consecutive frames behind is a reboot.
const REBOOT_RUN: u32 = 3;

/// What happened on one node, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub frames: u64,
    /// Frames the node sent that never arrived (sequence gaps).
    pub lost: u64,
    pub duplicates: u64,
    pub reboots: u64,
    /// Times the clock mapping jumped (a node clock set or stalled).
    pub resyncs: u64,
}

/// The tracked state of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    last_seq: Option<u32>,
    last_uptime: Option<u64>,
    offset_ms: Option<i64>,
    offset_updated_ms: i64,
    behind_last: Option<u32>,
    behind_run: u32,
    pub counters: NodeCounters,
}

/// The verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it, with this event time (ms since the Unix epoch).
    Accept { ts_ms: i64 },
    /// A duplicate or replay: drop it (already counted).
    Duplicate,
}

impl NodeState {
    /// Observes one frame that arrived at `now_ms` with an optional sequence
    /// number and optional uptime (already unwrapped to 64 bits).
    pub fn observe(&mut self, seq: Option<u32>, uptime_ms: Option<u64>, now_ms: i64) -> Verdict {
        let clock_went_back = matches!(
            (self.last_uptime, uptime_ms),
            (Some(last), Some(up)) if up.saturating_add(REBOOT_UPTIME_SLACK_MS) < last
        );
        if clock_went_back {
            self.reboot();
        } else if let (Some(last), Some(s)) = (self.last_seq, seq) {
            let d = s.wrapping_sub(last);
            if d == 0 {
                self.counters.duplicates += 1;
                return Verdict::Duplicate;
            } else if d >= 1 << 31 {
                let run = match self.behind_last {
                    Some(b) if s == b.wrapping_add(1) => self.behind_run + 1,
                    _ => 1,
                };
                if s < REBOOT_SEQ_LIMIT || run >= REBOOT_RUN {
                    self.reboot();
                } else {
                    self.behind_last = Some(s);
                    self.behind_run = run;
                    self.counters.duplicates += 1;
                    return Verdict::Duplicate;
                }
            } else {
                self.counters.lost += u64::from(d - 1);
            }
        }
        self.behind_last = None;
        self.behind_run = 0;
        if seq.is_some() {
            self.last_seq = seq;
        }
        self.counters.frames += 1;
        let ts_ms = match uptime_ms {
            Some(up) => {
                self.last_uptime = Some(up);
                self.map_time(up, now_ms)
            }
            None => now_ms,
        };
        Verdict::Accept { ts_ms }
    }

    fn reboot(&mut self) {
        self.counters.reboots += 1;
        self.last_seq = None;
        self.last_uptime = None;
        self.offset_ms = None;
    }

    /// Saturating throughout: uptimes up to `u64::MAX` and any `now_ms`
    /// give a time (which the core then checks), never an overflow.
    fn map_time(&mut self, uptime_ms: u64, now_ms: i64) -> i64 {
        let up = i64::try_from(uptime_ms).unwrap_or(i64::MAX);
        let observed = now_ms.saturating_sub(up);
        let offset = match self.offset_ms {
            None => observed,
            Some(o) if observed.saturating_sub(o).saturating_abs() > RESYNC_MS => {
                self.counters.resyncs += 1;
                observed
            }
            Some(o) if observed <= o => observed,
            Some(o) => {
                let allowed = (now_ms.saturating_sub(self.offset_updated_ms) / 1_000).max(0);
                o.saturating_add(observed.saturating_sub(o).min(allowed))
            }
        };
        if self.offset_ms != Some(offset) {
            self.offset_updated_ms = now_ms;
        }
        self.offset_ms = Some(offset);
        up.saturating_add(offset).min(now_ms)
    }
}

/// Unwraps a 32-bit uptime (frames) against the last one seen, so that the
/// wrap after 49.7 days is not taken for a reboot.
pub fn unwrap_u32(last: Option<u64>, now: u32) -> u64 {
    match last {
        Some(l) => {
            let epoch = l & !0xFFFF_FFFF;
            let low = l as u32;
            if now < low && low - now > u32::MAX / 2 {
                epoch.saturating_add(1 << 32).saturating_add(u64::from(now))
            } else {
                epoch.saturating_add(u64::from(now))
            }
        }
        None => u64::from(now),
    }
}

impl NodeState {
    /// The last uptime seen, for [`unwrap_u32`].
    pub fn last_uptime(&self) -> Option<u64> {
        self.last_uptime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: Verdict) -> i64 {
        match v {
            Verdict::Accept { ts_ms } => ts_ms,
            Verdict::Duplicate => panic!("dropped as a duplicate"),
        }
    }

    #[test]
    fn gaps_and_duplicates_are_counted() {
        let mut n = NodeState::default();
        for s in [101, 102, 105, 105, 106] {
            n.observe(Some(s), None, 0);
        }
        assert_eq!(n.counters.lost, 2);
        assert_eq!(n.counters.duplicates, 1);
        assert_eq!(n.counters.frames, 4);
        // A late replay of an old frame is a duplicate too.
        assert_eq!(n.observe(Some(103), None, 0), Verdict::Duplicate);
        // Wrap-around is in order.
        let mut n = NodeState::default();
        n.observe(Some(u32::MAX), None, 0);
        accept(n.observe(Some(0), None, 0));
        assert_eq!(n.counters.lost, 0);
    }

    #[test]
    fn a_reboot_is_not_a_duplicate_storm() {
        let mut n = NodeState::default();
        for s in 1000..1010 {
            n.observe(
                Some(s),
                Some(u64::from(s) * 100),
                1_000_000 + i64::from(s) * 100,
            );
        }
        // Restart: sequence and uptime start again.
        for s in 0..20u32 {
            accept(n.observe(
                Some(s),
                Some(u64::from(s) * 100),
                2_000_000 + i64::from(s) * 100,
            ));
        }
        assert_eq!(n.counters.reboots, 1);
        assert_eq!(n.counters.duplicates, 0);
        // Without uptime, a restart whose first 100 frames were lost is
        // recognised on the third frame of the new run.
        let mut n = NodeState::default();
        n.observe(Some(5000), None, 0);
        assert_eq!(n.observe(Some(100), None, 0), Verdict::Duplicate);
        assert_eq!(n.observe(Some(101), None, 0), Verdict::Duplicate);
        accept(n.observe(Some(102), None, 0));
        assert_eq!(n.counters.reboots, 1);
        accept(n.observe(Some(103), None, 0));
    }

    #[test]
    fn uptime_maps_to_gateway_time_with_the_smallest_delay() {
        let mut n = NodeState::default();
        let boot = 1_700_000_000_000i64;
        // Delays of 30, 5, 40 ms: the estimate settles on the 5 ms one.
        assert_eq!(accept(n.observe(Some(0), Some(0), boot + 30)), boot + 30);
        assert_eq!(
            accept(n.observe(Some(1), Some(100), boot + 105)),
            boot + 105
        );
        assert_eq!(
            accept(n.observe(Some(2), Some(200), boot + 240)),
            boot + 205
        );
        // A node clock set forward by an hour: resynchronised, counted.
        accept(n.observe(Some(3), Some(3_600_300), boot + 300));
        assert_eq!(n.counters.resyncs, 1);
        assert_eq!(n.counters.reboots, 0);
    }

    /// Runs in debug builds, where arithmetic overflow panics.
    #[test]
    fn extreme_uptimes_and_clocks_never_overflow() {
        let ups = [
            0,
            1,
            u64::from(u32::MAX),
            i64::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        let nows = [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX];
        for &now in &nows {
            let mut n = NodeState::default();
            for (i, &up) in ups.iter().chain(ups.iter().rev()).enumerate() {
                let seq = [0, 1, u32::MAX, u32::MAX / 2][i % 4];
                if let Verdict::Accept { ts_ms } = n.observe(Some(seq), Some(up), now) {
                    assert!(ts_ms <= now, "a mapped time is never later than arrival");
                }
                for &now2 in &nows {
                    let _ = n.observe(None, Some(up), now2);
                }
            }
        }
        assert_eq!(unwrap_u32(Some(u64::MAX), 0), u64::MAX);
        assert_eq!(unwrap_u32(Some(u64::MAX), u32::MAX), u64::MAX);
    }

    #[test]
    fn uptime_wrap_is_unwrapped() {
        let last = Some(u64::from(u32::MAX - 10));
        assert_eq!(unwrap_u32(last, 5), (1u64 << 32) + 5);
        assert_eq!(unwrap_u32(Some((1u64 << 32) + 5), 9), (1u64 << 32) + 9);
        assert_eq!(unwrap_u32(None, 9), 9);
    }
}
