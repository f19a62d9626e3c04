//! In-process fakes of the services excp talks to: exrp (`POST /api/v1/interaction-end`) and
//! GIR RWS (`GET /api/v2/ops/contact-centers/<orgId>/recordings/<callUUID>`). std threads and
//! std::net only, 127.0.0.1 port 0.
//!
//! Both sit on a [`Server`]: one request per connection, answered by a handler, with a switch
//! that takes the listener away (connecting is refused) and brings it back on the same port.
//! Everything is bounded: reads time out after 5 s, a held (hanging) connection is kept until the
//! client closes it, 30 s pass, or the fake is dropped; dropping a fake stops its threads.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::backend::{dechunk, find};
use super::wire::{MAX_HOLD, hold, reason};

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 << 20;

/// One request as a fake received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a handler does with a request.
pub enum Answer {
    /// Status and JSON body, then close.
    Json(u16, Value),
    /// Holds the connection without answering until the client gives up (or 30 s pass).
    Hang,
    /// Waits, then answers (unless the client went away meanwhile).
    Delayed(Duration, u16, Value),
}

type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

/// An HTTP/1.1 listener on 127.0.0.1 that can be taken down and brought back on its port.
pub struct Server {
    pub addr: SocketAddr,
    handler: Handler,
    /// Stops every thread (drop).
    stop: Arc<AtomicBool>,
    /// The accept loop in force and its own stop switch; None while down.
    listening: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    /// Connections the client closed while held (`Answer::Hang`).
    pub abandoned: Arc<Mutex<u32>>,
}

impl Server {
    pub fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake");
        let addr = listener.local_addr().unwrap();
        let server = Server {
            addr,
            handler,
            stop: Arc::new(AtomicBool::new(false)),
            listening: Mutex::new(None),
            abandoned: Arc::new(Mutex::new(0)),
        };
        server.listen(listener);
        server
    }

    fn listen(&self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let own = Arc::new(AtomicBool::new(false));
        let (stop, handler, abandoned, own2) =
            (self.stop.clone(), self.handler.clone(), self.abandoned.clone(), own.clone());
        let handle = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && !own2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (stop, handler, abandoned) = (stop.clone(), handler.clone(), abandoned.clone());
                        std::thread::spawn(move || serve(stream, &handler, &stop, &abandoned));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener is dropped here: connecting is refused from now on.
        });
        *self.listening.lock().unwrap() = Some((own, handle));
    }

    /// Closes the listener: connections are refused until `up`.
    pub fn down(&self) {
        if let Some((own, handle)) = self.listening.lock().unwrap().take() {
            own.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }

    /// Listens again on the same port (std sets SO_REUSEADDR, so TIME_WAIT is no obstacle).
    pub fn up(&self) {
        if self.listening.lock().unwrap().is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot listen on {} again: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.listen(listener);
    }

    pub fn is_up(&self) -> bool {
        self.listening.lock().unwrap().is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.down();
    }
}

fn serve(mut stream: TcpStream, handler: &Handler, stop: &AtomicBool, abandoned: &Mutex<u32>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let Some(request) = read_request(&mut stream) else { return };
    let (status, body) = match handler(&request) {
        Answer::Json(status, body) => (status, body),
        Answer::Hang => {
            if hold(&mut stream, stop, MAX_HOLD) {
                *abandoned.lock().unwrap() += 1;
            }
            return;
        }
        Answer::Delayed(delay, status, body) => {
            if hold(&mut stream, stop, delay) {
                *abandoned.lock().unwrap() += 1;
                return;
            }
            (status, body)
        }
    };
    let body = serde_json::to_vec(&body).unwrap();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// Reads one request (body by Content-Length or chunked); None when it never completes.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(head_end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut parts = lines.next().unwrap_or_default().split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let rest = &buf[head_end + 4..];
            let body = if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
                match dechunk(rest) {
                    Some(Some(body)) => Some(body),
                    Some(None) => None,
                    None => return None,
                }
            } else {
                let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                (rest.len() >= len).then(|| rest[..len].to_vec())
            };
            if let Some(body) = body {
                return Some(Request { method, target, headers, body, at: Instant::now() });
            }
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        match crate::support::read_some(stream, &mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// exrp

/// How the fake exrp answers an interaction-end.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// 202: the job is taken (deduplicated on (callUUID, mediaId)).
    Accept,
    /// Takes the job at once but answers 202 only after this delay: excp may die (or time
    /// out) before it learns that exrp has it, and will send it again.
    AcceptSlow(Duration),
    /// This status (500, 503 ...) and nothing taken.
    Fail(u16),
    /// Reads the request and never answers.
    Hang,
    /// Nothing listens: connecting is refused.
    Down,
}

