//! The importers: another tool's configuration in, exec-allinone's TOML out. `nginx` reads the
//! vendor's load-balancer configuration (`import-nginx`), `env` a Genesys `.env` (`import-env`).

pub mod env;
pub mod nginx;
