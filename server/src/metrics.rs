//! Prometheus metrics. Every name lives here; names carry their unit and outcomes go in a
//! `result` label.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sigil_common::listener::ConnectionMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Which agent API rate limit refused a call: `attestation` or `signing`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub result: &'static str,
}

/// The server's metrics, shared by every component.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub x509_svids_signed: Family<ResultLabel, Counter>,
    pub jwt_svids_signed: Family<ResultLabel, Counter>,
    pub admin_requests: Family<RpcLabels, Counter>,
    pub agent_requests: Family<RpcLabels, Counter>,
    pub node_attestations: Family<ResultLabel, Counter>,
    pub ca_rotations: Counter,
    pub x509_sign_seconds: Histogram,
    pub connected_agents: Gauge,
    /// Entry propagation: from the change feed publishing an entry revision (right after its
    /// commit) to the first sync-stream message carrying it to an agent, on this replica.
    pub entry_propagation_seconds: Histogram,
    /// Agent API calls refused by a rate limit.
    pub rate_limited: Family<LimitLabel, Counter>,
    /// Every TCP listener's connections: `connections`, `connections_closed`,
    /// `open_connections`.
    pub connections: ConnectionMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("sigil_server");
        let m = Self {
            x509_svids_signed: Family::default(),
            jwt_svids_signed: Family::default(),
            admin_requests: Family::default(),
            agent_requests: Family::default(),
            node_attestations: Family::default(),
            ca_rotations: Counter::default(),
            x509_sign_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
            connected_agents: Gauge::default(),
            entry_propagation_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            rate_limited: Family::default(),
            connections: ConnectionMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "x509_svids_signed",
            "X.509-SVIDs signed",
            m.x509_svids_signed.clone(),
        );
        registry.register(
            "jwt_svids_signed",
            "JWT-SVIDs signed",
            m.jwt_svids_signed.clone(),
        );
        registry.register(
            "admin_requests",
            "Admin API requests",
            m.admin_requests.clone(),
        );
        registry.register(
            "agent_requests",
            "Agent API requests",
            m.agent_requests.clone(),
        );
        registry.register(
            "node_attestations",
            "Node attestations",
            m.node_attestations.clone(),
        );
        registry.register(
            "ca_rotations",
            "CA and JWT key rotation steps",
            m.ca_rotations.clone(),
        );
        registry.register(
            "x509_sign_seconds",
            "Time to sign one X.509-SVID",
            m.x509_sign_seconds.clone(),
        );
        registry.register(
            "connected_agents",
            "Agents holding a sync stream",
            m.connected_agents.clone(),
        );
        registry.register(
            "entry_propagation_seconds",
            "From an entry revision's publication to its first send on an agent sync stream",
            m.entry_propagation_seconds.clone(),
        );
        registry.register(
            "rate_limited",
            "Agent API calls refused by a rate limit",
            m.rate_limited.clone(),
        );
        m.connections.register(&mut registry);
        Arc::new(Self { registry, ..m })
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl sigil_common::ops::MetricsText for Metrics {
    fn openmetrics_text(&self) -> String {
        self.encode()
    }
}

pub fn result_of<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() { "ok" } else { "error" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_and_unit() {
        let m = Metrics::new();
        m.x509_svids_signed
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        m.x509_sign_seconds.observe(0.001);
        let text = m.encode();
        assert!(
            text.contains("sigil_server_x509_svids_signed_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sigil_server_x509_sign_seconds_bucket"),
            "{text}"
        );
    }
}
