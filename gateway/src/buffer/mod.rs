//! The durable buffer: a segmented, append-only log of outgoing records that
//! survives outages, restarts and power cuts, bounded in bytes.
//!
//! Layout under `<state_dir>/buffer/`:
//!
//! ```text
//! summaries/{base_seq:020}.seg   lane 0, oldest first
//! alarms/{base_seq:020}.seg      lane 1, delivered before summaries
//! quarantine/                    damaged files moved aside at start-up
//! cursor.a, cursor.b             acknowledged cursor, two slots
//! ../seq.reserved                the reservation again, outside the buffer
//!                                directory
//! ```
//!
//! The segment format is documented in [`segment`], the cursor slots and
//! the reservation file in [`cursor`]. [`lane`] owns each lane's files and
//! I/O; this module holds the policy: durability modes and group commit,
//! the disk bound, the memory budget, the delivery cursor and the sequence
//! reservation. The buffer knows nothing of the processor: it takes
//! [`Record`]s of the model.
//!
//! Delivery: each lane hands out records in sequence order: first records
//! to resend after a reconnect, then records read from disk, then records
//! still only in memory. A lane's *acked* mark is the highest sequence number
//! below which every record of the lane is acknowledged; whole segments at or
//! below it are deleted once a durable cursor records that mark (never
//! before: a power cut must not leave a cursor older than the segments on
//! disk, or acknowledged alarm events would look lost). The sequence
//! numbers handed to upstream never repeat across restarts: before a record with `seq >= reserved` is published, the
//! reservation is extended by [`RESERVE_BLOCK`] and made durable (the seq
//! file, then the cursor); while that fails, nothing at or above the old
//! reservation is handed out. Start-up continues from the reservation.
//!
//! A record that fails its check when read back costs only itself: the
//! reader resynchronises at the next valid record of the segment. A segment
//! that cannot be opened or read is retried later; nothing is skipped unless
//! the error persists.
//!
//! Durability modes: in `always`, every record is written when pushed and
//! fsynced within `commit_interval`. In `outage`, a summary stays in memory
//! while upstream acknowledges it promptly, and is written when upstream is
//! down, when it waits longer than `spill_after`, when the memory budget is
//! exceeded, and at shutdown. Alarms are always written and fsynced before
//! they are published: alarms pushed within [`GROUP_COMMIT_MS`] of the
//! first one not yet fsynced share one commit (one fsync per lane with
//! unsynced data, and the cursor if it moved), made when it is due
//! ([`Buffer::maintain`]) or when one of them is asked for
//! ([`Buffer::next_unsent`]), whichever comes first.

mod cursor;
pub mod inspect;
mod lane;
mod outage;
mod recover;
pub mod segment;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{BufferConfig, Durability, WhenFull};
use crate::metrics::Metrics;
use crate::model::{Lane, Record};
use crate::reject::Throttle;
use lane::{cost, encoded_len, LaneLog, Lanes, MemRecord, Persist, PersistError, ReadRetry, LANES};
use segment::{ReadError, HEADER_LEN};

/// How far a durable sequence reservation reaches ahead.
pub const RESERVE_BLOCK: u64 = 65_536;

/// A segment that cannot be opened or read is tried again after this
/// delay, doubling up to [`READ_RETRY_MAX_MS`], [`READ_RETRIES`] times
/// (about four minutes in all) before the rest of it is given up.
const READ_RETRY_FIRST_MS: i64 = 500;
const READ_RETRY_MAX_MS: i64 = 60_000;
const READ_RETRIES: u32 = 10;
/// Operator-facing log lines of one kind are written at most this often.
const LOG_EVERY_MS: i64 = 10_000;
/// Records upstream refused are appended to this file in `quarantine/`
/// until it reaches [`SET_ASIDE_FILE_MAX`] bytes; after that they are only
/// counted.
pub const SET_ASIDE_FILE: &str = "rejected-records.jsonl";
pub const SET_ASIDE_FILE_MAX: u64 = 16 * 1024 * 1024;
/// Encoded records wait in memory up to this many bytes before they are
/// written to their segment (without fsync).
const WRITE_CHUNK_BYTES: usize = 64 * 1024;
/// Topic, payload and reason are cut to this many bytes in that file.
const SET_ASIDE_TEXT_MAX: usize = 4096;
/// Outsider text in log lines is cut to this many characters.
const LOG_TEXT_MAX: usize = 200;
/// Alarms pushed within this many milliseconds of the first one not yet
/// fsynced share its commit; none of them is handed out before it.
pub const GROUP_COMMIT_MS: i64 = 2;

/// The buffer's gauges are updated at most this often.
const GAUGES_EVERY_MS: i64 = 100;

/// Errors that stop the buffer from opening at all (a state directory that
/// cannot be created or written). Damaged contents are never an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use the buffer directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What start-up recovery did, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub torn_tails: usize,
    pub quarantined: Vec<PathBuf>,
    pub next_seq: u64,
}

/// The outcome of appending one record to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    Written,
    /// The disk bound is reached and the policy frees nothing.
    Full,
    /// The write failed (I/O error).
    Failed,
}

/// What the disk holds next for a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskNext {
    Next(u64),
    Nothing,
    /// The next segment could not be opened or read; it is tried again later.
    Waiting,
}

/// The durable outbox of the upstream sink.
pub struct Buffer {
    cfg: BufferConfig,
    /// Added to `spill_after` ([`Buffer::set_batch_wait_ms`]).
    batch_wait_ms: i64,
    state_dir: PathBuf,
    root: PathBuf,
    lanes: Lanes<LaneLog>,
    /// Published, awaiting PUBACK: seq -> (lane, record, on disk).
    inflight: BTreeMap<u64, (Lane, MemRecord)>,
    disk_bytes: u64,
    /// The durable reservation: no record with this seq or above is handed
    /// out until the reservation is extended and durable.
    reserved: u64,
    /// A reservation failed: not tried again before this time.
    reserve_retry_at_ms: Option<i64>,
    next_seq: u64,
    cursor_gen: u64,
    cursor_dirty: bool,
    /// Per lane, the acknowledged mark of the last cursor made durable:
    /// segments are deleted only up to it, so that a power cut can never
    /// leave a cursor older than the segments still on disk (an alarm event
    /// in a deleted segment would otherwise look lost and be sent again).
    durable_acked: Lanes<u64>,
    last_sync_ms: i64,
    /// Alarms were written but not fsynced: the group commit is due at this
    /// time, and until it is made none of them is handed out.
    commit_due_ms: Option<i64>,
    last_synced_seq: u64,
    highest_written_seq: u64,
    /// Set when the filesystem filled up before `max_disk_bytes`.
    physical_limit: Option<u64>,
    /// The first seq of the latest write that was cut back, per lane: a
    /// spill must not mark records from there on as on disk.
    unwound_from: Lanes<Option<u64>>,
    /// As last told by `maintain`; while down, records are written at once.
    upstream_up: bool,
    last_gauges_ms: i64,
    /// Bytes of records pushed per second, for `gateway_outage_seconds_left`.
    input_rate: outage::InputRate,
    /// `maintain` left the gauges as they were (updated less than 100 ms
    /// before): they are due again then.
    gauges_stale: bool,
    /// Records were pushed or settled since the last fsync: the next one
    /// (after `commit_interval`) moves the durable mark and the cursor.
    sync_wanted: bool,
    metrics: Arc<Metrics>,
    log_damage: Throttle,
    /// Lines about records dropped by age or by the disk bound.
    log_drop: Throttle,
    log_read_retry: Throttle,
    log_reserve: Throttle,
    log_cursor: Throttle,
    log_set_aside: Throttle,
    /// Write and fsync failures: a failing disk fails every record.
    log_write: Throttle,
}

