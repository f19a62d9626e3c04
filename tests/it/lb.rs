//! The lb beyond nginx parity: what `lb_parity.rs` cannot compare because nginx 1.22 OSS has no
//! such thing or because it is about our process — SIGHUP reload, start-up refusals,
//! import-nginx round trip, passive ejection, active probes, upstream keep-alive, metrics and
//! status, extra headers, graceful drain, several pools in one process.
//!
//! Every test runs the real binary (`--role lb --log-format json`) on loopback, port 0, in front
//! of the scriptable backends of `support/backend.rs`; a backend answers with its name as the
//! body, so the body says who served a request, and the access log (`upstream_addr`) says who
//! was tried. Timings are short (probes every 200 ms, fail_timeout 2 s) and every wait is
//! bounded by a deadline that leaves room for a loaded two-core machine.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::backend::{Backends, Behaviour, Gate, Seen};
use crate::support::{BIN, Proc, Raw, TempDir, metric, raw_request, tool, wait_timeout, wait_until};

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

// ---------------------------------------------------------------------------------------------
// Harness

/// `[lb.pools.<name>]` on port 0 with these servers and extra `key = value` lines.
fn pool(name: &str, servers: &[SocketAddr], extra: &[&str]) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "\n[lb.pools.{name}]\nlisten = \"127.0.0.1:0\"\nservers = [{}]\n{}\n",
        list.join(", "),
        extra.iter().map(|l| format!("{l}\n")).collect::<String>()
    )
}

/// A whole config: the admin listener on port 0 and the given pool tables.
fn config(pools: &[String]) -> String {
    format!("{ADMIN}{}", pools.concat())
}

/// A config file and the lb process running on it.
struct Lb {
    _dir: TempDir,
    path: PathBuf,
    proc: Proc,
}

impl Lb {
    fn start(name: &str, toml: &str) -> Lb {
        let dir = TempDir::new(&format!("lb-{name}"));
        let path = dir.join("lb.toml");
        std::fs::write(&path, toml).unwrap();
        let proc = Proc::start(&["--role", "lb", "--log-format", "json", "--config", path.to_str().unwrap()]);
        Lb { _dir: dir, path, proc }
    }

    fn addr(&self, pool: &str) -> SocketAddr {
        self.proc.addr(&format!("lb.{pool}"))
    }

    fn get(&self, pool: &str, path: &str) -> Reply {
        request(self.addr(pool), "GET", path, &[], b"")
    }

