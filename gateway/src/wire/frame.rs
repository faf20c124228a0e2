//! The `frame` wire format: the binary frames of microcontroller nodes.
//!
//! This module is written so that node firmware can reuse it as it is: it
//! depends only on `core`, `serde`, `postcard` and `heapless`, and it never
//! allocates. The format is specified byte by byte in
//! `docs/serial-protocol.md`; in short, one frame on the wire is
//!
//! ```text
//! COBS( version:u8 | postcard(Frame body) | crc32:u32 little-endian ) 0x00
//! ```
//!
//! where the CRC is CRC-32/ISO-HDLC (the one of zlib and Ethernet) over
//! everything before it. COBS removes every zero byte from the frame, so
//! `0x00` only ever appears as the delimiter and a receiver resynchronises at
//! the next one after any damage.

use heapless::Vec;
use serde::{Deserialize, Serialize};

/// The format version this module writes and reads.
pub const VERSION: u8 = 1;
/// The most channel readings one frame carries.
pub const MAX_CHANNELS: usize = 16;
/// The largest unencoded frame: version, body of at most
/// 3 + 5 + 1 + 5 + 1 + 16 x (1 + 4) bytes, CRC.
pub const MAX_RAW_BYTES: usize = 1 + 95 + 4;
/// The largest COBS-encoded frame, without its delimiter.
pub const MAX_ENCODED_BYTES: usize = MAX_RAW_BYTES + MAX_RAW_BYTES.div_ceil(254);
/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// One channel's value in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChannelReading {
    /// The node's channel number (its ADC input, its register, ...).
    pub channel: u8,
    pub value: f32,
}

/// The body of a frame: who sent it, which one it is, when, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The node's id, unique on its bus.
    pub node: u16,
    /// Increases by one per frame the node sends; restarts at 0 on boot and
    /// wraps from `u32::MAX` to 0.
    pub seq: u32,
    /// Milliseconds since the node booted, if the node keeps time. Wraps
    /// after 49.7 days.
    pub uptime_ms: Option<u32>,
    pub readings: Vec<ChannelReading, MAX_CHANNELS>,
}

/// Why bytes between two delimiters are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The COBS encoding is broken (a length byte points past the end).
    Cobs,
    /// Too short to hold a version and a CRC, or too long for a frame.
    Length,
    /// The CRC does not match: bytes were damaged on the way.
    Crc,
    /// A version this receiver does not understand.
    Version(u8),
    /// The CRC is right but the body does not decode (a sender bug).
    Body,
    /// The output buffer is too small (encoding only).
    BufferTooSmall,
}

