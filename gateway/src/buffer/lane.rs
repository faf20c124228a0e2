//! One lane of the buffer and the I/O it owns: its segments, the segment
//! being written (append, flush, [`LaneLog::persist`], the one place that
//! makes a lane durable, and the unwinding after a failed write), the reader
//! that hands its records back in order, and its in-memory cache. When to
//! write, sync, read or drop is decided by the [`super::Buffer`]; a lane
//! only carries it out and reports what changed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::ops::{Index, IndexMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::{self, Body, ReadError, RecordReader, HEADER_LEN};
use crate::metrics::Metrics;
use crate::model::{Lane, Record};

/// Every lane, in index order.
pub const LANES: [Lane; 2] = [Lane::Summary, Lane::Alarm];

/// One value per lane, indexed by [`Lane`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lanes<T>([T; 2]);

impl<T> Lanes<T> {
    pub fn from_fn(f: impl FnMut(Lane) -> T) -> Self {
        Lanes(LANES.map(f))
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.0.iter_mut()
    }
}

impl<T> Index<Lane> for Lanes<T> {
    type Output = T;
    fn index(&self, lane: Lane) -> &T {
        &self.0[lane as usize]
    }
}

impl<T> IndexMut<Lane> for Lanes<T> {
    fn index_mut(&mut self, lane: Lane) -> &mut T {
        &mut self.0[lane as usize]
    }
}

/// A record held in memory, and whether a copy is in the log already. The
/// record is shared: handing it out, keeping it in flight and resending it
/// copy a pointer, never the topic or payload.
#[derive(Debug, Clone)]
pub struct MemRecord {
    pub rec: Arc<Record>,
    pub on_disk: bool,
    pub pushed_ms: i64,
}

#[derive(Debug)]
pub struct SegInfo {
    pub base: u64,
    pub last: u64,
    pub records: u64,
    pub bytes: u64,
    pub first_ts_ms: i64,
    pub path: PathBuf,
}

#[derive(Debug)]
pub struct Writer {
    file: File,
    /// Encoded records not yet written to the file.
    pending: Vec<u8>,
    /// How many records `pending` holds, and the first one's seq.
    pending_records: u64,
    pending_first_seq: u64,
    /// The file's length and last seq before `pending`.
    flushed_len: u64,
    flushed_last_seq: u64,
    /// Written to the file but not yet fsynced.
    unsynced: bool,
}

impl Writer {
    /// Bytes are waiting to be written or fsynced.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced || !self.pending.is_empty()
    }
}

#[derive(Debug)]
pub struct Reader {
    pub base: u64,
    records: RecordReader<BufReader<File>>,
    pub peeked: Option<Arc<Record>>,
}

impl Reader {
    /// Offset of the next record in the segment.
    pub fn pos(&self) -> u64 {
        self.records.pos()
    }
}

/// A segment whose open or read failed: where to resume and when.
#[derive(Debug, Clone, Copy)]
pub struct ReadRetry {
    pub base: u64,
    pub pos: u64,
    pub at_ms: i64,
    pub failures: u32,
}

/// A damaged region skipped in a segment.
#[derive(Debug, Clone, Copy)]
pub struct Damage {
    pub base: u64,
    pub offset: u64,
    pub bytes: u64,
    pub what: &'static str,
}

/// How far [`LaneLog::persist`] takes the lane's pending records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Into the file (the page cache): survives a crash of the process.
    Write,
    /// Into the file and fsynced: survives a power cut.
    Sync,
    /// As `Sync`, then the segment is closed for writing (a new one is
    /// about to start).
    Seal,
}

/// What a failed write took back: the records from `first_unwritten` on
/// lost their disk copy (they are still in memory) and the log shrank by
/// `freed_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwound {
    pub first_unwritten: u64,
    pub freed_bytes: u64,
}

/// Why [`LaneLog::persist`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Writing failed (typically ENOSPC); the file was cut back to its last
    /// complete record and the writer closed.
    #[error("cannot write a buffer segment: {error}")]
    Write {
        error: std::io::Error,
        unwound: Unwound,
    },
    /// The fsync failed; what was written may be lost to a power cut.
    #[error("cannot fsync a buffer segment: {0}")]
    Sync(std::io::Error),
}

impl PersistError {
    pub fn into_io(self) -> std::io::Error {
        match self {
            PersistError::Write { error, .. } | PersistError::Sync(error) => error,
        }
    }
}

