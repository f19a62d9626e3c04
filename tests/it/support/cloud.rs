//! A fake Genesys Cloud for tests and benchmarks: the OAuth token endpoint, the presigned
//! recording upload API (`POST /api/v2/uploads/recordings`) and the S3-like PUT target of the
//! URLs it hands out, each checked as the documented API does (research/domain.md §4, §7.5),
//! with scriptable faults and everything received open to inspection. `GET /_fake/counts` and
//! `GET /_fake/report` show the same from outside the process (benchmark and soak scripts).
//!
//! Built on `support::fake_server` (axum) and the crates of Cargo.toml only, so that
//! `examples/fakecloud.rs` can include both by path. Connections are kept alive as the real
//! API's are, and closed after a fault or on `Connection: close`; a PUT must carry its
//! Content-Length (S3 answers 411 otherwise) and is digested as it streams in; a held request
//! is kept until the client leaves (and logged with status 0 then) or the fake is dropped.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body as AxumBody;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use serde_json::{Value, json};

// `support::fake_server` in the tests; examples/fakecloud.rs includes the same file beside this.
use super::fake_server::{FakeServer, hold};

/// Token and presign bodies.
const MAX_API_BODY: usize = 1 << 20;
/// A PUT body (a recording).
pub const MAX_OBJECT: u64 = 256 << 20;
/// Requests kept in the log; a benchmark run must not grow it without end.
const MAX_LOG: usize = 100_000;

/// The endpoints faults can be scripted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    Presign,
    Put,
}

/// What a scripted call answers instead of (or before) the normal answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with `Retry-After: <secs>`, an ININ-Correlation-Id and GC's documented body.
    RateLimit(u64),
    /// 429 with this Retry-After header value, or none.
    RateLimitRaw(Option<String>),
    /// This status with a GC-style JSON body (token, presign) or S3 XML (PUT).
    Status(u16),
    /// Reads the request and never answers (until the client gives up).
    Hang,
    /// Waits, then answers as usual.
    Delay(Duration),
    /// Answers as usual (to script a fault for a later call).
    Pass,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub endpoint: Option<Endpoint>,
    /// 0 when no answer was sent (held until the client left).
    pub status: u16,
    pub at: Instant,
}

/// A presigned URL the fake handed out.
#[derive(Clone, Debug)]
pub struct Presign {
    pub upload_key: String,
    pub file_name: String,
    pub content_md5: String,
    pub content_type: String,
    /// The headers the PUT must carry.
    pub headers: BTreeMap<String, String>,
    pub expires: Instant,
}

/// An object stored by a successful PUT.
#[derive(Clone, Debug)]
pub struct Object {
    pub upload_key: String,
    pub file_name: String,
    pub len: u64,
    /// base64 of the MD5, as Content-MD5.
    pub md5_b64: String,
    pub content_type: String,
    /// None when the fake keeps no bytes (benchmarks).
    pub bytes: Option<Vec<u8>>,
    /// Completed PUTs of this object: more than one means a resumed upload overwrote it.
    pub puts: usize,
    /// Unix time in ms of the first completed PUT.
    pub first_put_ms: u64,
}

#[derive(Default)]
struct Inner {
    token_lifetime: u64,
    /// Live tokens and when they stop being accepted.
    tokens: HashMap<String, Instant>,
    token_grants: usize,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    /// Lifetime of the URLs handed out from now on (None: signedUrlTimeoutSeconds).
    url_lifetime: Option<Duration>,
    /// By signature (the query's X-Amz-Signature).
    presigns: HashMap<String, Presign>,
    presigns_by_name: HashMap<String, usize>,
    objects: HashMap<String, Object>,
    puts_by_key: HashMap<String, usize>,
    log: VecDeque<Logged>,
    /// Every Nth presign answers 429 (benchmarks).
    rate_limit_every: Option<(u64, u64)>,
    presign_calls: u64,
    sent_429: usize,
    uploaded_bytes: u64,
}

