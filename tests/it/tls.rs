//! TLS upstream against Mosquitto, with certificates generated for each
//! run: a broker that requires a client certificate and a password gets
//! every summary over mutual TLS; each refused case (the gateway trusts
//! another CA, the broker's certificate has expired, it is issued for
//! another host, the broker does not trust the gateway's certificate) is
//! logged with the gateway's explanation while the records stay buffered;
//! `server_name` repairs the wrong host; a key that does not belong to its
//! certificate stops `check` and the daemon at load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A CA with a name of its own (OpenSSL finds issuers by name).
fn ca() -> Ca {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("test CA {n}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca { cert, key }
}

/// A certificate and key signed by `ca` for `names`, valid until the first
/// of January of `until`.
fn issue(ca: &Ca, names: &[&str], until: i32) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// A directory for a test's files, a CA, and a broker certificate for
/// 127.0.0.1 and localhost signed by it.
fn pki() -> (tempfile::TempDir, Ca, (String, String)) {
    let ca = ca();
    let server = issue(&ca, &["127.0.0.1", "localhost"], 2099);
    (tempfile::tempdir().expect("tempdir"), ca, server)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// Mosquitto with a TLS listener (`tls`) and a plain one (`plain`, for the
/// test's subscriber).
struct TlsBroker {
    child: Child,
    tls: std::net::SocketAddr,
    plain: std::net::SocketAddr,
    dir: PathBuf,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsBroker {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

/// What the broker's TLS listener asks of clients.
#[derive(Default)]
struct Listener<'a> {
    /// Clients must present a certificate signed by the broker's CA.
    require_certificate: bool,
    /// `user:password`, the only account; anonymous clients are refused.
    account: Option<(&'a str, &'a str)>,
}

/// Starts Mosquitto in `dir` (its own directory) with the server
/// certificate `server` (PEM certificate, key) signed by `ca`.
async fn tls_broker(dir: &Path, ca: &Ca, server: &(String, String), l: Listener<'_>) -> TlsBroker {
    std::fs::create_dir_all(dir).expect("broker dir");
    let tls = free_addr();
    let plain = loop {
        let a = free_addr();
        if a != tls {
            break a;
        }
    };
    write(dir, "ca.pem", &ca.cert.pem());
    write(dir, "server.pem", &server.0);
    write(dir, "server.key", &server.1);
    let mut tls_settings = format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = dir.display()
    );
    if l.require_certificate {
        tls_settings.push_str("require_certificate true\n");
    }
    match l.account {
        Some((user, password)) => {
            let file = dir.join("passwd");
            let status = Command::new("mosquitto_passwd")
                .arg("-c")
                .arg("-b")
                .arg(&file)
                .arg(user)
                .arg(password)
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed");
            tls_settings.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            ));
        }
        None => tls_settings.push_str("allow_anonymous true\n"),
    }
    let conf = format!(
        "per_listener_settings true\npersistence false\nlog_dest stderr\nlog_type all\nuser root\n\
         listener {} 127.0.0.1\n{tls_settings}\
         listener {} 127.0.0.1\nallow_anonymous true\n",
        tls.port(),
        plain.port(),
    );
    write(dir, "mosquitto.conf", &conf);
    let log = std::fs::File::create(dir.join("broker.log")).expect("broker log");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mosquitto");
    let broker = TlsBroker {
        child,
        tls,
        plain,
        dir: dir.to_owned(),
    };
    wait_until("mosquitto's listeners", Duration::from_secs(10), || {
        std::net::TcpStream::connect(tls).is_ok() && std::net::TcpStream::connect(plain).is_ok()
    })
    .await;
    broker
}

/// The gateway's config: `tls` is the body of `[upstream.tls]`, `account`
/// lines go to `[upstream]`; `name` makes the client ids its own.
fn config(
    name: &str,
    source: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    account: &str,
    tls: &str,
) -> String {
    format!(
        "{}{account}\n[upstream.tls]\n{tls}\n",
        gateway_config(source, upstream, "")
    )
    .replace("client_id = \"gw-e2e-", &format!("client_id = \"{name}-"))
}

fn tls_table(ca: &Path, client: Option<(&Path, &Path)>, server_name: Option<&str>) -> String {
    let mut s = format!("ca_file = \"{}\"\n", ca.display());
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some(n) = server_name {
        s.push_str(&format!("server_name = \"{n}\"\n"));
    }
    s
}

