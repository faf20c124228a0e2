//! The analytics state file, `<state_dir>/analytics.state`: alarm states,
//! the last events of each alarm and baselines that survive restarts.
//!
//! Layout: the magic `SGWSTAT3`, the body length (u32 LE), the CRC-32 of the
//! body (u32 LE), the body (postcard of [`PersistedState`]). It is replaced
//! atomically: written to a temporary file, fsynced, renamed over the old
//! one, and the directory fsynced. A file that does not check out is set
//! aside (renamed with a `.bad-<ms>` suffix), counted and logged, and the
//! gateway starts without it: a damaged state file never stops start-up.
//!
//! Versions: `SGWSTAT1` (before alarm events were recorded) is still read:
//! its sensors are restored with no recorded events, so nothing is emitted
//! again and their active alarms have occurrence 0 until they clear.
//! `SGWSTAT2` (which kept only the `raised` event of each alarm's latest
//! occurrence and the one event after it) is still read: both events become
//! the alarm's pending events. The next save writes version 3.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alarm::{AlarmKind, SensorAlarms};
use crate::anomaly::Baseline;
use crate::processor::{AlarmLedger, EmittedAlarmEvent, PersistedSensor, PersistedState};

const MAGIC: &[u8; 8] = b"SGWSTAT3";
const MAGIC_V2: &[u8; 8] = b"SGWSTAT2";
const MAGIC_V1: &[u8; 8] = b"SGWSTAT1";
const FILE: &str = "analytics.state";

/// The body of a version 1 file. Do not change: old files decode with it.
#[derive(Serialize, Deserialize)]
struct StateV1 {
    sensors: Vec<SensorV1>,
}

#[derive(Serialize, Deserialize)]
struct SensorV1 {
    id: String,
    alarms: SensorAlarms,
    baseline: Baseline,
}

impl From<StateV1> for PersistedState {
    fn from(v1: StateV1) -> Self {
        PersistedState {
            sensors: v1
                .sensors
                .into_iter()
                .map(|s| PersistedSensor {
                    id: s.id,
                    alarms: s.alarms,
                    baseline: s.baseline,
                    alarm_events: Vec::new(),
                })
                .collect(),
        }
    }
}

/// The body of a version 2 file. Do not change: old files decode with it.
#[derive(Serialize, Deserialize)]
struct StateV2 {
    sensors: Vec<SensorV2>,
}

#[derive(Serialize, Deserialize)]
struct SensorV2 {
    id: String,
    alarms: SensorAlarms,
    baseline: Baseline,
    alarm_events: Vec<LedgerV2>,
}

/// Version 2's ledger entry: the `raised` event of the latest occurrence
/// and the event after it.
#[derive(Serialize, Deserialize)]
struct LedgerV2 {
    kind: AlarmKind,
    raised: Option<EmittedAlarmEvent>,
    last: Option<EmittedAlarmEvent>,
}

impl From<StateV2> for PersistedState {
    fn from(v2: StateV2) -> Self {
        let ledger = |l: LedgerV2| AlarmLedger {
            kind: l.kind,
            occurrence: l.raised.as_ref().map_or(0, |r| r.occurrence),
            events: l.raised.into_iter().chain(l.last).collect(),
        };
        PersistedState {
            sensors: v2
                .sensors
                .into_iter()
                .map(|s| PersistedSensor {
                    id: s.id,
                    alarms: s.alarms,
                    baseline: s.baseline,
                    alarm_events: s.alarm_events.into_iter().map(ledger).collect(),
                })
                .collect(),
        }
    }
}

/// The state file's path inside `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Why a state file was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({what}); it was set aside as {aside}")]
    Damaged {
        path: PathBuf,
        what: &'static str,
        aside: PathBuf,
    },
}

/// Loads the state; `Ok(None)` when there is none yet.
pub fn load(state_dir: &Path, now_ms: i64) -> Result<Option<PersistedState>, LoadError> {
    let path = path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    match decode(&bytes) {
        Ok(s) => Ok(Some(s)),
        Err(what) => {
            let aside = path.with_extension(format!("state.bad-{now_ms}"));
            let _ = std::fs::rename(&path, &aside);
            Err(LoadError::Damaged { path, what, aside })
        }
    }
}

