//! lb parity: real nginx 1.22.1 and `exec-allinone --role lb` side by side in front of the same
//! scriptable backends, asserting identical client-visible results (research/lb.md §3, §6, §7).
//!
//! Each scenario is data: a pool of named backends with behaviours, the directives that differ
//! from the vendor's shape (as an nginx directive and the equivalent TOML key), and a sequence of
//! raw requests, each with what nginx is expected to do (status and the peers it tried, read from
//! its access log's `$upstream_addr`). The harness
//! 1. starts nginx, plays the sequence, and checks nginx against the expectations (this keeps the
//!    harness and lb.md honest);
//! 2. starts exec-allinone with the equivalent TOML on the same backends, plays the sequence again,
//!    and compares every client-visible result with nginx's: interim and final status, body and
//!    passed-through headers of backend answers, framing and how the body ended, the time taken
//!    (so timeouts are the same timeouts), what each backend received (which backend, in which
//!    order, request line, headers, body), whether an abandoned request's upstream connection was
//!    closed, and the access log's peers tried and status (LB-31).
//!
//! Proxy-generated error pages are compared by status (and Content-Type) only: their bodies name
//! the product. Header names are compared case-insensitively and repeated names grouped (see
//! `grouped`): hyper writes names lowercase and keeps order only within one name. Where
//! exec-allinone knowingly deviates, the step carries a `Deviation` and our documented behaviour
//! is asserted instead.
//!
//! `LB_PARITY_SHOW=1` (with `--nocapture`) prints every response and nginx's errors. Without
//! nginx every scenario fails, naming the package: none passes without having run it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::backend::{Backends, Behaviour, Seen, find};
use crate::support::nginx::{self, AccessLine, Nginx};
use crate::support::{Proc, TempDir};

// ---------------------------------------------------------------------------------------------
// Scenarios as data

/// A pool, its backends, the settings that differ from the vendor's shape, and the requests.
struct Scenario {
    name: &'static str,
    pool: &'static str,
    peers: Vec<(&'static str, Behaviour, u32)>,
    tries: u32,
    /// Extra directives for nginx's `location /` (each a complete directive with `;`).
    nginx: Vec<&'static str>,
    /// Extra directives for nginx's `server {}` (those not allowed in a location).
    nginx_server: Vec<&'static str>,
    /// The equivalent keys for `[lb.pools.<pool>]`.
    toml: Vec<&'static str>,
    steps: Vec<Step>,
}

/// One request and what should come of it.
struct Step {
    label: String,
    head: Vec<u8>,
    body: Vec<u8>,
    /// Send the head, wait for `100 Continue`, then the body.
    wait_100: bool,
    /// Read on after the response to see whether anything else arrives.
    linger: bool,
    /// Close the connection this long after sending, without reading a response.
    abandon: Option<Duration>,
    timeout: Duration,
    /// nginx's status; `tried` are the peers in `$upstream_addr`, in order.
    status: u16,
    tried: Vec<String>,
    check: Option<Check>,
    ours: Option<Deviation>,
}

/// An extra assertion on a step's capture (it panics on failure).
type Check = Box<dyn Fn(&Capture)>;

/// A documented difference: what exec-allinone does instead, and why.
struct Deviation {
    status: u16,
    /// Backends that receive the request (refused peers never show here).
    seen: Vec<String>,
    note: &'static str,
}

impl Scenario {
    fn new(name: &'static str, pool: &'static str, peers: Vec<(&'static str, Behaviour)>) -> Scenario {
        let peers = peers.into_iter().map(|(n, b)| (n, b, 1)).collect();
        Scenario::weighted(name, pool, peers)
    }

    /// The excp shape: peers A and B.
    fn excp(name: &'static str, a: Behaviour, b: Behaviour) -> Scenario {
        Scenario::new(name, "excp", vec![("A", a), ("B", b)])
    }

    /// The exrp shape: peers C, D and E.
    fn exrp(name: &'static str, c: Behaviour, d: Behaviour, e: Behaviour) -> Scenario {
        Scenario::new(name, "exrp", vec![("C", c), ("D", d), ("E", e)])
    }

    fn weighted(name: &'static str, pool: &'static str, peers: Vec<(&'static str, Behaviour, u32)>) -> Scenario {
        Scenario {
            name,
            pool,
            peers,
            tries: 3,
            nginx: Vec::new(),
            nginx_server: Vec::new(),
            toml: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// One setting, as the nginx directive and the TOML key.
    fn set(mut self, nginx: &'static str, toml: &'static str) -> Scenario {
        self.nginx.push(nginx);
        self.toml.push(toml);
        self
    }

    /// Like `set`, for a directive that nginx takes only at the `server` level.
    fn set_server(mut self, nginx: &'static str, toml: &'static str) -> Scenario {
        self.nginx_server.push(nginx);
        self.toml.push(toml);
        self
    }

    fn tries(mut self, tries: u32) -> Scenario {
        self.tries = tries;
        self
    }

    fn step(mut self, step: Step) -> Scenario {
        self.steps.push(step);
        self
    }

    /// One request made by `make` per entry of `vector`, each expecting `status` and that
    /// entry's tried peers (separated by spaces).
    fn each(mut self, make: impl Fn() -> Step, status: u16, vector: &[&str]) -> Scenario {
        for tried in vector {
            self.steps.push(make().expect(status, tried));
        }
        self
    }

    fn nginx_http(&self, backends: &Backends) -> String {
        let servers: String = self
            .peers
            .iter()
            .map(|(name, _, weight)| {
                let w = if *weight == 1 { String::new() } else { format!(" weight={weight}") };
                format!("server {}{w} max_fails=0; ", backends.addr(name))
            })
            .collect();
        let extra = self.nginx.join(" ");
        let server = self.nginx_server.join(" ");
        format!(
            "upstream {pool} {{ {servers}}}\n\
             server {{ listen {{listen}}; {server} location / {{ proxy_pass http://{pool}/; proxy_next_upstream_tries {tries}; {extra} }} }}",
            pool = self.pool,
            tries = self.tries,
        )
    }

    fn toml(&self, backends: &Backends) -> String {
        let servers: Vec<String> = self
            .peers
            .iter()
            .map(|(name, _, weight)| {
                if *weight == 1 {
                    format!("\"{}\"", backends.addr(name))
                } else {
                    format!("{{ address = \"{}\", weight = {weight} }}", backends.addr(name))
                }
            })
            .collect();
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[lb.pools.{}]\nlisten = \"127.0.0.1:0\"\nservers = [{}]\nnext_upstream_tries = {}\n{}\n",
            self.pool,
            servers.join(", "),
            self.tries,
            self.toml.join("\n")
        )
    }

    /// Runs the scenario against nginx, checks nginx, then compares exec-allinone with it.
    fn run(self) {
        let binary = nginx::binary();
        let mut backends = Backends::new();
        for (name, behaviour, _) in &self.peers {
            backends.add(name, behaviour.clone());
        }
        let nginx = Nginx::start(self.name, &binary, &self.nginx_http(&backends));
        let reference = self.play(nginx.addr, &backends, &|| nginx.access_log());
        if std::env::var_os("LB_PARITY_SHOW").is_some() {
            for (step, got) in self.steps.iter().zip(&reference) {
                eprintln!("{} [{}] nginx: {}\n    seen: {:?}", self.name, step.label, got.response.summary(), got.seen);
            }
            let log = nginx.error_log();
            for line in log.lines().filter(|l| l.contains("[error]") || l.contains("[warn]")) {
                eprintln!("{} error.log: {line}", self.name);
            }
        }
        let mut problems = Vec::new();
        for (step, got) in self.steps.iter().zip(&reference) {
            problems.extend(self.check_nginx(step, got, &backends));
        }
        drop(nginx);
        assert!(
            problems.is_empty(),
            "scenario {}: nginx does not behave as expected (fix the harness or the expectation):\n{}",
            self.name,
            problems.join("\n")
        );
        backends.take();
        let dir = TempDir::new(&format!("lb-{}", self.name));
        let config = dir.join("lb.toml");
        std::fs::write(&config, self.toml(&backends)).unwrap();
        let proc = Proc::start(&["--role", "lb", "--log-format", "json", "--config", config.to_str().unwrap()]);
        let ours = self.play(proc.addr(&format!("lb.{}", self.pool)), &backends, &|| our_access_log(&proc));
        if std::env::var_os("LB_PARITY_SHOW").is_some() {
            for (step, got) in self.steps.iter().zip(&ours) {
                eprintln!("{} [{}] ours: {}\n    seen: {:?}", self.name, step.label, got.response.summary(), got.seen);
            }
        }
        let mut diffs = Vec::new();
        for (step, (theirs, mine)) in self.steps.iter().zip(reference.iter().zip(&ours)) {
            diffs.extend(compare(step, theirs, mine));
        }
        if !diffs.is_empty() {
            let config = std::fs::read_to_string(&config).unwrap_or_default();
            let logs = proc.logs();
            panic!(
                "scenario {}: exec-allinone differs from nginx:\n{}\n--- our config:\n{config}--- our log (tail):\n{}",
                self.name,
                diffs.join("\n"),
                tail(&logs, 40)
            );
        }
    }

    /// Plays the steps against one proxy; `access` reads that proxy's access log so far.
    fn play(&self, addr: SocketAddr, backends: &Backends, access: &dyn Fn() -> Vec<AccessLine>) -> Vec<Capture> {
        let mut out = Vec::new();
        for step in &self.steps {
            backends.take();
            backends.take_closed();
            let logged = access().len();
            let response = exchange(addr, step);
            // An abandoned request: did the proxy close its upstream connection too?
            let upstream_closed = step.abandon.map(|_| {
                let deadline = Instant::now() + Duration::from_secs(2);
                while backends.closed.lock().unwrap().is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                !backends.take_closed().is_empty()
            });
            let seen = backends.take();
            // The access-log line may be written just after the response; wait for it. Every
            // step gets one from both proxies, so the bound is only a hang guard.
            let deadline = Instant::now() + Duration::from_secs(10);
            let log = loop {
                let lines = access();
                if lines.len() > logged || Instant::now() > deadline {
                    break lines.get(logged).cloned();
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let log = log.map(|mut line| {
                line.upstream_addr =
                    line.upstream_addr.iter().map(|a| backends.name_of(a).unwrap_or(a).to_string()).collect();
                line
            });
            out.push(Capture { outcome: Outcome::of(&response, &seen), response, seen, log, upstream_closed });
        }
        out
    }

    fn check_nginx(&self, step: &Step, got: &Capture, backends: &Backends) -> Vec<String> {
        let mut problems = Vec::new();
        let label = &step.label;
        // An abandoned request has no response: its status is the one logged (499).
        let status = if step.abandon.is_some() { got.log.as_ref().map_or(0, |l| l.status) } else { got.outcome.status };
        if status != step.status {
            problems.push(format!(
                "[{label}] status {status} expected {}; response {:?}",
                step.status,
                got.response.summary()
            ));
        }
        match &got.log {
            Some(line) if line.upstream_addr != step.tried => problems
                .push(format!("[{label}] $upstream_addr tried {:?}, expected {:?}", line.upstream_addr, step.tried)),
            None => problems.push(format!("[{label}] no access-log line")),
            _ => {}
        }
        let reachable: Vec<String> = step
            .tried
            .iter()
            .filter(|name| {
                let peer = backends.all().iter().find(|b| &b.name == *name);
                !peer.is_some_and(|b| matches!(b.behaviour, Behaviour::Refuse | Behaviour::Blackhole))
            })
            .cloned()
            .collect();
        let seen: Vec<String> = got.seen.iter().map(|s| s.backend.clone()).collect();
        if seen != reachable {
            problems.push(format!("[{label}] backends saw {seen:?}, expected {reachable:?}"));
        }
        if let Some(from) = &got.outcome.from_backend
            && step.tried.last() != Some(from)
        {
            problems.push(format!("[{label}] answer from {from}, but the last tried peer is {:?}", step.tried.last()));
        }
        if let Some(check) = &step.check {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(got)));
            if let Err(e) = caught {
                problems.push(format!("[{label}] check failed: {}", panic_text(&e)));
            }
        }
        problems
    }
}

impl Step {
    fn new(label: String, head: String, body: &[u8]) -> Step {
        Step {
            label,
            head: head.into_bytes(),
            body: body.to_vec(),
            wait_100: false,
            linger: false,
            abandon: None,
            timeout: Duration::from_secs(5),
            status: 200,
            tried: Vec::new(),
            check: None,
            ours: None,
        }
    }

    fn expect(mut self, status: u16, tried: &str) -> Step {
        self.status = status;
        self.tried = tried.split_whitespace().map(str::to_string).collect();
        self
    }

    fn check(mut self, check: impl Fn(&Capture) + 'static) -> Step {
        self.check = Some(Box::new(check));
        self
    }

    fn linger(mut self) -> Step {
        self.linger = true;
        self
    }

    fn abandon(mut self, after: Duration) -> Step {
        self.abandon = Some(after);
        self
    }

    fn timeout(mut self, timeout: Duration) -> Step {
        self.timeout = timeout;
        self
    }

    fn wait_100(mut self) -> Step {
        self.wait_100 = true;
        self
    }

    /// exec-allinone documents a different answer here.
    fn ours(mut self, status: u16, seen: &str, note: &'static str) -> Step {
        self.ours = Some(Deviation { status, seen: seen.split_whitespace().map(str::to_string).collect(), note });
        self
    }
}

/// `METHOD path HTTP/1.1` with `Host` and, when there is a body, `Content-Length`.
fn req(method: &str, path: &str, body: Option<&[u8]>) -> Step {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: lbtest\r\nUser-Agent: parity\r\n");
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    Step::new(format!("{method} {path}"), head, body.unwrap_or_default())
}

fn get(path: &str) -> Step {
    req("GET", path, None)
}

fn post(path: &str) -> Step {
    req("POST", path, Some(b"{\"id\":\"1\"}"))
}

/// Exactly these bytes; `label` names the step in reports.
fn raw(label: &str, head: &str, body: &[u8]) -> Step {
    Step::new(label.to_string(), head.to_string(), body)
}

// ---------------------------------------------------------------------------------------------
// What a run observed

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
    Close,
    NoBody,
}

/// One response as the client received it.
#[derive(Debug, Default)]
struct Response {
    interim: Vec<u16>,
    /// 0 when no response head arrived.
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    framing: Option<Framing>,
    body: Vec<u8>,
    /// How reading ended: `complete`, `eof`, `timeout` or `reset`.
    end: String,
    /// Bytes that arrived after the framed body (only read for `linger` steps).
    after: Vec<u8>,
    elapsed: Duration,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{} {} {:?} body={} end={} after={:?} in {:?}",
            self.status,
            self.version,
            self.headers,
            show(&self.body),
            self.end,
            String::from_utf8_lossy(&self.after),
            self.elapsed
        )
    }
}

/// A step's response and what the backends received meanwhile.
struct Capture {
    outcome: Outcome,
    response: Response,
    seen: Vec<Seen>,
    /// The proxy's access-log line for the request, peers named.
    log: Option<AccessLine>,
    /// For an abandoned request: whether the proxy closed the held upstream connection.
    upstream_closed: Option<bool>,
}

/// The comparable part of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    interim: Vec<u16>,
    status: u16,
    /// `X-Backend` of an answer that came from a backend; None for proxy-generated responses.
    from_backend: Option<String>,
    /// Content-Type of a proxy-generated response with a body (the body itself is not compared).
    error_type: Option<String>,
    framing: Option<Framing>,
    content_length: Option<String>,
    body: Option<String>,
    end: String,
    /// Backend headers passed through (lowercase names, in order), framing and hop-by-hop aside.
    headers: Vec<(String, String)>,
    /// The backend's own Server and Date were replaced.
    server_replaced: Option<bool>,
    date_replaced: Option<bool>,
    after: String,
    attempts: Vec<Attempt>,
}

