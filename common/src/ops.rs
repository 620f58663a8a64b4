//! The operational HTTP endpoints both binaries serve on a listener of their own (SPIRE's
//! `health_checks` block, and `telemetry { Prometheus { ... } }`): `/live`, `/ready` and
//! Prometheus `/metrics`. What readiness means and which metrics exist stay with each binary
//! ([`ReadinessCheck`], [`MetricsText`]); the routes, their answers and the listener are here.
//!
//! `/live` answers 200 while the process runs. `/ready` answers 200 `ready`, or 503 with the
//! binary's reason; the reason must say nothing an unauthenticated caller should not read
//! (details go to the log).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::listener::{ConnectionLimiter, Listener, serve_http};

/// What `/ready` asks of a binary.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// `Ok` when ready; else the body of the 503 answer (one line, e.g. `not ready: ...`).
    fn readiness(&self) -> Result<(), String>;
}

/// What `/metrics` asks of a binary.
pub trait MetricsText: Send + Sync + 'static {
    /// The OpenMetrics text exposition of every metric.
    fn openmetrics_text(&self) -> String;
}

/// Paths of the health endpoints, as SPIRE's `health_checks` block names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsPaths {
    /// `live_path`.
    pub live: String,
    /// `ready_path`.
    pub ready: String,
}

impl Default for OpsPaths {
    fn default() -> Self {
        Self {
            live: "/live".into(),
            ready: "/ready".into(),
        }
    }
}

/// `/live` and `/ready` at `paths`, and `/metrics`.
pub fn router(
    paths: &OpsPaths,
    readiness: Arc<dyn ReadinessCheck>,
    metrics: Arc<dyn MetricsText>,
) -> Router {
    Router::new()
        .route(&paths.live, get(|| async { (StatusCode::OK, "live\n") }))
        .route(&paths.ready, get(move || ready(readiness.clone())))
        .merge(metrics_router(metrics))
}

/// Only `/metrics`, for a dedicated Prometheus listener.
pub fn metrics_router(metrics: Arc<dyn MetricsText>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn ready(readiness: Arc<dyn ReadinessCheck>) -> impl IntoResponse {
    match readiness.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics_text(State(metrics): State<Arc<dyn MetricsText>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.openmetrics_text(),
    )
}

/// Binds `addr` now (so a port clash fails start-up) and returns the serving future, which
/// holds the listener to `limiter`'s caps and the timeouts of [`crate::listener`] until
/// `cancel` fires.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    limiter: Arc<ConnectionLimiter>,
    cancel: CancellationToken,
) -> io::Result<impl Future<Output = io::Result<()>> + use<>> {
    let listener = Listener::bind(addr, limiter).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoints listening");
    Ok(serve_http(listener, None, router, cancel))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::listener::{ConnectionLimits, ConnectionMetrics};

    #[derive(Default)]
    struct Flag(Mutex<Option<String>>);

    impl ReadinessCheck for Flag {
        fn readiness(&self) -> Result<(), String> {
            match &*self.0.lock().unwrap() {
                None => Ok(()),
                Some(why) => Err(why.clone()),
            }
        }
    }

    struct Fixed;

    impl MetricsText for Fixed {
        fn openmetrics_text(&self) -> String {
            "# EOF\n".to_owned()
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn live_ready_and_metrics_at_their_paths() {
        let flag = Arc::new(Flag::default());
        let paths = OpsPaths {
            live: "/alive".into(),
            ready: "/ready".into(),
        };
        let router = router(&paths, flag.clone(), Arc::new(Fixed));
        let limits = ConnectionLimits {
            max_connections: 8,
            max_connections_per_address: 8,
        };
        let limiter = ConnectionLimiter::new("health_checks", limits, ConnectionMetrics::default());
        let cancel = CancellationToken::new();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = Listener::bind(addr, limiter).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_http(listener, None, router, cancel.clone()));

        assert!(get(addr, "/alive").await.ends_with("\r\n\r\nlive\n"));
        assert!(get(addr, "/ready").await.ends_with("\r\n\r\nready\n"));
        *flag.0.lock().unwrap() = Some("not ready: starting".into());
        let answer = get(addr, "/ready").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nnot ready: starting\n"),
            "{answer}"
        );
        let answer = get(addr, "/metrics").await;
        assert!(answer.contains("application/openmetrics-text"), "{answer}");
        assert!(answer.ends_with("# EOF\n"), "{answer}");
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
