//! TLS of every MQTT connection (the upstream link and MQTT sources), with
//! rustls and the `ring` provider: building the client configuration from
//! the files a [`TlsConfig`] names, telling why a connection's TLS failed,
//! and how long the client certificate has left.
//!
//! The configuration is built once per connection setting and shared: the
//! upstream link hands it to rumqttc as [`TlsConfiguration::Rustls`], a
//! source's guard to its own TLS connector. The trusted roots are the
//! `ca_file` bundle, or the operating system's store (rustls-native-certs)
//! when no `ca_file` is set. rustls speaks TLS 1.2 and 1.3 only, so 1.2 is
//! the minimum without a setting. `server_name` replaces the broker's host
//! as the name checked against the broker's certificate.
//!
//! Configuration validation calls [`rustls_config`] at load, so a file that
//! is missing, malformed or whose key does not match its certificate stops
//! the gateway (or a reload) with the setting's line; what can only fail at
//! a handshake is told by [`classify`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::TlsConfiguration;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::config::TlsConfig;

/// The setting a [`TlsError`] is about, so that validation points at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSetting {
    CaFile,
    CertFile,
    KeyFile,
    ServerName,
}

/// Why the TLS configuration cannot be built from its files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub setting: TlsSetting,
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl TlsError {
    fn new(setting: TlsSetting, message: String, hint: impl Into<String>) -> Self {
        TlsError {
            setting,
            message,
            hint: hint.into(),
        }
    }
}

/// The rumqttc transport setting of `cfg`.
pub fn client_config(cfg: &TlsConfig) -> Result<TlsConfiguration, TlsError> {
    rustls_config(cfg).map(TlsConfiguration::Rustls)
}

/// Builds the rustls client configuration from the files `cfg` names.
pub fn rustls_config(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots(cfg.ca_file.as_deref())?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| {
            TlsError::new(
                TlsSetting::CaFile,
                format!("the trusted CAs cannot verify certificates: {e}"),
                "point ca_file at the PEM bundle of the CA that signed the broker's certificate",
            )
        })?;
    let server_name = match &cfg.server_name {
        None => None,
        Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
            TlsError::new(
                TlsSetting::ServerName,
                format!("`{name}` is not a host name or an IP address"),
                "write the name the broker's certificate is issued for, such as \"broker.example.com\"",
            )
        })?),
    };
    let verifier = Arc::new(Verifier {
        inner: webpki,
        server_name,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            TlsError::new(
                TlsSetting::CaFile,
                format!("no TLS version available: {e}"),
                "this build of the gateway lacks TLS support",
            )
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let certs = client_chain(&auth.cert_file)?;
            let key = client_key(&auth.key_file)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                TlsError::new(
                    TlsSetting::KeyFile,
                    format!(
                        "the key in {} does not belong to the certificate in {} ({e})",
                        auth.key_file.display(),
                        auth.cert_file.display()
                    ),
                    "use the key the certificate was issued for (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)",
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The client certificate chain in `path`, end-entity certificate first.
pub fn client_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |what: String| {
        TlsError::new(
            TlsSetting::CertFile,
            what,
            "point cert_file at the PEM file of the gateway's certificate (its chain may follow it)",
        )
    };
    let certs = pem_certs(path, bad)?;
    if certs.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The client key in `path`: PKCS#8, RSA (PKCS#1) or EC (SEC1), PEM.
fn client_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError::new(
            TlsSetting::KeyFile,
            format!("{} holds no usable private key: {e}", path.display()),
            "point key_file at the PEM private key of the certificate (PKCS#8 \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"), unencrypted",
        )
    })
}

/// The PEM certificates in `path`; `bad` makes the error of a file that
/// cannot be read or holds a malformed one.
fn pem_certs(
    path: &Path,
    bad: impl Fn(String) -> TlsError,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "{} holds a malformed certificate: {e}",
                path.display()
            ))
        })
}

/// The trusted roots: the bundle in `ca_file`, or the system's.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::new(
                TlsSetting::CaFile,
                "no `ca_file` is set and the system has no trusted CA certificates".into(),
                "install the system's CA certificates (Debian: ca-certificates) or set ca_file",
            ));
        }
        return Ok(roots);
    };
    let bad = |what: String| {
        TlsError::new(
            TlsSetting::CaFile,
            what,
            "point ca_file at the PEM bundle of the CA that signed the broker's certificate",
        )
    };
    for ca in pem_certs(path, bad)? {
        roots.add(ca).map_err(|e| {
            bad(format!(
                "{} holds a certificate rustls rejects: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(roots)
}

/// webpki's verification, with the name checked replaced by `server_name`
/// when one is set.
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.server_name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a TLS connection to a broker failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The broker's certificate is past its notAfter.
    ServerCertExpired,
    /// The broker's certificate's notBefore is in the future (or the
    /// gateway's clock is behind).
    ServerCertNotYetValid,
    /// The broker's certificate is not issued for the name connected to.
    WrongHost,
    /// The broker's certificate is not signed by a trusted CA.
    UnknownCa,
    /// The broker refused the gateway's certificate (an alert: bad
    /// certificate, unknown CA, certificate required...).
    ClientCertRejected(String),
    /// Another TLS failure.
    Handshake(String),
}

/// The TLS problem behind a connection error, if TLS is what failed:
/// `err` is rumqttc's `ConnectionError` (either protocol version's), a
/// source guard's `io::Error`, or anything whose chain of sources holds a
/// `rustls::Error`, directly or inside an `io::Error`.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(classify_rustls(r));
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(classify_rustls(r));
            }
        }
        next = e.source();
    }
    None
}

