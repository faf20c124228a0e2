//! The oversize guard: a poison message on the plant broker costs only itself.
//!
//! rumqttc (MQTT 3.1.1) fails the whole connection when an incoming packet is
//! larger than its `max_incoming_packet_size`. With a persistent session and
//! QoS 1 the broker redelivers that message at every reconnect, so one 200 KB
//! publish would stop ingestion for good. The guard sits between rumqttc and
//! the broker: rumqttc connects to a Unix socket in the state directory, and
//! the guard relays every byte to the broker's connection (TCP, or TLS when
//! the source has a `tls` table: the guard reads MQTT packets, so it is
//! where TLS ends) and back,
//! except PUBLISH packets from the broker that are larger than the limit.
//! Those it reads past without holding them (memory: one 64 KiB read buffer
//! per direction, whatever the packet size, up to MQTT's 256 MB), answers
//! for the client (PUBACK for QoS 1; PUBREC, then PUBCOMP to the broker's
//! PUBREL, for QoS 2, so that the broker considers them delivered and never
//! sends them again), and counts as `oversize`.
//!
//! [`InboundFilter`] is the pure part (a byte-stream state machine over the
//! broker's packets, tested and fuzzed on its own); [`Guard`] is the shell.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerAddr;
use crate::metrics::Metrics;
use crate::reject::{Reject, Throttle};

/// How long the relay lets a trickling stream from the broker gather
/// before reading it again.
const READ_COALESCE: Duration = Duration::from_millis(1);

/// Bytes of topic allowed in a passed PUBLISH beyond the payload limit.
pub const TOPIC_ALLOWANCE: usize = 1024;

const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;

/// The largest PUBLISH (remaining length: topic, packet id and payload) the
/// guard passes for a payload limit of `max_payload_bytes`.
pub fn packet_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes
        .saturating_add(TOPIC_ALLOWANCE)
        .saturating_add(4)
}

/// The broker sent bytes that are not MQTT (a remaining length longer than
/// four bytes); the connection is closed as rumqttc would close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker sent a malformed packet length")]
pub struct Malformed;

/// One oversize publish that was discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    /// The packet's remaining length (topic, packet id and payload).
    pub len: usize,
    pub qos: u8,
    /// The first bytes of its topic, for the log.
    pub topic_prefix: String,
}

#[derive(Debug)]
enum State {
    /// Collecting a fixed header (type byte and up to four length bytes).
    Header,
    /// Passing the rest of a packet through.
    Forward { left: usize },
    /// Holding a PUBREL's packet id to decide whether it answers a discarded
    /// QoS 2 publish.
    PubRel { left: usize },
    /// Reading past an oversize publish.
    Discard(Discard),
}

#[derive(Debug)]
struct Discard {
    qos: u8,
    len: usize,
    /// Bytes of the packet still to read.
    left: usize,
    /// Position within the packet (topic length, topic, packet id).
    pos: usize,
    topic_len: usize,
    pkid: u16,
    topic: Vec<u8>,
}

/// Splits the broker-to-client byte stream into packets and drops oversize
/// publishes. Pure: bytes in, bytes to forward and acknowledgements to send
/// out.
#[derive(Debug)]
pub struct InboundFilter {
    limit: usize,
    state: State,
    head: [u8; 5],
    head_len: usize,
    /// Packet ids of discarded QoS 2 publishes whose PUBREL is still due
    /// (one bit per packet id: 8 KiB, bounded by construction).
    awaiting_rel: Box<[u64; 1024]>,
}

