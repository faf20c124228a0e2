use proptest::prelude::*;

use super::*;
use crate::model::{Lane, Record};

fn record(seq: u64, lane: Lane, topic: &str, payload: &str) -> Record {
    Record {
        seq,
        lane,
        ts_ms: 0,
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// Summaries and an alarm event the way the core writes them, with the
/// cases an encoder gets wrong: a large seq, non-ASCII text, numbers of
/// every kind.
fn records() -> Vec<Record> {
    vec![
        record(
            1,
            Lane::Summary,
            "gateways/gw1/summary/line1/p101/vibration",
            r#"{"schema":1,"gateway":"gw1","seq":1,"sensor":"line1/p101/vibration","window_start":1800000000000,"window_end":1800000010000,"count":100,"mean":2.2031,"min":1.5,"max":3.0,"rms":2.25}"#,
        ),
        record(
            u64::MAX - 1,
            Lane::Alarm,
            "gateways/gw1/alarm/line1/p101/température",
            r#"{"schema":1,"kind":"alarm","state":"active","value":-0.1,"big":18446744073709551615,"neg":-9223372036854775808,"note":"Ölpumpe \"A\"","list":[1,2.5e-300,null,true]}"#,
        ),
        record(300, Lane::Summary, "t", "{}"),
    ]
}

fn settings(encoding: Encoding, compression: Compression) -> EnvelopeSettings {
    EnvelopeSettings {
        encoding,
        compression,
        max_records: 100,
        max_bytes: 64 * 1024,
    }
}

fn every_settings() -> impl Iterator<Item = EnvelopeSettings> {
    Encoding::ALL
        .into_iter()
        .flat_map(|e| Compression::ALL.into_iter().map(move |c| settings(e, c)))
}

/// The envelope of `recs` written with `s`.
fn envelope(s: &EnvelopeSettings, recs: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new(s);
    for r in recs {
        b.push(r).expect("a JSON payload");
    }
    b.finish().expect("an envelope")
}

fn expected(recs: &[Record]) -> Vec<Entry> {
    recs.iter()
        .map(|r| Entry {
            seq: r.seq,
            lane: r.lane,
            topic: r.topic.clone(),
            payload: serde_json::from_slice(&r.payload).expect("JSON"),
        })
        .collect()
}

#[test]
fn every_encoding_and_compression_round_trips() {
    for s in every_settings() {
        let bytes = envelope(&s, &records());
        assert!(is_envelope(&bytes));
        let d = decode(&bytes).expect("decodes");
        assert_eq!(d.entries, expected(&records()), "{s:?}");
        assert_eq!((d.encoding, d.compression), (s.encoding, s.compression));
    }
}

#[test]
fn a_json_envelope_carries_the_payload_bytes_unchanged() {
    let bytes = envelope(&settings(Encoding::Json, Compression::None), &records());
    for r in records() {
        assert!(bytes
            .windows(r.payload.len())
            .any(|w| w == r.payload.as_slice()));
    }
}

#[test]
fn the_header_names_the_shipped_dictionary_only_when_it_is_used() {
    let id = |c| {
        let b = envelope(&settings(Encoding::Cbor, c), &records());
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    };
    assert_ne!(dictionary_id(), 0, "the shipped dictionary has an id");
    assert_eq!(id(Compression::Zstd), dictionary_id());
    assert_eq!(id(Compression::ZstdNoDictionary), 0);
    assert_eq!(id(Compression::None), 0);
}

#[test]
fn an_empty_batch_is_a_valid_envelope() {
    for s in every_settings() {
        let d = decode(&envelope(&s, &[])).expect("decodes");
        assert!(d.entries.is_empty());
    }
}

#[test]
fn finish_empties_the_builder_for_the_next_batch() {
    let s = settings(Encoding::Cbor, Compression::Zstd);
    let mut b = BatchBuilder::new(&s);
    let recs = records();
    b.push(&recs[0]).expect("JSON");
    let first = b.finish().expect("an envelope");
    assert!(b.is_empty());
    b.push(&recs[1]).expect("JSON");
    assert_eq!(b.len(), 1);
    let second = decode(&b.finish().expect("an envelope")).expect("decodes");
    assert_eq!(second.entries, expected(&recs[1..2]));
    assert_eq!(
        decode(&first).expect("decodes").entries,
        expected(&recs[..1])
    );
}

/// A JSON builder with these bounds, given `r` for as long as it fits.
fn filled(max_records: usize, max_bytes: usize, r: &Record) -> BatchBuilder {
    let mut b = BatchBuilder::new(&EnvelopeSettings {
        max_records,
        max_bytes,
        ..settings(Encoding::Json, Compression::None)
    });
    while b.would_fit(r) {
        b.push(r).expect("JSON");
    }
    b
}

#[test]
fn would_fit_stops_at_max_records() {
    assert_eq!(filled(2, 64 * 1024, &records()[2]).len(), 2);
}

#[test]
fn would_fit_keeps_a_json_envelope_within_max_bytes() {
    let r = &records()[0];
    let mut b = filled(100, 1000, r);
    assert!(b.len() > 1);
    let bytes = b.finish().expect("an envelope");
    assert!(bytes.len() <= 1000, "{} bytes", bytes.len());
    assert!(bytes.len() + r.payload.len() > 1000 - 80);
}

#[test]
fn an_oversized_record_goes_alone() {
    let mut s = settings(Encoding::Json, Compression::None);
    s.max_bytes = 10;
    let b = BatchBuilder::new(&s);
    assert!(b.would_fit(&records()[0]));
}

#[test]
fn cbor_refuses_a_payload_that_is_not_json_and_keeps_the_batch() {
    let s = settings(Encoding::Cbor, Compression::None);
    let mut b = BatchBuilder::new(&s);
    b.push(&records()[0]).expect("JSON");
    let bad = record(9, Lane::Summary, "t", "not json");
    assert!(matches!(
        b.push(&bad),
        Err(EncodeError::NotJson { seq: 9, .. })
    ));
    assert_eq!(b.len(), 1);
    let d = decode(&b.finish().expect("an envelope")).expect("decodes");
    assert_eq!(d.entries, expected(&records()[..1]));
}

#[test]
fn content_types_differ_by_encoding_and_compression() {
    let mut seen = std::collections::HashSet::new();
    for s in every_settings() {
        seen.insert(content_type(&s));
    }
    assert_eq!(seen.len(), 4);
}

#[test]
fn a_plain_json_message_is_not_an_envelope() {
    assert!(!is_envelope(records()[0].payload.as_slice()));
    assert_eq!(decode(b"{\"a\":1}"), Err(DecodeError::NotEnvelope));
}

#[test]
fn every_truncation_fails_cleanly() {
    for s in every_settings() {
        let bytes = envelope(&s, &records());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{s:?} cut at {n}");
        }
    }
}

#[test]
fn every_single_byte_corruption_decodes_or_fails_cleanly() {
    for s in every_settings() {
        let bytes = envelope(&s, &records());
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = decode(&b);
            }
        }
    }
}

