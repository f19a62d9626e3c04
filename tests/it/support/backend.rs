//! Scriptable HTTP/1 test backends for the lb suites: std threads and std::net only.
//!
//! A [`Backends`] set owns any number of named backends on 127.0.0.1, port 0, and one shared log:
//! every request any of them receives is appended to it in arrival order, so a test can say which
//! backend saw each attempt and in which order. Most behaviours serve one request per connection
//! (the proxies of the parity suite send `Connection: close`): their answers say
//! `Connection: close` and they close. [`Behaviour::KeepAlive`] instead serves request after
//! request on one HTTP/1.1 connection, optionally closing it after an idle time; each [`Seen`]
//! carries the backend's connection number and its place on that connection, so a test can
//! assert reuse. A backend's behaviour can be switched while it runs ([`Backends::set`]), and
//! [`Behaviour::Route`] answers some paths (a `/health` probe) differently from the others.
//! Everything is bounded: reads time out after 5 s, a hanging backend or an idle kept-alive
//! connection gives up after 30 s or as soon as the set is dropped, and dropping the set stops
//! every accept loop.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a backend keeps a connection it was told to hold.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

/// The reason phrase a backend writes after `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// Holds the connection for `limit` (at most `MAX_HOLD`) or until `stop`, reading and dropping
/// what the client sends; true when the client closed it first. The read timeout it found is
/// set again afterwards.
pub fn hold(stream: &mut TcpStream, stop: &AtomicBool, limit: Duration) -> bool {
    let before = stream.read_timeout().ok().flatten();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let deadline = Instant::now() + limit.min(MAX_HOLD);
    let mut sink = [0u8; 1024];
    let closed = loop {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break false;
        }
        match stream.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break true,
        }
    };
    let _ = stream.set_read_timeout(before);
    closed
}

/// Longest a backend waits for the rest of a request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request a backend accepts (the suite's bodies are a few KiB).
const MAX_REQUEST: usize = 4 << 20;

