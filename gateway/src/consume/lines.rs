//! What the consumer makes of one MQTT message, pure: an envelope or a
//! plain JSON message in, newline-delimited JSON records out (one line per
//! record not seen before), every outcome counted in a [`Tally`].

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::dedup::{Dedup, Verdict};
use crate::envelope::{self, DecodeError};

/// Counts of everything the consumer saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    /// Records written.
    pub records: u64,
    /// Records skipped as already written.
    pub duplicates: u64,
    /// Messages that are neither an envelope nor JSON.
    pub undecodable: u64,
    /// Records written without a check: too far below their gateway's
    /// highest seq, or with an overlong gateway name.
    pub unchecked: u64,
    /// JSON messages without a gateway and seq (a status message, say),
    /// written as they are.
    pub unsequenced: u64,
    /// Gateways whose seqs were forgotten to make room for others.
    pub gateways_forgotten: u64,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records={} duplicates={} undecodable={} messages={} unchecked={} unsequenced={} gateways_forgotten={}",
            self.records,
            self.duplicates,
            self.undecodable,
            self.messages,
            self.unchecked,
            self.unsequenced,
            self.gateways_forgotten
        )
    }
}

/// Why a message was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error("a damaged envelope: {0}")]
    Envelope(#[from] DecodeError),
    #[error("neither an envelope nor JSON: {0}")]
    Json(String),
}

/// Decodes messages and remembers what was written.
#[derive(Debug, Default)]
pub struct Reader {
    dedup: Dedup,
    tally: Tally,
}

/// One output line; the fields in this order.
#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    gateway: Option<&'a str>,
    seq: Option<u64>,
    payload: &'a Value,
}

impl Reader {
    pub fn tally(&self) -> Tally {
        Tally {
            gateways_forgotten: self.dedup.evicted,
            ..self.tally
        }
    }

    /// Appends to `out` a line per new record of the message `payload`
    /// received on `topic`; returns how many.
    pub fn message(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, Undecodable> {
        self.tally.messages += 1;
        let before = self.tally.records;
        let result = self.decode(topic, payload, out);
        if result.is_err() {
            self.tally.undecodable += 1;
        }
        result.map(|()| self.tally.records - before)
    }

    fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Undecodable> {
        if envelope::is_envelope(payload) {
            let d = envelope::decode(payload)?;
            for e in &d.entries {
                let gateway = e.payload.get("gateway").and_then(Value::as_str);
                self.record(&e.topic, gateway, Some(e.seq), &e.payload, out);
            }
            return Ok(());
        }
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| Undecodable::Json(e.to_string()))?;
        let gateway = value.get("gateway").and_then(Value::as_str);
        let seq = value.get("seq").and_then(Value::as_u64);
        self.record(topic, gateway, seq, &value, out);
        Ok(())
    }

    fn record(
        &mut self,
        topic: &str,
        gateway: Option<&str>,
        seq: Option<u64>,
        payload: &Value,
        out: &mut Vec<u8>,
    ) {
        match (gateway, seq) {
            (Some(g), Some(s)) => match self.dedup.check(g, s) {
                Verdict::New => {}
                Verdict::Duplicate => {
                    self.tally.duplicates += 1;
                    return;
                }
                Verdict::Unchecked => self.tally.unchecked += 1,
            },
            _ => self.tally.unsequenced += 1,
        }
        let line = Line {
            topic,
            gateway,
            seq,
            payload,
        };
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
            self.tally.records += 1;
        }
    }
}
