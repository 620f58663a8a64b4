//! Operational HTTP endpoints: `/live`, `/ready` (SPIRE's `health_checks` paths) and
//! Prometheus `/metrics`, on their own listener so probes never share a port with the APIs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::listener::{ConnectionLimiter, Listener, serve_http};
use crate::metrics::Metrics;

/// What `/ready` reports; flipped by the run loop once the datastore and CA are up.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

/// Paths of the health endpoints, as SPIRE's `health_checks` block names them.
#[derive(Clone, Debug)]
pub struct OpsPaths {
    pub live: String,
    pub ready: String,
}

impl Default for OpsPaths {
    fn default() -> Self {
        OpsPaths {
            live: "/live".into(),
            ready: "/ready".into(),
        }
    }
}

pub fn router(paths: &OpsPaths, readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(&paths.live, get(|| async { (StatusCode::OK, "live\n") }))
        .route(&paths.ready, get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { readiness, metrics })
}

/// Only `/metrics`, for a dedicated Prometheus listener.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(OpsState {
            readiness: Arc::new(Readiness::default()),
            metrics,
        })
}

async fn ready(State(s): State<OpsState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Binds `addr` now (so a port clash fails start-up) and returns the serving future, which
/// holds the listener to `limiter`'s caps and the timeouts of [`crate::listener`].
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    limiter: Arc<ConnectionLimiter>,
    cancel: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = Listener::bind(addr, limiter).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoints listening");
    Ok(serve_http(listener, None, router, cancel))
}
