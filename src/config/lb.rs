//! The `[lb]` section: pools of upstream servers with nginx's proxy settings, each key named
//! after the nginx directive it replaces so an operator can carry a vendor config over.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Section, TlsConfig};

/// The `[lb]` keys `import-nginx` writes: the one place they are spelt, for this parser and for
/// the importer.
pub mod key {
    pub const CONNECT_TIMEOUT: &str = "connect_timeout";
    pub const SEND_TIMEOUT: &str = "send_timeout";
    pub const READ_TIMEOUT: &str = "read_timeout";
    pub const NEXT_UPSTREAM: &str = "next_upstream";
    pub const NEXT_UPSTREAM_TRIES: &str = "next_upstream_tries";
    pub const NEXT_UPSTREAM_TIMEOUT: &str = "next_upstream_timeout";
    pub const MAX_BODY_SIZE: &str = "max_body_size";
    pub const CLIENT_BODY_BUFFER_SIZE: &str = "client_body_buffer_size";
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const HEADER_TIMEOUT: &str = "header_timeout";
    pub const KEEPALIVE: &str = "keepalive";
    pub const KEEPALIVE_CONNECTIONS: &str = "keepalive_connections";
    pub const KEEPALIVE_TIMEOUT: &str = "keepalive_timeout";
    pub const KEEPALIVE_REQUESTS: &str = "keepalive_requests";
    pub const HOST: &str = "host";
    pub const URI: &str = "uri";
    pub const X_FORWARDED_FOR: &str = "x_forwarded_for";
    pub const X_REAL_IP: &str = "x_real_ip";
    pub const SET_HEADERS: &str = "set_headers";
    pub const MAX_FAILS: &str = "max_fails";
    pub const FAIL_TIMEOUT: &str = "fail_timeout";

    pub const WORKER_CONNECTIONS: &str = "worker_connections";
    pub const POOLS: &str = "pools";
    pub const LISTEN: &str = "listen";
    pub const SERVERS: &str = "servers";
    pub const ADDRESS: &str = "address";
    pub const WEIGHT: &str = "weight";
    pub const DOWN: &str = "down";
    pub const HASH: &str = "hash";
    pub const REQUEST_BUFFERING: &str = "request_buffering";
    /// Not nginx's: the requests a pool keeps for `trace` (0: none).
    pub const TRACE_REQUESTS: &str = "trace_requests";

    /// The settings, in the order `import-nginx` writes them.
    pub const POOL: [&str; 23] = [
        HASH,
        REQUEST_BUFFERING,
        CONNECT_TIMEOUT,
        SEND_TIMEOUT,
        READ_TIMEOUT,
        NEXT_UPSTREAM,
        NEXT_UPSTREAM_TRIES,
        NEXT_UPSTREAM_TIMEOUT,
        MAX_BODY_SIZE,
        CLIENT_BODY_BUFFER_SIZE,
        BODY_TIMEOUT,
        HEADER_TIMEOUT,
        KEEPALIVE,
        KEEPALIVE_CONNECTIONS,
        KEEPALIVE_TIMEOUT,
        KEEPALIVE_REQUESTS,
        HOST,
        URI,
        X_FORWARDED_FOR,
        X_REAL_IP,
        SET_HEADERS,
        MAX_FAILS,
        FAIL_TIMEOUT,
    ];
}

#[derive(Debug, Clone)]
pub struct LbConfig {
    /// In the order of the file's pool names (TOML tables are sorted by name).
    pub pools: Vec<PoolConfig>,
    /// Threads serving the pools (nginx `worker_processes`); 0 = one per CPU.
    pub workers: usize,
    /// Client connections one worker serves at once over all its pools (nginx
    /// `worker_connections`, which also counts upstream connections); more wait in the backlog.
    pub worker_connections: usize,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub servers: Vec<ServerConfig>,
    pub settings: PoolSettings,
}

