//! The `frame` codec allocates nothing: node firmware without a heap can use
//! it. Checked with a counting global allocator (this test binary only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use sensor_gateway::wire::frame::{self, ChannelReading, Frame};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
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
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut total = 0usize;
    for _ in 0..1000 {
        let n = frame::encode(&f, &mut out).unwrap();
        let back = frame::decode(&mut out[..n - 1]).unwrap();
        total += back.readings.len();
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(total, 1000 * frame::MAX_CHANNELS);
    assert_eq!(after - before, 0, "the frame codec allocated");
}
