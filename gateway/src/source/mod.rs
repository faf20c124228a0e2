//! Sources: the async shells that read sensor messages from the outside world
//! and hand them, undecoded, to the processing core through one bounded
//! channel. Each source is one task; a failing source is retried and never
//! stops the others.

pub mod guard;
pub mod mqtt;
pub mod serial;
