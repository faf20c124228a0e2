//! Serial sensor nodes: writes one of the three wire formats into a
//! pseudo-terminal (or a given device), at a set rate, with optional faults
//! injected and a simulated unplug.
//!
//! With `--pty LINK`, the simulator opens a pty pair, puts it in raw mode
//! and makes `LINK` a symbolic link to the slave side, as udev makes
//! `/dev/serial/by-id/...` links; the gateway opens `LINK`. An unplug closes
//! the pair and removes the link; a re-plug opens a new pair and points the
//! link at it. Every fault is counted, so a test can compare the gateway's
//! counters with exactly what was done to the stream.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sensor_gateway::wire::frame::{self, ChannelReading, Frame};
use sensor_gateway::wire::line;
use serde::Serialize;

/// The wire format to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    Line,
    Json,
    Frame,
}

/// Channel names of the text formats; `frame` numbers channels instead.
pub const CHANNEL_NAMES: [&str; 4] = ["temp", "vib", "current", "pressure"];

/// What to emit and how to damage it.
#[derive(Debug, Clone)]
pub struct SerialOptions {
    pub format: WireFormat,
    /// Create a pty and link it here.
    pub pty_link: Option<PathBuf>,
    /// Or write to this existing device (no unplug possible).
    pub device: Option<PathBuf>,
    /// Frames per second, over all nodes.
    pub rate: f64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub nodes: u16,
    pub channels: u8,
    /// Send the node's uptime with each frame.
    pub uptime: bool,
    /// Corrupt every k-th frame (a flipped bit or a truncation, alternating).
    pub corrupt_every: Option<u64>,
    /// Send a burst of noise (then a delimiter) before every k-th frame.
    pub noise_every: Option<u64>,
    /// Send an over-long run of bytes before every k-th frame.
    pub oversize_every: Option<u64>,
    pub oversize_bytes: usize,
    /// Unplug after this long, for `unplug_for`.
    pub unplug_after: Option<Duration>,
    pub unplug_for: Duration,
    /// Nodes restart (sequence and uptime from zero) after this many frames.
    pub reboot_after: Option<u64>,
    pub seed: u64,
}

impl Default for SerialOptions {
    fn default() -> Self {
        Self {
            format: WireFormat::Frame,
            pty_link: None,
            device: None,
            rate: 100.0,
            count: None,
            duration: None,
            nodes: 1,
            channels: 2,
            uptime: true,
            corrupt_every: None,
            noise_every: None,
            oversize_every: None,
            oversize_bytes: 2048,
            unplug_after: None,
            unplug_for: Duration::from_secs(1),
            reboot_after: None,
            seed: 7,
        }
    }
}

/// What was sent, for comparison with the gateway's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SerialStats {
    /// Frames generated (sequence numbers used).
    pub frames: u64,
    /// Frames written undamaged.
    pub intact: u64,
    /// Channel readings in the intact frames.
    pub readings: u64,
    pub corrupted: u64,
    pub noise_bursts: u64,
    pub oversize: u64,
    /// Frames generated while unplugged (never written).
    pub lost_unplugged: u64,
    pub unplugs: u64,
    pub reboots: u64,
}

/// One side of the link the simulator writes to.
struct Link {
    master: File,
    /// The slave side, kept open so that its raw mode and buffer persist and
    /// so that [`Link::drain`] can see what the reader has not read yet.
    slave: Option<OwnedFd>,
}

impl Link {
    fn open(opts: &SerialOptions) -> anyhow::Result<Link> {
        if let Some(link) = &opts.pty_link {
            let (master, slave, name) = open_pty()?;
            let tmp = link.with_extension("new");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&name, &tmp)
                .with_context(|| format!("cannot create link {}", tmp.display()))?;
            std::fs::rename(&tmp, link)
                .with_context(|| format!("cannot create link {}", link.display()))?;
            Ok(Link {
                master,
                slave: Some(slave),
            })
        } else if let Some(dev) = &opts.device {
            let master = std::fs::OpenOptions::new()
                .write(true)
                .open(dev)
                .with_context(|| format!("cannot open {}", dev.display()))?;
            Ok(Link {
                master,
                slave: None,
            })
        } else {
            anyhow::bail!("give --pty LINK or --device PATH")
        }
    }

    /// Waits (bounded) until the reader has taken every byte written. The
    /// kernel moves bytes from the pty's buffer into the reader's queue
    /// asynchronously, so an empty queue counts only when it stays empty
    /// for 100 ms.
    fn drain(&self, within: Duration) {
        let Some(slave) = &self.slave else { return };
        let deadline = Instant::now() + within;
        let mut empty_checks = 0;
        while Instant::now() < deadline && empty_checks < 5 {
            match rustix::io::ioctl_fionread(slave.as_fd()) {
                Ok(0) => empty_checks += 1,
                Ok(_) => empty_checks = 0,
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Opens a pty pair in raw mode: (master, slave, slave path).
fn open_pty() -> anyhow::Result<(File, OwnedFd, PathBuf)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).context("cannot open a pty")?;
    grantpt(&master).context("grantpt")?;
    unlockpt(&master).context("unlockpt")?;
    let name = ptsname(&master, Vec::new()).context("ptsname")?;
    let path = PathBuf::from(name.to_string_lossy().into_owned());
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .into();
    let mut t = rustix::termios::tcgetattr(&slave).context("tcgetattr")?;
    t.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)
        .context("tcsetattr")?;
    Ok((File::from(master), slave, path))
}

