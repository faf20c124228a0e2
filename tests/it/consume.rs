//! The reference consumer (`sensor-gateway consume`) against real brokers:
//! hand-built envelopes of every encoding and compression, plain JSON
//! records, duplicates of both and undecodable messages go in; exactly the
//! records, once each, and the exact tally come out. And the real gateway's
//! batches (CBOR, zstd with the dictionary) round trip through it exactly.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use sensor_gateway::envelope::{Compression, Encoding};
use sensor_gateway::model::{Lane, Record};
use sensor_gateway_e2e::*;
use serde_json::{json, Value};

/// Rumqttd with MQTT 3.1.1, and Mosquitto with 3.1.1 and 5 when installed.
fn brokers() -> Vec<(BrokerKind, &'static str)> {
    let mut cases = vec![(BrokerKind::Rumqttd, "3.1.1")];
    if mosquitto_available() {
        cases.extend([
            (BrokerKind::Mosquitto, "3.1.1"),
            (BrokerKind::Mosquitto, "5"),
        ]);
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_writes_every_record_once() {
    for (kind, protocol) in brokers() {
        exact_records(kind, protocol).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_batches_round_trip_through_consume() {
    for (kind, protocol) in brokers() {
        batches_round_trip(kind, protocol).await;
    }
}

const BATCH_TOPIC: &str = "gateways/gw-a/batch";
const SUMMARY_TOPIC: &str = "gateways/gw-b/summary/l1/m1/temp";

/// A summary as the gateway writes it, with numbers CBOR must keep exact.
fn payload(gateway: &str, seq: u64) -> Value {
    json!({
        "schema": 1, "kind": "summary", "gateway": gateway, "seq": seq,
        "sensor": "l1/m1/temp", "labels": {"line": "l1", "machine": "m1"}, "unit": "degC",
        "window_start": 1_800_000_000_000u64 + seq * 10_000, "count": 100,
        "mean": 21.25 + seq as f64 * 0.1, "min": -0.000_001, "max": 1e300, "std": 0.1,
    })
}

fn record(gateway: &str, seq: u64, lane: Lane) -> Record {
    Record {
        seq,
        lane,
        ts_ms: 0,
        topic: format!("gateways/{gateway}/summary/l1/m1/temp"),
        payload: payload(gateway, seq).to_string().into_bytes(),
    }
}

fn envelope(encoding: Encoding, compression: Compression, recs: &[Record]) -> Vec<u8> {
    sensor_gateway::envelope::encode(encoding, compression, recs).expect("an envelope")
}

/// The line the consumer writes for `rec`.
fn line(rec: &Record) -> Value {
    let payload: Value = serde_json::from_slice(&rec.payload).expect("JSON");
    json!({"topic": rec.topic, "gateway": payload["gateway"], "seq": rec.seq, "payload": payload})
}

/// `sensor-gateway consume` with its standard error in `dir/stderr`.
fn start_consumer(broker: &Broker, protocol: &str, dir: &Path, count: usize) -> Child {
    let stderr = std::fs::File::create(dir.join("stderr")).expect("a stderr file");
    gateway_command()
        .args(["consume", "--broker", &broker.addr.to_string()])
        .args([
            "--topic",
            "gateways/+/batch",
            "--topic",
            "gateways/+/summary/#",
        ])
        .args(["--protocol", protocol, "--timeout", "60s"])
        .args(["--client-id", &format!("e2e-consume-{protocol}")])
        .arg("--count")
        .arg(count.to_string())
        .arg("--output")
        .arg(dir.join("records.jsonl"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("sensor-gateway consume starts")
}

/// [`start_consumer`], once it has subscribed.
async fn subscribed_consumer(broker: &Broker, protocol: &str, dir: &Path, count: usize) -> Child {
    let child = start_consumer(broker, protocol, dir, count);
    wait_until(
        "the consumer's subscriptions",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(dir.join("stderr"))
                .is_ok_and(|e| e.contains("consume: subscribed"))
        },
    )
    .await;
    child
}

/// The records the consumer wrote, once it stopped at `--count` (exit 0).
async fn finished_lines(consumer: &mut Child, dir: &Path) -> Vec<Value> {
    let mut status = None;
    wait_until(
        "the consumer to stop at --count",
        Duration::from_secs(30),
        || {
            status = consumer.try_wait().expect("the consumer's status");
            status.is_some()
        },
    )
    .await;
    let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    std::fs::read_to_string(dir.join("records.jsonl"))
        .expect("the output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn exact_records(kind: BrokerKind, protocol: &str) {
    let broker = Broker::start(kind).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();

    // Gateway A sends envelopes: three records in each of the six kinds,
    // one on the alarm lane. Gateway B sends plain JSON messages.
    let mut expected = Vec::new();
    let mut messages: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut seq = 0;
    for encoding in Encoding::ALL {
        for compression in Compression::ALL {
            let recs: Vec<Record> = (0..3)
                .map(|i| {
                    seq += 1;
                    let lane = if i == 0 { Lane::Alarm } else { Lane::Summary };
                    record("gw-a", seq, lane)
                })
                .collect();
            expected.extend(recs.iter().map(line));
            messages.push((BATCH_TOPIC, envelope(encoding, compression, &recs)));
        }
    }
    let b: Vec<Record> = (1..=4).map(|s| record("gw-b", s, Lane::Summary)).collect();
    expected.extend(b[..3].iter().map(line));
    for r in &b[..3] {
        messages.push((SUMMARY_TOPIC, r.payload.clone()));
    }
    // Duplicates: a whole envelope again (3), an envelope holding one old
    // and one new record (1), plain repeats from each gateway (2).
    let again = messages[5].1.clone();
    messages.push((BATCH_TOPIC, again));
    let mixed = [
        record("gw-a", 2, Lane::Summary),
        record("gw-a", 100, Lane::Summary),
    ];
    expected.push(line(&mixed[1]));
    messages.push((
        BATCH_TOPIC,
        envelope(Encoding::Json, Compression::None, &mixed),
    ));
    messages.push((SUMMARY_TOPIC, record("gw-a", 5, Lane::Summary).payload));
    messages.push((SUMMARY_TOPIC, b[1].payload.clone()));
    // Undecodable: garbage, and an envelope cut short.
    messages.push((SUMMARY_TOPIC, b"\xff\x00 not a record".to_vec()));
    let mut cut = envelope(Encoding::Cbor, Compression::Zstd, &b[..2]);
    cut.truncate(cut.len() - 5);
    messages.push((BATCH_TOPIC, cut));
    // Last, one new record: --count is reached only after all the above.
    expected.push(line(&b[3]));

    let mut consumer = subscribed_consumer(&broker, protocol, dir.path(), expected.len()).await;
    let mut publisher = Publisher::connect(broker.addr).await;
    for (topic, bytes) in &messages {
        publisher.send(topic, bytes.clone()).await;
    }
    publisher.flush().await;
    publisher.send(SUMMARY_TOPIC, b[3].payload.clone()).await;
    publisher.flush().await;

    let mut got = finished_lines(&mut consumer, dir.path()).await;
    let key = |v: &Value| (v["gateway"].to_string(), v["seq"].as_u64());
    got.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(got, expected);
    let total = messages.len() + 1;
    assert!(
        stderr().contains(&format!(
            "consume: records={} duplicates=6 undecodable=2 messages={total} unchecked=0 unsequenced=0 gateways_forgotten=0",
            expected.len()
        )),
        "{}",
        stderr()
    );
}

/// The real gateway batches summaries into CBOR envelopes compressed with
/// the shipped dictionary; the consumer writes each summary exactly once.
async fn batches_round_trip(kind: BrokerKind, protocol: &str) {
    let source = Broker::start(kind).await;
    let upstream = Broker::start(kind).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let mut consumer = subscribed_consumer(&upstream, protocol, dir.path(), 6).await;
    let config = format!(
        "{}\n[upstream.batch]\nmax_records = 100\nmax_delay = \"2s\"\nencoding = \"cbor\"\ncompression = \"zstd\"\n",
        gateway_config(source.addr, upstream.addr, "")
    );
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;

    let base = crate::aligned_base_ms();
    let mut publisher = Publisher::connect(source.addr).await;
    for sensor in ["l1/m1/temp", "l1/m1/vib", "l1/m2/temp"] {
        for window in 0..2i64 {
            for i in 0..20i64 {
                let ts = base + window * 1000 + i * 40;
                publisher
                    .send(
                        &format!("plant/{sensor}"),
                        format!(r#"{{"value":{}.5,"ts":{ts}}}"#, i % 7),
                    )
                    .await;
            }
        }
    }
    publisher.flush().await;

    let lines = finished_lines(&mut consumer, dir.path()).await;
    let mut seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "{lines:#?}");
    for l in &lines {
        assert_eq!(l["gateway"], "gw-e2e");
        assert_eq!(l["payload"]["count"], 20, "{l}");
        assert!(l["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("gateways/gw-e2e/summary/")));
    }
    assert!(
        stderr().contains("consume: records=6 duplicates=0 undecodable=0"),
        "{}",
        stderr()
    );
    // The metrics file trails by up to its interval.
    wait_until(
        "the envelopes in the metrics",
        Duration::from_secs(10),
        || gw.metric("gateway_upstream_batches_total") >= 1.0,
    )
    .await;
    let batches = gw.metric("gateway_upstream_batches_total");
    assert!(batches <= 6.0, "{batches} envelopes for 6 summaries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_gets_what_it_had_not_written_mosquitto() {
    if mosquitto_available() {
        for protocol in ["3.1.1", "5"] {
            restarted_consumer(protocol).await;
        }
    }
}

/// A consumer that stops after two of four records has acknowledged only
/// those two; started again with the same client id, its session gives it
/// the other two, and the file holds each record once.
async fn restarted_consumer(protocol: &str) {
    let broker = Broker::start(BrokerKind::Mosquitto).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut first = subscribed_consumer(&broker, protocol, dir.path(), 2).await;
    let mut publisher = Publisher::connect(broker.addr).await;
    for seq in 1..=4 {
        let r = record("gw-r", seq, Lane::Summary);
        publisher.send(SUMMARY_TOPIC, r.payload).await;
    }
    publisher.flush().await;
    assert_eq!(finished_lines(&mut first, dir.path()).await.len(), 2);

    let mut second = start_consumer(&broker, protocol, dir.path(), 2);
    let lines = finished_lines(&mut second, dir.path()).await;
    let mut seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4], "MQTT {protocol}: {lines:#?}");
}