struct State {
    client_id: String,
    /// The client secret the org accepts; rotated by `set_secret`.
    secret: Mutex<String>,
    org: String,
    addr: SocketAddr,
    keep_bytes: AtomicBool,
    inner: Mutex<Inner>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake. `base_url()` serves as both api_url and login_url.
pub struct FakeCloud {
    state: Arc<State>,
    _server: FakeServer,
}

impl FakeCloud {
    pub fn start(client_id: &str, secret: &str) -> FakeCloud {
        FakeCloud::start_on("127.0.0.1:0", client_id, secret).expect("bind fake cloud")
    }

    /// On a given address (the benchmark fake's --port).
    pub fn start_on(addr: &str, client_id: &str, secret: &str) -> std::io::Result<FakeCloud> {
        let mut shared = None;
        let server = FakeServer::start_on(addr, |addr| {
            let state = Arc::new(State {
                client_id: client_id.to_string(),
                secret: Mutex::new(secret.to_string()),
                org: uuid::Uuid::new_v4().to_string(),
                addr,
                keep_bytes: AtomicBool::new(true),
                inner: Mutex::new(Inner { token_lifetime: 86_400, ..Inner::default() }),
            });
            shared = Some(state.clone());
            axum::Router::new().fallback(move |req: axum::extract::Request| serve(state.clone(), req))
        })?;
        Ok(FakeCloud { state: shared.expect("the app was made"), _server: server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    pub fn org(&self) -> &str {
        &self.state.org
    }

    // ---- scripting

    /// The next `n` calls of `endpoint` answer with `fault` (queued after faults already set).
    pub fn fail_next(&self, endpoint: Endpoint, n: usize, fault: Fault) {
        let mut inner = self.state.lock();
        let queue = inner.faults.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(fault, n));
    }

    /// The org's secret is rotated: tokens granted so far stop working, and only `secret`
    /// gets new ones (as when an admin regenerates the OAuth client's secret).
    pub fn set_secret(&self, secret: &str) {
        *self.state.secret.lock().unwrap_or_else(|e| e.into_inner()) = secret.to_string();
        self.state.lock().tokens.clear();
    }

    /// Drops every fault still queued.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// `expires_in` of tokens granted from now on.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.state.lock().token_lifetime = secs;
    }

    /// Every live token stops being accepted now: the next presign with one gets 401.
    pub fn expire_tokens(&self) {
        self.state.lock().tokens.clear();
    }

    /// URLs handed out from now on expire after `lifetime` (zero: at once); None restores
    /// signedUrlTimeoutSeconds.
    pub fn set_url_lifetime(&self, lifetime: Option<Duration>) {
        self.state.lock().url_lifetime = lifetime;
    }

    /// Every URL handed out so far is expired now.
    pub fn expire_urls(&self) {
        let now = Instant::now();
        for presign in self.state.lock().presigns.values_mut() {
            presign.expires = now;
        }
    }

    /// Every `every`-th presign answers 429 with `Retry-After: retry_after` (None: off).
    pub fn set_rate_limit_every(&self, every: Option<u64>, retry_after: u64) {
        self.state.lock().rate_limit_every = every.filter(|n| *n > 0).map(|n| (n, retry_after));
    }

    /// Whether PUT bodies are kept (default) or only measured (benchmarks).
    pub fn keep_bytes(&self, keep: bool) {
        self.state.keep_bytes.store(keep, Ordering::SeqCst);
    }

    // ---- inspection

    pub fn token_grants(&self) -> usize {
        self.state.lock().token_grants
    }

    /// Every presign handed out, in no order.
    pub fn presigned(&self) -> Vec<Presign> {
        self.state.lock().presigns.values().cloned().collect()
    }

    /// How many presigned URLs were handed out for this fileName.
    pub fn presigns_of(&self, file_name: &str) -> usize {
        self.state.lock().presigns_by_name.get(file_name).copied().unwrap_or(0)
    }

    /// The object stored under an uploadKey.
    pub fn object(&self, upload_key: &str) -> Option<Object> {
        self.state.lock().objects.get(upload_key).cloned()
    }

    /// The objects stored for a fileName (one per uploadKey that received a good PUT).
    pub fn objects_of(&self, file_name: &str) -> Vec<Object> {
        let mut objects: Vec<Object> =
            self.state.lock().objects.values().filter(|o| o.file_name == file_name).cloned().collect();
        objects.sort_by(|a, b| a.upload_key.cmp(&b.upload_key));
        objects
    }

    /// Distinct uploadKeys of this fileName that received a successful PUT: 1 means "uploaded
    /// exactly once".
    pub fn uploads_of(&self, file_name: &str) -> usize {
        self.state.lock().objects.values().filter(|o| o.file_name == file_name).count()
    }

    /// PUTs received for an uploadKey, whatever their answer.
    pub fn puts_of(&self, upload_key: &str) -> usize {
        self.state.lock().puts_by_key.get(upload_key).copied().unwrap_or(0)
    }

    /// The counts fakecloud prints at exit and serves at `GET /_fake/counts`.
    pub fn counts(&self) -> Value {
        counts(&self.state)
    }

    /// Every object stored, by fileName, as `GET /_fake/report` serves it.
    pub fn report(&self) -> Value {
        report(&self.state)
    }

    /// Objects stored, and their bytes in total.
    pub fn uploads(&self) -> (usize, u64) {
        let inner = self.state.lock();
        (inner.objects.len(), inner.uploaded_bytes)
    }

    /// Presign requests that carried a live token (whatever they were answered).
    pub fn presign_calls(&self) -> u64 {
        self.state.lock().presign_calls
    }

    /// 429 answers sent, on any endpoint.
    pub fn sent_429(&self) -> usize {
        self.state.lock().sent_429
    }

    /// The requests received so far (the last 100 000), in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.lock().log.iter().cloned().collect()
    }

