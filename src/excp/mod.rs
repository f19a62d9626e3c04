//! Role `excp`: the recording side of the EX Conversation Provider. Takes MCP's recording
//! metadata, keeps it durably per call, and when a call ends hands its recordings to exrp in
//! one interaction-end, retried until exrp accepts it.

mod calls;
mod deliver;
mod gir;
pub mod ingest;
mod takeover;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ExcpConfig;
use crate::durable::RecordDir;
use crate::http::admin::RoleStatus;
use crate::http::body::ReadError;
use crate::metrics::{Counter, CounterVec, Encoder};
use crate::trace::Event;
use crate::trends::Sample;
use calls::{BookError, CallBook, Records};
use ingest::IngestError;

pub struct Excp {
    config: ExcpConfig,
    book: CallBook,
    /// DOWN while the call records cannot be written (full disk, read-only, permissions).
    state: crate::durable::WriteHealth,
    metrics: Metrics,
    /// To exrp (the lb's exrp pool).
    client: crate::http::client::HttpClient,
    /// GIR mode: to RWS, and to the store it watches (None: not configured).
    gir_client: Option<crate::http::client::HttpClient>,
    store_client: Option<crate::http::client::HttpClient>,
    /// Whether the last delivery attempt reached an exrp that accepted it.
    exrp_ok: AtomicBool,
    last_delivery_ms: AtomicU64,
    wake: tokio::sync::Notify,
    /// `[excp.s3]`: the other instances as the last heartbeat round saw them.
    peers: std::sync::Mutex<takeover::Peers>,
}

#[derive(Default)]
struct Metrics {
    metadata: CounterVec,
    recordings_accepted: Counter,
    ends: CounterVec,
    sent: Counter,
    retried: Counter,
    recordings_delivered: Counter,
    gir_fetches: CounterVec,
    /// Passes of the delivery scheduler over the calls, and its deliveries and GIR fetches in
    /// flight: together they say when nothing more is underway (for tests and operators
    /// alike: a pass count that stops moving is a stuck scheduler).
    passes: Counter,
    in_flight: AtomicU64,
    /// Calls taken over from instances that died (`[excp.s3]`).
    takeovers: Counter,
}

/// The reply body every excp endpoint uses (field order as documented:
/// `{"status":{"code":40402,"message":"CallUUID not found","corrId":"…"}}`).
#[derive(Serialize)]
struct Reply<'a> {
    status: ReplyStatus<'a>,
}

#[derive(Serialize)]
struct ReplyStatus<'a> {
    code: u32,
    message: &'a str,
    #[serde(rename = "corrId")]
    corr_id: &'a str,
}

