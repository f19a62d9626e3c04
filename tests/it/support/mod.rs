//! Test support: start the real binary with a config, wait for its READY line, stop it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod apache;
pub mod backend;
pub mod cloud;
pub mod fake_server;
pub mod fakes;
pub mod garage;
pub mod netns;
pub mod nginx;
pub mod proxy;
pub mod seccomp;
pub mod webdriver;

pub const BIN: &str = env!("CARGO_BIN_EXE_exec-allinone");
pub const USER: &str = "mcp";
pub const PASSWORD: &str = "secret1";
/// `htpasswd -bm` output for mcp:secret1, made by Apache's own tool (research/webdav.md §6).
pub const HTPASSWD_LINE: &str = "mcp:$apr1$prdYq/l1$rsfcJhDC3WzZpp/MUSQ/U1\n";

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("eaio-it-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store directory, a password file and a config for one webdav process.
pub struct Site {
    pub dir: TempDir,
    pub extra: String,
}

impl Site {
    pub fn new(name: &str) -> Site {
        Site::with(name, "")
    }

    /// `extra` lines go into the [webdav] section.
    pub fn with(name: &str, extra: &str) -> Site {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::write(dir.join("htpasswd"), HTPASSWD_LINE).unwrap();
        Site { dir, extra: extra.to_string() }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn config(&self) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[webdav]\nlisten = \"127.0.0.1:0\"\nroot = \"{}\"\nhtpasswd = \"{}\"\n{}\n",
            self.root().display(),
            self.dir.join("htpasswd").display(),
            self.extra
        )
    }

    pub fn start(&self) -> Proc {
        let path = self.dir.join("config.toml");
        std::fs::write(&path, self.config()).unwrap();
        Proc::start(&["--role", "webdav", "--config", path.to_str().unwrap()])
    }

    /// As `start`, on a "kernel" without `openat2`: the store's component walk answers.
    pub fn start_without_openat2(&self) -> Proc {
        let path = self.dir.join("config.toml");
        std::fs::write(&path, self.config()).unwrap();
        let p = Proc::start_without_openat2(&["--role", "webdav", "--config", path.to_str().unwrap()]);
        wait_until("the fallback's log line", Duration::from_secs(5), || p.logs().contains("openat2 is not available"));
        p
    }
}

/// The running binary; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Proc {
        Proc::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(BIN);
        command.args(args).envs(env.iter().copied());
        Proc::spawn(command)
    }

    /// As `start`, with `openat2` failing ENOSYS in the process (`seccomp`).
    pub fn start_without_openat2(args: &[&str]) -> Proc {
        let mut command = Command::new(BIN);
        command.args(args);
        seccomp::without_openat2(&mut command);
        Proc::spawn(command)
    }

    fn spawn(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exec-allinone");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Anything more on stdout breaks the contract; make it visible.
            if let Some(line) = lines.map_while(Result::ok).next() {
                panic!("unexpected second line on stdout: {line}");
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY line within 30 s; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("READY"), "first stdout line: {line}");
        let addrs = parts
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("name=addr");
                (k.to_string(), v.parse().expect("socket address"))
            })
            .collect();
        Proc { child, addrs, stderr }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.addrs.get(name).unwrap_or_else(|| panic!("no {name} in READY"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr("webdav"), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr("admin"), path)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_timeout(&mut self.child, Duration::from_secs(30)).expect("exit within 30 s after SIGTERM")
    }

    /// Like `stop`, and also returns everything logged to stderr once the pipe has closed.
    pub fn stop_keep(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = wait_timeout(&mut self.child, Duration::from_secs(30)).expect("exit within 30 s after SIGTERM");
        // The reader thread drains the pipe after exit; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.logs().contains("stopped cleanly") {
            std::thread::sleep(Duration::from_millis(20));
        }
        (status, self.logs())
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]).status();
            if wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Starts a peer that has to be told its port (nginx and Apache cannot bind port 0 and report
/// it): `launch` starts one on 127.0.0.1 on a port picked just before and waits until it is
/// ready. When another process took the port meanwhile (the error says "Address already in
/// use"), another is picked, 8 times at most; any other error fails at once.
pub fn start_on_picked_port<T>(what: &str, mut launch: impl FnMut(SocketAddr) -> Result<T, String>) -> T {
    let mut last_error = String::new();
    for _ in 0..8 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match launch(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(peer) => return peer,
            Err(e) => {
                let taken = e.contains("Address already in use");
                last_error = e;
                if !taken {
                    break;
                }
            }
        }
    }
    panic!("{what} did not start: {last_error}");
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn basic() -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")))
}

