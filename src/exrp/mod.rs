//! Role `exrp`: the EX Recording Provider. Takes interaction-ends from excp (through the lb),
//! keeps one durable job per recording, and injects each recording into Genesys Cloud (or a
//! local sink) exactly once before deleting it from the WebDAV store. Instances share the
//! store: a claim is a WebDAV LOCK, a job's progress lives on its file as dead properties, and
//! every instance scans the store for work another one left.

pub mod command;
pub mod job;
pub mod ogg;
pub mod queue;
mod scan;
mod sink;
mod work;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ExrpConfig;
use crate::dav_client::DavClient;
use crate::http::admin::RoleStatus;
use crate::http::body::ReadError;
use crate::http::client::HttpClient;
use crate::metrics::{Counter, CounterVec, Encoder, Histogram};
use crate::trace::Event;
use crate::trends::Sample;
use queue::{Origin, Queue, State as JobState};
use sink::Sink;
use work::Outcome;

pub struct Exrp {
    /// As started; what SIGHUP can change is in `live`.
    config: ExrpConfig,
    /// The file SIGHUP re-reads (None: the sandbox, nothing to re-read).
    source: Option<PathBuf>,
    queue: Queue,
    /// DOWN while `queue.db` cannot be written (full disk, read-only, permissions).
    state: crate::durable::WriteHealth,
    live: std::sync::RwLock<Arc<Live>>,
    /// Connections opened by generations SIGHUP replaced: (store, cloud).
    retired_connections: [AtomicU64; 2],
    spool_dir: PathBuf,
    metrics: Metrics,
    /// Job counts by state (pending, working, done, dead), refreshed by the scheduler.
    counts: [AtomicU64; 4],
    webdav_up: AtomicBool,
    cloud_up: AtomicBool,
    lock_unsupported: AtomicBool,
    /// Files a job of this process works on, one job per file at a time: a lock that carries
    /// this instance's name and that no job here holds was left by an earlier run.
    busy_files: std::sync::Mutex<std::collections::HashSet<String>>,
    orphans: scan::OrphanStats,
    wake: tokio::sync::Notify,
    /// The last finished jobs, newest last, for the status page.
    recent: std::sync::Mutex<std::collections::VecDeque<Finished>>,
    /// Basic auth on `POST /api/v1/interaction-end` (`[exrp] htpasswd`).
    auth: Option<Arc<crate::auth::basic::BasicAuth>>,
    /// Jobs waiting for their tenant's EX Org to be configured: id → tenant.
    waiting_for_org: std::sync::Mutex<std::collections::BTreeMap<i64, String>>,
    /// Publications in flight, all interaction-ends together (`work::PUBLISH_AT_ONCE`): with
    /// the workers, what bounds the store connections in use.
    publishing: tokio::sync::Semaphore,
}

/// What SIGHUP replaces without a restart: the store's credentials, the sink with its orgs and
/// secrets, and the retry settings. A job in flight finishes with the generation it took.
pub(crate) struct Live {
    dav: DavClient,
    /// The store client's pool (shared with `dav`), for its connection count.
    store_http: HttpClient,
    sink: Sink,
    retry: Retry,
}

/// The retry settings of `[exrp]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Retry {
    initial: Duration,
    max: Duration,
    /// A job that has not succeeded this long after it was accepted (time spent paused for a
    /// configuration fault not counted) goes dead.
    window: Duration,
    missing_timeout: Duration,
}

impl Live {
    fn build(config: &ExrpConfig) -> anyhow::Result<Live> {
        // Each worker, and each of the interaction-end's publications at once, holds one.
        let http = HttpClient::with_idle(&config.storage.outbound, config.workers + work::PUBLISH_AT_ONCE)?;
        let store_http = http.clone();
        let dav = DavClient::new(
            &config.storage.url,
            &config.storage.username,
            &config.storage.password,
            http,
            config.request_timeout,
        );
        let sink = Sink::new(&config.sink, config.request_timeout, config.fsync, config.workers)?;
        let retry = Retry {
            initial: config.retry_initial,
            max: config.retry_max,
            window: config.retry_window,
            missing_timeout: config.missing_timeout,
        };
        Ok(Live { dav, store_http, sink, retry })
    }

