//! `[[source]]` sections with `kind = "serial"`: the line settings and how
//! the port's bytes are decoded.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::diag::{duration_text, named, one_of, Cx, Named};
use super::raw::RawSerialSource;
use super::sources::SourceKind;
use crate::wire::{self, ChannelMap, Format, NodeTime, PortSettings, Unmapped};

/// A serial port: the line settings and how its bytes are decoded.
#[derive(Debug, Clone)]
pub struct SerialSourceConfig {
    pub name: String,
    /// The device; a `/dev/serial/by-id/...` link is followed at every open,
    /// so a re-plugged adapter is found again under its stable name.
    pub device: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    pub reopen_backoff_max: Duration,
    pub port: PortSettings,
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

named!(Parity, "parity": None => "none", Odd => "odd", Even => "even");

/// Flow control of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    /// XON/XOFF (not with the `frame` format: its bytes may be 0x11/0x13).
    Software,
    /// RTS/CTS.
    Hardware,
}

named!(FlowControl, "flow_control":
    None => "none",
    Hardware => "hardware" ["(RTS/CTS)"],
    Software => "software" ["(XON/XOFF)"],
);

/// The wire's own names (`Format::name`); `line` is read without a
/// required checksum, which `checksum` then sets.
impl Named for Format {
    const SETTING: &'static str = "serial format";
    const ALL: &'static [Self] = &[
        Format::Line {
            require_checksum: false,
        },
        Format::Json,
        Format::Frame,
    ];
    const HINT_TAIL: &'static str = " (docs/serial-protocol.md)";
    const SUGGEST: bool = true;

    fn name(self) -> &'static str {
        Format::name(self)
    }
}

/// The `checksum` of the `line` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checksum {
    Optional,
    Required,
}

named!(Checksum, "checksum mode": Optional => "optional", Required => "required");

named!(NodeTime, "node_time":
    Uptime => "uptime_ms" ["(ms since the node booted)"],
    UnixMs => "unix_ms" ["(the node has a real-time clock)"],
    Ignore => "ignore",
);

named!(Unmapped, "unmapped policy": Accept => "accept", Drop => "drop");

