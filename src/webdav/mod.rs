//! Role `webdav`: the transient recording store that replaces Apache mod_dav. dav-server is
//! the protocol engine; this module owns what sits around it (auth, limits, path checks,
//! Range merging, metrics, access log) and the storage layer under it: a disk (`store`,
//! `davfs`) or an S3 bucket (`davs3` over `crate::s3`).

mod davfs;
mod davs3;
mod locks;
mod range;
pub mod store;
mod writeout;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dav_server::{DavHandler, DavMethod, DavMethodSet};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use percent_encoding::percent_decode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::basic::BasicAuth;
use crate::config::WebdavConfig;
use crate::http::body::{BodyProgress, CountingBody, IdleTimeoutBody};
use crate::http::{BoxError, ConnInfo, ServerOptions};
use crate::metrics::{Counter, CounterVec, Encoder, HistogramVec};
use crate::s3::client::S3Error;
use crate::telemetry::escape;
use store::{Limits, RESERVED_PREFIX, RelPath, Store};

type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// Where the files are.
enum Backing {
    Disk(Arc<Store>),
    Bucket(Arc<davs3::Bucket>),
}

pub struct Webdav {
    config: WebdavConfig,
    backing: Backing,
    dav: DavHandler,
    locks: locks::ExpiringLs,
    /// Held while a new lock is made (see `dispatch`).
    lock_gate: tokio::sync::Mutex<()>,
    auth: Arc<BasicAuth>,
    /// One permit per PUT in flight; none left means 503, not an unbounded pile-up.
    uploads: Arc<Semaphore>,
    metrics: Metrics,
    /// The last changes and reads of files, for `trace`.
    recent: crate::trace::Recent<StoreEvent>,
}

/// A request that touched a file, as `trace` shows it.
#[derive(Clone)]
struct StoreEvent {
    at_ms: u64,
    method: Method,
    path: String,
    status: u16,
    bytes: u64,
    user: String,
    client: IpAddr,
}

