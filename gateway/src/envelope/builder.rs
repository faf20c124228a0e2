//! Writing envelopes: records in, one envelope's bytes out.

use super::{
    dictionary_id, put_varint, varint_len, Compression, Encoding, EnvelopeSettings, DICTIONARY,
    HEADER_LEN, MAGIC, VERSION, ZSTD_LEVEL,
};
use crate::model::{Lane, Record};

/// Why a record or a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// CBOR transcoding needs the payload to be JSON; the record was not
    /// added.
    #[error("record {seq}'s payload is not JSON: {reason}")]
    NotJson { seq: u64, reason: String },
    #[error("zstd failed: {0}")]
    Compress(#[source] std::io::Error),
}

/// Collects records into one envelope. Reused across batches: `finish`
/// resets it and keeps its buffers and compression context.
pub struct BatchBuilder {
    settings: EnvelopeSettings,
    count: u32,
    /// The entries written so far, uncompressed.
    body: Vec<u8>,
    /// One payload's CBOR while it is transcoded.
    cbor: Vec<u8>,
    /// Created at the first `finish` that needs it: loading the dictionary
    /// is the expensive part, done once per builder.
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("settings", &self.settings)
            .field("count", &self.count)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl BatchBuilder {
    pub fn new(settings: &EnvelopeSettings) -> Self {
        BatchBuilder {
            settings: *settings,
            count: 0,
            body: Vec::new(),
            cbor: Vec::new(),
            compressor: None,
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `rec` fits beside what the batch holds: the record count
    /// stays within `max_records` and the uncompressed envelope within
    /// `max_bytes` (the payload counted at its JSON length). Always true
    /// for an empty batch, so an oversized record goes alone.
    pub fn would_fit(&self, rec: &Record) -> bool {
        if self.count == 0 {
            return true;
        }
        let entry = varint_len(rec.seq)
            + 1
            + varint_len(rec.topic.len() as u64)
            + rec.topic.len()
            + varint_len(rec.payload.len() as u64)
            + rec.payload.len();
        self.len() < self.settings.max_records
            && HEADER_LEN + self.body.len() + entry <= self.settings.max_bytes
    }

    /// Adds `rec`. With CBOR its payload must be JSON; if it is not, the
    /// batch is unchanged and the error says which record.
    pub fn push(&mut self, rec: &Record) -> Result<(), EncodeError> {
        let payload: &[u8] = match self.settings.encoding {
            Encoding::Json => &rec.payload,
            Encoding::Cbor => {
                let value: serde_json::Value =
                    serde_json::from_slice(&rec.payload).map_err(|e| EncodeError::NotJson {
                        seq: rec.seq,
                        reason: e.to_string(),
                    })?;
                self.cbor.clear();
                ciborium::into_writer(&value, &mut self.cbor).map_err(|e| {
                    EncodeError::NotJson {
                        seq: rec.seq,
                        reason: e.to_string(),
                    }
                })?;
                &self.cbor
            }
        };
        put_varint(&mut self.body, rec.seq);
        self.body.push(match rec.lane {
            Lane::Summary => 0,
            Lane::Alarm => 1,
        });
        put_varint(&mut self.body, rec.topic.len() as u64);
        self.body.extend_from_slice(rec.topic.as_bytes());
        put_varint(&mut self.body, payload.len() as u64);
        self.body.extend_from_slice(payload);
        self.count += 1;
        Ok(())
    }

    /// The envelope of the records pushed since the last `finish`; the
    /// builder is empty afterwards, whatever the outcome.
    pub fn finish(&mut self) -> Result<Vec<u8>, EncodeError> {
        let result = self.encode();
        self.body.clear();
        self.count = 0;
        result
    }

    fn encode(&mut self) -> Result<Vec<u8>, EncodeError> {
        let compression = self.settings.compression;
        let dict = match compression {
            Compression::Zstd => dictionary_id(),
            Compression::None | Compression::ZstdNoDictionary => 0,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, self.settings.encoding as u8, compression.byte(), 0]);
        out.extend_from_slice(&dict.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        if compression == Compression::None {
            out.extend_from_slice(&self.body);
            return Ok(out);
        }
        let c = match &mut self.compressor {
            Some(c) => c,
            slot @ None => {
                let c = match compression {
                    Compression::Zstd => {
                        zstd::bulk::Compressor::with_dictionary(ZSTD_LEVEL, DICTIONARY)
                    }
                    _ => zstd::bulk::Compressor::new(ZSTD_LEVEL),
                };
                slot.insert(c.map_err(EncodeError::Compress)?)
            }
        };
        let frame = c.compress(&self.body).map_err(EncodeError::Compress)?;
        out.extend_from_slice(&frame);
        Ok(out)
    }
}
