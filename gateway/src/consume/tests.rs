use serde_json::{json, Value};

use super::*;
use crate::envelope::{Compression, Encoding};
use crate::model::{Lane, Record};

#[test]
fn a_seq_is_new_once_per_gateway() {
    let mut d = Dedup::default();
    assert_eq!(d.check("gw1", 5), Verdict::New);
    assert_eq!(d.check("gw1", 5), Verdict::Duplicate);
    assert_eq!(d.check("gw2", 5), Verdict::New);
    assert_eq!(d.check("gw1", 3), Verdict::New);
    assert_eq!(d.check("gw1", 3), Verdict::Duplicate);
    assert_eq!(d.check("gw1", 4), Verdict::New);
}

#[test]
fn the_window_slides_with_the_highest_seq() {
    let mut d = Dedup::default();
    assert_eq!(d.check("gw", 10), Verdict::New);
    // A seq one window later reuses the bit of 10, which must read as new.
    assert_eq!(d.check("gw", 10 + WINDOW), Verdict::New);
    assert_eq!(d.check("gw", 11), Verdict::New);
    assert_eq!(d.check("gw", 11), Verdict::Duplicate);
    assert_eq!(d.check("gw", 10), Verdict::Unchecked);
    // A jump of more than a window forgets everything below it.
    assert_eq!(d.check("gw", 10 + 3 * WINDOW), Verdict::New);
    assert_eq!(d.check("gw", 10 + 3 * WINDOW - 1), Verdict::New);
}

#[test]
fn the_least_recently_seen_gateway_is_forgotten_first() {
    let mut d = Dedup::default();
    for g in 0..MAX_GATEWAYS {
        d.check(&format!("gw{g}"), 1);
    }
    d.check("gw0", 2);
    d.check("newcomer", 1);
    assert_eq!((d.gateways(), d.evicted), (MAX_GATEWAYS, 1));
    assert_eq!(
        d.check("gw0", 1),
        Verdict::Duplicate,
        "gw0 was seen recently"
    );
    assert_eq!(d.check("gw1", 1), Verdict::New, "gw1 was forgotten");
}

#[test]
fn an_overlong_gateway_name_is_not_remembered() {
    let mut d = Dedup::default();
    let long = "g".repeat(MAX_GATEWAY_LEN + 1);
    assert_eq!(d.check(&long, 1), Verdict::Unchecked);
    assert_eq!(d.check(&long, 1), Verdict::Unchecked);
    assert_eq!(d.gateways(), 0);
}

fn summary(gateway: &str, seq: u64) -> Value {
    json!({"schema": 1, "kind": "summary", "gateway": gateway, "seq": seq, "sensor": "l1/m1/temp", "mean": 21.5})
}

fn record(gateway: &str, seq: u64) -> Record {
    Record {
        seq,
        lane: Lane::Summary,
        ts_ms: 0,
        topic: format!("gateways/{gateway}/summary/l1/m1/temp"),
        payload: summary(gateway, seq).to_string().into_bytes(),
    }
}

fn envelope(encoding: Encoding, compression: Compression, recs: &[Record]) -> Vec<u8> {
    crate::envelope::encode(encoding, compression, recs).expect("an envelope")
}

