//! What the core hands to the buffer and upstream: numbered records in
//! delivery lanes. The buffer and the upstream link depend on these types,
//! never on the processor that makes them.

/// Delivery lanes: alarms are delivered before summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Summary = 0,
    Alarm = 1,
}

impl Lane {
    pub fn dir_name(self) -> &'static str {
        match self {
            Lane::Summary => "summaries",
            Lane::Alarm => "alarms",
        }
    }
}

/// What upstream receives: a topic and an encoded payload, numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub lane: Lane,
    /// Measurement time the record describes (a summary's window end), ms;
    /// `buffer.max_age` is measured from it.
    pub ts_ms: i64,
    pub topic: String,
    pub payload: Vec<u8>,
}
