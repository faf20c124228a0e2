//! The upstream broker dies while the plant keeps publishing; when it comes
//! back, every summary produced meanwhile arrives, in order, exactly once
//! after deduplication by sequence number.

use std::time::Duration;

use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_loses_nothing_rumqttd() {
    outage(BrokerKind::Rumqttd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_loses_nothing_mosquitto() {
    if mosquitto_available() {
        outage(BrokerKind::Mosquitto).await;
    }
}

const SENSORS: [&str; 2] = ["l1/m1/temp", "l1/m2/temp"];

async fn outage(kind: BrokerKind) {
    let source = Broker::start(kind).await;
    let mut upstream = Broker::start(kind).await;
    // The gateway reaches upstream through a relay that the test can hold
    // closed until the test's own subscriber is back, so that no summary is
    // published to a broker nobody is subscribed to.
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), upstream.addr)
        .await
        .unwrap();
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let mut gw = Gateway::start(&gateway_config(source.addr, uplink.listen, ""));
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms();

    // Before the outage: 2 windows x 2 sensors.
    publish_windows(&mut publisher, base, 0..2, &SENSORS, 20).await;
    sub.wait_for_unique(4, Duration::from_secs(20)).await;

    // Outage: the broker process is killed and the link is down.
    uplink.cut();
    upstream.kill();
    publish_windows(&mut publisher, base, 2..12, &SENSORS, 20).await;
    // 10 windows x 2 sensors = 20 summaries wait in the gateway.
    wait_until(
        "20 summaries queued during the outage",
        Duration::from_secs(20),
        || gw.metric("gateway_upstream_queue_records") >= 20.0,
    )
    .await;
    assert_eq!(gw.metric("gateway_summaries_produced_total"), 24.0);
    assert!(gw.metric("gateway_upstream_disconnects_total") >= 1.0);

    // Recovery: broker restarted on the same port, subscriber back, link up.
    upstream.restart().await;
    sub.wait_subscribed(2).await;
    uplink.restore();
    let messages = sub.wait_for_unique(24, Duration::from_secs(30)).await;

    let seqs = unique_seqs(&messages);
    assert_eq!(
        seqs,
        (1..=24).collect::<Vec<u64>>(),
        "every summary, in order"
    );
    let summaries = dedupe(&messages);
    let total: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(
        total,
        12 * 2 * 20,
        "every reading is in exactly one delivered summary"
    );
    wait_until("the queue to drain", Duration::from_secs(10), || {
        gw.metric("gateway_upstream_queue_records") == 0.0
            && gw.metric("gateway_upstream_acked_total") >= 24.0
    })
    .await;
    assert_eq!(
        gw.metric("gateway_upstream_dropped_total{reason=\"buffer_full_oldest\"}"),
        0.0
    );
}
