//! SIGTERM: open windows are flushed and delivered before the process exits.

use std::time::Duration;

use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_open_windows_and_delivers_them() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let rules = "[[sensor]]\nmatch = \"*/slow\"\nwindow = \"1h\"\n";
    let mut gw = Gateway::start(&gateway_config(source.addr, upstream.addr, rules));
    gw.wait_ready().await;
    let mut publisher = Publisher::connect(source.addr).await;
    let base = aligned_base_ms() - aligned_base_ms().rem_euclid(3_600_000) + 60_000;
    for i in 0..10 {
        publisher
            .send(
                "plant/l1/m1/slow",
                format!(r#"{{"value":{i},"ts":{}}}"#, base + i * 1000),
            )
            .await;
    }
    publisher.flush().await;
    wait_until("10 accepted readings", Duration::from_secs(10), || {
        gw.metric("gateway_readings_accepted_total") >= 10.0
    })
    .await;
    assert!(
        sub.snapshot().is_empty(),
        "the one-hour window is still open"
    );

    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{}",
        gw.log()
    );
    let messages = sub.wait_for_unique(1, Duration::from_secs(5)).await;
    assert_eq!(messages[0]["count"], 10);
    assert_eq!(messages[0]["max"], 9.0);
    assert!(gw.log().contains("open windows flushed"));
}

/// `when_full = "block"`, a 1 MiB buffer filled while upstream is down, then
/// SIGTERM: the gateway stops taking from its sources, flushes what it can,
/// counts what it cannot keep, and exits within `shutdown_grace` plus the
/// flush bound instead of hanging until SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_when_blocked_on_a_full_buffer() {
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let upstream_down = free_addr();
    let rules = "[[sensor]]\nmatch = \"*\"\nwindow = \"100ms\"\n";
    let config = gateway_config(source.addr, upstream_down, rules)
        + "\n[buffer]\nwhen_full = \"block\"\nmax_disk_bytes = 1048576\n";
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    // 300 sensors, each reading in its own 100 ms window (about 1 MB of
    // summaries a second), published for 12 s while the buffer fills.
    let addr = source.addr;
    let feeder = tokio::spawn(async move {
        let mut publisher = Publisher::connect(addr).await;
        let base = aligned_base_ms() - 30_000;
        for step in 0..120i64 {
            for s in 0..300 {
                publisher
                    .send(
                        &format!("plant/l1/m{s}/temp"),
                        format!(r#"{{"value":{step},"ts":{}}}"#, base + step * 100),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    wait_until("the buffer to block", Duration::from_secs(20), || {
        gw.log().contains("no longer taking records")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let status = gw.terminate(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}\n{}", gw.log());
    // shutdown_grace is 5 s, the flush bound 10 s; generous slack for a
    // loaded CI machine, far below systemd's 90 s SIGKILL.
    assert!(
        took < Duration::from_secs(25),
        "took {took:?}\n{}",
        gw.log()
    );
    assert!(
        gw.metric("gateway_upstream_dropped_total{reason=\"buffer_full_newest\"}") > 0.0,
        "what did not fit is counted\n{}",
        gw.log()
    );
    feeder.abort();
    assert!(gw.log().contains("open windows flushed"), "{}", gw.log());
}
