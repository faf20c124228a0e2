//! Operator tooling: `sensor-gateway buffer status` and `buffer verify`.
//! Both only read; neither changes the state directory.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::cursor;
use super::segment;

/// One lane's contents.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LaneStatus {
    pub name: &'static str,
    pub segments: usize,
    /// Records not yet acknowledged.
    pub records: u64,
    pub bytes: u64,
    pub oldest_ts_ms: Option<i64>,
    pub newest_ts_ms: Option<i64>,
    pub acked: u64,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub file: PathBuf,
    pub what: String,
}

fn lanes(root: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("summaries", root.join("summaries")),
        ("alarms", root.join("alarms")),
    ]
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The buffer root for a state directory.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("buffer")
}

pub fn status(state_dir: &Path) -> Vec<LaneStatus> {
    let root = root(state_dir);
    let cursor = cursor::read_cursor(&root);
    lanes(&root)
        .into_iter()
        .map(|(name, dir)| {
            let acked = if name == "alarms" {
                cursor.acked_alarms
            } else {
                cursor.acked_summaries
            };
            let mut st = LaneStatus {
                name,
                acked,
                ..LaneStatus::default()
            };
            for path in segment_files(&dir) {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                st.segments += 1;
                st.bytes += meta.len();
                let _ = segment::for_each_record(&path, |r| {
                    if r.seq > acked {
                        st.records += 1;
                        st.oldest_ts_ms =
                            Some(st.oldest_ts_ms.map_or(r.ts_ms, |t: i64| t.min(r.ts_ms)));
                        st.newest_ts_ms =
                            Some(st.newest_ts_ms.map_or(r.ts_ms, |t: i64| t.max(r.ts_ms)));
                    }
                });
            }
            st
        })
        .collect()
}

/// Renders `status` for a terminal; `max_disk_bytes` (when known) gives the
/// estimate of outage time left at the rate the backlog grew.
pub fn render_status(lanes: &[LaneStatus], now_ms: i64, max_disk_bytes: Option<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>12} {:>9} {:>14}",
        "lane", "segments", "records", "MiB", "oldest age"
    );
    let mut total_bytes = 0;
    let mut span_ms = 0i64;
    for l in lanes {
        total_bytes += l.bytes;
        let age = l
            .oldest_ts_ms
            .map(|t| human_ms(now_ms - t))
            .unwrap_or_else(|| "-".into());
        if let (Some(a), Some(b)) = (l.oldest_ts_ms, l.newest_ts_ms) {
            span_ms = span_ms.max(b - a);
        }
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>12} {:>9.2} {:>14}",
            l.name,
            l.segments,
            l.records,
            l.bytes as f64 / 1048576.0,
            age
        );
    }
    if let Some(max) = max_disk_bytes {
        let _ = write!(
            out,
            "disk: {:.2} of {:.2} MiB used",
            total_bytes as f64 / 1048576.0,
            max as f64 / 1048576.0
        );
        if span_ms > 1000 && total_bytes > 0 {
            let rate = total_bytes as f64 / (span_ms as f64 / 1000.0);
            let left = (max.saturating_sub(total_bytes)) as f64 / rate;
            let _ = write!(
                out,
                "; at the backlog's rate ({:.1} KiB/s) about {} of outage left",
                rate / 1024.0,
                human_ms((left * 1000.0) as i64)
            );
        }
        out.push('\n');
    }
    out
}

fn human_ms(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs((ms.max(0) / 1000) as u64))
        .to_string()
}

/// Checks every segment like fsck; an empty list means healthy.
pub fn verify(state_dir: &Path) -> Vec<Damage> {
    let root = root(state_dir);
    let mut damage = Vec::new();
    for (name, dir) in lanes(&root) {
        let lane = if name == "alarms" { 1 } else { 0 };
        let mut last_seq = 0u64;
        for path in segment_files(&dir) {
            let mut note = |what: String| {
                damage.push(Damage {
                    file: path.clone(),
                    what,
                })
            };
            if path.extension().is_none_or(|e| e != "seg") {
                note("not a segment file".into());
                continue;
            }
            let buf = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    note(format!("unreadable: {e}"));
                    continue;
                }
            };
            let scan = segment::scan(&buf);
            if let Some(e) = scan.header_error {
                note(format!("bad header: {e}"));
            }
            if let Some((l, _)) = scan.header {
                if l != lane {
                    note(format!("header says lane {l}, directory is lane {lane}"));
                }
            }
            for (from, to) in &scan.middle_damage {
                note(format!("damaged bytes {from}..{to} between valid records"));
            }
            if let Some(t) = scan.tail_from {
                note(format!(
                    "torn or damaged tail from byte {t} ({} bytes)",
                    buf.len() - t
                ));
            }
            if let (Some(first), Some(last)) = (scan.first_seq, scan.last_seq) {
                if first <= last_seq {
                    note(format!(
                        "sequence numbers go back: {first} after {last_seq}"
                    ));
                }
                last_seq = last;
            }
        }
    }
    let files = segment_files(&root.join("quarantine"));
    let rejected = files.iter().any(|f| f.ends_with(super::SET_ASIDE_FILE));
    let quarantined = files.len() - usize::from(rejected);
    let mut notes = Vec::new();
    if quarantined > 0 {
        notes.push(format!(
            "{quarantined} quarantined file(s) from earlier recoveries"
        ));
    }
    if rejected {
        notes.push(format!(
            "records upstream refused are listed in {}",
            super::SET_ASIDE_FILE
        ));
    }
    if !notes.is_empty() {
        damage.push(Damage {
            file: root.join("quarantine"),
            what: format!(
                "{} (informational; delete after inspection)",
                notes.join("; ")
            ),
        });
    }
    damage
}

/// Whether the damage list holds anything beyond the informational
/// quarantine note.
pub fn is_damaged(damage: &[Damage]) -> bool {
    damage.iter().any(|d| !d.file.ends_with("quarantine"))
}
