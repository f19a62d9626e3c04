//! Owns `exec-allinone import-nginx`: translating the EXEC vendor's nginx load-balancer configuration into `[lb]`
//! TOML, refusing (every problem at once) whatever it cannot carry over faithfully.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;

// Configurations are a few kilobytes; the caps stop a mistaken path (a log, a device) or hostile input from being
// slurped or from exhausting the stack, since parsing recurses per block.
const MAX_FILE_BYTES: usize = 1 << 20;
const MAX_INCLUDE_DEPTH: usize = 16;
const MAX_FILES: usize = 256;
const MAX_BLOCK_DEPTH: usize = 64;

const SEC: u64 = 1000;
const DEFAULT_TIMEOUT: u64 = 60 * SEC;
const NGINX_FAIL_TIMEOUT: u64 = 10 * SEC;
#[rustfmt::skip]
const FLAGS: [&str; 11] = [
    "error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504", "http_403", "http_404",
    "http_429", "non_idempotent",
];
#[rustfmt::skip]
const KEYS: [&str; 21] = [
    "connect_timeout", "send_timeout", "read_timeout", "next_upstream", "next_upstream_tries", "next_upstream_timeout",
    "max_body_size", "client_body_buffer_size", "body_timeout", "header_timeout", "keepalive", "keepalive_connections", "keepalive_timeout",
    "keepalive_requests", "host", "uri", "x_forwarded_for", "x_real_ip", "set_headers", "max_fails", "fail_timeout",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub toml: String,
    /// Directives dropped because they do not change what clients or upstreams see, each with file:line.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub problems: Vec<String>,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ImportError {}

/// Translates the nginx configuration at `path`; relative includes resolve against its directory.
pub fn translate(path: &Path) -> Result<Translation, ImportError> {
    let name = path.display().to_string();
    let text = read_capped(path).map_err(|e| ImportError { problems: vec![format!("{name}: {e}")] })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    run(&text, base, &name, std::fs::canonicalize(path).ok())
}

/// Translates configuration text; `name` labels messages and relative includes resolve against `base_dir`.
pub fn translate_str(text: &str, base_dir: &Path, name: &str) -> Result<Translation, ImportError> {
    run(text, base_dir, name, None)
}

fn run(text: &str, base: &Path, name: &str, canon: Option<PathBuf>) -> Result<Translation, ImportError> {
    let mut ld =
        Loader { base: base.to_path_buf(), stack: canon.into_iter().collect(), files: 1, rep: Report::default() };
    let file: Rc<str> = Rc::from(name);
    let items = if text.len() > MAX_FILE_BYTES {
        ld.rep.refuse(&Loc { file: file.clone(), line: 1 }, "file is larger than 1 MiB");
        Vec::new()
    } else {
        ld.parse(text, &file, 0)
    };
    let mut rep = ld.rep;
    // Syntax or include failures leave the tree incomplete, and analysing it would only add misleading problems.
    let toml = if rep.problems.is_empty() { analyze(&items, &file, &mut rep) } else { String::new() };
    if rep.problems.is_empty() {
        Ok(Translation { toml, notes: sorted(rep.notes) })
    } else {
        Err(ImportError { problems: sorted(rep.problems) })
    }
}

fn read_capped(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // A FIFO or device would block or never end.
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() > MAX_FILE_BYTES {
        return Err("file is larger than 1 MiB".into());
    }
    String::from_utf8(buf).map_err(|_| "file is not valid UTF-8".into())
}

#[derive(Clone, Debug)]
struct Loc {
    file: Rc<str>,
    line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Messages keyed by (file in reading order, line) so they come out sorted whatever order they were found in.
#[derive(Default)]
struct Report {
    files: HashMap<Rc<str>, usize>,
    notes: Vec<(usize, usize, String)>,
    problems: Vec<(usize, usize, String)>,
    seen: HashSet<String>,
}

impl Report {
    fn note(&mut self, at: &Loc, msg: impl fmt::Display) {
        self.add(false, at, msg);
    }
    fn refuse(&mut self, at: &Loc, msg: impl fmt::Display) {
        self.add(true, at, msg);
    }
    // Settings inherited from `http` are evaluated once per pool; say each thing once.
    fn add(&mut self, problem: bool, at: &Loc, msg: impl fmt::Display) {
        let s = format!("{at}: {msg}");
        if self.seen.insert(format!("{problem}{s}")) {
            let rank = self.rank(&at.file);
            if problem { &mut self.problems } else { &mut self.notes }.push((rank, at.line, s));
        }
    }
    fn rank(&mut self, file: &Rc<str>) -> usize {
        let n = self.files.len();
        *self.files.entry(file.clone()).or_insert(n)
    }
}

fn sorted(mut v: Vec<(usize, usize, String)>) -> Vec<String> {
    v.sort_by_key(|e| (e.0, e.1));
    v.into_iter().map(|e| e.2).collect()
}

enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

struct Token {
    tok: Tok,
    line: usize,
}

fn is_break(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | ';' | '{')
}

/// Follows nginx's ngx_conf_read_token: `#` starts a comment only at a token start, `}` does not end a bare word,
/// and `${` stays inside a word.
fn tokenize(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut toks = Vec::new();
    let mut it = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = it.next() {
        let start = line;
        let tok = match c {
            '\n' => {
                line += 1;
                continue;
            }
            ' ' | '\t' | '\r' => continue,
            '#' => {
                while it.next_if(|&c| c != '\n').is_some() {}
                continue;
            }
            ';' => Tok::Semi,
            '{' => Tok::Open,
            '}' => Tok::Close,
            '"' | '\'' => {
                let mut w = String::new();
                loop {
                    match it.next() {
                        None => return Err((start, "unterminated quoted string".into())),
                        Some(q) if q == c => break,
                        Some('\\') => match it.next() {
                            Some(e) => escape(&mut w, e, &mut line),
                            None => return Err((start, "unterminated quoted string".into())),
                        },
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            w.push(ch);
                        }
                    }
                }
                if let Some(&n) = it.peek() {
                    if !is_break(n) {
                        return Err((line, format!("unexpected `{n}` after a quoted string")));
                    }
                }
                Tok::Word(w)
            }
            _ => {
                let mut w = String::new();
                let mut ch = c;
                loop {
                    match ch {
                        '\\' => match it.next() {
                            Some(e) => escape(&mut w, e, &mut line),
                            None => w.push('\\'),
                        },
                        '$' => {
                            w.push('$');
                            w.extend(it.next_if_eq(&'{'));
                        }
                        _ => w.push(ch),
                    }
                    match it.next_if(|&n| !is_break(n)) {
                        Some(n) => ch = n,
                        None => break,
                    }
                }
                Tok::Word(w)
            }
        };
        toks.push(Token { tok, line: start });
    }
    Ok(toks)
}

