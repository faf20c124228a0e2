//! The `sensor-gateway` command line: `check` on every shipped config, and
//! on a config with several mistakes.

use std::path::Path;
use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sensor-gateway"))
}

fn configs_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_gateway_config_in_configs_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Scenario files of the simulator are checked by sensor-sim's tests.
        if path.extension().is_none_or(|e| e != "toml") || name.starts_with("sim-") {
            continue;
        }
        let out = gateway()
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} fails check:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let effective = String::from_utf8_lossy(&out.stdout);
        assert!(
            effective.contains("[upstream]"),
            "{name}: effective config printed"
        );
        checked += 1;
    }
    assert!(checked >= 2, "configs/ holds gateway configs");
}

#[test]
fn three_mistakes_are_reported_together_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[gateway]
id = "gw"

[[source]]
kind = "mqtt"
broker = "127.0.0.1:1883"
topic_template = "plant/{line}/{machine}/{sensor}"
qos = 5

[[sensor]]
match = "*/temp"
window = "ten seconds"

[upstream]
broker = "127.0.0.1:1884"
inflght = 10
"#,
    )
    .unwrap();
    let out = gateway()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has 3 mistakes"), "{err}");
    assert!(err.contains("bad.toml:8:7: QoS 5 does not exist"), "{err}");
    assert!(
        err.contains("bad.toml:12:10: `ten seconds` is not a duration"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:16:1: unknown field `inflght`"),
        "{err}"
    );
    assert_eq!(err.matches("hint:").count(), 3, "{err}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = gateway()
        .args(["check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read config file /nonexistent/gateway.toml"));
}

/// Runs `sensor-gateway run` on a config that does not exist (it logs one
/// error and exits 2) with standard error in a file; returns the file's text.
fn run_logging(args: &[&str], journal_stream_is_stderr: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut cmd = gateway();
    cmd.args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stderr(log);
    if journal_stream_is_stderr {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let status = cmd.status().unwrap();
    assert_eq!(status.code(), Some(2), "a missing config exits 2");
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn under_systemd_log_lines_carry_a_syslog_priority_and_no_timestamp() {
    let text = run_logging(&[], true);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("<3>"), "an error is priority 3: {text}");
    assert!(
        !first.contains("ERROR")
            && !first
                .chars()
                .take(8)
                .any(|c| c.is_ascii_digit() && c != '3'),
        "no timestamp or level word, journald adds its own: {first}"
    );
    // The same format when asked for by name; plain text otherwise.
    assert!(run_logging(&["--log-format", "journald"], false).starts_with("<3>"));
    let plain = run_logging(&[], false);
    assert!(
        plain.contains("ERROR") && !plain.starts_with('<'),
        "{plain}"
    );
}

#[test]
fn json_log_lines_are_one_object_each() {
    let text = run_logging(&["--log-format", "json"], false);
    let first = text.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).expect("a JSON object per line");
    assert_eq!(v["level"], "ERROR", "{first}");
    assert!(v["timestamp"].is_string(), "{first}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing.toml"),
        "{first}"
    );
}

#[test]
fn under_journald_each_config_mistake_is_one_error_line_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[gateway]\nid = \"gw\"\nstate_dir = \"/tmp/x\"\n\n[upstream]\nbroker = \"b:1883\"\nqos = 7\n\n[[source]]\nkind = \"mqtt\"\nbroker = \"s:1883\"\ntopic_template = \"p/{sensor}\"\nqos = 5\n",
    )
    .unwrap();
    let out = gateway()
        .args(["run", "--log-format", "journald", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for line in &lines {
        assert!(
            line.starts_with("<3>"),
            "every line is an error record: {text}"
        );
    }
    let at = |n: usize| format!("{}:{n}:", config.display());
    assert!(lines.iter().any(|l| l.contains(&at(7))), "{text}");
    assert!(lines.iter().any(|l| l.contains(&at(13))), "{text}");
}

/// `check` on `path`: its exit code, standard output and standard error.
fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = gateway()
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config in `dir` whose `[upstream]` ends with `account` (on line 6).
fn config_with_account(dir: &Path, account: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[gateway]\nid = \"gw\"\n\n[upstream]\nbroker = \"127.0.0.1:1883\"\n{account}\n\n[[source]]\nkind = \"mqtt\"\nbroker = \"127.0.0.1:1883\"\ntopic_template = \"plant/{{sensor}}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A config whose upstream reads its password from a file of `mode`.
fn config_with_password_file(dir: &Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("upstream-password");
    std::fs::write(&secret, "hunter2-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
    let account = format!(
        "username = \"gw\"\npassword_file = \"{}\"",
        secret.display()
    );
    config_with_account(dir, &account)
}

#[test]
fn a_password_file_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_password_file(dir.path(), 0o644);
    let (code, _, err) = check(&path);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gateway.toml:7:17: the password file"),
        "{err}"
    );
    assert!(err.contains("has mode 0644"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn a_private_password_file_is_accepted_and_check_never_prints_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_password_file(dir.path(), 0o600);
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("password_file = "), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}

#[test]
fn an_inline_password_works_with_a_warning_and_is_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let account = "username = \"gw\"\npassword = \"hunter2-secret\"";
    let path = config_with_account(dir.path(), account);
    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("gateway.toml:7:12"),
        "{stderr}"
    );
    assert!(stdout.contains("password = \"...\""), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}
