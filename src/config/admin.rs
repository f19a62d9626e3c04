//! The `[admin]` section: the health, metrics and status listener.

use std::net::SocketAddr;

use super::{Section, TlsConfig};
use crate::cli::Role;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl AdminConfig {
    pub(super) fn defaults(role: Role) -> AdminConfig {
        AdminConfig { listen: default_admin_addr(role), tls: None, max_connections: 64 }
    }

    pub(super) fn parse(table: Option<&toml::Table>, role: Role, problems: &mut Vec<String>) -> AdminConfig {
        let empty = toml::Table::new();
        let mut s = Section::new("admin", table.unwrap_or(&empty), problems);
        let listen = s.addr("listen", default_admin_addr(role));
        let tls = s.tls();
        let max_connections = s.count("max_connections", 64, 1..=1_000_000);
        s.finish();
        AdminConfig { listen, tls, max_connections }
    }
}

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
