//! The directive tree into pools: what each directive means for exec-allinone, what is dropped
//! with a note and what is refused.

use super::*;

/// nginx time syntax: units in decreasing order (`1h30m`, `500ms`); a bare trailing number means seconds.
pub(super) fn parse_duration(s: &str) -> Option<u64> {
    let (mut rest, mut total, mut last) = (s, 0u64, u8::MAX);
    if s.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let (rank, mult, len) = match rest.as_bytes() {
            [b'm', b's', ..] => (1, 1, 2),
            [] => (2, SEC, 0),
            [b's', ..] => (2, SEC, 1),
            [b'm', ..] => (3, 60 * SEC, 1),
            [b'h', ..] => (4, 3600 * SEC, 1),
            [b'd', ..] => (5, 86400 * SEC, 1),
            [b'w', ..] => (6, 7 * 86400 * SEC, 1),
            [b'M', ..] => (7, 30 * 86400 * SEC, 1),
            [b'y', ..] => (8, 365 * 86400 * SEC, 1),
            _ => return None,
        };
        if rank >= last {
            return None;
        }
        last = rank;
        total = total.checked_add(n.checked_mul(mult)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

pub(super) fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

pub(super) fn fmt_duration(ms: u64) -> Value {
    Value::String(if ms % SEC == 0 { format!("{}s", ms / SEC) } else { format!("{ms}ms") })
}

pub(super) fn fmt_size(b: u64) -> Value {
    Value::String(match b {
        0 => "0".to_string(),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    })
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Upstream address as "host:port" (port 80 when absent, as nginx), and whether the host is an IP literal.
pub(super) fn address(a: &str) -> Result<(String, bool), String> {
    if a.starts_with("unix:") {
        return Err("unix sockets are not supported".into());
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unterminated `[`")?;
        let ip: Ipv6Addr = h.parse().map_err(|_| format!("`{h}` is not an IPv6 address"))?;
        let port = if after.is_empty() { 80 } else { port(after.strip_prefix(':').ok_or("expected `:port`")?)? };
        return Ok((SocketAddr::new(IpAddr::V6(ip), port).to_string(), true));
    }
    if a.matches(':').count() > 1 {
        return Err("IPv6 addresses must be written in brackets".into());
    }
    let (host, port) = match a.split_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (a, 80),
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((format!("{ip}:{port}"), true));
    }
    let name_ok = host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if host.is_empty() || !name_ok || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{host}` is not an address or host name"));
    }
    Ok((format!("{host}:{port}"), false))
}

pub(super) fn port(p: &str) -> Result<u16, String> {
    let n = p.bytes().all(|b| b.is_ascii_digit()).then(|| p.parse::<u16>().ok()).flatten();
    n.filter(|&n| n != 0).ok_or_else(|| format!("bad port `{p}`"))
}

pub(super) fn listen_addr(a: &str) -> Result<SocketAddr, String> {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if a.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(any, port(a)?));
    }
    if a.starts_with('[') {
        let (addr, _) = address(a)?;
        return addr.parse().map_err(|_| format!("bad listen address `{a}`"));
    }
    let (host, p) = a.split_once(':').map_or(Ok((a, 80)), |(h, p)| port(p).map(|p| (h, p)))?;
    match host {
        "*" => Ok(SocketAddr::new(any, p)),
        h => h.parse::<Ipv4Addr>().map(|ip| SocketAddr::new(IpAddr::V4(ip), p)).map_err(|_| {
            format!("`listen {a}`: only IP addresses and ports are supported (not host names or unix sockets)")
        }),
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Ctx {
    Main,
    Events,
    Http,
    Server,
    Location,
    Upstream,
}

/// nginx itself rejects a block on a simple directive; the usual cause is a missing `;` before the next block.
pub(super) fn shape(d: &Directive, want_block: bool, rep: &mut Report) -> bool {
    match (&d.block, want_block) {
        (Some(_), false) => rep.refuse(&d.at, format!("`{}` is not terminated by `;` (missing semicolon?)", d.name)),
        (None, true) => rep.refuse(&d.at, format!("`{}` has no opening `{{`", d.name)),
        _ => return true,
    }
    false
}

pub(super) fn harmless(d: &Directive, ctx: Ctx) -> Option<&'static str> {
    use Ctx::{Events, Http, Location, Main, Server};
    const PROC: &str = "nginx process tuning has no equivalent";
    const LOG: &str = "exec-allinone writes its own access log; see README";
    let arg = d.arg();
    Some(match (ctx, d.name.as_str()) {
        (Main, "worker_processes") => "the lb runs one worker thread per CPU; `[lb] workers` sets another count",
        (Main, "worker_rlimit_nofile" | "worker_cpu_affinity" | "user" | "pid" | "daemon") => PROC,
        (Events, "use" | "multi_accept" | "accept_mutex" | "accept_mutex_delay") => PROC,
        (Main | Http | Server | Location, "error_log") | (Http | Server | Location, "access_log") => LOG,
        (Http, "log_format") => LOG,
        (Http | Server | Location, "default_type" | "sendfile" | "tcp_nopush" | "tcp_nodelay" | "server_tokens") => {
            "does not affect proxied traffic"
        }
        (Http | Server | Location, "types") => "MIME types do not affect proxied traffic",
        (Http | Server | Location, "keepalive_timeout" | "keepalive_requests" | "send_timeout") => {
            "client-side connection tuning is not carried over"
        }
        (Http | Server | Location, "proxy_buffering" | "proxy_buffers" | "proxy_buffer_size")
        | (Http | Server | Location, "proxy_busy_buffers_size") => {
            "buffering details do not change what upstreams or clients receive"
        }
        (Http | Server | Location, "proxy_intercept_errors") if arg == Some("off") => "that is the default",
        (Server, "server_name") => "exec-allinone serves one pool per listener whatever the Host header",
        _ => return None,
    })
}

pub(super) fn ignore_or_refuse(d: &Directive, ctx: Ctx, rep: &mut Report) {
    if let Some(why) = harmless(d, ctx) {
        if shape(d, d.name == "types", rep) {
            rep.note(&d.at, format!("`{}` ignored ({why})", d.name));
        }
        return;
    }
    let n = d.name.as_str();
    let known = matches!(
        n,
        "rewrite" | "return" | "if" | "map" | "geo" | "split_clients" | "stream" | "mail" | "zone" | "add_header"
    ) || ["proxy_cache", "ssl_", "auth_", "limit_", "proxy_ssl"].iter().any(|p| n.starts_with(p));
    match n {
        _ if known || n.starts_with("proxy_") => {
            rep.refuse(&d.at, format!("`{}` is not supported by exec-allinone lb", d.show()))
        }
        _ => rep.refuse(&d.at, format!("`{n}` is unknown or not allowed here; refusing rather than guessing")),
    }
}

#[derive(Clone)]
pub(super) enum Header {
    HostDefault,
    HostClient,
    HostLiteral(String),
    ForwardedFor,
    RealIp,
    ConnectionEmpty,
    Set(String, String),
}

/// Values set in one block; `None` inherits from the enclosing block, as nginx merges them.
#[derive(Clone, Default)]
pub(super) struct Settings {
    pub(super) durations: [Option<u64>; 6],
    pub(super) next_upstream: Option<Vec<&'static str>>,
    pub(super) tries: Option<u64>,
    pub(super) max_body: Option<u64>,
    pub(super) body_buffer: Option<u64>,
    /// `proxy_request_buffering`: Some(false) for `off`.
    pub(super) request_buffering: Option<bool>,
    pub(super) http11: Option<(bool, Loc)>,
    pub(super) headers: Option<(Vec<Header>, Loc)>,
}

/// nginx directive, our key, our default; `client_header_timeout` (last) is not valid in a location.
pub(super) const DURATIONS: [(&str, &str, u64); 6] = [
    ("proxy_connect_timeout", key::CONNECT_TIMEOUT, DEFAULT_TIMEOUT),
    ("proxy_send_timeout", key::SEND_TIMEOUT, DEFAULT_TIMEOUT),
    ("proxy_read_timeout", key::READ_TIMEOUT, DEFAULT_TIMEOUT),
    ("proxy_next_upstream_timeout", key::NEXT_UPSTREAM_TIMEOUT, 0),
    ("client_body_timeout", key::BODY_TIMEOUT, DEFAULT_TIMEOUT),
    ("client_header_timeout", key::HEADER_TIMEOUT, DEFAULT_TIMEOUT),
];

impl Settings {
    pub(super) fn over(&self, parent: &Settings) -> Settings {
        let mut durations = self.durations;
        for (d, p) in durations.iter_mut().zip(parent.durations) {
            *d = d.or(p);
        }
        Settings {
            durations,
            next_upstream: self.next_upstream.clone().or_else(|| parent.next_upstream.clone()),
            tries: self.tries.or(parent.tries),
            max_body: self.max_body.or(parent.max_body),
            body_buffer: self.body_buffer.or(parent.body_buffer),
            request_buffering: self.request_buffering.or(parent.request_buffering),
            http11: self.http11.clone().or_else(|| parent.http11.clone()),
            // nginx replaces the inherited header list wholesale when a block sets any header.
            headers: self.headers.clone().or_else(|| parent.headers.clone()),
        }
    }
}

pub(super) fn setting(d: &Directive, ctx: Ctx, s: &mut Settings, seen: &mut HashSet<String>, rep: &mut Report) -> bool {
    let n = d.name.as_str();
    let dur = DURATIONS.iter().position(|x| x.0 == n).filter(|&i| i != 5 || ctx != Ctx::Location);
    let other = [
        "proxy_next_upstream",
        "proxy_next_upstream_tries",
        "client_max_body_size",
        "client_body_buffer_size",
        "proxy_http_version",
        "proxy_request_buffering",
    ];
    if dur.is_none() && !other.contains(&n) && n != "proxy_set_header" {
        return false;
    }
    if !shape(d, false, rep) {
        return true;
    }
    let dup = match d.args.first() {
        Some(h) if n == "proxy_set_header" => !seen.insert(format!("header {}", h.to_ascii_lowercase())),
        _ => !seen.insert(n.to_string()),
    };
    if dup {
        rep.refuse(&d.at, format!("`{}` is duplicate in this block", d.show()));
        return true;
    }
    let bad = |rep: &mut Report| rep.refuse(&d.at, format!("`{}`: invalid value", d.show()));
    if let Some(i) = dur {
        match d.arg().and_then(parse_duration) {
            Some(0) if DURATIONS[i].2 != 0 => {
                rep.refuse(&d.at, format!("`{}`: a zero timeout is not supported", d.show()))
            }
            Some(v) => s.durations[i] = Some(v),
            None => bad(rep),
        }
        return true;
    }
    match (n, d.arg()) {
        ("proxy_next_upstream_tries", Some(a)) if a.bytes().all(|b| b.is_ascii_digit()) => match a.parse() {
            Ok(v) => s.tries = Some(v),
            Err(_) => bad(rep),
        },
        ("client_max_body_size", Some(a)) => match parse_size(a) {
            // exec-allinone holds a body in memory to replay it on the next server, so it needs a limit.
            Some(0) => rep.refuse(&d.at, "`client_max_body_size 0` (no limit) is not supported; give a size like 16m"),
            Some(v) => s.max_body = Some(v),
            None => bad(rep),
        },
        ("client_body_buffer_size", Some(a)) => match parse_size(a) {
            Some(v) if v > 0 => s.body_buffer = Some(v),
            _ => bad(rep),
        },
        ("proxy_http_version", Some(v @ ("1.0" | "1.1"))) => s.http11 = Some((v == "1.1", d.at.clone())),
        ("proxy_request_buffering", Some(v @ ("on" | "off"))) => s.request_buffering = Some(v == "on"),
        ("proxy_next_upstream", _) => {
            let mut flags: Vec<&'static str> = Vec::new();
            for a in &d.args {
                match FLAGS.iter().find(|&&f| f == a) {
                    Some(f) => flags.push(f),
                    None if a == "off" && d.args.len() == 1 => flags.push("off"),
                    None if a == "off" => rep.refuse(&d.at, "`proxy_next_upstream`: `off` cannot be combined"),
                    None => rep.refuse(&d.at, format!("`proxy_next_upstream {a}` is not supported")),
                }
            }
            flags.sort_by_key(|f| FLAGS.iter().position(|x| x == f));
            flags.dedup();
            if d.args.is_empty() {
                bad(rep);
            }
            s.next_upstream = (!flags.is_empty()).then_some(flags);
        }
        ("proxy_set_header", _) => {
            let list = s.headers.get_or_insert_with(|| (Vec::new(), d.at.clone()));
            list.0.extend(header(d, rep));
        }
        _ => bad(rep),
    }
    true
}

pub(super) fn header(d: &Directive, rep: &mut Report) -> Option<Header> {
    let [name, value] = d.args.as_slice() else {
        rep.refuse(&d.at, "`proxy_set_header` takes a header name and a value");
        return None;
    };
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#%&'*+-.^_`|~".contains(&b));
    let why = match (name.to_ascii_lowercase().as_str(), value.as_str()) {
        _ if !token => "is not a valid header name",
        ("host", "$proxy_host") => return Some(Header::HostDefault),
        ("host", "$host" | "$http_host") => return Some(Header::HostClient),
        ("x-real-ip", "$remote_addr") => return Some(Header::RealIp),
        ("x-forwarded-for", "$proxy_add_x_forwarded_for") => return Some(Header::ForwardedFor),
        ("connection", "") => return Some(Header::ConnectionEmpty),
        ("connection", "close") => {
            rep.note(&d.at, "`proxy_set_header Connection close` ignored (that is nginx's default)");
            return None;
        }
        ("connection", _) => "is not supported",
        (_, v) if v.contains('$') => "uses variables, which are not supported here",
        (_, "") => "removes the header, which is not supported",
        (_, v) if v.chars().any(|c| c.is_control() && c != '\t') => "has control characters in its value",
        ("host", v) => return Some(Header::HostLiteral(v.to_string())),
        _ => return Some(Header::Set(name.clone(), value.clone())),
    };
    rep.refuse(&d.at, format!("`{}` {why}", d.show()));
    None
}

pub(super) struct UpServer {
    pub(super) addr: String,
    pub(super) ip: bool,
    pub(super) weight: u64,
    pub(super) max_fails: Option<u64>,
    pub(super) fail_timeout: Option<u64>,
    pub(super) down: bool,
    pub(super) at: Loc,
}

pub(super) struct Upstream<'a> {
    pub(super) name: &'a str,
    pub(super) at: &'a Loc,
    pub(super) servers: Vec<UpServer>,
    pub(super) keepalive: Option<u64>,
    pub(super) ka_timeout: Option<u64>,
    pub(super) ka_requests: Option<u64>,
    pub(super) used_by: Option<&'a Loc>,
    /// `hash $request_uri consistent`.
    pub(super) hash_uri: bool,
}

pub(super) fn count(d: &Directive, min: u64, rep: &mut Report) -> Option<u64> {
    let v = d.arg().filter(|a| a.bytes().all(|b| b.is_ascii_digit())).and_then(|a| a.parse().ok());
    let v = v.filter(|&v| v >= min);
    if v.is_none() {
        rep.refuse(&d.at, format!("`{}`: expected a number of at least {min}", d.show()));
    }
    v
}

pub(super) fn upstream<'a>(d: &'a Directive, rep: &mut Report) -> Option<Upstream<'a>> {
    let Some(name) = d.arg() else {
        rep.refuse(&d.at, "`upstream` takes one name");
        return None;
    };
    // The pool takes the upstream's name and sends it as Host, so it cannot be changed to fit.
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        rep.refuse(&d.at, format!("upstream name `{name}`: pool names are letters, digits, '-' and '_'"));
    }
    let mut up = Upstream {
        name,
        at: &d.at,
        servers: Vec::new(),
        keepalive: None,
        ka_timeout: None,
        ka_requests: None,
        used_by: None,
        hash_uri: false,
    };
    let (mut seen, mut any) = (HashSet::new(), false);
    for e in d.items() {
        let n = e.name.as_str();
        match n {
            "server" => {
                any = true;
                if shape(e, false, rep) {
                    up.servers.extend(up_server(e, rep));
                }
            }
            "keepalive" | "keepalive_timeout" | "keepalive_requests" if shape(e, false, rep) => {
                if !seen.insert(n) {
                    rep.refuse(&e.at, format!("`{n}` is duplicate"));
                } else if n == "keepalive" {
                    up.keepalive = count(e, 1, rep);
                } else if n == "keepalive_requests" {
                    up.ka_requests = count(e, 1, rep);
                } else {
                    up.ka_timeout = e.arg().and_then(parse_duration);
                    if up.ka_timeout.is_none() {
                        rep.refuse(&e.at, format!("`{}`: invalid duration", e.show()));
                    }
                }
            }
            "keepalive" | "keepalive_timeout" | "keepalive_requests" => {}
            "hash" if e.args.iter().map(String::as_str).eq(["$request_uri", "consistent"]) => up.hash_uri = true,
            "hash" | "ip_hash" | "least_conn" | "least_time" | "random" | "sticky" | "ntlm" | "queue" => rep.refuse(
                &e.at,
                format!("`{}`: only round robin and `hash $request_uri consistent` balancing are supported", e.show()),
            ),
            _ => ignore_or_refuse(e, Ctx::Upstream, rep),
        }
    }
    if !any {
        rep.refuse(&d.at, format!("upstream `{name}` has no servers"));
    }
    Some(up)
}

