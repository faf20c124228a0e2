//! A decoded envelope (`Decoded::to_json`) of every encoding and
//! compression matches `docs/envelope.schema.json`, which is itself valid
//! draft 2020-12; the schema refuses an entry without its seq.

use std::path::Path;

use sensor_gateway::envelope::{decode, encode, Compression, Encoding};
use sensor_gateway::model::{Lane, Record};
use serde_json::{json, Value};

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/envelope.schema.json");
    let text = std::fs::read_to_string(&path).expect("docs/envelope.schema.json");
    let s: Value = serde_json::from_str(&text).expect("JSON");
    if let Err(e) = jsonschema::meta::validate(&s) {
        panic!("docs/envelope.schema.json is not a valid JSON Schema: {e}");
    }
    s
}

fn record(seq: u64, lane: Lane, kind: &str) -> Record {
    Record {
        seq,
        lane,
        ts_ms: 0,
        topic: format!("gateways/gw1/{kind}/l1/m1/vibration"),
        payload: json!({"schema": 1, "kind": kind, "gateway": "gw1", "seq": seq, "sensor": "l1/m1/vibration", "mean": 2.5})
            .to_string()
            .into_bytes(),
    }
}

#[test]
fn a_decoded_envelope_of_every_kind_matches_its_schema() {
    let validator = jsonschema::draft202012::new(&schema()).expect("a compilable schema");
    let recs = [
        record(7, Lane::Alarm, "alarm"),
        record(5, Lane::Summary, "summary"),
        record(6, Lane::Summary, "summary"),
    ];
    for encoding in Encoding::ALL {
        for compression in Compression::ALL {
            let bytes = encode(encoding, compression, &recs).expect("an envelope");
            let decoded = decode(&bytes).expect("decodes").to_json();
            let errors: Vec<String> = validator
                .iter_errors(&decoded)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{encoding:?}/{compression:?}: {errors:?}\n{decoded:#}"
            );
        }
    }
}

#[test]
fn the_schema_refuses_an_entry_without_its_seq() {
    let validator = jsonschema::draft202012::new(&schema()).expect("a compilable schema");
    let bytes = encode(
        Encoding::Json,
        Compression::None,
        &[record(1, Lane::Summary, "summary")],
    )
    .expect("an envelope");
    let mut decoded = decode(&bytes).expect("decodes").to_json();
    if let Some(entry) = decoded["entries"][0].as_object_mut() {
        entry.remove("seq");
    }
    assert!(!validator.is_valid(&decoded));
}
