//! Serial wire formats: splitting a byte stream into frames, decoding the
//! three formats, and turning what nodes send into readings. Pure: the
//! serial shell (`source::serial`) owns the port and passes bytes and the
//! time in.
//!
//! A [`PortDecoder`] holds everything one port needs: the [`Framer`] (which
//! resynchronises at the next delimiter after any damage), the format, the
//! per-node state ([`node::NodeState`]), the mapping of node and channel
//! identities to sensors, and counters of every drop by reason.

pub mod frame;
pub mod json;
pub mod line;
pub mod node;

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use node::{NodeCounters, NodeState, Verdict};

/// The wire format of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Line { require_checksum: bool },
    Json,
    Frame,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Line { .. } => "line",
            Format::Json => "json",
            Format::Frame => "frame",
        }
    }

    pub fn delimiter(self) -> u8 {
        match self {
            Format::Frame => frame::DELIMITER,
            _ => b'\n',
        }
    }
}

/// What a node's time field means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeTime {
    /// Milliseconds since the node booted (mapped to gateway time).
    Uptime,
    /// Milliseconds since the Unix epoch (the node has a real-time clock).
    UnixMs,
    /// Ignore it; readings are stamped on arrival.
    Ignore,
}

/// What to do with a channel no mapping names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// Accept it as sensor `<port>/<node>/<channel>` (`<port>/<channel>`
    /// without a node id).
    Accept,
    /// Drop it and count it.
    Drop,
}

/// One mapping of a node's channel to a sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMap {
    /// `None` matches any node.
    pub node: Option<String>,
    pub channel: String,
    pub sensor: String,
    pub unit: Option<String>,
}

/// The settings of one port's decoder.
#[derive(Debug, Clone)]
pub struct PortSettings {
    pub name: String,
    pub format: Format,
    /// The longest frame or line accepted, delimiter excluded.
    pub max_frame_bytes: usize,
    pub time: NodeTime,
    pub unmapped: Unmapped,
    pub channels: Vec<ChannelMap>,
    /// Bound on distinct nodes (and on unmapped sensors cached).
    pub max_nodes: usize,
}

/// Why a message (or bytes that never became one) was dropped: every drop
/// is counted under one of these, and its `name` is the `reason` label of
/// `gateway_serial_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Oversize,
    NotUtf8,
    BadChecksum,
    MissingChecksum,
    Syntax,
    NotANumber,
    TooManyFields,
    NotAnObject,
    ValueNotNumber,
    BadCobs,
    BadLength,
    BadCrc,
    BadVersion,
    BadBody,
    Duplicate,
    TooManyNodes,
    /// A partial frame cut off by a disconnect.
    Torn,
    /// A node name, or a channel name an unmapped sensor id would be built
    /// from, is not a valid name (`+`, `#`, `/`, NUL, control characters,
    /// longer than [`crate::topic::MAX_NAME_BYTES`]).
    BadName,
}