/// A failed connection as its log line says it: with TLS, the
/// [`TlsProblem`]'s explanation (the file and the fix) when TLS is what
/// failed; otherwise the error itself.
pub fn describe_connection_error(
    err: &(dyn std::error::Error + 'static),
    tls: Option<&TlsConfig>,
) -> String {
    match tls.and_then(|t| classify(err).map(|p| p.explain(t))) {
        Some(why) => why,
        None => err.to_string(),
    }
}

/// The problem a rustls error stands for.
pub fn classify_rustls(e: &rustls::Error) -> TlsProblem {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => TlsProblem::ServerCertExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::ServerCertNotYetValid,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongHost,
            C::UnknownIssuer | C::BadSignature => TlsProblem::UnknownCa,
            other => {
                TlsProblem::Handshake(format!("the broker's certificate is invalid: {other:?}"))
            }
        },
        rustls::Error::AlertReceived(
            a @ (AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => TlsProblem::ClientCertRejected(format!("{a:?}")),
        other => TlsProblem::Handshake(other.to_string()),
    }
}

impl TlsProblem {
    /// The operator's sentence: what failed, which file, and the fix.
    pub fn explain(&self, tls: &TlsConfig) -> String {
        let ca = match &tls.ca_file {
            Some(p) => format!("ca_file {}", p.display()),
            None => "the system's trusted CAs (no ca_file is set)".into(),
        };
        let cert = tls.client_auth.as_ref().map_or_else(
            || "no client certificate (cert_file is not set)".to_owned(),
            |a| format!("the client certificate cert_file {}", a.cert_file.display()),
        );
        match self {
            TlsProblem::ServerCertExpired => format!("TLS: the broker's certificate has expired (checked against {ca}); renew the broker's certificate, or check the gateway's clock."),
            TlsProblem::ServerCertNotYetValid => format!("TLS: the broker's certificate is not valid yet (checked against {ca}); check the gateway's clock, or the broker certificate's start date."),
            TlsProblem::WrongHost => format!("TLS: wrong host: the broker's certificate is not issued for {}; connect to the name on the certificate, or set server_name to it (for brokers reached by IP address or through a tunnel).", tls.server_name.as_deref().map_or_else(|| "the broker address's host".to_owned(), |n| format!("server_name `{n}`"))),
            TlsProblem::UnknownCa => format!("TLS: unknown CA: the broker's certificate is not signed by {ca}; set ca_file to the PEM bundle of the CA that signed the broker's certificate."),
            TlsProblem::ClientCertRejected(alert) => format!("TLS: the broker rejected {cert} (alert {alert}); have the certificate signed by a CA the broker trusts (its cafile), and check that it has not expired or been revoked."),
            TlsProblem::Handshake(why) => format!("TLS handshake failed ({why}); check that the broker's port speaks TLS and the TLS settings against {ca}."),
        }
    }
}

/// What the gateway says about its client certificate's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertExpiry {
    /// Seconds until notAfter; negative once expired.
    pub seconds_left: i64,
    /// Fewer than [`EXPIRY_WARNING_S`] remain.
    pub warn: bool,
}

/// The warning starts this long before the client certificate expires.
pub const EXPIRY_WARNING_S: i64 = 30 * 24 * 3600;

/// How often the expiry is checked again while the gateway runs.
pub const EXPIRY_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The expiry of a certificate valid until `not_after_s` at `now_s` (both
/// seconds since the Unix epoch).
pub fn cert_expiry(not_after_s: i64, now_s: i64) -> CertExpiry {
    let seconds_left = not_after_s.saturating_sub(now_s);
    CertExpiry {
        seconds_left,
        warn: seconds_left < EXPIRY_WARNING_S,
    }
}

/// The notAfter of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let t = parsed
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    Ok(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

/// Sets the expiry gauge of the client certificate of `tls` and logs a
/// warning when fewer than 30 days remain. The reload task calls it at
/// start, after each reload and once a day ([`EXPIRY_CHECK_INTERVAL`]); `connection` names the
/// connection in the log ("upstream", a source's name). The gauge
/// (`gateway_tls_client_cert_expiry_seconds`) is the upstream's.
pub fn report_cert_expiry(
    tls: &TlsConfig,
    connection: &str,
    now_s: i64,
    gauge: Option<&crate::metrics::Gauge>,
) {
    let (Some(auth), Some(not_after_s)) = (&tls.client_auth, tls.client_cert_not_after) else {
        if let Some(g) = gauge {
            g.set(0);
        }
        return;
    };
    let expiry = cert_expiry(not_after_s, now_s);
    if let Some(g) = gauge {
        g.set(expiry.seconds_left);
    }
    if expiry.warn {
        let file: &PathBuf = &auth.cert_file;
        tracing::warn!(
            connection,
            cert_file = %file.display(),
            days_left = expiry.seconds_left / 86_400,
            "The client certificate expires in fewer than 30 days (or has expired); renew it, replace cert_file and key_file, and reload the gateway."
        );
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