impl InboundFilter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: State::Header,
            head: [0; 5],
            head_len: 0,
            awaiting_rel: Box::new([0; 1024]),
        }
    }

    /// Starts a new connection's stream. Which discarded QoS 2 publishes
    /// still await their PUBREL is kept: the broker sends it again after a
    /// reconnect.
    pub fn reset_stream(&mut self) {
        self.state = State::Header;
        self.head_len = 0;
    }

    /// Feeds bytes from the broker. Bytes for the client are appended to
    /// `forward`, packets to send to the broker to `replies`, and discarded
    /// publishes to `discarded`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        forward: &mut Vec<u8>,
        replies: &mut Vec<[u8; 4]>,
        discarded: &mut Vec<Discarded>,
    ) -> Result<(), Malformed> {
        while !input.is_empty() {
            match &mut self.state {
                State::Header => {
                    self.head[self.head_len] = input[0];
                    self.head_len += 1;
                    input = &input[1..];
                    if self.head_len == 1 {
                        continue;
                    }
                    let last = self.head[self.head_len - 1];
                    if last & 0x80 != 0 {
                        if self.head_len == 5 {
                            return Err(Malformed);
                        }
                        continue;
                    }
                    let remaining = self.head[1..self.head_len]
                        .iter()
                        .rev()
                        .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
                    let kind = self.head[0] >> 4;
                    let qos = (self.head[0] >> 1) & 3;
                    if kind == PUBLISH && remaining > self.limit {
                        self.state = State::Discard(Discard {
                            qos,
                            len: remaining,
                            left: remaining,
                            pos: 0,
                            topic_len: 0,
                            pkid: 0,
                            topic: Vec::new(),
                        });
                    } else if kind == PUBREL && remaining == 2 && self.head_len == 2 {
                        self.state = State::PubRel { left: 2 };
                    } else {
                        forward.extend_from_slice(&self.head[..self.head_len]);
                        self.head_len = 0;
                        self.state = State::Forward { left: remaining };
                    }
                    if remaining == 0 {
                        self.finish_packet(forward, replies, discarded);
                    }
                }
                State::Forward { left } => {
                    let n = (*left).min(input.len());
                    forward.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::PubRel { left } => {
                    self.head[self.head_len] = input[0];
                    self.head_len += 1;
                    input = &input[1..];
                    *left -= 1;
                    if *left == 0 {
                        self.finish_packet(forward, replies, discarded);
                    }
                }
                State::Discard(d) => {
                    // The variable header: topic length, topic, packet id.
                    let header_end = 2 + d.topic_len + if d.qos > 0 { 2 } else { 0 };
                    if d.pos < 2 || d.pos < header_end {
                        let b = input[0];
                        match d.pos {
                            0 => d.topic_len = usize::from(b) << 8,
                            1 => d.topic_len |= usize::from(b),
                            p if p < 2 + d.topic_len => {
                                if d.topic.len() < 64 {
                                    d.topic.push(b);
                                }
                            }
                            p if p == 2 + d.topic_len => d.pkid = u16::from(b) << 8,
                            _ => d.pkid |= u16::from(b),
                        }
                        d.pos += 1;
                        d.left -= 1;
                        input = &input[1..];
                    } else {
                        let n = d.left.min(input.len());
                        d.pos += n;
                        d.left -= n;
                        input = &input[n..];
                    }
                    if d.left == 0 {
                        self.finish_packet(forward, replies, discarded);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish_packet(
        &mut self,
        forward: &mut Vec<u8>,
        replies: &mut Vec<[u8; 4]>,
        discarded: &mut Vec<Discarded>,
    ) {
        match std::mem::replace(&mut self.state, State::Header) {
            State::Discard(d) => {
                let [hi, lo] = d.pkid.to_be_bytes();
                match d.qos {
                    1 => replies.push([0x40, 0x02, hi, lo]),
                    2 => {
                        replies.push([0x50, 0x02, hi, lo]);
                        self.awaiting_rel[usize::from(d.pkid) / 64] |= 1 << (d.pkid % 64);
                    }
                    _ => {}
                }
                discarded.push(Discarded {
                    len: d.len,
                    qos: d.qos,
                    topic_prefix: String::from_utf8_lossy(&d.topic).into_owned(),
                });
            }
            State::PubRel { .. } => {
                let pkid = u16::from_be_bytes([
                    self.head[self.head_len - 2],
                    self.head[self.head_len - 1],
                ]);
                let (word, bit) = (usize::from(pkid) / 64, 1u64 << (pkid % 64));
                if self.awaiting_rel[word] & bit != 0 {
                    self.awaiting_rel[word] &= !bit;
                    let [hi, lo] = pkid.to_be_bytes();
                    replies.push([0x70, 0x02, hi, lo]);
                } else {
                    forward.extend_from_slice(&self.head[..self.head_len]);
                }
            }
            State::Forward { .. } | State::Header => {}
        }
        self.head_len = 0;
    }
}

/// Packet boundaries of the client-to-broker stream, so that the guard's own
/// replies go between the client's packets, never inside one. Pure.
#[derive(Debug, Default)]
pub struct Boundaries {
    head_len: usize,
    remaining: usize,
    /// Bytes of the current packet's body still to come.
    left: usize,
    in_body: bool,
}

impl Boundaries {
    /// Whether the stream so far ends exactly at a packet boundary.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && !self.in_body
    }

    /// Feeds the next bytes; returns the offset just past the last packet
    /// that ends within them, if any.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut last = None;
        let mut i = 0;
        while i < input.len() {
            if self.in_body {
                let n = self.left.min(input.len() - i);
                self.left -= n;
                i += n;
                if self.left == 0 {
                    self.in_body = false;
                    last = Some(i);
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.head_len += 1;
            if self.head_len == 1 {
                self.remaining = 0;
                continue;
            }
            self.remaining |= usize::from(b & 0x7f) << (7 * (self.head_len - 2));
            if b & 0x80 != 0 {
                if self.head_len == 5 {
                    return Err(Malformed);
                }
                continue;
            }
            self.head_len = 0;
            if self.remaining == 0 {
                last = Some(i);
            } else {
                self.left = self.remaining;
                self.in_body = true;
            }
        }
        Ok(last)
    }
}

/// Where the guard of source `index` listens: a private directory of the
/// state directory (0700), or the temporary directory when that path is too
/// long for a Unix socket address.
pub fn socket_path(state_dir: &Path, index: usize) -> PathBuf {
    let preferred = state_dir.join("run").join(format!("source-{index}.sock"));
    if preferred.as_os_str().len() < 100 {
        preferred
    } else {
        // A directory of this run alone, hard to guess; `Guard::bind`
        // creates it 0700 and refuses one that exists already.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::env::temp_dir()
            .join(format!("sensor-gateway-{}-{nanos:08x}", std::process::id()))
            .join(format!("source-{index}.sock"))
    }
}

/// The relay of one MQTT source.
pub struct Guard {
    listener: UnixListener,
    path: PathBuf,
    broker: BrokerAddr,
    limit: usize,
    source: String,
    metrics: Arc<Metrics>,
    /// Why the last broker connection failed, for the source's log line.
    last_error: Arc<Mutex<Option<String>>>,
    /// TLS to the broker, when the source has a `tls` table.
    tls: Option<GuardTls>,
}

/// The TLS a guard speaks to its broker.
struct GuardTls {
    connector: tokio_rustls::TlsConnector,
    /// The broker's host, sent as SNI (the name checked may be
    /// `server_name`, see `mqtt::tls`).
    name: rustls::pki_types::ServerName<'static>,
    config: crate::config::TlsConfig,
}

impl Guard {
    /// Binds the guard's socket (replacing a stale one from a previous run).
    pub fn bind(
        path: PathBuf,
        broker: BrokerAddr,
        limit: usize,
        source: String,
        metrics: Arc<Metrics>,
    ) -> io::Result<Guard> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            // The fallback directory in the temporary directory must be this
            // run's own: made now, or refused. Under the state directory it
            // is ours already.
            let temp = std::env::temp_dir();
            let fallback = dir.parent() == Some(temp.as_path())
                && dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("sensor-gateway-"));
            if fallback {
                std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            } else {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        Ok(Guard {
            listener,
            path,
            broker,
            limit,
            source,
            metrics,
            last_error: Arc::new(Mutex::new(None)),
            tls: None,
        })
    }

    /// Speaks TLS to the broker, with the settings of the source's `tls`.
    pub fn with_tls(mut self, cfg: &crate::config::TlsConfig) -> Result<Guard, String> {
        let config =
            crate::mqtt::tls::rustls_config(cfg).map_err(|e| format!("{e}; {}", e.hint))?;
        let name = rustls::pki_types::ServerName::try_from(self.broker.host.clone())
            .map_err(|e| format!("the broker's host cannot be a TLS name: {e}"))?;
        self.tls = Some(GuardTls {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
            config: cfg.clone(),
        });
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle to the reason of the last failed broker connection.
    pub fn last_error(&self) -> Arc<Mutex<Option<String>>> {
        self.last_error.clone()
    }

    /// Relays one client connection at a time until `cancel` fires.
    pub async fn serve(self, cancel: CancellationToken) {
        let mut log = Throttle::default();
        // Kept across connections: a discarded QoS 2 publish's PUBREL may
        // come after a reconnect.
        let mut filter = InboundFilter::new(self.limit);
        let mut accept_log = Throttle::default();
        loop {
            let conn = tokio::select! {
                _ = cancel.cancelled() => break,
                c = self.listener.accept() => c,
            };
            let client = match conn {
                Ok((c, _)) => c,
                Err(e) => {
                    if let Some(suppressed) = accept_log.allow(10_000, crate::now_ms()) {
                        tracing::warn!(error = %e, similar_suppressed = suppressed, "The source guard cannot accept a connection.");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.relay(client, &mut filter, &mut log) => r,
            };
            if let (Err(e), Ok(mut last)) = (result, self.last_error.lock()) {
                let tls_problem = self
                    .tls
                    .as_ref()
                    .and_then(|t| crate::mqtt::tls::classify(&e).map(|p| p.explain(&t.config)));
                *last = Some(tls_problem.unwrap_or_else(|| e.to_string()));
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }

    async fn relay(
        &self,
        client: UnixStream,
        filter: &mut InboundFilter,
        log: &mut Throttle,
    ) -> io::Result<()> {
        let addr = (self.broker.host.as_str(), self.broker.port);
        let broker = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
        broker.set_nodelay(true)?;
        match &self.tls {
            None => {
                let (broker_rd, broker_wr) = broker.into_split();
                self.pump(client, broker_rd, broker_wr, filter, log).await
            }
            Some(tls) => {
                let stream = tokio::time::timeout(
                    Duration::from_secs(10),
                    tls.connector.connect(tls.name.clone(), broker),
                )
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out")
                })??;
                let (broker_rd, broker_wr) = tokio::io::split(stream);
                self.pump(client, broker_rd, broker_wr, filter, log).await
            }
        }
    }

    /// Relays between the client and the broker until either closes.
    async fn pump(
        &self,
        client: UnixStream,
        mut broker_rd: impl AsyncRead + Unpin,
        mut broker_wr: impl AsyncWrite + Unpin,
        filter: &mut InboundFilter,
        log: &mut Throttle,
    ) -> io::Result<()> {
        let (mut client_rd, mut client_wr) = client.into_split();
        // Replies for discarded publishes; bounded by the broker's in-flight
        // window in practice, and backpressured beyond it.
        let (reply_tx, mut reply_rx) = mpsc::channel::<[u8; 4]>(256);
        filter.reset_stream();
        let up = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut bounds = Boundaries::default();
            // Replies wait here while the client is in the middle of a packet.
            let mut pending: Vec<[u8; 4]> = Vec::new();
            loop {
                tokio::select! {
                    n = client_rd.read(&mut buf) => {
                        let n = n?;
                        if n == 0 {
                            return Ok(());
                        }
                        let chunk = &buf[..n];
                        let boundary = bounds
                            .feed(chunk)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        match boundary {
                            Some(at) if !pending.is_empty() => {
                                broker_wr.write_all(&chunk[..at]).await?;
                                for reply in pending.drain(..) {
                                    broker_wr.write_all(&reply).await?;
                                }
                                broker_wr.write_all(&chunk[at..]).await?;
                            }
                            _ => broker_wr.write_all(chunk).await?,
                        }
                    }
                    Some(reply) = reply_rx.recv() => {
                        if bounds.at_boundary() {
                            broker_wr.write_all(&reply).await?;
                        } else {
                            pending.push(reply);
                        }
                    }
                }
            }
        };
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut forward = Vec::with_capacity(64 * 1024);
            let mut replies = Vec::new();
            let mut discarded = Vec::new();
            loop {
                let n = broker_rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), io::Error>(());
                }
                filter
                    .feed(&buf[..n], &mut forward, &mut replies, &mut discarded)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                for d in discarded.drain(..) {
                    self.count_discarded(&d, log);
                }
                for r in replies.drain(..) {
                    if reply_tx.send(r).await.is_err() {
                        return Ok(());
                    }
                }
                if !forward.is_empty() {
                    client_wr.write_all(&forward).await?;
                    forward.clear();
                }
                // A short read means the stream is trickling: let it gather
                // for a moment, so that the relay, the MQTT client and the
                // core each wake once per batch of messages instead of once
                // per few (the CPU per reading at moderate rates is mostly
                // these wake-ups). Adds about READ_COALESCE of latency; a
                // backlog (full reads) is read without pause.
                if n < buf.len() / 4 {
                    tokio::time::sleep(READ_COALESCE).await;
                }
            }
        };
        tokio::select! {
            r = up => r,
            r = down => r,
        }
    }

    fn count_discarded(&self, d: &Discarded, log: &mut Throttle) {
        self.metrics.messages_received.inc();
        self.metrics.reject(Reject::Oversize);
        if let Some(suppressed) = log.allow(10_000, crate::now_ms()) {
            tracing::warn!(
                source = %self.source,
                topic_prefix = ?d.topic_prefix,
                bytes = d.len,
                qos = d.qos,
                similar_suppressed = suppressed,
                "Discarded an oversize message without holding it: it is larger than pipeline.max_payload_bytes. It was acknowledged to the broker, so it is not sent again; limit message sizes at the broker (e.g. Mosquitto's max_packet_size) to stop it earlier."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: u8, pkid: u16, topic: &str, payload_len: usize) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend(std::iter::repeat_n(b'x', payload_len));
        let mut p = vec![0x30 | (qos << 1)];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            p.push(b);
            if len == 0 {
                break;
            }
        }
        p.extend(body);
        p
    }

    /// Feeds `input` in chunks of `chunk` bytes.
    fn run(limit: usize, input: &[u8], chunk: usize) -> (Vec<u8>, Vec<[u8; 4]>, Vec<Discarded>) {
        let mut f = InboundFilter::new(limit);
        let (mut fw, mut rp, mut ds) = (Vec::new(), Vec::new(), Vec::new());
        for c in input.chunks(chunk) {
            f.feed(c, &mut fw, &mut rp, &mut ds).unwrap();
        }
        (fw, rp, ds)
    }

    #[test]
    fn an_oversize_publish_is_dropped_and_acknowledged_while_its_neighbours_pass() {
        let small_a = publish(1, 7, "plant/a", 10);
        let big = publish(1, 8, "plant/poison", 200_000);
        let small_b = publish(1, 9, "plant/b", 10);
        let input = [small_a.clone(), big, small_b.clone()].concat();
        for chunk in [1, 3, 7, 4096, usize::MAX] {
            let (fw, rp, ds) = run(4096, &input, chunk.min(input.len()));
            assert_eq!(
                fw,
                [small_a.clone(), small_b.clone()].concat(),
                "chunk {chunk}"
            );
            assert_eq!(rp, vec![[0x40, 0x02, 0, 8]]);
            assert_eq!(ds.len(), 1);
            assert_eq!(ds[0].topic_prefix, "plant/poison");
            assert_eq!(ds[0].qos, 1);
        }
    }

    #[test]
    fn a_discarded_qos2_publish_is_completed_by_the_guard() {
        let big = publish(2, 300, "t", 10_000);
        let pubrel_ours = [0x62, 0x02, 0x01, 0x2c];
        let pubrel_theirs = [0x62, 0x02, 0x00, 0x05];
        let input = [big, pubrel_ours.to_vec(), pubrel_theirs.to_vec()].concat();
        let (fw, rp, ds) = run(100, &input, 2);
        assert_eq!(ds.len(), 1);
        assert_eq!(rp, vec![[0x50, 0x02, 0x01, 0x2c], [0x70, 0x02, 0x01, 0x2c]]);
        assert_eq!(fw, pubrel_theirs.to_vec());
    }

    #[test]
    fn other_packets_pass_untouched() {
        let connack = [0x20, 0x02, 0x00, 0x00];
        let suback = [0x90, 0x03, 0x00, 0x01, 0x01];
        let pingresp = [0xd0, 0x00];
        let qos0 = publish(0, 0, "a/b", 50);
        let input = [&connack[..], &suback, &pingresp, &qos0].concat();
        let (fw, rp, ds) = run(100, &input, 1);
        assert_eq!(fw, input);
        assert!(rp.is_empty() && ds.is_empty());
    }

    #[test]
    fn a_pubrel_with_a_padded_length_passes_without_panicking() {
        // Remaining length 2 written in three bytes (legal but unusual).
        let padded = [0x62, 0x82, 0x80, 0x00, 0x01, 0x2c];
        let (fw, rp, ds) = run(100, &padded, 1);
        assert_eq!(fw, padded.to_vec());
        assert!(rp.is_empty() && ds.is_empty());
    }

    #[test]
    fn a_discarded_qos2_publish_is_completed_after_a_reconnect() {
        let mut f = InboundFilter::new(100);
        let (mut fw, mut rp, mut ds) = (Vec::new(), Vec::new(), Vec::new());
        let big = publish(2, 77, "t", 1_000);
        // The connection drops in the middle of the next packet.
        f.feed(
            &[&big[..], &[0x30, 0x05]].concat(),
            &mut fw,
            &mut rp,
            &mut ds,
        )
        .unwrap();
        assert_eq!(rp, vec![[0x50, 0x02, 0, 77]]);
        f.reset_stream();
        rp.clear();
        f.feed(&[0x62, 0x02, 0, 77], &mut fw, &mut rp, &mut ds)
            .unwrap();
        assert_eq!(
            rp,
            vec![[0x70, 0x02, 0, 77]],
            "the PUBREL is answered, not forwarded"
        );
        assert_eq!(fw, vec![0x30, 0x05]);
    }

    #[test]
    fn replies_go_between_client_packets_never_inside_one() {
        let a = publish(1, 1, "up/a", 40);
        let b = publish(1, 2, "up/b", 40);
        let stream = [&a[..], &b[..], &[0xc0, 0x00][..]].concat();
        for chunk in [1, 5, 13, 64, stream.len()] {
            let mut bounds = Boundaries::default();
            let mut ends = Vec::new();
            let mut offset = 0;
            for c in stream.chunks(chunk) {
                if let Some(at) = bounds.feed(c).unwrap() {
                    ends.push(offset + at);
                }
                offset += c.len();
            }
            assert!(bounds.at_boundary());
            // Every reported boundary is the end of a packet.
            let packet_ends = [a.len(), a.len() + b.len(), stream.len()];
            assert!(
                ends.iter().all(|e| packet_ends.contains(e)),
                "chunk {chunk}: {ends:?}"
            );
            assert_eq!(ends.last(), Some(&stream.len()));
        }
        let mut bounds = Boundaries::default();
        bounds.feed(&a[..10]).unwrap();
        assert!(!bounds.at_boundary());
    }

    #[test]
    fn the_guard_binds_again_in_an_existing_state_directory() {
        let dir = std::env::temp_dir().join(format!("guard-test-{}", std::process::id()));
        let path = socket_path(&dir, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let broker = BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1,
            };
            let metrics = Arc::new(Metrics::new());
            for _ in 0..2 {
                let g = Guard::bind(
                    path.clone(),
                    broker.clone(),
                    100,
                    "s".into(),
                    metrics.clone(),
                );
                assert!(g.is_ok(), "a restart binds again: {:?}", g.err());
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_malformed_length_is_an_error() {
        let mut f = InboundFilter::new(100);
        let r = f.feed(
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            &mut Vec::new(),
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(r, Err(Malformed));
    }
}