impl DropReason {
    pub const ALL: [DropReason; 18] = [
        DropReason::Oversize,
        DropReason::NotUtf8,
        DropReason::BadChecksum,
        DropReason::MissingChecksum,
        DropReason::Syntax,
        DropReason::NotANumber,
        DropReason::TooManyFields,
        DropReason::NotAnObject,
        DropReason::ValueNotNumber,
        DropReason::BadCobs,
        DropReason::BadLength,
        DropReason::BadCrc,
        DropReason::BadVersion,
        DropReason::BadBody,
        DropReason::Duplicate,
        DropReason::TooManyNodes,
        DropReason::Torn,
        DropReason::BadName,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversize => "oversize",
            DropReason::NotUtf8 => "not_utf8",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::MissingChecksum => "missing_checksum",
            DropReason::Syntax => "syntax",
            DropReason::NotANumber => "not_a_number",
            DropReason::TooManyFields => "too_many_fields",
            DropReason::NotAnObject => "not_an_object",
            DropReason::ValueNotNumber => "value_not_number",
            DropReason::BadCobs => "bad_cobs",
            DropReason::BadLength => "bad_length",
            DropReason::BadCrc => "bad_crc",
            DropReason::BadVersion => "bad_version",
            DropReason::BadBody => "bad_body",
            DropReason::Duplicate => "duplicate",
            DropReason::TooManyNodes => "too_many_nodes",
            DropReason::Torn => "torn",
            DropReason::BadName => "bad_name",
        }
    }

    fn from_line(e: line::LineError) -> DropReason {
        match e {
            line::LineError::NotUtf8 => DropReason::NotUtf8,
            line::LineError::BadChecksum => DropReason::BadChecksum,
            line::LineError::MissingChecksum => DropReason::MissingChecksum,
            line::LineError::Syntax => DropReason::Syntax,
            line::LineError::NotANumber => DropReason::NotANumber,
            line::LineError::TooManyFields => DropReason::TooManyFields,
        }
    }

    fn from_json(e: json::JsonError) -> DropReason {
        match e {
            json::JsonError::NotUtf8 => DropReason::NotUtf8,
            json::JsonError::Syntax | json::JsonError::BadReserved => DropReason::Syntax,
            json::JsonError::NotAnObject => DropReason::NotAnObject,
            json::JsonError::ValueNotNumber => DropReason::ValueNotNumber,
            json::JsonError::TooManyFields => DropReason::TooManyFields,
        }
    }

    fn from_frame(e: frame::FrameError) -> DropReason {
        match e {
            frame::FrameError::Cobs => DropReason::BadCobs,
            frame::FrameError::Length | frame::FrameError::BufferTooSmall => DropReason::BadLength,
            frame::FrameError::Crc => DropReason::BadCrc,
            frame::FrameError::Version(_) => DropReason::BadVersion,
            frame::FrameError::Body => DropReason::BadBody,
        }
    }
}

/// Splits a byte stream at a delimiter, bounding the length of a frame.
///
/// Bytes of an over-long frame are discarded up to the next delimiter and
/// reported once. Nothing is allocated after the first `max` bytes.
#[derive(Debug)]
pub struct Framer {
    delimiter: u8,
    max: usize,
    partial: Vec<u8>,
    discarding: bool,
}

/// One piece of the stream between delimiters.
pub enum Piece<'a> {
    Frame(&'a mut [u8]),
    Oversize,
}