    /// Every JSON log line so far.
    fn events(&self) -> Vec<Value> {
        self.proc.logs().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Log lines whose message contains `needle`.
    fn logged(&self, needle: &str) -> Vec<Value> {
        self.events().into_iter().filter(|v| v["message"].as_str().is_some_and(|m| m.contains(needle))).collect()
    }

    /// Waits until more than `before` lines say `needle`.
    fn wait_logged(&self, needle: &str, before: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.logged(needle);
            if found.len() > before {
                return found;
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?} within 10 s; log:\n{}", self.tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Rewrites the config file, sends SIGHUP and waits for the log line that ends the reload.
    fn reload(&self, toml: &str, outcome: &str) -> Vec<Value> {
        std::fs::write(&self.path, toml).unwrap();
        let before = self.logged(outcome).len();
        self.proc.signal("HUP");
        self.wait_logged(outcome, before)
    }

    /// The access-log lines so far.
    fn access(&self) -> Vec<Access> {
        self.events().iter().filter(|v| v["target"] == "access").map(Access::of).collect()
    }

    /// The access-log lines once there are at least `n` (a line is written just after the
    /// response's last byte went out).
    fn wait_access(&self, n: usize) -> Vec<Access> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.access();
            if lines.len() >= n {
                return lines;
            }
            assert!(Instant::now() < deadline, "{} access lines, expected {n}; log:\n{}", lines.len(), self.tail());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET /health` on the admin listener: status code and JSON.
    fn health(&self) -> (u16, Value) {
        let reply = request(self.proc.addr("admin"), "GET", "/health", &[], b"");
        let json = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("health is not JSON ({e}): {reply:?}"));
        (reply.status, json)
    }

    /// The admin view of one peer of a pool (`address`, `state`, `fails`, `weight` ...).
    fn peer(&self, pool: &str, addr: SocketAddr) -> Value {
        let (_, json) = self.health();
        let peers = json["roles"]["lb"]["details"]["pools"][pool]["peers"].as_array().cloned().unwrap_or_default();
        peers
            .into_iter()
            .find(|p| p["address"] == addr.to_string())
            .unwrap_or_else(|| panic!("no peer {addr} in pool {pool}: {json}"))
    }

    fn state(&self, pool: &str, addr: SocketAddr) -> String {
        self.peer(pool, addr)["state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the peer's admin state is `want`; returns how long that took.
    fn wait_state(&self, pool: &str, addr: SocketAddr, want: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let state = self.state(pool, addr);
            if state == want {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "peer {addr} still {state:?}, not {want:?}, after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metrics(&self) -> String {
        request(self.proc.addr("admin"), "GET", "/metrics", &[], b"").body
    }

    fn tail(&self) -> String {
        let logs = self.proc.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A response as the client got it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// The backend's name when a backend answered.
    body: String,
}

/// One request on a fresh client connection (`Host: lbtest` unless `headers` has one).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: lbtest\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let (status, headers, body) = raw_request(addr, &head, body);
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// One access-log line.
#[derive(Debug, Clone)]
struct Access {
    status: u16,
    method: String,
    uri: String,
    complete: bool,
    upstream_addr: Vec<String>,
    upstream_status: Vec<String>,
}

impl Access {
    fn of(v: &Value) -> Access {
        let list = |v: &Value| match v.as_str() {
            None | Some("-") | Some("") => Vec::new(),
            Some(s) => s.split(", ").map(str::to_string).collect(),
        };
        Access {
            status: v["status"].as_u64().unwrap_or(0) as u16,
            method: v["method"].as_str().unwrap_or_default().to_string(),
            uri: v["uri"].as_str().unwrap_or_default().to_string(),
            complete: v["complete"].as_bool().unwrap_or(false),
            upstream_addr: list(&v["upstream_addr"]),
            upstream_status: list(&v["upstream_status"]),
        }
    }

    /// The peers tried, by backend name.
    fn tried(&self, backends: &Backends) -> Vec<String> {
        self.upstream_addr.iter().map(|a| backends.name_of(a).unwrap_or(a).to_string()).collect()
    }
}

/// Runs the binary to completion (bounded) and collects its output.
fn run_bin(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn exec-allinone");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("exec-allinone {args:?} did not exit within 20 s")
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    Output { status, stdout, stderr }
}

/// A listen address in a config that is never bound (the lb refuses to move a listener on
/// reload; import-nginx only copies it): a port no test would use.
const UNBOUND: &str = "127.0.0.1:1";

/// Requests the backends received, health probes left out.
fn client_requests(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.header("user-agent") != Some("exec-allinone-health")).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. SIGHUP reload

#[test]
fn sighup_reloads_servers_keeps_requests_in_flight_and_refuses_a_bad_file() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let b = backends.add("B", Behaviour::ok());
    let mut lb = Lb::start("reload", &config(&[pool("excp", &[a], &[])]));
    for _ in 0..2 {
        let r = lb.get("excp", "/before");
        assert_eq!((r.status, r.body.as_str()), (200, "A"));
        assert!(r.headers.contains(&("server".into(), "exec-allinone".into())), "{r:?}");
    }

    // A request in flight on A while the file switches the pool to B.
    let gate = Gate::default();
    backends.set("A", Behaviour::Held { gate: gate.clone() });
    let addr = lb.addr("excp");
    let in_flight = std::thread::spawn(move || request(addr, "GET", "/in-flight", &[], b""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backends.seen().iter().any(|s| s.target == "/in-flight") {
        assert!(Instant::now() < deadline, "A never got the in-flight request");
        std::thread::sleep(Duration::from_millis(10));
    }
    lb.reload(&config(&[pool("excp", &[b], &[])]), "SIGHUP: configuration reloaded");
    for _ in 0..3 {
        let r = lb.get("excp", "/after");
        assert_eq!((r.status, r.body.as_str()), (200, "B"), "after the reload the pool is [B]");
    }
    assert!(!in_flight.is_finished(), "the in-flight request ended before A answered");
    gate.open();
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "A"), "the request in flight finished on A");
    backends.set("A", Behaviour::ok());

    // A bad file is refused: the process keeps running on B and says why.
    let bad = format!("{ADMIN}\n[lb.pools.excp]\nlisten = \"127.0.0.1:0\"\nservers = [\"{a}\"]\nbogus = 1\n");
    let refused = lb.reload(&bad, "configuration refused");
    let message = refused.last().unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("lb.pools.excp.bogus"), "the refusal names the bad key: {message}");
    assert_eq!(refused.last().unwrap()["level"], "ERROR");
    assert!(lb.proc.child.try_wait().unwrap().is_none(), "still running after a refused reload");
    for _ in 0..2 {
        let r = lb.get("excp", "/still");
        assert_eq!((r.status, r.body.as_str()), (200, "B"), "the running config is kept");
    }

    // A new listen address needs a restart: said so, servers reloaded, the old listener serves.
    let moved = format!("{ADMIN}\n[lb.pools.excp]\nlisten = \"{UNBOUND}\"\nservers = [\"{a}\"]\n");
    let before = lb.logged("listen changed").len();
    lb.reload(&moved, "SIGHUP: configuration reloaded");
    let warned = lb.wait_logged("listen changed", before);
    let warning = warned.last().unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["pool"], "excp");
    assert!(warning["message"].as_str().unwrap().contains("restart"), "{warning}");
    let r = lb.get("excp", "/moved");
    assert_eq!((r.status, r.body.as_str()), (200, "A"), "servers reloaded, old listener kept");
    let status = lb.proc.stop();
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// 2. Start-up refusals

#[test]
fn an_unresolvable_server_exits_69_naming_pool_and_server() {
    let dir = TempDir::new("lb-dns");
    let path = dir.join("lb.toml");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let good = held.local_addr().unwrap();
    let text = format!(
        "{ADMIN}[lb.pools.excp]\nlisten = \"127.0.0.1:0\"\nservers = [\"{good}\", \"no-such-host.invalid:80\"]\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["--role", "lb", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "stderr: {err}");
    assert!(out.stdout.is_empty(), "nothing on stdout (no READY): {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("lb.pools.excp") && err.contains("no-such-host.invalid:80"), "{err}");
    assert!(err.contains("resolve"), "{err}");
}

#[test]
fn check_config_lists_every_bad_lb_key_and_exits_78() {
    let dir = TempDir::new("lb-check");
    let path = dir.join("lb.toml");
    let text = format!(
        "{ADMIN}[lb]\nconnect_timout = \"5s\"\n[lb.pools.excp]\nlisten = \"127.0.0.1:0\"\nservers = [\"127.0.0.1:9\"]\nnext_upstream_tries = \"three\"\nbogus = 1\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["check-config", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {err}");
    for needle in
        ["lb.connect_timout: unknown key", "lb.pools.excp.bogus: unknown key", "lb.pools.excp.next_upstream_tries"]
    {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // The same file makes the server itself exit 78 before binding anything.
    let out = run_bin(&["--role", "lb", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. import-nginx round trip

#[test]
fn import_nginx_output_runs_as_the_vendor_config_did() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let b = backends.add("B", Behaviour::ok());
    let dir = TempDir::new("lb-import");
    let listen = UNBOUND.to_string();
    let nginx = dir.join("nginx.conf");
    std::fs::write(
        &nginx,
        format!(
            "events {{}}\nhttp {{\n    upstream excp {{\n        server {a} max_fails=0;\n        server {b} max_fails=0;\n    }}\n    \
             server {{\n        listen {listen};\n        location / {{\n            proxy_pass http://excp/;\n            \
             proxy_next_upstream_tries 3;\n        }}\n    }}\n}}\n"
        ),
    )
    .unwrap();
    let out = run_bin(&["import-nginx", nginx.to_str().unwrap()]);
    let toml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "import-nginx failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(toml.contains("[lb.pools.excp]"), "{toml}");
    assert!(toml.contains(&format!("\"{a}\"")) && toml.contains(&format!("\"{b}\"")), "{toml}");
    assert!(toml.contains("next_upstream_tries = 3"), "{toml}");
    assert!(toml.contains(&format!("listen = \"{listen}\"")), "{toml}");

    // As an operator would: the admin listener added, the port made ours.
    let toml = format!("{}\n{ADMIN}", toml.replace(&listen, "127.0.0.1:0"));
    let path = dir.join("lb.toml");
    std::fs::write(&path, &toml).unwrap();
    let check = run_bin(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let proc = Proc::start(&["--role", "lb", "--config", path.to_str().unwrap()]);
    let bodies: Vec<String> =
        (0..4).map(|_| request(proc.addr("lb.excp"), "GET", "/", &[], b"")).map(|r| r.body).collect();
    assert_eq!(bodies, ["A", "B", "A", "B"], "round robin in config order");
    let upstream_hosts: Vec<String> =
        backends.seen().iter().map(|s| s.header("host").unwrap_or_default().to_string()).collect();
    assert!(upstream_hosts.iter().all(|h| h == "excp"), "Host is the upstream name: {upstream_hosts:?}");

    // What it cannot carry over is refused, clearly.
    let hashed = dir.join("hashed.conf");
    std::fs::write(
        &hashed,
        format!(
            "events {{}}\nhttp {{\n    upstream excp {{\n        ip_hash;\n        server {a} max_fails=0;\n    }}\n    \
             server {{ listen {listen}; location / {{ proxy_pass http://excp/; }} }}\n}}\n"
        ),
    )
    .unwrap();
    let out = run_bin(&["import-nginx", hashed.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {err}");
    assert!(out.stdout.is_empty(), "no TOML for a refused file");
    assert!(err.contains("ip_hash") && err.contains("hashed.conf:4"), "names the directive and its line: {err}");
}

// ---------------------------------------------------------------------------------------------
// 4. Passive ejection

#[test]
fn max_fails_ejects_a_refusing_server_for_fail_timeout() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::Refuse);
    let b = backends.add("B", Behaviour::ok());
    // fail_timeout is long enough that the first five requests fall inside it on a loaded
    // machine; its end is waited for, not slept.
    let lb = Lb::start("eject", &config(&[pool("excp", &[a, b], &["max_fails = 1", "fail_timeout = \"8s\""])]));

    let t0 = Instant::now();
    let r = lb.get("excp", "/1");
    assert_eq!((r.status, r.body.as_str()), (200, "B"));
    assert_eq!(lb.wait_access(1)[0].tried(&backends), ["A", "B"], "first request: A refused, then B");
    let view = lb.peer("excp", a);
    assert_eq!(view["state"], "ejected", "{view}");
    assert_eq!(view["fails"], 1, "{view}");
    assert_eq!(view["weight"], 1, "{view}");
    assert_eq!(lb.state("excp", b), "up");
    let (code, health) = lb.health();
    assert_eq!((code, health["status"].as_str()), (200, Some("UP")), "B is left: {health}");
    assert_eq!(lb.logged("upstream server temporarily disabled").len(), 1);

    for i in 2..=5 {
        let r = lb.get("excp", &format!("/{i}"));
        assert_eq!((r.status, r.body.as_str()), (200, "B"));
    }
    // Still ejected after the fifth: all four fell inside fail_timeout.
    assert_eq!(lb.state("excp", a), "ejected", "fail_timeout ran out during requests 2 to 5");
    // A line is written once its response is out: found by URI, not by place.
    let lines = lb.wait_access(5);
    for line in lines.iter().filter(|l| l.uri != "/1") {
        assert_eq!(line.tried(&backends), ["B"], "A is not tried while ejected: {line:?}");
    }

    // fail_timeout over: A gets a chance again (smooth round robin brings it up within three).
    lb.wait_state("excp", a, "up", Duration::from_secs(20));
    assert!(t0.elapsed() >= Duration::from_secs(8), "ejected for less than fail_timeout");
    let mut tried_a = false;
    for i in 6..=9 {
        let r = lb.get("excp", &format!("/{i}"));
        assert_eq!((r.status, r.body.as_str()), (200, "B"));
        let lines = lb.wait_access(i);
        let line = lines.iter().find(|l| l.uri == format!("/{i}")).expect("a line for the request");
        tried_a |= line.tried(&backends).first().map(String::as_str) == Some("A");
        if tried_a {
            break;
        }
    }
    assert!(tried_a, "A was not tried again after fail_timeout: {:?}", lb.access());
    assert_eq!(lb.state("excp", a), "ejected", "A failed again");
}

// ---------------------------------------------------------------------------------------------
// 5. Active health probes

#[test]
fn failing_health_probes_take_a_server_out_and_passing_ones_bring_it_back() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::with_health(Behaviour::status(503), Behaviour::ok()));
    let b = backends.add("B", Behaviour::with_health(Behaviour::ok(), Behaviour::ok()));
    let lb = Lb::start("probes", &config(&[pool("excp", &[a, b], &["health_check_interval = \"200ms\""])]));
    lb.wait_state("excp", a, "unhealthy", Duration::from_secs(20));
    assert_eq!(lb.state("excp", b), "up");
    assert_eq!(lb.logged("peer out of rotation").len(), 1, "{}", lb.tail());
    let probes: Vec<Seen> = backends.seen().into_iter().filter(|s| s.target == "/health").collect();
    assert!(probes.iter().any(|s| s.backend == "A") && probes.iter().any(|s| s.backend == "B"));
    assert!(probes.iter().all(|s| s.method == "GET"), "{probes:?}");

    backends.take();
    for _ in 0..6 {
        let r = lb.get("excp", "/work");
        assert_eq!((r.status, r.body.as_str()), (200, "B"), "A fails its probes: only B serves");
    }
    assert!(
        client_requests(&backends.take()).iter().all(|s| s.backend == "B"),
        "no client request reached A while unhealthy"
    );
    let metrics = lb.metrics();
    let up = |addr: SocketAddr| metric(&metrics, "lb_upstream_up", &[("pool", "excp"), ("peer", &addr.to_string())]);
    assert_eq!(up(a), Some(0.0), "{metrics}");
    assert_eq!(up(b), Some(1.0), "{metrics}");

    // A's /health passes again: it comes back.
    backends.set("A", Behaviour::with_health(Behaviour::ok(), Behaviour::ok()));
    lb.wait_state("excp", a, "up", Duration::from_secs(3));
    assert_eq!(lb.logged("peer back in rotation").len(), 1);
    let bodies: Vec<String> = (0..4).map(|_| lb.get("excp", "/back").body).collect();
    assert!(bodies.contains(&"A".to_string()) && bodies.contains(&"B".to_string()), "{bodies:?}");

    // Every server fails its probes: the probes are more likely wrong than every backend, so
    // requests are still tried (fail open).
    backends.set("A", Behaviour::with_health(Behaviour::status(503), Behaviour::ok()));
    backends.set("B", Behaviour::with_health(Behaviour::status(500), Behaviour::ok()));
    lb.wait_state("excp", a, "unhealthy", Duration::from_secs(3));
    lb.wait_state("excp", b, "unhealthy", Duration::from_secs(3));
    let bodies: Vec<String> = (0..4)
        .map(|_| {
            let r = lb.get("excp", "/open");
            assert_eq!(r.status, 200, "fail open: {r:?}");
            r.body
        })
        .collect();
    assert!(bodies.contains(&"A".to_string()) && bodies.contains(&"B".to_string()), "{bodies:?}");
}

#[test]
fn health_probes_use_the_configured_path_and_thresholds() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::route(&[("/ready", Behaviour::status(503))], Behaviour::ok()));
    let b = backends.add("B", Behaviour::ok());
    let lb = Lb::start(
        "probe-path",
        &config(&[pool(
            "excp",
            &[a, b],
            &[
                "health_check_interval = \"100ms\"",
                "health_check_path = \"/ready\"",
                "health_check_fails = 3",
                "health_check_passes = 2",
            ],
        )]),
    );
    lb.wait_state("excp", a, "unhealthy", Duration::from_secs(3));
    let probes_of_a = |seen: &[Seen]| seen.iter().filter(|s| s.backend == "A" && s.target == "/ready").count();
    assert!(probes_of_a(&backends.seen()) >= 3, "three failed probes in a row before A leaves");
    assert!(backends.seen().iter().all(|s| s.target == "/ready"), "probes ask for health_check_path");
    backends.set("A", Behaviour::ok());
    lb.wait_state("excp", a, "up", Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------
// 6. Upstream keep-alive

#[test]
fn keepalive_reuses_upstream_connections() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let b = backends.add("B", Behaviour::keep_alive());
    let lb = Lb::start("keepalive", &config(&[pool("excp", &[a, b], &["keepalive = true"])]));
    for i in 0..10 {
        let r = lb.get("excp", &format!("/{i}"));
        assert_eq!((r.status, r.body.as_str()), (200, if i % 2 == 0 { "A" } else { "B" }));
    }
    let seen = backends.seen();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(s.version, "HTTP/1.1", "{}", s.request_line);
        assert!(!s.asks_close(), "no Connection: close upstream: {:?}", s.headers);
    }
    let connections = backends.connections("A") + backends.connections("B");
    assert!(connections <= 2, "10 requests over {connections} upstream connections: {seen:?}");
    assert!(seen.iter().any(|s| s.on_connection >= 5), "connections were reused");
    // Both connections wait in the pool (put back just after each response).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, health) = lb.health();
        let idle = health["roles"]["lb"]["details"]["pools"]["excp"]["idleConnections"].as_u64();
        if idle == Some(connections) {
            break;
        }
        assert!(Instant::now() < deadline, "idleConnections {idle:?}, expected {connections}: {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_keepalive_every_attempt_is_a_new_http10_connection() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let b = backends.add("B", Behaviour::keep_alive());
    let lb = Lb::start("no-keepalive", &config(&[pool("excp", &[a, b], &["keepalive = false"])]));
    for _ in 0..6 {
        assert_eq!(lb.get("excp", "/").status, 200);
    }
    let seen = backends.seen();
    assert_eq!(seen.len(), 6);
    for s in &seen {
        assert_eq!(s.version, "HTTP/1.0", "{}", s.request_line);
        assert_eq!(s.header("connection"), Some("close"));
        assert_eq!(s.on_connection, 1, "one request per connection");
    }
    assert_eq!(backends.connections("A") + backends.connections("B"), 6);
}

#[test]
fn a_stale_pooled_connection_never_loses_or_repeats_a_post() {
    let mut backends = Backends::new();
    // The backends drop idle connections after 100 ms, the lb would keep them 60 s.
    let a = backends.add("A", Behaviour::keep_alive_closing_idle(Duration::from_millis(100)));
    let b = backends.add("B", Behaviour::keep_alive_closing_idle(Duration::from_millis(100)));
    let lb = Lb::start("stale", &config(&[pool("excp", &[a, b], &["keepalive = true"])]));
    let n = 8;
    for i in 0..n {
        if i > 0 {
            // Every connection used so far has been closed by its backend, idle.
            wait_until("the backends to close their idle connections", Duration::from_secs(10), || {
                backends.idle_closed.lock().unwrap().len() >= i
            });
        }
        let body = format!("{{\"id\":\"{i}\"}}");
        let r = request(lb.addr("excp"), "POST", "/api/v1/recording", &[], body.as_bytes());
        assert_eq!(r.status, 200, "POST {i} after the backend closed the pooled connection: {r:?}\n{}", lb.tail());
    }
    let seen = backends.seen();
    for i in 0..n {
        let body = format!("{{\"id\":\"{i}\"}}");
        let got: Vec<&Seen> = seen.iter().filter(|s| s.body == body.as_bytes()).collect();
        assert_eq!(got.len(), 1, "POST {i} reached the backends {} times: {got:?}", got.len());
        assert!(got[0].complete && got[0].method == "POST");
    }
    assert!(seen.iter().all(|s| s.on_connection == 1), "every pooled connection was closed by the backend meanwhile");
    let lines = lb.wait_access(n);
    for line in &lines {
        assert_eq!(line.status, 200);
        assert_eq!(line.upstream_addr.len(), 1, "one attempt per POST: {line:?}");
    }
    let warnings: Vec<Value> = lb.events().into_iter().filter(|v| v["level"] == "WARN").collect();
    assert!(warnings.is_empty(), "no attempt failed: {warnings:?}");
}

#[test]
fn keepalive_requests_bounds_the_requests_per_connection() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let lb = Lb::start("ka-requests", &config(&[pool("excp", &[a], &["keepalive = true", "keepalive_requests = 3"])]));
    for _ in 0..7 {
        assert_eq!(lb.get("excp", "/").body, "A");
    }
    let seen = backends.seen();
    let connections = backends.connections("A");
    assert!(connections >= 3, "7 requests, at most 3 per connection: {seen:?}");
    let mut used_up = 0;
    for c in 1..=connections {
        let on_c: Vec<u64> = seen.iter().filter(|s| s.connection == c).map(|s| s.on_connection).collect();
        assert!(on_c.len() <= 3, "connection {c} carried {} requests: {seen:?}", on_c.len());
        assert_eq!(on_c, (1..=on_c.len() as u64).collect::<Vec<_>>());
        used_up += usize::from(on_c.len() == 3);
    }
    assert!(used_up >= 1, "{seen:?}");
    // The lb closes a connection once it has carried its third request (and only those: the
    // others wait in the pool).
    let idle = connections - used_up as u64;
    wait_until("the used-up connections to close and the rest to wait in the pool", Duration::from_secs(10), || {
        let (_, health) = lb.health();
        backends.closed.lock().unwrap().len() >= used_up
            && health["roles"]["lb"]["details"]["pools"]["excp"]["idleConnections"].as_u64() == Some(idle)
    });
    assert_eq!(backends.take_closed().len(), used_up, "the used-up connections were closed by the lb: {seen:?}");
}

/// nginx puts a connection back into the cache when the response has been read, before the
/// next request can come: back-to-back requests to one server use one connection.
#[test]
fn back_to_back_requests_to_one_server_reuse_one_connection() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let lb = Lb::start("ka-reuse", &config(&[pool("excp", &[a], &["keepalive = true"])]));
    for _ in 0..5 {
        assert_eq!(lb.get("excp", "/").body, "A");
    }
    let per_connection: Vec<u64> = backends.seen().iter().map(|s| s.on_connection).collect();
    assert_eq!(per_connection, [1, 2, 3, 4, 5]);
    assert_eq!(backends.connections("A"), 1);
}

/// `[lb] workers` threads serve the pools, each accepting client connections; a pooled
/// upstream connection is reused whichever worker accepted the client (its own list first,
/// then the others'), so sequential requests still need one upstream connection.
#[test]
fn workers_serve_the_pools_and_share_idle_connections() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let toml = format!("{ADMIN}[lb]\nworkers = 3\n{}", pool("excp", &[a], &["keepalive = true"]));
    let lb = Lb::start("workers", &toml);
    let task_dir = format!("/proc/{}/task", lb.proc.child.id());
    let workers = || {
        std::fs::read_dir(&task_dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("lb-worker-"))
            .count()
    };
    // The listeners are bound before READY; the threads that accept on them start just after.
    wait_until("3 threads named lb-worker-*", Duration::from_secs(5), || workers() == 3);
    for _ in 0..12 {
        assert_eq!(lb.get("excp", "/").body, "A");
    }
    assert_eq!(workers(), 3, "threads named lb-worker-* in {task_dir}, after serving");
    assert_eq!(backends.connections("A"), 1, "{:?}", backends.seen());
}

/// `keepalive_connections` bounds the idle connections of all the workers together, also when
/// connections move to the worker that takes them from another's list.
#[test]
fn keepalive_connections_bounds_the_idle_connections_of_all_workers() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let settings = ["keepalive = true", "keepalive_connections = 1"];
    let toml = format!("{ADMIN}[lb]\nworkers = 2\n{}", pool("excp", &[a], &settings));
    let lb = Lb::start("ka-bound", &toml);
    // Eight clients at once need more than one upstream connection at a time.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..25 {
                    assert_eq!(lb.get("excp", "/").body, "A");
                }
            });
        }
    });
    let opened = backends.connections("A");
    assert!(opened > 1, "the load needed {opened} upstream connections; the bound is not exercised");
    let (_, health) = lb.health();
    let idle = health["roles"]["lb"]["details"]["pools"]["excp"]["idleConnections"].as_u64().unwrap();
    assert_eq!(idle, 1, "idle connections kept with a bound of 1 ({opened} opened)");
}

/// example.toml: `keepalive_timeout`: "an idle pooled connection is closed after this"; nginx
/// closes it on a timer. The lb only drops an expired connection when a later request to the
/// same server looks at the pool, so until then it stays open (the backend holds a socket).
#[test]
fn keepalive_timeout_closes_idle_pooled_connections() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let lb =
        Lb::start("ka-timeout", &config(&[pool("excp", &[a], &["keepalive = true", "keepalive_timeout = \"300ms\""])]));
    assert_eq!(lb.get("excp", "/").body, "A");
    let deadline = Instant::now() + Duration::from_secs(3);
    while backends.closed.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backends.take_closed(), ["A"], "the idle connection is still open 3 s later");
    assert_eq!(lb.get("excp", "/").body, "A");
    assert_eq!(backends.connections("A"), 2);
}

/// What the lb does do with keepalive_timeout: an expired pooled connection is never reused.
#[test]
fn an_expired_pooled_connection_is_not_reused() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::keep_alive());
    let lb =
        Lb::start("ka-expired", &config(&[pool("excp", &[a], &["keepalive = true", "keepalive_timeout = \"300ms\""])]));
    assert_eq!(lb.get("excp", "/").body, "A");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lb.get("excp", "/").body, "A");
    let seen = backends.seen();
    assert_eq!(seen.iter().map(|s| s.on_connection).collect::<Vec<_>>(), [1, 1], "{seen:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while backends.closed.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(backends.take_closed(), ["A"], "the expired connection was closed when found");
}

// ---------------------------------------------------------------------------------------------
// 7. Metrics and status

#[test]
fn metrics_and_health_show_requests_attempts_failures_and_retries() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::Refuse);
    let b = backends.add("B", Behaviour::ok());
    let lb = Lb::start("metrics", &config(&[pool("excp", &[a, b], &["next_upstream_tries = 3"])]));
    for _ in 0..4 {
        assert_eq!(lb.get("excp", "/m").body, "B");
    }
    lb.wait_access(4);
    let m = lb.metrics();
    let (pa, pb) = (a.to_string(), b.to_string());
    let get = |name: &str, labels: &[(&str, &str)]| {
        metric(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{m}"))
    };
    assert_eq!(get("lb_requests_total", &[("pool", "excp"), ("status", "200")]), 4.0);
    // A B alternate, A refuses: A✗B, B, A✗B, B.
    assert_eq!(get("lb_upstream_attempts_total", &[("pool", "excp"), ("peer", &pa)]), 2.0);
    assert_eq!(get("lb_upstream_attempts_total", &[("pool", "excp"), ("peer", &pb)]), 4.0);
    assert_eq!(get("lb_upstream_failures_total", &[("pool", "excp"), ("peer", &pa), ("class", "error")]), 2.0);
    assert_eq!(get("lb_upstream_failures_total", &[("pool", "excp"), ("peer", &pb)]), 0.0);
    assert_eq!(get("lb_retries_total", &[("pool", "excp")]), 2.0);
    assert_eq!(get("lb_request_duration_seconds_count", &[("pool", "excp")]), 4.0);
    assert!(get("lb_upstream_header_seconds_count", &[("pool", "excp"), ("peer", &pb)]) >= 4.0);
    assert!(m.contains("# TYPE lb_requests_total counter"), "{m}");
    assert!(m.contains("# TYPE lb_request_duration_seconds histogram"), "{m}");

    let (code, health) = lb.health();
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["status"], "UP");
    assert_eq!(health["roles"]["lb"]["status"], "UP");
    let excp = &health["roles"]["lb"]["details"]["pools"]["excp"];
    assert_eq!(excp["listen"], lb.addr("excp").to_string(), "the bound address, not port 0: {excp}");
    assert_eq!(excp["available"], 2, "max_fails 0: A stays in rotation: {excp}");
    assert_eq!(excp["peers"].as_array().map(Vec::len), Some(2));

    let lines = lb.access();
    let retried = lines.iter().filter(|l| l.upstream_status == ["502", "200"]).count();
    assert_eq!(retried, 2, "A✗B twice: {lines:?}");
    assert!(lines.iter().all(|l| l.complete && l.method == "GET" && l.uri == "/m"));
}

// ---------------------------------------------------------------------------------------------
// 8. Headers beyond nginx's defaults

#[test]
fn forwarded_headers_set_headers_and_client_host() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let lb = Lb::start(
        "headers",
        &config(&[
            pool(
                "excp",
                &[a],
                &[
                    "x_forwarded_for = true",
                    "x_real_ip = true",
                    "host = \"$host\"",
                    "set_headers = { \"X-Site\" = \"lab\", \"X-Env\" = \"test\" }",
                ],
            ),
            pool("plain", &[a], &[]),
        ]),
    );
    let spoofing = [
        ("Host", "client.example"),
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Site", "spoofed"),
        ("X-Other", "kept"),
    ];
    assert_eq!(request(lb.addr("excp"), "GET", "/h", &spoofing, b"").status, 200);
    let s = backends.take().pop().unwrap();
    assert_eq!(s.headers_named("x-forwarded-for"), ["10.1.2.3, 127.0.0.1"], "client IP appended: {:?}", s.headers);
    assert_eq!(s.headers_named("x-real-ip"), ["127.0.0.1"], "{:?}", s.headers);
    assert_eq!(s.headers_named("x-site"), ["lab"], "set_headers replaces the client's: {:?}", s.headers);
    assert_eq!(s.headers_named("x-env"), ["test"]);
    assert_eq!(s.headers_named("host"), ["client.example"], "host = \"$host\"");
    assert_eq!(s.headers_named("x-other"), ["kept"]);

    // Without a client list, X-Forwarded-For is the client alone.
    assert_eq!(request(lb.addr("excp"), "GET", "/h", &[], b"").status, 200);
    let s = backends.take().pop().unwrap();
    assert_eq!(s.headers_named("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(s.headers_named("host"), ["lbtest"]);

    // A pool with the defaults adds nothing and passes the client's headers on unchanged.
    assert_eq!(request(lb.addr("plain"), "GET", "/h", &spoofing, b"").status, 200);
    let s = backends.take().pop().unwrap();
    assert_eq!(s.headers_named("x-forwarded-for"), ["10.1.2.3"]);
    assert_eq!(s.headers_named("x-real-ip"), ["6.6.6.6"]);
    assert_eq!(s.headers_named("x-site"), ["spoofed"]);
    assert_eq!(s.headers_named("host"), ["plain"], "Host is the pool name by default");
}

#[test]
fn http_host_passes_the_client_host_verbatim() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let lb = Lb::start("http-host", &config(&[pool("excp", &[a], &["host = \"$http_host\""])]));
    assert_eq!(request(lb.addr("excp"), "GET", "/", &[("Host", "Client.Example:3650")], b"").status, 200);
    assert_eq!(backends.take()[0].headers_named("host"), ["Client.Example:3650"]);
}

/// nginx's `$host` is the host name alone, lower-cased: `proxy_set_header Host $host;` with
/// `Host: Client.Example:3650` sends `Host: client.example` (checked on nginx 1.22.1); only
/// `$http_host` keeps the header verbatim.
#[test]
fn dollar_host_is_the_host_name_without_port_as_in_nginx() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let lb = Lb::start("dollar-host", &config(&[pool("excp", &[a], &["host = \"$host\""])]));
    assert_eq!(request(lb.addr("excp"), "GET", "/", &[("Host", "Client.Example:3650")], b"").status, 200);
    assert_eq!(backends.take()[0].headers_named("host"), ["client.example"]);
}

// ---------------------------------------------------------------------------------------------
// 9. Graceful drain

#[test]
fn sigterm_lets_a_proxied_request_finish_then_exits_zero() {
    let mut backends = Backends::new();
    let gate = Gate::default();
    let a = backends.add("A", Behaviour::Held { gate: gate.clone() });
    let mut lb = Lb::start("drain", &config(&[pool("excp", &[a], &[])]));
    let addr = lb.addr("excp");
    let in_flight = std::thread::spawn(move || request(addr, "POST", "/api/v1/recording", &[], b"{\"id\":\"1\"}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends.seen().is_empty() {
        assert!(Instant::now() < deadline, "A never got the request");
        std::thread::sleep(Duration::from_millis(10));
    }
    lb.proc.signal("TERM");
    // Still in flight once the drain has begun and nothing listens any more.
    wait_until("the drain to begin", Duration::from_secs(10), || !lb.logged("draining in-flight").is_empty());
    wait_until("the listener to close", Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_err());
    assert!(!in_flight.is_finished());
    gate.open();
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "A"), "the request in flight when SIGTERM came finished");
    let status = wait_timeout(&mut lb.proc.child, Duration::from_secs(10)).expect("exit after the drain");
    assert_eq!(status.code(), Some(0), "{}", lb.tail());
    assert_eq!(backends.seen().len(), 1, "the POST reached A once");
    let deadline = Instant::now() + Duration::from_secs(2);
    while lb.logged("stopped cleanly").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = lb.access();
    assert_eq!(lines.len(), 1, "{}", lb.tail());
    assert_eq!((lines[0].status, lines[0].complete), (200, true));
    assert!(std::net::TcpStream::connect(addr).is_err(), "nothing listens after the exit");
}

// ---------------------------------------------------------------------------------------------
// 10. Several pools in one process

#[test]
fn two_pools_have_their_own_settings_and_rotation() {
    let mut backends = Backends::new();
    let r1 = backends.add("R1", Behaviour::Refuse);
    let r2 = backends.add("R2", Behaviour::Refuse);
    let ok = backends.add("OK", Behaviour::ok());
    let lb = Lb::start(
        "two-pools",
        &config(&[
            pool("excp", &[r1, r2, ok], &["next_upstream_tries = 2"]),
            pool("exrp", &[r1, r2, ok], &["next_upstream_tries = 3"]),
        ]),
    );
    assert_ne!(lb.addr("excp"), lb.addr("exrp"));
    // Each pool starts its own rotation at its first server.
    let excp = lb.get("excp", "/x");
    assert_eq!(excp.status, 502, "excp gives up after two tries: {excp:?}");
    let exrp = lb.get("exrp", "/y");
    assert_eq!((exrp.status, exrp.body.as_str()), (200, "OK"), "exrp reaches the third server");
    let lines = lb.wait_access(2);
    let line = |uri: &str| lines.iter().find(|l| l.uri == uri).unwrap().clone();
    assert_eq!(line("/x").tried(&backends), ["R1", "R2"]);
    assert_eq!(line("/y").tried(&backends), ["R1", "R2", "OK"]);
    let seen = backends.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some("exrp"), "each pool sends its own name as Host");
    // Lines are written once each response is out, so in either order.
    let events = lb.events();
    let mut pools: Vec<(&str, &str)> = events
        .iter()
        .filter(|v| v["target"] == "access")
        .filter_map(|v| Some((v["uri"].as_str()?, v["pool"].as_str()?)))
        .collect();
    pools.sort();
    assert_eq!(pools, [("/x", "excp"), ("/y", "exrp")], "each access line names its pool");
    let m = lb.metrics();
    assert_eq!(metric(&m, "lb_requests_total", &[("pool", "excp"), ("status", "502")]), Some(1.0), "{m}");
    assert_eq!(metric(&m, "lb_requests_total", &[("pool", "exrp"), ("status", "200")]), Some(1.0), "{m}");
    assert_eq!(metric(&m, "lb_requests_total", &[("pool", "exrp"), ("status", "502")]), None, "{m}");
}

#[test]
fn two_pools_on_one_listen_address_are_refused() {
    let dir = TempDir::new("lb-clash");
    let path = dir.join("lb.toml");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let same = format!("listen = \"127.0.0.1:{port}\"");
    let text = config(&[
        pool("excp", &["127.0.0.1:9".parse().unwrap()], &[]),
        pool("exrp", &["127.0.0.1:9".parse().unwrap()], &[]),
    ])
    .replace("listen = \"127.0.0.1:0\"\nservers", &format!("{same}\nservers"));
    std::fs::write(&path, &text).unwrap();
    let out = run_bin(&["--role", "lb", "--config", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}\nstderr: {err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("lb.pools.excp.listen") && err.contains("lb.pools.exrp.listen"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The client side: HTTP/1 as the lb reads and answers it (nginx's own framing checks are in
// lb_parity.rs)

/// Requests sent back to back on one connection before any answer (pipelined) are answered in
/// order on it, each by its own attempt, and the connection stays open for more.
#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let b = backends.add("B", Behaviour::ok());
    let lb = Lb::start("pipeline", &config(&[pool("excp", &[a, b], &[])]));
    let mut raw = Raw::connect(lb.addr("excp"));
    let mut burst = Vec::new();
    for i in 0..3 {
        burst.extend_from_slice(
            format!("POST /p{i} HTTP/1.1\r\nHost: lbtest\r\nContent-Length: 5\r\n\r\nbody{i}").as_bytes(),
        );
    }
    burst.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: lbtest\r\n\r\n");
    raw.send(&burst);
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|_| raw.response())
        .map(|(status, _, body)| {
            assert_eq!(status, 200);
            body
        })
        .collect();
    assert_eq!(bodies, [b"A".to_vec(), b"B".to_vec(), b"A".to_vec(), b"B".to_vec()]);
    let seen = backends.seen();
    let targets: Vec<(&str, &[u8])> = seen.iter().map(|s| (s.target.as_str(), s.body.as_slice())).collect();
    assert_eq!(targets, [("/p0", &b"body0"[..]), ("/p1", b"body1"), ("/p2", b"body2"), ("/last", b"")]);
    raw.send(b"GET /again HTTP/1.1\r\nHost: lbtest\r\nConnection: close\r\n\r\n");
    let (status, headers, body) = raw.response();
    assert_eq!((status, body.as_slice()), (200, &b"A"[..]));
    assert!(headers.iter().any(|(k, v)| k == "connection" && v == "close"), "{headers:?}");
    let mut rest = Vec::new();
    raw.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the answer to Connection: close: {rest:?}");
}

/// HTTP/1.0 clients: without `Connection: keep-alive` the answer closes the connection; with
/// it, the answer says so and the connection takes the next request.
#[test]
fn http10_clients_keep_alive_only_when_they_ask() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let lb = Lb::start("http10", &config(&[pool("excp", &[a], &[])]));
    let mut raw = Raw::connect(lb.addr("excp"));
    for _ in 0..2 {
        raw.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let (status, headers, body) = raw.response();
        assert_eq!((status, body.as_slice()), (200, &b"A"[..]));
        assert!(headers.iter().any(|(k, v)| k == "connection" && v == "keep-alive"), "{headers:?}");
    }
    raw.send(b"GET / HTTP/1.0\r\n\r\n");
    let (status, headers, _) = raw.response();
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(k, v)| k == "connection" && v == "close"), "{headers:?}");
    let mut rest = Vec::new();
    raw.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(backends.seen().len(), 3);
}

/// `header_timeout` closes a client connection that sends no (whole) request head in time,
/// and an idle kept-alive one, without an answer.
#[test]
fn header_timeout_closes_idle_and_slow_client_connections() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let lb = Lb::start("idle", &config(&[pool("excp", &[a], &["header_timeout = \"1s\""])]));
    // Raw's reads give up after 20 s; the lb's other client timeouts are 60 s: reaching the end
    // of the stream means header_timeout closed it.
    let closed_unanswered = |raw: &mut Raw| {
        let mut rest = Vec::new();
        raw.stream.read_to_end(&mut rest).expect("closed by the lb");
        assert!(rest.is_empty(), "no answer: {rest:?}");
    };
    let mut idle = Raw::connect(lb.addr("excp"));
    idle.send(b"GET / HTTP/1.1\r\nHost: lbtest\r\n\r\n");
    assert_eq!(idle.response().0, 200);
    let mut slow = Raw::connect(lb.addr("excp"));
    slow.send(b"GET / HTTP/1.1\r\nHost: lb");
    closed_unanswered(&mut idle);
    closed_unanswered(&mut slow);
    assert_eq!(backends.seen().len(), 1, "the partial head never reached a backend");
}

/// A pool listener with `[lb.pools.<name>.tls]` serves HTTPS: several requests, with bodies,
/// over one TLS connection; plain HTTP there gets no answer from a backend.
#[test]
fn a_tls_pool_listener_proxies_https_requests() {
    tool("curl");
    let dir = TempDir::new("lb-tls");
    let (cert, key) = crate::support::self_signed(dir.path());
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let b = backends.add("B", Behaviour::ok());
    let tls = format!("[lb.pools.excp.tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let lb = Lb::start("tls", &format!("{}{tls}", config(&[pool("excp", &[a, b], &[])])));
    let port = lb.addr("excp").port();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let out = Command::new("curl")
        .args(["-sS", "--cacert", cert.to_str().unwrap(), "--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", " %{http_code} %{num_connects}\n", "--data-binary", "tls body"])
        .args([url("/one"), url("/two"), url("/three")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text, "A 200 1\nB 200 0\nA 200 0\n", "one connection, three answers");
    let bodies: Vec<Vec<u8>> = backends.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, [b"tls body".to_vec(), b"tls body".to_vec(), b"tls body".to_vec()]);
    let plain = Command::new("curl").args(["-sS", "-m", "5", &format!("http://127.0.0.1:{port}/")]).output().unwrap();
    assert!(!plain.status.success(), "plain HTTP on the TLS port: {}", String::from_utf8_lossy(&plain.stdout));
    assert_eq!(backends.seen().len(), 3);
}

/// Large bodies stream through whole, as the peer framed them or re-framed for the client:
/// 4 MiB by Content-Length, and 40 000 small chunks, to HTTP/1.1 (chunked) and HTTP/1.0 (until
/// the close) clients.
#[test]
fn large_response_bodies_stream_through_whole() {
    tool("curl");
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut sized = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    sized.extend_from_slice(&big);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let piece: Vec<u8> = (0..100u8).collect();
    for _ in 0..40_000 {
        chunked.extend_from_slice(b"64\r\n");
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::Raw(sized));
    let b = backends.add("B", Behaviour::Raw(chunked));
    let lb = Lb::start("large", &config(&[pool("sized", &[a], &[]), pool("chunked", &[b], &[])]));
    let fetch = |pool: &str, http10: bool| {
        let url = format!("http://{}/big", lb.addr(pool));
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--fail", "-D", "-", "-o", "-"]);
        if http10 {
            curl.arg("--http1.0");
        }
        let out = curl.arg(&url).output().unwrap();
        assert!(out.status.success(), "{pool}: {}", String::from_utf8_lossy(&out.stderr));
        let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (String::from_utf8_lossy(&out.stdout[..split]).to_ascii_lowercase(), out.stdout[split..].to_vec())
    };
    let (head, body) = fetch("sized", false);
    assert!(head.contains(&format!("content-length: {}", big.len())), "{head}");
    assert!(body == big, "4 MiB body differs: {} bytes", body.len());
    let want: Vec<u8> = piece.iter().copied().cycle().take(40_000 * 100).collect();
    let (head, body) = fetch("chunked", false);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(body == want, "chunked body differs: {} bytes", body.len());
    let (head, body) = fetch("chunked", true);
    assert!(head.contains("connection: close") && !head.contains("transfer-encoding"), "{head}");
    assert!(body == want, "close-delimited body differs: {} bytes", body.len());
}

/// `allow` on a pool (nginx's `allow …; deny all;`): a client outside it gets nginx's 403 page
/// before its body is read, nothing reaches a peer, and the access log says 403; one inside
/// is proxied. A SIGHUP can open the pool.
#[test]
fn a_pool_allow_list_answers_403_to_other_addresses() {
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let closed = config(&[pool("excp", &[a], &["allow = [\"10.0.0.0/8\", \"192.0.2.7\"]"])]);
    let lb = Lb::start("allow", &closed);
    let r = lb.get("excp", "/api/v1/recording");
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("403 Forbidden"), "{r:?}");
    assert!(backends.seen().is_empty(), "nothing reaches a peer");
    assert_eq!(lb.wait_access(1)[0].status, 403);
    crate::support::wait_until("the refusal logged", Duration::from_secs(10), || {
        lb.proc.logs().contains("access forbidden")
    });
    lb.reload(
        &config(&[pool("excp", &[a], &["allow = [\"10.0.0.0/8\", \"127.0.0.1\"]"])]),
        "SIGHUP: configuration reloaded",
    );
    let r = lb.get("excp", "/api/v1/recording");
    assert_eq!((r.status, r.body.as_str()), (200, "A"));
}

/// `request_buffering = false`: a 1 MiB body past `client_body_buffer_size` goes to the peer
/// as it arrives, never to a temp file (the buffered pool beside it spools it), after the
/// `100 Continue` the client waits for; a client that leaves mid-body leaves the peer a
/// partial request and the access log a 499, and the pool serves on.
#[test]
fn an_unbuffered_pool_streams_bodies_without_spooling_them() {
    use std::io::{Read, Write};
    let mut backends = Backends::new();
    let a = backends.add("A", Behaviour::ok());
    let stream = pool(
        "stream",
        &[a],
        &[
            "request_buffering = false",
            "client_body_buffer_size = \"16KiB\"",
            "max_body_size = \"2MiB\"",
            "body_timeout = \"1s\"",
        ],
    );
    let held = pool("held", &[a], &["client_body_buffer_size = \"16KiB\""]);
    let lb = Lb::start("unbuffered", &config(&[stream, held]));
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();

    // Expect: 100-continue, answered by the lb before the body is sent.
    let mut s = std::net::TcpStream::connect(lb.addr("stream")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "PUT /r.opus HTTP/1.1\r\nHost: lbtest\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backends.take();
    assert!(seen.len() == 1 && seen[0].body == body, "the whole body, byte for byte");
    let r = request(lb.addr("held"), "PUT", "/r.opus", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(backends.take()[0].body.len(), body.len());
    let metrics = crate::support::client().get(lb.proc.admin_url("/metrics")).send().unwrap().text().unwrap();
    let spooled = |p: &str| metric(&metrics, "lb_request_bodies_spooled_total", &[("pool", p)]);
    assert_eq!((spooled("stream"), spooled("held")), (Some(0.0), Some(1.0)), "only the buffered pool spools");

    // Half a body, then the client leaves.
    let mut s = std::net::TcpStream::connect(lb.addr("stream")).unwrap();
    write!(s, "PUT /half.opus HTTP/1.1\r\nHost: lbtest\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    drop(s);
    wait_until("a 499 in the access log", Duration::from_secs(10), || {
        lb.events().iter().any(|e| e["target"] == "access" && e["status"] == 499 && e["uri"] == "/half.opus")
    });
    wait_until("the peer's partial request", Duration::from_secs(10), || {
        backends.seen().iter().any(|r| r.target == "/half.opus" && !r.complete)
    });
    assert_eq!(lb.get("stream", "/after").status, 200, "the pool serves on");

    // Hostile: a declared length past max_body_size is 413 before anything goes upstream; a
    // client that trickles and stops is cut off after body_timeout.
    backends.take();
    let big = request(lb.addr("stream"), "PUT", "/big.opus", &[("Content-Length", "3145728")], b"");
    assert_eq!(big.status, 413);
    assert!(backends.seen().is_empty(), "nothing reached the peer");
    let mut s = std::net::TcpStream::connect(lb.addr("stream")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "PUT /slow.opus HTTP/1.1\r\nHost: lbtest\r\nContent-Length: 100\r\n\r\nabc").unwrap();
    let mut rest = Vec::new();
    // Closed by the lb within the 20 s guard (body_timeout is 1 s), not by this client.
    let _ = s.read_to_end(&mut rest);
    wait_until("the peer's partial slow request", Duration::from_secs(10), || {
        backends.seen().iter().any(|r| r.target == "/slow.opus" && !r.complete)
    });
}