    /// The logged requests of one endpoint.
    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<Logged> {
        self.state.lock().log.iter().filter(|l| l.endpoint == Some(endpoint)).cloned().collect()
    }

    /// Waits until `cond` holds; panics after `limit`.
    pub fn wait(&self, limit: Duration, what: &str, cond: impl Fn(&FakeCloud) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(Instant::now() < deadline, "fake cloud: {what} not within {limit:?}; log: {:#?}", self.requests());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One request

struct Head {
    method: String,
    target: String,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An answer: status, extra headers, content type, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply { status, headers: vec![], content_type: "application/json", body: body.to_string().into_bytes() }
    }

    fn xml(status: u16, code: &str, message: &str) -> Reply {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
             <RequestId>{}</RequestId></Error>",
            short_id()
        );
        Reply { status, headers: vec![], content_type: "application/xml", body: body.into_bytes() }
    }

    fn empty(status: u16, headers: Vec<(String, String)>) -> Reply {
        Reply { status, headers, content_type: "text/plain", body: vec![] }
    }

    /// The answer, the connection kept open for the next request.
    fn keep(self) -> Response {
        self.response(false)
    }

    /// The answer, after which the connection closes.
    fn close(self) -> Response {
        self.response(true)
    }

    fn response(self, close: bool) -> Response {
        let mut response = Response::builder().status(self.status).header("content-type", self.content_type);
        for (name, value) in &self.headers {
            response = response.header(name, value);
        }
        if close {
            response = response.header("connection", "close");
        }
        response.body(AxumBody::from(self.body)).expect("a fake's answer")
    }
}

async fn serve(state: Arc<State>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let head = Head {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |p| p.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    };
    let path = head.target.split('?').next().unwrap_or_default().to_string();
    if head.method == "GET" && path.starts_with("/_fake/") {
        // Inspection from outside: not Genesys Cloud's API, so neither logged nor scriptable.
        let reply = match path.as_str() {
            "/_fake/counts" => Reply::json(200, counts(&state)),
            "/_fake/report" => Reply::json(200, report(&state)),
            _ => Reply::json(404, json!({"message": "GET /_fake/counts or /_fake/report"})),
        };
        return reply.close();
    }
    let endpoint = match (head.method.as_str(), path.as_str()) {
        ("POST", "/oauth/token") => Some(Endpoint::Token),
        ("POST", "/api/v2/uploads/recordings") => Some(Endpoint::Presign),
        ("PUT", p) if p.starts_with("/upload/") => Some(Endpoint::Put),
        _ => None,
    };
    let log = |state: &State, status: u16| {
        let mut inner = state.lock();
        if inner.log.len() >= MAX_LOG {
            inner.log.pop_front();
        }
        inner.log.push_back(Logged {
            method: head.method.clone(),
            target: head.target.clone(),
            endpoint,
            status,
            at: Instant::now(),
        });
    };
    // hyper has refused a Content-Length that does not parse, with 400, before this.
    let Some(len) = head.header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
        let reply = if head.header("transfer-encoding").is_some() || endpoint == Some(Endpoint::Put) {
            Reply::xml(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        } else {
            // No body at all.
            dispatch(&state, &head, endpoint, Body::Small(vec![]))
        };
        log(&state, reply.status);
        return reply.close();
    };
    let limit = if endpoint == Some(Endpoint::Put) { MAX_OBJECT } else { MAX_API_BODY as u64 };
    if len > limit {
        log(&state, 413);
        // Answered before the body is read: hyper sends no 100 Continue for it, as S3 does not.
        return Reply::xml(413, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size").close();
    }
    let body = if endpoint == Some(Endpoint::Put) {
        read_object(body, len, state.keep_bytes.load(Ordering::SeqCst)).await
    } else {
        read_small(body, len as usize).await
    };
    let Some(body) = body else {
        // The client went away mid-body: nobody reads this.
        return Reply::empty(400, vec![]).close();
    };
    let fault = endpoint.and_then(|e| state.lock().faults.get_mut(&e).and_then(VecDeque::pop_front));
    let gone = || log(&state, 0);
    match fault {
        Some(Fault::Hang) => {
            hold(None, gone).await;
            unreachable!("a hold without a limit ends only when its request is dropped")
        }
        Some(Fault::Delay(delay)) => {
            hold(Some(delay), gone).await;
            let reply = dispatch(&state, &head, endpoint, body);
            log(&state, reply.status);
            reply.keep()
        }
        Some(Fault::RateLimit(secs)) => faulted(&state, &log, rate_limited(&state, Some(secs.to_string()))),
        Some(Fault::RateLimitRaw(value)) => faulted(&state, &log, rate_limited(&state, value)),
        Some(Fault::Status(status)) => {
            let reply = if endpoint == Some(Endpoint::Put) {
                s3_error(status)
            } else {
                gc_error(status, &format!("scripted failure {status}"))
            };
            faulted(&state, &log, reply)
        }
        Some(Fault::Pass) | None => {
            let reply = dispatch(&state, &head, endpoint, body);
            log(&state, reply.status);
            reply.keep()
        }
    }
}

/// A scripted fault's answer, after which the connection closes.
fn faulted(state: &State, log: &impl Fn(&State, u16), reply: Reply) -> Response {
    log(state, reply.status);
    reply.close()
}

/// A request body: whole (token, presign) or digested as it came (PUT).
enum Body {
    Small(Vec<u8>),
    Object { len: u64, md5: [u8; 16], bytes: Option<Vec<u8>> },
}

fn dispatch(state: &State, head: &Head, endpoint: Option<Endpoint>, body: Body) -> Reply {
    match (endpoint, body) {
        (Some(Endpoint::Token), Body::Small(body)) => token(state, head, &body),
        (Some(Endpoint::Presign), Body::Small(body)) => presign(state, head, &body),
        (Some(Endpoint::Put), Body::Object { len, md5, bytes }) => put(state, head, len, md5, bytes),
        (Some(Endpoint::Put), Body::Small(body)) => {
            let md5: [u8; 16] = Md5::digest(&body).into();
            put(state, head, body.len() as u64, md5, Some(body))
        }
        _ => gc_error(404, "no such resource"),
    }
}

fn token(state: &State, head: &Head, body: &[u8]) -> Reply {
    let secret = state.secret.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let expected = format!("Basic {}", B64.encode(format!("{}:{}", state.client_id, secret)));
    if head.header("authorization") != Some(expected.as_str()) {
        return Reply::json(
            401,
            json!({"error": "invalid_client", "description": "client not found", "error_description": "client not found"}),
        );
    }
    let form = String::from_utf8_lossy(body);
    let grant = form.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "grant_type").map(|(_, v)| v);
    let form_type = head.header("content-type").unwrap_or_default();
    if grant != Some("client_credentials") || !form_type.starts_with("application/x-www-form-urlencoded") {
        return Reply::json(
            400,
            json!({"error": "unsupported_grant_type", "description": "grant type not supported",
                   "error_description": "grant type not supported"}),
        );
    }
    let mut inner = state.lock();
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let lifetime = inner.token_lifetime;
    inner.tokens.insert(token.clone(), Instant::now() + Duration::from_secs(lifetime));
    inner.token_grants += 1;
    Reply::json(200, json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime}))
}

