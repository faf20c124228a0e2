//! Topic templates: how MQTT topics name sensors, and how upstream topics are built.
//!
//! A source template such as `plant/{line}/{machine}/{sensor}` has literal
//! segments, named segments (`{name}`) and anonymous wildcards (`+`). A topic
//! that matches yields a sensor id (the named segments joined by `/`) and the
//! named segments as labels. An output template such as
//! `gateways/{gateway}/summary/{sensor}` is filled from a fixed set of
//! placeholders; see [`OutputTemplate`].
//!
//! Names are made valid where they are created: a name taken from the wire
//! (a topic level, a serial node or channel) is checked by [`check_name`],
//! a sensor id by [`check_sensor_id`], so that a sensor id never holds an
//! MQTT wildcard, NUL or a control character and is at most
//! [`MAX_SENSOR_ID_BYTES`] long. A rendered upstream topic is then at most
//! [`OutputTemplate::max_len`] bytes, which configuration checks against
//! [`MAX_TOPIC_BYTES`].

use std::sync::Arc;

use crate::model::SensorInfo;

/// The longest name of one level (a topic level, a node, a channel), bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// The longest sensor id, bytes.
pub const MAX_SENSOR_ID_BYTES: usize = 256;
/// The longest MQTT topic (the protocol's own bound).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Why a name cannot name a sensor or a topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {0} bytes")]
    TooLong(usize),
    #[error("it contains the MQTT wildcard `+` or `#`")]
    Wildcard,
    #[error("it contains NUL or a control character")]
    Control,
    #[error("it contains `/` where one level is expected")]
    Slash,
}

/// Checks one level of a name: not empty, at most [`MAX_NAME_BYTES`], no
/// `+`, `#`, `/`, NUL or control character.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    check_levels(name, MAX_NAME_BYTES)
}

/// Checks a sensor id (levels joined by `/`): not empty, at most
/// [`MAX_SENSOR_ID_BYTES`], no `+`, `#`, NUL or control character.
pub fn check_sensor_id(id: &str) -> Result<(), NameError> {
    check_levels(id, MAX_SENSOR_ID_BYTES)
}

fn check_levels(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        Err(NameError::Empty)
    } else if s.len() > max {
        Err(NameError::TooLong(max))
    } else if s.contains(['+', '#']) {
        Err(NameError::Wildcard)
    } else if s.chars().any(char::is_control) {
        Err(NameError::Control)
    } else {
        Ok(())
    }
}

/// The start of outsider text for a log line (at most 64 bytes, cut at a
/// character boundary); log it with `?` so that it is escaped.
pub fn excerpt(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why a topic gave no sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    /// The topic does not fit the template.
    NoMatch,
    /// It fits, but a named level is not a valid name.
    BadName(NameError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Named(Arc<str>),
    Any,
}

/// A parsed source topic template.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    text: String,
    segments: Vec<Segment>,
    names: Arc<[Arc<str>]>,
}

