//! How many connections each TCP listener holds at once, in all and per source address: the
//! defaults, the `server { connection_limits { ... } }` config block, and the fit under the
//! process's file descriptor limit.
//!
//! Every accepted connection is a file descriptor. Without caps, a flood of idle connections to
//! one listener (450 half-open OIDC connections did it) takes the descriptors the datastore,
//! the admin socket and the other listeners need. With caps whose sum stays below the limit
//! minus [`RESERVED_FDS`], a flood costs its own listener only.

use std::fmt;

use sigil_common::hcl::{Block, ConfigError};

/// Descriptors kept out of every listener's reach: the datastore pool (SQLite: 10 connections
/// with a database and a WAL descriptor each, plus the shared-memory file; PostgreSQL: 16 + 1
/// sockets), admin API connections, federation and Kubernetes clients, key and state files
/// being written, DNS look-ups, the listening sockets themselves and the runtime's own (epoll,
/// signal pipe). A running server with every listener idle holds 36; the rest is head-room.
pub const RESERVED_FDS: u64 = 256;

/// The smallest cap a listener gets when the descriptor limit is too low for the defaults.
const MIN_CAP: u64 = 4;

/// One TCP listener of the server, for limits, metrics labels and log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    AgentApi,
    OidcDiscovery,
    BundleEndpoint,
    Health,
    Metrics,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::AgentApi,
        Endpoint::OidcDiscovery,
        Endpoint::BundleEndpoint,
        Endpoint::Health,
        Endpoint::Metrics,
    ];

    /// The name in metrics labels, log lines and the config block.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::AgentApi => "agent_api",
            Endpoint::OidcDiscovery => "oidc_discovery",
            Endpoint::BundleEndpoint => "bundle_endpoint",
            Endpoint::Health => "health_checks",
            Endpoint::Metrics => "telemetry",
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
            Endpoint::AgentApi => (16_384, 1_024),
            Endpoint::OidcDiscovery => (1_024, 256),
            Endpoint::BundleEndpoint => (256, 64),
            Endpoint::Health | Endpoint::Metrics => (64, 32),
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

/// The caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, handshakes included.
    pub max_connections: u64,
    /// Of those, from one source address (IPv4 address, or IPv6 /64 prefix).
    pub max_connections_per_address: u64,
}

/// `server { connection_limits { <listener> { max_connections, max_connections_per_ip } } }`:
/// the caps of each listener, defaults where not set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimitsConfig {
    limits: [ConnectionLimits; Endpoint::ALL.len()],
}

impl Default for ConnectionLimitsConfig {
    fn default() -> Self {
        ConnectionLimitsConfig {
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
    pub fn read(block: Option<Block<'_>>) -> Result<ConnectionLimitsConfig, ConfigError> {
        let mut out = ConnectionLimitsConfig::default();
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

/// Fits the caps of `enabled` listeners under `fd_limit`: when their sum exceeds the limit
/// minus [`RESERVED_FDS`], each is scaled down by the same factor (never below a handful), and
/// each per-address cap to at most its listener's.
pub fn fit(config: &ConnectionLimitsConfig, enabled: &[Endpoint], fd_limit: u64) -> FittedLimits {
    let budget = fd_limit.saturating_sub(RESERVED_FDS);
    let wanted: u64 = enabled.iter().map(|e| config.get(*e).max_connections).sum();
    let lowered = wanted > budget;
    // Scaled against what is left once every listener has its floor, so that the floors do
    // not push the sum over the budget (when the budget has room for the floors at all).
    let floors = MIN_CAP * enabled.len() as u64;
    let share = budget.saturating_sub(floors);
    let limits = enabled
        .iter()
        .map(|e| {
            let mut l = config.get(*e);
            if lowered {
                // u128: the product of two u64s; the quotient is at most the original cap.
                let scaled = u128::from(l.max_connections) * u128::from(share) / u128::from(wanted);
                l.max_connections = u64::try_from(scaled).unwrap_or(u64::MAX).max(MIN_CAP);
                l.max_connections_per_address =
                    l.max_connections_per_address.min(l.max_connections);
            }
            (*e, l)
        })
        .collect();
    FittedLimits { limits, lowered }
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
        assert!(
            tiny.limits
                .iter()
                .all(|(_, l)| l.max_connections == MIN_CAP)
        );
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
