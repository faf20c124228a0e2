//! The HTTP endpoints during a run: `/metrics` is parsed as a Prometheus
//! server parses it and holds every family of the metrics file plus the
//! operational ones; `/readyz` answers 503 while the uplink is cut and 200
//! once it is back; anything else is refused and counted.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, Scrape, Value};
use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_over_http_rumqttd() {
    metrics_and_readiness(BrokerKind::Rumqttd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_over_http_mosquitto() {
    if mosquitto_available() {
        metrics_and_readiness(BrokerKind::Mosquitto).await;
    }
}

/// Polls `path` until it answers `status`; returns the body.
async fn wait_for_status(addr: SocketAddr, path: &str, status: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = http_request(addr, "GET", path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got} ({body:?}) after {within:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a scrape; every line must be a help, type or sample line.
fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored | LineInfo::Empty),
            "not a line of the Prometheus text format: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus scrape")
}

/// Family name of every sample line of a Prometheus text.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// `promtool check metrics`, where Prometheus's own tool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    let said = String::from_utf8_lossy(&out.stderr);
    // Exit code 1: the text does not parse; 3: it parses, with lint
    // problems, which must be known ones.
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "promtool check metrics cannot parse the scrape: {said}"
    );
    let unknown: Vec<&str> = said.lines().filter(|l| !KNOWN_LINT.contains(l)).collect();
    assert!(unknown.is_empty(), "promtool check metrics: {unknown:?}");
}

/// Lint problems promtool reports and the gateway keeps: an older name
/// that dashboards read (`gateway_backlog_oldest_age_seconds` is the
/// per-lane, well-named successor).
const KNOWN_LINT: &[&str] =
    &["gateway_buffer_oldest_timestamp_ms metric names should not contain abbreviated units"];

fn sample<'a>(scrape: &'a Scrape, name: &str, label: Option<(&str, &str)>) -> &'a Value {
    &scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} {label:?} is in the scrape"))
        .value
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("a number, not {other:?}"),
    }
}