/// The lines `reader` writes for one message, parsed.
fn lines(reader: &mut Reader, topic: &str, payload: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let _ = reader.message(topic, payload, &mut out);
    String::from_utf8(out)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn a_plain_summary_becomes_one_line_in_field_order() {
    let mut r = Reader::default();
    let mut out = Vec::new();
    let payload = summary("gw1", 7).to_string();
    assert_eq!(
        r.message("gateways/gw1/summary/x", payload.as_bytes(), &mut out)
            .expect("JSON"),
        1
    );
    let text = String::from_utf8(out).expect("UTF-8");
    assert!(
        text.starts_with(
            r#"{"topic":"gateways/gw1/summary/x","gateway":"gw1","seq":7,"payload":{"#
        ),
        "{text}"
    );
    assert!(text.ends_with("}\n"));
}

#[test]
fn every_envelope_kind_gives_its_records_once() {
    let mut r = Reader::default();
    let recs: Vec<Record> = (1..=4).map(|s| record("gw1", s)).collect();
    let mut written = 0;
    for encoding in Encoding::ALL {
        for compression in Compression::ALL {
            let got = lines(
                &mut r,
                "gateways/gw1/batch",
                &envelope(encoding, compression, &recs),
            );
            written += got.len();
        }
    }
    assert_eq!(
        written, 4,
        "the first envelope writes them, the others repeat them"
    );
    let t = r.tally();
    assert_eq!((t.messages, t.records, t.duplicates), (6, 4, 20));
}

#[test]
fn an_envelope_entry_keeps_its_own_topic_and_payload() {
    let mut r = Reader::default();
    let rec = record("gw9", 3);
    let got = lines(
        &mut r,
        "gateways/gw9/batch",
        &envelope(
            Encoding::Cbor,
            Compression::Zstd,
            std::slice::from_ref(&rec),
        ),
    );
    assert_eq!(
        got,
        vec![json!({"topic": rec.topic, "gateway": "gw9", "seq": 3, "payload": summary("gw9", 3)})]
    );
}

#[test]
fn a_plain_message_and_an_envelope_deduplicate_each_other() {
    let mut r = Reader::default();
    let plain = summary("gw1", 2).to_string();
    assert_eq!(lines(&mut r, "t", plain.as_bytes()).len(), 1);
    let both = [record("gw1", 2), record("gw1", 3)];
    let got = lines(
        &mut r,
        "b",
        &envelope(Encoding::Json, Compression::None, &both),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["seq"], 3);
    assert_eq!(r.tally().duplicates, 1);
}

#[test]
fn garbage_and_damaged_envelopes_are_counted_not_written() {
    let mut r = Reader::default();
    let mut out = Vec::new();
    assert!(matches!(
        r.message("t", b"\x00\x01 not json", &mut out),
        Err(Undecodable::Json(_))
    ));
    let mut damaged = envelope(Encoding::Json, Compression::Zstd, &[record("gw1", 1)]);
    damaged.truncate(damaged.len() - 3);
    assert!(matches!(
        r.message("t", &damaged, &mut out),
        Err(Undecodable::Envelope(_))
    ));
    assert!(out.is_empty());
    let t = r.tally();
    assert_eq!((t.messages, t.records, t.undecodable), (2, 0, 2));
}

#[test]
fn json_without_gateway_and_seq_is_written_as_unsequenced() {
    let mut r = Reader::default();
    let status = br#"{"status":"online"}"#;
    for _ in 0..2 {
        let got = lines(&mut r, "gateways/gw1/status", status);
        assert_eq!(got[0]["gateway"], Value::Null);
        assert_eq!(got[0]["seq"], Value::Null);
    }
    assert_eq!((r.tally().records, r.tally().unsequenced), (2, 2));
}

#[test]
fn the_tally_reads_as_one_line_of_counts() {
    let t = Tally {
        messages: 5,
        records: 4,
        duplicates: 3,
        undecodable: 1,
        ..Tally::default()
    };
    assert_eq!(
        t.to_string(),
        "records=4 duplicates=3 undecodable=1 messages=5 unchecked=0 unsequenced=0 gateways_forgotten=0"
    );
}

#[test]
fn a_broker_address_is_host_and_port() {
    let a = parse_broker("broker.example:8883").expect("valid");
    assert_eq!((a.host.as_str(), a.port), ("broker.example", 8883));
    let a = parse_broker("[::1]:1883").expect("valid");
    assert_eq!((a.host.as_str(), a.port), ("::1", 1883));
    for bad in ["broker", "broker:0", "broker:x", ":1883"] {
        assert!(parse_broker(bad).is_err(), "{bad}");
    }
}
