//! Hostile publishers: nothing a plant-side publisher sends stops ingestion
//! or delivery; each bad message costs only itself and is counted.

use std::time::Duration;

use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

/// One 200 KB QoS 1 message on the plant broker, with a persistent session:
/// it is counted as `oversize`, acknowledged (so the broker never sends it
/// again), the connection stays up and the readings around it are summarised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_costs_only_itself_mosquitto() {
    if !mosquitto_available() {
        return;
    }
    let source = Broker::start(BrokerKind::Mosquitto).await;
    let upstream = Broker::start(BrokerKind::Mosquitto).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, ""));
    gw.wait_ready().await;

    let base = aligned_base_ms();
    let mut publisher = Publisher::connect(source.addr).await;
    for i in 0..5 {
        let ts = base + i * 100;
        publisher
            .send("plant/l1/m1/temp", format!(r#"{{"value":{i},"ts":{ts}}}"#))
            .await;
    }
    publisher
        .send("plant/l1/m1/temp", vec![b'7'; 200 * 1024])
        .await;
    for i in 5..10 {
        let ts = base + i * 100;
        publisher
            .send("plant/l1/m1/temp", format!(r#"{{"value":{i},"ts":{ts}}}"#))
            .await;
    }
    publisher.flush().await;
    let summaries = sub.wait_for_unique(1, Duration::from_secs(15)).await;
    assert_eq!(summaries[0]["count"], 10, "{summaries:?}");
    wait_until(
        "the oversize message counted",
        Duration::from_secs(5),
        || gw.metric("gateway_readings_rejected_total{reason=\"oversize\"}") == 1.0,
    )
    .await;
    assert_eq!(gw.metric("gateway_source_disconnects_total"), 0.0);
    assert_eq!(gw.metric("gateway_messages_received_total"), 11.0);

    // A restart resumes the persistent session: the poison message was
    // acknowledged, so the broker does not send it again, and new readings
    // flow.
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    gw.restart();
    gw.wait_ready().await;
    publisher
        .send(
            "plant/l1/m1/temp",
            format!(r#"{{"value":1,"ts":{}}}"#, base + 5_000),
        )
        .await;
    publisher.flush().await;
    wait_until(
        "the reading after the restart",
        Duration::from_secs(10),
        || gw.metric("gateway_readings_accepted_total") >= 1.0,
    )
    .await;
    assert_eq!(
        gw.metric("gateway_readings_rejected_total{reason=\"oversize\"}"),
        0.0,
        "the broker sent the oversize message again\n{}",
        gw.log()
    );
    assert_eq!(gw.metric("gateway_source_disconnects_total"), 0.0);
}

/// 300,000 distinct sensor topics: memory stays under the service's 64 MiB
/// limit (the sensor table is bounded and silent sensors are retired), and a
/// sensor that appears once the flood has aged out is summarised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_flood_stays_bounded_and_ages_out() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/gw-e2e/summary/l2/#").await;
    let config = gateway_config(source.addr, upstream.addr, "")
        .replace("[pipeline]", "[pipeline]\nretire_after = \"2s\"");
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    for i in 0..300_000u32 {
        publisher
            .send(&format!("plant/flood/m{i}/x"), r#"{"value":1}"#)
            .await;
        if i % 10_000 == 0 {
            publisher.flush().await;
        }
    }
    publisher.flush().await;
    wait_until(
        "every flood message handled",
        Duration::from_secs(120),
        || gw.metric("gateway_messages_received_total") >= 300_000.0,
    )
    .await;
    wait_until("the flood to age out", Duration::from_secs(30), || {
        gw.metric("gateway_sensors") == 0.0
    })
    .await;
    let peak = gw.peak_rss_bytes();
    assert!(
        peak < 64 << 20,
        "peak RSS {} MiB over the unit's MemoryMax",
        peak >> 20
    );
    eprintln!(
        "topic flood: peak RSS {:.1} MiB, sensors retired {}, rejected at the limit {}",
        peak as f64 / (1 << 20) as f64,
        gw.metric("gateway_sensors_retired_total"),
        gw.metric("gateway_readings_rejected_total{reason=\"sensor_limit\"}")
    );
    let ts = aligned_base_ms() + 50_000;
    for v in [1, 2, 3] {
        publisher
            .send(
                "plant/l2/m1/temp",
                format!(r#"{{"value":{v},"ts":{}}}"#, ts + v * 10),
            )
            .await;
    }
    publisher.flush().await;
    let summaries = sub.wait_for_unique(1, Duration::from_secs(15)).await;
    assert_eq!(summaries[0]["sensor"], "l2/m1/temp");
    assert_eq!(summaries[0]["count"], 3);
}

/// A record the upstream client refuses (here a summary whose topic holds a
/// wildcard, written into the buffer as an older gateway without name checks
/// could have) is set aside into the quarantine file and counted, and the
/// records behind it, alarms included, are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublishable_record_is_set_aside_and_delivery_continues() {
    use sensor_gateway::buffer::Buffer;
    use sensor_gateway::metrics::Metrics;
    use sensor_gateway::model::{Lane, Record};

    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let text = gateway_config(source.addr, upstream.addr, "")
        .replace("@STATE_DIR@", &state.display().to_string());
    let config =
        sensor_gateway::Config::parse(&text, std::path::Path::new("t.toml")).expect("valid config");
    {
        let metrics = std::sync::Arc::new(Metrics::new());
        let (mut buffer, _) =
            Buffer::open(&config.buffer, &state, metrics).expect("open the buffer");
        let now = aligned_base_ms() + 59_000;
        let first = buffer.next_seq();
        let records = [
            (Lane::Summary, "gateways/gw-e2e/summary/a+b/temp"),
            (Lane::Summary, "gateways/gw-e2e/summary/l1/m1/temp"),
            (Lane::Alarm, "gateways/gw-e2e/alarm/l1/m1/temp"),
        ];
        for (i, (lane, topic)) in records.into_iter().enumerate() {
            buffer.push(
                Record {
                    seq: first + i as u64,
                    lane,
                    ts_ms: now,
                    topic: topic.into(),
                    payload: format!(r#"{{"seq":{},"gateway":"gw-e2e"}}"#, first + i as u64)
                        .into_bytes(),
                },
                now,
            );
        }
        buffer.close(now);
    }
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start_in(dir, &text, &state);
    gw.wait_ready().await;
    let got = sub.wait_for_unique(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    wait_until(
        "the set-aside record counted",
        Duration::from_secs(5),
        || gw.metric("gateway_upstream_dropped_total{reason=\"unpublishable\"}") == 1.0,
    )
    .await;
    let quarantined = std::fs::read_to_string(
        state
            .join("buffer")
            .join("quarantine")
            .join("rejected-records.jsonl"),
    )
    .expect("the quarantine file");
    assert!(quarantined.contains("a+b"), "{quarantined}");
    assert_eq!(quarantined.lines().count(), 1);
}

/// SIGTERM while the core holds the sources back (upstream down, a full
/// blocking buffer, a small channel): every message the broker sent is
/// either in the core's hands (counted in this run) or was not acknowledged
/// (sent again after the restart). None is lost between the two, as it was
/// when the client acknowledged on read and dropped the message in hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_hand_at_sigterm_are_sent_again_after_restart_mosquitto() {
    if !mosquitto_available() {
        return;
    }
    let source = Broker::start(BrokerKind::Mosquitto).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let down = free_addr();
    let rules = "[[sensor]]\nmatch = \"*\"\nwindow = \"100ms\"\n";
    let config = gateway_config(source.addr, down, rules)
        .replace("[pipeline]", "[pipeline]\nchannel_capacity = 16")
        + "\n[buffer]\nwhen_full = \"block\"\nmax_disk_bytes = 1048576\n";
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms() - 30_000;
    let mut sent = 0u64;
    for step in 0..400i64 {
        for s in 0..300 {
            publisher
                .send(
                    &format!("plant/l1/m{s}/temp"),
                    format!(r#"{{"value":{step},"ts":{}}}"#, base + step * 100),
                )
                .await;
            sent += 1;
        }
        if gw.log().contains("no longer taking records") {
            break;
        }
    }
    // More while the gateway is held back: they wait at the broker.
    for i in 0..2_000i64 {
        publisher
            .send(
                &format!("plant/l9/m{}/probe", i % 50),
                format!(r#"{{"value":{i},"ts":{}}}"#, base + i),
            )
            .await;
        sent += 1;
    }
    publisher.flush().await;
    wait_until(
        "the sources to be held back",
        Duration::from_secs(20),
        || gw.log().contains("no longer taking records"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = gw.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    let first_run = gw.metric("gateway_messages_received_total");
    assert!(first_run < sent as f64, "the gateway was held back");

    // The same gateway again, with upstream up: the broker sends what was
    // not acknowledged.
    let text = std::fs::read_to_string(gw.config_path()).expect("config");
    std::fs::write(
        gw.config_path(),
        text.replace(&down.to_string(), &upstream.addr.to_string()),
    )
    .expect("config");
    gw.restart();
    gw.wait_ready().await;
    wait_until(
        "every message sent to the gateway",
        Duration::from_secs(60),
        || first_run + gw.metric("gateway_messages_received_total") >= sent as f64,
    )
    .await;
}
