//! Port decoder tests: resynchronisation, exact drop counts, mapping, and
//! property tests of the codecs.

use proptest::prelude::*;

use super::frame::{self, ChannelReading, Frame};
use super::*;

fn settings(format: Format) -> PortSettings {
    PortSettings {
        name: "p".into(),
        format,
        max_frame_bytes: if format == Format::Frame {
            frame::MAX_ENCODED_BYTES
        } else {
            128
        },
        time: NodeTime::Ignore,
        unmapped: Unmapped::Accept,
        channels: vec![ChannelMap {
            node: Some("7".into()),
            channel: "0".into(),
            sensor: "line1/pump/temp".into(),
            unit: Some("degC".into()),
        }],
        max_nodes: 8,
    }
}

fn encode(f: &Frame) -> Vec<u8> {
    let mut out = [0u8; frame::MAX_ENCODED_BYTES + 1];
    let n = frame::encode(f, &mut out).unwrap();
    out[..n].to_vec()
}

fn frame_of(node: u16, seq: u32, values: &[f32]) -> Frame {
    let mut readings = heapless::Vec::new();
    for (i, v) in values.iter().enumerate() {
        readings
            .push(ChannelReading {
                channel: i as u8,
                value: *v,
            })
            .unwrap();
    }
    Frame {
        node,
        seq,
        uptime_ms: None,
        readings,
    }
}

fn run(d: &mut PortDecoder, bytes: &[u8], chunk: usize) -> Vec<SerialReading> {
    let mut out = Vec::new();
    let mut bytes = bytes.to_vec();
    for c in bytes.chunks_mut(chunk.max(1)) {
        d.push(c, 1_000, &mut out);
    }
    out
}

#[test]
fn frames_map_to_sensors_and_units() {
    let mut d = PortDecoder::new(settings(Format::Frame));
    let mut stream = vec![0u8];
    stream.extend(encode(&frame_of(7, 1, &[21.5, 3.0])));
    let out = run(&mut d, &stream, 3);
    assert_eq!(out.len(), 2);
    assert_eq!(&*out[0].sensor, "line1/pump/temp");
    assert_eq!(out[0].unit.as_deref(), Some("degC"));
    assert_eq!(out[0].value, 21.5);
    assert_eq!(&*out[1].sensor, "p/7/1");
    assert_eq!(d.counters().frames, 1);
}

#[test]
fn garbage_costs_only_the_frame_it_touches() {
    let mut d = PortDecoder::new(settings(Format::Frame));
    let mut stream = Vec::new();
    for seq in 0..10u32 {
        let mut f = encode(&frame_of(7, seq, &[seq as f32]));
        if seq == 3 {
            f[2] ^= 0x40; // damaged in transit
        }
        if seq == 6 {
            stream.extend([0x13, 0x99, 0x42, 0x00]); // noise, then a delimiter
        }
        stream.extend(f);
    }
    let out = run(&mut d, &stream, 7);
    assert_eq!(out.len(), 9);
    assert_eq!(d.counters().dropped_total(), 2);
    let (_, node) = d.nodes().next().unwrap();
    assert_eq!(node.lost, 1, "the damaged frame shows as a sequence gap");
}

#[test]
fn over_long_input_is_dropped_once_and_the_next_line_survives() {
    let mut d = PortDecoder::new(settings(Format::Line {
        require_checksum: false,
    }));
    let mut stream = vec![b'x'; 1000];
    stream.extend(b"\na=1\n");
    let out = run(&mut d, &stream, 100);
    assert_eq!(out.len(), 1);
    assert_eq!(d.counters().dropped(DropReason::Oversize), 1);
    // The same, in one chunk.
    let mut d = PortDecoder::new(settings(Format::Json));
    let mut stream = vec![b'{'; 1000];
    stream.extend(b"\n{\"a\":1}\n");
    let out = run(&mut d, &stream, 4096);
    assert_eq!(out.len(), 1);
    assert_eq!(d.counters().dropped(DropReason::Oversize), 1);
}

