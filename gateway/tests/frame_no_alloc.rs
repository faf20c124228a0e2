//! The `frame` codec allocates nothing: node firmware without a heap can use
//! it. The JSON payload decoder allocates nothing per message either (keys
//! and values are borrowed), and neither do rejecting a bare-number payload
//! or a port decoder dropping damaged lines (drops are counted; their log
//! text is rendered only when the log asks). Checked with a counting global allocator (this
//! test binary only) that counts per thread, so the test harness's own
//! threads do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sensor_gateway::decode::{self, PayloadFormat};
use sensor_gateway::wire::frame::{self, ChannelReading, Frame};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn encoding_and_decoding_frames_allocates_nothing() {
    let mut readings = heapless::Vec::new();
    for c in 0..frame::MAX_CHANNELS {
        readings
            .push(ChannelReading {
                channel: c as u8,
                value: c as f32 * 0.5,
            })
            .unwrap();
    }
    let f = Frame {
        node: 7,
        seq: 123_456,
        uptime_ms: Some(99_000),
        readings,
    };
    let mut out = [0u8; frame::MAX_ENCODED_BYTES + 1];
    let before = allocations();
    let mut total = 0usize;
    for _ in 0..1000 {
        let n = frame::encode(&f, &mut out).unwrap();
        let back = frame::decode(&mut out[..n - 1]).unwrap();
        total += back.readings.len();
    }
    let after = allocations();
    assert_eq!(total, 1000 * frame::MAX_CHANNELS);
    assert_eq!(after - before, 0, "the frame codec allocated");
}

#[test]
fn decoding_a_json_payload_allocates_nothing() {
    let format = PayloadFormat::json_default();
    let payload =
        br#"{"sensor_model":"PT100","value":21.5,"ts":1700000000123,"seq":42,"unit":"degC"}"#;
    let before = allocations();
    let mut sum = 0.0;
    for _ in 0..1000 {
        let d = decode::decode(&format, payload).unwrap();
        sum += d.value;
    }
    let after = allocations();
    assert_eq!(sum, 21_500.0);
    assert_eq!(after - before, 0, "the JSON payload decoder allocated");
}

#[test]
fn rejecting_a_bare_number_payload_allocates_nothing() {
    let before = allocations();
    let mut rejected = 0;
    for _ in 0..1000 {
        for payload in [&b"4x"[..], &[0xff, 0xfe][..]] {
            rejected += usize::from(decode::decode(&PayloadFormat::Number, payload).is_err());
        }
    }
    let after = allocations();
    assert_eq!(rejected, 2000);
    assert_eq!(after - before, 0, "a rejected payload allocated");
}

/// Damaged lines are counted, not described: the description for the log
/// is rendered only when the log asks for it.
#[test]
fn a_port_decoder_drops_damaged_lines_without_allocating() {
    use sensor_gateway::wire::{DropReason, Format, NodeTime, PortDecoder, PortSettings, Unmapped};
    let mut d = PortDecoder::new(PortSettings {
        name: "p".into(),
        format: Format::Line {
            require_checksum: false,
        },
        max_frame_bytes: 128,
        time: NodeTime::Ignore,
        unmapped: Unmapped::Accept,
        channels: Vec::new(),
        max_nodes: 8,
    });
    let damaged = b"temp=hot\nnode=n1 seq=1 temp=1*00\nnode=a+b temp=1\nnode=n1 a+b=1\n\xff\xfe\n";
    let mut out = Vec::new();
    // The first pass sizes the decoder's reusable buffers.
    d.push(&mut damaged.to_vec(), 0, &mut out);
    let mut bytes = damaged.to_vec();
    let before = allocations();
    for _ in 0..1000 {
        bytes.copy_from_slice(damaged);
        d.push(&mut bytes, 0, &mut out);
    }
    let after = allocations();
    assert!(out.is_empty());
    assert_eq!(d.counters().dropped_total(), 5 * 1001);
    assert_eq!(d.counters().dropped(DropReason::BadName), 2 * 1001);
    assert_eq!(after - before, 0, "dropping damaged lines allocated");
    let (reason, text) = d.take_last_drop().expect("a drop to describe");
    assert_eq!(
        (reason, text.as_str()),
        (DropReason::NotUtf8, "\u{fffd}\u{fffd}")
    );
}
