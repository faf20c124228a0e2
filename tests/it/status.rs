//! Alive or not, seen from upstream: the gateway's retained status topic
//! carries a birth on connect, a periodic status, a clean `offline` on
//! SIGTERM, and the broker publishes the last will when the gateway dies.

use std::time::Duration;

use sensor_gateway_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_topic_shows_birth_periodic_status_and_last_will_on_rumqttd() {
    birth_status_and_last_will(BrokerKind::Rumqttd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_topic_shows_birth_periodic_status_and_last_will_on_mosquitto() {
    if mosquitto_available() {
        birth_status_and_last_will(BrokerKind::Mosquitto).await;
    }
}

fn states(sub: &Subscriber) -> Vec<String> {
    sub.status_snapshot()
        .iter()
        .map(|(v, _)| v["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn birth_status_and_last_will(kind: BrokerKind) {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(kind).await;
    let sub = Subscriber::start_keeping_topics(upstream.addr, "gateways/gw-e2e/status").await;
    // `[upstream]` is the config's last section.
    let config = gateway_config(source.addr, upstream.addr, "") + "status_interval = \"1s\"\n";
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    wait_until(
        "birth and two periodic statuses",
        Duration::from_secs(20),
        || sub.status_snapshot().len() >= 3,
    )
    .await;
    let seen = sub.status_snapshot();
    for (v, retained) in &seen {
        assert_eq!(v["state"], "online", "{v}");
        assert_eq!(v["gateway"], "gw-e2e");
        assert_eq!(v["sources"][0]["name"], "plant", "{v}");
        assert_eq!(v["sources"][0]["kind"], "mqtt", "{v}");
        assert_eq!(v["config_sha256"].as_str().map(str::len), Some(64), "{v}");
        assert!(v["backlog_records"].is_i64(), "{v}");
        // A live subscription gets them as they are published (retain
        // flag cleared); a late subscriber gets the last one retained.
        assert!(!retained, "{v}");
    }
    // A reload with a changed file: the next status carries its digest.
    let before = seen[0].0["config_sha256"].clone();
    gw.write_config(&(config.clone() + "# edited\n"));
    let pid_file = gw.pid_file().display().to_string();
    assert_eq!(gw.command(&["reload", "--pid-file", &pid_file]).0, 0);
    wait_until(
        "a status with the new digest",
        Duration::from_secs(20),
        || {
            sub.status_snapshot()
                .last()
                .is_some_and(|(v, _)| v["config_sha256"] != before)
        },
    )
    .await;
    let late = Subscriber::start(upstream.addr, "gateways/gw-e2e/status").await;
    wait_until("the retained status", Duration::from_secs(10), || {
        !late.status_snapshot().is_empty()
    })
    .await;
    assert_eq!(late.status_snapshot()[0].0["state"], "online");
    assert!(late.status_snapshot()[0].1, "delivered as retained");

    // Killed: the broker publishes the last will.
    gw.kill();
    wait_until("the last will", Duration::from_secs(20), || {
        states(&sub).last().map(String::as_str) == Some("offline")
    })
    .await;
    let (will, _) = sub.status_snapshot().last().cloned().unwrap();
    assert_eq!(will["clean"], false, "{will}");

    // Restarted: a new birth; then SIGTERM: a clean offline.
    gw.restart();
    wait_until("a new birth", Duration::from_secs(20), || {
        states(&sub).last().map(String::as_str) == Some("online")
    })
    .await;
    assert!(gw.terminate(Duration::from_secs(15)).await.success());
    wait_until("the clean offline", Duration::from_secs(10), || {
        states(&sub).last().map(String::as_str) == Some("offline")
    })
    .await;
    let (bye, _) = sub.status_snapshot().last().cloned().unwrap();
    assert_eq!(bye["clean"], true, "{bye}");
    assert!(bye["backlog_records"].is_i64(), "{bye}");
    // Birth, periodic, last will and clean offline match the status schema.
    assert!(crate::schemas::check_upstream(&sub)["status"] >= 5);
}
