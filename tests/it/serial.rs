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