#[test]
fn a_disconnect_counts_the_torn_frame() {
    let mut d = PortDecoder::new(settings(Format::Line {
        require_checksum: false,
    }));
    run(&mut d, b"a=1\na=", 64);
    d.disconnected();
    assert_eq!(d.counters().dropped(DropReason::Torn), 1);
    let out = run(&mut d, b"2\na=3\n", 64);
    // "2" alone is a syntax error: the stream restarted mid-line.
    assert_eq!(out.len(), 1);
    assert_eq!(d.counters().dropped(DropReason::Syntax), 1);
}

#[test]
fn unmapped_channels_can_be_dropped_and_counted() {
    let mut s = settings(Format::Json);
    s.unmapped = Unmapped::Drop;
    s.channels[0].node = None;
    s.channels[0].channel = "temp".into();
    let mut d = PortDecoder::new(s);
    let out = run(&mut d, b"{\"node\":\"n1\",\"temp\":1,\"hum\":2}\n", 64);
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].sensor, "line1/pump/temp");
    assert_eq!(d.counters().unmapped, 1);
}

#[test]
fn node_bound_is_enforced() {
    let mut s = settings(Format::Line {
        require_checksum: false,
    });
    s.max_nodes = 2;
    let mut d = PortDecoder::new(s);
    let out = run(&mut d, b"node=a x=1\nnode=b x=1\nnode=c x=1\n", 64);
    assert_eq!(out.len(), 2);
    assert_eq!(d.counters().dropped(DropReason::TooManyNodes), 1);
}

#[test]
fn nodes_are_listed_sorted_by_id_whatever_order_they_arrive_in() {
    let mut d = PortDecoder::new(settings(Format::Line {
        require_checksum: false,
    }));
    run(
        &mut d,
        b"node=m x=1\nnode=b x=1\nx=1\nnode=z x=1\nnode=b x=2\n",
        64,
    );
    let ids: Vec<&str> = d.nodes().map(|(id, _)| id).collect();
    assert_eq!(ids, ["", "b", "m", "z"]);
    assert_eq!(d.nodes().len(), 4);
    let frames: Vec<u64> = d.nodes().map(|(_, c)| c.frames).collect();
    assert_eq!(frames, [1, 2, 1, 1]);
}

/// The log's description of a drop is rendered only when it is taken; it
/// reads as it always has.
#[test]
fn the_last_drop_is_described_when_taken() {
    fn last(format: Format, max_nodes: usize, bytes: &[u8]) -> Option<(&'static str, String)> {
        let mut s = settings(format);
        s.max_nodes = max_nodes;
        let mut d = PortDecoder::new(s);
        run(&mut d, bytes, 64);
        let taken = d.take_last_drop().map(|(r, text)| (r.name(), text));
        assert_eq!(d.take_last_drop(), None, "taken once");
        taken
    }
    const OVER_LONG: [u8; 201] = {
        let mut line = [b'x'; 201];
        line[200] = b'\n';
        line
    };
    let line = Format::Line {
        require_checksum: false,
    };
    let cases: &[(Format, usize, &[u8], &str, &str)] = &[
        (line, 8, b"temp=hot\n", "not_a_number", "temp=hot"),
        (Format::Json, 8, b"{\"a\":\n", "syntax", "{\"a\":"),
        (line, 8, &OVER_LONG, "oversize", "over-long frame or line"),
        (line, 8, b"x=1\n\x01\x02\x03\n", "syntax", "\u{1}\u{2}\u{3}"),
        (
            line,
            8,
            b"node=a+b x=1\n",
            "bad_name",
            "node \"a+b\": it contains the MQTT wildcard `+` or `#`",
        ),
        (
            line,
            8,
            b"node=n1 a+b=1\n",
            "bad_name",
            "channel \"a+b\" of node \"n1\": not a valid name for an unmapped sensor",
        ),
        (
            line,
            1,
            b"node=a x=1\nnode=b x=1\n",
            "too_many_nodes",
            "node \"b\" exceeds the bound of 1 nodes",
        ),
        (
            line,
            8,
            b"node=a seq=4 x=1\nnode=a seq=4 x=1\n",
            "duplicate",
            "node \"a\" repeated sequence Some(4)",
        ),
        (Format::Frame, 8, &[1, 1, 0], "bad_length", ""),
    ];
    for (format, max_nodes, bytes, reason, text) in cases {
        let got = last(*format, *max_nodes, bytes);
        let (got_reason, got_text) = got.unwrap_or_else(|| panic!("{reason}: no drop"));
        assert_eq!(got_reason, *reason);
        if *format == Format::Frame {
            let expected = frame::decode(&mut [1u8, 1][..]).unwrap_err().to_string();
            assert_eq!(got_text, expected);
        } else {
            assert_eq!(got_text, *text, "{reason}");
        }
    }
    assert_eq!(last(line, 8, b"x=1\n"), None, "nothing dropped");
}