/// A blocking HTTP/1.1 client on a raw socket, for requests no library would send.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one response (status, headers, body by Content-Length).
    pub fn response(&mut self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        read_response(&mut self.stream)
    }
}

/// `read`, again when a signal interrupted it: a signal to the test process interrupts a read
/// with a timeout even under SA_RESTART (signal(7)), which says nothing about the peer.
pub fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A response as (status, headers with lower-case names, body).
pub type RawResponse = (u16, Vec<(String, String)>, Vec<u8>);

pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    try_read_response(stream).unwrap_or_else(|e| panic!("{e}"))
}

/// As `read_response`, saying how it failed instead of panicking (a caller can add the
/// server's log to the failure).
pub fn try_read_response(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let started = std::time::Instant::now();
    while !head.ends_with(b"\r\n\r\n") {
        match read_some(stream, &mut byte) {
            Ok(1) => head.push(byte[0]),
            other => {
                return Err(format!(
                    "connection ended inside a response head after {:?} ({other:?}): {:?}",
                    started.elapsed(),
                    String::from_utf8_lossy(&head)
                ));
            }
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, headers, body))
}

/// One request on a fresh connection; returns (status, headers, body).
pub fn raw_request(addr: SocketAddr, request: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut raw = Raw::connect(addr);
    raw.send(request.as_bytes());
    raw.send(body);
    raw.response()
}

/// The ports of the `--role all` sandbox (src/config/sandbox.toml).
pub const SANDBOX_ALL_PORTS: [u16; 6] = [8000, 9650, 3650, 8080, 13650, 18080];

/// Polls `cond` every 50 ms until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names the test `sandbox_ports` re-runs in a network namespace of its own.
const OWN_NETWORK: &str = "EXEC_ALLINONE_TEST_OWN_NETWORK";

