//! The `line` wire format: text lines of `name=value` pairs, as an
//! Arduino-style sketch prints them.
//!
//! ```text
//! $node=7,seq=42,t=183000,temp=21.50,hum=40.2*3B\r\n
//! temp=21.5 hum=40.2
//! ```
//!
//! Fields are separated by commas, spaces or tabs. `node`, `seq` and `t`
//! (node uptime in ms) are optional and reserved; every other field is a
//! channel. An optional leading `$` and a trailing NMEA-style `*hh` checksum
//! (XOR of the bytes between them) protect the line. The exact grammar is in
//! `docs/serial-protocol.md`. Parsing allocates nothing: names borrow from
//! the line.

use heapless::Vec;

/// The most channels one line may carry.
pub const MAX_FIELDS: usize = 32;
/// The longest name of a node or channel.
pub const MAX_NAME: usize = 32;

/// A parsed line; names borrow from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub node: Option<&'a str>,
    pub seq: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub readings: Vec<(&'a str, f64), MAX_FIELDS>,
    /// Whether the line carried a checksum (it was correct if this is Ok).
    pub checksummed: bool,
}

/// Why a line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    NotUtf8,
    /// `*hh` present but wrong.
    BadChecksum,
    /// No checksum although the port requires one.
    MissingChecksum,
    /// A field is not `name=value`, a name is empty or too long, or a
    /// reserved field's value is not an unsigned integer.
    Syntax,
    /// A channel's value is not a number.
    NotANumber,
    TooManyFields,
}

impl LineError {
    pub fn reason(self) -> &'static str {
        match self {
            LineError::NotUtf8 => "not_utf8",
            LineError::BadChecksum => "bad_checksum",
            LineError::MissingChecksum => "missing_checksum",
            LineError::Syntax => "syntax",
            LineError::NotANumber => "not_a_number",
            LineError::TooManyFields => "too_many_fields",
        }
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored). Returns
/// `Ok(None)` for a blank line or a `#` comment, which senders may print
/// freely.
pub fn parse(bytes: &[u8], require_checksum: bool) -> Result<Option<Line<'_>>, LineError> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = core::str::from_utf8(bytes).map_err(|_| LineError::NotUtf8)?;
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let body = text.strip_prefix('$').unwrap_or(text);
    let (body, checksummed) = match body.len().checked_sub(3) {
        Some(star) if body.as_bytes()[star] == b'*' => {
            let want = u8::from_str_radix(&body[star + 1..], 16).map_err(|_| LineError::Syntax)?;
            let got = body.as_bytes()[..star].iter().fold(0u8, |a, b| a ^ b);
            if want != got {
                return Err(LineError::BadChecksum);
            }
            (&body[..star], true)
        }
        _ if body.contains('*') => return Err(LineError::Syntax),
        _ => (body, false),
    };
    if require_checksum && !checksummed {
        return Err(LineError::MissingChecksum);
    }
    let mut line = Line {
        node: None,
        seq: None,
        uptime_ms: None,
        readings: Vec::new(),
        checksummed,
    };
    for field in body.split([',', ' ', '\t']).filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=').ok_or(LineError::Syntax)?;
        if name.is_empty() || name.len() > MAX_NAME || value.is_empty() {
            return Err(LineError::Syntax);
        }
        match name {
            "node" => line.node = Some(value).filter(|v| v.len() <= MAX_NAME),
            "seq" => line.seq = Some(value.parse().map_err(|_| LineError::Syntax)?),
            "t" => line.uptime_ms = Some(value.parse().map_err(|_| LineError::Syntax)?),
            _ => {
                let v: f64 = value.parse().map_err(|_| LineError::NotANumber)?;
                line.readings
                    .push((name, v))
                    .map_err(|_| LineError::TooManyFields)?;
            }
        }
        if name == "node" && line.node.is_none() {
            return Err(LineError::Syntax);
        }
    }
    Ok(Some(line))
}

/// XOR checksum of `body` as two upper-case hex digits, for senders.
pub fn checksum(body: &str) -> u8 {
    body.bytes().fold(0u8, |a, b| a ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_arduino_forms() {
        let l = parse(b"temp=21.5 hum=40.2\r", false).unwrap().unwrap();
        assert_eq!(l.readings.as_slice(), &[("temp", 21.5), ("hum", 40.2)]);
        assert_eq!((l.node, l.seq, l.uptime_ms), (None, None, None));
        let body = "node=7,seq=42,t=183000,temp=21.50";
        let text = format!("${body}*{:02X}", checksum(body));
        let l = parse(text.as_bytes(), true).unwrap().unwrap();
        assert_eq!(
            (l.node, l.seq, l.uptime_ms),
            (Some("7"), Some(42), Some(183000))
        );
        assert!(l.checksummed);
        assert_eq!(parse(b"", false), Ok(None));
        assert_eq!(parse(b"# booting v1.2", false), Ok(None));
    }

    #[test]
    fn rejects_damage_with_a_reason() {
        assert_eq!(parse(b"temp=21.5*00", false), Err(LineError::BadChecksum));
        assert_eq!(parse(b"temp=21.5", true), Err(LineError::MissingChecksum));
        assert_eq!(parse(b"temp=abc", false), Err(LineError::NotANumber));
        assert_eq!(parse(b"Sensor init OK", false), Err(LineError::Syntax));
        assert_eq!(parse(b"seq=-1 a=1", false), Err(LineError::Syntax));
        assert_eq!(parse(b"a=1*zz", false), Err(LineError::Syntax));
        assert_eq!(parse(&[b'a', b'=', 0xC3], false), Err(LineError::NotUtf8));
        let many: String = (0..33).map(|i| format!("c{i}=1 ")).collect();
        assert_eq!(parse(many.as_bytes(), false), Err(LineError::TooManyFields));
    }
}
