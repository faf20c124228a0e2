//! The one-command demo: a simulated plant, two embedded brokers, the gateway,
//! an uplink outage, and a final tally that shows nothing was lost.
//!
//! Layout:
//!
//! ```text
//! sensor-sim --MQTT--> plant broker --> sensor-gateway --uplink--> upstream broker --> watcher
//!  (child process)      (child process)   (in this process)   (cuttable relay)   (child process)
//! ```

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sensor_gateway::config::{BrokerAddr, Config, SourceConfig};
use sensor_gateway::metrics::Metrics;
use sensor_gateway::reject::Reject;
use sensor_gateway::runtime::RunOptions;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::publish::{self, PublishOptions, PublishStats};
use crate::scenario::Scenario;
use crate::serial::{SerialOptions, WireFormat};
use crate::uplink::Uplink;

/// The gateway configuration the demo runs (broker addresses are replaced).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");
/// The simulated plant of the demo.
pub const DEMO_SCENARIO: &str = include_str!("../../configs/sim-demo.toml");

/// Demo timing, scaled from the total duration.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub outage_start: Duration,
    pub outage_end: Duration,
    pub stop: Duration,
}

impl Timeline {
    pub fn scaled(total: Duration) -> Timeline {
        Timeline {
            outage_start: total.mul_f64(0.3),
            outage_end: total.mul_f64(0.6),
            stop: total.mul_f64(0.85),
        }
    }
}

/// A broker in a child process, so that it can really stop.
struct BrokerProcess {
    child: Child,
}

impl BrokerProcess {
    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn start(exe: &Path, addr: SocketAddr) -> anyhow::Result<BrokerProcess> {
        let child = Command::new(exe)
            .arg("broker")
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", "off")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} broker", exe.display()))?;
        wait_for_port(addr).await?;
        Ok(BrokerProcess { child })
    }
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

pub async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "nothing listens on {addr} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What the watcher saw upstream.
#[derive(Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    messages: u64,
    subscriptions: u64,
    /// Sensors whose first anomaly was printed.
    anomalous: BTreeSet<String>,
}

