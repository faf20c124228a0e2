//! The pid file of a running gateway (`run --pid-file`), and signalling the
//! gateway it names (`reload --pid-file`).
//!
//! The file holds the process id in decimal and a newline. It is written
//! atomically (a temporary file beside it, then a rename), so a reader never
//! sees half of it, and removed when the gateway exits cleanly. Before it
//! signals, `reload` checks that the process the file names is a
//! `sensor-gateway` (its command line, where `/proc` shows it), so that a
//! stale file whose pid was reused never sends SIGHUP to another program.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the running gateway could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot read the pid file {path}: {source} (is the gateway running with `run --pid-file {path}`?)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pid file {path} does not hold a process id (it holds {text:?})")]
    Malformed { path: PathBuf, text: String },
    #[error(
        "no process {pid} is running: the pid file {path} is stale (the gateway is not running)"
    )]
    NotRunning { path: PathBuf, pid: i32 },
    #[error("process {pid}, named by the pid file {path}, is not a sensor-gateway (its command line is {cmdline:?}): the file is stale; not signalling it")]
    NotTheGateway {
        path: PathBuf,
        pid: i32,
        cmdline: String,
    },
    #[error("cannot signal process {pid}: {source} (run as the gateway's user or as root)")]
    Kill { pid: i32, source: std::io::Error },
}

/// Writes `pid` to `path` atomically.
pub fn write(path: &Path, pid: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{pid}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes the pid file if it still names `pid` (a newer gateway may have
/// replaced it).
pub fn remove(path: &Path, pid: u32) {
    if read(path).is_ok_and(|p| i64::from(p) == i64::from(pid)) {
        let _ = std::fs::remove_file(path);
    }
}

/// The process id a pid file names.
pub fn read(path: &Path) -> Result<i32, SignalError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignalError::Read {
        path: path.to_owned(),
        source,
    })?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(SignalError::Malformed {
            path: path.to_owned(),
            text: text.chars().take(40).collect(),
        }),
    }
}

/// Sends SIGHUP (reload the configuration) to the gateway the pid file
/// names; returns its pid.
pub fn signal_reload(path: &Path) -> Result<i32, SignalError> {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = read(path)?;
    let not_running = || SignalError::NotRunning {
        path: path.to_owned(),
        pid,
    };
    let raw = Pid::from_raw(pid).ok_or_else(not_running)?;
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let is_gateway = cmdline.split(|b| *b == 0).take(2).any(|arg| {
            let arg = String::from_utf8_lossy(arg);
            Path::new(arg.as_ref())
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sensor-gateway"))
        });
        if !is_gateway {
            return Err(SignalError::NotTheGateway {
                path: path.to_owned(),
                pid,
                cmdline: String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .trim()
                    .chars()
                    .take(80)
                    .collect(),
            });
        }
    }
    kill_process(raw, Signal::HUP).map_err(|e| match e {
        rustix::io::Errno::SRCH => not_running(),
        e => SignalError::Kill {
            pid,
            source: e.into(),
        },
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_round_trips_and_is_removed_only_by_its_own_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.pid");
        write(&path, 4242).unwrap();
        assert_eq!(read(&path).unwrap(), 4242);
        remove(&path, 1);
        assert!(path.exists(), "another process's file stays");
        remove(&path, 4242);
        assert!(!path.exists());
    }

    #[test]
    fn reload_refuses_a_missing_malformed_or_foreign_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.pid");
        assert!(matches!(
            signal_reload(&path),
            Err(SignalError::Read { .. })
        ));
        std::fs::write(&path, "not a pid\n").unwrap();
        assert!(matches!(
            signal_reload(&path),
            Err(SignalError::Malformed { .. })
        ));
        // The test binary itself is no sensor-gateway: SIGHUP would kill it.
        write(&path, std::process::id()).unwrap();
        assert!(matches!(
            signal_reload(&path),
            Err(SignalError::NotTheGateway { .. })
        ));
    }
}
