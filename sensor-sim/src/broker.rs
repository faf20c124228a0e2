//! An embedded MQTT broker (rumqttd), for demos, tests and benchmarks on a
//! machine with nothing installed.

use std::net::SocketAddr;

use anyhow::Context;

/// The rumqttd configuration for one plain-TCP MQTT 3.1.1 listener.
pub fn config(listen: SocketAddr) -> anyhow::Result<rumqttd::Config> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 500
    dynamic_filters = true
"#
    );
    toml::from_str(&text).context("the embedded broker configuration is invalid")
}

/// Runs a broker on `listen`; blocks for as long as the broker runs.
pub fn run_blocking(listen: SocketAddr) -> anyhow::Result<()> {
    let mut broker = rumqttd::Broker::new(config(listen)?);
    broker.start().context("the embedded broker stopped")?;
    Ok(())
}
