//! Payload decoding: the bytes of one MQTT message to a value, a timestamp and
//! a sequence number.
//!
//! Pure and synchronous. The JSON decoder visits the object once, borrowing
//! keys, and picks out only the configured fields; unknown fields are skipped
//! without being built. Every failure is a [`DecodeError`] variant, so the
//! caller can count it under its own name.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// How a source's payloads are laid out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON object such as `{"value": 21.5, "ts": 1700000000000, "seq": 7}`.
    Json {
        value_field: String,
        timestamp_field: Option<String>,
        timestamp_unit: TimestampUnit,
        sequence_field: Option<String>,
    },
    /// The payload is a bare number in ASCII, such as `21.5`.
    Number,
}

impl PayloadFormat {
    pub fn json_default() -> Self {
        PayloadFormat::Json {
            value_field: "value".into(),
            timestamp_field: Some("ts".into()),
            timestamp_unit: TimestampUnit::Milliseconds,
            sequence_field: Some("seq".into()),
        }
    }
}

/// The unit of a numeric timestamp. String timestamps are always RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "us")]
    Microseconds,
}

/// A decoded payload; the timestamp is absent when the payload has none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded {
    pub value: f64,
    pub ts_ms: Option<i64>,
    pub seq: Option<u64>,
}

/// Why a payload was not decoded. Plain data (`Copy`, nothing allocated): a
/// rejected payload is counted, and its text is rendered only if someone
/// displays the error. The field names are the source's `PayloadFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is not a number")]
    NotANumber,
    #[error("payload is not a JSON object (invalid at line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("payload has no value field")]
    MissingValue,
    #[error("the value field is not a number")]
    ValueNotNumber,
    #[error("the timestamp field is neither a number nor an RFC 3339 time")]
    BadTimestamp,
    #[error("the sequence field is not a non-negative integer")]
    BadSequence,
}

impl DecodeError {
    /// A short stable name, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::NotANumber => "not_a_number",
            DecodeError::Json { .. } => "json_syntax",
            DecodeError::MissingValue => "missing_value",
            DecodeError::ValueNotNumber => "value_not_number",
            DecodeError::BadTimestamp => "bad_timestamp",
            DecodeError::BadSequence => "bad_sequence",
        }
    }
}

/// Decodes one payload according to `format`.
pub fn decode(format: &PayloadFormat, payload: &[u8]) -> Result<Decoded, DecodeError> {
    match format {
        PayloadFormat::Number => {
            let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
            let value = text
                .trim()
                .parse::<f64>()
                .map_err(|_| DecodeError::NotANumber)?;
            Ok(Decoded {
                value,
                ts_ms: None,
                seq: None,
            })
        }
        PayloadFormat::Json {
            value_field,
            timestamp_field,
            timestamp_unit,
            sequence_field,
        } => {
            let field_fault = Cell::new(None);
            let seed = JsonSeed {
                value_field,
                timestamp_field: timestamp_field.as_deref(),
                unit: *timestamp_unit,
                sequence_field: sequence_field.as_deref(),
                field_fault: &field_fault,
            };
            let mut de = serde_json::Deserializer::from_slice(payload);
            let found = seed
                .deserialize(&mut de)
                .map_err(|e| field_fault.get().unwrap_or_else(|| json_error(&e)))?;
            de.end().map_err(|e| json_error(&e))?;
            let value = found.value.ok_or(DecodeError::MissingValue)?;
            Ok(Decoded {
                value,
                ts_ms: found.ts_ms,
                seq: found.seq,
            })
        }
    }
}

/// A JSON syntax error (or a payload that is not an object), by position.
fn json_error(e: &serde_json::Error) -> DecodeError {
    DecodeError::Json {
        line: e.line(),
        column: e.column(),
    }
}

struct JsonSeed<'a> {
    value_field: &'a str,
    timestamp_field: Option<&'a str>,
    unit: TimestampUnit,
    sequence_field: Option<&'a str>,
    /// A configured field of the wrong kind: set by the visitor just before
    /// it stops with an error, so the error is known by variant, not by
    /// formatting and parsing a message.
    field_fault: &'a Cell<Option<DecodeError>>,
}

impl JsonSeed<'_> {
    /// Stops the visit with `fault`.
    fn fault<E: serde::de::Error>(&self, fault: DecodeError) -> E {
        self.field_fault.set(Some(fault));
        E::custom("a configured field has the wrong kind")
    }
}

#[derive(Default)]
struct Found {
    value: Option<f64>,
    ts_ms: Option<i64>,
    seq: Option<u64>,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Found;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(self)
    }
}

