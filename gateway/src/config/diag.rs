//! Diagnostics: how validation reports a mistake, and the checks every
//! section shares.
//!
//! [`Cx`] is the validation context: it holds the file's text (to turn a
//! byte span into a line and column) and collects every [`Diagnostic`]. The
//! shared checks (durations, positive numbers, named values) report through
//! it, and [`Named`] is the one table of names a string-valued setting
//! accepts, read by validation, by its hints and by `check`'s rendering.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// The text of `ConfigError::Invalid`: every mistake as `file:line:column`.
pub(super) fn render_diagnostics(path: &Path, diags: &[Diagnostic]) -> String {
    let mut out = format!(
        "{} has {} mistake{}:",
        path.display(),
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
    for d in diags {
        out.push('\n');
        out.push_str(&d.located(path, "\n    "));
    }
    out
}

impl Diagnostic {
    /// `path:line:column: message`, then the hint after `hint_sep`.
    pub fn located(&self, path: &Path, hint_sep: &str) -> String {
        let mut out = format!(
            "{}:{}:{}: {}",
            path.display(),
            self.line,
            self.column,
            self.message
        );
        if let Some(h) = &self.hint {
            out.push_str(hint_sep);
            out.push_str("hint: ");
            out.push_str(h);
        }
        out
    }
}

/// A string-valued setting: its values and the one name of each, shared
/// by validation, hints and `check`'s rendering.
pub(super) trait Named: Copy + 'static {
    /// What a message calls the setting: "unknown {SETTING} `...`".
    const SETTING: &'static str;
    /// Every value, in the order hints list them.
    const ALL: &'static [Self];
    /// Added to the end of the "use ..." hint.
    const HINT_TAIL: &'static str = "";
    /// Whether a near miss is answered with "did you mean".
    const SUGGEST: bool = false;

    /// The name a configuration file uses.
    fn name(self) -> &'static str;

    /// Said after the name in hints, such as "(RTS/CTS)".
    fn note(self) -> &'static str {
        ""
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }

    /// Every name, in the order of [`Named::ALL`].
    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name()).collect()
    }
}

/// Implements [`Named`] for an enum of unit variants: the setting, then
/// each variant with its name and, in brackets, its note. The `match`es it
/// writes make a variant without a name a compile error.
///
/// ```text
/// named!(WhenFull, "when_full": DropOldest => "drop_oldest", Block => "block" ["(backpressure)"]);
/// ```
macro_rules! named {
    ($ty:ident, $setting:literal $(, tail = $tail:literal)? $(, suggest = $suggest:literal)?:
        $($value:ident => $name:literal $([$note:literal])?),+ $(,)?) => {
        impl $crate::config::diag::Named for $ty {
            const SETTING: &'static str = $setting;
            const ALL: &'static [Self] = &[$($ty::$value),+];
            $(const HINT_TAIL: &'static str = $tail;)?
            $(const SUGGEST: bool = $suggest;)?

            fn name(self) -> &'static str {
                match self {
                    $($ty::$value => $name),+
                }
            }

            fn note(self) -> &'static str {
                match self {
                    $($ty::$value => named!(@note $($note)?)),+
                }
            }
        }
    };
    (@note) => {
        ""
    };
    (@note $note:literal) => {
        $note
    };
}
pub(super) use named;

/// `"a", "b" or "c"`, each name followed by its note.
pub(super) fn one_of<T: Named>(values: &[T]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| match v.note() {
            "" => format!("{:?}", v.name()),
            note => format!("{:?} {note}", v.name()),
        })
        .collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A duration as a configuration file writes it, such as `1m 30s`.
pub(super) fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// [`duration_text`] of a count of milliseconds (negative: zero).
pub(super) fn ms_text(ms: i64) -> String {
    duration_text(Duration::from_millis(ms.max(0) as u64))
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0)
        + 1;
    (line, col)
}

/// The closest known name within two edits, for "did you mean".
pub(super) fn did_you_mean<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// "did you mean `x`?" for a near miss, else `otherwise`.
pub(super) fn suggest(word: &str, known: &[&str], otherwise: impl FnOnce() -> String) -> String {
    did_you_mean(word, known)
        .map(|s| format!("did you mean `{s}`?"))
        .unwrap_or_else(otherwise)
}

