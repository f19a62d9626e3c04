//! Scriptable HTTP/1 test backends for the lb parity suite: std threads and std::net only.
//!
//! A [`Backends`] set owns any number of named backends on 127.0.0.1, port 0, and one shared log:
//! every request any of them receives is appended to it in arrival order, so a test can say which
//! backend saw each attempt and in which order. Each connection carries one request (the proxies
//! under test send `Connection: close`); every answer says `Connection: close` and closes.
//! Everything is bounded: reads time out after 5 s, a hanging backend gives up after 30 s or as
//! soon as the set is dropped, and dropping the set stops every accept loop.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a backend waits for the rest of a request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a `Hang` or `Delay` backend keeps a connection.
const MAX_HOLD: Duration = Duration::from_secs(30);
/// Largest request a backend accepts (the suite's bodies are a few KiB).
const MAX_REQUEST: usize = 4 << 20;

/// What a backend does with each request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Reads the request and answers `status` with `X-Backend: <name>`, the backend's own
    /// `Server` and `Date` (so a test can see that the proxy replaced them), `headers`, and
    /// `body` (the backend's name when `None`). No body for HEAD.
    Answer { status: u16, body: Option<Vec<u8>>, headers: Vec<(String, String)> },
    /// Nothing listens on the port: connecting is refused.
    Refuse,
    /// A listener that never accepts, its backlog filled up front: the kernel drops further
    /// SYNs, so connecting times out (a black-holed peer, for connect timeouts).
    Blackhole,
    /// Waits until the whole request is in the socket buffer, then closes without reading it:
    /// unread data makes Linux send a RST instead of a FIN (std has no SO_LINGER setter; this
    /// gets the same reset with std only).
    ResetAfterRead,
    /// Reads the whole request, then closes (FIN) without answering.
    CloseAfterRead,
    /// Reads the whole request, sends the first bytes of a response head, then closes.
    CloseBeforeHeader,
    /// Reads the whole request and never answers; the connection is held until the proxy closes
    /// it, the set is dropped, or 30 s pass.
    Hang,
    /// Like `Answer` with the default body, after a delay.
    Delay { delay: Duration, status: u16 },
    /// Sends the head (with Content-Length) at once, then the body in `pieces` parts with
    /// `delay` before each.
    SlowBody { body: Vec<u8>, pieces: usize, delay: Duration },
    /// Reads the request and writes these bytes verbatim, then closes: for invalid framing,
    /// truncated bodies, extra data, chunked answers to HTTP/1.0 and so on.
    Raw(Vec<u8>),
    /// Like `Raw` but keeps the connection open afterwards (until the proxy closes it).
    RawNoClose(Vec<u8>),
}

impl Behaviour {
    /// 200 with the backend's name as the body.
    pub fn ok() -> Behaviour {
        Behaviour::status(200)
    }

    /// `status` with the backend's name as the body.
    pub fn status(status: u16) -> Behaviour {
        Behaviour::Answer { status, body: None, headers: Vec::new() }
    }

    pub fn answer(status: u16, body: &[u8], headers: &[(&str, &str)]) -> Behaviour {
        Behaviour::Answer {
            status,
            body: Some(body.to_vec()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub fn raw(bytes: &str) -> Behaviour {
        Behaviour::Raw(bytes.as_bytes().to_vec())
    }
}

/// One request as a backend received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub backend: String,
    pub request_line: String,
    pub method: String,
    pub target: String,
    pub version: String,
    /// In the order received, names with their original case.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
    pub chunked: bool,
    /// False when the connection ended or timed out before the request was complete.
    pub complete: bool,
}

impl Seen {
    /// The first value of a header, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A running backend (or, for `Refuse`, a port nobody listens on).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub behaviour: Behaviour,
    accept: Option<JoinHandle<()>>,
    /// A `Blackhole`'s listener and the connections that fill its backlog.
    blackhole: Option<(TcpListener, Vec<TcpStream>)>,
}

/// A set of backends sharing one arrival log; stops them all when dropped.
pub struct Backends {
    pub log: Log,
    /// Names of backends whose held connection (`Hang`, `RawNoClose`) the proxy closed.
    pub closed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    list: Vec<Backend>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends::new()
    }
}

impl Backends {
    pub fn new() -> Backends {
        Backends {
            log: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            list: Vec::new(),
        }
    }

