//! TLS for any listener: a rustls server config from PEM certificate chain and key files.

use std::sync::Arc;

use anyhow::Context;

use std::path::Path;

/// Installs the process-wide crypto provider; call once before building any TLS config.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server config for HTTP/1.1 from a PEM certificate chain (`cert`) and its private key.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_provider();
    let cert_pem = std::fs::read(cert).with_context(|| format!("cannot read certificate {}", cert.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read key {}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}