/// The validation context: the text (for line numbers) and what went wrong.
pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) diags: Vec<Diagnostic>,
    /// Units given by serial channel mappings: (sensor, unit, where), checked
    /// against the rules once those are read.
    pub(super) mapped_units: Vec<(String, String, Range<usize>)>,
    /// The gateway id, once read (sources' default client ids include it).
    pub(super) gateway_id: String,
    /// Every label name the sources' topic templates define, in order, for
    /// the upstream's output templates.
    pub(super) labels: Vec<String>,
    /// Every MQTT client id with where it was set (or, when defaulted, the
    /// source's broker): two connections with one id take over each other's
    /// session at the broker.
    pub(super) client_ids: Vec<(String, Range<usize>)>,
    /// Every source's name with where it was set (or, when defaulted, the
    /// source's broker or device): names label metrics and key a reload.
    pub(super) source_names: Vec<(String, Range<usize>)>,
    /// Settings that work but should change; they do not fail the file.
    pub(super) warnings: Vec<Diagnostic>,
    /// Files a setting names that cannot be used now (the upstream's TLS
    /// certificates and key): `check` and a reload refuse the file, but a
    /// starting gateway runs, buffers, and reads the files again until
    /// they can be used.
    pub(super) deferred: Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Cx {
            text,
            diags: Vec::new(),
            mapped_units: Vec::new(),
            gateway_id: String::new(),
            labels: Vec::new(),
            client_ids: Vec::new(),
            source_names: Vec::new(),
            warnings: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// Records a file that cannot be used now ([`Cx::deferred`]).
    pub(super) fn defer(&mut self, span: Range<usize>, message: String, hint: String) {
        let (line, column) = line_col(self.text, span.start);
        self.deferred.push(Diagnostic {
            line,
            column,
            message,
            hint: Some(hint),
        });
    }

    /// Records a setting that works but should change.
    pub(super) fn warn(&mut self, span: Range<usize>, message: &str, hint: &str) {
        let (line, column) = line_col(self.text, span.start);
        self.warnings.push(Diagnostic {
            line,
            column,
            message: message.into(),
            hint: Some(hint.into()),
        });
    }

    /// Reports a mistake at the start of `span`.
    pub(super) fn at(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    /// The line of a byte offset, for messages that point at another place.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    pub(super) fn toml_error(&mut self, e: toml::de::Error, fallback: Range<usize>) {
        let span = e.span().unwrap_or(fallback);
        let message = e.message().trim().to_owned();
        let hint = if message.starts_with("unknown field") {
            Some(
                "remove the field or fix its spelling; the accepted names are listed above"
                    .to_owned(),
            )
        } else if message.starts_with("missing field") {
            Some("add the field; it has no default".to_owned())
        } else if message.starts_with("invalid type") {
            Some("check the value's type: strings need quotes, durations are strings such as \"10s\"".to_owned())
        } else {
            None
        };
        self.at(span, message, hint);
    }

    /// Stage one for one section: deserializes it, reporting what fails.
    pub(super) fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: Spanned<DeValue<'a>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml_error(e, span);
                None
            }
        }
    }

    pub(super) fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.at(
                        s.span(),
                        format!("`{}` is not a duration: {e}", s.get_ref()),
                        Some(
                            "write a number and a unit, such as \"500ms\", \"10s\" or \"5m\""
                                .into(),
                        ),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn positive<T: Copy + PartialOrd + Default + fmt::Display>(
        &mut self,
        v: &Option<Spanned<T>>,
        name: &str,
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(s) if *s.get_ref() > T::default() => *s.get_ref(),
            Some(s) => {
                self.at(s.span(), format!("`{name}` must be greater than 0"), None);
                default
            }
        }
    }

    /// The value a name stands for, or a report that it names nothing.
    pub(super) fn named<T: Named>(&mut self, v: &Spanned<String>) -> Option<T> {
        let name = v.get_ref().as_str();
        let found = T::from_name(name);
        if found.is_none() {
            let listed = || format!("use {}{}", one_of(T::ALL), T::HINT_TAIL);
            let hint = if T::SUGGEST {
                suggest(name, &T::names(), listed)
            } else {
                listed()
            };
            self.at(
                v.span(),
                format!("unknown {} `{name}`", T::SETTING),
                Some(hint),
            );
        }
        found
    }

    /// [`Cx::named`] of an optional setting; `default` when it is absent
    /// or names nothing.
    pub(super) fn choice<T: Named>(&mut self, v: &Option<Spanned<String>>, default: T) -> T {
        v.as_ref().and_then(|v| self.named(v)).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
