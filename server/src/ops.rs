//! Operational HTTP endpoints: `/live`, `/ready` (SPIRE's `health_checks` paths) and
//! Prometheus `/metrics`, on their own listener so probes never share a port with the APIs;
//! and the datastore write probe whose last result readiness reflects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::datastore::Datastore;
use crate::listener::{ConnectionLimiter, Listener, serve_http};
use crate::metrics::Metrics;

/// How often the datastore's write probe runs ([`probe_datastore`]): readiness reflects the
/// last result, so it turns within this period of the datastore failing or recovering.
pub const DATASTORE_PROBE_PERIOD: Duration = Duration::from_secs(5);

/// What `/ready` (and the admin API's `Health`) report: started, and the datastore takes
/// writes.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Flipped by the run loop once everything is up, and back at shutdown.
    started: AtomicBool,
    /// Why the last write probe failed; `None` while the datastore takes writes.
    datastore_fault: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.datastore_fault().is_none()
    }

    /// Why the datastore cannot take writes, as the last probe found; `None` when it can.
    pub fn datastore_fault(&self) -> Option<String> {
        self.fault().clone()
    }

    /// Records the last probe's result; returns whether that changed readiness.
    pub fn set_datastore_fault(&self, fault: Option<String>) -> bool {
        let mut current = self.fault();
        let changed = current.is_some() != fault.is_some();
        *current = fault;
        changed
    }

    fn fault(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A plain value replaced whole: a poisoned lock still holds a consistent one.
        self.datastore_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes the datastore's probe ([`Datastore::probe_write`]) every `period` until `cancel`
/// fires, the first at once, and records each result in `readiness`. A change of state is
/// logged once: ERROR when writes start failing (an operator must act), INFO when they work
/// again.
pub async fn probe_datastore(
    datastore: Datastore,
    readiness: Arc<Readiness>,
    period: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let fault = datastore.probe_write().await.err().map(|e| e.to_string());
        if readiness.set_datastore_fault(fault.clone()) {
            match fault {
                Some(error) => {
                    tracing::error!(%error, "the datastore cannot take writes; not ready")
                }
                None => tracing::info!("the datastore takes writes again; ready"),
            }
        }
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
    // The fault's details (paths, database errors) go to the log and to the admin API's
    // `healthcheck`, not to this unauthenticated listener.
    if s.readiness.datastore_fault().is_some() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the datastore cannot take writes\n",
        )
    } else if s.readiness.is_ready() {
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