impl Framer {
    pub fn new(delimiter: u8, max: usize) -> Self {
        Self {
            delimiter,
            max,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// Feeds `data`; `f` is called for every complete piece. Empty frames
    /// (two delimiters in a row) are skipped.
    pub fn push(&mut self, data: &mut [u8], mut f: impl FnMut(Piece<'_>)) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == self.delimiter) {
            let (head, tail) = rest.split_at_mut(pos);
            if self.discarding {
                self.discarding = false;
                f(Piece::Oversize);
            } else if !self.partial.is_empty() {
                if self.partial.len() + head.len() > self.max {
                    f(Piece::Oversize);
                } else {
                    self.partial.extend_from_slice(head);
                    f(Piece::Frame(&mut self.partial));
                }
                self.partial.clear();
            } else if head.len() > self.max {
                f(Piece::Oversize);
            } else if !head.is_empty() {
                f(Piece::Frame(head));
            }
            rest = &mut tail[1..];
        }
        if !rest.is_empty() && !self.discarding {
            if self.partial.len() + rest.len() > self.max {
                self.partial.clear();
                self.discarding = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }

    /// Forgets a partial frame (the port went away); true if there was one.
    pub fn reset(&mut self) -> bool {
        let had = !self.partial.is_empty() || self.discarding;
        self.partial.clear();
        self.discarding = false;
        had
    }
}

/// A decoded reading of a serial channel, ready for the core.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialReading {
    pub sensor: Arc<str>,
    pub unit: Option<Arc<str>>,
    pub ts_ms: i64,
    pub value: f64,
    /// `ts_ms` comes from the gateway clock (arrival, or node uptime mapped
    /// onto it), not from the node's own clock: it moves with the gateway
    /// clock when that is corrected.
    pub gateway_clock: bool,
}

/// Counters of one port, cumulative.
#[derive(Debug, Clone, Default)]
pub struct PortCounters {
    pub bytes: u64,
    /// Frames (lines) that decoded and were accepted.
    pub frames: u64,
    pub readings: u64,
    /// Channels dropped because no mapping names them (`unmapped = "drop"`).
    pub unmapped: u64,
    pub dropped: [u64; DropReason::ALL.len()],
}

impl PortCounters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// Where a channel's readings go.
#[derive(Debug, Clone)]
struct Target {
    /// `None`: dropped (unmapped).
    sensor: Option<Arc<str>>,
    unit: Option<Arc<str>>,
}

/// Decodes one port's byte stream into readings.
#[derive(Debug)]
pub struct PortDecoder {
    settings: PortSettings,
    framer: Framer,
    targets: HashMap<Box<str>, Target>,
    /// The `frame` fast path: `node << 8 | channel` to target.
    frame_targets: HashMap<u32, Target, FastHash>,
    nodes: Vec<(Box<str>, NodeState)>,
    /// Indexes into `nodes`, sorted by node id: kept in order as nodes are
    /// added (rarely, and at most `max_nodes`), so that `nodes()` lists
    /// them sorted without sorting on every read.
    node_order: Vec<usize>,
    node_index: HashMap<Box<str>, usize>,
    frame_node_index: HashMap<u16, usize, FastHash>,
    scratch: String,
    counters: PortCounters,
    last_drop: LastDrop,
}

/// The most recent drop of a port, as cheap data: the names or message start
/// it mentions are copied into buffers that are reused, and the sentence for
/// the log is rendered only when [`PortDecoder::take_last_drop`] asks for it
/// (at most once per log interval), not for every drop.
#[derive(Debug, Default)]
struct LastDrop {
    /// `None` when taken, or before the first drop.
    what: Option<(DropReason, DropDetail)>,
    /// The node id the detail names (already cut to an excerpt where the
    /// sentence shows one).
    node: String,
    /// The start of the dropped message, or the channel name the detail
    /// names.
    text: Vec<u8>,
}

/// What a drop's log sentence says beyond its reason.
#[derive(Debug, Clone, Copy)]
enum DropDetail {
    /// A frame or line longer than `max_frame_bytes`.
    Oversize,
    /// A partial frame lost when the port went away.
    Torn,
    /// A binary frame that did not decode.
    Frame(frame::FrameError),
    /// A text message that did not parse; its start is in `text`.
    Message,
    /// The node id in `node` is not a valid name.
    NodeName(crate::topic::NameError),
    /// The channel in `text` of the node in `node` cannot name an unmapped
    /// sensor.
    ChannelName,
    /// The node in `node` is beyond `max_nodes`.
    TooManyNodes { max: usize },
    /// The node in `node` repeated a sequence number.
    Duplicate { seq: Option<u32> },
}

impl LastDrop {
    fn set(&mut self, reason: DropReason, detail: DropDetail, node: &str, text: &[u8]) {
        self.what = Some((reason, detail));
        self.node.clear();
        self.node.push_str(node);
        self.text.clear();
        self.text.extend_from_slice(text);
    }

    fn render(&self, detail: DropDetail) -> String {
        let node = self.node.as_str();
        let text = String::from_utf8_lossy(&self.text);
        match detail {
            DropDetail::Oversize => "over-long frame or line".to_owned(),
            DropDetail::Torn => "partial frame at disconnect".to_owned(),
            DropDetail::Frame(e) => e.to_string(),
            DropDetail::Message => text.into_owned(),
            DropDetail::NodeName(e) => format!("node {node:?}: {e}"),
            DropDetail::ChannelName => format!(
                "channel {text:?} of node {node:?}: not a valid name for an unmapped sensor"
            ),
            DropDetail::TooManyNodes { max } => {
                format!("node {node:?} exceeds the bound of {max} nodes")
            }
            DropDetail::Duplicate { seq } => format!("node {node:?} repeated sequence {seq:?}"),
        }
    }
}

/// Separates node and channel in lookup keys; cannot occur in names.
const SEP: char = '\u{1f}';

impl PortDecoder {
    pub fn new(settings: PortSettings) -> Self {
        let delimiter = settings.format.delimiter();
        let max = match settings.format {
            Format::Frame => settings.max_frame_bytes.min(frame::MAX_ENCODED_BYTES),
            _ => settings.max_frame_bytes,
        };
        let mut targets = HashMap::new();
        for c in &settings.channels {
            let key = format!("{}{SEP}{}", c.node.as_deref().unwrap_or(""), c.channel);
            targets.insert(
                key.into_boxed_str(),
                Target {
                    sensor: Some(Arc::from(c.sensor.as_str())),
                    unit: c.unit.as_deref().map(Arc::from),
                },
            );
        }
        Self {
            framer: Framer::new(delimiter, max),
            settings,
            targets,
            frame_targets: HashMap::default(),
            nodes: Vec::new(),
            node_order: Vec::new(),
            node_index: HashMap::new(),
            frame_node_index: HashMap::default(),
            scratch: String::new(),
            counters: PortCounters::default(),
            last_drop: LastDrop::default(),
        }
    }

    pub fn settings(&self) -> &PortSettings {
        &self.settings
    }

    pub fn counters(&self) -> &PortCounters {
        &self.counters
    }

    /// Per-node counters, by node id (`""` for a sender without one),
    /// sorted by node id.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (&str, &NodeCounters)> {
        self.node_order.iter().map(|&i| {
            let (k, v) = &self.nodes[i];
            (&**k, &v.counters)
        })
    }

    /// The most recent drop and a short description of it, taken. The
    /// description is rendered here, so drops that are only counted cost no
    /// text.
    pub fn take_last_drop(&mut self) -> Option<(DropReason, String)> {
        let (reason, detail) = self.last_drop.what.take()?;
        Some((reason, self.last_drop.render(detail)))
    }

    /// Feeds bytes read at `now_ms`; readings are appended to `out`.
    pub fn push(&mut self, data: &mut [u8], now_ms: i64, out: &mut Vec<SerialReading>) {
        self.counters.bytes += data.len() as u64;
        let mut framer = std::mem::replace(&mut self.framer, Framer::new(0, 0));
        framer.push(data, |piece| match piece {
            Piece::Oversize => self.discard(DropReason::Oversize, DropDetail::Oversize, "", &[]),
            Piece::Frame(bytes) => self.decode(bytes, now_ms, out),
        });
        self.framer = framer;
    }

    /// The port went away: a partial frame is lost.
    pub fn disconnected(&mut self) {
        if self.framer.reset() {
            self.discard(DropReason::Torn, DropDetail::Torn, "", &[]);
        }
    }

    /// Counts a drop and remembers it for the log (`node` and `text` as
    /// the detail needs them).
    fn discard(&mut self, reason: DropReason, detail: DropDetail, node: &str, text: &[u8]) {
        self.counters.dropped[reason as usize] += 1;
        self.last_drop.set(reason, detail, node, text);
    }

    fn decode(&mut self, bytes: &mut [u8], now_ms: i64, out: &mut Vec<SerialReading>) {
        match self.settings.format {
            Format::Frame => match frame::decode(bytes) {
                Ok(f) => {
                    let index = match self.frame_node_index.get(&f.node) {
                        Some(&i) => i,
                        None => match self.node_slot(itoa_u16(f.node).as_str()) {
                            Some(i) => {
                                self.frame_node_index.insert(f.node, i);
                                i
                            }
                            None => return,
                        },
                    };
                    let uptime = f
                        .uptime_ms
                        .map(|u| node::unwrap_u32(self.nodes[index].1.last_uptime(), u));
                    let Some(ts) = self.observe(index, Some(f.seq), uptime, now_ms) else {
                        return;
                    };
                    for r in &f.readings {
                        let key = u32::from(f.node) << 8 | u32::from(r.channel);
                        let target = match self.frame_targets.get(&key) {
                            Some(t) => t.clone(),
                            None => {
                                let node = itoa_u16(f.node);
                                let ch = itoa_u16(u16::from(r.channel));
                                // Decimal numbers are always valid names.
                                let Some(t) = self.resolve(node.as_str(), ch.as_str()) else {
                                    continue;
                                };
                                if self.frame_targets.len() < self.settings.max_nodes * 256 {
                                    self.frame_targets.insert(key, t.clone());
                                }
                                t
                            }
                        };
                        self.emit_to(&target, ts, f64::from(r.value), out);
                    }
                }
                Err(e) => self.discard(DropReason::from_frame(e), DropDetail::Frame(e), "", &[]),
            },
            Format::Line { require_checksum } => match line::parse(bytes, require_checksum) {
                Ok(Some(l)) => self.deliver(
                    l.node.unwrap_or(""),
                    l.seq,
                    l.uptime_ms,
                    &l.readings,
                    now_ms,
                    out,
                ),
                Ok(None) => {}
                Err(e) => self.discard(
                    DropReason::from_line(e),
                    DropDetail::Message,
                    "",
                    excerpt(bytes),
                ),
            },
            Format::Json => match json::parse(bytes) {
                Ok(Some(l)) => {
                    let node = l.node.as_deref().unwrap_or("");
                    self.deliver(node, l.seq, l.uptime_ms, &l.readings, now_ms, out)
                }
                Ok(None) => {}
                Err(e) => self.discard(
                    DropReason::from_json(e),
                    DropDetail::Message,
                    "",
                    excerpt(bytes),
                ),
            },
        }
    }

    /// Delivers the readings of one text message after the name and node
    /// checks. A message is accepted or dropped whole: a node name that is
    /// not a valid name, or a channel name an unmapped sensor id would be
    /// built from, drops it as [`DropReason::BadName`] (as a bad channel value
    /// drops it as `not_a_number`), before the node's sequence is observed.
    fn deliver<N: AsRef<str>>(
        &mut self,
        node: &str,
        seq: Option<u32>,
        uptime_ms: Option<u64>,
        readings: &[(N, f64)],
        now_ms: i64,
        out: &mut Vec<SerialReading>,
    ) {
        if !node.is_empty() {
            if let Err(e) = crate::topic::check_name(node) {
                let node = crate::topic::excerpt(node);
                self.discard(DropReason::BadName, DropDetail::NodeName(e), node, &[]);
                return;
            }
        }
        let mut targets: heapless::Vec<Target, { line::MAX_FIELDS }> = heapless::Vec::new();
        for (name, _) in readings {
            let Some(t) = self.resolve(node, name.as_ref()) else {
                let channel = crate::topic::excerpt(name.as_ref()).as_bytes();
                self.discard(DropReason::BadName, DropDetail::ChannelName, node, channel);
                return;
            };
            // The parsers bound a message to MAX_FIELDS channels.
            let _ = targets.push(t);
        }
        let Some(index) = self.node_slot(node) else {
            return;
        };
        let Some(ts) = self.observe(index, seq, uptime_ms, now_ms) else {
            return;
        };
        for (t, (_, v)) in targets.iter().zip(readings) {
            self.emit_to(t, ts, *v, out);
        }
    }

    /// The index of `node`'s state, created on first sight; `None` (and a
    /// counted drop) beyond `max_nodes`.
    fn node_slot(&mut self, node: &str) -> Option<usize> {
        if let Some(&i) = self.node_index.get(node) {
            return Some(i);
        }
        if self.nodes.len() >= self.settings.max_nodes {
            let max = self.settings.max_nodes;
            let node = crate::topic::excerpt(node);
            self.discard(
                DropReason::TooManyNodes,
                DropDetail::TooManyNodes { max },
                node,
                &[],
            );
            return None;
        }
        let index = self.nodes.len();
        let at = self
            .node_order
            .partition_point(|&i| &*self.nodes[i].0 < node);
        self.node_order.insert(at, index);
        self.nodes.push((node.into(), NodeState::default()));
        self.node_index.insert(node.into(), index);
        Some(index)
    }

    /// Runs the node's sequence and clock checks; the event time, or `None`
    /// when the frame is dropped.
    fn observe(
        &mut self,
        index: usize,
        seq: Option<u32>,
        time: Option<u64>,
        now_ms: i64,
    ) -> Option<EventTime> {
        let (uptime, fixed_ts) = match self.settings.time {
            NodeTime::Uptime => (time, None),
            // Checked against the gateway clock by the core (`future`,
            // `too_old`), not clamped here: a wrong clock is counted.
            NodeTime::UnixMs => (None, time.map(|t| i64::try_from(t).unwrap_or(i64::MAX))),
            NodeTime::Ignore => (None, None),
        };
        let (name, state) = &mut self.nodes[index];
        match state.observe(seq, uptime, now_ms) {
            Verdict::Accept { ts_ms } => {
                self.counters.frames += 1;
                Some(match fixed_ts {
                    Some(ts) => EventTime {
                        ts_ms: ts,
                        gateway_clock: false,
                    },
                    None => EventTime {
                        ts_ms,
                        gateway_clock: true,
                    },
                })
            }
            Verdict::Duplicate => {
                let detail = DropDetail::Duplicate { seq };
                self.counters.dropped[DropReason::Duplicate as usize] += 1;
                self.last_drop.set(DropReason::Duplicate, detail, name, &[]);
                None
            }
        }
    }

    /// Where readings of `channel` of `node` go; `None` when the channel is
    /// unmapped, unmapped channels are accepted, and `channel` is not a
    /// valid name (the node name is checked before). A built id is at most
    /// `port + node + channel + 2` bytes, below
    /// [`crate::topic::MAX_SENSOR_ID_BYTES`] for a port name of at most
    /// [`crate::topic::MAX_NAME_BYTES`].
    fn resolve(&mut self, node: &str, channel: &str) -> Option<Target> {
        self.scratch.clear();
        let _ = write!(self.scratch, "{node}{SEP}{channel}");
        let found = match self.targets.get(self.scratch.as_str()) {
            Some(t) => Some(t.clone()),
            // A mapping without a node matches every node.
            None if !node.is_empty() => self.targets.get(&self.scratch[node.len()..]).cloned(),
            None => None,
        };
        if let Some(t) = found {
            return Some(t);
        }
        if self.settings.unmapped == Unmapped::Accept && crate::topic::check_name(channel).is_err()
        {
            return None;
        }
        let sensor = match self.settings.unmapped {
            Unmapped::Drop => None,
            Unmapped::Accept if node.is_empty() => {
                Some(Arc::from(format!("{}/{channel}", self.settings.name)))
            }
            Unmapped::Accept => Some(Arc::from(format!(
                "{}/{node}/{channel}",
                self.settings.name
            ))),
        };
        let t = Target { sensor, unit: None };
        // Bounded: beyond it, names are built per reading (and the core's
        // sensor limit applies).
        if self.targets.len() < self.settings.channels.len() + self.settings.max_nodes * 16 {
            self.targets.insert(self.scratch.as_str().into(), t.clone());
        }
        Some(t)
    }

    fn emit_to(&mut self, t: &Target, ts: EventTime, value: f64, out: &mut Vec<SerialReading>) {
        match &t.sensor {
            Some(sensor) => {
                self.counters.readings += 1;
                out.push(SerialReading {
                    sensor: sensor.clone(),
                    unit: t.unit.clone(),
                    ts_ms: ts.ts_ms,
                    value,
                    gateway_clock: ts.gateway_clock,
                });
            }
            None => self.counters.unmapped += 1,
        }
    }
}

/// A reading's event time and which clock gave it.
#[derive(Debug, Clone, Copy)]
struct EventTime {
    ts_ms: i64,
    gateway_clock: bool,
}

/// A hasher for small integer keys (node ids, node and channel pairs):
/// a multiply, instead of SipHash, on the per-reading path. The keys come
/// from frames whose CRC passed, and the maps are bounded, so flooding is
/// not a concern.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastHash = std::hash::BuildHasherDefault<IntHasher>;

/// The start of a dropped message, for the log.
fn excerpt(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(64)]
}

/// A `u16` in decimal, without allocating.
fn itoa_u16(v: u16) -> heapless::String<5> {
    let mut s = heapless::String::new();
    let _ = write!(s, "{v}");
    s
}

#[cfg(test)]
mod tests;
