//! Real Apache httpd (Debian's apache2 with mod_dav and mod_dav_fs) in a temp dir, configured as
//! Debian does for a WebDAV share: `DavLockDB` for the lock database, Basic auth from an
//! htpasswd file, `DAV On` on `/recordings`.
//!
//! Every path it writes is inside the temp dir; it listens on 127.0.0.1 on a port picked by
//! binding port 0 and releasing it (retried when another process takes it first). Run as root
//! (CI), its workers run as www-data (or nobody), which then owns the data and run directories.
//! mod_dav_lock is not loaded: it is the lock provider for back-ends without their own, while
//! mod_dav_fs keeps its locks in `DavLockDB` (Debian's dav_fs.conf does the same). Stopped with
//! SIGTERM (which also stops the workers) when dropped.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{HTPASSWD_LINE, TempDir, wait_timeout};

pub const BINARY: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

pub struct Apache {
    pub dir: TempDir,
    pub addr: SocketAddr,
    child: Child,
}

impl Apache {
    /// Starts Apache; without it installed this panics with what to install: the tests that use
    /// it check the client against the store it replaces, so they must not pass without it.
    pub fn start(name: &str) -> Apache {
        assert!(
            Path::new(BINARY).is_file(),
            "{BINARY} is not installed: these tests run against Apache mod_dav (apt-get install apache2; .ci/run does)"
        );
        let run_as = run_as();
        super::start_on_picked_port("apache2", |addr| {
            let dir = TempDir::new(&format!("apache-{name}"));
            std::fs::create_dir_all(dir.join("run")).unwrap();
            std::fs::create_dir_all(dir.join("data/recordings")).unwrap();
            std::fs::write(dir.join("htpasswd"), HTPASSWD_LINE).unwrap();
            if let Some((user, group)) = &run_as {
                let spec = format!("{user}:{group}");
                for sub in ["run", "data"] {
                    let ok = Command::new("chown").args(["-R", &spec]).arg(dir.join(sub)).status().unwrap();
                    assert!(ok.success(), "chown {spec} {}", dir.join(sub).display());
                }
            }
            let d = dir.path().display();
            let user = run_as.as_ref().map_or(String::new(), |(u, g)| format!("User {u}\nGroup {g}\n"));
            let conf = format!(
                "ServerRoot {d}/run\n\
                 ServerName 127.0.0.1\n\
                 Listen {addr}\n\
                 PidFile {d}/run/httpd.pid\n\
                 DefaultRuntimeDir {d}/run\n\
                 ErrorLog {d}/run/error.log\n\
                 LogLevel warn\n\
                 {user}\
                 LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
                 LoadModule authn_core_module {MODULES}/mod_authn_core.so\n\
                 LoadModule authn_file_module {MODULES}/mod_authn_file.so\n\
                 LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
                 LoadModule authz_user_module {MODULES}/mod_authz_user.so\n\
                 LoadModule auth_basic_module {MODULES}/mod_auth_basic.so\n\
                 LoadModule dav_module {MODULES}/mod_dav.so\n\
                 LoadModule dav_fs_module {MODULES}/mod_dav_fs.so\n\
                 StartServers 1\n\
                 DocumentRoot {d}/data\n\
                 DavLockDB {d}/run/DAVLock\n\
                 <Directory {d}/data/recordings>\n\
                 \x20   DAV On\n\
                 \x20   AuthType Basic\n\
                 \x20   AuthName \"recordings\"\n\
                 \x20   AuthUserFile {d}/htpasswd\n\
                 \x20   Require valid-user\n\
                 </Directory>\n"
            );
            let conf_path = dir.join("apache2.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let stderr = File::create(dir.join("stderr.log")).unwrap();
            let child = Command::new(BINARY)
                .arg("-f")
                .arg(&conf_path)
                .arg("-DFOREGROUND")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn apache2");
            // Dropped on an error: stopped with SIGTERM.
            let mut apache = Apache { dir, addr, child };
            apache.wait_ready().map(|()| apache)
        })
    }

    /// Ready once the pid file exists (written after binding) and the port accepts.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("apache2 exited with {status}: {}{}", self.stderr(), self.error_log()));
            }
            let text = format!("{}{}", self.stderr(), self.error_log());
            if text.contains("Address already in use") {
                return Err(text);
            }
            let pid_written = self.dir.join("run/httpd.pid").is_file();
            if pid_written && TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within 15 s: {text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// "http://127.0.0.1:port/recordings"
    pub fn collection_url(&self) -> String {
        format!("http://{}/recordings", self.addr)
    }

    /// Where the collection's files are on disk.
    pub fn files(&self) -> PathBuf {
        self.dir.join("data/recordings")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("run/error.log")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM: the parent stops its workers, which SIGKILL of the parent alone would orphan.
    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]).status();
            if wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// As root Apache needs an unprivileged User/Group for its workers; otherwise it runs as us.
fn run_as() -> Option<(String, String)> {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    for user in ["www-data", "nobody"] {
        let group = Command::new("id").args(["-gn", user]).output().expect("id -gn");
        if group.status.success() {
            return Some((user.to_string(), String::from_utf8_lossy(&group.stdout).trim().to_string()));
        }
    }
    panic!("running as root, Apache needs an unprivileged user: neither www-data nor nobody exists");
}
