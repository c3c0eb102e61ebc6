//! wharf's HTTP endpoint, on when `http_listen_port` is set:
//!
//! - `GET /metrics`: Prometheus text, PgBouncer's figures under the names
//!   of the prometheus-community `pgbouncer_exporter` (so its dashboards
//!   work unchanged) plus wharf's own `wharf_*` families
//!   ([`exporter`]);
//! - `GET /health`: JSON, HTTP 503 while a database is unreachable or
//!   paused ([`health`]);
//! - `GET /api/stats`: JSON figures per pool with the last five minutes
//!   sampled every second ([`api`]);
//! - `GET /`: a live dashboard drawing `/api/stats`.
//!
//! Handlers read the same atomics and registry as the admin console's
//! `SHOW` commands; nothing here is on the query path.

pub mod api;
pub mod exporter;
pub mod health;

use std::io;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::state::PoolerState;

/// The dashboard page: one file, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The `Content-Type` of Prometheus' text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Opens the HTTP endpoint's socket if `http_listen_port` is set.
pub async fn bind(settings: &Settings) -> Result<Option<TcpListener>, (String, io::Error)> {
    let Some((addr, port)) = settings.http_listen() else {
        return Ok(None);
    };
    let host = match addr.trim() {
        "*" | "" => "0.0.0.0",
        other => other,
    };
    match TcpListener::bind((host, port)).await {
        Ok(listener) => Ok(Some(listener)),
        Err(err) => Err((format!("{host}:{port}"), err)),
    }
}

/// The HTTP server's task; aborted (with its sampler) when dropped, so the
/// endpoint stops with the pooler.
#[derive(Debug)]
pub struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    state: Arc<PoolerState>,
    history: Arc<api::History>,
}

/// Serves the endpoint on `listener` until the returned [`Server`] is
/// dropped.
pub fn spawn(listener: TcpListener, state: Arc<PoolerState>) -> Server {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP endpoint listening (/metrics, /health, /)");
    }
    Server(tokio::spawn(async move {
        let history = Arc::new(api::History::default());
        let sampler = Server(tokio::spawn(api::sample(
            Arc::downgrade(&state),
            history.clone(),
        )));
        let app = axum::Router::new()
            .route("/", get(dashboard))
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .route("/api/stats", get(stats))
            .with_state(App { state, history });
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(error = %err, "HTTP endpoint stopped");
        }
        drop(sampler);
    }))
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics(State(app): State<App>) -> Response {
    let body = exporter::render(&app.state);
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body).into_response()
}

async fn health(State(app): State<App>) -> Response {
    let report = health::report(&app.state);
    let code = if report.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

async fn stats(State(app): State<App>) -> Response {
    let body = api::snapshot(&app.state, &app.history);
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