async fn publish_windows(publisher: &mut Publisher, base: i64, windows: std::ops::Range<i64>) {
    for w in windows {
        for i in 0..10 {
            let ts = base + w * 1000 + i * 10;
            publisher
                .send("plant/l1/m1/temp", format!(r#"{{"value":{i},"ts":{ts}}}"#))
                .await;
        }
    }
    publisher.flush().await;
}

async fn metrics_and_readiness(kind: BrokerKind) {
    let source = Broker::start(kind).await;
    let upstream = Broker::start(kind).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    let http = free_addr();
    let config = format!(
        "{}\n[http]\nlisten = \"{http}\"\n",
        gateway_config(source.addr, uplink.listen, "")
    );
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    assert_eq!(
        wait_for_status(http, "/readyz", 200, Duration::from_secs(20)).await,
        "ready\n"
    );
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms();
    publish_windows(&mut publisher, base, 0..3).await;
    wait_until("summaries delivered", Duration::from_secs(20), || {
        gw.metric("gateway_upstream_acked_total") >= 3.0
    })
    .await;

    // Scraped during the run, parsed as Prometheus parses it.
    let (status, text) = http_request(http, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let scrape = parse(&text);
    promtool_check(&text);
    let served = families(&text);
    let file = std::fs::read_to_string(gw.dir.path().join("metrics.prom")).unwrap();
    let missing: Vec<_> = families(&file).difference(&served).cloned().collect();
    assert!(
        missing.is_empty(),
        "families of the metrics file not served: {missing:?}"
    );
    for family in [
        "gateway_build_info",
        "gateway_config_info",
        "gateway_uptime_seconds",
        "gateway_backlog_records",
        "gateway_backlog_bytes",
        "gateway_backlog_oldest_age_seconds",
        "gateway_outage_seconds_left",
        "gateway_buffer_bytes_written_total",
        "gateway_upstream_connected",
        "gateway_upstream_connections_total",
        "gateway_upstream_disconnects_total",
        "gateway_upstream_puback_latency_seconds",
        "gateway_source_connected",
        "gateway_http_requests_total",
    ] {
        assert!(served.contains(family), "{family} is served");
    }
    let sha256 = std::process::Command::new("sha256sum")
        .arg(gw.config_path())
        .output()
        .expect("sha256sum runs");
    let sha256 = String::from_utf8_lossy(&sha256.stdout);
    let sha256 = sha256.split(' ').next().unwrap();
    let info = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gateway_config_info")
        .unwrap();
    assert_eq!(
        info.labels.get("sha256"),
        Some(sha256),
        "the config file's hash"
    );
    assert_eq!(
        number(sample(&scrape, "gateway_upstream_connected", None)),
        1.0
    );
    assert_eq!(
        number(sample(
            &scrape,
            "gateway_source_connected",
            Some(("source", "plant"))
        )),
        1.0
    );
    let Value::Histogram(buckets) =
        sample(&scrape, "gateway_upstream_puback_latency_seconds", None)
    else {
        panic!("the PUBACK latency is a histogram");
    };
    let acked = number(sample(&scrape, "gateway_upstream_acked_total", None));
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, acked, "one latency per acknowledged record");
    for lane in ["summaries", "alarms"] {
        number(sample(
            &scrape,
            "gateway_backlog_records",
            Some(("lane", lane)),
        ));
    }

    // The uplink is cut: not ready, and why; the backlog and the outage
    // estimate follow the input.
    uplink.cut();
    let body = wait_for_status(http, "/readyz", 503, Duration::from_secs(20)).await;
    assert_eq!(body, "upstream: not connected\n");
    publish_windows(&mut publisher, base, 3..8).await;
    let mut last = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = parse(&http_request(http, "GET", "/metrics").await.1);
        let records = number(sample(
            &s,
            "gateway_backlog_records",
            Some(("lane", "summaries")),
        ));
        let left = number(sample(&s, "gateway_outage_seconds_left", None));
        last.insert("records", records);
        last.insert("left", left);
        if records >= 4.0 && left >= 0.0 {
            assert_eq!(number(sample(&s, "gateway_upstream_connected", None)), 0.0);
            assert!(
                number(sample(
                    &s,
                    "gateway_backlog_oldest_age_seconds",
                    Some(("lane", "summaries"))
                )) > 0.0,
                "the oldest summary waiting has an age"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backlog and outage estimate: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http_request(http, "GET", "/healthz").await,
        (200, "ok\n".into())
    );

    // Back: ready again.
    uplink.restore();
    assert_eq!(
        wait_for_status(http, "/readyz", 200, Duration::from_secs(30)).await,
        "ready\n"
    );

    // Read-only: anything but GET or HEAD on the three paths is refused
    // and counted.
    assert_eq!(http_request(http, "POST", "/metrics").await.0, 405);
    assert_eq!(http_request(http, "DELETE", "/readyz").await.0, 405);
    assert_eq!(http_request(http, "GET", "/config").await.0, 404);
    // A request head above the limit is refused, not buffered.
    let (status, _) =
        http_request(http, "GET", &format!("/metrics?{}", "x".repeat(16 * 1024))).await;
    assert_eq!(status, 431);
    let s = parse(&http_request(http, "GET", "/metrics").await.1);
    assert!(number(sample(&s, "gateway_http_connection_errors_total", None)) >= 1.0);
    let outcome = |o| {
        number(sample(
            &s,
            "gateway_http_requests_total",
            Some(("outcome", o)),
        ))
    };
    assert_eq!(outcome("method_not_allowed"), 2.0);
    assert_eq!(outcome("not_found"), 1.0);
    assert!(outcome("not_ready") >= 1.0 && outcome("ready") >= 2.0);
    gw.terminate(Duration::from_secs(20)).await;
}
