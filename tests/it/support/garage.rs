//! Real Garage (the S3-compatible distributed store; `cargo install garage --locked`, run as a
//! process of its own, never linked) as a 3-node cluster on loopback with replication factor
//! 3, one bucket and one key, in a temp dir. Every node's S3 endpoint serves the bucket. Nodes
//! are killed when the cluster is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, start_on_picked_port, wait_timeout};

pub const REGION: &str = "garage";

/// The binary the S3 tests run. Missing, the test fails naming how to install it.
pub fn binary() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    for candidate in [home.join("bin/garage"), PathBuf::from("/usr/local/bin/garage")] {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("garage is not installed: `cargo install garage --locked` (about 10 minutes; .ci/run does it)");
}

pub struct Node {
    pub config: PathBuf,
    pub s3: SocketAddr,
    child: Option<Child>,
}

pub struct Garage {
    pub dir: TempDir,
    pub nodes: Vec<Node>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    /// Three nodes, connected, laid out with 1 GB each in one zone, a bucket `name` and a key
    /// allowed to read and write it.
    pub fn start(name: &str) -> Garage {
        let bin = binary();
        let dir = TempDir::new(&format!("garage-{name}"));
        let secret: String = (0..64).map(|i| b"0123456789abcdef"[(i * 7 + name.len()) % 16] as char).collect();
        let mut nodes = Vec::new();
        for n in 0..3 {
            let node_dir = dir.join(&format!("node{n}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let node = start_on_picked_port("garage", |rpc| {
                // Its S3 and admin ports: the two above the RPC one picked (retried when taken).
                let s3 = SocketAddr::from(([127, 0, 0, 1], rpc.port().wrapping_add(1)));
                let admin = SocketAddr::from(([127, 0, 0, 1], rpc.port().wrapping_add(2)));
                let config = node_dir.join("garage.toml");
                std::fs::write(
                    &config,
                    format!(
                        "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                         replication_factor = 3\nrpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\n\
                         rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{s3}\"\n\
                         root_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"{admin}\"\n",
                        d = node_dir.display()
                    ),
                )
                .unwrap();
                let log = std::fs::File::create(node_dir.join("garage.log")).unwrap();
                let child = Command::new(&bin)
                    .args(["-c"])
                    .arg(&config)
                    .arg("server")
                    .env("RUST_LOG", "garage=warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn garage");
                let mut node = Node { config, s3, child: Some(child) };
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let log = std::fs::read_to_string(node_dir.join("garage.log")).unwrap_or_default();
                    if let Some(Some(status)) = node.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                        return Err(format!("garage exited with {status}: {log}"));
                    }
                    if std::net::TcpStream::connect_timeout(&s3, Duration::from_millis(200)).is_ok() {
                        return Ok(node);
                    }
                    if Instant::now() > deadline {
                        node.kill();
                        return Err(format!("not listening within 20 s: {log}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            nodes.push(node);
        }
        let mut garage = Garage { dir, nodes, bucket: name.to_string(), key_id: String::new(), secret: String::new() };
        let ids: Vec<String> = (0..3).map(|n| garage.cli(n, &["node", "id", "-q"]).trim().to_string()).collect();
        // Every node told of every other, so none waits for gossip to find the rest.
        for (n, _) in ids.iter().enumerate() {
            for (m, id) in ids.iter().enumerate() {
                if m != n {
                    garage.cli(n, &["node", "connect", id]);
                }
            }
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            garage.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.cli(0, &["layout", "apply", "--version", "1"]);
        garage.cli(0, &["bucket", "create", name]);
        let key = garage.cli(0, &["key", "create", &format!("{name}-key")]);
        let field = |label: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {label} in: {key}"))
        };
        garage.key_id = field("Key ID:");
        garage.secret = field("Secret key:");
        garage.cli(0, &["bucket", "allow", "--read", "--write", "--owner", name, "--key", &format!("{name}-key")]);
        // Ready once every node sees the other two connected (a node not yet connected shows
        // its hostname as "?"), so that each can reach a quorum.
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in 0..3 {
            loop {
                let status = garage.cli(n, &["status"]);
                let healthy = status.split("====").nth(2).unwrap_or_default();
                let rows: Vec<&str> = healthy.lines().filter(|l| l.contains("127.0.0.1:")).collect();
                if rows.len() == 3 && rows.iter().all(|r| r.split_whitespace().nth(1) != Some("?")) {
                    break;
                }
                assert!(Instant::now() < deadline, "garage node {n} does not see the others:\n{status}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        garage
    }

    /// `garage -c <node n's config> args…`; panics on failure, returns stdout.
    pub fn cli(&self, n: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(binary()).arg("-c").arg(&self.nodes[n].config).args(args).output().unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            // Just after start, a node may not see the others yet: asked again.
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(Instant::now() < deadline, "garage {args:?}: {err}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn endpoint(&self, n: usize) -> String {
        format!("http://{}", self.nodes[n].s3)
    }

    /// The bucket's keys under `prefix`, as node `n` lists them (no front end involved).
    pub fn keys(&self, n: usize, prefix: &str) -> Vec<String> {
        use exec_allinone::s3::client::{S3Client, Target};
        use exec_allinone::s3::sigv4::Credentials;
        let target = Target {
            endpoints: vec![self.endpoint(n)],
            bucket: self.bucket.clone(),
            path_style: true,
            credentials: Credentials {
                access_key_id: self.key_id.clone(),
                secret_access_key: exec_allinone::config::Secret::new(self.secret.clone()),
                region: REGION.into(),
            },
        };
        let c = S3Client::new(target, &Default::default(), Duration::from_secs(10), Duration::from_secs(30)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let page = rt.block_on(async { c.list(prefix, None, None).await.unwrap() });
        page.objects.into_iter().map(|o| o.key).collect()
    }

    /// SIGKILLs node `n` (it stays down).
    pub fn kill(&mut self, n: usize) {
        self.nodes[n].kill();
    }
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = wait_timeout(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