fn escape(w: &mut String, e: char, line: &mut usize) {
    match e {
        '"' | '\'' | '\\' => w.push(e),
        't' => w.push('\t'),
        'r' => w.push('\r'),
        'n' => w.push('\n'),
        _ => {
            *line += usize::from(e == '\n');
            w.push('\\');
            w.push(e);
        }
    }
}

struct Directive {
    name: String,
    args: Vec<String>,
    at: Loc,
    block: Option<Vec<Directive>>,
}

impl Directive {
    fn items(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or_default()
    }
    fn arg(&self) -> Option<&str> {
        match self.args.as_slice() {
            [a] => Some(a),
            _ => None,
        }
    }
    /// The directive as written, shortened for messages.
    fn show(&self) -> String {
        let s = std::iter::once(&self.name).chain(&self.args).cloned().collect::<Vec<_>>().join(" ");
        if s.chars().count() > 60 { s.chars().take(57).chain("...".chars()).collect() } else { s }
    }
}

/// Reads files into one directive tree, splicing includes in place as nginx does.
struct Loader {
    base: PathBuf,
    stack: Vec<PathBuf>,
    files: usize,
    rep: Report,
}

impl Loader {
    fn parse(&mut self, text: &str, file: &Rc<str>, depth: usize) -> Vec<Directive> {
        self.rep.rank(file);
        match tokenize(text) {
            Ok(toks) => self.block(&toks, &mut 0, file, depth, None).unwrap_or_default(),
            Err((line, msg)) => {
                self.rep.refuse(&Loc { file: file.clone(), line }, msg);
                Vec::new()
            }
        }
    }

    /// `opened` is the line of the `{` this block hangs off; `None` for a file's top level.
    fn block(
        &mut self,
        toks: &[Token],
        pos: &mut usize,
        file: &Rc<str>,
        depth: usize,
        opened: Option<usize>,
    ) -> Option<Vec<Directive>> {
        let at = |line| Loc { file: file.clone(), line };
        let (mut items, mut words, mut first) = (Vec::new(), Vec::<String>::new(), 0);
        while let Some(t) = toks.get(*pos) {
            *pos += 1;
            let fail = match &t.tok {
                Tok::Word(w) => {
                    if words.is_empty() {
                        first = t.line;
                    }
                    words.push(w.clone());
                    continue;
                }
                Tok::Semi if words.is_empty() => "unexpected `;`".to_string(),
                Tok::Semi => {
                    let name = words.remove(0);
                    let d = Directive { name, args: std::mem::take(&mut words), at: at(first), block: None };
                    if d.name == "include" {
                        self.include(&d, depth, &mut items);
                    } else {
                        items.push(d);
                    }
                    continue;
                }
                Tok::Open if words.is_empty() => "unexpected `{`".to_string(),
                Tok::Open if depth >= MAX_BLOCK_DEPTH => "blocks are nested too deeply".to_string(),
                Tok::Open => {
                    let name = words.remove(0);
                    let args = std::mem::take(&mut words);
                    let block = Some(self.block(toks, pos, file, depth + 1, Some(t.line))?);
                    items.push(Directive { name, args, at: at(first), block });
                    continue;
                }
                Tok::Close => match (words.first(), opened) {
                    (Some(w), _) => format!("unexpected `}}`: `{w}` on line {first} is missing its `;`"),
                    (None, None) => "unexpected `}` (no block is open)".to_string(),
                    (None, Some(_)) => return Some(items),
                },
            };
            self.rep.refuse(&at(t.line), fail);
            return None;
        }
        let last = toks.last().map_or(1, |t| t.line);
        if let Some(w) = words.first() {
            self.rep.refuse(&at(first), format!("unexpected end of file: `{w}` is missing its `;`"));
            return None;
        }
        if let Some(open) = opened {
            self.rep.refuse(&at(last), format!("unexpected end of file: the block opened on line {open} has no `}}`"));
            return None;
        }
        Some(items)
    }

    fn include(&mut self, d: &Directive, depth: usize, out: &mut Vec<Directive>) {
        let Some(pat) = d.arg() else {
            return self.rep.refuse(&d.at, "`include` takes exactly one path");
        };
        let full = self.base.join(pat);
        let (Some(dir), Some(fname)) = (full.parent(), full.file_name().and_then(|f| f.to_str())) else {
            return self.rep.refuse(&d.at, format!("`include {pat}`: not a file path"));
        };
        if fname == "mime.types" {
            return self.rep.note(&d.at, format!("`include {pat}` ignored (MIME types do not affect proxied traffic)"));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return self.rep.refuse(&d.at, format!("`include {pat}`: includes nest deeper than {MAX_INCLUDE_DEPTH}"));
        }
        let paths = if fname.contains(['*', '?', '[']) {
            if dir.to_string_lossy().contains(['*', '?', '[']) || fname.contains('[') {
                return self.rep.refuse(&d.at, format!("`include {pat}`: only `*` and `?` in the last component"));
            }
            match glob(dir, fname) {
                Ok(v) if v.is_empty() => {
                    self.rep.note(&d.at, format!("`include {pat}` matched no files"));
                    v
                }
                Ok(v) => v,
                Err(e) => return self.rep.refuse(&d.at, format!("`include {pat}`: {e}")),
            }
        } else {
            vec![full.clone()]
        };
        for p in paths {
            self.load(&p, d, depth, out);
        }
    }

