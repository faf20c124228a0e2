//! The MQTT servers of the interop matrix, each a real process: NATS (one
//! node, or a 3-node cluster) with JetStream and its MQTT listener,
//! RabbitMQ with `rabbitmq_mqtt`, and Mosquitto with an ACL.
//!
//! Every process is started by one long-lived thread with
//! `PR_SET_PDEATHSIG` = SIGKILL ([`spawn_tied`]): when the test binary dies,
//! even by a panic outside any test or a SIGKILL, its servers die with it.
//! Each server keeps its data in a private directory. RabbitMQ takes about
//! 10 s to start, so one instance ([`RabbitMq::shared`]) serves every test
//! of the binary.
//!
//! Availability: a missing server binary skips the test with a message,
//! unless `REQUIRE_INTEROP=1`, which makes it fail ([`server_available`]).
//! The slow cases run only with `INTEROP_HEAVY=1` ([`heavy_enabled`]);
//! without it they say loudly that they did not run.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{free_addr, wait_until};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `cmd` from a thread that lives as long as the test binary, with
/// SIGKILL as its parent-death signal. (The signal follows the thread that
/// forked the child, so a test's own thread, which ends with the test,
/// must not fork servers that outlive it.)
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: the closure runs between fork and exec and
                    // only makes one async-signal-safe system call.
                    unsafe {
                        cmd.pre_exec(|| {
                            rustix::process::set_parent_process_death_signal(Some(
                                rustix::process::Signal::KILL,
                            ))
                            .map_err(std::io::Error::from)
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server-spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    cmd.stdin(Stdio::null());
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("the spawner lock is poisoned"))?
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Writes a line to the real standard error, past the test harness's
/// output capture: for what must be seen even when the test passes.
pub fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** {message}\n");
}

/// Whether `binary` is installed. With `REQUIRE_INTEROP=1` its absence
/// fails the test; otherwise the test says loudly that it is skipped.
pub fn server_available(binary: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary} || test -x {binary}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("REQUIRE_INTEROP").as_deref() != Ok("1"),
            "REQUIRE_INTEROP=1 but `{binary}` is not installed (Debian package `{package}`)"
        );
        loud(&format!(
            "NOT RUN: `{binary}` is not installed (Debian package `{package}`); set REQUIRE_INTEROP=1 to fail instead"
        ));
    }
    found
}

/// Whether the slow interop cases run (`INTEROP_HEAVY=1`, as CI sets it).
/// When they do not, `test` says so loudly, with `why` it is heavy.
pub fn heavy_enabled(test: &str, why: &str) -> bool {
    let on = std::env::var("INTEROP_HEAVY").as_deref() == Ok("1");
    if !on {
        loud(&format!(
            "NOT RUN: {test} ({why}); set INTEROP_HEAVY=1 to run it (CI does)"
        ));
    }
    on
}

/// A server process that can be killed and started again with the same
/// command line; its standard error goes to `log`.
pub struct Process {
    name: String,
    command: Box<dyn Fn() -> Command + Send + Sync>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn start(
        name: &str,
        log: &Path,
        command: impl Fn() -> Command + Send + Sync + 'static,
    ) -> Process {
        let mut p = Process {
            name: name.to_owned(),
            command: Box::new(command),
            log: log.to_owned(),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the process (again), appending to its log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log file");
        let out = log.try_clone().expect("server log file");
        let mut cmd = (self.command)();
        cmd.stdout(out).stderr(log);
        let child = spawn_tied(cmd).unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL: a crash, not a polite shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `addr` accepts TCP connections, while `process` runs.
pub async fn wait_listening(process: &mut Process, addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            process.is_running(),
            "{} exited during start-up:\n{}",
            process.name,
            process.log()
        );
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {within:?}:\n{}",
            process.name,
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `nats-server` with JetStream and MQTT.
pub struct NatsNode {
    /// The MQTT listener.
    pub mqtt: SocketAddr,
    pub process: Process,
}

/// The NATS log line that says a JetStream cluster can serve MQTT
/// sessions across nodes.
pub const NATS_LEADER_ELECTED: &str = "JetStream cluster new metadata leader";

impl NatsNode {
    /// Writes node `name`'s config into `dir` and starts it. `cluster` is
    /// (this node's route port, every node's route port).
    pub async fn start(dir: &Path, name: &str, cluster: Option<(u16, &[u16])>) -> NatsNode {
        let mqtt = free_addr();
        let client = free_addr();
        let mut conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\nmqtt {{ listen: 127.0.0.1:{} }}\n",
            client.port(),
            dir.join(format!("js-{name}")).display(),
            mqtt.port()
        );
        if let Some((own, all)) = cluster {
            let routes: Vec<String> = all
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: c1\n  listen: 127.0.0.1:{own}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("write the NATS config");
        let mut process = Process::start(name, &dir.join(format!("{name}.log")), move || {
            let mut c = Command::new("nats-server");
            c.arg("-c").arg(&path);
            c
        });
        wait_listening(&mut process, mqtt, Duration::from_secs(20)).await;
        NatsNode { mqtt, process }
    }

    /// Starts the node again on the same ports, with the same store.
    pub async fn restart(&mut self) {
        self.process.restart();
        wait_listening(&mut self.process, self.mqtt, Duration::from_secs(20)).await;
    }
}

/// A single NATS node.
pub struct Nats {
    pub node: NatsNode,
    /// How long the start took.
    pub started_in: Duration,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let node = NatsNode::start(dir.path(), "n1", None).await;
        Nats {
            node,
            started_in: t0.elapsed(),
            _dir: dir,
        }
    }
}

/// Three NATS nodes in one cluster, ready for MQTT once a JetStream
/// metadata leader is elected.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    /// How long the start took, the leader election included.
    pub started_in: Duration,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub async fn start() -> NatsCluster {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let routes: Vec<u16> = (0..3).map(|_| free_addr().port()).collect();
        let mut nodes = Vec::new();
        for (i, own) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            nodes.push(NatsNode::start(dir.path(), &name, Some((*own, &routes))).await);
        }
        let mut cluster = NatsCluster {
            nodes,
            started_in: Duration::ZERO,
            _dir: dir,
        };
        cluster.wait_leader(Duration::from_secs(60)).await;
        cluster.started_in = t0.elapsed();
        cluster
    }

