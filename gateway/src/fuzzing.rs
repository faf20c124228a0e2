//! The bodies of the fuzz targets in `fuzz/`, kept in the library so that
//! every input a fuzzer ever found (saved under `fuzz/regressions/<target>/`)
//! is replayed by `cargo test` as a regression test.
//!
//! Each function panics only on a real defect: a decoder that panics, or a
//! property that does not hold for the input.

use crate::wire::{self, frame, ChannelMap, Format, NodeTime, PortDecoder, PortSettings, Unmapped};

/// Runs `data` through the target `name`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "payload" => payload(data),
        "segment" => segment(data),
        "config" => config(data),
        "frame" => frame_codec(data),
        "line" => line(data),
        "json" => json(data),
        "serial_port" => serial_port(data),
        "mqtt_guard" => mqtt_guard(data),
        "envelope" => envelope(data),
        _ => return false,
    }
    true
}

/// The fuzz target names.
pub const TARGETS: &[&str] = &[
    "payload",
    "segment",
    "config",
    "frame",
    "line",
    "json",
    "serial_port",
    "mqtt_guard",
    "envelope",
];

/// The source guard's two stream parsers, fed the same bytes in chunks
/// whose size the first byte picks, never panic; whatever the filter does
/// not discard it forwards, and the boundaries it finds lie inside the input.
pub fn mqtt_guard(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut filter = crate::source::guard::InboundFilter::new(usize::from(first) * 4);
    let mut bounds = crate::source::guard::Boundaries::default();
    let (mut forward, mut replies, mut discarded) = (Vec::new(), Vec::new(), Vec::new());
    for c in rest.chunks(chunk) {
        if filter
            .feed(c, &mut forward, &mut replies, &mut discarded)
            .is_err()
        {
            break;
        }
        assert!(forward.len() <= rest.len());
    }
    for c in rest.chunks(chunk) {
        match bounds.feed(c) {
            Ok(Some(at)) => assert!(at <= c.len()),
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

/// Envelope decoding never panics, and what decodes is written again, in
/// the same encoding and compression, as an envelope that decodes to the
/// same entries.
pub fn envelope(data: &[u8]) {
    use crate::envelope::{decode, BatchBuilder, EnvelopeSettings};
    let Ok(d) = decode(data) else {
        return;
    };
    let settings = EnvelopeSettings {
        encoding: d.encoding,
        compression: d.compression,
        max_records: usize::MAX,
        max_bytes: usize::MAX,
    };
    let mut b = BatchBuilder::new(&settings);
    for e in &d.entries {
        let rec = crate::model::Record {
            seq: e.seq,
            lane: e.lane,
            ts_ms: 0,
            topic: e.topic.clone(),
            payload: e.payload.to_string().into_bytes(),
        };
        assert!(b.push(&rec).is_ok(), "a decoded payload is JSON");
    }
    let again = b.finish().map(|bytes| decode(&bytes));
    assert!(
        matches!(&again, Ok(Ok(a)) if a.entries == d.entries),
        "re-encoded envelope differs: {again:?}"
    );
}

/// MQTT payload decoding never panics.
pub fn payload(data: &[u8]) {
    let _ = crate::decode::decode(&crate::decode::PayloadFormat::Number, data);
    let _ = crate::decode::decode(&crate::decode::PayloadFormat::json_default(), data);
}

/// Segment scanning never panics, and every range it calls a record parses
/// as one.
pub fn segment(data: &[u8]) {
    use crate::buffer::segment::{parse_record, scan, Parsed};
    let s = scan(data);
    for (off, len) in s.records {
        assert!(matches!(
            parse_record(&data[off..off + len]),
            Parsed::Record { .. }
        ));
    }
}

/// Any text yields a config or diagnostics with line numbers inside it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(c) => {
            let _ = c.render_effective();
        }
        Err(crate::config::ConfigError::Invalid { diagnostics, .. }) => {
            let lines = text.lines().count().max(1) + 1;
            for d in diagnostics {
                assert!(d.line >= 1 && d.line <= lines, "line {} of {lines}", d.line);
            }
        }
        Err(_) => {}
    }
}

/// A frame that decodes re-encodes to bytes that decode to the same frame.
pub fn frame_codec(data: &[u8]) {
    let mut buf = data.to_vec();
    if let Ok(f) = frame::decode(&mut buf) {
        let mut out = [0u8; frame::MAX_ENCODED_BYTES + 1];
        let n = frame::encode(&f, &mut out).expect("a decoded frame fits the maximum");
        let again = frame::decode(&mut out[..n - 1]).expect("re-encoded frame decodes");
        assert_eq!(again.node, f.node);
        assert_eq!(again.seq, f.seq);
        assert_eq!(again.readings.len(), f.readings.len());
    }
    let mut enc = vec![0u8; data.len() * 2 + 2];
    if let Ok(n) = frame::cobs_encode(data, &mut enc) {
        assert!(enc[..n].iter().all(|&b| b != 0));
        let m = frame::cobs_decode_in_place(&mut enc[..n]).expect("COBS round trip");
        assert_eq!(&enc[..m], data);
    }
}

/// Line parsing never panics; a checksummed line that parses has the
/// checksum its body gives.
pub fn line(data: &[u8]) {
    let _ = wire::line::parse(data, false);
    let _ = wire::line::parse(data, true);
}

/// JSON line parsing never panics.
pub fn json(data: &[u8]) {
    let _ = wire::json::parse(data);
}

/// A whole port: the first byte picks the format and the chunk size, the
/// rest is the byte stream. Never panics; every drop is counted.
pub fn serial_port(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let format = match first % 3 {
        0 => Format::Frame,
        1 => Format::Json,
        _ => Format::Line {
            require_checksum: first & 0x80 != 0,
        },
    };
    let chunk = usize::from(first >> 2).max(1);
    let uptime = first & 0x40 != 0;
    let mut d = PortDecoder::new(PortSettings {
        name: "fuzz".into(),
        format,
        max_frame_bytes: 64,
        time: if uptime {
            NodeTime::Uptime
        } else {
            NodeTime::UnixMs
        },
        unmapped: Unmapped::Accept,
        channels: vec![ChannelMap {
            node: None,
            channel: "0".into(),
            sensor: "s".into(),
            unit: None,
        }],
        max_nodes: 4,
    });
    let mut out = Vec::new();
    let mut buf = stream.to_vec();
    for (i, c) in buf.chunks_mut(chunk).enumerate() {
        d.push(c, 1_700_000_000_000 + i as i64, &mut out);
    }
    d.disconnected();
    let c = d.counters();
    assert_eq!(c.readings as usize, out.len());
    // Uptime-mapped times never run ahead of arrival; a node's own clock
    // (`unix_ms`) may, and the core checks it against `max_future_skew`.
    if uptime {
        assert!(out
            .iter()
            .all(|r| r.ts_ms <= 1_700_000_000_000 + data.len() as i64));
    }
}