    /// Connections opened so far: (to the store, to Genesys Cloud).
    fn connections(&self) -> (u64, u64) {
        let cloud = match &self.sink {
            Sink::Cloud(c) => c.clients().map(|(_, client)| client.connections_opened()).sum(),
            Sink::Local(_) => 0,
        };
        (self.store_http.connections_opened(), cloud)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        crate::backoff::jittered(self.retry.initial, self.retry.max, attempts)
    }
}

/// How often a job whose tenant has no EX Org is looked at again.
const WAITING_RECHECK: Duration = Duration::from_secs(60);

/// How many finished jobs the status page can show.
const RECENT_FINISHED: usize = 25;

/// A job that just reached `done` or `dead`, as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
struct Finished {
    /// Unix time in milliseconds.
    at: u64,
    file: String,
    #[serde(rename = "callUUID")]
    call_uuid: String,
    tenant: String,
    /// `uploaded`, `deleted` (uploaded before, now removed), `elsewhere` (another instance
    /// finished it) or `dead`.
    outcome: &'static str,
    /// From interaction-end accepted to finished.
    seconds: f64,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Default)]
struct Metrics {
    requests: CounterVec,
    jobs_accepted: Counter,
    jobs_duplicate: Counter,
    outcomes: CounterVec,
    retries: CounterVec,
    bytes: Counter,
    upload_seconds: Histogram,
    takeovers: Counter,
    orphans_removed: Counter,
    sidecars_given_up: Counter,
}