/// Runs the demo for about `total`; returns whether nothing was lost.
pub async fn run(total: Duration) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("cannot find the sensor-sim executable")?;
    let timeline = Timeline::scaled(total);
    let plant_addr = free_port()?;
    let upstream_addr = free_port()?;
    println!("== sensor-gateway demo ({}s)", total.as_secs());
    let _plant = BrokerProcess::start(&exe, plant_addr).await?;
    let mut upstream = BrokerProcess::start(&exe, upstream_addr).await?;
    let uplink = Uplink::start("127.0.0.1:0".parse()?, upstream_addr).await?;
    println!("   plant broker     mqtt://{plant_addr}  (embedded rumqttd)");
    println!("   upstream broker  mqtt://{upstream_addr}  (embedded rumqttd), reached through an uplink on {}", uplink.listen);

    let state_dir = tempfile::tempdir()?;
    let mut config = Config::parse(DEMO_CONFIG, Path::new("configs/demo.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let node_link = state_dir.path().join("ttyNODE");
    for s in &mut config.sources {
        match s {
            SourceConfig::Mqtt(m) => {
                m.broker = BrokerAddr {
                    host: "127.0.0.1".into(),
                    port: plant_addr.port(),
                }
            }
            SourceConfig::Serial(p) => p.device = node_link.clone(),
        }
    }
    config.upstream.brokers = vec![BrokerAddr {
        host: "127.0.0.1".into(),
        port: uplink.listen.port(),
    }];
    config.gateway.state_dir = state_dir.path().to_owned();
    let scenario = Scenario::parse(DEMO_SCENARIO)?;
    println!(
        "   simulator        {} machines x {} sensors, {} readings/s, {:.1}% faulty messages",
        scenario.lines * scenario.machines_per_line,
        scenario.sensors.len(),
        scenario.rate,
        scenario.fault_probability * 100.0
    );
    println!(
        "   serial node      1 node x 2 channels, 50 frames/s as binary frames on a pty ({}), every 40th frame damaged, noise every 50th, unplugged for 2s at {}s",
        node_link.display(),
        timeline.outage_start.as_secs() / 2
    );
    println!(
        "   timeline         uplink cut at {}s, restored at {}s, simulator stops at {}s\n",
        timeline.outage_start.as_secs(),
        timeline.outage_end.as_secs(),
        timeline.stop.as_secs()
    );

    // The watcher: an upstream consumer that prints and records summaries.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watcher = tokio::spawn(watch(upstream_addr, seen.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let metrics = Arc::new(Metrics::new());
    let gw_stop = CancellationToken::new();
    let gateway = tokio::spawn(sensor_gateway::run(
        config,
        RunOptions::default(),
        metrics.clone(),
        gw_stop.clone(),
    ));

    let stats = Arc::new(PublishStats::default());
    let sim_stop = CancellationToken::new();
    let sim = {
        let (scenario, stats, stop) = (scenario.clone(), stats.clone(), sim_stop.clone());
        tokio::spawn(async move {
            let opts = PublishOptions {
                host: "127.0.0.1".into(),
                port: plant_addr.port(),
                client_id: "sensor-sim-demo".into(),
                qos: QoS::AtLeastOnce,
                count: None,
                duration: None,
            };
            publish::publish(&scenario, &opts, stats, stop).await
        })
    };

    let serial_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let serial_node = {
        let opts = SerialOptions {
            format: WireFormat::Frame,
            pty_link: Some(node_link.clone()),
            rate: 50.0,
            nodes: 1,
            channels: 2,
            corrupt_every: Some(40),
            noise_every: Some(50),
            unplug_after: Some(timeline.outage_start / 2),
            unplug_for: Duration::from_secs(2),
            ..Default::default()
        };
        let stop = serial_stop.clone();
        tokio::task::spawn_blocking(move || crate::serial::run_blocking(&opts, stop))
    };

    let start = Instant::now();
    let mut status = tokio::time::interval(Duration::from_secs(3));
    let mut outage = false;
    let mut restored = false;
    let mut peak_backlog = 0;
    loop {
        status.tick().await;
        let t = start.elapsed();
        if !outage && t >= timeline.outage_start {
            outage = true;
            uplink.cut();
            upstream.stop().await;
            println!("\n>> {:>3}s  OUTAGE: the uplink is cut and the upstream broker is killed; the gateway keeps aggregating and buffers summaries on disk\n", t.as_secs());
        }
        if outage && !restored && t >= timeline.outage_end {
            restored = true;
            upstream = BrokerProcess::start(&exe, upstream_addr).await?;
            let subscribed = |s: &Arc<Mutex<Seen>>| s.lock().map(|s| s.subscriptions).unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while subscribed(&seen) < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            uplink.restore();
            println!("\n>> {:>3}s  RESTORED: upstream broker restarted, uplink back; the backlog drains, oldest first\n", t.as_secs());
        }
        peak_backlog = peak_backlog.max(metrics.upstream_queue_records.get());
        println!(
            "   [{:>3}s] readings published {:>6} | gateway: accepted {:>6} rejected {:>4} summaries {:>4} delivered {:>4} queued {:>3} | upstream {}",
            t.as_secs(),
            stats.published.load(Ordering::Relaxed),
            metrics.readings_accepted.get(),
            metrics.rejected_total(),
            metrics.summaries_produced.get(),
            metrics.upstream_acked.get(),
            metrics.upstream_queue_records.get(),
            if uplink.is_up() { "up" } else { "DOWN" },
        );
        if t >= timeline.stop {
            break;
        }
    }

    println!(
        "\n>> stopping the simulator, then the gateway (it flushes open windows and delivers them)"
    );
    sim_stop.cancel();
    sim.await??;
    serial_stop.store(true, Ordering::Relaxed);
    let serial = serial_node.await??;
    // Let the last readings cross the plant broker before the gateway stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw_stop.cancel();
    gateway.await??;
    tokio::time::sleep(Duration::from_millis(800)).await;
    watcher.abort();
    let _ = upstream.child.kill().await;

    let published = stats.published.load(Ordering::Relaxed);
    let faults = stats.faults.load(Ordering::Relaxed);
    let accepted = metrics.readings_accepted.get();
    let received = metrics.messages_received.get();
    let produced = metrics.records_produced.get();
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("watcher state poisoned"))?;
    let missing: Vec<u64> = (1..=produced).filter(|s| !seen.seqs.contains(s)).collect();
    println!("\n== tally");
    println!(
        "   readings published by the simulator     {published} ({faults} deliberately faulty)"
    );
    println!("   messages received by the gateway        {received}");
    println!("   readings accepted into windows          {accepted}");
    println!(
        "   readings rejected, with reason          {}",
        metrics.rejected_total()
    );
    for r in Reject::ALL {
        let n = metrics.rejected(r);
        if n > 0 {
            println!("       {:<28} {n}", r.name());
        }
    }
    println!(
        "   summaries produced by the gateway       {}",
        metrics.summaries_produced.get()
    );
    println!(
        "   alarms raised / cleared                 {} / {}",
        metrics.alarms_raised.get(),
        metrics.alarms_cleared.get()
    );
    println!(
        "   anomalies raised (drift, z-score)       {}",
        metrics.anomalies_raised.get()
    );
    println!("   records produced (summaries + events)   {produced}");
    println!("   largest backlog during the outage       {peak_backlog}");
    println!(
        "   records received upstream (unique)      {}",
        seen.seqs.len()
    );
    println!(
        "   duplicates dropped by sequence number   {}",
        seen.messages - seen.seqs.len() as u64
    );
    println!(
        "   records missing upstream                {}",
        missing.len()
    );
    let text = metrics.render_prometheus();
    let metric = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    let serial_frames = metric("gateway_serial_frames_total");
    let serial_readings = metric("gateway_serial_readings_total");
    let serial_dropped = metric("gateway_serial_dropped_total");
    let serial_lost = metric("gateway_serial_node_lost_frames_total");
    println!(
        "   serial frames sent by the node          {} ({} damaged, {} noise bursts, {} while unplugged)",
        serial.frames, serial.corrupted, serial.noise_bursts, serial.lost_unplugged
    );
    println!(
        "   serial frames accepted by the gateway   {serial_frames} ({serial_readings} readings)"
    );
    println!("   serial frames dropped, with reason      {serial_dropped}");
    println!("   serial frames lost (sequence gaps)      {serial_lost}");
    let serial_ok = serial_frames == serial.intact
        && serial_dropped >= serial.corrupted + serial.noise_bursts
        && serial_lost == serial.corrupted + serial.lost_unplugged;
    let ok = missing.is_empty()
        && serial_ok
        && received == published
        && accepted + metrics.rejected_total() == received + serial_readings;
    if ok {
        println!("\n   nothing lost: every reading is in a summary or counted with its reason, and every summary arrived.");
    } else {
        println!("\n   LOSS DETECTED: missing seqs {missing:?}");
    }
    Ok(ok)
}