impl Cx<'_> {
    pub(super) fn serial_source(&mut self, raw: RawSerialSource) -> SerialSourceConfig {
        let device = raw.device.get_ref().trim().to_owned();
        if device.is_empty() {
            self.at(
                raw.device.span(),
                "`device` is empty",
                Some("name the port, such as \"/dev/ttyUSB0\" or a stable \"/dev/serial/by-id/...\" link".into()),
            );
        }
        if let Some(n) = &raw.name {
            if let Err(e) = crate::topic::check_name(n.get_ref()) {
                self.at(
                    n.span(),
                    format!("`name` {:?} cannot start a sensor id: {e}", n.get_ref()),
                    Some(format!("use at most {} bytes without `/`, `+`, `#` or control characters, such as \"rs485\"", crate::topic::MAX_NAME_BYTES)),
                );
            }
        }
        let name_span = raw.name.as_ref().map_or(raw.device.span(), |n| n.span());
        let name = raw.name.map(|n| n.into_inner()).unwrap_or_else(|| {
            // The device's file name, made a valid name.
            let base = std::path::Path::new(&device)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let base: String = base
                .chars()
                .map(|c| {
                    if c.is_control() || matches!(c, '+' | '#') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            if base.is_empty() {
                SourceKind::Serial.name().into()
            } else {
                crate::topic::excerpt(&base).to_owned()
            }
        });
        self.source_names.push((name.clone(), name_span));
        let baud = raw.baud.as_ref().map(|b| *b.get_ref()).unwrap_or(115_200);
        if let Some(b) = &raw.baud {
            if !(50..=4_000_000).contains(b.get_ref()) {
                self.at(
                    b.span(),
                    format!("baud {} is not a serial line speed", b.get_ref()),
                    Some("common speeds: 9600, 57600, 115200, 921600".into()),
                );
            }
        }
        let data_bits = raw.data_bits.as_ref().map(|b| *b.get_ref()).unwrap_or(8);
        if let Some(b) = &raw.data_bits {
            if !(5..=8).contains(b.get_ref()) {
                self.at(b.span(), "`data_bits` must be 5, 6, 7 or 8", None);
            }
        }
        let stop_bits = raw.stop_bits.as_ref().map(|b| *b.get_ref()).unwrap_or(1);
        if let Some(b) = &raw.stop_bits {
            if !(1..=2).contains(b.get_ref()) {
                self.at(b.span(), "`stop_bits` must be 1 or 2", None);
            }
        }
        let parity = self.choice(&raw.parity, Parity::None);
        let format = self.named(&raw.format).unwrap_or(Format::Line {
            require_checksum: false,
        });
        let format = match (&raw.checksum, format) {
            (None, f) => f,
            (Some(c), Format::Line { .. }) => match self.named::<Checksum>(c) {
                Some(checksum) => Format::Line {
                    require_checksum: checksum == Checksum::Required,
                },
                None => format,
            },
            (Some(c), f) => {
                self.at(c.span(), format!("`checksum` applies to the `line` format only; `{}` frames always carry a check (JSON: none)", f.name()), Some("remove `checksum`".into()));
                f
            }
        };
        let flow_control = self.choice(&raw.flow_control, FlowControl::None);
        if let Some(f) = &raw.flow_control {
            if flow_control == FlowControl::Software && format == Format::Frame {
                self.at(
                    f.span(),
                    "software flow control (XON/XOFF) cannot carry binary frames",
                    Some(format!(
                        "use {}",
                        one_of(&[FlowControl::Hardware, FlowControl::None])
                    )),
                );
            }
        }
        let max_frame_bytes = match &raw.max_line_bytes {
            None => 512,
            Some(m) if format == Format::Frame => {
                self.at(
                    m.span(),
                    "`max_line_bytes` does not apply to `frame` (its size is fixed by the format)",
                    Some("remove it".into()),
                );
                512
            }
            Some(m) if !(16..=65_536).contains(m.get_ref()) => {
                self.at(
                    m.span(),
                    "`max_line_bytes` must be between 16 and 65536",
                    None,
                );
                512
            }
            Some(m) => *m.get_ref(),
        };
        let time = self.choice(&raw.node_time, NodeTime::Uptime);
        let unmapped = self.choice(&raw.unmapped, Unmapped::Accept);
        let max_nodes = raw.max_nodes.as_ref().map(|m| *m.get_ref()).unwrap_or(256);
        let mut channels: Vec<ChannelMap> = Vec::new();
        for c in raw.channel.unwrap_or_default() {
            let span = c.span();
            let c = c.into_inner();
            let map = ChannelMap {
                node: c.node.as_ref().map(|n| n.text()),
                channel: c.channel.text(),
                sensor: c.sensor.trim().to_owned(),
                unit: c.unit,
            };
            if map.sensor.starts_with('/') || crate::topic::check_sensor_id(&map.sensor).is_err() {
                self.at(
                    span.clone(),
                    format!("`{}` is not a usable sensor id", map.sensor),
                    Some(format!("use names joined by `/`, at most {} bytes without `+`, `#` or control characters, such as \"line1/pump-2/bearing_temp\"", crate::topic::MAX_SENSOR_ID_BYTES)),
                );
            }
            let names = map.node.iter().chain(std::iter::once(&map.channel));
            if let Some(e) = names
                .filter_map(|n| crate::topic::check_name(n).err())
                .next()
            {
                self.at(
                    span.clone(),
                    format!("node or channel of this mapping: {e}"),
                    Some(
                        "the gateway matches names exactly, and no node may send such a name"
                            .into(),
                    ),
                );
            }
            if format == Format::Frame {
                let numeric =
                    |s: &str, max: i64| s.parse::<i64>().is_ok_and(|n| (0..=max).contains(&n));
                if !numeric(&map.channel, 255)
                    || !map.node.as_deref().is_none_or(|n| numeric(n, 65_535))
                {
                    self.at(
                        span.clone(),
                        "`frame` nodes are numbers 0..=65535 and channels 0..=255",
                        None,
                    );
                }
            }
            if channels
                .iter()
                .any(|o| o.node == map.node && o.channel == map.channel)
            {
                self.at(
                    span,
                    format!(
                        "channel `{}` of node `{}` is mapped twice",
                        map.channel,
                        map.node.as_deref().unwrap_or("*")
                    ),
                    Some("remove one of the two `[[source.channel]]` entries".into()),
                );
                continue;
            }
            if let Some(unit) = &map.unit {
                self.mapped_units
                    .push((map.sensor.clone(), unit.clone(), span.clone()));
            }
            channels.push(map);
        }
        SerialSourceConfig {
            name: name.clone(),
            device: PathBuf::from(device),
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control,
            reopen_backoff_max: self.duration(&raw.reopen_backoff_max, Duration::from_secs(5)),
            port: PortSettings {
                name,
                format,
                max_frame_bytes: if format == Format::Frame {
                    wire::frame::MAX_ENCODED_BYTES
                } else {
                    max_frame_bytes
                },
                time,
                unmapped,
                channels,
                max_nodes,
            },
        }
    }
}

impl SerialSourceConfig {
    /// The source as `check` prints it.
    pub(super) fn render(&self, s: &mut String) {
        let p = &self.port;
        let _ = writeln!(
            s,
            "{}\nname = {:?}\ndevice = {:?}\nbaud = {}\ndata_bits = {}\nparity = {:?}\nstop_bits = {}\nflow_control = {:?}\nformat = {:?}",
            SourceKind::Serial.header(),
            self.name,
            self.device,
            self.baud,
            self.data_bits,
            self.parity.name(),
            self.stop_bits,
            self.flow_control.name(),
            p.format.name(),
        );
        if let Format::Line { require_checksum } = p.format {
            let checksum = if require_checksum {
                Checksum::Required
            } else {
                Checksum::Optional
            };
            let _ = writeln!(s, "checksum = {:?}", checksum.name());
        }
        if p.format != Format::Frame {
            let _ = writeln!(s, "max_line_bytes = {}", p.max_frame_bytes);
        }
        let _ = writeln!(
            s,
            "node_time = {:?}\nunmapped = {:?}\nmax_nodes = {}\nreopen_backoff_max = {:?}",
            p.time.name(),
            p.unmapped.name(),
            p.max_nodes,
            duration_text(self.reopen_backoff_max),
        );
        for m in &p.channels {
            let _ = writeln!(s, "\n[[source.channel]]");
            if let Some(n) = &m.node {
                let _ = writeln!(s, "node = {n:?}");
            }
            let _ = writeln!(s, "channel = {:?}\nsensor = {:?}", m.channel, m.sensor);
            if let Some(u) = &m.unit {
                let _ = writeln!(s, "unit = {u:?}");
            }
        }
        s.push('\n');
    }
}
