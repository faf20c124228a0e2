//! The durable buffer through the real binary: crash loops, damaged files, a
//! full disk, and a long outage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sensor_gateway::buffer::segment;
use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

/// Buffer and window settings shared by these tests.
fn config(source: std::net::SocketAddr, upstream: std::net::SocketAddr, buffer: &str) -> String {
    let extra = format!("[buffer]\n{buffer}\n\n[[sensor]]\nmatch = \"*\"\nwindow = \"100ms\"\n");
    gateway_config(source, upstream, &extra)
}

/// Publishes `per_sensor` readings to each of `sensors` sensors, each reading
/// in its own 100 ms window, so that every reading becomes one summary.
async fn one_summary_per_reading(
    publisher: &mut Publisher,
    sensors: usize,
    per_sensor: usize,
    base: i64,
) {
    for i in 0..per_sensor {
        for s in 0..sensors {
            let ts = base + i as i64 * 100;
            publisher
                .send(
                    &format!("plant/l{}/m{}/temp", s % 4, s),
                    format!(r#"{{"value":{i},"ts":{ts}}}"#),
                )
                .await;
        }
        if i % 50 == 49 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
}

fn segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("buffer/summaries"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// (offset, length, seq) of every valid record in a segment file.
fn records(path: &Path) -> Vec<(usize, usize, u64)> {
    let buf = std::fs::read(path).unwrap();
    segment::scan(&buf)
        .records
        .into_iter()
        .map(
            |(off, len)| match segment::parse_record(&buf[off..off + len]) {
                segment::Parsed::Record { body, .. } => (off, len, body.seq),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_no_fsynced_summary() {
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    uplink.cut();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        "lines = 2\nmachines_per_line = 5\nrate = 400\n[[sensor]]\nname = \"temp\"\nkind = \"temperature\"\nbase = 50.0\nnoise = 1.0\n",
    )
    .unwrap();
    let mut sim = Command::new(bin("sensor-sim"))
        .args(["run", "--scenario"])
        .arg(&scenario)
        .args(["--broker", &source.addr.to_string(), "--qos", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut gw = Gateway::start(&config(
        source.addr,
        uplink.listen,
        "durability = \"always\"\ncommit_interval = \"50ms\"",
    ));
    let mut owed = BTreeSet::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..cycles {
        gw.wait_ready().await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(150 + rng % 300)).await;
        let m = gw.metrics();
        assert!(
            gw.is_running(),
            "the gateway stopped by itself\n{}",
            gw.log()
        );
        let first = m["gateway_buffer_first_seq_this_run"] as u64;
        let synced = m["gateway_buffer_last_synced_seq"] as u64;
        if synced >= first {
            owed.extend(first..=synced);
        }
        gw.kill();
        gw.restart();
    }
    let _ = sim.kill();
    let _ = sim.wait();
    gw.wait_ready().await;
    assert!(
        owed.len() > cycles,
        "summaries were made durable in most cycles: {}",
        owed.len()
    );

    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    uplink.restore();
    let m = sub.messages.clone();
    let want = owed.clone();
    wait_until(
        "every fsynced summary upstream",
        Duration::from_secs(90),
        || {
            let got: BTreeSet<u64> = unique_seqs(&m.lock().unwrap()).into_iter().collect();
            want.is_subset(&got)
        },
    )
    .await;
    // After deduplication nothing is duplicated: one seq, one summary.
    let mut by_seq: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for msg in sub.snapshot() {
        let seq = msg["seq"].as_u64().unwrap();
        if let Some(prev) = by_seq.insert(seq, msg.clone()) {
            assert_eq!(prev, msg, "seq {seq} was used for two different summaries");
        }
    }
    assert!(!gw.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_segments_are_quarantined_and_every_valid_record_delivered() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    uplink.cut();
    let mut gw = Gateway::start(&config(
        source.addr,
        uplink.listen,
        "durability = \"always\"\nsegment_bytes = 4096\nmax_disk_bytes = 1048576",
    ));
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    one_summary_per_reading(&mut publisher, 3, 100, aligned_base_ms()).await;
    wait_until("300 summaries", Duration::from_secs(20), || {
        gw.metric("gateway_summaries_produced_total") >= 300.0
    })
    .await;
    assert!(gw.terminate(Duration::from_secs(15)).await.success());

    let state = gw.dir.path().join("state");
    let segs = segments(&state);
    assert!(segs.len() >= 8, "enough segments to damage: {}", segs.len());
    let mut valid: BTreeSet<u64> = segs
        .iter()
        .flat_map(|p| records(p))
        .map(|(_, _, s)| s)
        .collect();
    assert_eq!(valid.len(), 300);
    // Truncated: the last record of a segment is torn.
    let r = records(&segs[1]);
    let len = std::fs::metadata(&segs[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    valid.remove(&r.last().unwrap().2);
    // Bit flip inside the third record of another.
    let r = records(&segs[3]);
    let mut bytes = std::fs::read(&segs[3]).unwrap();
    bytes[r[2].0 + r[2].1 / 2] ^= 0x10;
    std::fs::write(&segs[3], &bytes).unwrap();
    valid.remove(&r[2].2);
    // A header overwritten: every record is salvaged.
    let mut bytes = std::fs::read(&segs[5]).unwrap();
    bytes[0..8].copy_from_slice(b"garbage!");
    std::fs::write(&segs[5], &bytes).unwrap();
    // Bytes overwritten in the middle of the second record.
    let r = records(&segs[7]);
    let mut bytes = std::fs::read(&segs[7]).unwrap();
    let at = r[1].0 + 12;
    bytes[at..at + 20].copy_from_slice(&[0x5A; 20]);
    std::fs::write(&segs[7], &bytes).unwrap();
    valid.remove(&r[1].2);

    let state_arg = state.display().to_string();
    let (code, out) = gw.command(&["buffer", "verify", "--state-dir", &state_arg]);
    assert_ne!(code, 0, "verify fails on a damaged buffer:\n{out}");
    assert!(
        out.contains("torn or damaged tail") && out.contains("bad header"),
        "{out}"
    );

    gw.restart();
    gw.wait_ready().await;
    assert!(
        gw.metric("gateway_buffer_quarantined_total") >= 3.0,
        "{:?}",
        gw.metrics()
    );
    assert!(gw.metric("gateway_buffer_torn_tails_total") >= 1.0);
    let (code, out) = gw.command(&["buffer", "verify", "--state-dir", &state_arg]);
    assert_eq!(code, 0, "healthy after recovery:\n{out}");
    let (code, out) = gw.command(&[
        "buffer",
        "status",
        "--config",
        &gw.config_path().display().to_string(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("summaries") && out.contains("outage left"),
        "{out}"
    );

    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    uplink.restore();
    let messages = sub
        .wait_for_unique(valid.len(), Duration::from_secs(30))
        .await;
    let got: BTreeSet<u64> = unique_seqs(&messages).into_iter().collect();
    assert_eq!(got, valid, "exactly the valid records are delivered");
}

/// A tmpfs of a fixed size, unmounted on drop; `None` without root.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(dir));
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(
            !root || std::env::var("CI").is_err(),
            "running as root in CI but cannot mount a tmpfs"
        );
        eprintln!("cannot mount a tmpfs (not root?); skipping the disk-full test");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_follows_when_full_and_the_gateway_keeps_running() {
    let Some(fs) = Tmpfs::mount("1536k") else {
        return;
    };
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    uplink.cut();
    let text = config(
        source.addr,
        uplink.listen,
        "durability = \"always\"\nmax_disk_bytes = 8388608\nsegment_bytes = 65536\nwhen_full = \"drop_oldest\"",
    );
    let mut gw = Gateway::start_in(
        tempfile::tempdir().unwrap(),
        &text,
        &fs.0.path().join("state"),
    );
    gw.wait_ready().await;
    assert!(
        gw.log().contains("larger than the free space"),
        "start-up warns that the bound does not fit"
    );
    let mut publisher = Publisher::connect(source.addr).await;
    let (sensors, per) = (20, 400);
    one_summary_per_reading(&mut publisher, sensors, per, aligned_base_ms()).await;
    let produced = (sensors * per) as f64;
    wait_until("every summary produced", Duration::from_secs(60), || {
        gw.metric("gateway_summaries_produced_total") >= produced
    })
    .await;
    wait_until(
        "the disk to fill and old segments to go",
        Duration::from_secs(20),
        || gw.metric("gateway_upstream_dropped_total{reason=\"buffer_full_oldest\"}") > 0.0,
    )
    .await;
    assert!(
        gw.metric("gateway_buffer_write_errors_total") >= 1.0,
        "the filesystem filled up"
    );
    assert!(gw.is_running());

    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    uplink.restore();
    wait_until("the backlog to drain", Duration::from_secs(60), || {
        gw.metric("gateway_upstream_queue_records") == 0.0
            && gw.metric("gateway_upstream_connected") == 1.0
    })
    .await;
    let m = sub.messages.clone();
    let received = || unique_seqs(&m.lock().unwrap()).len() as f64;
    // Mostly the oldest segments go; while the filesystem itself is full a
    // record that can neither be written nor kept in memory is refused
    // (`buffer_full_newest`). Either way it is counted.
    let dropped = || {
        gw.metric("gateway_upstream_dropped_total{reason=\"buffer_full_oldest\"}")
            + gw.metric("gateway_upstream_dropped_total{reason=\"buffer_full_newest\"}")
    };
    // Generous: on a loaded two-core machine the last PUBACKs can take a while.
    wait_until(
        "delivered + dropped = produced",
        Duration::from_secs(60),
        || received() + dropped() >= produced,
    )
    .await;
    let dropped = dropped();
    assert_eq!(
        received() + dropped,
        produced,
        "every summary is delivered or counted as dropped"
    );
    let seqs = unique_seqs(&sub.snapshot());
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "delivered oldest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_summaries_survive_a_long_outage_in_order() {
    let total: usize = std::env::var("LONG_OUTAGE_SUMMARIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sensors = 100;
    let per_sensor = total / sensors;
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    uplink.cut();
    let text = config(source.addr, uplink.listen, "max_disk_bytes = 2147483648").replace(
        "reconnect_backoff_max = \"1s\"",
        "reconnect_backoff_max = \"1s\"\ninflight = 256",
    );
    let mut gw = Gateway::start(&text);
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms() - per_sensor as i64 * 100;
    for i in 0..per_sensor {
        for s in 0..sensors {
            let ts = base + i as i64 * 100;
            publisher
                .send(
                    &format!("plant/l0/m{s}/temp"),
                    format!(r#"{{"value":{i},"ts":{ts}}}"#),
                )
                .await;
        }
        if i % 100 == 99 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
    wait_until(
        "a million summaries buffered",
        Duration::from_secs(300),
        || {
            gw.metric("gateway_summaries_produced_total") >= total as f64
                && gw.metric("gateway_upstream_queue_records") >= total as f64
        },
    )
    .await;
    assert!(
        gw.metric("gateway_buffer_disk_bytes") > total as f64 * 100.0,
        "the backlog is on disk"
    );

    // A compact consumer: (sensor, window start) per seq, in arrival order.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(u64, u32, i64)>::with_capacity(total + 1000),
    ));
    let unique_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = {
        let seen = seen.clone();
        let unique_count = unique_count.clone();
        let addr = upstream.addr;
        tokio::spawn(async move {
            let mut opts =
                rumqttc::MqttOptions::new("e2e-long-outage", addr.ip().to_string(), addr.port());
            opts.set_keep_alive(Duration::from_secs(30));
            let (client, mut el) = rumqttc::AsyncClient::new(opts, 16);
            let mut unique = std::collections::HashSet::with_capacity(total);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("gateways/#", rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                        if !p.topic.ends_with("/status") =>
                    {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        let sensor: u32 = v["sensor"]
                            .as_str()
                            .unwrap()
                            .trim_start_matches("l0/m")
                            .trim_end_matches("/temp")
                            .parse()
                            .unwrap();
                        let seq = v["seq"].as_u64().unwrap();
                        if unique.insert(seq) {
                            unique_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        seen.lock().unwrap().push((
                            seq,
                            sensor,
                            v["window_start_ms"].as_i64().unwrap(),
                        ));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {}
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    uplink.restore();
    let started = std::time::Instant::now();
    wait_until(
        "the whole backlog upstream",
        Duration::from_secs(600),
        || unique_count.load(std::sync::atomic::Ordering::Relaxed) >= total,
    )
    .await;
    eprintln!("drained {total} summaries in {:?}", started.elapsed());
    consumer.abort();
    let seen = seen.lock().unwrap();
    let unique: BTreeSet<u64> = seen.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(unique.len(), total);
    // In order per sensor: window starts only move forward.
    let mut last: BTreeMap<u32, i64> = BTreeMap::new();
    let mut firsts = BTreeSet::new();
    for (seq, sensor, start) in seen.iter() {
        if !firsts.insert(*seq) {
            continue;
        }
        let prev = last.insert(*sensor, *start);
        assert!(
            prev.is_none_or(|p| p < *start),
            "sensor {sensor}: window {start} after {prev:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_buffer_directory_never_makes_sequence_numbers_repeat() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&config(source.addr, upstream.addr, ""));
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    one_summary_per_reading(&mut publisher, 2, 10, aligned_base_ms()).await;
    let before: BTreeSet<u64> =
        unique_seqs(&sub.wait_for_unique(20, Duration::from_secs(20)).await)
            .into_iter()
            .collect();
    assert!(gw.terminate(Duration::from_secs(15)).await.success());

    // The operator deletes the buffer; the rest of the state directory stays.
    let state = gw.dir.path().join("state");
    std::fs::remove_dir_all(state.join("buffer")).unwrap();
    gw.restart();
    gw.wait_ready().await;
    one_summary_per_reading(&mut publisher, 2, 10, aligned_base_ms() + 30_000).await;
    let messages = sub.wait_for_unique(40, Duration::from_secs(20)).await;
    let after: BTreeSet<u64> = unique_seqs(&messages)
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    assert_eq!(after.len(), 20, "every new summary has a new number");
    let (old_max, new_min) = (before.last().unwrap(), after.first().unwrap());
    assert!(
        new_min > old_max,
        "numbering restarted below what was handed out before: {new_min} <= {old_max}\n{}",
        gw.log()
    );
}
