//! sensor-gateway: reads sensor events, aggregates them into windowed
//! summaries at the edge and forwards them upstream over MQTT.
//!
//! The crate is split into a synchronous, I/O-free core ([`processor`],
//! [`decode`], [`window`], [`topic`], [`model`]) and async shells that own the
//! sockets and the clock ([`source`], [`upstream`], [`http`], [`runtime`]). See
//! ARCHITECTURE.md for the data flow and the invariants.

pub mod alarm;
pub mod anomaly;
pub mod backoff;
pub mod buffer;
pub mod clock;
pub mod config;
pub mod decode;
pub mod envelope;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod pidfile;
pub mod policy;
pub mod processor;
pub mod reject;
pub mod reload;
pub mod runtime;
pub mod sketch;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod topic;
pub mod upstream;
pub mod window;
pub mod wire;

pub use config::Config;
pub use runtime::run;

/// Gateway wall-clock time in milliseconds since the Unix epoch. The core
/// never calls this: time is passed into it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