    /// Starts a backend and returns its address.
    pub fn add(&mut self, name: &str, behaviour: Behaviour) -> SocketAddr {
        assert!(self.list.iter().all(|b| b.name != name), "backend {name} twice");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let mut blackhole = None;
        let accept = if let Behaviour::Refuse = behaviour {
            // Released at once: connecting to the port is refused from now on.
            drop(listener);
            None
        } else if let Behaviour::Blackhole = behaviour {
            blackhole = Some((listener, fill_backlog(addr)));
            None
        } else {
            listener.set_nonblocking(true).unwrap();
            let logs = Logs { seen: self.log.clone(), closed: self.closed.clone() };
            let (name, behaviour, stop) = (name.to_string(), behaviour.clone(), self.stop.clone());
            Some(std::thread::spawn(move || accept_loop(listener, name, behaviour, logs, stop)))
        };
        self.list.push(Backend { name: name.to_string(), addr, behaviour, accept, blackhole });
        addr
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.get(name).addr
    }

    pub fn get(&self, name: &str) -> &Backend {
        self.list.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    pub fn all(&self) -> &[Backend] {
        &self.list
    }

    /// The backend listening (or refusing) on `addr`, as `$upstream_addr` prints it.
    pub fn name_of(&self, addr: &str) -> Option<&str> {
        self.list.iter().find(|b| b.addr.to_string() == addr).map(|b| b.name.as_str())
    }

    /// Everything received so far, in arrival order across all backends.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Returns the log and empties it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Returns the names of backends whose held connection was closed by the proxy, and
    /// empties that list.
    pub fn take_closed(&self) -> Vec<String> {
        std::mem::take(&mut *self.closed.lock().unwrap())
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for backend in &mut self.list {
            if let Some(handle) = backend.accept.take() {
                let _ = handle.join();
            }
        }
    }
}

/// The two logs a backend writes to.
#[derive(Clone)]
struct Logs {
    seen: Log,
    closed: Arc<Mutex<Vec<String>>>,
}

fn accept_loop(listener: TcpListener, name: String, behaviour: Behaviour, logs: Logs, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, behaviour, logs, stop) = (name.clone(), behaviour.clone(), logs.clone(), stop.clone());
                std::thread::spawn(move || serve(stream, &name, &behaviour, &logs, &stop));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut stream: TcpStream, name: &str, behaviour: &Behaviour, logs: &Logs, stop: &AtomicBool) {
    let log = &logs.seen;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    if let Behaviour::ResetAfterRead = behaviour {
        let seen = peek_request(&stream, name);
        log.lock().unwrap().push(seen);
        // Dropping with the request still unread in the receive buffer sends a RST.
        return;
    }
    let seen = read_request(&mut stream, name);
    let head_only = seen.method == "HEAD";
    let complete = seen.complete;
    log.lock().unwrap().push(seen);
    if !complete {
        return;
    }
    match behaviour {
        Behaviour::Refuse | Behaviour::Blackhole | Behaviour::ResetAfterRead => unreachable!(),
        Behaviour::Answer { status, body, headers } => {
            let body = body.clone().unwrap_or_else(|| name.as_bytes().to_vec());
            let _ = stream.write_all(&answer(name, *status, &body, headers, head_only));
        }
        Behaviour::CloseAfterRead => {}
        Behaviour::CloseBeforeHeader => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-Backend: ");
        }
        Behaviour::Hang => {
            if hold(&mut stream, stop) {
                logs.closed.lock().unwrap().push(name.to_string());
            }
        }
        Behaviour::Delay { delay, status } => {
            let deadline = Instant::now() + *delay;
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = stream.write_all(&answer(name, *status, name.as_bytes(), &[], head_only));
        }
        Behaviour::SlowBody { body, pieces, delay } => {
            let head = answer(name, 200, body, &[], true);
            if stream.write_all(&head).is_ok() && !head_only {
                let size = body.len().div_ceil((*pieces).max(1)).max(1);
                for piece in body.chunks(size) {
                    std::thread::sleep(*delay);
                    if stop.load(Ordering::SeqCst) || stream.write_all(piece).is_err() {
                        return;
                    }
                }
            }
        }
        Behaviour::Raw(bytes) => {
            let _ = stream.write_all(bytes);
        }
        Behaviour::RawNoClose(bytes) => {
            if stream.write_all(bytes).is_ok() && hold(&mut stream, stop) {
                logs.closed.lock().unwrap().push(name.to_string());
            }
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    // Give the proxy a moment to read before the socket goes away; stop at its close.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// Connects to a listener that never accepts until its accept queue is full (Linux then drops
/// SYNs: the next connect times out). Bounded: a queue longer than 8192 is a test setup error.
fn fill_backlog(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
        held.push(stream);
        assert!(held.len() < 8192, "the backlog of {addr} does not fill up");
    }
    held
}

/// Keeps the connection until the peer closes it (true), the set is dropped, or `MAX_HOLD`
/// passes.
fn hold(stream: &mut TcpStream, stop: &AtomicBool) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let deadline = Instant::now() + MAX_HOLD;
    let mut sink = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The response an `Answer` backend sends.
pub fn answer(name: &str, status: u16, body: &[u8], headers: &[(String, String)], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: backend-{name}\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nX-Backend: {name}\r\n",
        reason(status)
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        out.push_str("Content-Type: text/plain\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// The outcome of parsing the bytes received so far.
enum Parsed {
    Incomplete,
    /// The request is malformed; keep what is known.
    Invalid,
    Complete(Box<Seen>),
}

/// Parses a whole request (head plus a body framed by Content-Length or chunked) from `buf`.
fn parse_request(buf: &[u8], name: &str) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Incomplete;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    let mut seen = Seen {
        backend: name.to_string(),
        request_line,
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        chunked: false,
        complete: true,
    };
    let rest = &buf[head_end + 4..];
    let chunked = seen.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        seen.chunked = true;
        match dechunk(rest) {
            Some(Some(body)) => seen.body = body,
            Some(None) => return Parsed::Incomplete,
            None => return Parsed::Invalid,
        }
    } else if let Some(len) = seen.header("content-length") {
        let Ok(len) = len.parse::<usize>() else { return Parsed::Invalid };
        if rest.len() < len {
            return Parsed::Incomplete;
        }
        seen.body = rest[..len].to_vec();
    }
    Parsed::Complete(Box::new(seen))
}

/// De-chunks a complete chunked body: `Some(None)` while incomplete, `None` when invalid.
pub fn dechunk(mut rest: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else { return Some(None) };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line.
            return if rest.starts_with(b"\r\n") || find(rest, b"\r\n\r\n").is_some() {
                Some(Some(body))
            } else {
                Some(None)
            };
        }
        if rest.len() < size + 2 {
            return Some(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads until the request is complete, the peer closes, or the read times out.
fn read_request(stream: &mut TcpStream, name: &str) -> Seen {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match parse_request(&buf, name) {
            Parsed::Complete(seen) => return *seen,
            Parsed::Invalid => return partial(&buf, name),
            Parsed::Incomplete => {}
        }
        if buf.len() > MAX_REQUEST {
            return partial(&buf, name);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return partial(&buf, name),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Like `read_request` but only peeks, so the bytes stay unread in the kernel buffer.
fn peek_request(stream: &TcpStream, name: &str) -> Seen {
    let mut buf = vec![0u8; MAX_REQUEST];
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut last = 0;
    loop {
        let n = match stream.peek(&mut buf) {
            Ok(0) | Err(_) => return partial(&buf[..last], name),
            Ok(n) => n,
        };
        match parse_request(&buf[..n], name) {
            Parsed::Complete(seen) => return *seen,
            Parsed::Invalid => return partial(&buf[..n], name),
            Parsed::Incomplete if Instant::now() > deadline => return partial(&buf[..n], name),
            Parsed::Incomplete => {}
        }
        last = n;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whatever could be made of an incomplete or malformed request.
fn partial(buf: &[u8], name: &str) -> Seen {
    let text = String::from_utf8_lossy(buf);
    let request_line = text.split("\r\n").next().unwrap_or_default().to_string();
    let mut parts = request_line.splitn(3, ' ');
    Seen {
        backend: name.to_string(),
        method: parts.next().unwrap_or_default().to_string(),
        target: parts.next().unwrap_or_default().to_string(),
        version: parts.next().unwrap_or_default().to_string(),
        request_line,
        headers: Vec::new(),
        body: buf.to_vec(),
        chunked: false,
        complete: false,
    }
}