impl FrameError {
    /// A short name, used as the reason of a counted drop.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Cobs => "bad_cobs",
            FrameError::Length => "bad_length",
            FrameError::Crc => "bad_crc",
            FrameError::Version(_) => "bad_version",
            FrameError::Body => "bad_body",
            FrameError::BufferTooSmall => "buffer_too_small",
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Cobs => f.write_str("broken COBS encoding"),
            FrameError::Length => f.write_str("frame too short or too long"),
            FrameError::Crc => f.write_str("CRC mismatch"),
            FrameError::Version(v) => write!(f, "unknown frame version {v}"),
            FrameError::Body => f.write_str("the frame body does not decode"),
            FrameError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

/// Encodes `frame` into `out` as it goes on the wire, delimiter included,
/// and returns the number of bytes written. An `out` of
/// `MAX_ENCODED_BYTES + 1` bytes always suffices.
pub fn encode(frame: &Frame, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut raw = [0u8; MAX_RAW_BYTES];
    raw[0] = VERSION;
    let body_len = postcard::to_slice(frame, &mut raw[1..MAX_RAW_BYTES - 4])
        .map_err(|_| FrameError::BufferTooSmall)?
        .len();
    let end = 1 + body_len;
    let crc = crc32(&raw[..end]);
    raw[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    let n = cobs_encode(&raw[..end + 4], out)?;
    if n >= out.len() {
        return Err(FrameError::BufferTooSmall);
    }
    out[n] = DELIMITER;
    Ok(n + 1)
}

/// Decodes the bytes between two delimiters (delimiters excluded). The COBS
/// decoding happens in place, so `bytes` is overwritten.
pub fn decode(bytes: &mut [u8]) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_ENCODED_BYTES {
        return Err(FrameError::Length);
    }
    let n = cobs_decode_in_place(bytes)?;
    let raw = &bytes[..n];
    if raw.len() < 1 + 4 {
        return Err(FrameError::Length);
    }
    let (data, crc) = raw.split_at(raw.len() - 4);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(data) != expected {
        return Err(FrameError::Crc);
    }
    if data[0] != VERSION {
        return Err(FrameError::Version(data[0]));
    }
    match postcard::take_from_bytes::<Frame>(&data[1..]) {
        Ok((frame, [])) => Ok(frame),
        _ => Err(FrameError::Body),
    }
}

/// COBS-encodes `input` into `out` (no delimiter); returns the length.
pub fn cobs_encode(input: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let mut code_at = 0usize;
    let mut w = 1usize;
    let mut code = 1u8;
    for &b in input {
        if w >= out.len() {
            return Err(FrameError::BufferTooSmall);
        }
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xFF {
                if w >= out.len() {
                    return Err(FrameError::BufferTooSmall);
                }
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    if code_at >= out.len() {
        return Err(FrameError::BufferTooSmall);
    }
    out[code_at] = code;
    Ok(w)
}

/// Reverses [`cobs_encode`] in place; returns the decoded length.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut r = 0usize;
    let mut w = 0usize;
    while r < buf.len() {
        let code = buf[r];
        if code == 0 {
            return Err(FrameError::Cobs);
        }
        let end = r + code as usize;
        if end > buf.len() {
            return Err(FrameError::Cobs);
        }
        r += 1;
        while r < end {
            if buf[r] == 0 {
                return Err(FrameError::Cobs);
            }
            buf[w] = buf[r];
            w += 1;
            r += 1;
        }
        if code != 0xFF && r < buf.len() {
            buf[w] = 0;
            w += 1;
        }
    }
    Ok(w)
}

/// CRC-32/ISO-HDLC (polynomial 0x04C11DB7 reflected, init and final XOR
/// 0xFFFFFFFF): the CRC of zlib, Ethernet and PNG. `crc32(b"123456789")` is
/// `0xCBF43926`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(node: u16, seq: u32, n: usize) -> Frame {
        let mut readings = Vec::new();
        for c in 0..n {
            let _ = readings.push(ChannelReading {
                channel: c as u8,
                value: c as f32 * 1.5,
            });
        }
        Frame {
            node,
            seq,
            uptime_ms: Some(seq.wrapping_mul(10)),
            readings,
        }
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_largest_frame_fits_the_stated_bounds() {
        let f = Frame {
            node: u16::MAX,
            seq: u32::MAX,
            uptime_ms: Some(u32::MAX),
            readings: frame(0, 0, MAX_CHANNELS).readings,
        };
        let mut out = [0u8; MAX_ENCODED_BYTES + 1];
        let n = encode(&f, &mut out).unwrap();
        assert!(n <= MAX_ENCODED_BYTES + 1);
        assert_eq!(out[n - 1], 0);
        assert!(out[..n - 1].iter().all(|&b| b != 0));
        assert_eq!(decode(&mut out[..n - 1]).unwrap(), f);
    }

    #[test]
    fn cobs_handles_runs_of_254_and_more() {
        for len in [0usize, 1, 253, 254, 255, 300, 600] {
            let input: std::vec::Vec<u8> = (0..len).map(|i| (i % 7 + 1) as u8).collect();
            let mut out = vec![0u8; len + len / 254 + 2];
            let n = cobs_encode(&input, &mut out).unwrap();
            assert!(out[..n].iter().all(|&b| b != 0));
            let m = cobs_decode_in_place(&mut out[..n]).unwrap();
            assert_eq!(&out[..m], &input[..], "len {len}");
        }
    }

    #[test]
    fn every_error_is_reported_as_such() {
        let mut out = [0u8; MAX_ENCODED_BYTES + 1];
        let n = encode(&frame(3, 9, 2), &mut out).unwrap() - 1;
        let mut bad = out;
        bad[n / 2] ^= 0x10;
        assert!(matches!(
            decode(&mut bad[..n]),
            Err(FrameError::Crc | FrameError::Cobs)
        ));
        assert_eq!(decode(&mut [1u8, 1][..]), Err(FrameError::Length));
        assert_eq!(decode(&mut [5u8, 1, 1, 1][..]), Err(FrameError::Cobs));
        // A frame of another version, with a correct CRC.
        let mut raw = [2u8, 0, 0, 0, 0];
        let crc = crc32(&raw[..1]);
        raw[1..].copy_from_slice(&crc.to_le_bytes());
        let mut enc = [0u8; 16];
        let m = cobs_encode(&raw, &mut enc).unwrap();
        assert_eq!(decode(&mut enc[..m]), Err(FrameError::Version(2)));
    }
}
