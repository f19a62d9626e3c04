//! The admin listener: `/health` (JSON) and `/metrics` (Prometheus) for every role in this
//! process, and the status page (`/`, from `static/`, embedded) with the JSON it draws
//! (`/api/status`, `/api/trends`, `/api/trace`). Roles plug in through `RoleStatus`; the admin
//! knows nothing of their insides.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use futures_util::future::BoxFuture;

use crate::metrics::Encoder;
use crate::trace;
use crate::trends::{Sample, Trends};

/// What a running role tells the admin listener.
pub trait RoleStatus: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the role can do its job now, with details for operators.
    fn health(&self) -> (bool, serde_json::Value);
    /// What the status page shows: the health details and whatever else helps an operator
    /// watching (recent work, say). Not polled by load balancers, so it may be larger.
    fn status(&self) -> (bool, serde_json::Value) {
        self.health()
    }
    fn metrics(&self, enc: &mut Encoder<'_>);
    /// The figures the status page keeps a history of (`trends`).
    fn trends(&self, _out: &mut Vec<Sample>) {}
    /// What the role knows of one recording or call (`trace`).
    fn trace<'a>(&'a self, _query: &'a trace::Query) -> BoxFuture<'a, Vec<trace::Event>> {
        Box::pin(async { Vec::new() })
    }
}

/// The status page: one HTML file, its style and its script, built into the binary.
const PAGE_HTML: &str = include_str!("../../static/index.html");
const PAGE_CSS: &str = include_str!("../../static/status.css");
const PAGE_JS: &str = include_str!("../../static/status.js");

#[derive(Clone)]
pub struct AdminState {
    roles: Arc<Vec<Arc<dyn RoleStatus>>>,
    trends: Arc<Trends>,
    /// Lookups run one at a time: each reads the store's directory and the job queue, so a
    /// flood of them queues (within the listener's connection cap) instead of taking the CPU.
    tracing: Arc<tokio::sync::Semaphore>,
    started: Instant,
}

/// The admin app over the roles of this process and the trends sampled from them.
pub fn router(roles: Arc<Vec<Arc<dyn RoleStatus>>>, trends: Arc<Trends>) -> Router {
    let state =
        AdminState { roles, trends, tracing: Arc::new(tokio::sync::Semaphore::new(1)), started: Instant::now() };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/trends", get(trends_json))
        .route("/api/trace", get(trace_json))
        .route("/", get(|| async { asset("text/html; charset=utf-8", PAGE_HTML) }))
        .route("/status.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/status.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try / (status page), /health, /metrics, /api/status, /api/trends or /api/trace?id=\n",
            )
        })
        .with_state(state)
}

async fn health(State(state): State<AdminState>) -> Response {
    let mut all_up = true;
    let mut roles = serde_json::Map::new();
    for role in state.roles.iter() {
        let (up, details) = role.health();
        all_up &= up;
        roles.insert(role.name().into(), json!({ "status": if up { "UP" } else { "DOWN" }, "details": details }));
    }
    let body = json!({
        "status": if all_up { "UP" } else { "DOWN" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "roles": roles,
    });
    let code = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Everything the status page draws, in one request: each role's status, the process's recent
/// warnings and errors, and the server's clock (the page shows ages from it, not from the
/// phone's).
async fn status(State(state): State<AdminState>) -> Response {
    let mut all_up = true;
    let mut roles = serde_json::Map::new();
    for role in state.roles.iter() {
        let (up, details) = role.status();
        all_up &= up;
        roles.insert(role.name().into(), json!({ "status": if up { "UP" } else { "DOWN" }, "details": details }));
    }
    let now = crate::clock::unix_ms();
    let body = json!({
        "status": if all_up { "UP" } else { "DOWN" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": state.started.elapsed().as_secs(),
        "now": now,
        "roles": roles,
        "problems": crate::telemetry::recent_problems(),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

async fn trends_json(State(state): State<AdminState>) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(state.trends.json())).into_response()
}

#[derive(serde::Deserialize)]
struct TraceParams {
    id: Option<String>,
    /// Comma-separated correlation ids already known (from other VMs' answers).
    corr: Option<String>,
}

/// Every role's events for one CallUUID or file name, in time order. Asked twice when the
/// first answers name correlation ids the query did not have: the lb finds its requests by
/// them.
async fn trace_json(
    State(state): State<AdminState>,
    params: Result<axum::extract::Query<TraceParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let refuse = |message: String| {
        (StatusCode::BAD_REQUEST, [(header::CACHE_CONTROL, "no-store")], axum::Json(json!({ "error": message })))
            .into_response()
    };
    let Ok(axum::extract::Query(params)) = params else {
        return refuse("give ?id=<CallUUID or file name>".into());
    };
    let corr = params.corr.unwrap_or_default();
    let corr_ids = corr.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
    let mut query = match trace::Query::new(params.id.as_deref().unwrap_or_default(), corr_ids) {
        Ok(query) => query,
        Err(message) => return refuse(message),
    };
    let Ok(_turn) = state.tracing.acquire().await else {
        return refuse("the admin listener is stopping".into());
    };
    let mut events = Vec::new();
    for round in 0..2 {
        events.clear();
        for role in state.roles.iter() {
            events.extend(role.trace(&query).await);
        }
        let named = trace::corr_ids(&events);
        if round == 1 || named.is_subset(&query.corr_ids) {
            break;
        }
        query.corr_ids = trace::merge_corr(&named, &query.corr_ids);
    }
    let body = json!({
        "id": query.id,
        "roles": state.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "now": crate::clock::unix_ms(),
        "events": trace::settle(events),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// The page's files. Scripts only from this origin, nothing framed: the page shows file names
/// and error texts that came from the network.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut out = String::with_capacity(8 << 10);
    let mut enc = Encoder::new(&mut out);
    enc.gauge(
        "exec_allinone_uptime_seconds",
        "Seconds since this process started.",
        state.started.elapsed().as_secs_f64(),
    );
    for role in state.roles.iter() {
        role.metrics(&mut enc);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}
