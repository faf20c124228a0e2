//! Start-up recovery: every segment is scanned; a torn tail is cut back to
//! the last valid record; a segment with a bad header or damage in the middle
//! is rewritten with its valid records and the original is moved to
//! `quarantine/`. Nothing found on disk makes start-up fail: unreadable files
//! are quarantined or skipped, and reported.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::segment::{self, Parsed};
use super::{RecoveryReport, SegInfo};
use crate::metrics::Metrics;
use crate::model::Lane;

const CURSOR_MAGIC: [u8; 8] = *b"SGWCUR\r\n";
const CURSOR_LEN: usize = 44;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub generation: u64,
    pub acked_summaries: u64,
    pub acked_alarms: u64,
    pub reserved: u64,
}

fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    if b.len() != CURSOR_LEN || b[0..8] != CURSOR_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[40..44].try_into().ok()?);
    if crc != crc32fast::hash(&b[0..40]) {
        return None;
    }
    let u = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_le_bytes);
    Some(Cursor {
        generation: u(8)?,
        acked_summaries: u(16)?,
        acked_alarms: u(24)?,
        reserved: u(32)?,
    })
}

/// The newest valid cursor slot, or a zero cursor (everything is resent;
/// upstream deduplicates).
pub fn read_cursor(root: &Path) -> Cursor {
    ["cursor.a", "cursor.b"]
        .iter()
        .filter_map(|n| std::fs::read(root.join(n)).ok())
        .filter_map(|b| decode_cursor(&b))
        .max_by_key(|c| c.generation)
        .unwrap_or_default()
}

/// Writes the slot the generation selects and fsyncs it. Returns the bytes
/// written.
pub fn write_cursor(root: &Path, c: &Cursor) -> std::io::Result<u64> {
    let mut b = [0u8; CURSOR_LEN];
    b[0..8].copy_from_slice(&CURSOR_MAGIC);
    b[8..16].copy_from_slice(&c.generation.to_le_bytes());
    b[16..24].copy_from_slice(&c.acked_summaries.to_le_bytes());
    b[24..32].copy_from_slice(&c.acked_alarms.to_le_bytes());
    b[32..40].copy_from_slice(&c.reserved.to_le_bytes());
    let crc = crc32fast::hash(&b[0..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    let name = if c.generation % 2 == 0 {
        "cursor.a"
    } else {
        "cursor.b"
    };
    let path = root.join(name);
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    f.write_all(&b)?;
    f.sync_data()?;
    if created {
        // A new slot's name survives a power cut only once the directory
        // is fsynced; without it the older slot (an older reservation)
        // would win after the cut.
        File::open(root)?.sync_all()?;
    }
    Ok(CURSOR_LEN as u64)
}

const SEQ_MAGIC: [u8; 8] = *b"SGWSEQ1\n";
const SEQ_LEN: usize = 20;
/// The sequence reservation outside the buffer directory, so that deleting
/// `<state_dir>/buffer` cannot make numbers repeat.
pub const SEQ_FILE: &str = "seq.reserved";

/// The reservation in `<state_dir>/seq.reserved`, if the file is there and
/// checks out.
pub fn read_seq_file(state_dir: &Path) -> Option<u64> {
    let path = state_dir.join(SEQ_FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "Cannot read the sequence reservation file; numbering continues from the buffer's cursor and contents.");
            return None;
        }
    };
    let valid = b.len() == SEQ_LEN
        && b[0..8] == SEQ_MAGIC
        && b[16..20].try_into().ok().map(u32::from_le_bytes) == Some(crc32fast::hash(&b[0..16]));
    if !valid {
        tracing::error!(file = %path.display(), "The sequence reservation file is damaged; numbering continues from the buffer's cursor and contents. It is rewritten at the next reservation.");
        return None;
    }
    b[8..16].try_into().ok().map(u64::from_le_bytes)
}