#[derive(Debug)]
pub struct LaneLog {
    pub lane: Lane,
    dir: PathBuf,
    pub segments: VecDeque<SegInfo>,
    pub writer: Option<Writer>,
    pub reader: Option<Reader>,
    pub mem: VecDeque<MemRecord>,
    pub mem_bytes: u64,
    pub resend: VecDeque<MemRecord>,
    /// (pushed at, seq) of records pushed without a disk copy, oldest first;
    /// entries already written or acknowledged are skipped lazily.
    pub unspilled: VecDeque<(i64, u64)>,
    /// Records exist in memory that should be on disk but are not (a
    /// write failed or the disk was full); newer records wait behind them
    /// so that the log stays in sequence order.
    pub unwritten: bool,
    /// Highest seq handed out for publishing (resends aside).
    pub sent_hwm: u64,
    pub acked: u64,
    /// Set while a segment of this lane cannot be opened or read; the lane
    /// hands out nothing newer until it can.
    pub read_retry: Option<ReadRetry>,
    /// A damaged region was skipped; whether it cost a record is known once
    /// the next valid record (or the segment's end) is read.
    pub damage: Option<Damage>,
}

/// Bytes a record costs in memory.
pub fn cost(r: &Record) -> u64 {
    (r.payload.len() + r.topic.len()) as u64 + 64
}

/// Bytes a record takes in a segment, at most.
pub fn encoded_len(r: &Record) -> u64 {
    (segment::RECORD_HEADER_LEN + r.payload.len() + r.topic.len() + 24) as u64
}

impl LaneLog {
    /// A lane over the recovered `segments` of `dir`, acknowledged up to
    /// `acked`.
    pub fn new(lane: Lane, dir: PathBuf, segments: Vec<SegInfo>, acked: u64) -> Self {
        LaneLog {
            lane,
            dir,
            segments: segments.into(),
            writer: None,
            reader: None,
            mem: VecDeque::new(),
            mem_bytes: 0,
            resend: VecDeque::new(),
            unspilled: VecDeque::new(),
            unwritten: false,
            sent_hwm: acked,
            acked,
            read_retry: None,
            damage: None,
        }
    }

    /// Whether the next record needs a new segment (none is open, or the
    /// one being written reached `segment_bytes`).
    pub fn needs_segment(&self, segment_bytes: u64) -> bool {
        self.writer.is_none()
            || self
                .segments
                .back()
                .is_none_or(|s| s.bytes >= segment_bytes)
    }