/// Publishes 20 readings of one sensor: one summary of 20 once its window
/// closes.
async fn publish_readings(source: std::net::SocketAddr) {
    let mut publisher = Publisher::connect(source).await;
    let base = aligned_base_ms();
    for i in 0..20 {
        publisher
            .send(
                "plant/l1/m1/temp",
                format!(r#"{{"value":{i},"ts":{}}}"#, base + i * 10),
            )
            .await;
    }
    publisher.flush().await;
}

/// Starts a gateway on `config`, publishes readings, and waits until its
/// log has a line with every word of `words` and its summary is buffered;
/// then checks that nothing was delivered.
async fn assert_refused_and_buffering(
    case: &str,
    config: &str,
    source: std::net::SocketAddr,
    broker: &TlsBroker,
    words: &[&str],
) {
    let mut gw = Gateway::start(config);
    gw.wait_ready().await;
    publish_readings(source).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = gw.log();
        let explained = log.lines().any(|l| {
            l.contains("Cannot connect to upstream") && words.iter().all(|w| l.contains(w))
        });
        if explained && gw.metric("gateway_upstream_queue_records") > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{case}: no log line with {words:?}, or nothing buffered (backlog {})\n--- gateway log\n{log}\n--- broker log\n{}",
            gw.metric("gateway_upstream_queue_records"),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gw.metric("gateway_upstream_connections_total"),
        0.0,
        "{case}"
    );
    assert_eq!(gw.metric("gateway_upstream_acked_total"), 0.0, "{case}");
    gw.kill();
}

/// A refused case: its name, the broker's certificate, whether the broker
/// requires a client certificate, the gateway's `[upstream.tls]`, and the
/// words its log line must hold.
struct Refusal(
    &'static str,
    (String, String),
    bool,
    String,
    &'static [&'static str],
);