/// One `server` line of an nginx `upstream` block. The address is resolved at start, and each
/// address it resolves to becomes a peer, as nginx does.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// "host:port" as written.
    pub address: String,
    pub weight: u32,
    /// 0 disables passive ejection (the vendor's `max_fails=0`).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Never selected, not counted in the tries (nginx `down`).
    pub down: bool,
}

/// Which failures send a request to the next server (nginx `proxy_next_upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NextUpstream {
    pub error: bool,
    pub timeout: bool,
    pub invalid_header: bool,
    pub http_500: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
    pub http_403: bool,
    pub http_404: bool,
    pub http_429: bool,
    pub non_idempotent: bool,
}

impl NextUpstream {
    /// nginx's default: `error timeout`.
    pub const DEFAULT: NextUpstream = NextUpstream {
        error: true,
        timeout: true,
        invalid_header: false,
        http_500: false,
        http_502: false,
        http_503: false,
        http_504: false,
        http_403: false,
        http_404: false,
        http_429: false,
        non_idempotent: false,
    };

    /// Whether a backend answering `status` may be retried on the next server.
    pub fn status(&self, status: u16) -> bool {
        match status {
            500 => self.http_500,
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            403 => self.http_403,
            404 => self.http_404,
            429 => self.http_429,
            _ => false,
        }
    }

    fn parse(words: &[String]) -> Result<NextUpstream, String> {
        let mut n = NextUpstream::default();
        for w in words {
            let flag = match w.as_str() {
                "off" if words.len() == 1 => continue,
                "off" => return Err("\"off\" cannot be combined with other conditions".into()),
                "error" => &mut n.error,
                "timeout" => &mut n.timeout,
                "invalid_header" => &mut n.invalid_header,
                "http_500" => &mut n.http_500,
                "http_502" => &mut n.http_502,
                "http_503" => &mut n.http_503,
                "http_504" => &mut n.http_504,
                "http_403" => &mut n.http_403,
                "http_404" => &mut n.http_404,
                "http_429" => &mut n.http_429,
                "non_idempotent" => &mut n.non_idempotent,
                other => {
                    return Err(format!(
                        "unknown condition {other:?} (use error, timeout, invalid_header, http_500, http_502, \
                         http_503, http_504, http_403, http_404, http_429, non_idempotent, or off alone)"
                    ));
                }
            };
            *flag = true;
        }
        Ok(n)
    }
}

/// The `Host` header sent upstream (nginx `proxy_set_header Host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The pool name, as nginx's `$proxy_host` is the upstream name.
    PoolName,
    /// The client's Host as nginx's `$host`: the name without port, lower-cased.
    ClientName,
    /// The client's Host header verbatim (`$http_host`).
    Client,
    Literal(String),
}

/// The request target sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    /// `proxy_pass http://pool/;`: the normalized path, re-escaped.
    Normalized,
    /// `proxy_pass http://pool;`: the client's target as it came.
    Raw,
}

/// Settings of one pool; `[lb]` holds the defaults, a pool table may override any of them.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `hash = "$request_uri consistent"`: each path to one server by nginx's consistent hash;
    /// false: weighted round robin.
    pub hash_request_uri: bool,
    /// nginx's `proxy_request_buffering`: false streams a body of known length to the peer
    /// as it arrives (no retry once it went out) instead of holding it whole.
    pub request_buffering: bool,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    pub next_upstream: NextUpstream,
    /// 0 = no limit other than the number of servers.
    pub next_upstream_tries: usize,
    /// Zero = no limit.
    pub next_upstream_timeout: Duration,
    pub max_body_size: u64,
    /// A request body larger than this goes to a temp file in `client_body_temp_path`
    /// (nginx `client_body_buffer_size`).
    pub client_body_buffer_size: usize,
    pub client_body_temp_path: std::path::PathBuf,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    /// Off: HTTP/1.0 and `Connection: close`, one connection per attempt (nginx up to 1.28).
    /// On: HTTP/1.1 over pooled idle connections (nginx 1.30 and later).
    pub keepalive: bool,
    pub keepalive_connections: usize,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u64,
    pub host: HostHeader,
    pub uri: UriMode,
    /// Defaults for servers that do not set their own.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub health_check_path: String,
    /// Zero = no active probes.
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub health_check_fails: u32,
    pub health_check_passes: u32,
    pub x_forwarded_for: bool,
    pub x_real_ip: bool,
    pub set_headers: Vec<(String, String)>,
    /// Client addresses served (nginx `allow …; deny all;`); empty: everyone.
    pub allow: crate::http::allow::AllowList,
    /// The last requests kept for `trace` (0: none kept, no cost per request).
    pub trace_requests: usize,
}

