//! Topic templates: how MQTT topics name sensors, and how upstream topics are built.
//!
//! A source template such as `plant/{line}/{machine}/{sensor}` has literal
//! segments, named segments (`{name}`) and anonymous wildcards (`+`). A topic
//! that matches yields a sensor id (the named segments joined by `/`) and the
//! named segments as labels. An output template such as
//! `gateways/{gateway}/summary/{sensor}` is filled from a fixed set of
//! placeholders; see [`OutputTemplate`].

use std::sync::Arc;

use crate::model::SensorInfo;

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

    /// Matches `topic` and builds the sensor's identity, or `None` when the
    /// topic does not fit the template.
    pub fn resolve(&self, topic: &str) -> Option<SensorInfo> {
        let mut id = String::with_capacity(topic.len());
        let mut parts = topic.split('/');
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l.as_ref() != part => return None,
                Segment::Literal(_) | Segment::Any => {}
                Segment::Named(_) => {
                    if part.is_empty() {
                        return None;
                    }
                    if !id.is_empty() {
                        id.push('/');
                    }
                    id.push_str(part);
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(SensorInfo {
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
        Ok(Self {
            text: text.to_owned(),
            pieces,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
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
        assert!(t.resolve("plant/l1/press-3/raw").is_none());
        assert!(t.resolve("plant/l1/press-3/raw/temp/extra").is_none());
        assert!(t.resolve("other/l1/press-3/raw/temp").is_none());
        assert!(t.resolve("plant//press-3/raw/temp").is_none());
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
}
