//! Configuration loading: any text yields a config or diagnostics with line
//! numbers inside the text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_gateway::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(c) => {
            let _ = c.render_effective();
        }
        Err(ConfigError::Invalid { diagnostics, .. }) => {
            let lines = text.lines().count().max(1) + 1;
            for d in diagnostics {
                assert!(d.line >= 1 && d.line <= lines, "line {} of {}", d.line, lines);
            }
        }
        Err(ConfigError::Io { .. }) => unreachable!("no file is read"),
    }
});