pub(super) fn up_server(e: &Directive, rep: &mut Report) -> Option<UpServer> {
    let Some((a, params)) = e.args.split_first() else {
        rep.refuse(&e.at, "`server` needs an address");
        return None;
    };
    let (addr, ip) = address(a).map_err(|m| rep.refuse(&e.at, format!("`server {a}`: {m}"))).ok()?;
    let mut s = UpServer { addr, ip, weight: 1, max_fails: None, fail_timeout: None, down: false, at: e.at.clone() };
    let mut ok = true;
    for p in params {
        let (k, v) = p.split_once('=').map_or((p.as_str(), None), |(k, v)| (k, Some(v)));
        let num = v.filter(|v| v.bytes().all(|b| b.is_ascii_digit())).and_then(|v| v.parse::<u64>().ok());
        let why = match (k, v) {
            ("weight", Some(_)) if num.is_some_and(|w| w >= 1) => {
                s.weight = num.unwrap_or(1);
                continue;
            }
            ("max_fails", Some(_)) if num.is_some() => {
                s.max_fails = num;
                continue;
            }
            ("fail_timeout", Some(v)) if parse_duration(v).is_some() => {
                s.fail_timeout = parse_duration(v);
                continue;
            }
            ("down", None) => {
                s.down = true;
                continue;
            }
            ("weight" | "max_fails" | "fail_timeout", _) => "has an invalid value",
            ("backup" | "max_conns" | "resolve" | "service" | "slow_start" | "route" | "drain", _) => {
                "is not supported"
            }
            _ => "is unknown",
        };
        rep.refuse(&e.at, format!("`server {a}`: parameter `{p}` {why}"));
        ok = false;
    }
    ok.then_some(s)
}