/// The first `max` bytes of a percent-decoded path, cut at a character boundary.
fn decoded_prefix(path: &str, max: usize) -> String {
    let mut text = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Requests `trace` remembers (PUT, GET, DELETE, MOVE, COPY, LOCK, UNLOCK, PROPPATCH).
const RECENT_REQUESTS: usize = 8192;

#[derive(Default)]
struct Metrics {
    requests: CounterVec,
    latency: HistogramVec,
    auth_failures: CounterVec,
    rejected: CounterVec,
    bytes_out: Counter,
}

impl Webdav {
    /// Opens the store (sweeping temp files left by a crash) or looks at the bucket, and opens
    /// the password file. Nothing is bound yet.
    pub async fn prepare(config: &WebdavConfig, create_root: bool) -> anyhow::Result<Arc<Webdav>> {
        let (backing, filesystem): (Backing, Box<dyn dav_server::fs::GuardedFileSystem<()>>) = match &config.s3 {
            None => {
                let limits = Limits {
                    max_file_size: config.max_file_size,
                    quota: config.quota,
                    min_free_disk: config.min_free_disk,
                };
                let store = Arc::new(Store::open(&config.root, create_root, config.fsync, limits)?);
                tracing::info!(
                    root = %config.root.display(),
                    used_bytes = store.used_bytes(),
                    files = store.file_count(),
                    quota = ?config.quota,
                    durability = store.durability(),
                    "webdav store opened"
                );
                let fs = Box::new(davfs::DavStore::new(Arc::clone(&store)));
                (Backing::Disk(store), fs)
            }
            Some(s3) => {
                let bucket = Arc::new(davs3::Bucket::new(s3)?);
                match bucket.probe().await {
                    Ok(()) => tracing::info!(
                        endpoint = %s3.endpoint(),
                        bucket = %s3.bucket,
                        key_prefix = %s3.key_prefix,
                        "webdav store on an S3 bucket"
                    ),
                    // Wrong keys or bucket: the operator's to fix, so the start fails.
                    Err(e @ (S3Error::Refused(_) | S3Error::NotFound(_))) => {
                        anyhow::bail!("webdav.s3: bucket {:?} at {}: {e}", s3.bucket, s3.endpoint())
                    }
                    // An engine still starting may answer soon: served, and unhealthy until then.
                    Err(e) => tracing::error!(
                        endpoint = %s3.endpoint(),
                        bucket = %s3.bucket,
                        "webdav.s3: the bucket does not answer yet: {e}; requests fail until it does"
                    ),
                }
                let fs = Box::new(davs3::DavBucket::new(bucket.store.clone()));
                (Backing::Bucket(bucket), fs)
            }
        };
        let auth = BasicAuth::open(config.htpasswd.clone(), config.realm.clone())?;
        let locks = locks::ExpiringLs::new(config.lock_max_timeout, config.max_locks);
        let mut methods = DavMethodSet::WEBDAV_RW;
        // Partial updates would let a reader see a mix of two versions of a recording.
        methods.remove(DavMethod::Patch);
        let dav = DavHandler::builder()
            .filesystem(filesystem)
            .locksystem(Box::new(locks.clone()))
            .strip_prefix(config.prefix.clone())
            .methods(methods)
            .read_buf_size(128 << 10)
            .max_lock_owner_bytes(config.max_lock_owner_bytes)
            .build_handler();
        Ok(Arc::new(Webdav {
            config: config.clone(),
            backing,
            dav,
            locks,
            lock_gate: tokio::sync::Mutex::new(()),
            auth,
            uploads: Arc::new(Semaphore::new(config.max_uploads)),
            metrics: Metrics::default(),
            recent: crate::trace::Recent::new(RECENT_REQUESTS),
        }))
    }

    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        grace: std::time::Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let opts = ServerOptions {
            name: "webdav",
            header_timeout: self.config.header_timeout,
            tls,
            grace,
            connections: ServerOptions::cap(self.config.max_connections),
            send_timeout: self.config.send_timeout,
            ..ServerOptions::DEFAULT_LIMITS
        };
        if let Backing::Bucket(bucket) = &self.backing {
            // Health follows the engine: looked at every PROBE_INTERVAL until shutdown.
            let (bucket, stop) = (Arc::clone(bucket), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(davs3::PROBE_INTERVAL) => {}
                    }
                    if let Err(e) = bucket.probe().await {
                        tracing::warn!("webdav.s3: the bucket check failed: {e}");
                    }
                }
            });
        }
        let make = move |conn: ConnInfo| {
            let this = Arc::clone(&self);
            hyper::service::service_fn(move |req| {
                let this = Arc::clone(&this);
                async move { Ok::<_, std::convert::Infallible>(this.handle(req, conn).await) }
            })
        };
        crate::http::serve(listener, opts, make, shutdown).await
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<ResBody> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let progress = Arc::new(BodyProgress::default());
        let (user, response) = match self.authorize(&req, conn.peer.ip()).await {
            Err(response) => (String::from("-"), response),
            Ok(user) => {
                let response = match self.precheck(&req, conn.tls) {
                    Some(response) => response,
                    None => self.dispatch(req, &user, Arc::clone(&progress)).await,
                };
                (user, response)
            }
        };
        // What arrived, not what was announced.
        let bytes_in = progress.bytes();
        let status = response.status();
        // These responses have no body to send, so hyper never polls it to the end.
        let bodiless = method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let this = Arc::clone(&self);
        let expected = content_length(response.headers());
        response.map(move |body| {
            CountingBody::new(body, expected, move |bytes_out, complete| {
                let elapsed = start.elapsed();
                this.metrics.requests.inc(&[method.as_str(), status.as_str()]);
                this.metrics.latency.observe(&[method.as_str()], elapsed);
                this.metrics.bytes_out.add(bytes_out);
                let touches_file = matches!(
                    method.as_str(),
                    "PUT" | "GET" | "DELETE" | "MOVE" | "COPY" | "LOCK" | "UNLOCK" | "PROPPATCH"
                );
                if touches_file && !path.ends_with('/') {
                    this.recent.push(StoreEvent {
                        at_ms: crate::clock::unix_ms(),
                        method: method.clone(),
                        // As the file is named, for lookups by name (clients encode differently),
                        // and bounded: a request head may be 64 KiB.
                        path: decoded_prefix(&path, 512),
                        status: status.as_u16(),
                        bytes: if method == Method::PUT { bytes_in } else { bytes_out },
                        user: user.clone(),
                        client: conn.peer.ip(),
                    });
                }
                tracing::info!(
                    target: "access",
                    client = %conn.peer.ip(),
                    user = %escape(&user),
                    method = %method,
                    path = %escape(&path),
                    status = status.as_u16(),
                    bytes_in,
                    bytes_out,
                    ms = elapsed.as_millis() as u64,
                    complete = complete || bodiless,
                );
            })
            .boxed_unsync()
        })
    }

    async fn authorize(&self, req: &Request<Incoming>, ip: IpAddr) -> Result<String, Response<ResBody>> {
        if !under_prefix(req.uri().path(), &self.config.prefix) {
            return Err(plain(StatusCode::NOT_FOUND, "not found\n"));
        }
        match self.auth.check(req.headers().get(header::AUTHORIZATION), ip).await {
            Ok(user) => Ok(user),
            Err(failure) => {
                self.metrics.auth_failures.inc(&[failure.reason()]);
                let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, self.auth.challenge());
                Err(response)
            }
        }
    }

    /// Checks done before the engine sees the request; `Some` is the refusal.
    fn precheck(&self, req: &Request<Incoming>, tls: bool) -> Option<Response<ResBody>> {
        let refuse = |status, why: &'static str, reason: &'static str| {
            self.metrics.rejected.inc(&[reason]);
            Some(plain(status, why))
        };
        match check_path(req.uri().path()) {
            PathCheck::Ok => {}
            PathCheck::Bad => return refuse(StatusCode::BAD_REQUEST, "bad path\n", "bad_path"),
            PathCheck::Reserved => return refuse(StatusCode::NOT_FOUND, "not found\n", "reserved_name"),
        }
        if let Some(dest) = req.headers().get("destination") {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            match check_destination(dest.as_bytes(), host, tls, &self.config.prefix) {
                DestCheck::Ok => {}
                DestCheck::Path(PathCheck::Reserved) => {
                    return refuse(StatusCode::FORBIDDEN, "reserved destination\n", "reserved_name");
                }
                DestCheck::Path(_) => return refuse(StatusCode::BAD_REQUEST, "bad destination\n", "bad_path"),
                // Apache's answer for a Destination it does not serve (mod_dav: 502).
                DestCheck::Elsewhere => {
                    return refuse(
                        StatusCode::BAD_GATEWAY,
                        "destination is not on this store (scheme, host, port or prefix differ)\n",
                        "foreign_destination",
                    );
                }
            }
        }
        let length = content_length(req.headers());
        if req.method() == Method::PUT {
            // "a.opus/" names a collection; the engine would strip the slash and replace the
            // file a.opus. mod_dav: 409 "Cannot PUT to a collection".
            if req.uri().path().ends_with('/') {
                return refuse(StatusCode::CONFLICT, "cannot PUT to a collection (path ends in /)\n", "put_collection");
            }
            if req.headers().contains_key(header::CONTENT_RANGE) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "partial PUT (Content-Range) is not supported\n",
                    "partial_put",
                );
            }
            if length.is_some_and(|n| n > self.config.max_file_size) {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, "file larger than max_file_size\n", "too_large");
            }
        } else if length.is_some_and(|n| n > self.config.max_xml_body) {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n", "xml_too_large");
        }
        None
    }

    async fn dispatch(&self, req: Request<Incoming>, user: &str, progress: Arc<BodyProgress>) -> Response<ResBody> {
        let mut req = req;
        let _permit = if req.method() == Method::PUT {
            match Arc::clone(&self.uploads).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.metrics.rejected.inc(&["max_uploads"]);
                    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "too many uploads in flight\n");
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return response;
                }
            }
        } else {
            None
        };
        // Without a length, an upload to a bucket gathers parts in memory: bounded apart.
        let _chunked = match &self.backing {
            Backing::Bucket(bucket) if req.method() == Method::PUT && content_length(req.headers()).is_none() => {
                match Arc::clone(&bucket.chunked).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        self.metrics.rejected.inc(&["max_chunked_uploads"]);
                        let mut response = plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many uploads without a Content-Length in flight\n",
                        );
                        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                        return response;
                    }
                }
            }
            _ => None,
        };
        if req.method() == Method::GET {
            self.limit_ranges(&mut req).await;
        }
        // A LOCK with a body asks for a new lock (an empty one refreshes a held lock).
        let new_lock = req.method().as_str() == "LOCK"
            && (content_length(req.headers()).is_some_and(|n| n > 0)
                || req.headers().contains_key(header::TRANSFER_ENCODING));
        // New locks are made one at a time, so the count checked is the count kept: without
        // this, LOCKs racing past the check would meet the lock table's own bound and get 423.
        let _gate = if new_lock { Some(self.lock_gate.lock().await) } else { None };
        if new_lock && self.locks.full().await {
            self.metrics.rejected.inc(&["max_locks"]);
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, "too many locks held; try again later\n");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            return response;
        }
        let idle = self.config.body_idle_timeout;
        let req = req.map(|body| IdleTimeoutBody::new(body, idle).with_progress(Arc::clone(&progress)).boxed_unsync());
        let response = self.dav.handle_guarded(req, user.to_owned(), ()).await;
        // A body that stopped half way is the client's doing (nothing was stored): answered and
        // logged as such, as nginx logs it, not as the engine's 502.
        match progress.failure() {
            BodyProgress::TIMED_OUT => {
                self.metrics.rejected.inc(&["body_timeout"]);
                return plain(StatusCode::REQUEST_TIMEOUT, "request body timed out\n");
            }
            BodyProgress::ABORTED => return plain(StatusCode::BAD_REQUEST, "request body incomplete\n"),
            _ => {}
        }
        response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
    }

    /// Rewrites a multi-range header so overlapping ranges cannot multiply the bytes sent.
    async fn limit_ranges(&self, req: &mut Request<Incoming>) {
        let Some(range) = req.headers().get(header::RANGE).and_then(|r| r.to_str().ok()) else { return };
        if !range.contains(',') {
            return; // one range can never send more than the file
        }
        let range = range.to_owned();
        let rel_bytes = req.uri().path().strip_prefix(&self.config.prefix).unwrap_or("").to_owned();
        let decoded: Vec<u8> = percent_decode(rel_bytes.as_bytes()).collect();
        let len = match &self.backing {
            Backing::Disk(store) => {
                let store = Arc::clone(store);
                tokio::task::spawn_blocking(move || {
                    RelPath::parse(&decoded).ok().and_then(|rel| store.metadata(&rel).ok()).map(|m| m.len)
                })
                .await
                .ok()
                .flatten()
            }
            Backing::Bucket(bucket) => match String::from_utf8(decoded) {
                Ok(path) => bucket.store.head(&path).await.ok().map(|h| h.len),
                Err(_) => None,
            },
        };
        let Some(len) = len else { return };
        match range::decide(&range, len, self.config.max_ranges) {
            range::Decision::Ranges(normalized) => {
                if let Ok(v) = HeaderValue::from_str(&normalized) {
                    req.headers_mut().insert(header::RANGE, v);
                }
            }
            range::Decision::Whole => {
                req.headers_mut().remove(header::RANGE);
            }
            range::Decision::Untouched => {}
        }
    }
}

