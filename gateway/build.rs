//! Passes the target triple to the crate (`gateway_build_info`) and embeds
//! the build time as the default lower bound of the gateway clock
//! (`clock.not_before`): a clock reading earlier than the binary it runs
//! is wrong. `SOURCE_DATE_EPOCH` (reproducible builds, Debian packaging)
//! takes precedence over the time of the build.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=SENSOR_GATEWAY_BUILD_TIME={secs}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=GATEWAY_TARGET={target}");
}
