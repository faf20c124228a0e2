//! The `[upstream.batch]` section: how records are put into envelopes
//! (`crate::envelope`) on the way upstream: how many per message, how
//! large, how long the first may wait, their encoding and compression,
//! and the topic envelopes go to.

use std::fmt::Write;
use std::time::Duration;

use toml::Spanned;

use super::diag::{duration_text, named, Cx, Named};
use super::raw::RawBatch;
use crate::envelope::{Compression, Encoding, EnvelopeSettings};

named!(Encoding, "encoding":
    Json => "json" ["(the default)"],
    Cbor => "cbor",
);

named!(Compression, "compression":
    None => "none" ["(the default)"],
    Zstd => "zstd" ["(with the shipped dictionary)"],
    ZstdNoDictionary => "zstd_no_dictionary",
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most records per envelope; 1 (the default) sends each record alone.
    pub max_records: usize,
    /// Most bytes of an uncompressed envelope.
    pub max_bytes: usize,
    /// How long the first record of a batch may wait for others.
    pub max_delay: Duration,
    pub encoding: Encoding,
    pub compression: Compression,
    /// Where envelopes are published (`{gateway}` already replaced).
    pub topic: String,
}

impl BatchConfig {
    /// Most `max_records`.
    pub const MAX_RECORDS: usize = 1000;
    /// Most `max_bytes`: half the upstream's packet limit (1 MiB), so that
    /// an envelope whose CBOR entries outgrow their JSON estimate still fits.
    pub const MAX_BYTES: usize = 512 * 1024;
    /// Least `max_bytes`: room for a header and a summary.
    pub const MIN_BYTES: usize = 1024;
    /// Most `max_delay`: records wait in memory, not in the durable log.
    pub const MAX_DELAY: Duration = Duration::from_secs(600);
    const DEFAULT_BYTES: usize = 64 * 1024;
    const DEFAULT_TOPIC: &'static str = "gateways/{gateway}/batch";

    /// The defaults: every record sent alone, as plain JSON.
    pub fn off(gateway_id: &str) -> Self {
        BatchConfig {
            max_records: 1,
            max_bytes: Self::DEFAULT_BYTES,
            max_delay: Duration::from_secs(1),
            encoding: Encoding::Json,
            compression: Compression::None,
            topic: Self::DEFAULT_TOPIC.replace("{gateway}", gateway_id),
        }
    }

    /// Whether records go upstream in envelopes: several per message, or
    /// one per message in CBOR or compressed. Otherwise each record is a
    /// plain JSON message on its own topic.
    pub fn enveloped(&self) -> bool {
        self.max_records > 1
            || self.encoding != Encoding::Json
            || self.compression != Compression::None
    }

    /// What the envelope builder needs.
    pub fn envelope(&self) -> EnvelopeSettings {
        EnvelopeSettings {
            encoding: self.encoding,
            compression: self.compression,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
        }
    }

    /// The section as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n[upstream.batch]\nmax_records = {}\nmax_bytes = {}\nmax_delay = {:?}\nencoding = {:?}\ncompression = {:?}\ntopic = {:?}",
            self.max_records,
            self.max_bytes,
            duration_text(self.max_delay),
            self.encoding.name(),
            self.compression.name(),
            self.topic,
        );
    }
}

impl Cx<'_> {
    /// Validates `[upstream.batch]`; absent, batching is off.
    pub(super) fn batch(&mut self, raw: Option<&RawBatch>, gateway_id: &str) -> BatchConfig {
        let mut c = BatchConfig::off(gateway_id);
        let Some(raw) = raw else {
            return c;
        };
        c.max_records = self.within(
            &raw.max_records,
            "max_records",
            1..=BatchConfig::MAX_RECORDS,
            c.max_records,
            "1 sends every record alone",
        );
        c.max_bytes = self.within(
            &raw.max_bytes,
            "max_bytes",
            BatchConfig::MIN_BYTES..=BatchConfig::MAX_BYTES,
            c.max_bytes,
            "the default is 65536",
        );
        c.max_delay = self.duration(&raw.max_delay, c.max_delay);
        if let Some(v) = &raw.max_delay {
            if c.max_delay.is_zero() || c.max_delay > BatchConfig::MAX_DELAY {
                self.at(
                    v.span(),
                    "`max_delay` must be more than 0 and at most 10m",
                    Some("for example \"1s\"; on a metered link \"30s\"".into()),
                );
            }
        }
        c.encoding = self.choice(&raw.encoding, c.encoding);
        c.compression = self.choice(&raw.compression, c.compression);
        c.topic = self.plain_topic(&raw.topic, "topic", BatchConfig::DEFAULT_TOPIC, gateway_id);
        c
    }

    /// An integer setting within `range`; `default` (reported) outside.
    fn within(
        &mut self,
        v: &Option<Spanned<usize>>,
        name: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
        note: &str,
    ) -> usize {
        match v {
            None => default,
            Some(s) if range.contains(s.get_ref()) => *s.get_ref(),
            Some(s) => {
                self.at(
                    s.span(),
                    format!(
                        "`{name}` must be within {}..={}",
                        range.start(),
                        range.end()
                    ),
                    Some(note.into()),
                );
                default
            }
        }
    }
}
