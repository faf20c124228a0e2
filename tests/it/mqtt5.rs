//! MQTT 5 upstream against Mosquitto with an ACL that denies one topic:
//! under MQTT 5 the broker's PUBACK says "not authorized", and the gateway
//! never counts such a record delivered: it keeps it and sends it again,
//! and once the ACL is fixed it arrives. Under 3.1.1 the same broker
//! acknowledges the publish and drops it: the documented limitation.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::aligned_base_ms;
use sensor_gateway_e2e::{
    gateway_config, mosquitto_available, unique_seqs, wait_until, Broker, BrokerKind, Gateway,
    Publisher, Subscriber,
};

/// Anonymous clients may do anything under `gateways/`, but publish
/// nothing for line l2.
const ACL_DENYING_L2: &str =
    "topic readwrite gateways/#\ntopic deny gateways/gw-e2e/summary/l2/#\ntopic readwrite plant/#\n";
const ACL_OPEN: &str = "topic readwrite gateways/#\ntopic readwrite plant/#\n";

fn sensor(v: &serde_json::Value) -> &str {
    v["sensor"].as_str().unwrap_or("?")
}

/// Publishes one reading per second for l1 and l2 for `seconds` seconds.
async fn publish_two_lines(source: std::net::SocketAddr, seconds: i64) {
    let mut publisher = Publisher::connect(source).await;
    let base = aligned_base_ms();
    for i in 0..seconds * 4 {
        let ts = base + i * 250;
        for line in ["l1", "l2"] {
            publisher
                .send(
                    &format!("plant/{line}/m1/temp"),
                    format!(r#"{{"value":{i},"ts":{ts}}}"#),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    publisher.flush().await;
}

async fn acl_gateway(protocol: &str) -> (Broker, Broker, Subscriber, Gateway) {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream =
        Broker::start_mosquitto("acl_file @DIR@/acl\n", &[("acl", ACL_DENYING_L2)]).await;
    let sub = Subscriber::start(upstream.addr, "gateways/gw-e2e/summary/#").await;
    let config =
        gateway_config(source.addr, upstream.addr, "") + &format!("protocol = \"{protocol}\"\n");
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    (source, upstream, sub, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_denied_topic_is_never_counted_delivered_under_mqtt5_and_arrives_once_allowed() {
    if !mosquitto_available() {
        return;
    }
    let (source, upstream, sub, gw) = acl_gateway("5").await;
    publish_two_lines(source.addr, 4).await;
    wait_until(
        "refusals counted and l1's summaries delivered",
        Duration::from_secs(20),
        || {
            gw.metric("gateway_upstream_refused_total{reason=\"not_authorized\"}") >= 1.0
                && gw.metric("gateway_upstream_queue_records") >= 1.0
                && sub
                    .snapshot()
                    .iter()
                    .filter(|v| sensor(v) == "l1/m1/temp")
                    .count()
                    >= 3
        },
    )
    .await;
    // Let the windows close and everything allowed be acknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered = sub.snapshot();
    assert!(
        delivered.iter().all(|v| sensor(v) == "l1/m1/temp"),
        "a denied summary arrived: {delivered:?}"
    );
    let acked = gw.metric("gateway_upstream_acked_total");
    let produced = gw.metric("gateway_records_produced_total");
    let l1 = unique_seqs(&delivered).len() as f64;
    // Only what arrived is counted delivered; the l2 summaries wait.
    assert_eq!(acked, l1, "acked {acked} but {l1} arrived");
    assert!(produced > acked, "produced {produced}, acked {acked}");
    // The refused records stay buffered (and the acknowledged ones behind
    // them in their lane until the lane's cursor can pass them).
    assert!(
        gw.metric("gateway_upstream_queue_records") >= produced - acked,
        "the refused records stay buffered"
    );
    assert!(
        gw.log().contains("Upstream refused a record")
            && gw.log().contains("allow the gateway's user"),
        "the refusal is logged with its fix:\n{}",
        gw.log()
    );
    // The operator fixes the ACL: the kept records arrive, nothing lost.
    std::fs::write(upstream.dir().join("acl"), ACL_OPEN).expect("write the ACL");
    upstream.reload();
    wait_until(
        "every summary delivered after the ACL is fixed",
        Duration::from_secs(90),
        || gw.metric("gateway_upstream_queue_records") == 0.0,
    )
    .await;
    wait_until("the l2 summaries upstream", Duration::from_secs(10), || {
        unique_seqs(&sub.snapshot()).len() as f64 == produced
    })
    .await;
    let seqs: BTreeSet<u64> = unique_seqs(&sub.snapshot()).into_iter().collect();
    assert_eq!(seqs.len() as f64, gw.metric("gateway_upstream_acked_total"));
    assert!(sub.snapshot().iter().any(|v| sensor(v) == "l2/m1/temp"));
    assert_eq!(gw.metric("gateway_upstream_protocol_version"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mqtt_3_1_1_an_acl_denied_publish_is_acknowledged_and_lost_as_documented() {
    if !mosquitto_available() {
        return;
    }
    let (source, _upstream, sub, gw) = acl_gateway("3.1.1").await;
    publish_two_lines(source.addr, 4).await;
    wait_until("everything acknowledged", Duration::from_secs(20), || {
        let produced = gw.metric("gateway_records_produced_total");
        produced >= 4.0 && gw.metric("gateway_upstream_acked_total") == produced
    })
    .await;
    // Mosquitto acknowledged the l2 summaries and dropped them: a 3.1.1
    // PUBACK carries no reason (docs/interop.md).
    let delivered = sub.snapshot();
    assert!(delivered.iter().all(|v| sensor(v) == "l1/m1/temp"));
    assert!(gw.metric("gateway_upstream_acked_total") > unique_seqs(&delivered).len() as f64);
    assert_eq!(gw.metric("gateway_upstream_protocol_version"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_mqtt5_is_spoken_to_in_3_1_1_with_one_warning() {
    // The embedded rumqttd listens for 3.1.1 only.
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/gw-e2e/summary/#").await;
    let config = gateway_config(source.addr, upstream.addr, "") + "protocol = \"5\"\n";
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    publish_two_lines(source.addr, 3).await;
    wait_until("summaries upstream", Duration::from_secs(20), || {
        let produced = gw.metric("gateway_records_produced_total");
        produced >= 4.0 && unique_seqs(&sub.snapshot()).len() as f64 == produced
    })
    .await;
    assert_eq!(gw.metric("gateway_upstream_protocol_version"), 4.0);
    let log = gw.log();
    assert_eq!(
        log.matches("does not speak MQTT 5").count(),
        1,
        "one warning:\n{log}"
    );
}