/// One interaction-end as the fake received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: Value,
    pub headers: Vec<(String, String)>,
    pub at: Instant,
    /// The mode that answered it.
    pub mode: Mode,
}

impl Received {
    pub fn call_uuid(&self) -> &str {
        self.body["callUUID"].as_str().unwrap_or_default()
    }

    /// The mediaIds it carries, in order.
    pub fn media_ids(&self) -> Vec<String> {
        self.body["recordings"]
            .as_array()
            .map(|list| list.iter().map(|r| r["mediaId"].as_str().unwrap_or_default().to_string()).collect())
            .unwrap_or_default()
    }

    pub fn accepted(&self) -> bool {
        matches!(self.mode, Mode::Accept | Mode::AcceptSlow(_))
    }
}

#[derive(Default)]
struct ExrpState {
    mode: Mutex<Option<Mode>>,
    received: Mutex<Vec<Received>>,
    /// Jobs taken, keyed on (callUUID, mediaId), in the order first taken.
    jobs: Mutex<Vec<(String, String)>>,
    /// How many accepted interaction-ends carried each key.
    offers: Mutex<HashMap<(String, String), u32>>,
    /// Requests that were not `POST /api/v1/interaction-end` with a JSON body.
    other: Mutex<Vec<Request>>,
}

/// A fake exrp: records every interaction-end, answers as its [`Mode`] says, and takes each
/// (callUUID, mediaId) at most once, as the real one must.
pub struct FakeExrp {
    state: Arc<ExrpState>,
    server: Server,
}

