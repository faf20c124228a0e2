//! Serial decode throughput per wire format, on one core, and allocations
//! per frame.
//!
//! Run: cargo bench -p sensor-gateway --bench serial
//!
//! Two levels are measured: the format decoder alone (`frame::decode`,
//! `line::parse`, `json::parse` on pre-split messages) and the whole port
//! decoder (framing in 4 KiB reads as the serial task does, sequence and
//! clock checks, channel mapping, readings out). The port decoder is also
//! fed a stream in which every message is damaged (the drop path: counted,
//! described for the log only when the log asks), and a port's metrics are
//! updated from a decoder with many nodes, as the serial task does after
//! every read. Allocation counts come from a counting global allocator and
//! are printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, Throughput};
use sensor_gateway::metrics::Metrics;
use sensor_gateway::wire::frame::{self, ChannelReading, Frame};
use sensor_gateway::wire::{
    json, line, ChannelMap, Format, NodeTime, PortDecoder, PortSettings, SerialReading, Unmapped,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FRAMES: usize = 10_000;
const CHANNELS: usize = 4;
const NAMES: [&str; CHANNELS] = ["temp", "vib", "current", "pressure"];

/// One message per element, delimiter included, as a node sends them.
fn messages(format: Format) -> Vec<Vec<u8>> {
    (0..FRAMES)
        .map(|i| {
            let node = (i % 4) as u16 + 1;
            let seq = (i / 4) as u32;
            let uptime = 1_000 + i as u32 * 10;
            let values: Vec<f32> = (0..CHANNELS)
                .map(|c| 20.0 + c as f32 + (i % 97) as f32 * 0.125)
                .collect();
            match format {
                Format::Frame => {
                    let mut readings = heapless::Vec::new();
                    for (c, v) in values.iter().enumerate() {
                        let _ = readings.push(ChannelReading {
                            channel: c as u8,
                            value: *v,
                        });
                    }
                    let f = Frame {
                        node,
                        seq,
                        uptime_ms: Some(uptime),
                        readings,
                    };
                    let mut out = [0u8; frame::MAX_ENCODED_BYTES + 1];
                    let n = frame::encode(&f, &mut out).expect("fits");
                    out[..n].to_vec()
                }
                Format::Line { .. } => {
                    let mut body = format!("node={node},seq={seq},t={uptime}");
                    for (c, v) in values.iter().enumerate() {
                        body.push_str(&format!(",{}={v}", NAMES[c]));
                    }
                    format!("${body}*{:02X}\r\n", line::checksum(&body)).into_bytes()
                }
                Format::Json => {
                    let mut s = format!("{{\"node\":{node},\"seq\":{seq},\"t\":{uptime}");
                    for (c, v) in values.iter().enumerate() {
                        s.push_str(&format!(",\"{}\":{v}", NAMES[c]));
                    }
                    s.push_str("}\n");
                    s.into_bytes()
                }
            }
        })
        .collect()
}

/// The same messages, each damaged so that the port decoder drops it: a
/// frame with a changed byte (CRC or COBS), a line with a wrong checksum, a
/// JSON line that is not JSON.
fn damaged(format: Format) -> Vec<Vec<u8>> {
    let mut msgs = messages(format);
    for m in msgs.iter_mut() {
        match format {
            Format::Frame => {
                let i = m.len() / 2;
                m[i] = m[i].wrapping_add(1).max(1);
            }
            Format::Line { .. } => {
                // `...*hh\r\n`: change the last checksum digit.
                let i = m.len() - 3;
                m[i] = if m[i] == b'0' { b'1' } else { b'0' };
            }
            Format::Json => {
                if let Some(i) = m.iter().position(|&b| b == b':') {
                    m[i] = b'=';
                }
            }
        }
    }
    msgs
}

fn port(format: Format) -> PortDecoder {
    let mut channels = Vec::new();
    for node in 1..=4 {
        for (c, name) in NAMES.iter().enumerate() {
            channels.push(ChannelMap {
                node: Some(node.to_string()),
                channel: if format == Format::Frame {
                    c.to_string()
                } else {
                    (*name).to_owned()
                },
                sensor: format!("line1/m{node}/{name}"),
                unit: None,
            });
        }
    }
    PortDecoder::new(PortSettings {
        name: "bench".into(),
        format,
        max_frame_bytes: if format == Format::Frame {
            frame::MAX_ENCODED_BYTES
        } else {
            512
        },
        time: NodeTime::Uptime,
        unmapped: Unmapped::Accept,
        channels,
        max_nodes: 16,
    })
}

const FORMATS: [(&str, Format); 3] = [
    ("frame", Format::Frame),
    (
        "line",
        Format::Line {
            require_checksum: true,
        },
    ),
    ("json", Format::Json),
];

/// Decodes one message with the format's own decoder.
fn decode_one(format: Format, msg: &mut [u8]) -> usize {
    let end = msg.len() - 1;
    let body = &mut msg[..end];
    match format {
        Format::Frame => frame::decode(body).map(|f| f.readings.len()).unwrap_or(0),
        Format::Line { .. } => line::parse(body, true)
            .ok()
            .flatten()
            .map(|l| l.readings.len())
            .unwrap_or(0),
        Format::Json => json::parse(body)
            .ok()
            .flatten()
            .map(|l| l.readings.len())
            .unwrap_or(0),
    }
}

fn report_allocations() {
    println!("allocations per message ({FRAMES} messages of {CHANNELS} channels, after warm-up):");
    for (name, format) in FORMATS {
        let mut msgs = messages(format);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut n = 0;
        for m in msgs.iter_mut() {
            n += decode_one(format, m);
        }
        let decoder = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(n, FRAMES * CHANNELS);

        let mut stream: Vec<u8> = messages(format).concat();
        let mut d = port(format);
        let mut out: Vec<SerialReading> = Vec::with_capacity(4096);
        // Warm-up: the node table and the mapping cache fill once.
        d.push(&mut stream.clone()[..4096], 0, &mut out);
        out.clear();
        let mut d = port(format);
        d.push(&mut stream.clone()[..4096], 0, &mut out);
        out.clear();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for chunk in stream[4096..].chunks_mut(4096) {
            d.push(chunk, 1_000, &mut out);
            out.clear();
        }
        let accepting = ALLOCATIONS.load(Ordering::Relaxed) - before;

        let mut stream: Vec<u8> = damaged(format).concat();
        let mut d = port(format);
        d.push(&mut stream.clone()[..4096], 0, &mut out);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for chunk in stream[4096..].chunks_mut(4096) {
            d.push(chunk, 1_000, &mut out);
        }
        let dropping = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert!(out.is_empty(), "every damaged message is dropped");
        println!(
            "  {name:<5} decoder {:.3}   port decoder {:.3}   dropping damaged {:.3}",
            decoder as f64 / FRAMES as f64,
            accepting as f64 / FRAMES as f64,
            dropping as f64 / FRAMES as f64
        );
    }
}

/// A line port that has seen `nodes` nodes, each of which sent one line.
fn port_with_nodes(nodes: usize) -> PortDecoder {
    let mut d = PortDecoder::new(PortSettings {
        name: "bench".into(),
        format: Format::Line {
            require_checksum: false,
        },
        max_frame_bytes: 512,
        time: NodeTime::Ignore,
        unmapped: Unmapped::Accept,
        channels: Vec::new(),
        max_nodes: nodes,
    });
    let mut stream: Vec<u8> = (0..nodes)
        .rev()
        .flat_map(|n| format!("node=n{n} temp=21.5\n").into_bytes())
        .collect();
    d.push(&mut stream, 0, &mut Vec::new());
    d
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("serial_decode");
    g.throughput(Throughput::Elements(FRAMES as u64));
    for (name, format) in FORMATS {
        let msgs = messages(format);
        g.bench_function(format!("{name}/decoder"), |b| {
            b.iter_batched_ref(
                || msgs.clone(),
                |msgs| {
                    let mut n = 0;
                    for m in msgs.iter_mut() {
                        n += decode_one(format, m);
                    }
                    black_box(n)
                },
                BatchSize::LargeInput,
            )
        });
        let stream: Vec<u8> = msgs.concat();
        g.bench_function(format!("{name}/port"), |b| {
            let mut out = Vec::with_capacity(8192);
            b.iter_batched_ref(
                || (port(format), stream.clone()),
                |(d, s)| {
                    for chunk in s.chunks_mut(4096) {
                        d.push(chunk, 1_000, &mut out);
                        out.clear();
                    }
                    black_box(d.counters().frames)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.throughput(Throughput::Elements(FRAMES as u64));
    for (name, format) in FORMATS {
        let stream: Vec<u8> = damaged(format).concat();
        g.bench_function(format!("{name}/port_damaged"), |b| {
            let mut out = Vec::new();
            b.iter_batched_ref(
                || (port(format), stream.clone()),
                |(d, s)| {
                    for chunk in s.chunks_mut(4096) {
                        d.push(chunk, 1_000, &mut out);
                    }
                    black_box(d.counters().dropped_total())
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();

    // What the serial task does after every read.
    let mut g = c.benchmark_group("serial_metrics");
    let metrics = Metrics::new();
    for nodes in [4usize, 64] {
        let d = port_with_nodes(nodes);
        let port = metrics.serial_port(&format!("bench{nodes}"));
        g.bench_function(format!("update_{nodes}_nodes"), |b| {
            b.iter(|| port.update(black_box(&d)))
        });
    }
    g.finish();
}

fn main() {
    report_allocations();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