/// Why a template is malformed; the message is shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl TopicTemplate {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError("the topic template is empty".into()));
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for part in text.split('/') {
            let seg = if part == "+" {
                Segment::Any
            } else if part == "#" {
                return Err(TemplateError(
                    "`#` is not allowed in a topic template; use `+` for one level or name the level with `{name}`".into(),
                ));
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(TemplateError(format!(
                        "`{{{name}}}` is not a valid segment name; use letters, digits and `_`"
                    )));
                }
                if names.contains(&name) {
                    return Err(TemplateError(format!("segment `{{{name}}}` appears twice")));
                }
                names.push(name);
                Segment::Named(name.into())
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(TemplateError(format!(
                    "segment `{part}` mixes text and a placeholder; a placeholder must fill a whole level"
                )));
            } else {
                Segment::Literal(part.into())
            };
            segments.push(seg);
        }
        if names.is_empty() {
            return Err(TemplateError(
                "the template names no segment, so every topic would be the same sensor; add at least one `{name}`".into(),
            ));
        }
        let names: Vec<Arc<str>> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Named(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        Ok(Self {
            text: text.to_owned(),
            segments,
            names: names.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The MQTT subscription filter that covers this template.
    pub fn subscription_filter(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_ref(),
                Segment::Named(_) | Segment::Any => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Names of the named segments, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Named(n) => Some(n.as_ref()),
            _ => None,
        })
    }

    /// Matches `topic` and builds the sensor's identity. A topic that does
    /// not fit the template is [`ResolveError::NoMatch`]; one whose named
    /// levels are not valid names ([`check_name`]) is
    /// [`ResolveError::BadName`]. Named levels are at most
    /// [`MAX_NAME_BYTES`], so the id is at most `n * (MAX_NAME_BYTES + 1)`
    /// bytes for `n` named levels, and is checked against
    /// [`MAX_SENSOR_ID_BYTES`] too.
    pub fn resolve(&self, topic: &str) -> Result<SensorInfo, ResolveError> {
        let mut id = String::with_capacity(topic.len().min(MAX_SENSOR_ID_BYTES));
        let mut parts = topic.split('/');
        let mut bad = None;
        for seg in &self.segments {
            let part = parts.next().ok_or(ResolveError::NoMatch)?;
            match seg {
                Segment::Literal(l) if l.as_ref() != part => return Err(ResolveError::NoMatch),
                Segment::Literal(_) | Segment::Any => {}
                Segment::Named(_) => {
                    if part.is_empty() {
                        return Err(ResolveError::NoMatch);
                    }
                    if let Err(e) = check_name(part) {
                        bad = bad.or(Some(e));
                        continue;
                    }
                    if !id.is_empty() {
                        id.push('/');
                    }
                    id.push_str(part);
                }
            }
        }
        if parts.next().is_some() {
            return Err(ResolveError::NoMatch);
        }
        if let Some(e) = bad {
            return Err(ResolveError::BadName(e));
        }
        check_sensor_id(&id).map_err(ResolveError::BadName)?;
        Ok(SensorInfo {
            id: id.into(),
            names: self.names.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Gateway,
    Sensor,
    Label(String),
}

/// An upstream topic template.
///
/// Placeholders: `{gateway}` (the gateway id), `{sensor}` (the full sensor id,
/// which may contain `/`), and any segment name of the source templates, such
/// as `{line}`. A label that a sensor lacks renders as `_`.
#[derive(Debug, Clone)]
pub struct OutputTemplate {
    text: String,
    pieces: Vec<Piece>,
}

impl OutputTemplate {
    /// Parses `text`; `known_labels` are the segment names the sources define.
    pub fn parse(text: &str, known_labels: &[String]) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError(format!("unclosed `{{` in `{text}`")))?;
            let name = &after[..close];
            pieces.push(match name {
                "gateway" => Piece::Gateway,
                "sensor" => Piece::Sensor,
                other if known_labels.iter().any(|l| l == other) => Piece::Label(other.to_owned()),
                other => {
                    let mut known = vec!["gateway".to_owned(), "sensor".to_owned()];
                    known.extend(known_labels.iter().cloned());
                    return Err(TemplateError(format!(
                        "unknown placeholder `{{{other}}}`; known placeholders: {}",
                        known
                            .iter()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if text.contains(['+', '#']) || text.is_empty() {
            return Err(TemplateError(
                "an upstream topic must not be empty nor contain the wildcards `+` or `#`".into(),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(TemplateError(
                "an upstream topic must not contain NUL or control characters".into(),
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The longest topic this template renders for gateway `gateway`:
    /// sensor ids are at most [`MAX_SENSOR_ID_BYTES`] and labels (named
    /// topic levels) at most [`MAX_NAME_BYTES`], both checked where they
    /// are created.
    pub fn max_len(&self, gateway: &str) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Gateway => gateway.len(),
                Piece::Sensor => MAX_SENSOR_ID_BYTES,
                Piece::Label(_) => MAX_NAME_BYTES,
            })
            .fold(0usize, usize::saturating_add)
    }

    /// Renders the topic for one sensor.
    pub fn render(&self, gateway: &str, sensor: &SensorInfo) -> String {
        let mut out = String::with_capacity(self.text.len() + sensor.id.len() + gateway.len());
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Gateway => out.push_str(gateway),
                Piece::Sensor => out.push_str(&sensor.id),
                Piece::Label(name) => out.push_str(sensor.label(name).unwrap_or("_")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_named_segments_into_an_id_and_labels() {
        let t = TopicTemplate::parse("plant/{line}/{machine}/+/{sensor}").unwrap();
        assert_eq!(t.subscription_filter(), "plant/+/+/+/+");
        let info = t.resolve("plant/l1/press-3/raw/temp").unwrap();
        assert_eq!(&*info.id, "l1/press-3/temp");
        assert_eq!(info.labels().count(), 3);
        assert_eq!(info.label("machine"), Some("press-3"));
        for no_match in [
            "plant/l1/press-3/raw",
            "plant/l1/press-3/raw/temp/extra",
            "other/l1/press-3/raw/temp",
            "plant//press-3/raw/temp",
        ] {
            assert_eq!(
                t.resolve(no_match).err(),
                Some(ResolveError::NoMatch),
                "{no_match}"
            );
        }
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "",
            "plant/#",
            "plant/x{a}",
            "plant/{a}/{a}",
            "plant/static",
            "plant/{}",
        ] {
            assert!(
                TopicTemplate::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn output_template_renders_placeholders() {
        let t = TopicTemplate::parse("plant/{line}/{machine}/{sensor}").unwrap();
        let info = t.resolve("plant/l1/m7/vib").unwrap();
        let labels = vec!["line".to_owned(), "machine".to_owned()];
        let out = OutputTemplate::parse("gw/{gateway}/{line}/s/{sensor}", &labels).unwrap();
        assert_eq!(out.render("g1", &info), "gw/g1/l1/s/l1/m7/vib");
        let err = OutputTemplate::parse("gw/{gatway}", &labels).unwrap_err();
        assert!(err.0.contains("{gateway}"), "{err}");
        assert!(OutputTemplate::parse("gw/+/x", &labels).is_err());
    }

    #[test]
    fn names_with_wildcards_controls_or_excess_length_are_bad_names() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        for (name, want) in [
            ("a+b", NameError::Wildcard),
            ("a#", NameError::Wildcard),
            ("a\0b", NameError::Control),
            ("a\nb", NameError::Control),
            ("a\u{1f}b", NameError::Control),
            ("a\u{85}b", NameError::Control),
            ("a/b", NameError::Slash),
            ("", NameError::Empty),
            (long.as_str(), NameError::TooLong(MAX_NAME_BYTES)),
        ] {
            assert_eq!(check_name(name), Err(want), "{name:?}");
        }
        assert_eq!(check_name(&"x".repeat(MAX_NAME_BYTES)), Ok(()));
        assert_eq!(check_name("pump-2.bearing_temp °C"), Ok(()));
        assert_eq!(check_sensor_id("ttyUSB0/7/temp"), Ok(()));
        assert_eq!(
            check_sensor_id(&"x".repeat(MAX_SENSOR_ID_BYTES + 1)),
            Err(NameError::TooLong(MAX_SENSOR_ID_BYTES))
        );
        assert_eq!(check_sensor_id("a/+/b"), Err(NameError::Wildcard));
    }

    #[test]
    fn topic_levels_that_are_bad_names_give_bad_name_not_a_sensor() {
        let t = TopicTemplate::parse("plant/{line}/+/{sensor}").unwrap();
        let long = format!("plant/l1/x/{}", "s".repeat(MAX_NAME_BYTES + 1));
        assert_eq!(
            t.resolve(&long).err(),
            Some(ResolveError::BadName(NameError::TooLong(MAX_NAME_BYTES)))
        );
        assert_eq!(
            t.resolve("plant/l\u{7}1/x/temp").err(),
            Some(ResolveError::BadName(NameError::Control))
        );
        // Anonymous levels are not part of the id, so they are not checked.
        assert!(t.resolve("plant/l1/\u{7}/temp").is_ok());
        // A topic that does not fit is no match, even with a bad level.
        assert_eq!(
            t.resolve("plant/l\u{7}1/temp").err(),
            Some(ResolveError::NoMatch)
        );
    }

    #[test]
    fn rendered_topics_are_bounded_and_templates_without_controls() {
        let labels = vec!["line".to_owned()];
        let out = OutputTemplate::parse("gw/{gateway}/{line}/s/{sensor}", &labels).unwrap();
        assert_eq!(
            out.max_len("g1"),
            "gw/".len() + 2 + 1 + MAX_NAME_BYTES + "/s/".len() + MAX_SENSOR_ID_BYTES
        );
        let t = TopicTemplate::parse("plant/{line}/{sensor}").unwrap();
        let info = t
            .resolve(&format!("plant/{}/{}", "l".repeat(64), "s".repeat(64)))
            .unwrap();
        assert!(out.render("g1", &info).len() <= out.max_len("g1"));
        assert!(OutputTemplate::parse("gw/\u{0}/{sensor}", &labels).is_err());
        assert!(OutputTemplate::parse("gw/a\nb/{sensor}", &labels).is_err());
    }
}
