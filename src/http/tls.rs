//! TLS for any listener: a rustls server config from PEM certificate chain and key files.

use std::sync::Arc;

use anyhow::Context;

use crate::config::TlsConfig;

/// Installs the process-wide crypto provider; call once before building any TLS config.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn load(config: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_provider();
    let cert_pem =
        std::fs::read(&config.cert).with_context(|| format!("cannot read certificate {}", config.cert.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", config.cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", config.cert.display());
    let key_pem = std::fs::read(&config.key).with_context(|| format!("cannot read key {}", config.key.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", config.key.display()))?
        .with_context(|| format!("{} holds no private key", config.key.display()))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}
