//! The interop matrix: the gateway against every MQTT server a fleet runs
//! (rumqttd, Mosquitto, NATS with JetStream and MQTT, a 3-node NATS
//! cluster, RabbitMQ with `rabbitmq_mqtt`), each through the same case:
//! connect, an outage (the server killed and restarted on its port, or for
//! the shared RabbitMQ the uplink cut), reconnect, and PUBACK-driven
//! delivery with exact counts: after deduplication by (gateway, seq) every
//! summary arrives, in order per sensor, and every reading is in exactly
//! one of them. The same run probes the retained status topic, where
//! servers differ (docs/interop.md has the table). Last, failover across
//! the cluster in the middle of a drain. (Mosquitto's ACL under both
//! protocols is `mqtt5.rs`.)
//!
//! The upstream protocol is one parameter of every case ([`Protocol`]).
//! RabbitMQ and the cluster are slow to start and run only with
//! `INTEROP_HEAVY=1`; a missing server binary fails the test under
//! `REQUIRE_INTEROP=1`.

use std::net::SocketAddr;
use std::time::Duration;

use sensor_gateway_e2e::servers::{
    heavy_enabled, server_available, Nats, NatsCluster, RabbitMq, RABBITMQ_SERVER,
};
use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

/// The MQTT protocol the gateway speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    /// MQTT 5, falling back to 3.1.1 where the server does not speak it.
    V5,
}

impl Protocol {
    /// The `[upstream]` line that selects it.
    fn config_line(self) -> &'static str {
        match self {
            Protocol::V311 => "protocol = \"3.1.1\"",
            Protocol::V5 => "protocol = \"5\"",
        }
    }
}

/// The test gateway's config with `protocol` upstream.
pub fn protocol_config(source: SocketAddr, upstream: SocketAddr, protocol: Protocol) -> String {
    gateway_config(source, upstream, "").replace(
        "[upstream]\n",
        &format!("[upstream]\n{}\n", protocol.config_line()),
    )
}

/// A server under test, as the case sees it.
pub trait Server {
    /// Where the gateway connects (through the uplink relay).
    fn gateway_addr(&self) -> SocketAddr;
    /// Where the test's consumer subscribes (another node of a cluster).
    fn consumer_addr(&self) -> SocketAddr {
        self.gateway_addr()
    }
    /// The server the gateway talks to crashes; `false` if it cannot be
    /// crashed here (then only the uplink is cut).
    fn crash(&mut self) -> bool;
    /// Starts it again on the same port.
    async fn recover(&mut self);
}

impl Server for Broker {
    fn gateway_addr(&self) -> SocketAddr {
        self.addr
    }
    fn crash(&mut self) -> bool {
        self.kill();
        true
    }
    async fn recover(&mut self) {
        self.restart().await;
    }
}

impl Server for Nats {
    fn gateway_addr(&self) -> SocketAddr {
        self.node.mqtt
    }
    fn crash(&mut self) -> bool {
        self.node.process.kill();
        true
    }
    async fn recover(&mut self) {
        self.node.restart().await;
    }
}

/// The gateway on node 1, the consumer on node 2; node 1 crashes.
impl Server for NatsCluster {
    fn gateway_addr(&self) -> SocketAddr {
        self.nodes[0].mqtt
    }
    fn consumer_addr(&self) -> SocketAddr {
        self.nodes[1].mqtt
    }
    fn crash(&mut self) -> bool {
        self.nodes[0].process.kill();
        true
    }
    async fn recover(&mut self) {
        self.nodes[0].restart().await;
    }
}

