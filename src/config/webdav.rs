//! The `[webdav]` section: the store's listener, root, password file and bounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Section, TlsConfig};

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

impl WebdavConfig {
    pub(super) fn defaults() -> WebdavConfig {
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

    pub(super) fn parse(table: &toml::Table, problems: &mut Vec<String>) -> WebdavConfig {
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

    /// The password file parses and the root is a directory (or can be made one), before any
    /// port is bound.
    pub(super) fn check_files(&self, problems: &mut Vec<String>) {
        match std::fs::read_to_string(&self.htpasswd) {
            Ok(text) => {
                if let Err(errors) = crate::auth::htpasswd::PasswordFile::parse(&text) {
                    for e in errors {
                        problems.push(format!("webdav.htpasswd {}: {e}", self.htpasswd.display()));
                    }
                }
            }
            Err(err) => problems.push(format!(
                "webdav.htpasswd: cannot read {}: {err} (make it with `exec-allinone htpasswd -c FILE USER`)",
                self.htpasswd.display()
            )),
        }
        match std::fs::symlink_metadata(&self.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => problems
                .push(format!("webdav.root: {} is not a directory (symlinks are not followed)", self.root.display())),
            Err(_) => {
                let parent = self.root.parent().filter(|p| !p.as_os_str().is_empty());
                if parent.is_some_and(|p| !p.is_dir()) {
                    problems.push(format!(
                        "webdav.root: {} does not exist and neither does its parent",
                        self.root.display()
                    ));
                }
            }
        }
    }
}
