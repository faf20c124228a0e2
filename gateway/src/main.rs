//! The `sensor-gateway` binary: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sensor_gateway::config::{Config, ConfigError};
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
    },
    /// Validate a configuration file and print the effective configuration.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        } => {
            init_logging();
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e @ ConfigError::Invalid { .. }) | Err(e @ ConfigError::Io { .. }) => {
                    tracing::error!("{e}");
                    eprintln!("{e}");
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