    /// Waits until some node logged the election of a metadata leader.
    pub async fn wait_leader(&self, within: Duration) {
        let logs = || {
            self.nodes
                .iter()
                .map(|n| n.process.log())
                .collect::<Vec<_>>()
        };
        wait_until("a JetStream metadata leader", within, || {
            logs().iter().any(|l| l.contains(NATS_LEADER_ELECTED))
        })
        .await;
    }

    pub fn mqtt_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.mqtt).collect()
    }
}

/// A private RabbitMQ node with the MQTT plugin, its own epmd and data
/// directory. QoS 1 subscriptions of persistent sessions land in quorum
/// queues (`mqtt.durable_queue_type = quorum`).
pub struct RabbitMq {
    pub mqtt: SocketAddr,
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// The node, then epmd.
    processes: Mutex<Vec<Process>>,
    /// How long the start took.
    pub started_in: Duration,
}

/// The RabbitMQ server script (Debian's location).
pub const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// Its control tool, called directly: Debian's `/usr/sbin/rabbitmqctl`
/// wrapper runs it as the `rabbitmq` user, whose Erlang cookie is not the
/// private node's.
pub const RABBITMQCTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

impl RabbitMq {
    /// The instance shared by every test of this binary, started at the
    /// first call (about 10 s). It is stopped when the binary exits (the
    /// parent-death signal); its directory, under the system's temporary
    /// directory and named after this process, is removed by the next run.
    pub fn shared() -> &'static RabbitMq {
        static SHARED: OnceLock<RabbitMq> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Its own runtime on its own thread: the caller's runtime ends
            // with its test, and this instance must not.
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(RabbitMq::start())
            })
            .join()
            .unwrap_or_else(|_| panic!("RabbitMQ did not start"))
        })
    }

    async fn start() -> RabbitMq {
        let t0 = Instant::now();
        let base = std::env::temp_dir();
        remove_stale_dirs(&base, "sensor-gateway-e2e-rabbitmq-");
        let dir = base.join(format!(
            "sensor-gateway-e2e-rabbitmq-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the RabbitMQ directory");
        let mqtt = free_addr();
        let epmd_port = free_addr().port();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").expect("write");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "mqtt.listeners.tcp.default = 127.0.0.1:{}\nmqtt.allow_anonymous = true\n\
                 mqtt.durable_queue_type = quorum\nloopback_users = none\n\
                 listeners.tcp.default = 127.0.0.1:{}\n",
                mqtt.port(),
                free_addr().port()
            ),
        )
        .expect("write rabbitmq.conf");
        let d = |p: &str| dir.join(p).display().to_string();
        let env: Vec<(String, String)> = [
            (
                "RABBITMQ_NODENAME",
                format!("e2e{}@localhost", std::process::id()),
            ),
            ("RABBITMQ_DIST_PORT", free_addr().port().to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq")),
            // The script execs the VM instead of forking it, so the
            // parent-death signal reaches the VM.
            ("RUNNING_UNDER_SYSTEMD", "1".into()),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            // The Erlang cookie is written to $HOME.
            ("HOME", dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Its own epmd on its own port, tied to this process like the node
        // (one the VM started itself would be a daemon and outlive us).
        let epmd_env = env.clone();
        let mut epmd = Process::start("epmd", &dir.join("epmd.log"), move || {
            let mut c = Command::new("epmd");
            c.args(["-port", &epmd_port.to_string()])
                .envs(epmd_env.clone());
            c
        });
        wait_listening(
            &mut epmd,
            SocketAddr::from(([127, 0, 0, 1], epmd_port)),
            Duration::from_secs(10),
        )
        .await;
        let node_env = env.clone();
        let mut node = Process::start("rabbitmq-server", &dir.join("server.log"), move || {
            let mut c = Command::new(RABBITMQ_SERVER);
            c.envs(node_env.clone());
            c
        });
        wait_listening(&mut node, mqtt, Duration::from_secs(90)).await;
        RabbitMq {
            mqtt,
            env,
            dir,
            processes: Mutex::new(vec![node, epmd]),
            started_in: t0.elapsed(),
        }
    }

    /// Runs `rabbitmqctl` against this node; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(RABBITMQCTL)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (name, type) of every queue.
    pub fn queues(&self) -> Vec<(String, String)> {
        self.ctl(&["list_queues", "-q", "--no-table-headers", "name", "type"])
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.next()?.to_owned()))
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        self.processes
            .lock()
            .map(|p| p.iter().map(Process::log).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Removes `<base>/<prefix><pid>` directories of processes that are gone.
fn remove_stale_dirs(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