impl Webdav {
    /// What the store holds now under names containing `id` (a CallUUID names all of its
    /// call's recordings), at most 100: the disk's root read whole; a bucket asked for the
    /// keys beginning with it (one listing page), as S3 lists by prefix only.
    async fn files_named(&self, id: &str) -> Vec<(String, u64, std::time::SystemTime)> {
        match &self.backing {
            Backing::Disk(store) => {
                let (store, id) = (Arc::clone(store), id.to_owned());
                let listed = tokio::task::spawn_blocking(move || {
                    let root = RelPath::parse(b"/").expect("root");
                    store.read_dir(&root).map(|entries| {
                        entries
                            .into_iter()
                            .filter(|(name, meta)| !meta.is_dir && String::from_utf8_lossy(name).contains(&id))
                            .take(100)
                            .map(|(name, meta)| (String::from_utf8_lossy(&name).into_owned(), meta.len, meta.modified))
                            .collect::<Vec<_>>()
                    })
                })
                .await;
                listed.ok().and_then(Result::ok).unwrap_or_default()
            }
            Backing::Bucket(bucket) => match bucket.store.list_starting(id, 100).await {
                Ok(files) => files
                    .into_iter()
                    .map(|f| (f.key, f.len, f.last_modified.unwrap_or(std::time::UNIX_EPOCH)))
                    .collect(),
                Err(_) => Vec::new(),
            },
        }
    }
}