/// Replaces `<state_dir>/seq.reserved` atomically and durably (temporary
/// file, fsync, rename, fsync of the directory). Returns the bytes written.
pub fn write_seq_file(state_dir: &Path, reserved: u64) -> std::io::Result<u64> {
    let mut b = [0u8; SEQ_LEN];
    b[0..8].copy_from_slice(&SEQ_MAGIC);
    b[8..16].copy_from_slice(&reserved.to_le_bytes());
    let crc = crc32fast::hash(&b[0..16]);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    let tmp = state_dir.join(format!("{SEQ_FILE}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, state_dir.join(SEQ_FILE))?;
    File::open(state_dir)?.sync_all()?;
    Ok(SEQ_LEN as u64)
}

/// fsyncs a directory so that the names in it survive a power cut. Errors
/// are ignored: some filesystems cannot fsync directories, and the next
/// write reports a real disk problem.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Counts records in a segment file with a seq above `after`.
pub fn count_after(path: &Path, after: u64) -> u64 {
    let Ok(buf) = std::fs::read(path) else {
        return 0;
    };
    let s = segment::scan(&buf);
    s.records
        .iter()
        .filter(
            |(off, len)| match segment::parse_record(&buf[*off..*off + *len]) {
                Parsed::Record { body, .. } => body.seq > after,
                _ => false,
            },
        )
        .count() as u64
}

/// Recovers one lane directory; returns its segments, oldest first.
pub(super) fn recover_lane(
    dir: &Path,
    quarantine: &Path,
    lane: Lane,
    report: &mut RecoveryReport,
    metrics: &Metrics,
) -> Vec<SegInfo> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "Cannot list the buffer directory; starting with an empty buffer for this lane.");
            return Vec::new();
        }
    };
    names.sort();
    let mut segments = Vec::new();
    for path in names {
        let is_segment = path.extension().is_some_and(|e| e == "seg");
        if !is_segment {
            // Leftovers of an interrupted salvage or foreign files.
            quarantine_file(&path, quarantine, "not a segment file", report, metrics);
            continue;
        }
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                quarantine_file(
                    &path,
                    quarantine,
                    &format!("unreadable: {e}"),
                    report,
                    metrics,
                );
                continue;
            }
        };
        let scan = segment::scan(&buf);
        let lane_ok = scan.header.is_none_or(|(l, _)| l == lane as u8);
        if scan.is_clean() && lane_ok {
            if scan.records.is_empty() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            segments.push(info(&path, &scan, buf.len() as u64));
            continue;
        }
        if scan.header_error.is_none() && scan.middle_damage.is_empty() && lane_ok {
            // Only a torn tail: cut it off in place.
            let keep = scan.tail_from.unwrap_or(buf.len());
            let cut = File::options().write(true).open(&path).and_then(|f| {
                f.set_len(keep as u64)?;
                f.sync_all()
            });
            match cut {
                Ok(()) => {
                    report.torn_tails += 1;
                    metrics.buffer_torn_tails.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(segment = %path.display(), cut_bytes = buf.len() - keep, "Cut a torn tail off a buffer segment (an interrupted write).");
                    if scan.records.is_empty() {
                        let _ = std::fs::remove_file(&path);
                    } else {
                        segments.push(info(&path, &scan, keep as u64));
                    }
                }
                Err(e) => quarantine_file(
                    &path,
                    quarantine,
                    &format!("cannot truncate: {e}"),
                    report,
                    metrics,
                ),
            }
            continue;
        }
        // Damage inside: salvage the valid records into a fresh segment.
        let why = scan
            .header_error
            .map(|e| format!("bad header ({e})"))
            .or_else(|| (!lane_ok).then(|| "segment of another lane".to_owned()))
            .unwrap_or_else(|| format!("{} damaged range(s) inside", scan.middle_damage.len()));
        quarantine_file(&path, quarantine, &why, report, metrics);
        let salvaged = salvage(&buf, &scan, dir, lane);
        match salvaged {
            Ok(Some((p, s, len))) => {
                tracing::warn!(segment = %p.display(), records = s.records.len(), "Salvaged the valid records of a damaged segment.");
                segments.push(info(&p, &s, len));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Cannot write a salvaged segment; its valid records stay in the quarantined file.")
            }
        }
    }
    segments.sort_by_key(|s| s.base);
    for s in &segments {
        report.segments += 1;
        report.records += s.records;
        report.bytes += s.bytes;
    }
    segments
}

fn info(path: &Path, scan: &segment::Scan, bytes: u64) -> SegInfo {
    SegInfo {
        base: scan.first_seq.unwrap_or(0),
        last: scan.last_seq.unwrap_or(0),
        records: scan.records.len() as u64,
        bytes,
        first_ts_ms: scan.first_ts_ms.unwrap_or(0),
        path: path.to_owned(),
    }
}

fn salvage(
    buf: &[u8],
    scan: &segment::Scan,
    dir: &Path,
    lane: Lane,
) -> std::io::Result<Option<(PathBuf, segment::Scan, u64)>> {
    let Some(first) = scan.first_seq else {
        return Ok(None);
    };
    let mut out = segment::encode_header(lane as u8, first).to_vec();
    for (off, len) in &scan.records {
        out.extend_from_slice(&buf[*off..*off + *len]);
    }
    let tmp = dir.join(format!("{first:020}.salvage"));
    let path = dir.join(format!("{first:020}.seg"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Some((path, segment::scan(&out), out.len() as u64)))
}

fn quarantine_file(
    path: &Path,
    quarantine: &Path,
    why: &str,
    report: &mut RecoveryReport,
    metrics: &Metrics,
) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = quarantine.join(format!("{stamp}-{name}"));
    match std::fs::rename(path, &target) {
        Ok(()) => {
            metrics.buffer_quarantined.fetch_add(1, Ordering::Relaxed);
            tracing::error!(file = %path.display(), moved_to = %target.display(), reason = why, "Quarantined a damaged buffer file; its valid records were salvaged.");
            report.quarantined.push(target);
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            tracing::error!(file = %path.display(), reason = why, error = %e, "Cannot quarantine a damaged buffer file; removed it.");
        }
    }
}
