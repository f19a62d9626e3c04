//! Configuration: the TOML file (or the embedded sandbox default) parsed into typed, validated
//! values before any port is bound. Every problem is collected and reported at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Role;

mod excp;
mod exrp;
pub mod import_env;
mod lb;
pub use excp::{ConversationProvider, ExcpConfig, GirConfig, StoreWatch};
pub use exrp::{ExrpConfig, GenesysCloudConfig, Sink, TransientStorage};
pub use lb::{HostHeader, LbConfig, NextUpstream, PoolConfig, PoolSettings, ServerConfig, UriMode, split_host_port};

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

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

pub use crate::http::client::{Outbound, Proxy};

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Loaded by the file checks before any port is bound, and then only handed out.
    server: std::sync::OnceLock<std::sync::Arc<rustls::ServerConfig>>,
}

impl TlsConfig {
    /// The server config from the two files, loaded on first use (the file checks).
    pub fn server(&self) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
        if let Some(server) = self.server.get() {
            return Ok(server.clone());
        }
        let server = crate::http::tls::load(&self.cert, &self.key)?;
        Ok(self.server.get_or_init(|| server).clone())
    }
}

#[derive(Debug, Clone)]
pub struct WebdavConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// URL prefix the store is mounted under, without a trailing slash ("/recordings").
    pub prefix: String,
    pub root: PathBuf,
    pub htpasswd: PathBuf,
    pub realm: String,
    pub max_file_size: u64,
    pub quota: Option<u64>,
    /// PUTs are refused with 507 when they would leave less than this free on the disk.
    pub min_free_disk: u64,
    pub max_uploads: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// fsync file and directory on every PUT; off trades crash safety for speed.
    pub fsync: bool,
    /// Size of the blocking pool that does all file-system work.
    pub io_threads: usize,
    /// Limit for reading a request's headers; also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// A request body that sends nothing for this long is aborted.
    pub body_idle_timeout: Duration,
    /// A response the client reads nothing of for this long is abandoned (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// Range requests with more ranges than this (after merging) get the whole file.
    pub max_ranges: usize,
    pub max_xml_body: u64,
    pub lock_max_timeout: Duration,
    /// Live locks beyond this are refused with 503: the table is memory a client controls.
    pub max_locks: usize,
    /// A LOCK whose owner element is larger than this is refused with 400.
    pub max_lock_owner_bytes: usize,
}

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

        let admin = {
            let empty = toml::Table::new();
            let mut s = Section::new("admin", admin_table.unwrap_or(&empty), &mut problems);
            let listen = s.addr("listen", default_admin_addr(role));
            let tls = s.tls();
            let max_connections = s.count("max_connections", 64, 1..=1_000_000);
            s.finish();
            AdminConfig { listen, tls, max_connections }
        };

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
            admin: AdminConfig { listen: default_admin_addr(role), tls: None, max_connections: 64 },
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
            tls_configs.push(("excp".to_string(), &e.tls));
        }
        if let Some(e) = &self.exrp {
            tls_configs.push(("exrp".to_string(), &e.tls));
        }
        if let Some(w) = &self.webdav {
            tls_configs.push(("webdav".to_string(), &w.tls));
            match std::fs::read_to_string(&w.htpasswd) {
                Ok(text) => {
                    if let Err(errors) = crate::auth::htpasswd::PasswordFile::parse(&text) {
                        for e in errors {
                            problems.push(format!("webdav.htpasswd {}: {e}", w.htpasswd.display()));
                        }
                    }
                }
                Err(err) => problems.push(format!(
                    "webdav.htpasswd: cannot read {}: {err} (make it with `exec-allinone htpasswd -c FILE USER`)",
                    w.htpasswd.display()
                )),
            }
            match std::fs::symlink_metadata(&w.root) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => problems
                    .push(format!("webdav.root: {} is not a directory (symlinks are not followed)", w.root.display())),
                Err(_) => {
                    let parent = w.root.parent().filter(|p| !p.as_os_str().is_empty());
                    if parent.is_some_and(|p| !p.is_dir()) {
                        problems.push(format!(
                            "webdav.root: {} does not exist and neither does its parent",
                            w.root.display()
                        ));
                    }
                }
            }
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
            listeners.push(("excp".to_string(), e.listen));
        }
        if let Some(e) = &self.exrp {
            listeners.push(("exrp".to_string(), e.listen));
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

impl WebdavConfig {
    fn defaults() -> WebdavConfig {
        WebdavConfig {
            listen: "0.0.0.0:80".parse().expect("literal address"),
            tls: None,
            prefix: "/recordings".into(),
            root: PathBuf::from("/var/lib/exec-allinone/recordings"),
            htpasswd: PathBuf::from("/etc/exec-allinone/htpasswd"),
            realm: "Recordings".into(),
            max_file_size: 512 << 20,
            quota: None,
            min_free_disk: 256 << 20,
            max_uploads: 2000,
            max_connections: 4096,
            fsync: true,
            io_threads: 16,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_ranges: 16,
            max_xml_body: 64 << 10,
            lock_max_timeout: Duration::from_secs(3600),
            max_locks: 10_000,
            max_lock_owner_bytes: 1024,
        }
    }

    fn parse(table: &toml::Table, problems: &mut Vec<String>) -> WebdavConfig {
        let d = WebdavConfig::defaults();
        let mut s = Section::new("webdav", table, problems);
        let listen = s.addr("listen", d.listen);
        let tls = s.tls();
        let prefix = s.string("prefix").unwrap_or(d.prefix);
        let root = s.path("root").unwrap_or(d.root);
        let htpasswd = s.path("htpasswd").unwrap_or(d.htpasswd);
        let realm = s.string("realm").unwrap_or(d.realm);
        let max_file_size = s.size("max_file_size", d.max_file_size);
        let quota = s.optional_size("quota");
        let min_free_disk = s.size("min_free_disk", d.min_free_disk);
        let max_uploads = s.count("max_uploads", d.max_uploads, 1..=1_000_000);
        let max_connections = s.count("max_connections", d.max_connections, 1..=1_000_000);
        if max_connections < max_uploads {
            s.problem_at(
                "max_connections",
                format!("must be at least max_uploads ({max_uploads}): each upload holds a connection"),
            );
        }
        let fsync = s.bool("fsync", d.fsync);
        let io_threads = s.count("io_threads", d.io_threads, 1..=512);
        let header_timeout = s.duration("header_timeout", d.header_timeout);
        let body_idle_timeout = s.duration("body_idle_timeout", d.body_idle_timeout);
        let send_timeout = s.duration("send_timeout", d.send_timeout);
        let max_ranges = s.count("max_ranges", d.max_ranges, 1..=1000);
        let max_xml_body = s.size("max_xml_body", d.max_xml_body);
        let lock_max_timeout = s.duration("lock_max_timeout", d.lock_max_timeout);
        let max_locks = s.count("max_locks", d.max_locks, 1..=1_000_000);
        let max_lock_owner_bytes = s.count("max_lock_owner_bytes", d.max_lock_owner_bytes, 64..=65536);
        if !prefix.starts_with('/')
            || (prefix.len() > 1 && prefix.ends_with('/'))
            || prefix.contains(['%', '?', '#', '\\'])
            || prefix.split('/').any(|seg| seg == "." || seg == "..")
        {
            s.problem_at("prefix", format!("{prefix:?} must look like \"/recordings\""));
        }
        if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
            s.problem_at("realm", "must not contain quotes, backslashes or control characters");
        }
        if max_xml_body > 64 << 10 {
            s.problem_at("max_xml_body", "at most 64KiB (the protocol engine's own cap)");
        }
        if header_timeout.is_zero() || body_idle_timeout.is_zero() || send_timeout.is_zero() {
            s.problem_at("header_timeout", "timeouts must be above zero");
        }
        s.finish();
        let prefix = if prefix == "/" { String::new() } else { prefix };
        WebdavConfig {
            listen,
            tls,
            prefix,
            root,
            htpasswd,
            realm,
            max_file_size,
            quota,
            min_free_disk,
            max_uploads,
            max_connections,
            fsync,
            io_threads,
            header_timeout,
            body_idle_timeout,
            send_timeout,
            max_ranges,
            max_xml_body,
            lock_max_timeout,
            max_locks,
            max_lock_owner_bytes,
        }
    }
}