impl crate::http::admin::RoleStatus for Webdav {
    fn name(&self) -> &'static str {
        "webdav"
    }

    fn health(&self) -> (bool, serde_json::Value) {
        let store = match &self.backing {
            Backing::Disk(store) => store,
            Backing::Bucket(bucket) => {
                let mut details = bucket.details();
                details["uploadsInFlight"] = (self.config.max_uploads - self.uploads.available_permits()).into();
                details["locks"] = self.locks.active().into();
                return (bucket.reachable(), details);
            }
        };
        let root_ok = store.metadata(&RelPath::parse(b"/").expect("root")).is_ok();
        let free = store.free_disk();
        let used = store.used_bytes();
        let disk_ok = free.is_none_or(|f| f >= self.config.min_free_disk);
        let quota_ok = self.config.quota.is_none_or(|q| used < q);
        let details = serde_json::json!({
            "root": store.root_path().display().to_string(),
            "rootAccessible": root_ok,
            "usedBytes": used,
            "quotaBytes": self.config.quota,
            "freeDiskBytes": free,
            "files": store.file_count(),
            "uploadsInFlight": self.config.max_uploads - self.uploads.available_permits(),
            "locks": self.locks.active(),
        });
        (root_ok && disk_ok && quota_ok, details)
    }

    fn trace<'a>(
        &'a self,
        query: &'a crate::trace::Query,
    ) -> futures_util::future::BoxFuture<'a, Vec<crate::trace::Event>> {
        Box::pin(async move {
            use crate::trace::Event;
            let mut events: Vec<Event> = self
                .recent
                .matching(|e| query.names(&e.path), 200)
                .into_iter()
                .map(|e| {
                    let step = match (e.method.as_str(), e.status) {
                        ("PUT", 200..=299) => "stored",
                        ("DELETE", 200..=299) => "deleted",
                        ("GET", 200..=299) => "read",
                        ("LOCK", 200..=299) => "locked",
                        ("UNLOCK", 200..=299) => "unlocked",
                        (m, 200..=299) => m,
                        _ => "refused",
                    };
                    let file = e.path.rsplit('/').next().unwrap_or_default().to_string();
                    let detail = format!(
                        "{} {} by {} from {}: {}, {} bytes",
                        e.method, e.path, e.user, e.client, e.status, e.bytes
                    );
                    Event::new(e.at_ms, "webdav", step, detail).file(file)
                })
                .collect();
            for (name, len, modified) in self.files_named(&query.id).await {
                let at = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let detail = format!("{}/{name} is in the store: {len} bytes, last written then", self.config.prefix);
                events.push(Event::new(at, "webdav", "in store", detail).file(name));
            }
            events
        })
    }

    fn trends(&self, out: &mut Vec<crate::trends::Sample>) {
        use crate::trends::Sample;
        // A bucket's use is the engine's to tell (its quota is shared by every front end).
        let Backing::Disk(store) = &self.backing else { return };
        out.push(Sample::gauge("store", "used", store.used_bytes() as f64));
        if let Some(quota) = self.config.quota {
            out.push(Sample::gauge("store", "quota", quota as f64));
        }
    }

    fn metrics(&self, enc: &mut Encoder<'_>) {
        let m = &self.metrics;
        enc.counter_vec("webdav_requests_total", "Requests by method and status.", &["method", "status"], &m.requests);
        enc.histogram_vec("webdav_request_duration_seconds", "Request latency by method.", &["method"], &m.latency);
        enc.counter_vec(
            "webdav_auth_failures_total",
            "Failed authentications by reason.",
            &["reason"],
            &m.auth_failures,
        );
        let a = &self.auth.counters;
        enc.counter(
            "webdav_auth_hashes_total",
            "Expensive password hashes (bcrypt, sha-crypt) computed.",
            a.hashes.get(),
        );
        enc.counter(
            "webdav_auth_shared_total",
            "Checks answered by a hash another request of the same credential computed.",
            a.shared.get(),
        );
        enc.counter(
            "webdav_auth_slowed_total",
            "Checks delayed before hashing because their address failed recently.",
            a.slowed.get(),
        );
        enc.counter_vec(
            "webdav_rejected_total",
            "Requests refused before the engine, by reason.",
            &["reason"],
            &m.rejected,
        );
        enc.gauge(
            "webdav_uploads_in_flight",
            "PUTs being received now.",
            (self.config.max_uploads - self.uploads.available_permits()) as f64,
        );
        enc.gauge("webdav_locks_active", "Live WebDAV locks.", self.locks.active() as f64);
        enc.counter("webdav_bytes_out_total", "Response body bytes sent.", m.bytes_out.get());
        let store = match &self.backing {
            Backing::Disk(store) => store,
            Backing::Bucket(bucket) => {
                enc.gauge(
                    "webdav_bucket_reachable",
                    "1 when the last look at the S3 bucket succeeded.",
                    if bucket.reachable() { 1.0 } else { 0.0 },
                );
                return;
            }
        };
        let s = &store.stats;
        enc.counter("webdav_uploads_started_total", "PUTs that opened a temp file.", s.uploads_started.get());
        enc.counter("webdav_uploads_completed_total", "PUTs committed into place.", s.uploads_completed.get());
        enc.counter(
            "webdav_uploads_aborted_total",
            "PUTs that ended without a commit (nothing was replaced).",
            s.uploads_aborted.get(),
        );
        enc.counter(
            "webdav_temp_files_swept_total",
            "Temp files of interrupted uploads removed at start.",
            s.temp_files_swept.get(),
        );
        enc.counter("webdav_bytes_in_total", "Bytes written by PUTs.", s.bytes_in.get());
        enc.gauge(
            "webdav_store_used_bytes",
            "Bytes the store holds against its quota: files, dead properties, directories.",
            store.used_bytes() as f64,
        );
        enc.gauge("webdav_store_files", "Files in the store.", store.file_count() as f64);
        if let Some(q) = self.config.quota {
            enc.gauge("webdav_store_quota_bytes", "Configured quota.", q as f64);
        }
        if let Some(free) = store.free_disk() {
            enc.gauge("webdav_disk_free_bytes", "Free bytes on the store's file system.", free as f64);
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[derive(Debug, PartialEq, Eq)]
enum DestCheck {
    Ok,
    Path(PathCheck),
    /// Another scheme, host, port or prefix: not ours to copy or move to.
    Elsewhere,
}

/// A `Destination` passes the request target's rules, and names this store: the same scheme,
/// host and port as the request (when absolute) and a path under the prefix.
fn check_destination(raw: &[u8], host: Option<&str>, tls: bool, prefix: &str) -> DestCheck {
    let Ok(raw) = std::str::from_utf8(raw) else { return DestCheck::Path(PathCheck::Bad) };
    let Ok(uri) = raw.parse::<http::Uri>() else { return DestCheck::Path(PathCheck::Bad) };
    if uri.authority().is_none() && !raw.starts_with('/') {
        return DestCheck::Path(PathCheck::Bad);
    }
    match check_path(uri.path()) {
        PathCheck::Ok => {}
        other => return DestCheck::Path(other),
    }
    if let Some(authority) = uri.authority() {
        let scheme_ok = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => tls,
            Some(s) if s.eq_ignore_ascii_case("http") => !tls,
            _ => false,
        };
        let default_port = if tls { 443 } else { 80 };
        let same_host = host.and_then(|h| h.parse::<http::uri::Authority>().ok()).is_some_and(|h| {
            h.host().eq_ignore_ascii_case(authority.host())
                && h.port_u16().unwrap_or(default_port) == authority.port_u16().unwrap_or(default_port)
        });
        if !scheme_ok || !same_host || authority.as_str().contains('@') {
            return DestCheck::Elsewhere;
        }
    }
    if under_prefix(uri.path(), prefix) { DestCheck::Ok } else { DestCheck::Elsewhere }
}

fn under_prefix(path: &str, prefix: &str) -> bool {
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug, PartialEq, Eq)]
enum PathCheck {
    Ok,
    /// Traversal, NUL, encoded separators, backslashes, invalid UTF-8.
    Bad,
    /// One of our own hidden names.
    Reserved,
}

