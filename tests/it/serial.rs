//! Serial ports end to end: `sensor-sim serial` writes into a real
//! pseudo-terminal, the real gateway binary reads the other end, and the
//! summaries upstream and the gateway's counters are compared with what the
//! node says it sent.

use std::time::Duration;

use sensor_gateway_e2e::*;

/// Sums the `count` of every distinct summary.
fn total_count(messages: &[serde_json::Value]) -> u64 {
    dedupe(messages)
        .iter()
        .filter_map(|m| m["count"].as_u64())
        .sum()
}

fn n(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as f64
}

struct Run {
    node: serde_json::Value,
    gw: Gateway,
    summaries: Vec<serde_json::Value>,
}

/// Runs a node with `node_args` into a gateway with `port_settings` until
/// the node is done, then stops the gateway (which flushes its windows).
async fn run(format: &str, port_settings: &str, node_args: &[&str]) -> Run {
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("tty");
    let mut args = vec!["--format", format];
    args.extend_from_slice(node_args);
    let node = SerialNode::start(&link, &args).await;
    let settings = format!("format = \"{format}\"\n{port_settings}");
    let mut gw = Gateway::start(&serial_gateway_config(upstream.addr, &link, &settings));
    let node = node.finish(Duration::from_secs(60)).await;
    let readings = n(&node, "readings");
    wait_until(
        "the gateway to take every reading",
        Duration::from_secs(20),
        || gw.metric("gateway_readings_accepted_total") >= readings,
    )
    .await;
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let expected = readings as u64;
    let m = sub.messages.clone();
    wait_until("every reading upstream", Duration::from_secs(10), || {
        total_count(&m.lock().expect("lock")) >= expected
    })
    .await;
    Run {
        node,
        summaries: sub.snapshot(),
        gw,
    }
}

