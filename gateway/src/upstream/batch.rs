//! The sink's open batch: records taken from the buffer, in order, into one
//! envelope ([`crate::envelope`]) until it holds `max_records` or
//! `max_bytes`, an alarm is in it, or its first record has waited
//! `max_delay`. One PUBACK then covers every record of the envelope.
//!
//! The records of an open batch are in flight for the buffer (handed out by
//! `Buffer::next_unsent`), so a lost connection or a shutdown returns them
//! with everything else in flight (`Buffer::rewind`).

use std::sync::Arc;

use tokio::time::Instant;

use crate::buffer::Buffer;
use crate::config::BatchConfig;
use crate::envelope::{BatchBuilder, EnvelopeSettings};
use crate::model::{Lane, Record};

/// A finished envelope with what it carries.
pub struct Sealed {
    pub payload: Vec<u8>,
    pub seqs: Vec<u64>,
    /// The measurement time of its oldest record (for the message expiry).
    pub oldest_ts_ms: i64,
}

pub struct Batcher {
    pub cfg: BatchConfig,
    pub settings: EnvelopeSettings,
    builder: BatchBuilder,
    seqs: Vec<u64>,
    /// Taken from the buffer but did not fit: the first of the next batch.
    pending: Option<Arc<Record>>,
    opened: Option<Instant>,
    has_alarm: bool,
    oldest_ts_ms: i64,
}

impl Batcher {
    pub fn new(cfg: BatchConfig) -> Batcher {
        let settings = cfg.envelope();
        Batcher {
            builder: BatchBuilder::new(&settings),
            cfg,
            settings,
            seqs: Vec::new(),
            pending: None,
            opened: None,
            has_alarm: false,
            oldest_ts_ms: i64::MAX,
        }
    }

    /// Takes records from the buffer until the batch is full or nothing
    /// waits. A record that cannot be published at all (too large, or not
    /// encodable) is set aside, as a lone record would be.
    pub fn fill(&mut self, buffer: &mut Buffer, now_ms: i64) {
        while self.seqs.len() < self.settings.max_records {
            let rec = match self.pending.take() {
                Some(r) => r,
                None => match buffer.next_unsent(now_ms) {
                    Some(r) => r,
                    None => break,
                },
            };
            if rec.payload.len() + rec.topic.len() + 64 > super::MAX_PACKET_BYTES {
                buffer.set_aside(rec.seq, "too_large", now_ms);
                continue;
            }
            if !self.builder.would_fit(&rec) {
                self.pending = Some(rec);
                break;
            }
            if let Err(e) = self.builder.push(&rec) {
                tracing::debug!(error = %e, "A record could not be encoded into the envelope.");
                buffer.set_aside(rec.seq, "unencodable", now_ms);
                continue;
            }
            self.seqs.push(rec.seq);
            self.opened.get_or_insert_with(Instant::now);
            self.has_alarm |= rec.lane == Lane::Alarm;
            self.oldest_ts_ms = self.oldest_ts_ms.min(rec.ts_ms);
        }
    }

    /// Whether the open batch goes out now: it is full, holds an alarm, its
    /// first record waited `max_delay`, or `flush` (shutdown).
    pub fn ready(&self, now: Instant, flush: bool) -> bool {
        if self.seqs.is_empty() {
            return false;
        }
        flush
            || self.has_alarm
            || self.pending.is_some()
            || self.seqs.len() >= self.settings.max_records
            || self.opened.is_some_and(|at| now >= at + self.cfg.max_delay)
    }

    /// When the open batch is due by `max_delay`.
    pub fn due_at(&self) -> Option<Instant> {
        self.opened.map(|at| at + self.cfg.max_delay)
    }

    /// Seals the open batch. On an encoding error its records are handed
    /// back (`Err` with their seqs) for the caller to set aside.
    pub fn seal(&mut self) -> Result<Sealed, Vec<u64>> {
        let seqs = std::mem::take(&mut self.seqs);
        let oldest_ts_ms = std::mem::replace(&mut self.oldest_ts_ms, i64::MAX);
        self.opened = None;
        self.has_alarm = false;
        match self.builder.finish() {
            Ok(payload) => Ok(Sealed {
                payload,
                seqs,
                oldest_ts_ms,
            }),
            Err(e) => {
                tracing::warn!(error = %e, records = seqs.len(), "An envelope could not be encoded; its records are set aside.");
                Err(seqs)
            }
        }
    }

    /// Forgets the open batch (its records were rewound by the buffer).
    pub fn reset(&mut self) {
        let _ = self.builder.finish();
        self.seqs.clear();
        self.pending = None;
        self.opened = None;
        self.has_alarm = false;
        self.oldest_ts_ms = i64::MAX;
    }
}
