//! Start-up recovery: every segment is scanned; a torn tail is cut back to
//! the last valid record; a segment with a bad header or damage in the middle
//! is rewritten with its valid records and the original is moved to
//! `quarantine/`. Nothing found on disk makes start-up fail: unreadable files
//! are quarantined or skipped, and reported.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::lane::SegInfo;
use super::segment;
use super::RecoveryReport;
use crate::metrics::Metrics;
use crate::model::Lane;

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
    let mut n = 0;
    let _ = segment::for_each_record(path, |r| n += u64::from(r.seq > after));
    n
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
                    metrics.buffer_torn_tails.inc();
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
            metrics.buffer_quarantined.inc();
            tracing::error!(file = %path.display(), moved_to = %target.display(), reason = why, "Quarantined a damaged buffer file; its valid records were salvaged.");
            report.quarantined.push(target);
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            tracing::error!(file = %path.display(), reason = why, error = %e, "Cannot quarantine a damaged buffer file; removed it.");
        }
    }
}
