//! A cuttable uplink: a TCP relay between the gateway and its upstream
//! broker. Cutting it closes every relayed connection and refuses new ones,
//! which is what a plant's WAN link going down looks like to the gateway.
//!
//! A [`LinkProfile`] makes it a cellular link: each direction is paced by
//! a token bucket, delayed by the one-way latency, held during stalls, and
//! every connection is closed at the reset times. The profile's arithmetic
//! lives in [`crate::link`]; this module only applies it to sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub use crate::link::LinkProfile;
use crate::link::{Schedule, TokenBucket};

/// Largest chunk read at once from either side.
const CHUNK_MAX: usize = 16 * 1024;

/// Handle to a running relay.
#[derive(Clone)]
pub struct Uplink {
    up: Arc<watch::Sender<bool>>,
    /// Bumped to close every relayed connection (a reset).
    resets: Arc<watch::Sender<u64>>,
    shared: Arc<Shared>,
    pub listen: SocketAddr,
}

/// What the relay carried so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Bytes delivered to the target (gateway to broker).
    pub bytes_up: u64,
    /// Bytes delivered back (broker to gateway).
    pub bytes_down: u64,
    /// Connections relayed to the target.
    pub connections: u64,
    /// Resets made, by the profile's schedule or by [`Uplink::reset`].
    pub resets: u64,
}

struct Shared {
    profile: LinkProfile,
    started: Instant,
    stalls: Mutex<Option<Schedule>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
}

impl Shared {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Returns once no stall is in progress.
    async fn stall_over(&self) {
        loop {
            let now = self.elapsed();
            let end = match self.stalls.lock() {
                Ok(mut s) => s.as_mut().and_then(|s| s.active(now)).map(|(_, end)| end),
                Err(_) => None,
            };
            match end {
                Some(end) => tokio::time::sleep(end.saturating_sub(now)).await,
                None => return,
            }
        }
    }
}