impl Buffer {
    /// Opens the buffer under `state_dir`, recovering what is on disk.
    pub fn open(
        cfg: &BufferConfig,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Buffer, RecoveryReport), Error> {
        let root = state_dir.join("buffer");
        for d in [
            root.join("summaries"),
            root.join("alarms"),
            root.join("quarantine"),
        ] {
            std::fs::create_dir_all(&d).map_err(|source| Error::Dir {
                path: d.clone(),
                source,
            })?;
        }
        // Directories just created must survive a power cut too: their
        // names are durable only once their parent is fsynced.
        for d in [Some(root.as_path()), Some(state_dir), state_dir.parent()]
            .into_iter()
            .flatten()
        {
            recover::sync_dir(d);
        }
        let mut report = RecoveryReport::default();
        let cursor = cursor::read_cursor(&root);
        let acked = cursor.acked();
        let lanes = Lanes::from_fn(|lane| {
            let dir = root.join(lane.dir_name());
            let segments =
                recover::recover_lane(&dir, &root.join("quarantine"), lane, &mut report, &metrics);
            LaneLog::new(lane, dir, segments, acked[lane])
        });
        let max_seen = lanes
            .iter()
            .filter_map(|l| l.segments.back().map(|s| s.last))
            .max()
            .unwrap_or(0);
        // The reservation also lives outside the buffer directory, so that
        // numbering continues above everything handed out even when the
        // buffer was deleted.
        let seq_file = cursor::read_seq_file(state_dir).unwrap_or(0);
        let next_seq = cursor.reserved.max(seq_file).max(max_seen + 1).max(1);
        report.next_seq = next_seq;
        let mut buffer = Buffer {
            batch_wait_ms: 0,
            cfg: cfg.clone(),
            state_dir: state_dir.to_owned(),
            root,
            lanes,
            inflight: BTreeMap::new(),
            disk_bytes: 0,
            reserved: next_seq,
            reserve_retry_at_ms: None,
            next_seq,
            cursor_gen: cursor.generation,
            cursor_dirty: true,
            durable_acked: acked,
            last_sync_ms: 0,
            gauges_stale: false,
            sync_wanted: true,
            commit_due_ms: None,
            last_synced_seq: max_seen,
            highest_written_seq: max_seen,
            physical_limit: None,
            unwound_from: Lanes::default(),
            upstream_up: false,
            last_gauges_ms: i64::MIN,
            input_rate: outage::InputRate::default(),
            metrics,
            log_damage: Throttle::default(),
            log_drop: Throttle::default(),
            log_read_retry: Throttle::default(),
            log_reserve: Throttle::default(),
            log_cursor: Throttle::default(),
            log_set_aside: Throttle::default(),
            log_write: Throttle::default(),
        };
        buffer.disk_bytes = buffer
            .lanes
            .iter()
            .flat_map(|l| l.segments.iter())
            .map(|s| s.bytes)
            .sum();
        // Segments wholly acknowledged before the restart are done with.
        for lane in LANES {
            buffer.delete_acked_segments(lane);
        }
        // Make the first reservation durable before anything is published;
        // if it fails, nothing at or above `next_seq` is published until a
        // later attempt succeeds.
        buffer.reserve(next_seq, 0);
        buffer.update_gauges(crate::now_ms());
        buffer
            .metrics
            .buffer_first_seq_this_run
            .set(next_seq as i64);
        Ok((buffer, report))
    }

    /// The sequence number the processing core should give its next record.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a record can be accepted without dropping anything; the sink
    /// stops taking records while this is false under `when_full = "block"`.
    pub fn has_room(&self) -> bool {
        self.cfg.when_full != WhenFull::Block || self.disk_bytes + 64 * 1024 <= self.bound()
    }