/// One TOML table being read: typed getters record problems instead of failing, and
/// `finish` reports the keys nobody asked for.
struct Section<'a, 'p> {
    name: String,
    table: &'a toml::Table,
    used: BTreeSet<&'a str>,
    problems: &'p mut Vec<String>,
}

impl<'a, 'p> Section<'a, 'p> {
    fn new(name: impl Into<String>, table: &'a toml::Table, problems: &'p mut Vec<String>) -> Self {
        Section { name: name.into(), table, used: BTreeSet::new(), problems }
    }

    fn key_name(&self, key: &str) -> String {
        if self.name.is_empty() { key.to_string() } else { format!("{}.{key}", self.name) }
    }

    fn problem_at(&mut self, key: &str, message: impl std::fmt::Display) {
        let key = self.key_name(key);
        self.problems.push(format!("{key}: {message}"));
    }

    fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(v)
    }

    fn table(&mut self, key: &str) -> Option<&'a toml::Table> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(t),
            _ => {
                self.problem_at(key, "must be a table");
                None
            }
        }
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.problem_at(key, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if s.is_empty() {
            self.problem_at(key, "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }

    /// `allow = ["10.0.0.0/8", "192.0.2.7"]`: the client addresses a listener serves.
    fn allow(&mut self, key: &str) -> Option<crate::http::allow::AllowList> {
        let value = self.get(key)?;
        let Some(items) = value.as_array() else {
            self.problem_at(key, "must be a list of addresses or CIDR networks, e.g. [\"10.0.0.0/8\"]");
            return None;
        };
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for item in items {
            match item.as_str().map(crate::http::allow::Cidr::parse) {
                Some(Ok(c)) => entries.push(c),
                Some(Err(e)) => bad.push(e),
                None => bad.push(format!("{item} is not a string")),
            }
        }
        for e in bad {
            self.problem_at(key, e);
        }
        if items.is_empty() {
            self.problem_at(key, "an empty list would refuse every client; leave the key out to serve everyone");
        }
        Some(crate::http::allow::AllowList::new(entries))
    }

    /// `<prefix>ca_file` and `<prefix>proxy`: how this service is reached.
    fn outbound(&mut self, prefix: &str) -> Outbound {
        let ca_file = self.path(&format!("{prefix}ca_file"));
        let key = format!("{prefix}proxy");
        let proxy = match self.string(&key) {
            None => Proxy::Env,
            Some(p) if p == "direct" => Proxy::Direct,
            Some(p) => match p.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {
                    Proxy::Url(p)
                }
                _ => {
                    self.problem_at(&key, format!("{p:?} is not \"direct\" or a proxy URL like \"http://proxy:3128\""));
                    Proxy::Env
                }
            },
        };
        Outbound { ca_file, proxy }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.problem_at(key, format!("must be true or false, not {}", other.type_str()));
                default
            }
        }
    }

    fn count(&mut self, key: &str, default: usize, range: std::ops::RangeInclusive<usize>) -> usize {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(n)) if usize::try_from(*n).is_ok_and(|n| range.contains(&n)) => *n as usize,
            Some(other) => {
                self.problem_at(
                    key,
                    format!("must be a whole number from {} to {}, not {other}", range.start(), range.end()),
                );
                default
            }
        }
    }

    fn addr(&mut self, key: &str, default: SocketAddr) -> SocketAddr {
        let Some(s) = self.string(key) else { return default };
        match s.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem_at(key, format!("{s:?} is not an address like \"0.0.0.0:80\" or \"[::1]:80\""));
                default
            }
        }
    }

    fn optional_size(&mut self, key: &str) -> Option<u64> {
        let value = self.get(key)?;
        let parsed = match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            toml::Value::String(s) => parse_size(s),
            other => Err(format!("must be a size like \"512MiB\", not {}", other.type_str())),
        };
        parsed.map_err(|e| self.problem_at(key, e)).ok()
    }

    fn size(&mut self, key: &str, default: u64) -> u64 {
        self.optional_size(key).unwrap_or(default)
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        let Some(value) = self.get(key) else { return default };
        let parsed = match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
            toml::Value::String(s) => parse_duration(s, Duration::from_secs(1)),
            other => Err(format!("must be a duration like \"30s\", not {}", other.type_str())),
        };
        parsed.map_err(|e| self.problem_at(key, e)).unwrap_or(default)
    }

    fn tls(&mut self) -> Option<TlsConfig> {
        let table = self.table("tls")?;
        let name = if self.name.is_empty() { "tls".to_string() } else { self.name.clone() };
        let mut inner = Vec::new();
        let mut s = Section::new(name.clone(), table, &mut inner);
        let cert = s.path("cert");
        let key = s.path("key");
        s.finish();
        if cert.is_none() {
            inner.push(format!("{name}.tls.cert is required"));
        }
        if key.is_none() {
            inner.push(format!("{name}.tls.key is required"));
        }
        self.problems.extend(inner);
        Some(TlsConfig { cert: cert?, key: key?, server: Default::default() })
    }

    /// Reads `key`, `key_file` or `key_env` (see `read_secret`).
    fn secret(&mut self, key: &str) -> Option<Secret> {
        for suffix in ["", "_file", "_env"] {
            let _ = self.get(&format!("{key}{suffix}"));
        }
        let mut found = Vec::new();
        let secret = read_secret(self.table, &self.name, key, &mut found);
        self.problems.extend(found);
        secret
    }

    /// The keys of a `transient_storage` table (CME's transientStorage): `type` ("WebDAV"),
    /// `url` of the collection (trailing slash dropped), `username`, `password`.
    fn store_access(&mut self, https: bool) -> Option<(String, String, Secret)> {
        let kind = self.string("type");
        let url = self.string("url");
        let username = self.string("username");
        let password = self.secret("password");
        if kind.as_deref().is_some_and(|k| !k.eq_ignore_ascii_case("webdav")) {
            self.problem_at("type", "must be \"WebDAV\"");
        }
        let schemes: &[&str] = if https { &["http", "https"] } else { &["http"] };
        let url = match url {
            None => {
                self.problem_at("url", "is required (the WebDAV collection, e.g. \"http://10.0.0.4/recordings\")");
                None
            }
            Some(u) => match u.trim_end_matches('/').parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str().is_some_and(|s| schemes.contains(&s)) && uri.authority().is_some() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                _ => {
                    let what = if https { "an http:// or https://" } else { "an http://" };
                    self.problem_at("url", format!("{u:?} is not {what} URL"));
                    None
                }
            },
        };
        if username.is_none() {
            self.problem_at("username", "is required");
        }
        if password.is_none() {
            self.problem_at("password", "is required (or password_file / password_env)");
        }
        Some((url?, username?, password?))
    }

    fn finish(self) {
        for key in self.table.keys() {
            if !self.used.contains(key.as_str()) {
                let name = self.key_name(key);
                self.problems.push(format!("{name}: unknown key"));
            }
        }
    }
}

