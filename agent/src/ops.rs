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
//! The endpoints and their listener are `sigil_common`'s (`ops`, `listener`), as the server's:
//! the listener holds at most [`HEALTH_LIMITS`] connections, in all and per source address
//! (one more is closed at once), and closes a connection whose request head has not arrived
//! 10 s after the agent started waiting for it (new or keep-alive), so silent or trickling
//! clients cannot take the descriptors the Workload API and the server connection need.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sigil_common::listener::{ConnectionLimiter, ConnectionLimits, ConnectionMetrics};
use sigil_common::ops::{self, MetricsText, OpsPaths, ReadinessCheck};
use sigil_common::time::unix_now;
use tokio_util::sync::CancellationToken;

/// The health listener's name in metrics labels and log lines.
const LISTENER: &str = "health_checks";
/// The Prometheus listener's name in metrics labels and log lines.
const METRICS_LISTENER: &str = "metrics";
/// Connections held at once: a kubelet's probes and a Prometheus scraper need a few. The
/// server's health listener has the same defaults.
pub const HEALTH_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    max_connections_per_address: 32,
};

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
    /// The health listener's connections: `connections{listener, result}` (`accepted`,
    /// `refused_listener_cap`, `refused_address_cap`), `connections_closed` (`ok`,
    /// `header_timeout`, `error`), `open_connections`.
    pub connections: ConnectionMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Self {
            registry: Registry::with_prefix("sigil_agent"),
            sync_messages: Counter::default(),
            sync_connects: Family::default(),
            cached_entries: Gauge::default(),
            x509_svids_minted: Family::default(),
            agent_svid_renewals: Family::default(),
            svids_past_half_life: Family::default(),
            expired_x509_svids: Gauge::default(),
            agent_svid_expiry: Gauge::default(),
            connections: ConnectionMetrics::default(),
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
        m.connections.register(r);
        Arc::new(m)
    }

    /// One more SVID (`kind`: `x509` or `jwt`) past its half-life with the server unreachable.
    pub fn svid_past_half_life(&self, kind: &'static str) {
        self.svids_past_half_life
            .get_or_create(&KindLabel { kind })
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
        Self {
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
            Self::NotSynced => {
                f.write_str("registration entries not synced yet (or shutting down)")
            }
            Self::IdentityLost => f.write_str(
                "the server no longer accepts this agent and it cannot attest again (see the log)",
            ),
            Self::AgentSvidExpired(at) => write!(
                f,
                "the agent's own SVID expired at {}",
                crate::cache::expiry::rfc3339(*at)
            ),
            Self::SvidsExpired(n) => {
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

impl ReadinessCheck for Readiness {
    fn readiness(&self) -> Result<(), String> {
        self.check(unix_now())
            .map_err(|why| format!("not ready: {why}"))
    }
}

impl MetricsText for Metrics {
    fn openmetrics_text(&self) -> String {
        self.encode()
    }
}

/// Binds the health listener on `addr` now (so a port clash fails start-up), serving `/live`
/// and `/ready` at `paths` and `/metrics`, and returns the serving future.
pub async fn bind(
    addr: SocketAddr,
    paths: &OpsPaths,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>> + use<>> {
    let limiter = ConnectionLimiter::new(LISTENER, HEALTH_LIMITS, metrics.connections.clone());
    let router = ops::router(paths, readiness, metrics);
    ops::bind(addr, router, limiter, cancel).await
}

/// Binds the Prometheus listener (`telemetry { Prometheus { host port } }`) on `addr` now,
/// serving only `/metrics` with the health listener's caps, and returns the serving future.
pub async fn bind_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>> + use<>> {
    let limiter =
        ConnectionLimiter::new(METRICS_LISTENER, HEALTH_LIMITS, metrics.connections.clone());
    ops::bind(addr, ops::metrics_router(metrics), limiter, cancel).await
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sigil_common::listener::{Listener, Timeouts, serve_http};

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
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let paths = OpsPaths::default();
        let server = bind(
            addr,
            &paths,
            readiness.clone(),
            Metrics::new(),
            cancel.clone(),
        )
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
        let readiness: Arc<Readiness> = Arc::default();
        let router = ops::router(&OpsPaths::default(), readiness, metrics.clone());
        let limits = ConnectionLimits {
            max_connections: 3,
            max_connections_per_address: 3,
        };
        let limiter = ConnectionLimiter::new(LISTENER, limits, metrics.connections.clone());
        let timeouts = Timeouts {
            header_read: Duration::from_millis(500),
            ..Timeouts::default()
        };
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), limiter)
            .await
            .unwrap()
            .with_timeouts(timeouts);
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_http(listener, None, router, cancel.clone()));
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