fn presign(state: &State, head: &Head, body: &[u8]) -> Reply {
    let bearer = head.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    {
        let mut inner = state.lock();
        let live = bearer.and_then(|t| inner.tokens.get(t)).is_some_and(|expires| Instant::now() < *expires);
        if !live {
            return match bearer {
                None => gc_error_coded(
                    401,
                    "authentication.required",
                    "No authentication bearer token specified in authorization header.",
                ),
                Some(_) => gc_error_coded(401, "bad.credentials", "Invalid login credentials."),
            };
        }
        inner.presign_calls += 1;
        let calls = inner.presign_calls;
        if let Some((_, retry_after)) = inner.rate_limit_every.filter(|(every, _)| calls % every == 0) {
            drop(inner);
            return rate_limited(state, Some(retry_after.to_string()));
        }
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return gc_error(400, "The request could not be understood by the server due to malformed syntax.");
    };
    let file_name = request["fileName"].as_str().unwrap_or_default();
    if let Some(problem) = file_name_problem(file_name) {
        return gc_error(400, &format!("fileName {problem}"));
    }
    let content_md5 = request["contentMd5"].as_str().unwrap_or_default();
    if B64.decode(content_md5).map(|d| d.len()) != Ok(16) {
        return gc_error(400, "contentMd5 must be the base64 encoded MD5 of the content");
    }
    let content_type = request["contentType"].as_str().unwrap_or_default();
    if content_type.is_empty() {
        return gc_error(400, "contentType is required");
    }
    let timeout = match &request["signedUrlTimeoutSeconds"] {
        Value::Null => 600,
        v => match v.as_u64() {
            Some(t @ 1..=604_800) => t,
            _ => return gc_error(400, "signedUrlTimeoutSeconds must be between 1 and 604800"),
        },
    };
    let upload_key = format!("{}/{}/{}", state.org, uuid::Uuid::new_v4(), file_name);
    let signature = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let headers = BTreeMap::from([
        ("Content-MD5".to_string(), content_md5.to_string()),
        ("Content-Type".to_string(), content_type.to_string()),
        ("x-amz-server-side-encryption".to_string(), "AES256".to_string()),
    ]);
    let url = format!(
        "http://{}/upload/{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={timeout}&X-Amz-SignedHeaders={}&X-Amz-Signature={signature}",
        state.addr,
        encode_path(&upload_key),
        "content-md5%3Bcontent-type%3Bhost%3Bx-amz-server-side-encryption",
    );
    let mut inner = state.lock();
    let expires = Instant::now() + inner.url_lifetime.unwrap_or(Duration::from_secs(timeout));
    inner.presigns.insert(
        signature,
        Presign {
            upload_key: upload_key.clone(),
            file_name: file_name.to_string(),
            content_md5: content_md5.to_string(),
            content_type: content_type.to_string(),
            headers: headers.clone(),
            expires,
        },
    );
    *inner.presigns_by_name.entry(file_name.to_string()).or_default() += 1;
    // Genesys Cloud names every answer, a good one too.
    let mut reply = Reply::json(200, json!({"url": url, "uploadKey": upload_key, "headers": headers}));
    reply.headers.push(("ININ-Correlation-Id".into(), uuid::Uuid::new_v4().to_string()));
    reply
}