/// What one backend received, normalized for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempt {
    backend: String,
    request_line: String,
    host: Option<String>,
    connection: Option<String>,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
    /// Every other header, lowercase names, in the order received.
    headers: Vec<(String, String)>,
    body: String,
    complete: bool,
}

const HOP_OR_FRAMING: [&str; 6] = ["server", "date", "connection", "keep-alive", "transfer-encoding", "content-length"];

impl Outcome {
    fn of(r: &Response, seen: &[Seen]) -> Outcome {
        let from_backend = r.header("x-backend").map(str::to_string);
        let backend = from_backend.is_some();
        Outcome {
            interim: r.interim.clone(),
            status: r.status,
            error_type: if backend || r.status == 0 || r.body.is_empty() {
                None
            } else {
                Some(r.header("content-type").unwrap_or("(none)").to_string())
            },
            framing: if backend { r.framing } else { None },
            content_length: if backend { r.header("content-length").map(str::to_string) } else { None },
            body: backend.then(|| show(&r.body)),
            end: if backend || r.end != "complete" { r.end.clone() } else { "complete".into() },
            headers: if backend {
                grouped(
                    r.headers
                        .iter()
                        .filter(|(k, _)| !HOP_OR_FRAMING.contains(&k.to_ascii_lowercase().as_str()))
                        .map(|(k, v)| (k.clone(), v.clone())),
                )
            } else {
                Vec::new()
            },
            server_replaced: backend.then(|| r.header("server").is_some_and(|s| !s.starts_with("backend-"))),
            date_replaced: backend.then(|| r.header("date").is_some_and(|d| !d.contains("1970"))),
            from_backend,
            after: String::from_utf8_lossy(&r.after).into_owned(),
            attempts: seen.iter().map(Attempt::of).collect(),
        }
    }
}

impl Attempt {
    fn of(s: &Seen) -> Attempt {
        let one = |name: &str| {
            let all = s.headers_named(name);
            (!all.is_empty()).then(|| all.join(" | "))
        };
        Attempt {
            backend: s.backend.clone(),
            request_line: show(s.request_line.as_bytes()),
            host: one("host"),
            connection: one("connection"),
            content_length: one("content-length"),
            transfer_encoding: one("transfer-encoding"),
            headers: grouped(
                s.headers
                    .iter()
                    .filter(|(k, _)| {
                        !["host", "connection", "content-length", "transfer-encoding"]
                            .contains(&k.to_ascii_lowercase().as_str())
                    })
                    .map(|(k, v)| (k.clone(), show(v.as_bytes()))),
            ),
            body: show(&s.body),
            complete: s.complete,
        }
    }
}

/// Header fields as a comparison sees them: names lowercase, fields of one name together in
/// their original order, names in order of first appearance. The order of fields with different
/// names carries no meaning (RFC 9110 §5.3); the order within a name is kept and compared.
fn grouped(headers: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => groups.push((name, vec![value])),
        }
    }
    groups.into_iter().flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v))).collect()
}