#[test]
fn wire_names_with_wildcards_or_controls_are_dropped_as_bad_name() {
    let long = "n".repeat(crate::topic::MAX_NAME_BYTES + 1);
    for format in [
        Format::Line {
            require_checksum: false,
        },
        Format::Json,
    ] {
        let mut d = PortDecoder::new(settings(format));
        let lines: Vec<String> = match format {
            Format::Json => vec![
                r#"{"node":"a+b","temp":21.5}"#.into(),
                r#"{"node":"a/b","temp":21.5}"#.into(),
                r#"{"node":"a\u0000b","temp":21.5}"#.into(),
                format!(r#"{{"node":"{long}","temp":21.5}}"#),
                r#"{"node":"n1","te#mp":21.5}"#.into(),
                r#"{"node":"n1","a\u001bb":21.5}"#.into(),
                r#"{"node":"n1","ok":1,"temp":21.5}"#.into(),
            ],
            _ => vec![
                "node=a+b temp=21.5".into(),
                "node=a/b temp=21.5".into(),
                "node=a\u{0}b temp=21.5".into(),
                "node=a#b temp=21.5".into(),
                "node=n1 te#mp=21.5".into(),
                "node=n1 a\u{1b}b=21.5".into(),
                "node=n1 ok=1 temp=21.5".into(),
            ],
        };
        let bytes: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let out = run(&mut d, bytes.as_bytes(), 7);
        let c = d.counters();
        assert_eq!(c.dropped(DropReason::BadName), 6, "{format:?}");
        assert_eq!(c.dropped_total(), 6, "{format:?}");
        assert_eq!(c.frames, 1, "only the valid message is accepted");
        let sensors: Vec<&str> = out.iter().map(|r| &*r.sensor).collect();
        assert_eq!(sensors, ["p/n1/ok", "p/n1/temp"], "{format:?}");
        assert_eq!(d.nodes().count(), 1, "a bad node name gets no node state");
    }
}

#[test]
fn bad_channel_names_are_fine_when_mapped_or_dropped_as_unmapped() {
    let mut s = settings(Format::Line {
        require_checksum: false,
    });
    s.channels.push(ChannelMap {
        node: None,
        channel: "t-1".into(),
        sensor: "room/temp".into(),
        unit: None,
    });
    s.unmapped = Unmapped::Drop;
    let mut d = PortDecoder::new(s);
    let out = run(&mut d, b"node=n1 t-1=1 a+b=2\n", 64);
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].sensor, "room/temp");
    assert_eq!(d.counters().unmapped, 1);
    assert_eq!(d.counters().dropped_total(), 0);
}