pub(super) struct Target {
    pub(super) auth: String,
    pub(super) addr: String,
    /// nginx's `$proxy_host`, the default Host sent upstream: the URL's host, with its port unless 80.
    pub(super) proxy_host: String,
    pub(super) raw: bool,
}

pub(super) fn target(e: &Directive) -> Result<Target, String> {
    let url = e.arg().ok_or("`proxy_pass` takes one URL")?;
    let lower = url.to_ascii_lowercase();
    if url.contains('$') {
        return Err(format!("`proxy_pass {url}`: variables are not supported"));
    }
    if lower.starts_with("https://") {
        return Err(format!("`proxy_pass {url}`: https upstreams are not supported"));
    }
    let rest = url
        .get(7..)
        .filter(|_| lower.starts_with("http://"))
        .ok_or_else(|| format!("`proxy_pass {url}`: not http://"))?;
    let (auth, uri) = rest.find('/').map_or((rest, None), |i| (&rest[..i], Some(&rest[i..])));
    if let Some(u) = uri.filter(|&u| u != "/") {
        return Err(format!("`proxy_pass {url}`: the URI `{u}` would rewrite request paths; only `/` or none"));
    }
    let (addr, _) = address(auth).map_err(|m| format!("`proxy_pass {url}`: {m}"))?;
    let proxy_host = auth.strip_suffix(":80").unwrap_or(auth).to_string();
    Ok(Target { auth: auth.to_string(), addr, proxy_host, raw: uri.is_none() })
}