/// Where a sandbox test runs its body: its own network namespace, or (where the kernel
/// refuses one) the machine's loopback, held against the other sandbox tests.
pub enum SandboxPorts {
    OwnNetwork,
    Host(std::sync::MutexGuard<'static, ()>),
}

static HOST_SANDBOX_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The sandboxes (`--role all`, `--role webdav` and `simulate` with no config) use fixed
/// ports: that is what they promise (MCP is pointed at 127.0.0.1:8000). A test of them re-runs
/// itself, `test` being its full name, in a network namespace of its own (`unshare --net
/// --map-root-user`, then loopback up), so nothing on the machine — a sandbox left running, a
/// bench, another of these tests — holds those ports or races for them. Returns `None` in the
/// calling process once that run has passed (it panics with the run's output when it failed),
/// `Some` where the body is to run. Where the kernel allows no user namespace (some container
/// runtimes, Ubuntu's AppArmor restriction) the body runs here on the machine's loopback, one
/// sandbox test at a time, and fails if another process holds a port.
pub fn sandbox_ports(test: &str, ports: &[u16]) -> Option<SandboxPorts> {
    if std::env::var(OWN_NETWORK).as_deref() == Ok(test) {
        netns::loopback_up();
        return Some(SandboxPorts::OwnNetwork);
    }
    let out = Command::new("unshare")
        .args(["--net", "--map-root-user", "--"])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(OWN_NETWORK, test)
        .output()
        .expect("run unshare (util-linux)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && stdout.is_empty() && stderr.starts_with("unshare:") {
        eprintln!("no network namespace here ({}); on the machine's loopback", stderr.trim());
        let held = HOST_SANDBOX_PORTS.lock().unwrap_or_else(|p| p.into_inner());
        assert!(ports_free(ports), "sandbox ports {ports:?} are busy: is a sandbox (or a bench) left running?");
        return Some(SandboxPorts::Host(held));
    }
    assert!(out.status.success(), "{test} in its own network namespace:\n{stdout}\n{stderr}");
    // A filter that matched nothing would pass too: the run must have been this one test.
    assert!(stdout.contains(&format!("test {test} ... ok")) && stdout.contains("1 passed"), "{stdout}\n{stderr}");
    None
}

pub fn ports_free(ports: &[u16]) -> bool {
    ports.iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// `exec-allinone --role all` with no config in `dir`, once its READY line is out: the line
/// and the process (killed when dropped).
pub fn start_sandbox_all(dir: &Path) -> (String, KillOnDrop) {
    start_sandbox(dir, None)
}

fn start_sandbox(dir: &Path, config: Option<&Path>) -> (String, KillOnDrop) {
    let mut command = Command::new(BIN);
    command.args(["--role", "all"]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = KillOnDrop(
        command
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start exec-allinone --role all"),
    );
    let mut line = String::new();
    let stdout = child.stdout.as_mut().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("READY line");
    (line.trim().to_string(), child)
}

/// The sandbox's embedded config as a file in `dir`, changed by `edit`, with the files the
/// embedded default makes on its first run (the password file, the store's root) made here:
/// `--role all --config` on it is the sandbox with a setting or two of a test's own.
pub fn sandbox_config(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let data = dir.join("exec-allinone-data");
    std::fs::create_dir_all(data.join("recordings")).unwrap();
    let made = Command::new(BIN)
        .args(["htpasswd", "-c", "-C", "4"])
        .arg(data.join("htpasswd"))
        .args(["mcp", "mcp-sandbox"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = include_str!("../../../src/config/sandbox.toml").replace("{dir}", &data.display().to_string());
    let path = dir.join("all.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// `--role all --config <config>` in `dir` (on the sandbox's fixed ports: the caller holds
/// them through `sandbox_ports`), and its READY line.
pub fn start_sandbox_config(dir: &Path, config: &Path) -> (String, KillOnDrop) {
    start_sandbox(dir, Some(config))
}

/// A child process killed when the test ends, passing or panicking, so a failed test never
/// leaves a sandbox holding the fixed ports.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Files in a directory, ours included: tests use it to prove no temp file is left.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Runs a command with `input` on its stdin and collects its stdout and stderr.
pub fn output_with_stdin(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("wait")
}

pub fn method(name: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(name.as_bytes()).unwrap()
}

/// The sum of the samples of `name` whose labels include `labels` (None when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let have: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}

/// The Debian package that provides a peer the tests run.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "htpasswd" => "apache2-utils",
        "apache2" => "apache2",
        "chromedriver" => "chromium-driver",
        "chromium" => "chromium",
        "litmus" => "litmus",
        "curl" => "curl",
        "openssl" => "openssl",
        "nginx" => "nginx",
        "promtool" => "prometheus",
        _ => "(unknown package)",
    }
}

/// A peer the tests run. Missing, the test fails naming the package: no test passes without
/// having exercised its peer (`./test.sh` installs them).
pub fn tool(name: &str) -> Command {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {name}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{name} is not installed: apt-get install {} (or run ./test.sh, which does)", package_of(name));
    Command::new(name)
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`: (cert.pem, key.pem).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = tool("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-keyout", key.to_str().unwrap(), "-out", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// Runs litmus's five suites (basic, copymove, props, locks, http) against the collection at
/// `url` (as USER/PASSWORD, in `dir`) and insists on 100 % in each; returns litmus's output.
pub fn litmus_all_suites(url: &str, dir: &Path, server_logs: impl Fn() -> String) -> String {
    let out = tool("litmus")
        .env("TESTS", "basic copymove props locks http")
        .current_dir(dir)
        .args([url, USER, PASSWORD])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for suite in ["basic", "copymove", "props", "locks", "http"] {
        let summary = text
            .lines()
            .find(|l| l.contains(&format!("summary for `{suite}'")))
            .unwrap_or_else(|| panic!("no summary for {suite}:\n{text}\n{}", server_logs()));
        assert!(summary.contains("100.0%"), "{summary}\n{text}");
    }
    assert!(out.status.success(), "{text}");
    text
}