/// What `GET /_fake/counts` serves and fakecloud prints at exit.
fn counts(state: &State) -> Value {
    let inner = state.lock();
    json!({
        "uploads": inner.objects.len(),
        "puts": inner.objects.values().map(|o| o.puts).sum::<usize>(),
        "bytes": inner.uploaded_bytes,
        "sent_429": inner.sent_429,
        "presign_calls": inner.presign_calls,
        "token_grants": inner.token_grants,
    })
}

/// What `GET /_fake/report` serves: `{"files": {fileName: {uploads, puts, objects}}}`. `uploads`
/// is how many distinct objects (uploadKeys) the name received, so more than one is a
/// duplicate in the cloud; `puts` counts completed PUTs, re-PUTs of one object by a resumed
/// upload included; each object has its length, base64 MD5, content type and the Unix ms of
/// its first completed PUT, so a script can compare it with what was sent and when.
fn report(state: &State) -> Value {
    let inner = state.lock();
    let mut files: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
    for object in inner.objects.values() {
        files.entry(object.file_name.as_str()).or_default().push(object);
    }
    let files: serde_json::Map<String, Value> = files
        .into_iter()
        .map(|(name, mut objects)| {
            objects.sort_by(|a, b| a.upload_key.cmp(&b.upload_key));
            let list: Vec<Value> = objects
                .iter()
                .map(|o| {
                    json!({
                        "uploadKey": o.upload_key, "len": o.len, "md5": o.md5_b64,
                        "contentType": o.content_type, "puts": o.puts, "firstPutMs": o.first_put_ms,
                    })
                })
                .collect();
            let entry = json!({
                "uploads": objects.len(),
                "puts": objects.iter().map(|o| o.puts).sum::<usize>(),
                "objects": list,
            });
            (name.to_string(), entry)
        })
        .collect();
    json!({ "files": files })
}