pub(super) struct Srv<'a> {
    pub(super) at: &'a Loc,
    // `None` addresses were already refused; they still count as listeners.
    pub(super) listens: Vec<(Option<SocketAddr>, &'a Directive)>,
    pub(super) settings: Settings,
    pub(super) root: Option<Root<'a>>,
}

pub(super) struct Root<'a> {
    pub(super) settings: Settings,
    pub(super) pass: Option<Target>,
    pub(super) saw_pass: bool,
    pub(super) at: &'a Loc,
}

pub(super) fn server<'a>(d: &'a Directive, rep: &mut Report) -> Srv<'a> {
    let mut srv = Srv { at: &d.at, listens: Vec::new(), settings: Settings::default(), root: None };
    let mut seen = HashSet::new();
    if !d.args.is_empty() {
        rep.refuse(&d.at, "`server` block takes no arguments");
    }
    for e in d.items() {
        match e.name.as_str() {
            "listen" if shape(e, false, rep) => srv.listens.push((listen(e, rep), e)),
            "listen" => {}
            "location" if shape(e, true, rep) => {
                if e.args != ["/"] {
                    rep.refuse(&e.at, format!("`{}`: only `location /` is supported", e.show()));
                } else if srv.root.is_some() {
                    rep.refuse(&e.at, "duplicate `location /`");
                } else {
                    srv.root = Some(location(e, rep));
                }
            }
            "location" => {}
            _ if setting(e, Ctx::Server, &mut srv.settings, &mut seen, rep) => {}
            _ => ignore_or_refuse(e, Ctx::Server, rep),
        }
    }
    srv
}