fn reply(status: StatusCode, code: u32, message: &str, corr_id: &str) -> Response {
    let body = serde_json::to_vec(&Reply { status: ReplyStatus { code, message, corr_id } }).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The format of excp's state directory (`durable::check_format`).
const STATE_FORMAT: u32 = 1;

impl Excp {
    /// Opens the state directory (or this instance's share of the bucket) and loads every
    /// call it holds; nothing is bound yet.
    pub async fn prepare(config: &ExcpConfig) -> anyhow::Result<Arc<Excp>> {
        use anyhow::Context;
        crate::durable::check_format(&config.state_dir, "the excp state", STATE_FORMAT)?;
        let records = match &config.shared {
            None => Records::Dir(Arc::new(
                RecordDir::open(&config.state_dir.join("calls"), config.fsync)
                    .with_context(|| format!("cannot open the excp state in {}", config.state_dir.display()))?,
            )),
            Some(shared) => {
                let client = crate::s3::client::S3Client::from_config(&shared.s3)
                    .map_err(|e| anyhow::anyhow!("excp.s3: {e}"))?;
                let records = crate::s3::records::BucketRecords::new(client, &shared.s3.key_prefix, &shared.instance);
                // Alive before anything is accepted, so no other instance takes this one's
                // calls for a dead one's while it starts.
                records.beat().await.map_err(|e| {
                    anyhow::anyhow!("excp.s3: bucket {:?} at {}: {e}", shared.s3.bucket, shared.s3.endpoint())
                })?;
                tracing::info!(
                    endpoint = %shared.s3.endpoint(),
                    bucket = %shared.s3.bucket,
                    instance = %shared.instance,
                    "excp calls kept in the shared bucket"
                );
                Records::Bucket(Arc::new(records))
            }
        };
        let book = CallBook::open(records, config.max_open_calls, config.max_recordings_per_call).await?;
        let (open, waiting, recordings) = book.backlog();
        tracing::info!(
            state_dir = %config.state_dir.display(),
            calls = book.len(),
            open,
            waiting,
            recordings,
            recording_processor = %config.recording_processor_url,
            recording_enabled = config.provider.recording_enabled,
            gir = config.provider.gir.is_some(),
            "excp state loaded"
        );
        use crate::http::client::HttpClient;
        let client = HttpClient::new(&config.recording_processor_outbound)?;
        let gir_client = config.provider.gir.as_ref().map(|gir| HttpClient::new(&gir.outbound)).transpose()?;
        let store_client = config.store.as_ref().map(|store| HttpClient::new(&store.outbound)).transpose()?;
        Ok(Arc::new(Excp {
            state: crate::durable::WriteHealth::new(&config.state_dir.join("calls")),
            config: config.clone(),
            book,
            metrics: Metrics::default(),
            client,
            gir_client,
            store_client,
            exrp_ok: AtomicBool::new(true),
            last_delivery_ms: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            peers: Default::default(),
        }))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/recording", post(recording))
            .route("/api/v1/interactions/{call_uuid}/end", post(end_call))
            .route("/health", get(health))
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// Serves the ingest API and runs deliveries until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        grace: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let scheduler = tokio::spawn(deliver::run(self.clone(), shutdown.clone()));
        if let Some(shared) = self.config.shared.clone() {
            tokio::spawn(takeover::run(self.clone(), shared, shutdown.clone()));
        }
        if self.config.provider.gir.is_some() && self.config.store.is_none() {
            tracing::warn!(
                "GIR mode without [excp.transient_storage]: calls are known only from end events, and each RWS \
                 mediaId is taken as the file's name in the store (RWS often names an .mp3 the store does not \
                 hold). Add [excp.transient_storage] with the store MCP records into"
            );
        }
        if let (Some(store), Some(_)) = (self.config.store.clone(), &self.config.provider.gir) {
            tracing::info!(store = %store.url, every = ?store.poll_interval, "GIR mode: watching the recording store for new calls");
            tokio::spawn(watch::run(self.clone(), store, shutdown.clone()));
        }
        let opts = self.config.api.server_options("excp", tls, grace);
        let served = crate::http::serve_router(listener, opts, self.router(), shutdown).await;
        let _ = scheduler.await;
        served
    }
}

async fn recording(State(excp): State<Arc<Excp>>, headers: HeaderMap, body: Body) -> Response {
    use tracing::Instrument;
    let corr_id = uuid::Uuid::new_v4().to_string();
    // Instrumented, not entered: a span guard held across an await is wrong on a
    // multi-threaded runtime (and panics in tracing-subscriber's registry).
    let span = tracing::info_span!("recording", corr_id = %corr_id);
    ingest_request(excp, headers, body, corr_id).instrument(span).await
}

async fn ingest_request(excp: Arc<Excp>, headers: HeaderMap, body: Body, corr_id: String) -> Response {
    let api = &excp.config.api;
    let bytes = match crate::http::body::read_limited(&headers, body, api.max_body_size, api.body_timeout).await {
        Ok(b) => b,
        Err(err) => {
            let (status, code) = match err {
                ReadError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 41300),
                ReadError::Broken(_) => (StatusCode::BAD_REQUEST, 40003),
            };
            excp.metrics.metadata.inc(&[&code.to_string()]);
            tracing::warn!(code, "{err}");
            return reply(status, code, &err.to_string(), &corr_id);
        }
    };
    let files = match ingest::parse(&bytes) {
        Ok(files) => files,
        Err(err) => {
            let (status, code) = err.codes();
            excp.metrics.metadata.inc(&[&code.to_string()]);
            let message = err.to_string();
            if err == IngestError::CallUuidNotFound {
                tracing::info!(code, bytes = bytes.len(), "metadata without a usable CallUUID");
            } else {
                tracing::warn!(code, "{message}");
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return reply(status, code, &message, &corr_id);
        }
    };
    if !excp.config.provider.recording_enabled {
        for f in &files {
            tracing::info!(call_uuid = %f.call_uuid, media_id = %f.media_id, "recording_enabled is false: metadata dropped");
        }
        excp.metrics.metadata.inc(&["0"]);
        return reply(StatusCode::OK, 0, "OK (recording_enabled is false: not forwarded)", &corr_id);
    }
    // A POST normally names one call; group in case a recording object spans several.
    let mut by_call: Vec<(String, Vec<ingest::MediaFile>)> = Vec::new();
    for f in files {
        match by_call.iter_mut().find(|(c, _)| *c == f.call_uuid) {
            Some((_, list)) => list.push(f),
            None => by_call.push((f.call_uuid.clone(), vec![f])),
        }
    }
    for (call_uuid, files) in &by_call {
        let added = excp.book.add(call_uuid, files, Some(&corr_id)).await;
        match &added {
            Ok(_) => excp.state.ok(),
            Err(BookError::Io(e)) => excp.state.failed(e),
            Err(_) => {}
        }
        match added {
            Ok(added) => {
                excp.metrics.recordings_accepted.add(added.new as u64);
                tracing::info!(
                    call_uuid = %call_uuid,
                    media_ids = %files.iter().map(|f| f.media_id.as_str()).collect::<Vec<_>>().join(","),
                    new = added.new,
                    updated = added.updated,
                    already_delivered = added.already_delivered,
                    "recording metadata accepted"
                );
            }
            Err(err) => {
                let (status, code) = match &err {
                    BookError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, 50301),
                    BookError::TooManyRecordings(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
                    BookError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
                };
                excp.metrics.metadata.inc(&[&code.to_string()]);
                tracing::error!(call_uuid = %call_uuid, code, "{err}");
                return reply(status, code, &err.to_string(), &corr_id);
            }
        }
    }
    excp.metrics.metadata.inc(&["0"]);
    reply(StatusCode::OK, 0, "OK", &corr_id)
}

async fn end_call(State(excp): State<Arc<Excp>>, Path(call_uuid): Path<String>) -> Response {
    let corr_id = uuid::Uuid::new_v4().to_string();
    if !ingest::valid_call_uuid(&call_uuid) {
        return reply(StatusCode::NOT_FOUND, 40402, "CallUUID not found", &corr_id);
    }
    // In GIR mode MCP posts its metadata to GIR, so the end event is how a call becomes known.
    let gir = excp.config.provider.gir.is_some();
    let mut ended = excp.book.end(&call_uuid, "event", &corr_id, gir).await;
    // Calls in a shared bucket: other instances may hold shares of this call (the lb spread
    // its metadata), or all of it.
    if let Some(shared) = &excp.config.shared {
        let held_here = !matches!(ended, Ok(calls::EndOutcome::Unknown));
        match takeover::end_elsewhere(&excp, &call_uuid, &corr_id, shared.takeover_after, held_here).await {
            Ok(0) => {}
            Ok(n) => {
                if matches!(ended, Ok(calls::EndOutcome::Unknown)) {
                    ended = Ok(calls::EndOutcome::Ended);
                }
                tracing::info!(call_uuid = %call_uuid, shares = n, "end event passed on to the instances holding the call");
            }
            Err(e) if matches!(ended, Ok(calls::EndOutcome::Unknown)) => {
                tracing::error!(call_uuid = %call_uuid, "cannot look for the call in the shared bucket: {e}");
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    50301,
                    "cannot reach the shared bucket; retry",
                    &corr_id,
                );
            }
            Err(e) => tracing::warn!(call_uuid = %call_uuid, "end event not passed on to other instances: {e}"),
        }
    }
    match &ended {
        Ok(_) => excp.state.ok(),
        Err(BookError::Io(e)) => excp.state.failed(e),
        Err(_) => {}
    }
    match ended {
        Ok(calls::EndOutcome::AlreadyEnded) => {
            tracing::info!(corr_id = %corr_id, call_uuid = %call_uuid, "end event for a call already ended");
            reply(StatusCode::OK, 0, "OK (already ended)", &corr_id)
        }
        Ok(calls::EndOutcome::Ended) => {
            excp.metrics.ends.inc(&["event"]);
            tracing::info!(corr_id = %corr_id, call_uuid = %call_uuid, "interaction ended by event");
            if gir {
                deliver::schedule_gir(&excp, &call_uuid).await;
            }
            excp.wake.notify_one();
            reply(StatusCode::OK, 0, "OK", &corr_id)
        }
        Ok(calls::EndOutcome::Unknown) => reply(StatusCode::NOT_FOUND, 40402, "CallUUID not found", &corr_id),
        Err(err) => {
            tracing::error!(corr_id = %corr_id, call_uuid = %call_uuid, "{err}");
            let status = if matches!(err, BookError::Full(_)) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            reply(status, 50001, &err.to_string(), &corr_id)
        }
    }
}