/// Waits for one summary of 20 readings, delivered and acknowledged.
async fn assert_delivers(gw: &mut Gateway, sub: &Subscriber, broker: &TlsBroker) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gw.metric("gateway_upstream_connected") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS connection to the broker\n--- gateway log\n{}\n--- broker log\n{}",
            gw.log(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let messages = sub.wait_for_unique(1, Duration::from_secs(30)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["count"], 20);
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
    assert_eq!(unique_seqs(&sub.snapshot()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_reach_a_broker_that_requires_a_client_certificate_and_a_password() {
    if !mosquitto_available() {
        return;
    }
    let (dir, ca, server) = pki();
    let broker = tls_broker(
        &dir.path().join("broker"),
        &ca,
        &server,
        Listener {
            require_certificate: true,
            account: Some(("gw-e2e", "s3cret pass")),
        },
    )
    .await;
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(broker.plain, "gateways/#").await;
    let (cert, key) = issue(&ca, &["gw-e2e"], 2099);
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let cert_file = write(dir.path(), "client.pem", &cert);
    let key_file = write(dir.path(), "client.key", &key);
    let password_file = write(dir.path(), "password", "s3cret pass\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
    let account = format!(
        "username = \"gw-e2e\"\npassword_file = \"{}\"",
        password_file.display()
    );
    let tls = tls_table(&ca_file, Some((&cert_file, &key_file)), None);
    let mut gw = Gateway::start(&config("mtls", source.addr, broker.tls, &account, &tls));
    gw.wait_ready().await;
    // The client certificate is valid until 2099: the gauge says so.
    assert!(gw.metric("gateway_tls_client_cert_expiry_seconds") > 30.0 * 86_400.0);
    publish_readings(source.addr).await;
    assert_delivers(&mut gw, &sub, &broker).await;
    assert!(sub.snapshot().iter().all(|m| m["gateway"] == "gw-e2e"));
    assert!(!gw.log().contains("s3cret"), "the password is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tls_connections_are_explained_and_the_records_stay_buffered() {
    if !mosquitto_available() {
        return;
    }
    let (dir, ca, good_server) = pki();
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let other_ca = write(dir.path(), "other-ca.pem", &self::ca().cert.pem());
    let stranger = self::ca();
    let (cert, key) = issue(&stranger, &["gw-e2e"], 2099);
    let cert_file = write(dir.path(), "stranger.pem", &cert);
    let key_file = write(dir.path(), "stranger.key", &key);
    let elsewhere = issue(&ca, &["broker.example"], 2099);
    let cases: [Refusal; 4] = [
        // (a) The gateway trusts another CA.
        Refusal(
            "wrong-ca",
            good_server.clone(),
            false,
            tls_table(&other_ca, None, None),
            &["unknown CA", "other-ca.pem", "set ca_file"],
        ),
        // (b) The broker's certificate has expired.
        Refusal(
            "expired",
            issue(&ca, &["127.0.0.1", "localhost"], 2021),
            false,
            tls_table(&ca_file, None, None),
            &["certificate has expired", "renew"],
        ),
        // (c) The broker's certificate is for another host.
        Refusal(
            "wrong-host",
            elsewhere.clone(),
            false,
            tls_table(&ca_file, None, None),
            &["wrong host", "server_name"],
        ),
        // (e) The broker does not trust the gateway's certificate.
        Refusal(
            "untrusted-client",
            good_server.clone(),
            true,
            tls_table(&ca_file, Some((&cert_file, &key_file)), None),
            &["rejected", "stranger.pem"],
        ),
    ];
    for Refusal(case, server, require_certificate, tls, words) in cases {
        let listener = Listener {
            require_certificate,
            account: None,
        };
        let broker = tls_broker(&dir.path().join(case), &ca, &server, listener).await;
        let cfg = config(case, source.addr, broker.tls, "", &tls);
        assert_refused_and_buffering(case, &cfg, source.addr, &broker, words).await;
    }

    // (c) again: `server_name` names the certificate's host, summaries arrive.
    let broker = tls_broker(
        &dir.path().join("named"),
        &ca,
        &elsewhere,
        Listener::default(),
    )
    .await;
    let sub = Subscriber::start(broker.plain, "gateways/#").await;
    let tls = tls_table(&ca_file, None, Some("broker.example"));
    let mut gw = Gateway::start(&config("named", source.addr, broker.tls, "", &tls));
    gw.wait_ready().await;
    publish_readings(source.addr).await;
    assert_delivers(&mut gw, &sub, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_belong_to_the_certificate_fails_check_while_the_daemon_buffers_until_it_is_fixed(
) {
    if !mosquitto_available() {
        return;
    }
    let (dir, ca, server) = pki();
    let broker = tls_broker(
        &dir.path().join("broker"),
        &ca,
        &server,
        Listener {
            require_certificate: true,
            account: None,
        },
    )
    .await;
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(broker.plain, "gateways/#").await;
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let (cert, right_key) = issue(&ca, &["gw-e2e"], 2099);
    let (_, other_key) = issue(&ca, &["gw-e2e"], 2099);
    let cert_file = write(dir.path(), "client.pem", &cert);
    let key_file = write(dir.path(), "client.key", &other_key);
    let tls = tls_table(&ca_file, Some((&cert_file, &key_file)), None);
    let text = config("mismatch", source.addr, broker.tls, "", &tls);
    let key_line = text
        .lines()
        .position(|l| l.starts_with("key_file"))
        .expect("key_file line")
        + 1;
    let mut gw = Gateway::prepare(
        tempfile::tempdir().expect("tempdir"),
        &text,
        &dir.path().join("state"),
    );
    let config_path = gw.config_path();
    let path = config_path.to_str().expect("utf-8 path");
    // `check` refuses the file, naming the setting's line.
    let (code, out) = gw.command(&["check", "--config", path]);
    assert_eq!(code, 2, "{out}");
    let at = format!("{path}:{key_line}:");
    assert!(out.contains(&at), "names {at}: {out}");
    assert!(out.contains("does not belong to the certificate"), "{out}");
    // The daemon runs: it says what is wrong and buffers.
    gw.restart();
    gw.wait_ready().await;
    publish_readings(source.addr).await;
    wait_until(
        "the key explained and records buffered",
        Duration::from_secs(30),
        || {
            let log = gw.log();
            log.contains("does not belong to the certificate")
                && log.contains(&at)
                && log.contains("Cannot connect to upstream: its TLS files cannot be used")
                && gw.metric("gateway_upstream_queue_records") > 0.0
        },
    )
    .await;
    assert_eq!(gw.metric("gateway_upstream_connections_total"), 0.0);
    // The operator puts the right key in place: no restart needed.
    write(dir.path(), "client.key", &right_key);
    assert_delivers(&mut gw, &sub, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_source_reads_its_plant_broker_over_tls() {
    if !mosquitto_available() {
        return;
    }
    let (dir, ca, server) = pki();
    let plant = tls_broker(&dir.path().join("plant"), &ca, &server, Listener::default()).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
    let upstream = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.addr, "gateways/#").await;
    let cfg = gateway_config(plant.tls, upstream.addr, "").replacen(
        "qos = 1\n",
        &format!("qos = 1\ntls = {{ ca_file = \"{}\" }}\n", ca_file.display()),
        1,
    );
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    // Readings published on the plant broker's plain listener reach the
    // gateway through its TLS listener.
    publish_readings(plant.plain).await;
    let messages = sub.wait_for_unique(1, Duration::from_secs(30)).await;
    assert_eq!(messages[0]["count"], 20, "{}", gw.log());
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
}