pub(super) fn listen(e: &Directive, rep: &mut Report) -> Option<SocketAddr> {
    let Some((a, params)) = e.args.split_first() else {
        rep.refuse(&e.at, "`listen` needs an address");
        return None;
    };
    for p in params {
        match p.split('=').next().unwrap_or_default() {
            "default_server" | "default" | "reuseport" | "backlog" => {
                rep.note(&e.at, format!("`listen` parameter `{p}` ignored (no equivalent needed)"))
            }
            "ssl" | "http2" | "http3" | "quic" | "proxy_protocol" | "udp" => {
                rep.refuse(&e.at, format!("`listen` parameter `{p}` is not supported (plain HTTP/1.x only)"))
            }
            _ => rep.refuse(&e.at, format!("`listen` parameter `{p}` is unknown or unsupported")),
        }
    }
    listen_addr(a).map_err(|m| rep.refuse(&e.at, m)).ok()
}

pub(super) fn location<'a>(d: &'a Directive, rep: &mut Report) -> Root<'a> {
    let mut root = Root { settings: Settings::default(), pass: None, saw_pass: false, at: &d.at };
    let mut seen = HashSet::new();
    for e in d.items() {
        match e.name.as_str() {
            "proxy_pass" if root.saw_pass => rep.refuse(&e.at, "duplicate `proxy_pass`"),
            "proxy_pass" => {
                root.saw_pass = true;
                if shape(e, false, rep) {
                    root.pass = target(e).map_err(|m| rep.refuse(&e.at, m)).ok();
                }
            }
            "location" => rep.refuse(&e.at, format!("`{}`: nested locations are not supported", e.show())),
            _ if setting(e, Ctx::Location, &mut root.settings, &mut seen, rep) => {}
            _ => ignore_or_refuse(e, Ctx::Location, rep),
        }
    }
    root
}