/// An object key, borrowed from the payload unless it holds escapes
/// (serde's own `Cow<str>` always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON value as far as we care: a number, a string, or something else
/// (skipped). Visited directly rather than through an untagged enum, which
/// would buffer every value first.
enum Scalar<'a> {
    Num(f64),
    Str(Cow<'a, str>),
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Scalar<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Scalar<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            // A syntax error inside a value propagates as is (`?`); a value
            // of the wrong kind becomes an error naming the field.
            if key == self.value_field {
                match map.next_value::<Scalar>()? {
                    Scalar::Num(v) => found.value = Some(v),
                    _ => return Err(self.fault(DecodeError::ValueNotNumber)),
                }
            } else if Some(key.as_ref()) == self.timestamp_field {
                let ts = match map.next_value::<Scalar>()? {
                    Scalar::Num(n) => number_to_ms(n, self.unit),
                    Scalar::Str(s) => rfc3339_to_ms(&s),
                    Scalar::Other => None,
                };
                match ts {
                    Some(ms) => found.ts_ms = Some(ms),
                    None => return Err(self.fault(DecodeError::BadTimestamp)),
                }
            } else if Some(key.as_ref()) == self.sequence_field {
                match map.next_value::<Scalar>()? {
                    Scalar::Num(n)
                        if n >= 0.0 && n.fract() == 0.0 && n < 9.007_199_254_740_992e15 =>
                    {
                        found.seq = Some(n as u64)
                    }
                    _ => return Err(self.fault(DecodeError::BadSequence)),
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn number_to_ms(n: f64, unit: TimestampUnit) -> Option<i64> {
    let ms = match unit {
        TimestampUnit::Seconds => n * 1000.0,
        TimestampUnit::Milliseconds => n,
        TimestampUnit::Microseconds => n / 1000.0,
    };
    // Years 1970 to 2500 cover every plausible measurement; anything else is
    // a unit mistake that would silently misplace the reading.
    if ms.is_finite() && (0.0..16_725_225_600_000.0).contains(&ms) {
        Some(ms.round() as i64)
    } else {
        None
    }
}

fn rfc3339_to_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> PayloadFormat {
        PayloadFormat::json_default()
    }

    #[test]
    fn decodes_json_with_all_fields_and_skips_others() {
        let d = decode(
            &json(),
            br#"{"unit":"C","value":21.5,"nested":{"a":[1,2]},"ts":1700000000123,"seq":9}"#,
        )
        .unwrap();
        assert_eq!(
            d,
            Decoded {
                value: 21.5,
                ts_ms: Some(1_700_000_000_123),
                seq: Some(9)
            }
        );
    }

    #[test]
    fn rfc3339_and_unit_conversion() {
        let d = decode(&json(), br#"{"value":1,"ts":"2023-11-14T22:13:20.5Z"}"#).unwrap();
        assert_eq!(d.ts_ms, Some(1_700_000_000_500));
        let secs = PayloadFormat::Json {
            value_field: "v".into(),
            timestamp_field: Some("t".into()),
            timestamp_unit: TimestampUnit::Seconds,
            sequence_field: None,
        };
        let d = decode(&secs, br#"{"v":-3,"t":1700000000.25}"#).unwrap();
        assert_eq!(d.ts_ms, Some(1_700_000_000_250));
        assert_eq!(d.value, -3.0);
    }

    #[test]
    fn every_bad_payload_has_its_own_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "json_syntax"),
            (b"[1,2]", "json_syntax"),
            (br#"{"value":1"#, "json_syntax"),
            (br#"{"value":1} trailing"#, "json_syntax"),
            (br#"{"other":1}"#, "missing_value"),
            (br#"{"value":"hot"}"#, "value_not_number"),
            (br#"{"value":null}"#, "value_not_number"),
            (br#"{"value":1,"ts":"yesterday"}"#, "bad_timestamp"),
            (br#"{"value":1,"ts":-5}"#, "bad_timestamp"),
            (br#"{"value":1,"seq":-1}"#, "bad_sequence"),
            (br#"{"value":1,"seq":1.5}"#, "bad_sequence"),
            (br#"{"value":12.5,"ts""#, "json_syntax"),
            (br#"{"value":12.5,"ts":17"#, "json_syntax"),
            (br#"{"value":[1]}"#, "value_not_number"),
            (b"\x00\x01binary", "json_syntax"),
        ];
        for (payload, kind) in cases {
            let err = decode(&json(), payload).unwrap_err();
            assert_eq!(err.kind(), *kind, "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn bare_numbers() {
        assert_eq!(
            decode(&PayloadFormat::Number, b" 42.5\n").unwrap().value,
            42.5
        );
        assert!(decode(&PayloadFormat::Number, b"NaN")
            .unwrap()
            .value
            .is_nan());
        assert_eq!(
            decode(&PayloadFormat::Number, b"4x").unwrap_err(),
            DecodeError::NotANumber
        );
        assert_eq!(
            decode(&PayloadFormat::Number, &[0xff, 0xfe]).unwrap_err(),
            DecodeError::NotUtf8
        );
    }
}
