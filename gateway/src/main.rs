//! The `sensor-gateway` binary: command line, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sensor_gateway::config::Config;
use sensor_gateway::logging::{Journald, LogFormat};
use sensor_gateway::metrics::Metrics;
use sensor_gateway::reload::ReloadTrigger;
use sensor_gateway::runtime::RunOptions;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
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
        /// Write the process id here at start (atomically) and remove it at
        /// a clean exit, for `reload --pid-file`.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
    },
    /// Make the running gateway reload its configuration (SIGHUP): sensors
    /// whose rules did not change keep their windows, alarms and baselines.
    Reload {
        /// The pid file the gateway was started with (`run --pid-file`).
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
        /// Check this configuration file first and do not signal if it has
        /// mistakes (the gateway would refuse it too).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
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
    /// Subscribe to an upstream broker and write every record the gateways
    /// sent as a line of JSON, envelopes decoded and duplicates dropped;
    /// prints a tally to standard error at exit.
    Consume(ConsumeArgs),
    /// Inspect the durable buffer of a state directory.
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
}

#[derive(clap::Args)]
struct ConsumeArgs {
    /// The broker, host:port.
    #[arg(long, value_name = "HOST:PORT", value_parser = sensor_gateway::consume::parse_broker)]
    broker: sensor_gateway::config::BrokerAddr,
    /// A topic filter to subscribe to with QoS 1 (repeatable), e.g. "gateways/#".
    #[arg(long = "topic", value_name = "FILTER", required = true)]
    topics: Vec<String>,
    /// The MQTT protocol version.
    #[arg(long, value_name = "VERSION", default_value = "5", value_parser = ["5", "3.1.1"])]
    protocol: String,
    /// Connect with TLS, trusting the system's CAs (or --ca-file).
    #[arg(long)]
    tls: bool,
    /// Connect with TLS, trusting this PEM CA bundle.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The name on the broker's certificate, when --broker is an IP address.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// A client certificate (PEM) for mutual TLS, with --key-file.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Append the records here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Stop once this many records were written (exit 1 if --timeout comes first).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this long, e.g. "30s".
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Names the persistent session (the broker keeps messages for it while
    /// the consumer is away); give each consumer its own.
    #[arg(long, value_name = "ID", default_value = "sensor-gateway-consume")]
    client_id: String,
}

/// `consume`: runs the reference consumer; 0 unless it failed or stopped
/// before --count records.
fn consume_command(args: ConsumeArgs) -> ExitCode {
    use sensor_gateway::config::{ClientAuth, Protocol, TlsConfig};
    use sensor_gateway::consume::{consume, ConsumeOptions, Ending};
    let tls = args.tls
        || args.ca_file.is_some()
        || args.server_name.is_some()
        || args.cert_file.is_some();
    let opts = ConsumeOptions {
        broker: args.broker,
        topics: args.topics,
        protocol: if args.protocol == "3.1.1" {
            Protocol::V311
        } else {
            Protocol::V5
        },
        tls: tls.then(|| TlsConfig {
            ca_file: args.ca_file,
            client_auth: args
                .cert_file
                .zip(args.key_file)
                .map(|(cert_file, key_file)| ClientAuth {
                    cert_file,
                    key_file,
                }),
            server_name: args.server_name,
            client_cert_not_after: None,
            files_digest: String::new(),
        }),
        output: args.output,
        count: args.count,
        timeout: args.timeout,
        client_id: args.client_id,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let signals = tokio::spawn(Signals::install()?.wait(shutdown.clone(), None));
                let result = consume(&opts, shutdown).await;
                signals.abort();
                result
            })
        });
    match result {
        Ok((tally, ending)) => {
            eprintln!("consume: {tally}");
            if ending == Ending::Timeout && opts.count.is_some() {
                eprintln!("consume: stopped at --timeout before --count records");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
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
        Command::Consume(args) => consume_command(args),
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
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Reload { pid_file, config } => reload_command(&pid_file, config.as_deref()),
        Command::Run {
            config: config_path,
            metrics_file,
            log_format,
            pid_file,
        } => {
            init_logging(log_format);
            let config = match Config::load_to_run(&config_path) {
                Ok(c) => {
                    for w in &c.warnings {
                        tracing::warn!("{w}");
                    }
                    for d in &c.deferred {
                        tracing::error!("{d}. The gateway runs and buffers; the upstream link reads the files again at every connection attempt and connects once they can be used.");
                    }
                    c
                }
                Err(e) => {
                    // One log record per mistake: each carries its own
                    // priority under journald.
                    for line in e.lines() {
                        tracing::error!("{line}");
                    }
                    return ExitCode::from(2);
                }
            };
            let reload = ReloadTrigger {
                config_path,
                signal: Arc::new(Notify::new()),
            };
            let options = RunOptions {
                metrics_file,
                reload: Some(reload),
            };
            match run(config, options, pid_file) {
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

/// `reload`: checks the configuration if one is given, then signals the
/// gateway through its pid file.
fn reload_command(pid_file: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    if let Some(path) = config {
        if let Err(e) = Config::load(path) {
            eprintln!("{e}");
            eprintln!("not reloading: the gateway would refuse this configuration");
            return ExitCode::from(2);
        }
    }
    match sensor_gateway::pidfile::signal_reload(pid_file) {
        Ok(pid) => {
            eprintln!("asked sensor-gateway (pid {pid}) to reload; its log says whether the configuration was applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
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

fn run(config: Config, options: RunOptions, pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    // Two worker threads: one core for the processing task, one for the
    // network, which is all a Raspberry-Pi-class device should give us.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        // Handlers first: a SIGHUP sent as soon as the pid file exists must
        // reload, not kill, the gateway.
        let signals = Signals::install()?;
        if let Some(path) = &pid_file {
            sensor_gateway::pidfile::write(path, std::process::id()).map_err(|e| {
                anyhow::anyhow!("cannot write the pid file {}: {e}", path.display())
            })?;
        }
        let reload = options.reload.as_ref().map(|r| r.signal.clone());
        let signals = tokio::spawn(signals.wait(shutdown.clone(), reload));
        let result = sensor_gateway::run(config, options, Arc::new(Metrics::new()), shutdown).await;
        signals.abort();
        if let Some(path) = &pid_file {
            sensor_gateway::pidfile::remove(path, std::process::id());
        }
        result
    })
}

/// The signals the gateway handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install =
            |kind| signal(kind).map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"));
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// SIGHUP reloads the configuration (when `reload` is given). The first
    /// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at
    /// once.
    async fn wait(mut self, shutdown: CancellationToken, reload: Option<Arc<Notify>>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => match &reload {
                    Some(r) => r.notify_one(),
                    None => tracing::warn!("SIGHUP ignored: this run cannot reload its configuration."),
                },
            }
        }
        tracing::info!("Shutting down: flushing windows and delivering what is queued.");
        shutdown.cancel();
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {}
            }
        }
        tracing::warn!("Second signal: exiting now.");
        std::process::exit(130);
    }
}
