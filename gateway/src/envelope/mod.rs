//! The batch envelope: several records in one upstream message, optionally
//! transcoded to CBOR and compressed with zstd (with the shipped dictionary
//! or without one). Pure: no I/O, no clock, no async; the upstream sink
//! fills a [`BatchBuilder`] and publishes what [`BatchBuilder::finish`]
//! returns, and a consumer (`sensor-gateway consume`, or one in another
//! language, see `docs/envelope.md`) recognises an envelope by its magic
//! ([`is_envelope`]) and reads it with [`decode`].
//!
//! The layout (every integer little-endian; do not reorder fields, a change
//! of layout is a new `version`):
//!
//! ```text
//! header, 16 bytes, never compressed:
//!   0  magic        4  A7 53 47 57 (0xA7 "SGW"; 0xA7 cannot start UTF-8 text, so no JSON message)
//!   4  version      1  1
//!   5  encoding     1  0 = json, 1 = cbor (how each entry's payload is written)
//!   6  compression  1  0 = none, 1 = zstd (the body is one zstd frame declaring its content size)
//!   7  flags        1  0 (reserved; a reader refuses other values)
//!   8  dictionary   4  u32 zstd dictionary id; 0 = none (always 0 without compression)
//!  12  count        4  u32 number of entries
//! body (after decompression), `count` entries back to back, nothing after them:
//!   seq          LEB128 unsigned (the record's sequence number, unique per gateway)
//!   lane         1  0 = summary lane, 1 = alarm lane
//!   topic_len    LEB128, then topic_len bytes of UTF-8: the record's own topic
//!   payload_len  LEB128, then payload_len bytes: JSON text (encoding 0) or one CBOR data item (1)
//! ```
//!
//! A hostile envelope costs only itself: the entry count, the declared
//! decompressed size and every length are checked against fixed bounds and
//! the bytes present before anything is allocated for them.

mod builder;
mod decode;
#[cfg(test)]
mod tests;

pub use builder::{BatchBuilder, EncodeError};
pub use decode::{decode, is_envelope, DecodeError, Decoded, Entry};

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = [0xA7, b'S', b'G', b'W'];
/// The layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Most entries a decoder accepts in one envelope.
pub const MAX_ENTRIES: u32 = 65_536;
/// Most bytes a compressed body may declare (and decompress to).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The zstd level the builder compresses with: small batches compress
/// fast at any level; 9 takes most of what 19 would at a fraction of
/// the CPU of a Pi-class device.
pub const ZSTD_LEVEL: i32 = 9;

/// The shipped zstd dictionary, trained from summaries of the shipped
/// condition-monitoring configuration (see `docs/envelope.md` for how it
/// is regenerated). Its id is [`dictionary_id`].
pub const DICTIONARY: &[u8] = include_bytes!("../../dict/summaries-v1.zdict");

/// The zstd dictionary id of [`DICTIONARY`], written in the header of
/// envelopes compressed with it.
pub fn dictionary_id() -> u32 {
    zstd::zstd_safe::get_dict_id_from_dict(DICTIONARY).map_or(0, |id| id.get())
}

/// How each entry's payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The record's JSON bytes as they are.
    Json = 0,
    /// The record's JSON transcoded to one CBOR data item (RFC 8949).
    Cbor = 1,
}

/// How the body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    /// zstd with the shipped [`DICTIONARY`].
    Zstd,
    /// zstd without a dictionary, for consumers that cannot get it.
    ZstdNoDictionary,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::Cbor];

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|e| *e as u8 == b)
    }
}

impl Compression {
    pub const ALL: [Compression; 3] = [
        Compression::None,
        Compression::Zstd,
        Compression::ZstdNoDictionary,
    ];

    /// The header's compression byte.
    fn byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd | Compression::ZstdNoDictionary => 1,
        }
    }
}

/// What a batch may hold and how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeSettings {
    pub encoding: Encoding,
    pub compression: Compression,
    /// Most records per envelope (at least 1).
    pub max_records: usize,
    /// Most bytes of the uncompressed envelope (header and entries, a
    /// payload counted at its JSON length); a single record larger than
    /// this still makes an envelope of its own.
    pub max_bytes: usize,
}

/// The MQTT 5 content type of envelopes written with `settings`.
pub fn content_type(settings: &EnvelopeSettings) -> &'static str {
    match (settings.encoding, settings.compression) {
        (Encoding::Json, Compression::None) => "application/vnd.sgw.batch+json",
        (Encoding::Cbor, Compression::None) => "application/vnd.sgw.batch+cbor",
        (Encoding::Json, _) => "application/vnd.sgw.batch+json+zstd",
        (Encoding::Cbor, _) => "application/vnd.sgw.batch+cbor+zstd",
    }
}

/// The content type of a record published alone, as plain JSON.
pub const PLAIN_CONTENT_TYPE: &str = "application/json";

/// Appends `v` as unsigned LEB128.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes `v` takes as LEB128.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}
