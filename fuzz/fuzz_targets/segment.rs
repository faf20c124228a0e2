//! Buffer segment scanning (start-up recovery and `buffer verify`): never
//! panics, and every range it calls a valid record parses as one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_gateway::buffer::segment::{parse_record, scan, Parsed};

fuzz_target!(|data: &[u8]| {
    let s = scan(data);
    for (off, len) in s.records {
        assert!(matches!(parse_record(&data[off..off + len]), Parsed::Record { .. }));
    }
});
