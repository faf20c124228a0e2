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