impl FakeExrp {
    pub fn start(mode: Mode) -> FakeExrp {
        let state = Arc::new(ExrpState::default());
        *state.mode.lock().unwrap() = Some(Mode::Accept);
        let s = state.clone();
        let server = Server::start(Arc::new(move |req: &Request| s.handle(req)));
        let fake = FakeExrp { state, server };
        fake.set(mode);
        fake
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Switches the behaviour from the next request on.
    pub fn set(&self, mode: Mode) {
        if mode == Mode::Down {
            self.server.down();
        } else {
            self.server.up();
        }
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    /// Every interaction-end received so far, in arrival order (whatever the answer).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The interaction-ends answered with 202.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(Received::accepted).collect()
    }

    /// The (callUUID, mediaId) jobs taken, each once, in the order first taken.
    pub fn jobs(&self) -> Vec<(String, String)> {
        self.state.jobs.lock().unwrap().clone()
    }

    /// The mediaIds taken for one call, sorted.
    pub fn jobs_of(&self, call_uuid: &str) -> Vec<String> {
        let mut ids: Vec<String> = self.jobs().into_iter().filter(|(c, _)| c == call_uuid).map(|(_, m)| m).collect();
        ids.sort();
        ids
    }

    /// How many accepted interaction-ends carried this recording.
    pub fn offers(&self, call_uuid: &str, media_id: &str) -> u32 {
        self.state.offers.lock().unwrap().get(&(call_uuid.to_string(), media_id.to_string())).copied().unwrap_or(0)
    }

    /// Requests that were not interaction-ends.
    pub fn other(&self) -> Vec<Request> {
        self.state.other.lock().unwrap().clone()
    }

    /// Connections excp closed while the fake held them (`Hang`, `AcceptSlow`).
    pub fn abandoned(&self) -> u32 {
        *self.server.abandoned.lock().unwrap()
    }

    /// Waits until `cond` holds on the received list; panics after `limit`.
    pub fn wait(&self, limit: Duration, what: &str, cond: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let received = self.received();
            if cond(&received) {
                return received;
            }
            assert!(Instant::now() < deadline, "fake exrp: {what} not within {limit:?}; received: {received:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every mediaId of `call_uuid` in `media_ids` has been taken.
    pub fn wait_jobs(&self, call_uuid: &str, media_ids: &[&str], limit: Duration) {
        self.wait(limit, &format!("jobs {media_ids:?} of {call_uuid}"), |_| {
            let have = self.jobs_of(call_uuid);
            media_ids.iter().all(|m| have.iter().any(|h| h == m))
        });
    }
}

impl ExrpState {
    fn handle(&self, req: &Request) -> Answer {
        let mode = self.mode.lock().unwrap().clone().unwrap_or(Mode::Accept);
        let body: Option<Value> = serde_json::from_slice(&req.body).ok();
        let (true, Some(body)) = (req.method == "POST" && req.target == "/api/v1/interaction-end", body) else {
            self.other.lock().unwrap().push(req.clone());
            return Answer::Json(400, json!({"error": "not an interaction-end"}));
        };
        let received = Received { body: body.clone(), headers: req.headers.clone(), at: req.at, mode: mode.clone() };
        if received.accepted() {
            let call = received.call_uuid().to_string();
            let mut jobs = self.jobs.lock().unwrap();
            let mut offers = self.offers.lock().unwrap();
            for media_id in received.media_ids() {
                let key = (call.clone(), media_id);
                *offers.entry(key.clone()).or_default() += 1;
                if !jobs.contains(&key) {
                    jobs.push(key);
                }
            }
        }
        self.received.lock().unwrap().push(received);
        match mode {
            Mode::Accept => Answer::Json(202, json!({"status": "accepted"})),
            Mode::AcceptSlow(delay) => Answer::Delayed(delay, 202, json!({"status": "accepted"})),
            Mode::Fail(status) => Answer::Json(status, json!({"status": "failed"})),
            Mode::Hang => Answer::Hang,
            Mode::Down => Answer::Json(503, json!({"status": "down"})),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GIR RWS

#[derive(Default)]
struct RwsState {
    /// Recordings RWS has processed: callUUID → the GIR recording object it answers.
    processed: Mutex<HashMap<String, Value>>,
    requests: Mutex<Vec<Request>>,
}

/// A fake GIR Recording Web Service: checks Basic auth and the path
/// `/api/v2/ops/contact-centers/<orgId>/recordings/<callUUID>`, answers 404 until the test
/// marks the call processed, then 200 with the GIR recording shape.
pub struct FakeRws {
    state: Arc<RwsState>,
    server: Server,
    pub org_id: String,
    pub user: String,
    pub password: String,
}

impl FakeRws {
    pub fn start(org_id: &str, user: &str, password: &str) -> FakeRws {
        let state = Arc::new(RwsState::default());
        let s = state.clone();
        let prefix = format!("/api/v2/ops/contact-centers/{org_id}/recordings/");
        let auth = {
            use base64::Engine;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        };
        let server = Server::start(Arc::new(move |req: &Request| {
            s.requests.lock().unwrap().push(req.clone());
            if req.header("authorization") != Some(auth.as_str()) {
                return Answer::Json(401, json!({"error": "unauthorized"}));
            }
            let call = req.target.strip_prefix(&prefix);
            match (req.method.as_str(), call) {
                ("GET", Some(call)) if !call.is_empty() && !call.contains('/') => {
                    match s.processed.lock().unwrap().get(call) {
                        Some(recording) => Answer::Json(200, recording.clone()),
                        None => Answer::Json(404, json!({"error": "recording not found"})),
                    }
                }
                _ => Answer::Json(400, json!({"error": "unexpected request"})),
            }
        }));
        FakeRws { state, server, org_id: org_id.into(), user: user.into(), password: password.into() }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// From now on RWS answers 200 with `recording` for this call.
    pub fn process(&self, call_uuid: &str, recording: Value) {
        self.state.processed.lock().unwrap().insert(call_uuid.to_string(), recording);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests for one call (by the last path segment).
    pub fn requests_for(&self, call_uuid: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.target.ends_with(&format!("/{call_uuid}"))).collect()
    }

    /// The path a correct fetch of `call_uuid` uses.
    pub fn path_of(&self, call_uuid: &str) -> String {
        format!("/api/v2/ops/contact-centers/{}/recordings/{call_uuid}", self.org_id)
    }
}
