//! The `sensor-gateway` binary: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sensor_gateway::config::Config;
use sensor_gateway::logging::{Journald, LogFormat};
use sensor_gateway::metrics::Metrics;
use sensor_gateway::runtime::RunOptions;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sensor-gateway",
    version,
    about = "Edge gateway: sensor readings in, windowed summaries upstream over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Write a Prometheus text snapshot of the metrics here, every
        /// gateway.metrics_interval and at exit.
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
        /// How log lines look on standard error: `auto` is `journald` (no
        /// timestamps, syslog priority prefixes) under systemd, else `text`.
        #[arg(long, value_enum, default_value = "auto")]
        log_format: LogFormat,
    },
    /// Validate a configuration file and print the effective configuration.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a systemd drop-in that allows exactly the addresses the
    /// config's brokers need (`IPAddressAllow=`; host names are resolved now).
    SystemdIpAllow {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Inspect the durable buffer of a state directory.
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
}

#[derive(Subcommand)]
enum BufferCommand {
    /// Records, bytes and oldest age per lane, and the outage time left.
    Status(BufferTarget),
    /// Check every segment (like fsck); exit 1 on damage.
    Verify(BufferTarget),
}

#[derive(clap::Args)]
struct BufferTarget {
    /// The gateway's state directory.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "config",
        required_unless_present = "config"
    )]
    state_dir: Option<PathBuf>,
    /// Or: the configuration file that names it.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl BufferTarget {
    fn resolve(&self) -> Result<(PathBuf, Option<u64>), String> {
        match (&self.state_dir, &self.config) {
            (Some(d), _) => Ok((d.clone(), None)),
            (None, Some(c)) => Config::load(c)
                .map(|c| (c.gateway.state_dir, Some(c.buffer.max_disk_bytes)))
                .map_err(|e| e.to_string()),
            (None, None) => Err("give --state-dir or --config".into()),
        }
    }
}

fn buffer_command(cmd: BufferCommand) -> ExitCode {
    use sensor_gateway::buffer::inspect;
    let (target, verify) = match &cmd {
        BufferCommand::Status(t) => (t, false),
        BufferCommand::Verify(t) => (t, true),
    };
    let (dir, max) = match target.resolve() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !inspect::root(&dir).is_dir() {
        eprintln!(
            "{} holds no buffer (no {}/ directory)",
            dir.display(),
            inspect::root(&dir).display()
        );
        return ExitCode::from(2);
    }
    if verify {
        let damage = inspect::verify(&dir);
        for d in &damage {
            println!("{}: {}", d.file.display(), d.what);
        }
        if inspect::is_damaged(&damage) {
            println!("damaged: the gateway salvages valid records and quarantines the rest at its next start");
            ExitCode::FAILURE
        } else {
            println!("ok: every segment is intact");
            ExitCode::SUCCESS
        }
    } else {
        let lanes = inspect::status(&dir);
        print!(
            "{}",
            inspect::render_status(&lanes, sensor_gateway::now_ms(), max)
        );
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Buffer { command } => buffer_command(command),
        Command::SystemdIpAllow { config: path } => match Config::load(&path) {
            Ok(c) => {
                print!(
                    "{}",
                    sensor_gateway::supervisor::ip_allow_dropin(&c, &path, |host, port| {
                        use std::net::ToSocketAddrs;
                        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
                    })
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.render_effective());
                eprintln!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            metrics_file,
            log_format,
        } => {
            init_logging(log_format);
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    // One log record per mistake: each carries its own
                    // priority under journald.
                    for line in e.lines() {
                        tracing::error!("{line}");
                    }
                    return ExitCode::from(2);
                }
            };
            match run(config, RunOptions { metrics_file }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `st_dev` and `st_ino` are not `u64` on every target.
    #[allow(clippy::unnecessary_cast)]
    let stderr_ids = rustix::fs::fstat(std::io::stderr())
        .ok()
        .map(|st| (st.st_dev as u64, st.st_ino as u64));
    let journal = std::env::var("JOURNAL_STREAM").ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.resolve(journal.as_deref(), stderr_ids) {
        LogFormat::Journald => builder
            .with_ansi(false)
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false),
            ))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Auto | LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    // Two worker threads: one core for the processing task, one for the
    // network, which is all a Raspberry-Pi-class device should give us.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signals(shutdown.clone()));
        let result = sensor_gateway::run(config, options, Arc::new(Metrics::new()), shutdown).await;
        signals.abort();
        result
    })
}

/// The first SIGTERM or SIGINT starts a graceful shutdown; a second one exits
/// at once.
async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop the gateway with SIGKILL.");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Shutting down: flushing windows and delivering what is queued.");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("Second signal: exiting now.");
    std::process::exit(130);
}