/// What `import-env` writes where only the operator knows the value.
pub const PLACEHOLDER: &str = "FILL-IN";

/// Every string still holding [`PLACEHOLDER`] is a problem: a file fresh from `import-env`
/// must not start as if it were complete.
fn placeholders(table: &toml::Table, prefix: &str, problems: &mut Vec<String>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::String(s) if s.contains(PLACEHOLDER) => {
                problems.push(format!("{name}: still {s:?} from import-env; fill in the real value"))
            }
            toml::Value::Table(t) => placeholders(t, &name, problems),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) if s.contains(PLACEHOLDER) => {
                            problems.push(format!("{name}[{i}]: still {s:?} from import-env; fill in the real value"))
                        }
                        toml::Value::Table(t) => placeholders(t, &format!("{name}[{i}]"), problems),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A secret from the config: inline, from a file (`<key>_file`) or from the environment
/// (`<key>_env`). Its value never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads `key`, `key_file` or `key_env` from `table` (exactly one of them), recording problems
/// under `section`. A secret file's trailing newline is dropped, as `echo x > file` leaves one.
pub fn read_secret(table: &toml::Table, section: &str, key: &str, problems: &mut Vec<String>) -> Option<Secret> {
    let name =
        |suffix: &str| if section.is_empty() { format!("{key}{suffix}") } else { format!("{section}.{key}{suffix}") };
    let given: Vec<(&str, &toml::Value)> = ["", "_file", "_env"]
        .into_iter()
        .filter_map(|suffix| table.get(&format!("{key}{suffix}")).map(|v| (suffix, v)))
        .collect();
    let (suffix, value) = match given.as_slice() {
        [] => return None,
        [one] => *one,
        _ => {
            problems.push(format!("{}: give only one of {key}, {key}_file, {key}_env", name("")));
            return None;
        }
    };
    let Some(text) = value.as_str() else {
        problems.push(format!("{}: must be a string", name(suffix)));
        return None;
    };
    let secret = match suffix {
        "" => Ok(text.to_owned()),
        "_file" => std::fs::read_to_string(text)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read {text}: {e}")),
        _ => std::env::var(text).map_err(|_| format!("environment variable {text} is not set")),
    };
    match secret {
        Ok(s) if s.is_empty() => {
            problems.push(format!("{}: the secret is empty", name(suffix)));
            None
        }
        Ok(s) => Some(Secret(s)),
        Err(e) => {
            problems.push(format!("{}: {e}", name(suffix)));
            None
        }
    }
}

/// "512MiB", "30GiB", "64KiB", "1GB", "1000": binary and decimal units, bytes when bare.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim();
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size like \"512MiB\""))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))
}

/// "30s", "10m", "1h", "500ms", "2d"; a bare number is in `bare_unit` (seconds for our keys,
/// minutes for the CME keys that are minutes in Genesys).
pub fn parse_duration(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a duration like \"30s\""))?;
    let d = match unit.trim() {
        "" => bare_unit.checked_mul(u32::try_from(n).map_err(|_| format!("{text:?} is too large"))?),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86400).map(Duration::from_secs),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m, h, d)")),
    };
    d.ok_or_else(|| format!("{text:?} is too large"))
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
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn exrp_section_regions_tenants_and_env() {
        let base = "[admin]\nlisten = \"127.0.0.1:0\"\n[exrp]\nstate_dir = \"/tmp/x\"\n\
                    [exrp.transient_storage]\nurl = \"http://w/recordings/\"\nusername = \"u\"\npassword = \"p\"\n";
        let c = Config::from_toml_str_env(base, Role::Exrp, &|k| (k == "EXRP_PORT").then(|| "9099".into())).unwrap();
        let e = c.exrp.unwrap();
        assert_eq!(e.listen.port(), 9099);
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
