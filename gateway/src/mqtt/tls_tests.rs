//! TLS configuration, classification of real rustls handshake failures
//! (an in-memory handshake against a rustls server) and the expiry
//! computation.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use super::*;
use crate::config::ClientAuth;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// A certificate signed by `ca` for `names`, valid from `from` to `until`
/// (years).
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn leaf(ca: &Ca, names: &[&str], from: i32, until: i32) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    Leaf {
        cert: params.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        key,
    }
}

fn der_key(k: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server with `leaf`, requiring client certificates signed by
/// `client_ca` when given.
fn server(leaf: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            b.with_client_cert_verifier(v)
        }
    };
    Arc::new(
        b.with_single_cert(vec![leaf.cert.der().clone()], der_key(&leaf.key))
            .unwrap(),
    )
}

/// Writes the files of a `tls` table into `dir`.
fn tls_config(dir: &Path, ca: &Ca, client: Option<&Leaf>, server_name: Option<&str>) -> TlsConfig {
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    let client_auth = client.map(|c| {
        std::fs::write(dir.join("client.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), c.key.serialize_pem()).unwrap();
        ClientAuth {
            cert_file: dir.join("client.pem"),
            key_file: dir.join("client.key"),
        }
    });
    TlsConfig {
        ca_file: Some(dir.join("ca.pem")),
        client_auth,
        server_name: server_name.map(str::to_owned),
        client_cert_not_after: None,
        files_digest: String::new(),
    }
}

/// Runs a handshake in memory, then one application record each way; the
/// client's error, if any.
fn connect(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    host: &str,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut c = rustls::ClientConnection::new(client, name).unwrap();
    let mut s = rustls::ServerConnection::new(server).unwrap();
    use std::io::Write;
    c.writer().write_all(b"CONNECT").unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut &buf[..]).unwrap();
        let server_failed = s.process_new_packets().is_err();
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if server_failed {
            return Err(rustls::Error::General(
                "the server failed without an alert".into(),
            ));
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            let mut buf = Vec::new();
            s.writer().write_all(b"CONNACK").unwrap();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            return Ok(());
        }
    }
    Err(rustls::Error::General("no progress".into()))
}

/// What a gateway trusting `ca` (with its `client` certificate and
/// `server_name`) sees when it connects as `host` to a server with `srv`
/// that requires client certificates of `client_ca`; and its settings.
fn check(
    ca: &Ca,
    client: Option<&Leaf>,
    server_name: Option<&str>,
    (srv, client_ca): (&Leaf, Option<&Ca>),
    host: &str,
) -> (TlsConfig, Option<TlsProblem>) {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_config(dir.path(), ca, client, server_name);
    let client = rustls_config(&tls).unwrap();
    let Err(err) = connect(client, server(srv, client_ca), host) else {
        return (tls, None);
    };
    // As rumqttc and the guard see it: inside an io::Error.
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
    (tls.clone(), classify(&io))
}

#[test]
fn a_good_server_and_client_certificate_connect() {
    let ca = ca();
    let srv = leaf(&ca, &["broker.example"], 2020, 2099);
    let cli = leaf(&ca, &["gw-1"], 2020, 2099);
    let (_, p) = check(&ca, Some(&cli), None, (&srv, Some(&ca)), "broker.example");
    assert_eq!(p, None);
}

#[test]
fn each_refused_handshake_is_told_by_its_cause_naming_the_file_and_the_fix() {
    let (ca, other) = (ca(), ca());
    let good = leaf(&ca, &["broker.example"], 2020, 2099);
    let expired = leaf(&ca, &["broker.example"], 2000, 2001);
    let foreign = leaf(&other, &["broker.example"], 2020, 2099);
    let stranger = leaf(&other, &["gw-1"], 2020, 2099);
    let host = "broker.example";
    let cases = [
        (
            check(&ca, None, None, (&expired, None), host),
            TlsProblem::ServerCertExpired,
            "expired",
        ),
        (
            check(&ca, None, None, (&good, None), "10.0.0.7"),
            TlsProblem::WrongHost,
            "server_name",
        ),
        (
            check(&ca, None, None, (&foreign, None), host),
            TlsProblem::UnknownCa,
            "ca.pem",
        ),
        (
            check(&ca, Some(&stranger), None, (&good, Some(&ca)), host),
            TlsProblem::ClientCertRejected("an alert".into()),
            "client.pem",
        ),
        (
            check(&ca, None, None, (&good, Some(&ca)), host),
            TlsProblem::ClientCertRejected("an alert".into()),
            "cert_file is not set",
        ),
    ];
    for ((tls, got), want, says) in cases {
        let got = got.expect("refused");
        assert_eq!(
            std::mem::discriminant(&got),
            std::mem::discriminant(&want),
            "{got:?}"
        );
        let line = want.explain(&tls);
        assert!(line.contains(says), "{line}");
    }
}

#[test]
fn server_name_names_the_certificate_of_a_broker_reached_by_address() {
    let ca = ca();
    let srv = leaf(&ca, &["broker.example"], 2020, 2099);
    let (_, p) = check(&ca, None, Some("broker.example"), (&srv, None), "10.0.0.7");
    assert_eq!(p, None);
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let cli = leaf(&ca, &["gw-1"], 2020, 2099);
    let tls = tls_config(dir.path(), &ca, Some(&cli), None);
    std::fs::write(
        dir.path().join("client.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = rustls_config(&tls).unwrap_err();
    assert_eq!(e.setting, TlsSetting::KeyFile);
    assert!(
        e.message.contains("client.key") && e.message.contains("client.pem"),
        "{e}"
    );
}

#[test]
fn an_error_without_tls_in_it_is_not_classified() {
    let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(classify(&e), None);
}

#[test]
fn the_not_after_of_a_certificate_is_read() {
    let ca = ca();
    let cli = leaf(&ca, &["gw-1"], 2020, 2030);
    // 2030-01-01T00:00:00Z
    assert_eq!(not_after(cli.cert.der()), Ok(1_893_456_000));
}

#[test]
fn the_expiry_warning_starts_thirty_days_before() {
    let day = 86_400;
    assert_eq!(
        cert_expiry(100 * day, 60 * day),
        CertExpiry {
            seconds_left: 40 * day,
            warn: false
        }
    );
    assert!(!cert_expiry(100 * day, 70 * day).warn);
    assert!(cert_expiry(100 * day, 70 * day + 1).warn);
    assert_eq!(cert_expiry(100 * day, 101 * day).seconds_left, -day);
}