impl Exrp {
    /// Opens the queue and builds the clients; nothing is bound yet.
    pub fn prepare(config: &ExrpConfig, source: Option<PathBuf>) -> anyhow::Result<Arc<Exrp>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create the exrp state_dir {}", config.state_dir.display()))?;
        let spool_dir = config.state_dir.join("spool");
        std::fs::create_dir_all(&spool_dir).with_context(|| format!("cannot create {}", spool_dir.display()))?;
        // Whatever a killed process left half-fetched is fetched again.
        if let Ok(entries) = std::fs::read_dir(&spool_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        crate::clock::warn_if_unsynchronized();
        let auth = match &config.htpasswd {
            Some(path) => Some(crate::auth::basic::BasicAuth::open(path.clone(), "exrp".into())?),
            None => None,
        };
        let queue = Queue::open(&config.state_dir, config.fsync).map_err(|e| match e {
            queue::OpenError::Newer(newer) => anyhow::Error::new(newer),
            queue::OpenError::Queue(e) => e.into(),
        })?;
        let recovered = queue.recover()?;
        // Jobs that waited for a tenant's org look again now: this start may have brought it.
        queue.wake_waiting(work::NO_ORG)?;
        let counts = queue.counts()?;
        let live = Live::build(config)?;
        // Secrets print as Secret(***).
        tracing::debug!(?config, "exrp configuration");
        tracing::info!(
            state_dir = %config.state_dir.display(),
            pending = counts[0],
            resumed = recovered,
            done = counts[2],
            dead = counts[3],
            store = %config.storage.url,
            sink = %live.sink.describe(),
            instance = %config.instance,
            "exrp queue loaded"
        );
        Ok(Arc::new(Exrp {
            state: crate::durable::WriteHealth::new(&config.state_dir),
            config: config.clone(),
            source,
            queue,
            live: std::sync::RwLock::new(Arc::new(live)),
            retired_connections: Default::default(),
            spool_dir,
            metrics: Metrics::default(),
            counts: counts.map(AtomicU64::new),
            webdav_up: AtomicBool::new(true),
            cloud_up: AtomicBool::new(true),
            lock_unsupported: AtomicBool::new(false),
            busy_files: Default::default(),
            orphans: scan::OrphanStats::default(),
            wake: tokio::sync::Notify::new(),
            recent: Default::default(),
            waiting_for_org: Default::default(),
            auth,
            publishing: tokio::sync::Semaphore::new(work::PUBLISH_AT_ONCE),
        }))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/interaction-end", post(interaction_end))
            .route("/health", get(health))
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// Serves the API, works the queue, scans the store and probes dependencies until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        grace: Duration,
        mut reload: tokio::sync::broadcast::Receiver<()>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let scheduler = tokio::spawn(schedule(self.clone(), shutdown.clone()));
        let reloader = tokio::spawn({
            let (exrp, shutdown) = (self.clone(), shutdown.clone());
            async move {
                loop {
                    tokio::select! {
                        signal = reload.recv() => match signal {
                            Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => exrp.reload().await,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        });
        let scanner = tokio::spawn(scan::run(self.clone(), shutdown.clone()));
        let prober = tokio::spawn(probe(self.clone(), shutdown.clone()));
        let opts = self.config.api.server_options("exrp", tls, grace);
        let served = crate::http::serve_router(listener, opts, self.router(), shutdown).await;
        let _ = tokio::join!(scheduler, scanner, prober, reloader);
        served
    }

    /// The current generation of what SIGHUP can replace.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGHUP: re-reads `[exrp]` from the config file and swaps in new clients and retry
    /// settings. A file that does not parse, or whose clients cannot be built, is refused
    /// and the running configuration kept. Settings that need a restart are named.
    async fn reload(&self) {
        let Some(path) = &self.source else {
            tracing::warn!("SIGHUP: no config file to re-read (sandbox); exrp keeps its configuration");
            return;
        };
        let new = match crate::config::Config::reread(path, crate::cli::Role::Exrp).map(|c| c.exrp) {
            Ok(Some(new)) => new,
            Ok(None) => {
                tracing::error!("SIGHUP: the file has no [exrp] section; exrp keeps its configuration");
                return;
            }
            Err(err) => {
                tracing::error!("SIGHUP: configuration refused, exrp keeps the running one: {err}");
                return;
            }
        };
        let old = &self.config;
        let is_local = |c: &ExrpConfig| matches!(c.sink, crate::config::Sink::Local { .. });
        let sink_kind_changed = is_local(&new) != is_local(old);
        let kept: Vec<&str> = [
            (new.storage.url != old.storage.url, "transient_storage.url"),
            (new.api.listen != old.api.listen, "listen"),
            (new.state_dir != old.state_dir, "state_dir"),
            (new.workers != old.workers, "workers"),
            (new.instance != old.instance, "instance"),
            (new.htpasswd != old.htpasswd, "htpasswd"),
            (sink_kind_changed, "the sink kind (local_sink / genesys_cloud)"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect();
        let mut effective = new.clone();
        effective.storage.url = old.storage.url.clone();
        if sink_kind_changed {
            effective.sink = old.sink.clone();
        }
        let live = match Live::build(&effective) {
            Ok(live) => live,
            Err(err) => {
                tracing::error!("SIGHUP: {err:#}; exrp keeps the running configuration");
                return;
            }
        };
        let described = live.sink.describe();
        let old = std::mem::replace(&mut *self.live.write().unwrap_or_else(|p| p.into_inner()), Arc::new(live));
        // Jobs in flight may still open a connection on the old generation: a few are lost
        // from the count, never counted twice.
        let (store, cloud) = old.connections();
        self.retired_connections[0].fetch_add(store, Ordering::Relaxed);
        self.retired_connections[1].fetch_add(cloud, Ordering::Relaxed);
        if !kept.is_empty() {
            tracing::warn!(keys = %kept.join(", "), "SIGHUP: changed settings that only a restart applies");
        }
        // Jobs that waited for an org or for credentials look again now.
        let woken = self.queue.run(|q| Ok(q.wake_waiting(work::NO_ORG)? + q.wake_waiting(work::PAUSED)?)).await;
        self.waiting_for_org.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.cloud_up.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        tracing::info!(sink = %described, woken = woken.unwrap_or(0), "SIGHUP: exrp configuration reloaded");
    }

    fn finished(&self, job: &queue::Job, outcome: &'static str, reason: Option<String>) {
        let at = queue::now_ms();
        let entry = Finished {
            at,
            file: job.file.clone(),
            call_uuid: job.call_uuid.clone(),
            tenant: job.tenant.clone(),
            outcome,
            seconds: at.saturating_sub(job.accepted_at_ms) as f64 / 1000.0,
            attempts: job.attempts,
            reason,
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_FINISHED {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    async fn refresh_counts(&self) {
        if let Ok(counts) = self.queue.run(|q| q.counts()).await {
            for (slot, n) in self.counts.iter().zip(counts) {
                slot.store(n, Ordering::Relaxed);
            }
        }
    }
}

/// Takes due jobs up to `workers` at a time; applies each outcome to the queue.
async fn schedule(exrp: Arc<Exrp>, shutdown: CancellationToken) {
    let in_flight = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut last_purge = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let free = exrp.config.workers.saturating_sub(in_flight.load(Ordering::Relaxed) as usize);
        let mut next_wait = Duration::from_secs(1);
        if free > 0 {
            match exrp.queue.run(move |q| q.take_due(free)).await {
                Ok(jobs) => {
                    for job in jobs {
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        let (exrp, in_flight, done, shutdown) =
                            (exrp.clone(), in_flight.clone(), done.clone(), shutdown.clone());
                        tokio::spawn(async move {
                            let span = tracing::info_span!("job", call_uuid = %job.call_uuid, media_id = %job.media_id);
                            use tracing::Instrument;
                            tokio::select! {
                                outcome = work::process(&exrp, &job).instrument(span) => settle(&exrp, &job, outcome).await,
                                // Stopped mid-job: the row stays `working` and is resumed at start.
                                _ = shutdown.cancelled() => {}
                            }
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                            done.notify_one();
                        });
                    }
                }
                Err(e) => {
                    tracing::error!("cannot read the job queue: {e}");
                    next_wait = Duration::from_secs(5);
                }
            }
            if let Ok(Some(ms)) = exrp.queue.run(|q| q.next_due_in()).await {
                next_wait = next_wait.min(Duration::from_millis(ms.max(10)));
            }
        }
        if last_purge.elapsed() > Duration::from_secs(600) {
            last_purge = std::time::Instant::now();
            let before = queue::now_ms().saturating_sub(exrp.config.done_retention.as_millis() as u64);
            match exrp.queue.run(move |q| q.purge(JobState::Done, before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "finished jobs past done_retention forgotten"),
                Err(e) => tracing::warn!("cannot purge finished jobs: {e}"),
            }
        }
        exrp.refresh_counts().await;
        tokio::select! {
            _ = exrp.wake.notified() => {}
            _ = done.notified() => {}
            _ = tokio::time::sleep(next_wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn settle(exrp: &Arc<Exrp>, job: &queue::Job, outcome: Outcome) {
    let id = job.id;
    {
        let mut waiting = exrp.waiting_for_org.lock().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Outcome::Waiting(_) => {
                waiting.insert(id, job.tenant.clone());
            }
            _ => {
                waiting.remove(&id);
            }
        }
    }
    let result = match outcome {
        Outcome::Waiting(reason) => {
            tracing::warn!(file = %job.file, tenant = %job.tenant, "waiting: {reason}");
            exrp.queue.run(move |q| q.pause(id, WAITING_RECHECK, &reason)).await
        }
        Outcome::Paused { delay, reason } => {
            exrp.metrics.retries.inc(&["paused"]);
            tracing::warn!(file = %job.file, tenant = %job.tenant, retry_in = ?delay, "{reason}");
            exrp.queue.run(move |q| q.pause(id, delay, &reason)).await
        }
        Outcome::Done(how) => {
            exrp.metrics.outcomes.inc(&[how]);
            exrp.finished(job, how, None);
            exrp.queue.run(move |q| q.finish(id, JobState::Done, how, None)).await
        }
        Outcome::Dead { reason, expired } => {
            exrp.metrics.outcomes.inc(&["dead"]);
            tracing::error!(file = %job.file, attempts = job.attempts, "job dead: {reason}");
            exrp.finished(job, "dead", Some(reason.clone()));
            let how = if expired { "expired" } else { "dead" };
            exrp.queue.run(move |q| q.finish(id, JobState::Dead, how, Some(&reason))).await
        }
        Outcome::Retry { delay, reason } => {
            let kind = if reason.starts_with("Genesys Cloud") || reason.starts_with("presigned") {
                "cloud"
            } else if reason.starts_with("claimed") {
                "claimed"
            } else {
                "store"
            };
            exrp.metrics.retries.inc(&[kind]);
            let delay = delay.unwrap_or_else(|| exrp.live().backoff(job.attempts));
            tracing::warn!(file = %job.file, attempts = job.attempts, retry_in = ?delay, "not done yet: {reason}");
            exrp.queue.run(move |q| q.retry_later(id, delay, &reason)).await
        }
    };
    if let Err(e) = result {
        tracing::error!(file = %job.file, "cannot record the job's outcome (it is resumed at restart): {e}");
    }
}

/// Keeps the dependency status of /health fresh without a request paying for it.
async fn probe(exrp: Arc<Exrp>, shutdown: CancellationToken) {
    loop {
        let live = exrp.live();
        let webdav = live.dav.ping().await;
        if webdav.is_ok() != exrp.webdav_up.swap(webdav.is_ok(), Ordering::Relaxed) {
            match &webdav {
                Ok(()) => tracing::info!(store = %exrp.config.storage.url, "WebDAV store reachable again"),
                Err(e) => tracing::warn!(store = %exrp.config.storage.url, "WebDAV store not usable: {e}"),
            }
        }
        let cloud_ok = match &live.sink {
            Sink::Local(l) => l.writable(),
            Sink::Cloud(c) => {
                let mut ok = true;
                for (org, client) in c.clients() {
                    if let Err(e) = client.token().await {
                        if exrp.cloud_up.load(Ordering::Relaxed) {
                            tracing::warn!(org, "cannot get a Genesys Cloud token: {e}");
                        }
                        ok = false;
                    }
                }
                ok
            }
        };
        if cloud_ok && !exrp.cloud_up.load(Ordering::Relaxed) {
            tracing::info!("sink reachable again");
        }
        exrp.cloud_up.store(cloud_ok, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn reply(status: StatusCode, code: u32, message: &str, corr_id: &str, extra: serde_json::Value) -> Response {
    let mut body = json!({ "status": { "code": code, "message": message, "corrId": corr_id } });
    if let (Some(obj), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn interaction_end(
    State(exrp): State<Arc<Exrp>>,
    axum::Extension(conn): axum::Extension<crate::http::ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use tracing::Instrument;
    if let Some(auth) = &exrp.auth
        && let Err(failure) = auth.check(headers.get(header::AUTHORIZATION), conn.peer.ip()).await
    {
        exrp.metrics.requests.inc(&["401"]);
        tracing::warn!(client = %conn.peer.ip(), reason = failure.reason(), "interaction-end refused: authentication");
        let corr_id = uuid::Uuid::new_v4().to_string();
        let mut response = reply(StatusCode::UNAUTHORIZED, 40100, "authentication required", &corr_id, json!({}));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, auth.challenge());
        return response;
    }
    let corr_id = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && !v.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("interaction_end", corr_id = %corr_id);
    accept(exrp, headers, body, corr_id).instrument(span).await
}

async fn accept(exrp: Arc<Exrp>, headers: HeaderMap, body: Body, corr_id: String) -> Response {
    let api = &exrp.config.api;
    let bytes = match crate::http::body::read_limited(&headers, body, api.max_body_size, api.body_timeout).await {
        Ok(bytes) => bytes,
        Err(err @ ReadError::TooLarge(max)) => {
            exrp.metrics.requests.inc(&["413"]);
            tracing::warn!(max, "interaction-end body too large");
            return reply(StatusCode::PAYLOAD_TOO_LARGE, 41300, &err.to_string(), &corr_id, json!({}));
        }
        Err(err @ ReadError::Broken(_)) => {
            exrp.metrics.requests.inc(&["400"]);
            return reply(StatusCode::BAD_REQUEST, 40003, &err.to_string(), &corr_id, json!({}));
        }
    };
    let jobs = match job::parse(&bytes, exrp.default_tenant()) {
        Ok(jobs) => jobs,
        Err(err) => {
            exrp.metrics.requests.inc(&["400"]);
            tracing::warn!(bytes = bytes.len(), "interaction-end refused: {err}");
            let code = if matches!(err, job::BodyError::Json(_)) { 40000 } else { 40001 };
            return reply(StatusCode::BAD_REQUEST, code, &err.to_string(), &corr_id, json!({}));
        }
    };
    let call_uuid = jobs[0].call_uuid.clone();
    let media: Vec<String> = jobs.iter().map(|j| j.media_id.clone()).collect();
    let to_publish = jobs.clone();
    let corr = corr_id.clone();
    match exrp.queue.run(move |q| q.add(&jobs, Origin::Post, false, Some(&corr))).await {
        Ok(added) => {
            exrp.state.ok();
            // Recorded on their files (published) before the 202, so that if this instance
            // dies the others' scans find them; a repeat of this interaction-end records them
            // again until that holds. Done ones are not (their files are gone).
            let unfinished = exrp.queue.run(move |q| q.unfinished(to_publish)).await.unwrap_or_default();
            let failed = if unfinished.is_empty() { 0 } else { work::publish(exrp.clone(), unfinished).await };
            if added.new > 0 {
                exrp.wake.notify_one();
            }
            if failed > 0 {
                exrp.metrics.requests.inc(&["503"]);
                exrp.metrics.jobs_accepted.add(added.new as u64);
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    50302,
                    "jobs queued here but not yet recorded in the WebDAV store (another exrp could not take them over); retry",
                    &corr_id,
                    json!({ "accepted": added.new, "duplicate": added.duplicate, "unrecorded": failed }),
                );
            }
            exrp.metrics.requests.inc(&["202"]);
            exrp.metrics.jobs_accepted.add(added.new as u64);
            exrp.metrics.jobs_duplicate.add(added.duplicate as u64);
            tracing::info!(
                call_uuid = %call_uuid,
                media_ids = %media.join(","),
                new = added.new,
                duplicate = added.duplicate,
                "interaction-end accepted"
            );
            reply(
                StatusCode::ACCEPTED,
                0,
                "Accepted",
                &corr_id,
                json!({ "accepted": added.new, "duplicate": added.duplicate }),
            )
        }
        Err(e) => {
            exrp.metrics.requests.inc(&["503"]);
            exrp.state.failed(&e);
            tracing::error!(call_uuid = %call_uuid, "cannot record the jobs: {e}");
            reply(StatusCode::SERVICE_UNAVAILABLE, 50301, "cannot record the jobs now; retry", &corr_id, json!({}))
        }
    }
}

async fn health(State(exrp): State<Arc<Exrp>>) -> Response {
    let (up, body) = exrp.health_body();
    let code = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    let corr_id = uuid::Uuid::new_v4().to_string();
    reply(StatusCode::NOT_FOUND, 40400, "Not found: POST /api/v1/interaction-end", &corr_id, json!({}))
}

impl Exrp {
    /// The tenant of a recording whose interaction-end names none.
    pub(crate) fn default_tenant(&self) -> &str {
        match &self.config.sink {
            crate::config::Sink::Cloud { default_tenant, .. } => default_tenant,
            crate::config::Sink::Local { .. } => "Environment",
        }
    }

    /// Jobs waiting for their tenant's EX Org: how many, and which tenants.
    fn waiting_json(&self) -> serde_json::Value {
        let waiting = self.waiting_for_org.lock().unwrap_or_else(|p| p.into_inner());
        let tenants: std::collections::BTreeSet<&String> = waiting.values().collect();
        json!({ "jobs": waiting.len(), "tenants": tenants })
    }

    /// `{"status":"UP","dependencies":{"webdav":"UP","genesysCloud":"UP"},"queue":{…}}`.
    fn health_body(&self) -> (bool, serde_json::Value) {
        let status = |b: bool| if b { "UP" } else { "DOWN" };
        let webdav = self.webdav_up.load(Ordering::Relaxed);
        let sink = self.cloud_up.load(Ordering::Relaxed);
        let state = self.state.check();
        let state_ok = state.is_ok();
        let live = self.live();
        let failing = failing_orgs(&live);
        let sink = sink && failing.is_empty();
        let mut deps = serde_json::Map::new();
        deps.insert("webdav".into(), json!(status(webdav)));
        match &live.sink {
            Sink::Cloud(_) => deps.insert("genesysCloud".into(), json!(status(sink))),
            Sink::Local(_) => deps.insert("localSink".into(), json!(status(sink))),
        };
        deps.insert("queue".into(), json!(status(state_ok)));
        let [pending, working, done, dead] = self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        let up = webdav && sink && state_ok;
        let body = json!({
            "status": status(up),
            "dependencies": deps,
            "queue": { "pending": pending, "working": working, "done": done, "dead": dead },
            "stateError": state.err(),
            "waitingForTenantOrg": self.waiting_json(),
            // Orgs whose credentials or permissions Genesys Cloud refuses: their jobs wait.
            "orgsFailing": failing,
            // Tokens and presigned URLs depend on it: said, not counted as DOWN.
            "clockSynchronized": crate::clock::synchronized(),
            "orphans": self.orphans.to_json(),
            "instance": self.config.instance,
            "lockSupported": !self.lock_unsupported.load(Ordering::Relaxed),
        });
        (up, body)
    }
}

impl Exrp {
    /// What the queue knows of the jobs a trace names: each job's steps, where it stands now
    /// when it is not done, and the orphans of the last store scan that match.
    async fn trace_jobs(&self, query: &crate::trace::Query) -> Vec<Event> {
        const ROLE: &str = "exrp";
        let id = query.id.clone();
        let found = self
            .queue
            .run(move |q| {
                let jobs = q.find(&id, 100)?;
                jobs.into_iter().map(|job| Ok((q.steps(job.id)?, job))).collect::<Result<Vec<_>, _>>()
            })
            .await;
        let mut events = Vec::new();
        let jobs = match found {
            Ok(jobs) => jobs,
            Err(e) => return vec![Event::new(crate::clock::unix_ms(), ROLE, "error", e.to_string()).stopped()],
        };
        for (steps, job) in jobs {
            let file = || job.file.clone();
            if steps.is_empty() {
                events.push(Event::new(job.accepted_at_ms, ROLE, "accepted", "interaction-end").file(file()));
            }
            for step in steps {
                let corr = step.detail.strip_prefix("interaction-end ").map(str::to_owned);
                let detail = match step.count {
                    1 => step.detail,
                    n => {
                        format!("{} ({n} times since {})", step.detail, crate::telemetry::rfc3339_ms(step.first_at_ms))
                    }
                };
                let mut event = Event::new(step.at_ms, ROLE, &step.step, detail).file(file()).corr(corr);
                // A dead job retried since (`queue retry`) keeps its dead row, not its stop.
                event.stopped = step.step == "dead" && job.state == JobState::Dead;
                events.push(event);
            }
            if job.state == JobState::Pending {
                let why = job.reason.clone().unwrap_or_else(|| "not tried yet".into());
                let detail = format!(
                    "pending, attempt {} next at {}: {why}",
                    job.attempts + 1,
                    crate::telemetry::rfc3339_ms(job.next_at_ms)
                );
                events.push(Event::new(job.updated_at_ms, ROLE, "now", detail).file(file()).stopped());
            }
        }
        for (name, age) in self.orphans.matching(&query.id) {
            let at = crate::clock::unix_ms().saturating_sub(age * 1000);
            events.push(
                Event::new(at, ROLE, "orphan", "in the store with no job naming it (no interaction-end came)")
                    .file(name)
                    .stopped(),
            );
        }
        events
    }
}

/// `[{"org": …, "reason": …, "since": unix ms, "failures": n}]` for every org paused for a
/// credential or permission fault.
fn failing_orgs(live: &Live) -> Vec<serde_json::Value> {
    let Sink::Cloud(cloud) = &live.sink else { return Vec::new() };
    cloud
        .clients()
        .filter_map(|(org, client)| {
            let f = client.fault()?;
            Some(json!({ "org": org, "reason": f.reason, "since": f.since_ms, "failures": f.failures }))
        })
        .collect()
}

impl RoleStatus for Exrp {
    fn name(&self) -> &'static str {
        "exrp"
    }

    fn health(&self) -> (bool, serde_json::Value) {
        self.health_body()
    }

    fn status(&self) -> (bool, serde_json::Value) {
        let (up, mut body) = self.health_body();
        let recent: Vec<Finished> =
            self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect();
        body["recent"] = json!(recent);
        body["workers"] = json!(self.config.workers);
        (up, body)
    }

    fn trace<'a>(&'a self, query: &'a crate::trace::Query) -> futures_util::future::BoxFuture<'a, Vec<Event>> {
        Box::pin(self.trace_jobs(query))
    }

    fn trends(&self, out: &mut Vec<Sample>) {
        let outcomes = &self.metrics.outcomes;
        let injected = ["uploaded", "deleted", "elsewhere"].iter().map(|o| outcomes.get(&[o])).sum();
        out.push(Sample::counter("recordings", "injected", injected));
        out.push(Sample::counter("recordings", "failed", outcomes.get(&["dead"])));
        for (state, n) in JobState::ALL.iter().zip(&self.counts) {
            if *state != JobState::Done {
                out.push(Sample::gauge("queue", state.as_str(), n.load(Ordering::Relaxed) as f64));
            }
        }
        let waiting = self.waiting_for_org.lock().unwrap_or_else(|p| p.into_inner()).len();
        out.push(Sample::gauge("queue", "waiting for org", waiting as f64));
    }

    fn metrics(&self, enc: &mut Encoder<'_>) {
        let m = &self.metrics;
        enc.counter_vec("exrp_requests_total", "Interaction-end requests by HTTP status.", &["status"], &m.requests);
        enc.counter("exrp_jobs_accepted_total", "New recording jobs accepted.", m.jobs_accepted.get());
        enc.counter(
            "exrp_jobs_duplicate_total",
            "Recordings sent again for a known job (ignored).",
            m.jobs_duplicate.get(),
        );
        enc.gauge(
            "exrp_jobs_waiting_for_org",
            "Pending jobs whose tenant has no EX Org configured (they wait; never uploaded elsewhere).",
            self.waiting_for_org.lock().unwrap_or_else(|p| p.into_inner()).len() as f64,
        );
        enc.family("exrp_jobs", "Jobs in the queue by state.", "gauge");
        for (state, n) in JobState::ALL.iter().zip(&self.counts) {
            enc.sample("exrp_jobs", &[("state", state.as_str())], n.load(Ordering::Relaxed) as f64);
        }
        enc.counter_vec(
            "exrp_jobs_finished_total",
            "Jobs finished by outcome (uploaded, deleted, elsewhere, dead).",
            &["outcome"],
            &m.outcomes,
        );
        enc.counter_vec("exrp_job_retries_total", "Attempts that will be retried, by cause.", &["cause"], &m.retries);
        enc.counter("exrp_uploaded_bytes_total", "Recording bytes delivered to the sink.", m.bytes.get());
        enc.family("exrp_upload_seconds", "Fetch, check and upload time of one recording.", "histogram");
        enc.histogram("exrp_upload_seconds", &[], &m.upload_seconds);
        enc.counter("exrp_takeovers_total", "Jobs taken over from the store scan.", m.takeovers.get());
        enc.counter(
            "exrp_orphans_removed_total",
            "Orphan recordings removed after orphan_ttl.",
            m.orphans_removed.get(),
        );
        self.orphans.metrics(enc);
        let live = self.live();
        if let Sink::Cloud(c) = &live.sink {
            enc.family(
                "exrp_cloud_org_refused",
                "1 while Genesys Cloud refuses the org's credentials or permissions (its jobs wait).",
                "gauge",
            );
            for (org, client) in c.clients() {
                enc.sample("exrp_cloud_org_refused", &[("org", org)], client.fault().is_some() as u8 as f64);
            }
            enc.counter(
                "exrp_sidecars_given_up_total",
                "Recordings delivered without their metadata sidecar (it was refused or kept failing).",
                m.sidecars_given_up.get(),
            );
            let mut fetches = 0;
            let mut refreshes = 0;
            let mut limited = 0;
            for (_, client) in c.clients() {
                let s = client.stats();
                fetches += s.token_fetches.load(Ordering::Relaxed);
                refreshes += s.token_refreshes_on_401.load(Ordering::Relaxed);
                limited += s.rate_limited.load(Ordering::Relaxed);
            }
            enc.counter("exrp_cloud_token_fetches_total", "OAuth tokens fetched.", fetches);
            enc.counter("exrp_cloud_token_refreshes_total", "Tokens fetched again after a 401.", refreshes);
            enc.counter("exrp_cloud_rate_limited_total", "429 answers from Genesys Cloud.", limited);
        }
        let (store, cloud) = live.connections();
        enc.family(
            "exrp_outbound_connections_total",
            "TCP connections exrp opened, by peer (keep-alive pools reuse them).",
            "counter",
        );
        for (to, n, retired) in
            [("store", store, &self.retired_connections[0]), ("cloud", cloud, &self.retired_connections[1])]
        {
            enc.sample("exrp_outbound_connections_total", &[("to", to)], (n + retired.load(Ordering::Relaxed)) as f64);
        }
        enc.gauge(
            "exrp_webdav_up",
            "Whether the WebDAV store answered the last probe.",
            self.webdav_up.load(Ordering::Relaxed) as u8 as f64,
        );
    }
}
