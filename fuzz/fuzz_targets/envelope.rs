#![no_main]
//! See `sensor_gateway::fuzzing::envelope`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sensor_gateway::fuzzing::envelope(data);
});