impl Default for PoolSettings {
    /// nginx 1.22's defaults, with passive ejection and probes off.
    fn default() -> Self {
        PoolSettings {
            hash_request_uri: false,
            request_buffering: true,
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            next_upstream: NextUpstream::DEFAULT,
            next_upstream_tries: 0,
            next_upstream_timeout: Duration::ZERO,
            max_body_size: 1 << 20,
            // nginx's default on 64-bit platforms (two pages).
            client_body_buffer_size: 16 << 10,
            client_body_temp_path: std::env::temp_dir(),
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(60),
            keepalive: false,
            keepalive_connections: 32,
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            host: HostHeader::PoolName,
            uri: UriMode::Normalized,
            max_fails: 0,
            fail_timeout: Duration::from_secs(10),
            health_check_path: "/health".into(),
            health_check_interval: Duration::ZERO,
            health_check_timeout: Duration::from_secs(5),
            health_check_fails: 1,
            health_check_passes: 1,
            x_forwarded_for: false,
            x_real_ip: false,
            set_headers: Vec::new(),
            allow: crate::http::allow::AllowList::default(),
            trace_requests: 4096,
        }
    }
}

impl LbConfig {
    pub(super) fn parse(table: &toml::Table, problems: &mut Vec<String>) -> LbConfig {
        let mut s = Section::new("lb", table, problems);
        let pools_table = s.table(key::POOLS);
        let workers = s.count("workers", 0, 0..=1024);
        let worker_connections = s.count(key::WORKER_CONNECTIONS, 1024, 1..=1_000_000);
        let defaults = PoolSettings::parse(&mut s, &PoolSettings::default());
        s.finish();
        let mut pools = Vec::new();
        match pools_table {
            None => problems.push("lb.pools: no pool; add a [lb.pools.<name>] table with listen and servers".into()),
            Some(t) if t.is_empty() => {
                problems.push("lb.pools: no pool; add a [lb.pools.<name>] table with listen and servers".into())
            }
            Some(t) => {
                for (name, value) in t {
                    let Some(table) = value.as_table() else {
                        problems.push(format!("lb.pools.{name}: must be a table"));
                        continue;
                    };
                    if !valid_pool_name(name) {
                        problems.push(format!(
                            "lb.pools.{name}: a pool name is letters, digits, '-' and '_' (it is the Host sent upstream)"
                        ));
                        continue;
                    }
                    if let Some(pool) = PoolConfig::parse(name, table, &defaults, problems) {
                        pools.push(pool);
                    }
                }
            }
        }
        LbConfig { pools, workers, worker_connections }
    }
}

fn valid_pool_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl PoolConfig {
    fn parse(
        name: &str,
        table: &toml::Table,
        defaults: &PoolSettings,
        problems: &mut Vec<String>,
    ) -> Option<PoolConfig> {
        let before = problems.len();
        let mut s = Section::new(format!("lb.pools.{name}"), table, problems);
        let listen = match s.get(key::LISTEN) {
            Some(_) => Some(s.addr(key::LISTEN, SocketAddr::from(([0, 0, 0, 0], 0)))),
            None => {
                s.problem_at(key::LISTEN, "is required (for example \"0.0.0.0:3650\")");
                None
            }
        };
        let tls = s.tls();
        let settings = PoolSettings::parse(&mut s, defaults);
        let servers = parse_servers(&mut s, &settings);
        s.finish();
        if problems.len() > before {
            return None;
        }
        Some(PoolConfig { name: name.to_string(), listen: listen?, tls, servers, settings })
    }
}