/// The RabbitMQ every test shares: never crashed, the uplink is cut.
pub struct SharedRabbit(&'static RabbitMq);

impl Server for SharedRabbit {
    fn gateway_addr(&self) -> SocketAddr {
        self.0.mqtt
    }
    fn crash(&mut self) -> bool {
        false
    }
    async fn recover(&mut self) {}
}

/// What the case observed beyond exact delivery.
#[derive(Debug)]
pub struct Observed {
    /// What a consumer that subscribed to the gateway's status topic
    /// after its birth message got.
    pub late_status: LateStatus,
    /// The same through a wildcard filter (`gateways/+/status`).
    pub late_status_wildcard: LateStatus,
}

impl Observed {
    fn expect_status(&self, exact: LateStatus, wildcard: LateStatus) {
        assert_eq!(
            (self.late_status, self.late_status_wildcard),
            (exact, wildcard),
            "what a late consumer of the status got (exact topic, wildcard)"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateStatus {
    /// The status, flagged retained.
    Retained,
    /// The status, without the retain flag.
    Unflagged,
    /// Nothing within 5 s.
    Nothing,
}

const SENSORS: [&str; 2] = ["l1/m1/temp", "l1/m2/temp"];
const PER_WINDOW: u64 = 20;

/// Every summary exactly once after deduplication by (gateway, seq), in
/// order per sensor, every reading counted once.
fn assert_exact(messages: &[serde_json::Value], summaries: u64, readings: u64) {
    let unique = dedupe(messages);
    let mut keys: Vec<(String, u64)> = unique
        .iter()
        .map(|m| {
            (
                m["gateway"].as_str().unwrap_or_default().to_owned(),
                m["seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len() as u64, summaries, "distinct (gateway, seq)");
    let seqs: Vec<u64> = {
        let mut s = unique_seqs(messages);
        s.sort_unstable();
        s
    };
    assert_eq!(seqs, (1..=summaries).collect::<Vec<u64>>(), "no gap");
    assert_order_per_sensor(&unique);
    let total: u64 = unique.iter().filter_map(|s| s["count"].as_u64()).sum();
    assert_eq!(total, readings, "every reading in exactly one summary");
}

/// What a new consumer of `filter` gets within 5 s.
async fn probe_late_status(addr: SocketAddr, filter: &str, gateway: &str) -> LateStatus {
    let late = Subscriber::start_as(addr, filter, &format!("e2e-late-{gateway}")).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // Other tests' gateways may share the server: only this one's.
            let statuses = late.status_snapshot();
            if let Some((_, retained)) = statuses.iter().find(|(v, _)| v["gateway"] == gateway) {
                return if *retained {
                    LateStatus::Retained
                } else {
                    LateStatus::Unflagged
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or(LateStatus::Nothing)
}

/// The case every server goes through.
async fn delivery_through_an_outage(server: &mut impl Server, protocol: Protocol) -> Observed {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let uplink = Uplink::start("127.0.0.1:0".parse().unwrap(), server.gateway_addr())
        .await
        .unwrap();
    // A gateway id of its own: a shared server (RabbitMQ) carries other
    // tests' gateways at the same time.
    let id = format!("gw-{}", uplink.listen.port());
    let consumer_id = format!("e2e-consumer-{}", uplink.listen.port());
    let sub = Subscriber::start_persistent(
        server.consumer_addr(),
        &format!("gateways/{id}/#"),
        &consumer_id,
    )
    .await;
    let config = protocol_config(source.addr, uplink.listen, protocol)
        .replace("id = \"gw-e2e\"", &format!("id = \"{id}\""));
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms();

    // Connected: 2 windows x 2 sensors.
    publish_windows(&mut publisher, base, 0..2, &SENSORS, PER_WINDOW).await;
    sub.wait_for_unique(4, Duration::from_secs(30)).await;

    // The status topic is retained: a consumer arriving now gets it.
    let exact = format!("gateways/{id}/status");
    let late_status = probe_late_status(server.consumer_addr(), &exact, &id).await;
    let late_status_wildcard =
        probe_late_status(server.consumer_addr(), "gateways/+/status", &id).await;

    // Outage: the link is cut and the server crashes (where it can).
    uplink.cut();
    let crashed = server.crash();
    publish_windows(&mut publisher, base, 2..12, &SENSORS, PER_WINDOW).await;
    wait_until(
        "20 summaries queued during the outage",
        Duration::from_secs(30),
        || gw.metric("gateway_upstream_queue_records") >= 20.0,
    )
    .await;
    assert_eq!(gw.metric("gateway_summaries_produced_total"), 24.0);

    // Recovery: the server back on its port, the consumer back, the link up.
    if crashed {
        server.recover().await;
        if server.consumer_addr() == server.gateway_addr() {
            sub.wait_subscribed(2).await;
        }
    }
    uplink.restore();
    let messages = sub.wait_for_unique(24, Duration::from_secs(60)).await;
    assert_exact(&messages, 24, 12 * 2 * PER_WINDOW);
    wait_until("every PUBACK", Duration::from_secs(20), || {
        gw.metric("gateway_upstream_queue_records") == 0.0
            && gw.metric("gateway_upstream_acked_total") >= 24.0
    })
    .await;
    assert!(
        gw.metric("gateway_upstream_connections_total") >= 2.0,
        "the gateway reconnected"
    );
    Observed {
        late_status,
        late_status_wildcard,
    }
}

/// rumqttd (`sensor-sim broker`, a 3.1.1 listener: with protocol 5 the
/// gateway falls back): retained messages everywhere.
async fn rumqttd(protocol: Protocol) {
    let mut server = Broker::start(BrokerKind::Rumqttd).await;
    let seen = delivery_through_an_outage(&mut server, protocol).await;
    seen.expect_status(LateStatus::Retained, LateStatus::Retained);
}

/// Mosquitto 2.0: supports MQTT 5 and retained messages everywhere.
async fn mosquitto(protocol: Protocol) {
    if !mosquitto_available() {
        return;
    }
    let mut server = Broker::start(BrokerKind::Mosquitto).await;
    let seen = delivery_through_an_outage(&mut server, protocol).await;
    seen.expect_status(LateStatus::Retained, LateStatus::Retained);
}

/// NATS 2.9 speaks 3.1.1 only: asked for 5, the gateway falls back.
async fn nats(protocol: Protocol) {
    if !server_available("nats-server", "nats-server") {
        return;
    }
    let mut server = Nats::start().await;
    eprintln!("NATS started in {:?}", server.started_in);
    let seen = delivery_through_an_outage(&mut server, protocol).await;
    seen.expect_status(LateStatus::Retained, LateStatus::Retained);
}

/// The gateway on node 1 of a NATS cluster, the consumer on node 2.
async fn nats_cluster(protocol: Protocol, test: &str) {
    if !server_available("nats-server", "nats-server")
        || !heavy_enabled(
            test,
            "a 3-node NATS cluster takes seconds to elect a JetStream leader",
        )
    {
        return;
    }
    let mut server = NatsCluster::start().await;
    eprintln!("the NATS cluster started in {:?}", server.started_in);
    let seen = delivery_through_an_outage(&mut server, protocol).await;
    seen.expect_status(LateStatus::Retained, LateStatus::Retained);
}

/// RabbitMQ 3.10 speaks 3.1.1 only (asked for 5, the gateway falls back)
/// and sends retained messages only to subscriptions without wildcards.
/// The consumer's persistent QoS 1 subscription is a quorum queue: the
/// summaries it counted arrived through it.
async fn rabbitmq(protocol: Protocol, test: &str) {
    if !server_available(RABBITMQ_SERVER, "rabbitmq-server")
        || !heavy_enabled(test, "RabbitMQ takes about 10 s to start")
    {
        return;
    }
    let rabbit = RabbitMq::shared();
    eprintln!("RabbitMQ started in {:?}", rabbit.started_in);
    let seen = delivery_through_an_outage(&mut SharedRabbit(rabbit), protocol).await;
    seen.expect_status(LateStatus::Retained, LateStatus::Nothing);
    let queues = rabbit.queues();
    assert!(
        queues.iter().any(
            |(name, kind)| name.starts_with("mqtt-subscription-e2e-consumer-") && kind == "quorum"
        ),
        "no quorum queue for the consumer: {queues:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rumqttd_delivers_everything_through_an_outage_mqtt311() {
    rumqttd(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rumqttd_delivers_everything_through_an_outage_mqtt5() {
    rumqttd(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_mosquitto_delivers_everything_through_an_outage_mqtt311() {
    mosquitto(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_mosquitto_delivers_everything_through_an_outage_mqtt5() {
    mosquitto(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nats_delivers_everything_through_an_outage_mqtt311() {
    nats(Protocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nats_falls_back_from_mqtt5_and_delivers_everything() {
    nats(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_nats_cluster_delivers_everything_through_a_node_crash_mqtt311() {
    nats_cluster(
        Protocol::V311,
        "interop_nats_cluster_delivers_everything_through_a_node_crash_mqtt311",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rabbitmq_delivers_everything_through_a_quorum_queue_mqtt311() {
    rabbitmq(
        Protocol::V311,
        "interop_rabbitmq_delivers_everything_through_a_quorum_queue_mqtt311",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_rabbitmq_falls_back_from_mqtt5_and_delivers_everything() {
    rabbitmq(
        Protocol::V5,
        "interop_rabbitmq_falls_back_from_mqtt5_and_delivers_everything",
    )
    .await;
}

/// `brokers` lists the three nodes of a NATS cluster; the gateway is on
/// node 1 (listed first) when it is killed in the middle of draining a
/// backlog of thousands of records: the gateway fails over to another node
/// and everything arrives, in order per sensor after deduplication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_mid_drain_loses_nothing_nats() {
    if !server_available("nats-server", "nats-server")
        || !heavy_enabled(
            "cluster_failover_mid_drain_loses_nothing_nats",
            "a 3-node NATS cluster and a backlog of thousands of records",
        )
    {
        return;
    }
    let mut cluster = NatsCluster::start().await;
    let nodes = cluster.mqtt_addrs();
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start_persistent(nodes[1], "gateways/#", "e2e-failover-consumer").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let list: Vec<String> = nodes.iter().map(|a| format!("\"{a}\"")).collect();
    let text = gateway_config(source.addr, nodes[0], "")
        .replace(
            &format!("broker = \"{}\"", nodes[0]),
            &format!("brokers = [{}]", list.join(", ")),
        )
        .replace("@STATE_DIR@", &state.display().to_string());
    let config =
        sensor_gateway::Config::parse(&text, std::path::Path::new("t.toml")).expect("valid config");
    // 4 hours of 10 s windows of 2 sensors: 2,880 summaries and 3 alarms.
    let (summaries, alarms, _) = crate::drain::write_backlog(&config, &state, 4.0);
    let total = summaries + alarms;
    let mut gw = Gateway::start_in(dir, &text, &state);
    gw.wait_ready().await;
    sub.wait_for_unique(300, Duration::from_secs(60)).await;
    cluster.nodes[0].process.kill();
    let before = unique_seqs(&sub.snapshot()).len() as u64;
    assert!(
        before < total,
        "node 1 was killed after the drain ended: make the backlog longer"
    );
    let messages = sub
        .wait_for_unique(total as usize, Duration::from_secs(180))
        .await;
    let unique = dedupe(&messages);
    assert_eq!(unique.len() as u64, total, "every record exactly once");
    assert_order_per_sensor(&unique);
    assert!(
        gw.metric("gateway_upstream_connections_total") >= 2.0,
        "the gateway connected to another node"
    );
    eprintln!("failover: node 1 killed after {before} of {total} records arrived");
}
