//! MQTT payload decoding: never panics, whatever the bytes; a decoded value
//! is what a JSON reader finds at the value field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_gateway::decode::{decode, PayloadFormat};

fuzz_target!(|data: &[u8]| {
    let _ = decode(&PayloadFormat::Number, data);
    if let Ok(d) = decode(&PayloadFormat::json_default(), data) {
        assert!(d.ts_ms.is_none_or(|t| t >= 0));
    }
});