fn parse_servers(s: &mut Section<'_, '_>, settings: &PoolSettings) -> Vec<ServerConfig> {
    let Some(value) = s.get(key::SERVERS) else {
        s.problem_at(key::SERVERS, "is required: a list like [\"10.0.0.11:3650\", \"10.0.0.12:3650\"]");
        return Vec::new();
    };
    let Some(list) = value.as_array() else {
        s.problem_at(key::SERVERS, "must be a list of \"host:port\" strings or { address = ..., weight = ... } tables");
        return Vec::new();
    };
    if list.is_empty() {
        s.problem_at(key::SERVERS, "must name at least one server");
    }
    let mut servers = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let mut server = ServerConfig {
            address: String::new(),
            weight: 1,
            max_fails: settings.max_fails,
            fail_timeout: settings.fail_timeout,
            down: false,
        };
        match entry {
            toml::Value::String(a) => server.address = a.clone(),
            toml::Value::Table(t) => {
                let key = format!("servers[{i}]");
                let mut inner = Vec::new();
                let mut ts = Section::new(format!("{}.{key}", s.name), t, &mut inner);
                match ts.string(key::ADDRESS) {
                    Some(a) => server.address = a,
                    None => ts.problem_at(key::ADDRESS, "is required (\"host:port\")"),
                }
                server.weight = ts.count(key::WEIGHT, 1, 1..=1000) as u32;
                server.max_fails = ts.count(key::MAX_FAILS, settings.max_fails as usize, 0..=1000) as u32;
                server.fail_timeout = ts.duration(key::FAIL_TIMEOUT, settings.fail_timeout);
                server.down = ts.bool(key::DOWN, false);
                ts.finish();
                s.problems.extend(inner);
            }
            other => {
                s.problem_at(
                    &format!("servers[{i}]"),
                    format!("must be a string or a table, not {}", other.type_str()),
                );
                continue;
            }
        }
        if server.address.is_empty() {
            continue;
        }
        if let Err(e) = split_host_port(&server.address) {
            s.problem_at(&format!("servers[{i}]"), e);
            continue;
        }
        servers.push(server);
    }
    if !servers.is_empty() && servers.iter().all(|s| s.down) {
        s.problem_at(key::SERVERS, "every server is marked down");
    }
    servers
}

/// "10.0.0.1:3650", "[::1]:3650", "excp-1.example:3650" → (host, port). A port is required:
/// nginx's implied port 80 is a frequent surprise behind a 3650/8080 listener.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} needs a port, like \"{address}:3650\""));
    };
    let port: u16 = port.parse().map_err(|_| format!("{address:?}: {port:?} is not a port number"))?;
    let ok_host = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok_host {
        return Err(format!("{address:?} is not \"host:port\" (IPv6 addresses go in brackets: \"[::1]:3650\")"));
    }
    Ok((host.to_string(), port))
}

