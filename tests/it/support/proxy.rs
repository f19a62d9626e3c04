//! An HTTP proxy on loopback, as a contact centre's outbound proxy: `CONNECT host:port` opens a
//! tunnel (https), an absolute-form request (`POST http://host:port/path`) is forwarded in
//! origin form (http). As a reverse proxy (`Proxy::reverse`) it forwards origin-form requests
//! to one server and can refuse a method, for a peer that fails one kind of request. Every
//! request line it receives is kept for the test to inspect. A thread per connection, reads
//! time out after 30 s; dropping the proxy stops accepting.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAX_HEAD: usize = 64 << 10;

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<String>>,
    /// Where origin-form requests go (a reverse proxy).
    upstream: Option<SocketAddr>,
    /// Methods answered with this status instead of being forwarded.
    refused: Mutex<Vec<(String, u16)>>,
    /// A server that is down: every connection is closed unanswered, while the proxy keeps
    /// its port (no other process can take it, as it could a port given up and bound again).
    down: AtomicBool,
}

impl Proxy {
    pub fn start() -> Proxy {
        Proxy::spawn(Shared::default())
    }

    /// Forwards every origin-form request to `upstream`, one request per connection.
    pub fn reverse(upstream: SocketAddr) -> Proxy {
        Proxy::spawn(Shared { upstream: Some(upstream), ..Shared::default() })
    }

    fn spawn(shared: Shared) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(shared);
        let stop = Arc::new(AtomicBool::new(false));
        let (shared2, stop2) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared2.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Proxy { addr, shared, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `method` with `status` (and an empty body) from now on, without forwarding it.
    pub fn refuse(&self, method: &str, status: u16) {
        self.shared.refused.lock().unwrap_or_else(|e| e.into_inner()).push((method.to_string(), status));
    }

    /// Closes every connection unanswered from now on (`false`: serves again).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Forwards every method again.
    pub fn refuse_none(&self) {
        self.shared.refused.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Every request line received, in order (`CONNECT 127.0.0.1:443 HTTP/1.1`, …).
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut client: TcpStream, shared: &Shared) {
    if shared.down.load(Ordering::SeqCst) {
        return;
    }
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEAD {
            return;
        }
        match crate::support::read_some(&mut client, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let line = text.lines().next().unwrap_or_default().to_string();
    shared.seen.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let refused =
        shared.refused.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(m, _)| m == method).map(|r| r.1);
    if let Some(status) = refused {
        let _ = client.write_all(
            format!("HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        return;
    }
    if method == "CONNECT" {
        let Ok(upstream) = TcpStream::connect(target) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        let _ = upstream.set_read_timeout(Some(Duration::from_secs(30)));
        pipe(client, upstream, &head[end..]);
        return;
    }
    // Absolute form: http://host:port/path → connect, send in origin form; origin form goes to
    // the reverse proxy's server.
    let (authority, path) = match (target.strip_prefix("http://"), shared.upstream) {
        (Some(rest), _) => {
            rest.split_once('/').map_or((rest.to_string(), "/".to_string()), |(a, p)| (a.to_string(), format!("/{p}")))
        }
        (None, Some(upstream)) if target.starts_with('/') => (upstream.to_string(), target.to_string()),
        _ => return,
    };
    let Ok(mut upstream) = TcpStream::connect(&authority) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let _ = upstream.set_read_timeout(Some(Duration::from_secs(30)));
    let version = parts.next().unwrap_or("HTTP/1.1");
    // One request per forwarded connection: the next one comes in absolute form again.
    let mut rewritten = format!("{method} {path} {version}\r\n");
    for header in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = header.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if name != "connection" && name != "proxy-connection" && name != "keep-alive" {
            rewritten.push_str(header);
            rewritten.push_str("\r\n");
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(rewritten.as_bytes()).is_err() {
        return;
    }
    pipe(client, upstream, &head[end..]);
}

/// Copies both ways until either side closes; `pending` is what the client already sent.
fn pipe(client: TcpStream, mut upstream: TcpStream, pending: &[u8]) {
    if !pending.is_empty() && upstream.write_all(pending).is_err() {
        return;
    }
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(Shutdown::Write);
    });
    let mut client_w = client;
    let _ = std::io::copy(&mut upstream, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}
