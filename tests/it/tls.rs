//! TLS upstream: the gateway delivers to a Mosquitto TLS listener whose
//! certificate is signed by the CA named in `[upstream.tls]`, and refuses
//! (and keeps buffering) when the broker's certificate is signed by another
//! CA. Certificates are generated for each run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use sensor_gateway_e2e::*;

use crate::aligned_base_ms;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Mosquitto with a TLS listener (`tls`) and a plain one (`plain`, for the
/// test's subscriber).
struct TlsBroker {
    child: Child,
    tls: std::net::SocketAddr,
    plain: std::net::SocketAddr,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn tls_broker(dir: &Path, pki: &Pki) -> TlsBroker {
    let tls = free_addr();
    let plain = loop {
        let a = free_addr();
        if a != tls {
            break a;
        }
    };
    for (name, text) in [
        ("ca.pem", &pki.ca_pem),
        ("server.pem", &pki.cert_pem),
        ("server.key", &pki.key_pem),
    ] {
        std::fs::write(dir.join(name), text).expect("write a PEM file");
    }
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest stderr\n\
         listener {} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         listener {} 127.0.0.1\n",
        tls.port(),
        plain.port(),
        d = dir.display()
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
    let log = std::fs::File::create(dir.join("broker.log")).expect("broker log");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mosquitto");
    let broker = TlsBroker { child, tls, plain };
    wait_until("mosquitto's listeners", Duration::from_secs(10), || {
        std::net::TcpStream::connect(tls).is_ok() && std::net::TcpStream::connect(plain).is_ok()
    })
    .await;
    broker
}

fn config(source: std::net::SocketAddr, upstream: std::net::SocketAddr, ca: &Path) -> String {
    format!(
        "{}\n[upstream.tls]\nca_file = \"{}\"\n",
        gateway_config(source, upstream, ""),
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_reach_a_tls_broker_and_a_wrong_ca_is_refused() {
    if !mosquitto_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker_pki = pki();
    let upstream = tls_broker(dir.path(), &broker_pki).await;
    let source = Broker::start(BrokerKind::Rumqttd).await;
    let sub = Subscriber::start(upstream.plain, "gateways/#").await;

    // A gateway that trusts another CA: it must not talk to this broker.
    let other = pki();
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, &other.ca_pem).expect("write the other CA");
    // Its own client ids: its persistent source session must not be the
    // one the next gateway takes over.
    let impostor_config = config(source.addr, upstream.tls, &wrong_ca)
        .replace("client_id = \"gw-e2e-", "client_id = \"impostor-");
    let mut impostor = Gateway::start(&impostor_config);
    impostor.wait_ready().await;
    wait_until(
        "the certificate to be refused",
        Duration::from_secs(15),
        || {
            let log = impostor.log();
            log.contains("Cannot connect to upstream") && log.contains("ertificate")
        },
    )
    .await;
    assert_eq!(impostor.metric("gateway_upstream_connections_total"), 0.0);
    impostor.kill();

    // The right CA: summaries arrive, over TLS.
    let ca = dir.path().join("ca.pem");
    let mut gw = Gateway::start(&config(source.addr, upstream.tls, &ca));
    gw.wait_ready().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gw.metric("gateway_upstream_connected") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS connection to the broker\n--- gateway log\n{}\n--- broker log\n{}",
            gw.log(),
            std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut publisher = Publisher::connect(source.addr).await;
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
    // The window closes once its sensor has been quiet for a window.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while unique_seqs(&sub.snapshot()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary over TLS\n--- gateway log\n{}\n--- broker log\n{}",
            gw.log(),
            std::fs::read_to_string(dir.path().join("broker.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let messages = dedupe(&sub.snapshot());
    assert_eq!(messages[0]["count"], 20);
    let status = gw.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", gw.log());
    assert!(sub.snapshot().iter().all(|m| m["gateway"] == "gw-e2e"));
}