impl PoolSettings {
    fn parse(s: &mut Section<'_, '_>, d: &PoolSettings) -> PoolSettings {
        let next_upstream = match s.get(key::NEXT_UPSTREAM) {
            None => d.next_upstream,
            Some(v) => {
                let words: Option<Vec<String>> =
                    v.as_array().and_then(|a| a.iter().map(|w| w.as_str().map(str::to_string)).collect());
                match words.map(|w| NextUpstream::parse(&w)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => {
                        s.problem_at(key::NEXT_UPSTREAM, e);
                        d.next_upstream
                    }
                    None => {
                        s.problem_at(key::NEXT_UPSTREAM, "must be a list of strings like [\"error\", \"timeout\"]");
                        d.next_upstream
                    }
                }
            }
        };
        let host = match s.string(key::HOST) {
            None => d.host.clone(),
            Some(h) if h == "$host" => HostHeader::ClientName,
            Some(h) if h == "$http_host" => HostHeader::Client,
            Some(h) if h == "$proxy_host" => HostHeader::PoolName,
            Some(h) if http::HeaderValue::from_str(&h).is_ok() && !h.is_empty() => HostHeader::Literal(h),
            Some(h) => {
                s.problem_at(key::HOST, format!("{h:?} is not a valid Host header value"));
                d.host.clone()
            }
        };
        let uri = match s.string(key::URI).as_deref() {
            None => d.uri,
            Some("normalized") => UriMode::Normalized,
            Some("raw") => UriMode::Raw,
            Some(other) => {
                s.problem_at(key::URI, format!("{other:?}: use \"normalized\" (proxy_pass http://pool/) or \"raw\""));
                d.uri
            }
        };
        let set_headers = match s.table(key::SET_HEADERS) {
            None => d.set_headers.clone(),
            Some(t) => {
                let mut headers = Vec::new();
                for (k, v) in t {
                    let value = v.as_str().unwrap_or_default();
                    let name_ok = http::HeaderName::from_bytes(k.as_bytes()).is_ok();
                    let value_ok = v.is_str() && http::HeaderValue::from_str(value).is_ok();
                    let hop = is_managed_header(k);
                    if !name_ok || !value_ok || hop {
                        s.problem_at(
                            &format!("set_headers.{k}"),
                            if hop { "this header is managed by the proxy" } else { "not a valid header" },
                        );
                    } else {
                        headers.push((k.clone(), value.to_string()));
                    }
                }
                headers
            }
        };
        let health_check_path = match s.string("health_check_path") {
            None => d.health_check_path.clone(),
            Some(p) if p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok() => p,
            Some(p) => {
                s.problem_at("health_check_path", format!("{p:?} must be a path starting with '/'"));
                d.health_check_path.clone()
            }
        };
        let hash_request_uri = match s.string(key::HASH).as_deref() {
            None => d.hash_request_uri,
            Some(h) if h.split_whitespace().eq(["$request_uri", "consistent"]) => true,
            Some("") | Some("off") => false,
            Some(other) => {
                s.problem_at(
                    key::HASH,
                    format!(
                        "{other:?}: only \"$request_uri consistent\" (nginx's `hash $request_uri consistent`) \
                         is supported, or \"off\" for round robin"
                    ),
                );
                d.hash_request_uri
            }
        };
        let out = PoolSettings {
            hash_request_uri,
            request_buffering: s.bool(key::REQUEST_BUFFERING, d.request_buffering),
            connect_timeout: s.duration(key::CONNECT_TIMEOUT, d.connect_timeout),
            send_timeout: s.duration(key::SEND_TIMEOUT, d.send_timeout),
            read_timeout: s.duration(key::READ_TIMEOUT, d.read_timeout),
            next_upstream,
            next_upstream_tries: s.count(key::NEXT_UPSTREAM_TRIES, d.next_upstream_tries, 0..=1000),
            next_upstream_timeout: s.duration(key::NEXT_UPSTREAM_TIMEOUT, d.next_upstream_timeout),
            max_body_size: s.size(key::MAX_BODY_SIZE, d.max_body_size),
            client_body_buffer_size: usize::try_from(
                s.size(key::CLIENT_BODY_BUFFER_SIZE, d.client_body_buffer_size as u64),
            )
            .unwrap_or(usize::MAX),
            client_body_temp_path: s.path("client_body_temp_path").unwrap_or_else(|| d.client_body_temp_path.clone()),
            body_timeout: s.duration(key::BODY_TIMEOUT, d.body_timeout),
            header_timeout: s.duration(key::HEADER_TIMEOUT, d.header_timeout),
            keepalive: s.bool(key::KEEPALIVE, d.keepalive),
            keepalive_connections: s.count(key::KEEPALIVE_CONNECTIONS, d.keepalive_connections, 1..=10_000),
            keepalive_timeout: s.duration(key::KEEPALIVE_TIMEOUT, d.keepalive_timeout),
            keepalive_requests: s.count(key::KEEPALIVE_REQUESTS, d.keepalive_requests as usize, 1..=1_000_000) as u64,
            host,
            uri,
            max_fails: s.count(key::MAX_FAILS, d.max_fails as usize, 0..=1000) as u32,
            fail_timeout: s.duration(key::FAIL_TIMEOUT, d.fail_timeout),
            health_check_path,
            health_check_interval: s.duration("health_check_interval", d.health_check_interval),
            health_check_timeout: s.duration("health_check_timeout", d.health_check_timeout),
            health_check_fails: s.count("health_check_fails", d.health_check_fails as usize, 1..=100) as u32,
            health_check_passes: s.count("health_check_passes", d.health_check_passes as usize, 1..=100) as u32,
            x_forwarded_for: s.bool(key::X_FORWARDED_FOR, d.x_forwarded_for),
            x_real_ip: s.bool(key::X_REAL_IP, d.x_real_ip),
            set_headers,
            allow: s.allow("allow").unwrap_or_else(|| d.allow.clone()),
            trace_requests: s.count(key::TRACE_REQUESTS, d.trace_requests, 0..=1_000_000),
        };
        for (key, value) in [
            (key::CONNECT_TIMEOUT, out.connect_timeout),
            (key::SEND_TIMEOUT, out.send_timeout),
            (key::READ_TIMEOUT, out.read_timeout),
            (key::BODY_TIMEOUT, out.body_timeout),
            (key::HEADER_TIMEOUT, out.header_timeout),
            (key::KEEPALIVE_TIMEOUT, out.keepalive_timeout),
            ("health_check_timeout", out.health_check_timeout),
        ] {
            if value.is_zero() {
                s.problem_at(key, "must be more than zero");
            }
        }
        if out.max_body_size == 0 {
            s.problem_at(
                key::MAX_BODY_SIZE,
                "0 (nginx: no limit) is not supported: bodies are held (in memory or a temp file) to be \
                 replayed on the next server; give a size like \"16MiB\"",
            );
        }
        if !out.health_check_interval.is_zero() && out.health_check_interval < Duration::from_millis(100) {
            s.problem_at("health_check_interval", "must be at least 100ms (or 0 for no probes)");
        }
        out
    }
}