    fn load(&mut self, path: &Path, from: &Directive, depth: usize, out: &mut Vec<Directive>) {
        let shown = path.display().to_string();
        let canon = match std::fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => return self.rep.refuse(&from.at, format!("include {shown}: {e}")),
        };
        if self.stack.contains(&canon) {
            return self.rep.refuse(&from.at, format!("include {shown}: include loop"));
        }
        self.files += 1;
        if self.files > MAX_FILES {
            return self.rep.refuse(&from.at, format!("include {shown}: more than {MAX_FILES} files"));
        }
        match read_capped(path) {
            Ok(text) => {
                self.stack.push(canon);
                let items = self.parse(&text, &Rc::from(shown), depth);
                out.extend(items);
                self.stack.pop();
            }
            Err(e) => self.rep.refuse(&from.at, format!("include {shown}: {e}")),
        }
    }
}

/// Sorted like nginx's glob; as with POSIX glob, a leading dot must be matched explicitly.
fn glob(dir: &Path, pat: &str) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| wildcard(pat, n) && (pat.starts_with('.') || !n.starts_with('.')))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Backtracks only to the last `*`, so a pattern like `*a*a*a*b` cannot blow up exponentially.
fn wildcard(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// nginx time syntax: units in decreasing order (`1h30m`, `500ms`); a bare trailing number means seconds.
fn parse_duration(s: &str) -> Option<u64> {
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

fn parse_size(s: &str) -> Option<u64> {
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

fn fmt_duration(ms: u64) -> String {
    if ms % SEC == 0 { q(&format!("{}s", ms / SEC)) } else { q(&format!("{ms}ms")) }
}

fn fmt_size(b: u64) -> String {
    let s = match b {
        0 => "0".to_string(),
        b if b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    };
    q(&s)
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

fn key(s: &str) -> String {
    let bare = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { s.to_string() } else { q(s) }
}

/// Upstream address as "host:port" (port 80 when absent, as nginx), and whether the host is an IP literal.
fn address(a: &str) -> Result<(String, bool), String> {
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

fn port(p: &str) -> Result<u16, String> {
    let n = p.bytes().all(|b| b.is_ascii_digit()).then(|| p.parse::<u16>().ok()).flatten();
    n.filter(|&n| n != 0).ok_or_else(|| format!("bad port `{p}`"))
}

fn listen_addr(a: &str) -> Result<SocketAddr, String> {
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
enum Ctx {
    Main,
    Events,
    Http,
    Server,
    Location,
    Upstream,
}

/// nginx itself rejects a block on a simple directive; the usual cause is a missing `;` before the next block.
fn shape(d: &Directive, want_block: bool, rep: &mut Report) -> bool {
    match (&d.block, want_block) {
        (Some(_), false) => rep.refuse(&d.at, format!("`{}` is not terminated by `;` (missing semicolon?)", d.name)),
        (None, true) => rep.refuse(&d.at, format!("`{}` has no opening `{{`", d.name)),
        _ => return true,
    }
    false
}

fn harmless(d: &Directive, ctx: Ctx) -> Option<&'static str> {
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
        (Http | Server | Location, "proxy_request_buffering") if arg == Some("on") => {
            "exec-allinone always buffers request bodies"
        }
        (Http | Server | Location, "proxy_intercept_errors") if arg == Some("off") => "that is the default",
        (Server, "server_name") => "exec-allinone serves one pool per listener whatever the Host header",
        _ => return None,
    })
}

fn ignore_or_refuse(d: &Directive, ctx: Ctx, rep: &mut Report) {
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
        "proxy_request_buffering" => rep.refuse(&d.at, format!("`{}`: exec-allinone always buffers", d.show())),
        _ if known || n.starts_with("proxy_") => {
            rep.refuse(&d.at, format!("`{}` is not supported by exec-allinone lb", d.show()))
        }
        _ => rep.refuse(&d.at, format!("`{n}` is unknown or not allowed here; refusing rather than guessing")),
    }
}

#[derive(Clone)]
enum Header {
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
struct Settings {
    durations: [Option<u64>; 6],
    next_upstream: Option<Vec<&'static str>>,
    tries: Option<u64>,
    max_body: Option<u64>,
    body_buffer: Option<u64>,
    http11: Option<(bool, Loc)>,
    headers: Option<(Vec<Header>, Loc)>,
}

/// nginx directive, our key, our default; `client_header_timeout` (last) is not valid in a location.
const DURATIONS: [(&str, &str, u64); 6] = [
    ("proxy_connect_timeout", "connect_timeout", DEFAULT_TIMEOUT),
    ("proxy_send_timeout", "send_timeout", DEFAULT_TIMEOUT),
    ("proxy_read_timeout", "read_timeout", DEFAULT_TIMEOUT),
    ("proxy_next_upstream_timeout", "next_upstream_timeout", 0),
    ("client_body_timeout", "body_timeout", DEFAULT_TIMEOUT),
    ("client_header_timeout", "header_timeout", DEFAULT_TIMEOUT),
];

impl Settings {
    fn over(&self, parent: &Settings) -> Settings {
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
            http11: self.http11.clone().or_else(|| parent.http11.clone()),
            // nginx replaces the inherited header list wholesale when a block sets any header.
            headers: self.headers.clone().or_else(|| parent.headers.clone()),
        }
    }
}

fn setting(d: &Directive, ctx: Ctx, s: &mut Settings, seen: &mut HashSet<String>, rep: &mut Report) -> bool {
    let n = d.name.as_str();
    let dur = DURATIONS.iter().position(|x| x.0 == n).filter(|&i| i != 5 || ctx != Ctx::Location);
    let other = [
        "proxy_next_upstream",
        "proxy_next_upstream_tries",
        "client_max_body_size",
        "client_body_buffer_size",
        "proxy_http_version",
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

fn header(d: &Directive, rep: &mut Report) -> Option<Header> {
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

struct UpServer {
    addr: String,
    ip: bool,
    weight: u64,
    max_fails: Option<u64>,
    fail_timeout: Option<u64>,
    down: bool,
    at: Loc,
}

struct Upstream<'a> {
    name: &'a str,
    at: &'a Loc,
    servers: Vec<UpServer>,
    keepalive: Option<u64>,
    ka_timeout: Option<u64>,
    ka_requests: Option<u64>,
    used_by: Option<&'a Loc>,
}

fn count(d: &Directive, min: u64, rep: &mut Report) -> Option<u64> {
    let v = d.arg().filter(|a| a.bytes().all(|b| b.is_ascii_digit())).and_then(|a| a.parse().ok());
    let v = v.filter(|&v| v >= min);
    if v.is_none() {
        rep.refuse(&d.at, format!("`{}`: expected a number of at least {min}", d.show()));
    }
    v
}

fn upstream<'a>(d: &'a Directive, rep: &mut Report) -> Option<Upstream<'a>> {
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
            "hash" | "ip_hash" | "least_conn" | "least_time" | "random" | "sticky" | "ntlm" | "queue" => {
                rep.refuse(&e.at, format!("`{}`: only round-robin balancing is supported", e.show()))
            }
            _ => ignore_or_refuse(e, Ctx::Upstream, rep),
        }
    }
    if !any {
        rep.refuse(&d.at, format!("upstream `{name}` has no servers"));
    }
    Some(up)
}

