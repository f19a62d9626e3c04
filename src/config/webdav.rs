//! The `[webdav]` section: the store's listener, root (or `[webdav.s3]` bucket), password
//! file and bounds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Outbound, Secret, Section, TlsConfig};

/// `[webdav.s3]`: the recordings kept in an S3-compatible bucket instead of under `root`.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http://127.0.0.1:3900`: scheme, host and port, no path; several (`endpoint = [...]`,
    /// nodes of one cluster) are tried in turn when one cannot be reached.
    pub endpoints: Vec<String>,
    pub region: String,
    pub bucket: String,
    /// Keys are `<key_prefix>/<path>`; empty for the bucket's root.
    pub key_prefix: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// `endpoint/bucket/key` (Garage, MinIO, Ceph) rather than `bucket.endpoint/key` (AWS).
    pub path_style: bool,
    pub outbound: Outbound,
    /// Connecting and each wait for the engine.
    pub request_timeout: Duration,
    /// A whole call, an upload streamed from a slow client included.
    pub transfer_timeout: Duration,
    /// PUTs without a Content-Length are gathered in 8 MiB parts in memory: at most this many
    /// at once (503 beyond), so memory stays bounded.
    pub max_chunked_uploads: usize,
}

/// S3's limit for one PUT: a larger file needs a multipart upload of known parts.
pub const S3_MAX_SINGLE_PUT: u64 = 5 << 30;

impl S3Config {
    /// The endpoints as logs name them.
    pub fn endpoint(&self) -> String {
        self.endpoints.join(", ")
    }

    /// The keys of an `s3` table; `key_prefix` defaults to `default_prefix`.
    pub(super) fn parse(s: &mut Section<'_, '_>, default_prefix: &str) -> Option<S3Config> {
        let endpoint: Option<Vec<String>> = match s.get("endpoint") {
            None => None,
            Some(toml::Value::String(e)) => Some(vec![e.clone()]),
            Some(toml::Value::Array(list)) if !list.is_empty() && list.iter().all(toml::Value::is_str) => {
                Some(list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            }
            Some(_) => {
                s.problem_at("endpoint", "must be a URL or a list of URLs (the nodes of one cluster)");
                Some(Vec::new())
            }
        };
        let region = s.string("region").unwrap_or_else(|| "us-east-1".into());
        let bucket = s.string("bucket");
        let key_prefix = s.string("key_prefix").unwrap_or_else(|| default_prefix.into()).trim_matches('/').to_string();
        let access_key_id = s.string("access_key_id");
        let secret_access_key = s.secret("secret_access_key");
        let path_style = s.bool("path_style", true);
        let outbound = s.outbound("");
        let request_timeout = s.duration("request_timeout", Duration::from_secs(30));
        let transfer_timeout = s.duration("transfer_timeout", Duration::from_secs(600));
        let max_chunked_uploads = s.count("max_chunked_uploads", 32, 1..=10_000);
        let endpoints = match endpoint {
            None => {
                s.problem_at("endpoint", "is required (the S3 API, e.g. \"http://127.0.0.1:3900\")");
                None
            }
            Some(list) => {
                let mut good = Vec::new();
                for e in list {
                    match e.trim_end_matches('/').parse::<http::Uri>() {
                        Ok(uri)
                            if matches!(uri.scheme_str(), Some("http" | "https"))
                                && uri.authority().is_some()
                                && uri.path().len() <= 1
                                && uri.query().is_none() =>
                        {
                            good.push(e.trim_end_matches('/').to_string())
                        }
                        _ => {
                            s.problem_at("endpoint", format!("{e:?} is not an http:// or https:// URL without a path"))
                        }
                    }
                }
                (!good.is_empty()).then_some(good)
            }
        };
        // S3's bucket naming rules (3 to 63 lower-case letters, digits, dots and hyphens).
        let bucket = match bucket {
            None => {
                s.problem_at("bucket", "is required");
                None
            }
            Some(b)
                if (3..=63).contains(&b.len())
                    && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-') =>
            {
                Some(b)
            }
            Some(b) => {
                s.problem_at("bucket", format!("{b:?} is not a bucket name (3 to 63 of a-z 0-9 . -)"));
                None
            }
        };
        if key_prefix.split('/').any(|seg| (seg.is_empty() && !key_prefix.is_empty()) || seg.starts_with('.'))
            || key_prefix.contains(['\\', '\0'])
        {
            s.problem_at("key_prefix", format!("{key_prefix:?} must be plain path segments, like \"recordings\""));
        }
        if region.is_empty() || region.contains(['/', ' ']) {
            s.problem_at("region", format!("{region:?} is not a region name"));
        }
        if access_key_id.is_none() {
            s.problem_at("access_key_id", "is required");
        }
        if secret_access_key.is_none() {
            s.problem_at("secret_access_key", "is required (or secret_access_key_file / secret_access_key_env)");
        }
        if request_timeout.is_zero() || transfer_timeout < request_timeout {
            s.problem_at("transfer_timeout", "timeouts must be above zero, transfer_timeout at least request_timeout");
        }
        Some(S3Config {
            endpoints: endpoints?,
            region,
            bucket: bucket?,
            key_prefix,
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            path_style,
            outbound,
            request_timeout,
            transfer_timeout,
            max_chunked_uploads,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WebdavConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    /// URL prefix the store is mounted under, without a trailing slash ("/recordings").
    pub prefix: String,
    pub root: PathBuf,
    /// Set: the files live in this bucket and `root`, `quota`, `min_free_disk`, `fsync` and
    /// `io_threads` do not apply (the bucket's own quota does).
    pub s3: Option<S3Config>,
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
            s3: None,
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
        let root_given = s.path("root");
        let s3_table = s.table("s3");
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
        let s3 = s3_table.and_then(|t| {
            let name = s.key_name("s3");
            let mut sub = Section::new(name, t, &mut *s.problems);
            let s3 = S3Config::parse(&mut sub, "");
            sub.finish();
            s3
        });
        if s3_table.is_some() {
            // What only a disk has: refused rather than silently ignored.
            for key in ["root", "quota", "min_free_disk", "fsync", "io_threads"] {
                if table.contains_key(key) {
                    s.problem_at(
                        key,
                        "does not apply with [webdav.s3] (the bucket holds the files; its own quota answers 507)",
                    );
                }
            }
            if max_file_size > S3_MAX_SINGLE_PUT {
                s.problem_at("max_file_size", "at most 5GiB with [webdav.s3] (S3's limit for one PUT)");
            }
        }
        let root = root_given.unwrap_or(d.root);
        s.finish();
        let prefix = if prefix == "/" { String::new() } else { prefix };
        WebdavConfig {
            listen,
            tls,
            prefix,
            root,
            s3,
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
        if self.s3.is_some() {
            return; // the bucket is checked when the role starts (a network call)
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
