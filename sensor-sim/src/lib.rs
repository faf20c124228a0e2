//! sensor-sim: simulated plant machines for sensor-gateway.
//!
//! It plays three parts: the sensors (realistic temperature, vibration and
//! motor-current signals published over MQTT at a fixed total rate), the
//! plant's infrastructure in tests and demos (an embedded rumqttd broker, an
//! uplink that can be cut or shaped like a cellular link), and the load generator of the end-to-end
//! benchmark. The signal models are pure functions of time and a seeded RNG,
//! so a scenario replays identically.

pub mod broker;
pub mod demo;
pub mod link;
pub mod publish;
pub mod scenario;
pub mod serial;
pub mod signal;
pub mod uplink;