fn up_server(e: &Directive, rep: &mut Report) -> Option<UpServer> {
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

struct Target {
    auth: String,
    addr: String,
    /// nginx's `$proxy_host`, the default Host sent upstream: the URL's host, with its port unless 80.
    proxy_host: String,
    raw: bool,
}

fn target(e: &Directive) -> Result<Target, String> {
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

struct Srv<'a> {
    at: &'a Loc,
    // `None` addresses were already refused; they still count as listeners.
    listens: Vec<(Option<SocketAddr>, &'a Directive)>,
    settings: Settings,
    root: Option<Root<'a>>,
}

struct Root<'a> {
    settings: Settings,
    pass: Option<Target>,
    saw_pass: bool,
    at: &'a Loc,
}

fn server<'a>(d: &'a Directive, rep: &mut Report) -> Srv<'a> {
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

fn listen(e: &Directive, rep: &mut Report) -> Option<SocketAddr> {
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

fn location<'a>(d: &'a Directive, rep: &mut Report) -> Root<'a> {
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

struct Pool<'a> {
    name: String,
    listen: SocketAddr,
    at: &'a Loc,
    servers: Vec<String>,
    /// Rendered TOML values of the keys that differ from exec-allinone's defaults.
    vals: HashMap<&'static str, String>,
}

fn put(vals: &mut HashMap<&'static str, String>, key: &'static str, value: Option<String>) {
    debug_assert!(KEYS.contains(&key));
    if let Some(v) = value {
        vals.insert(key, v);
    }
}

fn analyze(items: &[Directive], file: &Rc<str>, rep: &mut Report) -> String {
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
    render(file, &pools, worker_connections)
}

