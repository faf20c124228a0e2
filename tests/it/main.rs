//! End-to-end tests: the real `sensor-gateway` binary between real brokers.
//!
//! - `pipeline`: readings in, summaries out, every count exact.
//! - `analytics`: the wear scenario's alarms and anomalies, acknowledgement,
//!   kill -9 with active alarms.
//! - `outage`: the upstream broker dies and comes back; nothing is lost.
//! - `shutdown`: SIGTERM flushes open windows and delivers them.
//! - `status`: the retained status topic: birth, periodic, last will, clean offline.
//! - `systemd`: READY, STATUS, WATCHDOG and STOPPING on a notification socket.
//! - `tls`: upstream over mutual TLS with a password file to Mosquitto;
//!   wrong CA, expired, wrong host and an untrusted client certificate are
//!   each explained while the records stay buffered; a key that does not
//!   match its certificate stops `check` and the daemon.
//! - `http`: `/metrics` parsed as Prometheus parses it during a run;
//!   `/readyz` 503 while the uplink is cut, 200 once it is back.
//! - `hostile`: poison messages and hostile publishers cost only themselves.
//! - `reload`: `sensor-gateway reload` keeps the windows, alarms and
//!   baselines of sensors whose rule did not change; a bad config is refused.
//! - `bandwidth`: upstream bytes per reading and per record for every
//!   envelope setting on the condition-monitoring rules; the goals as ratios.
//! - `consume`: the reference consumer decodes envelopes of every kind and
//!   plain messages, drops duplicates, counts what it cannot decode; the
//!   gateway's batches round trip through it with exact counts; a restarted
//!   consumer resumes its session.
//! - `serial`: simulated nodes on real pseudo-terminals, three formats,
//!   faults, unplug, reboots.
//! - `interop`: the matrix of MQTT servers (rumqttd, Mosquitto, NATS, a
//!   NATS cluster, RabbitMQ): connect, outage, exact delivery, retained
//!   status; failover across a NATS cluster mid-drain.
//! - `drain`: a long backlog drains over a simulated cellular link.
//! - `schemas` (no test of its own): checks what `analytics`, `pipeline` and
//!   `status` collected upstream against the JSON Schemas in docs/schemas.
//!
//! Each scenario runs against the embedded rumqttd broker and against
//! Mosquitto (skipped when it is not installed, unless REQUIRE_MOSQUITTO=1).

mod analytics;
mod bandwidth;
mod buffer;
mod consume;
mod drain;
mod hostile;
mod http;
mod interop;
mod mqtt5;
mod outage;
mod pipeline;
mod powercut;
mod reload;
mod schemas;
mod serial;
mod shutdown;
mod status;
mod systemd;
mod tls;

/// A start of event time aligned to a 1 s window boundary, a minute ago.
pub fn aligned_base_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now - now.rem_euclid(1000) - 60_000
}