#[test]
fn a_trailing_byte_is_refused() {
    let mut bytes = envelope(&settings(Encoding::Json, Compression::None), &records());
    bytes.push(0);
    assert_eq!(decode(&bytes), Err(DecodeError::Trailing(1)));
}

/// A header of `count` entries, `compression` and `dict`.
fn header(compression: u8, dict: u32, count: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&[VERSION, 0, compression, 0]);
    h.extend_from_slice(&dict.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h
}

#[test]
fn a_huge_entry_count_is_refused_before_anything_is_allocated() {
    assert_eq!(
        decode(&header(0, 0, u32::MAX)),
        Err(DecodeError::TooManyEntries(u32::MAX))
    );
    assert_eq!(
        decode(&header(0, 0, MAX_ENTRIES)),
        Err(DecodeError::Truncated { index: 0 })
    );
}

#[test]
fn a_zstd_bomb_is_refused_by_its_declared_size() {
    let zeros = vec![0u8; MAX_BODY_BYTES + 1];
    let mut bytes = header(1, 0, 1);
    bytes.extend(zstd::bulk::compress(&zeros, 3).expect("compresses"));
    assert!(bytes.len() < 4096, "a small message");
    assert_eq!(decode(&bytes), Err(DecodeError::BodySize));
}

#[test]
fn a_zstd_frame_that_hides_its_size_is_refused() {
    let mut frame = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut frame, 3).expect("an encoder");
    std::io::Write::write_all(&mut enc, &[0u8; 1000]).expect("written");
    enc.finish().expect("finished");
    let mut bytes = header(1, 0, 1);
    bytes.extend(frame);
    assert_eq!(decode(&bytes), Err(DecodeError::BodySize));
}

#[test]
fn an_unknown_dictionary_or_version_is_named() {
    let mut bytes = header(1, 7, 0);
    assert_eq!(decode(&bytes), Err(DecodeError::Dictionary(7)));
    bytes[4] = 2;
    assert_eq!(decode(&bytes), Err(DecodeError::Version(2)));
}

#[test]
fn varints_round_trip_at_their_edges() {
    for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), varint_len(v));
        assert_eq!(decode::Reader { rest: &b }.varint(), Some(v));
    }
    // An eleventh byte, or bits beyond 64, are malformed.
    assert_eq!(decode::Reader { rest: &[0xFF; 10] }.varint(), None);
    assert_eq!(
        decode::Reader {
            rest: &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]
        }
        .varint(),
        None
    );
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_behind_a_valid_header(
        enc in 0u8..2,
        comp in 0u8..2,
        count in 0u32..8,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = header(comp, 0, count);
        bytes[5] = enc;
        bytes.extend(body);
        crate::fuzzing::envelope(&bytes);
    }

    #[test]
    fn any_json_summary_round_trips(
        seq in any::<u64>(),
        alarm in any::<bool>(),
        values in proptest::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..20),
        ints in proptest::collection::vec(any::<i64>(), 0..5),
    ) {
        let payload = serde_json::json!({"seq": seq, "values": values, "ints": ints}).to_string();
        let lane = if alarm { Lane::Alarm } else { Lane::Summary };
        let recs = [record(seq, lane, "gateways/gw/summary/s", &payload)];
        for s in every_settings() {
            let d = decode(&envelope(&s, &recs)).expect("decodes");
            prop_assert_eq!(&d.entries, &expected(&recs));
        }
    }
}
