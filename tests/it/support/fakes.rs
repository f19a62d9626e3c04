//! In-process fakes of the services excp talks to: exrp (`POST /api/v1/interaction-end`) and
//! GIR RWS (`GET /api/v2/ops/contact-centers/<orgId>/recordings/<callUUID>`), on a
//! [`FakeServer`] (axum, 127.0.0.1 port 0).
//!
//! Both sit on a [`Server`]: every request is answered by a handler and the connection closed
//! after it (so a fake taken down is down for a client with a pool too). A held (hanging)
//! request is kept until the client closes it or the fake is dropped; bodies beyond 8 MiB are
//! refused.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::{Value, json};

use super::fake_server::{FakeServer, hold};

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
    /// Status and JSON body.
    Json(u16, Value),
    /// Holds the request without answering until the client gives up.
    Hang,
    /// Waits, then answers (unless the client went away meanwhile).
    Delayed(Duration, u16, Value),
}

type Handler = Arc<dyn Fn(&Request) -> Answer + Send + Sync>;

/// A fake that can be taken down and brought back on its port.
pub struct Server {
    pub addr: SocketAddr,
    server: FakeServer,
    /// Requests the client gave up on while they were held (`Answer::Hang`, `Delayed`).
    abandoned: Arc<AtomicU32>,
}

impl Server {
    pub fn start(handler: Handler) -> Server {
        let abandoned = Arc::new(AtomicU32::new(0));
        let held = abandoned.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (handler, held) = (handler.clone(), held.clone());
            async move {
                let Some(request) = read_request(req).await else {
                    return (StatusCode::PAYLOAD_TOO_LARGE, [(header::CONNECTION, "close")]).into_response();
                };
                let (status, body) = match handler(&request) {
                    Answer::Json(status, body) => (status, body),
                    Answer::Hang => {
                        hold(None, || {
                            held.fetch_add(1, Ordering::SeqCst);
                        })
                        .await;
                        unreachable!("a hold without a limit ends only when its request is dropped")
                    }
                    Answer::Delayed(delay, status, body) => {
                        hold(Some(delay), || {
                            held.fetch_add(1, Ordering::SeqCst);
                        })
                        .await;
                        (status, body)
                    }
                };
                json_close(status, &body)
            }
        });
        let server = FakeServer::start(app);
        Server { addr: server.addr, server, abandoned }
    }

    /// Closes the listener: connections are refused until `up`.
    pub fn down(&self) {
        self.server.down();
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        self.server.up();
    }

    pub fn is_up(&self) -> bool {
        self.server.is_up()
    }

    pub fn abandoned(&self) -> u32 {
        self.abandoned.load(Ordering::SeqCst)
    }
}

/// A JSON answer after which the connection closes.
fn json_close(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).expect("a fake's status");
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CONNECTION, "close")], body.to_string())
        .into_response()
}

/// The request whole; None when its body is beyond MAX_REQUEST (or never completes).
async fn read_request(req: axum::extract::Request) -> Option<Request> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_REQUEST).await.ok()?;
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    Some(Request {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    })
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
        self.server.abandoned()
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
