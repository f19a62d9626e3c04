//! The admin listener: `/health` (JSON) and `/metrics` (Prometheus) for every role in this
//! process. Roles plug in through `RoleStatus`; the admin knows nothing of their insides.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::Encoder;

/// What a running role tells the admin listener.
pub trait RoleStatus: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the role can do its job now, with details for operators.
    fn health(&self) -> (bool, serde_json::Value);
    fn metrics(&self, enc: &mut Encoder<'_>);
}

#[derive(Clone)]
pub struct AdminState {
    roles: Arc<Vec<Arc<dyn RoleStatus>>>,
    started: Instant,
}

pub fn router(roles: Vec<Arc<dyn RoleStatus>>) -> Router {
    let state = AdminState { roles: Arc::new(roles), started: Instant::now() };
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /health or /metrics\n") })
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
