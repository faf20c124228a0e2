//! The `sensor-sim` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rumqttc::QoS;
use sensor_sim::publish::{self, PublishOptions, PublishStats};
use sensor_sim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sensor-sim",
    version,
    about = "Simulated plant machines for sensor-gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish a scenario's readings to an MQTT broker.
    Run {
        /// The scenario file (see configs/sim-*.toml).
        #[arg(short, long)]
        scenario: PathBuf,
        /// The broker, host:port.
        #[arg(short, long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Override the scenario's total rate (readings per second).
        #[arg(long)]
        rate: Option<f64>,
        /// Stop after this many readings.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long, e.g. "30s".
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// MQTT QoS of the publishes (0 or 1).
        #[arg(long, default_value_t = 1)]
        qos: u8,
        #[arg(long, default_value = "sensor-sim")]
        client_id: String,
    },
    /// Run an embedded MQTT broker (rumqttd) until killed.
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
    },
    /// Subscribe and count messages until the broker is idle: the floor of
    /// MQTT ingestion cost, for the end-to-end benchmark.
    Count {
        #[arg(short, long, default_value = "127.0.0.1:1883")]
        broker: String,
        #[arg(short, long, default_value = "#")]
        topic: String,
        /// Exit after this long without a message (once one arrived).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        idle: Duration,
    },
    /// Play serial sensor nodes: write a wire format into a pty (or a
    /// device) at a set rate, with optional faults and an unplug. Prints
    /// what was sent as one JSON line at the end.
    Serial {
        #[arg(long, value_enum, default_value = "frame")]
        format: sensor_sim::serial::WireFormat,
        /// Create a pseudo-terminal and make this path a link to it.
        #[arg(long, conflicts_with = "device")]
        pty: Option<PathBuf>,
        /// Write to this existing device instead (e.g. one end of a null-modem pair).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Frames per second, over all nodes.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long, default_value_t = 1)]
        nodes: u16,
        #[arg(long, default_value_t = 2)]
        channels: u8,
        /// Do not send node uptime.
        #[arg(long)]
        no_uptime: bool,
        /// Corrupt every k-th frame (bit flip or truncation, alternating).
        #[arg(long)]
        corrupt_every: Option<u64>,
        /// Send a noise burst before every k-th frame.
        #[arg(long)]
        noise_every: Option<u64>,
        /// Send an over-long run of bytes before every k-th frame.
        #[arg(long)]
        oversize_every: Option<u64>,
        /// Unplug the pty after this long...
        #[arg(long, value_parser = humantime::parse_duration)]
        unplug_after: Option<Duration>,
        /// ...for this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        unplug_for: Duration,
        /// Restart the nodes (sequence and uptime from zero) every N frames.
        #[arg(long)]
        reboot_after: Option<u64>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Relay TCP from --listen to --target through a simulated link
    /// (latency, bandwidth cap, stalls, resets) until killed. Prints what it
    /// carried when it stops.
    Uplink {
        #[arg(long, default_value = "127.0.0.1:1884")]
        listen: SocketAddr,
        #[arg(long)]
        target: SocketAddr,
        /// One-way latency added in each direction, e.g. "300ms".
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        latency: Duration,
        /// Bandwidth cap in each direction, in bit/s ("64k", "1.5M").
        #[arg(long, value_parser = sensor_sim::link::parse_rate)]
        rate: Option<u64>,
        /// A stall (nothing moves, connections stay open) about this often...
        #[arg(long, value_parser = humantime::parse_duration)]
        stall_every: Option<Duration>,
        /// ...lasting about this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        stall_for: Duration,
        /// Close every relayed connection about this often.
        #[arg(long, value_parser = humantime::parse_duration)]
        reset_every: Option<Duration>,
        /// Seed of the stall and reset times.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The complete demo: simulated plant, brokers, the gateway, an uplink
    /// outage and a tally. Needs nothing installed.
    Demo {
        /// Total length of the demo, e.g. "60s".
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        duration: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Cmd::Demo { .. } => "error,sensor_gateway::upstream=warn,sensor_sim=info",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .with_context(|| format!("`{s}` is not host:port"))?;
    Ok((
        h.to_owned(),
        p.parse().with_context(|| format!("`{p}` is not a port"))?,
    ))
}

fn run(cmd: Cmd) -> anyhow::Result<bool> {
    if let Cmd::Serial {
        format,
        pty,
        device,
        rate,
        count,
        duration,
        nodes,
        channels,
        no_uptime,
        corrupt_every,
        noise_every,
        oversize_every,
        unplug_after,
        unplug_for,
        reboot_after,
        seed,
    } = cmd
    {
        let opts = sensor_sim::serial::SerialOptions {
            format,
            pty_link: pty.clone(),
            device,
            rate,
            count,
            duration,
            nodes,
            channels,
            uptime: !no_uptime,
            corrupt_every,
            noise_every,
            oversize_every,
            unplug_after,
            unplug_for,
            reboot_after,
            seed,
            ..Default::default()
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let worker = std::thread::spawn(move || sensor_sim::serial::run_blocking(&opts, s));
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let wait = async {
                while !worker.is_finished() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = wait => {}
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            anyhow::Ok(())
        })?;
        let stats = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the serial writer panicked"))??;
        if let Some(p) = &pty {
            sensor_sim::serial::remove_link(p);
        }
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(true);
    }
    if let Cmd::Broker { listen } = cmd {
        sensor_sim::broker::run_blocking(listen)?;
        return Ok(true);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::Run {
                scenario,
                broker,
                rate,
                count,
                duration,
                qos,
                client_id,
            } => {
                let mut scenario = Scenario::load(&scenario)?;
                if let Some(r) = rate {
                    anyhow::ensure!(r > 0.0, "--rate must be positive");
                    scenario.rate = r;
                }
                let (host, port) = split_host_port(&broker)?;
                let opts = PublishOptions {
                    host,
                    port,
                    client_id,
                    qos: if qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                    count,
                    duration,
                };
                let stats = Arc::new(PublishStats::default());
                let cancel = CancellationToken::new();
                let c = cancel.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    c.cancel();
                });
                let started = std::time::Instant::now();
                publish::publish(&scenario, &opts, stats.clone(), cancel).await?;
                let n = stats.published.load(std::sync::atomic::Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "published={n} faults={} seconds={secs:.2} rate={:.0}",
                    stats.faults.load(std::sync::atomic::Ordering::Relaxed),
                    n as f64 / secs.max(1e-9)
                );
                Ok(true)
            }
            Cmd::Count {
                broker,
                topic,
                idle,
            } => {
                let (host, port) = split_host_port(&broker)?;
                let n = sensor_sim::publish::count(&host, port, &topic, idle).await?;
                println!("received={n}");
                Ok(true)
            }
            Cmd::Demo { duration } => sensor_sim::demo::run(duration).await,
            Cmd::Uplink {
                listen,
                target,
                latency,
                rate,
                stall_every,
                stall_for,
                reset_every,
                seed,
            } => {
                let profile = sensor_sim::link::LinkProfile {
                    latency,
                    rate_bps: rate,
                    stall_every,
                    stall_for,
                    reset_every,
                    seed,
                };
                let uplink =
                    sensor_sim::uplink::Uplink::start_with(listen, target, profile).await?;
                tracing::info!(listen = %uplink.listen, %target, "relaying");
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                let s = uplink.stats();
                println!(
                    "bytes_up={} bytes_down={} connections={} resets={}",
                    s.bytes_up, s.bytes_down, s.connections, s.resets
                );
                Ok(true)
            }
            Cmd::Broker { .. } | Cmd::Serial { .. } => Ok(true),
        }
    })
}