fn pool<'a>(
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
            put(&mut vals, "max_fails", mf);
            put(&mut vals, "fail_timeout", ft);
            match up.keepalive {
                Some(n) if http11.is_some() && fold.conn_empty => {
                    put(&mut vals, "keepalive", Some("true".into()));
                    put(&mut vals, "keepalive_connections", Some(n).filter(|&n| n != 32).map(|n| n.to_string()));
                    let timeout = up.ka_timeout.filter(|&v| v != DEFAULT_TIMEOUT).map(fmt_duration);
                    put(&mut vals, "keepalive_timeout", timeout);
                    put(&mut vals, "keepalive_requests", up.ka_requests.filter(|&v| v != 1000).map(|n| n.to_string()));
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
            (name, vec![q(&t.addr)])
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
    if let (Some(at), false) = (&http11, vals.contains_key("keepalive")) {
        let why = "without upstream keepalive exec-allinone speaks HTTP/1.0 to upstreams";
        rep.note(at, format!("pool `{name}`: `proxy_http_version 1.1` has no effect: {why}"));
    }
    for ((_, key, default), v) in DURATIONS.into_iter().zip(eff.durations) {
        put(&mut vals, key, v.filter(|&v| v != default).map(fmt_duration));
    }
    let next = eff.next_upstream.filter(|f| f[..] != ["error", "timeout"]);
    put(
        &mut vals,
        "next_upstream",
        next.map(|f| format!("[{}]", f.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "))),
    );
    put(&mut vals, "next_upstream_tries", eff.tries.filter(|&n| n != 0).map(|n| n.to_string()));
    put(&mut vals, "max_body_size", eff.max_body.filter(|&n| n != 1 << 20).map(fmt_size));
    put(&mut vals, "client_body_buffer_size", eff.body_buffer.filter(|&n| n != 16 << 10).map(fmt_size));
    // exec-allinone's default Host is the pool name, which is `$proxy_host` only when the pool is the upstream.
    let host = fold.host.or_else(|| (t.proxy_host != name).then(|| t.proxy_host.clone()));
    put(&mut vals, "host", host.as_deref().map(q));
    put(&mut vals, "uri", t.raw.then(|| q("raw")));
    put(&mut vals, "x_forwarded_for", fold.xff.then(|| "true".into()));
    put(&mut vals, "x_real_ip", fold.xri.then(|| "true".into()));
    let set: Vec<String> = fold.set.iter().map(|(k, v)| format!("{} = {}", q(k), q(v))).collect();
    put(&mut vals, "set_headers", (!set.is_empty()).then(|| format!("{{ {} }}", set.join(", "))));
    Some(Pool { name, listen, at: srv.at, servers, vals })
}

#[derive(Default)]
struct Fold {
    host: Option<String>,
    xff: bool,
    xri: bool,
    conn_empty: bool,
    set: Vec<(String, String)>,
}

impl Fold {
    fn add(&mut self, h: &Header) {
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
fn servers_toml(up: &Upstream, rep: &mut Report) -> (Option<String>, Option<String>, Vec<String>) {
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
        let mut parts = Vec::new();
        if s.weight != 1 {
            parts.push(format!("weight = {}", s.weight));
        }
        if same_mf.is_none() && mf(s) != 0 {
            parts.push(format!("max_fails = {}", mf(s)));
        }
        if same_ft.is_none() && ft(s) != NGINX_FAIL_TIMEOUT {
            parts.push(format!("fail_timeout = {}", fmt_duration(ft(s))));
        }
        if s.down {
            parts.push("down = true".into());
        }
        if parts.is_empty() { q(&s.addr) } else { format!("{{ address = {}, {} }}", q(&s.addr), parts.join(", ")) }
    });
    let entries = entries.collect();
    let pool_mf = same_mf.filter(|&v| v != 0).map(|v| v.to_string());
    (pool_mf, same_ft.filter(|&v| v != NGINX_FAIL_TIMEOUT).map(fmt_duration), entries)
}

fn render(file: &str, pools: &[Pool], worker_connections: Option<usize>) -> String {
    let mut out = format!("# Translated by exec-allinone import-nginx from {}\n", file.escape_debug());
    // A value several pools share goes to `[lb]` once; a lone pool keeps its own so adding pools later is safe.
    let shared: Vec<Option<&String>> = KEYS
        .iter()
        .map(|k| {
            let v = pools.get(1).and(pools.first())?.vals.get(k)?;
            pools.iter().all(|p| p.vals.get(k) == Some(v)).then_some(v)
        })
        .collect();
    if shared.iter().any(Option::is_some) || worker_connections.is_some() {
        out.push_str("\n[lb]\n");
        if let Some(n) = worker_connections {
            out.push_str(&format!("worker_connections = {n}\n"));
        }
        for (k, v) in KEYS.iter().zip(&shared) {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    for p in pools {
        out.push_str(&format!("\n[lb.pools.{}]\nlisten = {}\n", key(&p.name), q(&p.listen.to_string())));
        if p.servers.iter().all(|s| s.starts_with('"')) {
            out.push_str(&format!("servers = [{}]\n", p.servers.join(", ")));
        } else {
            out.push_str(&format!("servers = [\n    {},\n]\n", p.servers.join(",\n    ")));
        }
        for (k, s) in KEYS.iter().zip(&shared) {
            if let (Some(v), None) = (p.vals.get(k), s) {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "worker_processes 1;
events { worker_connections 1000; }
http {
  include /etc/nginx/mime.types;
  upstream excp { server 10.0.0.11:3650 max_fails=0; server 10.0.0.12:3650 max_fails=0; }
  upstream exrp { server 10.0.0.21:8080 max_fails=0; server 10.0.0.22:8080 max_fails=0; server 10.0.0.23:8080 max_fails=0; }
  server { listen 3650; location / { proxy_pass http://excp/; proxy_next_upstream_tries 3; } }
  server { listen 8080; location / { proxy_pass http://exrp/; proxy_next_upstream_tries 3; } }
  include conf.d/*.conf;
}
";

    fn nowhere() -> PathBuf {
        std::env::temp_dir().join("import-nginx-test-no-such-dir")
    }

    fn ok(text: &str) -> Translation {
        let t = translate_str(text, &nowhere(), "nginx.conf").unwrap_or_else(|e| panic!("refused:\n{e}"));
        if let Err(e) = t.toml.parse::<toml::Table>() {
            panic!("invalid TOML {e}:\n{}", t.toml);
        }
        t
    }

    fn refused(text: &str) -> Vec<String> {
        match translate_str(text, &nowhere(), "nginx.conf") {
            Ok(t) => panic!("translated:\n{}", t.toml),
            Err(e) => e.problems,
        }
    }

    /// One upstream `u` of two servers and one server block; `up` and `loc` go into the upstream and `location /`.
    fn conf(up: &str, loc: &str) -> String {
        format!("http {{\n upstream u {{\n{up}\n }}\n server {{\n listen 80;\n location / {{\n{loc}\n }}\n }}\n}}\n")
    }

    const TWO: &str = "server 10.0.0.1:80 max_fails=0; server 10.0.0.2:80 max_fails=0;";

    fn body(t: &Translation) -> String {
        t.toml.lines().skip(2).collect::<Vec<_>>().join("\n")
    }

    fn has(list: &[String], needle: &str) -> bool {
        list.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn body_buffer_size_is_carried_over() {
        let t = ok(&conf(TWO, "proxy_pass http://u/; client_body_buffer_size 128k;"));
        assert!(t.toml.contains("client_body_buffer_size = \"128KiB\""), "{}", t.toml);
        let t = ok(&conf(TWO, "proxy_pass http://u/; client_body_buffer_size 16k;"));
        assert!(!t.toml.contains("client_body_buffer_size"), "the default is not written: {}", t.toml);
    }

    #[test]
    fn vendor_sample() {
        let t = ok(SAMPLE);
        let want = r#"# Translated by exec-allinone import-nginx from nginx.conf

[lb]
worker_connections = 1000
next_upstream_tries = 3

[lb.pools.excp]
listen = "0.0.0.0:3650"
servers = ["10.0.0.11:3650", "10.0.0.12:3650"]

[lb.pools.exrp]
listen = "0.0.0.0:8080"
servers = ["10.0.0.21:8080", "10.0.0.22:8080", "10.0.0.23:8080"]
"#;
        assert_eq!(t.toml, want);
        assert!(has(&t.notes, "nginx.conf:1: `worker_processes` ignored"), "{:?}", t.notes);
        assert!(has(&t.notes, "nginx.conf:4: `include /etc/nginx/mime.types` ignored"));
        assert!(has(&t.notes, "nginx.conf:9: `include conf.d/*.conf` matched no files"));
        assert_eq!(t.notes.len(), 3, "{:?}", t.notes);
        let bad = refused("events { worker_connections many; }\nhttp { }\n");
        assert!(has(&bad, "`worker_connections` takes a number"), "{bad:?}");
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("import-nginx-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn includes_and_globs() {
        let d = TempDir::new("glob");
        let main = d.write("nginx.conf", "events {}\nhttp {\n include up/*.conf;\n include servers.conf;\n}\n");
        // Sorted order, hidden files and other extensions skipped; nested includes resolve against the main dir.
        d.write("up/b.conf", "upstream b { server 10.0.0.2 max_fails=0; }\n");
        d.write("up/a.conf", "upstream a { server 10.0.0.1 max_fails=0; }\ninclude more/x.inc;\n");
        d.write("up/.hidden.conf", "garbage {");
        d.write("up/c.txt", "garbage {");
        d.write("more/x.inc", "# nothing but a comment\n");
        d.write("servers.conf", "server { listen 81; location / { proxy_pass http://b; } }\nserver { listen 80; location / { proxy_pass http://a; } }\n");
        let t = translate(&main).unwrap_or_else(|e| panic!("{e}"));
        let b = t.toml.find("[lb.pools.b]").unwrap();
        let a = t.toml.find("[lb.pools.a]").unwrap();
        assert!(b < a, "pools follow server block order:\n{}", t.toml);
        assert!(t.toml.contains("servers = [\"10.0.0.1:80\"]"));
        assert!(t.toml.contains("[lb]\nuri = \"raw\"\n"), "{}", t.toml);

        d.write("loop.conf", "include loop.conf;\n");
        let looped =
            d.write("main2.conf", "http {\n include loop.conf;\n include missing.conf;\n include nodir/*.conf;\n}\n");
        let e = translate(&looped).unwrap_err();
        assert!(has(&e.problems, "loop.conf:1: include") && has(&e.problems, "include loop"), "{e}");
        assert!(has(&e.problems, "main2.conf:3: include") && has(&e.problems, "missing.conf"), "{e}");
        assert_eq!(e.problems.len(), 2, "{e}");

        let deep = d.write("self.conf", "include self.conf;\n");
        assert!(has(&translate(&deep).unwrap_err().problems, "include loop"));
        d.write("big.conf", &"#".repeat(MAX_FILE_BYTES + 1));
        let big = d.write("main3.conf", "include big.conf;\n");
        assert!(has(&translate(&big).unwrap_err().problems, "larger than 1 MiB"));
    }

    #[test]
    fn comments_and_quotes() {
        let text = "# leading comment\nhttp { # trailing\n upstream \"u\" { server '10.0.0.1:80' max_fails=0; } # x { y\n server {\n  listen \"80\";\n  location \"/\" {\n   proxy_pass http://u/;#no space\n   proxy_set_header 'X-Team' \"a \\\"b\\\" # c\\\\d\";\n   proxy_set_header X-Tab \"1\\t2\";\n  }\n }\n}\n";
        let t = ok(text);
        let table: toml::Table = t.toml.parse().unwrap();
        let set = &table["lb"]["pools"]["u"]["set_headers"];
        assert_eq!(set["X-Team"].as_str(), Some("a \"b\" # c\\d"));
        assert_eq!(set["X-Tab"].as_str(), Some("1\t2"));
        assert_eq!(tokenize("a${b}c;").map(|t| t.len()).ok(), Some(2));
        assert!(matches!(&tokenize("a}b;").unwrap()[0].tok, Tok::Word(w) if w == "a}b"));
    }

    #[test]
    fn every_refusal_at_once() {
        let text = "stream { }\nhttp {\n map $a $b { }\n upstream u { least_conn; server 10.0.0.1 backup; server 10.0.0.2 slow_start=3s; zone z 64k; }\n server {\n  listen 80 ssl;\n  rewrite ^ /x;\n  location /health { return 200; }\n  location ~ \\.php$ { }\n  location / {\n   proxy_pass http://u/api/;\n   proxy_cache c;\n   proxy_request_buffering off;\n   proxy_set_header X-User $remote_user;\n   frobnicate on;\n   proxy_read_timeout 0;\n  }\n }\n server { listen 81; location / { proxy_pass https://10.0.0.9/; } }\n}\n";
        let p = refused(text);
        let want = [
            "nginx.conf:1: `stream` is not supported",
            "nginx.conf:3: `map $a $b` is not supported",
            "nginx.conf:4: `least_conn`: only round-robin",
            "nginx.conf:4: `server 10.0.0.1`: parameter `backup` is not supported",
            "nginx.conf:4: `server 10.0.0.2`: parameter `slow_start=3s` is not supported",
            "nginx.conf:4: `zone z 64k` is not supported",
            "nginx.conf:6: `listen` parameter `ssl` is not supported",
            "nginx.conf:7: `rewrite ^ /x` is not supported",
            "nginx.conf:8: `location /health`: only `location /`",
            "nginx.conf:9: `location ~ \\.php$`: only `location /`",
            "nginx.conf:11: `proxy_pass http://u/api/`: the URI `/api/`",
            "nginx.conf:12: `proxy_cache c` is not supported",
            "nginx.conf:13: `proxy_request_buffering off`: exec-allinone always buffers",
            "nginx.conf:14: `proxy_set_header X-User $remote_user` uses variables",
            "nginx.conf:15: `frobnicate` is unknown",
            "nginx.conf:16: `proxy_read_timeout 0`: a zero timeout is not supported",
            "nginx.conf:19: `proxy_pass https://10.0.0.9/`: https upstreams are not supported",
        ];
        for w in want {
            assert!(has(&p, w), "missing {w:?} in:\n{}", p.join("\n"));
        }
        assert_eq!(p.len(), want.len(), "{}", p.join("\n"));
        let shown = ImportError { problems: p.clone() }.to_string();
        assert_eq!(shown.lines().count(), p.len());
    }

    #[test]
    fn max_fails_rule() {
        // No max_fails anywhere: nginx's 1 goes on the pool, with a note.
        let t = ok(&conf("server 10.0.0.1; server 10.0.0.2:81;", "proxy_pass http://u/;"));
        assert!(body(&t).contains("servers = [\"10.0.0.1:80\", \"10.0.0.2:81\"]"));
        assert!(t.toml.ends_with("\"10.0.0.2:81\"]\nmax_fails = 1\n"), "{}", t.toml);
        assert!(has(&t.notes, "nginx default max_fails=1 kept"));
        // Mixed: per server; max_fails=0 stays a plain string.
        let t = ok(&conf(
            "server 10.0.0.1 max_fails=0; server 10.0.0.2; server 10.0.0.3 max_fails=3 fail_timeout=30s;",
            "proxy_pass http://u/;",
        ));
        let want = "servers = [\n    \"10.0.0.1:80\",\n    { address = \"10.0.0.2:80\", max_fails = 1 },\n    { address = \"10.0.0.3:80\", max_fails = 3, fail_timeout = \"30s\" },\n]\n";
        assert!(t.toml.contains(want), "{}", t.toml);
        // Same fail_timeout everywhere goes on the pool.
        let t = ok(&conf(
            "server 10.0.0.1 max_fails=2 fail_timeout=1m; server 10.0.0.2 max_fails=2 fail_timeout=60;",
            "proxy_pass http://u/;",
        ));
        assert!(t.toml.contains("max_fails = 2\nfail_timeout = \"60s\"\n"), "{}", t.toml);
        // A lone server is never marked failed by nginx.
        let t = ok(&conf("server 10.0.0.1;", "proxy_pass http://u/;"));
        assert!(!t.toml.contains("max_fails"), "{}", t.toml);
        assert!(has(&t.notes, "lone upstream server"));
    }

    #[test]
    fn weights_and_down() {
        let t = ok(&conf(
            "server 10.0.0.1 weight=5 max_fails=0; server [::1]:8080 max_fails=0 down; server app.example max_fails=0;",
            "proxy_pass http://u/;",
        ));
        let want = "servers = [\n    { address = \"10.0.0.1:80\", weight = 5 },\n    { address = \"[::1]:8080\", down = true },\n    \"app.example:80\",\n]\n";
        assert!(t.toml.contains(want), "{}", t.toml);
        let p = refused(&conf(
            "server 10.0.0.1 weight=0; server unix:/x.sock; server 10.0.0.3 max_conns=4;",
            "proxy_pass http://u/;",
        ));
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn keepalive() {
        let up = format!("{TWO} keepalive 16; keepalive_timeout 2m; keepalive_requests 1000;");
        let loc = "proxy_pass http://u/; proxy_http_version 1.1; proxy_set_header Connection \"\";";
        let t = ok(&conf(&up, loc));
        assert_eq!(
            body(&t),
            "[lb.pools.u]\nlisten = \"0.0.0.0:80\"\nservers = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\nkeepalive = true\nkeepalive_connections = 16\nkeepalive_timeout = \"120s\""
        );
        // Without clearing Connection nginx sends `Connection: close`, so nothing is reused.
        let t = ok(&conf(&up, "proxy_pass http://u/; proxy_http_version 1.1;"));
        assert!(!t.toml.contains("keepalive"), "{}", t.toml);
        assert!(has(&t.notes, "nginx.conf:2: upstream `u`: `keepalive 16` has no effect"));
        assert!(has(&t.notes, "pool `u`: `proxy_http_version 1.1` has no effect"));
    }

    #[test]
    fn uri_modes() {
        assert!(!ok(&conf(TWO, "proxy_pass http://u/;")).toml.contains("uri"));
        assert!(ok(&conf(TWO, "proxy_pass http://u;")).toml.contains("uri = \"raw\""));
        assert!(has(&refused(&conf(TWO, "proxy_pass http://u:80/;")), "may not have a port"));
        // The Host nginx sends by default is the proxy_pass host, which is the pool name only for `http://u/`.
        assert!(body(&ok(&conf(TWO, "proxy_pass http://U/;"))).starts_with("[lb.pools.u]\n"));
        assert!(ok(&conf(TWO, "proxy_pass http://U/;")).toml.ends_with("\nhost = \"U\"\n"));
        let t = ok("http {\n server { listen 80; location / { proxy_pass http://10.0.0.1:80/; } }\n}\n");
        assert!(body(&t).ends_with("servers = [\"10.0.0.1:80\"]\nhost = \"10.0.0.1\""), "{}", t.toml);
        let p = refused(
            "http {\n upstream excp.local { server 10.0.0.1; }\n server { listen 80; location / { proxy_pass http://excp.local/; } }\n}\n",
        );
        assert_eq!(p, ["nginx.conf:2: upstream name `excp.local`: pool names are letters, digits, '-' and '_'"]);
    }

    #[test]
    fn syntax_errors() {
        let cases = [
            ("http {\n server {\n listen 80;\n", "nginx.conf:3: unexpected end of file: the block opened on line 2"),
            ("http {\n}\n}\n", "nginx.conf:3: unexpected `}` (no block"),
            (
                "http {\n server {\n  listen 80\n  location / { proxy_pass http://u/; }\n }\n}\n",
                "nginx.conf:3: `listen` is not terminated by `;`",
            ),
            (
                "http {\n server {\n  listen 80\n }\n}\n",
                "nginx.conf:4: unexpected `}`: `listen` on line 3 is missing its `;`",
            ),
            ("events {}\nworker_processes 1", "nginx.conf:2: unexpected end of file: `worker_processes` is missing"),
            ("http {\n proxy_set_header X \"open\n\n", "nginx.conf:2: unterminated quoted string"),
            ("http ;", "nginx.conf:1: `http` has no opening `{`"),
            (";", "nginx.conf:1: unexpected `;`"),
            ("\n{", "nginx.conf:2: unexpected `{`"),
            ("x \"a\"b;", "nginx.conf:1: unexpected `b` after a quoted string"),
        ];
        for (text, want) in cases {
            let p = refused(text);
            assert!(has(&p, want), "{text:?}: want {want:?}, got {p:?}");
        }
        let deep = "http {".repeat(100_000);
        assert!(has(&refused(&deep), "nested too deeply"));
    }

    #[test]
    fn values_and_inheritance() {
        let text = "http {\n proxy_read_timeout 1m30s;\n proxy_connect_timeout 500ms;\n client_max_body_size 2g;\n proxy_next_upstream error timeout http_502 error;\n upstream a { server 10.0.0.1 max_fails=0; server 10.0.0.2 max_fails=0; }\n upstream b { server 10.0.0.3 max_fails=0; server 10.0.0.4 max_fails=0; }\n server { listen 127.0.0.1:80; client_max_body_size 10m; location / { proxy_pass http://a/; proxy_read_timeout 60; } }\n server { listen [::]:81; location / { proxy_pass http://b/; client_body_timeout 2h; } }\n server { listen *:82; location / { proxy_pass http://10.0.0.9:8080/; client_max_body_size 1500; } }\n}\n";
        let t = ok(text);
        let want = r#"[lb]
connect_timeout = "500ms"
next_upstream = ["error", "timeout", "http_502"]

[lb.pools.a]
listen = "127.0.0.1:80"
servers = ["10.0.0.1:80", "10.0.0.2:80"]
max_body_size = "10MiB"

[lb.pools.b]
listen = "[::]:81"
servers = ["10.0.0.3:80", "10.0.0.4:80"]
read_timeout = "90s"
max_body_size = "2GiB"
body_timeout = "7200s"

[lb.pools.p82]
listen = "0.0.0.0:82"
servers = ["10.0.0.9:8080"]
read_timeout = "90s"
max_body_size = "1500"
host = "10.0.0.9:8080""#;
        assert_eq!(body(&t), want);
        assert!(has(&t.notes, "nginx.conf:10: `proxy_pass` to 10.0.0.9:8080: no upstream block"));
        assert!(has(
            &refused(&conf(TWO, "proxy_pass http://u/; client_max_body_size 0;")),
            "nginx.conf:8: `client_max_body_size 0`"
        ));
        assert_eq!(parse_duration("1h30m5s"), Some(5_405_000));
        assert_eq!(parse_duration("1s1m"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(fmt_size(1536), "\"1536\"");
        assert_eq!(fmt_size(3 << 10), "\"3KiB\"");
    }

    #[test]
    fn headers() {
        let loc = "proxy_pass http://u/; proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Env \"prod\";";
        let t = ok(&conf(TWO, loc));
        let want =
            "host = \"$host\"\nx_forwarded_for = true\nx_real_ip = true\nset_headers = { \"X-Env\" = \"prod\" }\n";
        assert!(t.toml.ends_with(want), "{}", t.toml);
        // A block that sets any header replaces everything inherited, as in nginx.
        let text = "http {\n proxy_set_header X-Real-IP $remote_addr;\n upstream u { server 10.0.0.1; }\n server { listen 80; proxy_set_header Host backend.local; location / { proxy_pass http://u/; } }\n}\n";
        let t = ok(text);
        assert!(t.toml.ends_with("servers = [\"10.0.0.1:80\"]\nhost = \"backend.local\"\n"), "{}", t.toml);
        assert!(has(&t.notes, "nginx.conf:4: pool `u`: `proxy_set_header` here replaces those at nginx.conf:2"));
        let p = refused(&conf(
            TWO,
            "proxy_pass http://u/; proxy_set_header Host $host:$server_port; proxy_set_header X-A \"\"; proxy_set_header Connection upgrade; proxy_set_header X-A b;",
        ));
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn listeners_and_pools() {
        let two = "http {\n upstream u { server 10.0.0.1; }\n server { listen 80; listen [::]:80; location / { proxy_pass http://u/; } }\n}\n";
        assert!(has(
            &refused(two),
            "nginx.conf:3: server block has 2 `listen` directives (lines 3, 3); one listener per pool: keep only `listen 80;`"
        ));
        let same = "http {\n upstream u { server 10.0.0.1; }\n server { listen 80; location / { proxy_pass http://u/; } }\n server { listen 81; location / { proxy_pass http://u/; } }\n}\n";
        assert!(has(
            &refused(same),
            "nginx.conf:4: upstream `u` is already served by the server block at nginx.conf:3"
        ));
        let clash = "http {\n server { listen 80; location / { proxy_pass http://10.0.0.1/; } }\n server { listen 127.0.0.1:80; location / { proxy_pass http://10.0.0.2/; } }\n}\n";
        assert!(has(&refused(clash), "nginx.conf:3: pools `p80` and `p80` both listen on 127.0.0.1:80"));
        let bad = "http {\n server { listen localhost:80; location / { proxy_pass http://10.0.0.1/; } }\n server { location / { proxy_pass http://10.0.0.1/; } }\n server { listen 82; location / { } }\n server { listen 83; }\n}\n";
        assert_eq!(refused(bad).len(), 4);
        let t = ok(
            "http {\n server { listen 80 default_server backlog=511; server_name x; location / { proxy_pass http://10.0.0.1/; } }\n}\n",
        );
        assert!(has(&t.notes, "`default_server` ignored") && has(&t.notes, "`server_name` ignored"));
        assert!(has(&refused("events {}\n"), "no `http` block"));
    }

    #[test]
    fn mutated_input_never_panics() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let spice = b"{};\"'\\#$ \n*:[]=/0";
        for round in 0..400 {
            let mut b = SAMPLE.as_bytes().to_vec();
            for _ in 0..1 + rnd(6) {
                let i = rnd(b.len());
                match rnd(4) {
                    0 => {
                        let end = (i + rnd(20)).min(b.len());
                        b.drain(i..end);
                    }
                    1 => b.insert(i, spice[rnd(spice.len())]),
                    2 => b.insert(i, rnd(256) as u8),
                    _ => {
                        let end = (i + rnd(40)).min(b.len());
                        let chunk = b[i..end].to_vec();
                        let at = rnd(b.len());
                        b.splice(at..at, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&b);
            if let Err(e) = translate_str(&text, &nowhere(), "fuzz.conf") {
                assert!(!e.problems.is_empty(), "round {round}");
            }
        }
    }
}
