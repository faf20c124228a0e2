//! TLS for the upstream connection, with rustls and the `ring` provider.
//!
//! Only the CA named in the configuration is trusted: a plant gateway talks
//! to one known broker, and an operating system's root store on an
//! unattended device is more often stale than helpful.

use std::sync::Arc;

use anyhow::Context;
use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

pub fn client_config(cfg: &TlsConfig) -> anyhow::Result<TlsConfiguration> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&cfg.ca_file)
        .with_context(|| format!("cannot read the CA file {}", cfg.ca_file.display()))?;
    for ca in cas {
        let ca =
            ca.with_context(|| format!("{} holds a malformed certificate", cfg.ca_file.display()))?;
        roots.add(ca).with_context(|| {
            format!(
                "{} holds a certificate rustls rejects",
                cfg.ca_file.display()
            )
        })?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cfg.ca_file.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no safe protocol version")?
        .with_root_certificates(roots);
    let config = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read the client certificate {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} holds a malformed certificate", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .context("the client certificate and key do not fit together")?
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}
