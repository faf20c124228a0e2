//! Reading envelopes, with every length checked before it is trusted.

use super::{
    dictionary_id, Compression, Encoding, DICTIONARY, HEADER_LEN, MAGIC, MAX_BODY_BYTES,
    MAX_ENTRIES, VERSION,
};
use crate::model::Lane;

/// Why bytes are not a usable envelope. Each case costs only the envelope.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not an envelope (no magic)")]
    NotEnvelope,
    #[error("the header is cut short ({0} bytes)")]
    ShortHeader(usize),
    #[error("envelope version {0} is not supported (this reader knows version 1)")]
    Version(u8),
    #[error("unknown encoding {0}")]
    Encoding(u8),
    #[error("unknown compression {0}")]
    Compression(u8),
    #[error("reserved flags {0:#04x} are set")]
    Flags(u8),
    #[error("dictionary {0} is not known (this reader has {known})", known = dictionary_id())]
    Dictionary(u32),
    #[error("{0} entries are more than the {MAX_ENTRIES} allowed")]
    TooManyEntries(u32),
    #[error("the compressed body does not declare its size, or declares more than {MAX_BODY_BYTES} bytes")]
    BodySize,
    #[error("zstd: {0}")]
    Decompress(String),
    #[error("entry {index} is cut short or malformed")]
    Truncated { index: u32 },
    #[error("entry {index} has unknown lane {lane}")]
    Lane { index: u32, lane: u8 },
    #[error("entry {index}'s topic is not UTF-8")]
    Topic { index: u32 },
    #[error("entry {index}'s payload does not decode: {reason}")]
    Payload { index: u32, reason: String },
    #[error("{0} bytes follow the last entry")]
    Trailing(usize),
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub encoding: Encoding,
    pub compression: Compression,
    pub entries: Vec<Entry>,
}

/// One record of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub lane: Lane,
    pub topic: String,
    pub payload: serde_json::Value,
}

/// Whether `bytes` start like an envelope (anything else is a plain
/// JSON message).
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Decodes an envelope: header, decompression within [`MAX_BODY_BYTES`],
/// then every entry.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if !is_envelope(bytes) {
        return Err(DecodeError::NotEnvelope);
    }
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::ShortHeader(bytes.len()));
    };
    let [_, _, _, _, version, encoding, compression, flags, d0, d1, d2, d3, c0, c1, c2, c3] =
        *header;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let encoding = Encoding::from_byte(encoding).ok_or(DecodeError::Encoding(encoding))?;
    if flags != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let dict = u32::from_le_bytes([d0, d1, d2, d3]);
    let count = u32::from_le_bytes([c0, c1, c2, c3]);
    if count > MAX_ENTRIES {
        return Err(DecodeError::TooManyEntries(count));
    }
    let (compression, inflated) = match (compression, dict) {
        (0, 0) => (Compression::None, None),
        (0, d) => return Err(DecodeError::Dictionary(d)),
        (1, 0) => (Compression::ZstdNoDictionary, Some(inflate(rest, None)?)),
        (1, d) if d == dictionary_id() => {
            (Compression::Zstd, Some(inflate(rest, Some(DICTIONARY))?))
        }
        (1, d) => return Err(DecodeError::Dictionary(d)),
        (c, _) => return Err(DecodeError::Compression(c)),
    };
    let body = inflated.as_deref().unwrap_or(rest);
    let entries = entries(body, count, encoding)?;
    Ok(Decoded {
        encoding,
        compression,
        entries,
    })
}

/// Decompresses one zstd frame that declares its size, at most
/// [`MAX_BODY_BYTES`].
fn inflate(frame: &[u8], dict: Option<&[u8]>) -> Result<Vec<u8>, DecodeError> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_BODY_BYTES as u64 => n as usize,
        Ok(_) => return Err(DecodeError::BodySize),
        Err(_) => return Err(DecodeError::Decompress("not a zstd frame".into())),
    };
    let d = match dict {
        Some(d) => zstd::bulk::Decompressor::with_dictionary(d),
        None => zstd::bulk::Decompressor::new(),
    };
    let mut d = d.map_err(|e| DecodeError::Decompress(e.to_string()))?;
    let mut out = Vec::with_capacity(size);
    d.decompress_to_buffer(frame, &mut out)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if out.len() != size {
        return Err(DecodeError::Decompress(format!(
            "the frame declares {size} bytes and holds {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Every entry of `body`, which must hold exactly `count`.
fn entries(body: &[u8], count: u32, encoding: Encoding) -> Result<Vec<Entry>, DecodeError> {
    // An entry takes at least four bytes, so the body bounds what is
    // allocated, whatever the header claims.
    let mut entries = Vec::with_capacity((count as usize).min(body.len() / 4));
    let mut r = Reader { rest: body };
    for index in 0..count {
        let cut = DecodeError::Truncated { index };
        let seq = r.varint().ok_or(cut.clone())?;
        let lane = match r.bytes(1).ok_or(cut.clone())? {
            [0] => Lane::Summary,
            [1] => Lane::Alarm,
            [lane] => return Err(DecodeError::Lane { index, lane: *lane }),
            _ => return Err(cut),
        };
        let topic = r.sized().ok_or(cut.clone())?;
        let topic = std::str::from_utf8(topic)
            .map_err(|_| DecodeError::Topic { index })?
            .to_owned();
        let payload = r.sized().ok_or(cut)?;
        let payload =
            value(payload, encoding).map_err(|reason| DecodeError::Payload { index, reason })?;
        entries.push(Entry {
            seq,
            lane,
            topic,
            payload,
        });
    }
    match r.rest.len() {
        0 => Ok(entries),
        n => Err(DecodeError::Trailing(n)),
    }
}

/// One payload as a JSON value.
fn value(payload: &[u8], encoding: Encoding) -> Result<serde_json::Value, String> {
    match encoding {
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Encoding::Cbor => {
            let mut r = payload;
            let v = ciborium::from_reader(&mut r).map_err(|e| e.to_string())?;
            match r.len() {
                0 => Ok(v),
                n => Err(format!("{n} bytes follow the CBOR item")),
            }
        }
    }
}

/// A cursor over the body.
pub(super) struct Reader<'a> {
    pub(super) rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// Unsigned LEB128 of at most ten bytes that fits in 64 bits.
    pub(super) fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, tail) = self.rest.split_first()?;
            self.rest = tail;
            let bits = u64::from(b & 0x7F);
            if i == 9 && bits > 1 {
                return None;
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A LEB128 length and that many bytes.
    fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.varint()?;
        self.bytes(usize::try_from(n).ok()?)
    }
}
