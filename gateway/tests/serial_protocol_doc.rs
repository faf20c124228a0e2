//! Decodes exactly the examples of docs/serial-protocol.md, so that what a
//! firmware engineer copies from the document is what the gateway reads.

use std::path::Path;

use sensor_gateway::wire::{
    frame, json, line, DropReason, Format, NodeTime, PortDecoder, PortSettings, Unmapped,
};

#[derive(Debug, Default)]
struct Example {
    format: String,
    bytes: Vec<u8>,
    node: Option<String>,
    seq: Option<u32>,
    t: Option<u64>,
    readings: Vec<(String, f64)>,
    error: Option<String>,
}

fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

fn examples() -> Vec<Example> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/serial-protocol.md"),
    )
    .expect("docs/serial-protocol.md");
    let mut out = Vec::new();
    let mut current: Option<Example> = None;
    for l in doc.lines() {
        if l.trim() == "```example" {
            current = Some(Example::default());
            continue;
        }
        let Some(ex) = current.as_mut() else { continue };
        if l.trim() == "```" {
            out.push(current.take().expect("an example"));
            continue;
        }
        let (key, value) = l.split_once(": ").expect("key: value");
        match key {
            "format" => ex.format = value.into(),
            "text" => ex.bytes = unescape(value),
            "hex" => {
                ex.bytes = value
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).expect("hex"))
                    .collect()
            }
            "node" => ex.node = Some(value.into()),
            "seq" => ex.seq = Some(value.parse().expect("seq")),
            "t" => ex.t = Some(value.parse().expect("t")),
            "readings" => {
                ex.readings = value
                    .split_whitespace()
                    .map(|r| {
                        let (n, v) = r.split_once('=').expect("name=value");
                        (n.to_owned(), v.parse().expect("a number"))
                    })
                    .collect()
            }
            "error" => ex.error = Some(value.into()),
            other => panic!("unknown example key {other}"),
        }
    }
    out
}

/// (node, seq, t, readings) as the format's own decoder sees them.
type Decoded = (Option<String>, Option<u32>, Option<u64>, Vec<(String, f64)>);

fn decode(ex: &Example) -> Decoded {
    let body = ex.bytes.strip_suffix(b"\n").unwrap_or(&ex.bytes).to_vec();
    match ex.format.as_str() {
        "line" => {
            let l = line::parse(&body, false)
                .expect("parses")
                .expect("not blank");
            let r = l
                .readings
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            (l.node.map(str::to_owned), l.seq, l.uptime_ms, r)
        }
        "json" => {
            let l = json::parse(&body).expect("parses").expect("not blank");
            let r = l
                .readings
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            (l.node.map(|n| n.into_owned()), l.seq, l.uptime_ms, r)
        }
        "frame" => {
            let inner: Vec<u8> = ex.bytes.iter().copied().skip_while(|&b| b == 0).collect();
            let mut inner = inner.strip_suffix(&[0]).expect("ends with 0x00").to_vec();
            let f = frame::decode(&mut inner).expect("decodes");
            let r = f
                .readings
                .iter()
                .map(|r| (r.channel.to_string(), f64::from(r.value)))
                .collect();
            (
                Some(f.node.to_string()),
                Some(f.seq),
                f.uptime_ms.map(u64::from),
                r,
            )
        }
        other => panic!("unknown format {other}"),
    }
}

/// The reason a port drops the example for.
fn drop_reason(ex: &Example) -> Option<&'static str> {
    let format = match ex.format.as_str() {
        "line" => Format::Line {
            require_checksum: false,
        },
        "json" => Format::Json,
        _ => Format::Frame,
    };
    let mut d = PortDecoder::new(PortSettings {
        name: "doc".into(),
        format,
        max_frame_bytes: 512,
        time: NodeTime::Ignore,
        unmapped: Unmapped::Accept,
        channels: Vec::new(),
        max_nodes: 8,
    });
    let mut out = Vec::new();
    d.push(&mut ex.bytes.clone(), 0, &mut out);
    DropReason::ALL
        .iter()
        .find(|r| d.counters().dropped(**r) > 0)
        .map(|r| r.name())
}

#[test]
fn every_example_in_the_protocol_document_decodes_as_stated() {
    let examples = examples();
    for format in ["line", "json", "frame"] {
        assert!(
            examples.iter().filter(|e| e.format == format).count() >= 2,
            "two examples of {format} at least"
        );
    }
    for ex in &examples {
        match &ex.error {
            Some(reason) => assert_eq!(drop_reason(ex), Some(reason.as_str()), "{ex:?}"),
            None => {
                assert_eq!(drop_reason(ex), None, "{ex:?}");
                let (node, seq, t, readings) = decode(ex);
                assert_eq!(node, ex.node, "{ex:?}");
                assert_eq!(seq, ex.seq, "{ex:?}");
                assert_eq!(t, ex.t, "{ex:?}");
                assert_eq!(readings, ex.readings, "{ex:?}");
            }
        }
    }
}