async fn health(State(excp): State<Arc<Excp>>) -> Response {
    let (up, details) = excp.health();
    let body = serde_json::json!({ "status": if up { "UP" } else { "DOWN" }, "details": details });
    let code = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    let corr_id = uuid::Uuid::new_v4().to_string();
    reply(StatusCode::NOT_FOUND, 40400, "Not found: POST /api/v1/recording", &corr_id)
}

impl RoleStatus for Excp {
    fn name(&self) -> &'static str {
        "excp"
    }

    /// DOWN only when the state cannot be written; exrp being unreachable is reported (the
    /// work waits durably) but does not make excp unfit to take metadata.
    fn health(&self) -> (bool, serde_json::Value) {
        let (open, waiting, recordings) = self.book.backlog();
        // Calls in the bucket: its writes and the heartbeat say whether it takes them.
        let state = match &self.config.shared {
            None => self.state.check(),
            Some(_) => self.state.failure().map_or(Ok(()), Err),
        };
        let writable = state.is_ok();
        let details = serde_json::json!({
            "stateDir": self.config.state_dir.display().to_string(),
            "stateWritable": writable,
            "stateError": state.err(),
            "calls": self.book.len(),
            "openCalls": open,
            "callsAwaitingDelivery": waiting,
            "recordingsAwaitingDelivery": recordings,
            "recordingProcessor": {
                "url": self.config.recording_processor_url,
                "status": if self.exrp_ok.load(Ordering::Relaxed) { "UP" } else { "DOWN" },
                "lastDeliveryMs": self.last_delivery_ms.load(Ordering::Relaxed),
            },
            "recordingEnabled": self.config.provider.recording_enabled,
            "gir": self.config.provider.gir.is_some(),
            "sharedBucket": self.config.shared.as_ref().map(|s| serde_json::json!({
                "endpoint": s.s3.endpoint(),
                "bucket": s.s3.bucket,
                "instance": s.instance,
                "takeovers": self.metrics.takeovers.get(),
            })),
        });
        (writable, details)
    }

    fn trace<'a>(&'a self, query: &'a crate::trace::Query) -> futures_util::future::BoxFuture<'a, Vec<Event>> {
        Box::pin(async move {
            let mut events = Vec::new();
            for (call, attempts, last_error) in self.book.find(&query.id).await {
                trace_call(&call, attempts, last_error, &mut events);
            }
            events
        })
    }

    fn trends(&self, out: &mut Vec<Sample>) {
        out.push(Sample::counter("recordings", "accepted", self.metrics.recordings_accepted.get()));
        let (open, waiting, recordings) = self.book.backlog();
        out.push(Sample::gauge("backlog", "open calls", open as f64));
        out.push(Sample::gauge("backlog", "calls awaiting exrp", waiting as f64));
        out.push(Sample::gauge("backlog", "recordings awaiting exrp", recordings as f64));
    }

    fn metrics(&self, enc: &mut Encoder<'_>) {
        let m = &self.metrics;
        enc.counter_vec("excp_metadata_total", "Metadata POSTs by reply code (0 = accepted).", &["code"], &m.metadata);
        enc.counter("excp_recordings_accepted_total", "New recordings accepted.", m.recordings_accepted.get());
        if self.config.shared.is_some() {
            enc.counter(
                "excp_calls_taken_over_total",
                "Calls taken over from excp instances whose heartbeat stopped.",
                m.takeovers.get(),
            );
        }
        enc.counter_vec("excp_interactions_ended_total", "Calls ended, by reason.", &["reason"], &m.ends);
        enc.counter("excp_interaction_ends_sent_total", "Interaction-ends exrp accepted.", m.sent.get());
        enc.counter(
            "excp_interaction_ends_retried_total",
            "Failed interaction-end attempts (retried).",
            m.retried.get(),
        );
        enc.counter("excp_recordings_delivered_total", "Recordings exrp accepted.", m.recordings_delivered.get());
        enc.counter_vec("excp_gir_fetches_total", "GIR RWS metadata fetches by outcome.", &["outcome"], &m.gir_fetches);
        enc.counter("excp_delivery_passes_total", "Passes of the delivery scheduler over the calls.", m.passes.get());
        enc.gauge(
            "excp_deliveries_in_flight",
            "Interaction-ends and GIR fetches underway.",
            m.in_flight.load(Ordering::Relaxed) as f64,
        );
        let (open, waiting, recordings) = self.book.backlog();
        enc.gauge("excp_calls", "Calls held (open, ending or remembered after delivery).", self.book.len() as f64);
        enc.gauge("excp_calls_open", "Calls not ended yet.", open as f64);
        enc.gauge("excp_calls_pending_delivery", "Calls with recordings exrp has not accepted yet.", waiting as f64);
        enc.gauge("excp_recordings_pending_delivery", "Recordings exrp has not accepted yet.", recordings as f64);
    }
}

