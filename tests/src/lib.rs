//! Test harness for end-to-end tests: real binaries, real brokers, real
//! sockets and files.
//!
//! - [`Broker`]: an MQTT broker in its own process (the embedded rumqttd of
//!   `sensor-sim broker`, or Mosquitto), which can be stopped and restarted on
//!   the same port.
//! - [`Gateway`]: the `sensor-gateway` binary run with a config file, its
//!   metrics file readable, stoppable with SIGTERM; `GATEWAY_BIN` and
//!   `GATEWAY_RUNNER` swap in another build of it ([`gateway_command`]).
//! - [`Subscriber`] and [`Publisher`]: plain rumqttc clients.
//! - [`servers`]: NATS, a NATS cluster and RabbitMQ for the interop
//!   matrix, and the process plumbing that ties every server to the test
//!   binary's life.
//!
//! Waiting is always for an observable condition with a deadline, never a
//! sleep that hopes.

pub mod workload;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub use sensor_sim::uplink::{LinkProfile, LinkStats, Uplink};

pub mod servers;

/// Path of a binary built by this workspace (next to the test executable).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// The `sensor-gateway` to run: this workspace's build, or the binary that
/// `GATEWAY_BIN` names, started through `GATEWAY_RUNNER` when that is set (an
/// emulator such as `qemu-arm-static`): CI runs end-to-end tests against the
/// cross-built ARM binaries this way. A named binary that is missing fails
/// the test; it is never skipped.
pub fn gateway_command() -> Command {
    let runner = std::env::var_os("GATEWAY_RUNNER").filter(|r| !r.is_empty());
    let Some(path) = std::env::var_os("GATEWAY_BIN").filter(|p| !p.is_empty()) else {
        assert!(
            runner.is_none(),
            "GATEWAY_RUNNER is set but GATEWAY_BIN is not: name the binary the runner should run"
        );
        return Command::new(bin("sensor-gateway"));
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "GATEWAY_BIN={} is missing: build it first",
        path.display()
    );
    match runner {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(path);
            c
        }
        None => Command::new(path),
    }
}

/// Repository root (for configs/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A plain HTTP/1.1 request to `addr` (the gateway closes the connection
/// after answering): the status code and the body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gateway's HTTP endpoint");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the answer within 10 s")
        .expect("read the answer");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Rumqttd,
    Mosquitto,
}

/// A broker in its own process.
pub struct Broker {
    pub kind: BrokerKind,
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// More lines of mosquitto.conf (Mosquitto only).
    extra_conf: String,
}

/// Whether Mosquitto can be used; with `REQUIRE_MOSQUITTO=1` its absence
/// fails the test instead of skipping it.
pub fn mosquitto_available() -> bool {
    let found = Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var("REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
        panic!("REQUIRE_MOSQUITTO=1 but `mosquitto` is not installed (Debian package `mosquitto`)");
    }
    if !found {
        eprintln!("mosquitto is not installed; skipping this Mosquitto test (set REQUIRE_MOSQUITTO=1 to fail instead)");
    }
    found
}

impl Broker {
    pub async fn start(kind: BrokerKind) -> Broker {
        Broker::start_with(kind, "", &[]).await
    }

    /// Mosquitto with more lines in its configuration and files (name,
    /// text) written beside it first; `@DIR@` in the lines is the broker's
    /// own directory (for an ACL or password file).
    pub async fn start_mosquitto(extra_conf: &str, files: &[(&str, &str)]) -> Broker {
        Broker::start_with(BrokerKind::Mosquitto, extra_conf, files).await
    }

    async fn start_with(kind: BrokerKind, extra_conf: &str, files: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write a broker file");
        }
        let extra_conf = extra_conf.replace("@DIR@", &dir.path().display().to_string());
        let mut b = Broker {
            kind,
            addr: free_addr(),
            child: None,
            dir,
            extra_conf,
        };
        b.restart().await;
        b
    }

    /// The broker's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Asks Mosquitto to read its ACL and password files again (SIGHUP).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -HUP failed");
        }
    }

    /// Starts (again) on the same port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let log =
            std::fs::File::create(self.dir.path().join("broker.log")).expect("broker log file");
        let child = match self.kind {
            BrokerKind::Rumqttd => {
                let mut c = Command::new(bin("sensor-sim"));
                c.args(["broker", "--listen", &self.addr.to_string()])
                    .env("RUST_LOG", "off")
                    .stdout(Stdio::null())
                    .stderr(log);
                servers::spawn_tied(c)
            }
            BrokerKind::Mosquitto => {
                let conf = self.dir.path().join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest stderr\n{}\n",
                        self.addr.port(),
                        self.extra_conf
                    ),
                )
                .expect("write mosquitto.conf");
                let mut c = Command::new("mosquitto");
                c.arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log);
                servers::spawn_tied(c)
            }
        }
        .expect("start the broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen on {} within 10 s",
                self.kind,
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the broker process (SIGKILL): a crash or power loss, not a
    /// polite shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `sensor-gateway` binary.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// Extra environment of the process (set before `restart`).
    pub env: Vec<(String, String)>,
    /// What `@STATE_DIR@` stands for in its config.
    state: PathBuf,
}