/// Bytes for a report: text when short, else length and a checksum.
fn show(bytes: &[u8]) -> String {
    if bytes.len() <= 200 {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    format!("<{} bytes, fnv {sum:016x}>", bytes.len())
}

/// The differences of one step between nginx and exec-allinone, one line each.
fn compare(step: &Step, theirs: &Capture, mine: &Capture) -> Vec<String> {
    let label = &step.label;
    if let Some(dev) = &step.ours {
        let seen: Vec<String> = mine.seen.iter().map(|s| s.backend.clone()).collect();
        if mine.outcome.status != dev.status || seen != dev.seen {
            return vec![format!(
                "[{label}] documented deviation ({}): expected ours {} seen {:?}, got {} seen {seen:?}; nginx gave {}",
                dev.note, dev.status, dev.seen, mine.outcome.status, theirs.outcome.status
            )];
        }
        return Vec::new();
    }
    let (a, b) = (&theirs.outcome, &mine.outcome);
    let mut out = Vec::new();
    macro_rules! field {
        ($f:ident) => {
            if a.$f != b.$f {
                out.push(format!("[{label}] {}: nginx {:?} / ours {:?}", stringify!($f), a.$f, b.$f));
            }
        };
    }
    let source = |o: &Outcome| match &o.from_backend {
        Some(name) => format!("{} from backend {name}", o.status),
        None if o.status == 0 => format!("no response ({})", o.end),
        None => format!("{} from the proxy", o.status),
    };
    if a.from_backend != b.from_backend || (a.from_backend.is_none() && a.status != b.status) {
        // One answer came from a backend and the other did not (or two different proxy answers):
        // the field-by-field detail would only repeat that.
        out.push(format!("[{label}] nginx {} / ours {}", source(a), source(b)));
    } else {
        field!(status);
    }
    field!(interim);
    if a.from_backend.is_some() && b.from_backend.is_some() {
        compare_backend_answers(a, b, label, &mut out);
    } else if a.from_backend.is_none()
        && b.from_backend.is_none()
        && a.status == b.status
        && b.error_type.is_some()
        && a.error_type.as_deref().map(media_type) != b.error_type.as_deref().map(media_type)
    {
        // An error page must be HTML like nginx's; a bodiless one (hyper's own 400s) is let be.
        out.push(format!("[{label}] error page Content-Type: nginx {:?} / ours {:?}", a.error_type, b.error_type));
    }
    // Timeouts must be the same timeouts: a step that takes one proxy a second or more must take
    // the other about as long (the slack covers scheduling on a loaded machine; quick steps are
    // not timed, so load alone cannot fail them).
    let (ta, tb) = (theirs.response.elapsed, mine.response.elapsed);
    if ta.max(tb) >= Duration::from_millis(900) && ta.abs_diff(tb) > Duration::from_millis(700) {
        out.push(format!("[{label}] time taken: nginx {ta:.2?} / ours {tb:.2?}"));
    }
    if theirs.upstream_closed != mine.upstream_closed {
        out.push(format!(
            "[{label}] upstream connection closed when the client left: nginx {:?} / ours {:?}",
            theirs.upstream_closed, mine.upstream_closed
        ));
    }
    // The access log (LB-31): the same peers tried, in order, and the same status (499 for a
    // client that left). A request the proxy never passed on may go unlogged by ours.
    match (&theirs.log, &mine.log) {
        (Some(x), Some(y)) => {
            if x.upstream_addr != y.upstream_addr {
                out.push(format!(
                    "[{label}] access log, peers tried: nginx {:?} / ours {:?}",
                    x.upstream_addr, y.upstream_addr
                ));
            }
            if x.status != y.status {
                out.push(format!("[{label}] access log, status: nginx {} / ours {}", x.status, y.status));
            }
        }
        (Some(x), None) if !x.upstream_addr.is_empty() => {
            out.push(format!("[{label}] access log: nginx logged {:?}, ours logged nothing", x.upstream_addr))
        }
        _ => {}
    }
    if a.attempts != b.attempts {
        out.push(format!("[{label}] backend attempts differ:"));
        let n = a.attempts.len().max(b.attempts.len());
        for i in 0..n {
            match (a.attempts.get(i), b.attempts.get(i)) {
                (Some(x), Some(y)) if x == y => out.push(format!("    #{i} same: {} {}", x.backend, x.request_line)),
                (x, y) => {
                    out.push(format!("    #{i} nginx: {x:?}"));
                    out.push(format!("    #{i} ours:  {y:?}"));
                }
            }
        }
    }
    if out.is_empty()
        && let Some(check) = &step.check
        && let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(mine)))
    {
        out.push(format!("[{label}] check failed on ours: {}", panic_text(&e)));
    }
    if !out.is_empty() {
        out.push(format!("    nginx response: {}", theirs.response.summary()));
        out.push(format!("    our response:   {}", mine.response.summary()));
    }
    out
}

/// Two answers that both came from a backend: everything the client sees of them.
fn compare_backend_answers(a: &Outcome, b: &Outcome, label: &str, out: &mut Vec<String>) {
    macro_rules! field {
        ($f:ident) => {
            if a.$f != b.$f {
                out.push(format!("[{label}] {}: nginx {:?} / ours {:?}", stringify!($f), a.$f, b.$f));
            }
        };
    }
    field!(from_backend);
    field!(framing);
    field!(content_length);
    field!(body);
    field!(end);
    field!(headers);
    field!(server_replaced);
    field!(date_replaced);
    field!(after);
}

fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The client: raw bytes out, a framing-aware reader in

/// Status, version and headers of one response head.
type Head = (u16, String, Vec<(String, String)>);

struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    end: Option<String>,
}

impl Reader {
    /// Reads more bytes; false once the connection ended (the reason is kept in `end`).
    fn fill(&mut self) -> bool {
        if self.end.is_some() {
            return false;
        }
        let mut chunk = [0u8; 16384];
        // A signal to the test process interrupts a read with a timeout even under SA_RESTART
        // (signal(7)); that says nothing about the proxy, so read again.
        let read = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(0) => self.end = Some("eof".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                self.end = Some("timeout".into())
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => self.end = Some("reset".into()),
            Err(e) => self.end = Some(format!("error {e}")),
        }
        false
    }

    /// One response head: (status, version, headers).
    fn head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or_default();
                let mut parts = status_line.splitn(3, ' ');
                let version = parts.next().unwrap_or_default().to_string();
                let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let headers = lines
                    .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                    .collect();
                return Some((status, version, headers));
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

/// Sends one step's request on a fresh connection and reads the response.
fn exchange(addr: SocketAddr, step: &Step) -> Response {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the proxy");
    stream.set_read_timeout(Some(step.timeout)).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.set_nodelay(true);
    if let Some(after) = step.abandon {
        (&stream).write_all(&[step.head.as_slice(), step.body.as_slice()].concat()).expect("send");
        std::thread::sleep(after);
        drop(stream);
        return Response { end: "abandoned".into(), elapsed: started.elapsed(), ..Response::default() };
    }
    let mut reader = Reader { stream: stream.try_clone().unwrap(), buf: Vec::new(), end: None };
    let mut response = Response::default();
    let mut writer = None;
    let mut first = None;
    if step.wait_100 {
        let mut s = stream.try_clone().unwrap();
        s.write_all(&step.head).expect("send head");
        match reader.head() {
            Some((100, _, _)) => {
                response.interim.push(100);
                s.write_all(&step.body).expect("send body");
            }
            other => first = other,
        }
    } else {
        let mut s = stream.try_clone().unwrap();
        let bytes = [step.head.as_slice(), step.body.as_slice()].concat();
        // A separate writer: a proxy may answer (413) before reading a large body.
        writer = Some(std::thread::spawn(move || {
            let _ = s.write_all(&bytes);
        }));
    }
    let head = loop {
        let next = first.take().or_else(|| reader.head());
        match next {
            Some((status, _, _)) if (100..200).contains(&status) && status != 101 => response.interim.push(status),
            other => break other,
        }
    };
    let Some((status, version, headers)) = head else {
        response.end = reader.end.clone().unwrap_or_default();
        response.elapsed = started.elapsed();
        join(writer);
        return response;
    };
    response.status = status;
    response.version = version;
    response.headers = headers;
    let method = String::from_utf8_lossy(&step.head).split(' ').next().unwrap_or_default().to_string();
    let te = response.header("transfer-encoding").map(str::to_ascii_lowercase);
    let cl = response.header("content-length").and_then(|v| v.parse::<usize>().ok());
    if method == "HEAD" || status == 204 || status == 304 {
        response.framing = Some(Framing::NoBody);
        response.end = "complete".into();
    } else if te.is_some_and(|te| te.ends_with("chunked")) {
        response.framing = Some(Framing::Chunked);
        loop {
            let (body, used, done) = dechunk_partial(&reader.buf);
            if done {
                response.body = body;
                reader.buf.drain(..used);
                response.end = "complete".into();
                break;
            }
            if !reader.fill() {
                response.body = body;
                reader.buf.clear();
                response.end = reader.end.clone().unwrap_or_default();
                break;
            }
        }
    } else if let Some(len) = cl {
        response.framing = Some(Framing::Length);
        while reader.buf.len() < len && reader.fill() {}
        let n = len.min(reader.buf.len());
        response.body = reader.buf.drain(..n).collect();
        response.end = if n == len { "complete".into() } else { reader.end.clone().unwrap_or_default() };
    } else {
        response.framing = Some(Framing::Close);
        while reader.fill() {}
        response.body = std::mem::take(&mut reader.buf);
        response.end = reader.end.clone().unwrap_or_default();
    }
    if step.linger && response.end == "complete" {
        let _ = reader.stream.set_read_timeout(Some(Duration::from_millis(300)));
        while reader.fill() {}
    }
    response.after = std::mem::take(&mut reader.buf);
    response.elapsed = started.elapsed();
    join(writer);
    response
}

fn join(writer: Option<std::thread::JoinHandle<()>>) {
    if let Some(w) = writer {
        let _ = w.join();
    }
}

/// De-chunks as much as has arrived: (body so far, bytes used, final chunk seen).
fn dechunk_partial(buf: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line) = find(&buf[pos..], b"\r\n") else { return (body, pos, false) };
        let text = String::from_utf8_lossy(&buf[pos..pos + line]);
        let Ok(size) = usize::from_str_radix(text.split(';').next().unwrap_or_default().trim(), 16) else {
            return (body, pos, false);
        };
        let data = pos + line + 2;
        if size == 0 {
            // The last chunk, then trailers (if any) and an empty line.
            if buf[data..].starts_with(b"\r\n") {
                return (body, data + 2, true);
            }
            return match find(&buf[data..], b"\r\n\r\n") {
                Some(j) => (body, data + j + 4, true),
                None => (body, pos, false),
            };
        }
        let available = buf.len().saturating_sub(data).min(size);
        body.extend_from_slice(&buf[data..data + available]);
        if buf.len() < data + size + 2 {
            return (body, pos, false);
        }
        pos = data + size + 2;
    }
}