use std::os::unix::fs::OpenOptionsExt;

/// The value of channel `c` of node `n` at `t` seconds: plausible plant
/// signals (temperature, vibration, current, pressure).
pub fn value(n: u16, c: u8, t: f64, rng: &mut impl Rng) -> f32 {
    let base = [45.0, 1.2, 12.0, 4.2][usize::from(c) % 4] + f64::from(n) * 0.2;
    let swing = [0.5, 0.3, 2.0, 0.1][usize::from(c) % 4];
    (base + swing * (t / 10.0 + f64::from(c)).sin() + swing * 0.2 * crate::signal::gaussian(rng))
        as f32
}

/// Encodes one frame in `format`; text formats end with `\r\n` / `\n`.
pub fn encode(
    format: WireFormat,
    node: u16,
    seq: u32,
    uptime: Option<u32>,
    values: &[f32],
) -> Vec<u8> {
    match format {
        WireFormat::Frame => {
            let mut readings = heapless::Vec::<ChannelReading, { frame::MAX_CHANNELS }>::new();
            for (c, v) in values.iter().enumerate().take(frame::MAX_CHANNELS) {
                let _ = readings.push(ChannelReading {
                    channel: c as u8,
                    value: *v,
                });
            }
            let f = Frame {
                node,
                seq,
                uptime_ms: uptime,
                readings,
            };
            let mut out = [0u8; frame::MAX_ENCODED_BYTES + 1];
            // Every frame fits the stated maximum (tested in the codec).
            let n = frame::encode(&f, &mut out).unwrap_or(0);
            out[..n].to_vec()
        }
        WireFormat::Line => {
            let mut body = format!("node={node},seq={seq}");
            if let Some(u) = uptime {
                body.push_str(&format!(",t={u}"));
            }
            for (c, v) in values.iter().enumerate() {
                body.push_str(&format!(",{}={v}", channel_name(c)));
            }
            format!("${body}*{:02X}\r\n", line::checksum(&body)).into_bytes()
        }
        WireFormat::Json => {
            let mut s = format!("{{\"node\":{node},\"seq\":{seq}");
            if let Some(u) = uptime {
                s.push_str(&format!(",\"t\":{u}"));
            }
            for (c, v) in values.iter().enumerate() {
                s.push_str(&format!(",\"{}\":{v}", channel_name(c)));
            }
            s.push_str("}\n");
            s.into_bytes()
        }
    }
}

/// The name of channel `c` in the text formats.
pub fn channel_name(c: usize) -> String {
    CHANNEL_NAMES
        .get(c)
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| format!("c{c}"))
}

/// Damages an encoded frame so that the receiver must drop exactly it.
fn corrupt(format: WireFormat, bytes: &mut Vec<u8>, truncate: bool, rng: &mut impl Rng) {
    match (format, truncate) {
        (WireFormat::Frame, false) => {
            let i = rng.random_range(0..bytes.len() - 1);
            let x = loop {
                let x: u8 = rng.random_range(1..=255);
                if bytes[i] ^ x != 0 {
                    break x;
                }
            };
            bytes[i] ^= x;
        }
        (WireFormat::Frame, true) => {
            let keep = (bytes.len() - 1) / 2;
            bytes.truncate(keep);
            bytes.push(0);
        }
        (WireFormat::Line, false) => {
            // Flip the low bit of a digit before the checksum: the checksum
            // no longer matches, and the byte stays printable.
            let star = bytes
                .iter()
                .rposition(|&b| b == b'*')
                .unwrap_or(bytes.len());
            let digits: Vec<usize> = (0..star).filter(|&i| bytes[i].is_ascii_digit()).collect();
            let i = digits[rng.random_range(0..digits.len())];
            bytes[i] ^= 0x01;
        }
        (WireFormat::Line, true) => {
            // Cut inside the checksum: "*H" is never a valid ending.
            let star = bytes.iter().rposition(|&b| b == b'*').unwrap_or(0);
            bytes.truncate(star + 2);
            bytes.push(b'\n');
        }
        (WireFormat::Json, _) => {
            // JSON has no checksum: only a cut is detectable.
            let keep = rng.random_range(1..bytes.len() - 2);
            bytes.truncate(keep);
            bytes.push(b'\n');
        }
    }
}

