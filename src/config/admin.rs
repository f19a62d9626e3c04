//! The `[admin]` section: the health, metrics and status listener.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Section, TlsConfig};
use crate::cli::Role;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How often the status page's trends are sampled; a ring keeps `trends::RING` samples
    /// (a day at the default minute).
    pub trend_interval: Duration,
}

impl AdminConfig {
    pub(super) fn defaults(role: Role) -> AdminConfig {
        AdminConfig { listen: default_admin_addr(role), tls: None, max_connections: 64, trend_interval: MINUTE }
    }

    pub(super) fn parse(table: Option<&toml::Table>, role: Role, problems: &mut Vec<String>) -> AdminConfig {
        let empty = toml::Table::new();
        let mut s = Section::new("admin", table.unwrap_or(&empty), problems);
        let listen = s.addr("listen", default_admin_addr(role));
        let tls = s.tls();
        let max_connections = s.count("max_connections", 64, 1..=1_000_000);
        let trend_interval = s.duration("trend_interval", MINUTE);
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&trend_interval) {
            s.problem_at("trend_interval", "must be from 1s to 1h");
        }
        s.finish();
        AdminConfig { listen, tls, max_connections, trend_interval }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// One port per role, so that the roles of one VM can each run alone beside the others.
fn default_admin_addr(role: Role) -> SocketAddr {
    let port = match role {
        Role::All => 9650,
        Role::Webdav => 9651,
        Role::Lb => 9652,
        Role::Excp => 9653,
        Role::Exrp => 9654,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}