fn decode(bytes: &[u8]) -> Result<PersistedState, &'static str> {
    let magic = bytes.get(..8).unwrap_or_default();
    if bytes.len() < 16 || (magic != MAGIC && magic != MAGIC_V2 && magic != MAGIC_V1) {
        return Err("no state-file header");
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let end = 16usize.checked_add(len).ok_or("truncated")?;
    let body = bytes.get(16..end).ok_or("truncated")?;
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch");
    }
    if magic == MAGIC_V1 {
        return postcard::from_bytes::<StateV1>(body)
            .map(PersistedState::from)
            .map_err(|_| "body does not decode");
    }
    if magic == MAGIC_V2 {
        return postcard::from_bytes::<StateV2>(body)
            .map(PersistedState::from)
            .map_err(|_| "body does not decode");
    }
    postcard::from_bytes(body).map_err(|_| "body does not decode")
}

/// Encodes the state file's bytes.
pub fn encode(state: &PersistedState) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    let body = postcard::to_allocvec(state).unwrap_or_default();
    framed(MAGIC, &body)
}

/// A state file: the version's magic, the body's length and CRC-32, the body.
fn framed(magic: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Replaces the state file atomically and durably.
pub fn save(state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = path(state_dir);
    let tmp = path.with_extension("state.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::PersistedSensor;

    #[test]
    fn round_trip_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), 0).unwrap().is_none());
        let state = PersistedState {
            sensors: vec![PersistedSensor {
                id: "l1/m1/vib".into(),
                alarms: Default::default(),
                baseline: Default::default(),
                alarm_events: Vec::new(),
            }],
        };
        save(dir.path(), &encode(&state)).unwrap();
        assert_eq!(load(dir.path(), 0).unwrap(), Some(state));
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let err = load(dir.path(), 7).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(!path(dir.path()).exists());
        assert!(dir.path().join("analytics.state.bad-7").exists());
        assert!(load(dir.path(), 8).unwrap().is_none());
    }

    #[test]
    fn a_version_1_file_is_restored_without_recorded_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut alarms = SensorAlarms::default();
        alarms.states[2].active = true;
        let v1 = StateV1 {
            sensors: vec![SensorV1 {
                id: "l1/m1/vib".into(),
                alarms: alarms.clone(),
                baseline: Default::default(),
            }],
        };
        let body = postcard::to_allocvec(&v1).unwrap();
        let bytes = framed(MAGIC_V1, &body);
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let state = load(dir.path(), 0).unwrap().unwrap();
        assert_eq!(
            state.sensors,
            [PersistedSensor {
                id: "l1/m1/vib".into(),
                alarms,
                baseline: Default::default(),
                alarm_events: Vec::new(),
            }]
        );
        // Saved again, it is the current version.
        save(dir.path(), &encode(&state)).unwrap();
        assert_eq!(&std::fs::read(path(dir.path())).unwrap()[..8], MAGIC);
        assert_eq!(load(dir.path(), 0).unwrap(), Some(state));
    }

    #[test]
    fn a_version_2_file_keeps_both_recorded_events_pending_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let event = |seq, occurrence, transition| EmittedAlarmEvent {
            seq,
            occurrence,
            transition,
            ts_ms: 1,
            topic: "gw/alarm".into(),
            payload: format!(r#"{{"seq":{seq}}}"#).into_bytes(),
        };
        use crate::alarm::Transition;
        let v2 = StateV2 {
            sensors: vec![SensorV2 {
                id: "l1/m1/vib".into(),
                alarms: SensorAlarms::default(),
                baseline: Default::default(),
                alarm_events: vec![LedgerV2 {
                    kind: AlarmKind::High,
                    raised: Some(event(7, 5, Transition::Raised)),
                    last: Some(event(9, 5, Transition::Cleared)),
                }],
            }],
        };
        let body = postcard::to_allocvec(&v2).unwrap();
        let bytes = framed(MAGIC_V2, &body);
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let state = load(dir.path(), 0).unwrap().unwrap();
        let ledger = &state.sensors[0].alarm_events[0];
        assert_eq!(ledger.kind, AlarmKind::High);
        assert_eq!(ledger.occurrence, 5, "the occurrence of its raised event");
        assert_eq!(
            ledger.events,
            [
                event(7, 5, Transition::Raised),
                event(9, 5, Transition::Cleared)
            ]
        );
        save(dir.path(), &encode(&state)).unwrap();
        assert_eq!(&std::fs::read(path(dir.path())).unwrap()[..8], MAGIC);
        assert_eq!(load(dir.path(), 0).unwrap(), Some(state));
    }
}