fn noise(format: WireFormat, rng: &mut impl Rng) -> Vec<u8> {
    let n = rng.random_range(1..=16);
    let mut v: Vec<u8> = match format {
        WireFormat::Frame => (0..n).map(|_| rng.random_range(1..=255)).collect(),
        // Bytes that cannot start UTF-8 text: never a valid line.
        _ => (0..n).map(|_| rng.random_range(0x80..=0xBF)).collect(),
    };
    v.push(if format == WireFormat::Frame {
        0
    } else {
        b'\n'
    });
    v
}

/// Runs until the count or duration is reached or `stop` is set.
pub fn run_blocking(opts: &SerialOptions, stop: Arc<AtomicBool>) -> anyhow::Result<SerialStats> {
    anyhow::ensure!(opts.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(opts.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(
        usize::from(opts.channels) <= frame::MAX_CHANNELS,
        "at most {} channels",
        frame::MAX_CHANNELS
    );
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let mut link = Some(Link::open(opts)?);
    let mut stats = SerialStats::default();
    let start = Instant::now();
    let mut boot = vec![start; usize::from(opts.nodes)];
    let mut seqs = vec![0u32; usize::from(opts.nodes)];
    let mut since_boot = 0u64;
    let mut unplugged_until: Option<Instant> = None;
    let mut unplug_done = false;
    let period = Duration::from_secs_f64(1.0 / opts.rate);
    let mut next = start;
    let mut i = 0u64;
    let mut last_corrupted = false;
    loop {
        let done = stop.load(Ordering::Relaxed)
            || opts.count.is_some_and(|c| i >= c)
            || opts.duration.is_some_and(|d| start.elapsed() >= d);
        // A damaged last frame shows as a sequence gap only once a frame
        // follows it: end with an intact one.
        if done && !(last_corrupted && link.is_some()) {
            break;
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += period;
        // Unplug and re-plug.
        if let (Some(after), false) = (opts.unplug_after, unplug_done) {
            if start.elapsed() >= after && unplugged_until.is_none() {
                if let Some(l) = link.take() {
                    l.drain(Duration::from_secs(5));
                }
                if let Some(p) = &opts.pty_link {
                    let _ = std::fs::remove_file(p);
                }
                stats.unplugs += 1;
                unplugged_until = Some(Instant::now() + opts.unplug_for);
                tracing::info!("serial node unplugged");
            }
        }
        if let Some(until) = unplugged_until {
            if Instant::now() >= until {
                link = Some(Link::open(opts)?);
                unplugged_until = None;
                unplug_done = true;
                tracing::info!("serial node plugged in again");
            }
        }
        if opts.reboot_after.is_some_and(|r| since_boot >= r) {
            since_boot = 0;
            seqs.iter_mut().for_each(|s| *s = 0);
            boot.iter_mut().for_each(|b| *b = Instant::now());
            stats.reboots += 1;
        }
        let n = (i % u64::from(opts.nodes)) as usize;
        i += 1;
        since_boot += 1;
        let seq = seqs[n];
        seqs[n] = seq.wrapping_add(1);
        stats.frames += 1;
        let uptime = opts
            .uptime
            .then(|| boot[n].elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
        let t = start.elapsed().as_secs_f64();
        let values: Vec<f32> = (0..opts.channels)
            .map(|c| value(n as u16 + 1, c, t, &mut rng))
            .collect();
        let mut bytes = encode(opts.format, n as u16 + 1, seq, uptime, &values);
        let Some(l) = link.as_mut() else {
            stats.lost_unplugged += 1;
            continue;
        };
        let mut out = Vec::new();
        if !done && opts.noise_every.is_some_and(|k| i % k == 0) {
            out.extend(noise(opts.format, &mut rng));
            stats.noise_bursts += 1;
        }
        if !done && opts.oversize_every.is_some_and(|k| i % k == 0) {
            let fill = if opts.format == WireFormat::Frame {
                0x55
            } else {
                b'x'
            };
            out.extend(std::iter::repeat_n(fill, opts.oversize_bytes));
            out.push(if opts.format == WireFormat::Frame {
                0
            } else {
                b'\n'
            });
            stats.oversize += 1;
        }
        last_corrupted = !done && opts.corrupt_every.is_some_and(|k| i % k == 0);
        if last_corrupted {
            let truncate = stats.corrupted % 2 == 1;
            corrupt(opts.format, &mut bytes, truncate, &mut rng);
            stats.corrupted += 1;
        } else {
            stats.intact += 1;
            stats.readings += u64::from(opts.channels);
        }
        if opts.format == WireFormat::Frame {
            // A leading delimiter: noise before the frame costs only itself.
            out.push(0);
        }
        out.extend(bytes);
        l.master
            .write_all(&out)
            .context("write to the serial link")?;
    }
    if let Some(l) = &link {
        l.drain(Duration::from_secs(10));
    }
    Ok(stats)
}

/// Removes the link (at exit).
pub fn remove_link(path: &Path) {
    let _ = std::fs::remove_file(path);
}
