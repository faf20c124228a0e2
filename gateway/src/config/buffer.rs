//! The `[buffer]` section: durability, disk bound and its policy, memory
//! budget, expiry.

use std::fmt::Write;
use std::time::Duration;

use super::diag::{ms_text, named, Cx, Named};
use super::raw::RawBuffer;

/// When records are written to the durable buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every record is written when produced; fsync every `commit_interval`.
    Always,
    /// Summaries stay in memory while upstream acknowledges them promptly;
    /// they are written when upstream is down, when unacknowledged for
    /// `spill_after`, when the memory budget is exceeded, and at shutdown.
    Outage,
}

named!(Durability, "durability":
    Outage => "outage" ["(SD-card saver, the default)"],
    Always => "always",
);

/// What happens when the buffer reaches `max_disk_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Delete the oldest segment (summaries first, alarms last).
    DropOldest,
    /// Refuse the new record.
    DropNewest,
    /// Stop taking records: MQTT sources stop reading (backpressure).
    Block,
}

named!(WhenFull, "when_full":
    DropOldest => "drop_oldest",
    DropNewest => "drop_newest",
    Block => "block",
);

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub durability: Durability,
    pub commit_interval_ms: i64,
    pub spill_after_ms: i64,
    pub max_disk_bytes: u64,
    pub segment_bytes: u64,
    pub when_full: WhenFull,
    pub memory_budget_bytes: u64,
    /// Records older than this (by measurement time) are dropped at
    /// delivery; 0 keeps them forever.
    pub max_age_ms: i64,
}

impl BufferConfig {
    /// Minimum `max_disk_bytes`: small devices need small buffers.
    pub const MIN_DISK_BYTES: u64 = 1024 * 1024;
    /// Maximum `segment_bytes`: recovery reads a segment into memory whole,
    /// which a 32-bit device cannot do at all for 2 GiB and more, and a
    /// Pi-class one should not do for more than a few MiB.
    pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n[buffer]\ndurability = {:?}\ncommit_interval = {:?}\nspill_after = {:?}\nmax_disk_bytes = {}\nsegment_bytes = {}\nwhen_full = {:?}\nmemory_budget_bytes = {}\nmax_age = {:?}",
            self.durability.name(),
            ms_text(self.commit_interval_ms),
            ms_text(self.spill_after_ms),
            self.max_disk_bytes,
            self.segment_bytes,
            self.when_full.name(),
            self.memory_budget_bytes,
            ms_text(self.max_age_ms),
        );
    }
}

impl Cx<'_> {
    pub(super) fn buffer(&mut self, raw: Option<RawBuffer>) -> BufferConfig {
        let raw = raw.unwrap_or_default();
        let durability = self.choice(&raw.durability, Durability::Outage);
        let when_full = self.choice(&raw.when_full, WhenFull::DropOldest);
        let max_disk_bytes = match &raw.max_disk_bytes {
            None => 256 * 1024 * 1024,
            Some(v) if *v.get_ref() < BufferConfig::MIN_DISK_BYTES => {
                self.at(
                    v.span(),
                    format!(
                        "`max_disk_bytes` must be at least {} (1 MiB)",
                        BufferConfig::MIN_DISK_BYTES
                    ),
                    None,
                );
                BufferConfig::MIN_DISK_BYTES
            }
            Some(v) => *v.get_ref(),
        };
        // Recovery reads one segment at a time, so the segment size is the
        // peak memory a backlog adds at start-up: keep it at most 1 MiB.
        let segment_default = (max_disk_bytes / 16).clamp(64 * 1024, 1024 * 1024);
        let segment_bytes = match &raw.segment_bytes {
            None => segment_default,
            Some(v)
                if *v.get_ref() < 4096
                    || *v.get_ref() > max_disk_bytes / 4
                    || *v.get_ref() > BufferConfig::MAX_SEGMENT_BYTES =>
            {
                self.at(
                    v.span(),
                    format!(
                        "`segment_bytes` must be at least 4096, at most a quarter of max_disk_bytes and at most {} (64 MiB: recovery reads a segment into memory whole)",
                        BufferConfig::MAX_SEGMENT_BYTES
                    ),
                    Some("leave it out to get max_disk_bytes / 16, at most 1 MiB".into()),
                );
                segment_default
            }
            Some(v) => *v.get_ref(),
        };
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        BufferConfig {
            durability,
            commit_interval_ms: ms(self.duration(&raw.commit_interval, Duration::from_secs(1)))
                .max(1),
            spill_after_ms: ms(self.duration(&raw.spill_after, Duration::from_secs(2))),
            max_disk_bytes,
            segment_bytes,
            when_full,
            memory_budget_bytes: self.positive(
                &raw.memory_budget_bytes,
                "memory_budget_bytes",
                1024 * 1024,
            ),
            max_age_ms: ms(self.duration(&raw.max_age, Duration::from_secs(30 * 24 * 3600))),
        }
    }
}