/// One rule for request paths and Destination headers: decode once, then refuse anything that
/// could name a different file than it seems to.
fn check_path(raw: &str) -> PathCheck {
    let lower = raw.to_ascii_lowercase();
    if raw.contains('\\') || ["%00", "%2f", "%5c"].iter().any(|bad| lower.contains(bad)) {
        return PathCheck::Bad;
    }
    let Ok(decoded) = percent_decode(raw.as_bytes()).decode_utf8() else { return PathCheck::Bad };
    let mut reserved = false;
    for seg in decoded.split('/') {
        if seg == "." || seg == ".." || seg.chars().any(|c| c.is_control()) {
            return PathCheck::Bad;
        }
        reserved |= seg.starts_with(RESERVED_PREFIX);
    }
    if reserved { PathCheck::Reserved } else { PathCheck::Ok }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_corpus_is_refused() {
        for bad in [
            "/recordings/../etc/passwd",
            "/recordings/%2e%2e/etc/passwd",
            "/recordings/..%2fetc%2fpasswd",
            "/recordings/a%2Fb",
            "/recordings/a%5c..%5cb",
            "/recordings/a\\b",
            "/recordings/a.txt%00.jpg",
            "/recordings/./a",
            "/recordings/%ff%fe",
            "/recordings/a%0d%0aSet-Cookie:x",
        ] {
            assert_eq!(check_path(bad), PathCheck::Bad, "{bad}");
        }
        assert_eq!(check_path("/recordings/.exec-allinone-tmp-1"), PathCheck::Reserved);
        assert_eq!(check_path("/recordings/%2eexec-allinone-props-x"), PathCheck::Reserved);
        assert_eq!(check_path("/recordings/011AP643_2024-01-01.opus"), PathCheck::Ok);
        assert_eq!(check_path("/recordings/dir/caf%C3%A9%20x.opus"), PathCheck::Ok);
    }

    #[test]
    fn destinations_must_name_this_store() {
        let check =
            |dest: &str, host: Option<&str>, tls: bool| check_destination(dest.as_bytes(), host, tls, "/recordings");
        let here = Some("store.example:8000");
        assert_eq!(check("/recordings/b.opus", here, false), DestCheck::Ok);
        assert_eq!(check("http://store.example:8000/recordings/b.opus", here, false), DestCheck::Ok);
        assert_eq!(check("http://STORE.example:8000/recordings/b", here, false), DestCheck::Ok);
        assert_eq!(check("http://store.example/recordings/b", Some("store.example:80"), false), DestCheck::Ok);
        assert_eq!(check("https://store.example/recordings/b", Some("store.example"), true), DestCheck::Ok);
        for elsewhere in [
            "http://other.example:8000/recordings/b",
            "http://store.example:8001/recordings/b",
            "https://store.example:8000/recordings/b",
            "ftp://store.example:8000/recordings/b",
            "http://user@store.example:8000/recordings/b",
            "/other/b",
            "/recordingsX/b",
        ] {
            assert_eq!(check(elsewhere, here, false), DestCheck::Elsewhere, "{elsewhere}");
        }
        assert_eq!(check("http://store.example:8000/recordings/b", None, false), DestCheck::Elsewhere);
        assert_eq!(check("/recordings/../etc/passwd", here, false), DestCheck::Path(PathCheck::Bad));
        assert_eq!(check("/recordings/a%2fb", here, false), DestCheck::Path(PathCheck::Bad));
        assert_eq!(check("recordings/b", here, false), DestCheck::Path(PathCheck::Bad));
        assert_eq!(check("/recordings/.exec-allinone-x", here, false), DestCheck::Path(PathCheck::Reserved));
    }

    #[test]
    fn the_names_a_bucket_hides_are_the_names_requests_may_not_use() {
        assert_eq!(RESERVED_PREFIX, crate::s3::store::HIDDEN_PREFIX);
    }

    #[test]
    fn prefix_matching() {
        assert!(under_prefix("/recordings", "/recordings"));
        assert!(under_prefix("/recordings/a", "/recordings"));
        assert!(!under_prefix("/recordingsX/a", "/recordings"));
        assert!(!under_prefix("/other", "/recordings"));
        assert!(under_prefix("/anything", ""));
    }
}
