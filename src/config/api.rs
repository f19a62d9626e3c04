//! The listener keys excp and exrp share: each serves one JSON API on one address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Section, TlsConfig};
use crate::http::ServerOptions;

/// `listen`, `tls`, `allow`, `header_timeout`, `max_connections`, `max_body_size` and
/// `body_timeout` of `[excp]` or `[exrp]`.
#[derive(Debug, Clone)]
pub struct ApiListener {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Client addresses served (`allow`); None: everyone.
    pub allow: Option<crate::http::allow::AllowList>,
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    pub max_body_size: u64,
    /// A request body that sends nothing for this long is cut off.
    pub body_timeout: Duration,
}

impl ApiListener {
    /// Reads the keys from the role's section, with its port and body size as defaults.
    pub(super) fn parse(s: &mut Section<'_, '_>, port: u16, max_body_size: u64) -> ApiListener {
        let listen = s.addr("listen", SocketAddr::from(([0, 0, 0, 0], port)));
        let tls = s.tls();
        let allow = s.allow("allow");
        let header_timeout = s.duration("header_timeout", Duration::from_secs(30));
        let max_connections = s.count("max_connections", 1024, 1..=1_000_000);
        let max_body_size = s.size("max_body_size", max_body_size);
        let body_timeout = s.duration("body_timeout", Duration::from_secs(30));
        for (key, value) in [("header_timeout", header_timeout), ("body_timeout", body_timeout)] {
            if value.is_zero() {
                s.problem_at(key, "must be more than zero");
            }
        }
        if max_body_size == 0 {
            s.problem_at("max_body_size", "must be more than zero");
        }
        ApiListener { listen, tls, allow, header_timeout, max_connections, max_body_size, body_timeout }
    }

    /// How `http::serve_router` serves this listener, `tls` being its loaded certificate.
    pub fn server_options(
        &self,
        name: &'static str,
        tls: Option<Arc<rustls::ServerConfig>>,
        grace: Duration,
    ) -> ServerOptions {
        ServerOptions {
            name,
            header_timeout: self.header_timeout,
            tls,
            grace,
            connections: ServerOptions::cap(self.max_connections),
            allow: self.allow.clone().map(Arc::new),
            ..ServerOptions::DEFAULT_LIMITS
        }
    }
}