pub(super) struct Pool<'a> {
    pub(super) name: String,
    pub(super) listen: SocketAddr,
    pub(super) at: &'a Loc,
    /// Each a string ("host:port") or a table with the server's own settings.
    pub(super) servers: Vec<Value>,
    /// The settings (`key::POOL`) that differ from exec-allinone's defaults.
    pub(super) vals: HashMap<&'static str, Value>,
}

pub(super) fn put(vals: &mut HashMap<&'static str, Value>, key: &'static str, value: Option<Value>) {
    debug_assert!(key::POOL.contains(&key));
    if let Some(v) = value {
        vals.insert(key, v);
    }
}

pub(super) fn analyze(items: &[Directive], file: &Rc<str>, rep: &mut Report) -> String {
    let mut http: Option<&Directive> = None;
    let mut worker_connections = None;
    for d in items {
        match d.name.as_str() {
            "events" if shape(d, true, rep) => {
                for e in d.items() {
                    if e.name != "worker_connections" {
                        ignore_or_refuse(e, Ctx::Events, rep);
                    } else if let Some(n) = e.arg().and_then(|a| a.parse::<usize>().ok()).filter(|&n| n >= 1) {
                        // nginx counts upstream connections too; ours counts client ones.
                        worker_connections = Some(n);
                    } else {
                        rep.refuse(&e.at, "`worker_connections` takes a number of connections");
                    }
                }
            }
            "http" if shape(d, true, rep) => match http {
                Some(_) => rep.refuse(&d.at, "duplicate `http` block"),
                None => http = Some(d),
            },
            "events" | "http" => {}
            _ => ignore_or_refuse(d, Ctx::Main, rep),
        }
    }
    let Some(http) = http else {
        rep.refuse(&Loc { file: file.clone(), line: 1 }, "no `http` block; nothing to translate");
        return String::new();
    };
    let (mut base, mut seen, mut ups, mut srvs) = (Settings::default(), HashSet::new(), Vec::new(), Vec::new());
    // nginx matches upstream names case-insensitively; maps keep pathological inputs linear.
    let mut by_name = HashMap::new();
    for d in http.items() {
        match d.name.as_str() {
            "upstream" if shape(d, true, rep) => {
                if let Some(u) = upstream(d, rep) {
                    match by_name.entry(u.name.to_ascii_lowercase()) {
                        Entry::Occupied(_) => rep.refuse(&d.at, format!("duplicate upstream `{}`", u.name)),
                        Entry::Vacant(v) => {
                            v.insert(ups.len());
                            ups.push(u);
                        }
                    }
                }
            }
            "server" if shape(d, true, rep) => srvs.push(server(d, rep)),
            "upstream" | "server" => {}
            _ if setting(d, Ctx::Http, &mut base, &mut seen, rep) => {}
            _ => ignore_or_refuse(d, Ctx::Http, rep),
        }
    }
    let pools: Vec<Pool> = srvs.iter().filter_map(|s| pool(s, &base, &mut ups, &by_name, rep)).collect();
    for u in ups.iter().filter(|u| u.used_by.is_none()) {
        rep.note(u.at, format!("upstream `{}` is not used by any server block; not translated", u.name));
    }
    // A wildcard listener takes its port (per address family) from every other listener.
    let (mut by_addr, mut wild, mut any, mut names) = (HashMap::new(), HashMap::new(), HashMap::new(), HashSet::new());
    for b in &pools {
        let (addr, k) = (b.listen, (b.listen.port(), b.listen.is_ipv4()));
        let other = if addr.ip().is_unspecified() { any.get(&k) } else { wild.get(&k) };
        if let Some(a) = by_addr.get(&addr).or(other).copied() {
            let a: &Pool = a;
            rep.refuse(
                b.at,
                format!("pools `{}` and `{}` both listen on {addr}; one listener per pool", a.name, b.name),
            );
        } else if !names.insert(&b.name) {
            rep.refuse(b.at, format!("a second pool named `{}`; give the proxy_pass target an upstream", b.name));
        }
        by_addr.entry(addr).or_insert(b);
        any.entry(k).or_insert(b);
        if addr.ip().is_unspecified() {
            wild.entry(k).or_insert(b);
        }
    }
    if srvs.is_empty() {
        rep.refuse(&http.at, "no `server` block proxies anywhere; nothing to translate");
    }
    render(file, &pools, worker_connections).unwrap_or_else(|e| {
        rep.refuse(&http.at, e);
        String::new()
    })
}

