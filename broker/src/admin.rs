//! The operator's HTTP endpoints, on a separate listener (loopback by
//! default): `GET /health`, `GET /metrics` (Prometheus) and
//! `POST /admin/reload` (re-read the policy set and the CRL, as SIGHUP does).
//!
//! Reloading only re-reads files the broker is configured with; it cannot
//! point the broker elsewhere. Keep the listener on loopback or behind the
//! operator's own access control.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Control;

/// Serves the endpoints until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/reload", post(reload))
        .with_state(control);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin endpoint stopped");
    }
}

async fn health(State(control): State<Arc<Control>>) -> Response {
    let report = control.health().await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(control): State<Arc<Control>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        control.metrics_text(),
    )
        .into_response()
}

async fn reload(State(control): State<Arc<Control>>) -> Response {
    let report = control.reload().await;
    let status = if report.ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, axum::Json(report)).into_response()
}
