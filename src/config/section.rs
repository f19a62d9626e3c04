//! Reading one TOML table: typed getters that record problems instead of failing, the keys
//! nobody asked for, the placeholders `import-env` leaves, and the units (sizes, durations).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Outbound, Proxy, Secret, TlsConfig, read_secret};

/// One TOML table being read: typed getters record problems instead of failing, and
/// `finish` reports the keys nobody asked for.
pub(super) struct Section<'a, 'p> {
    pub(super) name: String,
    pub(super) table: &'a toml::Table,
    pub(super) used: BTreeSet<&'a str>,
    pub(super) problems: &'p mut Vec<String>,
}

impl<'a, 'p> Section<'a, 'p> {
    pub(super) fn new(name: impl Into<String>, table: &'a toml::Table, problems: &'p mut Vec<String>) -> Self {
        Section { name: name.into(), table, used: BTreeSet::new(), problems }
    }

    pub(super) fn key_name(&self, key: &str) -> String {
        if self.name.is_empty() { key.to_string() } else { format!("{}.{key}", self.name) }
    }

    pub(super) fn problem_at(&mut self, key: &str, message: impl std::fmt::Display) {
        let key = self.key_name(key);
        self.problems.push(format!("{key}: {message}"));
    }

    pub(super) fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        let (k, v) = self.table.get_key_value(key)?;
        self.used.insert(k.as_str());
        Some(v)
    }

    pub(super) fn table(&mut self, key: &str) -> Option<&'a toml::Table> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(t),
            _ => {
                self.problem_at(key, "must be a table");
                None
            }
        }
    }

    pub(super) fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.problem_at(key, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if s.is_empty() {
            self.problem_at(key, "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }

    /// `allow = ["10.0.0.0/8", "192.0.2.7"]`: the client addresses a listener serves.
    pub(super) fn allow(&mut self, key: &str) -> Option<crate::http::allow::AllowList> {
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
    pub(super) fn outbound(&mut self, prefix: &str) -> Outbound {
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

    pub(super) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.problem_at(key, format!("must be true or false, not {}", other.type_str()));
                default
            }
        }
    }

    pub(super) fn count(&mut self, key: &str, default: usize, range: std::ops::RangeInclusive<usize>) -> usize {
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

    pub(super) fn addr(&mut self, key: &str, default: SocketAddr) -> SocketAddr {
        let Some(s) = self.string(key) else { return default };
        match s.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem_at(key, format!("{s:?} is not an address like \"0.0.0.0:80\" or \"[::1]:80\""));
                default
            }
        }
    }

    pub(super) fn optional_size(&mut self, key: &str) -> Option<u64> {
        let value = self.get(key)?;
        let parsed = match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            toml::Value::String(s) => parse_size(s),
            other => Err(format!("must be a size like \"512MiB\", not {}", other.type_str())),
        };
        parsed.map_err(|e| self.problem_at(key, e)).ok()
    }

    pub(super) fn size(&mut self, key: &str, default: u64) -> u64 {
        self.optional_size(key).unwrap_or(default)
    }

    pub(super) fn duration(&mut self, key: &str, default: Duration) -> Duration {
        let Some(value) = self.get(key) else { return default };
        let parsed = match value {
            toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
            toml::Value::String(s) => parse_duration(s, Duration::from_secs(1)),
            other => Err(format!("must be a duration like \"30s\", not {}", other.type_str())),
        };
        parsed.map_err(|e| self.problem_at(key, e)).unwrap_or(default)
    }

    pub(super) fn tls(&mut self) -> Option<TlsConfig> {
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
        Some(TlsConfig::new(cert?, key?))
    }

    /// Reads `key`, `key_file` or `key_env` (see `read_secret`).
    pub(super) fn secret(&mut self, key: &str) -> Option<Secret> {
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
    pub(super) fn store_access(&mut self, https: bool) -> Option<(String, String, Secret)> {
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

    pub(super) fn finish(self) {
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
pub(super) fn placeholders(table: &toml::Table, prefix: &str, problems: &mut Vec<String>) {
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