pub(super) fn pool<'a>(
    srv: &Srv<'a>,
    http: &Settings,
    ups: &mut [Upstream<'a>],
    by_name: &HashMap<String, usize>,
    rep: &mut Report,
) -> Option<Pool<'a>> {
    let listen = match srv.listens.as_slice() {
        [] => {
            rep.refuse(srv.at, "server block has no `listen` (nginx would pick *:80 or *:8000)");
            None
        }
        [(a, _)] => *a,
        many => {
            let wild = |a: &Option<SocketAddr>| a.is_some_and(|a| a.is_ipv4() && a.ip().is_unspecified());
            let keep = many.iter().find(|(a, _)| wild(a)).unwrap_or(&many[0]);
            let lines: Vec<String> = many.iter().map(|(_, d)| d.at.line.to_string()).collect();
            let (n, lines, keep) = (many.len(), lines.join(", "), keep.1.show());
            let msg = format!("server block has {n} `listen` directives (lines {lines}); one listener per pool");
            rep.refuse(srv.at, format!("{msg}: keep only `{keep};`"));
            None
        }
    };
    let Some(root) = &srv.root else {
        rep.refuse(srv.at, "server block has no `location /`");
        return None;
    };
    if !root.saw_pass {
        rep.refuse(root.at, "`location /` has no `proxy_pass` (nginx would serve local files)");
    }
    let (listen, t, loc_at) = (listen?, root.pass.as_ref()?, root.at);
    let eff = root.settings.over(&srv.settings.over(http));
    let host = t.auth.split(':').next().unwrap_or_default();
    let http11 = eff.http11.clone().filter(|h| h.0).map(|h| h.1);
    let mut fold = Fold::default();
    for h in eff.headers.iter().flat_map(|h| &h.0) {
        fold.add(h);
    }
    let mut vals = HashMap::new();
    let (name, servers) = match by_name.get(&host.to_ascii_lowercase()).and_then(|&i| ups.get_mut(i)) {
        Some(up) => {
            if t.auth.contains(':') {
                rep.refuse(loc_at, format!("`proxy_pass`: upstream `{}` may not have a port here", up.name));
            }
            if let Some(other) = up.used_by {
                let msg = format!("upstream `{}` is already served by the server block at {other}", up.name);
                rep.refuse(srv.at, format!("{msg}; one listener per pool"));
            }
            up.used_by = Some(srv.at);
            let (mf, ft, servers) = servers_toml(up, rep);
            put(&mut vals, key::MAX_FAILS, mf);
            put(&mut vals, key::FAIL_TIMEOUT, ft);
            put(&mut vals, key::HASH, up.hash_uri.then(|| string("$request_uri consistent")));
            match up.keepalive {
                Some(n) if http11.is_some() && fold.conn_empty => {
                    put(&mut vals, key::KEEPALIVE, Some(Value::Boolean(true)));
                    put(&mut vals, key::KEEPALIVE_CONNECTIONS, Some(n).filter(|&n| n != 32).map(int));
                    let timeout = up.ka_timeout.filter(|&v| v != DEFAULT_TIMEOUT).map(fmt_duration);
                    put(&mut vals, key::KEEPALIVE_TIMEOUT, timeout);
                    put(&mut vals, key::KEEPALIVE_REQUESTS, up.ka_requests.filter(|&v| v != 1000).map(int));
                }
                Some(n) => {
                    let needs = "`proxy_http_version 1.1` and `proxy_set_header Connection \"\"`";
                    let msg = format!(
                        "`keepalive {n}` has no effect in nginx without {needs}; translated as keepalive = false"
                    );
                    rep.note(up.at, format!("upstream `{}`: {msg}", up.name));
                }
                None if up.ka_timeout.or(up.ka_requests).is_some() => {
                    rep.note(up.at, format!("upstream `{}`: keepalive settings ignored without `keepalive N`", up.name))
                }
                None => {}
            }
            (up.name.to_string(), servers)
        }
        None => {
            let name = format!("p{}", listen.port());
            let why = format!("no upstream block of that name; pool `{name}` with that single server");
            rep.note(loc_at, format!("`proxy_pass` to {}: {why}", t.auth));
            (name, vec![string(&t.addr)])
        }
    };
    // nginx does not merge header lists: the innermost block that sets any drops all outer ones, a common surprise.
    let levels = [&http.headers, &srv.settings.headers, &root.settings.headers];
    let mut set = levels.iter().filter_map(|h| h.as_ref()).rev();
    if let Some(inner) = set.next() {
        for outer in set {
            rep.note(
                &inner.1,
                format!("pool `{name}`: `proxy_set_header` here replaces those at {}, as in nginx", outer.1),
            );
        }
    }
    if let (Some(at), false) = (&http11, vals.contains_key(key::KEEPALIVE)) {
        let why = "without upstream keepalive exec-allinone speaks HTTP/1.0 to upstreams";
        rep.note(at, format!("pool `{name}`: `proxy_http_version 1.1` has no effect: {why}"));
    }
    for ((_, key, default), v) in DURATIONS.into_iter().zip(eff.durations) {
        put(&mut vals, key, v.filter(|&v| v != default).map(fmt_duration));
    }
    let next = eff.next_upstream.filter(|f| f[..] != ["error", "timeout"]);
    put(&mut vals, key::NEXT_UPSTREAM, next.map(|f| Value::Array(f.iter().map(|s| string(s)).collect())));
    put(&mut vals, key::NEXT_UPSTREAM_TRIES, eff.tries.filter(|&n| n != 0).map(int));
    put(&mut vals, key::MAX_BODY_SIZE, eff.max_body.filter(|&n| n != 1 << 20).map(fmt_size));
    put(&mut vals, key::CLIENT_BODY_BUFFER_SIZE, eff.body_buffer.filter(|&n| n != 16 << 10).map(fmt_size));
    put(&mut vals, key::REQUEST_BUFFERING, eff.request_buffering.filter(|on| !on).map(Value::Boolean));
    // exec-allinone's default Host is the pool name, which is `$proxy_host` only when the pool is the upstream.
    let host = fold.host.or_else(|| (t.proxy_host != name).then(|| t.proxy_host.clone()));
    put(&mut vals, key::HOST, host.as_deref().map(string));
    put(&mut vals, key::URI, t.raw.then(|| string("raw")));
    put(&mut vals, key::X_FORWARDED_FOR, fold.xff.then_some(Value::Boolean(true)));
    put(&mut vals, key::X_REAL_IP, fold.xri.then_some(Value::Boolean(true)));
    let set: toml::Table = fold.set.iter().map(|(k, v)| (k.clone(), string(v))).collect();
    put(&mut vals, key::SET_HEADERS, (!set.is_empty()).then_some(Value::Table(set)));
    Some(Pool { name, listen, at: srv.at, servers, vals })
}

