//! The server's TCP listeners: which there are ([`Endpoint`]), their default connection caps,
//! the `server { connection_limits { ... } }` config block, and the plan made at start-up:
//! the descriptor limit raised and every enabled listener's caps fitted under it. Serving,
//! admission and timeouts are `sigil_common::listener`'s, shared with the agent.

use std::fmt;
use std::sync::Arc;

use sigil_common::hcl::{Block, ConfigError};
use sigil_common::listener::limits::{self, RESERVED_FDS};
use sigil_common::listener::{ConnectionLimiter, ConnectionLimits, fd_limit};

use crate::metrics::Metrics;

/// One TCP listener of the server, for limits, metrics labels and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    AgentApi,
    OidcDiscovery,
    BundleEndpoint,
    Health,
    Metrics,
    Console,
}

impl Endpoint {
    pub const ALL: [Self; 6] = [
        Self::AgentApi,
        Self::OidcDiscovery,
        Self::BundleEndpoint,
        Self::Health,
        Self::Metrics,
        Self::Console,
    ];

    /// The name in metrics labels, log lines and the config block.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentApi => "agent_api",
            Self::OidcDiscovery => "oidc_discovery",
            Self::BundleEndpoint => "bundle_endpoint",
            Self::Health => "health_checks",
            Self::Metrics => "telemetry",
            Self::Console => "console",
        }
    }

    /// The caps when the config sets none. Each is far above what its legitimate clients need,
    /// and all of them together fit a descriptor limit of 32,768 with room to spare.
    ///
    /// - Agent API: one long-lived HTTP/2 connection per agent, so 16,384 agents per server
    ///   (Kubernetes' own ceiling is 5,000 nodes per cluster). The per-address cap counts only
    ///   connections that have not presented an X.509-SVID of the trust domain (TLS handshakes
    ///   under way, node attestation): agents behind one NAT address, however many, are never
    ///   refused once they hold an SVID, and 1,024 concurrent attestations from one address is
    ///   far above the 1/s per address that attestation is rate-limited to anyway.
    /// - OIDC discovery: relying parties fetch a cached document now and then; a
    ///   TLS-terminating proxy in front may funnel all of them through one address, hence 256.
    /// - Bundle endpoint: one poll per federated server every refresh hint (minutes).
    /// - Health and metrics: a kubelet and a Prometheus scraper, one connection per probe.
    pub fn default_limits(self) -> ConnectionLimits {
        let (max, per_address) = match self {
            Self::AgentApi => (16_384, 1_024),
            Self::OidcDiscovery => (1_024, 256),
            Self::BundleEndpoint => (256, 64),
            Self::Health | Self::Metrics => (64, 32),
            Self::Console => (64, 32),
        };
        ConnectionLimits {
            max_connections: max,
            max_connections_per_address: per_address,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `server { connection_limits { <listener> { max_connections, max_connections_per_ip } } }`:
/// the caps of each listener, defaults where not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimitsConfig {
    limits: [ConnectionLimits; Endpoint::ALL.len()],
}

impl Default for ConnectionLimitsConfig {
    fn default() -> Self {
        Self {
            limits: Endpoint::ALL.map(Endpoint::default_limits),
        }
    }
}

impl ConnectionLimitsConfig {
    pub fn get(&self, endpoint: Endpoint) -> ConnectionLimits {
        self.limits[endpoint as usize]
    }

    fn set(&mut self, endpoint: Endpoint, limits: ConnectionLimits) {
        self.limits[endpoint as usize] = limits;
    }

    /// Reads the `connection_limits` block of `server`.
    pub fn read(block: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        let Some(mut block) = block else {
            return Ok(out);
        };
        for endpoint in Endpoint::ALL {
            let Some(mut sub) = block.block(endpoint.as_str())? else {
                continue;
            };
            let defaults = endpoint.default_limits();
            let at_least_one = |sub: &Block<'_>, key: &str, v: Option<u64>| match v {
                Some(0) => Err(sub.error(key, "must be at least 1")),
                v => Ok(v),
            };
            let max = sub.u64("max_connections")?;
            let max = at_least_one(&sub, "max_connections", max)?;
            let per = sub.u64("max_connections_per_ip")?;
            let per = at_least_one(&sub, "max_connections_per_ip", per)?;
            let max = max.unwrap_or(defaults.max_connections);
            // A per-address cap above the listener's own means nothing: take the smaller.
            let per = per.unwrap_or(defaults.max_connections_per_address);
            if per > max {
                return Err(sub.error(
                    "max_connections_per_ip",
                    format!("({per}) is above max_connections ({max})"),
                ));
            }
            sub.finish()?;
            out.set(
                endpoint,
                ConnectionLimits {
                    max_connections: max,
                    max_connections_per_address: per,
                },
            );
        }
        block.finish()?;
        Ok(out)
    }
}

/// The caps of the listeners that are enabled, fitted under a descriptor limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FittedLimits {
    pub limits: Vec<(Endpoint, ConnectionLimits)>,
    /// Whether the configured caps had to be lowered.
    pub lowered: bool,
}

impl FittedLimits {
    pub fn get(&self, endpoint: Endpoint) -> ConnectionLimits {
        self.limits
            .iter()
            .find(|(e, _)| *e == endpoint)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| endpoint.default_limits())
    }

    pub fn total(&self) -> u64 {
        self.limits.iter().map(|(_, l)| l.max_connections).sum()
    }
}

