//! The agent's operational endpoints (SPIRE's `health_checks` block): `/live`, `/ready` and
//! Prometheus `/metrics`. Every metric name lives here; names carry their unit and outcomes go
//! in a `result` label.
//!
//! `/ready` answers 200 only while the agent can serve what it is asked for (see
//! [`Readiness::check`]): the first full sync has been applied, its own SVID has not expired,
//! it has not lost its place at the server for good, and no X509-SVID it holds has expired
//! (withheld from workloads). Otherwise 503 with the reason in the body. `/live` stays 200
//! while the process runs: a restart fixes none of these.
//!
//! The listener holds at most [`MAX_CONNECTIONS`] connections (one more is closed at once) and
//! closes a connection whose request head has not arrived [`HEADER_READ_TIMEOUT`] after the
//! agent started waiting for it (new or keep-alive), so silent or trickling clients cannot
//! take the descriptors the Workload API and the server connection need. Both come from
//! crates (a tokio semaphore, hyper's header-read timeout); the server's listeners add a cap
//! per source address (`sigil-server`'s `listener` module), which this listener gets when
//! that module moves to a crate both binaries share.

use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sigil_common::time::unix_now;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The listener's name in metrics labels.
const LISTENER: &str = "health_checks";
/// Connections held at once: a kubelet's probes and a Prometheus scraper need a few. The
/// server's health listener has the same default.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must be complete this long after the agent starts waiting for it (SPIRE's
/// `ReadHeaderTimeout` for its health server); this is also the keep-alive idle timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After the shutdown signal, a request in flight gets this long.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// At most one log line per kind (refusals, accept errors) in this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The health listener's connection outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Which kind of SVID a count is about: `x509` or `jwt`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
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
    pub svids_past_half_life: Family<KindLabel, Counter>,
    pub expired_x509_svids: Gauge,
    pub agent_svid_expiry: Gauge,
    /// Inbound connections to the health listener: `accepted`, `refused_listener_cap`.
    pub connections: Family<ConnectionLabels, Counter>,
    /// How accepted ones ended: `ok`, `header_timeout`, `error`.
    pub connections_closed: Family<ConnectionLabels, Counter>,
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
            svids_past_half_life: Family::default(),
            expired_x509_svids: Gauge::default(),
            agent_svid_expiry: Gauge::default(),
            connections: Family::default(),
            connections_closed: Family::default(),
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
        r.register(
            "svids_past_half_life",
            "SVIDs handed out or held past half their life because the server could not renew them (once per SVID)",
            m.svids_past_half_life.clone(),
        );
        r.register(
            "expired_x509_svids",
            "X509-SVIDs that expired before being renewed, withheld from workloads",
            m.expired_x509_svids.clone(),
        );
        r.register(
            "agent_svid_expiry_timestamp_seconds",
            "NotAfter of the agent's own SVID (Unix seconds)",
            m.agent_svid_expiry.clone(),
        );
        r.register(
            "connections",
            "Inbound TCP connections to the health listener, accepted or refused at its cap",
            m.connections.clone(),
        );
        r.register(
            "connections_closed",
            "Accepted health listener connections that ended, by why",
            m.connections_closed.clone(),
        );
        Arc::new(m)
    }

    /// One more SVID (`kind`: `x509` or `jwt`) past its half-life with the server unreachable.
    pub fn svid_past_half_life(&self, kind: &'static str) {
        self.svids_past_half_life
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    fn connection(&self, result: &'static str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                listener: LISTENER,
                result,
            })
            .inc();
    }

    fn connection_closed(&self, result: &'static str) {
        self.connections_closed
            .get_or_create(&ConnectionLabels {
                listener: LISTENER,
                result,
            })
            .inc();
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

/// What `/ready` reports, fed by the components that know each part.
#[derive(Debug)]
pub struct Readiness {
    /// A full sync has been applied (cleared again while shutting down).
    synced: AtomicBool,
    /// NotAfter of the agent's own SVID, Unix seconds.
    agent_svid_not_after: AtomicI64,
    /// The server refuses this agent and it cannot attest again.
    identity_lost: AtomicBool,
    /// X509-SVIDs withheld because they expired.
    expired_svids: AtomicUsize,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            synced: AtomicBool::new(false),
            agent_svid_not_after: AtomicI64::new(i64::MAX),
            identity_lost: AtomicBool::new(false),
            expired_svids: AtomicUsize::new(0),
        }
    }
}