    /// Records waiting (in memory or on disk) or in flight.
    pub fn len(&self) -> u64 {
        let disk: u64 = self
            .lanes
            .iter()
            .flat_map(|l| l.segments.iter().map(move |s| (s, l.acked)))
            .filter(|(s, acked)| s.last > *acked)
            .map(|(s, _)| s.records)
            .sum();
        let mem_only: u64 = self
            .lanes
            .iter()
            .map(|l| {
                l.mem.iter().filter(|m| !m.on_disk).count() as u64
                    + l.resend.iter().filter(|m| !m.on_disk).count() as u64
            })
            .sum();
        let inflight_mem = self.inflight.values().filter(|(_, m)| !m.on_disk).count() as u64;
        disk + mem_only + inflight_mem
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(|l| {
            l.mem.is_empty() && l.resend.is_empty() && l.segments.iter().all(|s| s.last <= l.acked)
        }) && self.inflight.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Accepts a record from the core. An alarm is written at once and
    /// made durable by the group commit ([`Self::commit_due`]) before it can
    /// be handed out.
    pub fn push(&mut self, rec: Record, now_ms: i64) {
        self.input_rate.add(encoded_len(&rec), now_ms);
        self.sync_wanted = true;
        let lane = rec.lane;
        self.next_seq = self.next_seq.max(rec.seq + 1);
        let write_now = rec.lane == Lane::Alarm
            || self.cfg.durability == Durability::Always
            || !self.upstream_up;
        let mut m = MemRecord {
            rec: Arc::new(rec),
            on_disk: false,
            pushed_ms: now_ms,
        };
        if write_now && self.lanes[lane].unwritten {
            // Older records failed to reach the disk: write them first.
            self.spill_all();
        }
        if write_now && self.lanes[lane].unwritten {
            // Still behind: keep this one in memory too, in order; the memory
            // budget drops (and counts) what cannot be held.
            self.cache(lane, m);
            self.enforce_memory_budget();
            return;
        }
        if write_now {
            match self.append(lane, &m.rec) {
                Appended::Written => m.on_disk = true,
                Appended::Full => {
                    self.refuse(&m.rec);
                    return;
                }
                // Kept in memory; written at the next spill if the disk recovers.
                Appended::Failed => self.lanes[lane].unwritten = true,
            }
            if m.rec.lane == Lane::Alarm {
                // Alarms are durable before anyone can publish them: the
                // commit is made once for every alarm pushed until it is due.
                self.commit_due_ms
                    .get_or_insert(now_ms.saturating_add(GROUP_COMMIT_MS));
            }
        }
        self.cache(lane, m);
        self.enforce_memory_budget();
    }

    /// Counts and logs a record refused because the buffer is full.
    fn refuse(&mut self, rec: &Record) {
        let dropped = &self.metrics.buffer_dropped_disk_full;
        let n = dropped.get();
        dropped.inc();
        if n.is_power_of_two() {
            tracing::warn!(seq = rec.seq, dropped_so_far = n + 1, "The buffer is full (buffer.max_disk_bytes) and buffer.when_full keeps the oldest: dropped a new record.");
        }
    }

    fn cache(&mut self, lane: Lane, m: MemRecord) {
        let l = &mut self.lanes[lane];
        l.mem_bytes += cost(&m.rec);
        if !m.on_disk {
            l.unspilled.push_back((m.pushed_ms, m.rec.seq));
        }
        l.mem.push_back(m);
    }

    /// Appends one record to a lane's log, applying the disk bound.
    fn append(&mut self, lane: Lane, rec: &Record) -> Appended {
        let need = encoded_len(rec);
        if self.disk_bytes + need > self.bound() && !self.make_room(need, lane) {
            return Appended::Full;
        }
        if self.lanes[lane].needs_segment(self.cfg.segment_bytes) {
            if let Err(e) = self.open_segment(lane, rec.seq) {
                self.write_failed(rec.seq, &e);
                return Appended::Failed;
            }
        } else if self.lanes[lane].pending_bytes() + need as usize > WRITE_CHUNK_BYTES {
            // A spill appends up to a segment's worth at once: written in
            // chunks, its encoding never needs more than a chunk of memory.
            // Only written, not fsynced: durability is unchanged.
            if self.persist(lane, Persist::Write, crate::now_ms()).is_err() {
                return Appended::Failed;
            }
        }
        let Some(n) = self.lanes[lane].append(rec) else {
            return Appended::Failed;
        };
        self.disk_bytes += n;
        self.highest_written_seq = self.highest_written_seq.max(rec.seq);
        Appended::Written
    }

    /// Seals the segment being written (if any) and starts one at `base`.
    fn open_segment(&mut self, lane: Lane, base: u64) -> std::io::Result<()> {
        self.persist(lane, Persist::Seal, crate::now_ms())
            .map_err(PersistError::into_io)?;
        let n = self.lanes[lane].create_segment(base, &self.metrics)?;
        self.disk_bytes += n;
        Ok(())
    }

    fn write_failed(&mut self, seq: u64, e: &std::io::Error) {
        self.metrics.buffer_write_errors.inc();
        if let Some(suppressed) = self.log_write.allow(LOG_EVERY_MS, crate::now_ms()) {
            tracing::error!(seq, error = %e, similar_suppressed = suppressed, "Cannot write to the buffer; keeping the record in memory. Check the state directory's disk.");
        }
    }

    /// Frees space for `need` bytes according to `when_full`.
    fn make_room(&mut self, need: u64, for_lane: Lane) -> bool {
        match self.cfg.when_full {
            WhenFull::DropNewest | WhenFull::Block => false,
            WhenFull::DropOldest => {
                while self.disk_bytes + need > self.bound() {
                    // Summaries go first, the segment being written included;
                    // alarms only for an alarm, and only when no summary is
                    // left. A summary never evicts an alarm.
                    let victim = if !self.lanes[Lane::Summary].segments.is_empty() {
                        Lane::Summary
                    } else if for_lane == Lane::Alarm
                        && !self.lanes[Lane::Alarm].segments.is_empty()
                    {
                        Lane::Alarm
                    } else {
                        return false;
                    };
                    self.drop_oldest_segment(victim);
                }
                true
            }
        }
    }

    fn drop_oldest_segment(&mut self, lane: Lane) {
        let l = &mut self.lanes[lane];
        let Some(seg) = l.segments.pop_front() else {
            return;
        };
        if l.reader.as_ref().is_some_and(|r| r.base == seg.base) {
            l.reader = None;
        }
        // Records of the segment being written that are not in the file yet
        // are dropped too; count them with the rest.
        let pending = if l.segments.is_empty() {
            let n = l.pending_after(l.acked.max(l.sent_hwm));
            l.writer = None;
            n
        } else {
            0
        };
        let unacked = recover::count_after(&seg.path, l.acked.max(l.sent_hwm)) + pending;
        let _ = std::fs::remove_file(&seg.path);
        self.disk_bytes -= seg.bytes;
        // The dropped records are gone from memory too, and count as settled.
        l.sent_hwm = l.sent_hwm.max(seg.last);
        l.acked = l.acked.max(seg.last);
        while l.mem.front().is_some_and(|m| m.rec.seq <= seg.last) {
            l.pop_mem_front();
        }
        let resends_before = l.resend.len();
        l.resend.retain(|m| m.rec.seq > seg.last);
        // Rewound records of the segment were handed out before, so the file
        // count above skipped them; they are dropped too.
        let unacked = unacked + (resends_before - l.resend.len()) as u64;
        self.metrics.buffer_dropped_oldest.add(unacked);
        self.cursor_dirty = true;
        let lane_name = l.lane.dir_name();
        if let Some(suppressed) = self.log_drop.allow(LOG_EVERY_MS, crate::now_ms()) {
            tracing::warn!(lane = lane_name, dropped = unacked, first_seq = seg.base, last_seq = seg.last, similar_suppressed = suppressed, "The buffer is full; dropped its oldest segment (raise buffer.max_disk_bytes for longer outages).");
        }
    }

    /// Keeps memory under the budget: records already on disk are dropped
    /// from memory; others are written first; what can be neither written
    /// nor held is dropped (newest first) and counted.
    fn enforce_memory_budget(&mut self) {
        let total = |b: &Self| b.lanes.iter().map(|l| l.mem_bytes).sum::<u64>();
        if total(self) <= self.cfg.memory_budget_bytes {
            return;
        }
        self.spill_all();
        let target = self.cfg.memory_budget_bytes / 2;
        for lane in LANES {
            if self.persist(lane, Persist::Write, crate::now_ms()).is_err() {
                continue;
            }
            let l = &mut self.lanes[lane];
            while l.mem_bytes > target && l.mem.front().is_some_and(|m| m.on_disk) {
                l.pop_mem_front();
            }
        }
        while total(self) > self.cfg.memory_budget_bytes {
            let Some(lane) = LANES
                .into_iter()
                .find(|&lane| self.lanes[lane].mem.back().is_some_and(|m| !m.on_disk))
            else {
                break;
            };
            let l = &mut self.lanes[lane];
            if let Some(m) = l.mem.pop_back() {
                l.mem_bytes -= cost(&m.rec);
                self.refuse(&m.rec);
            }
        }
    }

    /// Writes every record that is only in memory, in sequence order, until
    /// the disk refuses. Records already handed out (at most the in-flight
    /// window and resends) are copied first; the rest of the memory cache is
    /// written in place, without a copy, so a spill never doubles memory.
    fn spill_all(&mut self) {
        for lane in LANES {
            let hwm = self.lanes[lane].sent_hwm;
            let l = &self.lanes[lane];
            let mut handed_out: Vec<Arc<Record>> = l
                .resend
                .iter()
                .chain(
                    self.inflight
                        .values()
                        .filter(|(ln, _)| *ln == lane)
                        .map(|(_, m)| m),
                )
                .chain(l.mem.iter().take_while(|m| m.rec.seq <= hwm))
                .filter(|m| !m.on_disk)
                .map(|m| m.rec.clone())
                .collect();
            handed_out.sort_unstable_by_key(|r| r.seq);
            handed_out.dedup_by_key(|r| r.seq);
            let mut written_upto = None;
            let mut refused = false;
            self.unwound_from[lane] = None;
            for r in &handed_out {
                if self.append(lane, r) != Appended::Written {
                    refused = true;
                    break;
                }
                written_upto = Some(r.seq);
            }
            if !refused {
                let mem = std::mem::take(&mut self.lanes[lane].mem);
                for m in mem.iter().filter(|m| m.rec.seq > hwm && !m.on_disk) {
                    if self.append(lane, &m.rec) != Appended::Written {
                        refused = true;
                        break;
                    }
                    written_upto = Some(m.rec.seq);
                }
                self.lanes[lane].mem = mem;
            }
            self.lanes[lane].unwritten = refused;
            // A write cut back during the spill took the disk copies of the
            // records from `first` on: they stay in memory, not on disk.
            // (Records are appended in seq order, so everything below
            // `first` up to `written_upto` is on disk.)
            if let Some(first) = self.unwound_from[lane].take() {
                written_upto = written_upto.map(|u| u.min(first.saturating_sub(1)));
            }
            if let Some(upto) = written_upto {
                self.mark_on_disk(lane, upto);
                self.metrics.buffer_spills.inc();
                let l = &mut self.lanes[lane];
                while l.unspilled.front().is_some_and(|(_, s)| *s <= upto) {
                    l.unspilled.pop_front();
                }
            }
        }
    }

    /// Marks every in-memory copy of records up to `upto` as written.
    fn mark_on_disk(&mut self, lane: Lane, upto: u64) {
        for (_, m) in self.inflight.values_mut().filter(|(ln, _)| *ln == lane) {
            if m.rec.seq <= upto {
                m.on_disk = true;
            }
        }
        let l = &mut self.lanes[lane];
        for m in l.resend.iter_mut().chain(l.mem.iter_mut()) {
            if m.rec.seq <= upto {
                m.on_disk = true;
            }
        }
    }

    /// The next record to publish, alarms first. `None` when nothing waits
    /// or the in-flight window is full (the caller limits that). The record
    /// is shared with the buffer, which keeps it until it is acknowledged:
    /// handing it out copies a pointer. A group commit still pending is made
    /// first, so every alarm handed out is durable.
    pub fn next_unsent(&mut self, now_ms: i64) -> Option<Arc<Record>> {
        if self.commit_due_ms.is_some() {
            self.flush_and_sync(now_ms);
        }
        for lane in [Lane::Alarm, Lane::Summary] {
            while let Some(m) = self.take_next(lane, now_ms) {
                if self.cfg.max_age_ms > 0
                    && now_ms.saturating_sub(m.rec.ts_ms) > self.cfg.max_age_ms
                {
                    self.metrics.buffer_expired.inc();
                    if let Some(suppressed) = self.log_drop.allow(LOG_EVERY_MS, now_ms) {
                        tracing::warn!(
                            seq = m.rec.seq,
                            age_ms = now_ms - m.rec.ts_ms,
                            similar_suppressed = suppressed,
                            "Dropped a record older than buffer.max_age (counted in gateway_upstream_dropped_total{{reason=\"expired\"}})."
                        );
                    }
                    self.settle(lane);
                    continue;
                }
                if m.rec.seq >= self.reserved && !self.reserve(m.rec.seq + 1, now_ms) {
                    // Not durable: publishing it could repeat its number
                    // after a restart. It waits, first in its lane.
                    self.lanes[lane].resend.push_front(m);
                    return None;
                }
                let rec = Arc::clone(&m.rec);
                self.inflight.insert(rec.seq, (rec.lane, m));
                return Some(rec);
            }
        }
        None
    }

    fn take_next(&mut self, lane: Lane, now_ms: i64) -> Option<MemRecord> {
        if let Some(m) = self.lanes[lane].resend.pop_front() {
            return Some(m);
        }
        let mem_next = {
            let l = &self.lanes[lane];
            let i = l.mem.partition_point(|m| m.rec.seq <= l.sent_hwm);
            l.mem.get(i).map(|m| m.rec.seq)
        };
        let from_disk = match (self.peek_disk(lane, now_ms), mem_next) {
            // The disk cannot be read right now: handing out a newer record
            // from memory would skip the ones on disk, so the lane waits.
            (DiskNext::Waiting, _) => return None,
            (DiskNext::Next(d), Some(m)) => d < m,
            (DiskNext::Next(_), None) => true,
            (DiskNext::Nothing, _) => false,
        };
        let l = &mut self.lanes[lane];
        let m = if from_disk {
            let rec = l.reader.as_mut().and_then(|r| r.peeked.take())?;
            MemRecord {
                rec,
                on_disk: true,
                pushed_ms: 0,
            }
        } else {
            let i = l.mem.partition_point(|m| m.rec.seq <= l.sent_hwm);
            l.mem.get(i)?.clone()
        };
        l.sent_hwm = m.rec.seq;
        Some(m)
    }

    /// The seq of the next record on disk past `sent_hwm`, reading ahead.
    fn peek_disk(&mut self, lane: Lane, now_ms: i64) -> DiskNext {
        loop {
            let sent = self.lanes[lane].sent_hwm;
            if let Some(p) = self.lanes[lane]
                .reader
                .as_ref()
                .and_then(|r| r.peeked.as_ref())
            {
                if p.seq > sent {
                    return DiskNext::Next(p.seq);
                }
                if let Some(r) = self.lanes[lane].reader.as_mut() {
                    r.peeked = None;
                }
            }
            if self.lanes[lane].reader.is_none() {
                let l = &mut self.lanes[lane];
                let Some(seg) = l.segments.iter().find(|s| s.last > sent && s.records > 0) else {
                    return DiskNext::Nothing;
                };
                let (base, path) = (seg.base, seg.path.clone());
                let mut start = HEADER_LEN as u64;
                match l.read_retry {
                    Some(rt) if rt.base == base => {
                        if now_ms < rt.at_ms {
                            return DiskNext::Waiting;
                        }
                        start = rt.pos;
                    }
                    // The segment it was about is gone (acknowledged or dropped).
                    Some(_) => l.read_retry = None,
                    None => {}
                }
                if self.lanes[lane].is_live(base) {
                    let _ = self.persist(lane, Persist::Write, now_ms);
                }
                if let Err(e) = self.lanes[lane].open_reader(base, &path, start) {
                    if self.read_io_failed(lane, base, start, &e, now_ms) {
                        continue;
                    }
                    return DiskNext::Waiting;
                }
            }
            let Some(base) = self.lanes[lane].reader.as_ref().map(|r| r.base) else {
                return DiskNext::Nothing;
            };
            match self.lanes[lane].read_next() {
                Ok(Some(rec)) => {
                    self.settle_damage(lane, Some(rec.seq), now_ms);
                    let l = &mut self.lanes[lane];
                    if l.read_retry.is_some_and(|rt| rt.base == base) {
                        l.read_retry = None;
                    }
                    if rec.seq > sent {
                        if let Some(r) = l.reader.as_mut() {
                            r.peeked = Some(rec);
                        }
                    }
                }
                Ok(None) => {
                    // End of this segment: move on if a later one exists.
                    self.settle_damage(lane, None, now_ms);
                    let l = &mut self.lanes[lane];
                    if l.read_retry.is_some_and(|rt| rt.base == base) {
                        l.read_retry = None;
                    }
                    if !l.segments.iter().any(|s| s.base > base) {
                        return DiskNext::Nothing;
                    }
                    l.reader = None;
                    if let Some(seg) = l.segments.iter().find(|s| s.base == base) {
                        l.sent_hwm = l.sent_hwm.max(seg.last);
                    }
                }
                // The segment being written ends in a record still to come.
                Err(ReadError::Torn) if self.lanes[lane].is_live(base) => return DiskNext::Nothing,
                Err(e @ (ReadError::Torn | ReadError::Corrupt(_))) => {
                    let what = match e {
                        ReadError::Corrupt(what) => what,
                        _ => "a record is cut short before the end of the segment",
                    };
                    if let Err(e) = self.skip_damage(lane, what) {
                        let pos = self.lanes[lane].reader.take().map_or(0, |r| r.pos());
                        if !self.read_io_failed(lane, base, pos, &e, now_ms) {
                            return DiskNext::Waiting;
                        }
                    }
                }
                Err(ReadError::Io(e)) => {
                    let pos = self.lanes[lane].reader.take().map_or(0, |r| r.pos());
                    if !self.read_io_failed(lane, base, pos, &e, now_ms) {
                        return DiskNext::Waiting;
                    }
                }
            }
        }
    }

    /// The record at the reader's position is damaged: moves the reader to
    /// the next valid record of the segment (or its end), and counts the
    /// damaged region and its bytes. Records before and after it are
    /// delivered; only the region is lost.
    fn skip_damage(&mut self, lane: Lane, what: &'static str) -> std::io::Result<()> {
        let skipped = self.lanes[lane].skip_damage(what)?;
        self.metrics.buffer_read_errors.inc();
        self.metrics.buffer_corrupt_bytes.add(skipped);
        Ok(())
    }

    /// Settles a skipped damaged region once the next valid record of the
    /// lane (`next`) or the end of its segment (`None`) is known: it cost a
    /// record unless everything in it was handed out already (the next
    /// valid record was) or the lane's memory holds every record not yet
    /// handed out. Counts and logs it.
    fn settle_damage(&mut self, lane: Lane, next: Option<u64>, now_ms: i64) {
        let l = &mut self.lanes[lane];
        let Some(d) = l.damage.take() else {
            return;
        };
        let sent = l.sent_hwm;
        let handed_out = match next {
            Some(seq) => seq <= sent,
            None => l
                .segments
                .iter()
                .find(|s| s.base == d.base)
                .is_none_or(|s| s.last <= sent),
        };
        let in_memory = l
            .mem
            .front()
            .is_some_and(|m| m.rec.seq <= sent.saturating_add(1));
        let lost = !handed_out && !in_memory;
        if lost {
            self.metrics.buffer_corrupt_regions.inc();
        }
        if let Some(suppressed) = self.log_damage.allow(LOG_EVERY_MS, now_ms) {
            tracing::error!(
                lane = l.lane.dir_name(),
                segment = d.base,
                offset = d.offset,
                skipped_bytes = d.bytes,
                after_seq = sent,
                next_seq = next,
                records_lost = lost,
                damage = d.what,
                suppressed,
                "A buffer record failed its check when read back (damage on the storage); skipped to the next valid record of the segment. `sensor-gateway buffer verify` shows the damage; check the SD card."
            );
        }
    }

    /// Opening or reading a segment failed at `pos`: try again later from
    /// there, with a growing delay. Returns true when the retries are used
    /// up and the rest of the segment was given up (counted), false when
    /// the lane waits for the retry.
    fn read_io_failed(
        &mut self,
        lane: Lane,
        base: u64,
        pos: u64,
        e: &std::io::Error,
        now_ms: i64,
    ) -> bool {
        self.metrics.buffer_read_errors.inc();
        let l = &mut self.lanes[lane];
        l.reader = None;
        let failures = match l.read_retry {
            Some(rt) if rt.base == base => rt.failures + 1,
            _ => 1,
        };
        let lane_name = l.lane.dir_name();
        if failures <= READ_RETRIES {
            let delay = (READ_RETRY_FIRST_MS << (failures - 1).min(16)).min(READ_RETRY_MAX_MS);
            l.read_retry = Some(ReadRetry {
                base,
                pos,
                at_ms: now_ms.saturating_add(delay),
                failures,
            });
            if let Some(suppressed) = self.log_read_retry.allow(LOG_EVERY_MS, now_ms) {
                tracing::warn!(lane = lane_name, segment = base, offset = pos, error = %e, retry_in_ms = delay, attempt = failures, suppressed, "Cannot read a buffer segment; this lane waits and tries again (nothing is skipped). Check the state directory's disk.");
            }
            return false;
        }
        l.read_retry = None;
        let (last, bytes) = l
            .segments
            .iter()
            .find(|s| s.base == base)
            .map_or((0, 0), |s| (s.last, s.bytes));
        l.sent_hwm = l.sent_hwm.max(last);
        self.metrics.buffer_unreadable_segments.inc();
        self.metrics
            .buffer_corrupt_bytes
            .add(bytes.saturating_sub(pos));
        tracing::error!(lane = lane_name, segment = base, offset = pos, last_seq = last, error = %e, attempts = failures, "A buffer segment stayed unreadable; gave up the rest of it (records up to last_seq). Check the state directory's disk.");
        true
    }

    /// The broker acknowledged `seq`.
    pub fn ack(&mut self, seq: u64) {
        if let Some((lane, _)) = self.inflight.remove(&seq) {
            self.settle(lane);
        }
    }

    /// Upstream refused the record `seq` for now (an MQTT 5 PUBACK reason
    /// such as "not authorized" or "quota exceeded"): it is not delivered,
    /// so it goes back to be sent again, first in its lane, and its lane
    /// does not settle past it. Returns false when `seq` is not in flight.
    pub fn retry_later(&mut self, seq: u64) -> bool {
        let Some((lane, m)) = self.inflight.remove(&seq) else {
            return false;
        };
        let resend = &mut self.lanes[lane].resend;
        let at = resend.partition_point(|r| r.rec.seq < seq);
        resend.insert(at, m);
        true
    }

    /// The topic of the in-flight record `seq` (for a log line).
    pub fn in_flight_topic(&self, seq: u64) -> Option<String> {
        self.inflight
            .get(&seq)
            .map(|(_, m)| m.rec.topic.chars().take(LOG_TEXT_MAX).collect())
    }

    /// Records may wait this much longer than `spill_after` before they
    /// count as unacknowledged for too long: the time a record may wait
    /// for its batch (`[upstream.batch] max_delay`), so that batching
    /// alone never writes a record to disk in `outage` mode.
    pub fn set_batch_wait_ms(&mut self, ms: i64) {
        self.batch_wait_ms = ms.max(0);
    }

    fn spill_after_ms(&self) -> i64 {
        self.cfg.spill_after_ms.saturating_add(self.batch_wait_ms)
    }

    /// `buffer.max_age` in ms (0: records never expire); upstream derives
    /// each message's expiry from it.
    pub fn max_age_ms(&self) -> i64 {
        self.cfg.max_age_ms
    }

    /// Upstream refused to take the record `seq`, handed out by
    /// [`Buffer::next_unsent`] and not acknowledged (its topic is too long
    /// or holds a wildcard, say): it is set aside instead of blocking its
    /// lane. It leaves the in-flight set for good, is appended to
    /// `quarantine/rejected-records.jsonl` (while that file is under
    /// [`SET_ASIDE_FILE_MAX`]), counted and logged, and its lane settles
    /// past it. Returns false when `seq` is not in flight.
    pub fn set_aside(&mut self, seq: u64, reason: &str, now_ms: i64) -> bool {
        let Some((lane, m)) = self.inflight.remove(&seq) else {
            return false;
        };
        let recorded = self.record_set_aside(&m.rec, reason, now_ms);
        self.metrics.buffer_set_aside.inc();
        if let Some(suppressed) = self.log_set_aside.allow(LOG_EVERY_MS, now_ms) {
            let topic: String = m.rec.topic.chars().take(LOG_TEXT_MAX).collect();
            let reason: String = reason.chars().take(LOG_TEXT_MAX).collect();
            match &recorded {
                Ok(path) => {
                    tracing::warn!(seq, lane = lane.dir_name(), topic = ?topic, topic_len = m.rec.topic.len(), reason = ?reason, file = %path.display(), suppressed, "Upstream refused a record; set it aside in the file named here and went on with the next. Fix the topic template or the sensor that produced it.")
                }
                Err(e) => {
                    tracing::warn!(seq, lane = lane.dir_name(), topic = ?topic, topic_len = m.rec.topic.len(), reason = ?reason, not_recorded = %e, suppressed, "Upstream refused a record; dropped it (counted) and went on with the next. Fix the topic template or the sensor that produced it.")
                }
            }
        }
        self.settle(lane);
        true
    }

    /// Appends a set-aside record to the quarantine file, one JSON object
    /// per line, outsider text truncated; returns the file's path.
    fn record_set_aside(
        &mut self,
        rec: &Record,
        reason: &str,
        now_ms: i64,
    ) -> Result<PathBuf, String> {
        let path = self.root.join("quarantine").join(SET_ASIDE_FILE);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if size >= SET_ASIDE_FILE_MAX {
            return Err(format!(
                "{} has reached {SET_ASIDE_FILE_MAX} bytes",
                path.display()
            ));
        }
        let payload =
            String::from_utf8_lossy(&rec.payload[..rec.payload.len().min(SET_ASIDE_TEXT_MAX)]);
        let line = serde_json::json!({
            "seq": rec.seq,
            "lane": rec.lane.dir_name(),
            "ts_ms": rec.ts_ms,
            "set_aside_ms": now_ms,
            "reason": truncate_str(reason, SET_ASIDE_TEXT_MAX),
            "topic": truncate_str(&rec.topic, SET_ASIDE_TEXT_MAX),
            "topic_len": rec.topic.len(),
            "payload": payload,
            "payload_len": rec.payload.len(),
        });
        let mut text = line.to_string();
        text.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))?;
        self.metrics.buffer_bytes_written.add(text.len() as u64);
        Ok(path)
    }

    /// Recomputes a lane's acked mark and frees what it covers.
    fn settle(&mut self, lane: Lane) {
        let l = &self.lanes[lane];
        let lowest_open = self
            .inflight
            .iter()
            .filter(|(_, (ln, _))| *ln == lane)
            .map(|(s, _)| *s)
            .chain(l.resend.iter().map(|m| m.rec.seq))
            .min();
        let acked = match lowest_open {
            Some(s) => s - 1,
            None => l.sent_hwm,
        };
        if acked > l.acked {
            self.sync_wanted = true;
            let l = &mut self.lanes[lane];
            l.acked = acked;
            while l.mem.front().is_some_and(|m| m.rec.seq <= acked) {
                l.pop_mem_front();
            }
            self.cursor_dirty = true;
            self.delete_acked_segments(lane);
        }
    }

    fn delete_acked_segments(&mut self, lane: Lane) {
        let mark = self.lanes[lane].acked.min(self.durable_acked[lane]);
        let l = &mut self.lanes[lane];
        while l.segments.front().is_some_and(|s| {
            s.last <= mark && (s.records > 0 || l.segments.len() > 1 || l.writer.is_none())
        }) {
            let seg = l.segments.pop_front().expect("front exists");
            if l.segments.is_empty() {
                l.writer = None;
            }
            if l.reader.as_ref().is_some_and(|r| r.base == seg.base) {
                l.reader = None;
            }
            let _ = std::fs::remove_file(&seg.path);
            self.disk_bytes -= seg.bytes;
            // Space was freed: learn the filesystem's real size again.
            self.physical_limit = None;
        }
    }

    /// The connection was lost: in-flight records are sent again later,
    /// in order. Returns how many.
    pub fn rewind(&mut self) -> usize {
        let n = self.inflight.len();
        let inflight = std::mem::take(&mut self.inflight);
        for (_, (lane, m)) in inflight.into_iter().rev() {
            self.lanes[lane].resend.push_front(m);
        }
        for l in self.lanes.iter_mut() {
            l.resend.make_contiguous().sort_by_key(|m| m.rec.seq);
        }
        n
    }

    /// When the pending group commit of alarms is due (`now_ms` as given to
    /// [`Self::push`]); `None` when no alarm waits for one. The sink calls
    /// [`Self::maintain`] at that time, and hands nothing out before it.
    pub fn commit_due(&self) -> Option<i64> {
        self.commit_due_ms
    }

    /// Periodic work: spilling, writing, group commit, cursor.
    pub fn maintain(&mut self, now_ms: i64, upstream_up: bool) {
        let went_down = self.upstream_up && !upstream_up;
        self.upstream_up = upstream_up;
        if self.cfg.durability == Durability::Outage && (went_down || self.spill_overdue(now_ms)) {
            self.spill_all();
        }
        let due = now_ms.saturating_sub(self.last_sync_ms) >= self.cfg.commit_interval_ms
            || self.commit_due_ms.is_some_and(|at| now_ms >= at);
        if due {
            self.flush_and_sync(now_ms);
        } else {
            for lane in LANES {
                if let Err(PersistError::Write { error, .. }) =
                    self.persist(lane, Persist::Write, now_ms)
                {
                    self.write_failed(0, &error);
                }
            }
        }
        self.gauges_stale = now_ms.saturating_sub(self.last_gauges_ms) < GAUGES_EVERY_MS;
        if !self.gauges_stale {
            self.last_gauges_ms = now_ms;
            self.update_gauges(now_ms);
        }
    }

    /// When [`Self::maintain`] next has work that only time brings (`now_ms`
    /// as given to it): the group commit, a record that waited
    /// `spill_after`, the fsync after `commit_interval` of what was written,
    /// pushed or settled since the last one (or a cursor left to write), a read or reservation retry,
    /// gauges left stale. `None`: nothing until the next push, ack or
    /// change of the link. The sink sleeps until then instead of ticking.
    pub fn next_due(&self, now_ms: i64) -> Option<i64> {
        let spill = (self.cfg.durability == Durability::Outage)
            .then(|| self.oldest_unspilled())
            .flatten()
            .map(|pushed| pushed.saturating_add(self.spill_after_ms()));
        let has_disk = self.lanes.iter().any(|l| !l.segments.is_empty());
        let unsynced = self.sync_wanted
            || (self.cursor_dirty && has_disk)
            || self
                .lanes
                .iter()
                .any(|l| l.unwritten || l.writer.as_ref().is_some_and(|w| w.has_unsynced()));
        let sync = unsynced.then(|| {
            self.last_sync_ms
                .saturating_add(self.cfg.commit_interval_ms)
        });
        let read_retry = self
            .lanes
            .iter()
            .filter_map(|l| l.read_retry.map(|r| r.at_ms))
            .min();
        let gauges = self
            .gauges_stale
            .then(|| self.last_gauges_ms.saturating_add(GAUGES_EVERY_MS));
        [
            self.commit_due_ms,
            spill,
            sync,
            read_retry,
            self.reserve_retry_at_ms,
            gauges,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.max(now_ms))
    }

    /// When the oldest record still without a disk copy and not settled
    /// was pushed.
    fn oldest_unspilled(&self) -> Option<i64> {
        LANES
            .into_iter()
            .filter_map(|lane| {
                let l = &self.lanes[lane];
                l.unspilled
                    .iter()
                    .find(|&&(_, seq)| {
                        seq > l.acked && self.find_copy(lane, seq).is_some_and(|m| !m.on_disk)
                    })
                    .map(|&(pushed, _)| pushed)
            })
            .min()
    }

    /// Whether a record without a disk copy has waited `spill_after`
    /// unacknowledged. Amortised O(1): settled entries are dropped from the
    /// front as they are met.
    fn spill_overdue(&mut self, now_ms: i64) -> bool {
        let spill_after = self.spill_after_ms();
        for lane in LANES {
            loop {
                let l = &self.lanes[lane];
                let Some(&(pushed, seq)) = l.unspilled.front() else {
                    break;
                };
                let settled = seq <= l.acked || self.find_copy(lane, seq).is_none_or(|m| m.on_disk);
                if !settled {
                    if now_ms.saturating_sub(pushed) >= spill_after {
                        return true;
                    }
                    break;
                }
                self.lanes[lane].unspilled.pop_front();
            }
        }
        false
    }

    /// The in-memory copy of an unacknowledged record, if any.
    fn find_copy(&self, lane: Lane, seq: u64) -> Option<&MemRecord> {
        if let Some((_, m)) = self.inflight.get(&seq) {
            return Some(m);
        }
        let l = &self.lanes[lane];
        let i = l.mem.partition_point(|m| m.rec.seq < seq);
        l.mem
            .get(i)
            .filter(|m| m.rec.seq == seq)
            .or_else(|| l.resend.iter().find(|m| m.rec.seq == seq))
    }

    /// Makes a lane's records as durable as `mode` says
    /// ([`LaneLog::persist`]). A failed write is unwound (the records stay
    /// in memory; when the disk is full, the bound shrinks to what fits so
    /// that `when_full` applies from now on); failures are counted and
    /// logged.
    fn persist(&mut self, lane: Lane, mode: Persist, now_ms: i64) -> Result<(), PersistError> {
        let result = self.lanes[lane].persist(mode, &self.metrics);
        match &result {
            Ok(()) => {}
            Err(PersistError::Write { error, unwound }) => self.unwound(lane, *unwound, error),
            Err(PersistError::Sync(e)) => {
                self.metrics.buffer_write_errors.inc();
                if let Some(suppressed) = self.log_write.allow(LOG_EVERY_MS, now_ms) {
                    tracing::error!(error = %e, similar_suppressed = suppressed, "fsync of the buffer failed; records written since the last fsync may be lost to a power cut. Check the state directory's disk.");
                }
            }
        }
        result
    }

    /// Accounts for a write the lane cut back: the in-flight copies of the
    /// unwritten records lose their disk copy too.
    fn unwound(&mut self, lane: Lane, u: lane::Unwound, e: &std::io::Error) {
        self.disk_bytes = self.disk_bytes.saturating_sub(u.freed_bytes);
        let from = self.unwound_from[lane].get_or_insert(u.first_unwritten);
        *from = (*from).min(u.first_unwritten);
        for (_, m) in self.inflight.values_mut().filter(|(ln, _)| *ln == lane) {
            if m.rec.seq >= u.first_unwritten {
                m.on_disk = false;
            }
        }
        self.metrics.buffer_write_errors.inc();
        let full = e.raw_os_error() == Some(28);
        if full {
            self.physical_limit = Some(self.disk_bytes);
        }
        if let Some(suppressed) = self.log_write.allow(LOG_EVERY_MS, crate::now_ms()) {
            tracing::error!(
                error = %e,
                disk_bytes = self.disk_bytes,
                similar_suppressed = suppressed,
                "A buffer write failed; the unwritten records stay in memory.{}",
                if full { " The disk is full: buffer.when_full applies at the current size." } else { "" }
            );
        }
    }

    /// The byte bound in force: `max_disk_bytes`, or less when the
    /// filesystem turned out to be smaller.
    fn bound(&self) -> u64 {
        self.physical_limit
            .map_or(self.cfg.max_disk_bytes, |p| p.min(self.cfg.max_disk_bytes))
    }

    /// Writes and fsyncs everything, and persists the cursor if it moved.
    pub fn flush_and_sync(&mut self, now_ms: i64) {
        for lane in LANES {
            if let Err(PersistError::Write { error, .. }) =
                self.persist(lane, Persist::Sync, now_ms)
            {
                self.write_failed(0, &error);
            }
        }
        self.commit_due_ms = None;
        self.sync_wanted = false;
        // Everything at or below the mark is durable, acknowledged or
        // counted as dropped: a record still only in memory (a summary held
        // in `outage` mode while upstream acknowledges promptly, or one whose
        // write failed) keeps the mark below it, although later records (an
        // alarm, say) may be on disk already. The core forgets alarm events
        // up to this mark; tests read it as "durable".
        let first_in_memory_only = self
            .lanes
            .iter()
            .flat_map(|l| l.mem.iter().chain(l.resend.iter()))
            .chain(self.inflight.values().map(|(_, m)| m))
            .filter(|m| !m.on_disk)
            .map(|m| m.rec.seq)
            .min();
        self.last_synced_seq = match first_in_memory_only {
            Some(seq) => self.highest_written_seq.min(seq.saturating_sub(1)),
            None => self.highest_written_seq,
        };
        self.metrics
            .buffer_last_synced_seq
            .set(self.last_synced_seq as i64);
        self.last_sync_ms = now_ms;
        let has_disk = self.lanes.iter().any(|l| !l.segments.is_empty());
        if self.cursor_dirty && has_disk {
            let _ = self.write_cursor(now_ms);
        }
    }

    /// Shutdown: everything in memory goes to disk and is fsynced.
    pub fn close(&mut self, now_ms: i64) {
        self.spill_all();
        self.cursor_dirty = true;
        self.flush_and_sync(now_ms);
        let _ = self.write_cursor(now_ms);
        self.update_gauges(now_ms);
        self.last_gauges_ms = now_ms;
    }

    /// Extends the reservation past `at_least` and makes it durable: first
    /// `<state_dir>/seq.reserved`, then the cursor. Returns whether it is
    /// durable; if not, the reservation stays where it was, and the next
    /// attempt is made no sooner than a second later.
    fn reserve(&mut self, at_least: u64, now_ms: i64) -> bool {
        if self.reserve_retry_at_ms.is_some_and(|at| now_ms < at) {
            return false;
        }
        let old = self.reserved;
        let want = at_least.saturating_add(RESERVE_BLOCK);
        let result = cursor::write_seq_file(&self.state_dir, want)
            .map(|n| {
                self.metrics.buffer_bytes_written.add(n);
            })
            .and_then(|()| {
                self.reserved = want;
                self.write_cursor(now_ms)
            });
        let Err(e) = result else {
            self.reserve_retry_at_ms = None;
            return true;
        };
        self.reserved = old;
        self.reserve_retry_at_ms = Some(now_ms.saturating_add(1000));
        self.metrics.buffer_reservation_failures.inc();
        if let Some(suppressed) = self.log_reserve.allow(LOG_EVERY_MS, now_ms) {
            tracing::error!(state_dir = %self.state_dir.display(), error = %e, reserved = old, suppressed, "Cannot make the sequence reservation durable; records numbered from `reserved` on wait until it can (retried every second). Check that the state directory is writable and its disk healthy.");
        }
        false
    }

    /// Writes the cursor (acknowledged marks and the reservation).
    fn write_cursor(&mut self, now_ms: i64) -> std::io::Result<()> {
        self.cursor_gen += 1;
        let c = cursor::Cursor {
            generation: self.cursor_gen,
            acked_summaries: self.lanes[Lane::Summary].acked,
            acked_alarms: self.lanes[Lane::Alarm].acked,
            reserved: self.reserved,
        };
        match cursor::write_cursor(&self.root, &c) {
            Ok(n) => {
                self.metrics.buffer_bytes_written.add(n);
                self.cursor_dirty = false;
                self.durable_acked = c.acked();
                for lane in LANES {
                    self.delete_acked_segments(lane);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.buffer_write_errors.inc();
                if let Some(suppressed) = self.log_cursor.allow(LOG_EVERY_MS, now_ms) {
                    tracing::error!(error = %e, suppressed, "Cannot write the buffer cursor; records may be sent again after a restart. Check that the state directory is writable and its disk healthy.");
                }
                Err(e)
            }
        }
    }

    fn update_gauges(&mut self, now_ms: i64) {
        self.metrics.buffer_disk_bytes.set(self.disk_bytes as i64);
        let mem: u64 = self.lanes.iter().map(|l| l.mem_bytes).sum();
        self.metrics.buffer_memory_bytes.set(mem as i64);
        self.metrics.upstream_queue_records.set(self.len() as i64);
        self.metrics
            .upstream_queue_bytes
            .set((self.disk_bytes + mem) as i64);
        let oldest = self
            .lanes
            .iter()
            .flat_map(|l| {
                l.segments
                    .iter()
                    .filter(move |s| s.last > l.acked)
                    .map(|s| s.first_ts_ms)
            })
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0);
        self.metrics.buffer_oldest_ts_ms.set(oldest);
        let mut mem_only_bytes = 0;
        for lane in LANES {
            let b = self.backlog(lane);
            mem_only_bytes += b.mem_only_bytes;
            let m = &self.metrics;
            m.backlog_records.set(lane, b.records as i64);
            m.backlog_bytes
                .set(lane, (b.disk_bytes + b.mem_only_bytes) as i64);
            let age_ms = b
                .oldest_ts_ms
                .map_or(0, |t| now_ms.saturating_sub(t).max(0));
            m.backlog_oldest_age_seconds.set(lane, age_ms / 1000);
        }
        // What the disk bound leaves, counting what memory holds and an
        // outage would write.
        let free = self
            .bound()
            .saturating_sub(self.disk_bytes.saturating_add(mem_only_bytes));
        let rate = self.input_rate.bytes_per_sec(now_ms);
        self.metrics
            .outage_seconds_left
            .set(outage::seconds_left(free, rate));
    }

    /// What waits for delivery in `lane`: records (on disk, only in memory,
    /// or in flight), bytes, and the oldest measurement time (the first
    /// record of the oldest unacknowledged segment or memory queue).
    fn backlog(&self, lane: Lane) -> Backlog {
        let l = &self.lanes[lane];
        let segments = l.segments.iter().filter(|s| s.last > l.acked);
        let mut b = Backlog::default();
        for s in segments {
            b.records += s.records;
            b.disk_bytes += s.bytes;
            b.oldest(s.first_ts_ms);
        }
        let inflight = self
            .inflight
            .values()
            .filter(|(l, _)| *l == lane)
            .map(|(_, m)| m);
        for m in l.resend.iter().chain(&l.mem).chain(inflight) {
            if !m.on_disk {
                b.records += 1;
                b.mem_only_bytes += encoded_len(&m.rec);
                b.oldest(m.rec.ts_ms);
            }
        }
        b
    }

    /// Whether record `seq` of `lane` is accounted for: settled (at or
    /// below the lane's acked mark: acknowledged by upstream, or dropped and
    /// counted), in flight, in memory, or in one of the lane's segments.
    /// Reads the segment whose range covers `seq`; meant for start-up.
    pub fn holds(&mut self, lane: Lane, seq: u64) -> bool {
        if seq <= self.lanes[lane].acked || self.inflight.get(&seq).is_some_and(|(l, _)| *l == lane)
        {
            return true;
        }
        let l = &self.lanes[lane];
        if l.mem
            .iter()
            .chain(l.resend.iter())
            .any(|m| m.rec.seq == seq)
        {
            return true;
        }
        // Written records may still wait in the writer; what cannot be
        // written stays in memory, checked above.
        let _ = self.persist(lane, Persist::Write, crate::now_ms());
        self.lanes[lane]
            .segments
            .iter()
            .filter(|s| s.base <= seq && seq <= s.last)
            .any(|s| {
                let mut found = false;
                let _ = segment::for_each_record(&s.path, |r| found |= r.seq == seq);
                found
            })
    }
}

/// What waits for delivery in one lane ([`Buffer::backlog`]).
#[derive(Debug, Default)]
struct Backlog {
    records: u64,
    /// Bytes of the lane's segments that hold unacknowledged records.
    disk_bytes: u64,
    /// Encoded bytes of records held only in memory.
    mem_only_bytes: u64,
    oldest_ts_ms: Option<i64>,
}

impl Backlog {
    fn oldest(&mut self, ts_ms: i64) {
        if ts_ms > 0 {
            self.oldest_ts_ms = Some(self.oldest_ts_ms.map_or(ts_ms, |t| t.min(ts_ms)));
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