/// The caps of the `enabled` listeners fitted under `fd_limit` ([`limits::fit`]).
pub fn fit(config: &ConnectionLimitsConfig, enabled: &[Endpoint], fd_limit: u64) -> FittedLimits {
    let mut limits: Vec<(Endpoint, ConnectionLimits)> =
        enabled.iter().map(|e| (*e, config.get(*e))).collect();
    let lowered = limits::fit(&mut limits, fd_limit);
    FittedLimits { limits, lowered }
}

/// At start-up, before anything binds: raises the descriptor limit ([`fd_limit::raise`]) and
/// fits the caps of the `enabled` listeners under it, logging both.
pub fn plan(config: &ConnectionLimitsConfig, enabled: &[Endpoint]) -> FittedLimits {
    let fds = fd_limit::raise();
    let fitted = fit(config, enabled, fds.now);
    let caps: Vec<String> = fitted
        .limits
        .iter()
        .map(|(e, l)| {
            format!(
                "{e}={}/{}",
                l.max_connections, l.max_connections_per_address
            )
        })
        .collect();
    if fitted.lowered {
        tracing::warn!(
            fd_limit = fds.now,
            reserved = RESERVED_FDS,
            caps = %caps.join(" "),
            "the file descriptor limit is too low for the configured connection caps; lowered them to fit (raise the hard RLIMIT_NOFILE)"
        );
    } else {
        tracing::info!(
            fd_limit = fds.now,
            fd_limit_before = fds.before,
            reserved = RESERVED_FDS,
            caps = %caps.join(" "),
            "connection caps per listener (max_connections/max_connections_per_ip)"
        );
    }
    fitted
}

/// The limiter of `endpoint`'s listener with its fitted caps, counting in `metrics`.
pub fn limiter(
    endpoint: Endpoint,
    caps: &FittedLimits,
    metrics: &Metrics,
) -> Arc<ConnectionLimiter> {
    ConnectionLimiter::new(
        endpoint.as_str(),
        caps.get(endpoint),
        metrics.connections.clone(),
    )
}

#[cfg(test)]
mod tests {
    use sigil_common::hcl::Document;

    use super::*;

    fn read(text: &str) -> Result<ConnectionLimitsConfig, String> {
        let doc = Document::parse("server.conf", text).map_err(|e| e.to_string())?;
        let mut root = doc.root();
        let block = root.block("connection_limits").map_err(|e| e.to_string())?;
        ConnectionLimitsConfig::read(block).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fit_a_common_descriptor_limit() {
        let all = fit(&ConnectionLimitsConfig::default(), &Endpoint::ALL, 32_768);
        assert!(!all.lowered);
        assert!(all.total() + RESERVED_FDS <= 32_768, "{}", all.total());
        assert_eq!(all.get(Endpoint::AgentApi).max_connections, 16_384);
    }

    #[test]
    fn a_low_limit_scales_every_cap_and_keeps_the_reserve() {
        let enabled = [
            Endpoint::AgentApi,
            Endpoint::OidcDiscovery,
            Endpoint::Health,
        ];
        let fitted = fit(&ConnectionLimitsConfig::default(), &enabled, 1024);
        assert!(fitted.lowered);
        assert!(fitted.total() + RESERVED_FDS <= 1024, "{fitted:?}");
        let agent = fitted.get(Endpoint::AgentApi);
        let oidc = fitted.get(Endpoint::OidcDiscovery);
        // Shares stay proportional: the agent API keeps the lion's share.
        assert!(
            agent.max_connections > 10 * oidc.max_connections,
            "{fitted:?}"
        );
        assert!(agent.max_connections_per_address <= agent.max_connections);
        // Below the reserve, every listener still gets a handful.
        let tiny = fit(&ConnectionLimitsConfig::default(), &enabled, 100);
        assert!(tiny.limits.iter().all(|(_, l)| l.max_connections == 4));
    }

    #[test]
    fn config_block_sets_caps_and_refuses_nonsense() {
        let c = read(
            "connection_limits {\n  oidc_discovery {\n    max_connections = 10\n    max_connections_per_ip = 2\n  }\n  agent_api { max_connections = 50000 }\n}\n",
        )
        .unwrap();
        let oidc = c.get(Endpoint::OidcDiscovery);
        assert_eq!(
            (oidc.max_connections, oidc.max_connections_per_address),
            (10, 2)
        );
        let agent = c.get(Endpoint::AgentApi);
        assert_eq!(
            (agent.max_connections, agent.max_connections_per_address),
            (50_000, 1_024)
        );
        assert_eq!(c.get(Endpoint::Health), Endpoint::Health.default_limits());
        assert_eq!(read("").unwrap(), ConnectionLimitsConfig::default());

        let err = read("connection_limits {\n  health_checks { max_connections = 0 }\n}\n");
        assert!(err.unwrap_err().contains("must be at least 1"));
        let err = read(
            "connection_limits {\n  telemetry {\n    max_connections = 4\n    max_connections_per_ip = 8\n  }\n}\n",
        );
        assert!(err.unwrap_err().contains("above max_connections"));
        let err = read("connection_limits {\n  oidc { max_connections = 4 }\n}\n").unwrap_err();
        assert!(err.contains("unknown block"), "{err}");
        let err = read("connection_limits {\n  agent_api { max = 4 }\n}\n").unwrap_err();
        assert!(
            err.contains("connection_limits.agent_api.max: unknown key"),
            "{err}"
        );
    }
}
