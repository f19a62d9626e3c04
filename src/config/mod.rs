//! Configuration: the TOML file (or the embedded sandbox default) parsed into typed, validated
//! values before any port is bound. Every problem is collected and reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Role;

mod admin;
mod api;
mod excp;
mod exrp;
mod lb;
mod secret;
mod section;
mod tls;
mod webdav;
pub use admin::AdminConfig;
pub use api::ApiListener;
pub use excp::{ConversationProvider, ExcpConfig, GirConfig, SharedCalls, StoreWatch};
pub use exrp::{ExrpConfig, GenesysCloudConfig, Sink, TransientStorage};
pub use lb::key as lb_key;
pub use lb::{HostHeader, LbConfig, NextUpstream, PoolConfig, PoolSettings, ServerConfig, UriMode, split_host_port};
pub use secret::{Secret, read_secret};
pub use section::{PLACEHOLDER, parse_duration, parse_size};
use section::{Section, placeholders};
pub use tls::TlsConfig;
pub use webdav::{S3Config, WebdavConfig};

/// Exit code for a configuration problem (EX_CONFIG): systemd units do not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Where the sandbox keeps its files when no config is given.
pub const SANDBOX_DIR: &str = "exec-allinone-data";
/// The credential the sandbox creates for recorders; loopback only, printed on start.
pub const SANDBOX_USER: &str = "mcp";
pub const SANDBOX_PASSWORD: &str = "mcp-sandbox";

#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub webdav: Option<WebdavConfig>,
    pub lb: Option<LbConfig>,
    pub excp: Option<ExcpConfig>,
    pub exrp: Option<ExrpConfig>,
    /// The file this came from (SIGHUP re-reads it); None for the sandbox.
    pub source: Option<PathBuf>,
    /// The sandbox creates its directories and password file on start.
    pub sandbox: bool,
}

pub use crate::http::client::{Outbound, Proxy};