async fn watch(addr: SocketAddr, seen: Arc<Mutex<Seen>>) {
    let mut opts = MqttOptions::new("demo-watcher", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe("gateways/#", QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Ok(mut s) = seen.lock() {
                    s.subscriptions += 1;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // The gateway's status topic says whether it is alive; it
                // carries no record.
                if p.topic.ends_with("/status") {
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let seq = v["seq"].as_u64().unwrap_or(0);
                let kind = v["kind"].as_str().unwrap_or("");
                let fresh = match seen.lock() {
                    Ok(mut s) => {
                        s.messages += 1;
                        s.seqs.insert(seq)
                    }
                    Err(_) => return,
                };
                if fresh && kind == "alarm" {
                    println!(
                        "   ALARM    <- seq {:>4} {:<12} {:<40} {:<9} value={:>8} limit={}",
                        seq,
                        v["event"].as_str().unwrap_or("?"),
                        v["alarm_id"].as_str().unwrap_or("?"),
                        v["severity"].as_str().unwrap_or("?"),
                        v["value"]
                            .as_f64()
                            .map(|x| format!("{x:.3}"))
                            .unwrap_or_else(|| "-".into()),
                        v["limit"],
                    );
                } else if fresh
                    && kind == "anomaly"
                    && v["event"] == "raised"
                    && seen
                        .lock()
                        .map(|mut s| s.anomalous.insert(v["sensor"].to_string()))
                        .unwrap_or(false)
                {
                    println!(
                        "   ANOMALY  <- seq {:>4} {:<6} on {:<4} of {:<22} value={:>8.3} baseline={:.3} score={:.1}",
                        seq,
                        v["detector"].as_str().unwrap_or("?"),
                        v["feature"].as_str().unwrap_or("?"),
                        v["sensor"].as_str().unwrap_or("?"),
                        v["value"].as_f64().unwrap_or(f64::NAN),
                        v["baseline_mean"].as_f64().unwrap_or(f64::NAN),
                        v["score"].as_f64().unwrap_or(f64::NAN),
                    );
                } else if fresh
                    && kind == "summary"
                    && v["sensor"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("line1/m1/") || s.starts_with("line2/"))
                {
                    println!(
                        "   upstream <- seq {:>4} {:<22} n={:<3} mean={:>8.3} min={:>8.3} max={:>8.3}",
                        seq,
                        v["sensor"].as_str().unwrap_or("?"),
                        v["count"],
                        v["mean"].as_f64().unwrap_or(f64::NAN),
                        v["min"].as_f64().unwrap_or(f64::NAN),
                        v["max"].as_f64().unwrap_or(f64::NAN),
                    );
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