impl Uplink {
    /// Starts relaying from `listen` (port 0 picks one) to `target`, with
    /// no latency, no cap and no faults.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Uplink> {
        Uplink::start_with(listen, target, LinkProfile::default()).await
    }

    /// Starts relaying through a link shaped by `profile`.
    pub async fn start_with(
        listen: SocketAddr,
        target: SocketAddr,
        profile: LinkProfile,
    ) -> std::io::Result<Uplink> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let (tx, rx) = watch::channel(true);
        let (resets, _) = watch::channel(0u64);
        let reset_schedule = profile.resets();
        let shared = Arc::new(Shared {
            stalls: Mutex::new(profile.stalls()),
            profile,
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let uplink = Uplink {
            up: Arc::new(tx),
            resets: Arc::new(resets),
            shared: shared.clone(),
            listen,
        };
        tokio::spawn(relay(
            Some(listener),
            listen,
            target,
            rx,
            uplink.resets.clone(),
            shared.clone(),
        ));
        if let Some(schedule) = reset_schedule {
            tokio::spawn(reset_on_schedule(
                schedule,
                Arc::downgrade(&uplink.resets),
                shared,
            ));
        }
        Ok(uplink)
    }

    /// Cuts the link: existing connections are closed, new ones refused.
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    /// Restores the link.
    pub fn restore(&self) {
        let _ = self.up.send(true);
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Closes every relayed connection now; new ones are accepted (a
    /// cellular modem dropping its session).
    pub fn reset(&self) {
        reset(&self.resets, &self.shared);
    }

    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        LinkStats {
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
        }
    }
}

fn reset(resets: &watch::Sender<u64>, shared: &Shared) {
    shared.resets.fetch_add(1, Ordering::Relaxed);
    resets.send_modify(|n| *n += 1);
}

/// Resets at the profile's times while the uplink has a handle.
async fn reset_on_schedule(
    mut schedule: Schedule,
    resets: Weak<watch::Sender<u64>>,
    shared: Arc<Shared>,
) {
    loop {
        let wait = schedule.next_start().saturating_sub(shared.elapsed());
        tokio::time::sleep(wait).await;
        let Some(resets) = resets.upgrade() else {
            return;
        };
        if schedule.fired(shared.elapsed()) {
            reset(&resets, &shared);
        }
    }
}

async fn relay(
    mut listener: Option<TcpListener>,
    listen: SocketAddr,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
    resets: Arc<watch::Sender<u64>>,
    shared: Arc<Shared>,
) {
    loop {
        if !*state.borrow() {
            // Refuse connections while cut by not listening at all.
            listener = None;
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(listen).await {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            r = l.accept() => {
                if let Ok((client, _)) = r {
                    tokio::spawn(pipe(client, target, state.clone(), resets.subscribe(), shared.clone()));
                }
            }
            r = state.changed() => if r.is_err() { return },
        }
    }
}

async fn pipe(
    client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
    mut resets: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = shuttle(client_read, server_write, &shared, &shared.bytes_up);
    let down = shuttle(server_read, client_write, &shared, &shared.bytes_down);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = async {
            loop {
                let up = *state.borrow_and_update();
                if !up || state.changed().await.is_err() {
                    break;
                }
            }
        } => {}
        _ = resets.changed() => {}
    }
}

/// Carries one direction: reads at most a bucket's burst, waits for the
/// tokens and for any stall to end, and delivers after the latency.
async fn shuttle(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    delivered: &AtomicU64,
) {
    let profile = &shared.profile;
    let mut bucket = profile.rate_bps.map(|bps| {
        // About 50 ms worth of bytes, at least a small packet.
        let burst = (bps / 8 / 20).clamp(256, CHUNK_MAX as u64) as usize;
        TokenBucket::new(bps, burst, shared.elapsed())
    });
    let chunk = bucket.as_ref().map_or(CHUNK_MAX, TokenBucket::burst);
    let latency = profile.latency;
    // Chunks that passed the bucket, with the time they are due.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let read = async move {
        let mut buf = vec![0u8; chunk];
        loop {
            shared.stall_over().await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(b) = bucket.as_mut() {
                loop {
                    let now = shared.elapsed();
                    if b.try_take(n, now) {
                        break;
                    }
                    tokio::time::sleep(b.wait_for(n, now)).await;
                }
            }
            shared.stall_over().await;
            if tx
                .send((Instant::now() + latency, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
            delivered.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_shaped_link_carries_every_byte_in_order_and_counts_them() {
        let profile = LinkProfile {
            stall_every: Some(Duration::from_millis(100)),
            stall_for: Duration::from_millis(20),
            ..LinkProfile::cellular(2_000_000, Duration::from_millis(10))
        };
        let link = Uplink::start_with("127.0.0.1:0".parse().unwrap(), echo().await, profile)
            .await
            .expect("start");
        let sent: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stream = TcpStream::connect(link.listen).await.expect("connect");
        let (mut r, mut w) = stream.into_split();
        let data = sent.clone();
        let writer = tokio::spawn(async move { w.write_all(&data).await });
        let mut got = vec![0u8; sent.len()];
        r.read_exact(&mut got).await.expect("the echo");
        writer.await.expect("join").expect("write");
        assert_eq!(got, sent);
        // A chunk is counted just after it is written: the count may trail
        // the echo by a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stats = link.stats();
        while stats.bytes_down < 50_000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            stats = link.stats();
        }
        assert_eq!((stats.bytes_up, stats.bytes_down), (50_000, 50_000));
        assert_eq!(stats.connections, 1);
    }

    #[tokio::test]
    async fn a_reset_closes_the_connection_and_the_next_one_is_accepted() {
        let link = Uplink::start("127.0.0.1:0".parse().unwrap(), echo().await)
            .await
            .expect("start");
        let mut first = TcpStream::connect(link.listen).await.expect("connect");
        first.write_all(b"x").await.expect("write");
        let mut one = [0u8; 1];
        first.read_exact(&mut one).await.expect("echo");
        link.reset();
        let mut rest = Vec::new();
        let n = first.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "closed by the reset");
        let mut second = TcpStream::connect(link.listen)
            .await
            .expect("connect again");
        second.write_all(b"y").await.expect("write");
        second.read_exact(&mut one).await.expect("echo");
        assert_eq!(&one, b"y");
        assert_eq!(link.stats().resets, 1);
    }
}