/// Why the configuration was refused: every problem, one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s) in the configuration:", self.problems.len())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the file, or builds the embedded sandbox default when there is none.
    pub fn load(path: Option<&Path>, role: Role) -> Result<Config, ConfigError> {
        match path {
            None if role == Role::Lb => Err(ConfigError {
                problems: vec![
                    "--role lb has no embedded default: it needs the addresses of your excp and exrp servers. \
                     Give --config FILE with [lb.pools.<name>] tables (see config/example.toml), or translate \
                     an nginx config with `exec-allinone import-nginx /etc/nginx/nginx.conf`"
                        .into(),
                ],
            }),
            None if role == Role::Excp => Err(ConfigError {
                problems: vec![
                    "--role excp has no embedded default: it needs recording_processor_url (where exrp is, \
                     usually the lb's exrp pool) and a state_dir. Give --config FILE with an [excp] section \
                     (see config/example.toml)"
                        .into(),
                ],
            }),
            None if role == Role::Exrp => Err(ConfigError {
                problems: vec![
                    "--role exrp has no embedded default: it needs the WebDAV store to fetch recordings from \
                     ([exrp.transient_storage]) and a state_dir. Give --config FILE with an [exrp] section \
                     (see config/example.toml)"
                        .into(),
                ],
            }),
            None => Ok(Config::sandbox(role, Path::new(SANDBOX_DIR))),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| ConfigError { problems: vec![format!("cannot read {}: {err}", path.display())] })?;
                let mut config = Config::from_toml_str(&text, role)?;
                config.source = Some(path.to_path_buf());
                config.check_files()?;
                Ok(config)
            }
        }
    }

    /// SIGHUP: reads `path` again and parses the sections of `role`, the error as one line for
    /// the log (the running configuration is kept on error).
    pub fn reread(path: &Path, role: Role) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml_str(&text, role).map_err(|e| e.to_string())
    }

    /// Parses and validates without touching the file system.
    pub fn from_toml_str(text: &str, role: Role) -> Result<Config, ConfigError> {
        Config::from_toml_str_env(text, role, &|name| std::env::var(name).ok())
    }

    /// Like `from_toml_str` with the environment given (the Genesys `.env` overrides).
    pub fn from_toml_str_env(text: &str, role: Role, env: excp::EnvLookup<'_>) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|err: toml::de::Error| ConfigError {
            problems: vec![format!("not valid TOML: {}", err.to_string().trim_end())],
        })?;
        let mut problems = Vec::new();
        // Only the sections this process runs: a shared site file may hold another VM's blanks.
        for (key, value) in &table {
            let wanted = match key.as_str() {
                "webdav" => matches!(role, Role::Webdav | Role::All),
                "lb" => matches!(role, Role::Lb | Role::All),
                "excp" => matches!(role, Role::Excp | Role::All),
                "exrp" => matches!(role, Role::Exrp | Role::All),
                _ => true,
            };
            if wanted {
                placeholders(&toml::Table::from_iter([(key.clone(), value.clone())]), "", &mut problems);
            }
        }
        let mut top = Section::new("", &table, &mut problems);
        let shutdown_grace = top.duration("shutdown_grace", Duration::from_secs(30));
        let admin_table = top.table("admin");
        let webdav_table = top.table("webdav");
        let lb_table = top.table("lb");
        let excp_table = top.table("excp");
        let exrp_table = top.table("exrp");
        top.finish();

        let admin = AdminConfig::parse(admin_table, role, &mut problems);

        let wants_webdav = matches!(role, Role::Webdav | Role::All);
        let webdav = match webdav_table {
            Some(t) if wants_webdav => Some(WebdavConfig::parse(t, &mut problems)),
            Some(_) => None,
            None if role == Role::Webdav => {
                problems.push("[webdav] section is missing; --role webdav needs it".into());
                None
            }
            None => None,
        };
        let lb = match lb_table {
            Some(t) if matches!(role, Role::Lb | Role::All) => Some(LbConfig::parse(t, &mut problems)),
            Some(_) => None,
            None if role == Role::Lb => {
                problems.push("[lb.pools.<name>] tables are missing; --role lb needs at least one pool".into());
                None
            }
            None => None,
        };
        let excp = match excp_table {
            Some(t) if matches!(role, Role::Excp | Role::All) => Some(ExcpConfig::parse(t, env, &mut problems)),
            Some(_) => None,
            None if role == Role::Excp => {
                problems.push("[excp] section is missing; --role excp needs it".into());
                None
            }
            None => None,
        };
        let exrp = match exrp_table {
            Some(t) if matches!(role, Role::Exrp | Role::All) => Some(ExrpConfig::parse(t, env, &mut problems)),
            Some(_) => None,
            None if role == Role::Exrp => {
                problems.push("[exrp] section is missing; --role exrp needs it".into());
                None
            }
            None => None,
        };
        if role == Role::All
            && webdav.is_none()
            && lb.is_none()
            && excp.is_none()
            && exrp.is_none()
            && problems.is_empty()
        {
            problems.push("no role section ([webdav], [lb], [excp], [exrp]) in the file: nothing to run".into());
        }
        let config = Config { admin, shutdown_grace, webdav, lb, excp, exrp, source: None, sandbox: false };
        config.check_listeners(&mut problems);
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }

    /// The loopback default a newcomer gets without a config file.
    pub fn sandbox(role: Role, dir: &Path) -> Config {
        if role == Role::All {
            // The whole path: the same file an operator could write (src/config/sandbox.toml).
            let text = include_str!("sandbox.toml").replace("{dir}", &dir.display().to_string());
            let mut config = match Config::from_toml_str_env(&text, Role::All, &|_| None) {
                Ok(c) => c,
                Err(e) => unreachable!("the embedded sandbox config is valid (unit-tested): {e}"),
            };
            config.sandbox = true;
            return config;
        }
        let webdav = matches!(role, Role::Webdav | Role::All).then(|| WebdavConfig {
            listen: "127.0.0.1:8000".parse().expect("literal address"),
            tls: None,
            prefix: "/recordings".into(),
            root: dir.join("recordings"),
            htpasswd: dir.join("htpasswd"),
            ..WebdavConfig::defaults()
        });
        Config {
            admin: AdminConfig::defaults(role),
            shutdown_grace: Duration::from_secs(30),
            webdav,
            lb: None,
            excp: None,
            exrp: None,
            source: None,
            sandbox: true,
        }
    }

    /// The roles this process will run.
    pub fn roles(&self) -> Vec<&'static str> {
        let mut roles = Vec::new();
        if self.webdav.is_some() {
            roles.push("webdav");
        }
        if self.lb.is_some() {
            roles.push("lb");
        }
        if self.excp.is_some() {
            roles.push("excp");
        }
        if self.exrp.is_some() {
            roles.push("exrp");
        }
        roles
    }

    /// Checks that need the file system (files exist and parse), still before binding.
    fn check_files(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut tls_configs = vec![("admin".to_string(), &self.admin.tls)];
        for pool in self.lb.iter().flat_map(|lb| &lb.pools) {
            tls_configs.push((format!("lb.pools.{}", pool.name), &pool.tls));
        }
        if let Some(e) = &self.excp {
            tls_configs.push(("excp".to_string(), &e.api.tls));
        }
        if let Some(e) = &self.exrp {
            tls_configs.push(("exrp".to_string(), &e.api.tls));
        }
        if let Some(w) = &self.webdav {
            tls_configs.push(("webdav".to_string(), &w.tls));
            w.check_files(&mut problems);
        }
        for (name, tls) in tls_configs {
            if let Some(tls) = tls
                && let Err(err) = tls.server()
            {
                problems.push(format!("{name}.tls: {err:#}"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError { problems }) }
    }

    fn check_listeners(&self, problems: &mut Vec<String>) {
        let mut listeners = vec![("admin".to_string(), self.admin.listen)];
        if let Some(w) = &self.webdav {
            listeners.push(("webdav".to_string(), w.listen));
        }
        for pool in self.lb.iter().flat_map(|lb| &lb.pools) {
            listeners.push((format!("lb.pools.{}", pool.name), pool.listen));
        }
        if let Some(e) = &self.excp {
            listeners.push(("excp".to_string(), e.api.listen));
        }
        if let Some(e) = &self.exrp {
            listeners.push(("exrp".to_string(), e.api.listen));
        }
        for (i, (a_name, a)) in listeners.iter().enumerate() {
            for (b_name, b) in &listeners[i + 1..] {
                let same_ip = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
                if a.port() != 0 && a.port() == b.port() && same_ip {
                    problems.push(format!("{a_name}.listen and {b_name}.listen both use {a} / {b}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml_str(text, Role::All).expect_err("config should be refused").problems
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("30GiB"), Ok(30 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(parse_duration("30s", Duration::from_secs(1)), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m", Duration::from_secs(1)), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2", Duration::from_secs(60)), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms", Duration::from_secs(1)), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn every_problem_is_listed() {
        let p = problems(
            r#"
            colour = "blue"
            [admin]
            listen = "nowhere"
            [webdav]
            listen = "127.0.0.1:80"
            prefix = "recordings/"
            max_file_size = "lots"
            fsync = "yes"
            typo = 1
            "#,
        );
        let joined = p.join("\n");
        for needle in [
            "colour: unknown key",
            "admin.listen",
            "webdav.prefix",
            "webdav.max_file_size",
            "webdav.fsync",
            "webdav.typo: unknown key",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn incomplete_roles_and_clashing_listeners_are_refused() {
        let p = problems("[exrp]\nlisten = \"0.0.0.0:8080\"\n[webdav]\nlisten = \"0.0.0.0:9650\"\n");
        assert!(p.iter().any(|m| m.contains("exrp.transient_storage: is required")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("exrp.state_dir: is required")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("admin.listen and webdav.listen")), "{p:?}");
    }

    #[test]
    fn minimal_webdav_section_parses() {
        let c = Config::from_toml_str(
            "[webdav]\nlisten = \"127.0.0.1:0\"\nroot = \"/tmp/r\"\nhtpasswd = \"/tmp/h\"\nquota = \"30GiB\"\n",
            Role::Webdav,
        )
        .expect("valid");
        let w = c.webdav.expect("webdav section");
        assert_eq!(w.prefix, "/recordings");
        assert_eq!(w.quota, Some(30 << 30));
        assert_eq!(c.admin.listen.port(), 9651);
    }

    #[test]
    fn webdav_on_a_bucket_parses_and_its_mistakes_are_listed() {
        let base = "[webdav]\nlisten = \"127.0.0.1:0\"\nhtpasswd = \"/tmp/h\"\n[webdav.s3]\n";
        let good = format!(
            "{base}endpoint = \"http://127.0.0.1:3900/\"\nregion = \"garage\"\nbucket = \"recordings\"\n\
             key_prefix = \"/site-a/\"\naccess_key_id = \"GK1\"\nsecret_access_key_env = \"PATH\"\n"
        );
        let c = Config::from_toml_str(&good, Role::Webdav).expect("valid");
        let s3 = c.webdav.expect("webdav").s3.expect("s3");
        assert_eq!(
            (s3.endpoint().as_str(), s3.key_prefix.as_str(), s3.path_style),
            ("http://127.0.0.1:3900", "site-a", true)
        );
        let p = problems(
            "[webdav]\nlisten = \"127.0.0.1:0\"\nhtpasswd = \"/tmp/h\"\nroot = \"/r\"\nquota = \"1GiB\"\n\
             max_file_size = \"6GiB\"\n[webdav.s3]\nendpoint = \"ftp://x/y\"\nbucket = \"No_Such\"\n\
             key_prefix = \"a/../b\"\nsecret_access_key = \"s\"\nsecret_access_key_env = \"PATH\"\ntypo = 1\n",
        )
        .join("\n");
        for needle in [
            "webdav.root: does not apply with [webdav.s3]",
            "webdav.quota: does not apply",
            "webdav.max_file_size: at most 5GiB",
            "webdav.s3.endpoint",
            "webdav.s3.bucket",
            "webdav.s3.key_prefix",
            "webdav.s3.access_key_id: is required",
            "webdav.s3.secret_access_key: give only one",
            "webdav.s3.typo: unknown key",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn secrets_inline_from_file_or_environment() {
        let dir = std::env::temp_dir().join(format!("eaio-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut problems = Vec::new();
        let t: toml::Table = format!("a = \"inline\"\nb_file = \"{}\"\nc_env = \"PATH\"\nd = \"x\"\nd_env = \"PATH\"\ne_env = \"EAIO_SURELY_UNSET_VAR\"", file.display()).parse().unwrap();
        assert_eq!(read_secret(&t, "s", "a", &mut problems).unwrap().expose(), "inline");
        assert_eq!(read_secret(&t, "s", "b", &mut problems).unwrap().expose(), "from-file");
        assert!(read_secret(&t, "s", "c", &mut problems).is_some());
        assert!(read_secret(&t, "s", "d", &mut problems).is_none());
        assert!(read_secret(&t, "s", "e", &mut problems).is_none());
        assert!(read_secret(&t, "s", "missing", &mut problems).is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn exrp_section_regions_tenants_and_env() {
        let base = "[admin]\nlisten = \"127.0.0.1:0\"\n[exrp]\nstate_dir = \"/tmp/x\"\n\
                    [exrp.transient_storage]\nurl = \"http://w/recordings/\"\nusername = \"u\"\npassword = \"p\"\n";
        let c = Config::from_toml_str_env(base, Role::Exrp, &|k| (k == "EXRP_PORT").then(|| "9099".into())).unwrap();
        let e = c.exrp.unwrap();
        assert_eq!(e.api.listen.port(), 9099);
        assert_eq!(e.storage.url, "http://w/recordings");
        assert!(matches!(&e.sink, crate::config::Sink::Local { dir } if dir.ends_with("injected")));
        let cloud = format!(
            "{base}[exrp.genesys_cloud]\nregion = \"euw2.pure.cloud\"\nclient_id = \"id\"\npassword = \"s\"\n\
             [exrp.genesys_cloud.tenants.T2]\nclient_id = \"id2\"\nclient_secret = \"s2\"\n"
        );
        let c = Config::from_toml_str_env(&cloud, Role::Exrp, &|_| None).unwrap();
        let crate::config::Sink::Cloud { default, tenants, .. } = c.exrp.unwrap().sink else { panic!("cloud sink") };
        assert_eq!(default.api_url, "https://api.euw2.pure.cloud");
        assert_eq!(default.login_url, "https://login.euw2.pure.cloud");
        assert_eq!(default.client_secret.expose(), "s");
        assert_eq!(tenants["T2"].api_url, default.api_url);
        assert_eq!(tenants["T2"].client_id, "id2");
        let p = problems(&format!(
            "{base}[exrp.genesys_cloud]\nclient_id = \"id\"\nregion = \"api.mypurecloud.com\"\n[exrp.local_sink]\ndir = \"/x\"\n"
        ));
        for needle in ["not both", "region domain", "client_secret"] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle} missing in {p:?}");
        }
        // One EX Org per tenant: a tenant table that would inherit the OAuth client is refused,
        // and so is one for the tenant the top-level org serves.
        let org = "[exrp.genesys_cloud]\nregion = \"mypurecloud.com\"\nclient_id = \"id\"\nclient_secret = \"s\"\n";
        let p = problems(&format!("{base}{org}[exrp.genesys_cloud.tenants.T2]\nregion = \"mypurecloud.com\"\n"));
        assert!(p.iter().any(|m| m.contains("tenants.T2.client_id") && m.contains("its own")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("tenants.T2.client_secret") && m.contains("its own")), "{p:?}");
        let p = problems(&format!(
            "{base}{org}[exrp.genesys_cloud.tenants.Environment]\nclient_id = \"e\"\nclient_secret_env = \"PATH\"\n"
        ));
        assert!(p.iter().any(|m| m.contains("default_tenant")), "{p:?}");
        let c = Config::from_toml_str_env(
            &format!("{base}{org}default_tenant = \"Main\"\n[exrp.genesys_cloud.tenants.Environment]\nclient_id = \"e\"\nclient_secret = \"t\"\n"),
            Role::Exrp,
            &|_| None,
        )
        .unwrap();
        let crate::config::Sink::Cloud { default_tenant, .. } = c.exrp.unwrap().sink else { panic!("cloud sink") };
        assert_eq!(default_tenant, "Main");
    }

    #[test]
    fn the_sandbox_runs_every_role() {
        let c = Config::sandbox(Role::All, Path::new("exec-allinone-data"));
        assert_eq!(c.roles(), vec!["webdav", "lb", "excp", "exrp"]);
        assert!(c.sandbox);
        assert_eq!(Config::sandbox(Role::Webdav, Path::new("d")).roles(), vec!["webdav"]);
    }

    #[test]
    fn example_config_parses() {
        // The example describes a whole site: each VM runs one role and reads its section.
        let text = include_str!("../../config/example.toml");
        for role in [Role::Webdav, Role::Lb, Role::Excp, Role::Exrp] {
            if let Err(e) = Config::from_toml_str_env(text, role, &|_| None) {
                panic!("config/example.toml as --role {role:?}: {e}");
            }
        }
    }
}