/// Holds `Behaviour::Held` answers until opened; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

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
    /// Like `Answer` with the default body, once the test opens `gate` (or after `MAX_HOLD`):
    /// a request kept in flight for exactly as long as the test needs, however slow the machine.
    Held { gate: Gate },
    /// Sends the head (with Content-Length) at once, then the body in `pieces` parts with
    /// `delay` before each.
    SlowBody { body: Vec<u8>, pieces: usize, delay: Duration },
    /// Reads the request and writes these bytes verbatim, then closes: for invalid framing,
    /// truncated bodies, extra data, chunked answers to HTTP/1.0 and so on.
    Raw(Vec<u8>),
    /// Like `Raw` but keeps the connection open afterwards (until the proxy closes it).
    RawNoClose(Vec<u8>),
    /// HTTP/1.1 keep-alive: answers `status` with the backend's name as the body, framed by
    /// Content-Length and without `Connection: close`, then waits for the next request on the
    /// same connection. The connection ends when the proxy closes it, asks for the close
    /// (`Connection: close`, or HTTP/1.0 without `Connection: keep-alive`: that answer then says
    /// `Connection: close`), the set is dropped, 30 s pass idle, or — with `idle_close` — it has
    /// been idle that long: the backend then closes it, as a server whose keep-alive timeout is
    /// shorter than the proxy's does (the stale-pooled-connection race). Each request is served
    /// by the behaviour current when it arrives, so a switch away from `KeepAlive` answers the
    /// next request on a kept connection the new way and closes.
    KeepAlive { status: u16, idle_close: Option<Duration> },
    /// Serves a request whose path (the target without its query) equals a route's path with
    /// that route's behaviour, any other request with `other`: e.g. a `/health` that answers 503
    /// while the rest answers 200. Routes are chosen once the request is read, so their
    /// behaviours are those that act on a read request (not `Refuse`, `Blackhole` or
    /// `ResetAfterRead`).
    Route { routes: Vec<(String, Behaviour)>, other: Box<Behaviour> },
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

    /// 200 with the backend's name, keeping the connection open for further requests.
    pub fn keep_alive() -> Behaviour {
        Behaviour::KeepAlive { status: 200, idle_close: None }
    }

    /// Like `keep_alive`, closing a connection once it has been idle for `idle`.
    pub fn keep_alive_closing_idle(idle: Duration) -> Behaviour {
        Behaviour::KeepAlive { status: 200, idle_close: Some(idle) }
    }

    /// `routes` by exact path, everything else `other`.
    pub fn route(routes: &[(&str, Behaviour)], other: Behaviour) -> Behaviour {
        Behaviour::Route {
            routes: routes.iter().map(|(p, b)| (p.to_string(), b.clone())).collect(),
            other: Box::new(other),
        }
    }

    /// `/health` answers `health`'s way, every other path `other`'s.
    pub fn with_health(health: Behaviour, other: Behaviour) -> Behaviour {
        Behaviour::route(&[("/health", health)], other)
    }

    /// The behaviour that serves a request for `target` (a `Route` resolved, recursively).
    fn for_target(&self, target: &str) -> &Behaviour {
        match self {
            Behaviour::Route { routes, other } => {
                let path = target.split('?').next().unwrap_or_default();
                routes.iter().find(|(p, _)| p == path).map_or(&**other, |(_, b)| b).for_target(target)
            }
            b => b,
        }
    }

    /// Whether a listener is behind it (not `Refuse` or `Blackhole`): only those can be switched.
    fn listens(&self) -> bool {
        !matches!(self, Behaviour::Refuse | Behaviour::Blackhole)
    }

    /// Panics on a `Route` to a behaviour that cannot act on a request already read.
    fn check_routes(&self) {
        if let Behaviour::Route { routes, other } = self {
            for b in routes.iter().map(|(_, b)| b).chain(std::iter::once(&**other)) {
                assert!(
                    !matches!(b, Behaviour::Refuse | Behaviour::Blackhole | Behaviour::ResetAfterRead),
                    "a Route cannot lead to {b:?}"
                );
                b.check_routes();
            }
        }
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
    /// Which connection of this backend it came on: 1 for the first one the backend accepted.
    pub connection: u64,
    /// Its place on that connection: 1 for the first request, 2 for the next one kept alive...
    pub on_connection: u64,
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

    /// Whether the client asked for the connection to end after this request: a `close` token
    /// in `Connection`, or HTTP/1.0 without `keep-alive`.
    pub fn asks_close(&self) -> bool {
        let tokens: Vec<String> = self
            .headers_named("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        tokens.iter().any(|t| t == "close") || (self.version != "HTTP/1.1" && !tokens.iter().any(|t| t == "keep-alive"))
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A running backend (or, for `Refuse`, a port nobody listens on).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// The behaviour it was started with; [`Backends::set`] changes the one in force
    /// ([`Backends::behaviour`]), never whether it is `Refuse` or `Blackhole`.
    pub behaviour: Behaviour,
    current: Arc<Mutex<Behaviour>>,
    /// Connections accepted so far.
    connections: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
    /// A `Blackhole`'s listener and the connections that fill its backlog.
    blackhole: Option<(TcpListener, Vec<TcpStream>)>,
    /// A `Refuse`'s port: bound and never listening, so connecting is refused and no other
    /// socket (another `Refuse` among them) can take the port meanwhile.
    refuse: Option<tokio::net::TcpSocket>,
}

/// A set of backends sharing one arrival log; stops them all when dropped.
pub struct Backends {
    pub log: Log,
    /// Names of backends whose held connection (`Hang`, `RawNoClose`) or idle kept-alive
    /// connection (`KeepAlive`) the proxy closed, once per connection.
    pub closed: Arc<Mutex<Vec<String>>>,
    /// Names of backends that closed an idle kept-alive connection themselves (`idle_close`),
    /// once per connection, after the close.
    pub idle_closed: Arc<Mutex<Vec<String>>>,
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
            idle_closed: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            list: Vec::new(),
        }
    }

    /// Starts a backend and returns its address.
    pub fn add(&mut self, name: &str, behaviour: Behaviour) -> SocketAddr {
        assert!(self.list.iter().all(|b| b.name != name), "backend {name} twice");
        behaviour.check_routes();
        let current = Arc::new(Mutex::new(behaviour.clone()));
        let connections = Arc::new(AtomicU64::new(0));
        let (addr, accept, blackhole, refuse) = match behaviour {
            Behaviour::Refuse => {
                let socket = refusing_port();
                (socket.local_addr().unwrap(), None, None, Some(socket))
            }
            Behaviour::Blackhole => {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
                let addr = listener.local_addr().unwrap();
                (addr, None, Some((listener, fill_backlog(addr))), None)
            }
            _ => {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
                let addr = listener.local_addr().unwrap();
                listener.set_nonblocking(true).unwrap();
                let shared = Shared {
                    name: name.to_string(),
                    current: current.clone(),
                    connections: connections.clone(),
                    seen: self.log.clone(),
                    closed: self.closed.clone(),
                    idle_closed: self.idle_closed.clone(),
                    stop: self.stop.clone(),
                };
                (addr, Some(std::thread::spawn(move || accept_loop(listener, shared))), None, None)
            }
        };
        self.list.push(Backend {
            name: name.to_string(),
            addr,
            behaviour,
            current,
            connections,
            accept,
            blackhole,
            refuse,
        });
        addr
    }

    /// Switches a running backend to `behaviour` from its next request on (also on connections
    /// already kept alive). A `Refuse` or `Blackhole` backend has no listener to switch, and
    /// none can become one: both panic.
    pub fn set(&self, name: &str, behaviour: Behaviour) {
        let backend = self.get(name);
        assert!(backend.behaviour.listens(), "backend {name} is {:?}: it cannot be switched", backend.behaviour);
        assert!(behaviour.listens(), "backend {name}: switch to {behaviour:?} is not possible; add a new backend");
        behaviour.check_routes();
        *backend.current.lock().unwrap() = behaviour;
    }

    /// The behaviour in force now.
    pub fn behaviour(&self, name: &str) -> Behaviour {
        self.get(name).current.lock().unwrap().clone()
    }

    /// How many connections the backend has accepted so far.
    pub fn connections(&self, name: &str) -> u64 {
        self.get(name).connections.load(Ordering::SeqCst)
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

/// What the threads of one backend share with the set.
#[derive(Clone)]
struct Shared {
    name: String,
    current: Arc<Mutex<Behaviour>>,
    connections: Arc<AtomicU64>,
    seen: Log,
    closed: Arc<Mutex<Vec<String>>>,
    idle_closed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

fn accept_loop(listener: TcpListener, shared: Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let number = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, number, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves connection `number` of a backend: one request, or a series while `KeepAlive`.
fn serve(mut stream: TcpStream, number: u64, shared: &Shared) {
    let (name, stop) = (shared.name.as_str(), &*shared.stop);
    let log = &shared.seen;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    // Bytes read past the end of one request: the start of the next.
    let mut buf = Vec::new();
    let mut nth = 0;
    let (behaviour, head_only) = loop {
        nth += 1;
        let current = shared.current.lock().unwrap().clone();
        if let Behaviour::ResetAfterRead = current {
            let mut seen =
                if buf.is_empty() { peek_request(&stream, name) } else { read_request(&mut stream, &mut buf, name) };
            (seen.connection, seen.on_connection) = (number, nth);
            log.lock().unwrap().push(seen);
            // Dropping with the request still unread in the receive buffer sends a RST.
            return;
        }
        let mut seen = read_request(&mut stream, &mut buf, name);
        (seen.connection, seen.on_connection) = (number, nth);
        let behaviour = current.for_target(&seen.target).clone();
        let head_only = seen.method == "HEAD";
        let (complete, close) = (seen.complete, seen.asks_close());
        log.lock().unwrap().push(seen);
        if !complete {
            return;
        }
        let Behaviour::KeepAlive { status, idle_close } = behaviour else { break (behaviour, head_only) };
        let answer = response(name, status, name.as_bytes(), &[], head_only, close);
        if stream.write_all(&answer).is_err() || close {
            break (behaviour, head_only);
        }
        if buf.is_empty() {
            match wait_next(&stream, idle_close, stop) {
                Idle::Next => {}
                Idle::ClosedByPeer => {
                    shared.closed.lock().unwrap().push(name.to_string());
                    return;
                }
                // Dropping the idle connection closes it (FIN: nothing is left unread).
                Idle::Over => {
                    drop(stream);
                    if idle_close.is_some() && !stop.load(Ordering::SeqCst) {
                        shared.idle_closed.lock().unwrap().push(name.to_string());
                    }
                    return;
                }
            }
        }
    };
    match &behaviour {
        Behaviour::Refuse | Behaviour::Blackhole | Behaviour::ResetAfterRead | Behaviour::Route { .. } => {
            unreachable!()
        }
        // Answered already; the client asked for the close.
        Behaviour::KeepAlive { .. } => {}
        Behaviour::Answer { status, body, headers } => {
            let body = body.clone().unwrap_or_else(|| name.as_bytes().to_vec());
            let _ = stream.write_all(&answer(name, *status, &body, headers, head_only));
        }
        Behaviour::CloseAfterRead => {}
        Behaviour::CloseBeforeHeader => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-Backend: ");
        }
        Behaviour::Hang => {
            if hold(&mut stream, stop, MAX_HOLD) {
                shared.closed.lock().unwrap().push(name.to_string());
            }
        }
        Behaviour::Held { gate } => {
            let deadline = Instant::now() + MAX_HOLD;
            while !gate.is_open() && Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = stream.write_all(&answer(name, 200, name.as_bytes(), &[], head_only));
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
            if stream.write_all(bytes).is_ok() && hold(&mut stream, stop, MAX_HOLD) {
                shared.closed.lock().unwrap().push(name.to_string());
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

/// The response an `Answer` backend sends.
pub fn answer(name: &str, status: u16, body: &[u8], headers: &[(String, String)], head_only: bool) -> Vec<u8> {
    response(name, status, body, headers, head_only, true)
}

/// Like `answer`; without `Connection: close` unless `close` (a `KeepAlive` answer).
pub fn response(
    name: &str,
    status: u16,
    body: &[u8],
    headers: &[(String, String)],
    head_only: bool,
    close: bool,
) -> Vec<u8> {
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
    out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// How the wait for a next request on a kept-alive connection ended.
enum Idle {
    /// A next request is arriving.
    Next,
    /// The proxy closed the connection.
    ClosedByPeer,
    /// It was idle for `idle_close` (the caller closes it), the set was dropped, or `MAX_HOLD`
    /// passed.
    Over,
}

/// Waits on a kept-alive connection until the next request starts to arrive, peeking so the
/// bytes stay in the socket for whoever reads the request.
fn wait_next(stream: &TcpStream, idle_close: Option<Duration>, stop: &AtomicBool) -> Idle {
    let started = Instant::now();
    let limit = idle_close.unwrap_or(MAX_HOLD).min(MAX_HOLD);
    let mut byte = [0u8; 1];
    let outcome = loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() || stop.load(Ordering::SeqCst) {
            break Idle::Over;
        }
        let _ = stream.set_read_timeout(Some(left.clamp(Duration::from_millis(1), Duration::from_millis(20))));
        match stream.peek(&mut byte) {
            Ok(0) => break Idle::ClosedByPeer,
            Ok(_) => break Idle::Next,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break Idle::ClosedByPeer,
        }
    };
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    outcome
}

/// The outcome of parsing the bytes received so far.
enum Parsed {
    Incomplete,
    /// The request is malformed; keep what is known.
    Invalid,
    /// A whole request and how many bytes of the buffer it took.
    Complete(Box<Seen>, usize),
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
        connection: 0,
        on_connection: 0,
    };
    let rest = &buf[head_end + 4..];
    let mut used = head_end + 4;
    let chunked = seen.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        seen.chunked = true;
        match dechunk_len(rest) {
            Some(Some((body, n))) => (seen.body, used) = (body, used + n),
            Some(None) => return Parsed::Incomplete,
            None => return Parsed::Invalid,
        }
    } else if let Some(len) = seen.header("content-length") {
        let Ok(len) = len.parse::<usize>() else { return Parsed::Invalid };
        if rest.len() < len {
            return Parsed::Incomplete;
        }
        seen.body = rest[..len].to_vec();
        used += len;
    }
    Parsed::Complete(Box::new(seen), used)
}

/// De-chunks a complete chunked body: `Some(None)` while incomplete, `None` when invalid.
pub fn dechunk(rest: &[u8]) -> Option<Option<Vec<u8>>> {
    dechunk_len(rest).map(|done| done.map(|(body, _)| body))
}

/// Like `dechunk`, also returning how many bytes the chunked body took, trailers included.
fn dechunk_len(buf: &[u8]) -> Option<Option<(Vec<u8>, usize)>> {
    let mut rest = buf;
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else { return Some(None) };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers end with an empty line.
            let trailer_end = if rest.starts_with(b"\r\n") { Some(2) } else { find(rest, b"\r\n\r\n").map(|i| i + 4) };
            return Some(trailer_end.map(|n| (body, buf.len() - rest.len() + n)));
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

/// Reads until the request is complete, the peer closes, or the read times out. `buf` holds
/// bytes already read from the connection; what follows the request is left in it.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, name: &str) -> Seen {
    let mut chunk = [0u8; 16384];
    loop {
        match parse_request(buf, name) {
            Parsed::Complete(seen, used) => {
                buf.drain(..used);
                return *seen;
            }
            Parsed::Invalid => return partial(&std::mem::take(buf), name),
            Parsed::Incomplete => {}
        }
        if buf.len() > MAX_REQUEST {
            return partial(&std::mem::take(buf), name);
        }
        match crate::support::read_some(stream, &mut chunk) {
            Ok(0) | Err(_) => return partial(&std::mem::take(buf), name),
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
            Parsed::Complete(seen, _) => return *seen,
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
        connection: 0,
        on_connection: 0,
    }
}

/// A loopback port held by a socket that is bound and never listens: connecting to it is
/// refused (RST), and nothing else can bind it while the socket lives.
pub fn refusing_port() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind a refusing port");
    socket
}
