//! Upstream bandwidth, counted in bytes on the wire (MQTT PUBLISH packets:
//! fixed header, topic, packet id, MQTT 5 properties, payload) for the
//! shipped condition-monitoring rules at 10 readings/s per sensor with
//! 10 s windows (`workload::condition_monitoring`): every reading as one
//! JSON message, one JSON message per record, and envelopes of up to N
//! records in each encoding and compression. Bytes are deterministic, so
//! the goals are asserted as ratios. Print the table with
//!
//!   cargo test -p sensor-gateway-e2e --test it bandwidth -- --nocapture
//!
//! Not counted: TCP/IP and TLS framing (smaller per byte the larger the
//! messages), PUBACKs (4 bytes per message, downstream), the connection's
//! own packets.

use std::collections::HashMap;

use sensor_gateway::envelope::{
    content_type, BatchBuilder, Compression, Encoding, EnvelopeSettings,
};
use sensor_gateway::model::Record;
use sensor_gateway_e2e::workload;

/// 10 machines of 3 sensors for 10 minutes; another seed than the one the
/// dictionary was trained on.
const MACHINES: u32 = 10;
const SECONDS: u64 = 600;
const SEED: u64 = 42;
/// Where envelopes go: the default `[upstream.batch] topic`.
const BATCH_TOPIC: &str = "gateways/pumphouse-2/batch";
/// The raw readings' upstream topics: the config's value topic.
const VALUE_PREFIX: &str = "plants/site-a/pumphouse-2/value/";
/// MQTT 5 message expiry interval property: identifier and four bytes.
const EXPIRY_PROPERTY: usize = 5;
/// MQTT 5 topic alias property: identifier and two bytes.
const ALIAS_PROPERTY: usize = 3;

/// Bytes of MQTT PUBLISH packets, per protocol.
#[derive(Default)]
struct Wire {
    messages: u64,
    v311: u64,
    v5: u64,
    /// Topics with an MQTT 5 alias already (the broker's topic alias
    /// maximum is assumed to cover every topic).
    aliased: HashMap<String, ()>,
}

impl Wire {
    /// One QoS 1 PUBLISH of `payload` on `topic`; under MQTT 5 with a
    /// message expiry, a topic alias, and `content_type`.
    fn publish(&mut self, topic: &str, payload: usize, content_type: &str) {
        self.messages += 1;
        self.v311 += packet(topic.len(), payload, None) as u64;
        let first = self.aliased.insert(topic.to_owned(), ()).is_none();
        let props = EXPIRY_PROPERTY + ALIAS_PROPERTY + 3 + content_type.len();
        let topic_len = if first { topic.len() } else { 0 };
        self.v5 += packet(topic_len, payload, Some(props)) as u64;
    }
}

/// A PUBLISH packet with a packet id (QoS 1); `props` its MQTT 5 properties.
fn packet(topic: usize, payload: usize, props: Option<usize>) -> usize {
    let props = props.map_or(0, |p| varint_len(p) + p);
    let remaining = 2 + topic + 2 + props + payload;
    1 + varint_len(remaining) + remaining
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// One row of the table.
struct Row {
    what: String,
    wire: Wire,
}

fn envelopes(records: &[Record], n: usize, encoding: Encoding, compression: Compression) -> Wire {
    let settings = EnvelopeSettings {
        encoding,
        compression,
        max_records: n,
        max_bytes: 64 * 1024,
    };
    let ct = content_type(&settings);
    let mut b = BatchBuilder::new(&settings);
    let mut wire = Wire::default();
    for r in records {
        if !b.would_fit(r) {
            wire.publish(BATCH_TOPIC, b.finish().expect("an envelope").len(), ct);
        }
        b.push(r).expect("a JSON record");
    }
    if !b.is_empty() {
        wire.publish(BATCH_TOPIC, b.finish().expect("an envelope").len(), ct);
    }
    wire
}

#[test]
fn batching_cbor_and_zstd_meet_the_bandwidth_goals() {
    let w = workload::condition_monitoring(MACHINES, SECONDS, SEED);
    let readings = w.readings.len() as f64;
    let records = w.records.len() as f64;
    let mut rows = Vec::new();

    let mut raw = Wire::default();
    for (topic, payload) in &w.readings {
        let sensor = topic.split_once('/').map_or(topic.as_str(), |(_, s)| s);
        raw.publish(
            &format!("{VALUE_PREFIX}{sensor}"),
            payload.len(),
            "application/json",
        );
    }
    rows.push(Row {
        what: "every reading, one JSON message each".into(),
        wire: raw,
    });
    let mut plain = Wire::default();
    for r in &w.records {
        plain.publish(&r.topic, r.payload.len(), "application/json");
    }
    rows.push(Row {
        what: "one JSON message per record (today)".into(),
        wire: plain,
    });
    for n in [1, 10, 100] {
        for encoding in Encoding::ALL {
            for compression in Compression::ALL {
                let name = |c| match c {
                    Compression::None => "none",
                    Compression::Zstd => "zstd + dictionary",
                    Compression::ZstdNoDictionary => "zstd, no dictionary",
                };
                let enc = if encoding == Encoding::Json {
                    "json"
                } else {
                    "cbor"
                };
                rows.push(Row {
                    what: format!("envelopes of up to {n}, {enc}, {}", name(compression)),
                    wire: envelopes(&w.records, n, encoding, compression),
                });
            }
        }
    }

    println!(
        "{} readings, {} records ({} sensors, {} s, 10 readings/s, 10 s windows)\n",
        w.readings.len(),
        w.records.len(),
        MACHINES * 3,
        SECONDS
    );
    println!("| upstream messages | messages | bytes (3.1.1) | bytes (5) | per record (5) | per reading (5) | x fewer than readings (5) | x fewer than JSON per record (5) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let (raw5, plain5) = (rows[0].wire.v5 as f64, rows[1].wire.v5 as f64);
    for r in &rows {
        let b = r.wire.v5 as f64;
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} |",
            r.what,
            r.wire.messages,
            r.wire.v311,
            r.wire.v5,
            b / records,
            b / readings,
            raw5 / b,
            plain5 / b
        );
    }

    // Envelopes of 10 or more records compressed with the shipped
    // dictionary, in either encoding (the recommended setting is 100, CBOR,
    // zstd: configs/cellular.toml), meet the goals under either protocol.
    let (raw, plain) = (&rows[0].wire, &rows[1].wire);
    let mut checked = 0;
    for r in rows
        .iter()
        .filter(|r| r.what.ends_with("zstd + dictionary"))
    {
        if r.what.contains("up to 1,") {
            continue;
        }
        for (raw, plain, batched, proto) in [
            (raw.v311, plain.v311, r.wire.v311, "3.1.1"),
            (raw.v5, plain.v5, r.wire.v5, "5"),
        ] {
            assert!(
                raw >= 50 * batched,
                "{}, MQTT {proto}: {raw} bytes of readings, {batched} batched: less than 50x",
                r.what
            );
            assert!(
                plain >= 3 * batched,
                "{}, MQTT {proto}: {plain} bytes of JSON records, {batched} batched: less than 3x",
                r.what
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "the rows of 10 and 100, JSON and CBOR");
}