fn put(state: &State, head: &Head, len: u64, md5: [u8; 16], bytes: Option<Vec<u8>>) -> Reply {
    let (path, query) = head.target.split_once('?').unwrap_or((head.target.as_str(), ""));
    let signature =
        query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == "X-Amz-Signature").map(|(_, v)| v);
    let mut inner = state.lock();
    let Some(presign) = signature.and_then(|s| inner.presigns.get(s)).cloned() else {
        return Reply::xml(403, "AccessDenied", "Access Denied");
    };
    *inner.puts_by_key.entry(presign.upload_key.clone()).or_default() += 1;
    if decode_path(path.trim_start_matches("/upload/")).as_deref() != Some(presign.upload_key.as_str()) {
        return Reply::xml(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        );
    }
    if Instant::now() >= presign.expires {
        return Reply::xml(403, "AccessDenied", "Request has expired");
    }
    for (name, value) in &presign.headers {
        if head.header(&name.to_ascii_lowercase()) != Some(value.as_str()) {
            return Reply::xml(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            );
        }
    }
    let md5_b64 = B64.encode(md5);
    if head.header("content-md5") != Some(md5_b64.as_str()) {
        return Reply::xml(400, "BadDigest", "The Content-MD5 you specified did not match what we received.");
    }
    inner.uploaded_bytes += len;
    let earlier = inner.objects.get(&presign.upload_key).map(|o| (o.puts, o.first_put_ms));
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let object = Object {
        upload_key: presign.upload_key.clone(),
        file_name: presign.file_name.clone(),
        len,
        md5_b64,
        content_type: presign.content_type.clone(),
        bytes,
        puts: earlier.map_or(1, |(puts, _)| puts + 1),
        first_put_ms: earlier.map_or(now_ms, |(_, first)| first),
    };
    inner.objects.insert(presign.upload_key, object);
    let etag = md5.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Reply::empty(
        200,
        vec![("ETag".into(), format!("\"{etag}\"")), ("x-amz-server-side-encryption".into(), "AES256".into())],
    )
}

