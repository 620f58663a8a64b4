//! The agent API's settings, from its keys of the `server` block: `agent_ttl` (the lifetime of
//! agent SVIDs) and SPIRE's `ratelimit { attestation signing }` switches.

use std::time::Duration;

use sigil_common::hcl::{Block, ConfigError};

use crate::ca::config::svid_ttl;

/// SPIRE's default agent SVID lifetime.
pub(crate) const DEFAULT_AGENT_TTL: Duration = Duration::from_secs(60 * 60);

/// What the agent API is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentApiConfig {
    /// `agent_ttl`: lifetime of agent SVIDs, separate from workload SVIDs so an agent outlives
    /// a server outage longer than a workload SVID's lifetime.
    pub agent_ttl: Duration,
    /// `ratelimit { ... }`.
    pub rate_limit: RateLimitConfig,
}

impl Default for AgentApiConfig {
    fn default() -> Self {
        Self {
            agent_ttl: DEFAULT_AGENT_TTL,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl AgentApiConfig {
    /// Reads the agent API's keys of the `server` block (the others are its caller's).
    pub(crate) fn from_server_block(server: &mut Block<'_>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            agent_ttl: svid_ttl(server, "agent_ttl")?.unwrap_or(defaults.agent_ttl),
            rate_limit: RateLimitConfig::from_block(server.block("ratelimit")?)?,
        })
    }
}

/// `server { ratelimit { ... } }`: SPIRE's switches for the agent API's rate limits (node
/// attestation 1/s per source IP, signing 500/s per agent). Both on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub attestation: bool,
    pub signing: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            attestation: true,
            signing: true,
        }
    }
}

impl RateLimitConfig {
    /// Reads the `ratelimit` block, if given.
    pub(crate) fn from_block(block: Option<Block<'_>>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let Some(mut block) = block else {
            return Ok(defaults);
        };
        let out = Self {
            attestation: block.bool("attestation")?.unwrap_or(defaults.attestation),
            signing: block.bool("signing")?.unwrap_or(defaults.signing),
        };
        block.finish()?;
        Ok(out)
    }
}
