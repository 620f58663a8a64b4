//! The agent's operational endpoints (SPIRE's `health_checks` block): `/live`, `/ready` (ready
//! once the first full sync has been applied) and Prometheus `/metrics`. Every metric name
//! lives here; names carry their unit and outcomes go in a `result` label.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel {
        result: if ok { "ok" } else { "error" },
    }
}

/// The agent's metrics, shared by every component.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub sync_messages: Counter,
    pub sync_connects: Family<ResultLabel, Counter>,
    pub cached_entries: Gauge,
    pub x509_svids_minted: Family<ResultLabel, Counter>,
    pub agent_svid_renewals: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            registry: Registry::with_prefix("sigil_agent"),
            sync_messages: Counter::default(),
            sync_connects: Family::default(),
            cached_entries: Gauge::default(),
            x509_svids_minted: Family::default(),
            agent_svid_renewals: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "sync_messages",
            "SyncEntries messages applied",
            m.sync_messages.clone(),
        );
        r.register(
            "sync_connects",
            "SyncEntries stream openings",
            m.sync_connects.clone(),
        );
        r.register(
            "cached_entries",
            "Registration entries in the cache",
            m.cached_entries.clone(),
        );
        r.register(
            "x509_svids_minted",
            "Workload X509-SVIDs minted",
            m.x509_svids_minted.clone(),
        );
        r.register(
            "agent_svid_renewals",
            "Agent SVID renewals and re-attestations",
            m.agent_svid_renewals.clone(),
        );
        Arc::new(m)
    }

    pub fn svid_mint(&self, ok: bool, count: usize) {
        self.x509_svids_minted
            .get_or_create(&result(ok))
            .inc_by(count as u64);
    }

    pub fn agent_renewal(&self, ok: bool) {
        self.agent_svid_renewals.get_or_create(&result(ok)).inc();
    }

    pub fn sync_connect(&self, ok: bool) {
        self.sync_connects.get_or_create(&result(ok)).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// What `/ready` reports: set once the first full sync has been applied.
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

/// `/live`, `/ready` at the configured paths, and `/metrics`.
pub fn router(
    live_path: &str,
    ready_path: &str,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
) -> Router {
    Router::new()
        .route(live_path, get(|| async { (StatusCode::OK, "live\n") }))
        .route(ready_path, get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { readiness, metrics })
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

/// Binds `addr` now (so a port clash fails start-up) and returns the serving future.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoints listening");
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_units_and_results() {
        let m = Metrics::new();
        m.svid_mint(true, 3);
        m.svid_mint(false, 1);
        m.sync_messages.inc();
        let text = m.encode();
        assert!(
            text.contains("sigil_agent_x509_svids_minted_total{result=\"ok\"} 3"),
            "{text}"
        );
        assert!(text.contains("sigil_agent_x509_svids_minted_total{result=\"error\"} 1"));
        assert!(text.contains("sigil_agent_sync_messages_total 1"));
    }

    #[tokio::test]
    async fn ready_follows_the_flag() {
        let readiness = Arc::new(Readiness::default());
        let router = router("/live", "/ready", readiness.clone(), Metrics::new());
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = bind(addr, router, cancel.clone()).await.unwrap();
        let task = tokio::spawn(server);
        let status = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out.split(' ').nth(1).unwrap().to_owned()
        };
        assert_eq!(status("/live").await, "200");
        assert_eq!(status("/ready").await, "503");
        readiness.set(true);
        assert_eq!(status("/ready").await, "200");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
