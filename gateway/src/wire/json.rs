//! The `json` wire format: one JSON object per line.
//!
//! ```text
//! {"node":"pump-2","seq":42,"t":183000,"temp":21.5,"hum":40.2}
//! ```
//!
//! `node` (a string or an integer), `seq` and `t` (node uptime in ms) are
//! optional and reserved; every other member is a channel whose value must be
//! a number (`null` is skipped: a sensor that has no value this time).

use std::borrow::Cow;
use std::fmt;

use heapless::Vec;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::line::MAX_FIELDS;

/// A parsed JSON line; names borrow from the input unless escaped.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonLine<'a> {
    pub node: Option<Cow<'a, str>>,
    pub seq: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub readings: Vec<(Cow<'a, str>, f64), MAX_FIELDS>,
}

/// Why a JSON line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    NotUtf8,
    Syntax,
    NotAnObject,
    ValueNotNumber,
    BadReserved,
    TooManyFields,
}

impl JsonError {
    pub fn reason(self) -> &'static str {
        match self {
            JsonError::NotUtf8 => "not_utf8",
            JsonError::Syntax => "syntax",
            JsonError::NotAnObject => "not_an_object",
            JsonError::ValueNotNumber => "value_not_number",
            JsonError::BadReserved => "syntax",
            JsonError::TooManyFields => "too_many_fields",
        }
    }
}

/// Parses one line (without its `\n`). Blank lines give `Ok(None)`.
pub fn parse(bytes: &[u8]) -> Result<Option<JsonLine<'_>>, JsonError> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let mut err = None;
    let line = de
        .deserialize_any(LineVisitor { err: &mut err })
        .map_err(|_| err.unwrap_or(JsonError::Syntax))?;
    de.end().map_err(|_| JsonError::Syntax)?;
    Ok(Some(line))
}

struct LineVisitor<'e> {
    err: &'e mut Option<JsonError>,
}

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = JsonLine<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut line = JsonLine {
            node: None,
            seq: None,
            uptime_ms: None,
            readings: Vec::new(),
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let fail = |e: JsonError, err: &mut Option<JsonError>| {
                *err = Some(e);
                de::Error::custom(e.reason())
            };
            match &*key {
                "node" => match map.next_value::<Field<'de>>()? {
                    Field::Text(s) => line.node = Some(s),
                    Field::Number(n) if n >= 0.0 && n.fract() == 0.0 => {
                        line.node = Some(Cow::Owned(format!("{n}")))
                    }
                    _ => return Err(fail(JsonError::BadReserved, self.err)),
                },
                "seq" | "t" => {
                    let v = match map.next_value::<Field<'de>>()? {
                        Field::Number(n) if n >= 0.0 && n.fract() == 0.0 => n,
                        _ => return Err(fail(JsonError::BadReserved, self.err)),
                    };
                    if &*key == "seq" {
                        if v > u32::MAX as f64 {
                            return Err(fail(JsonError::BadReserved, self.err));
                        }
                        line.seq = Some(v as u32);
                    } else {
                        line.uptime_ms = Some(v as u64);
                    }
                }
                _ => match map.next_value::<Field<'de>>()? {
                    Field::Number(v) => {
                        if line.readings.push((key, v)).is_err() {
                            return Err(fail(JsonError::TooManyFields, self.err));
                        }
                    }
                    Field::Null => {}
                    _ => return Err(fail(JsonError::ValueNotNumber, self.err)),
                },
            }
        }
        Ok(line)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        *self.err = Some(JsonError::NotAnObject);
        Err(de::Error::custom("not an object"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        *self.err = Some(JsonError::NotAnObject);
        Err(E::custom("not an object"))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        self.visit_f64(0.0)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        self.visit_f64(0.0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_f64(0.0)
    }
}

/// A member name, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A member value: what the format allows, anything else is a type error.
enum Field<'de> {
    Number(f64),
    Text(Cow<'de, str>),
    Null,
    Other,
}

impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Field::Number(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Field::Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Number(v as f64))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_and_reserved_fields() {
        let l = parse(br#"{"node":"pump-2","seq":42,"t":183000,"temp":21.5,"hum":null,"n":3}"#)
            .unwrap()
            .unwrap();
        assert_eq!(l.node.as_deref(), Some("pump-2"));
        assert_eq!((l.seq, l.uptime_ms), (Some(42), Some(183000)));
        let names: std::vec::Vec<_> = l.readings.iter().map(|(k, v)| (&**k, *v)).collect();
        assert_eq!(names, [("temp", 21.5), ("n", 3.0)]);
        let l = parse(br#"{"node":7,"a":1}"#).unwrap().unwrap();
        assert_eq!(l.node.as_deref(), Some("7"));
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(parse(br#"{"a":"x"}"#), Err(JsonError::ValueNotNumber));
        assert_eq!(parse(br#"{"a":1"#), Err(JsonError::Syntax));
        assert_eq!(parse(br#"[1,2]"#), Err(JsonError::NotAnObject));
        assert_eq!(parse(br#"{"seq":-3}"#), Err(JsonError::BadReserved));
        assert_eq!(parse(br#"{"a":1} x"#), Err(JsonError::Syntax));
        assert_eq!(parse(&[b'{', 0xFF, b'}']), Err(JsonError::NotUtf8));
    }
}