impl Gateway {
    /// Writes `config` and starts `sensor-gateway run` on it. `@STATE_DIR@`
    /// in the text becomes a directory inside the gateway's own temporary
    /// directory.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = dir.path().join("state");
        Gateway::start_in(dir, config, &state)
    }

    /// Like [`Gateway::start`], with the state directory given.
    pub fn start_in(dir: tempfile::TempDir, config: &str, state: &Path) -> Gateway {
        let mut gw = Gateway::prepare(dir, config, state);
        gw.restart();
        gw
    }

    /// Writes the config into `dir` without starting the process (set
    /// `env` first, then `restart`).
    pub fn prepare(dir: tempfile::TempDir, config: &str, state: &Path) -> Gateway {
        let gw = Gateway {
            child: None,
            dir,
            env: Vec::new(),
            state: state.to_owned(),
        };
        gw.write_config(config);
        gw
    }

    /// Writes its config file (for a restart or a reload), `@STATE_DIR@` as
    /// at the start.
    pub fn write_config(&self, config: &str) {
        let config = config.replace("@STATE_DIR@", &self.state.display().to_string());
        std::fs::write(self.config_path(), config).expect("write the gateway config");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// The pid file the gateway is started with (`run --pid-file`).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("gateway.pid")
    }

    /// Starts the process again with the same config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "gateway already running");
        let _ = std::fs::remove_file(self.dir.path().join("metrics.prom"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("gateway log file");
        let child = gateway_command()
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .arg("--metrics-file")
            .arg(self.dir.path().join("metrics.prom"))
            .arg("--pid-file")
            .arg(self.pid_file())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sensor-gateway");
        self.child = Some(child);
    }

    /// SIGKILL: a crash or a power cut as far as the process can tell.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `sensor-gateway` with other arguments (for `buffer status` and
    /// `buffer verify`) and returns (exit code, stdout + stderr).
    pub fn command(&self, args: &[&str]) -> (i32, String) {
        let out = gateway_command()
            .args(args)
            .output()
            .expect("run sensor-gateway");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Waits until the gateway has subscribed to its source.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric("gateway_source_subscriptions_total") < 1.0 {
            assert!(
                self.is_running(),
                "the gateway exited during start-up\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "the gateway never subscribed\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The latest metrics snapshot: name (with labels) to value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let text =
            std::fs::read_to_string(self.dir.path().join("metrics.prom")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("gateway running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the gateway") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the gateway did not exit within {within:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the running process (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let Some(child) = self.child.as_ref() else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.log());
        }
    }
}

/// An upstream consumer that records every JSON message it receives, and
/// every record of every batch envelope; the gateway's status messages
/// (topics ending in `/status`) apart.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Status messages: (payload, retained), in order of arrival.
    pub statuses: Arc<Mutex<Vec<(serde_json::Value, bool)>>>,
    /// The topic of each of `messages`, when kept (`start_keeping_topics`).
    topics: Option<Arc<Mutex<Vec<String>>>>,
    suback_count: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `addr` and subscribes to `filter`, reconnecting and
    /// resubscribing forever.
    pub async fn start(addr: SocketAddr, filter: &str) -> Subscriber {
        Self::start_with(
            addr,
            filter,
            &format!("e2e-sub-{}", addr.port()),
            true,
            false,
        )
        .await
    }

    /// `start`, keeping the topic of every message too (`with_topics`), so
    /// that a test can check each payload against what its topic implies.
    pub async fn start_keeping_topics(addr: SocketAddr, filter: &str) -> Subscriber {
        Self::start_with(
            addr,
            filter,
            &format!("e2e-sub-{}", addr.port()),
            true,
            true,
        )
        .await
    }

    /// Like [`Subscriber::start`] under `client_id` (for servers that
    /// several tests share, where the default id could clash).
    pub async fn start_as(addr: SocketAddr, filter: &str, client_id: &str) -> Subscriber {
        Self::start_with(addr, filter, client_id, true, false).await
    }

    /// Like [`Subscriber::start`] with a persistent session (clean session
    /// off) under `client_id`: the broker keeps what arrives while it is
    /// away.
    pub async fn start_persistent(addr: SocketAddr, filter: &str, client_id: &str) -> Subscriber {
        Self::start_with(addr, filter, client_id, false, false).await
    }

    async fn start_with(
        addr: SocketAddr,
        filter: &str,
        client_id: &str,
        clean_session: bool,
        keep_topics: bool,
    ) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let topics = keep_topics.then(|| Arc::new(Mutex::new(Vec::new())));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let suback_count = Arc::new(Mutex::new(0));
        let (m, s, f) = (messages.clone(), suback_count.clone(), filter.to_owned());
        let st = statuses.clone();
        let t = topics.clone();
        let id = client_id.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let mut opts = MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
                opts.set_keep_alive(Duration::from_secs(30));
                opts.set_max_packet_size(1 << 20, 1 << 20);
                opts.set_clean_session(clean_session);
                let (client, mut el) = AsyncClient::new(opts, 16);
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().expect("lock") += 1,
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if sensor_gateway::envelope::is_envelope(&p.payload) {
                                // A batch: its records, in order (a bad one shows
                                // in what the test reads).
                                let mut m = m.lock().expect("lock");
                                let entries = match sensor_gateway::envelope::decode(&p.payload) {
                                    Ok(d) => d
                                        .entries
                                        .into_iter()
                                        .map(|e| (e.topic, e.payload))
                                        .collect(),
                                    Err(e) => vec![(
                                        p.topic.clone(),
                                        serde_json::json!({ "undecodable_envelope": e.to_string() }),
                                    )],
                                };
                                for (topic, payload) in entries {
                                    m.push(payload);
                                    if let Some(t) = &t {
                                        t.lock().expect("lock").push(topic);
                                    }
                                }
                                continue;
                            }
                            let v = serde_json::from_slice(&p.payload)
                                .unwrap_or(serde_json::Value::Null);
                            if p.topic.ends_with("/status") {
                                st.lock().expect("lock").push((v, p.retain));
                            } else {
                                let mut m = m.lock().expect("lock");
                                m.push(v);
                                if let Some(t) = &t {
                                    t.lock().expect("lock").push(p.topic.clone());
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let sub = Subscriber {
            messages,
            statuses,
            topics,
            suback_count,
            task,
        };
        sub.wait_subscribed(1).await;
        sub
    }

    pub fn subscriptions(&self) -> u64 {
        *self.suback_count.lock().expect("lock")
    }

    /// Waits until the `n`-th SUBACK arrived (one per (re)connection).
    pub async fn wait_subscribed(&self, n: u64) {
        let c = self.suback_count.clone();
        wait_until("the subscription", Duration::from_secs(15), || {
            *c.lock().expect("lock") >= n
        })
        .await;
    }

    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.messages.lock().expect("lock").clone()
    }

    /// Every message with its topic, in order of arrival (statuses apart).
    /// Panics unless the subscriber was started with `start_keeping_topics`.
    pub fn with_topics(&self) -> Vec<(String, serde_json::Value)> {
        let messages = self.messages.lock().expect("lock");
        let topics = self
            .topics
            .as_ref()
            .expect("a subscriber started with start_keeping_topics")
            .lock()
            .expect("lock");
        topics
            .iter()
            .cloned()
            .zip(messages.iter().cloned())
            .collect()
    }

    pub fn status_snapshot(&self) -> Vec<(serde_json::Value, bool)> {
        self.statuses.lock().expect("lock").clone()
    }

    /// Waits until at least `n` distinct sequence numbers arrived.
    pub async fn wait_for_unique(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let m = self.messages.clone();
        wait_until(&format!("{n} distinct summaries upstream"), within, || {
            unique_seqs(&m.lock().expect("lock")).len() >= n
        })
        .await;
        self.snapshot()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The distinct `seq` values of summaries, in order of first arrival.
pub fn unique_seqs(messages: &[serde_json::Value]) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .filter(|s| seen.insert(*s))
        .collect()
}

/// Asserts that, per sensor, the summaries' first arrivals come in
/// sequence order (`messages` deduplicated, in order of arrival).
pub fn assert_order_per_sensor(messages: &[serde_json::Value]) {
    let mut per_sensor: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in messages.iter().filter(|m| m["kind"] == "summary") {
        per_sensor
            .entry(m["sensor"].as_str().unwrap_or_default())
            .or_default()
            .push(m["seq"].as_u64().unwrap_or_default());
    }
    for (sensor, seqs) in &per_sensor {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{sensor}: first arrivals out of order: {seqs:?}"
        );
    }
}

/// Publishes `per_window` readings of each sensor (`plant/<sensor>`) into
/// each 1 s window of `windows` after `base`, and waits for the PUBACKs.
pub async fn publish_windows(
    publisher: &mut Publisher,
    base: i64,
    windows: std::ops::Range<i64>,
    sensors: &[&str],
    per_window: u64,
) {
    for w in windows {
        for sensor in sensors {
            for i in 0..per_window {
                let ts = base + w * 1000 + i as i64 * 10;
                publisher
                    .send(
                        &format!("plant/{sensor}"),
                        format!(r#"{{"value":{},"ts":{ts}}}"#, w * 100 + i as i64),
                    )
                    .await;
            }
        }
    }
    publisher.flush().await;
}

/// Keeps the first copy of each `seq` (what an upstream consumer does).
pub fn dedupe(messages: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter(|m| m["seq"].as_u64().is_some_and(|s| seen.insert(s)))
        .cloned()
        .collect()
}

/// A plant-side publisher with QoS 1: `send` returns when the broker has
/// acknowledged every message.
pub struct Publisher {
    client: AsyncClient,
    acked: Arc<Mutex<u64>>,
    sent: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr) -> Publisher {
        let mut opts = MqttOptions::new(
            format!("e2e-pub-{}", addr.port()),
            addr.ip().to_string(),
            addr.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let acked = Arc::new(Mutex::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => *a.lock().expect("lock") += 1,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            sent: 0,
            task,
        }
    }

    pub async fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue a publish");
        self.sent += 1;
    }

    /// Waits until the broker acknowledged everything sent so far.
    pub async fn flush(&self) {
        let (a, n) = (self.acked.clone(), self.sent);
        wait_until("the broker's PUBACKs", Duration::from_secs(15), || {
            *a.lock().expect("lock") >= n
        })
        .await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway config for tests: one MQTT source, 1 s windows, fast metrics.
pub fn gateway_config(source: SocketAddr, upstream: SocketAddr, extra_rules: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-e2e"
state_dir = "@STATE_DIR@"
metrics_interval = "100ms"

[[source]]
kind = "mqtt"
name = "plant"
broker = "{source}"
client_id = "gw-e2e-source-{sport}"
topic_template = "plant/{{line}}/{{machine}}/{{sensor}}"
qos = 1

{extra_rules}

[pipeline]
default_window = "1s"
allowed_lateness = "0s"

[upstream]
broker = "{upstream}"
client_id = "gw-e2e-{uport}"
reconnect_backoff_max = "1s"
shutdown_grace = "5s"
"#,
        sport = source.port(),
        uport = upstream.port(),
    )
}

/// `sensor-sim serial`: a simulated serial node on a pty whose link is
/// `<dir>/tty`, run as its own process.
pub struct SerialNode {
    child: Option<Child>,
    pub link: PathBuf,
}

impl SerialNode {
    /// Starts the node and waits until its pty link exists.
    pub async fn start(link: &Path, args: &[&str]) -> SerialNode {
        let child = Command::new(bin("sensor-sim"))
            .arg("serial")
            .arg("--pty")
            .arg(link)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sensor-sim serial");
        let node = SerialNode {
            child: Some(child),
            link: link.to_owned(),
        };
        wait_until("the pty link", Duration::from_secs(10), || link.exists()).await;
        node
    }

    /// Waits for the node to finish (it drains the pty first) and returns
    /// its account of what it sent.
    pub async fn finish(mut self, within: Duration) -> serde_json::Value {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sensor-sim serial did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)
            .expect("read the node's output");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad stats {out:?}: {e}"))
    }
}

impl Drop for SerialNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A gateway config for serial tests: one serial port, 1 s windows.
pub fn serial_gateway_config(upstream: SocketAddr, device: &Path, port_settings: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-serial"
state_dir = "@STATE_DIR@"
metrics_interval = "100ms"

[[source]]
kind = "serial"
name = "uart"
device = "{device}"
baud = 921600
{port_settings}

[pipeline]
default_window = "1s"
allowed_lateness = "0s"

[upstream]
broker = "{upstream}"
client_id = "gw-serial-{uport}"
reconnect_backoff_max = "1s"
shutdown_grace = "5s"
"#,
        device = device.display(),
        uport = upstream.port(),
    )
}