/// exec-allinone's access-log lines (`--log-format json`, target `access`).
fn our_access_log(proc: &Proc) -> Vec<AccessLine> {
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v.as_str() {
            None | Some("-") | Some("") => Vec::new(),
            Some(s) => s.split(", ").map(str::to_string).collect(),
        }
    };
    proc.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .map(|v| AccessLine {
            status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
            upstream_addr: list(&v["upstream_addr"]),
            upstream_status: list(&v["upstream_status"]),
            request: format!("{} {}", v["method"].as_str().unwrap_or(""), v["uri"].as_str().unwrap_or("")),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The scenarios (research/lb.md §3 and §7)

fn ok() -> Behaviour {
    Behaviour::ok()
}

/// The body and CL a backend saw match what the check expects.
fn body_seen(c: &Capture, i: usize) -> &Seen {
    c.seen.get(i).unwrap_or_else(|| panic!("no attempt #{i}: {:?}", c.seen))
}

#[test]
fn rotation_three_healthy_peers() {
    Scenario::exrp("rot3", ok(), ok(), ok()).each(|| get("/health"), 200, &["C", "D", "E", "C", "D", "E"]).run();
}

#[test]
fn rotation_two_healthy_peers_any_method() {
    Scenario::excp("rot2", ok(), ok())
        .step(get("/").expect(200, "A"))
        .step(post("/api/v1/recording").expect(200, "B"))
        .step(req("PUT", "/x", Some(b"1")).expect(200, "A"))
        .step(req("OPTIONS", "/", None).expect(200, "B"))
        .run();
}

#[test]
fn refused_peer_keeps_its_share_of_first_attempts() {
    // lb.md §3: C · D✗→E · E · C · D✗→E · C · E · D✗→C · E, then the same rotation for POSTs
    // (refused = nothing sent, so a POST moves on too).
    let gets = ["C", "D E", "E", "C", "D E", "C", "E", "D C", "E"];
    let posts = ["C", "D E", "C", "E", "D C", "E"];
    Scenario::exrp("refused1", ok(), Behaviour::Refuse, ok())
        .each(|| get("/health"), 200, &gets)
        .each(|| post("/api/v1/interaction-end"), 200, &posts)
        .run();
}

#[test]
fn two_refused_peers() {
    // lb.md §3: C · D✗E✗C · E✗C · D✗C · E✗C · D✗C
    let vector = ["C", "D E C", "E C", "D C", "E C", "D C", "E C"];
    Scenario::exrp("refused2", ok(), Behaviour::Refuse, Behaviour::Refuse).each(|| get("/"), 200, &vector).run();
}

/// GET, PUT, DELETE, OPTIONS and HEAD move on after a failure once the request was sent;
/// POST, LOCK and PATCH get 502 from the one peer (lb.md §1.3, LB-10).
fn failed_after_send(name: &'static str, a: Behaviour) {
    let lock = || req("LOCK", "/r.opus", Some(b"<?xml version=\"1.0\"?><lockinfo/>"));
    Scenario::excp(name, a, ok())
        .step(get("/").expect(200, "A B"))
        .step(get("/").expect(200, "B"))
        .step(post("/").expect(502, "A"))
        .step(post("/").expect(200, "B"))
        .step(req("PUT", "/r.opus", Some(b"opus")).expect(200, "A B"))
        .step(req("PUT", "/r.opus", Some(b"opus")).expect(200, "B"))
        .step(req("DELETE", "/r.opus", None).expect(200, "A B"))
        .step(req("DELETE", "/r.opus", None).expect(200, "B"))
        .step(lock().expect(502, "A"))
        .step(lock().expect(200, "B"))
        .step(req("PATCH", "/r", Some(b"{}")).expect(502, "A"))
        .step(req("PATCH", "/r", Some(b"{}")).expect(200, "B"))
        .step(req("OPTIONS", "/", None).expect(200, "A B"))
        .step(req("HEAD", "/", None).expect(200, "B"))
        .step(req("HEAD", "/", None).expect(200, "A B"))
        .run();
}

#[test]
fn peer_closing_after_reading_the_request() {
    failed_after_send("closeread", Behaviour::CloseAfterRead);
}

#[test]
fn peer_resetting_after_reading_the_request() {
    failed_after_send("resetread", Behaviour::ResetAfterRead);
}

#[test]
fn peer_closing_inside_the_response_header() {
    failed_after_send("closehead", Behaviour::CloseBeforeHeader);
}

#[test]
fn all_peers_refused() {
    Scenario::excp("allrefused", Behaviour::Refuse, Behaviour::Refuse)
        .step(get("/").expect(502, "A B"))
        .step(post("/").expect(502, "B A"))
        .step(get("/").expect(502, "A B"))
        .run();
}

#[test]
fn tries_two_of_three_refused_peers() {
    Scenario::exrp("tries2refused", Behaviour::Refuse, Behaviour::Refuse, Behaviour::Refuse)
        .tries(2)
        .each(|| get("/"), 502, &["C D", "E D", "C D"])
        .run();
}

#[test]
fn tries_two_of_three_closing_peers() {
    let close = Behaviour::CloseAfterRead;
    Scenario::exrp("tries2close", close.clone(), close.clone(), close)
        .tries(2)
        .step(post("/").expect(502, "C"))
        .step(get("/").expect(502, "D E"))
        .step(get("/").expect(502, "E C"))
        .run();
}

#[test]
fn connect_timeout_moves_every_method_on() {
    // LB-09: a connect timeout means nothing was sent, so a POST moves on too.
    Scenario::excp("connecttimeout", Behaviour::Blackhole, ok())
        .set("proxy_connect_timeout 1s;", "connect_timeout = \"1s\"")
        .step(get("/").expect(200, "A B"))
        .step(get("/").expect(200, "B"))
        .step(post("/").expect(200, "A B"))
        .step(post("/").expect(200, "B"))
        .run();
}

#[test]
fn all_peers_black_holed_give_504() {
    // LB-13: the last failure was a timeout, so 504.
    Scenario::excp("allblackhole", Behaviour::Blackhole, Behaviour::Blackhole)
        .set("proxy_connect_timeout 1s;", "connect_timeout = \"1s\"")
        .step(post("/").expect(504, "A B"))
        .run();
}

#[test]
fn read_timeout_moves_gets_on_and_fails_posts_with_504() {
    Scenario::excp("readtimeout", Behaviour::Hang, ok())
        .set("proxy_read_timeout 1s;", "read_timeout = \"1s\"")
        .step(get("/").expect(200, "A B"))
        .step(get("/").expect(200, "B"))
        .step(post("/").expect(504, "A"))
        .step(post("/").expect(200, "B"))
        .run();
}

#[test]
fn all_peers_hanging_give_504() {
    let slow = Behaviour::Delay { delay: Duration::from_secs(3), status: 200 };
    Scenario::excp("allhang", Behaviour::Hang, slow)
        .set("proxy_read_timeout 1s;", "read_timeout = \"1s\"")
        .step(get("/").expect(504, "A B"))
        .step(post("/").expect(504, "B"))
        .run();
}

#[test]
fn client_leaving_aborts_the_upstream_attempt() {
    // LB-15: the client closes before the answer; the proxy closes the upstream connection
    // (proxy_ignore_client_abort off) and logs 499; the rotation goes on as usual.
    Scenario::excp("clientabort", Behaviour::Hang, ok())
        .step(get("/").abandon(Duration::from_millis(300)).expect(499, "A"))
        .step(get("/").expect(200, "B"))
        .step(post("/").abandon(Duration::from_millis(300)).expect(499, "A"))
        .run();
}

#[test]
fn next_upstream_timeout_caps_the_attempts() {
    // nginx-tests proxy_next_upstream_tries.t, timeout part: measured from the first attempt,
    // so with 1 s per attempt and a 1.5 s cap the third peer is never tried.
    Scenario::exrp("nexttimeout", Behaviour::Hang, Behaviour::Hang, Behaviour::Hang)
        .set("proxy_read_timeout 1s;", "read_timeout = \"1s\"")
        .set("proxy_next_upstream_timeout 1500ms;", "next_upstream_timeout = \"1500ms\"")
        .step(get("/").expect(504, "C D"))
        .run();
}

#[test]
fn next_upstream_off_never_moves_on() {
    Scenario::excp("nextoff", Behaviour::CloseAfterRead, Behaviour::Refuse)
        .set("proxy_next_upstream off;", "next_upstream = [\"off\"]")
        .step(get("/").expect(502, "A"))
        .step(get("/").expect(502, "B"))
        .run();
}

#[test]
fn tries_zero_means_every_peer_once() {
    let r = || Behaviour::Refuse;
    Scenario::exrp("tries0", r(), r(), r()).tries(0).each(|| post("/"), 502, &["C D E", "E D C", "C D E"]).run();
}

#[test]
fn status_conditions_and_giving_up_on_a_status() {
    // http_503 listed: move on; when every peer answered 503 the last one's own answer is
    // passed through (not an error page).
    let busy = || Behaviour::answer(503, b"busy", &[("Retry-After", "1")]);
    Scenario::excp("http503", busy(), busy())
        .set("proxy_next_upstream error timeout http_503;", "next_upstream = [\"error\", \"timeout\", \"http_503\"]")
        .step(get("/").expect(503, "A B").check(|c| {
            assert_eq!(c.response.body, b"busy");
            assert_eq!(c.response.header("x-backend"), Some("B"));
            assert_eq!(c.response.header("retry-after"), Some("1"));
        }))
        .step(post("/").expect(503, "B").check(|c| assert_eq!(c.response.body, b"busy")))
        .run();
}

#[test]
fn invalid_header_in_next_upstream_moves_on() {
    let big = Behaviour::Raw(format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "b".repeat(5000)).into_bytes());
    Scenario::excp("invalidheader", big, ok())
        .set(
            "proxy_next_upstream error timeout invalid_header;",
            "next_upstream = [\"error\", \"timeout\", \"invalid_header\"]",
        )
        .step(get("/").expect(200, "A B"))
        .step(get("/").expect(200, "B"))
        .step(post("/").expect(502, "A"))
        .run();
}

#[test]
fn slow_clients_time_out() {
    // LB-17 body timeout and LB-28 header timeout: nginx 1.22.1 closes the connection without
    // a response in both cases and logs 408 (lb.md's "⇒ 408" is the logged status only).
    let logged_408 = |c: &Capture| assert_eq!(c.log.as_ref().map(|l| l.status), Some(408));
    Scenario::excp("slowclient", ok(), ok())
        .set("client_body_timeout 1s;", "body_timeout = \"1s\"")
        .set_server("client_header_timeout 1s;", "header_timeout = \"1s\"")
        .step(
            raw("body stalls", "POST / HTTP/1.1\r\nHost: lbtest\r\nContent-Length: 10\r\n\r\n", b"12345")
                .expect(0, "")
                .check(logged_408),
        )
        // nginx logs this one as 408 too; a proxy that never saw a whole request head may not.
        .step(raw("head stalls", "GET / HTTP/1.1\r\nHost: lbtest\r\n", b"").expect(0, ""))
        .step(get("/").expect(200, "A"))
        .run();
}

#[test]
fn read_timeout_inside_the_body_truncates_without_retry() {
    // The header went to the client: no retry, the connection is closed short (LB-14).
    let slow = Behaviour::SlowBody { body: b"0123456789".to_vec(), pieces: 2, delay: Duration::from_millis(1500) };
    Scenario::excp("bodytimeout", slow, ok())
        .set("proxy_read_timeout 1s;", "read_timeout = \"1s\"")
        .step(get("/").expect(200, "A").check(|c| {
            assert_eq!(c.response.header("content-length"), Some("10"));
            assert!(c.response.body.len() < 10, "short body: {:?}", c.response.body);
            assert_eq!(c.response.end, "eof", "closed after the timeout");
        }))
        .step(get("/").expect(200, "B"))
        .run();
}

#[test]
fn backend_statuses_pass_through_without_retry() {
    let peers = [500, 502, 503, 504, 404, 429, 403]
        .into_iter()
        .map(|s| {
            let name: &'static str = Box::leak(format!("S{s}").into_boxed_str());
            (name, Behaviour::answer(s, format!("backend says {s}").as_bytes(), &[("X-Status", "own")]))
        })
        .collect();
    let mut s = Scenario::new("statuses", "exrp", peers);
    for status in [500, 502, 503, 504, 404, 429, 403] {
        s = s.step(get("/").expect(status, &format!("S{status}")));
    }
    for status in [500, 502, 503, 504, 404, 429, 403] {
        s = s.step(post("/").expect(status, &format!("S{status}")));
    }
    s.run();
}

#[test]
fn http_404_in_next_upstream_moves_gets_on_but_not_posts() {
    Scenario::excp("http404", Behaviour::answer(404, b"A has no such thing", &[]), ok())
        .set("proxy_next_upstream error timeout http_404;", "next_upstream = [\"error\", \"timeout\", \"http_404\"]")
        .step(get("/").expect(200, "A B"))
        .step(get("/").expect(200, "B"))
        .step(post("/").expect(404, "A").check(|c| assert_eq!(c.response.body, b"A has no such thing")))
        .step(post("/").expect(200, "B"))
        .run();
}

#[test]
fn non_idempotent_lets_posts_move_on() {
    Scenario::excp("nonidem", Behaviour::status(404), Behaviour::CloseAfterRead)
        .set(
            "proxy_next_upstream error timeout http_404 non_idempotent;",
            "next_upstream = [\"error\", \"timeout\", \"http_404\", \"non_idempotent\"]",
        )
        .step(post("/").expect(502, "A B"))
        .step(post("/").expect(404, "B A").check(|c| assert_eq!(c.response.body, b"A")))
        .run();
}

#[test]
fn tries_two_all_404_passes_the_last_404_through() {
    // nginx-tests proxy_next_upstream_tries.t: exactly two attempts, the last backend's own 404.
    let nf = Behaviour::status(404);
    Scenario::exrp("tries404", nf.clone(), nf.clone(), nf)
        .tries(2)
        .set("proxy_next_upstream error timeout http_404;", "next_upstream = [\"error\", \"timeout\", \"http_404\"]")
        .step(get("/").expect(404, "C D").check(|c| assert_eq!(c.response.body, b"D")))
        .step(get("/").expect(404, "E D").check(|c| assert_eq!(c.response.body, b"D")))
        .run();
}

#[test]
fn smooth_weighted_round_robin_5_1_1() {
    Scenario::weighted("weights", "exrp", vec![("a", ok(), 5), ("b", ok(), 1), ("c", ok(), 1)])
        .each(|| get("/"), 200, &["a", "a", "b", "a", "c", "a", "a"])
        .run();
}

fn chunked_body(total: usize) -> Vec<u8> {
    let data = vec![b'x'; total];
    let mut out = Vec::new();
    for piece in data.chunks(700) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn body_over_the_configured_limit_is_413_without_a_backend() {
    let big = vec![b'b'; 2048];
    Scenario::excp("body1k", ok(), ok())
        .set("client_max_body_size 1k;", "max_body_size = \"1KiB\"")
        .step(req("POST", "/", Some(&big)).expect(413, ""))
        .step(
            raw(
                "POST chunked 2 KiB",
                "POST / HTTP/1.1\r\nHost: lbtest\r\nTransfer-Encoding: chunked\r\n\r\n",
                &chunked_body(2048),
            )
            .expect(413, ""),
        )
        .step(req("POST", "/", Some(&[b'c'; 1024])).expect(200, "A"))
        .step(req("POST", "/", Some(&[b'd'; 1025])).expect(413, ""))
        .step(req("POST", "/", Some(b"small")).expect(200, "B"))
        .run();
}

#[test]
fn body_over_the_default_limit_is_413_by_content_length() {
    // Only the head and a little of the 2 MB body are sent: the answer must not wait for the rest.
    Scenario::excp("body2m", ok(), ok())
        .step(
            raw("POST CL 2000000", "POST / HTTP/1.1\r\nHost: lbtest\r\nContent-Length: 2000000\r\n\r\n", &[b'z'; 4096])
                .expect(413, ""),
        )
        .step(req("POST", "/", Some(&vec![b'm'; 1 << 20])).expect(200, "A"))
        .step(get("/").expect(200, "B"))
        .run();
}

#[test]
fn request_body_framing_upstream() {
    Scenario::excp("bodyframing", ok(), ok())
        .step(
            raw(
                "POST chunked",
                "POST /c HTTP/1.1\r\nHost: lbtest\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
            .expect(200, "A")
            .check(|c| {
                let s = body_seen(c, 0);
                assert_eq!(s.body, b"hello world");
                assert_eq!(s.header("content-length"), Some("11"));
                assert_eq!(s.header("transfer-encoding"), None);
            }),
        )
        .step(req("POST", "/empty", Some(b"")).expect(200, "B").check(|c| {
            assert_eq!(body_seen(c, 0).header("content-length"), Some("0"));
        }))
        .step(get("/nobody").expect(200, "A").check(|c| {
            assert_eq!(body_seen(c, 0).header("content-length"), None);
        }))
        .step(req("GET", "/withbody", Some(b"abc")).expect(200, "B").check(|c| {
            let s = body_seen(c, 0);
            assert_eq!((s.header("content-length"), s.body.as_slice()), (Some("3"), &b"abc"[..]));
        }))
        .run();
}

#[test]
fn body_is_resent_identically_to_the_next_peer() {
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    Scenario::excp("resend", Behaviour::CloseAfterRead, ok())
        .step(req("PUT", "/r.opus", Some(&body)).expect(200, "A B").check(|c| {
            assert_eq!(c.seen.len(), 2);
            assert_eq!(c.seen[0].body, c.seen[1].body);
            assert_eq!(c.seen[0].body.len(), 3000);
            assert_eq!(c.seen[1].header("content-length"), Some("3000"));
        }))
        .step(get("/").expect(200, "B"))
        .step(
            raw(
                "PUT chunked",
                "PUT /r.opus HTTP/1.1\r\nHost: lbtest\r\nTransfer-Encoding: chunked\r\n\r\n",
                &chunked_body(1500),
            )
            .expect(200, "A B")
            .check(|c| {
                assert_eq!(c.seen[0].body, vec![b'x'; 1500]);
                assert_eq!(c.seen[1].body, vec![b'x'; 1500]);
                assert_eq!(c.seen[1].header("content-length"), Some("1500"));
            }),
        )
        .run();
}

#[test]
fn request_headers_sent_upstream() {
    let head = "POST //a/./b/../c%2Fd%20e?x=%2F&y=1 HTTP/1.1\r\n\
                Host: client.example\r\n\
                User-Agent: parity/1\r\n\
                X-Dup: one\r\n\
                Connection: keep-alive, X-Conn-Listed\r\n\
                Keep-Alive: timeout=5\r\n\
                X-Forwarded-For: 203.0.113.9\r\n\
                TE: trailers\r\n\
                X_Under: dropped\r\n\
                X-Conn-Listed: kept\r\n\
                Upgrade: websocket\r\n\
                X-Dup: two\r\n\
                Proxy-Connection: keep-alive\r\n\
                Content-Type: application/json\r\n\
                Content-Length: 9\r\n\r\n";
    Scenario::excp("reqheaders", ok(), ok())
        .step(raw("POST with every kind of header", head, b"{\"a\":12}\n").expect(200, "A").check(|c| {
            let s = body_seen(c, 0);
            assert_eq!(s.request_line, "POST /a/c/d%20e?x=%2F&y=1 HTTP/1.0");
            assert_eq!(s.header("host"), Some("excp"));
            assert_eq!(s.header("connection"), Some("close"));
            assert_eq!(s.header("content-length"), Some("9"));
            // Client headers in order, names as the client wrote them; Keep-Alive, TE, Upgrade
            // and X_Under dropped; X-Conn-Listed (named in Connection) and Proxy-Connection
            // kept (1.22.1); no X-Forwarded-For of the proxy's own.
            let others: Vec<(String, String)> = s
                .headers
                .iter()
                .filter(|(k, _)| !["host", "connection", "content-length"].contains(&k.to_ascii_lowercase().as_str()))
                .cloned()
                .collect();
            let want = [
                ("User-Agent", "parity/1"),
                ("X-Dup", "one"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Conn-Listed", "kept"),
                ("X-Dup", "two"),
                ("Proxy-Connection", "keep-alive"),
                ("Content-Type", "application/json"),
            ];
            let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(others, want);
            assert_eq!(s.body, b"{\"a\":12}\n");
        }))
        .step(get("/plain").expect(200, "B").check(|c| {
            let s = body_seen(c, 0);
            assert_eq!(s.request_line, "GET /plain HTTP/1.0");
            assert_eq!(s.headers_named("x-forwarded-for"), Vec::<&str>::new(), "no XFF added");
            assert_eq!(s.header("x-real-ip"), None);
        }))
        .run();
}

#[test]
fn request_target_normalization() {
    // (client target, target nginx sends upstream); lb.md LB-18 and nginx-tests http_uri.t.
    let vectors: &[(&str, &str)] = &[
        ("//a/./b/../c%2Fd%20e?x=%2F&y=1", "/a/c/d%20e?x=%2F&y=1"),
        ("/foo/bar/..", "/foo/"),
        ("/foo/bar/.", "/foo/bar/"),
        ("/%41%42c", "/ABc"),
        ("/caf%C3%A9/%7e", "/caf%C3%A9/~"),
        ("/a;b,c=d@e+f", "/a;b,c=d@e+f"),
        ("/x?q=a%20b&&r=/../", "/x?q=a%20b&&r=/../"),
        ("/a%3Fb", "/a%3Fb"),
        ("/a%23b", "/a%23b"),
        ("/%02", "/%02"),
        ("http://other.example/abs/./path?z", "/abs/path?z"),
    ];
    let mut s = Scenario::new("targets", "excp", vec![("A", ok())]);
    for &(from, to) in vectors {
        let head = format!("GET {from} HTTP/1.1\r\nHost: lbtest\r\n\r\n");
        let step = raw(&format!("GET {from} => {to}"), &head, b"").expect(200, "A");
        s = s.step(step.check(move |c| assert_eq!(body_seen(c, 0).target, to)));
    }
    s.run();
}

#[test]
fn response_headers_passed_replaced_and_hidden() {
    let a = Behaviour::answer(
        200,
        b"{\"ok\":true}",
        &[
            ("Set-Cookie", "a=1; Path=/"),
            ("X-Custom", "one"),
            ("Set-Cookie", "b=2"),
            ("Cache-Control", "no-store"),
            ("X-Pad", "avoid browser bug"),
            ("X-Accel-Buffering", "no"),
            ("Keep-Alive", "timeout=5"),
            ("Content-Type", "application/json"),
        ],
    );
    Scenario::excp("respheaders", a.clone(), a)
        .step(get("/").expect(200, "A").check(|c| {
            assert_eq!(c.response.headers_named("set-cookie"), ["a=1; Path=/", "b=2"]);
            assert!(c.response.header("server").is_some_and(|s| !s.starts_with("backend-")));
            assert!(c.response.header("date").is_some_and(|d| !d.contains("1970")));
            assert_eq!(c.response.header("x-pad"), None);
            assert_eq!(c.response.header("x-accel-buffering"), None);
            assert_eq!(c.response.header("keep-alive"), None);
        }))
        .step(req("HEAD", "/", None).expect(200, "B").check(|c| {
            assert!(c.response.body.is_empty());
            assert_eq!(c.response.header("content-length"), Some("11"));
        }))
        .step(raw("GET as HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", b"").expect(200, "A"))
        .run();
}

/// A backend that writes `head` (after the status line and `X-Backend: A`) and `rest` verbatim.
fn raw_answer(status_line: &str, head: &str, rest: &str) -> Behaviour {
    Behaviour::raw(&format!("{status_line}\r\nX-Backend: A\r\n{head}\r\n{rest}"))
}

/// One backend answering in a raw way, several requests; a fresh pair of proxies per case.
struct RawCase {
    name: &'static str,
    answer: Behaviour,
    steps: Vec<Step>,
}

fn run_raw_cases(cases: Vec<RawCase>) {
    run_each(
        cases
            .into_iter()
            .map(|case| {
                let mut s = Scenario::new(case.name, "excp", vec![("A", case.answer)]);
                s.steps = case.steps;
                s
            })
            .collect(),
    );
}

#[test]
fn response_framing_from_the_backend() {
    let ok = "HTTP/1.1 200 OK";
    let http10 = || raw("GET as HTTP/1.0", "GET / HTTP/1.0\r\n\r\n", b"");
    run_raw_cases(vec![
        RawCase {
            // proxy_chunked.t: the backend answers chunked although it was asked with HTTP/1.0.
            name: "chunked_to_http10",
            answer: raw_answer(ok, "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            steps: vec![
                get("/").expect(200, "A").check(|c| assert_eq!(c.response.body, b"hello world")),
                http10().expect(200, "A").check(|c| assert_eq!(c.response.body, b"hello world")),
            ],
        },
        RawCase {
            name: "close_delimited",
            answer: Behaviour::raw("HTTP/1.0 200 OK\r\nX-Backend: A\r\n\r\nuntil close"),
            steps: vec![
                get("/").expect(200, "A").check(|c| assert_eq!(c.response.body, b"until close")),
                http10().expect(200, "A").check(|c| assert_eq!(c.response.body, b"until close")),
            ],
        },
        RawCase {
            // proxy_extra_data.t: bytes after the Content-Length body are dropped.
            name: "extra_after_length",
            answer: raw_answer(ok, "Content-Length: 5\r\n", "helloEXTRA DATA"),
            steps: vec![
                get("/").linger().expect(200, "A").check(|c| {
                    assert_eq!(c.response.body, b"hello");
                    assert!(c.response.after.is_empty());
                }),
                req("HEAD", "/", None).linger().expect(200, "A").check(|c| assert!(c.response.after.is_empty())),
            ],
        },
        RawCase {
            // proxy_chunked_extra.t: bytes after the last chunk are dropped.
            name: "extra_after_last_chunk",
            answer: raw_answer(ok, "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\nEXTRA DATA"),
            steps: vec![get("/").linger().expect(200, "A").check(|c| {
                assert_eq!(c.response.body, b"hello");
                assert!(c.response.after.is_empty());
            })],
        },
        RawCase {
            // proxy_unfinished.t: the client sees a short body and the connection closed.
            name: "truncated_length",
            answer: raw_answer(ok, "Content-Length: 100\r\n", "short"),
            steps: vec![get("/").expect(200, "A").check(|c| {
                assert_eq!(c.response.body, b"short");
                assert_eq!(c.response.end, "eof");
            })],
        },
        RawCase {
            name: "truncated_chunked",
            answer: raw_answer(ok, "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n"),
            steps: vec![get("/").expect(200, "A").check(|c| {
                assert_eq!(c.response.body, b"hello");
                assert_eq!(c.response.end, "eof", "no final chunk, connection closed");
            })],
        },
        RawCase {
            name: "head_with_a_body_from_the_backend",
            answer: raw_answer(ok, "Content-Length: 5\r\n", "hello"),
            steps: vec![req("HEAD", "/", None).linger().expect(200, "A").check(|c| {
                assert!(c.response.body.is_empty());
                assert!(c.response.after.is_empty());
            })],
        },
        RawCase {
            // proxy_noclose.t: a complete Content-Length answer is delivered without waiting for close.
            name: "no_close_after_length",
            answer: Behaviour::RawNoClose(
                b"HTTP/1.1 200 OK\r\nX-Backend: A\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            ),
            // The backend holds its end open for 30 s and both proxies read for 60 s: a body
            // complete within the step's 5 s was not held back until a close.
            steps: vec![get("/").expect(200, "A").check(|c| {
                assert_eq!(c.response.body, b"hello");
                assert_eq!(c.response.end, "complete", "{:?}", c.response);
            })],
        },
        RawCase {
            name: "no_content_204",
            answer: Behaviour::raw("HTTP/1.1 204 No Content\r\nX-Backend: A\r\n\r\n"),
            steps: vec![get("/").expect(204, "A")],
        },
    ]);
}

#[test]
fn questionable_response_framing() {
    // nginx 1.22.1 rejects only an oversized header (> 4 KiB, proxy_buffer_size) with 502. The
    // framing checks of nginx-tests proxy_duplicate_headers.t (502 for invalid or duplicate
    // Content-Length, unknown Transfer-Encoding, CL with TE) came with 1.23.0; 1.22.1 reads an
    // invalid CL or an unknown TE as "until close", takes the last of two CLs, and lets chunked win
    // over CL (lb.md LB-12 describes the newer nginx).
    let ok = "HTTP/1.1 200 OK";
    let big = format!("X-Big: {}\r\n", "b".repeat(5000));
    let body_is = |want: &'static [u8]| move |c: &Capture| assert_eq!(c.response.body, want);
    let cases: Vec<(&'static str, Behaviour, u16, &'static [u8])> = vec![
        ("invalid_length", raw_answer(ok, "Content-Length: abc\r\n", "hello"), 200, b"hello"),
        (
            "duplicate_different_length",
            raw_answer(ok, "Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            200,
            b"hello!",
        ),
        ("unknown_transfer_encoding", raw_answer(ok, "Transfer-Encoding: gzip\r\n", "hello"), 200, b"hello"),
        (
            "length_and_chunked",
            raw_answer(ok, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            200,
            b"hello",
        ),
        (
            "chunked_and_length",
            raw_answer(ok, "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            200,
            b"hello",
        ),
        ("header_over_4k", raw_answer(ok, &big, ""), 502, b""),
    ];
    let mut all: Vec<RawCase> = cases
        .into_iter()
        .map(|(name, answer, status, body)| {
            let steps = if status == 502 {
                vec![get("/").expect(502, "A"), post("/").expect(502, "A")]
            } else {
                // Deviation: we answer 502 for ambiguous framing, as nginx does since 1.23.0;
                // passing it through would leave the body length to a guess.
                const NOTE: &str = "ambiguous response framing gets 502 (nginx >= 1.23.0 behaviour, lb.md LB-12)";
                vec![
                    get("/").expect(status, "A").check(body_is(body)).ours(502, "A", NOTE),
                    post("/").expect(status, "A").check(body_is(body)).ours(502, "A", NOTE),
                ]
            };
            RawCase { name, answer, steps }
        })
        .collect();
    all.push(RawCase {
        // nginx passes a non-HTTP answer through as HTTP/0.9 and keeps the connection open.
        name: "not_http",
        answer: Behaviour::raw("garbage\r\n\r\n"),
        steps: vec![get("/").timeout(Duration::from_secs(1)).expect(0, "A").ours(
            502,
            "A",
            "lb.md §1.7: nginx's HTTP/0.9 pass-through of a non-HTTP answer is not copied",
        )],
    });
    run_raw_cases(all);
}

#[test]
fn expect_100_continue() {
    let head = |version: &str, expect: &str| {
        format!("POST / {version}\r\nHost: lbtest\r\nExpect: {expect}\r\nContent-Length: 5\r\n\r\n")
    };
    let no_expect_upstream = |c: &Capture| {
        let s = body_seen(c, 0);
        assert_eq!(s.header("expect"), None);
        assert_eq!(s.body, b"hello");
    };
    Scenario::excp("expect", ok(), ok())
        .step(
            raw("HTTP/1.1 Expect: 100-continue", &head("HTTP/1.1", "100-continue"), b"hello")
                .wait_100()
                .expect(200, "A")
                .check(move |c| {
                    assert_eq!(c.response.interim, [100]);
                    no_expect_upstream(c);
                }),
        )
        .step(
            raw("HTTP/1.1 Expect: 100-Continue", &head("HTTP/1.1", "100-Continue"), b"hello")
                .wait_100()
                .expect(200, "B")
                .check(move |c| {
                    assert_eq!(c.response.interim, [100]);
                    no_expect_upstream(c);
                }),
        )
        .step(raw("HTTP/1.1 Expect: foo", &head("HTTP/1.1", "foo"), b"hello").expect(200, "A").check(move |c| {
            assert!(c.response.interim.is_empty());
            no_expect_upstream(c);
        }))
        .step(raw("HTTP/1.0 Expect: 100-continue", &head("HTTP/1.0", "100-continue"), b"hello").expect(200, "B").check(
            move |c| {
                assert!(c.response.interim.is_empty());
                no_expect_upstream(c);
            },
        ))
        .run();
}

#[test]
fn malformed_client_requests() {
    // lb.md §3 / LB-25..27: answered by the proxy, no backend contacted. Each case runs on fresh
    // proxies, so a case one proxy lets through cannot shift the rotation of the next.
    let h = |s: &str| s.to_string();
    let big_header = format!("GET / HTTP/1.1\r\nHost: lbtest\r\nX-Big: {}\r\n\r\n", "h".repeat(9 * 1024));
    let big_uri = format!("GET /{} HTTP/1.1\r\nHost: lbtest\r\n\r\n", "u".repeat(9 * 1024));
    let many_big = format!(
        "GET / HTTP/1.1\r\nHost: lbtest\r\n{}\r\n",
        (0..5).map(|i| format!("X-Big{i}: {}\r\n", "m".repeat(7 * 1024))).collect::<String>()
    );
    let many_small = format!(
        "GET / HTTP/1.1\r\nHost: lbtest\r\n{}\r\n",
        (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect::<String>()
    );
    let post = |extra: &str| format!("POST / HTTP/1.1\r\nHost: lbtest\r\n{extra}\r\n");
    let chunked_body: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";
    let many_trailers =
        format!("5\r\nhello\r\n0\r\n{}\r\n", (0..40).map(|i| format!("X-T{i}: {i}\r\n")).collect::<String>())
            .into_bytes();
    let steps = vec![
        raw("CL and TE", &post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), chunked_body).expect(400, ""),
        raw("TE gzip, chunked", &post("Transfer-Encoding: gzip, chunked\r\n"), chunked_body).expect(501, ""),
        raw("TE twice", &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), chunked_body)
            .expect(400, ""),
        raw("TE on HTTP/1.0", &h("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), chunked_body)
            .expect(400, ""),
        raw("duplicate CL", &post("Content-Length: 5\r\nContent-Length: 5\r\n"), b"hello").expect(400, ""),
        raw("CL list", &post("Content-Length: 5, 5\r\n"), b"hello").expect(400, ""),
        raw("CL +5", &post("Content-Length: +5\r\n"), b"hello").expect(400, ""),
        raw("HTTP/1.1 without Host", &h("GET / HTTP/1.1\r\n\r\n"), b"").expect(400, ""),
        raw("9 KiB header line", &big_header, b"").expect(400, ""),
        raw("9 KiB URI", &big_uri, b"").expect(414, ""),
        raw("5 x 7 KiB headers", &many_big, b"").expect(400, ""),
        raw("150 small headers", &many_small, b"").expect(200, "A"),
        raw("h2c preface", &h("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), b"").expect(400, ""),
        raw("space in URI", &h("GET /a b HTTP/1.1\r\nHost: lbtest\r\n\r\n"), b"").expect(400, ""),
        raw("%00", &h("GET /a%00b HTTP/1.1\r\nHost: lbtest\r\n\r\n"), b"").expect(400, ""),
        raw("bad % escape", &h("GET /a%zz HTTP/1.1\r\nHost: lbtest\r\n\r\n"), b"").expect(400, ""),
        raw("/../ above root", &h("GET /../x HTTP/1.1\r\nHost: lbtest\r\n\r\n"), b"").expect(400, ""),
        raw("duplicate Host", &h("GET / HTTP/1.1\r\nHost: lbtest\r\nHost: other\r\n\r\n"), b"").expect(400, ""),
        raw("lowercase method", &h("get / HTTP/1.1\r\nHost: lbtest\r\n\r\n"), b"").expect(400, ""),
        raw("chunk size above the body limit", &post("Transfer-Encoding: chunked\r\n"), b"200000\r\nhello")
            .expect(413, ""),
        raw("bare LF in a chunk extension", &post("Transfer-Encoding: chunked\r\n"), b"5;x=y\nhello\r\n0\r\n\r\n")
            .expect(200, "A")
            .ours(400, "", "bare LF in chunked framing is refused, as nginx does since 1.29.4 (lb.md LB-29)"),
        raw(
            "bare LF in a trailer",
            &post("Transfer-Encoding: chunked\r\n"),
            b"5\r\nhello\r\n0\r\nX-T: 1\nX-U: 2\r\n\r\n",
        )
        .expect(200, "A")
        .ours(400, "", "bare LF in a trailer is refused, as nginx does since 1.29.4"),
        raw("40 trailers", &post("Transfer-Encoding: chunked\r\n"), &many_trailers).expect(200, "A").ours(
            400,
            "",
            "more than 32 trailer lines or 8 KiB of trailers are refused (nginx 1.29.4 bounds them too)",
        ),
        raw("bare LF in a chunked body", &post("Transfer-Encoding: chunked\r\n"), b"5\nhello\n0\n\n")
            .expect(200, "A")
            .check(|c| assert_eq!(body_seen(c, 0).body, b"hello"))
            .ours(400, "", "bare LF in chunked framing is refused, as nginx does since 1.29.4 (lb.md LB-29)"),
    ];
    run_each(steps.into_iter().map(|step| Scenario::excp("badrequest", ok(), ok()).step(step)).collect());
}

/// Runs every scenario, each on fresh proxies, and reports all failures together.
fn run_each(scenarios: Vec<Scenario>) {
    let mut failures = Vec::new();
    for s in scenarios {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.run())) {
            failures.push(panic_text(&e));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Differential fuzz (issue 17): generated request heads and chunked bodies, each sent to nginx
// and to exec-allinone in front of the same backends; every status that differs is reported.

/// A small deterministic generator, so a disagreement names a reproducible case.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() % items.len()]
    }
}

/// One generated request: a valid head and body with, most of the time, one or two parts
/// swapped for a hostile variant.
fn generated_request(rng: &mut Lcg) -> (String, Vec<u8>) {
    // Each slot: the valid choices first, then hostile ones; `odd` picks a hostile one.
    let odd = |rng: &mut Lcg, valid: &[&'static str], hostile: &[&'static str]| -> &'static str {
        if rng.next() % 5 == 0 { rng.pick(hostile) } else { rng.pick(valid) }
    };
    let method =
        odd(rng, &["GET", "POST", "PUT", "HEAD", "DELETE", "PROPFIND"], &["get", "Post", "G_T", "GE T", "", "GET\t"]);
    let target = odd(
        rng,
        &["/", "/a", "/a/b?c=d", "/%41"],
        &["/a/../b", "/a%2fb", "*", "http://lbtest/x", "/a#f", "//x", "/\x7f", "/a%zz"],
    );
    let version =
        odd(rng, &["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"], &["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/1."]);
    let eol = odd(rng, &["\r\n"], &["\n"]);
    let mut head = format!("{method} {target} {version}{eol}");
    if odd(rng, &["host"], &["none"]) == "host" {
        head.push_str(&format!("Host: lbtest{eol}"));
    }
    for _ in 0..rng.next() % 3 {
        let line = odd(
            rng,
            &["X-A: 1", "Accept: */*", "Connection: keep-alive", "X-Empty:"],
            &[
                "Host: other",
                "Host:",
                "X-A : 1",
                " X-Folded: 1",
                "Bad Name: 1",
                "X-Ctl: a\x01b",
                "Expect: 200-ok",
                "Upgrade: h2c",
                "X_Under: 1",
                ":authority: x",
                "Content-Length: -1",
                "Content-Length: 00005",
                "Transfer-Encoding: identity",
                "Transfer-Encoding: chunked, chunked",
                "Connection: close",
            ],
        );
        head.push_str(line);
        head.push_str(eol);
    }
    let framing =
        if method == "POST" || method == "PUT" { odd(rng, &["length", "chunked"], &["none"]) } else { "none" };
    let body: Vec<u8> = match framing {
        "length" => {
            head.push_str(&format!("Content-Length: 5{eol}"));
            b"hello".to_vec()
        }
        "chunked" => {
            head.push_str(&format!("Transfer-Encoding: chunked{eol}"));
            let size =
                odd(rng, &["5", "05", "5;ext=1"], &["5 ", "5;e", "+5", "0x5", "5\t", "ffffffffffffffffffff", "A", "a"]);
            let trailer = odd(rng, &["", "X-T: 1\r\n"], &["X-T 1\r\n", ": x\r\n"]);
            format!("{size}\r\nhello\r\n0\r\n{trailer}\r\n").into_bytes()
        }
        _ => Vec::new(),
    };
    head.push_str(eol);
    (head, body)
}

/// Whether a disagreement is one the README records as a difference from nginx 1.22.
fn documented_difference(head: &str, body: &[u8], nginx: u16, ours: u16) -> bool {
    let bare_lf_in_chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked")
        && body.windows(2).enumerate().any(|(i, w)| w[1] == b'\n' && (w[0] != b'\r' || i == 0 && body[0] == b'\n'));
    let first_line = head.split('\n').next().unwrap_or("").trim_end_matches('\r');
    // Stricter than nginx, recorded in the README: a version HTTP/1.2 to 1.9 (nginx takes it
    // as 1.1), blanks after the version, a control character in a header value: 400.
    let odd_version = ["HTTP/1.2", "HTTP/1.3", "HTTP/1.9"].iter().any(|v| first_line.ends_with(v));
    let blank_after_version = first_line.ends_with(' ') || first_line.ends_with('\t');
    let control_in_value = head.lines().skip(1).any(|l| l.bytes().any(|b| b < 0x20 && b != b'\t' && b != b'\r'));
    let stricter = (odd_version || blank_after_version || control_in_value) && ours == 400;
    (bare_lf_in_chunked && ours == 400 && nginx != 400) || stricter
}

#[test]
fn differential_fuzz_against_nginx() {
    let binary = nginx::binary();
    let mut backends = Backends::new();
    let scenario = Scenario::excp("fuzz", ok(), ok());
    for (name, behaviour, _) in &scenario.peers {
        backends.add(name, behaviour.clone());
    }
    let nginx = Nginx::start("fuzz", &binary, &scenario.nginx_http(&backends));
    let dir = TempDir::new("lb-fuzz");
    let config = dir.join("lb.toml");
    std::fs::write(&config, scenario.toml(&backends)).unwrap();
    let proc = Proc::start(&["--role", "lb", "--config", config.to_str().unwrap()]);
    let ours = proc.addr("lb.excp");
    // LB_FUZZ_SEED and LB_FUZZ_CASES run other or more cases by hand; CI runs these 300.
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut rng = Lcg(env("LB_FUZZ_SEED", 1722));
    let mut disagreements = Vec::new();
    let mut agreed = std::collections::BTreeMap::new();
    for i in 0..env("LB_FUZZ_CASES", 300) {
        let (head, body) = generated_request(&mut rng);
        let mut step = raw(&format!("case {i}"), &head, &body);
        step.timeout = Duration::from_millis(1500);
        let theirs = exchange(nginx.addr, &step);
        let mine = exchange(ours, &step);
        backends.take();
        if theirs.status == mine.status {
            *agreed.entry(theirs.status).or_insert(0) += 1;
        } else if !documented_difference(&head, &body, theirs.status, mine.status) {
            disagreements.push(format!(
                "case {i}: nginx {} / ours {}: {:?} {:?}",
                theirs.status,
                mine.status,
                head,
                String::from_utf8_lossy(&body)
            ));
        }
    }
    eprintln!("differential fuzz: statuses agreed {agreed:?}");
    assert!(agreed.len() >= 3, "the generator must reach several answers, not one: {agreed:?}");
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s) with nginx:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Consistent hash (`hash $request_uri consistent`)

/// Sends each URI in turn through `addr` and returns, per URI, the peers tried in order (from
/// the proxy's access log) and the backend that answered.
fn route_each(
    addr: SocketAddr,
    uris: &[String],
    backends: &Backends,
    access: &dyn Fn() -> Vec<AccessLine>,
) -> Vec<(Vec<String>, String)> {
    let c = crate::support::client();
    let mut out = Vec::new();
    for uri in uris {
        let r = c.get(format!("http://{addr}{uri}")).send().unwrap();
        assert_eq!(r.status(), 200, "{uri}");
        let answered = r.text().unwrap();
        out.push((Vec::new(), answered));
    }
    // The log lines come in request order, one per request (written at each request's end).
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = access();
        if lines.len() >= uris.len() || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), uris.len(), "an access-log line per request");
    let names: std::collections::HashMap<String, String> =
        ["A", "B", "C"].iter().map(|n| (backends.addr(n).to_string(), n.to_string())).collect();
    for ((tried, _), line) in out.iter_mut().zip(lines) {
        *tried = line.upstream_addr.iter().map(|a| names.get(a).cloned().unwrap_or_else(|| a.clone())).collect();
    }
    out
}

/// nginx and exec-allinone send each of 80 recording paths to the same peer under
/// `hash $request_uri consistent` (weights 1, 2, 1), and when one peer refuses, move each of
/// its paths on to the same next peer: the lb can put one WebDAV front end in charge of each
/// path, as nginx would.
#[test]
fn consistent_hash_sends_each_uri_where_nginx_does() {
    let binary = nginx::binary();
    let uris: Vec<String> =
        (0..80).map(|i| format!("/recordings/SIM{:05}C{:05}_{}.opus", i * 7919 % 100_000, i, i % 3)).collect();
    for refusing in [false, true] {
        let mut backends = Backends::new();
        backends.add("A", ok());
        backends.add("B", if refusing { Behaviour::Refuse } else { ok() });
        backends.add("C", ok());
        let (a, b, c) = (backends.addr("A"), backends.addr("B"), backends.addr("C"));
        let http = format!(
            "upstream rec {{ hash $request_uri consistent; server {a} max_fails=0; server {b} weight=2 max_fails=0; \
             server {c} max_fails=0; }}\n\
             server {{ listen {{listen}}; location / {{ proxy_pass http://rec/; }} }}"
        );
        let nginx = Nginx::start(if refusing { "chash-refuse" } else { "chash" }, &binary, &http);
        let theirs = route_each(nginx.addr, &uris, &backends, &|| nginx.access_log());
        drop(nginx);
        backends.take();
        let dir = TempDir::new("lb-chash");
        let config = dir.join("lb.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n[lb.pools.rec]\nlisten = \"127.0.0.1:0\"\nhash = \"$request_uri consistent\"\n\
                 servers = [\"{a}\", {{ address = \"{b}\", weight = 2 }}, \"{c}\"]\n"
            ),
        )
        .unwrap();
        let proc = Proc::start(&["--role", "lb", "--log-format", "json", "--config", config.to_str().unwrap()]);
        let ours = route_each(proc.addr("lb.rec"), &uris, &backends, &|| our_access_log(&proc));
        for ((uri, t), o) in uris.iter().zip(&theirs).zip(&ours) {
            assert_eq!(t.0, o.0, "{uri}: nginx tried {:?}, exec-allinone {:?} (refusing B: {refusing})", t.0, o.0);
        }
        // All three take a share, B about twice A's, and with B refusing its paths go on.
        let first =
            |name: &str| ours.iter().filter(|(tried, _)| tried.first().map(String::as_str) == Some(name)).count();
        assert!(
            first("A") > 5 && first("B") > 15 && first("C") > 5,
            "A {} B {} C {}",
            first("A"),
            first("B"),
            first("C")
        );
        if refusing {
            assert!(ours.iter().all(|(tried, _)| tried.last().map(String::as_str) != Some("B")));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Unbuffered request bodies (`proxy_request_buffering off`)

/// With `proxy_request_buffering off` a body of known length goes to one peer as it arrives:
/// once the request went out there is nothing to send another (nginx: `u->request_sent &&
/// r->request_body_no_buffering`), so a PUT a peer drops is 502 where a buffered one moves on;
/// a peer refusing the connection got nothing, so the next one gets the whole body.
#[test]
fn an_unbuffered_body_goes_to_one_peer_and_on_only_when_nothing_was_sent() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let whole = body.clone();
    Scenario::excp("unbuffered", Behaviour::CloseAfterRead, ok())
        .set("proxy_request_buffering off;", "request_buffering = false")
        .step(req("PUT", "/r.opus", Some(&body)).expect(502, "A"))
        .step(req("PUT", "/r.opus", Some(&body)).expect(200, "B").check(move |c| {
            assert_eq!(c.seen.len(), 1);
            assert!(c.seen[0].body == whole, "the whole body, byte for byte");
            assert_eq!(c.seen[0].header("content-length"), Some("300000"));
        }))
        .run();
    Scenario::excp("unbuffered-refused", Behaviour::Refuse, ok())
        .set("proxy_request_buffering off;", "request_buffering = false")
        .step(req("PUT", "/r.opus", Some(&body)).expect(200, "A B"))
        .run();
}