/// Why `/ready` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Starting (no full sync yet) or shutting down.
    NotSynced,
    /// The server no longer accepts this agent and it cannot attest again.
    IdentityLost,
    /// The agent's own SVID expired at this Unix time.
    AgentSvidExpired(i64),
    /// This many X509-SVIDs expired and are withheld from workloads.
    SvidsExpired(usize),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::NotSynced => {
                f.write_str("registration entries not synced yet (or shutting down)")
            }
            NotReady::IdentityLost => f.write_str(
                "the server no longer accepts this agent and it cannot attest again (see the log)",
            ),
            NotReady::AgentSvidExpired(at) => write!(
                f,
                "the agent's own SVID expired at {}",
                crate::cache::expiry::rfc3339(*at)
            ),
            NotReady::SvidsExpired(n) => {
                write!(
                    f,
                    "{n} X509-SVID(s) expired and are withheld from workloads"
                )
            }
        }
    }
}

impl Readiness {
    /// Marks the first full sync as applied (`true`), or the agent as stopping (`false`).
    pub fn set(&self, ready: bool) {
        self.synced.store(ready, Ordering::Release);
    }

    /// The agent's own SVID is now valid until `not_after` (Unix seconds).
    pub fn set_agent_svid_not_after(&self, not_after: i64) {
        self.agent_svid_not_after
            .store(not_after, Ordering::Release);
    }

    /// The server refuses this agent for good (`true`), or accepts it again.
    pub fn set_identity_lost(&self, lost: bool) {
        self.identity_lost.store(lost, Ordering::Release);
    }

    /// How many X509-SVIDs are withheld because they expired.
    pub fn set_expired_svids(&self, count: usize) {
        self.expired_svids.store(count, Ordering::Release);
    }

