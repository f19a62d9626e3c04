//! Real nginx (the Debian package, 1.22.1) in a temp prefix, for the lb parity suite.
//!
//! One process (`master_process off`, which is also what makes the round-robin state one
//! rotation), every path it writes inside the temp dir, listening on a port picked by binding
//! port 0 and releasing it (retried when another process takes it first). Its access log records
//! `$upstream_addr` and `$upstream_status` for every request. Killed when dropped.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, wait_timeout};

/// The binary the suite runs. Missing, the test fails naming the package: the parity suite
/// never passes without having run nginx.
pub fn binary() -> PathBuf {
    let candidates = [PathBuf::from("/usr/sbin/nginx"), PathBuf::from("/usr/local/sbin/nginx")];
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return found;
    }
    let which = Command::new("sh").args(["-c", "command -v nginx"]).output();
    if let Ok(out) = which
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!("nginx is not installed: the lb parity suite runs against it (apt-get install nginx, or ./test.sh)");
}

/// One access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    pub status: u16,
    /// Every attempted peer in order, as `$upstream_addr` lists them (`-` when none).
    pub upstream_addr: Vec<String>,
    pub upstream_status: Vec<String>,
    pub request: String,
}

pub struct Nginx {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl Nginx {
    /// Starts nginx with `http` as the body of its `http {}` block; `{listen}` in it is replaced by
    /// the address nginx listens on. The access log and temp paths are added here.
    pub fn start(name: &str, binary: &std::path::Path, http: &str) -> Nginx {
        super::start_on_picked_port("nginx", |addr| {
            let dir = TempDir::new(&format!("nginx-{name}"));
            let d = dir.path().display();
            let conf = format!(
                "worker_processes 1;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 1000; }}\n\
                 http {{\n\
                 log_format parity '$status\\t$upstream_addr\\t$upstream_status\\t$request';\n\
                 access_log {d}/access.log parity;\n\
                 client_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 {}\n}}\n",
                http.replace("{listen}", &addr.to_string())
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let stderr = File::create(dir.join("stderr.log")).unwrap();
            let child = Command::new(binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off; master_process off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn nginx");
            // Dropped on an error: killed.
            let mut nginx = Nginx { dir, addr, child };
            nginx.wait_ready().map(|()| nginx)
        })
    }

    /// Ready once the pid file exists (nginx writes it only after binding) and the port accepts.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nginx exited with {status}: {}{}", self.stderr(), self.error_log()));
            }
            let bind_failed =
                self.error_log().contains("Address already in use") || self.stderr().contains("Address already in use");
            if bind_failed {
                return Err("Address already in use".into());
            }
            let pid_written = std::fs::read_to_string(self.dir.join("nginx.pid"))
                .is_ok_and(|pid| pid.trim() == self.child.id().to_string());
            if pid_written && TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 10 s: {}{}", self.stderr(), self.error_log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Every access-log line written so far.
    pub fn access_log(&self) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines().filter(|l| !l.is_empty()).map(parse_access_line).collect()
    }

    /// Waits (up to 3 s) until the access log has at least `n` lines: nginx writes a line when it
    /// finalizes the request, which may be just after the client saw the response.
    pub fn access_lines(&self, n: usize) -> Vec<AccessLine> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let lines = self.access_log();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_timeout(&mut self.child, Duration::from_secs(5));
        }
    }
}

fn parse_access_line(line: &str) -> AccessLine {
    let mut fields = line.splitn(4, '\t');
    let status = fields.next().unwrap_or_default().parse().unwrap_or(0);
    // Several attempts are separated by ", "; " : " separates upstream groups after a redirect.
    let list = |s: &str| -> Vec<String> {
        if s == "-" || s.is_empty() {
            Vec::new()
        } else {
            s.split([',', ':']).map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
        }
    };
    let addrs = fields.next().unwrap_or_default();
    // Addresses contain ':' themselves; split them on the separators only.
    let upstream_addr = if addrs == "-" {
        Vec::new()
    } else {
        addrs.split(", ").flat_map(|a| a.split(" : ")).map(str::to_string).collect()
    };
    let upstream_status = list(fields.next().unwrap_or_default());
    AccessLine { status, upstream_addr, upstream_status, request: fields.next().unwrap_or_default().to_string() }
}