/// Debug builds panic on overflow, so this fails there if any path
/// computes with extreme node times unchecked.
#[test]
fn extreme_node_times_pass_every_format_without_overflow() {
    let nows = [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX];
    let times = [0u64, 1, u64::from(u32::MAX), i64::MAX as u64, u64::MAX];
    for time in [NodeTime::Uptime, NodeTime::UnixMs, NodeTime::Ignore] {
        for format in [
            Format::Line {
                require_checksum: false,
            },
            Format::Json,
            Format::Frame,
        ] {
            let mut s = settings(format);
            s.time = time;
            let mut d = PortDecoder::new(s);
            let mut out = Vec::new();
            let mut seq = 0u32;
            for &now in &nows {
                for &t in times.iter().chain(times.iter().rev()) {
                    seq = seq.wrapping_add(1);
                    let mut bytes = match format {
                        Format::Frame => {
                            let mut f = frame_of(7, seq, &[1.0]);
                            f.uptime_ms = Some(t as u32);
                            let mut b = encode(&f);
                            b.push(frame::DELIMITER);
                            b
                        }
                        Format::Json => {
                            format!("{{\"node\":7,\"seq\":{seq},\"t\":{t},\"0\":1}}\n").into_bytes()
                        }
                        Format::Line { .. } => format!("node=7 seq={seq} t={t} 0=1\n").into_bytes(),
                    };
                    d.push(&mut bytes, now, &mut out);
                }
            }
            assert!(!out.is_empty(), "{time:?} {format:?}");
            if time == NodeTime::UnixMs && format != Format::Frame {
                // Unix times pass through unclamped (saturated to i64) for
                // the core to check against its clock.
                assert!(out.iter().any(|r| r.ts_ms == i64::MAX), "{format:?}");
            }
        }
    }
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u16>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec((any::<u8>(), any::<f32>()), 0..=frame::MAX_CHANNELS),
    )
        .prop_map(|(node, seq, uptime_ms, rs)| {
            let mut readings = heapless::Vec::new();
            for (channel, value) in rs {
                let _ = readings.push(ChannelReading { channel, value });
            }
            Frame {
                node,
                seq,
                uptime_ms,
                readings,
            }
        })
}

fn same(a: &Frame, b: &Frame) -> bool {
    a.node == b.node
        && a.seq == b.seq
        && a.uptime_ms == b.uptime_ms
        && a.readings.len() == b.readings.len()
        && a.readings
            .iter()
            .zip(&b.readings)
            .all(|(x, y)| x.channel == y.channel && x.value.to_bits() == y.value.to_bits())
}