    /// Ready at `now` (Unix seconds), or the first reason not to be.
    pub fn check(&self, now: i64) -> Result<(), NotReady> {
        if !self.synced.load(Ordering::Acquire) {
            return Err(NotReady::NotSynced);
        }
        if self.identity_lost.load(Ordering::Acquire) {
            return Err(NotReady::IdentityLost);
        }
        let not_after = self.agent_svid_not_after.load(Ordering::Acquire);
        if crate::cache::expiry::is_expired(not_after, now) {
            return Err(NotReady::AgentSvidExpired(not_after));
        }
        match self.expired_svids.load(Ordering::Acquire) {
            0 => Ok(()),
            n => Err(NotReady::SvidsExpired(n)),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.check(unix_now()).is_ok()
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
    match s.readiness.check(unix_now()) {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
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
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoints listening");
    Ok(serve(listener, router, metrics, cancel, LIMITS))
}

/// The listener's cap and header-read timeout (shortened in tests).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    header_read: Duration,
}

const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    header_read: HEADER_READ_TIMEOUT,
};

/// Accepts until `cancel` fires, one task per connection, at most `limits.max_connections` at
/// once; then waits for the connections to finish (a request in flight is answered).
async fn serve(
    listener: TcpListener,
    router: Router,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals and accept errors: one log line per LOG_INTERVAL, with the count since the last.
    let mut refusals = (None::<Instant>, 0u64);
    let mut accept_errors = (None::<Instant>, 0u64);
    let due = |(last, count): &mut (Option<Instant>, u64)| {
        *count += 1;
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < LOG_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(count) = due(&mut accept_errors) {
                    tracing::warn!(error = %e, count, "health listener: cannot accept connections");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            metrics.connection("refused_listener_cap");
            if let Some(count) = due(&mut refusals) {
                tracing::warn!(
                    count,
                    last_peer = %peer,
                    max_connections = limits.max_connections,
                    "health listener: connections refused at its cap (count: since the last such line)"
                );
            }
            continue;
        };
        metrics.connection("accepted");
        let (router, metrics, cancel) = (router.clone(), metrics.clone(), cancel.clone());
        tokio::spawn(async move {
            let result = serve_connection(stream, router, limits.header_read, &cancel).await;
            metrics.connection_closed(result);
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back means all ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    header_read: Duration,
    cancel: &CancellationToken,
) -> &'static str {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let outcome = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await.ok()
        }
    };
    match outcome {
        Some(Ok(())) => "ok",
        Some(Err(e)) if e.is_timeout() => "header_timeout",
        _ => "error",
    }
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

    #[test]
    fn readiness_names_the_first_reason() {
        let r = Readiness::default();
        assert_eq!(r.check(1000), Err(NotReady::NotSynced));
        r.set(true);
        assert_eq!(r.check(1000), Ok(()));
        r.set_agent_svid_not_after(1000);
        assert_eq!(r.check(999), Ok(()));
        // From the start of its NotAfter second, as workload SVIDs are withdrawn.
        assert_eq!(r.check(1000), Err(NotReady::AgentSvidExpired(1000)));
        r.set_agent_svid_not_after(5000);
        r.set_expired_svids(3);
        assert_eq!(r.check(1000), Err(NotReady::SvidsExpired(3)));
        assert_eq!(
            NotReady::SvidsExpired(3).to_string(),
            "3 X509-SVID(s) expired and are withheld from workloads"
        );
        r.set_identity_lost(true);
        assert_eq!(r.check(1000), Err(NotReady::IdentityLost));
        r.set(false);
        assert_eq!(r.check(1000), Err(NotReady::NotSynced));
    }

    #[tokio::test]
    async fn ready_follows_the_flag() {
        let readiness = Arc::new(Readiness::default());
        let router = router("/live", "/ready", readiness.clone(), Metrics::new());
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let server = bind(addr, router, Metrics::new(), cancel.clone())
            .await
            .unwrap();
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
        // Any one reason turns it to 503; /live stays 200.
        readiness.set_expired_svids(2);
        assert_eq!(status("/ready").await, "503");
        readiness.set_expired_svids(0);
        readiness.set_agent_svid_not_after(unix_now());
        assert_eq!(status("/ready").await, "503");
        assert_eq!(status("/live").await, "200");
        readiness.set_agent_svid_not_after(unix_now() + 60);
        assert_eq!(status("/ready").await, "200");
        readiness.set_identity_lost(true);
        assert_eq!(status("/ready").await, "503");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn silent_clients_time_out_and_surplus_ones_are_refused_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Metrics::new();
        let router = router("/live", "/ready", Arc::default(), metrics.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limits = Limits {
            max_connections: 3,
            header_read: Duration::from_millis(500),
        };
        tokio::spawn(serve(
            listener,
            router,
            metrics.clone(),
            cancel.clone(),
            limits,
        ));
        // When the server closes `s`, counted from `start`.
        let closed_at = |mut s: tokio::net::TcpStream, start: Instant| async move {
            let mut buf = [0u8; 256];
            while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
            start.elapsed()
        };
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Admitted once the accept loop has seen them; the fourth is closed at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let surplus = tokio::net::TcpStream::connect(addr).await.unwrap();
        let refused_at = Instant::now();
        assert!(closed_at(surplus, refused_at).await < Duration::from_millis(300));
        // The held ones, silent (one trickling its head), are closed at the header timeout.
        held[0].write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
        for s in held {
            let took = closed_at(s, start).await;
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(3),
                "{took:?}"
            );
        }
        let text = metrics.encode();
        assert!(text.contains("sigil_agent_connections_total{listener=\"health_checks\",result=\"refused_listener_cap\"} 1"), "{text}");
        assert!(text.contains("result=\"accepted\"} 3"), "{text}");
        // Slots are free again: a real probe is answered.
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        probe.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        cancel.cancel();
    }
}