/// Headers the proxy writes itself; configuration may not set them.
pub fn is_managed_header(name: &str) -> bool {
    const MANAGED: [&str; 10] = [
        key::HOST,
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "keep-alive",
        "upgrade",
        "expect",
        "proxy-connection",
        "trailer",
    ];
    MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Role;
    use crate::config::Config;

    fn lb(text: &str) -> LbConfig {
        match Config::from_toml_str(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}"), Role::Lb) {
            Ok(c) => c.lb.expect("lb section"),
            Err(e) => panic!("{e}"),
        }
    }

    fn problems(text: &str) -> String {
        match Config::from_toml_str(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}"), Role::Lb) {
            Ok(_) => panic!("should be refused:\n{text}"),
            Err(e) => e.problems.join("\n"),
        }
    }

    #[test]
    fn hash_takes_nginx_s_request_uri_consistent_only_and_trace_requests_a_count() {
        let c = lb(r#"
            [lb]
            hash = "$request_uri  consistent"
            trace_requests = 0
            [lb.pools.rec]
            listen = "0.0.0.0:80"
            servers = ["10.0.0.1:80", "10.0.0.2:80"]
            [lb.pools.excp]
            listen = "0.0.0.0:3650"
            servers = ["10.0.0.11:3650"]
            hash = "off"
        "#);
        let pool = |n: &str| &c.pools.iter().find(|p| p.name == n).unwrap().settings;
        assert!(pool("rec").hash_request_uri && !pool("excp").hash_request_uri);
        assert_eq!(pool("rec").trace_requests, 0);
        let p = problems(
            "[lb.pools.a]\nlisten = \"0.0.0.0:1\"\nservers = [\"10.0.0.1:80\"]\nhash = \"$remote_addr\"\ntrace_requests = -1\n",
        );
        assert!(p.contains("lb.pools.a.hash: \"$remote_addr\": only \"$request_uri consistent\""), "{p}");
        assert!(p.contains("trace_requests"), "{p}");
    }

    #[test]
    fn design_sample_pools_parse_with_nginx_defaults() {
        let c = lb(r#"
            [lb.pools.excp]
            listen = "0.0.0.0:3650"
            servers = ["10.0.0.11:3650", "10.0.0.12:3650"]
            next_upstream_tries = 3
            [lb.pools.exrp]
            listen = "0.0.0.0:8080"
            servers = ["10.0.0.21:8080", { address = "exrp-2.local:8080", weight = 5, max_fails = 1 }]
            next_upstream_tries = 3
            "#);
        assert_eq!(c.pools.len(), 2);
        let excp = c.pools.iter().find(|p| p.name == "excp").unwrap();
        assert_eq!(excp.settings.next_upstream_tries, 3);
        assert_eq!(excp.settings.connect_timeout, Duration::from_secs(60));
        assert_eq!(excp.settings.next_upstream, NextUpstream::DEFAULT);
        assert_eq!(excp.servers[0].max_fails, 0);
        let exrp = c.pools.iter().find(|p| p.name == "exrp").unwrap();
        assert_eq!(exrp.servers[1].weight, 5);
        assert_eq!(exrp.servers[1].max_fails, 1);
        assert_eq!(exrp.servers[1].address, "exrp-2.local:8080");
    }

    #[test]
    fn pool_keys_override_lb_defaults() {
        let c = lb(r#"
            [lb]
            connect_timeout = "5s"
            next_upstream = ["error", "timeout", "http_404"]
            [lb.pools.a]
            listen = "127.0.0.1:0"
            servers = ["127.0.0.1:1"]
            connect_timeout = "2s"
            [lb.pools.b]
            listen = "127.0.0.1:0"
            servers = ["127.0.0.1:2"]
            "#);
        assert_eq!(c.pools[0].settings.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.pools[1].settings.connect_timeout, Duration::from_secs(5));
        assert!(c.pools[1].settings.next_upstream.http_404);
    }

    #[test]
    fn every_pool_problem_is_listed() {
        let p = problems(
            r#"
            [lb]
            next_upstream = ["error", "sometimes"]
            colour = 1
            workers = -2
            [lb.pools.excp]
            servers = ["10.0.0.1", "[::1]:x", { address = "a:1", weight = 0, typo = 1 }]
            read_timeout = "0s"
            workers = 2
            [lb.pools.empty]
            listen = "127.0.0.1:0"
            servers = []
            "#,
        );
        for needle in [
            "lb.next_upstream: unknown condition \"sometimes\"",
            "lb.colour: unknown key",
            "lb.workers:",
            // One count for the process: a pool has no threads of its own.
            "lb.pools.excp.workers: unknown key",
            "lb.pools.excp.listen: is required",
            "needs a port",
            "lb.pools.excp.servers[2].weight",
            "lb.pools.excp.servers[2].typo: unknown key",
            "lb.pools.excp.read_timeout: must be more than zero",
            "lb.pools.empty.servers: must name at least one server",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in:\n{p}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.1:3650").unwrap(), ("10.0.0.1".into(), 3650));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(split_host_port("excp-1.site.local:3650").unwrap(), ("excp-1.site.local".into(), 3650));
        assert!(split_host_port("excp").is_err());
        assert!(split_host_port("::1:80").is_err());
        assert!(split_host_port("a b:80").is_err());
    }
}