    /// Starts a segment whose first record is `base`: creates the file with
    /// its header and fsyncs the directory so that the name survives a power
    /// cut. Call after sealing the previous one. Returns the bytes written.
    pub fn create_segment(&mut self, base: u64, metrics: &Metrics) -> std::io::Result<u64> {
        let path = self.dir.join(format!("{base:020}.seg"));
        let header = segment::encode_header(self.lane as u8, base);
        let created = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&header).map(|()| f));
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        metrics.buffer_bytes_written.add(HEADER_LEN as u64);
        // The new name must survive a power cut too.
        super::recover::sync_dir(&self.dir);
        self.segments.push_back(SegInfo {
            base,
            last: base,
            records: 0,
            bytes: HEADER_LEN as u64,
            first_ts_ms: 0,
            path,
        });
        self.writer = Some(Writer {
            file,
            pending: Vec::with_capacity(64 * 1024),
            pending_records: 0,
            pending_first_seq: 0,
            flushed_len: HEADER_LEN as u64,
            flushed_last_seq: base.saturating_sub(1),
            unsynced: true,
        });
        Ok(HEADER_LEN as u64)
    }

    /// Encodes `rec` after the pending bytes of the segment being written
    /// (nothing reaches the file before [`Self::persist`]). Returns the
    /// bytes the segment grew by, or `None` when no segment is open or the
    /// record cannot be encoded.
    pub fn append(&mut self, rec: &Record) -> Option<u64> {
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return None;
        };
        let body = Body {
            seq: rec.seq,
            ts_ms: rec.ts_ms,
            topic: &rec.topic,
            payload: &rec.payload,
        };
        let before = w.pending.len();
        if segment::encode_record(&mut w.pending, &body).is_err() {
            w.pending.truncate(before);
            return None;
        }
        let n = (w.pending.len() - before) as u64;
        if seg.records == 0 {
            seg.first_ts_ms = rec.ts_ms;
        }
        if w.pending_records == 0 {
            w.pending_first_seq = rec.seq;
        }
        w.pending_records += 1;
        seg.bytes += n;
        seg.records += 1;
        seg.last = rec.seq;
        Some(n)
    }

    /// Makes the lane's records as durable as `mode` says: writes the
    /// pending bytes to the file, then (`Sync`, `Seal`) fsyncs it if
    /// anything was written since the last fsync, then (`Seal`) closes the
    /// writer. A failed write unwinds (see [`PersistError::Write`]).
    pub fn persist(&mut self, mode: Persist, metrics: &Metrics) -> Result<(), PersistError> {
        self.write_pending(metrics)?;
        if mode != Persist::Write {
            if let Some(w) = self.writer.as_mut().filter(|w| w.unsynced) {
                let synced = w.file.sync_data();
                if mode == Persist::Seal {
                    self.writer = None;
                }
                synced.map_err(PersistError::Sync)?;
                if let Some(w) = self.writer.as_mut() {
                    w.unsynced = false;
                }
                metrics.buffer_fsyncs.inc();
            }
        }
        if mode == Persist::Seal {
            self.writer = None;
        }
        Ok(())
    }

    /// Writes the pending bytes to the file (no fsync).
    fn write_pending(&mut self, metrics: &Metrics) -> Result<(), PersistError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if w.pending.is_empty() {
            return Ok(());
        }
        let n = w.pending.len() as u64;
        match w.file.write_all(&w.pending) {
            Ok(()) => {
                w.pending.clear();
                w.flushed_len += n;
                w.flushed_last_seq = self.segments.back().map_or(w.flushed_last_seq, |s| s.last);
                w.pending_records = 0;
                w.unsynced = true;
                metrics.buffer_bytes_written.add(n);
                Ok(())
            }
            Err(error) => {
                let unwound = self.unwind();
                Err(PersistError::Write { error, unwound })
            }
        }
    }

    /// A write failed: cuts the file back to its last complete record,
    /// forgets the unwritten records' disk copies in this lane's memory
    /// (the in-flight set is the buffer's to update) and closes the writer.
    fn unwind(&mut self) -> Unwound {
        let Some(mut w) = self.writer.take() else {
            return Unwound {
                first_unwritten: u64::MAX,
                freed_bytes: 0,
            };
        };
        let _ = w.file.set_len(w.flushed_len);
        let _ = w.file.seek(SeekFrom::Start(w.flushed_len));
        let lost_bytes = w.pending.len() as u64;
        let mut freed_bytes = lost_bytes;
        let first_unwritten = w.pending_first_seq;
        if let Some(seg) = self.segments.back_mut() {
            seg.bytes = seg.bytes.saturating_sub(lost_bytes);
            seg.records = seg.records.saturating_sub(w.pending_records);
            seg.last = w.flushed_last_seq;
            if seg.records == 0 {
                let _ = std::fs::remove_file(&seg.path);
                freed_bytes += seg.bytes;
                self.segments.pop_back();
            }
        }
        for m in self.mem.iter_mut().chain(self.resend.iter_mut()) {
            if m.rec.seq >= first_unwritten {
                m.on_disk = false;
            }
        }
        self.unwritten = true;
        Unwound {
            first_unwritten,
            freed_bytes,
        }
    }

    /// Bytes encoded but not yet written to the file.
    pub fn pending_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.pending.len())
    }

    /// Memory the encoding space holds (it keeps its capacity once grown).
    #[cfg(test)]
    pub fn pending_capacity(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.pending.capacity())
    }

    /// Counts the records not yet written to the file (pending) with a seq
    /// above `after`.
    pub fn pending_after(&self, after: u64) -> u64 {
        let Some(w) = self.writer.as_ref() else {
            return 0;
        };
        let mut pos = 0;
        let mut n = 0;
        while let segment::Parsed::Record { body, len } = segment::parse_record(&w.pending[pos..]) {
            n += u64::from(body.seq > after);
            pos += len;
        }
        n
    }

    /// Whether `base` is the segment being written.
    pub fn is_live(&self, base: u64) -> bool {
        self.writer.is_some() && self.segments.back().is_some_and(|s| s.base == base)
    }

    /// Starts reading segment `base` at `path` from byte `pos`.
    pub fn open_reader(&mut self, base: u64, path: &Path, pos: u64) -> std::io::Result<()> {
        self.reader = Some(Reader {
            base,
            records: RecordReader::open(path, pos)?,
            peeked: None,
        });
        Ok(())
    }

    /// Reads the record at the reader's position; `Ok(None)` at the end of
    /// the segment (or without a reader).
    pub fn read_next(&mut self) -> Result<Option<Arc<Record>>, ReadError> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(None);
        };
        let lane = self.lane;
        Ok(r.records.next_record()?.map(|s| {
            Arc::new(Record {
                seq: s.seq,
                lane,
                ts_ms: s.ts_ms,
                topic: s.topic,
                payload: s.payload,
            })
        }))
    }

    /// The record at the reader's position is damaged: moves the reader to
    /// the next valid record of the segment (or its end) and remembers the
    /// damaged region for [`super::Buffer`] to settle. Returns the bytes
    /// skipped.
    pub fn skip_damage(&mut self, what: &'static str) -> std::io::Result<u64> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(0);
        };
        let from = r.records.pos();
        r.records.resync()?;
        let skipped = r.records.pos() - from;
        self.damage = Some(Damage {
            base: r.base,
            offset: from,
            bytes: skipped,
            what,
        });
        Ok(skipped)
    }

    /// Drops a record from the front of the memory cache.
    pub fn pop_mem_front(&mut self) -> Option<MemRecord> {
        let m = self.mem.pop_front()?;
        self.mem_bytes -= cost(&m.rec);
        Some(m)
    }
}
