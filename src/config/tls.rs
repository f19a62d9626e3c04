//! A listener's `tls` table: certificate and key files, loaded once.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Loaded by the file checks before any port is bound, and then only handed out.
    server: std::sync::OnceLock<std::sync::Arc<rustls::ServerConfig>>,
}

impl TlsConfig {
    pub fn new(cert: PathBuf, key: PathBuf) -> TlsConfig {
        TlsConfig { cert, key, server: Default::default() }
    }

    /// The server config from the two files, loaded on first use (the file checks).
    pub fn server(&self) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
        if let Some(server) = self.server.get() {
            return Ok(server.clone());
        }
        let server = crate::http::tls::load(&self.cert, &self.key)?;
        Ok(self.server.get_or_init(|| server).clone())
    }
}