async fn exact(format: &str) {
    let r = run(
        format,
        "",
        &[
            "--count",
            "600",
            "--rate",
            "3000",
            "--nodes",
            "2",
            "--channels",
            "3",
        ],
    )
    .await;
    assert_eq!(n(&r.node, "intact"), 600.0);
    assert_eq!(
        total_count(&r.summaries),
        1800,
        "every reading in a summary"
    );
    assert_eq!(
        r.gw.metric("gateway_serial_frames_total{port=\"uart\"}"),
        600.0
    );
    assert_eq!(r.gw.metric("gateway_readings_accepted_total"), 1800.0);
    let dropped: f64 =
        r.gw.metrics()
            .iter()
            .filter(|(k, _)| k.starts_with("gateway_serial_dropped_total"))
            .map(|(_, v)| v)
            .sum();
    assert_eq!(dropped, 0.0);
    // Two nodes, three channels each: six sensors, named by port, node and channel.
    let sensors: std::collections::BTreeSet<String> = r
        .summaries
        .iter()
        .filter_map(|m| m["sensor"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sensors.len(), 6, "{sensors:?}");
    assert!(
        sensors.iter().all(|s| s.starts_with("uart/")),
        "{sensors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_format_counts_are_exact() {
    exact("line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_format_counts_are_exact() {
    exact("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_format_counts_are_exact() {
    exact("frame").await;
}

/// A stream with a known number of damaged frames, noise bursts and
/// over-long runs yields exactly that many counted drops, and every intact
/// frame is delivered.
async fn faults(format: &str) {
    let r = run(
        format,
        "",
        &[
            "--count",
            "1000",
            "--rate",
            "4000",
            "--channels",
            "2",
            "--corrupt-every",
            "10",
            "--noise-every",
            "7",
            "--oversize-every",
            "97",
        ],
    )
    .await;
    let (intact, corrupted, noise, oversize) = (
        n(&r.node, "intact"),
        n(&r.node, "corrupted"),
        n(&r.node, "noise_bursts"),
        n(&r.node, "oversize"),
    );
    assert_eq!(corrupted, 100.0);
    let m = r.gw.metrics();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let dropped: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("gateway_serial_dropped_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dropped, corrupted + noise + oversize, "{m:#?}");
    assert_eq!(
        get("gateway_serial_dropped_total{port=\"uart\",reason=\"oversize\"}"),
        oversize
    );
    assert_eq!(get("gateway_serial_frames_total{port=\"uart\"}"), intact);
    assert_eq!(
        get("gateway_serial_node_lost_frames_total{port=\"uart\",node=\"1\"}"),
        corrupted,
        "each damaged frame is a sequence gap"
    );
    assert_eq!(total_count(&r.summaries), intact as u64 * 2);
    assert!(
        r.gw.log()
            .contains("Dropped damaged or invalid serial frames"),
        "drops are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_faults_are_counted_exactly() {
    faults("frame").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_faults_are_counted_exactly() {
    faults("line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_faults_are_counted_exactly() {
    faults("json").await;
}

/// The pty pair is closed mid-stream and a new one appears behind the same
/// link (as udev does for by-id links); the gateway resumes by itself and
/// counts the frames sent while it was away as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_replug_resumes_and_counts_the_loss() {
    let r = run(
        "frame",
        "",
        &[
            "--rate",
            "200",
            "--duration",
            "5s",
            "--unplug-after",
            "1500ms",
            "--unplug-for",
            "1s",
        ],
    )
    .await;
    let lost = n(&r.node, "lost_unplugged");
    assert!(lost > 100.0, "the node was away for a second: {}", r.node);
    assert_eq!(n(&r.node, "unplugs"), 1.0);
    let m = r.gw.metrics();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert!(get("gateway_serial_disconnects_total{port=\"uart\"}") >= 1.0);
    assert!(get("gateway_serial_opens_total{port=\"uart\"}") >= 2.0);
    assert_eq!(
        get("gateway_serial_node_lost_frames_total{port=\"uart\",node=\"1\"}"),
        lost
    );
    assert_eq!(
        get("gateway_serial_frames_total{port=\"uart\"}"),
        n(&r.node, "intact")
    );
    assert_eq!(total_count(&r.summaries), n(&r.node, "readings") as u64);
    let log = r.gw.log();
    assert!(log.contains("reopening when it reappears"), "{log}");
}

/// A node that restarts (sequence and uptime from zero) is a reboot, not a
/// storm of duplicates, and nothing it sends after the restart is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reboots_are_detected_not_dropped() {
    let r = run(
        "frame",
        "",
        &["--count", "300", "--rate", "1000", "--reboot-after", "100"],
    )
    .await;
    assert_eq!(n(&r.node, "reboots"), 2.0);
    let get = |k: &str| r.gw.metric(k);
    assert_eq!(
        get("gateway_serial_node_reboots_total{port=\"uart\",node=\"1\"}"),
        2.0
    );
    assert_eq!(
        get("gateway_serial_node_duplicates_total{port=\"uart\",node=\"1\"}"),
        0.0
    );
    assert_eq!(get("gateway_serial_frames_total{port=\"uart\"}"), 300.0);
    assert_eq!(total_count(&r.summaries), 600);
}

/// Mapped channels get their sensor names and units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_mapping_names_sensors_and_units() {
    let mapping = r#"
[[source.channel]]
node = "1"
channel = "temp"
sensor = "line1/pump-2/bearing_temp"
unit = "degC"
"#;
    let r = run("line", mapping, &["--count", "100", "--rate", "1000"]).await;
    let temp: Vec<_> = dedupe(&r.summaries)
        .into_iter()
        .filter(|m| m["sensor"] == "line1/pump-2/bearing_temp")
        .collect();
    assert!(!temp.is_empty(), "{:?}", r.summaries);
    assert!(temp.iter().all(|m| m["unit"] == "degC"));
    let n_temp: u64 = temp.iter().filter_map(|m| m["count"].as_u64()).sum();
    assert_eq!(n_temp, 100);
}

/// A second gateway on a port that is already open gets a clear message
/// naming the cause and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_reported_with_the_fix() {
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("tty");
    let _node = SerialNode::start(&link, &["--rate", "50", "--duration", "30s"]).await;
    let config = serial_gateway_config(upstream.addr, &link, "format = \"frame\"");
    let first = Gateway::start(&config);
    wait_until("the first gateway to read", Duration::from_secs(15), || {
        first.metric("gateway_serial_frames_total{port=\"uart\"}") > 0.0
    })
    .await;
    let second = Gateway::start(&config);
    wait_until(
        "the busy port to be reported",
        Duration::from_secs(15),
        || second.log().contains("in use by another program"),
    )
    .await;
    assert!(second.log().contains("fuser"), "{}", second.log());
}

/// A pty pair made by the test, its slave behind `link` (as udev's by-id
/// links are): the test writes exactly the bytes a node would, or closes
/// the master under the gateway.
struct Pty {
    master: std::fs::File,
    _slave: std::os::fd::OwnedFd,
}

impl Pty {
    fn at(link: &std::path::Path) -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        use std::os::unix::fs::OpenOptionsExt;
        // Close-on-exec: a gateway started later must not inherit the
        // master, or closing it here would not hang the port up.
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let path = std::path::PathBuf::from(name.to_string_lossy().into_owned());
        let slave: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&path)
            .expect("open the slave")
            .into();
        let mut t = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        t.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)
            .expect("tcsetattr");
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&path, &tmp).expect("symlink");
        std::fs::rename(&tmp, link).expect("rename the link");
        Pty {
            master: std::fs::File::from(master),
            _slave: slave,
        }
    }

    fn write(&mut self, text: &str) {
        use std::io::Write;
        self.master.write_all(text.as_bytes()).expect("write");
    }
}

/// A `line` node named `a+b` (with unmapped channels accepted) would make a
/// sensor id and upstream topic with an MQTT wildcard: its line is dropped
/// as `bad_name` and counted, while the port's valid lines and the MQTT
/// sensors of the same gateway keep reaching upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_named_with_a_wildcard_is_dropped_as_bad_name_and_others_flow() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("tty");
    let mut pty = Pty::at(&link);
    let config = format!(
        r#"
[gateway]
id = "gw-names"
state_dir = "@STATE_DIR@"
metrics_interval = "100ms"

[[source]]
kind = "mqtt"
name = "plant"
broker = "{source}"
client_id = "gw-names-source-{sport}"
topic_template = "plant/{{line}}/{{machine}}/{{sensor}}"
qos = 1

[[source]]
kind = "serial"
name = "uart"
device = "{device}"
format = "line"
unmapped = "accept"

[pipeline]
default_window = "1s"
allowed_lateness = "0s"

[upstream]
broker = "{upstream}"
client_id = "gw-names-{uport}"
reconnect_backoff_max = "1s"
shutdown_grace = "5s"
"#,
        source = source.addr,
        sport = source.addr.port(),
        device = link.display(),
        upstream = upstream.addr,
        uport = upstream.addr.port(),
    );
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    wait_until("the serial port to open", Duration::from_secs(15), || {
        gw.metric("gateway_serial_connected{port=\"uart\"}") == 1.0
    })
    .await;
    let mut publisher = Publisher::connect(source.addr).await;
    for i in 0..5 {
        pty.write("node=a+b temp=21.5\n");
        pty.write(&format!("node=n1 temp={i}\n"));
        publisher
            .send("plant/l1/m1/temp", format!(r#"{{"value":{i}}}"#))
            .await;
    }
    publisher.flush().await;
    wait_until("every valid reading", Duration::from_secs(15), || {
        gw.metric("gateway_readings_accepted_total") >= 10.0
            && gw.metric("gateway_serial_dropped_total{port=\"uart\",reason=\"bad_name\"}") >= 5.0
    })
    .await;
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let m = sub.messages.clone();
    wait_until("both sensors upstream", Duration::from_secs(10), || {
        total_count(&m.lock().expect("lock")) >= 10
    })
    .await;
    let summaries = dedupe(&sub.snapshot());
    let count_of = |sensor: &str| -> u64 {
        summaries
            .iter()
            .filter(|s| s["sensor"] == sensor)
            .filter_map(|s| s["count"].as_u64())
            .sum()
    };
    assert_eq!(count_of("uart/n1/temp"), 5, "{summaries:#?}");
    assert_eq!(count_of("l1/m1/temp"), 5, "{summaries:#?}");
    assert!(
        summaries
            .iter()
            .all(|s| !s["sensor"].as_str().unwrap_or("").contains(['+', '#'])),
        "{summaries:#?}"
    );
    let m = gw.metrics();
    assert_eq!(
        m["gateway_serial_dropped_total{port=\"uart\",reason=\"bad_name\"}"],
        5.0
    );
    assert_eq!(m["gateway_serial_frames_total{port=\"uart\"}"], 5.0);
    let log = gw.log();
    assert!(log.contains("bad_name"), "{log}");
    assert!(log.contains(r#"\"a+b\""#) || log.contains("a+b"), "{log}");
}

/// A half-dead adapter: every open succeeds and the first read fails (the
/// test closes the pty's master as soon as the gateway has opened it, with
/// a fresh pty already behind the link). The gateway retries with growing
/// delays and logs the failure rate-limited, instead of reopening and
/// logging ten times a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_fails_right_after_open_is_retried_with_growing_backoff() {
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("tty");
    let mut pty = Pty::at(&link);
    let config = serial_gateway_config(
        upstream.addr,
        &link,
        "format = \"line\"\nreopen_backoff_max = \"30s\"",
    );
    let gw = Gateway::start(&config);
    let started = std::time::Instant::now();
    let mut opens_seen = 0.0;
    while started.elapsed() < Duration::from_secs(8) {
        let opens = gw.metric("gateway_serial_opens_total{port=\"uart\"}");
        if opens > opens_seen {
            opens_seen = opens;
            // The gateway holds this pty open: put a fresh one behind the
            // link, then pull the master out from under the gateway.
            let fresh = Pty::at(&link);
            drop(std::mem::replace(&mut pty, fresh));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = gw.metrics();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let opens = get("gateway_serial_opens_total{port=\"uart\"}");
    let disconnects = get("gateway_serial_disconnects_total{port=\"uart\"}");
    // Delays of 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s (plus jitter and the test's
    // reaction) fit at most 7 opens in 8 s; a 100 ms retry made about 40.
    assert!(disconnects >= 3.0, "the adapter failed repeatedly: {m:?}");
    assert!(opens <= 8.0, "opens {opens}\n{}", gw.log());
    let log = gw.log();
    let failures = log.matches("fails right after opening").count();
    assert_eq!(failures, 1, "logged once a minute at most:\n{log}");
    assert_eq!(log.matches("Serial port open.").count(), 1, "{log}");
}
