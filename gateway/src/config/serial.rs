//! Validation of `[[source]]` sections with `kind = "serial"`.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawSerialSource;
use super::{Cx, SerialSourceConfig};
use crate::wire::{self, ChannelMap, Format, NodeTime, PortSettings, Unmapped};

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Flow control of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    /// XON/XOFF (not with the `frame` format: its bytes may be 0x11/0x13).
    Software,
    /// RTS/CTS.
    Hardware,
}

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
                "serial".into()
            } else {
                crate::topic::excerpt(&base).to_owned()
            }
        });
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
        let parity = match raw
            .parity
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("none", _)) => Parity::None,
            Some(("odd", _)) => Parity::Odd,
            Some(("even", _)) => Parity::Even,
            Some((other, span)) => {
                self.at(
                    span,
                    format!("unknown parity `{other}`"),
                    Some("use \"none\", \"odd\" or \"even\"".into()),
                );
                Parity::None
            }
        };
        let format = match raw.format.get_ref().as_str() {
            "line" => Format::Line {
                require_checksum: false,
            },
            "json" => Format::Json,
            "frame" => Format::Frame,
            other => {
                let hint = super::did_you_mean(other, &["line", "json", "frame"])
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        "use \"line\", \"json\" or \"frame\" (docs/serial-protocol.md)".into()
                    });
                self.at(
                    raw.format.span(),
                    format!("unknown serial format `{other}`"),
                    Some(hint),
                );
                Format::Line {
                    require_checksum: false,
                }
            }
        };
        let format = match (&raw.checksum, format) {
            (None, f) => f,
            (Some(c), Format::Line { .. }) => match c.get_ref().as_str() {
                "optional" => Format::Line {
                    require_checksum: false,
                },
                "required" => Format::Line {
                    require_checksum: true,
                },
                other => {
                    self.at(
                        c.span(),
                        format!("unknown checksum mode `{other}`"),
                        Some("use \"optional\" or \"required\"".into()),
                    );
                    format
                }
            },
            (Some(c), f) => {
                self.at(c.span(), format!("`checksum` applies to the `line` format only; `{}` frames always carry a check (JSON: none)", f.name()), Some("remove `checksum`".into()));
                f
            }
        };
        let flow_control = match raw
            .flow_control
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("none", _)) => FlowControl::None,
            Some(("hardware", _)) => FlowControl::Hardware,
            Some(("software", span)) => {
                if format == Format::Frame {
                    self.at(
                        span,
                        "software flow control (XON/XOFF) cannot carry binary frames",
                        Some("use \"hardware\" (RTS/CTS) or \"none\"".into()),
                    );
                }
                FlowControl::Software
            }
            Some((other, span)) => {
                self.at(
                    span,
                    format!("unknown flow_control `{other}`"),
                    Some("use \"none\", \"hardware\" (RTS/CTS) or \"software\" (XON/XOFF)".into()),
                );
                FlowControl::None
            }
        };
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
        let time = match raw
            .node_time
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("uptime_ms", _)) => NodeTime::Uptime,
            Some(("unix_ms", _)) => NodeTime::UnixMs,
            Some(("ignore", _)) => NodeTime::Ignore,
            Some((other, span)) => {
                self.at(span, format!("unknown node_time `{other}`"), Some("use \"uptime_ms\" (ms since the node booted), \"unix_ms\" (the node has a real-time clock) or \"ignore\"".into()));
                NodeTime::Uptime
            }
        };
        let unmapped = match raw
            .unmapped
            .as_ref()
            .map(|p| (p.get_ref().as_str(), p.span()))
        {
            None | Some(("accept", _)) => Unmapped::Accept,
            Some(("drop", _)) => Unmapped::Drop,
            Some((other, span)) => {
                self.at(
                    span,
                    format!("unknown unmapped policy `{other}`"),
                    Some("use \"accept\" or \"drop\"".into()),
                );
                Unmapped::Accept
            }
        };
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

/// The serial part of `Config::render_effective`.
pub(super) fn render(s: &mut String, c: &SerialSourceConfig) {
    use std::fmt::Write;
    let p = &c.port;
    let _ = writeln!(
        s,
        "[[source]]\nkind = \"serial\"\nname = {:?}\ndevice = {:?}\nbaud = {}\ndata_bits = {}\nparity = {:?}\nstop_bits = {}\nflow_control = {:?}\nformat = {:?}",
        c.name,
        c.device,
        c.baud,
        c.data_bits,
        match c.parity { Parity::None => "none", Parity::Odd => "odd", Parity::Even => "even" },
        c.stop_bits,
        match c.flow_control { FlowControl::None => "none", FlowControl::Software => "software", FlowControl::Hardware => "hardware" },
        p.format.name(),
    );
    if let Format::Line { require_checksum } = p.format {
        let _ = writeln!(
            s,
            "checksum = {:?}",
            if require_checksum {
                "required"
            } else {
                "optional"
            }
        );
    }
    if p.format != Format::Frame {
        let _ = writeln!(s, "max_line_bytes = {}", p.max_frame_bytes);
    }
    let _ = writeln!(
        s,
        "node_time = {:?}\nunmapped = {:?}\nmax_nodes = {}\nreopen_backoff_max = {:?}",
        match p.time {
            NodeTime::Uptime => "uptime_ms",
            NodeTime::UnixMs => "unix_ms",
            NodeTime::Ignore => "ignore",
        },
        match p.unmapped {
            Unmapped::Accept => "accept",
            Unmapped::Drop => "drop",
        },
        p.max_nodes,
        humantime::format_duration(c.reopen_backoff_max).to_string(),
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