#[derive(Default)]
pub(super) struct Fold {
    pub(super) host: Option<String>,
    pub(super) xff: bool,
    pub(super) xri: bool,
    pub(super) conn_empty: bool,
    pub(super) set: Vec<(String, String)>,
}

impl Fold {
    pub(super) fn add(&mut self, h: &Header) {
        match h {
            Header::HostDefault => self.host = None,
            Header::HostClient => self.host = Some("$host".into()),
            Header::HostLiteral(v) => self.host = Some(v.clone()),
            Header::ForwardedFor => self.xff = true,
            Header::RealIp => self.xri = true,
            Header::ConnectionEmpty => self.conn_empty = true,
            Header::Set(k, v) => self.set.push((k.clone(), v.clone())),
        }
    }
}

/// Returns the pool-level max_fails and fail_timeout (when every server agrees) and the server entries.
pub(super) fn servers_toml(up: &Upstream, rep: &mut Report) -> (Option<Value>, Option<Value>, Vec<Value>) {
    // nginx counts failures only when there are several peers, so a lone server is never marked failed.
    let single = matches!(up.servers.as_slice(), [s] if s.ip);
    let mf = |s: &UpServer| if single { 0 } else { s.max_fails.unwrap_or(1) };
    let ft = |s: &UpServer| if single { NGINX_FAIL_TIMEOUT } else { s.fail_timeout.unwrap_or(NGINX_FAIL_TIMEOUT) };
    if let (true, Some(s)) = (single, up.servers.first()) {
        if s.max_fails != Some(0) {
            rep.note(&s.at, "max_fails/fail_timeout dropped: nginx never marks a lone upstream server failed");
        }
    } else if let Some(s) = up.servers.iter().find(|s| s.max_fails.is_none()) {
        rep.note(
            &s.at,
            format!("upstream `{}`: nginx default max_fails=1 kept (exec-allinone's default is 0)", up.name),
        );
    }
    let first = up.servers.first();
    let same_mf = first.filter(|f| up.servers.iter().all(|s| mf(s) == mf(f))).map(mf);
    let same_ft = first.filter(|f| up.servers.iter().all(|s| ft(s) == ft(f))).map(ft);
    let entries = up.servers.iter().map(|s| {
        let mut own = toml::Table::new();
        if s.weight != 1 {
            own.insert(key::WEIGHT.into(), int(s.weight));
        }
        if same_mf.is_none() && mf(s) != 0 {
            own.insert(key::MAX_FAILS.into(), int(mf(s)));
        }
        if same_ft.is_none() && ft(s) != NGINX_FAIL_TIMEOUT {
            own.insert(key::FAIL_TIMEOUT.into(), fmt_duration(ft(s)));
        }
        if s.down {
            own.insert(key::DOWN.into(), Value::Boolean(true));
        }
        if own.is_empty() {
            return string(&s.addr);
        }
        own.insert(key::ADDRESS.into(), string(&s.addr));
        Value::Table(own)
    });
    let entries = entries.collect();
    let pool_mf = same_mf.filter(|&v| v != 0).map(int);
    (pool_mf, same_ft.filter(|&v| v != NGINX_FAIL_TIMEOUT).map(fmt_duration), entries)
}
