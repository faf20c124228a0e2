//! The shipped systemd unit: `systemd-analyze verify` accepts it, its
//! exposure score stays at 1.5 or lower, and the binary accepts the
//! arguments it is started with. Needs `systemd-analyze` (Debian package
//! `systemd`); under CI (`CI` set) its absence fails the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY_IN_UNIT: &str = "/usr/bin/sensor-gateway";

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sensor-gateway.service")
}

/// `systemd-analyze` with `args`, or `None` (outside CI) when it is not
/// installed.
fn analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("systemd-analyze cannot run ({e}); skipping (CI fails instead)");
            None
        }
        Err(e) => panic!("systemd-analyze cannot run ({e}): install Debian's `systemd` package"),
    }
}

/// The unit with its binary path pointing at the binary under test, in a
/// directory of its own (verify needs the executable to exist).
fn unit_for_this_build() -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(unit_file()).unwrap();
    assert!(text.contains(BINARY_IN_UNIT));
    let text = text.replace(BINARY_IN_UNIT, env!("CARGO_BIN_EXE_sensor-gateway"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sensor-gateway.service");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn the_shipped_unit_verifies_without_warnings() {
    let (_dir, unit) = unit_for_this_build();
    let Some(out) = analyze(&["verify", unit.to_str().unwrap()]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(stderr.trim().is_empty(), "warnings:\n{stderr}");
}

#[test]
fn the_shipped_unit_exposure_score_is_at_most_1_5() {
    let unit = unit_file();
    let Some(out) = analyze(&["security", "--offline=true", unit.to_str().unwrap()]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "warnings:\n{stderr}");
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for sensor-gateway.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}"));
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{stdout}");
}

#[test]
fn the_binary_accepts_the_arguments_the_unit_starts_it_with() {
    let text = std::fs::read_to_string(unit_file()).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let Some(cmd) = ["ExecStartPre=", "ExecStart="]
            .iter()
            .find_map(|k| line.strip_prefix(k))
        else {
            continue;
        };
        let mut words = cmd.split_whitespace();
        assert_eq!(words.next(), Some(BINARY_IN_UNIT), "{line}");
        // `--help` after the arguments: clap rejects an unknown one first.
        let out = Command::new(env!("CARGO_BIN_EXE_sensor-gateway"))
            .args(words)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}