proptest! {
    #[test]
    fn frame_round_trips(f in arb_frame()) {
        let mut enc = encode(&f);
        let n = enc.len() - 1;
        prop_assert_eq!(enc[n], 0);
        prop_assert!(enc[..n].iter().all(|&b| b != 0));
        let back = frame::decode(&mut enc[..n]).unwrap();
        prop_assert!(same(&f, &back));
    }

    /// Corrupting bytes at random positions loses only the frames that
    /// contain them: every untouched frame is decoded, in order.
    #[test]
    fn corruption_loses_only_the_frames_it_hits(
        frames in proptest::collection::vec(arb_frame(), 1..20),
        hits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
        chunk in 1usize..64,
    ) {
        let mut stream = vec![0u8];
        let mut spans = Vec::new();
        for f in &frames {
            let e = encode(f);
            spans.push((stream.len(), stream.len() + e.len()));
            stream.extend(e);
        }
        let mut hit_frames = std::collections::BTreeSet::new();
        for (idx, xor) in &hits {
            let pos = idx.index(stream.len());
            stream[pos] ^= xor;
            if pos == 0 {
                // The leading delimiter: damaged, it joins the first frame.
                hit_frames.insert(0);
            } else if let Some(i) = spans.iter().position(|&(a, b)| pos >= a && pos < b) {
                hit_frames.insert(i);
                // A delimiter damaged into data merges the frame with the next.
                if pos + 1 == spans[i].1 {
                    hit_frames.insert(i + 1);
                }
            }
        }
        let mut d = PortDecoder::new(PortSettings { time: NodeTime::Ignore, ..settings(Format::Frame) });
        let mut decoded = Vec::new();
        let mut buf = stream.clone();
        for c in buf.chunks_mut(chunk) {
            let mut framer_out = Vec::new();
            d.framer.push(c, |p| if let Piece::Frame(b) = p {
                if let Ok(f) = frame::decode(b) { framer_out.push(f) }
            });
            decoded.extend(framer_out);
        }
        let intact: Vec<&Frame> = frames.iter().enumerate().filter(|(i, _)| !hit_frames.contains(i)).map(|(_, f)| f).collect();
        // Every intact frame arrives, in order (a damaged frame passing its
        // CRC is a 2^-32 event and not expected here).
        let mut it = decoded.iter();
        for f in intact {
            prop_assert!(it.any(|g| same(f, g)), "an intact frame was lost");
        }
    }

    #[test]
    fn line_round_trips(values in proptest::collection::vec(-1e9f64..1e9, 1..8), seq in any::<u32>()) {
        let mut body = format!("node=n1,seq={seq}");
        for (i, v) in values.iter().enumerate() {
            body.push_str(&format!(",c{i}={v}"));
        }
        let text = format!("${body}*{:02X}", line::checksum(&body));
        let l = line::parse(text.as_bytes(), true).unwrap().unwrap();
        prop_assert_eq!(l.seq, Some(seq));
        let got: Vec<f64> = l.readings.iter().map(|r| r.1).collect();
        prop_assert_eq!(got, values);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        for format in [Format::Frame, Format::Json, Format::Line { require_checksum: false }] {
            let mut d = PortDecoder::new(settings(format));
            let mut out = Vec::new();
            let mut b = bytes.clone();
            d.push(&mut b, 0, &mut out);
        }
    }
}

/// The port's metrics follow the decoder's nodes after every read: sorted by
/// id, counters current, and new nodes listed as they appear.
#[test]
fn serial_metrics_list_nodes_sorted_with_current_counters() {
    let metrics = crate::metrics::Metrics::new();
    let port = metrics.serial_port("p");
    let mut d = PortDecoder::new(settings(Format::Line {
        require_checksum: false,
    }));
    let node_frames = |port: &crate::metrics::SerialPortMetrics| -> Vec<(String, u64)> {
        let snap = port.snapshot();
        snap.nodes
            .iter()
            .map(|(n, c)| (n.clone(), c.frames))
            .collect()
    };
    run(&mut d, b"node=m x=1\nnode=b x=1\n", 64);
    port.update(&d);
    assert_eq!(node_frames(&port), [("b".into(), 1), ("m".into(), 1)]);
    run(&mut d, b"node=m x=1\n", 64);
    port.update(&d);
    assert_eq!(node_frames(&port), [("b".into(), 1), ("m".into(), 2)]);
    run(&mut d, b"node=a x=1\n", 64);
    port.update(&d);
    assert_eq!(
        node_frames(&port),
        [("a".into(), 1), ("b".into(), 1), ("m".into(), 2)]
    );
    // A new decoder (the port was reopened) with other nodes replaces them.
    let mut d = PortDecoder::new(settings(Format::Line {
        require_checksum: false,
    }));
    run(&mut d, b"node=x x=1\nnode=c x=1\nnode=y x=1\n", 64);
    port.update(&d);
    assert_eq!(
        node_frames(&port),
        [("c".into(), 1), ("x".into(), 1), ("y".into(), 1)]
    );
    let text = metrics.render_prometheus();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gateway_serial_node_frames_total"))
        .collect();
    assert_eq!(
        lines,
        [
            "gateway_serial_node_frames_total{port=\"p\",node=\"c\"} 1",
            "gateway_serial_node_frames_total{port=\"p\",node=\"x\"} 1",
            "gateway_serial_node_frames_total{port=\"p\",node=\"y\"} 1",
        ]
    );
}