impl Excp {}

/// What excp knows of one call: each recording's metadata POST, the call's end, the
/// interaction-end exrp accepted, or where delivery stands.
fn trace_call(call: &calls::Call, attempts: u32, last_error: Option<String>, events: &mut Vec<Event>) {
    const ROLE: &str = "excp";
    let id = &call.call_uuid;
    for r in &call.recordings {
        let how = if r.corr_id.is_some() { "metadata POST" } else { "metadata from GIR RWS" };
        let detail = format!("{how} for call {id}, mediaId {}", r.media_id);
        events.push(Event::new(r.received_ms, ROLE, "metadata", detail).file(&r.media_id).corr(r.corr_id.clone()));
        if let Some(at) = r.delivered_ms {
            let detail = format!("interaction-end accepted by exrp (202), mediaId {}", r.media_id);
            let event = Event::new(at, ROLE, "interaction-end", detail).file(&r.media_id);
            events.push(event.corr(r.delivered_corr_id.clone()));
        }
    }
    match &call.ended {
        Some(end) => {
            let why = match end.reason.as_str() {
                "event" => "end event received".to_string(),
                "quiet" => "no metadata for the quiet period".to_string(),
                other => other.to_string(),
            };
            let event = Event::new(end.at_ms, ROLE, "call-ended", why).corr(Some(end.corr_id.clone()));
            events.push(event);
            let pending = call.pending().count();
            if pending > 0 {
                let detail = match (&last_error, attempts) {
                    (Some(why), n) => {
                        format!("{pending} recording(s) not yet accepted by exrp after {n} attempt(s): {why}")
                    }
                    (None, _) => format!("{pending} recording(s) being sent to exrp"),
                };
                events.push(Event::new(crate::clock::unix_ms(), ROLE, "now", detail).stopped());
            }
        }
        None => {
            let detail = format!(
                "call open: waiting for its end (last metadata at {})",
                crate::telemetry::rfc3339_ms(call.last_update_ms)
            );
            events.push(Event::new(crate::clock::unix_ms(), ROLE, "now", detail).stopped());
        }
    }
}