/// Why the upload API refuses a fileName, if it does.
pub fn file_name_problem(name: &str) -> Option<&'static str> {
    const FORBIDDEN: &str = "\\{^}%`]\">[~<#|";
    if name.is_empty() {
        Some("is required")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else if name.ends_with('/') {
        Some("must not end with '/'")
    } else if name.chars().any(|c| c.is_whitespace() || FORBIDDEN.contains(c)) {
        Some("must not contain whitespace or any of \\{^}%`]\">[~<#|")
    } else {
        None
    }
}

fn rate_limited(state: &State, retry_after: Option<String>) -> Reply {
    let secs = retry_after.as_deref().unwrap_or("?").to_string();
    let context = uuid::Uuid::new_v4().to_string();
    let mut reply = Reply::json(
        429,
        json!({
            "message": format!("Rate limit exceeded the maximum. Retry the request in [{secs}] seconds"),
            "code": "too.many.requests.retry.after",
            "status": 429,
            "contextId": context,
            "details": [],
            "errors": [],
        }),
    );
    reply.headers.push(("ININ-Correlation-Id".into(), context));
    if let Some(value) = retry_after {
        reply.headers.push(("Retry-After".into(), value));
    }
    state.lock().sent_429 += 1;
    reply
}

fn gc_error(status: u16, message: &str) -> Reply {
    let code = match status {
        400 => "bad.request",
        401 => "bad.credentials",
        403 => "missing.permissions",
        404 => "not.found",
        500 => "internal.server.error",
        503 => "service.unavailable",
        504 => "gateway.timeout",
        _ => "error",
    };
    gc_error_coded(status, code, message)
}

fn gc_error_coded(status: u16, code: &str, message: &str) -> Reply {
    let context = uuid::Uuid::new_v4().to_string();
    let mut reply = Reply::json(
        status,
        json!({"message": message, "code": code, "status": status, "contextId": context, "details": [], "errors": []}),
    );
    reply.headers.push(("ININ-Correlation-Id".into(), context));
    reply
}

fn s3_error(status: u16) -> Reply {
    match status {
        400 => Reply::xml(400, "InvalidRequest", "Invalid Request"),
        403 => Reply::xml(403, "AccessDenied", "Access Denied"),
        500 => Reply::xml(500, "InternalError", "We encountered an internal error. Please try again."),
        503 => Reply::xml(503, "SlowDown", "Please reduce your request rate."),
        _ => Reply::xml(status, "Error", "Scripted failure"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

async fn read_small(body: AxumBody, len: usize) -> Option<Body> {
    let bytes = axum::body::to_bytes(body, len).await.ok()?;
    (bytes.len() == len).then(|| Body::Small(bytes.to_vec()))
}

/// Reads `len` bytes, digesting them as they come; keeps them only when asked.
async fn read_object(body: AxumBody, len: u64, keep: bool) -> Option<Body> {
    let mut md5 = Md5::new();
    let mut kept = keep.then(|| Vec::with_capacity(len as usize));
    let mut got = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        md5.update(&chunk);
        if let Some(kept) = kept.as_mut() {
            kept.extend_from_slice(&chunk);
        }
        got += chunk.len() as u64;
    }
    // hyper holds the body to its Content-Length: a short one ends in an error above.
    (got == len).then(|| Body::Object { len, md5: md5.finalize().into(), bytes: kept })
}

/// Percent-encodes a key for a URL path, keeping '/' and the unreserved characters.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn short_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{nanos:08X}")
}
