//! The `frame` codec allocates nothing: node firmware without a heap can use
//! it. The JSON payload decoder allocates nothing per message either (keys
//! and values are borrowed). Checked with a counting global allocator (this
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
